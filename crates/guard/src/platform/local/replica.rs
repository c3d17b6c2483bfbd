//! One replica: a child process of guard running a build on a loopback port.
//!
//! Launch contract for a build's program (ultra-boost follows it):
//! - it binds the address given by `--listen ADDR` (guard passes `127.0.0.1:0`),
//! - writes the bound address (`127.0.0.1:40123`) to the file given by
//!   `--address-file PATH`, atomically, before `/-/ready` can answer 200,
//! - answers `GET /-/ready` with 200 once it can serve, and drains on SIGTERM.
//!
//! The two flags are appended to the build's command, unless an argument
//! already contains the placeholder `{listen}` or `{address_file}`: then guard
//! substitutes them there instead (for programs with other flag names).
//!
//! Optional: an argument containing `{unix_socket}` gets a socket path that
//! the program must also serve on (ultra-boost: `--unix-socket {unix_socket}`)
//! before it writes its address file. The router then reaches the replica over
//! that socket: on one machine a Unix socket costs the kernel much less per
//! request than a second TCP connection over loopback (see
//! `bench/router/run.sh`). Programs without such an option just leave the
//! placeholder out and are reached over TCP.
//!
//! Optional: an argument containing `{handoff_socket}` gets a socket path on
//! which the program takes client connections the router hands over
//! (ultra-boost: `--handoff-socket {handoff_socket}`; protocol in ultra-boost's
//! docs). While the service runs one release the router then hands
//! connections over instead of relaying their requests (see the router docs).
//! `BUILD_NUMBER` and `GIT_COMMIT` are set from the build unless its `env` sets
//! them.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use tokio::io::{AsyncBufReadExt, AsyncRead, BufReader};
use tokio::sync::watch;

use super::sys;
use crate::platform::{Build, PlatformError};
use crate::router::Backend;

/// Lines of a replica's output kept to explain why it failed to start.
const TAIL_LINES: usize = 20;

/// A running (or exited) replica process.
#[derive(Debug)]
pub(crate) struct Process {
    pid: u32,
    exit: watch::Receiver<Option<String>>,
    tail: Arc<Mutex<VecDeque<String>>>,
}

impl Process {
    pub(crate) fn pid(&self) -> u32 {
        self.pid
    }

    /// `Some(description)` once the process has exited.
    pub(crate) fn exited(&self) -> Option<String> {
        self.exit.borrow().clone()
    }

    pub(crate) fn signal(&self, signal: libc::c_int) {
        if self.exited().is_some() {
            return;
        }
        if let Err(err) = sys::signal_group(self.pid, signal) {
            tracing::warn!(pid = self.pid, signal, error = %err, "could not signal replica");
        }
    }

    /// Waits until the process exits or `timeout` passes; true when it exited.
    pub(crate) async fn wait_exit(&self, timeout: Duration) -> bool {
        let mut rx = self.exit.clone();
        tokio::time::timeout(timeout, rx.wait_for(|e| e.is_some()))
            .await
            .is_ok()
    }

    fn tail(&self) -> String {
        let tail = self.tail.lock().unwrap_or_else(|e| e.into_inner());
        if tail.is_empty() {
            "(no output)".to_string()
        } else {
            tail.iter().cloned().collect::<Vec<_>>().join("\n")
        }
    }
}

/// A replica that answered ready: its process and its router backend.
#[derive(Debug)]
pub(crate) struct Replica {
    pub(crate) build: String,
    pub(crate) process: Arc<Process>,
    pub(crate) backend: Arc<Backend>,
}

impl Replica {
    pub(crate) fn alive(&self) -> bool {
        self.process.exited().is_none()
    }
}

pub(crate) type ProbeClient = Client<HttpConnector, Full<Bytes>>;

pub(crate) fn probe_client() -> ProbeClient {
    let mut connector = HttpConnector::new();
    connector.set_connect_timeout(Some(Duration::from_secs(1)));
    Client::builder(TokioExecutor::new())
        .pool_max_idle_per_host(1)
        .build(connector)
}

/// The placeholder for the replica's Unix socket path (see the module doc).
pub(crate) const UNIX_SOCKET_PLACEHOLDER: &str = "{unix_socket}";
/// The placeholder for the replica's handoff socket path (see the module doc).
pub(crate) const HANDOFF_SOCKET_PLACEHOLDER: &str = "{handoff_socket}";

