//! Creating, opening and validating channel files; the memory ledger on a real mapping.

use std::io::Write;
use std::os::unix::fs::PermissionsExt;

use dilu_quota::layout::{MAGIC, VERSION, mode};
use dilu_quota::{
    AgentChannel, ChannelSpec, DeviceKind, FILE_SIZE, InstanceChannel, QuotaError, UNLIMITED,
    memory,
};

fn spec() -> ChannelSpec {
    ChannelSpec {
        device_uuid: "GPU-0000d11a-0000-0000-0000-000000000000".into(),
        budget_per_window: 1_500_000,
        mem_cap_bytes: 1 << 30,
        ..ChannelSpec::default()
    }
}

#[test]
fn agent_and_instance_see_the_same_fields() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("inst.quota");
    let agent = AgentChannel::create(&path, &spec(), 0o600).unwrap();
    let instance = InstanceChannel::open(&path).unwrap();
    let seen = instance.snapshot();
    assert_eq!(seen.device_uuid, "GPU-0000d11a-0000-0000-0000-000000000000");
    assert_eq!(seen.device_kind, Some(DeviceKind::Gpu));
    assert_eq!(seen.budget_per_window, 1_500_000);
    assert_eq!(seen.mem_cap_bytes, 1 << 30);
    assert_eq!(seen.mode, mode::ALL);
    assert_eq!(seen.epoch, 1);

    let epoch = agent.set_budget(42);
    assert_eq!(epoch, 2);
    assert_eq!(instance.snapshot().budget_per_window, 42);
    assert_eq!(instance.snapshot().epoch, 2);

    instance.attach(4242);
    let from_agent = agent.snapshot();
    assert_eq!(from_agent.attached_pid, 4242);
    assert_eq!(from_agent.last_seen_epoch, 2);

    let mode_bits = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode_bits, 0o600);
    assert_eq!(std::fs::metadata(&path).unwrap().len(), FILE_SIZE as u64);
    // No temporary file is left beside the channel.
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
}

#[test]
fn permissions_are_set_exactly_whatever_the_umask() {
    // The agent's attached channels are 0666 so that a pod running as any uid can open them; a umask of 022
    // would otherwise make them 0644.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("pod.quota");
    AgentChannel::create(&path, &spec(), 0o666).unwrap();
    let mode_bits = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode_bits, 0o666);
}

#[test]
fn the_instance_maps_the_control_page_read_only() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("ro.quota");
    AgentChannel::create(&path, &spec(), 0o600).unwrap();
    let instance = InstanceChannel::open(&path).unwrap();
    let control_addr = instance.control() as *const _ as usize;
    let counters_addr = instance.counters() as *const _ as usize;
    let maps = std::fs::read_to_string("/proc/self/maps").unwrap();
    let perms_of = |addr: usize| {
        maps.lines()
            .find_map(|line| {
                let (range, rest) = line.split_once(' ')?;
                let (lo, hi) = range.split_once('-')?;
                let (lo, hi) = (
                    usize::from_str_radix(lo, 16).ok()?,
                    usize::from_str_radix(hi, 16).ok()?,
                );
                (lo <= addr && addr < hi).then(|| rest[..4].to_string())
            })
            .unwrap()
    };
    assert_eq!(perms_of(control_addr), "r--s");
    assert_eq!(perms_of(counters_addr), "rw-s");
}

#[test]
fn reopening_after_an_agent_restart_keeps_values() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("keep.quota");
    {
        let agent = AgentChannel::create(&path, &spec(), 0o640).unwrap();
        agent.set_mem_cap(123);
    }
    let agent = AgentChannel::open(&path).unwrap();
    assert_eq!(agent.snapshot().mem_cap_bytes, 123);
    assert_eq!(agent.snapshot().epoch, 2);
}

/// Found by fuzzing (fuzz/ quota_channel): a channel file whose epoch is at its largest value, opened by a
/// restarted agent, made the next publish panic on overflow (debug builds) instead of wrapping like the atomic.
#[test]
fn publishing_at_the_largest_epoch_wraps_instead_of_panicking() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("wrap.quota");
    AgentChannel::create(&path, &spec(), 0o600).unwrap();
    let agent = AgentChannel::open(&path).unwrap();
    agent
        .control()
        .epoch
        .store(u64::MAX, std::sync::atomic::Ordering::Relaxed);
    let instance = InstanceChannel::open(&path).unwrap();
    assert_eq!(instance.snapshot().epoch, u64::MAX);
    // The returned epoch is the one now stored, which an instance sees as a change.
    assert_eq!(agent.set_budget(7), 0);
    assert_eq!(instance.snapshot().epoch, 0);
    assert_eq!(agent.set_mem_cap(1 << 20), 1);
    assert_eq!(instance.snapshot().budget_per_window, 7);
}

#[test]
fn truncated_file_is_too_small() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("short.quota");
    AgentChannel::create(&path, &spec(), 0o600).unwrap();
    let file = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
    file.set_len(100).unwrap();
    match InstanceChannel::open(&path) {
        Err(QuotaError::TooSmall { len: 100, need, .. }) => assert_eq!(need, FILE_SIZE as u64),
        other => panic!("expected TooSmall, got {other:?}"),
    }
    let empty = dir.path().join("empty.quota");
    std::fs::File::create(&empty).unwrap();
    assert!(matches!(
        InstanceChannel::open(&empty),
        Err(QuotaError::TooSmall { len: 0, .. })
    ));
}

