//! guard's status pages, for the person who opens guard during a release or
//! after a page: what runs where, the rollout in progress with the judge's
//! numbers, and the history; one page per rollout with its steps, evidence
//! and notification deliveries.
//!
//! | path | |
//! |---|---|
//! | `/` | every target, the rollout in progress, the last 50 rollouts |
//! | `/rollouts/{id}` | one rollout (the page notifications link to) |
//!
//! Server-rendered from the same records as the JSON API (no JavaScript, so
//! nothing to build or ship), refreshed every 5 s while something is in
//! flight. Behind the API's auth: a browser sends the token as the password
//! of HTTP Basic auth (any user name), which it asks for on the 401.

use std::fmt::Write as _;

use axum::Router;
use axum::extract::{Path, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;

use super::{ApiError, ApiState, RolloutView, TargetStatus, target_statuses, view};
use crate::store::{DeliveryRecord, StepRecord, StoreError};

/// Rollouts listed on the overview.
const HISTORY: usize = 50;

/// The pages, to be merged under the API's auth.
pub(super) fn routes(state: ApiState) -> Router {
    Router::new()
        .route("/", get(overview))
        .route("/rollouts/{id}", get(rollout))
        .with_state(state)
}

async fn overview(State(state): State<ApiState>) -> Result<Response, ApiError> {
    let targets = target_statuses(&state)?;
    let history: Vec<RolloutView> = state
        .engine
        .store()
        .rollouts(None, HISTORY)?
        .into_iter()
        .map(|r| view(&state, r))
        .collect();
    // From the targets, not the history: an old rollout still in flight
    // stays in view however many others came after it.
    let in_flight: Vec<&RolloutView> = targets
        .iter()
        .filter_map(|t| t.rollout.as_ref())
        .filter(|r| r.record.active)
        .collect();

    let mut body = String::new();
    body.push_str("<h1>guard</h1>\n<h2>What runs where</h2>\n");
    body.push_str(
        "<table><tr><th>service</th><th>environment</th><th>build</th>\
         <th>latest rollout</th><th>state</th><th>reason</th></tr>\n",
    );
    for t in &targets {
        target_row(&mut body, t);
    }
    body.push_str("</table>\n");
    for r in &in_flight {
        let _ = writeln!(
            body,
            "<h2>In flight: <a href=\"/rollouts/{id}\">rollout {id}</a></h2>",
            id = r.record.id
        );
        live(&mut body, r);
    }
    let _ = writeln!(body, "<h2>Last {HISTORY} rollouts</h2>");
    history_table(&mut body, &history);
    Ok(page("guard", !in_flight.is_empty(), &body))
}

async fn rollout(State(state): State<ApiState>, Path(id): Path<i64>) -> Result<Response, ApiError> {
    let store = state.engine.store();
    let record = match store.rollout(id) {
        Err(StoreError::NotFound(_)) => {
            let body = format!(
                "<h1>No rollout {id}</h1>\n<p>This guard has no rollout {id} in its history. <a href=\"/\">All targets</a></p>\n"
            );
            return Ok(page_with(
                StatusCode::NOT_FOUND,
                "guard: no such rollout",
                false,
                &body,
            ));
        }
        other => other?,
    };
    let r = view(&state, record);
    let steps = store.steps(id)?;
    let deliveries = store.deliveries(id)?;
    let rec = &r.record;

    let mut body = String::new();
    let _ = write!(
        body,
        "<p><a href=\"/\">all targets</a> · <a href=\"/api/v1/rollouts/{id}\">JSON</a></p>\n\
         <h1>Rollout {id}: {service}/{env} build {build}</h1>\n<table>\n",
        service = esc(&rec.target.service),
        env = esc(&rec.target.environment),
        build = esc(rec.builds_shown().0),
    );
    let mut fact = |name: &str, value: String| {
        let _ = writeln!(body, "<tr><th>{name}</th><td>{value}</td></tr>");
    };
    fact("state", state_badge(r.record.verdict.as_deref(), &r.state));
    fact("reason", opt(rec.reason.as_deref()));
    fact("in place of", esc(rec.builds_shown().1));
    fact("commit", opt(rec.candidate.commit.as_deref()));
    fact(
        "strategy",
        format!(
            "{} ({})",
            rec.strategy.as_str(),
            esc(&format!("{:?}", rec.kind).to_lowercase())
        ),
    );
    fact("requested by", esc(&rec.requested_by));
    fact("started", when(rec.created_ms));
    fact(
        "time to verdict",
        r.seconds_to_verdict
            .map_or("-".into(), |s| format!("{s:.0} s")),
    );
    if let Some(e) = &rec.evidence {
        fact("evidence", evidence(e));
    }
    body.push_str("</table>\n");
    if rec.active {
        body.push_str("<h2>Now</h2>\n");
        live(&mut body, &r);
    }
    body.push_str("<h2>Steps</h2>\n");
    steps_table(&mut body, &steps);
    body.push_str("<h2>Notifications</h2>\n");
    deliveries_table(&mut body, &deliveries);
    Ok(page(&format!("guard: rollout {id}"), rec.active, &body))
}

fn target_row(out: &mut String, t: &TargetStatus) {
    let (link, state, reason) = match &t.rollout {
        Some(r) => (
            format!(
                "<a href=\"/rollouts/{id}\">{id}</a> (build {})",
                esc(r.record.builds_shown().0),
                id = r.record.id
            ),
            state_badge(r.record.verdict.as_deref(), &r.state),
            opt(r.record.reason.as_deref()),
        ),
        None => ("-".into(), "-".into(), "-".into()),
    };
    let _ = writeln!(
        out,
        "<tr><td>{}</td><td>{}</td><td>{}</td><td>{link}</td><td>{state}</td><td>{reason}</td></tr>",
        esc(&t.service),
        esc(&t.environment),
        opt(t.release.as_deref()),
    );
}

/// The judge's latest view of a rollout in flight.
fn live(out: &mut String, r: &RolloutView) {
    let Some(live) = &r.live else {
        out.push_str("<p>Not driven by this guard (another replica leads, or it resumes after a restart).</p>\n");
        return;
    };
    if let Some(note) = &live.note {
        let _ = writeln!(out, "<p>{}</p>", esc(note));
    }
    if !live.source_ok {
        out.push_str(
            "<p class=\"revert\">The signal source is down: holding; missing data is never judged good.</p>\n",
        );
    }
    if !live.slos.is_empty() {
        out.push_str(
            "<table><tr><th>SLO</th><th>new release bad / total</th>\
             <th>live baseline bad / total</th></tr>\n",
        );
        for (slo, c) in &live.slos {
            let _ = writeln!(
                out,
                "<tr><td>{}</td><td>{} / {}</td><td>{} / {}</td></tr>",
                esc(slo),
                c.candidate.total.saturating_sub(c.candidate.good),
                c.candidate.total,
                c.baseline.total.saturating_sub(c.baseline.good),
                c.baseline.total
            );
        }
        out.push_str("</table>\n");
    }
    if let Some(e) = &live.evidence {
        let _ = writeln!(out, "<p>{}</p>", evidence(e));
    }
}

fn history_table(out: &mut String, rollouts: &[RolloutView]) {
    if rollouts.is_empty() {
        out.push_str("<p>No rollouts yet.</p>\n");
        return;
    }
    out.push_str(
        "<table><tr><th>rollout</th><th>target</th><th>build</th><th>from</th>\
         <th>strategy</th><th>state</th><th>time to verdict</th><th>reason</th>\
         <th>started</th><th>by</th></tr>\n",
    );
    for r in rollouts {
        let rec = &r.record;
        let (to, from) = rec.builds_shown();
        let _ = writeln!(
            out,
            "<tr><td><a href=\"/rollouts/{id}\">{id}</a></td><td>{}/{}</td><td>{}</td><td>{}</td>\
             <td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
            esc(&rec.target.service),
            esc(&rec.target.environment),
            esc(to),
            esc(from),
            rec.strategy.as_str(),
            state_badge(rec.verdict.as_deref(), &r.state),
            r.seconds_to_verdict
                .map_or("-".into(), |s| format!("{s:.0} s")),
            opt(rec.reason.as_deref()),
            when(rec.created_ms),
            esc(&rec.requested_by),
            id = rec.id,
        );
    }
    out.push_str("</table>\n");
}

fn steps_table(out: &mut String, steps: &[StepRecord]) {
    out.push_str("<table><tr><th>at</th><th>to</th><th>cause</th><th>detail</th></tr>\n");
    for s in steps {
        let _ = writeln!(
            out,
            "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}{}</td></tr>",
            when(s.at_ms),
            esc(&s.to),
            esc(&s.cause),
            opt(s.detail.as_deref()),
            s.evidence
                .as_ref()
                .map(|e| format!("<br><small>{}</small>", evidence(e)))
                .unwrap_or_default()
        );
    }
    out.push_str("</table>\n");
}

fn deliveries_table(out: &mut String, deliveries: &[DeliveryRecord]) {
    if deliveries.is_empty() {
        out.push_str("<p>None recorded (no notifier configured, or none answered yet).</p>\n");
        return;
    }
    out.push_str(
        "<table><tr><th>at</th><th>notifier</th><th>event</th><th>delivered</th><th>detail</th></tr>\n",
    );
    for d in deliveries {
        let _ = writeln!(
            out,
            "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
            when(d.at_ms),
            esc(&d.notifier),
            esc(&d.event),
            if d.ok {
                "<span class=\"promote\">yes</span>"
            } else {
                "<span class=\"revert\">no</span>"
            },
            opt(d.detail.as_deref()),
        );
    }
    out.push_str("</table>\n");
}

/// The judge's numbers in one line, as the notifications give them.
fn evidence(e: &notify::Evidence) -> String {
    let mut parts = vec![];
    if let Some(slo) = &e.slo {
        parts.push(format!("SLO {}", esc(slo)));
    }
    parts.push(format!("{} of {} events bad", e.bad_events, e.events));
    if let Some(r) = e.release_error_ratio {
        let baseline = e.baseline_error_ratio.map_or(String::new(), |b| {
            format!(" vs baseline {:.3} %", b * 100.0)
        });
        parts.push(format!("ratio {:.3} %{baseline}", r * 100.0));
    }
    if let Some(s) = e.statistic {
        let bound = |b: Option<f64>| b.map_or("-".into(), |b| format!("{b:.2}"));
        parts.push(format!(
            "LLR {s:.2} (pass ≤ {}, revert ≥ {})",
            bound(e.lower_bound),
            bound(e.upper_bound)
        ));
    }
    if let Some(b) = e.budget_burned_pct {
        parts.push(format!("{b:.4} % of the error budget burned"));
    }
    parts.join("; ")
}

/// The phase, coloured by the verdict (blue while undecided).
fn state_badge(verdict: Option<&str>, phase: &str) -> String {
    let class = match verdict {
        Some("promote") => "promote",
        Some("revert" | "abort" | "rollback") => "revert",
        Some("hold") => "hold",
        _ => "active",
    };
    format!("<span class=\"{class}\">{}</span>", esc(phase))
}

fn when(ms: i64) -> String {
    jiff::Timestamp::from_millisecond(ms).map_or_else(
        |_| "-".into(),
        |t| t.strftime("%Y-%m-%d %H:%M:%S UTC").to_string(),
    )
}

fn opt(s: Option<&str>) -> String {
    s.map_or_else(|| "-".into(), esc)
}

/// HTML-escapes text for element content and quoted attributes.
fn esc(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// A page's answer without the right token: the browser asks for it again.
pub(crate) fn unauthorized_page(challenge: &'static str) -> Response {
    let mut resp = page_with(
        StatusCode::UNAUTHORIZED,
        "guard: token needed",
        false,
        "<h1>guard's token is needed</h1>\n<p>Sign in with any user name and guard's API \
         token (<code>GUARD_API_TOKEN</code>, or the file <code>api.token_file</code> names) \
         as the password.</p>\n",
    );
    resp.headers_mut().insert(
        header::WWW_AUTHENTICATE,
        header::HeaderValue::from_static(challenge),
    );
    resp
}

/// What a cluster follower shows instead of a page: only the leader's
/// history counts, and a Service may route a browser to any replica.
pub(crate) fn follower_page(leader: &str) -> Response {
    let mut resp = page_with(
        StatusCode::SERVICE_UNAVAILABLE,
        "guard: not the leader",
        true,
        &format!(
            "<h1>This guard replica is not the leader</h1>\n<p>The leader is <b>{}</b>; \
             its pages hold the rollouts. This page refreshes every 5 s and shows them once \
             the Service routes it to the leader, or this replica leads.</p>\n",
            esc(leader)
        ),
    );
    resp.headers_mut()
        .insert(header::RETRY_AFTER, header::HeaderValue::from_static("5"));
    resp
}

fn page(title: &str, refresh: bool, body: &str) -> Response {
    page_with(StatusCode::OK, title, refresh, body)
}

fn page_with(status: StatusCode, title: &str, refresh: bool, body: &str) -> Response {
    let refresh = if refresh {
        "<meta http-equiv=\"refresh\" content=\"5\">\n"
    } else {
        ""
    };
    let html = format!(
        "<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\n{refresh}\
         <title>{}</title>\n<style>\
         body{{font:14px/1.4 system-ui,sans-serif;margin:1.5em;color:#222}}\
         table{{border-collapse:collapse;margin:.5em 0}}\
         th,td{{border:1px solid #ccc;padding:.25em .5em;text-align:left;vertical-align:top}}\
         th{{background:#f4f4f4}}\
         .promote{{color:#176f2c;font-weight:bold}}.revert{{color:#b00020;font-weight:bold}}\
         .hold{{color:#a15c00;font-weight:bold}}.active{{color:#1a4fa0;font-weight:bold}}\
         </style></head><body>\n{body}</body></html>\n",
        esc(title)
    );
    (
        status,
        [
            (header::CONTENT_TYPE, "text/html; charset=utf-8"),
            (header::CACHE_CONTROL, "no-store"),
        ],
        html,
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_is_escaped_for_html() {
        assert_eq!(
            esc(r#"<script>alert("x") & 'y'</script>"#),
            "&lt;script&gt;alert(&quot;x&quot;) &amp; &#39;y&#39;&lt;/script&gt;"
        );
    }

    #[test]
    fn a_verdict_colours_its_state() {
        assert_eq!(
            state_badge(Some("revert"), "reverted"),
            "<span class=\"revert\">reverted</span>"
        );
        assert_eq!(
            state_badge(None, "verifying"),
            "<span class=\"active\">verifying</span>"
        );
    }
}
