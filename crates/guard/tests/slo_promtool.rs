//! The generated rules on real Prometheus tooling (`promtool`, from the
//! Debian `prometheus` package):
//!
//! - every rules file `guard slo generate` writes passes `promtool check
//!   rules` (our own spec, and Sloth's examples when the fixtures are there);
//! - `promtool test rules` unit tests, built from our own spec's generated
//!   rules, show the alerts behave as the SRE workbook says: a 14.4x burn
//!   pages after one hour (2 % of a 30-day budget), a 1x burn opens a ticket
//!   after three days (10 %), a 0.5x burn alerts nobody; and the raw freshness
//!   and uptime SLIs compute the ratios they claim.
//! - README's `guard slo generate -i slos/ -o -` writes a stream of rules
//!   files promtool accepts;
//! - the committed `deploy/prometheus/rules/ultra-boost.rules.yml` is what
//!   `slos/ultra-boost.yml` generates today (fails when stale).

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use serde_json::{Value, json};

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn run(cmd: &mut Command) -> Output {
    cmd.output().unwrap_or_else(|e| {
        panic!("cannot run {cmd:?}: {e} (is the Debian prometheus package installed?)")
    })
}

fn describe(what: &str, out: &Output) -> String {
    format!(
        "{what}\nexit: {:?}\nstdout:\n{}\nstderr:\n{}",
        out.status.code(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// Generates rules from `spec` into `out` with the real binary.
fn generate(spec: &Path, out: &Path, extra: &[&str]) {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_guard"));
    cmd.args(["slo", "generate", "-i"])
        .arg(spec)
        .arg("-o")
        .arg(out)
        .args(extra);
    let o = run(&mut cmd);
    assert!(o.status.success(), "{}", describe(&format!("{cmd:?}"), &o));
}

fn promtool_check(file: &Path) {
    let o = run(Command::new("promtool").args(["check", "rules"]).arg(file));
    assert!(
        o.status.success(),
        "{}",
        describe(&format!("promtool check rules {}", file.display()), &o)
    );
}

fn read_yaml(path: &Path) -> Vec<Value> {
    let text = std::fs::read_to_string(path).expect("read yaml");
    serde_saphyr::from_multiple::<Value>(&text)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .into_iter()
        .filter(|d| !d.is_null())
        .collect()
}

#[test]
fn every_generated_rules_file_passes_promtool_check() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let ours = tmp.path().join("ultra-boost.rules.yml");
    generate(&repo_root().join("slos/ultra-boost.yml"), &ours, &[]);
    promtool_check(&ours);
    // An existing directory as --out: the rules take the spec's name there.
    let dir = tmp.path().join("rules");
    std::fs::create_dir(&dir).expect("mkdir");
    generate(&repo_root().join("slos/ultra-boost.yml"), &dir, &[]);
    assert_eq!(
        std::fs::read_to_string(dir.join("ultra-boost.yml")).expect("rules in the directory"),
        std::fs::read_to_string(&ours).expect("rules")
    );

    // Sloth's examples, when the shared fixtures are present (the Sloth
    // compatibility test insists on them under CI).
    let fixtures = std::env::var_os("SLOTH_FIXTURES")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo_root().join("../shared/fixtures/sloth"));
    let Ok(entries) = std::fs::read_dir(&fixtures) else {
        eprintln!(
            "Sloth fixtures not found at {}: checked our own rules only",
            fixtures.display()
        );
        return;
    };
    let mut checked = 0;
    for entry in entries {
        let input = entry.expect("entry").path();
        let name = input.file_name().unwrap().to_string_lossy().into_owned();
        let Some(stem) = name.strip_suffix(".input.yml") else {
            continue;
        };
        if !fixtures.join(format!("{stem}.expected.yml")).exists() {
            continue; // an input Sloth rejects
        }
        let out = tmp.path().join(format!("{stem}.yml"));
        generate(&input, &out, &["-l", "cmd=examplesgen.sh"]);
        // A PrometheusRule object holds a rules file under `spec`: check that.
        let docs = read_yaml(&out);
        if docs.iter().any(|d| d["kind"] == "PrometheusRule") {
            for (i, d) in docs.iter().enumerate() {
                let file = tmp.path().join(format!("{stem}-{i}.rules.json"));
                std::fs::write(&file, serde_json::to_string(&d["spec"]).unwrap()).unwrap();
                promtool_check(&file);
            }
        } else {
            promtool_check(&out);
        }
        checked += 1;
    }
    eprintln!("promtool check rules passed on our rules and {checked} Sloth examples");
}

/// README's `guard slo generate -i slos/ -o -`: a directory to standard
/// output gives one YAML stream whose every document is a rules file
/// `promtool check rules` accepts, its header naming the spec file.
#[test]
fn readme_directory_to_stdout_writes_valid_rules_documents() {
    let root = repo_root();
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_guard"));
    cmd.current_dir(&root)
        .args(["slo", "generate", "-i", "slos/", "-o", "-"]);
    let o = run(&mut cmd);
    assert!(o.status.success(), "{}", describe(&format!("{cmd:?}"), &o));
    let stream = String::from_utf8(o.stdout).expect("UTF-8 output");
    let docs: Vec<Value> = serde_saphyr::from_multiple::<Value>(&stream)
        .unwrap_or_else(|e| panic!("stdout is not a YAML stream: {e}\n{stream}"))
        .into_iter()
        .filter(|d| !d.is_null())
        .collect();
    let specs = std::fs::read_dir(root.join("slos"))
        .expect("slos/")
        .filter(|e| {
            let name = e.as_ref().expect("entry").file_name();
            let name = name.to_string_lossy();
            name.ends_with(".yml") || name.ends_with(".yaml")
        })
        .count();
    assert!(
        docs.len() >= specs && specs > 0,
        "{} documents for {specs} specs",
        docs.len()
    );
    assert!(
        stream.contains("# Source: slos/ultra-boost.yml\n"),
        "{stream}"
    );
    let tmp = tempfile::tempdir().expect("tempdir");
    for (i, doc) in docs.iter().enumerate() {
        let file = tmp.path().join(format!("doc-{i}.rules.json"));
        std::fs::write(&file, serde_json::to_string(doc).unwrap()).unwrap();
        promtool_check(&file);
    }
}

/// The generated groups of one SLO (by `sloth_id`), as a rules file.
fn rules_for(all: &Value, slo_ids: &[&str]) -> Value {
    let groups: Vec<Value> = all["groups"]
        .as_array()
        .expect("groups")
        .iter()
        .filter(|g| {
            let name = g["name"].as_str().unwrap_or_default();
            slo_ids.iter().any(|id| name.ends_with(id))
        })
        .cloned()
        .collect();
    assert!(!groups.is_empty(), "no groups for {slo_ids:?}");
    json!({ "groups": groups })
}

/// The labels and annotations Prometheus gives a firing alert of `severity`:
/// the rule's labels, the SLI series' labels (Sloth keeps them with
/// `without (sloth_window)`), and annotations with `$labels` filled in.
fn expected_alert(rules: &Value, severity: &str) -> Value {
    let groups = rules["groups"].as_array().unwrap();
    let rule = groups
        .iter()
        .flat_map(|g| g["rules"].as_array().unwrap())
        .find(|r| r["alert"].is_string() && r["labels"]["sloth_severity"] == severity)
        .expect("alert rule");
    let sli = groups
        .iter()
        .flat_map(|g| g["rules"].as_array().unwrap())
        .find(|r| r["record"].is_string() && r["labels"]["sloth_window"].is_string())
        .expect("SLI rule");
    let mut labels = sli["labels"].as_object().unwrap().clone();
    labels.remove("sloth_window");
    for (k, v) in rule["labels"].as_object().unwrap() {
        labels.insert(k.clone(), v.clone());
    }
    let mut annotations = serde_json::Map::new();
    for (k, v) in rule["annotations"].as_object().unwrap() {
        let mut text = v.as_str().unwrap().to_string();
        for (lk, lv) in &labels {
            text = text.replace(&format!("{{{{$labels.{lk}}}}}"), lv.as_str().unwrap());
        }
        annotations.insert(k.clone(), Value::String(text));
    }
    json!({ "exp_labels": labels, "exp_annotations": annotations })
}

/// Request counters at `rpm` requests a minute, 1-minute samples: a healthy
/// stretch of `healthy_min` minutes with no errors, then `burn_min` minutes
/// with `err_per_min` errors a minute.
fn request_series(healthy_min: u64, burn_min: u64, rpm: u64, err_per_min: u64) -> Vec<Value> {
    let labels = |code: &str| {
        format!(
            r#"ultra_boost_http_requests_total{{job="ultra-boost",route="/",method="GET",code="{code}",instance="a"}}"#
        )
    };
    let ok_healthy_end = rpm * healthy_min;
    let good_burn = rpm - err_per_min;
    let ok_values = format!(
        "0+{rpm}x{healthy_min} {}+{good_burn}x{}",
        ok_healthy_end + good_burn,
        burn_min - 1
    );
    let err_values = if healthy_min == 0 {
        format!("0+{err_per_min}x{burn_min}")
    } else {
        format!(
            "0x{healthy_min} {err_per_min}+{err_per_min}x{}",
            burn_min - 1
        )
    };
    vec![
        json!({ "series": labels("200"), "values": ok_values }),
        json!({ "series": labels("500"), "values": err_values }),
    ]
}

fn run_promtool_tests(
    dir: &Path,
    name: &str,
    rules: &Value,
    evaluation_interval: &str,
    tests: Vec<Value>,
) {
    let rules_file = dir.join(format!("{name}.rules.json"));
    std::fs::write(&rules_file, serde_json::to_string_pretty(rules).unwrap()).unwrap();
    let test_file = dir.join(format!("{name}.test.json"));
    // Without an order promtool evaluates the groups of one step in Go's map
    // order (random): the alert group could read the recording rules of the
    // step before. Prometheus evaluates groups concurrently, each at its own
    // offset; the file's order (recordings, then alerts) is the one whose
    // timings the workbook figures describe.
    let order: Vec<Value> = rules["groups"]
        .as_array()
        .map(|groups| groups.iter().map(|g| g["name"].clone()).collect())
        .unwrap_or_default();
    let doc = json!({
        "rule_files": [rules_file.to_string_lossy()],
        "evaluation_interval": evaluation_interval,
        "group_eval_order": order,
        "tests": tests,
    });
    std::fs::write(&test_file, serde_json::to_string_pretty(&doc).unwrap()).unwrap();
    let started = std::time::Instant::now();
    let o = run(Command::new("promtool")
        .args(["test", "rules"])
        .arg(&test_file));
    eprintln!(
        "promtool test rules {name}: {:.1} s",
        started.elapsed().as_secs_f64()
    );
    assert!(
        o.status.success(),
        "{}",
        describe(&format!("promtool test rules {}", test_file.display()), &o)
    );
}

#[test]
fn availability_alerts_fire_as_the_sre_workbook_predicts() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let out = tmp.path().join("rules.yml");
    generate(&repo_root().join("slos/ultra-boost.yml"), &out, &[]);
    let all = read_yaml(&out).remove(0);
    let rules = rules_for(&all, &["ultra-boost-requests-availability"]);
    let alert = rules["groups"][2]["rules"][0]["alert"]
        .as_str()
        .expect("alert name")
        .to_string();
    let page = expected_alert(&rules, "page");
    let ticket = expected_alert(&rules, "ticket");
    let firing = |exp: &Value| vec![exp.clone()];
    let none: Vec<Value> = Vec::new();
    let check = |at: String, alerts: Vec<Value>| json!({ "eval_time": at, "alertname": alert, "exp_alerts": alerts });

    // 99.9 %: the error budget is 0.1 % of requests. 10 000 requests a minute.
    let rpm = 10_000;
    let day = 24 * 60;
    // 14.4x (144 errors a minute) after 16 healthy hours, rules evaluated
    // every 2 minutes. The workbook: at 14.4x the 1-hour window reaches 14.4x
    // (2 % of the budget) after exactly 1 hour, so the page fires then (we
    // allow one evaluation interval) and not earlier. 16 h of history keep
    // the ticket windows (1 d, 3 d) below their thresholds, as they would be
    // after a healthy month.
    let healthy = 16 * 60;
    let fast = vec![json!({
        "interval": "1m",
        "input_series": request_series(healthy, 62, rpm, 144),
        "alert_rule_test": [
            check(format!("{}m", healthy + 30), none.clone()),
            check(format!("{}m", healthy + 56), none.clone()),
            check(format!("{}m", healthy + 62), firing(&page)),
        ],
    })];
    run_promtool_tests(tmp.path(), "fast-burn", &rules, "2m", fast);

    // Slow burns over days, rules evaluated every 10 minutes (the windows
    // that matter here are hours and days long; promtool's cost is per
    // evaluation).
    let slow = vec![
        // 1x (10 errors a minute) after a healthy day: spends exactly the
        // budget over 30 days. No page ever; the ticket fires when the 3-day
        // window is all burn (10 % of the budget), i.e. after 3 days.
        json!({
            "interval": "1m",
            "input_series": request_series(day, 3 * day + 10, rpm, 10),
            "alert_rule_test": [
                check(format!("{}m", day + 60), none.clone()),
                check(format!("{}m", 3 * day), none.clone()),
                check(format!("{}m", day + 3 * day - 10), none.clone()),
                check(format!("{}m", day + 3 * day + 10), firing(&ticket)),
            ],
        }),
        // 0.5x (5 errors a minute) from the start, for a day: nothing fires.
        // Every window, full or not yet, sees the same 0.5x ratio.
        json!({
            "interval": "1m",
            "input_series": request_series(0, day + 60, rpm, 5),
            "alert_rule_test": [
                check("10m".to_string(), none.clone()),
                check("2h".to_string(), none.clone()),
                check("7h".to_string(), none.clone()),
                check(format!("{}m", day + 60), none.clone()),
            ],
        }),
    ];
    run_promtool_tests(tmp.path(), "slow-burn", &rules, "10m", slow);
}

