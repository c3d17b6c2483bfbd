//! The dispatcher: takes events from the engine without ever blocking it, and
//! delivers them to every configured target in the background.
//!
//! # Flow
//!
//! 1. [`Dispatcher::send`] puts the event on each target's bounded queue with
//!    `try_send` and returns at once. A full queue drops the *new* event for
//!    that target, counts it (`outcome="dropped"`) and records it: the engine
//!    is never slowed by a slow or dead receiver.
//! 2. One worker task per target takes events in order (GitHub statuses and
//!    Grafana regions depend on the order) and sends each request with
//!    retries (see `transport`).
//! 3. Every request's result goes to the [`DeliveryLog`] (guard's history) and
//!    to `guard_notifications_total{target,outcome}` with outcome `delivered`,
//!    `failed`, `retried` (one per retry) or `dropped`.
//! 4. [`Dispatcher::flush`] waits, up to a deadline, until every queued event
//!    has been handled (delivered or given up), so a short-lived `guard demo`
//!    can exit without losing messages.
//!
//! # Guarantees
//!
//! - `send` never blocks, never fails and never panics; nothing it does can
//!   change a verdict.
//! - Secrets appear nowhere but in the outgoing requests: not in logs, records,
//!   errors or `Debug` output.
//! - Delivery is at least once per request that was answered with an error or
//!   not answered at all; a request that timed out after the receiver acted may
//!   arrive twice (the webhook body's signed `id`, also in `X-Guard-Delivery`,
//!   lets receivers dedupe).
//!   Within one process: guard's store keeps each rollout event until every
//!   notifier has answered it and `guard serve` sends the rest again when it
//!   starts, with the same webhook delivery id ([`webhook::delivery_id`]).

use crate::config::{
    GitHubTarget, GrafanaTarget, NotifyConfig, RetryPolicy, Strings, Targets, WebhookTarget,
};
use crate::secret::{Redactor, Secret};
use crate::transport::{self, Reply};
use crate::{Event, EventKind, github, grafana, slack, teams, webhook};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::registry::Registry;
use serde::Serialize;
use std::collections::{HashMap, VecDeque};
use std::hash::Hash;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::mpsc;

/// What became of one request to one target.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    /// The receiver accepted it (2xx).
    Delivered,
    /// Refused (4xx other than 408/429) or still failing after every retry.
    Failed,
    /// Never sent: the target's queue was full, or the request could not be
    /// built from the event (e.g. no commit to deploy).
    Dropped,
}

impl Outcome {
    /// The metric label value.
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Delivered => "delivered",
            Outcome::Failed => "failed",
            Outcome::Dropped => "dropped",
        }
    }
}

/// One delivery attempt's result, for guard's history. Holds no secrets.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct DeliveryRecord {
    /// `slack`, `teams`, `webhook`, `grafana`, `github`.
    pub target: &'static str,
    /// What was sent: `message`, `create annotation`, `close annotation`,
    /// `create deployment`, `status success`, ...
    pub action: String,
    pub event: EventKind,
    pub service: String,
    pub environment: String,
    pub rollout_id: Option<i64>,
    pub outcome: Outcome,
    /// Requests made, retries included (0 when dropped).
    pub attempts: u32,
    /// HTTP status of the last answer, when one came.
    pub http_status: Option<u16>,
    /// The receiver's answer or the error, shortened and redacted.
    pub detail: String,
    /// Unix milliseconds when the outcome was known.
    pub at_ms: i64,
}

/// Where delivery results go: guard's store implements this to write them to
/// history. Called on the delivery tasks; keep it quick (a SQLite insert is fine).
pub trait DeliveryLog: Send + Sync {
    /// Records one result.
    fn record(&self, record: DeliveryRecord);

