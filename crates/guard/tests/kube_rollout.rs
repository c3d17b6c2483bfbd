//! The kubernetes platform's controller against the Kubernetes API (the
//! `KubeApiDouble`, or a real cluster: see `support/kube_env.rs`): a new
//! rollout is noticed, a good release promoted, a bad one reverted to the
//! previous ReplicaSet's template exactly (as `kubectl rollout undo`), and a
//! newer rollout never reverted by a verdict on an older one.
//! Verdicts come from the real judge on counts from a signal source double.

#[path = "support/kube_double.rs"]
mod kube_double;
#[path = "support/kube_env.rs"]
mod kube_env;

use std::sync::Arc;
use std::time::Duration;

use guard::platform::kubernetes::controller::{Controller, ControllerSettings};
use guard::platform::kubernetes::rollout::{self, Phase, RolloutState};
use guard::platform::kubernetes::{KubeSettings, KubernetesPlatform, UndoOutcome};
use guard::platform::{Platform, Strategy};
use k8s_openapi::api::apps::v1::{Deployment, ReplicaSet};
use kube::ResourceExt;
use kube::api::{Api, ListParams, PostParams};
use kube_env::{
    SyntheticSignals, TestCluster, deployment, eventually, next_event, roll_to, test_verifier,
};
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;

const WAIT: Duration = Duration::from_secs(30);

fn platform(cluster: &TestCluster, identity: &str) -> KubernetesPlatform {
    KubernetesPlatform::new(
        cluster.client.clone(),
        KubeSettings {
            identity: identity.into(),
            ready_timeout: Duration::from_secs(60),
            ..KubeSettings::default()
        },
    )
}

struct Running {
    stop: CancellationToken,
    events: mpsc::UnboundedReceiver<notify::Event>,
    _leading: watch::Sender<bool>,
}

/// Starts a controller that leads from the start (no Lease; see kube_lease.rs for that).
fn start_controller(cluster: &TestCluster, identity: &str) -> Running {
    start_controller_with(
        cluster,
        identity,
        Arc::new(SyntheticSignals::new(2000.0, 0.2)),
        Duration::from_secs(60),
    )
}

fn start_controller_with(
    cluster: &TestCluster,
    identity: &str,
    signals: Arc<SyntheticSignals>,
    verify_deadline: Duration,
) -> Running {
    let (tx, events) = mpsc::unbounded_channel();
    let controller = Controller::new(
        platform(cluster, identity),
        signals,
        Arc::new(test_verifier()),
        ControllerSettings {
            namespace: Some(cluster.namespace.clone()),
            interval: Duration::from_millis(200),
            verify_deadline,
            ..ControllerSettings::default()
        },
        Some(tx),
    );
    let (leading_tx, leading) = watch::channel(true);
    let stop = CancellationToken::new();
    let s = stop.clone();
    tokio::spawn(async move { controller.run(leading, s).await });
    Running {
        stop,
        events,
        _leading: leading_tx,
    }
}

async fn state_of(api: &Api<Deployment>, name: &str) -> Option<RolloutState> {
    let d = api.get(name).await.ok()?;
    RolloutState::read(&d).ok().flatten()
}

async fn wait_phase(cluster: &TestCluster, name: &str, phase: Phase, build: &str) -> RolloutState {
    let api = cluster.deployments();
    eventually(
        WAIT,
        &format!("{name} in phase {phase:?} for build {build}"),
        || async {
            state_of(&api, name)
                .await
                .filter(|s| s.phase == phase && s.candidate.build == build)
        },
    )
    .await
}

