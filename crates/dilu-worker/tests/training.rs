//! Training functions: the loss really falls, the loop is served over HTTP, and a CPU quota channel slows it
//! down the way it slows the inference executor.

mod common;

use std::path::Path;
use std::time::{Duration, Instant};

use common::Served;
use dilu_quota::{AgentChannel, ChannelSpec, DEFAULT_WINDOW_NS, DeviceKind};
use dilu_worker::training::{Trainer, TrainingConfig};
use reqwest::blocking::Client;
use serde_json::Value;

/// A model small enough to train quickly in an unoptimised build: 16 → 64 → 64 → 4.
fn small() -> TrainingConfig {
    TrainingConfig {
        input_dim: 16,
        hidden: 64,
        layers: 2,
        classes: 4,
        batch_size: 32,
        train_samples: 2048,
        eval_samples: 512,
        eval_every: 50,
        ..TrainingConfig::default()
    }
}

/// `serve_training` on 127.0.0.1:0 in its own runtime, until dropped (or until it finishes by itself).
struct Training(Served);

impl Training {
    fn start(config: TrainingConfig) -> Training {
        Training(Served::spawn(
            1,
            "/health",
            Duration::from_secs(30),
            move |listener, stopped| {
                dilu_worker::serve_training(config, listener, async move {
                    let _ = stopped.await;
                })
            },
        ))
    }

    fn url(&self, path: &str) -> String {
        self.0.url(path)
    }

    fn status(&self) -> Value {
        Client::new()
            .get(self.url("/status"))
            .send()
            .unwrap()
            .json()
            .unwrap()
    }

    /// Stops serving and returns what `serve_training` returned.
    fn stop(self) -> Result<(), dilu_worker::WorkerError> {
        self.0.stop()
    }
}

fn cpu_channel(dir: &Path, share: f64) -> std::path::PathBuf {
    let path = dir.join("cpu.quota");
    let spec = ChannelSpec {
        device_uuid: "cpu-0".into(),
        device_kind: DeviceKind::Cpu,
        budget_per_window: (DEFAULT_WINDOW_NS as f64 * share) as u64,
        window_ns: DEFAULT_WINDOW_NS,
        ..ChannelSpec::default()
    };
    AgentChannel::create(&path, &spec, 0o600).unwrap();
    path
}

#[test]
fn loss_falls_and_held_out_accuracy_exceeds_90_percent() {
    let config = small();
    config.validate().unwrap();
    let mut trainer = Trainer::new(&config).unwrap();
    let before = trainer.evaluate();
    let first_batches: f32 = (0..10).map(|_| trainer.step()).sum::<f32>() / 10.0;
    for _ in 10..400 {
        trainer.step();
    }
    let last_batches: f32 = (0..10).map(|_| trainer.step()).sum::<f32>() / 10.0;
    let after = trainer.evaluate();
    eprintln!(
        "held-out before {before:?}, after 410 iterations {after:?}; batch loss {first_batches:.4} -> \
         {last_batches:.4}"
    );
    // Chance level first: 4 classes.
    assert!(before.accuracy < 0.5, "{before:?}");
    assert!(
        after.loss < 0.5 * before.loss,
        "held-out loss {} did not halve from {}",
        after.loss,
        before.loss
    );
    assert!(
        last_batches < 0.5 * first_batches,
        "training loss {last_batches} did not halve from {first_batches}"
    );
    assert!(after.accuracy > 0.9, "held-out accuracy {}", after.accuracy);
    assert_eq!(trainer.iterations(), 410);
}

#[test]
fn the_same_seed_trains_the_same_numbers() {
    let config = small();
    let mut a = Trainer::new(&config).unwrap();
    let mut b = Trainer::new(&config).unwrap();
    let la: Vec<f32> = (0..20).map(|_| a.step()).collect();
    let lb: Vec<f32> = (0..20).map(|_| b.step()).collect();
    assert_eq!(la, lb);
    let mut c = Trainer::new(&TrainingConfig { seed: 2, ..config }).unwrap();
    let lc: Vec<f32> = (0..20).map(|_| c.step()).collect();
    assert_ne!(la, lc);
}

#[test]
fn momentum_free_sgd_also_learns() {
    let config = TrainingConfig {
        momentum: 0.0,
        learning_rate: 0.1,
        ..small()
    };
    let mut trainer = Trainer::new(&config).unwrap();
    let before = trainer.evaluate();
    for _ in 0..400 {
        trainer.step();
    }
    let after = trainer.evaluate();
    assert!(after.loss < 0.5 * before.loss, "{before:?} -> {after:?}");
    assert!(after.accuracy > 0.9, "{after:?}");
}

