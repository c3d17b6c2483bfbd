//! SIGKILL the real `guard serve` while its webhook receiver is still
//! answering a "reverted" notification, restart it, and check that the
//! notification is sent again, with the same `X-Guard-Delivery` id, and
//! recorded as delivered: a crash never swallows the news that a release was
//! reverted, and a receiver that drops duplicates hears it once. The receiver is the real
//! receiving side of guard's own signed-webhook protocol, on loopback. Beside
//! it, a double of Grafana's annotations API (`POST /api/annotations` answers
//! `{"message":"Annotation added","id":N}`, `PATCH /api/annotations/{id}`
//! `{"message":"Annotation patched"}`, as Grafana does) holds the verdict's
//! PATCH the same way: after the restart guard closes the region it opened
//! before the crash instead of posting a second one.

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
    // Grafana double: annotations created (id, tags) and patches (id, tags);
    // the first patch that closes a region as "revert" is never answered.
    let created = Arc::new(Mutex::new(Vec::<(u64, Vec<String>)>::new()));
    let patched = Arc::new(Mutex::new(Vec::<(u64, Vec<String>)>::new()));
    let tags = |v: &Value| -> Vec<String> {
        v["tags"]
            .as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|t| t.as_str().map(String::from))
                    .collect()
            })
            .unwrap_or_default()
    };
    let hook = {
        let (created, patched) = (created.clone(), patched.clone());
        let created_for_post = created.clone();
        hook.route(
            "/api/annotations",
            axum::routing::post(move |axum::Json(body): axum::Json<Value>| {
                let created = created_for_post.clone();
                async move {
                    let mut c = created.lock().unwrap_or_else(|p| p.into_inner());
                    let id = c.len() as u64 + 1;
                    c.push((id, tags(&body)));
                    axum::Json(serde_json::json!({"message": "Annotation added", "id": id}))
                }
            }),
        )
        .route(
            "/api/annotations/{id}",
            axum::routing::patch(
                move |axum::extract::Path(id): axum::extract::Path<u64>,
                      axum::Json(body): axum::Json<Value>| {
                    let (created, patched) = (created.clone(), patched.clone());
                    async move {
                        if !created
                            .lock()
                            .unwrap_or_else(|p| p.into_inner())
                            .iter()
                            .any(|(c, _)| *c == id)
                        {
                            return (
                                axum::http::StatusCode::NOT_FOUND,
                                axum::Json(serde_json::json!({"message": "Annotation not found"})),
                            );
                        }
                        let t = tags(&body);
                        let first_revert = {
                            let mut p = patched.lock().unwrap_or_else(|p| p.into_inner());
                            let first = t.iter().any(|t| t == "revert")
                                && !p.iter().any(|(_, t)| t.iter().any(|t| t == "revert"));
                            p.push((id, t));
                            first
                        };
                        if first_revert {
                            tokio::time::sleep(Duration::from_secs(300)).await;
                        }
                        (
                            axum::http::StatusCode::OK,
                            axum::Json(serde_json::json!({"message": "Annotation patched"})),
                        )
                    }
                },
            ),
        )
    };
    let base_url = serve_on_loopback(hook).await;
    let hook_url = format!("{base_url}/hook");
    let env = [
        ("GUARD_WEBHOOK_URL", hook_url.as_str()),
        ("GUARD_WEBHOOK_SECRET", "whsec"),
        ("GUARD_GRAFANA_URL", base_url.as_str()),
        ("GUARD_GRAFANA_TOKEN", "glsa_test"),
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

    // Grafana: the region of build 3 opened before the crash is the one
    // closed as "revert", twice (held, then again after the restart); no
    // second region was posted for it.
    let start = Instant::now();
    let revert_patches = || -> Vec<u64> {
        patched
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .filter(|(_, t)| t.iter().any(|t| t == "revert"))
            .map(|(id, _)| *id)
            .collect()
    };
    while revert_patches().len() < 2 {
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "Grafana's region was not closed again after the restart: patches {:?}, created {:?}",
            patched.lock().unwrap_or_else(|p| p.into_inner()),
            created.lock().unwrap_or_else(|p| p.into_inner())
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let created = created.lock().unwrap_or_else(|p| p.into_inner()).clone();
    let build3: Vec<u64> = created
        .iter()
        .filter(|(_, t)| t.iter().any(|t| t == "3"))
        .map(|(id, _)| *id)
        .collect();
    assert_eq!(build3.len(), 1, "one region for build 3: {created:?}");
    assert!(
        revert_patches().iter().all(|id| *id == build3[0]),
        "the revert closed another region than build 3's: {:?} vs {created:?}",
        revert_patches()
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
    // The restart says what it sent again, and to whom; in plain text, as
    // the log goes to a file.
    let logs = g.logs();
    assert!(
        !logs.contains('\u{1b}'),
        "terminal colour codes in a log file"
    );
    assert!(
        logs.lines()
            .any(|l| l.contains("sending again a notification")
                && l.contains("reverted")
                && l.contains("webhook")),
        "the restart did not say what it sent again: {logs}"
    );
}
