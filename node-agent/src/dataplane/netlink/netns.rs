//! Network namespaces: work done on a short-lived thread that entered the
//! namespace, so no thread of the async runtime ever changes namespace.

use std::io;
use std::os::fd::OwnedFd;

use nix::sched::{CloneFlags, setns};
use rtnetlink::Handle;

/// Runs `f` on a new thread inside the network namespace `netns`, or in
/// the agent's own namespace when `netns` is `None`. The caller awaits the
/// result: no runtime worker blocks on the thread.
pub async fn run_in<T: Send + 'static>(
    netns: Option<OwnedFd>,
    f: impl FnOnce() -> io::Result<T> + Send + 'static,
) -> io::Result<T> {
    let (done, result) = tokio::sync::oneshot::channel();
    std::thread::Builder::new()
        .name("netns".into())
        .spawn(move || {
            let run = || {
                if let Some(ns) = &netns {
                    setns(ns, CloneFlags::CLONE_NEWNET).map_err(io::Error::from)?;
                }
                f()
            };
            let _ = done.send(run());
        })?;
    result
        .await
        .map_err(|_| io::Error::other("namespace worker thread panicked"))?
}

/// A netlink handle whose socket was opened inside `netns` (a socket stays
/// in the namespace it was created in). Its connection runs on the current
/// runtime until the handle is dropped.
pub async fn connect(netns: Option<OwnedFd>) -> io::Result<Handle> {
    let runtime = tokio::runtime::Handle::current();
    let (connection, handle) = run_in(netns, move || {
        let _entered = runtime.enter();
        let (connection, handle, _) = rtnetlink::new_connection()?;
        Ok((connection, handle))
    })
    .await?;
    tokio::spawn(connection);
    Ok(handle)
}

/// Writes a sysctl, given as its path under `/proc/sys` (such as
/// `net/ipv4/ip_forward`), as seen from `netns`.
pub async fn write_sysctl(netns: Option<OwnedFd>, key: &str, value: &str) -> io::Result<()> {
    let path = format!("/proc/sys/{key}");
    let value = value.to_string();
    run_in(netns, move || std::fs::write(&path, value)).await
}
