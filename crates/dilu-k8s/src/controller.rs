//! The Dilu controller on Kubernetes: the runtime-neutral reconciler of `dilu-control` over `Function`
//! objects and the [`KubeBackend`](crate::backend::KubeBackend).
//!
//! - A watch on `Function`s tells the reconciler what is desired: a new object is deployed, a changed spec
//!   updated (a rolling update when what runs changes), an object being deleted has its pods stopped and its
//!   finalizer removed once they are gone. A spec that breaks a rule gets `SpecValid=False` with the field,
//!   the value and the rule. The gateway's wake annotation wakes a function at zero.
//! - The reconciler's views are written back as each object's status once a second, when they change.
//! - Profiles go to the object's `dilu.io/profile` annotation, so a controller that takes over (leader
//!   election) keeps them.
//! - A node whose agent's Lease ran out is lost ([`crate::nodes`]): each Dilu pod bound to it loses its
//!   serving label (gateways stop routing to it at once) and is deleted with grace period 0 (its kubelet may
//!   be gone with the node, so nobody would confirm a graceful deletion); the reconciler sees the instance
//!   gone and creates a replacement, which dilu-scheduler places on a live node.
//! - The reconciler's decisions (deployed, profiled, scaled out or in, an instance that exited…) become
//!   Kubernetes Events on their `Function`, and an evicted pod gets `NodeLost` ([`crate::events`]).

use std::collections::{BTreeMap, BTreeSet};
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use dilu_api::Profile;
use dilu_api::Route;
use dilu_control::events::LiveEvent;
use dilu_control::profile::live::LiveSettings;
use dilu_control::state::FunctionPhase;
use dilu_control::{
    Controller, ControllerConfig, FunctionView, LiveProfiler, LoadSource, SystemClock,
};
use dilu_core::policy::Policy;
use futures::StreamExt;
use k8s_openapi::api::core::v1::Pod;
use kube::api::{DeleteParams, ListParams, Patch, PatchParams, Preconditions};
use kube::runtime::watcher;
use kube::{Api, Client};
use tokio::sync::{broadcast, mpsc, watch};

use crate::backend::{KubeBackend, PodTemplate};
use crate::crd::{Condition, Function, FunctionStatus};
use crate::events::{self, EventCounts, EventSink, EventType, Reporter, function_ref, pod_ref};
use crate::meta;
use crate::nodes::LostNodes;
use crate::store::{KubeStore, ProfileWrite};

/// How the controller runs.
#[derive(Clone)]
pub struct ControllerOptions {
    /// The namespace of the functions and their pods.
    pub namespace: String,
    /// The image whose entrypoint is the `dilu` binary.
    pub image: String,
    /// The policy whose placer, scalers and quota rules run.
    pub policy: Policy,
    /// How profiling measures.
    pub profiling: LiveSettings,
    /// Time between reconciler passes when nothing wakes it earlier.
    pub period: Duration,
    /// The URL the status shows for a function: `{gateway_url}/v2/models/{name}/infer`.
    pub gateway_url: Option<String>,
    /// The namespace of the node agents' Leases (default [`meta::NODE_LEASE_NAMESPACE`]); the pods of a node
    /// whose Lease ran out are replaced. `None`: Leases are not followed.
    pub node_lease_namespace: Option<String>,
    /// Whether the reconciler's decisions become Kubernetes Events on the `Function`s (default true).
    pub events: bool,
    /// Where its event writer counts; keep a clone to read it.
    pub event_counts: Arc<EventCounts>,
    /// The reconciler while it runs, for whoever serves its metrics; keep a clone to read it.
    pub running: Running,
}

/// The reconciler of a controller while it runs (a standby replica has none).
#[derive(Clone, Default)]
pub struct Running(Arc<std::sync::Mutex<Option<Arc<Controller>>>>);

impl Running {
    fn set(&self, controller: Option<Arc<Controller>>) {
        *self
            .0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = controller;
    }

