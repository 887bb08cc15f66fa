//! Netlink requests sent as one batch on a plain blocking socket: every
//! request of a step goes out in a single `send`, the kernel handles them
//! in order (each gets its own acknowledgement, a failure does not stop
//! the ones after it), and the answers are read together. A failure is
//! mapped back to the request it answers by its sequence number. Used for
//! the kernel work of ADD and DEL, on the data-path workers
//! ([`super::workers`]), where one round trip per step is all it costs.

use std::io;
use std::os::fd::{AsRawFd, RawFd};

use rtnetlink::packet_core::{NLM_F_ACK, NLM_F_REQUEST, NetlinkMessage, NetlinkPayload};
use rtnetlink::packet_route::RouteNetlinkMessage;
use rtnetlink::sys::{Socket, SocketAddr, protocols::NETLINK_ROUTE};

use super::{EADDRNOTAVAIL, ENOENT};
use crate::dataplane::DataplaneError;

/// One request of a batch.
#[derive(Debug, Clone)]
pub struct Request {
    /// What is sent.
    pub message: RouteNetlinkMessage,
    /// Flags besides `NLM_F_REQUEST | NLM_F_ACK` (create, excl, replace, echo).
    pub flags: u16,
    /// The `ip` command it stands for, named in its error.
    pub op: &'static str,
    /// Errors that mean "already so" and count as success.
    pub benign: &'static [i32],
}

impl Request {
    /// A request with no extra flags and no benign errors.
    pub fn new(message: RouteNetlinkMessage, flags: u16, op: &'static str) -> Request {
        Request {
            message,
            flags,
            op,
            benign: &[],
        }
    }

    /// Also succeeds on these errors.
    pub fn tolerating(mut self, benign: &'static [i32]) -> Request {
        self.benign = benign;
        self
    }

    fn is_benign(&self, errno: i32) -> bool {
        self.benign.contains(&errno) || errno == EADDRNOTAVAIL && self.benign.contains(&ENOENT)
    }
}

/// How one request was answered.
#[derive(Debug)]
pub enum Answer {
    /// Done; with what the kernel echoed back, if asked to.
    Done(Option<RouteNetlinkMessage>),
    /// Refused with this errno.
    Failed(i32),
}

/// A batch sent and not yet read back.
#[derive(Debug)]
#[must_use = "a sent batch is read back with NlSocket::collect"]
pub struct Sent {
    first: u32,
    requests: Vec<Request>,
}

/// How long one read of a batch's answers may wait for the kernel.
const RECV_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// A blocking `NETLINK_ROUTE` socket, in the namespace of the thread that
/// opened it.
#[derive(Debug)]
pub struct NlSocket {
    socket: Socket,
    seq: u32,
    buf: Vec<u8>,
}

impl NlSocket {
    /// Opens a socket in the calling thread's network namespace.
    pub fn open() -> io::Result<NlSocket> {
        let mut socket = Socket::new(NETLINK_ROUTE)?;
        socket.bind_auto()?;
        socket.connect(&SocketAddr::new(0, 0))?;
        // A kernel that never answers must not hold the worker for ever:
        // a read past this is the batch's error.
        let timeout = nix::sys::time::TimeVal::new(RECV_TIMEOUT.as_secs() as _, 0);
        // SAFETY: the descriptor is the socket's own, open for its life.
        let fd = unsafe { std::os::fd::BorrowedFd::borrow_raw(socket.as_raw_fd()) };
        nix::sys::socket::setsockopt(&fd, nix::sys::socket::sockopt::ReceiveTimeout, &timeout)?;
        Ok(NlSocket {
            socket,
            seq: 0,
            buf: Vec::with_capacity(64 * 1024),
        })
    }

