//! Counters and latency histograms the engine keeps as tasks move.
//!
//! Run time and queue wait go into a [`Histogram`] with log-linear buckets
//! (16 per power of two, under 6.25 % error), so percentiles cost a fixed
//! ~8 KiB per histogram however many samples arrive.

use std::time::Duration;

use serde::{Deserialize, Serialize};

const SUB_BITS: u32 = 4;
const SUB: usize = 1 << SUB_BITS;
const BUCKETS: usize = SUB + (64 - SUB_BITS as usize) * SUB;

/// A log-linear histogram of durations in microseconds.
#[derive(Clone)]
pub struct Histogram {
    counts: Box<[u64; BUCKETS]>,
    count: u64,
    sum: u128,
    min: u64,
    max: u64,
}

impl Default for Histogram {
    fn default() -> Self {
        Histogram {
            counts: Box::new([0; BUCKETS]),
            count: 0,
            sum: 0,
            min: u64::MAX,
            max: 0,
        }
    }
}

impl std::fmt::Debug for Histogram {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.summary().fmt(f)
    }
}

fn bucket_of(v: u64) -> usize {
    if v < SUB as u64 {
        return v as usize;
    }
    let e = 63 - v.leading_zeros();
    let sub = ((v >> (e - SUB_BITS)) as usize) & (SUB - 1);
    SUB + (e - SUB_BITS) as usize * SUB + sub
}

/// The middle of bucket `i`, the value reported for samples in it.
fn bucket_mid(i: usize) -> u64 {
    if i < SUB {
        return i as u64;
    }
    let shift = ((i - SUB) / SUB) as u32;
    let sub = ((i - SUB) % SUB) as u64;
    let low = (SUB as u64 + sub) << shift;
    low + ((1u64 << shift) - 1) / 2
}

impl Histogram {
    /// Records one sample.
    pub fn record(&mut self, d: Duration) {
        let v = crate::duration_micros(d);
        self.counts[bucket_of(v)] += 1;
        self.count += 1;
        self.sum += u128::from(v);
        self.min = self.min.min(v);
        self.max = self.max.max(v);
    }

    /// Number of samples.
    pub fn count(&self) -> u64 {
        self.count
    }

    /// The value below which `q` (0–1) of the samples fall, within the
    /// bucket error; exact at the extremes.
    pub fn quantile(&self, q: f64) -> Duration {
        if self.count == 0 {
            return Duration::ZERO;
        }
        let rank = ((q.clamp(0.0, 1.0) * self.count as f64).ceil() as u64).max(1);
        let mut seen = 0;
        for (i, c) in self.counts.iter().enumerate() {
            seen += c;
            if seen >= rank {
                let v = bucket_mid(i).clamp(self.min, self.max);
                return Duration::from_micros(v);
            }
        }
        Duration::from_micros(self.max)
    }

    /// Count, min, average, max and the usual percentiles.
    pub fn summary(&self) -> HistogramSummary {
        let us = Duration::from_micros;
        HistogramSummary {
            count: self.count,
            min: if self.count == 0 {
                Duration::ZERO
            } else {
                us(self.min)
            },
            avg: if self.count == 0 {
                Duration::ZERO
            } else {
                us(u64::try_from(self.sum / u128::from(self.count)).unwrap_or(u64::MAX))
            },
            max: us(self.max),
            p50: self.quantile(0.50),
            p95: self.quantile(0.95),
            p99: self.quantile(0.99),
        }
    }
}

/// A histogram reduced to the figures people read.
#[derive(Debug, Clone, Copy, PartialEq, Default, Serialize, Deserialize)]
pub struct HistogramSummary {
    /// Samples.
    pub count: u64,
    /// Smallest sample.
    pub min: Duration,
    /// Mean.
    pub avg: Duration,
    /// Largest sample.
    pub max: Duration,
    /// Median.
    pub p50: Duration,
    /// 95th percentile.
    pub p95: Duration,
    /// 99th percentile.
    pub p99: Duration,
}

