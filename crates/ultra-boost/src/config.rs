//! Command line and environment: every option is a flag and an `ULTRA_BOOST_*`
//! variable (the flag wins), validated by clap before anything starts so that a
//! bad value exits with status 2 and a message naming the option.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Parser, ValueEnum};

/// Text printed after the option list of `--help`.
const AFTER_HELP: &str = "\
Endpoints (one listener):
  GET /            tiny JSON answer {service, version, build, commit}; fault injection applies here
  GET /-/healthy   liveness: 200 while the process can serve
  GET /-/ready     readiness: 503 \"starting\", then 200 \"ready\", then 503 \"draining\" after SIGTERM/SIGINT
  GET /metrics     Prometheus exposition (text 0.0.4; OpenMetrics when the scraper asks for it)
  anything else    404, counted under route=\"other\"

Shutdown (SIGTERM or SIGINT): readiness turns 503 at once, the service keeps serving for
--drain-delay (a second signal ends the delay early), then stops accepting and gives
in-flight requests --shutdown-timeout to finish. Exit status: 0 after a clean drain,
1 on a start-up error or when the shutdown timeout cut requests off, 2 on bad options.

Build info: version is the crate version; commit and build number come from GIT_COMMIT and
BUILD_NUMBER at build time, and the same variables at run time override them.";

/// The ultra-boost web service: a business endpoint, honest probes and SLI metrics.
#[derive(Parser, Debug, Clone)]
#[command(name = "ultra-boost", version, after_help = AFTER_HELP)]
pub struct Args {
    /// Address to listen on for every endpoint. Port 0 lets the OS choose one;
    /// use --address-file to learn which.
    #[arg(long, env = "ULTRA_BOOST_LISTEN", default_value = "0.0.0.0:8080")]
    pub listen: SocketAddr,

    /// Once listening, write the bound address (`IP:PORT` and a newline) to this file,
    /// atomically (temporary file + rename), before readiness can turn 200. This is how
    /// tests and guard's local platform find a replica started with port 0.
    #[arg(long, env = "ULTRA_BOOST_ADDRESS_FILE", value_name = "PATH")]
    pub address_file: Option<PathBuf>,

    /// Also serve every endpoint on a Unix domain socket at this path (created at start,
    /// removed at exit; a stale socket left by a killed process is replaced). For a
    /// proxy on the same machine: guard's local router reaches its replicas this way,
    /// which costs the kernel less per request than a second TCP hop over loopback.
    #[arg(long, env = "ULTRA_BOOST_UNIX_SOCKET", value_name = "PATH")]
    pub unix_socket: Option<PathBuf>,

    /// Accept client connections handed over by a front proxy on the same machine
    /// through a Unix socket at this path (file descriptors passed with SCM_RIGHTS; a
    /// one-byte protocol, see the crate docs). guard's router hands connections over
    /// while a service runs one release, so requests then skip the proxy entirely.
    /// Created at start, removed at exit, a stale socket replaced.
    #[arg(long, env = "ULTRA_BOOST_HANDOFF_SOCKET", value_name = "PATH")]
    pub handoff_socket: Option<PathBuf>,

    /// After SIGTERM/SIGINT, keep serving (with readiness 503) this long so load
    /// balancers stop sending traffic before the listener closes, e.g. `5s`, `500ms`.
    #[arg(long, env = "ULTRA_BOOST_DRAIN_DELAY", default_value = "5s", value_parser = parse_duration)]
    pub drain_delay: Duration,

    /// After the drain delay, how long in-flight requests get to finish before the
    /// process exits anyway (with status 1).
    #[arg(long, env = "ULTRA_BOOST_SHUTDOWN_TIMEOUT", default_value = "10s", value_parser = parse_duration)]
    pub shutdown_timeout: Duration,

    /// Extra warm-up time before readiness turns 200 (0 by default). Lets operators and
    /// tests observe and rely on the "starting" state.
    #[arg(long, env = "ULTRA_BOOST_STARTUP_DELAY", default_value = "0s", value_parser = parse_duration)]
    pub startup_delay: Duration,

    /// How often the background task runs (its last success feeds the freshness SLO).
    #[arg(long, env = "ULTRA_BOOST_BACKGROUND_INTERVAL", default_value = "15s", value_parser = parse_positive_duration)]
    pub background_interval: Duration,

    /// URL the background task GETs on each run (http or https). Without it the task
    /// does local work instead. Outgoing requests are measured as ultra_boost_upstream_*.
    #[arg(long, env = "ULTRA_BOOST_UPSTREAM_URL", value_parser = parse_upstream_url)]
    pub upstream_url: Option<reqwest::Url>,

    /// Time limit for one upstream request, connection included.
    #[arg(long, env = "ULTRA_BOOST_UPSTREAM_TIMEOUT", default_value = "5s", value_parser = parse_positive_duration)]
    pub upstream_timeout: Duration,

