//! Notifier settings: the `notify:` section of `guard.yaml`, each value
//! overridable by an environment variable, then validated into [`Targets`].
//!
//! | setting | env |
//! |---|---|
//! | `slack.webhook_url` | `GUARD_SLACK_WEBHOOK_URL` |
//! | `teams.webhook_url` | `GUARD_TEAMS_WEBHOOK_URL` |
//! | `webhook.url`, `webhook.secret` | `GUARD_WEBHOOK_URL`, `GUARD_WEBHOOK_SECRET` |
//! | `grafana.url`, `grafana.token` | `GUARD_GRAFANA_URL`, `GUARD_GRAFANA_TOKEN` |
//! | `github.api_url`, `github.token`, `github.repo` | `GUARD_GITHUB_API_URL` (default `https://api.github.com`), `GUARD_GITHUB_TOKEN`, `GUARD_GITHUB_REPO` (`owner/name`) |
//!
//! ```yaml
//! notify:
//!   slack: { webhook_url: "https://hooks.slack.com/services/T000/B000/XXXX" }
//!   teams: { webhook_url: "https://prod-00.westeurope.logic.azure.com/workflows/..." }
//!   webhook: { url: "https://hooks.example.com/guard", secret: "..." }
//!   grafana: { url: "https://grafana.example.com", token: "glsa_...", dashboard_uid: "ultra-boost" }
//!   github: { repo: "acme/ultra-boost", token: "github_pat_..." }
//!   queue_capacity: 256          # per target; newer events are dropped (and counted) beyond it
//!   retry: { max_attempts: 5, base_ms: 500, max_ms: 30000, timeout_ms: 10000 }
//! ```
//!
//! Secrets are better kept out of the file: leave them out and set the
//! variables instead.
//!
//! A target is enabled when its URL (GitHub: token or repo) is set. Environment
//! reads go through [`Strings`] so tests pass a map instead of mutating the
//! process environment.

use crate::secret::Secret;
use reqwest::Url;
use serde::Deserialize;
use std::collections::HashMap;
use std::fmt;
use std::time::Duration;

/// GitHub's public REST API, used when `github.api_url` is not set.
pub const DEFAULT_GITHUB_API_URL: &str = "https://api.github.com";

/// A source of named strings: the process environment, or a map in tests.
pub trait Strings {
    /// The value of `key`, if set.
    fn get(&self, key: &str) -> Option<String>;
}

/// The process environment.
#[derive(Clone, Copy, Debug, Default)]
pub struct ProcessEnv;

impl Strings for ProcessEnv {
    fn get(&self, key: &str) -> Option<String> {
        std::env::var(key).ok()
    }
}

impl Strings for HashMap<String, String> {
    fn get(&self, key: &str) -> Option<String> {
        HashMap::get(self, key).cloned()
    }
}

impl Strings for HashMap<&str, &str> {
    fn get(&self, key: &str) -> Option<String> {
        HashMap::get(self, key).map(|v| (*v).to_owned())
    }
}

/// The `notify:` section of `guard.yaml`. Every field is optional.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct NotifyConfig {
    pub slack: Option<SlackConfig>,
    pub teams: Option<TeamsConfig>,
    pub webhook: Option<WebhookConfig>,
    pub grafana: Option<GrafanaConfig>,
    pub github: Option<GitHubConfig>,
    /// Events waiting per target before new ones are dropped (and counted).
    pub queue_capacity: Option<usize>,
    pub retry: RetryConfig,
}

/// Slack incoming webhook.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SlackConfig {
    /// `https://hooks.slack.com/services/...`: the URL is the credential.
    pub webhook_url: Option<Secret>,
}

/// Microsoft Teams Workflows ("Post to a channel when a webhook request is received").
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TeamsConfig {
    /// The workflow's HTTP trigger URL; its `sig=` parameter is the credential.
    pub webhook_url: Option<Secret>,
}

/// Generic signed JSON webhook.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct WebhookConfig {
    pub url: Option<Secret>,
    /// HMAC-SHA256 key; see [`crate::webhook`] for the signature scheme.
    pub secret: Option<Secret>,
}

