//! `guard serve`: the daemon. Opens the store, starts the local platform (one
//! router per service and environment), the signal source, the judge, the
//! notification dispatcher, the engine (resuming what a previous run left
//! unfinished) and the HTTP API. [`Runtime`] is reused by `guard demo`.

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use prometheus_client::registry::Registry;
use tracing::{info, warn};

use crate::api::{self, ApiState, Builds};
use crate::config::{self, Config, SignalsConfig};
use crate::engine::judge_adapter::PolicyJudge;
use crate::engine::phase::Phase;
use crate::engine::{Engine, EngineSettings, EventSink, TargetSettings};
use crate::metrics::GuardMetrics;
use crate::platform::local::{LocalPlatform, LocalTargetConfig};
use crate::platform::{BoxFuture, Build, Endpoint, Strategy, Target};
use crate::signals::scrape::{ScrapeConfig, ScrapeSource};
use crate::signals::{SignalError, SignalSource, Snapshot};
use crate::store::{DeliveryRecord, Store};

#[derive(Debug, clap::Args)]
#[command(
    after_help = "Runs until SIGINT or SIGTERM. On restart it resumes every unfinished rollout from the store.\n\
Environment: GUARD_API_TOKEN (bearer token for the API), GUARD_SLACK_WEBHOOK_URL and the other GUARD_* notifier settings."
)]
pub struct Args {
    /// guard.yaml (see examples/guard.yaml).
    #[arg(long, short, env = "GUARD_CONFIG", default_value = "guard.yaml")]
    pub config: PathBuf,
    /// The ultra-boost binary builds run (default: next to guard, then PATH).
    #[arg(long, env = "GUARD_ULTRA_BOOST_BIN", value_name = "PATH")]
    pub ultra_boost_bin: Option<PathBuf>,
    /// Override `api.listen`.
    #[arg(long, value_name = "ADDR", value_parser = config::listen_address)]
    pub listen: Option<SocketAddr>,
    /// Write the API's bound address to this file once it listens (useful with port 0).
    #[arg(long, value_name = "PATH")]
    pub address_file: Option<PathBuf>,
}

/// Finds `ultra-boost`: the flag, then next to the running guard, then `PATH`.
pub fn locate_ultra_boost(flag: Option<&Path>) -> anyhow::Result<PathBuf> {
    if let Some(p) = flag {
        anyhow::ensure!(
            p.is_file(),
            "--ultra-boost-bin {}: no such file",
            p.display()
        );
        return Ok(p.to_path_buf());
    }
    if let Ok(exe) = std::env::current_exe()
        && let Some(dir) = exe.parent()
    {
        for candidate in [dir.join("ultra-boost"), dir.join("../ultra-boost")] {
            if candidate.is_file() {
                return Ok(candidate);
            }
        }
    }
    if let Some(path) = std::env::var_os("PATH") {
        for dir in std::env::split_paths(&path) {
            let c = dir.join("ultra-boost");
            if c.is_file() {
                return Ok(c);
            }
        }
    }
    anyhow::bail!(
        "cannot find the ultra-boost binary next to guard or on PATH; build it (`cargo build -p ultra-boost`) \
         or pass --ultra-boost-bin PATH"
    )
}

/// Resolves build numbers with the config's templates.
pub struct ConfigBuilds {
    config: Arc<Config>,
    ultra_boost: String,
    /// Kubernetes: a build is an image (`build.image`), not a command.
    images: bool,
}

impl ConfigBuilds {
    /// Builds as images, for the kubernetes platform (see [`Config::check_kubernetes`]).
    pub fn images(config: Arc<Config>) -> Self {
        ConfigBuilds {
            config,
            ultra_boost: String::new(),
            images: true,
        }
    }
}

impl Builds for ConfigBuilds {
    fn build(&self, target: &Target, number: &str, commit: Option<&str>) -> Result<Build, String> {
        let service = self
            .config
            .service(&target.service)
            .ok_or_else(|| format!("unknown service {:?}", target.service))?;
        let mut b = service.build_for(number, &self.ultra_boost);
        if let Some(c) = commit {
            b.commit = Some(c.to_string());
        }
        if self.images {
            if b.image.is_none() {
                return Err(format!(
                    "service {:?} has no build.image for build {number} (guard.yaml)",
                    target.service
                ));
            }
        } else if b.command.is_empty() {
            return Err(format!(
                "service {:?} has no build command for build {number}",
                target.service
            ));
        }
        Ok(b)
    }

