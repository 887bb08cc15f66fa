//! UDP probes inside network namespaces, so the demo and the tests see
//! which source address a packet arrives with, without a capture tool: a
//! listener bound in one namespace records the sender of the first
//! datagram; a sender in another namespace sends a few.

use std::io;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, UdpSocket};
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::thread::JoinHandle;
use std::time::Duration;

use nix::sched::{CloneFlags, setns};

/// Runs `f` on a fresh thread inside the network namespace at `netns`.
pub fn in_netns<T: Send + 'static>(
    netns: &Path,
    f: impl FnOnce() -> io::Result<T> + Send + 'static,
) -> io::Result<T> {
    let path: PathBuf = netns.to_path_buf();
    std::thread::spawn(move || {
        let ns = OwnedFd::from(std::fs::File::open(&path)?);
        setns(&ns, CloneFlags::CLONE_NEWNET).map_err(io::Error::from)?;
        f()
    })
    .join()
    .map_err(|_| io::Error::other("namespace thread panicked"))?
}

/// A UDP socket bound inside a namespace, waiting for one datagram.
#[derive(Debug)]
pub struct Listener {
    waiting: JoinHandle<Option<SocketAddr>>,
}

impl Listener {
    /// Binds `at` inside `netns` (the socket stays in that namespace) and
    /// waits up to `timeout` for a datagram in the background.
    pub fn bind(netns: &Path, at: SocketAddrV4, timeout: Duration) -> io::Result<Listener> {
        let sock = in_netns(netns, move || UdpSocket::bind(at))?;
        sock.set_read_timeout(Some(timeout))?;
        let waiting = std::thread::spawn(move || {
            let mut buf = [0u8; 64];
            sock.recv_from(&mut buf).ok().map(|(_, from)| from)
        });
        Ok(Listener { waiting })
    }

    /// The source address of the first datagram, `None` if none came.
    pub fn source(self) -> Option<Ipv4Addr> {
        match self.waiting.join().ok().flatten() {
            Some(SocketAddr::V4(a)) => Some(*a.ip()),
            _ => None,
        }
    }
}

/// Sends three datagrams to `to` from inside `netns`, 100 ms apart (the
/// first may wait for neighbours to resolve along the way).
pub fn send(netns: &Path, to: SocketAddrV4) -> io::Result<()> {
    in_netns(netns, move || {
        let s = UdpSocket::bind("0.0.0.0:0")?;
        for _ in 0..3 {
            // A send refused while a neighbour resolves is retried.
            let _ = s.send_to(b"vpc-sim probe", to);
            std::thread::sleep(Duration::from_millis(100));
        }
        Ok(())
    })
}

/// The source address `to` sees for a datagram sent from `from`: binds a
/// listener in `to_netns` at `to`, sends from `from_netns`.
pub fn source_seen(
    from_netns: &Path,
    to_netns: &Path,
    to: SocketAddrV4,
) -> Result<Ipv4Addr, String> {
    let listener = Listener::bind(to_netns, to, Duration::from_secs(3))
        .map_err(|e| format!("listen on {to}: {e}"))?;
    send(from_netns, to).map_err(|e| format!("send to {to}: {e}"))?;
    listener
        .source()
        .ok_or_else(|| format!("no datagram reached {to}"))
}
