//! Added latency of the inference gateway: the same open-loop load sent straight to a worker and through the
//! gateway to it, in one process and one run, and the difference of their percentiles.
//!
//! The upstream is the real built-in worker ([`dilu_worker::serve`]) serving a trivial ONNX model: the ONNX
//! node test `test_relu` (one `Relu`, input `x` FP32 `[3,4,5]`), which `scripts/fetch-models.sh` extracts to
//! `CACHE/onnx-light/relu.onnx` (`CACHE` is `$DILU_MODEL_CACHE`, else `~/.cache/dilu/models`). When the model
//! is missing the bench runs the fetch script; when it is still missing it falls back to a fake worker-like
//! axum server (a fixed v2 reply, no model) and says so loudly in its output. The worker batches nothing
//! (`max_batch` 1, fixed batching wait 0), so a request's time in the worker is parsing, one model run on the
//! worker's executor thread and the reply. What the comparison isolates is the gateway's own cost: one more
//! loopback HTTP/1.1 hop, reading the body, picking an instance, forwarding and relaying the response.
//!
//! Threads: the worker, the gateway and the load generator each run on their own one-thread tokio runtime
//! (the worker has its executor thread besides), so the gateway never shares an event loop with what it is
//! measured against.
//!
//! Load: open loop at 100 and 1,000 requests/s. The main thread releases requests on a fixed schedule
//! (regardless of completions) into the load generator's runtime; each latency is measured from the
//! request's *scheduled* send time, so a stalled system cannot hide its queueing (no coordinated omission).
//! Per rate: 0.5 s warm-up for each target, then ten rounds of 0.5 s direct + 0.5 s via gateway (order
//! alternating), 5 s per target in all. "Added" is the difference of the two targets' percentiles over all
//! rounds (p99 via the gateway minus p99 direct), not a percentile of paired differences. Beside it, "median
//! of rounds" takes each round's p99 difference (its two segments are adjacent in time, so they see about the
//! same outside load) and reports the median over the rounds: on a shared machine a burst of other work that
//! hits a few segments moves the pooled p99s but hardly this.
//!
//! A second table looks from the inside: the gateway's `dilu_gateway_own_time_seconds` histogram (each
//! request's time in the gateway's handler less its wait for an instance slot and the forwarded call) over the
//! same rounds. It covers reading the body, routing and answering; the forwarded call (the HTTP client's work,
//! the second loopback hop and the worker) and the time before the handler runs are outside it, so the
//! end-to-end comparison stays the measure of what the gateway adds.
//!
//! A last phase measures what the event stream costs the gateway (`docs/observability.md`): the gateway's
//! listener also serves `/v1/events/stream` of an event log persisted in the SQLite store, as `dilu up`'s one
//! listener does, with four followers connected throughout. At 1,000 requests/s each round has a direct
//! segment and one via the gateway per event rate (0, 20 and 200 events/s recorded by another thread and
//! streamed to every follower), in rotating order; the cost of a rate is its added latency less that at 0.
//!
//! Run: `cargo bench -p dilu-server --bench gateway_overhead`

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Router;
use axum::http::header;
use axum::response::IntoResponse;
use axum::routing::{get, post};
use dilu_api::EventKind;
use dilu_control::events::{EventFilter, EventLog, system_wall_clock};
use dilu_gateway::{Endpoint, FunctionPolicy, Gateway, GatewayConfig};
use dilu_worker::WorkerConfig;
use serde_json::{Value, json};
use tokio::runtime::Runtime;

/// The function's (and the model's) name.
const MODEL: &str = "relu";
/// Where the fetch script puts the model, under the model cache.
const MODEL_IN_CACHE: &str = "onnx-light/relu.onnx";
/// The shape `test_relu` declares for its input `x`.
const INPUT_SHAPE: [usize; 3] = [3, 4, 5];
const RATES: [u32; 2] = [100, 1_000];
const ROUNDS: u32 = 10;
const SEGMENT: Duration = Duration::from_millis(500);
const WARMUP: Duration = Duration::from_millis(500);
/// How long the worker may take to load the model and report ready.
const READY_TIMEOUT: Duration = Duration::from_secs(60);
/// The acceptance target: added p99 at 1,000 requests/s.
const TARGET_ADDED_P99: Duration = Duration::from_millis(1);
/// Event-stream phase: request rate, how many SSE followers stay connected, and the event rates compared
/// (events recorded per second). `dilu up` records at most one vertical event per device per 500 ms and a
/// scaling decision every few seconds, so 20/s is a busy ten-device node and 200/s ten times that.
const EVENTS_RATE: u32 = 1_000;
const FOLLOWERS: usize = 4;
const EVENT_LEVELS: [u32; 3] = [0, 20, 200];
/// The acceptance target: the live event stream adds under 5 % to the gateway's added latency.
const TARGET_EVENT_COST: f64 = 0.05;

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

