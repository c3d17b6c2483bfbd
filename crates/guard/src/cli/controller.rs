//! `guard controller`: guard as a Kubernetes controller.
//!
//! Connects with the in-cluster service account or `KUBECONFIG`, runs leader
//! election on a Lease (only the holder acts), guards every Deployment
//! labelled `guard.ultra-boost.dev/enabled: "true"` (verifies each new rollout
//! with the judge against the SLOs of `guard.yaml`, reverts a bad one as
//! `kubectl rollout undo` does), and serves GitHub `pull_request` webhooks for
//! review environments when `--review-template` is given. Notifications go to
//! the notifiers configured in `guard.yaml` / `GUARD_*` variables.
//!
//! It also serves guard's deploy API (the [`crate::api`] router of
//! `guard serve`: `POST /api/v1/deployments`, rollouts, commands, rollbacks,
//! Alertmanager's `POST /api/v1/alerts`, `/metrics`) over the rollout engine
//! on the [`KubernetesPlatform`], with the same auth (bearer token from
//! `GUARD_API_TOKEN` or `api.token_file`; no token only on loopback). A build
//! is the image `build.image` of guard.yaml with `{build}` replaced.
//!
//! Leadership: only the Lease holder runs engine rollouts; its SQLite store
//! holds their history. Followers answer `/api/v1/*` (but the Alertmanager
//! receiver) with 503 + `Retry-After` and the CLI retries. A leader that
//! loses the Lease while running exits (code 1), as client-go's controllers
//! do, so no rollout is ever driven by two replicas; Kubernetes restarts it
//! as a follower. The engine's history is per replica (its SQLite store),
//! but the rollout state is on the Deployment: an engine rollout in flight
//! when its leader dies is taken over by the controller of the next leader,
//! which resumes its verification and promotes or reverts it, writing the
//! `guard.ultra-boost.dev/taken-over-by`/`-from`/`-at` annotations (see
//! [`crate::platform::kubernetes::controller`]). A replica that becomes
//! leader again does not resume, from its own store, a rollout that another
//! replica took over meanwhile: that record is closed as aborted.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use axum::routing::get;
use prometheus_client::registry::Registry;
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;

use crate::api::{self, ApiState};
use crate::cli::serve::{
    ByService, ConfigBuilds, DispatcherSink, StoreLog, StoreReleases, api_token, judge_settings,
    signal_source, targets,
};
use crate::config;
use crate::engine::judge_adapter::PolicyJudge;
use crate::engine::phase::Phase as EnginePhase;
use crate::engine::{Engine, EngineSettings};
use crate::lease::{LeaderElector, LeaseSettings};
use crate::metrics::GuardMetrics;
use crate::platform::kubernetes::controller::{
    Controller, ControllerSettings, LocalRollouts, Verification, Verifier,
};
use crate::platform::kubernetes::rollout::{ENGINE_PREFIX, RolloutState, Side};
use crate::platform::kubernetes::verify::JudgeVerifier;
use crate::platform::kubernetes::{KubeSettings, KubernetesPlatform};
use crate::platform::{BoxFuture, Build, Platform, Target};
use crate::review::image::{ImageCheck, RegistryCheck};
use crate::review::template::ReviewTemplate;
use crate::review::{ReviewSettings, Reviews};
use crate::signals::{SignalSource, Snapshot};
use crate::store::{RolloutRecord, Store, Transition};

