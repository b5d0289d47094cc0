//! `dilu up` end to end, over real HTTP with real worker processes: the token, every bad-input rule of the
//! control API and the gateway (each with the field/rule or the v2 error body), live quota updates, deletion,
//! and the metrics.

mod common;

use std::time::Duration;

use common::platform::{UpProc, argmax, ensure_models, output_data};
use reqwest::Method;
use serde_json::{Value, json};

fn ocr_spec(cache: &std::path::Path, name: &str, extra: &str) -> String {
    format!(
        "name: {name}\nmodel:\n  path: {}\n  input_shape: [1, 3, 48, 192]\n  max_batch: 4\nslo_ms: 200\n\
         quota: {{request: 0.2, limit: 0.5}}\nscaling: {{min_instances: 1, max_instances: 2, capacity_rps: 20}}\n{extra}",
        cache
            .join("ppocr/ch_ppocr_mobile_v2.0_cls_infer.onnx")
            .display()
    )
}

fn assert_field(status: u16, body: &Value, field: &str, rule_contains: &str) {
    assert_eq!(status, 400, "{body}");
    assert_eq!(body["field"], field, "{body}");
    assert!(
        body["rule"].as_str().unwrap_or("").contains(rule_contains),
        "rule should mention {rule_contains:?}: {body}"
    );
    assert!(
        body["error"].as_str().unwrap_or("").contains(field),
        "{body}"
    );
    assert!(body.get("value").is_some(), "{body}");
}

