//! guard's HTTP API (axum): what CI calls to deploy, what the CLI reads and
//! commands, and guard's own `/metrics`.
//!
//! | method | path | |
//! |---|---|---|
//! | POST | `/api/v1/deployments` | `{service, environment, build, strategy?, commit?}` → 201 `{id, url}`; 409 if the target is busy |
//! | GET | `/api/v1/rollouts?service=&environment=&limit=` | newest first |
//! | GET | `/api/v1/rollouts/{id}` | the rollout, its steps, live status, notification deliveries |
//! | POST | `/api/v1/rollouts/{id}/{promote,abort,pause,resume}` | a person's command |
//! | POST | `/api/v1/rollbacks` | `{service, environment, to?, requested_by?}` |
//! | GET | `/api/v1/status` | per target: the release running, the rollout in progress |
//! | GET | `/`, `/rollouts/{id}` | status pages for people ([`ui`]) |
//! | GET | `/metrics` | Prometheus text format (no auth: read-only counters) |
//! | GET | `/-/healthy`, `/-/ready` | probes (no auth) |
//!
//! Auth: `Authorization: Bearer <token>` on `/api/*` when a token is
//! configured (env `GUARD_API_TOKEN` or `api.token_file`); the read-only
//! status pages also take it as HTTP Basic's password, which a browser asks
//! for. Without a token the API only starts on a loopback address
//! ([`check_exposure`]). A request that changes something and carries an
//! `Origin` other than guard's own (a web page's form) is refused, token or
//! not.
//!
//! In a cluster (`guard controller`, [`ApiState::cluster`]) only the replica
//! holding the leader Lease runs rollouts and keeps their history, so the
//! others answer `/api/v1/*` (except the Alertmanager receiver) and the
//! status pages with 503 and
//! `Retry-After: 1`; the CLI retries, and the Service sends the retry to a
//! replica at random. A new rollout's stable side is what the cluster runs
//! ([`Cluster::running`]), not guard's own history.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::Json;
use axum::Router;
use axum::extract::{Path, Query, Request, State};
use axum::http::{HeaderMap, Method, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use prometheus_client::registry::Registry;
use serde::{Deserialize, Serialize};
use serde_json::json;

use crate::engine::phase::Command;
use crate::engine::{Engine, EngineError, LiveStatus};

pub mod alertmanager;
mod ui;
use crate::platform::{BoxFuture, Build, Strategy, Target};
use crate::store::{DeliveryRecord, RolloutRecord, StepRecord, StoreError};

/// Turns `(target, build number)` into a runnable [`Build`] (the local
/// platform's templates, or an image reference), or says why not.
pub trait Builds: Send + Sync + 'static {
    fn build(&self, target: &Target, number: &str, commit: Option<&str>) -> Result<Build, String>;
    /// Every target guard manages.
    fn targets(&self) -> Vec<Target>;
    /// Default strategy for a target.
    fn strategy(&self, target: &Target) -> Strategy;
}

/// The cluster side of the API (`guard controller`): who may act, and what runs.
pub trait Cluster: Send + Sync + 'static {
    /// `None` while this replica leads; else who does (if known), for the 503.
    fn follower_of(&self) -> Option<String>;
    /// The build running now for `target` (the stable side of a new rollout).
    fn running<'a>(&'a self, target: &'a Target) -> BoxFuture<'a, Result<Option<Build>, String>>;
}

/// What the handlers share.
#[derive(Clone)]
pub struct ApiState {
    pub engine: Arc<Engine>,
    pub builds: Arc<dyn Builds>,
    pub registry: Arc<Registry>,
    /// `None`: no auth (only allowed on loopback).
    pub token: Option<Arc<str>>,
    /// Extra per-target facts for `/api/v1/status` (e.g. the local router's address).
    pub target_info: Arc<dyn Fn(&Target) -> serde_json::Value + Send + Sync>,
    /// Set in a cluster: followers refuse `/api/v1/*`, deploys start from what runs.
    pub cluster: Option<Arc<dyn Cluster>>,
}

