//! The store's single writer. Changes are queued in the order the pool
//! applied them; the first waiter to find the store free leads: it takes
//! everything queued, its own changes among them, commits it in one
//! transaction on its own thread (the runtime's `block_in_place`) and
//! tells every waiter of that group. Whatever queues up while a commit is
//! in flight goes into the next one (group commit), so a burst of ADDs
//! pays for few fsyncs, and an ADD wires its pod while its commit is under
//! way. A lone ADD or DEL commits on the thread that serves it, with no
//! hand-over to another thread and back (two wake-ups of idle CPUs per
//! call, measurable on every CNI call). Each batch that became durable is
//! handed to the [`Outbox`], in commit order, before its waiter hears of
//! it.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};

use tokio::sync::oneshot;

use crate::ipam::Change;
use crate::outbox::Outbox;
use crate::store::Store;

struct Batch {
    changes: Vec<Change>,
    done: oneshot::Sender<Result<(), String>>,
}

struct Shared {
    /// Submitted and not yet taken by a leader, in submission order.
    queue: Mutex<VecDeque<Batch>>,
    /// Held by the leader for the whole commit; `None` once closed.
    store: tokio::sync::Mutex<Option<Box<dyn Store>>>,
    outbox: Arc<Outbox>,
}

impl Shared {
    fn queue(&self) -> std::sync::MutexGuard<'_, VecDeque<Batch>> {
        self.queue.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Commits everything queued as one group and tells its waiters.
    fn commit_queued(&self, store: &mut Option<Box<dyn Store>>) {
        let group: Vec<Batch> = self.queue().drain(..).collect();
        if group.is_empty() {
            return;
        }
        let Some(store) = store.as_mut() else {
            for batch in group {
                let _ = batch.done.send(Err(CLOSED.into()));
            }
            return;
        };
        let changes: Vec<Change> = group
            .iter()
            .flat_map(|b| b.changes.iter().cloned())
            .collect();
        let result = store.commit(&changes).map_err(|e| e.to_string());
        for batch in group {
            if result.is_ok() {
                self.outbox.publish(batch.changes);
            }
            let _ = batch.done.send(result.clone());
        }
    }
}

const CLOSED: &str = "the state store is closed";

/// The store's queue. Dropping it commits what is still queued and closes
/// the store before the drop returns.
pub struct Committer {
    shared: Arc<Shared>,
}

impl std::fmt::Debug for Committer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Committer").finish_non_exhaustive()
    }
}

/// A queued commit; resolves once the changes are durable.
pub struct Pending {
    done: oneshot::Receiver<Result<(), String>>,
    shared: Arc<Shared>,
}

impl std::fmt::Debug for Pending {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pending").finish_non_exhaustive()
    }
}

impl Pending {
    /// Waits for the commit, leading it when the store is free.
    pub async fn wait(mut self) -> Result<(), String> {
        loop {
            if let Some(result) = self.outcome() {
                return result;
            }
            let shared = Arc::clone(&self.shared);
            let mut store = shared.store.lock().await;
            // A leader before us may have taken our changes.
            if let Some(result) = self.outcome() {
                return result;
            }
            if tokio::runtime::Handle::try_current()
                .is_ok_and(|h| h.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread)
            {
                tokio::task::block_in_place(|| shared.commit_queued(&mut store));
            } else {
                shared.commit_queued(&mut store);
            }
        }
    }

    /// The result, once a leader has committed these changes.
    fn outcome(&mut self) -> Option<Result<(), String>> {
        match self.done.try_recv() {
            Ok(result) => Some(result),
            Err(oneshot::error::TryRecvError::Empty) => None,
            Err(oneshot::error::TryRecvError::Closed) => Some(Err(CLOSED.into())),
        }
    }
}

