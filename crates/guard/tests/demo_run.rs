//! `guard demo --json` end to end: real guard, real ultra-boost replicas, real
//! load through the router. The good build must be promoted, the erroring one
//! reverted within 10 s of taking traffic, the slow one within 20 s, and the
//! router must not fail a single request.

use std::process::Command;
use std::time::Instant;

use serde_json::Value;

#[test]
fn demo_promotes_the_good_build_and_reverts_the_bad_ones_without_router_failures() {
    let ub = std::path::PathBuf::from(env!("CARGO_BIN_EXE_guard")).with_file_name("ultra-boost");
    assert!(
        ub.is_file(),
        "{} is missing: run `cargo build -p ultra-boost` first",
        ub.display()
    );
    let start = Instant::now();
    let out = Command::new(env!("CARGO_BIN_EXE_guard"))
        .args(["demo", "--json"])
        .env_remove("GUARD_SLACK_WEBHOOK_URL")
        .env_remove("GUARD_WEBHOOK_URL")
        .output()
        .expect("run guard demo");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "guard demo failed ({}):\n{stdout}\n{stderr}",
        out.status
    );
    assert!(
        start.elapsed().as_secs() < 120,
        "the demo must finish in under 2 minutes"
    );
    let last = stdout.lines().last().expect("output");
    let report: Value = serde_json::from_str(last)
        .unwrap_or_else(|e| panic!("last line is not JSON ({e}): {last}"));
    let releases = report["releases"].as_array().expect("releases");
    assert_eq!(releases.len(), 3, "{report}");
    let by_kind = |k: &str| {
        releases
            .iter()
            .find(|r| r["kind"] == k)
            .unwrap_or_else(|| panic!("no {k} release: {report}"))
    };
    assert_eq!(by_kind("good")["verdict"], "promote", "{stdout}");
    assert_eq!(by_kind("errors")["verdict"], "revert", "{stdout}");
    assert_eq!(by_kind("latency")["verdict"], "revert", "{stdout}");
    let secs = |k: &str| by_kind(k)["seconds_to_verdict"].as_f64().expect("seconds");
    assert!(
        secs("errors") < 10.0,
        "errors build reverted after {} s",
        secs("errors")
    );
    assert!(
        secs("latency") < 20.0,
        "latency build reverted after {} s",
        secs("latency")
    );
    for r in releases {
        assert_eq!(r["router_failed_requests"], 0, "router failures during {r}");
        assert!(r["budget_burned_pct"].as_f64().is_some(), "{r}");
    }
    assert!(
        report["total_requests"].as_u64().is_some_and(|n| n > 1000),
        "{report}"
    );
    // The timeline is readable: every release and its verdict appear.
    assert!(
        stdout.contains("deploying build 3") && stdout.contains("reverting"),
        "{stdout}"
    );
}
