//! `KubeApiDouble`: an in-process stand-in for the Kubernetes API server, for
//! tests on a machine without a cluster.
//!
//! It speaks the real REST API over plain HTTP on `127.0.0.1:<port>` for exactly
//! the resources guard uses (Namespaces, Pods, Services, ServiceAccounts,
//! Deployments, ReplicaSets, Leases, Gateway API HTTPRoutes, and the
//! PodDisruptionBudget and NetworkPolicy of the review overlay; ServiceMonitors
//! are answered 404, like a cluster without the Prometheus operator): get, list (label selectors), watch
//! (`?watch=true&resourceVersion=N`, newline-delimited JSON `WatchEvent`s),
//! create (409 `AlreadyExists`), replace (409 `Conflict` on a stale
//! `metadata.resourceVersion`), patch (JSON merge patch; strategic merge and
//! server-side apply are treated as a JSON merge patch, which is exact for the
//! fields guard writes; apply creates a missing object) and delete (a Namespace
//! takes its objects with it, a Deployment its ReplicaSets and Pods).
//!
//! It also plays a minimal Deployment controller, enough for `rollout undo`
//! semantics: a Deployment whose pod template matches none of its ReplicaSets
//! gets a new ReplicaSet `<name>-<pod-template-hash>` at revision max+1; a
//! template that matches an older ReplicaSet (an undo) moves that ReplicaSet to
//! revision max+1, as the real controller does. The current ReplicaSet gets all
//! replicas and one ready Pod per replica (IP 127.0.0.1); the Deployment's
//! `deployment.kubernetes.io/revision` annotation and status follow at once.
//!
//! What it does not do: authentication, admission, field ownership and conflicts
//! of server-side apply, strategic-merge list semantics, finalizers, pagination
//! (`limit` is ignored: one page), bookmarks.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};
use tokio::sync::broadcast;

/// (group, plural, namespace, name); namespace is "" for cluster-scoped kinds.
type Key = (String, String, String, String);

#[derive(Clone, Debug)]
struct LogEntry {
    rv: u64,
    group: String,
    plural: String,
    namespace: String,
    kind: &'static str,
    object: Value,
}

#[derive(Default)]
struct Store {
    rv: u64,
    uid: u64,
    objects: BTreeMap<Key, Value>,
    log: Vec<LogEntry>,
    /// Served kinds; HTTPRoutes can be switched off to model a cluster without Gateway API.
    gateway_api: bool,
    /// Count of mutating requests (create, replace, patch, delete), for "nothing changed" checks.
    writes: u64,
}

struct Shared {
    store: Mutex<Store>,
    events: broadcast::Sender<LogEntry>,
}

