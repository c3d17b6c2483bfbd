//! Delivery to every target, against doubles that answer as the real services
//! do (see `doubles/mod.rs`): payload formats, the webhook signature, the
//! Grafana region and GitHub deployment flows, retries on 500 and 429 with
//! `Retry-After`, none on 400, and a dead target that changes nothing the
//! caller sees.

mod doubles;

use doubles::harness::{Harness, SLACK_PATH, TEAMS_PATH, dead_url, event};
use doubles::{
    Canned, Double, GitHubDouble, GrafanaDouble, SlackDouble, TeamsDouble, WebhookReceiver,
};
use notify::config::RetryConfig;
use notify::{DeliveryLog, Dispatcher, Event, EventKind, MemoryLog, Outcome};
use prometheus_client::registry::Registry;
use serde_json::Value;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// The facts every message must carry, whatever the layout.
fn assert_explains(text: &str) {
    for needle in [
        "ultra-boost",
        "production",
        "42 → 43",
        "revert",
        "requests-availability",
        "21 bad of 412",
        "5.10 %",
        "4.71",
        "-4.59",
        "0.012 %",
        "7.3 s",
        "SPRT crossed its revert bound",
        "https://guard.example/rollouts/7",
    ] {
        assert!(text.contains(needle), "message lacks {needle:?}:\n{text}");
    }
}

#[tokio::test]
async fn slack_gets_block_kit_with_a_plain_text_fallback() {
    let slack = SlackDouble::start().await;
    let h = Harness::new(&[("GUARD_SLACK_WEBHOOK_URL", slack.url(SLACK_PATH))]);
    h.dispatcher.send(event(EventKind::Reverted, 7));
    h.flush().await;

    let reqs = slack.requests();
    assert_eq!(reqs.len(), 1);
    let r = &reqs[0];
    assert_eq!(r.method, "POST");
    assert_eq!(r.path, SLACK_PATH);
    assert_eq!(r.header("content-type"), Some("application/json"));
    let body = r.json();
    assert_explains(body["text"].as_str().unwrap());
    let blocks = body["blocks"].as_array().unwrap();
    assert_eq!(blocks[0]["type"], "header");
    assert_eq!(blocks[0]["text"]["type"], "plain_text");
    assert!(blocks[0]["text"]["text"].as_str().unwrap().chars().count() <= 150);
    let mut rendered = String::new();
    for b in blocks {
        match b["type"].as_str().unwrap() {
            "header" => rendered += b["text"]["text"].as_str().unwrap(),
            "section" => {
                if let Some(t) = b.get("text") {
                    assert_eq!(t["type"], "mrkdwn");
                    rendered += t["text"].as_str().unwrap();
                }
                if let Some(fields) = b.get("fields") {
                    let fields = fields.as_array().unwrap();
                    assert!(
                        !fields.is_empty() && fields.len() <= 10,
                        "a section takes 1..=10 fields"
                    );
                    for f in fields {
                        assert_eq!(f["type"], "mrkdwn");
                        assert!(f["text"].as_str().unwrap().len() <= 2000);
                        rendered += "\n";
                        rendered += f["text"].as_str().unwrap();
                    }
                }
            }
            "context" => {
                for e in b["elements"].as_array().unwrap() {
                    rendered += e["text"].as_str().unwrap();
                }
            }
            other => panic!("unexpected block type {other}"),
        }
    }
    assert_explains(&rendered);

    let rec = h.records("slack");
    assert_eq!(rec.len(), 1);
    assert_eq!(
        (rec[0].outcome, rec[0].http_status, rec[0].detail.as_str()),
        (Outcome::Delivered, Some(200), "ok")
    );
    assert_eq!(
        (rec[0].event, rec[0].rollout_id, rec[0].attempts),
        (EventKind::Reverted, Some(7), 1)
    );
    assert_eq!(h.metric("slack", "delivered"), 1);
    assert_eq!(h.metric("slack", "failed"), 0);
}

