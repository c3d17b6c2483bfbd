//! The service's metrics: one registry, the SLI families named in the team
//! contract, and pre-resolved handles for the request path.
//!
//! The request path never takes the `Family` lock: routes, methods and status
//! codes are small closed sets, so each (route, method, code) counter and each
//! (route, method) histogram is resolved once into a `OnceLock` slot and then
//! reached by array index. Series that SLO queries divide by are created at
//! start with value 0 (`GET /` 200 and 500, the probes, both background outcomes)
//! so that a healthy release exports a zero error count rather than no data.

use std::sync::OnceLock;
use std::sync::atomic::AtomicU64;
use std::time::Duration;

use http::{Method, StatusCode};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

use crate::build_info::BuildInfo;
use crate::process::ProcessCollector;

/// Buckets of every duration histogram, in seconds. `0.2` is the seed's 200 ms
/// latency SLO threshold and must stay an exact bucket bound.
pub const DURATION_BUCKETS: [f64; 11] =
    [0.005, 0.01, 0.025, 0.05, 0.1, 0.2, 0.3, 0.5, 1.0, 2.5, 5.0];

/// The bounded `route` label: matched route templates, `other` for everything else.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum Route {
    /// `/`, the business endpoint.
    Root,
    /// `/metrics`.
    Metrics,
    /// `/-/ready`.
    Ready,
    /// `/-/healthy`.
    Healthy,
    /// Any other path (answered 404).
    Other,
}

impl Route {
    const ALL: [Route; 5] = [
        Route::Root,
        Route::Metrics,
        Route::Ready,
        Route::Healthy,
        Route::Other,
    ];

    /// The route a request path falls under.
    pub fn of(path: &str) -> Route {
        match path {
            "/" => Route::Root,
            "/metrics" => Route::Metrics,
            "/-/ready" => Route::Ready,
            "/-/healthy" => Route::Healthy,
            _ => Route::Other,
        }
    }

    /// The label value.
    pub fn label(self) -> &'static str {
        match self {
            Route::Root => "/",
            Route::Metrics => "/metrics",
            Route::Ready => "/-/ready",
            Route::Healthy => "/-/healthy",
            Route::Other => "other",
        }
    }
}

/// Label values of the bounded `method` label; unknown methods become `OTHER`.
const METHODS: [&str; 9] = [
    "GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS", "TRACE", "OTHER",
];

fn method_index(method: &Method) -> usize {
    match *method {
        Method::GET => 0,
        Method::HEAD => 1,
        Method::POST => 2,
        Method::PUT => 3,
        Method::DELETE => 4,
        Method::PATCH => 5,
        Method::OPTIONS => 6,
        Method::TRACE => 7,
        _ => 8,
    }
}

/// Status codes this server answers with; each gets a pre-resolved slot.
const CODES: [u16; 5] = [200, 404, 405, 500, 503];

fn code_index(code: StatusCode) -> Option<usize> {
    CODES.iter().position(|c| *c == code.as_u16())
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabels {
    method: &'static str,
    route: &'static str,
    code: u16,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct DurationLabels {
    method: &'static str,
    route: &'static str,
}

/// Labels of `ultra_boost_upstream_requests_total`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct UpstreamLabels {
    /// Host of the URL called.
    pub host: String,
    /// HTTP method.
    pub method: &'static str,
    /// Status code, or `none` when no response arrived (see the errors counter).
    pub code: String,
}

/// Labels of `ultra_boost_upstream_request_duration_seconds`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct UpstreamDurationLabels {
    /// Host of the URL called.
    pub host: String,
    /// HTTP method.
    pub method: &'static str,
}

/// Labels of `ultra_boost_upstream_errors_total`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct UpstreamErrorLabels {
    /// Host of the URL called.
    pub host: String,
    /// `timeout`, `connect`, `status` (a non-2xx answer) or `other`.
    pub kind: &'static str,
}

/// Labels of `ultra_boost_app_errors_total`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct AppErrorLabels {
    /// Part of the service: `http`, `background`, `metrics`.
    pub subsystem: &'static str,
    /// What went wrong, e.g. `accept`, `connection`, `procfs`, `encode`, `upstream`.
    pub kind: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OutcomeLabels {
    outcome: &'static str,
}

type HistogramFamily<L> = Family<L, Histogram, fn() -> Histogram>;

fn duration_histogram() -> Histogram {
    Histogram::new(DURATION_BUCKETS)
}