    /// The reconciler, while this replica's runs.
    pub fn get(&self) -> Option<Arc<Controller>> {
        self.0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    /// Appends the reconciler's metrics (`dilu_control_*`, as `dilu up` serves them) to `out`; nothing while
    /// none runs.
    pub fn render_metrics(&self, out: &mut String) {
        if let Some(c) = self.get() {
            c.render_metrics(out);
        }
    }
}

impl ControllerOptions {
    /// Defaults for `namespace` and `image`: Dilu's policy, a pass a second.
    pub fn new(namespace: &str, image: &str) -> ControllerOptions {
        ControllerOptions {
            namespace: namespace.to_string(),
            image: image.to_string(),
            policy: Policy::named(dilu_core::policy::PolicyName::Dilu),
            profiling: LiveSettings::default(),
            period: Duration::from_secs(1),
            gateway_url: None,
            node_lease_namespace: Some(meta::NODE_LEASE_NAMESPACE.to_string()),
            events: true,
            event_counts: Arc::default(),
            running: Running::default(),
        }
    }
}

/// Why the controller stopped.
#[derive(Debug, thiserror::Error)]
pub enum ControllerError {
    /// The API server refused or could not be reached.
    #[error("{context}: {source}")]
    Api {
        /// What was being done.
        context: String,
        /// Why it failed.
        source: kube::Error,
    },
    /// The reconciler could not start.
    #[error(transparent)]
    Control(#[from] dilu_control::ControlError),
}

fn api(context: &str) -> impl FnOnce(kube::Error) -> ControllerError + '_ {
    move |source| ControllerError::Api {
        context: context.to_string(),
        source,
    }
}

fn profile_of(f: &Function) -> Option<Profile> {
    f.metadata
        .annotations
        .as_ref()?
        .get(meta::PROFILE)
        .and_then(|p| serde_json::from_str(p).ok())
}

fn now_rfc3339() -> String {
    k8s_openapi::jiff::Timestamp::now().to_string()
}

/// Runs the controller until `shutdown` completes or the API server fails for good. Instances keep running
/// when it stops (another replica adopts them).
pub async fn run(
    client: Client,
    options: ControllerOptions,
    load: Arc<dyn LoadSource>,
    shutdown: impl Future<Output = ()>,
) -> Result<(), ControllerError> {
    let functions: Api<Function> = Api::namespaced(client.clone(), &options.namespace);
    let (writes_tx, writes_rx) = mpsc::unbounded_channel();
    let store = Arc::new(KubeStore::new(writes_tx));
    // Restore every function (with its profile) before the reconciler starts, so it adopts their pods.
    let initial = functions
        .list(&ListParams::default())
        .await
        .map_err(api("listing functions"))?;
    let uids: Uids = Arc::default();
    let mut sync = Sync::new(functions.clone(), Arc::clone(&store), Arc::clone(&uids));
    for f in &initial {
        sync.record(f);
    }
    let backend = Arc::new(KubeBackend::new(
        client.clone(),
        PodTemplate::new(&options.namespace, &options.image),
    ));
    let profiler = Arc::new(LiveProfiler::new(
        backend.clone(),
        tokio::runtime::Handle::current(),
        options.profiling,
    ));
    let mut config = ControllerConfig::new(options.policy.clone());
    config.period = options.period;
    let controller = Controller::new(
        config,
        backend,
        store.clone(),
        load,
        profiler,
        Arc::new(SystemClock::new()),
    )?;
    sync.controller = Some(Arc::clone(&controller));
    for f in &initial {
        sync.apply(f).await;
    }
    let sink = if options.events {
        EventSink::start_counting(
            client.clone(),
            Reporter::from_host("dilu.io/controller"),
            options.event_counts.clone(),
        )
    } else {
        EventSink::off()
    };
    let mirror = tokio::spawn(mirror_decisions(
        controller.events().subscribe(),
        options.namespace.clone(),
        uids,
        sink.clone(),
    ));
    let reconciler = tokio::spawn(Arc::clone(&controller).run());
    options.running.set(Some(Arc::clone(&controller)));
    let writer = tokio::spawn(write_profiles(functions.clone(), writes_rx));
    let pods: Api<Pod> = Api::namespaced(client.clone(), &options.namespace);
    let serving = tokio::spawn(mark_serving(pods.clone(), controller.routes()));
    let evicting = options.node_lease_namespace.as_deref().map(|ns| {
        let lost = LostNodes::watch(client.clone(), ns, "dilu-controller");
        tokio::spawn(replace_lost(pods.clone(), lost, sink.clone()))
    });
    let status = tokio::spawn(write_statuses(
        functions.clone(),
        pods,
        Arc::clone(&controller),
        options.gateway_url.clone(),
    ));
    let events = watcher(functions.clone(), watcher::Config::default());
    tokio::pin!(events);
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            _ = &mut shutdown => break,
            event = events.next() => match event {
                Some(Ok(watcher::Event::Apply(f) | watcher::Event::InitApply(f))) => sync.apply(&f).await,
                Some(Ok(watcher::Event::Delete(f))) => sync.gone(f.name()),
                Some(Ok(_)) => {}
                Some(Err(e)) => {
                    eprintln!("dilu-controller: watching functions: {e}");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
                None => break,
            },
        }
    }
    options.running.set(None);
    controller.stop().await;
    reconciler.abort();
    writer.abort();
    status.abort();
    serving.abort();
    mirror.abort();
    if let Some(task) = evicting {
        task.abort();
    }
    Ok(())
}

