//! Issue 16's acceptance on a three-node cluster: a real kube-apiserver 1.20, one `dilu agent --kubernetes` per
//! node (inventory, Lease, device plugins, quota channels), dilu-scheduler, the controller and the gateway, and
//! one node runner per node standing in for the kubelet (with its device manager: the agent's plugins register
//! on its `kubelet.sock`, pods get their shares through `Allocate`). Two nodes have a simulated GPU each (the
//! software CUDA driver, shared by the node's pods through a state file), the third only its CPU.
//!
//! - GPU split, quota changes with kubectl, agent SIGKILL and restart, kubelet restart (one API server):
//!   [`two_pods_split_a_gpu_30_70_and_keep_their_budgets_across_agent_and_kubelet_restarts`];
//! - functions through the device plugin's channels, and the loss of a node under load:
//!   [`functions_run_on_budgeted_shares_and_survive_the_loss_of_a_node`].
//!
//! Without the API server's binaries the tests print SKIPPED (and fail under `CI=true`).

mod common;
#[path = "common/kube.rs"]
mod harness;

use std::collections::BTreeMap;
use std::io::{Read, Seek, SeekFrom};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use dilu_core::ledger::DeviceInventory;
use dilu_cuda_testkit::{
    DriverCall, DriverLog, ENV_LOG, ENV_NS_PER_WAVE, ENV_STATE, ENV_UUID, artifacts,
    interposer_library,
};
use dilu_k8s::meta::{self, Assignment};
use dilu_k8s_testkit::{NodeRunner, fake_node};
use dilu_quota::{COST_UNITS_PER_WAVE, InstanceChannel, Snapshot, monotonic_ns};
use harness::{ControlPlane, Load, Proc, is_ready, repo, wait_until};
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{Binding, Node, ObjectReference, Pod};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::api::{Api, DeleteParams, PostParams};

const GPU_A: &str = "GPU-0000000a-0000-0000-0000-00000000000a";
const GPU_B: &str = "GPU-0000000b-0000-0000-0000-00000000000b";
const NODE_1: &str = "gpu-node-1";
const NODE_2: &str = "gpu-node-2";
const NODE_3: &str = "cpu-node-3";
/// 100 µs per wave on the simulated devices: 50 waves in the agent's 5 ms window.
const NS_PER_WAVE: u64 = 100_000;
/// The GPUs' capacity per window, as the agent is told (`--gpu UUID,capacity=…`).
const CAPACITY: u64 = 50 * COST_UNITS_PER_WAVE;
const SHARES: usize = 8;
/// Two waves per launch (528 blocks of 1024 threads on 132 SMs), a sync every 8 launches.
const BURN: &str = "burn,600,528,1024,8";

/// One node: its runner (the kubelet), its agent, where the agent keeps its channels.
struct NodeSetup {
    name: &'static str,
    gpu: Option<&'static str>,
    runner: Option<NodeRunner>,
    agent: Option<Proc>,
    agents_started: u32,
    channel_root: PathBuf,
    data_dir: PathBuf,
    /// The simulated GPU's driver log (GPU nodes).
    driver_log: Option<PathBuf>,
}

/// Fields drop in order: the runners and agents before the API server.
struct ThreeNodes {
    nodes: Vec<NodeSetup>,
    plane: ControlPlane,
    interposer: PathBuf,
    /// When the last of the first three agents was spawned.
    agents_spawned: Instant,
}

impl ThreeNodes {
    /// The three nodes; `with_gpus: false` declares no GPU on gpu-node-1 and gpu-node-2 (CPU devices only).
    async fn start(with_gpus: bool) -> Option<ThreeNodes> {
        let plane = ControlPlane::start().await?;
        plane.bind_agent();
        let interposer = interposer_library().unwrap_or_else(|m| panic!("{m}"));
        let app = artifacts();
        let admin = plane.api.client();
        let mut nodes = Vec::new();
        for (name, gpu) in [(NODE_1, Some(GPU_A)), (NODE_2, Some(GPU_B)), (NODE_3, None)] {
            let gpu = gpu.filter(|_| with_gpus);
            // The Node as a kubelet registers it, with an inventory the agent must replace.
            let stale = [DeviceInventory {
                uuid: format!("GPU-stale-{name}"),
                memory_mib: 1,
                gpu: true,
            }];
            fake_node(&admin, name, &stale, 0).await.unwrap();
            let dir = plane.dir.path().join(name);
            std::fs::create_dir_all(&dir).unwrap();
            let mut env = Vec::new();
            let mut driver_log = None;
            if let Some(uuid) = gpu {
                let log = dir.join("driver.log");
                env = vec![
                    (
                        "LD_LIBRARY_PATH".to_string(),
                        app.driver_dir.display().to_string(),
                    ),
                    (ENV_UUID.to_string(), uuid.to_string()),
                    (
                        ENV_STATE.to_string(),
                        dir.join("device.state").display().to_string(),
                    ),
                    (ENV_NS_PER_WAVE.to_string(), NS_PER_WAVE.to_string()),
                    (ENV_LOG.to_string(), log.display().to_string()),
                    (
                        "DILU_REAL_LIBCUDA".to_string(),
                        app.driver().display().to_string(),
                    ),
                ];
                driver_log = Some(log);
            }
            let runner = NodeRunner::builder(
                admin.clone(),
                "default",
                vec![name.to_string()],
                PathBuf::from(common::dilu_bin()),
            )
            .env(env)
            .device_plugins()
            .start()
            .await;
            nodes.push(NodeSetup {
                name,
                gpu,
                runner: Some(runner),
                agent: None,
                agents_started: 0,
                channel_root: dir.join("channels"),
                data_dir: dir.join("agent"),
                driver_log,
            });
        }
        let mut cluster = ThreeNodes {
            plane,
            nodes,
            interposer,
            agents_spawned: Instant::now(),
        };
        for i in 0..cluster.nodes.len() {
            cluster.agents_spawned = cluster.start_agent(i);
        }
        Some(cluster)
    }

