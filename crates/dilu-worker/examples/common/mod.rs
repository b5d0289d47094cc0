//! What the worker benchmarks share: a worker served in this process on a free port, percentiles and metric
//! lines. (A folder under `examples/`, so Cargo does not build it as an example of its own.)

use std::time::{Duration, Instant};

use dilu_worker::WorkerConfig;

/// A worker serving on its own thread; stopped when dropped.
pub struct Running {
    /// `http://127.0.0.1:PORT`.
    pub base: String,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Drop for Running {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Starts a worker with `config` and waits (up to `ready_within`) until it is ready.
pub fn start(
    config: WorkerConfig,
    ready_within: Duration,
) -> Result<Running, Box<dyn std::error::Error>> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
    listener.set_nonblocking(true)?;
    let base = format!("http://{}", listener.local_addr()?);
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()?;
    let thread = std::thread::spawn(move || {
        rt.block_on(async move {
            let Ok(listener) = tokio::net::TcpListener::from_std(listener) else {
                return;
            };
            if let Err(e) = dilu_worker::serve(config, listener, async move {
                let _ = stopped.await;
            })
            .await
            {
                eprintln!("worker: {e}");
            }
        });
    });
    let client = reqwest::blocking::Client::new();
    let deadline = Instant::now() + ready_within;
    while !client
        .get(format!("{base}/v2/health/ready"))
        .send()
        .is_ok_and(|r| r.status() == 200)
    {
        if Instant::now() > deadline {
            return Err("the worker did not become ready".into());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok(Running {
        base,
        stop: Some(stop),
        thread: Some(thread),
    })
}

/// The `p` quantile of sorted values (nearest rank).
pub fn percentile(sorted: &[f64], p: f64) -> f64 {
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

/// The value of the unlabelled metric `name` in Prometheus text (NaN when absent).
pub fn metric(text: &str, name: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or(f64::NAN)
}
