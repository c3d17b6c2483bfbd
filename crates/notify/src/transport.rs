//! One HTTP request with retries: exponential backoff with jitter on 5xx, 429,
//! 408, timeouts and connection errors; no retry on other 4xx, which a retry
//! cannot fix, except a rate limit. A rate limit (429, or GitHub's 403 with
//! `x-ratelimit-remaining: 0` or a `Retry-After`) is waited out as the server
//! says — `Retry-After` (seconds or an HTTP date), else `x-ratelimit-reset`,
//! else a minute — up to [`LONGEST_SERVER_WAIT`]; retrying sooner only
//! prolongs it (GitHub may ban an integration that keeps trying).
//!
//! Error texts are built without URLs (reqwest's `without_url`) and passed
//! through the [`Redactor`], so webhook URLs and tokens never reach a log,
//! a metric label or history.

use crate::config::RetryPolicy;
use crate::secret::Redactor;
use rand::Rng;
use reqwest::{RequestBuilder, Response, StatusCode};
use std::time::Duration;

/// A successful reply.
#[derive(Debug)]
pub(crate) struct Reply {
    pub status: u16,
    pub body: String,
    pub attempts: u32,
}

/// A failed request, after retries where they made sense.
#[derive(Debug)]
pub(crate) struct Failure {
    /// HTTP status of the last answer, if one came.
    pub status: Option<u16>,
    /// What went wrong, redacted.
    pub detail: String,
    pub attempts: u32,
}

/// Longest body kept for history: enough for an error message, no more.
const BODY_SNIPPET: usize = 300;

/// Longest wait a server may ask for that is honoured; beyond it the delivery
/// fails and stays in the outbox, resent when guard next starts.
pub(crate) const LONGEST_SERVER_WAIT: Duration = Duration::from_secs(15 * 60);

/// A rate limit that names no time: GitHub asks to wait at least a minute.
const UNNAMED_RATE_LIMIT_WAIT: Duration = Duration::from_secs(60);

/// Sends with retries. `make` builds the request afresh for every attempt (a
/// webhook signature carries the attempt's timestamp). `on_retry` is told of
/// each retry, for the metric.
///
/// A timeout, a 5xx or a broken reply does not say whether the server acted.
/// For a request that must not take effect twice (creating a GitHub
/// deployment), `landed` asks the server after such a failure whether an
/// attempt took effect; what it finds is the reply, and the retries end.
/// Requests that may repeat pass `|| std::future::ready(None)`.
pub(crate) async fn send<L: Future<Output = Option<Reply>>>(
    policy: &RetryPolicy,
    redactor: &Redactor,
    mut make: impl FnMut() -> RequestBuilder,
    mut on_retry: impl FnMut(),
    mut landed: impl FnMut() -> L,
) -> Result<Reply, Failure> {
    let mut attempt = 0u32;
    loop {
        attempt += 1;
        let last = attempt >= policy.max_attempts;
        let (retry_after, failure, maybe_acted) = match make().timeout(policy.timeout).send().await
        {
            Ok(resp) => {
                let status = resp.status();
                if status.is_success() {
                    let body = resp.text().await.unwrap_or_default();
                    return Ok(Reply {
                        status: status.as_u16(),
                        body,
                        attempts: attempt,
                    });
                }
                let server_wait = server_wait(status, resp.headers(), jiff::Timestamp::now());
                let body = snippet(resp, redactor).await;
                let failure = Failure {
                    status: Some(status.as_u16()),
                    detail: format!("HTTP {status}: {body}"),
                    attempts: attempt,
                };
                if !(retryable(status) || server_wait.is_some_and(|w| w.rate_limited)) {
                    return Err(failure);
                }
                let maybe_acted = status.is_server_error();
                (server_wait.map(|w| w.wait), failure, maybe_acted)
            }
            Err(err) => {
                let detail = redactor.clean(&error_chain(&err));
                let failure = Failure {
                    status: None,
                    detail,
                    attempts: attempt,
                };
                if !(err.is_timeout() || err.is_connect() || err.is_request() || err.is_body()) {
                    return Err(failure);
                }
                // A refused connection never reached the server; anything
                // later may have.
                (None, failure, !err.is_connect())
            }
        };
        if maybe_acted && let Some(found) = landed().await {
            tracing::info!(attempt, detail = %failure.detail, "an attempt that seemed to fail had taken effect; not repeating it");
            return Ok(Reply {
                attempts: attempt,
                ..found
            });
        }
        if last {
            return Err(Failure {
                detail: format!("gave up after {attempt} attempts: {}", failure.detail),
                ..failure
            });
        }
        on_retry();
        let wait =
            backoff(policy, attempt).max(retry_after.unwrap_or_default().min(LONGEST_SERVER_WAIT));
        tracing::debug!(attempt, wait_ms = wait.as_millis() as u64, detail = %failure.detail, "notification attempt failed, retrying");
        tokio::time::sleep(wait).await;
    }
}

