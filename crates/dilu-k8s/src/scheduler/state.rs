//! The pure core of dilu-scheduler: what it knows (the ledger, the nodes, the pods it tracks, the binds in
//! flight) and what it decides, with no I/O, no clock and no async. The I/O layer ([`super::run`]) feeds it
//! what the watches show ([`Scheduling::observe_node`], [`Scheduling::observe_pod`], the list markers), asks
//! it what to do ([`Scheduling::next_binds`], [`Scheduling::take_condition_updates`]) and tells it how each
//! bind ended ([`Scheduling::bind_done`]). Time comes in as an argument (nanoseconds on any monotonic clock).
//!
//! The rules it keeps:
//! - nothing is placed before the first complete list of both Nodes and Pods, and every bound pod is booked
//!   (adopted) before any pending pod is placed, so a restart never double-allocates;
//! - a pod is booked the moment it is placed (it is *assumed*, like kube-scheduler's cache); the watch event
//!   that later shows it bound confirms that booking instead of adding a second one, and an older event that
//!   still shows it pending does not undo it;
//! - a bound pod's assignment, as the API server shows it, always wins over what the core believed;
//! - a pod nothing fits waits until the nodes or the bookings change; a failed bind releases its booking and
//!   is retried after an exponential back-off;
//! - nothing is placed on a cordoned node (`spec.unschedulable`) or a lost one (its agent's Lease ran out,
//!   [`crate::nodes`]): the ledger does not see such a node at all, and the pods bound there are adopted again
//!   when it comes back.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::sync::atomic::Ordering;

use dilu_core::InstanceRequest;
use dilu_core::ledger::{DeviceClass, DeviceRef, Ledger, LedgerError, NodeInventory};
use dilu_core::placement::Placer;
use dilu_core::scheduling::PlacementRules;

use super::Counters;
use crate::meta::Assignment;

/// Nanoseconds on the caller's monotonic clock.
pub type Nanos = u64;

/// A pod as the scheduler needs it, read from a `Pod` object by the I/O layer (tests build it by hand).
#[derive(Debug, Clone, PartialEq)]
pub struct PodView {
    /// `metadata.namespace`.
    pub namespace: String,
    /// `metadata.name`.
    pub name: String,
    /// `metadata.uid`.
    pub uid: String,
    /// `metadata.creationTimestamp`, seconds since the Unix epoch: the first key of the placement order.
    pub created: i64,
    /// Whether `spec.schedulerName` names this scheduler.
    pub ours: bool,
    /// `spec.nodeName`, when bound.
    pub node_name: Option<String>,
    /// Whether `metadata.deletionTimestamp` is set.
    pub deleting: bool,
    /// Whether `status.phase` is `Succeeded` or `Failed`.
    pub finished: bool,
    /// The ledger request read from the function label and the booking annotation: `None` when the pod has
    /// no booking annotation, `Err` (why) when it cannot be read.
    pub request: Option<Result<InstanceRequest, String>>,
    /// The class of device the booking asks for (its `device`; `gpu` without a readable booking).
    pub class: DeviceClass,
    /// Where it may be placed: its `nodeSelector`, required node affinity and tolerations, and the spread of
    /// its function's replicas (the `dilu.io/spread` annotation).
    pub rules: PlacementRules,
    /// The assignment annotation: `None` when absent, `Err` (why) when it cannot be read.
    pub assignment: Option<Result<Assignment, String>>,
    /// The message of the pod's `PodScheduled=False` condition when its reason is `Unschedulable`.
    pub unschedulable_message: Option<String>,
}

impl PodView {
    /// The pod's key in the ledger: `namespace/name`.
    pub fn key(&self) -> String {
        format!("{}/{}", self.namespace, self.name)
    }
}

/// A bind to make: `POST …/pods/{name}/binding` with the assignment annotation.
#[derive(Debug, Clone, PartialEq)]
pub struct Bind {
    /// Unique among this core's binds; [`Scheduling::bind_done`] matches the result by it.
    pub id: u64,
    /// The pod's namespace.
    pub namespace: String,
    /// The pod's name.
    pub name: String,
    /// The pod's UID when it was placed.
    pub uid: String,
    /// Where it goes.
    pub at: DeviceRef,
    /// Its SM request, milli (for the log line).
    pub sm_request: u32,
    /// Its SM limit, milli (for the log line).
    pub sm_limit: u32,
}

