//! Canary releases on Kubernetes: a `<name>-canary` Deployment beside the
//! stable one, traffic moved in steps.
//!
//! Two ways to split traffic, chosen per Deployment:
//!
//! 1. **Gateway API.** When an `HTTPRoute` (gateway.networking.k8s.io/v1) named
//!    by the annotation `guard.ultra-boost.dev/httproute` (default: the
//!    Deployment's name) exists, guard runs the canary at full size behind its
//!    own Service `<service>-canary` and sets the route's `backendRefs`
//!    weights: stable `100 − w`, canary `w` (integer percent). The stable
//!    Service must not also reach canary pods: with the track convention of
//!    `deploy/kustomize/base` (selectors carry `guard.ultra-boost.dev/track:
//!    stable`) the canary gets `track: canary`, which the manifests' own
//!    `<service>-canary` Service selects; without it, the canary's pod labels
//!    that the stable Deployment selects on get the suffix `-canary`
//!    (`app: web` becomes `app: web-canary`). The canary Service is created
//!    when missing and left in place afterwards (it then selects nothing).
//! 2. **Replica ratio** (no Gateway API, or no route): the canary pods keep the
//!    stable labels (so the stable Service reaches them) plus the role label,
//!    and the share is the ratio of replicas: `ceil(total · share)` canary
//!    pods, the rest stable. The stable replica count before the canary is
//!    kept in the rollout state and restored afterwards.
//!
//! Promote copies the canary's pod template (with the stable labels) into the
//! stable Deployment, waits for it to roll out, then moves the route back to
//! the stable Service only and removes the canary Deployment and Service.
//! Abort (revert) moves the route back first, then removes the canary. Every
//! step is idempotent: server-side apply with field manager `guard`, deletes
//! that accept "already gone".

use std::collections::BTreeMap;

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::Service;
use kube::ResourceExt;
use kube::api::{
    Api, ApiResource, DeleteParams, DynamicObject, GroupVersionKind, Patch, PatchParams,
};
use serde_json::{Value, json};

use super::rollout::{
    self, ANNOTATION_HTTPROUTE, ANNOTATION_REVERTED_AT, ANNOTATION_REVERTED_BY,
    ANNOTATION_REVERTED_REASON, ANNOTATION_REVERTED_TO, ANNOTATION_ROLLOUT, ANNOTATION_SERVICE,
    ENGINE_PREFIX, LABEL_ROLE, Phase, RolloutState, Side,
};
use super::{KubernetesPlatform, action_error, is_status};
use crate::platform::{Build, Observed, PlatformError, Role, Strategy};

/// The label that splits stable and canary pods in guard's manifests.
pub const LABEL_TRACK: &str = "guard.ultra-boost.dev/track";

/// The field manager guard applies with.
pub const FIELD_MANAGER: &str = "guard";

/// Gateway API `HTTPRoute`, which k8s-openapi does not carry.
pub fn httproute_resource() -> ApiResource {
    ApiResource::from_gvk_with_plural(
        &GroupVersionKind::gvk("gateway.networking.k8s.io", "v1", "HTTPRoute"),
        "httproutes",
    )
}

/// Name of the canary Deployment of `name`.
pub fn canary_name(name: &str) -> String {
    format!("{name}-canary")
}

fn service_name(stable: &Deployment) -> String {
    stable
        .annotations()
        .get(ANNOTATION_SERVICE)
        .cloned()
        .unwrap_or_else(|| stable.name_any())
}

fn route_name(stable: &Deployment) -> String {
    stable
        .annotations()
        .get(ANNOTATION_HTTPROUTE)
        .cloned()
        .unwrap_or_else(|| stable.name_any())
}

