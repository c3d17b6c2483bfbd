//! The rollout engine: drives each rollout through the [`phase`] state machine,
//! reading signals every tick, asking the judge, acting on the platform and
//! recording every step in the [`Store`].
//!
//! # Flow of one rollout (and where a crash may happen)
//! 1. `deploy` records the rollout as `pending` (one active rollout per target:
//!    the store refuses a second).
//! 2. The rollout task computes the next phase with [`phase::transition`] and
//!    **stores it first**, then performs the phase's platform action
//!    (`shift`, `promote`, `revert`). A crash between the two leaves the new
//!    phase in the store with its action maybe done: on restart the action runs
//!    again, which is safe because platform actions are idempotent.
//! 3. While verifying, every tick: observe the platform, take a cumulative
//!    [`Snapshot`] from the signal source, difference it against the counts at
//!    the start of the step (never negative), and feed the judge. A source
//!    that errs or goes stale holds the rollout (never a blind promote).
//! 4. After a promote the release is watched for the configured period;
//!    attributable burn still reverts it.
//! 5. Every [`EngineSettings::checkpoint_every`] the step's judge is saved to
//!    the store; on restart it is taken up again (same step, same policy and
//!    SLOs) and the first read after it only sets the counters' zero.
//!
//! Guarantees: each transition is in the store before its action; each
//! terminal phase is reached once; notifications are sent after the
//! transition is stored, and kept in the store until every notifier has
//! answered (`guard serve` sends the unanswered ones again when it starts:
//! at least once).

pub mod judge_adapter;
pub mod judging;
pub mod phase;
pub mod sim;

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, oneshot};
use tracing::{info, warn};

use crate::metrics::GuardMetrics;
use crate::platform::{Build, Platform, PlatformError, Strategy, Target};
use crate::signals::{Counts, SignalError, SignalSource, Snapshot};
use crate::store::{NewRollout, RolloutKind, RolloutRecord, Store, StoreError, Transition};
use judging::{JudgeFactory, SloCounts, Tick, Verifier};
use phase::{Action, Command, Decision, HoldCause, Input, Phase, Plan, Refused};

/// Errors from the engine's entry points.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    /// The store failed or refused (e.g. the target is busy).
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The command does not apply in the rollout's phase.
    #[error(transparent)]
    Refused(#[from] Refused),
    /// The rollout is not running in this guard (finished, or unknown).
    #[error("rollout {0} is not in progress")]
    NotActive(i64),
    /// Rollback asked for a build guard does not know for this target.
    #[error("no build {build:?} known for {service} in {environment}")]
    UnknownBuild {
        service: String,
        environment: String,
        build: String,
    },
    /// Rollback without a previous release to go back to.
    #[error("{service} in {environment} has no previous release to roll back to")]
    NothingToRollBack {
        service: String,
        environment: String,
    },
    /// Rollback to the build that runs already: nothing would change.
    #[error(
        "build {build} already runs for {service} in {environment}; nothing to roll back (without --to a rollback goes to the build the last promoted release replaced; --to BUILD names another)"
    )]
    AlreadyRunning {
        service: String,
        environment: String,
        build: String,
    },
    /// The engine is shutting down.
    #[error("guard is shutting down")]
    ShuttingDown,
}

/// Per-target rollout shape.
#[derive(Clone, Debug, PartialEq)]
pub struct TargetSettings {
    /// Candidate share at each rolling step (fraction of replicas replaced).
    pub rolling_steps: Vec<f64>,
    /// Router weight at each canary step; promotion then moves to 100 %.
    pub canary_steps: Vec<f64>,
    /// How long a promoted release stays watched.
    pub watch: Duration,
    /// SLO names the judge evaluates (as the signal source names them).
    pub slos: Vec<String>,
}

impl Default for TargetSettings {
    fn default() -> Self {
        Self {
            rolling_steps: vec![0.5, 1.0],
            canary_steps: vec![0.05, 0.25, 0.5],
            watch: Duration::from_secs(60),
            slos: vec!["availability".into()],
        }
    }
}

/// Engine-wide settings.
#[derive(Clone, Debug)]
pub struct EngineSettings {
    /// Verification tick (1 s in production).
    pub tick: Duration,
    /// A source silent for longer than this holds the rollout.
    pub stale_after: Duration,
    /// The rolling window over which the stable release's error ratio is
    /// measured before a rollout (the baseline).
    pub baseline_window: Duration,
    /// Minimum stable events in a step for the live stable counts to replace the
    /// pre-rollout baseline.
    pub live_baseline_min_events: u64,
    /// Per-target settings; targets not listed get `default_target`.
    pub targets: HashMap<Target, TargetSettings>,
    pub default_target: TargetSettings,
    /// Base URL of the status pages for notifications (`{base}/rollouts/{id}`).
    pub status_url: Option<String>,
    /// How often a verifying rollout's judge state is saved to the store, so a
    /// restarted guard goes on from the evidence gathered so far (at most
    /// this much of it is lost in a crash).
    pub checkpoint_every: Duration,
    /// Pause between storing a phase and performing its platform action.
    /// Zero in production; crash tests widen the window in which guard is
    /// killed "after the store, before the action".
    pub action_delay: Duration,
}

impl Default for EngineSettings {
    fn default() -> Self {
        Self {
            tick: Duration::from_secs(1),
            stale_after: Duration::from_secs(5),
            baseline_window: Duration::from_secs(300),
            live_baseline_min_events: 50,
            targets: HashMap::new(),
            default_target: TargetSettings::default(),
            status_url: None,
            checkpoint_every: Duration::from_secs(5),
            action_delay: Duration::ZERO,
        }
    }
}

impl EngineSettings {
    fn target(&self, t: &Target) -> &TargetSettings {
        self.targets.get(t).unwrap_or(&self.default_target)
    }
}

/// Where notifications go. Implementations must not block: queue and return.
pub trait EventSink: Send + Sync + 'static {
    fn send(&self, event: notify::Event);

    /// The notifiers events go to, by the names deliveries are logged under;
    /// events to none are not kept for a resend.
    fn notifiers(&self) -> Vec<String> {
        Vec::new()
    }
}

