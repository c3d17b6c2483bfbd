//! What the delivery tests share: a dispatcher on the doubles with fast
//! retries, a sample event, a URL nobody listens on.
#![allow(dead_code)]

use notify::config::RetryConfig;
use notify::{DeliveryRecord, Dispatcher, Event, EventKind, Evidence, MemoryLog, NotifyConfig};
use prometheus_client::registry::Registry;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

pub const SLACK_PATH: &str = "/services/T000/B000/SLACKSECRETPATH";
pub const TEAMS_PATH: &str =
    "/workflows/abc/triggers/manual/paths/invoke?api-version=1&sig=TEAMSSECRETSIG";
pub const FLUSH: Duration = Duration::from_secs(10);

pub struct Harness {
    pub dispatcher: Dispatcher,
    pub log: Arc<MemoryLog>,
    pub registry: Registry,
}

impl Harness {
    pub fn new(env: &[(&str, String)]) -> Harness {
        Self::with_capacity(env, None)
    }

    pub fn with_capacity(env: &[(&str, String)], queue_capacity: Option<usize>) -> Harness {
        // Millisecond backoff keeps the tests fast; max_ms stays large enough
        // that a 1 s Retry-After is honoured, not capped.
        Self::build(
            env,
            queue_capacity,
            RetryConfig {
                max_attempts: 4,
                base_ms: 5,
                max_ms: 2_000,
                timeout_ms: 2_000,
            },
        )
    }

    pub fn build(
        env: &[(&str, String)],
        queue_capacity: Option<usize>,
        retry: RetryConfig,
    ) -> Harness {
        Self::with_log(env, queue_capacity, retry, Arc::new(MemoryLog::default()))
    }

    /// A dispatcher that keeps its records, and what it created, in `log`:
    /// a second harness on the same log is the same guard restarted.
    pub fn with_log(
        env: &[(&str, String)],
        queue_capacity: Option<usize>,
        retry: RetryConfig,
        log: Arc<MemoryLog>,
    ) -> Harness {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let config = NotifyConfig {
            retry,
            queue_capacity,
            ..Default::default()
        };
        let env: HashMap<String, String> = env
            .iter()
            .map(|(k, v)| ((*k).to_owned(), v.clone()))
            .collect();
        let mut registry = Registry::default();
        let dispatcher = Dispatcher::from_config(&config, &env, &mut registry, log.clone())
            .expect("valid config");
        Harness {
            dispatcher,
            log,
            registry,
        }
    }

    pub async fn flush(&self) {
        let left = self.dispatcher.flush(FLUSH).await;
        assert_eq!(
            left,
            0,
            "deliveries still pending after {FLUSH:?}: {:#?}",
            self.log.records()
        );
    }

    pub fn metric(&self, target: &str, outcome: &str) -> u64 {
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &self.registry).unwrap();
        let prefix =
            format!("guard_notifications_total{{target=\"{target}\",outcome=\"{outcome}\"}} ");
        text.lines()
            .find_map(|l| l.strip_prefix(&prefix))
            .map(|v| v.trim().parse().unwrap())
            .unwrap_or_else(|| panic!("no {prefix} in\n{text}"))
    }

    pub fn records(&self, target: &str) -> Vec<DeliveryRecord> {
        self.log
            .records()
            .into_iter()
            .filter(|r| r.target == target)
            .collect()
    }
}

pub fn event(kind: EventKind, rollout_id: i64) -> Event {
    Event {
        kind,
        service: "ultra-boost".into(),
        environment: "production".into(),
        previous_build: Some("42".into()),
        build: Some("43".into()),
        commit: Some("9fceb02d0ae598e95dc970b74767f19372d61af8".into()),
        reason: "error ratio 5.1 % vs baseline 0.0 %: SPRT crossed its revert bound".into(),
        evidence: Evidence {
            slo: Some("requests-availability".into()),
            events: 412,
            bad_events: 21,
            release_error_ratio: Some(0.051),
            baseline_error_ratio: Some(0.0),
            statistic: Some(4.71),
            lower_bound: Some(-4.59),
            upper_bound: Some(4.59),
            budget_burned_pct: Some(0.0123),
        },
        seconds_to_verdict: if kind == EventKind::Started {
            None
        } else {
            Some(7.3)
        },
        started_at_ms: 1_764_201_600_000,
        ended_at_ms: if kind == EventKind::Started {
            None
        } else {
            Some(1_764_201_607_300)
        },
        status_url: Some("https://guard.example/rollouts/7".into()),
        environment_url: None,
        transient: false,
        rollout_id: Some(rollout_id),
    }
}

/// A loopback URL nobody listens on (the port was the OS's, then freed).
pub async fn dead_url() -> String {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    drop(l);
    format!("http://{addr}/services/T000/B000/DEADSECRET")
}
