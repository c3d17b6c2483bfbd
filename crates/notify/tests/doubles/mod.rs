//! Test doubles for the services that cannot run here: Slack, Microsoft Teams,
//! Grafana, GitHub, and a generic webhook receiver. Each is a real HTTP server
//! on 127.0.0.1 (port chosen by the OS) that answers as the real service does,
//! following its documented format:
//!
//! - Slack incoming webhook: `200 ok`; `400 invalid_payload` for a body that is
//!   not JSON, `400 no_text` for one with neither `text` nor `blocks`.
//! - Teams Workflows trigger: `202 Accepted` (empty body); `400` for a body that
//!   is not a message activity with an Adaptive Card attachment.
//! - Grafana: `POST /api/annotations` -> `200 {"id":N,"message":"Annotation added"}`,
//!   `PATCH /api/annotations/:id` -> `200 {"message":"Annotation patched"}` (404 for
//!   an unknown id), `401 {"message":"Unauthorized"}` without the bearer token.
//! - GitHub: `POST /repos/o/r/deployments` -> `201` deployment with `id`,
//!   `POST .../deployments/:id/statuses` -> `201` status; `401 Bad credentials`,
//!   `403` without a `User-Agent`, `404 Not Found` for unknown paths or ids.
//! - Webhook receiver: verifies `X-Guard-Signature` with `notify::webhook::verify`
//!   and answers `204`, or `401` with the reason.
//!
//! A script of canned failures (500, 429 + Retry-After, 400) can be queued in
//! front of the real behaviour, to exercise retries.

#![allow(dead_code)]

pub mod harness;

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};
use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// One request as the double received it.
#[derive(Clone, Debug)]
pub struct Req {
    pub method: Method,
    pub path: String,
    /// The query string, without `?` (empty when there is none).
    pub query: String,
    pub headers: HeaderMap,
    pub body: Bytes,
    pub at: Instant,
}

impl Req {
    /// The body as JSON (panics in tests when it is not: a defect to report).
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("body of {} {} is not JSON: {e}", self.method, self.path))
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }
}

