//! The Kubernetes side of the node agent (`dilu agent --kubernetes`, a DaemonSet; `docs/kubernetes.md`).
//!
//! [`run`] keeps three things true for its node while it runs:
//! - **inventory**: the Node's [`meta::INVENTORY`] annotation lists the agent's healthy devices (merge patch;
//!   written again whenever the Node shows something else or a device's health changes);
//! - **heartbeat**: the Lease [`meta::node_lease_name`] in [`meta::NODE_LEASE_NAMESPACE`] is renewed every
//!   third of [`meta::NODE_LEASE_SECONDS`] (holder = the node), so the control plane can tell a lost node;
//! - **channels**: every pod bound to the node (`spec.nodeName`) that carries an [`meta::ASSIGNMENT`] has a
//!   quota channel on its assigned device with the quota of its [`meta::QUOTA`] annotation, and nothing else
//!   does. Level-triggered: after each batch of pod events (and every [`NodeConfig::resync`]) the desired
//!   channels are compared with what [`PodChannels::attached`] reports and the differences applied
//!   ([`reconcile::plan`]). A pod being deleted keeps its channel until it is gone (its containers still run
//!   during the grace period); a pod that ended (`Succeeded`, `Failed`) loses it. After a restart the first
//!   pass, once the initial list is complete, attaches every pod again (the agent re-opens the files, keeping
//!   counters and budgets) and removes leftovers of pods that went away meanwhile.
//!
//! It also keeps the device plugin's preference ([`preference::NodePreference`]) current: the pods bound here
//! that the kubelet has not admitted yet, oldest first; and, with [`NodeConfig::pick_check`], checks the
//! kubelet's picks against the assignments ([`reconcile::misplaced`]) and deletes a pod given another device
//! than its own, so that it is replaced.
//!
//! The channels themselves are the caller's ([`PodChannels`]): this crate does not depend on the agent. The
//! binary implements it over `dilu_agent::Agent::attach`, with the channel at
//! `<channel root>/<device UUID>/<pod UID>`.
//!
//! RBAC: `nodes` get, list, watch, patch (its own Node's annotation; the watch is on its own Node only);
//! `pods` list, watch (those bound to its node), delete (the pick check); `leases` get, create, patch in the
//! lease namespace.

pub mod inventory;
pub mod lease;
pub mod preference;
pub mod reconcile;
pub mod stats;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::future::Future;
use std::pin::pin;
use std::sync::Arc;
use std::time::Duration;

use futures::{FutureExt, StreamExt};
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{Node, Pod};
use kube::api::{DeleteParams, Preconditions};
use kube::runtime::WatchStreamExt;
use kube::runtime::watcher::{self, Event, watcher};
use kube::{Api, Client};
use tokio::sync::watch;
use tokio::task::JoinSet;
use tokio::time::Instant;

use crate::events::{EventSink, EventType, pod_ref};
use crate::meta::{self, NodeDevice};
pub use preference::NodePreference;
pub use reconcile::{Action, Attached, Channel, Held, Misplaced, PodState, Want};
pub use stats::{NodeStats, NodeStatsSnapshot, quantile};

/// The node's quota channels, as the agent keeps them. Calls are short (file creation and the token manager's
/// lock) and made from the reconcile loop.
pub trait PodChannels: Send + Sync {
    /// Creates the channel of pod `pod_uid`, or updates it to `channel` (re-opening a file left by an earlier
    /// agent keeps its counters and last budget).
    fn attach(&self, pod_uid: &str, channel: &Channel) -> Result<(), String>;
    /// Stops budgeting pod `pod_uid` and removes its channel file (also one left over, not budgeted).
    fn detach(&self, pod_uid: &str) -> Result<(), String>;
    /// The channels there are now: budgeted ones, and files left on the node that nothing budgets.
    fn attached(&self) -> Vec<Attached>;
}

