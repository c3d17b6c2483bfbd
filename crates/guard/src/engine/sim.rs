//! In-process simulations of the engine's edges, for the engine's tests and the
//! scale benchmark (`examples/scale.rs`): [`SimPlatform`] keeps what runs in
//! memory and records every action; [`SimSource`] produces cumulative counts
//! per release from a request rate and a per-build error ratio.
//!
//! They are simulations, not doubles of a real system: nothing here speaks a
//! protocol. Real platforms and sources are tested against real processes.

use std::collections::HashMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use crate::platform::{
    BoxFuture, Build, Endpoint, Observed, Platform, PlatformError, Role, Strategy, Target,
};
use crate::signals::{Counts, ReleaseSignals, SignalError, SignalSource, Snapshot};

#[derive(Clone, Debug, Default)]
struct SimTarget {
    stable: Option<String>,
    candidate: Option<String>,
    share: f64,
}

/// A platform that only keeps state. Every call is recorded in [`SimPlatform::actions`].
#[derive(Default)]
pub struct SimPlatform {
    targets: Mutex<HashMap<Target, SimTarget>>,
    actions: Mutex<Vec<(Target, String)>>,
    /// Builds whose replicas never become ready.
    pub never_ready: Mutex<Vec<String>>,
    /// When set, every call waits this long (an action in flight, for crash tests).
    pub action_delay: Mutex<Option<std::time::Duration>>,
}

impl SimPlatform {
    /// Sets what runs for a target, without recording an action.
    pub fn install(&self, target: &Target, stable: &str) {
        let mut t = self.targets.lock().unwrap_or_else(|p| p.into_inner());
        t.insert(
            target.clone(),
            SimTarget {
                stable: Some(stable.into()),
                candidate: None,
                share: 0.0,
            },
        );
    }

    /// Every action so far, as `(target, "shift 2 0.5" | "promote 2" | "revert 1")`.
    pub fn actions(&self) -> Vec<(Target, String)> {
        self.actions
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// `(stable, candidate, share)` for a target.
    pub fn state(&self, target: &Target) -> (Option<String>, Option<String>, f64) {
        let t = self.targets.lock().unwrap_or_else(|p| p.into_inner());
        t.get(target)
            .map(|s| (s.stable.clone(), s.candidate.clone(), s.share))
            .unwrap_or_default()
    }

    fn record(&self, target: &Target, what: String) {
        self.actions
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push((target.clone(), what));
    }

    async fn delay(&self) {
        let d = *self.action_delay.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(d) = d {
            tokio::time::sleep(d).await;
        }
    }
}

impl Platform for SimPlatform {
    fn observe<'a>(&'a self, target: &'a Target) -> BoxFuture<'a, Result<Observed, PlatformError>> {
        Box::pin(async move {
            let t = self.targets.lock().unwrap_or_else(|p| p.into_inner());
            let s = t.get(target).cloned().unwrap_or_default();
            let mut endpoints = vec![];
            if let Some(b) = &s.stable {
                endpoints.push(Endpoint {
                    role: Role::Stable,
                    build: b.clone(),
                    metrics_url: format!("sim://{b}"),
                    ready: true,
                });
            }
            if let Some(b) = &s.candidate {
                endpoints.push(Endpoint {
                    role: Role::Candidate,
                    build: b.clone(),
                    metrics_url: format!("sim://{b}"),
                    ready: true,
                });
            }
            Ok(Observed {
                stable: s.stable,
                candidate: s.candidate,
                candidate_share: s.share,
                endpoints,
            })
        })
    }

    fn shift<'a>(
        &'a self,
        target: &'a Target,
        stable: &'a Build,
        candidate: &'a Build,
        _strategy: Strategy,
        share: f64,
    ) -> BoxFuture<'a, Result<(), PlatformError>> {
        Box::pin(async move {
            self.delay().await;
            self.record(target, format!("shift {} {share}", candidate.number));
            let never = self
                .never_ready
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .contains(&candidate.number);
            if never {
                return Err(PlatformError::NotReady {
                    build: candidate.number.clone(),
                    seconds: 0,
                    detail: "simulated".into(),
                });
            }
            let mut t = self.targets.lock().unwrap_or_else(|p| p.into_inner());
            let e = t.entry(target.clone()).or_default();
            e.stable = Some(stable.number.clone());
            e.candidate = Some(candidate.number.clone());
            e.share = share;
            Ok(())
        })
    }

    fn promote<'a>(
        &'a self,
        target: &'a Target,
        candidate: &'a Build,
    ) -> BoxFuture<'a, Result<(), PlatformError>> {
        Box::pin(async move {
            self.delay().await;
            self.record(target, format!("promote {}", candidate.number));
            let mut t = self.targets.lock().unwrap_or_else(|p| p.into_inner());
            t.insert(
                target.clone(),
                SimTarget {
                    stable: Some(candidate.number.clone()),
                    candidate: None,
                    share: 0.0,
                },
            );
            Ok(())
        })
    }

    fn revert<'a>(
        &'a self,
        target: &'a Target,
        to: &'a Build,
    ) -> BoxFuture<'a, Result<(), PlatformError>> {
        Box::pin(async move {
            self.delay().await;
            self.record(target, format!("revert {}", to.number));
            let mut t = self.targets.lock().unwrap_or_else(|p| p.into_inner());
            t.insert(
                target.clone(),
                SimTarget {
                    stable: Some(to.number.clone()),
                    candidate: None,
                    share: 0.0,
                },
            );
            Ok(())
        })
    }
}

