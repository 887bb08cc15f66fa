//! Deferred deletion of host veths. Deleting a veth holds the kernel's
//! RTNL lock for about 20 ms (an RCU grace period), and every other netlink
//! change on the machine waits behind it; the reference plugins pay that
//! inside DEL. Here DEL only queues the veth: it usually vanishes by itself
//! when the runtime deletes the pod's namespace right after DEL, and what
//! is still there is deleted once the agent has been idle for
//! [`IDLE`] (or at once when [`MAX_PENDING`] pile up), so no ADD or DEL
//! waits behind a deletion in a burst.

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rtnetlink::Handle;
use tokio::sync::Notify;
use tokio::time::Instant;
use tracing::{debug, warn};

/// Quiet time before queued veths are deleted.
pub const IDLE: Duration = Duration::from_millis(1500);
/// Queue length at which deletion no longer waits for quiet.
pub const MAX_PENDING: usize = 64;

/// The queue and its worker.
#[derive(Debug)]
pub struct Reaper {
    pending: Mutex<BTreeSet<String>>,
    last_activity: Mutex<Instant>,
    wake: Notify,
    /// Held while a link is looked up and created or deleted, so the worker
    /// never deletes a veth an ADD is taking over.
    pub links: Arc<tokio::sync::Mutex<()>>,
}

impl Reaper {
    /// A reaper whose worker runs on the current runtime.
    pub fn start(node: Handle) -> Arc<Reaper> {
        let reaper = Arc::new(Reaper {
            pending: Mutex::default(),
            last_activity: Mutex::new(Instant::now()),
            wake: Notify::new(),
            links: Arc::new(tokio::sync::Mutex::new(())),
        });
        tokio::spawn(Arc::clone(&reaper).run(node));
        reaper
    }

    /// Notes request activity: deletions wait for quiet.
    pub fn touch(&self) {
        *self.last_activity.lock().unwrap_or_else(|p| p.into_inner()) = Instant::now();
    }

    /// Queues a host veth for deletion.
    pub fn schedule(&self, name: String) {
        self.pending
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(name);
        self.wake.notify_one();
    }

    /// Takes a veth off the queue; true if it was queued.
    pub fn cancel(&self, name: &str) -> bool {
        self.pending
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(name)
    }

    /// Deletes every queued veth now; how many were queued. For an ADD
    /// whose pod end's name is still taken by a pair waiting here.
    pub async fn flush(&self, node: &Handle) -> usize {
        let mut n = 0;
        while self.queued() > 0 {
            self.reap_one(node).await;
            n += 1;
        }
        n
    }

    async fn run(self: Arc<Self>, node: Handle) {
        loop {
            if self.queued() == 0 {
                self.wake.notified().await;
                continue;
            }
            let quiet = self.last_activity().elapsed();
            if quiet < IDLE && self.queued() < MAX_PENDING {
                tokio::time::sleep(IDLE - quiet).await;
                continue;
            }
            self.reap_one(&node).await;
        }
    }

    fn queued(&self) -> usize {
        self.pending.lock().unwrap_or_else(|p| p.into_inner()).len()
    }

    fn last_activity(&self) -> Instant {
        *self.last_activity.lock().unwrap_or_else(|p| p.into_inner())
    }

    async fn reap_one(&self, node: &Handle) {
        let _links = self.links.lock().await;
        let Some(name) = self
            .pending
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .pop_first()
        else {
            return;
        };
        match super::delete_link_named(node, &name).await {
            Ok(()) => debug!(veth = %name, "deleted"),
            Err(e) => warn!(veth = %name, error = %e, "deleting veth failed; GC will retry"),
        }
    }
}
