//! Alertmanager's webhook receiver: `POST /api/v1/alerts`.
//!
//! Alertmanager sends its documented JSON (`version: "4"`, `status`,
//! `receiver`, `groupKey`, `alerts[]` each with `status`, `labels`,
//! `annotations`, `startsAt`, `endsAt`, `generatorURL`, `fingerprint`). For each
//! alert guard:
//!
//! 1. looks up the release most recently promoted in the alert's environment
//!    (and service, when the alert names one) through [`ReleaseLookup`], the
//!    store's view of history: that release is the first suspect;
//! 2. on `firing`, sends an `IncidentOpened` event naming the suspect and how
//!    long before the alert it went out, to every notifier; Grafana opens a
//!    region annotation at `startsAt`, kept per fingerprint;
//! 3. on `resolved`, sends `IncidentResolved`; Grafana closes that region at
//!    `endsAt` (`PATCH /api/annotations/:id`).
//!
//! Alertmanager repeats firing alerts every `repeat_interval` and whenever the
//! group changes; an alert already open (same fingerprint and `startsAt`) is
//! not announced twice, and a resolution is announced once.
//!
//! Labels read: service from `service` or `sloth_service`; environment from
//! `environment` or `env` (else the configured default); the SLO from
//! `sloth_slo` or `slo` (else `alertname`); `severity` or `sloth_severity`.
//!
//! Auth: `Authorization: Bearer <token>` compared in constant time, when
//! [`AlertmanagerState`] has a token. When the router is merged under guard's
//! API auth, that check already applies and the token may be `None`.
//! Alertmanager's side:
//!
//! ```yaml
//! receivers:
//!   - name: guard
//!     webhook_configs:
//!       - url: http://guard:7700/api/v1/alerts
//!         send_resolved: true
//!         http_config:
//!           authorization: { credentials_file: /etc/alertmanager/guard-token }
//! ```
//!
//! Usage (from `api/mod.rs`): `mod alertmanager;` then merge
//! `alertmanager::router(AlertmanagerState::new(sink, releases, "production"))`.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::{Arc, Mutex};

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use serde::Deserialize;
use serde_json::json;

/// The release most recently promoted somewhere, as history records it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PromotedRelease {
    pub service: String,
    /// Build number (or name).
    pub build: String,
    pub commit: Option<String>,
    /// Unix milliseconds when guard promoted it.
    pub promoted_at_ms: i64,
}

/// The store's answer to "what went out last here?". Implemented by guard's store.
pub trait ReleaseLookup: Send + Sync {
    /// The release most recently promoted in `environment`, for `service`, or
    /// for any service when the alert names none. `None` when history has none.
    fn last_promoted(&self, service: Option<&str>, environment: &str) -> Option<PromotedRelease>;
}

/// Where incident events go: the notify dispatcher, which pairs a firing and a
/// resolved alert by fingerprint.
pub trait IncidentSink: Send + Sync {
    /// Queues an incident event; must not block.
    fn incident(&self, event: notify::Event, fingerprint: &str);
}

impl IncidentSink for notify::Dispatcher {
    fn incident(&self, event: notify::Event, fingerprint: &str) {
        self.send_incident(event, fingerprint);
    }
}

/// How many alert instances are remembered for de-duplication.
const REMEMBERED: usize = 4096;

/// Which alert instances were announced: `(fingerprint, startsAt ms)`.
#[derive(Default)]
struct Seen {
    open: HashSet<(String, i64)>,
    resolved: HashSet<(String, i64)>,
    order: VecDeque<(bool, (String, i64))>,
}

impl Seen {
    fn remember(&mut self, resolved: bool, key: (String, i64)) {
        let set = if resolved {
            &mut self.resolved
        } else {
            &mut self.open
        };
        if set.insert(key.clone()) {
            self.order.push_back((resolved, key));
        }
        while self.order.len() > REMEMBERED {
            if let Some((r, k)) = self.order.pop_front() {
                if r {
                    self.resolved.remove(&k);
                } else {
                    self.open.remove(&k);
                }
            }
        }
    }
}

/// What the receiver needs.
#[derive(Clone)]
pub struct AlertmanagerState {
    sink: Arc<dyn IncidentSink>,
    releases: Arc<dyn ReleaseLookup>,
    default_environment: String,
    token: Option<notify::Secret>,
    status_url: Option<String>,
    seen: Arc<Mutex<Seen>>,
}

impl std::fmt::Debug for AlertmanagerState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AlertmanagerState")
            .field("default_environment", &self.default_environment)
            .field("token", &self.token)
            .field("status_url", &self.status_url)
            .finish_non_exhaustive()
    }
}

