//! The training loop: mini-batches drawn from the training set, one SGD step per iteration, an evaluation on
//! the held-out set every `eval_every` iterations, and after every iteration the thread's CPU time charged
//! to the instance's CPU quota (waiting there while the budget is spent), exactly as the inference executor
//! charges its batches.

use std::sync::atomic::Ordering::Relaxed;
use std::sync::atomic::{AtomicBool, AtomicU64};
use std::time::Instant;

use dilu_quota::{Admission, CpuQuota, ThreadMeter};

use super::config::TrainingConfig;
use super::data::{self, Dataset, SplitMix64};
use super::mlp::{Evaluation, Mlp, Workspace};
use crate::error::WorkerError;

/// A model being trained on its data set; [`Trainer::step`] runs one iteration.
#[derive(Debug, Clone)]
pub struct Trainer {
    model: Mlp,
    train: Dataset,
    eval: Dataset,
    order: Vec<usize>,
    cursor: usize,
    rng: SplitMix64,
    batch_features: Vec<f32>,
    batch_labels: Vec<u32>,
    batch_size: usize,
    learning_rate: f32,
    momentum: f32,
    workspace: Workspace,
    iterations: u64,
}

impl Trainer {
    /// The model and data of `config`, before any training. Errors: what [`TrainingConfig::validate`]
    /// refuses.
    pub fn new(config: &TrainingConfig) -> Result<Self, WorkerError> {
        config.validate()?;
        let (train, eval) = data::train_and_eval(
            config.input_dim,
            config.classes,
            config.noise,
            config.train_samples,
            config.eval_samples,
            config.seed,
        );
        let model = Mlp::new(&config.widths(), config.seed);
        let batch_size = config.batch_size.max(1);
        let workspace = model.workspace(batch_size);
        Ok(Self {
            order: (0..train.len()).collect(),
            // An exhausted cursor makes the first step shuffle.
            cursor: train.len(),
            rng: SplitMix64::new(config.seed ^ 0x6f72_6465_7200_0000),
            batch_features: Vec::with_capacity(batch_size * config.input_dim),
            batch_labels: Vec::with_capacity(batch_size),
            batch_size,
            learning_rate: config.learning_rate as f32,
            momentum: config.momentum as f32,
            workspace,
            model,
            train,
            eval,
            iterations: 0,
        })
    }

    /// One iteration: the next mini-batch (a new shuffled epoch when the current one is used up), forward,
    /// backward, update. Returns the batch's mean loss (before the update).
    pub fn step(&mut self) -> f32 {
        self.batch_features.clear();
        self.batch_labels.clear();
        while self.batch_labels.len() < self.batch_size {
            if self.cursor >= self.order.len() {
                self.rng.shuffle(&mut self.order);
                self.cursor = 0;
            }
            let take =
                (self.batch_size - self.batch_labels.len()).min(self.order.len() - self.cursor);
            for &index in &self.order[self.cursor..self.cursor + take] {
                self.batch_features.extend_from_slice(self.train.row(index));
                self.batch_labels.push(self.train.labels[index]);
            }
            self.cursor += take;
        }
        self.iterations += 1;
        self.model.train_step(
            &self.batch_features,
            &self.batch_labels,
            self.learning_rate,
            self.momentum,
            &mut self.workspace,
        )
    }

    /// Loss and accuracy on the held-out set.
    pub fn evaluate(&mut self) -> Evaluation {
        self.model.evaluate(&self.eval, &mut self.workspace)
    }

    /// Loss and accuracy on the training set.
    pub fn evaluate_train(&mut self) -> Evaluation {
        self.model.evaluate(&self.train, &mut self.workspace)
    }

    /// Iterations run so far.
    pub fn iterations(&self) -> u64 {
        self.iterations
    }

    /// The model.
    pub fn model(&self) -> &Mlp {
        &self.model
    }
}

/// What the training thread publishes; read by the HTTP side. Floating-point values are stored as their
/// bit patterns.
#[derive(Debug, Default)]
pub struct Stats {
    /// Set once the loop has started (after the first evaluation).
    pub running: AtomicBool,
    /// Set when the loop has stopped.
    pub finished: AtomicBool,
    /// Iterations done.
    pub iterations: AtomicU64,
    /// Exponential moving average of the training batches' loss (α = 0.05), f64 bits.
    pub loss: AtomicU64,
    /// Held-out loss at the last evaluation, f64 bits.
    pub eval_loss: AtomicU64,
    /// Held-out accuracy at the last evaluation, f64 bits.
    pub accuracy: AtomicU64,
    /// Evaluations done.
    pub evaluations: AtomicU64,
    /// CPU time the training thread used (and charged), ns.
    pub cpu_ns: AtomicU64,
    /// Time the training thread waited for CPU budget, ns.
    pub throttled_ns: AtomicU64,
    /// Iterations whose charge had to wait for budget.
    pub throttled_iterations: AtomicU64,
    /// Iterations per second over the last second, f64 bits (kept by [`RateWindow`]).
    pub iterations_per_second: AtomicU64,
}

/// Reads an f64 stored as bits.
pub fn load_f64(cell: &AtomicU64) -> f64 {
    f64::from_bits(cell.load(Relaxed))
}

/// Stores an f64 as bits.
pub fn store_f64(cell: &AtomicU64, value: f64) {
    cell.store(value.to_bits(), Relaxed);
}

