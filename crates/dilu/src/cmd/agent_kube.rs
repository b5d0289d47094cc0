//! `dilu agent --kubernetes`: the node agent as a DaemonSet (`docs/kubernetes.md`, "The node agent").
//!
//! One process per node: the agent (devices, token manager) budgets a quota channel per Dilu pod bound to the
//! node (`Agent::attach`, at `<channel root>/<device UUID>/<pod UID>`), `dilu_k8s::node::run` keeps the Node's
//! inventory, the node's Lease and those channels current, one device plugin per device kind offers the devices
//! to the kubelet as shares (steered by the pods' assignments), and the agent's local API keeps serving its
//! metrics. SIGTERM stops everything but leaves the pod channels: the pods keep their last budgets, and the next
//! agent re-opens them.

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use clap::Args;
use dilu_agent::api::{self, Listen};
use dilu_agent::{Agent, AgentError};
use dilu_deviceplugin::{
    DevicePlugin, PhysicalDevice, PluginConfig, Preference, RunningPlugin, ServeConfig,
};
use dilu_k8s::events::{EventSink, EventType, Reporter, node_ref};
use dilu_k8s::meta::{self, NodeDevice};
use dilu_k8s::node::{
    self, Attached, Channel, Held, NodeConfig, NodePreference, PickCheck, PodChannels, PodDevices,
};
use dilu_quota::DeviceKind;
use tokio::sync::watch;

use super::agent::{AgentArgs, start_agent};
use super::worker::termination;

/// Flags of `dilu agent` that only `--kubernetes` uses.
#[derive(Debug, Args)]
pub struct KubeNodeArgs {
    /// The Node this agent runs on (with --kubernetes; the DaemonSet passes spec.nodeName as NODE_NAME).
    #[arg(long, env = "NODE_NAME")]
    node_name: Option<String>,
    /// The kubelet's device plugin directory (kubelet.sock; the plugins' sockets go there too).
    #[arg(long, default_value = dilu_deviceplugin::DEFAULT_PLUGIN_DIR)]
    device_plugin_dir: PathBuf,
    /// Host directory of the pods' quota channels: <root>/<device UUID>/<pod UID>; each device's directory
    /// is mounted into its pods by the device plugin.
    #[arg(long, default_value = "/run/dilu/channels")]
    channel_root: PathBuf,
    /// Shares each device is offered as (dilu.io/gpu-share, dilu.io/cpu-share): the most pods on one device.
    #[arg(long, default_value_t = 16, value_parser = clap::value_parser!(u32).range(1..=1024))]
    shares: u32,
    /// A kubeconfig file (default: KUBECONFIG, ~/.kube/config, or the pod's service account).
    #[arg(long)]
    kubeconfig: Option<PathBuf>,
    /// Namespace of the node's heartbeat Lease.
    #[arg(long, default_value = meta::NODE_LEASE_NAMESPACE)]
    lease_namespace: String,
    /// Seconds the node's heartbeat Lease is valid (renewed every third of it). Once it runs out the control
    /// plane judges the node lost and replaces its pods elsewhere, so it must outlast an agent restart (a
    /// DaemonSet rolling update) but stay short enough to move pods off a dead node quickly.
    #[arg(long, default_value_t = meta::NODE_LEASE_SECONDS, value_parser = clap::value_parser!(i32).range(3..=3600))]
    lease_seconds: i32,
    /// The kubelet's PodResources socket, read to check which device the kubelet gave each pod.
    #[arg(long, default_value = dilu_deviceplugin::podresources::DEFAULT_SOCKET)]
    pod_resources_socket: PathBuf,
    /// Seconds between checks of the kubelet's picks: a pod given shares of another device than its assignment
    /// is deleted, so that it is replaced (0: no checks).
    #[arg(long, default_value_t = 10.0, value_parser = parse_pick_check_s)]
    pick_check_s: f64,
}

fn parse_pick_check_s(text: &str) -> Result<f64, String> {
    match text.parse::<f64>() {
        Ok(s) if s == 0.0 || (0.1..=3600.0).contains(&s) => Ok(s),
        _ => Err(format!("{text:?}: 0 (off) or seconds between 0.1 and 3600")),
    }
}