/// Drops every event (no notifications configured).
pub struct NoEvents;
impl EventSink for NoEvents {
    fn send(&self, _event: notify::Event) {}
}

/// What a running rollout looks like now, beyond what the store holds.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct LiveStatus {
    pub phase: Option<Phase>,
    /// The judge's latest numbers for the step being verified.
    pub evidence: Option<notify::Evidence>,
    /// The latest decision or hold reason, in words.
    pub note: Option<String>,
    /// `false` while the signal source is down or stale.
    pub source_ok: bool,
    /// Candidate events seen in the current step, all SLOs summed.
    pub events: u64,
    /// Per-SLO candidate and live-baseline counts summed over the current step.
    pub slos: BTreeMap<String, SloCounts>,
    /// The judge's full per-SLO evidence (JSON) from the latest tick.
    pub detail: Option<serde_json::Value>,
}

struct Handle {
    commands: mpsc::Sender<(Command, oneshot::Sender<Result<Phase, EngineError>>)>,
    status: Arc<Mutex<LiveStatus>>,
}

/// Rolling window of the stable release's cumulative counts per target.
#[derive(Default)]
struct BaselineWindow {
    build: String,
    samples: VecDeque<(i64, BTreeMap<String, Counts>)>,
}

impl BaselineWindow {
    fn push(&mut self, build: &str, at_ms: i64, counts: BTreeMap<String, Counts>, window_ms: i64) {
        if self.build != build {
            self.build = build.to_string();
            self.samples.clear();
        }
        self.samples.push_back((at_ms, counts));
        while self
            .samples
            .front()
            .is_some_and(|(t, _)| at_ms - t > window_ms)
            && self.samples.len() > 2
        {
            self.samples.pop_front();
        }
    }

    /// Counts over the window, per SLO.
    fn delta(&self, build: &str) -> BTreeMap<String, Counts> {
        if self.build != build {
            return BTreeMap::new();
        }
        match (self.samples.front(), self.samples.back()) {
            (Some((_, first)), Some((_, last))) => diff_all(last, first),
            _ => BTreeMap::new(),
        }
    }
}

/// `now - then` per SLO, never negative.
fn diff_all(
    now: &BTreeMap<String, Counts>,
    then: &BTreeMap<String, Counts>,
) -> BTreeMap<String, Counts> {
    now.iter()
        .map(|(slo, c)| {
            let base = then.get(slo).copied().unwrap_or_default();
            (slo.clone(), diff(*c, base))
        })
        .collect()
}

/// One SLO's counts between two cumulative reads, never negative; `good <= total`.
pub fn diff(now: Counts, then: Counts) -> Counts {
    let total = now.total.saturating_sub(then.total);
    let good = now.good.saturating_sub(then.good).min(total);
    Counts { good, total }
}

fn counts_of(snapshot: &Snapshot, build: &str) -> Option<BTreeMap<String, Counts>> {
    snapshot
        .releases
        .iter()
        .find(|r| r.build == build)
        .map(|r| r.by_slo.clone())
}

/// Unix milliseconds now.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

/// The engine. Cheap to share (`Arc<Engine>`).
pub struct Engine {
    store: Arc<Store>,
    platform: Arc<dyn Platform>,
    source: Arc<dyn SignalSource>,
    judge: Arc<dyn JudgeFactory>,
    events: Arc<dyn EventSink>,
    metrics: Arc<GuardMetrics>,
    settings: EngineSettings,
    live: Mutex<HashMap<i64, Handle>>,
    baselines: Mutex<HashMap<Target, BaselineWindow>>,
    shutdown: tokio_util::sync::CancellationToken,
}

impl Engine {
    pub fn new(
        store: Arc<Store>,
        platform: Arc<dyn Platform>,
        source: Arc<dyn SignalSource>,
        judge: Arc<dyn JudgeFactory>,
        events: Arc<dyn EventSink>,
        metrics: Arc<GuardMetrics>,
        settings: EngineSettings,
    ) -> Arc<Self> {
        Arc::new(Self {
            store,
            platform,
            source,
            judge,
            events,
            metrics,
            settings,
            live: Mutex::new(HashMap::new()),
            baselines: Mutex::new(HashMap::new()),
            shutdown: tokio_util::sync::CancellationToken::new(),
        })
    }

    pub fn store(&self) -> &Arc<Store> {
        &self.store
    }

    pub fn metrics(&self) -> &Arc<GuardMetrics> {
        &self.metrics
    }

    /// Stops every rollout task at its next await point (their state is in the store).
    pub fn shutdown(&self) {
        self.shutdown.cancel();
    }

    /// Resumes every rollout the store holds as active (after a restart).
    /// Returns how many were resumed.
    pub fn resume(self: &Arc<Self>) -> Result<usize, EngineError> {
        let active = self.store.active_rollouts()?;
        let n = active.len();
        for record in active {
            info!(rollout = record.id, service = %record.target.service, environment = %record.target.environment,
                  phase = record.phase.name(), "resuming rollout recorded before the restart");
            self.spawn(record, true);
        }
        Ok(n)
    }

    /// Brings every idle target's recorded release back up (a restarted local
    /// platform runs nothing), and gives a target with no history its initial
    /// build (recorded as a first release: promoted without verification).
    /// Targets with an active rollout are left to [`Engine::resume`].
    pub async fn bootstrap(
        self: &Arc<Self>,
        targets: &[(Target, Option<Build>)],
    ) -> Result<(), EngineError> {
        for (target, initial) in targets {
            if self
                .store
                .rollouts(Some(target), 1)?
                .iter()
                .any(|r| r.active)
            {
                continue;
            }
            match self.store.release(target)? {
                Some(build) => {
                    info!(service = %target.service, environment = %target.environment, build = %build.number,
                          "bringing the recorded release up");
                    let mut attempt = 0u32;
                    while let Err(e) = self.platform.revert(target, &build).await {
                        attempt += 1;
                        warn!(service = %target.service, environment = %target.environment, error = %e, attempt,
                              "could not bring the recorded release up; retrying");
                        if attempt >= 3 {
                            break;
                        }
                        tokio::time::sleep(Duration::from_secs(1)).await;
                    }
                }
                None => {
                    if let Some(build) = initial {
                        self.deploy(target, build.clone(), Strategy::Rolling, "initial")?;
                    }
                }
            }
        }
        Ok(())
    }