#[tokio::test]
async fn teams_gets_an_adaptive_card_and_answers_202() {
    let teams = TeamsDouble::start().await;
    let h = Harness::new(&[("GUARD_TEAMS_WEBHOOK_URL", teams.url(TEAMS_PATH))]);
    h.dispatcher.send(event(EventKind::Reverted, 7));
    h.flush().await;

    let reqs = teams.requests();
    assert_eq!(reqs.len(), 1);
    let body = reqs[0].json();
    assert_eq!(body["type"], "message");
    let att = &body["attachments"][0];
    assert_eq!(
        att["contentType"],
        "application/vnd.microsoft.card.adaptive"
    );
    let card = &att["content"];
    assert_eq!(card["type"], "AdaptiveCard");
    assert_eq!(
        card["$schema"],
        "http://adaptivecards.io/schemas/adaptive-card.json"
    );
    assert!(["1.4", "1.5"].contains(&card["version"].as_str().unwrap()));
    let mut rendered = String::new();
    for item in card["body"].as_array().unwrap() {
        match item["type"].as_str().unwrap() {
            "TextBlock" => rendered += &format!("{}\n", item["text"].as_str().unwrap()),
            "FactSet" => {
                for f in item["facts"].as_array().unwrap() {
                    rendered += &format!(
                        "{}: {}\n",
                        f["title"].as_str().unwrap(),
                        f["value"].as_str().unwrap()
                    );
                }
            }
            other => panic!("unexpected card element {other}"),
        }
    }
    let action = &card["actions"][0];
    assert_eq!(action["type"], "Action.OpenUrl");
    rendered += action["url"].as_str().unwrap();
    assert_explains(&rendered);
    assert_eq!(
        card["body"][0]["color"], "Attention",
        "a revert is bad news"
    );

    let rec = h.records("teams");
    assert_eq!(
        (rec.len(), rec[0].outcome, rec[0].http_status),
        (1, Outcome::Delivered, Some(202))
    );
}

#[tokio::test]
async fn webhook_events_are_signed_and_verifiable() {
    let secret = "whsec_0123456789abcdef";
    let receiver = WebhookReceiver::start(secret).await;
    let h = Harness::new(&[
        ("GUARD_WEBHOOK_URL", receiver.url("/hooks/guard")),
        ("GUARD_WEBHOOK_SECRET", secret.to_owned()),
    ]);
    h.dispatcher.send(event(EventKind::Reverted, 7));
    h.dispatcher
        .send_incident(event(EventKind::IncidentOpened, 8), "c6eadffa33fcdf37");
    h.flush().await;

    let reqs = receiver.requests();
    assert_eq!(reqs.len(), 2);
    let now = jiff::Timestamp::now().as_second();
    for r in &reqs {
        let ts = r.header("x-guard-timestamp").unwrap();
        let sig = r.header("x-guard-signature").unwrap();
        notify::webhook::verify(
            secret.as_bytes(),
            ts,
            sig,
            &r.body,
            now,
            Duration::from_secs(300),
        )
        .expect("signature verifies");
        // The same signature must not verify with another secret or body.
        assert!(
            notify::webhook::verify(b"other", ts, sig, &r.body, now, Duration::from_secs(300))
                .is_err()
        );
        assert_eq!(r.header("x-guard-delivery").map(str::len), Some(32));
    }
    assert_eq!(reqs[0].header("x-guard-event"), Some("reverted"));
    let body = reqs[0].json();
    assert_eq!(body["type"], "rollout.reverted");
    assert_eq!(body["id"].as_str(), reqs[0].header("x-guard-delivery"));
    let ev: Event = serde_json::from_value(body["event"].clone()).expect("the event round-trips");
    assert_eq!(ev, event(EventKind::Reverted, 7));
    assert_explains(body["text"].as_str().unwrap());
    let incident = reqs[1].json();
    assert_eq!(
        (incident["type"].as_str(), incident["fingerprint"].as_str()),
        (Some("incident.opened"), Some("c6eadffa33fcdf37"))
    );
    assert!(
        h.records("webhook")
            .iter()
            .all(|r| r.outcome == Outcome::Delivered && r.http_status == Some(204))
    );
}

