//! [`Histogram`]: durations in log-linear buckets, so percentiles cost a
//! bounded amount of memory however many samples arrive.
//!
//! Buckets are 16 per power of two (under 6.25 % error). The bucket array
//! grows only as far as the largest sample seen — a histogram of
//! sub-second samples holds ~300 counters, one of hour-long ones ~470, at
//! most 976 — so the many small per-queue, per-kind and per-worker
//! histograms stay cheap. Next to them each histogram counts samples
//! exactly against the fixed Prometheus boundaries of [`LE_MICROS`].

use std::time::Duration;

use serde::{Deserialize, Serialize};

const SUB_BITS: u32 = 4;
const SUB: usize = 1 << SUB_BITS;
/// Buckets covering every `u64`: the most a histogram grows to.
const BUCKETS: usize = SUB + (64 - SUB_BITS as usize) * SUB;

/// Upper bounds, in microseconds, of the cumulative buckets reported as a
/// Prometheus histogram's `le` (100 µs to 1 h; `+Inf` is the total count).
pub const LE_MICROS: [u64; 15] = [
    100,
    1_000,
    5_000,
    10_000,
    50_000,
    100_000,
    500_000,
    1_000_000,
    5_000_000,
    10_000_000,
    30_000_000,
    60_000_000,
    300_000_000,
    900_000_000,
    3_600_000_000,
];

/// A log-linear histogram of durations in microseconds.
#[derive(Clone, Serialize, Deserialize)]
pub struct Histogram {
    /// Per log-linear bucket; grown to the largest bucket seen.
    counts: Vec<u64>,
    /// Samples per `LE_MICROS` interval: `le[i]` counts samples in
    /// `(LE_MICROS[i-1], LE_MICROS[i]]`.
    le: [u64; LE_MICROS.len()],
    count: u64,
    sum: u128,
    min: u64,
    max: u64,
}

impl Default for Histogram {
    fn default() -> Self {
        Histogram {
            counts: Vec::new(),
            le: [0; LE_MICROS.len()],
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
        let b = bucket_of(v);
        if b >= self.counts.len() {
            self.counts.resize(b + 1, 0);
        }
        self.counts[b] += 1;
        let i = LE_MICROS.partition_point(|&bound| bound < v);
        if let Some(n) = self.le.get_mut(i) {
            *n += 1;
        }
        self.count += 1;
        self.sum += u128::from(v);
        self.min = self.min.min(v);
        self.max = self.max.max(v);
    }

    /// Adds every sample of `other` to this histogram.
    pub fn merge(&mut self, other: &Histogram) {
        if other.counts.len() > self.counts.len() {
            self.counts.resize(other.counts.len(), 0);
        }
        for (a, b) in self.counts.iter_mut().zip(&other.counts) {
            *a += b;
        }
        for (a, b) in self.le.iter_mut().zip(&other.le) {
            *a += b;
        }
        self.count += other.count;
        self.sum += other.sum;
        self.min = self.min.min(other.min);
        self.max = self.max.max(other.max);
    }

    /// Whether this histogram could have been built by [`Histogram::record`]
    /// (one read back from a store is checked before it is used).
    pub fn is_sane(&self) -> bool {
        self.counts.len() <= BUCKETS
            && self.counts.iter().sum::<u64>() == self.count
            && (self.count == 0 || self.min <= self.max)
    }

    /// Number of samples.
    pub fn count(&self) -> u64 {
        self.count
    }

    /// Sum of every sample.
    pub fn sum(&self) -> Duration {
        Duration::from_micros(u64::try_from(self.sum).unwrap_or(u64::MAX))
    }

    /// Cumulative counts at each bound of [`LE_MICROS`]: samples at or
    /// below it. Exact, not estimated from the log-linear buckets.
    pub fn buckets(&self) -> Vec<Bucket> {
        let mut seen = 0;
        LE_MICROS
            .iter()
            .zip(&self.le)
            .map(|(&bound, &n)| {
                seen += n;
                Bucket {
                    le: bound as f64 / 1e6,
                    count: seen,
                }
            })
            .collect()
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

    /// Count, sum, min, average, max, the usual percentiles and the
    /// cumulative buckets.
    pub fn summary(&self) -> HistogramSummary {
        let us = Duration::from_micros;
        let (min, avg) = if self.count == 0 {
            (Duration::ZERO, Duration::ZERO)
        } else {
            let avg = self.sum / u128::from(self.count);
            (us(self.min), us(u64::try_from(avg).unwrap_or(u64::MAX)))
        };
        HistogramSummary {
            count: self.count,
            sum: self.sum(),
            min,
            avg,
            max: us(self.max),
            p50: self.quantile(0.50),
            p95: self.quantile(0.95),
            p99: self.quantile(0.99),
            buckets: self.buckets(),
        }
    }
}

/// One cumulative bucket of a histogram: samples at or below `le`.
#[derive(Debug, Clone, Copy, PartialEq, Default, Serialize, Deserialize)]
pub struct Bucket {
    /// Upper bound in seconds.
    pub le: f64,
    /// Samples at or below it.
    pub count: u64,
}

/// A histogram reduced to the figures people read, plus the cumulative
/// buckets a Prometheus histogram reports. Durations are seconds (a
/// number) in JSON, as the buckets' bounds are.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct HistogramSummary {
    /// Samples.
    pub count: u64,
    /// Sum of the samples.
    #[serde(default, with = "secs")]
    pub sum: Duration,
    /// Smallest sample.
    #[serde(with = "secs")]
    pub min: Duration,
    /// Mean.
    #[serde(with = "secs")]
    pub avg: Duration,
    /// Largest sample.
    #[serde(with = "secs")]
    pub max: Duration,
    /// Median.
    #[serde(with = "secs")]
    pub p50: Duration,
    /// 95th percentile.
    #[serde(with = "secs")]
    pub p95: Duration,
    /// 99th percentile.
    #[serde(with = "secs")]
    pub p99: Duration,
    /// Cumulative counts at the bounds of [`LE_MICROS`], lowest first
    /// (the `+Inf` bucket is `count`).
    #[serde(default)]
    pub buckets: Vec<Bucket>,
}

/// Serde for a [`Duration`] as seconds, a number (microsecond precision).
mod secs {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serializer};