/// The kubelet's PodResources record of the shares Dilu's plugins gave, as the node agent's [`PodDevices`].
struct KubeletPodDevices {
    socket: PathBuf,
}

impl PodDevices for KubeletPodDevices {
    fn held(&self) -> dilu_control::backend::BoxFuture<'_, Result<Vec<Held>, String>> {
        Box::pin(async move {
            let resources = [meta::GPU_SHARE, meta::CPU_SHARE];
            dilu_deviceplugin::podresources::list(&self.socket, &resources, Duration::from_secs(5))
                .await
                .map(|pods| {
                    pods.into_iter()
                        .map(|p| Held {
                            key: p.key,
                            devices: p.devices,
                        })
                        .collect()
                })
                .map_err(|e| e.to_string())
        })
    }
}

/// The agent's attached channels as the node agent's [`PodChannels`]: the pod UID is the channel's id, its
/// file `<root>/<device>/<pod UID>`.
pub struct AgentChannels {
    agent: Arc<Agent>,
    root: PathBuf,
}

impl AgentChannels {
    /// Channels of `agent` under `root`.
    pub fn new(agent: Arc<Agent>, root: PathBuf) -> Self {
        Self { agent, root }
    }

    /// Files under `<root>/<device>/` (one level), with the name they are kept under.
    fn files(&self) -> Vec<(String, PathBuf)> {
        let mut found = Vec::new();
        let Ok(devices) = std::fs::read_dir(&self.root) else {
            return found;
        };
        for device in devices.flatten() {
            if !device.file_type().is_ok_and(|t| t.is_dir()) {
                continue;
            }
            let Ok(files) = std::fs::read_dir(device.path()) else {
                continue;
            };
            for file in files.flatten() {
                if file.file_type().is_ok_and(|t| t.is_file())
                    && let Ok(name) = file.file_name().into_string()
                {
                    found.push((name, file.path()));
                }
            }
        }
        found
    }
}

impl PodChannels for AgentChannels {
    fn attach(&self, pod_uid: &str, channel: &Channel) -> Result<(), String> {
        let path = self.root.join(&channel.device).join(pod_uid);
        self.agent
            .attach(pod_uid, &channel.device, channel.kind, channel.quota, &path)
            .map(|_| ())
            .map_err(|e| e.to_string())
    }

    fn detach(&self, pod_uid: &str) -> Result<(), String> {
        match self.agent.detach(pod_uid) {
            Ok(()) => Ok(()),
            // A file left by an earlier agent: nothing budgets it, remove it.
            Err(AgentError::NotFound(_)) => {
                for (name, path) in self.files() {
                    if name == pod_uid {
                        std::fs::remove_file(&path)
                            .or_else(|e| {
                                if e.kind() == std::io::ErrorKind::NotFound {
                                    Ok(())
                                } else {
                                    Err(e)
                                }
                            })
                            .map_err(|e| format!("removing {}: {e}", path.display()))?;
                    }
                }
                Ok(())
            }
            Err(e) => Err(e.to_string()),
        }
    }

    fn attached(&self) -> Vec<Attached> {
        let budgeted = self.agent.attached();
        let ids: BTreeSet<String> = budgeted.iter().map(|a| a.id.clone()).collect();
        let mut list: Vec<Attached> = budgeted
            .into_iter()
            .map(|a| Attached {
                pod_uid: a.id,
                channel: Some(Channel {
                    device: a.device,
                    kind: a.kind,
                    quota: a.quota,
                }),
            })
            .collect();
        let leftovers: BTreeSet<String> = self
            .files()
            .into_iter()
            .map(|(name, _)| name)
            .filter(|name| !ids.contains(name))
            .collect();
        list.extend(leftovers.into_iter().map(|pod_uid| Attached {
            pod_uid,
            channel: None,
        }));
        list
    }
}

/// The inventory the node publishes: every device of the agent.
pub fn node_devices(agent: &Agent) -> Vec<NodeDevice> {
    agent
        .devices()
        .iter()
        .map(|d| NodeDevice {
            uuid: d.uuid.clone(),
            memory_mib: d.memory_bytes >> 20,
            gpu: d.kind == DeviceKind::Gpu,
            cores: d.cores,
        })
        .collect()
}

