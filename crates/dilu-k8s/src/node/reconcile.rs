//! The node agent's pure core: what a pod bound to this node asks of it, and the actions that bring the attached
//! channels there (desired against observed, level-triggered: the same inputs always give the same actions).

use std::collections::{BTreeMap, BTreeSet};

use dilu_api::{InstanceKind, Quota};
use k8s_openapi::api::core::v1::Pod;

use crate::meta::{self, Assignment, PodBooking};

/// The channel a pod gets: its device, what it does, and its quota.
#[derive(Debug, Clone, PartialEq)]
pub struct Channel {
    /// Device UUID (the pod's assignment).
    pub device: String,
    /// What the instance does.
    pub kind: InstanceKind,
    /// Its quota.
    pub quota: Quota,
}

/// A channel the node has now, as [`super::PodChannels::attached`] reports it.
#[derive(Debug, Clone, PartialEq)]
pub struct Attached {
    /// The pod UID it belongs to.
    pub pod_uid: String,
    /// The budgeted channel; `None` for a channel file left on the node that nothing budgets (an agent
    /// restarted, and the pod may be gone): attached again if its pod is still there, else removed.
    pub channel: Option<Channel>,
}

/// What the agent owes a pod.
#[derive(Debug, Clone, PartialEq)]
pub enum Want {
    /// A channel as described (created, or updated when it differs).
    Attach(Channel),
    /// Leave whatever the pod has as it is: its annotations cannot be read (the reason), and a bad write must
    /// not take a running pod's channel away.
    Keep(String),
    /// No channel any more: the pod ended (`Succeeded`, `Failed`).
    Release,
}

/// When the pod was bound and created, for the order in which the kubelet admits pods.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Default)]
pub struct Order {
    /// The `PodScheduled` condition's transition time (seconds precision), RFC 3339; empty if unknown.
    pub bound: String,
    /// When the agent's watch first showed the pod bound here (a sequence number): the kubelet's watch sees
    /// bindings in the same order, so this orders pods bound within the same second.
    pub seen: u64,
    /// `metadata.creationTimestamp`, RFC 3339; empty if unknown.
    pub created: String,
}

/// What the node agent reads from one pod bound to its node.
#[derive(Debug, Clone, PartialEq)]
pub struct PodState {
    /// `metadata.uid`.
    pub uid: String,
    /// `namespace/name`, for logs.
    pub key: String,
    /// What it owes the pod.
    pub want: Want,
    /// The device of the assignment when it could be read (for the device plugin's preference).
    pub device: Option<String>,
    /// Whether the kubelet has admitted it (it reports container statuses or a host IP), as far as the API
    /// server shows.
    pub admitted: bool,
    /// Whether it is being deleted (it keeps its channel until it is gone: its containers still run).
    pub deleting: bool,
    /// Admission order.
    pub order: Order,
}

/// Reads a pod bound to `node`: `None` when it is not Dilu's (no [`meta::ASSIGNMENT`]) or has no UID.
pub fn pod_state(pod: &Pod, node: &str) -> Option<PodState> {
    let annotations = pod.metadata.annotations.as_ref()?;
    let assignment_text = annotations.get(meta::ASSIGNMENT)?;
    let uid = pod.metadata.uid.clone().filter(|u| !u.is_empty())?;
    let key = format!(
        "{}/{}",
        pod.metadata.namespace.as_deref().unwrap_or_default(),
        pod.metadata.name.as_deref().unwrap_or_default()
    );
    let status = pod.status.as_ref();
    let phase = status.and_then(|s| s.phase.as_deref()).unwrap_or_default();
    let admitted = status.is_some_and(|s| {
        s.host_ip.as_deref().is_some_and(|ip| !ip.is_empty())
            || s.container_statuses.as_ref().is_some_and(|c| !c.is_empty())
    });
    let order = Order {
        bound: status
            .and_then(|s| s.conditions.as_ref())
            .and_then(|c| c.iter().find(|c| c.type_ == "PodScheduled"))
            .and_then(|c| c.last_transition_time.as_ref())
            .map(|t| t.0.to_string())
            .unwrap_or_default(),
        seen: 0,
        created: pod
            .metadata
            .creation_timestamp
            .as_ref()
            .map(|t| t.0.to_string())
            .unwrap_or_default(),
    };
    let assignment = Assignment::parse(&key, assignment_text);
    let device = assignment.as_ref().ok().map(|a| a.device.clone());
    let want = if phase == "Succeeded" || phase == "Failed" {
        Want::Release
    } else {
        match want(&key, node, annotations, pod, assignment) {
            Ok(channel) => Want::Attach(channel),
            Err(reason) => Want::Keep(reason),
        }
    };
    Some(PodState {
        uid,
        key,
        want,
        device,
        admitted,
        deleting: pod.metadata.deletion_timestamp.is_some(),
        order,
    })
}

