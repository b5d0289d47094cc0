//! Kubernetes Events for what Dilu's processes decide, on the object each decision concerns, so that `kubectl
//! describe pod|node|function` and `kubectl get events` show it as they show the kube-scheduler's and the
//! kubelet's:
//!
//! - dilu-scheduler: `Scheduled` when it binds a pod (node, device, shares), `FailedScheduling` when nothing
//!   fits (the ledger's reason; once per change of reason, as the pod's `PodScheduled` condition);
//! - the controller: its decision log on the `Function` ([`decision`]: deployed, profiled, scaled out or in,
//!   an instance that exited or did not become ready…), `NodeLost` on a pod it deletes because its node's
//!   agent stopped renewing its Lease;
//! - the node agent: `GPUUnhealthy`/`GPUHealthy` on its Node, `WrongDevice` on a pod it deletes because the
//!   kubelet gave it shares of another device than its assignment.
//!
//! [`EventSink::emit`] never waits: events go through a bounded queue to one task that writes them (up to
//! [`WRITES_IN_FLIGHT`] at once), so a slow API server delays events, never a bind or a reconcile pass. A full queue drops the event and counts it
//! (client-go's recorder drops too). The same event again (same object, reason and message) within
//! [`REPEAT_WINDOW`] is not a new object: the first one's `count` and `lastTimestamp` say it happened again,
//! as client-go's correlator does. A write that fails is counted and logged once per distinct error; the counts
//! are `dilu_kube_events_total{result}` on the process's `/metrics` ([`EventCounts::render`]).
//!
//! They are core `v1` Events (what the kubelet and controller-runtime write, and what `kubectl describe`
//! reads). `events.k8s.io/v1` would do for namespaced objects, but kube-apiserver 1.20 (the one the tests run)
//! requires such an event's namespace to equal its object's, which an event about a Node cannot meet: it lives
//! in `default` and `kubectl describe node` looks for an empty object namespace.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use dilu_api::{Event as Decision, EventKind};
use k8s_openapi::api::core::v1::{Event, EventSource, ObjectReference};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time};
use k8s_openapi::jiff::Timestamp;
use kube::Client;
use kube::api::{Api, Patch, PatchParams, PostParams};
use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tokio::time::Instant;

/// How many events may wait to be written before new ones are dropped.
pub const QUEUE: usize = 1024;
/// A repeat of an event within this long counts in the first one's `count` instead of being a new object.
pub const REPEAT_WINDOW: Duration = Duration::from_secs(6 * 60);
/// How many event writes the writer keeps in flight at once.
pub const WRITES_IN_FLIGHT: usize = 8;
/// How long an event's message may be (1 kB, the bound `events.k8s.io` sets on a note).
pub const MESSAGE_MAX_BYTES: usize = 1024;

/// An event's type.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum EventType {
    /// Something happened as it should.
    Normal,
    /// Something an operator may want to look at.
    Warning,
}

impl EventType {
    fn as_str(self) -> &'static str {
        match self {
            EventType::Normal => "Normal",
            EventType::Warning => "Warning",
        }
    }
}

/// Who writes the events: `reportingComponent` and `source.component` (a qualified name such as
/// `dilu.io/scheduler`), `reportingInstance` and `source.host` (the pod or node it runs as).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reporter {
    /// `reportingComponent`.
    pub controller: String,
    /// `reportingInstance`.
    pub instance: String,
}

impl Reporter {
    /// `controller`, reporting as this process's host (the pod's name in a pod), or as `controller` itself.
    pub fn from_host(controller: &str) -> Reporter {
        let instance = std::env::var("HOSTNAME")
            .ok()
            .filter(|h| !h.is_empty())
            .unwrap_or_else(|| controller.to_string());
        Reporter {
            controller: controller.to_string(),
            instance,
        }
    }
}

/// What happened to the events given to a sink.
#[derive(Debug, Default)]
pub struct EventCounts {
    created: AtomicU64,
    repeated: AtomicU64,
    dropped: AtomicU64,
    failed: AtomicU64,
}

/// [`EventCounts`] at one moment.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct EventCountsSnapshot {
    /// Events written as new objects.
    pub created: u64,
    /// Repeats counted in an earlier event's `count`.
    pub repeated: u64,
    /// Dropped because the queue was full (or the writer had stopped).
    pub dropped: u64,
    /// Writes the API server refused or did not answer.
    pub failed: u64,
}

