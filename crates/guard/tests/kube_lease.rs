//! Leader election on a coordination.k8s.io/v1 Lease, and a leader failover
//! in the middle of a rollout: the second guard replica takes the Lease after
//! it expires and finishes the rollout from the state kept on the Deployment.

#[path = "support/kube_double.rs"]
mod kube_double;
#[path = "support/kube_env.rs"]
mod kube_env;

use std::sync::Arc;
use std::time::{Duration, Instant};

use guard::lease::{LeaderElector, LeaseSettings};
use guard::platform::kubernetes::controller::{Controller, ControllerSettings};
use guard::platform::kubernetes::rollout::{self, Phase, RolloutState};
use guard::platform::kubernetes::verify::JudgeVerifier;
use guard::platform::kubernetes::{KubeSettings, KubernetesPlatform};
use k8s_openapi::api::coordination::v1::Lease;
use kube::api::{Api, PostParams};
use kube_env::{
    SyntheticSignals, TestCluster, deployment, eventually, roll_to, slow_verifier, test_verifier,
};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

const WAIT: Duration = Duration::from_secs(30);

fn settings(cluster: &TestCluster, identity: &str) -> LeaseSettings {
    LeaseSettings {
        namespace: cluster.namespace.clone(),
        name: "guard-leader".into(),
        identity: identity.into(),
        lease_duration: Duration::from_secs(2),
        renew_deadline: Duration::from_millis(1500),
        retry_period: Duration::from_millis(200),
    }
}

async fn lease(cluster: &TestCluster) -> (Option<String>, i32) {
    let api: Api<Lease> = Api::namespaced(cluster.client.clone(), &cluster.namespace);
    let Some(l) = api.get_opt("guard-leader").await.expect("get lease") else {
        return (None, 0);
    };
    let spec = l.spec.unwrap_or_default();
    (spec.holder_identity, spec.lease_transitions.unwrap_or(0))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kube_lease_is_held_renewed_taken_over_after_expiry_and_released() {
    let cluster = TestCluster::start("lease").await;
    let mut a = LeaderElector::new(cluster.client.clone(), settings(&cluster, "a")).expect("a");
    let mut b = LeaderElector::new(cluster.client.clone(), settings(&cluster, "b")).expect("b");
    assert!(
        a.try_acquire_or_renew().await.expect("a"),
        "the first replica creates and holds the lease"
    );
    assert!(!b.try_acquire_or_renew().await.expect("b"));
    assert_eq!(lease(&cluster).await, (Some("a".into()), 0));

    // While a renews, b never gets it, even well past one lease duration.
    let start = Instant::now();
    let mut last_renewal = Instant::now();
    while start.elapsed() < Duration::from_millis(2600) {
        assert!(a.try_acquire_or_renew().await.expect("a renews"));
        last_renewal = Instant::now();
        assert!(
            !b.try_acquire_or_renew().await.expect("b"),
            "b must not steal a live lease"
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    }

    // a stops renewing (crashed, no release): b takes over once the lease
    // expired, i.e. not before one lease duration after a's last renewal.
    let deadline = Instant::now() + WAIT;
    while !b.try_acquire_or_renew().await.expect("b") {
        assert!(Instant::now() < deadline, "b never took the expired lease");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        last_renewal.elapsed() >= Duration::from_secs(2),
        "taken over before expiry: {:?} after the last renewal",
        last_renewal.elapsed()
    );
    assert_eq!(lease(&cluster).await, (Some("b".into()), 1));
    assert!(
        !a.try_acquire_or_renew().await.expect("a"),
        "a is not leader any more"
    );

    // A graceful release lets a take over at once.
    b.release().await.expect("release");
    assert!(a.try_acquire_or_renew().await.expect("a"));
    assert_eq!(lease(&cluster).await, (Some("a".into()), 2));
    cluster.cleanup().await;
}

/// One guard replica: leader election plus the controller, as `guard controller` runs them.
struct Replica {
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Replica {
    fn start(cluster: &TestCluster, identity: &str, verifier: JudgeVerifier) -> Replica {
        let (tx, rx) = watch::channel(false);
        let stop = CancellationToken::new();
        let elector = LeaderElector::new(cluster.client.clone(), settings(cluster, identity))
            .expect("elector");
        let controller = Controller::new(
            KubernetesPlatform::new(
                cluster.client.clone(),
                KubeSettings {
                    identity: identity.into(),
                    ..KubeSettings::default()
                },
            ),
            Arc::new(SyntheticSignals::new(2000.0, 0.2)),
            Arc::new(verifier),
            ControllerSettings {
                namespace: Some(cluster.namespace.clone()),
                interval: Duration::from_millis(200),
                verify_deadline: Duration::from_secs(60),
                ..ControllerSettings::default()
            },
            None,
        );
        let s = stop.clone();
        let t1 = tokio::spawn(async move { elector.run(tx, s).await });
        let t2 = tokio::spawn(async move { controller.run(rx, stop).await });
        Replica {
            tasks: vec![t1, t2],
        }
    }

    /// A crash: the tasks stop mid-flight, nothing is released.
    fn kill(self) {
        for t in self.tasks {
            t.abort();
        }
    }
}

async fn state(cluster: &TestCluster) -> Option<RolloutState> {
    let d = cluster.deployments().get("web").await.ok()?;
    RolloutState::read(&d).ok().flatten()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kube_leader_failover_mid_rollout_resumes_and_reverts() {
    let cluster = TestCluster::start("failover").await;
    cluster
        .deployments()
        .create(&PostParams::default(), &deployment("web", "1", 2))
        .await
        .expect("create");
    // guard-a judges slowly, so it is surely still verifying when it is killed,
    // however loaded the machine; guard-b judges at the normal pace.
    let a = Replica::start(&cluster, "guard-a", slow_verifier());
    eventually(WAIT, "guard-a to lead", || async {
        (lease(&cluster).await.0.as_deref() == Some("guard-a")).then_some(())
    })
    .await;
    let b = Replica::start(&cluster, "guard-b", test_verifier());
    eventually(WAIT, "baseline recorded by guard-a", || async {
        state(&cluster)
            .await
            .filter(|s| s.phase == Phase::Baseline && s.by.as_deref() == Some("guard-a"))
    })
    .await;

    roll_to(&cluster, "web", "2-bad").await;
    eventually(WAIT, "guard-a verifying 2-bad", || async {
        state(&cluster)
            .await
            .filter(|s| s.phase == Phase::Verifying && s.candidate.build == "2-bad")
    })
    .await;
    let s = state(&cluster).await.expect("state");
    assert_eq!(s.by.as_deref(), Some("guard-a"));
    a.kill();
    let killed = Instant::now();

    let done = eventually(WAIT, "guard-b to finish the rollout", || async {
        state(&cluster)
            .await
            .filter(|s| s.phase != Phase::Verifying)
    })
    .await;
    assert_eq!(
        (
            done.phase,
            done.by.as_deref(),
            done.candidate.build.as_str()
        ),
        (Phase::Reverted, Some("guard-b"), "2-bad")
    );
    assert_eq!(
        done.started_at, s.started_at,
        "the rollout resumed, not restarted"
    );
    assert!(
        killed.elapsed() >= Duration::from_millis(1900),
        "acted before the lease expired: {:?}",
        killed.elapsed()
    );
    let d = cluster.deployments().get("web").await.expect("get");
    assert_eq!(rollout::build_of(&d.spec.template, None).number, "1");
    let (holder, transitions) = lease(&cluster).await;
    assert_eq!((holder.as_deref(), transitions), (Some("guard-b"), 1));
    b.kill();
    cluster.cleanup().await;
}
