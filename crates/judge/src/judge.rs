//! The stateful judge: folds intervals into per-SLO tests and turns their
//! state into a [`Decision`]. Pure and deterministic.

use serde::{Deserialize, Serialize};

use crate::stats::{self, MixtureSprt};
use crate::{
    Counts, Decision, Evidence, Interval, JudgeError, Policy, SliKind, SloSpec, SloStatus, Verdict,
};

/// Slack for summing interval lengths into blocks (0.1 s × 10 ≠ 1.0 s).
const BLOCK_EPSILON: f64 = 1e-9;

/// A release under judgement: the policy, the SLOs and everything seen so far.
///
/// Serialisable, so the engine can persist it and resume after a restart.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Judge {
    policy: Policy,
    slos: Vec<SloSpec>,
    tracks: Vec<Track>,
    /// Seconds of input seen (valid and missing).
    elapsed: f64,
    /// Seconds of valid input folded into blocks.
    valid_seconds: f64,
    /// Consecutive seconds of missing data up to now.
    missing_run: f64,
    /// Seconds in the block being filled.
    pending_seconds: f64,
    /// The latched outcome, with its reason, once promoted or reverted.
    latched: Option<(Verdict, String)>,
}

/// One SLO's accumulated counts and tests.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
struct Track {
    /// Budget ratio `1 − o`.
    p0: f64,
    /// `max(p0, history ratio)`: what a release no worse than its baseline
    /// fails at.
    p_null: f64,
    history: Counts,
    candidate: Counts,
    baseline: Counts,
    pending_candidate: Counts,
    pending_baseline: Counts,
    candidate_test: MixtureSprt,
    /// The live baseline's own test, to see whether it burns too.
    baseline_test: MixtureSprt,
    /// Latched once every alternative was rejected.
    passed: bool,
    /// Revert bound `ln((1 − β)/α)`.
    ln_a: f64,
    /// Pass bound `ln(β/(1 − α))`.
    ln_b: f64,
}

impl Judge {
    /// A judge for a new release against `slos` under `policy`.
    ///
    /// Errors name the offending policy field or SLO.
    pub fn new(policy: Policy, slos: Vec<SloSpec>) -> Result<Self, JudgeError> {
        validate_policy(&policy)?;
        if slos.is_empty() {
            return Err(JudgeError::NoSlos);
        }
        let mut tracks = Vec::with_capacity(slos.len());
        for (i, spec) in slos.iter().enumerate() {
            if slos[..i].iter().any(|s| s.name == spec.name) {
                return Err(JudgeError::Slo {
                    slo: spec.name.clone(),
                    reason: "the name is used by two SLOs; names must be unique".into(),
                });
            }
            let budget =
                slo::budget::Slo::new(spec.objective, spec.period_seconds).map_err(|e| {
                    JudgeError::Slo {
                        slo: spec.name.clone(),
                        reason: e.to_string(),
                    }
                })?;
            let p0 = budget.error_budget();
            tracks.push(Track::new(p0, p0, Counts::default(), &policy));
        }
        Ok(Self {
            policy,
            slos,
            tracks,
            elapsed: 0.0,
            valid_seconds: 0.0,
            missing_run: 0.0,
            pending_seconds: 0.0,
            latched: None,
        })
    }

    /// Gives the previous release's counts for `slo` from before the rollout
    /// (e.g. its last hour). Its error ratio, when worse than the objective
    /// allows, becomes the null hypothesis (the release is blamed only for
    /// what it adds), and it counts as baseline for attributable burn.
    ///
    /// Call before the first [`Judge::step`].
    pub fn with_baseline_history(mut self, slo: &str, counts: Counts) -> Result<Self, JudgeError> {
        if counts.good > counts.total {
            return Err(JudgeError::Interval {
                reason: format!(
                    "baseline history for `{slo}` has good {} > total {}",
                    counts.good, counts.total
                ),
            });
        }
        let i = self.index(slo).ok_or_else(|| JudgeError::Interval {
            reason: format!("baseline history names unknown SLO `{slo}`"),
        })?;
        let p0 = self.tracks[i].p0;
        let ratio = if counts.total > 0 {
            counts.bad() as f64 / counts.total as f64
        } else {
            0.0
        };
        self.tracks[i] = Track::new(p0, p0.max(ratio), counts, &self.policy);
        Ok(self)
    }