impl EventCounts {
    /// Appends `dilu_kube_events_total{result}` (Prometheus text) to `out`.
    pub fn render(&self, out: &mut String) {
        let c = self.snapshot();
        let mut family = dilu_core::prometheus::Family::new(
            out,
            "dilu_kube_events_total",
            "counter",
            "Kubernetes Events this process gave its writer: created, repeated (counted on an earlier event), \
             dropped (queue full) or failed (refused by the API server).",
        );
        for (result, n) in [
            ("created", c.created),
            ("repeated", c.repeated),
            ("dropped", c.dropped),
            ("failed", c.failed),
        ] {
            family.sample(&[("result", result)], n as f64);
        }
    }

    /// The counts now.
    pub fn snapshot(&self) -> EventCountsSnapshot {
        EventCountsSnapshot {
            created: self.created.load(Ordering::Relaxed),
            repeated: self.repeated.load(Ordering::Relaxed),
            dropped: self.dropped.load(Ordering::Relaxed),
            failed: self.failed.load(Ordering::Relaxed),
        }
    }
}

/// One event to write.
#[derive(Debug, Clone)]
struct Pending {
    regarding: ObjectReference,
    type_: EventType,
    reason: &'static str,
    action: &'static str,
    message: String,
}

/// Where a process's events go (cheap to clone; every clone feeds the same writer).
#[derive(Clone)]
pub struct EventSink {
    tx: Option<mpsc::Sender<Pending>>,
    counts: Arc<EventCounts>,
}

impl std::fmt::Debug for EventSink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EventSink")
            .field("on", &self.tx.is_some())
            .field("counts", &self.counts.snapshot())
            .finish()
    }
}

impl EventSink {
    /// A sink whose events a task on the current Tokio runtime writes through `client` as `reporter`. The task
    /// ends when every clone of the sink is dropped (events still queued then are written first).
    pub fn start(client: Client, reporter: Reporter) -> EventSink {
        EventSink::start_counting(client, reporter, Arc::default())
    }

    /// [`EventSink::start`], counting in `counts` (which a metrics endpoint may render).
    pub fn start_counting(
        client: Client,
        reporter: Reporter,
        counts: Arc<EventCounts>,
    ) -> EventSink {
        let (tx, rx) = mpsc::channel(QUEUE);
        tokio::spawn(write_events(client, reporter, rx, Arc::clone(&counts)));
        EventSink {
            tx: Some(tx),
            counts,
        }
    }

    /// A sink that writes nothing (events are not counted either).
    pub fn off() -> EventSink {
        EventSink {
            tx: None,
            counts: Arc::default(),
        }
    }

