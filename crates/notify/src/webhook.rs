//! The generic webhook: guard POSTs a JSON event and signs it, the way Stripe
//! and GitHub sign theirs, so a receiver can check it came from guard and is
//! not a replay.
//!
//! # Signature scheme
//!
//! Each request carries
//!
//! - `X-Guard-Timestamp: <unix seconds>`: when this attempt was sent;
//! - `X-Guard-Signature: sha256=<hex>`: HMAC-SHA256, keyed with the shared
//!   secret, of the bytes `"{timestamp}.{body}"` (the timestamp header value,
//!   one `.`, then the raw request body);
//! - `X-Guard-Event: <kind>` (`reverted`, `incident_opened`, ...) and
//!   `X-Guard-Delivery: <id>`, derived from the event itself: the same on
//!   every retry, and when a restarted guard sends again what it had not
//!   seen answered. The body's `"id"` holds the same value and, unlike the
//!   headers, is covered by the signature: a receiver that drops duplicates
//!   should do it by the body's `id`, so a replayed request with a new
//!   header value is still seen as the duplicate it is.
//!
//! The key is the UTF-8 bytes of the configured secret (`notify.webhook.secret`
//! / `GUARD_WEBHOOK_SECRET`). A receiver recomputes the HMAC over the raw body
//! (before any JSON parsing), compares in constant time, and rejects
//! timestamps older than a few minutes: [`verify`] does all three. Retries are
//! signed afresh with a new timestamp, so a slow retry still passes a short
//! max-age.
//!
//! ```
//! use std::time::Duration;
//! # let secret = "whsec_example";
//! # let body = br#"{"type":"rollout.promoted"}"#;
//! # let ts = 1_700_000_000;
//! # let (ts_header, sig_header) = (ts.to_string(), notify::webhook::sign(secret.as_bytes(), ts, body));
//! # let now = ts + 2;
//! // In the receiver: the two header values, the raw body, the clock.
//! notify::webhook::verify(secret.as_bytes(), &ts_header, &sig_header, body, now, Duration::from_secs(300))
//!     .expect("a request guard signed");
//! ```
//!
//! The same check in a shell: `printf '%s.%s' "$ts" "$body" | openssl dgst -sha256 -hmac "$secret"`.
//!
//! # Body
//!
//! ```json
//! {"id": "…", "type": "rollout.reverted", "sent_at": "2026-11-27T02:00:00Z",
//!  "title": "…", "text": "…", "event": { … guard's Event … }}
//! ```
//!
//! Incident events also carry `"fingerprint"`, Alertmanager's alert fingerprint.

use crate::message::summarize;
use crate::{Event, EventKind};
use hmac::{Hmac, Mac};
use serde_json::{Value, json};
use sha2::Sha256;
use std::time::Duration;

/// Header with the unix-seconds timestamp that is part of the signed bytes.
pub const TIMESTAMP_HEADER: &str = "X-Guard-Timestamp";
/// Header with `sha256=<hex>`.
pub const SIGNATURE_HEADER: &str = "X-Guard-Signature";
/// Header with the event kind.
pub const EVENT_HEADER: &str = "X-Guard-Event";
/// Header with the delivery id (stable across retries and restarts).
pub const DELIVERY_HEADER: &str = "X-Guard-Delivery";

type HmacSha256 = Hmac<Sha256>;

/// The `X-Guard-Delivery` id of `ev`: 32 hex digits of the SHA-256 of the
/// event's JSON (and of the incident `fingerprint`, if any), so the same
/// event, however often it is sent, has the same id, and two events differ.
pub fn delivery_id(ev: &Event, fingerprint: Option<&str>) -> String {
    use sha2::Digest;
    let mut hash = Sha256::new();
    // Our own plain data type: encoding cannot fail; if it somehow did, the
    // kind and times still tell events apart.
    match serde_json::to_vec(ev) {
        Ok(bytes) => hash.update(&bytes),
        Err(_) => hash.update(
            format!(
                "{}/{}/{}/{}/{:?}",
                ev.kind.as_str(),
                ev.service,
                ev.environment,
                ev.started_at_ms,
                ev.ended_at_ms
            )
            .as_bytes(),
        ),
    }
    if let Some(fp) = fingerprint {
        hash.update(b"\0");
        hash.update(fp.as_bytes());
    }
    hex::encode(&hash.finalize()[..16])
}

/// The `X-Guard-Signature` value for a body sent at `timestamp` (unix seconds).
pub fn sign(secret: &[u8], timestamp: i64, body: &[u8]) -> String {
    // HMAC takes keys of any length, so this never errs; if it somehow did, an
    // empty signature fails verification rather than passing it.
    let Ok(mut mac) = HmacSha256::new_from_slice(secret) else {
        return "sha256=".to_owned();
    };
    mac.update(timestamp.to_string().as_bytes());
    mac.update(b".");
    mac.update(body);
    format!("sha256={}", hex::encode(mac.finalize().into_bytes()))
}

/// Why a signed request was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum VerifyError {
    /// `X-Guard-Timestamp` is not an integer number of seconds.
    #[error("X-Guard-Timestamp is not unix seconds")]
    BadTimestamp,
    /// `X-Guard-Signature` is not `sha256=` followed by 64 hex digits.
    #[error("X-Guard-Signature is not `sha256=<64 hex digits>`")]
    BadSignatureFormat,
    /// The timestamp is further from now than the allowed age (a replay, or a clock far off).
    #[error(
        "signature timestamp is {age_secs} s away from now, more than the {max_secs} s allowed"
    )]
    Stale {
        /// Distance between the timestamp and now, seconds.
        age_secs: i64,
        /// The allowed distance.
        max_secs: u64,
    },
    /// The HMAC does not match: wrong secret, or the body was changed.
    #[error("signature does not match the body")]
    Mismatch,
}

