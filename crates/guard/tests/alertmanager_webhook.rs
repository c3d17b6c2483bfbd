//! guard's Alertmanager receiver (`POST /api/v1/alerts`) end to end: real
//! Alertmanager (Debian's `prometheus-alertmanager`) and hand-written messages
//! in its documented format go in; Grafana region annotations (opened on
//! firing, closed on resolved) and Slack messages naming the suspect release
//! come out, through the real notify dispatcher, to `GrafanaDouble` and
//! `SlackDouble` on loopback.

// The receiver is compiled straight from its file, so these tests do not
// depend on how `api/mod.rs` wires it in.
#[path = "../src/api/alertmanager.rs"]
mod alertmanager;
#[path = "../../notify/tests/doubles/mod.rs"]
mod doubles;

use alertmanager::{AlertmanagerState, PromotedRelease, ReleaseLookup};
use doubles::{Double, GrafanaDouble, SlackDouble};
use notify::config::RetryConfig;
use notify::{Dispatcher, MemoryLog, NotifyConfig};
use serde_json::{Value, json};
use std::collections::HashMap;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

const TOKEN: &str = "am-test-token-0123";
/// The suspect went out exactly 12 minutes before the alert.
const STARTS_AT: &str = "2026-11-27T01:00:00Z";
const STARTS_MS: i64 = 1_795_741_200_000;
const PROMOTED_MS: i64 = STARTS_MS - 12 * 60_000;

/// History as the store would answer it: one promotion per environment.
struct History;

impl ReleaseLookup for History {
    fn last_promoted(&self, service: Option<&str>, environment: &str) -> Option<PromotedRelease> {
        (environment == "production" && service.is_none_or(|s| s == "ultra-boost")).then(|| {
            PromotedRelease {
                service: "ultra-boost".into(),
                build: "43".into(),
                commit: Some("9fceb02d0ae598e95dc970b74767f19372d61af8".into()),
                promoted_at_ms: PROMOTED_MS,
            }
        })
    }
}

struct Setup {
    url: String,
    grafana: Double,
    slack: Double,
    dispatcher: Dispatcher,
}

async fn setup(token: Option<&str>) -> Setup {
    setup_with(token, None).await
}

async fn setup_with(token: Option<&str>, status_url: Option<&str>) -> Setup {
    let _ = rustls::crypto::ring::default_provider().install_default();
    assert_eq!(
        STARTS_MS,
        jiff::Timestamp::from_millisecond(STARTS_MS)
            .unwrap()
            .as_millisecond()
    );
    assert_eq!(
        STARTS_AT
            .parse::<jiff::Timestamp>()
            .unwrap()
            .as_millisecond(),
        STARTS_MS
    );
    let grafana = GrafanaDouble::start("glsa_t").await;
    let slack = SlackDouble::start().await;
    let env: HashMap<String, String> = [
        ("GUARD_GRAFANA_URL", grafana.url("")),
        ("GUARD_GRAFANA_TOKEN", "glsa_t".into()),
        ("GUARD_SLACK_WEBHOOK_URL", slack.url("/services/T/B/x")),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v))
    .collect();
    let config = NotifyConfig {
        retry: RetryConfig {
            max_attempts: 3,
            base_ms: 5,
            max_ms: 50,
            timeout_ms: 2_000,
        },
        ..Default::default()
    };
    let mut registry = prometheus_client::registry::Registry::default();
    let dispatcher =
        Dispatcher::from_config(&config, &env, &mut registry, Arc::new(MemoryLog::default()))
            .unwrap();
    let state = AlertmanagerState::new(Arc::new(dispatcher.clone()), Arc::new(History), "staging")
        .with_token(token.map(notify::Secret::new))
        .with_status_url(status_url.map(str::to_owned));
    let app = alertmanager::router(state);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    Setup {
        url: format!("http://{addr}/api/v1/alerts"),
        grafana,
        slack,
        dispatcher,
    }
}

/// A webhook message as Alertmanager documents it (version 4).
fn message(status: &str, ends_at: &str) -> Value {
    let alert = json!({
        "status": status,
        "labels": {"alertname": "UltraBoostRequestsAvailabilityBurn", "sloth_service": "ultra-boost",
                   "sloth_slo": "requests-availability", "environment": "production", "severity": "page"},
        "annotations": {"summary": "ultra-boost is burning its availability error budget 14.4x too fast"},
        "startsAt": STARTS_AT,
        "endsAt": ends_at,
        "generatorURL": "http://prometheus.example:9090/graph?g0.expr=...",
        "fingerprint": "c6eadffa33fcdf37"
    });
    json!({
        "version": "4",
        "groupKey": "{}:{alertname=\"UltraBoostRequestsAvailabilityBurn\"}",
        "truncatedAlerts": 0,
        "status": status,
        "receiver": "guard",
        "groupLabels": {"alertname": "UltraBoostRequestsAvailabilityBurn"},
        "commonLabels": alert["labels"],
        "commonAnnotations": alert["annotations"],
        "externalURL": "http://alertmanager.example:9093",
        "alerts": [alert]
    })
}

