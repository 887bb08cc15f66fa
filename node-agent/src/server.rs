//! The agent's Unix socket: one request and one reply per connection, root
//! callers only, every connection served by a thread of its own with read
//! and write deadlines and a frame size cap, so a slow or broken client
//! never holds up the others.

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::future::Future;
use std::io::{self, Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::path::Path;
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

/// Socket setup failures.
#[derive(Debug, thiserror::Error)]
pub enum BindError {
    /// Another process answers on the socket.
    #[error("another agent is already listening on {0}")]
    InUse(String),
    /// The path exists and is not a socket.
    #[error("{0} exists and is not a socket; refusing to replace it")]
    NotASocket(String),
    /// The filesystem refused.
    #[error("cannot listen on {path}: {source}")]
    Io {
        /// The socket path.
        path: String,
        /// Why.
        #[source]
        source: io::Error,
    },
}

/// Binds the socket at `path` with mode 0600, replacing a stale socket left
/// by an agent that died, but never a live one or a non-socket file.
pub fn bind(path: &Path) -> Result<UnixListener, BindError> {
    let shown = path.display().to_string();
    let io_err = |source| BindError::Io {
        path: shown.clone(),
        source,
    };
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(io_err)?;
    }
    match std::fs::symlink_metadata(path) {
        Ok(meta) if !meta.file_type().is_socket() => return Err(BindError::NotASocket(shown)),
        Ok(_) => {
            if std::os::unix::net::UnixStream::connect(path).is_ok() {
                return Err(BindError::InUse(shown));
            }
            std::fs::remove_file(path).map_err(io_err)?;
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(io_err(e)),
    }
    let listener = UnixListener::bind(path).map_err(io_err)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).map_err(io_err)?;
    Ok(listener)
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

/// Work that waits for a reply to be written.
type Queued = Vec<Box<dyn FnOnce()>>;

thread_local! {
    /// Work queued by the request being served on this thread, run once its
    /// reply is written (`None` outside a connection).
    static AFTER_REPLY: RefCell<Option<Queued>> = const { RefCell::new(None) };
}

/// Runs `work` once the caller has its reply: after the reply of the
/// request this thread serves is written, or at once outside a connection.
/// For what the caller need not wait for, such as a log line: written to a
/// pipe, it wakes the log collector on another CPU.
pub fn after_reply(work: impl FnOnce() + 'static) {
    let work: Box<dyn FnOnce()> = Box::new(work);
    let now = AFTER_REPLY.with(|queue| match queue.borrow_mut().as_mut() {
        Some(queued) => {
            queued.push(work);
            None
        }
        None => Some(work),
    });
    if let Some(work) = now {
        work();
    }
}

/// While it lives, [`after_reply`] queues; dropped (the connection done,
/// however it ended), it runs what was queued.
struct Deferred;

impl Deferred {
    fn arm() -> Deferred {
        AFTER_REPLY.with(|queue| *queue.borrow_mut() = Some(Vec::new()));
        Deferred
    }
}

impl Drop for Deferred {
    fn drop(&mut self) {
        let queued = AFTER_REPLY.with(|queue| queue.borrow_mut().take());
        if std::thread::panicking() {
            return;
        }
        for work in queued.into_iter().flatten() {
            work();
        }
    }
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

/// Reads one request frame's payload and the descriptor that may come with
/// its header, all of it before `deadline`.
fn read_request(
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

#[cfg(test)]
mod tests {
    use super::*;
    use proto::wire::Response;
    use std::os::fd::AsFd;
    use std::time::Instant;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::UnixStream;

    struct Echo;

    impl Handler for Echo {
        async fn handle(&self, request: Request, netns: Option<OwnedFd>) -> Reply {
            match request {
                Request::Status if netns.is_some() => Ok(Response::Checked),
                Request::Status => Ok(Response::Deleted),
                _ => Err(AgentError::new(ErrorKind::Internal, "only status")),
            }
        }
    }

    fn start(
        config: ServerConfig,
    ) -> (
        tempfile::TempDir,
        std::path::PathBuf,
        tokio::sync::oneshot::Sender<()>,
    ) {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("agent.sock");
        let listener = bind(&path).expect("bind");
        let (tx, rx) = tokio::sync::oneshot::channel();
        tokio::spawn(serve(listener, Arc::new(Echo), config, async {
            let _ = rx.await;
        }));
        (dir, path, tx)
    }

    fn call(path: &Path) -> Result<Reply, proto::client::CallError> {
        proto::client::call(path, &Request::Status, Duration::from_secs(5))
    }

    /// A STATUS from a blocking client, and how long it took.
    async fn timed_call(path: &Path) -> (Reply, Duration) {
        let p = path.to_path_buf();
        let started = Instant::now();
        let reply = tokio::task::spawn_blocking(move || call(&p))
            .await
            .expect("join")
            .expect("call");
        (reply, started.elapsed())
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_silent_client_does_not_stall_others() {
        let (_dir, path, _stop) = start(ServerConfig::default());
        let mut silent = UnixStream::connect(&path).await.expect("connect");
        silent.write_all(&[0, 0]).await.expect("half a header");
        let (reply, took) = timed_call(&path).await;
        assert_eq!(reply, Ok(Response::Deleted));
        assert!(took < Duration::from_secs(2));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn idle_clients_filling_every_slot_do_not_delay_a_caller() {
        let (_dir, path, _stop) = start(ServerConfig {
            max_connections: 8,
            ..ServerConfig::default()
        });
        let mut idle = Vec::new();
        for _ in 0..40 {
            idle.push(UnixStream::connect(&path).await.expect("connect"));
        }
        // Let the server accept them all.
        tokio::time::sleep(Duration::from_millis(200)).await;
        let (reply, took) = timed_call(&path).await;
        assert_eq!(reply, Ok(Response::Deleted));
        assert!(
            took < Duration::from_millis(1000),
            "answered in {took:?} despite 40 idle connections"
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_namespace_descriptor_travels_with_the_request() {
        let (_dir, path, _stop) = start(ServerConfig::default());
        let reply = tokio::task::spawn_blocking(move || {
            let file = std::fs::File::open("/proc/self/ns/net").expect("own netns");
            proto::client::call_with_netns(
                &path,
                &Request::Status,
                Duration::from_secs(5),
                Some(file.as_fd()),
            )
        })
        .await
        .expect("join")
        .expect("call");
        assert_eq!(reply, Ok(Response::Checked));
    }

    /// Sends one raw request payload; returns the reply's JSON.
    async fn exchange(path: &Path, payload: &[u8]) -> serde_json::Value {
        let mut s = UnixStream::connect(path).await.expect("connect");
        let mut frame = (payload.len() as u32).to_be_bytes().to_vec();
        frame.extend_from_slice(payload);
        s.write_all(&frame).await.expect("write");
        let mut header = [0u8; 4];
        s.read_exact(&mut header).await.expect("header");
        let mut reply = vec![0u8; wire::parse_header(header).expect("len")];
        s.read_exact(&mut reply).await.expect("payload");
        serde_json::from_slice(&reply).expect("json")
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_plugin_one_protocol_behind_is_served_in_its_version() {
        let (_dir, path, _stop) = start(ServerConfig::default());
        let old = format!(
            r#"{{"version":{},"request":{{"op":"status"}}}}"#,
            wire::OLDEST_SERVED
        );
        let reply = exchange(&path, old.as_bytes()).await;
        assert_eq!(
            reply,
            serde_json::json!({"version": wire::OLDEST_SERVED, "ok": {"kind": "deleted"}})
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_plugin_outside_the_window_or_with_an_unknown_verb_gets_a_typed_error() {
        let (_dir, path, _stop) = start(ServerConfig::default());
        let newer = format!(
            r#"{{"version":{},"request":{{"op":"status"}}}}"#,
            wire::PROTOCOL_VERSION + 1
        );
        let reply = exchange(&path, newer.as_bytes()).await;
        assert_eq!(reply["version"], wire::PROTOCOL_VERSION);
        assert_eq!(reply["error"]["kind"], "protocol");
        let message = reply["error"]["message"].as_str().expect("message");
        assert!(
            message.contains(&format!(
                "plugin speaks protocol {}",
                wire::PROTOCOL_VERSION + 1
            )) && message.contains("upgrade the agent"),
            "{message}"
        );
        let unknown = br#"{"version":1,"request":{"op":"teleport"}}"#;
        let reply = exchange(&path, unknown).await;
        assert_eq!(reply["version"], 1, "answered in the plugin's version");
        let message = reply["error"]["message"].as_str().expect("message");
        assert!(message.contains("\"teleport\""), "{message}");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn oversized_and_garbage_frames_get_protocol_errors() {
        let (_dir, path, _stop) = start(ServerConfig::default());
        for frame in [((wire::MAX_FRAME + 1) as u32).to_be_bytes().to_vec(), {
            let mut f = 5u32.to_be_bytes().to_vec();
            f.extend_from_slice(b"hello");
            f
        }] {
            let mut s = UnixStream::connect(&path).await.expect("connect");
            s.write_all(&frame).await.expect("write");
            let mut header = [0u8; 4];
            s.read_exact(&mut header).await.expect("header");
            let mut payload = vec![0u8; wire::parse_header(header).expect("len")];
            s.read_exact(&mut payload).await.expect("payload");
            let reply = wire::decode_reply(&payload).expect("reply");
            assert_eq!(reply.expect_err("error").kind, ErrorKind::Protocol);
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn callers_other_than_the_allowed_uid_are_refused() {
        // SAFETY: geteuid has no preconditions and cannot fail.
        let me = unsafe { libc::geteuid() };
        let (_dir, path, _stop) = start(ServerConfig {
            allowed_uid: me.wrapping_add(1),
            ..ServerConfig::default()
        });
        let reply = tokio::task::spawn_blocking(move || call(&path))
            .await
            .expect("join")
            .expect("call");
        assert_eq!(
            reply.expect_err("refused").kind,
            ErrorKind::PermissionDenied
        );
    }

    /// Answers every request after `0` (on the runtime's timer).
    struct Slow(Duration);

    impl Handler for Slow {
        async fn handle(&self, _: Request, _: Option<OwnedFd>) -> Reply {
            tokio::time::sleep(self.0).await;
            Ok(Response::Deleted)
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn slow_requests_are_served_side_by_side() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("agent.sock");
        let listener = bind(&path).expect("bind");
        let slow = Arc::new(Slow(Duration::from_millis(300)));
        tokio::spawn(serve(
            listener,
            slow,
            ServerConfig::default(),
            std::future::pending(),
        ));
        let started = Instant::now();
        let calls: Vec<_> = (0..20)
            .map(|_| {
                let p = path.clone();
                tokio::task::spawn_blocking(move || call(&p))
            })
            .collect();
        for c in calls {
            assert_eq!(c.await.expect("join").expect("call"), Ok(Response::Deleted));
        }
        let took = started.elapsed();
        assert!(
            took < Duration::from_millis(1500),
            "20 requests of 300 ms each took {took:?}: they were not served at once"
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn shutdown_answers_what_is_in_flight_then_stops_accepting() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("agent.sock");
        let listener = bind(&path).expect("bind");
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let server = tokio::spawn(serve(
            listener,
            Arc::new(Slow(Duration::from_millis(300))),
            ServerConfig::default(),
            async {
                let _ = stopped.await;
            },
        ));
        let p = path.clone();
        let in_flight = tokio::task::spawn_blocking(move || call(&p));
        tokio::time::sleep(Duration::from_millis(100)).await;
        let _ = stop.send(());
        tokio::time::timeout(Duration::from_secs(5), server)
            .await
            .expect("the server returned")
            .expect("join");
        assert_eq!(
            in_flight.await.expect("join").expect("call"),
            Ok(Response::Deleted),
            "the request in flight was answered"
        );
        let after = tokio::task::spawn_blocking(move || call(&path))
            .await
            .expect("join");
        assert!(
            after.is_err(),
            "nothing is served after shutdown: {after:?}"
        );
    }

    /// Queues work that waits for `release` and then reports on `done`.
    struct Deferring {
        release: std::sync::Mutex<Option<std::sync::mpsc::Receiver<()>>>,
        done: std::sync::mpsc::Sender<()>,
    }

    impl Handler for Deferring {
        async fn handle(&self, _: Request, _: Option<OwnedFd>) -> Reply {
            let release = self.release.lock().expect("lock").take().expect("one call");
            let done = self.done.clone();
            after_reply(move || {
                let _ = release.recv();
                let _ = done.send(());
            });
            Ok(Response::Deleted)
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn work_queued_for_after_the_reply_runs_once_the_caller_has_it() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("agent.sock");
        let listener = bind(&path).expect("bind");
        let (release, released) = std::sync::mpsc::channel();
        let (done, finished) = std::sync::mpsc::channel();
        let handler = Deferring {
            release: std::sync::Mutex::new(Some(released)),
            done,
        };
        tokio::spawn(serve(
            listener,
            Arc::new(handler),
            ServerConfig::default(),
            std::future::pending(),
        ));
        let (reply, _) = timed_call(&path).await;
        assert_eq!(
            reply,
            Ok(Response::Deleted),
            "answered while the work waits"
        );
        assert!(
            finished.try_recv().is_err(),
            "the work waits for its release"
        );
        release.send(()).expect("release");
        finished
            .recv_timeout(Duration::from_secs(5))
            .expect("the queued work ran after the reply");
    }

    #[test]
    fn work_queued_outside_a_connection_runs_at_once() {
        let ran = std::rc::Rc::new(std::cell::Cell::new(false));
        let flag = std::rc::Rc::clone(&ran);
        after_reply(move || flag.set(true));
        assert!(ran.get());
    }

    #[tokio::test]
    async fn socket_is_private_and_stale_sockets_are_replaced() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("agent.sock");
        drop(bind(&path).expect("bind"));
        assert!(
            path.exists(),
            "a dropped listener leaves its file, like a killed agent"
        );
        let listener = bind(&path).expect("rebind over stale socket");
        let mode = std::fs::metadata(&path).expect("meta").permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        assert!(matches!(bind(&path), Err(BindError::InUse(_))));
        drop(listener);
        let file = dir.path().join("file");
        std::fs::write(&file, b"x").expect("write");
        assert!(matches!(bind(&file), Err(BindError::NotASocket(_))));
    }

    #[test]
    fn only_the_allowed_uid_passes() {
        assert!(authorize(0, 0).is_ok());
        assert_eq!(
            authorize(1000, 0).expect_err("refused").kind,
            ErrorKind::PermissionDenied
        );
    }
}
