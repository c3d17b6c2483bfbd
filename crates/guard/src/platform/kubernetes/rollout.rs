//! Pure rollout logic of the kubernetes platform: pod templates and builds,
//! ReplicaSet revisions, the rollout state guard keeps on the Deployment, and
//! which ReplicaSet a revert goes back to. No I/O here, so all of it is unit
//! tested without a cluster.

use std::collections::BTreeMap;

use k8s_openapi::api::apps::v1::{Deployment, ReplicaSet};
use k8s_openapi::api::core::v1::PodTemplateSpec;
use kube::ResourceExt;
use serde::{Deserialize, Serialize};

use crate::platform::{Build, Strategy};

/// Label a Deployment carries to be guarded: `guard.ultra-boost.dev/enabled: "true"`.
pub const LABEL_ENABLED: &str = "guard.ultra-boost.dev/enabled";
/// Annotation on the Deployment holding [`RolloutState`] as JSON: what guard
/// knows about the rollout, on the cluster so a new leader resumes it.
pub const ANNOTATION_ROLLOUT: &str = "guard.ultra-boost.dev/rollout";
/// Pod-template annotation naming the build (`86`, `pr-42`); the image tag otherwise.
pub const ANNOTATION_BUILD: &str = "guard.ultra-boost.dev/build";
/// Pod-template annotation naming the git commit of the build.
pub const ANNOTATION_COMMIT: &str = "guard.ultra-boost.dev/commit";
/// Written on revert: the guard replica (holder identity) that reverted.
pub const ANNOTATION_REVERTED_BY: &str = "guard.ultra-boost.dev/reverted-by";
/// Written on revert: why, in one line (the judge's reason).
pub const ANNOTATION_REVERTED_REASON: &str = "guard.ultra-boost.dev/reverted-reason";
/// Written on revert: the build and revision the Deployment went back to.
pub const ANNOTATION_REVERTED_TO: &str = "guard.ultra-boost.dev/reverted-to";
/// Written on revert: the build that was reverted.
pub const ANNOTATION_REVERTED_FROM: &str = "guard.ultra-boost.dev/reverted-from";
/// Written on revert: RFC 3339 time of the revert.
pub const ANNOTATION_REVERTED_AT: &str = "guard.ultra-boost.dev/reverted-at";
/// Written when a new leader takes over an engine-driven rollout in flight:
/// the guard replica (holder identity) that took it over.
pub const ANNOTATION_TAKEN_OVER_BY: &str = "guard.ultra-boost.dev/taken-over-by";
/// Written on take-over: the replica that drove the rollout before (its engine).
pub const ANNOTATION_TAKEN_OVER_FROM: &str = "guard.ultra-boost.dev/taken-over-from";
/// Written on take-over: RFC 3339 time of the take-over.
pub const ANNOTATION_TAKEN_OVER_AT: &str = "guard.ultra-boost.dev/taken-over-at";
/// Prefix of [`RolloutState::by`] while `guard deploy` (a replica's rollout
/// engine) drives the rollout: `engine:<identity>`.
pub const ENGINE_PREFIX: &str = "engine:";
/// Optional Deployment annotation: the HTTPRoute to move canary weights on
/// (default: an HTTPRoute named like the Deployment).
pub const ANNOTATION_HTTPROUTE: &str = "guard.ultra-boost.dev/httproute";
/// Optional Deployment annotation: the Service in front of the Deployment
/// (default: a Service named like the Deployment).
pub const ANNOTATION_SERVICE: &str = "guard.ultra-boost.dev/service";
/// Optional pod-template annotation: the container port serving `/metrics`.
pub const ANNOTATION_METRICS_PORT: &str = "prometheus.io/port";
/// Label on everything guard creates for a canary.
pub const LABEL_ROLE: &str = "guard.ultra-boost.dev/role";
/// The Deployment controller's revision annotation (on Deployments and ReplicaSets).
pub const REVISION: &str = "deployment.kubernetes.io/revision";
/// The Deployment controller's label naming a ReplicaSet's template.
pub const POD_TEMPLATE_HASH: &str = "pod-template-hash";

