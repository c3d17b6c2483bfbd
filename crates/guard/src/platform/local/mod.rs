//! The `local` platform: replicas are child processes on loopback ports behind
//! guard's [router](crate::router), one router per service and environment.
//!
//! # Moves, the Kubernetes way
//! Every method computes a *desired* replica count per build and a traffic split,
//! then converges one replica at a time (`maxSurge 1`, `maxUnavailable 0`):
//! 1. If more replicas run than desired in total, or nothing is missing, retire
//!    one surplus replica (of a build no longer wanted first, unready ones
//!    first): take it out of the router (atomic swap), wait until the router has
//!    no request in flight on it, SIGTERM its process group, and reap it in the
//!    background (SIGKILL after `drain_timeout`).
//! 2. Otherwise start one missing replica, wait until `/-/ready` answers 200
//!    (`ready_timeout`, else [`PlatformError::NotReady`]: the new replica is
//!    killed and the move stops with the old replicas intact), add it to the
//!    router.
//!
//! | call | desired | traffic |
//! |---|---|---|
//! | `shift(Rolling, s)` | candidate `ceil(s·N)`, stable the rest | per replica |
//! | `shift(Canary, w)` | stable `N`, candidate `max(1, ceil(w·N))` (0 if w = 0) | candidate `w`, stable `1 − w` |
//! | `promote(c)` | `c` at `N` | per replica while old ones drain |
//! | `revert(to)` | `to` at `N` | `to` only (others serve only while `to` has no ready replica) |
//!
//! While a move runs the router relays every request; once a move converged to
//! one release (`promote`, `revert`) it hands client connections over to
//! replicas that take them (`{handoff_socket}`, see the router docs).
//!
//! All calls are idempotent: a second call finds nothing missing and nothing
//! surplus. `revert(to)` on a target where nothing runs simply starts `to`:
//! it is also how the engine brings up the first release.
//!
//! # Restart and crash
//! Replicas get `PR_SET_PDEATHSIG(SIGTERM)` and their own process group: when
//! guard dies, even by SIGKILL, they drain and exit instead of lingering as
//! orphans on their ports. A restarted guard therefore observes an empty
//! target, and the engine (which persisted its state) calls `shift`/`revert`
//! again; the move converges from nothing. A replica that crashes is marked
//! unready by the router at once and replaced at the next call.

mod replica;
mod sys;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use prometheus_client::registry::Registry;

use super::{
    BoxFuture, Build, Endpoint, Observed, Platform, PlatformError, Role, Strategy, Target,
};
use crate::router::{GroupSpec, Router, RouterConfig, RouterError, RouterMetrics, TotalsSnapshot};
use replica::Replica;

/// One service in one environment on the local platform.
#[derive(Clone, Debug)]
pub struct LocalTargetConfig {
    pub target: Target,
    /// The router's listen address (the service's front door); port 0 = any.
    pub listen: SocketAddr,
    /// Replicas of the stable release (`N`).
    pub replicas: usize,
    /// How long a new replica gets to answer `/-/ready` with 200.
    pub ready_timeout: Duration,
    /// How long a retired replica gets to exit after SIGTERM before SIGKILL.
    pub drain_timeout: Duration,
}

impl LocalTargetConfig {
    /// Defaults: 2 replicas, 30 s to become ready, 30 s to drain.
    pub fn new(target: Target, listen: SocketAddr) -> Self {
        Self {
            target,
            listen,
            replicas: 2,
            ready_timeout: Duration::from_secs(30),
            drain_timeout: Duration::from_secs(30),
        }
    }
}

/// How traffic is split between the builds in the router.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Split {
    /// Each ready replica gets an equal share (rolling updates, promote).
    PerReplica,
    /// The candidate group gets `w`, the stable group `1 − w`, others 0.
    Canary(f64),
}

/// What a move converges to.
#[derive(Clone, Debug)]
struct Desired {
    stable: Build,
    candidate: Option<Build>,
    stable_count: usize,
    candidate_count: usize,
    split: Split,
}

#[derive(Debug)]
struct TargetState {
    replicas: Vec<Replica>,
    stable: Option<String>,
    candidate: Option<String>,
    /// Role per build; a build that leaves the desired set keeps its last role
    /// while it drains (an old stable during promote stays "stable").
    roles: BTreeMap<String, Role>,
    split: Split,
}