impl Bind {
    /// The pod's key (`namespace/name`).
    pub fn key(&self) -> String {
        format!("{}/{}", self.namespace, self.name)
    }

    /// The assignment the Binding carries.
    pub fn assignment(&self) -> Assignment {
        Assignment::of(&self.at)
    }
}

/// How a bind ended.
#[derive(Debug, Clone, PartialEq)]
pub enum BindOutcome {
    /// The API server bound the pod (and wrote its assignment).
    Bound,
    /// 409: the pod is bound already (by an earlier run or another replica), or is being deleted. Carries the
    /// pod as re-read after the refusal (`None` when that read failed too).
    Conflict(Option<Box<PodView>>),
    /// 404: the pod is gone.
    Gone,
    /// Any other failure (the message says what).
    Failed(String),
}

/// A `PodScheduled=False` condition (reason `Unschedulable`) to write on a pending pod.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConditionUpdate {
    /// The pod's namespace.
    pub namespace: String,
    /// The pod's name.
    pub name: String,
    /// The pod's UID (its events name it).
    pub uid: String,
    /// The ledger's message.
    pub message: String,
}

/// The core's tunables.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Settings {
    /// The most binds in flight at once (at least 1).
    pub max_in_flight: usize,
    /// The first back-off after a failed bind.
    pub backoff_initial: Nanos,
    /// The longest back-off.
    pub backoff_max: Nanos,
}

impl Default for Settings {
    fn default() -> Settings {
        Settings {
            max_in_flight: 64,
            backoff_initial: 1_000_000_000,
            backoff_max: 60_000_000_000,
        }
    }
}

/// Where a tracked pod stands.
#[derive(Debug, Clone, PartialEq)]
enum State {
    /// Waiting for a device (in the queue).
    Pending {
        /// Not before this time (a failed bind's back-off; 0: now).
        retry_at: Nanos,
        /// The ledger generation at which nothing fitted it: not retried until the generation moves on.
        unschedulable_at: Option<u64>,
    },
    /// Booked; the bind with this id is in flight.
    Binding { id: u64, at: DeviceRef },
    /// Bound by us (the API server said so); the watch has not shown it bound yet.
    Assumed { at: DeviceRef },
    /// Bound, as the API server shows it. `booked`: the ledger holds it there; when not (its device is
    /// unknown, or it does not fit), adoption is retried when the generation moves on past `tried`.
    Bound {
        at: DeviceRef,
        booked: bool,
        tried: Option<u64>,
    },
    /// Ours but unreadable (bad booking): never placed; the reason was logged.
    Invalid { reason: String },
}

#[derive(Debug, Clone)]
struct Entry {
    view: PodView,
    state: State,
    /// Binds that failed in a row (the back-off's exponent).
    failures: u32,
    /// The unschedulable message last written on the pod (or seen on it).
    reported: Option<String>,
    /// The last adoption error logged for this pod.
    adopt_error: Option<String>,
}

/// The scheduler's state: the ledger over the nodes' inventories, the pods it tracks and the binds in flight.
pub struct Scheduling {
    ledger: Ledger,
    settings: Settings,
    counters: Arc<Counters>,
    /// Nodes with a readable inventory, by name (the ledger's order).
    nodes: BTreeMap<String, NodeInventory>,
    /// Node inventory changed since the ledger last saw it.
    nodes_dirty: bool,
    /// The last inventory error logged per node.
    node_errors: BTreeMap<String, String>,
    /// Cordoned nodes (`spec.unschedulable: true`).
    cordoned: BTreeSet<String>,
    /// Lost nodes (their agent's Lease ran out).
    lost: BTreeSet<String>,
    pods: BTreeMap<String, Entry>,
    /// Pending pods in placement order: (creation time, key).
    queue: BTreeSet<(i64, String)>,
    /// Bound pods the ledger does not hold (to adopt).
    unbooked: BTreeSet<String>,
    /// Moves on whenever the nodes change or a booking is released: what was unschedulable may fit now.
    generation: u64,
    in_flight: usize,
    next_id: u64,
    /// A list in progress (keys seen so far), per watch.
    listing_nodes: Option<BTreeSet<String>>,
    listing_pods: Option<BTreeSet<String>>,
    nodes_synced: bool,
    pods_synced: bool,
    conditions: Vec<ConditionUpdate>,
    log: Vec<String>,
}

