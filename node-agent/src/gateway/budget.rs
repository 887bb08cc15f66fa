//! The cluster's one budget per VPC action: the gateway is the account's
//! only caller of the VPC API from this cluster, so it spaces each action's
//! calls below the documented rate and the API never has to refuse one.
//! Calls wait their turn in the order they arrive (a reservation of the
//! next free slot), instead of all being sent and most refused. The rate
//! adapts: a refusal all the same (another replica, another tool of the
//! account) halves the action's rate, and calls that pass bring it back.

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// The share of the documented rates a gateway uses by default: the rest
/// is for the cluster component's own sweeps and the account's other
/// tools (the console, Terraform).
pub const DEFAULT_SHARE: f64 = 0.9;
/// The rate of an action with no documented one (per second).
pub const UNLISTED_RATE: f64 = 20.0;
/// The lowest an action's rate goes after refusals, as a share of its cap.
const FLOOR_SHARE: f64 = 0.05;
/// How much of its cap an action's rate regains with each call that
/// passes.
const RECOVERY_SHARE: f64 = 0.02;

/// One action's rate, its next free slot, and when its last calls went.
#[derive(Debug)]
struct Lane {
    /// The most this action may use (per second).
    cap: f64,
    /// What it uses now (per second).
    rate: f64,
    next: Option<Instant>,
    /// When the calls of the last second were sent.
    sent: VecDeque<Instant>,
}

/// Per-action spacing of calls.
#[derive(Debug)]
pub struct Budget {
    /// The cap of each listed action (calls per second).
    caps: HashMap<String, f64>,
    share: f64,
    lanes: Mutex<HashMap<String, Lane>>,
}

impl Budget {
    /// The documented rates (`tencent_api::DOCUMENTED_RATES`) times
    /// `share` (0 < share ≤ 1: what is left for this cluster's gateway of
    /// the account's budget).
    pub fn documented(share: f64) -> Budget {
        let share = share.clamp(0.01, 1.0);
        Budget {
            caps: tencent_api::DOCUMENTED_RATES
                .iter()
                .map(|(a, r)| (a.to_string(), f64::from(*r) * share))
                .collect(),
            share,
            lanes: Mutex::default(),
        }
    }

    /// The most calls per second of `action`.
    pub fn cap(&self, action: &str) -> f64 {
        self.caps
            .get(action)
            .copied()
            .unwrap_or(UNLISTED_RATE * self.share)
    }

    /// Calls per second of `action` now.
    pub fn rate(&self, action: &str) -> f64 {
        self.with(action, |l| l.rate)
    }

    fn with<T>(&self, action: &str, f: impl FnOnce(&mut Lane) -> T) -> T {
        let mut lanes = self.lanes.lock().unwrap_or_else(|p| p.into_inner());
        let lane = lanes.entry(action.to_string()).or_insert_with(|| {
            let cap = self.cap(action);
            Lane {
                cap,
                rate: cap,
                next: None,
                sent: VecDeque::new(),
            }
        });
        f(lane)
    }

    /// When a call of `action` asked for at `now` may be sent: its slot,
    /// taken.
    pub fn reserve(&self, action: &str, now: Instant) -> Instant {
        self.reserve_within(action, now, Duration::MAX)
            .unwrap_or(now)
    }

    /// [`reserve`](Self::reserve), unless the slot is more than `wait`
    /// away: then `None` and nothing is taken.
    pub fn reserve_within(&self, action: &str, now: Instant, wait: Duration) -> Option<Instant> {
        self.with(action, |lane| {
            let gap = Duration::from_secs_f64(1.0 / lane.rate);
            // Idle time does not pile up into a burst.
            let at = lane.next.map_or(now, |n| n.max(now));
            if at.saturating_duration_since(now) > wait {
                return None;
            }
            lane.next = Some(at + gap);
            Some(at)
        })
    }