struct TargetRuntime {
    config: LocalTargetConfig,
    router: Router,
    /// Serialises moves on one target; `observe` does not take it.
    op: tokio::sync::Mutex<()>,
    state: Mutex<TargetState>,
    /// Reapers of retired replicas, so shutdown can wait for them.
    reapers: tokio_util::task::TaskTracker,
}

/// The local platform. Cheap to clone.
#[derive(Clone)]
pub struct LocalPlatform {
    inner: Arc<Inner>,
}

struct Inner {
    targets: Mutex<BTreeMap<Target, Arc<TargetRuntime>>>,
    metrics: RouterMetrics,
    dir: PathBuf,
    next_id: AtomicU64,
    client: replica::ProbeClient,
}

impl Drop for Inner {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

static PLATFORM_SEQ: AtomicU64 = AtomicU64::new(0);

impl LocalPlatform {
    /// Starts a router for every target; router metrics are registered into
    /// `registry` (`guard_router_*`).
    pub async fn start(
        targets: Vec<LocalTargetConfig>,
        registry: &mut Registry,
    ) -> Result<Self, PlatformError> {
        Self::start_with_metrics(targets, RouterMetrics::register(registry)).await
    }

    /// The directory holding this platform's replica address files and Unix
    /// sockets (removed when the platform is dropped).
    pub fn runtime_dir(&self) -> &std::path::Path {
        &self.inner.dir
    }