/// Follows the `Function` objects into the reconciler.
struct Sync {
    functions: Api<Function>,
    store: Arc<KubeStore>,
    controller: Option<Arc<Controller>>,
    /// The spec text each function was last deployed or updated with.
    applied: BTreeMap<String, serde_json::Value>,
    /// The wake annotation last seen per function.
    woken: BTreeMap<String, String>,
    /// Functions whose spec is refused, with the reason (written to their status).
    invalid: BTreeSet<String>,
    /// Each object's UID, which its events name.
    uids: Uids,
}

/// Each `Function`'s UID by name (its events need it: `kubectl describe` finds them by UID).
type Uids = Arc<std::sync::Mutex<BTreeMap<String, String>>>;

fn uids_of(uids: &Uids) -> std::sync::MutexGuard<'_, BTreeMap<String, String>> {
    uids.lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl Sync {
    fn new(functions: Api<Function>, store: Arc<KubeStore>, uids: Uids) -> Sync {
        Sync {
            functions,
            store,
            uids,
            controller: None,
            applied: BTreeMap::new(),
            woken: BTreeMap::new(),
            invalid: BTreeSet::new(),
        }
    }

    /// Records an object in the store before the reconciler exists (restores its profile).
    fn record(&mut self, f: &Function) {
        self.note_uid(f);
        if f.deleting() {
            return;
        }
        if let Ok(spec) = f.function_spec() {
            let generation = f.metadata.generation.unwrap_or(1).max(1) as u64;
            self.store.observe(spec, generation, profile_of(f));
            self.applied.insert(
                f.name().to_string(),
                serde_json::Value::Object(f.spec.clone()),
            );
        }
    }

    fn note_uid(&self, f: &Function) {
        if let Some(uid) = &f.metadata.uid {
            uids_of(&self.uids).insert(f.name().to_string(), uid.clone());
        }
    }

    async fn apply(&mut self, f: &Function) {
        self.note_uid(f);
        let Some(controller) = self.controller.clone() else {
            return;
        };
        let name = f.name().to_string();
        if f.deleting() {
            if self.applied.remove(&name).is_some() || controller.function(&name).is_ok() {
                if let Err(e) = controller.delete(&name) {
                    eprintln!("dilu-controller: deleting {name}: {e}");
                }
                self.store.forget(&name);
                eprintln!("dilu-controller: {name}: deleted; stopping its pods");
            }
            return;
        }
        if !has_finalizer(f)
            && let Err(e) = set_finalizer(&self.functions, f, true).await
        {
            eprintln!("dilu-controller: {name}: adding the finalizer: {e}");
        }
        if let Some(wake) = f
            .metadata
            .annotations
            .as_ref()
            .and_then(|a| a.get(meta::WAKE))
            && self.woken.get(&name) != Some(wake)
        {
            self.woken.insert(name.clone(), wake.clone());
            controller.wake(&name);
        }
        let body = serde_json::Value::Object(f.spec.clone());
        let known = controller.function(&name).is_ok();
        if known && self.applied.get(&name) == Some(&body) {
            return;
        }
        let spec = match f.function_spec() {
            Ok(spec) => spec,
            Err(e) => {
                self.invalid.insert(name.clone());
                write_condition(
                    &self.functions,
                    &name,
                    "SpecValid",
                    false,
                    "InvalidSpec",
                    &e.to_string(),
                )
                .await;
                return;
            }
        };
        let generation = f.metadata.generation.unwrap_or(1).max(1) as u64;
        let profile = if known {
            self.store.get(&name).and_then(|s| s.profile)
        } else {
            profile_of(f)
        };
        self.store.observe(spec.clone(), generation, profile);
        let result = if known {
            controller.update(spec).await.map(|_| ())
        } else {
            controller.deploy(spec).map(|_| ())
        };
        match result {
            Ok(()) => {
                self.applied.insert(name.clone(), body);
                if self.invalid.remove(&name) {
                    write_condition(&self.functions, &name, "SpecValid", true, "Accepted", "")
                        .await;
                }
                eprintln!(
                    "dilu-controller: {name}: {}",
                    if known { "updated" } else { "deployed" }
                );
            }
            Err(e) => {
                self.invalid.insert(name.clone());
                write_condition(
                    &self.functions,
                    &name,
                    "SpecValid",
                    false,
                    "Refused",
                    &e.to_string(),
                )
                .await;
            }
        }
    }

    /// The object is gone (deleted without the finalizer, or the finalizer was removed).
    fn gone(&mut self, name: &str) {
        uids_of(&self.uids).remove(name);
        self.applied.remove(name);
        self.woken.remove(name);
        self.store.forget(name);
        if let Some(c) = &self.controller
            && c.function(name).is_ok()
            && let Err(e) = c.delete(name)
        {
            eprintln!("dilu-controller: deleting {name}: {e}");
        }
    }
}

