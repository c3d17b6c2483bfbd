//! The local platform with real ultra-boost replicas: rolling update, canary
//! steps, promote and revert under steady load cost zero router failures; a
//! build that never gets ready stops the move with the old replicas serving;
//! every call is idempotent.
#[path = "support/replicas.rs"]
mod replicas;

use std::time::Duration;

use guard::platform::local::{LocalPlatform, LocalTargetConfig};
use guard::platform::{Observed, Platform, PlatformError, Role, Strategy};
use replicas::{Load, build, client, get, platform};

fn builds_of(o: &Observed, role: Role) -> Vec<String> {
    o.endpoints
        .iter()
        .filter(|e| e.role == role)
        .map(|e| e.build.clone())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rolling_update_and_promote_under_load_fail_no_request() {
    let (p, t, addr) = platform(2).await;
    let b1 = build("1", &[]);
    let b2 = build("2", &[]);
    p.revert(&t, &b1).await.unwrap();
    let o = p.observe(&t).await.unwrap();
    assert_eq!(o.stable.as_deref(), Some("1"));
    assert_eq!(builds_of(&o, Role::Stable), ["1", "1"]);
    assert!(
        o.endpoints
            .iter()
            .all(|e| e.ready && e.metrics_url.starts_with("http://127.0.0.1:"))
    );

    let load = Load::start(format!("http://{addr}/"), 4, Duration::from_millis(1));
    load.wait_for(200).await;

    p.shift(&t, &b1, &b2, Strategy::Rolling, 0.5).await.unwrap();
    let half = p.observe(&t).await.unwrap();
    assert_eq!(builds_of(&half, Role::Stable), ["1"]);
    assert_eq!(builds_of(&half, Role::Candidate), ["2"]);
    assert_eq!(half.candidate_share, 0.5);
    load.wait_for(200).await;
    // Idempotent: the same call again changes nothing.
    p.shift(&t, &b1, &b2, Strategy::Rolling, 0.5).await.unwrap();
    assert_eq!(p.observe(&t).await.unwrap(), half);

    p.shift(&t, &b1, &b2, Strategy::Rolling, 1.0).await.unwrap();
    let full = p.observe(&t).await.unwrap();
    assert_eq!(builds_of(&full, Role::Candidate), ["2", "2"]);
    assert_eq!(full.candidate_share, 1.0);
    load.wait_for(200).await;

    p.promote(&t, &b2).await.unwrap();
    p.promote(&t, &b2).await.unwrap();
    let done = p.observe(&t).await.unwrap();
    assert_eq!(done.stable.as_deref(), Some("2"));
    assert_eq!(done.candidate, None);
    assert_eq!(builds_of(&done, Role::Stable), ["2", "2"]);
    load.wait_for(200).await;

    let tally = load.stop().await;
    assert_eq!(tally.router_failures(), 0, "{tally:?}");
    assert_eq!(
        tally.by_code.keys().copied().collect::<Vec<_>>(),
        [200],
        "{tally:?}"
    );
    assert!(
        tally.by_build.contains_key("1") && tally.by_build.contains_key("2"),
        "{tally:?}"
    );
    assert_eq!(p.router_totals(&t).unwrap().failures, 0);
    p.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn canary_steps_then_revert_under_load_fail_no_request() {
    let (p, t, addr) = platform(2).await;
    let b1 = build("1", &[]);
    // The bad build answers 500 to 30 % of requests: those are its own
    // answers, not router failures.
    let b2 = build("2", &["--fault-error-rate", "0.3", "--fault-seed", "5"]);
    p.revert(&t, &b1).await.unwrap();
    let load = Load::start(format!("http://{addr}/"), 4, Duration::from_millis(1));
    load.wait_for(100).await;
    for share in [0.05, 0.25, 0.5] {
        p.shift(&t, &b1, &b2, Strategy::Canary, share)
            .await
            .unwrap();
        let o = p.observe(&t).await.unwrap();
        assert_eq!(o.candidate.as_deref(), Some("2"));
        assert_eq!(o.candidate_share, share);
        assert_eq!(
            builds_of(&o, Role::Stable),
            ["1", "1"],
            "stable keeps its full count"
        );
        assert_eq!(builds_of(&o, Role::Candidate), ["2"]);
        load.wait_for(200).await;
    }
    p.revert(&t, &b1).await.unwrap();
    p.revert(&t, &b1).await.unwrap();
    let o = p.observe(&t).await.unwrap();
    assert_eq!(
        (o.stable.as_deref(), o.candidate.as_deref()),
        (Some("1"), None)
    );
    assert_eq!(builds_of(&o, Role::Stable), ["1", "1"]);
    assert_eq!(o.candidate_share, 0.0);
    // A response build 2 gave just before the revert may still be on its way
    // to the client: count from the moment every earlier request is tallied.
    load.settle().await;
    let before = load.tally();
    load.wait_for(200).await;
    let tally = load.stop().await;
    assert_eq!(tally.router_failures(), 0, "{tally:?}");
    assert_eq!(p.router_totals(&t).unwrap().failures, 0);
    // After the revert only build 1 answers.
    assert_eq!(
        tally.by_build.get("2"),
        before.by_build.get("2"),
        "{tally:?}"
    );
    p.shutdown().await;
}

/// Connected Unix sockets whose path is a replica socket under `dir`, from
/// `/proc/net/unix` (an accepted connection carries its listener's path;
/// state 03 is "connected").
fn connected_replica_sockets(dir: &std::path::Path) -> usize {
    let table = std::fs::read_to_string("/proc/net/unix").unwrap();
    let prefix = dir.display().to_string();
    table
        .lines()
        .skip(1)
        .filter(|l| {
            let cols: Vec<&str> = l.split_whitespace().collect();
            cols.len() >= 8
                && cols[5] == "03"
                && cols[7].starts_with(&prefix)
                && cols[7].ends_with(".sock")
        })
        .count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_build_with_a_unix_socket_is_routed_over_it_with_no_failed_request() {
    let (p, t, addr) = platform(2).await;
    let dir = p.runtime_dir().to_path_buf();
    let b1 = build("1", &[]);
    let b2 = build("2", &["--unix-socket", "{unix_socket}"]);
    p.revert(&t, &b1).await.unwrap();
    let load = Load::start(format!("http://{addr}/"), 4, Duration::from_millis(1));
    load.wait_for(100).await;
    assert_eq!(
        connected_replica_sockets(&dir),
        0,
        "build 1 is reached over TCP"
    );

    p.shift(&t, &b1, &b2, Strategy::Rolling, 1.0).await.unwrap();
    p.promote(&t, &b2).await.unwrap();
    load.settle().await;
    let before = load.tally();
    load.wait_for(200).await;
    assert!(
        connected_replica_sockets(&dir) >= 1,
        "the router reaches build 2 over its Unix socket"
    );
    let sockets = |dir: &std::path::Path| {
        std::fs::read_dir(dir)
            .unwrap()
            .filter_map(|e| e.ok())
            .filter(|e| e.file_name().to_string_lossy().ends_with(".sock"))
            .count()
    };
    assert_eq!(sockets(&dir), 2, "one socket per replica of build 2");

    // Back to the TCP build: build 2's replicas drain and remove their sockets.
    p.revert(&t, &b1).await.unwrap();
    load.wait_for(200).await;
    let tally = load.stop().await;
    assert_eq!(tally.router_failures(), 0, "{tally:?}");
    assert_eq!(p.router_totals(&t).unwrap().failures, 0);
    assert_eq!(
        tally.by_code.keys().copied().collect::<Vec<_>>(),
        [200],
        "{tally:?}"
    );
    assert!(
        tally.by_build.get("2").copied().unwrap_or(0)
            >= before.by_build.get("2").copied().unwrap_or(0) + 200,
        "build 2 answered through its socket: {tally:?}"
    );
    replicas::poll(
        Duration::from_secs(10),
        "build 2's sockets to be removed",
        || {
            let n = sockets(&dir);
            async move { (n == 0).then_some(()) }
        },
    )
    .await;
    p.shutdown().await;
}

/// Answers given on connections the router handed over, all builds.
fn handed_over(t: &replicas::Tally) -> u64 {
    t.handed_over_by_build.values().sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_release_gets_connections_handed_over_and_every_move_is_relayed_with_no_failed_request()
{
    let (p, t, addr) = platform(2).await;
    let router = p.router(&t).unwrap();
    let handoff = ["--handoff-socket", "{handoff_socket}"];
    let b1 = build("1", &handoff);
    let b2 = build("2", &handoff);
    p.revert(&t, &b1).await.unwrap();
    assert!(
        router.hands_over(),
        "one release: connections are handed over"
    );
    let load = Load::start(format!("http://{addr}/"), 4, Duration::from_millis(1));
    load.wait_for(100).await;
    load.settle().await;
    let steady = load.tally();
    load.wait_for(200).await;
    let after = load.tally();
    assert_eq!(
        handed_over(&after) - handed_over(&steady),
        after.total() - steady.total(),
        "in steady state every answer comes from a replica on a handed-over connection: {after:?}"
    );
    let totals = p.router_totals(&t).unwrap();
    assert!(
        totals.handed_over >= 1 && totals.handed_over * 10 <= after.total(),
        "connections are handed over, not requests: {totals:?} for {} answers",
        after.total()
    );

    // A canary relays every request: weights hold again, the connections the
    // replicas were handed come back through the router (recycle).
    let handed_connections = p.router_totals(&t).unwrap().handed_over;
    p.shift(&t, &b1, &b2, Strategy::Canary, 0.25).await.unwrap();
    assert!(!router.hands_over());
    load.settle().await;
    let before = load.tally();
    load.wait_for(800).await;
    let during = load.tally();
    // Each recycled connection answers at most once more (with
    // `Connection: close`); settling has used up the ones in use.
    assert!(
        handed_over(&during) - handed_over(&before) <= handed_connections,
        "nothing skips the router during a move: {during:?}"
    );
    let relayed = |t: &replicas::Tally, b: &str| t.by_build.get(b).copied().unwrap_or(0);
    let n2 = relayed(&during, "2") - relayed(&before, "2");
    let n = during.total() - before.total();
    let share = n2 as f64 / n as f64;
    assert!(
        (0.15..=0.35).contains(&share),
        "candidate share {share} of {n} relayed requests, weight 0.25"
    );

    // Promoted: one release again, handed over again (relayed connections
    // are asked to reconnect and come back to be handed over).
    p.promote(&t, &b2).await.unwrap();
    assert!(router.hands_over());
    load.settle().await;
    let promoted = load.tally();
    load.wait_for(200).await;
    let later = load.tally();
    // A relayed connection answers at most once more (with `Connection:
    // close`); settling has used up the ones in use.
    let relayed =
        (later.total() - promoted.total()) - (handed_over(&later) - handed_over(&promoted));
    assert!(
        relayed <= 8,
        "{relayed} relayed answers after the promote: {later:?}"
    );
    assert!(later.handed_over_by_build.get("2").copied().unwrap_or(0) >= 200);

    // And back, rolling: build 2's replicas drain their handed-over
    // connections like their own.
    p.shift(&t, &b2, &b1, Strategy::Rolling, 1.0).await.unwrap();
    p.promote(&t, &b1).await.unwrap();
    load.wait_for(200).await;
    let tally = load.stop().await;
    assert_eq!(tally.router_failures(), 0, "{tally:?}");
    assert_eq!(p.router_totals(&t).unwrap().failures, 0);
    assert_eq!(
        tally.by_code.keys().copied().collect::<Vec<_>>(),
        [200],
        "{tally:?}"
    );
    p.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_build_that_never_gets_ready_stops_the_move_with_the_old_replicas_serving() {
    let t = replicas::target();
    let mut cfg = LocalTargetConfig::new(t.clone(), "127.0.0.1:0".parse().unwrap());
    cfg.ready_timeout = Duration::from_secs(2);
    let mut registry = prometheus_client::registry::Registry::default();
    let p = LocalPlatform::start(vec![cfg], &mut registry)
        .await
        .unwrap();
    let addr = p.router_addr(&t).unwrap();
    let b1 = build("1", &[]);
    p.revert(&t, &b1).await.unwrap();

    let slow = build("2", &["--startup-delay", "60s"]);
    let err = p
        .shift(&t, &b1, &slow, Strategy::Rolling, 0.5)
        .await
        .unwrap_err();
    assert!(
        matches!(&err, PlatformError::NotReady { build, .. } if build == "2"),
        "{err}"
    );
    let missing = guard::platform::Build {
        command: vec!["/nonexistent/ultra-boost".into()],
        ..build("3", &[])
    };
    let err = p
        .shift(&t, &b1, &missing, Strategy::Canary, 0.1)
        .await
        .unwrap_err();
    assert!(
        err.to_string().contains("/nonexistent/ultra-boost"),
        "{err}"
    );

    let o = p.observe(&t).await.unwrap();
    assert_eq!(o.endpoints.len(), 2, "{o:?}");
    assert!(
        o.endpoints.iter().all(|e| e.build == "1" && e.ready),
        "{o:?}"
    );
    let c = client();
    for _ in 0..20 {
        assert_eq!(
            get(&c, &format!("http://{addr}/")).await.unwrap(),
            (200, Some("1".into()))
        );
    }
    // The engine reverts; nothing of build 2 or 3 is left.
    p.revert(&t, &b1).await.unwrap();
    let o = p.observe(&t).await.unwrap();
    assert_eq!(
        (o.stable.as_deref(), o.candidate.as_deref()),
        (Some("1"), None)
    );
    p.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_target_and_bad_share_are_errors() {
    let (p, t, _) = platform(1).await;
    let other = guard::platform::Target {
        service: "nope".into(),
        environment: "test".into(),
    };
    assert!(matches!(
        p.observe(&other).await,
        Err(PlatformError::UnknownTarget { .. })
    ));
    let err = p
        .shift(
            &t,
            &build("1", &[]),
            &build("2", &[]),
            Strategy::Canary,
            1.5,
        )
        .await
        .unwrap_err();
    assert!(err.to_string().contains("between 0.0 and 1.0"), "{err}");
    p.shutdown().await;
}

/// `<target>/debug/examples/router_bench`: a guard-like process that runs the
/// local platform (built by `cargo test`, which builds examples).
fn router_bench_example() -> std::path::PathBuf {
    let bin = replicas::ultra_boost_bin();
    let ex = bin.parent().unwrap().join("examples").join("router_bench");
    assert!(
        ex.is_file(),
        "{} is missing: run `cargo build -p guard --examples` (cargo test builds it)",
        ex.display()
    );
    ex
}

fn gone(pid: u32) -> bool {
    // Dead, or a zombie waiting for a reaper that is not ours to be.
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Err(_) => true,
        Ok(stat) => {
            stat.rsplit(')')
                .next()
                .and_then(|r| r.split_whitespace().next())
                == Some("Z")
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_exit_when_guard_is_killed() {
    use tokio::io::AsyncBufReadExt;
    let mut guard = tokio::process::Command::new(router_bench_example())
        .arg("--bin")
        .arg(replicas::ultra_boost_bin())
        .args(["--replicas", "2", "--arg=--drain-delay=100ms"])
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut lines = tokio::io::BufReader::new(guard.stdout.take().unwrap()).lines();
    let line = tokio::time::timeout(Duration::from_secs(30), lines.next_line())
        .await
        .expect("router_bench prints its address line in time")
        .unwrap()
        .expect("a line");
    let v: serde_json::Value = serde_json::from_str(&line).unwrap();
    let pids: Vec<u32> = v["pids"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p.as_u64().unwrap() as u32)
        .collect();
    assert_eq!(pids.len(), 2, "{line}");
    assert!(pids.iter().all(|&p| !gone(p)), "replicas run: {line}");
    // SIGKILL: guard gets no chance to clean up; the kernel tells the replicas.
    guard.kill().await.unwrap();
    replicas::poll(
        Duration::from_secs(20),
        "replicas to exit after guard died",
        || {
            let pids = pids.clone();
            async move { pids.iter().all(|&p| gone(p)).then_some(()) }
        },
    )
    .await;
}
