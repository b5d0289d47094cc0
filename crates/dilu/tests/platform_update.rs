//! Updating a function's model under load is a rolling replacement: the old instance serves until a new one
//! is ready, then drains, so no request fails. An update to a model that cannot load leaves the old instance
//! serving and says why in the function's view, also across a restart of `dilu up`; with no room for old and
//! new together, the old instances are retired first.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::time::{Duration, Instant};

use common::platform::{UpProc, argmax, ensure_models, output_data};
use common::{AgentProc, alive};
use reqwest::Method;
use serde_json::Value;

fn spec(model: &std::path::Path) -> String {
    format!(
        "name: ocr\nmodel: {{path: {}, input_shape: [1, 3, 48, 192]}}\nslo_ms: 500\n\
         quota: {{request: 0.2, limit: 0.5}}\nscaling: {{min_instances: 1, max_instances: 1, capacity_rps: 20}}\n",
        model.display()
    )
}

fn put(up: &UpProc, yaml: String) -> Value {
    let (s, b) = up.call(
        Method::PUT,
        "/v1/functions/ocr",
        Some(("application/yaml", yaml.into_bytes())),
        true,
    );
    assert_eq!(s, 200, "{b}");
    b
}

/// Sends the upright text at about 20 requests/s until stopped; counts answers that are not a correct 200.
struct Load {
    stop: Arc<AtomicBool>,
    sent: Arc<AtomicU64>,
    failed: Arc<AtomicU64>,
    slowest_ms: Arc<AtomicU64>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Load {
    fn start(url: String, body: Vec<u8>) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let (sent, failed, slowest_ms) = (
            Arc::new(AtomicU64::new(0)),
            Arc::new(AtomicU64::new(0)),
            Arc::new(AtomicU64::new(0)),
        );
        let (s, n, f, w) = (
            stop.clone(),
            sent.clone(),
            failed.clone(),
            slowest_ms.clone(),
        );
        let thread = std::thread::spawn(move || {
            let client = reqwest::blocking::Client::builder()
                .no_proxy()
                .timeout(Duration::from_secs(30))
                .build()
                .unwrap();
            while !s.load(Relaxed) {
                let started = Instant::now();
                n.fetch_add(1, Relaxed);
                let ok = client
                    .post(format!("{url}/v2/models/ocr/infer"))
                    .header("content-type", "application/json")
                    .body(body.clone())
                    .send()
                    .ok()
                    .filter(|r| r.status() == 200)
                    .and_then(|r| r.json::<Value>().ok())
                    .is_some_and(|v| argmax(&output_data(&v)) == 0);
                if !ok {
                    f.fetch_add(1, Relaxed);
                }
                w.fetch_max(started.elapsed().as_millis() as u64, Relaxed);
                std::thread::sleep(Duration::from_millis(50));
            }
        });
        Load {
            stop,
            sent,
            failed,
            slowest_ms,
            thread: Some(thread),
        }
    }

    /// Stops the load; returns (sent, failed, slowest ms).
    fn finish(mut self) -> (u64, u64, u64) {
        self.stop.store(true, Relaxed);
        if let Some(t) = self.thread.take() {
            t.join().unwrap();
        }
        (
            self.sent.load(Relaxed),
            self.failed.load(Relaxed),
            self.slowest_ms.load(Relaxed),
        )
    }
}

fn instance_pids(up: &UpProc) -> Vec<(String, u32)> {
    AgentProc::recorded(&up.data_dir.join("agent"))
}

