//! Node selectors, required node affinity and taints: dilu-scheduler decides which nodes a pod may run on
//! exactly as the real kube-scheduler 1.20 does. Four Nodes with labels and taints (NoSchedule, NoExecute,
//! PreferNoSchedule), thirteen sets of constraints written into pods the way the controller writes them
//! (`dilu_k8s::scheduling::write_pod_spec`); each set is tried on each node by pinning a copy of the pod to it
//! (a `metadata.name In [node]` field added to every term), once for kube-scheduler and once for
//! dilu-scheduler, and the two 13 × 4 tables of "bound / unschedulable" must be equal. Skipped (with
//! `SKIPPED: …`) where the binaries are missing; build them with `bash scripts/build-kube.sh`.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use dilu_core::InstanceKind;
use dilu_core::ledger::DeviceClass;
use dilu_core::scheduling::{
    NodeSelectorTerm, PlacementRules, Requirement, SelectorOperator, TaintEffect, Toleration,
    TolerationOperator,
};
use dilu_k8s::meta::{self, PodBooking};
use dilu_k8s::scheduler::{self, SchedulerConfig};
use dilu_k8s_testkit::{ApiServer, KUBE_SCHEDULER_USER, KubeScheduler, fake_devices, fake_node};
use k8s_openapi::api::core::v1::{Container, Namespace, Node, Pod, PodSpec};
use kube::api::{Api, ListParams, ObjectMeta, Patch, PatchParams, PostParams};
use kube::{Client, ResourceExt};

const NS: &str = "constraints";

fn req(key: &str, operator: SelectorOperator, values: &[&str]) -> Requirement {
    Requirement {
        key: key.into(),
        operator,
        values: values.iter().map(|v| v.to_string()).collect(),
    }
}

fn tol(
    key: &str,
    operator: TolerationOperator,
    value: &str,
    effect: Option<TaintEffect>,
) -> Toleration {
    Toleration {
        key: key.into(),
        operator,
        value: value.into(),
        effect,
    }
}

fn term(exprs: Vec<Requirement>) -> NodeSelectorTerm {
    NodeSelectorTerm {
        match_expressions: exprs,
        match_fields: Vec::new(),
    }
}

/// The constraint sets, each with a short name.
fn cases() -> Vec<(&'static str, PlacementRules)> {
    use SelectorOperator::*;
    use TaintEffect::*;
    use TolerationOperator::{Equal, Exists as Any};
    let c = |node_selector: &[(&str, &str)],
             node_affinity: Vec<NodeSelectorTerm>,
             tolerations: Vec<Toleration>| {
        PlacementRules {
            node_selector: node_selector
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            node_affinity,
            tolerations,
            spread: None,
        }
    };
    vec![
        ("none", c(&[], vec![], vec![])),
        ("zone-b", c(&[("zone", "b")], vec![], vec![])),
        (
            "zone-b-tolerates-ml",
            c(
                &[("zone", "b")],
                vec![],
                vec![tol("dedicated", Equal, "ml", None)],
            ),
        ),
        (
            "tolerates-all",
            c(&[], vec![], vec![tol("", Any, "", None)]),
        ),
        (
            "gpus-gt-4",
            c(&[], vec![term(vec![req("gpus", Gt, &["4"])])], vec![]),
        ),
        (
            "gpus-lt-4-tolerates-dedicated",
            c(
                &[],
                vec![term(vec![req("gpus", Lt, &["4"])])],
                vec![tol("dedicated", Any, "", Some(NoSchedule))],
            ),
        ),
        (
            "not-a-or-c-or-spare",
            c(
                &[],
                vec![
                    term(vec![req("zone", NotIn, &["a", "c"])]),
                    term(vec![req("spare", Exists, &[])]),
                ],
                vec![tol("gpu", Any, "", Some(NoExecute))],
            ),
        ),
        (
            "zone-c-twice",
            c(
                &[("zone", "c")],
                vec![term(vec![req("zone", In, &["c"])])],
                vec![],
            ),
        ),
        (
            "no-missing-label",
            c(
                &[],
                vec![term(vec![req("missing", DoesNotExist, &[])])],
                vec![tol("dedicated", Any, "", None), tol("gpu", Any, "", None)],
            ),
        ),
        (
            "wrong-value",
            c(&[], vec![], vec![tol("dedicated", Equal, "web", None)]),
        ),
        (
            "wrong-effect",
            c(
                &[],
                vec![],
                vec![tol("dedicated", Any, "", Some(NoExecute))],
            ),
        ),
        (
            "not-n0-tolerates-all",
            c(
                &[],
                vec![NodeSelectorTerm {
                    match_expressions: Vec::new(),
                    match_fields: vec![req("metadata.name", NotIn, &["n0"])],
                }],
                vec![tol("", Any, "", None)],
            ),
        ),
        (
            "zone-b-tolerates-any-no-schedule",
            c(
                &[],
                vec![term(vec![req("zone", In, &["b"])])],
                vec![tol("", Any, "", Some(NoSchedule))],
            ),
        ),
    ]
}

