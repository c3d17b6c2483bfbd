//! SIGTERM to the real `guard serve` with replicas running and traffic
//! flowing: it exits 0 within seconds, takes its `ultra-boost` replicas with
//! it, and its log says it stopped without calling the replicas it stopped
//! failed scrapes.

#[path = "support/serve_harness.rs"]
mod serve_harness;

use std::time::{Duration, Instant};

use serve_harness::{Guard, Load, config, is_running, replica_pids, router, wait_state};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_stops_guard_and_its_replicas_cleanly() {
    let dir = tempfile::tempdir().expect("tmp");
    // Replicas that take a second to drain, scraped ten times a second:
    // guard scrapes while it stops them.
    let yaml = config("2s")
        .replace("\"--drain-delay\", \"100ms\"", "\"--drain-delay\", \"1s\"")
        .replace("policy:\n", "signals:\n  scrape_interval: 100ms\npolicy:\n");
    assert!(yaml.contains("scrape_interval: 100ms") && yaml.contains("\"1s\""));
    std::fs::write(dir.path().join("guard.yaml"), yaml).expect("config");
    let mut g = Guard::start(dir.path(), &[]);
    wait_state(&g.api, 1, "promoted", Duration::from_secs(30), |s| {
        s == "promoted"
    })
    .await;
    let load = Load::start(router(&g.api).await, 50);
    // A few scrapes of live replicas under traffic.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let replicas = replica_pids(g.pid());
    assert!(!replicas.is_empty(), "no replicas running: {}", g.logs());

    let pid = g.pid();
    let started = Instant::now();
    let status = g.terminate(Duration::from_secs(15));
    drop(load);
    assert_eq!(
        status.and_then(|s| s.code()),
        Some(0),
        "guard did not exit 0 within 15 s of SIGTERM: {}",
        g.logs()
    );
    let stopped_in = started.elapsed();
    let deadline = Instant::now() + Duration::from_secs(10);
    while replicas.iter().any(|p| is_running(*p)) {
        assert!(
            Instant::now() < deadline,
            "replicas {replicas:?} outlived guard: {}",
            g.logs()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let sockets = std::env::temp_dir().join(format!("guard-local-{pid}-0"));
    assert!(!sockets.exists(), "{} left behind", sockets.display());
    let logs = g.logs();
    assert!(logs.contains("SIGTERM: stopping"), "{logs}");
    assert!(
        !logs.contains("scrape failed"),
        "stopping replicas reported as failed scrapes ({stopped_in:?}): {logs}"
    );
}
