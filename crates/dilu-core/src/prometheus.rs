//! Writing the Prometheus text exposition format (version 0.0.4): metric families with `# HELP` and
//! `# TYPE` once each, escaped label values, and numbers as Prometheus reads them. Pure string building, so
//! every component (agent, worker, control plane, gateway) renders `/metrics` the same way.

use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::Duration;

/// A metric family being written: `# HELP`, `# TYPE`, then its samples.
pub struct Family<'a> {
    out: &'a mut String,
    name: &'a str,
}

impl<'a> Family<'a> {
    /// Starts family `name` of `kind` (`counter`, `gauge`, `histogram`, …) with its help text.
    pub fn new(out: &'a mut String, name: &'a str, kind: &str, help: &str) -> Self {
        let _ = writeln!(
            out,
            "# HELP {name} {}",
            help.replace('\\', "\\\\").replace('\n', "\\n")
        );
        let _ = writeln!(out, "# TYPE {name} {kind}");
        Self { out, name }
    }

    /// One sample of the family.
    pub fn sample(&mut self, labels: &[(&str, &str)], value: f64) {
        let name = self.name;
        self.sample_named(name, labels, value);
    }

    /// One sample under a derived name (`_bucket`, `_sum`, `_count` of a histogram).
    pub fn sample_named(&mut self, name: &str, labels: &[(&str, &str)], value: f64) {
        let _ = write!(self.out, "{name}");
        if !labels.is_empty() {
            let _ = write!(self.out, "{{");
            for (i, (k, v)) in labels.iter().enumerate() {
                let sep = if i == 0 { "" } else { "," };
                let _ = write!(self.out, "{sep}{k}=\"{}\"", escape(v));
            }
            let _ = write!(self.out, "}}");
        }
        let _ = writeln!(self.out, " {}", number(value));
    }

    /// A histogram's samples from per-bucket counts: `bounds[i]` is the upper bound of `counts[i]`
    /// (non-cumulative counts, summed up here; the `+Inf` bucket is `count`).
    pub fn histogram(
        &mut self,
        labels: &[(&str, &str)],
        bounds: &[f64],
        counts: &[u64],
        sum: f64,
        count: u64,
    ) {
        let cumulative: Vec<u64> = counts
            .iter()
            .scan(0u64, |total, n| {
                *total += n;
                Some(*total)
            })
            .collect();
        self.histogram_cumulative(labels, bounds, &cumulative, sum, count);
    }

    /// A histogram's samples from counts that are already cumulative: `cumulative[i]` observations were at
    /// most `bounds[i]` (the `+Inf` bucket is `count`).
    pub fn histogram_cumulative(
        &mut self,
        labels: &[(&str, &str)],
        bounds: &[f64],
        cumulative: &[u64],
        sum: f64,
        count: u64,
    ) {
        let bucket = format!("{}_bucket", self.name);
        for (bound, n) in bounds.iter().zip(cumulative) {
            let le = number(*bound);
            let mut with_le: Vec<(&str, &str)> = labels.to_vec();
            with_le.push(("le", &le));
            self.sample_named(&bucket, &with_le, *n as f64);
        }
        let mut with_le: Vec<(&str, &str)> = labels.to_vec();
        with_le.push(("le", "+Inf"));
        self.sample_named(&bucket, &with_le, count as f64);
        let sum_name = format!("{}_sum", self.name);
        self.sample_named(&sum_name, labels, sum);
        let count_name = format!("{}_count", self.name);
        self.sample_named(&count_name, labels, count as f64);
    }
}

/// Upper bounds, in seconds, of histograms of start-up times (50 ms to 5 min): an instance's process start,
/// model load and first readiness, or a request's wait for one.
pub const STARTUP_BUCKETS_S: [f64; 12] = [
    0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0,
];

/// A histogram of durations that records without a lock or an allocation: one atomic per bucket (not
/// cumulative; the last one is `+Inf`) and the sum.
pub struct AtomicHistogram<const N: usize> {
    bounds_s: &'static [f64; N],
    /// `bounds_s` in nanoseconds, for the hot path.
    bounds_ns: [u64; N],
    /// `N + 1` buckets.
    counts: Box<[AtomicU64]>,
    sum_ns: AtomicU64,
}

impl<const N: usize> AtomicHistogram<N> {
    /// An empty histogram with buckets up to each of `bounds_s` (seconds), and `+Inf`.
    pub fn new(bounds_s: &'static [f64; N]) -> Self {
        AtomicHistogram {
            bounds_s,
            bounds_ns: bounds_s.map(|b| (b * 1e9) as u64),
            counts: (0..=N).map(|_| AtomicU64::new(0)).collect(),
            sum_ns: AtomicU64::new(0),
        }
    }

    /// Counts one duration.
    pub fn observe(&self, value: Duration) {
        let ns = u64::try_from(value.as_nanos()).unwrap_or(u64::MAX);
        let bucket = self
            .bounds_ns
            .iter()
            .position(|&bound| ns <= bound)
            .unwrap_or(N);
        self.counts[bucket].fetch_add(1, Relaxed);
        self.sum_ns.fetch_add(ns, Relaxed);
    }

