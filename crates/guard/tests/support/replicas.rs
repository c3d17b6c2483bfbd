//! Test harness for the router, the local platform and the scrape source: finds
//! the real `ultra-boost` binary, makes builds of it, and drives steady load.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use guard::platform::local::{LocalPlatform, LocalTargetConfig};
use guard::platform::{Build, Target};
use http_body_util::{BodyExt, Empty};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use tokio_util::sync::CancellationToken;

/// `<workspace>/target/debug/ultra-boost` (or under `CARGO_TARGET_DIR`).
pub fn ultra_boost_bin() -> PathBuf {
    let manifest = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let workspace = manifest.join("../..");
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace.join("target"));
    let bin = target.join("debug").join("ultra-boost");
    assert!(
        bin.is_file(),
        "{} is missing: run `cargo build -p ultra-boost` first (scripts/test builds every binary before the tests)",
        bin.display()
    );
    bin
}

/// A build of ultra-boost: build number `number`, extra flags `args`.
/// Drains fast (the router has stopped sending before SIGTERM anyway).
pub fn build(number: &str, args: &[&str]) -> Build {
    let mut command = vec![ultra_boost_bin().display().to_string()];
    command.extend(["--drain-delay", "100ms", "--log-level", "warn"].map(String::from));
    command.extend(args.iter().map(|a| a.to_string()));
    Build {
        number: number.to_string(),
        commit: Some(format!("c0ffee{number}")),
        image: None,
        command,
        env: BTreeMap::new(),
    }
}

pub fn target() -> Target {
    Target {
        service: "ultra-boost".into(),
        environment: "test".into(),
    }
}

/// A local platform with one target of `replicas` replicas, router on port 0.
pub async fn platform(replicas: usize) -> (LocalPlatform, Target, SocketAddr) {
    let t = target();
    let mut cfg = LocalTargetConfig::new(t.clone(), "127.0.0.1:0".parse().unwrap());
    cfg.replicas = replicas;
    cfg.ready_timeout = Duration::from_secs(20);
    cfg.drain_timeout = Duration::from_secs(10);
    let mut registry = prometheus_client::registry::Registry::default();
    let p = LocalPlatform::start(vec![cfg], &mut registry)
        .await
        .expect("platform starts");
    let addr = p.router_addr(&t).unwrap();
    (p, t, addr)
}

pub type HttpClient = Client<HttpConnector, Empty<Bytes>>;

pub fn client() -> HttpClient {
    Client::builder(TokioExecutor::new()).build(HttpConnector::new())
}

/// One GET; returns the status and the build that answered (router header).
pub async fn get(client: &HttpClient, url: &str) -> Result<(u16, Option<String>), String> {
    let a = fetch(client, url).await?;
    Ok((a.status, a.relayed_by))
}

/// One answer and who gave it.
pub struct Answer {
    pub status: u16,
    /// The build named by the router's header: the router relayed the request.
    pub relayed_by: Option<String>,
    /// The build in ultra-boost's `GET /` body (also when a replica answered
    /// on a connection the router handed over, without the router's header).
    pub body_build: Option<String>,
}

/// One GET, with both ways of telling which build answered.
pub async fn fetch(client: &HttpClient, url: &str) -> Result<Answer, String> {
    let req = http::Request::get(url)
        .body(Empty::new())
        .map_err(|e| e.to_string())?;
    let resp = tokio::time::timeout(Duration::from_secs(10), client.request(req))
        .await
        .map_err(|_| "timeout".to_string())?
        .map_err(|e| format!("{e:?}"))?;
    let status = resp.status().as_u16();
    let relayed_by = resp
        .headers()
        .get(guard::router::BUILD_HEADER)
        .and_then(|v| v.to_str().ok())
        .map(String::from);
    let body = resp
        .into_body()
        .collect()
        .await
        .map_err(|e| format!("body: {e}"))?
        .to_bytes();
    let body_build = serde_json::from_slice::<serde_json::Value>(&body)
        .ok()
        .and_then(|v| v.get("build")?.as_str().map(String::from));
    Ok(Answer {
        status,
        relayed_by,
        body_build,
    })
}

/// What a load run saw.
#[derive(Clone, Debug, Default)]
pub struct Tally {
    pub by_code: BTreeMap<u16, u64>,
    pub by_build: BTreeMap<String, u64>,
    /// Answers a replica gave on a connection the router handed over (no
    /// router header; the build is read from the body), by build.
    pub handed_over_by_build: BTreeMap<String, u64>,
    pub errors: u64,
    pub first_errors: Vec<String>,
}

impl Tally {
    pub fn total(&self) -> u64 {
        self.by_code.values().sum::<u64>() + self.errors
    }

    /// Connection errors plus the router's own failure codes.
    pub fn router_failures(&self) -> u64 {
        self.errors
            + [502u16, 503, 504]
                .iter()
                .map(|c| self.by_code.get(c).copied().unwrap_or(0))
                .sum::<u64>()
    }
}