/// Grafana annotations.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct GrafanaConfig {
    /// Grafana's base URL, e.g. `https://grafana.example.com` (no `/api`).
    pub url: Option<String>,
    /// Service account token (`glsa_...`), sent as `Authorization: Bearer`.
    pub token: Option<Secret>,
    /// Pin annotations to one dashboard; without it they are organisation
    /// annotations that dashboards select by tag.
    pub dashboard_uid: Option<String>,
}

/// GitHub deployments.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct GitHubConfig {
    pub api_url: Option<String>,
    pub token: Option<Secret>,
    /// `owner/name`.
    pub repo: Option<String>,
}

/// Delivery retries: exponential backoff with jitter, capped.
#[derive(Clone, Debug, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RetryConfig {
    /// Attempts per request, the first included.
    pub max_attempts: u32,
    /// First backoff; doubles per attempt.
    pub base_ms: u64,
    /// Longest backoff between attempts. (A wait the server asks for, by
    /// `Retry-After` or a rate limit's reset, is honoured up to 15 minutes.)
    pub max_ms: u64,
    /// Per-request timeout.
    pub timeout_ms: u64,
}

impl Default for RetryConfig {
    fn default() -> Self {
        RetryConfig {
            max_attempts: 5,
            base_ms: 500,
            max_ms: 30_000,
            timeout_ms: 10_000,
        }
    }
}

/// One problem in the notify settings. Values holding secrets are never quoted.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConfigProblem {
    /// `notify.<target>.<field>` as written in guard.yaml.
    pub field: &'static str,
    /// Environment variable that overrides it, if any.
    pub env: Option<&'static str>,
    /// What is wrong and what a good value looks like.
    pub reason: String,
}

impl fmt::Display for ConfigProblem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.field)?;
        if let Some(env) = self.env {
            write!(f, " (env {env})")?;
        }
        write!(f, ": {}", self.reason)
    }
}

/// Every problem found in the notify settings, not just the first.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("invalid notify settings: {}", .problems.iter().map(ToString::to_string).collect::<Vec<_>>().join("; "))]
pub struct ConfigError {
    /// The problems, in field order.
    pub problems: Vec<ConfigProblem>,
}

/// Validated settings: only the enabled targets, with parsed URLs.
#[derive(Clone, Debug, Default)]
pub struct Targets {
    pub slack: Option<Secret>,
    pub teams: Option<Secret>,
    pub webhook: Option<WebhookTarget>,
    pub grafana: Option<GrafanaTarget>,
    pub github: Option<GitHubTarget>,
    pub queue_capacity: usize,
    pub retry: RetryPolicy,
}

/// A validated generic webhook target.
#[derive(Clone, Debug)]
pub struct WebhookTarget {
    pub url: Secret,
    pub secret: Secret,
}

/// A validated Grafana target.
#[derive(Clone, Debug)]
pub struct GrafanaTarget {
    /// Base URL without a trailing slash.
    pub url: String,
    pub token: Secret,
    pub dashboard_uid: Option<String>,
}

/// A validated GitHub target.
#[derive(Clone, Debug)]
pub struct GitHubTarget {
    /// API base URL without a trailing slash.
    pub api_url: String,
    pub token: Secret,
    pub owner: String,
    pub repo: String,
}

/// Backoff and timeouts, as durations.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RetryPolicy {
    pub max_attempts: u32,
    pub base: Duration,
    pub max: Duration,
    pub timeout: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryConfig::default().policy()
    }
}

impl RetryConfig {
    fn policy(&self) -> RetryPolicy {
        RetryPolicy {
            max_attempts: self.max_attempts.max(1),
            base: Duration::from_millis(self.base_ms),
            max: Duration::from_millis(self.max_ms.max(self.base_ms)),
            timeout: Duration::from_millis(self.timeout_ms),
        }
    }
}

/// Reads a variable; an empty value counts as unset, so `GUARD_X=` does not
/// switch a target on with an empty URL.
fn var(env: &dyn Strings, key: &str) -> Option<String> {
    env.get(key)
        .map(|v| v.trim().to_owned())
        .filter(|v| !v.is_empty())
}

