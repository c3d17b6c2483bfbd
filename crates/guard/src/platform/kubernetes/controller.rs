//! The Kubernetes controller loop: guards every opted-in Deployment.
//!
//! Expected flow for one Deployment (labelled `guard.ultra-boost.dev/enabled: "true"`):
//!
//! 1. **Notice.** The Deployment controller made a ReplicaSet for a new pod
//!    template. guard records the rollout in the Deployment's
//!    `guard.ultra-boost.dev/rollout` annotation: phase `verifying`, the
//!    candidate (the current ReplicaSet) and the last good build (the one it
//!    promoted before, or the ReplicaSet of the previous revision). The very
//!    first template guard sees is recorded as phase `baseline`.
//! 2. **Verify.** Every tick the leader reads the signals of the candidate's
//!    pods (and the stable pods while they run) and asks the [`Verifier`].
//! 3. **Act.** `promote`: phase `promoted` is written. `revert`: the previous
//!    ReplicaSet's template goes back into the Deployment
//!    ([`KubernetesPlatform::undo`]) together with phase `reverted` and the
//!    reverted-by/-reason/-to annotations, in one conditional write. `hold`
//!    (or no verdict by the deadline): phase `held`, the Deployment is left
//!    for a person; a held rollout (rolling, or a canary taken over from an
//!    engine, step 4) is still judged by whichever replica leads (from fresh
//!    counts after a failover), and a revert verdict reverts it ("while
//!    held: …"; a canary is aborted).
//!
//! Rollouts started through guard's deploy API (`guard deploy`, the rollout
//! engine of the leading replica) carry `by: engine:<identity>` in the state
//! while they verify; the engine drives them and the controller leaves them
//! alone. When that replica stops leading (killed, partitioned), the engine
//! of the next leader knows nothing of them (its history is per replica), so
//! the controller of the new leader **takes them over**:
//!
//! 4. **Take over.** An engine-marked `verifying` rollout that this replica's
//!    engine does not drive ([`LocalRollouts`]) belongs to a replica that no
//!    longer leads. The controller writes, conditional on the
//!    `resourceVersion` it read, the state with `by: <its identity>` and the
//!    `taken-over-by`/`-from`/`-at` annotations; from then on the rollout is
//!    the controller's and is resumed at step 2 like any other: rolling
//!    candidates as above, canaries against the stable Deployment at the
//!    traffic share they had, promoted with [`canary::promote`] or aborted
//!    with [`canary::abort`]. The conditional write makes the take-over
//!    happen once; a newer rollout (a new template, or a new engine rollout
//!    marked `engine:`) is never judged as the old one.
//! 5. **Take over a watch.** An engine's promote keeps the `engine:` mark on
//!    phase `promoted`; the engine then watches the release (guard.yaml's
//!    `watch`) from its own store. If that replica stops leading within
//!    promote time + `watch`, the new leader takes the watch over the same
//!    way, recording `watch_until` in the state, and judges the release until
//!    then: a revert verdict reverts it ("after promotion: …"), otherwise
//!    `watch_until` is cleared when the time is up and the release stays.
//!
//! Guarantees: only the Lease holder acts; every write carries the
//! `resourceVersion` it was computed from; the revert checks that the judged
//! template is still current (a newer rollout is verified on its own, never
//! reverted). Because the state is on the Deployment, a new leader resumes at
//! step 2; its verifier starts with fresh counts (signals are counted from the
//! moment a guard replica begins watching the release), and the verification
//! deadline runs from the recorded start, so failover never extends it.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::apps::v1::Deployment;
use kube::ResourceExt;
use kube::api::{Api, ListParams};
use kube::runtime::{WatchStreamExt, watcher};
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;

use super::rollout::{self, LABEL_ENABLED, Next, Phase, RolloutState, Side};
use super::{KubernetesPlatform, UndoOutcome, canary, is_status};
use crate::platform::{PlatformError, Role, Strategy, Target};
use crate::signals::{SignalError, SignalSource, Snapshot};

/// A verdict of a [`Verification`] step.
#[derive(Clone, Debug, PartialEq)]
pub enum Decision {
    /// Not enough evidence yet.
    Continue,
    /// The candidate is good.
    Promote { reason: String },
    /// The candidate burns budget: go back to the last good build.
    Revert { reason: String },
    /// guard cannot decide and asks a person.
    Hold { reason: String },
}

/// One candidate's verification, stepped with cumulative signal snapshots.
pub trait Verification: Send {
    /// `snapshot` holds cumulative counts since this verification began;
    /// `elapsed` is the time since the rollout was noticed.
    fn step(&mut self, snapshot: &Snapshot, elapsed: Duration) -> Decision;

    /// The numbers behind the latest decision, for notifications.
    fn evidence(&self) -> notify::Evidence {
        notify::Evidence::default()
    }
}

