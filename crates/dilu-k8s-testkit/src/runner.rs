//! # THE STAND-IN FOR THE KUBELET
//!
//! There is no kubelet and no container runtime here. [`NodeRunner`] plays the kubelet of some fake nodes:
//! it runs their pods' first containers as **local processes** and reports their status to the API server,
//! closely enough that controllers, schedulers and gateways cannot tell the difference in the API. It is
//! test support, not a kubelet: see "What it does not do" below.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fs::{File, OpenOptions};
use std::net::Ipv4Addr;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use futures::StreamExt;
use k8s_openapi::api::core::v1::{ConfigMap, Container, Pod, Secret};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::api::{Api, DeleteParams, Patch, PatchParams, Preconditions};
use kube::runtime::WatchStreamExt;
use kube::runtime::watcher::{self, Event};
use serde_json::{Value, json};
use tempfile::TempDir;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::devices::{DeviceManager, DeviceRun, PluginRegistration, translate_mounts};
use crate::expand::expand;
use crate::probe::Readiness;
use crate::process::{Proc, exit_code, signal_group};

/// The node's address, the pods' `status.hostIP`.
pub const HOST_IP: &str = "127.0.0.1";
/// Longest the runner waits after SIGTERM before SIGKILL, whatever the pod's grace period says.
pub const MAX_GRACE: Duration = Duration::from_secs(10);
/// Longest back-off between restarts of a container that keeps exiting (1 s, 2 s, 4 s, 8 s, 10 s, 10 s, …).
pub const MAX_BACKOFF: Duration = Duration::from_secs(10);
/// Environment variables of the test process a pod's process inherits (a container would get them from its
/// image); everything else comes from the pod spec and [`NodeRunner::start_with_env`].
pub const INHERITED_ENV: &[&str] = &[
    "PATH",
    "HOME",
    "USER",
    "LANG",
    "LC_ALL",
    "TZ",
    "TMPDIR",
    "RUST_BACKTRACE",
    "RUST_LIB_BACKTRACE",
    "RUST_LOG",
    "LLVM_PROFILE_FILE",
];

/// **THE STAND-IN FOR THE KUBELET.** Runs the pods bound to some nodes (`spec.nodeName`) of one namespace as
/// local processes and reports their status, as a kubelet would.
///
/// For each pod bound to one of its nodes (it learns of them through a watch, and acts on each pod in a task
/// of its own):
///
/// - **IP**: the pod gets its own loopback address, `127.0.X.Y` counting from `127.0.1.1` (Linux routes all of
///   127/8 to `lo`), unique among the pods of all runners of all test processes running at once (a lock file
///   per address in `$TMPDIR/dilu-node-runner-ips`), as `status.podIP`/`podIPs`; `hostIP` is 127.0.0.1.
/// - **Process**: the pod's *first* container only (init containers, sidecars, volumes, resources, security
///   contexts are ignored), started as `command` + `args`; a command of `dilu` (or `…/dilu`), and an empty
///   command (the image's entrypoint), run `dilu_binary`. Its working directory is `workingDir` when that
///   exists here, else a directory of its own. Its process group is its "container": it is signalled as one.
/// - **Environment**: [`INHERITED_ENV`] from the test process, the runner's extra variables, `HOSTNAME` = the
///   pod's name, then the container's `env` in order: `value` (with `$(VAR)` references to earlier variables
///   expanded), `fieldRef` (`metadata.name`, `metadata.namespace`, `metadata.uid`, `metadata.labels['…']`,
///   `metadata.annotations['…']`, `spec.nodeName`, `spec.serviceAccountName`, `status.podIP(s)`,
///   `status.hostIP(s)`), `configMapKeyRef` and `secretKeyRef` (read from the API). `resourceFieldRef` and
///   `envFrom` are refused (the container waits with `CreateContainerConfigError`).
/// - **`$(VAR)`** in command and args is expanded from the container's variables exactly as the kubelet does
///   (`$$` is a `$`, unknown references stay as written).
/// - **Logs**: stdout and stderr go to one file per pod ([`NodeRunner::log`], [`NodeRunner::log_path`]),
///   appended across restarts.
/// - **Status** (through the status subresource): phase, IPs, `startTime`, the container's status (`running`
///   with `startedAt`, `waiting` with a reason, `terminated`; `lastState.terminated` with exit code and reason;
///   `restartCount`; `ready`; `started`), conditions `PodScheduled`, `Initialized`, `ContainersReady`, `Ready`.
/// - **Readiness**: a `readinessProbe` `httpGet` (HTTP; a status in 200..400 passes) or `tcpSocket` is checked
///   every 200 ms until it passes, then every second; `failureThreshold` consecutive failures make the pod
///   unready again. Without a probe the container is ready once started. Other probes (exec, HTTPS) are
///   reported in the pod's log and treated as absent. Liveness and startup probes are ignored.
/// - **Exit**: per `restartPolicy` (default `Always`), restarted after a back-off of 1 s, 2 s, … up to
///   [`MAX_BACKOFF`] (the container waits in `CrashLoopBackOff` meanwhile, `restartCount` counts restarts),
///   or left terminated with phase `Succeeded` (exit 0) or `Failed`. What the process left behind in its
///   process group is killed when it exits.
/// - **Deletion**: when the pod gets a `deletionTimestamp`, SIGTERM to the process group, SIGKILL after the
///   pod's grace period (at most [`MAX_GRACE`]), then the pod is deleted with `gracePeriodSeconds=0` (with its
///   UID as precondition), as the kubelet does, so it leaves the API. A pod that disappears from the API
///   (force deletion) has its process group killed at once.
/// - **Devices** (only with the device manager: [`NodeRunner::builder`] with
///   [`NodeRunnerBuilder::device_plugins`] or [`NodeRunnerBuilder::device_plugin_dir`]): per node, a fake
///   kubelet serves `Registration` on `kubelet.sock` in the node's device plugin directory
///   ([`NodeRunner::device_plugin_dir`]); each plugin that registers is asked for its options and
///   `ListAndWatch`ed, and the Node's `status.capacity` (all IDs) and `status.allocatable` (healthy IDs) get its
///   resource. A pod whose first container has `limits` of a registered plugin's resource is admitted as the
///   kubelet admits it: IDs picked among the free healthy ones (`GetPreferredAllocation` when offered), then
///   `Allocate`; they are held until the pod is gone or finished ([`NodeRunner::devices`]). `Allocate`'s `envs`
///   are set after the runner's own variables and before the container's `env` (the kubelet's order: a
///   container variable of the same name wins); `$(VAR)` in command and args sees them, `$(VAR)` in the
///   container's env values does not (as in the kubelet). Its `mounts` are applied by path translation (below).
///   Not enough free IDs: the pod is rejected as the kubelet rejects it (phase `Failed`, reason
///   `UnexpectedAdmissionError`, never started); an extended resource no plugin serves is checked against the
///   Node's allocatable (`OutOf<resource>` when exceeded; admitted when the Node does not list it). Details in
///   the `devices` module; [`NodeRunner::restart_kubelet`] restarts a node's fake kubelet.
///
/// What it does not do: pull images, isolate anything (no namespaces, cgroups, limits), run more than one
/// container, mount volumes, run liveness probes, report node status other than device plugin resources (see
/// [`crate::fake_node`]), or notice a Node being deleted. Pods that are already finished (`Succeeded`,
/// `Failed`) when it starts are left alone. **Device plugin mounts are not mounted**: there is no mount
/// namespace, so the process sees the host's file system, and a mount is applied by rewriting paths instead
/// ([`crate::translate_mounts`]): after `$(VAR)` expansion, every value of the device plugins' `envs` and of
/// the container's `env` (so `LD_PRELOAD`, `DILU_QUOTA_DIR`, and `DILU_QUOTA_FILE=/run/dilu/quota/<uid>`), and
/// every word of command and args, that equals a mount's `containerPath` or begins with it followed by `/`
/// has that prefix replaced by the mount's `hostPath` (the longest matching container path wins). Paths the
/// process builds itself, reads from files, or finds in the middle of a value (the second element of
/// `a:b`), and the variables the runner itself sets or inherits, are not rewritten; read-only mounts are
/// writable; `devices` (device nodes) and `annotations` of `Allocate` are ignored, and `PreStartContainer` is
/// never called. Only the first container is allocated for; init containers get nothing.
///
/// Dropping it kills every process it started (their process groups).
pub struct NodeRunner {
    shared: Arc<Shared>,
    watcher: JoinHandle<()>,
}

