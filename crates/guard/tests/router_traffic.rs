//! guard's router in front of real ultra-boost processes on loopback: weights,
//! no ready replica, a replica killed under load, and its metrics.
#[path = "support/replicas.rs"]
mod replicas;

use std::time::Duration;

use guard::platform::Role;
use guard::router::{Backend, GroupSpec, Router, RouterConfig, RouterMetrics};
use prometheus_client::registry::Registry;
use replicas::{Load, Replica, client, get, poll};

async fn router() -> (Router, Registry) {
    let mut registry = Registry::default();
    let metrics = RouterMetrics::register(&mut registry);
    let r = Router::start(
        RouterConfig::new("ultra-boost", "test", "127.0.0.1:0".parse().unwrap()),
        metrics,
    )
    .await
    .unwrap();
    (r, registry)
}

fn ready(build: &str, r: &Replica) -> std::sync::Arc<Backend> {
    let b = Backend::new(build, r.addr);
    b.set_ready(true);
    b
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn weights_split_traffic_between_releases() {
    let (a1, a2, b1) = tokio::join!(
        Replica::start("127.0.0.1:0", "1", &[]),
        Replica::start("127.0.0.1:0", "1", &[]),
        Replica::start("127.0.0.1:0", "2", &[]),
    );
    let (router, registry) = router().await;
    router.set_pool(vec![
        GroupSpec {
            build: "1".into(),
            role: Role::Stable,
            weight: 0.75,
            backends: vec![ready("1", &a1), ready("1", &a2)],
        },
        GroupSpec {
            build: "2".into(),
            role: Role::Candidate,
            weight: 0.25,
            backends: vec![ready("2", &b1)],
        },
    ]);
    let url = format!("http://{}/", router.local_addr());
    let load = Load::start(url, 4, Duration::ZERO);
    load.wait_for(2000).await;
    let tally = load.stop().await;
    let n = tally.total() as f64;
    let candidate = *tally.by_build.get("2").unwrap_or(&0) as f64;
    // Binomial bound at 5 sigma (the router is in fact far more exact than a
    // coin: it spreads picks with a low-discrepancy sequence).
    let sigma = (n * 0.25 * 0.75).sqrt();
    assert!(
        (candidate - 0.25 * n).abs() < 5.0 * sigma,
        "candidate got {candidate} of {n}; {tally:?}"
    );
    assert_eq!(tally.router_failures(), 0, "{tally:?}");
    assert_eq!(router.totals().failures, 0);

    // The metrics say the same, per release and code.
    let mut text = String::new();
    prometheus_client::encoding::text::encode(&mut text, &registry).unwrap();
    let line = text
        .lines()
        .find(|l| {
            l.starts_with("guard_router_requests_total")
                && l.contains("build=\"2\"")
                && l.contains("code=\"200\"")
        })
        .unwrap_or_else(|| panic!("no candidate series in\n{text}"));
    assert!(line.contains("role=\"candidate\""), "{line}");
    let value: f64 = line.rsplit(' ').next().unwrap().parse().unwrap();
    assert_eq!(value, candidate, "{line}");
    router.shutdown(Duration::from_secs(2)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_ready_replica_is_a_counted_503() {
    let (router, registry) = router().await;
    let c = client();
    let url = format!("http://{}/", router.local_addr());
    assert_eq!(get(&c, &url).await.unwrap().0, 503);
    // A backend that is not ready is not used either.
    let r = Replica::start("127.0.0.1:0", "1", &[]).await;
    let b = Backend::new("1", r.addr);
    router.set_pool(vec![GroupSpec {
        build: "1".into(),
        role: Role::Stable,
        weight: 1.0,
        backends: vec![b.clone()],
    }]);
    assert_eq!(get(&c, &url).await.unwrap().0, 503);
    assert_eq!(router.totals().failures, 2);
    let mut text = String::new();
    prometheus_client::encoding::text::encode(&mut text, &registry).unwrap();
    assert!(
        text.contains("guard_router_failures_total{service=\"ultra-boost\",environment=\"test\",kind=\"no_backend\"} 2"),
        "{text}"
    );
    // The readiness poller finds it ready.
    poll(
        Duration::from_secs(5),
        "the poller to mark the replica ready",
        || {
            let b = b.clone();
            async move { b.is_ready().then_some(()) }
        },
    )
    .await;
    assert_eq!(get(&c, &url).await.unwrap(), (200, Some("1".to_string())));
    router.shutdown(Duration::from_secs(2)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_killed_under_load_costs_no_request() {
    let (mut a, b) = tokio::join!(
        Replica::start("127.0.0.1:0", "1", &[]),
        Replica::start("127.0.0.1:0", "1", &[]),
    );
    let (router, _registry) = router().await;
    let ba = ready("1", &a);
    router.set_pool(vec![GroupSpec {
        build: "1".into(),
        role: Role::Stable,
        weight: 1.0,
        backends: vec![ba.clone(), ready("1", &b)],
    }]);
    let load = Load::start(
        format!("http://{}/", router.local_addr()),
        4,
        Duration::from_millis(1),
    );
    load.wait_for(300).await;
    // No drain, no warning: the process is gone. Requests that were being
    // written to it are retried on the other replica (GET is idempotent).
    a.child.kill().await.unwrap();
    load.wait_for(500).await;
    let tally = load.stop().await;
    assert_eq!(tally.router_failures(), 0, "{tally:?}");
    assert_eq!(router.totals().failures, 0);
    assert!(!ba.is_ready(), "the killed replica is marked unready");
    router.shutdown(Duration::from_secs(2)).await;
}
