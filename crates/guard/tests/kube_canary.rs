//! Canary releases on Kubernetes through the `Platform` trait, as the engine
//! drives them: a `<name>-canary` Deployment beside the stable one, Gateway
//! API HTTPRoute weights stepped and rolled back, promote copying the
//! template; and replica ratios where the cluster has no Gateway API.

#[path = "support/kube_double.rs"]
mod kube_double;
#[path = "support/kube_env.rs"]
mod kube_env;

use guard::platform::kubernetes::KubernetesPlatform;
use guard::platform::kubernetes::canary::{self, httproute_resource};
use guard::platform::kubernetes::rollout::{self, Phase, RolloutState};
use guard::platform::{Platform, Strategy, Target};
use k8s_openapi::api::core::v1::Service;
use kube::ResourceExt;
use kube::api::{Api, DynamicObject, PostParams};
use kube_env::{TestCluster, build, deployment};
use serde_json::json;

fn platform(cluster: &TestCluster) -> KubernetesPlatform {
    kube_env::engine_platform(cluster, "guard-a")
}

fn target() -> Target {
    kube_env::web_in_production()
}

/// The stable Deployment, its two Services and the route, as deploy/kustomize/base declares them.
async fn setup(cluster: &TestCluster, replicas: i32, with_route: bool) {
    cluster
        .deployments()
        .create(&PostParams::default(), &deployment("web", "1", replicas))
        .await
        .expect("deployment");
    let services: Api<Service> = Api::namespaced(cluster.client.clone(), &cluster.namespace);
    for (name, track) in [("web", "stable"), ("web-canary", "canary")] {
        let svc: Service = serde_json::from_value(json!({
            "metadata": {"name": name},
            "spec": {"selector": {"app": "web", "guard.ultra-boost.dev/track": track},
                     "ports": [{"name": "http", "port": 80, "targetPort": "http"}]},
        }))
        .expect("service");
        services
            .create(&PostParams::default(), &svc)
            .await
            .expect("service");
    }
    if with_route {
        let routes: Api<DynamicObject> = Api::namespaced_with(
            cluster.client.clone(),
            &cluster.namespace,
            &httproute_resource(),
        );
        let mut route = DynamicObject::new("web", &httproute_resource());
        route.data = json!({"spec": {
            "parentRefs": [{"name": "public"}],
            "rules": [{"backendRefs": [
                {"group": "", "kind": "Service", "name": "web", "port": 80, "weight": 100},
                {"group": "", "kind": "Service", "name": "web-canary", "port": 80, "weight": 0},
            ]}],
        }});
        routes
            .create(&PostParams::default(), &route)
            .await
            .expect("route");
    }
    platform(cluster)
        .wait_rolled_out(&cluster.namespace, "web", "1")
        .await
        .expect("stable ready");
}

async fn weights(cluster: &TestCluster) -> (i64, i64) {
    let routes: Api<DynamicObject> = Api::namespaced_with(
        cluster.client.clone(),
        &cluster.namespace,
        &httproute_resource(),
    );
    let route = routes.get("web").await.expect("route");
    canary::route_weights(&route, "web").expect("weights")
}

async fn state(cluster: &TestCluster) -> RolloutState {
    let d = cluster.deployments().get("web").await.expect("get");
    RolloutState::read(&d)
        .expect("readable")
        .expect("state present")
}

