//! Node objects for machines that do not exist: what a kubelet and Dilu's node agent would publish.

use std::collections::BTreeMap;

use dilu_core::ledger::DeviceInventory;
use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::core::v1::Node;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time};
use kube::api::{Api, Patch, PatchParams, PostParams};

/// The label every fake node carries (`dilu.io/node=true`).
pub const NODE_LABEL: (&str, &str) = ("dilu.io/node", "true");
/// The extended resource GPUs are counted in.
pub const GPU_RESOURCE: &str = "nvidia.com/gpu";
/// Memory of each GPU of [`fake_nodes`] (an 80 GB H100), MiB.
pub const FAKE_GPU_MEMORY_MIB: u64 = 81_559;

/// Creates Node `name` as a registered, Ready node: label [`NODE_LABEL`], the Dilu inventory annotation
/// ([`dilu_k8s::meta::INVENTORY`]) listing `devices`, and a status (written through the status subresource)
/// with capacity and allocatable cpu 16, memory 64Gi, pods 110 and `nvidia.com/gpu: gpus` when `gpus > 0`,
/// condition Ready=True and InternalIP 127.0.0.1. No taint is left on it (the API server of
/// [`crate::ApiServer`] adds none; another one's `not-ready` taint is removed).
pub async fn fake_node(
    client: &kube::Client,
    name: &str,
    devices: &[DeviceInventory],
    gpus: u32,
) -> anyhow::Result<Node> {
    let nodes: Api<Node> = Api::all(client.clone());
    let node = Node {
        metadata: ObjectMeta {
            name: Some(name.to_string()),
            labels: Some(BTreeMap::from([(
                NODE_LABEL.0.to_string(),
                NODE_LABEL.1.to_string(),
            )])),
            annotations: Some(BTreeMap::from([(
                dilu_k8s::meta::INVENTORY.to_string(),
                dilu_k8s::meta::inventory_annotation(devices),
            )])),
            ..ObjectMeta::default()
        },
        ..Node::default()
    };
    let created = nodes
        .create(&PostParams::default(), &node)
        .await
        .map_err(|e| anyhow::anyhow!("creating node {name}: {e}"))?;
    if created
        .spec
        .as_ref()
        .and_then(|s| s.taints.as_ref())
        .is_some_and(|t| !t.is_empty())
    {
        nodes
            .patch(
                name,
                &PatchParams::default(),
                &Patch::Merge(serde_json::json!({"spec": {"taints": null}})),
            )
            .await
            .map_err(|e| anyhow::anyhow!("removing node {name}'s taints: {e}"))?;
    }
    let mut resources = serde_json::json!({"cpu": "16", "memory": "64Gi", "pods": "110"});
    if gpus > 0 {
        resources[GPU_RESOURCE] = serde_json::Value::String(gpus.to_string());
    }
    let now = serde_json::to_value(Time(k8s_openapi::jiff::Timestamp::now()))?;
    let status = serde_json::json!({"status": {
        "capacity": resources,
        "allocatable": resources,
        "conditions": [{
            "type": "Ready",
            "status": "True",
            "reason": "KubeletReady",
            "message": "dilu-k8s-testkit fake node",
            "lastHeartbeatTime": now,
            "lastTransitionTime": now,
        }],
        "addresses": [
            {"type": "InternalIP", "address": "127.0.0.1"},
            {"type": "Hostname", "address": name},
        ],
        "nodeInfo": {
            "machineID": "", "systemUUID": "", "bootID": "",
            "kernelVersion": "", "osImage": "dilu-k8s-testkit",
            "containerRuntimeVersion": "dilu-node-runner://0",
            "kubeletVersion": "v1.20.2", "kubeProxyVersion": "v1.20.2",
            "operatingSystem": "linux", "architecture": "amd64",
        },
    }});
    nodes
        .patch_status(name, &PatchParams::default(), &Patch::Merge(status))
        .await
        .map_err(|e| anyhow::anyhow!("writing node {name}'s status: {e}"))
}

/// The devices of a fake node named `node`: `gpus` GPUs (`GPU-<node>-<i>`, [`FAKE_GPU_MEMORY_MIB`] each), or
/// one CPU device (`CPU-<node>`) when `gpus` is 0 (an inventory lists at least one device).
pub fn fake_devices(node: &str, gpus: u32) -> Vec<DeviceInventory> {
    if gpus == 0 {
        return vec![DeviceInventory {
            uuid: format!("CPU-{node}"),
            memory_mib: 0,
            gpu: false,
        }];
    }
    (0..gpus)
        .map(|i| DeviceInventory {
            uuid: format!("GPU-{node}-{i}"),
            memory_mib: FAKE_GPU_MEMORY_MIB,
            gpu: true,
        })
        .collect()
}

/// Creates `count` nodes `<prefix>-0` … `<prefix>-<count-1>` with [`fake_devices`] and
/// `nvidia.com/gpu: gpus_per_node`, 16 at a time; returns their names in order.
pub async fn fake_nodes(
    client: &kube::Client,
    prefix: &str,
    count: usize,
    gpus_per_node: u32,
) -> anyhow::Result<Vec<String>> {
    let names: Vec<String> = (0..count).map(|i| format!("{prefix}-{i}")).collect();
    futures::stream::iter(names.clone())
        .map(|name| async move {
            fake_node(
                client,
                &name,
                &fake_devices(&name, gpus_per_node),
                gpus_per_node,
            )
            .await
            .map(|_| ())
        })
        .buffer_unordered(16)
        .try_collect::<Vec<()>>()
        .await?;
    Ok(names)
}
