//! The README's quickstart, run as written (`scripts/quickstart.sh`, with this test's binary instead of a
//! release build): models fetched, `dilu up` started, the three examples deployed, and real inferences with
//! the right answers (upright text class 0, the same text upside down class 1).

mod common;

use std::process::Command;

use common::dilu_bin;
use common::platform::ensure_models;

#[test]
fn the_quickstart_script_deploys_the_examples_and_answers_correctly() {
    let Some(cache) = ensure_models() else { return };
    let dir = tempfile::tempdir().unwrap();
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let started = std::time::Instant::now();
    let out = Command::new("bash")
        .arg(root.join("scripts/quickstart.sh"))
        .env("DILU_BIN", dilu_bin())
        .env("DILU_DATA_DIR", dir.path().join("data"))
        .env("DILU_LISTEN", "127.0.0.1:0")
        .env("DILU_MODEL_CACHE", &cache)
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
    let log = std::fs::read_to_string(dir.path().join("data/up.log")).unwrap_or_default();
    assert!(!log.contains("panicked"), "dilu up log: {log}");
}
