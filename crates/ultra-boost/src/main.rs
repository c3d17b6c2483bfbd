//! ultra-boost: the web service guard carries to production.
//!
//! A stateless HTTP service that answers a tiny JSON document on `GET /`, tells
//! the truth on its probes, exports the seed's SLIs as Prometheus metrics and
//! honours the zero-downtime contract of rolling updates. Run `ultra-boost --help`
//! for every option (each is also an `ULTRA_BOOST_*` environment variable).
//!
//! # Endpoints (one listener, `--listen`, default `0.0.0.0:8080`)
//! - `GET /` — `{"service":"ultra-boost","version":…,"build":…,"commit":…}`; fault injection applies here.
//! - `GET /-/healthy` — liveness, 200 while the process can serve.
//! - `GET /-/ready` — readiness: 503 `starting` until start-up work is done (metrics
//!   registered, background task scheduled, `--startup-delay` elapsed), then 200
//!   `ready`, then 503 `draining` from the moment SIGTERM or SIGINT arrives.
//! - `GET /metrics` — Prometheus text format 0.0.4, or OpenMetrics 1.0 when the
//!   `Accept` header asks for `application/openmetrics-text` (Prometheus does).
//! - anything else — 404 under `route="other"`. Other methods than GET/HEAD on
//!   the four routes get 405.
//!
//! # Finding the port (`--listen 127.0.0.1:0`)
//! With `--address-file PATH` the bound address (`127.0.0.1:40123` plus a
//! newline) is written to `PATH` atomically right after binding, before
//! readiness can turn 200. This is the machine-readable contract for tests and
//! guard's local platform. The log line `listening` (field `address`) says the
//! same for people.
//!
//! # Connections handed over by a proxy (`--handoff-socket PATH`)
//! A front proxy on the same machine (guard's router) may pass accepted client
//! connections over a Unix socket (`SCM_RIGHTS`) instead of relaying their
//! requests; they are served and drained like any other. One-byte protocol:
//! `c` + one descriptor hands a connection over, `r` asks the connections
//! handed over so far to close after their next response (see `handoff.rs`).
//!
//! # Shutdown
//! SIGTERM/SIGINT: readiness 503 at once; the service keeps serving for
//! `--drain-delay` (default 5 s; responses carry `Connection: close` so
//! keep-alive clients move on; a second signal ends the delay early); then the
//! listener closes and in-flight requests get `--shutdown-timeout` (default 10 s)
//! to finish. Exit 0 after a clean drain, 1 on a start-up error or when the
//! timeout cut requests off, 2 on invalid options.
//!
//! # Metrics (names fixed by the team contract)
//! | name | type | labels |
//! |---|---|---|
//! | `ultra_boost_http_requests_total` | counter | `method` (GET, HEAD, POST, PUT, DELETE, PATCH, OPTIONS, TRACE, OTHER), `route` (`/`, `/metrics`, `/-/ready`, `/-/healthy`, `other`), `code` |
//! | `ultra_boost_http_request_duration_seconds` | histogram, buckets .005 .01 .025 .05 .1 .2 .3 .5 1 2.5 5 | `method`, `route` |
//! | `ultra_boost_http_requests_in_flight` | gauge | |
//! | `ultra_boost_upstream_requests_total` | counter | `host`, `method`, `code` (status, or `none` when no response arrived) |
//! | `ultra_boost_upstream_request_duration_seconds` | histogram (same buckets) | `host`, `method` |
//! | `ultra_boost_upstream_errors_total` | counter | `host`, `kind` (`timeout`, `connect`, `status`, `other`) |
//! | `ultra_boost_app_errors_total` | counter | `subsystem`, `kind` (`http`/`accept`, `http`/`connection`, `background`/`run_failed`, `background`/`client`, `background`/`local_work`, `metrics`/`procfs`, `metrics`/`encode`, `handoff`/`accept`, `handoff`/`receive`, `handoff`/`descriptor`, `handoff`/`protocol`) |
//! | `ultra_boost_handed_over_connections_total` | counter | |
//! | `ultra_boost_background_runs_total` | counter | `outcome` (`success`, `failure`) |
//! | `ultra_boost_background_run_duration_seconds` | histogram (same buckets) | |
//! | `ultra_boost_background_last_success_timestamp_seconds` | gauge, Unix seconds, 0 before the first success | |
//! | `ultra_boost_build_info` | gauge, always 1 | `version`, `commit`, `build`, `fault_error_rate`, `fault_latency_ms` |
//! | `process_cpu_seconds_total`, `process_resident_memory_bytes`, `process_virtual_memory_bytes`, `process_open_fds`, `process_max_fds`, `process_threads`, `process_start_time_seconds` | standard | |
//!
//! Series SLO ratios divide by exist from the start with value 0: `GET /` with
//! codes 200 and 500, the probes and `/metrics` with 200 (and `/-/ready` 503),
//! and both background outcomes.
//!
//! # Performance
//! Plain hyper with a `match` router; request metrics go through pre-resolved
//! handles (no `Family` lock per request); tokio multi-thread runtime with
//! `--worker-threads` (default 2). `bench/service/run.sh` measures throughput,
//! latency, CPU per request, exec-to-ready time and RSS against a bare hyper
//! server (`examples/bare_hyper.rs`) answering the same bytes.
//!
//! # Build info
//! `version` is `CARGO_PKG_VERSION`; `commit` and `build` are `GIT_COMMIT` and
//! `BUILD_NUMBER` at build time, overridden by the same variables at run time;
//! `unknown` when neither is set. Fault injection settings are labels too and
//! are logged at start when on.

