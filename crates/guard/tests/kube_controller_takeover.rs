//! Leader failover in the middle of rollouts started through guard's deploy
//! API (issue 8: "rollout state kept on the cluster objects so a new leader
//! resumes any rollout in flight").
//!
//! Two real `guard controller` processes against the `KubeApiDouble` (through
//! a kubeconfig) and the `PrometheusApiDouble`. guard-a leads and starts four
//! rollouts with `POST /api/v1/deployments`: a good and a bad build rolling,
//! a good and a bad build as canaries (replica ratio, no Gateway API route).
//! guard-a's judge is configured never to decide within the test, so all four
//! are mid-verification when it is killed with SIGKILL (nothing released).
//! guard-b takes the Lease once it expires, takes the four rollouts over from
//! the state on the Deployments and finishes each exactly once: good builds
//! promoted, bad builds reverted to the previous template (rolling) or the
//! canary removed (canary), with annotations saying that guard-b took them
//! over from guard-a and who reverted. guard-a, restarted with its store,
//! then leads again and closes those rollouts instead of resuming them.

#[path = "support/kube_double.rs"]
mod kube_double;
#[path = "support/kube_env.rs"]
mod kube_env;
#[path = "support/prometheus_api_double.rs"]
mod prometheus_api_double;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use guard::platform::Strategy;
use guard::platform::kubernetes::rollout::{
    ANNOTATION_REVERTED_BY, ANNOTATION_TAKEN_OVER_AT, ANNOTATION_TAKEN_OVER_BY,
    ANNOTATION_TAKEN_OVER_FROM, Phase, RolloutState,
};
use k8s_openapi::api::apps::v1::{Deployment, ReplicaSet};
use kube::ResourceExt;
use kube_env::{TestCluster, deployment, eventually};
use prometheus_api_double::PrometheusApiDouble;
use serde_json::{Value, json};

const WAIT: Duration = Duration::from_secs(40);
const TOKEN: &str = "takeover-test-token";
const IMAGE: &str = "registry.example.com/ub";
const LEASE: Duration = Duration::from_secs(3);

/// (Deployment/service, strategy, candidate build, replicas).
const ROLLOUTS: [(&str, &str, &str, i32); 4] = [
    ("roll-good", "rolling", "2", 1),
    ("roll-bad", "rolling", "3-bad", 1),
    ("canary-good", "canary", "5", 2),
    ("canary-bad", "canary", "4-bad", 2),
];

/// A `guard controller` child; killed (SIGKILL) and reaped on drop. Its
/// stderr goes to a file, printed when the test fails.
struct Controller {
    child: Child,
    log: PathBuf,
    addr_file: PathBuf,
}

impl Controller {
    fn spawn(dir: &Path, identity: &str, config: &Path, kubeconfig: &Path, ns: &str) -> Self {
        let mut run = 1;
        while dir.join(format!("{identity}-{run}.log")).exists() {
            run += 1;
        }
        let log = dir.join(format!("{identity}-{run}.log"));
        let addr_file = dir.join(format!("{identity}-{run}.addr"));
        let child = kube_env::controller_command(
            config,
            kubeconfig,
            ns,
            identity,
            &addr_file,
            ("3s", "2s"),
        )
        .env("GUARD_API_TOKEN", TOKEN)
        .env("RUST_LOG", "info,kube=warn,hyper=warn")
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).expect("log file"))
        .spawn()
        .expect("spawn guard controller");
        Controller {
            child,
            log,
            addr_file,
        }
    }

    async fn address(&self) -> String {
        eventually(WAIT, "the controller to listen", || async {
            std::fs::read_to_string(&self.addr_file)
                .ok()
                .filter(|s| !s.is_empty())
        })
        .await
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Controller {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            eprintln!(
                "---- {} ----\n{}",
                self.log.display(),
                std::fs::read_to_string(&self.log).unwrap_or_default()
            );
        }
    }
}

