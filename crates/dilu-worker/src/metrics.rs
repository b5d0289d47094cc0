//! The worker's Prometheus metrics (`GET /metrics`, text exposition format, names prefixed `dilu_worker_`).

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};

use dilu_core::prometheus::Family;

/// A histogram with fixed upper bounds; observations are stored in integer units (e.g. nanoseconds) and
/// rendered after dividing by `scale`.
#[derive(Debug)]
pub struct Histogram {
    bounds: &'static [f64],
    counts: Vec<AtomicU64>,
    count: AtomicU64,
    sum: AtomicU64,
    scale: f64,
}

impl Histogram {
    /// A histogram over `bounds` (in rendered units) whose raw observations are `scale` times those units.
    pub fn new(bounds: &'static [f64], scale: f64) -> Self {
        Self {
            bounds,
            counts: bounds.iter().map(|_| AtomicU64::new(0)).collect(),
            count: AtomicU64::new(0),
            sum: AtomicU64::new(0),
            scale,
        }
    }

    /// Records one observation of `raw` units.
    pub fn observe(&self, raw: u64) {
        let value = raw as f64 / self.scale;
        if let Some(ix) = self.bounds.iter().position(|&b| value <= b) {
            self.counts[ix].fetch_add(1, Ordering::Relaxed);
        }
        self.count.fetch_add(1, Ordering::Relaxed);
        self.sum.fetch_add(raw, Ordering::Relaxed);
    }

    /// The number of observations.
    pub fn count(&self) -> u64 {
        self.count.load(Ordering::Relaxed)
    }

    /// The sum of observations, in raw units.
    pub fn sum_raw(&self) -> u64 {
        self.sum.load(Ordering::Relaxed)
    }

    fn render(&self, out: &mut String, name: &str, help: &str) {
        let counts: Vec<u64> = self
            .counts
            .iter()
            .map(|c| c.load(Ordering::Relaxed))
            .collect();
        Family::new(out, name, "histogram", help).histogram(
            &[],
            self.bounds,
            &counts,
            self.sum_raw() as f64 / self.scale,
            self.count(),
        );
    }
}

/// Batches run, their summed time and their summed squared time, per batch size. One lock per batch: the
/// batcher records once per batch, not per request.
#[derive(Debug, Default)]
pub struct BatchSeconds {
    by_size: Mutex<BTreeMap<u32, BatchTotals>>,
}

/// The batches of one size: how many, Σ time (ns) and Σ time² (s²; with the other two, their variance).
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct BatchTotals {
    /// Batches.
    pub count: u64,
    /// Their summed time, ns.
    pub ns: u64,
    /// Their summed squared time, s².
    pub squares_s2: f64,
}

impl BatchSeconds {
    /// Records one batch of `size` requests that ran for `exec_ns`.
    pub fn observe(&self, size: u32, exec_ns: u64) {
        if let Ok(mut m) = self.by_size.lock() {
            let e = m.entry(size).or_default();
            e.count += 1;
            e.ns = e.ns.saturating_add(exec_ns);
            let s = exec_ns as f64 / 1e9;
            e.squares_s2 += s * s;
        }
    }

    /// The totals per batch size.
    pub fn snapshot(&self) -> BTreeMap<u32, BatchTotals> {
        self.by_size.lock().map(|m| m.clone()).unwrap_or_default()
    }

    fn render(&self, out: &mut String) {
        let name = "dilu_worker_batch_seconds";
        let mut family = Family::new(
            out,
            name,
            "summary",
            "Model execution time per batch, by batch size.",
        );
        let snapshot = self.snapshot();
        for (size, t) in &snapshot {
            let size = size.to_string();
            let labels = [("batch_size", size.as_str())];
            family.sample_named(&format!("{name}_sum"), &labels, t.ns as f64 / 1e9);
            family.sample_named(&format!("{name}_count"), &labels, t.count as f64);
        }
        let mut squares = Family::new(
            out,
            "dilu_worker_batch_square_seconds_total",
            "counter",
            "Sum of each batch's time squared (seconds squared), by batch size: with the count and sum of \
             dilu_worker_batch_seconds, the variance of a batch's time.",
        );
        for (size, t) in &snapshot {
            let size = size.to_string();
            squares.sample(&[("batch_size", size.as_str())], t.squares_s2);
        }
    }
}

const LATENCY_BOUNDS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];
const BATCH_BOUNDS: &[f64] = &[
    1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0, 1024.0, 4096.0,
];

/// Every metric the worker keeps.
#[derive(Debug)]
pub struct Metrics {
    /// Inference requests received (`dilu_worker_requests_total`).
    pub requests: AtomicU64,
    /// Inference requests answered with an error, by class (`dilu_worker_request_errors_total{class}`):
    /// client errors (4xx).
    pub client_errors: AtomicU64,
    /// Server errors (5xx).
    pub server_errors: AtomicU64,
    /// Batches run (`dilu_worker_batches_total`).
    pub batches: AtomicU64,
    /// Requests per batch (`dilu_worker_batch_size`).
    pub batch_size: Histogram,
    /// Model execution time per batch, in ns (`dilu_worker_inference_seconds`).
    pub inference: Histogram,
    /// Batches and their execution time in ns, by batch size (`dilu_worker_batch_seconds{batch_size}`, a
    /// summary's count and sum): what one batch of each size takes under the instance's share, which
    /// `dilu sim validate --live-service-time` compares with the simulator's batches.
    pub batch_seconds: BatchSeconds,
    /// Time from a request's arrival to its response, in ns (`dilu_worker_request_seconds`).
    pub request_latency: Histogram,
    /// Requests waiting for a batch (`dilu_worker_queue_depth`).
    pub queue_depth: AtomicI64,
    /// The current batching wait, in ns (`dilu_worker_batch_wait_seconds`).
    pub batch_wait_ns: AtomicU64,
    /// Time the executor waited for CPU budget, in ns (`dilu_worker_cpu_throttled_seconds_total`).
    pub throttled_ns: AtomicU64,
    /// CPU time the executor charged, in ns (`dilu_worker_cpu_seconds_total`).
    pub cpu_ns: AtomicU64,
}

