//! `guard bench detection` as a script uses it: the real binary, `--json`
//! lines with the documented keys, a canary's attribution limit next to its
//! own-traffic oracle, and clear errors for bad input.

use std::process::Command;

use serde_json::Value;

fn guard(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_guard"))
        .args(args)
        .output()
        .expect("run guard")
}

/// The `canary` rows of `guard bench detection --json` (2 trials) with
/// `extra` flags.
fn canary_rows(extra: &[&str]) -> Vec<Value> {
    let mut args = vec![
        "bench",
        "detection",
        "--trials",
        "2",
        "--scenario",
        "canary",
        "--json",
    ];
    args.extend_from_slice(extra);
    let out = guard(&args);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).expect("JSON line"))
        .collect()
}

#[test]
fn json_rows_carry_every_documented_key_and_the_canary_attribution_limit() {
    let out = guard(&[
        "bench",
        "detection",
        "--trials",
        "3",
        "--seed",
        "7",
        "--scenario",
        "shared-outage",
        "--json",
    ]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}\n{}",
        stdout,
        String::from_utf8_lossy(&out.stderr)
    );
    let rows: Vec<Value> = stdout
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect();
    assert_eq!(rows.len(), 6, "3 rates × 2 shares: {stdout}");
    for row in &rows {
        for key in [
            "scenario",
            "slo_objective",
            "multiple",
            "rps",
            "canary_share",
            "trials",
            "revert_rate",
            "promote_rate",
            "hold_rate",
            "median_seconds",
            "p95_seconds",
            "oracle_seconds",
            "attribution_oracle_seconds",
            "budget_burned_pct_median",
            "threshold_check_seconds",
            "reverted_while_held_rate",
            "reverted_before_budget_goal_rate",
        ] {
            assert!(row.get(key).is_some(), "key {key} missing: {row}");
        }
        assert_eq!(row["scenario"], "shared-outage");
        // Both versions fail alike: nothing to attribute.
        assert!(row["attribution_oracle_seconds"].is_null(), "{row}");
    }

    // A canary worse than its baseline has an attribution limit; with an
    // equal-traffic baseline it is the slower of the two questions.
    let canaries = canary_rows(&[]);
    assert_eq!(canaries.len(), 36, "6 multiples × 3 rates × 2 shares");
    for row in &canaries {
        let multiple = row["multiple"].as_f64().expect("multiple");
        let attribution = row["attribution_oracle_seconds"].as_f64();
        assert_eq!(attribution.is_some(), multiple > 1.0, "{row}");
        if let Some(a) = attribution
            && row["canary_share"].as_f64() == Some(0.5)
        {
            let own = row["oracle_seconds"].as_f64().expect("oracle");
            assert!(a > 2.0 * own, "{row}");
        }
    }
    // The grid runs the judge's default policy, its blame level included:
    // the attribution limit is the one at 10⁻⁵, and `--blame-alpha` moves it.
    let fourteen = |rows: &[Value]| {
        rows.iter()
            .find(|r| r["multiple"] == 14.4 && r["rps"] == 100.0 && r["canary_share"] == 0.5)
            .and_then(|r| r["attribution_oracle_seconds"].as_f64())
            .expect("the 14.4x canary row at 100 rps and 50 %")
    };
    let scenario = judge::sim::grid()
        .into_iter()
        .find(|s| {
            s.name == "canary"
                && s.multiple == 14.4
                && s.rps == 100.0
                && s.canary_share == Some(0.5)
        })
        .expect("in the grid");
    let at = |blame_alpha| {
        let policy = judge::Policy {
            blame_alpha,
            ..judge::Policy::default()
        };
        judge::sim::attribution_oracle_seconds(&scenario, &policy).expect("worse than its baseline")
    };
    assert!((fourteen(&canaries) - at(judge::Policy::default().blame_alpha)).abs() < 1e-9);
    let at_alpha = canary_rows(&["--blame-alpha", "0.01"]);
    assert!((fourteen(&at_alpha) - at(Some(0.01))).abs() < 1e-9);
    assert!(at(Some(0.01)) * 2.0 < at(judge::Policy::default().blame_alpha));

    // The table names the goals and how many were met.
    let out = guard(&[
        "bench",
        "detection",
        "--trials",
        "3",
        "--scenario",
        "shared-outage",
    ]);
    let table = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{table}");
    assert!(table.contains("attrib_s"), "{table}");
    assert!(table.contains("goals:"), "{table}");
    assert!(table.contains("of 6 checks met"), "{table}");
}

#[test]
fn bad_input_is_refused_with_a_reason_and_a_non_zero_exit() {
    // (flag, value, what stderr must say)
    for (flag, value, says) in [
        (
            "--scenario",
            "nope",
            &["\"nope\" is not a scenario", "shared-outage"][..],
        ),
        (
            "--blame-alpha",
            "0.9",
            &["--blame-alpha", "must be in (0, 0.5)"],
        ),
        ("--alpha", "0.7", &["--alpha", "must be in (0, 0.5)"]),
        ("--trials", "0", &["--trials"]),
        ("--jobs", "0", &["--jobs"]),
    ] {
        let out = guard(&["bench", "detection", flag, value]);
        assert!(!out.status.success(), "{flag} {value} accepted");
        let stderr = String::from_utf8_lossy(&out.stderr);
        for part in says {
            assert!(stderr.contains(part), "{flag} {value}: {stderr}");
        }
        assert!(
            out.stdout.is_empty(),
            "{flag} {value}: nothing printed for a refused run"
        );
    }
}

#[test]
fn the_figures_and_their_order_do_not_depend_on_the_jobs() {
    let run = |jobs: &str| {
        let out = guard(&[
            "bench",
            "detection",
            "--trials",
            "5",
            "--seed",
            "3",
            "--scenario",
            "shared-outage",
            "--scenario",
            "bursty",
            "--json",
            "--jobs",
            jobs,
        ]);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let one = run("1");
    assert_eq!(
        one.lines().count(),
        9,
        "6 shared-outage and 3 bursty rows:\n{one}"
    );
    assert_eq!(run("4"), one);
}
