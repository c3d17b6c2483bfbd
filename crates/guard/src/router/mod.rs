//! guard's router: the service's front door on the local platform.
//!
//! A reverse proxy (hyper server in, per-replica pools of keep-alive hyper
//! HTTP/1 connections out, see [`pool`]) that
//! balances requests over the **ready** replicas of a service, with a traffic
//! weight per release for canaries, and counts traffic per release and the
//! failures it causes itself.
//!
//! How it keeps "zero failed requests" while replicas come and go:
//! 1. The replica set is an immutable [`pool`] swapped atomically
//!    ([`Router::set_pool`]); a request picks from one whole set.
//! 2. Every request holds an in-flight mark on its backend until its response
//!    body ends; the platform removes a replica from the pool, waits for
//!    [`Backend::in_flight`] to reach 0, and only then sends SIGTERM.
//! 3. Readiness is polled (`GET /-/ready`, every 200 ms by default) and a
//!    connect error marks a backend unready at once (passive check).
//! 4. A request whose connection could not be established was never sent and
//!    is retried on another replica (any method), and so is a request handed
//!    back unsent by a pooled connection that closed under it; an idempotent
//!    request (GET/HEAD/OPTIONS) whose connection broke before the response is
//!    retried too. Request bodies are buffered (bounded) so a retry can resend
//!    them; a request without a body (most GETs) is forwarded as it is.
//!
//! The request path is kept lean (issue 5's overhead goals, measured by
//! `bench/router/run.sh`): the request head is moved, not copied (a copy of the
//! headers is kept only for idempotent requests, to resend them), response
//! bodies stream, metrics handles are resolved once per (release, code), and
//! no per-request allocation is made for the bookkeeping.
//! 5. Only when no replica is ready, or every attempt failed, the router answers
//!    503/502 itself; those are counted in `guard_router_failures_total`.
//!
//! # Handing connections over (steady state)
//! Relaying costs a proxy in its own process about as much CPU per request as
//! the replica spends answering it (issue 5's benchmark). When a service runs
//! **one release** whose replicas take handed-over connections (ultra-boost's
//! `--handoff-socket`, the local platform's `{handoff_socket}`) and the platform
//! has switched handoff on ([`Router::set_handoff`]: a move converged, none in
//! flight), the router passes each accepted client connection to a ready
//! replica (round robin) over that Unix socket with `SCM_RIGHTS` and forgets
//! it: the requests then go from client to replica with no proxy in between,
//! and the replicas count them. Connections the router relays while handoff is
//! on are answered with `Connection: close`, so their clients come back and
//! are handed over too.
//!
//! Before traffic moves between releases the platform switches handoff off;
//! the router then asks every replica to *recycle* the connections it was
//! handed (close each after its next response), so their clients reconnect
//! through the router, which relays them per request again: canary weights,
//! retries and the per-release request counts hold for the whole rollout. A
//! replica that is retired drains its handed-over connections like its own
//! (readiness 503, `Connection: close` through the drain delay). What a
//! handed-over connection does not get: the router's retry when its replica
//! dies mid-request (the client sees the connection close).

pub mod metrics;
pub mod pool;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Method, Request, Response, StatusCode, Uri};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::{Body, Frame, Incoming, SizeHint};
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

pub use metrics::{RouterMetrics, TotalsSnapshot};
pub use pool::{Backend, GroupSpec};

use metrics::Labels;
use pool::{InFlight, Pool, Sender};

/// Settings of one router (one per service and environment).
#[derive(Clone, Debug)]
pub struct RouterConfig {
    pub service: String,
    pub environment: String,
    /// Where clients connect; port 0 lets the OS choose (see [`Router::local_addr`]).
    pub listen: SocketAddr,
    /// How often each backend's `/-/ready` is polled.
    pub ready_interval: Duration,
    /// Timeout of one readiness probe.
    pub ready_timeout: Duration,
    /// Timeout to open a connection to a replica (loopback: short).
    pub connect_timeout: Duration,
    /// Longest wait for a replica's response headers before answering 502.
    pub upstream_timeout: Duration,
    /// Largest request body the router buffers (it buffers to retry safely).
    pub max_body_bytes: usize,
    /// Attempts per request on distinct replicas.
    pub max_attempts: usize,
}