/// The weight of the newest batch in the moving average of the training loss.
const LOSS_EMA_ALPHA: f64 = 0.05;

/// Runs `trainer` until `stop` is set or `max_iterations` are done, publishing into `stats` and charging
/// every iteration's CPU time to `quota` (when there is one). Must run on its own thread: it measures that
/// thread's CPU time.
pub fn run(
    mut trainer: Trainer,
    eval_every: u64,
    max_iterations: Option<u64>,
    quota: Option<&CpuQuota>,
    stats: &Stats,
    stop: &AtomicBool,
) {
    let mut meter = ThreadMeter::start();
    let publish_eval = |trainer: &mut Trainer| {
        let e = trainer.evaluate();
        store_f64(&stats.eval_loss, e.loss);
        store_f64(&stats.accuracy, e.accuracy);
        stats.evaluations.fetch_add(1, Relaxed);
        e
    };
    let first = publish_eval(&mut trainer);
    // Until the first batch the best estimate of the training loss is the held-out loss.
    let mut loss = first.loss;
    store_f64(&stats.loss, loss);
    stats.running.store(true, Relaxed);
    let charge = |meter: &mut ThreadMeter| {
        let used = meter.take();
        stats.cpu_ns.fetch_add(used, Relaxed);
        if let Some(quota) = quota
            && let Admission::Delayed(ns) = quota.charge(used)
        {
            stats.throttled_ns.fetch_add(ns, Relaxed);
            stats.throttled_iterations.fetch_add(1, Relaxed);
        }
    };
    charge(&mut meter);
    while !stop.load(Relaxed) && max_iterations.is_none_or(|max| trainer.iterations() < max) {
        let batch_loss = f64::from(trainer.step());
        loss = if trainer.iterations() == 1 {
            batch_loss
        } else {
            loss + LOSS_EMA_ALPHA * (batch_loss - loss)
        };
        store_f64(&stats.loss, loss);
        if trainer.iterations().is_multiple_of(eval_every) {
            publish_eval(&mut trainer);
        }
        stats.iterations.store(trainer.iterations(), Relaxed);
        charge(&mut meter);
    }
    stats.finished.store(true, Relaxed);
}

/// Iterations per second over a sliding window of about one second, from samples of the iteration counter
/// taken at least every 100 ms (by the server's sampler, so the rate falls even while the training thread
/// waits for budget).
#[derive(Debug)]
pub struct RateWindow {
    samples: std::collections::VecDeque<(Instant, u64)>,
    window: std::time::Duration,
}

impl RateWindow {
    /// A window of `window`, starting with `iterations` at `now`.
    pub fn new(window: std::time::Duration, now: Instant, iterations: u64) -> Self {
        Self {
            samples: std::iter::once((now, iterations)).collect(),
            window,
        }
    }

    /// Records `iterations` at `now` and returns the rate over the window (over the time since the first
    /// sample while less than a window has passed).
    pub fn record(&mut self, now: Instant, iterations: u64) -> f64 {
        self.samples.push_back((now, iterations));
        // Keep the newest sample at least a window old as the start, drop the ones before it.
        while self.samples.len() > 2
            && self
                .samples
                .get(1)
                .is_some_and(|&(t, _)| now.saturating_duration_since(t) >= self.window)
        {
            self.samples.pop_front();
        }
        match self.samples.front() {
            Some(&(t0, n0)) => {
                let dt = now.saturating_duration_since(t0).as_secs_f64();
                if dt > 0.0 {
                    iterations.saturating_sub(n0) as f64 / dt
                } else {
                    0.0
                }
            }
            None => 0.0,
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn rate_window_slides_over_one_second() {
        let t0 = Instant::now();
        let mut w = RateWindow::new(Duration::from_secs(1), t0, 0);
        let ms = |n| t0 + Duration::from_millis(n);
        assert!((w.record(ms(500), 50) - 100.0).abs() < 1e-9);
        for k in 6..=20 {
            w.record(ms(k * 100), k * 10);
        }
        // 100/s throughout.
        assert!((w.record(ms(2100), 210) - 100.0).abs() < 1e-9);
        // The loop stops: a second later the rate is 0.
        for k in 22..=32 {
            w.record(ms(k * 100), 210);
        }
        assert_eq!(w.record(ms(3300), 210), 0.0);
        assert!(w.samples.len() <= 13, "{}", w.samples.len());
    }

    #[test]
    fn the_run_loop_stops_at_max_iterations_and_publishes() {
        let config = TrainingConfig {
            input_dim: 4,
            hidden: 8,
            layers: 1,
            classes: 3,
            batch_size: 8,
            train_samples: 100,
            eval_samples: 30,
            eval_every: 10,
            ..TrainingConfig::default()
        };
        let stats = Stats::default();
        let stop = AtomicBool::new(false);
        run(
            Trainer::new(&config).unwrap(),
            10,
            Some(25),
            None,
            &stats,
            &stop,
        );
        assert_eq!(stats.iterations.load(Relaxed), 25);
        assert_eq!(stats.evaluations.load(Relaxed), 3);
        assert!(stats.finished.load(Relaxed) && stats.running.load(Relaxed));
        assert!(load_f64(&stats.loss).is_finite());
        assert!((0.0..=1.0).contains(&load_f64(&stats.accuracy)));
        assert!(stats.cpu_ns.load(Relaxed) > 0);
    }
}
