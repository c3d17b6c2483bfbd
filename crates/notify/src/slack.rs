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

/// Slack mrkdwn needs `&`, `<` and `>` escaped; nothing else. Unescaped,
/// an alert's "p99 > 500ms" renders wrongly and a `<!channel>` in it pings
/// the whole channel.
pub fn escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

/// [`escape`]d, at most `max` characters: cut before an entity, never inside
/// one, with `…` for what was left out.
fn escape_within(text: &str, max: usize) -> String {
    let full = escape(text);
    if full.chars().count() <= max {
        return full;
    }
    let mut out = String::new();
    let mut used = 0;
    let mut buf = [0u8; 4];
    for c in text.chars() {
        let piece: &str = match c {
            '&' => "&amp;",
            '<' => "&lt;",
            '>' => "&gt;",
            c => c.encode_utf8(&mut buf),
        };
        let len = piece.chars().count();
        if used + len > max.saturating_sub(1) {
            break;
        }
        out.push_str(piece);
        used += len;
    }
    out.push('…');
    out
}

/// The webhook body for an event.
pub fn payload(ev: &Event) -> Value {
    render(&summarize(ev))
}

/// The webhook body for a summary.
pub fn render(s: &Summary) -> Value {
    let mut blocks = vec![
        json!({"type": "header", "text": {"type": "plain_text", "text": s.short(&s.title, 150), "emoji": true}}),
        json!({"type": "section", "text": {"type": "mrkdwn", "text": escape_within(&s.reason, 3000)}}),
    ];
    for chunk in s.facts.chunks(10) {
        let fields: Vec<Value> = chunk
            .iter()
            .map(|(k, v)| {
                let name = format!("*{}*\n", escape(k));
                let room = 2000usize.saturating_sub(name.chars().count());
                json!({"type": "mrkdwn", "text": format!("{name}{}", escape_within(v, room))})
            })
            .collect();
        blocks.push(json!({"type": "section", "fields": fields}));
    }
    if let Some(link) = &s.link {
        blocks.push(json!({
            "type": "context",
            "elements": [{"type": "mrkdwn", "text": format!("<{}|guard status page>", escape(link))}]
        }));
    }
    json!({"text": escape(&s.plain()), "blocks": blocks})
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_text_is_escaped_and_cut_between_entities() {
        let s = Summary {
            title: "ultra-boost build 3 reverted".into(),
            reason: "<!channel> p99 > 500ms & rising".into(),
            facts: vec![("Alert", "a < b".into())],
            link: None,
        };
        let v = render(&s);
        let text = v["text"].as_str().unwrap_or_default();
        assert!(
            text.contains("&lt;!channel&gt; p99 &gt; 500ms &amp; rising"),
            "{text}"
        );
        assert!(!text.contains('<'), "{text}");
        assert_eq!(v["blocks"][2]["fields"][0]["text"], "*Alert*\na &lt; b");

        let long = escape_within(&"&".repeat(1000), 3000);
        assert!(long.chars().count() <= 3000);
        assert!(long.ends_with("&amp;…"), "{}", &long[long.len() - 12..]);
        assert_eq!(escape_within("a & b", 3000), "a &amp; b");
    }
}
