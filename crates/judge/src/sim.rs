//! Detection simulator: seeded traffic for a release of known badness, fed
//! second by second to a [`Judge`], to measure how often and how fast it
//! promotes, reverts or holds, next to two yardsticks:
//!
//! - `oracle_seconds`: Wald's expected sample size of an SPRT that knows the
//!   true burn multiple (the physical limit at those error rates), in seconds
//!   of the *release's* traffic (the canary's share of it during a canary);
//! - `attribution_oracle_seconds` (canary rows with a release worse than its
//!   baseline): Wald's expected sample size of the SPRT that knows the true
//!   ratio, on the conditional binomial of the errors between canary and
//!   live baseline (the test issue 4 prescribes for a canary), in seconds of
//!   the whole service's errors. A test that must never blame an outage the
//!   baseline shares, *whatever its rate*, can be no faster on average: the
//!   closest such outage to the truth (both versions failing at the rate
//!   that fits the pooled errors) is at the conditional binomial's KL
//!   divergence per error from it, and Wald–Hoeffding's bound is `ln A` over
//!   that, `A = (1 − β)/blame_alpha` at the error rate the policy allows
//!   blaming such an outage. With an equal-traffic baseline (50 %) that is
//!   2.9–4.8× the own-traffic oracle for 6–50× releases at `blame_alpha =
//!   α`, 7–12× at the default 10⁻⁵, so the time goal of a canary row is
//!   measured against the larger of the two (`1.5 × max(oracle,
//!   attribution_oracle)`, or 2 s);
//! - `threshold_check_seconds`: a Flagger-style check (success rate ≥ 99 %
//!   per 1-minute interval, rollback after 5 failed intervals), on the same
//!   traffic model.
//!
//! Deterministic per seed: each scenario draws from its own `StdRng` seeded
//! from the run's seed and the scenario's label, so a scenario's figures do
//! not depend on which other scenarios run.

use rand::SeedableRng;
use rand::rngs::StdRng;
use rand_distr::{Binomial, Distribution, Geometric, Poisson};
use serde::{Deserialize, Serialize};

use crate::stats;
use crate::{Counts, Interval, Judge, JudgeError, Policy, SloObservation, SloSpec, Verdict};

/// How the release's errors arrive.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "type")]
pub enum ErrorModel {
    /// Each request fails independently.
    Independent,
    /// `clustered_share` of the errors come in clusters that hit consecutive
    /// requests within the same second (a connection pool reset, a GC pause),
    /// cluster sizes geometric with mean `mean_cluster`; the rest are
    /// independent. The average error ratio is unchanged.
    Bursty {
        /// Share of the errors that come in clusters, in `[0, 1]`.
        clustered_share: f64,
        /// Mean cluster size (`>= 1`).
        mean_cluster: f64,
    },
}

/// One simulated situation.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Scenario {
    /// `release` (the new build takes all traffic), `canary`,
    /// `shared-outage` or `bursty`.
    pub name: String,
    /// SLO objective as a ratio (`0.999`).
    pub objective: f64,
    /// The release's true (average) error ratio ÷ `(1 − objective)`.
    pub multiple: f64,
    /// The live baseline's error ratio ÷ `(1 − objective)` during a canary.
    pub baseline_multiple: f64,
    /// The stable build's error ratio ÷ `(1 − objective)` over the
    /// [`HISTORY_SECONDS`] before the rollout (the pre-rollout history the
    /// engine hands the judge). `1` in every grid row: in `shared-outage` the
    /// outage starts with the rollout, so the history is from before it.
    pub history_multiple: f64,
    /// Requests per second to the whole service.
    pub rps: f64,
    /// The canary's share of the traffic, `None` without a canary.
    pub canary_share: Option<f64>,
    /// How the release's errors arrive.
    pub errors: ErrorModel,
}

impl Scenario {
    /// A short label, also the seed's salt.
    pub fn label(&self) -> String {
        format!(
            "{} o={} x={} base={} rps={} share={}",
            self.name,
            self.objective,
            self.multiple,
            self.baseline_multiple,
            self.rps,
            self.canary_share.map_or("none".into(), |w| w.to_string())
        )
    }
}

