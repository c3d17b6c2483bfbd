//! Grafana annotations: a region over each verification and each incident.
//!
//! `POST {url}/api/annotations` with `Authorization: Bearer <service account
//! token>` and `{"time": ms, "timeEnd": ms, "tags": [...], "text": "..."}`
//! (epoch milliseconds; with `timeEnd` the annotation is a region) answers
//! `200 {"id": N, "message": "Annotation added"}`. `PATCH
//! {url}/api/annotations/{id}` updates only the fields sent and answers
//! `200 {"message": "Annotation patched"}`. Without `dashboardUID` the
//! annotation belongs to the organisation and dashboards pick it by tag.
//!
//! Flow: a rollout's `started` event opens an annotation at the start of the
//! verification; its verdict patches in `timeEnd`, the verdict tag and the
//! reason. An incident opens on the firing alert and is closed by the resolved
//! one. When guard did not see the opening (restart, dropped), the closing
//! event posts the whole region instead.
//!
//! Tags: `guard`, service, environment, build, verdict (`verifying`,
//! `promote`, `revert`, `hold`, `rollback`, `incident`) and, for incidents, the SLO.

use crate::message::summarize;
use crate::{Event, EventKind};
use serde_json::{Value, json};

/// The tags for an event.
pub fn tags(ev: &Event) -> Vec<String> {
    let mut t = vec![
        "guard".to_owned(),
        ev.service.clone(),
        ev.environment.clone(),
    ];
    if let Some(b) = &ev.build {
        t.push(b.clone());
    }
    match ev.kind {
        EventKind::IncidentOpened | EventKind::IncidentResolved => {
            t.push("incident".to_owned());
            if let Some(slo) = &ev.evidence.slo {
                t.push(slo.clone());
            }
        }
        k => t.push(k.verdict().to_owned()),
    }
    t
}

/// Body of `POST /api/annotations`: a region when the event has an end, a
/// point (an open annotation) otherwise.
pub fn create(ev: &Event, dashboard_uid: Option<&str>) -> Value {
    let mut body = json!({
        "time": ev.started_at_ms,
        "tags": tags(ev),
        "text": summarize(ev).plain(),
    });
    if let Some(obj) = body.as_object_mut() {
        if let Some(end) = ev.ended_at_ms {
            obj.insert("timeEnd".into(), json!(end.max(ev.started_at_ms)));
        }
        if let Some(uid) = dashboard_uid {
            obj.insert("dashboardUID".into(), json!(uid));
        }
    }
    body
}

/// Body of `PATCH /api/annotations/{id}` closing an open annotation.
pub fn close(ev: &Event) -> Value {
    let end = ev
        .ended_at_ms
        .unwrap_or(ev.started_at_ms)
        .max(ev.started_at_ms);
    json!({
        "time": ev.started_at_ms,
        "timeEnd": end,
        "tags": tags(ev),
        "text": summarize(ev).plain(),
    })
}