async fn post(url: &str, token: Option<&str>, body: &Value) -> (u16, Value) {
    let mut req = reqwest::Client::new().post(url).json(body);
    if let Some(t) = token {
        req = req.bearer_auth(t);
    }
    let resp = req.send().await.unwrap();
    let status = resp.status().as_u16();
    (status, resp.json().await.unwrap_or(Value::Null))
}

#[tokio::test]
async fn firing_opens_a_region_naming_the_suspect_and_resolved_closes_it() {
    let s = setup_with(Some(TOKEN), Some("https://guard.example/status")).await;
    let (code, body) = post(
        &s.url,
        Some(TOKEN),
        &message("firing", "0001-01-01T00:00:00Z"),
    )
    .await;
    assert_eq!((code, body["opened"].as_i64()), (200, Some(1)), "{body}");
    // Alertmanager repeats firing alerts: no second region, no second page.
    let (_, body) = post(
        &s.url,
        Some(TOKEN),
        &message("firing", "0001-01-01T00:00:00Z"),
    )
    .await;
    assert_eq!(
        (body["opened"].as_i64(), body["repeated"].as_i64()),
        (Some(0), Some(1))
    );
    let (code, body) = post(
        &s.url,
        Some(TOKEN),
        &message("resolved", "2026-11-27T01:25:00Z"),
    )
    .await;
    assert_eq!((code, body["resolved"].as_i64()), (200, Some(1)), "{body}");
    assert_eq!(s.dispatcher.flush(Duration::from_secs(10)).await, 0);

    let calls: Vec<_> = s
        .grafana
        .requests()
        .iter()
        .map(|r| format!("{} {}", r.method, r.path))
        .collect();
    assert_eq!(calls, ["POST /api/annotations", "PATCH /api/annotations/1"]);
    let region = s.grafana.with_memory(|m| m.annotations[&1].clone());
    assert_eq!(region["time"].as_i64(), Some(STARTS_MS));
    assert_eq!(region["timeEnd"].as_i64(), Some(STARTS_MS + 25 * 60_000));
    let tags: Vec<_> = region["tags"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t.as_str().unwrap())
        .collect();
    assert_eq!(
        tags,
        [
            "guard",
            "ultra-boost",
            "production",
            "43",
            "incident",
            "requests-availability"
        ]
    );

    let slack = s.slack.requests();
    assert_eq!(
        slack.len(),
        2,
        "one message when it fires, one when it resolves"
    );
    let fired = slack[0].json()["text"].as_str().unwrap().to_owned();
    for needle in [
        "SLO alert firing: ultra-boost requests-availability in production",
        "Suspect release: 43",
        "Suspect: ultra-boost build 43, promoted 12 min 0 s before the alert fired",
        "burning its availability error budget",
        "Status: https://guard.example/status",
    ] {
        assert!(fired.contains(needle), "missing {needle:?} in\n{fired}");
    }
    let resolved = slack[1].json()["text"].as_str().unwrap().to_owned();
    assert!(resolved.contains("resolved after 25 min 0 s"), "{resolved}");
}

#[tokio::test]
async fn wrong_token_bad_json_and_unknown_versions_are_refused_and_change_nothing() {
    let s = setup(Some(TOKEN)).await;
    let firing = message("firing", "0001-01-01T00:00:00Z");
    assert_eq!(post(&s.url, None, &firing).await.0, 401);
    assert_eq!(
        post(&s.url, Some("am-test-token-0124"), &firing).await.0,
        401
    );

    let mut v3 = firing.clone();
    v3["version"] = json!("3");
    let (code, body) = post(&s.url, Some(TOKEN), &v3).await;
    assert_eq!(code, 400);
    assert!(
        body["error"].as_str().unwrap().contains("version"),
        "{body}"
    );

    let mut bad_time = firing.clone();
    bad_time["alerts"][0]["startsAt"] = json!("yesterday");
    let (code, body) = post(&s.url, Some(TOKEN), &bad_time).await;
    assert_eq!(code, 400);
    assert!(
        body["error"]
            .as_str()
            .unwrap()
            .contains("alerts[0].startsAt"),
        "{body}"
    );

    let resp = reqwest::Client::new()
        .post(&s.url)
        .bearer_auth(TOKEN)
        .body("{not json")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 400);

    assert_eq!(s.dispatcher.flush(Duration::from_secs(5)).await, 0);
    assert!(s.grafana.requests().is_empty() && s.slack.requests().is_empty());
}