fn milli(x: u32) -> f64 {
    f64::from(x) / 1000.0
}

impl Scheduling {
    /// An empty core placing with `placer`; it counts into `counters`.
    pub fn new(
        placer: Box<dyn Placer>,
        settings: Settings,
        counters: Arc<Counters>,
    ) -> Result<Scheduling, LedgerError> {
        Ok(Scheduling {
            ledger: Ledger::new(&[], placer)?,
            settings,
            counters,
            nodes: BTreeMap::new(),
            nodes_dirty: false,
            node_errors: BTreeMap::new(),
            cordoned: BTreeSet::new(),
            lost: BTreeSet::new(),
            pods: BTreeMap::new(),
            queue: BTreeSet::new(),
            unbooked: BTreeSet::new(),
            generation: 0,
            in_flight: 0,
            next_id: 1,
            listing_nodes: None,
            listing_pods: None,
            nodes_synced: false,
            pods_synced: false,
            conditions: Vec::new(),
            log: Vec::new(),
        })
    }

    /// The ledger (as of the last [`Scheduling::next_binds`]).
    pub fn ledger(&self) -> &Ledger {
        &self.ledger
    }

    /// Whether the first complete lists of Nodes and Pods have been seen.
    pub fn synced(&self) -> bool {
        self.nodes_synced && self.pods_synced
    }

    /// Binds handed out and not yet reported back.
    pub fn in_flight(&self) -> usize {
        self.in_flight
    }

    /// Pods waiting for a device.
    pub fn pending(&self) -> usize {
        self.queue.len()
    }

    /// Takes the decision log: one line per decision, for stderr.
    pub fn take_log(&mut self) -> Vec<String> {
        std::mem::take(&mut self.log)
    }

    /// Takes the conditions to write on unschedulable pods.
    pub fn take_condition_updates(&mut self) -> Vec<ConditionUpdate> {
        std::mem::take(&mut self.conditions)
    }

    /// When the earliest back-off still running at `now` ends, if a pod waits for one: the time to call
    /// [`Scheduling::next_binds`] again when nothing else happens. (A back-off that has ended but whose pod
    /// could not be placed yet waits for a bind in flight to come back, which is an event of its own.)
    pub fn next_wakeup(&self, now: Nanos) -> Option<Nanos> {
        self.queue
            .iter()
            .filter_map(|(_, key)| match self.pods.get(key).map(|e| &e.state) {
                Some(State::Pending { retry_at, .. }) if *retry_at > now => Some(*retry_at),
                _ => None,
            })
            .min()
    }

    fn say(&mut self, line: String) {
        self.log.push(format!("dilu-scheduler: {line}"));
    }

    // --- nodes -----------------------------------------------------------------------------------------------

    /// A watch (re)starts listing Nodes: nodes not listed before [`Scheduling::end_node_list`] are gone.
    pub fn begin_node_list(&mut self) {
        self.listing_nodes = Some(BTreeSet::new());
    }

    /// The Node list is complete.
    pub fn end_node_list(&mut self) {
        if let Some(seen) = self.listing_nodes.take() {
            let gone: Vec<String> = self
                .nodes
                .keys()
                .filter(|n| !seen.contains(*n))
                .cloned()
                .collect();
            for name in gone {
                self.node_gone(&name);
            }
        }
        self.nodes_synced = true;
    }