#[test]
fn wrong_magic_version_and_layout_are_typed_errors() {
    let dir = tempfile::tempdir().unwrap();
    let write = |name: &str, magic: u64, version: u32, size: u32| {
        let path = dir.path().join(name);
        let mut bytes = vec![0u8; FILE_SIZE];
        bytes[..8].copy_from_slice(&magic.to_le_bytes());
        bytes[8..12].copy_from_slice(&version.to_le_bytes());
        bytes[12..16].copy_from_slice(&size.to_le_bytes());
        std::fs::File::create(&path)
            .unwrap()
            .write_all(&bytes)
            .unwrap();
        path
    };
    let garbage = write("garbage", 0x1234, VERSION, FILE_SIZE as u32);
    let err = InstanceChannel::open(&garbage).unwrap_err();
    assert!(
        matches!(err, QuotaError::BadMagic { found: 0x1234, .. }),
        "{err:?}"
    );
    assert!(err.to_string().contains("not a quota channel"), "{err}");

    let future = write("future", MAGIC, 99, FILE_SIZE as u32);
    let err = InstanceChannel::open(&future).unwrap_err();
    assert!(
        matches!(
            err,
            QuotaError::UnsupportedVersion {
                found: 99,
                supported: 1,
                ..
            }
        ),
        "{err:?}"
    );

    let odd = write("odd", MAGIC, VERSION, 4096);
    assert!(matches!(
        AgentChannel::open(&odd),
        Err(QuotaError::LayoutSize { found: 4096, .. })
    ));

    let missing = dir.path().join("missing");
    let err = InstanceChannel::open(&missing).unwrap_err();
    assert!(matches!(err, QuotaError::Io { op: "open", .. }));
    assert!(err.to_string().contains("missing"), "{err}");
}

#[test]
fn invalid_specs_name_field_value_and_rule() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bad.quota");
    let zero_window = ChannelSpec {
        window_ns: 0,
        ..spec()
    };
    let err = AgentChannel::create(&path, &zero_window, 0o600).unwrap_err();
    assert_eq!(
        err.to_string(),
        "window_ns = 0: must be between 100 µs and 60 s"
    );
    let long_uuid = ChannelSpec {
        device_uuid: "G".repeat(64),
        ..spec()
    };
    assert!(
        AgentChannel::create(&path, &long_uuid, 0o600)
            .unwrap_err()
            .to_string()
            .starts_with("device_uuid = GGG")
    );
    let bad_mode = ChannelSpec {
        mode: 1 << 7,
        ..spec()
    };
    assert!(
        AgentChannel::create(&path, &bad_mode, 0o600)
            .unwrap_err()
            .to_string()
            .starts_with("mode = 0x80")
    );
    assert!(!path.exists(), "a rejected spec must not leave a file");

    let agent = AgentChannel::create(&path, &spec(), 0o600).unwrap();
    assert!(agent.set_window_ns(10).is_err());
    assert_eq!(agent.snapshot().window_ns, ChannelSpec::default().window_ns);
}

#[test]
fn memory_ledger_refuses_over_cap_and_restores_on_release() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("mem.quota");
    let agent = AgentChannel::create(&path, &spec(), 0o600).unwrap();
    let instance = InstanceChannel::open(&path).unwrap();
    let (control, counters) = (instance.control(), instance.counters());

    memory::reserve(control, counters, 700 << 20).unwrap();
    let refused = memory::reserve(control, counters, 400 << 20).unwrap_err();
    assert_eq!(refused.held, 700 << 20);
    assert_eq!(refused.cap, 1 << 30);
    memory::reserve(control, counters, 300 << 20).unwrap();
    let snap = agent.snapshot();
    assert_eq!(snap.bytes_allocated, 1000 << 20);
    assert_eq!(snap.bytes_peak, 1000 << 20);
    assert_eq!(snap.alloc_failures, 1);
    assert_eq!(
        memory::virtual_meminfo(control, counters, 80 << 30, 80 << 30),
        (24 << 20, 1 << 30)
    );
    memory::release(counters, 1000 << 20);
    assert_eq!(agent.snapshot().bytes_allocated, 0);
    memory::release(counters, 1);
    assert_eq!(
        agent.snapshot().bytes_allocated,
        0,
        "release saturates at zero"
    );

    // A cap of zero refuses every non-empty allocation; reporting shows no memory.
    agent.set_mem_cap(0);
    assert!(memory::reserve(control, counters, 1).is_err());
    assert_eq!(memory::virtual_meminfo(control, counters, 5, 10), (0, 0));
    // Without ENFORCE_MEMORY bytes are counted but nothing is refused, and reporting is the device's.
    agent.set_mode(mode::ENFORCE_COMPUTE).unwrap();
    memory::reserve(control, counters, 5 << 20).unwrap();
    assert_eq!(agent.snapshot().bytes_allocated, 5 << 20);
    assert_eq!(memory::virtual_meminfo(control, counters, 5, 10), (5, 10));
    agent.set_mem_cap(UNLIMITED);
    assert_eq!(memory::virtual_total(control, 77), 77);
}
