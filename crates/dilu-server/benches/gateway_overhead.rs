//! Added latency of the inference gateway: the same open-loop load sent straight to a worker-like upstream
//! and through the gateway to it, in one process and one run, and the difference of their percentiles.
//!
//! The upstream is a trivial v2 worker-like axum server: `POST /v2/models/echo/infer` answers a fixed small
//! v2 JSON response without looking at the request. It is not the real `dilu-worker` with an ONNX model (a
//! bench cannot load one here); the comparison on the platform's trivial model may be added later. What this
//! measures is therefore the gateway's own cost: one more loopback HTTP/1.1 hop, reading the body, picking
//! an instance, forwarding and relaying the response.
//!
//! Load: open loop at 100 and 1,000 requests/s. A dedicated launcher thread releases requests on a fixed
//! schedule (regardless of completions) into the load generator's runtime; each latency is measured from
//! the request's *scheduled* send time, so a stalled system cannot hide its queueing (no coordinated
//! omission). Per rate: 0.5 s warm-up for each target, then five rounds of 1 s direct + 1 s via gateway
//! (order alternating), 5 s per target in all.
//!
//! Run: `cargo bench -p dilu-server --bench gateway_overhead`

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Router;
use axum::http::header;
use axum::response::IntoResponse;
use axum::routing::post;
use dilu_server::gateway::{Endpoint, FunctionPolicy, Gateway, GatewayConfig};

const REQUEST: &str =
    r#"{"inputs":[{"name":"x","shape":[1,4],"datatype":"FP32","data":[1.0,2.0,3.0,4.0]}]}"#;
const RESPONSE: &str = r#"{"model_name":"echo","model_version":"1","outputs":[{"name":"y","shape":[1,4],"datatype":"FP32","data":[1.0,2.0,3.0,4.0]}]}"#;
const RATES: [u32; 2] = [100, 1_000];
const ROUNDS: u32 = 5;
const SEGMENT: Duration = Duration::from_secs(1);
const WARMUP: Duration = Duration::from_millis(500);

type BenchResult<T> = Result<T, Box<dyn std::error::Error + Send + Sync>>;

#[derive(Clone, Copy, PartialEq)]
enum Target {
    Direct,
    Gateway,
}

/// Latencies (from scheduled send time) and failures of one target.
#[derive(Default)]
struct Samples {
    latencies: Vec<Duration>,
    failures: usize,
}

fn main() -> BenchResult<()> {
    // Servers (upstream and gateway) on one runtime; the load generator on another, with its own thread.
    let servers = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()?;
    let load = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()?;

    let (upstream, gateway) = servers.block_on(async {
        let upstream = serve(Router::new().route("/v2/models/echo/infer", post(echo))).await?;
        let gateway = Gateway::new(GatewayConfig::default());
        gateway.upsert_function(
            "echo",
            FunctionPolicy {
                max_outstanding_per_instance: 64,
                queue_capacity: 10_000,
                ..Default::default()
            },
        );
        gateway.set_endpoints(
            "echo",
            vec![Endpoint {
                instance: "echo-0".into(),
                base_url: format!("http://{upstream}"),
            }],
        );
        let addr = serve(gateway.router()).await?;
        BenchResult::Ok((upstream, addr))
    })?;
    let client = reqwest::Client::builder()
        .no_proxy()
        .tcp_nodelay(true)
        .pool_max_idle_per_host(1024)
        .build()?;
    let url = |target: Target| {
        let addr = if target == Target::Direct {
            upstream
        } else {
            gateway
        };
        format!("http://{addr}/v2/models/echo/infer")
    };

    let load_before = load_average();
    let mut rows = Vec::new();
    for rate in RATES {
        for target in [Target::Direct, Target::Gateway] {
            run_segment(&load, &client, &url(target), rate, WARMUP);
        }
        let mut direct = Samples::default();
        let mut via = Samples::default();
        for round in 0..ROUNDS {
            let order = if round % 2 == 0 {
                [Target::Direct, Target::Gateway]
            } else {
                [Target::Gateway, Target::Direct]
            };
            for target in order {
                let segment = run_segment(&load, &client, &url(target), rate, SEGMENT);
                let into = if target == Target::Direct {
                    &mut direct
                } else {
                    &mut via
                };
                into.latencies.extend(segment.latencies);
                into.failures += segment.failures;
            }
        }
        rows.push((rate, direct, via));
    }

    println!("## Gateway overhead (added latency vs calling the upstream directly)\n");
    println!(
        "| rate (req/s) | requests direct / gateway | failures | direct p50 | direct p99 | gateway p50 | gateway p99 | added p50 | added p99 |"
    );
    println!("|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
    for (rate, mut direct, mut via) in rows {
        let (d50, d99) = percentiles(&mut direct.latencies);
        let (g50, g99) = percentiles(&mut via.latencies);
        println!(
            "| {rate} | {} / {} | {} | {} | {} | {} | {} | {} | {} |",
            direct.latencies.len(),
            via.latencies.len(),
            direct.failures + via.failures,
            us(d50),
            us(d99),
            us(g50),
            us(g99),
            signed_us(g50, d50),
            signed_us(g99, d99),
        );
    }
    println!();
    println!(
        "Setup: one process; upstream (trivial v2 worker-like axum server, fixed JSON reply, no model) and gateway \
         share a 1-worker tokio runtime; the load generator (reqwest, pooled keep-alive HTTP/1.1) runs on its own \
         1-worker runtime, fed by a launcher thread on a fixed open-loop schedule; latency measured from each \
         request's scheduled send time. Per rate: {WARMUP:?} warm-up per target, then {ROUNDS} alternating rounds \
         of {SEGMENT:?} direct / {SEGMENT:?} via gateway. {} CPU(s) available.",
        std::thread::available_parallelism().map_or(1, |n| n.get())
    );
    println!(
        "Load average (1/5/15 min) before: {load_before}, after: {} (other work on the machine shows up in the tails).",
        load_average()
    );
    println!("Rerun: `cargo bench -p dilu-server --bench gateway_overhead`");
    servers.shutdown_background();
    load.shutdown_background();
    Ok(())
}

/// The system load average, where the OS exposes it (Linux).
fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg").map_or_else(
        |_| "n/a".to_string(),
        |text| {
            text.split_whitespace()
                .take(3)
                .collect::<Vec<_>>()
                .join(" ")
        },
    )
}