#[tokio::test]
async fn webhook_with_the_wrong_secret_is_refused_and_not_retried() {
    let receiver = WebhookReceiver::start("the-real-secret").await;
    let h = Harness::new(&[
        ("GUARD_WEBHOOK_URL", receiver.url("/hook")),
        ("GUARD_WEBHOOK_SECRET", "a-wrong-secret".into()),
    ]);
    h.dispatcher.send(event(EventKind::Promoted, 1));
    h.flush().await;
    assert_eq!(receiver.requests().len(), 1, "401 is not retried");
    let rec = h.records("webhook");
    assert_eq!(
        (rec[0].outcome, rec[0].http_status),
        (Outcome::Failed, Some(401))
    );
    assert!(
        rec[0].detail.contains("signature does not match"),
        "{}",
        rec[0].detail
    );
    assert!(!rec[0].detail.contains("a-wrong-secret"));
}

#[tokio::test]
async fn grafana_region_covers_the_verification() {
    let grafana = GrafanaDouble::start("glsa_test_token").await;
    let h = Harness::new(&[
        ("GUARD_GRAFANA_URL", grafana.url("/")),
        ("GUARD_GRAFANA_TOKEN", "glsa_test_token".into()),
    ]);
    h.dispatcher.send(event(EventKind::Started, 7));
    h.dispatcher.send(event(EventKind::Reverted, 7));
    // A verdict guard saw no start for (restart): one region posted whole.
    h.dispatcher.send(event(EventKind::Promoted, 8));
    h.flush().await;

    let reqs = grafana.requests();
    let calls: Vec<_> = reqs
        .iter()
        .map(|r| format!("{} {}", r.method, r.path))
        .collect();
    assert_eq!(
        calls,
        [
            "POST /api/annotations",
            "PATCH /api/annotations/1",
            "POST /api/annotations"
        ]
    );
    for r in &reqs {
        assert_eq!(r.header("authorization"), Some("Bearer glsa_test_token"));
    }
    let open = reqs[0].json();
    assert_eq!(open["time"], 1_764_201_600_000i64);
    assert!(
        open.get("timeEnd").is_none(),
        "the region is open while verifying: {open}"
    );
    let tags = |v: &Value| {
        v["tags"]
            .as_array()
            .unwrap()
            .iter()
            .map(|t| t.as_str().unwrap().to_owned())
            .collect::<Vec<_>>()
    };
    assert_eq!(
        tags(&open),
        ["guard", "ultra-boost", "production", "43", "verifying"]
    );

    let (region, whole) =
        grafana.with_memory(|m| (m.annotations[&1].clone(), m.annotations[&2].clone()));
    assert_eq!(
        (region["time"].as_i64(), region["timeEnd"].as_i64()),
        (Some(1_764_201_600_000), Some(1_764_201_607_300))
    );
    assert_eq!(
        tags(&region),
        ["guard", "ultra-boost", "production", "43", "revert"]
    );
    assert_explains(region["text"].as_str().unwrap());
    assert_eq!(
        (whole["time"].as_i64(), whole["timeEnd"].as_i64()),
        (Some(1_764_201_600_000), Some(1_764_201_607_300))
    );
    assert_eq!(tags(&whole)[4], "promote");
    assert_eq!(h.metric("grafana", "delivered"), 3);
    let details: Vec<_> = h.records("grafana").into_iter().map(|r| r.detail).collect();
    assert_eq!(
        details,
        ["id 1", "", "id 2"],
        "history keeps what was created"
    );
}

#[tokio::test]
async fn grafana_incident_region_opens_on_firing_and_closes_on_resolved() {
    let grafana = GrafanaDouble::start("tok").await;
    let h = Harness::new(&grafana_env(&grafana));
    let mut firing = event(EventKind::IncidentOpened, 0);
    firing.rollout_id = None;
    firing.ended_at_ms = None;
    h.dispatcher.send_incident(firing.clone(), "fp1");
    h.dispatcher.send_incident(firing, "fp1"); // Alertmanager's repeat: no second region
    let mut resolved = event(EventKind::IncidentResolved, 0);
    resolved.rollout_id = None;
    resolved.ended_at_ms = Some(1_764_201_900_000);
    h.dispatcher.send_incident(resolved, "fp1");
    h.flush().await;
    let calls: Vec<_> = grafana
        .requests()
        .iter()
        .map(|r| format!("{} {}", r.method, r.path))
        .collect();
    assert_eq!(calls, ["POST /api/annotations", "PATCH /api/annotations/1"]);
    let a = grafana.with_memory(|m| m.annotations[&1].clone());
    assert_eq!(
        (a["time"].as_i64(), a["timeEnd"].as_i64()),
        (Some(1_764_201_600_000), Some(1_764_201_900_000))
    );
    assert!(
        a["tags"]
            .as_array()
            .unwrap()
            .iter()
            .any(|t| t == "incident")
    );
}

