//! Broken channels and edge values have defined behaviour, and the host process always lives:
//! a missing, truncated or foreign file means pass-through with one warning; a cap of 0 refuses every
//! allocation; a window of 0 means the default window; unknown mode bits are ignored; a channel file deleted
//! while the process runs keeps working through the existing mapping.

mod common;

use std::io::Write;

use common::{Rig, WAVE_UNITS, launches_of, spec};
use dilu_cuda_testkit::Resolve;
use dilu_quota::layout::{MAGIC, VERSION};
use dilu_quota::{DEFAULT_WINDOW_NS, FILE_SIZE, UNLIMITED};

const WORK: [&str; 4] = [
    "launch,kernel,5,264,1024",
    "alloc,v2,1048576",
    "meminfo",
    "free,0",
];

/// Runs the standard work with `quota_file` and checks it all succeeded as if no interposer were there.
fn runs_as_pass_through(rig: &Rig, quota_file: &std::path::Path, warning: &str) {
    let run = rig.run(Resolve::Dlsym, Some(quota_file), &WORK);
    assert!(run.ops("launch").all(|l| l["rc"] == "0"), "{}", run.stdout);
    assert!(run.ops("alloc").all(|l| l["rc"] == "0"), "{}", run.stdout);
    assert_eq!(
        run.ops("meminfo").next().unwrap()["total"],
        (80u64 << 30).to_string()
    );
    assert!(
        run.stderr.contains(warning),
        "expected {warning:?} in: {}",
        run.stderr
    );
    assert!(
        run.stderr.contains("passing CUDA calls through"),
        "{}",
        run.stderr
    );
    assert_eq!(launches_of(&rig.log(), run.pid).len(), 5);
}

#[test]
fn missing_file_is_pass_through() {
    let rig = Rig::new();
    runs_as_pass_through(
        &rig,
        &rig.cuda.dir().join("nope.quota"),
        "No such file or directory",
    );
}

#[test]
fn truncated_file_is_pass_through() {
    let rig = Rig::new();
    let (path, _channel) = rig.channel("short.quota", spec(0, DEFAULT_WINDOW_NS, 0));
    std::fs::OpenOptions::new()
        .write(true)
        .open(&path)
        .unwrap()
        .set_len(100)
        .unwrap();
    runs_as_pass_through(&rig, &path, "file is 100 bytes, a quota channel needs 8192");
}

#[test]
fn wrong_magic_and_wrong_version_are_pass_through() {
    let rig = Rig::new();
    let garbage = rig.cuda.dir().join("garbage.quota");
    let bytes: Vec<u8> = (0..FILE_SIZE).map(|i| (i * 7 % 251) as u8).collect();
    std::fs::File::create(&garbage)
        .unwrap()
        .write_all(&bytes)
        .unwrap();
    runs_as_pass_through(&rig, &garbage, "bad magic");

    let future = rig.cuda.dir().join("future.quota");
    let mut bytes = vec![0u8; FILE_SIZE];
    bytes[..8].copy_from_slice(&MAGIC.to_le_bytes());
    bytes[8..12].copy_from_slice(&(VERSION + 1).to_le_bytes());
    std::fs::File::create(&future)
        .unwrap()
        .write_all(&bytes)
        .unwrap();
    runs_as_pass_through(&rig, &future, "layout version 2");
}

#[test]
fn a_cap_of_zero_refuses_every_allocation_and_the_process_lives_on() {
    let rig = Rig::new();
    let (path, channel) = rig.channel("zero.quota", spec(UNLIMITED, DEFAULT_WINDOW_NS, 0));
    let run = rig.run(
        Resolve::ProcAddr,
        Some(&path),
        &[
            "alloc,v2,1",
            "alloc,async,4096",
            "alloc,vmm,2097152",
            "meminfo",
            "launch,kernel,3,264,1024",
        ],
    );
    assert!(run.ops("alloc").all(|l| l["rc"] == "2"), "{}", run.stdout);
    let meminfo = run.ops("meminfo").next().unwrap();
    assert_eq!(
        (meminfo["free"].as_str(), meminfo["total"].as_str()),
        ("0", "0")
    );
    assert!(run.ops("launch").all(|l| l["rc"] == "0"));
    assert_eq!(channel.snapshot().alloc_failures, 3);
    assert_eq!(channel.snapshot().bytes_allocated, 0);
    assert!(run.stderr.is_empty(), "{}", run.stderr);
}

#[test]
fn corrupt_control_values_fall_back_to_defined_defaults() {
    let rig = Rig::new();
    let (path, channel) = rig.channel("odd.quota", spec(UNLIMITED, DEFAULT_WINDOW_NS, UNLIMITED));
    // Write what the agent's API refuses: a zero window and undefined mode bits (plus the defined ones).
    let control = channel.control();
    control
        .window_ns
        .store(0, std::sync::atomic::Ordering::Relaxed);
    control
        .mode
        .store(0xFFFF_FFFF, std::sync::atomic::Ordering::Relaxed);
    control
        .budget_per_window
        .store(2 * WAVE_UNITS, std::sync::atomic::Ordering::Relaxed);
    let started = std::time::Instant::now();
    // 60 one-wave launches at 2 per (default, 5 ms) window: about 29 windows ≈ 145 ms, not forever.
    let run = rig.run(
        Resolve::Linked,
        Some(&path),
        &["launch,kernel,60,264,1024", "sync"],
    );
    assert!(run.ops("launch").all(|l| l["rc"] == "0"));
    let log = rig.log();
    let launches = launches_of(&log, run.pid);
    let span_ms = (launches.last().unwrap().t_ns - launches[0].t_ns) as f64 / 1e6;
    eprintln!(
        "60 launches at 2 per default window took {span_ms:.1} ms (wall {:?})",
        started.elapsed()
    );
    assert!(
        span_ms >= 29.0 * 5.0 * 0.9,
        "a zero window must mean the 5 ms default, took {span_ms} ms"
    );
    assert!(channel.snapshot().launches_delayed > 0);
}

#[test]
fn deleting_the_channel_while_running_keeps_the_mapping_working() {
    let rig = Rig::new();
    let (path, channel) = rig.channel("gone.quota", spec(UNLIMITED, DEFAULT_WINDOW_NS, 1 << 20));
    let mut child = rig
        .app(Resolve::Dlsym, Some(&path))
        .args([
            "launch,kernel,1,264,1024",
            "sleep,300",
            "alloc,v2,2097152",
            "launch,kernel,4,264,1024",
        ])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(std::time::Duration::from_millis(100));
    std::fs::remove_file(&path).unwrap();
    assert!(child.wait().unwrap().success());
    let snap = channel.snapshot();
    assert_eq!(snap.launches, 5);
    assert_eq!(snap.alloc_failures, 1, "the cap still applies");
}