/// Statuses worth another try: the server is overloaded, rate limiting, or broken.
pub(crate) fn retryable(status: StatusCode) -> bool {
    status.is_server_error()
        || status == StatusCode::TOO_MANY_REQUESTS
        || status == StatusCode::REQUEST_TIMEOUT
}

/// Backoff before attempt `attempt + 1`: `base · 2^(attempt-1)` capped at
/// `max`, with "equal jitter" (half fixed, half random) so that many guards
/// retrying one endpoint spread out but never retry at once.
pub(crate) fn backoff(policy: &RetryPolicy, attempt: u32) -> Duration {
    let exp = policy
        .base
        .saturating_mul(1u32 << attempt.saturating_sub(1).min(20));
    let cap = exp.min(policy.max);
    let half = cap / 2;
    let jitter_ns = rand::rng().random_range(0..=half.as_nanos().min(u128::from(u64::MAX)) as u64);
    half + Duration::from_nanos(jitter_ns)
}

/// What the server asked for before another try.
#[derive(Clone, Copy, Debug, PartialEq)]
pub(crate) struct ServerWait {
    pub wait: Duration,
    /// A rate limit, to be waited out even where the status alone (GitHub's
    /// 403) would not be retried.
    pub rate_limited: bool,
}

/// The wait a reply asks for: `Retry-After` (RFC 9110 §10.2.3), else the
/// reset of an exhausted rate limit (`x-ratelimit-remaining: 0`,
/// `x-ratelimit-reset` in epoch seconds, as GitHub sends), else a minute
/// for a rate limit that names no time; `None` when it asks for none.
pub(crate) fn server_wait(
    status: StatusCode,
    headers: &reqwest::header::HeaderMap,
    now: jiff::Timestamp,
) -> Option<ServerWait> {
    let header = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::trim)
    };
    let exhausted = header("x-ratelimit-remaining") == Some("0");
    let rate_limited = status == StatusCode::TOO_MANY_REQUESTS
        || (status == StatusCode::FORBIDDEN
            && (exhausted || headers.contains_key(reqwest::header::RETRY_AFTER)));
    let named = header(reqwest::header::RETRY_AFTER.as_str())
        .and_then(|v| parse_retry_after(v, now))
        .or_else(|| {
            let reset: i64 = header("x-ratelimit-reset")?.parse().ok()?;
            exhausted.then(|| {
                let secs = reset.saturating_sub(now.as_second()).max(0) + 1;
                Duration::from_secs(secs as u64)
            })
        });
    match named {
        Some(wait) => Some(ServerWait { wait, rate_limited }),
        None if rate_limited => Some(ServerWait {
            wait: UNNAMED_RATE_LIMIT_WAIT,
            rate_limited,
        }),
        None => None,
    }
}

pub(crate) fn parse_retry_after(v: &str, now: jiff::Timestamp) -> Option<Duration> {
    let v = v.trim();
    if let Ok(secs) = v.parse::<u64>() {
        return Some(Duration::from_secs(secs));
    }
    // IMF-fixdate, e.g. "Wed, 21 Oct 2015 07:28:00 GMT", is RFC 2822 syntax.
    let at = jiff::fmt::rfc2822::parse(v).ok()?.timestamp();
    let ms = at.as_millisecond().saturating_sub(now.as_millisecond());
    Some(Duration::from_millis(ms.max(0) as u64))
}

