//! The engine with the real judge and a real SQLite file, against the
//! in-process simulated platform and source (`guard::engine::sim`): verdicts,
//! holds on a source outage, commands, and resuming from the store after the
//! engine is dropped mid-rollout. Real processes are in `e2e_*` tests.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use guard::engine::judge_adapter::PolicyJudge;
use guard::engine::phase::{Command, Phase};
use guard::engine::sim::{SimPlatform, SimSource};
use guard::engine::{Engine, EngineSettings, NoEvents, TargetSettings};
use guard::metrics::GuardMetrics;
use guard::platform::{Build, Strategy, Target};
use guard::store::Store;

fn build(n: &str) -> Build {
    Build {
        number: n.into(),
        commit: None,
        image: None,
        command: vec!["sim".into()],
        env: Default::default(),
    }
}

fn target() -> Target {
    Target {
        service: "svc".into(),
        environment: "prod".into(),
    }
}

struct Rig {
    engine: Arc<Engine>,
    platform: Arc<SimPlatform>,
    source: Arc<SimSource>,
    store: Arc<Store>,
}

fn policy() -> judge::Policy {
    judge::Policy {
        min_verify_seconds: 0.2,
        max_verify_seconds: 30.0,
        min_events: 100,
        block_seconds: 0.05,
        ..Default::default()
    }
}

fn rig(db: &std::path::Path, platform: Arc<SimPlatform>, source: Option<Arc<SimSource>>) -> Rig {
    rig_with(db, platform, source, policy())
}

fn rig_with(
    db: &std::path::Path,
    platform: Arc<SimPlatform>,
    source: Option<Arc<SimSource>>,
    policy: judge::Policy,
) -> Rig {
    let source = source.unwrap_or_else(|| {
        Arc::new(SimSource::new(
            platform.clone(),
            5000.0,
            vec!["availability".into()],
            0.0,
        ))
    });
    let store = Arc::new(Store::open(db).expect("store"));
    let judge = PolicyJudge::new(
        policy,
        HashMap::new(),
        vec![judge::SloSpec::availability("availability", 0.999)],
    )
    .expect("judge");
    let settings = EngineSettings {
        tick: Duration::from_millis(50),
        stale_after: Duration::from_millis(300),
        checkpoint_every: Duration::ZERO,
        default_target: TargetSettings {
            rolling_steps: vec![0.5, 1.0],
            canary_steps: vec![0.1, 0.5],
            watch: Duration::from_millis(500),
            slos: vec!["availability".into()],
        },
        ..EngineSettings::default()
    };
    let engine = Engine::new(
        store.clone(),
        platform.clone(),
        source.clone(),
        Arc::new(judge),
        Arc::new(NoEvents),
        Arc::new(GuardMetrics::default()),
        settings,
    );
    Rig {
        engine,
        platform,
        source,
        store,
    }
}

