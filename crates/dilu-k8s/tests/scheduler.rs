//! dilu-scheduler against a real kube-apiserver 1.20 (dilu-k8s-testkit): it binds where a ledger with the same
//! placer would, survives restarts without double booking, and leaves a pod that fits nowhere pending with
//! `PodScheduled=False/Unschedulable` until a node appears. Skipped (with `SKIPPED: …`) where the binaries are
//! missing; build them with `bash scripts/build-kube.sh`.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use dilu_core::InstanceKind;
use dilu_core::ledger::{DeviceClass, DeviceRef, Ledger, NodeInventory};
use dilu_core::policy::{Policy, PolicyName};
use dilu_k8s::meta::{self, Assignment, PodBooking};
use dilu_k8s::scheduler::{self, Counters, SchedulerConfig};
use dilu_k8s_testkit::{
    ApiServer, KUBE_SCHEDULER_USER, event_for, fake_devices, fake_node, fake_nodes,
};
use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::core::v1::{Namespace, Node, Pod};
use kube::api::{Api, ListParams, PostParams};
use kube::runtime::watcher::{self, Event, watcher};
use kube::{Client, ResourceExt};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

const NS: &str = "dilu-sched";

async fn namespace(client: &Client, name: &str) {
    let ns: Namespace = serde_json::from_value(serde_json::json!({
        "apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}
    }))
    .unwrap();
    Api::<Namespace>::all(client.clone())
        .create(&PostParams::default(), &ns)
        .await
        .unwrap();
}

fn booking(kind: InstanceKind, sm_request: u32, sm_limit: u32, gpu_mem_mib: u64) -> PodBooking {
    PodBooking {
        kind,
        sm_request,
        sm_limit,
        gpu_mem_mib,
        device: DeviceClass::Gpu,
    }
}

/// A pending Dilu pod of function `f`.
fn dilu_pod(name: &str, b: &PodBooking) -> Pod {
    serde_json::from_value(serde_json::json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": name,
            "labels": {meta::FUNCTION: "f"},
            "annotations": {meta::BOOKING: serde_json::to_string(b).unwrap()},
        },
        "spec": {
            "schedulerName": meta::SCHEDULER_NAME,
            "containers": [{"name": "c", "image": "example.invalid/none"}],
        },
    }))
    .unwrap()
}

async fn create_pods(pods: &Api<Pod>, list: Vec<Pod>) {
    futures::stream::iter(list)
        .map(|p| async move { pods.create(&PostParams::default(), &p).await.map(|_| ()) })
        .buffer_unordered(16)
        .try_collect::<Vec<()>>()
        .await
        .unwrap();
}

struct Running {
    task: JoinHandle<()>,
    stop: Option<oneshot::Sender<()>>,
    counters: Arc<Counters>,
}

impl Running {
    fn start(client: Client, max_in_flight: usize) -> Running {
        let counters = Arc::new(Counters::default());
        let config = SchedulerConfig {
            namespace: Some(NS.into()),
            max_in_flight,
            counters: counters.clone(),
            ..SchedulerConfig::default()
        };
        let (tx, rx) = oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            scheduler::run(client, config, async {
                let _ = rx.await;
            })
            .await
            .unwrap();
        });
        Running {
            task,
            stop: Some(tx),
            counters,
        }
    }

    async fn stop(mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        tokio::time::timeout(Duration::from_secs(10), &mut self.task)
            .await
            .expect("the scheduler stops")
            .unwrap();
    }

    /// Kills it mid-work (a crash: its binds in flight are dropped wherever they are).
    async fn abort(self) {
        self.task.abort();
        let _ = self.task.await;
    }
}

fn assignment_of(pod: &Pod) -> Option<Assignment> {
    pod.annotations()
        .get(meta::ASSIGNMENT)
        .map(|a| Assignment::parse(&pod.name_any(), a).unwrap())
}

fn booking_of(pod: &Pod) -> PodBooking {
    PodBooking::parse(&pod.name_any(), &pod.annotations()[meta::BOOKING]).unwrap()
}

fn node_of(pod: &Pod) -> Option<String> {
    pod.spec.as_ref().and_then(|s| s.node_name.clone())
}

fn unschedulable_message(pod: &Pod) -> Option<String> {
    pod.status
        .as_ref()?
        .conditions
        .as_ref()?
        .iter()
        .find(|c| {
            c.type_ == "PodScheduled"
                && c.status == "False"
                && c.reason.as_deref() == Some("Unschedulable")
        })
        .map(|c| c.message.clone().unwrap_or_default())
}

