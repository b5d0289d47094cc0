//! The Open Inference Protocol v2 over real HTTP, against SqueezeNet from the model cache.

mod common;

use std::time::{Duration, Instant};

use common::Worker;
use dilu_worker::WorkerConfig;
use reqwest::blocking::Client;
use serde_json::{Value, json};

const NAME: &str = "squeezenet";

fn start(config: impl FnOnce(&mut WorkerConfig)) -> Option<Worker> {
    let model = common::squeezenet()?;
    let mut c = WorkerConfig::new(NAME, model);
    config(&mut c);
    Some(Worker::start(c))
}

fn metadata(client: &Client, w: &Worker) -> Value {
    metadata_of(client, w, NAME)
}

fn metadata_of(client: &Client, w: &Worker, model: &str) -> Value {
    let r = client
        .get(w.url(&format!("/v2/models/{model}")))
        .send()
        .unwrap();
    assert_eq!(r.status(), 200);
    r.json().unwrap()
}

/// The model's single input: its name, and its shape with the batch dimension set to `batch`.
fn input_of(meta: &Value, batch: usize) -> (String, Vec<usize>) {
    let input = &meta["inputs"][0];
    let mut shape: Vec<usize> = input["shape"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d.as_i64().unwrap().max(1) as usize)
        .collect();
    shape[0] = batch;
    (input["name"].as_str().unwrap().to_string(), shape)
}

fn request(name: &str, shape: &[usize], data: Vec<f32>) -> Value {
    json!({"id": "req-1", "inputs": [{"name": name, "shape": shape, "datatype": "FP32", "data": data}]})
}

fn infer(client: &Client, w: &Worker, body: &Value) -> (u16, Value) {
    let r = client
        .post(w.url(&format!("/v2/models/{NAME}/infer")))
        .json(body)
        .send()
        .unwrap();
    let status = r.status().as_u16();
    (status, r.json().unwrap_or(Value::Null))
}

/// The worker's `/metrics` text.
fn metrics_text(client: &Client, w: &Worker) -> String {
    client
        .get(w.url("/metrics"))
        .send()
        .unwrap()
        .text()
        .unwrap()
}