#[test]
fn a_model_update_rolls_without_failing_a_request() {
    let Some(cache) = ensure_models() else { return };
    let dir = tempfile::tempdir().unwrap();
    let original = cache.join("ppocr/ch_ppocr_mobile_v2.0_cls_infer.onnx");
    // "Version 2" of the model: the same weights under a new path, which the spec treats as a new model.
    let v2 = dir.path().join("cls-v2.onnx");
    std::fs::copy(&original, &v2).unwrap();
    let broken = dir.path().join("cls-broken.onnx");
    std::fs::write(&broken, b"this is not an ONNX model").unwrap();
    let upright = std::fs::read(cache.join("inputs/text-upright.json")).unwrap();

    let mut up = UpProc::start(&dir.path().join("data"), &["--cpu-cores", "2"]);
    let (s, b) = up.deploy_yaml(&spec(&original));
    assert_eq!(s, 201, "{b}");
    let before = up.wait_running("ocr", 1, Duration::from_secs(60));
    let old_id = before["instances"][0]["id"].as_str().unwrap().to_string();
    let old_pid = instance_pids(&up)
        .into_iter()
        .find(|(id, _)| *id == old_id)
        .unwrap()
        .1;

    // Roll to v2 under load.
    let load = Load::start(up.url.clone(), upright.clone());
    std::thread::sleep(Duration::from_millis(500));
    let started = Instant::now();
    let view = put(&up, spec(&v2));
    assert_eq!(view["generation"], 2);
    let rolled = common::wait_for(Duration::from_secs(60), || {
        let (_, v) = up.get("/v1/functions/ocr");
        let instances = v["instances"].as_array()?;
        (instances.len() == 1
            && instances[0]["id"] != old_id.as_str()
            && instances[0]["ready"] == true
            && instances[0]["outdated"] == false)
            .then_some(v)
    })
    .expect("the update finished: one new instance, the old one gone");
    let rolled_in = started.elapsed();
    std::thread::sleep(Duration::from_millis(500));
    let (sent, failed, slowest) = load.finish();
    assert!(sent >= 20, "load ran: {sent} requests");
    assert_eq!(
        failed, 0,
        "{failed} of {sent} requests failed during the roll"
    );
    assert!(!alive(old_pid), "the old instance's process stopped");
    assert_eq!(rolled["spec"]["model"]["path"], v2.display().to_string());
    println!(
        "rolling update: new instance serving alone {:.0} ms after the PUT; {sent} requests, 0 failed, slowest {slowest} ms",
        rolled_in.as_secs_f64() * 1000.0
    );

    // An update to a model that cannot load: the v2 instance keeps serving, the view says why.
    let serving_id = rolled["instances"][0]["id"].as_str().unwrap().to_string();
    let load = Load::start(up.url.clone(), upright);
    put(&up, spec(&broken));
    let failing = common::wait_for(Duration::from_secs(30), || {
        let (_, v) = up.get("/v1/functions/ocr");
        v["last_error"].as_str().is_some().then_some(v)
    });
    std::thread::sleep(Duration::from_secs(2));
    let (sent, failed, _) = load.finish();
    let (_, view) = up.get("/v1/functions/ocr");
    let still = view["instances"]
        .as_array()
        .unwrap()
        .iter()
        .find(|i| i["id"] == serving_id.as_str())
        .cloned()
        .unwrap_or_else(|| panic!("the serving instance was kept: {view:#}"));
    assert_eq!(still["outdated"], true, "{view:#}");
    assert_eq!(still["draining"], false, "{view:#}");
    assert_eq!(
        failed, 0,
        "{failed} of {sent} requests failed after a bad update"
    );
    let error = failing
        .as_ref()
        .and_then(|v| v["last_error"].as_str())
        .expect("the view says why the new instance does not serve")
        .to_string();
    assert!(
        error.contains("cls-broken.onnx") && error.contains("exited"),
        "{error}"
    );
    println!(
        "bad update: {sent} requests, 0 failed; the old instance still serves; last error: {error}"
    );

    // Killed in the middle of that roll: the next start adopts the old instance, still outdated and serving.
    up.kill9();
    let up = UpProc::start(&dir.path().join("data"), &["--cpu-cores", "2"]);
    let adopted = common::wait_for(Duration::from_secs(30), || {
        let (_, v) = up.get("/v1/functions/ocr");
        let kept = v["instances"]
            .as_array()?
            .iter()
            .find(|i| i["id"] == serving_id.as_str() && i["ready"] == true)?
            .clone();
        Some(kept)
    })
    .expect("the old instance is adopted after the restart");
    assert_eq!(adopted["outdated"], true, "{adopted}");
    let (s, r) = up.infer(
        "ocr",
        &std::fs::read(cache.join("inputs/text-upright.json")).unwrap(),
    );
    assert_eq!((s, argmax(&output_data(&r))), (200, 0), "{r}");

    // A fixed model ("version 3") that needs more of the device than is left beside the old instances: they
    // are retired first (recreate), and the function serves again from one new instance. (Going back to
    // version 2 itself would reuse the instance that runs it, as a Deployment's rollback reuses its pods.)
    let v3 = dir.path().join("cls-v3.onnx");
    std::fs::copy(&original, &v3).unwrap();
    let big = spec(&v3).replace("request: 0.2, limit: 0.5", "request: 0.7, limit: 0.9");
    let started = Instant::now();
    put(&up, big);
    let recreated = up.wait_running("ocr", 1, Duration::from_secs(60));
    let replaced_in = started.elapsed();
    let instances = recreated["instances"].as_array().unwrap();
    assert!(
        instances.iter().all(|i| i["id"] != serving_id.as_str()),
        "{recreated:#}"
    );
    let (s, r) = up.infer(
        "ocr",
        &std::fs::read(cache.join("inputs/text-upright.json")).unwrap(),
    );
    assert_eq!((s, argmax(&output_data(&r))), (200, 0), "{r}");
    let (_, devices) = up.get("/v1/devices");
    let quotas: Vec<f64> = devices["devices"][0]["instances"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|i| i["quota"]["request"].as_f64())
        .collect();
    assert_eq!(
        quotas,
        vec![0.7],
        "only the new instance holds the device: {devices:#}"
    );
    println!(
        "no room to roll: old instances retired first; serving again {:.0} ms after the PUT",
        replaced_in.as_secs_f64() * 1000.0
    );
}
