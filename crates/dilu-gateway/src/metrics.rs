//! Per-function counters (lock-free atomics, created once per function) and their Prometheus text exposition.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::Duration;

use dilu_core::prometheus::{AtomicHistogram, Family, STARTUP_BUCKETS_S};

/// Upper bounds of the latency histogram's buckets, in seconds (1 ms to 30 s).
pub(crate) const BUCKETS_S: [f64; 14] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];

/// Upper bounds of the gateway's own-time histogram's buckets, in seconds (10 µs to 100 ms): the gateway's
/// share of a request is measured in microseconds, so the latency buckets would put all of it in the first one.
pub(crate) const OWN_BUCKETS_S: [f64; 13] = [
    0.00001, 0.000025, 0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05,
    0.1,
];

/// Status code recorded when the client went away before its response was ready (nginx's convention).
pub(crate) const CLIENT_CLOSED: u16 = 499;

/// One function's counters. Everything is an atomic so recording a request takes no lock and no allocation.
pub(crate) struct FunctionMetrics {
    /// The function name (its `function` label).
    function: String,
    /// Responses by status code (index = code, 0..600).
    codes: Box<[AtomicU64]>,
    /// Latency from arrival to response.
    latency: AtomicHistogram<{ BUCKETS_S.len() }>,
    /// The gateway's own handling: latency less the wait for an instance slot and the forwarded calls.
    own_time: AtomicHistogram<{ OWN_BUCKETS_S.len() }>,
    slo_violations: AtomicU64,
    retries: AtomicU64,
    cold_start_waits: AtomicU64,
    /// How long requests that found no ready instance waited for one (those that got one).
    cold_start_wait: AtomicHistogram<{ STARTUP_BUCKETS_S.len() }>,
    /// Window counters, reset by `take_window`.
    pub(crate) arrivals: AtomicU64,
    pub(crate) completed: AtomicU64,
    pub(crate) failed: AtomicU64,
    /// Answered after the SLO, or refused or failed by the platform (429, 5xx): what the `lazy-slo` scaler
    /// counts as late.
    pub(crate) late: AtomicU64,
}

impl FunctionMetrics {
    pub(crate) fn new(function: &str) -> Self {
        FunctionMetrics {
            function: function.to_string(),
            codes: (0..600).map(|_| AtomicU64::new(0)).collect(),
            latency: AtomicHistogram::new(&BUCKETS_S),
            own_time: AtomicHistogram::new(&OWN_BUCKETS_S),
            slo_violations: AtomicU64::new(0),
            retries: AtomicU64::new(0),
            cold_start_waits: AtomicU64::new(0),
            cold_start_wait: AtomicHistogram::new(&STARTUP_BUCKETS_S),
            arrivals: AtomicU64::new(0),
            completed: AtomicU64::new(0),
            failed: AtomicU64::new(0),
            late: AtomicU64::new(0),
        }
    }

    /// Records one answered (or abandoned) inference request.
    pub(crate) fn record(&self, code: u16, latency: Duration, slo: Option<Duration>) {
        if let Some(counter) = self.codes.get(usize::from(code)) {
            counter.fetch_add(1, Relaxed);
        }
        if (200..300).contains(&code) {
            self.completed.fetch_add(1, Relaxed);
        } else {
            self.failed.fetch_add(1, Relaxed);
        }
        self.latency.observe(latency);
        let over = slo.is_some_and(|slo| latency > slo);
        if over {
            self.slo_violations.fetch_add(1, Relaxed);
        }
        if over || code == 429 || code >= 500 {
            self.late.fetch_add(1, Relaxed);
        }
    }

    /// Records the gateway's own part of one answered request (see [`FunctionMetrics::own_time`]).
    pub(crate) fn record_own_time(&self, own: Duration) {
        self.own_time.observe(own);
    }

    pub(crate) fn count_retry(&self) {
        self.retries.fetch_add(1, Relaxed);
    }

    pub(crate) fn count_cold_start_wait(&self) {
        self.cold_start_waits.fetch_add(1, Relaxed);
    }

    /// A request that found no ready instance got one after `waited`.
    pub(crate) fn record_cold_start_wait(&self, waited: Duration) {
        self.cold_start_wait.observe(waited);
    }

    /// Mean latency of the requests seen so far, if any.
    pub(crate) fn mean_latency(&self) -> Option<Duration> {
        self.latency.mean()
    }
}