fn has_finalizer(f: &Function) -> bool {
    f.metadata
        .finalizers
        .iter()
        .flatten()
        .any(|x| x == meta::FINALIZER)
}

/// Adds (`keep`) or removes the controller's finalizer, on the object's version as read (a conflict means it
/// changed since; the next event or pass tries again).
async fn set_finalizer(
    functions: &Api<Function>,
    f: &Function,
    keep: bool,
) -> kube::Result<Function> {
    let mut finalizers: Vec<String> = f
        .metadata
        .finalizers
        .iter()
        .flatten()
        .filter(|x| *x != meta::FINALIZER)
        .cloned()
        .collect();
    if keep {
        finalizers.push(meta::FINALIZER.to_string());
    }
    let patch = serde_json::json!({ "metadata": { "finalizers": finalizers,
        "resourceVersion": f.metadata.resource_version } });
    functions
        .patch(f.name(), &PatchParams::default(), &Patch::Merge(&patch))
        .await
}

async fn write_condition(
    functions: &Api<Function>,
    name: &str,
    type_: &str,
    ok: bool,
    reason: &str,
    message: &str,
) {
    let patch = serde_json::json!({ "status": { "conditions": [Condition {
        type_: type_.into(),
        status: if ok { "True" } else { "False" }.into(),
        reason: reason.into(),
        message: message.into(),
        last_transition_time: now_rfc3339(),
    }], "phase": if ok { serde_json::Value::Null } else { "invalid".into() } }});
    if let Err(e) = functions
        .patch_status(name, &PatchParams::default(), &Patch::Merge(&patch))
        .await
    {
        eprintln!("dilu-controller: {name}: writing its status: {e}");
    }
}