    /// A Node as it is now: `inventory` is `None` when it carries no inventory annotation (not a Dilu node),
    /// `Err` (why) when the annotation cannot be read. Either way such a node offers nothing.
    pub fn observe_node(&mut self, name: &str, inventory: Option<Result<NodeInventory, String>>) {
        if let Some(seen) = &mut self.listing_nodes {
            seen.insert(name.to_string());
        }
        match inventory {
            Some(Ok(inv)) => {
                self.node_errors.remove(name);
                if self.nodes.get(name) != Some(&inv) {
                    self.nodes.insert(name.to_string(), inv);
                    self.nodes_dirty = true;
                }
            }
            Some(Err(why)) => {
                if self.node_errors.get(name) != Some(&why) {
                    self.say(format!("node {name} ignored: {why}"));
                    self.node_errors.insert(name.to_string(), why);
                }
                self.node_gone(name);
            }
            None => self.node_gone(name),
        }
    }

    /// A Node was deleted (or no longer offers anything).
    pub fn node_gone(&mut self, name: &str) {
        if self.nodes.remove(name).is_some() {
            self.nodes_dirty = true;
        }
        self.cordoned.remove(name);
    }

    /// Whether Node `name` is cordoned (`spec.unschedulable: true`): nothing is placed there while it is.
    pub fn set_cordoned(&mut self, name: &str, cordoned: bool) {
        let changed = if cordoned {
            self.cordoned.insert(name.to_string())
        } else {
            self.cordoned.remove(name)
        };
        if changed {
            self.say(format!(
                "node {name} {}",
                if cordoned {
                    "cordoned: placing nothing there"
                } else {
                    "uncordoned"
                }
            ));
            self.nodes_dirty = true;
        }
    }

    /// The nodes lost now (their agent's Lease ran out): nothing is placed there while they are.
    pub fn set_lost_nodes(&mut self, lost: &BTreeSet<String>) {
        if *lost == self.lost {
            return;
        }
        for node in lost.difference(&self.lost) {
            self.log.push(format!(
                "dilu-scheduler: node {node} lost: placing nothing there"
            ));
        }
        for node in self.lost.difference(lost) {
            self.log
                .push(format!("dilu-scheduler: node {node} is back"));
        }
        self.lost = lost.clone();
        self.nodes_dirty = true;
    }

    /// Whether pods may be placed on `node` (it is neither cordoned nor lost).
    pub fn schedulable(&self, node: &str) -> bool {
        !self.cordoned.contains(node) && !self.lost.contains(node)
    }

    /// Gives the ledger the nodes as they are now; bookings on devices that went away are lost.
    fn flush_nodes(&mut self) {
        if !self.nodes_dirty {
            return;
        }
        self.nodes_dirty = false;
        let nodes: Vec<NodeInventory> = self
            .nodes
            .values()
            .filter(|n| self.schedulable(&n.name))
            .cloned()
            .collect();
        match self.ledger.set_nodes(&nodes) {
            Ok(lost) => {
                for key in lost {
                    let set_aside = self
                        .pods
                        .get(&key)
                        .and_then(|e| e.view.node_name.as_deref())
                        .is_some_and(|n| self.nodes.contains_key(n) && !self.schedulable(n));
                    if !set_aside {
                        self.say(format!(
                            "{key}: its device left the inventory; booking dropped"
                        ));
                    }
                    if let Some(Entry {
                        state: State::Bound { at, .. },
                        ..
                    }) = self.pods.get(&key)
                    {
                        let at = at.clone();
                        let state = State::Bound {
                            at,
                            booked: false,
                            tried: None,
                        };
                        self.set_state(&key, state);
                    }
                }
            }
            Err(e) => self.say(format!("inventory refused: {e}")),
        }
        self.generation += 1;
    }

    // --- pods ------------------------------------------------------------------------------------------------

    /// A watch (re)starts listing Pods: tracked pods not listed before [`Scheduling::end_pod_list`] are gone.
    pub fn begin_pod_list(&mut self) {
        self.listing_pods = Some(BTreeSet::new());
    }

    /// The Pod list is complete.
    pub fn end_pod_list(&mut self) {
        if let Some(seen) = self.listing_pods.take() {
            let gone: Vec<String> = self
                .pods
                .keys()
                .filter(|k| !seen.contains(*k))
                .cloned()
                .collect();
            for key in gone {
                self.forget(&key);
            }
        }
        self.pods_synced = true;
    }