impl NotifyConfig {
    /// The settings with every `GUARD_*` variable that is set applied on top.
    pub fn with_env(mut self, env: &dyn Strings) -> Self {
        if let Some(v) = var(env, "GUARD_SLACK_WEBHOOK_URL") {
            self.slack.get_or_insert_with(Default::default).webhook_url = Some(Secret::new(v));
        }
        if let Some(v) = var(env, "GUARD_TEAMS_WEBHOOK_URL") {
            self.teams.get_or_insert_with(Default::default).webhook_url = Some(Secret::new(v));
        }
        if let Some(v) = var(env, "GUARD_WEBHOOK_URL") {
            self.webhook.get_or_insert_with(Default::default).url = Some(Secret::new(v));
        }
        if let Some(v) = var(env, "GUARD_WEBHOOK_SECRET") {
            self.webhook.get_or_insert_with(Default::default).secret = Some(Secret::new(v));
        }
        if let Some(v) = var(env, "GUARD_GRAFANA_URL") {
            self.grafana.get_or_insert_with(Default::default).url = Some(v);
        }
        if let Some(v) = var(env, "GUARD_GRAFANA_TOKEN") {
            self.grafana.get_or_insert_with(Default::default).token = Some(Secret::new(v));
        }
        if let Some(v) = var(env, "GUARD_GITHUB_API_URL") {
            self.github.get_or_insert_with(Default::default).api_url = Some(v);
        }
        if let Some(v) = var(env, "GUARD_GITHUB_TOKEN") {
            self.github.get_or_insert_with(Default::default).token = Some(Secret::new(v));
        }
        if let Some(v) = var(env, "GUARD_GITHUB_REPO") {
            self.github.get_or_insert_with(Default::default).repo = Some(v);
        }
        self
    }