/// Refuses to expose an unauthenticated API beyond this machine.
pub fn check_exposure(listen: SocketAddr, token: Option<&str>) -> anyhow::Result<()> {
    if token.is_none() && !listen.ip().is_loopback() {
        anyhow::bail!(
            "refusing to serve the API on {listen} without a token: set GUARD_API_TOKEN or api.token_file, \
             or listen on a loopback address such as 127.0.0.1:7700"
        );
    }
    Ok(())
}

/// The API router, with `extra` (e.g. the Alertmanager receiver) merged under the same auth.
pub fn router(state: ApiState, extra: Option<Router>) -> Router {
    let mut api = Router::new()
        .route("/api/v1/deployments", post(deploy))
        .route("/api/v1/rollouts", get(list))
        .route("/api/v1/rollouts/{id}", get(show))
        .route("/api/v1/rollouts/{id}/{command}", post(command))
        .route("/api/v1/rollbacks", post(rollback))
        .route("/api/v1/status", get(status))
        .with_state(state.clone());
    if let Some(extra) = extra {
        api = api.merge(extra);
    }
    let api = api
        .merge(ui::routes(state.clone()))
        .layer(middleware::from_fn_with_state(state.clone(), leader_only))
        .layer(middleware::from_fn_with_state(state.clone(), auth));
    Router::new()
        .route("/metrics", get(metrics))
        .route("/-/healthy", get(|| async { "ok\n" }))
        .route("/-/ready", get(|| async { "ready\n" }))
        .with_state(state)
        .merge(api)
}

/// Constant-time comparison, so the token cannot be guessed byte by byte.
fn same(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

async fn auth(
    State(state): State<ApiState>,
    headers: HeaderMap,
    req: Request,
    next: Next,
) -> Response {
    // A web page may make a browser POST here (a form needs no CORS
    // preflight, and a browser resends Basic credentials and reaches
    // loopback): a request another origin started never changes anything.
    // The CLI, CI and Alertmanager send no Origin.
    if !matches!(*req.method(), Method::GET | Method::HEAD)
        && let Some(origin) = headers.get(header::ORIGIN).and_then(|v| v.to_str().ok())
    {
        let host = headers
            .get(header::HOST)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default();
        let same_origin = origin
            .split_once("://")
            .is_some_and(|(_, authority)| !host.is_empty() && authority == host);
        if !same_origin {
            return (
                StatusCode::FORBIDDEN,
                Json(json!({"error": format!("refused: a {} from the web page at {origin}; guard takes commands from its CLI and API clients, not from other sites", req.method())})),
            )
                .into_response();
        }
    }
    if let Some(token) = &state.token {
        let api = req.uri().path().starts_with("/api/");
        let given = headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| presented_token(v, !api));
        if !given.is_some_and(|g| same(g.as_bytes(), token.as_bytes())) {
            // A browser asks for the token on Basic (the status pages, which
            // only read); the API, which acts, takes Bearer alone, so the
            // credentials a browser keeps for the pages never command it.
            if !api {
                return ui::unauthorized_page("Basic realm=\"guard\", charset=\"UTF-8\"");
            }
            return (
                StatusCode::UNAUTHORIZED,
                [(header::WWW_AUTHENTICATE, "Bearer")],
                Json(json!({"error": "missing or wrong bearer token (Authorization: Bearer $GUARD_API_TOKEN)"})),
            )
                .into_response();
        }
    }
    next.run(req).await
}

/// The token of an `Authorization` header: `Bearer <token>`, or, where
/// `basic` allows it, Basic with the token as the password (any user name),
/// which is what a browser sends.
fn presented_token(value: &str, basic: bool) -> Option<String> {
    use base64::Engine as _;
    if let Some(token) = value.strip_prefix("Bearer ") {
        return Some(token.trim().to_string());
    }
    let encoded = value.strip_prefix("Basic ").filter(|_| basic)?;
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(encoded.trim())
        .ok()?;
    let credentials = String::from_utf8(decoded).ok()?;
    let (_user, password) = credentials.split_once(':')?;
    Some(password.to_string())
}