async fn wait_for(
    store: &Store,
    id: i64,
    what: &str,
    deadline: Duration,
    pred: impl Fn(&Phase) -> bool,
) -> Phase {
    let start = Instant::now();
    loop {
        let r = store.rollout(id).expect("rollout");
        if pred(&r.phase) {
            return r.phase;
        }
        assert!(
            start.elapsed() < deadline,
            "rollout {id} never reached {what}; stuck in {:?}",
            r.phase
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Waits (up to `deadline`) until rollout `id` ends and returns its last phase.
async fn wait_terminal(rig: &Rig, id: i64, deadline: Duration) -> Phase {
    wait_for(&rig.store, id, "terminal", deadline, Phase::is_terminal).await
}

/// Waits (up to 10 s) until rollout `id` is held and returns the hold's reason.
async fn wait_held(rig: &Rig, id: i64) -> String {
    let held = wait_for(&rig.store, id, "held", Duration::from_secs(10), |p| {
        matches!(p, Phase::Held { .. })
    })
    .await;
    match held {
        Phase::Held { reason, .. } => reason,
        other => panic!("waited for a hold, got {other:?}"),
    }
}

/// After `pause`, rollout `id` is still held: nothing moved it on its own.
async fn assert_still_held(rig: &Rig, id: i64, pause: Duration) {
    tokio::time::sleep(pause).await;
    let phase = rig.store.rollout(id).expect("rollout").phase;
    assert!(matches!(phase, Phase::Held { .. }), "{phase:?}");
}

fn first_release(rig: &Rig) {
    rig.platform.install(&target(), "1");
    rig.store
        .set_release(&target(), &build("1"), None, 0)
        .expect("seed release");
}

#[tokio::test]
async fn good_build_is_promoted_after_every_step_and_the_watch() {
    let dir = tempfile::tempdir().expect("tmp");
    let rig = rig(
        &dir.path().join("g.db"),
        Arc::new(SimPlatform::default()),
        None,
    );
    first_release(&rig);
    let id = rig
        .engine
        .deploy(&target(), build("2"), Strategy::Rolling, "test")
        .expect("deploy");
    let end = wait_terminal(&rig, id, Duration::from_secs(20)).await;
    assert_eq!(end, Phase::Promoted);
    let actions: Vec<String> = rig.platform.actions().into_iter().map(|(_, a)| a).collect();
    assert_eq!(actions, vec!["shift 2 0.5", "shift 2 1", "promote 2"]);
    let steps: Vec<String> = rig
        .store
        .steps(id)
        .expect("steps")
        .into_iter()
        .map(|s| s.to)
        .collect();
    assert_eq!(
        steps,
        vec![
            "pending",
            "shifting",
            "verifying",
            "shifting",
            "verifying",
            "promoting",
            "watching",
            "promoted"
        ]
    );
    let r = rig.store.rollout(id).expect("r");
    assert_eq!(r.verdict.as_deref(), Some("promote"));
    assert!(r.evidence.is_some(), "the verdict carries its evidence");
    assert_eq!(
        rig.store
            .release(&target())
            .expect("release")
            .map(|b| b.number),
        Some("2".into())
    );
}

#[tokio::test]
async fn erroring_build_is_reverted_and_the_old_build_runs() {
    let dir = tempfile::tempdir().expect("tmp");
    let rig = rig(
        &dir.path().join("e.db"),
        Arc::new(SimPlatform::default()),
        None,
    );
    first_release(&rig);
    rig.source.set_error_ratio("3", "availability", 0.05);
    let id = rig
        .engine
        .deploy(&target(), build("3"), Strategy::Canary, "test")
        .expect("deploy");
    let end = wait_terminal(&rig, id, Duration::from_secs(20)).await;
    assert_eq!(end, Phase::Reverted);
    let r = rig.store.rollout(id).expect("r");
    assert_eq!(r.verdict.as_deref(), Some("revert"));
    assert!(r.reason.as_deref().is_some_and(|x| !x.is_empty()));
    let ev = r.evidence.expect("evidence");
    assert!(ev.bad_events > 0 && ev.statistic.is_some(), "{ev:?}");
    assert_eq!(rig.platform.state(&target()), (Some("1".into()), None, 0.0));
    assert_eq!(
        rig.store
            .release(&target())
            .expect("release")
            .map(|b| b.number),
        Some("1".into())
    );
}

#[tokio::test]
async fn an_outage_both_builds_share_holds_the_canary_and_reverts_nothing() {
    let dir = tempfile::tempdir().expect("tmp");
    let rig = rig(
        &dir.path().join("shared.db"),
        Arc::new(SimPlatform::default()),
        None,
    );
    first_release(&rig);
    // A dependency fails 2 % of every build's requests (20× the budget).
    rig.source.set_error_ratio("1", "availability", 0.02);
    rig.source.set_error_ratio("2", "availability", 0.02);
    let id = rig
        .engine
        .deploy(&target(), build("2"), Strategy::Canary, "test")
        .expect("deploy");
    let reason = wait_held(&rig, id).await;
    assert!(
        reason.contains("an outage both versions share, not the release's fault"),
        "{reason}"
    );
    // Held, still judged: the same errors on both sides never blame the
    // canary, and the old build keeps its traffic.
    assert_still_held(&rig, id, Duration::from_millis(800)).await;
    assert!(
        !rig.platform
            .actions()
            .iter()
            .any(|(_, a)| a.starts_with("revert")),
        "{:?}",
        rig.platform.actions()
    );
    let (stable, candidate, _) = rig.platform.state(&target());
    assert_eq!(
        (stable.as_deref(), candidate.as_deref()),
        (Some("1"), Some("2"))
    );
}

#[tokio::test]
async fn source_outage_holds_never_promotes_and_resumes_when_it_returns() {
    let dir = tempfile::tempdir().expect("tmp");
    let rig = rig(
        &dir.path().join("h.db"),
        Arc::new(SimPlatform::default()),
        None,
    );
    first_release(&rig);
    rig.source.down.store(true, Ordering::SeqCst);
    let id = rig
        .engine
        .deploy(&target(), build("2"), Strategy::Rolling, "test")
        .expect("deploy");
    let reason = wait_held(&rig, id).await;
    assert!(reason.contains("signal source down"), "{reason}");
    let status = rig.engine.live_status(id).expect("live");
    assert!(!status.source_ok);
    // Well past the verification time a healthy source would need: still held.
    assert_still_held(&rig, id, Duration::from_millis(1500)).await;
    assert!(
        !rig.platform
            .actions()
            .iter()
            .any(|(_, a)| a.starts_with("promote"))
    );
    rig.source.down.store(false, Ordering::SeqCst);
    let end = wait_terminal(&rig, id, Duration::from_secs(20)).await;
    assert_eq!(end, Phase::Promoted);
    let causes: Vec<String> = rig
        .store
        .steps(id)
        .expect("steps")
        .into_iter()
        .map(|s| s.cause)
        .collect();
    assert!(
        causes.contains(&"source_down".to_string()) && causes.contains(&"source_up".to_string()),
        "{causes:?}"
    );
}

#[tokio::test]
async fn a_release_held_for_too_little_traffic_is_still_judged_and_reverted_when_it_burns() {
    let dir = tempfile::tempdir().expect("tmp");
    let platform = Arc::new(SimPlatform::default());
    // 20 requests a second, 10 % of them to the canary: nowhere near enough
    // to pass a 99.9 % SLO within the 1 s deadline.
    let source = Arc::new(SimSource::new(
        platform.clone(),
        20.0,
        vec!["availability".into()],
        0.0,
    ));
    let rig = rig_with(
        &dir.path().join("held.db"),
        platform,
        Some(source),
        judge::Policy {
            max_verify_seconds: 1.0,
            ..policy()
        },
    );
    first_release(&rig);
    let id = rig
        .engine
        .deploy(&target(), build("2"), Strategy::Canary, "test")
        .expect("deploy");
    let reason = wait_held(&rig, id).await;
    assert!(reason.contains("too little traffic"), "{reason}");
    // Held: a person is told and nothing promotes on its own.
    assert_still_held(&rig, id, Duration::from_millis(500)).await;

    // The held canary starts failing half its requests: still judged, it is
    // reverted without waiting for the person.
    rig.source.set_error_ratio("2", "availability", 0.5);
    let end = wait_terminal(&rig, id, Duration::from_secs(20)).await;
    assert_eq!(end, Phase::Reverted);
    let r = rig.store.rollout(id).expect("r");
    assert!(
        r.reason
            .as_deref()
            .is_some_and(|x| x.starts_with("while held:")),
        "{:?}",
        r.reason
    );
    assert_eq!(rig.platform.state(&target()), (Some("1".into()), None, 0.0));
    assert!(
        !rig.platform
            .actions()
            .iter()
            .any(|(_, a)| a.starts_with("promote"))
    );
}

#[tokio::test]
async fn a_source_outage_during_the_watch_stretches_it_and_promote_ends_it() {
    let dir = tempfile::tempdir().expect("tmp");
    let rig = rig(
        &dir.path().join("w.db"),
        Arc::new(SimPlatform::default()),
        None,
    );
    first_release(&rig);
    for (number, ends_by_hand) in [("2", false), ("3", true)] {
        let id = rig
            .engine
            .deploy(&target(), build(number), Strategy::Rolling, "test")
            .expect("deploy");
        wait_for(&rig.store, id, "watching", Duration::from_secs(20), |p| {
            matches!(p, Phase::Watching { .. })
        })
        .await;
        rig.source.down.store(true, Ordering::SeqCst);
        // Three times the 500 ms watch: a blind watch does not run out.
        tokio::time::sleep(Duration::from_millis(1500)).await;
        assert!(
            matches!(
                rig.store.rollout(id).expect("r").phase,
                Phase::Watching { .. }
            ),
            "build {number}: the watch ended while the source was down"
        );
        let status = rig.engine.live_status(id).expect("live");
        assert!(!status.source_ok);
        let note = status.note.unwrap_or_default();
        assert!(note.contains("watch is paused"), "{note}");
        let end = if ends_by_hand {
            let by_hand = rig
                .engine
                .command(id, Command::Promote)
                .await
                .expect("promote");
            rig.source.down.store(false, Ordering::SeqCst);
            by_hand
        } else {
            rig.source.down.store(false, Ordering::SeqCst);
            wait_terminal(&rig, id, Duration::from_secs(10)).await
        };
        assert_eq!(end, Phase::Promoted, "build {number}");
    }
    assert_eq!(rig.platform.state(&target()).0.as_deref(), Some("3"));
}

#[tokio::test]
async fn commands_pause_resume_and_abort() {
    let dir = tempfile::tempdir().expect("tmp");
    let rig = rig(
        &dir.path().join("c.db"),
        Arc::new(SimPlatform::default()),
        None,
    );
    first_release(&rig);
    // A build so slightly worse that the judge needs a while: time to command it.
    rig.source.set_error_ratio("2", "availability", 0.0012);
    let id = rig
        .engine
        .deploy(&target(), build("2"), Strategy::Canary, "test")
        .expect("deploy");
    wait_for(&rig.store, id, "verifying", Duration::from_secs(10), |p| {
        matches!(p, Phase::Verifying { .. })
    })
    .await;
    let paused = rig.engine.command(id, Command::Pause).await.expect("pause");
    assert!(matches!(paused, Phase::Paused { .. }));
    let err = rig
        .engine
        .command(id, Command::Pause)
        .await
        .map(|p| p.name());
    assert_eq!(err.expect("pausing twice is a no-op"), "paused");
    let resumed = rig
        .engine
        .command(id, Command::Resume)
        .await
        .expect("resume");
    assert!(matches!(resumed, Phase::Verifying { .. }));
    rig.engine.command(id, Command::Abort).await.expect("abort");
    let end = wait_terminal(&rig, id, Duration::from_secs(10)).await;
    assert_eq!(end, Phase::Aborted);
    let refused = rig
        .engine
        .command(id, Command::Promote)
        .await
        .expect_err("finished");
    assert_eq!(
        refused.to_string(),
        "cannot promote a rollout that is aborted"
    );
    assert_eq!(rig.platform.state(&target()).0.as_deref(), Some("1"));
}

#[tokio::test]
async fn a_dropped_engine_resumes_from_the_store_and_acts_once_per_step() {
    let dir = tempfile::tempdir().expect("tmp");
    let db = dir.path().join("r.db");
    let platform = Arc::new(SimPlatform::default());
    let first = rig(&db, platform.clone(), None);
    first_release(&first);
    let id = first
        .engine
        .deploy(&target(), build("2"), Strategy::Rolling, "test")
        .expect("deploy");
    wait_for(
        &first.store,
        id,
        "verifying",
        Duration::from_secs(10),
        |p| matches!(p, Phase::Verifying { .. }),
    )
    .await;
    // "Crash": stop the engine's tasks; only the store survives.
    first.engine.shutdown();
    drop(first);
    tokio::time::sleep(Duration::from_millis(100)).await;
    let second = rig(&db, platform.clone(), None);
    assert_eq!(second.engine.resume().expect("resume"), 1);
    let end = wait_for(
        &second.store,
        id,
        "terminal",
        Duration::from_secs(20),
        Phase::is_terminal,
    )
    .await;
    assert_eq!(end, Phase::Promoted);
    let actions: Vec<String> = platform.actions().into_iter().map(|(_, a)| a).collect();
    // The restore re-asserts the step it was verifying (idempotent), then each later action once.
    assert_eq!(
        actions,
        vec!["shift 2 0.5", "shift 2 0.5", "shift 2 1", "promote 2"]
    );
    let steps = second.store.steps(id).expect("steps");
    let seqs: Vec<i64> = steps.iter().map(|s| s.seq).collect();
    assert_eq!(
        seqs,
        (1..=steps.len() as i64).collect::<Vec<_>>(),
        "history has every step once, in order"
    );
}

/// The judge's elapsed seconds and the candidate's events as the rollout's
/// live status reports them, once it has been judged at least `at_least`
/// seconds (deadline 10 s).
async fn judged(rig: &Rig, id: i64, at_least: f64) -> (f64, u64) {
    let start = Instant::now();
    loop {
        if let Some(status) = rig.engine.live_status(id)
            && let Some(detail) = &status.detail
        {
            let elapsed = detail["elapsed_seconds"].as_f64().expect("elapsed_seconds");
            let events = detail["evidence"][0]["events"].as_u64().expect("events");
            if elapsed >= at_least {
                return (elapsed, events);
            }
        }
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "rollout {id} not judged for {at_least} s within 10 s"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Verifies a rollout for a while with `before`, "crashes", resumes with
/// `after`, and returns what the judge had seen before and right after.
async fn crash_while_verifying(
    before: judge::Policy,
    after: judge::Policy,
) -> ((f64, u64), (f64, u64), Rig, i64, tempfile::TempDir) {
    let dir = tempfile::tempdir().expect("tmp");
    let db = dir.path().join("r.db");
    let platform = Arc::new(SimPlatform::default());
    // One source across the restart: its counters keep counting, as a
    // replica's do when guard, not the replica, restarts.
    let source = Arc::new(SimSource::new(
        platform.clone(),
        5000.0,
        vec!["availability".into()],
        0.0,
    ));
    let first = rig_with(&db, platform.clone(), Some(source.clone()), before);
    first_release(&first);
    let id = first
        .engine
        .deploy(&target(), build("2"), Strategy::Rolling, "test")
        .expect("deploy");
    let seen = judged(&first, id, 1.0).await;
    first.engine.shutdown();
    drop(first);
    tokio::time::sleep(Duration::from_millis(100)).await;
    let second = rig_with(&db, platform, Some(source), after);
    assert_eq!(second.engine.resume().expect("resume"), 1);
    let resumed = judged(&second, id, 0.0).await;
    (seen, resumed, second, id, dir)
}

#[tokio::test]
async fn a_resumed_rollout_goes_on_with_its_judges_evidence() {
    // Slow to promote, so the crash comes mid-step.
    let slow = judge::Policy {
        min_verify_seconds: 4.0,
        ..policy()
    };
    let ((elapsed, events), (elapsed_after, events_after), rig, id, _dir) =
        crash_while_verifying(slow.clone(), slow).await;
    assert!(
        elapsed_after >= elapsed,
        "the judge restarted its tests: {elapsed_after} s judged after the restart, {elapsed} s before"
    );
    assert!(
        events_after >= events,
        "events lost in the restart: {events_after} after, {events} before"
    );
    // The counts read before the restart are the new zero, not new events:
    // half a judged second later the judge has seen about half a second more
    // of 5000 rps at a 50 % share.
    let (later, events_later) = judged(&rig, id, elapsed_after + 0.5).await;
    let expected = 2500.0 * (later - elapsed_after);
    let added = (events_later - events_after) as f64;
    assert!(
        (0.5 * expected..1.5 * expected + 250.0).contains(&added),
        "{added} events judged in {:.2} s after the restart, about {expected:.0} expected",
        later - elapsed_after
    );
    assert_eq!(
        wait_terminal(&rig, id, Duration::from_secs(20)).await,
        Phase::Promoted
    );
}

#[tokio::test]
async fn a_policy_changed_across_the_restart_verifies_the_step_afresh() {
    let slow = judge::Policy {
        min_verify_seconds: 4.0,
        ..policy()
    };
    let stricter = judge::Policy {
        alpha: 0.005,
        ..slow.clone()
    };
    let ((elapsed, _), (elapsed_after, _), rig, id, _dir) =
        crash_while_verifying(slow, stricter).await;
    assert!(
        elapsed_after < elapsed,
        "evidence weighed under the old policy was kept: {elapsed_after} s after, {elapsed} s before"
    );
    assert_eq!(
        wait_terminal(&rig, id, Duration::from_secs(20)).await,
        Phase::Promoted
    );
}
