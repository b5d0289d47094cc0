//! The gateway in a cluster: [`KubeEndpoints`] is a `dilu_gateway::EndpointSource` fed by the API server.
//!
//! It watches, in one namespace, the `Function` objects and the pods labelled [`meta::FUNCTION`], and publishes
//! one route per inference function (`spec.kind` is an inference kind) with the spec's gateway policy and
//! SLO. A route's endpoints are the function's pods that serve: label [`meta::SERVING`] `true` (the controller
//! routes it: not draining, not being profiled), condition `Ready` is `True`, no `deletionTimestamp`, a
//! `status.podIP`, and not bound to a lost node (its node agent's Lease ran out, [`crate::nodes`]); each is
//! `Endpoint { instance: <pod name>, url: http://<podIP>:<port> }`, the port being the pod's [`meta::PORT`]
//! annotation (default [`DEFAULT_PORT`]). A function being deleted, or whose spec does not parse, gets no route (the latter is
//! logged once, naming the field). Nothing is published before both watches have listed their objects once,
//! and afterwards only when the table changes.
//!
//! The activator: [`KubeEndpoints`]'s `wake` merge-patches the function's [`meta::WAKE`] annotation to the
//! current time (RFC 3339), so that the controller's watch sees a request waiting for a function at zero
//! instances. The patch is sent by a background task; a failure is logged and never delays a request.
//!
//! Lost nodes: the controller takes the serving label off the pods of a lost node and deletes them as soon as
//! it notices, which is enough while a controller runs. The gateway follows the node Leases itself as well,
//! so that a pod on a lost node stops getting requests within a second of the Lease running out even while
//! no controller leads (a failover takes up to the controller's lease duration) or the controller's writes are
//! slow; a pod whose node is lost would otherwise keep its label and its last `Ready` status, as nobody is left
//! to update them.
//!
//! What it needs from RBAC in its namespace: `list` and `watch` on `functions.dilu.io` and `pods`, `patch` on
//! `functions.dilu.io`; and in the node lease namespace, `list` and `watch` on `leases`
//! (`coordination.k8s.io`). Without the latter it logs the refusal and routes by the label alone.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use dilu_api::{Endpoint, FunctionSpec, Route};
use dilu_gateway::{EndpointSource, RoutingTable};
use futures::{FutureExt, StreamExt};
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Patch, PatchParams};
use kube::runtime::WatchStreamExt;
use kube::runtime::watcher::{self, Event};
use kube::{Api, Client, ResourceExt};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;

use crate::crd::Function;
use crate::meta;
use crate::nodes::LostNodes;

/// The port of a pod without a [`meta::PORT`] annotation.
pub const DEFAULT_PORT: u16 = 8080;

/// Wakes waiting to be sent; more are dropped (the gateway repeats a wake every 500 ms while a request waits).
const WAKE_BACKLOG: usize = 256;

/// Why the endpoint source could not start or sync.
#[derive(Debug, thiserror::Error)]
pub enum EndpointsError {
    /// No kubeconfig or in-cluster configuration gave a client.
    #[error(
        "connecting to the Kubernetes API server (kubeconfig or in-cluster configuration): {0}"
    )]
    Client(#[source] kube::Error),
    /// The first list of Functions and pods did not complete in time.
    #[error(
        "listing Functions and pods (label {label}) in namespace {namespace:?} did not complete within {waited:?}: {last_error}"
    )]
    NotSynced {
        /// The namespace watched.
        namespace: String,
        /// The pod label selector.
        label: &'static str,
        /// How long it waited.
        waited: Duration,
        /// The last error the watches saw, or `no error seen`.
        last_error: String,
    },
}

/// A function as the routes need it: its name and parsed spec (or why it does not parse), and whether it is
/// being deleted.
#[derive(Debug, Clone)]
struct FunctionEntry {
    spec: Result<FunctionSpec, String>,
    deleting: bool,
}

