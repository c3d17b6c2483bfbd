//! The `kubernetes` platform: guard guards plain, unmodified Deployments.
//!
//! A Deployment opts in with the label `guard.ultra-boost.dev/enabled: "true"`.
//! The service of a [`Target`] is the Deployment's name, its environment maps
//! to a namespace ([`KubeSettings::namespace_for`]).
//!
//! - **Rolling** releases are the Deployment controller's own rolling update:
//!   [`Platform::shift`] sets the candidate's image in the pod template and waits
//!   for the rollout to finish; a revert ([`KubernetesPlatform::undo`]) copies
//!   the previous ReplicaSet's template (minus `pod-template-hash`) back into
//!   the Deployment, exactly as `kubectl rollout undo` does, with annotations
//!   naming who reverted, why and to which build. Every write carries the
//!   `resourceVersion` it was computed from, and a revert checks first that the
//!   template it judged is still the current one, so guard never fights a
//!   later, newer rollout.
//! - **Canary** releases run in a `<name>-canary` Deployment beside the stable
//!   one (see [`canary`]): Gateway API HTTPRoute weights when a route exists,
//!   replica ratios otherwise.
//! - State lives on the cluster: [`rollout::RolloutState`] as JSON in the
//!   Deployment annotation `guard.ultra-boost.dev/rollout`, so any guard
//!   replica that becomes leader resumes a rollout in flight
//!   ([`controller`]): one the controller noticed, and one that the engine
//!   of a replica that stopped leading drove (`guard deploy`), which the new
//!   leader's controller takes over.

pub mod canary;
pub mod controller;
pub mod rollout;
pub mod verify;

use std::collections::BTreeMap;
use std::time::Duration;

use k8s_openapi::api::apps::v1::{Deployment, ReplicaSet};
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, ListParams, Patch, PatchParams, PostParams};
use kube::{Client, ResourceExt};
use serde_json::json;

use crate::platform::{
    BoxFuture, Build, Endpoint, Observed, Platform, PlatformError, Role, Strategy, Target,
};
use rollout::{
    ANNOTATION_METRICS_PORT, ANNOTATION_REVERTED_AT, ANNOTATION_REVERTED_BY,
    ANNOTATION_REVERTED_FROM, ANNOTATION_REVERTED_REASON, ANNOTATION_REVERTED_TO,
    ANNOTATION_ROLLOUT, ANNOTATION_TAKEN_OVER_AT, ANNOTATION_TAKEN_OVER_BY,
    ANNOTATION_TAKEN_OVER_FROM, ENGINE_PREFIX, Phase, RolloutState, Side,
};

/// How the platform finds and treats targets.
#[derive(Clone, Debug)]
pub struct KubeSettings {
    /// Environment -> namespace; environments not listed use their own name.
    pub namespaces: BTreeMap<String, String>,
    /// The container whose image is the build (default: the first container).
    pub container: Option<String>,
    /// How long a Deployment may take to finish rolling before `NotReady`.
    pub ready_timeout: Duration,
    /// Who guard is, written into annotations (the Lease holder identity).
    pub identity: String,
    /// Port serving `/metrics` when the pod template names none
    /// (`prometheus.io/port`) and declares no container port.
    pub default_metrics_port: u16,
}

impl Default for KubeSettings {
    fn default() -> Self {
        KubeSettings {
            namespaces: BTreeMap::new(),
            container: None,
            ready_timeout: Duration::from_secs(300),
            identity: "guard".into(),
            default_metrics_port: 8080,
        }
    }
}

impl KubeSettings {
    /// The namespace of an environment.
    pub fn namespace_for(&self, environment: &str) -> String {
        self.namespaces
            .get(environment)
            .cloned()
            .unwrap_or_else(|| environment.to_string())
    }
}

/// A Deployment and the ReplicaSets it owns, read together.
#[derive(Clone, Debug)]
pub struct View {
    pub deployment: Deployment,
    pub replica_sets: Vec<ReplicaSet>,
}

impl View {
    /// The ReplicaSet of the Deployment's current template, once it exists.
    pub fn current(&self) -> Option<&ReplicaSet> {
        let owned = rollout::owned_by(&self.deployment, &self.replica_sets);
        rollout::current_replica_set(&self.deployment, &owned)
    }

