//! The thin I/O layer of dilu-scheduler: two watches (Nodes, and the pods with the function label) feed the
//! core; each bind is its own task (up to `max_in_flight` at once, nothing serialises them); unschedulable
//! pods get their `PodScheduled` condition written; the core's decisions are logged to stderr and become
//! Kubernetes Events on the pods (`Scheduled`, `FailedScheduling`; [`crate::events`]).

use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::pin::pin;
use std::time::Duration;

use futures::{FutureExt, StreamExt};
use k8s_openapi::api::core::v1::{Binding, Node, ObjectReference, Pod};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time};
use kube::api::{Api, Patch, PatchParams, PostParams};
use kube::runtime::WatchStreamExt;
use kube::runtime::watcher::{self, Event, watcher};
use kube::{Client, ResourceExt};
use tokio::task::JoinSet;
use tokio::time::Instant;

use super::state::{Bind, BindOutcome, ConditionUpdate, Nanos, PodView, Scheduling};
use super::{SchedulerConfig, SchedulerError};
use dilu_core::ledger::DeviceClass;

use crate::events::{EventSink, EventType, Reporter, pod_ref};
use crate::meta::{self, Assignment, PodBooking};
use crate::nodes::LostNodes;
use crate::scheduling;
use dilu_core::scheduling::PlacementRules;

/// Reads what the scheduler needs from a pod (`None` when it has no name or namespace).
pub fn pod_view(pod: &Pod, scheduler_name: &str) -> Option<PodView> {
    let namespace = pod.metadata.namespace.clone()?;
    let name = pod.metadata.name.clone()?;
    let key = format!("{namespace}/{name}");
    let spec = pod.spec.as_ref();
    let status = pod.status.as_ref();
    let annotations = pod.metadata.annotations.as_ref();
    let function = pod
        .metadata
        .labels
        .as_ref()
        .and_then(|l| l.get(meta::FUNCTION));
    let booking = annotations
        .and_then(|a| a.get(meta::BOOKING))
        .map(|text| PodBooking::parse(&key, text).map_err(|e| e.to_string()));
    let class = match &booking {
        Some(Ok(b)) => b.device,
        _ => DeviceClass::default(),
    };
    let request = booking.map(|booking| {
        let booking = booking?;
        let function = function.ok_or_else(|| format!("no {} label", meta::FUNCTION))?;
        Ok(booking.request(function))
    });
    // Rules that cannot be read make the pod unplaceable, with the reason, as an unreadable booking does.
    let rules = spec
        .map(scheduling::read_pod_spec)
        .transpose()
        .and_then(|rules| {
            let mut rules = rules.unwrap_or_default();
            if let Some(text) = annotations.and_then(|a| a.get(meta::SPREAD)) {
                rules.spread = Some(
                    serde_json::from_str(text)
                        .map_err(|e| format!("annotation {}: {e}", meta::SPREAD))?,
                );
            }
            Ok(rules)
        });
    let (rules, request) = match rules {
        Ok(rules) => (rules, request),
        Err(why) => (PlacementRules::default(), request.map(|_| Err(why))),
    };
    let assignment = annotations
        .and_then(|a| a.get(meta::ASSIGNMENT))
        .map(|text| Assignment::parse(&key, text).map_err(|e| e.to_string()));
    let unschedulable_message = status
        .and_then(|s| s.conditions.as_ref())
        .and_then(|conditions| {
            conditions.iter().find(|c| {
                c.type_ == "PodScheduled"
                    && c.status == "False"
                    && c.reason.as_deref() == Some("Unschedulable")
            })
        })
        .map(|c| c.message.clone().unwrap_or_default());
    Some(PodView {
        namespace,
        name,
        uid: pod.metadata.uid.clone().unwrap_or_default(),
        created: pod
            .metadata
            .creation_timestamp
            .as_ref()
            .map_or(0, |t| t.0.as_second()),
        ours: spec.and_then(|s| s.scheduler_name.as_deref()) == Some(scheduler_name),
        node_name: spec
            .and_then(|s| s.node_name.clone())
            .filter(|n| !n.is_empty()),
        deleting: pod.metadata.deletion_timestamp.is_some(),
        finished: matches!(
            status.and_then(|s| s.phase.as_deref()),
            Some("Succeeded" | "Failed")
        ),
        request,
        class,
        rules,
        assignment,
        unschedulable_message,
    })
}

/// The inventory a Node offers: `None` without the annotation, `Err` when it cannot be read.
fn node_offer(node: &Node) -> Option<Result<dilu_core::ledger::NodeInventory, String>> {
    meta::node_offer(node).map(|offer| offer.map_err(|e| e.to_string()))
}

