//! A string that must never be printed: webhook URLs (Slack's and Teams' URLs
//! *are* the credential), API tokens, signing keys.
//!
//! `Debug` and `Display` print `[redacted]`; the value is reachable only through
//! [`Secret::expose`], so every place that uses it is easy to find.

use serde::{Deserialize, Deserializer};
use std::fmt;

/// A secret string with a redacting `Debug`/`Display`.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    /// Wraps a value.
    pub fn new(value: impl Into<String>) -> Self {
        Secret(value.into())
    }

    /// The value itself, for building a request. Never log what this returns.
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// True when the value is empty (an unset environment variable, `""` in YAML).
    pub fn is_empty(&self) -> bool {
        self.0.trim().is_empty()
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret([redacted])")
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("[redacted]")
    }
}

impl<'de> Deserialize<'de> for Secret {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        String::deserialize(d).map(Secret)
    }
}

/// Replaces every occurrence of the known secrets in a text with `[redacted]`.
///
/// Error texts from the HTTP stack may quote a URL (reqwest does unless told
/// `without_url`); this is the last line of defence before a text reaches a log,
/// a metric or guard's history.
#[derive(Clone, Debug, Default)]
pub struct Redactor {
    secrets: Vec<Secret>,
}

impl Redactor {
    /// A redactor that knows these secrets (empty ones are ignored).
    pub fn new(secrets: impl IntoIterator<Item = Secret>) -> Self {
        let mut secrets: Vec<Secret> = secrets.into_iter().filter(|s| !s.is_empty()).collect();
        // Longest first, so a URL is replaced whole before a token inside it.
        secrets.sort_by_key(|s| std::cmp::Reverse(s.0.len()));
        Redactor { secrets }
    }

    /// The text with every known secret replaced.
    pub fn clean(&self, text: &str) -> String {
        let mut out = text.to_owned();
        for s in &self.secrets {
            if out.contains(s.expose()) {
                out = out.replace(s.expose(), "[redacted]");
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_and_display_hide_the_value() {
        let s = Secret::new("https://hooks.slack.com/services/T0/B0/XYZ");
        assert_eq!(format!("{s:?}"), "Secret([redacted])");
        assert_eq!(format!("{s}"), "[redacted]");
        assert!(!format!("{:?}", Some(&s)).contains("hooks"));
    }

    #[test]
    fn redactor_replaces_known_secrets() {
        let r = Redactor::new([
            Secret::new("tok123"),
            Secret::new(""),
            Secret::new("https://x/tok123"),
        ]);
        assert_eq!(
            r.clean("error for url (https://x/tok123) and tok123"),
            "error for url ([redacted]) and [redacted]"
        );
    }
}