    /// A call of `action` whose slot came is about to be sent at `now`:
    /// `None` when it may go (and it is counted), else when to ask again.
    /// Slots are spaced, but a sender that wakes late (a busy machine)
    /// would send several at once; this keeps the calls actually sent in
    /// any second within the rate.
    pub fn admit(&self, action: &str, now: Instant) -> Option<Instant> {
        self.with(action, |lane| {
            let second = Duration::from_secs(1);
            while lane
                .sent
                .front()
                .is_some_and(|t| now.saturating_duration_since(*t) >= second)
            {
                lane.sent.pop_front();
            }
            let most = (lane.rate.floor() as usize).max(1);
            if lane.sent.len() >= most {
                return lane.sent.front().map(|t| *t + second);
            }
            lane.sent.push_back(now);
            None
        })
    }

    /// The cloud refused a call of `action` at `now` all the same: its
    /// rate is halved, and the next slot is a second away (the API counts
    /// by the second).
    pub fn on_throttle(&self, action: &str, now: Instant) {
        self.with(action, |lane| {
            lane.rate = (lane.rate / 2.0).max(lane.cap * FLOOR_SHARE);
            let later = now + Duration::from_secs(1);
            lane.next = Some(lane.next.map_or(later, |n| n.max(later)));
        });
    }

    /// A call of `action` passed: its rate creeps back to its cap.
    pub fn on_success(&self, action: &str) {
        self.with(action, |lane| {
            lane.rate = (lane.rate + lane.cap * RECOVERY_SHARE).min(lane.cap);
        });
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
        assert!(second - later >= Duration::from_millis(50));
    }

    #[test]
    fn a_slot_too_far_away_is_not_taken() {
        let b = Budget::documented(1.0);
        let t0 = Instant::now();
        // 20 a second: the 21st call of this instant is a second away.
        for _ in 0..20 {
            assert!(
                b.reserve_within("DescribeVpcTaskResult", t0, Duration::from_secs(1))
                    .is_some()
            );
        }
        let wait = Duration::from_millis(500);
        assert_eq!(b.reserve_within("DescribeVpcTaskResult", t0, wait), None);
        assert_eq!(b.reserve_within("DescribeVpcTaskResult", t0, wait), None);
        // Nothing was taken by the refusals: the next slot is still the
        // 21st.
        let next = b.reserve("DescribeVpcTaskResult", t0);
        assert_eq!(next - t0, Duration::from_secs_f64(20.0 / 20.0));
    }

    #[test]
    fn calls_sent_late_together_are_held_to_the_rate_within_any_second() {
        let b = Budget::documented(0.5);
        let t0 = Instant::now();
        // 10 a second for DescribeVpcTaskResult: slots came, but the
        // sender woke late and sends 15 at once.
        let admitted = (0..15)
            .filter(|_| b.admit("DescribeVpcTaskResult", t0).is_none())
            .count();
        assert_eq!(admitted, 10);
        assert_eq!(
            b.admit("DescribeVpcTaskResult", t0),
            Some(t0 + Duration::from_secs(1))
        );
        let later = t0 + Duration::from_secs(1);
        assert_eq!(b.admit("DescribeVpcTaskResult", later), None);
    }

    #[test]
    fn a_refusal_halves_the_rate_and_passing_calls_bring_it_back() {
        let b = Budget::documented(1.0);
        let t0 = Instant::now();
        assert_eq!(b.rate("AttachNetworkInterface"), 50.0);
        b.on_throttle("AttachNetworkInterface", t0);
        assert_eq!(b.rate("AttachNetworkInterface"), 25.0);
        // The next call waits out the API's second.
        assert!(b.reserve("AttachNetworkInterface", t0) >= t0 + Duration::from_secs(1));
        for _ in 0..10 {
            b.on_throttle("AttachNetworkInterface", t0);
        }
        assert_eq!(b.rate("AttachNetworkInterface"), 2.5, "not below the floor");
        for _ in 0..100 {
            b.on_success("AttachNetworkInterface");
        }
        assert_eq!(b.rate("AttachNetworkInterface"), 50.0, "not above the cap");
        assert_eq!(b.rate("NotAnAction"), UNLISTED_RATE);
    }
}
