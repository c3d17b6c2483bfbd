//! guard's judge: decides `continue`, `promote`, `revert` or `hold` for a
//! release from event counts, by sequential tests. Pure: no clock, no I/O,
//! deterministic; time enters only as numbers in the input.
//!
//! # How the engine uses it
//!
//! 1. Build a [`Judge`] from a [`Policy`] and the service's SLOs
//!    ([`SloSpec`]); optionally give it the previous release's counts from
//!    before the rollout ([`Judge::with_baseline_history`]).
//! 2. About once a second, difference the cumulative counts of the signal
//!    source into an [`Interval`] (per SLO: the new release's good/total and
//!    the live baseline's, the canary's traffic share, whether the source
//!    answered) and call [`Judge::step`]. A missed scrape is an interval with
//!    `source_ok: false`, never an interval of zero traffic.
//! 3. Act on the returned [`Decision`]: `Continue` keeps verifying; `Promote`
//!    is latched (later steps keep returning it) and the engine keeps feeding
//!    intervals during its watch period, during which attributable budget
//!    burn reaching [`Policy::max_budget_share`] turns it into `Revert`;
//!    `Revert` is latched; `Hold` (shared outage, too little traffic by the
//!    deadline, source down) asks a person and is *not* latched: guard's
//!    engine keeps feeding a release held by the judge, and a later `Revert`
//!    (the evidence became conclusive) reverts it before the person acts (the
//!    always-valid bound below holds however long it is watched; the detection
//!    simulator follows held trials for a day and counts those reverts).
//!
//! [`Judge`] is `Serialize`/`Deserialize`, so the engine may persist it with
//! the rollout and resume after a crash exactly where it stopped.
//!
//! # The statistics (see `DESIGN.md` and [`stats`])
//!
//! - Per SLO, each event is a Bernoulli trial. A *mixture SPRT* over burn
//!   multiples ([`Policy::multiples`], default `{2, 4, 6, 14.4, 50}`) tests
//!   `H0: p = p_null` against `H1_f: p = p_null + (f − 1)·p0` for every `f` at
//!   once, so a bad release is caught whatever its burn multiple. Revert when
//!   the mixture likelihood ratio reaches `(1 − β)/α` (by Ville's inequality
//!   the chance that a release no worse than `p_null` *ever* gets there is at
//!   most `α/(1 − β)`, however long it is watched); an SLO passes only when
//!   *every* alternative's likelihood ratio is at or below `β/(1 − α)`, which
//!   keeps the chance of passing an `f`-times release below `β` for each `f`.
//! - Bursty, correlated errors: a Pearson over-dispersion factor `φ ≥ 1`,
//!   estimated from per-block counts (only the part beyond what chance gives
//!   independent errors, [`stats::Dispersion::phi`]), deflates the evidence
//!   (quasi-likelihood),
//!   and the evidence towards revert one block can add is capped
//!   ([`Policy::evidence_cap_per_second`]), so one burst cannot revert alone.
//! - Canary: when the canary's own test says "burning", the baseline's errors
//!   decide whose fault it is, by the conditional binomial (of all errors,
//!   the canary's share is its traffic share `w` when it fails like its
//!   baseline). The canary is blamed when a mixture over the policy
//!   multiples (as ratios to the baseline) of that likelihood ratio reaches
//!   `ln((1 − β)/blame_alpha)`: an always-valid bound again, so an outage
//!   the baseline shares is blamed with chance at most `blame_alpha/(1 − β)`
//!   ([`DEFAULT_BLAME_ALPHA`], far below `α`: a revert in an outage the
//!   release did not cause is the false alarm users remember). An outage that hits both
//!   versions is a `Hold` (the baseline's own test burns, or the errors
//!   split as the traffic does), not a `Revert`. Telling the two apart costs
//!   time at a large share: see [`sim::attribution_oracle_seconds`].
//! - Baseline history ([`Judge::with_baseline_history`]) sets the null ratio
//!   (as far as it proves the stable build worse than the objective) and
//!   counts towards attributable burn, but it does not decide attribution:
//!   an outage that starts with the rollout makes the history stale exactly
//!   when it matters. Only live baseline counts tell a canary's fault from a
//!   shared outage. (Measured in the detection simulator, 1000 trials per
//!   scenario: blaming the canary when the live baseline looked like its
//!   history rather than like the canary's observed ratio reverted up to
//!   2.5 % of shared outages at a 5 % share (6× and 20×, 10 and 100 rps),
//!   because a canary crossing on 2 or 3 errors overstates its ratio;
//!   bounding that ratio from below made the rule safe but never faster than
//!   the live conditional binomial.)
//! - Attributable budget burn (`slo::budget`) reaching the policy's share
//!   reverts, before and after a promote. The release is blamed for errors
//!   beyond the baseline's upper confidence bound (at the revert test's
//!   level; the objective's rate when there are no baseline counts), so
//!   the noise of a short history is not blamed on it over a long watch.
//!
//! Counts are accumulated into blocks of [`Policy::block_seconds`] before the
//! tests see them, so the verdict depends on the counts, not on how finely
//! the engine sliced them.
#![forbid(unsafe_code)]

