//! `runtime: process` under `dilu up` on the CPU device: a user's server process deployed from a spec, profiled
//! with the spec's sample request and served through the gateway; and bad process specs, each refused with its
//! field or failed with its cause, while a healthy function beside them keeps serving.

mod common;

use std::path::Path;
use std::time::{Duration, Instant};

use common::platform::UpProc;
use common::{DOUBLER, DOUBLER_SAMPLE as SAMPLE};

fn python() -> String {
    std::env::var("DILU_PYTHON").unwrap_or_else(|_| "python3".into())
}

fn write_doubler(dir: &Path) {
    std::fs::write(dir.join("doubler.py"), DOUBLER).unwrap();
}

/// A process function running the doubler from `dir`, profiled (no quota) with the sample.
fn doubler_spec(name: &str, dir: &Path) -> String {
    format!(
        "name: {name}\nkind: inference\nruntime: process\nprocess:\n  command: [{py}, doubler.py]\n  \
         workdir: {dir}\n  max_batch: 4\n  sample: {SAMPLE}\nslo_ms: 500\n\
         scaling: {{min_instances: 1, max_instances: 1}}\n",
        py = python(),
        dir = dir.display()
    )
}

/// Waits until `function` has failed, and returns its reason.
fn wait_failed(up: &UpProc, function: &str, timeout: Duration) -> String {
    let deadline = Instant::now() + timeout;
    loop {
        let (_, view) = up.get(&format!("/v1/functions/{function}"));
        if view["status"]["phase"] == "failed" {
            return view["status"]["reason"]
                .as_str()
                .unwrap_or_default()
                .to_string();
        }
        assert!(
            Instant::now() < deadline,
            "{function} did not fail in {timeout:?}: {view:#}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn doubled(up: &UpProc, function: &str) -> Vec<f64> {
    let (status, body) = up.infer(function, SAMPLE.as_bytes());
    assert_eq!(status, 200, "{body}");
    body["outputs"][0]["data"]
        .as_array()
        .unwrap_or_else(|| panic!("{body}"))
        .iter()
        .map(|v| v.as_f64().unwrap())
        .collect()
}

#[test]
fn a_process_function_is_profiled_with_its_sample_and_serves_v2_through_the_gateway() {
    let dir = tempfile::tempdir().unwrap();
    write_doubler(dir.path());
    let up = UpProc::start(&dir.path().join("data"), &[]);
    let (status, body) = up.deploy_yaml(&doubler_spec("doubler", dir.path()));
    assert_eq!(status, 201, "{body}");
    let view = up.wait_running("doubler", 1, Duration::from_secs(120));
    // Profiled live with the sample (no quota in the spec): a search over batch and share (HGS).
    let profile = &view["profile"];
    assert_eq!(profile["source"], "hgs", "{view:#}");
    assert!(profile["measurements"].as_u64().unwrap() >= 2, "{view:#}");
    assert!(profile["capacity_rps"].as_f64().unwrap() > 0.0, "{view:#}");
    assert_eq!(doubled(&up, "doubler"), [2.0, 4.0, 6.0, 8.0]);
    // A process does not charge its CPU time itself: the agent holds it in a CPU cgroup and charges its channel
    // with what the group used (the interpreter's start-up at least), where this machine allows cgroups.
    let (_, nodes) = up.get("/v1/nodes");
    let held = nodes["nodes"][0]["notes"]
        .as_array()
        .unwrap()
        .iter()
        .any(|n| {
            n.as_str()
                .unwrap()
                .contains("held to their budgets by CPU cgroups")
        });
    let (_, list) = up.get("/v1/instances");
    let instance = list["instances"]
        .as_array()
        .unwrap()
        .iter()
        .find(|i| i["function"] == "doubler")
        .unwrap_or_else(|| panic!("{list:#}"));
    if held {
        assert_eq!(instance["enforcement"], "cgroup", "{instance:#}");
        assert!(
            instance["counters"]["cost"].as_u64().unwrap() > 0,
            "{instance:#}"
        );
    } else {
        eprintln!("no CPU cgroups here ({nodes}): the process runs unthrottled");
        assert_eq!(instance["enforcement"], "none", "{instance:#}");
    }
}

#[test]
fn bad_process_specs_are_refused_or_fail_with_their_cause_and_disturb_nothing() {
    let dir = tempfile::tempdir().unwrap();
    write_doubler(dir.path());
    let up = UpProc::start(&dir.path().join("data"), &[]);
    let (status, body) = up.deploy_yaml(&doubler_spec("healthy", dir.path()));
    assert_eq!(status, 201, "{body}");
    up.wait_running("healthy", 1, Duration::from_secs(120));

    // Refused at deploy, naming the field.
    let head = "kind: inference\nruntime: process\nslo_ms: 100\n";
    let refusals = [
        (
            format!("name: a\n{head}"),
            "process",
            "needs a process section",
        ),
        (
            format!("name: a\n{head}process: {{command: []}}\n"),
            "process.command",
            "must name a program",
        ),
        (
            format!("name: a\n{head}process: {{command: [no-such-program-dilu]}}\n"),
            "process.command[0]",
            "no such program on the node's PATH",
        ),
        (
            format!("name: a\n{head}process: {{command: [./missing.sh], workdir: /}}\n"),
            "process.command[0]",
            "is not an executable file on the node",
        ),
        (
            format!("name: a\n{head}process: {{command: [sh], workdir: /no/such/dir}}\n"),
            "process.workdir",
            "no such directory",
        ),
        (
            format!("name: a\n{head}process: {{command: [sh], env: {{PORT: '1'}}}}\n"),
            "process.env.PORT",
            "set by the platform",
        ),
    ];
    for (spec, field, rule) in refusals {
        let (status, body) = up.deploy_yaml(&spec);
        assert_eq!(status, 400, "{spec}: {body}");
        let error = body["error"].as_str().unwrap_or_default();
        assert!(
            error.starts_with(&format!("{field} ")) && error.contains(rule),
            "{spec}: {error}"
        );
    }

    // Accepted, then failed with the cause in words.
    let failing = [
        (
            "exits",
            "command: [sh, -c, 'echo model weights missing >&2; exit 3']".to_string(),
            vec![
                "exited before it was ready (exit code 3)",
                "model weights missing",
            ],
        ),
        (
            "no-port",
            "command: [sleep, '600']\n  ready_timeout_s: 3".to_string(),
            vec![
                "was not ready within 3s",
                "connection refused (nothing listens on port",
            ],
        ),
        (
            "no-readiness",
            format!(
                "command: [{}, -m, http.server, --bind, 127.0.0.1, $PORT]\n  ready_timeout_s: 3",
                python()
            ),
            vec![
                "was not ready within 3s",
                "GET /v2/health/ready answered 404 File not found",
            ],
        ),
    ];
    for (name, process, _) in &failing {
        let spec = format!("name: {name}\n{head}process:\n  {process}\n  workdir: /tmp\n");
        let (status, body) = up.deploy_yaml(&spec);
        assert_eq!(status, 201, "{spec}: {body}");
    }
    for (name, _, causes) in &failing {
        let reason = wait_failed(&up, name, Duration::from_secs(60));
        for cause in causes {
            assert!(reason.contains(cause), "{name}: {reason:?} lacks {cause:?}");
        }
        eprintln!("{name}: {reason}");
    }
    // The healthy function served all along, and still does.
    assert_eq!(doubled(&up, "healthy"), [2.0, 4.0, 6.0, 8.0]);
    let (_, view) = up.get("/v1/functions/healthy");
    assert_eq!(view["status"]["phase"], "running", "{view:#}");
    assert!(view["last_error"].is_null(), "{view:#}");
}

/// `model.engine: onnxruntime` under `dilu up`: the worker is started with `--engine onnxruntime` and finds
/// ONNX Runtime through `ORT_DYLIB_PATH`, which instances inherit; PaddleOCR's classifier answers as with tract.
#[test]
fn an_onnxruntime_function_serves_under_dilu_up() {
    let Some(cache) = common::platform::ensure_models() else {
        return;
    };
    let library = std::fs::read_dir(cache.join("onnxruntime"))
        .ok()
        .and_then(|mut d| d.next())
        .and_then(|e| e.ok())
        .map(|e| e.path());
    let Some(library) = library else {
        assert_ne!(
            std::env::var("CI").as_deref(),
            Ok("true"),
            "ONNX Runtime missing from the model cache"
        );
        eprintln!("SKIPPED: no ONNX Runtime in {}", cache.display());
        return;
    };
    // SAFETY (test only): set before any thread is started; `dilu up` inherits it.
    unsafe { std::env::set_var("ORT_DYLIB_PATH", &library) };
    let dir = tempfile::tempdir().unwrap();
    let up = UpProc::start(&dir.path().join("data"), &[]);
    let spec = format!(
        "name: cls-ort\nmodel: {{path: {}, input_shape: [1, 3, 48, 192], max_batch: 4, engine: onnxruntime}}\n\
         slo_ms: 500\nquota: {{request: 0.3, limit: 0.6}}\nscaling: {{max_instances: 1, capacity_rps: 20}}\n",
        cache
            .join("ppocr/ch_ppocr_mobile_v2.0_cls_infer.onnx")
            .display()
    );
    let (status, body) = up.deploy_yaml(&spec);
    assert_eq!(status, 201, "{body}");
    up.wait_running("cls-ort", 1, Duration::from_secs(60));
    for (input, class) in [("text-upright.json", 0), ("text-flipped.json", 1)] {
        let request = std::fs::read(cache.join("inputs").join(input)).unwrap();
        let (status, body) = up.infer("cls-ort", &request);
        assert_eq!(status, 200, "{body}");
        let scores: Vec<f64> = body["outputs"][0]["data"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_f64().unwrap())
            .collect();
        let top = (0..scores.len())
            .max_by(|a, b| scores[*a].total_cmp(&scores[*b]))
            .unwrap();
        assert_eq!(top, class, "{input}: {scores:?}");
    }
}