#[derive(Debug, clap::Args)]
#[command(after_help = "\
Runs until SIGINT or SIGTERM, then releases the Lease so another replica takes over at once.\n\
Serves guard's API as `guard serve` does (POST /api/v1/deployments, rollouts, /api/v1/alerts, /metrics); \
only the leader acts, followers answer /api/v1/* with 503 (the CLI retries). A leader that loses the Lease exits 1; \
the next leader takes over every rollout in flight from the state on the Deployments (annotations guard.ultra-boost.dev/taken-over-*).\n\
Cluster access: the pod's service account, or KUBECONFIG / ~/.kube/config outside a cluster.\n\
Endpoints on --listen: GET /-/healthy, GET /-/ready, GET /-/leader (JSON), and with\n\
--review-template POST /api/v1/github/webhook (X-Hub-Signature-256 required).\n\
Environment: GUARD_API_TOKEN (else api.token_file), GUARD_GITHUB_WEBHOOK_SECRET, GUARD_REGISTRY_TOKEN, GUARD_* notifier settings.")]
pub struct Args {
    /// guard.yaml: SLOs per service, signal source, judge policy, notifiers.
    #[arg(long, short, env = "GUARD_CONFIG", default_value = "guard.yaml")]
    pub config: PathBuf,
    /// Address for the API, /metrics, health, leader status and webhooks (default: api.listen of guard.yaml).
    #[arg(long, env = "GUARD_LISTEN", value_name = "ADDR", value_parser = crate::config::listen_address)]
    pub listen: Option<SocketAddr>,
    /// Guard Deployments of this namespace only (default: every namespace).
    #[arg(long, env = "GUARD_WATCH_NAMESPACE")]
    pub namespace: Option<String>,
    /// This replica's name in the Lease and in annotations (default: $POD_NAME, else the host name).
    #[arg(long, env = "POD_NAME")]
    pub identity: Option<String>,
    /// Namespace of the leader Lease.
    #[arg(long, env = "POD_NAMESPACE", default_value = "guard-system")]
    pub lease_namespace: String,
    /// Name of the leader Lease.
    #[arg(long, default_value = "guard-leader")]
    pub lease_name: String,
    /// How long the Lease is valid without renewal.
    #[arg(long, default_value = "15s", value_parser = positive_duration)]
    pub lease_duration: Duration,
    /// A leader unable to renew for this long stops acting (< lease duration).
    #[arg(long, default_value = "10s", value_parser = positive_duration)]
    pub renew_deadline: Duration,
    /// How often to acquire or renew the Lease (< renew deadline).
    #[arg(long, default_value = "2s", value_parser = positive_duration)]
    pub retry_period: Duration,
    /// How often verifying rollouts are stepped.
    #[arg(long, default_value = "2s", value_parser = positive_duration)]
    pub interval: Duration,
    /// No verdict by then: the rollout is held for a person.
    #[arg(long, default_value = "15m", value_parser = positive_duration)]
    pub verify_deadline: Duration,
    /// The container whose image is the build (default: the first).
    #[arg(long)]
    pub container: Option<String>,
    /// Rendered review overlay with placeholders (`kubectl kustomize deploy/kustomize/overlays/review`);
    /// enables the GitHub webhook.
    #[arg(long, env = "GUARD_REVIEW_TEMPLATE", value_name = "FILE")]
    pub review_template: Option<PathBuf>,
    /// File holding the GitHub webhook secret (else GUARD_GITHUB_WEBHOOK_SECRET).
    #[arg(long, env = "GUARD_GITHUB_WEBHOOK_SECRET_FILE", value_name = "FILE")]
    pub github_webhook_secret_file: Option<PathBuf>,
    /// Review environment URL, `{number}` replaced, e.g. https://pr-{number}.review.example.com.
    #[arg(long, env = "GUARD_REVIEW_URL")]
    pub review_url: Option<String>,
    /// Only this repository's pull requests (owner/name).
    #[arg(long, env = "GUARD_REVIEW_REPOSITORY")]
    pub review_repository: Option<String>,
    /// Review environments without pull request activity for this long are deleted.
    #[arg(long, default_value = "72h", value_parser = positive_duration)]
    pub review_ttl: Duration,
    /// How long to wait for the image :pr-N to be pushed.
    #[arg(long, default_value = "30m", value_parser = positive_duration)]
    pub image_wait: Duration,
    /// Registry base URL for the image check (default: https://<registry host of the image>).
    #[arg(long, env = "GUARD_REGISTRY_URL")]
    pub registry_url: Option<String>,
    /// Apply review environments without checking that the image exists.
    #[arg(long)]
    pub skip_image_check: bool,
    /// Write the bound address to this file once listening (useful with port 0).
    #[arg(long, value_name = "PATH")]
    pub address_file: Option<PathBuf>,
}

/// The judge with each service's SLOs (the first service's as fallback).
struct VerifierByService {
    by_service: HashMap<String, JudgeVerifier>,
    fallback: Option<JudgeVerifier>,
}

