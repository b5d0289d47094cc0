//! The scheduler service: places instances on the node's devices with a `dilu-core` [`Placer`] (Dilu's
//! complementary 2D best-fit by default) over a [`Cluster`] ledger kept in step with the instances that
//! exist, so the platform and the simulator make the same decisions.

use std::collections::HashMap;

use dilu_agent::device::Device;
use dilu_core::cluster::{Cluster, NodeSpec, Placement};
use dilu_core::placement::{Placer, PlacerConfig, PolicyName, build_placer};
use dilu_core::request::{InstanceKind, InstanceRequest, SM_MILLI};
use dilu_quota::DeviceKind;

/// Why an instance could not be placed.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ScheduleError {
    /// No device has room under the policy's admission rules.
    #[error("unschedulable: {0}")]
    Unschedulable(String),
    /// The node reports no device to place on.
    #[error("node {0} has no device to place instances on")]
    NoDevices(String),
    /// The ledger refused the placement (a bug, reported rather than hidden).
    #[error("ledger: {0}")]
    Ledger(String),
}

/// What an instance asks of a device.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Ask {
    /// Inference or training.
    pub kind: InstanceKind,
    /// Guaranteed share, (0, 1].
    pub request: f64,
    /// Burst limit, [request, 1].
    pub limit: f64,
    /// Memory cap in bytes, if any.
    pub memory_bytes: Option<u64>,
}

/// Places instances on one node's devices.
pub struct Scheduler {
    node: String,
    devices: Vec<Device>,
    cluster: Cluster,
    placer: Box<dyn Placer>,
    placements: HashMap<String, Placement>,
    next: u64,
}

fn milli(share: f64) -> u32 {
    ((share * f64::from(SM_MILLI)).round() as u32).clamp(1, SM_MILLI)
}

impl Scheduler {
    /// A scheduler for `node`'s devices (its GPUs when it has any, else its CPU device) with `policy`.
    pub fn new(
        node: &str,
        devices: &[Device],
        policy: PolicyName,
    ) -> Result<Scheduler, ScheduleError> {
        let gpus: Vec<Device> = devices
            .iter()
            .filter(|d| d.kind == DeviceKind::Gpu)
            .cloned()
            .collect();
        let devices = if gpus.is_empty() {
            devices.to_vec()
        } else {
            gpus
        };
        if devices.is_empty() {
            return Err(ScheduleError::NoDevices(node.to_string()));
        }
        // A device of unknown memory (the CPU device reports none) does not limit placement by memory.
        let mem_mib = devices
            .iter()
            .map(|d| match d.memory_bytes >> 20 {
                0 => u64::from(u32::MAX),
                mib => mib,
            })
            .min()
            .unwrap_or(u64::from(u32::MAX));
        let model = if devices[0].kind == DeviceKind::Gpu {
            "gpu"
        } else {
            "cpu"
        };
        let cluster = Cluster::new(vec![NodeSpec {
            name: node.to_string(),
            cpu_milli: u64::from(u32::MAX),
            mem_mib: u64::from(u32::MAX),
            gpu_model: model.to_string(),
            gpu_count: devices.len() as u32,
            gpu_mem_mib: mem_mib,
            max_pods: 100_000,
        }])
        .map_err(|e| ScheduleError::Ledger(e.to_string()))?;
        let placer = build_placer(policy, &cluster, &PlacerConfig::default())
            .map_err(|e| ScheduleError::Ledger(e.to_string()))?;
        Ok(Scheduler {
            node: node.to_string(),
            devices,
            cluster,
            placer,
            placements: HashMap::new(),
            next: 1,
        })
    }

