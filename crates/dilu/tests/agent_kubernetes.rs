//! `dilu agent --kubernetes` as a process against a real kube-apiserver 1.20 and a kubelet-side peer of the
//! device plugin API (no kubelet here): it publishes its devices, registers one plugin per device kind, creates
//! the channel file of a pod bound to its node at `<channel root>/<device>/<pod UID>`, steers the kubelet's pick
//! to the pod's assigned device, leaves the channel on SIGTERM, re-opens it after a restart, and removes it when
//! the pod is gone; tells the kubelet (and the inventory) when an NVML GPU turns unhealthy; and deletes a pod
//! the kubelet gave another device than its assignment (read from a stand-in PodResources API). Skipped (with
//! `SKIPPED: …`) where the API server binaries are missing.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use dilu_core::ledger::DeviceInventory;
use dilu_deviceplugin::testkit::{FakeKubelet, FakePodResources};
use dilu_k8s::meta;
use dilu_k8s_testkit::{ADMIN, ApiServer, event_for, fake_node};
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{Node, Pod};
use kube::ResourceExt;
use kube::api::{Api, DeleteParams, PostParams};

const NODE: &str = "n1";

fn repo(path: &str) -> String {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .join(path)
        .display()
        .to_string()
}

struct Agent {
    child: Child,
    log: PathBuf,
}

impl Agent {
    /// The agent with two declared GPUs (no NVML).
    fn start(dir: &Path, kubeconfig: &Path, run: u32) -> Agent {
        let gpus = [
            "--no-nvml",
            "--gpu",
            "GPU-agent-0,memory=1GiB",
            "--gpu",
            "GPU-agent-1,memory=1GiB",
        ];
        Agent::start_with(dir, kubeconfig, run, &gpus, &[])
    }

