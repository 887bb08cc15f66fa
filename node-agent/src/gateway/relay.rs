//! The gateway's one way to the cloud: each call in its action's turn
//! ([`Budget`]), signed with the gateway's credentials, a refusal for
//! throttling waited out here (the budget slows down for it) instead of
//! being handed to the node, and a call that would wait longer than
//! [`GATEWAY_QUEUE`] in all turned away at once as `RequestLimitExceeded`,
//! so the node backs off instead of timing out with the call still queued
//! (a node waits that long more than its own timeout).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use serde_json::Value;
use tencent_api::errors::Kind;

use super::Answer;
use super::budget::Budget;
use crate::cloud::CloudError;
use crate::cloud::tencent::{GATEWAY_QUEUE, Transport};

/// Why a call was not answered by the cloud.
#[derive(Debug)]
pub enum Unsent {
    /// Its action's queue is longer than a node waits: try again later.
    Busy(Duration),
    /// Sent, and no answer came: its outcome is unknown.
    Failed(CloudError),
}

/// Counts of what the relay did, for the benchmark and the logs.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Counts {
    /// Calls sent to the cloud.
    pub sent: u64,
    /// Of them, refused by the cloud as throttled.
    pub throttled: u64,
    /// Calls turned away because their action's queue was too long.
    pub busy: u64,
}

/// The budgeted, signed way to the cloud.
#[derive(Debug)]
pub struct Relay {
    transport: Arc<Transport>,
    budget: Budget,
    sent: AtomicU64,
    throttled: AtomicU64,
    busy: AtomicU64,
}

impl Relay {
    /// Calls through `transport` (the gateway's credentials) within
    /// `budget`.
    pub fn new(transport: Arc<Transport>, budget: Budget) -> Relay {
        Relay {
            transport,
            budget,
            sent: AtomicU64::new(0),
            throttled: AtomicU64::new(0),
            busy: AtomicU64::new(0),
        }
    }

    /// The budget.
    pub fn budget(&self) -> &Budget {
        &self.budget
    }

    /// What it did so far.
    pub fn counts(&self) -> Counts {
        Counts {
            sent: self.sent.load(Ordering::Relaxed),
            throttled: self.throttled.load(Ordering::Relaxed),
            busy: self.busy.load(Ordering::Relaxed),
        }
    }

    /// Sends `action` with `params` in its turn; the cloud's answer as it
    /// gave it.
    pub async fn send(&self, action: &str, params: &Value) -> Result<Answer, Unsent> {
        self.turn(action, GATEWAY_QUEUE).await?;
        self.send_in_turn(action, params).await
    }

    /// Waits for `action`'s next turn, unless it is more than `within`
    /// away.
    pub async fn turn(&self, action: &str, within: Duration) -> Result<(), Unsent> {
        let Some(at) = self.budget.reserve_within(action, Instant::now(), within) else {
            self.busy.fetch_add(1, Ordering::Relaxed);
            return Err(Unsent::Busy(within));
        };
        self.until(action, at).await;
        Ok(())
    }

    /// Sleeps until `at`, then until the call may go within the rate of
    /// the last second.
    async fn until(&self, action: &str, at: Instant) {
        tokio::time::sleep_until(at.into()).await;
        while let Some(later) = self.budget.admit(action, Instant::now()) {
            tokio::time::sleep_until(later.into()).await;
        }
    }

    /// Sends `action` with `params` now (its turn was taken); a refusal
    /// for throttling is sent again in later turns while they come within
    /// [`GATEWAY_QUEUE`], and handed on after that.
    pub async fn send_in_turn(&self, action: &str, params: &Value) -> Result<Answer, Unsent> {
        let started = Instant::now();
        loop {
            let transport = Arc::clone(&self.transport);
            let (action_, params_) = (action.to_string(), params.clone());
            let answer = tokio::task::spawn_blocking(move || transport.relay(&action_, &params_))
                .await
                .map_err(|e| Unsent::Failed(CloudError::Other(e.to_string())))?
                .map_err(Unsent::Failed)?;
            self.sent.fetch_add(1, Ordering::Relaxed);
            if !throttled(action, &answer) {
                self.budget.on_success(action);
                return Ok(answer);
            }
            self.throttled.fetch_add(1, Ordering::Relaxed);
            self.budget.on_throttle(action, Instant::now());
            let left = GATEWAY_QUEUE.saturating_sub(started.elapsed());
            let Some(at) = self.budget.reserve_within(action, Instant::now(), left) else {
                return Ok(answer);
            };
            self.until(action, at).await;
        }
    }
}

/// Whether `answer` is the cloud's refusal for throttling.
fn throttled(action: &str, answer: &Answer) -> bool {
    matches!(
        crate::cloud::tencent::decode_response(action, answer.0, &answer.1),
        Err((Kind::Throttled, _))
    )
}