    /// The placement policy's name.
    pub fn policy(&self) -> &'static str {
        self.placer.name()
    }

    fn request(&self, function: &str, ask: &Ask) -> InstanceRequest {
        InstanceRequest {
            kind: ask.kind,
            service: Some(function.to_string()),
            gpu_count: 1,
            sm_request: milli(ask.request),
            sm_limit: milli(ask.limit).max(milli(ask.request)),
            gpu_mem_mib: ask.memory_bytes.map(|b| (b >> 20).max(1)).unwrap_or(0),
            cpu_milli: 0,
            mem_mib: 0,
            gpu_types: Vec::new(),
        }
    }

    /// Chooses a device for a new instance of `function` and reserves it under `key` (release it with
    /// [`Scheduler::release`] if the instance is not started). Returns the device UUID.
    pub fn place(&mut self, key: &str, function: &str, ask: &Ask) -> Result<String, ScheduleError> {
        let req = self.request(function, ask);
        let mut placement = self
            .placer
            .place(&self.cluster, &req)
            .map_err(|e| ScheduleError::Unschedulable(e.to_string()))?;
        placement.instance = self.next;
        self.next += 1;
        self.cluster
            .allocate(&placement)
            .map_err(|e| ScheduleError::Ledger(e.to_string()))?;
        let gpu = placement.shares.first().map(|s| s.gpu).unwrap_or(0) as usize;
        let device = self
            .devices
            .get(gpu)
            .map(|d| d.uuid.clone())
            .ok_or_else(|| ScheduleError::Ledger(format!("placer chose device index {gpu}")))?;
        self.placements.insert(key.to_string(), placement);
        Ok(device)
    }

    /// Records an instance that already runs on `device` (re-adopted after a restart), so the ledger matches
    /// the node. Admission rules are not applied: the instance exists.
    pub fn adopt(
        &mut self,
        key: &str,
        function: &str,
        device: &str,
        ask: &Ask,
    ) -> Result<(), ScheduleError> {
        let gpu = self
            .devices
            .iter()
            .position(|d| d.uuid == device)
            .ok_or_else(|| {
                ScheduleError::Ledger(format!("device {device} is not on node {}", self.node))
            })?;
        let req = self.request(function, ask);
        let mut placement = Placement::uniform(0, &req, &[gpu as u32]);
        placement.instance = self.next;
        self.next += 1;
        self.cluster
            .allocate(&placement)
            .map_err(|e| ScheduleError::Ledger(e.to_string()))?;
        self.placements.insert(key.to_string(), placement);
        Ok(())
    }

    /// Changes a placed instance's reservation (after a quota change).
    pub fn resize(&mut self, key: &str, function: &str, ask: &Ask) -> Result<(), ScheduleError> {
        let Some(old) = self.placements.remove(key) else {
            return Ok(());
        };
        self.cluster
            .release(&old)
            .map_err(|e| ScheduleError::Ledger(e.to_string()))?;
        let req = self.request(function, ask);
        let gpus: Vec<u32> = old.shares.iter().map(|s| s.gpu).collect();
        let mut placement = Placement::uniform(old.node, &req, &gpus);
        placement.instance = old.instance;
        self.cluster
            .allocate(&placement)
            .map_err(|e| ScheduleError::Ledger(e.to_string()))?;
        self.placements.insert(key.to_string(), placement);
        Ok(())
    }

    /// Frees an instance's reservation (no-op for an unknown key).
    pub fn release(&mut self, key: &str) {
        if let Some(p) = self.placements.remove(key) {
            let _ = self.cluster.release(&p);
        }
    }

    /// Σ requests on each device, as the ledger sees it (UUID, fraction).
    pub fn requested(&self) -> Vec<(String, f64)> {
        let node = &self.cluster.nodes()[0];
        self.devices
            .iter()
            .zip(&node.gpus)
            .map(|(d, g)| {
                (
                    d.uuid.clone(),
                    f64::from(g.sm_request) / f64::from(SM_MILLI),
                )
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cpu() -> Device {
        Device {
            uuid: "CPU-test".into(),
            name: "cpu".into(),
            kind: DeviceKind::Cpu,
            memory_bytes: 8 << 30,
            sm_count: None,
            cores: Some(2.0),
            capacity_per_window: Some(10_000_000),
            source: "cpu",
        }
    }

    fn ask(kind: InstanceKind, request: f64, limit: f64) -> Ask {
        Ask {
            kind,
            request,
            limit,
            memory_bytes: None,
        }
    }

    #[test]
    fn places_until_requests_fill_the_device_then_refuses() {
        let mut s = Scheduler::new("local", &[cpu()], PolicyName::Dilu).unwrap();
        assert_eq!(s.policy(), "dilu");
        for i in 0..4 {
            let d = s
                .place(
                    &format!("i{i}"),
                    "f",
                    &ask(InstanceKind::Inference, 0.25, 0.3),
                )
                .unwrap();
            assert_eq!(d, "CPU-test");
        }
        assert!((s.requested()[0].1 - 1.0).abs() < 1e-9);
        let e = s
            .place("i5", "f", &ask(InstanceKind::Inference, 0.1, 0.1))
            .unwrap_err();
        assert!(matches!(e, ScheduleError::Unschedulable(_)), "{e}");
        s.release("i0");
        s.place("i5", "f", &ask(InstanceKind::Training, 0.2, 0.3))
            .unwrap();
        s.resize("i5", "f", &ask(InstanceKind::Training, 0.1, 0.3))
            .unwrap();
        assert!((s.requested()[0].1 - 0.85).abs() < 1e-9);
    }

    #[test]
    fn adopted_instances_count_against_the_device() {
        let mut s = Scheduler::new("local", &[cpu()], PolicyName::Dilu).unwrap();
        s.adopt(
            "old",
            "f",
            "CPU-test",
            &ask(InstanceKind::Inference, 0.9, 1.0),
        )
        .unwrap();
        assert!(
            s.place("new", "f", &ask(InstanceKind::Inference, 0.2, 0.2))
                .is_err()
        );
        assert!(
            s.adopt(
                "x",
                "f",
                "GPU-nope",
                &ask(InstanceKind::Inference, 0.1, 0.1)
            )
            .is_err()
        );
    }
}