/// Lists the namespace's pods until `done` holds (panics after `timeout`, showing `what`).
async fn wait_for(
    pods: &Api<Pod>,
    timeout: Duration,
    what: &str,
    done: impl Fn(&[Pod]) -> bool,
) -> Vec<Pod> {
    let deadline = Instant::now() + timeout;
    loop {
        let list = pods.list(&ListParams::default()).await.unwrap().items;
        if done(&list) {
            return list;
        }
        if Instant::now() > deadline {
            let bound = list.iter().filter(|p| node_of(p).is_some()).count();
            panic!(
                "{what}: not within {timeout:?} ({bound}/{} bound)",
                list.len()
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The nodes' inventories as the scheduler reads them, by name.
async fn inventories(client: &Client) -> Vec<NodeInventory> {
    let mut nodes: Vec<NodeInventory> = Api::<Node>::all(client.clone())
        .list(&ListParams::default())
        .await
        .unwrap()
        .items
        .iter()
        .filter_map(|n| {
            let text = n.annotations().get(meta::INVENTORY)?;
            meta::node_inventory(&n.name_any(), text).ok()
        })
        .collect();
    nodes.sort_by(|a, b| a.name.cmp(&b.name));
    nodes
}

/// Σ SM requests (milli) per device over the bound pods' assignments.
fn requested_per_device(pods: &[Pod]) -> BTreeMap<DeviceRef, u32> {
    let mut sums = BTreeMap::new();
    for p in pods {
        if let Some(a) = assignment_of(p) {
            *sums.entry(a.device_ref()).or_insert(0) += booking_of(p).sm_request;
        }
    }
    sums
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pods_are_bound_where_a_ledger_with_the_same_placer_places_them() {
    let Some(api) = ApiServer::start().await else {
        return;
    };
    let client = api.client();
    namespace(&client, NS).await;
    fake_nodes(&client, "gpu", 3, 2).await.unwrap();
    let pods: Api<Pod> = Api::namespaced(client.clone(), NS);
    let shapes = [
        booking(InstanceKind::Inference, 300, 600, 4096),
        booking(InstanceKind::Training, 500, 1000, 8192),
        booking(InstanceKind::Inference, 200, 400, 2048),
        booking(InstanceKind::Inference, 700, 700, 1024),
    ];
    // 16 pods asking 6.8 GPUs of SM on 6 GPUs: some stay pending. Created in two batches a second apart so
    // that the order is by creation time first, then by name.
    let batch = |range: std::ops::Range<usize>| {
        range
            .map(|i| dilu_pod(&format!("p-{:02}", (i * 5) % 16), &shapes[i % 4]))
            .collect::<Vec<_>>()
    };
    create_pods(&pods, batch(0..8)).await;
    tokio::time::sleep(Duration::from_millis(1100)).await;
    create_pods(&pods, batch(8..16)).await;

    // What a ledger with the same placer gives for the same inventory and the same pods in the same order.
    let mut listed = pods.list(&ListParams::default()).await.unwrap().items;
    listed.sort_by_key(|p| {
        let created = p.creation_timestamp().map_or(0, |t| t.0.as_second());
        (created, format!("{NS}/{}", p.name_any()))
    });
    let mut reference = Ledger::new(
        &inventories(&client).await,
        Policy::named(PolicyName::Dilu).placer(),
    )
    .unwrap();
    let expected: BTreeMap<String, Option<DeviceRef>> = listed
        .iter()
        .map(|p| {
            let key = format!("{NS}/{}", p.name_any());
            let at = reference
                .place(&key, &booking_of(p).request("f"), DeviceClass::Gpu)
                .ok();
            (p.name_any(), at)
        })
        .collect();
    let placed = expected.values().filter(|a| a.is_some()).count();
    assert!((10..16).contains(&placed), "{placed} of 16 fit");

    // Every version of a pod the watch shows: is any bound without its assignment?
    let seen = Arc::new(Mutex::new((0usize, Vec::<String>::new())));
    let watch = {
        let seen = seen.clone();
        let pods = pods.clone();
        tokio::spawn(async move {
            let mut events = watcher(pods, watcher::Config::default()).boxed();
            while let Some(Ok(event)) = events.next().await {
                if let Event::Apply(p) | Event::InitApply(p) = event
                    && node_of(&p).is_some()
                {
                    let mut s = seen.lock().unwrap();
                    s.0 += 1;
                    if assignment_of(&p).is_none() {
                        s.1.push(p.name_any());
                    }
                }
            }
        })
    };

    let run = Running::start(api.client_as(KUBE_SCHEDULER_USER), 64);
    let list = wait_for(&pods, Duration::from_secs(60), "binding", |list| {
        list.iter()
            .filter(|p| node_of(p).is_some() || unschedulable_message(p).is_some())
            .count()
            == 16
    })
    .await;
    for p in &list {
        let want = &expected[&p.name_any()];
        let got = assignment_of(p).map(|a| a.device_ref());
        assert_eq!(&got, want, "pod {}", p.name_any());
        assert_eq!(node_of(p), want.as_ref().map(|a| a.node.clone()));
        if want.is_none() {
            let message = unschedulable_message(p).unwrap();
            assert!(message.starts_with("no node has room"), "{message}");
        }
    }
    let counters = run.counters.snapshot();
    assert_eq!(counters.binds, placed as u64);
    assert_eq!((counters.failures, counters.conflicts), (0, 0));
    run.stop().await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    watch.abort();
    let (bound_versions, without) = seen.lock().unwrap().clone();
    assert!(
        bound_versions >= placed,
        "{bound_versions} bound versions seen"
    );
    assert!(
        without.is_empty(),
        "bound without an assignment (the binding is not atomic): {without:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_scheduler_killed_mid_way_and_restarted_binds_every_pod_once_without_overbooking() {
    let Some(api) = ApiServer::start().await else {
        return;
    };
    let client = api.client();
    namespace(&client, NS).await;
    // 200 GPUs and 200 pods that each need more than half a GPU: every GPU must end with exactly one, so any
    // double booking or leaked booking leaves a pod pending or a device over 1.0.
    fake_nodes(&client, "gpu", 25, 8).await.unwrap();
    let pods: Api<Pod> = Api::namespaced(client.clone(), NS);
    let list: Vec<Pod> = (0..200)
        .map(|i| {
            let kind = if i % 3 == 0 {
                InstanceKind::Training
            } else {
                InstanceKind::Inference
            };
            dilu_pod(&format!("p-{i:03}"), &booking(kind, 600, 900, 2048))
        })
        .collect();
    create_pods(&pods, list).await;

    let mut runs = Vec::new();
    // Two crashes: each run is killed once it has made 50 binds (binds in flight are cut off wherever they are).
    for _ in 0..2 {
        let run = Running::start(api.client_as(KUBE_SCHEDULER_USER), 8);
        let deadline = Instant::now() + Duration::from_secs(60);
        while run.counters.snapshot().binds < 50 {
            assert!(
                Instant::now() < deadline,
                "no progress: {:?}",
                run.counters.snapshot()
            );
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        let counters = run.counters.clone();
        run.abort().await;
        runs.push(counters.snapshot());
    }
    let last = Running::start(api.client_as(KUBE_SCHEDULER_USER), 64);
    let list = wait_for(
        &pods,
        Duration::from_secs(120),
        "all bound after restarts",
        |list| list.iter().all(|p| node_of(p).is_some()),
    )
    .await;
    let final_counters = last.counters.snapshot();
    last.stop().await;
    runs.push(final_counters);
    eprintln!("counters per run: {runs:#?}");

    assert_eq!(list.len(), 200);
    for p in &list {
        let a = assignment_of(p).unwrap_or_else(|| panic!("{} has no assignment", p.name_any()));
        assert_eq!(Some(a.node.clone()), node_of(p), "{}", p.name_any());
    }
    let sums = requested_per_device(&list);
    assert_eq!(sums.len(), 200, "one pod per GPU");
    for (at, milli) in &sums {
        assert!(
            *milli <= 1000,
            "{}/{}: {milli} milli requested",
            at.node,
            at.device
        );
    }
    for r in &runs {
        assert_eq!(r.failures, 0, "{runs:?}");
    }
    // The last run adopted what the others bound (at least the 100 they counted) and bound the rest.
    assert!(final_counters.adopted >= 100, "{final_counters:?}");
    assert!(
        final_counters.adopted + final_counters.binds >= 200,
        "{final_counters:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pod_that_fits_nowhere_waits_unschedulable_until_a_node_appears() {
    let Some(api) = ApiServer::start().await else {
        return;
    };
    let client = api.client();
    namespace(&client, NS).await;
    fake_node(&client, "gpu-a", &fake_devices("gpu-a", 1), 1)
        .await
        .unwrap();
    let pods: Api<Pod> = Api::namespaced(client.clone(), NS);
    let run = Running::start(api.client_as(KUBE_SCHEDULER_USER), 64);
    create_pods(
        &pods,
        vec![dilu_pod(
            "first",
            &booking(InstanceKind::Inference, 600, 600, 1024),
        )],
    )
    .await;
    wait_for(&pods, Duration::from_secs(30), "first bound", |l| {
        l.iter().all(|p| node_of(p).is_some())
    })
    .await;
    create_pods(
        &pods,
        vec![dilu_pod(
            "second",
            &booking(InstanceKind::Inference, 600, 600, 1024),
        )],
    )
    .await;
    let list = wait_for(
        &pods,
        Duration::from_secs(30),
        "second unschedulable",
        |l| {
            l.iter()
                .any(|p| p.name_any() == "second" && unschedulable_message(p).is_some())
        },
    )
    .await;
    let second = list.iter().find(|p| p.name_any() == "second").unwrap();
    assert_eq!(node_of(second), None);
    let message = unschedulable_message(second).unwrap();
    eprintln!("PodScheduled=False/Unschedulable: {message}");
    assert!(!message.is_empty());
    // It stays so: nothing changed.
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(node_of(&pods.get("second").await.unwrap()), None);
    assert_eq!(
        run.counters.snapshot().unschedulable,
        1,
        "tried once while nothing changed"
    );
    // `kubectl describe pod second` shows why, as the kube-scheduler's FailedScheduling does.
    let failed = event_for(
        &client,
        NS,
        "second",
        "FailedScheduling",
        Duration::from_secs(10),
    )
    .await;
    assert_eq!(failed.type_.as_deref(), Some("Warning"));
    assert_eq!(failed.message.as_deref(), Some(message.as_str()));
    assert_eq!(failed.involved_object.kind.as_deref(), Some("Pod"));
    assert_eq!(failed.involved_object.uid, second.metadata.uid);
    assert_eq!(
        failed.reporting_component.as_deref(),
        Some("dilu.io/scheduler")
    );
    let described = api.kubectl(&["describe", "pod", "-n", NS, "second"]);
    let described = String::from_utf8_lossy(&described.stdout);
    assert!(
        described.contains("FailedScheduling"),
        "kubectl describe pod:\n{described}"
    );

    fake_node(&client, "gpu-b", &fake_devices("gpu-b", 1), 1)
        .await
        .unwrap();
    let list = wait_for(&pods, Duration::from_secs(30), "second bound", |l| {
        l.iter().all(|p| node_of(p).is_some())
    })
    .await;
    let second = list.iter().find(|p| p.name_any() == "second").unwrap();
    assert_eq!(node_of(second).as_deref(), Some("gpu-b"));
    assert_eq!(
        assignment_of(second).map(|a| a.device),
        Some("GPU-gpu-b-0".to_string())
    );
    // The API server's binding turned the condition to True.
    let scheduled = second
        .status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .and_then(|c| c.iter().find(|c| c.type_ == "PodScheduled"))
        .map(|c| c.status.clone());
    assert_eq!(scheduled.as_deref(), Some("True"));
    let counters = run.counters.snapshot();
    assert_eq!((counters.binds, counters.failures), (2, 0));
    let scheduled = event_for(&client, NS, "second", "Scheduled", Duration::from_secs(10)).await;
    assert_eq!(scheduled.type_.as_deref(), Some("Normal"));
    let note = scheduled.message.unwrap_or_default();
    assert!(
        note.contains(&format!("{NS}/second to gpu-b, device GPU-gpu-b-0")),
        "{note}"
    );
    // One FailedScheduling only: the reason did not change while it waited.
    let events: Api<k8s_openapi::api::core::v1::Event> = Api::namespaced(client.clone(), NS);
    let failed = events
        .list(&Default::default())
        .await
        .unwrap()
        .items
        .into_iter()
        .filter(|e| e.reason.as_deref() == Some("FailedScheduling"))
        .count();
    assert_eq!(failed, 1);
    run.stop().await;
}
