//! Node liveness from the node agents' Leases (`docs/kubernetes.md`).
//!
//! Every node agent renews a `coordination.k8s.io/v1` Lease named [`meta::node_lease_name`] in
//! [`meta::NODE_LEASE_NAMESPACE`] (configurable) every third of its `leaseDurationSeconds`
//! ([`meta::NODE_LEASE_SECONDS`]). A node is **lost** when its Lease exists and `renewTime +
//! leaseDurationSeconds` lies in the past; a node without a Lease runs no agent and is never lost (clusters of
//! part 1, and nodes whose agent has not started yet). A lost node whose Lease is renewed again is simply live
//! again.
//!
//! Two layers, as elsewhere:
//! - the pure part: [`expiry`], [`lost`] and [`NodeLeases`], with the time passed in (tests run in virtual
//!   time);
//! - [`LostNodes`]: a watch on the Leases that publishes the set of lost nodes whenever it changes (a Lease
//!   event, or a Lease running out, checked at its expiry and at least once a second). The controller
//!   replaces the pods of a lost node, dilu-scheduler places nothing there, and the gateway routes nothing
//!   there.
//!
//! The comparison uses the agent's `renewTime` against the reader's clock, so the nodes' and the control
//! plane's clocks must agree to well within the lease duration (NTP does; a skew of seconds would make nodes
//! look lost, or live, that long early or late).
//!
//! What it needs from RBAC: `list` and `watch` on `leases` (`coordination.k8s.io`) in the lease namespace.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::jiff::{SignedDuration, Timestamp};
use kube::runtime::WatchStreamExt;
use kube::runtime::watcher::{self, Event};
use kube::{Api, Client, ResourceExt};
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::meta;

/// The node a Lease in the lease namespace speaks for: `Some` for the node agents' Leases
/// ([`meta::node_lease_name`]), `None` for any other (the control plane's leader election, say).
pub fn node_of_lease(lease_name: &str) -> Option<&str> {
    lease_name
        .strip_prefix(meta::node_lease_name("").as_str())
        .filter(|n| !n.is_empty())
}

/// When `lease` runs out: its `renewTime` (else `acquireTime`, else its creation) plus its
/// `leaseDurationSeconds` (else [`meta::NODE_LEASE_SECONDS`]). `None` when it carries no time at all (an object
/// the API server never stored).
pub fn expiry(lease: &Lease) -> Option<Timestamp> {
    let spec = lease.spec.as_ref();
    let renewed = spec
        .and_then(|s| s.renew_time.as_ref().map(|t| t.0))
        .or_else(|| spec.and_then(|s| s.acquire_time.as_ref().map(|t| t.0)))
        .or_else(|| lease.metadata.creation_timestamp.as_ref().map(|t| t.0))?;
    let seconds = spec
        .and_then(|s| s.lease_duration_seconds)
        .unwrap_or(meta::NODE_LEASE_SECONDS)
        .max(0);
    renewed
        .checked_add(SignedDuration::from_secs(i64::from(seconds)))
        .ok()
}

/// Whether the node `lease` speaks for is lost at `now`: the lease ran out (`renewTime +
/// leaseDurationSeconds < now`). A lease without any time is not lost.
pub fn lost(lease: &Lease, now: Timestamp) -> bool {
    expiry(lease).is_some_and(|t| t < now)
}

/// The node agents' Leases as last seen: when each node's runs out.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct NodeLeases {
    expiries: BTreeMap<String, Option<Timestamp>>,
    /// Leases of a list in progress (between `Init` and `InitDone` of a watch).
    listing: Option<BTreeMap<String, Option<Timestamp>>>,
    synced: bool,
}

impl NodeLeases {
    /// No Lease seen yet.
    pub fn new() -> NodeLeases {
        NodeLeases::default()
    }

    /// A Lease as it is now (others than the node agents' are ignored).
    pub fn observe(&mut self, lease: &Lease) {
        let name = lease.name_any();
        if let Some(node) = node_of_lease(&name) {
            let slot = self.listing.as_mut().unwrap_or(&mut self.expiries);
            slot.insert(node.to_string(), expiry(lease));
        }
    }

    /// A Lease was deleted: its node runs no agent any more, and is not lost.
    pub fn forget(&mut self, lease_name: &str) {
        if let Some(node) = node_of_lease(lease_name) {
            self.expiries.remove(node);
            if let Some(listing) = self.listing.as_mut() {
                listing.remove(node);
            }
        }
    }