    /// Observations so far.
    pub fn count(&self) -> u64 {
        self.counts.iter().map(|c| c.load(Relaxed)).sum()
    }

    /// Mean of the observations so far, if any.
    pub fn mean(&self) -> Option<Duration> {
        let count = self.count();
        (count > 0).then(|| Duration::from_nanos(self.sum_ns.load(Relaxed) / count))
    }

    /// Appends this histogram's samples to `family` with `labels`.
    pub fn render(&self, family: &mut Family<'_>, labels: &[(&str, &str)]) {
        let counts: Vec<u64> = self.counts.iter().map(|c| c.load(Relaxed)).collect();
        family.histogram(
            labels,
            self.bounds_s,
            &counts[..N],
            self.sum_ns.load(Relaxed) as f64 / 1e9,
            counts.iter().sum(),
        );
    }
}

/// The value of the sample written exactly `series` (its name and labels as exposed, such as
/// `dilu_gateway_retries_total{function="f"}`) in exposition `text`; `None` when there is none or its value is
/// not a number. For readers of a `/metrics` page: tests, and tools that scrape one series.
pub fn value(text: &str, series: &str) -> Option<f64> {
    text.lines().find_map(|line| {
        line.strip_prefix(series)?
            .strip_prefix(' ')?
            .split(' ')
            .next()?
            .parse()
            .ok()
    })
}

/// A label value with `\`, `"` and newlines escaped.
pub fn escape(value: &str) -> String {
    value
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// A sample value as Prometheus writes it: integers without a fraction, `+Inf`/`-Inf`/`NaN` spelled out.
pub fn number(value: f64) -> String {
    if value.is_nan() {
        "NaN".into()
    } else if value.is_infinite() {
        if value > 0.0 {
            "+Inf".into()
        } else {
            "-Inf".into()
        }
    } else if value.fract() == 0.0 && value.abs() < 1e15 {
        format!("{}", value as i64)
    } else {
        format!("{value}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_series_value_is_found_by_its_exact_name_and_labels() {
        let text = "# TYPE a counter\na 1\na_total 2\na{x=\"y\"} 3.5 1700000000000\nb NaN\n";
        assert_eq!(value(text, "a"), Some(1.0));
        assert_eq!(value(text, "a_total"), Some(2.0));
        assert_eq!(value(text, "a{x=\"y\"}"), Some(3.5));
        assert!(value(text, "b").is_some_and(f64::is_nan));
        assert_eq!(value(text, "a{x=\"z\"}"), None);
        assert_eq!(value(text, "c"), None);
    }

    #[test]
    fn families_escape_labels_and_write_histograms() {
        let mut out = String::new();
        let mut f = Family::new(&mut out, "x_total", "counter", "Things.");
        f.sample(&[("a", "q\"\\\n")], 3.0);
        let mut h = Family::new(&mut out, "lat_seconds", "histogram", "Latency.");
        h.histogram(&[("f", "g")], &[0.1, 1.0], &[2, 1], 0.7, 4);
        assert_eq!(
            out,
            "# HELP x_total Things.\n# TYPE x_total counter\nx_total{a=\"q\\\"\\\\\\n\"} 3\n\
             # HELP lat_seconds Latency.\n# TYPE lat_seconds histogram\n\
             lat_seconds_bucket{f=\"g\",le=\"0.1\"} 2\nlat_seconds_bucket{f=\"g\",le=\"1\"} 3\n\
             lat_seconds_bucket{f=\"g\",le=\"+Inf\"} 4\nlat_seconds_sum{f=\"g\"} 0.7\nlat_seconds_count{f=\"g\"} 4\n"
        );
        assert_eq!(number(f64::INFINITY), "+Inf");
        assert_eq!(number(0.25), "0.25");
    }

    #[test]
    fn cumulative_histograms_match_per_bucket_ones() {
        let bounds = [0.00005, 1.0, 30.0];
        let mut per_bucket = String::new();
        let mut h = Family::new(&mut per_bucket, "h", "histogram", "H.");
        h.histogram(&[], &bounds, &[2, 0, 3], 1.5, 6);
        let mut cumulative = String::new();
        let mut h = Family::new(&mut cumulative, "h", "histogram", "H.");
        h.histogram_cumulative(&[], &bounds, &[2, 2, 5], 1.5, 6);
        assert_eq!(per_bucket, cumulative);
        assert_eq!(
            cumulative,
            "# HELP h H.\n# TYPE h histogram\nh_bucket{le=\"0.00005\"} 2\nh_bucket{le=\"1\"} 2\n\
             h_bucket{le=\"30\"} 5\nh_bucket{le=\"+Inf\"} 6\nh_sum 1.5\nh_count 6\n"
        );
    }

    #[test]
    fn numbers_match_display_for_finite_values() {
        for v in [0.0, 1.0, 7.0, 0.001, 2.5e-7, 123_456_789.25, 1e20, -3.0] {
            assert_eq!(number(v), v.to_string(), "{v}");
        }
        assert_eq!(number(f64::NAN), "NaN");
        assert_eq!(number(f64::NEG_INFINITY), "-Inf");
    }
}