impl RouterConfig {
    /// Defaults for `service` in `environment` listening on `listen`.
    pub fn new(
        service: impl Into<String>,
        environment: impl Into<String>,
        listen: SocketAddr,
    ) -> Self {
        Self {
            service: service.into(),
            environment: environment.into(),
            listen,
            ready_interval: Duration::from_millis(200),
            ready_timeout: Duration::from_secs(1),
            connect_timeout: Duration::from_secs(1),
            upstream_timeout: Duration::from_secs(60),
            max_body_bytes: 8 << 20,
            max_attempts: 3,
        }
    }
}

/// Errors starting a router.
#[derive(Debug, thiserror::Error)]
pub enum RouterError {
    /// The listen address could not be bound.
    #[error("router for {service} cannot listen on {addr}: {source}")]
    Bind {
        service: String,
        addr: SocketAddr,
        source: std::io::Error,
    },
}

struct Inner {
    config: RouterConfig,
    pool: RwLock<Arc<Pool>>,
    labels: Labels,
    seq: AtomicU64,
    /// Set by the platform while no move is in flight (see the module docs).
    handoff: AtomicBool,
    cancel: CancellationToken,
    /// Requests answered 503 for want of a ready replica since the last
    /// warning, and when (ms after `started`) that warning was logged: a
    /// burst (a drain under load) logs one line every few seconds, not one
    /// per request.
    unanswered: AtomicU64,
    unanswered_warned_ms: AtomicU64,
    started: Instant,
}

/// At most one "no ready replica" warning this often.
const NO_REPLICA_WARNING_EVERY_MS: u64 = 5_000;

/// A running router. Cloning shares it; [`Router::shutdown`] stops it.
#[derive(Clone)]
pub struct Router {
    inner: Arc<Inner>,
    local_addr: SocketAddr,
    tasks: Arc<tokio_util::task::TaskTracker>,
}

impl std::fmt::Debug for Router {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Router")
            .field("service", &self.inner.config.service)
            .field("environment", &self.inner.config.environment)
            .field("local_addr", &self.local_addr)
            .finish()
    }
}

impl Router {
    /// Binds the listen address and starts serving (with an empty pool: 503
    /// until [`Router::set_pool`] adds ready replicas) and polling readiness.
    pub async fn start(config: RouterConfig, metrics: RouterMetrics) -> Result<Self, RouterError> {
        let listener =
            TcpListener::bind(config.listen)
                .await
                .map_err(|source| RouterError::Bind {
                    service: config.service.clone(),
                    addr: config.listen,
                    source,
                })?;
        let local_addr = listener.local_addr().map_err(|source| RouterError::Bind {
            service: config.service.clone(),
            addr: config.listen,
            source,
        })?;
        let labels = Labels::new(config.service.clone(), config.environment.clone(), metrics);
        let inner = Arc::new(Inner {
            config,
            pool: RwLock::new(Arc::new(Pool::default())),
            labels,
            seq: AtomicU64::new(0),
            handoff: AtomicBool::new(false),
            cancel: CancellationToken::new(),
            unanswered: AtomicU64::new(0),
            unanswered_warned_ms: AtomicU64::new(u64::MAX),
            started: Instant::now(),
        });
        let tasks = Arc::new(tokio_util::task::TaskTracker::new());
        tasks.spawn(accept_loop(Arc::clone(&inner), listener));
        tasks.spawn(ready_loop(Arc::clone(&inner)));
        tracing::info!(
            service = %inner.config.service,
            environment = %inner.config.environment,
            addr = %local_addr,
            "router listening"
        );
        Ok(Self {
            inner,
            local_addr,
            tasks,
        })
    }

