//! `guard bench`: benchmarks and simulations. Each benchmark is a
//! subcommand (`guard bench detection`, ...), so others can be added beside.

use std::io::Write;

use anyhow::Context;

/// `guard bench <benchmark>`.
#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(subcommand)]
    pub command: BenchCommand,
}

/// The benchmarks.
#[derive(Debug, clap::Subcommand)]
pub enum BenchCommand {
    /// Simulate seeded traffic for releases of known badness and measure how
    /// often and how fast the judge reverts, promotes or holds, next to the
    /// statistical limit (an SPRT that knows the truth) and a Flagger-style
    /// threshold check.
    ///
    /// Grid: objective 99.9 %; burn multiples 0.5, 1, 2, 6, 14.4, 50; 10, 100
    /// and 1000 rps; no canary, canary at 5 % and 50 %; plus `shared-outage`
    /// (baseline and canary both at 20×) and `bursty` (a good release whose
    /// errors come in clusters). For comparison, `release-single-sprt-14.4`
    /// rows run a single SPRT tuned to 14.4x only against 6x releases. Prints
    /// a table and the goals met or missed; `--json` prints one JSON object
    /// per scenario per line instead.
    Detection(DetectionArgs),
}

/// Options of `guard bench detection`.
#[derive(Debug, clap::Args)]
pub struct DetectionArgs {
    /// Trials per scenario. More trials give tighter rates (±1 % needs about
    /// 1000) and take proportionally longer.
    #[arg(long, default_value_t = 200, value_parser = clap::value_parser!(u64).range(1..))]
    pub trials: u64,
    /// Seed of the simulation; the same seed gives the same figures.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// One JSON object per scenario per line on stdout (keys: scenario,
    /// slo_objective, multiple, rps, canary_share, trials, revert_rate,
    /// promote_rate, hold_rate, median_seconds, p95_seconds, oracle_seconds,
    /// attribution_oracle_seconds (canary rows: the limit for telling the
    /// canary's fault from an outage its baseline shares), budget_burned_pct_median, threshold_check_seconds; and
    /// reverted_while_held_rate, reverted_before_budget_goal_rate: guard keeps
    /// judging a held release for as long as it is held, simulated until the
    /// release would have burned 2 % of the budget, at least a day, at most
    /// the SLO's 30-day period).
    #[arg(long)]
    pub json: bool,
    /// The judge policy's `alpha`, the chance of reverting a release no
    /// worse than its baseline (default 0.01); the evidence cap follows it
    /// as in guard.yaml. `oracle` is taken at it, and the false-revert goal
    /// stays 1 %.
    #[arg(long, value_name = "P")]
    pub alpha: Option<f64>,
    /// Blame a canary for its burn only at this level (the judge policy's
    /// `blame_alpha`; default 0.00001). Larger gives faster canary reverts
    /// and more reverts in `shared-outage`. The attribution oracle (`attrib`)
    /// is taken at this level, as the limit for a test that blames shared
    /// outages that often; `oracle` does not depend on it.
    #[arg(long, value_name = "P")]
    pub blame_alpha: Option<f64>,
    /// Scenarios simulated at once (default: the machine's cores). Every
    /// scenario has its own seeded random stream, so the figures do not
    /// depend on it; rows are printed in grid order.
    #[arg(long, short = 'j', value_name = "N", value_parser = clap::value_parser!(u64).range(1..))]
    pub jobs: Option<u64>,
    /// Run only scenarios with this name (release, canary, shared-outage,
    /// bursty); repeatable.
    #[arg(long = "scenario", value_name = "NAME")]
    pub scenarios: Vec<String>,
}

/// Runs `guard bench ...`; the `i32` is the exit code.
pub fn run(args: Args) -> anyhow::Result<i32> {
    match args.command {
        BenchCommand::Detection(args) => detection(args),
    }
}

const KNOWN: [&str; 4] = ["release", "canary", "shared-outage", "bursty"];

