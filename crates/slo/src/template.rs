//! The one piece of Go `text/template` that SLI queries use: `{{.window}}`.
//!
//! Sloth renders every query as a Go template with a single variable,
//! `window`. We accept exactly what that template can contain in practice:
//! `{{.window}}` with optional spaces and `-` trim markers, and template
//! comments. Any other action is rejected with a clear error instead of being
//! half-interpreted.

/// Why a query template cannot be rendered.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TemplateError {
    /// `{{` without a closing `}}`.
    #[error("unclosed template action starting at byte {0}: a `{{{{` has no matching `}}}}`")]
    Unclosed(usize),
    /// An action other than `{{.window}}`.
    #[error("unsupported template action `{{{{{0}}}}}`: the only variable is {{{{.window}}}}")]
    Unsupported(String),
}

/// Whether the query uses the window variable the way Sloth requires:
/// `{{`, optional spaces, `.window`, optional spaces, `}}`.
pub fn has_window_var(query: &str) -> bool {
    let mut rest = query;
    while let Some(start) = rest.find("{{") {
        let after = rest[start + 2..].trim_start_matches(' ');
        if let Some(tail) = after.strip_prefix(".window")
            && tail.trim_start_matches(' ').starts_with("}}")
        {
            return true;
        }
        rest = &rest[start + 2..];
    }
    false
}

/// Renders `query` with `window` in place of every `{{.window}}`.
pub fn render(query: &str, window: &str) -> Result<String, TemplateError> {
    let mut out = String::with_capacity(query.len() + 8);
    let mut rest = query;
    let mut consumed = 0;
    let mut trim_next = false;
    while let Some(start) = rest.find("{{") {
        let mut text = &rest[..start];
        if trim_next {
            text = text.trim_start();
        }
        let Some(len) = rest[start + 2..].find("}}") else {
            return Err(TemplateError::Unclosed(consumed + start));
        };
        let inner = &rest[start + 2..start + 2 + len];
        // Go: "{{- " trims the whitespace before, " -}}" the whitespace after.
        let (inner, trim_left) = match inner.strip_prefix('-') {
            Some(i) if i.starts_with(char::is_whitespace) => (i, true),
            _ => (inner, false),
        };
        let (inner, trim_right) = match inner.strip_suffix('-') {
            Some(i) if i.ends_with(char::is_whitespace) => (i, true),
            _ => (inner, false),
        };
        if trim_left {
            text = text.trim_end();
        }
        out.push_str(text);
        let action = inner.trim();
        if action == ".window" {
            out.push_str(window);
        } else if !(action.starts_with("/*") && action.ends_with("*/")) {
            return Err(TemplateError::Unsupported(inner.to_string()));
        }
        trim_next = trim_right;
        let advance = start + 2 + len + 2;
        consumed += advance;
        rest = &rest[advance..];
    }
    out.push_str(if trim_next { rest.trim_start() } else { rest });
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn renders_window() {
        assert_eq!(render("rate(x[{{.window}}])", "5m").unwrap(), "rate(x[5m])");
        assert_eq!(
            render("rate(x[{{ .window }}])", "1h").unwrap(),
            "rate(x[1h])"
        );
        assert_eq!(render("a {{- .window -}} b", "1h").unwrap(), "a1hb");
        assert_eq!(render("a{{/* c */}}b", "1h").unwrap(), "ab");
        assert_eq!(render("no vars", "1h").unwrap(), "no vars");
        assert!(matches!(
            render("x{{.foo}}", "1h"),
            Err(TemplateError::Unsupported(_))
        ));
        assert!(matches!(
            render("x{{.window", "1h"),
            Err(TemplateError::Unclosed(1))
        ));
    }

    #[test]
    fn detects_window_like_sloth() {
        assert!(has_window_var("x[{{.window}}]"));
        assert!(has_window_var("x[{{  .window }}]"));
        assert!(!has_window_var("x[{{.windows}}]"));
        assert!(!has_window_var("x[5m]"));
        assert!(!has_window_var("x[{{- .window}}]"));
    }

    proptest! {
        #![proptest_config(ProptestConfig { rng_seed: proptest::test_runner::RngSeed::Fixed(3), ..ProptestConfig::default() })]
        #[test]
        fn never_panics(s in "(\\PC|\\{\\{|\\}\\}|-| ){0,40}") {
            let _ = render(&s, "5m");
            let _ = has_window_var(&s);
        }
    }
}