mod judge;
pub mod sim;
pub mod stats;

pub use judge::{Judge, policy_problems};

use serde::{Deserialize, Serialize};

/// Good and total events. `good <= total` (checked by [`Judge::step`]).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Counts {
    /// Events that met the SLO (successful, fast enough, fresh).
    pub good: u64,
    /// All events.
    pub total: u64,
}

impl Counts {
    /// `Counts { good, total }`.
    pub fn new(good: u64, total: u64) -> Self {
        Self { good, total }
    }

    /// Bad events, `total − good` (0 if the invariant is broken).
    pub fn bad(&self) -> u64 {
        self.total.saturating_sub(self.good)
    }
}

/// What an SLO's events are. The counts are already good/total; the kind is
/// carried into reasons and evidence so people can read them.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum SliKind {
    /// A request is bad when it fails (5xx, connection error).
    Availability,
    /// A request is bad when it is slower than `threshold_seconds`.
    Latency {
        /// The histogram bucket bound (`le`) a good request stays under.
        threshold_seconds: f64,
    },
    /// A sample is bad while the last successful background run is older
    /// than `threshold_seconds`.
    Freshness {
        /// The maximum acceptable age of the last success.
        threshold_seconds: f64,
    },
}

/// One SLO as the judge needs it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SloSpec {
    /// The SLO's name; [`SloObservation::slo`] refers to it.
    pub name: String,
    /// Objective as a ratio, e.g. `0.999`.
    pub objective: f64,
    /// The SLO period in seconds (30 d = 2 592 000).
    pub period_seconds: f64,
    /// What an event is.
    pub kind: SliKind,
}

impl SloSpec {
    /// An availability SLO over 30 days.
    pub fn availability(name: impl Into<String>, objective: f64) -> Self {
        Self {
            name: name.into(),
            objective,
            period_seconds: slo::budget::PERIOD_30D_SECS,
            kind: SliKind::Availability,
        }
    }
}

/// The default [`Policy::blame_alpha`]: a canary is blamed for a burn its
/// live baseline might share only at this level, a thousandth of `alpha`.
///
/// Issue 4 asks for no revert at all in a shared outage, and the
/// conditional binomial's false blames are as frequent as its level allows:
/// at `alpha` (0.01) the detection simulator reverted 0.1–0.7 % of shared
/// outages (1000 trials per row, seeds 1–3), at 10⁻³ still 0.1 % of one row
/// at seed 2; at 10⁻⁵ none at seeds 1–3. A real bad canary is still
/// reverted: blaming it needs `ln((1 − β)/10⁻⁵) = 11.5` nats instead of 4.6
/// (a canary at an equal share with no baseline error: its 19th error, not
/// its 9th), which took 1.5–2.8× as long in the simulator's canary rows
/// (6–50×, 5 % and 50 % shares; 2.3× typically), within 1.5× of what any
/// test at that level needs on average (`sim::attribution_oracle_seconds`). The budget rule does not wait for
/// blame: a canary burning [`Policy::max_budget_share`] beyond its baseline
/// is reverted whoever else burns.
pub const DEFAULT_BLAME_ALPHA: f64 = 1e-5;

