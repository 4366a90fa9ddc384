//! [`Window`]: events per second over the last 1, 5 and 15 minutes, from
//! a ring of per-second counters fed with the caller's `now`.
//!
//! The ring holds the last 900 seconds (3.6 KiB, allocated on the first
//! event). Recording moves the head forward, zeroing the seconds skipped;
//! reading sums the seconds of the window that the ring still holds. A
//! rate is divided by the window, or by the time since the first event
//! when that is shorter, so a rate right after start-up is not diluted.

use serde::{Deserialize, Serialize};

use crate::Timestamp;

/// Seconds the ring holds: the longest window.
const RING_SECS: u64 = 900;

/// Per-second event counts over the last [`RING_SECS`] seconds.
#[derive(Debug, Clone, Default)]
pub(crate) struct Window {
    /// `counts[s % RING_SECS]` for second `s` in `(head - RING_SECS, head]`.
    counts: Vec<u32>,
    /// The latest second recorded.
    head: u64,
    /// The first second recorded.
    first: Option<u64>,
}

fn second_of(t: Timestamp) -> u64 {
    t.as_micros() / 1_000_000
}

impl Window {
    /// Counts one event at `now`. Events older than the ring are dropped.
    pub(crate) fn record(&mut self, now: Timestamp) {
        let sec = second_of(now);
        if self.counts.is_empty() {
            self.counts = vec![0; RING_SECS as usize];
            self.head = sec;
        }
        if sec > self.head {
            if sec - self.head >= RING_SECS {
                self.counts.fill(0);
            } else {
                for s in self.head + 1..=sec {
                    self.counts[(s % RING_SECS) as usize] = 0;
                }
            }
            self.head = sec;
        } else if self.head - sec >= RING_SECS {
            return;
        }
        self.first = Some(self.first.map_or(sec, |f| f.min(sec)));
        let slot = &mut self.counts[(sec % RING_SECS) as usize];
        *slot = slot.saturating_add(1);
    }

    /// Events per second over the `secs` seconds up to `now` (at most
    /// [`RING_SECS`]), counting the current, partial second.
    pub(crate) fn rate(&self, now: Timestamp, secs: u64) -> f64 {
        let secs = secs.clamp(1, RING_SECS);
        let Some(first) = self.first else {
            return 0.0;
        };
        let now = second_of(now);
        let start = now.saturating_sub(secs - 1);
        // Seconds the ring still holds: (head - RING_SECS, head].
        let oldest = (self.head + 1).saturating_sub(RING_SECS);
        let events: u64 = (start.max(oldest)..=now.min(self.head))
            .map(|s| u64::from(self.counts[(s % RING_SECS) as usize]))
            .sum();
        let span = secs.min(now.saturating_sub(first) + 1);
        events as f64 / span as f64
    }

    /// Rates over the last 1, 5 and 15 minutes.
    pub(crate) fn throughput(&self, now: Timestamp) -> Throughput {
        Throughput {
            last_1m: self.rate(now, 60),
            last_5m: self.rate(now, 300),
            last_15m: self.rate(now, RING_SECS),
        }
    }
}

/// Tasks finished (in any terminal state) per second over recent windows.
#[derive(Debug, Clone, Copy, PartialEq, Default, Serialize, Deserialize)]
pub struct Throughput {
    /// Over the last minute.
    pub last_1m: f64,
    /// Over the last 5 minutes.
    pub last_5m: f64,
    /// Over the last 15 minutes.
    pub last_15m: f64,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(secs: u64) -> Timestamp {
        Timestamp::from_micros(secs * 1_000_000 + 250_000)
    }

    #[test]
    fn an_empty_window_has_no_rate() {
        let w = Window::default();
        assert_eq!(w.throughput(at(1000)), Throughput::default());
    }

    #[test]
    fn rates_cover_their_window_and_forget_older_events() {
        let mut w = Window::default();
        // 2 events a second for 15 minutes: seconds 1000..1900.
        for s in 1000..1900 {
            w.record(at(s));
            w.record(at(s));
        }
        let t = w.throughput(at(1899));
        assert_eq!((t.last_1m, t.last_5m, t.last_15m), (2.0, 2.0, 2.0));
        // A quiet minute: the 1-minute rate drops to 0, the others dilute.
        let t = w.throughput(at(1959));
        assert_eq!(t.last_1m, 0.0);
        assert_eq!(t.last_5m, 2.0 * 240.0 / 300.0);
        assert_eq!(t.last_15m, 2.0 * 840.0 / 900.0);
        // After 15 quiet minutes nothing is left.
        assert_eq!(w.throughput(at(1899 + 900)), Throughput::default());
        // One event later: the ring was cleared, not read stale.
        w.record(at(5000));
        let t = w.throughput(at(5000));
        assert_eq!(t.last_1m, 1.0 / 60.0);
    }

    #[test]
    fn a_young_window_divides_by_its_age() {
        let mut w = Window::default();
        for _ in 0..30 {
            w.record(at(100));
        }
        for _ in 0..30 {
            w.record(at(109));
        }
        // 60 events over the 10 seconds since the first.
        let t = w.throughput(at(109));
        assert_eq!((t.last_1m, t.last_5m, t.last_15m), (6.0, 6.0, 6.0));
    }

    #[test]
    fn late_events_count_in_their_second_or_are_dropped() {
        let mut w = Window::default();
        w.record(at(2000));
        w.record(at(1990)); // late but inside the ring
        w.record(at(1000)); // older than the ring: dropped
        // 2 events over the 11 seconds since the first kept one.
        assert_eq!(w.rate(at(2000), 60), 2.0 / 11.0);
        // Skipping ahead less than a ring zeroes the skipped seconds only.
        w.record(at(2100));
        assert_eq!(w.rate(at(2100), 300), 3.0 / 111.0);
        assert_eq!(w.rate(at(2100), 60), 1.0 / 60.0);
    }
}
