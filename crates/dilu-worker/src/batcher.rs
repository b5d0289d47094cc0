//! The executor: one dedicated thread that forms batches from queued requests, runs them through the model
//! and charges its CPU time to the instance's quota channel.
//!
//! A batch closes when it holds `max_batch` requests or when its first request has waited `wait`
//! (`docs/algorithms.md` §7). Once a second `wait` is re-derived from the arrival rate and the mean batch execution
//! time ē ([`BatchingConfig::wait_ns`]): 0 when ē < 1/RPS, else ē/6. Requests already queued when the thread
//! becomes free join the batch even when `wait` is 0. A batch pays half its expected CPU time before it runs
//! (as a GPU kernel is charged at launch, so the token manager sees the instance busy as soon as work starts)
//! and the rest of the thread's measured CPU time after it ([`CpuQuota::charge`], which waits for budget).

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::sync::mpsc::{Receiver, RecvTimeoutError, Sender, TryRecvError};
use std::time::{Duration, Instant};

use dilu_core::batching::BatchingConfig;
use dilu_core::request::InstanceKind;
use dilu_quota::{Admission, CpuQuota, ThreadMeter, monotonic_ns};
use tokio::sync::oneshot;

use crate::error::WorkerError;
use crate::metrics::Metrics;
use crate::model::{Model, OutputTensor, Sample};

/// A queued request: its sample, when it arrived, and where its outputs go.
#[derive(Debug)]
pub struct Job {
    /// The request's tensors.
    pub sample: Sample,
    /// When it was queued.
    pub enqueued: Instant,
    /// Receives the request's outputs (in [`Model::outputs`] order) or the batch's failure.
    pub reply: oneshot::Sender<Result<Vec<OutputTensor>, WorkerError>>,
}

/// How the executor batches.
#[derive(Debug, Clone, Copy)]
pub struct BatchSettings {
    /// A batch closes at this many requests.
    pub max_batch: usize,
    /// A fixed wait instead of the adaptive one.
    pub fixed_wait: Option<Duration>,
    /// The adaptive rule's constants.
    pub batching: BatchingConfig,
    /// The requests' latency SLO, published on the quota channel with the queue (`None`: not published).
    pub slo: Option<Duration>,
}

/// Publishes the queue on the quota channel's counter page for the token manager (`docs/quota-channel.md`):
/// `depth` requests not yet answered, the oldest of which arrived at `oldest`.
fn publish_queue(quota: Option<&CpuQuota>, depth: u64, oldest: Option<Instant>) {
    let Some(quota) = quota else {
        return;
    };
    let counters = quota.channel().counters();
    // The channel's clock is CLOCK_MONOTONIC; an Instant is not convertible, so date it back from now.
    let oldest_ns = oldest.map_or(0, |at| {
        let age = u64::try_from(at.elapsed().as_nanos()).unwrap_or(u64::MAX);
        monotonic_ns().saturating_sub(age).max(1)
    });
    counters
        .oldest_queued_ns
        .store(oldest_ns, Ordering::Relaxed);
    counters.queue_depth.store(depth, Ordering::Relaxed);
}

/// Re-derives the batching wait once a second from arrivals and batch execution times.
#[derive(Debug)]
struct WaitEstimator {
    settings: BatchSettings,
    window_start: Instant,
    arrivals_at_start: u64,
    exec_sum: Duration,
    exec_count: u32,
    mean_exec_s: f64,
    wait: Duration,
}

impl WaitEstimator {
    fn new(settings: BatchSettings, now: Instant, arrivals: u64) -> Self {
        Self {
            settings,
            window_start: now,
            arrivals_at_start: arrivals,
            exec_sum: Duration::ZERO,
            exec_count: 0,
            mean_exec_s: 0.0,
            wait: settings.fixed_wait.unwrap_or(Duration::ZERO),
        }
    }

    fn record_batch(&mut self, exec: Duration) {
        self.exec_sum += exec;
        self.exec_count += 1;
    }

