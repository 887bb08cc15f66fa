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

/// Writes one frame whose header carries `fd` as `SCM_RIGHTS`.
fn send_with_fd(
    stream: &mut UnixStream,
    payload: &[u8],
    fd: BorrowedFd<'_>,
) -> Result<(), WireError> {
    use nix::sys::socket::{ControlMessage, MsgFlags, sendmsg};
    let header = wire::frame_header(payload.len())?;
    let fds = [fd.as_raw_fd()];
    let sent = sendmsg::<()>(
        stream.as_raw_fd(),
        &[IoSlice::new(&header)],
        &[ControlMessage::ScmRights(&fds)],
        MsgFlags::empty(),
        None,
    )
    .map_err(io::Error::from)?;
    stream.write_all(&header[sent..])?;
    stream.write_all(payload)?;
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