    /// Checks every setting and returns the enabled targets, or every problem.
    pub fn validate(&self) -> Result<Targets, ConfigError> {
        let mut problems = Vec::new();
        let mut targets = Targets {
            queue_capacity: self.queue_capacity.unwrap_or(256),
            retry: self.retry.policy(),
            ..Targets::default()
        };
        if self.queue_capacity == Some(0) {
            problems.push(problem(
                "notify.queue_capacity",
                None,
                "must be at least 1, e.g. 256",
            ));
        }
        if self.retry.timeout_ms == 0 {
            problems.push(problem(
                "notify.retry.timeout_ms",
                None,
                "must be above 0, e.g. 10000",
            ));
        }

        let secret_url = |field: &'static str,
                          env: &'static str,
                          v: &Option<Secret>,
                          problems: &mut Vec<ConfigProblem>| {
            let v = v.as_ref().filter(|s| !s.is_empty())?;
            match check_url(v.expose()) {
                Ok(_) => Some(v.clone()),
                // The value is the credential: describe it, never quote it.
                Err(why) => {
                    problems.push(problem(
                        field,
                        Some(env),
                        &format!("{why} (value not shown: it holds a secret)"),
                    ));
                    None
                }
            }
        };
        if let Some(c) = &self.slack {
            targets.slack = secret_url(
                "notify.slack.webhook_url",
                "GUARD_SLACK_WEBHOOK_URL",
                &c.webhook_url,
                &mut problems,
            );
        }
        if let Some(c) = &self.teams {
            targets.teams = secret_url(
                "notify.teams.webhook_url",
                "GUARD_TEAMS_WEBHOOK_URL",
                &c.webhook_url,
                &mut problems,
            );
        }
        if let Some(c) = &self.webhook {
            let url = secret_url(
                "notify.webhook.url",
                "GUARD_WEBHOOK_URL",
                &c.url,
                &mut problems,
            );
            let secret = c.secret.clone().filter(|s| !s.is_empty());
            match (url, secret) {
                (Some(url), Some(secret)) => targets.webhook = Some(WebhookTarget { url, secret }),
                (Some(_), None) => problems.push(problem(
                    "notify.webhook.secret",
                    Some("GUARD_WEBHOOK_SECRET"),
                    "required when notify.webhook.url is set: receivers verify the HMAC-SHA256 signature with it (e.g. 32 random bytes, hex)",
                )),
                _ => {}
            }
        }
        if let Some(c) = &self.grafana
            && let Some(url) = c.url.as_deref().map(str::trim).filter(|u| !u.is_empty())
        {
            match check_url(url) {
                Ok(_) => match c.token.clone().filter(|s| !s.is_empty()) {
                    Some(token) => {
                        targets.grafana = Some(GrafanaTarget {
                            url: url.trim_end_matches('/').to_owned(),
                            token,
                            dashboard_uid: c.dashboard_uid.clone(),
                        })
                    }
                    None => problems.push(problem(
                        "notify.grafana.token",
                        Some("GUARD_GRAFANA_TOKEN"),
                        "required when notify.grafana.url is set: a service account token with the annotations:write permission (glsa_...)",
                    )),
                },
                Err(why) => problems.push(problem(
                    "notify.grafana.url",
                    Some("GUARD_GRAFANA_URL"),
                    &format!("{why}; got `{url}`"),
                )),
            }
        }
        if let Some(c) = &self.github {
            let token = c.token.clone().filter(|s| !s.is_empty());
            let repo = c.repo.as_deref().map(str::trim).filter(|r| !r.is_empty());
            if token.is_some() || repo.is_some() {
                let api_url = c
                    .api_url
                    .as_deref()
                    .map(str::trim)
                    .filter(|u| !u.is_empty())
                    .unwrap_or(DEFAULT_GITHUB_API_URL);
                let api_ok = match check_url(api_url) {
                    Ok(_) => true,
                    Err(why) => {
                        problems.push(problem(
                            "notify.github.api_url",
                            Some("GUARD_GITHUB_API_URL"),
                            &format!("{why}; got `{api_url}`"),
                        ));
                        false
                    }
                };
                let parsed_repo = match repo {
                    None => {
                        problems.push(problem("notify.github.repo", Some("GUARD_GITHUB_REPO"), "required when a GitHub token is set, as `owner/name`, e.g. `acme/ultra-boost`"));
                        None
                    }
                    Some(r) => match r.split_once('/') {
                        Some((o, n)) if valid_gh_name(o) && valid_gh_name(n) => {
                            Some((o.to_owned(), n.to_owned()))
                        }
                        _ => {
                            problems.push(problem(
                                "notify.github.repo",
                                Some("GUARD_GITHUB_REPO"),
                                &format!(
                                    "must be `owner/name`, e.g. `acme/ultra-boost`; got `{r}`"
                                ),
                            ));
                            None
                        }
                    },
                };
                if token.is_none() {
                    problems.push(problem(
                        "notify.github.token",
                        Some("GUARD_GITHUB_TOKEN"),
                        "required when notify.github.repo is set: a token allowed to write deployments (fine-grained: Deployments read/write)",
                    ));
                }
                if let (true, Some((owner, repo)), Some(token)) = (api_ok, parsed_repo, token) {
                    targets.github = Some(GitHubTarget {
                        api_url: api_url.trim_end_matches('/').to_owned(),
                        token,
                        owner,
                        repo,
                    });
                }
            }
        }
        if problems.is_empty() {
            Ok(targets)
        } else {
            Err(ConfigError { problems })
        }
    }
}

impl Targets {
    /// Names of the enabled targets, for a startup log line.
    pub fn enabled(&self) -> Vec<&'static str> {
        let mut out = Vec::new();
        if self.slack.is_some() {
            out.push("slack");
        }
        if self.teams.is_some() {
            out.push("teams");
        }
        if self.webhook.is_some() {
            out.push("webhook");
        }
        if self.grafana.is_some() {
            out.push("grafana");
        }
        if self.github.is_some() {
            out.push("github");
        }
        out
    }

    /// Every secret, for the redactor.
    pub(crate) fn secrets(&self) -> Vec<Secret> {
        let mut out = Vec::new();
        out.extend(self.slack.clone());
        out.extend(self.teams.clone());
        if let Some(w) = &self.webhook {
            out.push(w.url.clone());
            out.push(w.secret.clone());
        }
        if let Some(g) = &self.grafana {
            out.push(g.token.clone());
        }
        if let Some(g) = &self.github {
            out.push(g.token.clone());
        }
        out
    }
}