    /// The address clients connect to.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Atomically replaces the replica set. Requests already sent keep their
    /// backend; new requests only see the new set.
    pub fn set_pool(&self, groups: Vec<GroupSpec>) {
        let pool = Arc::new(Pool::new(groups));
        let old = std::mem::replace(
            &mut *self.inner.pool.write().unwrap_or_else(|e| e.into_inner()),
            Arc::clone(&pool),
        );
        // Backends that left: close their idle connections now (requests in
        // flight keep theirs until they end; those are not given back idle
        // for long, the replica closes them when it drains).
        for b in old.backends() {
            if !pool.backends().any(|n| n.id() == b.id()) {
                b.close_idle();
            }
        }
    }

    /// Switches handing client connections over to the replicas on or off
    /// (it happens only while the set is one release whose replicas all take
    /// them). Switching off asks the replicas to send the connections they
    /// were handed back through the router (recycle; see the module docs).
    pub fn set_handoff(&self, on: bool) {
        let was = self.inner.handoff.swap(on, Ordering::AcqRel);
        if was == on {
            return;
        }
        let pool = self.current_pool();
        if on {
            if pool.hands_over {
                tracing::info!(service = %self.inner.config.service, environment = %self.inner.config.environment, "router hands client connections over to the replicas");
            }
        } else {
            for b in pool.backends() {
                b.recycle();
            }
            if pool.hands_over {
                tracing::info!(service = %self.inner.config.service, environment = %self.inner.config.environment, "router relays every request again; replicas recycle the connections handed over");
            }
        }
    }

    /// Whether accepted connections are being handed over right now.
    pub fn hands_over(&self) -> bool {
        self.inner.handoff.load(Ordering::Acquire) && self.current_pool().hands_over
    }

    /// The releases and backends of the current set.
    pub fn groups(&self) -> Vec<GroupSpec> {
        self.current_pool()
            .groups
            .iter()
            .map(|g| g.spec.clone())
            .collect()
    }

    fn current_pool(&self) -> Arc<Pool> {
        Arc::clone(&self.inner.pool.read().unwrap_or_else(|e| e.into_inner()))
    }

    /// Totals since the router started.
    pub fn totals(&self) -> TotalsSnapshot {
        self.inner.labels.totals.snapshot()
    }

    /// Stops accepting, lets open connections finish their current request
    /// (up to `grace`), stops polling.
    pub async fn shutdown(&self, grace: Duration) {
        self.inner.cancel.cancel();
        self.tasks.close();
        if tokio::time::timeout(grace, self.tasks.wait())
            .await
            .is_err()
        {
            tracing::warn!(service = %self.inner.config.service, "router connections still open after the grace period");
        }
    }
}

