//! Training functions: a real training loop that draws CPU-time tokens exactly as the inference worker does,
//! so that elastic training (the co-located, preemptible half of Dilu's workloads, `docs/algorithms.md`) runs and
//! is throttled on any machine.
//!
//! The job is a small multi-layer perceptron ([`mlp::Mlp`]: configurable input width, hidden width, depth
//! and classes) trained with mini-batch SGD (momentum optional) and softmax cross-entropy on a deterministic
//! synthetic data set ([`data`]: Gaussian clusters, two per class, from a seeded PRNG). Forward and backward
//! passes are written by hand in f32 with cache-friendly loops: a deep-learning framework (candle, burn, tch)
//! would add minutes of compile time to every CI run on our 2-core machines for a model this small, and
//! nothing here needs one.
//!
//! [`serve_training`] runs the loop on a dedicated thread ([`trainer::run`]) and charges each iteration's
//! thread CPU time to the instance's CPU quota ([`dilu_quota::CpuQuota`], from
//! [`TrainingConfig::quota_file`] or `DILU_QUOTA_FILE`; unthrottled when neither names one), waiting there
//! while the budget is spent. It serves:
//!
//! - `GET /health`: 200 once the loop runs (503 until the initial evaluation on the held-out set is done).
//! - `GET /status`: JSON [`TrainingStatus`]: iterations, iterations and samples per second over the last
//!   second, the training loss (moving average), the held-out accuracy and loss (evaluated every
//!   `eval_every` iterations), CPU and throttled seconds.
//! - `GET /metrics`: the same as Prometheus text (`dilu_training_*`).
//!
//! Training runs until the shutdown future resolves, or until `max_iterations` are done: then the server
//! stops as well and [`serve_training`] returns, as a finished training job does.

pub mod config;
pub mod data;
pub mod mlp;
pub mod trainer;

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::sync::atomic::Ordering::Relaxed;
use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use dilu_core::prometheus::Family;
use serde::Serialize;
use tokio::net::TcpListener;

pub use config::TrainingConfig;
pub use mlp::{Evaluation, Mlp};
pub use trainer::Trainer;

use crate::error::WorkerError;
use trainer::{Stats, load_f64, store_f64};

/// How often the iteration rate is re-derived.
pub const RATE_SAMPLE_INTERVAL: Duration = Duration::from_millis(50);

/// The window the iteration rate is measured over.
pub const RATE_WINDOW: Duration = Duration::from_secs(1);

/// How long shutting down waits for the training thread to finish its iteration (a thread held by a budget
/// of 0 is left behind and ends with the process).
const STOP_GRACE: Duration = Duration::from_secs(2);

/// The body of `GET /status`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct TrainingStatus {
    /// Iterations (SGD steps) done.
    pub iterations: u64,
    /// Iterations per second over the last second (sliding, re-derived every 50 ms).
    pub iterations_per_second: f64,
    /// Training samples per second over the last second (`iterations_per_second × batch_size`).
    pub samples_per_second: f64,
    /// The training loss: a moving average of the mini-batches' softmax cross-entropy (nats).
    pub loss: f64,
    /// Accuracy on the held-out set at the last evaluation.
    pub accuracy: f64,
    /// Loss on the held-out set at the last evaluation.
    pub eval_loss: f64,
    /// Evaluations done (one before the first iteration, then one every `eval_every` iterations).
    pub evaluations: u64,
    /// CPU time the training thread used, all of it charged to the quota (seconds).
    pub cpu_seconds: f64,
    /// Time the training thread waited for CPU budget (seconds).
    pub throttled_seconds: f64,
    /// Iterations whose charge had to wait for budget.
    pub throttled_iterations: u64,
    /// Samples per mini-batch.
    pub batch_size: usize,
    /// Trainable parameters of the model.
    pub parameters: u64,
    /// Seconds since the server started.
    pub uptime_seconds: f64,
    /// Whether the loop has stopped (`max_iterations` reached or shutting down).
    pub finished: bool,
}

/// What the handlers share.
struct AppState {
    stats: Arc<Stats>,
    batch_size: usize,
    parameters: u64,
    started: Instant,
}

