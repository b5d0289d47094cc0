//! `dilu sim calibrate` and `dilu sim validate`: the serving simulator checked against the live platform
//! (`docs/sim-vs-live.md`).
//!
//! - `calibrate` measures one function on this machine's CPU device at a grid of (batch × share) and writes a
//!   profile table in Dilu's CSV format (`batch, sm_pct, latency_s, throughput`), which a scenario's
//!   `profile:` key reads. Inference: a `dilu worker` under a CPU quota channel whose budget is set to each
//!   share in turn (request = limit = the share, exactly what the token manager grants a resident held at
//!   one share), timing rounds of `batch` concurrent requests as the live profiler does. Training: a
//!   `dilu train` under the same channel, iterations per second at each share. It also times the cold start
//!   (spawn to the first answer).
//! - `validate` runs one scenario twice: on the live platform (`dilu up` in a fresh data directory, the
//!   functions and training jobs deployed from their specs, an open-loop load generator replaying the
//!   **same arrivals** the simulator draws — `ArrivalStream` with the scenario's seed) and in the simulator,
//!   and prints both side by side with the ratio sim/live per metric.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use clap::Args;
use dilu_core::perf::{PerfModel, builtin_model_names};
use dilu_quota::layout::mode;
use dilu_quota::{AgentChannel, ChannelSpec, DeviceKind, UNLIMITED};
use dilu_sim::serve::scenario::{Scenario, load_scenario};
use dilu_sim::serve::setup::DEFAULT_REQUEST_TIMEOUT_S;
use dilu_sim::serve::workload::{ArrivalStream, arrival_seed};
use dilu_sim::serve::{PolicyName, PolicyRun, prepare, run_policy};
use serde::Serialize;
use serde_json::{Value, json};

/// Arguments of `dilu sim calibrate`.
#[derive(Debug, Args)]
pub struct CalibrateArgs {
    /// Measure this ONNX model (served by `dilu worker`); conflicts with --trainer.
    #[arg(long, required_unless_present = "trainer", conflicts_with = "trainer")]
    onnx: Option<PathBuf>,
    /// A v2 inference request body (JSON) for --onnx, e.g. ~/.cache/dilu/models/inputs/squeezenet.json.
    #[arg(long, requires = "onnx")]
    input: Option<PathBuf>,
    /// Measure the built-in trainer (`dilu train`) instead.
    #[arg(long)]
    trainer: bool,
    /// Trainer: width of the hidden layers.
    #[arg(long, default_value_t = 256)]
    hidden: u32,
    /// Trainer: hidden layers.
    #[arg(long, default_value_t = 2)]
    layers: u32,
    /// Inference only: measure next to a busy `dilu train` (--hidden, --layers, --trainer-batch) held at
    /// this share of the device in percent, the condition a co-location scenario runs the function in.
    #[arg(long, conflicts_with = "trainer", value_parser = clap::value_parser!(u32).range(1..=100))]
    beside_trainer: Option<u32>,
    /// Batch of the --beside-trainer trainer.
    #[arg(long, default_value_t = 64)]
    trainer_batch: u32,
    /// Batch sizes (inference), comma-separated; the trainer's one batch (e.g. 64) for --trainer.
    #[arg(long, default_value = "1,2,4", value_delimiter = ',')]
    batches: Vec<u32>,
    /// Shares of the CPU device in percent, comma-separated.
    #[arg(
        long,
        default_value = "10,20,30,40,50,60,80,100",
        value_delimiter = ','
    )]
    shares: Vec<u32>,
    /// Timed rounds per inference point (after one warm-up round).
    #[arg(long, default_value_t = 6)]
    rounds: u32,
    /// Seconds a training point is measured.
    #[arg(long, default_value_t = 2.0)]
    train_window_s: f64,
    /// Cores of the CPU device (default: all of this machine's, as `dilu up` offers them).
    #[arg(long)]
    cores: Option<u32>,
    /// Token window in milliseconds (as `dilu up --window-ms`).
    #[arg(long, default_value_t = 5)]
    window_ms: u64,
    /// Where to write the table.
    #[arg(long)]
    out: PathBuf,
}

/// Arguments of `dilu sim validate`.
#[derive(Debug, Args)]
pub struct ValidateArgs {
    /// The scenario: one node with one device (the CPU device); its functions and jobs name calibrated
    /// profiles.
    #[arg(long)]
    scenario: PathBuf,
    /// A function spec (YAML, as `dilu deploy -f` takes) per scenario function and training job, matched by
    /// `metadata.name`. Repeatable.
    #[arg(long = "spec", required = true)]
    specs: Vec<PathBuf>,
    /// A request body per inference function: NAME=FILE (v2 JSON). Repeatable.
    #[arg(long = "input", value_parser = parse_input)]
    inputs: Vec<(String, PathBuf)>,
    /// Run this long instead of the scenario's duration_s (seconds; above warmup_s).
    #[arg(long)]
    duration_s: Option<f64>,
    /// Policy, in the simulator and in `dilu up --policy`.
    #[arg(long, default_value = "dilu")]
    policy: PolicyName,
    /// Keep the live run's data directory here (default: a temporary one, removed afterwards).
    #[arg(long)]
    live_dir: Option<PathBuf>,
    /// Write the comparison as JSON here.
    #[arg(long)]
    json: Option<PathBuf>,
    /// Token window in milliseconds for `dilu up`.
    #[arg(long, default_value_t = 5)]
    window_ms: u64,
    /// Interval of the instance sampler, milliseconds (live) — the simulator samples at the scenario's
    /// sample_interval_s.
    #[arg(long, default_value_t = 250)]
    sample_ms: u64,
    /// First re-measure every `profile:` table the scenario names (overwriting the files), on this machine
    /// and right before the live run, so that both see the same machine: each inference function at batches
    /// 1, 2, 4, … up to its batch (its model from the spec, its request body from --input), each training job
    /// with the spec's trainer settings.
    #[arg(long)]
    calibrate: bool,
    /// Timed rounds per inference point with --calibrate.
    #[arg(long, default_value_t = 6)]
    rounds: u32,
}

