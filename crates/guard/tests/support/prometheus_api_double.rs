//! `PrometheusApiDouble`: a stand-in for Prometheus' HTTP API, for tests that
//! run the real `guard` binary with the `prometheus` signal source.
//!
//! `GET /api/v1/query?query=<expr>` answers an instant vector in the format
//! Prometheus documents (`{"status": "success", "data": {"resultType":
//! "vector", "result": [{"metric": {...}, "value": [<unix seconds>,
//! "<number>"]}]}}`), one series per declared build, labelled `build`.
//! Counters grow at `rps` per second from the moment a build is declared
//! ([`PrometheusApiDouble::run_build`]). Expressions selecting 5xx codes
//! (`code=~"5.."`) count errors: `bad_ratio` of the requests of builds whose
//! name contains `bad`, and of the requests a build served since
//! [`PrometheusApiDouble::turn_bad`]; none for the others. A query without `query` gets 400
//! with Prometheus' error body.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use axum::extract::{Query, State};
use axum::response::IntoResponse;
use serde_json::{Value, json};

#[derive(Clone)]
pub struct PrometheusApiDouble {
    pub addr: SocketAddr,
    rps: f64,
    bad_ratio: f64,
    builds: Arc<Mutex<BTreeMap<String, Instant>>>,
    soured: Arc<Mutex<BTreeMap<String, Instant>>>,
    queries: Arc<AtomicU64>,
}

async fn query(
    State(d): State<PrometheusApiDouble>,
    Query(q): Query<BTreeMap<String, String>>,
) -> axum::response::Response {
    let Some(expr) = q.get("query") else {
        return (
            axum::http::StatusCode::BAD_REQUEST,
            axum::Json(json!({"status": "error", "errorType": "bad_data",
                "error": "invalid parameter \"query\": parse error: no expression"})),
        )
            .into_response();
    };
    d.queries.fetch_add(1, Ordering::SeqCst);
    let errors_only = expr.contains("code=~\"5..\"");
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|t| t.as_secs_f64())
        .unwrap_or(0.0);
    let builds = d.builds.lock().expect("lock").clone();
    let soured = d.soured.lock().expect("lock").clone();
    let result: Vec<Value> = builds
        .iter()
        .map(|(build, since)| {
            let total = (since.elapsed().as_secs_f64() * d.rps).floor();
            let value = match (errors_only, build.contains("bad"), soured.get(build)) {
                (false, _, _) => total,
                (true, true, _) => (total * d.bad_ratio).floor(),
                (true, false, Some(at)) => (at.elapsed().as_secs_f64() * d.rps * d.bad_ratio).floor(),
                (true, false, None) => 0.0,
            };
            let code = if errors_only { "500" } else { "200" };
            json!({
                "metric": {"__name__": "ultra_boost_http_requests_total", "job": "ultra-boost",
                    "route": "/", "code": code, "build": build, "instance": format!("pod-{build}:8080")},
                "value": [now, value.to_string()],
            })
        })
        .collect();
    axum::Json(json!({"status": "success", "data": {"resultType": "vector", "result": result}}))
        .into_response()
}

impl PrometheusApiDouble {
    /// Serves on an OS-chosen loopback port until the test's runtime ends.
    pub async fn start(rps: f64, bad_ratio: f64) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let d = PrometheusApiDouble {
            addr: listener.local_addr().expect("addr"),
            rps,
            bad_ratio,
            builds: Arc::default(),
            soured: Arc::default(),
            queries: Arc::default(),
        };
        let app = axum::Router::new()
            .route("/api/v1/query", axum::routing::get(query))
            .with_state(d.clone());
        tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        d
    }

    /// From now on, `build` serves traffic (its counters start at zero).
    pub fn run_build(&self, build: &str) {
        self.builds
            .lock()
            .expect("lock")
            .entry(build.to_string())
            .or_insert_with(Instant::now);
    }

    /// From now on `build` fails `bad_ratio` of its requests (a release that
    /// goes bad after it was promoted).
    pub fn turn_bad(&self, build: &str) {
        self.soured
            .lock()
            .expect("lock")
            .entry(build.to_string())
            .or_insert_with(Instant::now);
    }

    /// Queries answered so far.
    pub fn queries(&self) -> u64 {
        self.queries.load(Ordering::SeqCst)
    }
}
