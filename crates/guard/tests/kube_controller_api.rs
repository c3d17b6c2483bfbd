//! The real `guard controller` binary serves guard's deploy API in a cluster:
//! against the `KubeApiDouble` (through a kubeconfig) and a
//! `PrometheusApiDouble` (the PromQL HTTP API, `GET /api/v1/query`, answering
//! in the JSON format Prometheus documents), `POST /api/v1/deployments` with
//! the bearer token rolls the Deployment's template to the build's image
//! (rolling) or starts a `<name>-canary` Deployment (canary), the rollout is
//! readable at `/api/v1/rollouts/{id}`, the engine reads the candidate's
//! counters from Prometheus, requests without the token get 401, `/metrics`
//! answers, and a second replica that does not hold the Lease answers the API
//! with 503 + `Retry-After` and changes nothing.

#[path = "support/kube_double.rs"]
mod kube_double;
#[path = "support/kube_env.rs"]
mod kube_env;
#[path = "support/prometheus_api_double.rs"]
mod prometheus_api_double;

use std::path::Path;
use std::process::{Child, Stdio};
use std::time::Duration;

use kube_env::{TestCluster, deployment, eventually};
use prometheus_api_double::PrometheusApiDouble;
use serde_json::{Value, json};

const WAIT: Duration = Duration::from_secs(30);
const TOKEN: &str = "api-test-token";
const IMAGE: &str = "registry.example.com/ub";