/// The request every call sends and the output it must produce.
struct Payload {
    /// The v2 JSON request body.
    request: String,
    /// `y = max(x, 0)` of the request's `x`.
    expected: Vec<f64>,
}

/// What answers the direct calls and the gateway's forwards.
enum Upstream {
    /// `dilu_worker::serve` with the model at this path.
    Worker(PathBuf),
    /// The fake worker-like server, and why the real one could not be used.
    Fake(String),
}

impl Upstream {
    fn describe(&self) -> String {
        match self {
            Upstream::Worker(path) => format!(
                "REAL dilu-worker serving {MODEL} ({}; input x FP32 {INPUT_SHAPE:?}, max_batch 1, fixed batching wait 0 µs)",
                path.display()
            ),
            Upstream::Fake(why) => format!(
                "FAKE worker-like axum server (fixed v2 reply, no model): {why}. These numbers do NOT measure \
                 the gateway in front of a real worker."
            ),
        }
    }
}

fn main() -> BenchResult<()> {
    let payload = payload();
    let upstream = match find_model() {
        Ok(path) => Upstream::Worker(path),
        Err(why) => Upstream::Fake(why),
    };
    let banner = format!("UPSTREAM: {}", upstream.describe());
    eprintln!("\n==================== {banner} ====================\n");
    if let Some(quota) = std::env::var_os("DILU_QUOTA_FILE").filter(|q| !q.is_empty()) {
        eprintln!(
            "gateway_overhead: DILU_QUOTA_FILE is set ({}): the worker is throttled by that CPU quota",
            quota.to_string_lossy()
        );
    }

    let worker_rt = runtime("bench-worker")?;
    let gateway_rt = runtime("bench-gateway")?;
    let load = runtime("bench-load")?;

    let (stop_worker, worker_stopped) = tokio::sync::oneshot::channel::<()>();
    let (direct_addr, mut worker_task) = match &upstream {
        Upstream::Worker(model) => {
            // One request per run, as sent: the model's fixed batch of 3 (a dynamic batch over max_batch is 400).
            let config = WorkerConfig {
                max_batch: 1,
                dynamic_batch: false,
                fixed_wait_us: Some(0),
                ..WorkerConfig::new(MODEL, model)
            };
            let listener = worker_rt.block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))?;
            let addr = listener.local_addr()?;
            let task = worker_rt.spawn(dilu_worker::serve(config, listener, async {
                let _ = worker_stopped.await;
            }));
            (addr, Some(task))
        }
        Upstream::Fake(_) => {
            let response = fake_response(&payload.expected).to_string();
            let router = Router::new()
                .route("/v2/health/ready", get(|| async { "" }))
                .route(
                    &format!("/v2/models/{MODEL}/infer"),
                    post(move || async move {
                        ([(header::CONTENT_TYPE, "application/json")], response).into_response()
                    }),
                );
            (worker_rt.block_on(serve(router))?, None)
        }
    };
    let direct_base = format!("http://{direct_addr}");

    let gateway = Gateway::new(GatewayConfig::default());
    gateway.upsert_function(
        MODEL,
        FunctionPolicy {
            max_outstanding_per_instance: 1_024,
            queue_capacity: 10_000,
            ..Default::default()
        },
    );
    gateway.set_endpoints(
        MODEL,
        vec![Endpoint {
            instance: format!("{MODEL}-0"),
            url: direct_base.clone(),
        }],
    );
    // The event log as `dilu up` keeps it: persisted in the SQLite store, its stream served by the listener
    // that serves the gateway (one listener serves `/v1` and `/v2` in `dilu up`).
    let event_dir = tempfile::tempdir()?;
    let events = Arc::new(EventLog::new(10_000, system_wall_clock()));
    let store = dilu_server::store::Store::open(&event_dir.path().join("dilu.db"))?;
    events.attach(Arc::new(store))?;
    let stream_log = Arc::clone(&events);
    let router = gateway.router().route(
        "/v1/events/stream",
        get(move || {
            let log = Arc::clone(&stream_log);
            async move { dilu_server::events::sse_stream(&log, EventFilter::default(), 1) }
        }),
    );
    let gateway_addr = gateway_rt.block_on(serve(router))?;

    let client = reqwest::Client::builder()
        .no_proxy()
        .tcp_nodelay(true)
        .pool_max_idle_per_host(1024)
        .timeout(Duration::from_secs(10))
        .build()?;
    let url = |target: Target| {
        let addr = if target == Target::Direct {
            direct_addr
        } else {
            gateway_addr
        };
        format!("http://{addr}/v2/models/{MODEL}/infer")
    };

    load.block_on(async {
        wait_ready(&client, &direct_base, worker_task.as_mut()).await?;
        for target in [Target::Direct, Target::Gateway] {
            check_answer(&client, &url(target), &payload).await?;
        }
        BenchResult::Ok(())
    })?;

    let load_before = load_average();
    let cpu_before = cpu_times();
    let mut rows = Vec::new();
    for rate in RATES {
        for target in [Target::Direct, Target::Gateway] {
            run_segment(&load, &client, &url(target), &payload, rate, WARMUP);
        }
        let mut direct = Samples::default();
        let mut via = Samples::default();
        let mut round_added_p99 = Vec::new();
        let own_before = own_time_buckets(&gateway);
        for round in 0..ROUNDS {
            let order = if round % 2 == 0 {
                [Target::Direct, Target::Gateway]
            } else {
                [Target::Gateway, Target::Direct]
            };
            let mut round_p99 = [Duration::ZERO; 2];
            for target in order {
                let mut segment =
                    run_segment(&load, &client, &url(target), &payload, rate, SEGMENT);
                let (into, p99) = if target == Target::Direct {
                    (&mut direct, &mut round_p99[0])
                } else {
                    (&mut via, &mut round_p99[1])
                };
                *p99 = percentiles(&mut segment.latencies).1;
                into.latencies.extend(segment.latencies);
                into.failures += segment.failures;
            }
            round_added_p99.push(micros(round_p99[1]) - micros(round_p99[0]));
        }
        let own = (own_time_buckets(&gateway), own_before);
        rows.push((rate, direct, via, median(&mut round_added_p99), own));
    }
    let stream_cost = event_stream_cost(
        &load,
        &client,
        [url(Target::Direct), url(Target::Gateway)],
        &payload,
        &events,
        gateway_addr,
    )?;
    let load_after = load_average();
    let steal = match (cpu_before, cpu_times()) {
        (Some((total0, steal0)), Some((total1, steal1))) if total1 > total0 => format!(
            "{:.0}%",
            100.0 * (steal1.saturating_sub(steal0)) as f64 / (total1 - total0) as f64
        ),
        _ => "n/a".to_string(),
    };

    println!("## Gateway overhead (added latency vs calling the worker directly)\n");
    println!("{banner}\n");
    println!(
        "| rate (req/s) | requests direct / gateway | failures direct / gateway | direct p50 | direct p99 | gateway p50 | gateway p99 | added p50 | added p99 | added p99, median of rounds |"
    );
    println!("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
    let mut verdict = None;
    let mut own_rows = Vec::new();
    for (rate, mut direct, mut via, round_added, (own_after, own_before)) in rows {
        own_rows.push((rate, own_after, own_before));
        let (d50, d99) = percentiles(&mut direct.latencies);
        let (g50, g99) = percentiles(&mut via.latencies);
        println!(
            "| {rate} | {} / {} | {} / {} | {} | {} | {} | {} | {} | {} | {round_added:+.0} µs |",
            direct.latencies.len(),
            via.latencies.len(),
            direct.failures,
            via.failures,
            us(d50),
            us(d99),
            us(g50),
            us(g99),
            signed_us(g50, d50),
            signed_us(g99, d99),
        );
        if rate == 1_000 {
            verdict = Some((
                micros(g99) - micros(d99),
                round_added,
                direct.failures + via.failures,
            ));
        }
    }
    println!();
    println!(
        "The gateway's own handling per request, from its `dilu_gateway_own_time_seconds` histogram over the \
         same rounds (time in its handler less the wait for an instance slot and the forwarded call, which holds \
         the HTTP client's work and the second hop; percentiles are the histogram's bucket bounds, so \"≤\"):\n"
    );
    println!("| rate (req/s) | requests | own p50 | own p99 | own mean |");
    println!("|---:|---:|---:|---:|---:|");
    for (rate, after, before) in own_rows {
        let own = after.since(&before);
        println!(
            "| {rate} | {:.0} | {} | {} | {:.0} µs |",
            own.count(),
            own.quantile(0.5),
            own.quantile(0.99),
            own.mean_s() * 1e6
        );
    }
    println!();
    if let Some((added, round_added, failures)) = verdict {
        let target = micros(TARGET_ADDED_P99);
        let met = |added: f64| {
            if added <= target && failures == 0 {
                "met"
            } else {
                "NOT met"
            }
        };
        println!(
            "Target (added p99 ≤ {target:.0} µs at 1,000 req/s, no failures): {} by the pooled p99s ({added:+.0} \
             µs), {} by the median of rounds ({round_added:+.0} µs); {failures} failures{}.",
            met(added),
            met(round_added),
            if matches!(upstream, Upstream::Fake(_)) {
                ", but against the FAKE upstream"
            } else {
                ""
            }
        );
    }
    stream_cost.print();
    println!(
        "Setup: one process, three one-thread tokio runtimes: the worker's (plus its model executor thread), the \
         gateway's (`Gateway::router()` under axum, forwarding over its own pooled HTTP/1.1 client) and the load \
         generator's (reqwest, pooled keep-alive HTTP/1.1, 10 s timeout), all on 127.0.0.1. The main thread \
         releases requests on a fixed open-loop schedule; latency is measured from each request's scheduled \
         send time. Request: one v2 FP32 tensor `x` {INPUT_SHAPE:?} ({} bytes of JSON), its answer checked once \
         per target before timing. Per rate: {WARMUP:?} warm-up per target, then {ROUNDS} alternating rounds \
         of {SEGMENT:?} direct / {SEGMENT:?} via gateway. Added = gateway percentile − direct percentile over all \
         rounds; the median of rounds pairs each round's direct and gateway segments (adjacent in time) and takes \
         the median of their p99 differences, which a burst of outside load in a few segments does not move. {} \
         CPU(s) available.",
        payload.request.len(),
        std::thread::available_parallelism().map_or(1, |n| n.get())
    );
    println!(
        "Load average (1/5/15 min) before: {load_before}, after: {load_after}; CPU time stolen by the \
         hypervisor during the measurement: {steal}. Other work on the machine and steal show up in the tails."
    );
    println!("Rerun: `cargo bench -p dilu-server --bench gateway_overhead`");

    let _ = stop_worker.send(());
    if let Some(task) = worker_task {
        let stopped =
            worker_rt.block_on(async { tokio::time::timeout(Duration::from_secs(2), task).await });
        if let Ok(Ok(Err(e))) = stopped {
            eprintln!("gateway_overhead: the worker stopped with an error: {e}");
        }
    }
    gateway_rt.shutdown_background();
    worker_rt.shutdown_background();
    load.shutdown_background();
    Ok(())
}

