//! A parser for the Prometheus text exposition format (0.0.4), which also
//! reads the sample lines of OpenMetrics 1.0 text (`# EOF`, exemplars).
//!
//! Only samples are kept (`# HELP`/`# TYPE` are not needed to read counters,
//! histograms and gauges by name). A malformed line is an error for the whole
//! scrape: half a scrape would give inconsistent deltas.

/// One sample: `name{labels} value`.
#[derive(Clone, Debug, PartialEq)]
pub struct Sample {
    pub name: String,
    /// In exposition order.
    pub labels: Vec<(String, String)>,
    pub value: f64,
}

impl Sample {
    /// The value of label `name`, if present.
    pub fn label(&self, name: &str) -> Option<&str> {
        self.labels
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    /// A stable key of the label set without the labels named in `skip`.
    pub fn series_key(&self, skip: &[&str]) -> String {
        let mut pairs: Vec<&(String, String)> = self
            .labels
            .iter()
            .filter(|(k, _)| !skip.contains(&k.as_str()))
            .collect();
        pairs.sort();
        let mut key = String::new();
        for (k, v) in pairs {
            key.push_str(k);
            key.push('\u{1f}');
            key.push_str(v);
            key.push('\u{1e}');
        }
        key
    }
}

/// A line that is not valid exposition format.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("line {line}: {reason}: {text:?}")]
pub struct ParseError {
    pub line: usize,
    pub reason: &'static str,
    pub text: String,
}

/// Parses a whole exposition.
pub fn parse(body: &str) -> Result<Vec<Sample>, ParseError> {
    let mut out = Vec::new();
    for (i, raw) in body.lines().enumerate() {
        let line = raw
            .trim_start_matches([' ', '\t'])
            .trim_end_matches(['\r', ' ', '\t']);
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let err = |reason| ParseError {
            line: i + 1,
            reason,
            text: raw.chars().take(200).collect(),
        };
        out.push(parse_sample(line).map_err(err)?);
    }
    Ok(out)
}

fn is_name_start(c: char) -> bool {
    c.is_ascii_alphabetic() || c == '_' || c == ':'
}

fn is_name_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '_' || c == ':'
}

fn parse_sample(line: &str) -> Result<Sample, &'static str> {
    let mut chars = line.char_indices().peekable();
    let name_end = match chars.peek() {
        Some(&(_, c)) if is_name_start(c) => {
            let mut end = line.len();
            for (i, c) in line.char_indices() {
                if !is_name_char(c) {
                    end = i;
                    break;
                }
            }
            end
        }
        _ => return Err("a sample must start with a metric name"),
    };
    let name = line[..name_end].to_string();
    let mut rest = &line[name_end..];
    let mut labels = Vec::new();
    if let Some(after) = rest.strip_prefix('{') {
        let (parsed, remaining) = parse_labels(after)?;
        labels = parsed;
        rest = remaining;
    }
    if !rest.starts_with([' ', '\t']) {
        return Err("expected a space before the value");
    }
    // OpenMetrics exemplars follow " # "; they are not part of the sample.
    let rest = match rest.find(" # ") {
        Some(i) => &rest[..i],
        None => rest,
    };
    let mut fields = rest.split_ascii_whitespace();
    let value_text = fields.next().ok_or("missing value")?;
    let value = parse_value(value_text).ok_or("value is not a number")?;
    if let Some(ts) = fields.next()
        && ts.parse::<f64>().is_err()
    {
        return Err("timestamp is not a number");
    }
    if fields.next().is_some() {
        return Err("unexpected text after the timestamp");
    }
    Ok(Sample {
        name,
        labels,
        value,
    })
}

type Labels = Vec<(String, String)>;

/// Parses `name="value",...}` and returns the labels and the text after `}`.
fn parse_labels(mut s: &str) -> Result<(Labels, &str), &'static str> {
    let mut labels = Vec::new();
    loop {
        s = s.trim_start_matches([' ', '\t']);
        if let Some(rest) = s.strip_prefix('}') {
            return Ok((labels, rest));
        }
        let end = s
            .find(|c: char| !is_name_char(c))
            .ok_or("unterminated label set")?;
        if end == 0 || !s.starts_with(is_name_start) {
            return Err("expected a label name");
        }
        let key = s[..end].to_string();
        s = s[end..].trim_start_matches([' ', '\t']);
        s = s
            .strip_prefix('=')
            .ok_or("expected '=' after a label name")?;
        s = s.trim_start_matches([' ', '\t']);
        s = s.strip_prefix('"').ok_or("a label value must be quoted")?;
        let mut value = String::new();
        let mut escaped = false;
        let mut close = None;
        for (i, c) in s.char_indices() {
            if escaped {
                match c {
                    'n' => value.push('\n'),
                    '\\' => value.push('\\'),
                    '"' => value.push('"'),
                    other => {
                        // Not an escape the format defines: keep it as written.
                        value.push('\\');
                        value.push(other);
                    }
                }
                escaped = false;
            } else if c == '\\' {
                escaped = true;
            } else if c == '"' {
                close = Some(i);
                break;
            } else {
                value.push(c);
            }
        }
        let close = close.ok_or("unterminated label value")?;
        labels.push((key, value));
        s = s[close + 1..].trim_start_matches([' ', '\t']);
        if let Some(rest) = s.strip_prefix(',') {
            s = rest;
        } else if !s.starts_with('}') {
            return Err("expected ',' or '}' after a label value");
        }
    }
}