    fn targets(&self) -> Vec<Target> {
        targets(&self.config)
    }

    fn strategy(&self, target: &Target) -> Strategy {
        self.config
            .service(&target.service)
            .map_or(Strategy::Rolling, |s| s.strategy)
    }
}

/// Every service × environment of a config.
pub fn targets(config: &Config) -> Vec<Target> {
    config
        .services
        .iter()
        .flat_map(|s| {
            s.environments.iter().map(|e| Target {
                service: s.name.clone(),
                environment: e.name.clone(),
            })
        })
        .collect()
}

/// One signal source per service (each has its own SLO mapping), and the
/// one to use for a target named like no service (the controller's
/// Deployments that guard.yaml does not list), if any.
pub(crate) struct ByService {
    pub(crate) sources: HashMap<String, Arc<dyn SignalSource>>,
    pub(crate) fallback: Option<Arc<dyn SignalSource>>,
}

impl SignalSource for ByService {
    fn stop(&self) {
        for s in self.sources.values().chain(self.fallback.as_ref()) {
            s.stop();
        }
    }

    fn snapshot<'a>(
        &'a self,
        target: &'a Target,
        endpoints: &'a [Endpoint],
    ) -> BoxFuture<'a, Result<Snapshot, SignalError>> {
        Box::pin(async move {
            match self.sources.get(&target.service).or(self.fallback.as_ref()) {
                Some(s) => s.snapshot(target, endpoints).await,
                None => Err(SignalError::Unavailable {
                    detail: format!("no signal source for {}", target.service),
                }),
            }
        })
    }
}

/// Notifications go to the notify dispatcher (which never blocks).
pub(crate) struct DispatcherSink(pub(crate) notify::Dispatcher);

impl EventSink for DispatcherSink {
    fn send(&self, event: notify::Event) {
        self.0.send(event);
    }

    fn notifiers(&self) -> Vec<String> {
        self.0.targets().into_iter().map(String::from).collect()
    }
}

/// Sends again what a previous guard stored but its notifiers never answered
/// (it was killed first), to those notifiers only.
fn resend_unanswered(store: &Store, dispatcher: &notify::Dispatcher) {
    let pending = match store.pending_notices(&dispatcher.targets()) {
        Ok(p) => p,
        Err(e) => {
            warn!(error = %e, "could not read the notifications kept for a resend");
            return;
        }
    };
    for notice in pending {
        match serde_json::from_value::<notify::Event>(notice.event) {
            Ok(event) => {
                info!(rollout = notice.rollout_id, event = event.kind.as_str(), notifiers = ?notice.missing,
                      "sending again a notification its notifiers never answered before the restart");
                dispatcher.send_to(event, &notice.missing);
            }
            Err(e) => {
                warn!(rollout = notice.rollout_id, error = %e, "a notification kept for a resend does not decode; skipped")
            }
        }
    }
}

/// Delivery results written to history.
pub(crate) struct StoreLog(pub(crate) Arc<Store>);

impl notify::DeliveryLog for StoreLog {
    fn record(&self, r: notify::DeliveryRecord) {
        let Some(id) = r.rollout_id else { return };
        let rec = DeliveryRecord {
            at_ms: r.at_ms,
            notifier: r.target.to_string(),
            // Store::pending_notices matches on "<kind> (".
            event: format!("{} ({})", r.event.as_str(), r.action),
            ok: r.outcome == notify::Outcome::Delivered,
            detail: Some(format!(
                "{} after {} attempt(s): {}",
                r.outcome.as_str(),
                r.attempts,
                r.detail
            )),
        };
        if let Err(e) = self.0.record_delivery(id, &rec) {
            warn!(rollout = id, error = %e, "could not record a notification delivery");
        }
    }

    fn remember(&self, target: &'static str, rollout_id: i64, created: Option<i64>) {
        if let Err(e) = self.0.link_notifier(rollout_id, target, created) {
            warn!(rollout = rollout_id, notifier = target, error = %e,
                  "could not keep what a notifier created; a restart would not find it");
        }
    }

    fn recall(&self, target: &'static str, rollout_id: i64) -> Option<i64> {
        self.0
            .notifier_link(rollout_id, target)
            .inspect_err(|e| {
                warn!(rollout = rollout_id, notifier = target, error = %e,
                                   "could not read what a notifier created for the rollout")
            })
            .ok()
            .flatten()
    }
}

