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
use std::path::PathBuf;

use anyhow::{Context, Result, ensure};
use clap::Args;
use dilu_core::perf::builtin_model_names;
use dilu_sim::serve::PolicyName;
use dilu_sim::serve::scenario::load_scenario;
use dilu_sim::serve::{prepare, run_policy};

mod batches;
mod body;
mod calibrate;
mod compare;
mod http;
mod live;
mod process;
mod recalibrate;
mod rescale;
mod simulated;
mod specs;

/// Arguments of `dilu sim calibrate`.
#[derive(Debug, Args)]
pub struct CalibrateArgs {
    /// Measure this ONNX model (served by `dilu worker`); conflicts with --trainer.
    #[arg(long, required_unless_present = "trainer", conflicts_with = "trainer")]
    onnx: Option<PathBuf>,
    /// A v2 inference request body (JSON) for --onnx, e.g. ~/.cache/dilu/models/inputs/squeezenet.json.
    #[arg(long, requires = "onnx")]
    input: Option<PathBuf>,
    /// Send --input's tensors as binary data (the Open Inference Protocol's binary extension, as Triton's and
    /// KServe's clients send large tensors) instead of JSON numbers.
    #[arg(long, requires = "onnx")]
    binary_input: bool,
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
    /// Inference only: send the requests through a `dilu gateway` in front of the worker, the path `dilu up`
    /// serves them on (the gateway's CPU time and copies of the request body then count in the table, as
    /// they do live).
    #[arg(long, conflicts_with = "trainer")]
    through_gateway: bool,
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
    /// Idle milliseconds before each inference round, so that a batch starts as a live one does, after a pause
    /// between arrivals: back to back, SqueezeNet's batch of 1 ran 41–45 ms on this machine's CPU device, after
    /// 200 ms idle 50–56 ms (caches and clocks cool down between requests).
    #[arg(long, default_value_t = 200)]
    round_gap_ms: u64,
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
    /// Send each --input's tensors as binary data (the Open Inference Protocol's binary extension) in the
    /// calibration and the live run, instead of JSON numbers: a 2.9 MB JSON body costs the worker about 10 ms
    /// of CPU to decode, on the same cores as the model on the CPU device.
    #[arg(long)]
    binary_input: bool,
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
    /// Idle milliseconds before each inference round with --calibrate (`dilu sim calibrate --round-gap-ms`).
    #[arg(long, default_value_t = 200)]
    round_gap_ms: u64,
    /// Let the simulated scaler count each instance's capacity from the calibrated table. By default the
    /// simulation runs after the live run and counts the capacity the platform profiled at deploy (its
    /// scaler's figure), unless the scenario pins `capacity_rps`.
    #[arg(long)]
    table_capacity: bool,
    /// With --calibrate: measure each inference function through a `dilu gateway` in front of its worker
    /// (`dilu sim calibrate --through-gateway`), as `dilu up` serves it.
    #[arg(long, requires = "calibrate")]
    through_gateway: bool,
    /// Then simulate again with each inference function's table scaled so that its batches take as long as
    /// the live workers' did during this run (their `dilu_worker_batch_seconds`; one factor per function, the
    /// batch sizes weighed by the live run's mix), and print that comparison too. It tells the simulator's
    /// queueing, batching and scaling apart from the calibration's drift (on a shared CPU the service time
    /// moves by 15–25 % within minutes); the first comparison stays the prediction.
    #[arg(long)]
    live_service_time: bool,
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

/// Runs `dilu sim calibrate`.
pub fn calibrate(a: CalibrateArgs) -> Result<()> {
    calibrate::calibrate(a).map(|_| ())
}

/// Runs `dilu sim validate`.
pub fn validate(a: ValidateArgs) -> Result<()> {
    let overheads = if a.calibrate {
        recalibrate::recalibrate(&a)?
    } else {
        BTreeMap::new()
    };
    let names = builtin_model_names();
    let mut scenario = load_scenario(&a.scenario, &names)?;
    for f in &mut scenario.functions {
        let Some(c) = overheads.get(&f.name) else {
            continue;
        };
        if let Some(o) = c.request_overhead_ms {
            eprintln!(
                "validate: '{}' spends {o:.1} ms per request outside the executor (calibrated; the scenario says {})",
                f.name, f.request_overhead_ms
            );
            ensure!(
                o < f.slo_ms,
                "'{}': the calibrated request overhead {o:.1} ms is not below its slo_ms {}",
                f.name,
                f.slo_ms
            );
            f.request_overhead_ms = o;
        }
        if let Some(cv) = c.service_cv {
            eprintln!(
                "validate: '{}' batch times vary by {cv:.3} (calibrated; the scenario says {})",
                f.name, f.service_cv
            );
            f.service_cv = cv.min(dilu_sim::serve::scenario::MAX_SERVICE_CV);
        }
    }
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
    let specs = specs::read_specs(&a.specs, &scenario)?;
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

    // Checked before the live run, so that a scenario the simulator refuses costs no live run.
    prepare(&scenario).context("preparing the scenario")?;
    eprintln!(
        "validate: running {} live for {} s ...",
        scenario.name, scenario.duration_s
    );
    let load_before = live::load_average();
    let live = live::live_side(&a, &scenario, &specs, &inputs)?;
    let load_after = live::load_average();
    eprintln!(
        "validate: machine load average (1 min) {} before the live run, {} after",
        load_before.map_or("unknown".into(), |l| format!("{l:.2}")),
        load_after.map_or("unknown".into(), |l| format!("{l:.2}"))
    );

    if !a.table_capacity {
        // The platform's scaler counts the capacity it profiled at deploy; so does the simulated one.
        for (f, &c) in scenario.functions.iter_mut().zip(&live.capacity_rps) {
            if f.capacity_rps.is_none() && c.is_finite() && c > 0.0 {
                eprintln!(
                    "validate: simulating '{}' with the platform's profiled capacity, {c:.2} req/s per instance",
                    f.name
                );
                f.capacity_rps = Some(c);
            }
        }
    }
    eprintln!("validate: simulating {} ...", scenario.name);
    let setup = prepare(&scenario).context("preparing the scenario")?;
    let run = run_policy(&setup, a.policy).context("simulating")?;
    let sim = simulated::sim_side(&scenario, &setup, &run);

    let rows = compare::compare(&live, &sim);
    compare::print_table(&scenario.name, &rows, &live, &sim);
    let rescaled = if a.live_service_time {
        let r = rescale::at_live_service_time(&scenario, a.policy, &live, &run)?;
        println!();
        compare::print_table(
            &format!(
                "{} at the live service time (tables × {}; service_cv {})",
                scenario.name,
                r.factors_text(),
                r.service_cv
                    .iter()
                    .map(|c| format!("{c:.3}"))
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
            &r.rows,
            &live,
            &r.sim,
        );
        Some(r)
    } else {
        None
    };
    if let Some(path) = &a.json {
        let mut v = compare::report_json(
            &scenario,
            a.policy,
            &live,
            &sim,
            &rows,
            (load_before, load_after),
        );
        if let Some(r) = &rescaled {
            v["live_service_time"] = r.json();
        }
        std::fs::write(path, serde_json::to_string_pretty(&v)?)
            .with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(())
}