fn parse_input(s: &str) -> Result<(String, PathBuf), String> {
    let (name, file) = s
        .split_once('=')
        .ok_or_else(|| format!("--input {s:?}: expected NAME=FILE"))?;
    if name.is_empty() || file.is_empty() {
        return Err(format!("--input {s:?}: expected NAME=FILE"));
    }
    Ok((name.to_owned(), PathBuf::from(file)))
}

// ---------------------------------------------------------------------------------------------------------
// Processes.

/// A child process killed (SIGTERM, then SIGKILL) when dropped.
struct Guard(Child);

impl Drop for Guard {
    fn drop(&mut self) {
        // SAFETY: kill(2) with our own child's pid and a valid signal.
        unsafe {
            libc::kill(self.0.id() as libc::pid_t, libc::SIGTERM);
        }
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.0.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Spawns `exe args` and waits for a stdout line starting with `prefix`; returns the rest of the line.
fn spawn_until(mut cmd: Command, prefix: &str, what: &str) -> Result<(Guard, String)> {
    cmd.stdout(Stdio::piped()).stderr(Stdio::inherit());
    let mut child = cmd.spawn().with_context(|| format!("starting {what}"))?;
    let stdout = child
        .stdout
        .take()
        .with_context(|| format!("{what}: no stdout"))?;
    let guard = Guard(child);
    let (tx, rx) = std::sync::mpsc::channel();
    let wanted = prefix.to_owned();
    std::thread::spawn(move || {
        let mut sent = false;
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if !sent && let Some(rest) = line.strip_prefix(&wanted) {
                let _ = tx.send(rest.trim().to_owned());
                sent = true;
            }
        }
    });
    let rest = rx
        .recv_timeout(Duration::from_secs(60))
        .with_context(|| format!("{what} did not print {prefix:?} within 60 s"))?;
    Ok((guard, rest))
}

fn cores(flag: Option<u32>) -> Result<u32> {
    match flag {
        Some(0) => bail!("--cores 0: must be ≥ 1"),
        Some(n) => Ok(n),
        None => Ok(std::thread::available_parallelism()
            .context("counting cores")?
            .get() as u32),
    }
}

// ---------------------------------------------------------------------------------------------------------
// Calibration.

/// Runs `dilu sim calibrate`.
pub fn calibrate(a: CalibrateArgs) -> Result<()> {
    ensure!(!a.batches.is_empty(), "--batches: give at least one batch");
    ensure!(!a.shares.is_empty(), "--shares: give at least one share");
    for &s in &a.shares {
        ensure!((1..=100).contains(&s), "--shares {s}: must be in 1..=100");
    }
    for &b in &a.batches {
        ensure!(
            (1..=4096).contains(&b),
            "--batches {b}: must be in 1..=4096"
        );
    }
    ensure!(a.rounds >= 1, "--rounds 0: must be ≥ 1");
    ensure!(
        a.train_window_s > 0.0 && a.train_window_s.is_finite(),
        "--train-window-s {}: must be > 0",
        a.train_window_s
    );
    let cores = cores(a.cores)?;
    let window_ns = a.window_ms * 1_000_000;
    let capacity_ns = u64::from(cores) * window_ns;
    let dir = tempdir("dilu-calibrate")?;
    let quota_path = dir.join("quota");
    let channel = AgentChannel::create(
        &quota_path,
        &ChannelSpec {
            device_uuid: String::new(),
            device_kind: DeviceKind::Cpu,
            budget_per_window: UNLIMITED,
            window_ns,
            mem_cap_bytes: UNLIMITED,
            mode: mode::ALL,
            resident_threads: 0,
        },
        0o600,
    )
    .with_context(|| format!("creating quota channel {}", quota_path.display()))?;
    let set_share = |pct: u32| {
        channel.set_budget(capacity_ns * u64::from(pct) / 100);
        std::thread::sleep(Duration::from_millis(50));
    };
    let exe = std::env::current_exe().context("locating the dilu binary")?;
    let _beside = match a.beside_trainer {
        Some(pct) => {
            let path = dir.join("beside");
            AgentChannel::create(
                &path,
                &ChannelSpec {
                    device_uuid: String::new(),
                    device_kind: DeviceKind::Cpu,
                    budget_per_window: capacity_ns * u64::from(pct) / 100,
                    window_ns,
                    mem_cap_bytes: UNLIMITED,
                    mode: mode::ALL,
                    resident_threads: 0,
                },
                0o600,
            )
            .with_context(|| format!("creating quota channel {}", path.display()))?;
            let mut cmd = Command::new(&exe);
            cmd.args(["train", "--listen", "127.0.0.1:0"])
                .args(["--hidden", &a.hidden.to_string()])
                .args(["--layers", &a.layers.to_string()])
                .args(["--batch", &a.trainer_batch.to_string()])
                .arg("--quota-file")
                .arg(&path);
            let (guard, _) = spawn_until(cmd, "dilu train listening on ", "dilu train")?;
            eprintln!("calibrate: next to a trainer held at {pct}% of the device");
            Some(guard)
        }
        None => None,
    };
    let mut rows: Vec<(u32, u32, f64, f64)> = Vec::new();
    let cold_start_s;
    if a.trainer {
        ensure!(
            a.batches.len() == 1,
            "--batches: --trainer takes exactly one batch (the trainer's)"
        );
        let batch = a.batches[0];
        let started = Instant::now();
        let mut cmd = Command::new(&exe);
        cmd.args(["train", "--listen", "127.0.0.1:0"])
            .args(["--hidden", &a.hidden.to_string()])
            .args(["--layers", &a.layers.to_string()])
            .args(["--batch", &batch.to_string()])
            .arg("--quota-file")
            .arg(&quota_path);
        let (_trainer, url) = spawn_until(cmd, "dilu train listening on ", "dilu train")?;
        let client = reqwest::blocking::Client::new();
        let iterations = || -> Result<u64> {
            let v: Value = client
                .get(format!("{url}/status"))
                .send()
                .and_then(|r| r.error_for_status())
                .and_then(|r| r.json())
                .with_context(|| format!("GET {url}/status"))?;
            v["iterations"]
                .as_u64()
                .with_context(|| format!("GET {url}/status: no 'iterations' in {v}"))
        };
        while iterations()? == 0 {
            std::thread::sleep(Duration::from_millis(5));
        }
        cold_start_s = started.elapsed().as_secs_f64();
        for &pct in &a.shares {
            set_share(pct);
            std::thread::sleep(Duration::from_millis(300));
            let (i0, t0) = (iterations()?, Instant::now());
            std::thread::sleep(Duration::from_secs_f64(a.train_window_s));
            let (i1, dt) = (iterations()?, t0.elapsed().as_secs_f64());
            ensure!(
                i1 > i0,
                "the trainer made no progress at {pct}% of the device in {dt:.1} s"
            );
            let per_s = (i1 - i0) as f64 / dt;
            eprintln!("calibrate: training at {pct:3}%: {per_s:.1} iterations/s");
            rows.push((batch, pct, 1.0 / per_s, per_s * f64::from(batch)));
        }
    } else {
        let onnx = a.onnx.as_ref().context("--onnx or --trainer is required")?;
        let input = a
            .input
            .as_ref()
            .context("--input is required with --onnx")?;
        let body = std::fs::read(input).with_context(|| format!("reading {}", input.display()))?;
        let max_batch = a.batches.iter().copied().max().unwrap_or(1);
        let started = Instant::now();
        let mut cmd = Command::new(&exe);
        cmd.args(["worker", "--name", "m", "--listen", "127.0.0.1:0"])
            .arg("--model")
            .arg(onnx)
            .args(["--max-batch", &max_batch.to_string()])
            .arg("--quota-file")
            .arg(&quota_path);
        let (_worker, url) = spawn_until(cmd, "dilu worker listening on ", "dilu worker")?;
        let infer = format!("{url}/v2/models/m/infer");
        let client = reqwest::blocking::Client::builder()
            .timeout(Duration::from_secs(60))
            .build()
            .context("building the HTTP client")?;
        let round = |batch: u32| -> Result<f64> {
            let t0 = Instant::now();
            std::thread::scope(|s| {
                let handles: Vec<_> = (0..batch)
                    .map(|_| {
                        s.spawn(|| {
                            client
                                .post(&infer)
                                .header("content-type", "application/json")
                                .body(body.clone())
                                .send()
                                .and_then(|r| r.error_for_status())
                                .map(|_| ())
                        })
                    })
                    .collect();
                for h in handles {
                    match h.join() {
                        Ok(r) => r.with_context(|| format!("POST {infer}"))?,
                        Err(_) => bail!("a request thread panicked"),
                    }
                }
                Ok(())
            })?;
            Ok(t0.elapsed().as_secs_f64())
        };
        // The worker listens before its model is loaded (it answers 503 until then).
        let deadline = Instant::now() + Duration::from_secs(120);
        while let Err(e) = round(1) {
            ensure!(
                Instant::now() < deadline,
                "the worker did not answer within 120 s: {e:#}"
            );
            std::thread::sleep(Duration::from_millis(5));
        }
        cold_start_s = started.elapsed().as_secs_f64();
        for &batch in &a.batches {
            for &pct in &a.shares {
                set_share(pct);
                round(batch)?;
                let mut times = (0..a.rounds)
                    .map(|_| round(batch))
                    .collect::<Result<Vec<f64>>>()?;
                times.sort_by(f64::total_cmp);
                let median = times[times.len() / 2];
                let mean = times.iter().sum::<f64>() / times.len() as f64;
                eprintln!(
                    "calibrate: batch {batch} at {pct:3}%: {:.1} ms per batch",
                    median * 1e3
                );
                rows.push((batch, pct, median, f64::from(batch) / mean));
            }
        }
    }
    let mut text = String::new();
    for (b, p, l, t) in &rows {
        text.push_str(&format!("{b},{p},{l:.6},{t:.6}\n"));
    }
    if let Some(parent) = a.out.parent()
        && !parent.as_os_str().is_empty()
    {
        std::fs::create_dir_all(parent)
            .with_context(|| format!("creating {}", parent.display()))?;
    }
    std::fs::write(&a.out, text).with_context(|| format!("writing {}", a.out.display()))?;
    let _ = std::fs::remove_dir_all(&dir);
    println!(
        "calibrate: wrote {} points to {}; cold start (spawn to first answer) {cold_start_s:.2} s on {cores} cores",
        rows.len(),
        a.out.display()
    );
    Ok(())
}

fn tempdir(prefix: &str) -> Result<PathBuf> {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    let dir = std::env::temp_dir().join(format!("{prefix}-{}-{nanos}", std::process::id()));
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    Ok(dir)
}

// ---------------------------------------------------------------------------------------------------------
// Validation.

/// What one side (live or simulated) measured.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Side {
    /// Measured requests (arrived after warm-up).
    pub requests: u64,
    /// Median latency of completed measured requests, ms.
    pub p50_ms: f64,
    /// 99th percentile, ms.
    pub p99_ms: f64,
    /// Fraction of measured requests late, dropped or failed.
    pub slo_violation_rate: f64,
    /// ∫ inference instances dt, seconds (from placement until gone).
    pub instance_seconds: f64,
    /// Seconds from the start at which the inference instance count rose.
    pub scale_out_s: Vec<f64>,
    /// Iterations per second of each training job over the run.
    pub training_iterations_per_s: Vec<f64>,
    /// Requests per second one instance of each function serves at its request, as the horizontal scaler
    /// counts it: the simulator's from the calibrated table, the platform's from its own measurement at deploy
    /// (the `profiled` event).
    pub capacity_rps: Vec<f64>,
    /// Live only: every request as `[arrival s, latency ms or null when it failed or timed out]`.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub raw: Vec<(f64, Option<f64>)>,
}