    /// Whether the Deployment controller has finished rolling the current template out.
    pub fn rolled_out(&self) -> bool {
        let generation = self.deployment.metadata.generation.unwrap_or(0);
        let want = self.deployment.spec.replicas.unwrap_or(1);
        let Some(status) = self.deployment.status.as_ref() else {
            return false;
        };
        status.observed_generation.unwrap_or(0) >= generation
            && status.updated_replicas.unwrap_or(0) >= want
            && status.available_replicas.unwrap_or(0) >= want
            && status.replicas.unwrap_or(0) <= want
    }
}

/// What [`KubernetesPlatform::undo`] did.
#[derive(Clone, Debug, PartialEq)]
pub enum UndoOutcome {
    /// The Deployment now runs `to` again.
    Reverted { to: Side },
    /// The Deployment already ran the revert target (a repeated call).
    AlreadyThere { to: Side },
    /// A newer template than the judged candidate is running; guard left it alone.
    Superseded,
    /// There is no earlier ReplicaSet to go back to.
    NothingToRevertTo,
}

/// The kubernetes [`Platform`]: Deployments through kube-rs.
#[derive(Clone)]
pub struct KubernetesPlatform {
    client: Client,
    settings: KubeSettings,
}

pub(crate) fn action_error(
    action: impl Into<String>,
    err: impl std::fmt::Display,
) -> PlatformError {
    PlatformError::Action {
        action: action.into(),
        detail: err.to_string(),
    }
}

pub(crate) fn is_status(err: &kube::Error, code: u16) -> bool {
    matches!(err, kube::Error::Api(s) if s.code == code)
}

impl KubernetesPlatform {
    pub fn new(client: Client, settings: KubeSettings) -> Self {
        KubernetesPlatform { client, settings }
    }

    pub fn client(&self) -> &Client {
        &self.client
    }

    pub fn settings(&self) -> &KubeSettings {
        &self.settings
    }

    /// Deployments of a namespace.
    pub fn deployments(&self, namespace: &str) -> Api<Deployment> {
        Api::namespaced(self.client.clone(), namespace)
    }

    /// Reads a Deployment and its ReplicaSets.
    pub async fn view(&self, namespace: &str, name: &str) -> Result<View, PlatformError> {
        let deployment = match self.deployments(namespace).get(name).await {
            Ok(d) => d,
            Err(e) if is_status(&e, 404) => {
                return Err(PlatformError::UnknownTarget {
                    service: name.into(),
                    environment: namespace.into(),
                });
            }
            Err(e) => {
                return Err(action_error(
                    format!("get deployment {namespace}/{name}"),
                    e,
                ));
            }
        };
        let rs_api: Api<ReplicaSet> = Api::namespaced(self.client.clone(), namespace);
        let selector = deployment
            .spec
            .selector
            .match_labels
            .as_ref()
            .map(|m| {
                m.iter()
                    .map(|(k, v)| format!("{k}={v}"))
                    .collect::<Vec<_>>()
                    .join(",")
            })
            .unwrap_or_default();
        let list = rs_api
            .list(&ListParams::default().labels(&selector))
            .await
            .map_err(|e| action_error(format!("list replicasets of {namespace}/{name}"), e))?;
        let uid = deployment.metadata.uid.clone();
        let replica_sets = list
            .items
            .into_iter()
            .filter(|rs| {
                rs.metadata
                    .owner_references
                    .as_ref()
                    .is_some_and(|refs| refs.iter().any(|r| Some(&r.uid) == uid.as_ref()))
            })
            .collect();
        Ok(View {
            deployment,
            replica_sets,
        })
    }

    fn place(&self, target: &Target) -> (String, String) {
        (
            self.settings.namespace_for(&target.environment),
            target.service.clone(),
        )
    }

    /// Writes the rollout state annotation, conditional on `resource_version`.
    pub async fn write_state(
        &self,
        namespace: &str,
        name: &str,
        resource_version: Option<&str>,
        state: &RolloutState,
    ) -> Result<Deployment, kube::Error> {
        let mut patch =
            json!({"metadata": {"annotations": {ANNOTATION_ROLLOUT: state.to_annotation()}}});
        if let Some(rv) = resource_version {
            patch["metadata"]["resourceVersion"] = json!(rv);
        }
        self.deployments(namespace)
            .patch(name, &PatchParams::default(), &Patch::Merge(&patch))
            .await
    }

