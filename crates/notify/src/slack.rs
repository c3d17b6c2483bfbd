//! Slack incoming webhooks: a Block Kit message with a plain `text` fallback.
//!
//! Slack takes `{"text": …, "blocks": [ … ]}` on the webhook URL and answers
//! `200` with the body `ok`; errors come back as `400 invalid_payload`,
//! `403 action_prohibited`, `404 channel_not_found`, `410 channel_is_archived`,
//! `429` with `Retry-After`, or `500 rollup_error`. When `blocks` are present
//! `text` is what notifications and screen readers show, so it carries the
//! whole message in plain words.
//!
//! Limits kept here: a `header` block takes 150 characters of `plain_text`, a
//! `section` at most 10 `fields` of at most 2000 characters each.

use crate::Event;
use crate::message::{Summary, summarize};
use serde_json::{Value, json};

/// Slack mrkdwn needs `&`, `<` and `>` escaped; nothing else.
pub fn escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

/// The webhook body for an event.
pub fn payload(ev: &Event) -> Value {
    render(&summarize(ev))
}

/// The webhook body for a summary.
pub fn render(s: &Summary) -> Value {
    let mut blocks = vec![
        json!({"type": "header", "text": {"type": "plain_text", "text": s.short(&s.title, 150), "emoji": true}}),
        json!({"type": "section", "text": {"type": "mrkdwn", "text": s.short(&escape(&s.reason), 3000)}}),
    ];
    for chunk in s.facts.chunks(10) {
        let fields: Vec<Value> = chunk
            .iter()
            .map(|(k, v)| json!({"type": "mrkdwn", "text": s.short(&format!("*{}*\n{}", k, escape(v)), 2000)}))
            .collect();
        blocks.push(json!({"type": "section", "fields": fields}));
    }
    if let Some(link) = &s.link {
        blocks.push(json!({
            "type": "context",
            "elements": [{"type": "mrkdwn", "text": format!("<{}|guard status page>", escape(link))}]
        }));
    }
    json!({"text": s.plain(), "blocks": blocks})
}