    /// As [`LocalPlatform::start`], with metric families the caller registered.
    pub async fn start_with_metrics(
        targets: Vec<LocalTargetConfig>,
        metrics: RouterMetrics,
    ) -> Result<Self, PlatformError> {
        let dir = std::env::temp_dir().join(format!(
            "guard-local-{}-{}",
            std::process::id(),
            PLATFORM_SEQ.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&dir).map_err(|err| PlatformError::Action {
            action: format!("creating {}", dir.display()),
            detail: err.to_string(),
        })?;
        let platform = Self {
            inner: Arc::new(Inner {
                targets: Mutex::new(BTreeMap::new()),
                metrics,
                dir,
                next_id: AtomicU64::new(1),
                client: replica::probe_client(),
            }),
        };
        for t in targets {
            platform.add_target(t).await?;
        }
        Ok(platform)
    }

    /// Adds a target (e.g. a review environment) and starts its router; a
    /// target that exists already is left as it is.
    pub async fn add_target(&self, config: LocalTargetConfig) -> Result<SocketAddr, PlatformError> {
        if let Ok(rt) = self.runtime(&config.target) {
            return Ok(rt.router.local_addr());
        }
        if config.replicas == 0 {
            return Err(PlatformError::Action {
                action: format!(
                    "configuring {}/{}",
                    config.target.service, config.target.environment
                ),
                detail: "replicas must be at least 1".into(),
            });
        }
        let rc = RouterConfig::new(
            config.target.service.clone(),
            config.target.environment.clone(),
            config.listen,
        );
        let router = Router::start(rc, self.inner.metrics.clone())
            .await
            .map_err(|e: RouterError| PlatformError::Action {
                action: "starting the router".into(),
                detail: e.to_string(),
            })?;
        let addr = router.local_addr();
        let rt = Arc::new(TargetRuntime {
            config: config.clone(),
            router,
            op: tokio::sync::Mutex::new(()),
            state: Mutex::new(TargetState {
                replicas: Vec::new(),
                stable: None,
                candidate: None,
                roles: BTreeMap::new(),
                split: Split::PerReplica,
            }),
            reapers: tokio_util::task::TaskTracker::new(),
        });
        let mut targets = self.inner.targets.lock().unwrap_or_else(|e| e.into_inner());
        targets.entry(config.target).or_insert(rt);
        Ok(addr)
    }

    /// The router of a target (its address, its totals).
    pub fn router(&self, target: &Target) -> Result<Router, PlatformError> {
        Ok(self.runtime(target)?.router.clone())
    }

    /// The address clients use for a target.
    pub fn router_addr(&self, target: &Target) -> Result<SocketAddr, PlatformError> {
        Ok(self.runtime(target)?.router.local_addr())
    }

    /// Router totals for a target (requests, failures, retries).
    pub fn router_totals(&self, target: &Target) -> Result<TotalsSnapshot, PlatformError> {
        Ok(self.runtime(target)?.router.totals())
    }

    /// Process ids of a target's replicas in the router (for operators and
    /// tests that check replicas exit with guard).
    pub fn replica_pids(&self, target: &Target) -> Result<Vec<u32>, PlatformError> {
        let rt = self.runtime(target)?;
        let st = rt.state.lock().unwrap_or_else(|e| e.into_inner());
        Ok(st.replicas.iter().map(|r| r.process.pid()).collect())
    }

    /// Drains every replica of every target (out of the router, SIGTERM, reaped),
    /// waits for them up to their drain timeouts, and stops the routers.
    pub async fn shutdown(&self) {
        let rts: Vec<Arc<TargetRuntime>> = self
            .inner
            .targets
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .values()
            .cloned()
            .collect();
        // Environments drain side by side: each waits for its replicas'
        // drain delay, and one after another that added up.
        futures::future::join_all(rts.into_iter().map(|rt| async move {
            let _op = rt.op.lock().await;
            let replicas: Vec<Replica> = {
                let mut st = rt.state.lock().unwrap_or_else(|e| e.into_inner());
                st.stable = None;
                st.candidate = None;
                std::mem::take(&mut st.replicas)
            };
            rt.router.set_pool(Vec::new());
            for r in replicas {
                retire_removed(&rt, r).await;
            }
            rt.reapers.close();
            rt.reapers.wait().await;
            rt.router.shutdown(Duration::from_secs(5)).await;
        }))
        .await;
        // The sockets are gone with the replicas; a process that exits
        // without dropping every clone would leave the directory behind.
        let _ = std::fs::remove_dir_all(&self.inner.dir);
    }

    fn runtime(&self, target: &Target) -> Result<Arc<TargetRuntime>, PlatformError> {
        self.inner
            .targets
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(target)
            .cloned()
            .ok_or_else(|| PlatformError::UnknownTarget {
                service: target.service.clone(),
                environment: target.environment.clone(),
            })
    }

    async fn converge(&self, target: &Target, desired: Desired) -> Result<(), PlatformError> {
        let rt = self.runtime(target)?;
        let _op = rt.op.lock().await;
        let started = Instant::now();
        // Every request is relayed while replicas and weights move; the
        // replicas send the connections they were handed back (recycle).
        rt.router.set_handoff(false);
        {
            let mut st = rt.state.lock().unwrap_or_else(|e| e.into_inner());
            st.stable = Some(desired.stable.number.clone());
            st.candidate = desired.candidate.as_ref().map(|c| c.number.clone());
            st.split = desired.split;
            st.roles.insert(desired.stable.number.clone(), Role::Stable);
            if let Some(c) = &desired.candidate {
                st.roles.insert(c.number.clone(), Role::Candidate);
            }
            let running: Vec<String> = st.replicas.iter().map(|r| r.build.clone()).collect();
            st.roles.retain(|b, _| {
                running.contains(b)
                    || *b == desired.stable.number
                    || desired.candidate.as_ref().is_some_and(|c| c.number == *b)
            });
            publish(&rt, &st);
        }
        let want = |build: &str| -> usize {
            if build == desired.stable.number {
                desired.stable_count
            } else if desired
                .candidate
                .as_ref()
                .is_some_and(|c| c.number == build)
            {
                desired.candidate_count
            } else {
                0
            }
        };
        let total_wanted = desired.stable_count + desired.candidate_count;
        loop {
            // Dead replicas never count; take them out first.
            let (surplus, missing, running) = {
                let st = rt.state.lock().unwrap_or_else(|e| e.into_inner());
                let mut counts: BTreeMap<&str, usize> = BTreeMap::new();
                for r in st.replicas.iter().filter(|r| r.alive()) {
                    *counts.entry(r.build.as_str()).or_default() += 1;
                }
                let dead = st.replicas.iter().position(|r| !r.alive());
                let surplus = dead.or_else(|| {
                    // Unwanted builds first, unready replicas first, oldest first.
                    let mut best: Option<(usize, (bool, bool))> = None;
                    for (i, r) in st.replicas.iter().enumerate() {
                        let have = counts.get(r.build.as_str()).copied().unwrap_or(0);
                        if have > want(&r.build) {
                            let key = (want(&r.build) != 0, r.backend.is_ready());
                            if best.is_none_or(|(_, k)| key < k) {
                                best = Some((i, key));
                            }
                        }
                    }
                    best.map(|(i, _)| i)
                });
                let missing = [Some(&desired.stable), desired.candidate.as_ref()]
                    .into_iter()
                    .flatten()
                    .find(|b| counts.get(b.number.as_str()).copied().unwrap_or(0) < want(&b.number))
                    .cloned();
                let running: usize = counts.values().sum();
                (surplus, missing, running)
            };
            let dead_first = surplus.is_some_and(|i| {
                let st = rt.state.lock().unwrap_or_else(|e| e.into_inner());
                st.replicas.get(i).is_some_and(|r| !r.alive())
            });
            if let Some(i) = surplus
                && (dead_first || running > total_wanted || missing.is_none())
            {
                let removed = {
                    let mut st = rt.state.lock().unwrap_or_else(|e| e.into_inner());
                    let r = st.replicas.remove(i);
                    publish(&rt, &st);
                    r
                };
                tracing::info!(
                    service = %target.service, environment = %target.environment,
                    build = %removed.build, addr = %removed.backend.addr(),
                    "replica taken out of the router; draining"
                );
                retire_removed(&rt, removed).await;
                continue;
            }
            let Some(build) = missing else { break };
            let id = self.inner.next_id.fetch_add(1, Ordering::Relaxed);
            tracing::info!(
                service = %target.service, environment = %target.environment,
                build = %build.number, "starting a replica (surge)"
            );
            let r = replica::start(
                &build,
                &self.inner.dir,
                id,
                rt.config.ready_timeout,
                &self.inner.client,
            )
            .await?;
            let mut st = rt.state.lock().unwrap_or_else(|e| e.into_inner());
            st.replicas.push(r);
            publish(&rt, &st);
        }
        tracing::info!(
            service = %target.service, environment = %target.environment,
            stable = %desired.stable.number,
            candidate = desired.candidate.as_ref().map(|c| c.number.as_str()).unwrap_or("-"),
            seconds = started.elapsed().as_secs_f64(),
            "replicas converged"
        );
        // One release and nothing moving: connections may skip the router.
        rt.router.set_handoff(desired.candidate.is_none());
        Ok(())
    }
}

/// Pushes the state's replica set and weights into the router (one atomic swap).
fn publish(rt: &TargetRuntime, st: &TargetState) {
    let mut groups: Vec<GroupSpec> = Vec::new();
    for r in &st.replicas {
        match groups.iter_mut().find(|g| g.build == r.build) {
            Some(g) => g.backends.push(Arc::clone(&r.backend)),
            None => groups.push(GroupSpec {
                build: r.build.clone(),
                role: role_of(st, &r.build),
                weight: 0.0,
                backends: vec![Arc::clone(&r.backend)],
            }),
        }
    }
    for g in &mut groups {
        let is_stable = st.stable.as_deref() == Some(g.build.as_str());
        let is_candidate = st.candidate.as_deref() == Some(g.build.as_str());
        g.weight = match st.split {
            Split::PerReplica => g.backends.len() as f64,
            Split::Canary(w) if is_candidate => w,
            Split::Canary(w) if is_stable => 1.0 - w,
            Split::Canary(_) => 0.0,
        };
    }
    rt.router.set_pool(groups);
}

fn role_of(st: &TargetState, build: &str) -> Role {
    st.roles.get(build).copied().unwrap_or(Role::Candidate)
}

/// A replica already out of the router: wait for its in-flight requests, then
/// SIGTERM and reap it in the background.
async fn retire_removed(rt: &TargetRuntime, r: Replica) {
    let deadline = Instant::now() + rt.config.drain_timeout;
    while r.backend.in_flight() > 0 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    r.process.signal(libc::SIGTERM);
    let drain = rt.config.drain_timeout;
    let process = Arc::clone(&r.process);
    let build = r.build.clone();
    rt.reapers.spawn(async move {
        if !process.wait_exit(drain).await {
            tracing::warn!(build = %build, "replica still running {drain:?} after SIGTERM; killing it");
            process.signal(libc::SIGKILL);
            process.wait_exit(Duration::from_secs(5)).await;
        }
    });
}

fn ceil_share(share: f64, n: usize) -> usize {
    // 1e-9 keeps 0.1·10 = 1.0000000000000002 from becoming 2.
    (((share * n as f64) - 1e-9).ceil().max(0.0) as usize).min(n)
}

fn check_share(share: f64) -> Result<f64, PlatformError> {
    if share.is_finite() && (0.0..=1.0).contains(&share) {
        Ok(share)
    } else {
        Err(PlatformError::Action {
            action: "shifting traffic".into(),
            detail: format!("share must be between 0.0 and 1.0, got {share}"),
        })
    }
}

impl Platform for LocalPlatform {
    fn observe<'a>(&'a self, target: &'a Target) -> BoxFuture<'a, Result<Observed, PlatformError>> {
        Box::pin(async move {
            let rt = self.runtime(target)?;
            let st = rt.state.lock().unwrap_or_else(|e| e.into_inner());
            let endpoints = st
                .replicas
                .iter()
                .map(|r| Endpoint {
                    role: role_of(&st, &r.build),
                    build: r.build.clone(),
                    metrics_url: format!("http://{}/metrics", r.backend.addr()),
                    ready: r.alive() && r.backend.is_ready(),
                })
                .collect::<Vec<_>>();
            let candidate_replicas = endpoints
                .iter()
                .filter(|e| e.role == Role::Candidate)
                .count();
            let candidate_share = match st.split {
                Split::PerReplica if !endpoints.is_empty() => {
                    candidate_replicas as f64 / endpoints.len() as f64
                }
                Split::PerReplica => 0.0,
                Split::Canary(w) if candidate_replicas > 0 => w,
                Split::Canary(_) => 0.0,
            };
            Ok(Observed {
                stable: st.stable.clone(),
                candidate: st.candidate.clone(),
                candidate_share,
                endpoints,
            })
        })
    }