    /// A pod was deleted. `uid`: the deleted pod's, so that a newer pod of the same name is kept.
    pub fn pod_deleted(&mut self, namespace: &str, name: &str, uid: &str) {
        let key = format!("{namespace}/{name}");
        if self.pods.get(&key).is_some_and(|e| e.view.uid == uid) {
            self.forget(&key);
        }
    }

    /// Releases what `key` holds and stops tracking it.
    fn forget(&mut self, key: &str) {
        if let Some(entry) = self.pods.remove(key) {
            self.queue.remove(&(entry.view.created, key.to_string()));
        }
        self.unbooked.remove(key);
        self.release(key);
    }

    fn release(&mut self, key: &str) {
        if self.ledger.release(key) {
            self.generation += 1;
        }
    }

    /// Every change of a tracked pod's state goes through here, which keeps the queue of pending pods and
    /// the set of bound pods to adopt in step with the states.
    fn set_state(&mut self, key: &str, state: State) {
        if let Some(entry) = self.pods.get_mut(key) {
            let slot = (entry.view.created, key.to_string());
            if matches!(state, State::Pending { .. }) {
                self.queue.insert(slot);
            } else {
                self.queue.remove(&slot);
            }
            if matches!(state, State::Bound { booked: false, .. }) {
                self.unbooked.insert(key.to_string());
            } else {
                self.unbooked.remove(key);
            }
            entry.state = state;
        }
    }

    fn pending_now() -> State {
        State::Pending {
            retry_at: 0,
            unschedulable_at: None,
        }
    }

    /// A pod as it is now (from a list or a watch event, or re-read after a refused bind).
    pub fn observe_pod(&mut self, view: PodView) {
        let key = view.key();
        if let Some(seen) = &mut self.listing_pods {
            seen.insert(key.clone());
        }
        // Another pod under the same name: the one we knew is gone.
        if self.pods.get(&key).is_some_and(|e| e.view.uid != view.uid) {
            self.forget(&key);
        }
        if view.finished {
            self.forget(&key);
            return;
        }
        match view.node_name.clone() {
            Some(node) => self.observe_bound(key, view, node),
            None => self.observe_unbound(key, view),
        }
    }

    fn observe_bound(&mut self, key: String, view: PodView, node: String) {
        let assignment = match &view.assignment {
            Some(Ok(a)) if a.node == node => a.clone(),
            Some(Ok(a)) => {
                let line = format!(
                    "{key}: bound to node {node} but assigned to node {}; not booked",
                    a.node
                );
                return self.untrack_bound(key, view, line);
            }
            Some(Err(why)) => {
                let line = format!("{key}: bound to node {node}, unreadable assignment: {why}");
                return self.untrack_bound(key, view, line);
            }
            // Bound by someone else, without a device: nothing of ours.
            None => return self.forget(&key),
        };
        let request = match &view.request {
            Some(Ok(r)) => r.clone(),
            Some(Err(why)) => {
                let line = format!("{key}: bound to {node}, unreadable booking: {why}; not booked");
                return self.untrack_bound(key, view, line);
            }
            None => {
                let line =
                    format!("{key}: bound to {node} with an assignment but no booking; not booked");
                return self.untrack_bound(key, view, line);
            }
        };
        let at = assignment.device_ref();
        // Confirmation: already booked there with this request (an assumed pod, or a repeated event).
        let booked = self.ledger.device_of(&key) == Some(&at)
            && self.ledger.request_of(&key) == Some(&request);
        if !booked {
            // Whatever we believed, the API server's word wins: drop it and adopt what the pod has.
            self.release(&key);
        }
        let entry = self.pods.entry(key.clone()).or_insert_with(|| Entry {
            view: view.clone(),
            state: State::Bound {
                at: at.clone(),
                booked: false,
                tried: None,
            },
            failures: 0,
            reported: None,
            adopt_error: None,
        });
        entry.view = view;
        let tried = match &entry.state {
            State::Bound { at: was, tried, .. } if *was == at => *tried,
            _ => None,
        };
        self.set_state(&key, State::Bound { at, booked, tried });
    }

