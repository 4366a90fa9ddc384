//! The shell's clock: wall time for the engine's [`Timestamp`]s, anchored to
//! tokio's monotonic [`Instant`] so that tests can pause and advance time
//! (`tokio::time::pause`/`advance`) and the engine sees the same jumps.

use std::time::{SystemTime, UNIX_EPOCH};

use taskgrid_core::{Timestamp, duration_micros};
use tokio::time::Instant;

/// Wall-clock timestamps derived from tokio's monotonic clock.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Clock {
    wall0: Timestamp,
    mono0: Instant,
}

impl Clock {
    /// A clock reading the system time once and tokio's clock afterwards.
    pub(crate) fn system() -> Self {
        let since_epoch = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default();
        Clock {
            wall0: Timestamp::from_micros(duration_micros(since_epoch)),
            mono0: Instant::now(),
        }
    }

    /// Now, as the engine counts time.
    pub(crate) fn now(&self) -> Timestamp {
        self.wall0.plus(self.mono0.elapsed())
    }

    /// The tokio instant at which the engine's `t` arrives.
    pub(crate) fn instant_at(&self, t: Timestamp) -> Instant {
        self.mono0 + t.since(self.wall0)
    }
}
