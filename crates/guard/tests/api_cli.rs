//! guard's API and CLI against the real `guard serve`: bearer-token auth,
//! refusal to expose an unauthenticated API, request validation, `/metrics`,
//! and the CLI's deploy --wait (exit code per verdict), status, history,
//! rollback.

#[path = "support/serve_harness.rs"]
mod serve_harness;

use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use serde_json::{Value, json};
use serve_harness::{Guard, Load, anonymous, client, config, router, wait_state};

const TOKEN_VALUE: &str = "s3cret-token";

/// `guard deploy ultra-boost --env test --build <build> --wait` against
/// `api`, off the async runtime: (exit code, stdout, stderr).
async fn deploy_and_wait(api: &str, build: &str) -> (i32, String, String) {
    deploy_and_wait_with(api, build, &[]).await
}

/// [`deploy_and_wait`] with `extra` flags.
async fn deploy_and_wait_with(api: &str, build: &str, extra: &[&str]) -> (i32, String, String) {
    let api = api.to_string();
    let args: Vec<String> = [
        "deploy",
        "ultra-boost",
        "--env",
        "test",
        "--build",
        build,
        "--wait",
    ]
    .iter()
    .chain(extra)
    .map(|a| a.to_string())
    .collect();
    tokio::task::spawn_blocking(move || {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        cli(&api, &args)
    })
    .await
    .expect("join")
}

fn cli(api: &str, args: &[&str]) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_guard"))
        .args(args)
        .env("GUARD_API_URL", api)
        .env("GUARD_API_TOKEN", TOKEN_VALUE)
        .output()
        .expect("run guard");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// `guard deploy` exits 2 for "reverted"; a mistyped flag is an error (1),
/// not a revert. Help stays 0.
#[test]
fn a_usage_error_exits_1_not_a_verdicts_code() {
    let (code, _, err) = cli(
        "http://127.0.0.1:9",
        &[
            "deploy",
            "ultra-boost",
            "--env",
            "production",
            "--build",
            "86",
            "--wiat",
        ],
    );
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("unexpected argument '--wiat'"), "{err}");
    let (code, out, _) = cli("http://127.0.0.1:9", &["deploy", "--help"]);
    assert_eq!(code, 0);
    assert!(out.contains("Usage: guard deploy"), "{out}");
}

#[test]
fn an_unauthenticated_api_is_refused_on_a_public_address() {
    let dir = tempfile::tempdir().expect("tmp");
    std::fs::write(dir.path().join("guard.yaml"), config("1s")).expect("config");
    let out = Command::new(env!("CARGO_BIN_EXE_guard"))
        .args(["serve", "--listen", "0.0.0.0:0", "--config"])
        .arg(dir.path().join("guard.yaml"))
        .env_remove("GUARD_API_TOKEN")
        .output()
        .expect("run guard");
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("refusing to serve the API on 0.0.0.0:0 without a token"),
        "{err}"
    );
}

#[test]
fn a_bad_api_address_or_an_empty_token_file_is_named_before_any_request() {
    for (api, says) in [
        ("notaurl", "--api \"notaurl\" is not a URL"),
        ("ftp://127.0.0.1", "over http or https"),
    ] {
        let (code, _, err) = cli(api, &["status"]);
        assert_eq!(code, 1, "{err}");
        assert!(err.contains(says), "{err}");
        assert!(!err.contains("cannot reach guard"), "{err}");
    }
    let dir = tempfile::tempdir().expect("tmp");
    let empty = dir.path().join("token");
    std::fs::write(&empty, "\n").expect("token file");
    let out = Command::new(env!("CARGO_BIN_EXE_guard"))
        .args(["status", "--api", "http://127.0.0.1:9", "--token-file"])
        .arg(&empty)
        .env_remove("GUARD_API_TOKEN")
        .output()
        .expect("run guard");
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains("is empty; it must hold the API's bearer token"),
        "{err}"
    );
}

