//! The HTTP side: routing, the four endpoints, request metrics, and the accept
//! loop with its graceful stop.
//!
//! Plain hyper (HTTP/1.1) with a `match` on the path: the instrumentation is the
//! only thing this service adds over a bare hyper server, and it is a handful of
//! atomic operations per request (see `metrics`).

use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::{AtomicU8, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::header::{ACCEPT, ALLOW, CONNECTION, CONTENT_TYPE, HeaderValue};
use http::{Method, Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::{TcpListener, UnixListener};
use tokio::sync::{mpsc, watch};
use tracing::{debug, error, info, warn};

use crate::fault::Faults;
use crate::handoff::{self, Handed};
use crate::metrics::{Metrics, Route};

/// Readiness as `/-/ready` reports it.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum Readiness {
    /// Start-up work not done yet: 503.
    Starting = 0,
    /// Serving normally: 200.
    Ready = 1,
    /// SIGTERM/SIGINT received: 503, still serving until the listener closes.
    Draining = 2,
}

/// Shared state of the request handlers.
#[derive(Debug)]
pub struct App {
    /// Every metric.
    pub metrics: Arc<Metrics>,
    faults: Faults,
    root_body: Bytes,
    readiness: AtomicU8,
    /// Raised by a proxy's recycle message (see [`handoff`]); a handed-over
    /// connection from an older generation closes after its next response.
    recycle_generation: AtomicU64,
}

impl App {
    /// State for a service answering `root_body` on `GET /`.
    pub fn new(metrics: Arc<Metrics>, faults: Faults, root_body: String) -> App {
        App {
            metrics,
            faults,
            root_body: Bytes::from(root_body),
            readiness: AtomicU8::new(Readiness::Starting as u8),
            recycle_generation: AtomicU64::new(0),
        }
    }

    /// Current readiness.
    pub fn readiness(&self) -> Readiness {
        match self.readiness.load(Ordering::Acquire) {
            0 => Readiness::Starting,
            1 => Readiness::Ready,
            _ => Readiness::Draining,
        }
    }

    /// Moves readiness on.
    pub fn set_readiness(&self, r: Readiness) {
        self.readiness.store(r as u8, Ordering::Release);
    }

    fn recycle_generation(&self) -> u64 {
        self.recycle_generation.load(Ordering::Acquire)
    }
}

type Body = Full<Bytes>;

fn text(status: StatusCode, body: &'static str) -> Response<Body> {
    let mut r = Response::new(Full::new(Bytes::from_static(body.as_bytes())));
    *r.status_mut() = status;
    r.headers_mut().insert(
        CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    r
}

/// Decrements the in-flight gauge even when the client goes away mid-request
/// (hyper then drops the handler future).
struct InFlight<'a>(&'a Metrics);

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.in_flight.dec();
    }
}

/// Handles one request and records it. `handed_at` is the recycle generation
/// at which a proxy handed the request's connection over (`None` for
/// connections accepted here).
pub async fn handle(
    app: Arc<App>,
    req: Request<Incoming>,
    handed_at: Option<u64>,
) -> Result<Response<Body>, Infallible> {
    let start = Instant::now();
    let metrics = &*app.metrics;
    metrics.in_flight.inc();
    let _in_flight = InFlight(metrics);
    let route = Route::of(req.uri().path());
    let method = req.method().clone();
    let mut resp = respond(&app, route, &req).await;
    let recycled = handed_at.is_some_and(|g| app.recycle_generation() > g);
    if recycled || app.readiness() == Readiness::Draining {
        // Ask keep-alive clients to reconnect, which sends them to another
        // replica (or, recycled, back through the proxy that handed them over).
        resp.headers_mut()
            .insert(CONNECTION, HeaderValue::from_static("close"));
    }
    metrics.observe_request(route, &method, resp.status(), start.elapsed());
    Ok(resp)
}

async fn respond(app: &App, route: Route, req: &Request<Incoming>) -> Response<Body> {
    let method = req.method();
    if route != Route::Other && method != Method::GET && method != Method::HEAD {
        let mut r = text(StatusCode::METHOD_NOT_ALLOWED, "method not allowed\n");
        r.headers_mut()
            .insert(ALLOW, HeaderValue::from_static("GET, HEAD"));
        return r;
    }
    match route {
        Route::Root => {
            if let Some(delay) = app.faults.latency() {
                tokio::time::sleep(delay).await;
            }
            if app.faults.should_fail() {
                return text(StatusCode::INTERNAL_SERVER_ERROR, "injected fault\n");
            }
            let mut r = Response::new(Full::new(app.root_body.clone()));
            r.headers_mut()
                .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
            r
        }
        Route::Healthy => text(StatusCode::OK, "ok\n"),
        Route::Ready => match app.readiness() {
            Readiness::Ready => text(StatusCode::OK, "ready\n"),
            Readiness::Starting => text(StatusCode::SERVICE_UNAVAILABLE, "starting\n"),
            Readiness::Draining => text(StatusCode::SERVICE_UNAVAILABLE, "draining\n"),
        },
        Route::Metrics => {
            let openmetrics = req
                .headers()
                .get(ACCEPT)
                .and_then(|v| v.to_str().ok())
                .is_some_and(|v| v.contains("application/openmetrics-text"));
            match app.metrics.encode(openmetrics) {
                Ok((body, ctype)) => {
                    let mut r = Response::new(Full::new(Bytes::from(body)));
                    r.headers_mut()
                        .insert(CONTENT_TYPE, HeaderValue::from_static(ctype));
                    r
                }
                Err(_) => {
                    error!("metrics: encoding the registry failed");
                    app.metrics.app_error("metrics", "encode");
                    text(
                        StatusCode::INTERNAL_SERVER_ERROR,
                        "metrics encoding failed\n",
                    )
                }
            }
        }
        Route::Other => text(StatusCode::NOT_FOUND, "not found\n"),
    }
}

