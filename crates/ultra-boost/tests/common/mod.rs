//! Test harness: starts the real `ultra-boost` binary on an ephemeral loopback
//! port (learned through `--address-file`), speaks plain HTTP/1.1 to it over
//! std sockets, polls with deadlines, and prints the service's log when a
//! check fails.

#![allow(dead_code)] // each test binary uses a different part of the harness

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

/// A running `ultra-boost` process; killed on drop if still alive.
pub struct Service {
    child: Child,
    /// Bound address.
    pub addr: SocketAddr,
    dir: tempfile::TempDir,
    exited: Option<ExitStatus>,
}

impl Service {
    /// Starts the service with `args` (after `--listen 127.0.0.1:0 --address-file …
    /// --log-format json`) and waits for its address file.
    pub fn start(args: &[&str]) -> Service {
        Service::start_with_env(args, &[])
    }

    /// Like `start`, with extra environment variables.
    pub fn start_with_env(args: &[&str], env: &[(&str, &str)]) -> Service {
        let dir = tempfile::tempdir().unwrap();
        let addr_file = dir.path().join("address");
        let log = std::fs::File::create(dir.path().join("service.log")).unwrap();
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_ultra-boost"));
        cmd.args(["--listen", "127.0.0.1:0", "--address-file"])
            .arg(&addr_file)
            .args(["--log-format", "json"])
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log);
        // The tests set what they need; inherited ULTRA_BOOST_* would change defaults.
        for (k, _) in std::env::vars() {
            if k.starts_with("ULTRA_BOOST_") || k == "GIT_COMMIT" || k == "BUILD_NUMBER" {
                cmd.env_remove(k);
            }
        }
        for (k, v) in env {
            cmd.env(k, v);
        }
        let child = cmd.spawn().expect("starting ultra-boost");
        let mut svc = Service {
            child,
            addr: "127.0.0.1:1".parse().unwrap(),
            dir,
            exited: None,
        };
        let text = poll(Duration::from_secs(10), "the address file", || {
            if let Some(status) = svc.child.try_wait().unwrap() {
                panic!(
                    "ultra-boost exited early with {status}; log:\n{}",
                    svc.log()
                );
            }
            std::fs::read_to_string(&addr_file)
                .ok()
                .filter(|t| t.ends_with('\n'))
        });
        svc.addr = text.trim().parse().expect("address file holds IP:PORT");
        svc
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Everything the service logged so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("service.log")).unwrap_or_default()
    }

    /// Temporary directory owned by this service (for test files).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// GET `path`.
    pub fn get(&self, path: &str) -> HttpResponse {
        request(self.addr, "GET", path, &[])
            .unwrap_or_else(|e| panic!("GET {path}: {e}; log:\n{}", self.log()))
    }

    /// Polls `/-/ready` until it answers 200.
    pub fn wait_ready(&self) {
        poll(Duration::from_secs(10), "readiness 200", || {
            request(self.addr, "GET", "/-/ready", &[])
                .ok()
                .filter(|r| r.status == 200)
        });
    }

    /// Current value of the sample whose line starts with `series` (name and labels).
    pub fn metric(&self, series: &str) -> Option<f64> {
        metric_value(&self.get("/metrics").body, series)
    }

    /// Sends a signal by name (`TERM`, `INT`).
    pub fn signal(&self, name: &str) {
        // The shell's built-in kill: no dependency on the procps package.
        let ok = Command::new("sh")
            .args(["-c", &format!("kill -s {name} {}", self.pid())])
            .status()
            .expect("running sh -c kill")
            .success();
        assert!(ok, "kill -s {name} failed");
    }

    /// Waits for the process to exit, at most `limit`.
    pub fn wait_exit(&mut self, limit: Duration) -> ExitStatus {
        let status = poll(limit, "the process to exit", || {
            self.child.try_wait().unwrap()
        });
        self.exited = Some(status);
        status
    }
}

impl Drop for Service {
    fn drop(&mut self) {
        if self.exited.is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
        if std::thread::panicking() {
            eprintln!("--- ultra-boost log ({}) ---\n{}", self.addr, self.log());
        }
    }
}

/// A parsed HTTP response.
#[derive(Debug)]
pub struct HttpResponse {
    /// Status code.
    pub status: u16,
    /// Header lines, names lower-cased: (name, value).
    pub headers: Vec<(String, String)>,
    /// Body as text (chunked encoding decoded).
    pub body: String,
}

impl HttpResponse {
    /// First value of a header.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }
}

/// One HTTP/1.1 request on a fresh connection (`Connection: close`).
pub fn request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
) -> std::io::Result<HttpResponse> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(5))?;
    s.set_read_timeout(Some(Duration::from_secs(20)))?;
    let mut req = format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n");
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    s.write_all(req.as_bytes())?;
    let mut raw = Vec::new();
    s.read_to_end(&mut raw)?;
    parse_response(&raw).ok_or_else(|| {
        std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("unparsable response: {:?}", String::from_utf8_lossy(&raw)),
        )
    })
}

fn parse_response(raw: &[u8]) -> Option<HttpResponse> {
    let split = raw.windows(4).position(|w| w == b"\r\n\r\n")?;
    let head = std::str::from_utf8(&raw[..split]).ok()?;
    let mut lines = head.split("\r\n");
    let status: u16 = lines.next()?.split_whitespace().nth(1)?.parse().ok()?;
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    let mut body = raw[split + 4..].to_vec();
    let chunked = headers
        .iter()
        .any(|(n, v)| n == "transfer-encoding" && v.contains("chunked"));
    if chunked {
        let mut out = Vec::new();
        let mut rest = &body[..];
        loop {
            let nl = rest.windows(2).position(|w| w == b"\r\n")?;
            let size_text = std::str::from_utf8(&rest[..nl]).ok()?;
            let size = usize::from_str_radix(size_text.split(';').next()?.trim(), 16).ok()?;
            rest = &rest[nl + 2..];
            if size == 0 {
                break;
            }
            out.extend_from_slice(rest.get(..size)?);
            rest = rest.get(size + 2..)?;
        }
        body = out;
    }
    Some(HttpResponse {
        status,
        headers,
        body: String::from_utf8(body).ok()?,
    })
}

/// Value of the first exposition line starting with `series` followed by a space.
pub fn metric_value(exposition: &str, series: &str) -> Option<f64> {
    exposition
        .lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' '))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
}

/// Calls `f` every 20 ms until it returns `Some`, panicking after `limit`.
pub fn poll<T>(limit: Duration, what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {limit:?} waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Path of a tool the tests need; fails (never skips) when it is missing.
pub fn require_tool(name: &str) -> PathBuf {
    std::env::var_os("PATH")
        .and_then(|paths| {
            std::env::split_paths(&paths)
                .map(|p| p.join(name))
                .find(|p| p.is_file())
        })
        .unwrap_or_else(|| {
            panic!("`{name}` is not on PATH: run scripts/install-test-deps.sh to install it")
        })
}

/// A loopback port that was free a moment ago (for programs that cannot report
/// the port they bound).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}