async fn replica_set_of_build(cluster: &TestCluster, build: &str) -> ReplicaSet {
    let api: Api<ReplicaSet> = Api::namespaced(cluster.client.clone(), &cluster.namespace);
    let list = api
        .list(&ListParams::default())
        .await
        .expect("list replicasets");
    list.items
        .into_iter()
        .find(|rs| {
            rollout::template_of(rs).is_some_and(|t| rollout::build_of(t, None).number == build)
        })
        .unwrap_or_else(|| panic!("no ReplicaSet runs build {build}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kube_new_rollout_is_noticed_and_a_good_release_promoted() {
    let cluster = TestCluster::start("promote").await;
    cluster
        .deployments()
        .create(&PostParams::default(), &deployment("web", "1", 2))
        .await
        .expect("create");
    let mut running = start_controller(&cluster, "guard-a");
    let baseline = wait_phase(&cluster, "web", Phase::Baseline, "1").await;
    assert!(baseline.stable.is_none());

    roll_to(&cluster, "web", "2").await;
    let noticed = wait_phase(&cluster, "web", Phase::Verifying, "2").await;
    assert_eq!(
        noticed.stable.as_ref().map(|s| s.build.as_str()),
        Some("1"),
        "last good build recorded"
    );
    assert_eq!(
        noticed.stable.as_ref().and_then(|s| s.hash.clone()),
        rollout::hash_of(&replica_set_of_build(&cluster, "1").await)
    );

    let promoted = wait_phase(&cluster, "web", Phase::Promoted, "2").await;
    assert!(promoted.reason.is_some());
    let d = cluster.deployments().get("web").await.expect("get");
    assert_eq!(
        rollout::build_of(&d.spec.template, None).number,
        "2",
        "a promoted release stays"
    );
    assert!(
        !d.annotations()
            .contains_key(rollout::ANNOTATION_REVERTED_BY)
    );

    let started = next_event(&mut running.events, "started event").await;
    assert_eq!(
        (started.kind, started.build.as_deref()),
        (notify::EventKind::Started, Some("2"))
    );
    let done = next_event(&mut running.events, "promoted event").await;
    assert_eq!(
        (done.kind, done.previous_build.as_deref()),
        (notify::EventKind::Promoted, Some("1"))
    );
    running.stop.cancel();
    cluster.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kube_bad_release_is_reverted_to_the_previous_replicaset_template() {
    let cluster = TestCluster::start("revert").await;
    let api = cluster.deployments();
    api.create(&PostParams::default(), &deployment("web", "1", 2))
        .await
        .expect("create");
    let mut running = start_controller(&cluster, "guard-a");
    wait_phase(&cluster, "web", Phase::Baseline, "1").await;
    let good_rs = replica_set_of_build(&cluster, "1").await;

    roll_to(&cluster, "web", "2-bad").await;
    let reverted = wait_phase(&cluster, "web", Phase::Reverted, "2-bad").await;
    assert_eq!(
        reverted.stable.as_ref().map(|s| s.build.as_str()),
        Some("1")
    );

    // The Deployment's template is the previous ReplicaSet's, minus pod-template-hash.
    let d = api.get("web").await.expect("get");
    let expected = rollout::strip_hash(rollout::template_of(&good_rs).expect("template"));
    assert_eq!(
        d.spec.template, expected,
        "template restored exactly as `kubectl rollout undo`"
    );
    let a = d.annotations();
    assert_eq!(
        a.get(rollout::ANNOTATION_REVERTED_BY).map(String::as_str),
        Some("guard-a")
    );
    assert!(
        a.get(rollout::ANNOTATION_REVERTED_TO)
            .is_some_and(|t| t.starts_with("build 1 ")),
        "{a:?}"
    );
    assert_eq!(
        a.get(rollout::ANNOTATION_REVERTED_FROM).map(String::as_str),
        Some("build 2-bad")
    );
    let reason = a.get(rollout::ANNOTATION_REVERTED_REASON).expect("reason");
    assert!(!reason.is_empty());

    // The Deployment controller made the old ReplicaSet current again (newest revision).
    let rs = eventually(
        WAIT,
        "the old ReplicaSet to become the newest revision",
        || async {
            let rs = replica_set_of_build(&cluster, "1").await;
            let bad = replica_set_of_build(&cluster, "2-bad").await;
            (rollout::revision_of(&rs) > rollout::revision_of(&bad)).then_some(rs)
        },
    )
    .await;
    assert_eq!(
        rollout::hash_of(&rs),
        rollout::hash_of(&good_rs),
        "the same ReplicaSet, not a new one"
    );

    let started = next_event(&mut running.events, "started").await;
    assert_eq!(started.kind, notify::EventKind::Started);
    let ev = next_event(&mut running.events, "reverted event").await;
    assert_eq!(
        (ev.kind, ev.build.as_deref(), ev.previous_build.as_deref()),
        (notify::EventKind::Reverted, Some("2-bad"), Some("1"))
    );
    // The message carries the judge's numbers, as the engine's do.
    let e = &ev.evidence;
    assert_eq!(e.slo.as_deref(), Some("availability"), "{e:?}");
    assert!(e.events > 0 && e.bad_events > 0, "{e:?}");
    assert!(
        e.statistic.zip(e.upper_bound).is_some_and(|(s, a)| s >= a),
        "the revert statistic at or past its bound: {e:?}"
    );
    assert!(e.release_error_ratio.is_some_and(|r| r > 0.0), "{e:?}");

    // guard's own revert is not a new rollout: the state stays, nothing flips.
    tokio::time::sleep(Duration::from_millis(800)).await;
    let still = state_of(&api, "web").await.expect("state");
    assert_eq!(
        (still.phase, still.candidate.build.as_str()),
        (Phase::Reverted, "2-bad")
    );
    assert_eq!(
        rollout::build_of(&api.get("web").await.expect("get").spec.template, None).number,
        "1"
    );

    // A later good release is verified on its own, against build 1.
    roll_to(&cluster, "web", "3").await;
    let next = wait_phase(&cluster, "web", Phase::Promoted, "3").await;
    assert_eq!(next.stable.as_ref().map(|s| s.build.as_str()), Some("1"));
    running.stop.cancel();
    cluster.cleanup().await;
}

/// `web` at build 1 under `identity`'s controller, then build 2 at 5
/// requests a second: far too few to pass a 99.9 % SLO in the 2 s deadline,
/// so it is held. Returns the controller, the signals (to turn build 2 bad),
/// build 1's ReplicaSet and the held state.
async fn held_build_2(
    cluster: &TestCluster,
    identity: &str,
) -> (Running, Arc<SyntheticSignals>, ReplicaSet, RolloutState) {
    cluster
        .deployments()
        .create(&PostParams::default(), &deployment("web", "1", 2))
        .await
        .expect("create");
    let signals = Arc::new(SyntheticSignals::new(5.0, 0.5));
    let running = start_controller_with(cluster, identity, signals.clone(), Duration::from_secs(2));
    wait_phase(cluster, "web", Phase::Baseline, "1").await;
    let good_rs = replica_set_of_build(cluster, "1").await;
    roll_to(cluster, "web", "2").await;
    let held = wait_phase(cluster, "web", Phase::Held, "2").await;
    (running, signals, good_rs, held)
}

/// `held` is a hold for want of a verdict that stays a hold (a second later,
/// with `while_held` checked then) until build 2 turns bad, and is then
/// reverted "while held".
async fn held_then_reverted_while_held<F, Fut>(
    cluster: &TestCluster,
    held: &RolloutState,
    signals: &SyntheticSignals,
    while_held: F,
) where
    F: FnOnce() -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    assert!(
        held.reason
            .as_deref()
            .is_some_and(|r| r.contains("no verdict")),
        "{held:?}"
    );
    tokio::time::sleep(Duration::from_millis(1000)).await;
    assert_eq!(
        state_of(&cluster.deployments(), "web")
            .await
            .map(|s| s.phase),
        Some(Phase::Held)
    );
    while_held().await;
    signals.turn_bad("2");
    let reverted = wait_phase(cluster, "web", Phase::Reverted, "2").await;
    assert!(
        reverted
            .reason
            .as_deref()
            .is_some_and(|r| r.starts_with("while held:")),
        "{reverted:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kube_a_held_canary_stays_held_and_is_aborted_when_it_burns() {
    let cluster = TestCluster::start("held-canary").await;
    let api = cluster.deployments();
    api.create(&PostParams::default(), &deployment("web", "1", 4))
        .await
        .expect("create");
    let signals = Arc::new(SyntheticSignals::new(5.0, 0.5));
    let mut running =
        start_controller_with(&cluster, "guard-b", signals.clone(), Duration::from_secs(2));
    wait_phase(&cluster, "web", Phase::Baseline, "1").await;
    // guard-a's engine starts a canary (a quarter of the replicas, no
    // Gateway API here) and stops leading: guard-b takes it over, and at 5
    // requests a second it has no verdict within the 2 s deadline.
    let engine = kube_env::engine_platform(&cluster, "guard-a");
    let target = kube_env::web_in_production();
    // Its writes are conditional and the controller writes too: a conflict
    // is retried, as the engine's next tick does.
    eventually(WAIT, "the canary at 25 %", || async {
        engine
            .shift(
                &target,
                &kube_env::build("1"),
                &kube_env::build("2"),
                Strategy::Canary,
                0.25,
            )
            .await
            .inspect_err(|e| eprintln!("shift: {e}; again"))
            .ok()
    })
    .await;
    let held = wait_phase(&cluster, "web", Phase::Held, "2").await;
    assert_eq!(held.strategy, Strategy::Canary);
    // Held: the hold is kept (not read as a new rollout of the stable
    // template) and the canary keeps running for the person to look at;
    // build 2 then starts failing half its requests: aborted.
    held_then_reverted_while_held(&cluster, &held, &signals, || async {
        assert!(api.get_opt("web-canary").await.expect("get").is_some());
    })
    .await;
    eventually(WAIT, "the canary Deployment removed", || async {
        api.get_opt("web-canary")
            .await
            .expect("get")
            .is_none()
            .then_some(())
    })
    .await;
    let d = api.get("web").await.expect("get");
    assert_eq!(
        rollout::build_of(&d.spec.template, None).number,
        "1",
        "the stable Deployment still runs build 1"
    );
    let mut kinds = vec![];
    while kinds.last() != Some(&notify::EventKind::Reverted) {
        kinds.push(next_event(&mut running.events, "an event").await.kind);
    }
    assert!(kinds.contains(&notify::EventKind::Held), "{kinds:?}");
    running.stop.cancel();
    cluster.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kube_a_held_rollout_is_still_judged_and_reverted_when_it_burns() {
    let cluster = TestCluster::start("held").await;
    let api = cluster.deployments();
    let (mut running, signals, good_rs, held) = held_build_2(&cluster, "guard-a").await;
    // Held: left for a person, nothing reverted or promoted on its own;
    // build 2 then starts failing half its requests: reverted.
    held_then_reverted_while_held(&cluster, &held, &signals, || async {}).await;
    let d = api.get("web").await.expect("get");
    assert_eq!(
        d.spec.template,
        rollout::strip_hash(rollout::template_of(&good_rs).expect("template")),
        "build 1's template back"
    );
    let kinds: Vec<notify::EventKind> = [
        next_event(&mut running.events, "started").await,
        next_event(&mut running.events, "held").await,
        next_event(&mut running.events, "reverted").await,
    ]
    .iter()
    .map(|e| e.kind)
    .collect();
    assert_eq!(
        kinds,
        [
            notify::EventKind::Started,
            notify::EventKind::Held,
            notify::EventKind::Reverted
        ]
    );
    running.stop.cancel();
    cluster.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kube_revert_does_not_fight_a_newer_rollout() {
    let cluster = TestCluster::start("newer").await;
    let api = cluster.deployments();
    api.create(&PostParams::default(), &deployment("web", "1", 1))
        .await
        .expect("create");
    let p = platform(&cluster, "guard-a");
    p.wait_rolled_out(&cluster.namespace, "web", "1")
        .await
        .expect("rolled out");
    roll_to(&cluster, "web", "2-bad").await;
    p.wait_rolled_out(&cluster.namespace, "web", "2-bad")
        .await
        .expect("rolled out");
    let judged = rollout::hash_of(&replica_set_of_build(&cluster, "2-bad").await).expect("hash");
    let good = rollout::hash_of(&replica_set_of_build(&cluster, "1").await).expect("hash");

    // A person ships build 3 while the verdict on 2-bad is being carried out.
    roll_to(&cluster, "web", "3").await;
    p.wait_rolled_out(&cluster.namespace, "web", "3")
        .await
        .expect("rolled out");
    let before = api.get("web").await.expect("get");
    let outcome = p
        .undo(
            &cluster.namespace,
            "web",
            Some(&judged),
            Some(&good),
            "test verdict on 2-bad",
            |_, _| panic!("no state may be written when superseded"),
        )
        .await
        .expect("undo");
    assert_eq!(outcome, UndoOutcome::Superseded);
    let after = api.get("web").await.expect("get");
    assert_eq!(after.spec.template, before.spec.template);
    assert_eq!(rollout::build_of(&after.spec.template, None).number, "3");

    // Judged on the current template, the same call reverts, and a repeat is a no-op.
    let current = rollout::hash_of(&replica_set_of_build(&cluster, "3").await).expect("hash");
    let state = |from: &rollout::Side, to: &rollout::Side| RolloutState {
        phase: Phase::Reverted,
        strategy: guard::platform::Strategy::Rolling,
        candidate: from.clone(),
        stable: Some(to.clone()),
        started_at: jiff::Timestamp::now(),
        updated_at: jiff::Timestamp::now(),
        share: 0.0,
        stable_replicas: None,
        by: Some("guard-a".into()),
        reason: Some("test".into()),
        watch_until: None,
        revert_impossible: false,
    };
    let outcome = p
        .undo(
            &cluster.namespace,
            "web",
            Some(&current),
            Some(&good),
            "test",
            state,
        )
        .await
        .expect("undo");
    assert!(
        matches!(outcome, UndoOutcome::Reverted { ref to } if to.build == "1"),
        "{outcome:?}"
    );
    p.wait_rolled_out(&cluster.namespace, "web", "1")
        .await
        .expect("rolled out");
    let again = p
        .undo(&cluster.namespace, "web", None, Some(&good), "test", state)
        .await
        .expect("undo");
    assert!(
        matches!(again, UndoOutcome::AlreadyThere { .. }),
        "{again:?}"
    );
    cluster.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kube_a_held_rollout_is_judged_by_the_next_leader_too() {
    let cluster = TestCluster::start("held-failover").await;
    let api = cluster.deployments();
    let (first, signals, _, held) = held_build_2(&cluster, "guard-a").await;
    assert_eq!(held.by.as_deref(), Some("guard-a"));
    // guard-a stops leading; guard-b, which never verified build 2, leads.
    first.stop.cancel();
    let mut second =
        start_controller_with(&cluster, "guard-b", signals.clone(), Duration::from_secs(2));
    tokio::time::sleep(Duration::from_millis(1000)).await;
    assert_eq!(
        state_of(&api, "web").await.expect("state").phase,
        Phase::Held,
        "a held release is left for a person while it does not burn"
    );
    signals.turn_bad("2");
    let reverted = wait_phase(&cluster, "web", Phase::Reverted, "2").await;
    assert!(
        reverted
            .reason
            .as_deref()
            .is_some_and(|r| r.starts_with("while held:")),
        "{reverted:?}"
    );
    assert_eq!(reverted.by.as_deref(), Some("guard-b"));
    assert_eq!(
        next_event(&mut second.events, "reverted").await.kind,
        notify::EventKind::Reverted
    );
    second.stop.cancel();
    cluster.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kube_a_held_rollout_with_nothing_to_revert_to_is_left_to_a_person() {
    let cluster = TestCluster::start("held-nothing").await;
    let api = cluster.deployments();
    let (mut running, signals, good_rs, _) = held_build_2(&cluster, "guard-a").await;
    // Someone deleted the old ReplicaSet: a revert has nowhere to go.
    let replica_sets: Api<ReplicaSet> = Api::namespaced(cluster.client.clone(), &cluster.namespace);
    replica_sets
        .delete(&good_rs.name_any(), &Default::default())
        .await
        .expect("delete build 1's ReplicaSet");
    signals.turn_bad("2");
    let stuck = eventually(WAIT, "a hold that cannot revert", || async {
        state_of(&api, "web")
            .await
            .filter(|s| s.phase == Phase::Held && s.revert_impossible)
    })
    .await;
    assert!(
        stuck
            .reason
            .as_deref()
            .is_some_and(|r| r.contains("no earlier ReplicaSet is left to revert to")),
        "{stuck:?}"
    );
    for (what, kind) in [
        ("started", notify::EventKind::Started),
        ("held", notify::EventKind::Held),
        ("held with nothing to revert to", notify::EventKind::Held),
    ] {
        assert_eq!(next_event(&mut running.events, what).await.kind, kind);
    }
    // Judging it again would only find the same nothing, and say so again.
    let again = tokio::time::timeout(Duration::from_secs(4), running.events.recv()).await;
    assert!(again.is_err(), "told the team again: {again:?}");
    running.stop.cancel();
    cluster.cleanup().await;
}