    /// The policy in force.
    pub fn policy(&self) -> &Policy {
        &self.policy
    }

    /// The SLOs judged, in the order of [`Decision::evidence`].
    pub fn slos(&self) -> &[SloSpec] {
        &self.slos
    }

    fn index(&self, slo: &str) -> Option<usize> {
        self.slos.iter().position(|s| s.name == slo)
    }

    /// Folds in one interval and returns the decision after it.
    ///
    /// A rejected interval leaves the judge unchanged.
    pub fn step(&mut self, interval: &Interval) -> Result<Decision, JudgeError> {
        self.validate(interval)?;
        self.elapsed += interval.seconds;
        if !interval.source_ok {
            self.missing_run += interval.seconds;
        } else {
            self.missing_run = 0.0;
            for obs in &interval.slos {
                if let Some(i) = self.index(&obs.slo) {
                    let t = &mut self.tracks[i];
                    add(&mut t.pending_candidate, obs.candidate);
                    add(&mut t.pending_baseline, obs.baseline);
                }
            }
            self.pending_seconds += interval.seconds;
            if self.pending_seconds + BLOCK_EPSILON >= self.policy.block_seconds {
                self.close_block();
            }
        }
        let decision = self.decision();
        if self.latched.is_none() && matches!(decision.verdict, Verdict::Promote | Verdict::Revert)
        {
            self.latched = Some((decision.verdict, decision.reason.clone()));
        }
        Ok(decision)
    }

    fn validate(&self, interval: &Interval) -> Result<(), JudgeError> {
        let bad = |reason: String| Err(JudgeError::Interval { reason });
        if !(interval.seconds.is_finite() && interval.seconds > 0.0) {
            return bad(format!(
                "seconds must be a positive finite length, got {}",
                interval.seconds
            ));
        }
        if let Some(w) = interval.canary_share
            && !(w > 0.0 && w < 1.0)
        {
            return bad(format!(
                "canary_share must be strictly between 0 and 1 (e.g. 0.05), got {w}"
            ));
        }
        if !interval.source_ok {
            return Ok(());
        }
        for obs in &interval.slos {
            if self.index(&obs.slo).is_none() {
                return bad(format!("unknown SLO `{}`", obs.slo));
            }
            for (who, c) in [("candidate", obs.candidate), ("baseline", obs.baseline)] {
                if c.good > c.total {
                    return bad(format!(
                        "SLO `{}` {who}: good {} > total {}",
                        obs.slo, c.good, c.total
                    ));
                }
            }
        }
        Ok(())
    }

    fn close_block(&mut self) {
        let seconds = self.pending_seconds;
        let cap = self.policy.evidence_cap_per_second;
        for t in &mut self.tracks {
            let (c, b) = (t.pending_candidate, t.pending_baseline);
            t.candidate_test.add(c.bad(), c.total, seconds, cap);
            t.baseline_test.add(b.bad(), b.total, seconds, cap);
            add(&mut t.candidate, c);
            add(&mut t.baseline, b);
            t.pending_candidate = Counts::default();
            t.pending_baseline = Counts::default();
            if !t.passed
                && t.candidate.total >= self.policy.min_events
                && t.candidate_test.pass_statistic() <= t.ln_b
            {
                t.passed = true;
            }
        }
        self.valid_seconds += seconds;
        self.pending_seconds = 0.0;
    }

    /// The decision for what has been seen so far (no state change).
    pub fn decision(&self) -> Decision {
        let evidence: Vec<Evidence> = self
            .slos
            .iter()
            .zip(&self.tracks)
            .map(|(spec, t)| self.evidence(spec, t))
            .collect();
        let (verdict, reason) = self.verdict(&evidence);
        Decision {
            verdict,
            reason,
            elapsed_seconds: self.elapsed,
            watching: matches!(self.latched, Some((Verdict::Promote, _))),
            evidence,
        }
    }