async fn canary_exists(cluster: &TestCluster) -> bool {
    cluster
        .deployments()
        .get_opt("web-canary")
        .await
        .expect("get canary")
        .is_some()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kube_canary_weights_step_and_roll_back() {
    let cluster = TestCluster::start("canary-back").await;
    setup(&cluster, 2, true).await;
    let p = platform(&cluster);
    let (stable, cand) = (build("1"), build("2-bad"));

    p.shift(&target(), &stable, &cand, Strategy::Canary, 0.1)
        .await
        .expect("shift 10 %");
    assert_eq!(weights(&cluster).await, (90, 10));
    let c = cluster
        .deployments()
        .get("web-canary")
        .await
        .expect("canary");
    let labels = c
        .spec
        .template
        .metadata
        .as_ref()
        .and_then(|m| m.labels.clone())
        .unwrap_or_default();
    assert_eq!(
        labels
            .get("guard.ultra-boost.dev/track")
            .map(String::as_str),
        Some("canary"),
        "the canary Service selects it, the stable one not"
    );
    assert_eq!(rollout::build_of(&c.spec.template, None).number, "2-bad");
    let s = state(&cluster).await;
    assert_eq!(
        (s.phase, s.strategy, s.share),
        (Phase::Verifying, Strategy::Canary, 0.1)
    );
    let obs = p.observe(&target()).await.expect("observe");
    assert_eq!(
        (obs.stable.as_deref(), obs.candidate.as_deref()),
        (Some("1"), Some("2-bad"))
    );
    assert!((obs.candidate_share - 0.1).abs() < 1e-9);

    p.shift(&target(), &stable, &cand, Strategy::Canary, 0.5)
        .await
        .expect("shift 50 %");
    assert_eq!(weights(&cluster).await, (50, 50));
    // Idempotent: the same step again changes nothing.
    p.shift(&target(), &stable, &cand, Strategy::Canary, 0.5)
        .await
        .expect("shift 50 % again");
    assert_eq!(weights(&cluster).await, (50, 50));

    p.revert(&target(), &stable).await.expect("revert");
    assert_eq!(
        weights(&cluster).await,
        (100, 0),
        "all traffic back on the stable Service"
    );
    assert!(!canary_exists(&cluster).await, "canary removed");
    let d = cluster.deployments().get("web").await.expect("get");
    assert_eq!(
        rollout::build_of(&d.spec.template, None).number,
        "1",
        "stable untouched"
    );
    assert_eq!(
        d.annotations()
            .get(rollout::ANNOTATION_REVERTED_BY)
            .map(String::as_str),
        Some("guard-a")
    );
    assert_eq!(state(&cluster).await.phase, Phase::Reverted);
    // A repeated revert converges.
    p.revert(&target(), &stable).await.expect("revert again");
    cluster.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kube_canary_promote_copies_the_template_and_removes_the_canary() {
    let cluster = TestCluster::start("canary-promote").await;
    setup(&cluster, 2, true).await;
    let p = platform(&cluster);
    let (stable, cand) = (build("1"), build("2"));
    for share in [0.1, 0.25, 0.5] {
        p.shift(&target(), &stable, &cand, Strategy::Canary, share)
            .await
            .expect("shift");
        let pct = (share * 100.0_f64).round() as i64;
        assert_eq!(weights(&cluster).await, (100 - pct, pct));
    }
    let canary_template = cluster
        .deployments()
        .get("web-canary")
        .await
        .expect("canary")
        .spec
        .template;
    p.promote(&target(), &cand).await.expect("promote");
    let d = cluster.deployments().get("web").await.expect("get");
    assert_eq!(rollout::build_of(&d.spec.template, None).number, "2");
    assert_eq!(
        d.spec.template.spec, canary_template.spec,
        "pod spec copied from the canary"
    );
    let labels = d
        .spec
        .template
        .metadata
        .as_ref()
        .and_then(|m| m.labels.clone())
        .unwrap_or_default();
    assert_eq!(
        labels
            .get("guard.ultra-boost.dev/track")
            .map(String::as_str),
        Some("stable"),
        "stable labels kept"
    );
    assert_eq!(weights(&cluster).await, (100, 0));
    assert!(!canary_exists(&cluster).await);
    assert_eq!(state(&cluster).await.phase, Phase::Promoted);
    cluster.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kube_canary_without_gateway_uses_a_replica_ratio() {
    if kube_env::real_cluster() {
        // A real cluster is used as it is; this case needs one without Gateway API.
        return;
    }
    let cluster = TestCluster::start_with("canary-ratio", false).await;
    setup(&cluster, 4, false).await;
    let p = platform(&cluster);
    let (stable, cand) = (build("1"), build("2-bad"));
    p.shift(&target(), &stable, &cand, Strategy::Canary, 0.25)
        .await
        .expect("shift 25 %");
    let replicas = |name: &'static str| {
        let api = cluster.deployments();
        async move { api.get(name).await.expect("get").spec.replicas.unwrap_or(0) }
    };
    assert_eq!(
        (replicas("web").await, replicas("web-canary").await),
        (3, 1)
    );
    let obs = p.observe(&target()).await.expect("observe");
    assert!(
        (obs.candidate_share - 0.25).abs() < 1e-9,
        "{}",
        obs.candidate_share
    );
    p.shift(&target(), &stable, &cand, Strategy::Canary, 0.5)
        .await
        .expect("shift 50 %");
    assert_eq!(
        (replicas("web").await, replicas("web-canary").await),
        (2, 2)
    );
    assert_eq!(
        state(&cluster).await.stable_replicas,
        Some(4),
        "the original size is remembered"
    );
    p.revert(&target(), &stable).await.expect("revert");
    assert_eq!(replicas("web").await, 4, "stable back at full size");
    assert!(!canary_exists(&cluster).await);
    cluster.cleanup().await;
}
