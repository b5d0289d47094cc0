//! The node runner's **device manager** (opt-in, see [`crate::NodeRunnerBuilder::device_plugins`]): the
//! kubelet side of the device plugin API v1beta1 for each of the runner's nodes, built on
//! `dilu_deviceplugin::testkit::FakeKubelet` (written from the official proto).
//!
//! Per node it serves `Registration` on `kubelet.sock` in the node's device plugin directory; for each plugin
//! that registers it calls `GetDevicePluginOptions` and `ListAndWatch`, and writes the Node's
//! `status.capacity` (every listed ID) and `status.allocatable` (the healthy ones) for the plugin's resource
//! through the status subresource, as the kubelet's device manager does (`GetCapacity` in
//! `pkg/kubelet/cm/devicemanager/manager.go`). When its `ListAndWatch` stream ends, allocatable drops to 0 (the
//! kubelet marks the devices unhealthy) while capacity stays.
//!
//! When a pod is admitted, every extended resource in its first container's `limits` is looked at:
//!
//! - served by a plugin that registered with this node's kubelet (ever: the kubelet remembers resources in its
//!   checkpoint): `size` IDs are picked among the healthy IDs no pod holds (`GetPreferredAllocation` when the
//!   plugin's options offer it and its answer is valid, else the first free ones in list order), reserved for
//!   the pod, and `Allocate`d. Too few free IDs, no connected plugin, or a failed call reject the pod as the
//!   kubelet's allocate admit handler does: phase `Failed`, reason `UnexpectedAdmissionError`, message
//!   `Pod Allocate failed due to …, which is unexpected`.
//! - served by no plugin: the kubelet's `GeneralPredicates` decide. If the Node's `status.allocatable` does not
//!   list it the pod is admitted without it (the kubelet's own caveat: `removeMissingExtendedResources`); if it
//!   lists it and the request exceeds it, the pod is rejected with reason `OutOf<resource>`. Unlike the kubelet,
//!   what other pods on the node request of it is **not** counted.
//!
//! The IDs are held until the pod's task ends (the pod is gone) or the pod reaches `Succeeded`/`Failed`.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use dilu_deviceplugin::testkit::{FakeKubelet, PluginConn};
use dilu_deviceplugin::v1beta1::{Device, Mount};
use dilu_deviceplugin::{HEALTHY, KUBELET_SOCKET};
use k8s_openapi::api::core::v1::{Container, Node};
use kube::api::{Api, Patch, PatchParams};
use serde_json::json;
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinHandle;

/// A registration the fake kubelet of a node accepted (and whose plugin answered its options and first list).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PluginRegistration {
    /// The extended resource the plugin serves.
    pub resource: String,
    /// Its socket's file name in the node's device plugin directory.
    pub endpoint: String,
    /// When the kubelet received `Register`.
    pub at: Instant,
}

/// What the device plugins gave a pod's container: `Allocate`'s env and mounts, over all its resources.
#[derive(Debug, Clone, Default)]
pub(crate) struct DeviceRun {
    /// In the order the kubelet adds them: resource by resource (sorted), each response's variables sorted by
    /// name (Go's map order is random); a name already set by an earlier resource is skipped, as the kubelet does.
    pub envs: Vec<(String, String)>,
    /// Likewise, a container path already mounted is skipped.
    pub mounts: Vec<Mount>,
}

/// Why the kubelet did not admit a pod.
#[derive(Debug, Clone)]
pub(crate) struct Rejection {
    pub reason: String,
    pub message: String,
}

/// Rewrites `value` (an env value or an argument, after `$(VAR)` expansion) from the container's view to the
/// host's: when it equals a mount's `container_path`, or begins with it followed by `/`, that prefix becomes the
/// mount's `host_path` (the longest matching container path wins, as the innermost mount would). Trailing `/`
/// of either path are ignored; a mount of `/` is never applied; anything else is returned unchanged (only the
/// beginning of a value is looked at: the second element of a list such as `a:b` is not rewritten).
pub fn translate_mounts(value: &str, mounts: &[Mount]) -> String {
    let mut best: Option<(&Mount, usize)> = None;
    for mount in mounts {
        let container = mount.container_path.trim_end_matches('/');
        if container.is_empty() {
            continue;
        }
        let matches = value
            .strip_prefix(container)
            .is_some_and(|rest| rest.is_empty() || rest.starts_with('/'));
        if matches && best.is_none_or(|(_, len)| container.len() > len) {
            best = Some((mount, container.len()));
        }
    }
    match best {
        Some((mount, len)) => {
            let host = mount.host_path.trim_end_matches('/');
            let rest = &value[len..];
            if host.is_empty() && rest.is_empty() {
                "/".to_string()
            } else {
                format!("{host}{rest}")
            }
        }
        None => value.to_string(),
    }
}

