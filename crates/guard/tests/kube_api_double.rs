//! The `KubeApiDouble` speaks the Kubernetes REST API as kube-rs expects it:
//! list + watch from a resourceVersion (streamed WatchEvents), create/replace
//! conflicts, server-side apply creating objects, delete with cascade, and the
//! Deployment controller's revision semantics (`rollout undo` reuses the old
//! ReplicaSet at a new revision). The same checks hold on a real cluster.

#[path = "support/kube_double.rs"]
mod kube_double;
#[path = "support/kube_env.rs"]
mod kube_env;

use std::time::Duration;

use futures::StreamExt;
use guard::platform::kubernetes::rollout;
use k8s_openapi::api::apps::v1::{Deployment, ReplicaSet};
use k8s_openapi::api::core::v1::ConfigMap;
use kube::ResourceExt;
use kube::api::{
    Api, DeleteParams, ListParams, Patch, PatchParams, PostParams, WatchEvent, WatchParams,
};
use kube_env::{TestCluster, deployment, eventually, roll_to};

const WAIT: Duration = Duration::from_secs(30);

async fn replica_sets(cluster: &TestCluster) -> Vec<ReplicaSet> {
    let api: Api<ReplicaSet> = Api::namespaced(cluster.client.clone(), &cluster.namespace);
    api.list(&ListParams::default()).await.expect("list").items
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kube_double_speaks_list_watch_conflicts_apply_delete_and_revisions() {
    let cluster = TestCluster::start("double").await;
    let api = cluster.deployments();
    api.create(&PostParams::default(), &deployment("web", "1", 1))
        .await
        .expect("create");
    let dup = api
        .create(&PostParams::default(), &deployment("web", "1", 1))
        .await;
    assert!(
        matches!(dup, Err(kube::Error::Api(ref s)) if s.code == 409 && s.reason == "AlreadyExists"),
        "{dup:?}"
    );

    let list = api
        .list(&ListParams::default().labels("guard.ultra-boost.dev/enabled=true"))
        .await
        .expect("list");
    assert_eq!(list.items.len(), 1);
    let rv = list
        .metadata
        .resource_version
        .clone()
        .expect("list resourceVersion");
    let stream = api
        .watch(
            &WatchParams::default()
                .labels("guard.ultra-boost.dev/enabled=true")
                .timeout(20),
            &rv,
        )
        .await
        .expect("watch");
    let mut stream = Box::pin(stream);

    // A stale replace is refused; a fresh one is a new rollout seen by the watch.
    let stale = api.get("web").await.expect("get");
    roll_to(&cluster, "web", "2").await;
    let refused = api.replace("web", &PostParams::default(), &stale).await;
    assert!(
        matches!(refused, Err(kube::Error::Api(ref s)) if s.code == 409),
        "{refused:?}"
    );
    let seen = tokio::time::timeout(WAIT, async {
        while let Some(ev) = stream.next().await {
            if let Ok(WatchEvent::Modified(d)) = ev
                && rollout::build_of(&d.spec.template, None).number == "2"
                && rollout::revision_of(&d) == Some(2)
            {
                return d;
            }
        }
        panic!("watch ended before the rollout was seen");
    })
    .await
    .expect("watch event in time");
    assert_eq!(seen.name_any(), "web");

    // `rollout undo` semantics: back to build 1 reuses its ReplicaSet at revision 3.
    roll_to(&cluster, "web", "1").await;
    let rs = eventually(WAIT, "old ReplicaSet at revision 3", || async {
        let all = replica_sets(&cluster).await;
        let one = all.into_iter().find(|rs| {
            rollout::template_of(rs).is_some_and(|t| rollout::build_of(t, None).number == "1")
        })?;
        (rollout::revision_of(&one) == Some(3)).then_some(one)
    })
    .await;
    assert_eq!(replica_sets(&cluster).await.len(), 2, "no third ReplicaSet");
    assert!(rollout::hash_of(&rs).is_some());

    // Server-side apply creates, then merges.
    let cms: Api<ConfigMap> = Api::namespaced(cluster.client.clone(), &cluster.namespace);
    let cm: ConfigMap = serde_json::from_value(serde_json::json!({
        "apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "c"}, "data": {"a": "1"}
    }))
    .expect("cm");
    cms.patch("c", &PatchParams::apply("guard"), &Patch::Apply(&cm))
        .await
        .expect("apply creates");
    let mut cm2 = cm.clone();
    cm2.data = Some([("b".to_string(), "2".to_string())].into());
    let merged = cms
        .patch("c", &PatchParams::apply("guard"), &Patch::Apply(&cm2))
        .await
        .expect("apply merges");
    assert_eq!(
        merged.data.unwrap_or_default().get("b").map(String::as_str),
        Some("2")
    );

    // Delete cascades to ReplicaSets and is seen by the watch.
    api.delete("web", &DeleteParams::default())
        .await
        .expect("delete");
    let deleted = tokio::time::timeout(WAIT, async {
        while let Some(ev) = stream.next().await {
            if let Ok(WatchEvent::Deleted(d)) = ev {
                return d;
            }
        }
        panic!("watch ended before the delete was seen");
    })
    .await
    .expect("delete event in time");
    assert_eq!(deleted.name_any(), "web");
    eventually(WAIT, "ReplicaSets garbage-collected", || async {
        replica_sets(&cluster).await.is_empty().then_some(())
    })
    .await;
    let gone: Option<Deployment> = api.get_opt("web").await.expect("get");
    assert!(gone.is_none());
    cluster.cleanup().await;
}