async fn snippet(resp: Response, redactor: &Redactor) -> String {
    let text = resp.text().await.unwrap_or_default();
    let mut s: String = text.trim().chars().take(BODY_SNIPPET).collect();
    if text.trim().chars().count() > BODY_SNIPPET {
        s.push('…');
    }
    redactor.clean(&s)
}

/// The error and its causes on one line, without the request URL.
fn error_chain(err: &reqwest::Error) -> String {
    let kind = if err.is_timeout() {
        "timeout"
    } else if err.is_connect() {
        "connect error"
    } else {
        "request error"
    };
    let mut out = kind.to_owned();
    let mut source: Option<&(dyn std::error::Error + 'static)> = std::error::Error::source(err);
    while let Some(s) = source {
        out.push_str(": ");
        out.push_str(&s.to_string());
        source = s.source();
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_after_accepts_seconds_and_http_dates() {
        let now: jiff::Timestamp = "2015-10-21T07:27:00Z".parse().unwrap();
        assert_eq!(parse_retry_after("3", now), Some(Duration::from_secs(3)));
        assert_eq!(
            parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT", now),
            Some(Duration::from_secs(60))
        );
        assert_eq!(
            parse_retry_after("Wed, 21 Oct 2015 07:26:00 GMT", now),
            Some(Duration::ZERO)
        );
        assert_eq!(parse_retry_after("soon", now), None);
    }

    #[test]
    fn a_rate_limit_is_waited_out_as_the_server_says() {
        use reqwest::header::{HeaderMap, HeaderValue};
        let now: jiff::Timestamp = "2026-11-27T12:00:00Z".parse().unwrap();
        let headers = |pairs: &[(&'static str, &str)]| {
            let mut h = HeaderMap::new();
            for (k, v) in pairs {
                h.insert(*k, HeaderValue::from_str(v).unwrap());
            }
            h
        };
        let at = |status: u16, pairs: &[(&'static str, &str)]| {
            server_wait(StatusCode::from_u16(status).unwrap(), &headers(pairs), now)
        };
        let limited = |secs: u64| {
            Some(ServerWait {
                wait: Duration::from_secs(secs),
                rate_limited: true,
            })
        };
        // GitHub's primary limit: 403, remaining 0, reset 90 s ahead.
        let reset = (now.as_second() + 90).to_string();
        assert_eq!(
            at(
                403,
                &[
                    ("x-ratelimit-remaining", "0"),
                    ("x-ratelimit-reset", &reset)
                ]
            ),
            limited(91)
        );
        // A secondary limit: 403 with Retry-After.
        assert_eq!(at(403, &[("retry-after", "120")]), limited(120));
        // A 429 that names no time: a minute.
        assert_eq!(at(429, &[]), limited(60));
        // A 403 that is no rate limit (remaining calls left): not retried.
        assert_eq!(at(403, &[("x-ratelimit-remaining", "4999")]), None);
        // A 503 with Retry-After: the wait, retried as any 5xx.
        assert_eq!(
            at(503, &[("retry-after", "5")]),
            Some(ServerWait {
                wait: Duration::from_secs(5),
                rate_limited: false
            })
        );
    }

    #[test]
    fn backoff_grows_and_stays_within_its_cap() {
        let p = RetryPolicy {
            max_attempts: 9,
            base: Duration::from_millis(100),
            max: Duration::from_millis(1000),
            timeout: Duration::from_secs(1),
        };
        for attempt in 1..=8 {
            let cap = (Duration::from_millis(100) * (1 << (attempt - 1)))
                .min(Duration::from_millis(1000));
            for _ in 0..50 {
                let d = backoff(&p, attempt);
                assert!(
                    d >= cap / 2 && d <= cap,
                    "attempt {attempt}: {d:?} outside [{:?}, {cap:?}]",
                    cap / 2
                );
            }
        }
    }

    #[test]
    fn which_statuses_are_retried() {
        for s in [500, 502, 503, 504, 429, 408] {
            assert!(retryable(StatusCode::from_u16(s).unwrap()), "{s}");
        }
        for s in [400, 401, 403, 404, 409, 410, 422] {
            assert!(!retryable(StatusCode::from_u16(s).unwrap()), "{s}");
        }
    }
}