    /// The agent with these device flags and environment.
    fn start_with(
        dir: &Path,
        kubeconfig: &Path,
        run: u32,
        devices: &[&str],
        env: &[(&str, &std::ffi::OsStr)],
    ) -> Agent {
        let log = dir.join(format!("agent-{run}.log"));
        let file = std::fs::File::create(&log).unwrap();
        let interposer = dir.join("libdilu_cuda.so");
        std::fs::write(&interposer, b"not really").unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_dilu"))
            .args(["agent", "--kubernetes", "--node-name", NODE])
            .args(devices)
            .envs(env.iter().copied())
            .args([
                "--cpu-cores",
                "1",
                "--shares",
                "4",
                "--listen",
                "127.0.0.1:0",
            ])
            .arg("--interposer")
            .arg(&interposer)
            .arg("--device-plugin-dir")
            .arg(dir.join("plugins"))
            .arg("--channel-root")
            .arg(dir.join("channels"))
            .arg("--data-dir")
            .arg(dir.join("data"))
            .arg("--kubeconfig")
            .arg(kubeconfig)
            .stdout(Stdio::null())
            .stderr(file)
            .spawn()
            .unwrap();
        Agent { child, log }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// SIGTERM, then the exit status within 10 s.
    fn terminate(mut self) -> std::process::ExitStatus {
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "no exit 10 s after SIGTERM:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

async fn until(what: &str, agent: &Agent, mut done: impl AsyncFnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while !done().await {
        assert!(
            Instant::now() < deadline,
            "timed out: {what}\n{}",
            agent.log()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_node_agent_publishes_its_devices_and_budgets_the_pods_bound_to_its_node() {
    let Some(api) = ApiServer::start().await else {
        return;
    };
    let out = api.kubectl(&["apply", "-f", &repo("deploy/namespace.yaml")]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let admin = api.client();
    let stale = [DeviceInventory {
        uuid: "GPU-stale".into(),
        memory_mib: 1,
        gpu: true,
    }];
    fake_node(&admin, NODE, &stale, 2).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("plugins")).unwrap();
    let mut kubelet = FakeKubelet::start(&dir.path().join("plugins")).unwrap();
    let kubeconfig = api.kubeconfig(ADMIN);

    let agent = Agent::start(dir.path(), &kubeconfig, 1);
    // Two plugins register: GPU shares (2 devices x 4) and CPU shares (1 x 4).
    let mut conns = Vec::new();
    for _ in 0..2 {
        conns.push(
            kubelet
                .next_plugin(Duration::from_secs(30))
                .await
                .unwrap_or_else(|e| panic!("{e}\n{}", agent.log())),
        );
    }
    conns.sort_by_key(|c| c.registered.request.resource_name.clone());
    assert_eq!(conns[0].registered.request.resource_name, meta::CPU_SHARE);
    assert_eq!(conns[1].registered.request.resource_name, meta::GPU_SHARE);
    assert_eq!(conns[0].available().len(), 4);
    assert_eq!(conns[1].available().len(), 8);

    // The inventory lists the agent's devices; the Lease is there.
    let nodes: Api<Node> = Api::all(admin.clone());
    until("inventory written", &agent, async || {
        let node = nodes.get(NODE).await.unwrap();
        node.annotations()
            .get(meta::INVENTORY)
            .and_then(|t| meta::node_devices(NODE, t).ok())
            .is_some_and(|d| {
                d.len() == 3
                    && d.iter().filter(|d| d.gpu && d.memory_mib == 1024).count() == 2
                    && d.iter().any(|d| !d.gpu && d.cores == Some(1.0))
            })
    })
    .await;
    // The Lease comes from the heartbeat task, which runs beside the inventory's: not necessarily first.
    let leases: Api<Lease> = Api::namespaced(admin.clone(), meta::NODE_LEASE_NAMESPACE);
    until("Lease created", &agent, async || {
        leases
            .get_opt(&meta::node_lease_name(NODE))
            .await
            .unwrap()
            .is_some()
    })
    .await;
    let lease = leases.get(&meta::node_lease_name(NODE)).await.unwrap();
    assert_eq!(lease.spec.unwrap().holder_identity.as_deref(), Some(NODE));

    // A pod bound to the node on GPU-agent-1: its channel file appears; the kubelet's pick follows it (left
    // alone, the plugin would pick GPU-agent-0, the first of two equally free devices).
    let pods: Api<Pod> = Api::namespaced(admin.clone(), "default");
    let pod: Pod = serde_json::from_value(serde_json::json!({
        "metadata": {"name": "p1", "annotations": {
            meta::ASSIGNMENT: format!(r#"{{"node":"{NODE}","device":"GPU-agent-1"}}"#),
            meta::QUOTA: r#"{"request":0.25,"limit":0.5}"#,
        }},
        "spec": {"nodeName": NODE, "containers": [{"name": "c", "image": "example.invalid/none"}]},
    }))
    .unwrap();
    let uid = pods
        .create(&PostParams::default(), &pod)
        .await
        .unwrap()
        .uid()
        .unwrap();
    let channel = dir.path().join("channels").join("GPU-agent-1").join(&uid);
    until("channel file created", &agent, async || channel.is_file()).await;
    let admitted = conns[1].admit(1).await.unwrap();
    assert!(admitted.preferred, "{admitted:?}");
    assert!(admitted.ids[0].starts_with("GPU-agent-1::"), "{admitted:?}");
    assert_eq!(
        admitted
            .response
            .envs
            .get("DILU_QUOTA_DIR")
            .map(String::as_str),
        Some("/run/dilu/quota")
    );

    // SIGTERM: a clean exit, the channel stays.
    let status = agent.terminate();
    assert!(status.success(), "{status:?}");
    assert!(channel.is_file(), "the channel must outlive the agent");

    // Restarted: the channel is re-opened (not recreated), and removed when the pod is gone.
    let agent = Agent::start(dir.path(), &kubeconfig, 2);
    until("re-attached", &agent, async || {
        agent
            .log()
            .contains(&format!("attached pod=default/p1 uid={uid}"))
    })
    .await;
    assert!(channel.is_file());
    pods.delete("p1", &DeleteParams::default().grace_period(0))
        .await
        .unwrap();
    until("channel removed", &agent, async || !channel.exists()).await;
    assert!(agent.terminate().success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gpu_that_reports_a_critical_xid_is_offered_to_the_kubelet_as_unhealthy() {
    const A: &str = "GPU-0000aaaa-0000-0000-0000-000000000001";
    const B: &str = "GPU-0000bbbb-0000-0000-0000-000000000002";
    let Some(api) = ApiServer::start().await else {
        return;
    };
    let out = api.kubectl(&["apply", "-f", &repo("deploy/namespace.yaml")]);
    assert!(out.status.success());
    fake_node(&api.client(), NODE, &[], 2).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("plugins")).unwrap();
    let mut kubelet = FakeKubelet::start(&dir.path().join("plugins")).unwrap();
    let control = dir.path().join("nvml-control");
    std::fs::write(&control, "").unwrap();
    let nvml = dilu_cuda_testkit::artifacts().nvml();
    let devices =
        format!("{A},NVIDIA H100 80GB HBM3,81559,132;{B},NVIDIA H100 80GB HBM3,81559,132");
    let agent = Agent::start_with(
        dir.path(),
        &api.kubeconfig(ADMIN),
        1,
        &["--gpu-health-check-s", "0.2"],
        &[
            ("DILU_NVML_LIBRARY", nvml.as_os_str()),
            (
                dilu_cuda_testkit::NVML_ENV_DEVICES,
                std::ffi::OsStr::new(&devices),
            ),
            (dilu_cuda_testkit::NVML_ENV_CONTROL, control.as_os_str()),
        ],
    );
    let mut gpu = None;
    for _ in 0..2 {
        let conn = kubelet
            .next_plugin(Duration::from_secs(30))
            .await
            .unwrap_or_else(|e| panic!("{e}\n{}", agent.log()));
        if conn.registered.request.resource_name == meta::GPU_SHARE {
            gpu = Some(conn);
        }
    }
    let gpu = gpu.expect("a GPU-share plugin");
    assert_eq!(gpu.available().len(), 8, "2 NVML GPUs x 4 shares");
    let nodes: Api<Node> = Api::all(api.client());
    let inventory = async || -> Vec<String> {
        let node = nodes.get(NODE).await.unwrap();
        node.annotations()
            .get(meta::INVENTORY)
            .and_then(|t| meta::node_devices(NODE, t).ok())
            .map(|d| d.into_iter().map(|d| d.uuid).collect())
            .unwrap_or_default()
    };
    until("both GPUs in the inventory", &agent, async || {
        let listed = inventory().await;
        listed.iter().any(|u| u == A) && listed.iter().any(|u| u == B)
    })
    .await;

    let mut line = std::fs::OpenOptions::new()
        .append(true)
        .open(&control)
        .unwrap();
    std::io::Write::write_all(&mut line, format!("xid {A} 79\n").as_bytes()).unwrap();
    let listed = gpu
        .wait_lists(2, Duration::from_secs(20))
        .await
        .unwrap_or_else(|e| panic!("{e}\n{}", agent.log()));
    for share in &listed {
        let expected = if share.id.starts_with(A) {
            dilu_deviceplugin::UNHEALTHY
        } else {
            dilu_deviceplugin::HEALTHY
        };
        assert_eq!(share.health, expected, "{}", share.id);
    }
    let available = gpu.available();
    assert_eq!(available.len(), 4, "{available:?}");
    assert!(
        available.iter().all(|id| id.starts_with(B)),
        "{available:?}"
    );
    assert!(
        agent
            .log()
            .contains(&format!("device {A} is unhealthy: critical Xid 79"))
    );
    // dilu-scheduler places by the inventory: A leaves it, B and the CPU device stay.
    until("A left out of the inventory", &agent, async || {
        let listed = inventory().await;
        listed.len() == 2 && !listed.iter().any(|u| u == A) && listed.iter().any(|u| u == B)
    })
    .await;
    // The operator sees it on the Node: an event (in default, the kubelet's convention for Node events) that
    // `kubectl describe node` lists.
    let event = event_for(
        &api.client(),
        "default",
        NODE,
        "GPUUnhealthy",
        Duration::from_secs(10),
    )
    .await;
    assert_eq!(event.type_.as_deref(), Some("Warning"));
    let note = event.message.unwrap_or_default();
    assert!(
        note.contains(A) && note.contains("critical Xid 79"),
        "{note}"
    );
    let described = api.kubectl(&["describe", "node", NODE]);
    let described = String::from_utf8_lossy(&described.stdout);
    assert!(
        described.contains("GPUUnhealthy") && described.contains(A),
        "kubectl describe node:\n{described}"
    );
    assert!(agent.terminate().success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pod_the_kubelet_gave_another_device_is_deleted_to_be_replaced() {
    let Some(api) = ApiServer::start().await else {
        return;
    };
    let out = api.kubectl(&["apply", "-f", &repo("deploy/namespace.yaml")]);
    assert!(out.status.success());
    let admin = api.client();
    fake_node(&admin, NODE, &[], 2).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("plugins")).unwrap();
    let _kubelet = FakeKubelet::start(&dir.path().join("plugins")).unwrap();
    let record = dir.path().join("pod-resources.sock");
    let pod_resources = FakePodResources::start(&record).unwrap();
    let record = record.display().to_string();
    let agent = Agent::start_with(
        dir.path(),
        &api.kubeconfig(ADMIN),
        1,
        &[
            "--no-nvml",
            "--gpu",
            "GPU-agent-0,memory=1GiB",
            "--gpu",
            "GPU-agent-1,memory=1GiB",
            "--pod-resources-socket",
            &record,
            "--pick-check-s",
            "0.2",
        ],
        &[],
    );
    let pods: Api<Pod> = Api::namespaced(admin.clone(), "default");
    for (name, device) in [("p1", "GPU-agent-1"), ("p2", "GPU-agent-0")] {
        let pod: Pod = serde_json::from_value(serde_json::json!({
            "metadata": {"name": name, "annotations": {
                meta::ASSIGNMENT: format!(r#"{{"node":"{NODE}","device":"{device}"}}"#),
                meta::QUOTA: r#"{"request":0.25,"limit":0.5}"#,
            }},
            "spec": {"nodeName": NODE, "containers": [{"name": "c", "image": "example.invalid/none"}]},
        }))
        .unwrap();
        pods.create(&PostParams::default(), &pod).await.unwrap();
    }
    // The kubelet gave both pods shares of GPU-agent-0: p1 was assigned GPU-agent-1.
    pod_resources.hold("default", "p1", meta::GPU_SHARE, &["GPU-agent-0::00"]);
    pod_resources.hold("default", "p2", meta::GPU_SHARE, &["GPU-agent-0::01"]);
    until("p1 deleted", &agent, async || {
        pods.get("p1")
            .await
            .unwrap()
            .metadata
            .deletion_timestamp
            .is_some()
    })
    .await;
    assert!(
        agent.log().contains(
            "pod default/p1 was assigned GPU-agent-1 but the kubelet gave it GPU-agent-0"
        ),
        "{}",
        agent.log()
    );
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(
        pods.get("p2")
            .await
            .unwrap()
            .metadata
            .deletion_timestamp
            .is_none(),
        "p2 holds its assigned device"
    );
    assert!(agent.terminate().success());
    pod_resources.stop().await;
}