/// Keeps the [`meta::SERVING`] label on exactly the pods the reconciler routes (ready, not draining, not being
/// profiled), so that gateways send requests to those only: on every change of the routes, and every 5 s.
async fn mark_serving(pods: Api<Pod>, mut routes: watch::Receiver<Arc<Vec<Route>>>) {
    loop {
        let serving: BTreeSet<String> = routes
            .borrow_and_update()
            .iter()
            .flat_map(|r| r.endpoints.iter().map(|e| e.instance.clone()))
            .collect();
        match pods
            .list(&ListParams::default().labels(meta::FUNCTION))
            .await
        {
            Ok(list) => {
                for pod in list {
                    let Some(name) = pod.metadata.name.clone() else {
                        continue;
                    };
                    let has = pod
                        .metadata
                        .labels
                        .as_ref()
                        .and_then(|l| l.get(meta::SERVING))
                        .is_some_and(|v| v == "true");
                    let want = serving.contains(&name) && pod.metadata.deletion_timestamp.is_none();
                    if has == want {
                        continue;
                    }
                    let value = if want {
                        serde_json::json!("true")
                    } else {
                        serde_json::Value::Null
                    };
                    let patch =
                        serde_json::json!({ "metadata": { "labels": { meta::SERVING: value } } });
                    if let Err(e) = pods
                        .patch(&name, &PatchParams::default(), &Patch::Merge(&patch))
                        .await
                    {
                        eprintln!(
                            "dilu-controller: pod {name}: marking it {}: {e}",
                            if want { "serving" } else { "not serving" }
                        );
                    }
                }
            }
            Err(e) => eprintln!("dilu-controller: listing pods: {e}"),
        }
        tokio::select! {
            changed = routes.changed() => if changed.is_err() { return },
            _ = tokio::time::sleep(Duration::from_secs(5)) => {}
        }
    }
}

/// Replaces the pods of lost nodes: whenever the set of lost nodes changes, and every second while one is
/// lost, every Dilu pod bound to a lost node is taken out of the routes ([`meta::SERVING`] removed) and deleted
/// with grace period 0 (its UID as precondition). One line per node that becomes lost: when it was noticed and
/// how many pods it had.
async fn replace_lost(pods: Api<Pod>, lost: LostNodes, events: EventSink) {
    let mut changes = lost.subscribe();
    let mut announced: BTreeSet<String> = BTreeSet::new();
    loop {
        let nodes = changes.borrow_and_update().clone();
        announced.retain(|n| nodes.contains(n));
        if !nodes.is_empty() {
            match pods
                .list(&ListParams::default().labels(meta::FUNCTION))
                .await
            {
                Ok(list) => {
                    let mut by_node: BTreeMap<String, Vec<(String, Option<String>)>> =
                        nodes.iter().map(|n| (n.clone(), Vec::new())).collect();
                    for pod in list {
                        let node = pod.spec.as_ref().and_then(|s| s.node_name.as_ref());
                        if let (Some(node), Some(name)) = (node, pod.metadata.name.clone())
                            && let Some(slot) = by_node.get_mut(node)
                        {
                            slot.push((name, pod.metadata.uid.clone()));
                        }
                    }
                    for (node, victims) in by_node {
                        if announced.insert(node.clone()) {
                            eprintln!(
                                "dilu-controller: node {node} lost (noticed at {}): replacing its {} pod(s)",
                                now_rfc3339(),
                                victims.len()
                            );
                        } else if !victims.is_empty() {
                            eprintln!(
                                "dilu-controller: node {node} lost: replacing {} more pod(s)",
                                victims.len()
                            );
                        }
                        futures::stream::iter(victims)
                            .for_each_concurrent(16, |(name, uid)| {
                                let pods = pods.clone();
                                let events = events.clone();
                                let node = node.clone();
                                async move {
                                    if evict(&pods, &name, uid.clone()).await {
                                        events.emit(
                                            pod_ref(pods_namespace(&pods), &name, uid.as_deref().unwrap_or("")),
                                            EventType::Warning,
                                            "NodeLost",
                                            "Delete",
                                            format!(
                                                "node {node}'s agent stopped renewing its Lease; deleted at once \
                                                 so that a replacement is placed on a live node"
                                            ),
                                        );
                                    }
                                }
                            })
                            .await;
                    }
                }
                Err(e) => eprintln!("dilu-controller: listing pods of lost nodes: {e}"),
            }
        }
        tokio::select! {
            changed = changes.changed() => if changed.is_err() { return },
            _ = tokio::time::sleep(Duration::from_secs(1)), if !nodes.is_empty() => {}
        }
    }
}