/// The route to move weights on; `None` when the cluster has no Gateway API
/// or the route does not exist (then replica ratios are used).
pub async fn find_route(
    p: &KubernetesPlatform,
    ns: &str,
    stable: &Deployment,
) -> Result<Option<DynamicObject>, PlatformError> {
    let api: Api<DynamicObject> =
        Api::namespaced_with(p.client().clone(), ns, &httproute_resource());
    let name = route_name(stable);
    match api.get(&name).await {
        Ok(route) => Ok(Some(route)),
        Err(e) if is_status(&e, 404) => Ok(None),
        Err(e) => Err(action_error(format!("get httproute {ns}/{name}"), e)),
    }
}

/// The canary's weight (percent) on a route, `None` when no rule refers to the stable Service.
pub fn route_weights(route: &DynamicObject, service: &str) -> Option<(i64, i64)> {
    let canary = format!("{service}-canary");
    let rules = route.data.pointer("/spec/rules")?.as_array()?;
    for rule in rules {
        let refs = rule.get("backendRefs").and_then(Value::as_array)?;
        let weight = |n: &str| {
            refs.iter()
                .find(|r| r.get("name").and_then(Value::as_str) == Some(n))
                .map(|r| r.get("weight").and_then(Value::as_i64).unwrap_or(1))
        };
        if let Some(s) = weight(service) {
            return Some((s, weight(&canary).unwrap_or(0)));
        }
    }
    None
}

/// The route's rules with the stable Service at `100 − pct` and the canary at
/// `pct` (at 0 an existing canary reference stays, at weight 0, as the
/// manifests declare it; a missing one is not added).
pub fn weighted_rules(route: &DynamicObject, service: &str, pct: i64) -> Option<Value> {
    let canary = format!("{service}-canary");
    let mut rules = route.data.pointer("/spec/rules")?.as_array()?.clone();
    let mut touched = false;
    for rule in &mut rules {
        let Some(refs) = rule.get_mut("backendRefs").and_then(Value::as_array_mut) else {
            continue;
        };
        let Some(stable_ref) = refs
            .iter()
            .find(|r| r.get("name").and_then(Value::as_str) == Some(service))
            .cloned()
        else {
            continue;
        };
        touched = true;
        let mut has_canary = false;
        for r in refs.iter_mut() {
            let name = r.get("name").and_then(Value::as_str);
            if name == Some(service) {
                r["weight"] = json!(100 - pct);
            } else if name == Some(canary.as_str()) {
                r["weight"] = json!(pct);
                has_canary = true;
            }
        }
        if pct > 0 && !has_canary {
            let mut c = stable_ref.clone();
            c["name"] = json!(canary);
            c["weight"] = json!(pct);
            refs.push(c);
        }
    }
    touched.then_some(Value::Array(rules))
}

async fn set_route_weight(
    p: &KubernetesPlatform,
    ns: &str,
    route: &DynamicObject,
    service: &str,
    pct: i64,
) -> Result<(), PlatformError> {
    let name = route.name_any();
    let Some(rules) = weighted_rules(route, service, pct) else {
        return Err(action_error(
            format!("set weights on httproute {ns}/{name}"),
            format!("no rule of the route has a backendRef to Service {service:?}"),
        ));
    };
    if route.data.pointer("/spec/rules") == Some(&rules) {
        return Ok(());
    }
    let api: Api<DynamicObject> =
        Api::namespaced_with(p.client().clone(), ns, &httproute_resource());
    // A merge patch replaces the `rules` list whole, which is what we computed.
    api.patch(
        &name,
        &PatchParams::default(),
        &Patch::Merge(&json!({"spec": {"rules": rules}})),
    )
    .await
    .map_err(|e| action_error(format!("set weights on httproute {ns}/{name}"), e))?;
    tracing::info!(route = %format!("{ns}/{name}"), canary_percent = pct, "moved canary weight");
    Ok(())
}

/// Whether a canary Deployment exists for `name`.
pub async fn exists(p: &KubernetesPlatform, ns: &str, name: &str) -> Result<bool, PlatformError> {
    match p.deployments(ns).get(&canary_name(name)).await {
        Ok(_) => Ok(true),
        Err(e) if is_status(&e, 404) => Ok(false),
        Err(e) => Err(action_error(
            format!("get deployment {ns}/{}", canary_name(name)),
            e,
        )),
    }
}