/// Starts verifications; one per candidate (per leader).
pub trait Verifier: Send + Sync + 'static {
    /// `canary_share` is the candidate's traffic share when it runs as a
    /// canary beside the stable release (the judge then attributes errors by
    /// the conditional binomial, so an outage hitting both is not blamed on
    /// the candidate); `None` for a rolling update.
    fn start(
        &self,
        target: &Target,
        stable: &Side,
        candidate: &Side,
        canary_share: Option<f64>,
    ) -> Box<dyn Verification>;
}

/// What this replica's own rollout engine has in hand.
pub trait LocalRollouts: Send + Sync + 'static {
    /// Whether this replica's engine drives (or, having just become leader,
    /// resumes) a rollout of Deployment `namespace/name`; the controller then
    /// leaves it alone. (By Deployment, not by [`Target`]: several
    /// environments may share a namespace.)
    fn drives(&self, namespace: &str, name: &str) -> bool;
}

/// How the controller runs.
#[derive(Clone, Debug)]
pub struct ControllerSettings {
    /// Only this namespace; `None`: every namespace.
    pub namespace: Option<String>,
    /// How often a verifying rollout is stepped (and everything re-listed).
    pub interval: Duration,
    /// No verdict by then: `held`.
    pub verify_deadline: Duration,
    /// The post-promote watch of each target's engine rollouts (guard.yaml's
    /// `watch`), so that a new leader can finish the watch of a replica that
    /// stopped leading. A target not listed is not watched after a take-over.
    pub watch: HashMap<Target, Duration>,
}

impl Default for ControllerSettings {
    fn default() -> Self {
        ControllerSettings {
            namespace: None,
            interval: Duration::from_secs(2),
            verify_deadline: Duration::from_secs(900),
            watch: HashMap::new(),
        }
    }
}

/// What the controller tells the team (handed to notifiers by the caller).
pub type Events = mpsc::UnboundedSender<notify::Event>;

/// (namespace, Deployment name, candidate `pod-template-hash`).
type RunKey = (String, String, String);

/// Guards opted-in Deployments; see the module docs.
pub struct Controller {
    platform: KubernetesPlatform,
    signals: Arc<dyn SignalSource>,
    verifier: Arc<dyn Verifier>,
    settings: ControllerSettings,
    events: Option<Events>,
    /// Verifications in flight, by (namespace, name, candidate hash).
    running: Mutex<HashMap<RunKey, Box<dyn Verification>>>,
    /// This replica's rollout engine; `None`: there is none, so every
    /// engine-driven rollout in flight is another replica's.
    local: Option<Arc<dyn LocalRollouts>>,
}

/// Errors of one reconcile; logged, never fatal to the loop.
#[derive(Debug, thiserror::Error)]
pub enum ReconcileError {
    /// Reading or writing the cluster failed.
    #[error(transparent)]
    Platform(#[from] PlatformError),
    /// Writing guard's state annotation failed.
    #[error("write rollout state on {deployment}: {source}")]
    State {
        deployment: String,
        source: kube::Error,
    },
}

impl Controller {
    pub fn new(
        platform: KubernetesPlatform,
        signals: Arc<dyn SignalSource>,
        verifier: Arc<dyn Verifier>,
        settings: ControllerSettings,
        events: Option<Events>,
    ) -> Self {
        Controller {
            platform,
            signals,
            verifier,
            settings,
            events,
            running: Mutex::new(HashMap::new()),
            local: None,
        }
    }

    /// Tells the controller which rollouts this replica's engine drives, so
    /// it takes over only those of replicas that no longer lead.
    pub fn with_local_rollouts(mut self, local: Arc<dyn LocalRollouts>) -> Self {
        self.local = Some(local);
        self
    }

    fn deployments(&self) -> Api<Deployment> {
        match &self.settings.namespace {
            Some(ns) => Api::namespaced(self.platform.client().clone(), ns),
            None => Api::all(self.platform.client().clone()),
        }
    }

    fn selector() -> String {
        format!("{LABEL_ENABLED}=true")
    }

    /// Runs until `shutdown`, acting only while `leading` is true. Deployment
    /// watch events wake the loop early; ticks step verifications.
    pub async fn run(&self, mut leading: watch::Receiver<bool>, shutdown: CancellationToken) {
        let stream = watcher(
            self.deployments(),
            watcher::Config::default().labels(&Self::selector()),
        )
        .default_backoff()
        .applied_objects();
        let mut stream = std::pin::pin!(stream);
        loop {
            if *leading.borrow() {
                if let Err(e) = self.tick().await {
                    tracing::warn!(error = %e, "reconcile pass failed; retrying next tick");
                }
            } else {
                self.running.lock().map(|mut r| r.clear()).ok();
            }
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tokio::time::sleep(self.settings.interval) => {}
                changed = leading.changed() => if changed.is_err() { return },
                ev = stream.next() => match ev {
                    Some(Ok(d)) => tracing::debug!(deployment = %d.name_any(), "deployment changed"),
                    Some(Err(e)) => tracing::debug!(error = %e, "deployment watch interrupted; it restarts with backoff"),
                    None => {}
                },
            }
        }
    }