/// The double; dropping it stops the server.
pub struct KubeApiDouble {
    addr: SocketAddr,
    shared: Arc<Shared>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for KubeApiDouble {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// (api version, kind, namespaced) for a (group, plural) this double serves.
fn kind_of(
    group: &str,
    plural: &str,
    gateway_api: bool,
) -> Option<(&'static str, &'static str, bool)> {
    Some(match (group, plural) {
        ("", "namespaces") => ("v1", "Namespace", false),
        ("", "pods") => ("v1", "Pod", true),
        ("", "services") => ("v1", "Service", true),
        ("", "configmaps") => ("v1", "ConfigMap", true),
        ("", "serviceaccounts") => ("v1", "ServiceAccount", true),
        ("policy", "poddisruptionbudgets") => ("policy/v1", "PodDisruptionBudget", true),
        ("networking.k8s.io", "networkpolicies") => ("networking.k8s.io/v1", "NetworkPolicy", true),
        ("apps", "deployments") => ("apps/v1", "Deployment", true),
        ("apps", "replicasets") => ("apps/v1", "ReplicaSet", true),
        ("coordination.k8s.io", "leases") => ("coordination.k8s.io/v1", "Lease", true),
        ("gateway.networking.k8s.io", "httproutes") if gateway_api => {
            ("gateway.networking.k8s.io/v1", "HTTPRoute", true)
        }
        _ => return None,
    })
}

impl KubeApiDouble {
    /// Starts the double with Gateway API HTTPRoutes served.
    pub async fn start() -> Self {
        Self::start_with(true).await
    }

    /// Starts the double; `gateway_api: false` answers 404 for HTTPRoutes, as a
    /// cluster without the Gateway API CRDs does.
    pub async fn start_with(gateway_api: bool) -> Self {
        let (events, _) = broadcast::channel(4096);
        let shared = Arc::new(Shared {
            store: Mutex::new(Store {
                gateway_api,
                ..Store::default()
            }),
            events,
        });
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind 127.0.0.1:0");
        let addr = listener.local_addr().expect("local addr");
        let app = axum::Router::new()
            .fallback(handle)
            .with_state(shared.clone());
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        KubeApiDouble { addr, shared, task }
    }

    /// `http://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// A kube client pointed at the double.
    pub fn client(&self) -> kube::Client {
        let url: http::Uri = self.url().parse().expect("double url");
        let mut config = kube::Config::new(url);
        config.default_namespace = "default".into();
        config.read_timeout = Some(Duration::from_secs(30));
        kube::Client::try_from(config).expect("client for the double")
    }

    /// Mutating requests served so far.
    pub fn writes(&self) -> u64 {
        self.shared.store.lock().expect("store").writes
    }
}

fn status(code: StatusCode, reason: &str, message: String) -> Response {
    let body = json!({
        "kind": "Status", "apiVersion": "v1", "metadata": {},
        "status": "Failure", "message": message, "reason": reason, "code": code.as_u16(),
    });
    (
        code,
        [("content-type", "application/json")],
        body.to_string(),
    )
        .into_response()
}

fn ok_json(code: StatusCode, v: &Value) -> Response {
    (code, [("content-type", "application/json")], v.to_string()).into_response()
}

/// A parsed resource path.
struct Target {
    group: String,
    plural: String,
    namespace: String,
    name: Option<String>,
}

fn parse_path(path: &str) -> Option<Target> {
    let segs: Vec<&str> = path.trim_matches('/').split('/').collect();
    let (group, rest) = match *segs.first()? {
        "api" => (String::new(), segs.get(2..)?),
        "apis" => ((*segs.get(1)?).to_string(), segs.get(3..)?),
        _ => return None,
    };
    match rest {
        ["namespaces", ns, plural] => Some(Target {
            group,
            plural: (*plural).into(),
            namespace: (*ns).into(),
            name: None,
        }),
        ["namespaces", ns, plural, name] => Some(Target {
            group,
            plural: (*plural).into(),
            namespace: (*ns).into(),
            name: Some((*name).into()),
        }),
        [plural] => Some(Target {
            group,
            plural: (*plural).into(),
            namespace: String::new(),
            name: None,
        }),
        [plural, name] => Some(Target {
            group,
            plural: (*plural).into(),
            namespace: String::new(),
            name: Some((*name).into()),
        }),
        _ => None,
    }
}

fn query_map(uri: &Uri) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    if let Some(q) = uri.query() {
        for pair in q.split('&') {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            out.insert(decode(k), decode(v));
        }
    }
    out
}

fn decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' if i + 2 < bytes.len() => {
                let hex = std::str::from_utf8(&bytes[i + 1..i + 3]).unwrap_or("");
                match u8::from_str_radix(hex, 16) {
                    Ok(b) => {
                        out.push(b);
                        i += 3;
                        continue;
                    }
                    Err(_) => out.push(b'%'),
                }
            }
            b'+' => out.push(b' '),
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Equality-based label selectors: `a=b`, `a==b`, `a!=b`, `a` (exists), `!a`.
fn labels_match(obj: &Value, selector: Option<&String>) -> bool {
    let Some(sel) = selector.filter(|s| !s.is_empty()) else {
        return true;
    };
    let labels = obj.pointer("/metadata/labels").and_then(Value::as_object);
    let get = |k: &str| labels.and_then(|l| l.get(k)).and_then(Value::as_str);
    sel.split(',').all(|term| {
        let term = term.trim();
        if let Some((k, v)) = term.split_once("!=") {
            get(k.trim()) != Some(v.trim())
        } else if let Some((k, v)) = term.split_once("==").or_else(|| term.split_once('=')) {
            get(k.trim()) == Some(v.trim())
        } else if let Some(k) = term.strip_prefix('!') {
            get(k.trim()).is_none()
        } else {
            get(term).is_some()
        }
    })
}

fn fields_match(obj: &Value, selector: Option<&String>) -> bool {
    let Some(sel) = selector.filter(|s| !s.is_empty()) else {
        return true;
    };
    sel.split(',').all(|term| match term.split_once('=') {
        Some(("metadata.name", v)) => {
            obj.pointer("/metadata/name").and_then(Value::as_str) == Some(v)
        }
        Some(("metadata.namespace", v)) => {
            obj.pointer("/metadata/namespace").and_then(Value::as_str) == Some(v)
        }
        _ => true,
    })
}