    /// Sends `requests` in one write; read the answers with
    /// [`collect`](Self::collect).
    pub fn send(&mut self, requests: Vec<Request>) -> Result<Sent, DataplaneError> {
        let first = self.seq.wrapping_add(1);
        self.seq = self.seq.wrapping_add(requests.len() as u32);
        let bytes = encode(&requests, first);
        if !bytes.is_empty() {
            self.socket
                .send(&bytes, 0)
                .map_err(|e| failed(requests[0].op, &e))?;
        }
        Ok(Sent { first, requests })
    }

    /// Reads the answers of a sent batch, in request order. The first
    /// request refused (and not benign) is the error, named after its `ip`
    /// command; every answer is read before returning, so the socket holds
    /// nothing stale.
    pub fn collect(
        &mut self,
        sent: Sent,
    ) -> Result<Vec<Option<RouteNetlinkMessage>>, DataplaneError> {
        let answers = self.answers(&sent)?;
        let mut out = Vec::with_capacity(answers.len());
        for (request, answer) in sent.requests.iter().zip(answers) {
            match answer {
                Answer::Done(echo) => out.push(echo),
                Answer::Failed(errno) if request.is_benign(errno) => out.push(None),
                Answer::Failed(errno) => {
                    return Err(failed(request.op, &io::Error::from_raw_os_error(errno)));
                }
            }
        }
        Ok(out)
    }

    /// [`send`](Self::send), then [`collect`](Self::collect).
    pub fn run(
        &mut self,
        requests: Vec<Request>,
    ) -> Result<Vec<Option<RouteNetlinkMessage>>, DataplaneError> {
        let sent = self.send(requests)?;
        self.collect(sent)
    }

    /// Every request's raw answer, benign or not.
    pub fn answers(&mut self, sent: &Sent) -> Result<Vec<Answer>, DataplaneError> {
        let n = sent.requests.len();
        let mut echoed: Vec<Option<RouteNetlinkMessage>> = vec![None; n];
        let mut answers: Vec<Option<Answer>> = (0..n).map(|_| None).collect();
        let mut pending = n;
        let op = sent.requests.first().map_or("netlink", |r| r.op);
        while pending > 0 {
            self.buf.clear();
            let len = self
                .socket
                .recv(&mut self.buf, 0)
                .map_err(|e| failed(op, &e))?;
            for (seq, payload) in decode(&self.buf[..len.min(self.buf.len())]) {
                let Some(i) = index(seq, sent.first, n) else {
                    continue; // an answer to an earlier, abandoned batch
                };
                match payload {
                    Some(Ok(message)) => echoed[i] = Some(message),
                    Some(Err(errno)) if answers[i].is_none() => {
                        answers[i] = Some(match errno {
                            0 => Answer::Done(echoed[i].take()),
                            e => Answer::Failed(e),
                        });
                        pending -= 1;
                    }
                    _ => {}
                }
            }
        }
        Ok(answers
            .into_iter()
            .map(|a| a.expect("all answered"))
            .collect())
    }
}

impl AsRawFd for NlSocket {
    fn as_raw_fd(&self) -> RawFd {
        self.socket.as_raw_fd()
    }
}

/// The requests as one buffer, numbered from `first`; each message padded
/// to netlink's 4-byte alignment.
fn encode(requests: &[Request], first: u32) -> Vec<u8> {
    let mut bytes = Vec::new();
    for (i, r) in requests.iter().enumerate() {
        let mut m = NetlinkMessage::from(r.message.clone());
        m.header.flags = NLM_F_REQUEST | NLM_F_ACK | r.flags;
        m.header.sequence_number = first.wrapping_add(i as u32);
        m.finalize();
        let at = bytes.len();
        bytes.resize(at + align(m.buffer_len()), 0);
        m.serialize(&mut bytes[at..at + m.buffer_len()]);
    }
    bytes
}

/// The messages in one datagram: their sequence numbers, and either an
/// echoed message (`Ok`) or an acknowledgement (`Err(0)`) or an error
/// (`Err(errno)`); `None` for anything else.
type Decoded = (u32, Option<Result<RouteNetlinkMessage, i32>>);

