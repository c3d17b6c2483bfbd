//! The controller's [`Verifier`] backed by the real judge: cumulative signal
//! snapshots are differenced into judge [`judge::Interval`]s, one per tick.

use std::collections::BTreeMap;
use std::time::Duration;

use super::controller::{Decision, Verification, Verifier};
use super::rollout::Side;
use crate::platform::{Role, Target};
use crate::signals::{Counts, Snapshot};

/// Starts a [`judge::Judge`] per candidate.
#[derive(Clone, Debug)]
pub struct JudgeVerifier {
    pub policy: judge::Policy,
    pub slos: Vec<judge::SloSpec>,
}

struct JudgeVerification {
    judge: Result<judge::Judge, String>,
    candidate: String,
    /// The candidate's traffic share when it runs as a canary.
    canary_share: Option<f64>,
    /// Cumulative counts at the previous step, per (role, slo).
    last: BTreeMap<(Role, String), Counts>,
    last_elapsed: Option<Duration>,
    /// The judge's latest decision, for the evidence in notifications.
    latest: Option<judge::Decision>,
}

impl Verifier for JudgeVerifier {
    fn start(
        &self,
        _target: &Target,
        _stable: &Side,
        candidate: &Side,
        canary_share: Option<f64>,
    ) -> Box<dyn Verification> {
        Box::new(JudgeVerification {
            judge: judge::Judge::new(self.policy.clone(), self.slos.clone())
                .map_err(|e| e.to_string()),
            candidate: candidate.build.clone(),
            canary_share,
            last: BTreeMap::new(),
            last_elapsed: None,
            latest: None,
        })
    }
}

/// `now − before`, treating a counter reset (a decrease) as a fresh start.
fn delta(now: Counts, before: Option<Counts>) -> Counts {
    match before {
        Some(b) if now.total >= b.total && now.good >= b.good => {
            let total = now.total - b.total;
            Counts {
                good: (now.good - b.good).min(total),
                total,
            }
        }
        _ => now,
    }
}

impl Verification for JudgeVerification {
    fn step(&mut self, snapshot: &Snapshot, elapsed: Duration) -> Decision {
        let judge = match &mut self.judge {
            Ok(j) => j,
            Err(e) => {
                return Decision::Hold {
                    reason: format!("judge configuration: {e}"),
                };
            }
        };
        // Sum cumulative counts per role and SLO (a release may span several builds'
        // entries only if the source splits them; the candidate is matched by build).
        let mut now: BTreeMap<(Role, String), Counts> = BTreeMap::new();
        for r in &snapshot.releases {
            let role = if r.build == self.candidate {
                Role::Candidate
            } else {
                r.role
            };
            for (slo, c) in &r.by_slo {
                let e = now.entry((role, slo.clone())).or_default();
                e.good += c.good;
                e.total += c.total;
            }
        }
        let Some(last_elapsed) = self.last_elapsed.replace(elapsed) else {
            // The first read only sets the starting point of the differences.
            self.last = now;
            return Decision::Continue;
        };
        let seconds = elapsed.saturating_sub(last_elapsed).as_secs_f64();
        if seconds <= 0.0 {
            return Decision::Continue;
        }
        let slos: Vec<judge::SloObservation> = judge
            .slos()
            .iter()
            .map(|spec| {
                let key_c = (Role::Candidate, spec.name.clone());
                let key_b = (Role::Stable, spec.name.clone());
                let c = delta(
                    now.get(&key_c).copied().unwrap_or_default(),
                    self.last.get(&key_c).copied(),
                );
                let b = delta(
                    now.get(&key_b).copied().unwrap_or_default(),
                    self.last.get(&key_b).copied(),
                );
                judge::SloObservation {
                    slo: spec.name.clone(),
                    candidate: judge::Counts::new(c.good, c.total),
                    baseline: judge::Counts::new(b.good, b.total),
                }
            })
            .collect();
        self.last = now;
        let interval = judge::Interval {
            seconds,
            slos,
            canary_share: self.canary_share,
            source_ok: true,
        };
        match judge.step(&interval) {
            Ok(d) => {
                let decision = match d.verdict {
                    judge::Verdict::Continue => Decision::Continue,
                    judge::Verdict::Promote => Decision::Promote {
                        reason: d.reason.clone(),
                    },
                    judge::Verdict::Revert => Decision::Revert {
                        reason: d.reason.clone(),
                    },
                    judge::Verdict::Hold => Decision::Hold {
                        reason: d.reason.clone(),
                    },
                };
                self.latest = Some(d);
                decision
            }
            Err(e) => Decision::Hold {
                reason: format!("judge refused the counts: {e}"),
            },
        }
    }

    fn evidence(&self) -> notify::Evidence {
        self.latest
            .as_ref()
            .map(crate::engine::judge_adapter::evidence)
            .unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn side(build: &str) -> Side {
        Side {
            build: build.into(),
            image: None,
            commit: None,
            hash: None,
            revision: None,
        }
    }

    /// Cumulative counts after `second` seconds of `rps` requests per role at
    /// `error_ratio` on both the stable build 1 and the candidate build 2.
    fn both_failing(second: u64, rps: u64, error_ratio: f64) -> Snapshot {
        let total = second * rps;
        let bad = (total as f64 * error_ratio) as u64;
        let release = |role, build: &str| crate::signals::ReleaseSignals {
            role,
            build: build.into(),
            by_slo: [(
                "availability".to_string(),
                Counts {
                    good: total - bad,
                    total,
                },
            )]
            .into(),
        };
        Snapshot {
            releases: vec![release(Role::Stable, "1"), release(Role::Candidate, "2")],
            staleness_seconds: Some(0.0),
            last_error: None,
        }
    }

    /// The first non-continue decision within two minutes of 1 s steps.
    fn verdict(canary_share: Option<f64>) -> Decision {
        let verifier = JudgeVerifier {
            policy: judge::Policy::default(),
            slos: vec![judge::SloSpec::availability("availability", 0.999)],
        };
        let target = Target {
            service: "ultra-boost".into(),
            environment: "production".into(),
        };
        let mut v = verifier.start(&target, &side("1"), &side("2"), canary_share);
        for second in 0..=120 {
            let d = v.step(
                &both_failing(second, 200, 0.02),
                Duration::from_secs(second),
            );
            if d != Decision::Continue {
                return d;
            }
        }
        Decision::Continue
    }

    #[test]
    fn an_outage_on_both_sides_holds_for_a_rolling_update_and_a_canary() {
        // 20x the budget on the stable build as much as on the candidate: the
        // judge compares the two (conditional binomial on the live errors) and
        // asks a person instead of blaming the candidate.
        for share in [None, Some(0.5)] {
            match verdict(share) {
                Decision::Hold { reason } => {
                    assert!(reason.contains("outage both versions share"), "{reason}")
                }
                other => panic!("share {share:?}: {other:?}"),
            }
        }
    }

    #[test]
    fn deltas_absorb_resets() {
        let c = |good, total| Counts { good, total };
        assert_eq!(delta(c(90, 100), Some(c(45, 50))), c(45, 50));
        assert_eq!(delta(c(5, 10), Some(c(45, 50))), c(5, 10));
        assert_eq!(delta(c(5, 10), None), c(5, 10));
    }
}