async fn accept_loop(inner: Arc<Inner>, listener: TcpListener) {
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    loop {
        let (stream, peer) = tokio::select! {
            _ = inner.cancel.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(err) => {
                    // EMFILE and friends: back off instead of spinning.
                    tracing::warn!(error = %err, "router accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let Some(stream) = hand_over(&inner, stream) else {
            continue;
        };
        let _ = stream.set_nodelay(true);
        // Made once per connection, not per request.
        let forwarded_for = HeaderValue::from_str(&peer.ip().to_string()).ok();
        let inner2 = Arc::clone(&inner);
        let svc = service_fn(move |req| {
            let inner = Arc::clone(&inner2);
            let forwarded_for = forwarded_for.clone();
            async move { Ok::<_, Infallible>(handle(inner, req, forwarded_for).await) }
        });
        let conn = hyper::server::conn::http1::Builder::new()
            .timer(TokioTimer::new())
            .keep_alive(true)
            .serve_connection(TokioIo::new(stream), svc);
        let watched = graceful.watch(conn);
        tokio::spawn(async move {
            if let Err(err) = watched.await {
                tracing::debug!(error = %err, "router client connection ended with an error");
            }
        });
    }
    drop(listener);
    if tokio::time::timeout(Duration::from_secs(10), graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!("router gave up waiting for client connections to close");
    }
}

/// Hands `stream` to a replica when handoff is on; gives it back otherwise
/// (or when the replica's channel failed: then the router relays it).
fn hand_over(inner: &Inner, stream: tokio::net::TcpStream) -> Option<tokio::net::TcpStream> {
    if !inner.handoff.load(Ordering::Acquire) {
        return Some(stream);
    }
    let pool = Arc::clone(&inner.pool.read().unwrap_or_else(|e| e.into_inner()));
    if !pool.hands_over {
        return Some(stream);
    }
    let seq = inner.seq.fetch_add(1, Ordering::Relaxed);
    let Some(pick) = pool.pick(seq, &[]).map(|p| p.backend) else {
        // No ready replica: relayed, and answered 503 unless one turns ready.
        return Some(stream);
    };
    // Counted as in flight while it changes hands, so a platform retiring the
    // replica waits for the message to be in its socket before SIGTERM.
    let _in_flight = pick.begin();
    // Out of the router's event loop before another process reads it.
    let std_stream = match stream.into_std() {
        Ok(s) => s,
        Err(err) => {
            tracing::warn!(error = %err, "router could not detach a client connection");
            return None;
        }
    };
    match pick.hand_over(&std_stream, &inner.handoff) {
        Ok(true) => {
            inner.labels.handed_over(pick.build());
            return None;
        }
        // Switched off meanwhile.
        Ok(false) => {}
        Err(err) => {
            tracing::warn!(build = %pick.build(), addr = %pick.addr(), error = %err, "handing a client connection over failed; relaying it");
        }
    }
    match tokio::net::TcpStream::from_std(std_stream) {
        Ok(s) => Some(s),
        Err(err) => {
            tracing::warn!(error = %err, "router could not take a client connection back");
            None
        }
    }
}

async fn ready_loop(inner: Arc<Inner>) {
    let mut tick = tokio::time::interval(inner.config.ready_interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = inner.cancel.cancelled() => return,
            _ = tick.tick() => {}
        }
        let pool = Arc::clone(&inner.pool.read().unwrap_or_else(|e| e.into_inner()));
        let probes = pool.backends().map(|b| {
            let inner = Arc::clone(&inner);
            let b = Arc::clone(b);
            async move {
                let ready = probe_ready(&b, inner.config.connect_timeout, inner.config.ready_timeout).await;
                if ready != b.is_ready() {
                    tracing::info!(build = %b.build(), addr = %b.addr(), ready, "replica readiness changed");
                }
                b.set_ready(ready);
            }
        });
        futures::future::join_all(probes).await;
    }
}

/// `GET /-/ready` answered 200 within `timeout` (over the backend's pooled
/// connections, like traffic).
pub(crate) async fn probe_ready(
    backend: &Arc<Backend>,
    connect_timeout: Duration,
    timeout: Duration,
) -> bool {
    let probe = async {
        let mut sender = backend.checkout(connect_timeout).await.ok()?;
        let mut req = Request::new(Full::new(Bytes::new()));
        *req.uri_mut() = Uri::from_static("/-/ready");
        req.headers_mut()
            .insert(header::HOST, backend.host_header().clone());
        let resp = sender.try_send_request(req).await.ok()?;
        let ok = resp.status() == StatusCode::OK;
        // Read the body to its end so the connection can be reused.
        resp.into_body().collect().await.ok()?;
        backend.checkin(sender);
        Some(ok)
    };
    matches!(tokio::time::timeout(timeout, probe).await, Ok(Some(true)))
}

/// The router's response body: a replica's streamed body (holding the
/// backend's in-flight mark until it ends) or a body the router made.
pub enum RouterBody {
    Upstream(UpstreamBody),
    Local(Full<Bytes>),
    Empty,
}

/// A replica's response body. Keeps the backend's in-flight count raised while
/// alive, and gives the connection back to the backend's pool when the body
/// has ended (a body dropped midway closes its connection instead).
pub struct UpstreamBody {
    body: Incoming,
    sender: Option<Sender>,
    done: bool,
    in_flight: InFlight,
}

impl Drop for UpstreamBody {
    fn drop(&mut self) {
        if (self.done || self.body.is_end_stream())
            && let Some(sender) = self.sender.take()
        {
            self.in_flight.backend().checkin(sender);
        }
        // Then `in_flight` drops: the count falls after the connection is back.
    }
}

impl Body for RouterBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        match self.get_mut() {
            RouterBody::Upstream(up) => {
                let polled = Pin::new(&mut up.body).poll_frame(cx);
                match &polled {
                    Poll::Ready(None) => up.done = true,
                    // The connection is in an unknown state: never reuse it.
                    Poll::Ready(Some(Err(_))) => up.sender = None,
                    _ => {}
                }
                polled
            }
            RouterBody::Local(full) => match Pin::new(full).poll_frame(cx) {
                Poll::Ready(Some(Ok(f))) => Poll::Ready(Some(Ok(f))),
                Poll::Ready(Some(Err(never))) => match never {},
                Poll::Ready(None) => Poll::Ready(None),
                Poll::Pending => Poll::Pending,
            },
            RouterBody::Empty => Poll::Ready(None),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            RouterBody::Upstream(up) => up.body.is_end_stream(),
            RouterBody::Local(full) => full.is_end_stream(),
            RouterBody::Empty => true,
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            RouterBody::Upstream(up) => up.body.size_hint(),
            RouterBody::Local(full) => full.size_hint(),
            RouterBody::Empty => SizeHint::with_exact(0),
        }
    }
}

