//! Under `DILU_QUOTA_DIR` (Kubernetes: the container may start before the agent creates its channel) the
//! interposer waits, bounded by `DILU_QUOTA_WAIT_S`, for a channel that does not exist yet: one created while
//! it waits budgets the process; one that never appears means pass-through, and the process runs to the end.

mod common;

use std::time::{Duration, Instant};

use common::{Rig, WAVE_UNITS, launches_of, spec};
use dilu_cuda_testkit::{Resolve, run_app};
use dilu_quota::{AgentChannel, DEFAULT_WINDOW_NS, UNLIMITED};

const WORK: [&str; 3] = ["launch,kernel,5,264,1024", "alloc,v2,1048576", "sync"];

#[test]
fn a_channel_created_after_the_process_started_is_waited_for_and_budgets_it() {
    // As in a Kubernetes pod: no DILU_QUOTA_FILE; the channel is $DILU_QUOTA_DIR/$DILU_POD_UID.
    let rig = Rig::new();
    let quota_dir = rig.cuda.dir().join("quota");
    std::fs::create_dir(&quota_dir).unwrap();
    let path = quota_dir.join("0b3a4c1e-pod-uid");
    let creator = {
        let path = path.clone();
        std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(300));
            AgentChannel::create(&path, &spec(UNLIMITED, DEFAULT_WINDOW_NS, UNLIMITED), 0o666)
                .unwrap()
        })
    };
    let start = Instant::now();
    let run = run_app(
        rig.app(Resolve::Dlsym, None)
            .env("DILU_QUOTA_DIR", &quota_dir)
            .env("DILU_POD_UID", "0b3a4c1e-pod-uid")
            .env("DILU_QUOTA_WAIT_S", "20")
            .args(WORK),
    )
    .unwrap_or_else(|e| panic!("{e}"));
    let elapsed = start.elapsed();
    let channel = creator.join().unwrap();
    assert!(run.ops("launch").all(|l| l["rc"] == "0"), "{}", run.stdout);
    let snap = channel.snapshot();
    assert_eq!(snap.attached_pid, run.pid, "{}", run.stderr);
    assert_eq!(snap.launches, 5);
    assert_eq!(snap.cost_launched, 5 * WAVE_UNITS);
    assert_eq!(snap.bytes_peak, 1 << 20);
    assert!(
        !run.stderr.contains("passing CUDA calls through"),
        "{}",
        run.stderr
    );
    assert!(
        elapsed >= Duration::from_millis(300) && elapsed < Duration::from_secs(15),
        "ran for {elapsed:?}"
    );
}

#[test]
fn a_channel_that_never_appears_means_pass_through_after_the_bound() {
    let rig = Rig::new();
    let quota_dir = rig.cuda.dir().join("quota");
    std::fs::create_dir(&quota_dir).unwrap();
    let path = quota_dir.join("never-created");
    let start = Instant::now();
    // run_app fails on a non-zero exit: the process lives and ends normally.
    let run = run_app(
        rig.app(Resolve::Dlsym, Some(&path))
            .env("DILU_QUOTA_DIR", &quota_dir)
            .env("DILU_QUOTA_WAIT_S", "1")
            .args(WORK),
    )
    .unwrap_or_else(|e| panic!("{e}"));
    let elapsed = start.elapsed();
    assert!(run.status.success());
    assert!(run.ops("launch").all(|l| l["rc"] == "0"), "{}", run.stdout);
    assert!(run.ops("alloc").all(|l| l["rc"] == "0"), "{}", run.stdout);
    assert_eq!(launches_of(&rig.log(), run.pid).len(), 5);
    assert!(
        run.stderr.contains("did not appear within 1.0 s"),
        "{}",
        run.stderr
    );
    assert!(
        run.stderr.contains("passing CUDA calls through"),
        "{}",
        run.stderr
    );
    assert_eq!(
        run.stderr.matches("did not appear").count(),
        1,
        "{}",
        run.stderr
    );
    assert!(
        elapsed >= Duration::from_secs(1) && elapsed < Duration::from_secs(10),
        "ran for {elapsed:?}"
    );
}

#[test]
fn without_the_quota_dir_a_missing_channel_is_pass_through_at_once() {
    let rig = Rig::new();
    let start = Instant::now();
    let run = rig.run(Resolve::Dlsym, Some(&rig.cuda.dir().join("missing")), &WORK);
    assert!(run.ops("launch").all(|l| l["rc"] == "0"), "{}", run.stdout);
    assert!(
        run.stderr.contains("No such file or directory"),
        "{}",
        run.stderr
    );
    assert!(!run.stderr.contains("did not appear"), "{}", run.stderr);
    assert!(start.elapsed() < Duration::from_secs(5));
}