impl std::fmt::Debug for NodeRunner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NodeRunner")
            .field("namespace", &self.shared.namespace)
            .field("nodes", &self.shared.nodes)
            .field("dir", &self.shared.dir.path())
            .finish()
    }
}

struct Shared {
    pods: Api<Pod>,
    client: kube::Client,
    namespace: String,
    nodes: HashSet<String>,
    dilu_binary: PathBuf,
    extra_env: Vec<(String, String)>,
    dir: TempDir,
    state: Mutex<State>,
    /// The kubelet side of the device plugin API, for the nodes that have it.
    devices: Option<DeviceManager>,
}

#[derive(Default)]
struct State {
    /// Pods being run, by name.
    slots: HashMap<String, Slot>,
    /// UIDs of pods whose task has ended: never run again.
    finished: HashSet<String>,
    /// Live processes: pod UID → (pod name, pid).
    running: HashMap<String, (String, u32)>,
    /// The address each pod got, by name (the latest pod of that name).
    ips: HashMap<String, Ipv4Addr>,
}

struct Slot {
    uid: String,
    updates: watch::Sender<Option<Pod>>,
    task: JoinHandle<()>,
}

impl Shared {
    fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl NodeRunner {
    /// Starts running the pods of `namespace` bound to `nodes`; returns once the watch has listed the pods
    /// that already exist (panics if that takes over 30 s). `dilu_binary` is what a `dilu` command runs.
    pub async fn start(
        client: kube::Client,
        namespace: &str,
        nodes: Vec<String>,
        dilu_binary: PathBuf,
    ) -> NodeRunner {
        NodeRunner::start_with_env(client, namespace, nodes, dilu_binary, Vec::new()).await
    }

    /// [`NodeRunner::start`] with extra environment variables for every pod's process (`KUBECONFIG`, say),
    /// set before the container's own (which win).
    pub async fn start_with_env(
        client: kube::Client,
        namespace: &str,
        nodes: Vec<String>,
        dilu_binary: PathBuf,
        env: Vec<(String, String)>,
    ) -> NodeRunner {
        NodeRunner::builder(client, namespace, nodes, dilu_binary)
            .env(env)
            .start()
            .await
    }

    /// A runner with options: [`NodeRunnerBuilder::env`], and the device manager
    /// ([`NodeRunnerBuilder::device_plugins`], [`NodeRunnerBuilder::device_plugin_dir`]).
    pub fn builder(
        client: kube::Client,
        namespace: &str,
        nodes: Vec<String>,
        dilu_binary: PathBuf,
    ) -> NodeRunnerBuilder {
        NodeRunnerBuilder {
            client,
            namespace: namespace.to_string(),
            nodes,
            dilu_binary,
            env: Vec::new(),
            all_devices: false,
            device_dirs: BTreeMap::new(),
        }
    }

    async fn start_built(b: NodeRunnerBuilder) -> NodeRunner {
        let NodeRunnerBuilder {
            client,
            namespace,
            nodes,
            dilu_binary,
            env,
            all_devices,
            mut device_dirs,
        } = b;
        let namespace = namespace.as_str();
        let dir = tempfile::Builder::new()
            .prefix("dilu-node-runner-")
            .tempdir()
            .expect("dilu-k8s-testkit: creating the node runner's directory");
        for sub in ["logs", "pods"] {
            std::fs::create_dir_all(dir.path().join(sub))
                .expect("dilu-k8s-testkit: creating the node runner's directories");
        }
        if all_devices {
            for node in &nodes {
                device_dirs
                    .entry(node.clone())
                    .or_insert_with(|| dir.path().join("device-plugins").join(node));
            }
        }
        device_dirs.retain(|node, _| nodes.contains(node));
        let devices = (!device_dirs.is_empty()).then(|| {
            DeviceManager::start(client.clone(), device_dirs)
                .expect("dilu-k8s-testkit: starting the node runner's device manager")
        });
        let shared = Arc::new(Shared {
            pods: Api::namespaced(client.clone(), namespace),
            client,
            namespace: namespace.to_string(),
            nodes: nodes.into_iter().collect(),
            dilu_binary,
            extra_env: env,
            dir,
            state: Mutex::new(State::default()),
            devices,
        });
        let (listed_tx, listed) = tokio::sync::oneshot::channel();
        let watcher = tokio::spawn(watch_pods(shared.clone(), listed_tx));
        if tokio::time::timeout(Duration::from_secs(30), listed)
            .await
            .is_err()
        {
            panic!(
                "dilu-k8s-testkit: the node runner could not list the pods of namespace {namespace} within 30 s"
            );
        }
        NodeRunner { shared, watcher }
    }

    /// The kubelet device plugin directory of `node` (where its `kubelet.sock` is served, and where a device
    /// plugin such as `dilu agent --kubernetes --node-name <node> --device-plugin-dir <dir>` serves its own
    /// socket); `None` when the node has no device manager.
    pub fn device_plugin_dir(&self, node: &str) -> Option<&Path> {
        self.shared.devices.as_ref()?.dir(node)
    }

    /// The registrations `node`'s fake kubelet accepted, oldest first (across its restarts).
    pub fn plugin_registrations(&self, node: &str) -> Vec<PluginRegistration> {
        self.shared
            .devices
            .as_ref()
            .map(|d| d.registrations(node))
            .unwrap_or_default()
    }

    /// Waits until `node`'s fake kubelet has accepted at least `count` registrations (polling every 20 ms);
    /// returns them all, or an error after `timeout`.
    pub async fn wait_plugin_registrations(
        &self,
        node: &str,
        count: usize,
        timeout: Duration,
    ) -> anyhow::Result<Vec<PluginRegistration>> {
        let deadline = Instant::now() + timeout;
        loop {
            let registrations = self.plugin_registrations(node);
            if registrations.len() >= count {
                return Ok(registrations);
            }
            if Instant::now() >= deadline {
                anyhow::bail!(
                    "node {node}: {} plugin registrations after {timeout:?}, {count} awaited",
                    registrations.len()
                );
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// When `node`'s current fake kubelet created its `kubelet.sock`.
    pub fn kubelet_started(&self, node: &str) -> Option<Instant> {
        self.shared.devices.as_ref()?.kubelet_started(node)
    }

    /// Restarts `node`'s fake kubelet as a kubelet restart looks to a plugin: stops serving, removes
    /// `kubelet.sock` and every other socket in the directory, and serves a new `kubelet.sock`. The new kubelet
    /// knows no plugin until they register again (pods admitted meanwhile get no device); what pods hold is
    /// kept, as the kubelet's checkpoint keeps it; the Node's counts are left as they were. Returns when the new
    /// socket was created.
    pub async fn restart_kubelet(&self, node: &str) -> anyhow::Result<Instant> {
        match self.shared.devices.as_ref() {
            Some(devices) => devices.restart_kubelet(node).await,
            None => anyhow::bail!("the node runner has no device manager"),
        }
    }

    /// The device IDs pod `pod` holds, by resource (empty when none, or the pod is gone or finished).
    pub fn devices(&self, pod: &str) -> BTreeMap<String, Vec<String>> {
        self.shared
            .devices
            .as_ref()
            .map(|d| d.held(pod))
            .unwrap_or_default()
    }

    /// The pods with a live process: (pod name, pid), by name. A pid is its process group's id too.
    pub fn running(&self) -> Vec<(String, u32)> {
        let mut list: Vec<(String, u32)> = self.shared.state().running.values().cloned().collect();
        list.sort();
        list
    }

    /// The address pod `pod` got (the latest pod of that name).
    pub fn ip(&self, pod: &str) -> Option<Ipv4Addr> {
        self.shared.state().ips.get(pod).copied()
    }

    /// The log file of pod `pod` (stdout and stderr, all its restarts).
    pub fn log_path(&self, pod: &str) -> PathBuf {
        self.shared
            .dir
            .path()
            .join("logs")
            .join(format!("{pod}.log"))
    }

    /// What pod `pod` has written so far (empty when nothing, or no such pod).
    pub fn log(&self, pod: &str) -> String {
        std::fs::read(self.log_path(pod))
            .map(|b| String::from_utf8_lossy(&b).into_owned())
            .unwrap_or_default()
    }

    /// The runner's directory (`logs/`, `pods/<pod>/` working directories).
    pub fn dir(&self) -> &Path {
        self.shared.dir.path()
    }

    /// The nodes it runs pods for.
    pub fn nodes(&self) -> impl Iterator<Item = &str> {
        self.shared.nodes.iter().map(String::as_str)
    }
}

/// Options of a [`NodeRunner`] ([`NodeRunner::builder`]).
#[must_use = "a builder does nothing until started"]
pub struct NodeRunnerBuilder {
    client: kube::Client,
    namespace: String,
    nodes: Vec<String>,
    dilu_binary: PathBuf,
    env: Vec<(String, String)>,
    all_devices: bool,
    device_dirs: BTreeMap<String, PathBuf>,
}

impl std::fmt::Debug for NodeRunnerBuilder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NodeRunnerBuilder")
            .field("namespace", &self.namespace)
            .field("nodes", &self.nodes)
            .field("all_devices", &self.all_devices)
            .field("device_dirs", &self.device_dirs)
            .finish()
    }
}

impl NodeRunnerBuilder {
    /// Extra environment variables for every pod's process (see [`NodeRunner::start_with_env`]).
    pub fn env(mut self, env: Vec<(String, String)>) -> Self {
        self.env = env;
        self
    }

    /// A device manager for every node: a device plugin directory of its own under the runner's directory
    /// (`device-plugins/<node>/`, see [`NodeRunner::device_plugin_dir`]) with a fake kubelet's `kubelet.sock`.
    pub fn device_plugins(mut self) -> Self {
        self.all_devices = true;
        self
    }

    /// A device manager for `node` serving in `dir` (created if missing; the sockets already in it are removed,
    /// as a starting kubelet does). Keep the path short: a Unix socket path has at most 107 bytes.
    pub fn device_plugin_dir(mut self, node: &str, dir: impl Into<PathBuf>) -> Self {
        self.device_dirs.insert(node.to_string(), dir.into());
        self
    }

    /// Starts the runner (see [`NodeRunner::start`]); panics if a fake kubelet cannot serve.
    pub async fn start(self) -> NodeRunner {
        NodeRunner::start_built(self).await
    }
}

impl Drop for NodeRunner {
    fn drop(&mut self) {
        self.watcher.abort();
        let mut state = self.shared.state();
        for slot in state.slots.values() {
            slot.task.abort();
        }
        for (_, pid) in state.running.values() {
            signal_group(*pid, libc::SIGKILL);
        }
        state.running.clear();
        state.slots.clear();
    }
}

async fn watch_pods(shared: Arc<Shared>, listed: tokio::sync::oneshot::Sender<()>) {
    let mut config = watcher::Config::default();
    if shared.nodes.len() == 1
        && let Some(node) = shared.nodes.iter().next()
    {
        config = config.fields(&format!("spec.nodeName={node}"));
    }
    let mut listed = Some(listed);
    let mut relisted: Option<HashSet<String>> = None;
    let mut events = watcher::watcher(shared.pods.clone(), config)
        .default_backoff()
        .boxed();
    while let Some(event) = events.next().await {
        match event {
            Ok(Event::Init) => relisted = Some(HashSet::new()),
            Ok(Event::InitApply(pod)) => {
                if let (Some(seen), Some(uid)) = (relisted.as_mut(), pod.metadata.uid.as_ref()) {
                    seen.insert(uid.clone());
                }
                on_pod(&shared, pod);
            }
            Ok(Event::InitDone) => {
                // Pods that went while the watch was down.
                if let Some(seen) = relisted.take() {
                    let mut state = shared.state();
                    let gone: Vec<String> = state
                        .slots
                        .iter()
                        .filter(|(_, s)| !seen.contains(&s.uid))
                        .map(|(name, _)| name.clone())
                        .collect();
                    for name in gone {
                        if let Some(slot) = state.slots.remove(&name) {
                            slot.updates.send_replace(None);
                        }
                    }
                }
                if let Some(tx) = listed.take() {
                    let _ = tx.send(());
                }
            }
            Ok(Event::Apply(pod)) => on_pod(&shared, pod),
            Ok(Event::Delete(pod)) => on_gone(&shared, &pod),
            Err(e) => eprintln!("node-runner: watching pods: {e}"),
        }
    }
}

fn on_pod(shared: &Arc<Shared>, pod: Pod) {
    let Some(node) = pod.spec.as_ref().and_then(|s| s.node_name.as_ref()) else {
        return;
    };
    if !shared.nodes.contains(node) {
        return;
    }
    let (Some(name), Some(uid)) = (pod.metadata.name.clone(), pod.metadata.uid.clone()) else {
        return;
    };
    let mut state = shared.state();
    if state.finished.contains(&uid) {
        return;
    }
    if let Some(slot) = state.slots.get(&name) {
        if slot.uid == uid {
            slot.updates.send_replace(Some(pod));
            return;
        }
        // A new pod of the same name: the old one is gone.
        if let Some(old) = state.slots.remove(&name) {
            old.updates.send_replace(None);
        }
    }
    let phase = pod.status.as_ref().and_then(|s| s.phase.as_deref());
    if matches!(phase, Some("Succeeded" | "Failed")) && pod.metadata.deletion_timestamp.is_none() {
        return;
    }
    let (ip, lock) = allocate_ip();
    state.ips.insert(name.clone(), ip);
    let (updates, rx) = watch::channel(Some(pod));
    let task = tokio::spawn(run_pod(shared.clone(), rx, ip, lock));
    state.slots.insert(name, Slot { uid, updates, task });
}

fn on_gone(shared: &Arc<Shared>, pod: &Pod) {
    let (Some(name), Some(uid)) = (pod.metadata.name.as_ref(), pod.metadata.uid.as_ref()) else {
        return;
    };
    let mut state = shared.state();
    if state.slots.get(name).is_some_and(|s| &s.uid == uid)
        && let Some(slot) = state.slots.remove(name)
    {
        slot.updates.send_replace(None);
    }
}

/// A loopback address no other pod of any test process holds now (the lock file stays locked as long as the
/// returned file is open).
fn allocate_ip() -> (Ipv4Addr, File) {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let dir = std::env::temp_dir().join("dilu-node-runner-ips");
    let _ = std::fs::create_dir_all(&dir);
    loop {
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        assert!(
            n < 254 * 254,
            "dilu-k8s-testkit: the node runner ran out of loopback addresses (127.0.1.1 to 127.0.254.254)"
        );
        let ip = Ipv4Addr::new(127, 0, 1 + (n / 254) as u8, 1 + (n % 254) as u8);
        let Ok(file) = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(dir.join(ip.to_string()))
        else {
            // No lock directory: uniqueness within this process still holds.
            return (
                ip,
                File::open("/dev/null").expect("dilu-k8s-testkit: opening /dev/null"),
            );
        };
        // SAFETY: flock on a descriptor we own.
        if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } == 0 {
            return (ip, file);
        }
    }
}

fn now() -> Value {
    serde_json::to_value(Time(k8s_openapi::jiff::Timestamp::now())).unwrap_or(Value::Null)
}

fn is_deleting(pod: &Pod) -> bool {
    pod.metadata.deletion_timestamp.is_some()
}

fn grace_of(pod: &Pod) -> Duration {
    let secs = pod
        .metadata
        .deletion_grace_period_seconds
        .or_else(|| {
            pod.spec
                .as_ref()
                .and_then(|s| s.termination_grace_period_seconds)
        })
        .unwrap_or(30)
        .max(0);
    Duration::from_secs(secs as u64).min(MAX_GRACE)
}

/// How a running container stopped being supervised.
enum Outcome {
    Exited(ExitStatus),
    Deleting(Duration),
    Gone,
}

/// What the back-off ended with.
enum Waited {
    Elapsed,
    Deleting,
    Gone,
}

struct Prepared {
    program: PathBuf,
    args: Vec<String>,
    /// The device plugins' variables, set before the container's (which win on a clash).
    device_env: Vec<(String, String)>,
    env: Vec<(String, String)>,
    cwd: PathBuf,
}

/// One pod's life on the runner.
struct PodRun {
    shared: Arc<Shared>,
    name: String,
    uid: String,
    ip: Ipv4Addr,
    container: Container,
    start_time: Value,
    restart_count: u32,
    last_terminated: Option<Value>,
    ready: bool,
    ready_since: Value,
    container_id: String,
    /// When the current (or last) process started.
    started_at: Value,
}

async fn run_pod(
    shared: Arc<Shared>,
    mut rx: watch::Receiver<Option<Pod>>,
    ip: Ipv4Addr,
    _ip_lock: File,
) {
    let Some(pod) = rx.borrow_and_update().clone() else {
        return;
    };
    let name = pod.metadata.name.clone().unwrap_or_default();
    let uid = pod.metadata.uid.clone().unwrap_or_default();
    let container = pod
        .spec
        .as_ref()
        .and_then(|s| s.containers.first().cloned());
    if let Some(container) = container {
        let start_time = now();
        let mut run = PodRun {
            shared: shared.clone(),
            name: name.clone(),
            uid: uid.clone(),
            ip,
            container,
            ready_since: start_time.clone(),
            start_time,
            restart_count: 0,
            last_terminated: None,
            ready: false,
            container_id: String::new(),
            started_at: Value::Null,
        };
        run.live(&pod, &mut rx).await;
        run.release_devices();
    }
    let mut state = shared.state();
    state.running.remove(&uid);
    state.finished.insert(uid.clone());
    if state.slots.get(&name).is_some_and(|s| s.uid == uid) {
        state.slots.remove(&name);
    }
}

impl PodRun {
    async fn live(&mut self, pod: &Pod, rx: &mut watch::Receiver<Option<Pod>>) {
        if is_deleting(pod) {
            self.delete_now().await;
            return;
        }
        let restart_policy = pod
            .spec
            .as_ref()
            .and_then(|s| s.restart_policy.clone())
            .unwrap_or_else(|| "Always".into());
        let devices = match self.admit_devices(pod).await {
            Ok(devices) => devices,
            Err(rejection) => {
                self.note(&format!(
                    "rejected: {}: {}",
                    rejection.reason, rejection.message
                ));
                self.reject(&rejection.reason, &rejection.message).await;
                self.until_deleted(rx).await;
                return;
            }
        };
        let prepared = match self.prepare(pod, devices.as_ref()).await {
            Ok(p) => p,
            Err(message) => {
                self.note(&format!("cannot start the container: {message}"));
                let state = json!({"waiting": {"reason": "CreateContainerConfigError", "message": message}});
                self.report("Pending", state, false).await;
                self.until_deleted(rx).await;
                return;
            }
        };
        let readiness = match Readiness::of(&self.container, &self.ip.to_string()) {
            Ok(r) => r,
            Err(message) => {
                self.note(&format!(
                    "readiness probe ignored ({message}): the container is ready once started"
                ));
                None
            }
        };
        let mut backoff = Duration::from_secs(1);
        loop {
            let started_at = now();
            self.started_at = started_at.clone();
            let status = match self.spawn(&prepared) {
                Ok(proc) => {
                    self.container_id = format!("dilu-node-runner://{}", proc.pid());
                    self.shared
                        .state()
                        .running
                        .insert(self.uid.clone(), (self.name.clone(), proc.pid()));
                    self.set_ready(readiness.is_none());
                    let state = json!({"running": {"startedAt": started_at}});
                    self.report("Running", state, true).await;
                    let outcome = self.supervise(&proc, rx, readiness.as_ref()).await;
                    match outcome {
                        Outcome::Gone => {
                            proc.signal_group(libc::SIGKILL);
                            proc.wait().await;
                            return;
                        }
                        Outcome::Deleting(grace) => {
                            let status = stop(&proc, grace).await;
                            self.shared.state().running.remove(&self.uid);
                            self.set_ready(false);
                            let state = terminated(status, &started_at, &self.container_id);
                            self.report("Running", json!({"terminated": state}), false)
                                .await;
                            self.delete_now().await;
                            return;
                        }
                        Outcome::Exited(status) => {
                            // What it left in its process group goes with it, as in a container.
                            proc.signal_group(libc::SIGKILL);
                            self.shared.state().running.remove(&self.uid);
                            terminated(status, &started_at, &self.container_id)
                        }
                    }
                }
                Err(e) => {
                    let message = format!("starting {}: {e}", prepared.program.display());
                    self.note(&message);
                    json!({
                        "exitCode": 128, "reason": "StartError", "message": message,
                        "startedAt": started_at, "finishedAt": now(),
                    })
                }
            };
            let code = status["exitCode"].as_i64().unwrap_or(1);
            self.set_ready(false);
            let restart = match restart_policy.as_str() {
                "Never" => false,
                "OnFailure" => code != 0,
                _ => true,
            };
            if !restart {
                let phase = if code == 0 { "Succeeded" } else { "Failed" };
                // A finished pod is no longer active: the kubelet gives its devices to others.
                self.release_devices();
                self.report(phase, json!({"terminated": status}), false)
                    .await;
                self.until_deleted(rx).await;
                return;
            }
            self.last_terminated = Some(json!({"terminated": status}));
            let state = json!({"waiting": {
                "reason": "CrashLoopBackOff",
                "message": format!("back-off {}s restarting failed container={} pod={}_{}({})",
                    backoff.as_secs(), self.container.name, self.name, self.shared.namespace, self.uid),
            }});
            self.report("Running", state, false).await;
            match self.back_off(rx, backoff).await {
                Waited::Elapsed => {}
                Waited::Deleting => {
                    self.delete_now().await;
                    return;
                }
                Waited::Gone => return,
            }
            backoff = (backoff * 2).min(MAX_BACKOFF);
            self.restart_count += 1;
        }
    }