fn local_response(status: StatusCode, msg: &'static str) -> Response<RouterBody> {
    let mut resp = Response::new(RouterBody::Local(Full::new(Bytes::from_static(
        msg.as_bytes(),
    ))));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    resp
}

/// Hop-by-hop headers (RFC 9110 §7.6.1) are for one connection, not forwarded.
fn strip_hop_by_hop(headers: &mut HeaderMap) {
    // Headers named in Connection are hop-by-hop too.
    let named: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|n| HeaderName::from_bytes(n.trim().as_bytes()).ok())
        .collect();
    for n in named {
        headers.remove(n);
    }
    for n in [
        header::CONNECTION,
        header::PROXY_AUTHENTICATE,
        header::PROXY_AUTHORIZATION,
        header::TE,
        header::TRAILER,
        header::TRANSFER_ENCODING,
        header::UPGRADE,
    ] {
        headers.remove(n);
    }
    headers.remove("keep-alive");
    headers.remove("proxy-connection");
}

fn idempotent(method: &Method) -> bool {
    matches!(*method, Method::GET | Method::HEAD | Method::OPTIONS)
}

/// The response header naming the build that answered (for people and tests).
pub const BUILD_HEADER: &str = "x-guard-build";

/// Backends tried per request are remembered in a fixed array (no allocation).
const MAX_TRIED: usize = 8;