/// One service of guard.yaml: `replicas` of `name`, rolled out by
/// `strategy`, watched `watch` after a promote, judged on availability read
/// from the Prometheus double.
fn service_yaml(name: &str, strategy: &str, replicas: i32, watch: &str, ns: &str) -> String {
    format!(
        r#"  - name: {name}
    replicas: {replicas}
    strategy: {strategy}
    canary_steps: [25, 50]
    watch: {watch}
    build:
      image: "{IMAGE}-{name}:{{build}}"
    environments:
      - name: production
        namespace: {ns}
    slos:
      - name: availability
        objective: 99.9
        sli: {{type: availability, route: /}}
        prometheus:
          total: ultra_boost_http_requests_total{{job="ultra-boost",route="/"}}
          bad: ultra_boost_http_requests_total{{job="ultra-boost",route="/",code=~"5.."}}
"#
    )
}

/// guard.yaml with `policy` (YAML lines) and `services` (from [`service_yaml`]).
fn guard_yaml(dir: &Path, prom: std::net::SocketAddr, policy: &str, services: &str) -> String {
    format!(
        "store: {store}\napi:\n  listen: 127.0.0.1:0\nengine:\n  tick: 200ms\n  stale_after: 5s\npolicy:\n{policy}\
         signals:\n  source: prometheus\n  prometheus:\n    url: http://{prom}\n    build_label: build\n    timeout: 1s\n\
         services:\n{services}",
        store = dir.join("guard.sqlite").display(),
    )
}

/// guard.yaml for one replica. `decides: false` gives a judge that needs an
/// hour to promote and evidence for minutes to revert: that replica is
/// surely still verifying when the test kills it, however loaded the machine.
fn config(dir: &Path, prom: std::net::SocketAddr, ns: &str, decides: bool) -> String {
    let policy = if decides {
        "  min_verify_seconds: 1\n  max_verify_seconds: 60\n"
    } else {
        "  min_verify_seconds: 3000\n  max_verify_seconds: 3600\n  evidence_cap_per_second: 0.001\n"
    };
    let services: String = ROLLOUTS
        .iter()
        .map(|(name, strategy, _, replicas)| service_yaml(name, strategy, *replicas, "1s", ns))
        .collect();
    guard_yaml(dir, prom, policy, &services)
}

fn state(d: &Deployment) -> Option<RolloutState> {
    RolloutState::read(d).ok().flatten()
}

fn image_of(d: &Deployment) -> Option<String> {
    d.spec.template.spec.as_ref()?.containers[0].image.clone()
}

async fn leader(http: &reqwest::Client, addr: &str) -> Option<(String, bool)> {
    let v: Value = http
        .get(format!("http://{addr}/-/leader"))
        .send()
        .await
        .ok()?
        .json()
        .await
        .ok()?;
    Some((v["identity"].as_str()?.to_string(), v["leading"].as_bool()?))
}

/// Starts guard-a, waits until it leads, then starts guard-b (a follower).
/// Returns each with its API address.
async fn start_pair(
    homes: &BTreeMap<&str, (PathBuf, PathBuf)>,
    kubeconfig: &Path,
    ns: &str,
    http: &reqwest::Client,
) -> ((Controller, String), (Controller, String)) {
    let (home_a, config_a) = &homes["guard-a"];
    let a = Controller::spawn(home_a, "guard-a", config_a, kubeconfig, ns);
    let addr_a = a.address().await;
    eventually(WAIT, "guard-a to lead", || async {
        (leader(http, &addr_a).await? == ("guard-a".into(), true)).then_some(())
    })
    .await;
    let (home_b, config_b) = &homes["guard-b"];
    let b = Controller::spawn(home_b, "guard-b", config_b, kubeconfig, ns);
    let addr_b = b.address().await;
    ((a, addr_a), (b, addr_b))
}