/// Steady concurrent GET load against `url` until stopped.
pub struct Load {
    stop: CancellationToken,
    tally: Arc<Mutex<Tally>>,
    /// Requests each worker has finished and tallied.
    finished: Vec<Arc<std::sync::atomic::AtomicU64>>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Load {
    /// `workers` loops, each sending one request at a time with `pause` between.
    pub fn start(url: String, workers: usize, pause: Duration) -> Self {
        let stop = CancellationToken::new();
        let tally = Arc::new(Mutex::new(Tally::default()));
        let finished: Vec<_> = (0..workers)
            .map(|_| Arc::new(std::sync::atomic::AtomicU64::new(0)))
            .collect();
        let tasks = finished
            .iter()
            .map(|done| {
                let stop = stop.clone();
                let tally = Arc::clone(&tally);
                let done = Arc::clone(done);
                let url = url.clone();
                tokio::spawn(async move {
                    let c = client();
                    while !stop.is_cancelled() {
                        let r = fetch(&c, &url).await;
                        {
                            let mut t = tally.lock().unwrap();
                            match r {
                                Ok(a) => {
                                    *t.by_code.entry(a.status).or_default() += 1;
                                    if let Some(b) = a.relayed_by {
                                        *t.by_build.entry(b).or_default() += 1;
                                    } else if let Some(b) = a.body_build {
                                        *t.by_build.entry(b.clone()).or_default() += 1;
                                        *t.handed_over_by_build.entry(b).or_default() += 1;
                                    }
                                }
                                Err(e) => {
                                    t.errors += 1;
                                    if t.first_errors.len() < 5 {
                                        t.first_errors.push(e);
                                    }
                                }
                            }
                        }
                        done.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                        tokio::time::sleep(pause).await;
                    }
                })
            })
            .collect();
        Self {
            stop,
            tally,
            finished,
            tasks,
        }
    }

    /// Waits until every request started before this call has been answered
    /// and tallied: each worker finishes two more requests (the one it may
    /// have had in flight, and one started after the call). Deadline 20 s.
    pub async fn settle(&self) {
        use std::sync::atomic::Ordering;
        let marks: Vec<u64> = self
            .finished
            .iter()
            .map(|f| f.load(Ordering::SeqCst))
            .collect();
        let deadline = Instant::now() + Duration::from_secs(20);
        while self
            .finished
            .iter()
            .zip(&marks)
            .any(|(f, mark)| f.load(Ordering::SeqCst) < mark + 2)
        {
            assert!(
                Instant::now() < deadline,
                "load did not settle: {:?}",
                self.tally()
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    pub fn tally(&self) -> Tally {
        self.tally.lock().unwrap().clone()
    }

    /// Waits until at least `n` more requests were answered (deadline 20 s).
    pub async fn wait_for(&self, n: u64) {
        let start = self.tally().total();
        let deadline = Instant::now() + Duration::from_secs(20);
        while self.tally().total() < start + n {
            assert!(
                Instant::now() < deadline,
                "load made no progress: {:?}",
                self.tally()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    pub async fn stop(self) -> Tally {
        self.stop.cancel();
        for t in self.tasks {
            let _ = t.await;
        }
        self.tally.lock().unwrap().clone()
    }
}

/// Polls `f` every 50 ms until it returns `Some`, or panics with `what` after `timeout`.
pub async fn poll<T, F, Fut>(timeout: Duration, what: &str, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f().await {
            return v;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {timeout:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// An ultra-boost process started by the test itself (not by the platform).
pub struct Replica {
    pub child: tokio::process::Child,
    pub addr: SocketAddr,
    _dir: tempfile::TempDir,
}

impl Replica {
    /// Starts ultra-boost on `listen` (e.g. `127.0.0.1:0`) with extra `args`,
    /// and waits until `/-/ready` answers 200.
    pub async fn start(listen: &str, build_number: &str, args: &[&str]) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("addr");
        let child = tokio::process::Command::new(ultra_boost_bin())
            .args(["--listen", listen, "--address-file"])
            .arg(&file)
            .args(["--drain-delay", "100ms", "--log-level", "warn"])
            .args(args)
            .env("BUILD_NUMBER", build_number)
            .kill_on_drop(true)
            .spawn()
            .expect("ultra-boost starts");
        let addr = poll(Duration::from_secs(20), "the address file", || {
            let file = file.clone();
            async move {
                let text = std::fs::read_to_string(&file).ok()?;
                text.trim().parse::<SocketAddr>().ok()
            }
        })
        .await;
        let c = client();
        let url = format!("http://{addr}/-/ready");
        poll(Duration::from_secs(20), "readiness", || {
            let c = c.clone();
            let url = url.clone();
            async move { matches!(get(&c, &url).await, Ok((200, _))).then_some(()) }
        })
        .await;
        Self {
            child,
            addr,
            _dir: dir,
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id().expect("still running")
    }

    /// Sends a signal with kill(1), e.g. "STOP", "CONT", "KILL".
    pub fn signal(&self, name: &str) {
        let ok = std::process::Command::new("kill")
            .arg(format!("-{name}"))
            .arg(self.pid().to_string())
            .status()
            .expect("kill runs")
            .success();
        assert!(ok, "kill -{name} failed");
    }
}
