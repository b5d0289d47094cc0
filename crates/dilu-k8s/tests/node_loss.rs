//! A node whose agent stops renewing its Lease is lost (`dilu_k8s::nodes`), against a real kube-apiserver 1.20
//! (dilu-k8s-testkit): the controller takes its pods out of the routes and deletes them, the reconciler
//! replaces them and dilu-scheduler places the replacements on the live node; the gateway's table drops the
//! lost node's endpoints. The test renews the Leases itself (as the node agents would) and plays the kubelet
//! of both nodes (bound pods are reported Running and Ready; the lost node's "kubelet" is gone with it). It
//! prints how long each step took after the Lease ran out, and asserts only what happened. Skipped (with
//! `SKIPPED: …`) where the binaries are missing; build them with `bash scripts/build-kube.sh`.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use dilu_control::load::NoLoad;
use dilu_gateway::EndpointSource;
use dilu_k8s::Function;
use dilu_k8s::controller::{self, ControllerOptions};
use dilu_k8s::endpoints::KubeEndpoints;
use dilu_k8s::meta;
use dilu_k8s::scheduler::{self, SchedulerConfig};
use dilu_k8s_testkit::{ApiServer, event_for, eventually, fake_devices, fake_node};
use futures::StreamExt;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{Namespace, Pod};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, ListParams, Patch, PatchParams, PostParams};
use kube::runtime::watcher::{self, Event, watcher};
use kube::{Client, ResourceExt};
use tokio::sync::oneshot;

const NS: &str = "default";
/// The Leases' duration here: short, so that the test is quick (the agents use `meta::NODE_LEASE_SECONDS`).
const LEASE_SECONDS: i32 = 3;

/// Renews node `node`'s Lease every second while `alive`; records the last renewal.
fn renew_lease(
    client: Client,
    node: &str,
    alive: Arc<AtomicBool>,
    last: Arc<Mutex<Option<Timestamp>>>,
) {
    let leases: Api<Lease> = Api::namespaced(client, meta::NODE_LEASE_NAMESPACE);
    let name = meta::node_lease_name(node);
    let node = node.to_string();
    tokio::spawn(async move {
        while alive.load(Ordering::SeqCst) {
            let now = Timestamp::now();
            let lease: Lease = serde_json::from_value(serde_json::json!({
                "apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
                "metadata": {"name": name, "namespace": meta::NODE_LEASE_NAMESPACE},
                "spec": {"holderIdentity": node, "leaseDurationSeconds": LEASE_SECONDS,
                         "renewTime": MicroTime(now)},
            }))
            .unwrap();
            let written = leases
                .patch(
                    &name,
                    &PatchParams::apply("node-loss-test").force(),
                    &Patch::Apply(&lease),
                )
                .await;
            if written.is_ok() {
                *last.lock().unwrap() = Some(now);
            }
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    });
}

/// The kubelets of `live` nodes: every Dilu pod bound to one of them is reported Running and Ready with an
/// address of its own. A node taken out of `live` reports nothing more (its kubelet is gone).
fn kubelets(client: Client, live: Arc<Mutex<BTreeSet<String>>>) {
    let pods: Api<Pod> = Api::namespaced(client, NS);
    let next_ip = Arc::new(AtomicU32::new(10));
    tokio::spawn(async move {
        let events = watcher(
            pods.clone(),
            watcher::Config::default().labels(meta::FUNCTION),
        );
        let mut events = std::pin::pin!(events);
        while let Some(event) = events.next().await {
            let Ok(Event::Apply(pod) | Event::InitApply(pod)) = event else {
                continue;
            };
            let Some(node) = pod.spec.as_ref().and_then(|s| s.node_name.clone()) else {
                continue;
            };
            let ready = pod
                .status
                .as_ref()
                .and_then(|s| s.conditions.as_ref())
                .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"));
            if ready
                || pod.metadata.deletion_timestamp.is_some()
                || !live.lock().unwrap().contains(&node)
            {
                continue;
            }
            let ip = format!("127.0.9.{}", next_ip.fetch_add(1, Ordering::SeqCst));
            let status = serde_json::json!({"status": {
                "phase": "Running", "podIP": ip, "hostIP": "127.0.0.1",
                "conditions": [{"type": "Ready", "status": "True"}],
                "containerStatuses": [{"name": "instance", "ready": true, "restartCount": 0,
                    "image": "dilu:test", "imageID": "", "state": {"running": {}}}],
            }});
            let _ = pods
                .patch_status(
                    &pod.name_any(),
                    &PatchParams::default(),
                    &Patch::Merge(status),
                )
                .await;
        }
    });
}

fn on_node<'a>(pods: &'a [Pod], node: &str) -> Vec<&'a Pod> {
    pods.iter()
        .filter(|p| p.spec.as_ref().and_then(|s| s.node_name.as_deref()) == Some(node))
        .collect()
}