mod background;
mod build_info;
mod config;
mod fault;
mod handoff;
mod metrics;
mod process;
mod server;

use std::io::IsTerminal;
use std::path::Path;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context;
use clap::Parser;
use tokio::net::TcpListener;
use tokio::signal::unix::{Signal, SignalKind, signal};
use tokio::sync::watch;
use tracing::{error, info, warn};

use crate::build_info::BuildInfo;
use crate::config::{Args, LogFormat};
use crate::fault::Faults;
use crate::metrics::Metrics;
use crate::server::{App, Readiness, Stopped};

fn main() -> ExitCode {
    let args = Args::parse();
    // reqwest is built without a TLS crypto provider; the background task's client needs one.
    let _ = rustls::crypto::ring::default_provider().install_default();
    init_logging(&args);
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(usize::from(args.worker_threads))
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            error!(error = %e, "cannot start the tokio runtime");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(args)) {
        Ok(Stopped::Clean) => {
            info!("stopped cleanly");
            ExitCode::SUCCESS
        }
        Ok(Stopped::TimedOut) => {
            error!("shutdown timeout passed with requests still in flight; exiting anyway");
            ExitCode::FAILURE
        }
        Err(e) => {
            error!(error = format!("{e:#}"), "ultra-boost failed");
            ExitCode::FAILURE
        }
    }
}

fn init_logging(args: &Args) {
    let builder = tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_max_level(args.log_level)
        .with_target(false);
    match args.log_format {
        LogFormat::Json => builder.json().init(),
        LogFormat::Text => builder.with_ansi(std::io::stderr().is_terminal()).init(),
    }
}

/// The two signals that start the shutdown.
struct Signals {
    term: Signal,
    int: Signal,
}

impl Signals {
    fn install() -> anyhow::Result<Signals> {
        Ok(Signals {
            term: signal(SignalKind::terminate()).context("installing the SIGTERM handler")?,
            int: signal(SignalKind::interrupt()).context("installing the SIGINT handler")?,
        })
    }

    async fn next(&mut self) -> &'static str {
        tokio::select! {
            _ = self.term.recv() => "SIGTERM",
            _ = self.int.recv() => "SIGINT",
        }
    }
}