/// Binds `bind.name` to its node with the assignment in the Binding's annotations; on a 409 re-reads the pod.
async fn bind(
    api: Api<Pod>,
    bind: Bind,
    scheduler_name: String,
    events: EventSink,
) -> (Bind, BindOutcome) {
    let binding = Binding {
        metadata: ObjectMeta {
            name: Some(bind.name.clone()),
            namespace: Some(bind.namespace.clone()),
            // A precondition on API servers that check it (as kube-scheduler sends it); 1.20 ignores it.
            uid: Some(bind.uid.clone()).filter(|u| !u.is_empty()),
            annotations: Some(BTreeMap::from([(
                meta::ASSIGNMENT.to_string(),
                bind.assignment().annotation(),
            )])),
            ..ObjectMeta::default()
        },
        target: ObjectReference {
            api_version: Some("v1".into()),
            kind: Some("Node".into()),
            name: Some(bind.at.node.clone()),
            ..ObjectReference::default()
        },
    };
    let posted = api
        .create_subresource::<_, serde_json::Value>(
            "binding",
            &bind.name,
            &PostParams::default(),
            &binding,
        )
        .await;
    let outcome = match posted {
        Ok(_) => {
            events.emit(
                pod_ref(&bind.namespace, &bind.name, &bind.uid),
                EventType::Normal,
                "Scheduled",
                "Binding",
                format!(
                    "Successfully assigned {} to {}, device {} (SM request {:.1} %, limit {:.1} %)",
                    bind.key(),
                    bind.at.node,
                    bind.at.device,
                    f64::from(bind.sm_request) / 10.0,
                    f64::from(bind.sm_limit) / 10.0
                ),
            );
            BindOutcome::Bound
        }
        Err(kube::Error::Api(status)) if status.code == 409 => {
            let fresh = match api.get_opt(&bind.name).await {
                Ok(Some(pod)) => pod_view(&pod, &scheduler_name).map(Box::new),
                Ok(None) => return (bind, BindOutcome::Gone),
                Err(_) => None,
            };
            BindOutcome::Conflict(fresh)
        }
        Err(kube::Error::Api(status)) if status.code == 404 => BindOutcome::Gone,
        Err(e) => BindOutcome::Failed(e.to_string()),
    };
    (bind, outcome)
}

/// Writes `PodScheduled=False`, reason `Unschedulable`, with the ledger's message (a status patch).
async fn mark_unschedulable(
    api: Api<Pod>,
    update: ConditionUpdate,
    events: EventSink,
) -> Option<String> {
    events.emit(
        pod_ref(&update.namespace, &update.name, &update.uid),
        EventType::Warning,
        "FailedScheduling",
        "Scheduling",
        update.message.clone(),
    );
    let now = Time(k8s_openapi::jiff::Timestamp::now());
    let patch = serde_json::json!({
        "status": {"conditions": [{
            "type": "PodScheduled",
            "status": "False",
            "reason": "Unschedulable",
            "message": update.message,
            "lastProbeTime": null,
            "lastTransitionTime": now,
        }]}
    });
    let params = PatchParams {
        field_manager: Some(meta::FIELD_MANAGER.to_string()),
        ..PatchParams::default()
    };
    match api
        .patch_status(&update.name, &params, &Patch::Strategic(patch))
        .await
    {
        Ok(_) => None,
        Err(kube::Error::Api(status)) if status.code == 404 => None,
        Err(e) => Some(format!(
            "dilu-scheduler: {}/{}: writing its PodScheduled condition failed: {e}",
            update.namespace, update.name
        )),
    }
}

fn since(start: Instant) -> Nanos {
    u64::try_from(start.elapsed().as_nanos()).unwrap_or(u64::MAX)
}

fn on_node(core: &mut Scheduling, event: Result<Event<Node>, watcher::Error>) {
    match event {
        Ok(Event::Init) => core.begin_node_list(),
        Ok(Event::InitApply(node) | Event::Apply(node)) => {
            let cordoned = node
                .spec
                .as_ref()
                .and_then(|s| s.unschedulable)
                .unwrap_or(false);
            core.set_cordoned(&node.name_any(), cordoned);
            core.observe_node(&node.name_any(), node_offer(&node))
        }
        Ok(Event::InitDone) => core.end_node_list(),
        Ok(Event::Delete(node)) => core.node_gone(&node.name_any()),
        Err(e) => eprintln!("dilu-scheduler: watching nodes: {e}"),
    }
}

fn on_pod(core: &mut Scheduling, event: Result<Event<Pod>, watcher::Error>, scheduler_name: &str) {
    match event {
        Ok(Event::Init) => core.begin_pod_list(),
        Ok(Event::InitApply(pod) | Event::Apply(pod)) => {
            if let Some(view) = pod_view(&pod, scheduler_name) {
                core.observe_pod(view);
            }
        }
        Ok(Event::InitDone) => core.end_pod_list(),
        Ok(Event::Delete(pod)) => {
            let uid = pod.metadata.uid.clone().unwrap_or_default();
            core.pod_deleted(&pod.namespace().unwrap_or_default(), &pod.name_any(), &uid);
        }
        Err(e) => eprintln!("dilu-scheduler: watching pods: {e}"),
    }
}

