//! Harness for tests that drive the real `guard serve` process: writes a
//! guard.yaml into a temp dir, starts guard on loopback port 0 (its address
//! comes back through `--address-file`), talks to its API, generates load
//! through its router and kills it with SIGKILL.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::Value;

/// `<workspace>/target/debug/ultra-boost`.
pub fn ultra_boost_bin() -> PathBuf {
    let bin = PathBuf::from(env!("CARGO_BIN_EXE_guard")).with_file_name("ultra-boost");
    assert!(
        bin.is_file(),
        "{} is missing: run `cargo build -p ultra-boost` first",
        bin.display()
    );
    bin
}

/// A guard.yaml for one service `ultra-boost` in environment `test`: build 1
/// good (initial), 2 good, 3 answers 5 % errors, 4 adds 300 ms. Replicas are
/// started as `guard demo` starts them: relayed requests over a Unix socket,
/// client connections handed over while one release runs.
pub fn config(watch: &str) -> String {
    format!(
        r#"store: guard.db
api:
  listen: 127.0.0.1:0
engine:
  tick: 500ms
  stale_after: 3s
  baseline_window: 30s
policy:
  multiples: [14.4, 50]
  min_verify_seconds: 2
  max_verify_seconds: 60
  min_events: 100
  max_missing_seconds: 10
services:
  - name: ultra-boost
    replicas: 2
    watch: {watch}
    build:
      command: ["{ub}", "--drain-delay", "100ms", "--log-level", "warn", "--unix-socket", "{{unix_socket}}", "--handoff-socket", "{{handoff_socket}}"]
    builds:
      "3":
        env: {{ ULTRA_BOOST_FAULT_ERROR_RATE: "0.05", ULTRA_BOOST_FAULT_SEED: "7" }}
      "4":
        env: {{ ULTRA_BOOST_FAULT_LATENCY_MS: "300" }}
    environments:
      - name: test
        router_listen: 127.0.0.1:0
        initial_build: "1"
    slos:
      - name: availability
        objective: 99.9
        sli: {{ type: availability, route: "/" }}
      - name: latency
        objective: 99
        sli: {{ type: latency, threshold: 200ms, route: "/" }}
"#,
        ub = ultra_boost_bin().display()
    )
}

/// A running `guard serve`.
pub struct Guard {
    child: Child,
    pub api: String,
    pub dir: PathBuf,
    log: PathBuf,
}

