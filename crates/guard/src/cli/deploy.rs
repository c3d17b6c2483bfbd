//! `guard deploy SERVICE --env ENV --build N`: asks a running guard to roll a
//! build out; with `--wait`, follows it to its verdict.

use std::io::{IsTerminal, Write};
use std::time::Duration;

use serde_json::{Value, json};

use super::client::{ApiArgs, Client, Conflict, NotFound};
use crate::api::RolloutDetail;
use crate::engine::phase::{HoldCause, Phase};
use crate::store::RolloutKind;

#[derive(Debug, clap::Args)]
#[command(
    after_help = "Exit codes with --wait: 0 promoted, 2 reverted, 3 held for a person to decide (a source outage is waited out) or aborted by one, 1 error.\n\
A held rollout waits for a person to promote or abort it; guard keeps judging it meanwhile and\n\
reverts it on its own if the evidence against the release becomes conclusive.\n\
Example (CI): guard deploy ultra-boost --env production --build 86 --wait"
)]
pub struct Args {
    /// Service name as in guard.yaml.
    pub service: String,
    /// Environment, e.g. production.
    #[arg(long = "env", short = 'e')]
    pub environment: String,
    /// Build number to roll out.
    #[arg(long, short)]
    pub build: String,
    /// rolling (replace replicas one by one) or canary (weights in steps); default: the service's.
    #[arg(long, value_parser = ["rolling", "canary"])]
    pub strategy: Option<String>,
    /// Git commit of the build (shown in notifications).
    #[arg(long)]
    pub commit: Option<String>,
    /// Follow the rollout until its verdict; the exit code reflects it. A
    /// promoted release is followed through its post-promote watch
    /// (guard.yaml `watch`, default 60 s; a revert then still exits 2, and
    /// `guard promote` ends the watch early). A rollout of the same build
    /// already in progress is followed instead.
    #[arg(long, short)]
    pub wait: bool,
    /// With --wait, return (exit 0) as soon as the release is promoted,
    /// without following the post-promote watch; guard still watches it, and
    /// a revert during the watch reaches the team through the notifiers.
    #[arg(long, requires = "wait")]
    pub no_watch: bool,
    #[command(flatten)]
    pub api: ApiArgs,
}

pub async fn run(args: Args) -> anyhow::Result<i32> {
    let client = Client::new(&args.api)?;
    let body = json!({
        "service": args.service,
        "environment": args.environment,
        "build": args.build,
        "strategy": args.strategy,
        "commit": args.commit,
        "requested_by": "cli",
    });
    let id = match client
        .post::<Value>("/api/v1/deployments", &body, "deploying")
        .await
    {
        Ok(created) => {
            let id = created
                .get("id")
                .and_then(Value::as_i64)
                .ok_or_else(|| anyhow::anyhow!("guard answered without a rollout id"))?;
            outln!(
                "rollout {id}: {} build {} to {} ({})",
                args.service,
                args.build,
                args.environment,
                client.page_url(id)
            );
            id
        }
        // CI lost its connection and runs the same deploy again: follow the
        // rollout of this build already in progress instead of failing.
        Err(e) if args.wait && e.is::<Conflict>() => {
            match same_build_in_progress(&client, &args).await? {
                Some(id) => {
                    outln!(
                        "rollout {id}: {} build {} to {} is already in progress; following it ({})",
                        args.service,
                        args.build,
                        args.environment,
                        client.page_url(id)
                    );
                    id
                }
                None => return Err(e),
            }
        }
        Err(e) => return Err(e),
    };
    if !args.wait {
        outln!(
            "follow it: run this again with --wait, or open {}",
            client.page_url(id)
        );
        return Ok(0);
    }
    follow(&client, id, &args).await
}

/// The rollout in progress for the target, when it rolls out this very
/// build (another build's rollout is a real conflict).
async fn same_build_in_progress(client: &Client, args: &Args) -> anyhow::Result<Option<i64>> {
    let Some(id) = client
        .active_rollout(&args.service, &args.environment)
        .await?
    else {
        return Ok(None);
    };
    let d: RolloutDetail = client
        .get(
            &format!("/api/v1/rollouts/{id}"),
            "reading the rollout in progress",
        )
        .await?;
    let r = &d.rollout.record;
    Ok((r.kind == RolloutKind::Deploy && r.candidate.number == args.build).then_some(id))
}