async fn run(args: Args) -> anyhow::Result<Stopped> {
    let mut signals = Signals::install()?;
    // The in-memory set-up (microseconds) comes before the bind, so that the
    // window in which the listener answers "starting" is as short as possible.
    let build = BuildInfo::detect(args.fault_error_rate, args.fault_latency_ms);
    let metrics = Arc::new(Metrics::new(&build));
    let seed = args.fault_seed.unwrap_or_else(fault::default_seed);
    let faults = Faults::new(args.fault_error_rate, args.fault_latency_ms, seed);
    if build.faults_on() {
        warn!(
            fault_error_rate = args.fault_error_rate,
            fault_latency_ms = args.fault_latency_ms,
            fault_seed = seed,
            "FAULT INJECTION ON for GET /"
        );
    }
    let app = Arc::new(App::new(metrics.clone(), faults, build.root_body()));

    let listener = TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("binding --listen {}", args.listen))?;
    let address = listener.local_addr().context("reading the bound address")?;
    // Bound before the address file is written: whoever reads that file may
    // use the socket at once.
    let unix = match &args.unix_socket {
        Some(path) => Some(bind_unix("--unix-socket", path)?),
        None => None,
    };
    let handoff = match &args.handoff_socket {
        Some(path) => Some(bind_unix("--handoff-socket", path)?),
        None => None,
    };
    if let Some(path) = &args.address_file {
        write_address_file(path, &address.to_string())?;
    }
    info!(%address, unix_socket = ?args.unix_socket, handoff_socket = ?args.handoff_socket, "listening");

    let (stop_tx, stop_rx) = watch::channel(false);
    let server = tokio::spawn(server::serve(
        listener,
        unix,
        handoff,
        app.clone(),
        stop_rx,
        args.shutdown_timeout,
    ));

    let background = background::spawn(
        background::BackgroundConfig {
            interval: args.background_interval,
            upstream: args.upstream_url.clone(),
            upstream_timeout: args.upstream_timeout,
        },
        metrics,
    );

    // No timer for a zero delay: tokio's timer wheel would round it up to the next
    // millisecond tick, and start-up time is measured in milliseconds.
    let signal = if args.startup_delay.is_zero() {
        None
    } else {
        tokio::select! {
            s = signals.next() => Some(s),
            () = tokio::time::sleep(args.startup_delay) => None,
        }
    };
    let signal = match signal {
        Some(s) => s,
        None => {
            app.set_readiness(Readiness::Ready);
            info!(
                version = build.version,
                commit = %build.commit,
                build = %build.build,
                background_interval_ms = args.background_interval.as_millis() as u64,
                upstream = args.upstream_url.as_ref().map(|u| u.as_str()).unwrap_or("none (local work)"),
                "ready"
            );
            signals.next().await
        }
    };

    app.set_readiness(Readiness::Draining);
    info!(
        signal,
        drain_delay_ms = args.drain_delay.as_millis() as u64,
        "draining: readiness is 503, still serving until the drain delay ends"
    );
    tokio::select! {
        () = tokio::time::sleep(args.drain_delay) => {}
        s = signals.next() => info!(signal = s, "second signal: ending the drain delay early"),
    }
    background.abort();
    // The receiver lives in the server task; if that task already ended, so did serving.
    let _ = stop_tx.send(true);
    let stopped = server.await.context("the server task panicked");
    for path in [&args.unix_socket, &args.handoff_socket]
        .into_iter()
        .flatten()
    {
        let _ = std::fs::remove_file(path);
    }
    stopped
}

/// Binds the Unix socket of option `flag`. A socket file already there is a
/// leftover of a killed process (nobody else should own our path) and is
/// replaced; any other kind of file is refused rather than deleted.
fn bind_unix(flag: &str, path: &Path) -> anyhow::Result<tokio::net::UnixListener> {
    use std::os::unix::fs::FileTypeExt;
    if let Ok(meta) = std::fs::symlink_metadata(path) {
        if !meta.file_type().is_socket() {
            anyhow::bail!(
                "{flag} {}: a file that is not a socket is already there; not replacing it",
                path.display()
            );
        }
        std::fs::remove_file(path)
            .with_context(|| format!("{flag} {}: removing the stale socket", path.display()))?;
    }
    tokio::net::UnixListener::bind(path)
        .with_context(|| format!("binding {flag} {}", path.display()))
}

/// Writes the bound address so that a starter of `--listen …:0` finds the port;
/// temporary file + rename, so a reader never sees half an address.
fn write_address_file(path: &Path, address: &str) -> anyhow::Result<()> {
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    std::fs::write(&tmp, format!("{address}\n"))
        .with_context(|| format!("writing --address-file {}", Path::new(&tmp).display()))?;
    std::fs::rename(&tmp, path)
        .with_context(|| format!("renaming into --address-file {}", path.display()))?;
    Ok(())
}