fn want(
    key: &str,
    node: &str,
    annotations: &std::collections::BTreeMap<String, String>,
    pod: &Pod,
    assignment: Result<Assignment, crate::MetaError>,
) -> Result<Channel, String> {
    let assignment = assignment.map_err(|e| e.to_string())?;
    if assignment.node != node {
        return Err(format!(
            "pod {key}: annotation {}: names node {:?}, but the pod is bound to {node:?}",
            meta::ASSIGNMENT,
            assignment.node
        ));
    }
    let booking = annotations
        .get(meta::BOOKING)
        .map(|text| PodBooking::parse(key, text).map_err(|e| e.to_string()))
        .transpose()?;
    let quota = match annotations.get(meta::QUOTA) {
        Some(text) => meta::parse_quota(key, text).map_err(|e| e.to_string())?,
        // The controller always writes the quota; a pod without it is budgeted as booked.
        None => match &booking {
            Some(b) => booking_quota(key, b)?,
            None => {
                return Err(format!(
                    "pod {key}: neither {} nor {} annotation: no quota to budget",
                    meta::QUOTA,
                    meta::BOOKING
                ));
            }
        },
    };
    let kind = match &booking {
        Some(b) => b.kind,
        None => pod
            .metadata
            .labels
            .as_ref()
            .and_then(|l| l.get(meta::KIND))
            .and_then(|k| serde_json::from_value(serde_json::Value::String(k.clone())).ok())
            .unwrap_or(InstanceKind::Inference),
    };
    Ok(Channel {
        device: assignment.device,
        kind,
        quota,
    })
}

fn booking_quota(key: &str, b: &PodBooking) -> Result<Quota, String> {
    let quota = Quota {
        request: f64::from(b.sm_request) / 1000.0,
        limit: f64::from(b.sm_limit.max(b.sm_request)) / 1000.0,
        memory: (b.gpu_mem_mib > 0).then_some(b.gpu_mem_mib << 20),
    };
    quota
        .validate("booking")
        .map_err(|e| format!("pod {key}: annotation {}: {e}", meta::BOOKING))?;
    Ok(quota)
}

/// One step towards the desired channels.
#[derive(Debug, Clone, PartialEq)]
pub enum Action {
    /// Create the pod's channel, or update it (`previous`: what it had, `None` when new or left over).
    Attach {
        /// The pod UID.
        pod_uid: String,
        /// `namespace/name`.
        key: String,
        /// What it gets.
        channel: Channel,
        /// What it had.
        previous: Option<Channel>,
    },
    /// Remove the channel of a pod that ended or is gone (`key` when the pod is still known).
    Detach {
        /// The pod UID.
        pod_uid: String,
        /// `namespace/name`, when the pod is still there.
        key: Option<String>,
    },
}

/// The actions that bring `observed` to what `desired` (the pods bound to the node, by UID) asks: attach what
/// is missing or differs, detach what no pod wants. Detaches come first (a pod moved to another device frees
/// its old channel before taking the new one); order is by UID otherwise, so the same inputs give the same list.
pub fn plan(desired: &BTreeMap<String, PodState>, observed: &[Attached]) -> Vec<Action> {
    let observed: BTreeMap<&str, &Option<Channel>> = observed
        .iter()
        .map(|a| (a.pod_uid.as_str(), &a.channel))
        .collect();
    let mut detaches = Vec::new();
    let mut attaches = Vec::new();
    for (uid, have) in &observed {
        let key = desired.get(*uid).map(|p| p.key.clone());
        match desired.get(*uid).map(|p| &p.want) {
            None | Some(Want::Release) => detaches.push(Action::Detach {
                pod_uid: uid.to_string(),
                key,
            }),
            Some(Want::Attach(want)) => {
                if let Some(have) = have
                    && have.device != want.device
                {
                    detaches.push(Action::Detach {
                        pod_uid: uid.to_string(),
                        key,
                    });
                }
            }
            Some(Want::Keep(_)) => {}
        }
    }
    for (uid, pod) in desired {
        let Want::Attach(want) = &pod.want else {
            continue;
        };
        let have = observed.get(uid.as_str()).and_then(|c| c.as_ref());
        let previous = have.filter(|h| h.device == want.device);
        if previous != Some(want) {
            attaches.push(Action::Attach {
                pod_uid: uid.clone(),
                key: pod.key.clone(),
                channel: want.clone(),
                previous: previous.cloned(),
            });
        }
    }
    detaches.extend(attaches);
    detaches
}

