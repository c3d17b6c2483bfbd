//! The `prometheus` signal source: each SLO's counter selectors asked of any
//! PromQL HTTP API (`GET /api/v1/query`: Prometheus, Thanos, Mimir,
//! VictoriaMetrics), per release by a label (default `build`).
//!
//! The SLO gives two instant-vector expressions over **cumulative counters**
//! (e.g. `ultra_boost_http_requests_total{route="/"}` and the same with
//! `code=~"5.."`), `{environment}` in them replaced by the environment
//! judged. Every series must carry the build label; series without it are
//! ignored, with a warning, since no release can be blamed for them. Each returned series is differenced against its previous
//! value by its full label set, so a counter reset (a restarted replica) is a
//! new start, never a negative count; the per-series deltas are summed per
//! build into cumulative counts since the source began watching.
//!
//! A series first seen after the source began watching the target counts from
//! zero (a new replica's first requests are the candidate's); series present
//! at the first query are only a baseline. A failed query is
//! [`SignalError::Unavailable`]: the engine holds after its tolerance, it is
//! never read as zero traffic. A build without series is "no data" (empty
//! `by_slo`).

use std::collections::{BTreeMap, HashMap};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use serde::Deserialize;

use super::{Counts, ReleaseSignals, SignalError, SignalSource, Snapshot};
use crate::config::{ENVIRONMENT_PLACEHOLDER, PromQueries};
use crate::platform::{BoxFuture, Endpoint, Target};

/// The source. One per service (its SLOs' queries).
pub struct PrometheusSource {
    client: reqwest::Client,
    url: String,
    build_label: String,
    queries: BTreeMap<String, PromQueries>,
    state: Mutex<HashMap<Target, TargetState>>,
}

#[derive(Default)]
struct TargetState {
    /// Last value per (query key, series labels).
    last: HashMap<(String, String), f64>,
    /// Cumulative per (build, query key).
    sums: HashMap<(String, String), f64>,
    first_query_done: bool,
    last_success: Option<Instant>,
    /// Queries already warned about for series without the build label.
    warned_unlabelled: std::collections::HashSet<String>,
}

/// Errors building the source.
#[derive(Debug, thiserror::Error)]
pub enum PrometheusError {
    /// The HTTP client could not be built.
    #[error("prometheus client: {0}")]
    Client(String),
}

#[derive(Deserialize)]
struct QueryResponse {
    status: String,
    #[serde(default)]
    data: Option<QueryData>,
    #[serde(default)]
    error: Option<String>,
}

#[derive(Deserialize)]
struct QueryData {
    #[serde(rename = "resultType")]
    result_type: String,
    result: Vec<Series>,
}

#[derive(Deserialize)]
struct Series {
    metric: BTreeMap<String, String>,
    value: (f64, String),
}