    /// Admits the pod on the device manager of its node, if any.
    async fn admit_devices(
        &self,
        pod: &Pod,
    ) -> Result<Option<DeviceRun>, crate::devices::Rejection> {
        let (Some(devices), Some(node)) = (
            self.shared.devices.as_ref(),
            pod.spec.as_ref().and_then(|s| s.node_name.as_deref()),
        ) else {
            return Ok(None);
        };
        let run = devices
            .admit(node, &self.uid, &self.name, &self.container)
            .await?;
        if let Some(run) = &run {
            let names: Vec<&str> = run.envs.iter().map(|(k, _)| k.as_str()).collect();
            self.note(&format!(
                "devices allocated: {:?}; env {names:?}; {} mounts",
                devices.held(&self.name),
                run.mounts.len()
            ));
        }
        Ok(run)
    }

    /// Gives back what the pod holds on its node's device manager.
    fn release_devices(&self) {
        if let Some(devices) = self.shared.devices.as_ref() {
            for node in &self.shared.nodes {
                devices.release(node, &self.uid);
            }
        }
    }

    /// Writes the status of a pod the kubelet did not admit (its `rejectPod`): phase `Failed`, the reason, and
    /// `Pod <message>`.
    async fn reject(&self, reason: &str, message: &str) {
        let body = json!({"status": {
            "phase": "Failed",
            "reason": reason,
            "message": format!("Pod {message}"),
        }});
        self.write_status(body).await;
    }

