//! Error-budget arithmetic: burn rate, budget consumed and remaining, time to
//! exhaustion, and the budget a release burns beyond its baseline.
//!
//! Pure functions over plain numbers, with no parsing and no I/O, so that the
//! judge can depend on it cheaply and test it exhaustively. Vocabulary (see
//! `DESIGN.md`):
//!
//! - `o` is the objective as a ratio (`0.999`), `T` the period in seconds;
//! - the *error budget* is `1 − o`, the share of events allowed to be bad;
//! - a *burn rate* of 1 spends exactly the whole budget over `T`; 14.4 spends
//!   2 % of a 30-day budget in one hour (the SRE workbook's fast-burn page).
//!
//! Budget quantities are *fractions of the whole period's budget*: `1.0` is all
//! of it, `0.02` is 2 %. Counts are `f64` because they may come from
//! Prometheus `increase()`, which extrapolates to non-integers; `u64` counts
//! convert with `as f64` (exact below 2^53).
//!
//! ```
//! use slo::budget::Slo;
//!
//! let slo = Slo::new(0.999, 30.0 * 86_400.0).unwrap();
//! // 14.4 bad events per 1000 burn 14.4 times faster than allowed ...
//! let rate = slo.burn_rate(14.4, 1000.0).unwrap();
//! assert!((rate - 14.4).abs() < 1e-9);
//! // ... and at that pace an untouched budget lasts 30 d / 14.4 = 50 h.
//! let left = slo.time_to_exhaustion(1.0, rate).unwrap();
//! assert!((left - 50.0 * 3600.0).abs() < 1e-6);
//! ```

use std::fmt;

/// Why a [`Slo`] could not be built.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum BudgetError {
    /// The objective must be a ratio in `(0, 1)`: `0.999` for 99.9 %. `1.0`
    /// leaves no budget, so every budget quantity would divide by zero.
    #[error("objective must be a ratio strictly between 0 and 1 (e.g. 0.999 for 99.9%), got {0}")]
    Objective(f64),
    /// The period must be a finite, positive number of seconds.
    #[error("period must be a positive, finite number of seconds (e.g. 2592000 for 30d), got {0}")]
    Period(f64),
}

/// An objective over a period: the part of an SLO the budget math needs.
///
/// Built only through [`Slo::new`], which guarantees `0 < objective < 1` and a
/// positive finite period, so no method below can divide by zero.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Slo {
    objective: f64,
    period_secs: f64,
}

impl Slo {
    /// An SLO with `objective` as a ratio (`0.999`) over `period_secs` seconds.
    pub fn new(objective: f64, period_secs: f64) -> Result<Self, BudgetError> {
        if !(objective > 0.0 && objective < 1.0) {
            return Err(BudgetError::Objective(objective));
        }
        if !(period_secs.is_finite() && period_secs > 0.0) {
            return Err(BudgetError::Period(period_secs));
        }
        Ok(Self {
            objective,
            period_secs,
        })
    }

    /// An SLO from a Sloth-style percentage (`99.9`) over `period_secs`.
    pub fn from_percent(objective_percent: f64, period_secs: f64) -> Result<Self, BudgetError> {
        Self::new(objective_percent / 100.0, period_secs)
    }

    /// The objective as a ratio, e.g. `0.999`.
    pub fn objective(&self) -> f64 {
        self.objective
    }

    /// The period in seconds.
    pub fn period_secs(&self) -> f64 {
        self.period_secs
    }

    /// The error budget as a ratio, `1 − o`: the share of events allowed to be
    /// bad over the period. Always in `(0, 1)`.
    pub fn error_budget(&self) -> f64 {
        1.0 - self.objective
    }

    /// How many times faster than sustainable the budget burns when `bad` of
    /// `total` events fail: `(bad / total) / (1 − o)`.
    ///
    /// `None` when `total <= 0` (no traffic says nothing about the error rate;
    /// it is not a burn rate of zero) or either count is not finite.
    pub fn burn_rate(&self, bad: f64, total: f64) -> Option<f64> {
        if !(bad.is_finite() && total.is_finite()) || total <= 0.0 {
            return None;
        }
        Some((bad / total) / self.error_budget())
    }