/// Kills the Alertmanager this test started, whatever happens.
struct Running(Child);

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[tokio::test]
async fn real_alertmanager_pages_through_guard() {
    let s = setup(Some(TOKEN)).await;
    let dir = tempfile::tempdir().unwrap();
    let config = format!(
        r#"route:
  receiver: guard
  group_by: [alertname]
  group_wait: 0s
  group_interval: 1s
  repeat_interval: 1h
receivers:
  - name: guard
    webhook_configs:
      - url: {url}
        send_resolved: true
        http_config:
          authorization:
            credentials: {TOKEN}
"#,
        url = s.url
    );
    std::fs::write(dir.path().join("alertmanager.yml"), config).unwrap();
    // Alertmanager cannot report an OS-chosen port, so take a free one and hand it over.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let am_url = format!("http://127.0.0.1:{port}");
    let child = Command::new("prometheus-alertmanager")
        .arg(format!(
            "--config.file={}",
            dir.path().join("alertmanager.yml").display()
        ))
        .arg(format!(
            "--storage.path={}",
            dir.path().join("data").display()
        ))
        .arg(format!("--web.listen-address=127.0.0.1:{port}"))
        .arg("--cluster.listen-address=")
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(dir.path().join("am.log")).unwrap())
        .spawn()
        .expect("prometheus-alertmanager must be installed (scripts/install-test-deps.sh)");
    let _am = Running(child);
    let client = reqwest::Client::new();
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if client
            .get(format!("{am_url}/-/ready"))
            .send()
            .await
            .is_ok_and(|r| r.status().is_success())
        {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "Alertmanager not ready on {am_url}:\n{}",
            std::fs::read_to_string(dir.path().join("am.log")).unwrap_or_default()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // What Prometheus would send for a firing SLO alert.
    let starts = jiff::Timestamp::now() - jiff::SignedDuration::from_secs(60);
    let alert = |ends: Option<jiff::Timestamp>| {
        let mut a = json!({
            "labels": {"alertname": "UltraBoostRequestsAvailabilityBurn", "sloth_service": "ultra-boost",
                       "sloth_slo": "requests-availability", "environment": "production", "severity": "page"},
            "annotations": {"summary": "error budget burning 14.4x too fast"},
            "startsAt": starts.to_string(),
            "generatorURL": "http://prometheus.example:9090/graph"
        });
        if let Some(e) = ends {
            a["endsAt"] = json!(e.to_string());
        }
        json!([a])
    };
    let wait_for = |d: &Double, n: usize| {
        let d = d.clone();
        async move { d.wait_for(n, Duration::from_secs(20)).await }
    };
    let r = client
        .post(format!("{am_url}/api/v2/alerts"))
        .json(&alert(None))
        .send()
        .await
        .unwrap();
    assert!(
        r.status().is_success(),
        "Alertmanager refused the alert: {}",
        r.status()
    );
    let reqs = wait_for(&s.grafana, 1).await;
    assert_eq!(
        format!("{} {}", reqs[0].method, reqs[0].path),
        "POST /api/annotations"
    );
    let opened = reqs[0].json();
    assert_eq!(
        opened["time"].as_i64(),
        Some(starts.as_millisecond()),
        "region starts at the alert's startsAt"
    );
    assert!(
        opened["text"]
            .as_str()
            .unwrap()
            .contains("Suspect: ultra-boost build 43"),
        "{opened}"
    );

    let ends = jiff::Timestamp::now();
    let r = client
        .post(format!("{am_url}/api/v2/alerts"))
        .json(&alert(Some(ends)))
        .send()
        .await
        .unwrap();
    assert!(r.status().is_success());
    let reqs = wait_for(&s.grafana, 2).await;
    assert_eq!(
        format!("{} {}", reqs[1].method, reqs[1].path),
        "PATCH /api/annotations/1"
    );
    let closed = reqs[1].json();
    assert_eq!(
        closed["timeEnd"].as_i64(),
        Some(ends.as_millisecond()),
        "region ends at the alert's endsAt"
    );
    assert_eq!(s.slack.wait_for(2, Duration::from_secs(10)).await.len(), 2);
}