    /// Starts a rollout of `candidate` for `target`, verifying it against the
    /// release guard last recorded for the target (none: first release, promoted
    /// without verification).
    pub fn deploy(
        self: &Arc<Self>,
        target: &Target,
        candidate: Build,
        strategy: Strategy,
        requested_by: &str,
    ) -> Result<i64, EngineError> {
        let stable = self.store.release(target)?;
        self.create(
            target,
            stable,
            candidate,
            strategy,
            RolloutKind::Deploy,
            requested_by,
        )
    }

    /// Like [`Engine::deploy`], but verifying against `stable` as the platform
    /// reports it (kubernetes: what the Deployment runs), not guard's history.
    pub fn deploy_over(
        self: &Arc<Self>,
        target: &Target,
        stable: Option<Build>,
        candidate: Build,
        strategy: Strategy,
        requested_by: &str,
    ) -> Result<i64, EngineError> {
        self.create(
            target,
            stable,
            candidate,
            strategy,
            RolloutKind::Deploy,
            requested_by,
        )
    }

    /// Entry point for platforms that notice a rollout themselves (kubernetes):
    /// verify `candidate` against `stable`.
    pub fn start_rollout(
        self: &Arc<Self>,
        target: Target,
        stable: Build,
        candidate: Build,
        strategy: Strategy,
    ) -> Result<i64, EngineError> {
        self.create(
            &target,
            Some(stable),
            candidate,
            strategy,
            RolloutKind::Deploy,
            "platform",
        )
    }

    /// Puts an older build back by hand: aborts the active rollout if there is
    /// one (and `to` is not given), else reverts to `to` or the previous release.
    pub async fn rollback(
        self: &Arc<Self>,
        target: &Target,
        to: Option<&str>,
        requested_by: &str,
    ) -> Result<i64, EngineError> {
        let active = self
            .store
            .rollouts(Some(target), 1)?
            .into_iter()
            .find(|r| r.active);
        if let Some(active) = active {
            if to.is_none() || to == active.stable.as_ref().map(|b| b.number.as_str()) {
                self.command(active.id, Command::Abort).await?;
                return Ok(active.id);
            }
            return Err(StoreError::Busy {
                service: target.service.clone(),
                environment: target.environment.clone(),
                id: active.id,
            }
            .into());
        }
        let current =
            self.store
                .release(target)?
                .ok_or_else(|| EngineError::NothingToRollBack {
                    service: target.service.clone(),
                    environment: target.environment.clone(),
                })?;
        let back =
            match to {
                Some(number) => self.store.find_build(target, number)?.ok_or_else(|| {
                    EngineError::UnknownBuild {
                        service: target.service.clone(),
                        environment: target.environment.clone(),
                        build: number.to_string(),
                    }
                })?,
                None => self.store.previous_release(target)?.ok_or_else(|| {
                    EngineError::NothingToRollBack {
                        service: target.service.clone(),
                        environment: target.environment.clone(),
                    }
                })?,
            };
        if back.number == current.number {
            return Err(EngineError::AlreadyRunning {
                service: target.service.clone(),
                environment: target.environment.clone(),
                build: back.number,
            });
        }
        // A rollback is a rollout whose "stable" is the build to go back to and
        // whose "candidate" is what runs now; it goes straight to reverting.
        self.create(
            target,
            Some(back),
            current,
            Strategy::Rolling,
            RolloutKind::Rollback,
            requested_by,
        )
    }

    fn create(
        self: &Arc<Self>,
        target: &Target,
        stable: Option<Build>,
        candidate: Build,
        strategy: Strategy,
        kind: RolloutKind,
        requested_by: &str,
    ) -> Result<i64, EngineError> {
        if self.shutdown.is_cancelled() {
            return Err(EngineError::ShuttingDown);
        }
        let phase = match kind {
            RolloutKind::Deploy => Phase::Pending,
            RolloutKind::Rollback => Phase::Reverting {
                reason: format!(
                    "rollback to build {} by hand",
                    stable.as_ref().map_or("?", |b| b.number.as_str())
                ),
                cause: phase::RevertCause::Rollback,
            },
        };
        let new = NewRollout {
            target: target.clone(),
            strategy,
            kind,
            stable,
            candidate,
            phase,
            requested_by: requested_by.to_string(),
        };
        let id = self.store.create_rollout(&new, now_ms())?;
        info!(rollout = id, service = %target.service, environment = %target.environment, build = %new.candidate.number,
              strategy = ?strategy, kind = ?kind, requested_by, "rollout recorded");
        let record = self.store.rollout(id)?;
        self.spawn(record, false);
        Ok(id)
    }

    /// Sends a person's command to a running rollout; returns its new phase.
    pub async fn command(&self, id: i64, cmd: Command) -> Result<Phase, EngineError> {
        let sender = {
            let live = self.live.lock().unwrap_or_else(|p| p.into_inner());
            live.get(&id).map(|h| h.commands.clone())
        };
        let Some(sender) = sender else {
            let record = self.store.rollout(id)?;
            if record.phase.is_terminal() {
                return Err(Refused {
                    command: cmd.name(),
                    phase: record.phase.name(),
                }
                .into());
            }
            return Err(EngineError::NotActive(id));
        };
        let (tx, rx) = oneshot::channel();
        sender
            .send((cmd, tx))
            .await
            .map_err(|_| EngineError::NotActive(id))?;
        rx.await.map_err(|_| EngineError::NotActive(id))?
    }

    /// Live status of a running rollout (`None` when not running here).
    pub fn live_status(&self, id: i64) -> Option<LiveStatus> {
        let live = self.live.lock().unwrap_or_else(|p| p.into_inner());
        live.get(&id)
            .map(|h| h.status.lock().unwrap_or_else(|p| p.into_inner()).clone())
    }

