//! `--handoff-socket`: the test plays the front proxy (as guard's router does)
//! and hands accepted client connections to the real ultra-boost process over
//! the Unix socket with SCM_RIGHTS.

mod common;

use std::io::{IoSlice, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::Duration;

use common::{Service, poll};
use nix::sys::socket::{ControlMessage, MsgFlags, sendmsg};

/// Sends one protocol message: `byte`, with `fd` attached when given.
fn send(channel: &UnixStream, byte: u8, fd: Option<&TcpStream>) {
    let fds = fd.map(|s| [s.as_raw_fd()]);
    let cmsgs: Vec<ControlMessage> = fds
        .as_ref()
        .map(|f| vec![ControlMessage::ScmRights(f)])
        .unwrap_or_default();
    let sent = sendmsg::<()>(
        channel.as_raw_fd(),
        &[IoSlice::new(&[byte])],
        &cmsgs,
        MsgFlags::MSG_NOSIGNAL,
        None,
    )
    .expect("sendmsg on the handoff channel");
    assert_eq!(sent, 1);
}

/// A client connection to a listener of the test's, and the test's accepted
/// end of it (what a proxy would hand over).
fn client_and_accepted(front: &TcpListener) -> (TcpStream, TcpStream) {
    let client = TcpStream::connect(front.local_addr().unwrap()).unwrap();
    client
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let (accepted, _) = front.accept().unwrap();
    (client, accepted)
}

/// Reads one HTTP/1.1 response (with Content-Length) from `s`: head, body.
fn read_response(s: &mut TcpStream) -> (String, String) {
    let mut buf = Vec::new();
    let mut byte = [0u8; 1];
    while !buf.ends_with(b"\r\n\r\n") {
        let n = s.read(&mut byte).expect("reading a response head");
        assert_eq!(n, 1, "connection closed inside a response head: {buf:?}");
        buf.push(byte[0]);
    }
    let head = String::from_utf8(buf).unwrap();
    let len: usize = head
        .lines()
        .find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.eq_ignore_ascii_case("content-length")
                .then(|| v.trim().parse().unwrap())
        })
        .expect("content-length");
    let mut body = vec![0u8; len];
    s.read_exact(&mut body).unwrap();
    (head, String::from_utf8(body).unwrap())
}

fn get(s: &mut TcpStream, target: &str) {
    write!(s, "GET {target} HTTP/1.1\r\nHost: front\r\n\r\n").unwrap();
}

fn channel(path: &Path) -> UnixStream {
    let c = UnixStream::connect(path).expect("connecting to --handoff-socket");
    c.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    c
}

#[test]
fn handed_over_connections_are_served_recycled_and_counted() {
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("handoff.sock");
    let mut svc = Service::start(&[
        "--handoff-socket",
        sock.to_str().unwrap(),
        "--drain-delay",
        "0s",
    ]);
    svc.wait_ready();
    let front = TcpListener::bind("127.0.0.1:0").unwrap();
    let chan = channel(&sock);

    // The client's request is already waiting in the socket when the
    // connection changes hands, as it is behind a proxy: nothing is lost.
    let (mut client, accepted) = client_and_accepted(&front);
    get(&mut client, "/");
    send(&chan, b'c', Some(&accepted));
    drop(accepted);
    let (head, body) = read_response(&mut client);
    assert!(head.starts_with("HTTP/1.1 200 OK\r\n"), "{head}");
    assert!(body.contains("\"service\":\"ultra-boost\""), "{body}");
    assert!(
        !head.to_ascii_lowercase().contains("connection: close"),
        "{head}"
    );

    // Keep-alive on the handed-over connection.
    get(&mut client, "/-/ready");
    let (head, body) = read_response(&mut client);
    assert!(head.starts_with("HTTP/1.1 200 OK\r\n"), "{head}");
    assert_eq!(body, "ready\n");

    // Recycle: the next response says close, then the replica closes.
    send(&chan, b'r', None);
    // The recycle message and the next request race; poll until one of the
    // following responses says close (the first one does unless the request
    // overtook the message).
    let mut closed_after = 0;
    for i in 1..=20 {
        get(&mut client, "/");
        let (head, _) = read_response(&mut client);
        assert!(head.starts_with("HTTP/1.1 200 OK\r\n"), "{head}");
        if head.to_ascii_lowercase().contains("connection: close") {
            closed_after = i;
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(
        closed_after > 0,
        "no response asked the client to reconnect"
    );
    let mut rest = Vec::new();
    assert_eq!(client.read_to_end(&mut rest).unwrap(), 0, "closed after it");

    // A connection handed over after the recycle is not affected by it.
    let (mut client2, accepted2) = client_and_accepted(&front);
    send(&chan, b'c', Some(&accepted2));
    drop(accepted2);
    for _ in 0..2 {
        get(&mut client2, "/");
        let (head, _) = read_response(&mut client2);
        assert!(
            !head.to_ascii_lowercase().contains("connection: close"),
            "{head}"
        );
    }

    assert_eq!(
        svc.metric("ultra_boost_handed_over_connections_total"),
        Some(2.0)
    );
    let root = svc
        .metric(r#"ultra_boost_http_requests_total{method="GET",route="/",code="200"}"#)
        .unwrap();
    assert_eq!(
        root,
        3.0 + closed_after as f64,
        "every request counted once"
    );

    svc.signal("TERM");
    assert_eq!(svc.wait_exit(Duration::from_secs(15)).code(), Some(0));
    assert!(!sock.exists(), "the socket is removed at exit");
}

#[test]
fn a_channel_breaking_the_protocol_is_closed_and_counted_and_serving_goes_on() {
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("handoff.sock");
    let svc = Service::start(&[
        "--handoff-socket",
        sock.to_str().unwrap(),
        "--drain-delay",
        "0s",
    ]);
    svc.wait_ready();

    // An unknown byte.
    let mut bad = channel(&sock);
    bad.write_all(b"x").unwrap();
    let mut rest = Vec::new();
    assert_eq!(
        bad.read_to_end(&mut rest).unwrap(),
        0,
        "the channel is closed"
    );
    // A connection message without a descriptor.
    let mut bare = channel(&sock);
    bare.write_all(b"c").unwrap();
    assert_eq!(
        bare.read_to_end(&mut rest).unwrap(),
        0,
        "the channel is closed"
    );

    poll(
        Duration::from_secs(5),
        "both protocol errors counted",
        || {
            (svc.metric(r#"ultra_boost_app_errors_total{subsystem="handoff",kind="protocol"}"#)
                == Some(2.0))
            .then_some(())
        },
    );
    assert_eq!(svc.get("/").status, 200);
    // And a good channel still works.
    let front = TcpListener::bind("127.0.0.1:0").unwrap();
    let (mut client, accepted) = client_and_accepted(&front);
    send(&channel(&sock), b'c', Some(&accepted));
    drop(accepted);
    get(&mut client, "/");
    assert!(
        read_response(&mut client)
            .0
            .starts_with("HTTP/1.1 200 OK\r\n")
    );
}
