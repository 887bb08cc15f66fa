//! Giving freed memory back to the system. glibc's malloc keeps what the
//! agent freed inside its heap for reuse and returns only the top of it;
//! after a burst of ADDs (or the restart of a full node, which reads every
//! link and route) several MiB of the heap stay resident though free: on a
//! node with 250 pods the agent's own memory was 7.2 MiB, 3.2 MiB once
//! given back (`bench/full-node`). The maintenance loop gives it back
//! after each round, at most once a second (a round skipped for that
//! comes again when the second is over); a round follows every ADD, so a
//! busy agent pays for this about once a second, an idle one never.

use std::sync::Mutex;
use std::time::{Duration, Instant};

/// The least time between two give-backs.
const AT_MOST_EVERY: Duration = Duration::from_secs(1);

static LAST: Mutex<Option<Instant>> = Mutex::new(None);

/// Returns the free pages of the heap to the system, unless that was done
/// less than a second ago: then it says how soon to call again, so the
/// last burst's garbage does not wait for the next tick.
pub fn give_back() -> Option<Duration> {
    {
        let mut last = LAST.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(at) = *last
            && at.elapsed() < AT_MOST_EVERY
        {
            return Some(AT_MOST_EVERY - at.elapsed());
        }
        *last = Some(Instant::now());
    }
    trim();
    None
}

#[cfg(target_env = "gnu")]
fn trim() {
    let started = Instant::now();
    // SAFETY: malloc_trim only walks malloc's own free lists and advises
    // the kernel about pages no allocation uses.
    let released = unsafe { libc::malloc_trim(0) };
    tracing::debug!(
        released = released != 0,
        took_us = started.elapsed().as_micros() as u64,
        "freed memory given back"
    );
}

#[cfg(not(target_env = "gnu"))]
fn trim() {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_give_back_within_a_second_waits_for_the_rest_of_it() {
        let _ = give_back();
        let first = LAST.lock().expect("lock").expect("set");
        let again = give_back().expect("too soon: a time to come back");
        assert!(again <= AT_MOST_EVERY);
        assert_eq!(LAST.lock().expect("lock").expect("set"), first);
    }
}
