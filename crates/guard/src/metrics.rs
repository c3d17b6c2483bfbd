//! guard's own metrics, served at `/metrics`: rollouts by verdict, time to
//! verdict, rollouts in progress. The router registers its traffic metrics in
//! the same registry (see `router::metrics`).

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

/// Labels of `guard_rollouts_total`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct VerdictLabels {
    /// `promote`, `revert`, `abort`, `rollback`.
    pub verdict: String,
}

/// The engine's metric handles. Cheap to clone (handles share their values).
#[derive(Clone, Debug)]
pub struct GuardMetrics {
    rollouts: Family<VerdictLabels, Counter>,
    /// Seconds from the candidate taking traffic to promote or revert.
    pub time_to_verdict: Histogram,
    /// Rollouts being driven now.
    pub rollouts_active: Gauge,
}

impl Default for GuardMetrics {
    fn default() -> Self {
        Self {
            rollouts: Family::default(),
            time_to_verdict: Histogram::new([
                1.0, 2.0, 5.0, 10.0, 20.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0,
            ]),
            rollouts_active: Gauge::default(),
        }
    }
}

impl GuardMetrics {
    /// New handles, registered in `registry` under the `guard_` prefix.
    pub fn register(registry: &mut Registry) -> Self {
        let m = Self::default();
        registry.register(
            "guard_rollouts",
            "Finished rollouts by verdict",
            m.rollouts.clone(),
        );
        registry.register(
            "guard_time_to_verdict_seconds",
            "Seconds from the candidate taking traffic to its verdict",
            m.time_to_verdict.clone(),
        );
        registry.register(
            "guard_rollouts_active",
            "Rollouts in progress",
            m.rollouts_active.clone(),
        );
        m
    }

    /// The counter of finished rollouts with this verdict.
    pub fn rollouts_total(&self, verdict: &str) -> Counter {
        self.rollouts
            .get_or_create(&VerdictLabels {
                verdict: verdict.to_string(),
            })
            .clone()
    }
}