/// RFC 7386 JSON merge patch.
fn merge(target: &mut Value, patch: &Value) {
    match patch {
        Value::Object(p) => {
            if !target.is_object() {
                *target = json!({});
            }
            let t = target.as_object_mut().expect("object");
            for (k, v) in p {
                if v.is_null() {
                    t.remove(k);
                } else {
                    merge(t.entry(k.clone()).or_insert(Value::Null), v);
                }
            }
        }
        other => *target = other.clone(),
    }
}

fn canonical(v: &Value) -> String {
    // serde_json's map is ordered unless `preserve_order` is on; sort explicitly so
    // hashes do not depend on a feature another crate may enable.
    match v {
        Value::Object(m) => {
            let mut keys: Vec<&String> = m.keys().collect();
            keys.sort();
            let inner: Vec<String> = keys
                .iter()
                .map(|k| format!("{}:{}", Value::String((*k).clone()), canonical(&m[*k])))
                .collect();
            format!("{{{}}}", inner.join(","))
        }
        Value::Array(a) => format!(
            "[{}]",
            a.iter().map(canonical).collect::<Vec<_>>().join(",")
        ),
        other => other.to_string(),
    }
}

fn template_hash(template: &Value) -> String {
    // FNV-1a over the canonical JSON, rendered like the real pod-template-hash
    // (short, lowercase alphanumerics).
    let mut h: u64 = 0xcbf29ce484222325;
    for b in canonical(template).bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x100000001b3);
    }
    const ALPHABET: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";
    let mut s = String::new();
    for _ in 0..10 {
        s.push(ALPHABET[(h % ALPHABET.len() as u64) as usize] as char);
        h /= ALPHABET.len() as u64;
    }
    s
}

fn strip_hash(template: &Value) -> Value {
    let mut t = template.clone();
    if let Some(labels) = t
        .pointer_mut("/metadata/labels")
        .and_then(Value::as_object_mut)
    {
        labels.remove("pod-template-hash");
    }
    t
}

fn now_rfc3339() -> String {
    jiff::Timestamp::now()
        .strftime("%Y-%m-%dT%H:%M:%SZ")
        .to_string()
}

impl Store {
    fn key(group: &str, plural: &str, ns: &str, name: &str) -> Key {
        (group.into(), plural.into(), ns.into(), name.into())
    }

    /// Writes an object (stamping resourceVersion) and logs the event.
    fn put(
        &mut self,
        events: &broadcast::Sender<LogEntry>,
        key: Key,
        mut obj: Value,
        kind: &'static str,
    ) -> Value {
        self.rv += 1;
        obj["metadata"]["resourceVersion"] = json!(self.rv.to_string());
        self.objects.insert(key.clone(), obj.clone());
        let entry = LogEntry {
            rv: self.rv,
            group: key.0,
            plural: key.1,
            namespace: key.2,
            kind,
            object: obj.clone(),
        };
        self.log.push(entry.clone());
        let _ = events.send(entry);
        obj
    }

    fn remove(&mut self, events: &broadcast::Sender<LogEntry>, key: &Key) -> Option<Value> {
        let mut obj = self.objects.remove(key)?;
        self.rv += 1;
        obj["metadata"]["resourceVersion"] = json!(self.rv.to_string());
        let entry = LogEntry {
            rv: self.rv,
            group: key.0.clone(),
            plural: key.1.clone(),
            namespace: key.2.clone(),
            kind: "DELETED",
            object: obj.clone(),
        };
        self.log.push(entry.clone());
        let _ = events.send(entry);
        Some(obj)
    }

    /// Fills server-owned metadata of a new object.
    fn stamp_new(&mut self, obj: &mut Value, api_version: &str, kind: &str, ns: &str) {
        self.uid += 1;
        obj["apiVersion"] = json!(api_version);
        obj["kind"] = json!(kind);
        if !obj["metadata"].is_object() {
            obj["metadata"] = json!({});
        }
        obj["metadata"]["uid"] = json!(format!("00000000-0000-4000-8000-{:012}", self.uid));
        obj["metadata"]["creationTimestamp"] = json!(now_rfc3339());
        if !ns.is_empty() {
            obj["metadata"]["namespace"] = json!(ns);
        }
        if obj.get("spec").is_some() {
            obj["metadata"]["generation"] = json!(1);
        }
    }

