//! The two engines side by side: for each model of the cache (SqueezeNet, ResNet-50, PaddleOCR's classifier) a
//! worker on `tract` and one on ONNX Runtime must give the same metadata, the same answers (within 1e-4:
//! absolute for values of magnitude up to 1, relative above) to the same requests, alone and as batches of 8
//! concurrent requests, and the same error to a bad request. Also: ONNX Runtime computes on the batcher's thread
//! (so its thread CPU time is what is charged), and a missing library is a precise error.
//!
//! Needs the model cache and ONNX Runtime's library (`scripts/fetch-models.sh`, fetched on first use); skips
//! with `SKIPPED:` without them, fails under `CI=true`.

mod common;

use std::path::PathBuf;

use common::Worker;
use dilu_worker::model::Sample;
use dilu_worker::{Engine, Model, TensorData, WorkerConfig, WorkerError};
use reqwest::blocking::Client;
use serde_json::{Value, json};

/// A model and the settings it is served with.
struct Case {
    name: &'static str,
    model: PathBuf,
    input_shape: Option<Vec<usize>>,
}

fn case(name: &str) -> Option<Case> {
    Some(match name {
        "squeezenet" => Case {
            name: "squeezenet",
            model: common::squeezenet()?,
            input_shape: None,
        },
        "resnet50" => Case {
            name: "resnet50",
            model: common::resnet50()?,
            input_shape: None,
        },
        _ => Case {
            name: "ppocr-cls",
            model: common::ppocr_cls()?,
            // The classifier leaves height and width open.
            input_shape: Some(vec![1, 3, 48, 192]),
        },
    })
}

fn config(case: &Case, engine: Engine, lib: &std::path::Path) -> WorkerConfig {
    let mut c = WorkerConfig::new(case.name, &case.model);
    c.input_shape = case.input_shape.clone();
    c.engine = engine;
    c.onnxruntime_lib = Some(lib.to_path_buf());
    c.max_batch = 8;
    // Concurrent requests join one batch (it closes at 8 requests, or after 150 ms), and a batchable model runs
    // it concatenated, whatever the load-time measurement would choose.
    c.fixed_wait_us = Some(150_000);
    c.concat_batches = Some(true);
    c
}

fn get(client: &Client, w: &Worker, path: &str) -> Value {
    let r = client.get(w.url(path)).send().unwrap();
    assert_eq!(r.status(), 200, "GET {path}");
    r.json().unwrap()
}

fn post(client: &Client, w: &Worker, model: &str, body: &Value) -> (u16, Value) {
    let r = client
        .post(w.url(&format!("/v2/models/{model}/infer")))
        .json(body)
        .send()
        .unwrap();
    (r.status().as_u16(), r.json().unwrap_or(Value::Null))
}

/// The request for input `name` of `shape` (batch first) with the pattern `seed`.
fn request(name: &str, shape: &[usize], seed: u64) -> Value {
    let n: usize = shape.iter().product();
    json!({"id": format!("r{seed}"), "inputs": [{"name": name, "shape": shape, "datatype": "FP32",
                                                 "data": common::pattern(n, seed)}]})
}

/// Compares two successful answers output by output (name, datatype, shape exactly; data within 1e-4 absolute
/// up to magnitude 1, relative above); returns the largest absolute difference.
fn compare(tract: &Value, ort: &Value, what: &str) -> f64 {
    let (a, b) = (tract["outputs"].as_array(), ort["outputs"].as_array());
    let (a, b) = (a.unwrap(), b.unwrap());
    assert_eq!(a.len(), b.len(), "{what}: output count");
    assert_eq!(tract["id"], ort["id"], "{what}: id");
    let mut worst = 0.0f64;
    for (x, y) in a.iter().zip(b) {
        for key in ["name", "datatype", "shape"] {
            assert_eq!(x[key], y[key], "{what}: output {key}");
        }
        let (dx, dy) = (x["data"].as_array().unwrap(), y["data"].as_array().unwrap());
        assert_eq!(dx.len(), dy.len(), "{what}: output length");
        for (i, (p, q)) in dx.iter().zip(dy).enumerate() {
            let (p, q) = (p.as_f64().unwrap(), q.as_f64().unwrap());
            let diff = (p - q).abs();
            assert!(
                diff <= 1e-4 * p.abs().max(1.0),
                "{what}: output {} element {i}: tract {p}, onnxruntime {q}",
                x["name"]
            );
            worst = worst.max(diff);
        }
    }
    worst
}

