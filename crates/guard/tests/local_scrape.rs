//! The scrape signal source against real ultra-boost replicas: counts equal
//! what was sent, a restarted replica's counters are not lost or doubled, a
//! replica that stops answering shows as staleness, not as zero traffic, and
//! a latency threshold that is none of the histogram's buckets is a source
//! problem that names the buckets, not every request counted slow.
#[path = "support/replicas.rs"]
mod replicas;

use std::collections::BTreeMap;
use std::time::Duration;

use guard::platform::{Endpoint, Platform, Role};
use guard::signals::scrape::{ScrapeConfig, ScrapeSli, ScrapeSource};
use guard::signals::{Counts, SignalSource, Snapshot};
use replicas::{Replica, build, client, get, platform, poll};

fn source() -> ScrapeSource {
    source_with_latency_threshold(0.2)
}

fn source_with_latency_threshold(le: f64) -> ScrapeSource {
    let mut slos = BTreeMap::new();
    slos.insert(
        "availability".to_string(),
        ScrapeSli::Availability {
            metric: "ultra_boost_http_requests_total".into(),
            bad_codes: vec!["5".into()],
            route: Some("/".into()),
            exclude_routes: vec!["/metrics".into(), "/-/ready".into(), "/-/healthy".into()],
        },
    );
    slos.insert(
        "latency".to_string(),
        ScrapeSli::Latency {
            histogram: "ultra_boost_http_request_duration_seconds".into(),
            le,
            route: Some("/".into()),
            exclude_routes: vec![],
        },
    );
    slos.insert(
        "freshness".to_string(),
        ScrapeSli::Freshness {
            gauge: "ultra_boost_background_last_success_timestamp_seconds".into(),
            max_age_seconds: 60.0,
        },
    );
    ScrapeSource::new(ScrapeConfig::new(slos))
}

/// The one replica `r`, as the stable build 1.
fn stable_build_1(r: &Replica) -> Vec<Endpoint> {
    vec![Endpoint {
        role: Role::Stable,
        build: "1".into(),
        metrics_url: format!("http://{}/metrics", r.addr),
        ready: true,
    }]
}

fn counts(s: &Snapshot, build: &str, slo: &str) -> Counts {
    s.releases
        .iter()
        .find(|r| r.build == build)
        .and_then(|r| r.by_slo.get(slo).copied())
        .unwrap_or_default()
}

