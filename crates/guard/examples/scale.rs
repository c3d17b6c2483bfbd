//! Scale benchmark: one guard engine verifying N (default 1,000) simulated
//! services at a 1 s tick. The platform and signal source are the in-process
//! simulations (`guard::engine::sim`); the engine, the judge and the SQLite
//! store (a real file, WAL, synchronous=FULL) are the real ones.
//!
//! Prints CPU (user+system seconds over wall seconds, i.e. cores used) and
//! RSS for two phases side by side: idle (baseline sampling of every target
//! only) and verifying (every target with a rollout in progress), against the
//! goal of half a core.
//!
//! Run: `bench/scale/run.sh` or
//! `cargo run --release -p guard --example scale -- [services] [seconds]`.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use guard::engine::judge_adapter::PolicyJudge;
use guard::engine::sim::{SimPlatform, SimSource};
use guard::engine::{Engine, EngineSettings, NoEvents, TargetSettings};
use guard::metrics::GuardMetrics;
use guard::platform::{Build, Strategy, Target};
use guard::store::Store;

fn cpu_seconds() -> f64 {
    let mut usage = std::mem::MaybeUninit::<libc::rusage>::zeroed();
    // SAFETY: getrusage writes a `rusage` into memory we own and sized for it.
    let rc = unsafe { libc::getrusage(libc::RUSAGE_SELF, usage.as_mut_ptr()) };
    if rc != 0 {
        return f64::NAN;
    }
    // SAFETY: getrusage returned 0, so it filled the struct (zeroed before anyway).
    let u = unsafe { usage.assume_init() };
    let tv = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    tv(u.ru_utime) + tv(u.ru_stime)
}

fn rss_mib() -> (f64, f64) {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let field = |name: &str| {
        status
            .lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse::<f64>().ok())
            .map_or(f64::NAN, |kib| kib / 1024.0)
    };
    (field("VmRSS:"), field("VmHWM:"))
}

fn build(n: &str) -> Build {
    Build {
        number: n.into(),
        commit: None,
        image: None,
        command: vec!["sim".into()],
        env: Default::default(),
    }
}

async fn measure(label: &str, seconds: u64) -> (f64, f64) {
    let (c0, t0) = (cpu_seconds(), Instant::now());
    tokio::time::sleep(Duration::from_secs(seconds)).await;
    let cores = (cpu_seconds() - c0) / t0.elapsed().as_secs_f64();
    let (rss, _) = rss_mib();
    println!("{label:<40} {cores:>8.3} cores {rss:>9.1} MiB RSS");
    (cores, rss)
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let n: usize = args.get(1).and_then(|s| s.parse().ok()).unwrap_or(1000);
    let seconds: u64 = args.get(2).and_then(|s| s.parse().ok()).unwrap_or(20);
    let dir = tempfile::tempdir()?;
    let store = Arc::new(Store::open(&dir.path().join("scale.db"))?);
    let platform = Arc::new(SimPlatform::default());
    // 50 requests/s per service, 0.05 % errors: healthy releases the judge
    // keeps verifying for the whole run (default policy: 30 s minimum).
    let source = Arc::new(SimSource::new(
        platform.clone(),
        50.0,
        vec!["availability".into()],
        0.0005,
    ));
    let targets: Vec<Target> = (0..n)
        .map(|i| Target {
            service: format!("svc-{i:04}"),
            environment: "production".into(),
        })
        .collect();
    for t in &targets {
        platform.install(t, "1");
        store.set_release(t, &build("1"), None, 0)?;
    }
    let judge = PolicyJudge::new(
        judge::Policy::default(),
        HashMap::new(),
        vec![judge::SloSpec::availability("availability", 0.999)],
    )?;
    let settings = EngineSettings {
        tick: Duration::from_secs(1),
        default_target: TargetSettings {
            rolling_steps: vec![0.5, 1.0],
            canary_steps: vec![0.05, 0.25, 0.5],
            watch: Duration::from_secs(600),
            slos: vec!["availability".into()],
        },
        ..EngineSettings::default()
    };
    let engine = Engine::new(
        store.clone(),
        platform.clone(),
        source,
        Arc::new(judge),
        Arc::new(NoEvents),
        Arc::new(GuardMetrics::default()),
        settings,
    );
    println!(
        "guard scale benchmark: {n} services, 1 s tick, real engine + judge + SQLite ({})",
        dir.path().display()
    );
    let baselines = tokio::spawn(engine.clone().run_baselines(targets.clone()));
    tokio::time::sleep(Duration::from_secs(2)).await;
    let (idle, _) = measure(
        &format!("idle: {n} targets sampled per tick"),
        seconds.min(10),
    )
    .await;
    let t0 = Instant::now();
    for (i, t) in targets.iter().enumerate() {
        let strategy = if i % 2 == 0 {
            Strategy::Rolling
        } else {
            Strategy::Canary
        };
        engine.deploy(t, build("2"), strategy, "bench")?;
    }
    println!(
        "{n} rollouts recorded and started in {:.2} s",
        t0.elapsed().as_secs_f64()
    );
    tokio::time::sleep(Duration::from_secs(2)).await;
    let (busy, rss) = measure(&format!("verifying: {n} rollouts in progress"), seconds).await;
    let running = engine.running().len();
    let steps: usize = store
        .rollouts(None, n + 10)?
        .iter()
        .filter(|r| r.active)
        .count();
    let (_, hwm) = rss_mib();
    println!("rollouts still running at the end: {running} (active in the store: {steps})");
    println!("peak RSS {hwm:.1} MiB");
    println!(
        "result: {busy:.3} cores verifying vs {idle:.3} idle; goal < 0.5 core: {:.0} % of the goal; {:.1} KiB RSS per rollout",
        busy / 0.5 * 100.0,
        rss * 1024.0 / n as f64
    );
    engine.shutdown();
    baselines.abort();
    Ok(())
}
