//! Leader election on a `coordination.k8s.io/v1` Lease, so several guard
//! replicas can run and exactly one acts.
//!
//! The loop is client-go's, written small against kube 5:
//!
//! 1. Read the Lease. Absent: create it with `holderIdentity` = us. A 409 on
//!    create means another replica won the race.
//! 2. Held by us: renew (`renewTime` = now) by `replace`, which carries the
//!    `resourceVersion` we read, so a concurrent writer makes it fail (409).
//! 3. Held by another: take it over only when it is empty or has *expired*,
//!    i.e. its record has not changed for `leaseDurationSeconds` as measured
//!    on **our own clock** from when we first saw that record (clock skew
//!    between nodes cannot make us steal a live lease). A takeover bumps
//!    `leaseTransitions` and is again conditional on `resourceVersion`.
//! 4. Repeat every `retry_period`. A leader that has not renewed successfully
//!    within `renew_deadline` steps down (reports `false`) before the lease
//!    can expire for the others, so two replicas never both believe they lead.
//!
//! On shutdown a leader releases the lease (empty holder) so a successor
//! does not wait out the lease duration.

use std::time::Duration;

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
use kube::api::{Api, ObjectMeta, PostParams};
use tokio::sync::watch;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// Lease parameters. The defaults are client-go's (15 s / 10 s / 2 s).
#[derive(Clone, Debug)]
pub struct LeaseSettings {
    pub namespace: String,
    pub name: String,
    /// This replica's identity (pod name in-cluster).
    pub identity: String,
    /// How long a lease is valid without renewal.
    pub lease_duration: Duration,
    /// A leader that could not renew for this long steps down; must be < `lease_duration`.
    pub renew_deadline: Duration,
    /// How often to try to acquire or renew.
    pub retry_period: Duration,
}

impl LeaseSettings {
    pub fn new(
        namespace: impl Into<String>,
        name: impl Into<String>,
        identity: impl Into<String>,
    ) -> Self {
        LeaseSettings {
            namespace: namespace.into(),
            name: name.into(),
            identity: identity.into(),
            lease_duration: Duration::from_secs(15),
            renew_deadline: Duration::from_secs(10),
            retry_period: Duration::from_secs(2),
        }
    }

    /// Checks the timing rules client-go enforces.
    pub fn validate(&self) -> Result<(), LeaseError> {
        if self.identity.is_empty() {
            return Err(LeaseError::Settings("identity must not be empty".into()));
        }
        if self.renew_deadline >= self.lease_duration {
            return Err(LeaseError::Settings(format!(
                "renew deadline ({:?}) must be shorter than the lease duration ({:?})",
                self.renew_deadline, self.lease_duration
            )));
        }
        if self.retry_period >= self.renew_deadline {
            return Err(LeaseError::Settings(format!(
                "retry period ({:?}) must be shorter than the renew deadline ({:?})",
                self.retry_period, self.renew_deadline
            )));
        }
        if self.lease_duration.as_secs() < 1 {
            return Err(LeaseError::Settings(
                "lease duration must be at least 1 s (leaseDurationSeconds is whole seconds)"
                    .into(),
            ));
        }
        Ok(())
    }
}

/// Errors of leader election.
#[derive(Debug, thiserror::Error)]
pub enum LeaseError {
    /// The timing or identity settings are unusable.
    #[error("lease settings: {0}")]
    Settings(String),
    /// The API server refused or could not be reached.
    #[error("lease {namespace}/{name}: {source}")]
    Api {
        namespace: String,
        name: String,
        source: kube::Error,
    },
}

/// Runs leader election for one replica.
pub struct LeaderElector {
    api: Api<Lease>,
    settings: LeaseSettings,
    /// The last record seen (resourceVersion of it) and when we first saw it.
    observed: Option<(String, Instant)>,
}

fn now_micro() -> MicroTime {
    MicroTime(jiff::Timestamp::now())
}

impl LeaderElector {
    pub fn new(client: kube::Client, settings: LeaseSettings) -> Result<Self, LeaseError> {
        settings.validate()?;
        let api = Api::namespaced(client, &settings.namespace);
        Ok(LeaderElector {
            api,
            settings,
            observed: None,
        })
    }

    pub fn settings(&self) -> &LeaseSettings {
        &self.settings
    }

    fn api_error(&self, source: kube::Error) -> LeaseError {
        LeaseError::Api {
            namespace: self.settings.namespace.clone(),
            name: self.settings.name.clone(),
            source,
        }
    }

    fn lease_seconds(&self) -> i32 {
        i32::try_from(self.settings.lease_duration.as_secs()).unwrap_or(i32::MAX)
    }

