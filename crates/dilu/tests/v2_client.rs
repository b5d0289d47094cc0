//! The official Open Inference Protocol (v2) clients against `dilu up`'s gateway and against a worker directly:
//! Triton's (`tritonclient.http`) and KServe's (`kserve.InferenceRESTClient`). Each runs the health, readiness
//! and metadata calls, inference with binary and JSON tensors, and the errors it reports; the answers must agree
//! with each other and with the plain-JSON path the other tests use.
//!
//! Needs `python3` with `tritonclient[http]`, and a Python with `kserve`: `$DILU_KSERVE_PYTHON`, else the
//! virtual environment `.ci/run` makes at `~/.cache/dilu/kserve-venv`, else `python3`. Without a client its
//! test is skipped loudly; under `CI=true` it fails.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use common::platform::{UpProc, argmax, ensure_models, output_data};
use serde_json::{Value, json};

const SCRIPTS: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../../scripts");

/// Where `.ci/run` installs KServe's client (its dependencies are too many to share `python3` with others).
const KSERVE_VENV: &str = ".cache/dilu/kserve-venv";

/// One client: the Python that has it, the check script that drives it, and how to get it.
struct Client {
    name: &'static str,
    python: PathBuf,
    script: &'static str,
    import: &'static str,
    install: &'static str,
}

impl Client {
    fn triton() -> Client {
        Client {
            name: "tritonclient",
            python: PathBuf::from("python3"),
            script: "v2-client-check.py",
            import: "import tritonclient.http, numpy",
            install: "pip install \"tritonclient[http]\"",
        }
    }

    fn kserve() -> Client {
        let venv = std::env::var_os("HOME")
            .map(|h| Path::new(&h).join(KSERVE_VENV).join("bin/python"))
            .filter(|p| p.is_file());
        let python = std::env::var_os("DILU_KSERVE_PYTHON")
            .filter(|p| !p.is_empty())
            .map(PathBuf::from)
            .or(venv)
            .unwrap_or_else(|| PathBuf::from("python3"));
        Client {
            name: "kserve",
            python,
            script: "v2-kserve-check.py",
            import: "from kserve import InferenceRESTClient",
            install: "python3 -m venv ~/.cache/dilu/kserve-venv && \
                      ~/.cache/dilu/kserve-venv/bin/pip install kserve==0.21.0 (or set DILU_KSERVE_PYTHON)",
        }
    }

    /// Whether the client imports; outside CI a missing client skips the test, loudly.
    fn present(&self) -> bool {
        let ok = Command::new(&self.python)
            .args(["-c", self.import])
            .status()
            .map(|s| s.success())
            .unwrap_or(false);
        if !ok {
            let note = format!(
                "{} CLIENT MISSING: `{} -c '{}'` failed; install it with `{}`",
                self.name.to_uppercase(),
                self.python.display(),
                self.import,
                self.install
            );
            if std::env::var("CI").as_deref() == Ok("true") {
                panic!("{note}");
            }
            eprintln!("\n*** SKIPPING: {note} ***\n");
        }
        ok
    }

    /// Runs the check script against `base_url` (`http://HOST:PORT`) and returns its report.
    fn check(&self, base_url: &str, model: &str, request: &Path) -> Value {
        let url = match self.name {
            // Triton's client takes HOST:PORT, KServe's a URL.
            "tritonclient" => base_url.trim_start_matches("http://").trim_end_matches('/'),
            _ => base_url.trim_end_matches('/'),
        };
        let out = Command::new(&self.python)
            .arg(Path::new(SCRIPTS).join(self.script))
            .args(["--url", url, "--model", model, "--request"])
            .arg(request)
            .env("NO_PROXY", "*")
            .output()
            .expect("run the check script");
        assert!(
            out.status.success(),
            "{} failed against {base_url}: {}",
            self.script,
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
            panic!(
                "report is not JSON ({e}): {}",
                String::from_utf8_lossy(&out.stdout)
            )
        })
    }
}

