//! The `scrape` signal source (the embedded default): guard reads each
//! replica's own `/metrics` every second and turns counters into cumulative
//! good/total event counts per release and SLO, in memory.
//!
//! # How counts are made
//! - One background task per endpoint (`metrics_url`) scrapes it every
//!   `interval`; [`SignalSource::snapshot`] starts tasks for endpoints it has
//!   not seen and retires tasks for endpoints that are gone (after one last
//!   scrape, so a drained replica's final requests still count). Counts of a
//!   retired replica stay in its release's totals: totals never go down.
//! - Each series (label set) is differenced against its previous value. A value
//!   that went down is a counter reset: the new value is the delta (counted
//!   from 0). A change of `process_start_time_seconds` is a restart: every
//!   series of that replica counts from 0.
//! - The first scrape of a replica counts from 0 when the replica started after
//!   the source did (guard started it, so all its requests are ours to judge);
//!   otherwise the first values are only a baseline.
//! - A failed scrape (refused, timeout, bad status, unparseable body) changes
//!   no count: the next good scrape catches up from the cumulative counters.
//!   It shows as [`Snapshot::staleness_seconds`]: the age of the oldest
//!   "last successful scrape" among the endpoints asked about (an endpoint not
//!   yet scraped counts from when it was first asked about). It is `None` when
//!   no endpoint of the target was ever scraped successfully.
//! - A release whose replicas were never scraped successfully has an empty
//!   `by_slo` (no data), not zeros.
//!
//! # SLIs ([`ScrapeSli`])
//! - availability: a counter with a `code` label; bad when the code starts with
//!   one of `bad_codes` (default `["5"]`). Optional `route` filter; the probe
//!   and scrape routes (`/metrics`, `/-/ready`, `/-/healthy`) are excluded by
//!   default, or guard's own polling would dilute the error ratio.
//! - latency: a histogram; good = its `_bucket{le}` count, total = its `_count`.
//! - freshness: a gauge holding a Unix timestamp of the last success; every
//!   scrape of every replica is one event, good when `now − gauge ≤ max_age`.
//!   A gauge of 0 (never succeeded) is bad only once the replica is older than
//!   `max_age`.

pub mod text;

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http_body_util::{BodyExt, Empty, Limited};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use serde::Deserialize;
use tokio_util::sync::CancellationToken;

use super::{Counts, ReleaseSignals, SignalError, SignalSource, Snapshot};
use crate::platform::{BoxFuture, Endpoint, Target};
use text::Sample;

/// How an SLO's good and total events are read from a replica's metrics.
#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum ScrapeSli {
    /// Requests by response code, e.g. `ultra_boost_http_requests_total`.
    Availability {
        /// Counter name (with or without the `_total` suffix).
        metric: String,
        /// Code prefixes that make a request bad, e.g. `["5"]` or `["500", "503"]`.
        #[serde(default = "default_bad_codes", alias = "bad_code")]
        bad_codes: Vec<String>,
        /// Only this `route` label value counts (e.g. `/`).
        #[serde(default)]
        route: Option<String>,
        /// `route` values never counted (guard's own probes and scrapes).
        #[serde(default = "default_excluded_routes")]
        exclude_routes: Vec<String>,
    },
    /// Requests slower than a histogram bucket are bad, e.g.
    /// `ultra_boost_http_request_duration_seconds` with `le: 0.2`.
    Latency {
        /// Histogram name (without `_bucket`/`_count`).
        histogram: String,
        /// Upper bound of the "fast enough" bucket, in the histogram's unit.
        le: f64,
        #[serde(default)]
        route: Option<String>,
        #[serde(default = "default_excluded_routes")]
        exclude_routes: Vec<String>,
    },
    /// A gauge with the Unix time of the last success, e.g.
    /// `ultra_boost_background_last_success_timestamp_seconds`.
    Freshness { gauge: String, max_age_seconds: f64 },
}

fn default_bad_codes() -> Vec<String> {
    vec!["5".to_string()]
}

fn default_excluded_routes() -> Vec<String> {
    ["/metrics", "/-/ready", "/-/healthy"]
        .map(String::from)
        .to_vec()
}

