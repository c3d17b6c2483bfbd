//! Sloth's validation rules for one SLO, plus guard's own: every query must
//! parse as PromQL once `{{.window}}` is filled in.
//!
//! Rules (as Sloth v0.16): service and SLO names match
//! `^[A-Za-z0-9][-A-Za-z0-9_.]*[A-Za-z0-9]$`; the objective is in `(0, 100]`;
//! the period has alert windows; label keys are not `__name__` and values are
//! not empty; exactly one SLI kind; error and total queries differ; every
//! query contains `{{.window}}`; an enabled alert has a name; annotation
//! values are not empty. Every broken rule is reported, not only the first.

use crate::duration::PromDuration;
use crate::spec::{AlertMeta, Field, Sli, SloSpec, SpecDocument, SpecError, SpecErrorKind};
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
    const NAME_RULE: &str = "must start and end with an alphanumeric and can only contain alphanumerics, '.', '_' and '-' (e.g. requests-availability)";

    if slo.name.is_empty() {
        fail(Field::Name, "SLO name is required".to_string());
    } else if !is_valid_name(&slo.name) {
        fail(
            Field::Name,
            format!("invalid SLO name {:?}: {NAME_RULE}", slo.name),
        );
    }
    if slo.service.is_empty() {
        fail(Field::Service, "service is required".to_string());
    } else if !is_valid_name(&slo.service) {
        fail(
            Field::Service,
            format!("invalid service {:?}: {NAME_RULE}", slo.service),
        );
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
    for (k, v) in &slo.labels {
        if let Err(reason) = check_label(k, v) {
            fail(Field::Labels, format!("invalid SLO label: {reason}"));
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
    errors
}

fn check_label(k: &str, v: &str) -> Result<(), String> {
    if k == "__name__" {
        return Err("the label key \"__name__\" is not allowed".to_string());
    }
    if k.is_empty() {
        return Err("a label key is empty".to_string());
    }
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
        if k.is_empty() {
            out.push("annotation: a key is empty".to_string());
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
    fn promql_is_checked_after_filling_the_window() {
        assert!(check_promql("sum(rate(x{a=\"b\"}[{{.window}}]))").is_ok());
        assert!(check_promql("sum(rate(x[{{.window}}])").is_err());
        assert!(check_promql("rate(x[{{.foo}}])").is_err());
    }
}
