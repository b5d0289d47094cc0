//! What a serving run measures: per-request latency against the SLO, inference and training throughput,
//! GPU cost, fragmentation, cold starts and vertical adjustments, plus time series for the plots.

use std::collections::BTreeMap;

use crate::serve::prepared::PreparedScenario;
use serde::Serialize;

const NS_PER_S: f64 = 1e9;

/// The batches of one size a function ran: how many, and their summed time from start to end under the shares
/// they ran at (what a worker's `dilu_worker_batch_seconds{batch_size}` counts live).
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct BatchTimes {
    /// Batches run.
    pub batches: u64,
    /// Their summed time, seconds.
    pub seconds: f64,
    /// Their summed squared time, seconds² (with the other two, the variance of one batch's time).
    pub squares: f64,
}

impl BatchTimes {
    /// Mean time of one batch, seconds (NaN with no batch).
    pub fn mean_s(&self) -> f64 {
        if self.batches == 0 {
            f64::NAN
        } else {
            self.seconds / self.batches as f64
        }
    }

    /// Coefficient of variation of one batch's time (NaN with fewer than two batches or a zero mean).
    pub fn cv(&self) -> f64 {
        if self.batches < 2 || self.seconds <= 0.0 {
            return f64::NAN;
        }
        let n = self.batches as f64;
        let mean = self.seconds / n;
        let var = (self.squares / n - mean * mean).max(0.0);
        var.sqrt() / mean
    }
}

/// Request counters and latencies of one function.
#[derive(Debug, Clone, Default)]
struct FunctionStats {
    batch_times: BTreeMap<u32, BatchTimes>,
    arrived: u64,
    completed: u64,
    late: u64,
    dropped: u64,
    unfinished_late: u64,
    latencies_us: Vec<u32>,
}

/// One sample of the cluster's state.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct TimelinePoint {
    /// Virtual time, seconds.
    pub t_s: f64,
    /// GPUs with at least one resident.
    pub active_gpus: u32,
    /// Mean Σ SM request over active GPUs (what is reserved), fraction.
    pub sm_reserved: f64,
    /// Mean SM·time share in use over active GPUs at the sample instant, fraction.
    pub sm_used: f64,
    /// Live inference instances.
    pub instances: u32,
    /// Fraction of the requests completed or dropped since the previous sample that violated their SLO.
    pub slo_violation_rate: f64,
}

/// Results of one function under one policy.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct FunctionReport {
    /// Function name.
    pub name: String,
    /// Measured requests (arrived after the warm-up).
    pub requests: u64,
    /// Of them, completed.
    pub completed: u64,
    /// Of them, dropped after waiting longer than the timeout.
    pub dropped: u64,
    /// Violations / (requests − unfinished-but-not-yet-late).
    pub slo_violation_rate: f64,
    /// Median latency of completed requests, ms.
    pub p50_ms: f64,
    /// 99th percentile latency, ms.
    pub p99_ms: f64,
    /// Completed requests per second.
    pub throughput_rps: f64,
}