/// Takes pod `name` out of the routes, then deletes it at once (grace period 0); whether it deleted it.
async fn evict(pods: &Api<Pod>, name: &str, uid: Option<String>) -> bool {
    let patch = serde_json::json!({ "metadata": { "labels": { meta::SERVING: null } } });
    match pods
        .patch(name, &PatchParams::default(), &Patch::Merge(&patch))
        .await
    {
        Ok(_) => {}
        Err(kube::Error::Api(s)) if s.code == 404 => return false,
        Err(e) => eprintln!("dilu-controller: pod {name}: taking it out of the routes: {e}"),
    }
    let params = DeleteParams::background()
        .grace_period(0)
        .preconditions(Preconditions {
            uid,
            resource_version: None,
        });
    match pods.delete(name, &params).await {
        Ok(_) => {
            eprintln!("dilu-controller: pod {name}: deleted (its node is lost)");
            true
        }
        Err(kube::Error::Api(s)) if s.code == 404 || s.code == 409 => false,
        Err(e) => {
            eprintln!("dilu-controller: pod {name}: deleting it: {e}");
            false
        }
    }
}

/// The namespace an `Api<Pod>` is scoped to (the controller's are always namespaced).
fn pods_namespace(pods: &Api<Pod>) -> &str {
    pods.namespace().unwrap_or("default")
}

/// Turns the reconciler's decisions into Kubernetes Events on their `Function` ([`events::decision`]).
/// Decisions about a function whose object is gone are left out; a lagging receiver skips what it missed.
async fn mirror_decisions(
    mut decisions: broadcast::Receiver<Arc<LiveEvent>>,
    namespace: String,
    uids: Uids,
    sink: EventSink,
) {
    loop {
        let live = match decisions.recv().await {
            Ok(live) => live,
            Err(broadcast::error::RecvError::Lagged(missed)) => {
                eprintln!(
                    "dilu-controller: {missed} decision(s) not turned into Kubernetes events (lagging)"
                );
                continue;
            }
            Err(broadcast::error::RecvError::Closed) => return,
        };
        let decision = &live.event;
        let (Some(function), Some((type_, reason, action))) = (
            decision.function.as_deref(),
            events::decision(decision.kind),
        ) else {
            continue;
        };
        let Some(uid) = uids_of(&uids).get(function).cloned() else {
            continue;
        };
        sink.emit(
            function_ref(&namespace, function, &uid),
            type_,
            reason,
            action,
            events::decision_message(decision),
        );
    }
}

/// Writes the profiles the reconciler stores to their objects' annotation.
async fn write_profiles(functions: Api<Function>, mut rx: mpsc::UnboundedReceiver<ProfileWrite>) {
    while let Some((name, profile)) = rx.recv().await {
        let value = profile.and_then(|p| serde_json::to_string(&p).ok());
        let patch = serde_json::json!({ "metadata": { "annotations": { meta::PROFILE: value } } });
        if let Err(e) = functions
            .patch(&name, &PatchParams::default(), &Patch::Merge(&patch))
            .await
        {
            eprintln!("dilu-controller: {name}: storing its profile: {e}");
        }
    }
}