/// Runs dilu-scheduler until `shutdown` completes: watches Nodes and the pods with the function label (in
/// `config.namespace`, or everywhere), waits for both initial lists, adopts every bound pod, then binds
/// pending pods as they come. Binds in flight when it stops are abandoned; a restart adopts whatever they did.
/// Watch errors are logged and retried with back-off; the only errors returned are at start.
pub async fn run(
    client: Client,
    config: SchedulerConfig,
    shutdown: impl Future<Output = ()>,
) -> Result<(), SchedulerError> {
    let policy = dilu_core::policy::Policy::named(config.policy);
    let mut core = Scheduling::new(policy.placer(), config.settings(), config.counters.clone())?;
    let pods_api: Api<Pod> = match &config.namespace {
        Some(ns) => Api::namespaced(client.clone(), ns),
        None => Api::all(client.clone()),
    };
    let nodes_api: Api<Node> = Api::all(client.clone());
    let mut nodes = watcher(nodes_api, watcher::Config::default())
        .default_backoff()
        .boxed();
    let mut pods = watcher(pods_api, watcher::Config::default().labels(meta::FUNCTION))
        .default_backoff()
        .boxed();
    // Lost nodes: a receiver that never changes when Leases are not followed.
    let lost_nodes = match &config.node_lease_namespace {
        Some(ns) => LostNodes::watch(client.clone(), ns, "dilu-scheduler"),
        None => LostNodes::fixed(Default::default()),
    };
    let mut lost = lost_nodes.subscribe();
    eprintln!(
        "dilu-scheduler: starting (scheduler name {}, policy {}, namespace {}, at most {} binds in flight, node Leases in {})",
        config.scheduler_name,
        core.ledger().placer_name(),
        config.namespace.as_deref().unwrap_or("(all)"),
        config.settings().max_in_flight,
        config
            .node_lease_namespace
            .as_deref()
            .unwrap_or("(not followed)")
    );
    let name = config.scheduler_name.clone();
    let events = if config.events {
        EventSink::start_counting(
            client.clone(),
            Reporter::from_host("dilu.io/scheduler"),
            config.event_counts.clone(),
        )
    } else {
        EventSink::off()
    };
    let mut binds: JoinSet<(Bind, BindOutcome)> = JoinSet::new();
    let mut sent: HashMap<tokio::task::Id, Bind> = HashMap::new();
    let mut writes: JoinSet<Option<String>> = JoinSet::new();
    let start = Instant::now();
    let mut shutdown = pin!(shutdown);
    let on_done =
        |core: &mut Scheduling,
         sent: &mut HashMap<tokio::task::Id, Bind>,
         done: Result<(tokio::task::Id, (Bind, BindOutcome)), tokio::task::JoinError>| {
            match done {
                Ok((id, (bind, outcome))) => {
                    sent.remove(&id);
                    core.bind_done(&bind, outcome, since(start));
                }
                Err(e) => {
                    if let Some(bind) = sent.remove(&e.id()) {
                        core.bind_done(&bind, BindOutcome::Failed(e.to_string()), since(start));
                    }
                }
            }
        };
    loop {
        for b in core.next_binds(since(start)) {
            let api = Api::namespaced(client.clone(), &b.namespace);
            let handle = binds.spawn(bind(api, b.clone(), name.clone(), events.clone()));
            sent.insert(handle.id(), b);
        }
        for update in core.take_condition_updates() {
            let api = Api::namespaced(client.clone(), &update.namespace);
            writes.spawn(mark_unschedulable(api, update, events.clone()));
        }
        for line in core.take_log() {
            eprintln!("{line}");
        }
        let wake = core
            .next_wakeup(since(start))
            .map(|t| start + Duration::from_nanos(t));
        tokio::select! {
            biased;
            () = &mut shutdown => break,
            Some(done) = binds.join_next_with_id(), if !binds.is_empty() => {
                on_done(&mut core, &mut sent, done);
            }
            Some(event) = nodes.next() => on_node(&mut core, event),
            Some(event) = pods.next() => on_pod(&mut core, event, &name),
            Ok(()) = lost.changed() => core.set_lost_nodes(&lost.borrow_and_update()),
            Some(done) = writes.join_next(), if !writes.is_empty() => {
                if let Ok(Some(line)) = done {
                    eprintln!("{line}");
                }
            }
            () = tokio::time::sleep_until(wake.unwrap_or(start)), if wake.is_some() => {}
        }
        // Take in whatever else is ready before deciding again: one decision pass per batch of events.
        for _ in 0..1024 {
            let mut any = false;
            if let Some(Some(done)) = binds.join_next_with_id().now_or_never() {
                on_done(&mut core, &mut sent, done);
                any = true;
            }
            if let Some(Some(event)) = nodes.next().now_or_never() {
                on_node(&mut core, event);
                any = true;
            }
            if let Some(Some(event)) = pods.next().now_or_never() {
                on_pod(&mut core, event, &name);
                any = true;
            }
            if !any {
                break;
            }
        }
    }
    for line in core.take_log() {
        eprintln!("{line}");
    }
    eprintln!(
        "dilu-scheduler: stopped ({} binds in flight abandoned)",
        core.in_flight()
    );
    Ok(())
}
