//! Shared test helpers: the model cache (fetched once with `scripts/fetch-models.sh`) and an in-process
//! worker on 127.0.0.1:0.

#![allow(dead_code)]

use std::os::fd::AsRawFd;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use dilu_worker::WorkerConfig;

/// The model cache: `$DILU_MODEL_CACHE`, else `~/.cache/dilu/models`.
pub fn cache_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("DILU_MODEL_CACHE").filter(|d| !d.is_empty()) {
        return PathBuf::from(dir);
    }
    let home = std::env::var_os("HOME").map_or_else(|| PathBuf::from("/tmp"), PathBuf::from);
    home.join(".cache/dilu/models")
}

/// SqueezeNet (ONNX's light test model: real architecture, constant weights) from the cache.
pub fn squeezenet() -> Option<PathBuf> {
    cached("onnx-light/light_squeezenet.onnx")
}

/// PaddleOCR's text-direction classifier (real weights) from the cache.
pub fn ppocr_cls() -> Option<PathBuf> {
    cached("ppocr/ch_ppocr_mobile_v2.0_cls_infer.onnx")
}

/// ONNX's light ResNet-50 (real architecture, constant weights; its batch is fixed at 1) from the cache.
pub fn resnet50() -> Option<PathBuf> {
    cached("onnx-light/light_resnet50.onnx")
}

/// The ONNX Runtime version `scripts/fetch-models.sh` fetches (the one the `ort` crate supports).
pub const ONNXRUNTIME_VERSION: &str = "1.31.1";

/// ONNX Runtime's shared library from the cache (`CACHE/onnxruntime/libonnxruntime.so.VERSION`), fetched like
/// a model.
pub fn onnxruntime_lib() -> Option<PathBuf> {
    cached(&format!(
        "onnxruntime/libonnxruntime.so.{ONNXRUNTIME_VERSION}"
    ))
}

/// A model from the cache, fetching the cache once (under a file lock) when it is missing. `None` (after
/// printing `SKIPPED: …`) when it cannot be had; panics instead under `CI=true`.
pub fn cached(relative: &str) -> Option<PathBuf> {
    let model = cache_dir().join(relative);
    if model.is_file() {
        return Some(model);
    }
    let lock_path = std::env::temp_dir().join("dilu-fetch-models.lock");
    let lock = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&lock_path)
        .expect("open the fetch lock");
    // SAFETY: flock on a descriptor we own; the lock is released when `lock` is closed.
    unsafe { libc::flock(lock.as_raw_fd(), libc::LOCK_EX) };
    if !model.is_file() {
        let script =
            PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../scripts/fetch-models.sh");
        let status = std::process::Command::new("bash")
            .arg(&script)
            .arg(cache_dir())
            .status();
        if !matches!(status, Ok(s) if s.success()) || !model.is_file() {
            let why = format!(
                "SKIPPED: {} is missing and {} failed ({status:?})",
                model.display(),
                script.display()
            );
            eprintln!("\n==================== {why} ====================\n");
            assert!(std::env::var("CI").as_deref() != Ok("true"), "{why}");
            return None;
        }
    }
    drop(lock);
    Some(model)
}

/// A server (worker or trainer) running in-process on 127.0.0.1:0 in its own tokio runtime until dropped.
pub struct Served {
    /// `http://127.0.0.1:PORT`.
    pub base: String,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<Result<(), dilu_worker::WorkerError>>>,
}

/// The built-in worker, served in-process.
pub type Worker = Served;

impl Served {
    /// Starts `serve(listener, shutdown)` on a runtime of `worker_threads` threads and waits until `GET
    /// health` answers 200 (panics after `timeout`).
    pub fn spawn<F, Fut>(worker_threads: usize, health: &str, timeout: Duration, serve: F) -> Served
    where
        F: FnOnce(tokio::net::TcpListener, tokio::sync::oneshot::Receiver<()>) -> Fut
            + Send
            + 'static,
        Fut: std::future::Future<Output = Result<(), dilu_worker::WorkerError>>,
    {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let thread = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(worker_threads)
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async move {
                let listener = tokio::net::TcpListener::from_std(listener).unwrap();
                serve(listener, stopped).await
            })
        });
        let served = Served {
            base,
            stop: Some(stop),
            thread: Some(thread),
        };
        let client = reqwest::blocking::Client::new();
        let deadline = Instant::now() + timeout;
        while !client
            .get(served.url(health))
            .send()
            .is_ok_and(|r| r.status() == 200)
        {
            assert!(
                Instant::now() < deadline,
                "{health} did not answer 200 within {timeout:?}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        served
    }

    /// Starts the worker for `config` and waits until it is ready.
    pub fn start(config: WorkerConfig) -> Worker {
        Served::spawn(
            2,
            "/v2/health/ready",
            Duration::from_secs(60),
            move |listener, stopped| {
                dilu_worker::serve(config, listener, async move {
                    let _ = stopped.await;
                })
            },
        )
    }

    /// `base` + `path`.
    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    /// Stops serving and returns what the server returned.
    pub fn stop(mut self) -> Result<(), dilu_worker::WorkerError> {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        self.thread.take().unwrap().join().unwrap()
    }
}

impl Drop for Served {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// A deterministic, varied input: a simple hash of the index in [0, 1).
pub fn pattern(n: usize, seed: u64) -> Vec<f32> {
    (0..n)
        .map(|i| {
            let x = (i as u64 ^ seed).wrapping_mul(0x9e37_79b9_7f4a_7c15) >> 40;
            (x % 1000) as f32 / 1000.0
        })
        .collect()
}