/// How the accept loop ended.
#[derive(Debug, PartialEq, Eq)]
pub enum Stopped {
    /// Every connection finished within the shutdown timeout.
    Clean,
    /// The shutdown timeout passed with connections still open.
    TimedOut,
}

/// Accepts connections on `listener` (and on `unix`, when given, and those a
/// proxy hands over on `handoff`) until `stop` turns true, then closes the
/// listeners and waits up to `shutdown_timeout` for open connections: idle
/// keep-alive connections close at once, requests in flight finish first.
pub async fn serve(
    listener: TcpListener,
    unix: Option<UnixListener>,
    handoff: Option<UnixListener>,
    app: Arc<App>,
    mut stop: watch::Receiver<bool>,
    shutdown_timeout: Duration,
) -> Stopped {
    let graceful = GracefulShutdown::new();
    let mut builder = http1::Builder::new();
    builder.timer(TokioTimer::new());
    let (handed_tx, mut handed_rx) = mpsc::unbounded_channel();
    let handing = handoff.is_some();
    let channels = handoff.map(|l| {
        let metrics = app.metrics.clone();
        tokio::spawn(handoff::accept_channels(
            l,
            handed_tx.clone(),
            move |kind| metrics.app_error("handoff", kind),
        ))
    });
    loop {
        tokio::select! {
            biased;
            changed = stop.changed() => {
                if changed.is_err() || *stop.borrow() {
                    break;
                }
            }
            accepted = listener.accept() => match accepted {
                Ok((stream, _peer)) => {
                    let _ = stream.set_nodelay(true);
                    serve_connection(&builder, &graceful, &app, stream);
                }
                Err(e) => accept_failed(&app, &e).await,
            },
            accepted = accept_unix(unix.as_ref()) => match accepted {
                Ok(stream) => serve_connection(&builder, &graceful, &app, stream),
                Err(e) => accept_failed(&app, &e).await,
            },
            Some(handed) = handed_rx.recv(), if handing => match handed {
                Handed::Connection(stream) => {
                    app.metrics.handed_over.inc();
                    let at = app.recycle_generation();
                    serve_connection_from(&builder, &graceful, &app, stream, Some(at));
                }
                Handed::Recycle => {
                    app.recycle_generation.fetch_add(1, Ordering::AcqRel);
                    debug!("handoff: recycling the connections handed over so far");
                }
            },
        }
    }
    // Connections still on their way are closed with the channels.
    if let Some(task) = channels {
        task.abort();
    }
    drop(handed_rx);
    drop(handed_tx);
    drop(unix);
    drop(listener);
    info!(
        open_connections = graceful.count(),
        timeout_ms = shutdown_timeout.as_millis() as u64,
        "listener closed; waiting for in-flight requests"
    );
    match tokio::time::timeout(shutdown_timeout, graceful.shutdown()).await {
        Ok(()) => Stopped::Clean,
        Err(_) => Stopped::TimedOut,
    }
}

/// The next connection on the Unix socket; pending forever without one.
async fn accept_unix(unix: Option<&UnixListener>) -> std::io::Result<tokio::net::UnixStream> {
    match unix {
        Some(l) => l.accept().await.map(|(stream, _)| stream),
        None => std::future::pending().await,
    }
}

fn serve_connection<S>(
    builder: &http1::Builder,
    graceful: &GracefulShutdown,
    app: &Arc<App>,
    stream: S,
) where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    serve_connection_from(builder, graceful, app, stream, None)
}

fn serve_connection_from<S>(
    builder: &http1::Builder,
    graceful: &GracefulShutdown,
    app: &Arc<App>,
    stream: S,
    handed_at: Option<u64>,
) where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let metrics = app.metrics.clone();
    let app = app.clone();
    let svc = service_fn(move |req| handle(app.clone(), req, handed_at));
    let conn = graceful.watch(builder.serve_connection(TokioIo::new(stream), svc));
    tokio::spawn(async move {
        if let Err(e) = conn.await {
            // Mostly clients hanging up or sending garbage.
            debug!(error = %e, "connection ended with an error");
            metrics.app_error("http", "connection");
        }
    });
}

async fn accept_failed(app: &App, e: &std::io::Error) {
    // E.g. out of file descriptors: back off instead of spinning.
    warn!(error = %e, "accept failed");
    app.metrics.app_error("http", "accept");
    tokio::time::sleep(Duration::from_millis(10)).await;
}
