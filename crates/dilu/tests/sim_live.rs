//! `dilu sim validate --calibrate --through-gateway --live-service-time --binary-input` end to end at small
//! scale: a 45 s scenario (SqueezeNet beside the MLP trainer on the CPU device, a load step that makes the lazy
//! scaler add an instance) calibrated, run live on `dilu up` and simulated, compared. The bounds are what a
//! loaded 2-core CI machine honestly holds (docs/sim-vs-live.md): the same arrivals on both sides, one scale-out
//! each at about the same time, instance-seconds within 15 %, latencies and training throughput within a factor
//! of 2.
//!
//! Needs the example models (`dilu models fetch`): without them it prints SKIPPING, and fails under CI=true.

mod common;

use std::path::Path;
use std::process::Command;

use common::dilu_bin;
use common::platform::ensure_models;
use serde_json::Value;

const SCENARIO: &str = "\
name: validate-small
duration_s: 45
warmup_s: 5
seed: 5
sample_interval_s: 0.25
cluster: { nodes: 1, gpus_per_node: 1, gpu_mem_gb: 8 }
policies: [dilu]
functions:
  - name: squeezenet
    model: squeezenet
    profile: squeezenet.csv
    slo_ms: 600
    batch: 2
    sm_request: 0.1
    sm_limit: 0.5
    min_instances: 1
    max_instances: 2
    memory_gb: 0.5
    cold_start_s: 1.4
    request_timeout_s: 10
    workload: { kind: series, file: rates.txt, step_s: 15, repeat: false }
training:
  - name: mlp-train
    model: mlp
    profile: mlp.csv
    gpus: 1
    memory_gb: 0.5
    sm_request: 0.2
    sm_limit: 0.4
parameters:
  lazy: { window: 8, out_votes: 4, in_votes: 8 }
";

fn spec_inference(model: &Path) -> String {
    format!(
        "apiVersion: dilu.io/v1alpha1\nkind: Function\nmetadata: {{name: squeezenet}}\nspec:\n  kind: inference\n  \
         model: {{path: {}, max_batch: 2}}\n  slo_ms: 600\n  quota: {{request: 0.1, limit: 0.5, memory: 512MiB}}\n  \
         scaling: {{min_instances: 1, max_instances: 2, lazy: {{window: 8, out_votes: 4, in_votes: 8}}}}\n",
        model.display()
    )
}

const SPEC_TRAINING: &str = "apiVersion: dilu.io/v1alpha1\nkind: Function\nmetadata: {name: mlp-train}\nspec:\n  \
    kind: training\n  training: {hidden: 256, layers: 2, batch: 64}\n  quota: {request: 0.2, limit: 0.4}\n  \
    scaling: {min_instances: 1, max_instances: 1}\n";

fn within(what: &str, ratio: f64, lo: f64, hi: f64) {
    assert!(
        ratio.is_finite() && ratio >= lo && ratio <= hi,
        "{what}: sim/live = {ratio}, expected within [{lo}, {hi}]"
    );
}

