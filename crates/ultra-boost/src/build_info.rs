//! What is running: version, commit, build number and the active fault
//! injection, exported as `ultra_boost_build_info` and answered on `GET /`.
//!
//! `version` is `CARGO_PKG_VERSION`. `commit` and `build` are the `GIT_COMMIT`
//! and `BUILD_NUMBER` environment variables seen by the compiler (CI sets them),
//! and the same variables in the process environment override them at run time
//! (so an image built without them can still be labelled by its deployment).
//! Missing values read `unknown`.

/// Build identity plus the fault injection this process runs with.
#[derive(Clone, Debug, PartialEq)]
pub struct BuildInfo {
    /// Crate version.
    pub version: &'static str,
    /// Git commit the binary was built from.
    pub commit: String,
    /// CI build number.
    pub build: String,
    /// Share of `GET /` answered 500.
    pub fault_error_rate: f64,
    /// Milliseconds added to `GET /`.
    pub fault_latency_ms: u64,
}

const UNKNOWN: &str = "unknown";

impl BuildInfo {
    /// Build-time values, overridden by the run-time environment.
    pub fn detect(fault_error_rate: f64, fault_latency_ms: u64) -> BuildInfo {
        let pick = |runtime: Option<String>, compiled: Option<&'static str>| {
            runtime
                .filter(|v| !v.trim().is_empty())
                .or_else(|| compiled.filter(|v| !v.trim().is_empty()).map(str::to_owned))
                .unwrap_or_else(|| UNKNOWN.to_owned())
        };
        BuildInfo {
            version: env!("CARGO_PKG_VERSION"),
            commit: pick(std::env::var("GIT_COMMIT").ok(), option_env!("GIT_COMMIT")),
            build: pick(
                std::env::var("BUILD_NUMBER").ok(),
                option_env!("BUILD_NUMBER"),
            ),
            fault_error_rate,
            fault_latency_ms,
        }
    }

    /// Label set of `ultra_boost_build_info`, in contract order.
    pub fn labels(&self) -> Vec<(&'static str, String)> {
        vec![
            ("version", self.version.to_owned()),
            ("commit", self.commit.clone()),
            ("build", self.build.clone()),
            ("fault_error_rate", self.fault_error_rate.to_string()),
            ("fault_latency_ms", self.fault_latency_ms.to_string()),
        ]
    }

    /// The body of `GET /`.
    pub fn root_body(&self) -> String {
        serde_json::json!({
            "service": "ultra-boost",
            "version": self.version,
            "build": self.build,
            "commit": self.commit,
        })
        .to_string()
    }

    /// Whether any fault injection is on.
    pub fn faults_on(&self) -> bool {
        self.fault_error_rate > 0.0 || self.fault_latency_ms > 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn root_body_is_json_with_identity() {
        let b = BuildInfo {
            version: "0.1.0",
            commit: "c\"1".to_owned(),
            build: "7".to_owned(),
            fault_error_rate: 0.5,
            fault_latency_ms: 0,
        };
        let v: serde_json::Value = serde_json::from_str(&b.root_body()).unwrap();
        assert_eq!(v["service"], "ultra-boost");
        assert_eq!(v["commit"], "c\"1");
        assert_eq!(v["build"], "7");
        assert!(b.faults_on());
        assert_eq!(b.labels()[3], ("fault_error_rate", "0.5".to_owned()));
    }
}