impl Guard {
    /// Starts guard with `dir/guard.yaml`; returns once its API answers.
    pub fn start(dir: &Path, env: &[(&str, &str)]) -> Guard {
        let addr_file = dir.join("api.addr");
        let _ = std::fs::remove_file(&addr_file);
        let n = std::fs::read_dir(dir).map(|d| d.count()).unwrap_or(0);
        let log = dir.join(format!("guard-{n}.log"));
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_guard"));
        cmd.args(["serve", "--config"])
            .arg(dir.join("guard.yaml"))
            .arg("--address-file")
            .arg(&addr_file)
            .env_remove("GUARD_API_TOKEN")
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).expect("log file"));
        for (k, v) in env {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().expect("spawn guard serve");
        let deadline = Instant::now() + Duration::from_secs(20);
        let api = loop {
            if let Ok(a) = std::fs::read_to_string(&addr_file)
                && !a.is_empty()
            {
                break format!("http://{}", a.trim());
            }
            if let Ok(Some(status)) = child.try_wait() {
                panic!(
                    "guard serve exited with {status}:\n{}",
                    std::fs::read_to_string(&log).unwrap_or_default()
                );
            }
            assert!(
                Instant::now() < deadline,
                "guard serve did not listen within 20 s:\n{}",
                std::fs::read_to_string(&log).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(50));
        };
        Guard {
            child,
            api,
            dir: dir.to_path_buf(),
            log,
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// SIGKILL, then reap.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// SIGTERM, then waits up to `within` for guard to exit; its status, or
    /// `None` if it was still running (then it is killed).
    pub fn terminate(&mut self, within: Duration) -> Option<std::process::ExitStatus> {
        unsafe_free_term(self.child.id());
        let deadline = Instant::now() + within;
        while Instant::now() < deadline {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Some(status);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        self.kill();
        None
    }

    pub fn logs(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Guard {
    fn drop(&mut self) {
        if let Ok(Some(_)) = self.child.try_wait() {
            return; // Already gone (killed or terminated by the test).
        }
        // SIGTERM for a clean drain; SIGKILL if it takes too long.
        unsafe_free_term(self.child.id());
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        self.kill();
    }
}

fn unsafe_free_term(pid: u32) {
    let _ = Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status();
}

/// Bearer token the harness's client sends (set once by tests that configure one).
pub static TOKEN: std::sync::OnceLock<String> = std::sync::OnceLock::new();

pub fn client() -> reqwest::Client {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let mut headers = reqwest::header::HeaderMap::new();
    if let Some(t) = TOKEN.get()
        && let Ok(v) = reqwest::header::HeaderValue::from_str(&format!("Bearer {t}"))
    {
        headers.insert(reqwest::header::AUTHORIZATION, v);
    }
    reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .default_headers(headers)
        .build()
        .expect("client")
}

/// A client without the token.
pub fn anonymous() -> reqwest::Client {
    let _ = rustls::crypto::ring::default_provider().install_default();
    reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .expect("client")
}

pub async fn get(api: &str, path: &str) -> Value {
    let r = client()
        .get(format!("{api}{path}"))
        .send()
        .await
        .expect("GET");
    assert!(r.status().is_success(), "GET {path}: {}", r.status());
    r.json().await.expect("json")
}

pub async fn post(api: &str, path: &str, body: Value) -> (u16, Value) {
    let r = client()
        .post(format!("{api}{path}"))
        .json(&body)
        .send()
        .await
        .expect("POST");
    let code = r.status().as_u16();
    (code, r.json().await.unwrap_or(Value::Null))
}

/// Asks guard to deploy `build` of `ultra-boost` to `test`; returns the rollout id.
pub async fn deploy(api: &str, build: &str) -> i64 {
    let (code, created) = post(
        api,
        "/api/v1/deployments",
        serde_json::json!({"service": "ultra-boost", "environment": "test", "build": build}),
    )
    .await;
    assert_eq!(code, 201, "{created}");
    created["id"].as_i64().expect("id")
}

/// Serves `app` on a loopback port from the OS; returns `http://<addr>`.
pub async fn serve_on_loopback(app: axum::Router) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let url = format!("http://{}", listener.local_addr().expect("addr"));
    tokio::spawn(async move { axum::serve(listener, app).await });
    url
}

/// Polls the rollout until `pred` holds on its state name; returns the rollout detail.
pub async fn wait_state(
    api: &str,
    id: i64,
    what: &str,
    deadline: Duration,
    pred: impl Fn(&str) -> bool,
) -> Value {
    let start = Instant::now();
    loop {
        if let Ok(r) = client()
            .get(format!("{api}/api/v1/rollouts/{id}"))
            .send()
            .await
            && let Ok(v) = r.json::<Value>().await
            && pred(v["state"].as_str().unwrap_or(""))
        {
            return v;
        }
        assert!(
            start.elapsed() < deadline,
            "rollout {id} never reached {what} within {deadline:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The router address from `/api/v1/status`.
pub async fn router(api: &str) -> String {
    let status = get(api, "/api/v1/status").await;
    format!(
        "http://{}/",
        status[0]["platform"]["router"]
            .as_str()
            .expect("router address")
    )
}

/// Steady load to whatever URL `target` holds (it changes across restarts).
pub struct Load {
    pub target: Arc<Mutex<String>>,
    pub sent: Arc<AtomicU64>,
    pub errors: Arc<AtomicU64>,
    stop: tokio_util::sync::CancellationToken,
}

impl Load {
    pub fn start(url: String, rps: u64) -> Load {
        let target = Arc::new(Mutex::new(url));
        let sent = Arc::new(AtomicU64::new(0));
        let errors = Arc::new(AtomicU64::new(0));
        let stop = tokio_util::sync::CancellationToken::new();
        let (t, s, e, st) = (target.clone(), sent.clone(), errors.clone(), stop.clone());
        tokio::spawn(async move {
            let c = client();
            let mut tick = tokio::time::interval(Duration::from_micros(1_000_000 / rps));
            loop {
                tokio::select! {
                    _ = st.cancelled() => return,
                    _ = tick.tick() => {
                        let url = t.lock().map(|u| u.clone()).unwrap_or_default();
                        let (c, s, e) = (c.clone(), s.clone(), e.clone());
                        tokio::spawn(async move {
                            s.fetch_add(1, Ordering::Relaxed);
                            if c.get(url).send().await.is_err() {
                                e.fetch_add(1, Ordering::Relaxed);
                            }
                        });
                    }
                }
            }
        });
        Load {
            target,
            sent,
            errors,
            stop,
        }
    }

    pub fn retarget(&self, url: String) {
        if let Ok(mut t) = self.target.lock() {
            *t = url;
        }
    }
}

impl Drop for Load {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

/// State names of the rollout's steps, in order.
pub fn step_states(detail: &Value) -> Vec<String> {
    detail["steps"]
        .as_array()
        .map(|s| {
            s.iter()
                .map(|x| x["to"].as_str().unwrap_or("").to_string())
                .collect()
        })
        .unwrap_or_default()
}

/// Live `ultra-boost` children of `pid`.
pub fn replicas_of(pid: u32) -> usize {
    replica_pids(pid).len()
}

/// Process ids of the live `ultra-boost` children of `pid`.
pub fn replica_pids(pid: u32) -> Vec<u32> {
    let mut pids = vec![];
    if let Ok(dir) = std::fs::read_dir("/proc") {
        for e in dir.flatten() {
            let stat = std::fs::read_to_string(e.path().join("stat")).unwrap_or_default();
            // pid (comm) state ppid ...
            if let Some(rest) = stat.rsplit_once(") ") {
                let fields: Vec<&str> = rest.1.split_whitespace().collect();
                let comm_ok = stat.contains("(ultra-boost)");
                if comm_ok
                    && fields.get(1) == Some(&pid.to_string().as_str())
                    && fields.first() != Some(&"Z")
                    && let Some(child) = e.file_name().to_str().and_then(|n| n.parse().ok())
                {
                    pids.push(child);
                }
            }
        }
    }
    pids
}

/// Whether process `pid` still runs (a zombie does not).
pub fn is_running(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| s.rsplit_once(") ").map(|(_, rest)| !rest.starts_with('Z')))
        .unwrap_or(false)
}