impl FunctionEntry {
    fn of(f: &Function) -> FunctionEntry {
        FunctionEntry {
            spec: f.function_spec().map_err(|e| e.to_string()),
            deleting: f.deleting(),
        }
    }
}

/// A pod as the routes need it: its function, and its endpoint when it serves (or why it cannot be routed).
#[derive(Debug, Clone, PartialEq)]
struct PodEntry {
    function: String,
    /// `spec.nodeName`.
    node: Option<String>,
    endpoint: Result<Option<Endpoint>, String>,
}

impl PodEntry {
    fn of(pod: &Pod) -> Option<PodEntry> {
        let function = pod.labels().get(meta::FUNCTION)?.clone();
        Some(PodEntry {
            function,
            node: pod.spec.as_ref().and_then(|s| s.node_name.clone()),
            endpoint: pod_endpoint(pod),
        })
    }
}

/// The endpoint of a pod that serves: `None` while it is not ready, terminating, or without an IP; an error
/// when its [`meta::PORT`] annotation is not a port.
fn pod_endpoint(pod: &Pod) -> Result<Option<Endpoint>, String> {
    let name = pod.name_any();
    let port = match pod.annotations().get(meta::PORT) {
        None => DEFAULT_PORT,
        Some(text) => match text.trim().parse::<u16>() {
            Ok(port) if port > 0 => port,
            _ => {
                return Err(format!(
                    "pod {name}: annotation {}: {text:?} is not a port (rule: an integer 1-65535)",
                    meta::PORT
                ));
            }
        },
    };
    if pod.metadata.deletion_timestamp.is_some()
        || pod.labels().get(meta::SERVING).map(String::as_str) != Some("true")
    {
        return Ok(None);
    }
    let Some(status) = pod.status.as_ref() else {
        return Ok(None);
    };
    let ready = status
        .conditions
        .iter()
        .flatten()
        .any(|c| c.type_ == "Ready" && c.status == "True");
    if !ready {
        return Ok(None);
    }
    let Some(ip) = status.pod_ip.as_deref().filter(|ip| !ip.is_empty()) else {
        return Ok(None);
    };
    let url = match ip.parse::<IpAddr>() {
        Ok(IpAddr::V6(v6)) => format!("http://[{v6}]:{port}"),
        Ok(IpAddr::V4(v4)) => format!("http://{v4}:{port}"),
        Err(_) => {
            return Err(format!(
                "pod {name}: status.podIP {ip:?} is not an IP address"
            ));
        }
    };
    Ok(Some(Endpoint {
        instance: name,
        url,
    }))
}

/// The routes of `functions` (by name) and `pods` (by name), in function order with endpoints in pod-name
/// order, and the objects left out with why (one line each). Pods on a `lost` node get no request.
fn assemble<'a>(
    functions: impl IntoIterator<Item = (&'a String, &'a FunctionEntry)>,
    pods: impl IntoIterator<Item = (&'a String, &'a PodEntry)>,
    lost: &BTreeSet<String>,
) -> RouteTable {
    let mut table = RouteTable::default();
    let mut by_function: BTreeMap<&str, Vec<Endpoint>> = BTreeMap::new();
    for (_, pod) in pods {
        if pod.node.as_ref().is_some_and(|n| lost.contains(n)) {
            continue;
        }
        match &pod.endpoint {
            Ok(Some(endpoint)) => by_function
                .entry(pod.function.as_str())
                .or_default()
                .push(endpoint.clone()),
            Ok(None) => {}
            Err(why) => table.skipped.push(why.clone()),
        }
    }
    for (name, f) in functions {
        if f.deleting {
            continue;
        }
        let spec = match &f.spec {
            Ok(spec) => spec,
            Err(why) => {
                table
                    .skipped
                    .push(format!("function {name}: not routed: {why}"));
                continue;
            }
        };
        if !spec.kind.is_inference() {
            continue;
        }
        table.routes.push(Route {
            function: spec.name.clone(),
            gateway: spec.gateway,
            slo_ms: spec.slo_ms,
            endpoints: by_function.remove(name.as_str()).unwrap_or_default(),
        });
    }
    table.skipped.sort();
    table
}

