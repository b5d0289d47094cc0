//! What Dilu writes on Kubernetes objects, in one place: label and annotation keys, the node inventory the
//! agents publish on their Node, and the booking and assignment a Dilu pod carries.
//!
//! - A **Node** carries [`INVENTORY`]: a JSON list of its devices (`[{"uuid":"GPU-…","memory_mib":81559,
//!   "gpu":true}]`), written by the node agent (tests write it by hand).
//! - A **pending Dilu pod** carries [`BOOKING`]: what the ledger books for it (kind, SM request and limit in
//!   milli, device memory in MiB), written by the controller from the policy's charge of its quota, and the
//!   quota itself ([`QUOTA`]) as the instance applies it.
//! - A **bound Dilu pod** carries [`ASSIGNMENT`]: node and device UUID. dilu-scheduler sends it in the
//!   Binding's annotations, which the API server copies onto the pod in the same write that sets
//!   `spec.nodeName`: no pod is ever bound without its assignment, or assigned without being bound.

use dilu_api::Quota;
use dilu_core::ledger::{DeviceClass, DeviceInventory, DeviceRef, NodeInventory};
use dilu_core::{InstanceKind, InstanceRequest};
use serde::{Deserialize, Serialize};

use crate::error::MetaError;

/// The API group of Dilu's resources.
pub const GROUP: &str = "dilu.io";
/// The version of the `Function` resource.
pub const VERSION: &str = "v1alpha1";
/// The scheduler name Dilu pods ask for (`spec.schedulerName`).
pub const SCHEDULER_NAME: &str = "dilu-scheduler";
/// The finalizer the controller keeps on a `Function` until its pods are gone.
pub const FINALIZER: &str = "dilu.io/instances";
/// The field manager of Dilu's writes (server-side apply and patches).
pub const FIELD_MANAGER: &str = "dilu";

/// Label: the function a pod belongs to (also `dilu_control::backend::labels::FUNCTION`).
pub const FUNCTION: &str = dilu_control::backend::labels::FUNCTION;
/// Label: the hash of what the pod runs.
pub const TEMPLATE: &str = dilu_control::backend::labels::TEMPLATE;
/// Label: the function's generation when the pod was created.
pub const GENERATION: &str = dilu_control::backend::labels::GENERATION;
/// Label: the instance name (`ocr-7`), unique among the function's instances.
pub const INSTANCE: &str = "dilu.io/instance";
/// Label: `true` while the controller routes requests to the pod (ready, not draining, not being profiled);
/// the gateway sends requests only to pods with it (and Ready).
pub const SERVING: &str = "dilu.io/serving";
/// Label: what the instance does (`inference`, `training`).
pub const KIND: &str = "dilu.io/kind";

/// Node annotation: the node's devices, JSON ([`NodeDevices`]).
pub const INVENTORY: &str = "dilu.io/inventory";
/// Pod annotation: what the ledger books for the pod, JSON ([`PodBooking`]).
pub const BOOKING: &str = "dilu.io/booking";
/// Pod annotation: the quota the instance applies, JSON ([`Quota`]).
pub const QUOTA: &str = "dilu.io/quota";
/// Pod annotation: where dilu-scheduler placed the pod, JSON ([`Assignment`]).
pub const ASSIGNMENT: &str = "dilu.io/assignment";
/// Pod annotation: where the controller's ledger planned the pod, JSON ([`Assignment`]); dilu-scheduler decides
/// (with the same placer over the same inventory it usually agrees).
pub const PLANNED: &str = "dilu.io/planned";
/// Pod annotation: how the replicas of its function spread over nodes or devices, JSON
/// (`dilu_core::scheduling::Spread`); dilu-scheduler keeps it when it places the pod.
pub const SPREAD: &str = "dilu.io/spread";
/// Function annotation: the function's profile as the controller measured it, JSON (`dilu_api::Profile`).
pub const PROFILE: &str = "dilu.io/profile";
/// Pod annotation: the port the instance serves on.
pub const PORT: &str = "dilu.io/port";
/// Function annotation: the gateway saw a request wait for this function with no ready pod (RFC 3339 time).
pub const WAKE: &str = "dilu.io/wake";