impl ScrapeSli {
    /// Checks values serde cannot; the message names the field and what to use.
    pub fn validate(&self) -> Result<(), String> {
        match self {
            ScrapeSli::Availability {
                metric, bad_codes, ..
            } => {
                if metric.is_empty() {
                    return Err(
                        "availability.metric is empty; e.g. ultra_boost_http_requests_total".into(),
                    );
                }
                if bad_codes.is_empty() || bad_codes.iter().any(|c| c.is_empty()) {
                    return Err(
                        "availability.bad_codes needs non-empty code prefixes, e.g. [\"5\"]".into(),
                    );
                }
            }
            ScrapeSli::Latency { histogram, le, .. } => {
                if histogram.is_empty() {
                    return Err("latency.histogram is empty; e.g. ultra_boost_http_request_duration_seconds".into());
                }
                if !(le.is_finite() && *le > 0.0) {
                    return Err(format!(
                        "latency.le must be a positive bucket bound like 0.2, got {le}"
                    ));
                }
            }
            ScrapeSli::Freshness {
                gauge,
                max_age_seconds,
            } => {
                if gauge.is_empty() {
                    return Err(
                        "freshness.gauge is empty; e.g. ultra_boost_background_last_success_timestamp_seconds".into(),
                    );
                }
                if !(max_age_seconds.is_finite() && *max_age_seconds > 0.0) {
                    return Err(format!(
                        "freshness.max_age_seconds must be positive, got {max_age_seconds}"
                    ));
                }
            }
        }
        Ok(())
    }
}

/// Settings of the scrape source.
#[derive(Clone, Debug)]
pub struct ScrapeConfig {
    /// SLO name → how to read it.
    pub slos: BTreeMap<String, ScrapeSli>,
    /// Time between scrapes of one endpoint.
    pub interval: Duration,
    /// Timeout of one scrape (keep it below `interval`).
    pub timeout: Duration,
}

impl ScrapeConfig {
    /// Every second, 800 ms timeout.
    pub fn new(slos: BTreeMap<String, ScrapeSli>) -> Self {
        Self {
            slos,
            interval: Duration::from_secs(1),
            timeout: Duration::from_millis(800),
        }
    }
}

type ScrapeClient = Client<HttpConnector, Empty<Bytes>>;

/// The scrape source. Cheap to clone; tasks stop when the last clone drops.
#[derive(Clone)]
pub struct ScrapeSource {
    shared: Arc<Shared>,
}

struct Shared {
    config: ScrapeConfig,
    client: ScrapeClient,
    /// Unix seconds when the source started: replicas started later are counted from 0.
    created_unix: f64,
    targets: Mutex<BTreeMap<Target, TargetWatch>>,
    cancel: CancellationToken,
}

impl Drop for Shared {
    fn drop(&mut self) {
        self.cancel.cancel();
    }
}

#[derive(Default)]
struct TargetWatch {
    live: HashMap<String, Arc<EndpointWatch>>,
    /// Counts of retired endpoints, per build and SLO.
    retired: BTreeMap<String, BTreeMap<String, Counts>>,
    /// Builds with at least one successful scrape.
    seen: BTreeMap<String, ()>,
}

struct EndpointWatch {
    url: String,
    build: String,
    first_asked: Instant,
    cancel: CancellationToken,
    state: Mutex<EndpointState>,
}

#[derive(Default)]
struct EndpointState {
    counts: BTreeMap<String, Counts>,
    last: HashMap<String, f64>,
    start_time: Option<f64>,
    last_success: Option<Instant>,
    scrapes: u64,
    last_error: Option<String>,
}

fn unix_now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

impl ScrapeSource {
    pub fn new(config: ScrapeConfig) -> Self {
        let mut connector = HttpConnector::new();
        connector.set_connect_timeout(Some(config.timeout));
        connector.set_nodelay(true);
        let client = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(Duration::from_secs(20))
            .build(connector);
        Self {
            shared: Arc::new(Shared {
                config,
                client,
                created_unix: unix_now(),
                targets: Mutex::new(BTreeMap::new()),
                cancel: CancellationToken::new(),
            }),
        }
    }
}