/// Canary labels from stable ones: `track: canary` under the track
/// convention, else a `-canary` suffix on the values of the selected `keys`.
fn suffix_labels(
    labels: &BTreeMap<String, String>,
    keys: &BTreeMap<String, String>,
) -> BTreeMap<String, String> {
    if keys.contains_key(LABEL_TRACK) {
        let mut out = labels.clone();
        if out.contains_key(LABEL_TRACK) {
            out.insert(LABEL_TRACK.into(), "canary".into());
        }
        return out;
    }
    labels
        .iter()
        .map(|(k, v)| {
            if keys.contains_key(k) {
                (k.clone(), format!("{v}-canary"))
            } else {
                (k.clone(), v.clone())
            }
        })
        .collect()
}

/// Builds the canary Deployment from the stable one.
fn canary_deployment(
    stable: &Deployment,
    candidate: &Build,
    container: Option<&str>,
    replicas: i32,
    gateway: bool,
) -> Result<Deployment, PlatformError> {
    let name = stable.name_any();
    let spec = &stable.spec;
    let mut template =
        rollout::with_build(&spec.template, candidate, container).ok_or_else(|| {
            action_error(
                format!("canary of {name}"),
                format!("build {} has no image", candidate.number),
            )
        })?;
    let select = spec.selector.match_labels.clone().unwrap_or_default();
    let mut selector = spec.selector.clone();
    let meta = template.metadata.get_or_insert_with(Default::default);
    let mut labels = meta.labels.clone().unwrap_or_default();
    let mut sel_labels = select.clone();
    if gateway {
        labels = suffix_labels(&labels, &select);
        sel_labels = suffix_labels(&sel_labels, &select);
    }
    labels.insert(LABEL_ROLE.into(), "canary".into());
    sel_labels.insert(LABEL_ROLE.into(), "canary".into());
    meta.labels = Some(labels);
    selector.match_labels = Some(sel_labels);
    let mut canary = Deployment::default();
    canary.metadata.name = Some(canary_name(&name));
    canary.metadata.labels = Some(BTreeMap::from([
        (LABEL_ROLE.to_string(), "canary".to_string()),
        (
            "app.kubernetes.io/managed-by".to_string(),
            "guard".to_string(),
        ),
    ]));
    canary.metadata.annotations = Some(BTreeMap::from([(
        "guard.ultra-boost.dev/canary-of".to_string(),
        name,
    )]));
    let mut cspec = spec.clone();
    cspec.replicas = Some(replicas);
    cspec.selector = selector;
    cspec.template = template;
    canary.spec = cspec;
    Ok(canary)
}

async fn apply<K>(api: &Api<K>, name: &str, obj: &K) -> Result<K, kube::Error>
where
    K: kube::Resource + Clone + serde::de::DeserializeOwned + serde::Serialize + std::fmt::Debug,
{
    api.patch(
        name,
        &PatchParams::apply(FIELD_MANAGER).force(),
        &Patch::Apply(obj),
    )
    .await
}

