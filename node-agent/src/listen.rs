//! Binding a TCP port that the previous instance of this component may
//! still hold. The cluster component runs on the host network: when its pod
//! is replaced on the same node (a force delete, a rollout with a surge), the
//! new process starts while the old one is still being stopped and its ports
//! are taken. Failing then would make the kubelet restart it with a growing
//! back-off (10 s, 20 s, ... 5 min) while nothing serves; it waits for the
//! port instead, saying so.

use std::io;
use std::time::Duration;

use tokio::net::{TcpListener, ToSocketAddrs};
use tracing::warn;

/// How often a taken port is tried again.
const RETRY: Duration = Duration::from_millis(250);

/// How often the wait is logged.
const SAY_EVERY: u32 = 40;

/// Binds `address`, waiting as long as it is in use; any other error is
/// returned at once.
pub async fn bind_when_free<A: ToSocketAddrs + Clone + std::fmt::Debug>(
    address: A,
    what: &str,
) -> io::Result<TcpListener> {
    let mut tries: u32 = 0;
    loop {
        match TcpListener::bind(address.clone()).await {
            Err(e) if e.kind() == io::ErrorKind::AddrInUse => {
                if tries.is_multiple_of(SAY_EVERY) {
                    warn!(
                        ?address,
                        what, "port in use (the previous instance still stopping?); waiting for it"
                    );
                }
                tries = tries.saturating_add(1);
                tokio::time::sleep(RETRY).await;
            }
            bound => return bound,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_port_still_held_is_waited_for_not_failed() {
        let held = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let address = held.local_addr().expect("address");
        let release = tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(600)).await;
            drop(held);
        });
        let started = std::time::Instant::now();
        let listener = bind_when_free(address, "test")
            .await
            .expect("bound once free");
        assert_eq!(listener.local_addr().expect("address"), address);
        assert!(started.elapsed() >= Duration::from_millis(500));
        release.await.expect("released");
    }

    #[tokio::test]
    async fn another_error_is_returned_at_once() {
        // An address this host does not have.
        let err = bind_when_free("192.0.2.1:0", "test")
            .await
            .expect_err("not ours");
        assert_eq!(err.kind(), io::ErrorKind::AddrNotAvailable);
    }
}