#[tokio::test]
async fn grafana_annotation_deleted_meanwhile_is_posted_whole() {
    let grafana = GrafanaDouble::start("tok").await;
    let h = Harness::new(&grafana_env(&grafana));
    h.dispatcher.send(event(EventKind::Started, 3));
    h.flush().await;
    grafana.forget_annotations();
    h.dispatcher.send(event(EventKind::Promoted, 3));
    h.flush().await;
    let calls: Vec<_> = grafana
        .requests()
        .iter()
        .map(|r| format!("{} {}", r.method, r.path))
        .collect();
    assert_eq!(
        calls,
        [
            "POST /api/annotations",
            "PATCH /api/annotations/1",
            "POST /api/annotations"
        ]
    );
    let region = grafana.with_memory(|m| m.annotations[&2].clone());
    assert_eq!(
        (region["time"].as_i64(), region["timeEnd"].as_i64()),
        (Some(1_764_201_600_000), Some(1_764_201_607_300))
    );
    let outcomes: Vec<_> = h
        .records("grafana")
        .into_iter()
        .map(|r| (r.action, r.outcome, r.http_status))
        .collect();
    assert_eq!(
        outcomes[1],
        ("close annotation".to_owned(), Outcome::Failed, Some(404))
    );
    assert_eq!(
        outcomes[2],
        (
            "create annotation".to_owned(),
            Outcome::Delivered,
            Some(200)
        )
    );
}

/// A close Grafana refused (500 until the retries ran out) keeps the
/// region's id: the rollout's next event (a revert during the watch) closes
/// that region instead of posting a second one beside the open first.
#[tokio::test]
async fn a_region_grafana_failed_to_close_is_closed_by_the_next_event() {
    let grafana = GrafanaDouble::start("tok").await;
    let h = Harness::new(&grafana_env(&grafana));
    h.dispatcher.send(event(EventKind::Started, 5));
    h.flush().await;
    grafana.script((0..4).map(|_| Canned::status(500, "Failed to update annotation")));
    h.dispatcher.send(event(EventKind::Promoted, 5));
    h.flush().await;
    h.dispatcher.send(event(EventKind::Reverted, 5));
    h.flush().await;
    let calls: Vec<_> = grafana
        .requests()
        .iter()
        .map(|r| format!("{} {}", r.method, r.path))
        .collect();
    assert_eq!(
        calls.first().map(String::as_str),
        Some("POST /api/annotations")
    );
    assert_eq!(calls.len(), 6, "{calls:?}");
    assert!(
        calls[1..].iter().all(|c| c == "PATCH /api/annotations/1"),
        "{calls:?}"
    );
    let region = grafana.with_memory(|m| m.annotations[&1].clone());
    assert!(region["timeEnd"].as_i64().is_some(), "{region}");
}

