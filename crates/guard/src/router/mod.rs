//! guard's router: the service's front door on the local platform.
//!
//! A reverse proxy (hyper server in, pooled keep-alive hyper client out) that
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
//!    is retried on another replica (any method); an idempotent request
//!    (GET/HEAD/OPTIONS) whose connection broke before the response is retried
//!    too. Request bodies are buffered (bounded) so a retry can resend them.
//! 5. Only when no replica is ready, or every attempt failed, the router answers
//!    503/502 itself; those are counted in `guard_router_failures_total`.

pub mod metrics;
pub mod pool;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Method, Request, Response, StatusCode, Uri};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::{Body, Frame, Incoming, SizeHint};
use hyper::service::service_fn;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

pub use metrics::{RouterMetrics, TotalsSnapshot};
pub use pool::{Backend, GroupSpec};

use metrics::Labels;
use pool::{InFlight, Pool};

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

type UpstreamClient = Client<HttpConnector, Full<Bytes>>;

struct Inner {
    config: RouterConfig,
    pool: RwLock<Arc<Pool>>,
    client: UpstreamClient,
    labels: Labels,
    seq: AtomicU64,
    cancel: CancellationToken,
}

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
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        connector.set_connect_timeout(Some(config.connect_timeout));
        connector.set_keepalive(Some(Duration::from_secs(30)));
        let client = Client::builder(TokioExecutor::new())
            // Below the usual 30 s server idle timeouts, so the pool drops a
            // connection before the replica does.
            .pool_idle_timeout(Duration::from_secs(20))
            .pool_max_idle_per_host(256)
            .pool_timer(TokioTimer::new())
            .timer(TokioTimer::new())
            .build(connector);
        let labels = Labels::new(config.service.clone(), config.environment.clone(), metrics);
        let inner = Arc::new(Inner {
            config,
            pool: RwLock::new(Arc::new(Pool::default())),
            client,
            labels,
            seq: AtomicU64::new(0),
            cancel: CancellationToken::new(),
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
        *self.inner.pool.write().unwrap_or_else(|e| e.into_inner()) = pool;
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
                let ready = probe_ready(&inner.client, b.addr(), inner.config.ready_timeout).await;
                if ready != b.is_ready() {
                    tracing::info!(build = %b.build(), addr = %b.addr(), ready, "replica readiness changed");
                }
                b.set_ready(ready);
            }
        });
        futures::future::join_all(probes).await;
    }
}

/// `GET /-/ready` answered 200 within `timeout`.
pub(crate) async fn probe_ready(
    client: &UpstreamClient,
    addr: SocketAddr,
    timeout: Duration,
) -> bool {
    let Ok(uri) = Uri::builder()
        .scheme("http")
        .authority(addr.to_string())
        .path_and_query("/-/ready")
        .build()
    else {
        return false;
    };
    let Ok(req) = Request::get(uri).body(Full::new(Bytes::new())) else {
        return false;
    };
    match tokio::time::timeout(timeout, client.request(req)).await {
        Ok(Ok(resp)) => {
            let ok = resp.status() == StatusCode::OK;
            // Read the body so the connection goes back to the pool.
            let _ = resp.into_body().collect().await;
            ok
        }
        _ => false,
    }
}

/// The router's response body: a replica's streamed body (holding the
/// backend's in-flight mark until it ends) or a body the router made.
pub enum RouterBody {
    Upstream {
        body: Incoming,
        _in_flight: InFlightMark,
    },
    Local(Full<Bytes>),
    Empty,
}

