//! Property tests of the whole pipeline (load, validate, generate, write) on
//! generated specs, valid and broken: it never panics; when a spec is
//! accepted, every generated expression parses as PromQL and the written YAML
//! reads back as the rules generated; when it is refused, every error names
//! the document and, for SLO-level problems, the SLO.

use std::collections::BTreeMap;

use proptest::prelude::*;
use proptest::test_runner::{Config, RngSeed};
use serde_json::Value;
use slo::generate::{Options, generate_document};
use slo::spec::parse_str;

/// A YAML double-quoted scalar (JSON strings are valid YAML).
fn q(s: &str) -> String {
    serde_json::to_string(s).expect("string to JSON")
}

fn name() -> impl Strategy<Value = String> {
    prop_oneof![
        8 => "[a-z0-9][-a-z0-9._]{0,8}[a-z0-9]",
        1 => Just(String::new()),
        1 => "\\PC{0,6}",
    ]
}

fn query() -> impl Strategy<Value = String> {
    let metric = "[a-z_][a-z0-9_]{0,8}";
    prop_oneof![
        4 => metric.prop_map(|m| format!("sum(rate({m}{{code=~\"5..\"}}[{{{{.window}}}}]))")),
        2 => metric.prop_map(|m| format!("sum(rate({m}[{{{{ .window }}}}])) by (job)")),
        1 => metric.prop_map(|m| format!("1 - avg(avg_over_time({m}[{{{{.window}}}}]))")),
        1 => metric.prop_map(|m| format!("avg_over_time((avg({m} > bool 1))[{{{{.window}}}}:1m])")),
        1 => metric.prop_map(|m| format!("sum(rate({m}[5m]))")),
        1 => metric.prop_map(|m| format!("sum(rate({m}[{{{{.window}}}}])")),
        1 => "\\PC{0,20}",
    ]
}

fn labels() -> impl Strategy<Value = BTreeMap<String, String>> {
    let key = prop_oneof![6 => "[a-z_]{1,6}", 1 => "\\PC{0,4}"];
    let value = prop_oneof![6 => "[a-z0-9]{1,4}", 1 => "\\PC{0,8}"];
    prop::collection::btree_map(key, value, 0..3)
}

fn yaml_map(m: &BTreeMap<String, String>) -> String {
    let items: Vec<String> = m
        .iter()
        .map(|(k, v)| format!("{}: {}", q(k), q(v)))
        .collect();
    format!("{{{}}}", items.join(", "))
}

#[derive(Debug, Clone)]
struct SloCase {
    name: String,
    objective: f64,
    labels: BTreeMap<String, String>,
    raw: bool,
    error_query: String,
    total_query: String,
    alert_name: String,
    page_disabled: bool,
    ticket_disabled: bool,
    alert_labels: BTreeMap<String, String>,
}

fn slo_case() -> impl Strategy<Value = SloCase> {
    (
        name(),
        prop_oneof![
            Just(99.9),
            Just(95.0),
            Just(100.0),
            0.0f64..=101.0,
            Just(-1.0)
        ],
        labels(),
        any::<bool>(),
        query(),
        query(),
        prop_oneof![4 => "[A-Z][a-zA-Z]{0,8}", 1 => Just(String::new())],
        any::<bool>(),
        any::<bool>(),
        labels(),
    )
        .prop_map(
            |(
                name,
                objective,
                labels,
                raw,
                error_query,
                total_query,
                alert_name,
                page_disabled,
                ticket_disabled,
                alert_labels,
            )| SloCase {
                name,
                objective,
                labels,
                raw,
                error_query,
                total_query,
                alert_name,
                page_disabled,
                ticket_disabled,
                alert_labels,
            },
        )
}