/// The rollout `--wait` follows, or why it is out of sight: the guard
/// answering has no rollout `id` (`found` is `None`), or its rollout `id` is
/// another one (rollout ids are per replica's history).
fn deployed_rollout(
    id: i64,
    args: &Args,
    found: Option<RolloutDetail>,
) -> Result<RolloutDetail, String> {
    let seen = match found {
        None => "has no such rollout".to_string(),
        Some(d) => {
            let r = &d.rollout.record;
            if r.target.service == args.service
                && r.target.environment == args.environment
                && r.candidate.number == args.build
            {
                return Ok(d);
            }
            format!(
                "has a rollout {id} of its own ({} build {} to {})",
                r.target.service, r.candidate.number, r.target.environment
            )
        }
    };
    Err(format!(
        "rollout {id} ({} build {} to {}) is not in the history of the guard answering now, which {seen}: \
         in a cluster the leader changed and the new leader's controller took the rollout over. \
         Its phase and verdict are on the service's Deployment, in the annotation {}",
        args.service,
        args.build,
        args.environment,
        crate::platform::kubernetes::rollout::ANNOTATION_ROLLOUT
    ))
}

/// Exit code for a finished rollout.
pub fn exit_code(phase: &Phase) -> i32 {
    match phase {
        Phase::Promoted => 0,
        Phase::Reverted => 2,
        _ => 3,
    }
}

fn pct(x: f64) -> String {
    format!("{:.0} %", x * 100.0)
}

/// One line: phase, share, the deciding SLO's counts, statistic vs bounds,
/// budget; the SLOs still without events; the time left of a post-promote
/// watch.
pub fn progress_line(d: &RolloutDetail) -> String {
    let r = &d.rollout.record;
    let mut s = format!("{:<10} share {:>5}", r.phase.name(), pct(r.phase.share()));
    if let Phase::Watching { until_ms } = r.phase {
        let left = (until_ms - jiff::Timestamp::now().as_millisecond()).max(0) / 1000;
        s.push_str(&format!(
            "  promoted; the watch ends in {left} s (`guard promote` ends it now)"
        ));
    }
    if let Some(live) = &d.rollout.live {
        if let Some(e) = &live.evidence {
            s.push_str(&format!(
                "  {} {}/{} bad",
                e.slo.as_deref().unwrap_or(""),
                e.bad_events,
                e.events
            ));
            match (e.statistic, e.lower_bound, e.upper_bound) {
                // Past the pass bound while still verifying: the policy's
                // minimum time or events is not reached yet.
                (Some(st), Some(lo), Some(_))
                    if st <= lo && matches!(r.phase, Phase::Verifying { .. }) =>
                {
                    s.push_str(&format!(
                        "  Λ {st:>6.2} ≤ {lo:.2}, passes; waits for the policy's minimum time or events"
                    ));
                }
                // Past the revert bound while still verifying: a canary's
                // burn is blamed on it only once its baseline is seen not to
                // share it.
                (Some(st), Some(_), Some(hi))
                    if st >= hi && matches!(r.phase, Phase::Verifying { .. }) =>
                {
                    s.push_str(&format!(
                        "  Λ {st:>6.2} ≥ {hi:.2}, burning; checking the baseline does not share it"
                    ));
                }
                (Some(st), Some(lo), Some(hi)) => {
                    s.push_str(&format!("  Λ {st:>6.2} in [{lo:.2}, {hi:.2}]"));
                }
                _ => {}
            }
            if let Some(b) = e.budget_burned_pct {
                s.push_str(&format!("  budget {b:.3} %"));
            }
        }
        let idle: Vec<&str> = live
            .slos
            .iter()
            .filter(|(_, c)| c.candidate.total == 0)
            .map(|(name, _)| name.as_str())
            .collect();
        if !idle.is_empty() {
            s.push_str(&format!("  no events yet: {}", idle.join(", ")));
        }
        if !live.source_ok {
            s.push_str("  SOURCE DOWN");
        }
    }
    s
}