    /// Writes an updated object; bumps `generation` when the spec changed.
    fn update(
        &mut self,
        events: &broadcast::Sender<LogEntry>,
        key: Key,
        old: &Value,
        mut new: Value,
    ) -> Value {
        new["metadata"]["uid"] = old["metadata"]["uid"].clone();
        new["metadata"]["creationTimestamp"] = old["metadata"]["creationTimestamp"].clone();
        let generation = old["metadata"]["generation"].as_i64().unwrap_or(0);
        if old.get("spec") != new.get("spec") {
            new["metadata"]["generation"] = json!(generation + 1);
        } else if generation > 0 {
            new["metadata"]["generation"] = json!(generation);
        }
        if canonical(old)
            == canonical(&{
                let mut n = new.clone();
                n["metadata"]["resourceVersion"] = old["metadata"]["resourceVersion"].clone();
                n
            })
        {
            return old.clone();
        }
        self.put(events, key, new, "MODIFIED")
    }

    /// Writes `obj` at `key` only when it differs from what is stored.
    fn put_if_changed(&mut self, events: &broadcast::Sender<LogEntry>, key: Key, obj: Value) {
        match self.objects.get(&key).cloned() {
            Some(old) => {
                let mut cmp = obj.clone();
                cmp["metadata"]["resourceVersion"] = old["metadata"]["resourceVersion"].clone();
                if canonical(&cmp) != canonical(&old) {
                    self.put(events, key, obj, "MODIFIED");
                }
            }
            None => {
                self.put(events, key, obj, "ADDED");
            }
        }
    }