#[derive(Default)]
struct Accum {
    total: f64,
    bad: HashMap<String, f64>,
    /// Good events last reported per SLO: a real counter pair never lets
    /// `total − bad` fall, so neither does this double.
    good: HashMap<String, u64>,
}

/// Cumulative counts per release, growing with the wall clock at `rps` per
/// target split by traffic share; a build's bad events follow its error ratio
/// per SLO (deterministic expected values, no randomness).
pub struct SimSource {
    platform: std::sync::Arc<SimPlatform>,
    rps: f64,
    slos: Vec<String>,
    /// Error ratio per build and SLO; builds not listed use `base_error_ratio`.
    error_ratio: Mutex<HashMap<(String, String), f64>>,
    base_error_ratio: f64,
    state: Mutex<HashMap<(Target, String), Accum>>,
    last: Mutex<HashMap<Target, Instant>>,
    /// When `true`, every read fails as unavailable.
    pub down: AtomicBool,
}

impl SimSource {
    pub fn new(
        platform: std::sync::Arc<SimPlatform>,
        rps: f64,
        slos: Vec<String>,
        base_error_ratio: f64,
    ) -> Self {
        Self {
            platform,
            rps,
            slos,
            error_ratio: Mutex::new(HashMap::new()),
            base_error_ratio,
            state: Mutex::new(HashMap::new()),
            last: Mutex::new(HashMap::new()),
            down: AtomicBool::new(false),
        }
    }

    /// Makes `build` fail `ratio` of its events on `slo`.
    pub fn set_error_ratio(&self, build: &str, slo: &str, ratio: f64) {
        self.error_ratio
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert((build.into(), slo.into()), ratio);
    }
}

impl SignalSource for SimSource {
    fn snapshot<'a>(
        &'a self,
        target: &'a Target,
        _endpoints: &'a [Endpoint],
    ) -> BoxFuture<'a, Result<Snapshot, SignalError>> {
        Box::pin(async move {
            if self.down.load(Ordering::Relaxed) {
                return Err(SignalError::Unavailable {
                    detail: "simulated outage".into(),
                });
            }
            let (stable, candidate, share) = self.platform.state(target);
            let now = Instant::now();
            let dt = {
                let mut last = self.last.lock().unwrap_or_else(|p| p.into_inner());
                let prev = last.insert(target.clone(), now).unwrap_or(now);
                now.duration_since(prev).as_secs_f64()
            };
            let ratios = self
                .error_ratio
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .clone();
            let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
            let mut releases = vec![];
            let sides = [
                (Role::Stable, stable, 1.0 - share),
                (Role::Candidate, candidate.clone(), share),
            ];
            for (role, build, weight) in sides {
                let Some(build) = build else { continue };
                let weight = if candidate.is_none() { 1.0 } else { weight };
                let acc = state.entry((target.clone(), build.clone())).or_default();
                let n = self.rps * weight * dt;
                acc.total += n;
                let mut by_slo = std::collections::BTreeMap::new();
                for slo in &self.slos {
                    let r = ratios
                        .get(&(build.clone(), slo.clone()))
                        .copied()
                        .unwrap_or(self.base_error_ratio);
                    let bad = acc.bad.entry(slo.clone()).or_default();
                    *bad += n * r;
                    let total = acc.total.floor() as u64;
                    let bad = (bad.floor() as u64).min(total);
                    // Whole bad events can round up before the whole events
                    // that carry them: keep good from going down, or the
                    // engine's differences would drop those errors.
                    let last_good = acc.good.entry(slo.clone()).or_default();
                    let good = (total - bad).max(*last_good).min(total);
                    *last_good = good;
                    by_slo.insert(slo.clone(), Counts { good, total });
                }
                releases.push(ReleaseSignals {
                    role,
                    build,
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