/// Routes computed from objects, and what was left out.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct RouteTable {
    /// One route per inference function, by name; endpoints by pod name.
    pub routes: Vec<Route>,
    /// Objects left out and why, one line each (a spec that does not parse, a bad port annotation).
    pub skipped: Vec<String>,
}

/// The routes the gateway follows for these `Function` objects and pods (pods without the
/// [`meta::FUNCTION`] label, or of another function, are ignored), when the nodes `lost` are lost (their
/// pods get no request). The pure part of [`KubeEndpoints`].
pub fn route_table(functions: &[Function], pods: &[Pod], lost: &BTreeSet<String>) -> RouteTable {
    let functions: BTreeMap<String, FunctionEntry> = functions
        .iter()
        .map(|f| (f.name().to_string(), FunctionEntry::of(f)))
        .collect();
    let pods: BTreeMap<String, PodEntry> = pods
        .iter()
        .filter_map(|p| Some((p.name_any(), PodEntry::of(p)?)))
        .collect();
    assemble(&functions, &pods, lost)
}

/// The objects of one watch, kept by name; `synced` once the first list completed.
struct Mirror<T> {
    live: BTreeMap<String, T>,
    /// Objects of a list in progress (between `Init` and `InitDone`).
    listing: Option<BTreeMap<String, T>>,
    synced: bool,
}

impl<T> Mirror<T> {
    fn new() -> Self {
        Mirror {
            live: BTreeMap::new(),
            listing: None,
            synced: false,
        }
    }

    /// Applies one watch event; `entry` gives what is kept of an object (`None`: nothing).
    fn apply<K: kube::Resource>(&mut self, event: Event<K>, entry: impl Fn(&K) -> Option<T>) {
        match event {
            Event::Init => self.listing = Some(BTreeMap::new()),
            Event::InitApply(obj) => {
                if let (Some(listing), Some(e)) = (self.listing.as_mut(), entry(&obj)) {
                    listing.insert(obj.name_any(), e);
                }
            }
            Event::InitDone => {
                if let Some(listing) = self.listing.take() {
                    self.live = listing;
                }
                self.synced = true;
            }
            Event::Apply(obj) => match entry(&obj) {
                Some(e) => {
                    self.live.insert(obj.name_any(), e);
                }
                None => {
                    self.live.remove(&obj.name_any());
                }
            },
            Event::Delete(obj) => {
                self.live.remove(&obj.name_any());
            }
        }
    }
}

/// One event of either watch (boxed: objects are large).
enum Change {
    Function(Box<Result<Event<Function>, watcher::Error>>),
    Pod(Box<Result<Event<Pod>, watcher::Error>>),
    Lost(BTreeSet<String>),
}

/// What the watch task keeps.
struct Watched {
    functions: Mirror<FunctionEntry>,
    pods: Mirror<PodEntry>,
    /// The nodes lost now.
    lost: BTreeSet<String>,
    /// The lines logged for the current table (each logged once while it holds).
    logged: BTreeSet<String>,
}