impl Verifier for VerifierByService {
    fn start(
        &self,
        target: &Target,
        stable: &Side,
        candidate: &Side,
        canary_share: Option<f64>,
    ) -> Box<dyn Verification> {
        match self
            .by_service
            .get(&target.service)
            .or(self.fallback.as_ref())
        {
            Some(v) => v.start(target, stable, candidate, canary_share),
            None => Box::new(NoSlos),
        }
    }
}

struct NoSlos;

impl Verification for NoSlos {
    fn step(
        &mut self,
        _: &Snapshot,
        _: Duration,
    ) -> crate::platform::kubernetes::controller::Decision {
        crate::platform::kubernetes::controller::Decision::Hold {
            reason: "guard.yaml defines no SLOs to verify against".into(),
        }
    }
}

fn identity(flag: Option<String>) -> String {
    flag.filter(|s| !s.is_empty())
        .or_else(|| std::env::var("HOSTNAME").ok().filter(|s| !s.is_empty()))
        .or_else(|| {
            std::fs::read_to_string("/etc/hostname")
                .ok()
                .map(|s| s.trim().to_string())
                .filter(|s| !s.is_empty())
        })
        .unwrap_or_else(|| format!("guard-{}", std::process::id()))
}

fn webhook_secret(file: Option<&PathBuf>) -> anyhow::Result<Vec<u8>> {
    let secret = match file {
        Some(p) => std::fs::read_to_string(p).with_context(|| format!("reading --github-webhook-secret-file {}", p.display()))?,
        None => std::env::var("GUARD_GITHUB_WEBHOOK_SECRET").map_err(|_| {
            anyhow::anyhow!(
                "--review-template needs the GitHub webhook secret: set GUARD_GITHUB_WEBHOOK_SECRET or --github-webhook-secret-file"
            )
        })?,
    };
    let secret = secret.trim().to_string();
    anyhow::ensure!(
        !secret.is_empty(),
        "the GitHub webhook secret is empty; unsigned webhooks are never accepted"
    );
    Ok(secret.into_bytes())
}

async fn shutdown_signal(stop: CancellationToken) {
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term => {}
        _ = stop.cancelled() => {}
    }
    stop.cancel();
}

/// The API's view of the cluster: leadership, and what a Deployment runs.
struct KubeCluster {
    platform: KubernetesPlatform,
    leading: watch::Receiver<bool>,
}

impl api::Cluster for KubeCluster {
    fn follower_of(&self) -> Option<String> {
        (!*self.leading.borrow())
            .then(|| "the holder of the guard Lease (GET /-/leader on each replica)".into())
    }

    fn running<'a>(&'a self, target: &'a Target) -> BoxFuture<'a, Result<Option<Build>, String>> {
        Box::pin(async move {
            let observed = self
                .platform
                .observe(target)
                .await
                .map_err(|e| e.to_string())?;
            // The build number is enough to revert to: the platform finds its
            // ReplicaSet by the build annotation (no image given, none compared).
            Ok(observed.stable.map(|number| Build {
                number,
                commit: None,
                image: None,
                command: vec![],
                env: Default::default(),
            }))
        })
    }
}

/// The rollouts this replica's engine has in hand: the active ones of its
/// store (the engine resumes all of them when the replica starts leading),
/// placed on their Deployments as the platform places them.
struct EngineRollouts {
    store: Arc<Store>,
    settings: KubeSettings,
}

impl LocalRollouts for EngineRollouts {
    fn drives(&self, namespace: &str, name: &str) -> bool {
        match self.store.active_rollouts() {
            Ok(active) => active.iter().any(|r| {
                r.target.service == name
                    && self.settings.namespace_for(&r.target.environment) == namespace
            }),
            Err(e) => {
                // Unsure: taking over a rollout this engine may drive could make
                // two drivers; leave it and try again on the next pass.
                tracing::warn!(deployment = %format!("{namespace}/{name}"), error = %e,
                    "cannot read the store; not taking over the rollout in flight");
                true
            }
        }
    }
}