/// In a cluster, only the leader answers `/api/v1/*` and the pages (its
/// history is the one that counts); a follower's page says which replica
/// leads and refreshes. Alertmanager's receiver only notifies, so every
/// replica takes it.
async fn leader_only(State(state): State<ApiState>, req: Request, next: Next) -> Response {
    if let Some(cluster) = &state.cluster
        && req.uri().path() != "/api/v1/alerts"
        && let Some(leader) = cluster.follower_of()
    {
        if !req.uri().path().starts_with("/api/") {
            return ui::follower_page(&leader);
        }
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            [(header::RETRY_AFTER, "1")],
            Json(json!({
                "error": format!("this guard replica is not the leader (the leader is {leader}); retry"),
                "leader": leader,
            })),
        )
            .into_response();
    }
    next.run(req).await
}

/// An API error: status plus a JSON `{"error": ...}`.
pub struct ApiError(StatusCode, String);

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.0, Json(json!({"error": self.1}))).into_response()
    }
}

impl From<EngineError> for ApiError {
    fn from(e: EngineError) -> Self {
        let code = match &e {
            EngineError::Store(StoreError::Busy { .. }) => StatusCode::CONFLICT,
            EngineError::Store(StoreError::NotFound(_)) => StatusCode::NOT_FOUND,
            EngineError::Store(_) => StatusCode::INTERNAL_SERVER_ERROR,
            EngineError::Refused(_) | EngineError::NotActive(_) => StatusCode::CONFLICT,
            EngineError::UnknownBuild { .. }
            | EngineError::NothingToRollBack { .. }
            | EngineError::AlreadyRunning { .. } => StatusCode::UNPROCESSABLE_ENTITY,
            EngineError::ShuttingDown => StatusCode::SERVICE_UNAVAILABLE,
        };
        ApiError(code, e.to_string())
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        EngineError::from(e).into()
    }
}

/// `POST /api/v1/deployments`.
#[derive(Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct DeployRequest {
    pub service: String,
    pub environment: String,
    pub build: String,
    pub strategy: Option<Strategy>,
    pub commit: Option<String>,
    /// Who asks (shown in history); default `api`.
    pub requested_by: Option<String>,
}

fn known_target(state: &ApiState, service: &str, environment: &str) -> Result<Target, ApiError> {
    let target = Target {
        service: service.to_string(),
        environment: environment.to_string(),
    };
    if state.builds.targets().contains(&target) {
        Ok(target)
    } else {
        let known: Vec<String> = state
            .builds
            .targets()
            .iter()
            .map(|t| format!("{}/{}", t.service, t.environment))
            .collect();
        Err(ApiError(
            StatusCode::NOT_FOUND,
            format!(
                "unknown service {service:?} in environment {environment:?}; guard knows: {}",
                known.join(", ")
            ),
        ))
    }
}