    /// The minimal Deployment controller (see the module docs).
    fn reconcile_deployment(&mut self, events: &broadcast::Sender<LogEntry>, ns: &str, name: &str) {
        let dkey = Self::key("apps", "deployments", ns, name);
        let Some(dep) = self.objects.get(&dkey).cloned() else {
            return;
        };
        let template = strip_hash(&dep["spec"]["template"]);
        let hash = template_hash(&template);
        let replicas = dep["spec"]["replicas"].as_i64().unwrap_or(1);
        let dep_uid = dep["metadata"]["uid"].clone();
        let owned: Vec<(Key, Value)> = self
            .objects
            .iter()
            .filter(|(k, v)| {
                k.0 == "apps"
                    && k.1 == "replicasets"
                    && k.2 == ns
                    && v.pointer("/metadata/ownerReferences/0/uid") == Some(&dep_uid)
            })
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        let rev_of = |rs: &Value| -> i64 {
            rs.pointer("/metadata/annotations/deployment.kubernetes.io~1revision")
                .and_then(Value::as_str)
                .and_then(|s| s.parse().ok())
                .unwrap_or(0)
        };
        let max_rev = owned.iter().map(|(_, v)| rev_of(v)).max().unwrap_or(0);
        let current = owned
            .iter()
            .find(|(_, v)| strip_hash(&v["spec"]["template"]) == template)
            .cloned();
        let (cur_key, mut cur_rs) = match current {
            Some((k, v)) => (k, v),
            None => {
                let rs_name = format!("{name}-{hash}");
                let mut rs_template = template.clone();
                rs_template["metadata"]["labels"]["pod-template-hash"] = json!(hash);
                let mut selector = dep["spec"]["selector"].clone();
                selector["matchLabels"]["pod-template-hash"] = json!(hash);
                let mut labels = template["metadata"]["labels"].clone();
                labels["pod-template-hash"] = json!(hash);
                let mut rs = json!({
                    "metadata": {
                        "name": rs_name,
                        "labels": labels,
                        "annotations": {"deployment.kubernetes.io/revision": "0"},
                        "ownerReferences": [{
                            "apiVersion": "apps/v1", "kind": "Deployment", "name": name,
                            "uid": dep_uid, "controller": true, "blockOwnerDeletion": true,
                        }],
                    },
                    "spec": {"replicas": 0, "selector": selector, "template": rs_template},
                });
                self.stamp_new(&mut rs, "apps/v1", "ReplicaSet", ns);
                (Self::key("apps", "replicasets", ns, &rs_name), rs)
            }
        };
        if rev_of(&cur_rs) != max_rev || max_rev == 0 {
            let next = if rev_of(&cur_rs) == max_rev && max_rev > 0 {
                max_rev
            } else {
                max_rev + 1
            };
            cur_rs["metadata"]["annotations"]["deployment.kubernetes.io/revision"] =
                json!(next.to_string());
        }
        let cur_rev = rev_of(&cur_rs);
        let cur_hash = cur_rs
            .pointer("/spec/template/metadata/labels/pod-template-hash")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string();
        cur_rs["spec"]["replicas"] = json!(replicas);
        cur_rs["status"] = json!({
            "replicas": replicas, "readyReplicas": replicas, "availableReplicas": replicas,
            "fullyLabeledReplicas": replicas, "observedGeneration": cur_rs["metadata"]["generation"].clone(),
        });
        self.put_if_changed(events, cur_key.clone(), cur_rs.clone());
        for (k, mut rs) in owned.into_iter().filter(|(k, _)| *k != cur_key) {
            rs["spec"]["replicas"] = json!(0);
            rs["status"] =
                json!({"replicas": 0, "observedGeneration": rs["metadata"]["generation"].clone()});
            self.put_if_changed(events, k, rs);
        }
        // Pods: one ready pod per replica of the current ReplicaSet; none for the others.
        let rs_name = cur_key.3.clone();
        let pod_keys: Vec<Key> = self
            .objects
            .iter()
            .filter(|(k, v)| {
                k.1 == "pods"
                    && k.2 == ns
                    && v.pointer("/metadata/labels/guard-double.owner")
                        .and_then(Value::as_str)
                        == Some(name)
            })
            .map(|(k, _)| k.clone())
            .collect();
        for k in &pod_keys {
            let keep = self.objects[k]
                .pointer("/metadata/labels/pod-template-hash")
                .and_then(Value::as_str)
                == Some(cur_hash.as_str())
                && k.3
                    .rsplit('-')
                    .next()
                    .and_then(|i| i.parse::<i64>().ok())
                    .is_some_and(|i| i < replicas);
            if !keep {
                self.remove(events, k);
            }
        }
        for i in 0..replicas {
            let pod_name = format!("{rs_name}-{i}");
            let key = Self::key("", "pods", ns, &pod_name);
            if self.objects.contains_key(&key) {
                continue;
            }
            let mut labels = cur_rs["spec"]["template"]["metadata"]["labels"].clone();
            labels["guard-double.owner"] = json!(name);
            let mut pod = json!({
                "metadata": {
                    "name": pod_name, "labels": labels,
                    "annotations": cur_rs["spec"]["template"]["metadata"]["annotations"].clone(),
                    "ownerReferences": [{"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": rs_name,
                        "uid": cur_rs["metadata"]["uid"].clone(), "controller": true}],
                },
                "spec": cur_rs["spec"]["template"]["spec"].clone(),
                "status": {"phase": "Running", "podIP": "127.0.0.1",
                    "conditions": [{"type": "Ready", "status": "True"}]},
            });
            if pod["metadata"]["annotations"].is_null() {
                pod["metadata"]
                    .as_object_mut()
                    .expect("object")
                    .remove("annotations");
            }
            self.stamp_new(&mut pod, "v1", "Pod", ns);
            self.put(events, key, pod, "ADDED");
        }
        // The Deployment itself: revision annotation and a finished rollout status.
        let mut dep = self.objects[&dkey].clone();
        dep["metadata"]["annotations"]["deployment.kubernetes.io/revision"] =
            json!(cur_rev.to_string());
        dep["status"] = json!({
            "observedGeneration": dep["metadata"]["generation"].clone(),
            "replicas": replicas, "updatedReplicas": replicas,
            "readyReplicas": replicas, "availableReplicas": replicas,
            "conditions": [{"type": "Available", "status": "True"},
                {"type": "Progressing", "status": "True", "reason": "NewReplicaSetAvailable"}],
        });
        self.put_if_changed(events, dkey, dep);
    }

    /// Garbage collection for deletes: a Namespace's objects, a Deployment's ReplicaSets and Pods.
    fn cascade(&mut self, events: &broadcast::Sender<LogEntry>, key: &Key) {
        let doomed: Vec<Key> = match (key.0.as_str(), key.1.as_str()) {
            ("", "namespaces") => self
                .objects
                .keys()
                .filter(|k| k.2 == key.3)
                .cloned()
                .collect(),
            ("apps", "deployments") => self
                .objects
                .iter()
                .filter(|(k, v)| {
                    k.2 == key.2
                        && ((k.1 == "replicasets"
                            && v.pointer("/metadata/ownerReferences/0/name")
                                .and_then(Value::as_str)
                                == Some(key.3.as_str()))
                            || (k.1 == "pods"
                                && v.pointer("/metadata/labels/guard-double.owner")
                                    .and_then(Value::as_str)
                                    == Some(key.3.as_str())))
                })
                .map(|(k, _)| k.clone())
                .collect(),
            _ => Vec::new(),
        };
        for k in doomed {
            self.remove(events, &k);
        }
    }
}

