//! The only owner of the pool lock. A change is planned against the pool
//! under the lock, applied to it, and queued for the store in that same
//! order; the caller answers once it is durable. A failed commit *poisons*
//! the agent: the pool may then be ahead of the store, so nothing more is
//! changed, the cloud is left alone, and the agent exits for its supervisor
//! to restart it from the store.

use std::sync::{Mutex, MutexGuard};

use proto::wire::{AgentError, ErrorKind};
use tokio::sync::watch;
use tracing::error;

use crate::clock::Clock;
use crate::committer::{Committer, Pending};
use crate::ipam::{Change, Ipam, UnixMillis};

struct State {
    ipam: Ipam,
    poisoned: Option<String>,
}

/// The pool, its lock and its way to the store.
pub struct Txn {
    state: Mutex<State>,
    committer: Committer,
    clock: Clock,
    poison: watch::Sender<Option<String>>,
}

impl std::fmt::Debug for Txn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Txn").finish_non_exhaustive()
    }
}

impl Txn {
    /// The pool as restored, committing through `committer`.
    pub fn new(ipam: Ipam, committer: Committer, clock: Clock) -> Txn {
        Txn {
            state: Mutex::new(State {
                ipam,
                poisoned: None,
            }),
            committer,
            clock,
            poison: watch::channel(None).0,
        }
    }

    /// The time now.
    pub fn now(&self) -> UnixMillis {
        (self.clock)()
    }

    /// Reads the pool under the lock.
    pub fn read<T>(&self, f: impl FnOnce(&Ipam, UnixMillis) -> T) -> T {
        let now = self.now();
        f(&self.lock().ipam, now)
    }

    /// Why the agent is poisoned, if it is.
    pub fn poisoned(&self) -> Option<String> {
        self.lock().poisoned.clone()
    }

    /// Fails once the agent is poisoned: callers check before any cloud
    /// call, so a poisoned agent stops acting at once.
    pub fn ensure_healthy(&self) -> Result<(), AgentError> {
        match self.poisoned() {
            Some(why) => Err(poisoned_error(&why)),
            None => Ok(()),
        }
    }

    /// Resolves with the reason once the agent is poisoned.
    pub fn on_poison(&self) -> watch::Receiver<Option<String>> {
        self.poison.subscribe()
    }

    /// Plans changes under the pool lock, applies them and queues them for
    /// the store in that same order. The caller answers only once the
    /// returned [`Pending`] is [`durable`](Self::durable).
    pub fn change<T>(
        &self,
        plan: impl FnOnce(&Ipam, UnixMillis) -> Result<(Vec<Change>, T), AgentError>,
    ) -> Result<(T, Pending), AgentError> {
        let mut st = self.lock();
        if let Some(why) = &st.poisoned {
            return Err(poisoned_error(why));
        }
        let (changes, out) = plan(&st.ipam, self.now())?;
        st.ipam.apply(&changes);
        Ok((out, self.committer.submit(changes)))
    }

    /// Waits until queued changes are durable; a failure poisons the agent.
    pub async fn durable(&self, pending: Pending) -> Result<(), AgentError> {
        self.durable_outcome(pending.wait().await)
    }

    /// What a [`Pending`]'s wait came to; a failure poisons the agent.
    pub fn durable_outcome(&self, waited: Result<(), String>) -> Result<(), AgentError> {
        waited.map_err(|e| {
            self.poison(&e);
            AgentError::new(ErrorKind::Store, e)
        })
    }

    /// [`change`](Self::change), then [`durable`](Self::durable).
    pub async fn commit<T>(
        &self,
        plan: impl FnOnce(&Ipam, UnixMillis) -> Result<(Vec<Change>, T), AgentError>,
    ) -> Result<T, AgentError> {
        let (out, pending) = self.change(plan)?;
        self.durable(pending).await?;
        Ok(out)
    }

    fn poison(&self, why: &str) {
        let mut st = self.lock();
        if st.poisoned.is_none() {
            error!(
                error = why,
                "state store write failed; the agent stops acting and exits"
            );
            st.poisoned = Some(why.to_string());
            self.poison.send_replace(Some(why.to_string()));
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

fn poisoned_error(why: &str) -> AgentError {
    AgentError::new(
        ErrorKind::Store,
        format!("the state store failed earlier ({why}); the agent is restarting to reload it"),
    )
}