/// The UUIDs of the agent's unhealthy devices, kept current (the node's inventory leaves them out).
fn unhealthy_devices(agent: &Agent) -> watch::Receiver<BTreeSet<String>> {
    let uuids: Vec<String> = agent.devices().iter().map(|d| d.uuid.clone()).collect();
    let board = Arc::downgrade(agent.health());
    let (tx, rx) = watch::channel(BTreeSet::new());
    agent.health().subscribe(move |_| {
        let Some(board) = board.upgrade() else { return };
        let unhealthy: BTreeSet<String> = uuids
            .iter()
            .filter(|uuid| !board.health(uuid).is_healthy())
            .cloned()
            .collect();
        tx.send_if_modified(|current| {
            let changed = *current != unhealthy;
            *current = unhealthy;
            changed
        });
    });
    rx
}

/// Writes an event on the Node whenever one of its devices becomes unhealthy (`GPUUnhealthy`, with the reason)
/// or healthy again (`GPUHealthy`); a device unhealthy at start is reported at once.
fn report_health(agent: &Agent, node: &str, events: EventSink) {
    let node = node.to_string();
    agent.health().subscribe(move |change| {
        let (type_, reason, note) = match change.health.reason() {
            Some(why) => (
                EventType::Warning,
                "GPUUnhealthy",
                format!(
                    "device {} is unhealthy: {why}; nothing new is placed on it",
                    change.uuid
                ),
            ),
            None => (
                EventType::Normal,
                "GPUHealthy",
                format!("device {} is healthy again", change.uuid),
            ),
        };
        events.emit(node_ref(&node), type_, reason, "Watch", note);
    });
}

/// Starts one device plugin per device kind the agent has (GPUs as `dilu.io/gpu-share`, CPU devices as
/// `dilu.io/cpu-share`), each device with the health the agent watches, steered by `preference`.
async fn start_plugins(
    agent: &Agent,
    kube: &KubeNodeArgs,
    preference: &NodePreference,
) -> Result<Vec<RunningPlugin>> {
    let hook: Preference = {
        let preference = preference.clone();
        Arc::new(move |candidates: &[&str]| preference.preferred(candidates))
    };
    let mut running = Vec::new();
    for (kind, resource, socket) in [
        (DeviceKind::Gpu, meta::GPU_SHARE, "dilu-gpu-share.sock"),
        (DeviceKind::Cpu, meta::CPU_SHARE, "dilu-cpu-share.sock"),
    ] {
        let devices: Vec<PhysicalDevice> = agent
            .devices()
            .iter()
            .filter(|d| d.kind == kind)
            .map(|d| PhysicalDevice {
                uuid: d.uuid.clone(),
                healthy: agent.health().health(&d.uuid).is_healthy(),
            })
            .collect();
        if devices.is_empty() {
            continue;
        }
        let gpu = kind == DeviceKind::Gpu;
        let interposer = if gpu {
            let Some(path) = agent.config().interposer.clone() else {
                bail!(
                    "--interposer: the node has GPUs, and their pods preload the interposer (libdilu_cuda.so); \
                     give its path on the host"
                );
            };
            if !path.is_file() {
                bail!("--interposer {}: no such file", path.display());
            }
            Some(path)
        } else {
            None
        };
        let config = PluginConfig {
            resource_name: resource.to_string(),
            shares: kube.shares,
            gpu,
            interposer,
            channel_root: kube.channel_root.clone(),
        };
        let count = devices.len();
        let plugin = DevicePlugin::new(config, devices)
            .with_context(|| format!("the {resource} device plugin"))?;
        plugin.handle().set_preference(Some(hook.clone()));
        // The kubelet learns every health change through ListAndWatch (and leaves an unhealthy device's
        // shares out of the node's allocatable).
        let handle = plugin.handle();
        agent.health().subscribe(move |change| {
            handle.set_health(&change.uuid, change.health.is_healthy());
        });
        let serve = ServeConfig::new(&kube.device_plugin_dir, socket);
        let plugin = RunningPlugin::start(plugin, serve).await.with_context(|| {
            format!(
                "serving the {resource} device plugin in {}",
                kube.device_plugin_dir.display()
            )
        })?;
        eprintln!(
            "dilu agent: device plugin {resource}: {count} device(s) x {} shares on {}",
            kube.shares,
            plugin.socket().display()
        );
        running.push(plugin);
    }
    Ok(running)
}

