//! Percentiles with HdrHistogram, and medians over runs.

use hdrhistogram::Histogram;
use std::time::Duration;

/// Latencies in nanoseconds, 1 ns to 60 s, 3 significant digits.
pub(crate) fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 60_000_000_000, 3).expect("valid bounds")
}

pub(crate) fn record(h: &mut Histogram<u64>, d: Duration) {
    h.saturating_record((d.as_nanos() as u64).max(1));
}

/// The value at `q` (0..1), microseconds.
pub(crate) fn us(h: &Histogram<u64>, q: f64) -> f64 {
    h.value_at_quantile(q) as f64 / 1000.0
}

pub(crate) fn median(mut v: Vec<f64>) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

/// `yes` or `no` for a goal.
pub(crate) fn met(ok: bool) -> &'static str {
    if ok {
        "yes"
    } else {
        "**no**"
    }
}

/// The median of `v`, formatted with `decimals`.
pub(crate) fn med_fmt(v: Vec<f64>, decimals: usize) -> String {
    format!("{:.*}", decimals, median(v))
}