/// A multi-thread tokio runtime with one worker thread named `name` (and timers and I/O enabled).
/// The gateway's own-time histogram for the bench's function, as its `/metrics` text shows it.
struct OwnTime {
    /// `(le, cumulative count)` per bucket, `+Inf` last.
    buckets: Vec<(f64, f64)>,
    sum_s: f64,
}

/// Reads the gateway's own-time histogram from its Prometheus text.
fn own_time_buckets(gateway: &Gateway) -> OwnTime {
    let mut text = String::new();
    gateway.render_metrics(&mut text);
    let labels = format!("{{function=\"{MODEL}\"");
    let mut own = OwnTime {
        buckets: Vec::new(),
        sum_s: 0.0,
    };
    for line in text.lines() {
        let Some((series, value)) = line.rsplit_once(' ') else {
            continue;
        };
        let value: f64 = value.parse().unwrap_or(f64::NAN);
        if let Some(rest) = series.strip_prefix("dilu_gateway_own_time_seconds_bucket")
            && let Some(le) = rest
                .strip_prefix(labels.as_str())
                .and_then(|r| r.strip_prefix(",le=\""))
                .and_then(|r| r.strip_suffix("\"}"))
        {
            let le = if le == "+Inf" {
                f64::INFINITY
            } else {
                le.parse().unwrap_or(f64::NAN)
            };
            own.buckets.push((le, value));
        } else if series == format!("dilu_gateway_own_time_seconds_sum{labels}}}") {
            own.sum_s = value;
        }
    }
    own
}