/// Where a guarded rollout stands. Terminal phases stay until a newer rollout.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Phase {
    /// The first template guard saw: nothing to compare with, accepted as the
    /// last good build.
    Baseline,
    /// The candidate takes traffic and its signals are being judged.
    Verifying,
    /// The candidate passed and is the last good build.
    Promoted,
    /// The candidate failed; the Deployment was set back to `stable`.
    Reverted,
    /// guard could not decide (no data by the deadline, source down, shared
    /// outage) and leaves the Deployment as it is for a person.
    Held,
    /// A newer rollout replaced the candidate before a verdict; nothing was done.
    Superseded,
}

impl Phase {
    /// Whether the phase is final for its candidate.
    pub fn is_terminal(self) -> bool {
        !matches!(self, Phase::Verifying)
    }
}

/// One side of a rollout: a build and the ReplicaSet that runs it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Side {
    pub build: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub commit: Option<String>,
    /// `pod-template-hash` of the ReplicaSet (rolling) or of the canary Deployment's ReplicaSet.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hash: Option<String>,
    /// `deployment.kubernetes.io/revision` when the side was recorded.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revision: Option<i64>,
}

impl Side {
    /// The side of a ReplicaSet.
    pub fn of_replica_set(rs: &ReplicaSet, container: Option<&str>) -> Side {
        let build = rs
            .spec
            .template
            .as_ref()
            .map(|t| build_of(t, container))
            .unwrap_or_else(|| Build {
                number: rs.name_any(),
                commit: None,
                image: None,
                command: Vec::new(),
                env: BTreeMap::new(),
            });
        Side {
            build: build.number,
            image: build.image,
            commit: build.commit,
            hash: hash_of(rs),
            revision: revision_of(rs),
        }
    }

    /// The [`Build`] this side runs.
    pub fn to_build(&self) -> Build {
        Build {
            number: self.build.clone(),
            commit: self.commit.clone(),
            image: self.image.clone(),
            command: Vec::new(),
            env: BTreeMap::new(),
        }
    }
}

/// What guard keeps in [`ANNOTATION_ROLLOUT`] on a guarded Deployment.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RolloutState {
    pub phase: Phase,
    pub strategy: Strategy,
    /// The release being (or last) verified.
    pub candidate: Side,
    /// The last good release: the baseline and the revert target.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stable: Option<Side>,
    /// When the candidate was first noticed.
    pub started_at: jiff::Timestamp,
    /// When the phase last changed.
    pub updated_at: jiff::Timestamp,
    /// Canary: the traffic share the candidate has now.
    #[serde(default)]
    pub share: f64,
    /// Canary with replica ratios: the stable Deployment's replicas before the canary.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stable_replicas: Option<i32>,
    /// The guard replica that wrote this state last; `engine:<identity>` while
    /// `guard deploy` (the engine) drives the rollout, which the controller then
    /// leaves to it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub by: Option<String>,
    /// Why the phase is what it is (the verdict's reason).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// A promoted release still watched by a replica that took the
    /// post-promote watch over from another replica's engine: burn
    /// attributable to it until then still reverts it. `None` otherwise (the
    /// engine that promoted keeps its watch in its own store).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub watch_until: Option<jiff::Timestamp>,
    /// A hold no verdict can end: a revert verdict found no earlier
    /// ReplicaSet to go back to, so judging the release again would only say
    /// so again. Only a person (or a new template) ends it.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub revert_impossible: bool,
}

/// Errors reading guard's own state back.
#[derive(Debug, thiserror::Error)]
pub enum StateError {
    /// The annotation is not JSON of the expected shape (edited by hand?).
    #[error("annotation {ANNOTATION_ROLLOUT} on deployment {deployment}: {detail}")]
    Malformed { deployment: String, detail: String },
}

impl RolloutState {
    /// Reads the state from a Deployment; `Ok(None)` when it has none yet.
    pub fn read(deployment: &Deployment) -> Result<Option<RolloutState>, StateError> {
        match deployment.annotations().get(ANNOTATION_ROLLOUT) {
            None => Ok(None),
            Some(text) => serde_json::from_str(text)
                .map(Some)
                .map_err(|e| StateError::Malformed {
                    deployment: deployment.name_any(),
                    detail: e.to_string(),
                }),
        }
    }

