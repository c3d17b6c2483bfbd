//! `guard demo`: the whole flow on one machine in under two minutes, nothing
//! to set up. guard runs ultra-boost (2 replicas behind its router) under a
//! steady built-in load, then deploys a good build (promoted), a build that
//! answers 5 % errors (reverted) and one that adds 300 ms latency (reverted by
//! the latency SLO), printing a timeline; with `--json` the timeline goes to
//! stderr and stdout carries one JSON object.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context;
use serde::Serialize;

use super::serve::{Runtime, RuntimeOptions, init_logs};
use crate::api::Builds;
use crate::config::{self, DEMO_YAML};
use crate::engine::phase::{Command, HoldCause, Phase};
use crate::platform::{Strategy, Target};

#[derive(Debug, clap::Args)]
#[command(
    after_help = "Notifications go wherever GUARD_SLACK_WEBHOOK_URL, GUARD_TEAMS_WEBHOOK_URL, GUARD_WEBHOOK_URL, \
GUARD_GRAFANA_URL/TOKEN or GUARD_GITHUB_TOKEN/REPO point.\nExit code 0 when every verdict is the expected one, 2 otherwise; \
1 on an error (e.g. a build undecided in the time the demo gives it: 90 s with the embedded config, \
with --config the policy's max_verify_seconds per step plus the watch); 130 or 143 when interrupted (SIGINT, SIGTERM), after stopping the replicas and removing the demo's files."
)]
pub struct Args {
    /// The ultra-boost binary (default: next to guard, then PATH).
    #[arg(long, env = "GUARD_ULTRA_BOOST_BIN", value_name = "PATH")]
    pub ultra_boost_bin: Option<PathBuf>,
    /// Requests per second of the built-in load.
    #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(u32).range(10..=2000))]
    pub rps: u32,
    /// rolling or canary.
    #[arg(long, default_value = "rolling", value_parser = ["rolling", "canary"])]
    pub strategy: String,
    /// Run with this guard.yaml instead of the embedded demo config.
    #[arg(long, value_name = "PATH")]
    pub config: Option<PathBuf>,
    /// Print the summary as one JSON object on standard output (the timeline
    /// and the table then go to standard error).
    #[arg(long)]
    pub json: bool,
    /// Log what guard does (info level) to stderr.
    #[arg(long, short)]
    pub verbose: bool,
}

/// One release of the demo, as the JSON summary reports it.
#[derive(Debug, Serialize)]
pub struct ReleaseReport {
    pub build: String,
    pub kind: &'static str,
    pub verdict: String,
    pub seconds_to_verdict: Option<f64>,
    pub budget_burned_pct: Option<f64>,
    pub router_failed_requests: u64,
}

#[derive(Debug, Serialize)]
pub struct Report {
    pub releases: Vec<ReleaseReport>,
    pub total_requests: u64,
}

/// Steady load through the router: one request every `1/rps` s, each on its own task.
struct Load {
    sent: Arc<AtomicU64>,
    client_errors: Arc<AtomicU64>,
    stop: tokio_util::sync::CancellationToken,
    task: tokio::task::JoinHandle<()>,
}

impl Load {
    fn start(url: String, rps: u32) -> anyhow::Result<Self> {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let client = reqwest::Client::builder()
            .timeout(Duration::from_secs(5))
            .pool_max_idle_per_host(256)
            .build()
            .context("building the load client")?;
        let sent = Arc::new(AtomicU64::new(0));
        let client_errors = Arc::new(AtomicU64::new(0));
        let stop = tokio_util::sync::CancellationToken::new();
        let (s, e, st) = (sent.clone(), client_errors.clone(), stop.clone());
        let task = tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs_f64(1.0 / f64::from(rps)));
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
            let inflight = tokio_util::task::TaskTracker::new();
            loop {
                tokio::select! {
                    _ = st.cancelled() => break,
                    _ = tick.tick() => {
                        let (client, url, s, e) = (client.clone(), url.clone(), s.clone(), e.clone());
                        inflight.spawn(async move {
                            s.fetch_add(1, Ordering::Relaxed);
                            match client.get(&url).send().await {
                                Ok(r) => { let _ = r.bytes().await; }
                                Err(_) => { e.fetch_add(1, Ordering::Relaxed); }
                            }
                        });
                    }
                }
            }
            inflight.close();
            inflight.wait().await;
        });
        Ok(Self {
            sent,
            client_errors,
            stop,
            task,
        })
    }

    async fn stop(self) -> (u64, u64) {
        self.stop.cancel();
        let _ = tokio::time::timeout(Duration::from_secs(10), self.task).await;
        (
            self.sent.load(Ordering::Relaxed),
            self.client_errors.load(Ordering::Relaxed),
        )
    }
}