fn problem(field: &'static str, env: Option<&'static str>, reason: &str) -> ConfigProblem {
    ConfigProblem {
        field,
        env,
        reason: reason.to_owned(),
    }
}

fn check_url(raw: &str) -> Result<Url, &'static str> {
    let url = Url::parse(raw.trim())
        .map_err(|_| "not a URL; expected e.g. `https://host.example/path`")?;
    if url.scheme() != "https" && url.scheme() != "http" {
        return Err("the scheme must be https (or http), e.g. `https://host.example/path`");
    }
    if url.host_str().is_none_or(str::is_empty) {
        return Err("the URL has no host; expected e.g. `https://host.example/path`");
    }
    Ok(url)
}

fn valid_gh_name(s: &str) -> bool {
    !s.is_empty()
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&'static str, &'static str)]) -> HashMap<&'static str, &'static str> {
        pairs.iter().copied().collect()
    }

    #[test]
    fn nothing_configured_means_no_targets() {
        let t = NotifyConfig::default()
            .with_env(&env(&[]))
            .validate()
            .unwrap();
        assert!(t.enabled().is_empty());
        assert_eq!(t.queue_capacity, 256);
    }

    #[test]
    fn env_overrides_the_file() {
        let yaml = NotifyConfig {
            slack: Some(SlackConfig {
                webhook_url: Some(Secret::new("https://file.example/a")),
            }),
            ..Default::default()
        };
        let t = yaml
            .with_env(&env(&[
                ("GUARD_SLACK_WEBHOOK_URL", "https://env.example/b"),
                ("GUARD_GITHUB_TOKEN", "ghp_x"),
                ("GUARD_GITHUB_REPO", "acme/ultra-boost"),
                ("GUARD_TEAMS_WEBHOOK_URL", ""),
            ]))
            .validate()
            .unwrap();
        assert_eq!(t.slack.unwrap().expose(), "https://env.example/b");
        let gh = t.github.unwrap();
        assert_eq!(gh.api_url, DEFAULT_GITHUB_API_URL);
        assert_eq!(
            (gh.owner.as_str(), gh.repo.as_str()),
            ("acme", "ultra-boost")
        );
        assert!(
            t.teams.is_none(),
            "an empty variable must not enable a target"
        );
    }

    #[test]
    fn every_problem_is_reported_and_secrets_are_not_quoted() {
        let err = NotifyConfig::default()
            .with_env(&env(&[
                (
                    "GUARD_SLACK_WEBHOOK_URL",
                    "hooks.slack.com/services/SECRETPART",
                ),
                ("GUARD_WEBHOOK_URL", "https://receiver.example/hook"),
                ("GUARD_GRAFANA_URL", "https://grafana.example"),
                ("GUARD_GITHUB_REPO", "not-a-repo"),
            ]))
            .validate()
            .unwrap_err();
        let fields: Vec<_> = err.problems.iter().map(|p| p.field).collect();
        assert_eq!(
            fields,
            [
                "notify.slack.webhook_url",
                "notify.webhook.secret",
                "notify.grafana.token",
                "notify.github.repo",
                "notify.github.token"
            ]
        );
        let text = err.to_string();
        assert!(!text.contains("SECRETPART"), "{text}");
        assert!(text.contains("GUARD_WEBHOOK_SECRET"), "{text}");
        assert!(
            text.contains("acme/ultra-boost"),
            "an example of a good value: {text}"
        );
    }

    #[test]
    fn yaml_section_parses() {
        let c: NotifyConfig = serde_json::from_value(serde_json::json!({
            "grafana": {"url": "https://g.example/", "token": "glsa_x", "dashboard_uid": "guard"},
            "retry": {"max_attempts": 3, "base_ms": 10, "max_ms": 100, "timeout_ms": 500}
        }))
        .unwrap();
        let t = c.validate().unwrap();
        assert_eq!(t.grafana.unwrap().url, "https://g.example");
        assert_eq!(t.retry.max_attempts, 3);
        assert_eq!(t.retry.base, Duration::from_millis(10));
    }
}