/// Why `record` (active in this replica's store) must not be resumed: the
/// Deployment shows that another guard replica wrote its rollout state after
/// the record was created (it took this rollout over, or a newer rollout
/// replaced it). `None`: resume it.
fn taken_over_by(
    record: &RolloutRecord,
    state: Option<&RolloutState>,
    identity: &str,
) -> Option<String> {
    let state = state?;
    let by = state.by.as_deref()?;
    let mine = by == identity || by.strip_prefix(ENGINE_PREFIX) == Some(identity);
    (!mine && state.updated_at.as_millisecond() > record.created_ms).then(|| by.to_string())
}

/// Closes, before [`Engine::resume`], the active rollouts of this replica's
/// store that another replica took over while this one did not lead, so the
/// engine never drives a rollout a second time.
async fn close_taken_over(store: &Store, platform: &KubernetesPlatform, identity: &str) {
    let active = match store.active_rollouts() {
        Ok(a) => a,
        Err(e) => {
            tracing::warn!(error = %e, "cannot read the store's unfinished rollouts");
            return;
        }
    };
    for record in active {
        let ns = platform
            .settings()
            .namespace_for(&record.target.environment);
        let state = match platform.deployments(&ns).get(&record.target.service).await {
            Ok(d) => RolloutState::read(&d).ok().flatten(),
            Err(e) => {
                tracing::warn!(rollout = record.id, error = %e, "cannot read the Deployment of an unfinished rollout; resuming it");
                continue;
            }
        };
        let Some(by) = taken_over_by(&record, state.as_ref(), identity) else {
            continue;
        };
        let detail = format!(
            "guard replica {by} took the Deployment's rollout over while this replica did not lead; \
             not resuming it here (see the guard.ultra-boost.dev/rollout annotation)"
        );
        let t = Transition {
            id: record.id,
            from: &record.phase,
            to: &EnginePhase::Aborted,
            cause: "taken_over",
            detail: Some(&detail),
            evidence: None,
            at_ms: crate::engine::now_ms(),
        };
        match store.record_transition(&t) {
            Ok(()) => tracing::warn!(rollout = record.id, service = %record.target.service,
                environment = %record.target.environment, build = %record.candidate.number, by = %by,
                "unfinished rollout was taken over by another replica; closed instead of resumed"),
            Err(e) => {
                tracing::warn!(rollout = record.id, error = %e, "cannot close a rollout another replica took over")
            }
        }
    }
}

/// Starts the engine's work when this replica first leads; exits (code 1)
/// when it loses the Lease while running, so two replicas never drive a rollout.
async fn follow_leadership(
    engine: Arc<Engine>,
    platform: KubernetesPlatform,
    mut leading: watch::Receiver<bool>,
    stop: CancellationToken,
    all: Vec<Target>,
) -> i32 {
    let mut led = false;
    loop {
        let now = *leading.borrow_and_update();
        if now && !led {
            led = true;
            let identity = platform.settings().identity.clone();
            close_taken_over(engine.store(), &platform, &identity).await;
            match engine.resume() {
                Ok(0) => {}
                Ok(n) => tracing::info!(resumed = n, "resumed this replica's unfinished rollouts"),
                Err(e) => tracing::warn!(error = %e, "could not resume rollouts from the store"),
            }
            tokio::spawn(engine.clone().run_baselines(all.clone()));
            tracing::info!("leading: the deploy API accepts rollouts on this replica");
        } else if !now && led {
            if stop.is_cancelled() {
                return 0;
            }
            tracing::error!(
                "lost the leader Lease while running rollouts; exiting so that no rollout is driven by two replicas \
                 (Kubernetes restarts this pod as a follower)"
            );
            engine.shutdown();
            stop.cancel();
            return 1;
        }
        tokio::select! {
            changed = leading.changed() => if changed.is_err() { return 0 },
            _ = stop.cancelled() => return 0,
        }
    }
}