/// Runs `dilu agent --kubernetes` until SIGTERM or SIGINT.
pub fn run(args: AgentArgs) -> Result<()> {
    let kube = &args.kube;
    let node_name = kube
        .node_name
        .clone()
        .filter(|n| !n.is_empty())
        .context("--node-name (or NODE_NAME): required with --kubernetes")?;
    if !kube.channel_root.is_absolute() {
        bail!(
            "--channel-root {}: must be an absolute host path (the device plugin mounts it into pods)",
            kube.channel_root.display()
        );
    }
    std::fs::create_dir_all(&kube.channel_root).with_context(|| {
        format!(
            "--channel-root {}: creating it",
            kube.channel_root.display()
        )
    })?;
    let data_dir = super::datadir::claim(&args.data_dir, "--data-dir")?;
    let token_path = data_dir.path.join("token");
    let token = dilu_http::token::load_or_create(&token_path)
        .context("the agent API token (every endpoint but /health needs it)")?;
    let config = args.node.agent_config(data_dir.path.clone())?;
    let agent = start_agent(config, "dilu agent")?;
    let listen = match args.unix_socket.clone() {
        Some(path) => Listen::Unix(path),
        None => Listen::Tcp(args.listen),
    };
    let token = dilu_http::guard::Token::new(token, token_path.display().to_string());
    let runtime = super::worker::runtime()?;
    let result = runtime.block_on(async {
        let (stop_tx, stop_rx) = watch::channel(false);
        let stop_tx = Arc::new(stop_tx);
        let stopped = move |mut rx: watch::Receiver<bool>| async move {
            let _ = rx.wait_for(|stop| *stop).await;
        };
        let on_signal = stop_tx.clone();
        let signalled = termination()?;
        tokio::spawn(async move {
            signalled.await;
            eprintln!("dilu agent: stopping (pod channels are left in place)");
            on_signal.send_replace(true);
        });
        let client = super::kube::client(kube.kubeconfig.as_deref()).await?;
        let mut node_config = NodeConfig::new(node_name, node_devices(&agent));
        node_config.lease_namespace = kube.lease_namespace.clone();
        node_config.lease_seconds = kube.lease_seconds;
        node_config.unhealthy = Some(unhealthy_devices(&agent));
        node_config.events = EventSink::start(
            client.clone(),
            Reporter {
                controller: "dilu.io/agent".into(),
                instance: node_config.node.clone(),
            },
        );
        report_health(&agent, &node_config.node, node_config.events.clone());
        if kube.pick_check_s > 0.0 {
            node_config.pick_check = Some(PickCheck {
                source: Arc::new(KubeletPodDevices {
                    socket: kube.pod_resources_socket.clone(),
                }),
                every: Duration::from_secs_f64(kube.pick_check_s),
            });
        }
        let plugins = start_plugins(&agent, kube, &node_config.preference).await?;
        let api_task = tokio::spawn(api::serve(
            agent.clone(),
            listen,
            token,
            |address| println!("dilu agent listening on {address}"),
            stopped(stop_rx.clone()),
        ));
        let channels = Arc::new(AgentChannels::new(agent.clone(), kube.channel_root.clone()));
        let ran = node::run(client, node_config, channels, stopped(stop_rx)).await;
        stop_tx.send_replace(true);
        for plugin in plugins {
            plugin.stop().await;
        }
        let served = api_task.await;
        ran.context("the node agent")?;
        match served {
            Ok(result) => result.context("serving the agent API"),
            Err(e) => Err(anyhow::anyhow!("the agent API task: {e}")),
        }
    });
    agent.shutdown();
    drop(data_dir);
    result
}