/// A spec in one of the two Sloth formats.
fn spec_text(service: &str, k8s: bool, slos: &[SloCase]) -> String {
    let mut out = String::new();
    let (indent, eq, tq, rq, page, ticket) = if k8s {
        out.push_str("apiVersion: sloth.slok.dev/v1\nkind: PrometheusServiceLevel\nmetadata: {name: x, namespace: ns}\nspec:\n");
        (
            "  ",
            "errorQuery",
            "totalQuery",
            "errorRatioQuery",
            "pageAlert",
            "ticketAlert",
        )
    } else {
        out.push_str("version: \"prometheus/v1\"\n");
        (
            "",
            "error_query",
            "total_query",
            "error_ratio_query",
            "page_alert",
            "ticket_alert",
        )
    };
    out.push_str(&format!(
        "{indent}service: {}\n{indent}labels: {{team: a}}\n{indent}slos:\n",
        q(service)
    ));
    for s in slos {
        out.push_str(&format!("{indent}  - name: {}\n", q(&s.name)));
        out.push_str(&format!("{indent}    objective: {:?}\n", s.objective));
        out.push_str(&format!("{indent}    labels: {}\n", yaml_map(&s.labels)));
        if s.raw {
            out.push_str(&format!(
                "{indent}    sli: {{raw: {{{rq}: {}}}}}\n",
                q(&s.error_query)
            ));
        } else {
            out.push_str(&format!(
                "{indent}    sli: {{events: {{{eq}: {}, {tq}: {}}}}}\n",
                q(&s.error_query),
                q(&s.total_query)
            ));
        }
        out.push_str(&format!(
            "{indent}    alerting:\n{indent}      name: {}\n",
            q(&s.alert_name)
        ));
        out.push_str(&format!(
            "{indent}      labels: {}\n",
            yaml_map(&s.alert_labels)
        ));
        out.push_str(&format!(
            "{indent}      {page}: {{disable: {}}}\n",
            s.page_disabled
        ));
        out.push_str(&format!(
            "{indent}      {ticket}: {{disable: {}}}\n",
            s.ticket_disabled
        ));
    }
    out
}

fn every_expr(v: &Value, out: &mut Vec<String>) {
    match v {
        Value::Object(m) => {
            for (k, x) in m {
                if k == "expr" {
                    out.push(x.as_str().expect("expr is a string").to_string());
                } else {
                    every_expr(x, out);
                }
            }
        }
        Value::Array(a) => a.iter().for_each(|x| every_expr(x, out)),
        _ => {}
    }
}

proptest! {
    #![proptest_config(Config { cases: 256, rng_seed: RngSeed::Fixed(0x510), ..Config::default() })]

    #[test]
    fn accepted_specs_generate_valid_promql_and_yaml(
        service in name(),
        k8s in any::<bool>(),
        slos in prop::collection::vec(slo_case(), 1..4),
        disable_alerts in any::<bool>(),
    ) {
        let text = spec_text(&service, k8s, &slos);
        let (docs, load_errors) = parse_str(&text, None);
        prop_assert!(load_errors.is_empty(), "generated spec did not load: {load_errors:?}\n{text}");
        let opts = Options { disable_alerts, ..Options::default() };
        for doc in &docs {
            match generate_document(doc, &opts) {
                Ok(generated) => {
                    let mut out = String::new();
                    if slo::output::render(&generated, &mut out).is_err() {
                        prop_assert!(generated.groups.is_empty());
                        continue;
                    }
                    let written: Vec<Value> = serde_saphyr::from_multiple(&out)
                        .map_err(|e| TestCaseError::fail(format!("output is not YAML: {e}\n{out}")))?;
                    let mut exprs = Vec::new();
                    written.iter().for_each(|d| every_expr(d, &mut exprs));
                    let generated_rules: usize = generated.groups.iter().map(|g| g.rules.len()).sum();
                    prop_assert_eq!(exprs.len(), generated_rules);
                    for (e, rule) in exprs.iter().zip(generated.groups.iter().flat_map(|g| &g.rules)) {
                        prop_assert_eq!(e, &rule.expr, "written expr differs from generated");
                        prop_assert!(promql_parser::parser::parse(e).is_ok(), "generated expr is not PromQL: {}", e);
                    }
                }
                Err(errors) => {
                    prop_assert!(!errors.is_empty());
                    for e in &errors {
                        prop_assert_eq!(e.origin.document, 1);
                        prop_assert!(!e.to_string().is_empty());
                    }
                }
            }
        }
    }
}