/// Suspects for Alertmanager alerts: the last promoted release from history.
pub(crate) struct StoreReleases(pub(crate) Arc<Store>);

impl api::alertmanager::ReleaseLookup for StoreReleases {
    fn last_promoted(
        &self,
        service: Option<&str>,
        environment: &str,
    ) -> Option<api::alertmanager::PromotedRelease> {
        let rollouts = self.0.rollouts(None, 200).ok()?;
        rollouts
            .into_iter()
            .filter(|r| {
                r.target.environment == environment && service.is_none_or(|s| s == r.target.service)
            })
            // A release in its post-promote watch serves all the traffic: it
            // is the suspect, not the one it replaced.
            .find(|r| {
                r.verdict.as_deref() == Some("promote")
                    && (!r.active
                        || matches!(r.phase, Phase::Promoting { .. } | Phase::Watching { .. }))
            })
            .map(|r| api::alertmanager::PromotedRelease {
                service: r.target.service,
                build: r.candidate.number,
                commit: r.candidate.commit,
                promoted_at_ms: r.verdict_at_ms.unwrap_or(r.updated_ms),
            })
    }
}

/// The signal source of one service, as `signals` of guard.yaml says.
pub(crate) fn signal_source(
    config: &Config,
    s: &config::ServiceConfig,
) -> anyhow::Result<Arc<dyn SignalSource>> {
    Ok(match &config.signals {
        SignalsConfig::Scrape { interval } => {
            let slos: BTreeMap<_, _> = s
                .slos
                .iter()
                .map(|o| (o.name.clone(), o.scrape.clone()))
                .collect();
            let mut sc = ScrapeConfig::new(slos);
            sc.interval = *interval;
            sc.timeout = (*interval * 4 / 5).max(Duration::from_millis(100));
            Arc::new(ScrapeSource::new(sc))
        }
        SignalsConfig::Prometheus { .. } => Arc::new(signal_source_prometheus(config, s)?),
    })
}

/// With the prometheus source, asks Prometheus every SLO query once: a query
/// it refuses is a mistake in guard.yaml, named by its field, and guard does
/// not start (it would hold every release as a source outage). An
/// unreachable Prometheus is only warned about: it may come up later.
pub(crate) async fn check_prometheus_queries(config: &Config) -> anyhow::Result<()> {
    let SignalsConfig::Prometheus { url, .. } = &config.signals else {
        return Ok(());
    };
    let mut refused = vec![];
    for (i, s) in config.services.iter().enumerate() {
        let source = signal_source_prometheus(config, s)?;
        let environments: Vec<String> = s.environments.iter().map(|e| e.name.clone()).collect();
        for (slo, query, check) in source.check_queries(&environments).await {
            let j = s.slos.iter().position(|o| o.name == slo).unwrap_or(0);
            match check {
                crate::signals::prometheus::QueryCheck::Accepted => {}
                crate::signals::prometheus::QueryCheck::Refused(why) => refused.push(format!(
                    "services[{i}].slos[{j}].prometheus ({slo}): {url} refuses {query:?}: {why}"
                )),
                crate::signals::prometheus::QueryCheck::Unreachable(why) => {
                    warn!(%why, "cannot check the SLO queries against Prometheus now; a query it refuses will hold releases as a source outage");
                    return Ok(());
                }
            }
        }
    }
    if !refused.is_empty() {
        anyhow::bail!(
            "{}: Prometheus refuses {} SLO quer{}:\n  {}",
            config.file,
            refused.len(),
            if refused.len() == 1 { "y" } else { "ies" },
            refused.join("\n  ")
        );
    }
    Ok(())
}

fn signal_source_prometheus(
    config: &Config,
    s: &config::ServiceConfig,
) -> anyhow::Result<crate::signals::prometheus::PrometheusSource> {
    let SignalsConfig::Prometheus {
        url,
        build_label,
        timeout,
    } = &config.signals
    else {
        anyhow::bail!("the signal source is not prometheus");
    };
    let queries = s
        .slos
        .iter()
        .filter_map(|o| o.prometheus.clone().map(|q| (o.name.clone(), q)))
        .collect();
    crate::signals::prometheus::PrometheusSource::new(url, build_label, *timeout, queries)
        .context("configuring the prometheus signal source")
}