    fn verdict(&self, evidence: &[Evidence]) -> (Verdict, String) {
        if let Some((Verdict::Revert, reason)) = &self.latched {
            return (Verdict::Revert, reason.clone());
        }
        if let Some((e, spec)) = evidence
            .iter()
            .zip(&self.slos)
            .find(|(e, _)| e.status == SloStatus::Burning)
        {
            return (Verdict::Revert, burning_reason(e, spec, &self.policy));
        }
        if let Some((Verdict::Promote, reason)) = &self.latched {
            let watched = format!(
                "{reason}; watching: worst attributable burn {:.3}% of budget (revert at {}%)",
                evidence
                    .iter()
                    .map(|e| e.budget_burned_pct)
                    .fold(0.0, f64::max),
                self.policy.max_budget_share * 100.0
            );
            return (Verdict::Promote, watched);
        }
        if let Some(e) = evidence
            .iter()
            .find(|e| e.status == SloStatus::SharedOutage)
        {
            return (
                Verdict::Hold,
                format!(
                    "{}: baseline fails as much as the release ({} of {} vs {} of {}): an outage both versions share, not the release's fault; a person should look",
                    e.slo, e.baseline_bad, e.baseline_events, e.bad, e.events
                ),
            );
        }
        let all_pass = evidence.iter().all(|e| e.status == SloStatus::Passing);
        if all_pass && self.missing_run == 0.0 && self.elapsed >= self.policy.min_verify_seconds {
            let worst = evidence
                .iter()
                .map(|e| e.pass_statistic)
                .fold(f64::NEG_INFINITY, f64::max);
            return (
                Verdict::Promote,
                format!(
                    "all {} SLO(s) pass: every burn multiple from {}× up rejected (worst LLR {:.2} ≤ {:.2}) after {:.0}s, {} events",
                    evidence.len(),
                    self.policy
                        .multiples
                        .iter()
                        .copied()
                        .fold(f64::INFINITY, f64::min),
                    worst,
                    evidence.first().map_or(0.0, |e| e.lower_bound),
                    self.elapsed,
                    evidence.iter().map(|e| e.events).min().unwrap_or(0)
                ),
            );
        }
        if self.missing_run > self.policy.max_missing_seconds {
            return (
                Verdict::Hold,
                format!(
                    "signal source unavailable for {:.0}s (tolerance {:.0}s): no data is not good data",
                    self.missing_run, self.policy.max_missing_seconds
                ),
            );
        }
        let waiting: Vec<&Evidence> = evidence
            .iter()
            .filter(|e| e.status != SloStatus::Passing)
            .collect();
        if self.elapsed >= self.policy.max_verify_seconds {
            let detail: Vec<String> = waiting
                .iter()
                .map(|e| format!("{} ({} events, {} bad)", e.slo, e.events, e.bad))
                .collect();
            return (
                Verdict::Hold,
                format!(
                    "undecided after {:.0}s (deadline {:.0}s): too little traffic to tell for {}",
                    self.elapsed,
                    self.policy.max_verify_seconds,
                    detail.join(", ")
                ),
            );
        }
        let reason = if self.missing_run > 0.0 {
            format!(
                "signal source unavailable for {:.0}s; waiting for data",
                self.missing_run
            )
        } else if all_pass {
            format!(
                "all SLOs pass; verifying for at least {:.0}s ({:.0}s so far)",
                self.policy.min_verify_seconds, self.elapsed
            )
        } else {
            let detail: Vec<String> = waiting
                .iter()
                .map(|e| {
                    if e.status == SloStatus::Undecided && e.statistic >= e.upper_bound {
                        format!(
                            "{}: burning, checking whether the baseline burns too",
                            e.slo
                        )
                    } else {
                        format!(
                            "{}: {} events, {} bad, LLR {:.2} in ({:.2}, {:.2})",
                            e.slo, e.events, e.bad, e.statistic, e.lower_bound, e.upper_bound
                        )
                    }
                })
                .collect();
            format!("verifying: {}", detail.join("; "))
        };
        (Verdict::Continue, reason)
    }