    /// Queues an event about `regarding`; never waits. `reason` and `action` are short PascalCase words;
    /// `message` says what happened with the numbers (cut to [`MESSAGE_MAX_BYTES`]).
    pub fn emit(
        &self,
        regarding: ObjectReference,
        type_: EventType,
        reason: &'static str,
        action: &'static str,
        message: impl Into<String>,
    ) {
        let Some(tx) = &self.tx else { return };
        let pending = Pending {
            regarding,
            type_,
            reason,
            action,
            message: bounded_message(message.into()),
        };
        if tx.try_send(pending).is_err() {
            self.counts.dropped.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// What happened to the events so far.
    pub fn counts(&self) -> EventCountsSnapshot {
        self.counts.snapshot()
    }
}

/// A reference to a pod (`kubectl describe pod` finds events by its UID).
pub fn pod_ref(namespace: &str, name: &str, uid: &str) -> ObjectReference {
    ObjectReference {
        api_version: Some("v1".into()),
        kind: Some("Pod".into()),
        namespace: Some(namespace.into()),
        name: Some(name.into()),
        uid: Some(uid.into()).filter(|u: &String| !u.is_empty()),
        ..ObjectReference::default()
    }
}

/// A reference to a Node. Its UID is the node's name, the kubelet's convention that `kubectl describe node`
/// searches by; the event lands in the `default` namespace.
pub fn node_ref(name: &str) -> ObjectReference {
    ObjectReference {
        api_version: Some("v1".into()),
        kind: Some("Node".into()),
        name: Some(name.into()),
        uid: Some(name.into()),
        ..ObjectReference::default()
    }
}

/// A reference to a `Function`.
pub fn function_ref(namespace: &str, name: &str, uid: &str) -> ObjectReference {
    ObjectReference {
        api_version: Some(format!("{}/{}", crate::meta::GROUP, crate::meta::VERSION)),
        kind: Some(crate::crd::KIND.into()),
        namespace: Some(namespace.into()),
        name: Some(name.into()),
        uid: Some(uid.into()).filter(|u: &String| !u.is_empty()),
        ..ObjectReference::default()
    }
}

/// The Kubernetes event a control-plane decision becomes on its `Function`: its type, reason and action;
/// `None` for decisions too frequent or shown elsewhere (a device's re-division and an instance's quota
/// change every few windows; a placement is the scheduler's `Scheduled` on the pod).
pub fn decision(kind: EventKind) -> Option<(EventType, &'static str, &'static str)> {
    use EventType::{Normal, Warning};
    Some(match kind {
        EventKind::Deployed => (Normal, "Deployed", "Deploy"),
        EventKind::Deleted => (Normal, "Deleted", "Delete"),
        EventKind::Refused => (Warning, "Refused", "Place"),
        EventKind::Profiled => (Normal, "Profiled", "Profile"),
        EventKind::ProfilingFailed => (Warning, "ProfilingFailed", "Profile"),
        EventKind::ScaleOut => (Normal, "ScaledOut", "Scale"),
        EventKind::ScaleIn => (Normal, "ScaledIn", "Scale"),
        EventKind::ColdStart => (Normal, "ColdStart", "Scale"),
        EventKind::Roll => (Normal, "RollingUpdate", "Update"),
        EventKind::Exit => (Warning, "InstanceExited", "Restart"),
        EventKind::NotReady => (Warning, "InstanceNotReady", "Replace"),
        EventKind::OutOfMemory => (Warning, "OutOfMemory", "Limit"),
        EventKind::Placement | EventKind::Vertical | EventKind::Quota => return None,
    })
}

/// The event message of a control-plane decision: the decision's, naming the instance when it concerns one.
pub fn decision_message(event: &Decision) -> String {
    match &event.instance {
        Some(instance) if !event.message.contains(instance.as_str()) => {
            format!("{instance}: {}", event.message)
        }
        _ => event.message.clone(),
    }
}

/// `message` cut to [`MESSAGE_MAX_BYTES`] on a character boundary, ending in `…` when cut.
fn bounded_message(message: String) -> String {
    if message.len() <= MESSAGE_MAX_BYTES {
        return message;
    }
    let mut end = MESSAGE_MAX_BYTES - '…'.len_utf8();
    while !message.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &message[..end])
}

/// What makes two events the same (a repeat is counted, not written again).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct RepeatKey {
    kind: Option<String>,
    namespace: Option<String>,
    name: Option<String>,
    uid: Option<String>,
    type_: EventType,
    reason: &'static str,
    message: String,
}

impl RepeatKey {
    fn of(p: &Pending) -> RepeatKey {
        RepeatKey {
            kind: p.regarding.kind.clone(),
            namespace: p.regarding.namespace.clone(),
            name: p.regarding.name.clone(),
            uid: p.regarding.uid.clone(),
            type_: p.type_,
            reason: p.reason,
            message: p.message.clone(),
        }
    }
}

/// An event written (or being written), for its repeats.
struct Written {
    namespace: String,
    name: String,
    /// How many times it happened so far (what the next write of it says).
    count: i32,
    first: Instant,
    /// A write of it is in flight; repeats meanwhile wait for it and go in one patch after it.
    in_flight: bool,
    /// Repeats no write has carried yet.
    waiting: u64,
}

/// One write the writer started: a new event, or a patch carrying `events` repeats.
struct Write {
    key: RepeatKey,
    create: bool,
    events: u64,
    /// For the log line of a failure.
    about: String,
}

/// The writer: up to [`WRITES_IN_FLIGHT`] writes at once, so a burst of events (a thousand binds) is written at
/// the API server's pace rather than one round trip after another. Writes of one event (its creation, then the
/// patches of its `count`) never overlap: repeats that arrive while one is in flight are carried together by
/// one patch after it, so the count only grows.
async fn write_events(
    client: Client,
    reporter: Reporter,
    mut rx: mpsc::Receiver<Pending>,
    counts: Arc<EventCounts>,
) {
    let mut written: HashMap<RepeatKey, Written> = HashMap::new();
    let mut writes: JoinSet<(Write, Result<(), kube::Error>)> = JoinSet::new();
    let mut last_error: Option<String> = None;
    let mut open = true;
    while open || !writes.is_empty() {
        tokio::select! {
            pending = rx.recv(), if open && writes.len() < WRITES_IN_FLIGHT => match pending {
                Some(pending) => accept(&client, &reporter, pending, &mut written, &mut writes),
                None => open = false,
            },
            Some(done) = writes.join_next(), if !writes.is_empty() => {
                let Ok((write, result)) = done else { continue };
                finish(&client, &reporter, &counts, write, result, &mut written, &mut writes, &mut last_error);
            }
        }
    }
}

