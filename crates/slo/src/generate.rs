//! Prometheus rules from validated SLOs, exactly as Sloth v0.16 generates
//! them: per SLO a group of SLI recording rules (one per alert window plus the
//! period), a group of metadata recording rules, and a group with the page and
//! ticket multiwindow multi-burn-rate alerts.

use std::collections::{BTreeMap, HashSet};

use crate::duration::PromDuration;
use crate::gofmt;
use crate::spec::{
    AlertMeta, Field, Format, Origin, Sli, SloSpec, SpecDocument, SpecError, SpecErrorKind,
};
use crate::template;
use crate::validate::{check_label, validate_slo};
use crate::windows::{Catalog, Window, Windows};

/// How to generate.
#[derive(Debug, Clone)]
pub struct Options {
    /// Alert windows by SLO period.
    pub catalog: Catalog,
    /// The period of SLOs whose spec does not fix one (Sloth: 30d).
    pub default_period: PromDuration,
    /// Labels added to every rule; they override the spec's labels.
    pub extra_labels: BTreeMap<String, String>,
    /// Leave out the alert groups.
    pub disable_alerts: bool,
    /// Leave out the SLI and metadata recording groups.
    pub disable_recordings: bool,
    /// The `sloth_version` label of `sloth_slo_info`.
    pub version: String,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            catalog: Catalog::builtin(),
            default_period: PromDuration::from_days(30),
            extra_labels: BTreeMap::new(),
            disable_alerts: false,
            disable_recordings: false,
            version: format!("guard-{}", env!("CARGO_PKG_VERSION")),
        }
    }
}

/// A Prometheus recording or alerting rule.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rule {
    /// The recorded series (recording rules).
    pub record: Option<String>,
    /// The alert name (alerting rules).
    pub alert: Option<String>,
    pub expr: String,
    pub labels: BTreeMap<String, String>,
    pub annotations: BTreeMap<String, String>,
}

/// A named group of rules.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RuleGroup {
    pub name: String,
    pub rules: Vec<Rule>,
}

/// The rules generated from one spec document.
#[derive(Debug, Clone, PartialEq)]
pub struct Generated {
    pub format: Format,
    pub groups: Vec<RuleGroup>,
    /// How many SLOs the document held.
    pub slos: usize,
}

const SLI_METRIC: &str = "slo:sli_error:ratio_rate";
const WINDOW_LABEL: &str = "sloth_window";

fn sli_metric(window: PromDuration) -> String {
    format!("{SLI_METRIC}{window}")
}

/// Sloth's `{sloth_id="…", sloth_service="…", sloth_slo="…"}` filter:
/// Prometheus's `LabelSet.String()`, i.e. `k="v"` pairs (Go-quoted) sorted as
/// strings and joined with `, `.
fn id_filter(slo: &SloSpec) -> String {
    let mut pairs = [
        format!("sloth_id={}", gofmt::quote(&slo.id)),
        format!("sloth_slo={}", gofmt::quote(&slo.name)),
        format!("sloth_service={}", gofmt::quote(&slo.service)),
    ];
    pairs.sort();
    format!("{{{}}}", pairs.join(", "))
}

fn id_labels(slo: &SloSpec) -> BTreeMap<String, String> {
    BTreeMap::from([
        ("sloth_id".to_string(), slo.id.clone()),
        ("sloth_slo".to_string(), slo.name.clone()),
        ("sloth_service".to_string(), slo.service.clone()),
    ])
}

/// Merges label maps left to right; later maps win.
fn merge(maps: &[&BTreeMap<String, String>]) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    for m in maps {
        out.extend(m.iter().map(|(k, v)| (k.clone(), v.clone())));
    }
    out
}