/// Results of one policy on one scenario (the JSON the CLI writes).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct PolicyReport {
    /// Policy name.
    pub policy: String,
    /// Measured requests.
    pub requests: u64,
    /// Completed measured requests.
    pub completed: u64,
    /// Dropped measured requests (waited past the timeout).
    pub dropped: u64,
    /// Fraction of measured requests that missed their SLO (late, dropped, or still waiting past it at the end).
    pub slo_violation_rate: f64,
    /// Median latency over all completed requests, ms.
    pub p50_ms: f64,
    /// 95th percentile latency, ms.
    pub p95_ms: f64,
    /// 99th percentile latency, ms.
    pub p99_ms: f64,
    /// Completed requests per second of measured time.
    pub inference_throughput_rps: f64,
    /// Requests per second completed within their SLO.
    pub goodput_rps: f64,
    /// Training progress relative to running alone on whole GPUs over the jobs' lifetimes (1.0 = alone).
    pub training_throughput: f64,
    /// ∫ active GPUs dt, GPU-hours.
    pub gpu_hours: f64,
    /// Most GPUs active at once.
    pub peak_active_gpus: u32,
    /// Time-mean over samples of mean (1 − Σ SM request) over active GPUs.
    pub mean_sm_frag: f64,
    /// Time-mean over samples of mean (1 − Σ memory / capacity) over active GPUs.
    pub mean_mem_frag: f64,
    /// Instances started after time zero (each paid a model load).
    pub cold_starts: u64,
    /// Grant changes made by vertical controllers plus quota changes made by hybrid scalers.
    pub vertical_adjustments: u64,
    /// Placement attempts that found no room.
    pub unschedulable: u64,
    /// Events the engine processed.
    pub events: u64,
    /// Per function.
    pub functions: Vec<FunctionReport>,
    /// Per training job: relative throughput.
    pub training_jobs: Vec<f64>,
}

/// A finished run: the report plus the raw series the plots need.
#[derive(Debug, Clone)]
pub struct PolicyRun {
    /// The numbers.
    pub report: PolicyReport,
    /// Samples over time.
    pub timeline: Vec<TimelinePoint>,
    /// All measured completed latencies, ms, sorted.
    pub latencies_ms: Vec<f64>,
    /// The components the run used, as they name themselves.
    pub components: Option<dilu_core::policy::Components>,
    /// Per function, its batches by size over the whole run (warm-up included).
    pub batch_times: Vec<BTreeMap<u32, BatchTimes>>,
}

/// Collects measurements while the engine runs.
#[derive(Debug, Clone)]
pub struct Collector {
    warmup_ns: u64,
    duration_ns: u64,
    slo_ns: Vec<u64>,
    overhead_ns: Vec<u64>,
    names: Vec<String>,
    functions: Vec<FunctionStats>,
    gpu_ns: u128,
    peak_active: u32,
    unschedulable: u64,
    cold_starts: u64,
    timeline: Vec<TimelinePoint>,
    sm_frag_sum: f64,
    mem_frag_sum: f64,
    frag_samples: u64,
    interval_done: u64,
    interval_bad: u64,
}

impl Collector {
    /// An empty collector for the scenario's functions.
    pub fn new(sc: &PreparedScenario) -> Self {
        Collector {
            warmup_ns: sc.warmup_ns,
            duration_ns: sc.duration_ns,
            slo_ns: sc
                .functions
                .iter()
                .map(|f| (f.slo_s * NS_PER_S) as u64)
                .collect(),
            overhead_ns: sc.functions.iter().map(|f| f.overhead_ns).collect(),
            names: sc.functions.iter().map(|f| f.name.clone()).collect(),
            functions: vec![FunctionStats::default(); sc.functions.len()],
            gpu_ns: 0,
            peak_active: 0,
            unschedulable: 0,
            cold_starts: 0,
            timeline: Vec::new(),
            sm_frag_sum: 0.0,
            mem_frag_sum: 0.0,
            frag_samples: 0,
            interval_done: 0,
            interval_bad: 0,
        }
    }

    fn measured(&self, arrived_ns: u64) -> bool {
        arrived_ns >= self.warmup_ns
    }

    /// A request of function `f` arrived.
    pub fn arrived(&mut self, f: usize, at_ns: u64) {
        if self.measured(at_ns) {
            self.functions[f].arrived += 1;
        }
    }

    /// The latency of a request of function `f` that arrived at `arrived_ns` and whose batch ended at
    /// `now_ns`: that span plus the function's time outside the executor (`request_overhead_ms`).
    pub fn latency_ns(&self, f: usize, arrived_ns: u64, now_ns: u64) -> u64 {
        now_ns.saturating_sub(arrived_ns) + self.overhead_ns[f]
    }

