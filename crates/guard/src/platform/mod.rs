//! Where releases run: the [`Platform`] edge of guard.
//!
//! The rollout engine never starts a process or patches a Deployment itself: it
//! asks a platform to move traffic between the stable and the candidate release,
//! and reads back what runs. Two platforms implement it: `local` (replicas are
//! child processes behind guard's router; the embedded default) and `kubernetes`
//! (Deployments through kube-rs).
//!
//! Contract for every method: **idempotent**. The engine writes its next state to
//! the store *before* it calls the platform, so after a crash it calls the same
//! method again with the same arguments; a platform must converge, not act twice.

pub mod kubernetes;
pub mod local;

use std::collections::BTreeMap;
use std::future::Future;
use std::pin::Pin;

use serde::{Deserialize, Serialize};

/// A boxed future, so the trait stays object-safe (`Arc<dyn Platform>`).
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// A service in an environment: what one rollout acts on.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Target {
    pub service: String,
    pub environment: String,
}

/// An immutable artefact. `number` is the build number CI gives (`86`, `pr-42`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Build {
    pub number: String,
    /// Git commit the build was made from, when known.
    pub commit: Option<String>,
    /// Container image reference (kubernetes platform).
    pub image: Option<String>,
    /// Program and arguments (local platform).
    pub command: Vec<String>,
    /// Extra environment for the program (local platform).
    pub env: BTreeMap<String, String>,
}

/// Which side of a rollout a replica or a signal belongs to.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    /// The release that ran before the rollout (the baseline, the revert target).
    Stable,
    /// The release being rolled out.
    Candidate,
}

/// A replica's address for reading signals.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Endpoint {
    pub role: Role,
    pub build: String,
    /// e.g. `http://127.0.0.1:41234/metrics`.
    pub metrics_url: String,
    pub ready: bool,
}

/// How traffic moves to a candidate.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Strategy {
    /// Replace replicas one at a time, readiness-gated, `maxUnavailable: 0`.
    Rolling,
    /// Run the candidate beside the stable release and move weights in steps.
    Canary,
}

impl Strategy {
    /// The word guard.yaml and the CLI use.
    pub fn as_str(self) -> &'static str {
        match self {
            Strategy::Rolling => "rolling",
            Strategy::Canary => "canary",
        }
    }
}

/// What runs now for a target, as the platform sees it.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Observed {
    pub stable: Option<String>,
    pub candidate: Option<String>,
    /// Share of traffic (0.0..=1.0) the candidate receives.
    pub candidate_share: f64,
    pub endpoints: Vec<Endpoint>,
}

/// Errors at the platform edge.
#[derive(Debug, thiserror::Error)]
pub enum PlatformError {
    /// The target is not configured on this platform.
    #[error("unknown service {service:?} in environment {environment:?}")]
    UnknownTarget {
        service: String,
        environment: String,
    },
    /// A replica did not become ready (it exited, failed its probe or took
    /// too long); the rollout must not go on.
    #[error("build {build} did not become ready (it had {seconds} s): {detail}")]
    NotReady {
        build: String,
        seconds: u64,
        detail: String,
    },
    /// Starting a process or calling the cluster failed.
    #[error("{action} failed: {detail}")]
    Action { action: String, detail: String },
}

/// Runs builds and moves traffic between them. See the module docs for the
/// idempotency contract.
pub trait Platform: Send + Sync + 'static {
    /// What runs now.
    fn observe<'a>(&'a self, target: &'a Target) -> BoxFuture<'a, Result<Observed, PlatformError>>;

    /// Give `candidate` `share` (0.0..=1.0) of the traffic beside `stable`.
    /// Rolling: the share is the fraction of replicas replaced; 1.0 means every
    /// replica runs the candidate and the stable replicas are drained.
    /// Canary: the candidate runs beside the stable release at router weight `share`.
    fn shift<'a>(
        &'a self,
        target: &'a Target,
        stable: &'a Build,
        candidate: &'a Build,
        strategy: Strategy,
        share: f64,
    ) -> BoxFuture<'a, Result<(), PlatformError>>;

    /// The candidate becomes the stable release at 100 %; the old one is drained.
    fn promote<'a>(
        &'a self,
        target: &'a Target,
        candidate: &'a Build,
    ) -> BoxFuture<'a, Result<(), PlatformError>>;

    /// `to` (the last good build) back at 100 %; the candidate is drained.
    fn revert<'a>(
        &'a self,
        target: &'a Target,
        to: &'a Build,
    ) -> BoxFuture<'a, Result<(), PlatformError>>;
}