/// Sends `bodies` concurrently (one client thread each) and returns the answers in order.
fn concurrently(w: &Worker, model: &str, bodies: &[Value]) -> Vec<Value> {
    std::thread::scope(|scope| {
        let threads: Vec<_> = bodies
            .iter()
            .map(|body| {
                scope.spawn(move || {
                    let (status, answer) = post(&Client::new(), w, model, body);
                    assert_eq!(status, 200, "{answer}");
                    answer
                })
            })
            .collect();
        threads.into_iter().map(|t| t.join().unwrap()).collect()
    })
}

fn engines_agree(model: &str) {
    let (Some(case), Some(lib)) = (case(model), common::onnxruntime_lib()) else {
        return;
    };
    let tract = Worker::start(config(&case, Engine::Tract, &lib));
    let ort = Worker::start(config(&case, Engine::OnnxRuntime, &lib));
    let client = Client::new();
    let name = case.name;

    // The same metadata, to the byte.
    let meta_path = format!("/v2/models/{name}");
    let meta = get(&client, &tract, &meta_path);
    assert_eq!(meta, get(&client, &ort, &meta_path), "metadata");
    eprintln!("{name} metadata (both engines): {meta}");
    let input = &meta["inputs"][0];
    let input_name = input["name"].as_str().unwrap();
    let batchable = input["shape"][0] == -1;
    let mut shape: Vec<usize> = input["shape"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d.as_i64().unwrap().max(1) as usize)
        .collect();
    shape[0] = 1;

    // Batch 1, one request at a time.
    let mut worst = 0.0f64;
    for seed in [1, 2] {
        let body = request(input_name, &shape, seed);
        let (st, a) = post(&client, &tract, name, &body);
        let (so, b) = post(&client, &ort, name, &body);
        assert_eq!((st, so), (200, 200), "{a} / {b}");
        worst = worst.max(compare(&a, &b, &format!("{name} batch 1, seed {seed}")));
    }
    // A request that carries a batch of 2 itself, where the model is batchable.
    if batchable {
        let mut two = shape.clone();
        two[0] = 2;
        let body = request(input_name, &two, 3);
        let (_, a) = post(&client, &tract, name, &body);
        let (_, b) = post(&client, &ort, name, &body);
        assert_eq!(a["outputs"][0]["shape"][0], 2, "{a}");
        worst = worst.max(compare(&a, &b, &format!("{name} a request of batch 2")));
    }
    // Eight concurrent requests: one batch of 8 (concatenated where the model is batchable).
    let bodies: Vec<Value> = (10..18)
        .map(|seed| request(input_name, &shape, seed))
        .collect();
    let a = concurrently(&tract, name, &bodies);
    let b = concurrently(&ort, name, &bodies);
    for (k, (a, b)) in a.iter().zip(&b).enumerate() {
        worst = worst.max(compare(a, b, &format!("{name} concurrent request {k}")));
    }
    let batches = |w: &Worker| -> String {
        let text = client
            .get(w.url("/metrics"))
            .send()
            .unwrap()
            .text()
            .unwrap();
        text.lines()
            .filter(|l| {
                l.starts_with("dilu_worker_batches_total")
                    || l.starts_with("dilu_worker_batch_size_sum")
            })
            .collect::<Vec<_>>()
            .join(", ")
    };
    eprintln!(
        "{name}: max |tract - onnxruntime| = {worst:.3e} (batchable: {batchable}); tract: {}; onnxruntime: {}",
        batches(&tract),
        batches(&ort)
    );

    // Bad requests: the same status and the same error from both.
    let mut wrong = shape.clone();
    if let Some(last) = wrong.last_mut() {
        *last += 1;
    }
    let n: usize = shape.iter().product();
    let bad = [
        request(input_name, &wrong, 1),
        json!({"inputs": [{"name": input_name, "shape": shape, "datatype": "FP32", "data": vec![0.5; n - 1]}]}),
        json!({"inputs": [{"name": input_name, "shape": shape, "datatype": "INT64", "data": vec![1; n]}]}),
        json!({"inputs": [{"name": "nope", "shape": shape, "datatype": "FP32", "data": vec![0.5; n]}]}),
        request(input_name, &[9, shape[1], shape[2], shape[3]], 1),
    ];
    for body in &bad {
        let (st, a) = post(&client, &tract, name, body);
        let (so, b) = post(&client, &ort, name, body);
        assert_eq!(st, 400, "{a}");
        assert_eq!((st, &a), (so, &b), "a bad request gets the same error");
    }
    // A wrong model name and an unknown version too.
    let (st, a) = post(&client, &tract, "other", &bad[0]);
    let (so, b) = post(&client, &ort, "other", &bad[0]);
    assert_eq!((st, &a), (so, &b));
    assert_eq!(st, 404);
}

#[test]
fn engines_agree_on_squeezenet() {
    engines_agree("squeezenet");
}

#[test]
fn engines_agree_on_resnet50() {
    engines_agree("resnet50");
}

