//! Measures the worker over real HTTP on this machine: sequential single-request latency, then closed-loop
//! throughput with concurrent clients, without batching (`max_batch` 1) and with adaptive batching.
//!
//! `cargo run --release -p dilu-worker --example bench -- MODEL.onnx [INPUT_SHAPE] [CLIENTS] [SECONDS]`

use std::time::{Duration, Instant};

use dilu_worker::WorkerConfig;
use serde_json::{Value, json};

struct Running {
    base: String,
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

fn start(config: WorkerConfig) -> Result<Running, Box<dyn std::error::Error>> {
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
    let deadline = Instant::now() + Duration::from_secs(120);
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

fn percentile(sorted: &[f64], p: f64) -> f64 {
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let path = args
        .next()
        .ok_or("usage: bench MODEL.onnx [INPUT_SHAPE] [CLIENTS] [SECONDS]")?;
    let shape: Option<Vec<usize>> = match args.next().filter(|s| !s.is_empty() && s != "-") {
        Some(s) => Some(s.split(',').map(str::parse).collect::<Result<_, _>>()?),
        None => None,
    };
    let clients: usize = args.next().map_or(Ok(8), |s| s.parse())?;
    let seconds: u64 = args.next().map_or(Ok(5), |s| s.parse())?;

    for max_batch in [1, 8] {
        let mut config = WorkerConfig::new("m", &path);
        config.input_shape = shape.clone();
        config.max_batch = max_batch;
        let w = start(config)?;
        let client = reqwest::blocking::Client::new();
        let meta: Value = client
            .get(format!("{}/v2/models/m", w.base))
            .send()?
            .json()?;
        let input = &meta["inputs"][0];
        let mut dims: Vec<usize> = input["shape"]
            .as_array()
            .ok_or("no shape")?
            .iter()
            .map(|d| d.as_i64().unwrap_or(1).max(1) as usize)
            .collect();
        dims[0] = 1;
        let n: usize = dims.iter().product();
        let body = serde_json::to_vec(&json!({"inputs": [{"name": input["name"], "shape": dims,
            "datatype": input["datatype"], "data": vec![0.5f32; n]}]}))?;
        let url = format!("{}/v2/models/m/infer", w.base);

        if max_batch == 1 {
            let mut lat = Vec::new();
            for _ in 0..40 {
                let t = Instant::now();
                let r = client
                    .post(&url)
                    .header("content-type", "application/json")
                    .body(body.clone())
                    .send()?;
                if r.status() != 200 {
                    return Err(format!("status {}", r.status()).into());
                }
                let _ = r.bytes()?;
                lat.push(t.elapsed().as_secs_f64() * 1e3);
            }
            lat.sort_by(f64::total_cmp);
            let text = client.get(format!("{}/metrics", w.base)).send()?.text()?;
            let exec = metric(&text, "dilu_worker_inference_seconds_sum")
                / metric(&text, "dilu_worker_inference_seconds_count");
            println!(
                "sequential, 1 client: p50 {:.2} ms, p99 {:.2} ms end to end; model execution {:.2} ms",
                percentile(&lat, 0.5),
                percentile(&lat, 0.99),
                exec * 1e3
            );
        }

        let start_at = Instant::now();
        let end = start_at + Duration::from_secs(seconds);
        let lats: Vec<Vec<f64>> = std::thread::scope(|s| {
            let threads: Vec<_> = (0..clients)
                .map(|_| {
                    let (client, url, body) = (client.clone(), &url, &body);
                    s.spawn(move || {
                        let mut lat = Vec::new();
                        while Instant::now() < end {
                            let t = Instant::now();
                            let ok = client
                                .post(url)
                                .header("content-type", "application/json")
                                .body(body.clone())
                                .send()
                                .is_ok_and(|r| r.status() == 200 && r.bytes().is_ok());
                            if ok {
                                lat.push(t.elapsed().as_secs_f64() * 1e3);
                            }
                        }
                        lat
                    })
                })
                .collect();
            threads.into_iter().filter_map(|t| t.join().ok()).collect()
        });
        let elapsed = start_at.elapsed().as_secs_f64();
        let mut all: Vec<f64> = lats.into_iter().flatten().collect();
        all.sort_by(f64::total_cmp);
        if all.is_empty() {
            return Err("no request succeeded".into());
        }
        let text = client.get(format!("{}/metrics", w.base)).send()?.text()?;
        let mean_batch = metric(&text, "dilu_worker_batch_size_sum")
            / metric(&text, "dilu_worker_batch_size_count");
        println!(
            "max_batch {max_batch}, {clients} clients, {seconds} s: {:.1} req/s, p50 {:.1} ms, p99 {:.1} ms, \
             mean batch {mean_batch:.2}, wait now {:.2} ms",
            all.len() as f64 / elapsed,
            percentile(&all, 0.5),
            percentile(&all, 0.99),
            metric(&text, "dilu_worker_batch_wait_seconds") * 1e3
        );
    }
    Ok(())
}

fn metric(text: &str, name: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or(f64::NAN)
}
