//! Multiwindow multi-burn-rate alert windows per SLO period: Sloth's
//! `AlertWindows` catalog (`apiVersion: sloth.slok.dev/v1`,
//! `kind: AlertWindows`), with the SRE workbook's 28d and 30d windows built
//! in, and the burn-rate factors Sloth derives from them.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::duration::PromDuration;

/// One alert of the matrix: the share of the period's budget it tolerates
/// spending within `long_window`, checked over a short and a long window.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Window {
    /// Percent of the period's budget consumed within `long_window` (2 = 2 %).
    pub error_budget_percent: f64,
    /// The window that stops the alert soon after the problem is gone.
    pub short_window: PromDuration,
    /// The window over which the budget consumption is measured.
    pub long_window: PromDuration,
}

/// The four windows of an SLO period: page (quick, slow), ticket (quick, slow).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Windows {
    pub slo_period: PromDuration,
    pub page_quick: Window,
    pub page_slow: Window,
    pub ticket_quick: Window,
    pub ticket_slow: Window,
}

impl Windows {
    /// The burn-rate factor that spends `w.error_budget_percent` of the
    /// period's budget within `w.long_window`, computed with Sloth's float
    /// operations in Sloth's order so the printed factors are identical.
    pub fn burn_rate_factor(&self, w: &Window) -> f64 {
        let hours_required = w.error_budget_percent * self.slo_period.go_hours() / 100.0;
        hours_required / w.long_window.go_hours()
    }

    /// Every distinct window (short and long), in Sloth's order: page quick
    /// short/long, page slow short/long, ticket quick short/long, ticket slow
    /// short/long, sorted ascending, duplicates removed.
    pub fn alert_windows(&self) -> Vec<PromDuration> {
        let mut all = vec![
            self.page_quick.short_window,
            self.page_quick.long_window,
            self.page_slow.short_window,
            self.page_slow.long_window,
            self.ticket_quick.short_window,
            self.ticket_quick.long_window,
            self.ticket_slow.short_window,
            self.ticket_slow.long_window,
        ];
        all.sort();
        all.dedup();
        all
    }
}

/// Why an `AlertWindows` catalog could not be loaded.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum WindowsError {
    /// A catalog file or directory could not be read.
    #[error("{path}: cannot read alert windows: {reason}")]
    Read { path: PathBuf, reason: String },
    /// A file is not a valid `AlertWindows` document.
    #[error("{path}: invalid alert windows: {reason}")]
    Invalid { path: PathBuf, reason: String },
    /// Two files define different windows for the same SLO period.
    #[error(
        "{path}: the {period} SLO period is already defined by another file, with different windows"
    )]
    Conflict { path: PathBuf, period: PromDuration },
    /// The catalog has no windows for the requested SLO period.
    #[error(
        "no alert windows for the {} SLO period (known periods: {known}); add an AlertWindows file with --slo-period-windows-path",
        period.in_days()
    )]
    UnknownPeriod { period: PromDuration, known: String },
}

/// Alert windows by SLO period.
#[derive(Debug, Clone, PartialEq)]
pub struct Catalog {
    by_period: BTreeMap<PromDuration, Windows>,
}

const GOOGLE_28D: &str = include_str!("windows/google-28d.yaml");
const GOOGLE_30D: &str = include_str!("windows/google-30d.yaml");

impl Catalog {
    /// Sloth's built-in catalog: the SRE workbook's windows for 28d and 30d.
    pub fn builtin() -> Self {
        let mut by_period = BTreeMap::new();
        for (name, text) in [
            ("google-28d.yaml", GOOGLE_28D),
            ("google-30d.yaml", GOOGLE_30D),
        ] {
            // The embedded files are fixed at build time and covered by the
            // `builtin_catalog_loads` test; a failure here is a build defect.
            if let Ok(w) = parse_windows(Path::new(name), text) {
                by_period.insert(w.slo_period, w);
            }
        }
        Self { by_period }
    }

    /// A catalog from every `*.yml`/`*.yaml` file under `dir` (recursively),
    /// replacing the built-in one, as Sloth's `--slo-period-windows-path`.
    pub fn from_dir(dir: &Path) -> Result<Self, WindowsError> {
        let mut files = Vec::new();
        collect_yaml_files(dir, &mut files).map_err(|e| WindowsError::Read {
            path: dir.to_path_buf(),
            reason: e.to_string(),
        })?;
        let mut by_period: BTreeMap<PromDuration, Windows> = BTreeMap::new();
        for path in files {
            let text = std::fs::read_to_string(&path).map_err(|e| WindowsError::Read {
                path: path.clone(),
                reason: e.to_string(),
            })?;
            let w = parse_windows(&path, &text)?;
            match by_period.get(&w.slo_period) {
                Some(existing) if *existing != w => {
                    return Err(WindowsError::Conflict {
                        path,
                        period: w.slo_period,
                    });
                }
                Some(_) => {}
                None => {
                    by_period.insert(w.slo_period, w);
                }
            }
        }
        Ok(Self { by_period })
    }

    /// The windows for an SLO period.
    pub fn get(&self, period: PromDuration) -> Result<&Windows, WindowsError> {
        self.by_period
            .get(&period)
            .ok_or_else(|| WindowsError::UnknownPeriod {
                period,
                known: self.periods_list(),
            })
    }

    /// The SLO periods the catalog knows, e.g. `28d, 30d`.
    pub fn periods_list(&self) -> String {
        if self.by_period.is_empty() {
            return "none".to_string();
        }
        self.by_period
            .keys()
            .map(|p| p.in_days())
            .collect::<Vec<_>>()
            .join(", ")
    }
}