    /// A bound pod we cannot book: nothing booked for it; the line is logged once (the pod is kept as
    /// invalid so that it is not repeated on every event).
    fn untrack_bound(&mut self, key: String, view: PodView, line: String) {
        let repeated = matches!(
            self.pods.get(&key).map(|e| &e.state),
            Some(State::Invalid { reason }) if *reason == line
        );
        self.release(&key);
        if !repeated {
            self.say(line.clone());
        }
        self.track(key.clone(), view);
        self.set_state(&key, State::Invalid { reason: line });
    }

    fn observe_unbound(&mut self, key: String, view: PodView) {
        let known = self.pods.get(&key).map(|e| e.state.clone());
        if !view.ours {
            return self.forget(&key);
        }
        if view.deleting {
            // A bind in flight will be refused; its result cleans up.
            if !matches!(known, Some(State::Binding { .. })) {
                self.forget(&key);
            }
            return;
        }
        let request = match &view.request {
            Some(Ok(r)) => Ok(r.clone()),
            Some(Err(why)) => Err(format!("unreadable booking: {why}")),
            None => Err("no booking annotation".to_string()),
        };
        match (known, request) {
            // An event older than our bind, or the one that the bind caused before the pod was bound: the
            // booking stays (the assumed set).
            (Some(State::Binding { .. } | State::Assumed { .. } | State::Bound { .. }), _) => {
                if let Some(e) = self.pods.get_mut(&key) {
                    e.view = view;
                }
            }
            (known, Err(reason)) => {
                let line = format!("{key}: not scheduled: {reason}");
                if known
                    != Some(State::Invalid {
                        reason: line.clone(),
                    })
                {
                    self.say(line.clone());
                }
                self.release(&key);
                self.track(key.clone(), view);
                self.set_state(&key, State::Invalid { reason: line });
            }
            (Some(State::Pending { .. }), Ok(request)) => {
                if let Some(e) = self.pods.get_mut(&key) {
                    let changed = !matches!(&e.view.request, Some(Ok(r)) if *r == request);
                    if view.unschedulable_message.is_some() {
                        e.reported = view.unschedulable_message.clone();
                    }
                    e.view = view;
                    if changed
                        && let State::Pending {
                            unschedulable_at, ..
                        } = &mut e.state
                    {
                        *unschedulable_at = None;
                    }
                }
            }
            (_, Ok(_)) => {
                self.track(key.clone(), view);
                self.set_state(&key, Self::pending_now());
            }
        }
    }

    fn track(&mut self, key: String, view: PodView) {
        let reported = view.unschedulable_message.clone();
        let entry = self.pods.entry(key).or_insert_with(|| Entry {
            view: view.clone(),
            state: State::Invalid {
                reason: String::new(),
            },
            failures: 0,
            reported,
            adopt_error: None,
        });
        entry.view = view;
    }

    // --- decisions -------------------------------------------------------------------------------------------

    /// Adopts every bound pod not yet booked (when the nodes or bookings changed since its last try).
    fn adopt_bound(&mut self) {
        let generation = self.generation;
        let candidates: Vec<(String, DeviceRef, InstanceRequest)> = self
            .unbooked
            .iter()
            .filter_map(|key| self.pods.get(key).map(|e| (key, e)))
            // Pods on a cordoned or lost node wait until it is back (the ledger does not see it meanwhile).
            .filter(|(_, e)| match &e.state {
                State::Bound { at, .. } => self.schedulable(&at.node),
                _ => true,
            })
            .filter_map(|(key, e)| match (&e.state, &e.view.request) {
                (
                    State::Bound {
                        at,
                        booked: false,
                        tried,
                    },
                    Some(Ok(r)),
                ) if *tried != Some(generation) => Some((key.clone(), at.clone(), r.clone())),
                _ => None,
            })
            .collect();
        for (key, at, request) in candidates {
            let result = if self.ledger.contains(&key) {
                // Booked elsewhere by a stale decision: the pod's own assignment wins.
                self.release(&key);
                self.ledger.adopt(&key, &at, &request)
            } else {
                self.ledger.adopt(&key, &at, &request)
            };
            match result {
                Ok(()) => {
                    let state = State::Bound {
                        at,
                        booked: true,
                        tried: None,
                    };
                    self.set_state(&key, state);
                    if let Some(entry) = self.pods.get_mut(&key) {
                        entry.adopt_error = None;
                    }
                    self.counters.adopted.fetch_add(1, Ordering::Relaxed);
                }
                Err(e) => {
                    let why = e.to_string();
                    let state = State::Bound {
                        at: at.clone(),
                        booked: false,
                        tried: Some(generation),
                    };
                    self.set_state(&key, state);
                    let Some(entry) = self.pods.get_mut(&key) else {
                        continue;
                    };
                    if entry.adopt_error.as_ref() != Some(&why) {
                        entry.adopt_error = Some(why.clone());
                        self.say(format!(
                            "{key}: bound to {}/{} but not booked: {why}",
                            at.node, at.device
                        ));
                    }
                }
            }
        }
    }