    /// Merges `body` into the pod's status (a pod already gone is no error).
    async fn write_status(&self, body: Value) {
        if let Err(e) = self
            .shared
            .pods
            .patch_status(&self.name, &PatchParams::default(), &Patch::Merge(body))
            .await
        {
            match e {
                kube::Error::Api(ref a) if a.code == 404 => {}
                e => eprintln!("node-runner: pod {}: writing status: {e}", self.name),
            }
        }
    }

    /// Resolves the container's environment and command line: the device plugins' env (`devices`), then the
    /// container's, with `$(VAR)` expanded as the kubelet does and mount paths translated.
    async fn prepare(&self, pod: &Pod, devices: Option<&DeviceRun>) -> Result<Prepared, String> {
        let c = &self.container;
        if c.env_from.as_ref().is_some_and(|e| !e.is_empty()) {
            return Err("envFrom is not supported by the node runner".into());
        }
        let mut vars: Vec<(String, String)> = Vec::new();
        for var in c.env.iter().flatten() {
            let value = if let Some(from) = &var.value_from {
                self.value_from(pod, from).await?
            } else {
                let raw = var.value.clone().unwrap_or_default();
                expand(&raw, |n| lookup(&vars, n))
            };
            match vars.iter_mut().find(|(k, _)| *k == var.name) {
                Some(slot) => slot.1 = value,
                None => vars.push((var.name.clone(), value)),
            }
        }
        // Command and args see the device plugins' variables too, the container's winning (the kubelet's
        // ExpandContainerCommandAndArgs over all of the container's variables, devices' first); env values
        // see only the container's own (its makeEnvironmentVariables).
        let device_env: Vec<(String, String)> = devices.map(|d| d.envs.clone()).unwrap_or_default();
        let mounts = devices.map(|d| d.mounts.as_slice()).unwrap_or_default();
        let arg = |a: &String| {
            let expanded = expand(a, |n| lookup(&vars, n).or_else(|| lookup(&device_env, n)));
            translate_mounts(&expanded, mounts)
        };
        let command = c.command.clone().unwrap_or_default();
        let args = c.args.clone().unwrap_or_default();
        let mut argv: Vec<String> = if command.is_empty() {
            // The image's entrypoint: Dilu's images run `dilu`.
            std::iter::once("dilu".to_string())
                .chain(args.iter().map(arg))
                .collect()
        } else {
            command.iter().chain(args.iter()).map(arg).collect()
        };
        let translate_all = |list: Vec<(String, String)>| -> Vec<(String, String)> {
            list.into_iter()
                .map(|(k, v)| {
                    let v = translate_mounts(&v, mounts);
                    (k, v)
                })
                .collect()
        };
        let device_env = translate_all(device_env);
        let vars = translate_all(vars);
        let first = argv.remove(0);
        let program = if first == "dilu" || first.ends_with("/dilu") {
            self.shared.dilu_binary.clone()
        } else {
            PathBuf::from(first)
        };
        let cwd = match c.working_dir.as_deref().map(Path::new) {
            Some(dir) if dir.is_dir() => dir.to_path_buf(),
            _ => {
                let dir = self
                    .shared
                    .dir
                    .path()
                    .join("pods")
                    .join(format!("{}-{}", self.name, self.uid));
                std::fs::create_dir_all(&dir)
                    .map_err(|e| format!("creating {}: {e}", dir.display()))?;
                dir
            }
        };
        Ok(Prepared {
            program,
            args: argv,
            device_env,
            env: vars,
            cwd,
        })
    }