/// `constraints` with every term (or one new term) also requiring the node to be `node`.
fn pinned(constraints: &PlacementRules, node: &str) -> PlacementRules {
    let pin = req("metadata.name", SelectorOperator::In, &[node]);
    let mut c = constraints.clone();
    if c.node_affinity.is_empty() {
        c.node_affinity.push(NodeSelectorTerm::default());
    }
    for t in &mut c.node_affinity {
        t.match_fields.push(pin.clone());
    }
    c
}

/// A pod for `scheduler` with the constraints; a Dilu pod also carries a small booking.
fn pod(name: &str, constraints: &PlacementRules, dilu: bool) -> Pod {
    let mut spec = PodSpec {
        scheduler_name: Some(
            if dilu {
                meta::SCHEDULER_NAME
            } else {
                "default-scheduler"
            }
            .into(),
        ),
        containers: vec![Container {
            name: "c".into(),
            image: Some("example.invalid/none".into()),
            ..Container::default()
        }],
        ..PodSpec::default()
    };
    dilu_k8s::scheduling::write_pod_spec(constraints, &mut spec);
    let booking = PodBooking {
        kind: InstanceKind::Inference,
        sm_request: 10,
        sm_limit: 10,
        gpu_mem_mib: 1,
        device: DeviceClass::Gpu,
    };
    Pod {
        metadata: ObjectMeta {
            name: Some(name.into()),
            labels: dilu.then(|| [(meta::FUNCTION.to_string(), "f".to_string())].into()),
            annotations: dilu.then(|| {
                [(
                    meta::BOOKING.to_string(),
                    serde_json::to_string(&booking).unwrap(),
                )]
                .into()
            }),
            ..ObjectMeta::default()
        },
        spec: Some(spec),
        status: None,
    }
}

fn unschedulable(pod: &Pod) -> bool {
    pod.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|c| {
            c.iter().any(|c| {
                c.type_ == "PodScheduled"
                    && c.status == "False"
                    && c.reason.as_deref() == Some("Unschedulable")
            })
        })
}

