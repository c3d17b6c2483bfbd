//! The exposition against the real Prometheus tools: `promtool check metrics`
//! on a live scrape with every metric family populated (background runs,
//! upstream successes and each error kind), and a real `prometheus` scraping
//! the service and answering a query for its request counter.

mod common;

use std::io::Write;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use common::{Service, free_port, poll, request, require_tool};

/// Starts services whose background task calls a healthy upstream, a 404, a
/// closed port and a silent listener, and waits until each outcome is counted.
#[test]
fn upstream_outcomes_are_classified_and_promtool_accepts_the_scrape() {
    let promtool = require_tool("promtool");
    let upstream = Service::start(&["--drain-delay", "0s"]);
    upstream.wait_ready();

    let closed_port = free_port();
    // Accepts connections (the kernel backlog does) but never answers.
    let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let silent_addr = silent.local_addr().unwrap();

    let ok_url = format!("http://{}/", upstream.addr);
    let status_url = format!("http://{}/missing", upstream.addr);
    let connect_url = format!("http://127.0.0.1:{closed_port}/");
    let timeout_url = format!("http://{silent_addr}/");
    let cases = [
        (ok_url.as_str(), r#"code="200"}"#, None),
        (status_url.as_str(), r#"code="404"}"#, Some("status")),
        (connect_url.as_str(), r#"code="none"}"#, Some("connect")),
        (timeout_url.as_str(), r#"code="none"}"#, Some("timeout")),
    ];
    let mut last_scrape = String::new();
    for (url, code, error_kind) in cases {
        let svc = Service::start(&[
            "--drain-delay",
            "0s",
            "--background-interval",
            "100ms",
            "--upstream-timeout",
            "300ms",
            "--upstream-url",
            url,
        ]);
        svc.wait_ready();
        let requests =
            format!(r#"ultra_boost_upstream_requests_total{{host="127.0.0.1",method="GET",{code}"#);
        let outcome = if error_kind.is_some() {
            "failure"
        } else {
            "success"
        };
        let runs = format!(r#"ultra_boost_background_runs_total{{outcome="{outcome}"}}"#);
        let scrape = poll(
            Duration::from_secs(15),
            &format!("{requests} and {runs}"),
            || {
                let m = svc.get("/metrics").body;
                let counted = |s: &str| common::metric_value(&m, s).is_some_and(|v| v >= 1.0);
                (counted(&requests) && counted(&runs)).then_some(m)
            },
        );
        match error_kind {
            Some(kind) => {
                let errors = format!(
                    r#"ultra_boost_upstream_errors_total{{host="127.0.0.1",kind="{kind}"}}"#
                );
                assert!(
                    common::metric_value(&scrape, &errors).is_some_and(|v| v >= 1.0),
                    "{url}: no {errors} in\n{scrape}"
                );
                assert!(scrape.contains(
                    r#"ultra_boost_app_errors_total{subsystem="background",kind="run_failed"}"#
                ));
                assert_eq!(
                    common::metric_value(
                        &scrape,
                        "ultra_boost_background_last_success_timestamp_seconds"
                    ),
                    Some(0.0)
                );
            }
            None => {
                let ts = common::metric_value(
                    &scrape,
                    "ultra_boost_background_last_success_timestamp_seconds",
                )
                .unwrap();
                assert!(ts > 1.7e9, "last success timestamp {ts}");
                assert!(scrape.contains(
                    r#"ultra_boost_upstream_request_duration_seconds_bucket{host="127.0.0.1",method="GET",le="0.2"}"#
                ));
            }
        }
        last_scrape = scrape;
        // Some traffic of every kind before the promtool check.
        svc.get("/");
        svc.get("/nowhere");
        let scrape = svc.get("/metrics").body;
        check_with_promtool(&promtool, &scrape);
    }
    assert!(last_scrape.contains("ultra_boost_background_run_duration_seconds_bucket"));
    drop(silent);
}

fn check_with_promtool(promtool: &std::path::Path, scrape: &str) {
    let mut child = Command::new(promtool)
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(scrape.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    let report = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success() && report.trim().is_empty(),
        "promtool check metrics found problems:\n{report}\nscrape:\n{scrape}"
    );
}

/// A `prometheus` child process, killed on drop.
struct Prometheus {
    child: Child,
    log: std::path::PathBuf,
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            eprintln!(
                "--- prometheus log ---\n{}",
                std::fs::read_to_string(&self.log).unwrap_or_default()
            );
        }
    }
}

#[test]
fn real_prometheus_scrapes_the_request_counter() {
    let prometheus_bin = require_tool("prometheus");
    let svc = Service::start(&["--drain-delay", "0s"]);
    svc.wait_ready();
    for _ in 0..5 {
        assert_eq!(svc.get("/").status, 200);
    }

    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("prometheus.yml");
    std::fs::write(
        &config,
        format!(
            "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n\
             scrape_configs:\n  - job_name: ultra-boost\n    static_configs:\n      - targets: ['{}']\n",
            svc.addr
        ),
    )
    .unwrap();

    // Prometheus cannot report a port it chose, so pick a free one; retry if
    // another process took it in between.
    let (prom, addr) = (0..3)
        .find_map(|attempt| {
            let port = free_port();
            let log = dir.path().join(format!("prometheus-{attempt}.log"));
            let child = Command::new(&prometheus_bin)
                .arg(format!("--config.file={}", config.display()))
                .arg(format!(
                    "--storage.tsdb.path={}",
                    dir.path().join(format!("data-{attempt}")).display()
                ))
                .arg(format!("--web.listen-address=127.0.0.1:{port}"))
                .stdout(Stdio::null())
                .stderr(std::fs::File::create(&log).unwrap())
                .spawn()
                .unwrap();
            let mut prom = Prometheus { child, log };
            let addr: std::net::SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
            let up = poll(Duration::from_secs(20), "prometheus to start", || {
                if prom.child.try_wait().unwrap().is_some() {
                    return Some(false);
                }
                request(addr, "GET", "/-/ready", &[])
                    .ok()
                    .filter(|r| r.status == 200)
                    .map(|_| true)
            });
            up.then_some((prom, addr))
        })
        .expect("prometheus did not start on any of 3 free ports");

    let query = "/api/v1/query?query=ultra_boost_http_requests_total%7Broute%3D%22%2F%22%2Ccode%3D%22200%22%7D";
    let sample = poll(
        Duration::from_secs(45),
        "prometheus to return the counter",
        || {
            let resp = request(addr, "GET", query, &[]).ok()?;
            let doc: serde_json::Value = serde_json::from_str(&resp.body).ok()?;
            let result = doc["data"]["result"].as_array()?.first()?.clone();
            Some(result)
        },
    );
    assert_eq!(sample["metric"]["job"], "ultra-boost");
    assert_eq!(sample["metric"]["instance"], svc.addr.to_string());
    let value: f64 = sample["value"][1].as_str().unwrap().parse().unwrap();
    assert!(
        value >= 5.0,
        "prometheus saw {value} GET / requests, sent 5"
    );
    drop(prom);
}