    /// The replica whose rollout engine drives this rollout (`by` is
    /// `engine:<identity>`); `None` when a controller drives it or it is over.
    pub fn engine_owner(&self) -> Option<&str> {
        if self.phase != Phase::Verifying {
            return None;
        }
        self.by.as_deref()?.strip_prefix(ENGINE_PREFIX)
    }

    /// The replica whose engine promoted this release and (as far as the
    /// Deployment tells) may still be watching it: phase `promoted`, `by`
    /// still `engine:<identity>`, no watch taken over yet.
    pub fn engine_watch_owner(&self) -> Option<&str> {
        if self.phase != Phase::Promoted || self.watch_until.is_some() {
            return None;
        }
        self.by.as_deref()?.strip_prefix(ENGINE_PREFIX)
    }

    /// `by` for a write by `identity` that moves this rollout on: it stays
    /// marked `engine:` when an engine drove it, so that a later leader can
    /// tell an engine's rollout (and its watch) from a controller's.
    pub fn next_by(&self, identity: &str) -> String {
        match self.by.as_deref() {
            Some(by) if by.starts_with(ENGINE_PREFIX) => format!("{ENGINE_PREFIX}{identity}"),
            _ => identity.to_string(),
        }
    }

    /// The annotation value.
    pub fn to_annotation(&self) -> String {
        // A struct of strings, numbers and timestamps always serialises.
        serde_json::to_string(self).unwrap_or_default()
    }
}

/// The pod template without the controller's `pod-template-hash` label: what
/// `kubectl rollout undo` copies from a ReplicaSet into its Deployment.
pub fn strip_hash(template: &PodTemplateSpec) -> PodTemplateSpec {
    let mut t = template.clone();
    if let Some(meta) = t.metadata.as_mut()
        && let Some(labels) = meta.labels.as_mut()
    {
        labels.remove(POD_TEMPLATE_HASH);
        if labels.is_empty() {
            meta.labels = None;
        }
    }
    t
}

/// Whether two pod templates are the same, ignoring `pod-template-hash`
/// (the Deployment controller's own notion of "same ReplicaSet").
pub fn same_template(a: &PodTemplateSpec, b: &PodTemplateSpec) -> bool {
    serde_json::to_value(strip_hash(a)).ok() == serde_json::to_value(strip_hash(b)).ok()
}

/// `deployment.kubernetes.io/revision` of a Deployment or ReplicaSet.
pub fn revision_of<K: ResourceExt>(obj: &K) -> Option<i64> {
    obj.annotations().get(REVISION).and_then(|r| r.parse().ok())
}

/// `pod-template-hash` of a ReplicaSet.
pub fn hash_of(rs: &ReplicaSet) -> Option<String> {
    rs.labels().get(POD_TEMPLATE_HASH).cloned()
}

/// The pod template of a ReplicaSet.
pub fn template_of(rs: &ReplicaSet) -> Option<&PodTemplateSpec> {
    rs.spec.template.as_ref()
}

fn container_index(template: &PodTemplateSpec, container: Option<&str>) -> Option<usize> {
    let containers = &template.spec.as_ref()?.containers;
    match container {
        Some(name) => containers
            .iter()
            .position(|c| c.name == name)
            .or(if containers.is_empty() { None } else { Some(0) }),
        None if containers.is_empty() => None,
        None => Some(0),
    }
}

/// The build a pod template runs: [`ANNOTATION_BUILD`], else the image tag,
/// else the image itself.
pub fn build_of(template: &PodTemplateSpec, container: Option<&str>) -> Build {
    let image = container_index(template, container).and_then(|i| {
        template
            .spec
            .as_ref()
            .and_then(|s| s.containers[i].image.clone())
    });
    let annotations = template
        .metadata
        .as_ref()
        .and_then(|m| m.annotations.as_ref());
    let number = annotations
        .and_then(|a| a.get(ANNOTATION_BUILD).cloned())
        .or_else(|| image.as_deref().map(image_tag))
        .unwrap_or_else(|| "unknown".into());
    Build {
        number,
        commit: annotations.and_then(|a| a.get(ANNOTATION_COMMIT).cloned()),
        image,
        command: Vec::new(),
        env: BTreeMap::new(),
    }
}

