//! The node agent's Kubernetes side (`dilu_k8s::node::run`) against a real kube-apiserver 1.20
//! (dilu-k8s-testkit), running as a user with only the RBAC of `deploy/agent.yaml`: it writes its Node's
//! inventory, keeps its Lease renewed, attaches a channel for every Dilu pod bound to its node with the pod's
//! device and quota, applies quota changes from the pod annotation (latency measured), keeps the channel of a
//! pod being deleted until it is gone, after a restart attaches the pods again and removes leftovers, and
//! deletes a pod the kubelet gave shares of another device than its assignment.
//! Skipped (with `SKIPPED: …`) where the binaries are missing; build them with `bash scripts/build-kube.sh`.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use dilu_api::{InstanceKind, Quota};
use dilu_core::ledger::DeviceInventory;
use dilu_k8s::events::{EventCountsSnapshot, EventSink, Reporter};
use dilu_k8s::meta::{self, NodeDevice};
use dilu_k8s::node::{
    self, Attached, Channel, Held, NodeConfig, NodeStats, PickCheck, PodChannels, PodDevices,
    quantile,
};
use dilu_k8s_testkit::{ApiServer, event_for, fake_node};
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{Namespace, Node, Pod};
use k8s_openapi::api::rbac::v1::{ClusterRoleBinding, RoleBinding};
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams};
use kube::{Client, ResourceExt};
use tokio::sync::{oneshot, watch};
use tokio::task::JoinHandle;

const NODE: &str = "n1";
const NS: &str = "work";
const GPU: &str = "GPU-n1-agent-0";
const CPU: &str = "CPU-n1-agent";

fn repo(path: &str) -> String {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .join(path)
        .display()
        .to_string()
}

/// Channels kept in memory, as the agent would; every change bumps a version others can wait on.
#[derive(Default)]
struct FakeChannels {
    channels: Mutex<BTreeMap<String, Option<Channel>>>,
    version: watch::Sender<u64>,
    attaches: Mutex<Vec<(String, Channel)>>,
    detaches: Mutex<Vec<String>>,
}

impl FakeChannels {
    fn get(&self, uid: &str) -> Option<Option<Channel>> {
        self.channels.lock().unwrap().get(uid).cloned()
    }

    /// What an agent restart leaves: the files, nothing budgeted.
    fn restart(&self) {
        for channel in self.channels.lock().unwrap().values_mut() {
            *channel = None;
        }
    }

    /// Waits until `done` holds for the channels (checked on every change), up to 20 s.
    async fn until(&self, what: &str, done: impl Fn(&BTreeMap<String, Option<Channel>>) -> bool) {
        let mut version = self.version.subscribe();
        let waited = tokio::time::timeout(Duration::from_secs(20), async {
            loop {
                if done(&self.channels.lock().unwrap()) {
                    return;
                }
                version.changed().await.unwrap();
            }
        })
        .await;
        assert!(
            waited.is_ok(),
            "timed out: {what}; channels: {:?}",
            self.channels.lock().unwrap()
        );
    }
}

impl PodChannels for FakeChannels {
    fn attach(&self, pod_uid: &str, channel: &Channel) -> Result<(), String> {
        self.channels
            .lock()
            .unwrap()
            .insert(pod_uid.to_string(), Some(channel.clone()));
        self.attaches
            .lock()
            .unwrap()
            .push((pod_uid.to_string(), channel.clone()));
        self.version.send_modify(|v| *v += 1);
        Ok(())
    }

    fn detach(&self, pod_uid: &str) -> Result<(), String> {
        self.channels.lock().unwrap().remove(pod_uid);
        self.detaches.lock().unwrap().push(pod_uid.to_string());
        self.version.send_modify(|v| *v += 1);
        Ok(())
    }

    fn attached(&self) -> Vec<Attached> {
        self.channels
            .lock()
            .unwrap()
            .iter()
            .map(|(uid, channel)| Attached {
                pod_uid: uid.clone(),
                channel: channel.clone(),
            })
            .collect()
    }
}

fn devices() -> Vec<NodeDevice> {
    vec![
        NodeDevice {
            uuid: GPU.into(),
            memory_mib: 81_559,
            gpu: true,
            cores: None,
        },
        NodeDevice {
            uuid: CPU.into(),
            memory_mib: 0,
            gpu: false,
            cores: Some(2.0),
        },
    ]
}

