//! Where the kube_* and review_* tests run: against [`KubeApiDouble`] by
//! default, or against a real cluster when `GUARD_TEST_REAL_CLUSTER=1` and
//! `KUBECONFIG` points to one (each test then works in its own namespace
//! `gt-<test>-<random>`, deleted at the end; the cluster needs the Gateway API
//! CRDs for the canary test, and Deployments use the `registry.k8s.io/pause`
//! image so pods can start anywhere).
//!
//! Also: a Deployment builder, polling with a deadline, and a signal source
//! double ([`SyntheticSignals`]) that feeds the judge counts per build.
#![allow(dead_code)]

use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use guard::platform::{BoxFuture, Endpoint, Target};
use guard::signals::{Counts, ReleaseSignals, SignalError, SignalSource, Snapshot};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::Namespace;
use kube::api::{Api, DeleteParams, PostParams};
use serde_json::json;

use super::kube_double::KubeApiDouble;

/// A cluster for one test.
pub struct TestCluster {
    pub client: kube::Client,
    pub double: Option<KubeApiDouble>,
    pub namespace: String,
}

/// Whether the tests target a real cluster.
pub fn real_cluster() -> bool {
    std::env::var("GUARD_TEST_REAL_CLUSTER").as_deref() == Ok("1")
        && std::env::var_os("KUBECONFIG").is_some()
}

impl TestCluster {
    pub async fn start(test: &str) -> Self {
        Self::start_with(test, true).await
    }

    /// `gateway_api: false` makes the double refuse HTTPRoutes (a real
    /// cluster is used as it is).
    pub async fn start_with(test: &str, gateway_api: bool) -> Self {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let (client, double) = if real_cluster() {
            (
                kube::Client::try_default()
                    .await
                    .expect("client from KUBECONFIG"),
                None,
            )
        } else {
            let d = KubeApiDouble::start_with(gateway_api).await;
            (d.client(), Some(d))
        };
        let suffix = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.subsec_nanos() % 100_000)
            .unwrap_or(0);
        let namespace = format!("gt-{test}-{suffix}");
        let api: Api<Namespace> = Api::all(client.clone());
        let ns: Namespace =
            serde_json::from_value(json!({"metadata": {"name": namespace}})).expect("namespace");
        api.create(&PostParams::default(), &ns)
            .await
            .expect("create test namespace");
        TestCluster {
            client,
            double,
            namespace,
        }
    }

    pub fn deployments(&self) -> Api<Deployment> {
        Api::namespaced(self.client.clone(), &self.namespace)
    }

    /// Deletes the test namespace (matters on a real cluster).
    pub async fn cleanup(self) {
        let api: Api<Namespace> = Api::all(self.client.clone());
        let _ = api.delete(&self.namespace, &DeleteParams::default()).await;
    }
}

/// The image of build `b` (`pause` tags, so a real cluster can run them).
pub fn image(build: &str) -> String {
    format!("registry.k8s.io/pause:{build}")
}

/// Build `n` as `guard deploy` hands it to the platform: image [`image`]`(n)`.
pub fn build(n: &str) -> guard::platform::Build {
    guard::platform::Build {
        number: n.into(),
        commit: None,
        image: Some(image(n)),
        command: vec![],
        env: BTreeMap::new(),
    }
}

/// Service `web` in environment `production` (the test's namespace on
/// [`engine_platform`]).
pub fn web_in_production() -> Target {
    Target {
        service: "web".into(),
        environment: "production".into(),
    }
}

/// The platform as the rollout engine of guard replica `identity` drives it:
/// environment `production` is the test's namespace.
pub fn engine_platform(
    cluster: &TestCluster,
    identity: &str,
) -> guard::platform::kubernetes::KubernetesPlatform {
    guard::platform::kubernetes::KubernetesPlatform::new(
        cluster.client.clone(),
        guard::platform::kubernetes::KubeSettings {
            identity: identity.into(),
            ready_timeout: Duration::from_secs(60),
            namespaces: BTreeMap::from([("production".to_string(), cluster.namespace.clone())]),
            ..Default::default()
        },
    )
}