fn is_ready(p: &Pod) -> bool {
    dilu_k8s::backend::pod_phase(p) == dilu_api::agent::InstancePhase::Ready
}

fn serving(p: &Pod) -> bool {
    p.labels().get(meta::SERVING).map(String::as_str) == Some("true")
}

/// The runtime is shut down without waiting for blocking work the controller may leave behind (a runtime
/// dropped the usual way waits for it, and a failing test would hang instead of failing).
#[test]
fn the_pods_of_a_node_whose_lease_runs_out_are_replaced_on_a_live_node() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let result =
        std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| rt.block_on(node_loss())));
    rt.shutdown_timeout(Duration::from_secs(5));
    if let Err(panic) = result {
        std::panic::resume_unwind(panic);
    }
}

async fn node_loss() {
    let Some(api) = ApiServer::start().await else {
        return;
    };
    let crd = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../deploy/crd.yaml");
    let applied = api
        .kubectl_async(&["apply", "-f", crd.to_str().expect("a UTF-8 path")])
        .await;
    assert!(
        applied.status.success(),
        "{}",
        String::from_utf8_lossy(&applied.stderr)
    );
    let established = api
        .kubectl_async(&[
            "wait",
            "--for=condition=Established",
            "--timeout=30s",
            "crd/functions.dilu.io",
        ])
        .await;
    assert!(
        established.status.success(),
        "{}",
        String::from_utf8_lossy(&established.stderr)
    );
    let client = api.client();
    let ns: Namespace = serde_json::from_value(serde_json::json!({
        "apiVersion": "v1", "kind": "Namespace", "metadata": {"name": meta::NODE_LEASE_NAMESPACE}
    }))
    .unwrap();
    Api::<Namespace>::all(client.clone())
        .create(&PostParams::default(), &ns)
        .await
        .unwrap();

    // Node A only at first, so that the instances start there; its agent renews its Lease.
    fake_node(&client, "node-a", &fake_devices("node-a", 0), 0)
        .await
        .unwrap();
    let a_alive = Arc::new(AtomicBool::new(true));
    let a_renewed = Arc::new(Mutex::new(None));
    renew_lease(client.clone(), "node-a", a_alive.clone(), a_renewed.clone());
    let live = Arc::new(Mutex::new(BTreeSet::from(["node-a".to_string()])));
    kubelets(client.clone(), live.clone());

    // Every pod deletion, with the pod as it was last stored.
    let pods: Api<Pod> = Api::namespaced(client.clone(), NS);
    let deleted: Arc<Mutex<BTreeMap<String, Pod>>> = Arc::default();
    {
        let (pods, deleted) = (pods.clone(), deleted.clone());
        tokio::spawn(async move {
            let mut events = std::pin::pin!(watcher(pods, watcher::Config::default()));
            while let Some(event) = events.next().await {
                if let Ok(Event::Delete(p)) = event {
                    deleted.lock().unwrap().insert(p.name_any(), p);
                }
            }
        });
    }

    let (stop_scheduler, stopped) = oneshot::channel::<()>();
    let config = SchedulerConfig {
        namespace: Some(NS.into()),
        ..SchedulerConfig::default()
    };
    let scheduler = tokio::spawn(scheduler::run(client.clone(), config, async move {
        let _ = stopped.await;
    }));
    let (stop_controller, stopped) = oneshot::channel::<()>();
    let options = ControllerOptions::new(NS, "dilu:test");
    let controller = tokio::spawn(controller::run(
        client.clone(),
        options,
        Arc::new(NoLoad),
        async move {
            let _ = stopped.await;
        },
    ));
    let gateway = KubeEndpoints::start(client.clone(), NS);
    let routes = gateway.routes();

    // Quota and capacity given: nothing to profile (there is no instance to measure).
    let spec = dilu_api::parse_spec(
        "name: ocr\nkind: inference\nmodel: {path: /m.onnx}\nslo_ms: 100\n\
         quota: {request: 0.25, limit: 0.5}\nscaling: {min_instances: 2, max_instances: 2, capacity_rps: 10}\n",
        dilu_api::SpecFormat::Yaml,
    )
    .unwrap();
    let function = Function::new(NS, &spec).unwrap();
    let functions: Api<Function> = Api::namespaced(client.clone(), NS);
    eventually(
        "the Function to be created",
        Duration::from_secs(20),
        || {
            let (functions, function) = (functions.clone(), function.clone());
            async move {
                functions
                    .create(&PostParams::default(), &function)
                    .await
                    .ok()
            }
        },
    )
    .await;

    // Two instances on A, ready, serving, routed by the gateway.
    let on_a: Vec<String> = eventually(
        "two serving pods on node A",
        Duration::from_secs(60),
        || {
            let pods = pods.clone();
            async move {
                let list = pods.list(&ListParams::default()).await.ok()?.items;
                let a = on_node(&list, "node-a");
                (list.len() == 2 && a.len() == 2 && a.iter().all(|p| is_ready(p) && serving(p)))
                    .then(|| a.iter().map(|p| p.name_any()).collect())
            }
        },
    )
    .await;
    eventually("the gateway to route both", Duration::from_secs(20), || {
        let n = routes
            .borrow()
            .iter()
            .map(|r| r.endpoints.len())
            .sum::<usize>();
        async move { (n == 2).then_some(()) }
    })
    .await;

    // Node B joins; then A's agent dies with its node.
    fake_node(&client, "node-b", &fake_devices("node-b", 0), 0)
        .await
        .unwrap();
    live.lock().unwrap().insert("node-b".into());
    renew_lease(
        client.clone(),
        "node-b",
        Arc::new(AtomicBool::new(true)),
        Arc::default(),
    );
    tokio::time::sleep(Duration::from_millis(1500)).await;
    a_alive.store(false, Ordering::SeqCst);
    live.lock().unwrap().remove("node-a");
    // The renewal in flight, if any, lands within this.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let last = a_renewed.lock().unwrap().expect("A's Lease was renewed");
    let expiry = last + k8s_openapi::jiff::SignedDuration::from_secs(i64::from(LEASE_SECONDS));
    let since_expiry = || {
        let ms = Timestamp::now().duration_since(expiry).as_secs_f64() * 1000.0;
        format!("{ms:.0} ms")
    };

    let mut gone_at = None;
    let mut unrouted_at = None;
    let mut replaced_at = None;
    let deadline = Instant::now() + Duration::from_secs(60);
    while gone_at.is_none() || unrouted_at.is_none() || replaced_at.is_none() {
        assert!(
            Instant::now() < deadline,
            "timed out: A's pods gone {gone_at:?}, unrouted {unrouted_at:?}, replaced {replaced_at:?}"
        );
        let list = pods.list(&ListParams::default()).await.unwrap().items;
        let names: BTreeSet<String> = list.iter().map(|p| p.name_any()).collect();
        if gone_at.is_none() && on_a.iter().all(|n| !names.contains(n)) {
            gone_at = Some(since_expiry());
        }
        let routed_on_a = routes
            .borrow()
            .iter()
            .flat_map(|r| r.endpoints.iter())
            .any(|e| on_a.contains(&e.instance));
        if unrouted_at.is_none() && !routed_on_a {
            unrouted_at = Some(since_expiry());
        }
        let b = on_node(&list, "node-b");
        if replaced_at.is_none() && b.len() == 2 && b.iter().all(|p| is_ready(p)) {
            replaced_at = Some(since_expiry());
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    println!(
        "after A's Lease ran out: gateway stopped routing to A in {}, A's pods deleted in {}, replacements Ready on B in {}",
        unrouted_at.unwrap_or_default(),
        gone_at.unwrap_or_default(),
        replaced_at.unwrap_or_default()
    );

    // Each of A's pods lost its serving label before it was deleted; nothing is left on A, two run on B.
    {
        let deleted = deleted.lock().unwrap();
        for name in &on_a {
            let last = deleted
                .get(name)
                .unwrap_or_else(|| panic!("{name} deleted"));
            assert!(
                !serving(last),
                "{name} was deleted while still labelled serving"
            );
        }
    }
    // Each says why in `kubectl describe pod`.
    for name in &on_a {
        let event = event_for(&client, NS, name, "NodeLost", Duration::from_secs(10)).await;
        assert_eq!(event.type_.as_deref(), Some("Warning"));
        let message = event.message.unwrap_or_default();
        assert!(
            message.contains("node node-a's agent stopped renewing its Lease"),
            "{message}"
        );
    }
    let list = pods.list(&ListParams::default()).await.unwrap().items;
    assert!(on_node(&list, "node-a").is_empty());
    let b = on_node(&list, "node-b");
    assert_eq!(b.len(), 2);
    for p in &b {
        let assignment = meta::Assignment::parse(
            &p.name_any(),
            p.annotations()
                .get(meta::ASSIGNMENT)
                .expect("an assignment"),
        )
        .unwrap();
        assert_eq!(assignment.node, "node-b");
    }
    // The gateway routes the replacements.
    eventually(
        "the gateway to route the replacements",
        Duration::from_secs(20),
        || {
            let routed: BTreeSet<String> = routes
                .borrow()
                .iter()
                .flat_map(|r| r.endpoints.iter().map(|e| e.instance.clone()))
                .collect();
            let want: BTreeSet<String> = b.iter().map(|p| p.name_any()).collect();
            async move { (routed == want).then_some(()) }
        },
    )
    .await;

    let _ = stop_scheduler.send(());
    scheduler.await.unwrap().unwrap();
    let _ = stop_controller.send(());
    if let Ok(stopped) = tokio::time::timeout(Duration::from_secs(5), controller).await {
        stopped.unwrap().unwrap();
    }
}