/// An API server with deploy/namespace.yaml and deploy/agent.yaml applied, agent.yaml's roles bound to the
/// test user `dilu-agent`, node n1 (with someone else's inventory) and namespace `work`.
async fn cluster() -> Option<ApiServer> {
    let api = ApiServer::start().await?;
    for file in ["deploy/namespace.yaml", "deploy/agent.yaml"] {
        let out = api.kubectl(&["apply", "-f", &repo(file)]);
        assert!(
            out.status.success(),
            "{file}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let admin = api.client();
    let crb: ClusterRoleBinding = serde_json::from_value(serde_json::json!({
        "metadata": {"name": "dilu-agent-test-user"},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "dilu-agent"},
        "subjects": [{"apiGroup": "rbac.authorization.k8s.io", "kind": "User", "name": "dilu-agent"}],
    }))
    .unwrap();
    Api::<ClusterRoleBinding>::all(admin.clone())
        .create(&PostParams::default(), &crb)
        .await
        .unwrap();
    let rb: RoleBinding = serde_json::from_value(serde_json::json!({
        "metadata": {"name": "dilu-agent-test-user", "namespace": meta::NODE_LEASE_NAMESPACE},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "dilu-agent"},
        "subjects": [{"apiGroup": "rbac.authorization.k8s.io", "kind": "User", "name": "dilu-agent"}],
    }))
    .unwrap();
    Api::<RoleBinding>::namespaced(admin.clone(), meta::NODE_LEASE_NAMESPACE)
        .create(&PostParams::default(), &rb)
        .await
        .unwrap();
    let stale = [DeviceInventory {
        uuid: "GPU-stale".into(),
        memory_mib: 1,
        gpu: true,
    }];
    fake_node(&admin, NODE, &stale, 1).await.unwrap();
    let ns: Namespace =
        serde_json::from_value(serde_json::json!({"metadata": {"name": NS}})).unwrap();
    Api::<Namespace>::all(admin)
        .create(&PostParams::default(), &ns)
        .await
        .unwrap();
    Some(api)
}

struct Running {
    task: JoinHandle<()>,
    stop: Option<oneshot::Sender<()>>,
}

impl Running {
    fn start(client: Client, config: NodeConfig, channels: Arc<FakeChannels>) -> Running {
        let (stop, stopped) = oneshot::channel();
        let task = tokio::spawn(async move {
            node::run(client, config, channels, async {
                let _ = stopped.await;
            })
            .await
            .unwrap();
        });
        Running {
            task,
            stop: Some(stop),
        }
    }

    async fn stop(mut self) {
        let _ = self.stop.take().unwrap().send(());
        tokio::time::timeout(Duration::from_secs(10), &mut self.task)
            .await
            .expect("the node agent stops within 10 s")
            .unwrap();
    }
}

/// The Lease here: short, so that renewals (every third of it) happen within the test.
const LEASE_SECONDS: i32 = 6;

fn config() -> NodeConfig {
    let mut config = NodeConfig::new(NODE, devices());
    config.lease_seconds = LEASE_SECONDS;
    config
}

fn quota_text(request: f64, limit: f64) -> String {
    serde_json::to_string(&Quota::new(request, limit)).unwrap()
}