/// The grid of issue 4: objective 99.9 %; multiples 0.5, 1, 2, 6, 14.4, 50;
/// 10, 100 and 1000 rps; no canary, canary at 5 % and 50 %; then
/// `shared-outage` (baseline and canary both at 20× during a canary) and
/// `bursty` (a good release, 0.8× on average, 70 % of its errors in clusters
/// of mean 10).
pub fn grid() -> Vec<Scenario> {
    let objective = 0.999;
    let rpss = [10.0, 100.0, 1000.0];
    let mut out = Vec::new();
    for share in [None, Some(0.05), Some(0.5)] {
        for &rps in &rpss {
            for multiple in [0.5, 1.0, 2.0, 6.0, 14.4, 50.0] {
                out.push(Scenario {
                    name: if share.is_some() { "canary" } else { "release" }.into(),
                    objective,
                    multiple,
                    baseline_multiple: 1.0,
                    history_multiple: 1.0,
                    rps,
                    canary_share: share,
                    errors: ErrorModel::Independent,
                });
            }
        }
    }
    for share in [0.05, 0.5] {
        for &rps in &rpss {
            out.push(Scenario {
                name: "shared-outage".into(),
                objective,
                multiple: 20.0,
                baseline_multiple: 20.0,
                history_multiple: 1.0,
                rps,
                canary_share: Some(share),
                errors: ErrorModel::Independent,
            });
        }
    }
    for &rps in &rpss {
        out.push(bursty(objective, rps));
    }
    out
}

/// The `bursty` scenario at `rps`: a good release (0.8× on average) whose
/// errors mostly (70 %) come in clusters of mean size 10.
pub fn bursty(objective: f64, rps: f64) -> Scenario {
    Scenario {
        name: "bursty".into(),
        objective,
        multiple: 0.8,
        baseline_multiple: 1.0,
        history_multiple: 1.0,
        rps,
        canary_share: None,
        errors: ErrorModel::Bursty {
            clustered_share: 0.7,
            mean_cluster: 10.0,
        },
    }
}

/// Figures for one scenario; the field names are the JSON keys of
/// `guard bench detection --json`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ScenarioResult {
    /// [`Scenario::name`].
    pub scenario: String,
    /// SLO objective as a ratio.
    pub slo_objective: f64,
    /// True error ratio ÷ `(1 − objective)`.
    pub multiple: f64,
    /// Requests per second to the whole service.
    pub rps: f64,
    /// Canary share, `null` without a canary.
    pub canary_share: Option<f64>,
    /// Trials run.
    pub trials: u64,
    /// Share of trials that ended in `revert`.
    pub revert_rate: f64,
    /// Share of trials that ended in `promote`.
    pub promote_rate: f64,
    /// Share of trials that ended in `hold`.
    pub hold_rate: f64,
    /// Median seconds to the verdict (whatever it was).
    pub median_seconds: f64,
    /// 95th percentile of seconds to the verdict.
    pub p95_seconds: f64,
    /// Wald's expected sample size for an SPRT that knows the true multiple
    /// (`H1` = the truth when it is above 1, otherwise the smallest policy
    /// multiple), in seconds of the release's own traffic.
    pub oracle_seconds: f64,
    /// During a canary whose release is worse than its live baseline: Wald's
    /// expected sample size of the SPRT that knows the true ratio, on the
    /// conditional binomial of the errors (canary's share of them), in
    /// seconds of the service's errors ([`attribution_oracle_seconds`]);
    /// `null` otherwise.
    pub attribution_oracle_seconds: Option<f64>,
    /// Median share (%) of the 30 d budget (at `rps`) that the release's
    /// errors burned before the verdict.
    pub budget_burned_pct_median: f64,
    /// Share of trials held at the deadline that the judge, still fed while
    /// the release is held (as guard's engine does), reverted later (followed
    /// as [`held_watch_seconds`] says).
    pub reverted_while_held_rate: f64,
    /// Share of trials reverted, during verification or while held, before
    /// the release's errors burned [`BUDGET_GOAL_PCT`] % of the 30 d budget.
    pub reverted_before_budget_goal_rate: f64,
    /// Median seconds a Flagger-style threshold check needs to roll back;
    /// `null` when it fires in fewer than half the trials within the
    /// verification deadline.
    pub threshold_check_seconds: Option<f64>,
}

/// One trial's outcome.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Trial {
    /// The first verdict other than `continue`.
    pub verdict: Verdict,
    /// Seconds until it.
    pub seconds: f64,
    /// The release's bad events until it.
    pub release_bad: u64,
    /// For a trial held at the deadline: seconds (from the start) and the
    /// release's bad events when the judge, still fed, reverted it (followed
    /// as [`held_watch_seconds`] says).
    pub reverted_while_held: Option<(f64, u64)>,
}

