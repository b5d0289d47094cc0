//! A training function deployed without a quota is profiled live by bisection: the platform runs the real
//! trainer at shares of the device, measures its iterations per second at each, and takes the smallest share
//! that keeps 98 % of its whole-device rate as its request (limit: the whole device), as `docs/algorithms.md` §3 says.
//!
//! The built-in trainer is single-threaded, so on a CPU device of two cores it can use at most half of the
//! device: the bisection must land near 0.5, well away from both the whole device and a small share.

mod common;

use std::time::Duration;

use common::platform::{UpProc, device_instance, trainer_iterations};
use serde_json::Value;

/// The instance quota `/v1/devices` shows for `function`'s first instance: (request, limit).
fn instance_quota(devices: &Value, function: &str) -> Option<(f64, f64)> {
    device_instance(devices, function).map(|i| {
        (
            i["quota"]["request"].as_f64().unwrap_or(f64::NAN),
            i["quota"]["limit"].as_f64().unwrap_or(f64::NAN),
        )
    })
}

#[test]
fn training_without_a_quota_is_profiled_by_bisection_to_what_one_thread_can_use() {
    let dir = tempfile::tempdir().unwrap();
    let up = UpProc::start(dir.path(), &["--cpu-cores", "2"]);
    let (status, body) = up.deploy_yaml(
        "name: train\nkind: training\ntraining: {hidden: 128, layers: 2, batch: 32}\n\
         scaling: {min_instances: 1, max_instances: 1}\n",
    );
    assert_eq!(status, 201, "{body}");
    let view = up.wait_running("train", 0, Duration::from_secs(120));
    let profile = &view["profile"];
    println!("training profile: {profile}");
    assert_eq!(profile["source"], "bisection", "{view:#}");
    let request = profile["request"].as_f64().expect("request");
    let limit = profile["limit"].as_f64().expect("limit");
    let measurements = profile["measurements"].as_u64().expect("measurements");
    let rate = profile["capacity_rps"].as_f64().expect("iterations/s");
    // Whole device, then halving in 5 % steps from [0, 100], each candidate followed by the whole device
    // again: how many halvings depends on where the request lands (5 or 6 shares, 9 or 11 windows in all).
    // Replaying the bisection towards the reported request gives the count it must have taken.
    let request_pct = (request * 100.0).round() as u32;
    let replay = dilu_core::profiler::bisect_training_paired(
        |pct| if pct >= request_pct { 1.0 } else { 0.0 },
        dilu_core::profiler::DEFAULT_TRAINING_TARGET,
    )
    .unwrap();
    assert_eq!(replay.sm_request_pct, request_pct, "{profile}");
    assert_eq!(
        measurements,
        (replay.measured + replay.references) as u64,
        "{profile}"
    );
    assert_eq!(limit, 1.0, "training may burst to the whole device");
    assert!(
        (0.4..=0.7).contains(&request),
        "one thread of a 2-core device needs about half of it, got request {request}"
    );
    assert!(rate > 10.0, "iterations/s at the request: {rate}");

    // The profile is what the running instance is budgeted with.
    let (_, devices) = up.get("/v1/devices");
    let (instance_request, instance_limit) =
        instance_quota(&devices, "train").expect("a train instance on a device");
    assert_eq!((instance_request, instance_limit), (request, limit));
    // And the trainer keeps training at it.
    let url = view["instances"][0]["url"].as_str().expect("trainer url");
    let first = trainer_iterations(up.client(), url);
    std::thread::sleep(Duration::from_millis(500));
    assert!(
        trainer_iterations(up.client(), url) > first,
        "the trainer is running"
    );
}