async fn follow(client: &Client, id: i64, args: &Args) -> anyhow::Result<i32> {
    let tty = std::io::stdout().is_terminal();
    let mut printed_steps = 0usize;
    let mut last_plain = std::time::Instant::now();
    loop {
        let found = match client
            .get::<RolloutDetail>(&format!("/api/v1/rollouts/{id}"), "reading the rollout")
            .await
        {
            Ok(d) => Some(d),
            Err(e) if e.downcast_ref::<NotFound>().is_some() => None,
            Err(e) => return Err(e),
        };
        let d = match deployed_rollout(id, args, found) {
            Ok(d) => d,
            Err(why) => {
                if tty {
                    let _ = write!(std::io::stdout(), "\r\x1b[2K");
                }
                anyhow::bail!(why);
            }
        };
        let mut out = std::io::stdout().lock();
        if tty {
            // Clear the live line before printing new steps above it.
            let _ = write!(out, "\r\x1b[2K");
        }
        for step in d.steps.iter().skip(printed_steps) {
            let when = jiff::Timestamp::from_millisecond(step.at_ms)
                .map(|t| t.strftime("%H:%M:%S").to_string())
                .unwrap_or_default();
            let _ = writeln!(
                out,
                "{when}  {:<10} {}{}",
                step.to,
                step.cause,
                step.detail
                    .as_deref()
                    .map(|d| format!(": {d}"))
                    .unwrap_or_default()
            );
        }
        printed_steps = d.steps.len();
        let r = &d.rollout.record;
        if args.no_watch
            && let Phase::Watching { until_ms } = r.phase
        {
            let until = jiff::Timestamp::from_millisecond(until_ms)
                .map(|t| t.strftime("%H:%M:%S UTC").to_string())
                .unwrap_or_default();
            let _ = writeln!(
                out,
                "verdict: promote ({}); guard watches it until {until} and reverts it if it burns (--no-watch: not followed)",
                r.reason.as_deref().unwrap_or("")
            );
            return Ok(0);
        }
        // The judge could not decide: a person must. CI learns it now (exit
        // 3) instead of waiting on a person; guard keeps judging the held
        // release and reverts it if the evidence turns against it.
        if let Phase::Held {
            cause: HoldCause::Judge,
            reason,
            ..
        } = &r.phase
        {
            outln!(
                "verdict: hold ({reason}); a person decides: `guard promote` or `guard abort` (guard still reverts it if it starts to burn)"
            );
            return Ok(3);
        }
        if r.phase.is_terminal() {
            let e = r.evidence.clone().unwrap_or_default();
            let _ = writeln!(
                out,
                "verdict: {} ({}){}{}",
                r.verdict.as_deref().unwrap_or("none"),
                r.reason.as_deref().unwrap_or(""),
                d.rollout
                    .seconds_to_verdict
                    .map(|s| format!(", {s:.1} s after taking traffic"))
                    .unwrap_or_default(),
                e.budget_burned_pct
                    .map(|b| format!(", {b:.3} % of the error budget burned"))
                    .unwrap_or_default()
            );
            return Ok(exit_code(&r.phase));
        }
        if tty {
            // One screen row: a wrapped line would leave a copy behind at
            // every refresh (the clear above erases one row).
            let width = std::env::var("COLUMNS")
                .ok()
                .and_then(|c| c.parse::<usize>().ok())
                .unwrap_or(80);
            let line = progress_line(&d);
            let shown: String = if line.chars().count() >= width {
                let mut cut: String = line.chars().take(width.saturating_sub(2)).collect();
                cut.push('…');
                cut
            } else {
                line
            };
            let _ = write!(out, "{shown}");
            let _ = out.flush();
        } else if last_plain.elapsed() >= Duration::from_secs(5) {
            let _ = writeln!(out, "          {}", progress_line(&d));
            last_plain = std::time::Instant::now();
        }
        drop(out);
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::RolloutView;
    use crate::engine::LiveStatus;
    use crate::store::RolloutRecord;

    fn verifying_with(statistic: f64) -> RolloutDetail {
        let record = RolloutRecord::verifying_for_tests(1.0, 0);
        let live = LiveStatus {
            evidence: Some(notify::Evidence {
                slo: Some("availability".into()),
                events: 300,
                bad_events: 0,
                statistic: Some(statistic),
                lower_bound: Some(-4.6),
                upper_bound: Some(4.6),
                ..Default::default()
            }),
            source_ok: true,
            ..Default::default()
        };
        RolloutDetail {
            rollout: RolloutView {
                state: "verifying".into(),
                seconds_to_verdict: None,
                live: Some(live),
                record,
            },
            steps: vec![],
            deliveries: vec![],
        }
    }

    #[test]
    fn the_progress_line_says_a_passed_test_waits_for_the_policy_minimums() {
        let line = progress_line(&verifying_with(-5.2));
        assert!(
            line.contains(
                "Λ  -5.20 ≤ -4.60, passes; waits for the policy's minimum time or events"
            ),
            "{line}"
        );
        let line = progress_line(&verifying_with(18.59));
        assert!(
            line.contains("Λ  18.59 ≥ 4.60, burning; checking the baseline does not share it"),
            "{line}"
        );
        let line = progress_line(&verifying_with(1.5));
        assert!(line.contains("Λ   1.50 in [-4.60, 4.60]"), "{line}");
        assert!(line.contains("availability 0/300 bad"), "{line}");
    }
}
