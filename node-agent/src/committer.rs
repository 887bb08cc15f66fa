//! The store's single writer. Changes are queued in the order the pool
//! applied them and committed by one thread; whatever queued up while a
//! commit was in flight goes into the next one (group commit), so a burst
//! of ADDs pays for few fsyncs, and an ADD wires its pod while its commit
//! is under way. Each batch that became durable is handed to the
//! [`Outbox`], in commit order, before its waiter hears of it.

use std::sync::{Arc, mpsc};

use tokio::sync::oneshot;

use crate::ipam::Change;
use crate::outbox::Outbox;
use crate::store::Store;

struct Batch {
    changes: Vec<Change>,
    done: oneshot::Sender<Result<(), String>>,
}

/// The queue to the writer thread. Dropping it lets the thread finish the
/// queue and close the store before the drop returns.
#[derive(Debug)]
pub struct Committer {
    queue: Option<mpsc::Sender<Batch>>,
    writer: Option<std::thread::JoinHandle<()>>,
}

/// A queued commit; resolves once the changes are durable.
#[derive(Debug)]
pub struct Pending(oneshot::Receiver<Result<(), String>>);

impl Pending {
    /// Waits for the commit.
    pub async fn wait(self) -> Result<(), String> {
        self.0
            .await
            .unwrap_or_else(|_| Err("the store's writer thread is gone".into()))
    }
}

impl Committer {
    /// Starts the writer thread; it stops when the committer is dropped.
    /// Durable batches go to `outbox`.
    pub fn start(mut store: Box<dyn Store>, outbox: Arc<Outbox>) -> Committer {
        let (queue, batches) = mpsc::channel::<Batch>();
        let writer = std::thread::Builder::new()
            .name("store-writer".into())
            .spawn(move || {
                while let Ok(first) = batches.recv() {
                    let mut group = vec![first];
                    group.extend(batches.try_iter());
                    let changes: Vec<Change> = group
                        .iter()
                        .flat_map(|b| b.changes.iter().cloned())
                        .collect();
                    let result = store.commit(&changes).map_err(|e| e.to_string());
                    for batch in group {
                        if result.is_ok() {
                            outbox.publish(batch.changes);
                        }
                        let _ = batch.done.send(result.clone());
                    }
                }
            })
            .expect("spawn the store writer thread");
        Committer {
            queue: Some(queue),
            writer: Some(writer),
        }
    }

    /// Queues `changes`. Empty changes go through the queue too: they
    /// resolve once everything queued before them is durable (a barrier).
    pub fn submit(&self, changes: Vec<Change>) -> Pending {
        let (done, wait) = oneshot::channel();
        let batch = Batch { changes, done };
        let refused = match &self.queue {
            Some(queue) => queue.send(batch).err().map(|mpsc::SendError(b)| b),
            None => Some(batch),
        };
        if let Some(batch) = refused {
            let _ = batch
                .done
                .send(Err("the store's writer thread is gone".into()));
        }
        Pending(wait)
    }
}

impl Drop for Committer {
    fn drop(&mut self) {
        self.queue.take();
        if let Some(writer) = self.writer.take() {
            let _ = writer.join();
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