    async fn value_from(
        &self,
        pod: &Pod,
        from: &k8s_openapi::api::core::v1::EnvVarSource,
    ) -> Result<String, String> {
        if let Some(field) = &from.field_ref {
            return self.field(pod, &field.field_path);
        }
        let ns = &self.shared.namespace;
        if let Some(key_ref) = &from.config_map_key_ref {
            let api: Api<ConfigMap> = Api::namespaced(self.shared.client.clone(), ns);
            let found = api
                .get_opt(&key_ref.name)
                .await
                .map_err(|e| format!("reading configmap {}: {e}", key_ref.name))?
                .and_then(|cm| cm.data.and_then(|d| d.get(&key_ref.key).cloned()));
            return match found {
                Some(v) => Ok(v),
                None if key_ref.optional == Some(true) => Ok(String::new()),
                None => Err(format!(
                    "configmap {} has no key {:?}",
                    key_ref.name, key_ref.key
                )),
            };
        }
        if let Some(key_ref) = &from.secret_key_ref {
            let api: Api<Secret> = Api::namespaced(self.shared.client.clone(), ns);
            let found = api
                .get_opt(&key_ref.name)
                .await
                .map_err(|e| format!("reading secret {}: {e}", key_ref.name))?
                .and_then(|s| s.data.and_then(|d| d.get(&key_ref.key).cloned()));
            return match found {
                Some(v) => Ok(String::from_utf8_lossy(&v.0).into_owned()),
                None if key_ref.optional == Some(true) => Ok(String::new()),
                None => Err(format!(
                    "secret {} has no key {:?}",
                    key_ref.name, key_ref.key
                )),
            };
        }
        Err(
            "only fieldRef, configMapKeyRef and secretKeyRef are supported by the node runner"
                .into(),
        )
    }