/// One gauge family: name, help, and how to read it from a snapshot.
type GaugeFamily = (&'static str, &'static str, fn(&Snapshot<'_>) -> usize);

/// One per-function counter family: name, help, and the counter.
type CounterFamily = (
    &'static str,
    &'static str,
    fn(&FunctionMetrics) -> &AtomicU64,
);

/// A function's metrics plus the gauges read from its routing state at render time.
pub(crate) struct Snapshot<'a> {
    pub(crate) metrics: &'a FunctionMetrics,
    pub(crate) queue_depth: usize,
    pub(crate) outstanding: usize,
    pub(crate) instances_ready: usize,
}

/// Appends the Prometheus text exposition of every family (HELP/TYPE once each) for `functions`.
pub(crate) fn render(out: &mut String, functions: &[Snapshot<'_>], unknown_function_requests: u64) {
    let mut family = Family::new(
        out,
        "dilu_gateway_requests_total",
        "counter",
        "Inference requests answered, by function and HTTP status code (499: client went away).",
    );
    for f in functions {
        for (code, counter) in f.metrics.codes.iter().enumerate() {
            let n = counter.load(Relaxed);
            if n > 0 {
                let code = code.to_string();
                let labels = [("function", f.metrics.function.as_str()), ("code", &code)];
                family.sample(&labels, n as f64);
            }
        }
    }
    let mut family = Family::new(
        out,
        "dilu_gateway_request_duration_seconds",
        "histogram",
        "Gateway latency of inference requests, from arrival to response.",
    );
    for f in functions {
        f.metrics
            .latency
            .render(&mut family, &[("function", &f.metrics.function)]);
    }
    let mut family = Family::new(
        out,
        "dilu_gateway_own_time_seconds",
        "histogram",
        "Time an inference request spent in the gateway's own handling: its latency less the wait for an \
         instance slot and the forwarded call to the instance (that call, which includes the HTTP client's work, \
         is the instance's share). What is left is reading the body, routing and answering.",
    );
    for f in functions {
        f.metrics
            .own_time
            .render(&mut family, &[("function", &f.metrics.function)]);
    }
    let mut family = Family::new(
        out,
        "dilu_gateway_cold_start_wait_seconds",
        "histogram",
        "How long requests that found their function without a ready instance waited until one took them (a \
         cold start as clients see it; requests that gave up are in dilu_gateway_requests_total as 503).",
    );
    for f in functions {
        f.metrics
            .cold_start_wait
            .render(&mut family, &[("function", &f.metrics.function)]);
    }
    let gauges: [GaugeFamily; 3] = [
        (
            "dilu_gateway_queue_depth",
            "Requests waiting for an instance slot.",
            |f| f.queue_depth,
        ),
        (
            "dilu_gateway_outstanding",
            "Requests being served by instances.",
            |f| f.outstanding,
        ),
        (
            "dilu_gateway_instances_ready",
            "Instances that receive new requests (listed and not marked dead).",
            |f| f.instances_ready,
        ),
    ];
    for (name, help, value) in gauges {
        let mut family = Family::new(out, name, "gauge", help);
        for f in functions {
            family.sample(&[("function", &f.metrics.function)], value(f) as f64);
        }
    }
    let counters: [CounterFamily; 3] = [
        (
            "dilu_gateway_slo_violations_total",
            "Inference requests whose latency exceeded the function's SLO.",
            |m| &m.slo_violations,
        ),
        (
            "dilu_gateway_retries_total",
            "Requests retried on another instance after a transport failure.",
            |m| &m.retries,
        ),
        (
            "dilu_gateway_cold_start_waits_total",
            "Requests that had to wait because the function had no ready instance.",
            |m| &m.cold_start_waits,
        ),
    ];
    for (name, help, counter) in counters {
        let mut family = Family::new(out, name, "counter", help);
        for f in functions {
            let n = counter(f.metrics).load(Relaxed);
            family.sample(&[("function", &f.metrics.function)], n as f64);
        }
    }
    Family::new(
        out,
        "dilu_gateway_unknown_function_requests_total",
        "counter",
        "Requests for functions not deployed on this gateway.",
    )
    .sample(&[], unknown_function_requests as f64);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_are_escaped() {
        let m = FunctionMetrics::new("a\"b\\c\nd");
        m.count_retry();
        let mut out = String::new();
        let snapshot = Snapshot {
            metrics: &m,
            queue_depth: 0,
            outstanding: 0,
            instances_ready: 0,
        };
        render(&mut out, &[snapshot], 0);
        assert!(
            out.contains("dilu_gateway_retries_total{function=\"a\\\"b\\\\c\\nd\"} 1\n"),
            "{out}"
        );
    }

    #[test]
    fn histogram_is_cumulative_and_counts_outcomes() {
        let m = FunctionMetrics::new("f");
        m.record(
            200,
            Duration::from_micros(500),
            Some(Duration::from_millis(1)),
        );
        m.record(
            200,
            Duration::from_millis(3),
            Some(Duration::from_millis(1)),
        );
        m.record(503, Duration::from_secs(40), None);
        assert_eq!(m.completed.load(Relaxed), 2);
        assert_eq!(m.failed.load(Relaxed), 1);
        assert_eq!(m.slo_violations.load(Relaxed), 1);
        let mut out = String::new();
        render(
            &mut out,
            &[Snapshot {
                metrics: &m,
                queue_depth: 1,
                outstanding: 2,
                instances_ready: 3,
            }],
            0,
        );
        assert!(out.contains(
            "dilu_gateway_request_duration_seconds_bucket{function=\"f\",le=\"0.001\"} 1\n"
        ));
        assert!(out.contains(
            "dilu_gateway_request_duration_seconds_bucket{function=\"f\",le=\"0.005\"} 2\n"
        ));
        assert!(out.contains(
            "dilu_gateway_request_duration_seconds_bucket{function=\"f\",le=\"30\"} 2\n"
        ));
        assert!(out.contains(
            "dilu_gateway_request_duration_seconds_bucket{function=\"f\",le=\"+Inf\"} 3\n"
        ));
        assert!(out.contains("dilu_gateway_requests_total{function=\"f\",code=\"503\"} 1\n"));
        assert!(out.contains("dilu_gateway_outstanding{function=\"f\"} 2\n"));
        // The own-time histogram has its own, finer buckets.
        m.record_own_time(Duration::from_micros(30));
        let mut out = String::new();
        render(
            &mut out,
            &[Snapshot {
                metrics: &m,
                queue_depth: 0,
                outstanding: 0,
                instances_ready: 0,
            }],
            0,
        );
        assert!(
            out.contains(
                "dilu_gateway_own_time_seconds_bucket{function=\"f\",le=\"0.000025\"} 0\n"
            ),
            "{out}"
        );
        assert!(
            out.contains("dilu_gateway_own_time_seconds_bucket{function=\"f\",le=\"0.00005\"} 1\n")
        );
        assert!(out.contains("dilu_gateway_own_time_seconds_count{function=\"f\"} 1\n"));
    }
}