    /// Records that this replica took the rollout in `state` over from
    /// `from` (another replica's engine): the state plus the
    /// `taken-over-by`/`-from`/`-at` annotations, in one write conditional on
    /// `resource_version`, so two replicas can never both take it over.
    pub async fn record_take_over(
        &self,
        namespace: &str,
        name: &str,
        resource_version: Option<&str>,
        state: &RolloutState,
        from: &str,
    ) -> Result<Deployment, kube::Error> {
        let mut patch = json!({"metadata": {"annotations": {
            ANNOTATION_ROLLOUT: state.to_annotation(),
            ANNOTATION_TAKEN_OVER_BY: self.settings.identity,
            ANNOTATION_TAKEN_OVER_FROM: from,
            ANNOTATION_TAKEN_OVER_AT: state.updated_at.to_string(),
        }}});
        if let Some(rv) = resource_version {
            patch["metadata"]["resourceVersion"] = json!(rv);
        }
        self.deployments(namespace)
            .patch(name, &PatchParams::default(), &Patch::Merge(&patch))
            .await
    }

    /// Reverts a Deployment to an earlier ReplicaSet's pod template, as
    /// `kubectl rollout undo` does, with guard's annotations and `state`
    /// written in the same update.
    ///
    /// - `judged_hash`: the `pod-template-hash` of the candidate that was
    ///   judged. When the Deployment runs anything else now (a newer rollout),
    ///   nothing is changed: [`UndoOutcome::Superseded`].
    /// - `prefer_hash`: the recorded last good ReplicaSet; when it is gone, the
    ///   previous revision is used.
    ///
    /// Idempotent: a repeated call finds the target running and reports
    /// [`UndoOutcome::AlreadyThere`]. Conflicting writes are retried on a fresh read.
    pub async fn undo(
        &self,
        namespace: &str,
        name: &str,
        judged_hash: Option<&str>,
        prefer_hash: Option<&str>,
        reason: &str,
        state: impl Fn(&Side, &Side) -> RolloutState,
    ) -> Result<UndoOutcome, PlatformError> {
        for _attempt in 0..5 {
            let view = self.view(namespace, name).await?;
            let owned = rollout::owned_by(&view.deployment, &view.replica_sets);
            let template = &view.deployment.spec.template;
            // Already back on the preferred ReplicaSet?
            if let Some(h) = prefer_hash
                && let Some(rs) = owned
                    .iter()
                    .find(|rs| rollout::hash_of(rs).as_deref() == Some(h))
                && rollout::template_of(rs).is_some_and(|t| rollout::same_template(t, template))
            {
                return Ok(UndoOutcome::AlreadyThere {
                    to: Side::of_replica_set(rs, self.settings.container.as_deref()),
                });
            }
            if let Some(judged) = judged_hash {
                let judged_rs = owned
                    .iter()
                    .find(|rs| rollout::hash_of(rs).as_deref() == Some(judged));
                let still_current = judged_rs
                    .and_then(|rs| rollout::template_of(rs))
                    .is_some_and(|t| rollout::same_template(t, template));
                if !still_current {
                    return Ok(UndoOutcome::Superseded);
                }
            }
            let Some(current) = view.current() else {
                return Err(action_error(
                    format!("revert {namespace}/{name}"),
                    "the Deployment controller has not created a ReplicaSet for the current template yet",
                ));
            };
            let Some(target_rs) = rollout::revert_target(&owned, current, prefer_hash) else {
                return Ok(UndoOutcome::NothingToRevertTo);
            };
            let Some(target_template) = rollout::template_of(target_rs) else {
                return Ok(UndoOutcome::NothingToRevertTo);
            };
            let container = self.settings.container.as_deref();
            let to = Side::of_replica_set(target_rs, container);
            let from = Side::of_replica_set(current, container);
            let mut deployment = view.deployment.clone();
            deployment.spec.template = rollout::strip_hash(target_template);
            let annotations = deployment
                .metadata
                .annotations
                .get_or_insert_with(Default::default);
            annotations.insert(
                ANNOTATION_REVERTED_BY.into(),
                self.settings.identity.clone(),
            );
            annotations.insert(ANNOTATION_REVERTED_REASON.into(), reason.to_string());
            annotations.insert(
                ANNOTATION_REVERTED_TO.into(),
                format!("build {} (revision {})", to.build, to.revision.unwrap_or(0)),
            );
            annotations.insert(
                ANNOTATION_REVERTED_FROM.into(),
                format!("build {}", from.build),
            );
            annotations.insert(
                ANNOTATION_REVERTED_AT.into(),
                jiff::Timestamp::now().to_string(),
            );
            annotations.insert(ANNOTATION_ROLLOUT.into(), state(&from, &to).to_annotation());
            // `replace` carries metadata.resourceVersion: a write computed from a
            // stale read is refused (409) and recomputed on the next attempt.
            match self
                .deployments(namespace)
                .replace(name, &PostParams::default(), &deployment)
                .await
            {
                Ok(_) => {
                    tracing::info!(
                        deployment = %format!("{namespace}/{name}"),
                        from = %from.build,
                        to = %to.build,
                        reason,
                        "reverted deployment to the previous ReplicaSet's template"
                    );
                    return Ok(UndoOutcome::Reverted { to });
                }
                Err(e) if is_status(&e, 409) => continue,
                Err(e) => return Err(action_error(format!("revert {namespace}/{name}"), e)),
            }
        }
        Err(action_error(
            format!("revert {namespace}/{name}"),
            "the Deployment kept changing under guard (5 conflicting writes)",
        ))
    }

