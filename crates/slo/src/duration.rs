//! Prometheus durations (`5m`, `1h30m`, `4w`), parsed and printed exactly as
//! `github.com/prometheus/common/model.Duration` does, because Sloth names its
//! recording rules after them (`slo:sli_error:ratio_rate30d`).

use std::fmt;

/// A Prometheus duration with millisecond precision.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct PromDuration {
    millis: u64,
}

/// Why a duration string is not a Prometheus duration.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DurationError {
    /// The text does not follow `[Ny][Nw][Nd][Nh][Nm][Ns][Nms]` (units in that
    /// order, each at most once).
    #[error("not a valid duration string: {0:?} (expected e.g. 30d, 4w, 1h30m, 5m)")]
    Syntax(String),
    /// The duration does not fit in 64 bits of milliseconds.
    #[error("duration out of range: {0:?}")]
    Overflow(String),
}

const MS_PER_S: u64 = 1_000;
const MS_PER_M: u64 = 60 * MS_PER_S;
const MS_PER_H: u64 = 60 * MS_PER_M;
const MS_PER_D: u64 = 24 * MS_PER_H;
const MS_PER_W: u64 = 7 * MS_PER_D;
const MS_PER_Y: u64 = 365 * MS_PER_D;

/// Units in the only order Prometheus accepts them.
const UNITS: [(&str, u64); 7] = [
    ("y", MS_PER_Y),
    ("w", MS_PER_W),
    ("d", MS_PER_D),
    ("h", MS_PER_H),
    ("m", MS_PER_M),
    ("s", MS_PER_S),
    ("ms", 1),
];

impl PromDuration {
    /// A duration of `millis` milliseconds.
    pub const fn from_millis(millis: u64) -> Self {
        Self { millis }
    }

    /// A duration of whole days.
    pub const fn from_days(days: u64) -> Self {
        Self {
            millis: days * MS_PER_D,
        }
    }

    /// As people write SLO periods: whole days in days (`28d`, where
    /// Prometheus prints `4w`), anything else as Prometheus prints it.
    pub fn in_days(self) -> String {
        if self.millis > 0 && self.millis.is_multiple_of(MS_PER_D) {
            format!("{}d", self.millis / MS_PER_D)
        } else {
            self.to_string()
        }
    }

    /// Milliseconds.
    pub const fn as_millis(self) -> u64 {
        self.millis
    }

    /// Seconds, as a float.
    pub fn as_secs_f64(self) -> f64 {
        self.millis as f64 / 1_000.0
    }

    /// Hours exactly as Go's `time.Duration.Hours()` computes them (whole
    /// hours plus the remainder in nanoseconds), so that burn-rate factors
    /// derived from them carry the same rounding as Sloth's.
    pub fn go_hours(self) -> f64 {
        const NS_PER_H: u128 = 3_600_000_000_000;
        let ns = u128::from(self.millis) * 1_000_000;
        let hours = ns / NS_PER_H;
        let rem = ns % NS_PER_H;
        hours as f64 + rem as f64 / (60.0 * 60.0 * 1e9)
    }

    /// Parses `30d`, `1h30m`, `4w`, `0`, exactly as Prometheus does.
    pub fn parse(s: &str) -> Result<Self, DurationError> {
        if s == "0" {
            return Ok(Self::default());
        }
        if s.is_empty() {
            return Err(DurationError::Syntax(s.to_string()));
        }
        let bytes = s.as_bytes();
        let mut pos = 0;
        let mut next_unit = 0;
        let mut total: u64 = 0;
        while pos < bytes.len() {
            let start = pos;
            while pos < bytes.len() && bytes[pos].is_ascii_digit() {
                pos += 1;
            }
            if pos == start {
                return Err(DurationError::Syntax(s.to_string()));
            }
            let number: u64 = s[start..pos]
                .parse()
                .map_err(|_| DurationError::Overflow(s.to_string()))?;
            // Longest unit match first so that "ms" is not read as "m" + "s".
            let rest = &s[pos..];
            let unit = if rest.starts_with("ms") {
                "ms"
            } else {
                let Some(c) = rest.get(..1) else {
                    return Err(DurationError::Syntax(s.to_string()));
                };
                c
            };
            let Some(idx) = UNITS.iter().position(|(u, _)| *u == unit) else {
                return Err(DurationError::Syntax(s.to_string()));
            };
            if idx < next_unit {
                return Err(DurationError::Syntax(s.to_string()));
            }
            next_unit = idx + 1;
            pos += unit.len();
            total = number
                .checked_mul(UNITS[idx].1)
                .and_then(|v| total.checked_add(v))
                .ok_or_else(|| DurationError::Overflow(s.to_string()))?;
        }
        // Prometheus stores durations as signed nanoseconds.
        if u128::from(total) * 1_000_000 > i64::MAX as u128 {
            return Err(DurationError::Overflow(s.to_string()));
        }
        Ok(Self { millis: total })
    }
}

impl fmt::Display for PromDuration {
    /// Prints as Prometheus does: years and weeks only when they divide the
    /// duration exactly (`90d`, not `12w6d`), then d, h, m, s, ms.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut ms = self.millis;
        if ms == 0 {
            return f.write_str("0s");
        }
        for (i, (unit, mult)) in UNITS.iter().enumerate() {
            let exact_only = i < 2;
            if exact_only && !ms.is_multiple_of(*mult) {
                continue;
            }
            let v = ms / mult;
            if v > 0 {
                write!(f, "{v}{unit}")?;
                ms -= v * mult;
            }
        }
        Ok(())
    }
}

impl std::str::FromStr for PromDuration {
    type Err = DurationError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn parses_and_prints_like_prometheus() {
        for (text, printed) in [
            ("5m", "5m"),
            ("30d", "30d"),
            ("28d", "4w"),
            ("7d", "1w"),
            ("36h", "1d12h"),
            ("1h30m", "1h30m"),
            ("90d", "90d"),
            ("365d", "1y"),
            ("1500ms", "1s500ms"),
            ("0", "0s"),
        ] {
            let d = PromDuration::parse(text).unwrap();
            assert_eq!(d.to_string(), printed, "{text}");
        }
        for bad in [
            "",
            "5",
            "m",
            "1m1h",
            "1.5h",
            "-1m",
            "1mm",
            "1d1d",
            " 1m",
            "99999999999999999999y",
        ] {
            assert!(
                PromDuration::parse(bad).is_err(),
                "{bad:?} should not parse"
            );
        }
    }

    #[test]
    fn go_hours_matches_time_duration_hours() {
        assert_eq!(PromDuration::parse("30d").unwrap().go_hours(), 720.0);
        assert_eq!(PromDuration::parse("5m").unwrap().go_hours(), 5.0 / 60.0);
    }

    proptest! {
        #![proptest_config(ProptestConfig { rng_seed: proptest::test_runner::RngSeed::Fixed(11), ..ProptestConfig::default() })]
        /// Printing then parsing gives the same duration back.
        #[test]
        fn print_parse_round_trip(ms in 0u64..9_000_000_000_000) {
            let d = PromDuration::from_millis(ms);
            prop_assert_eq!(PromDuration::parse(&d.to_string()).unwrap(), d);
        }

        /// Arbitrary text never panics the parser.
        #[test]
        fn never_panics(s in "\\PC{0,12}") {
            let _ = PromDuration::parse(&s);
        }
    }
}