    /// Keeps what `target` created for rollout `rollout_id` (Grafana's open
    /// region, GitHub's deployment), or forgets it with `None`, so that a
    /// guard restarted mid-rollout closes the region it opened and posts the
    /// verdict to the deployment it created. The default keeps nothing.
    fn remember(&self, _target: &'static str, _rollout_id: i64, _created: Option<i64>) {}

    /// What [`DeliveryLog::remember`] kept for `target` and `rollout_id`.
    fn recall(&self, _target: &'static str, _rollout_id: i64) -> Option<i64> {
        None
    }
}

/// A log that keeps nothing (results still reach tracing and the metric).
#[derive(Clone, Copy, Debug, Default)]
pub struct NoLog;

impl DeliveryLog for NoLog {
    fn record(&self, _record: DeliveryRecord) {}
}

/// A log in memory: for tests and for `guard demo`'s summary.
#[derive(Debug, Default)]
pub struct MemoryLog {
    records: Mutex<Vec<DeliveryRecord>>,
    created: Mutex<HashMap<(&'static str, i64), i64>>,
}

impl MemoryLog {
    /// Everything recorded so far.
    pub fn records(&self) -> Vec<DeliveryRecord> {
        self.records.lock().map(|r| r.clone()).unwrap_or_default()
    }
}

impl DeliveryLog for MemoryLog {
    fn record(&self, record: DeliveryRecord) {
        if let Ok(mut r) = self.records.lock() {
            r.push(record);
        }
    }

    fn remember(&self, target: &'static str, rollout_id: i64, created: Option<i64>) {
        if let Ok(mut m) = self.created.lock() {
            match created {
                Some(id) => m.insert((target, rollout_id), id),
                None => m.remove(&(target, rollout_id)),
            };
        }
    }

    fn recall(&self, target: &'static str, rollout_id: i64) -> Option<i64> {
        self.created
            .lock()
            .ok()?
            .get(&(target, rollout_id))
            .copied()
    }
}

/// Why a dispatcher could not be built.
#[derive(Debug, thiserror::Error)]
pub enum NotifyError {
    /// The notify settings are invalid; every problem is listed.
    #[error(transparent)]
    Config(#[from] crate::config::ConfigError),
    /// `Dispatcher::new` was called outside a tokio runtime, so the delivery
    /// tasks cannot be started.
    #[error("notify: the dispatcher must be created inside a tokio runtime")]
    NoRuntime,
    /// The HTTP client could not be built (TLS setup).
    #[error("notify: cannot build the HTTP client: {0}")]
    Client(String),
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct NotifyLabels {
    target: String,
    outcome: String,
}

#[derive(Clone)]
struct Metrics {
    family: Family<NotifyLabels, Counter>,
}

impl Metrics {
    fn inc(&self, target: &str, outcome: &str) {
        self.family
            .get_or_create(&NotifyLabels {
                target: target.to_owned(),
                outcome: outcome.to_owned(),
            })
            .inc();
    }
}

/// A queued event for one target.
#[derive(Clone)]
struct Job {
    event: Arc<Event>,
    /// Alertmanager's fingerprint, for incidents.
    fingerprint: Option<String>,
}

struct Queue {
    target: &'static str,
    tx: mpsc::Sender<Job>,
}

struct Inner {
    queues: Vec<Queue>,
    pending: Arc<AtomicUsize>,
    metrics: Metrics,
    log: Arc<dyn DeliveryLog>,
}

/// Sends events to every configured target off the caller's path. Cheap to
/// clone; the delivery tasks stop once every clone is dropped and their queues
/// are drained.
#[derive(Clone)]
pub struct Dispatcher {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Dispatcher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Dispatcher")
            .field("targets", &self.targets())
            .field("pending", &self.pending())
            .finish()
    }
}

impl Dispatcher {
    /// Reads `notify:` from guard.yaml plus `GUARD_*` from `env`, validates,
    /// and starts the delivery tasks.
    pub fn from_config(
        config: &NotifyConfig,
        env: &dyn Strings,
        registry: &mut Registry,
        log: Arc<dyn DeliveryLog>,
    ) -> Result<Self, NotifyError> {
        let targets = config.clone().with_env(env).validate()?;
        Self::new(targets, registry, log)
    }