    /// Brings the ledger up to date (nodes, then every bound pod) and places pending pods in order (creation
    /// time, then key) while fewer than `max_in_flight` binds are out. Nothing before the first complete lists
    /// of Nodes and Pods.
    pub fn next_binds(&mut self, now: Nanos) -> Vec<Bind> {
        if !self.synced() {
            return Vec::new();
        }
        self.flush_nodes();
        self.adopt_bound();
        let mut binds = Vec::new();
        let limit = self.settings.max_in_flight.max(1);
        if self.in_flight >= limit {
            return binds;
        }
        let generation = self.generation;
        loop {
            let budget = limit.saturating_sub(self.in_flight);
            if budget == 0 {
                break;
            }
            // The next pods in order that may be tried now. Each is either bound (using the budget) or marked
            // unschedulable or backed off (no longer eligible), so the loop ends.
            let batch: Vec<String> = self
                .queue
                .iter()
                .filter(|(_, key)| {
                    matches!(
                        self.pods.get(key).map(|e| &e.state),
                        Some(State::Pending { retry_at, unschedulable_at })
                            if *retry_at <= now && *unschedulable_at != Some(generation)
                    )
                })
                .take(budget)
                .map(|(_, key)| key.clone())
                .collect();
            if batch.is_empty() {
                break;
            }
            for key in batch {
                if let Some(bind) = self.place_one(&key, now, generation) {
                    binds.push(bind);
                }
            }
        }
        binds
    }

    /// Places one pending pod: a bind when a device was booked for it.
    fn place_one(&mut self, key: &str, now: Nanos, generation: u64) -> Option<Bind> {
        let entry = self.pods.get(key)?;
        let Some(Ok(request)) = entry.view.request.clone() else {
            // Not reached: a pod is queued only with a readable request. Taken out of the queue all the same.
            let reason = format!("{key}: not scheduled: no readable booking");
            self.set_state(key, State::Invalid { reason });
            return None;
        };
        let class = entry.view.class;
        let rules = entry.view.rules.clone();
        let preassigned = match &entry.view.assignment {
            Some(Ok(a)) => Some(a.device_ref()),
            _ => None,
        };
        // A pod that carries an assignment but no node (not possible with the atomic binding; robust anyway):
        // book it where it says and bind it there, when it fits; else place it like any other.
        let placed = match preassigned {
            Some(at) => match self.ledger.adopt(key, &at, &request) {
                Ok(()) => {
                    self.say(format!(
                        "{key}: carries an assignment to {}/{} but no node; binding it there",
                        at.node, at.device
                    ));
                    Ok(at)
                }
                Err(_) => self.ledger.place_where(key, &request, class, &rules),
            },
            None => self.ledger.place_where(key, &request, class, &rules),
        };
        match placed {
            Ok(at) => {
                let id = self.next_id;
                self.next_id += 1;
                let entry = self.pods.get(key)?;
                let bind = Bind {
                    id,
                    namespace: entry.view.namespace.clone(),
                    name: entry.view.name.clone(),
                    uid: entry.view.uid.clone(),
                    at: at.clone(),
                    sm_request: request.sm_request,
                    sm_limit: request.sm_limit,
                };
                self.in_flight += 1;
                self.set_state(key, State::Binding { id, at });
                Some(bind)
            }
            Err(LedgerError::Unschedulable(message) | LedgerError::NoNodeAllowed(message)) => {
                self.counters.unschedulable.fetch_add(1, Ordering::Relaxed);
                let entry = self.pods.get_mut(key)?;
                // Pending stays pending: the queue and the adoption set do not change.
                entry.state = State::Pending {
                    retry_at: 0,
                    unschedulable_at: Some(generation),
                };
                if entry.reported.as_ref() != Some(&message) {
                    entry.reported = Some(message.clone());
                    let update = ConditionUpdate {
                        namespace: entry.view.namespace.clone(),
                        name: entry.view.name.clone(),
                        uid: entry.view.uid.clone(),
                        message: message.clone(),
                    };
                    self.conditions.push(update);
                    self.say(format!("{key} unschedulable: {message}"));
                }
                None
            }
            Err(e) => {
                // The placer chose a device the ledger refused: a failed attempt, retried after a back-off.
                self.say(format!("{key}: placement failed: {e}"));
                self.counters.failures.fetch_add(1, Ordering::Relaxed);
                self.back_off(key, now);
                None
            }
        }
    }

