//! Reading one request frame, and the namespace descriptor passed with
//! it, before a deadline.

use std::io::{self, Read};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

use proto::wire::{self, WireError};

/// Reads one request frame's payload and the descriptor that may come with
/// its header, all of it before `deadline`.
pub(super) fn read_request(
    stream: &std::os::unix::net::UnixStream,
    deadline: std::time::Instant,
) -> Result<(Vec<u8>, Option<OwnedFd>), WireError> {
    let mut header = [0u8; 4];
    let (got, netns) = recv_with_fd(stream, &mut header, deadline)?;
    if got == 0 {
        return Err(WireError::Io(io::ErrorKind::UnexpectedEof.into()));
    }
    read_exact_by(stream, &mut header[got..], deadline)?;
    let len = wire::parse_header(header)?;
    let mut payload = vec![0u8; len];
    read_exact_by(stream, &mut payload, deadline)?;
    Ok((payload, netns))
}

/// Arms the socket's read timeout with what is left before `deadline`.
fn until(stream: &std::os::unix::net::UnixStream, deadline: std::time::Instant) -> io::Result<()> {
    let left = deadline.saturating_duration_since(std::time::Instant::now());
    if left.is_zero() {
        return Err(io::ErrorKind::TimedOut.into());
    }
    stream.set_read_timeout(Some(left))
}

fn read_exact_by(
    stream: &std::os::unix::net::UnixStream,
    mut buf: &mut [u8],
    deadline: std::time::Instant,
) -> io::Result<()> {
    while !buf.is_empty() {
        until(stream, deadline)?;
        match (&*stream).read(buf) {
            Ok(0) => return Err(io::ErrorKind::UnexpectedEof.into()),
            Ok(n) => buf = &mut buf[n..],
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// `recvmsg` into `buf`, taking at most one descriptor passed with it
/// (any others are closed).
fn recv_with_fd(
    stream: &std::os::unix::net::UnixStream,
    buf: &mut [u8],
    deadline: std::time::Instant,
) -> io::Result<(usize, Option<OwnedFd>)> {
    use nix::sys::socket::{ControlMessageOwned, MsgFlags, recvmsg};
    loop {
        until(stream, deadline)?;
        let mut iov = [std::io::IoSliceMut::new(buf)];
        let mut space = nix::cmsg_space!([RawFd; 1]);
        let msg = match recvmsg::<()>(
            stream.as_raw_fd(),
            &mut iov,
            Some(&mut space),
            MsgFlags::MSG_CMSG_CLOEXEC,
        ) {
            Err(nix::errno::Errno::EINTR) => continue,
            Err(e) => return Err(e.into()),
            Ok(msg) => msg,
        };
        let mut fds = Vec::new();
        for cmsg in msg.cmsgs().map_err(io::Error::from)? {
            if let ControlMessageOwned::ScmRights(received) = cmsg {
                fds.extend(received);
            }
        }
        // SAFETY: the kernel has just installed these descriptors in this
        // process for us; nothing else owns them.
        let owned: Vec<OwnedFd> = fds
            .into_iter()
            .map(|fd| unsafe { OwnedFd::from_raw_fd(fd) })
            .collect();
        return Ok((msg.bytes, owned.into_iter().next()));
    }
}
