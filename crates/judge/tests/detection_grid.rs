//! A quick version of the detection benchmark (issue 4) with fixed seeds and
//! tolerant bounds: the cheap scenarios (1000 rps, where verdicts come in
//! seconds of simulated time), 100 trials each. The full grid is
//! `guard bench detection`.

use judge::Policy;
use judge::sim::{self, ErrorModel, Scenario, ScenarioResult};

const TRIALS: u64 = 100;
const SEED: u64 = 4;

fn release(multiple: f64) -> Scenario {
    Scenario {
        name: "release".into(),
        objective: 0.999,
        multiple,
        baseline_multiple: 1.0,
        history_multiple: 1.0,
        rps: 1000.0,
        canary_share: None,
        errors: ErrorModel::Independent,
    }
}

fn run(s: &Scenario, policy: &Policy) -> ScenarioResult {
    sim::run(s, policy, TRIALS, SEED).expect("valid scenario")
}

#[test]
fn good_releases_are_not_reverted_and_bad_ones_are_fast() {
    let policy = Policy::default();
    let good = run(&release(1.0), &policy);
    // α = 1 %: 5 or more reverts in 100 has probability < 0.5 %.
    assert!(good.revert_rate <= 0.05, "{good:?}");
    assert!(good.promote_rate >= 0.9, "{good:?}");

    let six = run(&release(6.0), &policy);
    assert!(six.revert_rate >= 0.95, "{six:?}");
    assert!(
        six.median_seconds <= (1.5 * six.oracle_seconds).max(2.0),
        "{six:?}"
    );

    let fifty = run(&release(50.0), &policy);
    assert_eq!(fifty.revert_rate, 1.0, "{fifty:?}");
    assert!(fifty.median_seconds <= 2.0, "{fifty:?}");
    // The Flagger-style check needs 5 failed minutes.
    assert_eq!(fifty.threshold_check_seconds, Some(300.0));
    // 6× is under a 99 % success threshold: the check never fires.
    assert_eq!(six.threshold_check_seconds, None);
}

#[test]
fn single_sprt_at_fast_burn_promotes_many_six_times_releases_the_mixture_does_not() {
    let s = release(6.0);
    let single = run(&s, &sim::single_sprt_policy(14.4));
    // About a third in theory (Wald's OC at 6× for H1 = 14.4×); tolerant bounds.
    assert!(
        (0.15..=0.6).contains(&single.promote_rate),
        "single SPRT promote rate {}",
        single.promote_rate
    );
    let mixture = run(&s, &Policy::default());
    assert!(
        mixture.promote_rate <= 0.02,
        "mixture promote rate {}",
        mixture.promote_rate
    );
}

#[test]
fn shared_outage_holds_and_bursts_do_not_revert() {
    let policy = Policy::default();
    for share in [0.05, 0.5] {
        let shared = Scenario {
            name: "shared-outage".into(),
            objective: 0.999,
            multiple: 20.0,
            baseline_multiple: 20.0,
            history_multiple: 1.0,
            rps: 1000.0,
            canary_share: Some(share),
            errors: ErrorModel::Independent,
        };
        let r = run(&shared, &policy);
        assert_eq!(r.revert_rate, 0.0, "{r:?}");
        assert!(r.hold_rate >= 0.95, "{r:?}");
    }
    let bursty = run(&sim::bursty(0.999, 1000.0), &policy);
    assert!(bursty.revert_rate <= 0.05, "{bursty:?}");
}

#[test]
fn a_bad_canary_at_an_equal_share_is_reverted_within_the_attribution_limit() {
    // 6× canary beside a healthy baseline taking the other half of 1000 rps.
    // Blaming it needs evidence that the baseline does not fail alike, which
    // its errors give at KL(6/7 ‖ 1/2) = 0.2829 nats each: at the default
    // blame level (10⁻⁵, ln A = 11.508) Wald's limit is about
    // (0.995·11.508 − 0.005·5.298)/0.2829 = 40.4 errors, at 3.5 errors a
    // second 11.5 s, against 1.6 s for the canary's own traffic alone.
    let policy = Policy::default();
    let mut s = release(6.0);
    s.name = "canary".into();
    s.canary_share = Some(0.5);
    let r = run(&s, &policy);
    assert!(r.revert_rate >= 0.95, "{r:?}");
    let limit = sim::time_limit_seconds(&r);
    assert_eq!(Some(limit), r.attribution_oracle_seconds, "{r:?}");
    assert!((11.2..11.8).contains(&limit), "{r:?}");
    assert!(r.median_seconds <= (1.5 * limit).max(2.0), "{r:?}");
}

