//! Latency percentiles of a benchmark's samples, exact (nearest rank over
//! every sample, no histogram buckets), and how to show them.

use serde::Serialize;

/// p50, p90, p99 and max of a set of durations, in microseconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub(super) struct Percentiles {
    /// Samples.
    pub(super) count: usize,
    /// Median.
    pub(super) p50_us: u64,
    /// 90th percentile.
    pub(super) p90_us: u64,
    /// 99th percentile.
    pub(super) p99_us: u64,
    /// Largest sample.
    pub(super) max_us: u64,
}

impl Percentiles {
    /// The percentiles of `samples` (microseconds; sorted in place), or
    /// `None` when there are none.
    pub(super) fn of(samples: &mut [u64]) -> Option<Percentiles> {
        samples.sort_unstable();
        let max_us = *samples.last()?;
        Some(Percentiles {
            count: samples.len(),
            p50_us: nearest_rank(samples, 500),
            p90_us: nearest_rank(samples, 900),
            p99_us: nearest_rank(samples, 990),
            max_us,
        })
    }

    /// `p50 0.84 ms · p90 … · p99 … · max …`, for the table.
    pub(super) fn describe(&self) -> String {
        format!(
            "p50 {} · p90 {} · p99 {} · max {}",
            micros(self.p50_us),
            micros(self.p90_us),
            micros(self.p99_us),
            micros(self.max_us)
        )
    }
}

/// The smallest sample with at least `per_mille`‰ of the samples at or
/// below it. `sorted` must be sorted and not empty.
fn nearest_rank(sorted: &[u64], per_mille: usize) -> u64 {
    let rank = (per_mille * sorted.len()).div_ceil(1000).max(1);
    sorted[rank.min(sorted.len()) - 1]
}

/// A duration in microseconds as people read it: `850 µs`, `12.3 ms`, `4.20 s`.
pub(super) fn micros(us: u64) -> String {
    match us {
        0..1_000 => format!("{us} µs"),
        1_000..1_000_000 => format!("{:.2} ms", us as f64 / 1e3),
        _ => format!("{:.2} s", us as f64 / 1e6),
    }
}

/// A large count with thousands separators: `123,456`.
pub(super) fn thousands(n: f64) -> String {
    let digits = format!("{:.0}", n.max(0.0));
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// Bytes as people read them: `512 B`, `12.5 MiB`.
pub(super) fn bytes(n: u64) -> String {
    /// Bytes in a KiB.
    const KIB: f64 = 1024.0;
    let f = n as f64;
    if f < KIB {
        format!("{n} B")
    } else if f < KIB * KIB {
        format!("{:.1} KiB", f / KIB)
    } else if f < KIB * KIB * KIB {
        format!("{:.1} MiB", f / (KIB * KIB))
    } else {
        format!("{:.2} GiB", f / (KIB * KIB * KIB))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_use_the_nearest_rank() {
        let mut samples: Vec<u64> = (1..=1000).rev().collect();
        let p = Percentiles::of(&mut samples).expect("samples");
        assert_eq!(
            p,
            Percentiles {
                count: 1000,
                p50_us: 500,
                p90_us: 900,
                p99_us: 990,
                max_us: 1000
            }
        );
        // Ten samples: p99 is the largest, p50 the fifth.
        let mut ten: Vec<u64> = vec![7, 1, 9, 3, 5, 2, 8, 4, 10, 6];
        let p = Percentiles::of(&mut ten).expect("samples");
        assert_eq!((p.p50_us, p.p90_us, p.p99_us, p.max_us), (5, 9, 10, 10));
    }

    #[test]
    fn one_sample_is_every_percentile_and_none_is_none() {
        let p = Percentiles::of(&mut [42]).expect("a sample");
        assert_eq!((p.p50_us, p.p99_us, p.max_us, p.count), (42, 42, 42, 1));
        assert_eq!(Percentiles::of(&mut []), None);
    }

    #[test]
    fn numbers_are_shown_for_people() {
        assert_eq!(micros(850), "850 µs");
        assert_eq!(micros(12_345), "12.35 ms");
        assert_eq!(micros(4_200_000), "4.20 s");
        assert_eq!(thousands(1234567.4), "1,234,567");
        assert_eq!(thousands(999.0), "999");
        assert_eq!(bytes(512), "512 B");
        assert_eq!(bytes(3 * 1024 * 1024 / 2), "1.5 MiB");
    }
}