    /// Whether a request of function `f` with latency `latency_ns` ([`Collector::latency_ns`]) missed the SLO:
    /// the one rule the report and the engine's scaler counts share.
    pub fn missed_slo(&self, f: usize, latency_ns: u64) -> bool {
        latency_ns > self.slo_ns[f]
    }

    /// A request that arrived at `arrived_ns` completed at `now_ns`.
    pub fn completed(&mut self, f: usize, arrived_ns: u64, now_ns: u64) {
        if !self.measured(arrived_ns) {
            return;
        }
        let latency = self.latency_ns(f, arrived_ns, now_ns);
        let late = self.missed_slo(f, latency);
        let s = &mut self.functions[f];
        s.completed += 1;
        s.late += u64::from(late);
        s.latencies_us
            .push(u32::try_from(latency / 1000).unwrap_or(u32::MAX));
        self.interval_done += 1;
        self.interval_bad += u64::from(late);
    }

    /// Function `f` finished a batch of `size` requests that ran for `ns` (counted warm-up or not).
    pub fn batch_ran(&mut self, f: usize, size: u32, ns: u64) {
        let t = self.functions[f].batch_times.entry(size).or_default();
        let s = ns as f64 / NS_PER_S;
        t.batches += 1;
        t.seconds += s;
        t.squares += s * s;
    }

    /// A request was dropped after waiting past its timeout.
    pub fn dropped(&mut self, f: usize, arrived_ns: u64) {
        if self.measured(arrived_ns) {
            self.functions[f].dropped += 1;
            self.interval_done += 1;
            self.interval_bad += 1;
        }
    }

    /// A request was still waiting or running when the run ended.
    pub fn unfinished(&mut self, f: usize, arrived_ns: u64, now_ns: u64) {
        if self.measured(arrived_ns) && self.missed_slo(f, self.latency_ns(f, arrived_ns, now_ns)) {
            self.functions[f].unfinished_late += 1;
        }
    }

    /// Adds active-GPU time, GPU·nanoseconds.
    pub fn add_gpu_ns(&mut self, gpu_ns: u128) {
        self.gpu_ns += gpu_ns;
    }

    /// Notes the number of active GPUs after a change.
    pub fn peak_active(&mut self, active: u32) {
        self.peak_active = self.peak_active.max(active);
    }

    /// A placement found no room.
    pub fn unschedulable(&mut self) {
        self.unschedulable += 1;
    }

    /// An instance started cold.
    pub fn cold_start(&mut self) {
        self.cold_starts += 1;
    }

    /// Records one sample: `sm_reserved`, `sm_used` and `mem_used` are sums over the `active` GPUs.
    pub fn sample(
        &mut self,
        now_ns: u64,
        active: u32,
        sm_reserved: f64,
        sm_used: f64,
        mem_used: f64,
        instances: u32,
    ) {
        let per = |x: f64| {
            if active > 0 {
                x / f64::from(active)
            } else {
                0.0
            }
        };
        if active > 0 {
            self.sm_frag_sum += 1.0 - per(sm_reserved);
            self.mem_frag_sum += 1.0 - per(mem_used);
            self.frag_samples += 1;
        }
        let rate = if self.interval_done > 0 {
            self.interval_bad as f64 / self.interval_done as f64
        } else {
            0.0
        };
        self.interval_done = 0;
        self.interval_bad = 0;
        self.timeline.push(TimelinePoint {
            t_s: now_ns as f64 / NS_PER_S,
            active_gpus: active,
            sm_reserved: per(sm_reserved),
            sm_used: per(sm_used),
            instances,
            slo_violation_rate: rate,
        });
    }