/// One row of the comparison.
#[derive(Debug, Clone, Serialize)]
struct Row {
    metric: String,
    live: f64,
    sim: f64,
    ratio: Option<f64>,
}

/// Re-measures the tables `scenario_path` names under `profile:` (see `ValidateArgs::calibrate`).
fn recalibrate(a: &ValidateArgs) -> Result<()> {
    let text = std::fs::read_to_string(&a.scenario)
        .with_context(|| format!("reading {}", a.scenario.display()))?;
    let raw: serde_yaml::Value =
        serde_yaml::from_str(&text).with_context(|| format!("parsing {}", a.scenario.display()))?;
    let base = a.scenario.parent().unwrap_or(Path::new("."));
    let specs: BTreeMap<String, serde_yaml::Value> = a
        .specs
        .iter()
        .map(|p| {
            let t =
                std::fs::read_to_string(p).with_context(|| format!("reading {}", p.display()))?;
            let v: serde_yaml::Value =
                serde_yaml::from_str(&t).with_context(|| format!("parsing {}", p.display()))?;
            let name = v["metadata"]["name"]
                .as_str()
                .with_context(|| format!("{}: no metadata.name", p.display()))?
                .to_owned();
            Ok((name, v))
        })
        .collect::<Result<_>>()?;
    let entries = |key: &str| raw[key].as_sequence().cloned().unwrap_or_default();
    // A co-location scenario's inference runs next to its training jobs, busy at their limits: the first one
    // with a spec runs beside the inference calibration.
    let beside = entries("training").into_iter().find_map(|t| {
        let spec = specs.get(t["name"].as_str()?)?;
        let tr = &spec["spec"]["training"];
        let limit = t["sm_limit"].as_f64().or(t["sm_request"].as_f64())?;
        let field = |k: &str, default: u64| tr[k].as_u64().unwrap_or(default) as u32;
        Some((
            (limit * 100.0).round().clamp(1.0, 100.0) as u32,
            field("hidden", 128),
            field("layers", 2),
            field("batch", 128),
        ))
    });
    for f in entries("functions") {
        let (Some(name), Some(profile)) = (f["name"].as_str(), f["profile"].as_str()) else {
            continue;
        };
        let spec = specs
            .get(name)
            .with_context(|| format!("--calibrate: no --spec for '{name}'"))?;
        let model = spec["spec"]["model"]["path"]
            .as_str()
            .with_context(|| format!("--calibrate: spec of '{name}' has no spec.model.path"))?;
        let onnx = crate::cmd::client::expand(model, "spec.model.path")?;
        let input = a
            .inputs
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, f)| f.clone())
            .with_context(|| format!("--calibrate: no --input {name}=FILE"))?;
        let top = f["batch"].as_u64().unwrap_or(1).max(1) as u32;
        let batches: Vec<u32> = std::iter::successors(Some(1u32), |b| b.checked_mul(2))
            .take_while(|&b| b < top)
            .chain(std::iter::once(top))
            .collect();
        eprintln!("validate: calibrating '{name}' into {profile} ...");
        calibrate(CalibrateArgs {
            onnx: Some(PathBuf::from(onnx)),
            input: Some(input),
            trainer: false,
            hidden: beside.map_or(128, |b| b.1),
            layers: beside.map_or(2, |b| b.2),
            beside_trainer: beside.map(|b| b.0),
            trainer_batch: beside.map_or(128, |b| b.3),
            batches,
            shares: DEFAULT_SHARES.to_vec(),
            rounds: a.rounds,
            train_window_s: 2.0,
            cores: None,
            window_ms: a.window_ms,
            out: base.join(profile),
        })?;
    }
    for t in entries("training") {
        let (Some(name), Some(profile)) = (t["name"].as_str(), t["profile"].as_str()) else {
            continue;
        };
        let spec = specs
            .get(name)
            .with_context(|| format!("--calibrate: no --spec for '{name}'"))?;
        let tr = &spec["spec"]["training"];
        let field = |k: &str, default: u64| tr[k].as_u64().unwrap_or(default) as u32;
        eprintln!("validate: calibrating '{name}' into {profile} ...");
        calibrate(CalibrateArgs {
            onnx: None,
            input: None,
            trainer: true,
            hidden: field("hidden", 128),
            layers: field("layers", 2),
            beside_trainer: None,
            trainer_batch: field("batch", 128),
            batches: vec![field("batch", 128)],
            shares: DEFAULT_SHARES.to_vec(),
            rounds: a.rounds,
            train_window_s: 2.0,
            cores: None,
            window_ms: a.window_ms,
            out: base.join(profile),
        })?;
    }
    Ok(())
}