/// The tag (or digest) of an image reference; the reference itself when it has neither.
pub fn image_tag(image: &str) -> String {
    if let Some((_, digest)) = image.split_once('@') {
        return digest.to_string();
    }
    let last = image.rsplit('/').next().unwrap_or(image);
    match last.split_once(':') {
        Some((_, tag)) => tag.to_string(),
        None => image.to_string(),
    }
}

/// `template` running `build`: the image of the guarded container replaced,
/// build and commit annotations set. Errors when the build has no image.
pub fn with_build(
    template: &PodTemplateSpec,
    build: &Build,
    container: Option<&str>,
) -> Option<PodTemplateSpec> {
    let image = build.image.clone()?;
    let mut t = strip_hash(template);
    let i = container_index(&t, container)?;
    t.spec.as_mut()?.containers[i].image = Some(image);
    let meta = t.metadata.get_or_insert_with(Default::default);
    let annotations = meta.annotations.get_or_insert_with(Default::default);
    annotations.insert(ANNOTATION_BUILD.into(), build.number.clone());
    match &build.commit {
        Some(c) => {
            annotations.insert(ANNOTATION_COMMIT.into(), c.clone());
        }
        None => {
            annotations.remove(ANNOTATION_COMMIT);
        }
    }
    Some(t)
}

/// The ReplicaSets a Deployment owns (by controller owner reference).
pub fn owned_by<'a>(deployment: &Deployment, all: &'a [ReplicaSet]) -> Vec<&'a ReplicaSet> {
    let uid = deployment.metadata.uid.as_deref();
    all.iter()
        .filter(|rs| {
            rs.metadata.owner_references.as_ref().is_some_and(|refs| {
                refs.iter()
                    .any(|r| r.kind == "Deployment" && Some(r.uid.as_str()) == uid)
            })
        })
        .collect()
}

/// The ReplicaSet running the Deployment's current template, if the
/// Deployment controller has made it yet.
pub fn current_replica_set<'a>(
    deployment: &Deployment,
    owned: &[&'a ReplicaSet],
) -> Option<&'a ReplicaSet> {
    let template = &deployment.spec.template;
    owned
        .iter()
        .copied()
        .find(|rs| template_of(rs).is_some_and(|t| same_template(t, template)))
}

/// The ReplicaSet a revert goes back to, as `kubectl rollout undo` chooses it:
/// the one with `prefer_hash` when it still exists (guard's recorded last good
/// build), else the highest revision below the current one.
pub fn revert_target<'a>(
    owned: &[&'a ReplicaSet],
    current: &ReplicaSet,
    prefer_hash: Option<&str>,
) -> Option<&'a ReplicaSet> {
    let current_hash = hash_of(current);
    if let Some(h) = prefer_hash
        && Some(h) != current_hash.as_deref()
        && let Some(rs) = owned
            .iter()
            .copied()
            .find(|rs| hash_of(rs).as_deref() == Some(h))
    {
        return Some(rs);
    }
    let current_rev = revision_of(current).unwrap_or(i64::MAX);
    owned
        .iter()
        .copied()
        .filter(|rs| {
            hash_of(rs) != current_hash && revision_of(*rs).is_some_and(|r| r < current_rev)
        })
        .max_by_key(|rs| revision_of(*rs))
}

/// What the controller should do about a Deployment whose current
/// ReplicaSet has `current_hash`, given the state it recorded.
#[derive(Clone, Debug, PartialEq)]
pub enum Next {
    /// Nothing new: the state already covers this template.
    Nothing,
    /// The candidate is still being verified: go on (a new leader resumes here).
    Verify,
    /// A new template is running: start verifying it against the last good build
    /// (`None`: take the ReplicaSet of the previous revision).
    Start { stable: Option<Side> },
}

