//! tract against ONNX Runtime in the built-in worker, over real HTTP on this machine, for the three models of
//! the cache (SqueezeNet, ResNet-50, PaddleOCR's classifier): latency p50/p99 of serial single requests (batch
//! 1), and closed-loop throughput with 8 concurrent clients (batches of up to 8). Prints a Markdown table and
//! the ratios onnxruntime/tract. Run by `scripts/bench-engines.sh`:
//!
//! `cargo run --release -p dilu-worker --example bench_engines -- [SERIAL_REQUESTS] [SECONDS]`
//!
//! Each worker: `max_batch` 8, the adaptive batching wait, concatenation decided at load (as `dilu worker`
//! does), one tokio thread; the clients run in this process too (everything shares the machine's cores). The
//! models come from `$DILU_MODEL_CACHE` (default `~/.cache/dilu/models`), ONNX Runtime's library from
//! `$ORT_DYLIB_PATH`, else the cache's `onnxruntime/libonnxruntime.so.1.31.1`.

mod common;

use std::path::PathBuf;
use std::time::{Duration, Instant};

use common::{metric, percentile, start};
use dilu_worker::{Engine, WorkerConfig};
use serde_json::{Value, json};

type Error = Box<dyn std::error::Error>;

/// One model/engine's numbers.
#[derive(Debug, Clone, Copy)]
struct Row {
    p50_ms: f64,
    p99_ms: f64,
    exec_ms: f64,
    load_s: f64,
    throughput: f64,
    mean_batch: f64,
    cpu_ms_per_request: f64,
}

fn measure(config: WorkerConfig, serial: usize, seconds: u64) -> Result<Row, Error> {
    let loading = Instant::now();
    let w = start(config, Duration::from_secs(180))?;
    let load_s = loading.elapsed().as_secs_f64();
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
    let data: Vec<f32> = (0..n).map(|i| (i % 255) as f32 / 255.0).collect();
    let body = serde_json::to_vec(&json!({"inputs": [{"name": input["name"], "shape": dims,
        "datatype": input["datatype"], "data": data}]}))?;
    let url = format!("{}/v2/models/m/infer", w.base);
    let send = |client: &reqwest::blocking::Client| -> Result<(), Error> {
        let r = client
            .post(&url)
            .header("content-type", "application/json")
            .body(body.clone())
            .send()?;
        if r.status() != 200 {
            return Err(format!("status {}", r.status()).into());
        }
        r.bytes()?;
        Ok(())
    };
    let metrics = |client: &reqwest::blocking::Client| -> Result<String, Error> {
        Ok(client.get(format!("{}/metrics", w.base)).send()?.text()?)
    };

    // Serial single requests (batch 1), after a warm-up.
    for _ in 0..5 {
        send(&client)?;
    }
    let before = metrics(&client)?;
    let mut lat = Vec::with_capacity(serial);
    for _ in 0..serial {
        let t = Instant::now();
        send(&client)?;
        lat.push(t.elapsed().as_secs_f64() * 1e3);
    }
    lat.sort_by(f64::total_cmp);
    let after = metrics(&client)?;
    let exec_ms = (metric(&after, "dilu_worker_inference_seconds_sum")
        - metric(&before, "dilu_worker_inference_seconds_sum"))
        / (metric(&after, "dilu_worker_inference_seconds_count")
            - metric(&before, "dilu_worker_inference_seconds_count"))
        * 1e3;

    // 8 concurrent clients, closed loop: one second of warm-up, then `seconds` counted.
    let clients = 8;
    let warm = Instant::now() + Duration::from_secs(1);
    let end = warm + Duration::from_secs(seconds);
    let before = std::sync::Mutex::new(None::<String>);
    let counts: Vec<usize> = std::thread::scope(|s| {
        let threads: Vec<_> = (0..clients)
            .map(|k| {
                let (send, metrics, before) = (&send, &metrics, &before);
                s.spawn(move || {
                    let client = reqwest::blocking::Client::new();
                    let mut done = 0;
                    while Instant::now() < warm {
                        let _ = send(&client);
                    }
                    if k == 0
                        && let (Ok(text), Ok(mut slot)) = (metrics(&client), before.lock())
                    {
                        *slot = Some(text);
                    }
                    while Instant::now() < end {
                        if send(&client).is_ok() {
                            done += 1;
                        }
                    }
                    done
                })
            })
            .collect();
        threads.into_iter().filter_map(|t| t.join().ok()).collect()
    });
    let done: usize = counts.iter().sum();
    let after = metrics(&client)?;
    let before = before
        .into_inner()
        .ok()
        .flatten()
        .ok_or("no metrics at the start of the throughput run")?;
    let delta = |name: &str| metric(&after, name) - metric(&before, name);
    Ok(Row {
        p50_ms: percentile(&lat, 0.5),
        p99_ms: percentile(&lat, 0.99),
        exec_ms,
        load_s,
        throughput: done as f64 / seconds as f64,
        mean_batch: delta("dilu_worker_batch_size_sum") / delta("dilu_worker_batch_size_count"),
        cpu_ms_per_request: delta("dilu_worker_cpu_seconds_total") * 1e3
            / delta("dilu_worker_batch_size_sum"),
    })
}