impl SignalSource for ScrapeSource {
    fn snapshot<'a>(
        &'a self,
        target: &'a Target,
        endpoints: &'a [Endpoint],
    ) -> BoxFuture<'a, Result<Snapshot, SignalError>> {
        Box::pin(async move { Ok(self.snapshot_now(target, endpoints)) })
    }

    /// Stops every scrape task.
    fn stop(&self) {
        self.shared.cancel.cancel();
    }
}

impl ScrapeSource {
    fn snapshot_now(&self, target: &Target, endpoints: &[Endpoint]) -> Snapshot {
        let shared = &self.shared;
        let mut targets = shared.targets.lock().unwrap_or_else(|e| e.into_inner());
        let watch = targets.entry(target.clone()).or_default();
        // Start watching new endpoints.
        for ep in endpoints {
            if !watch.live.contains_key(&ep.metrics_url) {
                let ew = Arc::new(EndpointWatch {
                    url: ep.metrics_url.clone(),
                    build: ep.build.clone(),
                    first_asked: Instant::now(),
                    cancel: shared.cancel.child_token(),
                    state: Mutex::new(EndpointState::default()),
                });
                watch.live.insert(ep.metrics_url.clone(), Arc::clone(&ew));
                tokio::spawn(scrape_loop(
                    Arc::downgrade(&self.shared),
                    target.clone(),
                    ew,
                ));
            }
        }
        // Retire endpoints no longer asked about (their task scrapes once more,
        // then folds its counts into `retired`).
        for (url, ew) in &watch.live {
            if !endpoints.iter().any(|e| &e.metrics_url == url) {
                ew.cancel.cancel();
            }
        }
        let now = Instant::now();
        let mut staleness: Option<f64> = None;
        let mut any_success = false;
        let mut last_error: Option<String> = None;
        let mut releases: Vec<ReleaseSignals> = Vec::new();
        for ep in endpoints {
            let Some(ew) = watch.live.get(&ep.metrics_url) else {
                continue;
            };
            let st = ew.state.lock().unwrap_or_else(|e| e.into_inner());
            if st.last_success.is_some() {
                any_success = true;
            }
            if let Some(e) = &st.last_error {
                last_error = Some(format!("{}: {e}", ew.url));
            }
            let since = st.last_success.unwrap_or(ew.first_asked);
            let age = now.saturating_duration_since(since).as_secs_f64();
            staleness = Some(staleness.map_or(age, |s: f64| s.max(age)));
            if !releases.iter().any(|r| r.build == ep.build) {
                releases.push(ReleaseSignals {
                    role: ep.role,
                    build: ep.build.clone(),
                    by_slo: BTreeMap::new(),
                });
            }
        }
        for rel in &mut releases {
            if !watch.seen.contains_key(&rel.build) {
                continue;
            }
            let mut by_slo: BTreeMap<String, Counts> = shared
                .config
                .slos
                .keys()
                .map(|k| (k.clone(), Counts::default()))
                .collect();
            let mut add = |counts: &BTreeMap<String, Counts>| {
                for (slo, c) in counts {
                    let e = by_slo.entry(slo.clone()).or_default();
                    e.good += c.good;
                    e.total += c.total;
                }
            };
            if let Some(r) = watch.retired.get(&rel.build) {
                add(r);
            }
            for ew in watch.live.values().filter(|ew| ew.build == rel.build) {
                add(&ew.state.lock().unwrap_or_else(|e| e.into_inner()).counts);
            }
            rel.by_slo = by_slo;
        }
        Snapshot {
            releases,
            staleness_seconds: if any_success { staleness } else { None },
            last_error,
        }
    }
}

async fn scrape_loop(shared: std::sync::Weak<Shared>, target: Target, ew: Arc<EndpointWatch>) {
    let interval = match shared.upgrade() {
        Some(s) => s.config.interval,
        None => return,
    };
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let retiring = tokio::select! {
            _ = tick.tick() => false,
            _ = ew.cancel.cancelled() => true,
        };
        let Some(s) = shared.upgrade() else { return };
        scrape_once(&s, &target, &ew).await;
        if retiring {
            let mut targets = s.targets.lock().unwrap_or_else(|e| e.into_inner());
            if let Some(w) = targets.get_mut(&target) {
                w.live.remove(&ew.url);
                let st = ew.state.lock().unwrap_or_else(|e| e.into_inner());
                let into = w.retired.entry(ew.build.clone()).or_default();
                for (slo, c) in &st.counts {
                    let e = into.entry(slo.clone()).or_default();
                    e.good += c.good;
                    e.total += c.total;
                }
            }
            tracing::debug!(url = %ew.url, build = %ew.build, "endpoint retired from scraping");
            return;
        }
    }
}

