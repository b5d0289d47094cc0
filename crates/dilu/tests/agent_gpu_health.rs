//! GPUs found through NVML, and their health, end to end: `dilu agent` loads the software NVML
//! (`dilu-cuda-testkit`'s `libnvidia-ml.so.1`) as it loads the real one, discovers its devices, and follows
//! what the test makes the "driver" report: application Xids change nothing, a critical Xid makes a device
//! unhealthy for good, a device that falls off the bus is unhealthy until it answers again (also one that
//! cannot report events). An unhealthy device gets no instance, and `/devices` and `/metrics` say why; under
//! `dilu up`, `/v1/devices` and `dilu status` too.

mod common;

use std::ffi::OsStr;
use std::io::Write;
use std::path::Path;
use std::time::Duration;

use common::platform::UpProc;
use common::{AgentProc, dilu_bin, wait_for};
use dilu_cuda_testkit::{NVML_ENV_CONTROL, NVML_ENV_DEVICES, artifacts};
use serde_json::{Value, json};

const A: &str = "GPU-0000aaaa-0000-0000-0000-000000000001";
const B: &str = "GPU-0000bbbb-0000-0000-0000-000000000002";
const C: &str = "GPU-0000cccc-0000-0000-0000-000000000003";

fn say(control: &Path, line: &str) {
    let mut file = std::fs::OpenOptions::new()
        .append(true)
        .create(true)
        .open(control)
        .unwrap();
    writeln!(file, "{line}").unwrap();
}

fn device<'a>(devices: &'a Value, uuid: &str) -> &'a Value {
    devices["devices"]
        .as_array()
        .unwrap()
        .iter()
        .find(|d| d["device"]["uuid"] == uuid)
        .unwrap_or_else(|| panic!("{uuid} not in {devices}"))
}

fn healthy(agent: &AgentProc, uuid: &str) -> bool {
    let (status, devices) = agent.get("/devices");
    assert_eq!(status, 200, "{devices}");
    device(&devices, uuid)["healthy"].as_bool().unwrap()
}

fn until_health(agent: &AgentProc, uuid: &str, want: bool) {
    wait_for(Duration::from_secs(20), || {
        (healthy(agent, uuid) == want).then_some(())
    })
    .unwrap_or_else(|| panic!("{uuid} never became healthy = {want}"));
}

#[test]
fn nvml_gpus_are_discovered_and_their_health_followed() {
    let dir = tempfile::tempdir().unwrap();
    let control = dir.path().join("nvml-control");
    std::fs::write(&control, "").unwrap();
    let nvml = artifacts().nvml();
    let devices = format!(
        "{A},NVIDIA H100 80GB HBM3,81559,132;{B},NVIDIA H100 80GB HBM3,81559,132;{C},Tesla T4,15360,40,noevents"
    );
    let agent = AgentProc::start_with_env(
        &dir.path().join("agent"),
        &["--cpu-cores", "1", "--gpu-health-check-s", "0.2"],
        &[
            ("DILU_NVML_LIBRARY", nvml.as_os_str()),
            (NVML_ENV_DEVICES, OsStr::new(&devices)),
            (NVML_ENV_CONTROL, control.as_os_str()),
        ],
    );

    // Discovery through NVML: names, memory and SMs as the library reports them, all healthy.
    let (_, listed) = agent.get("/devices");
    let a = device(&listed, A);
    assert_eq!(a["device"]["source"], "nvml", "{a}");
    assert_eq!(a["device"]["name"], "NVIDIA H100 80GB HBM3");
    assert_eq!(a["device"]["memory_bytes"], 81559u64 << 20);
    assert_eq!(a["device"]["sm_count"], 132);
    assert_eq!(device(&listed, C)["device"]["sm_count"], 40);
    for uuid in [A, B, C] {
        assert_eq!(device(&listed, uuid)["healthy"], true, "{listed}");
    }
    let notes = listed["notes"].to_string();
    assert!(
        notes.contains(&format!("{C} does not report Xid events")),
        "{notes}"
    );

    // Xids that report the application's fault change nothing.
    say(&control, &format!("xid {A} 13"));
    say(&control, &format!("xid {A} 31"));
    say(&control, &format!("xid {A} 43"));
    std::thread::sleep(Duration::from_millis(800));
    assert!(healthy(&agent, A));

    // A critical one (79: fallen off the bus) makes A unhealthy, with the reason in /devices and /metrics.
    say(&control, &format!("xid {A} 79"));
    until_health(&agent, A, false);
    let (_, listed) = agent.get("/devices");
    let a = device(&listed, A);
    assert_eq!(a["health"], json!({"state": "failed", "xid": 79}), "{a}");
    assert!(
        a["health_reason"]
            .as_str()
            .unwrap()
            .contains("critical Xid 79"),
        "{a}"
    );
    assert!(healthy(&agent, B), "only A's event");
    let (_, metrics) = agent.get("/metrics");
    let metrics = metrics.as_str().unwrap();
    assert!(
        metrics.contains(&format!("dilu_agent_device_healthy{{device=\"{A}\"}} 0")),
        "{metrics}"
    );
    assert!(
        metrics.contains(&format!("dilu_agent_device_healthy{{device=\"{B}\"}} 1")),
        "{metrics}"
    );

    // No instance on it: the refusal names the device and why.
    let spec = |device: &str| json!({"command": ["sleep", "30"], "device": device, "quota": {"request": 0.1, "limit": 0.1}});
    let (status, body) = agent.post("/instances", spec(A));
    assert_eq!(status, 400, "{body}");
    assert_eq!(body["field"], "device", "{body}");
    assert_eq!(body["value"], A, "{body}");
    assert!(
        body["rule"].as_str().unwrap().contains("unhealthy")
            && body["rule"].as_str().unwrap().contains("Xid 79"),
        "{body}"
    );
    // A healthy GPU gets past the health check to the next rule (this agent has no interposer).
    let (status, body) = agent.post("/instances", spec(B));
    assert_eq!(status, 400, "{body}");
    assert!(
        body["rule"].as_str().unwrap().contains("interposer"),
        "{body}"
    );

    // Falling off the bus and coming back: B (events) and C (no events: found by the periodic check).
    for uuid in [B, C] {
        say(&control, &format!("lost {uuid}"));
        until_health(&agent, uuid, false);
        let (_, listed) = agent.get("/devices");
        assert_eq!(device(&listed, uuid)["health"]["state"], "unreachable");
        assert!(
            device(&listed, uuid)["health_reason"]
                .as_str()
                .unwrap()
                .contains("GPU is lost"),
            "{listed}"
        );
        say(&control, &format!("back {uuid}"));
        until_health(&agent, uuid, true);
    }
    // A critical Xid is for good: A answering does not make it healthy.
    say(&control, &format!("lost {A}"));
    say(&control, &format!("back {A}"));
    std::thread::sleep(Duration::from_millis(800));
    assert!(!healthy(&agent, A));
}

