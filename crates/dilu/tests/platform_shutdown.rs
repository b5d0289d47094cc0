//! `dilu up` stopped with SIGTERM: it exits cleanly and stops its instances, or, with `--keep-instances`,
//! leaves them running for the next start on the same data directory to adopt.

mod common;

use std::time::Duration;

use common::platform::UpProc;
use common::{AgentProc, alive, wait_for};

/// The example trainer (no model to fetch, up in a second).
fn trainer() -> String {
    std::fs::read_to_string(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/mlp-train.yaml"),
    )
    .unwrap()
}

/// Starts `dilu up` with `flags` in `dir`, deploys the trainer and returns the platform and its instance's
/// (id, pid).
fn up_with_trainer(dir: &std::path::Path, flags: &[&str]) -> (UpProc, String, u32) {
    let up = UpProc::start(dir, flags);
    let (s, b) = up.deploy_yaml(&trainer());
    assert_eq!(s, 201, "{b}");
    let view = up.wait_running("mlp-train", 1, Duration::from_secs(60));
    let id = view["instances"][0]["id"].as_str().unwrap().to_string();
    let pid =
        AgentProc::recorded_pid(&dir.join("agent"), &id).expect("the agent records the trainer");
    assert!(alive(pid));
    (up, id, pid)
}

#[test]
fn sigterm_stops_the_platform_and_its_instances() {
    let dir = tempfile::tempdir().unwrap();
    let (mut up, _, pid) = up_with_trainer(dir.path(), &[]);
    let status = up.terminate();
    assert!(
        status.success(),
        "dilu up exits cleanly on SIGTERM: {status:?}"
    );
    assert!(
        wait_for(Duration::from_secs(5), || (!alive(pid)).then_some(())).is_some(),
        "the trainer (pid {pid}) was stopped with the platform"
    );
}

#[test]
fn with_keep_instances_sigterm_leaves_them_for_the_next_start() {
    let dir = tempfile::tempdir().unwrap();
    let (mut up, id, pid) = up_with_trainer(dir.path(), &["--keep-instances"]);
    let status = up.terminate();
    assert!(
        status.success(),
        "dilu up exits cleanly on SIGTERM: {status:?}"
    );
    assert!(alive(pid), "the trainer outlives the platform");

    let up = UpProc::start(dir.path(), &[]);
    let view = up.wait_running("mlp-train", 1, Duration::from_secs(60));
    assert_eq!(
        view["instances"].as_array().map(Vec::len),
        Some(1),
        "{view}"
    );
    assert_eq!(view["instances"][0]["id"], id.as_str(), "the same instance");
    assert_eq!(
        AgentProc::recorded_pid(&dir.path().join("agent"), &id),
        Some(pid)
    );
    let (_, instances) = up.get("/v1/instances");
    assert_eq!(instances["instances"][0]["adopted"], true, "{instances}");
}