/// A latency SLO whose threshold is not one of its histogram's bucket
/// bounds would count every request as slow; such a scrape is refused (the
/// source is then missing, never all bad), naming the buckets there are.
fn check_buckets(config: &ScrapeConfig, samples: &[Sample]) -> Result<(), String> {
    for (slo, sli) in &config.slos {
        let ScrapeSli::Latency { histogram, le, .. } = sli else {
            continue;
        };
        let bucket = format!("{histogram}_bucket");
        let bounds: Vec<f64> = samples
            .iter()
            .filter(|s| s.name == bucket)
            .filter_map(|s| s.label("le").and_then(|v| v.parse::<f64>().ok()))
            .collect();
        let has = |b: f64| (b - le).abs() <= 1e-9 * le.abs().max(1.0);
        if !bounds.is_empty() && !bounds.iter().any(|b| has(*b)) {
            let mut listed: Vec<f64> = bounds.into_iter().filter(|b| b.is_finite()).collect();
            listed.sort_by(f64::total_cmp);
            listed.dedup();
            let listed: Vec<String> = listed.iter().map(|b| format!("{b}s")).collect();
            return Err(format!(
                "SLO `{slo}`: histogram `{histogram}` has no bucket at the latency threshold \
                 {le}s, so no request could be counted fast; set the threshold to one of its \
                 buckets: {}",
                listed.join(", ")
            ));
        }
    }
    Ok(())
}

async fn scrape_once(shared: &Shared, target: &Target, ew: &EndpointWatch) {
    let scraped = fetch(shared, &ew.url)
        .await
        .and_then(|samples| check_buckets(&shared.config, &samples).map(|()| samples));
    match scraped {
        Ok(samples) => {
            let now_unix = unix_now();
            let mut st = ew.state.lock().unwrap_or_else(|e| e.into_inner());
            apply(
                &shared.config,
                shared.created_unix,
                now_unix,
                &mut st,
                &samples,
            );
            st.last_success = Some(Instant::now());
            st.last_error = None;
            drop(st);
            let mut targets = shared.targets.lock().unwrap_or_else(|e| e.into_inner());
            if let Some(w) = targets.get_mut(target) {
                w.seen.insert(ew.build.clone(), ());
            }
        }
        Err(err) => {
            let mut st = ew.state.lock().unwrap_or_else(|e| e.into_inner());
            if shared.cancel.is_cancelled() {
                // Shutting down: the replicas are being stopped too.
                tracing::debug!(url = %ew.url, error = %err, "last scrape failed while stopping");
            } else if st.last_error.as_deref() != Some(err.as_str()) {
                tracing::warn!(url = %ew.url, build = %ew.build, error = %err, "scrape failed; counts kept, staleness grows");
            }
            st.last_error = Some(err);
        }
    }
}

async fn fetch(shared: &Shared, url: &str) -> Result<Vec<Sample>, String> {
    let req = http::Request::get(url)
        .header(http::header::ACCEPT, "text/plain;version=0.0.4")
        .body(Empty::<Bytes>::new())
        .map_err(|e| format!("bad metrics URL {url}: {e}"))?;
    let resp = tokio::time::timeout(shared.config.timeout, shared.client.request(req))
        .await
        .map_err(|_| format!("no answer within {:?}", shared.config.timeout))?
        .map_err(|e| format!("request failed: {e}"))?;
    if resp.status() != http::StatusCode::OK {
        return Err(format!("status {}", resp.status()));
    }
    let body = tokio::time::timeout(
        shared.config.timeout,
        Limited::new(resp.into_body(), 32 << 20).collect(),
    )
    .await
    .map_err(|_| "body not read in time".to_string())?
    .map_err(|e| format!("reading the body: {e}"))?
    .to_bytes();
    let text = std::str::from_utf8(&body).map_err(|_| "metrics are not UTF-8".to_string())?;
    text::parse(text).map_err(|e| format!("unparseable metrics: {e}"))
}