/// Gives the candidate `share` of the traffic (see the module docs).
pub async fn shift(
    p: &KubernetesPlatform,
    ns: &str,
    name: &str,
    candidate: &Build,
    share: f64,
) -> Result<(), PlatformError> {
    let share = share.clamp(0.0, 1.0);
    let view = p.view(ns, name).await?;
    let stable = view.deployment.clone();
    let container = p.settings().container.as_deref();
    let mut state =
        RolloutState::read(&stable).map_err(|e| action_error("read rollout state", e))?;
    let in_flight = state
        .as_ref()
        .is_some_and(|s| s.strategy == Strategy::Canary && s.phase == Phase::Verifying);
    let stable_replicas = state
        .as_ref()
        .filter(|_| in_flight)
        .and_then(|s| s.stable_replicas)
        .unwrap_or_else(|| stable.spec.replicas.unwrap_or(1));
    let route = find_route(p, ns, &stable).await?;
    let gateway = route.is_some();
    let canary_replicas = if gateway {
        stable_replicas.max(1)
    } else {
        ((f64::from(stable_replicas) * share).ceil() as i32).clamp(1, stable_replicas.max(1))
    };
    // Record the step before acting, so a new leader knows what was intended.
    let now = jiff::Timestamp::now();
    let stable_side = view.current().map(|rs| Side::of_replica_set(rs, container));
    let next = RolloutState {
        phase: Phase::Verifying,
        strategy: Strategy::Canary,
        candidate: Side {
            build: candidate.number.clone(),
            image: candidate.image.clone(),
            commit: candidate.commit.clone(),
            hash: None,
            revision: None,
        },
        stable: if in_flight {
            state.as_ref().and_then(|s| s.stable.clone())
        } else {
            stable_side
        },
        started_at: if in_flight {
            state.as_ref().map(|s| s.started_at).unwrap_or(now)
        } else {
            now
        },
        updated_at: now,
        share,
        stable_replicas: Some(stable_replicas),
        // Canaries are only ever driven by `guard deploy` (the engine); the
        // controller takes one over when this replica stops leading.
        by: Some(format!("{ENGINE_PREFIX}{}", p.settings().identity)),
        reason: Some(format!("canary at {:.0} %", share * 100.0)),
        watch_until: None,
        revert_impossible: false,
    };
    if state.as_ref() != Some(&next) {
        p.write_state(ns, name, stable.metadata.resource_version.as_deref(), &next)
            .await
            .map_err(|e| action_error(format!("record canary step on {ns}/{name}"), e))?;
        state = Some(next);
    }
    let canary = canary_deployment(&stable, candidate, container, canary_replicas, gateway)?;
    let deployments = p.deployments(ns);
    apply(&deployments, &canary_name(name), &canary)
        .await
        .map_err(|e| action_error(format!("apply deployment {ns}/{}", canary_name(name)), e))?;
    if gateway {
        ensure_canary_service(p, ns, &stable).await?;
    } else {
        // Replica ratio: the stable Deployment gives up what the canary takes.
        let stable_now = if share >= 1.0 {
            0
        } else {
            (stable_replicas - canary_replicas).max(1)
        };
        if stable.spec.replicas != Some(stable_now) {
            p.deployments(ns)
                .patch(
                    name,
                    &PatchParams::default(),
                    &Patch::Merge(&json!({"spec": {"replicas": stable_now}})),
                )
                .await
                .map_err(|e| action_error(format!("scale {ns}/{name}"), e))?;
        }
    }
    let cview = p
        .wait_rolled_out(ns, &canary_name(name), &candidate.number)
        .await?;
    if let (Some(mut st), Some(rs)) = (state, cview.current())
        && st.candidate.hash.is_none()
    {
        st.candidate = Side::of_replica_set(rs, container);
        let fresh = p
            .deployments(ns)
            .get(name)
            .await
            .map_err(|e| action_error(format!("get {ns}/{name}"), e))?;
        p.write_state(ns, name, fresh.metadata.resource_version.as_deref(), &st)
            .await
            .map_err(|e| action_error(format!("record canary of {ns}/{name}"), e))?;
    }
    if let Some(route) = route {
        let pct = (share * 100.0).round() as i64;
        set_route_weight(p, ns, &route, &service_name(&stable), pct).await?;
    }
    Ok(())
}

