//! The router's traffic metrics: requests by release and code, and the failures
//! the router itself caused (what "zero failed requests" is measured on).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

use crate::platform::Role;

/// Labels of `guard_router_requests_total`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    pub service: String,
    pub environment: String,
    pub build: String,
    pub role: String,
    pub code: String,
}

/// Labels of `guard_router_failures_total`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct FailureLabels {
    pub service: String,
    pub environment: String,
    /// `no_backend` (503: no ready replica), `upstream` (502: the replica failed
    /// after the request was sent, or every retry failed to connect),
    /// `bad_request` (400/413 on an unreadable request body).
    pub kind: String,
}

/// Labels of `guard_router_handed_over_connections_total`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct HandoffLabels {
    pub service: String,
    pub environment: String,
    pub build: String,
}

/// Labels of the router's latency histogram and retry counter.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RouteLabels {
    pub service: String,
    pub environment: String,
    pub role: String,
}

fn latency_histogram() -> Histogram {
    Histogram::new([
        0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.2, 0.3, 0.5, 1.0, 2.5, 5.0,
    ])
}

/// The metric families, shared by every router of one guard (one label set per
/// service and environment). Cheap to clone.
#[derive(Clone, Debug)]
pub struct RouterMetrics {
    pub(crate) requests: Family<RequestLabels, Counter>,
    pub(crate) failures: Family<FailureLabels, Counter>,
    pub(crate) retries: Family<RouteLabels, Counter>,
    pub(crate) duration: Family<RouteLabels, Histogram, fn() -> Histogram>,
    pub(crate) handed_over: Family<HandoffLabels, Counter>,
}

impl RouterMetrics {
    /// Creates the families and registers them into `registry`
    /// (names get the registry's prefix, if any).
    pub fn register(registry: &mut Registry) -> Self {
        let m = Self::unregistered();
        registry.register(
            "guard_router_requests",
            "Requests the router answered, by release (build, role) and response code",
            m.requests.clone(),
        );
        registry.register(
            "guard_router_failures",
            "Requests that failed at the router itself (no ready replica, connect or upstream errors)",
            m.failures.clone(),
        );
        registry.register(
            "guard_router_retries",
            "Requests retried on another replica after a connection error",
            m.retries.clone(),
        );
        registry.register(
            "guard_router_handed_over_connections",
            "Client connections handed over to a replica (steady state: their requests skip the router)",
            m.handed_over.clone(),
        );
        registry.register(
            "guard_router_request_duration_seconds",
            "Time from request to response headers through the router",
            m.duration.clone(),
        );
        m
    }

    /// Families that no registry exposes (tests, benchmarks).
    pub fn unregistered() -> Self {
        Self {
            requests: Family::default(),
            failures: Family::default(),
            retries: Family::default(),
            duration: Family::new_with_constructor(latency_histogram),
            handed_over: Family::default(),
        }
    }
}

/// Plain totals for one router, readable without a registry (the demo prints
/// `router_failed_requests`, tests assert on it).
#[derive(Debug, Default)]
pub struct RouterTotals {
    pub(crate) requests: AtomicU64,
    pub(crate) failures: AtomicU64,
    pub(crate) retries: AtomicU64,
    pub(crate) handed_over: AtomicU64,
}

/// A copy of [`RouterTotals`] at one moment.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct TotalsSnapshot {
    /// Requests answered (any code, failures included).
    pub requests: u64,
    /// Requests the router answered with its own 502/503/400 (connect errors
    /// after every retry, no ready replica, upstream failure).
    pub failures: u64,
    /// Requests retried on another replica (not failures: the client got an answer).
    pub retries: u64,
    /// Client connections handed over to a replica; their requests are not
    /// in `requests` (the replicas count them).
    pub handed_over: u64,
}

impl RouterTotals {
    pub fn snapshot(&self) -> TotalsSnapshot {
        TotalsSnapshot {
            requests: self.requests.load(Ordering::Relaxed),
            failures: self.failures.load(Ordering::Relaxed),
            retries: self.retries.load(Ordering::Relaxed),
            handed_over: self.handed_over.load(Ordering::Relaxed),
        }
    }
}

/// Label values of one router, resolved once.
#[derive(Debug)]
pub(crate) struct Labels {
    pub(crate) service: String,
    pub(crate) environment: String,
    pub(crate) metrics: RouterMetrics,
    pub(crate) totals: Arc<RouterTotals>,
    /// Latency histograms for the stable and the candidate role, resolved once.
    pub(crate) durations: [Histogram; 2],
}

impl Labels {
    pub(crate) fn new(service: String, environment: String, metrics: RouterMetrics) -> Self {
        let mut l = Self {
            service,
            environment,
            metrics,
            totals: Arc::default(),
            durations: [latency_histogram(), latency_histogram()],
        };
        // One statement each: a `get_or_create` guard holds the family's read
        // lock until the end of its statement, and the next call may need the
        // write lock.
        let stable = l
            .metrics
            .duration
            .get_or_create(&l.route(Role::Stable))
            .clone();
        let candidate = l
            .metrics
            .duration
            .get_or_create(&l.route(Role::Candidate))
            .clone();
        l.durations = [stable, candidate];
        l
    }

    pub(crate) fn duration(&self, role: Role) -> &Histogram {
        match role {
            Role::Stable => &self.durations[0],
            Role::Candidate => &self.durations[1],
        }
    }

    pub(crate) fn role_str(role: Role) -> &'static str {
        match role {
            Role::Stable => "stable",
            Role::Candidate => "candidate",
        }
    }

    pub(crate) fn request_counter(&self, build: &str, role: Role, code: u16) -> Counter {
        self.metrics
            .requests
            .get_or_create(&RequestLabels {
                service: self.service.clone(),
                environment: self.environment.clone(),
                build: build.to_string(),
                role: Self::role_str(role).to_string(),
                code: code.to_string(),
            })
            .clone()
    }

    pub(crate) fn failure(&self, kind: &str) {
        self.totals.failures.fetch_add(1, Ordering::Relaxed);
        self.totals.requests.fetch_add(1, Ordering::Relaxed);
        self.metrics
            .failures
            .get_or_create(&FailureLabels {
                service: self.service.clone(),
                environment: self.environment.clone(),
                kind: kind.to_string(),
            })
            .inc();
    }

    pub(crate) fn handed_over(&self, build: &str) {
        self.totals.handed_over.fetch_add(1, Ordering::Relaxed);
        self.metrics
            .handed_over
            .get_or_create(&HandoffLabels {
                service: self.service.clone(),
                environment: self.environment.clone(),
                build: build.to_string(),
            })
            .inc();
    }

    pub(crate) fn retry(&self, role: Role) {
        self.totals.retries.fetch_add(1, Ordering::Relaxed);
        self.metrics.retries.get_or_create(&self.route(role)).inc();
    }

    pub(crate) fn route(&self, role: Role) -> RouteLabels {
        RouteLabels {
            service: self.service.clone(),
            environment: self.environment.clone(),
            role: Self::role_str(role).to_string(),
        }
    }
}