/// Takes one event in: a new object, a patch of an earlier one's count, or a repeat for the patch after the
/// write in flight.
fn accept(
    client: &Client,
    reporter: &Reporter,
    pending: Pending,
    written: &mut HashMap<RepeatKey, Written>,
    writes: &mut JoinSet<(Write, Result<(), kube::Error>)>,
) {
    let now = Instant::now();
    written
        .retain(|_, w| w.in_flight || w.waiting > 0 || now.duration_since(w.first) < REPEAT_WINDOW);
    let key = RepeatKey::of(&pending);
    let about = format!(
        "{} on {} {}",
        pending.reason,
        pending.regarding.kind.as_deref().unwrap_or("object"),
        pending.regarding.name.as_deref().unwrap_or("?")
    );
    match written.get_mut(&key) {
        Some(w) => {
            w.count += 1;
            if w.in_flight {
                w.waiting += 1;
            } else {
                w.in_flight = true;
                writes.spawn(patch(
                    client.clone(),
                    w,
                    Write {
                        key,
                        create: false,
                        events: 1,
                        about,
                    },
                ));
            }
        }
        None => {
            let event = new_event(reporter, &pending);
            let namespace = event.metadata.namespace.clone().unwrap_or_default();
            let name = event.metadata.name.clone().unwrap_or_default();
            let api: Api<Event> = Api::namespaced(client.clone(), &namespace);
            written.insert(
                key.clone(),
                Written {
                    namespace,
                    name,
                    count: 1,
                    first: now,
                    in_flight: true,
                    waiting: 0,
                },
            );
            let write = Write {
                key,
                create: true,
                events: 1,
                about,
            };
            writes.spawn(async move {
                let created = api.create(&PostParams::default(), &event).await;
                (write, created.map(|_| ()))
            });
        }
    }
}

/// The patch that sets `w`'s count, as `write`.
fn patch(
    client: Client,
    w: &Written,
    write: Write,
) -> impl std::future::Future<Output = (Write, Result<(), kube::Error>)> + use<> {
    let api: Api<Event> = Api::namespaced(client, &w.namespace);
    let name = w.name.clone();
    let body = serde_json::json!({ "count": w.count, "lastTimestamp": Time(Timestamp::now()) });
    async move {
        let patched = api
            .patch(&name, &PatchParams::default(), &Patch::Merge(&body))
            .await;
        (write, patched.map(|_| ()))
    }
}

/// Counts a finished write and starts the patch of the repeats that waited for it.
#[allow(clippy::too_many_arguments)]
fn finish(
    client: &Client,
    reporter: &Reporter,
    counts: &EventCounts,
    write: Write,
    result: Result<(), kube::Error>,
    written: &mut HashMap<RepeatKey, Written>,
    writes: &mut JoinSet<(Write, Result<(), kube::Error>)>,
    last_error: &mut Option<String>,
) {
    let Some(w) = written.get_mut(&write.key) else {
        return;
    };
    w.in_flight = false;
    match &result {
        Ok(()) if write.create => {
            counts.created.fetch_add(1, Ordering::Relaxed);
        }
        Ok(()) => {
            counts.repeated.fetch_add(write.events, Ordering::Relaxed);
        }
        Err(_) => {
            counts.failed.fetch_add(write.events, Ordering::Relaxed);
        }
    }
    match result {
        Ok(()) => *last_error = None,
        Err(e) => {
            let text = e.to_string();
            if last_error.as_ref() != Some(&text) {
                eprintln!(
                    "{}: writing a Kubernetes event ({}): {text} (events are skipped until the API server takes \
                     them)",
                    reporter.controller, write.about,
                );
                *last_error = Some(text);
            }
            if write.create {
                // No object to count repeats on: they fail with it, and the next one is a new event.
                counts.failed.fetch_add(w.waiting, Ordering::Relaxed);
                written.remove(&write.key);
                return;
            }
        }
    }
    if w.waiting > 0 {
        let events = std::mem::take(&mut w.waiting);
        w.in_flight = true;
        let write = Write {
            events,
            create: false,
            ..write
        };
        writes.spawn(patch(client.clone(), w, write));
    }
}