    /// Ids of the rollouts running in this guard.
    pub fn running(&self) -> Vec<i64> {
        let live = self.live.lock().unwrap_or_else(|p| p.into_inner());
        let mut ids: Vec<i64> = live.keys().copied().collect();
        ids.sort_unstable();
        ids
    }

    /// Samples the stable release of every idle target once, to keep the
    /// pre-rollout baseline window filled. Call every tick (see [`Engine::run_baselines`]).
    pub async fn sample_baselines(&self, targets: &[Target]) {
        let window_ms =
            i64::try_from(self.settings.baseline_window.as_millis()).unwrap_or(i64::MAX);
        let reads = targets.iter().map(|t| async move {
            let observed = self.platform.observe(t).await.ok()?;
            let stable = observed.stable.clone()?;
            let snap = self.source.snapshot(t, &observed.endpoints).await.ok()?;
            Some((t.clone(), stable.clone(), counts_of(&snap, &stable)?))
        });
        let results = futures::future::join_all(reads).await;
        let now = now_ms();
        let mut baselines = self.baselines.lock().unwrap_or_else(|p| p.into_inner());
        for (target, build, counts) in results.into_iter().flatten() {
            baselines
                .entry(target)
                .or_default()
                .push(&build, now, counts, window_ms);
        }
    }

    /// Keeps the baseline windows of `targets` filled until shutdown.
    pub async fn run_baselines(self: Arc<Self>, targets: Vec<Target>) {
        let mut tick = tokio::time::interval(self.settings.tick);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = self.shutdown.cancelled() => return,
                _ = tick.tick() => self.sample_baselines(&targets).await,
            }
        }
    }

    fn pre_rollout_baseline(&self, target: &Target, stable: &str) -> BTreeMap<String, Counts> {
        let baselines = self.baselines.lock().unwrap_or_else(|p| p.into_inner());
        baselines
            .get(target)
            .map(|w| w.delta(stable))
            .unwrap_or_default()
    }

    fn spawn(self: &Arc<Self>, record: RolloutRecord, resumed: bool) {
        let (tx, rx) = mpsc::channel(8);
        let status = Arc::new(Mutex::new(LiveStatus {
            phase: Some(record.phase.clone()),
            source_ok: true,
            ..LiveStatus::default()
        }));
        {
            let mut live = self.live.lock().unwrap_or_else(|p| p.into_inner());
            live.insert(
                record.id,
                Handle {
                    commands: tx,
                    status: status.clone(),
                },
            );
        }
        self.metrics.rollouts_active.inc();
        let engine = self.clone();
        tokio::spawn(async move {
            let id = record.id;
            let mut task = RolloutTask::new(engine.clone(), record, rx, status);
            if resumed {
                task.restore_verifier();
                task.restore().await;
            }
            task.run().await;
            engine.metrics.rollouts_active.dec();
            let mut live = engine.live.lock().unwrap_or_else(|p| p.into_inner());
            live.remove(&id);
        });
    }
}

type CommandRx = mpsc::Receiver<(Command, oneshot::Sender<Result<Phase, EngineError>>)>;

/// One rollout being driven.
struct RolloutTask {
    engine: Arc<Engine>,
    record: RolloutRecord,
    plan: Plan,
    commands: CommandRx,
    status: Arc<Mutex<LiveStatus>>,
    /// Judge state for the step being verified (kept into the watch).
    verifier: Option<Box<dyn Verifier>>,
    step: Option<usize>,
    /// Cumulative counts at the previous successful read, per build.
    prev_candidate: Option<BTreeMap<String, Counts>>,
    prev_stable: Option<BTreeMap<String, Counts>>,
    prev_tick_ms: i64,
    /// The stable release's counts over the window before the rollout.
    pre_baseline: BTreeMap<String, Counts>,
    /// When the source was last read successfully.
    last_good_read_ms: i64,
    /// Watch time spent without a usable read; the watch is stretched by it,
    /// because an unobserved minute is not a good minute.
    watch_blind_ms: i64,
    /// Since when the source is down during the watch, if it is.
    watch_blind_since_ms: Option<i64>,
    action_failures: u32,
    /// The judge's latest numbers, attached to the verdict's transition.
    last_evidence: Option<notify::Evidence>,
    /// When the judge state was last saved to the store.
    checkpoint_at_ms: i64,
    /// Set when a judge was restored after a restart: the first read sets
    /// the counters' zero (the counts read before the restart are gone).
    rebase: bool,
}

/// The outbox sweep after each notification looks at the ones older than
/// this: younger ones are still being delivered, so looking would only find
/// them unanswered.
const NOTICE_SWEEP_AGE_MS: i64 = 60_000;

/// The candidate's events in a step as the status reports them: the most
/// any one SLO counted.
fn candidate_events(slos: &BTreeMap<String, SloCounts>) -> u64 {
    slos.values().map(|c| c.candidate.total).max().unwrap_or(0)
}

/// What the engine saves of a step's verification ([`Store::save_judge_checkpoint`]).
#[derive(Debug, Serialize, Deserialize)]
struct VerificationCheckpoint {
    /// The step the judge was made for (kept into the watch after the last).
    step: Option<usize>,
    /// [`Verifier::checkpoint`].
    verifier: serde_json::Value,
    /// The step's counts so far, for the status page.
    slos: BTreeMap<String, SloCounts>,
}

