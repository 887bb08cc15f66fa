//! When to try a cloud call again, and when to send the next one: capped
//! exponential backoff with full jitter, a token bucket for the
//! client-side rate limit, an adaptive rate per action that halves when
//! the API throttles and creeps back up while it does not (AIMD), and when
//! to look at an asynchronous task again. Pure functions of their inputs.

use std::time::{Duration, Instant};

/// Retry policy of the client.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Attempts in all, the first included.
    pub max_attempts: u32,
    /// The first backoff's ceiling.
    pub base: Duration,
    /// No backoff is longer.
    pub cap: Duration,
}

impl Default for RetryPolicy {
    fn default() -> RetryPolicy {
        RetryPolicy {
            max_attempts: 6,
            base: Duration::from_millis(100),
            cap: Duration::from_secs(5),
        }
    }
}

impl RetryPolicy {
    /// The wait before attempt `attempt + 1` (after `attempt` failures,
    /// from 1): uniform in `[0, min(cap, base * 2^(attempt-1))]`, drawn
    /// from `random`.
    pub fn backoff(&self, attempt: u32, random: u64) -> Duration {
        let ceiling = self
            .base
            .saturating_mul(1u32 << attempt.saturating_sub(1).min(20))
            .min(self.cap);
        let millis = ceiling.as_millis() as u64;
        Duration::from_millis(if millis == 0 {
            0
        } else {
            random % (millis + 1)
        })
    }
}

/// A token bucket: `qps` tokens a second, up to `burst`.
#[derive(Clone, Debug)]
pub struct RateLimiter {
    qps: f64,
    burst: f64,
    tokens: f64,
    last: Instant,
}

impl RateLimiter {
    /// A full bucket.
    pub fn new(qps: f64, now: Instant) -> RateLimiter {
        let burst = qps.max(1.0);
        RateLimiter {
            qps,
            burst,
            tokens: burst,
            last: now,
        }
    }

    /// Takes a token at `now`; returns how long to wait first.
    pub fn take(&mut self, now: Instant) -> Duration {
        if self.qps <= 0.0 {
            return Duration::ZERO;
        }
        let elapsed = now.saturating_duration_since(self.last).as_secs_f64();
        self.last = now;
        self.tokens = (self.tokens + elapsed * self.qps).min(self.burst) - 1.0;
        if self.tokens >= 0.0 {
            Duration::ZERO
        } else {
            Duration::from_secs_f64(-self.tokens / self.qps)
        }
    }
}

/// An adaptive request rate for one action (additive increase,
/// multiplicative decrease): calls are spaced `1/rate` apart; a throttled
/// call halves the rate (not below `min`), every call that is not throttled
/// adds `increase / rate` (at most `increase`), so the rate climbs back by
/// about `increase` per second of unthrottled calls, up to `max`. The API's limit is shared by
/// every caller of the account, so no client knows its share; this finds
/// it from the answers.
#[derive(Clone, Debug)]
pub struct AdaptiveRate {
    rate: f64,
    min: f64,
    max: f64,
    increase: f64,
    /// The earliest time the next call may go.
    next: Instant,
}

impl AdaptiveRate {
    /// Starts at `max` calls a second.
    pub fn new(max: f64, now: Instant) -> AdaptiveRate {
        let max = if max > 0.0 { max } else { 1000.0 };
        AdaptiveRate {
            rate: max,
            // A floor of one call every 5 s at the default 10 qps: below
            // it, a node waiting for a one-off call (its limits) would sit
            // idle while the account's budget goes unused.
            min: (max / 50.0).min(1.0),
            max,
            increase: (max / 10.0).max(0.1),
            next: now,
        }
    }

    /// The current rate, calls a second.
    #[cfg(test)]
    pub fn rate(&self) -> f64 {
        self.rate
    }

    /// Books the next call at `now`: how long to wait before sending it.
    pub fn reserve(&mut self, now: Instant) -> Duration {
        let slot = self.next.max(now);
        self.next = slot + Duration::from_secs_f64(1.0 / self.rate);
        slot - now
    }

    /// The call was answered without throttling.
    pub fn on_success(&mut self) {
        // `increase` per second of calls, but never more than `increase`
        // in one step: one call after a long pause proves little.
        self.rate = (self.rate + self.increase * (1.0 / self.rate).min(1.0)).min(self.max);
    }

    /// The call was throttled at `now`: halve the rate, and push the next
    /// call out by one interval of the new rate.
    pub fn on_throttle(&mut self, now: Instant) {
        self.rate = (self.rate / 2.0).max(self.min);
        self.next = self
            .next
            .max(now + Duration::from_secs_f64(1.0 / self.rate));
    }
}

