//! The cluster's one budget per VPC action: the gateway is the account's
//! only caller of the VPC API from this cluster, so it spaces each action's
//! calls below the documented rate and the API never has to refuse one.
//! Calls wait their turn in the order they arrive (a reservation of the
//! next free slot), instead of all being sent and most refused.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// The rate of an action with no documented one (per second).
pub const UNLISTED_RATE: f64 = 20.0;

/// Per-action spacing of calls.
#[derive(Debug)]
pub struct Budget {
    /// Calls per second by action.
    rates: HashMap<String, f64>,
    /// The next free slot of each action.
    next: Mutex<HashMap<String, Instant>>,
    /// Calls a second may start without waiting: a burst the API's
    /// per-second window admits.
    burst: f64,
}

impl Budget {
    /// The documented rates (`tencent_api::DOCUMENTED_RATES`) times
    /// `share` (0 < share ≤ 1: what is left for this cluster's gateway of
    /// the account's budget).
    pub fn documented(share: f64) -> Budget {
        let share = share.clamp(0.01, 1.0);
        Budget {
            rates: tencent_api::DOCUMENTED_RATES
                .iter()
                .map(|(a, r)| (a.to_string(), f64::from(*r) * share))
                .collect(),
            next: Mutex::default(),
            burst: 1.0,
        }
    }

    /// Calls per second of `action`.
    pub fn rate(&self, action: &str) -> f64 {
        self.rates.get(action).copied().unwrap_or(UNLISTED_RATE)
    }

    /// When a call of `action` asked for at `now` may be sent: its slot,
    /// taken.
    pub fn reserve(&self, action: &str, now: Instant) -> Instant {
        let gap = Duration::from_secs_f64(1.0 / self.rate(action));
        let mut next = self.next.lock().unwrap_or_else(|p| p.into_inner());
        let slot = next.entry(action.to_string()).or_insert(now);
        // Idle time does not pile up into more than a small burst.
        let earliest = now.checked_sub(gap.mul_f64(self.burst)).unwrap_or(now);
        let at = (*slot).max(earliest);
        *slot = at + gap;
        at.max(now)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn calls_are_spaced_at_the_documented_rate_and_idle_time_is_not_saved_up() {
        let b = Budget::documented(0.9);
        let t0 = Instant::now();
        // 18 a second for DescribeNetworkInterfaceLimit (20 documented).
        let slots: Vec<Duration> = (0..36)
            .map(|_| b.reserve("DescribeNetworkInterfaceLimit", t0) - t0)
            .collect();
        assert!(slots[35] >= Duration::from_millis(1900), "{:?}", slots[35]);
        assert!(slots[35] <= Duration::from_millis(2000), "{:?}", slots[35]);
        // In any second of slots, no more than the API admits.
        for (i, s) in slots.iter().enumerate() {
            let within = slots[i..]
                .iter()
                .filter(|t| **t < *s + Duration::from_secs(1))
                .count();
            assert!(within <= 20, "{within} calls within a second");
        }
        // Another action has its own budget.
        assert_eq!(b.reserve("AttachNetworkInterface", t0), t0);
        // After a long idle spell, one call at once, then spaced again.
        let later = t0 + Duration::from_secs(60);
        assert_eq!(b.reserve("DescribeNetworkInterfaceLimit", later), later);
        let second = b.reserve("DescribeNetworkInterfaceLimit", later);
        assert!(second - later <= Duration::from_millis(60));
        let third = b.reserve("DescribeNetworkInterfaceLimit", later);
        assert!(third - second >= Duration::from_millis(50));
    }
}