impl PrometheusSource {
    /// `url`: the API's base, e.g. `http://127.0.0.1:9090`.
    pub fn new(
        url: &str,
        build_label: &str,
        timeout: Duration,
        queries: BTreeMap<String, PromQueries>,
    ) -> Result<Self, PrometheusError> {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let client = reqwest::Client::builder()
            .timeout(timeout)
            .user_agent(concat!("guard/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| PrometheusError::Client(e.to_string()))?;
        Ok(Self {
            client,
            url: url.trim_end_matches('/').to_string(),
            build_label: build_label.to_string(),
            queries,
            state: Mutex::new(HashMap::new()),
        })
    }

    async fn query(&self, expr: &str) -> Result<Vec<Series>, SignalError> {
        let unavailable = |detail: String| SignalError::Unavailable { detail };
        let resp = self
            .client
            .get(format!("{}/api/v1/query", self.url))
            .query(&[("query", expr)])
            .send()
            .await
            .map_err(|e| unavailable(format!("querying {}: {}", self.url, e.without_url())))?;
        let status = resp.status();
        let body: QueryResponse = resp.json().await.map_err(|e| {
            unavailable(format!(
                "{} answered {status} with an unreadable body: {}",
                self.url,
                e.without_url()
            ))
        })?;
        if body.status != "success" {
            return Err(unavailable(format!(
                "{} refused {expr:?}: {}",
                self.url,
                body.error.unwrap_or_else(|| status.to_string())
            )));
        }
        let data = body
            .data
            .ok_or_else(|| unavailable("answer without data".into()))?;
        if data.result_type != "vector" {
            return Err(unavailable(format!(
                "{expr:?} gives a {}, not an instant vector of counters",
                data.result_type
            )));
        }
        Ok(data.result)
    }
}

/// What Prometheus said of a query guard was given.
#[derive(Debug, PartialEq)]
pub enum QueryCheck {
    /// It runs.
    Accepted,
    /// Prometheus refuses it (a PromQL error): a configuration mistake, not
    /// an outage.
    Refused(String),
    /// Prometheus did not answer; nothing is known of the query.
    Unreachable(String),
}

#[derive(Deserialize)]
struct ErrorAnswer {
    status: String,
    #[serde(default, rename = "errorType")]
    error_type: Option<String>,
    #[serde(default)]
    error: Option<String>,
}

impl PrometheusSource {
    /// Asks Prometheus each query once per environment, so a PromQL mistake
    /// is reported at start, by its SLO, instead of holding every release as
    /// a source outage. Returns `(slo, query as sent, what Prometheus said)`.
    pub async fn check_queries(
        &self,
        environments: &[String],
    ) -> Vec<(String, String, QueryCheck)> {
        let mut found = vec![];
        for (slo, q) in &self.queries {
            for expr in [&q.total, &q.query] {
                for env in environments {
                    let sent = expr.replace(ENVIRONMENT_PLACEHOLDER, env);
                    let check = self.check_one(&sent).await;
                    found.push((slo.clone(), sent, check));
                    if !expr.contains(ENVIRONMENT_PLACEHOLDER) {
                        break;
                    }
                }
            }
        }
        found
    }

    async fn check_one(&self, expr: &str) -> QueryCheck {
        let resp = match self
            .client
            .get(format!("{}/api/v1/query", self.url))
            .query(&[("query", expr)])
            .send()
            .await
        {
            Ok(r) => r,
            Err(e) => return QueryCheck::Unreachable(format!("{}: {}", self.url, e.without_url())),
        };
        let status = resp.status();
        match resp.json::<ErrorAnswer>().await {
            Ok(a) if a.status == "success" => QueryCheck::Accepted,
            Ok(a) if a.error_type.as_deref() == Some("bad_data") => {
                QueryCheck::Refused(a.error.unwrap_or_else(|| status.to_string()))
            }
            Ok(a) => QueryCheck::Unreachable(format!(
                "{} answered {status}: {}",
                self.url,
                a.error.unwrap_or_default()
            )),
            Err(e) => QueryCheck::Unreachable(format!(
                "{} answered {status} with an unreadable body: {}",
                self.url,
                e.without_url()
            )),
        }
    }
}

fn series_key(labels: &BTreeMap<String, String>) -> String {
    labels
        .iter()
        .map(|(k, v)| format!("{k}={v:?}"))
        .collect::<Vec<_>>()
        .join(",")
}

impl SignalSource for PrometheusSource {
    fn snapshot<'a>(
        &'a self,
        target: &'a Target,
        endpoints: &'a [Endpoint],
    ) -> BoxFuture<'a, Result<Snapshot, SignalError>> {
        Box::pin(async move {
            // Ask everything first; change state only when every query answered,
            // so a half-failed read never skews one side of a ratio.
            let mut answers: Vec<(String, String, Vec<Series>)> = vec![];
            let for_target =
                |expr: &str| expr.replace(ENVIRONMENT_PLACEHOLDER, &target.environment);
            for (slo, q) in &self.queries {
                let total = self.query(&for_target(&q.total)).await?;
                let part = self.query(&for_target(&q.query)).await?;
                answers.push((slo.clone(), "total".into(), total));
                answers.push((
                    slo.clone(),
                    if q.query_is_bad {
                        "bad".into()
                    } else {
                        "good".into()
                    },
                    part,
                ));
            }
            let mut states = self.state.lock().unwrap_or_else(|p| p.into_inner());
            let st = states.entry(target.clone()).or_default();
            let count_new_from_zero = st.first_query_done;
            for (slo, part, series) in answers {
                let qkey = format!("{slo}/{part}");
                let unlabelled = series
                    .iter()
                    .filter(|s| !s.metric.contains_key(&self.build_label))
                    .count();
                if unlabelled > 0 && st.warned_unlabelled.insert(qkey.clone()) {
                    // Traffic guard cannot attribute: said once, not read as none.
                    tracing::warn!(
                        slo = %slo,
                        query = part.as_str(),
                        series = unlabelled,
                        build_label = %self.build_label,
                        "the query returns series without the build label; guard cannot tell which release served them and ignores them \
                         (join it in, e.g. `… * on(instance) group_left({}) ultra_boost_build_info`)",
                        self.build_label
                    );
                }
                for s in series {
                    let Some(build) = s.metric.get(&self.build_label).cloned() else {
                        continue;
                    };
                    let Ok(v) = s.value.1.parse::<f64>() else {
                        continue;
                    };
                    if !v.is_finite() || v < 0.0 {
                        continue;
                    }
                    let key = (qkey.clone(), series_key(&s.metric));
                    let delta = match st.last.insert(key, v) {
                        Some(prev) if v >= prev => v - prev,
                        // Went down: a counter reset, counted from zero.
                        Some(_) => v,
                        None if count_new_from_zero => v,
                        None => 0.0,
                    };
                    *st.sums.entry((build, qkey.clone())).or_default() += delta;
                }
            }
            st.first_query_done = true;
            st.last_success = Some(Instant::now());
            let mut releases: Vec<ReleaseSignals> = vec![];
            for e in endpoints {
                if releases.iter().any(|r| r.build == e.build) {
                    continue;
                }
                let mut by_slo = BTreeMap::new();
                for (slo, q) in &self.queries {
                    let total = st
                        .sums
                        .get(&(e.build.clone(), format!("{slo}/total")))
                        .copied();
                    let part_key = format!("{slo}/{}", if q.query_is_bad { "bad" } else { "good" });
                    let part = st
                        .sums
                        .get(&(e.build.clone(), part_key))
                        .copied()
                        .unwrap_or(0.0);
                    let Some(total) = total else { continue };
                    let total = total.round() as u64;
                    let part = (part.round() as u64).min(total);
                    let good = if q.query_is_bad { total - part } else { part };
                    by_slo.insert(slo.clone(), Counts { good, total });
                }
                releases.push(ReleaseSignals {
                    role: e.role,
                    build: e.build.clone(),
                    by_slo,
                });
            }
            Ok(Snapshot {
                releases,
                staleness_seconds: Some(0.0),
                last_error: None,
            })
        })
    }
}
