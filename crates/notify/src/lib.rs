//! guard's notifiers: Slack, Microsoft Teams, signed webhooks, Grafana
//! annotations and GitHub deployments.
//!
//! The engine hands every [`Event`] to a dispatcher and moves on: delivery runs
//! on its own queue per target, retries with backoff, and never blocks or
//! changes a decision.
//!
//! - [`config`]: the `notify:` section of guard.yaml and its `GUARD_*` overrides.
//! - [`Dispatcher`]: queues, retries, delivery log and metrics.
//! - [`message`]: what every message says; [`slack`], [`teams`], [`webhook`],
//!   [`grafana`], [`github`]: how each target wants it, following each
//!   service's documented format.
//!
//! ```no_run
//! # async fn demo(event: notify::Event) -> Result<(), notify::NotifyError> {
//! use std::sync::Arc;
//! let mut registry = prometheus_client::registry::Registry::default();
//! let config = notify::NotifyConfig::default(); // from guard.yaml
//! let dispatcher = notify::Dispatcher::from_config(
//!     &config, &notify::ProcessEnv, &mut registry, Arc::new(notify::NoLog))?;
//! dispatcher.send(event); // returns at once
//! dispatcher.flush(std::time::Duration::from_secs(10)).await;
//! # Ok(()) }
//! ```

#![forbid(unsafe_code)]

pub mod config;
mod dispatcher;
pub mod github;
pub mod grafana;
pub mod message;
mod secret;
pub mod slack;
pub mod teams;
mod transport;
pub mod webhook;

pub use config::{NotifyConfig, ProcessEnv, Strings, Targets};

/// How the reason of a hold for a signal source outage begins: such a hold
/// resumes on its own, and the message says so.
pub const SOURCE_DOWN_REASON: &str = "signal source down";
pub use dispatcher::{
    DeliveryLog, DeliveryRecord, Dispatcher, MemoryLog, NoLog, NotifyError, Outcome,
};
pub use secret::{Redactor, Secret};

use serde::{Deserialize, Serialize};

/// What happened to a release. One event per step the team should hear about.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EventKind {
    /// A rollout began: the candidate takes traffic and is being verified.
    Started,
    /// The candidate passed verification and is now the stable release.
    Promoted,
    /// The candidate burned budget and the previous build is back.
    Reverted,
    /// guard cannot decide (no data, source down, shared outage) and asks a person.
    Held,
    /// A person rolled back or aborted by hand.
    RolledBack,
    /// An SLO alert fired (from Alertmanager).
    IncidentOpened,
    /// That alert resolved.
    IncidentResolved,
}

/// The numbers behind a verdict, as the judge reported them.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Evidence {
    /// The SLO that decided (the first to fail, or the last to pass).
    pub slo: Option<String>,
    pub events: u64,
    pub bad_events: u64,
    pub release_error_ratio: Option<f64>,
    pub baseline_error_ratio: Option<f64>,
    /// Log-likelihood ratio and the bounds it is compared with.
    pub statistic: Option<f64>,
    pub lower_bound: Option<f64>,
    pub upper_bound: Option<f64>,
    /// Share (percent) of the period's error budget the release burned beyond its baseline.
    pub budget_burned_pct: Option<f64>,
}

/// A rollout or incident event, with everything a message needs.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Event {
    pub kind: EventKind,
    pub service: String,
    pub environment: String,
    /// Build that ran before (the baseline / revert target).
    pub previous_build: Option<String>,
    /// Build being rolled out (or the suspect, for incidents).
    pub build: Option<String>,
    pub commit: Option<String>,
    /// One-line human reason, e.g. "error ratio 5.1 % vs baseline 0.0 %: SPRT crossed its revert bound".
    pub reason: String,
    pub evidence: Evidence,
    /// Seconds from the candidate taking traffic to the verdict.
    pub seconds_to_verdict: Option<f64>,
    /// Unix milliseconds: start and end of the verification (Grafana region).
    pub started_at_ms: i64,
    pub ended_at_ms: Option<i64>,
    /// guard's status page for this rollout, when configured.
    pub status_url: Option<String>,
    /// Where the release can be reached (review apps), for GitHub deployments.
    pub environment_url: Option<String>,
    /// Review environments are transient (GitHub `transient_environment`).
    pub transient: bool,
    /// Rollout id in guard's history, so deliveries can be recorded against it.
    pub rollout_id: Option<i64>,
}
