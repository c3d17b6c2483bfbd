//! What every message says, whatever the target: a title, the reason, and the
//! facts behind it (service, environment, old and new build, verdict, deciding
//! SLO, evidence, time to verdict) plus the status link. Slack, Teams, Grafana
//! and GitHub only differ in how they lay this out.

use crate::{Event, EventKind, SOURCE_DOWN_REASON};

/// A target-neutral rendering of an [`Event`].
#[derive(Clone, Debug, PartialEq)]
pub struct Summary {
    /// One line, e.g. "ultra-boost 43 reverted in production (back on 42)".
    pub title: String,
    /// Why, in one or two sentences.
    pub reason: String,
    /// Labelled facts, in display order; absent facts are left out.
    pub facts: Vec<(&'static str, String)>,
    /// guard's status page for this rollout.
    pub link: Option<String>,
}

impl EventKind {
    /// Short name used in tags, headers and metrics: `started`, `promoted`, ...
    pub fn as_str(self) -> &'static str {
        match self {
            EventKind::Started => "started",
            EventKind::Promoted => "promoted",
            EventKind::Reverted => "reverted",
            EventKind::Held => "held",
            EventKind::RolledBack => "rolled_back",
            EventKind::IncidentOpened => "incident_opened",
            EventKind::IncidentResolved => "incident_resolved",
        }
    }

    /// The verdict word for tags: `verifying`, `promote`, `revert`, `hold`, ...
    pub fn verdict(self) -> &'static str {
        match self {
            EventKind::Started => "verifying",
            EventKind::Promoted => "promote",
            EventKind::Reverted => "revert",
            EventKind::Held => "hold",
            EventKind::RolledBack => "rollback",
            EventKind::IncidentOpened => "incident",
            EventKind::IncidentResolved => "resolved",
        }
    }

    /// Whether the news is bad (colours, emoji).
    pub fn is_bad(self) -> bool {
        matches!(
            self,
            EventKind::Reverted
                | EventKind::Held
                | EventKind::RolledBack
                | EventKind::IncidentOpened
        )
    }

    fn emoji(self) -> &'static str {
        match self {
            EventKind::Started => "🚀",
            EventKind::Promoted => "✅",
            EventKind::Reverted => "⏪",
            EventKind::Held => "⏸️",
            EventKind::RolledBack => "↩️",
            EventKind::IncidentOpened => "🔥",
            EventKind::IncidentResolved => "🟢",
        }
    }
}

impl Event {
    /// The `build` for messages, `?` when unknown.
    fn build_or_unknown(&self) -> &str {
        self.build.as_deref().unwrap_or("?")
    }
}