#[test]
fn a_bad_config_names_file_line_and_field() {
    let dir = tempfile::tempdir().expect("tmp");
    let path = dir.path().join("guard.yaml");
    std::fs::write(&path, "services:\n  - name: s\n    replicas: 0\n    build: {command: [x]}\n    environments: [{name: e}]\n    slos: [{name: a, objective: 100}]\n").expect("write");
    let out = Command::new(env!("CARGO_BIN_EXE_guard"))
        .args(["serve", "--config"])
        .arg(&path)
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("guard.yaml: 2 problems"), "{err}");
    assert!(
        err.contains("line 3: services[0].replicas: must be 1 to 64; got 0"),
        "{err}"
    );
    assert!(
        err.contains("line 6: services[0].slos[0].objective"),
        "{err}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_auth_validation_metrics_and_the_cli_flow() {
    let dir = tempfile::tempdir().expect("tmp");
    std::fs::write(dir.path().join("guard.yaml"), config("2s")).expect("config");
    let _ = serve_harness::TOKEN.set(TOKEN_VALUE.to_string());
    // A webhook receiver on loopback: guard's signed JSON webhook is our own
    // protocol, so this is the real receiving side, not a double.
    let received = Arc::new(AtomicU64::new(0));
    let bodies = Arc::new(std::sync::Mutex::new(Vec::<Value>::new()));
    let hook = {
        let (received, bodies) = (received.clone(), bodies.clone());
        axum::Router::new().route(
            "/hook",
            axum::routing::post(move |body: String| {
                let (received, bodies) = (received.clone(), bodies.clone());
                async move {
                    if body.contains("\"kind\"") {
                        received.fetch_add(1, Ordering::SeqCst);
                    }
                    if let (Ok(v), Ok(mut kept)) = (serde_json::from_str(&body), bodies.lock()) {
                        kept.push(v);
                    }
                    "ok"
                }
            }),
        )
    };
    let hook_url = format!("{}/hook", serve_harness::serve_on_loopback(hook).await);
    let g = Guard::start(
        dir.path(),
        &[
            ("GUARD_API_TOKEN", TOKEN_VALUE),
            ("GUARD_WEBHOOK_URL", &hook_url),
            ("GUARD_WEBHOOK_SECRET", "whsec"),
        ],
    );
    let api = g.api.clone();
    let c = anonymous();
    // No token, wrong token: 401. Probes and /metrics need none.
    let r = c
        .get(format!("{api}/api/v1/status"))
        .send()
        .await
        .expect("get");
    assert_eq!(r.status().as_u16(), 401);
    let r = c
        .get(format!("{api}/api/v1/status"))
        .bearer_auth("nope")
        .send()
        .await
        .expect("get");
    assert_eq!(r.status().as_u16(), 401);
    assert_eq!(
        c.get(format!("{api}/-/ready"))
            .send()
            .await
            .expect("ready")
            .status()
            .as_u16(),
        200
    );
    // Bad requests are refused with a reason.
    let post = |body: Value| {
        let c = c.clone();
        let api = api.clone();
        async move {
            let r = c
                .post(format!("{api}/api/v1/deployments"))
                .bearer_auth(TOKEN_VALUE)
                .json(&body)
                .send()
                .await
                .expect("post");
            (
                r.status().as_u16(),
                r.json::<Value>().await.unwrap_or(Value::Null),
            )
        }
    };
    let (code, body) = post(json!({"service": "nope", "environment": "test", "build": "2"})).await;
    assert_eq!(code, 404, "{body}");
    assert!(
        body["error"]
            .as_str()
            .is_some_and(|e| e.contains("ultra-boost/test")),
        "{body}"
    );
    let (code, _) = post(json!({"service": "ultra-boost", "environment": "test"})).await;
    assert_eq!(code, 400);
    let (code, _) =
        post(json!({"service": "ultra-boost", "environment": "test", "build": "2", "bogus": 1}))
            .await;
    assert_eq!(code, 400);
    // A build becomes an image tag, a label and a ref: no paths, no spaces.
    for bad in ["../../x", "pr 42", "-1"] {
        let (code, body) =
            post(json!({"service": "ultra-boost", "environment": "test", "build": bad})).await;
        assert_eq!(code, 400, "{bad}: {body}");
        assert!(
            body["error"]
                .as_str()
                .is_some_and(|e| e.contains("usable as an image tag") && e.contains(bad)),
            "{body}"
        );
    }

    wait_state(&api, 1, "promoted", Duration::from_secs(30), |s| {
        s == "promoted"
    })
    .await;
    let _load = Load::start(router(&api).await, 100);
    tokio::time::sleep(Duration::from_secs(1)).await;

    // CI starts the deploy, loses its connection, and runs it again with
    // --wait: the second run follows the rollout already in progress.
    let (code, out, err) = cli(
        &api,
        &["deploy", "ultra-boost", "--env", "test", "--build", "2"],
    );
    assert_eq!(code, 0, "{out}{err}");
    let (code, out, err) = deploy_and_wait(&api, "2").await;
    assert_eq!(code, 0, "deploy of a good build exits 0:\n{out}\n{err}");
    assert!(out.contains("already in progress; following it"), "{out}");
    assert!(
        out.contains(&format!("({api}/rollouts/")),
        "the status page is named:\n{out}"
    );
    assert!(out.contains("verdict: promote"), "{out}");
    assert!(
        out.contains("verifying"),
        "plain progress lines when not a terminal:\n{out}"
    );

    let (code, out, err) = deploy_and_wait(&api, "3").await;
    assert_eq!(
        code, 2,
        "deploy of an erroring build exits 2:\n{out}\n{err}"
    );
    assert!(out.contains("verdict: revert"), "{out}");

    let (code, out, _) = cli(&api, &["history", "--json"]);
    assert_eq!(code, 0);
    let list: Value = serde_json::from_str(&out).expect("history --json");
    let verdicts: Vec<&str> = list
        .as_array()
        .expect("list")
        .iter()
        .map(|r| r["verdict"].as_str().unwrap_or(""))
        .collect();
    assert_eq!(verdicts, ["revert", "promote", "promote"], "{out}");
    let (code, _, err) = cli(&api, &["history", "ultra-bost", "--env", "test"]);
    assert_eq!(code, 1, "a misspelt service is not an empty history: {err}");
    assert!(
        err.contains("unknown service \"ultra-bost\"") && err.contains("ultra-boost/test"),
        "{err}"
    );

    let (code, out, err) = cli(&api, &["rollback", "ultra-boost", "--env", "test"]);
    assert_eq!(code, 0, "{out}{err}");
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let (_, out, _) = cli(&api, &["status", "--json"]);
        let st: Value = serde_json::from_str(&out).expect("status --json");
        if st[0]["release"] == "1" && st[0]["rollout"]["state"] == "rolled_back" {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "rollback did not finish: {st}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // Status and history read a rollback as what it did: build 1 back, in
    // place of 2.
    let (code, out, _) = cli(&api, &["status"]);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("rollout 4 build 1: rolled_back"), "{out}");
    let (code, out, _) = cli(&api, &["history", "ultra-boost", "--env", "test"]);
    assert_eq!(code, 0, "{out}");
    assert!(
        out.lines().next().is_some_and(|h| h.contains("decided in")),
        "{out}"
    );
    let row: Vec<&str> = out
        .lines()
        .find(|l| l.contains("rolled_back"))
        .map(|l| l.split_whitespace().collect())
        .unwrap_or_default();
    assert_eq!(row.get(2..4), Some(&["1", "2"][..]), "{out}");
    let (code, out, _) = cli(&api, &["promote", "ultra-boost", "--env", "test"]);
    assert_eq!(code, 1, "nothing to promote: {out}");
    let (code, out, err) = cli(
        &api,
        &["rollback", "ultra-boost", "--env", "test", "--to", "1"],
    );
    assert_eq!(code, 1, "build 1 runs already: {out}{err}");
    assert!(err.contains("build 1 already runs"), "{err}");

    let metrics = c
        .get(format!("{api}/metrics"))
        .send()
        .await
        .expect("metrics")
        .text()
        .await
        .expect("text");
    assert!(
        metrics.contains("guard_rollouts_total{verdict=\"promote\"} 2"),
        "{metrics}"
    );
    assert!(
        metrics.contains("guard_rollouts_total{verdict=\"revert\"} 1"),
        "{metrics}"
    );
    assert!(
        metrics.contains("guard_time_to_verdict_seconds_count"),
        "{metrics}"
    );
    assert!(metrics.contains("guard_router_requests_total"), "{metrics}");
    // The Prometheus text format unless OpenMetrics is asked for, and clean
    // by promtool's lint.
    let mut lint = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("promtool (Debian package prometheus)");
    if let Some(mut stdin) = lint.stdin.take() {
        std::io::Write::write_all(&mut stdin, metrics.as_bytes()).expect("to promtool");
    }
    let linted = lint.wait_with_output().expect("promtool");
    assert!(
        linted.status.success(),
        "promtool check metrics: {}{}",
        String::from_utf8_lossy(&linted.stdout),
        String::from_utf8_lossy(&linted.stderr)
    );
    let open = c
        .get(format!("{api}/metrics"))
        .header("accept", "application/openmetrics-text; version=1.0.0")
        .send()
        .await
        .expect("metrics");
    assert!(
        open.headers()[reqwest::header::CONTENT_TYPE]
            .to_str()
            .is_ok_and(|t| t.starts_with("application/openmetrics-text")),
        "{:?}",
        open.headers()
    );
    assert!(open.text().await.expect("text").ends_with("# EOF\n"));

    // Notifications went out off the decision path and are recorded in history.
    assert!(
        received.load(Ordering::SeqCst) >= 2,
        "the webhook got {} events",
        received.load(Ordering::SeqCst)
    );
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    loop {
        let d: Value = client()
            .get(format!("{api}/api/v1/rollouts/2"))
            .send()
            .await
            .expect("get")
            .json()
            .await
            .expect("json");
        let delivered = d["deliveries"].as_array().map(|a| {
            a.iter()
                .filter(|x| x["ok"] == true && x["notifier"] == "webhook")
                .count()
        });
        if delivered.unwrap_or(0) >= 2 {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "deliveries not recorded: {}",
            d["deliveries"]
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // Every event says why in words, never a phase name; a promote carries
    // the judge's reason.
    let events: Vec<Value> = bodies.lock().map(|b| b.clone()).unwrap_or_default();
    for e in &events {
        let reason = e["event"]["reason"].as_str().unwrap_or_default();
        assert!(
            !reason.is_empty()
                && !["shifting", "watching", "promoted", "reverted"].contains(&reason),
            "{e}"
        );
    }
    assert!(
        events.iter().any(|e| e["event"]["kind"] == "promoted"
            && e["event"]["reason"]
                .as_str()
                .is_some_and(|r| r.contains("pass"))),
        "no promote with the judge's reason: {events:?}"
    );
    status_pages(&api).await;
    a_reader_that_stops_reading_ends_a_listing_quietly(&api);
    a_second_guard_on_the_same_store_refuses_to_start(&dir.path().join("guard.yaml"));
}

/// `guard history | head -1`: the reader is gone before guard writes; guard
/// stops quietly (exit 0, no panic), as Unix tools do.
fn a_reader_that_stops_reading_ends_a_listing_quietly(api: &str) {
    for args in [&["history"][..], &["history", "--json"], &["status"]] {
        let (reader, writer) = std::io::pipe().expect("pipe");
        drop(reader);
        let out = Command::new(env!("CARGO_BIN_EXE_guard"))
            .args(args)
            .env("GUARD_API_URL", api)
            .env("GUARD_API_TOKEN", TOKEN_VALUE)
            .stdout(writer)
            .output()
            .expect("run guard");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(0), "guard {args:?}: {stderr}");
        assert!(!stderr.contains("panicked"), "guard {args:?}: {stderr}");
    }
}

/// Two guards on one store would both resume and act on the same rollouts:
/// the second refuses, naming the first one's pid, and changes nothing.
fn a_second_guard_on_the_same_store_refuses_to_start(config: &std::path::Path) {
    let mut second = Command::new(env!("CARGO_BIN_EXE_guard"))
        .args(["serve", "--listen", "127.0.0.1:0", "--config"])
        .arg(config)
        .env("GUARD_API_TOKEN", TOKEN_VALUE)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("run guard");
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    let status = loop {
        if let Some(status) = second.try_wait().expect("wait") {
            break status;
        }
        if std::time::Instant::now() > deadline {
            let _ = second.kill();
            let _ = second.wait();
            panic!("a second guard on the same store kept running");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let mut err = String::new();
    if let Some(mut e) = second.stderr.take() {
        let _ = std::io::Read::read_to_string(&mut e, &mut err);
    }
    assert_eq!(status.code(), Some(1), "{err}");
    assert!(
        err.contains("is in use by another guard (pid "),
        "the holder is named: {err}"
    );
}

/// The status pages a person opens (after the flow above: rollouts 1 and 2
/// promoted, 3 reverted, 4 rolled back): behind the token, which a browser
/// sends as Basic's password; the reason of a revert escaped into the page.
async fn status_pages(api: &str) {
    let c = anonymous();
    let r = c.get(format!("{api}/")).send().await.expect("get /");
    assert_eq!(r.status().as_u16(), 401);
    assert!(
        r.headers()[reqwest::header::WWW_AUTHENTICATE]
            .to_str()
            .is_ok_and(|v| v.starts_with("Basic ")),
        "a browser is asked for the token: {:?}",
        r.headers()
    );
    assert!(
        r.text()
            .await
            .expect("page")
            .contains("<h1>guard's token is needed</h1>"),
        "a person who cancels the prompt reads why"
    );
    let r = c
        .get(format!("{api}/"))
        .basic_auth("someone", Some("wrong"))
        .send()
        .await
        .expect("get /");
    assert_eq!(r.status().as_u16(), 401);
    let page = |path: &'static str| {
        let c = c.clone();
        let url = format!("{api}{path}");
        async move {
            let r = c
                .get(url)
                .basic_auth("someone", Some(TOKEN_VALUE))
                .send()
                .await
                .expect("get page");
            let code = r.status().as_u16();
            let html = r
                .headers()
                .get(reqwest::header::CONTENT_TYPE)
                .and_then(|v| v.to_str().ok())
                .is_some_and(|t| t.starts_with("text/html"));
            (code, html, r.text().await.expect("text"))
        }
    };
    let (code, html, body) = page("/").await;
    assert_eq!((code, html), (200, true), "{body}");
    for want in [
        "<td>ultra-boost</td><td>test</td><td>1</td>",
        "href=\"/rollouts/4\"",
        "rolled_back",
        "<span class=\"revert\">reverted</span>",
        "<span class=\"promote\">promoted</span>",
    ] {
        assert!(body.contains(want), "{want} not on /:\n{body}");
    }
    let detail = serve_harness::get(api, "/api/v1/rollouts/3").await;
    let reason = detail["reason"].as_str().expect("a revert has a reason");
    let escaped = reason
        .replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
        .replace('\'', "&#39;");
    let (code, _, body) = page("/rollouts/3").await;
    assert_eq!(code, 200, "{body}");
    assert!(
        body.contains(&escaped),
        "{escaped} not on the page:\n{body}"
    );
    assert!(body.contains("<h2>Steps</h2>"), "{body}");
    assert!(
        body.contains("<td>webhook</td>"),
        "the webhook's deliveries are listed:\n{body}"
    );
    let (code, _, _) = page("/rollouts/999").await;
    assert_eq!(code, 404);

    // The credentials a browser keeps for the pages never command the API,
    // and no other site's page can make a browser do so.
    let r = c
        .post(format!("{api}/api/v1/rollouts/4/pause"))
        .basic_auth("someone", Some(TOKEN_VALUE))
        .send()
        .await
        .expect("post");
    assert_eq!(r.status().as_u16(), 401, "Basic is for the pages only");
    let r = c
        .post(format!("{api}/api/v1/rollouts/4/pause"))
        .bearer_auth(TOKEN_VALUE)
        .header("origin", "https://evil.example")
        .header("content-type", "application/x-www-form-urlencoded")
        .body("x=1")
        .send()
        .await
        .expect("post");
    assert_eq!(r.status().as_u16(), 403, "a cross-site POST is refused");
}

/// A double of a guard replica that became leader after the one that
/// accepted the deploy died: it has no rollout 7 (404), or a rollout 7 of its
/// own (rollout ids are per replica's history). Our own API, served on
/// loopback; a cluster cannot run here.
async fn guard_after_failover(own_rollout_7: bool) -> String {
    let detail = guard::api::RolloutDetail {
        rollout: guard::api::RolloutView {
            record: guard::store::RolloutRecord {
                id: 7,
                target: guard::platform::Target {
                    service: "checkout".into(),
                    environment: "production".into(),
                },
                strategy: guard::platform::Strategy::Rolling,
                kind: guard::store::RolloutKind::Deploy,
                stable: None,
                candidate: guard::platform::Build {
                    number: "12".into(),
                    commit: None,
                    image: None,
                    command: vec![],
                    env: Default::default(),
                },
                phase: guard::engine::phase::Phase::Promoted,
                active: false,
                verdict: Some("promote".into()),
                reason: None,
                created_ms: 0,
                updated_ms: 0,
                traffic_at_ms: None,
                verdict_at_ms: None,
                finished_ms: None,
                evidence: None,
                requested_by: "cli".into(),
            },
            state: "promoted".into(),
            seconds_to_verdict: None,
            live: None,
        },
        steps: vec![],
        deliveries: vec![],
    };
    let detail = serde_json::to_value(detail).expect("json");
    let app = axum::Router::new()
        .route(
            "/api/v1/deployments",
            axum::routing::post(|| async {
                (
                    axum::http::StatusCode::CREATED,
                    axum::Json(json!({"id": 7, "url": "/api/v1/rollouts/7"})),
                )
            }),
        )
        .route(
            "/api/v1/rollouts/7",
            axum::routing::get(move || {
                let detail = detail.clone();
                async move {
                    if own_rollout_7 {
                        (axum::http::StatusCode::OK, axum::Json(detail))
                    } else {
                        (
                            axum::http::StatusCode::NOT_FOUND,
                            axum::Json(json!({"error": "no rollout 7"})),
                        )
                    }
                }
            }),
        );
    serve_harness::serve_on_loopback(app).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deploy_wait_says_so_when_the_answering_guard_lost_the_rollout() {
    for (own_rollout_7, seen) in [
        (false, "which has no such rollout"),
        (
            true,
            "which has a rollout 7 of its own (checkout build 12 to production)",
        ),
    ] {
        let api = guard_after_failover(own_rollout_7).await;
        let (code, out, err) = deploy_and_wait(&api, "2").await;
        assert_eq!(code, 1, "an error, not a verdict:\n{out}\n{err}");
        assert!(
            !out.contains("verdict:"),
            "another rollout's verdict reported as ours:\n{out}"
        );
        assert!(
            err.contains("rollout 7 (ultra-boost build 2 to test) is not in the history of the guard answering now")
                && err.contains(seen)
                && err.contains("guard.ultra-boost.dev/rollout"),
            "{err}"
        );
    }
}

/// `deploy --wait --no-watch` returns at the promote; a deploy while that
/// release is still in its post-promote watch is refused with when the watch
/// ends and how to end it; `guard promote` ends it, and the deploy then goes
/// through.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deploy_during_the_watch_says_how_to_end_it() {
    let dir = tempfile::tempdir().expect("tmp");
    std::fs::write(dir.path().join("guard.yaml"), config("10m")).expect("config");
    let g = Guard::start(dir.path(), &[]);
    let api = g.api.clone();
    wait_state(&api, 1, "promoted", Duration::from_secs(30), |s| {
        s == "promoted"
    })
    .await;
    let _load = Load::start(router(&api).await, 100);
    // CI that does not want to wait out the watch: back at the promote.
    let (code, out, err) = deploy_and_wait_with(&api, "2", &["--no-watch"]).await;
    assert_eq!(code, 0, "{out}{err}");
    assert!(
        out.contains("verdict: promote") && out.contains("guard watches it until"),
        "{out}"
    );
    let id: i64 = out
        .split_whitespace()
        .nth(1)
        .and_then(|w| w.trim_end_matches(':').parse().ok())
        .unwrap_or_else(|| panic!("no rollout id in {out}"));
    wait_state(&api, id, "watching", Duration::from_secs(5), |s| {
        s == "watching"
    })
    .await;

    let deploy_3 = || {
        serve_harness::post(
            &api,
            "/api/v1/deployments",
            json!({"service": "ultra-boost", "environment": "test", "build": "3"}),
        )
    };
    let (code, body) = deploy_3().await;
    assert_eq!(code, 409, "{body}");
    let error = body["error"].as_str().unwrap_or_default();
    assert!(
        error.contains("build 2 is promoted and watched until")
            && error.contains("guard promote ultra-boost --env test"),
        "{error}"
    );

    let (code, out, err) = tokio::task::spawn_blocking({
        let api = api.clone();
        move || cli(&api, &["promote", "ultra-boost", "--env", "test"])
    })
    .await
    .expect("join");
    assert_eq!(code, 0, "{out}{err}");
    wait_state(&api, id, "promoted", Duration::from_secs(20), |s| {
        s == "promoted"
    })
    .await;
    let (code, body) = deploy_3().await;
    assert_eq!(code, 201, "{body}");
}

/// A build the judge cannot decide (no traffic by the policy's deadline) is
/// held for a person: `deploy --wait` says so and exits 3 at once, as README
/// says, instead of waiting on that person.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deploy_wait_exits_3_when_the_judge_holds_for_a_person() {
    let dir = tempfile::tempdir().expect("tmp");
    let yaml = config("1s").replace("max_verify_seconds: 60", "max_verify_seconds: 3");
    std::fs::write(dir.path().join("guard.yaml"), yaml).expect("config");
    let g = Guard::start(dir.path(), &[]);
    let api = g.api.clone();
    wait_state(&api, 1, "promoted", Duration::from_secs(30), |s| {
        s == "promoted"
    })
    .await;
    // No load: no events by the deadline.
    let (code, out, err) = deploy_and_wait(&api, "2").await;
    assert_eq!(code, 3, "{out}{err}");
    assert!(
        out.contains("verdict: hold (undecided after") && out.contains("a person decides"),
        "{out}"
    );
}