    /// Applies one watch event.
    pub fn apply(&mut self, event: &Event<Lease>) {
        match event {
            Event::Init => self.listing = Some(BTreeMap::new()),
            Event::InitApply(lease) | Event::Apply(lease) => self.observe(lease),
            Event::InitDone => {
                if let Some(listing) = self.listing.take() {
                    self.expiries = listing;
                }
                self.synced = true;
            }
            Event::Delete(lease) => self.forget(&lease.name_any()),
        }
    }

    /// Whether a complete list has been seen.
    pub fn synced(&self) -> bool {
        self.synced
    }

    /// The nodes with a Lease.
    pub fn nodes(&self) -> impl Iterator<Item = &str> {
        self.expiries.keys().map(String::as_str)
    }

    /// The nodes lost at `now`.
    pub fn lost(&self, now: Timestamp) -> BTreeSet<String> {
        self.expiries
            .iter()
            .filter(|(_, t)| t.is_some_and(|t| t < now))
            .map(|(n, _)| n.clone())
            .collect()
    }

    /// When the next node still live at `now` becomes lost unless its Lease is renewed first.
    pub fn next_expiry(&self, now: Timestamp) -> Option<Timestamp> {
        self.expiries
            .values()
            .flatten()
            .filter(|t| **t >= now)
            .min()
            .copied()
    }
}

/// The lost nodes, followed from the API server; the watch stops when the last clone of it is dropped.
#[derive(Clone)]
pub struct LostNodes {
    rx: watch::Receiver<BTreeSet<String>>,
    _task: std::sync::Arc<AbortOnDrop>,
}