    fn evidence(&self, spec: &SloSpec, t: &Track) -> Evidence {
        let events = t.candidate.total;
        let bad = t.candidate.bad();
        let base = Counts::new(
            t.history.good + t.baseline.good,
            t.history.total + t.baseline.total,
        );
        let baseline_ratio = ratio(base);
        let statistic = t.candidate_test.revert_statistic();
        let budget_burned = self.attributable_burn(spec, t, baseline_ratio.unwrap_or(0.0));
        let mut shared_statistic = None;
        let status = if events == 0 {
            SloStatus::NoData
        } else if budget_burned >= self.policy.max_budget_share {
            SloStatus::Burning
        } else if statistic >= t.ln_a {
            if t.baseline.total == 0 {
                SloStatus::Burning
            } else {
                let s = self.shared_llr(t);
                shared_statistic = Some(s);
                if t.baseline_test.revert_statistic() >= t.ln_a || s >= t.ln_a {
                    SloStatus::SharedOutage
                } else if s <= -t.ln_a {
                    SloStatus::Burning
                } else {
                    SloStatus::Undecided
                }
            }
        } else if t.passed {
            SloStatus::Passing
        } else {
            SloStatus::Undecided
        };
        Evidence {
            slo: spec.name.clone(),
            status,
            events,
            bad,
            release_ratio: ratio(t.candidate),
            baseline_events: base.total,
            baseline_bad: base.bad(),
            baseline_ratio,
            null_ratio: t.p_null,
            statistic,
            upper_bound: t.ln_a,
            pass_statistic: t.candidate_test.pass_statistic(),
            lower_bound: t.ln_b,
            dispersion: t.candidate_test.dispersion(),
            shared_statistic,
            budget_burned_pct: budget_burned * 100.0,
        }
    }

    /// Log likelihood ratio, by the conditional binomial on the live errors,
    /// of "the baseline fails like the canary" against "the canary alone is
    /// as many times worse than a healthy baseline as it is observed to be".
    /// Positive: shared outage.
    fn shared_llr(&self, t: &Track) -> f64 {
        let (kc, nc) = (t.candidate.bad() as f64, t.candidate.total as f64);
        let (kb, nb) = (t.baseline.bad() as f64, t.baseline.total as f64);
        // The canary's share of events as measured (the router's weight is
        // only what was asked for).
        let share = nc / (nc + nb);
        let min_multiple = self
            .policy
            .multiples
            .iter()
            .copied()
            .fold(f64::INFINITY, f64::min);
        let ratio = ((kc / nc) / t.p_null).max(min_multiple);
        -stats::conditional_llr(kc, kb, share, ratio)
    }

    /// Share of the period's budget burned beyond the baseline ratio `p_base`,
    /// with `N_T` from the service's whole observed event rate.
    fn attributable_burn(&self, spec: &SloSpec, t: &Track, p_base: f64) -> f64 {
        if self.valid_seconds <= 0.0 {
            return 0.0;
        }
        let Ok(budget) = slo::budget::Slo::new(spec.objective, spec.period_seconds) else {
            return 0.0;
        };
        let service_events = (t.candidate.total + t.baseline.total) as f64;
        budget
            .events_in_period(service_events, self.valid_seconds)
            .and_then(|n_t| {
                budget.attributable_burn(
                    t.candidate.bad() as f64,
                    t.candidate.total as f64,
                    p_base,
                    n_t,
                )
            })
            .unwrap_or(0.0)
            .max(0.0)
    }
}

impl Track {
    fn new(p0: f64, p_null: f64, history: Counts, policy: &Policy) -> Self {
        let (ln_b, ln_a) = stats::wald_bounds(policy.alpha, policy.beta);
        Self {
            p0,
            p_null,
            history,
            candidate: Counts::default(),
            baseline: Counts::default(),
            pending_candidate: Counts::default(),
            pending_baseline: Counts::default(),
            candidate_test: MixtureSprt::new(p_null, p0, &policy.multiples),
            baseline_test: MixtureSprt::new(p_null, p0, &policy.multiples),
            passed: false,
            ln_a,
            ln_b,
        }
    }
}