async fn handle(
    State(shared): State<Arc<Shared>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let Some(t) = parse_path(uri.path()) else {
        return status(
            StatusCode::NOT_FOUND,
            "NotFound",
            format!("the server could not find {}", uri.path()),
        );
    };
    let query = query_map(&uri);
    let gateway_api = shared.store.lock().expect("store").gateway_api;
    let Some((api_version, kind, namespaced)) = kind_of(&t.group, &t.plural, gateway_api) else {
        return status(
            StatusCode::NOT_FOUND,
            "NotFound",
            format!(
                "the server could not find the requested resource ({})",
                t.plural
            ),
        );
    };
    if namespaced == t.namespace.is_empty() && t.name.is_some() {
        return status(
            StatusCode::NOT_FOUND,
            "NotFound",
            format!(
                "{kind} is {}namespaced",
                if namespaced { "" } else { "not " }
            ),
        );
    }
    let content_type = headers
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string();
    let events = shared.events.clone();
    match (method, t.name.clone()) {
        (Method::GET, None)
            if matches!(query.get("watch").map(String::as_str), Some("true" | "1")) =>
        {
            watch(shared, t, query)
        }
        (Method::GET, None) => {
            let store = shared.store.lock().expect("store");
            let items: Vec<Value> = store
                .objects
                .iter()
                .filter(|(k, v)| {
                    k.0 == t.group
                        && k.1 == t.plural
                        && (t.namespace.is_empty() || k.2 == t.namespace)
                        && labels_match(v, query.get("labelSelector"))
                        && fields_match(v, query.get("fieldSelector"))
                })
                .map(|(_, v)| v.clone())
                .collect();
            ok_json(
                StatusCode::OK,
                &json!({"apiVersion": api_version, "kind": format!("{kind}List"),
                    "metadata": {"resourceVersion": store.rv.to_string()}, "items": items}),
            )
        }
        (Method::GET, Some(name)) => {
            let store = shared.store.lock().expect("store");
            match store
                .objects
                .get(&Store::key(&t.group, &t.plural, &t.namespace, &name))
            {
                Some(v) => ok_json(StatusCode::OK, v),
                None => status(
                    StatusCode::NOT_FOUND,
                    "NotFound",
                    format!("{} \"{name}\" not found", t.plural),
                ),
            }
        }
        (Method::POST, None) => {
            let Ok(mut obj) = serde_json::from_slice::<Value>(&body) else {
                return status(
                    StatusCode::BAD_REQUEST,
                    "BadRequest",
                    "body is not JSON".into(),
                );
            };
            let Some(name) = obj
                .pointer("/metadata/name")
                .and_then(Value::as_str)
                .map(String::from)
            else {
                return status(
                    StatusCode::UNPROCESSABLE_ENTITY,
                    "Invalid",
                    "metadata.name: Required value".into(),
                );
            };
            let mut store = shared.store.lock().expect("store");
            store.writes += 1;
            let key = Store::key(&t.group, &t.plural, &t.namespace, &name);
            if store.objects.contains_key(&key) {
                return status(
                    StatusCode::CONFLICT,
                    "AlreadyExists",
                    format!("{} \"{name}\" already exists", t.plural),
                );
            }
            if namespaced
                && !store
                    .objects
                    .contains_key(&Store::key("", "namespaces", "", &t.namespace))
            {
                return status(
                    StatusCode::NOT_FOUND,
                    "NotFound",
                    format!("namespaces \"{}\" not found", t.namespace),
                );
            }
            store.stamp_new(&mut obj, api_version, kind, &t.namespace);
            let out = store.put(&events, key, obj, "ADDED");
            let out = after_write(&mut store, &events, &t, &name).unwrap_or(out);
            ok_json(StatusCode::CREATED, &out)
        }
        (Method::PUT, Some(name)) => {
            let Ok(mut obj) = serde_json::from_slice::<Value>(&body) else {
                return status(
                    StatusCode::BAD_REQUEST,
                    "BadRequest",
                    "body is not JSON".into(),
                );
            };
            let mut store = shared.store.lock().expect("store");
            store.writes += 1;
            let key = Store::key(&t.group, &t.plural, &t.namespace, &name);
            let Some(old) = store.objects.get(&key).cloned() else {
                return status(
                    StatusCode::NOT_FOUND,
                    "NotFound",
                    format!("{} \"{name}\" not found", t.plural),
                );
            };
            let given = obj
                .pointer("/metadata/resourceVersion")
                .and_then(Value::as_str)
                .map(String::from);
            if let Some(given) = given.filter(|g| !g.is_empty())
                && Some(given.as_str())
                    != old
                        .pointer("/metadata/resourceVersion")
                        .and_then(Value::as_str)
            {
                return status(
                    StatusCode::CONFLICT,
                    "Conflict",
                    format!(
                        "Operation cannot be fulfilled on {} \"{name}\": the object has been modified; please apply your changes to the latest version and try again",
                        t.plural
                    ),
                );
            }
            obj["apiVersion"] = json!(api_version);
            obj["kind"] = json!(kind);
            if namespaced {
                obj["metadata"]["namespace"] = json!(t.namespace);
            }
            let out = store.update(&events, key, &old, obj);
            let out = after_write(&mut store, &events, &t, &name).unwrap_or(out);
            ok_json(StatusCode::OK, &out)
        }
        (Method::PATCH, Some(name)) => {
            let apply = content_type.starts_with("application/apply-patch");
            if !(apply
                || content_type.starts_with("application/merge-patch+json")
                || content_type.starts_with("application/strategic-merge-patch+json"))
            {
                return status(
                    StatusCode::UNSUPPORTED_MEDIA_TYPE,
                    "UnsupportedMediaType",
                    format!("the double does not support patch type {content_type:?}"),
                );
            }
            // kube sends server-side apply bodies as JSON, which is valid YAML.
            let Ok(patch) = serde_json::from_slice::<Value>(&body) else {
                return status(
                    StatusCode::BAD_REQUEST,
                    "BadRequest",
                    "patch body is not JSON".into(),
                );
            };
            if apply && !query.contains_key("fieldManager") {
                return status(
                    StatusCode::BAD_REQUEST,
                    "BadRequest",
                    "PatchOptions.meta.k8s.io \"\" is invalid: fieldManager: Required value".into(),
                );
            }
            let mut store = shared.store.lock().expect("store");
            store.writes += 1;
            let key = Store::key(&t.group, &t.plural, &t.namespace, &name);
            let out = match store.objects.get(&key).cloned() {
                Some(old) => {
                    // A resourceVersion in a patch is a precondition, as on a real API server.
                    if let Some(given) = patch
                        .pointer("/metadata/resourceVersion")
                        .and_then(Value::as_str)
                        && Some(given)
                            != old
                                .pointer("/metadata/resourceVersion")
                                .and_then(Value::as_str)
                    {
                        return status(
                            StatusCode::CONFLICT,
                            "Conflict",
                            format!(
                                "Operation cannot be fulfilled on {} \"{name}\": the object has been modified",
                                t.plural
                            ),
                        );
                    }
                    let mut new = old.clone();
                    merge(&mut new, &patch);
                    new["apiVersion"] = json!(api_version);
                    new["kind"] = json!(kind);
                    store.update(&events, key, &old, new)
                }
                None if apply => {
                    if namespaced
                        && !store.objects.contains_key(&Store::key(
                            "",
                            "namespaces",
                            "",
                            &t.namespace,
                        ))
                    {
                        return status(
                            StatusCode::NOT_FOUND,
                            "NotFound",
                            format!("namespaces \"{}\" not found", t.namespace),
                        );
                    }
                    let mut obj = patch.clone();
                    obj["metadata"]["name"] = json!(name);
                    store.stamp_new(&mut obj, api_version, kind, &t.namespace);
                    store.put(&events, key, obj, "ADDED")
                }
                None => {
                    return status(
                        StatusCode::NOT_FOUND,
                        "NotFound",
                        format!("{} \"{name}\" not found", t.plural),
                    );
                }
            };
            let out = after_write(&mut store, &events, &t, &name).unwrap_or(out);
            ok_json(StatusCode::OK, &out)
        }
        (Method::DELETE, Some(name)) => {
            let mut store = shared.store.lock().expect("store");
            store.writes += 1;
            let key = Store::key(&t.group, &t.plural, &t.namespace, &name);
            match store.remove(&events, &key) {
                Some(obj) => {
                    store.cascade(&events, &key);
                    ok_json(StatusCode::OK, &obj)
                }
                None => status(
                    StatusCode::NOT_FOUND,
                    "NotFound",
                    format!("{} \"{name}\" not found", t.plural),
                ),
            }
        }
        (m, _) => status(
            StatusCode::METHOD_NOT_ALLOWED,
            "MethodNotAllowed",
            format!("{m} is not supported here"),
        ),
    }
}

