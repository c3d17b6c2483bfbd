//! Microsoft Teams through a Workflows webhook ("Post to a channel when a
//! webhook request is received"), carrying an Adaptive Card.
//!
//! The flow's HTTP trigger takes a message activity,
//! `{"type": "message", "attachments": [{"contentType":
//! "application/vnd.microsoft.card.adaptive", "content": <AdaptiveCard>}]}`,
//! and answers `202 Accepted` before the card is posted. Cards use schema
//! version 1.4, which Teams renders everywhere (desktop, web, mobile).
//!
//! Teams refuses a message over 28 KB, and a refused card is lost (a retry
//! cannot fix it): texts are cut so the body stays under [`MAX_BYTES`] (an
//! alert's description can be any length).

use crate::Event;
use crate::message::{Summary, summarize};
use serde_json::{Value, json};

/// The media type of an Adaptive Card attachment.
pub const ADAPTIVE_CARD: &str = "application/vnd.microsoft.card.adaptive";
/// The Adaptive Card JSON schema URL.
pub const SCHEMA: &str = "http://adaptivecards.io/schemas/adaptive-card.json";

/// Largest body sent, with room to spare under Teams' 28 KB.
pub const MAX_BYTES: usize = 24 * 1024;

/// The webhook body for an event.
pub fn payload(ev: &Event) -> Value {
    render(&summarize(ev), ev.kind.is_bad())
}

/// The webhook body for a summary; `bad` colours the title red. Texts are
/// cut further until the body fits [`MAX_BYTES`].
pub fn render(s: &Summary, bad: bool) -> Value {
    let mut limits = (4000, 1000);
    loop {
        let body = render_within(s, bad, limits);
        let fits = serde_json::to_vec(&body).map_or(true, |b| b.len() <= MAX_BYTES);
        if fits || limits.0 < 50 {
            return body;
        }
        limits = (limits.0 / 2, limits.1 / 2);
    }
}

/// The body with the reason cut to `reason_max` characters and each fact's
/// value to `fact_max`.
fn render_within(s: &Summary, bad: bool, (reason_max, fact_max): (usize, usize)) -> Value {
    let facts: Vec<Value> = s
        .facts
        .iter()
        .map(|(k, v)| json!({"title": k, "value": s.short(v, fact_max)}))
        .collect();
    let mut card = json!({
        "type": "AdaptiveCard",
        "$schema": SCHEMA,
        "version": "1.4",
        "msteams": {"width": "Full"},
        "body": [
            {"type": "TextBlock", "text": s.short(&s.title, 300), "weight": "Bolder", "size": "Medium", "wrap": true,
             "color": if bad { "Attention" } else { "Good" }},
            {"type": "TextBlock", "text": s.short(&s.reason, reason_max), "wrap": true},
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_card_stays_under_teams_size_limit_whatever_the_alert_says() {
        let s = Summary {
            title: "ultra-boost: SLO alert".into(),
            reason: "é".repeat(100_000),
            facts: vec![("Alert", "x".repeat(50_000)), ("Build", "86".into())],
            link: Some("https://guard.example.com/rollouts/7".into()),
        };
        let body = render(&s, true);
        let bytes = serde_json::to_vec(&body).expect("json").len();
        assert!(bytes <= MAX_BYTES, "{bytes} bytes");
        let card = &body["attachments"][0]["content"];
        assert!(
            card["body"][1]["text"]
                .as_str()
                .is_some_and(|t| t.ends_with('…'))
        );
        assert_eq!(card["body"][2]["facts"][1]["value"], "86");

        let short = Summary {
            reason: "build 3 burns 5 % of requests".into(),
            ..s
        };
        let card = render(&short, true)["attachments"][0]["content"].clone();
        assert_eq!(card["body"][1]["text"], "build 3 burns 5 % of requests");
    }
}