/// The kubelet's record of which devices each pod holds (its PodResources API), as device UUIDs.
pub trait PodDevices: Send + Sync {
    /// Every pod that holds shares of the node's devices.
    fn held(&self) -> dilu_control::backend::BoxFuture<'_, Result<Vec<Held>, String>>;
}

/// Checking the kubelet's pick: how often, and where from.
#[derive(Clone)]
pub struct PickCheck {
    /// The kubelet's record.
    pub source: Arc<dyn PodDevices>,
    /// How often it is read.
    pub every: Duration,
}

impl std::fmt::Debug for PickCheck {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PickCheck")
            .field("every", &self.every)
            .finish_non_exhaustive()
    }
}

/// Why the node agent cannot run.
#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    /// A setting breaks its rule.
    #[error("{field} = {value:?}: {rule}")]
    Config {
        /// The setting.
        field: &'static str,
        /// Its value.
        value: String,
        /// The rule.
        rule: &'static str,
    },
}

/// What the node agent keeps true, and how.
#[derive(Debug, Clone)]
pub struct NodeConfig {
    /// The Node's name (`spec.nodeName` of its pods; the DaemonSet passes it from the downward API).
    pub node: String,
    /// The node's devices: the inventory annotation lists them, less the unhealthy ones.
    pub devices: Vec<NodeDevice>,
    /// The UUIDs of the devices that are unhealthy now (the agent's GPU health watch), left out of the
    /// inventory so that nothing is placed on them; `None`: every device is always listed.
    pub unhealthy: Option<watch::Receiver<BTreeSet<String>>>,
    /// Where the heartbeat Lease lives ([`meta::NODE_LEASE_NAMESPACE`]).
    pub lease_namespace: String,
    /// `leaseDurationSeconds` ([`meta::NODE_LEASE_SECONDS`]); renewed every third of it.
    pub lease_seconds: i32,
    /// A reconcile pass at least this often even without pod events (drift of the channels).
    pub resync: Duration,
    /// After a failed attach or detach, the next pass comes this soon.
    pub retry: Duration,
    /// The counters (shared with whoever reads them).
    pub stats: Arc<NodeStats>,
    /// The device plugin's preference, kept current.
    pub preference: NodePreference,
    /// When set, a pod the kubelet gave shares of another device than its assignment is deleted (so that the
    /// controller replaces it and dilu-scheduler places the replacement again).
    pub pick_check: Option<PickCheck>,
    /// Where its Kubernetes Events go (a pod deleted by the pick check gets `WrongDevice`); off by default.
    pub events: EventSink,
}

impl NodeConfig {
    /// The defaults for `node` with `devices`.
    pub fn new(node: impl Into<String>, devices: Vec<NodeDevice>) -> Self {
        Self {
            node: node.into(),
            devices,
            unhealthy: None,
            lease_namespace: meta::NODE_LEASE_NAMESPACE.to_string(),
            lease_seconds: meta::NODE_LEASE_SECONDS,
            resync: Duration::from_secs(30),
            retry: Duration::from_secs(1),
            stats: Arc::default(),
            preference: NodePreference::new(),
            pick_check: None,
            events: EventSink::off(),
        }
    }

    fn validate(&self) -> Result<(), NodeError> {
        let bad = |field, value: String, rule| Err(NodeError::Config { field, value, rule });
        if self.node.is_empty() || self.node.contains(['/', ',', '=']) {
            return bad("node", self.node.clone(), "must be a Node name");
        }
        if self.devices.is_empty() {
            return bad("devices", "[]".into(), "the node needs at least one device");
        }
        if self.lease_seconds < 3 {
            return bad(
                "lease_seconds",
                self.lease_seconds.to_string(),
                "must be at least 3 (renewed every third)",
            );
        }
        Ok(())
    }

    /// How often the Lease is renewed.
    pub fn renew_every(&self) -> Duration {
        Duration::from_millis(u64::try_from(self.lease_seconds).unwrap_or(3) * 1000 / 3)
    }
}