fn new_event(reporter: &Reporter, p: &Pending) -> Event {
    let now = Timestamp::now();
    let namespace = p
        .regarding
        .namespace
        .clone()
        .unwrap_or_else(|| "default".to_string());
    let object = p.regarding.name.as_deref().unwrap_or("dilu");
    Event {
        metadata: ObjectMeta {
            // client-go's naming: the object's name and the time in hexadecimal nanoseconds.
            name: Some(format!("{object}.{:x}", now.as_nanosecond())),
            namespace: Some(namespace),
            ..ObjectMeta::default()
        },
        involved_object: p.regarding.clone(),
        type_: Some(p.type_.as_str().to_string()),
        reason: Some(p.reason.to_string()),
        action: Some(p.action.to_string()),
        message: Some(p.message.clone()),
        count: Some(1),
        first_timestamp: Some(Time(now)),
        last_timestamp: Some(Time(now)),
        source: Some(EventSource {
            component: Some(reporter.controller.clone()),
            host: Some(reporter.instance.clone()),
        }),
        reporting_component: Some(reporter.controller.clone()),
        reporting_instance: Some(reporter.instance.clone()),
        ..Event::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn long_messages_are_cut_on_a_character_boundary() {
        let short = "x".repeat(MESSAGE_MAX_BYTES);
        assert_eq!(bounded_message(short.clone()), short);
        let long = "é".repeat(MESSAGE_MAX_BYTES);
        let cut = bounded_message(long);
        assert!(cut.len() <= MESSAGE_MAX_BYTES, "{}", cut.len());
        assert!(cut.ends_with('…'));
        assert!(cut.trim_end_matches('…').chars().all(|c| c == 'é'));
    }

    #[test]
    fn frequent_decisions_stay_off_the_function_and_failures_are_warnings() {
        for kind in [EventKind::Vertical, EventKind::Quota, EventKind::Placement] {
            assert_eq!(decision(kind), None, "{kind:?}");
        }
        for kind in [
            EventKind::Refused,
            EventKind::ProfilingFailed,
            EventKind::Exit,
            EventKind::NotReady,
            EventKind::OutOfMemory,
        ] {
            assert_eq!(
                decision(kind).map(|d| d.0),
                Some(EventType::Warning),
                "{kind:?}"
            );
        }
        let mirrored: Vec<&str> = EventKind::ALL
            .into_iter()
            .filter_map(decision)
            .map(|d| d.1)
            .collect();
        let mut unique = mirrored.clone();
        unique.sort_unstable();
        unique.dedup();
        assert_eq!(
            unique.len(),
            mirrored.len(),
            "one reason per kind: {mirrored:?}"
        );
        assert!(mirrored.iter().all(|r| r.len() <= 128 && !r.contains(' ')));
    }

    #[test]
    fn a_decision_about_an_instance_names_it_once() {
        let mut event = Decision {
            seq: 1,
            at_ms: 0,
            kind: EventKind::Exit,
            function: Some("ocr".into()),
            instance: Some("ocr-3".into()),
            message: "exited with status 1; restarting".into(),
            data: serde_json::Value::Null,
        };
        assert_eq!(
            decision_message(&event),
            "ocr-3: exited with status 1; restarting"
        );
        event.message = "ocr-3 exited with status 1".into();
        assert_eq!(decision_message(&event), "ocr-3 exited with status 1");
        event.instance = None;
        assert_eq!(decision_message(&event), "ocr-3 exited with status 1");
    }

    #[tokio::test]
    async fn a_sink_that_is_off_writes_and_counts_nothing() {
        let sink = EventSink::off();
        sink.emit(
            node_ref("n1"),
            EventType::Warning,
            "GPUUnhealthy",
            "Watch",
            "x",
        );
        assert_eq!(sink.counts(), EventCountsSnapshot::default());
    }

    #[test]
    fn node_events_use_the_node_name_as_uid_and_no_namespace() {
        let r = node_ref("gpu-a");
        assert_eq!(r.uid.as_deref(), Some("gpu-a"));
        assert_eq!(r.namespace, None);
        let p = Pending {
            regarding: r,
            type_: EventType::Normal,
            reason: "GPUHealthy",
            action: "Watch",
            message: "back".into(),
        };
        let reporter = Reporter {
            controller: "dilu.io/agent".into(),
            instance: "gpu-a".into(),
        };
        let event = new_event(&reporter, &p);
        assert_eq!(event.metadata.namespace.as_deref(), Some("default"));
        assert!(event.metadata.name.unwrap().starts_with("gpu-a."));
        assert_eq!(event.type_.as_deref(), Some("Normal"));
        assert_eq!(event.reporting_instance.as_deref(), Some("gpu-a"));
    }
}