/// A guarded Deployment `name` running build `build` (annotation + image),
/// following the label conventions of `deploy/kustomize/base`.
pub fn deployment(name: &str, build: &str, replicas: i32) -> Deployment {
    serde_json::from_value(json!({
        "metadata": {"name": name, "labels": {"guard.ultra-boost.dev/enabled": "true"}},
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": {"app": name, "guard.ultra-boost.dev/track": "stable"}},
            "template": {
                "metadata": {
                    "labels": {"app": name, "guard.ultra-boost.dev/track": "stable"},
                    "annotations": {"guard.ultra-boost.dev/build": build},
                },
                "spec": {"containers": [{"name": "web", "image": image(build),
                    "ports": [{"containerPort": 8080, "name": "http"}]}]},
            },
        },
    }))
    .expect("deployment")
}

/// `kubectl set image` + build annotation: a new pod template, a new rollout.
pub async fn roll_to(cluster: &TestCluster, name: &str, build: &str) {
    let api = cluster.deployments();
    for _ in 0..10 {
        let mut d = api.get(name).await.expect("get deployment");
        let t = &mut d.spec.template;
        t.metadata
            .get_or_insert_with(Default::default)
            .annotations
            .get_or_insert_with(BTreeMap::new)
            .insert("guard.ultra-boost.dev/build".into(), build.into());
        t.spec.as_mut().expect("pod spec").containers[0].image = Some(image(build));
        match api.replace(name, &PostParams::default(), &d).await {
            Ok(_) => return,
            Err(kube::Error::Api(s)) if s.code == 409 => continue,
            Err(e) => panic!("roll {name} to {build}: {e}"),
        }
    }
    panic!("roll {name} to {build}: kept conflicting");
}

/// Polls `f` until it returns `Some`, or panics with `what` after `timeout`.
pub async fn eventually<T, F, Fut>(timeout: Duration, what: &str, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f().await {
            return v;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {timeout:?} waiting for: {what}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The next event, or a panic after 30 s (tests stay bounded in time).
pub async fn next_event(
    rx: &mut tokio::sync::mpsc::UnboundedReceiver<notify::Event>,
    what: &str,
) -> notify::Event {
    match tokio::time::timeout(Duration::from_secs(30), rx.recv()).await {
        Ok(Some(ev)) => ev,
        Ok(None) => panic!("event channel closed before {what}"),
        Err(_) => panic!("timed out after 30 s waiting for the {what} event"),
    }
}

/// A signal source double: every build seen in the endpoints serves `rps`
/// requests per second from the moment it is first seen; builds whose name
/// contains `bad` fail `bad_ratio` of them, others none (until
/// [`SyntheticSignals::turn_bad`]). Counts are a pure function of elapsed
/// time, so runs are deterministic up to timing.
pub struct SyntheticSignals {
    pub rps: f64,
    pub bad_ratio: f64,
    first_seen: Mutex<HashMap<String, Instant>>,
    turned_bad: Mutex<HashMap<String, Instant>>,
}

impl SyntheticSignals {
    pub fn new(rps: f64, bad_ratio: f64) -> Self {
        SyntheticSignals {
            rps,
            bad_ratio,
            first_seen: Mutex::new(HashMap::new()),
            turned_bad: Mutex::new(HashMap::new()),
        }
    }

    /// From now on `build` fails `bad_ratio` of its requests too.
    pub fn turn_bad(&self, build: &str) {
        self.turned_bad
            .lock()
            .expect("lock")
            .insert(build.to_string(), Instant::now());
    }
}

impl SignalSource for SyntheticSignals {
    fn snapshot<'a>(
        &'a self,
        _target: &'a Target,
        endpoints: &'a [Endpoint],
    ) -> BoxFuture<'a, Result<Snapshot, SignalError>> {
        Box::pin(async move {
            let mut seen = self.first_seen.lock().expect("lock");
            let mut releases: Vec<ReleaseSignals> = Vec::new();
            for e in endpoints {
                if releases.iter().any(|r| r.build == e.build) {
                    continue;
                }
                let since = *seen.entry(e.build.clone()).or_insert_with(Instant::now);
                let total = (since.elapsed().as_secs_f64() * self.rps) as u64;
                let turned = self.turned_bad.lock().expect("lock").get(&e.build).copied();
                let bad = if e.build.contains("bad") {
                    (total as f64 * self.bad_ratio) as u64
                } else if let Some(t) = turned {
                    ((t.elapsed().as_secs_f64() * self.rps * self.bad_ratio) as u64).min(total)
                } else {
                    0
                };
                releases.push(ReleaseSignals {
                    role: e.role,
                    build: e.build.clone(),
                    by_slo: BTreeMap::from([(
                        "availability".to_string(),
                        Counts {
                            good: total - bad,
                            total,
                        },
                    )]),
                });
            }
            Ok(Snapshot {
                releases,
                staleness_seconds: Some(0.0),
                last_error: None,
            })
        })
    }
}

