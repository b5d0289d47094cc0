//! Measures the worker over real HTTP on this machine: sequential single-request latency, then closed-loop
//! throughput with concurrent clients, without batching (`max_batch` 1) and with adaptive batching.
//!
//! `cargo run --release -p dilu-worker --example bench -- MODEL.onnx [INPUT_SHAPE] [CLIENTS] [SECONDS]`

mod common;

use std::time::{Duration, Instant};

use common::{metric, percentile, start};
use dilu_worker::WorkerConfig;
use serde_json::{Value, json};

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
        let w = start(config, Duration::from_secs(120))?;
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
