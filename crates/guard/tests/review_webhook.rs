//! Review environments from GitHub `pull_request` webhooks, over real HTTP:
//! signed `opened` applies the rendered review overlay once the image exists
//! (a registry double answers `HEAD /v2/<name>/manifests/pr-N`), `synchronize`
//! re-applies once a new image is pushed, `closed` deletes the namespace (only
//! a guard-owned one), the TTL sweep removes quiet ones, and unsigned or
//! wrongly signed requests get 401 and change nothing.
//!
//! Needs `kubectl` (for `kubectl kustomize`) to render the overlay as CI does.

#[path = "support/kube_double.rs"]
mod kube_double;
#[path = "support/kube_env.rs"]
mod kube_env;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::IntoResponse;
use guard::review::image::RegistryCheck;
use guard::review::signature::sign;
use guard::review::template::{
    ANNOTATION_HEAD_SHA, ANNOTATION_IMAGE_DIGEST, ANNOTATION_LAST_ACTIVITY, ReviewTemplate,
};
use guard::review::{ReviewSettings, Reviews, WEBHOOK_PATH};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{Namespace, Service};
use kube::ResourceExt;
use kube::api::{Api, Patch, PatchParams, PostParams};
use kube_env::{TestCluster, eventually, next_event};
use serde_json::{Value, json};
use tokio::sync::mpsc;

const WAIT: Duration = Duration::from_secs(30);
const SECRET: &[u8] = b"review-webhook-secret";

fn workspace() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn run(cmd: &mut std::process::Command) -> String {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("run {cmd:?}: {e} (is kubectl installed?)"));
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("utf-8")
}

/// The review overlay rendered with its placeholders, as guard's ConfigMap holds it.
fn template() -> ReviewTemplate {
    let dir = workspace().join("deploy/kustomize/overlays/review");
    let text = run(std::process::Command::new("kubectl")
        .arg("kustomize")
        .arg(&dir));
    ReviewTemplate::parse("kubectl kustomize overlays/review", &text).expect("review template")
}

/// An OCI registry double: `HEAD /v2/<name>/manifests/<tag>` is 200 with a
/// `Docker-Content-Digest` once [`RegistryDouble::push`] was called, else 404.
#[derive(Clone, Default)]
struct RegistryDouble {
    digests: Arc<Mutex<HashMap<String, String>>>,
}