/// Polls until `slo` of `build` has `total` events and keeps it for 1.5 s
/// (more than one scrape interval): then the count is final, not in transit.
async fn settled(
    src: &ScrapeSource,
    eps: &[Endpoint],
    build: &str,
    slo: &str,
    total: u64,
) -> Counts {
    let t = replicas::target();
    let c = poll(
        Duration::from_secs(15),
        "the scraped total to reach what was sent",
        || async {
            let s = src.snapshot(&t, eps).await.unwrap();
            let c = counts(&s, build, slo);
            (c.total >= total).then_some(c)
        },
    )
    .await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let again = counts(&src.snapshot(&t, eps).await.unwrap(), build, slo);
    assert_eq!(c, again, "{slo} of build {build} still moving");
    c
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn counts_equal_what_was_sent_through_the_router() {
    let src = source();
    let (p, t, addr) = platform(2).await;
    let b = build(
        "7",
        &[
            "--fault-error-rate",
            "0.5",
            "--fault-seed",
            "11",
            "--background-interval",
            "1s",
        ],
    );
    p.revert(&t, &b).await.unwrap();
    let eps = p.observe(&t).await.unwrap().endpoints;
    assert_eq!(eps.len(), 2);
    // Registering the endpoints starts the scrapes; wait for a first one.
    poll(
        Duration::from_secs(10),
        "a first scrape of every replica",
        || async {
            let s = src.snapshot(&t, &eps).await.unwrap();
            s.staleness_seconds.filter(|&st| st < 1.5).map(|_| ())
        },
    )
    .await;

    let c = client();
    let mut sent: BTreeMap<u16, u64> = BTreeMap::new();
    for _ in 0..200 {
        let (code, _) = get(&c, &format!("http://{addr}/")).await.unwrap();
        *sent.entry(code).or_default() += 1;
    }
    let ok = sent.get(&200).copied().unwrap_or(0);
    let errors = sent.get(&500).copied().unwrap_or(0);
    assert_eq!(ok + errors, 200, "{sent:?}");
    // Fault rate 0.5 over 200 requests: far from 0 and 200 (5 sigma = 35).
    assert!((65..=135).contains(&errors), "{sent:?}");

    let avail = settled(&src, &eps, "7", "availability", 200).await;
    assert_eq!(
        avail,
        Counts {
            good: ok,
            total: 200
        },
        "{sent:?}"
    );
    let latency = settled(&src, &eps, "7", "latency", 200).await;
    assert_eq!(latency.total, 200);
    // No latency fault: every request is far below 200 ms (2 % slack for a
    // starved CI machine).
    assert!(latency.good >= 196, "{latency:?}");
    let s = src.snapshot(&t, &eps).await.unwrap();
    let fresh = counts(&s, "7", "freshness");
    assert!(fresh.total >= 2 && fresh.good == fresh.total, "{fresh:?}");
    assert_eq!(s.releases.len(), 1);
    assert_eq!(s.releases[0].role, Role::Stable);
    p.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_replica_is_counted_from_zero_not_lost_nor_doubled() {
    let src = source();
    let t = replicas::target();
    let mut r = Replica::start("127.0.0.1:0", "1", &[]).await;
    let port = r.addr.port();
    let eps = stable_build_1(&r);
    poll(Duration::from_secs(10), "a first scrape", || async {
        src.snapshot(&t, &eps)
            .await
            .unwrap()
            .staleness_seconds
            .map(|_| ())
    })
    .await;
    let c = client();
    let url = format!("http://{}/", r.addr);
    for _ in 0..30 {
        assert_eq!(get(&c, &url).await.unwrap().0, 200);
    }
    settled(&src, &eps, "1", "availability", 30).await;

    // Restart on the same port; the new process serves more requests than the
    // old one did, so only the start time reveals the reset.
    r.child.kill().await.unwrap();
    drop(r);
    let r2 = Replica::start(&format!("127.0.0.1:{port}"), "1", &[]).await;
    let c = client();
    for _ in 0..50 {
        assert_eq!(get(&c, &url).await.unwrap().0, 200);
    }
    let total = settled(&src, &eps, "1", "availability", 80).await;
    assert_eq!(
        total,
        Counts {
            good: 80,
            total: 80
        }
    );
    drop(r2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_that_stops_answering_is_stale_not_idle() {
    let src = source();
    let t = replicas::target();
    let r = Replica::start("127.0.0.1:0", "1", &[]).await;
    let eps = stable_build_1(&r);
    let never = src.snapshot(&t, &eps).await.unwrap();
    assert!(
        never.releases[0].by_slo.is_empty(),
        "no scrape yet: no data, not zeros: {never:?}"
    );
    let c = client();
    for _ in 0..10 {
        get(&c, &format!("http://{}/", r.addr)).await.unwrap();
    }
    let before = settled(&src, &eps, "1", "availability", 10).await;

    r.signal("STOP");
    let stale = poll(Duration::from_secs(10), "staleness above 2.5 s", || async {
        let s = src.snapshot(&t, &eps).await.unwrap();
        s.staleness_seconds.filter(|&st| st > 2.5).map(|_| s)
    })
    .await;
    assert_eq!(
        counts(&stale, "1", "availability"),
        before,
        "a missed scrape adds nothing"
    );
    r.signal("CONT");
    poll(Duration::from_secs(10), "fresh data again", || async {
        let s = src.snapshot(&t, &eps).await.unwrap();
        s.staleness_seconds.filter(|&st| st < 1.5).map(|_| ())
    })
    .await;
    assert_eq!(
        counts(&src.snapshot(&t, &eps).await.unwrap(), "1", "availability"),
        before
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_latency_threshold_that_is_no_bucket_is_a_source_problem_not_slow_requests() {
    let src = source_with_latency_threshold(0.123);
    let t = replicas::target();
    let r = Replica::start("127.0.0.1:0", "1", &[]).await;
    let eps = stable_build_1(&r);
    let c = client();
    for _ in 0..5 {
        get(&c, &format!("http://{}/", r.addr)).await.unwrap();
    }
    let s = poll(
        Duration::from_secs(10),
        "the scrape to be refused",
        || async {
            let s = src.snapshot(&t, &eps).await.unwrap();
            s.last_error.is_some().then_some(s)
        },
    )
    .await;
    let err = s.last_error.clone().unwrap_or_default();
    assert!(
        err.contains("no bucket at the latency threshold 0.123s")
            && err.contains("0.1s, 0.2s, 0.3s"),
        "{err}"
    );
    assert_eq!(s.staleness_seconds, None, "never read: {s:?}");
    assert_eq!(
        counts(&s, "1", "latency"),
        Counts::default(),
        "nothing counted, least of all as slow"
    );
}
