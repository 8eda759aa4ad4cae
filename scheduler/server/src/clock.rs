//! Where the core reads the time. Production reads the system's clocks; a test or a replay
//! sets the time itself, so the same commands at the same times make the same decisions.

use std::sync::Mutex;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// Wall-clock time for what is stored and shown, monotonic time for timeouts and budgets.
pub trait Clock: Send + Sync + std::fmt::Debug {
    /// Milliseconds since the Unix epoch.
    fn now_ms(&self) -> i64;
    /// A monotonic instant.
    fn instant(&self) -> Instant;
}

/// The system's clocks.
#[derive(Debug, Default, Clone, Copy)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now_ms(&self) -> i64 {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
    }

    fn instant(&self) -> Instant {
        Instant::now()
    }
}

/// A clock that moves only when told: both readings advance together.
#[derive(Debug)]
pub struct ManualClock {
    start: Instant,
    start_ms: i64,
    elapsed: Mutex<Duration>,
}

impl ManualClock {
    /// A clock reading `start_ms` (ms since the epoch) until advanced.
    pub fn new(start_ms: i64) -> ManualClock {
        ManualClock {
            start: Instant::now(),
            start_ms,
            elapsed: Mutex::new(Duration::ZERO),
        }
    }

    pub fn advance(&self, by: Duration) {
        let mut elapsed = self
            .elapsed
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        *elapsed += by;
    }

    fn elapsed(&self) -> Duration {
        *self
            .elapsed
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

impl Clock for ManualClock {
    fn now_ms(&self) -> i64 {
        let ms = i64::try_from(self.elapsed().as_millis()).unwrap_or(i64::MAX);
        self.start_ms.saturating_add(ms)
    }

    fn instant(&self) -> Instant {
        self.start + self.elapsed()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_manual_clock_moves_only_when_told() {
        let clock = ManualClock::new(1_000);
        let (ms, at) = (clock.now_ms(), clock.instant());
        assert_eq!((clock.now_ms(), clock.instant()), (ms, at));
        clock.advance(Duration::from_millis(1_500));
        assert_eq!(clock.now_ms(), 2_500);
        assert_eq!(clock.instant() - at, Duration::from_millis(1_500));
    }
}