#[test]
fn validate_compares_a_small_live_run_with_the_simulator() {
    let Some(cache) = ensure_models() else { return };
    let input = cache.join("inputs/squeezenet.json");
    if !input.is_file() {
        let note = format!("MODELS MISSING: {} (dilu models fetch)", input.display());
        assert!(std::env::var("CI").as_deref() != Ok("true"), "{note}");
        eprintln!("\n*** SKIPPING: {note} ***\n");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    std::fs::write(d.join("scenario.yaml"), SCENARIO).unwrap();
    // 15 s at 2 req/s, then 30 s at 7 req/s: above one instance's capacity at its request (10 % of the device).
    std::fs::write(d.join("rates.txt"), "2\n7\n7\n").unwrap();
    // Placeholders: --calibrate measures and overwrites both before the scenario is loaded.
    std::fs::write(d.join("squeezenet.csv"), "").unwrap();
    std::fs::write(d.join("mlp.csv"), "").unwrap();
    std::fs::write(
        d.join("squeezenet.yaml"),
        spec_inference(&cache.join("onnx-light/light_squeezenet.onnx")),
    )
    .unwrap();
    std::fs::write(d.join("mlp.yaml"), SPEC_TRAINING).unwrap();
    let json = d.join("out.json");
    let started = std::time::Instant::now();
    let out = Command::new(dilu_bin())
        .args([
            "sim",
            "validate",
            "--calibrate",
            "--through-gateway",
            "--live-service-time",
            "--binary-input",
            "--rounds",
            "3",
        ])
        .arg("--scenario")
        .arg(d.join("scenario.yaml"))
        .arg("--spec")
        .arg(d.join("squeezenet.yaml"))
        .arg("--spec")
        .arg(d.join("mlp.yaml"))
        .arg("--input")
        .arg(format!("squeezenet={}", input.display()))
        .arg("--json")
        .arg(&json)
        .arg("--live-dir")
        .arg(d.join("live"))
        .env("DILU_MODEL_CACHE", &cache)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    eprintln!("{stdout}\n(took {:.0} s)", started.elapsed().as_secs_f64());
    assert!(out.status.success(), "validate failed:\n{stdout}\n{stderr}");
    assert!(stdout.contains("sim/live"), "{stdout}");
    let v: Value = serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    let (live, sim) = (&v["live"], &v["sim"]);
    // Both sides saw exactly the same measured arrivals (the live generator replays the simulator's).
    assert_eq!(live["requests"], sim["requests"], "{v}");
    // Both scalers count the capacity the platform profiled at deploy.
    assert_eq!(live["capacity_rps"], sim["capacity_rps"], "{v}");
    assert!(
        stderr.contains("requests go through a dilu gateway"),
        "{stderr}"
    );
    assert!(live["requests"].as_u64().unwrap() > 150, "{v}");
    let ratio = |k: &str| sim[k].as_f64().unwrap() / live[k].as_f64().unwrap();
    within("instance_seconds", ratio("instance_seconds"), 0.85, 1.15);
    within("p50_ms", ratio("p50_ms"), 0.5, 2.0);
    // The live p99 of ~200 requests takes any stall of a shared 2-core machine (CI saw the simulated one at
    // 0.25x the live one in a run held alone), so only a gross under-prediction fails the low side.
    within("p99_ms", ratio("p99_ms"), 0.1, 3.0);
    let train = |s: &Value| s["training_iterations_per_s"][0].as_f64().unwrap();
    within("training", train(sim) / train(live), 0.5, 2.0);
    // One scale-out on each side, a few seconds apart at most (the lazy scaler's 1 s votes, the sampler); on a
    // loaded 2-core CI machine the live one was seen 5.75 s after the simulated one.
    let outs = |s: &Value| -> Vec<f64> {
        s["scale_out_s"]
            .as_array()
            .unwrap()
            .iter()
            .map(|x| x.as_f64().unwrap())
            .collect()
    };
    let (lo, so) = (outs(live), outs(sim));
    assert_eq!(
        (lo.len(), so.len()),
        (1, 1),
        "scale-outs live {lo:?} sim {so:?}"
    );
    assert!(
        (lo[0] - so[0]).abs() <= 8.0,
        "scale-out at {} s live, {} s simulated",
        lo[0],
        so[0]
    );
    // Violations: both small at this load (the counts are too small for a ratio to mean much).
    for s in [live, sim] {
        assert!(s["slo_violation_rate"].as_f64().unwrap() < 0.25, "{v}");
    }
    // The calibration measured the time a request spends outside the executor (through the gateway it is
    // more than nothing), and the simulation counted it.
    assert!(
        stderr.contains("per request outside the executor"),
        "{stderr}"
    );
    // Both sides counted their batches by size: the workers' summaries live, the engine's in the simulator.
    let batches = |s: &Value| -> u64 {
        s["batch_times"][0]
            .as_object()
            .unwrap_or_else(|| panic!("no batch_times: {v}"))
            .values()
            .map(|t| t["batches"].as_u64().unwrap())
            .sum()
    };
    let (lb, sb) = (batches(live), batches(sim));
    assert!(lb > 100 && sb > 100, "batches live {lb}, simulated {sb}");
    // --live-service-time: one factor for SqueezeNet, a plausible one, and a second comparison over the same
    // requests.
    let rescaled = &v["live_service_time"];
    let factor = rescaled["factors"][0]["by_batch"]["1"]
        .as_f64()
        .unwrap_or(f64::NAN);
    within("live service-time factor at batch 1", factor, 0.4, 2.5);
    assert_eq!(rescaled["sim"]["requests"], live["requests"], "{v}");
    assert!(stdout.contains("at the live service time"), "{stdout}");
}
