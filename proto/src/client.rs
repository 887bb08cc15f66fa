//! The blocking round trip to the agent: connect, send one request frame,
//! read one reply frame, all within a deadline. A pod's network namespace
//! travels with the request as an open descriptor (`SCM_RIGHTS`), so the
//! agent reaches the namespace the caller sees even when the caller runs
//! in another mount namespace, where the agent could not open its path.

use std::io::{self, IoSlice, Write};
use std::os::fd::{AsRawFd, BorrowedFd};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::Duration;

use crate::wire::{self, Reply, Request, WireError};

/// Why a call to the agent failed before a reply arrived.
#[derive(Debug, thiserror::Error)]
pub enum CallError {
    /// Nothing listens on the socket, or it does not exist.
    #[error("agent unreachable at {path}: {source}")]
    Unreachable {
        /// The socket path.
        path: String,
        /// The connect error.
        #[source]
        source: io::Error,
    },
    /// The socket exists but this caller may not use it.
    #[error("permission denied connecting to the agent at {path}")]
    PermissionDenied {
        /// The socket path.
        path: String,
    },
    /// The agent did not answer in time.
    #[error("agent did not answer within {0:?}")]
    Timeout(Duration),
    /// The exchange itself failed.
    #[error(transparent)]
    Wire(#[from] WireError),
}

/// Sends `request` to the agent at `socket` and waits at most `timeout` for
/// each of the write and the read.
pub fn call(socket: &Path, request: &Request, timeout: Duration) -> Result<Reply, CallError> {
    call_with_netns(socket, request, timeout, None)
}

/// Like [`call`], passing the open network namespace `netns` along.
pub fn call_with_netns(
    socket: &Path,
    request: &Request,
    timeout: Duration,
    netns: Option<BorrowedFd<'_>>,
) -> Result<Reply, CallError> {
    let path = socket.display().to_string();
    let mut stream = UnixStream::connect(socket).map_err(|source| {
        if source.kind() == io::ErrorKind::PermissionDenied {
            CallError::PermissionDenied { path: path.clone() }
        } else {
            CallError::Unreachable {
                path: path.clone(),
                source,
            }
        }
    })?;
    stream
        .set_read_timeout(Some(timeout))
        .map_err(WireError::Io)?;
    stream
        .set_write_timeout(Some(timeout))
        .map_err(WireError::Io)?;
    let payload = wire::encode_request(request)?;
    let sent = match netns {
        None => wire::write_frame(&mut stream, &payload),
        Some(fd) => send_with_fd(&mut stream, &payload, fd),
    };
    match sent {
        // The agent may answer before reading everything (a refused caller,
        // an oversized frame) and close: its answer is still there to read.
        Err(WireError::Io(e))
            if matches!(
                e.kind(),
                io::ErrorKind::BrokenPipe | io::ErrorKind::ConnectionReset
            ) => {}
        other => other.map_err(|e| timed_out(e, timeout))?,
    }
    let reply = wire::read_frame(&mut stream).map_err(|e| timed_out(e, timeout))?;
    Ok(wire::decode_reply(&reply)?)
}

/// Writes one frame, in one `sendmsg` when the socket takes it whole, with
/// `fd` as `SCM_RIGHTS`.
fn send_with_fd(
    stream: &mut UnixStream,
    payload: &[u8],
    fd: BorrowedFd<'_>,
) -> Result<(), WireError> {
    use nix::sys::socket::{ControlMessage, MsgFlags, sendmsg};
    let frame = wire::frame(payload)?;
    let fds = [fd.as_raw_fd()];
    let sent = sendmsg::<()>(
        stream.as_raw_fd(),
        &[IoSlice::new(&frame)],
        &[ControlMessage::ScmRights(&fds)],
        MsgFlags::empty(),
        None,
    )
    .map_err(io::Error::from)?;
    stream.write_all(&frame[sent..])?;
    stream.flush()?;
    Ok(())
}

fn timed_out(e: WireError, timeout: Duration) -> CallError {
    match e {
        WireError::Io(io)
            if matches!(
                io.kind(),
                io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
            ) =>
        {
            CallError::Timeout(timeout)
        }
        other => CallError::Wire(other),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::IoSliceMut;
    use std::os::fd::AsFd;

    /// The request and the namespace's descriptor arrive in one message:
    /// the agent wakes once for the whole request.
    #[test]
    fn a_request_with_its_netns_arrives_in_one_message() {
        use nix::sys::socket::{ControlMessageOwned, MsgFlags, recvmsg};
        let (mut ours, theirs) = UnixStream::pair().expect("socketpair");
        let netns = std::fs::File::open("/proc/self/ns/net").expect("own netns");
        send_with_fd(&mut ours, b"{\"request\":1}", netns.as_fd()).expect("send");
        let mut buf = [0u8; 64];
        let mut iov = [IoSliceMut::new(&mut buf)];
        let mut space = nix::cmsg_space!([std::os::fd::RawFd; 1]);
        let msg = recvmsg::<()>(
            theirs.as_raw_fd(),
            &mut iov,
            Some(&mut space),
            MsgFlags::MSG_CMSG_CLOEXEC,
        )
        .expect("recvmsg");
        let fds: Vec<_> = msg
            .cmsgs()
            .expect("cmsgs")
            .filter_map(|c| match c {
                ControlMessageOwned::ScmRights(fds) => Some(fds),
                _ => None,
            })
            .flatten()
            .collect();
        let got = msg.bytes;
        for fd in &fds {
            let _ = nix::unistd::close(*fd);
        }
        assert_eq!(fds.len(), 1);
        assert_eq!(&buf[..got], wire::frame(b"{\"request\":1}").expect("frame"));
    }
}
