//! Secrets stay out of logs, delivery records and `Debug` output.
//!
//! Alone in its own test binary: it captures the dispatcher's logs with a
//! thread-local subscriber, and tracing caches each log site's interest
//! process-wide, so other tests logging at the same sites on other threads
//! at the same moment could leave the capture empty (seen once in about six
//! runs when it lived in `delivery.rs`).

mod doubles;

use doubles::harness::{Harness, SLACK_PATH, dead_url, event};
use doubles::{Canned, GitHubDouble, SlackDouble};
use notify::EventKind;
use std::sync::Arc;

#[tokio::test(flavor = "current_thread")]
async fn secrets_stay_out_of_logs_records_and_debug_output() {
    // Capture every log line the dispatcher writes (current-thread runtime, so
    // the delivery tasks log on this thread's subscriber).
    #[derive(Clone, Default)]
    struct Buf(Arc<std::sync::Mutex<Vec<u8>>>);
    impl std::io::Write for Buf {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let buf = Buf::default();
    let writer = buf.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_max_level(tracing::Level::TRACE)
        .with_writer(move || writer.clone())
        .with_ansi(false)
        .finish();
    let _guard = tracing::subscriber::set_default(subscriber);

    let gh = GitHubDouble::start("ghp_SECRET_TOKEN").await;
    gh.script([
        Canned::status(500, "oops"),
        Canned::status(401, "Bad credentials"),
    ]);
    let slack = SlackDouble::start().await;
    slack.script([Canned::status(404, "channel_not_found")]);
    let h = Harness::new(&[
        ("GUARD_SLACK_WEBHOOK_URL", slack.url(SLACK_PATH)),
        ("GUARD_WEBHOOK_URL", dead_url().await),
        ("GUARD_WEBHOOK_SECRET", "WEBHOOK_SECRET_KEY".into()),
        ("GUARD_GITHUB_API_URL", gh.url("")),
        ("GUARD_GITHUB_TOKEN", "ghp_SECRET_TOKEN".into()),
        ("GUARD_GITHUB_REPO", "acme/ultra-boost".into()),
    ]);
    h.dispatcher.send(event(EventKind::Reverted, 1));
    h.flush().await;

    let logs = String::from_utf8(buf.0.lock().unwrap().clone()).unwrap();
    let records = format!("{:?}", h.log.records());
    let debug = format!("{:?}", h.dispatcher);
    assert!(
        logs.contains("notification failed"),
        "the failures are logged:\n{logs}"
    );
    for secret in [
        "SLACKSECRETPATH",
        "DEADSECRET",
        "WEBHOOK_SECRET_KEY",
        "ghp_SECRET_TOKEN",
    ] {
        for (what, text) in [("logs", &logs), ("records", &records), ("Debug", &debug)] {
            assert!(
                !text.contains(secret),
                "{secret} leaked into {what}:\n{text}"
            );
        }
    }
}
