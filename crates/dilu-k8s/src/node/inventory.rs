//! The node's [`meta::INVENTORY`] annotation: the agent's devices, written on its own Node with a merge patch
//! and written again whenever the Node shows something else (a node re-registered by its kubelet, an operator's
//! edit).

use k8s_openapi::api::core::v1::Node;
use kube::api::{Api, Patch, PatchParams};
use serde_json::json;

use crate::meta::{self, NodeDevice};

/// The annotation's value for `devices`.
pub fn annotation(devices: &[NodeDevice]) -> String {
    // Strings and numbers only: cannot fail.
    serde_json::to_string(devices).unwrap_or_default()
}

/// Whether `node` already carries `devices` (compared as device lists, so formatting does not matter).
pub fn is_current(node: &Node, devices: &[NodeDevice]) -> bool {
    node.metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(meta::INVENTORY))
        .and_then(|text| serde_json::from_str::<Vec<NodeDevice>>(text).ok())
        .is_some_and(|written| written == devices)
}

/// Writes `devices` into the annotation of Node `node` (a merge patch: other annotations are left alone).
pub async fn write(api: &Api<Node>, node: &str, devices: &[NodeDevice]) -> Result<(), kube::Error> {
    let patch = json!({"metadata": {"annotations": {meta::INVENTORY: annotation(devices)}}});
    api.patch(node, &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .map(|_| ())
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

    #[test]
    fn the_annotation_reads_back_and_is_compared_as_a_list() {
        let devices = vec![
            NodeDevice {
                uuid: "GPU-1".into(),
                memory_mib: 81_559,
                gpu: true,
                cores: None,
            },
            NodeDevice {
                uuid: "CPU-1".into(),
                memory_mib: 0,
                gpu: false,
                cores: Some(2.0),
            },
        ];
        let text = annotation(&devices);
        assert_eq!(meta::node_devices("n1", &text).unwrap(), devices);
        let mut node = Node {
            metadata: ObjectMeta {
                annotations: Some([(meta::INVENTORY.to_string(), text.replace(',', ", "))].into()),
                ..ObjectMeta::default()
            },
            ..Node::default()
        };
        assert!(is_current(&node, &devices));
        assert!(!is_current(&node, &devices[..1]));
        node.metadata.annotations = None;
        assert!(!is_current(&node, &devices));
    }
}
