//! The `guard` command line: one module per subcommand, each with its own
//! `Args` and `run`. This file only routes.
use clap::{Parser, Subcommand};

/// `println!` that returns the write error (`?`) instead of panicking: a
/// reader that stops reading (`guard status | head -1`) ends the command
/// quietly (see `main`), not with a panic.
macro_rules! outln {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        writeln!(std::io::stdout().lock(), $($arg)*)?;
    }};
}

pub mod bench;
pub mod client;
pub mod controller;
pub mod demo;
pub mod deploy;
pub mod serve;
pub mod slo;
pub mod status;

#[derive(Debug, Parser)]
#[command(
    name = "guard",
    version,
    about = "Deploys releases, judges them against their SLOs, promotes or reverts them.",
    long_about = "guard rolls a build out (rolling or canary), reads its SLO signals every second, \
and decides with sequential statistics whether it burns error budget beyond its baseline: \
it promotes a good release and reverts a bad one on its own.\n\n\
Start here: `guard demo` runs the whole flow on this machine in under two minutes."
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run guard: API, routers, engine (resumes unfinished rollouts).
    Serve(serve::Args),
    /// Roll a build out through a running guard (--wait to follow it to its verdict).
    Deploy(deploy::Args),
    /// What runs where and the rollout in progress.
    Status(status::StatusArgs),
    /// Past rollouts, or one rollout's steps (--id).
    History(status::HistoryArgs),
    /// Put an older build back (aborts a rollout in progress).
    Rollback(status::RollbackArgs),
    /// Skip the rest of verification and promote the rollout in progress (or end its post-promote watch early).
    Promote(status::CommandArgs),
    /// Stop the rollout in progress and put the previous build back.
    Abort(status::CommandArgs),
    /// Freeze the rollout in progress where it is.
    Pause(status::CommandArgs),
    /// Go on verifying after a pause or a hold.
    Resume(status::CommandArgs),
    /// The whole flow on this machine: good, erroring and slow builds under load.
    Demo(demo::Args),
    /// Run as a Kubernetes controller: guard labelled Deployments, leader election, review apps.
    Controller(Box<controller::Args>),
    /// Validate Sloth SLO specs and generate Prometheus rules from them.
    Slo(slo::Args),
    /// Benchmarks and simulations.
    Bench(bench::Args),
}

/// Runs a parsed command line; the `i32` is the process exit code.
pub async fn run(cli: Cli) -> anyhow::Result<i32> {
    match cli.command {
        Command::Serve(args) => serve::run(args).await,
        Command::Deploy(args) => deploy::run(args).await,
        Command::Status(args) => status::status(args).await,
        Command::History(args) => status::history(args).await,
        Command::Rollback(args) => status::rollback(args).await,
        Command::Promote(args) => status::command("promote", args).await,
        Command::Abort(args) => status::command("abort", args).await,
        Command::Pause(args) => status::command("pause", args).await,
        Command::Resume(args) => status::command("resume", args).await,
        Command::Demo(args) => demo::run(args).await,
        Command::Controller(args) => controller::run(*args).await,
        Command::Slo(args) => slo::run(args),
        Command::Bench(args) => bench::run(args),
    }
}

/// An error and its causes on one line, as `{:#}` prints them, without a
/// cause whose words the line already holds (libraries often repeat their
/// source in their own message: "unable to open database file: …: unable
/// to open database file").
pub fn explain(err: &anyhow::Error) -> String {
    let mut line = String::new();
    for cause in err.chain() {
        let text = cause.to_string();
        if line.contains(&text) {
            continue;
        }
        if !line.is_empty() {
            line.push_str(": ");
        }
        line.push_str(&text);
    }
    line
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cause_already_in_the_message_is_said_once() {
        let io = std::io::Error::other("disk full");
        let wrapped = anyhow::Error::new(io).context("writing x: disk full");
        let err = wrapped.context("saving the rollout");
        assert_eq!(explain(&err), "saving the rollout: writing x: disk full");
        let plain = anyhow::anyhow!("no such file").context("reading guard.yaml");
        assert_eq!(explain(&plain), "reading guard.yaml: no such file");
    }
}