async fn handle(
    inner: Arc<Inner>,
    req: Request<Incoming>,
    forwarded_for: Option<HeaderValue>,
) -> Response<RouterBody> {
    let started = Instant::now();
    let (mut parts, body) = req.into_parts();
    // Buffer a body so a retry can resend it; a GET without one costs nothing.
    let body = if body.is_end_stream() {
        Bytes::new()
    } else {
        match Limited::new(body, inner.config.max_body_bytes)
            .collect()
            .await
        {
            Ok(c) => c.to_bytes(),
            Err(err) => {
                let too_large = err
                    .downcast_ref::<http_body_util::LengthLimitError>()
                    .is_some();
                inner.labels.failure("bad_request");
                return if too_large {
                    local_response(
                        StatusCode::PAYLOAD_TOO_LARGE,
                        "request body too large for guard's router\n",
                    )
                } else {
                    local_response(StatusCode::BAD_REQUEST, "request body could not be read\n")
                };
            }
        }
    };
    strip_hop_by_hop(&mut parts.headers);
    if let Some(ip) = forwarded_for {
        parts
            .headers
            .append(HeaderName::from_static("x-forwarded-for"), ip);
    }
    // Replicas get origin-form targets (`/path?query`), as from a browser.
    if parts.uri.scheme().is_some() || parts.uri.authority().is_some() {
        let path = parts
            .uri
            .path_and_query()
            .cloned()
            .unwrap_or_else(|| http::uri::PathAndQuery::from_static("/"));
        parts.uri = Uri::from(path);
    }
    parts.version = http::Version::HTTP_11;
    let method = parts.method.clone();
    let has_host = parts.headers.contains_key(header::HOST);

    let attempts = inner.config.max_attempts.clamp(1, MAX_TRIED);
    // A copy of the head for resending after a connection broke mid-request;
    // only idempotent requests may be resent then, and only when a second
    // attempt is allowed.
    let spare = (idempotent(&method) && attempts > 1)
        .then(|| (parts.uri.clone(), parts.headers.clone(), body.clone()));
    let mut next = Some(Request::from_parts(parts, Full::new(body)));

    let seq = inner.seq.fetch_add(1, Ordering::Relaxed);
    // Backends already tried for this request.
    let mut tried = [0u64; MAX_TRIED];
    let mut n_tried = 0;
    let mut picked_any = false;
    let mut pool = Arc::clone(&inner.pool.read().unwrap_or_else(|e| e.into_inner()));
    for attempt in 0..attempts {
        if attempt > 0 {
            // A retry sees the current set: a replica taken out (and maybe
            // already drained) since the first attempt must not get it.
            pool = Arc::clone(&inner.pool.read().unwrap_or_else(|e| e.into_inner()));
        }
        let Some(pick) = pool.pick(seq.wrapping_add(attempt as u64), &tried[..n_tried]) else {
            break;
        };
        picked_any = true;
        let backend = pick.backend;
        let role = pool.groups[pick.group].spec.role;
        // Raised before any await: the platform drains a backend by waiting
        // for this count to reach 0 after taking it out of the pool, so a
        // request that picked it from the old pool must already count.
        let in_flight = backend.begin();
        let mut sender = match backend.checkout(inner.config.connect_timeout).await {
            Ok(s) => s,
            Err(err) => {
                drop(in_flight);
                // Never sent: safe to send elsewhere, whatever the method.
                backend.set_ready(false);
                tracing::warn!(build = %backend.build(), addr = %backend.addr(), error = %err, "replica refused a connection; marked unready, retrying elsewhere");
                tried[n_tried] = backend.id();
                n_tried += 1;
                inner.labels.retry(role);
                continue;
            }
        };
        let mut out = match next.take() {
            Some(r) => r,
            None => match &spare {
                Some((uri, headers, body)) => {
                    let mut r = Request::new(Full::new(body.clone()));
                    *r.method_mut() = method.clone();
                    *r.uri_mut() = uri.clone();
                    *r.headers_mut() = headers.clone();
                    r
                }
                None => break,
            },
        };
        if !has_host {
            out.headers_mut()
                .insert(header::HOST, backend.host_header().clone());
        }
        let result =
            tokio::time::timeout(inner.config.upstream_timeout, sender.try_send_request(out)).await;
        match result {
            Ok(Ok(resp)) => {
                let (mut rparts, rbody) = resp.into_parts();
                strip_hop_by_hop(&mut rparts.headers);
                if let Some(v) = backend.build_header() {
                    rparts
                        .headers
                        .insert(HeaderName::from_static(BUILD_HEADER), v.clone());
                }
                if pool.hands_over && inner.handoff.load(Ordering::Relaxed) {
                    // Reconnect, to be handed over (see the module docs).
                    rparts
                        .headers
                        .insert(header::CONNECTION, HeaderValue::from_static("close"));
                }
                record(&inner, &pool, pick.group, rparts.status.as_u16(), started);
                let body = RouterBody::Upstream(UpstreamBody {
                    body: rbody,
                    sender: Some(sender),
                    done: false,
                    in_flight,
                });
                return Response::from_parts(rparts, body);
            }
            Ok(Err(mut err)) => {
                drop(in_flight);
                drop(sender);
                if let Some(unsent) = err.take_message() {
                    // A pooled connection closed before the request was
                    // written: send it again on a fresh connection.
                    tracing::debug!(build = %backend.build(), error = %err.error(), "pooled connection closed before the request was sent; resending");
                    next = Some(unsent);
                    inner.labels.retry(role);
                    continue;
                }
                tried[n_tried] = backend.id();
                n_tried += 1;
                let err = err.into_error();
                if spare.is_some() {
                    tracing::warn!(build = %backend.build(), addr = %backend.addr(), error = %err, "replica connection broke; retrying the idempotent request elsewhere");
                    inner.labels.retry(role);
                    continue;
                }
                tracing::warn!(build = %backend.build(), addr = %backend.addr(), error = %err, "replica failed a non-idempotent request");
                inner.labels.failure("upstream");
                return local_response(StatusCode::BAD_GATEWAY, "the replica failed to answer\n");
            }
            Err(_elapsed) => {
                // Dropping the request future closes that connection.
                drop(in_flight);
                tracing::warn!(build = %backend.build(), addr = %backend.addr(), "replica did not answer in time");
                inner.labels.failure("upstream");
                return local_response(
                    StatusCode::GATEWAY_TIMEOUT,
                    "the replica did not answer in time\n",
                );
            }
        }
    }
    if !picked_any {
        inner.labels.failure("no_backend");
        warn_no_replica(&inner);
        local_response(StatusCode::SERVICE_UNAVAILABLE, "no ready replica\n")
    } else {
        inner.labels.failure("upstream");
        local_response(StatusCode::BAD_GATEWAY, "no replica could be reached\n")
    }
}