#[test]
fn engines_agree_on_the_ppocr_classifier() {
    engines_agree("ppocr-cls");
}

/// A model that cannot be served as it is gets the same load error from both engines.
#[test]
fn load_errors_are_the_same() {
    let (Some(mut case), Some(lib)) = (case("ppocr-cls"), common::onnxruntime_lib()) else {
        return;
    };
    // The classifier leaves height and width open: without input_shape neither engine can serve it.
    case.input_shape = None;
    let tract = Model::load(&config(&case, Engine::Tract, &lib)).unwrap_err();
    let ort = Model::load(&config(&case, Engine::OnnxRuntime, &lib)).unwrap_err();
    assert_eq!(tract.to_string(), ort.to_string());
    assert!(
        tract
            .to_string()
            .contains("input x leaves a dimension other than the batch open; give input_shape"),
        "{tract}"
    );
    // A scalar shape given for the first input.
    case.input_shape = Some(vec![]);
    let tract = Model::load(&config(&case, Engine::Tract, &lib)).unwrap_err();
    let ort = Model::load(&config(&case, Engine::OnnxRuntime, &lib)).unwrap_err();
    assert_eq!(tract.to_string(), ort.to_string());
    assert!(tract.to_string().contains("is a scalar"), "{tract}");
}

/// CPU time of the whole process so far (every thread), in nanoseconds.
fn process_cpu_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes one timespec we own.
    unsafe { libc::clock_gettime(libc::CLOCK_PROCESS_CPUTIME_ID, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// The batcher charges the CPU time of its own thread: ONNX Runtime must compute there (one intra-op thread),
/// not on a pool of its own that the meter would not see.
#[test]
fn onnxruntime_computes_on_the_calling_thread() {
    let (Some(case), Some(lib)) = (case("squeezenet"), common::onnxruntime_lib()) else {
        return;
    };
    let model = Model::load(&config(&case, Engine::OnnxRuntime, &lib)).unwrap();
    assert!(model.is_batchable() && model.concatenates());
    let n = model.item_len(0);
    let samples: Vec<Sample> = (0..8)
        .map(|k| Sample {
            batch: 1,
            inputs: vec![TensorData::Fp32(common::pattern(n, k))],
        })
        .collect();
    let refs: Vec<&Sample> = samples.iter().collect();
    model.run_batch(&refs).unwrap();
    let (thread0, process0) = (dilu_quota::thread_cpu_ns(), process_cpu_ns());
    for _ in 0..3 {
        model.run_batch(&refs).unwrap();
    }
    let (thread, process) = (
        dilu_quota::thread_cpu_ns() - thread0,
        process_cpu_ns() - process0,
    );
    eprintln!(
        "3 batches of 8: this thread {:.1} ms of CPU, the process {:.1} ms",
        thread as f64 / 1e6,
        process as f64 / 1e6
    );
    assert!(process > 0);
    assert!(
        thread as f64 >= 0.95 * process as f64,
        "ONNX Runtime computed off the calling thread: {thread} ns of {process} ns"
    );
}

#[test]
fn a_missing_library_is_a_precise_error() {
    let Some(case) = case("squeezenet") else {
        return;
    };
    let mut c = config(
        &case,
        Engine::OnnxRuntime,
        std::path::Path::new("/nonexistent/libonnxruntime.so.1"),
    );
    let e = Model::load(&c).unwrap_err();
    assert!(matches!(e, WorkerError::OnnxRuntime(_)), "{e:?}");
    let e = e.to_string();
    for needle in [
        "--onnxruntime-lib",
        "/nonexistent/libonnxruntime.so.1",
        "no such file",
    ] {
        assert!(e.contains(needle), "{e:?} lacks {needle:?}");
    }
    // A file that is not a library.
    let dir = tempfile::tempdir().unwrap();
    let junk = dir.path().join("libonnxruntime.so.1");
    std::fs::write(&junk, b"not a library").unwrap();
    c.onnxruntime_lib = Some(junk.clone());
    let e = Model::load(&c).unwrap_err().to_string();
    assert!(e.contains(&junk.display().to_string()), "{e}");
    // Neither the setting nor the variable.
    if std::env::var_os("ORT_DYLIB_PATH").is_none_or(|v| v.is_empty()) {
        c.onnxruntime_lib = None;
        let e = Model::load(&c).unwrap_err().to_string();
        for needle in ["--onnxruntime-lib", "ORT_DYLIB_PATH"] {
            assert!(e.contains(needle), "{e:?} lacks {needle:?}");
        }
    } else {
        eprintln!(
            "ORT_DYLIB_PATH is set: the error for no library at all is tested by dilu's worker_cli"
        );
    }
    // The tract engine needs no library.
    c.engine = Engine::Tract;
    assert!(Model::load(&c).is_ok());
}