impl RolloutTask {
    fn new(
        engine: Arc<Engine>,
        record: RolloutRecord,
        commands: CommandRx,
        status: Arc<Mutex<LiveStatus>>,
    ) -> Self {
        let ts = engine.settings.target(&record.target);
        let steps = match record.strategy {
            Strategy::Rolling => ts.rolling_steps.clone(),
            Strategy::Canary => ts.canary_steps.clone(),
        };
        let plan = Plan {
            steps,
            watch_ms: i64::try_from(ts.watch.as_millis()).unwrap_or(i64::MAX),
            verify: record.stable.is_some() && record.kind == RolloutKind::Deploy,
        };
        let pre_baseline = record
            .stable
            .as_ref()
            .map(|s| engine.pre_rollout_baseline(&record.target, &s.number))
            .unwrap_or_default();
        Self {
            engine,
            record,
            plan,
            commands,
            status,
            verifier: None,
            step: None,
            prev_candidate: None,
            prev_stable: None,
            prev_tick_ms: now_ms(),
            pre_baseline,
            last_good_read_ms: now_ms(),
            watch_blind_ms: 0,
            watch_blind_since_ms: None,
            action_failures: 0,
            last_evidence: None,
            checkpoint_at_ms: now_ms(),
            rebase: false,
        }
    }

    /// After a restart, takes up the judge of the step being verified from
    /// its last checkpoint, so the tests go on with the evidence gathered
    /// so far: a restart neither hands a bad release a fresh start nor gives
    /// a good one a second chance to be reverted wrongly.
    fn restore_verifier(&mut self) {
        let step = match &self.record.phase {
            Phase::Verifying { step, .. }
            | Phase::Paused { step, .. }
            | Phase::Held { step, .. } => *step,
            // The watch goes on with the last step's judge.
            Phase::Watching { .. } => match self.plan.steps.len().checked_sub(1) {
                Some(last) => last,
                None => return,
            },
            _ => return,
        };
        let saved = match self.engine.store.judge_checkpoint(self.id()) {
            Ok(Some(saved)) => saved,
            Ok(None) => return,
            Err(e) => {
                warn!(rollout = self.id(), error = %e, "judge checkpoint unreadable; verifying the step afresh");
                return;
            }
        };
        let checkpoint: VerificationCheckpoint = match serde_json::from_value(saved) {
            Ok(c) => c,
            Err(e) => {
                warn!(rollout = self.id(), error = %e, "judge checkpoint unreadable; verifying the step afresh");
                return;
            }
        };
        if checkpoint.step != Some(step) {
            info!(
                rollout = self.id(),
                "judge checkpoint is of an earlier step; verifying this one afresh"
            );
            return;
        }
        let Some(verifier) = self
            .engine
            .judge
            .restore(&self.record.target, &checkpoint.verifier)
        else {
            return;
        };
        self.verifier = Some(verifier);
        self.step = checkpoint.step;
        self.rebase = true;
        let mut st = self.status.lock().unwrap_or_else(|p| p.into_inner());
        st.events = candidate_events(&checkpoint.slos);
        st.slos = checkpoint.slos;
        info!(rollout = self.id(), step = ?self.step, events = st.events,
              "judge restored from its checkpoint; verification goes on with the evidence gathered before the restart");
    }

    /// Saves the judge state if [`EngineSettings::checkpoint_every`] has passed.
    fn checkpoint(&mut self, now: i64) {
        let every =
            i64::try_from(self.engine.settings.checkpoint_every.as_millis()).unwrap_or(i64::MAX);
        if now - self.checkpoint_at_ms < every {
            return;
        }
        self.checkpoint_at_ms = now;
        let Some(verifier) = self.verifier.as_ref().and_then(|v| v.checkpoint()) else {
            return;
        };
        let slos = self
            .status
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .slos
            .clone();
        let checkpoint = VerificationCheckpoint {
            step: self.step,
            verifier,
            slos,
        };
        let saved = serde_json::to_value(&checkpoint)
            .map_err(|e| e.to_string())
            .and_then(|v| {
                self.engine
                    .store
                    .save_judge_checkpoint(self.id(), &v, now)
                    .map_err(|e| e.to_string())
            });
        if let Err(e) = saved {
            // Only a restart would miss it, and then it verifies afresh.
            warn!(rollout = self.id(), error = %e, "could not save the judge checkpoint");
        }
    }

    fn id(&self) -> i64 {
        self.record.id
    }