fn main() -> Result<(), Error> {
    let mut args = std::env::args().skip(1);
    let serial: usize = args.next().map_or(Ok(200), |s| s.parse())?;
    let seconds: u64 = args.next().map_or(Ok(15), |s| s.parse())?;
    let cache = match std::env::var_os("DILU_MODEL_CACHE").filter(|v| !v.is_empty()) {
        Some(dir) => PathBuf::from(dir),
        None => PathBuf::from(std::env::var_os("HOME").ok_or("HOME is unset")?)
            .join(".cache/dilu/models"),
    };
    let lib = match std::env::var_os("ORT_DYLIB_PATH").filter(|v| !v.is_empty()) {
        Some(path) => PathBuf::from(path),
        None => cache.join("onnxruntime/libonnxruntime.so.1.31.1"),
    };
    let models: [(&str, &str, Option<Vec<usize>>); 3] = [
        ("squeezenet", "onnx-light/light_squeezenet.onnx", None),
        ("resnet50", "onnx-light/light_resnet50.onnx", None),
        (
            "ppocr-cls",
            "ppocr/ch_ppocr_mobile_v2.0_cls_infer.onnx",
            Some(vec![1, 3, 48, 192]),
        ),
    ];
    println!(
        "serial: {serial} requests of batch 1 (p50/p99 end to end, and the model's execution per batch); \
         throughput: 8 clients for {seconds} s\n"
    );
    println!(
        "| model | engine | load s | p50 ms | p99 ms | exec ms | req/s, 8 clients | mean batch | CPU ms/request |"
    );
    println!("|---|---|---|---|---|---|---|---|---|");
    let mut ratios = Vec::new();
    for (name, relative, input_shape) in &models {
        let path = cache.join(relative);
        if !path.is_file() {
            return Err(
                format!("{} is missing: run scripts/fetch-models.sh", path.display()).into(),
            );
        }
        let mut rows = Vec::new();
        for engine in Engine::ALL {
            let mut config = WorkerConfig::new("m", &path);
            config.input_shape = input_shape.clone();
            config.max_batch = 8;
            config.engine = engine;
            config.onnxruntime_lib = Some(lib.clone());
            let row = measure(config, serial, seconds)?;
            println!(
                "| {name} | {engine} | {:.1} | {:.2} | {:.2} | {:.2} | {:.1} | {:.2} | {:.2} |",
                row.load_s,
                row.p50_ms,
                row.p99_ms,
                row.exec_ms,
                row.throughput,
                row.mean_batch,
                row.cpu_ms_per_request
            );
            rows.push(row);
        }
        if let [tract, ort] = rows[..] {
            ratios.push((name, tract, ort));
        }
    }
    println!(
        "\nratios onnxruntime/tract (latency: below 1 is faster; throughput: above 1 is faster)\n"
    );
    println!("| model | p50 | p99 | req/s, 8 clients | CPU ms/request |");
    println!("|---|---|---|---|---|");
    for (name, tract, ort) in ratios {
        println!(
            "| {name} | {:.2} | {:.2} | {:.2} | {:.2} |",
            ort.p50_ms / tract.p50_ms,
            ort.p99_ms / tract.p99_ms,
            ort.throughput / tract.throughput,
            ort.cpu_ms_per_request / tract.cpu_ms_per_request
        );
    }
    Ok(())
}