/// Waits until every pod named `prefix…` is bound or unschedulable; returns name → bound node.
async fn outcomes(pods: &Api<Pod>, prefix: &str, count: usize) -> BTreeMap<String, Option<String>> {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let list: Vec<Pod> = pods
            .list(&ListParams::default())
            .await
            .unwrap()
            .items
            .into_iter()
            .filter(|p| p.name_any().starts_with(prefix))
            .collect();
        let node = |p: &Pod| p.spec.as_ref().and_then(|s| s.node_name.clone());
        let decided = list
            .iter()
            .filter(|p| node(p).is_some() || unschedulable(p))
            .count();
        if list.len() == count && decided == count {
            return list.iter().map(|p| (p.name_any(), node(p))).collect();
        }
        assert!(
            Instant::now() < deadline,
            "{prefix}: {decided} of {count} pods decided within 120 s"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

async fn label_and_taint(
    client: &Client,
    name: &str,
    labels: serde_json::Value,
    taints: serde_json::Value,
) {
    Api::<Node>::all(client.clone())
        .patch(
            name,
            &PatchParams::default(),
            &Patch::Merge(
                serde_json::json!({"metadata": {"labels": labels}, "spec": {"taints": taints}}),
            ),
        )
        .await
        .unwrap();
}

async fn namespace(client: &Client) {
    let ns: Namespace =
        serde_json::from_value(serde_json::json!({"metadata": {"name": NS}})).unwrap();
    Api::<Namespace>::all(client.clone())
        .create(&PostParams::default(), &ns)
        .await
        .unwrap();
}

/// dilu-scheduler placing the pods of [`NS`] until [`Running::stop`].
struct Running {
    stop: tokio::sync::oneshot::Sender<()>,
    task: tokio::task::JoinHandle<Result<(), scheduler::SchedulerError>>,
}

impl Running {
    fn start(api: &ApiServer) -> Running {
        let config = SchedulerConfig {
            namespace: Some(NS.into()),
            ..SchedulerConfig::default()
        };
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(scheduler::run(
            api.client_as(KUBE_SCHEDULER_USER),
            config,
            async {
                let _ = stopped.await;
            },
        ));
        Running { stop, task }
    }

    async fn stop(self) {
        let _ = self.stop.send(());
        self.task.await.unwrap().unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dilu_scheduler_allows_exactly_the_nodes_kube_scheduler_allows() {
    let Some(api) = ApiServer::start().await else {
        return;
    };
    let client = api.client();
    namespace(&client).await;
    let nodes = ["n0", "n1", "n2", "n3"];
    for n in nodes {
        fake_node(&client, n, &fake_devices(n, 1), 1).await.unwrap();
    }
    use serde_json::json;
    label_and_taint(&client, "n0", json!({"zone": "a", "gpus": "8"}), json!([])).await;
    label_and_taint(
        &client,
        "n1",
        json!({"zone": "b", "gpus": "2"}),
        json!([{"key": "dedicated", "value": "ml", "effect": "NoSchedule"}]),
    )
    .await;
    label_and_taint(
        &client,
        "n2",
        json!({"zone": "b", "spare": "yes"}),
        json!([{"key": "gpu", "effect": "NoExecute"}]),
    )
    .await;
    label_and_taint(
        &client,
        "n3",
        json!({"zone": "c", "gpus": "x"}),
        json!([{"key": "soft", "effect": "PreferNoSchedule"}]),
    )
    .await;

    let pods: Api<Pod> = Api::namespaced(client.clone(), NS);
    let cases = cases();
    let name = |who: &str, i: usize, node: &str| format!("{who}-{i:02}-{node}");
    let create = |who: &'static str, dilu: bool| {
        let pods = pods.clone();
        let cases = cases.clone();
        async move {
            for (i, (_, c)) in cases.iter().enumerate() {
                for n in nodes {
                    pods.create(
                        &PostParams::default(),
                        &pod(&name(who, i, n), &pinned(c, n), dilu),
                    )
                    .await
                    .unwrap_or_else(|e| panic!("creating {}: {e}", name(who, i, n)));
                }
            }
        }
    };
    let count = cases.len() * nodes.len();

    let kube = KubeScheduler::start(&api, 100.0, 200).await;
    create("kube", false).await;
    let by_kube = outcomes(&pods, "kube-", count).await;
    drop(kube);

    let dilu = Running::start(&api);
    create("dilu", true).await;
    let by_dilu = outcomes(&pods, "dilu-", count).await;
    dilu.stop().await;

    let mut table = String::from(
        "case                               n0 n1 n2 n3   (K kube-scheduler, D dilu-scheduler)\n",
    );
    let mut disagreements = Vec::new();
    let mut allowed = 0;
    for (i, (case, _)) in cases.iter().enumerate() {
        table.push_str(&format!("{case:<34}"));
        for n in nodes {
            let k = by_kube[&name("kube", i, n)].clone();
            let d = by_dilu[&name("dilu", i, n)].clone();
            // A bound pod is on the node it was pinned to.
            for bound in [&k, &d].into_iter().flatten() {
                assert_eq!(bound, n, "case {case}: pinned to {n}, bound to {bound}");
            }
            allowed += usize::from(k.is_some());
            let mark = |o: &Option<String>, c: char| if o.is_some() { c } else { '.' };
            table.push_str(&format!(" {}{}", mark(&k, 'K'), mark(&d, 'D')));
            if k.is_some() != d.is_some() {
                disagreements.push(format!("{case} on {n}: kube {k:?}, dilu {d:?}"));
            }
        }
        table.push('\n');
    }
    eprintln!("{table}");
    assert!(
        disagreements.is_empty(),
        "disagreements:\n{}\n{table}",
        disagreements.join("\n")
    );
    // The cases are not trivial: each scheduler allowed some pairs and refused others.
    assert!(
        allowed > 10 && allowed < count - 10,
        "{allowed} of {count} allowed\n{table}"
    );
    // Each refusal was said on the pod, with dilu-scheduler's reasons counted per node.
    let refused = pods.get(&name("dilu", 1, "n0")).await.unwrap();
    let message = refused
        .status
        .and_then(|s| s.conditions)
        .and_then(|c| c.into_iter().find(|c| c.type_ == "PodScheduled"))
        .and_then(|c| c.message)
        .unwrap_or_default();
    assert!(
        message.contains("0/4 nodes with a gpu device are available to it")
            && message.contains("didn't match the node selector")
            && message.contains("had the taint dedicated=ml:NoSchedule, not tolerated"),
        "{message}"
    );
}

/// A function's spread (the `dilu.io/spread` annotation the controller writes): dilu-scheduler puts one replica
/// on each node before any node takes a second, where without it Dilu's best fit packs them on one GPU.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_with_a_spread_go_one_per_node_and_without_it_pack() {
    let Some(api) = ApiServer::start().await else {
        return;
    };
    let client = api.client();
    namespace(&client).await;
    for n in ["s0", "s1", "s2"] {
        fake_node(&client, n, &fake_devices(n, 2), 2).await.unwrap();
    }
    let pods: Api<Pod> = Api::namespaced(client.clone(), NS);
    let dilu = Running::start(&api);
    let spread = serde_json::json!({"across": "node", "max_skew": 1, "required": true}).to_string();
    for i in 0..3 {
        let mut packed = pod(&format!("packed-{i}"), &PlacementRules::default(), true);
        packed
            .metadata
            .labels
            .as_mut()
            .unwrap()
            .insert(meta::FUNCTION.into(), "p".into());
        pods.create(&PostParams::default(), &packed).await.unwrap();
        let mut spread_pod = pod(&format!("spread-{i}"), &PlacementRules::default(), true);
        spread_pod
            .metadata
            .annotations
            .as_mut()
            .unwrap()
            .insert(meta::SPREAD.into(), spread.clone());
        pods.create(&PostParams::default(), &spread_pod)
            .await
            .unwrap();
    }
    let packed = outcomes(&pods, "packed-", 3).await;
    let spread_out = outcomes(&pods, "spread-", 3).await;
    dilu.stop().await;
    let nodes = |o: &BTreeMap<String, Option<String>>| {
        o.values()
            .map(|n| n.clone().expect("bound"))
            .collect::<std::collections::BTreeSet<_>>()
    };
    assert_eq!(nodes(&packed).len(), 1, "best fit packs: {packed:?}");
    assert_eq!(nodes(&spread_out).len(), 3, "one per node: {spread_out:?}");
}