/// Runs the node agent's Kubernetes side until `shutdown` completes (see the module documentation). Channels
/// are left as they are when it stops: the pods keep their last budgets, and the next agent adopts them. API
/// errors are logged and retried; the only error returned is a bad configuration.
pub async fn run(
    client: Client,
    config: NodeConfig,
    channels: Arc<dyn PodChannels>,
    shutdown: impl Future<Output = ()>,
) -> Result<(), NodeError> {
    config.validate()?;
    let node = config.node.clone();
    let mut side = JoinSet::new();
    side.spawn(heartbeat(
        Api::namespaced(client.clone(), &config.lease_namespace),
        node.clone(),
        config.lease_seconds,
        config.renew_every(),
        config.stats.clone(),
    ));
    side.spawn(keep_inventory(
        Api::all(client.clone()),
        node.clone(),
        config.devices.clone(),
        config.unhealthy.clone(),
        config.stats.clone(),
    ));
    // The pick check reads the pods as of the last pass; without it nothing is published.
    let pods_tx = config.pick_check.clone().map(|check| {
        let (tx, rx) = watch::channel(BTreeMap::new());
        side.spawn(check_picks(
            client.clone(),
            node.clone(),
            check,
            rx,
            config.stats.clone(),
            config.events.clone(),
        ));
        tx
    });
    let pods: Api<Pod> = Api::all(client);
    let mut events = watcher(
        pods,
        watcher::Config::default().fields(&format!("spec.nodeName={node}")),
    )
    .default_backoff()
    .boxed();
    eprintln!(
        "dilu agent: node {node}: {} device(s) in {}, Lease {}/{} renewed every {} ms, watching its pods",
        config.devices.len(),
        meta::INVENTORY,
        config.lease_namespace,
        meta::node_lease_name(&node),
        config.renew_every().as_millis()
    );
    let mut loop_state = Loop {
        node,
        store: BTreeMap::new(),
        listing: None,
        ready: false,
        arrivals: HashMap::new(),
        kept: HashMap::new(),
        first_seen: HashMap::new(),
        next_seen: 0,
        config,
        channels,
    };
    let mut shutdown = pin!(shutdown);
    let mut next_pass = Instant::now() + loop_state.config.resync;
    loop {
        tokio::select! {
            biased;
            () = &mut shutdown => break,
            event = events.next() => match event {
                Some(event) => loop_state.on_event(event),
                None => break,
            },
            () = tokio::time::sleep_until(next_pass) => {}
        }
        // Take in whatever else is ready: one pass per batch of events.
        for _ in 0..1024 {
            match events.next().now_or_never() {
                Some(Some(event)) => loop_state.on_event(event),
                _ => break,
            }
        }
        if loop_state.ready {
            if let Some(pods_tx) = &pods_tx {
                pods_tx.send_if_modified(|pods| {
                    let changed = *pods != loop_state.store;
                    if changed {
                        pods.clone_from(&loop_state.store);
                    }
                    changed
                });
            }
            let failed = loop_state.reconcile();
            let wait = if failed {
                loop_state.config.retry
            } else {
                loop_state.config.resync
            };
            next_pass = Instant::now() + wait;
        }
    }
    side.abort_all();
    eprintln!(
        "dilu agent: node {}: stopped; pod channels left in place for the next agent",
        loop_state.node
    );
    Ok(())
}

struct Loop {
    node: String,
    /// The pods bound to the node that carry an assignment, by UID, as of the last complete list and events.
    store: BTreeMap<String, PodState>,
    /// A relist in progress (the store is replaced when it completes).
    listing: Option<BTreeMap<String, PodState>>,
    /// Whether one complete list arrived (no pass before it: it would remove every channel).
    ready: bool,
    /// When an event of a pod arrived that no pass has handled yet (the first such event).
    arrivals: HashMap<String, Instant>,
    /// The sequence number of the first event that showed each pod here ([`reconcile::Order::seen`]).
    first_seen: HashMap<String, u64>,
    /// The last sequence number given.
    next_seen: u64,
    /// The reason each pod's annotations were last unreadable for (logged once per reason).
    kept: HashMap<String, String>,
    config: NodeConfig,
    channels: Arc<dyn PodChannels>,
}

