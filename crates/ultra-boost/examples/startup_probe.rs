//! Measures time from exec to ready for `bench/service/run.sh`: starts each
//! given command N times on a free loopback port, polls `GET PATH` every
//! millisecond until it answers 200, and prints per command the median, min
//! and max in milliseconds as one line of JSON. The commands' starts are
//! interleaved (A, B, A, B, …) so that both see the same load on a shared
//! machine. `{addr}` in a command is replaced by the chosen `127.0.0.1:PORT`.
//!
//! Usage: `startup_probe --runs 10 -- PATH CMD ARGS… [--- PATH CMD ARGS…]…`, e.g.
//! `startup_probe --runs 10 -- /-/ready target/release/ultra-boost --listen {addr}`

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

fn probe(addr: &str, path: &str) -> bool {
    let Ok(mut s) = TcpStream::connect(addr) else {
        return false;
    };
    let _ = s.set_read_timeout(Some(Duration::from_millis(500)));
    let req = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    if s.write_all(req.as_bytes()).is_err() {
        return false;
    }
    let mut head = [0u8; 12];
    s.read_exact(&mut head).is_ok() && &head[9..12] == b"200"
}

/// One start: milliseconds from spawn to the first 200.
fn start_once(path: &str, cmd: &[String]) -> anyhow::Result<f64> {
    let port = TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
    let addr = format!("127.0.0.1:{port}");
    let argv: Vec<String> = cmd.iter().map(|a| a.replace("{addr}", &addr)).collect();
    let start = Instant::now();
    let mut child = Command::new(&argv[0])
        .args(&argv[1..])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .with_context(|| format!("starting {}", argv[0]))?;
    let ready = loop {
        if probe(&addr, path) {
            break Some(start.elapsed());
        }
        if start.elapsed() > Duration::from_secs(5) {
            break None;
        }
        std::thread::sleep(Duration::from_millis(1));
    };
    let _ = child.kill();
    let _ = child.wait();
    Ok(ready
        .with_context(|| format!("{} not ready within 5 s", argv[0]))?
        .as_secs_f64()
        * 1000.0)
}

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let mut runs = 10usize;
    let mut i = 0;
    while i < args.len() && args[i] != "--" {
        match args[i].as_str() {
            "--runs" => runs = args.get(i + 1).context("--runs N")?.parse()?,
            other => bail!("unknown option {other}"),
        }
        i += 2;
    }
    let groups: Vec<&[String]> = args
        .get(i + 1..)
        .context("missing -- PATH COMMAND")?
        .split(|a| a == "---")
        .collect();
    if groups.iter().any(|g| g.len() < 2) || runs == 0 {
        bail!("each group needs PATH and COMMAND, and --runs at least 1");
    }
    let mut times = vec![Vec::with_capacity(runs); groups.len()];
    for _ in 0..runs {
        for (g, group) in groups.iter().enumerate() {
            times[g].push(start_once(&group[0], &group[1..])?);
        }
    }
    for (group, t) in groups.iter().zip(&mut times) {
        t.sort_by(f64::total_cmp);
        let n = t.len();
        let median = if n % 2 == 1 {
            t[n / 2]
        } else {
            (t[n / 2 - 1] + t[n / 2]) / 2.0
        };
        println!(
            "{{\"command\":{:?},\"runs\":{n},\"median_ms\":{median:.2},\"min_ms\":{:.2},\"max_ms\":{:.2}}}",
            group[1],
            t[0],
            t[n - 1]
        );
    }
    Ok(())
}
