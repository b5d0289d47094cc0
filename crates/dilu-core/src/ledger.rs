//! The ledger of a live cluster: which instance holds what on which device, keyed by the caller's instance key
//! and addressed by (node, device UUID). Every scheduler of the platform places through it with a
//! [`Placer`], so live placement makes the same decisions as the simulator's, and admission is checked once,
//! here (`docs/architecture.md`).
//!
//! Devices come in two classes ([`DeviceClass`]): GPUs and CPU devices. Each class is its own pool with its own
//! cluster model, and an instance is placed in the pool of the class its runtime runs on, so an instance that
//! needs a CPU device is never given a GPU of the same node, nor the reverse.
//!
//! - [`Ledger::place`] asks the placer for a device of the instance's class and books it;
//! - [`Ledger::adopt`] books an instance that already runs (after a restart) without asking the placer;
//! - [`Ledger::resize`] changes an instance's booking in place and never loses it: when the new booking does
//!   not fit, the old one stays and the error says why;
//! - [`Ledger::release`] frees it;
//! - [`Ledger::set_nodes`] follows nodes that appear and disappear, keeping the bookings on devices that remain.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::cluster::{Cluster, NodeSpec, Placement};
use crate::placement::{PlacementScore, Placer};
use crate::request::{InstanceRequest, SM_MILLI};
use crate::scheduling::{PlacementRules, Spread, SpreadDomain, Taint, exclude_for_spread};

/// A device a node offers, as the ledger needs it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct DeviceInventory {
    /// Its UUID (`GPU-…`, `CPU-…`).
    pub uuid: String,
    /// Memory in MiB; 0 when unknown (the CPU device), which does not limit placement.
    pub memory_mib: u64,
    /// Whether it is a GPU (else a CPU device): which pool it is placed in.
    pub gpu: bool,
}

impl DeviceInventory {
    /// The class of the device.
    pub fn class(&self) -> DeviceClass {
        if self.gpu {
            DeviceClass::Gpu
        } else {
            DeviceClass::Cpu
        }
    }
}

/// What kind of device an instance runs on: a runtime that launches CUDA kernels needs a GPU; one that computes
/// on the CPU (the built-in ONNX worker and trainer today) needs a CPU device, whose channel budgets CPU time.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default, Serialize, Deserialize,
)]
#[serde(rename_all = "lowercase")]
pub enum DeviceClass {
    /// A GPU.
    #[default]
    Gpu,
    /// The CPU device.
    Cpu,
}

impl DeviceClass {
    /// Both classes.
    pub const ALL: [DeviceClass; 2] = [DeviceClass::Gpu, DeviceClass::Cpu];

    /// The name used on the wire (`gpu`, `cpu`).
    pub fn as_str(self) -> &'static str {
        match self {
            DeviceClass::Gpu => "gpu",
            DeviceClass::Cpu => "cpu",
        }
    }
}

/// A node and its devices.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct NodeInventory {
    /// Unique node name.
    pub name: String,
    /// Its devices.
    pub devices: Vec<DeviceInventory>,
    /// Its labels (a Kubernetes Node's; none on `dilu up`): what node selectors and affinity match.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
    /// Its taints (a Kubernetes Node's): instances that do not tolerate one are not placed there.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub taints: Vec<Taint>,
}

/// Where an instance runs: a node and one of its devices.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
pub struct DeviceRef {
    /// Node name.
    pub node: String,
    /// Device UUID.
    pub device: String,
}

/// Why the ledger refused.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum LedgerError {
    /// No device has room under the placer's admission rules.
    #[error("unschedulable: {0}")]
    Unschedulable(String),
    /// The instance's placement rules allow no node with a device of its class (selector, affinity, taints):
    /// making room elsewhere would not help.
    #[error("unschedulable: {0}")]
    NoNodeAllowed(String),
    /// The device is not in the inventory.
    #[error("device {device} is not on node {node}")]
    UnknownDevice {
        /// Node name.
        node: String,
        /// Device UUID.
        device: String,
    },
    /// The booking does not fit the device (adopting or resizing over its capacity).
    #[error("{key}: {reason}")]
    DoesNotFit {
        /// The instance key.
        key: String,
        /// Why.
        reason: String,
    },
    /// A key with no booking.
    #[error("no booking for instance {0}")]
    UnknownKey(String),
    /// A key that is booked already.
    #[error("instance {0} is booked already")]
    Duplicate(String),
    /// The inventory cannot form a cluster.
    #[error("inventory: {0}")]
    Inventory(String),
}

#[derive(Debug, Clone)]
struct Booking {
    class: DeviceClass,
    placement: Placement,
    request: InstanceRequest,
    at: DeviceRef,
    /// Why the placer chose it (none for an adopted instance or a placer without a score).
    score: Option<PlacementScore>,
}

/// The devices of one class, by node (nodes without such a device left out), and their cluster model; a
/// placement's node and device indices point into it.
struct Pool {
    nodes: Vec<NodeInventory>,
    cluster: Cluster,
}

impl Pool {
    fn new(nodes: &[NodeInventory], class: DeviceClass) -> Result<Pool, LedgerError> {
        let nodes: Vec<NodeInventory> = nodes
            .iter()
            .map(|n| NodeInventory {
                devices: n
                    .devices
                    .iter()
                    .filter(|d| d.class() == class)
                    .cloned()
                    .collect(),
                ..n.clone()
            })
            .filter(|n| !n.devices.is_empty())
            .collect();
        Ok(Pool {
            cluster: cluster_of(&nodes)?,
            nodes,
        })
    }

