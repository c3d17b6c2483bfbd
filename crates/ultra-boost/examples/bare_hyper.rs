//! Baseline for `bench/service/run.sh`: a bare hyper HTTP/1.1 server on the
//! same runtime settings as ultra-boost (tokio multi-thread, 2 workers by
//! default) that answers every request with the given bytes — no routing, no
//! metrics, no logging. The benchmark runs it next to ultra-boost to show what
//! the instrumentation costs.
//!
//! Usage: `bare_hyper --listen 127.0.0.1:0 --body '{"service":…}' [--address-file PATH]`
//! (the bound address is written to PATH, as ultra-boost does).

use std::convert::Infallible;
use std::net::SocketAddr;

use bytes::Bytes;
use http::header::{CONTENT_TYPE, HeaderValue};
use http::{Request, Response};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;

fn usage() -> ! {
    eprintln!(
        "usage: bare_hyper --listen ADDR --body STRING [--address-file PATH] [--worker-threads N]"
    );
    std::process::exit(2)
}

fn main() -> anyhow::Result<()> {
    let mut listen: Option<SocketAddr> = None;
    let mut body = String::new();
    let mut workers = 2usize;
    let mut address_file: Option<String> = None;
    let mut args = std::env::args().skip(1);
    while let Some(flag) = args.next() {
        let value = args.next().unwrap_or_else(|| usage());
        match flag.as_str() {
            "--listen" => listen = Some(value.parse()?),
            "--body" => body = value,
            "--worker-threads" => workers = value.parse()?,
            "--address-file" => address_file = Some(value),
            _ => usage(),
        }
    }
    let listen = listen.unwrap_or_else(|| usage());
    let body = Bytes::from(body);
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(workers)
        .enable_all()
        .build()?
        .block_on(async move {
            let listener = TcpListener::bind(listen).await?;
            let addr = listener.local_addr()?;
            if let Some(path) = &address_file {
                std::fs::write(format!("{path}.tmp"), format!("{addr}\n"))?;
                std::fs::rename(format!("{path}.tmp"), path)?;
            }
            eprintln!("bare_hyper listening on {addr}");
            loop {
                let (stream, _) = listener.accept().await?;
                let _ = stream.set_nodelay(true);
                let body = body.clone();
                tokio::spawn(async move {
                    let svc = service_fn(move |_req: Request<Incoming>| {
                        let mut r = Response::new(Full::new(body.clone()));
                        r.headers_mut()
                            .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
                        async move { Ok::<_, Infallible>(r) }
                    });
                    let _ = http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), svc)
                        .await;
                });
            }
        })
}