impl Default for Metrics {
    fn default() -> Self {
        Self {
            requests: AtomicU64::new(0),
            client_errors: AtomicU64::new(0),
            server_errors: AtomicU64::new(0),
            batches: AtomicU64::new(0),
            batch_size: Histogram::new(BATCH_BOUNDS, 1.0),
            inference: Histogram::new(LATENCY_BOUNDS, 1e9),
            batch_seconds: BatchSeconds::default(),
            request_latency: Histogram::new(LATENCY_BOUNDS, 1e9),
            queue_depth: AtomicI64::new(0),
            batch_wait_ns: AtomicU64::new(0),
            throttled_ns: AtomicU64::new(0),
            cpu_ns: AtomicU64::new(0),
        }
    }
}

impl Metrics {
    /// The Prometheus text exposition of every metric.
    pub fn render(&self) -> String {
        let mut out = String::new();
        let counter = |out: &mut String, name: &str, help: &str, value: f64| {
            Family::new(out, name, "counter", help).sample(&[], value);
        };
        let load = |a: &AtomicU64| a.load(Ordering::Relaxed);
        counter(
            &mut out,
            "dilu_worker_requests_total",
            "Inference requests received.",
            load(&self.requests) as f64,
        );
        let mut errors = Family::new(
            &mut out,
            "dilu_worker_request_errors_total",
            "counter",
            "Inference requests answered with an error.",
        );
        errors.sample(&[("class", "client")], load(&self.client_errors) as f64);
        errors.sample(&[("class", "server")], load(&self.server_errors) as f64);
        counter(
            &mut out,
            "dilu_worker_batches_total",
            "Batches run.",
            load(&self.batches) as f64,
        );
        self.batch_size
            .render(&mut out, "dilu_worker_batch_size", "Requests per batch.");
        self.inference.render(
            &mut out,
            "dilu_worker_inference_seconds",
            "Model execution time per batch.",
        );
        self.batch_seconds.render(&mut out);
        self.request_latency.render(
            &mut out,
            "dilu_worker_request_seconds",
            "Time from an inference request's arrival to its response.",
        );
        Family::new(
            &mut out,
            "dilu_worker_queue_depth",
            "gauge",
            "Requests waiting for a batch.",
        )
        .sample(&[], self.queue_depth.load(Ordering::Relaxed).max(0) as f64);
        Family::new(
            &mut out,
            "dilu_worker_batch_wait_seconds",
            "gauge",
            "The current batching wait.",
        )
        .sample(&[], load(&self.batch_wait_ns) as f64 / 1e9);
        counter(
            &mut out,
            "dilu_worker_cpu_throttled_seconds_total",
            "Time the executor waited for CPU budget.",
            load(&self.throttled_ns) as f64 / 1e9,
        );
        counter(
            &mut out,
            "dilu_worker_cpu_seconds_total",
            "CPU time the executor thread used.",
            load(&self.cpu_ns) as f64 / 1e9,
        );
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histogram_buckets_are_cumulative() {
        let m = Metrics::default();
        m.batch_size.observe(1);
        m.batch_size.observe(3);
        m.batch_size.observe(3);
        let text = m.render();
        assert!(
            text.contains("dilu_worker_batch_size_bucket{le=\"1\"} 1"),
            "{text}"
        );
        assert!(
            text.contains("dilu_worker_batch_size_bucket{le=\"4\"} 3"),
            "{text}"
        );
        assert!(text.contains("dilu_worker_batch_size_sum 7"), "{text}");
        assert!(text.contains("dilu_worker_batch_size_count 3"), "{text}");
    }

    #[test]
    fn batch_seconds_are_kept_per_batch_size() {
        let m = Metrics::default();
        assert!(
            !m.render().contains("dilu_worker_batch_seconds_sum"),
            "no sample before the first batch"
        );
        m.batch_seconds.observe(4, 200_000_000);
        m.batch_seconds.observe(1, 50_000_000);
        m.batch_seconds.observe(4, 300_000_000);
        let text = m.render();
        assert!(
            text.contains("# TYPE dilu_worker_batch_seconds summary"),
            "{text}"
        );
        assert!(
            text.contains("dilu_worker_batch_seconds_sum{batch_size=\"4\"} 0.5\n"),
            "{text}"
        );
        assert!(
            text.contains("dilu_worker_batch_seconds_count{batch_size=\"4\"} 2\n"),
            "{text}"
        );
        assert!(
            text.contains("dilu_worker_batch_seconds_sum{batch_size=\"1\"} 0.05\n"),
            "{text}"
        );
        assert!(
            text.contains("dilu_worker_batch_square_seconds_total{batch_size=\"4\"} 0.13\n"),
            "0.2² + 0.3²: {text}"
        );
        let s = m.batch_seconds.snapshot();
        assert_eq!(s.keys().copied().collect::<Vec<_>>(), vec![1, 4]);
        assert_eq!((s[&4].count, s[&4].ns), (2, 500_000_000));
        assert_eq!((s[&1].count, s[&1].ns), (1, 50_000_000));
    }
}
