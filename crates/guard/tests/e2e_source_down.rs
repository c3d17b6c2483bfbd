//! A signal source that cannot be reached holds the rollout: the real
//! `guard serve` with the `prometheus` source pointed at a loopback port where
//! nothing listens. The candidate takes traffic, guard never promotes it
//! blind, says why in status and history, and a person can still abort.

#[path = "support/serve_harness.rs"]
mod serve_harness;

use std::time::Duration;

use serde_json::json;
use serve_harness::{Guard, config, deploy, get, post, step_states, wait_state};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unreachable_source_holds_and_never_promotes() {
    // A port the OS gave us and we closed again: connection refused.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("port")
        .port();
    let yaml = config("2s")
        .replace("engine:\n", &format!("signals:\n  source: prometheus\n  prometheus:\n    url: http://127.0.0.1:{port}\n    timeout: 500ms\nengine:\n"))
        .replace(
            "sli: { type: availability, route: \"/\" }",
            "sli: { type: availability, route: \"/\" }\n        prometheus: { total: 'ultra_boost_http_requests_total', bad: 'ultra_boost_http_requests_total{code=~\"5..\"}' }",
        )
        .replace(
            "sli: { type: latency, threshold: 200ms, route: \"/\" }",
            "sli: { type: latency, threshold: 200ms, route: \"/\" }\n        prometheus: { total: 'ultra_boost_http_request_duration_seconds_count', good: 'ultra_boost_http_request_duration_seconds_bucket{le=\"0.2\"}' }",
        );
    let dir = tempfile::tempdir().expect("tmp");
    std::fs::write(dir.path().join("guard.yaml"), yaml).expect("config");
    let g = Guard::start(dir.path(), &[]);
    wait_state(&g.api, 1, "promoted", Duration::from_secs(30), |s| {
        s == "promoted"
    })
    .await;
    let id = deploy(&g.api, "2").await;
    let held = wait_state(&g.api, id, "held", Duration::from_secs(30), |s| s == "held").await;
    let reason = held["reason"].as_str().unwrap_or_default().to_string();
    assert!(
        reason.contains("signal source down") && reason.contains(&port.to_string()),
        "{reason}"
    );
    assert_eq!(held["verdict"], "hold");
    assert_eq!(held["live"]["source_ok"], false, "{held}");
    // Longer than a healthy verification would take: still held, nothing promoted.
    tokio::time::sleep(Duration::from_secs(4)).await;
    let still = get(&g.api, &format!("/api/v1/rollouts/{id}")).await;
    assert_eq!(still["state"], "held", "{still}");
    assert!(!step_states(&still).iter().any(|s| s == "promoting"));
    assert!(
        g.logs()
            .contains("holding the rollout (never promoting blind)")
            && g.logs()
                .contains("cannot check the SLO queries against Prometheus now"),
        "{}",
        g.logs()
    );
    // A person can still abort: the old build comes back.
    let (code, body) = post(&g.api, &format!("/api/v1/rollouts/{id}/abort"), json!({})).await;
    assert_eq!(code, 200, "{body}");
    let done = wait_state(&g.api, id, "aborted", Duration::from_secs(30), |s| {
        s == "aborted"
    })
    .await;
    assert_eq!(done["verdict"], "abort");
    let status = get(&g.api, "/api/v1/status").await;
    assert_eq!(status[0]["release"], "1", "{status}");
}