    fn shift<'a>(
        &'a self,
        target: &'a Target,
        stable: &'a Build,
        candidate: &'a Build,
        strategy: Strategy,
        share: f64,
    ) -> BoxFuture<'a, Result<(), PlatformError>> {
        Box::pin(async move {
            let share = check_share(share)?;
            let n = self.runtime(target)?.config.replicas;
            if stable.number == candidate.number {
                return self.revert(target, stable).await;
            }
            let desired = match strategy {
                Strategy::Rolling => {
                    let c = ceil_share(share, n);
                    Desired {
                        stable: stable.clone(),
                        candidate: Some(candidate.clone()),
                        stable_count: n - c,
                        candidate_count: c,
                        split: Split::PerReplica,
                    }
                }
                Strategy::Canary => Desired {
                    stable: stable.clone(),
                    candidate: Some(candidate.clone()),
                    stable_count: n,
                    candidate_count: if share > 0.0 {
                        ceil_share(share, n).max(1)
                    } else {
                        0
                    },
                    split: Split::Canary(share),
                },
            };
            self.converge(target, desired).await
        })
    }

    fn promote<'a>(
        &'a self,
        target: &'a Target,
        candidate: &'a Build,
    ) -> BoxFuture<'a, Result<(), PlatformError>> {
        Box::pin(async move {
            let n = self.runtime(target)?.config.replicas;
            self.converge(
                target,
                Desired {
                    stable: candidate.clone(),
                    candidate: None,
                    stable_count: n,
                    candidate_count: 0,
                    split: Split::PerReplica,
                },
            )
            .await
        })
    }

    fn revert<'a>(
        &'a self,
        target: &'a Target,
        to: &'a Build,
    ) -> BoxFuture<'a, Result<(), PlatformError>> {
        Box::pin(async move {
            let n = self.runtime(target)?.config.replicas;
            self.converge(
                target,
                Desired {
                    stable: to.clone(),
                    candidate: None,
                    stable_count: n,
                    candidate_count: 0,
                    split: Split::Canary(0.0),
                },
            )
            .await
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ceil_share_rounds_up_without_float_noise() {
        assert_eq!(ceil_share(0.0, 2), 0);
        assert_eq!(ceil_share(0.05, 2), 1);
        assert_eq!(ceil_share(0.5, 2), 1);
        assert_eq!(ceil_share(0.51, 2), 2);
        assert_eq!(ceil_share(1.0, 2), 2);
        assert_eq!(ceil_share(0.1, 10), 1);
        assert_eq!(ceil_share(0.3, 10), 3);
    }

    #[test]
    fn shares_outside_0_1_are_refused() {
        assert!(check_share(-0.1).is_err());
        assert!(check_share(1.5).is_err());
        assert!(check_share(f64::NAN).is_err());
        assert!(check_share(0.25).is_ok());
    }
}