#[tokio::test]
async fn a_restarted_guard_closes_the_region_and_reports_to_the_deployment_it_opened() {
    let grafana = GrafanaDouble::start("tok").await;
    let gh = GitHubDouble::start("ghp_testtoken").await;
    let mut env = github_env(&gh);
    env.extend(grafana_env(&grafana));
    let log = Arc::new(MemoryLog::default());
    let retry = RetryConfig {
        max_attempts: 2,
        base_ms: 5,
        max_ms: 100,
        timeout_ms: 2_000,
    };
    let before = Harness::with_log(&env, None, retry.clone(), log.clone());
    before.dispatcher.send(event(EventKind::Started, 7));
    before.flush().await;
    drop(before);

    // The same store, a new process: nothing of rollout 7 in memory.
    let after = Harness::with_log(&env, None, retry, log.clone());
    after.dispatcher.send(event(EventKind::Reverted, 7));
    after.flush().await;

    let calls = |d: &Double| {
        d.requests()
            .iter()
            .map(|r| format!("{} {}", r.method, r.path))
            .collect::<Vec<_>>()
    };
    assert_eq!(
        calls(&grafana),
        ["POST /api/annotations", "PATCH /api/annotations/1"],
        "the region opened before the restart is closed, not a second one posted"
    );
    let region = grafana.with_memory(|m| m.annotations[&1].clone());
    assert_eq!(
        (region["time"].as_i64(), region["timeEnd"].as_i64()),
        (Some(1_764_201_600_000), Some(1_764_201_607_300))
    );
    assert_eq!(
        calls(&gh),
        [
            "POST /repos/acme/ultra-boost/deployments",
            "POST /repos/acme/ultra-boost/deployments/1/statuses",
            "POST /repos/acme/ultra-boost/deployments/1/statuses",
            "POST /repos/acme/ultra-boost/deployments/1/statuses",
        ],
        "the verdict goes to the deployment created before the restart"
    );
    let states: Vec<_> = gh.with_memory(|m| {
        m.deployments[&1]
            .1
            .iter()
            .map(|s| s["state"].as_str().unwrap_or_default().to_owned())
            .collect()
    });
    assert_eq!(states, ["in_progress", "failure", "inactive"]);
    // A closed region is forgotten: the deployment stays for later statuses.
    assert_eq!(log.recall("grafana", 7), None);
    assert_eq!(log.recall("github", 7), Some(1));
}

/// A Grafana double started with the token `tok`.
fn grafana_env(grafana: &Double) -> Vec<(&'static str, String)> {
    vec![
        ("GUARD_GRAFANA_URL", grafana.url("")),
        ("GUARD_GRAFANA_TOKEN", "tok".into()),
    ]
}

fn github_env(gh: &Double) -> Vec<(&'static str, String)> {
    vec![
        ("GUARD_GITHUB_API_URL", gh.url("")),
        ("GUARD_GITHUB_TOKEN", "ghp_testtoken".into()),
        ("GUARD_GITHUB_REPO", "acme/ultra-boost".into()),
    ]
}

#[tokio::test]
async fn github_deployment_goes_in_progress_then_failure_and_inactive_on_revert() {
    let gh = GitHubDouble::start("ghp_testtoken").await;
    let h = Harness::new(&github_env(&gh));
    h.dispatcher.send(event(EventKind::Started, 7));
    h.dispatcher.send(event(EventKind::Reverted, 7));
    let mut review = event(EventKind::Started, 9);
    review.environment = "pr-42".into();
    review.transient = true;
    review.environment_url = Some("https://pr-42.ultra-boost.example".into());
    h.dispatcher.send(review.clone());
    review.kind = EventKind::Promoted;
    h.dispatcher.send(review);
    h.flush().await;

    let reqs = gh.requests();
    let calls: Vec<_> = reqs
        .iter()
        .map(|r| format!("{} {}", r.method, r.path))
        .collect();
    assert_eq!(
        calls,
        [
            "POST /repos/acme/ultra-boost/deployments",
            "POST /repos/acme/ultra-boost/deployments/1/statuses",
            "POST /repos/acme/ultra-boost/deployments/1/statuses",
            "POST /repos/acme/ultra-boost/deployments/1/statuses",
            "POST /repos/acme/ultra-boost/deployments",
            "POST /repos/acme/ultra-boost/deployments/5/statuses",
            "POST /repos/acme/ultra-boost/deployments/5/statuses",
        ]
    );
    for r in &reqs {
        assert_eq!(r.header("accept"), Some("application/vnd.github+json"));
        assert_eq!(r.header("authorization"), Some("Bearer ghp_testtoken"));
        assert_eq!(r.header("x-github-api-version"), Some("2022-11-28"));
        assert!(r.header("user-agent").unwrap().starts_with("guard/"));
    }
    let d = reqs[0].json();
    assert_eq!(d["ref"], "9fceb02d0ae598e95dc970b74767f19372d61af8");
    assert_eq!(d["environment"], "production");
    assert_eq!(
        (
            d["auto_merge"].as_bool(),
            d["required_contexts"].as_array().map(Vec::len)
        ),
        (Some(false), Some(0))
    );
    assert_eq!(
        (
            d["transient_environment"].as_bool(),
            d["production_environment"].as_bool()
        ),
        (Some(false), Some(true))
    );

    let (prod, review) =
        gh.with_memory(|m| (m.deployments[&1].1.clone(), m.deployments[&5].clone()));
    let states: Vec<_> = prod.iter().map(|s| s["state"].as_str().unwrap()).collect();
    assert_eq!(states, ["in_progress", "failure", "inactive"]);
    assert!(
        prod[1]["description"]
            .as_str()
            .unwrap()
            .contains("SPRT crossed its revert bound")
    );
    assert!(
        prod.iter()
            .all(|s| s["description"].as_str().unwrap().chars().count() <= 140)
    );
    assert_eq!(prod[1]["log_url"], "https://guard.example/rollouts/7");
    assert_eq!(prod[2]["description"], "replaced by 42 (revert)");
    assert_eq!(
        (
            review.0["transient_environment"].as_bool(),
            review.0["environment"].as_str()
        ),
        (Some(true), Some("pr-42"))
    );
    let review_states: Vec<_> = review
        .1
        .iter()
        .map(|s| s["state"].as_str().unwrap())
        .collect();
    assert_eq!(review_states, ["in_progress", "success"]);
    assert_eq!(
        review.1[1]["environment_url"],
        "https://pr-42.ultra-boost.example"
    );
    assert_eq!(review.1[1]["auto_inactive"], true);
    assert_eq!(h.metric("github", "delivered"), 7);
}