#[test]
fn raw_freshness_and_uptime_slis_compute_their_ratios() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let out = tmp.path().join("rules.yml");
    generate(&repo_root().join("slos/ultra-boost.yml"), &out, &[]);
    let all = read_yaml(&out).remove(0);
    let rules = rules_for(
        &all,
        &["ultra-boost-background-freshness", "ultra-boost-uptime"],
    );
    let sel =
        |id: &str, window: &str| format!(r#"slo:sli_error:ratio_rate{window}{{sloth_id="{id}"}}"#);
    let labels = |id: &str, name: &str, window: &str| {
        format!(
            r#"slo:sli_error:ratio_rate{window}{{owner="ultra-boost", repo="ultra-boost", sloth_id="{id}", sloth_service="ultra-boost", sloth_slo="{name}", sloth_window="{window}", tier="1"}}"#
        )
    };
    let fresh = "ultra-boost-background-freshness";
    let up = "ultra-boost-uptime";
    let tests = vec![json!({
        "interval": "1m",
        "input_series": [
            // Replica a succeeds every minute (its timestamp follows the
            // clock); replica b's last success is at 0 s, so it is stale
            // (older than 120 s) from the third minute on.
            { "series": r#"ultra_boost_background_last_success_timestamp_seconds{job="ultra-boost",instance="a"}"#, "values": "0+60x120" },
            { "series": r#"ultra_boost_background_last_success_timestamp_seconds{job="ultra-boost",instance="b"}"#, "values": "0x120" },
            // Replica a always up; replica b up for the first 30 minutes,
            // then down.
            { "series": r#"up{job="ultra-boost",instance="a"}"#, "values": "1x120" },
            { "series": r#"up{job="ultra-boost",instance="b"}"#, "values": "1x30 0x90" },
        ],
        "promql_expr_test": [
            // At 60 min: over the last 5 minutes, one replica of two stale.
            { "expr": sel(fresh, "5m"), "eval_time": "60m",
              "exp_samples": [{ "labels": labels(fresh, "background-freshness", "5m"), "value": 0.5 }] },
            // Uptime at 20 min over 5 m: both up, no error; at 100 min over
            // 5 m: b down, one replica of two, error 0.5; over 30 m at 50 min
            // b was up 11 of 31 scrapes (20 to 30 min), so
            // 1 - (1 + 11/31) / 2 = 10/31.
            { "expr": sel(up, "5m"), "eval_time": "20m",
              "exp_samples": [{ "labels": labels(up, "uptime", "5m"), "value": 0.0 }] },
            { "expr": sel(up, "5m"), "eval_time": "100m",
              "exp_samples": [{ "labels": labels(up, "uptime", "5m"), "value": 0.5 }] },
            // (Compared within a tolerance: promtool compares floats exactly.)
            { "expr": format!("({0} > bool 0.32257) * ({0} < bool 0.32259)", sel(up, "30m")), "eval_time": "50m",
              "exp_samples": [{ "labels": labels(up, "uptime", "30m").replacen("slo:sli_error:ratio_rate30m", "", 1), "value": 1.0 }] },
        ],
    })];
    run_promtool_tests(tmp.path(), "raw", &rules, "1m", tests);
}

#[test]
fn committed_rules_are_up_to_date() {
    let root = repo_root();
    let committed = root.join("deploy/prometheus/rules/ultra-boost.rules.yml");
    let tmp = tempfile::tempdir().expect("tempdir");
    let fresh = tmp.path().join("rules.yml");
    generate(&root.join("slos/ultra-boost.yml"), &fresh, &[]);
    let want = std::fs::read_to_string(&fresh).unwrap();
    let got = std::fs::read_to_string(&committed).unwrap_or_default();
    assert!(
        got == want,
        "{} is stale or missing: regenerate it with `make rules` (guard slo generate -i slos/ultra-boost.yml -o {})",
        committed.display(),
        committed.display()
    );
}