fn detection(args: DetectionArgs) -> anyhow::Result<i32> {
    for name in &args.scenarios {
        if !KNOWN.contains(&name.as_str()) {
            anyhow::bail!(
                "--scenario {name:?} is not a scenario of the detection benchmark; choose from {}",
                KNOWN.join(", ")
            );
        }
    }
    let defaults = judge::Policy::default();
    let alpha = args.alpha.unwrap_or(defaults.alpha);
    let policy = judge::Policy {
        alpha,
        blame_alpha: args.blame_alpha.or(defaults.blame_alpha),
        ..defaults
    };
    // The judge names the reason; say it, under the flag, before any work.
    if let Some(problem) = judge::policy_problems(&policy).into_iter().next() {
        let flag = match &problem {
            judge::JudgeError::Policy { field, .. } => format!("--{}", field.replace('_', "-")),
            _ => "the policy".into(),
        };
        anyhow::bail!("{flag}: {problem}");
    }
    let grid: Vec<_> = judge::sim::grid()
        .into_iter()
        .filter(|s| args.scenarios.is_empty() || args.scenarios.contains(&s.name))
        .collect();
    let stdout = std::io::stdout();
    let mut out = stdout.lock();
    // The grid under the policy (its rows count for the goals), then the
    // comparison the issue asks for: one SPRT tuned to 14.4x only, against
    // 6x releases (not part of the goals).
    let in_grid = grid.len();
    let mut runs: Vec<(judge::sim::Scenario, judge::Policy, bool)> = grid
        .into_iter()
        .map(|s| (s, policy.clone(), true))
        .collect();
    if args.scenarios.is_empty() || args.scenarios.iter().any(|s| s == "release") {
        let single = judge::sim::single_sprt_policy(14.4);
        runs.extend(
            judge::sim::single_sprt_grid()
                .into_iter()
                .map(|s| (s, single.clone(), false)),
        );
    }
    if !args.json {
        let comparison = runs.len() - in_grid;
        eprintln!(
            "guard bench detection: {in_grid} scenarios{} x {} trials, seed {}",
            if comparison > 0 {
                format!(" (+ {comparison} rows of one SPRT tuned to 14.4x, for comparison)")
            } else {
                String::new()
            },
            args.trials,
            args.seed
        );
        writeln!(out, "{}", header())?;
    }
    let jobs = args.jobs.map_or_else(
        || std::thread::available_parallelism().map_or(1, |n| n.get()),
        |j| usize::try_from(j).unwrap_or(usize::MAX),
    );
    let mut rows = Vec::with_capacity(runs.len());
    in_grid_order(
        &runs,
        jobs,
        |(scenario, policy, _)| {
            judge::sim::run(scenario, policy, args.trials, args.seed)
                .with_context(|| format!("simulating {}", scenario.label()))
        },
        |i, row| {
            let row = row?;
            if args.json {
                writeln!(out, "{}", serde_json::to_string(&row)?)?;
            } else {
                writeln!(out, "{}", table_row(&row))?;
            }
            out.flush()?;
            if runs[i].2 {
                rows.push(row);
            }
            Ok(())
        },
    )?;
    let checks = judge::sim::check_goals(&rows);
    let missed: Vec<_> = checks.iter().filter(|c| !c.met).collect();
    if !args.json {
        writeln!(
            out,
            "\ngoals: {} of {} checks met",
            checks.len() - missed.len(),
            checks.len()
        )?;
        for c in &missed {
            writeln!(out, "  MISSED {}: {} ({})", c.goal, c.scenario, c.detail)?;
        }
        if args.trials < 1000 {
            writeln!(
                out,
                "note: with {} trials a rate moves in steps of {:.1}%; the goals' 1% bounds need 1000 trials or more to mean much",
                args.trials,
                100.0 / args.trials.max(1) as f64
            )?;
        }
        writeln!(
            out,
            "times in whole seconds (guard judges once a second); oracle = Wald's expected time for an SPRT that knows the true multiple, at the release's own traffic; attrib = the same for telling a canary's fault from an outage its baseline shares (conditional binomial on the errors; a canary's time goal uses the larger of the two); held>rev = held at the deadline and reverted later (guard keeps judging a held release; followed until it would have burned 2% of the budget, 1 to 30 days); flagger = success rate >= 99% per 1 m interval, rollback after 5 failed intervals (- = does not fire)"
        )?;
    }
    Ok(0)
}

/// Runs `work` on every item with `jobs` threads and hands each result to
/// `emit` in the items' order, as soon as it and all before it are done. An
/// error from `emit` stops the work not yet started and is returned.
fn in_grid_order<T: Sync, R: Send>(
    items: &[T],
    jobs: usize,
    work: impl Fn(&T) -> R + Sync,
    mut emit: impl FnMut(usize, R) -> anyhow::Result<()>,
) -> anyhow::Result<()> {
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
    let next = AtomicUsize::new(0);
    let stop = AtomicBool::new(false);
    std::thread::scope(|scope| {
        let (tx, rx) = std::sync::mpsc::channel();
        for _ in 0..jobs.clamp(1, items.len().max(1)) {
            let tx = tx.clone();
            let (next, stop, work) = (&next, &stop, &work);
            scope.spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    let Some(item) = items.get(i) else { break };
                    if tx.send((i, work(item))).is_err() {
                        break;
                    }
                }
            });
        }
        drop(tx);
        let mut done = std::collections::BTreeMap::new();
        let mut printed = 0;
        for (i, result) in rx {
            done.insert(i, result);
            while let Some(result) = done.remove(&printed) {
                if let Err(e) = emit(printed, result) {
                    stop.store(true, Ordering::Relaxed);
                    return Err(e);
                }
                printed += 1;
            }
        }
        Ok(())
    })
}

fn header() -> String {
    format!(
        "{:<24} {:>6} {:>6} {:>6} {:>8} {:>8} {:>8} {:>11} {:>9} {:>9} {:>9} {:>9} {:>10} {:>8}",
        "scenario",
        "x",
        "rps",
        "share",
        "revert%",
        "promote%",
        "hold%",
        "held>rev%",
        "median_s",
        "p95_s",
        "oracle_s",
        "attrib_s",
        "budget%",
        "flagger_s"
    )
}

fn table_row(r: &judge::sim::ScenarioResult) -> String {
    format!(
        "{:<24} {:>6} {:>6} {:>6} {:>8.2} {:>8.2} {:>8.2} {:>11.2} {:>9.1} {:>9.1} {:>9.1} {:>9} {:>10.5} {:>8}",
        r.scenario,
        r.multiple,
        r.rps,
        r.canary_share.map_or("-".to_string(), |w| format!("{w}")),
        r.revert_rate * 100.0,
        r.promote_rate * 100.0,
        r.hold_rate * 100.0,
        r.reverted_while_held_rate * 100.0,
        r.median_seconds,
        r.p95_seconds,
        r.oracle_seconds,
        r.attribution_oracle_seconds
            .map_or("-".to_string(), |s| format!("{s:.1}")),
        r.budget_burned_pct_median,
        r.threshold_check_seconds
            .map_or("-".to_string(), |s| format!("{s:.0}"))
    )
}
