//! Microsoft Teams through a Workflows webhook ("Post to a channel when a
//! webhook request is received"), carrying an Adaptive Card.
//!
//! The flow's HTTP trigger takes a message activity,
//! `{"type": "message", "attachments": [{"contentType":
//! "application/vnd.microsoft.card.adaptive", "content": <AdaptiveCard>}]}`,
//! and answers `202 Accepted` before the card is posted. Cards use schema
//! version 1.4, which Teams renders everywhere (desktop, web, mobile).

use crate::Event;
use crate::message::{Summary, summarize};
use serde_json::{Value, json};

/// The media type of an Adaptive Card attachment.
pub const ADAPTIVE_CARD: &str = "application/vnd.microsoft.card.adaptive";
/// The Adaptive Card JSON schema URL.
pub const SCHEMA: &str = "http://adaptivecards.io/schemas/adaptive-card.json";

/// The webhook body for an event.
pub fn payload(ev: &Event) -> Value {
    render(&summarize(ev), ev.kind.is_bad())
}

/// The webhook body for a summary; `bad` colours the title red.
pub fn render(s: &Summary, bad: bool) -> Value {
    let facts: Vec<Value> = s
        .facts
        .iter()
        .map(|(k, v)| json!({"title": k, "value": v}))
        .collect();
    let mut card = json!({
        "type": "AdaptiveCard",
        "$schema": SCHEMA,
        "version": "1.4",
        "msteams": {"width": "Full"},
        "body": [
            {"type": "TextBlock", "text": s.title, "weight": "Bolder", "size": "Medium", "wrap": true,
             "color": if bad { "Attention" } else { "Good" }},
            {"type": "TextBlock", "text": s.reason, "wrap": true},
            {"type": "FactSet", "facts": facts},
        ],
    });
    if let (Some(link), Some(obj)) = (&s.link, card.as_object_mut()) {
        obj.insert(
            "actions".into(),
            json!([{"type": "Action.OpenUrl", "title": "guard status page", "url": link}]),
        );
    }
    json!({
        "type": "message",
        "attachments": [{"contentType": ADAPTIVE_CARD, "contentUrl": null, "content": card}],
    })
}