/// At least this long the simulator keeps feeding the judge after a hold:
/// guard's engine keeps judging a held release until a person acts on it
/// (and reverts it on conclusive evidence); within a day a person has looked.
pub const HELD_WATCH_SECONDS: f64 = 86_400.0;

/// How long the simulator follows a held trial: until the release would have
/// burned [`BUDGET_GOAL_PCT`] % of the budget at its true error ratio (the
/// horizon of the 2× goal), at least [`HELD_WATCH_SECONDS`] and at most the
/// SLO's period. Long horizons make the false-revert figures stricter: a good
/// release held for weeks gets that many more chances to be reverted wrongly.
pub fn held_watch_seconds(scenario: &Scenario, period_seconds: f64) -> f64 {
    let share = scenario.canary_share.unwrap_or(1.0);
    let to_goal = BUDGET_GOAL_PCT / 100.0 * period_seconds / (scenario.multiple * share).max(1e-9);
    to_goal.clamp(HELD_WATCH_SECONDS, period_seconds)
}

/// Interval of the intervals fed while held (the verdict depends on the
/// counts, not on the slicing; minutes keep a day of trials fast).
pub const HELD_WATCH_INTERVAL_SECONDS: f64 = 60.0;

/// The budget share (%) a 2× release must be reverted before (issue 4).
pub const BUDGET_GOAL_PCT: f64 = 2.0;

/// Runs `trials` trials of `scenario` under `policy` with `seed`.
pub fn run(
    scenario: &Scenario,
    policy: &Policy,
    trials: u64,
    seed: u64,
) -> Result<ScenarioResult, JudgeError> {
    let mut rng = StdRng::seed_from_u64(seed ^ fnv1a(scenario.label().as_bytes()));
    let slo = SloSpec::availability("availability", scenario.objective);
    let p0 = 1.0 - scenario.objective;
    let mut outcomes = Vec::with_capacity(trials as usize);
    for _ in 0..trials {
        outcomes.push(run_trial(scenario, policy, &slo, &mut rng)?);
    }
    let count = |v: Verdict| outcomes.iter().filter(|t| t.verdict == v).count() as f64;
    let n = trials.max(1) as f64;
    let mut seconds: Vec<f64> = outcomes.iter().map(|t| t.seconds).collect();
    let period_budget = p0 * scenario.rps * slo.period_seconds;
    let mut burned: Vec<f64> = outcomes
        .iter()
        .map(|t| 100.0 * t.release_bad as f64 / period_budget)
        .collect();
    let release_rps = scenario.rps * scenario.canary_share.unwrap_or(1.0);
    let mut flagger: Vec<f64> = (0..trials)
        .map(|_| threshold_check(scenario, release_rps, policy.max_verify_seconds, &mut rng))
        .collect();
    let flagger_median = quantile(&mut flagger, 0.5);
    Ok(ScenarioResult {
        scenario: scenario.name.clone(),
        slo_objective: scenario.objective,
        multiple: scenario.multiple,
        rps: scenario.rps,
        canary_share: scenario.canary_share,
        trials,
        revert_rate: count(Verdict::Revert) / n,
        promote_rate: count(Verdict::Promote) / n,
        hold_rate: count(Verdict::Hold) / n,
        reverted_while_held_rate: outcomes
            .iter()
            .filter(|t| t.reverted_while_held.is_some())
            .count() as f64
            / n,
        reverted_before_budget_goal_rate: outcomes
            .iter()
            .filter(|t| {
                let bad = match (t.verdict, t.reverted_while_held) {
                    (Verdict::Revert, _) => t.release_bad,
                    (_, Some((_, bad))) => bad,
                    _ => return false,
                };
                100.0 * bad as f64 / period_budget < BUDGET_GOAL_PCT
            })
            .count() as f64
            / n,
        median_seconds: quantile(&mut seconds, 0.5),
        p95_seconds: quantile(&mut seconds, 0.95),
        oracle_seconds: oracle_seconds(scenario, policy, release_rps),
        attribution_oracle_seconds: attribution_oracle_seconds(scenario, policy),
        budget_burned_pct_median: quantile(&mut burned, 0.5),
        threshold_check_seconds: flagger_median.is_finite().then_some(flagger_median),
    })
}

