//! The agent's wall clock, injectable so tests control time.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use crate::ipam::UnixMillis;

/// The wall clock in Unix milliseconds.
pub type Clock = Arc<dyn Fn() -> UnixMillis + Send + Sync>;

/// The system clock.
pub fn system_clock() -> Clock {
    Arc::new(now_ms)
}

/// The system clock moved forward by the number of milliseconds written in
/// `file` (read at every call; a missing or unreadable file counts as 0).
/// Test-only (`--test-clock-offset-file`): integration tests use it to make
/// claims expire without waiting the 5-minute minimum.
pub fn offset_clock(file: PathBuf) -> Clock {
    Arc::new(move || {
        let offset = std::fs::read_to_string(&file)
            .ok()
            .and_then(|s| s.trim().parse::<u64>().ok())
            .unwrap_or(0);
        now_ms().saturating_add(offset)
    })
}

fn now_ms() -> UnixMillis {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_offset_clock_runs_ahead_by_the_file() {
        let dir = tempfile::tempdir().expect("tempdir");
        let file = dir.path().join("offset");
        let clock = offset_clock(file.clone());
        let before = clock();
        std::fs::write(&file, "600000\n").expect("write");
        assert!(clock() >= before + 600_000);
    }
}
