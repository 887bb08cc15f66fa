//! When to try a cloud call again, and when to send the next one: capped
//! exponential backoff with full jitter, and a token bucket for the
//! client-side rate limit. Pure functions of their inputs.

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
    fn no_limit_means_no_wait() {
        let t0 = Instant::now();
        let mut r = RateLimiter::new(0.0, t0);
        for _ in 0..100 {
            assert_eq!(r.take(t0), Duration::ZERO);
        }
    }
}