/// Whether `name` is an extended resource (Kubernetes' `IsExtendedResourceName`): a domain-prefixed name
/// outside `kubernetes.io`, not a quota `requests.` name.
fn is_extended(name: &str) -> bool {
    name.contains('/') && !name.contains("kubernetes.io/") && !name.starts_with("requests.")
}

/// The extended resources a container's limits ask for, by name: (resource, count).
fn extended_limits(container: &Container) -> Result<Vec<(String, usize)>, Rejection> {
    let mut wanted = Vec::new();
    let limits = container.resources.as_ref().and_then(|r| r.limits.as_ref());
    for (name, quantity) in limits.into_iter().flatten() {
        if !is_extended(name) {
            continue;
        }
        let count: usize = quantity.0.trim().parse().map_err(|_| Rejection {
            reason: "UnexpectedAdmissionError".into(),
            message: format!(
                "the node runner's device manager cannot count {name}: {:?} is not a whole number",
                quantity.0
            ),
        })?;
        if count > 0 {
            wanted.push((name.clone(), count));
        }
    }
    wanted.sort();
    Ok(wanted)
}

/// The device manager of all the runner's nodes that have one.
pub(crate) struct DeviceManager {
    nodes: HashMap<String, NodeDevices>,
    api: Api<Node>,
}

type RestartReply = oneshot::Sender<Result<Instant, String>>;

struct NodeDevices {
    dir: PathBuf,
    state: Arc<Mutex<NodeState>>,
    /// The kubelet admits one pod at a time.
    admitting: tokio::sync::Mutex<()>,
    restarts: mpsc::UnboundedSender<RestartReply>,
    task: JoinHandle<()>,
}

#[derive(Default)]
struct NodeState {
    kubelet_started: Option<Instant>,
    registrations: Vec<PluginRegistration>,
    /// The current connection per resource.
    plugins: HashMap<String, Plugin>,
    /// Every resource a plugin ever registered for.
    known: HashSet<String>,
    /// IDs held, by pod UID.
    held: HashMap<String, Held>,
    generation: u64,
    /// The tasks publishing each plugin's counts to the Node.
    publishers: Vec<JoinHandle<()>>,
}

struct Plugin {
    conn: PluginConn,
    generation: u64,
    /// Its `ListAndWatch` stream ended.
    ended: bool,
}

struct Held {
    pod: String,
    ids: BTreeMap<String, Vec<String>>,
}

fn lock(state: &Mutex<NodeState>) -> MutexGuard<'_, NodeState> {
    state.lock().unwrap_or_else(|e| e.into_inner())
}

impl DeviceManager {
    /// Starts a fake kubelet in each directory (created if missing), one per node.
    pub(crate) fn start(
        client: kube::Client,
        dirs: BTreeMap<String, PathBuf>,
    ) -> anyhow::Result<DeviceManager> {
        let api: Api<Node> = Api::all(client);
        let mut nodes = HashMap::new();
        for (node, dir) in dirs {
            std::fs::create_dir_all(&dir)
                .map_err(|e| anyhow::anyhow!("creating {}: {e}", dir.display()))?;
            let kubelet = FakeKubelet::start(&dir).map_err(|e| {
                anyhow::anyhow!(
                    "node {node}: serving {}: {e}",
                    dir.join(KUBELET_SOCKET).display()
                )
            })?;
            let state = Arc::new(Mutex::new(NodeState {
                kubelet_started: Some(kubelet.started()),
                ..NodeState::default()
            }));
            let (restarts, restart_rx) = mpsc::unbounded_channel();
            let task = tokio::spawn(serve_kubelet(
                node.clone(),
                dir.clone(),
                kubelet,
                state.clone(),
                restart_rx,
                api.clone(),
            ));
            nodes.insert(
                node,
                NodeDevices {
                    dir,
                    state,
                    admitting: tokio::sync::Mutex::new(()),
                    restarts,
                    task,
                },
            );
        }
        Ok(DeviceManager { nodes, api })
    }

    pub(crate) fn dir(&self, node: &str) -> Option<&Path> {
        self.nodes.get(node).map(|n| n.dir.as_path())
    }

    pub(crate) fn registrations(&self, node: &str) -> Vec<PluginRegistration> {
        self.nodes
            .get(node)
            .map(|n| lock(&n.state).registrations.clone())
            .unwrap_or_default()
    }