#[tokio::test]
async fn server_errors_are_retried_until_delivered() {
    let slack = SlackDouble::start().await;
    slack.script([Canned::status(500, "rollup_error"), Canned::status(503, "")]);
    let h = Harness::new(&[("GUARD_SLACK_WEBHOOK_URL", slack.url(SLACK_PATH))]);
    h.dispatcher.send(event(EventKind::Promoted, 1));
    h.flush().await;
    assert_eq!(slack.requests().len(), 3);
    let rec = h.records("slack");
    assert_eq!(
        (rec.len(), rec[0].outcome, rec[0].attempts),
        (1, Outcome::Delivered, 3)
    );
    assert_eq!(
        (h.metric("slack", "retried"), h.metric("slack", "delivered")),
        (2, 1)
    );
}

#[tokio::test]
async fn rate_limits_are_retried_after_the_time_the_server_asks_for() {
    let grafana = GrafanaDouble::start("tok").await;
    grafana.script([Canned::retry_after(429, "1")]);
    let h = Harness::new(&grafana_env(&grafana));
    h.dispatcher.send(event(EventKind::Promoted, 1));
    h.flush().await;
    let reqs = grafana.requests();
    assert_eq!(reqs.len(), 2);
    let gap = reqs[1].at - reqs[0].at;
    // Backoff alone would wait ≤ 5 ms; only Retry-After explains a second.
    assert!(
        gap >= Duration::from_millis(950),
        "retried after {gap:?}, Retry-After asked for 1 s"
    );
    assert_eq!(h.records("grafana")[0].outcome, Outcome::Delivered);
}

/// GitHub answers an exhausted rate limit with 403, no `Retry-After`, and
/// the reset time: waited out, not given up on as a refusal, and not retried
/// before the reset.
#[tokio::test]
async fn a_github_rate_limit_is_waited_out_until_its_reset() {
    let gh = GitHubDouble::start("ghp_testtoken").await;
    gh.script([Canned::github_rate_limited(Duration::from_secs(1))]);
    let h = Harness::new(&github_env(&gh));
    h.dispatcher.send(event(EventKind::Started, 3));
    h.flush().await;
    let reqs = gh.requests();
    assert_eq!(
        reqs.iter()
            .map(|r| format!("{} {}", r.method, r.path))
            .collect::<Vec<_>>(),
        [
            "POST /repos/acme/ultra-boost/deployments",
            "POST /repos/acme/ultra-boost/deployments",
            "POST /repos/acme/ultra-boost/deployments/1/statuses",
        ]
    );
    // The reset is a whole epoch second 1 s ahead (+1 s margin): backoff
    // alone would retry within milliseconds.
    let gap = reqs[1].at - reqs[0].at;
    assert!(
        gap >= Duration::from_millis(900),
        "retried after {gap:?}, before the rate limit's reset"
    );
    assert_eq!(h.records("github")[0].outcome, Outcome::Delivered);
}