    fn back_off(&mut self, key: &str, now: Nanos) {
        let Some(entry) = self.pods.get_mut(key) else {
            return;
        };
        entry.failures = entry.failures.saturating_add(1);
        let shift = entry.failures.saturating_sub(1).min(30);
        let wait = self
            .settings
            .backoff_initial
            .saturating_mul(1u64 << shift)
            .min(self.settings.backoff_max)
            .max(1);
        self.set_state(
            key,
            State::Pending {
                retry_at: now.saturating_add(wait),
                unschedulable_at: None,
            },
        );
    }

    /// How the bind `bind` (from [`Scheduling::next_binds`]) ended.
    pub fn bind_done(&mut self, bind: &Bind, outcome: BindOutcome, now: Nanos) {
        self.in_flight = self.in_flight.saturating_sub(1);
        let key = bind.key();
        // Whether the pod still waits on this very bind (it may have been deleted, re-created, or shown
        // bound by the watch in the meantime).
        let current = self.pods.get(&key).is_some_and(|e| {
            e.view.uid == bind.uid && matches!(e.state, State::Binding { id, .. } if id == bind.id)
        });
        let (node, device) = (&bind.at.node, &bind.at.device);
        match outcome {
            BindOutcome::Bound => {
                self.counters.binds.fetch_add(1, Ordering::Relaxed);
                self.say(format!(
                    "bound {key} to {node}/{device} (request {:.2}, limit {:.2})",
                    milli(bind.sm_request),
                    milli(bind.sm_limit)
                ));
                if current {
                    if let Some(e) = self.pods.get_mut(&key) {
                        e.failures = 0;
                    }
                    self.set_state(
                        &key,
                        State::Assumed {
                            at: bind.at.clone(),
                        },
                    );
                }
            }
            BindOutcome::Conflict(fresh) => {
                self.counters.conflicts.fetch_add(1, Ordering::Relaxed);
                let shown = match fresh.as_ref().and_then(|v| v.node_name.as_ref()) {
                    Some(n) => format!("bound to {n}"),
                    None => "not bound".to_string(),
                };
                self.say(format!(
                    "{key}: binding to {node}/{device} refused (409; the pod is {shown}); adopting what it has"
                ));
                if current {
                    self.release(&key);
                    self.back_off(&key, now);
                    if let Some(view) = fresh {
                        self.observe_pod(*view);
                    }
                }
            }
            BindOutcome::Gone => {
                self.counters.gone.fetch_add(1, Ordering::Relaxed);
                self.say(format!("{key}: gone before it was bound (404); released"));
                if current {
                    self.forget(&key);
                }
            }
            BindOutcome::Failed(why) => {
                self.counters.failures.fetch_add(1, Ordering::Relaxed);
                self.say(format!(
                    "{key}: binding to {node}/{device} failed: {why}; released, retried later"
                ));
                if current {
                    self.release(&key);
                    self.back_off(&key, now);
                }
            }
        }
    }
}
