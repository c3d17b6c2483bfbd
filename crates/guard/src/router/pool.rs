//! The router's replica set: releases (groups of backends) with a traffic weight
//! each, and the pick of one backend per request.
//!
//! A [`Pool`] is immutable once built (only the per-backend atomics move); the
//! router swaps whole pools atomically, so a request sees either the old set or
//! the new one, never half of a change.
//!
//! Each [`Backend`] keeps its own idle keep-alive HTTP/1 connections
//! (hyper `SendRequest` handles, one request in flight per connection): a
//! request takes one (the most recently used first), opens a new one when none
//! is idle, and gives it back when the response body has ended. A connection
//! whose response was abandoned midway is closed, never reused.
//!
//! A backend started with a handoff socket also keeps the channel on which the
//! router hands it whole client connections (see the router's docs).

use std::io::IoSlice;
use std::net::SocketAddr;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;
use prometheus_client::metrics::counter::Counter;

use crate::platform::Role;

/// One replica behind the router.
#[derive(Debug)]
pub struct Backend {
    id: u64,
    build: String,
    addr: SocketAddr,
    /// When set, the router reaches the replica over this Unix domain socket
    /// instead of TCP to `addr` (same machine: the kernel does less per
    /// request; `addr` still names the replica in logs and for scrapes).
    unix_socket: Option<PathBuf>,
    /// Where the replica takes client connections handed over (ultra-boost's
    /// `--handoff-socket`), and the open channel to it.
    handoff: Option<HandoffChannel>,
    /// The build as a header value, made once rather than per request.
    build_header: Option<http::HeaderValue>,
    /// `Host` for requests that came without one (HTTP/1.0 clients, probes).
    host_header: http::HeaderValue,
    ready: AtomicBool,
    in_flight: AtomicU64,
    /// Idle keep-alive connections, most recently used last.
    idle: Mutex<Vec<Sender>>,
}

/// The router's end of a replica's handoff socket, connected on first use.
#[derive(Debug)]
struct HandoffChannel {
    path: PathBuf,
    stream: Mutex<Option<std::os::unix::net::UnixStream>>,
}

/// The one-byte messages of the handoff protocol (ultra-boost's `handoff.rs`).
const HANDOFF_CONNECTION: u8 = b'c';
const HANDOFF_RECYCLE: u8 = b'r';

impl HandoffChannel {
    /// Sends one message, with `fd` attached when given, without blocking: a
    /// full channel is an error (the caller relays the connection instead). A
    /// failed channel is dropped and reopened on the next message. With
    /// `allowed`, nothing is sent (`Ok(false)`) unless it holds once the
    /// channel is ours: a connection is never handed over after the recycle
    /// that follows switching handoff off.
    fn send(
        &self,
        byte: u8,
        fd: Option<&std::net::TcpStream>,
        allowed: Option<&AtomicBool>,
    ) -> std::io::Result<bool> {
        use nix::sys::socket::{ControlMessage, MsgFlags, sendmsg};
        let mut guard = self.stream.lock().unwrap_or_else(|e| e.into_inner());
        if allowed.is_some_and(|a| !a.load(Ordering::Acquire)) {
            return Ok(false);
        }
        if guard.is_none() {
            if fd.is_none() {
                // Nothing was handed over on a channel never opened.
                return Ok(true);
            }
            let stream = std::os::unix::net::UnixStream::connect(&self.path)?;
            stream.set_nonblocking(true)?;
            *guard = Some(stream);
        }
        let Some(stream) = guard.as_ref() else {
            return Ok(true);
        };
        let fds = fd.map(|s| [s.as_raw_fd()]);
        let cmsgs: Vec<ControlMessage> = fds
            .as_ref()
            .map(|f| vec![ControlMessage::ScmRights(f)])
            .unwrap_or_default();
        let sent = sendmsg::<()>(
            stream.as_raw_fd(),
            &[IoSlice::new(&[byte])],
            &cmsgs,
            MsgFlags::MSG_NOSIGNAL | MsgFlags::MSG_DONTWAIT,
            None,
        );
        match sent {
            Ok(1) => Ok(true),
            Ok(_) => {
                *guard = None;
                Err(std::io::Error::other("the handoff channel took no byte"))
            }
            Err(errno) => {
                let err = std::io::Error::from(errno);
                if err.kind() != std::io::ErrorKind::WouldBlock {
                    *guard = None;
                }
                Err(err)
            }
        }
    }
}

/// The sending half of one keep-alive connection to a backend.
pub(crate) type Sender = SendRequest<Full<Bytes>>;

/// At most this many idle connections are kept per backend; more are closed.
const MAX_IDLE: usize = 512;