/// Per target: the judge's SLOs and the engine's rollout shape.
pub(crate) type JudgeSettings = (
    HashMap<Target, Vec<judge::SloSpec>>,
    HashMap<Target, TargetSettings>,
);

/// The judge's SLOs and the engine's rollout shape for every target of `config`.
pub(crate) fn judge_settings(config: &Config) -> JudgeSettings {
    let mut slo_specs = HashMap::new();
    let mut target_settings = HashMap::new();
    for s in &config.services {
        let specs: Vec<judge::SloSpec> = s.slos.iter().map(|o| o.judge_spec()).collect();
        let n = s.replicas.max(1);
        let rolling_steps: Vec<f64> = (1..=n).map(|i| f64::from(i) / f64::from(n)).collect();
        for e in &s.environments {
            let t = Target {
                service: s.name.clone(),
                environment: e.name.clone(),
            };
            slo_specs.insert(t.clone(), specs.clone());
            target_settings.insert(
                t,
                TargetSettings {
                    rolling_steps: rolling_steps.clone(),
                    canary_steps: s.canary_steps.clone(),
                    watch: s.watch,
                    slos: s.slos.iter().map(|o| o.name.clone()).collect(),
                },
            );
        }
    }
    (slo_specs, target_settings)
}

/// Options beyond the config file.
#[derive(Clone, Debug, Default)]
pub struct RuntimeOptions {
    pub ultra_boost_bin: Option<PathBuf>,
    pub listen: Option<SocketAddr>,
    /// Extra notification deliveries log (the demo's summary).
    pub memory_log: Option<Arc<notify::MemoryLog>>,
}

/// A running guard.
pub struct Runtime {
    pub config: Arc<Config>,
    pub engine: Arc<Engine>,
    pub platform: LocalPlatform,
    pub builds: Arc<ConfigBuilds>,
    pub api_addr: SocketAddr,
    pub dispatcher: notify::Dispatcher,
    signals: Arc<dyn SignalSource>,
    api_shutdown: tokio_util::sync::CancellationToken,
    api_task: tokio::task::JoinHandle<()>,
}

pub(crate) fn api_token(config: &Config) -> anyhow::Result<Option<String>> {
    if let Ok(t) = std::env::var("GUARD_API_TOKEN")
        && !t.trim().is_empty()
    {
        return Ok(Some(t.trim().to_string()));
    }
    match &config.api.token_file {
        Some(p) => {
            let t = std::fs::read_to_string(p)
                .with_context(|| format!("reading api.token_file {}", p.display()))?;
            let t = t.trim().to_string();
            anyhow::ensure!(!t.is_empty(), "api.token_file {} is empty", p.display());
            Ok(Some(t))
        }
        None => Ok(None),
    }
}