/// Wald's expected sample size, in seconds at `release_rps`, of the SPRT that
/// knows the truth: `H0: p0` against `H1: multiple·p0` when the multiple is
/// above 1 (a bad release, to be caught), else against the smallest policy
/// multiple (a good release, to be passed).
pub fn oracle_seconds(scenario: &Scenario, policy: &Policy, release_rps: f64) -> f64 {
    let p0 = 1.0 - scenario.objective;
    let p = scenario.multiple * p0;
    let smallest = policy
        .multiples
        .iter()
        .copied()
        .fold(f64::INFINITY, f64::min);
    let p1 = if scenario.multiple > 1.0 {
        p
    } else {
        smallest * p0
    };
    stats::wald_expected_trials(p0, p1, p, policy.alpha, policy.beta) / release_rps
}

/// Wald's expected sample size, in seconds, of the SPRT that knows the true
/// ratio between a canary and its live baseline and tests it on the
/// conditional binomial of the errors: of the errors both versions make, the
/// canary's share is `θ0 = w` (its traffic share) when it fails like its
/// baseline and `θ1 = w·r/(w·r + 1 − w)` at the true ratio `r = multiple ÷
/// baseline_multiple`. Counted in errors, converted to seconds at the rate
/// both versions make them. `None` without a canary or when the canary is
/// no worse than its baseline (nothing to attribute).
///
/// This is the limit for the question a canary verdict needs answered
/// besides "does it burn?": "is it the canary's fault?". A test that blames
/// a shared outage of any rate with chance at most `blame_alpha` (the
/// policy's, [`Policy::blame_alpha`]; its `alpha` when unset) and misses a
/// bad canary with chance at most `β` needs at least `ln((1 − β)/
/// blame_alpha) ÷ KL(θ1 ‖ θ0)` errors on average (Wald–Hoeffding), and the
/// conditional
/// binomial loses nothing: its KL per error times the error rate equals the
/// Poisson KL from the truth to the closest shared outage (both versions at
/// the pooled rate).
pub fn attribution_oracle_seconds(scenario: &Scenario, policy: &Policy) -> Option<f64> {
    let w = scenario.canary_share?;
    let ratio = scenario.multiple / scenario.baseline_multiple;
    if ratio <= 1.0 || !ratio.is_finite() {
        return None;
    }
    let p0 = 1.0 - scenario.objective;
    let theta = w * ratio / (w * ratio + 1.0 - w);
    let blame_alpha = policy.blame_alpha.unwrap_or(policy.alpha);
    let errors = stats::wald_expected_trials(w, theta, theta, blame_alpha, policy.beta);
    let errors_per_second =
        scenario.rps * p0 * (w * scenario.multiple + (1.0 - w) * scenario.baseline_multiple);
    Some(errors / errors_per_second)
}

/// The time goal's yardstick: `oracle_seconds`, or during a canary the
/// larger of it and `attribution_oracle_seconds` (both questions must be
/// answered before a canary is reverted).
pub fn time_limit_seconds(r: &ScenarioResult) -> f64 {
    r.attribution_oracle_seconds
        .map_or(r.oracle_seconds, |a| a.max(r.oracle_seconds))
}

/// Seconds of the stable build's traffic before the rollout that guard's
/// engine hands the judge as history: `EngineSettings::baseline_window`
/// (default 300 s) in `crates/guard/src/engine/mod.rs`, read by
/// `Engine::pre_rollout_baseline` when the rollout starts and given to
/// `Judge::with_baseline_history` by `PolicyJudge::verifier`
/// (`crates/guard/src/engine/judge_adapter.rs`).
pub const HISTORY_SECONDS: f64 = 300.0;