#[test]
fn control_api_and_gateway_refuse_bad_input_precisely_and_serve_good_input() {
    let Some(cache) = ensure_models() else { return };
    let dir = tempfile::tempdir().unwrap();
    let up = UpProc::start(dir.path(), &["--cpu-cores", "2"]);

    // The token guards every mutating endpoint.
    let spec = ocr_spec(&cache, "ocr", "gateway: {max_body: 512KiB}\n");
    let (status, body) = up.call(
        Method::POST,
        "/v1/functions",
        Some(("application/yaml", spec.clone().into_bytes())),
        false,
    );
    assert_eq!(status, 401, "{body}");
    assert_eq!(body["field"], "Authorization");
    for method in [Method::PUT, Method::DELETE] {
        let (status, _) = up.call(method, "/v1/functions/ocr", None, false);
        assert_eq!(status, 401);
    }
    let (status, _) = up.get("/v1/functions");
    assert_eq!(status, 200, "reads need no token");

    // Invalid specs: 400 naming the field and the rule.
    let (s, b) = up.deploy_yaml(&ocr_spec(&cache, "bad", "gpus: 2\n"));
    assert_field(s, &b, "gpus", "unknown field");
    let (s, b) =
        up.deploy_yaml(&ocr_spec(&cache, "bad", "").replace("request: 0.2", "request: 0.7"));
    assert_field(s, &b, "quota.request", "must not exceed quota.limit");
    let (s, b) = up.deploy_yaml(
        &ocr_spec(&cache, "bad", "").replace("limit: 0.5}", "limit: 0.5, memory: -512MiB}"),
    );
    assert_field(s, &b, "quota.memory", "negative");
    let (s, b) = up.deploy_yaml(&ocr_spec(&cache, "bad", "").replace("ch_ppocr", "no_such_model"));
    assert_field(s, &b, "model.path", "no such file");
    let (s, b) = up.deploy_yaml(&ocr_spec(&cache, "bad", "").replace("slo_ms: 200", "slo_ms: 0"));
    assert_field(s, &b, "slo_ms", "(0, 3600000]");
    let (s, b) = up.call(
        Method::POST,
        "/v1/functions",
        Some((
            "application/json",
            br#"{"name":"bad","model":{"path":"/x"},"slo_ms":"fast"}"#.to_vec(),
        )),
        true,
    );
    assert_eq!((s, b["field"].as_str()), (400, Some("slo_ms")), "{b}");
    let (_, list) = up.get("/v1/functions");
    assert_eq!(
        list["functions"].as_array().unwrap().len(),
        0,
        "nothing bad was stored"
    );

    // A good spec deploys; a second deploy of the name conflicts.
    let (s, b) = up.deploy_yaml(&spec);
    assert_eq!(s, 201, "{b}");
    let (s, b) = up.deploy_yaml(&spec);
    assert_eq!(s, 409, "{b}");
    let view = up.wait_running("ocr", 1, Duration::from_secs(60));
    assert_eq!(view["profile"]["source"], "spec");

    // A correct inference with real weights.
    let upright = std::fs::read(cache.join("inputs/text-upright.json")).unwrap();
    let flipped = std::fs::read(cache.join("inputs/text-flipped.json")).unwrap();
    let (s, r) = up.infer("ocr", &upright);
    assert_eq!(s, 200, "{r}");
    assert_eq!(r["model_name"], "ocr");
    assert_eq!(r["outputs"][0]["datatype"], "FP32");
    assert_eq!(r["outputs"][0]["shape"], json!([1, 2]));
    assert_eq!(argmax(&output_data(&r)), 0, "upright text is class 0: {r}");
    let (_, r) = up.infer("ocr", &flipped);
    assert_eq!(
        argmax(&output_data(&r)),
        1,
        "flipped text is class 1 (180°): {r}"
    );

    // Bad inference requests: the v2 error body {"error": "..."}.
    let v2_error = |(s, b): (u16, Value), want: u16, contains: &str| {
        assert_eq!(s, want, "{b}");
        let obj = b.as_object().expect("a JSON object");
        assert_eq!(obj.len(), 1, "only 'error': {b}");
        assert!(b["error"].as_str().unwrap().contains(contains), "{b}");
    };
    v2_error(up.infer("ocr", b"{\"inputs\": [ nope"), 400, "");
    let shape = json!({"inputs": [{"name": "x", "shape": [1, 3, 48, 100], "datatype": "FP32",
        "data": vec![0.0f32; 3 * 48 * 100]}]});
    v2_error(up.infer("ocr", shape.to_string().as_bytes()), 400, "shape");
    let dtype = json!({"inputs": [{"name": "x", "shape": [1, 3, 48, 192], "datatype": "INT8",
        "data": vec![0; 3 * 48 * 192]}]});
    v2_error(
        up.infer("ocr", dtype.to_string().as_bytes()),
        400,
        "datatype",
    );
    v2_error(up.infer("ocr", &vec![b' '; 600 * 1024]), 413, "");
    v2_error(up.infer("nope", &upright), 404, "nope");

    // A quota update is a vertical action: the agent applies it to the running instance.
    let updated = spec.replace("request: 0.2, limit: 0.5", "request: 0.3, limit: 0.6");
    let (s, b) = up.call(
        Method::PUT,
        "/v1/functions/ocr",
        Some(("application/yaml", updated.into_bytes())),
        true,
    );
    assert_eq!(s, 200, "{b}");
    let (_, devices) = up.get("/v1/devices");
    let instance = devices["devices"][0]["instances"]
        .as_array()
        .unwrap()
        .iter()
        .find(|i| i["function"] == "ocr")
        .cloned()
        .expect("ocr on the CPU device");
    assert_eq!(instance["quota"]["request"], 0.3, "{instance}");
    assert_eq!(instance["quota"]["limit"], 0.6, "{instance}");

    // A quota that does not fit beside what runs is refused by the ledger with 409, field and rule, and
    // nothing changes.
    let (s, b) = up.deploy_yaml(
        &spec
            .replace("name: ocr", "name: other")
            .replace("request: 0.2, limit: 0.5", "request: 0.6, limit: 0.6"),
    );
    assert_eq!(s, 201, "{b}");
    up.wait_running("other", 1, Duration::from_secs(60));
    let too_big = spec.replace("request: 0.2, limit: 0.5", "request: 0.5, limit: 0.6");
    let (s, b) = up.call(
        Method::PUT,
        "/v1/functions/ocr",
        Some(("application/yaml", too_big.into_bytes())),
        true,
    );
    assert_eq!(s, 409, "{b}");
    assert_eq!(b["field"], "quota.request", "{b}");
    assert_eq!(b["value"], "0.5", "{b}");
    assert!(
        b["rule"].as_str().unwrap_or("").contains("does not fit"),
        "{b}"
    );
    let (_, view) = up.get("/v1/functions/ocr");
    assert_eq!(view["spec"]["quota"]["request"], 0.3, "{view}");

    // Metrics from all three parts.
    let text = up
        .client()
        .get(format!("{}/metrics", up.url))
        .send()
        .unwrap()
        .text()
        .unwrap();
    for family in [
        "dilu_control_instances",
        "dilu_control_vertical_actions_total",
        "dilu_gateway_requests_total",
        "dilu_gateway_request_duration_seconds_bucket",
        "dilu_gateway_queue_depth",
        "dilu_gateway_slo_violations_total",
        "dilu_agent_",
    ] {
        assert!(text.contains(family), "metrics lack {family}");
    }
    if let Ok(out) = std::process::Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .and_then(|mut child| {
            use std::io::Write;
            child.stdin.take().unwrap().write_all(text.as_bytes())?;
            child.wait_with_output()
        })
    {
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            !stderr.contains("error"),
            "promtool check metrics: {stderr}"
        );
    } else {
        eprintln!("promtool not found: metrics format not checked by promtool");
    }

    // Delete: 204, then the function is gone from the API and the gateway.
    let (s, _) = up.call(Method::DELETE, "/v1/functions/ocr", None, true);
    assert_eq!(s, 204);
    let (s, _) = up.get("/v1/functions/ocr");
    assert_eq!(s, 404);
    v2_error(up.infer("ocr", &upright), 404, "ocr");
}