    /// Fault injection: share of `GET /` answered 500, from 0 (off, the default) to 1.
    #[arg(long, env = "ULTRA_BOOST_FAULT_ERROR_RATE", default_value = "0", value_parser = parse_rate, allow_negative_numbers = true)]
    pub fault_error_rate: f64,

    /// Fault injection: milliseconds added to every `GET /` (0, the default, is off).
    #[arg(long, env = "ULTRA_BOOST_FAULT_LATENCY_MS", default_value = "0")]
    pub fault_latency_ms: u64,

    /// Seed of the fault-injection random sequence; fix it for reproducible runs.
    /// Without it each process picks its own from the clock and its PID.
    #[arg(long, env = "ULTRA_BOOST_FAULT_SEED")]
    pub fault_seed: Option<u64>,

    /// Log format on stderr: `text` for people, `json` (one object per line) for machines.
    #[arg(
        long,
        env = "ULTRA_BOOST_LOG_FORMAT",
        value_enum,
        default_value = "text"
    )]
    pub log_format: LogFormat,

    /// Most verbose log level written: error, warn, info, debug or trace.
    #[arg(long, env = "ULTRA_BOOST_LOG_LEVEL", default_value = "info")]
    pub log_level: tracing_subscriber::filter::LevelFilter,

    /// Tokio worker threads serving requests (at least 1). Two is plenty for this
    /// service and keeps memory small; raise it on machines with many cores.
    #[arg(long, env = "ULTRA_BOOST_WORKER_THREADS", default_value = "2", value_parser = clap::value_parser!(u16).range(1..))]
    pub worker_threads: u16,
}

/// How log lines are written.
#[derive(Copy, Clone, Debug, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

fn parse_duration(s: &str) -> Result<Duration, String> {
    humantime::parse_duration(s)
        .map_err(|e| format!("{e}; expected a duration such as `5s`, `250ms` or `1m`"))
}

fn parse_positive_duration(s: &str) -> Result<Duration, String> {
    let d = parse_duration(s)?;
    if d.is_zero() {
        return Err("must be greater than zero, e.g. `15s`".to_owned());
    }
    Ok(d)
}

fn parse_rate(s: &str) -> Result<f64, String> {
    let rate: f64 = s.trim().parse().map_err(|_| {
        format!("`{s}` is not a number; expected a share between 0 and 1, e.g. `0.05`")
    })?;
    if !(0.0..=1.0).contains(&rate) {
        return Err(format!(
            "`{s}` is outside [0, 1]; expected a share such as `0.05` for 5 %"
        ));
    }
    Ok(rate)
}

fn parse_upstream_url(s: &str) -> Result<reqwest::Url, String> {
    let url = reqwest::Url::parse(s).map_err(|e| {
        format!("{e}; expected an absolute URL such as `http://127.0.0.1:9000/ping`")
    })?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err(format!(
            "scheme `{}` is not supported; use http or https, e.g. `https://example.com/ping`",
            url.scheme()
        ));
    }
    if url.host_str().is_none_or(str::is_empty) {
        return Err("the URL has no host, e.g. `http://127.0.0.1:9000/ping`".to_owned());
    }
    Ok(url)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rates_outside_unit_interval_are_refused() {
        assert_eq!(parse_rate("0.25"), Ok(0.25));
        assert_eq!(parse_rate("1"), Ok(1.0));
        assert!(parse_rate("1.5").unwrap_err().contains("outside [0, 1]"));
        assert!(parse_rate("-0.1").is_err());
        assert!(parse_rate("NaN").is_err());
        assert!(parse_rate("lots").unwrap_err().contains("not a number"));
    }

    #[test]
    fn upstream_urls_need_http_and_a_host() {
        assert!(parse_upstream_url("http://127.0.0.1:9/x").is_ok());
        assert!(
            parse_upstream_url("ftp://example.com")
                .unwrap_err()
                .contains("scheme")
        );
        assert!(parse_upstream_url("not a url").is_err());
    }

    #[test]
    fn zero_interval_is_refused() {
        assert!(parse_positive_duration("0s").is_err());
        assert_eq!(
            parse_positive_duration("250ms"),
            Ok(Duration::from_millis(250))
        );
    }

    #[test]
    fn defaults_parse() {
        let args = Args::try_parse_from(["ultra-boost"]).unwrap();
        assert_eq!(args.drain_delay, Duration::from_secs(5));
        assert_eq!(args.fault_error_rate, 0.0);
        assert_eq!(args.worker_threads, 2);
    }

    #[test]
    fn a_negative_error_rate_is_out_of_range_not_an_unknown_flag() {
        let err = Args::try_parse_from(["ultra-boost", "--fault-error-rate", "-0.1"])
            .expect_err("negative");
        assert!(err.to_string().contains("outside [0, 1]"), "{err}");
    }

    #[test]
    fn clap_definition_is_consistent() {
        use clap::CommandFactory;
        Args::command().debug_assert();
    }
}