/// Validates and generates the rules of one document. Every validation error
/// of every SLO is returned, not only the first.
pub fn generate_document(doc: &SpecDocument, opts: &Options) -> Result<Generated, Vec<SpecError>> {
    // Extra labels are checked once, on their own: merged into every SLO's
    // labels, a bad one would be reported once per SLO, at the SLO's
    // `labels`, where the user did not write it.
    let extra_errors: Vec<SpecError> = opts
        .extra_labels
        .iter()
        .filter_map(|(k, v)| check_label(k, v).err())
        .map(|reason| {
            SpecError::new(
                Origin {
                    file: doc.file.clone(),
                    document: doc.document,
                    field: Some("extra labels".to_string()),
                    ..Origin::default()
                },
                SpecErrorKind::Invalid(format!("invalid extra label: {reason}")),
            )
        })
        .collect();
    if !extra_errors.is_empty() {
        return Err(extra_errors);
    }
    let mut errors = Vec::new();
    let mut seen = HashSet::new();
    let mut slos = Vec::with_capacity(doc.slos.len());
    for spec in &doc.slos {
        if !seen.insert(spec.id.as_str()) {
            errors.push(SpecError::new(
                spec.origin(doc, Field::Name),
                SpecErrorKind::Invalid(format!("SLO ID {:?} is repeated in the document", spec.id)),
            ));
        }
        let mut slo = spec.clone();
        slo.labels.extend(
            opts.extra_labels
                .iter()
                .map(|(k, v)| (k.clone(), v.clone())),
        );
        let period = slo.period.unwrap_or(opts.default_period);
        for e in validate_slo(doc, &slo, period, &opts.catalog) {
            // A problem of the spec's top-level labels comes once per SLO.
            if !errors.contains(&e) {
                errors.push(e);
            }
        }
        slos.push((slo, period));
    }
    if !errors.is_empty() {
        return Err(errors);
    }

    let mut groups = Vec::with_capacity(slos.len() * 3);
    for (slo, period) in &slos {
        // Validation guarantees the period is in the catalog.
        let windows = opts.catalog.get(*period).map_err(|e| {
            vec![SpecError::new(
                slo.origin(doc, Field::Period),
                SpecErrorKind::Invalid(e.to_string()),
            )]
        })?;
        let fail = |reason: String| {
            vec![SpecError::new(
                slo.origin(doc, Field::Sli),
                SpecErrorKind::Invalid(reason),
            )]
        };
        if !opts.disable_recordings {
            groups.push(RuleGroup {
                name: format!("sloth-slo-sli-recordings-{}", slo.id),
                rules: sli_rules(slo, &id_filter(slo), *period, windows).map_err(fail)?,
            });
            groups.push(RuleGroup {
                name: format!("sloth-slo-meta-recordings-{}", slo.id),
                rules: metadata_rules(slo, *period, windows, &doc.format, &opts.version),
            });
        }
        if !opts.disable_alerts {
            let rules = alert_rules(slo, windows);
            if !rules.is_empty() {
                groups.push(RuleGroup {
                    name: format!("sloth-slo-alerts-{}", slo.id),
                    rules,
                });
            }
        }
    }
    Ok(Generated {
        format: doc.format.clone(),
        groups,
        slos: slos.len(),
    })
}

/// One SLI error-ratio recording rule per alert window, then one for the
/// whole period computed from the shortest window's rule (Sloth's
/// "optimized" period rule: a ratio of sums, not an average of averages).
fn sli_rules(
    slo: &SloSpec,
    filter: &str,
    period: PromDuration,
    w: &Windows,
) -> Result<Vec<Rule>, String> {
    let mut windows = w.alert_windows();
    windows.push(period);
    let base = id_labels(slo);
    let mut rules = Vec::with_capacity(windows.len());
    for window in windows {
        let window_str = window.to_string();
        let expr = if window == period {
            let short = w.page_quick.short_window;
            if short == period {
                return Err(format!(
                    "the SLO period {period} equals the page alert's short window; cannot derive the period SLI from it"
                ));
            }
            let metric = sli_metric(short);
            format!(
                "sum_over_time({metric}{filter}[{window_str}])\n/ ignoring ({WINDOW_LABEL})\ncount_over_time({metric}{filter}[{window_str}])\n"
            )
        } else {
            let tpl = match &slo.sli {
                Sli::Events {
                    error_query,
                    total_query,
                } => format!("({error_query})\n/\n({total_query})\n"),
                Sli::Raw { error_ratio_query } => format!("({error_ratio_query})"),
                Sli::Missing | Sli::Both => return Err("the SLI is not valid".to_string()),
            };
            template::render(&tpl, &window_str).map_err(|e| e.to_string())?
        };
        let window_label = BTreeMap::from([(WINDOW_LABEL.to_string(), window_str)]);
        rules.push(Rule {
            record: Some(sli_metric(window)),
            alert: None,
            expr,
            labels: merge(&[&base, &window_label, &slo.labels]),
            annotations: BTreeMap::new(),
        });
    }
    Ok(rules)
}