#[test]
fn same_seed_same_figures() {
    let s = release(6.0);
    let policy = Policy::default();
    let a = sim::run(&s, &policy, 20, 9).unwrap();
    let b = sim::run(&s, &policy, 20, 9).unwrap();
    assert_eq!(a, b);
}

#[test]
fn oracle_matches_wald_for_fast_burn() {
    // DESIGN.md: ≈ 180 requests to catch 14.4× at 99.9 %; at 1000 rps 0.18 s.
    let o = sim::oracle_seconds(&release(14.4), &Policy::default(), 1000.0);
    assert!((0.17..=0.19).contains(&o), "{o}");
}

#[test]
fn attribution_oracle_is_wald_on_the_conditional_binomial() {
    // 14.4× canary, 1× baseline, 50 % share, 100 rps: of all errors the
    // canary's share is θ1 = 14.4/15.4 = 0.93506 against θ0 = 0.5;
    // KL(θ1 ‖ θ0) = 0.45230 nats per error; Wald under H1 needs about
    // ((1 − β)·ln A + β·ln B)/KL = 4.5032/0.45230 = 9.956 errors, at
    // 50·0.0144 + 50·0.001 = 0.77 errors a second: 12.93 s. The canary's own
    // traffic (50 rps) needs 3.59 s: an equal-traffic baseline makes "is it
    // the canary's fault?" the slower question.
    let mut s = release(14.4);
    s.name = "canary".into();
    s.rps = 100.0;
    s.canary_share = Some(0.5);
    // α = β = 0.01 and blame at α, as in the figures above (the default β
    // is 0.005, the default blame level 10⁻⁵).
    let policy = Policy {
        alpha: 0.01,
        beta: 0.01,
        blame_alpha: None,
        ..Policy::default()
    };
    let a = sim::attribution_oracle_seconds(&s, &policy).expect("a canary worse than its baseline");
    assert!((a - 12.93).abs() < 0.05, "{a}");
    // Blaming at 10⁻⁵ (ln A = ln(0.99/10⁻⁵) = 11.503, ln B = ln 0.01):
    // (0.99·11.503 − 0.01·4.605)/0.45230 = 25.08 errors, 32.57 s; the
    // canary's own test does not depend on it.
    let strict = Policy {
        blame_alpha: Some(1e-5),
        ..policy.clone()
    };
    let a_strict = sim::attribution_oracle_seconds(&s, &strict).expect("worse");
    assert!((a_strict - 32.57).abs() < 0.1, "{a_strict}");
    assert_eq!(
        sim::oracle_seconds(&s, &strict, 50.0),
        sim::oracle_seconds(&s, &policy, 50.0)
    );
    let own = sim::oracle_seconds(&s, &policy, 50.0);
    assert!((own - 3.59).abs() < 0.01, "{own}");
    // At 5 % the canary's errors say much more per error: the two limits
    // are close (8.2 s against 6.1 s at 50×, 100 rps).
    s.multiple = 50.0;
    s.canary_share = Some(0.05);
    let a = sim::attribution_oracle_seconds(&s, &policy).unwrap();
    let own = sim::oracle_seconds(&s, &policy, 5.0);
    assert!(
        (8.0..8.4).contains(&a) && (6.0..6.2).contains(&own),
        "{a} {own}"
    );
    // Nothing to attribute without a canary, or when both fail alike.
    s.baseline_multiple = 50.0;
    assert_eq!(sim::attribution_oracle_seconds(&s, &policy), None);
    assert_eq!(
        sim::attribution_oracle_seconds(&release(14.4), &policy),
        None
    );
}

#[test]
fn pre_rollout_history_reaches_the_judge() {
    // The stable build already failed at 20× before the rollout (300 s of
    // history at 1000 rps: 300 000 events, about 6000 bad; the null becomes
    // the lower bound ≈ 0.0195). A release at 17× adds nothing and is
    // reverted at most at about α (≤ 5 of 100 tolerated); without that
    // history every trial reverts (17× against the objective).
    let mut s = release(17.0);
    s.history_multiple = 20.0;
    let with_history = run(&s, &Policy::default());
    assert!(with_history.revert_rate <= 0.05, "{with_history:?}");
    assert!(with_history.promote_rate >= 0.95, "{with_history:?}");
    s.history_multiple = 1.0;
    let clean_history = run(&s, &Policy::default());
    assert_eq!(clean_history.revert_rate, 1.0, "{clean_history:?}");
}