fn output_data(resp: &Value) -> Vec<f32> {
    resp["outputs"][0]["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_f64().unwrap() as f32)
        .collect()
}

fn argmax(v: &[f32]) -> usize {
    v.iter()
        .enumerate()
        .fold((0, f32::NEG_INFINITY), |(bi, bv), (i, &x)| {
            if x > bv { (i, x) } else { (bi, bv) }
        })
        .0
}

#[test]
fn health_metadata_and_metrics() {
    let Some(w) = start(|_| {}) else { return };
    let client = Client::new();
    for path in [
        "/v2/health/live",
        "/v2/health/ready",
        "/v2/models/squeezenet/ready",
        "/v2/models/squeezenet/versions/1/ready",
    ] {
        assert_eq!(
            client.get(w.url(path)).send().unwrap().status(),
            200,
            "{path}"
        );
    }
    // The Open Inference Protocol's health bodies: KServe's client reads `live` and `ready` from them.
    for (path, body) in [
        ("/v2/health/live", json!({"live": true})),
        ("/v2/health/ready", json!({"ready": true})),
        (
            "/v2/models/squeezenet/ready",
            json!({"name": "squeezenet", "ready": true}),
        ),
        (
            "/v2/models/squeezenet/versions/1/ready",
            json!({"name": "squeezenet", "ready": true}),
        ),
    ] {
        let r = client.get(w.url(path)).send().unwrap();
        assert_eq!(r.headers()["content-type"], "application/json", "{path}");
        assert_eq!(r.json::<Value>().unwrap(), body, "{path}");
    }
    let meta = metadata(&client, &w);
    eprintln!("metadata: {meta}");
    assert_eq!(meta["name"], NAME);
    assert_eq!(meta["platform"], "onnx");
    assert_eq!(meta["versions"], json!(["1"]));
    for io in ["inputs", "outputs"] {
        let tensors = meta[io].as_array().unwrap();
        assert!(!tensors.is_empty(), "{io}");
        for t in tensors {
            assert!(t["name"].is_string(), "{t}");
            assert_eq!(t["datatype"], "FP32", "{t}");
            assert!(
                t["shape"].as_array().unwrap().iter().all(|d| d.is_i64()),
                "{t}"
            );
        }
    }
    // The model supports a symbolic batch: -1 first.
    assert_eq!(meta["inputs"][0]["shape"][0], -1, "{meta}");
    assert_eq!(meta["outputs"][0]["shape"][0], -1, "{meta}");
    let server: Value = client.get(w.url("/v2")).send().unwrap().json().unwrap();
    assert_eq!(server["name"], "dilu-worker");

    // Unknown model or version: 404 with an error body.
    for path in [
        "/v2/models/nope",
        "/v2/models/nope/ready",
        "/v2/models/squeezenet/versions/7",
    ] {
        let r = client.get(w.url(path)).send().unwrap();
        assert_eq!(r.status(), 404, "{path}");
        let body: Value = r.json().unwrap();
        assert!(
            body["error"].as_str().unwrap().contains("nope") || path.ends_with('7'),
            "{body}"
        );
    }
    let r = client
        .post(w.url("/v2/models/nope/infer"))
        .body("{}")
        .send()
        .unwrap();
    assert_eq!(r.status(), 404);
    assert!(
        r.json::<Value>().unwrap()["error"]
            .as_str()
            .unwrap()
            .contains("'nope'")
    );

    let text = metrics_text(&client, &w);
    for name in [
        "dilu_worker_requests_total",
        "dilu_worker_batches_total",
        "dilu_worker_batch_size_bucket",
        "dilu_worker_inference_seconds_bucket",
        "dilu_worker_queue_depth",
    ] {
        assert!(text.contains(name), "{name} missing from\n{text}");
    }
}

#[test]
fn inference_is_deterministic_and_accepts_nested_data() {
    let Some(w) = start(|_| {}) else { return };
    let client = Client::new();
    let meta = metadata(&client, &w);
    let (name, shape) = input_of(&meta, 1);
    let n: usize = shape.iter().product();
    let body = request(&name, &shape, vec![0.5; n]);

    let (status, first) = infer(&client, &w, &body);
    assert_eq!(status, 200, "{first}");
    assert_eq!(first["model_name"], NAME);
    assert_eq!(first["model_version"], "1");
    assert_eq!(first["id"], "req-1");
    let out = &first["outputs"][0];
    assert_eq!(out["name"], meta["outputs"][0]["name"]);
    assert_eq!(out["datatype"], "FP32");
    let out_shape: Vec<usize> = serde_json::from_value(out["shape"].clone()).unwrap();
    assert_eq!(out_shape[0], 1);
    let data = output_data(&first);
    assert_eq!(data.len(), out_shape.iter().product::<usize>());
    assert!(data.len() >= 1000, "ImageNet classes: {out_shape:?}");
    assert!(data.iter().all(|x| x.is_finite()));

    let (_, second) = infer(&client, &w, &body);
    assert_eq!(argmax(&output_data(&second)), argmax(&data));
    assert_eq!(output_data(&second), data);

    // The same tensor as nested arrays [1][C][H][W].
    let (c, h, wd) = (shape[1], shape[2], shape[3]);
    let nested = vec![vec![vec![vec![0.5f32; wd]; h]; c]];
    let body = json!({"inputs": [{"name": name, "shape": shape, "datatype": "FP32", "data": nested}],
                      "outputs": [{"name": out["name"]}]});
    let (status, third) = infer(&client, &w, &body);
    assert_eq!(status, 200, "{third}");
    assert_eq!(output_data(&third), data);
    assert!(
        third.get("id").is_none(),
        "no id given, none echoed: {third}"
    );

    // Single-request latency, sequential.
    let start = Instant::now();
    let rounds = 20;
    for _ in 0..rounds {
        let (status, _) = infer(&client, &w, &request(&name, &shape, vec![0.5; n]));
        assert_eq!(status, 200);
    }
    eprintln!(
        "single-request latency (HTTP + JSON + model), sequential: {:.2} ms",
        start.elapsed().as_secs_f64() * 1e3 / f64::from(rounds)
    );
}

#[test]
fn batching_is_transparent_on_squeezenet() {
    let Some(model) = common::squeezenet() else {
        return;
    };
    // ONNX's light SqueezeNet has constant weights: every input gives the same output.
    check_batching(WorkerConfig::new(NAME, model), false);
}

#[test]
fn batching_is_transparent_on_a_real_weights_classifier() {
    let Some(model) = common::ppocr_cls() else {
        return;
    };
    let mut config = WorkerConfig::new("ppocr-cls", model);
    config.input_shape = Some(vec![1, 3, 48, 192]);
    check_batching(config, true);
}

/// Four concurrent requests (one of them with a batch of 2) close one batch of four requests, and each gets
/// what it would have got alone.
fn check_batching(mut config: WorkerConfig, distinct_outputs: bool) {
    config.max_batch = 4;
    // An upper bound: the batch closes as soon as its fourth request arrives.
    config.fixed_wait_us = Some(3_000_000);
    // Exercise concatenation whatever the load-time measurement would choose.
    config.concat_batches = Some(true);
    let model = config.model_name.clone();
    let w = Worker::start(config);
    let client = Client::new();
    let meta = metadata_of(&client, &w, &model);
    eprintln!("metadata: {meta}");
    assert_eq!(meta["inputs"][0]["shape"][0], -1, "{meta}");
    let (name, shape) = input_of(&meta, 1);
    let n: usize = shape.iter().product();
    let url = w.url(&format!("/v2/models/{model}/infer"));
    let post = |client: &Client, body: &Value| {
        let r = client.post(&url).json(body).send().unwrap();
        assert_eq!(r.status(), 200);
        r.json::<Value>().unwrap()
    };
    let alone = output_data(&post(
        &client,
        &request(&name, &shape, common::pattern(n, 1)),
    ));
    let alone_2 = output_data(&post(
        &client,
        &request(&name, &shape, common::pattern(n, 2)),
    ));

    let start = Instant::now();
    let results: Vec<Value> = std::thread::scope(|scope| {
        let threads: Vec<_> = (0..4u64)
            .map(|k| {
                let (client, name, mut shape, post) =
                    (client.clone(), name.clone(), shape.clone(), &post);
                scope.spawn(move || {
                    let body = match k {
                        3 => {
                            shape[0] = 2;
                            let mut data = common::pattern(n, 1);
                            data.extend(common::pattern(n, 2));
                            request(&name, &shape, data)
                        }
                        _ => request(&name, &shape, common::pattern(n, k + 1)),
                    };
                    post(&client, &body)
                })
            })
            .collect();
        threads.into_iter().map(|t| t.join().unwrap()).collect()
    });
    eprintln!(
        "4 concurrent requests (5 items) batched (wait up to 3 s, closes at 4 requests): {:.1} ms",
        start.elapsed().as_secs_f64() * 1e3
    );
    let close = |a: &[f32], b: &[f32]| {
        a.len() == b.len() && a.iter().zip(b).all(|(x, y)| (x - y).abs() <= 1e-4)
    };
    assert!(
        close(&output_data(&results[0]), &alone),
        "batched output differs from the same input alone"
    );
    assert!(
        close(&output_data(&results[1]), &alone_2),
        "batched output differs from the same input alone"
    );
    // The batch-of-2 request: its items are the two inputs above.
    assert_eq!(results[3]["outputs"][0]["shape"][0], 2);
    let two = output_data(&results[3]);
    assert!(close(&two[..alone.len()], &alone));
    assert!(close(&two[alone.len()..], &alone_2));
    assert_eq!(
        distinct_outputs,
        !close(&alone, &alone_2),
        "distinct inputs, distinct outputs: {alone:?} {alone_2:?}"
    );

    // A batch's time (dilu_worker_batch_seconds) is recorded after its last CPU charge, which follows the
    // answers, so the last batch may show a moment later: one scrape, once it is there, for every check below.
    let sample = |text: &str, part: &str, size: u32| -> Option<f64> {
        let prefix = format!("dilu_worker_batch_seconds_{part}{{batch_size=\"{size}\"}} ");
        text.lines()
            .find_map(|l| l.strip_prefix(prefix.as_str()))
            .and_then(|v| v.parse::<f64>().ok())
    };
    let deadline = Instant::now() + std::time::Duration::from_secs(5);
    let text = loop {
        let text = metrics_text(&client, &w);
        if sample(&text, "count", 4).is_some() || Instant::now() > deadline {
            break text;
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    };
    let batches = text
        .lines()
        .find(|l| l.starts_with("dilu_worker_batches_total "))
        .unwrap();
    let fours = text
        .lines()
        .find(|l| l.starts_with("dilu_worker_batch_size_bucket{le=\"2\"}"))
        .unwrap();
    // The two lone requests and one batch of four.
    assert!(batches.ends_with(" 3"), "{batches}\n{text}");
    assert!(fours.ends_with(" 2"), "{fours}\n{text}");
    // Their time by batch size (in requests): two of one, one of four, each taking some time.
    for (size, count) in [(1, 2.0), (4, 1.0)] {
        assert_eq!(
            sample(&text, "count", size),
            Some(count),
            "size {size}:\n{text}"
        );
        assert!(
            sample(&text, "sum", size).is_some_and(|s| s > 0.0),
            "size {size}:\n{text}"
        );
    }
}

#[test]
fn bad_requests_are_400_naming_the_input_and_rule() {
    let Some(w) = start(|_| {}) else { return };
    let client = Client::new();
    let meta = metadata(&client, &w);
    let (name, shape) = input_of(&meta, 1);
    let n: usize = shape.iter().product();
    let url = w.url(&format!("/v2/models/{NAME}/infer"));
    let post_raw = |body: &str| {
        let r = client
            .post(&url)
            .header("content-type", "application/json")
            .body(body.to_string())
            .send()
            .unwrap();
        (r.status().as_u16(), r.json::<Value>().unwrap())
    };
    let (status, body) = post_raw("{\"inputs\": [");
    assert_eq!(status, 400);
    assert!(
        body["error"].as_str().unwrap().contains("malformed"),
        "{body}"
    );
    let (status, body) = post_raw("{\"inputs\": [{\"name\": \"x\"}]}");
    assert_eq!(status, 400, "{body}");

    let mut wrong_shape = shape.clone();
    wrong_shape[2] += 1;
    let cases: Vec<(&str, Value, &str)> = vec![
        ("missing input", json!({"inputs": []}), "is missing"),
        (
            "unknown input",
            json!({"inputs": [
            {"name": name, "shape": shape, "datatype": "FP32", "data": vec![0.5; n]},
            {"name": "extra", "shape": [1], "datatype": "FP32", "data": [1.0]}]}),
            "unexpected input 'extra'",
        ),
        (
            "wrong datatype",
            json!({"inputs": [{"name": name, "shape": shape, "datatype": "INT64", "data": vec![1; n]}]}),
            "datatype 'INT64'",
        ),
        (
            "unknown datatype",
            json!({"inputs": [{"name": name, "shape": shape, "datatype": "FLOAT", "data": vec![1; n]}]}),
            "datatype 'FLOAT'",
        ),
        (
            "too few elements",
            request(&name, &shape, vec![0.5; n - 1]),
            "elements",
        ),
        (
            "too many elements",
            request(&name, &shape, vec![0.5; n + 1]),
            "elements",
        ),
        (
            "wrong shape",
            request(&name, &wrong_shape, vec![0.5; wrong_shape.iter().product()]),
            "model expects",
        ),
        (
            "wrong rank",
            request(&name, &[n], vec![0.5; n]),
            "model expects",
        ),
        (
            "zero batch",
            request(&name, &[0, shape[1], shape[2], shape[3]], vec![]),
            "batch size 0",
        ),
        (
            "not a number",
            json!({"inputs": [{"name": name, "shape": shape, "datatype": "FP32", "data": ["a"]}]}),
            "not a number",
        ),
        (
            "unknown output",
            json!({"inputs": [{"name": name, "shape": shape, "datatype": "FP32", "data": vec![0.5; n]}],
                                  "outputs": [{"name": "nope"}]}),
            "unknown output 'nope'",
        ),
    ];
    for (case, body, needle) in cases {
        let (status, resp) = infer(&client, &w, &body);
        assert_eq!(status, 400, "{case}: {resp}");
        let error = resp["error"]
            .as_str()
            .unwrap_or_else(|| panic!("{case}: no error string in {resp}"));
        assert!(error.contains(needle), "{case}: {error:?} lacks {needle:?}");
        if !matches!(case, "missing input" | "unknown input" | "unknown output") {
            assert!(
                error.contains(&format!("'{name}'")),
                "{case}: {error:?} does not name the input"
            );
        }
    }
}

/// Issue 14, defect 8: a request whose batch exceeds the worker's max_batch was served (64 items at max_batch
/// 8). It is refused with a 400 naming the input, the value and the rule; a batch of max_batch is served.
#[test]
fn a_request_batch_over_max_batch_is_400_naming_the_rule() {
    let Some(model) = common::ppocr_cls() else {
        return;
    };
    let mut config = WorkerConfig::new("ppocr-cls", model);
    config.input_shape = Some(vec![1, 3, 48, 192]);
    config.max_batch = 8;
    let w = Worker::start(config);
    let client = Client::new();
    let meta = metadata_of(&client, &w, "ppocr-cls");
    let url = w.url("/v2/models/ppocr-cls/infer");
    let post = |batch: usize| {
        let (name, shape) = input_of(&meta, batch);
        let n = shape.iter().product();
        let r = client
            .post(&url)
            .json(&request(&name, &shape, common::pattern(n, 3)))
            .send()
            .unwrap();
        (name, r.status().as_u16(), r.json::<Value>().unwrap())
    };
    let (name, status, body) = post(64);
    assert_eq!(status, 400, "{body}");
    let error = body["error"].as_str().unwrap();
    for needle in [&format!("'{name}'"), "64", "max_batch", "1..=8"] {
        assert!(error.contains(needle), "{error:?} lacks {needle:?}");
    }
    let (_, status, body) = post(8);
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["outputs"][0]["shape"][0], 8, "{body}");
}

#[test]
fn oversized_body_is_413() {
    // A limit and a body small enough to fit in the socket buffers, so the client finishes sending before the
    // server answers and closes (a multi-megabyte body can race the 413 and see a reset instead).
    let Some(w) = start(|c| c.max_body_bytes = 64 << 10) else {
        return;
    };
    let client = Client::new();
    let body = format!(
        "{{\"inputs\": [{{\"name\": \"x\", \"shape\": [1], \"datatype\": \"FP32\", \"data\": [{}0]}}]}}",
        "0,".repeat(50_000)
    );
    let r = client
        .post(w.url(&format!("/v2/models/{NAME}/infer")))
        .header("content-type", "application/json")
        .body(body)
        .send();
    match r {
        Ok(r) => {
            assert_eq!(r.status(), 413);
            let body: Value = r.json().unwrap();
            assert!(body["error"].as_str().unwrap().contains("limit"), "{body}");
        }
        // The server may close the connection before the client finished sending.
        Err(e) => panic!("no response to an oversized body: {e}"),
    }
    // The worker still serves afterwards.
    assert_eq!(
        client
            .get(w.url("/v2/health/ready"))
            .send()
            .unwrap()
            .status(),
        200
    );
    let _ = Duration::ZERO;
}

#[test]
fn a_fixed_batch_model_runs_a_batch_one_by_one() {
    let Some(model) = common::cached("onnx-light/light_resnet50.onnx") else {
        return;
    };
    let mut config = WorkerConfig::new("resnet50", model);
    config.max_batch = 4;
    config.fixed_wait_us = Some(1_500_000);
    let w = Worker::start(config);
    let client = Client::new();
    let meta = metadata_of(&client, &w, "resnet50");
    // ONNX's light ResNet-50 reshapes to a literal [1, 2048]: its batch is fixed at 1.
    assert_eq!(meta["inputs"][0]["shape"][0], 1, "{meta}");
    let (name, shape) = input_of(&meta, 1);
    let n: usize = shape.iter().product();
    let url = w.url("/v2/models/resnet50/infer");
    let results: Vec<Value> = std::thread::scope(|scope| {
        let threads: Vec<_> = (0..3)
            .map(|_| {
                let (client, url, name, shape) =
                    (client.clone(), &url, name.clone(), shape.clone());
                scope.spawn(move || {
                    let r = client
                        .post(url)
                        .json(&request(&name, &shape, vec![0.5; n]))
                        .send()
                        .unwrap();
                    assert_eq!(r.status(), 200);
                    r.json::<Value>().unwrap()
                })
            })
            .collect();
        threads.into_iter().map(|t| t.join().unwrap()).collect()
    });
    for r in &results {
        assert_eq!(r["outputs"][0]["shape"][0], 1, "{r}");
        assert_eq!(output_data(r), output_data(&results[0]));
    }
    let text = metrics_text(&client, &w);
    assert!(
        text.lines().any(|l| l == "dilu_worker_batches_total 1"),
        "{text}"
    );
    let mut two = shape.clone();
    two[0] = 2;
    let r = client
        .post(&url)
        .json(&request(&name, &two, vec![0.5; 2 * n]))
        .send()
        .unwrap();
    assert_eq!(r.status(), 400);
    assert!(
        r.json::<Value>().unwrap()["error"]
            .as_str()
            .unwrap()
            .contains("model expects [1,")
    );
}

/// Posts a binary-extension body: `json` followed by `binary`, with the header giving the JSON's length.
fn post_binary(
    client: &Client,
    w: &Worker,
    json: &Value,
    binary: &[u8],
) -> reqwest::blocking::Response {
    let header = serde_json::to_vec(json).unwrap();
    let mut body = header.clone();
    body.extend_from_slice(binary);
    client
        .post(w.url(&format!("/v2/models/{NAME}/infer")))
        .header("content-type", "application/octet-stream")
        .header("inference-header-content-length", header.len().to_string())
        .body(body)
        .send()
        .unwrap()
}

fn le_bytes(v: &[f32]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

#[test]
fn binary_tensors_in_and_out_match_the_json_answer() {
    let Some(w) = start(|_| {}) else { return };
    let client = Client::new();
    let meta = metadata(&client, &w);
    let (name, shape) = input_of(&meta, 2);
    let output = meta["outputs"][0]["name"].as_str().unwrap().to_string();
    let n: usize = shape.iter().product();
    let data = common::pattern(n, 3);
    let (status, reference) = infer(&client, &w, &request(&name, &shape, data.clone()));
    assert_eq!(status, 200, "{reference}");
    let expected = output_data(&reference);

    // Binary input, binary output asked per output.
    let header = json!({"id": "b", "inputs": [{"name": name, "shape": shape, "datatype": "FP32",
        "parameters": {"binary_data_size": n * 4}}],
        "outputs": [{"name": output, "parameters": {"binary_data": true}}]});
    let r = post_binary(&client, &w, &header, &le_bytes(&data));
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["content-type"], "application/octet-stream");
    let json_len: usize = r.headers()["inference-header-content-length"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    let body = r.bytes().unwrap();
    let head: Value = serde_json::from_slice(&body[..json_len]).unwrap();
    let out = &head["outputs"][0];
    assert_eq!(head["id"], "b");
    assert!(
        out.get("data").is_none(),
        "binary output has no data: {head}"
    );
    let size = out["parameters"]["binary_data_size"].as_u64().unwrap() as usize;
    assert_eq!(size, expected.len() * 4);
    assert_eq!(body.len(), json_len + size);
    let got: Vec<f32> = body[json_len..]
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
        .collect();
    // Same model, same input: bit-identical to the JSON path's answer (which is printed exactly as an f32).
    assert_eq!(got, expected);
    assert_eq!(out["shape"], reference["outputs"][0]["shape"]);

    // Binary input, JSON output (no output parameters): a plain JSON response.
    let header = json!({"inputs": [{"name": name, "shape": shape, "datatype": "FP32",
        "parameters": {"binary_data_size": n * 4}}]});
    let r = post_binary(&client, &w, &header, &le_bytes(&data));
    assert_eq!(r.status(), 200);
    assert!(r.headers().get("inference-header-content-length").is_none());
    let plain: Value = r.json().unwrap();
    assert_eq!(output_data(&plain), expected);

    // JSON input, every output binary through the request parameter.
    let mut body = request(&name, &shape, data.clone());
    body["parameters"] = json!({"binary_data_output": true});
    let r = client
        .post(w.url(&format!("/v2/models/{NAME}/infer")))
        .json(&body)
        .send()
        .unwrap();
    assert_eq!(r.status(), 200);
    assert!(r.headers().get("inference-header-content-length").is_some());
}

#[test]
fn bad_binary_requests_are_refused_naming_the_rule() {
    let Some(w) = start(|_| {}) else { return };
    let client = Client::new();
    let meta = metadata(&client, &w);
    let (name, shape) = input_of(&meta, 1);
    let n: usize = shape.iter().product();
    let bytes = le_bytes(&vec![0.5; n]);
    let input = |params: Value| json!({"inputs": [{"name": name, "shape": shape, "datatype": "FP32", "parameters": params}]});
    let cases: Vec<(&str, Value, Vec<u8>, &str)> = vec![
        (
            "size past the end",
            input(json!({"binary_data_size": n * 4 + 4})),
            bytes.clone(),
            "bytes of binary data remain",
        ),
        (
            "bytes left over",
            input(json!({"binary_data_size": n * 4 - 4})),
            bytes.clone(),
            "add up to",
        ),
        (
            "negative size",
            input(json!({"binary_data_size": -4})),
            bytes.clone(),
            "non-negative integer",
        ),
        (
            "partial element",
            input(json!({"binary_data_size": 6})),
            bytes[..6].to_vec(),
            "whole number",
        ),
        (
            "both data and binary",
            json!({"inputs": [{"name": name, "shape": shape, "datatype": "FP32",
                "parameters": {"binary_data_size": n * 4}, "data": vec![0.5; n]}]}),
            bytes.clone(),
            "both data and binary_data_size",
        ),
        (
            "output binary_data not a bool",
            json!({"inputs": [{"name": name, "shape": shape, "datatype": "FP32",
                "parameters": {"binary_data_size": n * 4}}],
                "outputs": [{"name": meta["outputs"][0]["name"], "parameters": {"binary_data": "yes"}}]}),
            bytes.clone(),
            "must be true or false",
        ),
        (
            "classification",
            json!({"inputs": [{"name": name, "shape": shape, "datatype": "FP32",
                "parameters": {"binary_data_size": n * 4}}],
                "outputs": [{"name": meta["outputs"][0]["name"], "parameters": {"classification": 3}}]}),
            bytes.clone(),
            "classification extension",
        ),
    ];
    for (case, head, binary, needle) in cases {
        let r = post_binary(&client, &w, &head, &binary);
        let status = r.status().as_u16();
        let body: Value = r.json().unwrap();
        assert_eq!(status, 400, "{case}: {body}");
        let error = body["error"].as_str().unwrap();
        assert!(error.contains(needle), "{case}: {error:?} lacks {needle:?}");
    }
    let url = w.url(&format!("/v2/models/{NAME}/infer"));
    // A header length past the body.
    let r = client
        .post(&url)
        .header("inference-header-content-length", "999999")
        .body("{}")
        .send()
        .unwrap();
    assert_eq!(r.status(), 400);
    let body: Value = r.json().unwrap();
    assert!(
        body["error"]
            .as_str()
            .unwrap()
            .contains("Inference-Header-Content-Length"),
        "{body}"
    );
    // A compressed body is refused, not misread.
    let r = client
        .post(&url)
        .header("content-encoding", "gzip")
        .body(vec![0x1f, 0x8b, 0, 0])
        .send()
        .unwrap();
    assert_eq!(r.status(), 415);
    let body: Value = r.json().unwrap();
    assert!(body["error"].as_str().unwrap().contains("gzip"), "{body}");
}
