//! Connections handed over by a front proxy on the same machine
//! (`--handoff-socket`).
//!
//! A proxy that has nothing to decide per request (guard's router while a
//! service runs one release) can pass the client's accepted TCP connection to
//! this process instead of relaying every request: the requests then reach
//! this service with no proxy in their path, and the client's address is the
//! real peer address. Apache httpd's `mod_proxy_fdpass` works the same way.
//!
//! # Protocol
//! The proxy connects to the Unix stream socket at `--handoff-socket` and
//! sends messages of exactly one byte each:
//! - `c` with one file descriptor attached (`SCM_RIGHTS`): an accepted client
//!   connection, from which the proxy has read nothing. It is served like a
//!   connection accepted on `--listen`, and drains the same way.
//! - `r` (recycle): every connection handed over so far answers its next
//!   request with `Connection: close`, so the client reconnects through the
//!   proxy (which does so before it starts moving traffic between releases).
//!
//! Anything else, or a `c` without exactly one descriptor, ends that channel
//! (descriptors received with it are closed) and is counted in
//! `ultra_boost_app_errors_total{subsystem="handoff"}`.

use std::io::IoSliceMut;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

use nix::sys::socket::{ControlMessageOwned, MsgFlags, recvmsg};
use tokio::io::Interest;
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::mpsc;
use tracing::{debug, warn};

/// The byte announcing a connection (with its descriptor attached).
pub const CONNECTION: u8 = b'c';
/// The byte asking handed-over connections to close after their next response.
pub const RECYCLE: u8 = b'r';

/// What a channel delivers to the server.
#[derive(Debug)]
pub enum Handed {
    /// A client connection to serve.
    Connection(tokio::net::TcpStream),
    /// Close handed-over connections after their next response.
    Recycle,
}

/// Accepts proxy channels on `listener` and forwards what they carry to `to`
/// until the server drops its receiver.
pub async fn accept_channels(
    listener: UnixListener,
    to: mpsc::UnboundedSender<Handed>,
    errors: impl Fn(&'static str) + Clone + Send + 'static,
) {
    loop {
        let stream = match listener.accept().await {
            Ok((stream, _)) => stream,
            Err(e) => {
                warn!(error = %e, "handoff: accept failed");
                errors("accept");
                tokio::time::sleep(std::time::Duration::from_millis(10)).await;
                continue;
            }
        };
        if to.is_closed() {
            return;
        }
        debug!("handoff: a proxy connected");
        tokio::spawn(read_channel(stream, to.clone(), errors.clone()));
    }
}

async fn read_channel(
    stream: UnixStream,
    to: mpsc::UnboundedSender<Handed>,
    errors: impl Fn(&'static str),
) {
    loop {
        if stream.readable().await.is_err() {
            errors("receive");
            return;
        }
        let received = stream.try_io(Interest::READABLE, || receive_one(stream.as_raw_fd()));
        let message = match received {
            Ok(Some(m)) => m,
            Ok(None) => {
                debug!("handoff: the proxy closed its channel");
                return;
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => continue,
            Err(e) => {
                warn!(error = %e, "handoff: reading the channel failed; closing it");
                errors("receive");
                return;
            }
        };
        let handed = match message {
            (CONNECTION, mut fds) if fds.len() == 1 => match into_tcp(fds.remove(0)) {
                Ok(tcp) => Handed::Connection(tcp),
                Err(e) => {
                    warn!(error = %e, "handoff: the descriptor received is not a usable TCP connection; closing the channel");
                    errors("descriptor");
                    return;
                }
            },
            (RECYCLE, fds) if fds.is_empty() => Handed::Recycle,
            (byte, fds) => {
                warn!(
                    byte,
                    descriptors = fds.len(),
                    "handoff: unexpected message; closing the channel"
                );
                errors("protocol");
                return;
            }
        };
        if to.send(handed).is_err() {
            // The server stopped serving: a connection still in the channel
            // is closed by dropping it.
            return;
        }
    }
}

/// One message: its byte and the descriptors attached to it (owned, so they
/// close when dropped). `None` at the end of the channel.
fn receive_one(fd: RawFd) -> std::io::Result<Option<(u8, Vec<OwnedFd>)>> {
    let mut byte = [0u8; 1];
    // Room for a few descriptors: a peer sending more than one gets all of
    // them closed rather than leaked.
    let mut space = nix::cmsg_space!([RawFd; 4]);
    let mut iov = [IoSliceMut::new(&mut byte)];
    let msg = recvmsg::<()>(
        fd,
        &mut iov,
        Some(&mut space),
        MsgFlags::MSG_CMSG_CLOEXEC | MsgFlags::MSG_DONTWAIT,
    )
    .map_err(std::io::Error::from)?;
    let mut fds = Vec::new();
    for cmsg in msg.cmsgs().map_err(std::io::Error::from)? {
        if let ControlMessageOwned::ScmRights(received) = cmsg {
            // SAFETY: the kernel just installed these descriptors in this
            // process for us; nothing else owns them.
            fds.extend(
                received
                    .into_iter()
                    .map(|fd| unsafe { OwnedFd::from_raw_fd(fd) }),
            );
        }
    }
    if msg.bytes == 0 {
        return Ok(None);
    }
    Ok(Some((byte[0], fds)))
}

fn into_tcp(fd: OwnedFd) -> std::io::Result<tokio::net::TcpStream> {
    let std_stream = std::net::TcpStream::from(fd);
    // Fails for anything that is not a connected socket.
    std_stream.peer_addr()?;
    std_stream.set_nonblocking(true)?;
    let _ = std_stream.set_nodelay(true);
    tokio::net::TcpStream::from_std(std_stream)
}