/// How cautious the judge is. `Default` gives the values in `DESIGN.md`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Policy {
    /// Chance of reverting a release that is no worse than its baseline.
    pub alpha: f64,
    /// Chance of promoting a release that burns at one of
    /// [`Policy::multiples`].
    pub beta: f64,
    /// Chance of blaming a canary for an outage its live baseline shares
    /// (`None`: [`Policy::alpha`]; default [`DEFAULT_BLAME_ALPHA`]). Smaller
    /// means fewer reverts in shared outages and slower canary reverts:
    /// blaming needs `ln((1 − β)/blame_alpha)` nats from the conditional
    /// binomial of the errors, and at an equal-traffic baseline that evidence
    /// comes 7–12× slower than the canary's own at the default 10⁻⁵ (3–5× at
    /// `alpha`; `sim::attribution_oracle_seconds`).
    pub blame_alpha: Option<f64>,
    /// Share of the SLO period's error budget a release may burn beyond its
    /// baseline before it is reverted, e.g. `0.02` (2 %).
    pub max_budget_share: f64,
    /// Never promote before this many seconds of verification.
    pub min_verify_seconds: f64,
    /// Verification deadline: undecided by then means `Hold` (too little
    /// traffic to tell), and a person is asked.
    pub max_verify_seconds: f64,
    /// Never promote on fewer events than this (per SLO, new release).
    pub min_events: u64,
    /// Burn multiples (of the error budget `1 − o`) the sequential test is
    /// tuned to, all at once (a mixture). Each must be `> 1`.
    pub multiples: Vec<f64>,
    /// At most this much log-likelihood-ratio evidence towards *revert* per
    /// second of data (per block), so one burst cannot revert on its own.
    /// `None` (the default): [`Policy::evidence_cap_for`] the policy's α and
    /// β, so it follows them; [`Policy::evidence_cap`] is the value in force.
    pub evidence_cap_per_second: Option<f64>,
    /// Intervals are summed into blocks at least this long before the tests
    /// see them (the engine's polling period is usually 1 s).
    pub block_seconds: f64,
    /// A signal source down for longer than this (consecutive seconds) turns
    /// `Continue` into `Hold`.
    pub max_missing_seconds: f64,
}

impl Default for Policy {
    fn default() -> Self {
        let alpha: f64 = 0.01;
        // Half of α: issue 4 asks that 2× releases be reverted (≥ 99 %)
        // before they burn 2 % of the budget, and β is the chance to promote
        // one. At β = 0.01 that goal sat on its edge (2× promote rates 0.5–
        // 1.6 % over seeds 1–3, 1000 trials); at 0.005 every 2× row reverts
        // ≥ 99.2 %, for 12–17 % longer verification of good releases.
        let beta: f64 = 0.005;
        Self {
            alpha,
            beta,
            blame_alpha: Some(DEFAULT_BLAME_ALPHA),
            max_budget_share: 0.02,
            min_verify_seconds: 30.0,
            max_verify_seconds: 3600.0,
            min_events: 100,
            multiples: vec![2.0, 4.0, 6.0, 14.4, 50.0],
            evidence_cap_per_second: None,
            block_seconds: 1.0,
            max_missing_seconds: 30.0,
        }
    }
}

impl Policy {
    /// The default [`Policy::evidence_cap_per_second`] for error rates
    /// `alpha` and `beta`: `0.75 · ln A`, `A = (1 − β)/α`, so it follows
    /// the revert bound when α or β is changed.
    ///
    /// One block never reverts alone (0.75 · ln A < ln A), and two full
    /// blocks revert through any single alternative of the default mixture:
    /// 1.5 · ln A − ln 5 = 5.29 ≥ ln A = 4.60 at the default α and β (ln 5
    /// is what the mixture of the five default multiples costs one
    /// alternative). With 0.6 two blocks needed two or more alternatives at
    /// the cap, which made a 50× canary at 1000 rps and 5 % share wait a
    /// third block (median 3 s against the 2 s goal); `bursty` false
    /// reverts stay ≤ 0.4 % (detection simulator, 1000 trials, seeds 1
    /// and 2).
    pub fn evidence_cap_for(alpha: f64, beta: f64) -> f64 {
        0.75 * ((1.0 - beta) / alpha).ln()
    }

    /// The evidence cap in force: [`Policy::evidence_cap_per_second`] when
    /// set, else [`Policy::evidence_cap_for`] this policy's α and β.
    pub fn evidence_cap(&self) -> f64 {
        self.evidence_cap_per_second
            .unwrap_or_else(|| Self::evidence_cap_for(self.alpha, self.beta))
    }
}

/// One SLO's counts in one interval.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct SloObservation {
    /// [`SloSpec::name`].
    pub slo: String,
    /// Counts of the new release (the canary during a canary).
    pub candidate: Counts,
    /// Counts of the live baseline (the previous release's replicas still
    /// serving); zero when none serve.
    pub baseline: Counts,
}

/// Counts observed over one interval of time.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Interval {
    /// Length of the interval in seconds (`> 0`).
    pub seconds: f64,
    /// Counts per SLO. An SLO missing here had no data this interval.
    pub slos: Vec<SloObservation>,
    /// The canary's share of traffic when a canary runs beside its baseline;
    /// `None` during a rolling update or after a promote.
    pub canary_share: Option<f64>,
    /// `false` when the source could not be read: the counts are ignored and
    /// the interval counts as missing data, never as zero traffic.
    pub source_ok: bool,
}