/// Folds one scrape into a replica's counts.
fn apply(
    config: &ScrapeConfig,
    created_unix: f64,
    now_unix: f64,
    st: &mut EndpointState,
    samples: &[Sample],
) {
    let start_time = samples
        .iter()
        .find(|s| s.name == "process_start_time_seconds" && s.labels.is_empty())
        .map(|s| s.value);
    let restarted =
        matches!((st.start_time, start_time), (Some(a), Some(b)) if (a - b).abs() > 0.5);
    if restarted {
        tracing::info!(old = ?st.start_time, new = ?start_time, "replica restarted; counting its counters from 0");
        st.last.clear();
    }
    // First scrape: count from 0 only if the replica is younger than the source.
    let first = st.scrapes == 0;
    let baseline_only = first && !start_time.is_some_and(|t| t >= created_unix - 2.0);
    if start_time.is_some() {
        st.start_time = start_time;
    }
    st.scrapes += 1;

    for (slo, sli) in &config.slos {
        let mut good_delta = 0u64;
        let mut total_delta = 0u64;
        match sli {
            ScrapeSli::Availability {
                metric,
                bad_codes,
                route,
                exclude_routes,
            } => {
                let with_total = format!("{metric}_total");
                for s in samples
                    .iter()
                    .filter(|s| s.name == *metric || s.name == with_total)
                {
                    if !route_matches(s, route, exclude_routes) {
                        continue;
                    }
                    let key = format!("{slo}\u{0}a\u{0}{}", s.series_key(&[]));
                    let d = delta(&mut st.last, key, s.value, baseline_only);
                    total_delta += d;
                    let bad = s
                        .label("code")
                        .is_some_and(|c| bad_codes.iter().any(|p| c.starts_with(p.as_str())));
                    if !bad {
                        good_delta += d;
                    }
                }
            }
            ScrapeSli::Latency {
                histogram,
                le,
                route,
                exclude_routes,
            } => {
                let bucket = format!("{histogram}_bucket");
                let count = format!("{histogram}_count");
                let mut goods: HashMap<String, u64> = HashMap::new();
                let mut totals: HashMap<String, u64> = HashMap::new();
                for s in samples.iter().filter(|s| s.name == bucket) {
                    let Some(bound) = s.label("le").and_then(|v| v.parse::<f64>().ok()) else {
                        continue;
                    };
                    if (bound - le).abs() > 1e-9 * le.abs().max(1.0)
                        || !route_matches(s, route, exclude_routes)
                    {
                        continue;
                    }
                    let series = s.series_key(&["le"]);
                    let key = format!("{slo}\u{0}g\u{0}{series}");
                    let d = delta(&mut st.last, key, s.value, baseline_only);
                    goods.insert(series, d);
                }
                for s in samples.iter().filter(|s| s.name == count) {
                    if !route_matches(s, route, exclude_routes) {
                        continue;
                    }
                    let series = s.series_key(&[]);
                    let key = format!("{slo}\u{0}t\u{0}{series}");
                    let d = delta(&mut st.last, key, s.value, baseline_only);
                    totals.insert(series, d);
                }
                for (series, t) in totals {
                    total_delta += t;
                    // A bucket never exceeds its count in one scrape, so its
                    // delta cannot either unless one series reset alone.
                    good_delta += goods.get(&series).copied().unwrap_or(0).min(t);
                }
            }
            ScrapeSli::Freshness {
                gauge,
                max_age_seconds,
            } => {
                let last_success = samples
                    .iter()
                    .filter(|s| s.name == *gauge)
                    .map(|s| s.value)
                    .fold(None, |acc: Option<f64>, v| {
                        Some(acc.map_or(v, |a| a.max(v)))
                    });
                if let Some(ts) = last_success {
                    if ts > 0.0 {
                        total_delta = 1;
                        good_delta = u64::from(now_unix - ts <= *max_age_seconds);
                    } else if start_time.is_some_and(|t| now_unix - t > *max_age_seconds) {
                        // Never succeeded, and old enough that it should have.
                        total_delta = 1;
                    }
                }
            }
        }
        let c = st.counts.entry(slo.clone()).or_default();
        c.total += total_delta;
        c.good += good_delta.min(total_delta);
    }
}