/// Feeds one trial's traffic to a fresh judge, one-second intervals, until a
/// verdict other than `continue` (the deadline guarantees one).
///
/// As guard's engine does, the judge first gets the stable build's counts
/// over the [`HISTORY_SECONDS`] before the rollout: all of the service's
/// traffic (`rps`) at [`Scenario::history_multiple`], errors independent.
pub fn run_trial(
    scenario: &Scenario,
    policy: &Policy,
    slo: &SloSpec,
    rng: &mut StdRng,
) -> Result<Trial, JudgeError> {
    let p0 = 1.0 - scenario.objective;
    let history_events = (scenario.rps * HISTORY_SECONDS).round() as u64;
    let history_bad = sample_binomial(
        rng,
        history_events,
        (scenario.history_multiple * p0).min(1.0),
    );
    let mut judge = Judge::new(policy.clone(), vec![slo.clone()])?;
    if history_events > 0 {
        judge = judge.with_baseline_history(
            &slo.name,
            Counts::new(history_events - history_bad, history_events),
        )?;
    }
    let p_release = (scenario.multiple * p0).min(1.0);
    let p_base = (scenario.baseline_multiple * p0).min(1.0);
    let mut interval = Interval {
        seconds: 1.0,
        slos: vec![SloObservation {
            slo: slo.name.clone(),
            candidate: Counts::default(),
            baseline: Counts::default(),
        }],
        canary_share: scenario.canary_share,
        source_ok: true,
    };
    // Whole requests per second; fractional rates carry over.
    let mut carry = 0.0;
    let mut release_bad = 0u64;
    let limit = (policy.max_verify_seconds / interval.seconds).ceil() as u64 + 2;
    for second in 1..=limit {
        let want = scenario.rps + carry;
        let requests = want.floor() as u64;
        carry = want - requests as f64;
        release_bad += draw(
            scenario,
            (p_release, p_base),
            requests,
            1,
            rng,
            &mut interval,
        );
        let decision = judge.step(&interval)?;
        if decision.verdict != Verdict::Continue {
            let seconds = second as f64 * interval.seconds;
            let reverted_while_held = if decision.verdict == Verdict::Hold {
                let horizon = held_watch_seconds(scenario, slo.period_seconds);
                watch_held(
                    scenario,
                    &mut judge,
                    &mut interval,
                    (seconds, horizon),
                    release_bad,
                    rng,
                )?
            } else {
                None
            };
            return Ok(Trial {
                verdict: decision.verdict,
                seconds,
                release_bad,
                reverted_while_held,
            });
        }
    }
    // Unreachable with a valid policy (the deadline holds), but never panic.
    Ok(Trial {
        verdict: Verdict::Hold,
        seconds: limit as f64 * interval.seconds,
        release_bad,
        reverted_while_held: None,
    })
}

/// Keeps feeding a held trial's judge the same traffic for `horizon` seconds
/// after `held_at`, a minute at a time (errors still drawn second by second,
/// so bursts stay bursts), and returns when and after how many of the
/// release's bad events it reverted, if it did.
fn watch_held(
    scenario: &Scenario,
    judge: &mut Judge,
    interval: &mut Interval,
    (held_at, horizon): (f64, f64),
    mut release_bad: u64,
    rng: &mut StdRng,
) -> Result<Option<(f64, u64)>, JudgeError> {
    let p0 = 1.0 - scenario.objective;
    let p_release = (scenario.multiple * p0).min(1.0);
    let p_base = (scenario.baseline_multiple * p0).min(1.0);
    let per_second = scenario.rps;
    let seconds = HELD_WATCH_INTERVAL_SECONDS;
    interval.seconds = seconds;
    let steps = (horizon / seconds).ceil() as u64;
    for step in 1..=steps {
        let requests = (per_second * seconds).round() as u64;
        release_bad += draw(
            scenario,
            (p_release, p_base),
            requests,
            seconds as u64,
            rng,
            interval,
        );
        if judge.step(interval)?.verdict == Verdict::Revert {
            return Ok(Some((held_at + step as f64 * seconds, release_bad)));
        }
    }
    Ok(None)
}

/// Draws `requests` spread over `seconds` whole seconds into `interval`'s
/// counts (split between canary and baseline by the canary's share) and
/// returns the release's bad events. Bursty errors are drawn second by
/// second, so a burst never spans seconds; independent ones at once.
fn draw(
    scenario: &Scenario,
    (p_release, p_base): (f64, f64),
    requests: u64,
    seconds: u64,
    rng: &mut StdRng,
    interval: &mut Interval,
) -> u64 {
    let (n_release, n_base) = match scenario.canary_share {
        Some(w) => {
            let c = sample_binomial(rng, requests, w);
            (c, requests - c)
        }
        None => (requests, 0),
    };
    let bad_release = match scenario.errors {
        ErrorModel::Independent => sample_binomial(rng, n_release, p_release),
        model => {
            let seconds = seconds.max(1);
            (0..seconds)
                .map(|s| {
                    let share = n_release / seconds + u64::from(s < n_release % seconds);
                    sample_bad(rng, share, p_release, model)
                })
                .sum()
        }
    };
    let bad_base = sample_binomial(rng, n_base, p_base);
    interval.slos[0].candidate = Counts::new(n_release - bad_release, n_release);
    interval.slos[0].baseline = Counts::new(n_base - bad_base, n_base);
    bad_release
}