pub async fn run(args: Args) -> anyhow::Result<i32> {
    super::serve::init_logs("info,kube=warn,hyper=warn");
    // Both errors name the file and the line already.
    let config = config::load(&args.config)?;
    config
        .check_kubernetes()
        .context("guard controller deploys images")?;
    let config = Arc::new(config);
    let listen = args.listen.unwrap_or(config.api.listen);
    let token = api_token(&config)?;
    api::check_exposure(listen, token.as_deref())?;
    let me = identity(args.identity.clone());
    let lease = LeaseSettings {
        namespace: args.lease_namespace.clone(),
        name: args.lease_name.clone(),
        identity: me.clone(),
        lease_duration: args.lease_duration,
        renew_deadline: args.renew_deadline,
        retry_period: args.retry_period,
    };
    lease.validate().context("leader election settings")?;
    // Parse the review settings before touching the cluster: bad input fails fast.
    let review = match &args.review_template {
        Some(path) => {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("reading --review-template {}", path.display()))?;
            let template = ReviewTemplate::parse(&path.display().to_string(), &text)?;
            Some(ReviewSettings {
                secret: webhook_secret(args.github_webhook_secret_file.as_ref())?,
                template,
                url_pattern: args.review_url.clone(),
                ttl: args.review_ttl,
                image_wait: args.image_wait,
                image_poll: Duration::from_secs(15),
                repository: args.review_repository.clone(),
                service: config
                    .services
                    .first()
                    .map_or_else(|| "ultra-boost".into(), |s| s.name.clone()),
            })
        }
        None => None,
    };

    let client = kube::Client::try_default().await.context(
        "connecting to Kubernetes (in-cluster service account, KUBECONFIG or ~/.kube/config)",
    )?;

    // Signals and the judge per service, from guard.yaml (as `guard serve` builds them).
    super::serve::check_prometheus_queries(&config).await?;
    let mut sources: HashMap<String, Arc<dyn SignalSource>> = HashMap::new();
    let mut verifiers = HashMap::new();
    for s in &config.services {
        sources.insert(s.name.clone(), signal_source(&config, s)?);
        verifiers.insert(
            s.name.clone(),
            JudgeVerifier {
                policy: config.policy.clone(),
                slos: s.slos.iter().map(|o| o.judge_spec()).collect(),
            },
        );
    }
    let first = config.services.first().map(|s| s.name.clone());
    let signals = ByService {
        fallback: first.as_ref().and_then(|f| sources.get(f).cloned()),
        sources,
    };
    let verifier = VerifierByService {
        fallback: first.as_ref().and_then(|f| verifiers.get(f).cloned()),
        by_service: verifiers,
    };

    let signals: Arc<dyn SignalSource> = Arc::new(signals);

    // Notifications: the controller, engine and review events go to the
    // dispatcher; deliveries of engine rollouts are recorded in the store.
    let store = Arc::new(
        Store::open_exclusive(&config.store)
            .with_context(|| format!("opening the store {}", config.store.display()))?,
    );
    let mut registry = Registry::default();
    let metrics = Arc::new(GuardMetrics::register(&mut registry));
    let dispatcher = notify::Dispatcher::from_config(
        &config.notify,
        &notify::config::ProcessEnv,
        &mut registry,
        Arc::new(StoreLog(store.clone())),
    )
    .context("configuring notifications")?;
    let (events_tx, mut events_rx) = mpsc::unbounded_channel::<notify::Event>();
    let forward = dispatcher.clone();
    tokio::spawn(async move {
        while let Some(ev) = events_rx.recv().await {
            forward.send(ev);
        }
    });

    let stop = CancellationToken::new();
    let (leading_tx, leading_rx) = watch::channel(false);
    let elector = LeaderElector::new(client.clone(), lease)?;
    let platform = KubernetesPlatform::new(
        client.clone(),
        KubeSettings {
            identity: me.clone(),
            container: args.container.clone(),
            namespaces: config.namespaces(),
            ..KubeSettings::default()
        },
    );

    // The rollout engine of `guard deploy`, on the same platform and signals.
    let (slo_specs, target_settings) = judge_settings(&config);
    let watch: HashMap<Target, Duration> = target_settings
        .iter()
        .map(|(t, s)| (t.clone(), s.watch))
        .collect();
    let judge = PolicyJudge::new(config.policy.clone(), slo_specs, vec![])
        .context("configuring the judge")?;
    let engine = Engine::new(
        store.clone(),
        Arc::new(platform.clone()),
        signals.clone(),
        Arc::new(judge),
        Arc::new(DispatcherSink(dispatcher.clone())),
        metrics,
        EngineSettings {
            tick: config.engine.tick,
            stale_after: config.engine.stale_after,
            baseline_window: config.engine.baseline_window,
            checkpoint_every: config.engine.checkpoint_every,
            targets: target_settings,
            status_url: Some(
                config
                    .api
                    .public_url
                    .clone()
                    .unwrap_or_else(|| format!("http://{listen}")),
            ),
            ..EngineSettings::default()
        },
    );
    let alerts = api::alertmanager::router(api::alertmanager::AlertmanagerState::new(
        Arc::new(dispatcher.clone()),
        Arc::new(StoreReleases(store.clone())),
        config
            .services
            .first()
            .and_then(|s| s.environments.first())
            .map_or("production", |e| e.name.as_str()),
    ));
    let api_state = ApiState {
        engine: engine.clone(),
        builds: Arc::new(ConfigBuilds::images(config.clone())),
        registry: Arc::new(registry),
        token: token.map(Arc::from),
        target_info: Arc::new(|_: &Target| serde_json::json!({"platform": "kubernetes"})),
        cluster: Some(Arc::new(KubeCluster {
            platform: platform.clone(),
            leading: leading_rx.clone(),
        })),
    };

    let leadership_platform = platform.clone();
    let controller = Controller::new(
        platform,
        signals,
        Arc::new(verifier),
        ControllerSettings {
            namespace: args.namespace.clone(),
            interval: args.interval,
            verify_deadline: args.verify_deadline,
            watch,
        },
        Some(events_tx.clone()),
    )
    .with_local_rollouts(Arc::new(EngineRollouts {
        store: store.clone(),
        settings: leadership_platform.settings().clone(),
    }));

    let leader_view = leading_rx.clone();
    let who = me.clone();
    // The API router brings /-/healthy, /-/ready and /metrics.
    let mut app = api::router(api_state, Some(alerts)).route(
        "/-/leader",
        get(move || {
            let leading = *leader_view.borrow();
            let who = who.clone();
            async move { axum::Json(serde_json::json!({"identity": who, "leading": leading})) }
        }),
    );
    let mut tasks = Vec::new();
    if let Some(settings) = review {
        let images: Option<Arc<dyn ImageCheck>> = if args.skip_image_check {
            None
        } else {
            let token = std::env::var("GUARD_REGISTRY_TOKEN")
                .ok()
                .filter(|t| !t.trim().is_empty());
            Some(Arc::new(RegistryCheck::new(
                args.registry_url.clone(),
                token,
            )?))
        };
        let reviews = Arc::new(Reviews::new(
            client.clone(),
            settings,
            images,
            Some(events_tx.clone()),
        ));
        app = app.merge(reviews.clone().router());
        tasks.push(tokio::spawn(reviews.run_sweeper(
            Duration::from_secs(300),
            leading_rx.clone(),
            stop.clone(),
        )));
    }

    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .with_context(|| format!("binding {listen}"))?;
    let bound = listener.local_addr().context("reading the bound address")?;
    if let Some(p) = &args.address_file {
        std::fs::write(p, bound.to_string())
            .with_context(|| format!("writing --address-file {}", p.display()))?;
    }
    tracing::info!(identity = %me, listen = %bound, lease = %format!("{}/{}", args.lease_namespace, args.lease_name), "guard controller started");

    let http_stop = stop.clone();
    tasks.push(tokio::spawn(async move {
        let _ = axum::serve(listener, app)
            .with_graceful_shutdown(http_stop.cancelled_owned())
            .await;
    }));
    let election = tokio::spawn(elector.run(leading_tx, stop.clone()));
    let control_stop = stop.clone();
    let leadership = tokio::spawn(follow_leadership(
        engine.clone(),
        leadership_platform,
        leading_rx.clone(),
        stop.clone(),
        targets(&config),
    ));
    let control = tokio::spawn(async move { controller.run(leading_rx, control_stop).await });

    shutdown_signal(stop.clone()).await;
    tracing::info!("shutting down: releasing the lease");
    engine.shutdown();
    let code = leadership.await.unwrap_or(0);
    let _ = control.await;
    let _ = election.await;
    for t in tasks {
        let _ = t.await;
    }
    let undelivered = dispatcher.flush(Duration::from_secs(5)).await;
    if undelivered > 0 {
        tracing::warn!(undelivered, "notifications still pending at exit");
    }
    Ok(code)
}