impl AlertmanagerState {
    /// A receiver that sends incidents to `sink`, finds suspects in `releases`,
    /// and files alerts without an environment label under `default_environment`.
    pub fn new(
        sink: Arc<dyn IncidentSink>,
        releases: Arc<dyn ReleaseLookup>,
        default_environment: &str,
    ) -> Self {
        AlertmanagerState {
            sink,
            releases,
            default_environment: default_environment.to_owned(),
            token: None,
            status_url: None,
            seen: Arc::default(),
        }
    }

    /// Requires `Authorization: Bearer <token>` (empty: no check of its own).
    pub fn with_token(mut self, token: Option<notify::Secret>) -> Self {
        self.token = token.filter(|t| !t.is_empty());
        self
    }

    /// guard's status page, linked from incident messages.
    pub fn with_status_url(mut self, url: Option<String>) -> Self {
        self.status_url = url;
        self
    }
}

/// `POST /api/v1/alerts`.
pub fn router(state: AlertmanagerState) -> Router {
    Router::new()
        .route("/api/v1/alerts", post(receive))
        .with_state(state)
}

/// The parts of Alertmanager's webhook body (version 4) guard reads. Other
/// fields (`status`, `receiver`, `groupLabels`, `externalURL`,
/// `truncatedAlerts`, ...) are ignored: each alert carries its own status.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct WebhookMessage {
    pub version: String,
    #[serde(default)]
    pub group_key: String,
    pub alerts: Vec<Alert>,
}

/// One alert of a webhook message.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Alert {
    /// `firing` or `resolved`.
    pub status: String,
    #[serde(default)]
    pub labels: HashMap<String, String>,
    #[serde(default)]
    pub annotations: HashMap<String, String>,
    /// RFC 3339.
    pub starts_at: String,
    /// RFC 3339; `0001-01-01T00:00:00Z` while firing.
    #[serde(default)]
    pub ends_at: String,
    #[serde(default, rename = "generatorURL")]
    pub generator_url: String,
    pub fingerprint: String,
}

fn error(status: StatusCode, msg: impl Into<String>) -> Response {
    (status, axum::Json(json!({"error": msg.into()}))).into_response()
}

async fn receive(
    State(state): State<AlertmanagerState>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    if let Some(token) = &state.token {
        let given = headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .map(str::trim)
            .unwrap_or_default();
        if !notify::webhook::constant_time_eq(given.as_bytes(), token.expose().as_bytes()) {
            return (
                StatusCode::UNAUTHORIZED,
                [(header::WWW_AUTHENTICATE, "Bearer")],
                axum::Json(json!({"error": "missing or wrong bearer token (Alertmanager: webhook_configs[].http_config.authorization)"})),
            )
                .into_response();
        }
    }
    let msg: WebhookMessage = match serde_json::from_slice(&body) {
        Ok(m) => m,
        Err(e) => {
            return error(
                StatusCode::BAD_REQUEST,
                format!(
                    "not an Alertmanager webhook message (line {}, column {}): {e}",
                    e.line(),
                    e.column()
                ),
            );
        }
    };
    if msg.version != "4" {
        return error(
            StatusCode::BAD_REQUEST,
            format!(
                "version: guard reads Alertmanager's webhook version \"4\"; got {:?}",
                msg.version
            ),
        );
    }
    // Check every alert before acting on any, so a bad message changes nothing.
    let mut parsed = Vec::with_capacity(msg.alerts.len());
    for (i, a) in msg.alerts.iter().enumerate() {
        let firing = match a.status.as_str() {
            "firing" => true,
            "resolved" => false,
            other => {
                return error(
                    StatusCode::BAD_REQUEST,
                    format!(
                        "alerts[{i}].status: expected \"firing\" or \"resolved\", got {other:?}"
                    ),
                );
            }
        };
        let Some(starts) = parse_time(&a.starts_at) else {
            return error(
                StatusCode::BAD_REQUEST,
                format!(
                    "alerts[{i}].startsAt: not an RFC 3339 time: {:?}",
                    a.starts_at
                ),
            );
        };
        if a.fingerprint.trim().is_empty() {
            return error(
                StatusCode::BAD_REQUEST,
                format!("alerts[{i}].fingerprint: empty"),
            );
        }
        parsed.push((a, firing, starts, parse_time(&a.ends_at)));
    }

    let now_ms = jiff::Timestamp::now().as_millisecond();
    let (mut opened, mut resolved, mut repeated) = (0, 0, 0);
    for (alert, firing, starts, ends) in parsed {
        let key = (alert.fingerprint.clone(), starts);
        let fresh = {
            let Ok(mut seen) = state.seen.lock() else {
                return error(StatusCode::INTERNAL_SERVER_ERROR, "internal state poisoned");
            };
            let fresh = if firing {
                !seen.open.contains(&key)
            } else {
                !seen.resolved.contains(&key)
            };
            if fresh {
                seen.remember(!firing, key);
            }
            fresh
        };
        if !fresh {
            repeated += 1;
            continue;
        }
        let event = incident_event(&state, alert, firing, starts, ends, now_ms);
        tracing::info!(
            fingerprint = %alert.fingerprint,
            alertname = alert.labels.get("alertname").map(String::as_str).unwrap_or(""),
            service = %event.service,
            environment = %event.environment,
            suspect = event.build.as_deref().unwrap_or("none"),
            status = %alert.status,
            group_key = %msg.group_key,
            "alert received"
        );
        state.sink.incident(event, &alert.fingerprint);
        if firing {
            opened += 1;
        } else {
            resolved += 1;
        }
    }
    (
        StatusCode::OK,
        axum::Json(
            json!({"status": "ok", "opened": opened, "resolved": resolved, "repeated": repeated}),
        ),
    )
        .into_response()
}

