//! Review environments per pull request, from GitHub `pull_request` webhooks.
//!
//! Flow of `POST /api/v1/github/webhook`:
//!
//! 1. The raw body's HMAC-SHA256 under the webhook secret must equal
//!    `X-Hub-Signature-256` (compared in constant time). Otherwise: 401 and
//!    nothing else happens — not even parsing.
//! 2. `X-GitHub-Event: ping` answers 200; events other than `pull_request`,
//!    actions other than below, and other repositories (when
//!    `--review-repository` is set) answer 202 "ignored".
//! 3. `opened` / `reopened` / `synchronize`: once the image `:pr-N` exists
//!    (and, after a push, has a digest other than the one applied before;
//!    see [`image`]), the review template ([`template`]) is applied in
//!    namespace `<prefix>-N` with server-side apply, field manager `guard`,
//!    Namespace first. Then a transient GitHub deployment is announced
//!    (`notify::Event`, kind `promoted`, `transient: true`, with the URL).
//!    Without an image check the apply happens before the answer (200);
//!    with one, the answer is 202 and the wait runs in the background (a
//!    newer event for the same pull request replaces a waiting one).
//! 4. `closed` (merged or not): the namespace is deleted, only if it carries
//!    `app.kubernetes.io/managed-by: guard` and `guard.ultra-boost.dev/review-pr: N`.
//! 5. A sweep (leader only) deletes review namespaces whose last activity
//!    (annotation `guard.ultra-boost.dev/last-activity`) is older than the TTL.
//!
//! Every step is idempotent: a redelivered webhook converges to the same state.
//! Known limits: a background wait lives in the replica that received the
//! webhook (if it dies, the next push or a redelivery applies); a `closed`
//! handled by one replica while another still waits for an image may see the
//! namespace re-created by that replica, and the TTL sweep removes it then.

pub mod image;
pub mod signature;
pub mod template;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use k8s_openapi::api::core::v1::Namespace;
use kube::ResourceExt;
use kube::api::{
    Api, ApiResource, DeleteParams, DynamicObject, GroupVersionKind, ListParams, Patch, PatchParams,
};
use serde::Deserialize;
use serde_json::{Value, json};
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;

use image::ImageCheck;
use template::{
    ANNOTATION_IMAGE_DIGEST, ANNOTATION_LAST_ACTIVITY, LABEL_MANAGED_BY, LABEL_REVIEW_PR,
    ReviewRequest, ReviewTemplate,
};

/// The webhook path.
pub const WEBHOOK_PATH: &str = "/api/v1/github/webhook";

/// How review environments are made.
#[derive(Clone, Debug)]
pub struct ReviewSettings {
    /// The GitHub webhook secret.
    pub secret: Vec<u8>,
    pub template: ReviewTemplate,
    /// The environment's URL, `{number}` replaced, e.g. `https://pr-{number}.review.example.com`.
    pub url_pattern: Option<String>,
    /// Review environments without activity for this long are deleted.
    pub ttl: Duration,
    /// How long to wait for the image before giving up on an event.
    pub image_wait: Duration,
    /// How often to ask the registry meanwhile.
    pub image_poll: Duration,
    /// Only this repository's events (`owner/name`); `None`: any.
    pub repository: Option<String>,
    /// The service name in notifications.
    pub service: String,
}

/// Errors acting on review environments.
#[derive(Debug, thiserror::Error)]
pub enum ReviewError {
    /// The cluster refused or could not be reached.
    #[error("{action}: {source}")]
    Kube { action: String, source: kube::Error },
    /// The namespace exists but guard does not own it; it was left alone.
    #[error(
        "namespace {namespace} is not labelled {LABEL_MANAGED_BY}=guard, {LABEL_REVIEW_PR}={number}; not deleting it"
    )]
    NotOwned { namespace: String, number: u64 },
    /// The image did not appear within the wait.
    #[error("image {image} did not appear within {seconds} s")]
    ImageTimeout { image: String, seconds: u64 },
}

