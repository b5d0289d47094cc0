//! The official Triton client (`tritonclient.http`, from PyPI) against `dilu up`'s gateway and against a
//! worker directly: health, readiness and metadata calls, inference with binary and JSON tensors (the client's
//! default is binary both ways), and the errors it reports. The answers must agree with each other and with
//! the plain-JSON path the other tests use.
//!
//! Needs `python3` with `tritonclient[http]` (CI installs it); without it the test is skipped loudly, and in
//! CI it fails.

mod common;

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use common::platform::{UpProc, argmax, ensure_models, output_data};
use serde_json::Value;

const SCRIPT: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../../scripts/v2-client-check.py"
);

/// Whether `python3` can import the Triton client; outside CI a missing client skips the test.
fn triton_client_present() -> bool {
    let ok = Command::new("python3")
        .args(["-c", "import tritonclient.http, numpy"])
        .status()
        .map(|s| s.success())
        .unwrap_or(false);
    if !ok {
        let note = "TRITON CLIENT MISSING: `python3 -c 'import tritonclient.http'` failed; \
                    install it with `pip install \"tritonclient[http]\"`";
        if std::env::var("CI").as_deref() == Ok("true") {
            panic!("{note}");
        }
        eprintln!("\n*** SKIPPING: {note} ***\n");
    }
    ok
}

/// Runs the check script against `base_url` and returns its report.
fn check(base_url: &str, model: &str, request: &Path) -> Value {
    let host = base_url.trim_start_matches("http://").trim_end_matches('/');
    let out = Command::new("python3")
        .arg(SCRIPT)
        .args(["--url", host, "--model", model, "--request"])
        .arg(request)
        .env("NO_PROXY", "*")
        .output()
        .expect("run python3");
    assert!(
        out.status.success(),
        "v2-client-check.py failed against {base_url}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "report is not JSON ({e}): {}",
            String::from_utf8_lossy(&out.stdout)
        )
    })
}

fn probabilities(report: &Value, way: &str) -> Vec<f64> {
    let outputs = report[way]["outputs"].as_object().expect("outputs");
    assert_eq!(outputs.len(), 1, "{way}: {report:#}");
    let (_, output) = outputs.iter().next().unwrap();
    output["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_f64().unwrap())
        .collect()
}

/// Everything the script saw, checked against the model's known answer `reference` (from the JSON path).
fn assert_report(report: &Value, model: &str, reference: &[f64]) {
    assert_eq!(report["server_live"], true, "{report:#}");
    assert_eq!(report["server_ready"], true, "{report:#}");
    assert_eq!(report["model_ready"], true, "{report:#}");
    assert!(
        report["server_extensions"]
            .as_array()
            .unwrap()
            .contains(&Value::from("binary_tensor_data")),
        "{report:#}"
    );
    assert_eq!(report["metadata"]["name"], model);
    assert_eq!(report["metadata"]["inputs"][0]["datatype"], "FP32");
    for (way, binary) in [
        ("binary", true),
        ("json", false),
        ("default_outputs", true),
        ("binary_in_json_out", false),
    ] {
        let section = &report[way];
        assert_eq!(section["id"], "check", "{way}: {section:#}");
        assert_eq!(section["model_name"], model, "{way}");
        let output = section["outputs"]
            .as_object()
            .unwrap()
            .values()
            .next()
            .unwrap();
        assert_eq!(output["datatype"], "FP32", "{way}");
        assert_eq!(output["shape"], serde_json::json!([1, 2]), "{way}");
        assert_eq!(output["binary"], binary, "{way}: {section:#}");
        let p = probabilities(report, way);
        assert_eq!(argmax(&p), 0, "{way}: upright text is class 0: {p:?}");
        for (a, b) in p.iter().zip(reference) {
            // JSON carries floats as decimal text, binary as exact bits: they agree to f32 precision.
            assert!((a - b).abs() < 1e-6, "{way}: {p:?} vs {reference:?}");
        }
    }
    let wrong = &report["wrong_shape_error"];
    assert_eq!(wrong["status"], "400", "{report:#}");
    assert!(
        wrong["message"].as_str().unwrap().contains("shape"),
        "{wrong}"
    );
    let unknown = &report["unknown_model_error"];
    assert_eq!(unknown["status"], "404", "{report:#}");
    assert!(
        unknown["message"].as_str().unwrap().contains("-missing"),
        "{unknown}"
    );
}

#[test]
fn the_official_triton_client_works_against_the_gateway_and_the_worker() {
    let Some(cache) = ensure_models() else { return };
    if !triton_client_present() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let spec = format!(
        "name: ocr\nmodel: {{path: {}, input_shape: [1, 3, 48, 192]}}\nslo_ms: 200\n\
         quota: {{request: 0.2, limit: 0.5}}\nscaling: {{min_instances: 1, max_instances: 1, capacity_rps: 20}}\n",
        cache
            .join("ppocr/ch_ppocr_mobile_v2.0_cls_infer.onnx")
            .display()
    );
    let request = cache.join("inputs/text-upright.json");

    let up = UpProc::start(dir.path(), &["--cpu-cores", "2"]);
    let (s, b) = up.deploy_yaml(&spec);
    assert_eq!(s, 201, "{b}");
    up.wait_running("ocr", 1, Duration::from_secs(60));
    let (s, plain) = up.infer("ocr", &std::fs::read(&request).unwrap());
    assert_eq!(s, 200, "{plain}");
    let reference = output_data(&plain);

    let through_gateway = check(&up.url, "ocr", &request);
    assert_report(&through_gateway, "ocr", &reference);

    let (_, view) = up.get("/v1/functions/ocr");
    let worker_url = view["instances"][0]["url"].as_str().unwrap().to_string();
    let direct = check(&worker_url, "ocr", &request);
    assert_report(&direct, "ocr", &reference);
    println!(
        "tritonclient: gateway and worker agree; P(upright) binary {:.7} json {:.7}",
        probabilities(&through_gateway, "binary")[0],
        probabilities(&through_gateway, "json")[0]
    );
}