/// Checks a request guard signed: the header values, the raw body, the
/// receiver's clock (`now` in unix seconds) and the largest accepted age.
/// The comparison runs in constant time.
pub fn verify(
    secret: &[u8],
    timestamp_header: &str,
    signature_header: &str,
    body: &[u8],
    now: i64,
    max_age: Duration,
) -> Result<(), VerifyError> {
    let ts: i64 = timestamp_header
        .trim()
        .parse()
        .map_err(|_| VerifyError::BadTimestamp)?;
    let hex_sig = signature_header
        .trim()
        .strip_prefix("sha256=")
        .ok_or(VerifyError::BadSignatureFormat)?;
    let sig = hex::decode(hex_sig).map_err(|_| VerifyError::BadSignatureFormat)?;
    if sig.len() != 32 {
        return Err(VerifyError::BadSignatureFormat);
    }
    let age = now.saturating_sub(ts).saturating_abs();
    if age as u64 > max_age.as_secs() {
        return Err(VerifyError::Stale {
            age_secs: age,
            max_secs: max_age.as_secs(),
        });
    }
    let mut mac = HmacSha256::new_from_slice(secret).map_err(|_| VerifyError::Mismatch)?;
    mac.update(ts.to_string().as_bytes());
    mac.update(b".");
    mac.update(body);
    mac.verify_slice(&sig).map_err(|_| VerifyError::Mismatch)
}

/// Byte comparison whose time does not depend on where the inputs differ
/// (bearer tokens). Lengths are not secret.
pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// The JSON body for an event.
pub fn payload(ev: &Event, delivery_id: &str, sent_at: &str, fingerprint: Option<&str>) -> Value {
    let s = summarize(ev);
    let family = match ev.kind {
        EventKind::IncidentOpened | EventKind::IncidentResolved => "incident",
        _ => "rollout",
    };
    let kind = ev.kind.as_str().trim_start_matches("incident_");
    let mut body = json!({
        "id": delivery_id,
        "type": format!("{family}.{kind}"),
        "sent_at": sent_at,
        "title": s.title,
        "text": s.plain(),
        "event": ev,
    });
    if let (Some(fp), Some(obj)) = (fingerprint, body.as_object_mut()) {
        obj.insert("fingerprint".into(), Value::String(fp.to_owned()));
    }
    body
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sign_then_verify_round_trips() {
        let body = br#"{"a":1}"#;
        let sig = sign(b"s3cret", 1_700_000_000, body);
        assert!(sig.starts_with("sha256=") && sig.len() == 7 + 64);
        assert_eq!(
            verify(
                b"s3cret",
                "1700000000",
                &sig,
                body,
                1_700_000_010,
                Duration::from_secs(300)
            ),
            Ok(())
        );
    }

    #[test]
    fn a_delivery_id_is_the_events_own() {
        let ev = crate::message::tests::reverted();
        let id = delivery_id(&ev, None);
        assert_eq!(id.len(), 32);
        assert!(id.bytes().all(|b| b.is_ascii_hexdigit()));
        // The same event, sent again (a retry, a resend after a restart): same id.
        let again: Event = serde_json::from_str(&serde_json::to_string(&ev).unwrap()).unwrap();
        assert_eq!(delivery_id(&again, None), id);
        // Another event, or the same one for another incident: another id.
        let held = Event {
            kind: EventKind::Held,
            ..ev.clone()
        };
        assert_ne!(delivery_id(&held, None), id);
        assert_ne!(delivery_id(&ev, Some("a1b2")), id);
        assert_ne!(
            delivery_id(&ev, Some("a1b2")),
            delivery_id(&ev, Some("c3d4"))
        );
    }

    #[test]
    fn known_vector() {
        // HMAC-SHA256(key="key", "1.x") computed independently with
        // `printf '1.x' | openssl dgst -sha256 -hmac key`.
        assert_eq!(
            sign(b"key", 1, b"x"),
            "sha256=fc4913c41a7bf793267e2a384f3261c9436ec2cd097bd745e7b0d99113f510ec".to_owned()
        );
    }

    #[test]
    fn tampering_replay_and_garbage_are_refused() {
        let body = b"payload";
        let sig = sign(b"k", 100, body);
        let age = Duration::from_secs(300);
        assert_eq!(
            verify(b"k", "100", &sig, b"payloaD", 100, age),
            Err(VerifyError::Mismatch)
        );
        assert_eq!(
            verify(b"other", "100", &sig, body, 100, age),
            Err(VerifyError::Mismatch)
        );
        assert_eq!(
            verify(b"k", "101", &sig, body, 101, age),
            Err(VerifyError::Mismatch)
        );
        assert!(matches!(
            verify(b"k", "100", &sig, body, 100 + 301, age),
            Err(VerifyError::Stale { age_secs: 301, .. })
        ));
        assert_eq!(
            verify(b"k", "abc", &sig, body, 100, age),
            Err(VerifyError::BadTimestamp)
        );
        assert_eq!(
            verify(b"k", "100", "md5=00", body, 100, age),
            Err(VerifyError::BadSignatureFormat)
        );
        assert_eq!(
            verify(b"k", "100", "sha256=zz", body, 100, age),
            Err(VerifyError::BadSignatureFormat)
        );
    }

    #[test]
    fn constant_time_eq_compares() {
        assert!(constant_time_eq(b"abc", b"abc"));
        assert!(!constant_time_eq(b"abc", b"abd"));
        assert!(!constant_time_eq(b"abc", b"ab"));
    }
}