#[tokio::test]
async fn a_hung_server_times_out_and_is_retried() {
    let slack = SlackDouble::start().await;
    slack.script([Canned::hang(Duration::from_secs(3))]);
    let h = Harness::build(
        &[("GUARD_SLACK_WEBHOOK_URL", slack.url(SLACK_PATH))],
        None,
        RetryConfig {
            max_attempts: 3,
            base_ms: 5,
            max_ms: 50,
            timeout_ms: 300,
        },
    );
    let started = Instant::now();
    h.dispatcher.send(event(EventKind::Promoted, 1));
    h.flush().await;
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "the hung request was not cut at its timeout"
    );
    assert_eq!(slack.requests().len(), 2);
    let rec = h.records("slack");
    assert_eq!(
        (rec.len(), rec[0].outcome, rec[0].attempts),
        (1, Outcome::Delivered, 2)
    );
    assert_eq!(h.metric("slack", "retried"), 1);
}

#[tokio::test]
async fn retries_stop_after_max_attempts() {
    let teams = TeamsDouble::start().await;
    teams.script((0..10).map(|_| Canned::status(502, "bad gateway")));
    let h = Harness::new(&[("GUARD_TEAMS_WEBHOOK_URL", teams.url(TEAMS_PATH))]);
    h.dispatcher.send(event(EventKind::Held, 1));
    h.flush().await;
    assert_eq!(teams.requests().len(), 4, "max_attempts = 4");
    let rec = h.records("teams");
    assert_eq!(
        (rec[0].outcome, rec[0].attempts, rec[0].http_status),
        (Outcome::Failed, 4, Some(502))
    );
    assert!(
        rec[0].detail.starts_with("gave up after 4 attempts"),
        "{}",
        rec[0].detail
    );
    assert_eq!(
        (h.metric("teams", "retried"), h.metric("teams", "failed")),
        (3, 1)
    );
}

#[tokio::test]
async fn client_errors_are_not_retried() {
    let slack = SlackDouble::start().await;
    slack.script([Canned::status(400, "invalid_payload")]);
    let h = Harness::new(&[("GUARD_SLACK_WEBHOOK_URL", slack.url(SLACK_PATH))]);
    h.dispatcher.send(event(EventKind::Reverted, 1));
    h.flush().await;
    assert_eq!(slack.requests().len(), 1);
    let rec = h.records("slack");
    assert_eq!(
        (rec[0].outcome, rec[0].http_status, rec[0].attempts),
        (Outcome::Failed, Some(400), 1)
    );
    assert!(rec[0].detail.contains("invalid_payload"));
    assert_eq!(
        (h.metric("slack", "failed"), h.metric("slack", "retried")),
        (1, 0)
    );
}

/// A port that refuses connections: bound, then closed.

#[tokio::test]
async fn a_dead_target_neither_blocks_send_nor_delays_the_others() {
    let teams = TeamsDouble::start().await;
    let h = Harness::with_capacity(
        &[
            ("GUARD_SLACK_WEBHOOK_URL", dead_url().await),
            ("GUARD_TEAMS_WEBHOOK_URL", teams.url(TEAMS_PATH)),
        ],
        Some(8),
    );
    let started = Instant::now();
    for i in 0..200 {
        h.dispatcher.send(event(EventKind::Promoted, i));
    }
    let took = started.elapsed();
    // Generous bound: a blocking send would wait on 200 × 4 connection attempts.
    assert!(took < Duration::from_secs(1), "200 sends took {took:?}");
    // Queues of 8: most events for both targets are dropped and counted, none blocks.
    assert!(
        h.metric("slack", "dropped") >= 150,
        "dropped {}",
        h.metric("slack", "dropped")
    );
    h.flush().await;
    // Teams got what fit in its queue, independently of the dead Slack.
    let delivered = h.metric("teams", "delivered");
    assert!(delivered >= 8 && delivered == teams.requests().len() as u64);
    let failed: Vec<_> = h
        .records("slack")
        .into_iter()
        .filter(|r| r.outcome == Outcome::Failed)
        .collect();
    assert!(!failed.is_empty());
    for r in &failed {
        assert_eq!((r.attempts, r.http_status), (4, None));
        assert!(r.detail.contains("connect"), "{}", r.detail);
        assert!(
            !r.detail.contains("DEADSECRET"),
            "secret leaked: {}",
            r.detail
        );
    }
    assert_eq!(
        h.metric("slack", "failed") + h.metric("slack", "dropped"),
        200
    );
}

