//! `guard.yaml`: what guard runs and how it judges.
//!
//! Three stages, as in vector's config: [`RawConfig`] is what serde reads
//! (with source positions kept for the values that validation checks);
//! [`RawConfig::validate`] collects **every** problem (file, line, field,
//! reason, an example of a good value) instead of stopping at the first; the
//! result is a [`Config`] the rest of guard builds from and never re-checks.
//!
//! See `examples/guard.yaml` for a documented example. `guard demo` needs no
//! file: it uses [`DEMO_YAML`] through the same path.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;
use serde_saphyr::Spanned;

use crate::platform::{Build, Strategy};

/// A config that could not be read or does not validate.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("{file}: cannot read: {cause}")]
    Read { file: String, cause: std::io::Error },
    /// The YAML does not parse or does not fit the schema.
    #[error("{file}{}: {detail}", line.map(|l| format!(":{l}")).unwrap_or_default())]
    Parse {
        file: String,
        line: Option<u64>,
        detail: String,
    },
    /// The YAML parses but values are wrong; every problem is listed.
    #[error("{file}: {}:\n{}", count(problems.len(), "problem"), problems.iter().map(|p| format!("  {p}")).collect::<Vec<_>>().join("\n"))]
    Invalid {
        file: String,
        problems: Vec<Problem>,
    },
}

/// "1 problem", "2 problems".
fn count(n: usize, noun: &str) -> String {
    format!("{n} {noun}{}", if n == 1 { "" } else { "s" })
}

/// One validation problem.
#[derive(Clone, Debug, PartialEq)]
pub struct Problem {
    pub line: Option<u64>,
    /// Dotted path, e.g. `services[0].slos[1].objective`.
    pub field: String,
    pub reason: String,
}

impl std::fmt::Display for Problem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.line {
            Some(l) => write!(f, "line {l}: {}: {}", self.field, self.reason),
            None => write!(f, "{}: {}", self.field, self.reason),
        }
    }
}

// ---------------------------------------------------------------- raw (serde)

