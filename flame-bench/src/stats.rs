//! Latency samples and what the report prints of them.

use std::time::Duration;

/// The result of one measured run: counts, elapsed time and latency percentiles.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Summary {
    /// Requests answered correctly inside the measured window.
    pub ok: u64,
    /// Requests that failed (wrong status, wrong body, I/O error) inside the window.
    pub errors: u64,
    /// Correct replies over the whole run, warm-up included (to divide server CPU time by).
    pub answered: u64,
    /// The measured window (warm-up excluded).
    pub elapsed: Duration,
    /// Median latency.
    pub p50: Duration,
    /// 99th-percentile latency.
    pub p99: Duration,
    /// The first error seen, to explain a non-zero `errors`.
    pub first_error: Option<String>,
    /// Replies with status 503 over the whole run (each also counted in `errors` when measured).
    pub overloaded: u64,
}

impl Summary {
    /// Summarises latency samples (nanoseconds, any order) of `ok` requests over `elapsed`.
    ///
    /// ```
    /// use flame_bench::stats::Summary;
    /// use std::time::Duration;
    /// let mut samples: Vec<u64> = (1..=100).map(|i| i * 1_000).collect();
    /// let s = Summary::from_samples(&mut samples, 0, Duration::from_secs(1), None);
    /// assert_eq!(s.ok, 100);
    /// assert_eq!(s.p50, Duration::from_micros(50));
    /// assert_eq!(s.p99, Duration::from_micros(99));
    /// assert_eq!(s.rps(), 100.0);
    /// ```
    pub fn from_samples(
        samples: &mut [u64],
        errors: u64,
        elapsed: Duration,
        first_error: Option<String>,
    ) -> Summary {
        samples.sort_unstable();
        Summary {
            ok: samples.len() as u64,
            answered: samples.len() as u64,
            errors,
            elapsed,
            p50: Duration::from_nanos(percentile(samples, 50.0)),
            p99: Duration::from_nanos(percentile(samples, 99.0)),
            first_error,
            overloaded: 0,
        }
    }

    /// Correct requests per second over the measured window.
    pub fn rps(&self) -> f64 {
        let secs = self.elapsed.as_secs_f64();
        if secs > 0.0 {
            self.ok as f64 / secs
        } else {
            0.0
        }
    }
}

/// The `p`-th percentile (nearest rank) of sorted samples; 0 when there are none.
///
/// ```
/// assert_eq!(flame_bench::stats::percentile(&[1, 2, 3, 4], 50.0), 2);
/// assert_eq!(flame_bench::stats::percentile(&[1, 2, 3, 4], 99.0), 4);
/// assert_eq!(flame_bench::stats::percentile(&[], 99.0), 0);
/// ```
pub fn percentile(sorted: &[u64], p: f64) -> u64 {
    if sorted.is_empty() {
        return 0;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

/// A duration as the table prints it: `812 µs`, `1.25 ms`, `3.4 s`.
///
/// ```
/// use std::time::Duration;
/// assert_eq!(flame_bench::stats::human(Duration::from_micros(812)), "812 µs");
/// assert_eq!(flame_bench::stats::human(Duration::from_micros(1250)), "1.25 ms");
/// ```
pub fn human(d: Duration) -> String {
    let us = d.as_secs_f64() * 1e6;
    if us < 1.0 {
        format!("{} ns", d.as_nanos())
    } else if us < 1_000.0 {
        format!("{us:.0} µs")
    } else if us < 1_000_000.0 {
        format!("{:.2} ms", us / 1_000.0)
    } else {
        format!("{:.1} s", us / 1_000_000.0)
    }
}