/// Why no connection to a backend could be had (the request was not sent).
#[derive(Debug, thiserror::Error)]
pub(crate) enum ConnectError {
    /// The TCP connect failed (refused, unreachable, ...).
    #[error("connect: {0}")]
    Io(#[from] std::io::Error),
    /// The TCP connect did not finish within the connect timeout.
    #[error("connect timed out")]
    Timeout,
    /// The HTTP/1 handshake on the new connection failed.
    #[error("handshake: {0}")]
    Handshake(#[from] hyper::Error),
}

async fn within<S>(
    limit: Duration,
    connect: impl std::future::Future<Output = std::io::Result<S>>,
) -> Result<S, ConnectError> {
    match tokio::time::timeout(limit, connect).await {
        Ok(stream) => Ok(stream?),
        Err(_elapsed) => Err(ConnectError::Timeout),
    }
}

/// HTTP/1 on a fresh stream; its connection task runs until the stream closes.
async fn handshake<S>(stream: S) -> Result<Sender, ConnectError>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let (sender, conn) = hyper::client::conn::http1::Builder::new()
        .handshake(TokioIo::new(stream))
        .await?;
    tokio::spawn(async move {
        if let Err(err) = conn.await {
            tracing::debug!(error = %err, "router connection to a replica ended with an error");
        }
    });
    Ok(sender)
}

static NEXT_BACKEND_ID: AtomicU64 = AtomicU64::new(1);

impl Backend {
    /// A backend for a replica of `build` listening on `addr`. It starts
    /// **not ready**: whoever adds it to a pool either waited for readiness and
    /// calls [`Backend::set_ready`], or lets the router's poller find out.
    pub fn new(build: impl Into<String>, addr: SocketAddr) -> Arc<Self> {
        Self::with_sockets(build, addr, None, None)
    }

    /// Like [`Backend::new`], for a replica that also serves on the Unix
    /// socket `path`: the router's requests and readiness probes go there.
    pub fn with_unix_socket(
        build: impl Into<String>,
        addr: SocketAddr,
        path: PathBuf,
    ) -> Arc<Self> {
        Self::with_sockets(build, addr, Some(path), None)
    }

    /// A backend with an optional Unix socket for requests and an optional
    /// handoff socket for whole client connections.
    pub fn with_sockets(
        build: impl Into<String>,
        addr: SocketAddr,
        unix_socket: Option<PathBuf>,
        handoff_socket: Option<PathBuf>,
    ) -> Arc<Self> {
        let build = build.into();
        let host_header = http::HeaderValue::from_str(&addr.to_string())
            .unwrap_or_else(|_| http::HeaderValue::from_static("127.0.0.1"));
        Arc::new(Self {
            id: NEXT_BACKEND_ID.fetch_add(1, Ordering::Relaxed),
            build_header: http::HeaderValue::from_str(&build).ok(),
            build,
            addr,
            unix_socket,
            handoff: handoff_socket.map(|path| HandoffChannel {
                path,
                stream: Mutex::new(None),
            }),
            host_header,
            ready: AtomicBool::new(false),
            in_flight: AtomicU64::new(0),
            idle: Mutex::new(Vec::new()),
        })
    }

    pub(crate) fn host_header(&self) -> &http::HeaderValue {
        &self.host_header
    }

    /// A connection ready for one request: an idle one if any is still open,
    /// else a new one. An error means nothing was sent.
    pub(crate) async fn checkout(&self, connect_timeout: Duration) -> Result<Sender, ConnectError> {
        loop {
            let idle = self.idle.lock().unwrap_or_else(|e| e.into_inner()).pop();
            let Some(mut sender) = idle else { break };
            if sender.is_closed() {
                continue;
            }
            // Ready at once unless its connection task has not yet seen the
            // end of the previous response; an error means it closed.
            if sender.ready().await.is_ok() {
                return Ok(sender);
            }
        }
        self.connect(connect_timeout).await
    }

    async fn connect(&self, connect_timeout: Duration) -> Result<Sender, ConnectError> {
        match &self.unix_socket {
            Some(path) => {
                let stream = within(connect_timeout, tokio::net::UnixStream::connect(path)).await?;
                handshake(stream).await
            }
            None => {
                let stream =
                    within(connect_timeout, tokio::net::TcpStream::connect(self.addr)).await?;
                let _ = stream.set_nodelay(true);
                handshake(stream).await
            }
        }
    }

    /// The Unix socket the router uses for this replica, if any.
    pub fn unix_socket(&self) -> Option<&Path> {
        self.unix_socket.as_deref()
    }

    /// The handoff socket of this replica, if it takes connections handed over.
    pub fn handoff_socket(&self) -> Option<&Path> {
        self.handoff.as_ref().map(|h| h.path.as_path())
    }