/// Every metric of the service, and the registry that exposes them.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    requests: Family<RequestLabels, Counter>,
    durations: HistogramFamily<DurationLabels>,
    request_slots: [[[OnceLock<Counter>; CODES.len()]; METHODS.len()]; Route::ALL.len()],
    duration_slots: [[OnceLock<Histogram>; METHODS.len()]; Route::ALL.len()],
    /// `ultra_boost_http_requests_in_flight`.
    pub in_flight: Gauge,
    /// `ultra_boost_upstream_requests_total`.
    pub upstream_requests: Family<UpstreamLabels, Counter>,
    /// `ultra_boost_upstream_request_duration_seconds`.
    pub upstream_durations: HistogramFamily<UpstreamDurationLabels>,
    /// `ultra_boost_upstream_errors_total`.
    pub upstream_errors: Family<UpstreamErrorLabels, Counter>,
    /// `ultra_boost_app_errors_total`.
    pub app_errors: Family<AppErrorLabels, Counter>,
    /// `ultra_boost_handed_over_connections_total`.
    pub handed_over: Counter,
    background_runs: Family<OutcomeLabels, Counter>,
    /// `ultra_boost_background_run_duration_seconds`.
    pub background_duration: Histogram,
    /// `ultra_boost_background_last_success_timestamp_seconds`.
    pub background_last_success: Gauge<f64, AtomicU64>,
}

