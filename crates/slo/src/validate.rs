//! Sloth's validation rules for one SLO, plus guard's own: every query must
//! parse as PromQL once `{{.window}}` is filled in.
//!
//! Rules (as Sloth v0.16): service and SLO names match
//! `^[A-Za-z0-9][-A-Za-z0-9_.]*[A-Za-z0-9]$`; the objective is in `(0, 100]`;
//! the period has alert windows; label keys (spec, SLO and alert labels) are
//! Prometheus label names (`^[a-zA-Z_][a-zA-Z0-9_]*$`, Sloth's
//! `prom_label_key`) other than `__name__`, and values are not empty;
//! annotation keys are label names too (`prom_annot_key`) and values are not
//! empty; exactly one SLI kind; error and total queries differ; every query
//! contains `{{.window}}`; an enabled alert has a name. Every broken rule is
//! reported, not only the first.

use crate::duration::PromDuration;
use crate::spec::{AlertMeta, Field, Origin, Sli, SloSpec, SpecDocument, SpecError, SpecErrorKind};
use crate::template;
use crate::windows::Catalog;

/// Whether `name` is a valid Sloth name: starts and ends with an
/// alphanumeric, contains only alphanumerics, `-`, `_` and `.`.
pub fn is_valid_name(name: &str) -> bool {
    let b = name.as_bytes();
    if b.len() < 2 {
        return false;
    }
    let edge = |c: u8| c.is_ascii_alphanumeric();
    let inner = |c: u8| c.is_ascii_alphanumeric() || c == b'-' || c == b'_' || c == b'.';
    edge(b[0]) && edge(b[b.len() - 1]) && b.iter().all(|&c| inner(c))
}

/// Why a name is not a valid Sloth name, or `None` if it is. `what` names
/// the field (`SLO name`, `service`), `example` is a valid one of its kind.
fn name_problem(what: &str, name: &str, example: &str) -> Option<String> {
    if name.is_empty() {
        return Some(format!("{what} is required (e.g. {example})"));
    }
    if is_valid_name(name) {
        return None;
    }
    let rule = format!(
        "it must be at least 2 characters long, start and end with an alphanumeric and contain only alphanumerics, '.', '_' and '-' (e.g. {example})"
    );
    // One character passes the edge rule on its own, so say what it misses:
    // Sloth's regex needs a first and a last character.
    let short = if name.chars().count() < 2 {
        "too short: "
    } else {
        ""
    };
    Some(format!("invalid {what} {name:?}: {short}{rule}"))
}

/// Why a key can't be a label (or annotation) name of a generated rule.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LabelKeyError {
    /// The key is the empty string.
    #[error("a label key is empty")]
    Empty,
    /// `__name__` holds the metric name; a rule can't set it (Sloth and
    /// Prometheus's rule loader refuse it).
    #[error("the label key \"__name__\" is not allowed (it holds the metric name)")]
    MetricName,
    /// Not a Prometheus label name; `promtool check rules` would refuse the
    /// generated rules with `invalid label name`.
    #[error(
        "{key:?} is not a Prometheus label name: it must match ^[a-zA-Z_][a-zA-Z0-9_]*$, i.e. only ASCII letters, digits and '_', not starting with a digit (e.g. {suggestion:?})"
    )]
    Invalid { key: String, suggestion: String },
}

/// Whether `key` is a Prometheus label name in the classic scheme that
/// Sloth v0.16 (`prom_label_key`, `prom_annot_key`) and `promtool check
/// rules` check: `^[a-zA-Z_][a-zA-Z0-9_]*$`. Names starting with `__` match:
/// Sloth and Prometheus's rule loader accept them in rules (only `__name__`
/// is refused, as a label key; see [`check_label_key`]).
pub fn is_valid_label_name(key: &str) -> bool {
    let mut bytes = key.bytes();
    match bytes.next() {
        Some(c) if c.is_ascii_alphabetic() || c == b'_' => {}
        _ => return false,
    }
    bytes.all(|c| c.is_ascii_alphanumeric() || c == b'_')
}

/// `key` with every character a label name can't hold replaced by `_`, and
/// a `_` before a leading digit: a valid name to suggest.
fn label_name_suggestion(key: &str) -> String {
    let mut out: String = key
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
        .collect();
    if out.starts_with(|c: char| c.is_ascii_digit()) {
        out.insert(0, '_');
    }
    out
}

fn check_name(key: &str) -> Result<(), LabelKeyError> {
    if key.is_empty() {
        return Err(LabelKeyError::Empty);
    }
    if !is_valid_label_name(key) {
        return Err(LabelKeyError::Invalid {
            key: key.to_string(),
            suggestion: label_name_suggestion(key),
        });
    }
    Ok(())
}