fn metadata_rules(
    slo: &SloSpec,
    period: PromDuration,
    w: &Windows,
    format: &Format,
    version: &str,
) -> Vec<Rule> {
    let labels = merge(&[&id_labels(slo), &slo.labels]);
    let ratio = gofmt::float_g(slo.objective / 100.0);
    let filter = id_filter(slo);
    let burn_rate = |metric: String| {
        format!(
            "{metric}{filter}\n/ on(sloth_id, sloth_slo, sloth_service) group_left\nslo:error_budget:ratio{filter}\n"
        )
    };
    let rule = |record: &str, expr: String, labels: BTreeMap<String, String>| Rule {
        record: Some(record.to_string()),
        alert: None,
        expr,
        labels,
        annotations: BTreeMap::new(),
    };
    let info = BTreeMap::from([
        ("sloth_version".to_string(), version.to_string()),
        ("sloth_mode".to_string(), format.mode_label().to_string()),
        ("sloth_spec".to_string(), format.spec_label().to_string()),
        ("sloth_objective".to_string(), gofmt::float_f(slo.objective)),
    ]);
    vec![
        rule(
            "slo:objective:ratio",
            format!("vector({ratio})"),
            labels.clone(),
        ),
        rule(
            "slo:error_budget:ratio",
            format!("vector(1-{ratio})"),
            labels.clone(),
        ),
        rule(
            "slo:time_period:days",
            format!("vector({})", gofmt::float_g(period.go_hours() / 24.0)),
            labels.clone(),
        ),
        rule(
            "slo:current_burn_rate:ratio",
            burn_rate(sli_metric(w.page_quick.short_window)),
            labels.clone(),
        ),
        rule(
            "slo:period_burn_rate:ratio",
            burn_rate(sli_metric(period)),
            labels.clone(),
        ),
        rule(
            "slo:period_error_budget_remaining:ratio",
            format!("1 - slo:period_burn_rate:ratio{filter}"),
            labels.clone(),
        ),
        rule(
            "sloth_slo_info",
            "vector(1)".to_string(),
            merge(&[&labels, &info]),
        ),
    ]
}

fn alert_rules(slo: &SloSpec, w: &Windows) -> Vec<Rule> {
    let mut rules = Vec::with_capacity(2);
    for (severity, meta, quick, slow) in [
        ("page", &slo.page_alert, &w.page_quick, &w.page_slow),
        ("ticket", &slo.ticket_alert, &w.ticket_quick, &w.ticket_slow),
    ] {
        if meta.disable {
            continue;
        }
        rules.push(alert_rule(slo, w, severity, meta, quick, slow));
    }
    rules
}

fn alert_rule(
    slo: &SloSpec,
    w: &Windows,
    severity: &str,
    meta: &AlertMeta,
    quick: &Window,
    slow: &Window,
) -> Rule {
    let filter = id_filter(slo);
    // Sloth: error budget in percent, then divided by 100.
    let budget = gofmt::float_g((100.0 - slo.objective) / 100.0);
    let cond = |window: PromDuration, factor: f64| {
        format!(
            "max({}{filter} > ({} * {budget})) without ({WINDOW_LABEL})",
            sli_metric(window),
            gofmt::float_g(factor)
        )
    };
    let qf = w.burn_rate_factor(quick);
    let sf = w.burn_rate_factor(slow);
    let expr = format!(
        "(\n    {}\n    and\n    {}\n)\nor\n(\n    {}\n    and\n    {}\n)\n",
        cond(quick.short_window, qf),
        cond(quick.long_window, qf),
        cond(slow.short_window, sf),
        cond(slow.long_window, sf),
    );
    let defaults = BTreeMap::from([
        (
            "title".to_string(),
            format!("({severity}) {{{{$labels.sloth_service}}}} {{{{$labels.sloth_slo}}}} SLO error budget burn rate is too fast."),
        ),
        (
            "summary".to_string(),
            "{{$labels.sloth_service}} {{$labels.sloth_slo}} SLO error budget burn rate is over expected.".to_string(),
        ),
    ]);
    let severity_label = BTreeMap::from([("sloth_severity".to_string(), severity.to_string())]);
    Rule {
        record: None,
        alert: Some(meta.name.clone()),
        expr,
        labels: merge(&[&severity_label, &meta.labels]),
        annotations: merge(&[&defaults, &meta.annotations]),
    }
}