fn burning_reason(e: &Evidence, spec: &SloSpec, policy: &Policy) -> String {
    let what = match spec.kind {
        SliKind::Availability => "failed".to_string(),
        SliKind::Latency { threshold_seconds } => format!("slower than {threshold_seconds}s"),
        SliKind::Freshness { threshold_seconds } => format!("staler than {threshold_seconds}s"),
    };
    let multiple = e.release_ratio.map_or(0.0, |r| r / (1.0 - spec.objective));
    if e.budget_burned_pct >= policy.max_budget_share * 100.0 {
        format!(
            "{}: the release burned {:.2}% of the error budget beyond its baseline (limit {}%): {} of {} {what}",
            e.slo,
            e.budget_burned_pct,
            policy.max_budget_share * 100.0,
            e.bad,
            e.events
        )
    } else {
        format!(
            "{}: burning the error budget at {:.1}× ({} of {} {what}; mixture LLR {:.2} ≥ {:.2}{})",
            e.slo,
            multiple,
            e.bad,
            e.events,
            e.statistic,
            e.upper_bound,
            match e.shared_statistic {
                Some(s) => format!(
                    "; baseline healthy: {} of {} bad, LLR {s:.2}",
                    e.baseline_bad, e.baseline_events
                ),
                None => String::new(),
            }
        )
    }
}

fn add(acc: &mut Counts, c: Counts) {
    acc.good = acc.good.saturating_add(c.good);
    acc.total = acc.total.saturating_add(c.total);
}

fn ratio(c: Counts) -> Option<f64> {
    (c.total > 0).then(|| c.bad() as f64 / c.total as f64)
}

fn validate_policy(p: &Policy) -> Result<(), JudgeError> {
    let err = |field: &'static str, reason: String| Err(JudgeError::Policy { field, reason });
    for (field, v) in [("alpha", p.alpha), ("beta", p.beta)] {
        if !(v > 0.0 && v < 0.5) {
            return err(field, format!("must be in (0, 0.5), e.g. 0.01; got {v}"));
        }
    }
    if !(p.max_budget_share > 0.0 && p.max_budget_share <= 1.0) {
        return err(
            "max_budget_share",
            format!(
                "must be in (0, 1] (a share of the budget, e.g. 0.02 for 2%); got {}",
                p.max_budget_share
            ),
        );
    }
    if !(p.min_verify_seconds >= 0.0 && p.min_verify_seconds.is_finite()) {
        return err(
            "min_verify_seconds",
            format!("must be a finite number >= 0; got {}", p.min_verify_seconds),
        );
    }
    if !(p.max_verify_seconds >= p.min_verify_seconds && p.max_verify_seconds.is_finite()) {
        return err(
            "max_verify_seconds",
            format!(
                "must be finite and >= min_verify_seconds ({}); got {}",
                p.min_verify_seconds, p.max_verify_seconds
            ),
        );
    }
    if p.multiples.is_empty() || p.multiples.iter().any(|&f| !(f > 1.0 && f.is_finite())) {
        return err(
            "multiples",
            format!(
                "must be a non-empty list of finite burn multiples > 1, e.g. [2, 4, 6, 14.4, 50]; got {:?}",
                p.multiples
            ),
        );
    }
    if !(p.evidence_cap_per_second > 0.0) {
        return err(
            "evidence_cap_per_second",
            format!("must be > 0; got {}", p.evidence_cap_per_second),
        );
    }
    if !(p.block_seconds > 0.0 && p.block_seconds.is_finite()) {
        return err(
            "block_seconds",
            format!(
                "must be a positive finite number of seconds; got {}",
                p.block_seconds
            ),
        );
    }
    if !(p.max_missing_seconds >= 0.0) {
        return err(
            "max_missing_seconds",
            format!("must be >= 0; got {}", p.max_missing_seconds),
        );
    }
    Ok(())
}