    /// One pass over every guarded Deployment.
    pub async fn tick(&self) -> Result<(), ReconcileError> {
        let list = self
            .deployments()
            .list(&ListParams::default().labels(&Self::selector()))
            .await
            .map_err(|e| PlatformError::Action {
                action: "list guarded deployments".into(),
                detail: e.to_string(),
            })?;
        for d in list.items {
            let (ns, name) = (d.namespace().unwrap_or_default(), d.name_any());
            if let Err(e) = self.reconcile(&ns, &name).await {
                tracing::warn!(deployment = %format!("{ns}/{name}"), error = %e, "reconcile failed");
            }
        }
        Ok(())
    }

    fn target(&self, ns: &str, name: &str) -> Target {
        let environment = self
            .platform
            .settings()
            .namespaces
            .iter()
            .find(|(_, v)| v.as_str() == ns)
            .map(|(k, _)| k.clone())
            .unwrap_or_else(|| ns.to_string());
        Target {
            service: name.to_string(),
            environment,
        }
    }

    fn emit(
        &self,
        kind: notify::EventKind,
        target: &Target,
        state: &RolloutState,
        reason: &str,
        evidence: notify::Evidence,
    ) {
        let Some(tx) = &self.events else { return };
        let started_at_ms = state.started_at.as_millisecond();
        let now = jiff::Timestamp::now();
        let _ = tx.send(notify::Event {
            kind,
            service: target.service.clone(),
            environment: target.environment.clone(),
            previous_build: state.stable.as_ref().map(|s| s.build.clone()),
            build: Some(state.candidate.build.clone()),
            commit: state.candidate.commit.clone(),
            reason: reason.to_string(),
            evidence,
            seconds_to_verdict: (kind != notify::EventKind::Started)
                .then(|| (now.as_millisecond() - started_at_ms) as f64 / 1000.0),
            started_at_ms,
            ended_at_ms: (kind != notify::EventKind::Started).then(|| now.as_millisecond()),
            status_url: None,
            environment_url: None,
            transient: false,
            rollout_id: None,
        });
    }