fn sample_binomial(rng: &mut StdRng, n: u64, p: f64) -> u64 {
    if n == 0 || p <= 0.0 {
        return 0;
    }
    if p >= 1.0 {
        return n;
    }
    match Binomial::new(n, p) {
        Ok(d) => d.sample(rng),
        Err(_) => 0,
    }
}

fn sample_bad(rng: &mut StdRng, n: u64, p: f64, model: ErrorModel) -> u64 {
    match model {
        ErrorModel::Independent => sample_binomial(rng, n, p),
        ErrorModel::Bursty {
            clustered_share,
            mean_cluster,
        } => {
            let independent = sample_binomial(rng, n, p * (1.0 - clustered_share));
            let rate = p * clustered_share * n as f64 / mean_cluster;
            let clusters = if rate > 0.0 {
                Poisson::new(rate).map_or(0.0, |d| d.sample(rng)) as u64
            } else {
                0
            };
            let mut clustered = 0u64;
            if clusters > 0
                && let Ok(size) = Geometric::new(1.0 / mean_cluster)
            {
                for _ in 0..clusters {
                    clustered += 1 + size.sample(rng);
                }
            }
            (independent + clustered).min(n)
        }
    }
}

/// Seconds until a Flagger-style check (success rate ≥ 99 % per 1-minute
/// interval; roll back after 5 failed intervals) fires, or `∞` if it does
/// not within `horizon` seconds.
fn threshold_check(scenario: &Scenario, release_rps: f64, horizon: f64, rng: &mut StdRng) -> f64 {
    const INTERVAL: f64 = 60.0;
    const THRESHOLD: f64 = 0.99;
    const FAILURES: u32 = 5;
    let p = (scenario.multiple * (1.0 - scenario.objective)).min(1.0);
    let per_minute = release_rps * INTERVAL;
    let mut carry = 0.0;
    let mut failed = 0;
    let minutes = (horizon / INTERVAL).floor() as u64;
    for minute in 1..=minutes {
        let want = per_minute + carry;
        let n = want.floor() as u64;
        carry = want - n as f64;
        if n == 0 {
            // No traffic: Flagger's query returns no value and the check
            // neither passes nor fails.
            continue;
        }
        let bad = sample_bad(rng, n, p, scenario.errors);
        if (n - bad) as f64 / (n as f64) < THRESHOLD {
            failed += 1;
            if failed >= FAILURES {
                return minute as f64 * INTERVAL;
            }
        }
    }
    f64::INFINITY
}

/// The `q` quantile (nearest rank) of `xs`, sorting it; `NaN` when empty.
pub fn quantile(xs: &mut [f64], q: f64) -> f64 {
    if xs.is_empty() {
        return f64::NAN;
    }
    xs.sort_by(f64::total_cmp);
    let rank = ((q * xs.len() as f64).ceil() as usize).clamp(1, xs.len());
    xs[rank - 1]
}

fn fnv1a(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in bytes {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h
}

/// One goal of issue 4 checked against one scenario's figures.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct GoalCheck {
    /// The goal, in words.
    pub goal: &'static str,
    /// Which row it was checked on.
    pub scenario: String,
    /// Whether the figures meet it.
    pub met: bool,
    /// The figure against its bound.
    pub detail: String,
}

