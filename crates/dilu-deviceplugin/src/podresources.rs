//! The kubelet's PodResources API (v1, `List`): which of this plugin's shares each pod holds.
//!
//! The kubelet hands `Allocate` device IDs only, never the pod, and picks the IDs itself (the plugin's
//! preference is a hint). PodResources is the kubelet's own record of what it gave whom: the node agent reads it
//! to find a pod running on a device other than the one it was assigned (`docs/kubernetes.md`).

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::time::Duration;

use crate::v1::ListPodResourcesRequest;
use crate::v1::pod_resources_lister_client::PodResourcesListerClient;
use crate::{Error, ids, uds};

/// The kubelet's PodResources socket.
pub const DEFAULT_SOCKET: &str = "/var/lib/kubelet/pod-resources/kubelet.sock";

/// The devices one pod holds through the given resources.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodDevices {
    /// `namespace/name`.
    pub key: String,
    /// The physical devices (UUIDs) its containers' IDs name.
    pub devices: BTreeSet<String>,
}

/// Asks the kubelet on `socket` which devices every pod holds through the resources in `resources`
/// (`dilu.io/gpu-share`, …); pods holding none of them are left out. An ID that is not one of this plugin's
/// virtual IDs is an error (another plugin cannot register the same resource name).
pub async fn list(
    socket: &Path,
    resources: &[&str],
    timeout: Duration,
) -> Result<Vec<PodDevices>, Error> {
    let channel = uds::connect(socket).await?;
    let mut client = PodResourcesListerClient::new(channel);
    let answer = tokio::time::timeout(timeout, client.list(ListPodResourcesRequest {}))
        .await
        .map_err(|_| Error::Timeout {
            call: "PodResources List",
            millis: timeout.as_millis(),
        })?
        .map_err(|status| Error::Call {
            call: "PodResources List",
            status,
        })?
        .into_inner();
    let mut pods: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for pod in answer.pod_resources {
        let key = format!("{}/{}", pod.namespace, pod.name);
        for container in pod.containers {
            for held in container.devices {
                if !resources.contains(&held.resource_name.as_str()) {
                    continue;
                }
                for id in &held.device_ids {
                    let (uuid, _) = ids::parse(id)?;
                    pods.entry(key.clone())
                        .or_default()
                        .insert(uuid.to_string());
                }
            }
        }
    }
    Ok(pods
        .into_iter()
        .map(|(key, devices)| PodDevices { key, devices })
        .collect())
}