impl Runtime {
    /// Starts everything; returns once the API listens and the engine runs.
    pub async fn start(config: Config, opts: RuntimeOptions) -> anyhow::Result<Self> {
        check_prometheus_queries(&config).await?;
        let config = Arc::new(config);
        let ultra_boost = locate_ultra_boost(opts.ultra_boost_bin.as_deref())?;
        let listen = opts.listen.unwrap_or(config.api.listen);
        let token = api_token(&config)?;
        api::check_exposure(listen, token.as_deref())?;

        let mut registry = Registry::default();
        let metrics = Arc::new(GuardMetrics::register(&mut registry));
        let store = Arc::new(
            Store::open_exclusive(&config.store)
                .with_context(|| format!("opening the store {}", config.store.display()))?,
        );

        let mut local_targets = vec![];
        for s in &config.services {
            for e in &s.environments {
                let t = Target {
                    service: s.name.clone(),
                    environment: e.name.clone(),
                };
                let mut lt = LocalTargetConfig::new(
                    t,
                    e.router_listen
                        .unwrap_or_else(|| SocketAddr::from(([127, 0, 0, 1], 0))),
                );
                lt.replicas = s.replicas as usize;
                local_targets.push(lt);
            }
        }
        let platform = LocalPlatform::start(local_targets, &mut registry)
            .await
            .context("starting the local platform")?;

        let mut sources: HashMap<String, Arc<dyn SignalSource>> = HashMap::new();
        for s in &config.services {
            sources.insert(s.name.clone(), signal_source(&config, s)?);
        }
        let (slo_specs, target_settings) = judge_settings(&config);
        let judge = PolicyJudge::new(config.policy.clone(), slo_specs, vec![])
            .context("configuring the judge")?;

        let log: Arc<dyn notify::DeliveryLog> = match &opts.memory_log {
            Some(m) => Arc::new(Tee(Arc::new(StoreLog(store.clone())), m.clone())),
            None => Arc::new(StoreLog(store.clone())),
        };
        let dispatcher = notify::Dispatcher::from_config(
            &config.notify,
            &notify::config::ProcessEnv,
            &mut registry,
            log,
        )
        .context("configuring notifications")?;

        let status_base = config
            .api
            .public_url
            .clone()
            .unwrap_or_else(|| format!("http://{listen}"));
        let settings = EngineSettings {
            tick: config.engine.tick,
            stale_after: config.engine.stale_after,
            baseline_window: config.engine.baseline_window,
            checkpoint_every: config.engine.checkpoint_every,
            targets: target_settings,
            status_url: Some(status_base),
            // Test knob (crash tests): widen the store-then-act window.
            action_delay: std::env::var("GUARD_TEST_ACTION_DELAY_MS")
                .ok()
                .and_then(|v| v.parse().ok())
                .map_or(Duration::ZERO, Duration::from_millis),
            ..EngineSettings::default()
        };
        let signals: Arc<dyn SignalSource> = Arc::new(ByService {
            sources,
            fallback: None,
        });
        let engine = Engine::new(
            store.clone(),
            Arc::new(platform.clone()),
            signals.clone(),
            Arc::new(judge),
            Arc::new(DispatcherSink(dispatcher.clone())),
            metrics,
            settings,
        );
        let builds = Arc::new(ConfigBuilds {
            config: config.clone(),
            ultra_boost: ultra_boost.display().to_string(),
            images: false,
        });

        resend_unanswered(&store, &dispatcher);
        let resumed = engine
            .resume()
            .context("resuming rollouts from the store")?;
        if resumed > 0 {
            info!(resumed, "resumed unfinished rollouts");
        }
        let mut boot = vec![];
        for s in &config.services {
            for e in &s.environments {
                let t = Target {
                    service: s.name.clone(),
                    environment: e.name.clone(),
                };
                let initial = e
                    .initial_build
                    .as_ref()
                    .map(|n| builds.build(&t, n, None))
                    .transpose()
                    .map_err(anyhow::Error::msg)?;
                boot.push((t, initial));
            }
        }
        engine
            .bootstrap(&boot)
            .await
            .context("bringing releases up")?;
        tokio::spawn(engine.clone().run_baselines(targets(&config)));

        let alerts = api::alertmanager::router(api::alertmanager::AlertmanagerState::new(
            Arc::new(dispatcher.clone()),
            Arc::new(StoreReleases(store.clone())),
            config
                .services
                .first()
                .and_then(|s| s.environments.first())
                .map_or("production", |e| e.name.as_str()),
        ));
        let info_platform = platform.clone();
        let state = ApiState {
            engine: engine.clone(),
            builds: builds.clone(),
            registry: Arc::new(registry),
            token: token.map(Arc::from),
            target_info: Arc::new(move |t: &Target| {
                let addr = info_platform.router_addr(t).ok().map(|a| a.to_string());
                let totals = info_platform.router_totals(t).ok();
                serde_json::json!({
                    "router": addr,
                    "router_requests": totals.as_ref().map(|x| x.requests),
                    "router_failures": totals.as_ref().map(|x| x.failures),
                })
            }),
            cluster: None,
        };
        let app = api::router(state, Some(alerts));
        let listener = tokio::net::TcpListener::bind(listen)
            .await
            .with_context(|| format!("binding the API to {listen}"))?;
        let api_addr = listener.local_addr().context("reading the API address")?;
        let api_shutdown = tokio_util::sync::CancellationToken::new();
        let stop = api_shutdown.clone();
        let api_task = tokio::spawn(async move {
            if let Err(e) = axum::serve(listener, app)
                .with_graceful_shutdown(async move { stop.cancelled().await })
                .await
            {
                warn!(error = %e, "API server stopped");
            }
        });
        info!(api = %api_addr, status_page = %format!("http://{api_addr}/"), store = %config.store.display(), ultra_boost = %ultra_boost.display(), "guard is serving");
        Ok(Self {
            config,
            engine,
            platform,
            builds,
            api_addr,
            dispatcher,
            signals,
            api_shutdown,
            api_task,
        })
    }