struct AbortOnDrop(JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// How often the lost set is recomputed at least (a Lease runs out without an event).
const RECHECK: Duration = Duration::from_secs(1);

impl LostNodes {
    /// Starts watching the Leases of `namespace`; must be called within a Tokio runtime. `who` prefixes the
    /// log lines (`dilu-controller`). The set is empty until the first list arrives (nothing is lost before
    /// anything is known).
    pub fn watch(client: Client, namespace: &str, who: &'static str) -> LostNodes {
        let (tx, rx) = watch::channel(BTreeSet::new());
        let leases: Api<Lease> = Api::namespaced(client, namespace);
        let task = tokio::spawn(follow(leases, namespace.to_string(), who, tx));
        LostNodes {
            rx,
            _task: std::sync::Arc::new(AbortOnDrop(task)),
        }
    }

    /// A set that never changes (tests; a process told not to follow Leases).
    pub fn fixed(lost: BTreeSet<String>) -> LostNodes {
        let (tx, rx) = watch::channel(lost);
        // The sender lives in a task that waits forever, so that receivers never see it closed.
        let task = tokio::spawn(async move {
            std::future::pending::<()>().await;
            drop(tx);
        });
        LostNodes {
            rx,
            _task: std::sync::Arc::new(AbortOnDrop(task)),
        }
    }

    /// The lost nodes now.
    pub fn get(&self) -> BTreeSet<String> {
        self.rx.borrow().clone()
    }

    /// A receiver that sees every change.
    pub fn subscribe(&self) -> watch::Receiver<BTreeSet<String>> {
        self.rx.clone()
    }
}

async fn follow(
    leases: Api<Lease>,
    namespace: String,
    who: &'static str,
    tx: watch::Sender<BTreeSet<String>>,
) {
    let mut events =
        std::pin::pin!(watcher::watcher(leases, watcher::Config::default()).default_backoff());
    let mut state = NodeLeases::new();
    let mut last_error: Option<String> = None;
    loop {
        let now = Timestamp::now();
        if state.synced() {
            let lost = state.lost(now);
            tx.send_if_modified(|current| {
                if *current == lost {
                    return false;
                }
                for node in lost.difference(current) {
                    eprintln!(
                        "{who}: node {node} lost: its Lease {}/{} expired (noticed at {now})",
                        namespace,
                        meta::node_lease_name(node)
                    );
                }
                for node in current.difference(&lost) {
                    eprintln!("{who}: node {node} is back (its Lease was renewed or removed)");
                }
                *current = lost;
                true
            });
        }
        // Wake at the next expiry (just past it), and at least every RECHECK.
        let wait = state
            .next_expiry(now)
            .map(|t| Duration::from_secs_f64(t.duration_since(now).as_secs_f64().max(0.0) + 0.001))
            .map_or(RECHECK, |d| d.min(RECHECK));
        tokio::select! {
            event = events.next() => match event {
                Some(Ok(e)) => {
                    state.apply(&e);
                    last_error = None;
                }
                Some(Err(e)) => {
                    let line = e.to_string();
                    if last_error.as_ref() != Some(&line) {
                        eprintln!("{who}: watching node Leases in {namespace}: {line}");
                        last_error = Some(line);
                    }
                }
                None => return,
            },
            () = tokio::time::sleep(wait) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::coordination::v1::LeaseSpec;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};

    fn at(s: i64) -> Timestamp {
        Timestamp::from_second(1_700_000_000 + s).unwrap()
    }

    fn lease(name: &str, renewed: Option<i64>, duration: Option<i32>) -> Lease {
        Lease {
            metadata: ObjectMeta {
                name: Some(name.into()),
                namespace: Some(meta::NODE_LEASE_NAMESPACE.into()),
                ..ObjectMeta::default()
            },
            spec: Some(LeaseSpec {
                holder_identity: Some(name.into()),
                renew_time: renewed.map(|s| MicroTime(at(s))),
                lease_duration_seconds: duration,
                ..LeaseSpec::default()
            }),
        }
    }

    #[test]
    fn a_lease_is_lost_once_renew_time_plus_duration_is_past() {
        let l = lease("dilu-node-a", Some(100), Some(6));
        assert_eq!(expiry(&l), Some(at(106)));
        assert!(!lost(&l, at(100)));
        assert!(!lost(&l, at(106)), "at the expiry itself it still holds");
        assert!(lost(&l, at(107)));
        // Without a duration, the agents' default.
        let l = lease("dilu-node-a", Some(100), None);
        assert_eq!(
            expiry(&l),
            Some(at(100 + i64::from(meta::NODE_LEASE_SECONDS)))
        );
        // Without any time: never lost.
        let l = lease("dilu-node-a", None, Some(6));
        assert!(!lost(&l, at(1_000_000)));
    }

    #[test]
    fn only_the_node_agents_leases_count() {
        assert_eq!(node_of_lease("dilu-node-gpu-7"), Some("gpu-7"));
        assert_eq!(node_of_lease("dilu-controller"), None);
        assert_eq!(node_of_lease("dilu-node-"), None);
        let mut leases = NodeLeases::new();
        leases.apply(&Event::Init);
        leases.apply(&Event::InitApply(lease("dilu-scheduler", Some(0), Some(1))));
        leases.apply(&Event::InitApply(lease("dilu-node-a", Some(0), Some(6))));
        leases.apply(&Event::InitDone);
        assert_eq!(leases.nodes().collect::<Vec<_>>(), ["a"]);
    }

    #[test]
    fn nodes_are_lost_in_virtual_time_and_come_back_when_renewed() {
        let mut leases = NodeLeases::new();
        assert!(!leases.synced());
        leases.apply(&Event::Init);
        leases.apply(&Event::InitApply(lease("dilu-node-a", Some(0), Some(6))));
        leases.apply(&Event::InitApply(lease("dilu-node-b", Some(3), Some(6))));
        assert!(
            leases.lost(at(100)).is_empty(),
            "nothing before the list ends"
        );
        leases.apply(&Event::InitDone);
        assert!(leases.synced());
        assert!(leases.lost(at(5)).is_empty());
        assert_eq!(leases.next_expiry(at(5)), Some(at(6)));
        // b renews every 2 s; a stops.
        leases.apply(&Event::Apply(lease("dilu-node-b", Some(5), Some(6))));
        assert_eq!(leases.lost(at(7)), BTreeSet::from(["a".to_string()]));
        assert_eq!(leases.next_expiry(at(7)), Some(at(11)));
        // a's agent comes back: live again. A node whose Lease is deleted is never lost.
        leases.apply(&Event::Apply(lease("dilu-node-a", Some(8), Some(6))));
        assert!(leases.lost(at(9)).is_empty());
        leases.apply(&Event::Delete(lease("dilu-node-b", Some(5), Some(6))));
        assert_eq!(leases.lost(at(12)), BTreeSet::new());
        assert_eq!(leases.lost(at(15)), BTreeSet::from(["a".to_string()]));
        // A relist replaces what was known: a's Lease is gone.
        leases.apply(&Event::Init);
        leases.apply(&Event::InitDone);
        assert!(leases.lost(at(100)).is_empty());
    }
}