/// Renders an event for people.
pub fn summarize(ev: &Event) -> Summary {
    let new = ev.build_or_unknown();
    let svc = &ev.service;
    let env = &ev.environment;
    let title = match ev.kind {
        EventKind::Started => match &ev.previous_build {
            Some(old) => format!(
                "{svc} {new} rolling out in {env} (replacing {old}), verifying against its SLOs"
            ),
            None => format!("{svc} {new} rolling out in {env}, verifying against its SLOs"),
        },
        EventKind::Promoted => format!("{svc} {new} promoted in {env}"),
        EventKind::Reverted => match &ev.previous_build {
            Some(old) => format!("{svc} {new} reverted in {env}: back on {old}"),
            None => format!("{svc} {new} reverted in {env}"),
        },
        // A source outage clears itself; a judge's hold waits for a person.
        EventKind::Held if ev.reason.starts_with(SOURCE_DOWN_REASON) => format!(
            "{svc} {new} held in {env} while its signal source is down: resumes when it answers"
        ),
        EventKind::Held => format!("{svc} {new} held in {env}: a person must decide"),
        EventKind::RolledBack => format!("{svc} {new} rolled back by hand in {env}"),
        EventKind::IncidentOpened => match ev.evidence.slo.as_deref() {
            Some(slo) => format!("SLO alert firing: {svc} {slo} in {env}"),
            None => format!("Alert firing: {svc} in {env}"),
        },
        EventKind::IncidentResolved => match ev.evidence.slo.as_deref() {
            Some(slo) => format!("SLO alert resolved: {svc} {slo} in {env}"),
            None => format!("Alert resolved: {svc} in {env}"),
        },
    };
    let title = format!("{} {title}", ev.kind.emoji());

    let mut facts: Vec<(&'static str, String)> =
        vec![("Service", svc.clone()), ("Environment", env.clone())];
    let incident = matches!(
        ev.kind,
        EventKind::IncidentOpened | EventKind::IncidentResolved
    );
    if incident {
        if let Some(b) = &ev.build {
            facts.push(("Suspect release", b.clone()));
        }
    } else {
        facts.push((
            "Build",
            match &ev.previous_build {
                Some(old) => format!("{old} → {new}"),
                None => new.to_owned(),
            },
        ));
        facts.push(("Verdict", ev.kind.verdict().to_owned()));
    }
    if let Some(c) = &ev.commit {
        facts.push(("Commit", c.chars().take(12).collect()));
    }
    let e = &ev.evidence;
    if let Some(slo) = &e.slo {
        facts.push(("SLO", slo.clone()));
    }
    if e.events > 0 || !incident {
        facts.push(("Events", format!("{} bad of {}", e.bad_events, e.events)));
    }
    match (e.release_error_ratio, e.baseline_error_ratio) {
        (Some(r), Some(b)) => {
            facts.push(("Error ratio", format!("{} (baseline {})", pct(r), pct(b))))
        }
        (Some(r), None) => facts.push(("Error ratio", pct(r))),
        (None, Some(b)) => facts.push(("Baseline error ratio", pct(b))),
        (None, None) => {}
    }
    if let Some(s) = e.statistic {
        let bounds = match (e.lower_bound, e.upper_bound) {
            (Some(lo), Some(hi)) => format!(" (pass ≤ {lo:.2}, revert ≥ {hi:.2})"),
            _ => String::new(),
        };
        facts.push(("SPRT statistic", format!("{s:.2}{bounds}")));
    }
    if let Some(b) = e.budget_burned_pct {
        facts.push((
            "Budget burned",
            format!("{b:.3} % of the period's error budget"),
        ));
    }
    if let Some(s) = ev.seconds_to_verdict {
        facts.push(("Time to verdict", human_seconds(s)));
    }
    let reason = if ev.reason.trim().is_empty() {
        default_reason(ev.kind).to_owned()
    } else {
        ev.reason.clone()
    };
    Summary {
        title,
        reason,
        facts,
        link: ev.status_url.clone(),
    }
}

/// What an event of `kind` means, for one whose sender gave no reason.
pub fn default_reason(kind: EventKind) -> &'static str {
    match kind {
        EventKind::Started => {
            "The candidate takes traffic; guard compares it with the SLOs and the baseline."
        }
        EventKind::Promoted => "The candidate met its SLOs.",
        EventKind::Reverted => "The candidate burned error budget beyond its baseline.",
        EventKind::Held => "guard cannot decide on the data it has.",
        EventKind::RolledBack => "Rolled back by a person.",
        EventKind::IncidentOpened => "An SLO alert fired.",
        EventKind::IncidentResolved => "The alert resolved.",
    }
}

impl Summary {
    /// Plain text: title, reason, one fact per line, link. Slack's `text`
    /// fallback, Grafana's annotation text, logs.
    pub fn plain(&self) -> String {
        let mut out = format!("{}\n{}", self.title, self.reason);
        for (k, v) in &self.facts {
            out.push_str(&format!("\n{k}: {v}"));
        }
        if let Some(l) = &self.link {
            out.push_str(&format!("\nStatus: {l}"));
        }
        out
    }

    /// At most `max` characters (GitHub descriptions take 140), cut on a char boundary.
    pub fn short(&self, text: &str, max: usize) -> String {
        if text.chars().count() <= max {
            return text.to_owned();
        }
        let mut s: String = text.chars().take(max.saturating_sub(1)).collect();
        s.push('…');
        s
    }
}

