//! The README's quickstart, run as written (`scripts/quickstart.sh`, with this test's binary instead of a
//! release build): models fetched, `dilu up` started, the three examples deployed, and real inferences with
//! the right answers (upright text class 0, the same text upside down class 1). The same script runs under the
//! baselines' policies too (`exclusive`, `tgs`), each on as many CPU devices as it needs.

mod common;

use std::process::Command;

use common::platform::ensure_models;
use common::{AgentProc, alive, dilu_bin};

/// Runs the quickstart with `up_args` for `dilu up`; returns its stdout after checking the answers.
fn quickstart(cache: &std::path::Path, up_args: &str) -> String {
    let dir = tempfile::tempdir().unwrap();
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let started = std::time::Instant::now();
    let out = Command::new("bash")
        .arg(root.join("scripts/quickstart.sh"))
        .env("DILU_BIN", dilu_bin())
        .env("DILU_DATA_DIR", dir.path().join("data"))
        .env("DILU_LISTEN", "127.0.0.1:0")
        .env("DILU_MODEL_CACHE", cache)
        .env("DILU_UP_ARGS", up_args)
        .env("RUST_BACKTRACE", "0")
        .env_remove("DILU_TOKEN")
        .env_remove("DILU_SERVER")
        .output()
        .expect("run the quickstart");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    println!("{stdout}\n{stderr}");
    println!("quickstart took {:.1} s", started.elapsed().as_secs_f64());
    assert!(out.status.success(), "quickstart failed: {stderr}");
    assert!(
        stdout.contains("quickstart: upright text -> class 0"),
        "{stdout}"
    );
    assert!(stdout.contains("flipped text -> class 1"), "{stdout}");
    assert!(stdout.contains("quickstart: OK"));
    for name in ["ocr-cls", "squeezenet", "mlp-train"] {
        assert!(stdout.contains(name), "dilu ls / status list {name}");
    }
    // `dilu events` lists the decisions in order: for the profiled ocr-cls, its deployment, then its instance's
    // placement, then the profile.
    let events: Vec<(&str, &str)> = stdout
        .lines()
        .skip_while(|l| !l.starts_with("== dilu events"))
        .skip(1)
        .take_while(|l| !l.starts_with("quickstart:"))
        .filter_map(|l| {
            let mut words = l.split_whitespace().skip(3);
            Some((words.next()?, words.next()?))
        })
        .collect();
    let at = |kind: &str, function: &str| {
        events
            .iter()
            .position(|e| *e == (kind, function))
            .unwrap_or_else(|| panic!("no {kind} event of {function} in {events:?}"))
    };
    assert!(at("deployed", "ocr-cls") < at("placement", "ocr-cls"));
    assert!(at("placement", "ocr-cls") < at("profiled", "ocr-cls"));
    // mlp-train is sized by its bounds (a scaling decision with its reason), then placed.
    assert!(at("scale-out", "mlp-train") < at("placement", "mlp-train"));
    let log = std::fs::read_to_string(dir.path().join("data/up.log")).unwrap_or_default();
    assert!(!log.contains("panicked"), "dilu up log: {log}");
    // A stopped `dilu up` leaves no instance behind (none restarted after the stop).
    let survivors: Vec<u32> = AgentProc::recorded_pids(&dir.path().join("data/agent"))
        .into_iter()
        .filter(|pid| alive(*pid))
        .collect();
    assert!(
        survivors.is_empty(),
        "instances outlived dilu up: {survivors:?}"
    );
    stdout.into_owned()
}

#[test]
fn the_quickstart_script_deploys_the_examples_and_answers_correctly() {
    let Some(cache) = ensure_models() else { return };
    quickstart(&cache, "");
}

/// The quota of every instance in `dilu status` output: (instance, request, limit).
fn status_quotas(stdout: &str) -> Vec<(String, f64, f64)> {
    stdout
        .lines()
        .filter_map(|l| {
            let cols: Vec<&str> = l.split_whitespace().collect();
            if cols.len() < 6 || !matches!(cols[3], "ready" | "starting" | "restarting") {
                return None;
            }
            Some((
                cols[0].to_string(),
                cols[4].parse().ok()?,
                cols[5].parse().ok()?,
            ))
        })
        .collect()
}

#[test]
fn the_quickstart_runs_under_the_exclusive_and_tgs_policies() {
    let Some(cache) = ensure_models() else { return };
    // Exclusive: every instance holds a whole device, so three functions need three CPU devices.
    let out = quickstart(&cache, "--policy exclusive --cpu-devices 3");
    let quotas = status_quotas(&out);
    assert_eq!(quotas.len(), 3, "{out}");
    assert!(
        quotas.iter().all(|q| (q.1, q.2) == (1.0, 1.0)),
        "{quotas:?}"
    );
    // TGS: one inference and one training instance per device; inference gets the whole device, training
    // runs opportunistically up to it.
    let out = quickstart(&cache, "--policy tgs --cpu-devices 2");
    let quotas = status_quotas(&out);
    assert_eq!(quotas.len(), 3, "{out}");
    let train = quotas
        .iter()
        .find(|q| q.0.starts_with("mlp-train"))
        .unwrap();
    assert_eq!((train.1, train.2), (0.2, 1.0), "{quotas:?}");
    assert!(
        quotas
            .iter()
            .filter(|q| !q.0.starts_with("mlp-train"))
            .all(|q| (q.1, q.2) == (1.0, 1.0)),
        "{quotas:?}"
    );
}
