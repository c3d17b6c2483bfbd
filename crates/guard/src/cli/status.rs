//! `guard status`, `guard history`, `guard rollback` and the rollout commands
//! `guard promote|abort|pause|resume`: thin calls to a running guard's API.

use serde_json::{Value, json};

use super::client::{ApiArgs, Client};
use crate::api::{RolloutDetail, RolloutView, TargetStatus};
use crate::store::RolloutKind;

#[derive(Debug, clap::Args)]
pub struct StatusArgs {
    /// Print JSON instead of a table.
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub api: ApiArgs,
}

/// What runs where, and the rollout in progress (with the judge's numbers).
pub async fn status(args: StatusArgs) -> anyhow::Result<i32> {
    let client = Client::new(&args.api)?;
    let targets: Vec<TargetStatus> = client.get("/api/v1/status", "reading status").await?;
    if args.json {
        outln!("{}", serde_json::to_string_pretty(&targets)?);
        return Ok(0);
    }
    for t in &targets {
        outln!(
            "{}/{}: build {}{}",
            t.service,
            t.environment,
            t.release.as_deref().unwrap_or("-"),
            t.platform
                .get("router")
                .and_then(Value::as_str)
                .map(|r| format!("  (router {r})"))
                .unwrap_or_default()
        );
        if let Some(r) = &t.rollout {
            let rec = &r.record;
            outln!(
                "  rollout {} build {}: {}{}",
                rec.id,
                rec.builds_shown().0,
                rec.phase.name(),
                rec.reason
                    .as_deref()
                    .map(|x| format!(" ({x})"))
                    .unwrap_or_default()
            );
            if let Some(live) = &r.live {
                let detail = RolloutDetail {
                    rollout: clone_view(r),
                    steps: vec![],
                    deliveries: vec![],
                };
                outln!("  {}", super::deploy::progress_line(&detail));
                if let Some(note) = &live.note {
                    outln!("  note: {note}");
                }
            }
        }
    }
    Ok(0)
}

fn clone_view(v: &RolloutView) -> RolloutView {
    RolloutView {
        record: v.record.clone(),
        state: v.state.clone(),
        seconds_to_verdict: v.seconds_to_verdict,
        live: v.live.clone(),
    }
}

#[derive(Debug, clap::Args)]
pub struct HistoryArgs {
    /// Only this service (needs --env).
    pub service: Option<String>,
    /// The service's environment, e.g. production (with SERVICE).
    #[arg(long = "env", short = 'e', requires = "service")]
    pub environment: Option<String>,
    /// One rollout with every step and notification delivery.
    #[arg(long, conflicts_with = "service")]
    pub id: Option<i64>,
    /// How many rollouts.
    #[arg(long, default_value_t = 20)]
    pub limit: usize,
    /// Print JSON instead of a table.
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub api: ApiArgs,
}

/// Past rollouts, newest first; or one rollout's steps.
pub async fn history(args: HistoryArgs) -> anyhow::Result<i32> {
    let client = Client::new(&args.api)?;
    if let Some(id) = args.id {
        let d: RolloutDetail = client
            .get(&format!("/api/v1/rollouts/{id}"), "reading the rollout")
            .await?;
        if args.json {
            outln!("{}", serde_json::to_string_pretty(&d)?);
            return Ok(0);
        }
        let r = &d.rollout.record;
        let (to, from) = r.builds_shown();
        outln!(
            "rollout {} {}/{} {} {to} (from {from}) {}: {}",
            r.id,
            r.target.service,
            r.target.environment,
            if r.kind == RolloutKind::Rollback {
                "rollback to build"
            } else {
                "build"
            },
            r.strategy.as_str(),
            r.phase.name()
        );
        for s in &d.steps {
            let when = step_time(s.at_ms);
            outln!(
                "  {:>3} {when} {:<10} {}{}",
                s.seq,
                s.to,
                s.cause,
                s.detail
                    .as_deref()
                    .map(|x| format!(": {x}"))
                    .unwrap_or_default()
            );
        }
        for n in &d.deliveries {
            outln!(
                "  notify {} {}: {}",
                n.notifier,
                n.event,
                if n.ok { "delivered" } else { "not delivered" }
            );
        }
        return Ok(0);
    }
    let query = match (&args.service, &args.environment) {
        (Some(s), Some(e)) => format!("?service={s}&environment={e}&limit={}", args.limit),
        (Some(_), None) => anyhow::bail!("give --env with a service"),
        _ => format!("?limit={}", args.limit),
    };
    let list: Vec<RolloutView> = client
        .get(&format!("/api/v1/rollouts{query}"), "listing rollouts")
        .await?;
    if args.json {
        outln!("{}", serde_json::to_string_pretty(&list)?);
        return Ok(0);
    }
    outln!(
        "{:>5}  {:<24} {:>8} {:>8}  {:<11} {:>10}  reason",
        "id",
        "target",
        "build",
        "from",
        "state",
        "decided in"
    );
    for v in &list {
        let r = &v.record;
        let (to, from) = r.builds_shown();
        outln!(
            "{:>5}  {:<24} {:>8} {:>8}  {:<11} {:>10}  {}",
            r.id,
            format!("{}/{}", r.target.service, r.target.environment),
            to,
            from,
            r.phase.name(),
            v.seconds_to_verdict
                .map(|s| format!("{s:.1} s"))
                .unwrap_or_else(|| "-".into()),
            r.reason.as_deref().unwrap_or("")
        );
    }
    Ok(0)
}

