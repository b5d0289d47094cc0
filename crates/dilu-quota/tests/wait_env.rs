//! `CpuQuota::from_env` under `DILU_QUOTA_DIR`: a channel created after the worker started is waited for, one
//! that never appears is an error after the bound. (One test in its own binary: it sets environment variables.)

use std::time::{Duration, Instant};

use dilu_quota::{AgentChannel, ChannelSpec, CpuQuota, DeviceKind, QuotaError};

#[test]
fn from_env_waits_for_a_missing_channel_under_the_quota_dir() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("pod-uid");
    // SAFETY: the only test of this binary; nothing else reads the environment meanwhile.
    unsafe {
        std::env::set_var("DILU_QUOTA_DIR", dir.path());
        std::env::set_var("DILU_QUOTA_FILE", &path);
        std::env::set_var("DILU_QUOTA_WAIT_S", "0.2");
    }
    let start = Instant::now();
    match CpuQuota::from_env() {
        Err(QuotaError::NotCreated { path: p, waited }) => {
            assert_eq!(p, path);
            assert_eq!(waited, Duration::from_millis(200));
        }
        other => panic!("expected NotCreated, got {other:?}"),
    }
    assert!(start.elapsed() >= Duration::from_millis(200));

    // SAFETY: as above.
    unsafe { std::env::set_var("DILU_QUOTA_WAIT_S", "10") };
    let creator = {
        let path = path.clone();
        std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(200));
            let spec = ChannelSpec {
                device_kind: DeviceKind::Cpu,
                ..ChannelSpec::default()
            };
            AgentChannel::create(&path, &spec, 0o600).unwrap()
        })
    };
    let start = Instant::now();
    let quota = CpuQuota::from_env().unwrap().expect("a quota");
    let waited = start.elapsed();
    assert!(
        waited >= Duration::from_millis(200) && waited < Duration::from_secs(5),
        "waited {waited:?}"
    );
    assert_eq!(quota.channel().snapshot().attached_pid, std::process::id());
    drop(creator.join().unwrap());

    // Without DILU_QUOTA_DIR a missing channel is an error at once, as it always was.
    // SAFETY: as above.
    unsafe {
        std::env::remove_var("DILU_QUOTA_DIR");
        std::env::set_var("DILU_QUOTA_FILE", dir.path().join("missing"));
    }
    let start = Instant::now();
    assert!(matches!(
        CpuQuota::from_env(),
        Err(QuotaError::Io { op: "open", .. })
    ));
    assert!(start.elapsed() < Duration::from_millis(100));
}
