//! The GPU path of the platform end to end, without a GPU: `dilu up` with a declared GPU over the software CUDA
//! driver of `dilu-cuda-testkit`, and `runtime: process` functions whose server (`examples/cuda-ctypes/serve.py`,
//! Python's standard library and `ctypes`) launches kernels and allocates memory through `libcuda`. The agent
//! preloads the interposer (`libdilu_cuda.so`) into every instance, so budgets, vertical scaling and memory caps
//! act on real processes behind the gateway:
//!
//! 1. two inference instances capped at 0.3 and 0.7 of the device, both kept busy, launch work 3:7;
//! 2. an inference burst beside a training job is counted busy by the token manager within two windows of its
//!    first launch, and the budgets it rewrites for it (the inference instance claims the device beyond its
//!    request, training drops from its limit towards its request) are in the channels within two windows of
//!    that. (An idle inference instance claims nothing: its budget is what it may start a burst with, unlimited
//!    at limit 1.0, so the reaction shows as its share settling above its request and training's budget dropping.)
//! 3. an allocation past the memory cap fails with the driver's out-of-memory error, the instance keeps
//!    serving, and the function's `last_error` says why.
//!
//! The simulated device: 132 SMs (one wave = 132 × 2048 threads), [`NS_PER_WAVE`] per wave, declared to the agent
//! with the capacity it really has: [`CAPACITY`] cost units (50 waves) per 5 ms window, the scale of
//! `agent_rckm.rs`. Nothing here needs more than the repository's crates and Python's standard library, so a
//! missing `python3` or missing artifacts fail the test (they never skip).

mod common;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::platform::UpProc;
use common::{channel_path, wait_for};
use dilu_cuda_testkit::{
    ENV_LOG, ENV_NS_PER_WAVE, ENV_STATE, FakeCuda, artifacts, interposer_library,
};
use dilu_quota::{AgentChannel, COST_UNITS_PER_WAVE, UNLIMITED, monotonic_ns};
use serde_json::{Value, json};

/// The software driver's device 0.
const UUID: &str = "GPU-0000d11a-0000-0000-0000-000000000000";
/// The token window.
const WINDOW_NS: u64 = 5_000_000;
/// Nanoseconds one full wave takes on the simulated device: 50 waves per window.
const NS_PER_WAVE: u64 = 100_000;
/// The capacity declared to the agent: the 50 waves per 5 ms window the simulated device runs, so budgets that
/// add up to the whole capacity keep the device busy all the time.
const CAPACITY: u64 = 50 * COST_UNITS_PER_WAVE;
/// Threads per block of every kernel.
const THREADS: u64 = 1024;
/// One wave of 1024-thread blocks on 132 SMs × 2048 threads.
const BLOCKS_PER_WAVE: u64 = 264;

const SAMPLE: &str =
    r#"{"inputs": [{"name": "input", "datatype": "FP32", "shape": [1, 4], "data": [1, 2, 3, 4]}]}"#;

