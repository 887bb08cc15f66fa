//! The agent's Unix socket: one request and one reply per connection, root
//! callers only, every connection in its own task with read and write
//! deadlines and a frame size cap, so a slow or broken client never holds
//! up the others.

use std::future::Future;
use std::io;
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use proto::wire::{self, AgentError, ErrorKind, Reply, Request, WireError};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

use tokio::io::{AsyncReadExt, AsyncWriteExt, Interest};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::Semaphore;
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
/// connection slot is taken, the oldest of them is dropped to make room, so
/// idle or slow clients can never keep a legitimate caller waiting (a
/// connection whose request is being handled is never dropped).
#[derive(Debug, Default)]
struct Readers {
    next: std::sync::atomic::AtomicU64,
    waiting: std::sync::Mutex<std::collections::BTreeMap<u64, tokio::sync::oneshot::Sender<()>>>,
}

impl Readers {
    /// Registers a connection that starts reading; dropping the receiver's
    /// sender (by [`evict_oldest`](Self::evict_oldest)) tells it to give up.
    fn enter(&self) -> (u64, tokio::sync::oneshot::Receiver<()>) {
        let id = self.next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let (tx, rx) = tokio::sync::oneshot::channel();
        self.lock().insert(id, tx);
        (id, rx)
    }

    /// The connection's request is read (or it failed).
    fn leave(&self, id: u64) {
        self.lock().remove(&id);
    }

    /// Drops the oldest connection still reading; whether there was one.
    fn evict_oldest(&self) -> bool {
        let oldest = self.lock().pop_first();
        match oldest {
            Some((_, tx)) => {
                let _ = tx.send(());
                true
            }
            None => false,
        }
    }

    fn lock(
        &self,
    ) -> std::sync::MutexGuard<'_, std::collections::BTreeMap<u64, tokio::sync::oneshot::Sender<()>>>
    {
        self.waiting.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// Serves until `shutdown` completes, then waits briefly for requests in
/// flight.
pub async fn serve<H: Handler>(
    listener: UnixListener,
    handler: Arc<H>,
    config: ServerConfig,
    shutdown: impl Future<Output = ()>,
) {
    let slots = Arc::new(Semaphore::new(config.max_connections));
    let readers = Arc::new(Readers::default());
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => {
                    let permit = match Arc::clone(&slots).try_acquire_owned() {
                        Ok(permit) => permit,
                        Err(_) => {
                            // Full: make room by dropping the oldest idle
                            // reader, else wait for a handler to finish.
                            if readers.evict_oldest() {
                                debug!("connection limit reached; dropped the oldest idle client");
                            }
                            let Ok(permit) = Arc::clone(&slots).acquire_owned().await else {
                                break;
                            };
                            permit
                        }
                    };
                    let handler = Arc::clone(&handler);
                    let readers = Arc::clone(&readers);
                    tokio::spawn(async move {
                        connection(stream, handler.as_ref(), config, &readers).await;
                        drop(permit);
                    });
                }
                Err(e) => {
                    warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            },
            () = &mut shutdown => break,
        }
    }
    info!("shutting down; waiting for requests in flight");
    let all = u32::try_from(config.max_connections).unwrap_or(u32::MAX);
    let _ = tokio::time::timeout(Duration::from_secs(5), slots.acquire_many(all)).await;
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

async fn connection<H: Handler>(
    mut stream: UnixStream,
    handler: &H,
    config: ServerConfig,
    readers: &Readers,
) {
    // Answered in the plugin's protocol version when it is served, so a
    // plugin one version behind (mid-rollout) reads the reply.
    let mut version = wire::PROTOCOL_VERSION;
    let reply = match stream.peer_cred() {
        Err(e) => Err(AgentError::new(
            ErrorKind::PermissionDenied,
            format!("cannot read caller credentials: {e}"),
        )),
        Ok(cred) => match authorize(cred.uid(), config.allowed_uid) {
            Err(e) => {
                warn!(uid = cred.uid(), pid = ?cred.pid(), "refused caller");
                Err(e)
            }
            Ok(()) => {
                let (id, evicted) = readers.enter();
                let read = tokio::select! {
                    read = tokio::time::timeout(config.read_timeout, read_request(&mut stream)) => Some(read),
                    _ = evicted => None,
                };
                readers.leave(id);
                let Some(read) = read else {
                    debug!(
                        "dropped to make room: the connection limit was reached while this client sent nothing"
                    );
                    return;
                };
                match read {
                    Err(_) => {
                        debug!("client sent no complete request in time; dropped");
                        return;
                    }
                    Ok(Err(WireError::Io(e))) => {
                        debug!(error = %e, "client went away before its request was read");
                        return;
                    }
                    Ok(Err(e)) => Err(AgentError::new(ErrorKind::Protocol, e.to_string())),
                    Ok(Ok((payload, netns))) => {
                        version = wire::answer_version(&payload);
                        match wire::decode_request(&payload) {
                            Ok(incoming) => handler.handle(incoming.request, netns).await,
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
    let write = async {
        // One write: the plugin, blocked reading, wakes once.
        let frame = wire::frame(&payload).map_err(|e| io::Error::other(e.to_string()))?;
        stream.write_all(&frame).await?;
        stream.flush().await
    };
    match tokio::time::timeout(config.write_timeout, write).await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => debug!(error = %e, "client went away before its reply was written"),
        Err(_) => debug!("client did not read its reply in time"),
    }
}

/// Reads one request frame's payload and the descriptor that may come with
/// its header.
async fn read_request(stream: &mut UnixStream) -> Result<(Vec<u8>, Option<OwnedFd>), WireError> {
    let mut header = [0u8; 4];
    let (got, netns) = recv_with_fd(stream, &mut header).await?;
    if got == 0 {
        return Err(WireError::Io(io::ErrorKind::UnexpectedEof.into()));
    }
    stream.read_exact(&mut header[got..]).await?;
    let len = wire::parse_header(header)?;
    let mut payload = vec![0u8; len];
    stream.read_exact(&mut payload).await?;
    Ok((payload, netns))
}

/// `recvmsg` into `buf`, taking at most one descriptor passed with it
/// (any others are closed).
async fn recv_with_fd(stream: &UnixStream, buf: &mut [u8]) -> io::Result<(usize, Option<OwnedFd>)> {
    use nix::sys::socket::{ControlMessageOwned, MsgFlags, recvmsg};
    loop {
        stream.readable().await?;
        let received = stream.try_io(Interest::READABLE, || {
            let mut iov = [std::io::IoSliceMut::new(buf)];
            let mut space = nix::cmsg_space!([RawFd; 1]);
            let msg = recvmsg::<()>(
                stream.as_raw_fd(),
                &mut iov,
                Some(&mut space),
                MsgFlags::MSG_CMSG_CLOEXEC,
            )
            .map_err(io::Error::from)?;
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
            Ok((msg.bytes, owned.into_iter().next()))
        });
        match received {
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
            other => return other,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proto::wire::Response;
    use std::os::fd::AsFd;
    use std::time::Instant;

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