    /// Waits until the Deployment controller has rolled the current template out.
    pub async fn wait_rolled_out(
        &self,
        namespace: &str,
        name: &str,
        build: &str,
    ) -> Result<View, PlatformError> {
        let deadline = tokio::time::Instant::now() + self.settings.ready_timeout;
        loop {
            let view = self.view(namespace, name).await?;
            if view.rolled_out() && view.current().is_some() {
                return Ok(view);
            }
            if tokio::time::Instant::now() >= deadline {
                let status = view.deployment.status.clone().unwrap_or_default();
                return Err(PlatformError::NotReady {
                    build: build.into(),
                    seconds: self.settings.ready_timeout.as_secs(),
                    detail: format!(
                        "deployment {namespace}/{name}: {} of {} replicas updated, {} available",
                        status.updated_replicas.unwrap_or(0),
                        view.deployment.spec.replicas.unwrap_or(1),
                        status.available_replicas.unwrap_or(0)
                    ),
                });
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }

    /// Endpoints of the pods of a ReplicaSet (by `pod-template-hash`).
    pub async fn endpoints(
        &self,
        namespace: &str,
        hash: &str,
        role: Role,
        build: &str,
    ) -> Result<Vec<Endpoint>, PlatformError> {
        let pods: Api<Pod> = Api::namespaced(self.client.clone(), namespace);
        let list = pods
            .list(&ListParams::default().labels(&format!("{}={hash}", rollout::POD_TEMPLATE_HASH)))
            .await
            .map_err(|e| action_error(format!("list pods {namespace} {hash}"), e))?;
        Ok(list
            .items
            .iter()
            .filter_map(|pod| {
                let ip = pod.status.as_ref()?.pod_ip.clone()?;
                let port = pod
                    .annotations()
                    .get(ANNOTATION_METRICS_PORT)
                    .and_then(|p| p.parse::<u16>().ok())
                    .or_else(|| {
                        pod.spec.as_ref()?.containers.iter().find_map(|c| {
                            c.ports
                                .as_ref()?
                                .first()
                                .and_then(|p| u16::try_from(p.container_port).ok())
                        })
                    })
                    .unwrap_or(self.settings.default_metrics_port);
                let ready = pod
                    .status
                    .as_ref()
                    .and_then(|s| s.conditions.as_ref())
                    .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"));
                let host = if ip.contains(':') {
                    format!("[{ip}]")
                } else {
                    ip
                };
                Some(Endpoint {
                    role,
                    build: build.to_string(),
                    metrics_url: format!("http://{host}:{port}/metrics"),
                    ready,
                })
            })
            .collect())
    }

    async fn observe_inner(&self, target: &Target) -> Result<Observed, PlatformError> {
        let (ns, name) = self.place(target);
        if let Some(obs) = canary::observe(self, &ns, &name).await? {
            return Ok(obs);
        }
        let view = self.view(&ns, &name).await?;
        let state = RolloutState::read(&view.deployment)
            .map_err(|e| action_error("read rollout state", e))?;
        let container = self.settings.container.as_deref();
        let current = view.current().map(|rs| Side::of_replica_set(rs, container));
        let mut observed = Observed::default();
        match (state, current) {
            (Some(st), Some(cur))
                if st.phase == Phase::Verifying && st.candidate.hash == cur.hash =>
            {
                observed.candidate = Some(cur.build.clone());
                observed.candidate_share = 1.0;
                if let Some(h) = cur.hash.as_deref() {
                    observed
                        .endpoints
                        .extend(self.endpoints(&ns, h, Role::Candidate, &cur.build).await?);
                }
                if let Some(stable) = st.stable {
                    observed.stable = Some(stable.build.clone());
                    if let Some(h) = stable.hash.as_deref() {
                        observed
                            .endpoints
                            .extend(self.endpoints(&ns, h, Role::Stable, &stable.build).await?);
                    }
                }
            }
            (_, Some(cur)) => {
                observed.stable = Some(cur.build.clone());
                if let Some(h) = cur.hash.as_deref() {
                    observed
                        .endpoints
                        .extend(self.endpoints(&ns, h, Role::Stable, &cur.build).await?);
                }
            }
            (_, None) => {}
        }
        Ok(observed)
    }

    /// Rolling shift: the candidate's image in the Deployment's template.
    async fn shift_rolling(
        &self,
        target: &Target,
        stable: &Build,
        candidate: &Build,
    ) -> Result<(), PlatformError> {
        let (ns, name) = self.place(target);
        let container = self.settings.container.as_deref();
        for _attempt in 0..5 {
            let view = self.view(&ns, &name).await?;
            let spec = &view.deployment.spec;
            let Some(template) = rollout::with_build(&spec.template, candidate, container) else {
                return Err(action_error(
                    format!("shift {ns}/{name}"),
                    format!(
                        "build {} has no image (the kubernetes platform deploys images)",
                        candidate.number
                    ),
                ));
            };
            if rollout::same_template(&template, &spec.template) {
                break;
            }
            let stable_side = view
                .current()
                .map(|rs| Side::of_replica_set(rs, container))
                .unwrap_or(Side {
                    build: stable.number.clone(),
                    image: stable.image.clone(),
                    commit: stable.commit.clone(),
                    hash: None,
                    revision: None,
                });
            let now = jiff::Timestamp::now();
            let state = RolloutState {
                phase: Phase::Verifying,
                strategy: Strategy::Rolling,
                candidate: Side {
                    build: candidate.number.clone(),
                    image: candidate.image.clone(),
                    commit: candidate.commit.clone(),
                    hash: None,
                    revision: None,
                },
                stable: Some(stable_side),
                started_at: now,
                updated_at: now,
                share: 1.0,
                stable_replicas: None,
                // "engine:" marks a rollout `guard deploy` drives: the controller
                // leaves it to this replica's engine, or takes it over when this
                // replica stops leading (see `controller`).
                by: Some(format!("{ENGINE_PREFIX}{}", self.settings.identity)),
                reason: Some("rolled out by guard deploy".into()),
                watch_until: None,
                revert_impossible: false,
            };
            let mut deployment = view.deployment.clone();
            deployment.spec.template = template;
            deployment
                .metadata
                .annotations
                .get_or_insert_with(Default::default)
                .insert(ANNOTATION_ROLLOUT.into(), state.to_annotation());
            match self
                .deployments(&ns)
                .replace(&name, &PostParams::default(), &deployment)
                .await
            {
                Ok(_) => break,
                Err(e) if is_status(&e, 409) => continue,
                Err(e) => return Err(action_error(format!("shift {ns}/{name}"), e)),
            }
        }
        let view = self.wait_rolled_out(&ns, &name, &candidate.number).await?;
        // Record the candidate's ReplicaSet now that it exists.
        if let (Some(mut state), Some(rs)) = (
            RolloutState::read(&view.deployment).ok().flatten(),
            view.current(),
        ) && state.candidate.hash.is_none()
        {
            state.candidate = Side::of_replica_set(rs, container);
            state.updated_at = jiff::Timestamp::now();
            let rv = view.deployment.metadata.resource_version.clone();
            if let Err(e) = self.write_state(&ns, &name, rv.as_deref(), &state).await
                && !is_status(&e, 409)
            {
                return Err(action_error(format!("record rollout of {ns}/{name}"), e));
            }
        }
        Ok(())
    }

    async fn set_phase(
        &self,
        target: &Target,
        phase: Phase,
        reason: &str,
    ) -> Result<(), PlatformError> {
        let (ns, name) = self.place(target);
        let view = self.view(&ns, &name).await?;
        if let Ok(Some(mut state)) = RolloutState::read(&view.deployment)
            && state.phase != phase
        {
            state.phase = phase;
            state.reason = Some(reason.into());
            state.by = Some(state.next_by(&self.settings.identity));
            state.updated_at = jiff::Timestamp::now();
            let rv = view.deployment.metadata.resource_version.clone();
            self.write_state(&ns, &name, rv.as_deref(), &state)
                .await
                .map_err(|e| action_error(format!("record {phase:?} on {ns}/{name}"), e))?;
        }
        Ok(())
    }
}

impl Platform for KubernetesPlatform {
    fn observe<'a>(&'a self, target: &'a Target) -> BoxFuture<'a, Result<Observed, PlatformError>> {
        Box::pin(self.observe_inner(target))
    }

    fn shift<'a>(
        &'a self,
        target: &'a Target,
        stable: &'a Build,
        candidate: &'a Build,
        strategy: Strategy,
        share: f64,
    ) -> BoxFuture<'a, Result<(), PlatformError>> {
        Box::pin(async move {
            match strategy {
                Strategy::Rolling => self.shift_rolling(target, stable, candidate).await,
                Strategy::Canary => {
                    let (ns, name) = self.place(target);
                    canary::shift(self, &ns, &name, candidate, share).await
                }
            }
        })
    }

