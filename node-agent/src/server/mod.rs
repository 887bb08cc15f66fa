//! The agent's Unix socket: one request and one reply per connection, root
//! callers only, every connection served by a thread of its own with read
//! and write deadlines and a frame size cap, so a slow or broken client
//! never holds up the others.

mod after_reply;
mod frames;
mod socket;
#[cfg(test)]
mod tests;

use after_reply::Deferred;
pub use after_reply::after_reply;
use frames::read_request;
pub use socket::{BindError, bind};

use std::collections::BTreeMap;
use std::future::Future;
use std::io::{self, Write};
use std::os::fd::{AsRawFd, OwnedFd};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use proto::wire::{self, AgentError, ErrorKind, Reply, Request, WireError};
use tokio::net::UnixListener;
use tracing::{debug, info, warn};

/// Something that answers requests.
pub trait Handler: Send + Sync + 'static {
    /// Answers one request; `netns` is the pod's network namespace when the
    /// caller passed it along.
    fn handle(
        &self,
        request: Request,
        netns: Option<OwnedFd>,
    ) -> impl Future<Output = Reply> + Send;
}

/// Limits of the server.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ServerConfig {
    /// How long a client may take to send its request.
    pub read_timeout: Duration,
    /// How long a client may take to read its reply.
    pub write_timeout: Duration,
    /// Connections served at once; more wait to be accepted.
    pub max_connections: usize,
    /// The only uid allowed to call (root).
    pub allowed_uid: u32,
}

impl Default for ServerConfig {
    fn default() -> ServerConfig {
        ServerConfig {
            read_timeout: Duration::from_secs(5),
            write_timeout: Duration::from_secs(5),
            max_connections: 256,
            allowed_uid: 0,
        }
    }
}

/// Connections still sending their request, oldest first: when every
/// serving thread is taken, the oldest of them is dropped to make room, so
/// idle or slow clients can never keep a legitimate caller waiting (a
/// connection whose request is being handled is never dropped).
#[derive(Debug, Default)]
struct Readers {
    next: AtomicU64,
    waiting: Mutex<BTreeMap<u64, std::os::unix::net::UnixStream>>,
}

impl Readers {
    /// Registers a connection that starts reading (a second handle on its
    /// socket, which [`evict_oldest`](Self::evict_oldest) shuts down).
    fn enter(&self, stream: &std::os::unix::net::UnixStream) -> Option<u64> {
        let handle = stream.try_clone().ok()?;
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        self.lock().insert(id, handle);
        Some(id)
    }

    /// The connection's request is read (or it failed).
    fn leave(&self, id: Option<u64>) {
        if let Some(id) = id {
            self.lock().remove(&id);
        }
    }

    /// Drops the oldest connection still reading (its read ends at once);
    /// whether there was one.
    fn evict_oldest(&self) -> bool {
        let oldest = self.lock().pop_first();
        match oldest {
            Some((_, stream)) => {
                let _ = stream.shutdown(std::net::Shutdown::Both);
                true
            }
            None => false,
        }
    }