    /// The downward API's `fieldRef` values.
    fn field(&self, pod: &Pod, path: &str) -> Result<String, String> {
        let meta = &pod.metadata;
        let spec = pod.spec.as_ref();
        let map_key = |prefix: &str| -> Option<String> {
            path.strip_prefix(prefix)?
                .strip_suffix("']")
                .map(str::to_string)
        };
        let value = match path {
            "metadata.name" => meta.name.clone(),
            "metadata.namespace" => meta.namespace.clone(),
            "metadata.uid" => meta.uid.clone(),
            "spec.nodeName" => spec.and_then(|s| s.node_name.clone()),
            "spec.serviceAccountName" => spec.and_then(|s| s.service_account_name.clone()),
            "status.podIP" | "status.podIPs" => Some(self.ip.to_string()),
            "status.hostIP" | "status.hostIPs" => Some(HOST_IP.to_string()),
            _ => {
                if let Some(key) = map_key("metadata.labels['") {
                    Some(
                        meta.labels
                            .as_ref()
                            .and_then(|l| l.get(&key).cloned())
                            .unwrap_or_default(),
                    )
                } else if let Some(key) = map_key("metadata.annotations['") {
                    Some(
                        meta.annotations
                            .as_ref()
                            .and_then(|a| a.get(&key).cloned())
                            .unwrap_or_default(),
                    )
                } else {
                    return Err(format!(
                        "fieldRef {path:?} is not supported by the node runner"
                    ));
                }
            }
        };
        Ok(value.unwrap_or_default())
    }