    /// Hands `client` over to the replica if `allowed` still holds:
    /// `Ok(true)` when it was; otherwise the router still owns it.
    pub(crate) fn hand_over(
        &self,
        client: &std::net::TcpStream,
        allowed: &AtomicBool,
    ) -> std::io::Result<bool> {
        match &self.handoff {
            Some(h) => h.send(HANDOFF_CONNECTION, Some(client), Some(allowed)),
            None => Err(std::io::Error::other(
                "the replica takes no handed-over connections",
            )),
        }
    }

    /// Asks the replica to close the connections handed over so far after
    /// their next response, so their clients come back through the router.
    pub(crate) fn recycle(&self) {
        if let Some(h) = &self.handoff
            && let Err(err) = h.send(HANDOFF_RECYCLE, None, None)
        {
            tracing::warn!(build = %self.build, addr = %self.addr, error = %err, "could not ask the replica to recycle the connections handed over");
        }
    }

    /// Gives back a connection whose last response has fully arrived.
    pub(crate) fn checkin(&self, sender: Sender) {
        if sender.is_closed() {
            return;
        }
        let mut idle = self.idle.lock().unwrap_or_else(|e| e.into_inner());
        if idle.len() < MAX_IDLE {
            idle.push(sender);
        }
    }

    /// Closes the idle connections (a backend that left the pool).
    pub(crate) fn close_idle(&self) {
        self.idle.lock().unwrap_or_else(|e| e.into_inner()).clear();
    }

    /// Unique within this process.
    pub fn id(&self) -> u64 {
        self.id
    }

    pub fn build(&self) -> &str {
        &self.build
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    pub(crate) fn build_header(&self) -> Option<&http::HeaderValue> {
        self.build_header.as_ref()
    }

    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Acquire)
    }

    pub fn set_ready(&self, ready: bool) {
        self.ready.store(ready, Ordering::Release);
    }

    /// Requests the router has sent to this backend whose response is not yet
    /// finished (body included). A drained backend has 0.
    pub fn in_flight(&self) -> u64 {
        self.in_flight.load(Ordering::Acquire)
    }

    pub(crate) fn begin(self: &Arc<Self>) -> InFlight {
        self.in_flight.fetch_add(1, Ordering::AcqRel);
        InFlight(Arc::clone(self))
    }
}

/// Counts one in-flight request until dropped (after the response body ends).
#[derive(Debug)]
pub(crate) struct InFlight(Arc<Backend>);

impl InFlight {
    pub(crate) fn backend(&self) -> &Arc<Backend> {
        &self.0
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::AcqRel);
    }
}

/// One release in the pool.
#[derive(Clone, Debug)]
pub struct GroupSpec {
    pub build: String,
    pub role: Role,
    /// Relative traffic weight (any non-negative number; normalised over the
    /// groups that have a ready backend). 0 means "only when nothing else is ready".
    pub weight: f64,
    pub backends: Vec<Arc<Backend>>,
}

#[derive(Debug)]
pub(crate) struct Group {
    pub(crate) spec: GroupSpec,
    rr: AtomicUsize,
    /// Per response code counters (index = code), resolved on first use from
    /// the metric family so the hot path neither hashes label sets nor locks.
    pub(crate) by_code: Box<[OnceLock<Counter>]>,
}

/// Response codes below this have a slot in [`Group::by_code`].
pub(crate) const CODE_SLOTS: usize = 600;

/// An immutable replica set.
#[derive(Debug, Default)]
pub(crate) struct Pool {
    pub(crate) groups: Vec<Group>,
    /// One release whose every replica takes handed-over connections.
    pub(crate) hands_over: bool,
}

/// The index of the group and the backend chosen for one request.
pub(crate) struct Pick {
    pub(crate) group: usize,
    pub(crate) backend: Arc<Backend>,
}

impl Pool {
    pub(crate) fn new(specs: Vec<GroupSpec>) -> Self {
        let hands_over = specs.len() == 1
            && specs
                .iter()
                .all(|g| g.backends.iter().all(|b| b.handoff.is_some()));
        Self {
            hands_over,
            groups: specs
                .into_iter()
                .map(|spec| Group {
                    spec,
                    rr: AtomicUsize::new(0),
                    by_code: (0..CODE_SLOTS).map(|_| OnceLock::new()).collect(),
                })
                .collect(),
        }
    }

    pub(crate) fn backends(&self) -> impl Iterator<Item = &Arc<Backend>> {
        self.groups.iter().flat_map(|g| g.spec.backends.iter())
    }

