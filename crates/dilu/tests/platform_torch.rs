//! The PyTorch examples (`examples/pytorch`) as a user runs them: `dilu deploy -f` of the ResNet-18 server and
//! the training job under `dilu up` (the CPU device here; the GPU on a GPU node), then inference through the
//! gateway from Triton's own Python client (`tritonclient.http`).
//!
//! Needs a Python with torch, torchvision and tritonclient: `scripts/fetch-torch.sh` makes one at
//! `$DILU_TORCH_VENV` (default `~/.cache/dilu/torch`). Without it the test says `SKIPPED` loudly, and fails
//! under `CI=true`.

mod common;

use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use common::dilu_bin;
use common::platform::UpProc;

/// The venv's Python when it has torch, torchvision and tritonclient.
fn torch_python() -> Option<PathBuf> {
    let venv = std::env::var_os("DILU_TORCH_VENV")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache/dilu/torch")))?;
    let python = venv.join("bin/python");
    let ok = Command::new(&python)
        .args(["-c", "import torch, torchvision, tritonclient.http"])
        .status()
        .is_ok_and(|s| s.success());
    if ok {
        return Some(python);
    }
    let message = format!(
        "SKIPPED: no Python with torch, torchvision and tritonclient at {} (run scripts/fetch-torch.sh)",
        python.display()
    );
    if std::env::var("CI").is_ok_and(|v| v == "true") {
        panic!("{message}; CI must have it");
    }
    eprintln!("{message}");
    None
}

/// A path in the repository.
fn repo(path: &str) -> String {
    concat!(env!("CARGO_MANIFEST_DIR"), "/../../").to_string() + path
}

/// `dilu deploy -f SPEC --wait` against `up`, with `DILU_PYTHON` naming `python`.
fn deploy(up: &UpProc, spec: &str, python: &PathBuf) {
    let output = Command::new(dilu_bin())
        .args([
            "deploy",
            "-f",
            &repo(spec),
            "--wait",
            "--wait-timeout-s",
            "240",
        ])
        .args(["--server", &up.url, "--token", &up.token])
        .env("DILU_PYTHON", python)
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "dilu deploy -f {spec}: {}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}

/// Triton's HTTP client against the gateway: live, ready, metadata, and inference at batch 1 and 3 (the
/// answers of a batch equal those of its requests alone).
const TRITON_CLIENT: &str = r#"
import sys
import numpy as np
import tritonclient.http as http

url, model = sys.argv[1], sys.argv[2]
client = http.InferenceServerClient(url=url)
assert client.is_server_live(), "server not live"
assert client.is_model_ready(model), "model not ready"
meta = client.get_model_metadata(model)
assert meta["inputs"][0]["name"] == "input", meta
rng = np.random.default_rng(7)
images = rng.random((3, 3, 224, 224), dtype=np.float32)

def infer(x):
    tensor = http.InferInput("input", list(x.shape), "FP32")
    tensor.set_data_from_numpy(x)
    return client.infer(model, [tensor]).as_numpy("output")

one = infer(images[:1])
assert one.shape == (1, 1000), one.shape
assert np.isfinite(one).all()
three = infer(images)
assert three.shape == (3, 1000), three.shape
gap = float(np.abs(three[:1] - one).max())
assert gap < 1e-3, gap
print(f"tritonclient ok: outputs {one.shape} and {three.shape}, batch-vs-alone max diff {gap:.2e}, "
      f"top class {int(one.argmax())}")
"#;

#[test]
fn the_pytorch_examples_deploy_with_dilu_deploy_and_answer_tritonclient() {
    let Some(python) = torch_python() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let up = UpProc::start(&dir.path().join("data"), &[]);
    deploy(&up, "examples/pytorch/resnet.yaml", &python);
    let view = up.wait_running("resnet18", 1, Duration::from_secs(10));
    assert_eq!(view["spec"]["runtime"], "process", "{view:#}");

    let gateway = up.url.trim_start_matches("http://");
    let output = Command::new(&python)
        .args(["-c", TRITON_CLIENT, gateway, "resnet18"])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "tritonclient: {stdout}{}",
        String::from_utf8_lossy(&output.stderr)
    );
    eprintln!("{}", stdout.trim());

    deploy(&up, "examples/pytorch/train.yaml", &python);
    let view = up.wait_running("torch-train", 1, Duration::from_secs(10));
    assert_eq!(view["kind"], "training", "{view:#}");
    // Training reports progress: its iterations grow.
    let endpoint = {
        let (_, list) = up.get("/v1/instances");
        let instance = list["instances"]
            .as_array()
            .unwrap()
            .iter()
            .find(|i| i["function"] == "torch-train")
            .unwrap_or_else(|| panic!("{list:#}"))
            .clone();
        instance["labels"]["dilu.io/endpoint"]
            .as_str()
            .unwrap()
            .to_string()
    };
    let iterations = || {
        let v: serde_json::Value = up
            .client()
            .get(format!("{endpoint}/status"))
            .send()
            .unwrap()
            .json()
            .unwrap();
        v["iterations"].as_u64().unwrap()
    };
    let first = iterations();
    std::thread::sleep(Duration::from_secs(2));
    let second = iterations();
    assert!(second > first, "iterations {first} -> {second}");
    eprintln!("torch-train: {first} -> {second} iterations in 2 s");
}