    pub(crate) fn kubelet_started(&self, node: &str) -> Option<Instant> {
        self.nodes
            .get(node)
            .and_then(|n| lock(&n.state).kubelet_started)
    }

    pub(crate) async fn restart_kubelet(&self, node: &str) -> anyhow::Result<Instant> {
        let devices = self
            .nodes
            .get(node)
            .ok_or_else(|| anyhow::anyhow!("node {node} has no device manager"))?;
        let (reply, answer) = oneshot::channel();
        devices
            .restarts
            .send(reply)
            .map_err(|_| anyhow::anyhow!("node {node}: the fake kubelet's task has ended"))?;
        answer
            .await
            .map_err(|_| anyhow::anyhow!("node {node}: the fake kubelet's task has ended"))?
            .map_err(|e| anyhow::anyhow!("node {node}: restarting the fake kubelet: {e}"))
    }

    /// The IDs pod `pod` (by name) holds, by resource.
    pub(crate) fn held(&self, pod: &str) -> BTreeMap<String, Vec<String>> {
        for devices in self.nodes.values() {
            let state = lock(&devices.state);
            if let Some(held) = state.held.values().find(|h| h.pod == pod) {
                return held.ids.clone();
            }
        }
        BTreeMap::new()
    }

    /// Frees what pod `uid` holds on `node`.
    pub(crate) fn release(&self, node: &str, uid: &str) {
        if let Some(devices) = self.nodes.get(node) {
            lock(&devices.state).held.remove(uid);
        }
    }

    /// Admits pod `uid` (`name`) on `node` as the kubelet's device manager and predicates do (module docs):
    /// `None` when the node has no device manager or the container asks for no device-plugin resource.
    pub(crate) async fn admit(
        &self,
        node: &str,
        uid: &str,
        name: &str,
        container: &Container,
    ) -> Result<Option<DeviceRun>, Rejection> {
        let Some(devices) = self.nodes.get(node) else {
            return Ok(None);
        };
        let wanted = extended_limits(container)?;
        if wanted.is_empty() {
            return Ok(None);
        }
        let _admitting = devices.admitting.lock().await;
        let result = self.admit_locked(devices, node, uid, name, wanted).await;
        if result.is_err() {
            lock(&devices.state).held.remove(uid);
        }
        result
    }

    async fn admit_locked(
        &self,
        devices: &NodeDevices,
        node: &str,
        uid: &str,
        name: &str,
        wanted: Vec<(String, usize)>,
    ) -> Result<Option<DeviceRun>, Rejection> {
        let unexpected = |why: String| Rejection {
            reason: "UnexpectedAdmissionError".into(),
            message: format!("Allocate failed due to {why}, which is unexpected"),
        };
        let mut run = DeviceRun::default();
        let mut allocated_any = false;
        for (resource, size) in wanted {
            let (known, plugin) = {
                let state = lock(&devices.state);
                let plugin = state.plugins.get(&resource).map(|p| {
                    let free: Vec<String> = if p.ended {
                        Vec::new()
                    } else {
                        let held: HashSet<&String> = state
                            .held
                            .values()
                            .filter_map(|h| h.ids.get(&resource))
                            .flatten()
                            .collect();
                        p.conn
                            .devices
                            .borrow()
                            .iter()
                            .filter(|d| d.health == HEALTHY && !held.contains(&d.id))
                            .map(|d| d.id.clone())
                            .collect()
                    };
                    (p.conn.clone(), free)
                });
                (state.known.contains(&resource), plugin)
            };
            if !known {
                self.predicate(node, &resource, size).await?;
                continue;
            }
            // Known from an earlier registration but no plugin now (the kubelet restarted): no healthy IDs.
            let Some((conn, free)) = plugin else {
                return Err(unexpected(format!(
                    "requested number of devices unavailable for {resource}. Requested: {size}, Available: 0"
                )));
            };
            if free.len() < size {
                return Err(unexpected(format!(
                    "requested number of devices unavailable for {resource}. Requested: {size}, Available: {}",
                    free.len()
                )));
            }
            let (ids, _preferred) = conn
                .pick(&free, size)
                .await
                .map_err(|e| unexpected(e.to_string()))?;
            lock(&devices.state)
                .held
                .entry(uid.to_string())
                .or_insert_with(|| Held {
                    pod: name.to_string(),
                    ids: BTreeMap::new(),
                })
                .ids
                .insert(resource.clone(), ids.clone());
            let response = conn
                .allocate(&ids)
                .await
                .map_err(|e| unexpected(e.to_string()))?;
            allocated_any = true;
            let mut envs: Vec<(String, String)> = response.envs.into_iter().collect();
            envs.sort();
            for (key, value) in envs {
                if !run.envs.iter().any(|(k, _)| *k == key) {
                    run.envs.push((key, value));
                }
            }
            for mount in response.mounts {
                if !run
                    .mounts
                    .iter()
                    .any(|m| m.container_path == mount.container_path)
                {
                    run.mounts.push(mount);
                }
            }
        }
        Ok(allocated_any.then_some(run))
    }