/// The node agents' heartbeats: each agent renews a `coordination.k8s.io/v1` Lease named
/// [`node_lease_name`] in this namespace (the control plane's, where its leader-election Leases live too).
pub const NODE_LEASE_NAMESPACE: &str = "dilu-system";
/// Seconds a node agent's Lease stays valid after its last renewal by default (`leaseDurationSeconds`; the
/// agent's `--lease-seconds`); the agent renews every third of it. A node whose Lease is older is lost: its pods
/// are replaced elsewhere and not routed to. Judges read the duration from each Lease, so agents may differ.
/// 15 s outlasts an agent restart (a DaemonSet rolling update) and moves pods off a dead node within seconds.
/// A node with no Lease at all runs no agent and is never judged lost.
pub const NODE_LEASE_SECONDS: i32 = 15;
/// Extended resource: one share of a GPU (the device plugin lists each GPU as several shares).
pub const GPU_SHARE: &str = "dilu.io/gpu-share";
/// Extended resource: one share of the CPU device.
pub const CPU_SHARE: &str = "dilu.io/cpu-share";
/// Env of every instance container: its pod UID (downward API `metadata.uid`); with the device plugin's
/// `DILU_QUOTA_DIR` it names the instance's quota channel (`dilu_quota::channel_from_env`).
pub const POD_UID_ENV: &str = dilu_quota::POD_UID_ENV;

/// The name of the Lease node agent `node` renews.
pub fn node_lease_name(node: &str) -> String {
    format!("dilu-node-{node}")
}

/// The devices of a node as its agent publishes them in [`INVENTORY`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NodeDevice {
    /// Device UUID (`GPU-…`, `CPU-…`).
    pub uuid: String,
    /// Memory in MiB (0: unknown, does not limit placement).
    #[serde(default)]
    pub memory_mib: u64,
    /// Whether it is a GPU.
    #[serde(default)]
    pub gpu: bool,
    /// Cores of a CPU device (the built-in runtimes use one, so one instance uses at most 1/cores of it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cores: Option<f64>,
}

/// The devices of a node's [`INVENTORY`] annotation as written.
pub fn node_devices(node: &str, annotation: &str) -> Result<Vec<NodeDevice>, MetaError> {
    serde_json::from_str(annotation).map_err(|e| MetaError::Annotation {
        object: format!("node {node}"),
        key: INVENTORY,
        reason: e.to_string(),
    })
}

/// What a Node offers the ledger: the devices of its [`INVENTORY`] annotation, with the Node's labels and
/// taints (what node selectors, affinity and tolerations are checked against); `None` without the annotation.
pub fn node_offer(
    node: &k8s_openapi::api::core::v1::Node,
) -> Option<Result<NodeInventory, MetaError>> {
    let name = node.metadata.name.as_deref().unwrap_or_default();
    let text = node.metadata.annotations.as_ref()?.get(INVENTORY)?;
    Some(node_inventory(name, text).map(|inventory| NodeInventory {
        labels: crate::scheduling::node_labels(node),
        taints: crate::scheduling::node_taints(node),
        ..inventory
    }))
}

/// Reads a node's [`INVENTORY`] annotation into the ledger's form (devices only).
pub fn node_inventory(node: &str, annotation: &str) -> Result<NodeInventory, MetaError> {
    let devices = node_devices(node, annotation)?;
    if devices.is_empty() {
        return Err(MetaError::Annotation {
            object: format!("node {node}"),
            key: INVENTORY,
            reason: "lists no device (rule: at least one)".into(),
        });
    }
    Ok(NodeInventory {
        name: node.to_string(),
        devices: devices
            .into_iter()
            .map(|d| DeviceInventory {
                uuid: d.uuid,
                memory_mib: d.memory_mib,
                gpu: d.gpu,
            })
            .collect(),
        ..NodeInventory::default()
    })
}

/// The [`INVENTORY`] annotation of `devices`.
pub fn inventory_annotation(devices: &[DeviceInventory]) -> String {
    let list: Vec<NodeDevice> = devices
        .iter()
        .map(|d| NodeDevice {
            uuid: d.uuid.clone(),
            memory_mib: d.memory_mib,
            gpu: d.gpu,
            cores: None,
        })
        .collect();
    // Serializing plain strings and numbers cannot fail.
    serde_json::to_string(&list).unwrap_or_default()
}

/// What the ledger books for a pod ([`BOOKING`]); the function label gives the service.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PodBooking {
    /// What the instance does.
    pub kind: InstanceKind,
    /// Guaranteed SM share, milli.
    pub sm_request: u32,
    /// Most SM share, milli.
    pub sm_limit: u32,
    /// Device memory, MiB (0: none asked).
    #[serde(default)]
    pub gpu_mem_mib: u64,
    /// The class of device it runs on (its runtime's; `gpu` when absent).
    #[serde(default)]
    pub device: DeviceClass,
}

