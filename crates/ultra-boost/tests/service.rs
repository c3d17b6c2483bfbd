//! The service as a real process over real HTTP: endpoints, metrics counts,
//! readiness transitions, the shutdown contract, fault injection and option
//! errors.

mod common;

use std::process::Command;
use std::time::{Duration, Instant};

use common::{Service, metric_value, poll, request};

#[test]
fn endpoints_answer_and_are_counted() {
    let svc = Service::start_with_env(
        &["--drain-delay", "0s"],
        &[("GIT_COMMIT", "feedbeef"), ("BUILD_NUMBER", "77")],
    );
    svc.wait_ready();

    let root = svc.get("/");
    assert_eq!(root.status, 200);
    assert_eq!(root.header("content-type"), Some("application/json"));
    let doc: serde_json::Value = serde_json::from_str(&root.body).unwrap();
    assert_eq!(doc["service"], "ultra-boost");
    assert_eq!(doc["version"], env!("CARGO_PKG_VERSION"));
    assert_eq!(doc["build"], "77", "BUILD_NUMBER at run time overrides");
    assert_eq!(doc["commit"], "feedbeef");

    let healthy = svc.get("/-/healthy");
    assert_eq!((healthy.status, healthy.body.as_str()), (200, "ok\n"));
    let ready = svc.get("/-/ready");
    assert_eq!((ready.status, ready.body.as_str()), (200, "ready\n"));
    for path in ["/nope", "/nope/123", "/metrics/", "/?x=1/../"] {
        let status = svc.get(path).status;
        if path.starts_with("/?") {
            assert_eq!(status, 200, "query strings do not change the route");
        } else {
            assert_eq!(status, 404, "{path}");
        }
    }
    let post = request(svc.addr, "POST", "/", &[("Content-Length", "0")]).unwrap();
    assert_eq!(post.status, 405);
    assert_eq!(post.header("allow"), Some("GET, HEAD"));
    let head = request(svc.addr, "HEAD", "/", &[]).unwrap();
    assert_eq!((head.status, head.body.as_str()), (200, ""));

    let scrape = svc.get("/metrics");
    assert_eq!(scrape.status, 200);
    assert_eq!(
        scrape.header("content-type"),
        Some("text/plain; version=0.0.4; charset=utf-8")
    );
    let m = &scrape.body;
    let value = |series: &str| {
        metric_value(m, series).unwrap_or_else(|| panic!("no series {series} in:\n{m}"))
    };
    // wait_ready may have polled several times; everything else is exact.
    assert_eq!(
        value(r#"ultra_boost_http_requests_total{method="GET",route="/",code="200"}"#),
        2.0
    );
    assert_eq!(
        value(r#"ultra_boost_http_requests_total{method="GET",route="/",code="500"}"#),
        0.0
    );
    assert_eq!(
        value(r#"ultra_boost_http_requests_total{method="GET",route="other",code="404"}"#),
        3.0
    );
    assert_eq!(
        value(r#"ultra_boost_http_requests_total{method="POST",route="/",code="405"}"#),
        1.0
    );
    assert_eq!(
        value(r#"ultra_boost_http_requests_total{method="HEAD",route="/",code="200"}"#),
        1.0
    );
    assert_eq!(
        value(r#"ultra_boost_http_requests_total{method="GET",route="/-/healthy",code="200"}"#),
        1.0
    );
    assert!(
        value(r#"ultra_boost_http_requests_total{method="GET",route="/-/ready",code="200"}"#)
            >= 2.0
    );
    assert_eq!(
        value(r#"ultra_boost_http_request_duration_seconds_count{method="GET",route="/"}"#),
        2.0
    );
    assert_eq!(
        value(
            r#"ultra_boost_http_request_duration_seconds_bucket{method="GET",route="/",le="0.2"}"#
        ),
        2.0
    );
    // The scrape itself is the one request in flight.
    assert_eq!(value("ultra_boost_http_requests_in_flight"), 1.0);
    assert_eq!(
        value(&format!(
            r#"ultra_boost_build_info{{version="{}",commit="feedbeef",build="77",fault_error_rate="0",fault_latency_ms="0"}}"#,
            env!("CARGO_PKG_VERSION")
        )),
        1.0
    );
    for name in [
        "process_cpu_seconds_total",
        "process_resident_memory_bytes",
        "process_virtual_memory_bytes",
        "process_open_fds",
        "process_max_fds",
        "process_threads",
        "process_start_time_seconds",
    ] {
        assert!(value(name) >= 0.0);
    }
    assert!(value("process_resident_memory_bytes") > 100_000.0);
    let start = value("process_start_time_seconds");
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64();
    assert!(
        (now - start).abs() < 120.0,
        "start time {start} vs now {now}"
    );

    let om = request(
        svc.addr,
        "GET",
        "/metrics",
        &[(
            "Accept",
            "application/openmetrics-text;version=1.0.0,text/plain;q=0.5",
        )],
    )
    .unwrap();
    assert!(
        om.header("content-type")
            .unwrap()
            .starts_with("application/openmetrics-text")
    );
    assert!(om.body.ends_with("# EOF\n"));
}

#[test]
fn readiness_goes_starting_ready_draining_then_exit_0() {
    let mut svc = Service::start(&["--startup-delay", "3s", "--drain-delay", "3s"]);
    let early = svc.get("/-/ready");
    assert_eq!((early.status, early.body.as_str()), (503, "starting\n"));
    assert_eq!(svc.get("/-/healthy").status, 200, "alive while starting");
    svc.wait_ready();

    let signalled = Instant::now();
    svc.signal("TERM");
    let draining = poll(
        Duration::from_secs(2),
        "readiness 503 after SIGTERM",
        || {
            request(svc.addr, "GET", "/-/ready", &[])
                .ok()
                .filter(|r| r.status == 503)
        },
    );
    assert_eq!(draining.body, "draining\n");
    assert!(
        signalled.elapsed() < Duration::from_secs(2),
        "readiness must turn 503 at once"
    );
    // Still serving during the drain delay, asking keep-alive clients to go.
    let root = svc.get("/");
    assert_eq!(root.status, 200);
    assert_eq!(root.header("connection"), Some("close"));
    assert_eq!(svc.get("/-/healthy").status, 200);

    let status = svc.wait_exit(Duration::from_secs(15));
    assert_eq!(status.code(), Some(0), "log:\n{}", svc.log());
    assert!(
        signalled.elapsed() >= Duration::from_secs(3),
        "served for the whole drain delay"
    );
    assert!(
        request(svc.addr, "GET", "/", &[]).is_err(),
        "listener closed"
    );
    let log = svc.log();
    for msg in ["\"listening\"", "\"ready\"", "draining", "stopped cleanly"] {
        assert!(log.contains(msg), "log lacks {msg}:\n{log}");
    }
    for line in log.lines() {
        let v: serde_json::Value = serde_json::from_str(line)
            .unwrap_or_else(|e| panic!("--log-format json wrote a non-JSON line ({e}): {line}"));
        assert!(
            v["level"].is_string() && v["fields"]["message"].is_string(),
            "{line}"
        );
    }
}

#[test]
fn second_signal_ends_the_drain_delay_early() {
    let mut svc = Service::start(&["--drain-delay", "60s"]);
    svc.wait_ready();
    let signalled = Instant::now();
    svc.signal("TERM");
    poll(
        Duration::from_secs(2),
        "readiness 503 after SIGTERM",
        || {
            request(svc.addr, "GET", "/-/ready", &[])
                .ok()
                .filter(|r| r.status == 503)
        },
    );
    svc.signal("TERM");
    let status = svc.wait_exit(Duration::from_secs(15));
    assert_eq!(status.code(), Some(0), "log:\n{}", svc.log());
    assert!(signalled.elapsed() < Duration::from_secs(30));
    assert!(svc.log().contains("second signal"));
}

#[test]
fn request_in_flight_at_sigterm_completes() {
    let mut svc = Service::start(&[
        "--fault-latency-ms",
        "3000",
        "--drain-delay",
        "100ms",
        "--shutdown-timeout",
        "20s",
    ]);
    svc.wait_ready();
    let addr = svc.addr;
    let slow = std::thread::spawn(move || request(addr, "GET", "/", &[]));
    // In flight: the slow request plus the scrape asking.
    poll(Duration::from_secs(5), "the slow request in flight", || {
        svc.metric("ultra_boost_http_requests_in_flight")
            .filter(|v| *v >= 2.0)
    });
    svc.signal("INT");
    // The listener closes after the drain delay while the slow request still runs.
    poll(Duration::from_secs(2), "the listener to close", || {
        request(addr, "GET", "/-/healthy", &[])
            .is_err()
            .then_some(())
    });
    assert!(
        !slow.is_finished(),
        "the slow request must still be running"
    );
    let resp = slow
        .join()
        .unwrap()
        .expect("the in-flight request completes");
    assert_eq!(resp.status, 200);
    assert!(resp.body.contains("ultra-boost"));
    let status = svc.wait_exit(Duration::from_secs(10));
    assert_eq!(status.code(), Some(0), "log:\n{}", svc.log());
}

#[test]
fn shutdown_timeout_cuts_off_and_exits_1() {
    let mut svc = Service::start(&[
        "--fault-latency-ms",
        "30000",
        "--drain-delay",
        "0s",
        "--shutdown-timeout",
        "300ms",
    ]);
    svc.wait_ready();
    let addr = svc.addr;
    let _slow = std::thread::spawn(move || request(addr, "GET", "/", &[]));
    poll(Duration::from_secs(5), "the slow request in flight", || {
        svc.metric("ultra_boost_http_requests_in_flight")
            .filter(|v| *v >= 2.0)
    });
    svc.signal("TERM");
    let status = svc.wait_exit(Duration::from_secs(10));
    assert_eq!(status.code(), Some(1));
    assert!(svc.log().contains("shutdown timeout"));
}

#[test]
fn fault_error_share_is_within_five_sigma() {
    let (n, p) = (2000u32, 0.2);
    let svc = Service::start(&[
        "--fault-error-rate",
        "0.2",
        "--fault-seed",
        "20261127",
        "--drain-delay",
        "0s",
    ]);
    svc.wait_ready();
    let mut errors = 0u32;
    for _ in 0..n {
        match svc.get("/").status {
            500 => errors += 1,
            200 => {}
            other => panic!("unexpected status {other}"),
        }
    }
    let mean = f64::from(n) * p;
    let sigma = (mean * (1.0 - p)).sqrt();
    let k = f64::from(errors);
    assert!(
        (k - mean).abs() <= 5.0 * sigma,
        "{errors} errors in {n}: expected {mean} ± {:.1} (5 sigma)",
        5.0 * sigma
    );
    assert!(errors > 0 && errors < n);
    let m = svc.get("/metrics").body;
    assert_eq!(
        metric_value(
            &m,
            r#"ultra_boost_http_requests_total{method="GET",route="/",code="500"}"#
        ),
        Some(k)
    );
    assert_eq!(
        metric_value(
            &m,
            r#"ultra_boost_http_requests_total{method="GET",route="/",code="200"}"#
        ),
        Some(f64::from(n - errors))
    );
    assert!(
        m.contains(r#"fault_error_rate="0.2",fault_latency_ms="0"} 1"#),
        "{m}"
    );
    assert!(svc.log().contains("FAULT INJECTION ON"));
    // Faults apply to GET / only.
    for _ in 0..50 {
        assert_eq!(svc.get("/-/healthy").status, 200);
    }
}

#[test]
fn bad_options_exit_2_naming_the_option() {
    let run = |args: &[&str]| {
        let out = Command::new(env!("CARGO_BIN_EXE_ultra-boost"))
            .args(args)
            .env_remove("ULTRA_BOOST_LISTEN")
            .output()
            .unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let (code, err) = run(&["--fault-error-rate", "1.5"]);
    assert_eq!(code, Some(2));
    assert!(
        err.contains("--fault-error-rate") && err.contains("outside [0, 1]"),
        "{err}"
    );
    let (code, err) = run(&["--drain-delay", "soon"]);
    assert_eq!(code, Some(2));
    assert!(err.contains("--drain-delay") && err.contains("5s"), "{err}");
    let (code, err) = run(&["--upstream-url", "ftp://example.com/"]);
    assert_eq!(code, Some(2));
    assert!(
        err.contains("--upstream-url") && err.contains("scheme"),
        "{err}"
    );

    // A port in use is a start-up error: exit 1, naming the option and address.
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let (code, err) = run(&["--listen", &addr]);
    assert_eq!(code, Some(1));
    assert!(err.contains(&format!("binding --listen {addr}")), "{err}");
}

#[test]
fn help_explains_every_option_and_its_variable() {
    let out = Command::new(env!("CARGO_BIN_EXE_ultra-boost"))
        .arg("--help")
        .output()
        .unwrap();
    assert!(out.status.success());
    let help = String::from_utf8(out.stdout).unwrap();
    for var in [
        "ULTRA_BOOST_LISTEN",
        "ULTRA_BOOST_ADDRESS_FILE",
        "ULTRA_BOOST_UNIX_SOCKET",
        "ULTRA_BOOST_HANDOFF_SOCKET",
        "ULTRA_BOOST_DRAIN_DELAY",
        "ULTRA_BOOST_SHUTDOWN_TIMEOUT",
        "ULTRA_BOOST_STARTUP_DELAY",
        "ULTRA_BOOST_BACKGROUND_INTERVAL",
        "ULTRA_BOOST_UPSTREAM_URL",
        "ULTRA_BOOST_UPSTREAM_TIMEOUT",
        "ULTRA_BOOST_FAULT_ERROR_RATE",
        "ULTRA_BOOST_FAULT_LATENCY_MS",
        "ULTRA_BOOST_FAULT_SEED",
        "ULTRA_BOOST_LOG_FORMAT",
        "ULTRA_BOOST_LOG_LEVEL",
        "ULTRA_BOOST_WORKER_THREADS",
    ] {
        assert!(help.contains(var), "--help lacks {var}:\n{help}");
    }
    assert!(help.contains("SIGTERM"));
}

#[test]
fn options_come_from_the_environment_too() {
    let svc = Service::start_with_env(
        &[],
        &[
            ("ULTRA_BOOST_FAULT_ERROR_RATE", "1"),
            ("ULTRA_BOOST_FAULT_LATENCY_MS", "5"),
            ("ULTRA_BOOST_DRAIN_DELAY", "0s"),
        ],
    );
    svc.wait_ready();
    assert_eq!(svc.get("/").status, 500);
    assert!(
        svc.get("/metrics")
            .body
            .contains(r#"fault_error_rate="1",fault_latency_ms="5"} 1"#)
    );
}

/// One request over a Unix socket, `Connection: close`, whole answer as text.
fn unix_get(path: &std::path::Path, target: &str) -> String {
    use std::io::{Read, Write};
    let mut s = std::os::unix::net::UnixStream::connect(path).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    write!(
        s,
        "GET {target} HTTP/1.1\r\nHost: replica\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut answer = String::new();
    s.read_to_string(&mut answer).unwrap();
    answer
}

#[test]
fn unix_socket_serves_the_same_endpoints_replaces_a_stale_socket_and_is_removed_at_exit() {
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("replica.sock");
    // A socket file left behind by a killed process.
    drop(std::os::unix::net::UnixListener::bind(&sock).unwrap());
    assert!(sock.exists());
    let sock_arg = sock.to_str().unwrap();
    let mut svc = Service::start(&["--unix-socket", sock_arg, "--drain-delay", "0s"]);
    svc.wait_ready();

    let root = unix_get(&sock, "/");
    assert!(root.starts_with("HTTP/1.1 200 OK\r\n"), "{root}");
    assert!(root.contains("\"service\":\"ultra-boost\""), "{root}");
    let ready = unix_get(&sock, "/-/ready");
    assert!(ready.starts_with("HTTP/1.1 200 OK\r\n"), "{ready}");
    // One set of metrics whichever listener a request came in on.
    assert_eq!(
        svc.metric(r#"ultra_boost_http_requests_total{method="GET",route="/",code="200"}"#),
        Some(1.0)
    );
    assert_eq!(svc.get("/").status, 200, "TCP still serves");

    svc.signal("TERM");
    let status = svc.wait_exit(Duration::from_secs(15));
    assert_eq!(status.code(), Some(0), "log:\n{}", svc.log());
    assert!(!sock.exists(), "the socket is removed at exit");
}

#[test]
fn a_socket_path_holding_another_file_is_refused_and_kept() {
    for flag in ["--unix-socket", "--handoff-socket"] {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("not-a-socket");
        std::fs::write(&path, "keep me").unwrap();
        let out = Command::new(env!("CARGO_BIN_EXE_ultra-boost"))
            .args(["--listen", "127.0.0.1:0", flag])
            .arg(&path)
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(1), "{flag}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            err.contains(flag)
                && err.contains(path.to_str().unwrap())
                && err.contains("not a socket"),
            "{err}"
        );
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "keep me");
    }
}