/// What the judge says.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Verdict {
    /// Not enough evidence either way yet: keep verifying.
    Continue,
    /// Every SLO passed: make the release the current one (latched).
    Promote,
    /// An SLO is burning because of the release: go back (latched).
    Revert,
    /// Cannot decide and will not guess: tell a person (shared outage, too
    /// little traffic by the deadline, signal source down).
    Hold,
}

impl std::fmt::Display for Verdict {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Verdict::Continue => "continue",
            Verdict::Promote => "promote",
            Verdict::Revert => "revert",
            Verdict::Hold => "hold",
        })
    }
}

/// Where one SLO's test stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SloStatus {
    /// No events yet.
    NoData,
    /// The test has not decided.
    Undecided,
    /// The release is no worse than allowed (every alternative rejected).
    Passing,
    /// The release burns the budget: its own test crossed the revert bound,
    /// or its attributable burn reached the policy share.
    Burning,
    /// The release's errors are high but the baseline's are as high: an
    /// outage that is not the release's fault.
    SharedOutage,
}

/// The evidence behind a decision, per SLO.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Evidence {
    /// [`SloSpec::name`].
    pub slo: String,
    /// Where the test stands.
    pub status: SloStatus,
    /// New-release events seen (valid intervals only).
    pub events: u64,
    /// New-release bad events.
    pub bad: u64,
    /// `bad / events` of the new release (`None` without events).
    pub release_ratio: Option<f64>,
    /// Baseline events seen (history before the rollout plus live).
    pub baseline_events: u64,
    /// Baseline bad events.
    pub baseline_bad: u64,
    /// Baseline error ratio (`None` without baseline events).
    pub baseline_ratio: Option<f64>,
    /// Error ratio under the null hypothesis, `max(p0, p_base)`.
    pub null_ratio: f64,
    /// Revert statistic: log of the mixture likelihood ratio (deflated by
    /// `dispersion`, capped per block).
    pub statistic: f64,
    /// Revert when `statistic >= upper_bound` (`ln((1 − β)/α)`).
    pub upper_bound: f64,
    /// Pass statistic: the largest per-alternative log likelihood ratio,
    /// deflated by `dispersion`.
    pub pass_statistic: f64,
    /// Pass when `pass_statistic <= lower_bound` (`ln(β/(1 − α))`).
    pub lower_bound: f64,
    /// Estimated over-dispersion factor `φ >= 1` (1 for independent errors).
    pub dispersion: f64,
    /// During a canary, once the canary's test says burning: minus the log
    /// of the mixture likelihood ratio that the canary fails more often than
    /// its baseline (by the conditional binomial on their errors); the canary
    /// is blamed at `−upper_bound` or below (positive: the errors split as
    /// the traffic does, as in an outage both share).
    pub shared_statistic: Option<f64>,
    /// Share of the period's error budget burned beyond the baseline (its
    /// error ratio's upper confidence bound), in percent (`2.0` is 2 %).
    pub budget_burned_pct: f64,
}

impl Evidence {
    /// The one statistic to show beside both bounds: the revert test's while
    /// it leans towards revert (positive), else the pass test's. Each test is
    /// decided against its own bound, so the revert statistic next to the
    /// pass bound would read as "passed" when it has not.
    pub fn statistic_towards_a_bound(&self) -> f64 {
        if self.statistic >= 0.0 {
            self.statistic
        } else {
            self.pass_statistic
        }
    }
}

/// A verdict with its reason and evidence.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Decision {
    /// What to do.
    pub verdict: Verdict,
    /// One line a person can read, e.g. "availability: burning at 6.1× the
    /// budget (12 bad of 2000, bound crossed at 4.7 ≥ 4.6)".
    pub reason: String,
    /// Seconds of input seen so far (valid and missing intervals).
    pub elapsed_seconds: f64,
    /// `true` after a promote: the release is being watched.
    pub watching: bool,
    /// Per SLO, in the order of the specs.
    pub evidence: Vec<Evidence>,
}

/// Input the judge refuses.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum JudgeError {
    /// A policy value is out of range.
    #[error("policy field `{field}` is invalid: {reason}")]
    Policy {
        /// The field's name.
        field: &'static str,
        /// What is wrong and what would be right.
        reason: String,
    },
    /// An SLO spec is invalid.
    #[error("SLO `{slo}`: {reason}")]
    Slo {
        /// The SLO's name.
        slo: String,
        /// What is wrong.
        reason: String,
    },
    /// No SLOs were given: nothing could ever pass.
    #[error("no SLOs given: the judge needs at least one SLO to verify a release against")]
    NoSlos,
    /// An interval is malformed (non-positive or non-finite length, good >
    /// total, a share outside (0, 1), an unknown SLO name).
    #[error("interval rejected: {reason}")]
    Interval {
        /// What is wrong.
        reason: String,
    },
}