fn decode(mut bytes: &[u8]) -> Vec<Decoded> {
    let mut out = Vec::new();
    while bytes.len() >= 16 {
        let len = u32::from_ne_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]) as usize;
        if len < 16 || len > bytes.len() {
            break;
        }
        if let Ok(m) = NetlinkMessage::<RouteNetlinkMessage>::deserialize(&bytes[..len]) {
            let what = match m.payload {
                NetlinkPayload::Error(e) => Some(Err(e.code.map_or(0, |c| -c.get()))),
                NetlinkPayload::InnerMessage(inner) => Some(Ok(inner)),
                _ => None,
            };
            out.push((m.header.sequence_number, what));
        }
        bytes = &bytes[align(len).min(bytes.len())..];
    }
    out
}

fn index(seq: u32, first: u32, n: usize) -> Option<usize> {
    let i = seq.wrapping_sub(first) as usize;
    (i < n).then_some(i)
}

fn align(len: usize) -> usize {
    (len + 3) & !3
}

fn failed(op: &'static str, e: &io::Error) -> DataplaneError {
    DataplaneError::Kernel {
        op,
        detail: e.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rtnetlink::packet_core::{ErrorMessage, NetlinkHeader};
    use rtnetlink::packet_route::rule::RuleMessage;
    use std::num::NonZeroI32;

    fn rule_request(op: &'static str) -> Request {
        Request::new(RouteNetlinkMessage::NewRule(RuleMessage::default()), 0, op)
    }

    #[test]
    fn a_batch_is_numbered_in_order_and_aligned() {
        let bytes = encode(&[rule_request("a"), rule_request("b")], 41);
        let seqs: Vec<u32> = {
            let mut out = Vec::new();
            let mut rest = &bytes[..];
            while !rest.is_empty() {
                let m = NetlinkMessage::<RouteNetlinkMessage>::deserialize(rest).expect("decodes");
                assert_eq!(
                    m.header.flags & (NLM_F_REQUEST | NLM_F_ACK),
                    NLM_F_REQUEST | NLM_F_ACK
                );
                out.push(m.header.sequence_number);
                rest = &rest[align(m.header.length as usize)..];
            }
            out
        };
        assert_eq!(seqs, vec![41, 42]);
        assert_eq!(bytes.len() % 4, 0);
    }

    #[test]
    fn acknowledgements_and_errors_are_told_apart_by_sequence() {
        let ack = |seq: u32, code: i32| {
            let mut err = ErrorMessage::default();
            err.code = NonZeroI32::new(code);
            let mut m = NetlinkMessage::new(
                NetlinkHeader::default(),
                NetlinkPayload::<RouteNetlinkMessage>::Error(err),
            );
            m.header.sequence_number = seq;
            m.finalize();
            let mut b = vec![0; m.buffer_len()];
            m.serialize(&mut b);
            b
        };
        let mut datagram = ack(7, 0);
        datagram.extend(ack(8, -17));
        let decoded = decode(&datagram);
        assert_eq!(decoded.len(), 2);
        assert!(matches!(decoded[0], (7, Some(Err(0)))));
        assert!(matches!(decoded[1], (8, Some(Err(17)))));
        assert_eq!(index(8, 7, 2), Some(1));
        assert_eq!(index(6, 7, 2), None, "an earlier batch's answer is ignored");
        assert_eq!(index(9, 7, 2), None);
        assert_eq!(index(0, u32::MAX, 2), Some(1), "numbers wrap");
    }

    #[test]
    fn benign_errors_include_not_there_for_addresses() {
        let r = rule_request("ip rule del").tolerating(&[ENOENT]);
        assert!(r.is_benign(ENOENT));
        assert!(r.is_benign(EADDRNOTAVAIL));
        assert!(!r.is_benign(17));
    }
}