#[test]
fn building_outside_a_runtime_is_an_error_not_a_panic() {
    let mut registry = Registry::default();
    let err = Dispatcher::new(
        notify::Targets::default(),
        &mut registry,
        Arc::new(notify::NoLog),
    )
    .unwrap_err();
    assert!(matches!(err, notify::NotifyError::NoRuntime));
}

/// Creating a deployment is the one GitHub request that must not take effect
/// twice: a second deployment for one rollout would stay `pending` forever.
/// When GitHub created it but its answer was lost (its edge's 502, an answer
/// later than the timeout), the retry finds it by the rollout in its payload;
/// a 502 that created nothing, or another rollout's deployment of the same
/// commit, is not mistaken for it.
#[tokio::test]
async fn a_deployment_github_created_before_its_answer_was_lost_is_not_created_twice() {
    let gh = GitHubDouble::start("ghp_testtoken").await;
    let h = Harness::build(
        &github_env(&gh),
        None,
        RetryConfig {
            max_attempts: 4,
            base_ms: 5,
            max_ms: 50,
            timeout_ms: 500,
        },
    );
    let lost_502 = Canned::acts_then_answers(502, "<html>Bad Gateway</html>", Duration::ZERO);
    let lost_in_time = Canned::acts_then_answers(201, "{}", Duration::from_secs(2));
    gh.script([Canned::status(502, "<html>Bad Gateway</html>")]);
    h.dispatcher.send(event(EventKind::Started, 3));
    h.flush().await;
    gh.script([lost_502]);
    h.dispatcher.send(event(EventKind::Started, 4));
    h.flush().await;
    gh.script([lost_in_time]);
    h.dispatcher.send(event(EventKind::Started, 5));
    h.flush().await;

    let rollouts_of_deployments = gh.with_memory(|m| {
        let mut ids: Vec<_> = m.deployments.keys().copied().collect();
        ids.sort_unstable();
        ids.iter()
            .map(|id| {
                m.deployments[id].0["payload"]["rollout_id"]
                    .as_i64()
                    .unwrap()
            })
            .collect::<Vec<_>>()
    });
    assert_eq!(
        rollouts_of_deployments,
        [3, 4, 5],
        "one deployment per rollout"
    );
    let lines: Vec<String> = gh
        .requests()
        .iter()
        .map(|r| match r.method.as_str() {
            "GET" => format!("GET {}?{}", r.path, r.query),
            m => format!("{m} {}", r.path),
        })
        .collect();
    let list = "GET /repos/acme/ultra-boost/deployments?ref=9fceb02d0ae598e95dc970b74767f19372d61af8&environment=production&task=deploy&per_page=100";
    assert_eq!(
        lines,
        [
            // Rollout 3: the 502 created nothing; the list is empty; created anew.
            "POST /repos/acme/ultra-boost/deployments",
            list,
            "POST /repos/acme/ultra-boost/deployments",
            "POST /repos/acme/ultra-boost/deployments/1/statuses",
            // Rollout 4: created, answer lost; rollout 3's deployment of the
            // same commit is listed too, and not taken.
            "POST /repos/acme/ultra-boost/deployments",
            list,
            "POST /repos/acme/ultra-boost/deployments/3/statuses",
            // Rollout 5: created, answer too late.
            "POST /repos/acme/ultra-boost/deployments",
            list,
            "POST /repos/acme/ultra-boost/deployments/5/statuses",
        ]
        .map(str::to_owned)
    );
    let records = h.records("github");
    assert!(
        records.iter().all(|r| r.outcome == Outcome::Delivered),
        "{records:#?}"
    );
}