#[test]
fn status_and_metrics_report_a_running_loop() {
    let training = Training::start(small());
    std::thread::sleep(Duration::from_millis(1200));
    let first = training.status();
    std::thread::sleep(Duration::from_millis(300));
    let second = training.status();
    eprintln!("status: {second}");
    for field in [
        "iterations",
        "iterations_per_second",
        "samples_per_second",
        "loss",
        "accuracy",
        "eval_loss",
        "cpu_seconds",
        "throttled_seconds",
    ] {
        assert!(second[field].is_number(), "{field} missing in {second}");
    }
    let iterations = |v: &Value| v["iterations"].as_u64().unwrap();
    assert!(iterations(&first) > 0, "{first}");
    assert!(
        iterations(&second) > iterations(&first),
        "{first} -> {second}"
    );
    let rate = second["iterations_per_second"].as_f64().unwrap();
    assert!(rate > 0.0, "{second}");
    assert!(
        (second["samples_per_second"].as_f64().unwrap() - 32.0 * rate).abs() < 1e-6 * rate.max(1.0),
        "{second}"
    );
    assert!(second["cpu_seconds"].as_f64().unwrap() > 0.0);
    assert_eq!(second["throttled_seconds"].as_f64(), Some(0.0));
    assert!(second["evaluations"].as_u64().unwrap() >= 1);
    let accuracy = second["accuracy"].as_f64().unwrap();
    assert!((0.0..=1.0).contains(&accuracy), "{second}");
    assert_eq!(second["finished"], Value::Bool(false));

    let client = Client::new();
    let response = client.get(training.url("/metrics")).send().unwrap();
    assert_eq!(response.status(), 200);
    let text = response.text().unwrap();
    let metric = |name: &str| -> f64 {
        dilu_core::prometheus::value(&text, name)
            .unwrap_or_else(|| panic!("{name} missing from\n{text}"))
    };
    assert!(metric("dilu_training_iterations_total") >= iterations(&second) as f64);
    assert!(metric("dilu_training_iterations_per_second") >= 0.0);
    assert!(metric("dilu_training_loss").is_finite());
    assert!(metric("dilu_training_cpu_seconds_total") > 0.0);
    assert_eq!(metric("dilu_training_cpu_throttled_seconds_total"), 0.0);
    promtool_check(&text);

    assert_eq!(
        client.get(training.url("/nope")).send().unwrap().status(),
        404
    );
    training.stop().unwrap();
}

/// `promtool check metrics` on `text`, when promtool is installed.
fn promtool_check(text: &str) {
    use std::io::Write;
    let child = std::process::Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn();
    let Ok(mut child) = child else {
        eprintln!("promtool is not installed: the exposition format is not linted");
        return;
    };
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "promtool check metrics failed:\n{}{}\n{text}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn max_iterations_ends_the_job() {
    let config = TrainingConfig {
        max_iterations: Some(30),
        ..small()
    };
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.set_nonblocking(true).unwrap();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let result = rt.block_on(async move {
        let listener = tokio::net::TcpListener::from_std(listener).unwrap();
        tokio::time::timeout(
            Duration::from_secs(60),
            dilu_worker::serve_training(config, listener, std::future::pending()),
        )
        .await
    });
    result.expect("30 iterations end the job").unwrap();
}

#[test]
fn an_invalid_config_or_quota_is_refused_before_serving() {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let listener = || {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.set_nonblocking(true).unwrap();
        tokio::net::TcpListener::from_std(l).unwrap()
    };
    let err = rt
        .block_on(async {
            let config = TrainingConfig {
                hidden: 0,
                ..small()
            };
            dilu_worker::serve_training(config, listener(), std::future::pending()).await
        })
        .unwrap_err();
    assert!(err.to_string().contains("training.hidden = 0"), "{err}");
    let err = rt
        .block_on(async {
            let config = TrainingConfig {
                quota_file: Some("/nonexistent/cpu.quota".into()),
                ..small()
            };
            dilu_worker::serve_training(config, listener(), std::future::pending()).await
        })
        .unwrap_err();
    assert!(err.to_string().contains("quota"), "{err}");
}

/// Iterations per second measured over the second `[warmup, warmup + 1 s]` of a run of `config`.
fn measured_rate(config: TrainingConfig) -> (f64, Value) {
    let training = Training::start(config);
    std::thread::sleep(Duration::from_millis(300));
    let a = training.status();
    let t = Instant::now();
    std::thread::sleep(Duration::from_millis(1500));
    let b = training.status();
    let dt = t.elapsed().as_secs_f64();
    let rate = (b["iterations"].as_u64().unwrap() - a["iterations"].as_u64().unwrap()) as f64 / dt;
    training.stop().unwrap();
    (rate, b)
}

#[test]
fn a_small_cpu_quota_slows_training_down() {
    let dir = tempfile::tempdir().unwrap();
    let path = cpu_channel(dir.path(), 0.2);
    let (free, free_status) = measured_rate(small());
    let (throttled, throttled_status) = measured_rate(TrainingConfig {
        quota_file: Some(path),
        ..small()
    });
    let ratio = throttled / free;
    eprintln!(
        "iterations/s unthrottled {free:.1} (status says {}), at 20% of a core {throttled:.1} (status says {}): \
         ratio {ratio:.3}; throttled status {throttled_status}",
        free_status["iterations_per_second"], throttled_status["iterations_per_second"]
    );
    assert!(free > 0.0 && throttled > 0.0);
    // 20% of a core should give about 0.2 of the free rate; loosely, because the machine is shared.
    assert!(ratio < 0.5, "throttled/unthrottled = {ratio:.3}");
    assert!(ratio > 0.05, "throttled/unthrottled = {ratio:.3}");
    assert!(throttled_status["throttled_seconds"].as_f64().unwrap() > 0.0);
    assert!(throttled_status["throttled_iterations"].as_u64().unwrap() > 0);
    assert_eq!(free_status["throttled_seconds"].as_f64(), Some(0.0));
    // The status's sliding rate agrees with the measured one.
    let reported = throttled_status["iterations_per_second"].as_f64().unwrap();
    assert!(
        (reported - throttled).abs() < 0.5 * throttled + 5.0,
        "reported {reported}, measured {throttled}"
    );
}