/// `POST /api/v1/deployments` on `addr`: build `build` of `service`; the new rollout's id.
async fn deploy(http: &reqwest::Client, addr: &str, service: &str, build: &str) -> i64 {
    let resp = http
        .post(format!("http://{addr}/api/v1/deployments"))
        .bearer_auth(TOKEN)
        .json(&json!({"service": service, "environment": "production", "build": build, "requested_by": "ci"}))
        .send()
        .await
        .expect("post deployment");
    assert_eq!(resp.status().as_u16(), 201, "deploy {service}");
    let created: Value = resp.json().await.expect("json");
    created["id"].as_i64().expect("rollout id")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kube_new_leader_takes_over_engine_rollouts_in_flight_and_finishes_them_once() {
    if kube_env::real_cluster() {
        return; // The binary would need the cluster's Prometheus; double only.
    }
    let cluster = TestCluster::start("takeover").await;
    let double = cluster.double.as_ref().expect("double");
    let prom = PrometheusApiDouble::start(2000.0, 0.2).await;
    prom.run_build("1");
    for (_, _, build, _) in ROLLOUTS {
        prom.run_build(build);
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let kubeconfig = kube_env::write_kubeconfig(dir.path(), &double.url());
    let ns = cluster.namespace.clone();
    let mut configs = BTreeMap::new();
    for (identity, decides) in [("guard-a", false), ("guard-b", true)] {
        let home = dir.path().join(identity);
        std::fs::create_dir_all(&home).expect("replica dir");
        let path = home.join("guard.yaml");
        std::fs::write(&path, config(&home, prom.addr, &ns, decides)).expect("guard.yaml");
        configs.insert(identity, (home, path));
    }
    let deployments = cluster.deployments();
    for (name, _, _, replicas) in ROLLOUTS {
        deployments
            .create(
                &kube::api::PostParams::default(),
                &deployment(name, "1", replicas),
            )
            .await
            .expect("create");
    }

    // guard-a leads; guard-b follows.
    let http = reqwest::Client::new();
    let ((a, addr_a), (b, addr_b)) = start_pair(&configs, &kubeconfig, &ns, &http).await;
    let (home_a, config_a) = &configs["guard-a"];
    assert_eq!(
        leader(&http, &addr_b).await,
        Some(("guard-b".into(), false))
    );

    // Four rollouts through guard-a's deploy API.
    let mut ids = BTreeMap::new();
    for (name, _, build, _) in ROLLOUTS {
        ids.insert(name, deploy(&http, &addr_a, name, build).await);
    }
    // Each is verifying under guard-a's engine, its candidate up and recorded.
    let mut before = BTreeMap::new();
    for (name, strategy, build, _) in ROLLOUTS {
        let s = eventually(
            WAIT,
            &format!("guard-a's engine verifying {name}"),
            || async {
                let s = state(&deployments.get(name).await.ok()?)?;
                (s.phase == Phase::Verifying
                    && s.candidate.build == build
                    && s.candidate.hash.is_some()
                    && s.by.as_deref() == Some("engine:guard-a"))
                .then_some(s)
            },
        )
        .await;
        let want = if strategy == "canary" {
            Strategy::Canary
        } else {
            Strategy::Rolling
        };
        assert_eq!(s.strategy, want, "{name}");
        before.insert(name, s);
    }
    assert!(
        deployments
            .get_opt("canary-bad-canary")
            .await
            .expect("get")
            .is_some(),
        "the bad canary runs beside its stable Deployment"
    );

    // The leader dies mid-verification: SIGKILL, the Lease is not released.
    let killed_at = jiff::Timestamp::now();
    let killed = Instant::now();
    drop(a);

    eventually(WAIT, "guard-b to take the Lease", || async {
        leader(&http, &addr_b).await.filter(|l| l.1).map(|_| ())
    })
    .await;
    assert!(
        killed.elapsed() >= LEASE - Duration::from_millis(1500),
        "guard-b led {:?} after the kill, before the Lease could expire",
        killed.elapsed()
    );
    // Finished: a terminal phase, no canary left, and a promoted candidate
    // recorded with the ReplicaSet of the Deployment that now runs it.
    let replica_sets: kube::Api<ReplicaSet> = kube::Api::namespaced(cluster.client.clone(), &ns);
    let mut done = BTreeMap::new();
    for (name, _, _, _) in ROLLOUTS {
        let d = eventually(WAIT, &format!("guard-b to finish {name}"), || async {
            let d = deployments.get(name).await.ok()?;
            let s = state(&d).filter(|s| s.phase.is_terminal())?;
            if deployments
                .get_opt(&format!("{name}-canary"))
                .await
                .ok()?
                .is_some()
            {
                return None;
            }
            if s.phase == Phase::Promoted {
                let owned = replica_sets.list(&Default::default()).await.ok()?;
                let recorded = owned
                    .items
                    .iter()
                    .find(|rs| rs.labels().get("pod-template-hash") == s.candidate.hash.as_ref())?;
                let owner = recorded.owner_references().first()?.name.clone();
                (owner == name).then_some(())?;
            }
            Some(d)
        })
        .await;
        done.insert(name, d);
    }

    for (name, strategy, build, replicas) in ROLLOUTS {
        let d = &done[name];
        let s = state(d).expect("state");
        let a = d.annotations();
        let want = if build.contains("bad") {
            Phase::Reverted
        } else {
            Phase::Promoted
        };
        assert_eq!(
            (s.phase, s.by.as_deref(), s.candidate.build.as_str()),
            (want, Some("guard-b"), build),
            "{name}: {s:?}"
        );
        assert_eq!(
            s.started_at, before[name].started_at,
            "{name}: resumed, not restarted"
        );
        assert_eq!(
            a.get(ANNOTATION_TAKEN_OVER_BY).map(String::as_str),
            Some("guard-b"),
            "{name}"
        );
        assert_eq!(
            a.get(ANNOTATION_TAKEN_OVER_FROM).map(String::as_str),
            Some("guard-a"),
            "{name}"
        );
        let at: jiff::Timestamp = a
            .get(ANNOTATION_TAKEN_OVER_AT)
            .expect("taken-over-at")
            .parse()
            .expect("RFC 3339");
        assert!(
            at > killed_at,
            "{name}: taken over at {at}, killed at {killed_at}"
        );
        let stable_image = "registry.k8s.io/pause:1".to_string();
        let candidate_image = format!("{IMAGE}-{name}:{build}");
        if want == Phase::Reverted {
            assert_eq!(
                a.get(ANNOTATION_REVERTED_BY).map(String::as_str),
                Some("guard-b"),
                "{name}"
            );
            assert_eq!(image_of(d), Some(stable_image), "{name}: back on build 1");
        } else {
            assert_eq!(image_of(d), Some(candidate_image), "{name}: promoted");
            assert_eq!(a.get(ANNOTATION_REVERTED_BY), None, "{name}");
        }
        if strategy == "canary" {
            assert!(
                deployments
                    .get_opt(&format!("{name}-canary"))
                    .await
                    .expect("get canary")
                    .is_none(),
                "{name}: the canary Deployment is gone"
            );
            assert_eq!(
                d.spec.replicas,
                Some(replicas),
                "{name}: stable size restored"
            );
        }
    }
    assert!(prom.queries() > 0);

    // Exactly once: more passes of guard-b's controller change nothing.
    tokio::time::sleep(Duration::from_secs(1)).await;
    for (name, _, _, _) in ROLLOUTS {
        let d = deployments.get(name).await.expect("get");
        assert_eq!(
            state(&d),
            state(&done[name]),
            "{name} changed after it was finished"
        );
        assert_eq!(
            d.annotations().get(ANNOTATION_TAKEN_OVER_AT),
            done[name].annotations().get(ANNOTATION_TAKEN_OVER_AT),
            "{name} taken over twice"
        );
    }
    let log = b.log();
    assert_eq!(
        log.matches("took over a rollout in flight").count(),
        ROLLOUTS.len(),
        "one take-over per rollout, logged:\n{log}"
    );

    // guard-a comes back (same identity, same store) and leads again once
    // guard-b is gone: its store still holds the four rollouts as unfinished,
    // but guard-b took them over, so guard-a closes them instead of resuming
    // them (resuming would shift the bad builds back in).
    drop(b);
    let a = Controller::spawn(home_a, "guard-a", config_a, &kubeconfig, &ns);
    let addr_a = a.address().await;
    eventually(WAIT, "guard-a to lead again", || async {
        (leader(&http, &addr_a).await? == ("guard-a".into(), true)).then_some(())
    })
    .await;
    for (name, id) in &ids {
        let v: Value = eventually(WAIT, &format!("guard-a to close {name}"), || async {
            let v: Value = http
                .get(format!("http://{addr_a}/api/v1/rollouts/{id}"))
                .bearer_auth(TOKEN)
                .send()
                .await
                .ok()?
                .json()
                .await
                .ok()?;
            (v["state"] != "verifying").then_some(v)
        })
        .await;
        let last = v["steps"]
            .as_array()
            .and_then(|s| s.last())
            .cloned()
            .unwrap_or_default();
        assert_eq!(
            (v["state"].as_str(), last["cause"].as_str()),
            (Some("aborted"), Some("taken_over")),
            "{name}: {v}"
        );
        assert!(
            last["detail"]
                .as_str()
                .is_some_and(|d| d.contains("guard-b")),
            "{name}: {last}"
        );
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    for (name, _, _, _) in ROLLOUTS {
        let d = deployments.get(name).await.expect("get");
        assert_eq!(
            (state(&d), image_of(&d)),
            (state(&done[name]), image_of(&done[name])),
            "{name}: touched by the returning replica"
        );
    }
    let log = a.log();
    assert_eq!(
        log.matches("closed instead of resumed").count(),
        ROLLOUTS.len(),
        "{log}"
    );
    assert!(
        !log.contains("resuming rollout recorded before the restart"),
        "{log}"
    );
    drop(a);
    cluster.cleanup().await;
}

/// The take-over never fights a newer rollout: guard-a's engine was verifying
/// build 2-bad when it died, and before any replica took it over someone
/// rolled build 3 by hand. guard-b's controller takes the rollout over (once)
/// and then verifies build 3 against build 1, the last good build, and
/// promotes it; build 2-bad is never reverted over build 3.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kube_take_over_does_not_fight_a_newer_rollout() {
    use guard::platform::kubernetes::controller::{Controller, ControllerSettings};
    use guard::platform::kubernetes::{KubeSettings, KubernetesPlatform};
    use guard::platform::{Build, Platform, Target};
    use std::sync::Arc;

    if kube_env::real_cluster() {
        return; // pause:2-bad is no image a real cluster can pull; the shift would wait for it.
    }
    let cluster = TestCluster::start("takeover-newer").await;
    let deployments = cluster.deployments();
    deployments
        .create(
            &kube::api::PostParams::default(),
            &deployment("web", "1", 1),
        )
        .await
        .expect("create");
    let build = |n: &str| Build {
        number: n.into(),
        commit: None,
        image: Some(kube_env::image(n)),
        command: vec![],
        env: Default::default(),
    };
    // guard-a's engine shifts build 2-bad in, then guard-a is gone.
    let platform_a = KubernetesPlatform::new(
        cluster.client.clone(),
        KubeSettings {
            identity: "guard-a".into(),
            ..KubeSettings::default()
        },
    );
    let target = Target {
        service: "web".into(),
        environment: cluster.namespace.clone(),
    };
    platform_a
        .shift(
            &target,
            &build("1"),
            &build("2-bad"),
            Strategy::Rolling,
            1.0,
        )
        .await
        .expect("engine shift");
    let s = state(&deployments.get("web").await.expect("get")).expect("state");
    assert_eq!(
        (s.phase, s.by.as_deref(), s.candidate.build.as_str()),
        (Phase::Verifying, Some("engine:guard-a"), "2-bad")
    );
    // A person rolls build 3 before the next leader acts.
    kube_env::roll_to(&cluster, "web", "3").await;

    let controller = Controller::new(
        KubernetesPlatform::new(
            cluster.client.clone(),
            KubeSettings {
                identity: "guard-b".into(),
                ..KubeSettings::default()
            },
        ),
        Arc::new(kube_env::SyntheticSignals::new(2000.0, 0.2)),
        Arc::new(kube_env::test_verifier()),
        ControllerSettings {
            namespace: Some(cluster.namespace.clone()),
            interval: Duration::from_millis(200),
            verify_deadline: Duration::from_secs(60),
            ..ControllerSettings::default()
        },
        None,
    );
    let (_leading_tx, leading) = tokio::sync::watch::channel(true);
    let stop = tokio_util::sync::CancellationToken::new();
    let run_stop = stop.clone();
    let task = tokio::spawn(async move { controller.run(leading, run_stop).await });

    let d = eventually(WAIT, "guard-b to finish build 3", || async {
        let d = deployments.get("web").await.ok()?;
        state(&d)
            .filter(|s| s.candidate.build == "3" && s.phase.is_terminal())
            .map(|_| d)
    })
    .await;
    let s = state(&d).expect("state");
    assert_eq!(
        (
            s.phase,
            s.by.as_deref(),
            s.stable.as_ref().map(|b| b.build.as_str())
        ),
        (Phase::Promoted, Some("guard-b"), Some("1")),
        "{s:?}"
    );
    assert_eq!(
        image_of(&d),
        Some(kube_env::image("3")),
        "build 3 still runs"
    );
    let a = d.annotations();
    assert_eq!(
        (
            a.get(ANNOTATION_TAKEN_OVER_BY).map(String::as_str),
            a.get(ANNOTATION_TAKEN_OVER_FROM).map(String::as_str),
            a.get(ANNOTATION_REVERTED_BY)
        ),
        (Some("guard-b"), Some("guard-a"), None)
    );
    stop.cancel();
    let _ = task.await;
    cluster.cleanup().await;
}

/// guard.yaml for the watch take-over: two rolling services whose releases
/// guard-a's engine promotes quickly, then watches for 20 s and 60 s.
fn watch_config(dir: &Path, prom: std::net::SocketAddr, ns: &str) -> String {
    let services = service_yaml("watch-good", "rolling", 1, "20s", ns)
        + &service_yaml("watch-sour", "rolling", 1, "60s", ns);
    guard_yaml(
        dir,
        prom,
        "  min_verify_seconds: 1\n  max_verify_seconds: 60\n",
        &services,
    )
}

/// The leader dies during the watch that follows its engine's promote: the
/// next leader takes the watch over from the Deployment's state (until the
/// promote time plus guard.yaml's `watch`), reverts a release that goes bad
/// during it, and lets a good one stay once it is over.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kube_new_leader_takes_over_the_watch_after_a_promote() {
    if kube_env::real_cluster() {
        return; // The binary would need the cluster's Prometheus; double only.
    }
    let cluster = TestCluster::start("watch").await;
    let double = cluster.double.as_ref().expect("double");
    let prom = PrometheusApiDouble::start(2000.0, 0.2).await;
    for build in ["1", "6", "7"] {
        prom.run_build(build);
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let kubeconfig = kube_env::write_kubeconfig(dir.path(), &double.url());
    let ns = cluster.namespace.clone();
    let mut homes = BTreeMap::new();
    for identity in ["guard-a", "guard-b"] {
        let home = dir.path().join(identity);
        std::fs::create_dir_all(&home).expect("replica dir");
        let path = home.join("guard.yaml");
        std::fs::write(&path, watch_config(&home, prom.addr, &ns)).expect("guard.yaml");
        homes.insert(identity, (home, path));
    }
    let deployments = cluster.deployments();
    for name in ["watch-good", "watch-sour"] {
        deployments
            .create(&kube::api::PostParams::default(), &deployment(name, "1", 1))
            .await
            .expect("create");
    }
    let http = reqwest::Client::new();
    let ((a, addr_a), (b, addr_b)) = start_pair(&homes, &kubeconfig, &ns, &http).await;
    for (name, build) in [("watch-good", "6"), ("watch-sour", "7")] {
        deploy(&http, &addr_a, name, build).await;
    }
    // guard-a's engine promotes both and watches them.
    let mut promoted = BTreeMap::new();
    for (name, build) in [("watch-good", "6"), ("watch-sour", "7")] {
        let s = eventually(WAIT, &format!("guard-a to promote {name}"), || async {
            let s = state(&deployments.get(name).await.ok()?)?;
            (s.phase == Phase::Promoted && s.candidate.build == build).then_some(s)
        })
        .await;
        assert_eq!(s.by.as_deref(), Some("engine:guard-a"), "{name}: {s:?}");
        assert_eq!(s.watch_until, None);
        promoted.insert(name, s);
    }

    // The leader dies during the watch; then build 7 goes bad.
    drop(a);
    prom.turn_bad("7");
    eventually(WAIT, "guard-b to take the Lease", || async {
        leader(&http, &addr_b).await.filter(|l| l.1).map(|_| ())
    })
    .await;

    // Build 7 is reverted by guard-b within its watch.
    let sour = eventually(
        Duration::from_secs(60),
        "guard-b to revert watch-sour",
        || async {
            let d = deployments.get("watch-sour").await.ok()?;
            (state(&d)?.phase == Phase::Reverted).then_some(d)
        },
    )
    .await;
    let s = state(&sour).expect("state");
    assert_eq!(s.by.as_deref(), Some("guard-b"), "{s:?}");
    assert!(
        s.reason
            .as_deref()
            .is_some_and(|r| r.contains("after promotion")),
        "{s:?}"
    );
    assert_eq!(
        image_of(&sour).as_deref(),
        Some("registry.k8s.io/pause:1"),
        "back on build 1"
    );
    let a_sour = sour.annotations();
    assert_eq!(
        a_sour.get(ANNOTATION_REVERTED_BY).map(String::as_str),
        Some("guard-b")
    );
    assert_eq!(
        a_sour.get(ANNOTATION_TAKEN_OVER_FROM).map(String::as_str),
        Some("guard-a")
    );

    // Build 6 was watched by guard-b until the promote time plus 20 s, then stays.
    let good = deployments.get("watch-good").await.expect("get");
    let s = state(&good).expect("state");
    let until = promoted["watch-good"]
        .updated_at
        .checked_add(jiff::SignedDuration::from_secs(20))
        .expect("until");
    assert_eq!(
        (s.phase, s.by.as_deref(), s.watch_until),
        (Phase::Promoted, Some("guard-b"), Some(until)),
        "{s:?}"
    );
    let over = eventually(
        Duration::from_secs(40),
        "the watch of watch-good to end",
        || async {
            let d = deployments.get("watch-good").await.ok()?;
            state(&d)
                .filter(|s| s.watch_until.is_none())
                .map(|s| (d, s))
        },
    )
    .await;
    assert!(jiff::Timestamp::now() >= until, "the watch ended early");
    assert_eq!(over.1.phase, Phase::Promoted);
    assert_eq!(
        image_of(&over.0),
        Some(format!("{IMAGE}-watch-good:6")),
        "the good build stays"
    );
    assert_eq!(over.0.annotations().get(ANNOTATION_REVERTED_BY), None);
    let log = b.log();
    assert_eq!(
        log.matches("took over the post-promote watch").count(),
        2,
        "one take-over per watch, logged:\n{log}"
    );
}