/// What a removal did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Removed {
    Deleted,
    AlreadyGone,
}

/// Review environments: webhook handling, apply, delete, sweep.
pub struct Reviews {
    client: kube::Client,
    settings: ReviewSettings,
    images: Option<Arc<dyn ImageCheck>>,
    events: Option<mpsc::UnboundedSender<notify::Event>>,
    pending: Mutex<HashMap<u64, tokio::task::JoinHandle<()>>>,
}

#[derive(Debug, Deserialize)]
struct PullRequestEvent {
    action: String,
    number: u64,
    pull_request: PullRequest,
    #[serde(default)]
    repository: Option<Repository>,
}

#[derive(Debug, Deserialize)]
struct PullRequest {
    head: Head,
    #[serde(default)]
    merged: Option<bool>,
}

#[derive(Debug, Deserialize)]
struct Head {
    sha: String,
}

#[derive(Debug, Deserialize)]
struct Repository {
    full_name: String,
}

/// `ApiResource` of an object's apiVersion/kind (plural: lower-case kind + s, y -> ies).
fn api_resource(api_version: &str, kind: &str) -> ApiResource {
    let (group, version) = api_version.rsplit_once('/').unwrap_or(("", api_version));
    let lower = kind.to_ascii_lowercase();
    let plural = match lower.strip_suffix('y') {
        Some(stem) => format!("{stem}ies"),
        None if lower.ends_with('s') => format!("{lower}es"),
        None => format!("{lower}s"),
    };
    ApiResource::from_gvk_with_plural(&GroupVersionKind::gvk(group, version, kind), &plural)
}

fn reply(code: StatusCode, body: Value) -> Response {
    (code, axum::Json(body)).into_response()
}

impl Reviews {
    pub fn new(
        client: kube::Client,
        settings: ReviewSettings,
        images: Option<Arc<dyn ImageCheck>>,
        events: Option<mpsc::UnboundedSender<notify::Event>>,
    ) -> Self {
        Reviews {
            client,
            settings,
            images,
            events,
            pending: Mutex::new(HashMap::new()),
        }
    }

    pub fn settings(&self) -> &ReviewSettings {
        &self.settings
    }

    /// The axum routes (`POST /api/v1/github/webhook`).
    pub fn router(self: Arc<Self>) -> axum::Router {
        axum::Router::new()
            .route(WEBHOOK_PATH, post(webhook))
            .with_state(self)
    }

    fn url_for(&self, n: u64) -> Option<String> {
        self.settings
            .url_pattern
            .as_ref()
            .map(|p| p.replace("{number}", &n.to_string()))
    }

    fn emit(&self, kind: notify::EventKind, n: u64, sha: Option<&str>, reason: String) {
        let Some(tx) = &self.events else { return };
        let now = jiff::Timestamp::now().as_millisecond();
        let _ = tx.send(notify::Event {
            kind,
            service: self.settings.service.clone(),
            environment: format!("pr-{n}"),
            previous_build: None,
            build: Some(format!("pr-{n}")),
            commit: sha.map(String::from),
            reason,
            evidence: notify::Evidence::default(),
            seconds_to_verdict: None,
            started_at_ms: now,
            ended_at_ms: Some(now),
            status_url: None,
            environment_url: self.url_for(n),
            transient: true,
            rollout_id: None,
        });
    }

    /// The digest recorded on the namespace at the last apply.
    async fn applied_digest(&self, n: u64) -> Result<Option<String>, ReviewError> {
        let ns_api: Api<Namespace> = Api::all(self.client.clone());
        let name = self.settings.template.namespace_for(n);
        let ns = ns_api
            .get_opt(&name)
            .await
            .map_err(|source| ReviewError::Kube {
                action: format!("get namespace {name}"),
                source,
            })?;
        Ok(ns.and_then(|ns| ns.annotations().get(ANNOTATION_IMAGE_DIGEST).cloned()))
    }