    /// After a restart, puts the platform back where the recorded phase says
    /// it is, for phases whose action already completed (a verifying rollout
    /// had its traffic shifted; a watched one was promoted). Platform calls are
    /// idempotent, so this is harmless where nothing was lost.
    async fn restore(&mut self) {
        let action = match &self.record.phase {
            Phase::Verifying { share, .. }
            | Phase::Paused { share, .. }
            | Phase::Held { share, .. } => Action::Shift { share: *share },
            Phase::Watching { .. } => Action::Promote,
            _ => return,
        };
        let mut attempt = 0u32;
        loop {
            match self.act(action).await {
                None | Some(Input::Acted) => return,
                Some(Input::ActionFailed { detail, .. }) => {
                    attempt += 1;
                    warn!(rollout = self.id(), phase = self.record.phase.name(), %detail, attempt,
                          "could not restore the platform after the restart; retrying");
                    if attempt >= 5 {
                        // Go on: the tick will see no data and the source rules hold the rollout.
                        return;
                    }
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
                Some(_) => return,
            }
        }
    }

    async fn run(&mut self) {
        let mut tick = tokio::time::interval(self.engine.settings.tick);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        while !self.record.phase.is_terminal() {
            if self.engine.shutdown.is_cancelled() {
                return;
            }
            let phase = self.record.phase.clone();
            let input = match phase.action() {
                Action::Shift { share } => self.act(Action::Shift { share }).await,
                Action::Promote | Action::Revert => self.act(phase.action()).await,
                Action::None => match phase {
                    Phase::Pending => Some(Input::Begin),
                    _ => {
                        tokio::select! {
                            _ = self.engine.shutdown.cancelled() => return,
                            cmd = self.commands.recv() => {
                                if let Some((cmd, reply)) = cmd {
                                    let result = self.apply(&Input::Command(cmd), &format!("command:{}", cmd.name()), None);
                                    let _ = reply.send(result);
                                }
                                continue;
                            }
                            _ = tick.tick() => self.observe().await,
                        }
                    }
                },
            };
            let Some(input) = input else { continue };
            let cause = match &input {
                Input::Begin => "begin",
                Input::Acted => "acted",
                Input::ActionFailed { .. } => "action_failed",
                Input::Judged(_) => "verdict",
                Input::SourceDown { .. } => "source_down",
                Input::SourceUp => "source_up",
                Input::WatchElapsed => "watch_elapsed",
                Input::Command(_) => "command",
            };
            if let Input::ActionFailed { detail, .. } = &input {
                self.action_failures += 1;
                warn!(rollout = self.id(), phase = phase.name(), attempt = self.action_failures, %detail,
                      "platform action failed; retrying");
            }
            let _ = self.apply(&input, cause, None);
            if matches!(input, Input::ActionFailed { .. }) && self.record.phase == phase {
                // Retry with backoff, still answering commands (an abort must get through).
                let wait =
                    Duration::from_millis(500u64.saturating_mul(1 << self.action_failures.min(5)));
                tokio::select! {
                    _ = self.engine.shutdown.cancelled() => return,
                    _ = tokio::time::sleep(wait) => {}
                    cmd = self.commands.recv() => {
                        if let Some((cmd, reply)) = cmd {
                            let result = self.apply(&Input::Command(cmd), &format!("command:{}", cmd.name()), None);
                            let _ = reply.send(result);
                        }
                    }
                }
            }
        }
        // Answer commands that raced with the end.
        while let Ok((cmd, reply)) = self.commands.try_recv() {
            let _ = reply.send(Err(Refused {
                command: cmd.name(),
                phase: self.record.phase.name(),
            }
            .into()));
        }
    }

    /// Performs the current phase's platform action; `None` when shutting down.
    async fn act(&mut self, action: Action) -> Option<Input> {
        let engine = self.engine.clone();
        if !engine.settings.action_delay.is_zero() && action != Action::None {
            tokio::time::sleep(engine.settings.action_delay).await;
        }
        let target = &self.record.target;
        let candidate = &self.record.candidate;
        let result: Result<(), PlatformError> = match action {
            Action::Shift { share } => match &self.record.stable {
                Some(stable) => {
                    info!(rollout = self.record.id, build = %candidate.number, share, "shifting traffic to the candidate");
                    engine
                        .platform
                        .shift(target, stable, candidate, self.record.strategy, share)
                        .await
                }
                None => Ok(()),
            },
            Action::Promote => {
                info!(rollout = self.record.id, build = %candidate.number, "promoting the candidate to 100 %");
                let r = engine.platform.promote(target, candidate).await;
                if r.is_ok()
                    && let Err(e) =
                        engine
                            .store
                            .set_release(target, candidate, Some(self.record.id), now_ms())
                {
                    warn!(rollout = self.record.id, error = %e, "could not record the release");
                }
                r
            }
            Action::Revert => match &self.record.stable {
                Some(stable) => {
                    info!(rollout = self.record.id, to = %stable.number, from = %candidate.number, "reverting to the previous build");
                    let r = engine.platform.revert(target, stable).await;
                    if r.is_ok()
                        && let Err(e) =
                            engine
                                .store
                                .set_release(target, stable, Some(self.record.id), now_ms())
                    {
                        warn!(rollout = self.record.id, error = %e, "could not record the release");
                    }
                    r
                }
                None => Ok(()),
            },
            Action::None => Ok(()),
        };
        if engine.shutdown.is_cancelled() {
            return None;
        }
        Some(match result {
            Ok(()) => {
                self.action_failures = 0;
                Input::Acted
            }
            Err(e) => Input::ActionFailed {
                candidate_not_ready: matches!(e, PlatformError::NotReady { .. }),
                detail: e.to_string(),
            },
        })
    }

    /// One verification tick: returns the input it leads to, if any.
    async fn observe(&mut self) -> Option<Input> {
        let phase = self.record.phase.clone();
        let now = now_ms();
        if let Phase::Watching { until_ms } = phase
            && self.watch_blind_since_ms.is_none()
            && now >= until_ms.saturating_add(self.watch_blind_ms)
        {
            return Some(Input::WatchElapsed);
        }
        let verifying = matches!(phase, Phase::Verifying { .. } | Phase::Watching { .. });
        // Held because the judge could not decide: still judged, so that
        // conclusive evidence reverts the release before a person gets to it.
        let judge_hold = matches!(
            phase,
            Phase::Held {
                cause: HoldCause::Judge,
                ..
            }
        );
        let source_hold = matches!(
            phase,
            Phase::Held {
                cause: HoldCause::SourceDown,
                ..
            }
        );
        if !verifying && !source_hold && !judge_hold {
            return None;
        }
        let engine = self.engine.clone();
        let target = &self.record.target;
        let read =
            async {
                let observed = engine.platform.observe(target).await.map_err(|e| {
                    SignalError::Unavailable {
                        detail: format!("platform: {e}"),
                    }
                })?;
                engine.source.snapshot(target, &observed.endpoints).await
            };
        let stale_ms = i64::try_from(engine.settings.stale_after.as_millis()).unwrap_or(i64::MAX);
        let snapshot = match read.await {
            Ok(s)
                if s.staleness_seconds
                    .is_some_and(|st| st * 1000.0 <= stale_ms as f64) =>
            {
                Some(s)
            }
            // Answering without series yet is not an outage: an interval without data.
            Err(SignalError::NoData { .. }) => None,
            Ok(s) => {
                let mut detail = match s.staleness_seconds {
                    Some(st) => format!("no complete read for {st:.1} s"),
                    None => "no complete read yet".to_string(),
                };
                if let Some(e) = &s.last_error {
                    detail = format!("{detail}; last error: {e}");
                }
                return self.source_trouble(&phase, now, stale_ms, detail);
            }
            // The hold's reason already says "signal source down".
            Err(SignalError::Unavailable { detail }) => {
                return self.source_trouble(&phase, now, stale_ms, detail);
            }
        };
        self.last_good_read_ms = now;
        if let Some(since) = self.watch_blind_since_ms.take() {
            self.watch_blind_ms = self.watch_blind_ms.saturating_add(now - since);
            info!(
                rollout = self.id(),
                blind_seconds = self.watch_blind_ms as f64 / 1000.0,
                "signal source answers again; the watch is stretched by the time it saw nothing"
            );
        }
        {
            let mut st = self.status.lock().unwrap_or_else(|p| p.into_inner());
            if !st.source_ok {
                st.note = Some("signal source answers again".into());
            }
            st.source_ok = true;
        }
        if source_hold {
            info!(
                rollout = self.id(),
                "signal source answers again; verification resumes"
            );
            return Some(Input::SourceUp);
        }
        match self.judge(&phase, snapshot.as_ref(), true, now) {
            Decision::Continue => None,
            // While held only a revert moves the rollout; the rest waits
            // for a person.
            Decision::Pass { .. } | Decision::Hold { .. } if judge_hold => None,
            decision => Some(Input::Judged(decision)),
        }
    }

    fn source_trouble(
        &mut self,
        phase: &Phase,
        now: i64,
        stale_ms: i64,
        detail: String,
    ) -> Option<Input> {
        {
            let mut st = self.status.lock().unwrap_or_else(|p| p.into_inner());
            st.source_ok = false;
            st.note = Some(format!("signal source: {detail}"));
        }
        if matches!(phase, Phase::Held { .. }) {
            return None;
        }
        // The judge counts the interval as missing data, never as zero traffic.
        let _ = self.judge(phase, None, false, now);
        if now - self.last_good_read_ms >= stale_ms {
            if matches!(phase, Phase::Watching { .. }) {
                // Already promoted: nothing to hold back. The watch does not
                // run out while blind: it is stretched by the outage (the
                // time since the last good read), and `guard promote` ends
                // it by hand.
                if self.watch_blind_since_ms.is_none() {
                    self.watch_blind_since_ms = Some(self.last_good_read_ms);
                    warn!(rollout = self.id(), %detail, "signal source down while watching a promoted release; the watch waits for it (guard promote ends the watch by hand)");
                }
                let mut st = self.status.lock().unwrap_or_else(|p| p.into_inner());
                st.note = Some(format!(
                    "signal source: {detail}; the watch is paused until it answers"
                ));
                return None;
            }
            warn!(rollout = self.id(), %detail, "signal source down: holding the rollout (never promoting blind)");
            return Some(Input::SourceDown { detail });
        }
        None
    }

    /// Feeds the judge one interval; starts a fresh judge at each new step.
    fn judge(
        &mut self,
        phase: &Phase,
        snapshot: Option<&Snapshot>,
        source_ok: bool,
        now: i64,
    ) -> Decision {
        let (step, share) = match phase {
            Phase::Verifying { step, share } | Phase::Held { step, share, .. } => {
                (Some(*step), *share)
            }
            _ => (self.step, 1.0),
        };
        let stable_build = self
            .record
            .stable
            .as_ref()
            .map(|b| b.number.clone())
            .unwrap_or_default();
        let candidate_now = snapshot.and_then(|s| counts_of(s, &self.record.candidate.number));
        let stable_now = snapshot.and_then(|s| counts_of(s, &stable_build));
        if self.verifier.is_none() || step != self.step {
            // A new step (or a resumed watch): fresh judge, counts from here.
            self.step = step;
            self.verifier = Some(self.engine.judge.verifier(
                &self.record.target,
                self.record.strategy,
                &self.pre_baseline,
            ));
            self.prev_candidate = candidate_now;
            self.prev_stable = stable_now;
            self.prev_tick_ms = now;
            let mut st = self.status.lock().unwrap_or_else(|p| p.into_inner());
            st.slos.clear();
            st.events = 0;
            return Decision::Continue;
        }
        if self.rebase && source_ok && candidate_now.is_some() {
            // A restored judge: these cumulative counts include what it has
            // already seen (or start over on restarted replicas); they are
            // the new zero, not new events.
            self.rebase = false;
            self.prev_candidate = candidate_now;
            self.prev_stable = stable_now;
            self.prev_tick_ms = now;
            return Decision::Continue;
        }
        let seconds = ((now - self.prev_tick_ms).max(1)) as f64 / 1000.0;
        self.prev_tick_ms = now;
        let mut slos = BTreeMap::new();
        if source_ok && let Some(cand) = &candidate_now {
            let empty = BTreeMap::new();
            let cand_delta = diff_all(cand, self.prev_candidate.as_ref().unwrap_or(&empty));
            let stable_delta = match &stable_now {
                Some(s) => diff_all(s, self.prev_stable.as_ref().unwrap_or(&empty)),
                None => BTreeMap::new(),
            };
            for slo in &self.engine.settings.target(&self.record.target).slos {
                if let Some(c) = cand_delta.get(slo) {
                    let b = stable_delta.get(slo).copied().unwrap_or_default();
                    slos.insert(
                        slo.clone(),
                        SloCounts {
                            candidate: *c,
                            baseline: b,
                        },
                    );
                }
            }
        }
        if source_ok {
            if candidate_now.is_some() {
                self.prev_candidate = candidate_now;
            }
            if stable_now.is_some() {
                self.prev_stable = stable_now;
            }
        }
        let canary_share = (self.record.strategy == Strategy::Canary
            && matches!(phase, Phase::Verifying { .. })
            && share < 1.0)
            .then_some(share);
        let tick = Tick {
            seconds,
            slos,
            canary_share,
            source_ok,
        };
        let Some(verifier) = self.verifier.as_mut() else {
            return Decision::Continue;
        };
        let verdict = verifier.step(&tick);
        let mut st = self.status.lock().unwrap_or_else(|p| p.into_inner());
        for (name, c) in &tick.slos {
            let e = st.slos.entry(name.clone()).or_default();
            e.candidate.good += c.candidate.good;
            e.candidate.total += c.candidate.total;
            e.baseline.good += c.baseline.good;
            e.baseline.total += c.baseline.total;
        }
        st.events = candidate_events(&st.slos);
        st.evidence = Some(verdict.evidence.clone());
        st.detail = Some(verdict.detail.clone());
        st.note = Some(verdict.reason.clone()).filter(|r| !r.is_empty());
        drop(st);
        self.last_evidence = Some(verdict.evidence);
        self.checkpoint(now);
        verdict.decision
    }

    /// Computes, stores, then adopts the next phase; notifies. Commands that do
    /// not apply are refused without touching the store.
    fn apply(
        &mut self,
        input: &Input,
        cause: &str,
        detail: Option<&str>,
    ) -> Result<Phase, EngineError> {
        let now = now_ms();
        let next = phase::transition(&self.record.phase, input, &self.plan, now)?;
        if next == self.record.phase {
            return Ok(next);
        }
        let reason_owned = match (&next, input) {
            (Phase::Reverting { reason, .. } | Phase::Promoting { reason }, _) => {
                Some(reason.clone())
            }
            (Phase::Held { reason, .. }, _) => Some(reason.clone()),
            (_, Input::ActionFailed { detail, .. }) => Some(detail.clone()),
            _ => detail.map(str::to_string),
        };
        let evidence = if next.verdict().is_some() || matches!(next, Phase::Held { .. }) {
            self.last_evidence.clone()
        } else {
            None
        };
        let t = Transition {
            id: self.record.id,
            from: &self.record.phase,
            to: &next,
            cause,
            detail: reason_owned.as_deref(),
            evidence: evidence.as_ref(),
            at_ms: now,
        };
        if let Err(e) = self.engine.store.record_transition(&t) {
            // Not stored => not acted: stay in the old phase and try again next tick.
            warn!(rollout = self.record.id, error = %e, to = next.name(), "could not record transition; not acting");
            return Err(e.into());
        }
        // An absent reason is left out of the line, not logged as "".
        info!(rollout = self.record.id, service = %self.record.target.service, environment = %self.record.target.environment,
              build = %self.record.candidate.number, from = self.record.phase.name(), to = next.name(), cause,
              reason = reason_owned.as_deref(), "rollout transition");
        let previous = std::mem::replace(&mut self.record.phase, next.clone());
        if next.takes_traffic() && self.record.traffic_at_ms.is_none() {
            self.record.traffic_at_ms = Some(now);
        }
        if next.verdict().is_some() && self.record.verdict_at_ms.is_none() {
            self.record.verdict_at_ms = Some(now);
        }
        {
            let mut st = self.status.lock().unwrap_or_else(|p| p.into_inner());
            st.phase = Some(next.clone());
            if let Phase::Held { reason, .. } = &next {
                st.note = Some(reason.clone());
            }
        }
        self.after_transition(
            &previous,
            &next,
            reason_owned.as_deref().unwrap_or(""),
            evidence,
            now,
        );
        Ok(next)
    }

    fn after_transition(
        &mut self,
        from: &Phase,
        to: &Phase,
        reason: &str,
        evidence: Option<notify::Evidence>,
        now: i64,
    ) {
        use notify::EventKind as K;
        let kind = match (from, to) {
            (Phase::Pending, Phase::Shifting { .. }) => Some(K::Started),
            (_, Phase::Watching { .. }) => Some(K::Promoted),
            (_, Phase::Promoted)
                if !matches!(from, Phase::Watching { .. })
                    && self.record.kind == RolloutKind::Deploy =>
            {
                Some(K::Promoted)
            }
            (_, Phase::Reverted) => Some(K::Reverted),
            (_, Phase::Aborted | Phase::RolledBack) => Some(K::RolledBack),
            (_, Phase::Held { .. }) => Some(K::Held),
            _ => None,
        };
        if to.is_terminal() {
            let verdict = to.verdict().unwrap_or("none");
            self.engine.metrics.rollouts_total(verdict).inc();
            if let Some(s) = self.record.seconds_to_verdict_at(now) {
                self.engine.metrics.time_to_verdict.observe(s);
            }
        }
        let Some(kind) = kind else { return };
        let evidence = evidence
            .or_else(|| self.last_evidence.clone())
            .unwrap_or_default();
        let event = notify::Event {
            kind,
            service: self.record.target.service.clone(),
            environment: self.record.target.environment.clone(),
            previous_build: self.record.stable.as_ref().map(|b| b.number.clone()),
            build: Some(self.record.candidate.number.clone()),
            commit: self.record.candidate.commit.clone(),
            // A promote reaches the watch from `promoting`, whose reason is
            // the judge's; otherwise the kind's own words, never a phase name.
            reason: match from {
                _ if !reason.is_empty() => reason.to_string(),
                Phase::Promoting { reason } | Phase::Reverting { reason, .. } => reason.clone(),
                _ => notify::message::default_reason(kind).to_string(),
            },
            evidence,
            seconds_to_verdict: self.record.seconds_to_verdict_at(now),
            started_at_ms: self.record.traffic_at_ms.unwrap_or(self.record.created_ms),
            ended_at_ms: if to.is_terminal() || matches!(to, Phase::Watching { .. }) {
                Some(now)
            } else {
                None
            },
            status_url: self
                .engine
                .settings
                .status_url
                .as_ref()
                .map(|b| format!("{b}/rollouts/{}", self.record.id)),
            environment_url: None,
            transient: self.record.target.environment.starts_with("pr-"),
            rollout_id: Some(self.record.id),
        };
        // Kept until every notifier has answered, so a guard killed before
        // they did sends it again when it starts (`guard serve`).
        let notifiers = self.engine.events.notifiers();
        if !notifiers.is_empty() {
            let queued = serde_json::to_value(&event)
                .map_err(|e| e.to_string())
                .and_then(|json| {
                    self.engine
                        .store
                        .queue_notice(self.record.id, kind.as_str(), &notifiers, &json, now)
                        .map_err(|e| e.to_string())
                });
            if let Err(e) = queued {
                warn!(rollout = self.id(), error = %e, "could not keep the notification for a resend after a restart");
            }
            // Keep the outbox to what may still need a resend.
            let names: Vec<&str> = notifiers.iter().map(String::as_str).collect();
            if let Err(e) = self
                .engine
                .store
                .forget_answered_notices(&names, now - NOTICE_SWEEP_AGE_MS)
            {
                warn!(rollout = self.id(), error = %e, "could not sweep answered notifications");
            }
        }
        self.engine.events.send(event);
    }
}