/// Task counters and latency histograms since the engine started.
#[derive(Debug, Clone, Default)]
pub struct Metrics {
    pub(crate) submitted: u64,
    pub(crate) succeeded: u64,
    pub(crate) failed: u64,
    pub(crate) timed_out: u64,
    pub(crate) cancelled: u64,
    pub(crate) expired: u64,
    pub(crate) retried: u64,
    pub(crate) run_time: Histogram,
    pub(crate) queue_wait: Histogram,
}

impl Metrics {
    pub(crate) fn record_terminal(&mut self, s: crate::State) {
        use crate::State as S;
        match s {
            S::Succeeded => self.succeeded += 1,
            S::Failed => self.failed += 1,
            S::TimedOut => self.timed_out += 1,
            S::Cancelled => self.cancelled += 1,
            S::Expired => self.expired += 1,
            _ => {}
        }
    }

    /// A copy of the counters with the histograms summarised.
    pub fn snapshot(&self) -> MetricsSnapshot {
        let done = self.succeeded + self.failed + self.timed_out;
        let rate = |n: u64| {
            if done == 0 {
                0.0
            } else {
                n as f64 / done as f64
            }
        };
        MetricsSnapshot {
            submitted: self.submitted,
            succeeded: self.succeeded,
            failed: self.failed,
            timed_out: self.timed_out,
            cancelled: self.cancelled,
            expired: self.expired,
            retried: self.retried,
            success_rate: rate(self.succeeded),
            failure_rate: rate(self.failed + self.timed_out),
            run_time: self.run_time.summary(),
            queue_wait: self.queue_wait.summary(),
        }
    }
}

/// Task counters, rates and latency summaries at one moment.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct MetricsSnapshot {
    /// Tasks accepted.
    pub submitted: u64,
    /// Tasks that ended `succeeded`.
    pub succeeded: u64,
    /// Tasks that ended `failed`.
    pub failed: u64,
    /// Tasks that ended `timed_out`.
    pub timed_out: u64,
    /// Tasks that ended `cancelled`.
    pub cancelled: u64,
    /// Tasks that ended `expired`.
    pub expired: u64,
    /// Attempts that failed and were retried.
    pub retried: u64,
    /// succeeded / (succeeded + failed + timed out); 0 before any finished.
    pub success_rate: f64,
    /// (failed + timed out) / (succeeded + failed + timed out).
    pub failure_rate: f64,
    /// Time from an attempt's start to its end.
    pub run_time: HistogramSummary,
    /// Time from entering `queued` to being assigned.
    pub queue_wait: HistogramSummary,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_are_monotonic_and_tight() {
        let mut last = 0;
        for v in (0..100_000u64).chain([u64::MAX / 3, u64::MAX]) {
            let b = bucket_of(v);
            assert!(b >= last && b < BUCKETS);
            last = b;
            let mid = bucket_mid(b);
            let err = mid.abs_diff(v) as f64 / v.max(1) as f64;
            assert!(err <= 1.0 / SUB as f64, "v={v} mid={mid}");
        }
    }

    #[test]
    fn quantiles_of_a_uniform_sample() {
        let mut h = Histogram::default();
        for ms in 1..=1000u64 {
            h.record(Duration::from_millis(ms));
        }
        let s = h.summary();
        assert_eq!(s.count, 1000);
        assert_eq!(s.min, Duration::from_millis(1));
        assert_eq!(s.max, Duration::from_millis(1000));
        assert_eq!(s.avg, Duration::from_micros(500_500));
        let near = |d: Duration, ms: f64| (d.as_secs_f64() * 1000.0 - ms).abs() / ms < 0.07;
        assert!(near(s.p50, 500.0), "{:?}", s.p50);
        assert!(near(s.p99, 990.0), "{:?}", s.p99);
    }
}