impl PodBooking {
    /// The booking of a ledger request.
    pub fn of(request: &InstanceRequest, device: DeviceClass) -> PodBooking {
        PodBooking {
            kind: request.kind,
            sm_request: request.sm_request,
            sm_limit: request.sm_limit,
            gpu_mem_mib: request.gpu_mem_mib,
            device,
        }
    }

    /// The ledger request of a pod of `function` with this booking.
    pub fn request(&self, function: &str) -> InstanceRequest {
        InstanceRequest {
            kind: self.kind,
            service: Some(function.to_string()),
            gpu_count: 1,
            sm_request: self.sm_request,
            sm_limit: self.sm_limit.max(self.sm_request),
            gpu_mem_mib: self.gpu_mem_mib,
            cpu_milli: 0,
            mem_mib: 0,
            gpu_types: Vec::new(),
        }
    }

    /// Reads a pod's [`BOOKING`] annotation.
    pub fn parse(pod: &str, annotation: &str) -> Result<PodBooking, MetaError> {
        serde_json::from_str(annotation).map_err(|e| MetaError::Annotation {
            object: format!("pod {pod}"),
            key: BOOKING,
            reason: e.to_string(),
        })
    }
}

/// Where dilu-scheduler placed a pod ([`ASSIGNMENT`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Assignment {
    /// Node name (equal to the pod's `spec.nodeName`).
    pub node: String,
    /// Device UUID on that node.
    pub device: String,
}

impl Assignment {
    /// The assignment of a ledger place.
    pub fn of(at: &DeviceRef) -> Assignment {
        Assignment {
            node: at.node.clone(),
            device: at.device.clone(),
        }
    }

    /// The ledger's address of it.
    pub fn device_ref(&self) -> DeviceRef {
        DeviceRef {
            node: self.node.clone(),
            device: self.device.clone(),
        }
    }

    /// Reads a pod's [`ASSIGNMENT`] annotation.
    pub fn parse(pod: &str, annotation: &str) -> Result<Assignment, MetaError> {
        serde_json::from_str(annotation).map_err(|e| MetaError::Annotation {
            object: format!("pod {pod}"),
            key: ASSIGNMENT,
            reason: e.to_string(),
        })
    }

    /// The annotation's value.
    pub fn annotation(&self) -> String {
        // Two strings: cannot fail.
        serde_json::to_string(self).unwrap_or_default()
    }
}

/// Reads a pod's [`QUOTA`] annotation.
pub fn parse_quota(pod: &str, annotation: &str) -> Result<Quota, MetaError> {
    let quota: Quota = serde_json::from_str(annotation).map_err(|e| MetaError::Annotation {
        object: format!("pod {pod}"),
        key: QUOTA,
        reason: e.to_string(),
    })?;
    quota.validate("quota").map_err(|e| MetaError::Annotation {
        object: format!("pod {pod}"),
        key: QUOTA,
        reason: e.to_string(),
    })?;
    Ok(quota)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn inventory_round_trips_and_names_the_node_on_error() {
        let devices = vec![DeviceInventory {
            uuid: "GPU-1".into(),
            memory_mib: 81_559,
            gpu: true,
        }];
        let text = inventory_annotation(&devices);
        let inv = node_inventory("n1", &text).unwrap();
        assert_eq!(inv.name, "n1");
        assert_eq!(inv.devices, devices);
        let err = node_inventory("n2", "[]").unwrap_err().to_string();
        assert!(err.contains("node n2") && err.contains(INVENTORY), "{err}");
        let err = node_inventory("n3", r#"[{"uuid":"GPU-1","colour":4}]"#)
            .unwrap_err()
            .to_string();
        assert!(err.contains("colour"), "{err}");
    }

    #[test]
    fn booking_gives_the_ledger_request_back() {
        let request = InstanceRequest {
            kind: InstanceKind::Inference,
            service: Some("ocr".into()),
            gpu_count: 1,
            sm_request: 200,
            sm_limit: 500,
            gpu_mem_mib: 1024,
            cpu_milli: 0,
            mem_mib: 0,
            gpu_types: Vec::new(),
        };
        let b = PodBooking::of(&request, DeviceClass::Cpu);
        let text = serde_json::to_string(&b).unwrap();
        assert_eq!(
            PodBooking::parse("p", &text).unwrap().request("ocr"),
            request
        );
    }

    #[test]
    fn a_quota_annotation_is_validated() {
        let err = parse_quota("p", r#"{"request":0.7,"limit":0.5}"#)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("pod p") && err.contains("quota.limit"),
            "{err}"
        );
    }
}