/// Files with a YAML extension under `dir`, recursively, in lexical order
/// (as Go's `filepath.Walk`).
pub(crate) fn collect_yaml_files(dir: &Path, out: &mut Vec<PathBuf>) -> std::io::Result<()> {
    let mut entries: Vec<_> = std::fs::read_dir(dir)?.collect::<Result<_, _>>()?;
    entries.sort_by_key(|e| e.file_name());
    for entry in entries {
        let path = entry.path();
        if entry.file_type()?.is_dir() {
            collect_yaml_files(&path, out)?;
        } else if is_yaml_path(&path) {
            out.push(path);
        }
    }
    Ok(())
}

/// Whether a path ends in `.yml` or `.yaml` (any case, as Sloth).
pub(crate) fn is_yaml_path(path: &Path) -> bool {
    path.extension()
        .and_then(|e| e.to_str())
        .map(|e| e.eq_ignore_ascii_case("yml") || e.eq_ignore_ascii_case("yaml"))
        .unwrap_or(false)
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawWindows {
    #[serde(default)]
    api_version: String,
    #[serde(default)]
    kind: String,
    #[serde(default)]
    spec: RawSpec,
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase")]
struct RawSpec {
    #[serde(default)]
    slo_period: Option<String>,
    #[serde(default)]
    page: RawQuickSlow,
    #[serde(default)]
    ticket: RawQuickSlow,
}

#[derive(Deserialize, Default)]
struct RawQuickSlow {
    #[serde(default)]
    quick: RawWindow,
    #[serde(default)]
    slow: RawWindow,
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase")]
struct RawWindow {
    #[serde(default)]
    error_budget_percent: f64,
    #[serde(default)]
    short_window: Option<String>,
    #[serde(default)]
    long_window: Option<String>,
}

fn parse_windows(path: &Path, text: &str) -> Result<Windows, WindowsError> {
    let invalid = |reason: String| WindowsError::Invalid {
        path: path.to_path_buf(),
        reason,
    };
    let raw: RawWindows = serde_saphyr::from_str(text).map_err(|e| invalid(e.to_string()))?;
    if raw.api_version != "sloth.slok.dev/v1" || raw.kind != "AlertWindows" {
        return Err(invalid(format!(
            "expected apiVersion sloth.slok.dev/v1 and kind AlertWindows, got apiVersion {:?} and kind {:?}",
            raw.api_version, raw.kind
        )));
    }
    let dur = |field: &str, v: &Option<String>| -> Result<PromDuration, WindowsError> {
        let d = match v {
            Some(s) => PromDuration::parse(s).map_err(|e| invalid(format!("{field}: {e}")))?,
            None => PromDuration::default(),
        };
        if d.as_millis() == 0 {
            return Err(invalid(format!("{field} is required")));
        }
        Ok(d)
    };
    let window = |name: &str, w: &RawWindow| -> Result<Window, WindowsError> {
        let long_window = dur(&format!("spec.{name}.longWindow"), &w.long_window)?;
        let short_window = dur(&format!("spec.{name}.shortWindow"), &w.short_window)?;
        if w.error_budget_percent == 0.0 || !w.error_budget_percent.is_finite() {
            return Err(invalid(format!(
                "spec.{name}.errorBudgetPercent is required"
            )));
        }
        Ok(Window {
            error_budget_percent: w.error_budget_percent,
            short_window,
            long_window,
        })
    };
    Ok(Windows {
        slo_period: dur("spec.sloPeriod", &raw.spec.slo_period)?,
        page_quick: window("page.quick", &raw.spec.page.quick)?,
        page_slow: window("page.slow", &raw.spec.page.slow)?,
        ticket_quick: window("ticket.quick", &raw.spec.ticket.quick)?,
        ticket_slow: window("ticket.slow", &raw.spec.ticket.slow)?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builtin_catalog_loads() {
        let c = Catalog::builtin();
        let w30 = c.get(PromDuration::from_days(30)).unwrap();
        assert_eq!(w30.burn_rate_factor(&w30.page_quick), 14.4);
        assert_eq!(w30.burn_rate_factor(&w30.page_slow), 6.0);
        assert_eq!(w30.burn_rate_factor(&w30.ticket_quick), 3.0);
        assert_eq!(w30.burn_rate_factor(&w30.ticket_slow), 1.0);
        // Sloth's own 28d expectations: 13.44 and 5.6000000000000005.
        let w28 = c.get(PromDuration::from_days(28)).unwrap();
        assert_eq!(
            crate::gofmt::float_g(w28.burn_rate_factor(&w28.page_quick)),
            "13.44"
        );
        assert_eq!(
            crate::gofmt::float_g(w28.burn_rate_factor(&w28.page_slow)),
            "5.6000000000000005"
        );
        let unknown = c.get(PromDuration::from_days(7)).unwrap_err();
        assert!(
            unknown
                .to_string()
                .starts_with("no alert windows for the 7d SLO period (known periods: 28d, 30d)"),
            "{unknown}"
        );
        let names: Vec<String> = w30.alert_windows().iter().map(|d| d.to_string()).collect();
        assert_eq!(names, ["5m", "30m", "1h", "2h", "6h", "1d", "3d"]);
    }

    #[test]
    fn rejects_wrong_kind_and_missing_fields() {
        let p = Path::new("x.yaml");
        assert!(parse_windows(p, "apiVersion: sloth.slok.dev/v1\nkind: Other\n").is_err());
        assert!(
            parse_windows(
                p,
                "apiVersion: sloth.slok.dev/v1\nkind: AlertWindows\nspec: {sloPeriod: 7d}\n"
            )
            .is_err()
        );
        assert!(parse_windows(p, ": : :").is_err());
    }
}
