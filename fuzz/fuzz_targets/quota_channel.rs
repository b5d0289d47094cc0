//! Quota channel validation: a channel file with arbitrary bytes, opened by both views
//! (`InstanceChannel::open`, `AgentChannel::open`, and `CpuQuota::open` as the worker does), and
//! `ChannelSpec::validate` on the fields read from it; a spec that validates must make a channel
//! (`AgentChannel::create`) that opens and reads back the same.
//!
//! Input: one flags byte, then the file's bytes. Flags: bit 0 writes a valid header (magic, version,
//! layout size) over the bytes so the rest of the page is reached more often; bit 1 pads the file with
//! zeros to the channel's size (otherwise it is exactly the input, so short files are tried too).
#![no_main]
use std::path::PathBuf;
use std::sync::OnceLock;

use dilu_quota::layout::{MAGIC, VERSION};
use dilu_quota::{AgentChannel, ChannelSpec, CpuQuota, DeviceKind, FILE_SIZE, InstanceChannel};
use libfuzzer_sys::fuzz_target;

/// A directory of this process's own, on tmpfs when there is one.
fn dir() -> &'static PathBuf {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let shm = std::path::Path::new("/dev/shm");
        let base = if shm.is_dir() {
            shm.to_path_buf()
        } else {
            std::env::temp_dir()
        };
        let dir = base.join(format!("dilu-fuzz-quota-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("create the fuzz directory");
        dir
    })
}

fuzz_target!(|data: &[u8]| {
    let Some((&flags, rest)) = data.split_first() else {
        return;
    };
    let mut bytes = rest.to_vec();
    if flags & 2 != 0 && bytes.len() < FILE_SIZE {
        bytes.resize(FILE_SIZE, 0);
    }
    if flags & 1 != 0 && bytes.len() >= 16 {
        bytes[0..8].copy_from_slice(&MAGIC.to_le_bytes());
        bytes[8..12].copy_from_slice(&VERSION.to_le_bytes());
        bytes[12..16].copy_from_slice(&(FILE_SIZE as u32).to_le_bytes());
    }
    let path = dir().join("channel");
    std::fs::write(&path, &bytes).expect("write the channel file");

    let instance = InstanceChannel::open(&path);
    let agent = AgentChannel::open(&path);
    // Both views apply the same checks to the same file.
    assert_eq!(instance.is_ok(), agent.is_ok(), "{instance:?} / {agent:?}");
    if bytes.len() < FILE_SIZE {
        assert!(instance.is_err(), "a file shorter than the layout opened");
    }
    let (Ok(instance), Ok(agent)) = (instance, agent) else {
        return;
    };
    let seen = instance.snapshot();
    assert_eq!(seen, agent.snapshot());
    // The worker's CPU quota takes exactly the channels of the CPU device.
    let cpu = CpuQuota::open(&path);
    assert_eq!(
        cpu.is_ok(),
        seen.device_kind == Some(DeviceKind::Cpu),
        "{cpu:?}"
    );
    drop(cpu);

    // The fields as a spec: validate, and a valid spec must lay out a channel that reads back the same.
    let spec = ChannelSpec {
        device_uuid: seen.device_uuid.clone(),
        device_kind: seen.device_kind.unwrap_or(DeviceKind::Gpu),
        budget_per_window: seen.budget_per_window,
        window_ns: seen.window_ns,
        mem_cap_bytes: seen.mem_cap_bytes,
        mode: seen.mode,
        resident_threads: seen.resident_threads,
    };
    // The layout's rules, written out independently of the crate's.
    let uuid_ok =
        spec.device_uuid.len() < 64 && spec.device_uuid.bytes().all(|b| b.is_ascii_graphic());
    let window_ok = (100_000..=60_000_000_000).contains(&spec.window_ns);
    let mode_ok = spec.mode & !dilu_quota::mode::ALL == 0;
    let valid = spec.validate();
    assert_eq!(
        valid.is_ok(),
        uuid_ok && window_ok && mode_ok,
        "{spec:?}: {valid:?}"
    );
    // The agent's setters apply the same rules to the same values.
    assert_eq!(agent.set_window_ns(spec.window_ns).is_ok(), window_ok);
    assert_eq!(agent.set_mode(spec.mode).is_ok(), mode_ok);
    drop((instance, agent));
    if valid.is_ok() {
        let made = dir().join("made");
        let created = AgentChannel::create(&made, &spec, 0o600)
            .unwrap_or_else(|e| panic!("a valid spec {spec:?} makes no channel: {e}"));
        let reopened = InstanceChannel::open(&made).expect("a created channel opens");
        let back = reopened.snapshot();
        assert_eq!(back.device_uuid, spec.device_uuid);
        assert_eq!(back.device_kind, Some(spec.device_kind));
        assert_eq!(back.window_ns, spec.window_ns);
        assert_eq!(back.mode, spec.mode);
        assert_eq!(back.budget_per_window, spec.budget_per_window);
        assert_eq!(back.mem_cap_bytes, spec.mem_cap_bytes);
        assert_eq!(back.resident_threads, spec.resident_threads);
        drop((created, reopened));
    }
});