fn route_matches(s: &Sample, route: &Option<String>, exclude: &[String]) -> bool {
    let r = s.label("route");
    if let Some(want) = route
        && r != Some(want.as_str())
    {
        return false;
    }
    !r.is_some_and(|r| exclude.iter().any(|x| x == r))
}

/// Increase of a counter series since its last value, with reset handling.
fn delta(last: &mut HashMap<String, f64>, key: String, value: f64, baseline_only: bool) -> u64 {
    if !value.is_finite() || value < 0.0 {
        return 0;
    }
    let prev = last.insert(key, value);
    let d = match prev {
        _ if baseline_only => 0.0,
        None => value,
        Some(p) if value >= p => value - p,
        // Went down: the counter restarted from 0 since the last scrape.
        Some(_) => value,
    };
    d.round() as u64
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg() -> ScrapeConfig {
        let mut slos = BTreeMap::new();
        slos.insert(
            "availability".to_string(),
            ScrapeSli::Availability {
                metric: "ultra_boost_http_requests_total".into(),
                bad_codes: default_bad_codes(),
                route: Some("/".into()),
                exclude_routes: default_excluded_routes(),
            },
        );
        slos.insert(
            "latency".to_string(),
            ScrapeSli::Latency {
                histogram: "ultra_boost_http_request_duration_seconds".into(),
                le: 0.2,
                route: None,
                exclude_routes: default_excluded_routes(),
            },
        );
        slos.insert(
            "freshness".to_string(),
            ScrapeSli::Freshness {
                gauge: "ultra_boost_background_last_success_timestamp_seconds".into(),
                max_age_seconds: 60.0,
            },
        );
        ScrapeConfig::new(slos)
    }

    fn exposition(start: f64, ok: u64, err: u64, fast: u64, all: u64, fresh: f64) -> Vec<Sample> {
        text::parse(&format!(
            "process_start_time_seconds {start}\n\
ultra_boost_http_requests_total{{method=\"GET\",route=\"/\",code=\"200\"}} {ok}\n\
ultra_boost_http_requests_total{{method=\"GET\",route=\"/\",code=\"500\"}} {err}\n\
ultra_boost_http_requests_total{{method=\"GET\",route=\"/metrics\",code=\"200\"}} 999\n\
ultra_boost_http_request_duration_seconds_bucket{{method=\"GET\",route=\"/\",le=\"0.1\"}} 0\n\
ultra_boost_http_request_duration_seconds_bucket{{method=\"GET\",route=\"/\",le=\"0.2\"}} {fast}\n\
ultra_boost_http_request_duration_seconds_bucket{{method=\"GET\",route=\"/\",le=\"+Inf\"}} {all}\n\
ultra_boost_http_request_duration_seconds_count{{method=\"GET\",route=\"/\"}} {all}\n\
ultra_boost_http_request_duration_seconds_count{{method=\"GET\",route=\"/metrics\"}} 999\n\
ultra_boost_background_last_success_timestamp_seconds {fresh}\n"
        ))
        .unwrap()
    }

    fn counts(st: &EndpointState, slo: &str) -> (u64, u64) {
        let c = st.counts.get(slo).copied().unwrap_or_default();
        (c.good, c.total)
    }

    #[test]
    fn young_replica_counts_from_zero_and_deltas_add_up() {
        let c = cfg();
        let mut st = EndpointState::default();
        apply(
            &c,
            1000.0,
            1010.0,
            &mut st,
            &exposition(1005.0, 10, 2, 11, 12, 1009.0),
        );
        assert_eq!(counts(&st, "availability"), (10, 12));
        assert_eq!(counts(&st, "latency"), (11, 12));
        assert_eq!(counts(&st, "freshness"), (1, 1));
        apply(
            &c,
            1000.0,
            1011.0,
            &mut st,
            &exposition(1005.0, 15, 5, 14, 20, 900.0),
        );
        assert_eq!(counts(&st, "availability"), (15, 20));
        assert_eq!(counts(&st, "latency"), (14, 20));
        // 1011 - 900 > 60 s: stale background job.
        assert_eq!(counts(&st, "freshness"), (1, 2));
    }

    #[test]
    fn a_latency_threshold_between_buckets_refuses_the_scrape_and_names_the_buckets() {
        let samples = exposition(1005.0, 10, 2, 11, 12, 1009.0);
        assert_eq!(check_buckets(&cfg(), &samples), Ok(()));
        let mut c = cfg();
        c.slos.insert(
            "latency".to_string(),
            ScrapeSli::Latency {
                histogram: "ultra_boost_http_request_duration_seconds".into(),
                le: 0.123,
                route: None,
                exclude_routes: default_excluded_routes(),
            },
        );
        let err = check_buckets(&c, &samples).expect_err("0.123 is no bucket");
        assert!(
            err.contains("SLO `latency`")
                && err.contains("threshold 0.123s")
                && err.ends_with("buckets: 0.1s, 0.2s"),
            "{err}"
        );
        // A histogram not exposed (yet) says nothing either way.
        assert_eq!(check_buckets(&c, &samples[..1]), Ok(()));
    }

    #[test]
    fn old_replica_first_scrape_is_a_baseline() {
        let c = cfg();
        let mut st = EndpointState::default();
        apply(
            &c,
            1000.0,
            1010.0,
            &mut st,
            &exposition(500.0, 100, 50, 100, 150, 1009.0),
        );
        assert_eq!(counts(&st, "availability"), (0, 0));
        apply(
            &c,
            1000.0,
            1011.0,
            &mut st,
            &exposition(500.0, 101, 50, 101, 151, 1009.0),
        );
        assert_eq!(counts(&st, "availability"), (1, 1));
    }

    #[test]
    fn counter_going_down_or_restart_counts_from_zero() {
        let c = cfg();
        let mut st = EndpointState::default();
        apply(
            &c,
            1000.0,
            1010.0,
            &mut st,
            &exposition(1005.0, 10, 0, 10, 10, 1009.0),
        );
        // Restarted (new start time) and already served more than before.
        apply(
            &c,
            1000.0,
            1020.0,
            &mut st,
            &exposition(1015.0, 30, 1, 31, 31, 1019.0),
        );
        assert_eq!(counts(&st, "availability"), (40, 41));
        assert_eq!(counts(&st, "latency"), (41, 41));
        // Went down without a start time change: still a reset.
        apply(
            &c,
            1000.0,
            1021.0,
            &mut st,
            &exposition(1015.0, 3, 0, 3, 3, 1019.0),
        );
        assert_eq!(counts(&st, "availability"), (43, 44));
    }

    #[test]
    fn never_succeeded_freshness_is_bad_only_when_old() {
        let c = cfg();
        let mut st = EndpointState::default();
        apply(
            &c,
            1000.0,
            1010.0,
            &mut st,
            &exposition(1005.0, 0, 0, 0, 0, 0.0),
        );
        assert_eq!(counts(&st, "freshness"), (0, 0));
        apply(
            &c,
            1000.0,
            1100.0,
            &mut st,
            &exposition(1005.0, 0, 0, 0, 0, 0.0),
        );
        assert_eq!(counts(&st, "freshness"), (0, 1));
    }

    #[test]
    fn config_parses_from_yaml_and_validates() {
        let yaml = "availability:\n  metric: ultra_boost_http_requests_total\n  route: /\n";
        let sli: ScrapeSli = serde_saphyr::from_str(yaml).unwrap();
        assert_eq!(
            sli,
            ScrapeSli::Availability {
                metric: "ultra_boost_http_requests_total".into(),
                bad_codes: vec!["5".into()],
                route: Some("/".into()),
                exclude_routes: default_excluded_routes(),
            }
        );
        let bad: ScrapeSli =
            serde_saphyr::from_str("latency:\n  histogram: h\n  le: -1\n").unwrap();
        assert!(bad.validate().unwrap_err().contains("latency.le"));
        assert!(
            serde_saphyr::from_str::<ScrapeSli>("latency:\n  histogram: h\n  le: 0.2\n  typo: 1\n")
                .is_err()
        );
    }
}