impl Committer {
    /// A committer writing to `store`; durable batches go to `outbox`.
    pub fn start(store: Box<dyn Store>, outbox: Arc<Outbox>) -> Committer {
        Committer {
            shared: Arc::new(Shared {
                queue: Mutex::new(VecDeque::new()),
                store: tokio::sync::Mutex::new(Some(store)),
                outbox,
            }),
        }
    }

    /// Queues `changes`; the returned [`Pending`] commits them when waited
    /// for. Empty changes go through the queue too: they resolve once
    /// everything queued before them is durable (a barrier).
    pub fn submit(&self, changes: Vec<Change>) -> Pending {
        let (done, wait) = oneshot::channel();
        self.shared.queue().push_back(Batch { changes, done });
        Pending {
            done: wait,
            shared: Arc::clone(&self.shared),
        }
    }
}

impl Drop for Committer {
    fn drop(&mut self) {
        // Nothing leads any more once the pool is gone: what is queued is
        // committed now, and the store closed (its file lock released).
        match self.shared.store.try_lock() {
            Ok(mut store) => {
                self.shared.commit_queued(&mut store);
                store.take();
            }
            Err(_) => {
                // A leader is committing right now; it finishes the store's
                // last transaction, and the last owner drops the store.
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ipam::Ipam;
    use crate::outbox::Delivery;
    use crate::store::MemoryStore;
    use std::net::Ipv4Addr;
    use std::sync::atomic::Ordering;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn every_submission_is_committed_in_order_and_reported() {
        let outbox = Outbox::new(Ipam::new(0));
        let mut stream = outbox.subscribe();
        let committer = Committer::start(Box::new(MemoryStore::default()), Arc::clone(&outbox));
        let pending: Vec<Pending> = (0..200u32)
            .map(|i| committer.submit(vec![Change::PutCooling(Ipv4Addr::from(i), u64::from(i))]))
            .collect();
        for p in pending {
            assert_eq!(p.wait().await, Ok(()));
        }
        assert_eq!(committer.submit(Vec::new()).wait().await, Ok(()));
        assert!(matches!(
            stream.next().await,
            Some(Delivery::Snapshot { seq: 0, .. })
        ));
        for i in 0..200u32 {
            match stream.next().await {
                Some(Delivery::Batch(b)) => assert_eq!(
                    b.changes,
                    vec![Change::PutCooling(Ipv4Addr::from(i), u64::from(i))],
                    "published in commit order"
                ),
                other => panic!("{other:?}"),
            }
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn changes_nobody_waits_for_are_committed_by_the_next_waiter_or_at_the_end() {
        let outbox = Outbox::new(Ipam::new(0));
        let committer = Committer::start(Box::new(MemoryStore::default()), Arc::clone(&outbox));
        let a = Change::PutCooling(Ipv4Addr::new(10, 0, 0, 1), 1);
        let b = Change::PutCooling(Ipv4Addr::new(10, 0, 0, 2), 2);
        let c = Change::PutCooling(Ipv4Addr::new(10, 0, 0, 3), 3);
        drop(committer.submit(vec![a]));
        assert_eq!(committer.submit(vec![b]).wait().await, Ok(()));
        assert_eq!(outbox.published(), 2, "the dropped batch went first");
        drop(committer.submit(vec![c]));
        drop(committer);
        assert_eq!(outbox.published(), 3, "committed when the committer went");
    }

    #[tokio::test]
    async fn a_failed_commit_is_reported_to_every_waiter() {
        let store = MemoryStore::default();
        let fail = Arc::clone(&store.fail_commits);
        fail.store(true, Ordering::SeqCst);
        let outbox = Outbox::new(Ipam::new(0));
        let committer = Committer::start(Box::new(store), Arc::clone(&outbox));
        let p = committer.submit(vec![Change::RemoveCooling(Ipv4Addr::LOCALHOST)]);
        assert!(p.wait().await.expect_err("fails").contains("injected"));
        assert_eq!(
            outbox.published(),
            0,
            "nothing that is not durable is published"
        );
    }
}