    fn spawn(&self, prepared: &Prepared) -> std::io::Result<Proc> {
        let log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log_path())?;
        let err = log.try_clone()?;
        let mut command = Command::new(&prepared.program);
        command
            .args(&prepared.args)
            .current_dir(&prepared.cwd)
            .env_clear()
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(err);
        for key in INHERITED_ENV {
            if let Some(v) = std::env::var_os(key) {
                command.env(key, v);
            }
        }
        command.envs(self.shared.extra_env.iter().map(|(k, v)| (k, v)));
        command.env("HOSTNAME", &self.name);
        command.envs(prepared.device_env.iter().map(|(k, v)| (k, v)));
        command.envs(prepared.env.iter().map(|(k, v)| (k, v)));
        Proc::spawn(command)
    }

    /// Watches the running process, the pod object and the readiness probe.
    async fn supervise(
        &mut self,
        proc: &Proc,
        rx: &mut watch::Receiver<Option<Pod>>,
        readiness: Option<&Readiness>,
    ) -> Outcome {
        let mut failures = 0u32;
        let mut next_probe =
            tokio::time::Instant::now() + readiness.map_or(Duration::ZERO, |r| r.initial_delay);
        loop {
            tokio::select! {
                status = proc.wait() => return Outcome::Exited(status),
                changed = rx.changed() => {
                    if changed.is_err() {
                        return Outcome::Gone;
                    }
                    let pod = rx.borrow_and_update().clone();
                    match pod {
                        None => return Outcome::Gone,
                        Some(pod) if is_deleting(&pod) => return Outcome::Deleting(grace_of(&pod)),
                        Some(_) => {}
                    }
                }
                _ = tokio::time::sleep_until(next_probe), if readiness.is_some() => {
                    let Some(probe) = readiness else { continue };
                    let ok = probe.run().await;
                    if ok {
                        failures = 0;
                        if !self.ready {
                            self.set_ready(true);
                            let state = json!({"running": {"startedAt": self.started_at}});
                            self.report("Running", state, true).await;
                        }
                    } else {
                        failures += 1;
                        if self.ready && failures >= probe.failure_threshold {
                            self.set_ready(false);
                            let state = json!({"running": {"startedAt": self.started_at}});
                            self.report("Running", state, true).await;
                        }
                    }
                    let period = if self.ready { Duration::from_secs(1) } else { Duration::from_millis(200) };
                    next_probe = tokio::time::Instant::now() + period;
                }
            }
        }
    }