    /// Turns the counters into a report. `training` holds (progress, lifetime seconds) per job.
    pub fn finish(
        self,
        events: u64,
        vertical_adjustments: u64,
        training: &[(f64, f64)],
    ) -> PolicyRun {
        let measured_s = (self.duration_ns.saturating_sub(self.warmup_ns)) as f64 / NS_PER_S;
        let per_s = |n: u64| {
            if measured_s > 0.0 {
                n as f64 / measured_s
            } else {
                0.0
            }
        };
        let mut all_us: Vec<u32> = Vec::new();
        let mut functions = Vec::with_capacity(self.functions.len());
        let (mut requests, mut completed, mut dropped, mut bad, mut judged, mut good) =
            (0u64, 0u64, 0u64, 0u64, 0u64, 0u64);
        for (name, s) in self.names.iter().zip(&self.functions) {
            let mut lat = s.latencies_us.clone();
            lat.sort_unstable();
            let f_bad = s.late + s.dropped + s.unfinished_late;
            let f_judged = s.completed + s.dropped + s.unfinished_late;
            functions.push(FunctionReport {
                name: name.clone(),
                requests: s.arrived,
                completed: s.completed,
                dropped: s.dropped,
                slo_violation_rate: ratio(f_bad, f_judged),
                p50_ms: percentile_ms(&lat, 0.50),
                p99_ms: percentile_ms(&lat, 0.99),
                throughput_rps: per_s(s.completed),
            });
            requests += s.arrived;
            completed += s.completed;
            dropped += s.dropped;
            bad += f_bad;
            judged += f_judged;
            good += s.completed - s.late;
            all_us.extend_from_slice(&lat);
        }
        all_us.sort_unstable();
        let (progress, span) = training
            .iter()
            .fold((0.0, 0.0), |(p, s), (jp, js)| (p + jp, s + js));
        let frag = |sum: f64| {
            if self.frag_samples > 0 {
                sum / self.frag_samples as f64
            } else {
                0.0
            }
        };
        let report = PolicyReport {
            policy: String::new(),
            requests,
            completed,
            dropped,
            slo_violation_rate: ratio(bad, judged),
            p50_ms: percentile_ms(&all_us, 0.50),
            p95_ms: percentile_ms(&all_us, 0.95),
            p99_ms: percentile_ms(&all_us, 0.99),
            inference_throughput_rps: per_s(completed),
            goodput_rps: per_s(good),
            training_throughput: if span > 0.0 { progress / span } else { 0.0 },
            gpu_hours: self.gpu_ns as f64 / NS_PER_S / 3600.0,
            peak_active_gpus: self.peak_active,
            mean_sm_frag: frag(self.sm_frag_sum),
            mean_mem_frag: frag(self.mem_frag_sum),
            cold_starts: self.cold_starts,
            vertical_adjustments,
            unschedulable: self.unschedulable,
            events,
            functions,
            training_jobs: training
                .iter()
                .map(|(p, s)| if *s > 0.0 { p / s } else { 0.0 })
                .collect(),
        };
        PolicyRun {
            report,
            timeline: self.timeline,
            latencies_ms: all_us.iter().map(|&u| f64::from(u) / 1000.0).collect(),
            components: None,
            batch_times: self.functions.into_iter().map(|s| s.batch_times).collect(),
        }
    }
}

fn ratio(a: u64, b: u64) -> f64 {
    if b > 0 { a as f64 / b as f64 } else { 0.0 }
}

/// Nearest-rank percentile of sorted microsecond latencies, in ms (0 when empty). `dilu sim validate`
/// summarises its live requests with it too, so that both sides are summarised alike.
pub fn percentile_ms(sorted_us: &[u32], q: f64) -> f64 {
    if sorted_us.is_empty() {
        return 0.0;
    }
    let rank = ((q * sorted_us.len() as f64).ceil() as usize).clamp(1, sorted_us.len());
    f64::from(sorted_us[rank - 1]) / 1000.0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_rank_percentiles() {
        let v: Vec<u32> = (1..=100).map(|x| x * 1000).collect();
        assert_eq!(percentile_ms(&v, 0.5), 50.0);
        assert_eq!(percentile_ms(&v, 0.99), 99.0);
        assert_eq!(percentile_ms(&[], 0.5), 0.0);
    }
}