    /// Waits for the image of `n` (a new digest after a push); `None` digest without a check.
    async fn wait_for_image(
        &self,
        n: u64,
        after_push: bool,
    ) -> Result<Option<String>, ReviewError> {
        let Some(check) = &self.images else {
            return Ok(None);
        };
        let images = self.settings.template.images_for(n);
        let Some(image) = images.first() else {
            return Ok(None);
        };
        let previous = if after_push {
            self.applied_digest(n).await?
        } else {
            None
        };
        let deadline = tokio::time::Instant::now() + self.settings.image_wait;
        loop {
            match check.digest(image).await {
                Ok(Some(d)) if Some(&d) != previous.as_ref() => return Ok(Some(d)),
                Ok(_) => tracing::debug!(image = %image, "image not (newly) pushed yet"),
                Err(e) => {
                    tracing::info!(image = %image, error = %e, "registry check failed; retrying")
                }
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(ReviewError::ImageTimeout {
                    image: image.clone(),
                    seconds: self.settings.image_wait.as_secs(),
                });
            }
            tokio::time::sleep(self.settings.image_poll).await;
        }
    }

    /// Applies the review environment of pull request `n` (server-side apply).
    pub async fn apply(
        &self,
        n: u64,
        head_sha: &str,
        digest: Option<&str>,
    ) -> Result<String, ReviewError> {
        let now = jiff::Timestamp::now()
            .strftime("%Y-%m-%dT%H:%M:%SZ")
            .to_string();
        let objects = self.settings.template.render(&ReviewRequest {
            number: n,
            head_sha,
            image_digest: digest,
            now: &now,
        });
        let namespace = self.settings.template.namespace_for(n);
        let pp = PatchParams::apply("guard").force();
        for obj in objects {
            let api_version = obj["apiVersion"].as_str().unwrap_or_default().to_string();
            let kind = obj["kind"].as_str().unwrap_or_default().to_string();
            let name = obj
                .pointer("/metadata/name")
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_string();
            let ar = api_resource(&api_version, &kind);
            let api: Api<DynamicObject> =
                match obj.pointer("/metadata/namespace").and_then(Value::as_str) {
                    Some(ns) => Api::namespaced_with(self.client.clone(), ns, &ar),
                    None => Api::all_with(self.client.clone(), &ar),
                };
            match api.patch(&name, &pp, &Patch::Apply(&obj)).await {
                Ok(_) => {}
                // An optional kind whose API the cluster does not serve (e.g. no
                // Prometheus operator for ServiceMonitor): skip it, say so.
                Err(kube::Error::Api(s))
                    if s.code == 404 && kind != "Namespace" && kind != "Deployment" =>
                {
                    tracing::warn!(kind = %kind, name = %name, "the cluster does not serve this kind; skipped");
                }
                Err(source) => {
                    return Err(ReviewError::Kube {
                        action: format!("apply {kind} {namespace}/{name}"),
                        source,
                    });
                }
            }
        }
        tracing::info!(namespace = %namespace, head = %head_sha, "review environment applied");
        Ok(namespace)
    }

    /// Deletes the review namespace of `n`, only if guard owns it.
    pub async fn remove(&self, n: u64) -> Result<Removed, ReviewError> {
        let api: Api<Namespace> = Api::all(self.client.clone());
        let name = self.settings.template.namespace_for(n);
        let Some(ns) = api
            .get_opt(&name)
            .await
            .map_err(|source| ReviewError::Kube {
                action: format!("get namespace {name}"),
                source,
            })?
        else {
            return Ok(Removed::AlreadyGone);
        };
        let labels = ns.labels();
        let owned = labels.get(LABEL_MANAGED_BY).map(String::as_str) == Some("guard")
            && labels.get(LABEL_REVIEW_PR) == Some(&n.to_string());
        if !owned {
            return Err(ReviewError::NotOwned {
                namespace: name,
                number: n,
            });
        }
        match api.delete(&name, &DeleteParams::default()).await {
            Ok(_) => {
                tracing::info!(namespace = %name, "review environment deleted");
                Ok(Removed::Deleted)
            }
            Err(kube::Error::Api(s)) if s.code == 404 => Ok(Removed::AlreadyGone),
            Err(source) => Err(ReviewError::Kube {
                action: format!("delete namespace {name}"),
                source,
            }),
        }
    }

