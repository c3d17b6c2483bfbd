//! The real `guard controller` binary against the `KubeApiDouble` through a
//! kubeconfig file: it takes the Lease, guards the labelled Deployment
//! (records its baseline), serves signed review webhooks (401 without a
//! signature), and on SIGTERM exits 0 and releases the Lease.

#[path = "support/kube_double.rs"]
mod kube_double;
#[path = "support/kube_env.rs"]
mod kube_env;

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use guard::platform::kubernetes::rollout::{Phase, RolloutState};
use guard::review::signature::sign;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::Namespace;
use kube::api::{Api, PostParams};
use kube_env::{TestCluster, deployment, eventually};
use serde_json::{Value, json};

const WAIT: Duration = Duration::from_secs(30);

struct Proc(Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn workspace() -> std::path::PathBuf {
    std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kube_guard_controller_process_leads_guards_serves_webhooks_and_releases() {
    if kube_env::real_cluster() {
        return; // The binary would act on the real cluster's whole namespace set of leases; double only.
    }
    let cluster = TestCluster::start("proc").await;
    let double = cluster.double.as_ref().expect("double");
    let dir = tempfile::tempdir().expect("tempdir");
    let kubeconfig = kube_env::write_kubeconfig(dir.path(), &double.url());
    // The cluster's guard.yaml, with local paths and no network beyond loopback.
    let config = std::fs::read_to_string(workspace().join("deploy/kustomize/guard/guard.yaml"))
        .expect("guard.yaml");
    let config = config
        .replace(
            "/var/lib/guard/guard.sqlite",
            &dir.path().join("guard.sqlite").display().to_string(),
        )
        .replace("0.0.0.0:8090", "127.0.0.1:0")
        .replace(
            "/var/run/secrets/guard/api/token",
            &dir.path().join("token").display().to_string(),
        )
        .replace(
            "http://prometheus-operated.monitoring.svc:9090",
            "http://127.0.0.1:9",
        );
    std::fs::write(dir.path().join("token"), "process-test-token\n").expect("token");
    let config_path = dir.path().join("guard.yaml");
    std::fs::write(&config_path, config).expect("write guard.yaml");
    let review = dir.path().join("review.yaml");
    let rendered = Command::new("kubectl")
        .arg("kustomize")
        .arg(workspace().join("deploy/kustomize/overlays/review"))
        .output()
        .expect("kubectl kustomize (is kubectl installed?)");
    assert!(
        rendered.status.success(),
        "{}",
        String::from_utf8_lossy(&rendered.stderr)
    );
    std::fs::write(&review, rendered.stdout).expect("review.yaml");

    cluster
        .deployments()
        .create(&PostParams::default(), &deployment("ultra-boost", "1", 1))
        .await
        .expect("create");
    let address_file = dir.path().join("addr");
    let child = kube_env::controller_command(
        &config_path,
        &kubeconfig,
        &cluster.namespace,
        "proc-a",
        &address_file,
        ("2s", "1500ms"),
    )
    .args([
        "--review-template",
        &review.display().to_string(),
        "--skip-image-check",
    ])
    .env("GUARD_GITHUB_WEBHOOK_SECRET", "s3cret")
    .stdout(Stdio::null())
    .stderr(Stdio::inherit())
    .spawn()
    .expect("spawn guard controller");
    let mut proc = Proc(child);
    let addr = eventually(WAIT, "the controller to listen", || async {
        std::fs::read_to_string(&address_file)
            .ok()
            .filter(|s| !s.is_empty())
    })
    .await;
    let http = reqwest::Client::new();
    let leader = eventually(WAIT, "the controller to lead", || async {
        let v: Value = http
            .get(format!("http://{addr}/-/leader"))
            .send()
            .await
            .ok()?
            .json()
            .await
            .ok()?;
        (v["leading"] == json!(true)).then_some(v)
    })
    .await;
    assert_eq!(leader["identity"], "proc-a");
    let leases: Api<Lease> = Api::namespaced(cluster.client.clone(), &cluster.namespace);
    let holder = |l: Lease| l.spec.and_then(|s| s.holder_identity);
    assert_eq!(
        holder(leases.get("guard-leader").await.expect("lease")).as_deref(),
        Some("proc-a")
    );
    let state = eventually(WAIT, "baseline recorded", || async {
        let d = cluster.deployments().get("ultra-boost").await.ok()?;
        RolloutState::read(&d).ok().flatten()
    })
    .await;
    assert_eq!(
        (state.phase, state.by.as_deref()),
        (Phase::Baseline, Some("proc-a"))
    );

    let url = format!("http://{addr}/api/v1/github/webhook");
    let body = serde_json::to_vec(
        &json!({"action": "opened", "number": 9, "pull_request": {"head": {"sha": "9999999"}}}),
    )
    .expect("json");
    let unsigned = http
        .post(&url)
        .header("x-github-event", "pull_request")
        .body(body.clone())
        .send()
        .await
        .expect("post");
    assert_eq!(unsigned.status().as_u16(), 401);
    let signed = http
        .post(&url)
        .header("x-github-event", "pull_request")
        .header("x-hub-signature-256", sign(b"s3cret", &body))
        .body(body)
        .send()
        .await
        .expect("post");
    assert_eq!(signed.status().as_u16(), 200);
    let namespaces: Api<Namespace> = Api::all(cluster.client.clone());
    assert!(
        namespaces
            .get_opt("ultra-boost-pr-9")
            .await
            .expect("get")
            .is_some()
    );

    // SIGTERM: exit 0 and the Lease is free for the next replica at once.
    let pid = i32::try_from(proc.0.id()).expect("pid");
    // SAFETY: kill(2) on the pid of our own child process; no memory is involved.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGTERM) }, 0);
    let status = eventually(WAIT, "the controller to exit", || {
        let s = proc.0.try_wait().expect("try_wait");
        async move { s }
    })
    .await;
    assert!(status.success(), "exit status {status:?}");
    assert_eq!(
        holder(leases.get("guard-leader").await.expect("lease")),
        None,
        "lease released on shutdown"
    );
    cluster.cleanup().await;
}
