//! `dilu quota create|set|show`: the real binary on a real channel file, read back through dilu-quota.

use std::process::Command;

use dilu_quota::{AgentChannel, InstanceChannel, UNLIMITED};

fn dilu(args: &[&str]) -> (bool, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_dilu"))
        .args(args)
        .env("RUST_BACKTRACE", "0")
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8(out.stdout).unwrap(),
        String::from_utf8(out.stderr).unwrap(),
    )
}

#[test]
fn create_set_and_show_round_trip() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("fn.quota");
    let p = path.to_str().unwrap();
    let (ok, out, err) = dilu(&[
        "quota",
        "create",
        p,
        "--device",
        "GPU-abc",
        "--budget",
        "1500000",
        "--mem-cap",
        "4GiB",
        "--window-ms",
        "10",
    ]);
    assert!(ok, "{err}");
    assert!(out.contains("1500000 units per 10.000 ms window"), "{out}");
    assert!(out.contains("4.00 GiB"), "{out}");
    let snap = AgentChannel::open(&path).unwrap().snapshot();
    assert_eq!(
        (snap.budget_per_window, snap.mem_cap_bytes, snap.window_ns),
        (1_500_000, 4 << 30, 10_000_000)
    );

    let instance = InstanceChannel::open(&path).unwrap();
    let (ok, _, err) = dilu(&[
        "quota",
        "set",
        p,
        "--budget",
        "unlimited",
        "--mode",
        "memory,meminfo",
    ]);
    assert!(ok, "{err}");
    let seen = instance.snapshot();
    assert_eq!(seen.budget_per_window, UNLIMITED);
    assert_eq!(seen.mode, 0b110);
    assert!(seen.epoch > snap.epoch, "a change bumps the epoch");

    let (ok, out, _) = dilu(&["quota", "show", p, "--format", "json"]);
    assert!(ok);
    let json: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(json["device_uuid"], "GPU-abc");
    assert_eq!(json["budget_per_window"], serde_json::Value::Null);
    assert_eq!(json["mem_cap_bytes"], 4u64 << 30);
    assert_eq!(json["mode"], "memory,meminfo");

    let (ok, out, _) = dilu(&[
        "quota",
        "show",
        p,
        "--watch",
        "--interval-ms",
        "20",
        "--count",
        "2",
    ]);
    assert!(ok);
    assert_eq!(out.lines().count(), 3, "header and two lines: {out}");
}

#[test]
fn bad_values_are_refused_and_leave_the_channel_unchanged() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("fn.quota");
    let p = path.to_str().unwrap();
    assert!(dilu(&["quota", "create", p, "--budget", "100"]).0);
    let (ok, _, err) = dilu(&["quota", "set", p, "--budget", "7", "--window-ms", "0.01"]);
    assert!(!ok);
    assert!(
        err.contains("--window-ms = 0.01: must be between 0.1 and 60000"),
        "{err}"
    );
    assert_eq!(
        AgentChannel::open(&path)
            .unwrap()
            .snapshot()
            .budget_per_window,
        100
    );

    let (ok, _, err) = dilu(&["quota", "set", p, "--mem-cap", "4 parsecs"]);
    assert!(!ok);
    assert!(
        err.contains("\"4 parsecs\": expected a byte count"),
        "{err}"
    );
    let (ok, _, err) = dilu(&["quota", "set", p]);
    assert!(!ok);
    assert!(err.contains("nothing to set"), "{err}");

    let garbage = dir.path().join("garbage");
    std::fs::write(&garbage, vec![7u8; 8192]).unwrap();
    let (ok, _, err) = dilu(&["quota", "show", garbage.to_str().unwrap()]);
    assert!(!ok);
    assert!(err.contains("bad magic"), "{err}");
}
