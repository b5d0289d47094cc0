//! `dilu worker`, `dilu train` and `dilu models` as real processes: the worker classifies rendered text by
//! its direction with PaddleOCR's real weights, bad flags are refused naming the flag, training serves a
//! rising iteration count, and the model cache is listed.

#[path = "../../dilu-worker/tests/common/mod.rs"]
mod models;

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use reqwest::blocking::Client;
use serde_json::Value;

fn dilu() -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_dilu"));
    command
        .env("RUST_BACKTRACE", "0")
        .env_remove("DILU_QUOTA_FILE")
        .env_remove("ORT_DYLIB_PATH")
        .stdin(Stdio::null());
    command
}

/// A serving `dilu` process; killed on drop unless stopped.
struct Served {
    child: Child,
    base: String,
}

impl Served {
    /// Starts `dilu ARGS` and waits for its `dilu WHAT listening on http://ADDR` line.
    fn start(what: &str, args: &[&str]) -> Served {
        Served::start_env(what, args, &[])
    }

    /// [`Served::start`] with environment variables set.
    fn start_env(what: &str, args: &[&str], env: &[(&str, &Path)]) -> Served {
        let mut child = dilu()
            .args(args)
            .envs(env.iter().copied())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start dilu");
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        let prefix = format!("dilu {what} listening on ");
        let base = line
            .trim()
            .strip_prefix(&prefix)
            .unwrap_or_else(|| panic!("unexpected first line {line:?}"))
            .to_string();
        assert!(base.starts_with("http://127.0.0.1:"), "{base}");
        assert!(!base.ends_with(":0"), "the bound port is printed: {base}");
        Served { child, base }
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    /// Polls `path` until it answers 200.
    fn wait_for(&self, path: &str) {
        let client = Client::new();
        let deadline = Instant::now() + Duration::from_secs(60);
        while !client
            .get(self.url(path))
            .send()
            .is_ok_and(|r| r.status() == 200)
        {
            assert!(Instant::now() < deadline, "{path} not 200 within 60 s");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// SIGTERM, then the exit status (within 10 s).
    fn terminate(mut self) -> std::process::ExitStatus {
        // SAFETY: kill(2) on our own child's pid.
        unsafe { libc::kill(self.child.id() as libc::pid_t, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            assert!(Instant::now() < deadline, "no exit within 10 s of SIGTERM");
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

impl Drop for Served {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Runs `dilu ARGS` to completion.
fn run(args: &[&str]) -> Output {
    dilu()
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .output()
        .expect("run dilu")
}

/// Writes the example requests into `dir` with `dilu models inputs`.
fn example_inputs(dir: &Path) {
    let out = run(&["models", "inputs", "--out", dir.to_str().unwrap()]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn infer(client: &Client, url: &str, body_file: &Path) -> Value {
    let body = std::fs::read_to_string(body_file).unwrap();
    let response = client
        .post(url)
        .header("content-type", "application/json")
        .body(body)
        .send()
        .unwrap();
    assert_eq!(response.status(), 200);
    response.json().unwrap()
}

#[test]
fn worker_tells_upright_from_flipped_text_with_real_weights() {
    let Some(model) = models::ppocr_cls() else {
        return;
    };
    classify_text(&model, &[], &[]);
}

/// The same on ONNX Runtime, its library named by `ORT_DYLIB_PATH` (ort's own variable).
#[test]
fn worker_on_onnxruntime_tells_upright_from_flipped_text() {
    let (Some(model), Some(lib)) = (models::ppocr_cls(), models::onnxruntime_lib()) else {
        return;
    };
    classify_text(
        &model,
        &["--engine", "onnxruntime"],
        &[("ORT_DYLIB_PATH", lib.as_path())],
    );
}

/// Serves PaddleOCR's classifier with `dilu worker … EXTRA` and checks it tells upright from flipped text.
fn classify_text(model: &Path, extra: &[&str], env: &[(&str, &Path)]) {
    let dir = tempfile::tempdir().unwrap();
    example_inputs(dir.path());
    let mut args = vec![
        "worker",
        "--name",
        "cls",
        "--model",
        model.to_str().unwrap(),
        "--input-shape",
        "1,3,48,192",
        "--listen",
        "127.0.0.1:0",
    ];
    args.extend_from_slice(extra);
    let worker = Served::start_env("worker", &args, env);
    worker.wait_for("/v2/health/ready");
    let client = Client::new();
    let url = worker.url("/v2/models/cls/infer");
    for (file, expected) in [("text-upright.json", 0), ("text-flipped.json", 1)] {
        let response = infer(&client, &url, &dir.path().join(file));
        let out = &response["outputs"][0];
        assert_eq!(out["shape"], serde_json::json!([1, 2]), "{response}");
        let p: Vec<f64> = serde_json::from_value(out["data"].clone()).unwrap();
        eprintln!(
            "{extra:?} {file}: P(0°) = {:.6}, P(180°) = {:.6}",
            p[0], p[1]
        );
        assert!((p[0] + p[1] - 1.0).abs() < 1e-3, "softmax: {p:?}");
        assert!(
            p[expected] > 0.95,
            "{file} should be class {expected} with a clear margin: {p:?}"
        );
    }
    assert!(worker.terminate().success());
}

#[test]
fn worker_serves_the_squeezenet_example() {
    let Some(model) = models::squeezenet() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    example_inputs(dir.path());
    let worker = Served::start(
        "worker",
        &[
            "worker",
            "--name",
            "squeezenet",
            "--model",
            model.to_str().unwrap(),
            "--listen",
            "127.0.0.1:0",
            "--max-batch",
            "4",
            "--max-body",
            "16MiB",
        ],
    );
    worker.wait_for("/v2/health/ready");
    let response = infer(
        &Client::new(),
        &worker.url("/v2/models/squeezenet/infer"),
        &dir.path().join("squeezenet.json"),
    );
    let out = &response["outputs"][0];
    let p: Vec<f64> = serde_json::from_value(out["data"].clone()).unwrap();
    assert_eq!(p.len(), 1000);
    assert!((p.iter().sum::<f64>() - 1.0).abs() < 1e-3, "a softmax");
    assert!(worker.terminate().success());
}

#[test]
fn bad_flags_are_refused_naming_the_flag() {
    let dir = tempfile::tempdir().unwrap();
    let model = dir.path().join("m.onnx");
    std::fs::write(&model, b"not really onnx").unwrap();
    let model = model.to_str().unwrap();
    let cases: Vec<(Vec<&str>, &str)> = vec![
        (vec!["worker", "--name", "a/b", "--model", model], "--name"),
        (
            vec!["worker", "--name", "m", "--model", "/nonexistent.onnx"],
            "--model",
        ),
        (
            vec![
                "worker",
                "--name",
                "m",
                "--model",
                model,
                "--max-batch",
                "0",
            ],
            "--max-batch",
        ),
        (
            vec![
                "worker",
                "--name",
                "m",
                "--model",
                model,
                "--input-shape",
                "1,0,3",
            ],
            "--input-shape",
        ),
        (
            vec![
                "worker",
                "--name",
                "m",
                "--model",
                model,
                "--max-body",
                "12Q",
            ],
            "--max-body",
        ),
        (
            vec![
                "worker",
                "--name",
                "m",
                "--model",
                model,
                "--max-body",
                "10",
            ],
            "--max-body",
        ),
        (
            vec![
                "worker", "--name", "m", "--model", model, "--listen", "nowhere",
            ],
            "--listen",
        ),
        (
            vec![
                "worker",
                "--name",
                "m",
                "--model",
                model,
                "--quota-file",
                "/nonexistent.quota",
            ],
            "--quota-file",
        ),
        (
            vec![
                "worker", "--name", "m", "--model", model, "--engine", "onnx",
            ],
            "--engine",
        ),
        // Neither --onnxruntime-lib nor ORT_DYLIB_PATH (dilu() removes it): the error names both.
        (
            vec![
                "worker",
                "--name",
                "m",
                "--model",
                model,
                "--engine",
                "onnxruntime",
            ],
            "--onnxruntime-lib PATH (worker.onnxruntime_lib) or set ORT_DYLIB_PATH",
        ),
        (
            vec![
                "worker",
                "--name",
                "m",
                "--model",
                model,
                "--engine",
                "onnxruntime",
                "--onnxruntime-lib",
                "/nonexistent/libonnxruntime.so",
            ],
            "--onnxruntime-lib) = /nonexistent/libonnxruntime.so: no such file",
        ),
        (vec!["train", "--hidden", "0"], "--hidden"),
        (vec!["train", "--batch", "0"], "--batch"),
        (vec!["train", "--classes", "1"], "--classes"),
        (vec!["train", "--momentum", "1.5"], "--momentum"),
        (vec!["train", "--max-iterations", "0"], "--max-iterations"),
        (vec!["train", "--layers", "x"], "--layers"),
    ];
    for (args, flag) in cases {
        let out = run(&args);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{args:?} succeeded");
        assert!(
            stderr.contains(flag),
            "{args:?}: the error should name {flag}:\n{stderr}"
        );
        assert!(out.stdout.is_empty(), "{args:?} printed {:?}", out.stdout);
    }
}

#[test]
fn train_serves_status_with_rising_iterations() {
    let training = Served::start(
        "train",
        &[
            "train",
            "--listen",
            "127.0.0.1:0",
            "--hidden",
            "32",
            "--layers",
            "1",
            "--batch",
            "16",
            "--seed",
            "7",
        ],
    );
    training.wait_for("/health");
    let client = Client::new();
    let status = || -> Value {
        client
            .get(training.url("/status"))
            .send()
            .unwrap()
            .json()
            .unwrap()
    };
    std::thread::sleep(Duration::from_millis(300));
    let first = status();
    std::thread::sleep(Duration::from_millis(700));
    let second = status();
    eprintln!("{first}\n{second}");
    for field in [
        "iterations",
        "iterations_per_second",
        "samples_per_second",
        "loss",
        "accuracy",
        "cpu_seconds",
        "throttled_seconds",
    ] {
        assert!(second[field].is_number(), "{field} missing in {second}");
    }
    assert!(
        second["iterations"].as_u64() > first["iterations"].as_u64(),
        "{first} -> {second}"
    );
    assert!(second["iterations_per_second"].as_f64().unwrap() > 0.0);
    assert_eq!(second["batch_size"], 16);
    let metrics = client
        .get(training.url("/metrics"))
        .send()
        .unwrap()
        .text()
        .unwrap();
    assert!(
        metrics.contains("\ndilu_training_iterations_total "),
        "{metrics}"
    );
    assert!(training.terminate().success());
}

#[test]
fn train_exits_after_max_iterations() {
    let start = Instant::now();
    let out = run(&[
        "train",
        "--listen",
        "127.0.0.1:0",
        "--hidden",
        "16",
        "--layers",
        "1",
        "--batch",
        "8",
        "--max-iterations",
        "50",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).starts_with("dilu train listening on http://"));
    assert!(start.elapsed() < Duration::from_secs(60));
}

#[test]
fn models_list_and_path_read_the_cache() {
    let cache = tempfile::tempdir().unwrap();
    let cache_dir = cache.path().to_str().unwrap();
    std::fs::create_dir_all(cache.path().join("ppocr")).unwrap();
    std::fs::write(
        cache
            .path()
            .join("ppocr/ch_ppocr_mobile_v2.0_cls_infer.onnx"),
        vec![0u8; 2048],
    )
    .unwrap();
    example_inputs(&cache.path().join("inputs"));

    let out = run(&["models", "list", "--cache", cache_dir]);
    assert!(out.status.success());
    let stdout = String::from_utf8_lossy(&out.stdout);
    eprintln!("{stdout}");
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines.len(), 4, "{stdout}");
    let model_line = lines
        .iter()
        .find(|l| l.contains("ch_ppocr_mobile_v2.0_cls_infer.onnx"))
        .unwrap_or_else(|| panic!("the model is not listed:\n{stdout}"));
    assert!(model_line.starts_with("ppocr-cls"), "{model_line}");
    assert!(model_line.contains("2.00 KiB"), "{model_line}");
    assert!(model_line.contains(cache_dir), "{model_line}");
    for name in ["text-upright.json", "text-flipped.json", "squeezenet.json"] {
        assert!(
            lines.iter().any(|l| l.ends_with(&format!("inputs/{name}"))),
            "{name} not listed:\n{stdout}"
        );
    }

    // The environment variable names the cache too.
    let out = dilu()
        .args(["models", "path", "ppocr-cls"])
        .env("DILU_MODEL_CACHE", cache_dir)
        .output()
        .unwrap();
    assert!(out.status.success());
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        cache
            .path()
            .join("ppocr/ch_ppocr_mobile_v2.0_cls_infer.onnx")
            .to_str()
            .unwrap()
    );
    let out = run(&["models", "path", "squeezenet", "--cache", cache_dir]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("dilu models fetch"));
    let out = run(&["models", "path", "nope", "--cache", cache_dir]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("ppocr-cls"));
}

#[test]
fn models_fetch_runs_the_embedded_script_from_anywhere() {
    // With the models already in the cache the script downloads nothing; it still needs python3 and pip.
    let (Some(squeezenet), Some(cls)) = (models::squeezenet(), models::ppocr_cls()) else {
        return;
    };
    let has = |tool: &str| {
        Command::new("sh")
            .args(["-c", &format!("command -v {tool}")])
            .output()
            .is_ok_and(|o| o.status.success())
    };
    if !has("python3") || !(has("pip3") || has("pip")) {
        let why = "SKIPPED: dilu models fetch needs python3 and pip";
        eprintln!("\n==================== {why} ====================\n");
        assert!(std::env::var("CI").as_deref() != Ok("true"), "{why}");
        return;
    }
    let cache = tempfile::tempdir().unwrap();
    let mut cached = vec![
        (squeezenet, "onnx-light/light_squeezenet.onnx".to_string()),
        (cls, "ppocr/ch_ppocr_mobile_v2.0_cls_infer.onnx".to_string()),
    ];
    if let Some(lib) = models::onnxruntime_lib() {
        let to = format!(
            "onnxruntime/libonnxruntime.so.{}",
            models::ONNXRUNTIME_VERSION
        );
        cached.push((lib, to));
    }
    for (from, to) in &cached {
        let to = cache.path().join(to);
        std::fs::create_dir_all(to.parent().unwrap()).unwrap();
        std::fs::copy(from, to).unwrap();
    }
    let elsewhere = tempfile::tempdir().unwrap();
    let out = dilu()
        .args(["models", "fetch", "--cache", cache.path().to_str().unwrap()])
        .current_dir(elsewhere.path())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(stderr.contains("fetch-models: models in"), "{stderr}");
    for name in ["text-upright.json", "text-flipped.json", "squeezenet.json"] {
        assert!(cache.path().join("inputs").join(name).is_file(), "{name}");
    }
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("squeezenet"), "{stdout}");
}
