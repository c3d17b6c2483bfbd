//! Standard `process_*` metrics read from `/proc/self` at scrape time (Linux),
//! with the names and meanings of the Prometheus client libraries:
//! `process_cpu_seconds_total`, `process_resident_memory_bytes`,
//! `process_virtual_memory_bytes`, `process_open_fds`, `process_max_fds`,
//! `process_threads`, `process_start_time_seconds`.
//!
//! Clock ticks are taken as 100 per second (`USER_HZ`, fixed by the kernel ABI on
//! every Linux architecture; the Go `procfs` package does the same). A file that
//! cannot be read or parsed drops only its own metrics from that scrape and is
//! counted as `ultra_boost_app_errors_total{subsystem="metrics",kind="procfs"}`.

use std::fs;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::{ConstCounter, Counter};
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::ConstGauge;

use crate::metrics::AppErrorLabels;

const USER_HZ: f64 = 100.0;

/// The figures of one `/proc/self/stat` read.
#[derive(Debug, PartialEq)]
struct Stat {
    cpu_seconds: f64,
    threads: i64,
    virtual_bytes: i64,
    start_ticks: u64,
}

fn parse_stat(text: &str) -> Option<Stat> {
    // The command name (field 2) is in parentheses and may contain spaces, so
    // fields are counted after the last ')'. rest[0] is field 3 (state).
    let rest: Vec<&str> = text
        .get(text.rfind(')')? + 1..)?
        .split_whitespace()
        .collect();
    let field = |n: usize| rest.get(n - 3).copied();
    let utime: u64 = field(14)?.parse().ok()?;
    let stime: u64 = field(15)?.parse().ok()?;
    Some(Stat {
        cpu_seconds: (utime + stime) as f64 / USER_HZ,
        threads: field(20)?.parse().ok()?,
        start_ticks: field(22)?.parse().ok()?,
        virtual_bytes: field(23)?.parse().ok()?,
    })
}

/// `VmRSS` of `/proc/self/status`, in bytes.
fn parse_rss(status: &str) -> Option<i64> {
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kib: i64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

/// Soft limit of "Max open files" in `/proc/self/limits`; `None` when unlimited.
fn parse_max_fds(limits: &str) -> Option<i64> {
    let line = limits.lines().find(|l| l.starts_with("Max open files"))?;
    line["Max open files".len()..]
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

fn parse_btime(stat: &str) -> Option<u64> {
    stat.lines()
        .find_map(|l| l.strip_prefix("btime "))?
        .trim()
        .parse()
        .ok()
}

/// Reads `/proc/self` on every scrape.
#[derive(Debug)]
pub struct ProcessCollector {
    /// Unix time the process started, computed once (it cannot change).
    start_time: Option<f64>,
    errors: Counter,
}

impl ProcessCollector {
    /// Computes the start time; errors are counted on `app_errors`.
    pub fn new(app_errors: Family<AppErrorLabels, Counter>) -> ProcessCollector {
        let errors = app_errors.get_or_create_owned(&AppErrorLabels {
            subsystem: "metrics",
            kind: "procfs",
        });
        let start_time = (|| {
            let btime = parse_btime(&fs::read_to_string("/proc/stat").ok()?)?;
            let stat = parse_stat(&fs::read_to_string("/proc/self/stat").ok()?)?;
            Some(btime as f64 + stat.start_ticks as f64 / USER_HZ)
        })();
        if start_time.is_none() {
            errors.inc();
        }
        ProcessCollector { start_time, errors }
    }

    fn read<T>(&self, path: &str, parse: impl FnOnce(&str) -> Option<T>) -> Option<T> {
        let value = fs::read_to_string(path).ok().and_then(|t| parse(&t));
        if value.is_none() {
            self.errors.inc();
        }
        value
    }
}

fn gauge(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    value: impl prometheus_client::encoding::EncodeGaugeValue + Send + Sync + std::fmt::Debug,
) -> Result<(), std::fmt::Error> {
    let g = ConstGauge::new(value);
    g.encode(encoder.encode_descriptor(name, help, None, g.metric_type())?)
}

impl Collector for ProcessCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        if let Some(stat) = self.read("/proc/self/stat", parse_stat) {
            let c = ConstCounter::new(stat.cpu_seconds);
            c.encode(encoder.encode_descriptor(
                "process_cpu_seconds",
                "Total user and system CPU time spent in seconds.",
                None,
                c.metric_type(),
            )?)?;
            gauge(
                &mut encoder,
                "process_virtual_memory_bytes",
                "Virtual memory size in bytes.",
                stat.virtual_bytes,
            )?;
            gauge(
                &mut encoder,
                "process_threads",
                "Number of OS threads in the process.",
                stat.threads,
            )?;
        }
        if let Some(rss) = self.read("/proc/self/status", parse_rss) {
            gauge(
                &mut encoder,
                "process_resident_memory_bytes",
                "Resident memory size in bytes.",
                rss,
            )?;
        }
        let open = fs::read_dir("/proc/self/fd").map(|d| d.count() as i64);
        match open {
            // The directory handle used for counting is itself an open fd.
            Ok(n) => gauge(
                &mut encoder,
                "process_open_fds",
                "Number of open file descriptors.",
                (n - 1).max(0),
            )?,
            Err(_) => {
                self.errors.inc();
            }
        }
        if let Ok(limits) = fs::read_to_string("/proc/self/limits") {
            // "unlimited" has no number: the metric is left out, as Go's client does.
            if let Some(max) = parse_max_fds(&limits) {
                gauge(
                    &mut encoder,
                    "process_max_fds",
                    "Maximum number of open file descriptors.",
                    max,
                )?;
            }
        } else {
            self.errors.inc();
        }
        if let Some(start) = self.start_time {
            gauge(
                &mut encoder,
                "process_start_time_seconds",
                "Start time of the process since unix epoch in seconds.",
                start,
            )?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_with_spaces_in_the_name_parses() {
        let line = "4242 (ultra boost) S 1 4242 4242 0 -1 4194304 500 0 0 0 150 50 0 0 20 0 3 0 123456 9437184 700 18446744073709551615";
        assert_eq!(
            parse_stat(line),
            Some(Stat {
                cpu_seconds: 2.0,
                threads: 3,
                virtual_bytes: 9_437_184,
                start_ticks: 123_456,
            })
        );
        assert_eq!(parse_stat("garbage"), None);
    }

    #[test]
    fn status_limits_and_btime_parse() {
        assert_eq!(
            parse_rss("Name:\tx\nVmRSS:\t    3072 kB\n"),
            Some(3_145_728)
        );
        let limits = "Limit                     Soft Limit           Hard Limit           Units\nMax open files            1024                 524288               files\n";
        assert_eq!(parse_max_fds(limits), Some(1024));
        assert_eq!(
            parse_max_fds(
                "Max open files            unlimited            unlimited            files\n"
            ),
            None
        );
        assert_eq!(
            parse_btime("cpu 1 2\nbtime 1700000000\n"),
            Some(1_700_000_000)
        );
    }

    #[test]
    fn live_process_reads() {
        let stat = parse_stat(&fs::read_to_string("/proc/self/stat").unwrap()).unwrap();
        assert!(stat.threads >= 1);
        let rss = parse_rss(&fs::read_to_string("/proc/self/status").unwrap()).unwrap();
        assert!(rss > 0);
    }
}