/// A build is named as an image tag is (`[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}`):
/// it becomes one on Kubernetes, and a label, a Grafana tag and a GitHub ref
/// elsewhere, where slashes and spaces would not survive.
fn is_build_name(build: &str) -> bool {
    let mut chars = build.chars();
    build.len() <= 128
        && chars
            .next()
            .is_some_and(|c| c.is_ascii_alphanumeric() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'))
}

async fn deploy(
    State(state): State<ApiState>,
    body: Result<Json<DeployRequest>, axum::extract::rejection::JsonRejection>,
) -> Result<Response, ApiError> {
    let Json(req) = body.map_err(|e| {
        ApiError(
            StatusCode::BAD_REQUEST,
            format!("bad deployment request: {e}"),
        )
    })?;
    if !is_build_name(&req.build) {
        return Err(ApiError(
            StatusCode::BAD_REQUEST,
            format!(
                "build must be a build number or name usable as an image tag (letters, digits, \
                 `_`, `.`, `-`, at most 128, not starting with `.` or `-`), e.g. \"86\"; got {:?}",
                req.build
            ),
        ));
    }
    let target = known_target(&state, &req.service, &req.environment)?;
    let build = state
        .builds
        .build(&target, &req.build, req.commit.as_deref())
        .map_err(|e| ApiError(StatusCode::UNPROCESSABLE_ENTITY, e))?;
    let strategy = req
        .strategy
        .unwrap_or_else(|| state.builds.strategy(&target));
    let by = req.requested_by.as_deref().unwrap_or("api");
    let started = match &state.cluster {
        Some(cluster) => {
            let stable = cluster.running(&target).await.map_err(|e| {
                ApiError(
                    StatusCode::SERVICE_UNAVAILABLE,
                    format!(
                        "cannot read what runs for {}/{}: {e}",
                        target.service, target.environment
                    ),
                )
            })?;
            state
                .engine
                .deploy_over(&target, stable, build, strategy, by)
        }
        None => state.engine.deploy(&target, build, strategy, by),
    };
    let id = started.map_err(|e| busy_with_a_watch(&state, e))?;
    Ok((
        StatusCode::CREATED,
        Json(json!({"id": id, "url": format!("/api/v1/rollouts/{id}")})),
    )
        .into_response())
}

/// A deploy refused because the target's last release is still in its
/// post-promote watch says so, and how to end it.
fn busy_with_a_watch(state: &ApiState, e: EngineError) -> ApiError {
    if let EngineError::Store(StoreError::Busy { id, .. }) = &e
        && let Ok(r) = state.engine.store().rollout(*id)
        && let crate::engine::phase::Phase::Watching { until_ms } = r.phase
    {
        let until = jiff::Timestamp::from_millisecond(until_ms)
            .map(|t| t.strftime("%H:%M:%S UTC").to_string())
            .unwrap_or_default();
        return ApiError(
            StatusCode::CONFLICT,
            format!(
                "{e}: build {} is promoted and watched until {until} (guard.yaml `watch`); \
                 wait, or end the watch with `guard promote {} --env {}`",
                r.candidate.number, r.target.service, r.target.environment
            ),
        );
    }
    e.into()
}

#[derive(Debug, Deserialize)]
struct ListQuery {
    service: Option<String>,
    environment: Option<String>,
    limit: Option<usize>,
}

/// A rollout as the API shows it.
#[derive(Debug, Serialize, Deserialize)]
pub struct RolloutView {
    #[serde(flatten)]
    pub record: RolloutRecord,
    /// Phase name, for scripts.
    pub state: String,
    pub seconds_to_verdict: Option<f64>,
    /// Present while the rollout runs in this guard.
    pub live: Option<LiveStatus>,
}

fn view(state: &ApiState, record: RolloutRecord) -> RolloutView {
    let live = state.engine.live_status(record.id);
    RolloutView {
        state: record.phase.name().to_string(),
        seconds_to_verdict: record.seconds_to_verdict(),
        live,
        record,
    }
}

async fn list(
    State(state): State<ApiState>,
    Query(q): Query<ListQuery>,
) -> Result<Json<Vec<RolloutView>>, ApiError> {
    let target = match (q.service, q.environment) {
        (Some(service), Some(environment)) => Some(Target {
            service,
            environment,
        }),
        (None, None) => None,
        _ => {
            return Err(ApiError(
                StatusCode::BAD_REQUEST,
                "give both service and environment, or neither".into(),
            ));
        }
    };
    let records = state
        .engine
        .store()
        .rollouts(target.as_ref(), q.limit.unwrap_or(50).min(1000))?;
    // History of a service no longer configured is still shown; a name
    // guard never knew is most likely misspelt.
    if records.is_empty()
        && let Some(t) = &target
    {
        known_target(&state, &t.service, &t.environment)?;
    }
    Ok(Json(records.into_iter().map(|r| view(&state, r)).collect()))
}

/// `GET /api/v1/rollouts/{id}`.
#[derive(Debug, Serialize, Deserialize)]
pub struct RolloutDetail {
    #[serde(flatten)]
    pub rollout: RolloutView,
    pub steps: Vec<StepRecord>,
    pub deliveries: Vec<DeliveryRecord>,
}

async fn show(
    State(state): State<ApiState>,
    Path(id): Path<i64>,
) -> Result<Json<RolloutDetail>, ApiError> {
    let store = state.engine.store();
    let record = store.rollout(id)?;
    let steps = store.steps(id)?;
    let deliveries = store.deliveries(id)?;
    Ok(Json(RolloutDetail {
        rollout: view(&state, record),
        steps,
        deliveries,
    }))
}

async fn command(
    State(state): State<ApiState>,
    Path((id, cmd)): Path<(i64, String)>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let cmd = match cmd.as_str() {
        "promote" => Command::Promote,
        "abort" => Command::Abort,
        "pause" => Command::Pause,
        "resume" => Command::Resume,
        other => {
            return Err(ApiError(
                StatusCode::NOT_FOUND,
                format!("unknown command {other:?}: promote, abort, pause or resume"),
            ));
        }
    };
    let phase = state.engine.command(id, cmd).await?;
    Ok(Json(
        json!({"id": id, "state": phase.name(), "phase": phase}),
    ))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RollbackRequest {
    service: String,
    environment: String,
    to: Option<String>,
    /// Who asks (shown in history); default `api`.
    requested_by: Option<String>,
}

async fn rollback(
    State(state): State<ApiState>,
    body: Result<Json<RollbackRequest>, axum::extract::rejection::JsonRejection>,
) -> Result<Response, ApiError> {
    let Json(req) = body.map_err(|e| {
        ApiError(
            StatusCode::BAD_REQUEST,
            format!("bad rollback request: {e}"),
        )
    })?;
    let target = known_target(&state, &req.service, &req.environment)?;
    let id = state
        .engine
        .rollback(
            &target,
            req.to.as_deref(),
            req.requested_by.as_deref().unwrap_or("api"),
        )
        .await?;
    Ok((
        StatusCode::CREATED,
        Json(json!({"id": id, "url": format!("/api/v1/rollouts/{id}")})),
    )
        .into_response())
}

/// One target in `/api/v1/status`.
#[derive(Debug, Serialize, Deserialize)]
pub struct TargetStatus {
    pub service: String,
    pub environment: String,
    /// Build number running now as guard recorded it.
    pub release: Option<String>,
    pub rollout: Option<RolloutView>,
    /// Platform facts (local: router address and traffic totals).
    pub platform: serde_json::Value,
}

async fn status(State(state): State<ApiState>) -> Result<Json<Vec<TargetStatus>>, ApiError> {
    Ok(Json(target_statuses(&state)?))
}

/// Every target guard manages, what runs there and its latest rollout.
fn target_statuses(state: &ApiState) -> Result<Vec<TargetStatus>, ApiError> {
    let store = state.engine.store();
    let mut out = vec![];
    for target in state.builds.targets() {
        let release = store.release(&target)?.map(|b| b.number);
        let latest = store.rollouts(Some(&target), 1)?.into_iter().next();
        out.push(TargetStatus {
            platform: (state.target_info)(&target),
            service: target.service,
            environment: target.environment,
            release,
            rollout: latest.map(|r| view(state, r)),
        });
    }
    Ok(out)
}

/// guard's own metrics: OpenMetrics when the scraper asks for it (Prometheus
/// does), else the Prometheus text format every other tool reads (`curl |
/// promtool check metrics`).
async fn metrics(State(state): State<ApiState>, headers: HeaderMap) -> Response {
    let openmetrics = headers
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.contains("application/openmetrics-text"));
    let mut text = String::new();
    let (encoded, content_type) = if openmetrics {
        (
            prometheus_client::encoding::text::encode(&mut text, &state.registry),
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )
    } else {
        (
            prometheus_client::encoding::prometheus_text::encode(&mut text, &state.registry),
            prometheus_client::encoding::prometheus_text::CONTENT_TYPE,
        )
    };
    match encoded {
        Ok(()) => ([(header::CONTENT_TYPE, content_type)], text).into_response(),
        Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, e.to_string()).into_response(),
    }
}