async fn ensure_canary_service(
    p: &KubernetesPlatform,
    ns: &str,
    stable: &Deployment,
) -> Result<(), PlatformError> {
    let services: Api<Service> = Api::namespaced(p.client().clone(), ns);
    let svc_name = service_name(stable);
    match services.get_opt(&format!("{svc_name}-canary")).await {
        Ok(Some(_)) => return Ok(()),
        Ok(None) => {}
        Err(e) => {
            return Err(action_error(
                format!("get service {ns}/{svc_name}-canary"),
                e,
            ));
        }
    }
    let svc = services
        .get(&svc_name)
        .await
        .map_err(|e| action_error(format!("get service {ns}/{svc_name}"), e))?;
    let select = stable
        .spec
        .selector
        .match_labels
        .clone()
        .unwrap_or_default();
    let Some(spec) = svc.spec.as_ref() else {
        return Err(action_error(
            format!("service {ns}/{svc_name}"),
            "service has no spec",
        ));
    };
    let mut selector = suffix_labels(&spec.selector.clone().unwrap_or_default(), &select);
    selector.insert(LABEL_ROLE.into(), "canary".into());
    let mut canary = Service::default();
    canary.metadata.name = Some(format!("{svc_name}-canary"));
    canary.metadata.labels = Some(BTreeMap::from([
        (LABEL_ROLE.to_string(), "canary".to_string()),
        (
            "app.kubernetes.io/managed-by".to_string(),
            "guard".to_string(),
        ),
    ]));
    canary.spec = Some(k8s_openapi::api::core::v1::ServiceSpec {
        selector: Some(selector),
        ports: spec.ports.clone().map(|ports| {
            ports
                .into_iter()
                .map(|mut port| {
                    port.node_port = None;
                    port
                })
                .collect()
        }),
        type_: Some("ClusterIP".into()),
        ..Default::default()
    });
    match services.create(&Default::default(), &canary).await {
        Ok(_) => {}
        Err(e) if is_status(&e, 409) => {}
        Err(e) => {
            return Err(action_error(
                format!("create service {ns}/{svc_name}-canary"),
                e,
            ));
        }
    }
    Ok(())
}

async fn remove_canary(
    p: &KubernetesPlatform,
    ns: &str,
    stable: &Deployment,
) -> Result<(), PlatformError> {
    let name = stable.name_any();
    if let Some(route) = find_route(p, ns, stable).await? {
        let svc = service_name(stable);
        if route_weights(&route, &svc).is_some() {
            set_route_weight(p, ns, &route, &svc, 0).await?;
        }
    }
    let dp = DeleteParams::default();
    match p.deployments(ns).delete(&canary_name(&name), &dp).await {
        Ok(_) => {}
        Err(e) if is_status(&e, 404) => {}
        Err(e) => {
            return Err(action_error(
                format!("delete deployment {ns}/{}", canary_name(&name)),
                e,
            ));
        }
    }
    // The `<service>-canary` Service stays: it belongs to the manifests (or
    // was created once by guard) and selects no pods without a canary.
    Ok(())
}