    /// Chooses a backend for request number `seq`, skipping backends in `tried`.
    ///
    /// The group is chosen by weight with a low-discrepancy sequence (the golden
    /// ratio additive recurrence on `seq`): over any window of n requests a group
    /// of share w receives n·w ± O(log n) of them, so canary shares are exact
    /// without a random number generator. If the chosen group has no ready
    /// backend its share goes to the others; groups of weight 0 serve only when
    /// no weighted group can.
    pub(crate) fn pick(&self, seq: u64, tried: &[u64]) -> Option<Pick> {
        let usable = |g: &Group| {
            g.spec
                .backends
                .iter()
                .any(|b| b.is_ready() && !tried.contains(&b.id))
        };
        let mut total = 0.0;
        let mut any_usable = false;
        for g in &self.groups {
            if usable(g) {
                any_usable = true;
                if g.spec.weight > 0.0 {
                    total += g.spec.weight;
                }
            }
        }
        if !any_usable {
            return None;
        }
        let group = if total > 0.0 {
            let x = golden(seq) * total;
            let mut acc = 0.0;
            let mut chosen = None;
            let mut last = 0;
            for (i, g) in self.groups.iter().enumerate() {
                if g.spec.weight > 0.0 && usable(g) {
                    acc += g.spec.weight;
                    last = i;
                    if x < acc {
                        chosen = Some(i);
                        break;
                    }
                }
            }
            // Rounding can leave x == total: the last weighted group takes it.
            chosen.unwrap_or(last)
        } else {
            let usable_groups: Vec<usize> = (0..self.groups.len())
                .filter(|&i| usable(&self.groups[i]))
                .collect();
            usable_groups[(seq as usize) % usable_groups.len()]
        };
        let g = &self.groups[group];
        let n = g.spec.backends.len();
        let start = g.rr.fetch_add(1, Ordering::Relaxed);
        (0..n)
            .map(|k| &g.spec.backends[(start + k) % n])
            .find(|b| b.is_ready() && !tried.contains(&b.id))
            .map(|b| Pick {
                group,
                backend: Arc::clone(b),
            })
    }
}

/// `frac(seq · φ⁻¹)` in `[0, 1)`: Fibonacci hashing, evenly spread for
/// consecutive `seq`.
fn golden(seq: u64) -> f64 {
    let mixed = seq.wrapping_mul(0x9E37_79B9_7F4A_7C15);
    (mixed >> 11) as f64 / (1u64 << 53) as f64
}

#[cfg(test)]
mod tests {
    use super::*;

    fn backend(build: &str, port: u16, ready: bool) -> Arc<Backend> {
        let b = Backend::new(build, SocketAddr::from(([127, 0, 0, 1], port)));
        b.set_ready(ready);
        b
    }

    fn share_of(pool: &Pool, build: &str, n: u64) -> f64 {
        let hits = (0..n)
            .filter(|&s| {
                pool.pick(s, &[])
                    .map(|p| p.backend.build().to_string())
                    .as_deref()
                    == Some(build)
            })
            .count();
        hits as f64 / n as f64
    }

    #[test]
    fn weights_are_followed_closely() {
        let pool = Pool::new(vec![
            GroupSpec {
                build: "1".into(),
                role: Role::Stable,
                weight: 0.95,
                backends: vec![backend("1", 1, true), backend("1", 2, true)],
            },
            GroupSpec {
                build: "2".into(),
                role: Role::Candidate,
                weight: 0.05,
                backends: vec![backend("2", 3, true)],
            },
        ]);
        let share = share_of(&pool, "2", 10_000);
        assert!((share - 0.05).abs() < 0.002, "candidate share {share}");
    }

    #[test]
    fn unready_group_gives_its_share_away_and_zero_weight_is_a_fallback() {
        let pool = Pool::new(vec![
            GroupSpec {
                build: "1".into(),
                role: Role::Stable,
                weight: 0.0,
                backends: vec![backend("1", 1, true)],
            },
            GroupSpec {
                build: "2".into(),
                role: Role::Candidate,
                weight: 1.0,
                backends: vec![backend("2", 2, false)],
            },
        ]);
        assert_eq!(share_of(&pool, "1", 100), 1.0);
        pool.groups[1].spec.backends[0].set_ready(true);
        assert_eq!(share_of(&pool, "1", 100), 0.0);
    }

    #[test]
    fn tried_backends_are_skipped_and_empty_pool_picks_nothing() {
        let a = backend("1", 1, true);
        let b = backend("1", 2, true);
        let pool = Pool::new(vec![GroupSpec {
            build: "1".into(),
            role: Role::Stable,
            weight: 1.0,
            backends: vec![a.clone(), b.clone()],
        }]);
        for seq in 0..10 {
            let p = pool.pick(seq, &[a.id()]).map(|p| p.backend.id());
            assert_eq!(p, Some(b.id()));
        }
        assert!(pool.pick(0, &[a.id(), b.id()]).is_none());
        assert!(Pool::default().pick(0, &[]).is_none());
    }
}
