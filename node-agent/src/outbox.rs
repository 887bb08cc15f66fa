//! The ordered stream of durable changes. The store's writer thread
//! publishes every batch once it is durable, in commit order; subscribers
//! (the cluster's claims today; Kubernetes objects, events and metrics
//! next) read it at their own pace. Publishing never waits for a
//! subscriber: each reads from a bounded ring, and one that falls behind
//! is handed a full snapshot of the durable pool and then the stream again
//! from there. A subscriber's first delivery is such a snapshot too.
//!
//! The outbox keeps its own copy of the pool as the store holds it, so a
//! snapshot never shows a change that is not durable yet (the live pool is
//! ahead of the store while a commit is in flight).

use std::sync::{Arc, Mutex, Weak};

use tokio::sync::broadcast;

use crate::ipam::{Change, Ipam, Snapshot};

/// How many batches a subscriber may fall behind before it is re-synced
/// with a snapshot.
pub const RING: usize = 1024;

/// One durable batch of changes.
#[derive(Debug)]
pub struct Batch {
    /// Position in the stream, counting from 1.
    pub seq: u64,
    /// The changes, in the order they were made.
    pub changes: Vec<Change>,
}

/// What a subscriber receives.
#[derive(Clone, Debug)]
pub enum Delivery {
    /// The whole durable pool after batch `seq`; the batches that follow
    /// continue from it.
    Snapshot {
        /// The last batch the snapshot includes.
        seq: u64,
        /// The pool.
        pool: Arc<Snapshot>,
    },
    /// The next batch.
    Batch(Arc<Batch>),
}

struct Durable {
    seq: u64,
    pool: Ipam,
}

/// The outbox.
pub struct Outbox {
    durable: Mutex<Durable>,
    ring: broadcast::Sender<Arc<Batch>>,
}

impl std::fmt::Debug for Outbox {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Outbox").finish_non_exhaustive()
    }
}

impl Outbox {
    /// An outbox whose stream starts from `pool`, the durable state at start.
    pub fn new(pool: Ipam) -> Arc<Outbox> {
        Self::with_ring(pool, RING)
    }

    /// [`new`](Self::new) with a ring of `ring` batches.
    pub fn with_ring(pool: Ipam, ring: usize) -> Arc<Outbox> {
        let (sender, _) = broadcast::channel(ring.max(1));
        Arc::new(Outbox {
            durable: Mutex::new(Durable { seq: 0, pool }),
            ring: sender,
        })
    }

    /// Publishes a batch that just became durable. Called in commit order by
    /// the store's writer; never blocks on a subscriber.
    pub fn publish(&self, changes: Vec<Change>) {
        if changes.is_empty() {
            return;
        }
        let mut d = self.lock();
        d.seq += 1;
        d.pool.apply(&changes);
        let batch = Arc::new(Batch {
            seq: d.seq,
            changes,
        });
        // No subscriber is no error.
        let _ = self.ring.send(batch);
    }

    /// The number of batches published so far.
    #[cfg(test)]
    pub fn published(&self) -> u64 {
        self.lock().seq
    }

    /// A new subscription; its first delivery is a snapshot.
    pub fn subscribe(self: &Arc<Self>) -> Subscription {
        let (snapshot, ring) = self.snapshot();
        Subscription {
            outbox: Arc::downgrade(self),
            ring,
            after: snapshot.0,
            snapshot: Some(snapshot),
        }
    }

    /// The durable pool and a ring receiver positioned right after it,
    /// taken together under the lock so no batch falls between them.
    fn snapshot(&self) -> ((u64, Arc<Snapshot>), broadcast::Receiver<Arc<Batch>>) {
        let d = self.lock();
        let ring = self.ring.subscribe();
        ((d.seq, Arc::new(d.pool.snapshot())), ring)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Durable> {
        self.durable.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// One subscriber's position in the stream.
#[derive(Debug)]
pub struct Subscription {
    outbox: Weak<Outbox>,
    ring: broadcast::Receiver<Arc<Batch>>,
    /// The last batch delivered (or included in the last snapshot).
    after: u64,
    snapshot: Option<(u64, Arc<Snapshot>)>,
}

impl Subscription {
    /// Starts over: the next delivery is a fresh snapshot. `false` once the
    /// outbox is gone.
    pub fn restart(&mut self) -> bool {
        let Some(outbox) = self.outbox.upgrade() else {
            return false;
        };
        let (snapshot, ring) = outbox.snapshot();
        self.ring = ring;
        self.after = snapshot.0;
        self.snapshot = Some(snapshot);
        true
    }

    /// The next delivery; `None` once the outbox is gone (the agent stops).
    pub async fn next(&mut self) -> Option<Delivery> {
        if let Some((seq, pool)) = self.snapshot.take() {
            return Some(Delivery::Snapshot { seq, pool });
        }
        loop {
            match self.ring.recv().await {
                Ok(batch) if batch.seq <= self.after => continue,
                Ok(batch) => {
                    self.after = batch.seq;
                    return Some(Delivery::Batch(batch));
                }
                Err(broadcast::error::RecvError::Lagged(_)) => {
                    let outbox = self.outbox.upgrade()?;
                    let ((seq, pool), ring) = outbox.snapshot();
                    self.ring = ring;
                    self.after = seq;
                    return Some(Delivery::Snapshot { seq, pool });
                }
                Err(broadcast::error::RecvError::Closed) => return None,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::net::Ipv4Addr;

    use super::*;

    fn cooling(i: u32) -> Vec<Change> {
        vec![Change::PutCooling(Ipv4Addr::from(i), u64::from(i))]
    }

    #[tokio::test]
    async fn a_subscriber_gets_a_snapshot_then_every_batch_in_order() {
        let outbox = Outbox::new(Ipam::new(0));
        outbox.publish(cooling(1));
        let mut sub = outbox.subscribe();
        outbox.publish(cooling(2));
        outbox.publish(Vec::new());
        outbox.publish(cooling(3));
        match sub.next().await {
            Some(Delivery::Snapshot { seq: 1, pool }) => assert_eq!(pool.cooling.len(), 1),
            other => panic!("{other:?}"),
        }
        for want in [2u64, 3] {
            match sub.next().await {
                Some(Delivery::Batch(b)) => assert_eq!(b.seq, want),
                other => panic!("{other:?}"),
            }
        }
    }

    #[tokio::test]
    async fn a_subscriber_that_falls_behind_is_resynced_with_a_snapshot() {
        let outbox = Outbox::with_ring(Ipam::new(0), 4);
        let mut sub = outbox.subscribe();
        assert!(matches!(
            sub.next().await,
            Some(Delivery::Snapshot { seq: 0, .. })
        ));
        for i in 1..=10 {
            outbox.publish(cooling(i));
        }
        match sub.next().await {
            Some(Delivery::Snapshot { seq: 10, pool }) => assert_eq!(pool.cooling.len(), 10),
            other => panic!("{other:?}"),
        }
        outbox.publish(cooling(11));
        match sub.next().await {
            Some(Delivery::Batch(b)) => assert_eq!(b.seq, 11),
            other => panic!("{other:?}"),
        }
    }

    #[tokio::test]
    async fn the_stream_ends_with_the_outbox() {
        let outbox = Outbox::new(Ipam::new(0));
        let mut sub = outbox.subscribe();
        assert!(sub.next().await.is_some());
        drop(outbox);
        assert!(sub.next().await.is_none());
    }
}