struct Timeline {
    start: Instant,
    quiet: bool,
    /// `--json`: stdout is the JSON object's alone.
    to_stderr: bool,
}

impl Timeline {
    fn say(&self, msg: impl AsRef<str>) {
        if !self.quiet {
            self.line(format!(
                "[{:>6.1}s] {}",
                self.start.elapsed().as_secs_f64(),
                msg.as_ref()
            ));
        }
    }

    /// A line for people: stdout, or stderr when stdout is for scripts.
    fn line(&self, text: impl AsRef<str>) {
        // A closed reader loses the timeline, not the demo's cleanup.
        use std::io::Write as _;
        let _ = if self.to_stderr {
            writeln!(std::io::stderr().lock(), "{}", text.as_ref())
        } else {
            writeln!(std::io::stdout().lock(), "{}", text.as_ref())
        };
    }
}

/// Resolves with the exit code of the first SIGINT or SIGTERM.
async fn interrupted() -> i32 {
    match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(mut term) => tokio::select! {
            _ = tokio::signal::ctrl_c() => 130,
            _ = term.recv() => 143,
        },
        Err(_) => {
            let _ = tokio::signal::ctrl_c().await;
            130
        }
    }
}

async fn wait_terminal(
    rt: &Runtime,
    id: i64,
    tl: &Timeline,
    deadline: Duration,
) -> anyhow::Result<crate::store::RolloutRecord> {
    let start = Instant::now();
    let mut shown = 0usize;
    loop {
        let store = rt.engine.store();
        let steps = store.steps(id)?;
        for s in steps.iter().skip(shown) {
            let share = s.phase.share();
            let extra = match &s.phase {
                Phase::Shifting { .. } | Phase::Verifying { .. } => {
                    format!(" (candidate share {:.0} %)", share * 100.0)
                }
                _ => String::new(),
            };
            tl.say(format!(
                "  rollout {id}: {}{extra}{}",
                s.to,
                s.detail
                    .as_deref()
                    .filter(|d| !d.is_empty())
                    .map(|d| format!(": {d}"))
                    .unwrap_or_default()
            ));
        }
        shown = steps.len();
        let r = store.rollout(id)?;
        if r.phase.is_terminal() {
            return Ok(r);
        }
        if let Phase::Held {
            cause: HoldCause::Judge,
            reason,
            ..
        } = &r.phase
        {
            // The judge asks a person; the demo has none: record the hold, put the old build back.
            tl.say(format!(
                "  rollout {id}: held ({reason}); the demo aborts it"
            ));
            let _ = rt.engine.command(id, Command::Abort).await;
            let mut r = wait_done(rt, id, deadline).await?;
            r.verdict = Some("hold".into());
            return Ok(r);
        }
        anyhow::ensure!(
            start.elapsed() < deadline,
            "rollout {id} did not finish within the demo's {} s per build (in {})",
            deadline.as_secs(),
            r.phase.name()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Time a build gets to be decided with the embedded demo config.
const DEMO_PER_BUILD: Duration = Duration::from_secs(90);

/// What a build may take with a config of the user's: each step up to the
/// policy's deadline, then the watch after the promote; never under the
/// embedded config's time.
fn time_per_build(
    policy: &judge::Policy,
    service: &config::ServiceConfig,
    strategy: Strategy,
) -> Duration {
    let steps = match strategy {
        Strategy::Canary => service.canary_steps.len().max(1),
        Strategy::Rolling => 1,
    };
    let verify = Duration::from_secs_f64(policy.max_verify_seconds.max(0.0));
    let steps = u32::try_from(steps).unwrap_or(u32::MAX);
    DEMO_PER_BUILD.max(verify.saturating_mul(steps) + service.watch + Duration::from_secs(30))
}

pub async fn run(args: Args) -> anyhow::Result<i32> {
    init_logs(if args.verbose { "info" } else { "warn" });
    let tmp = tempfile_dir()?;
    let mut config = match &args.config {
        Some(p) => config::load(p)?,
        None => config::parse(DEMO_YAML, "<embedded demo config>", &tmp)?,
    };
    if args.config.is_none() {
        config.store = tmp.join("guard-demo.db");
    }
    let strategy = if args.strategy == "canary" {
        Strategy::Canary
    } else {
        Strategy::Rolling
    };
    let service = config
        .services
        .first()
        .context("the config has no service")?;
    let env = service
        .environments
        .first()
        .context("the service has no environment")?;
    let target = Target {
        service: service.name.clone(),
        environment: env.name.clone(),
    };
    // The embedded policy decides each build within seconds. Another config's
    // may take up to its deadline per step, plus the watch after a promote.
    let per_build = match &args.config {
        None => DEMO_PER_BUILD,
        Some(_) => time_per_build(&config.policy, service, strategy),
    };
    let tl = Timeline {
        start: Instant::now(),
        quiet: false,
        to_stderr: args.json,
    };
    tl.say(format!(
        "guard demo: starting {} ({} replicas) on the local platform",
        target.service, service.replicas
    ));
    if per_build > DEMO_PER_BUILD {
        tl.say(format!(
            "  this config's policy may take up to {} s per build to decide (policy.max_verify_seconds per step, plus the watch)",
            per_build.as_secs()
        ));
    }
    // Interrupted while the replicas start: dropping the start stops them
    // (kill on drop); the demo's files go too.
    let started = tokio::select! {
        r = Runtime::start(
            config,
            RuntimeOptions {
                ultra_boost_bin: args.ultra_boost_bin.clone(),
                listen: None,
                memory_log: None,
            },
        ) => r,
        code = interrupted() => {
            tl.say("interrupted while starting: removing the demo's files");
            let _ = std::fs::remove_dir_all(&tmp);
            return Ok(code);
        }
    };
    let rt = match started {
        Ok(rt) => rt,
        Err(e) => {
            let _ = std::fs::remove_dir_all(&tmp);
            return Err(e);
        }
    };
    let (result, signal) = tokio::select! {
        r = demo(&rt, &target, strategy, args.rps, per_build, &tl) => (Some(r), None),
        code = interrupted() => (None, Some(code)),
    };
    if signal.is_some() {
        tl.say("interrupted: stopping the replicas and removing the demo's files");
    }
    rt.stop().await;
    let _ = std::fs::remove_dir_all(&tmp);
    let (Some(result), None) = (result, signal) else {
        return Ok(signal.unwrap_or(130));
    };
    let report = result?;
    let expected = report.releases.iter().all(|r| match r.kind {
        "good" => r.verdict == "promote",
        _ => r.verdict == "revert",
    });
    tl.line("");
    tl.line(format!(
        "{:<7} {:<8} {:<8} {:>10} {:>16} {:>15}",
        "build", "kind", "verdict", "seconds", "budget burned %", "router failures"
    ));
    for r in &report.releases {
        tl.line(format!(
            "{:<7} {:<8} {:<8} {:>10} {:>16} {:>15}",
            r.build,
            r.kind,
            r.verdict,
            r.seconds_to_verdict
                .map(|s| format!("{s:.1}"))
                .unwrap_or_else(|| "-".into()),
            r.budget_burned_pct
                .map(|b| format!("{b:.4}"))
                .unwrap_or_else(|| "-".into()),
            r.router_failed_requests
        ));
    }
    tl.line(format!(
        "{} requests sent to the router's address (relayed, or served on connections it handed over)",
        report.total_requests
    ));
    if args.json {
        println!("{}", serde_json::to_string(&report)?);
    }
    Ok(if expected { 0 } else { 2 })
}

async fn wait_done(
    rt: &Runtime,
    id: i64,
    deadline: Duration,
) -> anyhow::Result<crate::store::RolloutRecord> {
    let start = Instant::now();
    loop {
        let r = rt.engine.store().rollout(id)?;
        if r.phase.is_terminal() {
            return Ok(r);
        }
        anyhow::ensure!(
            start.elapsed() < deadline,
            "rollout {id} did not finish within {} s",
            deadline.as_secs()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn tempfile_dir() -> anyhow::Result<PathBuf> {
    let dir = std::env::temp_dir().join(format!("guard-demo-{}", std::process::id()));
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    Ok(dir)
}

async fn demo(
    rt: &Runtime,
    target: &Target,
    strategy: Strategy,
    rps: u32,
    per_build: Duration,
    tl: &Timeline,
) -> anyhow::Result<Report> {
    // The first release comes up through the engine (bootstrap): wait for it.
    let first = rt
        .engine
        .store()
        .rollouts(Some(target), 1)?
        .into_iter()
        .next();
    if let Some(first) = first {
        let r = wait_terminal(rt, first.id, tl, Duration::from_secs(60)).await?;
        tl.say(format!(
            "build {} is the release ({})",
            r.candidate.number,
            r.phase.name()
        ));
    }
    let router = rt.platform.router_addr(target)?;
    let load = Load::start(format!("http://{router}/"), rps)?;
    tl.say(format!(
        "load: {rps} requests/s through the router at {router}"
    ));
    // A few seconds of the stable release: the judge's pre-rollout baseline.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let result = deploy_all(rt, target, strategy, per_build, tl).await;
    let (sent, client_errors) = load.stop().await;
    if client_errors > 0 {
        tl.say(format!(
            "{client_errors} requests failed at the client (connection errors or timeouts)"
        ));
    }
    Ok(Report {
        releases: result?,
        total_requests: sent,
    })
}

async fn deploy_all(
    rt: &Runtime,
    target: &Target,
    strategy: Strategy,
    per_build: Duration,
    tl: &Timeline,
) -> anyhow::Result<Vec<ReleaseReport>> {
    let mut releases = vec![];
    for (number, kind) in [("2", "good"), ("3", "errors"), ("4", "latency")] {
        let build = rt
            .builds
            .build(target, number, None)
            .map_err(anyhow::Error::msg)?;
        let what = match kind {
            "good" => "a good build",
            "errors" => "a build answering 5 % errors",
            _ => "a build adding 300 ms latency",
        };
        let before = rt.platform.router_totals(target)?;
        tl.say(format!(
            "deploying build {number}: {what} ({})",
            strategy.as_str()
        ));
        let id = rt.engine.deploy(target, build, strategy, "demo")?;
        let r = wait_terminal(rt, id, tl, per_build).await?;
        let after = rt.platform.router_totals(target)?;
        let ev = r.evidence.clone().unwrap_or_default();
        tl.say(format!(
            "build {number}: {}{}{}",
            r.verdict.as_deref().unwrap_or("none"),
            r.seconds_to_verdict()
                .map(|s| format!(" {s:.1} s after taking traffic"))
                .unwrap_or_default(),
            ev.budget_burned_pct
                .map(|b| format!(", {b:.4} % of the 30-day error budget burned"))
                .unwrap_or_default()
        ));
        releases.push(ReleaseReport {
            build: number.to_string(),
            kind,
            verdict: r
                .verdict
                .clone()
                .unwrap_or_else(|| r.phase.name().to_string()),
            seconds_to_verdict: r.seconds_to_verdict(),
            budget_burned_pct: ev.budget_burned_pct,
            router_failed_requests: after.failures.saturating_sub(before.failures),
        });
    }
    Ok(releases)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The example guard.yaml's policy may hold a build for an hour per step:
    /// the demo waits that long with it instead of failing after 90 s.
    #[test]
    fn a_users_config_gets_its_policys_deadline_per_step_plus_the_watch() {
        let example =
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/guard.yaml");
        let text = std::fs::read_to_string(&example).expect("examples/guard.yaml");
        let c = config::parse(&text, "examples/guard.yaml", std::path::Path::new("/tmp"))
            .expect("the example is valid");
        let service = &c.services[0];
        let rolling = time_per_build(&c.policy, service, Strategy::Rolling);
        assert_eq!(
            rolling,
            Duration::from_secs_f64(c.policy.max_verify_seconds)
                + service.watch
                + Duration::from_secs(30)
        );
        let canary = time_per_build(&c.policy, service, Strategy::Canary);
        assert!(
            canary > rolling && service.canary_steps.len() > 1,
            "{canary:?} vs {rolling:?}"
        );
        let quick = judge::Policy {
            max_verify_seconds: 5.0,
            ..judge::Policy::default()
        };
        assert_eq!(
            time_per_build(&quick, service, Strategy::Rolling),
            DEMO_PER_BUILD.max(Duration::from_secs(35) + service.watch)
        );
    }
}
