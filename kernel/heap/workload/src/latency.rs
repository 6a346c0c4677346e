//! Summaries of single-call latencies, integer-only (the kernel target has no hardware floating
//! point): nearest-rank percentiles, and the tail as exceedance points for a plot on log axes.

use alloc::vec::Vec;

/// Percentiles of a set of single-call latencies, in counter ticks.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Percentiles {
    /// Number of samples.
    pub calls: usize,
    /// Median.
    pub p50: u64,
    /// 90th percentile.
    pub p90: u64,
    /// 99th percentile.
    pub p99: u64,
    /// 99.9th percentile.
    pub p999: u64,
    /// Largest sample.
    pub max: u64,
}

/// Nearest-rank percentile of sorted samples: the smallest sample with at least `permille`‰ of all
/// samples at or below it (0 for no samples).
pub fn percentile(sorted: &[u64], permille: usize) -> u64 {
    let n = sorted.len();
    if n == 0 {
        return 0;
    }
    let rank = (n * permille).div_ceil(1000).clamp(1, n);
    sorted[rank - 1]
}

impl Percentiles {
    /// Summarises ascending samples.
    pub fn of_sorted(sorted: &[u64]) -> Self {
        Self {
            calls: sorted.len(),
            p50: percentile(sorted, 500),
            p90: percentile(sorted, 900),
            p99: percentile(sorted, 990),
            p999: percentile(sorted, 999),
            max: sorted.last().copied().unwrap_or(0),
        }
    }

    /// Summarises samples (sorted in place).
    pub fn of(samples: &mut [u64]) -> Self {
        samples.sort_unstable();
        Self::of_sorted(samples)
    }

    /// Every figure less `overhead` (the cost of an empty timing bracket), saturating at 0.
    pub fn net_of(self, overhead: u64) -> Self {
        let net = |v: u64| v.saturating_sub(overhead);
        Self {
            calls: self.calls,
            p50: net(self.p50),
            p90: net(self.p90),
            p99: net(self.p99),
            p999: net(self.p999),
            max: net(self.max),
        }
    }
}

/// One point of a tail plot: `calls` of the `of` samples took `ticks` or more.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TailPoint {
    /// A latency.
    pub ticks: u64,
    /// How many samples took at least that long (at least; ties may add more).
    pub calls: u64,
    /// All samples.
    pub of: u64,
}

/// The tail of ascending samples from p90 to the maximum, as exceedance points: for a geometric
/// sequence of counts `c` from a tenth of the samples down to 1 (each 7/8 of the one before), the
/// `c`-th slowest sample. Plotted as "fraction of calls taking x or more" against x, both on log
/// axes, the worst case is the last point. `overhead` is subtracted from every latency.
pub fn tail(sorted: &[u64], overhead: u64) -> Vec<TailPoint> {
    let n = sorted.len() as u64;
    let mut out = Vec::new();
    let mut c = n / 10;
    while c >= 1 {
        out.push(TailPoint {
            ticks: sorted[(n - c) as usize].saturating_sub(overhead),
            calls: c,
            of: n,
        });
        c = c * 7 / 8; // strictly smaller: 8 → 7, …, 1 → 0
    }
    out
}