    /// The wait for a batch starting now; re-derived when a second has passed since the last derivation.
    fn wait(&mut self, now: Instant, arrivals: u64) -> Duration {
        if let Some(fixed) = self.settings.fixed_wait {
            return fixed;
        }
        let elapsed = now.saturating_duration_since(self.window_start);
        if elapsed >= Duration::from_secs(1) {
            let rps =
                arrivals.saturating_sub(self.arrivals_at_start) as f64 / elapsed.as_secs_f64();
            if self.exec_count > 0 {
                self.mean_exec_s = self.exec_sum.as_secs_f64() / f64::from(self.exec_count);
            }
            let ns = self
                .settings
                .batching
                .wait_ns(InstanceKind::Inference, self.mean_exec_s, rps);
            self.wait = Duration::from_nanos(ns);
            self.window_start = now;
            self.arrivals_at_start = arrivals;
            self.exec_sum = Duration::ZERO;
            self.exec_count = 0;
        }
        self.wait
    }
}

/// Starts the executor thread. It runs until every [`Sender`] of `jobs` is dropped.
pub fn spawn(
    model: Arc<Model>,
    jobs: Receiver<Job>,
    settings: BatchSettings,
    quota: Option<CpuQuota>,
    metrics: Arc<Metrics>,
) -> std::io::Result<std::thread::JoinHandle<()>> {
    std::thread::Builder::new()
        .name("dilu-worker-exec".into())
        .spawn(move || run(&model, &jobs, settings, quota.as_ref(), &metrics))
}

/// Makes the channel the HTTP side queues jobs on.
pub fn channel() -> (Sender<Job>, Receiver<Job>) {
    std::sync::mpsc::channel()
}

/// The least a batch pays up front (1 µs): enough for the token manager to see the instance busy.
const UPFRONT_MIN_NS: f64 = 1_000.0;