/// The devices the kubelet gave one pod (its PodResources record), by `namespace/name`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Held {
    /// `namespace/name`.
    pub key: String,
    /// The devices (UUIDs) its containers hold shares of.
    pub devices: BTreeSet<String>,
}

/// A pod the kubelet gave shares of devices other than its assigned one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Misplaced {
    /// The pod UID (the deletion's precondition: a newer pod of the same name is left alone).
    pub uid: String,
    /// `namespace/name`.
    pub key: String,
    /// Its assigned device.
    pub assigned: String,
    /// The devices it holds instead.
    pub held: BTreeSet<String>,
}

/// The pods of `desired` that hold shares (per `held`) but none of their assigned device: the kubelet picked
/// another device than dilu-scheduler booked, so the pod's channel is on the wrong device and the booking is
/// wrong. Pods being deleted, and pods the kubelet reports nothing for, are left out. Ordered by key.
pub fn misplaced(desired: &BTreeMap<String, PodState>, held: &[Held]) -> Vec<Misplaced> {
    let held: BTreeMap<&str, &BTreeSet<String>> = held
        .iter()
        .filter(|h| !h.devices.is_empty())
        .map(|h| (h.key.as_str(), &h.devices))
        .collect();
    let mut wrong: Vec<Misplaced> = desired
        .iter()
        .filter(|(_, pod)| !pod.deleting)
        .filter_map(|(uid, pod)| {
            let assigned = pod.device.as_ref()?;
            let devices = held.get(pod.key.as_str())?;
            (!devices.contains(assigned)).then(|| Misplaced {
                uid: uid.clone(),
                key: pod.key.clone(),
                assigned: assigned.clone(),
                held: (*devices).clone(),
            })
        })
        .collect();
    wrong.sort_by(|a, b| a.key.cmp(&b.key));
    wrong
}