    /// Share of the period's budget consumed by `bad` events when the period
    /// is expected to see `events_in_period` events: `bad / ((1 − o) · N_T)`.
    ///
    /// `None` when `events_in_period <= 0` or an input is not finite.
    pub fn budget_consumed(&self, bad: f64, events_in_period: f64) -> Option<f64> {
        if !(bad.is_finite() && events_in_period.is_finite()) || events_in_period <= 0.0 {
            return None;
        }
        Some(bad / (self.error_budget() * events_in_period))
    }

    /// Share of the period's budget consumed by burning at `burn_rate` for
    /// `interval_secs`: `burn_rate · interval / T`. Equal to
    /// [`Slo::budget_consumed`] when traffic is steady.
    pub fn budget_consumed_at_rate(&self, burn_rate: f64, interval_secs: f64) -> f64 {
        burn_rate * interval_secs / self.period_secs
    }

    /// The events the whole period would see at the rate observed over an
    /// interval: `N_T = total · T / interval`. `None` when `interval_secs <= 0`
    /// or an input is not finite.
    pub fn events_in_period(&self, total: f64, interval_secs: f64) -> Option<f64> {
        if !(total.is_finite() && interval_secs.is_finite()) || interval_secs <= 0.0 {
            return None;
        }
        Some(total * self.period_secs / interval_secs)
    }

    /// Share of the budget left after `consumed` was spent: `1 − consumed`.
    /// Negative once the budget is overspent (the SLO is broken by that much).
    pub fn remaining_budget(&self, consumed: f64) -> f64 {
        1.0 - consumed
    }

    /// Seconds until `remaining` budget (a share, `1.0` = all) is gone at
    /// `burn_rate`: `remaining · T / burn_rate`.
    ///
    /// `Some(0.0)` when nothing is left; `None` when the budget never runs out
    /// at this rate (`burn_rate <= 0`) or an input is not finite.
    pub fn time_to_exhaustion(&self, remaining: f64, burn_rate: f64) -> Option<f64> {
        if !(remaining.is_finite() && burn_rate.is_finite()) {
            return None;
        }
        if remaining <= 0.0 {
            return Some(0.0);
        }
        if burn_rate <= 0.0 {
            return None;
        }
        Some(remaining * self.period_secs / burn_rate)
    }

    /// The share of the period's budget a new release burns *beyond its
    /// baseline*:
    ///
    /// `burned = (bad_new − p_base · total_new) / ((1 − o) · N_T)`
    ///
    /// where `p_base` is the baseline release's error ratio and `N_T` the
    /// events expected in the whole period at the current rate (see
    /// [`Slo::events_in_period`]). The release is blamed only for the errors
    /// its baseline would not have made; a result below zero means the release
    /// does better than its baseline. Callers comparing against a threshold
    /// usually want `max(0.0)`.
    ///
    /// `None` when `events_in_period <= 0`, `p_base` is outside `[0, 1]`, or an
    /// input is not finite.
    pub fn attributable_burn(
        &self,
        bad_new: f64,
        total_new: f64,
        p_base: f64,
        events_in_period: f64,
    ) -> Option<f64> {
        if !(bad_new.is_finite() && total_new.is_finite() && p_base.is_finite()) {
            return None;
        }
        if !(0.0..=1.0).contains(&p_base) {
            return None;
        }
        let excess = bad_new - p_base * total_new;
        self.budget_consumed(excess, events_in_period)
    }
}

impl fmt::Display for Slo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}% over {}s", self.objective * 100.0, self.period_secs)
    }
}

