//! Measures time from exec to ready for `bench/service/run.sh`: starts the
//! given command N times on a free loopback port, polls `GET PATH` every
//! millisecond until it answers 200, and prints the median, min and max in
//! milliseconds as one line of JSON. `{addr}` in the command is replaced by
//! the chosen `127.0.0.1:PORT`.
//!
//! Usage: `startup_probe --runs 10 --path /-/ready -- target/release/ultra-boost --listen {addr}`

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

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let mut runs = 10usize;
    let mut path = "/-/ready".to_owned();
    let mut i = 0;
    while i < args.len() && args[i] != "--" {
        match args[i].as_str() {
            "--runs" => runs = args.get(i + 1).context("--runs N")?.parse()?,
            "--path" => path = args.get(i + 1).context("--path P")?.clone(),
            other => bail!("unknown option {other}"),
        }
        i += 2;
    }
    let cmd = args
        .get(i + 1..)
        .filter(|c| !c.is_empty())
        .context("missing -- COMMAND")?;
    let mut times = Vec::with_capacity(runs);
    for _ in 0..runs {
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
            if probe(&addr, &path) {
                break Some(start.elapsed());
            }
            if start.elapsed() > Duration::from_secs(5) {
                break None;
            }
            std::thread::sleep(Duration::from_millis(1));
        };
        let _ = child.kill();
        let _ = child.wait();
        times.push(ready.context("not ready within 5 s")?.as_secs_f64() * 1000.0);
    }
    times.sort_by(f64::total_cmp);
    let n = times.len();
    let median = if n % 2 == 1 {
        times[n / 2]
    } else {
        (times[n / 2 - 1] + times[n / 2]) / 2.0
    };
    println!(
        "{{\"runs\":{},\"median_ms\":{:.2},\"min_ms\":{:.2},\"max_ms\":{:.2}}}",
        n,
        median,
        times[0],
        times[n - 1]
    );
    Ok(())
}
