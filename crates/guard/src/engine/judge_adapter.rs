//! The `judge` crate behind the engine's [`JudgeFactory`]: one
//! [`judge::Judge`] per verification step, built from the target's SLOs and
//! the policy, given the pre-rollout baseline as history.

use std::collections::{BTreeMap, HashMap};

use tracing::warn;

use crate::engine::judging::{JudgeFactory, Tick, Verdict, Verifier};
use crate::engine::phase::Decision;
use crate::platform::{Strategy, Target};
use crate::signals::Counts;

/// Judges built from a policy and per-target SLO specs.
pub struct PolicyJudge {
    policy: judge::Policy,
    slos: HashMap<Target, Vec<judge::SloSpec>>,
    default_slos: Vec<judge::SloSpec>,
}

impl PolicyJudge {
    /// `default_slos` apply to targets not in `slos`.
    pub fn new(
        policy: judge::Policy,
        slos: HashMap<Target, Vec<judge::SloSpec>>,
        default_slos: Vec<judge::SloSpec>,
    ) -> Result<Self, judge::JudgeError> {
        // Refuse a bad policy or SLO now, not at the first rollout.
        for specs in slos.values().chain(std::iter::once(&default_slos)) {
            if !specs.is_empty() {
                judge::Judge::new(policy.clone(), specs.clone())?;
            }
        }
        Ok(Self {
            policy,
            slos,
            default_slos,
        })
    }
}

impl JudgeFactory for PolicyJudge {
    fn verifier(
        &self,
        target: &Target,
        _strategy: Strategy,
        history: &BTreeMap<String, Counts>,
    ) -> Box<dyn Verifier> {
        let specs = self.slos.get(target).unwrap_or(&self.default_slos).clone();
        let judge = judge::Judge::new(self.policy.clone(), specs).map(|mut j| {
            for (slo, c) in history {
                if c.total == 0 {
                    continue;
                }
                match j
                    .clone()
                    .with_baseline_history(slo, judge::Counts::new(c.good, c.total))
                {
                    Ok(next) => j = next,
                    Err(e) => warn!(%slo, error = %e, "baseline history refused by the judge"),
                }
            }
            j
        });
        Box::new(JudgeVerifier {
            judge: judge.map_err(|e| e.to_string()),
        })
    }

    fn restore(
        &self,
        target: &Target,
        checkpoint: &serde_json::Value,
    ) -> Option<Box<dyn Verifier>> {
        let judge: judge::Judge = match serde_json::from_value(checkpoint.clone()) {
            Ok(j) => j,
            Err(e) => {
                warn!(error = %e, "judge checkpoint unreadable; verifying the step afresh");
                return None;
            }
        };
        // Evidence weighed under another policy or other SLOs answers another
        // question: after a configuration change the step starts afresh.
        let specs = self.slos.get(target).unwrap_or(&self.default_slos);
        if judge.policy() != &self.policy || judge.slos() != specs.as_slice() {
            warn!(service = %target.service, environment = %target.environment,
                  "policy or SLOs changed since the judge checkpoint; verifying the step afresh");
            return None;
        }
        Some(Box::new(JudgeVerifier { judge: Ok(judge) }))
    }
}

struct JudgeVerifier {
    judge: Result<judge::Judge, String>,
}

impl Verifier for JudgeVerifier {
    fn step(&mut self, tick: &Tick) -> Verdict {
        let judge = match &mut self.judge {
            Ok(j) => j,
            Err(e) => {
                let reason = format!("judge not configured: {e}");
                return Verdict {
                    decision: Decision::Hold {
                        reason: reason.clone(),
                    },
                    reason,
                    evidence: notify::Evidence::default(),
                    detail: serde_json::Value::Null,
                };
            }
        };
        let interval = judge::Interval {
            seconds: tick.seconds.max(0.001),
            slos: tick
                .slos
                .iter()
                .map(|(name, c)| judge::SloObservation {
                    slo: name.clone(),
                    candidate: judge::Counts::new(c.candidate.good, c.candidate.total),
                    baseline: judge::Counts::new(c.baseline.good, c.baseline.total),
                })
                .collect(),
            canary_share: tick.canary_share.filter(|s| *s > 0.0 && *s < 1.0),
            source_ok: tick.source_ok,
        };
        let decision = match judge.step(&interval) {
            Ok(d) => d,
            Err(e) => {
                // A malformed interval is guard's bug, not the release's: say so, decide nothing.
                warn!(error = %e, "judge refused an interval");
                judge.decision()
            }
        };
        convert(&decision)
    }

    fn checkpoint(&self) -> Option<serde_json::Value> {
        let judge = self.judge.as_ref().ok()?;
        serde_json::to_value(judge).ok()
    }
}

/// The judge's decision in the engine's terms, with the deciding SLO's numbers.
pub fn convert(d: &judge::Decision) -> Verdict {
    let decision = match d.verdict {
        judge::Verdict::Continue => Decision::Continue,
        judge::Verdict::Promote => Decision::Pass {
            reason: d.reason.clone(),
        },
        judge::Verdict::Revert => Decision::Revert {
            reason: d.reason.clone(),
        },
        judge::Verdict::Hold => Decision::Hold {
            reason: d.reason.clone(),
        },
    };
    Verdict {
        decision,
        reason: d.reason.clone(),
        evidence: evidence(d),
        detail: serde_json::to_value(d).unwrap_or(serde_json::Value::Null),
    }
}

/// The deciding SLO's numbers (for history and notifications): the first
/// burning SLO, else the one closest to its revert bound.
pub fn evidence(d: &judge::Decision) -> notify::Evidence {
    let key = d
        .evidence
        .iter()
        .find(|e| e.status == judge::SloStatus::Burning)
        .or_else(|| {
            d.evidence.iter().max_by(|a, b| {
                (a.statistic - a.upper_bound)
                    .partial_cmp(&(b.statistic - b.upper_bound))
                    .unwrap_or(std::cmp::Ordering::Equal)
            })
        });
    match key {
        Some(e) => notify::Evidence {
            slo: Some(e.slo.clone()),
            events: e.events,
            bad_events: e.bad,
            release_error_ratio: e.release_ratio,
            baseline_error_ratio: e.baseline_ratio,
            statistic: Some(e.statistic_towards_a_bound()),
            lower_bound: Some(e.lower_bound),
            upper_bound: Some(e.upper_bound),
            budget_burned_pct: Some(
                d.evidence
                    .iter()
                    .map(|e| e.budget_burned_pct)
                    .fold(0.0, f64::max),
            ),
        },
        None => notify::Evidence::default(),
    }
}