/// Aborts a task when dropped.
struct AbortOnDrop(JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// An `EndpointSource` fed by the API server (see the module documentation). Its tasks run on the Tokio
/// runtime that started it and stop when it is dropped.
pub struct KubeEndpoints {
    namespace: String,
    routes: watch::Sender<RoutingTable>,
    synced: watch::Receiver<bool>,
    last_error: Arc<Mutex<Option<String>>>,
    wakes: mpsc::Sender<String>,
    _tasks: [AbortOnDrop; 2],
    _lost: Option<LostNodes>,
}

impl KubeEndpoints {
    /// Connects with the usual configuration (`KUBECONFIG`, `~/.kube/config`, or the pod's service account)
    /// and starts watching `namespace` (default: the configuration's namespace).
    pub async fn connect(namespace: Option<&str>) -> Result<Arc<KubeEndpoints>, EndpointsError> {
        let client = Client::try_default()
            .await
            .map_err(EndpointsError::Client)?;
        let namespace =
            namespace.map_or_else(|| client.default_namespace().to_string(), str::to_string);
        Ok(KubeEndpoints::start(client, &namespace))
    }

    /// Starts watching `namespace` through `client`, and the node Leases in [`meta::NODE_LEASE_NAMESPACE`];
    /// must be called within a Tokio runtime.
    pub fn start(client: Client, namespace: &str) -> Arc<KubeEndpoints> {
        KubeEndpoints::start_with_leases(client, namespace, Some(meta::NODE_LEASE_NAMESPACE))
    }

    /// [`KubeEndpoints::start`] with the node Leases in `lease_namespace` (`None`: not followed; pods are
    /// routed by their label and readiness alone).
    pub fn start_with_leases(
        client: Client,
        namespace: &str,
        lease_namespace: Option<&str>,
    ) -> Arc<KubeEndpoints> {
        let lost = lease_namespace.map(|ns| LostNodes::watch(client.clone(), ns, "dilu gateway"));
        let functions: Api<Function> = Api::namespaced(client.clone(), namespace);
        let pods: Api<Pod> = Api::namespaced(client, namespace);
        let routes = watch::Sender::new(RoutingTable::default());
        let (synced_tx, synced) = watch::channel(false);
        let last_error = Arc::new(Mutex::new(None));
        let watching = tokio::spawn(watch_objects(
            functions.clone(),
            pods,
            lost.as_ref().map(LostNodes::subscribe),
            routes.clone(),
            synced_tx,
            Arc::clone(&last_error),
        ));
        let (wakes, wake_rx) = mpsc::channel(WAKE_BACKLOG);
        let waking = tokio::spawn(send_wakes(functions, wake_rx));
        Arc::new(KubeEndpoints {
            namespace: namespace.to_string(),
            routes,
            synced,
            last_error,
            wakes,
            _tasks: [AbortOnDrop(watching), AbortOnDrop(waking)],
            _lost: lost,
        })
    }

    /// The namespace watched.
    pub fn namespace(&self) -> &str {
        &self.namespace
    }

    /// Waits until both watches have listed their objects once and the first table is published, at most
    /// `timeout`.
    pub async fn synced(&self, timeout: Duration) -> Result<(), EndpointsError> {
        let mut synced = self.synced.clone();
        match tokio::time::timeout(timeout, synced.wait_for(|s| *s)).await {
            Ok(Ok(_)) => Ok(()),
            _ => Err(EndpointsError::NotSynced {
                namespace: self.namespace.clone(),
                label: meta::FUNCTION,
                waited: timeout,
                last_error: self
                    .last_error
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .clone()
                    .unwrap_or_else(|| "no error seen".into()),
            }),
        }
    }
}

impl EndpointSource for KubeEndpoints {
    fn routes(&self) -> watch::Receiver<RoutingTable> {
        self.routes.subscribe()
    }

    fn wake(&self, function: &str) {
        // Never blocks: with the backlog full this wake is dropped; the gateway repeats it while the request
        // waits.
        if self.wakes.try_send(function.to_string()).is_err() {
            eprintln!("dilu gateway: wake {function}: backlog full, dropped");
        }
    }
}

/// Follows both watches and publishes the table when it changes, once both have listed.
async fn watch_objects(
    functions: Api<Function>,
    pods: Api<Pod>,
    lost: Option<watch::Receiver<BTreeSet<String>>>,
    routes: watch::Sender<RoutingTable>,
    synced: watch::Sender<bool>,
    last_error: Arc<Mutex<Option<String>>>,
) {
    let function_events = watcher::watcher(functions, watcher::Config::default())
        .default_backoff()
        .map(|e| Change::Function(Box::new(e)));
    let pod_events = watcher::watcher(pods, watcher::Config::default().labels(meta::FUNCTION))
        .default_backoff()
        .map(|e| Change::Pod(Box::new(e)));
    // The lost nodes as a stream of changes (none when Leases are not followed).
    let lost_events = futures::stream::unfold(lost, |rx| async move {
        let mut rx = rx?;
        rx.changed().await.ok()?;
        let now = rx.borrow_and_update().clone();
        Some((Change::Lost(now), Some(rx)))
    });
    let mut events = std::pin::pin!(futures::stream::select(
        futures::stream::select(function_events, pod_events),
        lost_events
    ));
    let mut state = Watched {
        functions: Mirror::new(),
        pods: Mirror::new(),
        lost: BTreeSet::new(),
        logged: BTreeSet::new(),
    };
    while let Some(first) = events.next().await {
        let mut change = Some(first);
        // Everything already arrived goes into one table (a list arrives as many events).
        while let Some(c) = change {
            let error = match c {
                Change::Function(e) => match *e {
                    Ok(e) => {
                        state.functions.apply(e, |f| Some(FunctionEntry::of(f)));
                        None
                    }
                    Err(e) => Some(format!("watching Functions: {e}")),
                },
                Change::Pod(e) => match *e {
                    Ok(e) => {
                        state.pods.apply(e, PodEntry::of);
                        None
                    }
                    Err(e) => Some(format!("watching pods: {e}")),
                },
                Change::Lost(lost) => {
                    state.lost = lost;
                    None
                }
            };
            if let Some(error) = error {
                eprintln!("dilu gateway: {error}");
                *last_error.lock().unwrap_or_else(PoisonError::into_inner) = Some(error);
            }
            change = events.next().now_or_never().flatten();
        }
        if !(state.functions.synced && state.pods.synced) {
            continue;
        }
        let table = assemble(&state.functions.live, &state.pods.live, &state.lost);
        let now: BTreeSet<String> = table.skipped.into_iter().collect();
        for line in now.difference(&state.logged) {
            eprintln!("dilu gateway: {line}");
        }
        state.logged = now;
        routes.send_if_modified(|current| {
            if **current == table.routes {
                false
            } else {
                *current = Arc::new(table.routes);
                true
            }
        });
        synced.send_if_modified(|s| !std::mem::replace(s, true));
    }
}

/// Sends each wake as a merge patch of the function's [`meta::WAKE`] annotation, each on its own task.
async fn send_wakes(functions: Api<Function>, mut wakes: mpsc::Receiver<String>) {
    while let Some(function) = wakes.recv().await {
        let api = functions.clone();
        tokio::spawn(async move {
            if let Err(e) = patch_wake(&api, &function).await {
                eprintln!("dilu gateway: wake {function}: annotating the Function: {e}");
            }
        });
    }
}

/// Sets the [`meta::WAKE`] annotation of `function` to the current time.
async fn patch_wake(functions: &Api<Function>, function: &str) -> Result<(), kube::Error> {
    let now = k8s_openapi::jiff::Timestamp::now().to_string();
    let patch = serde_json::json!({ "metadata": { "annotations": { meta::WAKE: now } } });
    functions
        .patch(
            function,
            &PatchParams {
                field_manager: Some(meta::FIELD_MANAGER.into()),
                ..PatchParams::default()
            },
            &Patch::Merge(&patch),
        )
        .await
        .map(|_| ())
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::{PodCondition, PodStatus};
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time};

    fn function(yaml: &str) -> Function {
        let spec = dilu_api::parse_spec(yaml, dilu_api::SpecFormat::Yaml).unwrap();
        Function::new("default", &spec).unwrap()
    }

    fn pod(name: &str, function: &str, ready: bool, ip: Option<&str>) -> Pod {
        Pod {
            metadata: ObjectMeta {
                name: Some(name.into()),
                namespace: Some("default".into()),
                labels: Some(
                    [
                        (meta::FUNCTION.to_string(), function.to_string()),
                        (meta::SERVING.to_string(), "true".to_string()),
                    ]
                    .into(),
                ),
                ..ObjectMeta::default()
            },
            status: Some(PodStatus {
                pod_ip: ip.map(str::to_string),
                conditions: Some(vec![PodCondition {
                    type_: "Ready".into(),
                    status: if ready { "True" } else { "False" }.into(),
                    ..PodCondition::default()
                }]),
                ..PodStatus::default()
            }),
            ..Pod::default()
        }
    }

    fn with_port(mut p: Pod, port: &str) -> Pod {
        p.metadata.annotations = Some([(meta::PORT.to_string(), port.to_string())].into());
        p
    }

    fn endpoint(instance: &str, url: &str) -> Endpoint {
        Endpoint {
            instance: instance.into(),
            url: url.into(),
        }
    }

    const OCR: &str = "name: ocr\nkind: inference\nmodel: {path: /m.onnx}\nslo_ms: 100\ngateway: {queue: 7, timeout_ms: 900}\n";
    const TRAIN: &str = "name: train\nkind: training\n";

    #[test]
    fn routes_carry_the_spec_policy_and_the_ready_pods() {
        let functions = [function(OCR), function(TRAIN)];
        let pods = [
            pod("ocr-b", "ocr", true, Some("10.0.0.2")),
            with_port(pod("ocr-a", "ocr", true, Some("10.0.0.1")), "9001"),
            pod("ocr-c", "ocr", false, Some("10.0.0.3")),
            pod("ocr-d", "ocr", true, None),
            pod("ocr-v6", "ocr", true, Some("fd00::7")),
            pod("train-0", "train", true, Some("10.0.0.9")),
            pod("stray-0", "stray", true, Some("10.0.0.8")),
        ];
        let table = route_table(&functions, &pods, &BTreeSet::new());
        assert_eq!(table.skipped, Vec::<String>::new());
        assert_eq!(table.routes.len(), 1, "training gets no route");
        let route = &table.routes[0];
        assert_eq!(route.function, "ocr");
        assert_eq!(route.slo_ms, Some(100.0));
        assert_eq!(route.gateway.queue, 7);
        assert_eq!(route.gateway.timeout_ms, 900);
        assert_eq!(
            route.gateway.max_outstanding_per_instance,
            dilu_api::spec::GatewaySpec::default().max_outstanding_per_instance
        );
        assert_eq!(
            route.endpoints,
            vec![
                endpoint("ocr-a", "http://10.0.0.1:9001"),
                endpoint("ocr-b", "http://10.0.0.2:8080"),
                endpoint("ocr-v6", "http://[fd00::7]:8080"),
            ]
        );
    }

    #[test]
    fn a_ready_pod_the_controller_does_not_route_gets_no_request() {
        // Draining, or being profiled: Ready, but the controller took its serving label away.
        let mut profiling = pod("ocr-a", "ocr", true, Some("10.0.0.1"));
        if let Some(labels) = profiling.metadata.labels.as_mut() {
            labels.remove(meta::SERVING);
        }
        let serving = pod("ocr-b", "ocr", true, Some("10.0.0.2"));
        let table = route_table(&[function(OCR)], &[profiling, serving], &BTreeSet::new());
        assert_eq!(
            table.routes[0].endpoints,
            vec![endpoint("ocr-b", "http://10.0.0.2:8080")]
        );
    }

    #[test]
    fn terminating_pods_and_deleted_functions_are_not_routed() {
        let mut leaving = pod("ocr-a", "ocr", true, Some("10.0.0.1"));
        leaving.metadata.deletion_timestamp = Some(Time(k8s_openapi::jiff::Timestamp::now()));
        let staying = pod("ocr-b", "ocr", true, Some("10.0.0.2"));
        let table = route_table(
            &[function(OCR)],
            &[leaving, staying.clone()],
            &BTreeSet::new(),
        );
        assert_eq!(
            table.routes[0].endpoints,
            vec![endpoint("ocr-b", "http://10.0.0.2:8080")]
        );

        let mut deleting = function(OCR);
        deleting.metadata.deletion_timestamp = Some(Time(k8s_openapi::jiff::Timestamp::now()));
        let table = route_table(&[deleting], &[staying], &BTreeSet::new());
        assert_eq!(table, RouteTable::default());
    }

    #[test]
    fn a_pod_on_a_lost_node_gets_no_request_even_while_labelled_and_ready() {
        let on = |mut p: Pod, node: &str| {
            p.spec = Some(k8s_openapi::api::core::v1::PodSpec {
                node_name: Some(node.into()),
                ..Default::default()
            });
            p
        };
        let pods = [
            on(pod("ocr-a", "ocr", true, Some("10.0.0.1")), "n1"),
            on(pod("ocr-b", "ocr", true, Some("10.0.0.2")), "n2"),
        ];
        let all = route_table(&[function(OCR)], &pods, &BTreeSet::new());
        assert_eq!(all.routes[0].endpoints.len(), 2);
        let lost = BTreeSet::from(["n1".to_string()]);
        let table = route_table(&[function(OCR)], &pods, &lost);
        assert_eq!(
            table.routes[0].endpoints,
            vec![endpoint("ocr-b", "http://10.0.0.2:8080")]
        );
    }

    #[test]
    fn a_function_at_zero_has_a_route_without_endpoints() {
        let table = route_table(&[function(OCR)], &[], &BTreeSet::new());
        assert_eq!(table.routes.len(), 1);
        assert!(table.routes[0].endpoints.is_empty());
    }

    #[test]
    fn a_bad_spec_or_port_is_skipped_with_one_line_naming_it() {
        let mut bad = function(OCR);
        bad.metadata.name = Some("bad".into());
        bad.spec.insert("slo_ms".into(), serde_json::json!(-1));
        let pods = [
            with_port(pod("ocr-a", "ocr", true, Some("10.0.0.1")), "http"),
            pod("ocr-b", "ocr", true, Some("10.0.0.2")),
            pod("bad-0", "bad", true, Some("10.0.0.3")),
        ];
        let table = route_table(&[function(OCR), bad], &pods, &BTreeSet::new());
        assert_eq!(table.routes.len(), 1);
        assert_eq!(table.routes[0].function, "ocr");
        assert_eq!(
            table.routes[0].endpoints,
            vec![endpoint("ocr-b", "http://10.0.0.2:8080")]
        );
        assert_eq!(table.skipped.len(), 2, "{:?}", table.skipped);
        assert!(
            table.skipped[0].starts_with("function bad: not routed:")
                && table.skipped[0].contains("spec.slo_ms"),
            "{:?}",
            table.skipped
        );
        assert!(
            table.skipped[1].contains("pod ocr-a") && table.skipped[1].contains(meta::PORT),
            "{:?}",
            table.skipped
        );
    }

    #[test]
    fn a_mirror_replaces_its_objects_on_each_list_and_follows_changes() {
        let mut mirror: Mirror<PodEntry> = Mirror::new();
        mirror.apply(Event::Init, PodEntry::of);
        mirror.apply(
            Event::InitApply(pod("a", "ocr", true, Some("10.0.0.1"))),
            PodEntry::of,
        );
        assert!(!mirror.synced && mirror.live.is_empty());
        mirror.apply(Event::<Pod>::InitDone, PodEntry::of);
        assert!(mirror.synced);
        assert_eq!(mirror.live.keys().collect::<Vec<_>>(), ["a"]);
        mirror.apply(Event::Apply(pod("b", "ocr", false, None)), PodEntry::of);
        mirror.apply(Event::Delete(pod("a", "ocr", true, None)), PodEntry::of);
        assert_eq!(mirror.live.keys().collect::<Vec<_>>(), ["b"]);
        // A relist (the watch was lost): what is not listed again is gone.
        mirror.apply(Event::Init, PodEntry::of);
        mirror.apply(
            Event::InitApply(pod("c", "ocr", true, Some("10.0.0.3"))),
            PodEntry::of,
        );
        assert_eq!(mirror.live.keys().collect::<Vec<_>>(), ["b"]);
        mirror.apply(Event::<Pod>::InitDone, PodEntry::of);
        assert_eq!(mirror.live.keys().collect::<Vec<_>>(), ["c"]);
    }
}