/// A canned answer served before the real behaviour.
#[derive(Clone, Debug)]
pub struct Canned {
    pub status: u16,
    pub retry_after: Option<String>,
    /// Further response headers.
    pub headers: Vec<(&'static str, String)>,
    pub body: String,
    /// Wait this long before answering (a hung server).
    pub delay: Duration,
    /// The service acts on the request as it would (creates what it asks
    /// for) and then answers this instead: an answer lost on the way back.
    pub acts_first: bool,
}

impl Canned {
    pub fn status(status: u16, body: &str) -> Self {
        Canned {
            status,
            retry_after: None,
            headers: vec![],
            body: body.to_owned(),
            delay: Duration::ZERO,
            acts_first: false,
        }
    }
    /// Answers 200 only after `delay`: longer than the client's timeout, a hang.
    pub fn hang(delay: Duration) -> Self {
        Canned {
            status: 200,
            retry_after: None,
            headers: vec![],
            body: "late".to_owned(),
            delay,
            acts_first: false,
        }
    }
    /// The service does what was asked, then answers `status` with `body`
    /// after `delay`: GitHub's edge answering 502 after the API created the
    /// deployment, or an answer that never comes back in time.
    pub fn acts_then_answers(status: u16, body: &str, delay: Duration) -> Self {
        Canned {
            delay,
            acts_first: true,
            ..Canned::status(status, body)
        }
    }
    pub fn retry_after(status: u16, retry_after: &str) -> Self {
        Canned {
            status,
            retry_after: Some(retry_after.to_owned()),
            headers: vec![],
            body: "rate limited".to_owned(),
            delay: Duration::ZERO,
            acts_first: false,
        }
    }
    /// GitHub's primary rate limit, as its REST docs show it ("Rate limits
    /// for the REST API"): 403, `x-ratelimit-remaining: 0` and the reset in
    /// epoch seconds, `reset_in` from now; no `Retry-After`.
    pub fn github_rate_limited(reset_in: Duration) -> Self {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default();
        let reset = (now + reset_in).as_secs();
        Canned {
            status: 403,
            retry_after: None,
            headers: vec![
                ("x-ratelimit-limit", "5000".to_owned()),
                ("x-ratelimit-remaining", "0".to_owned()),
                ("x-ratelimit-used", "5000".to_owned()),
                ("x-ratelimit-reset", reset.to_string()),
                ("x-ratelimit-resource", "core".to_owned()),
            ],
            body: r#"{"message":"API rate limit exceeded for user ID 1.","documentation_url":"https://docs.github.com/rest/overview/rate-limits-for-the-rest-api"}"#.to_owned(),
            delay: Duration::ZERO,
            acts_first: false,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    Slack,
    Teams,
    Grafana,
    GitHub,
    Webhook,
}

/// What the stateful doubles remember.
#[derive(Debug, Default)]
pub struct Memory {
    next_id: i64,
    /// Grafana annotations by id.
    pub annotations: HashMap<i64, Value>,
    /// GitHub deployments by id, with their statuses in order.
    pub deployments: HashMap<i64, (Value, Vec<Value>)>,
}

struct Inner {
    kind: Kind,
    secret: String,
    requests: Mutex<Vec<Req>>,
    script: Mutex<VecDeque<Canned>>,
    memory: Mutex<Memory>,
}

/// A running double.
#[derive(Clone)]
pub struct Double {
    pub addr: SocketAddr,
    inner: Arc<Inner>,
}

pub struct SlackDouble;
pub struct TeamsDouble;
pub struct GrafanaDouble;
pub struct GitHubDouble;
pub struct WebhookReceiver;

impl SlackDouble {
    pub async fn start() -> Double {
        Double::start(Kind::Slack, "").await
    }
}
impl TeamsDouble {
    pub async fn start() -> Double {
        Double::start(Kind::Teams, "").await
    }
}
impl GrafanaDouble {
    /// Accepts only `Authorization: Bearer <token>`.
    pub async fn start(token: &str) -> Double {
        Double::start(Kind::Grafana, token).await
    }
}
impl GitHubDouble {
    /// Accepts only `Authorization: Bearer <token>`; serves repo `acme/ultra-boost`.
    pub async fn start(token: &str) -> Double {
        Double::start(Kind::GitHub, token).await
    }
}
impl WebhookReceiver {
    /// Verifies signatures with `secret`.
    pub async fn start(secret: &str) -> Double {
        Double::start(Kind::Webhook, secret).await
    }
}

impl Double {
    async fn start(kind: Kind, secret: &str) -> Double {
        let inner = Arc::new(Inner {
            kind,
            secret: secret.to_owned(),
            requests: Mutex::new(Vec::new()),
            script: Mutex::new(VecDeque::new()),
            memory: Mutex::new(Memory {
                next_id: 1,
                ..Default::default()
            }),
        });
        let app = Router::new().fallback(handle).with_state(inner.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind 127.0.0.1:0");
        let addr = listener.local_addr().expect("local addr");
        tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Double { addr, inner }
    }

    /// `http://127.0.0.1:port` + path.
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// Queues canned answers served, in order, before the real behaviour.
    pub fn script(&self, answers: impl IntoIterator<Item = Canned>) {
        self.inner.script.lock().unwrap().extend(answers);
    }

    pub fn requests(&self) -> Vec<Req> {
        self.inner.requests.lock().unwrap().clone()
    }

    /// Deletes every annotation, as a person (or a fresh database) would.
    pub fn forget_annotations(&self) {
        self.inner.memory.lock().unwrap().annotations.clear();
    }

    pub fn with_memory<T>(&self, f: impl FnOnce(&Memory) -> T) -> T {
        f(&self.inner.memory.lock().unwrap())
    }

    /// Polls until at least `n` requests arrived, or fails after `within`.
    pub async fn wait_for(&self, n: usize, within: Duration) -> Vec<Req> {
        let deadline = Instant::now() + within;
        loop {
            let got = self.requests();
            if got.len() >= n {
                return got;
            }
            assert!(
                Instant::now() < deadline,
                "expected {n} requests within {within:?}, got {}: {got:#?}",
                got.len()
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
}

async fn handle(
    State(inner): State<Arc<Inner>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let req = Req {
        method,
        path: uri.path().to_owned(),
        query: uri.query().unwrap_or_default().to_owned(),
        headers,
        body,
        at: Instant::now(),
    };
    inner.requests.lock().unwrap().push(req.clone());
    let canned = inner.script.lock().unwrap().pop_front();
    if let Some(c) = canned {
        if c.acts_first {
            let _ = real(&inner, &req);
        }
        tokio::time::sleep(c.delay).await;
        let mut resp = (StatusCode::from_u16(c.status).unwrap(), c.body).into_response();
        if let Some(ra) = c.retry_after {
            resp.headers_mut()
                .insert("retry-after", HeaderValue::from_str(&ra).unwrap());
        }
        for (name, value) in c.headers {
            resp.headers_mut()
                .insert(name, HeaderValue::from_str(&value).unwrap());
        }
        return resp;
    }
    real(&inner, &req)
}

/// What the service itself answers.
fn real(inner: &Inner, req: &Req) -> Response {
    match inner.kind {
        Kind::Slack => slack(req),
        Kind::Teams => teams(req),
        Kind::Grafana => grafana(inner, req),
        Kind::GitHub => github(inner, req),
        Kind::Webhook => webhook(inner, req),
    }
}

fn slack(req: &Req) -> Response {
    let Ok(v) = serde_json::from_slice::<Value>(&req.body) else {
        return (StatusCode::BAD_REQUEST, "invalid_payload").into_response();
    };
    if v.get("text").is_none() && v.get("blocks").is_none() {
        return (StatusCode::BAD_REQUEST, "no_text").into_response();
    }
    (StatusCode::OK, "ok").into_response()
}

fn teams(req: &Req) -> Response {
    let ok = serde_json::from_slice::<Value>(&req.body)
        .ok()
        .is_some_and(|v| {
            v["type"] == "message"
                && v["attachments"].as_array().is_some_and(|a| {
                    !a.is_empty()
                        && a.iter().all(|x| {
                            x["contentType"] == "application/vnd.microsoft.card.adaptive"
                                && x["content"]["type"] == "AdaptiveCard"
                        })
                })
        });
    if ok {
        StatusCode::ACCEPTED.into_response()
    } else {
        (StatusCode::BAD_REQUEST, json!({"error": {"code": "InvalidRequestContent", "message": "The input body for trigger 'manual' of type 'Request' did not match its schema definition."}}).to_string()).into_response()
    }
}

fn bearer_ok(inner: &Inner, req: &Req) -> bool {
    req.header("authorization") == Some(&format!("Bearer {}", inner.secret))
}

fn json_resp(status: StatusCode, v: Value) -> Response {
    (
        status,
        [("content-type", "application/json")],
        v.to_string(),
    )
        .into_response()
}

fn grafana(inner: &Inner, req: &Req) -> Response {
    if !bearer_ok(inner, req) {
        return json_resp(StatusCode::UNAUTHORIZED, json!({"message": "Unauthorized"}));
    }
    let Ok(body) = serde_json::from_slice::<Value>(&req.body) else {
        return json_resp(
            StatusCode::BAD_REQUEST,
            json!({"message": "bad request data"}),
        );
    };
    let mut mem = inner.memory.lock().unwrap();
    match (req.method.as_str(), req.path.as_str()) {
        ("POST", "/api/annotations") => {
            let id = mem.next_id;
            mem.next_id += 1;
            mem.annotations.insert(id, body);
            json_resp(
                StatusCode::OK,
                json!({"id": id, "message": "Annotation added"}),
            )
        }
        ("PATCH", p) if p.starts_with("/api/annotations/") => {
            let id: i64 = p
                .trim_start_matches("/api/annotations/")
                .parse()
                .unwrap_or(-1);
            match mem.annotations.get_mut(&id) {
                Some(a) => {
                    for (k, v) in body.as_object().cloned().unwrap_or_default() {
                        a[k] = v;
                    }
                    json_resp(StatusCode::OK, json!({"message": "Annotation patched"}))
                }
                None => json_resp(
                    StatusCode::NOT_FOUND,
                    json!({"message": "Could not find annotation to update"}),
                ),
            }
        }
        _ => json_resp(StatusCode::NOT_FOUND, json!({"message": "Not found"})),
    }
}

fn github(inner: &Inner, req: &Req) -> Response {
    let not_found = || {
        json_resp(
            StatusCode::NOT_FOUND,
            json!({"message": "Not Found", "documentation_url": "https://docs.github.com/rest"}),
        )
    };
    if req.header("user-agent").is_none_or(str::is_empty) {
        return (StatusCode::FORBIDDEN, "Request forbidden by administrative rules. Please make sure your request has a User-Agent header").into_response();
    }
    if !bearer_ok(inner, req) {
        return json_resp(
            StatusCode::UNAUTHORIZED,
            json!({"message": "Bad credentials", "documentation_url": "https://docs.github.com/rest"}),
        );
    }
    let rest = match req.path.strip_prefix("/repos/acme/ultra-boost/deployments") {
        Some(r) => r,
        None => return not_found(),
    };
    let mut mem = inner.memory.lock().unwrap();
    if rest.is_empty() && req.method == Method::GET {
        return json_resp(StatusCode::OK, list_deployments(&mem, &req.query));
    }
    let Ok(body) = serde_json::from_slice::<Value>(&req.body) else {
        return json_resp(
            StatusCode::BAD_REQUEST,
            json!({"message": "Problems parsing JSON"}),
        );
    };
    if rest.is_empty() && req.method == Method::POST {
        if body["ref"].as_str().is_none_or(str::is_empty) {
            return json_resp(
                StatusCode::UNPROCESSABLE_ENTITY,
                json!({"message": "Invalid request.\n\n\"ref\" wasn't supplied."}),
            );
        }
        let id = mem.next_id;
        mem.next_id += 1;
        let deployment = deployment_json(id, &body);
        mem.deployments.insert(id, (body, Vec::new()));
        return json_resp(StatusCode::CREATED, deployment);
    }

    if let Some(id) = rest
        .strip_prefix('/')
        .and_then(|r| r.strip_suffix("/statuses"))
        .and_then(|i| i.parse::<i64>().ok())
        && req.method == Method::POST
    {
        let next = mem.next_id;
        let Some((_, statuses)) = mem.deployments.get_mut(&id) else {
            return not_found();
        };
        const STATES: [&str; 7] = [
            "error",
            "failure",
            "inactive",
            "in_progress",
            "queued",
            "pending",
            "success",
        ];
        if !body["state"].as_str().is_some_and(|s| STATES.contains(&s)) {
            return json_resp(
                StatusCode::UNPROCESSABLE_ENTITY,
                json!({"message": "Validation Failed"}),
            );
        }
        statuses.push(body.clone());
        mem.next_id += 1;
        return json_resp(
            StatusCode::CREATED,
            json!({"id": next, "state": body["state"], "description": body["description"], "environment": body["environment"],
                   "log_url": body["log_url"], "environment_url": body["environment_url"],
                   "deployment_url": format!("https://api.github.com/repos/acme/ultra-boost/deployments/{id}")}),
        );
    }
    not_found()
}

/// A deployment as GitHub's REST API shows it.
fn deployment_json(id: i64, body: &Value) -> Value {
    json!({
            "url": format!("https://api.github.com/repos/acme/ultra-boost/deployments/{id}"),
        "id": id,
        "node_id": "MDEwOkRlcGxveW1lbnQx",
        "sha": body["ref"], "ref": body["ref"], "task": body["task"].as_str().unwrap_or("deploy"),
        "payload": body["payload"], "environment": body["environment"],
        "description": body["description"], "transient_environment": body["transient_environment"],
        "production_environment": body["production_environment"],
        "created_at": "2026-11-27T02:00:00Z", "updated_at": "2026-11-27T02:00:00Z",
    })
}

/// `GET /repos/o/r/deployments`: newest first, filtered by `sha`, `ref`,
/// `task` and `environment` as GitHub documents ("List deployments").
fn list_deployments(mem: &Memory, query: &str) -> Value {
    let Ok(url) = reqwest::Url::parse(&format!("http://double/?{query}")) else {
        return json!([]);
    };
    let filters: Vec<(String, String)> = url
        .query_pairs()
        .map(|(k, v)| (k.into_owned(), v.into_owned()))
        .filter(|(k, _)| ["sha", "ref", "task", "environment"].contains(&k.as_str()))
        .collect();
    let mut ids: Vec<i64> = mem.deployments.keys().copied().collect();
    ids.sort_unstable_by(|a, b| b.cmp(a));
    let listed: Vec<Value> = ids
        .into_iter()
        .map(|id| deployment_json(id, &mem.deployments[&id].0))
        .filter(|d| {
            filters
                .iter()
                .all(|(k, v)| d[k.as_str()].as_str() == Some(v))
        })
        .collect();
    Value::Array(listed)
}

fn webhook(inner: &Inner, req: &Req) -> Response {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    let ts = req.header("x-guard-timestamp").unwrap_or_default();
    let sig = req.header("x-guard-signature").unwrap_or_default();
    match notify::webhook::verify(
        inner.secret.as_bytes(),
        ts,
        sig,
        &req.body,
        now,
        Duration::from_secs(300),
    ) {
        Ok(()) => StatusCode::NO_CONTENT.into_response(),
        Err(e) => (StatusCode::UNAUTHORIZED, e.to_string()).into_response(),
    }
}