    fn index_of(&self, at: &DeviceRef) -> Option<(usize, u32)> {
        let node = self.nodes.iter().position(|n| n.name == at.node)?;
        let gpu = self.nodes[node]
            .devices
            .iter()
            .position(|d| d.uuid == at.device)?;
        Some((node, gpu as u32))
    }
}

/// "2 didn't match the node selector, 1 had the taint …": nodes counted per reason.
fn count_reasons(refused: &BTreeMap<String, usize>) -> String {
    refused
        .iter()
        .map(|(why, n)| format!("{n} {why}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// What a required spread left out, for a refusal: "; 2 nodes left out to keep its replicas spread …".
fn spread_refusal(spread: &Spread, skewed: usize) -> String {
    let (unit, across) = match &spread.across {
        SpreadDomain::Device => ("device", String::new()),
        SpreadDomain::Node => ("node", String::new()),
        SpreadDomain::Label(key) => ("node", format!(" across {key}")),
    };
    let plural = if skewed == 1 { "" } else { "s" };
    format!(
        "; {skewed} {unit}{plural} left out to keep its replicas spread{across} (required, max skew {})",
        spread.max_skew
    )
}

/// The ledger.
pub struct Ledger {
    nodes: Vec<NodeInventory>,
    gpus: Pool,
    cpus: Pool,
    placer: Box<dyn Placer>,
    bookings: BTreeMap<String, Booking>,
    next: u64,
}

fn cluster_of(nodes: &[NodeInventory]) -> Result<Cluster, LedgerError> {
    let specs = nodes
        .iter()
        .map(|n| NodeSpec {
            name: n.name.clone(),
            cpu_milli: u64::from(u32::MAX),
            mem_mib: u64::from(u32::MAX),
            gpu_model: if n.devices.iter().any(|d| d.gpu) {
                "gpu".into()
            } else {
                "cpu".into()
            },
            gpu_count: n.devices.len() as u32,
            // One memory size per node: the smallest device's; unknown memory does not limit.
            gpu_mem_mib: n
                .devices
                .iter()
                .map(|d| match d.memory_mib {
                    0 => u64::from(u32::MAX),
                    mib => mib,
                })
                .min()
                .unwrap_or(u64::from(u32::MAX)),
            max_pods: 100_000,
        })
        .collect();
    Cluster::new(specs).map_err(|e| LedgerError::Inventory(e.to_string()))
}

impl Ledger {
    /// A ledger over `nodes` placing with `placer`.
    pub fn new(nodes: &[NodeInventory], placer: Box<dyn Placer>) -> Result<Ledger, LedgerError> {
        Ok(Ledger {
            gpus: Pool::new(nodes, DeviceClass::Gpu)?,
            cpus: Pool::new(nodes, DeviceClass::Cpu)?,
            nodes: nodes.to_vec(),
            placer,
            bookings: BTreeMap::new(),
            next: 1,
        })
    }

    /// The placer's name.
    pub fn placer_name(&self) -> &'static str {
        self.placer.name()
    }

    /// The nodes and all their devices.
    pub fn nodes(&self) -> &[NodeInventory] {
        &self.nodes
    }

    fn pool(&self, class: DeviceClass) -> &Pool {
        match class {
            DeviceClass::Gpu => &self.gpus,
            DeviceClass::Cpu => &self.cpus,
        }
    }

    fn pool_mut(&mut self, class: DeviceClass) -> &mut Pool {
        match class {
            DeviceClass::Gpu => &mut self.gpus,
            DeviceClass::Cpu => &mut self.cpus,
        }
    }

    /// The class of the device `at`, and its indices in that class's pool.
    fn index_of(&self, at: &DeviceRef) -> Result<(DeviceClass, usize, u32), LedgerError> {
        DeviceClass::ALL
            .iter()
            .find_map(|&class| {
                self.pool(class)
                    .index_of(at)
                    .map(|(node, gpu)| (class, node, gpu))
            })
            .ok_or_else(|| LedgerError::UnknownDevice {
                node: at.node.clone(),
                device: at.device.clone(),
            })
    }

    fn device_ref(
        &self,
        class: DeviceClass,
        placement: &Placement,
    ) -> Result<DeviceRef, LedgerError> {
        let gpu = placement.shares.first().map(|s| s.gpu).unwrap_or(0) as usize;
        let node = self
            .pool(class)
            .nodes
            .get(placement.node)
            .ok_or_else(|| LedgerError::Inventory(format!("no node {}", placement.node)))?;
        let device = node.devices.get(gpu).ok_or_else(|| {
            LedgerError::Inventory(format!("node {} has no device {gpu}", node.name))
        })?;
        Ok(DeviceRef {
            node: node.name.clone(),
            device: device.uuid.clone(),
        })
    }

    fn book(
        &mut self,
        key: &str,
        class: DeviceClass,
        mut placement: Placement,
        request: InstanceRequest,
    ) -> Result<DeviceRef, LedgerError> {
        placement.instance = self.next;
        self.pool_mut(class)
            .cluster
            .allocate(&placement)
            .map_err(|e| LedgerError::DoesNotFit {
                key: key.to_string(),
                reason: e.to_string(),
            })?;
        self.next += 1;
        let at = self.device_ref(class, &placement)?;
        self.bookings.insert(
            key.to_string(),
            Booking {
                class,
                placement,
                request,
                at: at.clone(),
                score: None,
            },
        );
        Ok(at)
    }

    /// The first of `classes` some node has devices of (`None` when no node has any of them): where an
    /// instance that prefers these classes, in this order, is placed.
    pub fn first_class(&self, classes: &[DeviceClass]) -> Option<DeviceClass> {
        classes
            .iter()
            .copied()
            .find(|c| !self.pool(*c).nodes.is_empty())
    }

    /// Chooses a device of `class` for a new instance and books it under `key`, on any node without a
    /// forbidding taint ([`Ledger::place_where`] with the default rules).
    pub fn place(
        &mut self,
        key: &str,
        request: &InstanceRequest,
        class: DeviceClass,
    ) -> Result<DeviceRef, LedgerError> {
        self.place_where(key, request, class, &PlacementRules::default())
    }

    /// Chooses a device of `class` for a new instance where `rules` allow and books it under `key`. Nodes the
    /// rules forbid, and nodes or devices that would break the spread of the instance's function
    /// (`request.service`), are marked excluded in the pool's cluster model for this one call: the placer
    /// ranks the rest with its policy unchanged. When nothing is left, or nothing left has room, the error
    /// counts the nodes refused per reason (as kube-scheduler's "0/N nodes are available" does). A spread that
    /// is only preferred is given up when keeping it leaves no room.
    pub fn place_where(
        &mut self,
        key: &str,
        request: &InstanceRequest,
        class: DeviceClass,
        rules: &PlacementRules,
    ) -> Result<DeviceRef, LedgerError> {
        if self.bookings.contains_key(key) {
            return Err(LedgerError::Duplicate(key.to_string()));
        }
        let spread = rules.spread.as_ref().zip(request.service.as_deref());
        let (pool, placer) = match class {
            DeviceClass::Gpu => (&mut self.gpus, &mut self.placer),
            DeviceClass::Cpu => (&mut self.cpus, &mut self.placer),
        };
        if pool.nodes.is_empty() {
            return Err(LedgerError::Unschedulable(format!(
                "no node has a {} device",
                class.as_str()
            )));
        }
        let total = pool.nodes.len();
        let mut refused: BTreeMap<String, usize> = BTreeMap::new();
        let mut allowed = vec![true; total];
        for (i, node) in pool.nodes.iter().enumerate() {
            if let Err(why) = rules.check(node) {
                allowed[i] = false;
                *refused.entry(why.to_string()).or_default() += 1;
            }
        }
        let excluded = total - allowed.iter().filter(|a| **a).count();
        if excluded == total {
            return Err(LedgerError::NoNodeAllowed(format!(
                "0/{total} nodes with a {} device are available to it: {}",
                class.as_str(),
                count_reasons(&refused)
            )));
        }
        // Allowed nodes with a PreferNoSchedule taint it does not tolerate are avoided while others are open.
        let avoid: Vec<bool> = pool
            .nodes
            .iter()
            .enumerate()
            .map(|(i, n)| allowed[i] && rules.avoids(n))
            .collect();
        let avoiding = avoid.contains(&true) && (0..total).any(|i| allowed[i] && !avoid[i]);
        // Marks the nodes the rules forbid, then those (or the GPUs) the spread leaves out, counted among the
        // allowed ones, then the avoided ones; returns how many the spread left out.
        let mark = |cluster: &mut Cluster, avoiding: bool, spread: Option<(&Spread, &str)>| {
            cluster.clear_excluded();
            for (i, a) in allowed.iter().enumerate() {
                cluster.set_excluded(i, !a);
            }
            let skewed = spread.map_or(0, |(spread, service)| {
                exclude_for_spread(cluster, service, spread, &|i, key| {
                    pool.nodes.get(i)?.labels.get(key).cloned()
                })
            });
            if avoiding {
                for (i, a) in avoid.iter().enumerate() {
                    if *a {
                        cluster.set_excluded(i, true);
                    }
                }
            }
            skewed
        };
        let mut skewed = mark(&mut pool.cluster, avoiding, spread);
        let mut chosen = placer.place(&pool.cluster, request);
        if chosen.is_err() && avoiding {
            // Nothing fits off the avoided nodes: they are allowed after all.
            skewed = mark(&mut pool.cluster, false, spread);
            chosen = placer.place(&pool.cluster, request);
        }
        if chosen.is_err()
            && skewed > 0
            && let Some((s, _)) = spread
            && !s.required
        {
            // Only preferred: place as if there were no spread.
            skewed = mark(&mut pool.cluster, false, None);
            chosen = placer.place(&pool.cluster, request);
        }
        let chosen = chosen
            .map(|placement| {
                let score = placer.explain(&pool.cluster, request, &placement);
                (placement, score)
            })
            .map_err(|e| {
                let mut why = e.to_string();
                if !refused.is_empty() {
                    why += &format!(
                        " on the {} of {total} nodes with a {} device it may run on (the others: {})",
                        total - excluded,
                        class.as_str(),
                        count_reasons(&refused)
                    );
                }
                if let Some((s, _)) = spread.filter(|_| skewed > 0) {
                    why += &spread_refusal(s, skewed);
                }
                LedgerError::Unschedulable(why)
            });
        pool.cluster.clear_excluded();
        let (placement, score) = chosen?;
        let at = self.book(key, class, placement, request.clone())?;
        if let Some(booking) = self.bookings.get_mut(key) {
            booking.score = score;
        }
        Ok(at)
    }

    /// The score the placer chose `key`'s device by, if it ranks by one.
    pub fn score(&self, key: &str) -> Option<&PlacementScore> {
        self.bookings.get(key)?.score.as_ref()
    }

    /// Books an instance that already runs on `at` (adopted after a restart): the placer is not asked, but
    /// the device's capacity still holds.
    pub fn adopt(
        &mut self,
        key: &str,
        at: &DeviceRef,
        request: &InstanceRequest,
    ) -> Result<(), LedgerError> {
        if self.bookings.contains_key(key) {
            return Err(LedgerError::Duplicate(key.to_string()));
        }
        let (class, node, gpu) = self.index_of(at)?;
        let placement = Placement::uniform(node, request, &[gpu]);
        self.book(key, class, placement, request.clone())
            .map(|_| ())
    }

    /// Changes the booking of `key` to `request` on the same device. When it does not fit, the old booking
    /// stays and the error says why.
    pub fn resize(&mut self, key: &str, request: &InstanceRequest) -> Result<(), LedgerError> {
        let old = self
            .bookings
            .get(key)
            .cloned()
            .ok_or_else(|| LedgerError::UnknownKey(key.to_string()))?;
        let cluster = &mut self.pool_mut(old.class).cluster;
        cluster
            .release(&old.placement)
            .map_err(|e| LedgerError::Inventory(e.to_string()))?;
        let gpus: Vec<u32> = old.placement.shares.iter().map(|s| s.gpu).collect();
        let mut placement = Placement::uniform(old.placement.node, request, &gpus);
        placement.instance = old.placement.instance;
        match cluster.allocate(&placement) {
            Ok(()) => {
                self.bookings.insert(
                    key.to_string(),
                    Booking {
                        placement,
                        request: request.clone(),
                        ..old
                    },
                );
                Ok(())
            }
            Err(e) => {
                // Put the old booking back: it was allocated a moment ago, so it fits again.
                cluster
                    .allocate(&old.placement)
                    .map_err(|e| LedgerError::Inventory(e.to_string()))?;
                Err(LedgerError::DoesNotFit {
                    key: key.to_string(),
                    reason: e.to_string(),
                })
            }
        }
    }

    /// Whether the booking of `key` could change to `request` (nothing changes either way).
    pub fn check_resize(
        &mut self,
        key: &str,
        request: &InstanceRequest,
    ) -> Result<(), LedgerError> {
        let old = self
            .bookings
            .get(key)
            .map(|b| b.request.clone())
            .ok_or_else(|| LedgerError::UnknownKey(key.to_string()))?;
        self.resize(key, request)?;
        self.resize(key, &old)
    }

    /// Frees the booking of `key`; `false` when there was none.
    pub fn release(&mut self, key: &str) -> bool {
        match self.bookings.remove(key) {
            Some(b) => {
                // A booking always matches the cluster's live placement, so this cannot fail.
                let _ = self.pool_mut(b.class).cluster.release(&b.placement);
                true
            }
            None => false,
        }
    }

    /// Whether `key` is booked.
    pub fn contains(&self, key: &str) -> bool {
        self.bookings.contains_key(key)
    }

    /// Every booked key.
    pub fn keys(&self) -> impl Iterator<Item = &str> {
        self.bookings.keys().map(String::as_str)
    }

    /// Where `key` is booked.
    pub fn device_of(&self, key: &str) -> Option<&DeviceRef> {
        self.bookings.get(key).map(|b| &b.at)
    }

    /// What `key` is booked with.
    pub fn request_of(&self, key: &str) -> Option<&InstanceRequest> {
        self.bookings.get(key).map(|b| &b.request)
    }

    /// Σ requests on a device, as a fraction of it (0 for an unknown device).
    pub fn requested(&self, at: &DeviceRef) -> f64 {
        self.index_of(at).map_or(0.0, |(class, node, gpu)| {
            f64::from(self.pool(class).cluster.nodes()[node].gpus[gpu as usize].sm_request)
                / f64::from(SM_MILLI)
        })
    }

    /// The part of a device no booking requests.
    pub fn free_share(&self, at: &DeviceRef) -> f64 {
        (1.0 - self.requested(at)).max(0.0)
    }

    /// Every device with Σ requests on it.
    pub fn devices(&self) -> Vec<(DeviceRef, f64)> {
        self.nodes
            .iter()
            .flat_map(|n| {
                n.devices.iter().map(|d| DeviceRef {
                    node: n.name.clone(),
                    device: d.uuid.clone(),
                })
            })
            .map(|at| {
                let r = self.requested(&at);
                (at, r)
            })
            .collect()
    }

    /// Follows a new inventory: bookings on devices that remain are kept; the keys of bookings whose device is
    /// gone are returned (their instances went with it).
    pub fn set_nodes(&mut self, nodes: &[NodeInventory]) -> Result<Vec<String>, LedgerError> {
        if nodes == self.nodes.as_slice() {
            return Ok(Vec::new());
        }
        let gpus = Pool::new(nodes, DeviceClass::Gpu)?;
        let cpus = Pool::new(nodes, DeviceClass::Cpu)?;
        let old = std::mem::take(&mut self.bookings);
        (self.gpus, self.cpus) = (gpus, cpus);
        self.nodes = nodes.to_vec();
        let mut lost = Vec::new();
        for (key, b) in old {
            if self.adopt(&key, &b.at, &b.request).is_err() {
                lost.push(key);
            }
        }
        Ok(lost)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::placement::DiluPlacer;
    use crate::request::InstanceKind;
    use std::collections::BTreeSet;

    fn node(name: &str, devices: &[&str]) -> NodeInventory {
        NodeInventory {
            name: name.into(),
            devices: devices
                .iter()
                .map(|d| DeviceInventory {
                    uuid: (*d).into(),
                    memory_mib: 0,
                    gpu: d.starts_with("GPU"),
                })
                .collect(),
            ..Default::default()
        }
    }

    fn ask(kind: InstanceKind, request: f64, limit: f64) -> InstanceRequest {
        let m = |x: f64| (x * 1000.0).round() as u32;
        InstanceRequest {
            kind,
            service: Some("f".into()),
            gpu_count: 1,
            sm_request: m(request),
            sm_limit: m(limit),
            gpu_mem_mib: 0,
            cpu_milli: 0,
            mem_mib: 0,
            gpu_types: Vec::new(),
        }
    }

    fn ledger(nodes: &[NodeInventory]) -> Ledger {
        Ledger::new(nodes, Box::new(DiluPlacer::new(Default::default()))).unwrap()
    }

    #[test]
    fn places_until_requests_fill_the_device_then_refuses() {
        let mut l = ledger(&[node("local", &["CPU-a"])]);
        assert_eq!(l.placer_name(), "dilu");
        for i in 0..4 {
            let at = l
                .place(
                    &format!("i{i}"),
                    &ask(InstanceKind::Inference, 0.25, 0.3),
                    DeviceClass::Cpu,
                )
                .unwrap();
            assert_eq!((at.node.as_str(), at.device.as_str()), ("local", "CPU-a"));
        }
        let at = l.device_of("i0").unwrap().clone();
        assert!((l.requested(&at) - 1.0).abs() < 1e-9);
        let e = l
            .place(
                "i5",
                &ask(InstanceKind::Inference, 0.1, 0.1),
                DeviceClass::Cpu,
            )
            .unwrap_err();
        assert!(matches!(e, LedgerError::Unschedulable(_)), "{e}");
        assert!(l.release("i0"));
        assert!(!l.release("i0"));
        l.place(
            "i5",
            &ask(InstanceKind::Training, 0.2, 0.3),
            DeviceClass::Cpu,
        )
        .unwrap();
        l.resize("i5", &ask(InstanceKind::Training, 0.1, 0.3))
            .unwrap();
        assert!((l.requested(&at) - 0.85).abs() < 1e-9);
    }

    #[test]
    fn each_booking_keeps_the_score_the_placer_chose_it_by() {
        // Nothing asks for device memory here: Dilu's fit is 0.6 × (SM request left free) + 0.4 × 1.
        let mut l = ledger(&[node("local", &["CPU-a", "CPU-b"])]);
        l.place(
            "a",
            &ask(InstanceKind::Inference, 0.5, 0.6),
            DeviceClass::Cpu,
        )
        .unwrap();
        let a = l.score("a").unwrap().clone();
        assert_eq!(a.tier, Some("idle device on an empty node"));
        assert!((a.value - (0.6 * 0.5 + 0.4)).abs() < 1e-9, "{a:?}");
        // The second goes beside the first (an active device beats an idle one) and leaves 0.2 free.
        let at = l
            .place(
                "b",
                &ask(InstanceKind::Inference, 0.3, 0.3),
                DeviceClass::Cpu,
            )
            .unwrap();
        assert_eq!(&at, l.device_of("a").unwrap());
        let b = l.score("b").unwrap();
        assert_eq!(b.tier, Some("active device"));
        assert!((b.value - (0.6 * 0.2 + 0.4)).abs() < 1e-9, "{b:?}");
        let adopted = l.device_of("a").unwrap().clone();
        l.adopt("c", &adopted, &ask(InstanceKind::Inference, 0.1, 0.1))
            .unwrap();
        assert_eq!(l.score("c"), None, "an adopted instance was not placed");
        assert_eq!(l.score("missing"), None);
    }

    #[test]
    fn a_resize_that_does_not_fit_keeps_the_old_booking() {
        let mut l = ledger(&[node("local", &["CPU-a"])]);
        l.place(
            "a",
            &ask(InstanceKind::Inference, 0.6, 0.6),
            DeviceClass::Cpu,
        )
        .unwrap();
        l.place(
            "b",
            &ask(InstanceKind::Inference, 0.3, 0.3),
            DeviceClass::Cpu,
        )
        .unwrap();
        let e = l
            .resize("b", &ask(InstanceKind::Inference, 0.5, 0.5))
            .unwrap_err();
        assert!(matches!(e, LedgerError::DoesNotFit { .. }), "{e}");
        assert!(l.contains("b"));
        assert_eq!(l.request_of("b").unwrap().sm_request, 300);
        assert!(
            l.check_resize("b", &ask(InstanceKind::Inference, 0.5, 0.5))
                .is_err()
        );
        l.check_resize("b", &ask(InstanceKind::Inference, 0.4, 0.5))
            .unwrap();
        assert_eq!(
            l.request_of("b").unwrap().sm_request,
            300,
            "a check changes nothing"
        );
        let at = l.device_of("b").unwrap().clone();
        assert!((l.requested(&at) - 0.9).abs() < 1e-9);
    }

    #[test]
    fn adopted_instances_count_and_devices_are_addressed_by_node() {
        let mut l = ledger(&[
            node("n1", &["GPU-1", "GPU-2", "CPU-x"]),
            node("n2", &["GPU-3"]),
        ]);
        assert_eq!(l.nodes()[0].devices.len(), 3, "every device of the node");
        let at = DeviceRef {
            node: "n2".into(),
            device: "GPU-3".into(),
        };
        l.adopt("old", &at, &ask(InstanceKind::Inference, 0.9, 1.0))
            .unwrap();
        assert!(matches!(
            l.adopt("x", &at, &ask(InstanceKind::Inference, 0.2, 0.2)),
            Err(LedgerError::DoesNotFit { .. })
        ));
        let wrong = DeviceRef {
            node: "n1".into(),
            device: "GPU-3".into(),
        };
        assert!(matches!(
            l.adopt("y", &wrong, &ask(InstanceKind::Inference, 0.1, 0.1)),
            Err(LedgerError::UnknownDevice { .. })
        ));
        // A node that goes away takes its bookings with it.
        let lost = l.set_nodes(&[node("n1", &["GPU-1", "GPU-2"])]).unwrap();
        assert_eq!(lost, vec!["old".to_string()]);
        assert!(!l.contains("old"));
    }

    #[test]
    fn each_instance_is_placed_on_a_device_of_its_class_even_on_a_node_with_both() {
        let mut l = ledger(&[node("n1", &["GPU-1", "CPU-n1"]), node("n2", &["CPU-n2"])]);
        let gpu = l
            .place(
                "g",
                &ask(InstanceKind::Inference, 0.5, 0.5),
                DeviceClass::Gpu,
            )
            .unwrap();
        assert_eq!(gpu.device, "GPU-1");
        for i in 0..3 {
            let at = l
                .place(
                    &format!("c{i}"),
                    &ask(InstanceKind::Inference, 0.5, 0.5),
                    DeviceClass::Cpu,
                )
                .unwrap();
            assert!(at.device.starts_with("CPU-"), "{at:?}");
        }
        // A fourth half fills the two CPU devices; a fifth fits nowhere, though the GPU has room: not its class.
        l.place(
            "c3",
            &ask(InstanceKind::Inference, 0.5, 0.5),
            DeviceClass::Cpu,
        )
        .unwrap();
        let e = l
            .place(
                "c4",
                &ask(InstanceKind::Inference, 0.5, 0.5),
                DeviceClass::Cpu,
            )
            .unwrap_err();
        assert!(matches!(e, LedgerError::Unschedulable(_)), "{e}");
        // Requests are counted per device, whatever its class; an adopted instance finds its class by its device.
        let cpu = DeviceRef {
            node: "n1".into(),
            device: "CPU-n1".into(),
        };
        assert!((l.requested(&cpu) - 1.0).abs() < 1e-9);
        assert!((l.requested(&gpu) - 0.5).abs() < 1e-9);
        l.adopt("g2", &gpu, &ask(InstanceKind::Training, 0.5, 0.5))
            .unwrap();
        assert!((l.requested(&gpu) - 1.0).abs() < 1e-9);
        // A node without a GPU offers none.
        let mut cpu_only = ledger(&[node("n2", &["CPU-n2"])]);
        let e = cpu_only
            .place(
                "g",
                &ask(InstanceKind::Inference, 0.1, 0.1),
                DeviceClass::Gpu,
            )
            .unwrap_err();
        assert!(e.to_string().contains("no node has a gpu device"), "{e}");
    }

    fn labelled(name: &str, device: &str, zone: &str, taints: &[Taint]) -> NodeInventory {
        NodeInventory {
            labels: [("zone".to_string(), zone.to_string())].into(),
            taints: taints.to_vec(),
            ..node(name, &[device])
        }
    }

    #[test]
    fn every_policy_places_only_on_the_nodes_its_constraints_allow() {
        use crate::policy::{Policy, PolicyName};
        use crate::scheduling::{TaintEffect, Toleration, TolerationOperator};
        let dedicated = Taint {
            key: "dedicated".into(),
            value: "ml".into(),
            effect: TaintEffect::NoSchedule,
        };
        let nodes = [
            labelled("a", "GPU-a", "a", &[]),
            labelled("b", "GPU-b", "b", &[]),
            labelled("c", "GPU-c", "b", std::slice::from_ref(&dedicated)),
        ];
        let in_b = PlacementRules {
            node_selector: [("zone".to_string(), "b".to_string())].into(),
            ..Default::default()
        };
        let tolerating = PlacementRules {
            tolerations: vec![Toleration {
                key: "dedicated".into(),
                operator: TolerationOperator::Exists,
                ..Default::default()
            }],
            ..in_b.clone()
        };
        for name in PolicyName::ALL {
            let mut l = Ledger::new(&nodes, Policy::named(name).placer()).unwrap();
            let small = ask(InstanceKind::Inference, 0.1, 0.1);
            // With a selector, zone b only (c is in b too, but tainted).
            let at = l.place_where("s", &small, DeviceClass::Gpu, &in_b).unwrap();
            assert_eq!(
                at.node, "b",
                "{name}: the selector and the taint leave b only"
            );
            // Tolerating the taint: b or c, never a.
            let at = l
                .place_where("t", &small, DeviceClass::Gpu, &tolerating)
                .unwrap();
            assert!(at.node == "b" || at.node == "c", "{name}: {at:?}");
            // No constraints: never the tainted c, and a is open again (the marks are gone).
            let mut seen = BTreeSet::new();
            let large = ask(InstanceKind::Inference, 0.6, 0.6);
            for i in 0..2 {
                if let Ok(at) = l.place(&format!("p{i}"), &large, DeviceClass::Gpu) {
                    seen.insert(at.node);
                }
            }
            assert!(
                seen.contains("a") && !seen.contains("c"),
                "{name}: {seen:?}"
            );
        }
    }

    #[test]
    fn a_refusal_counts_the_nodes_refused_for_each_reason() {
        use crate::scheduling::TaintEffect;
        let drain = Taint {
            key: "drain".into(),
            value: String::new(),
            effect: TaintEffect::NoExecute,
        };
        let nodes = [
            labelled("a", "GPU-a", "a", &[]),
            labelled("b", "GPU-b", "a", &[]),
            labelled("c", "GPU-c", "b", &[drain]),
            labelled("d", "CPU-d", "b", &[]),
        ];
        let mut l = ledger(&nodes);
        let in_b = PlacementRules {
            node_selector: [("zone".to_string(), "b".to_string())].into(),
            ..Default::default()
        };
        let small = ask(InstanceKind::Inference, 0.1, 0.1);
        let e = l
            .place_where("x", &small, DeviceClass::Gpu, &in_b)
            .unwrap_err()
            .to_string();
        assert_eq!(
            e,
            "unschedulable: 0/3 nodes with a gpu device are available to it: 2 didn't match the node \
             selector, 1 had the taint drain:NoExecute, not tolerated"
        );
        // The CPU pool has its own nodes: d is in zone b and untainted.
        assert_eq!(
            l.place_where("y", &small, DeviceClass::Cpu, &in_b)
                .unwrap()
                .node,
            "d"
        );
        // Nodes allowed but full: the placer's reason, then the others'.
        let in_a = PlacementRules {
            node_selector: [("zone".to_string(), "a".to_string())].into(),
            ..Default::default()
        };
        let whole = ask(InstanceKind::Inference, 1.0, 1.0);
        l.place_where("a1", &whole, DeviceClass::Gpu, &in_a)
            .unwrap();
        l.place_where("a2", &whole, DeviceClass::Gpu, &in_a)
            .unwrap();
        let e = l
            .place_where("a3", &whole, DeviceClass::Gpu, &in_a)
            .unwrap_err()
            .to_string();
        assert!(
            e.ends_with(
                "on the 2 of 3 nodes with a gpu device it may run on (the others: 1 had the taint \
                         drain:NoExecute, not tolerated)"
            ),
            "{e}"
        );
        // The drained node keeps its bookings when its labels change; they are only for new placements.
        let mut relabelled = nodes.to_vec();
        relabelled[0].labels.insert("zone".into(), "c".into());
        assert_eq!(l.set_nodes(&relabelled).unwrap(), Vec::<String>::new());
        let a = DeviceRef {
            node: "a".into(),
            device: "GPU-a".into(),
        };
        assert!((l.requested(&a) - 1.0).abs() < 1e-9);
    }

    fn spread(across: SpreadDomain, required: bool) -> PlacementRules {
        PlacementRules {
            spread: Some(Spread {
                across,
                max_skew: 1,
                required,
            }),
            ..Default::default()
        }
    }

    fn of(service: &str, request: f64) -> InstanceRequest {
        InstanceRequest {
            service: Some(service.into()),
            ..ask(InstanceKind::Inference, request, request)
        }
    }

    #[test]
    fn replicas_spread_across_nodes_where_the_placer_would_pack_them() {
        let nodes = [
            node("a", &["GPU-a"]),
            node("b", &["GPU-b"]),
            node("c", &["GPU-c"]),
        ];
        // Without a spread, Dilu's best fit packs the replicas on one GPU.
        let mut packed = ledger(&nodes);
        let at: BTreeSet<String> = (0..3)
            .map(|i| {
                packed
                    .place(&format!("p{i}"), &of("f", 0.1), DeviceClass::Gpu)
                    .unwrap()
                    .node
            })
            .collect();
        assert_eq!(at.len(), 1, "{at:?}");
        // With one, every node takes one before any takes a second, and the fourth and fifth keep skew 1.
        for required in [true, false] {
            let mut l = ledger(&nodes);
            let rules = spread(SpreadDomain::Node, required);
            let mut per_node: BTreeMap<String, u32> = BTreeMap::new();
            for i in 0..5 {
                let at = l
                    .place_where(&format!("f{i}"), &of("f", 0.1), DeviceClass::Gpu, &rules)
                    .unwrap();
                *per_node.entry(at.node).or_default() += 1;
                if i == 2 {
                    assert_eq!(per_node.len(), 3, "one on each node first: {per_node:?}");
                }
            }
            let mut counts: Vec<u32> = per_node.values().copied().collect();
            counts.sort_unstable();
            assert_eq!(counts, [1, 2, 2], "required {required}: {per_node:?}");
        }
    }

    #[test]
    fn replicas_spread_across_the_devices_of_one_node_and_other_functions_do_not_count() {
        let mut l = ledger(&[node("n", &["GPU-0", "GPU-1", "GPU-2"])]);
        let rules = spread(SpreadDomain::Device, true);
        // Another function's replica on GPU-0 does not count against f's spread.
        l.place_where("g0", &of("g", 0.1), DeviceClass::Gpu, &rules)
            .unwrap();
        let devices: BTreeSet<String> = (0..3)
            .map(|i| {
                l.place_where(&format!("f{i}"), &of("f", 0.1), DeviceClass::Gpu, &rules)
                    .unwrap()
                    .device
            })
            .collect();
        assert_eq!(devices.len(), 3, "{devices:?}");
        // Preferred, with the only other device full: the spread gives way (its GPU marks are lifted).
        let mut l2 = ledger(&[node("m", &["GPU-0", "GPU-1"])]);
        l2.place("full", &of("other", 1.0), DeviceClass::Gpu)
            .unwrap();
        let preferred = spread(SpreadDomain::Device, false);
        let a = l2
            .place_where("p0", &of("f", 0.1), DeviceClass::Gpu, &preferred)
            .unwrap();
        let b = l2
            .place_where("p1", &of("f", 0.1), DeviceClass::Gpu, &preferred)
            .unwrap();
        assert_eq!(a.device, b.device);
        let required = spread(SpreadDomain::Device, true);
        let e = l2
            .place_where("p2", &of("f", 0.1), DeviceClass::Gpu, &required)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("; 1 device left out to keep its replicas spread"),
            "{e}"
        );
        // The exclusion marks are gone after each call: a placement without rules packs again.
        let a = l.place("x0", &of("x", 0.1), DeviceClass::Gpu).unwrap();
        let b = l.place("x1", &of("x", 0.1), DeviceClass::Gpu).unwrap();
        assert_eq!(a.device, b.device);
    }

    #[test]
    fn a_required_spread_waits_and_says_why_and_a_preferred_one_gives_way() {
        let nodes = [
            node("a", &["GPU-a"]),
            node("b", &["GPU-b"]),
            node("c", &["GPU-c"]),
        ];
        for required in [true, false] {
            let mut l = ledger(&nodes);
            // a is full with another function.
            l.place("big", &of("other", 1.0), DeviceClass::Gpu).unwrap();
            let rules = spread(SpreadDomain::Node, required);
            let first = l
                .place_where("f0", &of("f", 0.1), DeviceClass::Gpu, &rules)
                .unwrap();
            let second = l
                .place_where("f1", &of("f", 0.1), DeviceClass::Gpu, &rules)
                .unwrap();
            assert_ne!(first.node, second.node);
            assert_ne!(first.node, "a");
            // A third would make b or c hold 2 while a (allowed, empty of f, but full) holds 0.
            let third = l.place_where("f2", &of("f", 0.1), DeviceClass::Gpu, &rules);
            if required {
                let e = third.unwrap_err().to_string();
                assert!(
                    e.ends_with(
                        "; 2 nodes left out to keep its replicas spread (required, max skew 1)"
                    ),
                    "{e}"
                );
            } else {
                assert_ne!(
                    third.unwrap().node,
                    "a",
                    "preferred: placed where there is room"
                );
            }
        }
    }

    #[test]
    fn replicas_spread_across_the_values_of_a_label_and_not_onto_nodes_without_it() {
        let zoned = |name: &str, zone: Option<&str>| NodeInventory {
            labels: zone
                .map(|z| [("topology.kubernetes.io/zone".to_string(), z.to_string())].into())
                .unwrap_or_default(),
            ..node(name, &[&format!("GPU-{name}")])
        };
        let nodes = [
            zoned("a", Some("x")),
            zoned("b", Some("x")),
            zoned("c", Some("y")),
            zoned("d", None),
        ];
        let zone_of = |n: &str| if n == "c" { "y" } else { "x" };
        let mut l = ledger(&nodes);
        let rules = spread(
            SpreadDomain::Label("topology.kubernetes.io/zone".into()),
            true,
        );
        let mut per_zone: BTreeMap<&str, u32> = BTreeMap::new();
        for i in 0..6 {
            let at = l
                .place_where(&format!("f{i}"), &of("f", 0.1), DeviceClass::Gpu, &rules)
                .unwrap();
            assert_ne!(at.node, "d", "a node without the label takes no replica");
            *per_zone.entry(zone_of(&at.node)).or_default() += 1;
            let (min, max) = (
                per_zone.get("x").copied().unwrap_or(0),
                per_zone.get("y").copied().unwrap_or(0),
            );
            assert!(min.abs_diff(max) <= 1, "after {}: {per_zone:?}", i + 1);
        }
        assert_eq!(per_zone.values().copied().collect::<Vec<_>>(), [3, 3]);
        // The spec form: a label key, validated as one.
        let bad = PlacementRules {
            spread: Some(Spread {
                across: SpreadDomain::from("not a key!".to_string()),
                max_skew: 1,
                required: true,
            }),
            ..Default::default()
        };
        assert_eq!(bad.validate().unwrap_err().field, "spread.across");
    }

    #[test]
    fn a_prefer_no_schedule_node_is_used_only_when_the_others_are_full() {
        use crate::scheduling::{TaintEffect, Toleration, TolerationOperator};
        let soft = Taint {
            key: "spot".into(),
            value: String::new(),
            effect: TaintEffect::PreferNoSchedule,
        };
        let nodes = [
            NodeInventory {
                taints: vec![soft],
                ..node("a", &["GPU-a"])
            },
            node("b", &["GPU-b"]),
        ];
        // Untainted, a would win the tie (the lower index).
        let mut plain = ledger(&[node("a", &["GPU-a"]), node("b", &["GPU-b"])]);
        assert_eq!(
            plain
                .place("x", &of("f", 0.6), DeviceClass::Gpu)
                .unwrap()
                .node,
            "a"
        );
        let mut l = ledger(&nodes);
        assert_eq!(
            l.place("x", &of("f", 0.6), DeviceClass::Gpu).unwrap().node,
            "b"
        );
        assert_eq!(
            l.place("y", &of("f", 0.6), DeviceClass::Gpu).unwrap().node,
            "a",
            "b is full: the avoided node takes it rather than refuse"
        );
        let tolerant = PlacementRules {
            tolerations: vec![Toleration {
                key: "spot".into(),
                operator: TolerationOperator::Exists,
                ..Default::default()
            }],
            ..Default::default()
        };
        let mut l = ledger(&nodes);
        assert_eq!(
            l.place_where("x", &of("f", 0.6), DeviceClass::Gpu, &tolerant)
                .unwrap()
                .node,
            "a",
            "tolerated: no longer avoided"
        );
    }
}