    /// One attempt to acquire or renew; `Ok(true)` when we hold the lease afterwards.
    pub async fn try_acquire_or_renew(&mut self) -> Result<bool, LeaseError> {
        let me = self.settings.identity.clone();
        let current = match self.api.get_opt(&self.settings.name).await {
            Ok(l) => l,
            Err(e) => return Err(self.api_error(e)),
        };
        let Some(mut lease) = current else {
            let now = now_micro();
            let lease = Lease {
                metadata: ObjectMeta {
                    name: Some(self.settings.name.clone()),
                    ..Default::default()
                },
                spec: Some(LeaseSpec {
                    holder_identity: Some(me.clone()),
                    lease_duration_seconds: Some(self.lease_seconds()),
                    acquire_time: Some(now.clone()),
                    renew_time: Some(now),
                    lease_transitions: Some(0),
                    ..Default::default()
                }),
            };
            return match self.api.create(&PostParams::default(), &lease).await {
                Ok(created) => {
                    self.observe(&created);
                    tracing::info!(identity = %me, lease = %self.settings.name, "created the lease; leading");
                    Ok(true)
                }
                Err(kube::Error::Api(s)) if s.code == 409 => Ok(false),
                Err(e) => Err(self.api_error(e)),
            };
        };
        self.observe(&lease);
        let spec = lease.spec.clone().unwrap_or_default();
        let holder = spec.holder_identity.clone().unwrap_or_default();
        let ours = holder == me;
        if !ours && !holder.is_empty() {
            let duration = spec
                .lease_duration_seconds
                .and_then(|s| u64::try_from(s).ok())
                .map(Duration::from_secs)
                .unwrap_or(self.settings.lease_duration);
            let seen_for = self
                .observed
                .as_ref()
                .map(|(_, at)| at.elapsed())
                .unwrap_or_default();
            if seen_for < duration {
                return Ok(false);
            }
            tracing::info!(identity = %me, previous = %holder, "lease expired; taking it over");
        }
        let now = now_micro();
        let mut next = spec.clone();
        next.holder_identity = Some(me.clone());
        next.lease_duration_seconds = Some(self.lease_seconds());
        next.renew_time = Some(now.clone());
        if !ours {
            next.acquire_time = Some(now);
            next.lease_transitions = Some(spec.lease_transitions.unwrap_or(0) + 1);
        }
        lease.spec = Some(next);
        // `replace` sends metadata.resourceVersion: conditional on what we read.
        match self
            .api
            .replace(&self.settings.name, &PostParams::default(), &lease)
            .await
        {
            Ok(updated) => {
                self.observe(&updated);
                Ok(true)
            }
            Err(kube::Error::Api(s)) if s.code == 409 => Ok(false),
            Err(e) => Err(self.api_error(e)),
        }
    }

    fn observe(&mut self, lease: &Lease) {
        let rv = lease.metadata.resource_version.clone().unwrap_or_default();
        if self.observed.as_ref().map(|(v, _)| v) != Some(&rv) {
            self.observed = Some((rv, Instant::now()));
        }
    }

    /// Gives the lease up if we hold it (empty holder, so others need not wait).
    pub async fn release(&mut self) -> Result<(), LeaseError> {
        let Some(mut lease) = self
            .api
            .get_opt(&self.settings.name)
            .await
            .map_err(|e| self.api_error(e))?
        else {
            return Ok(());
        };
        let mut spec = lease.spec.clone().unwrap_or_default();
        if spec.holder_identity.as_deref() != Some(self.settings.identity.as_str()) {
            return Ok(());
        }
        spec.holder_identity = None;
        spec.renew_time = Some(now_micro());
        spec.lease_duration_seconds = Some(1);
        lease.spec = Some(spec);
        match self
            .api
            .replace(&self.settings.name, &PostParams::default(), &lease)
            .await
        {
            Ok(_) => {
                tracing::info!(identity = %self.settings.identity, "released the lease");
                Ok(())
            }
            Err(kube::Error::Api(s)) if s.code == 409 => Ok(()),
            Err(e) => Err(self.api_error(e)),
        }
    }

    /// Runs the election until `shutdown`, publishing whether we lead on
    /// `leading`. Releases the lease on the way out.
    pub async fn run(mut self, leading: watch::Sender<bool>, shutdown: CancellationToken) {
        let mut last_renew: Option<Instant> = None;
        loop {
            let attempt = tokio::select! {
                _ = shutdown.cancelled() => break,
                r = tokio::time::timeout(self.settings.retry_period.max(Duration::from_millis(100)) * 2, self.try_acquire_or_renew()) => r,
            };
            let held = match attempt {
                Ok(Ok(true)) => {
                    last_renew = Some(Instant::now());
                    true
                }
                Ok(Ok(false)) => {
                    last_renew = None;
                    false
                }
                Ok(Err(e)) => {
                    tracing::warn!(error = %e, "lease request failed");
                    // Keep leading only while the last renewal is within the deadline.
                    last_renew.is_some_and(|t| t.elapsed() < self.settings.renew_deadline)
                }
                Err(_) => {
                    tracing::warn!("lease request timed out");
                    last_renew.is_some_and(|t| t.elapsed() < self.settings.renew_deadline)
                }
            };
            if *leading.borrow() != held {
                tracing::info!(identity = %self.settings.identity, leading = held, "leadership changed");
                let _ = leading.send(held);
            }
            tokio::select! {
                _ = shutdown.cancelled() => break,
                _ = tokio::time::sleep(self.settings.retry_period) => {}
            }
        }
        let _ = leading.send(false);
        if let Err(e) = self.release().await {
            tracing::warn!(error = %e, "could not release the lease; others take over when it expires");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn settings_follow_client_go_rules() {
        let ok = LeaseSettings::new("ns", "guard", "a");
        assert!(ok.validate().is_ok());
        let mut bad = ok.clone();
        bad.renew_deadline = bad.lease_duration;
        assert!(bad.validate().is_err());
        let mut bad = ok.clone();
        bad.retry_period = bad.renew_deadline;
        assert!(bad.validate().is_err());
        let mut bad = ok;
        bad.identity.clear();
        assert!(bad.validate().is_err());
    }
}