/// Checks a label key of a generated rule: a Prometheus label name, and not
/// `__name__`. Used for spec, SLO and alert labels and for extra labels.
pub fn check_label_key(key: &str) -> Result<(), LabelKeyError> {
    if key == "__name__" {
        return Err(LabelKeyError::MetricName);
    }
    check_name(key)
}

/// Checks an annotation key: a Prometheus label name (Sloth's
/// `prom_annot_key`; annotations may be called `__name__`).
pub fn check_annotation_key(key: &str) -> Result<(), LabelKeyError> {
    check_name(key)
}

/// Renders a query with a sample window and parses it as PromQL.
pub fn check_promql(query: &str) -> Result<(), String> {
    let rendered = template::render(query, "5m").map_err(|e| e.to_string())?;
    promql_parser::parser::parse(&rendered)
        .map(|_| ())
        .map_err(|e| format!("not valid PromQL once {{{{.window}}}} is filled in: {e}"))
}

/// Checks one SLO (with extra labels already merged) against every rule.
pub fn validate_slo(
    doc: &SpecDocument,
    slo: &SloSpec,
    period: PromDuration,
    catalog: &Catalog,
) -> Vec<SpecError> {
    let mut errors = Vec::new();
    let mut fail = |field: Field, reason: String| {
        errors.push(SpecError::new(
            slo.origin(doc, field),
            SpecErrorKind::Invalid(reason),
        ));
    };
    if let Some(reason) = name_problem("SLO name", &slo.name, "requests-availability") {
        fail(Field::Name, reason);
    }
    if let Some(reason) = name_problem("service", &slo.service, "checkout-api") {
        fail(Field::Service, reason);
    }
    if let Err(e) = catalog.get(period) {
        fail(Field::Period, e.to_string());
    }
    if !(slo.objective > 0.0 && slo.objective <= 100.0) {
        fail(
            Field::Objective,
            format!(
                "objective must be > 0 and <= 100 (a percentage, e.g. 99.9), got {}",
                slo.objective
            ),
        );
    }
    // A label the SLO inherits from the spec's top-level `labels` is reported
    // at that field and without the SLO, so that a spec with several SLOs
    // gives one error for it (generate_document drops the repeats).
    let mut spec_label_errors = Vec::new();
    for (k, v) in &slo.labels {
        if let Err(reason) = check_label(k, v) {
            if slo.fields.inherited_labels.contains(k) {
                spec_label_errors.push(SpecError::new(
                    spec_labels_origin(doc, slo),
                    SpecErrorKind::Invalid(format!("invalid spec label: {reason}")),
                ));
            } else {
                fail(Field::Labels, format!("invalid SLO label: {reason}"));
            }
        }
    }

    match &slo.sli {
        Sli::Missing => fail(
            Field::Sli,
            "an SLI is required: `events` or `raw`".to_string(),
        ),
        Sli::Both => fail(
            Field::Sli,
            "only one SLI type is allowed: `events` or `raw`, not both".to_string(),
        ),
        Sli::Events {
            error_query,
            total_query,
        } => {
            if error_query == total_query {
                fail(
                    Field::ErrorQuery,
                    "the error and total queries can't be the same".to_string(),
                );
            }
            for (field, q) in [
                (Field::ErrorQuery, error_query),
                (Field::TotalQuery, total_query),
            ] {
                if let Err(reason) = check_query(q) {
                    fail(field, reason);
                }
            }
        }
        Sli::Raw { error_ratio_query } => {
            if let Err(reason) = check_query(error_ratio_query) {
                fail(Field::RawQuery, reason);
            }
        }
    }

    let unnamed: Vec<&str> = [("page", &slo.page_alert), ("ticket", &slo.ticket_alert)]
        .into_iter()
        .filter(|(_, a)| !a.disable && a.name.is_empty())
        .map(|(which, _)| which)
        .collect();
    if !unnamed.is_empty() {
        fail(
            Field::AlertName,
            format!(
                "the alert name is required while the {} alert{} enabled (or set `disable: true` on {})",
                unnamed.join(" and "),
                if unnamed.len() == 1 { " is" } else { "s are" },
                if unnamed.len() == 1 { "it" } else { "them" },
            ),
        );
    }
    // The alerting-level labels reach both alerts: report a problem once,
    // saying which alerts it affects.
    let page = check_alert(&slo.page_alert);
    let ticket = check_alert(&slo.ticket_alert);
    for reason in &page {
        let both = ticket.contains(reason);
        let (field, which) = if both {
            (Field::Alerting, "page and ticket alerts")
        } else {
            (Field::PageAlert, "page alert")
        };
        fail(field, format!("invalid {which}: {reason}"));
    }
    for reason in ticket.iter().filter(|r| !page.contains(r)) {
        fail(
            Field::TicketAlert,
            format!("invalid ticket alert: {reason}"),
        );
    }
    errors.extend(spec_label_errors);
    errors
}