    fn lock(&self) -> MutexGuard<'_, BTreeMap<u64, std::os::unix::net::UnixStream>> {
        self.waiting.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// Serving threads kept waiting in `accept` when nothing is in flight.
const SPARE_THREADS: usize = 2;

/// What the serving threads share.
struct Shared<H> {
    listener: std::os::unix::net::UnixListener,
    handler: Arc<H>,
    runtime: tokio::runtime::Handle,
    config: ServerConfig,
    readers: Readers,
    /// Threads blocked in `accept`.
    idle: AtomicUsize,
    /// Threads alive.
    live: AtomicUsize,
    /// Connections being served.
    busy: AtomicUsize,
    stopping: AtomicBool,
}

/// Serves until `shutdown` completes, then waits briefly for requests in
/// flight.
///
/// Every connection is served start to end by one thread of a small pool
/// (threads blocked in `accept`, more started while all are taken, up to
/// `max_connections`, the extra ones ending when idle): the request is read
/// and answered with blocking calls and the handler runs on that thread
/// (`Handle::block_on`), so a CNI call wakes one thread, once, instead of
/// hopping between the runtime's threads (each hop a wake-up of an idle
/// CPU). The handler's own tasks, timers and I/O still run on the runtime.
pub async fn serve<H: Handler>(
    listener: UnixListener,
    handler: Arc<H>,
    config: ServerConfig,
    shutdown: impl Future<Output = ()>,
) {
    let listener = match listener
        .into_std()
        .and_then(|l| l.set_nonblocking(false).map(|()| l))
    {
        Ok(l) => l,
        Err(e) => {
            warn!(error = %e, "the socket cannot be served");
            return;
        }
    };
    let shared = Arc::new(Shared {
        listener,
        handler,
        runtime: tokio::runtime::Handle::current(),
        config,
        readers: Readers::default(),
        idle: AtomicUsize::new(0),
        live: AtomicUsize::new(0),
        busy: AtomicUsize::new(0),
        stopping: AtomicBool::new(false),
    });
    for _ in 0..SPARE_THREADS.min(config.max_connections.max(1)) {
        start_thread(&shared);
    }
    shutdown.await;
    info!("shutting down; waiting for requests in flight");
    shared.stopping.store(true, Ordering::SeqCst);
    // Wakes every thread blocked in `accept` (it fails with EINVAL).
    // SAFETY: shutdown(2) on a descriptor this function's `shared` owns.
    unsafe { libc::shutdown(shared.listener.as_raw_fd(), libc::SHUT_RDWR) };
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while shared.busy.load(Ordering::SeqCst) > 0 && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// One more serving thread (counted before it runs, so two callers never
/// both think the pool is short).
fn start_thread<H: Handler>(shared: &Arc<Shared<H>>) {
    shared.live.fetch_add(1, Ordering::SeqCst);
    let own = Arc::clone(shared);
    let started = std::thread::Builder::new()
        .name("cni-serve".into())
        .spawn(move || serving_thread(&own));
    if let Err(e) = started {
        shared.live.fetch_sub(1, Ordering::SeqCst);
        warn!(error = %e, "could not start a serving thread");
    }
}

fn serving_thread<H: Handler>(shared: &Arc<Shared<H>>) {
    loop {
        shared.idle.fetch_add(1, Ordering::SeqCst);
        let accepted = shared.listener.accept();
        let idle = shared.idle.fetch_sub(1, Ordering::SeqCst) - 1;
        if shared.stopping.load(Ordering::SeqCst) {
            break;
        }
        let stream = match accepted {
            Ok((stream, _)) => stream,
            Err(e) => {
                warn!(error = %e, "accept failed");
                std::thread::sleep(Duration::from_millis(50));
                continue;
            }
        };
        if idle == 0 {
            // Nobody is left accepting: another thread, or, at the limit,
            // room made by dropping the oldest idle reader.
            if shared.live.load(Ordering::SeqCst) < shared.config.max_connections {
                start_thread(shared);
            } else if shared.readers.evict_oldest() {
                debug!("connection limit reached; dropped the oldest idle client");
            }
        }
        shared.busy.fetch_add(1, Ordering::SeqCst);
        let served = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            connection(stream, shared);
        }));
        shared.busy.fetch_sub(1, Ordering::SeqCst);
        if served.is_err() {
            warn!("serving a connection panicked; the connection was dropped");
        }
        if shared.idle.load(Ordering::SeqCst) >= SPARE_THREADS {
            break;
        }
    }
    shared.live.fetch_sub(1, Ordering::SeqCst);
}

/// Whether a caller with `uid` may use the agent.
pub fn authorize(uid: u32, allowed: u32) -> Result<(), AgentError> {
    if uid == allowed {
        Ok(())
    } else {
        Err(AgentError::new(
            ErrorKind::PermissionDenied,
            format!("caller uid {uid} is not allowed; only uid {allowed} may use the agent"),
        ))
    }
}

fn connection<H: Handler>(stream: std::os::unix::net::UnixStream, shared: &Shared<H>) {
    let _after_reply = Deferred::arm();
    let config = shared.config;
    // Answered in the plugin's protocol version when it is served, so a
    // plugin one version behind (mid-rollout) reads the reply.
    let mut version = wire::PROTOCOL_VERSION;
    let credentials =
        nix::sys::socket::getsockopt(&stream, nix::sys::socket::sockopt::PeerCredentials);
    let reply = match credentials {
        Err(e) => Err(AgentError::new(
            ErrorKind::PermissionDenied,
            format!("cannot read caller credentials: {e}"),
        )),
        Ok(cred) => match authorize(cred.uid(), config.allowed_uid) {
            Err(e) => {
                warn!(uid = cred.uid(), pid = cred.pid(), "refused caller");
                Err(e)
            }
            Ok(()) => {
                let id = shared.readers.enter(&stream);
                let deadline = std::time::Instant::now() + config.read_timeout;
                let read = read_request(&stream, deadline);
                shared.readers.leave(id);
                match read {
                    Err(WireError::Io(e)) => {
                        debug!(error = %e, "no complete request (client gone, too slow, or dropped to make room)");
                        return;
                    }
                    Err(e) => Err(AgentError::new(ErrorKind::Protocol, e.to_string())),
                    Ok((payload, netns)) => {
                        version = wire::answer_version(&payload);
                        match wire::decode_request(&payload) {
                            Ok(incoming) => shared
                                .runtime
                                .block_on(shared.handler.handle(incoming.request, netns)),
                            Err(e) => {
                                warn!(error = %e, "request refused");
                                Err(AgentError::new(ErrorKind::Protocol, e.to_string()))
                            }
                        }
                    }
                }
            }
        },
    };
    let payload = match wire::encode_reply(&reply, version) {
        Ok(p) => p,
        Err(e) => {
            warn!(error = %e, "reply could not be encoded");
            return;
        }
    };
    // One write: the plugin, blocked reading, wakes once.
    let written = wire::frame(&payload)
        .map_err(|e| io::Error::other(e.to_string()))
        .and_then(|frame| {
            stream.set_write_timeout(Some(config.write_timeout))?;
            (&stream).write_all(&frame)
        });
    if let Err(e) = written {
        debug!(error = %e, "the reply could not be written (client gone or not reading)");
    }
}