/// Opaque: keeps a backend's in-flight count raised while alive.
pub struct InFlightMark(#[allow(dead_code)] InFlight);

impl Body for RouterBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        match self.get_mut() {
            RouterBody::Upstream { body, .. } => Pin::new(body).poll_frame(cx),
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
            RouterBody::Upstream { body, .. } => body.is_end_stream(),
            RouterBody::Local(full) => full.is_end_stream(),
            RouterBody::Empty => true,
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            RouterBody::Upstream { body, .. } => body.size_hint(),
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

async fn handle(
    inner: Arc<Inner>,
    req: Request<Incoming>,
    forwarded_for: Option<HeaderValue>,
) -> Response<RouterBody> {
    let started = Instant::now();
    let (mut parts, body) = req.into_parts();
    // Buffer the body so a retry can resend it; GETs have none and this is one poll.
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
    let path = parts
        .uri
        .path_and_query()
        .cloned()
        .unwrap_or_else(|| http::uri::PathAndQuery::from_static("/"));

    let seq = inner.seq.fetch_add(1, Ordering::Relaxed);
    let attempts = inner.config.max_attempts.max(1);
    // Backends already tried for this request (max_attempts is small).
    let mut tried: Vec<u64> = Vec::with_capacity(attempts);
    let pool = Arc::clone(&inner.pool.read().unwrap_or_else(|e| e.into_inner()));
    for attempt in 0..attempts {
        let Some(pick) = pool.pick(seq.wrapping_add(attempt as u64), &tried) else {
            break;
        };
        let backend = pick.backend;
        tried.push(backend.id());
        let role = pool.groups[pick.group].spec.role;
        let mut uri_parts = http::uri::Parts::default();
        uri_parts.scheme = Some(http::uri::Scheme::HTTP);
        uri_parts.authority = Some(backend.authority().clone());
        uri_parts.path_and_query = Some(path.clone());
        let Ok(uri) = Uri::from_parts(uri_parts) else {
            inner.labels.failure("bad_request");
            return local_response(
                StatusCode::BAD_REQUEST,
                "request target could not be forwarded\n",
            );
        };
        let mut out = Request::new(Full::new(body.clone()));
        *out.method_mut() = parts.method.clone();
        *out.uri_mut() = uri;
        *out.version_mut() = http::Version::HTTP_11;
        *out.headers_mut() = parts.headers.clone();
        let in_flight = backend.begin();
        let result =
            tokio::time::timeout(inner.config.upstream_timeout, inner.client.request(out)).await;
        match result {
            Ok(Ok(resp)) => {
                let (mut rparts, rbody) = resp.into_parts();
                strip_hop_by_hop(&mut rparts.headers);
                if let Some(v) = backend.build_header() {
                    rparts
                        .headers
                        .insert(HeaderName::from_static(BUILD_HEADER), v.clone());
                }
                record(
                    &inner,
                    &pool,
                    pick.group,
                    &backend,
                    rparts.status.as_u16(),
                    started,
                );
                let body = RouterBody::Upstream {
                    body: rbody,
                    _in_flight: InFlightMark(in_flight),
                };
                return Response::from_parts(rparts, body);
            }
            Ok(Err(err)) => {
                drop(in_flight);
                if err.is_connect() {
                    // Never sent: safe to send elsewhere, whatever the method.
                    backend.set_ready(false);
                    tracing::warn!(build = %backend.build(), addr = %backend.addr(), error = %err, "replica refused a connection; marked unready, retrying elsewhere");
                    inner.labels.retry(role);
                    continue;
                }
                if idempotent(&parts.method) {
                    tracing::warn!(build = %backend.build(), addr = %backend.addr(), error = %err, "replica connection broke; retrying the idempotent request elsewhere");
                    inner.labels.retry(role);
                    continue;
                }
                tracing::warn!(build = %backend.build(), addr = %backend.addr(), error = %err, "replica failed a non-idempotent request");
                inner.labels.failure("upstream");
                return local_response(StatusCode::BAD_GATEWAY, "the replica failed to answer\n");
            }
            Err(_elapsed) => {
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
    if tried.is_empty() {
        inner.labels.failure("no_backend");
        tracing::warn!(service = %inner.config.service, "no ready replica for a request");
        local_response(StatusCode::SERVICE_UNAVAILABLE, "no ready replica\n")
    } else {
        inner.labels.failure("upstream");
        local_response(StatusCode::BAD_GATEWAY, "no replica could be reached\n")
    }
}

fn record(
    inner: &Inner,
    pool: &Pool,
    group: usize,
    backend: &Backend,
    code: u16,
    started: Instant,
) {
    let labels = &inner.labels;
    labels.totals.requests.fetch_add(1, Ordering::Relaxed);
    let g = &pool.groups[group];
    let role = g.spec.role;
    labels
        .duration(role)
        .observe(started.elapsed().as_secs_f64());
    let cached = g
        .by_code
        .read()
        .unwrap_or_else(|e| e.into_inner())
        .get(&code)
        .cloned();
    let counter = match cached {
        Some(c) => c,
        None => {
            let c = labels.request_counter(backend.build(), role, code);
            g.by_code
                .write()
                .unwrap_or_else(|e| e.into_inner())
                .insert(code, c.clone());
            c
        }
    };
    counter.inc();
}
