//! The `prometheus` signal source against a real Prometheus (Debian package)
//! that scrapes real ultra-boost replicas every second, labelled with their
//! environment only, as in a cluster: per-release counts through the queries
//! of examples/guard.yaml (the build joined in from `ultra_boost_build_info`,
//! `{environment}` selecting the one judged, so another environment running
//! the same build does not count), a replica restart (counter reset) that
//! never makes counts go down, and an outage reported as unavailable, never
//! as zero traffic.

use std::collections::BTreeMap;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use guard::platform::{Endpoint, Role, Target};
use guard::signals::prometheus::{PrometheusSource, QueryCheck};
use guard::signals::{SignalError, SignalSource, Snapshot};

struct Proc(Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn ultra_boost() -> PathBuf {
    let bin = PathBuf::from(env!("CARGO_BIN_EXE_guard")).with_file_name("ultra-boost");
    assert!(
        bin.is_file(),
        "{} is missing: run `cargo build -p ultra-boost` first",
        bin.display()
    );
    bin
}

/// Starts ultra-boost on `listen` and returns it with its bound address.
fn replica(dir: &Path, name: &str, listen: &str, build: &str, error_rate: &str) -> (Proc, String) {
    let addr_file = dir.join(format!("{name}.addr"));
    let _ = std::fs::remove_file(&addr_file);
    let child = Proc(
        Command::new(ultra_boost())
            .args(["--listen", listen, "--address-file"])
            .arg(&addr_file)
            .args([
                "--log-level",
                "warn",
                "--drain-delay",
                "0s",
                "--fault-error-rate",
                error_rate,
                "--fault-seed",
                "11",
            ])
            .env("BUILD_NUMBER", build)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn ultra-boost"),
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if let Ok(a) = std::fs::read_to_string(&addr_file)
            && !a.trim().is_empty()
        {
            return (child, a.trim().to_string());
        }
        assert!(
            Instant::now() < deadline,
            "ultra-boost {name} did not start"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn free_port() -> u16 {
    // Prometheus cannot report a port it chose itself: take one the OS chose.
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port")
}

fn endpoints() -> Vec<Endpoint> {
    vec![
        Endpoint {
            role: Role::Stable,
            build: "1".into(),
            metrics_url: String::new(),
            ready: true,
        },
        Endpoint {
            role: Role::Candidate,
            build: "3".into(),
            metrics_url: String::new(),
            ready: true,
        },
    ]
}

fn counts(s: &Snapshot, build: &str) -> Option<guard::signals::Counts> {
    s.releases
        .iter()
        .find(|r| r.build == build)
        .and_then(|r| r.by_slo.get("availability").copied())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prometheus_source_counts_per_build_survives_resets_and_reports_outages() {
    if Command::new("prometheus")
        .arg("--version")
        .output()
        .is_err()
    {
        panic!(
            "the `prometheus` binary is missing: apt-get install prometheus (scripts/install-test-deps.sh)"
        );
    }
    let dir = tempfile::tempdir().expect("tmp");
    let (_good, good_addr) = replica(dir.path(), "good", "127.0.0.1:0", "1", "0");
    let (bad, bad_addr) = replica(dir.path(), "bad", "127.0.0.1:0", "3", "0.05");
    // Build 3 in staging, failing half its requests: counted in `test`, it
    // would push build 3's error ratio far above 5 %.
    let (_staging, staging_addr) = replica(dir.path(), "staging", "127.0.0.1:0", "3", "0.5");
    let port = free_port();
    let config = format!(
        "global:\n  scrape_interval: 1s\n  scrape_timeout: 900ms\nscrape_configs:\n  - job_name: ultra-boost\n    static_configs:\n      - targets: ['{good_addr}', '{bad_addr}']\n        labels: {{environment: test}}\n      - targets: ['{staging_addr}']\n        labels: {{environment: staging}}\n"
    );
    std::fs::write(dir.path().join("prometheus.yml"), config).expect("config");
    let mut prom = Proc(
        Command::new("prometheus")
            .arg(format!(
                "--config.file={}",
                dir.path().join("prometheus.yml").display()
            ))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.path().join("data").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn prometheus"),
    );

    // Steady load on both replicas.
    let stop = Arc::new(AtomicBool::new(false));
    let _ = rustls::crypto::ring::default_provider().install_default();
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(2))
        .build()
        .expect("client");
    let bad_url = Arc::new(std::sync::Mutex::new(format!("http://{bad_addr}/")));
    for url in [
        Arc::new(std::sync::Mutex::new(format!("http://{good_addr}/"))),
        bad_url.clone(),
        Arc::new(std::sync::Mutex::new(format!("http://{staging_addr}/"))),
    ] {
        let (http, stop) = (http.clone(), stop.clone());
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_millis(20));
            while !stop.load(Ordering::Relaxed) {
                tick.tick().await;
                let u = url.lock().map(|u| u.clone()).unwrap_or_default();
                let _ = http.get(u).send().await;
            }
        });
    }

    // The queries examples/guard.yaml gives, as guard reads them.
    let example = guard::config::load(
        &Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/guard.yaml"),
    )
    .expect("examples/guard.yaml");
    let availability = example.services[0]
        .slos
        .iter()
        .find(|s| s.name == "availability")
        .and_then(|s| s.prometheus.clone())
        .expect("the example's availability queries");
    assert!(availability.total.contains("{environment}"));
    let mut queries = BTreeMap::new();
    queries.insert("availability".to_string(), availability);
    let source = PrometheusSource::new(
        &format!("http://127.0.0.1:{port}"),
        "build",
        Duration::from_secs(2),
        queries,
    )
    .expect("source");
    let target = Target {
        service: "ultra-boost".into(),
        environment: "test".into(),
    };
    let eps = endpoints();

    // Prometheus needs several seconds before its first scrape is queryable: poll.
    let deadline = Instant::now() + Duration::from_secs(40);
    let mut last = loop {
        if let Ok(s) = source.snapshot(&target, &eps).await
            && counts(&s, "3").is_some_and(|c| c.total >= 300)
            && counts(&s, "1").is_some_and(|c| c.total >= 300)
        {
            break s;
        }
        assert!(
            Instant::now() < deadline,
            "no per-build counts from Prometheus within 40 s"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    // At start guard asks each query once: the example's run; a PromQL
    // mistake is refused by its SLO, not taken for an outage later.
    let checks = source
        .check_queries(&["test".into(), "staging".into()])
        .await;
    assert!(
        checks.len() == 4 && checks.iter().all(|(_, _, c)| *c == QueryCheck::Accepted),
        "{checks:?}"
    );
    assert!(
        checks
            .iter()
            .any(|(_, q, _)| q.contains("environment=\"staging\""))
    );
    let mut typo = BTreeMap::new();
    typo.insert(
        "availability".to_string(),
        guard::config::PromQueries {
            total: "ultra_boost_http_requests_total{job==\"ultra-boost\"}".into(),
            query_is_bad: true,
            query: "ultra_boost_http_requests_total{code=~\"5..\"}".into(),
        },
    );
    let typo = PrometheusSource::new(
        &format!("http://127.0.0.1:{port}"),
        "build",
        Duration::from_secs(2),
        typo,
    )
    .expect("source");
    match &typo.check_queries(&["test".into()]).await[..] {
        [
            (slo, _, QueryCheck::Refused(why)),
            (_, _, QueryCheck::Accepted),
        ] => {
            assert_eq!(slo, "availability");
            assert!(why.contains("parse error"), "{why}");
        }
        other => panic!("expected the first query refused: {other:?}"),
    }
    // `guard serve` with that mistake does not start: it names the field.
    let yaml = format!(
        "store: guard.db\napi:\n  listen: 127.0.0.1:0\nsignals:\n  source: prometheus\n  prometheus:\n    url: http://127.0.0.1:{port}\nservices:\n  - name: ultra-boost\n    build: {{command: [\"{}\"]}}\n    environments: [{{name: test, router_listen: \"127.0.0.1:0\"}}]\n    slos:\n      - name: availability\n        objective: 99.9\n        prometheus:\n          total: 'ultra_boost_http_requests_total{{job==\"ultra-boost\"}}'\n          bad: 'ultra_boost_http_requests_total{{code=~\"5..\"}}'\n",
        ultra_boost().display()
    );
    std::fs::write(dir.path().join("guard.yaml"), yaml).expect("guard.yaml");
    let out = Command::new(env!("CARGO_BIN_EXE_guard"))
        .args(["serve", "--config"])
        .arg(dir.path().join("guard.yaml"))
        .output()
        .expect("guard serve");
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains("Prometheus refuses 1 SLO query")
            && err.contains("services[0].slos[0].prometheus (availability)")
            && err.contains("parse error"),
        "{err}"
    );
    let c1 = counts(&last, "1").expect("build 1");
    let c3 = counts(&last, "3").expect("build 3");
    assert_eq!(
        c1.good, c1.total,
        "the good build has no bad events: {c1:?}"
    );
    let ratio = (c3.total - c3.good) as f64 / c3.total as f64;
    // 5 % injected: with >= 300 events a ratio outside 1 %..12 % is < 1e-4 likely.
    assert!(
        (0.01..0.12).contains(&ratio),
        "build 3 error ratio {ratio} ({c3:?})"
    );

    // Restart the erroring replica on the same port: its counters reset to 0.
    let before = counts(&last, "3").expect("build 3");
    drop(bad);
    let (_bad2, addr2) = replica(dir.path(), "bad2", &bad_addr, "3", "0.05");
    assert_eq!(addr2, bad_addr);
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let s = source.snapshot(&target, &eps).await.expect("snapshot");
        let now = counts(&s, "3").expect("build 3");
        assert!(
            now.total >= before.total && now.good >= before.good,
            "counts went down after a reset: {before:?} -> {now:?}"
        );
        let prev = counts(&last, "3").expect("build 3");
        assert!(
            now.total >= prev.total,
            "cumulative counts never decrease: {prev:?} -> {now:?}"
        );
        last = s;
        if now.total >= before.total + 100 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "counts did not grow after the restart: {before:?} -> {now:?}"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }

    // Prometheus down: unavailable, never zero traffic.
    let _ = prom.0.kill();
    let _ = prom.0.wait();
    match source.snapshot(&target, &eps).await {
        Err(SignalError::Unavailable { detail }) => {
            assert!(detail.contains("127.0.0.1"), "{detail}")
        }
        other => panic!("expected Unavailable with Prometheus down, got {other:?}"),
    }
    stop.store(true, Ordering::Relaxed);
}