/// Whether a "no ready replica" warning is due at `now_ms`, the last one
/// having been at `last_ms` (`u64::MAX`: none yet).
fn warning_due(last_ms: u64, now_ms: u64) -> bool {
    last_ms == u64::MAX || now_ms.saturating_sub(last_ms) >= NO_REPLICA_WARNING_EVERY_MS
}

fn warn_no_replica(inner: &Inner) {
    inner.unanswered.fetch_add(1, Ordering::Relaxed);
    let now = u64::try_from(inner.started.elapsed().as_millis()).unwrap_or(u64::MAX - 1);
    let last = inner.unanswered_warned_ms.load(Ordering::Relaxed);
    if warning_due(last, now)
        && inner
            .unanswered_warned_ms
            .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
            .is_ok()
    {
        let requests = inner.unanswered.swap(0, Ordering::Relaxed);
        tracing::warn!(
            service = %inner.config.service,
            requests,
            "no ready replica: requests answered 503 (counted, logged at most every 5 s)"
        );
    }
}

fn record(inner: &Inner, pool: &Pool, group: usize, code: u16, started: Instant) {
    let labels = &inner.labels;
    labels.totals.requests.fetch_add(1, Ordering::Relaxed);
    let g = &pool.groups[group];
    let role = g.spec.role;
    labels
        .duration(role)
        .observe(started.elapsed().as_secs_f64());
    match g.by_code.get(usize::from(code)) {
        Some(slot) => slot
            .get_or_init(|| labels.request_counter(&g.spec.build, role, code))
            .inc(),
        // Codes of 600 and more are not HTTP; hyper does not produce them.
        None => labels.request_counter(&g.spec.build, role, code).inc(),
    };
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_burst_without_replicas_warns_once_every_few_seconds() {
        assert!(warning_due(u64::MAX, 0), "the first one is logged");
        assert!(!warning_due(1_000, 1_001));
        assert!(!warning_due(1_000, 5_999));
        assert!(warning_due(1_000, 6_000));
    }
}