/// Where the spec's top-level `labels` are: the document, not one SLO.
fn spec_labels_origin(doc: &SpecDocument, slo: &SloSpec) -> Origin {
    let (field, pos) = match slo.fields.entries.get(&Field::SpecLabels) {
        Some((path, pos)) => (Some(path.clone()), *pos),
        None => (None, None),
    };
    Origin {
        file: doc.file.clone(),
        document: doc.document,
        slo: None,
        field,
        line: pos.map(|p| p.0),
        column: pos.map(|p| p.1),
    }
}

/// Checks one label (key and value) of a generated rule.
pub fn check_label(k: &str, v: &str) -> Result<(), String> {
    check_label_key(k).map_err(|e| e.to_string())?;
    if v.is_empty() {
        return Err(format!("the value of label {k:?} is empty"));
    }
    Ok(())
}

fn check_query(q: &str) -> Result<(), String> {
    if q.trim().is_empty() {
        return Err("the query is required".to_string());
    }
    if !template::has_window_var(q) {
        return Err(
            "the query must contain the {{.window}} variable (e.g. rate(x[{{.window}}]))"
                .to_string(),
        );
    }
    check_promql(q)
}

/// Problems with an enabled alert's labels and annotations.
fn check_alert(alert: &AlertMeta) -> Vec<String> {
    let mut out = Vec::new();
    if alert.disable {
        return out;
    }
    for (k, v) in &alert.labels {
        if let Err(reason) = check_label(k, v) {
            out.push(format!("label: {reason}"));
        }
    }
    for (k, v) in &alert.annotations {
        if let Err(e) = check_annotation_key(k) {
            let reason = match e {
                LabelKeyError::Empty => "a key is empty".to_string(),
                e => e.to_string(),
            };
            out.push(format!("annotation: {reason}"));
        } else if v.is_empty() {
            out.push(format!("annotation: the value of {k:?} is empty"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_follow_sloth_pattern() {
        for ok in ["ab", "a-b", "a.b_c-9", "A9"] {
            assert!(is_valid_name(ok), "{ok}");
        }
        for bad in ["", "a", "-a", "a-", "a b", "a/b", "é1"] {
            assert!(!is_valid_name(bad), "{bad}");
        }
    }

    #[test]
    fn one_character_names_are_refused_as_too_short() {
        // Sloth's regex needs a first and a last character.
        let reason = name_problem("SLO name", "x", "requests-availability").expect("refused");
        assert!(reason.contains("too short"), "{reason}");
        assert!(reason.contains("at least 2 characters"), "{reason}");
        let reason = name_problem("service", "a b", "checkout-api").expect("refused");
        assert!(!reason.contains("too short"), "{reason}");
        assert!(reason.contains("e.g. checkout-api"), "{reason}");
        assert_eq!(name_problem("service", "ab", "checkout-api"), None);
    }

    #[test]
    fn label_keys_follow_prometheus_label_names() {
        for ok in ["owner", "_x", "a9", "A_b", "__meta", "sloth_id"] {
            assert_eq!(check_label_key(ok), Ok(()), "{ok}");
        }
        for bad in ["ow-ner", "9a", "a.b", "a b", "é", "a/b", ":a"] {
            assert!(
                matches!(check_label_key(bad), Err(LabelKeyError::Invalid { .. })),
                "{bad}"
            );
        }
        assert_eq!(check_label_key(""), Err(LabelKeyError::Empty));
        assert_eq!(check_label_key("__name__"), Err(LabelKeyError::MetricName));
        // Annotations may be called __name__ (Sloth's prom_annot_key).
        assert_eq!(check_annotation_key("__name__"), Ok(()));
        assert!(check_annotation_key("run-book").is_err());
        let e = check_label_key("ow-ner").unwrap_err().to_string();
        assert!(e.contains("\"ow-ner\"") && e.contains("\"ow_ner\""), "{e}");
        let e = check_label_key("9lives").unwrap_err().to_string();
        assert!(e.contains("\"_9lives\""), "{e}");
    }

    #[test]
    fn promql_is_checked_after_filling_the_window() {
        assert!(check_promql("sum(rate(x{a=\"b\"}[{{.window}}]))").is_ok());
        assert!(check_promql("sum(rate(x[{{.window}}])").is_err());
        assert!(check_promql("rate(x[{{.foo}}])").is_err());
    }
}