impl OwnTime {
    /// What was observed after `earlier` was read.
    fn since(&self, earlier: &OwnTime) -> OwnTime {
        OwnTime {
            buckets: self
                .buckets
                .iter()
                .zip(&earlier.buckets)
                .map(|(&(le, now), &(_, then))| (le, now - then))
                .collect(),
            sum_s: self.sum_s - earlier.sum_s,
        }
    }

    fn count(&self) -> f64 {
        self.buckets.last().map_or(0.0, |&(_, n)| n)
    }

    fn mean_s(&self) -> f64 {
        self.sum_s / self.count().max(1.0)
    }

    /// The bound of the first bucket holding the `q` quantile.
    fn quantile(&self, q: f64) -> String {
        let goal = q * self.count();
        match self.buckets.iter().find(|&&(_, n)| n >= goal) {
            Some(&(le, _)) if le.is_finite() => format!("≤ {:.0} µs", le * 1e6),
            Some(_) => "> 100 ms".to_string(),
            None => "n/a".to_string(),
        }
    }
}

fn runtime(name: &str) -> std::io::Result<Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .thread_name(name)
        .enable_all()
        .build()
}

/// The model cache: `$DILU_MODEL_CACHE`, else `~/.cache/dilu/models`.
fn cache_dir() -> Option<PathBuf> {
    if let Some(dir) = std::env::var_os("DILU_MODEL_CACHE").filter(|d| !d.is_empty()) {
        return Some(PathBuf::from(dir));
    }
    std::env::var_os("HOME")
        .filter(|h| !h.is_empty())
        .map(|home| PathBuf::from(home).join(".cache/dilu/models"))
}

