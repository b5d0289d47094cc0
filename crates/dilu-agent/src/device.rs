//! The node's devices: NVIDIA GPUs (NVML, or declared), and CPU devices that let the whole platform run on
//! machines without a GPU. Devices are keyed by UUID; a CPU device's is derived from the machine id (and its
//! index), so it stays the same across agent restarts.

use dilu_api::agent::Device;
use dilu_core::hash::{FNV_OFFSET, fnv1a64};
use dilu_quota::DeviceKind;

use crate::config::AgentConfig;
use crate::nvml;

/// Finds the node's devices. NVML absent or without GPUs is normal; an NVML failure is reported in the
/// returned notes and discovery continues with the other sources.
pub fn discover(config: &AgentConfig) -> (Vec<Device>, Vec<String>) {
    let mut devices = Vec::new();
    let mut notes = Vec::new();
    let window_ns = config.window_ns;
    if config.discover_gpus {
        match nvml::discover_report() {
            Ok(report) => {
                if let Some(reason) = report.unavailable {
                    notes.push(format!("no NVIDIA GPUs through NVML: {reason}"));
                }
                devices.extend(report.gpus.into_iter().map(|gpu| Device {
                    uuid: gpu.uuid,
                    name: gpu.name,
                    kind: DeviceKind::Gpu,
                    memory_bytes: gpu.memory_bytes,
                    sm_count: gpu.sm_count,
                    cores: None,
                    capacity_per_window: config.gpu_capacity_per_window,
                    source: "nvml".into(),
                }));
            }
            Err(error) => notes.push(format!("NVML: {error}")),
        }
    }
    for gpu in &config.declared_gpus {
        if devices.iter().any(|d| d.uuid == gpu.uuid) {
            notes.push(format!(
                "declared GPU {} is also found by NVML; using NVML's",
                gpu.uuid
            ));
            continue;
        }
        devices.push(Device {
            uuid: gpu.uuid.clone(),
            name: "declared GPU".into(),
            kind: DeviceKind::Gpu,
            memory_bytes: gpu.memory_bytes,
            sm_count: None,
            cores: None,
            capacity_per_window: gpu.capacity_per_window.or(config.gpu_capacity_per_window),
            source: "declared".into(),
        });
    }
    let cores = config
        .cpu_cores
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1.0, |n| n.get() as f64));
    let count = config.cpu_devices.max(1);
    if cores > 0.0 {
        let each = cores / f64::from(count);
        for index in 0..count {
            devices.push(Device {
                uuid: cpu_device_id(index),
                name: if count == 1 {
                    format!("CPU ({cores} cores)")
                } else {
                    format!("CPU {index} ({each:.2} of {cores} cores)")
                },
                kind: DeviceKind::Cpu,
                memory_bytes: 0,
                sm_count: None,
                cores: Some(each),
                // A core runs one nanosecond of CPU time per nanosecond.
                capacity_per_window: Some((each * window_ns as f64).round() as u64),
                source: "cpu".into(),
            });
        }
    }
    (devices, notes)
}

/// `CPU-xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx` from the machine id (or host name) and the device's index,
/// stable across restarts; device 0 keeps the id a single CPU device always had.
pub fn cpu_device_id(index: u32) -> String {
    let machine = std::fs::read_to_string("/etc/machine-id")
        .or_else(|_| std::fs::read_to_string("/proc/sys/kernel/hostname"))
        .unwrap_or_else(|_| "dilu".into());
    let seed = match index {
        0 => machine.trim().to_string(),
        i => format!("{}/cpu{i}", machine.trim()),
    };
    // Two FNV-1a passes with different offsets give 128 bits; this is an identifier, not a secret.
    let fnv = |offset: u64| fnv1a64(seed.trim().as_bytes(), offset);
    let (a, b) = (fnv(FNV_OFFSET), fnv(0x6c62_272e_07bb_0142));
    format!(
        "CPU-{:08x}-{:04x}-{:04x}-{:04x}-{:012x}",
        a >> 32,
        (a >> 16) & 0xffff,
        a & 0xffff,
        b >> 48,
        b & 0xffff_ffff_ffff
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cpu_device_has_a_stable_uuid_shaped_id_and_exact_capacity() {
        assert_eq!(cpu_device_id(0), cpu_device_id(0));
        assert_eq!(cpu_device_id(0).len(), 40);
        assert_ne!(cpu_device_id(0), cpu_device_id(1));
        assert_eq!(cpu_device_id(1).len(), 40);
        let mut config = AgentConfig::new("/tmp/x".into());
        config.discover_gpus = false;
        config.cpu_cores = Some(1.5);
        let (devices, _) = discover(&config);
        assert_eq!(devices.len(), 1);
        assert_eq!(devices[0].kind, DeviceKind::Cpu);
        assert_eq!(devices[0].capacity_per_window, Some(7_500_000));
        config.cpu_devices = 3;
        config.cpu_cores = Some(1.5);
        let (devices, _) = discover(&config);
        assert_eq!(devices.len(), 3);
        assert_eq!(devices[2].capacity_per_window, Some(2_500_000));
        config.cpu_cores = Some(0.0);
        assert!(discover(&config).0.is_empty());
    }
}
