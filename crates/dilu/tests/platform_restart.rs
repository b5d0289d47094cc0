//! `dilu up` killed with SIGKILL and started again on the same data directory: the deployed function comes
//! back from the store, its running instance is adopted (same instance, same process) and it serves again
//! without a redeploy.

mod common;

use std::time::{Duration, Instant};

use common::platform::{UpProc, argmax, ensure_models, output_data};
use common::{AgentProc, alive};

#[test]
fn a_killed_platform_restores_its_functions_and_serves_without_redeploy() {
    let Some(cache) = ensure_models() else { return };
    let dir = tempfile::tempdir().unwrap();
    let spec = format!(
        "name: ocr\nmodel: {{path: {}, input_shape: [1, 3, 48, 192]}}\nslo_ms: 200\n\
         quota: {{request: 0.2, limit: 0.5}}\nscaling: {{min_instances: 1, max_instances: 2, capacity_rps: 20}}\n",
        cache
            .join("ppocr/ch_ppocr_mobile_v2.0_cls_infer.onnx")
            .display()
    );
    let upright = std::fs::read(cache.join("inputs/text-upright.json")).unwrap();

    let mut up = UpProc::start(dir.path(), &["--cpu-cores", "2"]);
    let (s, b) = up.deploy_yaml(&spec);
    assert_eq!(s, 201, "{b}");
    let before = up.wait_running("ocr", 1, Duration::from_secs(60));
    let (s, r) = up.infer("ocr", &upright);
    assert_eq!((s, argmax(&output_data(&r))), (200, 0), "{r}");
    let instance = before["instances"][0]["id"].as_str().unwrap().to_string();
    let agent_dir = dir.path().join("agent");
    let pid = AgentProc::recorded_pid(&agent_dir, &instance).expect("the agent records the worker");
    let (_, instances) = up.get("/v1/instances");
    for hidden in ["pid", "command", "log", "channel"] {
        assert!(
            instances["instances"][0].get(hidden).is_none(),
            "/v1/instances shows no {hidden}: {instances}"
        );
    }

    up.kill9();
    assert!(alive(pid), "the worker outlives the killed platform");

    let started = Instant::now();
    let up = UpProc::start(dir.path(), &["--cpu-cores", "2"]);
    let after = up.wait_running("ocr", 1, Duration::from_secs(60));
    let restored_in = started.elapsed();
    assert_eq!(after["instances"].as_array().unwrap().len(), 1, "{after}");
    assert_eq!(
        after["instances"][0]["id"],
        instance.as_str(),
        "the same instance was adopted"
    );
    let (_, instances) = up.get("/v1/instances");
    assert_eq!(AgentProc::recorded_pid(&agent_dir, &instance), Some(pid));
    assert_eq!(instances["instances"][0]["adopted"], true);
    let (s, r) = up.infer("ocr", &upright);
    assert_eq!((s, argmax(&output_data(&r))), (200, 0), "{r}");
    println!(
        "restart: serving again {:.0} ms after the new dilu up started (same instance {instance}, pid {pid})",
        restored_in.as_secs_f64() * 1000.0
    );
}