/// The canary passed: its template becomes the stable Deployment's.
pub async fn promote(
    p: &KubernetesPlatform,
    ns: &str,
    name: &str,
    candidate: &Build,
) -> Result<(), PlatformError> {
    let container = p.settings().container.as_deref();
    for _attempt in 0..5 {
        let stable = p
            .deployments(ns)
            .get(name)
            .await
            .map_err(|e| action_error(format!("get {ns}/{name}"), e))?;
        let state = RolloutState::read(&stable).ok().flatten();
        let canary = match p.deployments(ns).get(&canary_name(name)).await {
            Ok(c) => Some(c),
            Err(e) if is_status(&e, 404) => None,
            Err(e) => return Err(action_error(format!("get {ns}/{}", canary_name(name)), e)),
        };
        let spec = &stable.spec;
        // The canary's template with the stable labels: pod spec and annotations copied.
        let mut template = match canary.as_ref().map(|c| &c.spec) {
            Some(cspec) => cspec.template.clone(),
            None => rollout::with_build(&spec.template, candidate, container).ok_or_else(|| {
                action_error(
                    format!("promote {ns}/{name}"),
                    format!("build {} has no image", candidate.number),
                )
            })?,
        };
        let meta = template.metadata.get_or_insert_with(Default::default);
        meta.labels = spec
            .template
            .metadata
            .as_ref()
            .and_then(|m| m.labels.clone());
        let replicas = state
            .as_ref()
            .and_then(|s| s.stable_replicas)
            .or(spec.replicas);
        let unchanged =
            rollout::same_template(&template, &spec.template) && spec.replicas == replicas;
        if !unchanged {
            let mut next = stable.clone();
            next.spec.template = template;
            next.spec.replicas = replicas;
            if let Some(mut st) = state.clone() {
                st.phase = Phase::Promoted;
                st.share = 1.0;
                st.updated_at = jiff::Timestamp::now();
                st.by = Some(st.next_by(&p.settings().identity));
                st.reason = Some(format!("canary build {} promoted", candidate.number));
                next.metadata
                    .annotations
                    .get_or_insert_with(Default::default)
                    .insert(ANNOTATION_ROLLOUT.into(), st.to_annotation());
            }
            match p
                .deployments(ns)
                .replace(name, &Default::default(), &next)
                .await
            {
                Ok(_) => {}
                Err(e) if is_status(&e, 409) => continue,
                Err(e) => return Err(action_error(format!("promote {ns}/{name}"), e)),
            }
        }
        let view = p.wait_rolled_out(ns, name, &candidate.number).await?;
        remove_canary(p, ns, &view.deployment).await?;
        // The candidate now runs in the stable Deployment's own ReplicaSet:
        // record that one, so the controller does not take the promoted
        // template for a new rollout of the same build.
        let running = view
            .current()
            .map(|rs| Side::of_replica_set(rs, container))
            .filter(|side| side.build == candidate.number);
        if let Ok(Some(mut st)) = RolloutState::read(&view.deployment)
            && (st.phase != Phase::Promoted
                || running
                    .as_ref()
                    .is_some_and(|r| r.hash != st.candidate.hash))
        {
            st.phase = Phase::Promoted;
            if let Some(side) = running {
                st.candidate = side;
            }
            st.updated_at = jiff::Timestamp::now();
            p.write_state(ns, name, None, &st)
                .await
                .map_err(|e| action_error("record promote", e))?;
        }
        tracing::info!(deployment = %format!("{ns}/{name}"), build = %candidate.number, "canary promoted");
        return Ok(());
    }
    Err(action_error(
        format!("promote {ns}/{name}"),
        "the Deployment kept changing under guard",
    ))
}

