//! Work queued by a request's handler for after its reply is written.

use std::cell::RefCell;

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
pub(super) struct Deferred;

impl Deferred {
    pub(super) fn arm() -> Deferred {
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
