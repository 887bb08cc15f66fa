//! The `NETLINK_NETFILTER` socket our table goes through: a transaction
//! sent and acknowledged, and the table read back, each on a short-lived
//! thread in the node's namespace. The messages themselves are built and
//! decoded by [`super::nft`].

use std::os::fd::{AsRawFd, OwnedFd};
use std::time::Duration;

use nix::sys::socket::{
    AddressFamily, MsgFlags, NetlinkAddr, SockFlag, SockProtocol, SockType, bind, recv, send,
    setsockopt, socket, sockopt,
};

use super::nft::{self, ChainState, Reply, TableState};
use super::{ENOENT, netns};

/// How long the kernel may take to answer one nftables request.
const NFT_TIMEOUT: Duration = Duration::from_secs(5);

/// Reads our table back in the namespace `netns_fd`: `None` when it does
/// not exist.
pub async fn read_table(
    netns_fd: Option<OwnedFd>,
    family: u8,
) -> Result<Option<TableState>, String> {
    netns::run_in(netns_fd, move || read_table_here(family))
        .await
        .map_err(|e| format!("cannot read nftables: {e}"))?
}

fn read_table_here(family: u8) -> std::io::Result<Result<Option<TableState>, String>> {
    let sock = open()?;
    let fd = sock.as_raw_fd();
    let mut seq = 1;
    let mut next = || {
        seq += 1;
        seq
    };
    match request(fd, &nft::get_table(next(), family))? {
        Err(e) if e == ENOENT => return Ok(Ok(None)),
        Err(e) => return Ok(Err(format!("reading table: errno {e}"))),
        Ok(_) => {}
    }
    let mut state = TableState::default();
    for name in nft::CHAINS {
        let info = match request(fd, &nft::get_chain(next(), name, family))? {
            Err(e) if e == ENOENT => None,
            Err(e) => return Ok(Err(format!("reading chain {name}: errno {e}"))),
            Ok(msgs) => msgs
                .iter()
                .find(|(k, _)| nft::is_chain(*k))
                .map(|(_, a)| nft::parse_chain(a)),
        };
        let rules = match info {
            None => Vec::new(),
            Some(_) => match request(fd, &nft::dump_rules(next(), name, family))? {
                Err(e) if e == ENOENT => Vec::new(),
                Err(e) => return Ok(Err(format!("reading rules of {name}: errno {e}"))),
                Ok(msgs) => msgs
                    .iter()
                    .filter(|(k, _)| nft::is_rule(*k))
                    .map(|(_, a)| nft::parse_rule(a))
                    .collect(),
            },
        };
        state.chains.push((name, ChainState { info, rules }));
    }
    state.elements = match request(fd, &nft::dump_elements(next(), family))? {
        Err(e) if e == ENOENT => None,
        Err(e) => return Ok(Err(format!("reading set: errno {e}"))),
        Ok(msgs) => Some(
            msgs.iter()
                .filter(|(k, _)| nft::is_elements(*k))
                .flat_map(|(_, a)| nft::parse_elements(a))
                .collect(),
        ),
    };
    Ok(Ok(Some(state)))
}

/// A `NETLINK_NETFILTER` socket in the calling thread's namespace.
fn open() -> std::io::Result<OwnedFd> {
    let fd = socket(
        AddressFamily::Netlink,
        SockType::Raw,
        SockFlag::SOCK_CLOEXEC,
        SockProtocol::NetlinkNetFilter,
    )?;
    bind(fd.as_raw_fd(), &NetlinkAddr::new(0, 0))?;
    let timeout = nix::sys::time::TimeVal::new(NFT_TIMEOUT.as_secs() as _, 0);
    setsockopt(&fd, sockopt::ReceiveTimeout, &timeout)?;
    Ok(fd)
}

/// Sends one request and reads its answer: the data messages (until the
/// acknowledgement or the end of the dump), or the kernel's errno.
#[allow(clippy::type_complexity)]
fn request(fd: i32, msg: &[u8]) -> std::io::Result<Result<Vec<(u16, Vec<u8>)>, i32>> {
    send(fd, msg, MsgFlags::empty())?;
    let mut out = Vec::new();
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = recv(fd, &mut buf, MsgFlags::empty())?;
        let replies = nft::replies(&buf[..n]).map_err(std::io::Error::other)?;
        let mut finished = false;
        for r in replies {
            match r {
                Reply::Ack { errno: 0, .. } | Reply::Done => finished = true,
                Reply::Ack { errno, .. } => return Ok(Err(errno)),
                // A single answer is followed by its acknowledgement, a
                // dump by its end.
                Reply::Data { kind, attrs, .. } => out.push((kind, attrs.to_vec())),
            }
        }
        if finished {
            return Ok(Ok(out));
        }
    }
}

/// Sends the batch `build(seq)` in the node's namespace and waits for every
/// acknowledgement; the first error fails the whole (atomic) transaction.
pub async fn transaction(
    netns_fd: Option<OwnedFd>,
    build: impl FnOnce(u32) -> nft::Batch + Send + 'static,
) -> Result<(), String> {
    netns::run_in(netns_fd, move || {
        let sock = open()?;
        let fd = sock.as_raw_fd();
        let batch = build(1);
        send(fd, batch.bytes(), MsgFlags::empty())?;
        let mut pending = batch.acked.clone();
        let mut buf = vec![0u8; 64 * 1024];
        while !pending.is_empty() {
            let n = recv(fd, &mut buf, MsgFlags::empty())?;
            for r in nft::replies(&buf[..n]).map_err(std::io::Error::other)? {
                if let Reply::Ack { seq, errno } = r {
                    if errno != 0 {
                        let at = batch.acked.iter().position(|s| *s == seq).unwrap_or(0);
                        return Ok(Err(format!(
                            "message {} of the transaction refused: {}",
                            at + 1,
                            std::io::Error::from_raw_os_error(errno)
                        )));
                    }
                    pending.retain(|s| *s != seq);
                }
            }
        }
        Ok(Ok(()))
    })
    .await
    .map_err(|e| e.to_string())?
}