struct Proc(Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Requests a second per build in the Prometheus double (every build is good).
const RPS: f64 = 400.0;

fn config(dir: &Path, prom: std::net::SocketAddr, namespace: &str) -> String {
    let slos = r#"
    slos:
      - name: availability
        objective: 99.9
        sli: {type: availability, route: /}
        prometheus:
          total: ultra_boost_http_requests_total{job="ultra-boost",route="/"}
          bad: ultra_boost_http_requests_total{job="ultra-boost",route="/",code=~"5.."}"#;
    format!(
        r#"store: {store}
api:
  listen: 127.0.0.1:0
engine:
  tick: 200ms
  stale_after: 5s
policy:
  min_verify_seconds: 1
  max_verify_seconds: 60
signals:
  source: prometheus
  prometheus:
    url: http://{prom}
    build_label: build
    timeout: 1s
services:
  - name: ultra-boost
    replicas: 1
    strategy: rolling
    watch: 1s
    build:
      image: "{IMAGE}:{{build}}"
    environments:
      - name: production
        namespace: {namespace}{slos}
  - name: web
    replicas: 1
    strategy: canary
    canary_steps: [25, 50]
    watch: 1s
    build:
      image: "{IMAGE}-web:{{build}}"
    environments:
      - name: production
        namespace: {namespace}{slos}
"#,
        store = dir.join("guard.sqlite").display(),
    )
}

fn spawn_controller(
    config: &Path,
    kubeconfig: &Path,
    namespace: &str,
    identity: &str,
    address_file: &Path,
) -> Proc {
    let child = kube_env::controller_command(
        config,
        kubeconfig,
        namespace,
        identity,
        address_file,
        ("3s", "2s"),
    )
    .env("GUARD_API_TOKEN", TOKEN)
    .stdout(Stdio::null())
    .stderr(Stdio::inherit())
    .spawn()
    .expect("spawn guard controller");
    Proc(child)
}

async fn address(file: &Path) -> String {
    eventually(WAIT, "the controller to listen", || async {
        std::fs::read_to_string(file).ok().filter(|s| !s.is_empty())
    })
    .await
}

fn template_image(d: &k8s_openapi::api::apps::v1::Deployment) -> Option<String> {
    d.spec.template.spec.as_ref()?.containers[0].image.clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kube_controller_serves_the_deploy_api_with_token_and_leader_only() {
    if kube_env::real_cluster() {
        return; // The binary would need the cluster's Prometheus; double only.
    }
    let cluster = TestCluster::start("api").await;
    let double = cluster.double.as_ref().expect("double");
    let prom = PrometheusApiDouble::start(RPS, 0.0).await;
    prom.run_build("1");
    let dir = tempfile::tempdir().expect("tempdir");
    let kubeconfig = kube_env::write_kubeconfig(dir.path(), &double.url());
    // Each replica its own store, as each pod has its own volume (guard
    // refuses a store another guard holds).
    let config_for = |replica: &str| {
        let home = dir.path().join(replica);
        std::fs::create_dir_all(&home).expect("replica dir");
        let path = home.join("guard.yaml");
        std::fs::write(&path, config(&home, prom.addr, &cluster.namespace)).expect("guard.yaml");
        path
    };
    let config_path = config_for("a");
    let deployments = cluster.deployments();
    for name in ["ultra-boost", "web"] {
        deployments
            .create(&kube::api::PostParams::default(), &deployment(name, "1", 1))
            .await
            .expect("create");
    }

    let leader_addr_file = dir.path().join("addr-a");
    let leader = spawn_controller(
        &config_path,
        &kubeconfig,
        &cluster.namespace,
        "api-a",
        &leader_addr_file,
    );
    let addr = address(&leader_addr_file).await;
    let http = reqwest::Client::new();
    eventually(WAIT, "the controller to lead", || async {
        let v: Value = http
            .get(format!("http://{addr}/-/leader"))
            .send()
            .await
            .ok()?
            .json()
            .await
            .ok()?;
        (v["leading"] == json!(true)).then_some(())
    })
    .await;
    // A second replica: not the leader, so it refuses the API and acts on nothing.
    let follower_addr_file = dir.path().join("addr-b");
    let follower_proc = spawn_controller(
        &config_for("b"),
        &kubeconfig,
        &cluster.namespace,
        "api-b",
        &follower_addr_file,
    );
    let follower = address(&follower_addr_file).await;

    let deploy = |build: &str, service: &str| json!({"service": service, "environment": "production", "build": build, "requested_by": "ci"});
    let url = format!("http://{addr}/api/v1/deployments");
    for token in [None, Some("wrong")] {
        let mut req = http.post(&url).json(&deploy("2", "ultra-boost"));
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        let resp = req.send().await.expect("post");
        assert_eq!(resp.status().as_u16(), 401, "token {token:?}");
    }
    let refused = http
        .post(format!("http://{follower}/api/v1/deployments"))
        .bearer_auth(TOKEN)
        .json(&deploy("2", "ultra-boost"))
        .send()
        .await
        .expect("post to follower");
    assert_eq!(refused.status().as_u16(), 503);
    assert_eq!(
        refused
            .headers()
            .get("retry-after")
            .and_then(|v| v.to_str().ok()),
        Some("1")
    );
    // A browser the Service sent to the follower gets a page, not JSON.
    let page = http
        .get(format!("http://{follower}/"))
        .bearer_auth(TOKEN)
        .send()
        .await
        .expect("get the follower's overview");
    assert_eq!(page.status().as_u16(), 503);
    assert_eq!(
        page.headers()
            .get("content-type")
            .and_then(|v| v.to_str().ok()),
        Some("text/html; charset=utf-8")
    );
    let page = page.text().await.expect("page");
    assert!(
        page.contains("This guard replica is not the leader") && page.contains("The leader is <b>"),
        "{page}"
    );
    let unknown = http
        .post(&url)
        .bearer_auth(TOKEN)
        .json(&json!({"service": "nope", "environment": "production", "build": "2"}))
        .send()
        .await
        .expect("post");
    assert_eq!(unknown.status().as_u16(), 404);
    // Nothing changed by the refused requests.
    let d = deployments.get("ultra-boost").await.expect("get");
    assert_eq!(
        template_image(&d).as_deref(),
        Some("registry.k8s.io/pause:1")
    );

    // Rolling: the template gets the build's image; the rollout is readable.
    let created: Value = http
        .post(&url)
        .bearer_auth(TOKEN)
        .json(&deploy("2", "ultra-boost"))
        .send()
        .await
        .expect("post")
        .json()
        .await
        .expect("json");
    let id = created["id"].as_i64().expect("rollout id");
    let want = format!("{IMAGE}:2");
    eventually(WAIT, "the Deployment's template to run build 2", || async {
        let d = deployments.get("ultra-boost").await.ok()?;
        (template_image(&d).as_deref() == Some(want.as_str())).then_some(())
    })
    .await;
    prom.run_build("2");
    let rollout: Value = http
        .get(format!("http://{addr}/api/v1/rollouts/{id}"))
        .bearer_auth(TOKEN)
        .send()
        .await
        .expect("get rollout")
        .json()
        .await
        .expect("json");
    assert_eq!(rollout["candidate"]["number"], "2", "{rollout}");
    assert_eq!(rollout["candidate"]["image"], want.as_str(), "{rollout}");
    assert_eq!(rollout["stable"]["number"], "1", "{rollout}");
    assert_eq!(rollout["requested_by"], "ci", "{rollout}");
    // Verified with Prometheus' counts (every request good): promoted.
    let done = eventually(WAIT, "the rolling release to be promoted", || async {
        let v: Value = http
            .get(format!("http://{addr}/api/v1/rollouts/{id}"))
            .bearer_auth(TOKEN)
            .send()
            .await
            .ok()?
            .json()
            .await
            .ok()?;
        matches!(v["state"].as_str(), Some("watching" | "promoted")).then_some(v)
    })
    .await;
    assert_ne!(done["verdict"], "revert", "{done}");
    assert!(prom.queries() > 0);

    // Canary: a `web-canary` Deployment with the build's image beside the stable one.
    let created: Value = http
        .post(&url)
        .bearer_auth(TOKEN)
        .json(&deploy("5", "web"))
        .send()
        .await
        .expect("post")
        .json()
        .await
        .expect("json");
    let canary_id = created["id"].as_i64().expect("rollout id");
    let want = format!("{IMAGE}-web:5");
    eventually(WAIT, "the web-canary Deployment with build 5", || async {
        let d = deployments.get_opt("web-canary").await.ok()??;
        (template_image(&d).as_deref() == Some(want.as_str())).then_some(())
    })
    .await;
    let stable = deployments.get("web").await.expect("get web");
    assert_eq!(
        template_image(&stable).as_deref(),
        Some("registry.k8s.io/pause:1"),
        "the stable Deployment is untouched while the canary runs"
    );
    let rollout: Value = http
        .get(format!("http://{addr}/api/v1/rollouts/{canary_id}"))
        .bearer_auth(TOKEN)
        .send()
        .await
        .expect("get rollout")
        .json()
        .await
        .expect("json");
    assert_eq!(rollout["strategy"], "canary", "{rollout}");
    assert_eq!(rollout["candidate"]["number"], "5", "{rollout}");

    // guard's own metrics, without a token.
    let metrics = http
        .get(format!("http://{addr}/metrics"))
        .send()
        .await
        .expect("metrics");
    assert_eq!(metrics.status().as_u16(), 200);
    assert!(
        metrics.text().await.expect("text").contains("guard_"),
        "guard's metrics"
    );
    // The follower never touched either Deployment or started a rollout.
    let listed = http
        .get(format!("http://{follower}/api/v1/rollouts"))
        .bearer_auth(TOKEN)
        .send()
        .await
        .expect("list on follower");
    assert_eq!(listed.status().as_u16(), 503);
    drop((leader, follower_proc));
    cluster.cleanup().await;
}