impl Loop {
    fn on_event(&mut self, event: Result<Event<Pod>, watcher::Error>) {
        let now = Instant::now();
        match event {
            Ok(Event::Init) => self.listing = Some(BTreeMap::new()),
            Ok(Event::InitApply(pod)) => {
                if let Some(mut state) = reconcile::pod_state(&pod, &self.node) {
                    state.order.seen = self.seen(&state.uid);
                    self.arrivals.entry(state.uid.clone()).or_insert(now);
                    self.listing
                        .get_or_insert_with(BTreeMap::new)
                        .insert(state.uid.clone(), state);
                }
            }
            Ok(Event::InitDone) => {
                self.store = self.listing.take().unwrap_or_default();
                let store = &self.store;
                self.first_seen.retain(|uid, _| store.contains_key(uid));
                self.ready = true;
            }
            Ok(Event::Apply(pod)) => {
                let uid = pod.metadata.uid.clone().unwrap_or_default();
                self.arrivals.entry(uid.clone()).or_insert(now);
                match reconcile::pod_state(&pod, &self.node) {
                    Some(mut state) => {
                        state.order.seen = self.seen(&uid);
                        self.store.insert(uid, state);
                    }
                    None => {
                        self.store.remove(&uid);
                        self.first_seen.remove(&uid);
                    }
                }
            }
            Ok(Event::Delete(pod)) => {
                let uid = pod.metadata.uid.clone().unwrap_or_default();
                self.arrivals.entry(uid.clone()).or_insert(now);
                self.store.remove(&uid);
                self.first_seen.remove(&uid);
            }
            Err(error) => eprintln!(
                "dilu agent: node {}: watching its pods: {error} (retrying)",
                self.node
            ),
        }
    }

    /// The sequence number of the first event that showed pod `uid` here.
    fn seen(&mut self, uid: &str) -> u64 {
        let next = &mut self.next_seen;
        *self.first_seen.entry(uid.to_string()).or_insert_with(|| {
            *next += 1;
            *next
        })
    }

    /// One pass: plan against what the agent has, apply, record. Returns whether an action failed.
    fn reconcile(&mut self) -> bool {
        self.config
            .preference
            .set_waiting(preference::waiting(self.store.values()));
        for (uid, pod) in &self.store {
            if let Want::Keep(reason) = &pod.want
                && self.kept.get(uid) != Some(reason)
            {
                eprintln!("dilu agent: {reason}; its channel is left as it is");
                self.kept.insert(uid.clone(), reason.clone());
            }
        }
        self.kept.retain(|uid, _| {
            self.store
                .get(uid)
                .is_some_and(|p| matches!(p.want, Want::Keep(_)))
        });
        let observed = self.channels.attached();
        let actions = reconcile::plan(&self.store, &observed);
        let stats = self.config.stats.clone();
        let mut failed = false;
        for action in &actions {
            match action {
                Action::Attach {
                    pod_uid,
                    key,
                    channel,
                    previous,
                } => match self.channels.attach(pod_uid, channel) {
                    Ok(()) => {
                        let latency = self.arrivals.remove(pod_uid).map(|t| t.elapsed());
                        let latency_us = latency.map_or(-1, |l| l.as_micros() as i64);
                        let quota = &channel.quota;
                        match previous {
                            Some(before) if before.quota != channel.quota => {
                                stats.quota_applied(latency.unwrap_or_default());
                                eprintln!(
                                    "dilu agent: quota applied pod={key} uid={pod_uid} device={} request={} \
                                     limit={} latency_us={latency_us}",
                                    channel.device, quota.request, quota.limit
                                );
                            }
                            _ => {
                                stats.attached(latency);
                                eprintln!(
                                    "dilu agent: attached pod={key} uid={pod_uid} device={} kind={} request={} \
                                     limit={} latency_us={latency_us}",
                                    channel.device,
                                    channel.kind.as_str(),
                                    quota.request,
                                    quota.limit
                                );
                            }
                        }
                    }
                    Err(error) => {
                        failed = true;
                        stats.update(|s| s.failures += 1);
                        eprintln!(
                            "dilu agent: attaching pod={key} uid={pod_uid} to {}: {error} (retrying)",
                            channel.device
                        );
                    }
                },
                Action::Detach { pod_uid, key } => {
                    let key = key.as_deref().unwrap_or("(gone)");
                    match self.channels.detach(pod_uid) {
                        Ok(()) => {
                            stats.update(|s| s.detaches += 1);
                            eprintln!("dilu agent: detached pod={key} uid={pod_uid}");
                        }
                        Err(error) => {
                            failed = true;
                            stats.update(|s| s.failures += 1);
                            eprintln!(
                                "dilu agent: detaching pod={key} uid={pod_uid}: {error} (retrying)"
                            );
                        }
                    }
                }
            }
        }
        stats.update(|s| s.reconciles += 1);
        // Events that needed no action, or whose action succeeded, are handled.
        if !failed {
            self.arrivals.clear();
        } else {
            let pending = reconcile::touched(&actions);
            self.arrivals
                .retain(|uid, _| pending.contains(uid.as_str()));
        }
        failed
    }
}