/// Runs the simulated controllers after a write; returns the object as it now is.
fn after_write(
    store: &mut Store,
    events: &broadcast::Sender<LogEntry>,
    t: &Target,
    name: &str,
) -> Option<Value> {
    if t.group == "apps" && t.plural == "deployments" {
        store.reconcile_deployment(events, &t.namespace, name);
    }
    store
        .objects
        .get(&Store::key(&t.group, &t.plural, &t.namespace, name))
        .cloned()
}

fn watch(shared: Arc<Shared>, t: Target, query: BTreeMap<String, String>) -> Response {
    let since: u64 = query
        .get("resourceVersion")
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let timeout = Duration::from_secs(
        query
            .get("timeoutSeconds")
            .and_then(|s| s.parse().ok())
            .unwrap_or(290),
    );
    // Subscribe before reading the log, so no event falls between the two.
    let rx = shared.events.subscribe();
    let backlog: Vec<LogEntry> = {
        let store = shared.store.lock().expect("store");
        if since == 0 {
            // "Any version": start with the current objects as ADDED events.
            store
                .objects
                .iter()
                .filter(|(k, _)| k.0 == t.group && k.1 == t.plural)
                .map(|(k, v)| LogEntry {
                    rv: store.rv,
                    group: k.0.clone(),
                    plural: k.1.clone(),
                    namespace: k.2.clone(),
                    kind: "ADDED",
                    object: v.clone(),
                })
                .collect()
        } else {
            store.log.iter().filter(|e| e.rv > since).cloned().collect()
        }
    };
    let last_backlog = backlog.iter().map(|e| e.rv).max().unwrap_or(since);
    let wanted = move |e: &LogEntry| {
        e.group == t.group
            && e.plural == t.plural
            && (t.namespace.is_empty() || e.namespace == t.namespace)
            && labels_match(&e.object, query.get("labelSelector"))
            && fields_match(&e.object, query.get("fieldSelector"))
    };
    let stream = watch_lines(backlog, last_backlog, wanted, timeout, rx);
    Response::builder()
        .status(StatusCode::OK)
        .header("content-type", "application/json")
        .body(Body::from_stream(stream))
        .expect("watch response")
}