    /// Deletes guard-owned review namespaces quiet for longer than the TTL; returns their names.
    pub async fn sweep(&self) -> Result<Vec<String>, ReviewError> {
        let api: Api<Namespace> = Api::all(self.client.clone());
        let list = api
            .list(
                &ListParams::default()
                    .labels(&format!("{LABEL_MANAGED_BY}=guard,{LABEL_REVIEW_PR}")),
            )
            .await
            .map_err(|source| ReviewError::Kube {
                action: "list review namespaces".into(),
                source,
            })?;
        let now = jiff::Timestamp::now();
        let mut deleted = Vec::new();
        for ns in list.items {
            let last = ns
                .annotations()
                .get(ANNOTATION_LAST_ACTIVITY)
                .and_then(|t| t.parse::<jiff::Timestamp>().ok())
                .or_else(|| ns.metadata.creation_timestamp.as_ref().map(|t| t.0));
            let Some(last) = last else { continue };
            let quiet: Duration = now
                .duration_since(last)
                .try_into()
                .unwrap_or(Duration::ZERO);
            if quiet < self.settings.ttl {
                continue;
            }
            let Some(n) = self.settings.template.number_of(&ns.name_any()) else {
                continue;
            };
            match self.remove(n).await {
                Ok(Removed::Deleted) => {
                    tracing::info!(namespace = %ns.name_any(), quiet_s = quiet.as_secs(), "review environment expired");
                    self.emit(
                        notify::EventKind::RolledBack,
                        n,
                        None,
                        format!("no activity for {}", humantime::format_duration(quiet)),
                    );
                    deleted.push(ns.name_any());
                }
                Ok(Removed::AlreadyGone) => {}
                Err(e) => tracing::warn!(error = %e, "sweep could not delete a review environment"),
            }
        }
        Ok(deleted)
    }

    /// Sweeps every `interval` while leading, until `shutdown`.
    pub async fn run_sweeper(
        self: Arc<Self>,
        interval: Duration,
        leading: watch::Receiver<bool>,
        shutdown: CancellationToken,
    ) {
        loop {
            if *leading.borrow()
                && let Err(e) = self.sweep().await
            {
                tracing::warn!(error = %e, "review sweep failed");
            }
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tokio::time::sleep(interval) => {}
            }
        }
    }

    async fn apply_when_ready(
        self: Arc<Self>,
        n: u64,
        sha: String,
        after_push: bool,
    ) -> Result<String, ReviewError> {
        let digest = self.wait_for_image(n, after_push).await?;
        let ns = self.apply(n, &sha, digest.as_deref()).await?;
        self.emit(
            notify::EventKind::Promoted,
            n,
            Some(&sha),
            format!("review environment {ns} ready"),
        );
        Ok(ns)
    }

    fn replace_pending(&self, n: u64, task: Option<tokio::task::JoinHandle<()>>) {
        let mut pending = self.pending.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(old) = pending.remove(&n) {
            old.abort();
        }
        if let Some(t) = task {
            pending.insert(n, t);
        }
    }
}