fn parse_value(text: &str) -> Option<f64> {
    match text {
        "+Inf" | "Inf" | "+inf" | "inf" => Some(f64::INFINITY),
        "-Inf" | "-inf" => Some(f64::NEG_INFINITY),
        "NaN" | "nan" => Some(f64::NAN),
        _ => text.parse::<f64>().ok().filter(|v| v.is_finite()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_counters_histograms_gauges_and_comments() {
        let text = "# HELP ultra_boost_http_requests_total Requests.\n\
# TYPE ultra_boost_http_requests_total counter\n\
ultra_boost_http_requests_total{method=\"GET\",route=\"/\",code=\"200\"} 1027\n\
ultra_boost_http_requests_total{method=\"GET\",route=\"/\",code=\"500\"} 3 1700000000000\n\
x_bucket{le=\"0.2\"} 5\n\
x_bucket{le=\"+Inf\"} 7\n\
up 1\n\
\n\
g -1.5e3\n";
        let s = parse(text).unwrap();
        assert_eq!(s.len(), 6);
        assert_eq!(s[0].name, "ultra_boost_http_requests_total");
        assert_eq!(s[0].label("code"), Some("200"));
        assert_eq!(s[0].value, 1027.0);
        assert_eq!(s[1].value, 3.0);
        assert_eq!(s[3].label("le"), Some("+Inf"));
        assert!(s[4].labels.is_empty());
        assert_eq!(s[5].value, -1500.0);
    }

    #[test]
    fn unescapes_label_values() {
        let s = parse("m{path=\"a\\\\b\",q=\"say \\\"hi\\\"\",nl=\"x\\ny\",other=\"\\t\"} 1\n")
            .unwrap();
        assert_eq!(s[0].label("path"), Some("a\\b"));
        assert_eq!(s[0].label("q"), Some("say \"hi\""));
        assert_eq!(s[0].label("nl"), Some("x\ny"));
        assert_eq!(s[0].label("other"), Some("\\t"));
    }

    #[test]
    fn braces_and_commas_inside_values_do_not_confuse_it() {
        let s = parse("m{a=\"}{,\",b=\"\"} 2\n").unwrap();
        assert_eq!(s[0].label("a"), Some("}{,"));
        assert_eq!(s[0].label("b"), Some(""));
        assert_eq!(s[0].value, 2.0);
    }

    #[test]
    fn openmetrics_eof_exemplars_and_trailing_comma() {
        let text = "# TYPE c counter\nc_total{a=\"1\",} 4 # {trace_id=\"x\"} 1.0 1.5\n# EOF\n";
        let s = parse(text).unwrap();
        assert_eq!(s.len(), 1);
        assert_eq!(s[0].value, 4.0);
    }

    #[test]
    fn special_values() {
        let s = parse("a +Inf\nb -Inf\nc NaN\n").unwrap();
        assert!(s[0].value.is_infinite() && s[0].value > 0.0);
        assert!(s[1].value.is_infinite() && s[1].value < 0.0);
        assert!(s[2].value.is_nan());
    }

    #[test]
    fn malformed_lines_are_errors_with_the_line_number() {
        for bad in [
            "m{a=\"1\" 2\n",
            "m{a=1} 2\n",
            "m 2 x\n",
            "m\n",
            "m{a=\"1\"}2\n",
            "9m 1\n",
            "m abc\n",
            "m{a=\"unterminated} 1\n",
        ] {
            let err = parse(&format!("ok 1\n{bad}")).unwrap_err();
            assert_eq!(err.line, 2, "{bad:?}: {err}");
        }
    }

    #[test]
    fn series_key_ignores_order_and_skipped_labels() {
        let a = parse("m{x=\"1\",le=\"0.2\",y=\"2\"} 1\n").unwrap();
        let b = parse("m{y=\"2\",x=\"1\",le=\"+Inf\"} 1\n").unwrap();
        assert_eq!(a[0].series_key(&["le"]), b[0].series_key(&["le"]));
        assert_ne!(a[0].series_key(&[]), b[0].series_key(&[]));
    }
}