    /// Reconciles one Deployment (see the module's numbered flow).
    pub async fn reconcile(&self, ns: &str, name: &str) -> Result<(), ReconcileError> {
        let view = self.platform.view(ns, name).await?;
        let Some(current) = view.current() else {
            tracing::debug!(deployment = %format!("{ns}/{name}"), "no ReplicaSet for the current template yet");
            return Ok(());
        };
        let container = self.platform.settings().container.as_deref();
        let current_side = Side::of_replica_set(current, container);
        let Some(hash) = current_side.hash.clone() else {
            return Ok(());
        };
        let state = match RolloutState::read(&view.deployment) {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(error = %e, "ignoring guard's unreadable rollout state; starting over");
                None
            }
        };
        let target = self.target(ns, name);
        let deployment = format!("{ns}/{name}");
        let rv = view.deployment.metadata.resource_version.clone();
        let identity = self.platform.settings().identity.clone();
        if let Some(s) = &state
            && s.phase == Phase::Verifying
        {
            // This replica's engine drives it (`guard deploy` on this leader).
            if self.local.as_ref().is_some_and(|l| l.drives(ns, name)) {
                return Ok(());
            }
            // Another replica's engine drove it and that replica no longer leads.
            if let Some(owner) = s.engine_owner() {
                let owner = owner.to_string();
                return self
                    .take_over(ns, name, &view, rv.as_deref(), s.clone(), &owner)
                    .await;
            }
            // A canary taken over earlier (only `guard deploy` starts canaries).
            if s.strategy == Strategy::Canary {
                return self
                    .verify_canary(ns, name, rv.as_deref(), &target, s.clone())
                    .await;
            }
        }
        if let Some(s) = &state
            && s.phase == Phase::Promoted
            && s.candidate.build == current_side.build
            && s.candidate.hash.as_deref().is_none_or(|h| h == hash)
            && !self.local.as_ref().is_some_and(|l| l.drives(ns, name))
        {
            if let Some(owner) = s.engine_watch_owner().filter(|o| *o != identity) {
                let owner = owner.to_string();
                return self
                    .take_over_watch(ns, name, rv.as_deref(), &target, s.clone(), &owner)
                    .await;
            }
            if let Some(until) = s.watch_until {
                return match s.by.as_deref() {
                    Some(by) if by == identity => {
                        self.watch(ns, name, rv.as_deref(), &target, s.clone(), &hash, until)
                            .await
                    }
                    // Another controller replica was watching and no longer leads.
                    Some(by) => {
                        let by = by.to_string();
                        self.take_over_watch(ns, name, rv.as_deref(), &target, s.clone(), &by)
                            .await
                    }
                    None => Ok(()),
                };
            }
        }
        // A rolling rollout this replica held is still judged (see `watch_held`).
        if let Some(s) = &state
            && s.phase == Phase::Held
            && s.strategy == Strategy::Rolling
            && s.engine_owner().is_none()
            && s.candidate.hash.as_deref() == Some(hash.as_str())
            && !s.revert_impossible
        {
            return self.watch_held(ns, name, &target, s.clone(), &hash).await;
        }
        // So is a held canary, while the stable Deployment still runs the
        // template it was judged against (see `watch_held_canary`).
        if let Some(s) = &state
            && s.phase == Phase::Held
            && s.strategy == Strategy::Canary
            && s.engine_owner().is_none()
            && s.stable.as_ref().and_then(|st| st.hash.as_deref()) == Some(hash.as_str())
        {
            return self.watch_held_canary(ns, name, &target, s.clone()).await;
        }
        match rollout::next_step(state.as_ref(), &hash) {
            Next::Nothing => Ok(()),
            Next::Start { .. }
                if state.as_ref().is_some_and(|s| {
                    s.phase == Phase::Promoted
                        && s.strategy == Strategy::Canary
                        && s.candidate.build == current_side.build
                        && s.candidate.image == current_side.image
                }) =>
            {
                // A promoted canary's template now runs in the stable
                // Deployment's own ReplicaSet (canary::promote is rolling it or
                // has just rolled it): the same release, not a new rollout.
                let Some(mut next) = state else {
                    return Ok(());
                };
                next.candidate = current_side.clone();
                next.updated_at = jiff::Timestamp::now();
                self.write(ns, name, rv.as_deref(), &next).await?;
                tracing::debug!(deployment = %deployment, build = %current_side.build,
                    "promoted canary build now runs in the stable Deployment's ReplicaSet");
                Ok(())
            }
            Next::Start { stable } => {
                // Whatever was being judged on this Deployment (a held
                // rollout, say) is superseded by the new template.
                self.forget_deployment(ns, name);
                let owned = rollout::owned_by(&view.deployment, &view.replica_sets);
                let stable = stable.or_else(|| {
                    rollout::revert_target(&owned, current, None)
                        .map(|rs| Side::of_replica_set(rs, container))
                });
                let now = jiff::Timestamp::now();
                let same_as_stable = stable
                    .as_ref()
                    .is_some_and(|s| s.hash.as_deref() == Some(hash.as_str()));
                let (phase, reason) = match &stable {
                    None => (
                        Phase::Baseline,
                        "first template guard saw: accepted as the last good build".to_string(),
                    ),
                    Some(_) if same_as_stable => {
                        (Phase::Baseline, "back on the last good build".to_string())
                    }
                    Some(s) => (
                        Phase::Verifying,
                        format!(
                            "new rollout: build {} after build {}",
                            current_side.build, s.build
                        ),
                    ),
                };
                let next = RolloutState {
                    phase,
                    strategy: Strategy::Rolling,
                    candidate: current_side.clone(),
                    stable: if phase == Phase::Verifying {
                        stable
                    } else {
                        None
                    },
                    started_at: now,
                    updated_at: now,
                    share: 1.0,
                    stable_replicas: None,
                    by: Some(identity),
                    reason: Some(reason.clone()),
                    watch_until: None,
                    revert_impossible: false,
                };
                self.write(ns, name, rv.as_deref(), &next).await?;
                tracing::info!(deployment = %deployment, build = %current_side.build, ?phase, reason, "rollout noticed");
                if phase == Phase::Verifying {
                    self.emit(
                        notify::EventKind::Started,
                        &target,
                        &next,
                        &reason,
                        notify::Evidence::default(),
                    );
                }
                Ok(())
            }
            Next::Verify => {
                let Some(state) = state else { return Ok(()) };
                self.verify(ns, name, rv.as_deref(), &target, state, &hash)
                    .await
            }
        }
    }

    async fn write(
        &self,
        ns: &str,
        name: &str,
        rv: Option<&str>,
        state: &RolloutState,
    ) -> Result<(), ReconcileError> {
        match self.platform.write_state(ns, name, rv, state).await {
            Ok(_) => Ok(()),
            // Someone changed the Deployment since we read it; the next tick re-reads.
            Err(e) if is_status(&e, 409) => Ok(()),
            Err(e) => Err(ReconcileError::State {
                deployment: format!("{ns}/{name}"),
                source: e,
            }),
        }
    }

    /// Takes over an engine-driven rollout in flight from `owner`, a replica
    /// that no longer leads (step 4 of the module docs). Verification resumes
    /// on the next pass.
    async fn take_over(
        &self,
        ns: &str,
        name: &str,
        view: &super::View,
        rv: Option<&str>,
        mut state: RolloutState,
        owner: &str,
    ) -> Result<(), ReconcileError> {
        let container = self.platform.settings().container.as_deref();
        let identity = self.platform.settings().identity.clone();
        let deployment = format!("{ns}/{name}");
        // The engine records the candidate's ReplicaSet once it is up; a
        // replica killed before that left it out: find it now.
        if state.candidate.hash.is_none() {
            let running = match state.strategy {
                Strategy::Rolling => view.current().map(|rs| Side::of_replica_set(rs, container)),
                Strategy::Canary => {
                    match self.platform.view(ns, &canary::canary_name(name)).await {
                        Ok(cv) => cv.current().map(|rs| Side::of_replica_set(rs, container)),
                        Err(PlatformError::UnknownTarget { .. }) => None,
                        Err(e) => return Err(e.into()),
                    }
                }
            };
            if let Some(side) = running.filter(|side| {
                side.build == state.candidate.build
                    && (state.candidate.image.is_none() || side.image == state.candidate.image)
            }) {
                state.candidate = side;
            }
        }
        let now = jiff::Timestamp::now();
        let reason = format!(
            "taken over from {owner}: its engine was verifying build {} when it stopped leading; \
             {identity} resumes the verification",
            state.candidate.build
        );
        state.by = Some(identity.clone());
        state.updated_at = now;
        state.reason = Some(reason.clone());
        if self.record_take_over(ns, name, rv, &state, owner).await? {
            tracing::warn!(
                deployment = %deployment,
                build = %state.candidate.build,
                strategy = ?state.strategy,
                from = owner,
                by = %identity,
                share = state.share,
                "took over a rollout in flight: the replica whose engine drove it no longer \
                 holds the Lease; resuming its verification from the state on the Deployment"
            );
        }
        Ok(())
    }

    /// Takes over the post-promote watch of a release promoted by `from`
    /// (another replica's engine, or a controller replica that was watching
    /// it) when the watch is not over yet: one write conditional on
    /// resourceVersion, as for a rollout in flight.
    async fn take_over_watch(
        &self,
        ns: &str,
        name: &str,
        rv: Option<&str>,
        target: &Target,
        mut state: RolloutState,
        from: &str,
    ) -> Result<(), ReconcileError> {
        let until = match state.watch_until {
            Some(until) => until,
            None => {
                let Some(watch) = self.settings.watch.get(target).copied() else {
                    return Ok(());
                };
                let Ok(span) = jiff::SignedDuration::try_from(watch) else {
                    return Ok(());
                };
                match state.updated_at.checked_add(span) {
                    Ok(until) => until,
                    Err(_) => return Ok(()),
                }
            }
        };
        let deployment = format!("{ns}/{name}");
        let identity = self.platform.settings().identity.clone();
        let now = jiff::Timestamp::now();
        if now >= until || state.stable.is_none() {
            // Over (or nothing to revert to): nothing to take over.
            return Ok(());
        }
        let reason = format!(
            "took over the watch of build {} from {from} (it stopped leading); burn the release causes until {until} still reverts it",
            state.candidate.build
        );
        state.by = Some(identity.clone());
        state.watch_until = Some(until);
        state.updated_at = now;
        state.reason = Some(reason.clone());
        if self.record_take_over(ns, name, rv, &state, from).await? {
            tracing::warn!(deployment = %deployment, build = %state.candidate.build, from,
                by = %identity, %until, "took over the post-promote watch of a release");
        }
        Ok(())
    }

    /// Writes `state` as taken over from `from`, conditional on `rv`: `false`
    /// when the Deployment changed since it was read (another writer won; the
    /// next pass decides again on a fresh read).
    async fn record_take_over(
        &self,
        ns: &str,
        name: &str,
        rv: Option<&str>,
        state: &RolloutState,
        from: &str,
    ) -> Result<bool, ReconcileError> {
        match self
            .platform
            .record_take_over(ns, name, rv, state, from)
            .await
        {
            Ok(_) => Ok(true),
            Err(e) if is_status(&e, 409) => Ok(false),
            Err(e) => Err(ReconcileError::State {
                deployment: format!("{ns}/{name}"),
                source: e,
            }),
        }
    }

    /// One step of a watch this replica took over: a revert verdict reverts
    /// the promoted release; at `until` the watch ends and the release stays.
    #[allow(clippy::too_many_arguments)]
    async fn watch(
        &self,
        ns: &str,
        name: &str,
        rv: Option<&str>,
        target: &Target,
        mut state: RolloutState,
        hash: &str,
        until: jiff::Timestamp,
    ) -> Result<(), ReconcileError> {
        let Some(stable) = state.stable.clone() else {
            return Ok(());
        };
        let deployment = format!("{ns}/{name}");
        if jiff::Timestamp::now() >= until {
            let key = (ns.to_string(), name.to_string(), hash.to_string());
            self.forget(&key);
            state.watch_until = None;
            state.updated_at = jiff::Timestamp::now();
            state.reason = Some(format!("watch over: build {} stays", state.candidate.build));
            self.write(ns, name, rv, &state).await?;
            tracing::info!(deployment = %deployment, build = %state.candidate.build,
                "watch over: no burn attributable to the release; it stays");
            return Ok(());
        }
        // Recorded only by a revert, which ends the watch; passing or
        // undecided, the watch goes on until `until`.
        state.watch_until = None;
        self.revert_on_verdict(ns, name, target, state, &stable, hash, "after promotion")
            .await
    }

    /// Steps the verification of a held rolling rollout (too little traffic
    /// by the deadline, an outage shared with the baseline): the hold waits
    /// for a person, but conclusive evidence against the release reverts it
    /// meanwhile ("while held: …"), as guard's engine does. Whichever replica
    /// leads judges it: after a failover or a restart the verification starts
    /// again with fresh counts. A hold whose revert found nothing to revert
    /// to ([`RolloutState::revert_impossible`]) is left to the person.
    async fn watch_held(
        &self,
        ns: &str,
        name: &str,
        target: &Target,
        state: RolloutState,
        hash: &str,
    ) -> Result<(), ReconcileError> {
        let Some(stable) = state.stable.clone() else {
            return Ok(());
        };
        self.revert_on_verdict(ns, name, target, state, &stable, hash, "while held")
            .await
    }

    /// Steps the verification of a held canary (taken over from an engine,
    /// held by [`Controller::verify_canary`]): still running at its share, it
    /// is aborted on a revert verdict ("while held: …"), as guard's engine
    /// does; any other verdict waits for the person.
    async fn watch_held_canary(
        &self,
        ns: &str,
        name: &str,
        target: &Target,
        state: RolloutState,
    ) -> Result<(), ReconcileError> {
        let (Some(hash), Some(stable)) = (state.candidate.hash.clone(), state.stable.clone())
        else {
            return Ok(());
        };
        let (decision, key, evidence) = self
            .decide(ns, name, target, &state, &stable, &hash)
            .await?;
        let Decision::Revert { reason } = decision else {
            return Ok(());
        };
        let reason = format!("while held: {reason}");
        let deployment = format!("{ns}/{name}");
        // Act only on the hold that was judged: a person may have acted, or
        // a newer rollout started, since it was read.
        let fresh = self.platform.view(ns, name).await?;
        let now = RolloutState::read(&fresh.deployment).ok().flatten();
        if !now.as_ref().is_some_and(|n| {
            n.phase == Phase::Held
                && n.strategy == Strategy::Canary
                && n.candidate.hash.as_deref() == Some(hash.as_str())
        }) {
            self.forget(&key);
            tracing::info!(deployment = %deployment, build = %state.candidate.build, "the held canary changed since it was judged; not acting on it");
            return Ok(());
        }
        self.abort_judged_canary(ns, name, target, state, &stable, &reason, &key, evidence)
            .await
    }

    /// Aborts the judged canary ([`canary::abort`]: traffic back, canary
    /// removed, the revert recorded) and tells the team.
    #[allow(clippy::too_many_arguments)]
    async fn abort_judged_canary(
        &self,
        ns: &str,
        name: &str,
        target: &Target,
        mut state: RolloutState,
        stable: &Side,
        reason: &str,
        key: &RunKey,
        evidence: notify::Evidence,
    ) -> Result<(), ReconcileError> {
        canary::abort(&self.platform, ns, name, reason).await?;
        self.forget(key);
        tracing::warn!(deployment = %format!("{ns}/{name}"), from = %state.candidate.build, to = %stable.build, reason, "canary reverted");
        state.phase = Phase::Reverted;
        self.emit(
            notify::EventKind::Reverted,
            target,
            &state,
            reason,
            evidence,
        );
        Ok(())
    }

    /// Steps the candidate's verification and reverts it on a revert verdict,
    /// the reason prefixed by `context`; any other verdict changes nothing
    /// (the post-promote watch and a hold both wait for something else).
    /// `state` is what the revert records (with its phase set by the revert).
    #[allow(clippy::too_many_arguments)]
    async fn revert_on_verdict(
        &self,
        ns: &str,
        name: &str,
        target: &Target,
        state: RolloutState,
        stable: &Side,
        hash: &str,
        context: &str,
    ) -> Result<(), ReconcileError> {
        let (decision, key, evidence) = self.decide(ns, name, target, &state, stable, hash).await?;
        match decision {
            Decision::Revert { reason } => {
                let reason = format!("{context}: {reason}");
                self.revert_judged(
                    ns, name, target, state, stable, hash, &reason, &key, evidence,
                )
                .await
            }
            _ => Ok(()),
        }
    }

    /// Asks the candidate's verification (started on first use) for a
    /// decision on the latest signals; the deadline runs from the recorded start.
    async fn decide(
        &self,
        ns: &str,
        name: &str,
        target: &Target,
        state: &RolloutState,
        stable: &Side,
        hash: &str,
    ) -> Result<(Decision, RunKey, notify::Evidence), ReconcileError> {
        let mut endpoints = self
            .platform
            .endpoints(ns, hash, Role::Candidate, &state.candidate.build)
            .await?;
        if let Some(h) = stable.hash.as_deref() {
            endpoints.extend(
                self.platform
                    .endpoints(ns, h, Role::Stable, &stable.build)
                    .await?,
            );
        }
        let snapshot = match self.signals.snapshot(target, &endpoints).await {
            Ok(s) => Some(s),
            Err(SignalError::NoData { .. }) => None,
            Err(e) => {
                tracing::info!(deployment = %format!("{ns}/{name}"), error = %e, "signals unavailable; holding judgement");
                None
            }
        };
        let elapsed = jiff::Timestamp::now()
            .duration_since(state.started_at)
            .try_into()
            .unwrap_or(Duration::ZERO);
        let key = (ns.to_string(), name.to_string(), hash.to_string());
        let (decision, evidence) = {
            let mut running = self.running.lock().unwrap_or_else(|p| p.into_inner());
            let v = running.entry(key.clone()).or_insert_with(|| {
                let canary_share =
                    (state.strategy == Strategy::Canary && state.share > 0.0 && state.share < 1.0)
                        .then_some(state.share);
                self.verifier
                    .start(target, stable, &state.candidate, canary_share)
            });
            let decision = match &snapshot {
                Some(s) => v.step(s, elapsed),
                None => Decision::Continue,
            };
            let decision = match decision {
                Decision::Continue if elapsed >= self.settings.verify_deadline => Decision::Hold {
                    reason: format!(
                        "no verdict within {}",
                        humantime::format_duration(self.settings.verify_deadline)
                    ),
                },
                d => d,
            };
            // Only a verdict is announced, so only a verdict needs its numbers.
            let evidence = match decision {
                Decision::Continue => notify::Evidence::default(),
                _ => v.evidence(),
            };
            (decision, evidence)
        };
        Ok((decision, key, evidence))
    }

    /// Steps a canary taken over from another replica's engine: the candidate
    /// is the `<name>-canary` Deployment's ReplicaSet, the baseline the stable
    /// Deployment's. Promote and abort are [`canary::promote`] and [`canary::abort`].
    async fn verify_canary(
        &self,
        ns: &str,
        name: &str,
        rv: Option<&str>,
        target: &Target,
        mut state: RolloutState,
    ) -> Result<(), ReconcileError> {
        let deployment = format!("{ns}/{name}");
        let identity = self.platform.settings().identity.clone();
        let Some(hash) = state.candidate.hash.clone() else {
            // Taken over before the canary's ReplicaSet was up.
            let container = self.platform.settings().container.as_deref();
            let cv = match self.platform.view(ns, &canary::canary_name(name)).await {
                Ok(cv) => Some(cv),
                Err(PlatformError::UnknownTarget { .. }) => None,
                Err(e) => return Err(e.into()),
            };
            match cv.as_ref().and_then(|cv| cv.current()) {
                Some(rs) => {
                    let side = Side::of_replica_set(rs, container);
                    if side.build == state.candidate.build {
                        state.candidate = side;
                        state.updated_at = jiff::Timestamp::now();
                        self.write(ns, name, rv, &state).await?;
                    }
                }
                None if cv.is_none() => {
                    // Its replica died before creating the canary: nothing ran the
                    // candidate. Undo whatever step was recorded.
                    let reason = format!(
                        "the canary of build {} was never started (its replica stopped leading first)",
                        state.candidate.build
                    );
                    canary::abort(&self.platform, ns, name, &reason).await?;
                    tracing::warn!(deployment = %deployment, build = %state.candidate.build, reason, "canary abandoned");
                }
                None => {}
            }
            return Ok(());
        };
        let Some(stable) = state.stable.clone() else {
            return Ok(());
        };
        let (decision, key, evidence) = self
            .decide(ns, name, target, &state, &stable, &hash)
            .await?;
        if decision == Decision::Continue {
            return Ok(());
        }
        // Act only on the rollout that was judged: a newer one (an engine
        // rollout started since) is left alone.
        let fresh = self.platform.view(ns, name).await?;
        let now = RolloutState::read(&fresh.deployment).ok().flatten();
        if !now.as_ref().is_some_and(|n| {
            n.phase == Phase::Verifying
                && n.candidate.hash.as_deref() == Some(hash.as_str())
                && n.by.as_deref() == Some(identity.as_str())
        }) {
            self.forget(&key);
            tracing::info!(deployment = %deployment, build = %state.candidate.build, "a newer rollout replaced the judged canary; not acting on it");
            return Ok(());
        }
        let fresh_rv = fresh.deployment.metadata.resource_version.clone();
        match decision {
            Decision::Continue => Ok(()),
            Decision::Promote { reason } => {
                canary::promote(&self.platform, ns, name, &state.candidate.to_build()).await?;
                self.forget(&key);
                tracing::info!(deployment = %deployment, build = %state.candidate.build, reason, "canary promoted");
                state.phase = Phase::Promoted;
                self.emit(
                    notify::EventKind::Promoted,
                    target,
                    &state,
                    &reason,
                    evidence,
                );
                Ok(())
            }
            Decision::Revert { reason } => {
                self.abort_judged_canary(ns, name, target, state, &stable, &reason, &key, evidence)
                    .await
            }
            Decision::Hold { reason } => {
                state.phase = Phase::Held;
                state.updated_at = jiff::Timestamp::now();
                state.by = Some(identity);
                state.reason = Some(reason.clone());
                self.write(ns, name, fresh_rv.as_deref(), &state).await?;
                // The verification keeps running: see `watch_held_canary`.
                tracing::warn!(deployment = %deployment, build = %state.candidate.build, reason, "canary held for a person; still judged, a conclusive revert verdict aborts it");
                self.emit(notify::EventKind::Held, target, &state, &reason, evidence);
                Ok(())
            }
        }
    }

    async fn verify(
        &self,
        ns: &str,
        name: &str,
        rv: Option<&str>,
        target: &Target,
        mut state: RolloutState,
        hash: &str,
    ) -> Result<(), ReconcileError> {
        let Some(stable) = state.stable.clone() else {
            return Ok(());
        };
        let (decision, key, evidence) =
            self.decide(ns, name, target, &state, &stable, hash).await?;
        let identity = self.platform.settings().identity.clone();
        let deployment = format!("{ns}/{name}");
        match decision {
            Decision::Continue => Ok(()),
            Decision::Promote { reason } => {
                state.phase = Phase::Promoted;
                state.updated_at = jiff::Timestamp::now();
                state.by = Some(identity);
                state.reason = Some(reason.clone());
                self.write(ns, name, rv, &state).await?;
                self.forget(&key);
                tracing::info!(deployment = %deployment, build = %state.candidate.build, reason, "promoted");
                self.emit(
                    notify::EventKind::Promoted,
                    target,
                    &state,
                    &reason,
                    evidence,
                );
                Ok(())
            }
            Decision::Hold { reason } => {
                state.phase = Phase::Held;
                state.updated_at = jiff::Timestamp::now();
                state.by = Some(identity);
                state.reason = Some(reason.clone());
                self.write(ns, name, rv, &state).await?;
                // The verification keeps running: see `watch_held`.
                tracing::warn!(deployment = %deployment, build = %state.candidate.build, reason, "held for a person; still judged, a conclusive revert verdict reverts it");
                self.emit(notify::EventKind::Held, target, &state, &reason, evidence);
                Ok(())
            }
            Decision::Revert { reason } => {
                self.revert_judged(
                    ns, name, target, state, &stable, hash, &reason, &key, evidence,
                )
                .await
            }
        }
    }

    /// Reverts the judged candidate (`hash`) to `stable`, as `kubectl rollout
    /// undo` does, unless a newer rollout replaced it; tells the team.
    #[allow(clippy::too_many_arguments)]
    async fn revert_judged(
        &self,
        ns: &str,
        name: &str,
        target: &Target,
        mut state: RolloutState,
        stable: &Side,
        hash: &str,
        reason: &str,
        key: &RunKey,
        evidence: notify::Evidence,
    ) -> Result<(), ReconcileError> {
        let identity = self.platform.settings().identity.clone();
        let deployment = format!("{ns}/{name}");
        let reason = reason.to_string();
        let base = state.clone();
        let outcome = self
            .platform
            .undo(
                ns,
                name,
                Some(hash),
                stable.hash.as_deref(),
                &reason,
                |_from, to| {
                    let mut s = base.clone();
                    s.phase = Phase::Reverted;
                    s.stable = Some(to.clone());
                    s.updated_at = jiff::Timestamp::now();
                    s.by = Some(identity.clone());
                    s.reason = Some(reason.clone());
                    s
                },
            )
            .await?;
        self.forget(key);
        match outcome {
            UndoOutcome::Reverted { to } | UndoOutcome::AlreadyThere { to } => {
                tracing::warn!(deployment = %deployment, from = %state.candidate.build, to = %to.build, reason, "reverted");
                state.stable = Some(to);
                self.emit(
                    notify::EventKind::Reverted,
                    target,
                    &state,
                    &reason,
                    evidence,
                );
            }
            UndoOutcome::Superseded => {
                tracing::info!(deployment = %deployment, "a newer rollout replaced the judged build; not reverting it");
            }
            UndoOutcome::NothingToRevertTo => {
                state.phase = Phase::Held;
                state.revert_impossible = true;
                state.reason = Some(format!(
                    "{reason}; but no earlier ReplicaSet is left to revert to"
                ));
                self.write(ns, name, None, &state).await?;
                self.emit(
                    notify::EventKind::Held,
                    target,
                    &state,
                    state.reason.as_deref().unwrap_or_default(),
                    evidence,
                );
            }
        }
        Ok(())
    }

    fn forget_deployment(&self, ns: &str, name: &str) {
        if let Ok(mut r) = self.running.lock() {
            r.retain(|(n, d, _), _| !(n == ns && d == name));
        }
    }

    fn forget(&self, key: &RunKey) {
        if let Ok(mut r) = self.running.lock() {
            r.remove(key);
        }
    }
}
