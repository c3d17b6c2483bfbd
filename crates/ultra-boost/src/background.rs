//! The background task: runs every `--background-interval`, first right after
//! start. With `--upstream-url` a run is one GET to that URL (success: a 2xx
//! answer within `--upstream-timeout`), measured as `ultra_boost_upstream_*`;
//! without it a run is local work (a checksum over the process's own status
//! file, standing in for the seed's periodic job). Every run is counted by
//! outcome and timed; a success sets the timestamp the freshness SLO reads.
//!
//! The HTTP client is built inside the task, after the service is ready, so
//! loading TLS roots never delays start-up.

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use tokio::time::MissedTickBehavior;
use tracing::{debug, warn};

use crate::metrics::{Metrics, UpstreamDurationLabels, UpstreamErrorLabels, UpstreamLabels};

/// What the background task does on each run.
#[derive(Clone, Debug)]
pub struct BackgroundConfig {
    /// Time between runs.
    pub interval: Duration,
    /// URL to GET on each run; local work when `None`.
    pub upstream: Option<reqwest::Url>,
    /// Limit for one upstream request.
    pub upstream_timeout: Duration,
}

/// Starts the task on the current runtime.
pub fn spawn(config: BackgroundConfig, metrics: Arc<Metrics>) -> tokio::task::JoinHandle<()> {
    tokio::spawn(run(config, metrics))
}

async fn run(config: BackgroundConfig, metrics: Arc<Metrics>) {
    let mut ticker = tokio::time::interval(config.interval);
    ticker.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let mut client: Option<reqwest::Client> = None;
    loop {
        ticker.tick().await;
        let start = Instant::now();
        let ok = match &config.upstream {
            Some(url) => {
                if client.is_none() {
                    client = build_client(config.upstream_timeout, &metrics);
                }
                match &client {
                    Some(c) => call_upstream(c, url, &metrics).await,
                    None => false,
                }
            }
            None => local_work(&metrics),
        };
        metrics
            .background_duration
            .observe(start.elapsed().as_secs_f64());
        // The run is counted last, so a scrape that sees it counted also sees
        // its error or its success time.
        if ok {
            let now = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map(|d| d.as_secs_f64())
                .unwrap_or(0.0);
            metrics.background_last_success.set(now);
            debug!(
                elapsed_ms = start.elapsed().as_millis() as u64,
                "background run succeeded"
            );
        } else {
            metrics.app_error("background", "run_failed");
        }
        metrics.background_run(ok);
    }
}

fn build_client(timeout: Duration, metrics: &Metrics) -> Option<reqwest::Client> {
    match reqwest::Client::builder()
        .timeout(timeout)
        .connect_timeout(timeout)
        .user_agent(concat!("ultra-boost/", env!("CARGO_PKG_VERSION")))
        .build()
    {
        Ok(c) => Some(c),
        Err(e) => {
            warn!(error = %e, "background: cannot build the HTTP client; runs fail until it can");
            metrics.app_error("background", "client");
            None
        }
    }
}

/// One measured GET; true on a 2xx answer.
async fn call_upstream(client: &reqwest::Client, url: &reqwest::Url, metrics: &Metrics) -> bool {
    let host = url.host_str().unwrap_or("unknown").to_owned();
    let start = Instant::now();
    let result = async {
        let resp = client.get(url.clone()).send().await?;
        let status = resp.status();
        // Read the body so the duration covers the whole exchange.
        resp.bytes().await?;
        Ok::<_, reqwest::Error>(status)
    }
    .await;
    metrics
        .upstream_durations
        .get_or_create(&UpstreamDurationLabels {
            host: host.clone(),
            method: "GET",
        })
        .observe(start.elapsed().as_secs_f64());
    let (code, error_kind) = match &result {
        Ok(status) if status.is_success() => (status.as_str().to_owned(), None),
        Ok(status) => (status.as_str().to_owned(), Some("status")),
        Err(e) if e.is_timeout() => ("none".to_owned(), Some("timeout")),
        Err(e) if e.is_connect() => ("none".to_owned(), Some("connect")),
        Err(_) => ("none".to_owned(), Some("other")),
    };
    metrics
        .upstream_requests
        .get_or_create(&UpstreamLabels {
            host: host.clone(),
            method: "GET",
            code,
        })
        .inc();
    match error_kind {
        None => true,
        Some(kind) => {
            metrics
                .upstream_errors
                .get_or_create(&UpstreamErrorLabels {
                    host: host.clone(),
                    kind,
                })
                .inc();
            match result {
                Ok(status) => {
                    warn!(%host, %url, status = status.as_u16(), "background: upstream answered with an error status")
                }
                Err(e) => {
                    warn!(%host, %url, kind, error = %e, "background: upstream request failed")
                }
            }
            false
        }
    }
}

/// Local stand-in work: a FNV-1a checksum over `/proc/self/status`.
fn local_work(metrics: &Metrics) -> bool {
    match std::fs::read("/proc/self/status") {
        Ok(bytes) => {
            let sum = bytes.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
                (h ^ u64::from(*b)).wrapping_mul(0x0000_0100_0000_01b3)
            });
            debug!(checksum = sum, "background: local work done");
            true
        }
        Err(e) => {
            warn!(error = %e, "background: local work failed reading /proc/self/status");
            metrics.app_error("background", "local_work");
            false
        }
    }
}