/// A clap value parser: a humantime duration longer than zero (a zero
/// retry period or interval would spin the API server in a hot loop).
fn positive_duration(text: &str) -> Result<Duration, String> {
    match humantime::parse_duration(text) {
        Ok(d) if d.is_zero() => Err("must be longer than zero, e.g. `2s`".to_string()),
        Ok(d) => Ok(d),
        Err(e) => Err(format!("{e}; write e.g. `500ms`, `2s`, `15m`")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::platform::Strategy;

    #[test]
    fn zero_or_garbage_periods_are_refused() {
        assert_eq!(positive_duration("2s"), Ok(Duration::from_secs(2)));
        for bad in ["0s", "0"] {
            let e = positive_duration(bad).expect_err(bad);
            assert!(e.contains("longer than zero"), "{bad}: {e}");
        }
        let e = positive_duration("often").expect_err("garbage");
        assert!(e.contains("e.g. `500ms`"), "{e}");
    }
    use crate::platform::kubernetes::rollout::Phase;

    fn record(created_ms: i64) -> RolloutRecord {
        RolloutRecord::verifying_for_tests(0.5, created_ms)
    }

    fn state(by: &str, updated_ms: i64) -> RolloutState {
        let side = |n: &str| Side {
            build: n.into(),
            image: None,
            commit: None,
            hash: Some(format!("h{n}")),
            revision: None,
        };
        let at = jiff::Timestamp::from_millisecond(updated_ms).expect("timestamp");
        RolloutState {
            phase: Phase::Reverted,
            strategy: Strategy::Rolling,
            candidate: side("2"),
            stable: Some(side("1")),
            started_at: at,
            updated_at: at,
            share: 0.0,
            stable_replicas: None,
            by: Some(by.into()),
            reason: None,
            watch_until: None,
            revert_impossible: false,
        }
    }

    #[test]
    fn the_engine_drives_the_deployments_of_its_active_rollouts_only() {
        let store = Arc::new(Store::in_memory().expect("store"));
        let r = record(0);
        let id = store
            .create_rollout(
                &crate::store::NewRollout {
                    target: r.target.clone(),
                    strategy: r.strategy,
                    kind: r.kind,
                    stable: r.stable.clone(),
                    candidate: r.candidate.clone(),
                    phase: EnginePhase::Pending,
                    requested_by: "ci".into(),
                },
                1,
            )
            .expect("create");
        let local = EngineRollouts {
            store: store.clone(),
            settings: KubeSettings {
                namespaces: [("production".to_string(), "prod".to_string())].into(),
                ..KubeSettings::default()
            },
        };
        assert!(local.drives("prod", "web"));
        assert!(!local.drives("production", "web"), "placed by namespace");
        assert!(!local.drives("prod", "api"));
        store
            .record_transition(&Transition {
                id,
                from: &EnginePhase::Pending,
                to: &EnginePhase::Aborted,
                cause: "taken_over",
                detail: None,
                evidence: None,
                at_ms: 2,
            })
            .expect("close");
        assert!(
            !local.drives("prod", "web"),
            "finished rollouts are nobody's"
        );
    }

    #[test]
    fn a_rollout_another_replica_wrote_later_is_not_resumed() {
        let r = record(1_000_000);
        // Still this engine's (or this replica's own promote/revert): resume.
        for by in ["engine:guard-a", "guard-a"] {
            assert_eq!(
                taken_over_by(&r, Some(&state(by, 2_000_000)), "guard-a"),
                None
            );
        }
        // guard-b took it over (or rolled something newer) after the record.
        assert_eq!(
            taken_over_by(&r, Some(&state("guard-b", 2_000_000)), "guard-a").as_deref(),
            Some("guard-b")
        );
        assert_eq!(
            taken_over_by(&r, Some(&state("engine:guard-b", 2_000_000)), "guard-a").as_deref(),
            Some("engine:guard-b")
        );
        // State older than the record (the engine had not shifted yet): resume.
        assert_eq!(
            taken_over_by(&r, Some(&state("guard-b", 999_000)), "guard-a"),
            None
        );
        assert_eq!(taken_over_by(&r, None, "guard-a"), None);
    }
}