/// When to look at an asynchronous task again after `polls` looks (from
/// 0): after `first`, then half as long again each time, up to `cap`,
/// with up to a fifth more drawn from `random`, so nodes that started
/// together do not look together.
pub fn task_poll_delay(polls: u32, first: Duration, cap: Duration, random: u64) -> Duration {
    let base = first.as_secs_f64() * 1.5f64.powi(polls.min(30) as i32);
    let base = base.min(cap.as_secs_f64());
    let jitter = base / 5.0 * ((random % 1000) as f64 / 1000.0);
    Duration::from_secs_f64(base + jitter)
}

/// A pseudo-random number for jitter (no cryptographic use).
pub fn jitter_seed() -> u64 {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0);
    let mut x = nanos ^ u64::from(std::process::id()).rotate_left(32);
    x ^= x >> 33;
    x = x.wrapping_mul(0xff51_afd7_ed55_8ccd);
    x ^ (x >> 33)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_and_is_capped() {
        let p = RetryPolicy {
            max_attempts: 10,
            base: Duration::from_millis(100),
            cap: Duration::from_secs(1),
        };
        assert_eq!(p.backoff(1, 250), Duration::from_millis(250 % 101));
        assert!(p.backoff(1, 7) <= Duration::from_millis(100));
        assert!(p.backoff(3, u64::MAX - 1) <= Duration::from_millis(400));
        assert!(p.backoff(30, u64::MAX) <= Duration::from_secs(1));
        assert_eq!(p.backoff(5, 0), Duration::ZERO);
    }

    #[test]
    fn the_bucket_allows_a_burst_then_spaces_calls() {
        let t0 = Instant::now();
        let mut r = RateLimiter::new(2.0, t0);
        assert_eq!(r.take(t0), Duration::ZERO);
        assert_eq!(r.take(t0), Duration::ZERO);
        let wait = r.take(t0);
        assert!(
            wait > Duration::from_millis(400) && wait <= Duration::from_millis(500),
            "{wait:?}"
        );
        let mut r = RateLimiter::new(2.0, t0);
        r.take(t0);
        r.take(t0);
        assert_eq!(
            r.take(t0 + Duration::from_secs(1)),
            Duration::ZERO,
            "tokens come back with time"
        );
    }

    #[test]
    fn the_adaptive_rate_halves_on_throttling_and_climbs_back() {
        let t0 = Instant::now();
        let mut r = AdaptiveRate::new(10.0, t0);
        assert_eq!(r.reserve(t0), Duration::ZERO);
        let second = r.reserve(t0);
        assert!(
            second >= Duration::from_millis(99) && second <= Duration::from_millis(101),
            "{second:?}"
        );
        r.on_throttle(t0);
        assert!((r.rate() - 5.0).abs() < 1e-9);
        r.on_throttle(t0);
        r.on_throttle(t0);
        assert!((r.rate() - 1.25).abs() < 1e-9);
        // The next call waits at least one interval of the new rate.
        assert!(r.reserve(t0) >= Duration::from_millis(790));
        for _ in 0..1000 {
            r.on_throttle(t0);
        }
        assert!((r.rate() - 0.2).abs() < 1e-9, "a floor: {}", r.rate());
        // Unthrottled calls bring it back, a little per call, up to the cap.
        let mut calls = 0;
        while r.rate() < 10.0 {
            r.on_success();
            calls += 1;
            assert!(calls < 10_000, "never recovered");
        }
        assert!(calls > 10, "not at once: {calls}");
        r.on_success();
        assert!((r.rate() - 10.0).abs() < 1e-9, "capped at max");
    }

    #[test]
    fn task_polls_back_off_up_to_a_cap() {
        let first = Duration::from_millis(500);
        let cap = Duration::from_secs(5);
        assert_eq!(task_poll_delay(0, first, cap, 0), first);
        assert_eq!(
            task_poll_delay(1, first, cap, 0),
            Duration::from_millis(750)
        );
        assert!(task_poll_delay(2, first, cap, 999) <= Duration::from_secs_f64(1.125 * 1.2));
        assert_eq!(task_poll_delay(40, first, cap, 0), cap);
        assert!(task_poll_delay(40, first, cap, 999) <= Duration::from_secs(6));
    }

    #[test]
    fn no_limit_means_no_wait() {
        let t0 = Instant::now();
        let mut r = RateLimiter::new(0.0, t0);
        for _ in 0..100 {
            assert_eq!(r.take(t0), Duration::ZERO);
        }
    }
}