    async fn back_off(&self, rx: &mut watch::Receiver<Option<Pod>>, delay: Duration) -> Waited {
        let sleep = tokio::time::sleep(delay);
        tokio::pin!(sleep);
        loop {
            tokio::select! {
                _ = &mut sleep => return Waited::Elapsed,
                changed = rx.changed() => {
                    if changed.is_err() {
                        return Waited::Gone;
                    }
                    let pod = rx.borrow_and_update().clone();
                    match pod {
                        None => return Waited::Gone,
                        Some(pod) if is_deleting(&pod) => return Waited::Deleting,
                        Some(_) => {}
                    }
                }
            }
        }
    }

    /// Waits, with nothing running, until the pod is deleted (then removes it) or gone.
    async fn until_deleted(&self, rx: &mut watch::Receiver<Option<Pod>>) {
        if rx.borrow().as_ref().is_some_and(is_deleting) {
            self.delete_now().await;
            return;
        }
        loop {
            if rx.changed().await.is_err() {
                return;
            }
            let pod = rx.borrow_and_update().clone();
            match pod {
                None => return,
                Some(pod) if is_deleting(&pod) => {
                    self.delete_now().await;
                    return;
                }
                Some(_) => {}
            }
        }
    }

    /// Deletes the pod with grace period 0 (its containers are stopped), as the kubelet does.
    async fn delete_now(&self) {
        let params = DeleteParams {
            grace_period_seconds: Some(0),
            preconditions: Some(Preconditions {
                uid: Some(self.uid.clone()),
                resource_version: None,
            }),
            ..DeleteParams::default()
        };
        match self.shared.pods.delete(&self.name, &params).await {
            Ok(_) => {}
            Err(kube::Error::Api(e)) if e.code == 404 || e.code == 409 => {}
            Err(e) => eprintln!("node-runner: pod {}: deleting: {e}", self.name),
        }
    }

    fn set_ready(&mut self, ready: bool) {
        if self.ready != ready {
            self.ready = ready;
            self.ready_since = now();
        }
    }

    /// Writes the pod's status: `phase`, the container's `state`, and `started`.
    async fn report(&self, phase: &str, state: Value, started: bool) {
        let ip = self.ip.to_string();
        let yes_no = |b: bool| if b { "True" } else { "False" };
        let not_ready_reason = if matches!(phase, "Succeeded" | "Failed") {
            "PodCompleted"
        } else {
            "ContainersNotReady"
        };
        let ready_condition = |kind: &str| {
            let mut c = json!({
                "type": kind, "status": yes_no(self.ready), "lastProbeTime": null,
                "lastTransitionTime": self.ready_since,
            });
            if !self.ready {
                c["reason"] = json!(not_ready_reason);
                c["message"] = json!(format!(
                    "containers with unready status: [{}]",
                    self.container.name
                ));
            }
            c
        };
        let container_status = json!({
            "name": self.container.name,
            "image": self.container.image.clone().unwrap_or_default(),
            "imageID": "",
            "containerID": self.container_id,
            "ready": self.ready,
            "started": started,
            "restartCount": self.restart_count,
            "state": state,
            "lastState": self.last_terminated.clone().unwrap_or_else(|| json!({})),
        });
        let body = json!({"status": {
            "phase": phase,
            "hostIP": HOST_IP,
            "podIP": ip,
            "podIPs": [{"ip": ip}],
            "startTime": self.start_time,
            "conditions": [
                {"type": "Initialized", "status": "True", "lastProbeTime": null, "lastTransitionTime": self.start_time},
                ready_condition("Ready"),
                ready_condition("ContainersReady"),
                {"type": "PodScheduled", "status": "True", "lastProbeTime": null, "lastTransitionTime": self.start_time},
            ],
            "containerStatuses": [container_status],
        }});
        self.write_status(body).await;
    }

    fn log_path(&self) -> PathBuf {
        self.shared
            .dir
            .path()
            .join("logs")
            .join(format!("{}.log", self.name))
    }

    /// A line from the runner in the pod's log (and on stderr).
    fn note(&self, message: &str) {
        use std::io::Write;
        eprintln!("node-runner: pod {}: {message}", self.name);
        if let Ok(mut f) = OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log_path())
        {
            let _ = writeln!(f, "node-runner: {message}");
        }
    }
}

fn lookup(vars: &[(String, String)], name: &str) -> Option<String> {
    vars.iter().find(|(k, _)| k == name).map(|(_, v)| v.clone())
}

/// A container's `terminated` state.
fn terminated(status: ExitStatus, started_at: &Value, container_id: &str) -> Value {
    let code = exit_code(status);
    let reason = if code == 0 { "Completed" } else { "Error" };
    json!({
        "exitCode": code,
        "reason": reason,
        "startedAt": started_at,
        "finishedAt": now(),
        "containerID": container_id,
    })
}

/// SIGTERM to the process group, SIGKILL after `grace`; waits until the process has ended.
async fn stop(proc: &Proc, grace: Duration) -> ExitStatus {
    proc.signal_group(libc::SIGTERM);
    match tokio::time::timeout(grace, proc.wait()).await {
        Ok(status) => {
            proc.signal_group(libc::SIGKILL);
            status
        }
        Err(_) => {
            proc.signal_group(libc::SIGKILL);
            proc.wait().await
        }
    }
}