/// The trivial model from the cache, running `scripts/fetch-models.sh` once when it is missing; otherwise why
/// it cannot be had.
fn find_model() -> Result<PathBuf, String> {
    let cache = cache_dir().ok_or("no model cache (neither DILU_MODEL_CACHE nor HOME is set)")?;
    let model = cache.join(MODEL_IN_CACHE);
    if model.is_file() {
        return Ok(model);
    }
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../scripts/fetch-models.sh");
    eprintln!(
        "gateway_overhead: {} is missing; running {}",
        model.display(),
        script.display()
    );
    let status = std::process::Command::new("bash")
        .arg(&script)
        .arg(&cache)
        .status();
    if model.is_file() {
        return Ok(model);
    }
    Err(format!(
        "{} is missing and {} did not provide it ({})",
        model.display(),
        script.display(),
        match status {
            Ok(status) => status.to_string(),
            Err(e) => e.to_string(),
        }
    ))
}

/// The request: `x` counts up from −3.0 in steps of 0.1, so half its elements are negative.
fn payload() -> Payload {
    let count: usize = INPUT_SHAPE.iter().product();
    let data: Vec<f64> = (0..count)
        .map(|i| (i as f64 - count as f64 / 2.0) / 10.0)
        .collect();
    let expected = data.iter().map(|v| v.max(0.0)).collect();
    let request = json!({
        "inputs": [{"name": "x", "shape": INPUT_SHAPE, "datatype": "FP32", "data": data}]
    });
    Payload {
        request: request.to_string(),
        expected,
    }
}

/// What the worker answers to [`payload`]'s request (the fake upstream sends it for every request).
fn fake_response(expected: &[f64]) -> Value {
    json!({
        "model_name": MODEL,
        "model_version": "1",
        "outputs": [{"name": "y", "shape": INPUT_SHAPE, "datatype": "FP32", "data": expected}]
    })
}

