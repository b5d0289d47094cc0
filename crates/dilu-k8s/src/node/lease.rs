//! The node agent's heartbeat: a `coordination.k8s.io/v1` Lease named [`meta::node_lease_name`] in
//! [`meta::NODE_LEASE_NAMESPACE`], held by the node, renewed every third of its duration. The controller treats
//! a node whose Lease ran out as lost (`crate::nodes`).

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use kube::api::{Api, Patch, PatchParams, PostParams};
use serde_json::json;

use crate::meta;

/// Renews the Lease of `node` (merge patch of holder, duration and `renewTime` = now), creating it when it does
/// not exist. One request per renewal in the steady state.
pub async fn renew(api: &Api<Lease>, node: &str, seconds: i32) -> Result<(), kube::Error> {
    let name = meta::node_lease_name(node);
    let now = MicroTime(k8s_openapi::jiff::Timestamp::now());
    let patch = json!({
        "spec": {
            "holderIdentity": node,
            "leaseDurationSeconds": seconds,
            "renewTime": now,
        }
    });
    let params = PatchParams::default();
    match api.patch(&name, &params, &Patch::Merge(&patch)).await {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(status)) if status.code == 404 => {
            let lease = Lease {
                metadata: ObjectMeta {
                    name: Some(name.clone()),
                    namespace: Some(meta::NODE_LEASE_NAMESPACE.to_string()),
                    labels: Some(
                        [("app.kubernetes.io/part-of".to_string(), "dilu".to_string())].into(),
                    ),
                    ..ObjectMeta::default()
                },
                spec: Some(LeaseSpec {
                    holder_identity: Some(node.to_string()),
                    lease_duration_seconds: Some(seconds),
                    acquire_time: Some(now.clone()),
                    renew_time: Some(now),
                    ..LeaseSpec::default()
                }),
            };
            match api.create(&PostParams::default(), &lease).await {
                Ok(_) => Ok(()),
                // Created meanwhile (another copy of the agent starting): the next renewal patches it.
                Err(kube::Error::Api(status)) if status.code == 409 => Ok(()),
                Err(e) => Err(e),
            }
        }
        Err(e) => Err(e),
    }
}