#[test]
fn a_held_release_is_still_judged_bad_ones_revert_good_ones_stay_held() {
    // 2 % of 10 rps to the canary: 0.2 canary requests a second, a few
    // hundred by the one-hour deadline, too few to tell 4× from 1× (held).
    // guard keeps judging a held release; the simulator follows it until it
    // would have burned 2 % of the budget (weeks at that share, capped at the
    // 30-day period): enough to revert a 4× canary in time, and a good one
    // gets weeks of chances to be reverted wrongly.
    let canary = |multiple: f64| Scenario {
        name: "canary".into(),
        objective: 0.999,
        multiple,
        baseline_multiple: 1.0,
        history_multiple: 1.0,
        rps: 10.0,
        canary_share: Some(0.02),
        errors: ErrorModel::Independent,
    };
    let policy = Policy::default();
    let bad = sim::run(&canary(4.0), &policy, 40, SEED).expect("valid");
    assert!(bad.hold_rate >= 0.5, "{bad:?}");
    assert!(
        bad.reverted_while_held_rate >= 0.9 * bad.hold_rate,
        "{bad:?}"
    );
    assert!(bad.reverted_before_budget_goal_rate >= 0.9, "{bad:?}");
    let good = sim::run(&canary(1.0), &policy, 40, SEED).expect("valid");
    assert!(good.hold_rate >= 0.9, "{good:?}");
    // α = 1 %: 3 or more of 40 has probability < 1 %.
    assert!(
        good.revert_rate + good.reverted_while_held_rate <= 2.0 / 40.0,
        "{good:?}"
    );
}

/// The one goal check of issue 4 the benchmark misses (release 14.4× at
/// 100 rps: median 3 s against 1.5 × 1.79 s = 2.69 s) is out of reach of
/// any judge that is fed one-second intervals and never lets one second's
/// errors revert alone, as `sim::check_goals` argues; these are the
/// argument's steps, each checked.
#[test]
fn no_burst_guarded_judge_reverts_a_fourteen_x_release_at_100_rps_by_two_seconds_in_half_the_trials()
 {
    let policy = Policy::default();
    let (p0, p1, per_second) = (0.001_f64, 0.0144_f64, 100_u64);
    let revert_bound = ((1.0 - policy.beta) / policy.alpha).ln();

    // One second never reverts alone: its evidence is capped below the bound.
    assert!(policy.evidence_cap() < revert_bound);
    // Two errors in two seconds do not revert even the SPRT that knows the
    // truth (H1 = 14.4×): a revert by 2 s needs three or more.
    let llr = |k: f64, n: f64| k * (p1 / p0).ln() + (n - k) * ((1.0 - p1) / (1.0 - p0)).ln();
    assert!(llr(2.0, 200.0) < revert_bound, "{}", llr(2.0, 200.0));
    assert!(llr(3.0, 200.0) >= revert_bound, "{}", llr(3.0, 200.0));

    // Chance of three or more errors with at least one in each second.
    let pmf = |k: u64| {
        let ln_choose: f64 = (0..k)
            .map(|i| ((per_second - i) as f64).ln() - ((i + 1) as f64).ln())
            .sum();
        (ln_choose + k as f64 * p1.ln() + (per_second - k) as f64 * (1.0 - p1).ln()).exp()
    };
    let mut reachable = 0.0;
    for first in 1..=per_second {
        for second in 1..=per_second {
            if first + second >= 3 {
                reachable += pmf(first) * pmf(second);
            }
        }
    }
    assert!((reachable - 0.47).abs() < 0.005, "{reachable}");

    // guard's judge, in the simulator: fewer than that by 2 s.
    let scenario = Scenario {
        rps: 100.0,
        ..release(14.4)
    };
    let slo = judge::SloSpec::availability("availability", scenario.objective);
    let mut rng = <rand::rngs::StdRng as rand::SeedableRng>::seed_from_u64(SEED);
    let trials = 400;
    let mut by_two_seconds = 0;
    for _ in 0..trials {
        let t = sim::run_trial(&scenario, &policy, &slo, &mut rng).expect("valid scenario");
        assert_eq!(t.verdict, judge::Verdict::Revert);
        if t.seconds <= 2.0 {
            by_two_seconds += 1;
        }
    }
    let share = f64::from(by_two_seconds) / f64::from(trials);
    assert!(share < reachable, "{share}");
}