    /// Starts one delivery task per enabled target and registers
    /// `guard_notifications_total` in `registry` (pass the root registry, with
    /// no prefix, so the name stays as documented). Must run inside a tokio runtime.
    pub fn new(
        targets: Targets,
        registry: &mut Registry,
        log: Arc<dyn DeliveryLog>,
    ) -> Result<Self, NotifyError> {
        let handle = tokio::runtime::Handle::try_current().map_err(|_| NotifyError::NoRuntime)?;
        let family = Family::<NotifyLabels, Counter>::default();
        registry.register(
            "guard_notifications",
            "Notification requests by target and outcome (delivered, failed, retried, dropped)",
            family.clone(),
        );
        let metrics = Metrics { family };
        let redactor = Redactor::new(targets.secrets());
        let pending = Arc::new(AtomicUsize::new(0));
        let mut queues = Vec::new();
        if !targets.enabled().is_empty() {
            // reqwest is built with `rustls-no-provider`: make sure a provider
            // is installed (a no-op when the binary already did it).
            let _ = rustls::crypto::ring::default_provider().install_default();
            let client = reqwest::Client::builder()
                .user_agent(concat!(
                    "guard/",
                    env!("CARGO_PKG_VERSION"),
                    " (ultra-boost deployment guardian)"
                ))
                .connect_timeout(targets.retry.timeout.min(Duration::from_secs(10)))
                .build()
                .map_err(|e| NotifyError::Client(redactor.clean(&e.without_url().to_string())))?;
            let mut workers = Vec::new();
            if let Some(url) = &targets.slack {
                workers.push(Worker::Slack { url: url.clone() });
            }
            if let Some(url) = &targets.teams {
                workers.push(Worker::Teams { url: url.clone() });
            }
            if let Some(t) = &targets.webhook {
                workers.push(Worker::Webhook { target: t.clone() });
            }
            if let Some(t) = &targets.grafana {
                workers.push(Worker::Grafana {
                    target: t.clone(),
                    rollouts: Recent::default(),
                    incidents: Recent::default(),
                });
            }
            if let Some(t) = &targets.github {
                workers.push(Worker::GitHub {
                    target: t.clone(),
                    deployments: Recent::default(),
                });
            }
            for worker in workers {
                let name = worker.name();
                for outcome in ["delivered", "failed", "retried", "dropped"] {
                    // Present from the start, so rate() and absent() work at once.
                    let _ = metrics.family.get_or_create(&NotifyLabels {
                        target: name.into(),
                        outcome: outcome.into(),
                    });
                }
                let (tx, rx) = mpsc::channel(targets.queue_capacity.max(1));
                let ctx = Ctx {
                    target: name,
                    client: client.clone(),
                    policy: targets.retry,
                    redactor: redactor.clone(),
                    metrics: metrics.clone(),
                    log: log.clone(),
                };
                handle.spawn(run(worker, rx, ctx, pending.clone()));
                queues.push(Queue { target: name, tx });
            }
        }
        tracing::info!(targets = ?queues.iter().map(|q| q.target).collect::<Vec<_>>(), "notifications configured");
        Ok(Dispatcher {
            inner: Arc::new(Inner {
                queues,
                pending,
                metrics,
                log,
            }),
        })
    }

    /// Names of the targets events go to.
    pub fn targets(&self) -> Vec<&'static str> {
        self.inner.queues.iter().map(|q| q.target).collect()
    }

    /// Queues a rollout event for every target. Returns at once, whatever happens.
    pub fn send(&self, event: Event) {
        self.enqueue(
            Job {
                event: Arc::new(event),
                fingerprint: None,
            },
            |_| true,
        );
    }

    /// Queues a rollout event for the named targets only (those that never
    /// answered it before guard restarted); names not configured are skipped.
    pub fn send_to(&self, event: Event, targets: &[String]) {
        self.enqueue(
            Job {
                event: Arc::new(event),
                fingerprint: None,
            },
            |name| targets.iter().any(|t| t == name),
        );
    }

    /// Queues an incident event (`IncidentOpened`/`IncidentResolved`) with its
    /// Alertmanager fingerprint, which pairs the firing alert's Grafana region
    /// with the resolved one that closes it.
    pub fn send_incident(&self, event: Event, fingerprint: &str) {
        self.enqueue(
            Job {
                event: Arc::new(event),
                fingerprint: Some(fingerprint.to_owned()),
            },
            |_| true,
        );
    }

    fn enqueue(&self, job: Job, to: impl Fn(&str) -> bool) {
        for q in self.inner.queues.iter().filter(|q| to(q.target)) {
            self.inner.pending.fetch_add(1, Ordering::SeqCst);
            if let Err(err) = q.tx.try_send(job.clone()) {
                self.inner.pending.fetch_sub(1, Ordering::SeqCst);
                let why = match err {
                    mpsc::error::TrySendError::Full(_) => "queue full",
                    mpsc::error::TrySendError::Closed(_) => "delivery task stopped",
                };
                self.inner.metrics.inc(q.target, "dropped");
                tracing::warn!(target_name = q.target, event = job.event.kind.as_str(), service = %job.event.service, why, "notification dropped");
                self.inner.log.record(record(
                    q.target,
                    "enqueue",
                    &job.event,
                    Outcome::Dropped,
                    0,
                    None,
                    why.to_owned(),
                ));
            }
        }
    }