/// A Dilu pod bound to `node` (created with `spec.nodeName`, as after dilu-scheduler's Binding).
fn pod(name: &str, node: &str, device: Option<&str>, quota: &str) -> Pod {
    let mut annotations = serde_json::json!({meta::QUOTA: quota});
    if let Some(device) = device {
        annotations[meta::ASSIGNMENT] =
            serde_json::Value::String(format!(r#"{{"node":"{node}","device":"{device}"}}"#));
    }
    serde_json::from_value(serde_json::json!({
        "metadata": {"name": name, "namespace": NS, "labels": {meta::FUNCTION: "f"}, "annotations": annotations},
        "spec": {
            "nodeName": node,
            "containers": [{"name": "c", "image": "example.invalid/none"}],
        },
    }))
    .unwrap()
}

async fn create(pods: &Api<Pod>, pod: Pod) -> String {
    pods.create(&PostParams::default(), &pod)
        .await
        .unwrap()
        .uid()
        .unwrap()
}

fn channel(device: &str, request: f64, limit: f64) -> Option<Channel> {
    Some(Channel {
        device: device.into(),
        kind: InstanceKind::Inference,
        quota: Quota::new(request, limit),
    })
}

/// Equal up to JSON's decimal round trip (serde_json's default float parser is not always exact).
fn close(a: Quota, b: Quota) -> bool {
    (a.request - b.request).abs() < 1e-9 && (a.limit - b.limit).abs() < 1e-9 && a.memory == b.memory
}

async fn force_delete(pods: &Api<Pod>, name: &str) {
    pods.delete(name, &DeleteParams::default().grace_period(0))
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn inventory_lease_and_the_channels_of_the_pods_bound_to_the_node() {
    let Some(api) = cluster().await else {
        return;
    };
    let admin = api.client();
    let pods: Api<Pod> = Api::namespaced(admin.clone(), NS);
    let channels = Arc::new(FakeChannels::default());
    let config = config();
    let stats: Arc<NodeStats> = config.stats.clone();
    let preference = config.preference.clone();
    // Pods there before the agent starts: one on its GPU, one elsewhere, one not Dilu's.
    let p1 = create(&pods, pod("p1", NODE, Some(GPU), &quota_text(0.2, 0.5))).await;
    let other = create(
        &pods,
        pod("other", "n2", Some("GPU-n2"), &quota_text(0.2, 0.5)),
    )
    .await;
    let plain = create(&pods, pod("plain", NODE, None, &quota_text(0.2, 0.5))).await;
    let started = Instant::now();
    let agent = Running::start(api.client_as("dilu-agent"), config, channels.clone());

    // The inventory replaces what the Node said.
    let nodes: Api<Node> = Api::all(admin.clone());
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let n = nodes.get(NODE).await.unwrap();
        if node::inventory::is_current(&n, &devices()) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "inventory not written: {:?}",
            n.annotations()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let inventory_took = started.elapsed();
    let text = nodes.get(NODE).await.unwrap().annotations()[meta::INVENTORY].clone();
    assert_eq!(meta::node_devices(NODE, &text).unwrap(), devices());
    assert_eq!(meta::node_inventory(NODE, &text).unwrap().devices.len(), 2);

    // The pod bound before the start gets its channel; the others none.
    channels
        .until("p1 attached", |c| {
            c.get(&p1) == Some(&channel(GPU, 0.2, 0.5))
        })
        .await;
    let first_attach = started.elapsed();
    assert!(channels.get(&other).is_none() && channels.get(&plain).is_none());

    // A pod bound later, on the CPU device, with the training kind label.
    let mut p2 = pod("p2", NODE, Some(CPU), &quota_text(0.1, 1.0));
    p2.labels_mut().insert(meta::KIND.into(), "training".into());
    let p2 = create(&pods, p2).await;
    channels
        .until("p2 attached", |c| {
            c.get(&p2).cloned().flatten().is_some_and(|ch| {
                ch.device == CPU
                    && ch.kind == InstanceKind::Training
                    && ch.quota == Quota::new(0.1, 1.0)
            })
        })
        .await;
    // Neither is admitted yet (no kubelet here): both wait, oldest first, and the preference names them.
    assert_eq!(preference.waiting_uids(), [p1.clone(), p2.clone()]);
    assert_eq!(preference.preferred(&[GPU, CPU]).as_deref(), Some(GPU));
    assert_eq!(preference.preferred(&[GPU, CPU]).as_deref(), Some(CPU));

    // The Lease: created, held by the node, renewed every 2 s.
    let leases: Api<Lease> = Api::namespaced(admin.clone(), meta::NODE_LEASE_NAMESPACE);
    let lease_name = meta::node_lease_name(NODE);
    let renew_time = |l: &Lease| {
        l.spec
            .as_ref()
            .and_then(|s| s.renew_time.clone())
            .map(|t| t.0)
    };
    let first = leases.get(&lease_name).await.unwrap();
    let spec = first.spec.clone().unwrap();
    assert_eq!(spec.holder_identity.as_deref(), Some(NODE));
    assert_eq!(spec.lease_duration_seconds, Some(LEASE_SECONDS));
    let t0 = renew_time(&first).unwrap();

    // Quota changes through the pod annotation: each must reach the channel; measured end to end (patch sent
    // to attach seen here) and by the agent (event arrival to attach returned).
    let mut end_to_end_us = Vec::new();
    let mut last = (0.0, 0.0);
    for i in 0..20 {
        let request = f64::from(5 + i) / 100.0;
        let limit = f64::from(50 + i) / 100.0;
        let patch = serde_json::json!({"metadata": {"annotations": {meta::QUOTA: quota_text(request, limit)}}});
        let sent = Instant::now();
        pods.patch("p1", &PatchParams::default(), &Patch::Merge(&patch))
            .await
            .unwrap();
        channels
            .until("quota change applied", |c| {
                c.get(&p1)
                    .cloned()
                    .flatten()
                    .is_some_and(|ch| close(ch.quota, Quota::new(request, limit)))
            })
            .await;
        end_to_end_us.push(sent.elapsed().as_micros() as u64);
        last = (request, limit);
    }
    let agent_us = stats.snapshot().quota_latencies_us;
    // One latency per pass that applied a change: on a loaded machine two changes can meet in one pass.
    assert!((1..=20).contains(&agent_us.len()), "{:?}", stats.snapshot());
    let q = |v: &[u64], p| quantile(v, p).unwrap();
    eprintln!(
        "quota change, event arrival to attach returned: p50 {} us, p99 {} us; patch sent to attach seen: \
         p50 {} us, p99 {} us (20 changes)",
        q(&agent_us, 0.5),
        q(&agent_us, 0.99),
        q(&end_to_end_us, 0.5),
        q(&end_to_end_us, 0.99)
    );
    assert!(q(&end_to_end_us, 0.5) < 1_000_000, "{end_to_end_us:?}");

    // A bad quota annotation leaves the channel as it is.
    let attaches_before = channels.attaches.lock().unwrap().len();
    let patch = serde_json::json!({"metadata": {"annotations": {meta::QUOTA: r#"{"request":3}"#}}});
    pods.patch("p1", &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .unwrap();

    // Renewed meanwhile (the loop above and this wait take over 2 s).
    tokio::time::sleep(Duration::from_millis(2200)).await;
    let t1 = renew_time(&leases.get(&lease_name).await.unwrap()).unwrap();
    assert!(t1 > t0, "Lease not renewed: {t0} then {t1}");
    let renewals = stats.snapshot().lease_renewals;
    assert!(renewals >= 2, "{renewals} renewals");
    assert_eq!(channels.attaches.lock().unwrap().len(), attaches_before);
    let now = channels.get(&p1).flatten().unwrap();
    assert!(close(now.quota, Quota::new(last.0, last.1)), "{now:?}");

    // Deleting p1: it stays while being deleted (no kubelet confirms it here), and is detached once gone.
    pods.delete("p1", &DeleteParams::default()).await.unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(
        pods.get("p1")
            .await
            .unwrap()
            .metadata
            .deletion_timestamp
            .is_some()
    );
    assert!(
        channels.get(&p1).is_some(),
        "a pod being deleted keeps its channel"
    );
    let deleted = Instant::now();
    force_delete(&pods, "p1").await;
    channels
        .until("p1 detached", |c| !c.contains_key(&p1))
        .await;
    let detach_took = deleted.elapsed();

    // A pod that ended loses its channel.
    let status = serde_json::json!({"status": {"phase": "Succeeded"}});
    pods.patch_status("p2", &PatchParams::default(), &Patch::Merge(&status))
        .await
        .unwrap();
    channels
        .until("p2 detached", |c| !c.contains_key(&p2))
        .await;

    // Someone overwrites the inventory: written back.
    let patch = serde_json::json!({"metadata": {"annotations": {meta::INVENTORY: "[]"}}});
    nodes
        .patch(NODE, &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .unwrap();
    let overwritten = Instant::now();
    loop {
        if node::inventory::is_current(&nodes.get(NODE).await.unwrap(), &devices()) {
            break;
        }
        assert!(
            overwritten.elapsed() < Duration::from_secs(10),
            "inventory not restored"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    eprintln!(
        "inventory written {:.0} ms after the start, first channel {:.0} ms after it; a deleted pod detached \
         {:.0} ms after the delete; overwritten inventory restored in {:.0} ms; {} Lease renewals",
        inventory_took.as_secs_f64() * 1e3,
        first_attach.as_secs_f64() * 1e3,
        detach_took.as_secs_f64() * 1e3,
        overwritten.elapsed().as_secs_f64() * 1e3,
        stats.snapshot().lease_renewals
    );
    agent.stop().await;
    // Nothing is detached on shutdown.
    assert_eq!(channels.detaches.lock().unwrap().len(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_agent_attaches_its_pods_again_and_removes_leftovers() {
    let Some(api) = cluster().await else {
        return;
    };
    let pods: Api<Pod> = Api::namespaced(api.client(), NS);
    let channels = Arc::new(FakeChannels::default());
    let kept = create(&pods, pod("kept", NODE, Some(GPU), &quota_text(0.3, 0.6))).await;
    let going = create(&pods, pod("going", NODE, Some(GPU), &quota_text(0.2, 0.2))).await;
    let agent = Running::start(api.client_as("dilu-agent"), config(), channels.clone());
    channels
        .until("both attached", |c| {
            c.len() == 2 && c.values().all(Option::is_some)
        })
        .await;
    agent.stop().await;

    // While no agent runs: one pod goes, one comes, and its quota changes for the one that stays.
    force_delete(&pods, "going").await;
    let new = create(&pods, pod("new", NODE, Some(CPU), &quota_text(0.1, 0.1))).await;
    let patch =
        serde_json::json!({"metadata": {"annotations": {meta::QUOTA: quota_text(0.4, 0.6)}}});
    pods.patch("kept", &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .unwrap();
    // The restarted agent has the files, nothing budgeted, and a file of a pod from long ago.
    channels.restart();
    channels
        .channels
        .lock()
        .unwrap()
        .insert("long-gone".into(), None);
    let attaches_before = channels.attaches.lock().unwrap().len();
    let restarted = Instant::now();
    let agent = Running::start(api.client_as("dilu-agent"), config(), channels.clone());
    channels
        .until("pods attached again, leftovers removed", |c| {
            c.len() == 2
                && c.get(&kept) == Some(&channel(GPU, 0.4, 0.6))
                && c.get(&new) == Some(&channel(CPU, 0.1, 0.1))
        })
        .await;
    eprintln!(
        "restarted agent: every pod attached again and leftovers removed {:.0} ms after its start",
        restarted.elapsed().as_secs_f64() * 1e3
    );
    let detached = channels.detaches.lock().unwrap().clone();
    assert!(
        detached.contains(&going) && detached.contains(&"long-gone".to_string()),
        "{detached:?}"
    );
    // Exactly one attach each for the two pods: nothing is attached before the initial list is complete.
    assert_eq!(channels.attaches.lock().unwrap().len(), attaches_before + 2);
    agent.stop().await;
}

/// The kubelet's PodResources record, as the test sets it.
#[derive(Default)]
struct FakeHeld(Mutex<Vec<Held>>);

impl PodDevices for FakeHeld {
    fn held(&self) -> dilu_control::backend::BoxFuture<'_, Result<Vec<Held>, String>> {
        let held = self.0.lock().unwrap().clone();
        Box::pin(async move { Ok(held) })
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pod_the_kubelet_gave_another_device_is_deleted_once() {
    let Some(api) = cluster().await else {
        return;
    };
    let pods: Api<Pod> = Api::namespaced(api.client(), NS);
    let channels = Arc::new(FakeChannels::default());
    create(&pods, pod("right", NODE, Some(GPU), &quota_text(0.2, 0.4))).await;
    create(&pods, pod("wrong", NODE, Some(GPU), &quota_text(0.2, 0.4))).await;
    create(
        &pods,
        pod("unadmitted", NODE, Some(CPU), &quota_text(0.1, 0.1)),
    )
    .await;
    let held = |name: &str, device: &str| Held {
        key: format!("{NS}/{name}"),
        devices: [device.to_string()].into(),
    };
    // The kubelet gave "wrong" a share of the CPU device; "unadmitted" holds nothing yet.
    let record = Arc::new(FakeHeld(Mutex::new(vec![
        held("right", GPU),
        held("wrong", CPU),
    ])));
    let mut config = config();
    config.pick_check = Some(PickCheck {
        source: record.clone(),
        every: Duration::from_millis(100),
    });
    // Events written with the agent's own RBAC (deploy/agent.yaml).
    config.events = EventSink::start(
        api.client_as("dilu-agent"),
        Reporter {
            controller: "dilu.io/agent".into(),
            instance: NODE.into(),
        },
    );
    let sink = config.events.clone();
    let stats = config.stats.clone();
    let agent = Running::start(api.client_as("dilu-agent"), config, channels.clone());
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let wrong = pods.get("wrong").await.unwrap();
        if wrong.metadata.deletion_timestamp.is_some() {
            break;
        }
        assert!(Instant::now() < deadline, "\"wrong\" was never deleted");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Deleted with a grace period (no kubelet here to finish it), and only once; the others stay.
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert_eq!(stats.snapshot().misplaced_deleted, 1);
    for name in ["right", "unadmitted"] {
        let pod = pods.get(name).await.unwrap();
        assert!(pod.metadata.deletion_timestamp.is_none(), "{name}");
    }
    // `kubectl describe pod wrong` says why it went.
    let event = event_for(
        &api.client(),
        NS,
        "wrong",
        "WrongDevice",
        Duration::from_secs(10),
    )
    .await;
    assert_eq!(event.type_.as_deref(), Some("Warning"));
    let note = event.message.unwrap_or_default();
    assert!(
        note.contains(&format!("assigned device {GPU}")) && note.contains(CPU),
        "{note}"
    );
    assert_eq!(
        sink.counts(),
        EventCountsSnapshot {
            created: 1,
            ..EventCountsSnapshot::default()
        }
    );
    agent.stop().await;
}