    fn promote<'a>(
        &'a self,
        target: &'a Target,
        candidate: &'a Build,
    ) -> BoxFuture<'a, Result<(), PlatformError>> {
        Box::pin(async move {
            let (ns, name) = self.place(target);
            if canary::exists(self, &ns, &name).await? {
                return canary::promote(self, &ns, &name, candidate).await;
            }
            self.set_phase(
                target,
                Phase::Promoted,
                &format!("build {} promoted", candidate.number),
            )
            .await
        })
    }

    fn revert<'a>(
        &'a self,
        target: &'a Target,
        to: &'a Build,
    ) -> BoxFuture<'a, Result<(), PlatformError>> {
        Box::pin(async move {
            let (ns, name) = self.place(target);
            if canary::exists(self, &ns, &name).await? {
                return canary::abort(
                    self,
                    &ns,
                    &name,
                    &format!("reverted to build {}", to.number),
                )
                .await;
            }
            let view = self.view(&ns, &name).await?;
            let state = RolloutState::read(&view.deployment).ok().flatten();
            // Prefer the ReplicaSet running `to`; the recorded stable side next.
            let container = self.settings.container.as_deref();
            let owned = rollout::owned_by(&view.deployment, &view.replica_sets);
            let by_build = owned
                .iter()
                .filter(|rs| {
                    let side = Side::of_replica_set(rs, container);
                    side.build == to.number && (to.image.is_none() || side.image == to.image)
                })
                .max_by_key(|rs| rollout::revision_of(**rs))
                .and_then(|rs| rollout::hash_of(rs));
            let prefer =
                by_build.or_else(|| state.as_ref().and_then(|s| s.stable.as_ref()?.hash.clone()));
            let identity = self.settings.identity.clone();
            let reason = format!("guard reverted to build {}", to.number);
            let outcome = self
                .undo(
                    &ns,
                    &name,
                    None,
                    prefer.as_deref(),
                    &reason,
                    |from, to_side| {
                        let now = jiff::Timestamp::now();
                        RolloutState {
                            phase: Phase::Reverted,
                            strategy: Strategy::Rolling,
                            candidate: state
                                .as_ref()
                                .map(|s| s.candidate.clone())
                                .unwrap_or_else(|| from.clone()),
                            stable: Some(to_side.clone()),
                            started_at: state.as_ref().map(|s| s.started_at).unwrap_or(now),
                            updated_at: now,
                            share: 0.0,
                            stable_replicas: None,
                            by: Some(identity.clone()),
                            reason: Some(reason.clone()),
                            watch_until: None,
                            revert_impossible: false,
                        }
                    },
                )
                .await?;
            match outcome {
                UndoOutcome::Reverted { .. } | UndoOutcome::AlreadyThere { .. } => self
                    .wait_rolled_out(&ns, &name, &to.number)
                    .await
                    .map(|_| ()),
                UndoOutcome::Superseded => Ok(()),
                UndoOutcome::NothingToRevertTo => Err(action_error(
                    format!("revert {ns}/{name}"),
                    format!(
                        "no ReplicaSet of build {} (or any earlier revision) is left",
                        to.number
                    ),
                )),
            }
        })
    }
}
