//! SIGKILL the real `guard serve` while its webhook receiver is still
//! answering a "reverted" notification, restart it, and check that the
//! notification is sent again, with the same `X-Guard-Delivery` id, and
//! recorded as delivered: a crash never swallows the news that a release was
//! reverted, and a receiver that drops duplicates hears it once. The receiver is the real
//! receiving side of guard's own signed-webhook protocol, on loopback.

#[path = "support/serve_harness.rs"]
mod serve_harness;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::Value;
use serve_harness::{Guard, Load, config, deploy, get, router, serve_on_loopback, wait_state};

/// Polls `count` until it reaches `at_least` (deadline 30 s).
async fn wait_count(count: &AtomicU64, at_least: u64, what: &str) {
    let start = Instant::now();
    while count.load(Ordering::SeqCst) < at_least {
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "{what}: {} of {at_least} within 30 s",
            count.load(Ordering::SeqCst)
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_notification_unanswered_when_guard_is_killed_is_sent_again_on_restart() {
    let dir = tempfile::tempdir().expect("tmp");
    // A long per-request timeout: guard itself must not retry the held
    // request before it is killed.
    let yaml = format!(
        "{}notify:\n  retry: {{ max_attempts: 3, base_ms: 200, max_ms: 1000, timeout_ms: 120000 }}\n",
        config("2s")
    );
    std::fs::write(dir.path().join("guard.yaml"), yaml).expect("config");

    // Every "reverted" request is counted and its delivery id kept; the
    // first is never answered.
    let reverted = Arc::new(AtomicU64::new(0));
    let ids = Arc::new(Mutex::new(Vec::<String>::new()));
    let hook = {
        let (reverted, ids) = (reverted.clone(), ids.clone());
        axum::Router::new().route(
            "/hook",
            axum::routing::post(move |headers: axum::http::HeaderMap, body: String| {
                let (reverted, ids) = (reverted.clone(), ids.clone());
                async move {
                    if body.contains("\"type\":\"rollout.reverted\"") {
                        let id = headers
                            .get(notify::webhook::DELIVERY_HEADER)
                            .and_then(|v| v.to_str().ok())
                            .unwrap_or_default()
                            .to_string();
                        ids.lock().unwrap_or_else(|p| p.into_inner()).push(id);
                        if reverted.fetch_add(1, Ordering::SeqCst) == 0 {
                            tokio::time::sleep(Duration::from_secs(300)).await;
                        }
                    }
                    "ok"
                }
            }),
        )
    };
    let hook_url = format!("{}/hook", serve_on_loopback(hook).await);
    let env = [
        ("GUARD_WEBHOOK_URL", hook_url.as_str()),
        ("GUARD_WEBHOOK_SECRET", "whsec"),
    ];

    let mut g = Guard::start(dir.path(), &env);
    wait_state(&g.api, 1, "promoted", Duration::from_secs(30), |s| {
        s == "promoted"
    })
    .await;
    let load = Load::start(router(&g.api).await, 100);
    // Build 3 answers 5 % of its requests with errors.
    let id = deploy(&g.api, "3").await;
    let done = wait_state(&g.api, id, "reverted", Duration::from_secs(60), |s| {
        s == "reverted" || s == "promoted"
    })
    .await;
    assert_eq!(done["state"], "reverted", "{}", g.logs());
    wait_count(
        &reverted,
        1,
        "the reverted notification reached the receiver",
    )
    .await;

    g.kill();
    assert_eq!(
        reverted.load(Ordering::SeqCst),
        1,
        "guard retried on its own before it was killed"
    );
    g = Guard::start(dir.path(), &env);
    load.retarget(router(&g.api).await);
    wait_count(
        &reverted,
        2,
        "the reverted notification sent again after the restart",
    )
    .await;
    // The same delivery id: a receiver that drops duplicates by it sees it once.
    let ids = ids.lock().unwrap_or_else(|p| p.into_inner()).clone();
    assert!(
        ids.len() >= 2 && !ids[0].is_empty() && ids[0] == ids[1],
        "delivery ids {ids:?}"
    );

    // History shows it delivered.
    let start = Instant::now();
    loop {
        let detail: Value = get(&g.api, &format!("/api/v1/rollouts/{id}")).await;
        let delivered = detail["deliveries"].as_array().is_some_and(|a| {
            a.iter().any(|d| {
                d["notifier"] == "webhook"
                    && d["ok"] == true
                    && d["event"]
                        .as_str()
                        .is_some_and(|e| e.starts_with("reverted"))
            })
        });
        if delivered {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(15),
            "no delivered reverted notification in history: {}",
            detail["deliveries"]
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // The restart says what it sent again, and to whom.
    let logs = g.logs();
    assert!(
        logs.lines()
            .any(|l| l.contains("sending again a notification")
                && l.contains("reverted")
                && l.contains("webhook")),
        "the restart did not say what it sent again: {logs}"
    );
}