/// Waits until the worker at `base` reports ready; fails when it stops first (a model that does not load)
/// or takes longer than [`READY_TIMEOUT`].
async fn wait_ready(
    client: &reqwest::Client,
    base: &str,
    mut worker: Option<&mut tokio::task::JoinHandle<Result<(), dilu_worker::WorkerError>>>,
) -> BenchResult<()> {
    let deadline = Instant::now() + READY_TIMEOUT;
    loop {
        if let Some(task) = worker.as_mut().filter(|task| task.is_finished()) {
            let why = match task.await {
                Ok(Ok(())) => "it returned".to_string(),
                Ok(Err(e)) => e.to_string(),
                Err(e) => e.to_string(),
            };
            return Err(format!("the worker at {base} stopped before it was ready: {why}").into());
        }
        let ready = client
            .get(format!("{base}/v2/health/ready"))
            .send()
            .await
            .is_ok_and(|r| r.status().is_success());
        if ready {
            return Ok(());
        }
        if Instant::now() > deadline {
            return Err(
                format!("the worker at {base} was not ready within {READY_TIMEOUT:?}").into(),
            );
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Sends the request once to `url` and checks the answer is `y = relu(x)`.
async fn check_answer(client: &reqwest::Client, url: &str, payload: &Payload) -> BenchResult<()> {
    let response = client
        .post(url)
        .header(header::CONTENT_TYPE, "application/json")
        .body(payload.request.clone())
        .send()
        .await?;
    let status = response.status();
    let body: Value = response.json().await?;
    if !status.is_success() {
        return Err(format!("{url} answered {status}: {body}").into());
    }
    let data: Vec<f64> = body["outputs"][0]["data"]
        .as_array()
        .ok_or_else(|| format!("{url} answered no outputs[0].data: {body}"))?
        .iter()
        .filter_map(Value::as_f64)
        .collect();
    let matches = data.len() == payload.expected.len()
        && data
            .iter()
            .zip(&payload.expected)
            .all(|(got, want)| (got - want).abs() < 1e-6);
    if !matches {
        return Err(format!("{url} answered a wrong result: {body}").into());
    }
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

/// All CPUs' (total, steal) time in clock ticks since boot, from the first line of `/proc/stat` (Linux).
fn cpu_times() -> Option<(u64, u64)> {
    let text = std::fs::read_to_string("/proc/stat").ok()?;
    let fields: Vec<u64> = text
        .lines()
        .next()?
        .split_whitespace()
        .skip(1)
        .take(8)
        .map(str::parse)
        .collect::<Result<_, _>>()
        .ok()?;
    // user nice system idle iowait irq softirq steal
    Some((fields.iter().sum(), *fields.get(7)?))
}

/// CPU time (ns) this process's threads named `name` have run, from `/proc/self/task/*/schedstat` (its first
/// field is the time on a CPU in nanoseconds); 0 where that is not readable.
fn thread_cpu_ns(name: &str) -> u64 {
    let Ok(tasks) = std::fs::read_dir("/proc/self/task") else {
        return 0;
    };
    tasks
        .flatten()
        .filter(|t| {
            std::fs::read_to_string(t.path().join("comm")).is_ok_and(|c| c.trim_end() == name)
        })
        .filter_map(|t| std::fs::read_to_string(t.path().join("schedstat")).ok())
        .filter_map(|s| s.split_whitespace().next()?.parse::<u64>().ok())
        .sum()
}

/// Serves `router` on 127.0.0.1:0 on the current runtime; returns the bound address.
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
    load: &Runtime,
    client: &reqwest::Client,
    url: &str,
    payload: &Payload,
    rate: u32,
    length: Duration,
) -> Samples {
    let samples = Arc::new(Mutex::new(Samples::default()));
    let body = bytes::Bytes::from(payload.request.clone());
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
        let (client, url, body, samples) = (
            client.clone(),
            url.to_string(),
            body.clone(),
            samples.clone(),
        );
        tasks.push(load.spawn(async move {
            let ok = match client
                .post(&url)
                .header(header::CONTENT_TYPE, "application/json")
                .body(body)
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

/// A duration in microseconds.
fn micros(d: Duration) -> f64 {
    d.as_secs_f64() * 1e6
}

/// The median (mean of the middle two for an even count); 0 for none.
fn median(values: &mut [f64]) -> f64 {
    if values.is_empty() {
        return 0.0;
    }
    values.sort_unstable_by(f64::total_cmp);
    let mid = values.len() / 2;
    if values.len().is_multiple_of(2) {
        (values[mid - 1] + values[mid]) / 2.0
    } else {
        values[mid]
    }
}

/// A duration in whole microseconds.
fn us(d: Duration) -> String {
    format!("{:.0} µs", d.as_secs_f64() * 1e6)
}

/// `via − direct` in whole microseconds, with its sign.
fn signed_us(via: Duration, direct: Duration) -> String {
    format!(
        "{:+.0} µs",
        (via.as_secs_f64() - direct.as_secs_f64()) * 1e6
    )
}

/// What the event-stream phase measured, per level of [`EVENT_LEVELS`].
struct StreamCost {
    /// Pooled `(p50, p99)` the gateway added (gateway − direct) at each level.
    pooled: Vec<(f64, f64)>,
    /// Median over rounds of each level's added `(p50, p99)`; the segments of a round are adjacent in time.
    rounds: Vec<(f64, f64)>,
    /// Median over rounds of `(level − quiet)` added `(p50, p99)`.
    round_cost: Vec<(f64, f64)>,
    /// CPU (ns) per request at each level: the gateway's thread (which also serves the stream), and the
    /// thread recording the events (the control plane's part in `dilu up`).
    gateway_cpu: Vec<f64>,
    recorder_cpu: Vec<f64>,
    recorded: u64,
    delivered: u64,
    failures: usize,
}

impl StreamCost {
    fn print(&self) {
        let ratio = |cost: f64, base: f64| {
            if base > 0.0 {
                format!("{:+.1} %", 100.0 * cost / base)
            } else {
                "n/a".to_string()
            }
        };
        println!(
            "## Event stream: the gateway's added latency with the stream quiet and live\n\n\
             {EVENTS_RATE} req/s; {FOLLOWERS} followers on `/v1/events/stream` of the gateway's own listener the \
             whole time; at each level the producer records that many events per second into the SQLite-backed \
             event log, streamed to every follower (0 = the followers connected, nothing recorded). Cost = added \
             latency at the level − added latency at 0, over the added latency at 0.\n"
        );
        println!(
            "| events/s | added p50 (pooled) | added p99 (pooled) | added p50 (median of rounds) | added p99 (median of rounds) | cost p50 (median of rounds) | cost p99 (median of rounds) |"
        );
        println!("|---:|---:|---:|---:|---:|---:|---:|");
        let (q50, q99) = self.rounds[0];
        for (i, level) in EVENT_LEVELS.iter().enumerate() {
            let (c50, c99) = self.round_cost[i];
            println!(
                "| {level} | {:+.0} µs | {:+.0} µs | {:+.0} µs | {:+.0} µs | {} ({c50:+.1} µs) | {} ({c99:+.1} µs) |",
                self.pooled[i].0,
                self.pooled[i].1,
                self.rounds[i].0,
                self.rounds[i].1,
                ratio(c50, q50),
                ratio(c99, q99),
            );
        }
        println!(
            "\nCPU per request, summed over the rounds (`/proc/self/task/*/schedstat`): the gateway's thread, which \
             also serializes and writes the stream, and the thread that records the events (in `dilu up` the \
             control plane). Cost = CPU per request at the level − at 0, over the gateway's at 0.\n"
        );
        println!(
            "| events/s | gateway CPU per request | recorder CPU per request | cost: gateway | cost: gateway + recorder |"
        );
        println!("|---:|---:|---:|---:|---:|");
        let (g0, r0) = (self.gateway_cpu[0], self.recorder_cpu[0]);
        for (i, level) in EVENT_LEVELS.iter().enumerate() {
            let (g, r) = (self.gateway_cpu[i], self.recorder_cpu[i]);
            println!(
                "| {level} | {:.2} µs | {:.2} µs | {} | {} |",
                g / 1e3,
                r / 1e3,
                ratio(g - g0, g0),
                ratio(g + r - g0 - r0, g0)
            );
        }
        let met = |i: usize| {
            let (c50, c99) = self.round_cost[i];
            q50 > 0.0
                && q99 > 0.0
                && c50 <= TARGET_EVENT_COST * q50
                && c99 <= TARGET_EVENT_COST * q99
        };
        let cpu_met = |i: usize| {
            g0 > 0.0
                && self.gateway_cpu[i] + self.recorder_cpu[i] - g0 - r0 <= TARGET_EVENT_COST * g0
        };
        println!(
            "\nEvents recorded: {}; delivered to followers: {} of {} ({FOLLOWERS} each); {} failed requests. \
             Target (a live stream adds under {:.0} %): by latency (added p50 and p99, median of rounds) {} at \
             {}/s, {} at {}/s; by CPU per request (gateway + recorder) {} at {}/s, {} at {}/s.\n",
            self.recorded,
            self.delivered,
            self.recorded * FOLLOWERS as u64,
            self.failures,
            TARGET_EVENT_COST * 100.0,
            verdict(met(1) && self.failures == 0),
            EVENT_LEVELS[1],
            verdict(met(2) && self.failures == 0),
            EVENT_LEVELS[2],
            verdict(cpu_met(1)),
            EVENT_LEVELS[1],
            verdict(cpu_met(2)),
            EVENT_LEVELS[2],
        );
    }
}

fn verdict(met: bool) -> &'static str {
    if met { "met" } else { "NOT met" }
}

/// The event-stream phase: rounds of adjacent segments at [`EVENTS_RATE`] — direct, then via the gateway at
/// each level of [`EVENT_LEVELS`] — in rotating order.
fn event_stream_cost(
    load: &Runtime,
    client: &reqwest::Client,
    [direct_url, gateway_url]: [String; 2],
    payload: &Payload,
    events: &Arc<EventLog>,
    gateway_addr: SocketAddr,
) -> BenchResult<StreamCost> {
    use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};

    let followers_rt = runtime("bench-followers")?;
    let delivered = Arc::new(AtomicU64::new(0));
    let stream_url = format!("http://{gateway_addr}/v1/events/stream");
    for _ in 0..FOLLOWERS {
        let (url, delivered) = (stream_url.clone(), Arc::clone(&delivered));
        followers_rt.spawn(async move {
            let Ok(mut response) = reqwest::Client::new().get(&url).send().await else {
                eprintln!("gateway_overhead: a follower could not connect to {url}");
                return;
            };
            // Every event the stream sends carries one `id:` line; a chunk may end mid-line.
            let mut pending = Vec::new();
            while let Ok(Some(chunk)) = response.chunk().await {
                pending.extend_from_slice(&chunk);
                let Some(end) = pending.iter().rposition(|&b| b == b'\n') else {
                    continue;
                };
                let ids = pending[..end]
                    .split(|&b| b == b'\n')
                    .filter(|line| line.starts_with(b"id:"))
                    .count();
                delivered.fetch_add(ids as u64, Ordering::Relaxed);
                pending.drain(..=end);
            }
        });
    }

    // Events per second the producer records now (0: none).
    let level = Arc::new(AtomicU32::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let recorded = Arc::new(AtomicU64::new(0));
    let producer = {
        let (level, stop, recorded, events) = (
            Arc::clone(&level),
            Arc::clone(&stop),
            Arc::clone(&recorded),
            Arc::clone(events),
        );
        std::thread::Builder::new()
            .name("bench-events".into())
            .spawn(move || {
                let mut next = Instant::now();
                while !stop.load(Ordering::Relaxed) {
                    let per_s = level.load(Ordering::Relaxed);
                    if per_s == 0 {
                        // Parked costs no CPU; the main thread unparks it when it sets a level.
                        std::thread::park_timeout(Duration::from_millis(100));
                        next = Instant::now();
                        continue;
                    }
                    let n = recorded.fetch_add(1, Ordering::Relaxed);
                    let to = 0.41 + (n % 50) as f64 / 100.0;
                    events.record(
                        EventKind::Vertical,
                        Some(MODEL),
                        Some("relu-0"),
                        format!("device cpu-0: relu-0 share 0.40 -> {to:.2}; squeezed train-0"),
                        json!({"device": "cpu-0", "from": 0.40, "to": to, "squeezed": ["train-0"]}),
                    );
                    next += Duration::from_secs(1) / per_s;
                    let now = Instant::now();
                    if next > now {
                        std::thread::sleep(next - now);
                    } else {
                        next = now;
                    }
                }
            })?
    };

    // Segment 0 is direct; segment 1 + i is via the gateway at EVENT_LEVELS[i].
    let segments = 1 + EVENT_LEVELS.len();
    for url in [&direct_url, &gateway_url] {
        run_segment(load, client, url, payload, EVENTS_RATE, WARMUP);
    }
    let mut pooled: Vec<Samples> = (0..segments).map(|_| Samples::default()).collect();
    // CPU ns of the gateway's and the recorder's threads, and requests sent, per segment kind.
    let mut cpu = vec![(0u64, 0u64, 0usize); segments];
    let mut per_round: Vec<Vec<(f64, f64)>> = vec![Vec::new(); segments];
    for round in 0..ROUNDS as usize {
        let mut p = vec![(0.0, 0.0); segments];
        for k in 0..segments {
            let which = (k + round) % segments;
            let url = if which == 0 {
                &direct_url
            } else {
                &gateway_url
            };
            level.store(
                which.checked_sub(1).map_or(0, |i| EVENT_LEVELS[i]),
                Ordering::Relaxed,
            );
            producer.thread().unpark();
            let before = (
                thread_cpu_ns("bench-gateway"),
                thread_cpu_ns("bench-events"),
            );
            let mut segment = run_segment(load, client, url, payload, EVENTS_RATE, SEGMENT);
            level.store(0, Ordering::Relaxed);
            cpu[which].0 += thread_cpu_ns("bench-gateway").saturating_sub(before.0);
            cpu[which].1 += thread_cpu_ns("bench-events").saturating_sub(before.1);
            cpu[which].2 += segment.latencies.len() + segment.failures;
            let (p50, p99) = percentiles(&mut segment.latencies);
            p[which] = (micros(p50), micros(p99));
            pooled[which].latencies.extend(segment.latencies);
            pooled[which].failures += segment.failures;
        }
        for (which, rounds) in per_round.iter_mut().enumerate() {
            rounds.push((p[which].0 - p[0].0, p[which].1 - p[0].1));
        }
    }
    stop.store(true, Ordering::Relaxed);
    producer.thread().unpark();
    let _ = producer.join();
    // Let the followers take what was streamed last.
    std::thread::sleep(Duration::from_millis(200));
    followers_rt.shutdown_background();

    let pooled_p: Vec<(Duration, Duration)> = pooled
        .iter_mut()
        .map(|s| percentiles(&mut s.latencies))
        .collect();
    let added = |p: (Duration, Duration)| {
        (
            micros(p.0) - micros(pooled_p[0].0),
            micros(p.1) - micros(pooled_p[0].1),
        )
    };
    let medians = |values: &[(f64, f64)]| {
        let (mut a, mut b): (Vec<f64>, Vec<f64>) = values.iter().copied().unzip();
        (median(&mut a), median(&mut b))
    };
    let quiet = &per_round[1];
    Ok(StreamCost {
        pooled: pooled_p[1..].iter().map(|&p| added(p)).collect(),
        rounds: per_round[1..].iter().map(|r| medians(r)).collect(),
        round_cost: per_round[1..]
            .iter()
            .map(|r| {
                let diff: Vec<(f64, f64)> = r
                    .iter()
                    .zip(quiet)
                    .map(|(l, q)| (l.0 - q.0, l.1 - q.1))
                    .collect();
                medians(&diff)
            })
            .collect(),
        gateway_cpu: cpu[1..]
            .iter()
            .map(|c| c.0 as f64 / c.2.max(1) as f64)
            .collect(),
        recorder_cpu: cpu[1..]
            .iter()
            .map(|c| c.1 as f64 / c.2.max(1) as f64)
            .collect(),
        recorded: recorded.load(Ordering::Relaxed),
        delivered: delivered.load(Ordering::Relaxed),
        failures: pooled.iter().skip(1).map(|s| s.failures).sum(),
    })
}