/// A judge policy fit for tests: short minimum verification, default statistics.
pub fn test_verifier() -> guard::platform::kubernetes::verify::JudgeVerifier {
    guard::platform::kubernetes::verify::JudgeVerifier {
        policy: judge::Policy {
            min_verify_seconds: 1.0,
            max_verify_seconds: 60.0,
            ..judge::Policy::default()
        },
        slos: vec![judge::SloSpec::availability("availability", 0.999)],
    }
}

/// The same judge, but one that needs many seconds of evidence to revert
/// (a tenth of the default evidence cap per second): for a replica that must
/// still be verifying when the test kills it.
pub fn slow_verifier() -> guard::platform::kubernetes::verify::JudgeVerifier {
    let mut v = test_verifier();
    v.policy.evidence_cap_per_second = Some(v.policy.evidence_cap() / 10.0);
    v
}

/// A kubeconfig in `dir` pointing at the API server (or double) at `server`.
pub fn write_kubeconfig(dir: &std::path::Path, server: &str) -> std::path::PathBuf {
    let path = dir.join("kubeconfig");
    std::fs::write(
        &path,
        format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: double\n  cluster:\n    server: {server}\nusers:\n- name: u\n  user: {{}}\ncontexts:\n- name: c\n  context:\n    cluster: double\n    user: u\n    namespace: default\ncurrent-context: c\n"
        ),
    )
    .expect("kubeconfig");
    path
}

/// The real `guard controller` as replica `identity` of namespace `ns`,
/// through `kubeconfig`, listening on an OS-chosen port written to
/// `address_file`, with a Lease of `lease` renewed within `renew` and
/// 200 ms retry and reconcile periods; no pod or webhook-secret variables
/// inherited. Callers add their own output, environment and flags.
pub fn controller_command(
    config: &std::path::Path,
    kubeconfig: &std::path::Path,
    ns: &str,
    identity: &str,
    address_file: &std::path::Path,
    (lease, renew): (&str, &str),
) -> std::process::Command {
    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_guard"));
    cmd.arg("controller")
        .arg("--config")
        .arg(config)
        .args(["--listen", "127.0.0.1:0", "--address-file"])
        .arg(address_file)
        .args(["--identity", identity, "--lease-namespace", ns])
        .args(["--namespace", ns])
        .args(["--lease-duration", lease, "--renew-deadline", renew])
        .args(["--retry-period", "200ms", "--interval", "200ms"])
        .env("KUBECONFIG", kubeconfig)
        .env_remove("POD_NAME")
        .env_remove("POD_NAMESPACE")
        .env_remove("GUARD_GITHUB_WEBHOOK_SECRET");
    cmd
}