/// The share grid `--calibrate` measures, percent.
const DEFAULT_SHARES: [u32; 8] = [10, 20, 30, 40, 50, 60, 80, 100];

/// The 1-minute load average of this machine (what else competes for the CPU device's cores), if known.
fn load_average() -> Option<f64> {
    std::fs::read_to_string("/proc/loadavg")
        .ok()?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// Runs `dilu sim validate`.
pub fn validate(a: ValidateArgs) -> Result<()> {
    if a.calibrate {
        recalibrate(&a)?;
    }
    let names = builtin_model_names();
    let mut scenario = load_scenario(&a.scenario, &names)?;
    if let Some(d) = a.duration_s {
        ensure!(
            d.is_finite() && d > scenario.warmup_s,
            "--duration-s {d}: must be a number of seconds above the scenario's warmup_s ({})",
            scenario.warmup_s
        );
        scenario.duration_s = d;
    }
    ensure!(
        scenario.cluster.nodes == 1 && scenario.cluster.gpus_per_node == 1,
        "{}: cluster must be one node with one device (the CPU device `dilu up` offers), not {} × {}",
        a.scenario.display(),
        scenario.cluster.nodes,
        scenario.cluster.gpus_per_node
    );
    let specs = read_specs(&a.specs, &scenario)?;
    let inputs: BTreeMap<String, Vec<u8>> = a
        .inputs
        .iter()
        .map(|(n, f)| {
            std::fs::read(f)
                .with_context(|| format!("--input {n}={}: reading", f.display()))
                .map(|b| (n.clone(), b))
        })
        .collect::<Result<_>>()?;
    for f in &scenario.functions {
        ensure!(
            inputs.contains_key(&f.name),
            "function '{}' has no request body: pass --input {}=FILE",
            f.name,
            f.name
        );
    }

    eprintln!("validate: simulating {} ...", scenario.name);
    let setup = prepare(&scenario).context("preparing the scenario")?;
    let run = run_policy(&setup, a.policy).context("simulating")?;
    let sim = sim_side(&scenario, &setup, &run);

    eprintln!(
        "validate: running {} live for {} s ...",
        scenario.name, scenario.duration_s
    );
    let load_before = load_average();
    let live = live_side(&a, &scenario, &specs, &inputs)?;
    let load_after = load_average();
    eprintln!(
        "validate: machine load average (1 min) {} before the live run, {} after",
        load_before.map_or("unknown".into(), |l| format!("{l:.2}")),
        load_after.map_or("unknown".into(), |l| format!("{l:.2}"))
    );

    let rows = compare(&live, &sim);
    print_table(&scenario.name, &rows, &live, &sim);
    if let Some(path) = &a.json {
        let v = json!({
            "scenario": scenario.name,
            "policy": a.policy.as_str(),
            "duration_s": scenario.duration_s,
            "live": live,
            "sim": sim,
            "rows": rows,
            "worst_ratio": worst(&rows),
            "load_average": { "before": load_before, "after": load_after },
        });
        std::fs::write(path, serde_json::to_string_pretty(&v)?)
            .with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(())
}

/// The specs, checked against the scenario: one per function and job, same kind, same quota and batch.
fn read_specs(paths: &[PathBuf], scenario: &Scenario) -> Result<BTreeMap<String, PathBuf>> {
    let mut out = BTreeMap::new();
    for p in paths {
        let text =
            std::fs::read_to_string(p).with_context(|| format!("reading {}", p.display()))?;
        let v: serde_yaml::Value =
            serde_yaml::from_str(&text).with_context(|| format!("parsing {}", p.display()))?;
        let name = v["metadata"]["name"]
            .as_str()
            .with_context(|| format!("{}: no metadata.name", p.display()))?
            .to_owned();
        let kind = v["spec"]["kind"].as_str().unwrap_or("inference");
        let request = v["spec"]["quota"]["request"].as_f64();
        let limit = v["spec"]["quota"]["limit"].as_f64();
        if let Some(f) = scenario.functions.iter().find(|f| f.name == name) {
            ensure!(
                kind == "inference",
                "{}: '{name}' is an inference function in the scenario, not {kind}",
                p.display()
            );
            let batch = v["spec"]["model"]["max_batch"].as_u64().map(|b| b as u32);
            ensure!(
                batch == f.batch,
                "{}: spec.model.max_batch {batch:?} differs from the scenario's batch {:?}",
                p.display(),
                f.batch
            );
            ensure!(
                request == f.sm_request && limit == f.sm_limit.or(f.sm_request),
                "{}: quota {request:?}..{limit:?} differs from the scenario's sm_request/sm_limit {:?}..{:?}",
                p.display(),
                f.sm_request,
                f.sm_limit
            );
        } else if let Some(t) = scenario.training.iter().find(|t| t.name == name) {
            ensure!(
                kind == "training",
                "{}: '{name}' is a training job in the scenario, not {kind}",
                p.display()
            );
            ensure!(
                request == t.sm_request && limit == t.sm_limit,
                "{}: quota {request:?}..{limit:?} differs from the scenario's {:?}..{:?}",
                p.display(),
                t.sm_request,
                t.sm_limit
            );
        } else {
            bail!(
                "{}: '{name}' is neither a function nor a training job of scenario {}",
                p.display(),
                scenario.name
            );
        }
        ensure!(
            out.insert(name.clone(), p.clone()).is_none(),
            "two specs for '{name}'"
        );
    }
    for n in scenario
        .functions
        .iter()
        .map(|f| &f.name)
        .chain(scenario.training.iter().map(|t| &t.name))
    {
        ensure!(out.contains_key(n), "no --spec for '{n}'");
    }
    Ok(out)
}

fn sim_side(scenario: &Scenario, setup: &dilu_sim::serve::Setup, run: &PolicyRun) -> Side {
    let r = &run.report;
    let dt = scenario.sample_interval_s;
    let mut instance_seconds = 0.0;
    let mut scale_out_s = Vec::new();
    let mut last = setup
        .prepared
        .functions
        .iter()
        .map(|f| f.initial_instances)
        .sum::<u32>();
    for p in &run.timeline {
        instance_seconds += f64::from(p.instances) * dt;
        for _ in last..p.instances {
            // The sample at t covers (t − dt, t]: the instance appeared during it.
            scale_out_s.push(p.t_s - dt);
        }
        last = p.instances;
    }
    let training_iterations_per_s = setup
        .prepared
        .training
        .iter()
        .zip(&r.training_jobs)
        .zip(&scenario.training)
        .map(|((_, rel), spec)| {
            // Relative progress × iterations per second alone on the whole device: the (monotonised) model's
            // throughput at 100%, the point the simulator's training curve calls 1.
            let full = spec
                .profile
                .as_ref()
                .and_then(|t| PerfModel::from_table(t).ok())
                .map_or(f64::NAN, |m| {
                    let b = m.max_grid_batch();
                    m.throughput(b, 1.0) / f64::from(b)
                });
            rel * full
        })
        .collect();
    Side {
        requests: r.requests,
        p50_ms: r.p50_ms,
        p99_ms: r.p99_ms,
        slo_violation_rate: r.slo_violation_rate,
        instance_seconds,
        scale_out_s,
        training_iterations_per_s,
        capacity_rps: setup
            .profiles
            .iter()
            .take(setup.prepared.functions.len())
            .map(|p| p.capacity_rps)
            .collect(),
        raw: Vec::new(),
    }
}

/// One request's outcome, client-side.
#[derive(Debug, Clone, Copy)]
struct Outcome {
    func: usize,
    arrival_s: f64,
    /// `Some(latency)` when it succeeded, `None` when it failed or timed out.
    latency_s: Option<f64>,
}

fn live_side(
    a: &ValidateArgs,
    scenario: &Scenario,
    specs: &BTreeMap<String, PathBuf>,
    inputs: &BTreeMap<String, Vec<u8>>,
) -> Result<Side> {
    let exe = std::env::current_exe().context("locating the dilu binary")?;
    let (dir, remove) = match &a.live_dir {
        Some(d) => {
            std::fs::create_dir_all(d).with_context(|| format!("creating {}", d.display()))?;
            (d.clone(), false)
        }
        None => (tempdir("dilu-validate")?, true),
    };
    let mut cmd = Command::new(&exe);
    cmd.arg("up")
        .arg("--data-dir")
        .arg(&dir)
        .args(["--listen", "127.0.0.1:0", "--no-nvml"])
        .args(["--window-ms", &a.window_ms.to_string()])
        .args(["--policy", a.policy.as_str()]);
    let (up, url) = spawn_until(cmd, "dilu up: serving on ", "dilu up")?;
    let result = live_run(a, scenario, specs, inputs, &exe, &dir, &url);
    drop(up);
    if remove && result.is_ok() {
        let _ = std::fs::remove_dir_all(&dir);
    }
    result
}

fn live_run(
    a: &ValidateArgs,
    scenario: &Scenario,
    specs: &BTreeMap<String, PathBuf>,
    inputs: &BTreeMap<String, Vec<u8>>,
    exe: &Path,
    dir: &Path,
    url: &str,
) -> Result<Side> {
    // Deploy: training first (it is there when the inference load starts, as in the simulator).
    let order: Vec<&String> = scenario
        .training
        .iter()
        .map(|t| &t.name)
        .chain(scenario.functions.iter().map(|f| &f.name))
        .collect();
    for name in &order {
        let spec = &specs[*name];
        let status = Command::new(exe)
            .args(["deploy", "--wait", "-f"])
            .arg(spec)
            .env("DILU_SERVER", url)
            .env("DILU_DATA_DIR", dir)
            .stdout(Stdio::null())
            .status()
            .with_context(|| format!("dilu deploy -f {}", spec.display()))?;
        ensure!(
            status.success(),
            "dilu deploy -f {} failed: {status}",
            spec.display()
        );
    }
    let client = reqwest::blocking::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()?;
    let instances = |client: &reqwest::blocking::Client| -> Result<Vec<Value>> {
        let v: Value = client
            .get(format!("{url}/v1/instances"))
            .send()
            .and_then(|r| r.error_for_status())
            .and_then(|r| r.json())
            .with_context(|| format!("GET {url}/v1/instances"))?;
        Ok(v["instances"].as_array().cloned().unwrap_or_default())
    };
    // Wait until each function has its initial instances ready (deploy --wait waits for one).
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let list = instances(&client)?;
        let ready = |name: &str| {
            list.iter()
                .filter(|i| i["function"] == name && i["status"] == "ready")
                .count() as u32
        };
        if scenario
            .functions
            .iter()
            .all(|f| ready(&f.name) >= f.initial_instances)
            && scenario.training.iter().all(|t| ready(&t.name) >= 1)
        {
            break;
        }
        ensure!(Instant::now() < deadline, "instances not ready within 60 s");
        std::thread::sleep(Duration::from_millis(100));
    }
    let trainer_urls: Vec<String> = {
        let list = instances(&client)?;
        scenario
            .training
            .iter()
            .map(|t| {
                list.iter()
                    .find(|i| i["function"] == t.name.as_str())
                    .and_then(|i| i["labels"]["dilu.io/endpoint"].as_str())
                    .map(str::to_owned)
                    .with_context(|| format!("training job '{}': no instance endpoint", t.name))
            })
            .collect::<Result<_>>()?
    };
    let iterations = |client: &reqwest::blocking::Client, u: &str| -> Result<u64> {
        let v: Value = client
            .get(format!("{u}/status"))
            .send()
            .and_then(|r| r.error_for_status())
            .and_then(|r| r.json())
            .with_context(|| format!("GET {u}/status"))?;
        v["iterations"]
            .as_u64()
            .with_context(|| format!("GET {u}/status: no 'iterations'"))
    };

    // The arrivals the simulator draws, function by function, merged in time order.
    let mut arrivals: Vec<(f64, usize)> = Vec::new();
    for (i, f) in scenario.functions.iter().enumerate() {
        let mut s = ArrivalStream::new(
            &f.workload,
            arrival_seed(scenario.seed, i),
            scenario.duration_s,
        );
        while let Some(t) = s.next_s() {
            arrivals.push((t, i));
        }
    }
    arrivals.sort_by(|x, y| x.0.total_cmp(&y.0));
    let timeouts: Vec<Duration> = scenario
        .functions
        .iter()
        .map(|f| Duration::from_secs_f64(f.request_timeout_s.unwrap_or(DEFAULT_REQUEST_TIMEOUT_S)))
        .collect();
    let bodies: Vec<Arc<Vec<u8>>> = scenario
        .functions
        .iter()
        .map(|f| Arc::new(inputs[&f.name].clone()))
        .collect();
    let urls: Vec<String> = scenario
        .functions
        .iter()
        .map(|f| format!("{url}/v2/models/{}/infer", f.name))
        .collect();

    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("building the load generator's runtime")?;
    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(256)
        .build()
        .context("building the load generator's client")?;
    let outcomes: Arc<Mutex<Vec<Outcome>>> = Arc::new(Mutex::new(Vec::new()));
    let stop_sampler = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let training_at_start: Vec<u64> = trainer_urls
        .iter()
        .map(|u| iterations(&client, u))
        .collect::<Result<_>>()?;
    let t0 = Instant::now();

    // The instance sampler: inference instances per sample (any status: placed until gone).
    let sampler = {
        let stop = stop_sampler.clone();
        let url = url.to_owned();
        let names: Vec<String> = scenario.functions.iter().map(|f| f.name.clone()).collect();
        let every = Duration::from_millis(a.sample_ms);
        std::thread::spawn(move || -> Vec<(f64, u32)> {
            let client = reqwest::blocking::Client::new();
            let mut samples = Vec::new();
            let mut next = Instant::now();
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let at = t0.elapsed().as_secs_f64();
                if let Ok(v) = client
                    .get(format!("{url}/v1/instances"))
                    .send()
                    .and_then(|r| r.json::<Value>())
                {
                    let n = v["instances"]
                        .as_array()
                        .map(|l| {
                            l.iter()
                                .filter(|i| {
                                    i["function"]
                                        .as_str()
                                        .is_some_and(|f| names.iter().any(|n| n == f))
                                })
                                .count() as u32
                        })
                        .unwrap_or(0);
                    samples.push((at, n));
                }
                next += every;
                std::thread::sleep(next.saturating_duration_since(Instant::now()));
            }
            samples
        })
    };

    // The open-loop generator: each request is sent at its arrival time, whatever the others are doing.
    for &(t, f) in &arrivals {
        let due = t0 + Duration::from_secs_f64(t);
        std::thread::sleep(due.saturating_duration_since(Instant::now()));
        let (http, url, body, timeout, outcomes) = (
            http.clone(),
            urls[f].clone(),
            bodies[f].clone(),
            timeouts[f],
            outcomes.clone(),
        );
        runtime.spawn(async move {
            let sent = Instant::now();
            let ok = http
                .post(&url)
                .header("content-type", "application/json")
                .body(body.as_ref().clone())
                .timeout(timeout)
                .send()
                .await
                .and_then(|r| r.error_for_status())
                .map(|_| ());
            let latency_s = ok.ok().map(|()| sent.elapsed().as_secs_f64());
            if let Ok(mut o) = outcomes.lock() {
                o.push(Outcome {
                    func: f,
                    arrival_s: t,
                    latency_s,
                });
            }
        });
    }
    let end = t0 + Duration::from_secs_f64(scenario.duration_s);
    std::thread::sleep(end.saturating_duration_since(Instant::now()));
    let elapsed = t0.elapsed().as_secs_f64();
    let training_iterations_per_s: Vec<f64> = trainer_urls
        .iter()
        .zip(&training_at_start)
        .map(|(u, &i0)| iterations(&client, u).map(|i1| (i1.saturating_sub(i0)) as f64 / elapsed))
        .collect::<Result<_>>()?;
    stop_sampler.store(true, std::sync::atomic::Ordering::Relaxed);
    let samples = sampler
        .join()
        .map_err(|_| anyhow::anyhow!("the instance sampler panicked"))?;
    // Requests still in flight at the end finish (or time out) before they are judged, as in the simulator's
    // drain; the longest timeout bounds the wait.
    let longest = timeouts.iter().max().copied().unwrap_or_default();
    let wait_until = Instant::now() + longest + Duration::from_secs(1);
    while Instant::now() < wait_until {
        let done = outcomes.lock().map(|o| o.len()).unwrap_or(0);
        if done >= arrivals.len() {
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    runtime.shutdown_timeout(Duration::from_secs(1));
    let outcomes = outcomes
        .lock()
        .map_err(|_| anyhow::anyhow!("outcomes lock poisoned"))?
        .clone();

    // The capacity the platform profiled for each function (its latest `profiled` event).
    let events: Value = client
        .get(format!("{url}/v1/events?kind=profiled&limit=10000"))
        .send()
        .and_then(|r| r.error_for_status())
        .and_then(|r| r.json())
        .with_context(|| format!("GET {url}/v1/events?kind=profiled"))?;
    let capacity_rps: Vec<f64> = scenario
        .functions
        .iter()
        .map(|f| {
            events["events"]
                .as_array()
                .into_iter()
                .flatten()
                .filter(|e| e["kind"] == "profiled" && e["function"] == f.name.as_str())
                .filter_map(|e| e["data"]["capacity_rps"].as_f64())
                .next_back()
                .unwrap_or(f64::NAN)
        })
        .collect();
    // Judge the measured requests (arrived after warm-up) as the simulator does.
    let mut lat_us: Vec<u32> = Vec::new();
    let (mut judged, mut bad) = (0u64, 0u64);
    let measured = arrivals
        .iter()
        .filter(|(t, _)| *t >= scenario.warmup_s)
        .count() as u64;
    for o in outcomes.iter().filter(|o| o.arrival_s >= scenario.warmup_s) {
        let slo_s = scenario.functions[o.func].slo_ms / 1000.0;
        judged += 1;
        match o.latency_s {
            Some(l) => {
                lat_us.push((l * 1e6).round().min(f64::from(u32::MAX)) as u32);
                if l > slo_s {
                    bad += 1;
                }
            }
            None => bad += 1,
        }
    }
    // Requests that never came back within the wait count as violations too.
    bad += measured.saturating_sub(judged);
    lat_us.sort_unstable();
    let mut instance_seconds = 0.0;
    let mut scale_out_s = Vec::new();
    let mut last = scenario
        .functions
        .iter()
        .map(|f| f.initial_instances)
        .sum::<u32>();
    for w in samples.windows(2) {
        let ((ta, na), (tb, nb)) = (w[0], w[1]);
        instance_seconds += f64::from(na) * (tb - ta);
        for _ in last..nb {
            scale_out_s.push(ta);
        }
        last = nb;
    }
    if let (Some(&(tl, nl)), true) = (samples.last(), scenario.duration_s > 0.0) {
        instance_seconds += f64::from(nl) * (scenario.duration_s - tl).max(0.0);
    }
    if let Some(&(tf, nf)) = samples.first() {
        instance_seconds += f64::from(nf) * tf;
    }
    Ok(Side {
        requests: measured,
        p50_ms: percentile_ms(&lat_us, 0.50),
        p99_ms: percentile_ms(&lat_us, 0.99),
        slo_violation_rate: if measured > 0 {
            bad as f64 / measured as f64
        } else {
            0.0
        },
        instance_seconds,
        scale_out_s,
        training_iterations_per_s,
        capacity_rps,
        raw: {
            let mut raw: Vec<(f64, Option<f64>)> = outcomes
                .iter()
                .map(|o| (o.arrival_s, o.latency_s.map(|l| l * 1e3)))
                .collect();
            raw.sort_by(|x, y| x.0.total_cmp(&y.0));
            raw
        },
    })
}

/// The simulator's percentile rule (nearest rank), so that both sides are summarised alike.
fn percentile_ms(sorted_us: &[u32], q: f64) -> f64 {
    if sorted_us.is_empty() {
        return 0.0;
    }
    let rank = ((q * sorted_us.len() as f64).ceil() as usize).clamp(1, sorted_us.len());
    f64::from(sorted_us[rank - 1]) / 1000.0
}

fn ratio(sim: f64, live: f64) -> Option<f64> {
    if live == 0.0 && sim == 0.0 {
        Some(1.0)
    } else if live == 0.0 || !live.is_finite() || !sim.is_finite() {
        None
    } else {
        Some(sim / live)
    }
}

fn compare(live: &Side, sim: &Side) -> Vec<Row> {
    let mut rows = vec![
        Row {
            metric: "p50_ms".into(),
            live: live.p50_ms,
            sim: sim.p50_ms,
            ratio: ratio(sim.p50_ms, live.p50_ms),
        },
        Row {
            metric: "p99_ms".into(),
            live: live.p99_ms,
            sim: sim.p99_ms,
            ratio: ratio(sim.p99_ms, live.p99_ms),
        },
        Row {
            metric: "slo_violation_pct".into(),
            live: live.slo_violation_rate * 100.0,
            sim: sim.slo_violation_rate * 100.0,
            ratio: ratio(sim.slo_violation_rate, live.slo_violation_rate),
        },
        Row {
            metric: "instance_seconds".into(),
            live: live.instance_seconds,
            sim: sim.instance_seconds,
            ratio: ratio(sim.instance_seconds, live.instance_seconds),
        },
    ];
    for (i, (l, s)) in live.scale_out_s.iter().zip(&sim.scale_out_s).enumerate() {
        rows.push(Row {
            metric: format!("scale_out_{}_s", i + 1),
            live: *l,
            sim: *s,
            ratio: ratio(*s, *l),
        });
    }
    for (i, (l, s)) in live.capacity_rps.iter().zip(&sim.capacity_rps).enumerate() {
        rows.push(Row {
            metric: format!("capacity_{i}_rps"),
            live: *l,
            sim: *s,
            ratio: ratio(*s, *l),
        });
    }
    for (i, (l, s)) in live
        .training_iterations_per_s
        .iter()
        .zip(&sim.training_iterations_per_s)
        .enumerate()
    {
        rows.push(Row {
            metric: format!("training_{i}_iter_per_s"),
            live: *l,
            sim: *s,
            ratio: ratio(*s, *l),
        });
    }
    rows
}

/// The ratio furthest from 1 (by |ln ratio|) among the four acceptance metrics; `None` if one is undefined.
fn worst(rows: &[Row]) -> Option<f64> {
    let mut worst: Option<f64> = Some(1.0);
    for r in rows.iter().take(4) {
        match (r.ratio, worst) {
            (Some(x), Some(w)) if x.ln().abs() > w.ln().abs() => worst = Some(x),
            (None, _) => return None,
            _ => {}
        }
    }
    worst
}

fn print_table(name: &str, rows: &[Row], live: &Side, sim: &Side) {
    println!("scenario {name}: live vs simulator");
    println!(
        "{:<24} {:>12} {:>12} {:>10}",
        "metric", "live", "sim", "sim/live"
    );
    for r in rows {
        let ratio = r.ratio.map_or("n/a".to_owned(), |x| format!("{x:.3}"));
        println!(
            "{:<24} {:>12.2} {:>12.2} {:>10}",
            r.metric, r.live, r.sim, ratio
        );
    }
    println!(
        "{:<24} {:>12} {:>12}",
        "measured requests", live.requests, sim.requests
    );
    println!(
        "{:<24} {:>12} {:>12}",
        "scale-outs",
        live.scale_out_s.len(),
        sim.scale_out_s.len()
    );
    match worst(rows) {
        Some(w) => println!("worst ratio (p50, p99, violations, instance-seconds): {w:.3}"),
        None => println!(
            "worst ratio (p50, p99, violations, instance-seconds): undefined (a zero on one side)"
        ),
    }
}