    fn node(&self, name: &str) -> &NodeSetup {
        self.nodes.iter().find(|n| n.name == name).unwrap()
    }

    fn index(&self, name: &str) -> usize {
        self.nodes.iter().position(|n| n.name == name).unwrap()
    }

    fn runner(&self, name: &str) -> &NodeRunner {
        self.node(name).runner.as_ref().unwrap()
    }

    /// Starts (or restarts) node `i`'s agent as the `dilu-agent` user; returns when it was spawned.
    fn start_agent(&mut self, i: usize) -> Instant {
        let kubeconfig = self.plane.user("dilu-agent");
        let node = &mut self.nodes[i];
        node.agents_started += 1;
        let plugins = node
            .runner
            .as_ref()
            .unwrap()
            .device_plugin_dir(node.name)
            .unwrap()
            .to_path_buf();
        let gpu = node
            .gpu
            .map(|uuid| format!("{uuid},capacity={CAPACITY},memory=16GiB"));
        let mut args: Vec<String> = [
            "agent",
            "--kubernetes",
            "--node-name",
            node.name,
            "--no-nvml",
            "--listen",
            "127.0.0.1:0",
            "--shares",
            "8",
            "--cpu-cores",
            "1",
            // Lost 6 s after its last renewal (the default, 15 s, outlasts a DaemonSet's rolling update).
            "--lease-seconds",
            "6",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        for (flag, path) in [
            ("--data-dir", &node.data_dir),
            ("--channel-root", &node.channel_root),
            ("--device-plugin-dir", &plugins),
            ("--kubeconfig", &kubeconfig),
            ("--interposer", &self.interposer),
        ] {
            args.push(flag.to_string());
            args.push(path.display().to_string());
        }
        if let Some(gpu) = gpu {
            args.push("--gpu".into());
            args.push(gpu);
        }
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let spawned = Instant::now();
        node.agent = Some(Proc::spawn(
            &format!("agent-{}-{}", node.name, node.agents_started),
            self.plane.dir.path(),
            &kubeconfig,
            &args,
        ));
        spawned
    }

    fn agent_log(&self, name: &str) -> String {
        self.node(name)
            .agent
            .as_ref()
            .map(|a| a.log())
            .unwrap_or_default()
    }

    /// The agents' logs and the tail of every pod's log.
    fn logs(&self) -> String {
        let mut out: Vec<String> = self
            .nodes
            .iter()
            .filter_map(|n| n.agent.as_ref().map(|a| a.log()))
            .collect();
        for runner in self.nodes.iter().filter_map(|n| n.runner.as_ref()) {
            let Ok(files) = std::fs::read_dir(runner.dir().join("logs")) else {
                continue;
            };
            for file in files.flatten() {
                let text = std::fs::read_to_string(file.path()).unwrap_or_default();
                // Backtraces left out.
                let tail: Vec<&str> = text
                    .lines()
                    .filter(|l| {
                        let t = l.trim_start();
                        let frame = t
                            .split(':')
                            .next()
                            .is_some_and(|n| n.parse::<u32>().is_ok());
                        !(t.starts_with("at ") || frame)
                    })
                    .rev()
                    .take(15)
                    .collect();
                out.push(format!(
                    "--- pod log {} ---\n{}",
                    file.file_name().to_string_lossy(),
                    tail.into_iter().rev().collect::<Vec<_>>().join("\n")
                ));
            }
        }
        out.join("\n")
    }

    /// Waits for every node's inventory (as its agent declares it), Lease, and share capacity; returns the
    /// time from the last agent's spawn until all were seen there (polled every 200 ms).
    async fn wait_nodes_published(&self) -> Duration {
        let admin = self.plane.api.client();
        let nodes: Api<Node> = Api::all(admin.clone());
        let leases: Api<Lease> = Api::namespaced(admin, meta::NODE_LEASE_NAMESPACE);
        for n in &self.nodes {
            wait_until(
                &format!("{}: inventory, Lease and shares", n.name),
                Duration::from_secs(60),
                || self.logs(),
                || async {
                    let node = nodes.get(n.name).await.ok()?;
                    let text = node.metadata.annotations.as_ref()?.get(meta::INVENTORY)?;
                    let devices = meta::node_devices(n.name, text).ok()?;
                    let want_gpu = n
                        .gpu
                        .is_some_and(|g| devices.iter().any(|d| d.gpu && d.uuid == g));
                    let cpu = devices.iter().any(|d| !d.gpu && d.cores == Some(1.0));
                    let right = cpu
                        && devices.len() == 1 + usize::from(n.gpu.is_some())
                        && (n.gpu.is_none() || want_gpu);
                    let lease = leases
                        .get_opt(&meta::node_lease_name(n.name))
                        .await
                        .ok()??;
                    let held = lease.spec?.holder_identity.as_deref() == Some(n.name);
                    let capacity = node.status?.capacity?;
                    let shares = |r: &str| capacity.get(r).map(|q| q.0.clone());
                    let shares_ok = shares(meta::CPU_SHARE) == Some(SHARES.to_string())
                        && (n.gpu.is_none() || shares(meta::GPU_SHARE) == Some(SHARES.to_string()));
                    (right && held && shares_ok).then_some(())
                },
            )
            .await;
        }
        self.agents_spawned.elapsed()
    }
}

/// A burn pod on `node`'s GPU with quota `request`/`limit`, bound by the test as dilu-scheduler binds (a
/// Binding whose annotations carry the assignment); returns its UID.
async fn burn_pod(api: &Api<Pod>, name: &str, node: &str, device: &str, quota: f64) -> String {
    let app = artifacts();
    let pod: Pod = serde_json::from_value(serde_json::json!({
        "metadata": {"name": name, "annotations": {
            meta::QUOTA: format!(r#"{{"request":{quota},"limit":{quota}}}"#),
        }},
        "spec": {
            // Nobody's scheduler: the test binds it.
            "schedulerName": "the-test",
            "restartPolicy": "Never",
            "terminationGracePeriodSeconds": 1,
            "containers": [{
                "name": "burn",
                "image": "example.invalid/cuda-app",
                "command": [app.app_dyn.display().to_string(), "--resolve", "procaddr", BURN],
                "env": [{"name": "DILU_POD_UID", "valueFrom": {"fieldRef": {"fieldPath": "metadata.uid"}}}],
                "resources": {"limits": {meta::GPU_SHARE: "1"}},
            }],
        },
    }))
    .unwrap();
    let created = api.create(&PostParams::default(), &pod).await.unwrap();
    let uid = created.metadata.uid.clone().unwrap();
    let assignment = Assignment {
        node: node.to_string(),
        device: device.to_string(),
    };
    let binding = Binding {
        metadata: ObjectMeta {
            name: Some(name.to_string()),
            namespace: Some("default".into()),
            annotations: Some(BTreeMap::from([(
                meta::ASSIGNMENT.to_string(),
                assignment.annotation(),
            )])),
            ..ObjectMeta::default()
        },
        target: ObjectReference {
            api_version: Some("v1".into()),
            kind: Some("Node".into()),
            name: Some(node.to_string()),
            ..ObjectReference::default()
        },
    };
    api.create_subresource::<_, serde_json::Value>(
        "binding",
        name,
        &PostParams::default(),
        &binding,
    )
    .await
    .unwrap();
    uid
}

/// The driver log's lines written from byte `from` on (the first, possibly partial, line skipped).
fn driver_log_from(path: &Path, from: u64) -> DriverLog {
    let mut file = std::fs::File::open(path).unwrap();
    file.seek(SeekFrom::Start(from)).unwrap();
    let mut bytes = Vec::new();
    file.read_to_end(&mut bytes).unwrap();
    let text = String::from_utf8_lossy(&bytes);
    let text = if from == 0 {
        &text[..]
    } else {
        text.split_once('\n').map_or("", |(_, rest)| rest)
    };
    // The last line may still be being written.
    let text = text.rsplit_once('\n').map_or("", |(done, _)| done);
    DriverLog::parse(text).unwrap()
}

fn file_len(path: &Path) -> u64 {
    std::fs::metadata(path).map(|m| m.len()).unwrap_or(0)
}

/// The A:B split of launched threads between two pids in 50 ms buckets over `[from, to]` (monotonic ns), the
/// first 300 ms after `from` skipped: (buckets, median, first quartile, third quartile, whole-span ratio).
fn split(log: &DriverLog, a: u32, b: u32, from: u64, to: u64) -> (usize, f64, f64, f64, f64) {
    const BUCKET_NS: u64 = 50_000_000;
    let launches = |pid: u32| -> Vec<&DriverCall> {
        log.by_pid(pid)
            .filter(|c| c.function.starts_with("cuLaunch") && c.rc == 0)
            .collect()
    };
    let (la, lb) = (launches(a), launches(b));
    let first = from + 300_000_000;
    let buckets = (to.saturating_sub(first) / BUCKET_NS) as usize;
    let per_bucket = |calls: &[&DriverCall]| -> Vec<u64> {
        let mut threads = vec![0u64; buckets];
        for c in calls.iter().filter(|c| c.t_ns >= first) {
            if let Some(slot) = threads.get_mut(((c.t_ns - first) / BUCKET_NS) as usize) {
                *slot += c.field_u64("threads").unwrap_or(0);
            }
        }
        threads
    };
    let (ta, tb) = (per_bucket(&la), per_bucket(&lb));
    let mut ratios: Vec<f64> = ta
        .iter()
        .zip(&tb)
        .map(|(&x, &y)| x as f64 / y.max(1) as f64)
        .collect();
    ratios.sort_by(f64::total_cmp);
    if ratios.is_empty() {
        return (0, f64::NAN, f64::NAN, f64::NAN, f64::NAN);
    }
    let overall = ta.iter().sum::<u64>() as f64 / tb.iter().sum::<u64>().max(1) as f64;
    (
        buckets,
        ratios[ratios.len() / 2],
        ratios[ratios.len() / 4],
        ratios[ratios.len() * 3 / 4],
        overall,
    )
}

/// Measures the split between the burn pods for `span` from now (driver log read from its current end).
async fn measure_split(log: &Path, a: u32, b: u32, span: Duration) -> (usize, f64, f64, f64, f64) {
    let offset = file_len(log);
    let from = monotonic_ns();
    tokio::time::sleep(span).await;
    let to = monotonic_ns();
    let log = log.to_path_buf();
    tokio::task::spawn_blocking(move || split(&driver_log_from(&log, offset), a, b, from, to))
        .await
        .unwrap()
}

const TARGET: f64 = 3.0 / 7.0;

fn error_pct(r: f64) -> f64 {
    (r / TARGET - 1.0) * 100.0
}

fn report_split(what: &str, (buckets, median, q1, q3, overall): (usize, f64, f64, f64, f64)) {
    eprintln!(
        "{what}: 30/70 over {buckets} buckets of 50 ms: median A:B = {median:.4} (target {TARGET:.4}, error \
         {:+.2} %), quartiles {q1:.4}..{q3:.4}, whole span {overall:.4} ({:+.2} %)",
        error_pct(median),
        error_pct(overall)
    );
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i]
}

fn pid_of(runner: &NodeRunner, pod: &str) -> Option<u32> {
    runner
        .running()
        .into_iter()
        .find(|(name, _)| name == pod)
        .map(|(_, pid)| pid)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_pods_split_a_gpu_30_70_and_keep_their_budgets_across_agent_and_kubelet_restarts() {
    let Some(mut cluster) = ThreeNodes::start(true).await else {
        return;
    };
    let published = cluster.wait_nodes_published().await;
    let (_gateway, url) = cluster.plane.gateway();
    let _scheduler = cluster.plane.scheduler("s1");
    let _controller = cluster.plane.controller("c1", Some(&url));
    eprintln!(
        "three agents: every node's inventory, Lease and {SHARES} shares per device seen {:.2} s after the \
         last agent's spawn (polled every 200 ms)",
        published.as_secs_f64()
    );
    let logs = || cluster.logs();

    // (a) Two pods on GPU-A with 30 % and 70 %.
    let pods: Api<Pod> = Api::namespaced(cluster.plane.api.client(), "default");
    let uid_a = burn_pod(&pods, "burn-a", NODE_1, GPU_A, 0.3).await;
    let uid_b = burn_pod(&pods, "burn-b", NODE_1, GPU_A, 0.7).await;
    let root = cluster.node(NODE_1).channel_root.join(GPU_A);
    let (path_a, path_b) = (root.join(&uid_a), root.join(&uid_b));
    let (pid_a, pid_b) = wait_until(
        "both burn pods running with their channels",
        Duration::from_secs(60),
        || {
            format!(
                "{}\n{}\n{}",
                logs(),
                cluster.runner(NODE_1).log("burn-a"),
                cluster.runner(NODE_1).log("burn-b")
            )
        },
        || async {
            let r = cluster.runner(NODE_1);
            let ok = path_a.is_file() && path_b.is_file();
            Some((pid_of(r, "burn-a")?, pid_of(r, "burn-b")?)).filter(|_| ok)
        },
    )
    .await;
    for pod in ["burn-a", "burn-b"] {
        let held = cluster.runner(NODE_1).devices(pod);
        let ids = held.get(meta::GPU_SHARE).cloned().unwrap_or_default();
        assert!(
            ids.len() == 1 && ids[0].starts_with(&format!("{GPU_A}::")),
            "{pod} holds {held:?}"
        );
    }
    let channel_a = InstanceChannel::open(&path_a).unwrap();
    let channel_b = InstanceChannel::open(&path_b).unwrap();
    wait_until(
        "launches counted on both channels",
        Duration::from_secs(20),
        || {
            format!(
                "{}\n{}\n{}",
                logs(),
                cluster.runner(NODE_1).log("burn-a"),
                cluster.runner(NODE_1).log("burn-b")
            )
        },
        || async {
            let (a, b) = (channel_a.snapshot(), channel_b.snapshot());
            (a.launches > 0 && b.launches > 0).then_some(())
        },
    )
    .await;
    let (sa, sb) = (channel_a.snapshot(), channel_b.snapshot());
    eprintln!(
        "(a) budgets per 5 ms window: A {} B {} (capacity {CAPACITY}); launches A {} B {}",
        sa.budget_per_window, sb.budget_per_window, sa.launches, sb.launches
    );
    let driver_log = cluster.node(NODE_1).driver_log.clone().unwrap();
    let measured = measure_split(&driver_log, pid_a, pid_b, Duration::from_secs(4)).await;
    report_split("(a) GPU-A, agent running", measured);
    assert!(measured.0 >= 40, "only {} buckets", measured.0);
    assert!(
        error_pct(measured.1).abs() <= 5.0,
        "median A:B = {}, want 3:7 ± 5 %",
        measured.1
    );

    // (b) Quota changes with kubectl: A alternates 0.2 and 0.3. A's channel is polled every 1 ms while kubectl
    // runs and after: when its budget changed, from kubectl's start and from its exit (negative: the agent had
    // applied it before the kubectl process was done).
    let changes: Vec<(f64, f64)> = tokio::task::block_in_place(|| {
        let mut changes = Vec::new();
        for i in 0..20 {
            let quota = if i % 2 == 0 { 0.2 } else { 0.3 };
            let want = (quota * CAPACITY as f64).round() as u64;
            let before = channel_a.snapshot().budget_per_window;
            let annotation = format!(r#"{}={{"request":{quota},"limit":{quota}}}"#, meta::QUOTA);
            let mut kubectl = cluster
                .plane
                .api
                .kubectl_command(
                    dilu_k8s_testkit::ADMIN,
                    &["annotate", "pod", "burn-a", &annotation, "--overwrite"],
                )
                .stdout(std::process::Stdio::null())
                .spawn()
                .unwrap();
            let invoked = Instant::now();
            let (mut changed, mut exited) = (None, None);
            let deadline = invoked + Duration::from_secs(10);
            while changed.is_none() || exited.is_none() {
                if exited.is_none()
                    && let Some(status) = kubectl.try_wait().unwrap()
                {
                    assert!(status.success(), "kubectl annotate: {status:?}");
                    exited = Some(Instant::now());
                }
                let now = channel_a.snapshot().budget_per_window;
                if changed.is_none() && now != before {
                    changed = Some(Instant::now());
                    if now != want {
                        eprintln!("(b) change {i}: budget {before} -> {now}, {want} expected");
                    }
                }
                if Instant::now() >= deadline {
                    let _ = kubectl.kill();
                    let _ = kubectl.wait();
                    panic!(
                        "quota change {i} to {quota} not applied within 10 s\n{}",
                        cluster.agent_log(NODE_1)
                    );
                }
                std::thread::sleep(Duration::from_millis(1));
            }
            // Reaped already (try_wait); this returns its status.
            let _ = kubectl.wait();
            let (changed, exited) = (changed.unwrap(), exited.unwrap());
            let signed_ms = |from: Instant, to: Instant| {
                if to >= from {
                    (to - from).as_secs_f64() * 1e3
                } else {
                    -(from - to).as_secs_f64() * 1e3
                }
            };
            changes.push((signed_ms(exited, changed), signed_ms(invoked, changed)));
            std::thread::sleep(Duration::from_millis(50));
        }
        changes
    });
    let sorted_of = |f: fn(&(f64, f64)) -> f64| {
        let mut v: Vec<f64> = changes.iter().map(f).collect();
        v.sort_by(f64::total_cmp);
        v
    };
    let (from_exit, from_start) = (sorted_of(|c| c.0), sorted_of(|c| c.1));
    let agent_us: Vec<f64> = cluster
        .node(NODE_1)
        .agent
        .as_ref()
        .unwrap()
        .text()
        .lines()
        .filter(|l| l.contains("quota applied pod=default/burn-a"))
        .filter_map(|l| l.split("latency_us=").nth(1)?.trim().parse::<f64>().ok())
        .collect();
    let mut agent_sorted = agent_us.clone();
    agent_sorted.sort_by(f64::total_cmp);
    eprintln!(
        "(b) {} quota changes with kubectl annotate: channel budget changed, from kubectl's exit: p50 {:+.1} ms, \
         p99 {:+.1} ms (min {:+.1}, max {:+.1}); from kubectl's start: p50 {:.1} ms, p99 {:.1} ms; the agent's own \
         (watch event -> channel written) over {} changes: p50 {:.2} ms, p99 {:.2} ms",
        changes.len(),
        percentile(&from_exit, 0.5),
        percentile(&from_exit, 0.99),
        from_exit[0],
        from_exit[from_exit.len() - 1],
        percentile(&from_start, 0.5),
        percentile(&from_start, 0.99),
        agent_sorted.len(),
        percentile(&agent_sorted, 0.5) / 1e3,
        percentile(&agent_sorted, 0.99) / 1e3,
    );
    assert_eq!(agent_sorted.len(), 20, "the agent logged every change");
    assert_eq!(
        channel_a.snapshot().budget_per_window,
        (0.3 * CAPACITY as f64).round() as u64,
        "A is back at 30 %"
    );

    // (d) SIGKILL of gpu-node-1's agent: the pods keep running and keep their last budgets.
    let registered = cluster.runner(NODE_1).plugin_registrations(NODE_1).len();
    let inode = |p: &Path| std::fs::metadata(p).unwrap().ino();
    let (ino_a, ino_b) = (inode(&path_a), inode(&path_b));
    let i1 = cluster.index(NODE_1);
    cluster.nodes[i1].agent.as_mut().unwrap().kill9();
    let killed_at = Instant::now();
    let (budget_a, budget_b) = (
        channel_a.snapshot().budget_per_window,
        channel_b.snapshot().budget_per_window,
    );
    let launches_at_kill = channel_a.snapshot().launches;
    let orphaned = measure_split(&driver_log, pid_a, pid_b, Duration::from_secs(3)).await;
    report_split("(d) GPU-A, no agent running", orphaned);
    let (sa, sb) = (channel_a.snapshot(), channel_b.snapshot());
    assert_eq!(
        (sa.budget_per_window, sb.budget_per_window),
        (budget_a, budget_b),
        "the last budgets stay"
    );
    assert!(sa.launches > launches_at_kill, "A keeps launching");
    assert_eq!(pid_of(cluster.runner(NODE_1), "burn-a"), Some(pid_a));
    assert_eq!(pid_of(cluster.runner(NODE_1), "burn-b"), Some(pid_b));
    assert!(
        error_pct(orphaned.1).abs() <= 5.0,
        "median A:B = {} without an agent, want 3:7 ± 5 %",
        orphaned.1
    );

    // The agent restarted: its plugins register again and it re-opens the same channel files.
    let launches_before_restart = channel_a.snapshot().launches;
    let spawned = cluster.start_agent(i1);
    let regs = cluster
        .runner(NODE_1)
        .wait_plugin_registrations(NODE_1, registered + 2, Duration::from_secs(30))
        .await
        .unwrap_or_else(|e| panic!("{e}\n{}", cluster.agent_log(NODE_1)));
    let new: Vec<_> = regs[registered..].to_vec();
    let last = new.iter().map(|r| r.at).max().unwrap();
    let mut resources: Vec<&str> = new.iter().map(|r| r.resource.as_str()).collect();
    resources.sort();
    assert_eq!(resources, [meta::CPU_SHARE, meta::GPU_SHARE]);
    let agent_log = || cluster.agent_log(NODE_1);
    wait_until(
        "the restarted agent re-attaches both pods",
        Duration::from_secs(30),
        agent_log,
        || async {
            let text = cluster.node(NODE_1).agent.as_ref().unwrap().text();
            (text.contains(&format!("attached pod=default/burn-a uid={uid_a}"))
                && text.contains(&format!("attached pod=default/burn-b uid={uid_b}")))
            .then_some(())
        },
    )
    .await;
    let reattached = spawned.elapsed();
    let tick = channel_a.snapshot().agent_tick_ns;
    wait_until(
        "the new agent ticks the channels",
        Duration::from_secs(10),
        agent_log,
        || async { (channel_a.snapshot().agent_tick_ns > tick).then_some(()) },
    )
    .await;
    assert_eq!(
        (inode(&path_a), inode(&path_b)),
        (ino_a, ino_b),
        "same files"
    );
    let (sa, sb) = (channel_a.snapshot(), channel_b.snapshot());
    assert!(sa.launches > launches_before_restart, "counters continue");
    assert_eq!(
        (sa.budget_per_window, sb.budget_per_window),
        (budget_a, budget_b)
    );
    eprintln!(
        "(d) agent SIGKILLed, {:.1} s without it; restarted: {} registrations (total {}), both plugins registered \
         {:.0} ms after the spawn, both pods re-attached (same files, counters continuing: A {} launches) within \
         {:.2} s",
        (spawned - killed_at).as_secs_f64(),
        new.len(),
        regs.len(),
        (last - spawned).as_secs_f64() * 1e3,
        sa.launches,
        reattached.as_secs_f64()
    );

    // (e) A kubelet restart: the plugins register again.
    let before = cluster.runner(NODE_1).plugin_registrations(NODE_1).len();
    let restarted = cluster
        .runner(NODE_1)
        .restart_kubelet(NODE_1)
        .await
        .unwrap();
    let regs = cluster
        .runner(NODE_1)
        .wait_plugin_registrations(NODE_1, before + 2, Duration::from_secs(10))
        .await
        .unwrap_or_else(|e| panic!("{e}\n{}", cluster.agent_log(NODE_1)));
    let times: Vec<f64> = regs[before..]
        .iter()
        .map(|r| (r.at - restarted).as_secs_f64() * 1e3)
        .collect();
    eprintln!(
        "(e) kubelet restart: {} registrations after it, {times:.0?} ms after the new kubelet.sock",
        regs.len() - before
    );
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(
        cluster.runner(NODE_1).plugin_registrations(NODE_1).len(),
        before + 2,
        "exactly one registration per plugin"
    );
    let after = measure_split(&driver_log, pid_a, pid_b, Duration::from_secs(3)).await;
    report_split("(e) GPU-A after the agent and kubelet restarts", after);
    assert!(
        error_pct(after.1).abs() <= 5.0,
        "median A:B = {} after the restarts",
        after.1
    );
    for pod in ["burn-a", "burn-b"] {
        pods.delete(pod, &DeleteParams::default().grace_period(0))
            .await
            .unwrap();
    }
}

/// The channel of a function's pod (on the node and device of its assignment), and the runner that runs it.
fn channel_of<'a>(cluster: &'a ThreeNodes, pod: &Pod) -> (PathBuf, &'a NodeRunner, Assignment) {
    let a = Assignment::parse(
        "pod",
        &pod.metadata.annotations.as_ref().unwrap()[meta::ASSIGNMENT],
    )
    .unwrap();
    let node = cluster.node(&a.node);
    let path = node
        .channel_root
        .join(&a.device)
        .join(pod.metadata.uid.as_deref().unwrap());
    (path, node.runner.as_ref().unwrap(), a)
}

fn moved(before: &Snapshot, after: &Snapshot) -> bool {
    after.launches > before.launches || after.cost_launched > before.cost_launched
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn functions_run_on_budgeted_shares_and_survive_the_loss_of_a_node() {
    let Some(cache) = common::platform::ensure_models() else {
        return;
    };
    // With the GPUs: the built-in workers compute on the CPU, so they must land on CPU devices (a GPU's channel
    // would be refused: "a CPU quota needs a channel of the CPU device") even on the GPU nodes.
    let Some(mut cluster) = ThreeNodes::start(true).await else {
        return;
    };
    cluster.wait_nodes_published().await;
    let (gateway, url) = cluster.plane.gateway();
    let scheduler = cluster.plane.scheduler("s1");
    let controller = cluster.plane.controller("c1", Some(&url));
    let logs = || {
        format!(
            "{}\n{}\n{}\n{}",
            cluster.logs(),
            controller.log(),
            scheduler.log(),
            gateway.log()
        )
    };

    // (c) SqueezeNet (quota given: no profiling) with two instances, and the MLP trainer, applied with kubectl.
    let squeezenet = std::fs::read_to_string(repo("examples/squeezenet.yaml"))
        .unwrap()
        .replace("${DILU_MODEL_CACHE}", &cache.display().to_string())
        .replace("min_instances: 1", "min_instances: 2");
    let dir = cluster.plane.dir.path().to_path_buf();
    std::fs::write(dir.join("squeezenet.yaml"), squeezenet).unwrap();
    let applied = Instant::now();
    for file in [
        dir.join("squeezenet.yaml").display().to_string(),
        repo("examples/mlp-train.yaml"),
    ] {
        cluster.plane.kubectl(&["apply", "-f", &file]);
    }
    let ready = |pods: &[Pod]| pods.iter().filter(|p| is_ready(p)).count();
    wait_until(
        "squeezenet with two ready pods and mlp-train running",
        Duration::from_secs(120),
        logs,
        || async {
            let s = cluster.plane.pods("squeezenet").await;
            let m = cluster.plane.pods("mlp-train").await;
            (ready(&s) >= 2 && ready(&m) >= 1).then_some(())
        },
    )
    .await;
    eprintln!(
        "(c) squeezenet (2 pods) and mlp-train ready {:.1} s after kubectl apply",
        applied.elapsed().as_secs_f64()
    );
    let mut channels = Vec::new();
    for function in ["squeezenet", "mlp-train"] {
        for pod in cluster.plane.pods(function).await {
            let name = pod.metadata.name.clone().unwrap();
            let (path, runner, at) = channel_of(&cluster, &pod);
            let held = runner.devices(&name);
            let ids: Vec<&String> = held
                .iter()
                .filter(|(r, _)| *r == meta::GPU_SHARE || *r == meta::CPU_SHARE)
                .flat_map(|(_, ids)| ids)
                .collect();
            assert!(
                ids.len() == 1 && ids[0].starts_with(&format!("{}::", at.device)),
                "{name} on {at:?} holds {held:?}"
            );
            assert!(path.is_file(), "{name}: no channel at {}", path.display());
            let channel = InstanceChannel::open(&path).unwrap();
            let snapshot = channel.snapshot();
            eprintln!(
                "(c) {name}: on {}/{} holding {held:?}; channel budget {} per window, launches {}",
                at.node, at.device, snapshot.budget_per_window, snapshot.launches
            );
            channels.push((name, function, channel, snapshot));
        }
    }
    let client = reqwest::Client::builder().no_proxy().build().unwrap();
    let infer = format!("{url}/v2/models/squeezenet/infer");
    let body = std::fs::read(cache.join("inputs/squeezenet.json")).unwrap();
    for _ in 0..10 {
        let r = client
            .post(&infer)
            .header("content-type", "application/json")
            .body(body.clone())
            .send()
            .await
            .unwrap();
        assert_eq!(r.status().as_u16(), 200);
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let mut squeezenet_moved = 0;
    for (name, function, channel, before) in &channels {
        let after = channel.snapshot();
        eprintln!(
            "(c) {name}: launches {} -> {}, cost {} -> {}",
            before.launches, after.launches, before.cost_launched, after.cost_launched
        );
        if *function == "mlp-train" {
            assert!(
                moved(before, &after),
                "{name}: the trainer's counters stand still"
            );
        } else if moved(before, &after) {
            squeezenet_moved += 1;
        }
    }
    assert!(
        squeezenet_moved >= 1,
        "no squeezenet channel counted the 10 requests"
    );

    // (f) Node loss under an open-loop load: the node of a squeezenet pod (gpu-node-2 when one is there) loses
    // its agent and its pods' processes.
    let pods = cluster.plane.pods("squeezenet").await;
    let on = |p: &Pod| {
        p.spec
            .as_ref()
            .and_then(|s| s.node_name.clone())
            .unwrap_or_default()
    };
    let victim = pods
        .iter()
        .map(on)
        .find(|n| n == NODE_2)
        .or_else(|| pods.first().map(on))
        .unwrap();
    let victim_pods: Vec<String> = pods
        .iter()
        .filter(|p| on(p) == victim)
        .filter_map(|p| p.metadata.name.clone())
        .collect();
    let load = Load::start(infer.clone(), body.clone(), 4.0);
    tokio::time::sleep(Duration::from_secs(2)).await;
    let answered_before = load.so_far();
    let vi = cluster.index(&victim);
    let lost_at = Instant::now();
    let lost_wall = k8s_openapi::jiff::Timestamp::now();
    cluster.nodes[vi].agent.as_mut().unwrap().kill9();
    drop(cluster.nodes[vi].runner.take());
    let logs = || {
        format!(
            "{}\n{}\n{}\n{}",
            cluster.logs(),
            controller.log(),
            scheduler.log(),
            gateway.log()
        )
    };
    let leases: Api<Lease> =
        Api::namespaced(cluster.plane.api.client(), meta::NODE_LEASE_NAMESPACE);
    let lease = leases.get(&meta::node_lease_name(&victim)).await.unwrap();
    let expiry = dilu_k8s::nodes::expiry(&lease).unwrap();
    let since_loss = |t: k8s_openapi::jiff::Timestamp| {
        (t.as_millisecond() - lost_wall.as_millisecond()) as f64 / 1e3
    };
    let expires_in = since_loss(expiry);
    let deleted = wait_until(
        "the lost node's pods deleted or gone",
        Duration::from_secs(60),
        logs,
        || async {
            let pods = cluster.plane.pods("squeezenet").await;
            let left = pods.iter().any(|p| {
                victim_pods.contains(p.metadata.name.as_ref().unwrap())
                    && p.metadata.deletion_timestamp.is_none()
            });
            (!left).then_some(lost_at.elapsed())
        },
    )
    .await;
    let replaced = wait_until(
        "two ready squeezenet pods off the lost node",
        Duration::from_secs(90),
        logs,
        || async {
            let pods = cluster.plane.pods("squeezenet").await;
            let n = pods
                .iter()
                .filter(|p| is_ready(p) && on(p) != victim)
                .count();
            (n >= 2).then_some(lost_at.elapsed())
        },
    )
    .await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let (statuses, answers) = load.finish_answers().await;
    // When each process noticed the loss, from its log line "... lost: ... (noticed at <time>)".
    let mut noticed = BTreeMap::new();
    for (who, text) in [
        ("controller", controller.text()),
        ("scheduler", scheduler.text()),
        ("gateway", gateway.text()),
    ] {
        if let Some(t) = text
            .lines()
            .filter(|l| l.contains(&format!("node {victim} lost")))
            .find_map(|l| {
                l.split("noticed at ")
                    .nth(1)?
                    .trim_end_matches(')')
                    .split(')')
                    .next()?
                    .parse::<k8s_openapi::jiff::Timestamp>()
                    .ok()
            })
        {
            noticed.insert(who, format!("{:.2} s", since_loss(t)));
        }
    }
    let lost_lines: Vec<String> = controller
        .text()
        .lines()
        .chain(gateway.text().lines())
        .chain(scheduler.text().lines())
        .filter(|l| l.contains("lost"))
        .map(str::to_string)
        .collect();
    // Failures by when their request was sent: before the loss (more than a second before: a request still
    // being answered when the pods died fails with them), between that and the Lease's expiry (plus a second
    // for the watches), after.
    let cutoff = lost_at + Duration::from_secs_f64(expires_in.max(0.0) + 1.0);
    let in_flight = lost_at - Duration::from_secs(1);
    let failed = |from: Instant, to: Instant| {
        answers
            .iter()
            .filter(|(t, s)| *t >= from && *t < to && *s != 200)
            .count()
    };
    let far = Instant::now() + Duration::from_secs(3600);
    let early = in_flight - Duration::from_secs(3600);
    let (before, during, after) = (
        failed(early, in_flight),
        failed(in_flight, cutoff),
        failed(cutoff, far),
    );
    let failed_at: Vec<String> = answers
        .iter()
        .filter(|(_, s)| *s != 200)
        .map(|(t, s)| {
            let at = if *t >= lost_at {
                (*t - lost_at).as_secs_f64()
            } else {
                -(lost_at - *t).as_secs_f64()
            };
            format!("{s}@{at:+.2}s")
        })
        .collect();
    eprintln!(
        "(f) node {victim} lost (agent SIGKILLed, runner dropped: its pods {victim_pods:?} stopped) under 4 req/s: \
         its Lease ran out {expires_in:.2} s after the loss; noticed (from the logs) {noticed:?}; its pods deleted \
         {:.2} s after; two ready replacements off it {:.2} s after; answers by status over the run {statuses:?} \
         ({answered_before:?} before the loss); failed requests sent over 1 s before the loss {before}, from then \
         to the Lease's expiry + 1 s {during}, after {after}; failures (status@sent since the loss) \
         {failed_at:?}\n{lost_lines:#?}",
        deleted.as_secs_f64(),
        replaced.as_secs_f64()
    );
    assert_eq!(before, 0, "failures before the loss: {failed_at:?}");
    assert_eq!(after, 0, "failures once the loss was known: {failed_at:?}");
    // Every instance was on the lost node: the gateway holds the requests that found them dead until a
    // replacement is ready (within the cold-start timeout), so none is lost even then.
    assert_eq!(during, 0, "failures during the loss: {failed_at:?}");
}
