//! GitHub deployments: what runs where, next to the commits.
//!
//! 1. `started`: `POST /repos/{owner}/{repo}/deployments` with `ref` = the
//!    build's commit, `environment`, `auto_merge: false` (never merge the default
//!    branch into the ref), `required_contexts: []` (CI already gated the build),
//!    `transient_environment` for review environments and
//!    `production_environment` for `production`. GitHub answers `201` with the
//!    deployment's `id`, kept per rollout. Then a status `in_progress`.
//! 2. verdict: `POST /repos/{owner}/{repo}/deployments/{id}/statuses` with
//!    `success` (promote; `auto_inactive: true` has GitHub mark the earlier
//!    deployments to that environment `inactive` — GitHub does so only for
//!    environments that are neither production nor transient; in
//!    `production` the newest `success` is the one GitHub shows) or `failure`
//!    (revert), then `inactive` on the reverted deployment, because it no
//!    longer runs; the failure stays in its status history, and the previous
//!    release's deployment, never retired since the candidate never
//!    succeeded, stays the environment's latest `success`. A hold posts
//!    `in_progress` with the reason; a manual rollback `inactive`.
//!
//! `environment_url` (review apps) and `log_url` (guard's status page) are sent
//! when known. Creating a deployment is not repeated blindly: after a timeout
//! or a 5xx GitHub may have created it, so guard first lists the ref's
//! deployments to that environment and takes the one whose payload names the
//! rollout. Every request has `Accept: application/vnd.github+json`,
//! `Authorization: Bearer`, `X-GitHub-Api-Version: 2022-11-28` and a
//! `User-Agent` (GitHub refuses requests without one). If guard missed the
//! `started` event it creates the deployment when the verdict comes.

use crate::message::summarize;
use crate::{Event, EventKind};
use serde_json::{Value, json};

/// GitHub's `Accept` media type.
pub const ACCEPT: &str = "application/vnd.github+json";
/// The REST API version guard speaks.
pub const API_VERSION: &str = "2022-11-28";

/// Deployment status states guard uses.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum State {
    /// Verification is running.
    InProgress,
    /// Promoted.
    Success,
    /// Reverted.
    Failure,
    /// No longer running (replaced by a revert, or rolled back).
    Inactive,
}

impl State {
    /// The API's word.
    pub fn as_str(self) -> &'static str {
        match self {
            State::InProgress => "in_progress",
            State::Success => "success",
            State::Failure => "failure",
            State::Inactive => "inactive",
        }
    }
}

/// The statuses to post for an event, in order (empty: GitHub is not told).
pub fn states_for(kind: EventKind) -> &'static [State] {
    match kind {
        EventKind::Started | EventKind::Held => &[State::InProgress],
        EventKind::Promoted => &[State::Success],
        EventKind::Reverted => &[State::Failure, State::Inactive],
        EventKind::RolledBack => &[State::Inactive],
        EventKind::IncidentOpened | EventKind::IncidentResolved => &[],
    }
}

/// The git ref to deploy: the commit, else the build name (a tag, say).
pub fn git_ref(ev: &Event) -> Option<&str> {
    ev.commit
        .as_deref()
        .or(ev.build.as_deref())
        .filter(|r| !r.is_empty())
}

/// Body of `POST /repos/{owner}/{repo}/deployments`.
pub fn create_deployment(ev: &Event) -> Value {
    let s = summarize(ev);
    json!({
        "ref": git_ref(ev).unwrap_or_default(),
        "task": "deploy",
        "auto_merge": false,
        "required_contexts": [],
        "environment": ev.environment,
        "description": s.short(&format!("guard: {} build {}", ev.service, ev.build.as_deref().unwrap_or("?")), 140),
        "transient_environment": ev.transient,
        "production_environment": ev.environment == "production",
        "payload": {
            "service": ev.service,
            "build": ev.build,
            "previous_build": ev.previous_build,
            "rollout_id": ev.rollout_id,
        },
    })
}

/// Whether `deployment`, as GitHub lists it, is the one guard created for
/// the event's rollout `rollout` (its payload says so).
pub fn created_for(deployment: &Value, ev: &Event, rollout: i64) -> bool {
    let payload = &deployment["payload"];
    payload["rollout_id"].as_i64() == Some(rollout)
        && payload["service"].as_str() == Some(ev.service.as_str())
        && payload["build"].as_str() == ev.build.as_deref()
}

/// Body of `POST /repos/{owner}/{repo}/deployments/{id}/statuses`.
pub fn status(ev: &Event, state: State) -> Value {
    let s = summarize(ev);
    let description = match (ev.kind, state) {
        (EventKind::Reverted, State::Inactive) => {
            format!(
                "replaced by {} (revert)",
                ev.previous_build.as_deref().unwrap_or("the previous build")
            )
        }
        (EventKind::Started, _) => "verifying against the SLOs".to_owned(),
        _ => s.reason.clone(),
    };
    let mut body = json!({
        "state": state.as_str(),
        "description": s.short(&description, 140),
        "environment": ev.environment,
    });
    if let Some(obj) = body.as_object_mut() {
        if let Some(u) = &ev.environment_url {
            obj.insert("environment_url".into(), json!(u));
        }
        if let Some(u) = &ev.status_url {
            obj.insert("log_url".into(), json!(u));
        }
        if state == State::Success {
            obj.insert("auto_inactive".into(), json!(true));
        }
    }
    body
}
