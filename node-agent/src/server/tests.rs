//! The socket served for real: slow, idle, oversized, foreign and
//! version-skewed callers.

use std::os::fd::AsFd;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::time::Instant;

use proto::wire::Response;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::UnixStream;

use super::*;

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