/// Renews the Lease every `every` (each request bounded by `every`); failures are logged when they start and
/// when they end.
async fn heartbeat(
    api: Api<Lease>,
    node: String,
    seconds: i32,
    every: Duration,
    stats: Arc<NodeStats>,
) {
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut failing = false;
    loop {
        tick.tick().await;
        let renewed = tokio::time::timeout(every, lease::renew(&api, &node, seconds)).await;
        match renewed {
            Ok(Ok(())) => {
                stats.update(|s| s.lease_renewals += 1);
                if failing {
                    eprintln!("dilu agent: node {node}: Lease renewed again");
                    failing = false;
                }
            }
            Ok(Err(error)) => {
                stats.update(|s| s.lease_failures += 1);
                if !failing {
                    eprintln!("dilu agent: node {node}: renewing its Lease: {error} (retrying)");
                    failing = true;
                }
            }
            Err(_) => {
                stats.update(|s| s.lease_failures += 1);
                if !failing {
                    eprintln!(
                        "dilu agent: node {node}: renewing its Lease took over {} ms (retrying)",
                        every.as_millis()
                    );
                    failing = true;
                }
            }
        }
    }
}

/// Reads the kubelet's record every `check.every` and deletes the pods it shows on another device than their
/// assignment ([`reconcile::misplaced`]), each with its UID as the precondition and at most once.
async fn check_picks(
    client: Client,
    node: String,
    check: PickCheck,
    pods: watch::Receiver<BTreeMap<String, PodState>>,
    stats: Arc<NodeStats>,
    events: EventSink,
) {
    let mut deleted: BTreeSet<String> = BTreeSet::new();
    let mut failing: Option<String> = None;
    loop {
        tokio::time::sleep(check.every).await;
        let held = match check.source.held().await {
            Ok(held) => {
                if failing.take().is_some() {
                    eprintln!(
                        "dilu agent: node {node}: the kubelet's pod resources are readable again"
                    );
                }
                held
            }
            Err(error) => {
                if failing.as_ref() != Some(&error) {
                    eprintln!(
                        "dilu agent: node {node}: reading the kubelet's pod resources: {error} (the kubelet's \
                         picks are not checked until it answers)"
                    );
                    failing = Some(error);
                }
                continue;
            }
        };
        let wrong = {
            let pods = pods.borrow();
            deleted.retain(|uid| pods.contains_key(uid));
            reconcile::misplaced(&pods, &held)
        };
        for pod in wrong {
            if !deleted.insert(pod.uid.clone()) {
                continue;
            }
            let Some((namespace, name)) = pod.key.split_once('/') else {
                continue;
            };
            let held = pod.held.iter().cloned().collect::<Vec<_>>().join(", ");
            eprintln!(
                "dilu agent: node {node}: pod {} was assigned {} but the kubelet gave it {held}; deleting it so \
                 that it is replaced",
                pod.key, pod.assigned,
            );
            let api: Api<Pod> = Api::namespaced(client.clone(), namespace);
            let params = DeleteParams {
                preconditions: Some(Preconditions {
                    uid: Some(pod.uid.clone()),
                    resource_version: None,
                }),
                ..DeleteParams::default()
            };
            match api.delete(name, &params).await {
                Ok(_) => {
                    stats.update(|s| s.misplaced_deleted += 1);
                    events.emit(
                        pod_ref(namespace, name, &pod.uid),
                        EventType::Warning,
                        "WrongDevice",
                        "Delete",
                        format!(
                            "dilu-scheduler assigned device {} but the kubelet gave shares of {held}; deleted so \
                             that its replacement is placed again",
                            pod.assigned
                        ),
                    );
                }
                Err(error) => {
                    eprintln!(
                        "dilu agent: node {node}: deleting pod {}: {error} (retried at the next check)",
                        pod.key
                    );
                    deleted.remove(&pod.uid);
                }
            }
        }
    }
}