/// `guard.yaml` as written.
#[derive(Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RawConfig {
    /// SQLite file for history (relative paths are relative to the config file).
    pub store: Option<Spanned<String>>,
    pub api: RawApi,
    pub engine: RawEngine,
    pub signals: RawSignals,
    /// The judge's policy (`judge::Policy`; every field optional), field by
    /// field so that each problem is reported with its line.
    pub policy: BTreeMap<String, Spanned<serde_json::Value>>,
    /// Notification targets (`notify::config::NotifyConfig`); `GUARD_*` env overrides.
    pub notify: notify::config::NotifyConfig,
    pub services: Vec<RawService>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RawApi {
    /// Address of guard's HTTP API and `/metrics`. Default `127.0.0.1:7700`.
    pub listen: Option<Spanned<String>>,
    /// File holding the bearer token (env `GUARD_API_TOKEN` wins).
    pub token_file: Option<Spanned<String>>,
    /// Base URL people reach guard at: notifications link to the rollout's
    /// status page (`{public_url}/rollouts/{id}`).
    pub public_url: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RawEngine {
    /// Verification tick. Default `1s`.
    pub tick: Option<Spanned<String>>,
    /// A source silent this long holds the rollout. Default `5s`.
    pub stale_after: Option<Spanned<String>>,
    /// Window of the pre-rollout baseline. Default `5m`.
    pub baseline_window: Option<Spanned<String>>,
    /// How often a step's judge is saved for a restart. Default `5s`.
    pub checkpoint_every: Option<Spanned<String>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RawSignals {
    /// `scrape` (default: guard reads the replicas' `/metrics`) or `prometheus`.
    pub source: Option<Spanned<String>>,
    pub prometheus: Option<RawPrometheus>,
    /// Scrape interval/timeout for the `scrape` source. Default `1s`.
    pub scrape_interval: Option<Spanned<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawPrometheus {
    /// Base URL of a PromQL HTTP API, e.g. `http://127.0.0.1:9090`.
    pub url: Spanned<String>,
    /// Label that names the build on every series. Default `build`.
    pub build_label: Option<String>,
    /// Per-query timeout. Default `2s`.
    pub timeout: Option<Spanned<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawService {
    pub name: Spanned<String>,
    /// Replicas per release on the local platform. Default 2. (Typed when
    /// checked, so a wrong type is one problem among the others.)
    pub replicas: Option<Spanned<serde_json::Value>>,
    /// Default strategy for `guard deploy`: `rolling` (default) or `canary`.
    pub strategy: Option<Spanned<String>>,
    /// Canary router weights, percent, e.g. `[5, 25, 50]`.
    pub canary_steps: Option<Spanned<serde_json::Value>>,
    /// Post-promote watch. Default `60s`.
    pub watch: Option<Spanned<String>>,
    /// How every build of this service runs (local platform).
    #[serde(default)]
    pub build: RawBuildTemplate,
    /// Per-build-number overrides (merged over `build`).
    #[serde(default)]
    pub builds: BTreeMap<String, RawBuildTemplate>,
    #[serde(default)]
    pub environments: Vec<RawEnvironment>,
    #[serde(default)]
    pub slos: Vec<RawSlo>,
}

/// A command line and environment. `{build}` in any string becomes the build
/// number; `{ultra_boost}` becomes the located `ultra-boost` binary;
/// `{unix_socket}` and `{handoff_socket}` are left for the local platform,
/// which puts socket paths there: the router relays requests to the replica
/// over the first and hands it client connections over the second.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RawBuildTemplate {
    pub command: Option<Vec<String>>,
    pub env: BTreeMap<String, String>,
    pub commit: Option<String>,
    pub image: Option<String>,
}

/// What guard fills in in a build's command, environment and image.
const PLACEHOLDERS: [&str; 4] = ["build", "ultra_boost", "unix_socket", "handoff_socket"];

impl RawBuildTemplate {
    /// Every string a placeholder may be in, with its field name.
    fn strings(&self) -> Vec<(String, &str)> {
        let mut out = vec![];
        for (k, arg) in self.command.iter().flatten().enumerate() {
            out.push((format!("command[{k}]"), arg.as_str()));
        }
        for (k, v) in &self.env {
            out.push((format!("env.{k}"), v.as_str()));
        }
        if let Some(image) = &self.image {
            out.push(("image".to_string(), image.as_str()));
        }
        out
    }
}

/// The first `{name}` in `text` (a lowercase identifier in braces) that is
/// not one of [`PLACEHOLDERS`]: a misspelt one would reach the process
/// literally. Other braces (JSON, `${shell}` variables) are left alone.
fn unknown_placeholder(text: &str) -> Option<&str> {
    let mut rest = text;
    while let Some(open) = rest.find('{') {
        let after = &rest[open + 1..];
        let Some(close) = after.find('}') else { break };
        let name = &after[..close];
        let identifier = !name.is_empty()
            && name.starts_with(|c: char| c.is_ascii_lowercase())
            && name
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_');
        let shell_variable = rest[..open].ends_with('$');
        if identifier && !shell_variable && !PLACEHOLDERS.contains(&name) {
            return Some(name);
        }
        rest = &after[close + 1..];
    }
    None
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawEnvironment {
    pub name: Spanned<String>,
    /// Where the local platform's router listens for this service's traffic.
    pub router_listen: Option<Spanned<String>>,
    /// Build started when guard first serves this environment (no history yet).
    pub initial_build: Option<String>,
    /// Kubernetes (`guard controller`): the namespace of this environment's
    /// Deployment. Default: the environment's name.
    pub namespace: Option<Spanned<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawSlo {
    pub name: Spanned<String>,
    /// Percent, e.g. `99.9`.
    pub objective: Spanned<serde_json::Value>,
    /// Default `30d`.
    pub period: Option<Spanned<String>>,
    #[serde(default)]
    pub sli: RawSli,
    /// How the `scrape` source reads this SLO from a replica's `/metrics`;
    /// default: derived from `sli` with ultra-boost's metric names.
    pub scrape: Option<crate::signals::scrape::ScrapeSli>,
    /// PromQL selectors of cumulative counters for the `prometheus` source.
    pub prometheus: Option<RawPromQueries>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RawSli {
    /// `availability` (default), `latency` or `freshness`.
    #[serde(rename = "type")]
    pub kind: Option<Spanned<String>>,
    /// Latency: the histogram bucket bound a good request stays under (`200ms`);
    /// freshness: the maximum age of the last successful background run.
    pub threshold: Option<Spanned<String>>,
    /// Only this route counts (e.g. `/`); default every route but the probes and `/metrics`.
    pub route: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawPromQueries {
    /// All events, e.g. `ultra_boost_http_requests_total{route="/"}`.
    pub total: Spanned<String>,
    /// Bad events (give `bad` or `good`).
    pub bad: Option<Spanned<String>>,
    /// Good events.
    pub good: Option<Spanned<String>>,
}

// ---------------------------------------------------------------- validated

/// A validated config.
#[derive(Clone, Debug)]
pub struct Config {
    /// The file it came from (`<embedded demo>` for the demo).
    pub file: String,
    pub store: PathBuf,
    pub api: ApiConfig,
    pub engine: EngineConfig,
    pub signals: SignalsConfig,
    pub policy: judge::Policy,
    pub notify: notify::config::NotifyConfig,
    pub services: Vec<ServiceConfig>,
}

#[derive(Clone, Debug)]
pub struct ApiConfig {
    pub listen: SocketAddr,
    pub token_file: Option<PathBuf>,
    pub public_url: Option<String>,
}

#[derive(Clone, Debug)]
pub struct EngineConfig {
    pub tick: Duration,
    pub stale_after: Duration,
    pub baseline_window: Duration,
    /// At most this much of a step's evidence is lost in a crash.
    pub checkpoint_every: Duration,
}

#[derive(Clone, Debug)]
pub enum SignalsConfig {
    Scrape {
        interval: Duration,
    },
    Prometheus {
        url: String,
        build_label: String,
        timeout: Duration,
    },
}

#[derive(Clone, Debug)]
pub struct ServiceConfig {
    pub name: String,
    pub replicas: u32,
    pub strategy: Strategy,
    /// Shares (0..1).
    pub canary_steps: Vec<f64>,
    pub watch: Duration,
    pub build: RawBuildTemplate,
    pub builds: BTreeMap<String, RawBuildTemplate>,
    pub environments: Vec<EnvironmentConfig>,
    pub slos: Vec<SloConfig>,
}

#[derive(Clone, Debug)]
pub struct EnvironmentConfig {
    pub name: String,
    pub router_listen: Option<SocketAddr>,
    pub initial_build: Option<String>,
    /// Kubernetes namespace (default: the environment's name).
    pub namespace: Option<String>,
}

/// What makes an event bad.
#[derive(Clone, Debug, PartialEq)]
pub enum SliConfig {
    Availability {
        route: Option<String>,
    },
    Latency {
        threshold: Duration,
        route: Option<String>,
    },
    Freshness {
        threshold: Duration,
    },
}

#[derive(Clone, Debug)]
pub struct SloConfig {
    pub name: String,
    /// Ratio, e.g. 0.999.
    pub objective: f64,
    pub period: Duration,
    pub sli: SliConfig,
    pub scrape: crate::signals::scrape::ScrapeSli,
    pub prometheus: Option<PromQueries>,
}

#[derive(Clone, Debug, PartialEq)]
pub struct PromQueries {
    pub total: String,
    /// `true`: `query` counts bad events; `false`: good events.
    pub query_is_bad: bool,
    pub query: String,
}

/// In a `prometheus:` query, replaced by the environment being judged.
pub const ENVIRONMENT_PLACEHOLDER: &str = "{environment}";

impl SloConfig {
    /// The SLO as the judge sees it.
    pub fn judge_spec(&self) -> judge::SloSpec {
        judge::SloSpec {
            name: self.name.clone(),
            objective: self.objective,
            period_seconds: self.period.as_secs_f64(),
            kind: match &self.sli {
                SliConfig::Availability { .. } => judge::SliKind::Availability,
                SliConfig::Latency { threshold, .. } => judge::SliKind::Latency {
                    threshold_seconds: threshold.as_secs_f64(),
                },
                SliConfig::Freshness { threshold } => judge::SliKind::Freshness {
                    threshold_seconds: threshold.as_secs_f64(),
                },
            },
        }
    }
}

impl ServiceConfig {
    /// The [`Build`] for a build number: the template with the per-build
    /// override merged over it, `{build}` and `{ultra_boost}` substituted.
    pub fn build_for(&self, number: &str, ultra_boost: &str) -> Build {
        let mut t = self.build.clone();
        if let Some(o) = self.builds.get(number) {
            if let Some(c) = &o.command {
                t.command = Some(c.clone());
            }
            t.env.extend(o.env.clone());
            if o.commit.is_some() {
                t.commit = o.commit.clone();
            }
            if o.image.is_some() {
                t.image = o.image.clone();
            }
        }
        let subst = |s: &str| {
            s.replace("{build}", number)
                .replace("{ultra_boost}", ultra_boost)
        };
        Build {
            number: number.to_string(),
            commit: t.commit.as_deref().map(subst),
            image: t.image.as_deref().map(subst),
            command: t
                .command
                .unwrap_or_default()
                .iter()
                .map(|s| subst(s))
                .collect(),
            env: t.env.iter().map(|(k, v)| (k.clone(), subst(v))).collect(),
        }
    }
}

// ---------------------------------------------------------------- parse + validate

/// Reads, parses and validates a config file.
pub fn load(path: &Path) -> Result<Config, ConfigError> {
    let file = path.display().to_string();
    let text = std::fs::read_to_string(path).map_err(|cause| ConfigError::Read {
        file: file.clone(),
        cause,
    })?;
    let base = path.parent().map(Path::to_path_buf).unwrap_or_default();
    parse(&text, &file, &base)
}

/// Parses and validates YAML text; relative paths resolve against `base`.
pub fn parse(text: &str, file: &str, base: &Path) -> Result<Config, ConfigError> {
    let raw: RawConfig = serde_saphyr::from_str(text).map_err(|e| ConfigError::Parse {
        file: file.to_string(),
        line: e.location().map(|l| l.line()),
        detail: yaml_error_detail(&e, file),
    })?;
    raw.validate(file, base)
}

/// A YAML error as people read it: the message, then the lines around it
/// under the file's own name; advice meant for the library's callers
/// (which option to set, which function to call) is replaced by advice for
/// the file's author.
fn yaml_error_detail(e: &serde_saphyr::Error, file: &str) -> String {
    let rendered = e.render_with_options(serde_saphyr::render_options! {
        source_name: Some(file),
    });
    let mut rendered = rendered.strip_prefix("error: ").unwrap_or(&rendered);
    // "line 3 column 3: ": the header already says `file:3`.
    if rendered.starts_with("line ")
        && let Some((position, rest)) = rendered.split_once(": ")
        && position.contains(" column ")
    {
        rendered = rest;
    }
    rendered
        .replace(
            ", set DuplicateKeyPolicy in Options if acceptable",
            " (each key may appear once in a mapping)",
        )
        .replace(
            "multiple YAML documents detected; use from_str_multiple or from_str_multiple_with_options",
            "more than one YAML document (`---`): guard.yaml is one document",
        )
}

struct Check {
    problems: Vec<Problem>,
}

impl Check {
    /// `v` as a `T`, or a problem naming `field` and what it should be.
    fn typed<T: serde::de::DeserializeOwned>(
        &mut self,
        v: &Spanned<serde_json::Value>,
        field: &str,
        expected: &str,
    ) -> Option<T> {
        match serde_json::from_value(v.value.clone()) {
            Ok(t) => Some(t),
            Err(_) => {
                let quoted = v
                    .value
                    .as_str()
                    .is_some_and(|text| serde_json::from_str::<T>(text).is_ok());
                let hint = if quoted {
                    " (a text: write it without quotes)"
                } else {
                    ""
                };
                self.push(
                    line_of(v),
                    field,
                    format!("must be {expected}; got {}{hint}", v.value),
                );
                None
            }
        }
    }

    fn push(&mut self, line: Option<u64>, field: impl Into<String>, reason: impl Into<String>) {
        self.problems.push(Problem {
            line,
            field: field.into(),
            reason: reason.into(),
        });
    }

    fn duration(
        &mut self,
        v: &Option<Spanned<String>>,
        field: &str,
        default: Duration,
    ) -> Duration {
        let Some(v) = v else { return default };
        match humantime::parse_duration(v.value.trim()) {
            Ok(d) if !d.is_zero() => d,
            Ok(_) => {
                self.push(
                    Some(v.referenced.line()),
                    field,
                    "must be longer than zero, e.g. `1s`",
                );
                default
            }
            Err(e) => {
                self.push(
                    Some(v.referenced.line()),
                    field,
                    format!(
                        "not a duration ({e}); write e.g. `500ms`, `1s`, `5m`, `30d`; got {:?}",
                        v.value
                    ),
                );
                default
            }
        }
    }

    fn addr(&mut self, v: &Spanned<String>, field: &str) -> Option<SocketAddr> {
        match listen_address(&v.value) {
            Ok(a) => Some(a),
            Err(reason) => {
                self.push(Some(v.referenced.line()), field, reason);
                None
            }
        }
    }
}

/// An address to listen on: `IP:PORT` (`127.0.0.1:7700`, `[::1]:0`) or
/// `HOST:PORT` resolved now (`localhost:7700`; its IPv4 address when it has
/// one, as most people mean 127.0.0.1 by it). Also clap's parser for the
/// `--listen` flags.
pub fn listen_address(text: &str) -> Result<SocketAddr, String> {
    use std::net::ToSocketAddrs;
    if let Ok(a) = text.parse::<SocketAddr>() {
        return Ok(a);
    }
    let example = "e.g. `127.0.0.1:7700` or `localhost:7700`";
    if text
        .rsplit_once(':')
        .is_none_or(|(host, port)| host.is_empty() || port.parse::<u16>().is_err())
    {
        return Err(format!(
            "not an address to listen on (HOST:PORT or IP:PORT, {example}); got {text:?}"
        ));
    }
    let resolved: Vec<SocketAddr> = text
        .to_socket_addrs()
        .map_err(|e| format!("cannot resolve {text:?} ({e}); {example}"))?
        .collect();
    resolved
        .iter()
        .find(|a| a.is_ipv4())
        .or_else(|| resolved.first())
        .copied()
        .ok_or_else(|| format!("{text:?} resolves to no address; {example}"))
}

/// What a policy field holds, from its default's JSON, in a user's words.
fn shape_of(default: &serde_json::Value) -> &'static str {
    use serde_json::Value;
    match default {
        Value::Number(n) if n.is_u64() => "a whole number, 0 or more",
        Value::Number(_) => "a number",
        // The optional fields (`blame_alpha`, `evidence_cap_per_second`).
        Value::Null => "a number, or left out for the default",
        Value::Array(_) => "a list of numbers, e.g. [2, 6, 14.4]",
        Value::Bool(_) => "true or false",
        Value::String(_) | Value::Object(_) => "as documented in examples/guard.yaml",
    }
}

/// The judge's policy from `policy:` over the defaults; an unknown field, a
/// wrong type and a value out of range are each reported with their line.
fn read_policy(raw: &BTreeMap<String, Spanned<serde_json::Value>>, c: &mut Check) -> judge::Policy {
    use serde_json::Value;
    let Ok(Value::Object(mut merged)) = serde_json::to_value(judge::Policy::default()) else {
        return judge::Policy::default();
    };
    let known: Vec<String> = merged.keys().cloned().collect();
    let mut lines: BTreeMap<&str, Option<u64>> = BTreeMap::new();
    for (key, v) in raw {
        let line = line_of(v);
        let field = format!("policy.{key}");
        if !merged.contains_key(key) {
            c.push(
                line,
                field,
                format!("unknown field; expected one of {}", known.join(", ")),
            );
            continue;
        }
        // Each field alone over the defaults, so a wrong type is reported
        // for that field and the others are still checked.
        let mut alone = merged.clone();
        alone.insert(key.clone(), v.value.clone());
        match serde_json::from_value::<judge::Policy>(Value::Object(alone)) {
            Ok(_) => {
                merged.insert(key.clone(), v.value.clone());
                lines.insert(key.as_str(), line);
            }
            Err(e) => {
                let why = match merged.get(key).map(shape_of) {
                    Some(shape) => format!("must be {shape}; got {}", v.value),
                    None => e.to_string(),
                };
                c.push(line, field, why)
            }
        }
    }
    let policy: judge::Policy = serde_json::from_value(Value::Object(merged)).unwrap_or_default();
    for problem in judge::policy_problems(&policy) {
        if let judge::JudgeError::Policy { field, reason } = problem {
            c.push(
                lines.get(field).copied().flatten(),
                format!("policy.{field}"),
                reason,
            );
        }
    }
    policy
}

fn line_of<T>(s: &Spanned<T>) -> Option<u64> {
    // A default (absent) value has no position.
    let l = s.referenced.line();
    (l > 0).then_some(l)
}

impl RawConfig {
    /// Checks every value; all problems are reported together.
    pub fn validate(self, file: &str, base: &Path) -> Result<Config, ConfigError> {
        let mut c = Check { problems: vec![] };
        let store = match &self.store {
            Some(s) if s.value.trim().is_empty() => {
                c.push(
                    line_of(s),
                    "store",
                    "must be a file path, e.g. `/var/lib/guard/guard.db`",
                );
                PathBuf::new()
            }
            Some(s) => base.join(&s.value),
            None => base.join("guard.db"),
        };
        let listen = match &self.api.listen {
            Some(l) => c.addr(l, "api.listen"),
            None => Some(SocketAddr::from(([127, 0, 0, 1], 7700))),
        };
        let api = ApiConfig {
            listen: listen.unwrap_or_else(|| SocketAddr::from(([127, 0, 0, 1], 7700))),
            token_file: self.api.token_file.as_ref().map(|t| base.join(&t.value)),
            public_url: self.api.public_url.clone(),
        };
        let engine = EngineConfig {
            tick: c.duration(&self.engine.tick, "engine.tick", Duration::from_secs(1)),
            stale_after: c.duration(
                &self.engine.stale_after,
                "engine.stale_after",
                Duration::from_secs(5),
            ),
            baseline_window: c.duration(
                &self.engine.baseline_window,
                "engine.baseline_window",
                Duration::from_secs(300),
            ),
            checkpoint_every: c.duration(
                &self.engine.checkpoint_every,
                "engine.checkpoint_every",
                Duration::from_secs(5),
            ),
        };
        let source = self
            .signals
            .source
            .as_ref()
            .map(|s| (s.value.as_str(), line_of(s)));
        let signals = match source {
            None | Some(("scrape", _)) => SignalsConfig::Scrape {
                interval: c.duration(
                    &self.signals.scrape_interval,
                    "signals.scrape_interval",
                    Duration::from_secs(1),
                ),
            },
            Some(("prometheus", line)) => match &self.signals.prometheus {
                Some(p) => {
                    let url = p.url.value.trim_end_matches('/').to_string();
                    if !(url.starts_with("http://") || url.starts_with("https://")) {
                        c.push(
                            line_of(&p.url).or(line),
                            "signals.prometheus.url",
                            format!("must include a scheme and host, e.g. `http://127.0.0.1:9090`; got {:?}", p.url.value),
                        );
                    }
                    SignalsConfig::Prometheus {
                        url,
                        build_label: p.build_label.clone().unwrap_or_else(|| "build".into()),
                        timeout: c.duration(
                            &p.timeout,
                            "signals.prometheus.timeout",
                            Duration::from_secs(2),
                        ),
                    }
                }
                None => {
                    c.push(
                        line,
                        "signals.prometheus",
                        "`source: prometheus` needs a `prometheus:` section with `url:`",
                    );
                    SignalsConfig::Scrape {
                        interval: Duration::from_secs(1),
                    }
                }
            },
            Some((other, line)) => {
                c.push(
                    line,
                    "signals.source",
                    format!("must be `scrape` or `prometheus`; got {other:?}"),
                );
                SignalsConfig::Scrape {
                    interval: Duration::from_secs(1),
                }
            }
        };
        let prometheus = matches!(signals, SignalsConfig::Prometheus { .. });
        let policy = read_policy(&self.policy, &mut c);
        if self.services.is_empty() {
            c.push(
                None,
                "services",
                "at least one service is needed, e.g. `services: [{name: ultra-boost, ...}]`",
            );
        }
        let mut services = vec![];
        let mut routers: BTreeMap<SocketAddr, String> = BTreeMap::new();
        if api.listen.port() != 0 {
            routers.insert(api.listen, "guard's API (api.listen)".to_string());
        }
        for (i, s) in self.services.iter().enumerate() {
            let f = |name: &str| format!("services[{i}].{name}");
            if s.name.value.trim().is_empty() {
                c.push(
                    line_of(&s.name),
                    f("name"),
                    "must not be empty, e.g. `ultra-boost`",
                );
            }
            if services
                .iter()
                .any(|x: &ServiceConfig| x.name == s.name.value)
            {
                c.push(
                    line_of(&s.name),
                    f("name"),
                    format!("service {:?} is declared twice", s.name.value),
                );
            }
            let replicas = match s.replicas.as_ref().map(|r| {
                let n = c.typed::<u32>(r, &f("replicas"), "a whole number, 1 to 64");
                (n, r)
            }) {
                Some((Some(n), r)) if n == 0 || n > 64 => {
                    c.push(
                        line_of(r),
                        f("replicas"),
                        format!("must be 1 to 64; got {n}"),
                    );
                    2
                }
                Some((Some(n), _)) => n,
                Some((None, _)) | None => 2,
            };
            let strategy = match s.strategy.as_ref().map(|x| (x.value.as_str(), line_of(x))) {
                None | Some(("rolling", _)) => Strategy::Rolling,
                Some(("canary", _)) => Strategy::Canary,
                Some((other, line)) => {
                    c.push(
                        line,
                        f("strategy"),
                        format!("must be `rolling` or `canary`; got {other:?}"),
                    );
                    Strategy::Rolling
                }
            };
            const STEPS: &str = "increasing percentages between 0 and 100, e.g. `[5, 25, 50]`";
            let canary_steps = match &s.canary_steps {
                Some(raw) => match c.typed::<Vec<f64>>(raw, &f("canary_steps"), STEPS) {
                    Some(steps) => {
                        let ok = !steps.is_empty()
                            && steps.iter().all(|p| *p > 0.0 && *p < 100.0)
                            && steps.windows(2).all(|w| w[0] < w[1]);
                        if !ok {
                            c.push(
                                line_of(raw),
                                f("canary_steps"),
                                format!("must be {STEPS}; got {steps:?}"),
                            );
                        }
                        steps.iter().map(|p| p / 100.0).collect()
                    }
                    None => vec![0.05, 0.25, 0.5],
                },
                None => vec![0.05, 0.25, 0.5],
            };
            let watch = c.duration(&s.watch, &f("watch"), Duration::from_secs(60));
            if s.build.command.as_ref().is_none_or(Vec::is_empty) && s.build.image.is_none() {
                c.push(
                    None,
                    f("build.command"),
                    "a build needs a command (local platform), e.g. `[\"{ultra_boost}\"]`",
                );
            }
            for (at, template) in std::iter::once(("build".to_string(), &s.build))
                .chain(s.builds.iter().map(|(n, t)| (format!("builds.{n}"), t)))
            {
                for (field, text) in template.strings() {
                    if let Some(unknown) = unknown_placeholder(text) {
                        c.push(
                            None,
                            f(&format!("{at}.{field}")),
                            format!(
                                "unknown placeholder `{{{unknown}}}` in {text:?}; guard fills in {}",
                                PLACEHOLDERS.map(|p| format!("`{{{p}}}`")).join(", ")
                            ),
                        );
                    }
                }
            }
            if s.environments.is_empty() {
                c.push(
                    None,
                    f("environments"),
                    "at least one environment is needed, e.g. `[{name: production}]`",
                );
            }
            let mut environments = vec![];
            for (j, e) in s.environments.iter().enumerate() {
                let fe = |name: &str| format!("services[{i}].environments[{j}].{name}");
                if e.name.value.trim().is_empty() {
                    c.push(
                        line_of(&e.name),
                        fe("name"),
                        "must not be empty, e.g. `production`",
                    );
                }
                if environments
                    .iter()
                    .any(|x: &EnvironmentConfig| x.name == e.name.value)
                {
                    c.push(
                        line_of(&e.name),
                        fe("name"),
                        format!(
                            "environment {:?} is declared twice for service {:?}",
                            e.name.value, s.name.value
                        ),
                    );
                }
                let router_listen = e
                    .router_listen
                    .as_ref()
                    .and_then(|l| c.addr(l, &fe("router_listen")));
                if let Some(a) = router_listen
                    && a.port() != 0
                    && let Some(other) = routers.insert(
                        a,
                        format!("the router of {}/{}", s.name.value, e.name.value),
                    )
                {
                    c.push(
                        e.router_listen.as_ref().and_then(line_of),
                        fe("router_listen"),
                        format!("{a} is already used by {other}"),
                    );
                }
                if let Some(ns) = &e.namespace
                    && !is_dns_label(&ns.value)
                {
                    c.push(
                        line_of(ns),
                        fe("namespace"),
                        format!(
                            "not a Kubernetes namespace name (lowercase letters, digits and `-`, at most 63, \
                             starting and ending with a letter or digit), e.g. `ultra-boost`; got {:?}",
                            ns.value
                        ),
                    );
                }
                environments.push(EnvironmentConfig {
                    name: e.name.value.clone(),
                    router_listen,
                    initial_build: e.initial_build.clone(),
                    namespace: e.namespace.as_ref().map(|n| n.value.clone()),
                });
            }
            if s.slos.is_empty() {
                c.push(
                    None,
                    f("slos"),
                    "at least one SLO is needed to judge a release, e.g. availability 99.9",
                );
            }
            let mut slos = vec![];
            for (j, o) in s.slos.iter().enumerate() {
                let fo = |name: &str| format!("services[{i}].slos[{j}].{name}");
                if o.name.value.trim().is_empty() {
                    c.push(
                        line_of(&o.name),
                        fo("name"),
                        "must not be empty, e.g. `availability`",
                    );
                }
                if slos.iter().any(|x: &SloConfig| x.name == o.name.value) {
                    c.push(
                        line_of(&o.name),
                        fo("name"),
                        format!("SLO {:?} is declared twice", o.name.value),
                    );
                }
                const OBJECTIVE: &str = "a percentage strictly between 0 and 100, e.g. `99.9`";
                let objective = c
                    .typed::<f64>(&o.objective, &fo("objective"), OBJECTIVE)
                    .unwrap_or(99.9);
                if !(objective > 0.0 && objective < 100.0) {
                    c.push(
                        line_of(&o.objective),
                        fo("objective"),
                        format!("{OBJECTIVE}; got {objective}"),
                    );
                } else if objective < 1.0 {
                    // 0.999 is the ratio written where a percentage belongs: as
                    // written, a release failing 99 % of requests would pass.
                    c.push(
                        line_of(&o.objective),
                        fo("objective"),
                        format!(
                            "a percentage: {v} means {v} % of events must be good; write {} for a ratio of {v}",
                            objective * 100.0,
                            v = objective
                        ),
                    );
                }
                let period = c.duration(&o.period, &fo("period"), Duration::from_secs(30 * 86_400));
                let kind = o.sli.kind.as_ref().map(|k| (k.value.as_str(), line_of(k)));
                let threshold = |c: &mut Check, line: Option<u64>| match &o.sli.threshold {
                    Some(t) => c.duration(
                        &Some(t.clone()),
                        &fo("sli.threshold"),
                        Duration::from_millis(200),
                    ),
                    None => {
                        c.push(
                            line,
                            fo("sli.threshold"),
                            "latency and freshness SLOs need a threshold, e.g. `200ms`",
                        );
                        Duration::from_millis(200)
                    }
                };
                let sli = match kind {
                    None | Some(("availability", _)) => SliConfig::Availability {
                        route: o.sli.route.clone(),
                    },
                    Some(("latency", line)) => SliConfig::Latency {
                        threshold: threshold(&mut c, line),
                        route: o.sli.route.clone(),
                    },
                    Some(("freshness", line)) => SliConfig::Freshness {
                        threshold: threshold(&mut c, line),
                    },
                    Some((other, line)) => {
                        c.push(
                            line,
                            fo("sli.type"),
                            format!(
                                "must be `availability`, `latency` or `freshness`; got {other:?}"
                            ),
                        );
                        SliConfig::Availability { route: None }
                    }
                };
                let prom = match &o.prometheus {
                    Some(q) => {
                        let (query, query_is_bad) = match (&q.bad, &q.good) {
                            (Some(b), None) => (b.value.clone(), true),
                            (None, Some(g)) => (g.value.clone(), false),
                            _ => {
                                c.push(
                                    line_of(&q.total),
                                    fo("prometheus"),
                                    "give exactly one of `bad:` or `good:` beside `total:`",
                                );
                                (String::new(), true)
                            }
                        };
                        for (name, text, line) in [
                            ("total", &q.total.value, line_of(&q.total)),
                            ("bad/good", &query, None),
                        ] {
                            if let Err(e) = promql_check(text) {
                                c.push(line, fo(&format!("prometheus.{name}")), e);
                            } else if environments.len() > 1
                                && !text.contains(ENVIRONMENT_PLACEHOLDER)
                            {
                                // Build numbers repeat across environments (the
                                // build staging ran is the one production gets):
                                // without a selector, one environment's traffic
                                // is judged as another's.
                                c.push(
                                    line,
                                    fo(&format!("prometheus.{name}")),
                                    format!(
                                        "the service runs in {} environments ({}) and this query does not tell them apart: \
                                         select the environment with `{ENVIRONMENT_PLACEHOLDER}`, e.g. `environment=\"{ENVIRONMENT_PLACEHOLDER}\"` \
                                         (guard puts the environment's name there)",
                                        environments.len(),
                                        environments.iter().map(|e| e.name.as_str()).collect::<Vec<_>>().join(", ")
                                    ),
                                );
                            }
                        }
                        Some(PromQueries {
                            total: q.total.value.clone(),
                            query_is_bad,
                            query,
                        })
                    }
                    None => {
                        if prometheus {
                            c.push(
                                line_of(&o.name),
                                fo("prometheus"),
                                "`signals.source: prometheus` needs `total:` and `bad:` (or `good:`) queries for every SLO",
                            );
                        }
                        None
                    }
                };
                let scrape = match &o.scrape {
                    Some(sc) => {
                        if let Err(e) = sc.validate() {
                            c.push(line_of(&o.name), fo("scrape"), e);
                        }
                        sc.clone()
                    }
                    None => default_scrape(&sli),
                };
                slos.push(SloConfig {
                    name: o.name.value.clone(),
                    objective: objective / 100.0,
                    period,
                    sli,
                    scrape,
                    prometheus: prom,
                });
            }
            services.push(ServiceConfig {
                name: s.name.value.clone(),
                replicas,
                strategy,
                canary_steps,
                watch,
                build: s.build.clone(),
                builds: s.builds.clone(),
                environments,
                slos,
            });
        }
        if !c.problems.is_empty() {
            // In the file's order, as its author reads it (stable: problems
            // of one line keep the order they were found in).
            c.problems.sort_by_key(|p| p.line.unwrap_or(u64::MAX));
            return Err(ConfigError::Invalid {
                file: file.to_string(),
                problems: c.problems,
            });
        }
        Ok(Config {
            file: file.to_string(),
            store,
            api,
            engine,
            signals,
            policy,
            notify: self.notify,
            services,
        })
    }
}

/// The scrape mapping for an SLI on ultra-boost's metric names (see TEAM.md contracts).
fn default_scrape(sli: &SliConfig) -> crate::signals::scrape::ScrapeSli {
    use crate::signals::scrape::ScrapeSli;
    let excluded = || {
        ["/metrics", "/-/ready", "/-/healthy"]
            .map(String::from)
            .to_vec()
    };
    match sli {
        SliConfig::Availability { route } => ScrapeSli::Availability {
            metric: "ultra_boost_http_requests_total".into(),
            bad_codes: vec!["5".into()],
            route: route.clone(),
            exclude_routes: excluded(),
        },
        SliConfig::Latency { threshold, route } => ScrapeSli::Latency {
            histogram: "ultra_boost_http_request_duration_seconds".into(),
            le: threshold.as_secs_f64(),
            route: route.clone(),
            exclude_routes: excluded(),
        },
        SliConfig::Freshness { threshold } => ScrapeSli::Freshness {
            gauge: "ultra_boost_background_last_success_timestamp_seconds".into(),
            max_age_seconds: threshold.as_secs_f64(),
        },
    }
}

/// A light check of a PromQL selector/expression: non-empty, balanced brackets.
fn promql_check(q: &str) -> Result<(), String> {
    if q.trim().is_empty() {
        return Err(
            "must be a PromQL expression, e.g. `ultra_boost_http_requests_total{route=\"/\"}`"
                .into(),
        );
    }
    let mut depth = 0i32;
    for ch in q.chars() {
        match ch {
            '{' | '(' | '[' => depth += 1,
            '}' | ')' | ']' => depth -= 1,
            _ => {}
        }
        if depth < 0 {
            break;
        }
    }
    if depth != 0 {
        return Err(format!("unbalanced brackets in {q:?}"));
    }
    Ok(())
}

/// A DNS-1123 label, what Kubernetes accepts as a namespace name.
fn is_dns_label(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !s.starts_with('-')
        && !s.ends_with('-')
}

impl Config {
    /// The service's config.
    pub fn service(&self, name: &str) -> Option<&ServiceConfig> {
        self.services.iter().find(|s| s.name == name)
    }

    /// What the kubernetes platform needs beyond [`RawConfig::validate`]:
    /// every service's builds are images, so `build.image` must be set and
    /// name the build (`{build}`, e.g. `registry.example.com/ultra-boost:{build}`),
    /// else `guard deploy --build N` could not say which image to run.
    pub fn check_kubernetes(&self) -> Result<(), ConfigError> {
        let mut problems = vec![];
        for (i, s) in self.services.iter().enumerate() {
            match s.build.image.as_deref() {
                None => problems.push(Problem {
                    line: None,
                    field: format!("services[{i}].build.image"),
                    reason: format!(
                        "service {:?}: the kubernetes platform deploys images; set e.g. \
                         `image: registry.example.com/{}:{{build}}`",
                        s.name, s.name
                    ),
                }),
                Some(image)
                    if image.trim().is_empty() || image.chars().any(char::is_whitespace) =>
                {
                    problems.push(Problem {
                        line: None,
                        field: format!("services[{i}].build.image"),
                        reason: format!("not an image reference: {image:?}"),
                    });
                }
                Some(image) if !image.contains("{build}") => problems.push(Problem {
                    line: None,
                    field: format!("services[{i}].build.image"),
                    reason: format!(
                        "{image:?} names no build: every build would run the same image; \
                         put `{{build}}` where the tag goes, e.g. `{}:{{build}}`",
                        image.split(':').next().unwrap_or(image)
                    ),
                }),
                Some(_) => {}
            }
        }
        if problems.is_empty() {
            Ok(())
        } else {
            Err(ConfigError::Invalid {
                file: self.file.clone(),
                problems,
            })
        }
    }

    /// Environment -> Kubernetes namespace, for the environments that name one.
    pub fn namespaces(&self) -> BTreeMap<String, String> {
        self.services
            .iter()
            .flat_map(|s| &s.environments)
            .filter_map(|e| Some((e.name.clone(), e.namespace.clone()?)))
            .collect()
    }
}

/// The config `guard demo` runs with: one service, two replicas of
/// `ultra-boost` on loopback, a good build and two bad ones, a judge tuned to
/// decide in seconds, a short watch.
pub const DEMO_YAML: &str = r#"
store: guard-demo.db
api:
  listen: 127.0.0.1:0
engine:
  tick: 1s
  stale_after: 5s
  baseline_window: 60s
policy:
  # Tuned to the fast-burn page rate (14.4x) and above, so a good build passes
  # on a few hundred requests instead of the thousands a 2x alternative needs.
  multiples: [14.4, 50]
  min_verify_seconds: 5
  max_verify_seconds: 60
  min_events: 200
  max_missing_seconds: 10
services:
  - name: ultra-boost
    replicas: 2
    strategy: rolling
    canary_steps: [25, 50]
    watch: 5s
    build:
      command: ["{ultra_boost}", "--drain-delay", "1s", "--background-interval", "1s", "--unix-socket", "{unix_socket}", "--handoff-socket", "{handoff_socket}"]
      env:
        ULTRA_BOOST_LOG_LEVEL: warn
    builds:
      "3":
        env:
          ULTRA_BOOST_FAULT_ERROR_RATE: "0.05"
          ULTRA_BOOST_FAULT_SEED: "7"
      "4":
        env:
          ULTRA_BOOST_FAULT_LATENCY_MS: "300"
    environments:
      - name: demo
        router_listen: 127.0.0.1:0
        initial_build: "1"
    slos:
      - name: availability
        objective: 99.9
        period: 30d
        sli: { type: availability, route: "/" }
      - name: latency
        objective: 99
        period: 30d
        sli: { type: latency, threshold: 200ms, route: "/" }
"#;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn demo_config_validates() {
        let c = parse(DEMO_YAML, "<demo>", Path::new("/tmp")).expect("demo config is valid");
        assert_eq!(c.services.len(), 1);
        let s = &c.services[0];
        assert_eq!(s.replicas, 2);
        assert_eq!(s.slos.len(), 2);
        assert_eq!(
            s.slos[1].sli,
            SliConfig::Latency {
                threshold: Duration::from_millis(200),
                route: Some("/".into())
            }
        );
        let b = s.build_for("3", "/bin/ub");
        assert_eq!(b.command[0], "/bin/ub");
        assert_eq!(
            b.env
                .get("ULTRA_BOOST_FAULT_ERROR_RATE")
                .map(String::as_str),
            Some("0.05")
        );
        assert_eq!(
            b.env.get("ULTRA_BOOST_LOG_LEVEL").map(String::as_str),
            Some("warn")
        );
        assert!(
            !s.build_for("2", "x")
                .env
                .contains_key("ULTRA_BOOST_FAULT_ERROR_RATE")
        );
        assert_eq!(c.store, Path::new("/tmp/guard-demo.db"));
    }

    /// One valid service, for tests about the other sections.
    const SERVICES: &str = "services:\n  - name: s\n    build: {command: [x]}\n    environments: [{name: e}]\n    slos: [{name: a, objective: 99.9}]\n";

    /// The (line, field) of every problem `yaml` has, and the whole message.
    fn problems_of(yaml: &str) -> (Vec<(Option<u64>, String)>, String) {
        let err = parse(yaml, "g.yaml", Path::new(".")).expect_err("invalid");
        let ConfigError::Invalid { problems, .. } = &err else {
            panic!("expected Invalid, got {err}")
        };
        let found = problems.iter().map(|p| (p.line, p.field.clone())).collect();
        (found, err.to_string())
    }

    /// Owned (line, field) pairs from literals, to compare with [`problems_of`].
    fn at(expected: &[(Option<u64>, &str)]) -> Vec<(Option<u64>, String)> {
        expected.iter().map(|(l, f)| (*l, f.to_string())).collect()
    }

    #[test]
    fn every_problem_is_reported_with_its_line() {
        let yaml = "api:\n  listen: nowhere\nservices:\n  - name: s\n    strategy: sideways\n    build: {command: [x]}\n    environments: [{name: e}]\n    slos:\n      - name: a\n        objective: 120\n        sli: {type: latency}\n";
        let (found, text) = problems_of(yaml);
        assert_eq!(
            found,
            at(&[
                (Some(2), "api.listen"),
                (Some(5), "services[0].strategy"),
                (Some(10), "services[0].slos[0].objective"),
                (Some(11), "services[0].slos[0].sli.threshold"),
            ]),
            "{text}"
        );
        assert!(text.starts_with("g.yaml: 4 problems:"), "{text}");
        assert!(
            text.contains(
                "line 10: services[0].slos[0].objective: a percentage strictly between 0 and 100"
            ),
            "{text}"
        );
    }

    /// Build numbers repeat across environments: a service in two needs
    /// queries that select the one judged, or staging's traffic counts in
    /// production's verdict.
    #[test]
    fn prometheus_queries_of_a_service_in_two_environments_name_the_environment() {
        let yaml = |total: &str| {
            format!(
                "services:\n  - name: s\n    build: {{command: [x]}}\n    environments: [{{name: production}}, {{name: staging}}]\n    slos:\n      - name: a\n        objective: 99.9\n        prometheus:\n          total: '{total}'\n          bad: 'x{{code=~\"5..\",environment=\"{{environment}}\"}}'\n"
            )
        };
        let (found, text) = problems_of(&yaml("x{job=\"s\"}"));
        assert_eq!(
            found,
            at(&[(Some(9), "services[0].slos[0].prometheus.total")]),
            "{text}"
        );
        assert!(
            text.contains("runs in 2 environments (production, staging)")
                && text.contains("`environment=\"{environment}\"`"),
            "{text}"
        );
        parse(
            &yaml("x{environment=\"{environment}\"}"),
            "g.yaml",
            Path::new("."),
        )
        .expect("both queries select the environment");
    }

    #[test]
    fn a_wrong_type_is_one_problem_among_the_others() {
        let yaml = "services:\n  - name: s\n    replicas: two\n    canary_steps: five\n    build: {command: [x]}\n    environments: [{name: e}]\n    slos: [{name: a, objective: high}]\npolicy:\n  alpha: 1.5\nengine:\n  tick: 1 parsec\n";
        let (found, text) = problems_of(yaml);
        assert_eq!(
            found,
            at(&[
                (Some(3), "services[0].replicas"),
                (Some(4), "services[0].canary_steps"),
                (Some(7), "services[0].slos[0].objective"),
                (Some(9), "policy.alpha"),
                (Some(11), "engine.tick"),
            ]),
            "{text}"
        );
        assert!(
            text.contains(
                "line 3: services[0].replicas: must be a whole number, 1 to 64; got \"two\""
            ),
            "{text}"
        );
        let (_, text) = problems_of(
            "services:\n  - name: s\n    build: {command: [x]}\n    environments: [{name: e}]\n    slos: [{name: a, objective: \"99.9\"}]\n",
        );
        assert!(
            text.contains("got \"99.9\" (a text: write it without quotes)"),
            "{text}"
        );
    }

    #[test]
    fn the_documented_example_validates() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/guard.yaml");
        let c = load(&path).expect("examples/guard.yaml is valid");
        let s = &c.services[0];
        assert_eq!(s.environments.len(), 2);
        assert_eq!(s.canary_steps, vec![0.05, 0.25, 0.5]);
        assert_eq!(s.slos.len(), 3);
        assert!(
            s.slos[1]
                .prometheus
                .as_ref()
                .is_some_and(|q| !q.query_is_bad)
        );
        assert_eq!(c.policy, judge::Policy::default());
        assert_eq!(c.engine.checkpoint_every, Duration::from_secs(5));
    }

    #[test]
    fn every_policy_problem_is_reported_with_its_line() {
        let (found, text) = problems_of(&format!(
            "policy:\n  alpah: 0.9\n  beta: 0.6\n  min_events: many\n  multiples: [0.5, 2]\n  alpha: 0.02\n{SERVICES}"
        ));
        assert_eq!(
            found,
            at(&[
                (Some(2), "policy.alpah"),
                (Some(3), "policy.beta"),
                (Some(4), "policy.min_events"),
                (Some(5), "policy.multiples"),
            ]),
            "{text}"
        );
        assert!(text.contains("expected one of alpha, beta"), "{text}");
        assert!(
            text.contains("policy.min_events: must be a whole number, 0 or more; got \"many\""),
            "{text}"
        );

        let ok = parse(
            &format!("policy:\n  alpha: 0.02\n  blame_alpha: 0.001\n{SERVICES}"),
            "g.yaml",
            Path::new("."),
        )
        .expect("valid");
        assert_eq!(
            (ok.policy.alpha, ok.policy.blame_alpha, ok.policy.beta),
            (0.02, Some(0.001), judge::Policy::default().beta)
        );
    }

    #[test]
    fn a_listen_address_may_name_a_host() {
        assert_eq!(
            listen_address("127.0.0.1:7700"),
            Ok(SocketAddr::from(([127, 0, 0, 1], 7700)))
        );
        assert_eq!(
            listen_address("[::1]:0").map(|a| a.ip().is_loopback()),
            Ok(true)
        );
        // localhost is a loopback address (127.0.0.1 where it has one), so
        // the API needs no token on it.
        let local = listen_address("localhost:0").expect("localhost resolves");
        assert!(local.ip().is_loopback() && local.port() == 0, "{local}");
        for bad in [
            "localhost",
            ":7700",
            "localhost:http",
            "localhost:70000",
            "",
        ] {
            let err = listen_address(bad).expect_err(bad);
            assert!(err.contains("HOST:PORT or IP:PORT"), "{bad}: {err}");
        }
        let ok = parse(
            &format!("api:\n  listen: localhost:0\n{SERVICES}"),
            "g.yaml",
            Path::new("."),
        )
        .expect("valid");
        assert!(ok.api.listen.ip().is_loopback());
        let (found, text) = problems_of(&format!("api:\n  listen: localhost\n{SERVICES}"));
        assert_eq!(found, at(&[(Some(2), "api.listen")]), "{text}");
    }

    #[test]
    fn the_evidence_cap_follows_alpha_and_beta_unless_it_is_set() {
        let policy = |yaml: &str| {
            parse(
                &format!(
                    "policy:
{yaml}{SERVICES}"
                ),
                "g.yaml",
                Path::new("."),
            )
            .expect("valid")
            .policy
        };
        // At α = 0.05 the revert bound is ln(0.995/0.05) = 2.99: the default
        // α's cap (3.45) would let one block revert alone.
        let p = policy("  alpha: 0.05\n");
        let ln_a = (0.995f64 / 0.05).ln();
        assert!((p.evidence_cap() - 0.75 * ln_a).abs() < 1e-12);
        assert!(p.evidence_cap() < ln_a);
        let p = policy("  beta: 0.01\n");
        assert!((p.evidence_cap() - 0.75 * (0.99f64 / 0.01).ln()).abs() < 1e-12);
        let p = policy("  alpha: 0.05\n  evidence_cap_per_second: 9\n");
        assert_eq!(p.evidence_cap(), 9.0);
        assert_eq!(
            policy("  min_events: 10\n").evidence_cap(),
            judge::Policy::default().evidence_cap()
        );
    }

    #[test]
    fn a_misspelt_placeholder_or_a_twice_declared_environment_is_refused() {
        let yaml = "services:\n  - name: s\n    build:\n      command: [\"{ultra_boost}\", --handoff-socket, \"{handof_socket}\", --json, '{\"a\": 1}']\n      env: {BUILD: \"{build}\"}\n    builds:\n      \"2\": {env: {X: \"{bulid}\"}}\n    environments: [{name: production}, {name: production}]\n    slos: [{name: a, objective: 99.9}]\n";
        let (found, text) = problems_of(yaml);
        assert_eq!(
            found,
            at(&[
                (Some(8), "services[0].environments[1].name"),
                (None, "services[0].build.command[2]"),
                (None, "services[0].builds.2.env.X"),
            ]),
            "{text}"
        );
        assert!(
            text.contains("unknown placeholder `{handof_socket}`"),
            "{text}"
        );
        assert!(text.contains("`{handoff_socket}`"), "{text}");
        assert!(
            text.contains("line 8: services[0].environments[1].name: environment \"production\" is declared twice"),
            "{text}"
        );
        assert_eq!(unknown_placeholder("{build}-{ultra_boost}"), None);
        assert_eq!(
            unknown_placeholder("{\"json\": {}} ${HOME} ${port} {Capital}"),
            None
        );
    }

    #[test]
    fn a_ratio_for_an_objective_and_a_router_on_the_api_address_are_refused() {
        let yaml = "api:\n  listen: 127.0.0.1:7700\nservices:\n  - name: s\n    build: {command: [x]}\n    environments: [{name: e, router_listen: \"127.0.0.1:7700\"}]\n    slos: [{name: a, objective: 0.999}]\n";
        let err = parse(yaml, "g.yaml", Path::new(".")).expect_err("invalid");
        let text = err.to_string();
        assert!(
            text.contains("services[0].environments[0].router_listen: 127.0.0.1:7700 is already used by guard's API (api.listen)"),
            "{text}"
        );
        assert!(
            text.contains("services[0].slos[0].objective: a percentage: 0.999 means 0.999 % of events must be good; write 99.9 for a ratio of 0.999"),
            "{text}"
        );
    }

    #[test]
    fn engine_durations_are_read_and_refused_with_their_line() {
        let c = parse(
            &format!("engine:\n  checkpoint_every: 250ms\n{SERVICES}"),
            "g.yaml",
            Path::new("."),
        )
        .expect("valid");
        assert_eq!(c.engine.checkpoint_every, Duration::from_millis(250));
        let (found, text) = problems_of(&format!(
            "engine:\n  tick: 1s\n  checkpoint_every: often\n{SERVICES}"
        ));
        assert_eq!(found, at(&[(Some(3), "engine.checkpoint_every")]));
        assert!(
            text.contains("line 3: engine.checkpoint_every: not a duration"),
            "{text}"
        );
    }

    #[test]
    fn kubernetes_needs_an_image_naming_the_build_and_valid_namespaces() {
        let svc = |build: &str| {
            format!(
                "services:\n  - name: s\n    build: {build}\n    environments: [{{name: production, namespace: ultra-boost}}]\n    slos: [{{name: a, objective: 99.9}}]\n"
            )
        };
        let ok = parse(
            &svc("{image: \"r.example/s:{build}\"}"),
            "g.yaml",
            Path::new("."),
        )
        .expect("valid");
        ok.check_kubernetes().expect("image with {build}");
        assert_eq!(
            ok.namespaces().get("production").map(String::as_str),
            Some("ultra-boost")
        );
        assert_eq!(
            ok.services[0].build_for("7", "").image.as_deref(),
            Some("r.example/s:7")
        );
        for (build, needle) in [
            ("{command: [x]}", "deploys images"),
            ("{image: \"r.example/s:latest\"}", "names no build"),
        ] {
            let err = parse(&svc(build), "g.yaml", Path::new("."))
                .expect("parses")
                .check_kubernetes()
                .expect_err(build)
                .to_string();
            assert!(
                err.contains("services[0].build.image") && err.contains(needle),
                "{err}"
            );
        }
        let bad_ns = "services:\n  - name: s\n    build: {command: [x]}\n    environments: [{name: p, namespace: Bad_NS}]\n    slos: [{name: a, objective: 99.9}]\n";
        let err = parse(bad_ns, "g.yaml", Path::new("."))
            .expect_err("bad namespace")
            .to_string();
        assert!(
            err.contains("line 4: services[0].environments[0].namespace"),
            "{err}"
        );
    }

    #[test]
    fn unknown_fields_and_bad_types_name_the_line() {
        let err = parse(
            "services:\n  - name: s\n    replicaz: 2\n",
            "g.yaml",
            Path::new("."),
        )
        .expect_err("typo");
        let ConfigError::Parse { line, detail, .. } = &err else {
            panic!("expected Parse, got {err}")
        };
        assert_eq!(*line, Some(3), "{detail}");
        assert!(detail.contains("replicaz"), "{detail}");
    }

    #[test]
    fn yaml_errors_speak_to_the_files_author_under_its_name() {
        for (yaml, line, says) in [
            (
                "policy:\n  alpha: 0.01\n  alpha: 0.02\n",
                3,
                "duplicate mapping key: alpha (each key may appear once in a mapping)",
            ),
            (
                "store: a.db\n---\nstore: b.db\n",
                3,
                "more than one YAML document (`---`): guard.yaml is one document",
            ),
        ] {
            let err = parse(yaml, "g.yaml", Path::new(".")).expect_err(yaml);
            let text = err.to_string();
            assert!(
                text.starts_with(&format!("g.yaml:{line}: {says}\n")),
                "{text}"
            );
            assert!(text.contains(&format!("--> g.yaml:{line}:")), "{text}");
            for internal in ["DuplicateKeyPolicy", "from_str_multiple", "<input>"] {
                assert!(!text.contains(internal), "{text}");
            }
        }
    }
}
