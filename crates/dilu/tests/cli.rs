//! End-to-end checks of the `dilu` binary: real processes, real files, exact output.

use std::path::PathBuf;
use std::process::Command;

fn dilu(args: &[&str]) -> (bool, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_dilu"))
        .args(args)
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8(out.stdout).unwrap(),
        String::from_utf8(out.stderr).unwrap(),
    )
}

fn openb(file: &str) -> Option<String> {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../../shared/data/alibaba-gpu-v2023/csv")
        .join(file);
    if path.exists() {
        return Some(path.display().to_string());
    }
    if std::env::var("CI").is_ok_and(|v| v == "true") {
        panic!("required test data {} is missing (CI=true)", path.display());
    }
    eprintln!(
        "SKIPPED: test data {} not found; this test did not run",
        path.display()
    );
    None
}

/// Same inputs and seed give byte-identical JSON, with the documented shape.
#[test]
fn placement_json_is_byte_identical_and_shaped() {
    let (Some(nodes), Some(pods)) = (
        openb("openb_node_list_gpu_node.csv"),
        openb("openb_pod_list_default.csv"),
    ) else {
        return;
    };
    let args = [
        "sim",
        "placement",
        "--nodes",
        &nodes,
        "--pods",
        &pods,
        "--policy",
        "fgd",
        "--seed",
        "43",
        "--format",
        "json",
    ];
    let (ok1, a, err1) = dilu(&args);
    let (ok2, b, _) = dilu(&args);
    assert!(ok1 && ok2, "{err1}");
    assert_eq!(a, b, "two runs differ");
    let v: serde_json::Value = serde_json::from_str(&a).unwrap();
    assert_eq!(v["policy"], "fgd");
    assert_eq!(v["seed"], 43);
    let points = v["points"].as_array().unwrap();
    assert_eq!(points.len(), 9);
    assert_eq!(points[5]["arrived_pct"], 100);
    for key in ["unallocated_gpu_pct", "frag_ratio_pct", "frag_total_pct"] {
        assert!(points[5][key].is_f64(), "{key}");
    }

    let multi = [
        "sim",
        "placement",
        "--nodes",
        &nodes,
        "--pods",
        &pods,
        "--policy",
        "best-fit",
        "--seeds",
        "42..43",
        "--format",
        "json",
    ];
    let (ok, text, err) = dilu(&multi);
    assert!(ok, "{err}");
    let v: serde_json::Value = serde_json::from_str(&text).unwrap();
    let runs = v.as_array().unwrap();
    assert_eq!(runs.len(), 2);
    assert_eq!(
        (runs[0]["seed"].as_i64(), runs[1]["seed"].as_i64()),
        (Some(42), Some(43))
    );
}

/// The embedded default (a generated trace) runs without any data and is byte-identical across runs.
#[test]
fn instances_default_runs_anywhere_and_is_deterministic() {
    let dir = std::env::temp_dir().join(format!("dilu-cli-{}", std::process::id()));
    let plot = dir.join("active.svg");
    let plot_arg = plot.display().to_string();
    let args = ["sim", "instances", "--format", "json", "--plot", &plot_arg];
    let (ok1, a, err) = dilu(&args);
    let (ok2, b, _) = dilu(&args);
    assert!(ok1 && ok2, "{err}");
    assert_eq!(a, b);
    let v: serde_json::Value = serde_json::from_str(&a).unwrap();
    let policies: Vec<&str> = v
        .as_array()
        .unwrap()
        .iter()
        .map(|o| o["policy"].as_str().unwrap())
        .collect();
    assert_eq!(policies, ["dilu", "exclusive", "infless-l", "infless-r"]);
    let svg = std::fs::read_to_string(&plot).unwrap();
    assert!(svg.contains("<svg") && svg.contains("infless-r"));
    std::fs::remove_dir_all(&dir).ok();
}

/// `sim generate` writes a trace that `sim instances` reads back.
#[test]
fn generated_trace_round_trips_through_the_cli() {
    let dir = std::env::temp_dir().join(format!("dilu-gen-{}", std::process::id()));
    let file = dir.join("t.txt");
    let f = file.display().to_string();
    let (ok, _, err) = dilu(&[
        "sim",
        "generate",
        "--instances",
        "200",
        "--seed",
        "7",
        "--out",
        &f,
    ]);
    assert!(ok, "{err}");
    assert_eq!(
        std::fs::read_to_string(&file).unwrap().lines().count(),
        200 + 120 + 20
    );
    let (ok, out, err) = dilu(&[
        "sim",
        "instances",
        "--trace",
        &f,
        "--policy",
        "dilu",
        "--format",
        "table",
    ]);
    assert!(ok, "{err}");
    assert!(out.contains("dilu") && out.contains("peak_gpus"), "{out}");
    std::fs::remove_dir_all(&dir).ok();
}

/// Bad input gives one clear error naming the file, line and field, and a non-zero exit.
#[test]
fn bad_input_fails_with_a_precise_message() {
    let dir = std::env::temp_dir().join(format!("dilu-bad-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let trace = dir.join("bad.txt");
    std::fs::write(
        &trace,
        "{'Time': '2024-06-19 15:46:09', 'Action': 'launch', 'Instance': {'service_name': 'a', 'type': 'inference', 'gpu_num': 1, 'sm_requests': 0.3, 'sm_limits': 0.5, 'memory': [4]}}\n",
    )
    .unwrap();
    let t = trace.display().to_string();
    let (ok, _, err) = dilu(&["sim", "instances", "--trace", &t]);
    assert!(!ok);
    assert!(
        err.contains("bad.txt:1") && err.contains("Action") && err.contains("launch"),
        "{err}"
    );

    let (ok, _, err) = dilu(&["sim", "instances", "--policy", "dilu,tetris"]);
    assert!(!ok);
    assert!(err.contains("unknown placement policy 'tetris'"), "{err}");
    std::fs::remove_dir_all(&dir).ok();
}