/// Unix ms of an RFC 3339 time; `None` for Alertmanager's zero time (year 1).
fn parse_time(s: &str) -> Option<i64> {
    let t: jiff::Timestamp = s.trim().parse().ok()?;
    let ms = t.as_millisecond();
    // "0001-01-01T00:00:00Z" means "not set".
    (ms > 0).then_some(ms)
}

fn label<'a>(alert: &'a Alert, keys: &[&str]) -> Option<&'a str> {
    keys.iter()
        .find_map(|k| alert.labels.get(*k))
        .map(String::as_str)
        .filter(|v| !v.is_empty())
}

fn incident_event(
    state: &AlertmanagerState,
    a: &Alert,
    firing: bool,
    starts: i64,
    ends: Option<i64>,
    now_ms: i64,
) -> notify::Event {
    let service_label = label(a, &["service", "sloth_service"]);
    let environment = label(a, &["environment", "env"])
        .unwrap_or(&state.default_environment)
        .to_owned();
    let alertname = label(a, &["alertname"]).unwrap_or("alert");
    let slo = label(a, &["sloth_slo", "slo"])
        .unwrap_or(alertname)
        .to_owned();
    let severity = label(a, &["severity", "sloth_severity"]);
    let suspect = state.releases.last_promoted(service_label, &environment);
    let service = service_label
        .map(str::to_owned)
        .or_else(|| suspect.as_ref().map(|r| r.service.clone()))
        .or_else(|| label(a, &["job"]).map(str::to_owned))
        .unwrap_or_else(|| "unknown".to_owned());

    let mut reason = alertname.to_owned();
    if let Some(sev) = severity {
        reason.push_str(&format!(" ({sev})"));
    }
    let since = jiff::Timestamp::from_millisecond(starts)
        .map(|t| t.to_string())
        .unwrap_or_default();
    if firing {
        reason.push_str(&format!(" firing since {since}."));
    } else {
        let lasted = ends.unwrap_or(now_ms).saturating_sub(starts).max(0);
        reason.push_str(&format!(
            " resolved after {}.",
            notify::message::human_seconds(lasted as f64 / 1000.0)
        ));
    }
    if let Some(text) = a
        .annotations
        .get("summary")
        .or_else(|| a.annotations.get("description"))
        .filter(|t| !t.is_empty())
    {
        reason.push_str(&format!(" {}", text.trim()));
        if !reason.ends_with('.') {
            reason.push('.');
        }
    }
    match &suspect {
        Some(r) => {
            let gap = (starts - r.promoted_at_ms) as f64 / 1000.0;
            if gap >= 0.0 {
                reason.push_str(&format!(
                    " Suspect: {} build {}, promoted {} before the alert fired.",
                    r.service,
                    r.build,
                    notify::message::human_seconds(gap)
                ));
            } else {
                reason.push_str(&format!(
                    " Latest release: {} build {}, promoted {} after the alert began, so it did not start it.",
                    r.service,
                    r.build,
                    notify::message::human_seconds(-gap)
                ));
            }
        }
        None => reason.push_str(&format!(
            " guard has promoted no release in {environment} yet."
        )),
    }
    let status_url = state
        .status_url
        .clone()
        .or_else(|| (!a.generator_url.is_empty()).then(|| a.generator_url.clone()));
    notify::Event {
        kind: if firing {
            notify::EventKind::IncidentOpened
        } else {
            notify::EventKind::IncidentResolved
        },
        service,
        environment,
        previous_build: None,
        build: suspect.as_ref().map(|r| r.build.clone()),
        commit: suspect.as_ref().and_then(|r| r.commit.clone()),
        reason,
        evidence: notify::Evidence {
            slo: Some(slo),
            ..Default::default()
        },
        seconds_to_verdict: None,
        started_at_ms: starts,
        ended_at_ms: if firing {
            None
        } else {
            Some(ends.unwrap_or(now_ms).max(starts))
        },
        status_url,
        environment_url: None,
        transient: false,
        rollout_id: None,
    }
}