/// The devices the inventory lists: all but the unhealthy ones.
fn listed(devices: &[NodeDevice], unhealthy: &BTreeSet<String>) -> Vec<NodeDevice> {
    devices
        .iter()
        .filter(|d| !unhealthy.contains(&d.uuid))
        .cloned()
        .collect()
}

/// Watches the own Node and writes the inventory whenever it differs from what should be listed (at once when
/// the watch starts, and when a device's health changes).
async fn keep_inventory(
    api: Api<Node>,
    node: String,
    all: Vec<NodeDevice>,
    mut unhealthy: Option<watch::Receiver<BTreeSet<String>>>,
    stats: Arc<NodeStats>,
) {
    let mut events = watcher(
        api.clone(),
        watcher::Config::default().fields(&format!("metadata.name={node}")),
    )
    .default_backoff()
    .boxed();
    let mut missing_reported = false;
    let mut devices = match &mut unhealthy {
        Some(rx) => listed(&all, &rx.borrow_and_update()),
        None => all.clone(),
    };
    let mut seen: Option<Node> = None;
    loop {
        let health_changed = async {
            match &mut unhealthy {
                Some(rx) => rx.changed().await.is_ok(),
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            event = events.next() => {
                let Some(event) = event else { break };
                match event {
                    Ok(Event::Apply(n) | Event::InitApply(n)) => seen = Some(n),
                    Ok(_) => continue,
                    Err(error) => {
                        eprintln!("dilu agent: node {node}: watching the Node: {error} (retrying)");
                        continue;
                    }
                }
            }
            open = health_changed => {
                match (open, &mut unhealthy) {
                    (true, Some(rx)) => devices = listed(&all, &rx.borrow_and_update()),
                    // The sender is gone: the list stays as it is.
                    _ => unhealthy = None,
                }
            }
        }
        let Some(seen) = &seen else {
            continue;
        };
        if inventory::is_current(seen, &devices) {
            continue;
        }
        let mut backoff = Duration::from_millis(200);
        loop {
            match inventory::write(&api, &node, &devices).await {
                Ok(()) => {
                    stats.update(|s| s.inventory_writes += 1);
                    eprintln!(
                        "dilu agent: node {node}: {} written ({} device(s))",
                        meta::INVENTORY,
                        devices.len()
                    );
                    break;
                }
                Err(kube::Error::Api(status)) if status.code == 404 => {
                    // Deleted meanwhile: the watch sees it come back.
                    if !missing_reported {
                        eprintln!("dilu agent: node {node}: no such Node (yet); waiting for it");
                        missing_reported = true;
                    }
                    break;
                }
                Err(error) => {
                    eprintln!(
                        "dilu agent: node {node}: writing {}: {error} (retrying in {} ms)",
                        meta::INVENTORY,
                        backoff.as_millis()
                    );
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(10));
                }
            }
        }
    }
}