/// See [`Next`].
pub fn next_step(state: Option<&RolloutState>, current_hash: &str) -> Next {
    let Some(state) = state else {
        return Next::Start { stable: None };
    };
    let candidate_hash = state.candidate.hash.as_deref();
    if candidate_hash == Some(current_hash) {
        return if state.phase == Phase::Verifying {
            Next::Verify
        } else {
            Next::Nothing
        };
    }
    // guard's own revert made the previous ReplicaSet current again.
    if state.phase == Phase::Reverted
        && state.stable.as_ref().and_then(|s| s.hash.as_deref()) == Some(current_hash)
    {
        return Next::Nothing;
    }
    // A newer template: the last good build is the promoted candidate, or the
    // stable side of an unfinished/failed rollout.
    let stable = match state.phase {
        Phase::Baseline | Phase::Promoted => Some(state.candidate.clone()),
        Phase::Verifying | Phase::Reverted | Phase::Held | Phase::Superseded => {
            state.stable.clone()
        }
    };
    Next::Start { stable }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::apps::v1::ReplicaSetSpec;
    use k8s_openapi::api::core::v1::{Container, PodSpec};
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};

    fn template(image: &str, hash: Option<&str>) -> PodTemplateSpec {
        let mut labels = BTreeMap::from([("app".to_string(), "web".to_string())]);
        if let Some(h) = hash {
            labels.insert(POD_TEMPLATE_HASH.into(), h.into());
        }
        PodTemplateSpec {
            metadata: Some(ObjectMeta {
                labels: Some(labels),
                ..Default::default()
            }),
            spec: Some(PodSpec {
                containers: vec![Container {
                    name: "web".into(),
                    image: Some(image.into()),
                    ..Default::default()
                }],
                ..Default::default()
            }),
        }
    }

    fn rs(hash: &str, rev: i64, image: &str) -> ReplicaSet {
        ReplicaSet {
            metadata: ObjectMeta {
                name: Some(format!("web-{hash}")),
                labels: Some(BTreeMap::from([(
                    POD_TEMPLATE_HASH.to_string(),
                    hash.to_string(),
                )])),
                annotations: Some(BTreeMap::from([(REVISION.to_string(), rev.to_string())])),
                owner_references: Some(vec![OwnerReference {
                    kind: "Deployment".into(),
                    uid: "u1".into(),
                    name: "web".into(),
                    api_version: "apps/v1".into(),
                    ..Default::default()
                }]),
                ..Default::default()
            },
            spec: ReplicaSetSpec {
                template: Some(template(image, Some(hash))),
                ..Default::default()
            },
            status: None,
        }
    }

    #[test]
    fn same_template_ignores_the_hash_label_only() {
        assert!(same_template(
            &template("a:1", Some("x")),
            &template("a:1", None)
        ));
        assert!(!same_template(
            &template("a:1", None),
            &template("a:2", None)
        ));
        assert_eq!(
            strip_hash(&template("a:1", Some("x"))),
            template("a:1", None)
        );
    }

    #[test]
    fn build_comes_from_annotation_then_tag() {
        let mut t = template("registry.example/ultra-boost:86", None);
        assert_eq!(build_of(&t, None).number, "86");
        t.metadata.as_mut().unwrap().annotations = Some(BTreeMap::from([(
            ANNOTATION_BUILD.to_string(),
            "b-7".to_string(),
        )]));
        assert_eq!(build_of(&t, Some("web")).number, "b-7");
        assert_eq!(image_tag("localhost:5000/ub"), "localhost:5000/ub");
        assert_eq!(image_tag("ub@sha256:abc"), "sha256:abc");
    }

    #[test]
    fn with_build_sets_image_and_annotations() {
        let b = Build {
            number: "87".into(),
            commit: Some("abc".into()),
            image: Some("ub:87".into()),
            command: vec![],
            env: BTreeMap::new(),
        };
        let t = with_build(&template("ub:86", Some("h")), &b, Some("web")).unwrap();
        assert_eq!(build_of(&t, None), b);
        assert!(
            !t.metadata
                .unwrap()
                .labels
                .unwrap()
                .contains_key(POD_TEMPLATE_HASH)
        );
        let no_image = Build { image: None, ..b };
        assert!(with_build(&template("ub:86", None), &no_image, None).is_none());
    }

    #[test]
    fn revert_target_prefers_recorded_hash_then_previous_revision() {
        let all = [rs("a", 1, "ub:1"), rs("b", 2, "ub:2"), rs("c", 3, "ub:3")];
        let owned: Vec<&ReplicaSet> = all.iter().collect();
        let current = &all[2];
        assert_eq!(
            hash_of(revert_target(&owned, current, None).unwrap()).unwrap(),
            "b"
        );
        assert_eq!(
            hash_of(revert_target(&owned, current, Some("a")).unwrap()).unwrap(),
            "a"
        );
        // A recorded hash that no longer exists falls back to the previous revision.
        assert_eq!(
            hash_of(revert_target(&owned, current, Some("gone")).unwrap()).unwrap(),
            "b"
        );
        assert!(revert_target(&owned[..1], &all[0], None).is_none());
    }

    fn state(phase: Phase, cand: &str, stable: Option<&str>) -> RolloutState {
        let side = |h: &str| Side {
            build: h.into(),
            image: None,
            commit: None,
            hash: Some(h.into()),
            revision: None,
        };
        RolloutState {
            phase,
            strategy: Strategy::Rolling,
            candidate: side(cand),
            stable: stable.map(side),
            started_at: jiff::Timestamp::UNIX_EPOCH,
            updated_at: jiff::Timestamp::UNIX_EPOCH,
            share: 0.0,
            stable_replicas: None,
            by: None,
            reason: None,
            watch_until: None,
            revert_impossible: false,
        }
    }

    #[test]
    fn next_step_resumes_ignores_own_revert_and_starts_new_rollouts() {
        assert_eq!(next_step(None, "a"), Next::Start { stable: None });
        assert_eq!(
            next_step(Some(&state(Phase::Verifying, "b", Some("a"))), "b"),
            Next::Verify
        );
        assert_eq!(
            next_step(Some(&state(Phase::Promoted, "b", Some("a"))), "b"),
            Next::Nothing
        );
        assert_eq!(
            next_step(Some(&state(Phase::Reverted, "b", Some("a"))), "a"),
            Next::Nothing
        );
        let Next::Start { stable } = next_step(Some(&state(Phase::Promoted, "b", Some("a"))), "c")
        else {
            panic!("expected a new rollout")
        };
        assert_eq!(stable.unwrap().hash.as_deref(), Some("b"));
        let Next::Start { stable } = next_step(Some(&state(Phase::Reverted, "b", Some("a"))), "c")
        else {
            panic!("expected a new rollout")
        };
        assert_eq!(stable.unwrap().hash.as_deref(), Some("a"));
    }

    #[test]
    fn state_round_trips_through_the_annotation() {
        let s = state(Phase::Verifying, "b", Some("a"));
        let back: RolloutState = serde_json::from_str(&s.to_annotation()).unwrap();
        assert_eq!(back, s);
    }

    #[test]
    fn an_engine_promote_keeps_its_mark_so_its_watch_can_be_taken_over() {
        let mut s = state(Phase::Verifying, "b", Some("a"));
        s.by = Some("engine:guard-a".into());
        assert_eq!(s.next_by("guard-a"), "engine:guard-a");
        s.phase = Phase::Promoted;
        assert_eq!(s.engine_watch_owner(), Some("guard-a"));
        s.watch_until = Some(jiff::Timestamp::UNIX_EPOCH);
        assert_eq!(s.engine_watch_owner(), None, "already taken over");
        s.watch_until = None;
        s.by = Some("guard-b".into());
        assert_eq!(s.engine_watch_owner(), None, "a controller promoted it");
        assert_eq!(s.next_by("guard-a"), "guard-a");
        s.by = None;
        assert_eq!(s.next_by("guard-a"), "guard-a");
    }

    #[test]
    fn engine_owner_only_while_an_engine_verifies() {
        let mut s = state(Phase::Verifying, "b", Some("a"));
        assert_eq!(s.engine_owner(), None, "no owner recorded");
        s.by = Some("guard-a".into());
        assert_eq!(s.engine_owner(), None, "a controller drives it");
        s.by = Some("engine:guard-a".into());
        assert_eq!(s.engine_owner(), Some("guard-a"));
        s.phase = Phase::Promoted;
        assert_eq!(s.engine_owner(), None, "over: nothing to take over");
        let written = r#"{"phase":"verifying","strategy":"canary","candidate":{"build":"2"},"started_at":"2026-01-01T00:00:00Z","updated_at":"2026-01-01T00:00:00Z","by":"engine:guard-a"}"#;
        let s: RolloutState = serde_json::from_str(written).unwrap();
        assert_eq!(s.engine_owner(), Some("guard-a"));
    }
}