    /// `GeneralPredicates` for an extended resource no plugin serves: missing from the Node's allocatable →
    /// ignored; listed and exceeded → `OutOf<resource>`.
    async fn predicate(&self, node: &str, resource: &str, size: usize) -> Result<(), Rejection> {
        let allocatable = match self.api.get_opt(node).await {
            Ok(found) => found
                .and_then(|n| n.status)
                .and_then(|s| s.allocatable)
                .and_then(|a| a.get(resource).map(|q| q.0.clone())),
            Err(e) => {
                return Err(Rejection {
                    reason: "InvalidNodeInfo".into(),
                    message: format!("Kubelet cannot get node info. ({e})"),
                });
            }
        };
        let Some(allocatable) = allocatable else {
            return Ok(());
        };
        let capacity: usize = allocatable.trim().parse().unwrap_or(0);
        if size > capacity {
            return Err(Rejection {
                reason: format!("OutOf{resource}"),
                message: format!(
                    "Node didn't have enough resource: {resource}, requested: {size}, used: 0, capacity: {capacity}"
                ),
            });
        }
        Ok(())
    }
}

impl Drop for DeviceManager {
    fn drop(&mut self) {
        for devices in self.nodes.values() {
            devices.task.abort();
            for task in lock(&devices.state).publishers.drain(..) {
                task.abort();
            }
        }
    }
}

/// Accepts the plugins of one node's fake kubelet, and restarts it on request.
async fn serve_kubelet(
    node: String,
    dir: PathBuf,
    kubelet: FakeKubelet,
    state: Arc<Mutex<NodeState>>,
    mut restarts: mpsc::UnboundedReceiver<RestartReply>,
    api: Api<Node>,
) {
    let mut kubelet = Some(kubelet);
    loop {
        let Some(current) = kubelet.as_mut() else {
            return;
        };
        tokio::select! {
            conn = current.next_plugin(Duration::from_secs(3600)) => {
                if let Ok(conn) = conn {
                    on_plugin(&node, &state, conn, &api);
                }
            }
            request = restarts.recv() => {
                let Some(reply) = request else { return };
                if let Some(old) = kubelet.take() {
                    old.stop().await;
                }
                // A new kubelet has no connection to any plugin until they register again; what pods hold
                // stays (the kubelet's checkpoint).
                lock(&state).plugins.clear();
                match FakeKubelet::start(&dir) {
                    Ok(new) => {
                        let started = new.started();
                        lock(&state).kubelet_started = Some(started);
                        kubelet = Some(new);
                        let _ = reply.send(Ok(started));
                    }
                    Err(e) => {
                        eprintln!("node-runner: node {node}: restarting the fake kubelet: {e}");
                        let _ = reply.send(Err(e.to_string()));
                        return;
                    }
                }
            }
        }
    }
}

fn on_plugin(node: &str, state: &Arc<Mutex<NodeState>>, conn: PluginConn, api: &Api<Node>) {
    let request = &conn.registered.request;
    let resource = request.resource_name.clone();
    let devices = conn.devices.clone();
    let mut guard = lock(state);
    guard.generation += 1;
    let generation = guard.generation;
    guard.registrations.push(PluginRegistration {
        resource: resource.clone(),
        endpoint: request.endpoint.clone(),
        at: conn.registered.at,
    });
    guard.known.insert(resource.clone());
    guard.plugins.insert(
        resource.clone(),
        Plugin {
            conn,
            generation,
            ended: false,
        },
    );
    let task = tokio::spawn(publish(
        node.to_string(),
        resource,
        generation,
        devices,
        state.clone(),
        api.clone(),
    ));
    guard.publishers.retain(|t| !t.is_finished());
    guard.publishers.push(task);
}