#[test]
fn health_watching_can_be_turned_off_and_xids_chosen() {
    let dir = tempfile::tempdir().unwrap();
    let control = dir.path().join("nvml-control");
    std::fs::write(&control, "").unwrap();
    let nvml = artifacts().nvml();
    let devices = format!("{A},NVIDIA H100 80GB HBM3,81559,132");
    let env = [
        ("DILU_NVML_LIBRARY", nvml.as_os_str()),
        (NVML_ENV_DEVICES, OsStr::new(&devices)),
        (NVML_ENV_CONTROL, control.as_os_str()),
    ];
    // 79 ignored: only 13 counts.
    let agent = AgentProc::start_with_env(
        &dir.path().join("a1"),
        &[
            "--cpu-cores",
            "1",
            "--gpu-health-check-s",
            "0.2",
            "--gpu-health-ignore-xids",
            "79",
        ],
        &env,
    );
    say(&control, &format!("xid {A} 79"));
    std::thread::sleep(Duration::from_millis(800));
    assert!(healthy(&agent, A));
    say(&control, &format!("xid {A} 13"));
    until_health(&agent, A, false);
    drop(agent);

    // Off: nothing is watched; the GPU is still discovered.
    std::fs::write(&control, "").unwrap();
    let agent = AgentProc::start_with_env(
        &dir.path().join("a2"),
        &["--cpu-cores", "1", "--no-gpu-health"],
        &env,
    );
    say(&control, &format!("xid {A} 79"));
    std::thread::sleep(Duration::from_millis(800));
    assert!(healthy(&agent, A));

    drop(agent);

    // A driver that is not loaded: no GPU, the reason in the notes, the CPU device still there.
    let agent = AgentProc::start_with_env(
        &dir.path().join("a3"),
        &["--cpu-cores", "1"],
        &[
            ("DILU_NVML_LIBRARY", nvml.as_os_str()),
            (NVML_ENV_DEVICES, OsStr::new(&devices)),
            (dilu_cuda_testkit::NVML_ENV_INIT, OsStr::new("9")),
        ],
    );
    let (_, listed) = agent.get("/devices");
    let kinds: Vec<&str> = listed["devices"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["device"]["kind"].as_str().unwrap())
        .collect();
    assert_eq!(kinds, ["cpu"], "{listed}");
    assert!(
        listed["notes"].to_string().contains("Driver Not Loaded"),
        "{listed}"
    );

    // A bad list is refused with the value and the rule.
    let out = std::process::Command::new(common::dilu_bin())
        .args(["agent", "--gpu-health-ignore-xids", "13,x"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("\"x\": an Xid is a whole number"),
        "{stderr}"
    );
}

#[test]
fn dilu_up_and_dilu_status_show_an_unhealthy_gpu() {
    let dir = tempfile::tempdir().unwrap();
    let control = dir.path().join("nvml-control");
    std::fs::write(&control, "").unwrap();
    let nvml = artifacts().nvml();
    let devices = format!("{A},NVIDIA H100 80GB HBM3,81559,132");
    let up = UpProc::start_with_env(
        &dir.path().join("up"),
        &["--cpu-cores", "1", "--gpu-health-check-s", "0.2"],
        &[
            ("DILU_NVML_LIBRARY", nvml.as_os_str()),
            (NVML_ENV_DEVICES, OsStr::new(&devices)),
            (NVML_ENV_CONTROL, control.as_os_str()),
        ],
    );
    let gpu = |view: &Value| -> Value {
        view["devices"]
            .as_array()
            .unwrap()
            .iter()
            .find(|d| d["uuid"] == A)
            .cloned()
            .unwrap_or_else(|| panic!("{A} not in {view}"))
    };
    let (status, view) = up.get("/v1/devices");
    assert_eq!(status, 200, "{view}");
    assert_eq!(gpu(&view)["healthy"], true, "{view}");
    say(&control, &format!("xid {A} 79"));
    let view = wait_for(Duration::from_secs(20), || {
        let (_, view) = up.get("/v1/devices");
        (gpu(&view)["healthy"] == false).then_some(view)
    })
    .expect("the GPU turns unhealthy in /v1/devices");
    assert!(
        gpu(&view)["health_reason"]
            .as_str()
            .unwrap()
            .contains("critical Xid 79"),
        "{view}"
    );
    let out = std::process::Command::new(dilu_bin())
        .args(["status", "--server", &up.url, "--token", &up.token])
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("UNHEALTHY: critical Xid 79"),
        "dilu status:\n{text}"
    );
}
