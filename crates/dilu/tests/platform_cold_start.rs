//! Scale to zero and back: a function with `min_instances: 0` starts without instances, its first request
//! waits for a cold start and succeeds, the lazy scaler removes the instance once it is idle, and the next
//! request cold-starts again.

mod common;

use std::time::{Duration, Instant};

use common::platform::{UpProc, argmax, ensure_models, output_data};

fn instance_count(up: &UpProc) -> usize {
    let (_, view) = up.get("/v1/functions/ocr");
    view["instances"].as_array().map(Vec::len).unwrap_or(0)
        + view["starting"].as_u64().unwrap_or(0) as usize
}

#[test]
fn a_function_scaled_to_zero_cold_starts_on_demand() {
    let Some(cache) = ensure_models() else { return };
    let dir = tempfile::tempdir().unwrap();
    let up = UpProc::start(dir.path(), &["--cpu-cores", "2"]);
    let spec = format!(
        "name: ocr\nmodel: {{path: {}, input_shape: [1, 3, 48, 192]}}\nslo_ms: 200\n\
         quota: {{request: 0.2, limit: 0.5}}\n\
         scaling: {{min_instances: 0, max_instances: 1, capacity_rps: 20, lazy: {{window: 3, out_votes: 3, in_votes: 3}}}}\n\
         gateway: {{cold_start_timeout_ms: 30000}}\n",
        cache
            .join("ppocr/ch_ppocr_mobile_v2.0_cls_infer.onnx")
            .display()
    );
    let (s, b) = up.deploy_yaml(&spec);
    assert_eq!(s, 201, "{b}");
    up.wait_running("ocr", 0, Duration::from_secs(30));
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(instance_count(&up), 0, "min_instances 0 starts nothing");
    let upright = std::fs::read(cache.join("inputs/text-upright.json")).unwrap();

    for round in 1..=2 {
        let started = Instant::now();
        let (s, r) = up.infer("ocr", &upright);
        let cold = started.elapsed();
        assert_eq!((s, argmax(&output_data(&r))), (200, 0), "{r}");
        println!(
            "round {round}: cold start answered in {:.0} ms",
            cold.as_secs_f64() * 1000.0
        );
        // Idle: three idle one-second samples of three remove the instance.
        let deadline = Instant::now() + Duration::from_secs(20);
        while instance_count(&up) > 0 {
            assert!(Instant::now() < deadline, "never scaled back to zero");
            std::thread::sleep(Duration::from_millis(200));
        }
        println!(
            "round {round}: back to zero {:.1} s after the request",
            started.elapsed().as_secs_f64()
        );
    }
    let metrics = up
        .client()
        .get(format!("{}/metrics", up.url))
        .send()
        .unwrap()
        .text()
        .unwrap();
    let cold_starts: f64 = metrics
        .lines()
        .filter(|l| l.starts_with("dilu_control_scaling_actions_total") && l.contains("cold-start"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum();
    assert_eq!(cold_starts, 2.0, "one cold start per round");
}