impl Metrics {
    /// Registers every metric (cheap: no I/O besides reading the process start time).
    pub fn new(build: &BuildInfo) -> Metrics {
        let mut registry = Registry::default();
        let requests = Family::<RequestLabels, Counter>::default();
        registry.register(
            "ultra_boost_http_requests",
            "HTTP requests answered, by method, matched route and status code",
            requests.clone(),
        );
        let durations: HistogramFamily<DurationLabels> =
            Family::new_with_constructor(duration_histogram);
        registry.register(
            "ultra_boost_http_request_duration_seconds",
            "Time from receiving an HTTP request to handing its response to the connection",
            durations.clone(),
        );
        let in_flight = Gauge::default();
        registry.register(
            "ultra_boost_http_requests_in_flight",
            "HTTP requests being handled right now",
            in_flight.clone(),
        );
        let upstream_requests = Family::<UpstreamLabels, Counter>::default();
        registry.register(
            "ultra_boost_upstream_requests",
            "Outgoing HTTP requests made by the service, by host, method and status code (none: no response)",
            upstream_requests.clone(),
        );
        let upstream_durations: HistogramFamily<UpstreamDurationLabels> =
            Family::new_with_constructor(duration_histogram);
        registry.register(
            "ultra_boost_upstream_request_duration_seconds",
            "Duration of outgoing HTTP requests, failed ones included",
            upstream_durations.clone(),
        );
        let upstream_errors = Family::<UpstreamErrorLabels, Counter>::default();
        registry.register(
            "ultra_boost_upstream_errors",
            "Outgoing HTTP requests that failed, by host and kind (timeout, connect, status, other)",
            upstream_errors.clone(),
        );
        let app_errors = Family::<AppErrorLabels, Counter>::default();
        registry.register(
            "ultra_boost_app_errors",
            "Errors inside the service, by subsystem and kind",
            app_errors.clone(),
        );
        let handed_over = Counter::default();
        registry.register(
            "ultra_boost_handed_over_connections",
            "Client connections a front proxy handed over on --handoff-socket",
            handed_over.clone(),
        );
        let background_runs = Family::<OutcomeLabels, Counter>::default();
        registry.register(
            "ultra_boost_background_runs",
            "Runs of the background task, by outcome (success, failure)",
            background_runs.clone(),
        );
        let background_duration = duration_histogram();
        registry.register(
            "ultra_boost_background_run_duration_seconds",
            "Duration of background task runs",
            background_duration.clone(),
        );
        let background_last_success = Gauge::<f64, AtomicU64>::default();
        registry.register(
            "ultra_boost_background_last_success_timestamp_seconds",
            "Unix time of the last successful background run (0: none yet)",
            background_last_success.clone(),
        );
        let build_info = Family::<Vec<(&'static str, String)>, Gauge>::default();
        build_info.get_or_create(&build.labels()).set(1);
        registry.register(
            "ultra_boost_build_info",
            "Always 1; labels carry version, commit, build number and active fault injection",
            build_info,
        );
        registry.register_collector(Box::new(ProcessCollector::new(app_errors.clone())));

        let metrics = Metrics {
            registry,
            requests,
            durations,
            request_slots: Default::default(),
            duration_slots: Default::default(),
            in_flight,
            upstream_requests,
            upstream_durations,
            upstream_errors,
            app_errors,
            handed_over,
            background_runs,
            background_duration,
            background_last_success,
        };
        metrics.create_zero_series();
        metrics
    }

    /// Exports the series SLO ratios are built from before the first event.
    fn create_zero_series(&self) {
        let get = Method::GET;
        for (route, codes) in [
            (
                Route::Root,
                &[StatusCode::OK, StatusCode::INTERNAL_SERVER_ERROR][..],
            ),
            (
                Route::Ready,
                &[StatusCode::OK, StatusCode::SERVICE_UNAVAILABLE][..],
            ),
            (Route::Healthy, &[StatusCode::OK][..]),
            (Route::Metrics, &[StatusCode::OK][..]),
        ] {
            for code in codes {
                self.request_counter(route, &get, *code);
            }
            self.duration_histogram(route, &get);
        }
        for outcome in ["success", "failure"] {
            self.background_runs
                .get_or_create_owned(&OutcomeLabels { outcome });
        }
    }

    fn request_counter(&self, route: Route, method: &Method, code: StatusCode) -> Counter {
        let m = method_index(method);
        let make = || {
            self.requests.get_or_create_owned(&RequestLabels {
                method: METHODS[m],
                route: route.label(),
                code: code.as_u16(),
            })
        };
        match code_index(code) {
            Some(c) => self.request_slots[route as usize][m][c]
                .get_or_init(make)
                .clone(),
            None => make(),
        }
    }

    fn duration_histogram(&self, route: Route, method: &Method) -> &Histogram {
        let m = method_index(method);
        self.duration_slots[route as usize][m].get_or_init(|| {
            self.durations.get_or_create_owned(&DurationLabels {
                method: METHODS[m],
                route: route.label(),
            })
        })
    }

    /// Counts one answered request and records how long it took.
    pub fn observe_request(
        &self,
        route: Route,
        method: &Method,
        code: StatusCode,
        elapsed: Duration,
    ) {
        let m = method_index(method);
        match code_index(code) {
            Some(c) => {
                if let Some(counter) = self.request_slots[route as usize][m][c].get() {
                    counter.inc();
                } else {
                    self.request_counter(route, method, code).inc();
                }
            }
            None => {
                self.request_counter(route, method, code).inc();
            }
        }
        self.duration_histogram(route, method)
            .observe(elapsed.as_secs_f64());
    }

    /// Counts a background run.
    pub fn background_run(&self, success: bool) {
        let outcome = if success { "success" } else { "failure" };
        self.background_runs
            .get_or_create(&OutcomeLabels { outcome })
            .inc();
    }

    /// Counts an error inside the service.
    pub fn app_error(&self, subsystem: &'static str, kind: &'static str) {
        self.app_errors
            .get_or_create(&AppErrorLabels { subsystem, kind })
            .inc();
    }

    /// Encodes every metric; OpenMetrics text when `openmetrics`, else Prometheus text 0.0.4.
    /// Returns the body and its content type.
    pub fn encode(&self, openmetrics: bool) -> Result<(String, &'static str), std::fmt::Error> {
        let mut out = String::with_capacity(8 * 1024);
        if openmetrics {
            prometheus_client::encoding::text::encode(&mut out, &self.registry)?;
            Ok((
                out,
                "application/openmetrics-text; version=1.0.0; charset=utf-8",
            ))
        } else {
            prometheus_client::encoding::prometheus_text::encode(&mut out, &self.registry)?;
            Ok((
                out,
                prometheus_client::encoding::prometheus_text::CONTENT_TYPE,
            ))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn build() -> BuildInfo {
        BuildInfo {
            version: "1.2.3",
            commit: "abc".to_owned(),
            build: "42".to_owned(),
            fault_error_rate: 0.0,
            fault_latency_ms: 0,
        }
    }

    #[test]
    fn routes_are_bounded() {
        assert_eq!(Route::of("/").label(), "/");
        assert_eq!(Route::of("/-/ready").label(), "/-/ready");
        assert_eq!(Route::of("/wp-admin/../x").label(), "other");
        assert_eq!(Route::of("/metrics/").label(), "other");
    }

    #[test]
    fn request_counts_reach_the_exposition() {
        let m = Metrics::new(&build());
        for _ in 0..3 {
            m.observe_request(
                Route::Root,
                &Method::GET,
                StatusCode::OK,
                Duration::from_millis(3),
            );
        }
        m.observe_request(
            Route::Other,
            &Method::from_bytes(b"BREW").unwrap(),
            StatusCode::IM_A_TEAPOT,
            Duration::from_millis(300),
        );
        let (text, ctype) = m.encode(false).unwrap();
        assert!(ctype.starts_with("text/plain; version=0.0.4"));
        assert!(
            text.contains(
                r#"ultra_boost_http_requests_total{method="GET",route="/",code="200"} 3"#
            ),
            "{text}"
        );
        assert!(
            text.contains(
                r#"ultra_boost_http_requests_total{method="GET",route="/",code="500"} 0"#
            )
        );
        assert!(text.contains(
            r#"ultra_boost_http_requests_total{method="OTHER",route="other",code="418"} 1"#
        ));
        assert!(text.contains(
            r#"ultra_boost_http_request_duration_seconds_bucket{le="0.2",method="GET",route="/"} 3"#
        ) || text.contains(
            r#"ultra_boost_http_request_duration_seconds_bucket{method="GET",route="/",le="0.2"} 3"#
        ), "{text}");
        assert!(text.contains(r#"ultra_boost_build_info{version="1.2.3",commit="abc",build="42",fault_error_rate="0",fault_latency_ms="0"} 1"#), "{text}");
        assert!(text.contains(r#"ultra_boost_background_runs_total{outcome="failure"} 0"#));
    }

    #[test]
    fn openmetrics_ends_with_eof() {
        let m = Metrics::new(&build());
        let (text, ctype) = m.encode(true).unwrap();
        assert!(ctype.starts_with("application/openmetrics-text"));
        assert!(text.ends_with("# EOF\n"));
    }
}