/// Checks the goals of issue 4 against benchmark rows:
/// false revert ≤ 1 % at multiples ≤ 1 and in `bursty`; revert ≥ 99 % at
/// multiples ≥ 6; median time ≤ max(1.5 × oracle, 2 s) at multiples ≥ 6
/// (during a canary the oracle is the larger of `oracle_seconds` and
/// `attribution_oracle_seconds`, [`time_limit_seconds`]); 2× releases reverted (≥ 99 %) before they burned 2 % of the budget; no
/// revert in `shared-outage`. Reverts count whether they came during
/// verification or later while the release was held (guard keeps judging a
/// held release), so a held release's late revert counts against the false
/// revert and shared-outage goals as much as for the others.
///
/// One check is out of reach of any judge fed one-second intervals that
/// never lets one second's errors revert alone (the `bursty` goal's guard,
/// [`Policy::evidence_cap_per_second`]): a 14.4× release at 100 rps, bound
/// 1.5 × 1.79 s = 2.69 s. Its median would have to be 2 s, i.e. a revert
/// by 2 s in half the trials; that needs at least three errors with one in
/// each second, which 1.44 errors a second give with chance
/// P(k ≥ 3 in 2 s) − 2·P(0 in 1 s)·P(k ≥ 3 in 1 s) = 0.549 − 2 · 0.237 ·
/// 0.176 = 0.47, even to a test that knows the truth (each step checked
/// by the test `no_burst_guarded_judge_reverts_a_fourteen_x_release_at_100_rps_by_two_seconds_in_half_the_trials`
/// in `tests/detection_grid.rs`, where guard's judge reverts by 2 s in 18 %
/// of 400 trials). It is 3 s at seeds 1 to 4.
pub fn check_goals(rows: &[ScenarioResult]) -> Vec<GoalCheck> {
    let mut out = Vec::new();
    for r in rows {
        let label = format!(
            "{} x={} rps={} share={}",
            r.scenario,
            r.multiple,
            r.rps,
            r.canary_share.map_or("none".into(), |w| w.to_string())
        );
        let mut check = |goal: &'static str, met: bool, detail: String| {
            out.push(GoalCheck {
                goal,
                scenario: label.clone(),
                met,
                detail,
            })
        };
        let independent = r.scenario == "release" || r.scenario == "canary";
        let reverted = r.revert_rate + r.reverted_while_held_rate;
        let reverts = format!(
            "revert rate {:.2}% + {:.2}% while held",
            r.revert_rate * 100.0,
            r.reverted_while_held_rate * 100.0
        );
        if (independent && r.multiple <= 1.0) || r.scenario == "bursty" {
            check("false revert <= 1%", reverted <= 0.01, reverts.clone());
        }
        if independent && r.multiple >= 6.0 {
            check("revert >= 99%", reverted >= 0.99, reverts.clone());
            let bound = (1.5 * time_limit_seconds(r)).max(2.0);
            check(
                "median time <= max(1.5 x oracle, 2 s)",
                r.median_seconds <= bound,
                format!(
                    "median {:.1}s vs bound {:.1}s (oracle {:.1}s{})",
                    r.median_seconds,
                    bound,
                    r.oracle_seconds,
                    r.attribution_oracle_seconds
                        .map_or(String::new(), |a| format!(", attribution oracle {a:.1}s"))
                ),
            );
        }
        if independent && r.multiple == 2.0 {
            check(
                "2x reverted (>= 99%) before 2% of budget",
                r.reverted_before_budget_goal_rate >= 0.99,
                format!(
                    "{:.2}% reverted before {BUDGET_GOAL_PCT}% of the budget ({reverts}), median budget burned by the verdict {:.4}%",
                    r.reverted_before_budget_goal_rate * 100.0,
                    r.budget_burned_pct_median
                ),
            );
        }
        if r.scenario == "shared-outage" {
            check(
                "no revert in shared-outage",
                reverted == 0.0,
                format!("{reverts}, hold rate {:.2}%", r.hold_rate * 100.0),
            );
        }
    }
    out
}

/// The policy of a plain, single SPRT tuned to one alternative (`multiple`,
/// e.g. the fast-burn 14.4×) with no burst guard: the comparison the issue
/// asks for ("a single SPRT against 14.4× promotes about a third of 6×
/// releases").
pub fn single_sprt_policy(multiple: f64) -> Policy {
    Policy {
        multiples: vec![multiple],
        evidence_cap_per_second: Some(f64::MAX),
        // A classical SPRT stops at its first boundary.
        min_verify_seconds: 0.0,
        min_events: 0,
        ..Policy::default()
    }
}

/// Scenarios for the single-SPRT comparison: releases at 6× with no canary
/// at 10, 100 and 1000 rps, named `release-single-sprt-14.4`.
pub fn single_sprt_grid() -> Vec<Scenario> {
    [10.0, 100.0, 1000.0]
        .into_iter()
        .map(|rps| Scenario {
            name: "release-single-sprt-14.4".into(),
            objective: 0.999,
            multiple: 6.0,
            baseline_multiple: 1.0,
            history_multiple: 1.0,
            rps,
            canary_share: None,
            errors: ErrorModel::Independent,
        })
        .collect()
}