    /// Events queued or being delivered, summed over targets.
    pub fn pending(&self) -> usize {
        self.inner.pending.load(Ordering::SeqCst)
    }

    /// Waits until every queued event has been delivered or given up, or until
    /// `within` has passed. Returns how many were still pending (0: all done).
    pub async fn flush(&self, within: Duration) -> usize {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            let left = self.pending();
            if left == 0 || tokio::time::Instant::now() >= deadline {
                return left;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
}

async fn run(mut worker: Worker, mut rx: mpsc::Receiver<Job>, ctx: Ctx, pending: Arc<AtomicUsize>) {
    while let Some(job) = rx.recv().await {
        worker.handle(&job, &ctx).await;
        pending.fetch_sub(1, Ordering::SeqCst);
    }
}

fn now_ms() -> i64 {
    jiff::Timestamp::now().as_millisecond()
}

fn record(
    target: &'static str,
    action: &str,
    ev: &Event,
    outcome: Outcome,
    attempts: u32,
    http_status: Option<u16>,
    detail: String,
) -> DeliveryRecord {
    DeliveryRecord {
        target,
        action: action.to_owned(),
        event: ev.kind,
        service: ev.service.clone(),
        environment: ev.environment.clone(),
        rollout_id: ev.rollout_id,
        outcome,
        attempts,
        http_status,
        detail,
        at_ms: now_ms(),
    }
}

/// What history keeps of a successful answer: the id of what was created
/// (annotation, deployment, status), or a short plain answer (Slack's `ok`).
fn delivered_detail(body: &str) -> String {
    if let Ok(v) = serde_json::from_str::<serde_json::Value>(body) {
        return match v.get("id") {
            Some(id) => format!("id {id}"),
            None => String::new(),
        };
    }
    let body = body.trim();
    if body.chars().count() <= 100 {
        body.to_owned()
    } else {
        String::new()
    }
}

/// What a delivery task needs besides its target's own state.
struct Ctx {
    target: &'static str,
    client: reqwest::Client,
    policy: RetryPolicy,
    redactor: Redactor,
    metrics: Metrics,
    log: Arc<dyn DeliveryLog>,
}

impl Ctx {
    /// Sends one request with retries, records and counts the result. On
    /// failure, the last HTTP status, if an answer came.
    async fn deliver(
        &self,
        ev: &Event,
        action: &str,
        make: impl FnMut() -> reqwest::RequestBuilder,
    ) -> Result<Reply, Option<u16>> {
        self.deliver_once(ev, action, make, || std::future::ready(None))
            .await
    }

    /// As [`Ctx::deliver`], for a request that must not take effect twice:
    /// `landed` finds what an attempt that seemed to fail did (see
    /// [`transport::send`]).
    async fn deliver_once<L: Future<Output = Option<Reply>>>(
        &self,
        ev: &Event,
        action: &str,
        make: impl FnMut() -> reqwest::RequestBuilder,
        landed: impl FnMut() -> L,
    ) -> Result<Reply, Option<u16>> {
        let metrics = self.metrics.clone();
        let target = self.target;
        let result = transport::send(
            &self.policy,
            &self.redactor,
            make,
            || metrics.inc(target, "retried"),
            landed,
        )
        .await;
        match result {
            Ok(reply) => {
                self.metrics.inc(self.target, "delivered");
                tracing::info!(target_name = self.target, action, event = ev.kind.as_str(), service = %ev.service, environment = %ev.environment, attempts = reply.attempts, status = reply.status, "notification delivered");
                let detail = self.redactor.clean(&delivered_detail(&reply.body));
                self.log.record(record(
                    self.target,
                    action,
                    ev,
                    Outcome::Delivered,
                    reply.attempts,
                    Some(reply.status),
                    detail,
                ));
                Ok(reply)
            }
            Err(f) => {
                self.metrics.inc(self.target, "failed");
                tracing::warn!(target_name = self.target, action, event = ev.kind.as_str(), service = %ev.service, environment = %ev.environment, attempts = f.attempts, detail = %f.detail, "notification failed");
                self.log.record(record(
                    self.target,
                    action,
                    ev,
                    Outcome::Failed,
                    f.attempts,
                    f.status,
                    f.detail,
                ));
                Err(f.status)
            }
        }
    }

    /// What this target created for the event's rollout: from memory, else
    /// from the log (a guard restarted since).
    fn created(&self, cache: &Recent<String, i64>, ev: &Event) -> Option<i64> {
        cache
            .get(&rollout_key(ev))
            .or_else(|| ev.rollout_id.and_then(|r| self.log.recall(self.target, r)))
    }

    /// Keeps (or with `None` forgets) what this target created for the
    /// event's rollout, in memory and in the log.
    fn keep_created(&self, cache: &mut Recent<String, i64>, ev: &Event, created: Option<i64>) {
        let key = rollout_key(ev);
        match created {
            Some(id) => cache.insert(key, id),
            None => {
                cache.remove(&key);
            }
        }
        if let Some(r) = ev.rollout_id {
            self.log.remember(self.target, r, created);
        }
    }

    /// Records a request that could not even be built.
    fn skip(&self, ev: &Event, action: &str, why: &str) {
        self.metrics.inc(self.target, "dropped");
        tracing::warn!(
            target_name = self.target,
            action,
            event = ev.kind.as_str(),
            why,
            "notification not sent"
        );
        self.log.record(record(
            self.target,
            action,
            ev,
            Outcome::Dropped,
            0,
            None,
            why.to_owned(),
        ));
    }
}

/// A small map that forgets its oldest entries, for per-rollout and
/// per-incident state that must not grow without bound.
struct Recent<K, V> {
    map: HashMap<K, V>,
    order: VecDeque<K>,
}

impl<K, V> Default for Recent<K, V> {
    fn default() -> Self {
        Recent {
            map: HashMap::new(),
            order: VecDeque::new(),
        }
    }
}

impl<K: Hash + Eq + Clone, V: Copy> Recent<K, V> {
    const CAP: usize = 1024;

    fn get(&self, k: &K) -> Option<V> {
        self.map.get(k).copied()
    }

    fn insert(&mut self, k: K, v: V) {
        if self.map.insert(k.clone(), v).is_none() {
            self.order.push_back(k);
        }
        while self.order.len() > Self::CAP {
            if let Some(old) = self.order.pop_front() {
                self.map.remove(&old);
            }
        }
    }

    fn remove(&mut self, k: &K) -> Option<V> {
        let v = self.map.remove(k);
        if v.is_some() {
            self.order.retain(|o| o != k);
        }
        v
    }
}

/// The key that ties a rollout's events together.
fn rollout_key(ev: &Event) -> String {
    match ev.rollout_id {
        Some(id) => format!("rollout:{id}"),
        None => format!(
            "{}/{}/{}",
            ev.service,
            ev.environment,
            ev.build.as_deref().unwrap_or("?")
        ),
    }
}

enum Worker {
    Slack {
        url: Secret,
    },
    Teams {
        url: Secret,
    },
    Webhook {
        target: WebhookTarget,
    },
    Grafana {
        target: GrafanaTarget,
        rollouts: Recent<String, i64>,
        incidents: Recent<String, i64>,
    },
    GitHub {
        target: GitHubTarget,
        deployments: Recent<String, i64>,
    },
}

impl Worker {
    fn name(&self) -> &'static str {
        match self {
            Worker::Slack { .. } => "slack",
            Worker::Teams { .. } => "teams",
            Worker::Webhook { .. } => "webhook",
            Worker::Grafana { .. } => "grafana",
            Worker::GitHub { .. } => "github",
        }
    }

    async fn handle(&mut self, job: &Job, ctx: &Ctx) {
        let ev = &*job.event;
        match self {
            Worker::Slack { url } => {
                let body = slack::payload(ev);
                // The outcome is recorded inside; nothing else depends on it.
                let _ = ctx
                    .deliver(ev, "message", || ctx.client.post(url.expose()).json(&body))
                    .await;
            }
            Worker::Teams { url } => {
                let body = teams::payload(ev);
                // The outcome is recorded inside; nothing else depends on it.
                let _ = ctx
                    .deliver(ev, "message", || ctx.client.post(url.expose()).json(&body))
                    .await;
            }
            Worker::Webhook { target } => {
                let id = webhook::delivery_id(ev, job.fingerprint.as_deref());
                let json = webhook::payload(
                    ev,
                    &id,
                    &jiff::Timestamp::now().to_string(),
                    job.fingerprint.as_deref(),
                );
                let body = match serde_json::to_vec(&json) {
                    Ok(b) => b,
                    Err(e) => {
                        return ctx.skip(ev, "event", &format!("cannot encode the event: {e}"));
                    }
                };
                let _ = ctx
                    .deliver(ev, "event", || {
                        // Signed per attempt: the timestamp is the attempt's, so a
                        // late retry still passes the receiver's max-age check.
                        let ts = jiff::Timestamp::now().as_second();
                        ctx.client
                            .post(target.url.expose())
                            .header(reqwest::header::CONTENT_TYPE, "application/json")
                            .header(webhook::TIMESTAMP_HEADER, ts.to_string())
                            .header(
                                webhook::SIGNATURE_HEADER,
                                webhook::sign(target.secret.expose().as_bytes(), ts, &body),
                            )
                            .header(webhook::EVENT_HEADER, ev.kind.as_str())
                            .header(webhook::DELIVERY_HEADER, &id)
                            .body(body.clone())
                    })
                    .await;
            }
            Worker::Grafana {
                target,
                rollouts,
                incidents,
            } => grafana_handle(target, rollouts, incidents, job, ctx).await,
            Worker::GitHub {
                target,
                deployments,
            } => github_handle(target, deployments, ev, ctx).await,
        }
    }
}

async fn grafana_handle(
    target: &GrafanaTarget,
    rollouts: &mut Recent<String, i64>,
    incidents: &mut Recent<String, i64>,
    job: &Job,
    ctx: &Ctx,
) {
    let ev = &*job.event;
    let post_url = format!("{}/api/annotations", target.url);
    let create = |ev: &Event| {
        let body = grafana::create(ev, target.dashboard_uid.as_deref());
        let url = post_url.clone();
        move || {
            ctx.client
                .post(&url)
                .bearer_auth(target.token.expose())
                .json(&body)
        }
    };
    let close = |id: i64, ev: &Event| {
        let body = grafana::close(ev);
        let url = format!("{}/api/annotations/{id}", target.url);
        move || {
            ctx.client
                .patch(&url)
                .bearer_auth(target.token.expose())
                .json(&body)
        }
    };
    let annotation_id = |reply: Result<Reply, Option<u16>>| -> Option<i64> {
        let reply = reply.ok()?;
        serde_json::from_str::<serde_json::Value>(&reply.body)
            .ok()?
            .get("id")?
            .as_i64()
    };
    match ev.kind {
        EventKind::Started => {
            // Open annotation at the start of the verification; the verdict closes it.
            let mut open = ev.clone();
            open.ended_at_ms = None;
            if let Some(id) =
                annotation_id(ctx.deliver(ev, "create annotation", create(&open)).await)
            {
                ctx.keep_created(rollouts, ev, Some(id));
            }
        }
        EventKind::IncidentOpened => {
            let Some(fp) = &job.fingerprint else {
                return ctx.skip(
                    ev,
                    "create annotation",
                    "incident without an Alertmanager fingerprint",
                );
            };
            if incidents.get(fp).is_some() {
                return; // Alertmanager repeats firing alerts; the region is already open.
            }
            let mut open = ev.clone();
            open.ended_at_ms = None;
            if let Some(id) =
                annotation_id(ctx.deliver(ev, "create annotation", create(&open)).await)
            {
                incidents.insert(fp.clone(), id);
            }
        }
        EventKind::IncidentResolved => {
            let known = job.fingerprint.as_ref().and_then(|fp| incidents.remove(fp));
            let _ = close_or_create(known, ev, ctx, &close, &create).await;
        }
        EventKind::Promoted | EventKind::Reverted | EventKind::Held | EventKind::RolledBack => {
            let known = ctx.created(rollouts, ev);
            // Forgotten only once closed (or posted whole): a guard killed
            // meanwhile, or a close Grafana refused, leaves the id for the
            // rollout's next event to close.
            if close_or_create(known, ev, ctx, &close, &create).await {
                ctx.keep_created(rollouts, ev, None);
            }
        }
    }
}

/// Closes the annotation guard opened, or posts the whole region when there is
/// none, or when Grafana no longer has it (404: deleted by a person, or a
/// fresh Grafana database). `true` once the region is closed or posted.
async fn close_or_create<C, P, M, N>(
    known: Option<i64>,
    ev: &Event,
    ctx: &Ctx,
    close: &C,
    create: &P,
) -> bool
where
    C: Fn(i64, &Event) -> M,
    P: Fn(&Event) -> N,
    M: FnMut() -> reqwest::RequestBuilder,
    N: FnMut() -> reqwest::RequestBuilder,
{
    if let Some(id) = known {
        match ctx.deliver(ev, "close annotation", close(id, ev)).await {
            Err(Some(404)) => {}
            closed => return closed.is_ok(),
        }
    }
    ctx.deliver(ev, "create annotation", create(ev))
        .await
        .is_ok()
}

async fn github_handle(
    target: &GitHubTarget,
    deployments: &mut Recent<String, i64>,
    ev: &Event,
    ctx: &Ctx,
) {
    let states = github::states_for(ev.kind);
    if states.is_empty() {
        return;
    }
    let base = format!("{}/repos/{}/{}", target.api_url, target.owner, target.repo);
    let request = |method: reqwest::Method, url: String, body: serde_json::Value| {
        move || {
            ctx.client
                .request(method.clone(), &url)
                .bearer_auth(target.token.expose())
                .header(reqwest::header::ACCEPT, github::ACCEPT)
                .header("X-GitHub-Api-Version", github::API_VERSION)
                .json(&body)
        }
    };
    let id = match ctx.created(deployments, ev) {
        Some(id) => id,
        None => {
            if github::git_ref(ev).is_none() {
                return ctx.skip(
                    ev,
                    "create deployment",
                    "the event names neither a commit nor a build to deploy",
                );
            }
            let reply = ctx
                .deliver_once(
                    ev,
                    "create deployment",
                    request(
                        reqwest::Method::POST,
                        format!("{base}/deployments"),
                        github::create_deployment(ev),
                    ),
                    || find_deployment(target, &base, ev, ctx),
                )
                .await;
            let Ok(reply) = reply else { return };
            // 201 carries the deployment; 202 means GitHub merged instead of
            // deploying (cannot happen with auto_merge: false) and has no id.
            let id = serde_json::from_str::<serde_json::Value>(&reply.body)
                .ok()
                .and_then(|v| v.get("id")?.as_i64());
            match id {
                Some(id) => {
                    ctx.keep_created(deployments, ev, Some(id));
                    id
                }
                None => {
                    return ctx.skip(
                        ev,
                        "deployment status",
                        &format!("GitHub answered {} without a deployment id", reply.status),
                    );
                }
            }
        }
    };
    for state in states {
        let action = format!("status {}", state.as_str());
        let url = format!("{base}/deployments/{id}/statuses");
        if ctx
            .deliver(
                ev,
                &action,
                request(reqwest::Method::POST, url, github::status(ev, *state)),
            )
            .await
            .is_err()
        {
            break; // Later statuses would tell a story the first one did not.
        }
    }
}

/// The deployment an earlier attempt created for the event's rollout, if
/// GitHub has it: listed by ref, environment and task, matched by the
/// rollout, service and build in its payload. `None` also when GitHub cannot
/// say (then the create is tried again).
async fn find_deployment(
    target: &GitHubTarget,
    base: &str,
    ev: &Event,
    ctx: &Ctx,
) -> Option<Reply> {
    let rollout = ev.rollout_id?;
    let git_ref = github::git_ref(ev)?;
    let resp = ctx
        .client
        .get(format!("{base}/deployments"))
        .query(&[
            ("ref", git_ref),
            ("environment", ev.environment.as_str()),
            ("task", "deploy"),
            ("per_page", "100"),
        ])
        .bearer_auth(target.token.expose())
        .header(reqwest::header::ACCEPT, github::ACCEPT)
        .header("X-GitHub-Api-Version", github::API_VERSION)
        .timeout(ctx.policy.timeout)
        .send()
        .await
        .ok()?;
    if !resp.status().is_success() {
        return None;
    }
    let listed: Vec<serde_json::Value> = resp.json().await.ok()?;
    let ours = listed
        .into_iter()
        .find(|d| github::created_for(d, ev, rollout))?;
    Some(Reply {
        status: 200,
        body: ours.to_string(),
        attempts: 0,
    })
}