fn run(
    model: &Model,
    jobs: &Receiver<Job>,
    settings: BatchSettings,
    quota: Option<&CpuQuota>,
    metrics: &Metrics,
) {
    let arrivals = || metrics.requests.load(Ordering::Relaxed);
    let mut meter = ThreadMeter::start();
    // Mean CPU time of one sample, learned from the batches run so far (for the up-front charge).
    let mut cpu_per_sample_ns = 0.0f64;
    let mut estimator = WaitEstimator::new(settings, Instant::now(), arrivals());
    let max_batch = settings.max_batch.max(1);
    if let (Some(quota), Some(slo)) = (quota, settings.slo) {
        let slo_ns = u64::try_from(slo.as_nanos()).unwrap_or(u64::MAX);
        quota
            .channel()
            .counters()
            .slo_ns
            .store(slo_ns, Ordering::Relaxed);
    }
    // Requests accepted and not yet answered: those still waiting on the channel plus the batch in hand.
    let waiting = || metrics.queue_depth.load(Ordering::Relaxed).max(0) as u64;
    let dequeued = |job: Job, batch: &mut Vec<Job>| {
        metrics.queue_depth.fetch_sub(1, Ordering::Relaxed);
        // A client that went away needs no answer.
        if !job.reply.is_closed() {
            batch.push(job);
        }
    };
    while let Ok(first) = jobs.recv() {
        let wait = estimator.wait(Instant::now(), arrivals());
        metrics
            .batch_wait_ns
            .store(wait.as_nanos() as u64, Ordering::Relaxed);
        let deadline = first.enqueued + wait;
        let oldest = first.enqueued;
        let mut batch = Vec::with_capacity(max_batch);
        dequeued(first, &mut batch);
        publish_queue(quota, waiting() + 1, Some(oldest));
        let mut open = true;
        while open && batch.len() < max_batch {
            match jobs.try_recv() {
                Ok(job) => {
                    dequeued(job, &mut batch);
                    continue;
                }
                Err(TryRecvError::Disconnected) => break,
                Err(TryRecvError::Empty) => {}
            }
            let now = Instant::now();
            if now >= deadline {
                break;
            }
            match jobs.recv_timeout(deadline - now) {
                Ok(job) => dequeued(job, &mut batch),
                Err(RecvTimeoutError::Timeout) => open = false,
                Err(RecvTimeoutError::Disconnected) => open = false,
            }
        }
        if batch.is_empty() {
            publish_queue(quota, waiting(), None);
            continue;
        }
        publish_queue(quota, waiting() + batch.len() as u64, Some(oldest));
        // The batch holds the executor from its upfront charge to its last one (what it costs under the
        // instance's share, as a profile table's batch time does).
        let began = Instant::now();
        let size = u32::try_from(batch.len()).unwrap_or(u32::MAX);
        // Like a kernel launch on a GPU, a batch pays part of its expected cost before it runs: the token
        // manager then sees the instance busy in the window the work starts, not only after it ends.
        let upfront = if quota.is_some() {
            ((cpu_per_sample_ns * batch.len() as f64) / 2.0).max(UPFRONT_MIN_NS) as u64
        } else {
            0
        };
        if let Some(quota) = quota
            && let Admission::Delayed(ns) = quota.charge(upfront)
        {
            metrics.throttled_ns.fetch_add(ns, Ordering::Relaxed);
        }
        let samples: Vec<&Sample> = batch.iter().map(|j| &j.sample).collect();
        let start = Instant::now();
        // A panic inside the model fails this batch's requests, not the executor.
        let result =
            std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| model.run_batch(&samples)))
                .unwrap_or_else(|_| Err(WorkerError::Inference("the model panicked".into())));
        let exec = start.elapsed();
        let samples_len = batch.len().max(1);
        estimator.record_batch(exec);
        metrics.batches.fetch_add(1, Ordering::Relaxed);
        metrics.batch_size.observe(batch.len() as u64);
        metrics.inference.observe(exec.as_nanos() as u64);
        match result {
            Ok(outputs) => {
                for (job, out) in batch.into_iter().zip(outputs) {
                    let _ = job.reply.send(Ok(out));
                }
            }
            Err(e) => {
                let message = e.to_string();
                for job in batch {
                    let _ = job.reply.send(Err(WorkerError::Inference(message.clone())));
                }
            }
        }
        // Answered: until the next batch's first request is taken, only the count of those waiting is known.
        publish_queue(quota, waiting(), None);
        let used = meter.take();
        metrics.cpu_ns.fetch_add(used, Ordering::Relaxed);
        let per_sample = used as f64 / samples_len as f64;
        cpu_per_sample_ns = if cpu_per_sample_ns == 0.0 {
            per_sample
        } else {
            0.8 * cpu_per_sample_ns + 0.2 * per_sample
        };
        if let Some(quota) = quota
            && let Admission::Delayed(ns) = quota.charge(used.saturating_sub(upfront))
        {
            metrics.throttled_ns.fetch_add(ns, Ordering::Relaxed);
        }
        metrics.batch_seconds.observe(
            size,
            u64::try_from(began.elapsed().as_nanos()).unwrap_or(u64::MAX),
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wait_follows_the_rule_once_a_second() {
        let settings = BatchSettings {
            max_batch: 8,
            fixed_wait: None,
            batching: BatchingConfig::default(),
            slo: None,
        };
        let t0 = Instant::now();
        let mut e = WaitEstimator::new(settings, t0, 0);
        for _ in 0..10 {
            e.record_batch(Duration::from_millis(30));
        }
        // Within the first second the initial wait (0) holds.
        assert_eq!(e.wait(t0 + Duration::from_millis(500), 50), Duration::ZERO);
        // 100 arrivals in a second with ē = 30 ms: requests every 10 ms come faster than batches finish.
        assert_eq!(
            e.wait(t0 + Duration::from_secs(1), 100),
            Duration::from_millis(5)
        );
        // The next second: 10 arrivals, ē = 30 ms < 100 ms between requests: no wait.
        e.record_batch(Duration::from_millis(30));
        assert_eq!(e.wait(t0 + Duration::from_secs(2), 110), Duration::ZERO);
    }

    #[test]
    fn fixed_wait_overrides_the_rule() {
        let settings = BatchSettings {
            max_batch: 8,
            fixed_wait: Some(Duration::from_millis(7)),
            batching: BatchingConfig::default(),
            slo: None,
        };
        let t0 = Instant::now();
        let mut e = WaitEstimator::new(settings, t0, 0);
        assert_eq!(
            e.wait(t0 + Duration::from_secs(3), 1000),
            Duration::from_millis(7)
        );
    }
}