async fn echo() -> impl IntoResponse {
    ([(header::CONTENT_TYPE, "application/json")], RESPONSE)
}

async fn serve(router: Router) -> BenchResult<SocketAddr> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, router).await {
            eprintln!("server stopped: {e}");
        }
    });
    Ok(addr)
}

/// Sends `rate` requests/s to `url` for `length` on a fixed schedule and waits for all of them.
fn run_segment(
    load: &tokio::runtime::Runtime,
    client: &reqwest::Client,
    url: &str,
    rate: u32,
    length: Duration,
) -> Samples {
    let samples = Arc::new(Mutex::new(Samples::default()));
    let interval = Duration::from_secs(1) / rate;
    let count = (length.as_secs_f64() * f64::from(rate)).round() as u32;
    let start = Instant::now() + Duration::from_millis(10);
    let mut tasks = Vec::with_capacity(count as usize);
    for i in 0..count {
        let scheduled = start + interval * i;
        let now = Instant::now();
        if scheduled > now {
            std::thread::sleep(scheduled - now);
        }
        let (client, url, samples) = (client.clone(), url.to_string(), samples.clone());
        tasks.push(load.spawn(async move {
            let ok = match client
                .post(&url)
                .header(header::CONTENT_TYPE, "application/json")
                .body(REQUEST)
                .send()
                .await
            {
                Ok(response) => response.status().is_success() && response.bytes().await.is_ok(),
                Err(_) => false,
            };
            let latency = scheduled.elapsed();
            if let Ok(mut samples) = samples.lock() {
                if ok {
                    samples.latencies.push(latency);
                } else {
                    samples.failures += 1;
                }
            }
        }));
    }
    load.block_on(async {
        for task in tasks {
            let _ = task.await;
        }
    });
    let mut samples = samples.lock().map_or_else(
        |e| std::mem::take(&mut *e.into_inner()),
        |mut s| std::mem::take(&mut *s),
    );
    samples.latencies.shrink_to_fit();
    samples
}

/// (p50, p99) by nearest rank.
fn percentiles(latencies: &mut [Duration]) -> (Duration, Duration) {
    if latencies.is_empty() {
        return (Duration::ZERO, Duration::ZERO);
    }
    latencies.sort_unstable();
    let rank = |p: f64| {
        latencies[((p * latencies.len() as f64).ceil() as usize).clamp(1, latencies.len()) - 1]
    };
    (rank(0.50), rank(0.99))
}

fn us(d: Duration) -> String {
    format!("{:.0} µs", d.as_secs_f64() * 1e6)
}

fn signed_us(via: Duration, direct: Duration) -> String {
    format!(
        "{:+.0} µs",
        (via.as_secs_f64() - direct.as_secs_f64()) * 1e6
    )
}
