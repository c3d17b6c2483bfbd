//! The `guard` command line: one module per subcommand, each with its own
//! `Args` and `run`. This file only routes.
use clap::{Parser, Subcommand};

pub mod bench;
pub mod slo;

#[derive(Debug, Parser)]
#[command(
    name = "guard",
    version,
    about = "Deploys releases, judges them against their SLOs, promotes or reverts them."
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Validate Sloth SLO specs and generate Prometheus rules from them.
    Slo(slo::Args),
    /// Benchmarks and simulations.
    Bench(bench::Args),
}

/// Runs a parsed command line; the `i32` is the process exit code.
pub async fn run(cli: Cli) -> anyhow::Result<i32> {
    match cli.command {
        Command::Slo(args) => slo::run(args),
        Command::Bench(args) => bench::run(args),
    }
}