/// The backlog, then live events newer than it, until `timeout` (`timeoutSeconds`).
fn watch_lines(
    backlog: Vec<LogEntry>,
    last_backlog: u64,
    wanted: impl Fn(&LogEntry) -> bool + Send + 'static,
    timeout: Duration,
    rx: broadcast::Receiver<LogEntry>,
) -> impl futures::Stream<Item = Result<Bytes, std::io::Error>> + Send + 'static {
    let line =
        |e: &LogEntry| Bytes::from(format!("{}\n", json!({"type": e.kind, "object": e.object})));
    let first: Vec<Result<Bytes, std::io::Error>> = backlog
        .iter()
        .filter(|e| wanted(e))
        .map(|e| Ok(line(e)))
        .collect();
    let deadline = tokio::time::Instant::now() + timeout;
    let live = futures::stream::unfold((rx, wanted), move |(mut rx, wanted)| async move {
        loop {
            let next = tokio::time::timeout_at(deadline, rx.recv()).await;
            match next {
                Err(_) => return None,
                Ok(Err(broadcast::error::RecvError::Closed)) => return None,
                Ok(Err(broadcast::error::RecvError::Lagged(_))) => {
                    // The client must relist; end the stream like an expired watch.
                    return None;
                }
                Ok(Ok(e)) => {
                    if e.rv <= last_backlog || !wanted(&e) {
                        continue;
                    }
                    let bytes =
                        Bytes::from(format!("{}\n", json!({"type": e.kind, "object": e.object})));
                    return Some((Ok(bytes), (rx, wanted)));
                }
            }
        }
    });
    futures::StreamExt::chain(futures::stream::iter(first), live)
}