/// Seconds in Sloth's default SLO period, 30 days.
pub const PERIOD_30D_SECS: f64 = 30.0 * 86_400.0;
/// Seconds in Sloth's other built-in SLO period, 28 days.
pub const PERIOD_28D_SECS: f64 = 28.0 * 86_400.0;

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn close(a: f64, b: f64) -> bool {
        (a - b).abs() <= 1e-9 * (1.0 + a.abs().max(b.abs()))
    }

    #[test]
    fn rejects_objectives_without_budget_or_period() {
        assert_eq!(Slo::new(1.0, 1.0), Err(BudgetError::Objective(1.0)));
        assert_eq!(Slo::new(0.0, 1.0), Err(BudgetError::Objective(0.0)));
        assert!(matches!(
            Slo::new(f64::NAN, 1.0),
            Err(BudgetError::Objective(_))
        ));
        assert_eq!(Slo::new(0.99, 0.0), Err(BudgetError::Period(0.0)));
        assert!(matches!(
            Slo::new(0.99, f64::INFINITY),
            Err(BudgetError::Period(_))
        ));
        assert!(Slo::from_percent(99.9, PERIOD_30D_SECS).is_ok());
    }

    #[test]
    fn sre_workbook_fast_burn_spends_two_percent_per_hour() {
        // The workbook: burn rate 14.4 over 1 h spends 2 % of a 30 d budget.
        let slo = Slo::new(0.999, PERIOD_30D_SECS).unwrap();
        assert!(close(slo.budget_consumed_at_rate(14.4, 3600.0), 0.02));
        // 6 over 6 h spends 5 %, 1 over 3 d spends 10 %.
        assert!(close(slo.budget_consumed_at_rate(6.0, 6.0 * 3600.0), 0.05));
        assert!(close(slo.budget_consumed_at_rate(1.0, 3.0 * 86_400.0), 0.1));
    }

    #[test]
    fn no_traffic_is_not_a_zero_burn() {
        let slo = Slo::new(0.99, PERIOD_28D_SECS).unwrap();
        assert_eq!(slo.burn_rate(0.0, 0.0), None);
        assert_eq!(slo.budget_consumed(1.0, 0.0), None);
        assert_eq!(slo.events_in_period(10.0, 0.0), None);
        assert_eq!(slo.time_to_exhaustion(0.5, 0.0), None);
        assert_eq!(slo.time_to_exhaustion(0.0, 3.0), Some(0.0));
    }

    #[test]
    fn attributable_burn_matches_design_example() {
        // 1000 requests over 60 s, 11 bad, baseline error ratio 0.001, 99.9 %
        // over 30 d: N_T = 1000 · 43200 = 43.2 M; excess 10 errors;
        // burned = 10 / (0.001 · 43.2e6) = 10 / 43200.
        let slo = Slo::new(0.999, PERIOD_30D_SECS).unwrap();
        let n_t = slo.events_in_period(1000.0, 60.0).unwrap();
        assert!(close(n_t, 43.2e6));
        let burned = slo.attributable_burn(11.0, 1000.0, 0.001, n_t).unwrap();
        assert!(close(burned, 10.0 / 43_200.0));
        assert_eq!(slo.attributable_burn(1.0, 1.0, 1.5, n_t), None);
    }

    fn slo_strategy() -> impl Strategy<Value = Slo> {
        (0.5f64..0.99999, 3600.0f64..(400.0 * 86_400.0))
            .prop_map(|(o, t)| Slo::new(o, t).expect("strategy stays in range"))
    }

    proptest! {
        #![proptest_config(ProptestConfig { rng_seed: proptest::test_runner::RngSeed::Fixed(0x5105), ..ProptestConfig::default() })]

        /// Burning at rate `r` for the whole interval, with steady traffic,
        /// consumes the same budget whether counted by events or by rate.
        #[test]
        fn event_and_rate_views_agree(
            slo in slo_strategy(),
            total in 1.0f64..1e9,
            ratio in 0.0f64..=1.0,
            interval in 1.0f64..1e6,
        ) {
            let bad = total * ratio;
            let rate = slo.burn_rate(bad, total).unwrap();
            let n_t = slo.events_in_period(total, interval).unwrap();
            let by_events = slo.budget_consumed(bad, n_t).unwrap();
            let by_rate = slo.budget_consumed_at_rate(rate, interval);
            prop_assert!(close(by_events, by_rate), "{by_events} vs {by_rate}");
        }

        /// Burn rate is monotone in bad events and equals 1 exactly at the
        /// objective's error ratio.
        #[test]
        fn burn_rate_monotone_and_unit_at_objective(
            slo in slo_strategy(),
            total in 1.0f64..1e9,
            a in 0.0f64..=1.0,
            b in 0.0f64..=1.0,
        ) {
            let (lo, hi) = if a <= b { (a, b) } else { (b, a) };
            let r_lo = slo.burn_rate(lo * total, total).unwrap();
            let r_hi = slo.burn_rate(hi * total, total).unwrap();
            prop_assert!(r_lo <= r_hi);
            prop_assert!(r_lo >= 0.0);
            let at = slo.burn_rate(slo.error_budget() * total, total).unwrap();
            prop_assert!(close(at, 1.0));
        }

        /// Spending what remains at rate r takes exactly time_to_exhaustion.
        #[test]
        fn exhaustion_time_spends_exactly_the_remainder(
            slo in slo_strategy(),
            remaining in 1e-6f64..=1.0,
            rate in 1e-3f64..1e4,
        ) {
            let t = slo.time_to_exhaustion(remaining, rate).unwrap();
            prop_assert!(t > 0.0);
            let spent = slo.budget_consumed_at_rate(rate, t);
            prop_assert!(close(spent, remaining));
        }

        /// A release exactly as bad as its baseline burns nothing attributable;
        /// every extra bad event adds `1 / ((1 − o) · N_T)`; fewer bad events
        /// than the baseline give a negative burn.
        #[test]
        fn attributable_burn_counts_only_excess(
            slo in slo_strategy(),
            total in 1.0f64..1e7,
            p_base in 0.0f64..0.5,
            extra in 0.0f64..1e4,
            n_t in 1.0f64..1e12,
        ) {
            let same = slo.attributable_burn(p_base * total, total, p_base, n_t).unwrap();
            prop_assert!(same.abs() <= 1e-9 * (1.0 + total / (slo.error_budget() * n_t)));
            let worse = slo.attributable_burn(p_base * total + extra, total, p_base, n_t).unwrap();
            let expected = extra / (slo.error_budget() * n_t);
            prop_assert!((worse - same - expected).abs() <= 1e-9 * (1.0 + worse.abs() + expected));
            if p_base > 0.0 {
                let better = slo.attributable_burn(0.0, total, p_base, n_t).unwrap();
                prop_assert!(better < 0.0);
            }
        }

        /// With a clean baseline the attributable burn is the plain budget
        /// consumed.
        #[test]
        fn clean_baseline_blames_every_error(
            slo in slo_strategy(),
            bad in 0.0f64..1e6,
            total in 1e6f64..1e7,
            n_t in 1.0f64..1e12,
        ) {
            let a = slo.attributable_burn(bad, total, 0.0, n_t).unwrap();
            let c = slo.budget_consumed(bad, n_t).unwrap();
            prop_assert!(close(a, c));
        }

        /// Non-finite inputs never panic and never produce a number.
        #[test]
        fn non_finite_inputs_are_refused(slo in slo_strategy(), x in prop_oneof![Just(f64::NAN), Just(f64::INFINITY), Just(f64::NEG_INFINITY)]) {
            prop_assert_eq!(slo.burn_rate(x, 10.0), None);
            prop_assert_eq!(slo.burn_rate(1.0, x), None);
            prop_assert_eq!(slo.budget_consumed(x, 10.0), None);
            prop_assert_eq!(slo.events_in_period(x, 10.0), None);
            prop_assert_eq!(slo.time_to_exhaustion(x, 1.0), None);
            prop_assert_eq!(slo.attributable_burn(x, 1.0, 0.0, 10.0), None);
        }
    }
}
