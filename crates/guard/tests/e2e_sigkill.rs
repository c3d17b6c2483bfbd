//! SIGKILL the real `guard serve` at every state of a rollout, restart it, and
//! check that it resumes and finishes, that history shows every step exactly
//! once, and that the platform ends up running the verdict's build only.
//!
//! `GUARD_TEST_ACTION_DELAY_MS` widens the window between "phase stored" and
//! "platform action done", so the test can kill guard inside the states that
//! are otherwise over in milliseconds (shifting, promoting, reverting).

#[path = "support/serve_harness.rs"]
mod serve_harness;

use std::time::{Duration, Instant};

use serve_harness::{
    Guard, Load, config, deploy, get, replicas_of, router, step_states, wait_state,
};

const ENV: &[(&str, &str)] = &[("GUARD_TEST_ACTION_DELAY_MS", "1500")];

async fn restart(g: &mut Guard, dir: &std::path::Path, load: &Load) {
    g.kill();
    *g = Guard::start(dir, ENV);
    load.retarget(router(&g.api).await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_at_every_state_guard_resumes_and_acts_once() {
    let dir = tempfile::tempdir().expect("tmp");
    std::fs::write(dir.path().join("guard.yaml"), config("4s")).expect("config");
    let mut g = Guard::start(dir.path(), ENV);
    // The initial build comes up as rollout 1.
    wait_state(&g.api, 1, "promoted", Duration::from_secs(30), |s| {
        s == "promoted"
    })
    .await;
    let load = Load::start(router(&g.api).await, 100);
    tokio::time::sleep(Duration::from_secs(1)).await;

    // A good build, killed in each of its states.
    let id = deploy(&g.api, "2").await;
    for state in ["shifting", "verifying", "promoting", "watching"] {
        wait_state(&g.api, id, state, Duration::from_secs(60), |s| s == state).await;
        restart(&mut g, dir.path(), &load).await;
    }
    let done = wait_state(&g.api, id, "promoted", Duration::from_secs(60), |s| {
        s == "promoted" || s == "reverted"
    })
    .await;
    assert_eq!(done["state"], "promoted", "{}", g.logs());
    assert_eq!(
        step_states(&done),
        [
            "pending",
            "shifting",
            "verifying",
            "shifting",
            "verifying",
            "promoting",
            "watching",
            "promoted"
        ],
        "every step once, in order, across four SIGKILLs"
    );

    // An erroring build, killed while verifying and while reverting.
    let id = deploy(&g.api, "3").await;
    for state in ["verifying", "reverting"] {
        wait_state(&g.api, id, state, Duration::from_secs(60), |s| s == state).await;
        restart(&mut g, dir.path(), &load).await;
    }
    let done = wait_state(&g.api, id, "reverted", Duration::from_secs(60), |s| {
        s == "reverted" || s == "promoted"
    })
    .await;
    assert_eq!(done["state"], "reverted", "{}", g.logs());
    let steps = step_states(&done);
    assert_eq!(steps.first().map(String::as_str), Some("pending"));
    assert_eq!(&steps[steps.len() - 2..], ["reverting", "reverted"]);
    assert_eq!(
        steps.iter().filter(|s| *s == "reverting").count(),
        1,
        "{steps:?}"
    );

    // History: three rollouts (initial, good, bad), none active; build 2 runs.
    let list = get(&g.api, "/api/v1/rollouts").await;
    assert_eq!(list.as_array().map(Vec::len), Some(3), "{list}");
    let status = get(&g.api, "/api/v1/status").await;
    assert_eq!(status[0]["release"], "2", "{status}");
    // Exactly the stable replicas remain (the reverted ones drained).
    let deadline = Instant::now() + Duration::from_secs(15);
    while replicas_of(g.pid()) != 2 {
        assert!(
            Instant::now() < deadline,
            "expected 2 ultra-boost replicas, found {}",
            replicas_of(g.pid())
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