/// The UIDs whose channels `plan` would touch: for tests and logs.
pub fn touched(actions: &[Action]) -> BTreeSet<&str> {
    actions
        .iter()
        .map(|a| match a {
            Action::Attach { pod_uid, .. } | Action::Detach { pod_uid, .. } => pod_uid.as_str(),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::{ContainerStatus, PodStatus};
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time};

    fn pod(uid: &str, annotations: &[(&str, &str)]) -> Pod {
        Pod {
            metadata: ObjectMeta {
                name: Some(format!("p-{uid}")),
                namespace: Some("default".into()),
                uid: Some(uid.into()),
                annotations: Some(
                    annotations
                        .iter()
                        .map(|(k, v)| (k.to_string(), v.to_string()))
                        .collect(),
                ),
                ..ObjectMeta::default()
            },
            ..Pod::default()
        }
    }

    const ASSIGNED: &str = r#"{"node":"n1","device":"GPU-1"}"#;
    const QUOTA: &str = r#"{"request":0.2,"limit":0.5}"#;

    fn channel(device: &str, request: f64, limit: f64) -> Channel {
        Channel {
            device: device.into(),
            kind: InstanceKind::Inference,
            quota: Quota::new(request, limit),
        }
    }

    fn desired(pods: &[Pod]) -> BTreeMap<String, PodState> {
        pods.iter()
            .filter_map(|p| pod_state(p, "n1"))
            .map(|s| (s.uid.clone(), s))
            .collect()
    }

    fn attached(uid: &str, channel: Option<Channel>) -> Attached {
        Attached {
            pod_uid: uid.into(),
            channel,
        }
    }

    #[test]
    fn a_pod_is_read_from_its_annotations() {
        let state = pod_state(
            &pod("u1", &[(meta::ASSIGNMENT, ASSIGNED), (meta::QUOTA, QUOTA)]),
            "n1",
        )
        .unwrap();
        assert_eq!(state.want, Want::Attach(channel("GPU-1", 0.2, 0.5)));
        assert_eq!(state.device.as_deref(), Some("GPU-1"));
        assert!(!state.admitted && !state.deleting);
        // Not Dilu's: no assignment.
        assert!(pod_state(&pod("u2", &[(meta::QUOTA, QUOTA)]), "n1").is_none());
        // The booking gives the kind, and the quota when the quota annotation is missing.
        let booking = r#"{"kind":"training","sm_request":300,"sm_limit":1000,"gpu_mem_mib":1024}"#;
        let state = pod_state(
            &pod(
                "u3",
                &[(meta::ASSIGNMENT, ASSIGNED), (meta::BOOKING, booking)],
            ),
            "n1",
        )
        .unwrap();
        assert_eq!(
            state.want,
            Want::Attach(Channel {
                device: "GPU-1".into(),
                kind: InstanceKind::Training,
                quota: Quota {
                    request: 0.3,
                    limit: 1.0,
                    memory: Some(1 << 30)
                },
            })
        );
    }

    #[test]
    fn unreadable_annotations_keep_what_the_pod_has() {
        for annotations in [
            vec![
                (meta::ASSIGNMENT, ASSIGNED),
                (meta::QUOTA, r#"{"request":2}"#),
            ],
            vec![(meta::ASSIGNMENT, "{"), (meta::QUOTA, QUOTA)],
            vec![(meta::ASSIGNMENT, ASSIGNED)],
            vec![
                (meta::ASSIGNMENT, r#"{"node":"n2","device":"GPU-1"}"#),
                (meta::QUOTA, QUOTA),
            ],
        ] {
            let state = pod_state(&pod("u1", &annotations), "n1").unwrap();
            let Want::Keep(reason) = &state.want else {
                panic!("{annotations:?}: {:?}", state.want)
            };
            assert!(reason.contains("default/p-u1"), "{reason}");
            let actions = plan(
                &desired(&[pod("u1", &annotations)]),
                &[attached("u1", Some(channel("GPU-1", 0.2, 0.5)))],
            );
            assert!(actions.is_empty(), "{actions:?}");
        }
    }

    #[test]
    fn missing_channels_are_attached_and_equal_ones_left_alone() {
        let pods = [
            pod("u1", &[(meta::ASSIGNMENT, ASSIGNED), (meta::QUOTA, QUOTA)]),
            pod("u2", &[(meta::ASSIGNMENT, ASSIGNED), (meta::QUOTA, QUOTA)]),
        ];
        let actions = plan(
            &desired(&pods),
            &[attached("u1", Some(channel("GPU-1", 0.2, 0.5)))],
        );
        assert_eq!(
            actions,
            vec![Action::Attach {
                pod_uid: "u2".into(),
                key: "default/p-u2".into(),
                channel: channel("GPU-1", 0.2, 0.5),
                previous: None,
            }]
        );
    }

    #[test]
    fn a_quota_change_attaches_again_with_the_previous_quota() {
        let pods = [pod(
            "u1",
            &[
                (meta::ASSIGNMENT, ASSIGNED),
                (meta::QUOTA, r#"{"request":0.4,"limit":0.6}"#),
            ],
        )];
        let actions = plan(
            &desired(&pods),
            &[attached("u1", Some(channel("GPU-1", 0.2, 0.5)))],
        );
        assert_eq!(
            actions,
            vec![Action::Attach {
                pod_uid: "u1".into(),
                key: "default/p-u1".into(),
                channel: channel("GPU-1", 0.4, 0.6),
                previous: Some(channel("GPU-1", 0.2, 0.5)),
            }]
        );
    }

    #[test]
    fn gone_and_ended_pods_are_detached_and_deleting_ones_kept() {
        let mut ended = pod("u2", &[(meta::ASSIGNMENT, ASSIGNED), (meta::QUOTA, QUOTA)]);
        ended.status = Some(PodStatus {
            phase: Some("Succeeded".into()),
            ..PodStatus::default()
        });
        let mut deleting = pod("u3", &[(meta::ASSIGNMENT, ASSIGNED), (meta::QUOTA, QUOTA)]);
        deleting.metadata.deletion_timestamp = Some(Time(k8s_openapi::jiff::Timestamp::UNIX_EPOCH));
        let actions = plan(
            &desired(&[ended, deleting]),
            &[
                attached("u1", Some(channel("GPU-1", 0.2, 0.5))),
                attached("u2", Some(channel("GPU-1", 0.2, 0.5))),
                attached("u3", Some(channel("GPU-1", 0.2, 0.5))),
            ],
        );
        assert_eq!(
            actions,
            vec![
                Action::Detach {
                    pod_uid: "u1".into(),
                    key: None
                },
                Action::Detach {
                    pod_uid: "u2".into(),
                    key: Some("default/p-u2".into())
                },
            ]
        );
    }

    #[test]
    fn after_a_restart_files_are_attached_again_or_removed() {
        // The agent restarted: two channel files are on the node, nothing is budgeted; one pod is still there.
        let pods = [pod(
            "u1",
            &[(meta::ASSIGNMENT, ASSIGNED), (meta::QUOTA, QUOTA)],
        )];
        let actions = plan(
            &desired(&pods),
            &[attached("u1", None), attached("u9", None)],
        );
        assert_eq!(
            actions,
            vec![
                Action::Detach {
                    pod_uid: "u9".into(),
                    key: None
                },
                Action::Attach {
                    pod_uid: "u1".into(),
                    key: "default/p-u1".into(),
                    channel: channel("GPU-1", 0.2, 0.5),
                    previous: None,
                },
            ]
        );
        assert_eq!(touched(&actions), BTreeSet::from(["u1", "u9"]));
    }

    #[test]
    fn a_device_change_detaches_first() {
        let pods = [pod(
            "u1",
            &[
                (meta::ASSIGNMENT, r#"{"node":"n1","device":"GPU-2"}"#),
                (meta::QUOTA, QUOTA),
            ],
        )];
        let actions = plan(
            &desired(&pods),
            &[attached("u1", Some(channel("GPU-1", 0.2, 0.5)))],
        );
        assert_eq!(actions.len(), 2);
        assert!(matches!(&actions[0], Action::Detach { pod_uid, .. } if pod_uid == "u1"));
        assert!(
            matches!(&actions[1], Action::Attach { channel, previous: None, .. } if channel.device == "GPU-2")
        );
    }

    #[test]
    fn a_pod_holding_shares_of_another_device_than_its_assignment_is_misplaced() {
        let other = r#"{"node":"n1","device":"GPU-2"}"#;
        let mut deleting = pod("u4", &[(meta::ASSIGNMENT, other), (meta::QUOTA, QUOTA)]);
        deleting.metadata.deletion_timestamp = Some(Time(k8s_openapi::jiff::Timestamp::UNIX_EPOCH));
        let pods = desired(&[
            pod("u1", &[(meta::ASSIGNMENT, ASSIGNED), (meta::QUOTA, QUOTA)]),
            pod("u2", &[(meta::ASSIGNMENT, other), (meta::QUOTA, QUOTA)]),
            pod("u3", &[(meta::ASSIGNMENT, other), (meta::QUOTA, QUOTA)]),
            deleting,
        ]);
        let held = |key: &str, devices: &[&str]| Held {
            key: key.into(),
            devices: devices.iter().map(|d| d.to_string()).collect(),
        };
        let wrong = misplaced(
            &pods,
            &[
                // Right: its assigned device.
                held("default/p-u1", &["GPU-1"]),
                // Wrong: the kubelet gave it GPU-1's share.
                held("default/p-u2", &["GPU-1"]),
                // u3: the kubelet reports nothing (not admitted yet): left alone. u4: being deleted.
                held("default/p-u4", &["GPU-1"]),
                // A pod that is not Dilu's, or gone.
                held("default/other", &["GPU-2"]),
            ],
        );
        assert_eq!(
            wrong,
            vec![Misplaced {
                uid: "u2".into(),
                key: "default/p-u2".into(),
                assigned: "GPU-2".into(),
                held: BTreeSet::from(["GPU-1".to_string()]),
            }]
        );
        // Holding the assigned device among others is not misplaced.
        assert!(misplaced(&pods, &[held("default/p-u2", &["GPU-1", "GPU-2"])]).is_empty());
    }

    #[test]
    fn admission_is_read_from_the_status() {
        let mut p = pod("u1", &[(meta::ASSIGNMENT, ASSIGNED), (meta::QUOTA, QUOTA)]);
        assert!(!pod_state(&p, "n1").unwrap().admitted);
        p.status = Some(PodStatus {
            container_statuses: Some(vec![ContainerStatus::default()]),
            ..PodStatus::default()
        });
        assert!(pod_state(&p, "n1").unwrap().admitted);
    }
}