/// A step's time, always with three decimals so the columns line up.
fn step_time(at_ms: i64) -> String {
    jiff::Timestamp::from_millisecond(at_ms)
        .map(|t| t.strftime("%Y-%m-%dT%H:%M:%S%.3fZ").to_string())
        .unwrap_or_default()
}

/// The build a rollout puts in place and the one it replaces. A rollback is
/// recorded as a revert (its "stable" is the build it goes back to), so
/// people read it the other way round.
#[derive(Debug, clap::Args)]
pub struct RollbackArgs {
    /// Service name as in guard.yaml.
    pub service: String,
    /// Environment to roll back, e.g. production.
    #[arg(long = "env", short = 'e')]
    pub environment: String,
    /// Build to go back to (default: the build the last promoted release
    /// replaced; after a rollback to it, give --to to go elsewhere).
    #[arg(long)]
    pub to: Option<String>,
    #[command(flatten)]
    pub api: ApiArgs,
}

/// Puts an older build back (aborting a rollout in progress).
pub async fn rollback(args: RollbackArgs) -> anyhow::Result<i32> {
    let client = Client::new(&args.api)?;
    let v: Value = client
        .post(
            "/api/v1/rollbacks",
            &json!({"service": args.service, "environment": args.environment, "to": args.to, "requested_by": "cli"}),
            "rolling back",
        )
        .await?;
    outln!(
        "rollback: rollout {}",
        v.get("id").and_then(Value::as_i64).unwrap_or_default()
    );
    Ok(0)
}

#[derive(Debug, clap::Args)]
pub struct CommandArgs {
    /// Service whose rollout in progress to command (or give --id).
    #[arg(required_unless_present = "id")]
    pub service: Option<String>,
    /// The service's environment, e.g. production (or give --id).
    #[arg(long = "env", short = 'e', required_unless_present = "id")]
    pub environment: Option<String>,
    /// Rollout id (instead of SERVICE --env ENV).
    #[arg(long, conflicts_with_all = ["service", "environment"])]
    pub id: Option<i64>,
    #[command(flatten)]
    pub api: ApiArgs,
}

/// `promote`, `abort`, `pause`, `resume`.
pub async fn command(name: &str, args: CommandArgs) -> anyhow::Result<i32> {
    let client = Client::new(&args.api)?;
    let id = match (args.id, &args.service, &args.environment) {
        (Some(id), _, _) => id,
        (None, Some(s), Some(e)) => client
            .active_rollout(s, e)
            .await?
            .ok_or_else(|| anyhow::anyhow!("{s} in {e} has no rollout in progress"))?,
        _ => anyhow::bail!("give SERVICE --env ENV or --id N"),
    };
    let v: Value = client
        .post(&format!("/api/v1/rollouts/{id}/{name}"), &json!({}), name)
        .await?;
    outln!(
        "rollout {id}: {}",
        v.get("state").and_then(Value::as_str).unwrap_or("?")
    );
    Ok(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn step_times_keep_their_width() {
        assert_eq!(step_time(1_764_201_600_880), "2025-11-27T00:00:00.880Z");
        assert_eq!(step_time(1_764_201_600_000), "2025-11-27T00:00:00.000Z");
    }
}