/// A ratio as a percentage with enough digits for SLO-sized numbers (0.012 %).
pub fn pct(ratio: f64) -> String {
    let p = ratio * 100.0;
    if p == 0.0 {
        "0 %".to_owned()
    } else if p.abs() >= 10.0 {
        format!("{p:.1} %")
    } else if p.abs() >= 0.1 {
        format!("{p:.2} %")
    } else {
        format!("{p:.3} %")
    }
}

/// `95 s`, `12 min 3 s`, `2 h 5 min`.
pub fn human_seconds(s: f64) -> String {
    if !s.is_finite() || s < 0.0 {
        return "unknown".to_owned();
    }
    if s < 60.0 {
        return if s < 10.0 {
            format!("{s:.1} s")
        } else {
            format!("{s:.0} s")
        };
    }
    let total = s.round() as u64;
    let (h, m, sec) = (total / 3600, (total % 3600) / 60, total % 60);
    if h > 0 {
        format!("{h} h {m} min")
    } else {
        format!("{m} min {sec} s")
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::Evidence;

    pub(crate) fn reverted() -> Event {
        Event {
            kind: EventKind::Reverted,
            service: "ultra-boost".into(),
            environment: "production".into(),
            previous_build: Some("42".into()),
            build: Some("43".into()),
            commit: Some("0123456789abcdef0123".into()),
            reason: "error ratio 5.1 % vs baseline 0.0 %: SPRT crossed its revert bound".into(),
            evidence: Evidence {
                slo: Some("requests-availability".into()),
                events: 412,
                bad_events: 21,
                release_error_ratio: Some(0.051),
                baseline_error_ratio: Some(0.0),
                statistic: Some(4.71),
                lower_bound: Some(-4.59),
                upper_bound: Some(4.59),
                budget_burned_pct: Some(0.0123),
            },
            seconds_to_verdict: Some(7.3),
            started_at_ms: 1_764_201_600_000,
            ended_at_ms: Some(1_764_201_607_300),
            status_url: Some("https://guard.example/rollouts/7".into()),
            environment_url: None,
            transient: false,
            rollout_id: Some(7),
        }
    }

    /// A hold for a source outage resumes on its own; a judge's hold waits
    /// for a person. The title says which.
    #[test]
    fn a_hold_says_whether_a_person_must_act() {
        let mut ev = reverted();
        ev.kind = EventKind::Held;
        ev.reason =
            format!("{SOURCE_DOWN_REASON}: querying http://127.0.0.1:9090: connection refused");
        assert_eq!(
            summarize(&ev).title,
            "⏸️ ultra-boost 43 held in production while its signal source is down: resumes when it answers"
        );
        ev.reason = "undecided after 3600s (deadline 3600s): too little traffic".into();
        assert_eq!(
            summarize(&ev).title,
            "⏸️ ultra-boost 43 held in production: a person must decide"
        );
    }

    #[test]
    fn a_revert_says_what_and_why() {
        let s = summarize(&reverted());
        assert_eq!(
            s.title,
            "⏪ ultra-boost 43 reverted in production: back on 42"
        );
        let text = s.plain();
        for needle in [
            "Build: 42 → 43",
            "Verdict: revert",
            "SLO: requests-availability",
            "Events: 21 bad of 412",
            "Error ratio: 5.10 % (baseline 0 %)",
            "SPRT statistic: 4.71 (pass ≤ -4.59, revert ≥ 4.59)",
            "Budget burned: 0.012 %",
            "Time to verdict: 7.3 s",
            "Status: https://guard.example/rollouts/7",
            "SPRT crossed its revert bound",
        ] {
            assert!(text.contains(needle), "missing {needle:?} in\n{text}");
        }
    }

    #[test]
    fn numbers_read_well() {
        assert_eq!(pct(0.001), "0.10 %");
        assert_eq!(pct(0.0005), "0.050 %");
        assert_eq!(pct(0.25), "25.0 %");
        assert_eq!(human_seconds(725.0), "12 min 5 s");
        assert_eq!(human_seconds(7325.0), "2 h 2 min");
    }
}