    /// Stops the engine (state stays in the store), the API and every replica.
    pub async fn stop(self) {
        self.engine.shutdown();
        self.api_shutdown.cancel();
        let _ = tokio::time::timeout(Duration::from_secs(5), self.api_task).await;
        // Before the replicas go: their last scrapes are not failures.
        self.signals.stop();
        self.platform.shutdown().await;
    }
}

struct Tee(Arc<dyn notify::DeliveryLog>, Arc<notify::MemoryLog>);

impl notify::DeliveryLog for Tee {
    fn record(&self, r: notify::DeliveryRecord) {
        self.1.record(r.clone());
        self.0.record(r);
    }

    fn remember(&self, target: &'static str, rollout_id: i64, created: Option<i64>) {
        self.0.remember(target, rollout_id, created);
    }

    fn recall(&self, target: &'static str, rollout_id: i64) -> Option<i64> {
        self.0.recall(target, rollout_id)
    }
}

/// Installs the log subscriber: `RUST_LOG` wins, else `default`.
pub fn init_logs(default: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    // Colours for a person at a terminal, plain text for files and pipes
    // (journald, `2> guard.log`, CI logs).
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr())
        && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty());
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(ansi)
        .try_init();
}

pub async fn run(args: Args) -> anyhow::Result<i32> {
    init_logs("info");
    let config = config::load(&args.config)?;
    let rt = Runtime::start(
        config,
        RuntimeOptions {
            ultra_boost_bin: args.ultra_boost_bin,
            listen: args.listen,
            memory_log: None,
        },
    )
    .await?;
    if let Some(path) = &args.address_file {
        let tmp = path.with_extension("tmp");
        std::fs::write(&tmp, rt.api_addr.to_string())
            .with_context(|| format!("writing {}", tmp.display()))?;
        std::fs::rename(&tmp, path).with_context(|| format!("writing {}", path.display()))?;
    }
    for t in targets(&rt.config) {
        if let Ok(addr) = rt.platform.router_addr(&t) {
            info!(service = %t.service, environment = %t.environment, router = %addr, "router listening");
        }
    }
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .context("installing SIGTERM handler")?;
    tokio::select! {
        _ = tokio::signal::ctrl_c() => info!("SIGINT: stopping"),
        _ = term.recv() => info!("SIGTERM: stopping"),
    }
    rt.stop().await;
    if let Some(path) = &args.address_file {
        // The address is no longer served; a stale file would send clients there.
        let _ = std::fs::remove_file(path);
    }
    Ok(0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::alertmanager::ReleaseLookup;
    use crate::store::{NewRollout, RolloutKind, Transition};

    /// An alert during the watch after a promote names the watched release.
    #[test]
    fn the_suspect_of_an_alert_during_the_watch_is_the_watched_release() {
        let store = Arc::new(Store::in_memory().expect("store"));
        let build = |n: &str| Build {
            number: n.into(),
            commit: None,
            image: None,
            command: vec![],
            env: Default::default(),
        };
        let target = Target {
            service: "web".into(),
            environment: "production".into(),
        };
        let mut at = 0;
        let mut promote = |stable: &str, candidate: &str, watched: bool| {
            let id = store
                .create_rollout(
                    &NewRollout {
                        target: target.clone(),
                        strategy: Strategy::Rolling,
                        kind: RolloutKind::Deploy,
                        stable: Some(build(stable)),
                        candidate: build(candidate),
                        phase: Phase::Pending,
                        requested_by: "test".into(),
                    },
                    at,
                )
                .expect("create");
            let mut from = Phase::Pending;
            let mut path = vec![
                Phase::Promoting {
                    reason: "passed".into(),
                },
                Phase::Watching {
                    until_ms: at + 60_000,
                },
            ];
            if !watched {
                path.push(Phase::Promoted);
            }
            for to in path {
                at += 1;
                store
                    .record_transition(&Transition {
                        id,
                        from: &from,
                        to: &to,
                        cause: "test",
                        detail: None,
                        evidence: None,
                        at_ms: at,
                    })
                    .expect("transition");
                from = to;
            }
        };
        promote("5", "6", false);
        promote("6", "7", true);
        let suspect = StoreReleases(store.clone())
            .last_promoted(Some("web"), "production")
            .expect("a suspect");
        assert_eq!(suspect.build, "7");
    }
}