/// `dilu up` serving PaddleOCR's text-direction classifier as `ocr`, the upright-text request, the answer of
/// the plain-JSON path to it, and the URL of the one worker.
struct Served {
    up: UpProc,
    _dir: tempfile::TempDir,
    request: PathBuf,
    reference: Vec<f64>,
    worker_url: String,
}

fn serve_ocr(cache: &Path) -> Served {
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
    let (_, view) = up.get("/v1/functions/ocr");
    let worker_url = view["instances"][0]["url"].as_str().unwrap().to_string();
    Served {
        up,
        _dir: dir,
        request,
        reference,
        worker_url,
    }
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

/// What both clients report, checked against the model's known answer `reference` (from the JSON path):
/// health, metadata, each way of sending the request (`ways`: its name and whether the output came back as
/// binary data), and the two errors.
fn assert_report(report: &Value, model: &str, reference: &[f64], ways: &[(&str, bool)]) {
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
    for &(way, binary) in ways {
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
        assert_eq!(output["shape"], json!([1, 2]), "{way}");
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

/// Triton's client asks for binary outputs unless told otherwise (`default_outputs` names none).
const TRITON_WAYS: &[(&str, bool)] = &[
    ("binary", true),
    ("json", false),
    ("default_outputs", true),
    ("binary_in_json_out", false),
];

#[test]
fn the_official_triton_client_works_against_the_gateway_and_the_worker() {
    let Some(cache) = ensure_models() else { return };
    let client = Client::triton();
    if !client.present() {
        return;
    }
    let served = serve_ocr(&cache);
    let through_gateway = client.check(&served.up.url, "ocr", &served.request);
    assert_report(&through_gateway, "ocr", &served.reference, TRITON_WAYS);
    let direct = client.check(&served.worker_url, "ocr", &served.request);
    assert_report(&direct, "ocr", &served.reference, TRITON_WAYS);
    println!(
        "tritonclient: gateway and worker agree; P(upright) binary {:.7} json {:.7}",
        probabilities(&through_gateway, "binary")[0],
        probabilities(&through_gateway, "json")[0]
    );
}

/// KServe's client asks for JSON outputs unless an output names `binary_data`; `dict_request` is the request
/// file's body sent as it is.
const KSERVE_WAYS: &[(&str, bool)] = &[
    ("binary", true),
    ("json", false),
    ("default_outputs", false),
    ("binary_in_json_out", false),
    ("dict_request", false),
];

/// Issue 14, defect 9: KServe's client failed at `is_server_live` because the health and readiness bodies
/// were empty; the Open Inference Protocol gives `{"live": true}`, `{"ready": true}` and
/// `{"name": …, "ready": true}`. The script parses every health and metadata body with KServe's own schema.
#[test]
fn kserve_inference_rest_client_works_against_the_gateway_and_the_worker() {
    let Some(cache) = ensure_models() else { return };
    let client = Client::kserve();
    if !client.present() {
        return;
    }
    let served = serve_ocr(&cache);
    for (to, url) in [("gateway", &served.up.url), ("worker", &served.worker_url)] {
        let report = client.check(url, "ocr", &served.request);
        assert_report(&report, "ocr", &served.reference, KSERVE_WAYS);
        assert_eq!(report["unknown_model_ready"], false, "{to}: {report:#}");
        let bodies = &report["bodies"];
        assert_eq!(bodies["/v2/health/live"], json!({"live": true}), "{to}");
        assert_eq!(bodies["/v2/health/ready"], json!({"ready": true}), "{to}");
        assert_eq!(
            bodies["/v2/models/ocr/ready"],
            json!({"name": "ocr", "ready": true}),
            "{to}"
        );
        println!(
            "kserve InferenceRESTClient via the {to}: P(upright) binary {:.7} json {:.7}",
            probabilities(&report, "binary")[0],
            probabilities(&report, "json")[0]
        );
    }
}
