//! Runs the detection grid straight from the judge crate (no guard binary):
//! `cargo run --release -p judge --example detection -- [trials] [seed]`.
//! Prints one JSON line per scenario, then the goals missed. The supported
//! entry point is `guard bench detection`; this is for working on the judge.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let trials: u64 = args.next().map_or(Ok(200), |a| a.parse())?;
    let seed: u64 = args.next().map_or(Ok(1), |a| a.parse())?;
    let policy = judge::Policy::default();
    let mut rows = Vec::new();
    for scenario in judge::sim::grid() {
        let row = judge::sim::run(&scenario, &policy, trials, seed)?;
        println!("{}", serde_json::to_string(&row)?);
        rows.push(row);
    }
    let single = judge::sim::single_sprt_policy(14.4);
    for scenario in judge::sim::single_sprt_grid() {
        let row = judge::sim::run(&scenario, &single, trials, seed)?;
        println!("{}", serde_json::to_string(&row)?);
    }
    for c in judge::sim::check_goals(&rows).iter().filter(|c| !c.met) {
        println!("MISSED {}: {} ({})", c.goal, c.scenario, c.detail);
    }
    Ok(())
}