async fn webhook(State(reviews): State<Arc<Reviews>>, headers: HeaderMap, body: Bytes) -> Response {
    let sig = headers
        .get("x-hub-signature-256")
        .and_then(|v| v.to_str().ok());
    if let Err(e) = signature::verify(&reviews.settings.secret, &body, sig) {
        tracing::warn!(error = %e, "refused an unsigned or wrongly signed webhook");
        return reply(StatusCode::UNAUTHORIZED, json!({"error": e.to_string()}));
    }
    let event = headers
        .get("x-github-event")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    match event {
        "ping" => return reply(StatusCode::OK, json!({"ok": true})),
        "pull_request" => {}
        other => {
            return reply(
                StatusCode::ACCEPTED,
                json!({"ignored": format!("event {other:?}")}),
            );
        }
    }
    let ev: PullRequestEvent = match serde_json::from_slice(&body) {
        Ok(ev) => ev,
        Err(e) => {
            return reply(
                StatusCode::BAD_REQUEST,
                json!({"error": format!("pull_request payload: {e}")}),
            );
        }
    };
    if let Some(want) = &reviews.settings.repository {
        let got = ev.repository.as_ref().map(|r| r.full_name.as_str());
        if got != Some(want.as_str()) {
            return reply(
                StatusCode::ACCEPTED,
                json!({"ignored": format!("repository {got:?} is not {want:?}")}),
            );
        }
    }
    let n = ev.number;
    let namespace = reviews.settings.template.namespace_for(n);
    match ev.action.as_str() {
        "opened" | "reopened" | "synchronize" => {
            let after_push = ev.action == "synchronize";
            let sha = ev.pull_request.head.sha.clone();
            if reviews.images.is_none() {
                reviews.replace_pending(n, None);
                return match reviews.clone().apply_when_ready(n, sha, after_push).await {
                    Ok(ns) => reply(StatusCode::OK, json!({"applied": ns, "pull_request": n})),
                    Err(e) => {
                        tracing::warn!(error = %e, pull_request = n, "review environment not applied");
                        reply(StatusCode::BAD_GATEWAY, json!({"error": e.to_string()}))
                    }
                };
            }
            let r = reviews.clone();
            let task = tokio::spawn(async move {
                if let Err(e) = r.clone().apply_when_ready(n, sha, after_push).await {
                    tracing::warn!(error = %e, pull_request = n, "review environment not applied");
                }
            });
            reviews.replace_pending(n, Some(task));
            reply(
                StatusCode::ACCEPTED,
                json!({"pending": namespace, "pull_request": n, "waiting_for": reviews.settings.template.images_for(n)}),
            )
        }
        "closed" => {
            reviews.replace_pending(n, None);
            match reviews.remove(n).await {
                Ok(removed) => {
                    if removed == Removed::Deleted {
                        let why = if ev.pull_request.merged == Some(true) {
                            "merged"
                        } else {
                            "closed"
                        };
                        reviews.emit(
                            notify::EventKind::RolledBack,
                            n,
                            Some(&ev.pull_request.head.sha),
                            format!("pull request {why}"),
                        );
                    }
                    reply(
                        StatusCode::OK,
                        json!({"deleted": namespace, "result": format!("{removed:?}")}),
                    )
                }
                Err(e @ ReviewError::NotOwned { .. }) => {
                    reply(StatusCode::CONFLICT, json!({"error": e.to_string()}))
                }
                Err(e) => reply(StatusCode::BAD_GATEWAY, json!({"error": e.to_string()})),
            }
        }
        other => reply(
            StatusCode::ACCEPTED,
            json!({"ignored": format!("action {other:?}")}),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plurals_of_the_overlay_kinds() {
        for (kind, plural) in [
            ("Namespace", "namespaces"),
            ("ServiceAccount", "serviceaccounts"),
            ("NetworkPolicy", "networkpolicies"),
            ("PodDisruptionBudget", "poddisruptionbudgets"),
            ("ServiceMonitor", "servicemonitors"),
            ("Deployment", "deployments"),
        ] {
            assert_eq!(api_resource("v1", kind).plural, plural);
        }
        let ar = api_resource("policy/v1", "PodDisruptionBudget");
        assert_eq!((ar.group.as_str(), ar.version.as_str()), ("policy", "v1"));
    }
}