/// The status a function's view gives.
pub fn status_of(
    view: &FunctionView,
    generation: i64,
    gateway_url: Option<&str>,
) -> FunctionStatus {
    let ready = view
        .instances
        .iter()
        .filter(|i| i.ready && !i.draining)
        .count() as u32;
    let (phase, failed) = match &view.status {
        FunctionPhase::Starting => ("starting", None),
        FunctionPhase::Profiling => ("profiling", None),
        FunctionPhase::Running => ("running", None),
        FunctionPhase::Failed(reason) => ("failed", Some(reason.clone())),
    };
    let condition = |type_: &str, ok: bool, reason: &str, message: String| Condition {
        type_: type_.into(),
        status: if ok { "True" } else { "False" }.into(),
        reason: reason.into(),
        message,
        last_transition_time: String::new(),
    };
    let ready_condition = match (&failed, ready) {
        (Some(reason), _) => condition("Ready", false, "Failed", reason.clone()),
        (None, 0) if view.spec.scaling.min_instances == 0 && view.desired == 0 => condition(
            "Ready",
            true,
            "ScaledToZero",
            "no instance runs; the first request starts one".into(),
        ),
        (None, 0) => condition(
            "Ready",
            false,
            "NoReadyInstance",
            view.last_error
                .clone()
                .unwrap_or_else(|| "waiting for an instance to be ready".into()),
        ),
        (None, n) => condition(
            "Ready",
            true,
            "InstancesReady",
            format!("{n} of {} ready", view.desired),
        ),
    };
    let profiled = condition(
        "Profiled",
        view.profile.is_some(),
        if view.profile.is_some() {
            "Profiled"
        } else {
            "Pending"
        },
        view.profile
            .as_ref()
            .map(|p| {
                format!(
                    "request {:.2}, limit {:.2}, batch {}, {:.1} req/s per instance ({})",
                    p.request, p.limit, p.batch, p.capacity_rps, p.source
                )
            })
            .unwrap_or_default(),
    );
    let spec_valid = condition("SpecValid", true, "Accepted", String::new());
    FunctionStatus {
        observed_generation: Some(generation),
        phase: Some(phase.into()),
        ready_instances: ready,
        instances: view.instances.len() as u32,
        quota: view.profile.as_ref().map(|p| crate::crd::StatusQuota {
            request: p.request,
            limit: p.limit,
            memory: view.spec.quota.and_then(|q| q.memory),
        }),
        batch: view.profile.as_ref().map(|p| p.batch).filter(|b| *b > 0),
        capacity_rps: view.profile.as_ref().map(|p| p.capacity_rps),
        url: if view.spec.kind.is_inference() {
            gateway_url
                .map(|g| format!("{}/v2/models/{}/infer", g.trim_end_matches('/'), view.name))
        } else {
            None
        },
        conditions: vec![ready_condition, profiled, spec_valid],
    }
}

/// Once a second: writes each function's status when it changed, and removes the finalizer of a function
/// being deleted once none of its pods is left.
async fn write_statuses(
    functions: Api<Function>,
    pods: Api<Pod>,
    controller: Arc<Controller>,
    gateway_url: Option<String>,
) {
    let mut written: BTreeMap<String, FunctionStatus> = BTreeMap::new();
    let mut since: BTreeMap<(String, String), (String, String)> = BTreeMap::new();
    loop {
        tokio::time::sleep(Duration::from_secs(1)).await;
        let objects = match functions.list(&ListParams::default()).await {
            Ok(list) => list.items,
            Err(e) => {
                eprintln!("dilu-controller: listing functions: {e}");
                continue;
            }
        };
        for f in objects {
            let name = f.name().to_string();
            if f.deleting() {
                if !has_finalizer(&f) {
                    continue;
                }
                let left = pods
                    .list(&ListParams::default().labels(&format!("{}={name}", meta::FUNCTION)))
                    .await
                    .map(|l| l.items.len());
                if matches!(left, Ok(0)) {
                    match set_finalizer(&functions, &f, false).await {
                        Ok(_) => eprintln!(
                            "dilu-controller: {name}: every pod is gone; finalizer removed"
                        ),
                        Err(e) => eprintln!("dilu-controller: {name}: removing the finalizer: {e}"),
                    }
                }
                continue;
            }
            let Ok(view) = controller.function(&name) else {
                continue;
            };
            let mut status = status_of(
                &view,
                f.metadata.generation.unwrap_or(0),
                gateway_url.as_deref(),
            );
            if written.get(&name) == Some(&status) {
                continue;
            }
            written.insert(name.clone(), status.clone());
            // Keep each condition's transition time while its status stays.
            for c in &mut status.conditions {
                let key = (name.clone(), c.type_.clone());
                match since.get(&key) {
                    Some((s, t)) if *s == c.status => c.last_transition_time = t.clone(),
                    _ => {
                        c.last_transition_time = now_rfc3339();
                        since.insert(key, (c.status.clone(), c.last_transition_time.clone()));
                    }
                }
            }
            let patch = serde_json::json!({ "status": status });
            if let Err(e) = functions
                .patch_status(&name, &PatchParams::default(), &Patch::Merge(&patch))
                .await
            {
                written.remove(&name);
                eprintln!("dilu-controller: {name}: writing its status: {e}");
            }
        }
    }
}
