//! Signals: good and total event counts per release, read from a source.
//!
//! A source returns **cumulative** counts per release and SLO since it began
//! watching that release; the engine differences successive snapshots into
//! per-interval counts for the judge. Counter resets and missed scrapes are the
//! source's to absorb: a reset never becomes negative counts, a missed scrape is
//! never zero traffic, it is reported as staleness so the judge can hold.

pub mod prometheus;
pub mod scrape;

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::platform::{BoxFuture, Endpoint, Role, Target};

/// Good and total events. `good <= total` always.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Counts {
    pub good: u64,
    pub total: u64,
}

/// Cumulative counts per SLO (by SLO name) for one release.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ReleaseSignals {
    pub role: Role,
    pub build: String,
    pub by_slo: BTreeMap<String, Counts>,
}

/// One read of a source.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Snapshot {
    pub releases: Vec<ReleaseSignals>,
    /// Seconds since the source last read every endpoint successfully; `None`
    /// when it never has. The engine holds when this exceeds its tolerance.
    pub staleness_seconds: Option<f64>,
    /// Why the last failed read of an endpoint failed, when one still does:
    /// what a hold for a silent source tells people.
    #[serde(default)]
    pub last_error: Option<String>,
}

/// Errors reading a source. "No data" is its own variant, not a failed query.
#[derive(Debug, thiserror::Error)]
pub enum SignalError {
    /// The source answered but has no series for the release yet.
    #[error("no data for build {build} of {service}")]
    NoData { service: String, build: String },
    /// The source could not be reached or answered with an error.
    #[error("signal source unavailable: {detail}")]
    Unavailable { detail: String },
}

/// Reads event counts for the releases of a target.
pub trait SignalSource: Send + Sync + 'static {
    fn snapshot<'a>(
        &'a self,
        target: &'a Target,
        endpoints: &'a [Endpoint],
    ) -> BoxFuture<'a, Result<Snapshot, SignalError>>;

    /// Stops reading in the background (guard is shutting down and is about
    /// to stop the replicas). A source that reads only when asked has
    /// nothing to stop.
    fn stop(&self) {}
}