impl AppState {
    fn status(&self) -> TrainingStatus {
        let s = &self.stats;
        let rate = load_f64(&s.iterations_per_second);
        TrainingStatus {
            iterations: s.iterations.load(Relaxed),
            iterations_per_second: rate,
            samples_per_second: rate * self.batch_size as f64,
            loss: load_f64(&s.loss),
            accuracy: load_f64(&s.accuracy),
            eval_loss: load_f64(&s.eval_loss),
            evaluations: s.evaluations.load(Relaxed),
            cpu_seconds: s.cpu_ns.load(Relaxed) as f64 / 1e9,
            throttled_seconds: s.throttled_ns.load(Relaxed) as f64 / 1e9,
            throttled_iterations: s.throttled_iterations.load(Relaxed),
            batch_size: self.batch_size,
            parameters: self.parameters,
            uptime_seconds: self.started.elapsed().as_secs_f64(),
            finished: s.finished.load(Relaxed),
        }
    }
}

type Shared = State<Arc<AppState>>;

async fn health(State(st): Shared) -> Response {
    if st.stats.running.load(Relaxed) {
        (StatusCode::OK, "ok").into_response()
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "starting").into_response()
    }
}

async fn status(State(st): Shared) -> axum::Json<TrainingStatus> {
    axum::Json(st.status())
}

async fn metrics(State(st): Shared) -> Response {
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        render_metrics(&st.status()),
    )
        .into_response()
}

async fn not_found() -> Response {
    (
        StatusCode::NOT_FOUND,
        axum::Json(serde_json::json!({ "error": "no such endpoint" })),
    )
        .into_response()
}

/// The Prometheus text exposition of `status` (metric names `dilu_training_*`).
pub fn render_metrics(status: &TrainingStatus) -> String {
    let metrics: [(&str, &str, &str, f64); 12] = [
        (
            "dilu_training_iterations_total",
            "counter",
            "Training iterations (SGD steps) done.",
            status.iterations as f64,
        ),
        (
            "dilu_training_samples_total",
            "counter",
            "Training samples processed.",
            status.iterations as f64 * status.batch_size as f64,
        ),
        (
            "dilu_training_iterations_per_second",
            "gauge",
            "Training iterations per second over the last second.",
            status.iterations_per_second,
        ),
        (
            "dilu_training_samples_per_second",
            "gauge",
            "Training samples per second over the last second.",
            status.samples_per_second,
        ),
        (
            "dilu_training_loss",
            "gauge",
            "Moving average of the training batches' cross-entropy loss.",
            status.loss,
        ),
        (
            "dilu_training_eval_loss",
            "gauge",
            "Cross-entropy loss on the held-out set at the last evaluation.",
            status.eval_loss,
        ),
        (
            "dilu_training_accuracy",
            "gauge",
            "Accuracy on the held-out set at the last evaluation.",
            status.accuracy,
        ),
        (
            "dilu_training_evaluations_total",
            "counter",
            "Evaluations on the held-out set.",
            status.evaluations as f64,
        ),
        (
            "dilu_training_cpu_seconds_total",
            "counter",
            "CPU time the training thread used and charged to its quota.",
            status.cpu_seconds,
        ),
        (
            "dilu_training_cpu_throttled_seconds_total",
            "counter",
            "Time the training thread waited for CPU budget.",
            status.throttled_seconds,
        ),
        (
            "dilu_training_throttled_iterations_total",
            "counter",
            "Iterations whose charge waited for CPU budget.",
            status.throttled_iterations as f64,
        ),
        (
            "dilu_training_parameters",
            "gauge",
            "Trainable parameters of the model.",
            status.parameters as f64,
        ),
    ];
    let mut out = String::new();
    for (name, kind, help, value) in metrics {
        Family::new(&mut out, name, kind, help).sample(&[], value);
    }
    Family::new(
        &mut out,
        "dilu_training_finished",
        "gauge",
        "Whether the training loop has stopped.",
    )
    .sample(&[], f64::from(u8::from(status.finished)));
    out
}

fn router(state: Arc<AppState>) -> Router {
    Router::new()
        .route("/health", get(health))
        .route("/status", get(status))
        .route("/metrics", get(metrics))
        .fallback(not_found)
        .with_state(state)
}