/// Builds the argument list: placeholders substituted, or the flags appended.
pub(crate) fn arguments(
    build: &Build,
    address_file: &Path,
    unix_socket: &Path,
    handoff_socket: &Path,
) -> Vec<String> {
    let file = address_file.display().to_string();
    let socket = unix_socket.display().to_string();
    let handoff = handoff_socket.display().to_string();
    let listen = "127.0.0.1:0";
    let args: Vec<String> = build
        .command
        .iter()
        .skip(1)
        .map(|a| {
            a.replace(UNIX_SOCKET_PLACEHOLDER, &socket)
                .replace(HANDOFF_SOCKET_PLACEHOLDER, &handoff)
        })
        .collect();
    let templated = args
        .iter()
        .any(|a| a.contains("{listen}") || a.contains("{address_file}"));
    if templated {
        args.into_iter()
            .map(|a| {
                a.replace("{listen}", listen)
                    .replace("{address_file}", &file)
            })
            .collect()
    } else {
        let mut args = args;
        args.extend([
            "--listen".to_string(),
            listen.to_string(),
            "--address-file".to_string(),
            file,
        ]);
        args
    }
}

/// Whether the build's command names `placeholder`.
fn names(build: &Build, placeholder: &str) -> bool {
    build
        .command
        .iter()
        .skip(1)
        .any(|a| a.contains(placeholder))
}

/// The socket `placeholder` names, when the build asks for it and the
/// program created it (a warning when it did not).
fn created_socket(build: &Build, pid: u32, placeholder: &str, path: PathBuf) -> Option<PathBuf> {
    if !names(build, placeholder) {
        return None;
    }
    if path.exists() {
        return Some(path);
    }
    tracing::warn!(
        build = %build.number, pid, path = %path.display(),
        "the build's command names {placeholder} but the program did not create that socket; going without it"
    );
    None
}

/// Where replica `id` puts its socket `suffix`: in `dir`, unless that path
/// would pass the kernel's limit for socket paths (108 bytes with the final
/// NUL), then in the system's temporary directory.
fn socket_path(dir: &Path, id: u64, suffix: &str) -> PathBuf {
    const SUN_PATH_MAX: usize = 107;
    let name = format!("replica-{id}.{suffix}");
    let in_dir = dir.join(&name);
    if in_dir.as_os_str().len() <= SUN_PATH_MAX {
        return in_dir;
    }
    std::env::temp_dir().join(format!("guard-{}-{name}", std::process::id()))
}

