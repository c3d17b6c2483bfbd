//! The CLI's side of guard's HTTP API: where it is, the bearer token, and
//! typed calls. Used by `deploy`, `status`, `history`, `rollback` and the
//! rollout commands.

use std::path::PathBuf;

use anyhow::Context;
use serde::de::DeserializeOwned;
use serde_json::Value;

/// Where the API is and how to authenticate.
#[derive(Debug, Clone, clap::Args)]
pub struct ApiArgs {
    /// guard's API base URL.
    #[arg(
        long,
        env = "GUARD_API_URL",
        default_value = "http://127.0.0.1:7700",
        value_name = "URL"
    )]
    pub api: String,
    /// File holding the bearer token (env GUARD_API_TOKEN wins).
    #[arg(long, env = "GUARD_API_TOKEN_FILE", value_name = "PATH")]
    pub token_file: Option<PathBuf>,
}

/// guard answered 404: what was asked for is not in its history (in a
/// cluster, the replica answering may not be the one that recorded it).
#[derive(Debug, thiserror::Error)]
#[error("{what}: guard answered 404 Not Found: {message}")]
pub struct NotFound {
    pub what: String,
    pub message: String,
}

/// guard answered 409 Conflict: e.g. the target already has a rollout in
/// progress.
#[derive(Debug, thiserror::Error)]
#[error("{what}: guard answered 409 Conflict: {message}")]
pub struct Conflict {
    pub what: String,
    pub message: String,
}

/// A client of one guard.
pub struct Client {
    http: reqwest::Client,
    base: String,
    token: Option<String>,
}

impl Client {
    pub fn new(args: &ApiArgs) -> anyhow::Result<Self> {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let token = match std::env::var("GUARD_API_TOKEN") {
            Ok(t) if !t.trim().is_empty() => Some(t.trim().to_string()),
            _ => match &args.token_file {
                Some(p) => {
                    let token = std::fs::read_to_string(p)
                        .with_context(|| format!("reading --token-file {}", p.display()))?
                        .trim()
                        .to_string();
                    if token.is_empty() {
                        anyhow::bail!(
                            "--token-file {} is empty; it must hold the API's bearer token",
                            p.display()
                        );
                    }
                    Some(token)
                }
                None => None,
            },
        };
        let base = args.api.trim_end_matches('/').to_string();
        match reqwest::Url::parse(&base) {
            Ok(u) if matches!(u.scheme(), "http" | "https") && u.host().is_some() => {}
            Ok(u) => anyhow::bail!(
                "--api {:?}: guard's API is reached over http or https, e.g. http://127.0.0.1:7700; got scheme {:?}",
                args.api,
                u.scheme()
            ),
            Err(e) => anyhow::bail!(
                "--api {:?} is not a URL ({e}); give guard's API address, e.g. http://127.0.0.1:7700",
                args.api
            ),
        }
        let http = reqwest::Client::builder()
            .timeout(std::time::Duration::from_secs(30))
            .build()
            .context("building the HTTP client")?;
        Ok(Self { http, base, token })
    }

    async fn send<T: DeserializeOwned>(
        &self,
        req: reqwest::RequestBuilder,
        what: &str,
    ) -> anyhow::Result<T> {
        let mut req = match &self.token {
            Some(t) => req.bearer_auth(t),
            None => req,
        };
        // In a cluster only the leader answers /api/v1/* (503 + Retry-After on
        // the others); the Service picks a replica per connection, so retry.
        let mut attempt = 0u32;
        let resp = loop {
            let again = req.try_clone();
            let resp = req
                .send()
                .await
                .with_context(|| format!("{what}: cannot reach guard at {} (is `guard serve` running? --api / GUARD_API_URL)", self.base))?;
            match again {
                Some(next)
                    if resp.status() == reqwest::StatusCode::SERVICE_UNAVAILABLE
                        && resp.headers().contains_key(reqwest::header::RETRY_AFTER)
                        && attempt < 30 =>
                {
                    attempt += 1;
                    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
                    req = next;
                }
                _ => break resp,
            }
        };
        let status = resp.status();
        let body = resp
            .text()
            .await
            .with_context(|| format!("{what}: reading the answer"))?;
        if !status.is_success() {
            let msg = serde_json::from_str::<Value>(&body)
                .ok()
                .and_then(|v| v.get("error").and_then(Value::as_str).map(String::from))
                .unwrap_or(body);
            if status == reqwest::StatusCode::NOT_FOUND {
                return Err(NotFound {
                    what: what.to_string(),
                    message: msg,
                }
                .into());
            }
            if status == reqwest::StatusCode::CONFLICT {
                return Err(Conflict {
                    what: what.to_string(),
                    message: msg,
                }
                .into());
            }
            anyhow::bail!("{what}: guard answered {status}: {msg}");
        }
        serde_json::from_str(&body).with_context(|| format!("{what}: unexpected answer from guard"))
    }

    /// The status page of rollout `id`, for people.
    pub fn page_url(&self, id: i64) -> String {
        format!("{}/rollouts/{id}", self.base)
    }

    pub async fn get<T: DeserializeOwned>(&self, path: &str, what: &str) -> anyhow::Result<T> {
        self.send(self.http.get(format!("{}{path}", self.base)), what)
            .await
    }

    pub async fn post<T: DeserializeOwned>(
        &self,
        path: &str,
        body: &Value,
        what: &str,
    ) -> anyhow::Result<T> {
        self.send(
            self.http.post(format!("{}{path}", self.base)).json(body),
            what,
        )
        .await
    }

    /// The active rollout of a target, if any.
    pub async fn active_rollout(
        &self,
        service: &str,
        environment: &str,
    ) -> anyhow::Result<Option<i64>> {
        let list: Vec<Value> = self
            .get(
                &format!("/api/v1/rollouts?service={service}&environment={environment}&limit=1"),
                "listing rollouts",
            )
            .await?;
        Ok(list
            .first()
            .filter(|r| r.get("active").and_then(Value::as_bool) == Some(true))
            .and_then(|r| r.get("id").and_then(Value::as_i64)))
    }
}