/// Trains `config`'s model on a dedicated thread and serves its progress on `listener` until `shutdown`
/// resolves or `max_iterations` are done.
///
/// The CPU quota comes from `config.quota_file`, or from `DILU_QUOTA_FILE` when that is `None` (unthrottled
/// when neither names one; under `DILU_QUOTA_DIR` a channel not created yet is waited for, up to
/// `DILU_QUOTA_WAIT_S` seconds). The data set is generated before serving starts (tens of milliseconds for the
/// defaults). Errors: an invalid config or quota channel (before serving), a training thread
/// that cannot start or that panics, or an I/O failure of the server.
pub async fn serve_training<F>(
    config: TrainingConfig,
    listener: TcpListener,
    shutdown: F,
) -> Result<(), WorkerError>
where
    F: Future<Output = ()> + Send + 'static,
{
    let trainer = Trainer::new(&config)?;
    let quota = crate::server::open_quota(config.quota_file.as_deref()).await?;
    let started = Instant::now();
    let stats = Arc::new(Stats::default());
    store_f64(&stats.loss, f64::NAN);
    store_f64(&stats.eval_loss, f64::NAN);
    store_f64(&stats.accuracy, f64::NAN);
    let stop = Arc::new(AtomicBool::new(false));
    let (done_tx, done_rx) = tokio::sync::oneshot::channel::<()>();
    let thread = {
        let stats = Arc::clone(&stats);
        let stop = Arc::clone(&stop);
        let (eval_every, max_iterations) = (config.eval_every, config.max_iterations);
        std::thread::Builder::new()
            .name("dilu-training".into())
            .spawn(move || {
                trainer::run(
                    trainer,
                    eval_every,
                    max_iterations,
                    quota.as_ref(),
                    &stats,
                    &stop,
                );
                // The server may be gone already; nobody else to tell.
                let _ = done_tx.send(());
            })?
    };

    let sampler = {
        let stats = Arc::clone(&stats);
        tokio::spawn(async move {
            let mut window = RateWindowClock::new(&stats);
            let mut tick = tokio::time::interval(RATE_SAMPLE_INTERVAL);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                window.sample(&stats);
            }
        })
    };

    let state = Arc::new(AppState {
        stats: Arc::clone(&stats),
        batch_size: config.batch_size,
        parameters: config.parameters(),
        started,
    });
    let stop_serving = async move {
        tokio::select! {
            () = shutdown => {}
            // Finished (or the thread died, dropping the sender): either way there is nothing left to serve.
            _ = done_rx => {}
        }
    };
    let served = dilu_http::serve(
        listener,
        router(state),
        dilu_http::Limits::default(),
        stop_serving,
    )
    .await;
    stop.store(true, Relaxed);
    sampler.abort();
    let deadline = Instant::now() + STOP_GRACE;
    while !thread.is_finished() && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    if thread.is_finished() && thread.join().is_err() {
        return Err(WorkerError::Inference(
            "the training thread panicked".into(),
        ));
    }
    served?;
    Ok(())
}

/// [`trainer::RateWindow`] fed from the stats' iteration counter.
struct RateWindowClock {
    window: trainer::RateWindow,
}

impl RateWindowClock {
    fn new(stats: &Stats) -> Self {
        Self {
            window: trainer::RateWindow::new(
                RATE_WINDOW,
                Instant::now(),
                stats.iterations.load(Relaxed),
            ),
        }
    }

    fn sample(&mut self, stats: &Stats) {
        let rate = self
            .window
            .record(Instant::now(), stats.iterations.load(Relaxed));
        store_f64(&stats.iterations_per_second, rate);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metrics_render_every_sample_with_help_and_type() {
        let status = TrainingStatus {
            iterations: 10,
            iterations_per_second: 2.5,
            samples_per_second: 160.0,
            loss: f64::NAN,
            accuracy: 0.5,
            eval_loss: f64::INFINITY,
            evaluations: 1,
            cpu_seconds: 0.25,
            throttled_seconds: 0.0,
            throttled_iterations: 0,
            batch_size: 64,
            parameters: 100,
            uptime_seconds: 1.0,
            finished: false,
        };
        let text = render_metrics(&status);
        assert!(
            text.contains("dilu_training_iterations_total 10\n"),
            "{text}"
        );
        assert!(text.contains("dilu_training_samples_total 640\n"), "{text}");
        assert!(
            text.contains("dilu_training_iterations_per_second 2.5\n"),
            "{text}"
        );
        assert!(text.contains("dilu_training_loss NaN\n"), "{text}");
        assert!(text.contains("dilu_training_eval_loss +Inf\n"), "{text}");
        for line in text.lines().filter(|l| !l.starts_with('#')) {
            let name = line.split(' ').next().unwrap_or_default();
            assert!(text.contains(&format!("# HELP {name} ")), "{name}");
            assert!(text.contains(&format!("# TYPE {name} ")), "{name}");
        }
    }
}