/// Starts a replica of `build` and waits until `/-/ready` answers 200.
/// On any failure the process is killed and `NotReady` (or `Action` when it
/// could not even be spawned) explains why, with the program's last output.
pub(crate) async fn start(
    build: &Build,
    dir: &Path,
    id: u64,
    ready_timeout: Duration,
    client: &ProbeClient,
) -> Result<Replica, PlatformError> {
    let Some(program) = build.command.first() else {
        return Err(PlatformError::Action {
            action: format!("starting build {}", build.number),
            detail: "the build has an empty command; the local platform needs a program to run"
                .into(),
        });
    };
    let address_file = dir.join(format!("replica-{id}.addr"));
    let _ = std::fs::remove_file(&address_file);
    let unix_socket = socket_path(dir, id, "sock");
    let handoff_socket = socket_path(dir, id, "handoff");
    let mut cmd = tokio::process::Command::new(program);
    cmd.args(arguments(
        build,
        &address_file,
        &unix_socket,
        &handoff_socket,
    ))
    .stdin(Stdio::null())
    .stdout(Stdio::piped())
    .stderr(Stdio::piped())
    .kill_on_drop(true);
    if !build.env.contains_key("BUILD_NUMBER") {
        cmd.env("BUILD_NUMBER", &build.number);
    }
    if let (Some(commit), false) = (&build.commit, build.env.contains_key("GIT_COMMIT")) {
        cmd.env("GIT_COMMIT", commit);
    }
    cmd.envs(&build.env);
    sys::die_with_parent(&mut cmd);
    let mut child = cmd.spawn().map_err(|err| PlatformError::Action {
        action: format!("starting build {} ({program})", build.number),
        detail: err.to_string(),
    })?;
    let pid = child.id().unwrap_or(0);
    let tail = Arc::new(Mutex::new(VecDeque::with_capacity(TAIL_LINES)));
    if let Some(out) = child.stdout.take() {
        tokio::spawn(forward_output(
            out,
            build.number.clone(),
            pid,
            Arc::clone(&tail),
        ));
    }
    if let Some(err) = child.stderr.take() {
        tokio::spawn(forward_output(
            err,
            build.number.clone(),
            pid,
            Arc::clone(&tail),
        ));
    }
    let (tx, exit) = watch::channel(None);
    let number = build.number.clone();
    tokio::spawn(async move {
        let status = match child.wait().await {
            Ok(s) => s.to_string(),
            Err(e) => format!("wait failed: {e}"),
        };
        tracing::info!(build = %number, pid, %status, "replica exited");
        let _ = tx.send(Some(status));
    });
    let process = Arc::new(Process { pid, exit, tail });
    tracing::info!(build = %build.number, pid, "replica started");

    match wait_ready(&process, &address_file, ready_timeout, client).await {
        Ok(addr) => {
            let _ = std::fs::remove_file(&address_file);
            let backend = Backend::with_sockets(
                build.number.clone(),
                addr,
                created_socket(build, pid, UNIX_SOCKET_PLACEHOLDER, unix_socket),
                created_socket(build, pid, HANDOFF_SOCKET_PLACEHOLDER, handoff_socket),
            );
            backend.set_ready(true);
            tracing::info!(build = %build.number, pid, %addr, unix_socket = ?backend.unix_socket(), handoff_socket = ?backend.handoff_socket(), "replica ready");
            Ok(Replica {
                build: build.number.clone(),
                process,
                backend,
            })
        }
        Err(detail) => {
            let _ = std::fs::remove_file(&address_file);
            process.signal(libc::SIGKILL);
            process.wait_exit(Duration::from_secs(5)).await;
            Err(PlatformError::NotReady {
                build: build.number.clone(),
                seconds: ready_timeout.as_secs(),
                detail: format!("{detail}; last output:\n{}", process.tail()),
            })
        }
    }
}

async fn wait_ready(
    process: &Process,
    address_file: &PathBuf,
    timeout: Duration,
    client: &ProbeClient,
) -> Result<SocketAddr, String> {
    let deadline = Instant::now() + timeout;
    let mut addr: Option<SocketAddr> = None;
    loop {
        if let Some(status) = process.exited() {
            return Err(format!("the process exited ({status}) before it was ready"));
        }
        if addr.is_none()
            && let Ok(text) = std::fs::read_to_string(address_file)
            && text.ends_with('\n')
        {
            match text.trim().parse::<SocketAddr>() {
                Ok(a) => addr = Some(a),
                Err(_) => {
                    return Err(format!(
                        "{} holds {:?}, not an address like 127.0.0.1:40123",
                        address_file.display(),
                        text.trim()
                    ));
                }
            }
        }
        if let Some(a) = addr
            && probe(client, a).await
        {
            return Ok(a);
        }
        if Instant::now() >= deadline {
            return Err(match addr {
                None => format!("it never wrote its address to {}", address_file.display()),
                Some(a) => format!("http://{a}/-/ready never answered 200"),
            });
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

async fn probe(client: &ProbeClient, addr: SocketAddr) -> bool {
    let Ok(req) =
        http::Request::get(format!("http://{addr}/-/ready")).body(Full::new(Bytes::new()))
    else {
        return false;
    };
    match tokio::time::timeout(Duration::from_secs(1), client.request(req)).await {
        Ok(Ok(resp)) => {
            let ok = resp.status() == http::StatusCode::OK;
            let _ = resp.into_body().collect().await;
            ok
        }
        _ => false,
    }
}

async fn forward_output(
    stream: impl AsyncRead + Unpin,
    build: String,
    pid: u32,
    tail: Arc<Mutex<VecDeque<String>>>,
) {
    let mut lines = BufReader::new(stream).lines();
    while let Ok(Some(line)) = lines.next_line().await {
        tracing::debug!(target: "guard::replica", build = %build, pid, "{line}");
        let mut t = tail.lock().unwrap_or_else(|e| e.into_inner());
        if t.len() == TAIL_LINES {
            t.pop_front();
        }
        t.push_back(line);
    }
}