impl RegistryDouble {
    async fn start(&self) -> String {
        async fn manifest(
            State(r): State<RegistryDouble>,
            Path(rest): Path<String>,
        ) -> axum::response::Response {
            match r.digests.lock().expect("lock").get(&rest) {
                Some(d) => (StatusCode::OK, [("docker-content-digest", d.clone())]).into_response(),
                None => StatusCode::NOT_FOUND.into_response(),
            }
        }
        let app = axum::Router::new()
            .route("/v2/{*rest}", axum::routing::get(manifest).head(manifest))
            .with_state(self.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        format!("http://{addr}")
    }

    fn push(&self, path: &str, digest: &str) {
        self.digests
            .lock()
            .expect("lock")
            .insert(path.into(), digest.into());
    }
}

struct Server {
    url: String,
    reviews: Arc<Reviews>,
    events: mpsc::UnboundedReceiver<notify::Event>,
}

async fn serve(cluster: &TestCluster, registry: Option<String>) -> Server {
    let (tx, events) = mpsc::unbounded_channel();
    let images: Option<Arc<dyn guard::review::image::ImageCheck>> = match registry {
        Some(url) => Some(Arc::new(
            RegistryCheck::new(Some(url), None).expect("registry check"),
        )),
        None => None,
    };
    let reviews = Arc::new(Reviews::new(
        cluster.client.clone(),
        ReviewSettings {
            secret: SECRET.to_vec(),
            template: template(),
            url_pattern: Some("https://pr-{number}.review.example.com".into()),
            ttl: Duration::from_secs(3600),
            image_wait: Duration::from_secs(60),
            image_poll: Duration::from_millis(50),
            repository: Some("acme/ultra-boost".into()),
            service: "ultra-boost".into(),
        },
        images,
        Some(tx),
    ));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    let app = reviews.clone().router();
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    Server {
        url: format!("http://{addr}{WEBHOOK_PATH}"),
        reviews,
        events,
    }
}

fn payload(action: &str, number: u64, sha: &str) -> Vec<u8> {
    serde_json::to_vec(&json!({
        "action": action,
        "number": number,
        "pull_request": {"number": number, "head": {"sha": sha, "ref": "feature"}, "merged": action == "closed"},
        "repository": {"full_name": "acme/ultra-boost"},
    }))
    .expect("json")
}

async fn post(url: &str, body: Vec<u8>, signature: Option<String>) -> (u16, Value) {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let mut req = reqwest::Client::new()
        .post(url)
        .header("content-type", "application/json")
        .header("x-github-event", "pull_request")
        .header("x-github-delivery", "72d3162e-cc78-11e3-81ab-4c9367dc0958")
        .body(body);
    if let Some(s) = signature {
        req = req.header("x-hub-signature-256", s);
    }
    let resp = req.send().await.expect("post webhook");
    let code = resp.status().as_u16();
    (code, resp.json().await.unwrap_or(Value::Null))
}

async fn signed(url: &str, action: &str, number: u64, sha: &str) -> (u16, Value) {
    let body = payload(action, number, sha);
    let sig = sign(SECRET, &body);
    post(url, body, Some(sig)).await
}

async fn namespace(cluster: &TestCluster, name: &str) -> Option<Namespace> {
    let api: Api<Namespace> = Api::all(cluster.client.clone());
    api.get_opt(name).await.expect("get namespace")
}

async fn gone(cluster: &TestCluster, name: &str) {
    eventually(WAIT, &format!("namespace {name} deleted"), || async {
        namespace(cluster, name).await.is_none().then_some(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn review_environment_created_and_deleted_from_signed_webhooks() {
    let cluster = TestCluster::start("review").await;
    let registry = RegistryDouble::default();
    let mut server = serve(&cluster, Some(registry.start().await)).await;
    let ns = "ultra-boost-pr-42";

    let (code, body) = signed(&server.url, "opened", 42, "1111111").await;
    assert_eq!(code, 202, "{body}");
    assert_eq!(
        body["waiting_for"],
        json!(["registry.digitalocean.com/ultra-boost/ultra-boost:pr-42"])
    );
    assert!(
        namespace(&cluster, ns).await.is_none(),
        "nothing is applied before the image exists"
    );

    registry.push("ultra-boost/ultra-boost/manifests/pr-42", "sha256:aaa");
    let created = eventually(WAIT, "review namespace created", || async {
        namespace(&cluster, ns).await
    })
    .await;
    let labels = created.labels();
    assert_eq!(
        labels
            .get("app.kubernetes.io/managed-by")
            .map(String::as_str),
        Some("guard")
    );
    assert_eq!(
        labels
            .get("guard.ultra-boost.dev/review-pr")
            .map(String::as_str),
        Some("42")
    );
    assert!(created.annotations().contains_key(ANNOTATION_LAST_ACTIVITY));
    let deployments: Api<Deployment> = Api::namespaced(cluster.client.clone(), ns);
    let d = eventually(WAIT, "review deployment", || async {
        deployments.get_opt("ultra-boost").await.ok().flatten()
    })
    .await;
    let pod = &d.spec.template;
    assert_eq!(
        pod.spec.as_ref().expect("pod spec").containers[0]
            .image
            .as_deref(),
        Some("registry.digitalocean.com/ultra-boost/ultra-boost:pr-42")
    );
    let pod_annotations = pod
        .metadata
        .as_ref()
        .and_then(|m| m.annotations.clone())
        .unwrap_or_default();
    assert_eq!(
        pod_annotations
            .get("guard.ultra-boost.dev/commit")
            .map(String::as_str),
        Some("1111111")
    );
    assert_eq!(
        pod_annotations
            .get(ANNOTATION_IMAGE_DIGEST)
            .map(String::as_str),
        Some("sha256:aaa")
    );
    assert_eq!(
        d.labels()
            .get("guard.ultra-boost.dev/enabled")
            .map(String::as_str),
        Some("true"),
        "guard verifies review rollouts too"
    );
    let services: Api<Service> = Api::namespaced(cluster.client.clone(), ns);
    for s in ["ultra-boost", "ultra-boost-canary", "ultra-boost-metrics"] {
        assert!(
            services.get_opt(s).await.expect("get service").is_some(),
            "service {s}"
        );
    }
    let ev = next_event(&mut server.events, "deployment event").await;
    assert_eq!(
        (
            ev.kind,
            ev.environment.as_str(),
            ev.transient,
            ev.environment_url.as_deref()
        ),
        (
            notify::EventKind::Promoted,
            "pr-42",
            true,
            Some("https://pr-42.review.example.com")
        )
    );

    // A push: re-applied once CI pushed a new image, not with the old one.
    let (code, _) = signed(&server.url, "synchronize", 42, "2222222").await;
    assert_eq!(code, 202);
    registry.push("ultra-boost/ultra-boost/manifests/pr-42", "sha256:bbb");
    let updated = eventually(WAIT, "re-applied with the new head", || async {
        namespace(&cluster, ns).await.filter(|n| {
            n.annotations().get(ANNOTATION_HEAD_SHA).map(String::as_str) == Some("2222222")
        })
    })
    .await;
    assert_eq!(
        updated
            .annotations()
            .get(ANNOTATION_IMAGE_DIGEST)
            .map(String::as_str),
        Some("sha256:bbb")
    );
    let ev = next_event(&mut server.events, "second deployment event").await;
    assert_eq!(ev.commit.as_deref(), Some("2222222"));

    let (code, body) = signed(&server.url, "closed", 42, "2222222").await;
    assert_eq!(code, 200, "{body}");
    gone(&cluster, ns).await;
    let ev = next_event(&mut server.events, "closed event").await;
    assert_eq!(
        (ev.kind, ev.transient, ev.reason.as_str()),
        (notify::EventKind::RolledBack, true, "pull request merged")
    );
    // Redelivery of `closed` is harmless.
    let (code, body) = signed(&server.url, "closed", 42, "2222222").await;
    assert_eq!((code, body["result"].as_str()), (200, Some("AlreadyGone")));
    drop(server.reviews);
    cluster.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn review_bad_signatures_are_refused_and_change_nothing() {
    let cluster = TestCluster::start("review-sig").await;
    // No image check: a valid request would apply at once, so a refusal is visible.
    let server = serve(&cluster, None).await;
    let ns = "ultra-boost-pr-43";
    let writes_before = cluster.double.as_ref().map(|d| d.writes());
    let body = payload("opened", 43, "3333333");
    let good = sign(SECRET, &body);
    let cases: Vec<(&str, Vec<u8>, Option<String>)> = vec![
        ("unsigned", body.clone(), None),
        (
            "wrong secret",
            body.clone(),
            Some(sign(b"not-the-secret", &body)),
        ),
        (
            "tampered body",
            payload("opened", 44, "3333333"),
            Some(good.clone()),
        ),
        (
            "sha1 header",
            body.clone(),
            Some(good.replace("sha256=", "sha1=")),
        ),
        ("not hex", body.clone(), Some("sha256=zzzz".into())),
    ];
    for (what, body, sig) in cases {
        let (code, resp) = post(&server.url, body, sig).await;
        assert_eq!(code, 401, "{what}: {resp}");
        assert!(
            resp["error"]
                .as_str()
                .is_some_and(|e| e.contains("X-Hub-Signature-256")),
            "{what}: {resp}"
        );
    }
    assert_eq!(
        cluster.double.as_ref().map(|d| d.writes()),
        writes_before,
        "no write reached the API"
    );
    assert!(namespace(&cluster, ns).await.is_none());
    assert!(namespace(&cluster, "ultra-boost-pr-44").await.is_none());

    // The same request, correctly signed, acts.
    let (code, resp) = post(&server.url, body, Some(good)).await;
    assert_eq!(code, 200, "{resp}");
    assert!(namespace(&cluster, ns).await.is_some());
    let (code, _) = signed(&server.url, "closed", 43, "3333333").await;
    assert_eq!(code, 200);
    gone(&cluster, ns).await;
    cluster.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn review_closed_never_deletes_a_namespace_guard_does_not_own() {
    let cluster = TestCluster::start("review-owner").await;
    let server = serve(&cluster, None).await;
    let api: Api<Namespace> = Api::all(cluster.client.clone());
    let foreign: Namespace = serde_json::from_value(
        json!({"metadata": {"name": "ultra-boost-pr-7", "labels": {"team": "payments"}}}),
    )
    .expect("ns");
    api.create(&PostParams::default(), &foreign)
        .await
        .expect("create");
    let (code, body) = signed(&server.url, "closed", 7, "7777777").await;
    assert_eq!(code, 409, "{body}");
    assert!(
        body["error"]
            .as_str()
            .is_some_and(|e| e.contains("not deleting")),
        "{body}"
    );
    assert!(
        namespace(&cluster, "ultra-boost-pr-7").await.is_some(),
        "a namespace guard does not own stays"
    );
    // Other repositories' events are ignored.
    let mut other =
        serde_json::from_slice::<Value>(&payload("closed", 7, "7777777")).expect("json");
    other["repository"]["full_name"] = json!("someone/else");
    let body = serde_json::to_vec(&other).expect("json");
    let (code, resp) = post(&server.url, body.clone(), Some(sign(SECRET, &body))).await;
    assert_eq!(code, 202, "{resp}");
    let _ = api.delete("ultra-boost-pr-7", &Default::default()).await;
    cluster.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn review_ttl_sweep_removes_quiet_environments_only() {
    let cluster = TestCluster::start("review-ttl").await;
    let server = serve(&cluster, None).await;
    server
        .reviews
        .apply(5, "5555555", None)
        .await
        .expect("apply 5");
    server
        .reviews
        .apply(6, "6666666", None)
        .await
        .expect("apply 6");
    let api: Api<Namespace> = Api::all(cluster.client.clone());
    let old = jiff::Timestamp::now()
        .checked_sub(jiff::SignedDuration::from_hours(48))
        .expect("time")
        .to_string();
    api.patch(
        "ultra-boost-pr-5",
        &PatchParams::default(),
        &Patch::Merge(&json!({"metadata": {"annotations": {ANNOTATION_LAST_ACTIVITY: old}}})),
    )
    .await
    .expect("age pr-5");
    let swept = server.reviews.sweep().await.expect("sweep");
    assert_eq!(swept, vec!["ultra-boost-pr-5".to_string()]);
    gone(&cluster, "ultra-boost-pr-5").await;
    assert!(
        namespace(&cluster, "ultra-boost-pr-6").await.is_some(),
        "an active environment stays"
    );
    server.reviews.remove(6).await.expect("remove 6");
    cluster.cleanup().await;
}

/// guard's in-memory rendering equals `deploy/kustomize/render.sh review --pr 42`.
#[test]
fn review_template_renders_like_render_sh() {
    let script = workspace().join("deploy/kustomize/render.sh");
    let text = run(std::process::Command::new("bash")
        .arg(&script)
        .args(["review", "--pr", "42"]));
    let want: Vec<Value> = serde_saphyr::from_multiple(&text).expect("render.sh output is YAML");
    let key = |o: &Value| {
        format!(
            "{}/{}",
            o["kind"].as_str().unwrap_or(""),
            o["metadata"]["name"].as_str().unwrap_or("")
        )
    };
    let mut want: Vec<(String, Value)> = want
        .into_iter()
        .filter(|o| !o.is_null())
        .map(|o| (key(&o), o))
        .collect();
    let mut got: Vec<(String, Value)> = template()
        .render_plain(42)
        .into_iter()
        .map(|o| (key(&o), o))
        .collect();
    want.sort_by(|a, b| a.0.cmp(&b.0));
    got.sort_by(|a, b| a.0.cmp(&b.0));
    assert_eq!(
        got.iter().map(|x| &x.0).collect::<Vec<_>>(),
        want.iter().map(|x| &x.0).collect::<Vec<_>>()
    );
    for ((k, g), (_, w)) in got.iter().zip(&want) {
        assert_eq!(g, w, "{k} differs from render.sh");
    }
}