/// The Python that runs the server: `$DILU_PYTHON`, else `python3` on PATH, resolved to its executable (so
/// instances do not depend on shims or on a PATH the agent might not pass on). Panics when there is none: the
/// test needs nothing but Python's standard library, so CI must have it.
fn python() -> String {
    let name = std::env::var("DILU_PYTHON").unwrap_or_else(|_| "python3".into());
    let output = std::process::Command::new(&name)
        .args([
            "-c",
            "import sys, ctypes, http.server; print(sys.executable)",
        ])
        .output()
        .unwrap_or_else(|e| {
            panic!("PYTHON MISSING: cannot run {name:?} ({e}); this test needs python3")
        });
    assert!(
        output.status.success(),
        "PYTHON BROKEN: {name:?} failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let path = String::from_utf8_lossy(&output.stdout).trim().to_string();
    assert!(!path.is_empty(), "{name:?} did not name its executable");
    path
}

/// `examples/cuda-ctypes/serve.py`.
fn server_script() -> PathBuf {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/cuda-ctypes/serve.py");
    let path = path
        .canonicalize()
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    assert!(path.is_file(), "{} is missing", path.display());
    path
}

/// One simulated GPU and a `dilu up` that declares it, with the interposer, no CPU device and 5 ms windows.
struct Gpu {
    up: UpProc,
    cuda: FakeCuda,
    python: String,
    script: PathBuf,
    dir: tempfile::TempDir,
}

impl Gpu {
    fn start() -> Gpu {
        let interposer = interposer_library().unwrap_or_else(|m| panic!("INTERPOSER MISSING: {m}"));
        let driver = artifacts().driver();
        assert!(
            driver.is_file(),
            "SOFTWARE DRIVER MISSING: {} (dilu-cuda-testkit's build script makes it)",
            driver.display()
        );
        let python = python();
        let script = server_script();
        let cuda = FakeCuda::new().unwrap();
        let dir = tempfile::tempdir().unwrap();
        let up = UpProc::start(
            &dir.path().join("data"),
            &[
                "--cpu-cores",
                "0",
                "--window-ms",
                &format!("{}", WINDOW_NS as f64 / 1e6),
                "--gpu",
                &format!("{UUID},capacity={CAPACITY},memory=8GiB"),
                "--interposer",
                interposer.to_str().unwrap(),
            ],
        );
        Gpu {
            up,
            cuda,
            python,
            script,
            dir,
        }
    }

    /// The environment every instance gets: the software driver on the library path, the shared device state.
    fn env(&self, kernel_waves: u64, kernels: u64) -> serde_json::Map<String, Value> {
        let mut env = serde_json::Map::new();
        let app = artifacts();
        env.insert(
            "LD_LIBRARY_PATH".into(),
            json!(app.driver_dir.to_str().unwrap()),
        );
        env.insert(
            ENV_STATE.into(),
            json!(self.cuda.state_path().to_str().unwrap()),
        );
        env.insert(ENV_NS_PER_WAVE.into(), json!(NS_PER_WAVE.to_string()));
        env.insert("WEIGHTS_BYTES".into(), json!("16MiB"));
        env.insert(
            "KERNEL_BLOCKS".into(),
            json!((kernel_waves * BLOCKS_PER_WAVE).to_string()),
        );
        env.insert("KERNEL_THREADS".into(), json!(THREADS.to_string()));
        env.insert("KERNELS_PER_REQUEST".into(), json!(kernels.to_string()));
        env
    }

    /// Deploys a serve.py function (inference, or training with `--train`) on the GPU with a fixed quota and
    /// one instance (no profiling, no calibration).
    fn deploy(
        &self,
        name: &str,
        training: bool,
        env: serde_json::Map<String, Value>,
        quota: Value,
    ) {
        let mut command = vec![json!(self.python), json!(self.script.to_str().unwrap())];
        if training {
            command.push(json!("--train"));
        }
        let mut spec = json!({
            "name": name,
            "kind": if training { "training" } else { "inference" },
            "runtime": "process",
            "process": {
                "command": command,
                "env": env,
                "device": "gpu",
                "max_batch": 4,
                "ready_timeout_s": 30,
            },
            "quota": quota,
            "scaling": {"min_instances": 1, "max_instances": 1},
        });
        if !training {
            spec["slo_ms"] = json!(2000);
            spec["scaling"]["capacity_rps"] = json!(50);
        }
        // JSON is YAML.
        let (status, body) = self.up.deploy_yaml(&spec.to_string());
        assert_eq!(status, 201, "deploying {name}: {body}");
    }

    /// `function`'s one instance in `GET /v1/instances`.
    fn instance(&self, function: &str) -> Value {
        let (status, list) = self.up.get("/v1/instances");
        assert_eq!(status, 200, "{list}");
        list["instances"]
            .as_array()
            .and_then(|a| a.iter().find(|i| i["function"] == function).cloned())
            .unwrap_or_else(|| panic!("no instance of {function}: {list:#}"))
    }

    /// The quota channel of `function`'s instance.
    fn channel(&self, function: &str) -> AgentChannel {
        let id = self.instance(function)["id"].as_str().unwrap().to_string();
        let path = channel_path(&self.up.data_dir.join("agent"), &id);
        AgentChannel::open(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
    }

    /// Waits until the function serves (inference) or runs (training, 0 ready instances needed), and for its
    /// process to have attached to its channel (the interposer is in).
    fn wait_running(&self, function: &str) -> AgentChannel {
        self.up.wait_running(function, 1, Duration::from_secs(60));
        let channel = self.channel(function);
        wait_for(Duration::from_secs(10), || {
            (channel.snapshot().attached_pid != 0).then_some(())
        })
        .unwrap_or_else(|| panic!("{function}: the interposer never attached to its channel"));
        channel
    }
}

/// Closed-loop clients: each sends the next request through the gateway as soon as the last one is answered.
struct Hammer {
    stop: Arc<AtomicBool>,
    ok: Arc<AtomicU64>,
    failures: Arc<Mutex<Vec<String>>>,
    threads: Vec<std::thread::JoinHandle<()>>,
}

impl Hammer {
    fn start(up: &UpProc, function: &str, clients: usize) -> Hammer {
        let url = format!("{}/v2/models/{function}/infer", up.url);
        let stop = Arc::new(AtomicBool::new(false));
        let ok = Arc::new(AtomicU64::new(0));
        let failures = Arc::new(Mutex::new(Vec::new()));
        let threads = (0..clients)
            .map(|_| {
                let (url, stop, ok, failures) =
                    (url.clone(), stop.clone(), ok.clone(), failures.clone());
                std::thread::spawn(move || {
                    let client = reqwest::blocking::Client::builder()
                        .no_proxy()
                        .timeout(Duration::from_secs(30))
                        .build()
                        .unwrap();
                    while !stop.load(Ordering::Relaxed) {
                        match client
                            .post(&url)
                            .header("content-type", "application/json")
                            .body(SAMPLE)
                            .send()
                        {
                            Ok(r) if r.status().is_success() => {
                                let _ = r.bytes();
                                ok.fetch_add(1, Ordering::Relaxed);
                            }
                            Ok(r) => failures.lock().unwrap().push(format!(
                                "{}: {}",
                                r.status(),
                                r.text().unwrap_or_default()
                            )),
                            Err(e) => failures.lock().unwrap().push(e.to_string()),
                        }
                    }
                })
            })
            .collect();
        Hammer {
            stop,
            ok,
            failures,
            threads,
        }
    }

    /// Stops the clients; (requests answered 200, failures).
    fn finish(self) -> (u64, Vec<String>) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads {
            t.join().unwrap();
        }
        let failures = self.failures.lock().unwrap().clone();
        (self.ok.load(Ordering::Relaxed), failures)
    }
}

fn median(values: &mut [f64]) -> f64 {
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}

#[test]
fn two_capped_instances_on_one_gpu_launch_work_three_to_seven() {
    let gpu = Gpu::start();
    // Kernels of 10 waves (1 ms, a fifth of a window), 10 per request: a request is 10 ms of device time, so
    // Python's per-request work (HTTP, JSON, 10 ctypes launches) is small beside the GPU time it asks for, and
    // the 0.3 instance still launches 1.5 kernels per window (15 per 50 ms bucket). Six closed-loop clients per
    // function keep a request waiting at the server whenever one finishes.
    for (name, share) in [("small", 0.3), ("large", 0.7)] {
        gpu.deploy(
            name,
            false,
            gpu.env(10, 10),
            json!({"request": share, "limit": share, "memory": "256MiB"}),
        );
    }
    let small = gpu.wait_running("small");
    let large = gpu.wait_running("large");
    for channel in [&small, &large] {
        assert_eq!(channel.snapshot().device_uuid, UUID);
    }

    let hammers = [
        Hammer::start(&gpu.up, "small", 6),
        Hammer::start(&gpu.up, "large", 6),
    ];
    // Both busy, then a second to settle.
    wait_for(Duration::from_secs(10), || {
        (small.snapshot().launches > 0 && large.snapshot().launches > 0).then_some(())
    })
    .expect("both instances launch kernels");
    std::thread::sleep(Duration::from_secs(1));

    // Sample both channels every ~5 ms for 4 s.
    let mut samples = Vec::new();
    let started = Instant::now();
    while started.elapsed() < Duration::from_secs(4) {
        let (s, l) = (small.snapshot(), large.snapshot());
        samples.push((monotonic_ns(), s.cost_launched, l.cost_launched));
        std::thread::sleep(Duration::from_millis(5));
    }
    let (small_view, large_view) = (gpu.instance("small"), gpu.instance("large"));
    let results: Vec<_> = hammers.into_iter().map(Hammer::finish).collect();

    // 50 ms buckets: the sample at each bucket boundary, and each instance's cost between boundaries.
    const BUCKET_NS: u64 = 50_000_000;
    let t0 = samples[0].0;
    let mut boundaries = Vec::new();
    let mut next = t0;
    for s in &samples {
        if s.0 >= next {
            boundaries.push(*s);
            next = s.0 - (s.0 - t0) % BUCKET_NS + BUCKET_NS;
        }
    }
    let mut shares: Vec<f64> = boundaries
        .windows(2)
        .filter_map(|w| {
            let (a, b) = (w[1].1 - w[0].1, w[1].2 - w[0].2);
            (a + b > 0).then(|| a as f64 / (a + b) as f64)
        })
        .collect();
    let buckets = shares.len();
    let whole = {
        let (first, last) = (samples[0], samples.last().unwrap());
        let (a, b) = (last.1 - first.1, last.2 - first.2);
        let span = (last.0 - first.0) as f64;
        (
            a as f64 / (a + b) as f64,
            (a + b) as f64 / (span / WINDOW_NS as f64) / CAPACITY as f64,
        )
    };
    assert!(buckets >= 40, "only {buckets} buckets");
    let median_share = median(&mut shares);
    let (p10, p90) = (shares[buckets / 10], shares[buckets * 9 / 10]);
    eprintln!(
        "split: median share of the 0.3 instance over {buckets} buckets of 50 ms: {median_share:.4} \
         (p10 {p10:.4}, p90 {p90:.4}); over the whole {:.1} s: {:.4}; the two used {:.3} of the declared capacity",
        (samples.last().unwrap().0 - t0) as f64 / 1e9,
        whole.0,
        whole.1
    );
    for (name, (ok, failures)) in ["small", "large"].iter().zip(&results) {
        eprintln!("{name}: {ok} requests answered, {} failed", failures.len());
        assert!(
            failures.is_empty(),
            "{name}: {:?}",
            &failures[..failures.len().min(5)]
        );
    }
    for view in [&small_view, &large_view] {
        eprintln!(
            "{}: budgeting {} counters {}",
            view["function"], view["budgeting"], view["counters"]
        );
        // The budgets bound them: launches waited for budget.
        assert!(
            view["counters"]["launches_delayed"].as_u64().unwrap() > 0,
            "{view:#}"
        );
    }
    assert!(
        (0.285..=0.315).contains(&median_share),
        "median share of the 0.3 instance {median_share} is not within ±5 % of 0.30"
    );
    // Both were kept busy: together they used most of the declared capacity (0.98-1.0 here; 0.88 with two
    // extra busy loops on this 2-core machine).
    assert!(
        whole.1 > 0.75,
        "the two used only {} of the capacity",
        whole.1
    );
}

#[test]
fn an_inference_burst_raises_its_budget_within_two_windows_of_being_seen_busy() {
    let gpu = Gpu::start();
    let log = gpu.dir.path().join("burst-driver.log");
    // Dilu's placer admits a GPU while the limits on it add up to 1.5 at most: training 0.3..0.5 beside
    // inference 0.5..1.0.
    gpu.deploy(
        "train",
        true,
        gpu.env(5, 4),
        json!({"request": 0.3, "limit": 0.5, "memory": "256MiB"}),
    );
    // Short requests (2 kernels of 0.5 ms) from 4 clients: the instance launches in every window from its first
    // request on, so the burst the token manager counts first lasts as long as the load.
    let mut env = gpu.env(5, 2);
    // The driver logs every call of the inference instance (CLOCK_MONOTONIC): its first launch starts the burst.
    env.insert(ENV_LOG.into(), json!(log.to_str().unwrap()));
    gpu.deploy(
        "burst",
        false,
        env,
        json!({"request": 0.5, "limit": 1.0, "memory": "256MiB"}),
    );
    let train = gpu.wait_running("train");
    let burst = gpu.wait_running("burst");
    // Idle inference: once RCKM has released the device (inference idle for 600 ms), training runs at its limit.
    let released = (0.5 * CAPACITY as f64).round() as u64;
    wait_for(Duration::from_secs(10), || {
        let t = train.snapshot();
        (t.launches > 0 && t.budget_per_window == released).then_some(())
    })
    .unwrap_or_else(|| {
        panic!(
            "training never ran at its limit: {:#}",
            gpu.instance("train")
        )
    });
    let idle = (
        train.snapshot().budget_per_window,
        burst.snapshot().budget_per_window,
    );
    let idle_view = gpu.instance("burst");
    assert_eq!(
        burst.snapshot().launches,
        0,
        "the inference instance is idle"
    );

    // Sample both channels every 0.5 ms, and the API's view of the inference instance as fast as it answers,
    // while a burst of requests runs for 1.5 s.
    let stop = AtomicBool::new(false);
    let (samples, counted, (answered, failures)) = std::thread::scope(|scope| {
        let sampler = scope.spawn(|| {
            let mut samples = Vec::new();
            while !stop.load(Ordering::Relaxed) {
                let (t, b) = (train.snapshot(), burst.snapshot());
                samples.push((monotonic_ns(), t, b));
                std::thread::sleep(Duration::from_micros(500));
            }
            samples
        });
        // The token manager's view while busy: `busy_since_ns` is the tick that counted the burst.
        let poller = scope.spawn(|| {
            while !stop.load(Ordering::Relaxed) {
                let view = gpu.instance("burst");
                if let Some(since) = view["budgeting"]["busy_since_ns"].as_u64() {
                    return Some((since, view));
                }
                std::thread::sleep(Duration::from_millis(1));
            }
            None
        });
        std::thread::sleep(Duration::from_millis(100));
        let hammer = Hammer::start(&gpu.up, "burst", 4);
        std::thread::sleep(Duration::from_millis(1500));
        let results = hammer.finish();
        stop.store(true, Ordering::Relaxed);
        (sampler.join().unwrap(), poller.join().unwrap(), results)
    });
    let (busy_since_ns, busy_view) =
        counted.expect("the API never showed the inference instance busy");

    let text = std::fs::read_to_string(&log).unwrap();
    let first_launch_ns: u64 = text
        .lines()
        .find(|l| l.contains(" fn=cuLaunchKernel "))
        .and_then(|l| l.strip_prefix("t=")?.split(' ').next()?.parse().ok())
        .expect("the driver logged the burst's first launch");
    let ms = |ns: u64| ns as f64 / 1e6;
    let rel = |ns: u64| (ns as f64 - first_launch_ns as f64) / 1e6;
    // The first sample that shows new budgets, and the tick that wrote them (stamped on the channel with them).
    let changed = samples
        .iter()
        .position(|s| {
            s.0 > first_launch_ns && (s.1.budget_per_window, s.2.budget_per_window) != idle
        })
        .expect("the budgets never changed");
    let (seen_ns, t, b) = &samples[changed];
    let gap_ns = seen_ns - samples[changed - 1].0;
    let tick_ns = t.agent_tick_ns;
    let counted = busy_since_ns.saturating_sub(first_launch_ns);
    let seen = seen_ns.saturating_sub(busy_since_ns);
    eprintln!(
        "burst: first launch at 0 ms; the token manager counted the instance busy at {:+.2} ms ({:.2} windows); \
         the first sample with new budgets, {:.2} ms ({:.2} windows) after that (samples {:.2} ms apart there), \
         came from the tick at {:+.2} ms: training {} -> {} units ({:.3} -> {:.3} of the device), inference {} -> {} \
         (share {} -> {})",
        rel(busy_since_ns),
        counted as f64 / WINDOW_NS as f64,
        ms(seen),
        seen as f64 / WINDOW_NS as f64,
        ms(gap_ns),
        rel(tick_ns),
        idle.0,
        t.budget_per_window,
        idle.0 as f64 / CAPACITY as f64,
        t.budget_per_window as f64 / CAPACITY as f64,
        budget_text(idle.1),
        budget_text(b.budget_per_window),
        idle_view["budgeting"]["share"],
        busy_view["budgeting"]["share"],
    );
    eprintln!(
        "burst: {answered} requests answered, {} failed",
        failures.len()
    );
    assert!(
        failures.is_empty(),
        "{:?}",
        &failures[..failures.len().min(5)]
    );
    // The tick that counted the burst is the one that rewrote the budgets for it.
    assert_eq!(
        busy_since_ns, tick_ns,
        "busy since {busy_since_ns} but the budgets changed at the tick of {tick_ns}"
    );
    assert!(
        busy_since_ns >= first_launch_ns && counted <= 2 * WINDOW_NS,
        "the burst was counted {:.2} ms after its first launch",
        rel(busy_since_ns)
    );
    // Seen within two windows of being counted; the sampler's own delay (its sleep and the machine's load) is in
    // this number, so it bounds the reaction from above.
    assert!(
        seen <= 2 * WINDOW_NS,
        "the budgets changed {seen} ns after the burst was counted"
    );
    // Vertical scaling: the inference instance claims the device beyond its request (while idle it claimed
    // nothing: its budget was what it may start a burst with), and training yields, down towards its request.
    assert!(
        t.budget_per_window < idle.0,
        "training kept {} units (idle: {})",
        t.budget_per_window,
        idle.0
    );
    assert!(
        t.budget_per_window >= (0.3 * CAPACITY as f64) as u64,
        "training below its request: {}",
        t.budget_per_window
    );
    assert!(
        busy_view["budgeting"]["share"].as_f64().unwrap() > 0.5,
        "{busy_view:#}"
    );
}

/// A budget in cost units per window, or "unlimited".
fn budget_text(budget: u64) -> String {
    if budget == UNLIMITED {
        "unlimited".into()
    } else {
        budget.to_string()
    }
}

#[test]
fn an_allocation_past_the_memory_cap_fails_with_out_of_memory_and_the_instance_keeps_serving() {
    let gpu = Gpu::start();
    gpu.deploy(
        "capped",
        false,
        gpu.env(1, 2),
        json!({"request": 0.5, "limit": 0.5, "memory": "64MiB"}),
    );
    let channel = gpu.wait_running("capped");
    let with_alloc = |bytes: u64| {
        let mut body: Value = serde_json::from_str(SAMPLE).unwrap();
        body["parameters"] = json!({"alloc_bytes": bytes});
        gpu.up.infer("capped", body.to_string().as_bytes())
    };
    // 16 MiB of weights + 32 MiB fits the 64 MiB cap.
    let (status, body) = with_alloc(32 << 20);
    assert_eq!(status, 200, "{body}");
    // 16 + 128 MiB does not: the interposer refuses it with the driver's own error (the device has 8 GiB).
    let (status, body) = with_alloc(128 << 20);
    eprintln!("alloc 128 MiB under a 64 MiB cap: {status} {body}");
    assert_eq!(status, 500, "{body}");
    let error = body["error"].as_str().unwrap_or_default();
    assert!(error.contains("CUDA_ERROR_OUT_OF_MEMORY (2)"), "{body}");
    let (status, body) = gpu.up.infer("capped", SAMPLE.as_bytes());
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["outputs"][0]["data"], json!([2.0, 4.0, 6.0, 8.0]));
    let snapshot = channel.snapshot();
    assert!(snapshot.alloc_failures >= 1, "{snapshot:?}");
    assert_eq!(
        snapshot.bytes_allocated,
        16 << 20,
        "only the weights are held"
    );
    let last_error = wait_for(Duration::from_secs(5), || {
        let (_, view) = gpu.up.get("/v1/functions/capped");
        view["last_error"].as_str().map(str::to_string)
    })
    .unwrap_or_else(|| panic!("no last_error: {:#}", gpu.up.get("/v1/functions/capped").1));
    eprintln!("last_error: {last_error}");
    assert!(
        last_error.contains("ran out of device memory") && last_error.contains("(64 MiB)"),
        "{last_error}"
    );
    let (_, view) = gpu.up.get("/v1/functions/capped");
    assert_eq!(view["status"]["phase"], "running", "{view:#}");
    let counters = &gpu.instance("capped")["counters"];
    assert!(
        counters["alloc_failures"].as_u64().unwrap() >= 1,
        "{counters}"
    );
}