    pub(super) fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_f64(crate::duration_micros(*d) as f64 / 1e6)
    }
    pub(super) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        let v = f64::deserialize(d)?;
        if !v.is_finite() || v < 0.0 {
            return Err(serde::de::Error::custom(format!(
                "{v} is not a duration in seconds"
            )));
        }
        Ok(Duration::from_micros((v * 1e6).round() as u64))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_summary_shows_durations_as_seconds_in_json() {
        let h = HistogramSummary {
            count: 1,
            p50: Duration::from_micros(1_500),
            ..HistogramSummary::default()
        };
        let json = serde_json::to_value(&h).unwrap();
        assert_eq!(json["p50"], serde_json::json!(0.0015));
        assert_eq!(json["min"], serde_json::json!(0.0));
        let back: HistogramSummary = serde_json::from_value(json).unwrap();
        assert_eq!(back, h);
    }

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
        assert_eq!(s.sum, Duration::from_micros(500_500_000));
        let near = |d: Duration, ms: f64| (d.as_secs_f64() * 1000.0 - ms).abs() / ms < 0.07;
        assert!(near(s.p50, 500.0), "{:?}", s.p50);
        assert!(near(s.p99, 990.0), "{:?}", s.p99);
    }

    #[test]
    fn the_bucket_array_grows_only_to_the_largest_sample() {
        let mut h = Histogram::default();
        assert!(h.counts.is_empty());
        h.record(Duration::from_millis(5));
        let small = h.counts.len();
        assert!(small < 300, "{small}");
        h.record(Duration::from_secs(3600));
        assert!(h.counts.len() > small && h.counts.len() < 500);
        h.record(Duration::MAX);
        assert!(h.counts.len() <= BUCKETS);
    }

    #[test]
    fn prometheus_buckets_are_exact_at_their_bounds() {
        let mut h = Histogram::default();
        // On a bound counts as at or below it; one microsecond over does not.
        for us in [100, 101, 1_000, 1_001, 999_999, 1_000_000, 3_600_000_001] {
            h.record(Duration::from_micros(us));
        }
        let b = h.buckets();
        assert_eq!(b.len(), LE_MICROS.len());
        assert_eq!((b[0].le, b[0].count), (0.0001, 1));
        assert_eq!((b[1].le, b[1].count), (0.001, 3));
        assert_eq!((b[2].le, b[2].count), (0.005, 4));
        assert_eq!((b[7].le, b[7].count), (1.0, 6));
        assert_eq!(b[14].count, 6, "the sample past 1 h is only in +Inf");
        assert_eq!(h.count(), 7);
        assert!(b.windows(2).all(|w| w[0].count <= w[1].count));
    }

    #[test]
    fn merging_adds_samples() {
        let (mut a, mut b) = (Histogram::default(), Histogram::default());
        a.record(Duration::from_millis(2));
        b.record(Duration::from_secs(20));
        b.record(Duration::from_micros(50));
        a.merge(&b);
        let s = a.summary();
        assert_eq!(s.count, 3);
        assert_eq!(s.min, Duration::from_micros(50));
        assert_eq!(s.max, Duration::from_secs(20));
        assert_eq!(s.sum, Duration::from_micros(20_002_050));
        assert_eq!(s.buckets[0].count, 1);
        assert_eq!(s.buckets[LE_MICROS.len() - 1].count, 3);
        // Merging an empty histogram changes nothing.
        let before = a.summary();
        a.merge(&Histogram::default());
        assert_eq!(a.summary(), before);
    }
}