/// Writes the plugin's counts to the Node whenever its list changes, while it is the resource's plugin.
async fn publish(
    node: String,
    resource: String,
    generation: u64,
    mut devices: watch::Receiver<Vec<Device>>,
    state: Arc<Mutex<NodeState>>,
    api: Api<Node>,
) {
    let current = |state: &Mutex<NodeState>| {
        lock(state)
            .plugins
            .get(&resource)
            .is_some_and(|p| p.generation == generation)
    };
    loop {
        let counts = counts(&devices.borrow_and_update());
        if !current(&state) {
            return;
        }
        write_counts(&api, &node, &resource, counts).await;
        if devices.changed().await.is_err() {
            break;
        }
    }
    // ListAndWatch ended: the kubelet marks the resource's devices unhealthy.
    let capacity = {
        let mut guard = lock(&state);
        match guard.plugins.get_mut(&resource) {
            Some(p) if p.generation == generation => {
                p.ended = true;
                p.conn.devices.borrow().len()
            }
            _ => return,
        }
    };
    write_counts(&api, &node, &resource, (capacity, 0)).await;
}

/// (capacity, allocatable): every ID, the healthy ones.
fn counts(devices: &[Device]) -> (usize, usize) {
    let healthy = devices.iter().filter(|d| d.health == HEALTHY).count();
    (devices.len(), healthy)
}

async fn write_counts(
    api: &Api<Node>,
    node: &str,
    resource: &str,
    (capacity, allocatable): (usize, usize),
) {
    let body = json!({"status": {
        "capacity": {resource: capacity.to_string()},
        "allocatable": {resource: allocatable.to_string()},
    }});
    for attempt in 0..5 {
        match api
            .patch_status(node, &PatchParams::default(), &Patch::Merge(&body))
            .await
        {
            Ok(_) => return,
            Err(e) => {
                eprintln!(
                    "node-runner: node {node}: writing {resource} capacity (attempt {}): {e}",
                    attempt + 1
                );
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mount(container: &str, host: &str) -> Mount {
        Mount {
            container_path: container.into(),
            host_path: host.into(),
            read_only: false,
        }
    }

    #[test]
    fn translate_mounts_rewrites_paths_under_a_mount_only() {
        let mounts = [
            mount("/run/dilu/quota", "/tmp/ch/GPU-a"),
            mount(
                "/usr/local/lib/dilu/libdilu_cuda.so",
                "/opt/dilu/libdilu_cuda.so",
            ),
            mount("/run/dilu/quota/inner/", "/srv/inner/"),
            mount("/", "/nowhere"),
        ];
        let cases = [
            ("/run/dilu/quota", "/tmp/ch/GPU-a"),
            ("/run/dilu/quota/", "/tmp/ch/GPU-a/"),
            ("/run/dilu/quota/uid-1", "/tmp/ch/GPU-a/uid-1"),
            ("/run/dilu/quota/inner", "/srv/inner"),
            ("/run/dilu/quota/inner/x", "/srv/inner/x"),
            ("/run/dilu/quotas", "/run/dilu/quotas"),
            ("/run/dilu", "/run/dilu"),
            (
                "/usr/local/lib/dilu/libdilu_cuda.so",
                "/opt/dilu/libdilu_cuda.so",
            ),
            (
                "/usr/local/lib/dilu/libdilu_cuda.so.1",
                "/usr/local/lib/dilu/libdilu_cuda.so.1",
            ),
            ("x:/run/dilu/quota", "x:/run/dilu/quota"),
            (
                "/run/dilu/quota/a:/run/dilu/quota/b",
                "/tmp/ch/GPU-a/a:/run/dilu/quota/b",
            ),
            ("relative/run/dilu/quota", "relative/run/dilu/quota"),
            ("/etc/passwd", "/etc/passwd"),
            ("", ""),
        ];
        for (input, want) in cases {
            assert_eq!(translate_mounts(input, &mounts), want, "input {input:?}");
        }
        assert_eq!(translate_mounts("/a", &[mount("/a", "/")]), "/");
        assert_eq!(translate_mounts("/a/b", &[mount("/a", "/")]), "/b");
        assert_eq!(translate_mounts("/a/b", &[]), "/a/b");
    }

    #[test]
    fn extended_resources_are_domain_prefixed_outside_kubernetes_io() {
        for name in ["dilu.io/gpu-share", "nvidia.com/gpu", "example.com/foo"] {
            assert!(is_extended(name), "{name}");
        }
        for name in [
            "cpu",
            "memory",
            "hugepages-2Mi",
            "kubernetes.io/something",
            "requests.example.com/foo",
        ] {
            assert!(!is_extended(name), "{name}");
        }
    }
}
