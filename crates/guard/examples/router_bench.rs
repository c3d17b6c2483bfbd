//! Runs guard's router standalone in front of N replicas started by the local
//! platform, for `bench/router/run.sh` (and the replica-lifetime test).
//!
//! ```text
//! cargo run --release -p guard --example router_bench -- --bin target/release/ultra-boost --replicas 1
//! ```
//! Prints one JSON line once every replica is ready:
//! `{"router":"127.0.0.1:PORT","replicas":["127.0.0.1:PORT",…],"pids":[…]}`,
//! then serves until SIGINT/SIGTERM or until stdin closes, drains and exits.
//!
//! The router is in its steady state (one release: it hands connections over
//! when the replicas take them, `--arg=--handoff-socket={handoff_socket}`).
//! With `--relay-router` a second, identical service is started whose router
//! relays every request, as during a rollout; its address is `relay_router`.
use std::io::Write;
use std::path::PathBuf;

use anyhow::Context;
use clap::Parser;
use guard::platform::local::{LocalPlatform, LocalTargetConfig};
use guard::platform::{Build, Platform, Target};
use tokio::io::AsyncReadExt;

#[derive(Debug, Parser)]
#[command(about = "guard's router in front of local replicas, for benchmarks")]
struct Args {
    /// The service binary (ultra-boost) to run as replicas.
    #[arg(long)]
    bin: PathBuf,
    /// Number of replicas behind the router.
    #[arg(long, default_value_t = 1)]
    replicas: usize,
    /// Router listen address.
    #[arg(long, default_value = "127.0.0.1:0")]
    listen: std::net::SocketAddr,
    /// Extra arguments for every replica (repeatable), e.g. `--arg=--worker-threads=1`.
    #[arg(long = "arg", allow_hyphen_values = true)]
    args: Vec<String>,
    /// Exit when stdin reaches end of file (for harnesses that hold a pipe).
    #[arg(long)]
    stdin_lifeline: bool,
    /// Also start a second service whose router relays every request (handoff off).
    #[arg(long)]
    relay_router: bool,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let args = Args::parse();
    let target = Target {
        service: "ultra-boost".into(),
        environment: "bench".into(),
    };
    let relay_target = Target {
        service: "ultra-boost".into(),
        environment: "bench-relay".into(),
    };
    let mut cfg = LocalTargetConfig::new(target.clone(), args.listen);
    cfg.replicas = args.replicas;
    let mut configs = vec![cfg];
    if args.relay_router {
        let mut relay = LocalTargetConfig::new(relay_target.clone(), "127.0.0.1:0".parse()?);
        relay.replicas = args.replicas;
        configs.push(relay);
    }
    let mut registry = prometheus_client::registry::Registry::default();
    let platform = LocalPlatform::start(configs, &mut registry)
        .await
        .context("starting the local platform")?;
    let mut command = vec![
        args.bin.display().to_string(),
        "--log-level".into(),
        "warn".into(),
    ];
    command.extend(args.args.iter().cloned());
    let build = Build {
        number: "bench".into(),
        commit: None,
        image: None,
        command,
        env: Default::default(),
    };
    platform
        .revert(&target, &build)
        .await
        .context("starting the replicas")?;
    let relay_router = if args.relay_router {
        platform
            .revert(&relay_target, &build)
            .await
            .context("starting the relay service's replicas")?;
        let router = platform.router(&relay_target)?;
        router.set_handoff(false);
        Some(router.local_addr().to_string())
    } else {
        None
    };
    let observed = platform.observe(&target).await?;
    let replicas: Vec<String> = observed
        .endpoints
        .iter()
        .map(|e| {
            e.metrics_url
                .trim_start_matches("http://")
                .trim_end_matches("/metrics")
                .to_string()
        })
        .collect();
    let pids = platform.replica_pids(&target)?;
    let line = serde_json::json!({
        "router": platform.router_addr(&target)?.to_string(),
        "hands_over": platform.router(&target)?.hands_over(),
        "relay_router": relay_router,
        "replicas": replicas,
        "pids": pids,
    });
    let mut out = std::io::stdout().lock();
    writeln!(out, "{line}")?;
    out.flush()?;
    drop(out);

    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    let stdin_closed = async {
        if args.stdin_lifeline {
            let mut buf = [0u8; 64];
            let mut stdin = tokio::io::stdin();
            while stdin.read(&mut buf).await.map(|n| n > 0).unwrap_or(false) {}
        } else {
            std::future::pending::<()>().await;
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
        _ = stdin_closed => {}
    }
    let totals = platform.router_totals(&target)?;
    eprintln!(
        "router_bench: {} requests relayed, {} connections handed over, {} router failures, {} retries",
        totals.requests, totals.handed_over, totals.failures, totals.retries
    );
    platform.shutdown().await;
    Ok(())
}