/// The canary failed: all traffic back to the stable Deployment, canary removed.
pub async fn abort(
    p: &KubernetesPlatform,
    ns: &str,
    name: &str,
    reason: &str,
) -> Result<(), PlatformError> {
    let stable = p
        .deployments(ns)
        .get(name)
        .await
        .map_err(|e| action_error(format!("get {ns}/{name}"), e))?;
    let state = RolloutState::read(&stable).ok().flatten();
    // Traffic first, then the canary goes: no request is sent to a deleted backend.
    remove_canary(p, ns, &stable).await?;
    let mut patch = json!({"metadata": {"annotations": {
        ANNOTATION_REVERTED_BY: p.settings().identity,
        ANNOTATION_REVERTED_REASON: reason,
        ANNOTATION_REVERTED_AT: jiff::Timestamp::now().to_string(),
    }}});
    if let Some(mut st) = state {
        if let Some(to) = st.stable.as_ref() {
            patch["metadata"]["annotations"][ANNOTATION_REVERTED_TO] = json!(format!(
                "build {} (revision {})",
                to.build,
                to.revision.unwrap_or(0)
            ));
        }
        if let Some(r) = st.stable_replicas {
            patch["spec"] = json!({"replicas": r});
        }
        st.phase = Phase::Reverted;
        st.share = 0.0;
        st.updated_at = jiff::Timestamp::now();
        st.by = Some(p.settings().identity.clone());
        st.reason = Some(reason.into());
        patch["metadata"]["annotations"][ANNOTATION_ROLLOUT] = json!(st.to_annotation());
    }
    p.deployments(ns)
        .patch(name, &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .map_err(|e| action_error(format!("record revert on {ns}/{name}"), e))?;
    tracing::info!(deployment = %format!("{ns}/{name}"), reason, "canary aborted, traffic back on the stable release");
    Ok(())
}

/// What runs while a canary exists; `None` when there is no canary.
pub async fn observe(
    p: &KubernetesPlatform,
    ns: &str,
    name: &str,
) -> Result<Option<Observed>, PlatformError> {
    if !exists(p, ns, name).await? {
        return Ok(None);
    }
    let container = p.settings().container.as_deref();
    let stable = p.view(ns, name).await?;
    let canary = p.view(ns, &canary_name(name)).await?;
    let mut obs = Observed::default();
    if let Some(rs) = stable.current() {
        let side = Side::of_replica_set(rs, container);
        obs.stable = Some(side.build.clone());
        if let Some(h) = side.hash.as_deref() {
            obs.endpoints
                .extend(p.endpoints(ns, h, Role::Stable, &side.build).await?);
        }
    }
    if let Some(rs) = canary.current() {
        let side = Side::of_replica_set(rs, container);
        obs.candidate = Some(side.build.clone());
        if let Some(h) = side.hash.as_deref() {
            obs.endpoints
                .extend(p.endpoints(ns, h, Role::Candidate, &side.build).await?);
        }
    }
    obs.candidate_share = match find_route(p, ns, &stable.deployment).await? {
        Some(route) => route_weights(&route, &service_name(&stable.deployment))
            .map(|(s, c)| {
                if s + c > 0 {
                    c as f64 / (s + c) as f64
                } else {
                    0.0
                }
            })
            .unwrap_or(0.0),
        None => {
            let s = stable.deployment.spec.replicas.unwrap_or(0);
            let c = canary.deployment.spec.replicas.unwrap_or(0);
            if s + c > 0 {
                f64::from(c) / f64::from(s + c)
            } else {
                0.0
            }
        }
    };
    Ok(Some(obs))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn route(refs: Value) -> DynamicObject {
        let mut r = DynamicObject::new("web", &httproute_resource());
        r.data = json!({"spec": {"rules": [{"backendRefs": refs}]}});
        r
    }

    #[test]
    fn weights_move_and_the_canary_ref_goes_at_zero() {
        let r = route(json!([{"name": "web", "port": 80}]));
        assert_eq!(route_weights(&r, "web"), Some((1, 0)));
        let rules = weighted_rules(&r, "web", 10).unwrap();
        assert_eq!(
            rules,
            json!([{"backendRefs": [{"name": "web", "port": 80, "weight": 90}, {"name": "web-canary", "port": 80, "weight": 10}]}])
        );
        let mut r2 = r.clone();
        r2.data["spec"]["rules"] = rules;
        assert_eq!(route_weights(&r2, "web"), Some((90, 10)));
        let back = weighted_rules(&r2, "web", 0).unwrap();
        assert_eq!(
            back,
            json!([{"backendRefs": [{"name": "web", "port": 80, "weight": 100}, {"name": "web-canary", "port": 80, "weight": 0}]}])
        );
        assert_eq!(
            weighted_rules(&r, "web", 0).unwrap(),
            json!([{"backendRefs": [{"name": "web", "port": 80, "weight": 100}]}])
        );
        assert!(weighted_rules(&r, "other", 10).is_none());
    }

    #[test]
    fn suffix_only_touches_selected_keys() {
        let labels = BTreeMap::from([
            ("app".to_string(), "web".to_string()),
            ("tier".to_string(), "x".to_string()),
        ]);
        let keys = BTreeMap::from([("app".to_string(), "web".to_string())]);
        let out = suffix_labels(&labels, &keys);
        assert_eq!(out["app"], "web-canary");
        assert_eq!(out["tier"], "x");
        let tracked = BTreeMap::from([
            ("app".to_string(), "web".to_string()),
            (LABEL_TRACK.to_string(), "stable".to_string()),
        ]);
        let out = suffix_labels(&tracked, &tracked);
        assert_eq!(out["app"], "web");
        assert_eq!(out[LABEL_TRACK], "canary");
    }
}
