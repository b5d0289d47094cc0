//! Dilu on a real Kubernetes API server (kube-apiserver 1.20 and etcd on loopback, `scripts/build-kube.sh`):
//! `dilu kube controller`, `dilu kube scheduler` and `dilu gateway --kubernetes` as processes, the PaddleOCR
//! example applied with kubectl, and the test kit's node runner standing in for the kubelet (no kubelet or
//! container runtime here: it runs each bound pod's container command as a local process on a loopback
//! address of its own). Without the binaries the tests print SKIPPED (and fail under `CI=true`).

mod common;
#[path = "common/kube.rs"]
mod harness;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::platform::{argmax, ensure_models, output_data};
use dilu_core::ledger::Ledger;
use dilu_core::policy::{Policy, PolicyName};
use dilu_k8s::meta::{self, Assignment, PodBooking};
use dilu_k8s_testkit::{ApiServer, event_for};
use harness::{Cluster, Load, metric, metrics_url, ready_pods, repo, wait_until};
use k8s_openapi::api::core::v1::{Node, Pod};
use kube::api::ListParams;
use kube::{Api, ResourceExt};
use serde::Deserialize;
use serde_json::Value;

/// The PaddleOCR example with its model path expanded (what `envsubst` does before `kubectl apply`) and a
/// shorter scaling window so that the test sees a scale-out and back within a minute.
fn ocr_manifest(cache: &Path, dir: &Path) -> PathBuf {
    let text = std::fs::read_to_string(repo("examples/ocr-cls.yaml")).unwrap();
    let text = text.replace("${DILU_MODEL_CACHE}", &cache.display().to_string());
    let text = text.replace(
        "    max_instances: 2\n",
        "    max_instances: 2\n    lazy: {window: 8, out_votes: 4, in_votes: 6}\n",
    );
    assert!(
        text.contains("lazy:"),
        "the example's scaling section changed: {text}"
    );
    let path = dir.join("ocr-cls.yaml");
    std::fs::write(&path, text).unwrap();
    path
}

/// What the registry's placer gives for these pods, in creation order, on the nodes' inventory.
async fn placer_assignments(api: &ApiServer, pods: &[Pod]) -> Vec<Assignment> {
    let nodes: Api<Node> = Api::all(api.client());
    let inventory: Vec<_> = nodes
        .list(&ListParams::default())
        .await
        .unwrap()
        .items
        .iter()
        .filter_map(|n| {
            let name = n.metadata.name.clone()?;
            let text = n.metadata.annotations.as_ref()?.get(meta::INVENTORY)?;
            meta::node_inventory(&name, text).ok()
        })
        .collect();
    let mut ledger = Ledger::new(&inventory, Policy::named(PolicyName::Dilu).placer()).unwrap();
    let mut sorted: Vec<&Pod> = pods.iter().collect();
    sorted.sort_by_key(|p| {
        (
            p.metadata.creation_timestamp.clone().map(|t| t.0),
            p.metadata.name.clone(),
        )
    });
    sorted
        .iter()
        .map(|p| {
            let name = p.metadata.name.clone().unwrap();
            let a = p.metadata.annotations.as_ref().unwrap();
            let booking = PodBooking::parse(&name, &a[meta::BOOKING]).unwrap();
            let function = &p.metadata.labels.as_ref().unwrap()[meta::FUNCTION];
            Assignment::of(
                &ledger
                    .place(&name, &booking.request(function), booking.device)
                    .unwrap(),
            )
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn paddleocr_function_through_kubectl_scheduler_gateway_and_scaling() {
    let Some(cache) = ensure_models() else { return };
    let Some(cluster) = Cluster::start(2).await else {
        return;
    };
    let serving = cluster.serving();
    let url = serving.url.clone();
    let logs = || serving.logs();

    let started = Instant::now();
    let manifest = ocr_manifest(&cache, cluster.dir.path());
    cluster.kubectl(&["apply", "-f", &manifest.display().to_string()]);

    // Profiled on a live pod, then serving: the status says so.
    let f = wait_until(
        "ocr-cls running with a ready pod",
        Duration::from_secs(180),
        logs,
        || cluster.running("ocr-cls"),
    )
    .await;
    let ready_after = started.elapsed();
    let status = f.status.clone().unwrap();
    println!(
        "ocr-cls running {:.1} s after kubectl apply: quota {:?}, batch {:?}, capacity {:?} req/s, url {:?}",
        ready_after.as_secs_f64(),
        status.quota,
        status.batch,
        status.capacity_rps,
        status.url
    );
    assert!(status.quota.is_some(), "{status:?}");
    assert!(
        f.metadata
            .finalizers
            .iter()
            .flatten()
            .any(|x| x == meta::FINALIZER),
        "the controller keeps its finalizer on the function"
    );
    assert_eq!(
        status.url.as_deref(),
        Some(format!("{url}/v2/models/ocr-cls/infer").as_str())
    );

    // Every pod was bound by dilu-scheduler, where the registry's placer puts it on the same inventory.
    let pods = cluster.pods("ocr-cls").await;
    for p in &pods {
        let spec = p.spec.as_ref().unwrap();
        assert_eq!(spec.scheduler_name.as_deref(), Some("dilu-scheduler"));
        let a = Assignment::parse(
            "p",
            &p.metadata.annotations.as_ref().unwrap()[meta::ASSIGNMENT],
        )
        .unwrap();
        assert_eq!(spec.node_name.as_deref(), Some(a.node.as_str()));
        assert!(cluster.nodes.contains(&a.node));
    }
    let expected = placer_assignments(&cluster.api, &pods).await;
    let mut actual: Vec<(Option<_>, Assignment)> = pods
        .iter()
        .map(|p| {
            (
                p.metadata.creation_timestamp.clone().map(|t| t.0),
                Assignment::parse(
                    "p",
                    &p.metadata.annotations.as_ref().unwrap()[meta::ASSIGNMENT],
                )
                .unwrap(),
            )
        })
        .collect();
    actual.sort_by_key(|(t, _)| *t);
    let actual: Vec<Assignment> = actual.into_iter().map(|(_, a)| a).collect();
    assert_eq!(actual, expected, "dilu-scheduler agrees with the placer");

    // Inference through the gateway: upright text is class 0, flipped text class 1.
    let client = reqwest::Client::builder().no_proxy().build().unwrap();
    let infer = format!("{url}/v2/models/ocr-cls/infer");
    for (input, class) in [("text-upright.json", 0), ("text-flipped.json", 1)] {
        let body = std::fs::read(cache.join("inputs").join(input)).unwrap();
        let r = client
            .post(&infer)
            .header("content-type", "application/json")
            .body(body)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status().as_u16(), 200, "{input}");
        let v: Value = r.json().await.unwrap();
        assert_eq!(argmax(&output_data(&v)), class, "{input}: {v}");
    }

    // A load step past one pod's capacity: a second pod appears, and goes once the load is gone.
    let capacity = status.capacity_rps.unwrap_or(10.0).max(1.0);
    let rate = (1.5 * capacity).min(300.0);
    let upright = std::fs::read(cache.join("inputs/text-upright.json")).unwrap();
    let step = Instant::now();
    let load = Load::start(infer.clone(), upright, rate);
    wait_until(
        "a second ready pod under the load step",
        Duration::from_secs(60),
        logs,
        || async { (ready_pods(&cluster.pods("ocr-cls").await) >= 2).then_some(()) },
    )
    .await;
    let scaled_out = step.elapsed();
    let statuses = load.finish().await;
    let quiet = Instant::now();
    wait_until(
        "back to one pod after the load",
        Duration::from_secs(60),
        logs,
        || async {
            let pods = cluster.pods("ocr-cls").await;
            (pods.len() == 1).then_some(())
        },
    )
    .await;
    println!(
        "load step {rate:.1} req/s (capacity {capacity:.1}): second pod ready after {:.1} s; answers by status {statuses:?}; back to one pod {:.1} s after the load stopped",
        scaled_out.as_secs_f64(),
        quiet.elapsed().as_secs_f64()
    );
    // Overload may be refused with 429 (the queue is bounded); nothing else may fail: no request goes to a pod
    // that is not ready or already stopping.
    let failed: u64 = statuses
        .iter()
        .filter(|(s, _)| !matches!(**s, 200 | 429))
        .map(|(_, n)| n)
        .sum();
    assert_eq!(failed, 0, "answers by status: {statuses:?}");

    // What happened is in `kubectl describe`: the controller's decisions on the Function (written with the
    // RBAC of deploy/rbac.yaml), the scheduler's bind on each pod.
    for reason in ["Deployed", "Profiled", "ScaledOut", "ScaledIn"] {
        let event = event_for(
            &cluster.api.client(),
            "default",
            "ocr-cls",
            reason,
            Duration::from_secs(20),
        )
        .await;
        assert_eq!(
            event.involved_object.kind.as_deref(),
            Some("Function"),
            "{reason}"
        );
        assert_eq!(event.involved_object.uid, f.metadata.uid, "{reason}");
        assert_eq!(
            event.reporting_component.as_deref(),
            Some("dilu.io/controller")
        );
    }
    // Both serve their metrics: the controller's decisions and start-up times, the scheduler's binds.
    let control = metrics_url(&serving.controller);
    let sched = metrics_url(&serving.scheduler);
    assert_eq!(
        metric(&control, "dilu_kube_leader{component=\"controller\"}").await,
        Some(1.0)
    );
    let outs = metric(
        &control,
        "dilu_control_scaling_actions_total{function=\"ocr-cls\",direction=\"out\"}",
    )
    .await;
    assert!(outs >= Some(1.0), "{outs:?}");
    let started = metric(
        &control,
        "dilu_control_instance_startup_seconds_count{function=\"ocr-cls\"}",
    )
    .await;
    assert!(started >= Some(2.0), "{started:?}");
    let binds = metric(&sched, "dilu_scheduler_binds_total").await;
    assert!(binds >= Some(2.0), "{binds:?}");
    let events = metric(&sched, "dilu_kube_events_total{result=\"created\"}").await;
    assert!(events >= Some(2.0), "{events:?}");
    assert_eq!(
        metric(&sched, "dilu_kube_events_total{result=\"failed\"}").await,
        Some(0.0)
    );
    let described = cluster.kubectl(&["describe", "function", "ocr-cls"]);
    assert!(
        described.contains("ScaledOut") && described.contains("Profiled"),
        "kubectl describe function:\n{described}"
    );
    let pod = cluster.pods("ocr-cls").await.remove(0);
    let scheduled = event_for(
        &cluster.api.client(),
        "default",
        &pod.name_any(),
        "Scheduled",
        Duration::from_secs(20),
    )
    .await;
    let message = scheduled.message.unwrap_or_default();
    assert!(
        message.contains("Successfully assigned default/"),
        "{message}"
    );

    // kubectl delete: every pod goes, the finalizer is removed, no process is left.
    cluster.kubectl(&["delete", "function", "ocr-cls", "--wait=false"]);
    let deleting = Instant::now();
    wait_until(
        "the function object gone",
        Duration::from_secs(60),
        logs,
        || async { cluster.function("ocr-cls").await.is_none().then_some(()) },
    )
    .await;
    assert!(cluster.pods("ocr-cls").await.is_empty());
    wait_until(
        "no instance process left",
        Duration::from_secs(20),
        logs,
        || async { cluster.runner.running().is_empty().then_some(()) },
    )
    .await;
    println!(
        "kubectl delete function: object, pods and processes gone in {:.1} s",
        deleting.elapsed().as_secs_f64()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_standby_controller_and_scheduler_take_over_from_a_killed_leader() {
    let Some(cache) = ensure_models() else { return };
    let Some(cluster) = Cluster::start(2).await else {
        return;
    };
    let mut controllers = [
        cluster.controller("c1", None),
        cluster.controller("c2", None),
    ];
    let mut schedulers = [cluster.scheduler("s1"), cluster.scheduler("s2")];
    let leases: Api<k8s_openapi::api::coordination::v1::Lease> =
        Api::namespaced(cluster.api.client(), "dilu-system");
    let holder = |name: &'static str| {
        let leases = leases.clone();
        async move {
            leases
                .get_opt(name)
                .await
                .ok()
                .flatten()
                .and_then(|l| l.spec?.holder_identity)
        }
    };
    let logs = || String::new();
    let leader_c = wait_until("a controller leads", Duration::from_secs(30), logs, || {
        holder("dilu-controller")
    })
    .await;
    let leader_s = wait_until("a scheduler leads", Duration::from_secs(30), logs, || {
        holder("dilu-scheduler")
    })
    .await;
    // Each says whether it leads.
    let ci = if leader_c == "c1" { 0 } else { 1 };
    let si = if leader_s == "s1" { 0 } else { 1 };
    let leading = |proc: &harness::Proc, component: &str| {
        let url = metrics_url(proc);
        let series = format!("dilu_kube_leader{{component=\"{component}\"}}");
        async move { metric(&url, &series).await }
    };
    // (The Lease names the leader a moment before its work starts.)
    wait_until(
        "the leaders' gauges at 1",
        Duration::from_secs(10),
        logs,
        || async {
            (leading(&controllers[ci], "controller").await == Some(1.0)
                && leading(&schedulers[si], "scheduler").await == Some(1.0))
            .then_some(())
        },
    )
    .await;
    assert_eq!(leading(&controllers[1 - ci], "controller").await, Some(0.0));
    assert_eq!(leading(&schedulers[1 - si], "scheduler").await, Some(0.0));

    // A deploy (quota given: no profiling) with two instances; kill both leaders as soon as the first pod exists.
    let manifest = ocr_manifest(&cache, cluster.dir.path());
    let text = std::fs::read_to_string(&manifest)
        .unwrap()
        .replace(
            "  slo_ms: 100\n",
            "  slo_ms: 100\n  quota: {request: 0.2, limit: 0.5}\n",
        )
        .replace("min_instances: 1", "min_instances: 2");
    std::fs::write(&manifest, text).unwrap();
    cluster.kubectl(&["apply", "-f", &manifest.display().to_string()]);
    wait_until("the first pod", Duration::from_secs(60), logs, || async {
        (!cluster.pods("ocr-cls").await.is_empty()).then_some(())
    })
    .await;
    let killed = Instant::now();
    controllers[ci].kill9();
    schedulers[si].kill9();
    let new_c = wait_until(
        "the standby controller leads",
        Duration::from_secs(60),
        || controllers[1 - ci].log(),
        || async { holder("dilu-controller").await.filter(|h| *h != leader_c) },
    )
    .await;
    let took_over = killed.elapsed();
    wait_until(
        "the standby's gauge at 1",
        Duration::from_secs(10),
        logs,
        || async { (leading(&controllers[1 - ci], "controller").await == Some(1.0)).then_some(()) },
    )
    .await;
    wait_until(
        "two ready pods",
        Duration::from_secs(120),
        || {
            format!(
                "{}\n{}",
                controllers[1 - ci].log(),
                schedulers[1 - si].log()
            )
        },
        || async { (ready_pods(&cluster.pods("ocr-cls").await) == 2).then_some(()) },
    )
    .await;
    let pods = cluster.pods("ocr-cls").await;
    let names: Vec<String> = pods
        .iter()
        .filter_map(|p| p.metadata.name.clone())
        .collect();
    if std::env::var_os("DILU_TEST_LOGS").is_some() {
        println!(
            "{}\n{}\n{}\n{}",
            controllers[0].log(),
            controllers[1].log(),
            schedulers[0].log(),
            schedulers[1].log()
        );
    }
    assert_eq!(pods.len(), 2, "no duplicate pod: {names:?}");
    assert!(
        cluster.function("ocr-cls").await.is_some(),
        "the function is not lost"
    );
    println!(
        "leaders {leader_c}/{leader_s} killed during the deploy: {new_c} leads after {:.1} s (lease 6 s); both pods ready {:.1} s after the kill: {names:?}",
        took_over.as_secs_f64(),
        killed.elapsed().as_secs_f64()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deploy_manifests_pass_a_server_side_dry_run() {
    let Some(api) = ApiServer::start().await else {
        return;
    };
    // The CRD and the namespace first (a dry run creates nothing that later objects could refer to).
    for file in ["deploy/crd.yaml", "deploy/namespace.yaml"] {
        let out = api.kubectl(&["apply", "-f", &repo(file)]);
        assert!(
            out.status.success(),
            "{file}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let out = api.kubectl(&[
        "wait",
        "--for=condition=Established",
        "crd/functions.dilu.io",
        "--timeout=60s",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // Replicated control-plane Deployments keep their replicas on different nodes where they can.
    let text = std::fs::read_to_string(repo("deploy/control-plane.yaml")).unwrap();
    for doc in serde_yaml::Deserializer::from_str(&text) {
        let value = serde_yaml::Value::deserialize(doc).unwrap();
        if value["kind"].as_str() != Some("Deployment") {
            continue;
        }
        let d: k8s_openapi::api::apps::v1::Deployment = serde_yaml::from_value(value).unwrap();
        let spec = d.spec.as_ref().unwrap();
        if spec.replicas.unwrap_or(1) < 2 {
            continue;
        }
        let name = d.metadata.name.clone().unwrap();
        let terms = spec
            .template
            .spec
            .as_ref()
            .and_then(|p| p.affinity.as_ref())
            .and_then(|a| a.pod_anti_affinity.as_ref())
            .and_then(|a| {
                a.preferred_during_scheduling_ignored_during_execution
                    .as_ref()
            })
            .unwrap_or_else(|| panic!("{name}: no pod anti-affinity"));
        let own = spec.selector.match_labels.clone();
        assert!(
            terms.iter().any(
                |t| t.pod_affinity_term.topology_key == "kubernetes.io/hostname"
                    && t.pod_affinity_term
                        .label_selector
                        .as_ref()
                        .is_some_and(|s| s.match_labels == own)
            ),
            "{name}: its anti-affinity does not spread its own replicas over nodes"
        );
    }
    let out = api.kubectl(&["apply", "--dry-run=server", "-f", &repo("deploy")]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for object in [
        "customresourcedefinition.apiextensions.k8s.io/functions.dilu.io",
        "clusterrole.rbac.authorization.k8s.io/dilu-controller",
        "deployment.apps/dilu-controller",
        "deployment.apps/dilu-scheduler",
        "deployment.apps/dilu-gateway",
        "service/dilu-gateway",
        "daemonset.apps/dilu-agent",
        "clusterrole.rbac.authorization.k8s.io/dilu-agent",
        "role.rbac.authorization.k8s.io/dilu-node-leases-reader",
    ] {
        assert!(
            stdout.contains(object),
            "{object} missing from the dry run:\n{stdout}"
        );
    }
    // The example specs are valid Function objects for the API server too.
    let cache = "/models";
    for example in [
        "examples/ocr-cls.yaml",
        "examples/squeezenet.yaml",
        "examples/mlp-train.yaml",
    ] {
        let text = std::fs::read_to_string(repo(example))
            .unwrap()
            .replace("${DILU_MODEL_CACHE}", cache);
        let path = std::env::temp_dir().join(format!("dilu-dry-run-{}.yaml", std::process::id()));
        std::fs::write(&path, text).unwrap();
        let out = api.kubectl(&[
            "apply",
            "--dry-run=server",
            "-f",
            &path.display().to_string(),
        ]);
        let _ = std::fs::remove_file(&path);
        assert!(
            out.status.success(),
            "{example}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_function_at_zero_starts_on_its_first_request_and_a_spec_change_rolls_its_pods() {
    let Some(cache) = ensure_models() else { return };
    let Some(cluster) = Cluster::start(1).await else {
        return;
    };
    let serving = cluster.serving();
    let url = serving.url.clone();
    let logs = || serving.logs();

    // SqueezeNet with its quota given, allowed to scale to zero, with a short scaling window.
    let text = std::fs::read_to_string(repo("examples/squeezenet.yaml"))
        .unwrap()
        .replace("${DILU_MODEL_CACHE}", &cache.display().to_string())
        .replace("min_instances: 1", "min_instances: 0")
        .replace(
            "    max_instances: 2\n",
            "    max_instances: 2\n    lazy: {window: 4, out_votes: 2, in_votes: 3}\n",
        );
    assert!(
        text.contains("min_instances: 0") && text.contains("lazy:"),
        "{text}"
    );
    let manifest = cluster.dir.path().join("squeezenet.yaml");
    std::fs::write(&manifest, &text).unwrap();
    cluster.kubectl(&["apply", "-f", &manifest.display().to_string()]);

    // With no traffic it goes to zero pods, and says so.
    let f = wait_until(
        "squeezenet at zero pods",
        Duration::from_secs(120),
        logs,
        || async {
            let f = cluster.function("squeezenet").await?;
            let ready = f
                .status
                .as_ref()?
                .conditions
                .iter()
                .find(|c| c.type_ == "Ready")?
                .clone();
            (cluster.pods("squeezenet").await.is_empty() && ready.reason == "ScaledToZero")
                .then_some(f)
        },
    )
    .await;
    assert_eq!(f.status.as_ref().unwrap().ready_instances, 0);

    // The first request waits while the gateway wakes the function (its wake annotation) and a pod starts.
    let client = reqwest::Client::builder().no_proxy().build().unwrap();
    let infer = format!("{url}/v2/models/squeezenet/infer");
    let body = std::fs::read(cache.join("inputs/squeezenet.json")).unwrap();
    let sent = Instant::now();
    let r = client
        .post(&infer)
        .header("content-type", "application/json")
        .body(body.clone())
        .send()
        .await
        .unwrap();
    let cold = sent.elapsed();
    assert_eq!(
        r.status().as_u16(),
        200,
        "{}",
        r.text().await.unwrap_or_default()
    );
    let woken = cluster.function("squeezenet").await.unwrap();
    assert!(
        woken
            .metadata
            .annotations
            .as_ref()
            .is_some_and(|a| a.contains_key(meta::WAKE)),
        "the gateway marked the function woken"
    );

    // A spec change that changes what runs: new pods replace the old ones, and requests keep being served.
    let before: Vec<String> = cluster
        .pods("squeezenet")
        .await
        .iter()
        .filter_map(|p| p.metadata.labels.as_ref()?.get(meta::TEMPLATE).cloned())
        .collect();
    assert!(!before.is_empty());
    cluster.kubectl(&[
        "patch",
        "function",
        "squeezenet",
        "--type",
        "merge",
        "-p",
        r#"{"spec":{"model":{"max_batch":2}}}"#,
    ]);
    let load = Load::start(infer.clone(), body, 5.0);
    let rolled = Instant::now();
    wait_until(
        "every pod on the new template",
        Duration::from_secs(90),
        logs,
        || async {
            let pods = cluster.pods("squeezenet").await;
            let fresh = pods.iter().all(|p| {
                p.metadata
                    .labels
                    .as_ref()
                    .and_then(|l| l.get(meta::TEMPLATE))
                    .is_some_and(|t| !before.contains(t))
                    && p.metadata
                        .labels
                        .as_ref()
                        .and_then(|l| l.get(meta::GENERATION))
                        .map(String::as_str)
                        == Some("2")
            });
            (!pods.is_empty() && fresh && ready_pods(&pods) >= 1).then_some(())
        },
    )
    .await;
    let roll = rolled.elapsed();
    let statuses = load.finish().await;
    println!(
        "scale to zero: first request answered after {:.2} s (cold start through the gateway's wake); roll to the new spec in {:.1} s, answers during it {statuses:?}",
        cold.as_secs_f64(),
        roll.as_secs_f64()
    );
    let failed: u64 = statuses
        .iter()
        .filter(|(s, _)| **s != 200)
        .map(|(_, n)| n)
        .sum();
    assert_eq!(failed, 0, "answers during the roll: {statuses:?}");
}

/// `runtime: process` on Kubernetes: the pod runs the spec's image with its command, listening on the pod's IP
/// (`$HOST`); it is profiled with the spec's sample and serves through the gateway. Without an image the spec is
/// refused with `SpecValid=False` naming `process.image`. (The node runner runs the command here and pulls no
/// image; the image only has to reach the pod.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_process_function_runs_its_image_and_serves_through_the_gateway() {
    let Some(cluster) = Cluster::start(1).await else {
        return;
    };
    let serving = cluster.serving();
    let url = serving.url.clone();
    let logs = || serving.logs();
    let server = cluster.dir.path().join("doubler.py");
    std::fs::write(&server, common::DOUBLER).unwrap();
    let python = std::env::var("DILU_PYTHON").unwrap_or_else(|_| "python3".into());
    let manifest = |name: &str, image: &str| {
        format!(
            "apiVersion: dilu.io/v1alpha1\nkind: Function\nmetadata: {{name: {name}}}\nspec:\n  kind: inference\n  \
             runtime: process\n  process:\n    command: [{python}, {server}]\n{image}    max_batch: 4\n    \
             sample: {sample}\n  slo_ms: 500\n  scaling: {{min_instances: 1, max_instances: 1}}\n",
            server = server.display(),
            sample = common::DOUBLER_SAMPLE,
        )
    };
    let path = cluster.dir.path().join("doubler.yaml");
    std::fs::write(
        &path,
        manifest("doubler", "    image: registry.example.com/doubler:1.0\n")
            + "---\n"
            + &manifest("no-image", ""),
    )
    .unwrap();
    let started = Instant::now();
    cluster.kubectl(&["apply", "-f", &path.display().to_string()]);

    let f = wait_until(
        "doubler profiled and running",
        Duration::from_secs(120),
        logs,
        || cluster.running("doubler"),
    )
    .await;
    let status = f.status.clone().unwrap();
    println!(
        "process function running {:.1} s after kubectl apply: quota {:?}, batch {:?}, capacity {:?} req/s",
        started.elapsed().as_secs_f64(),
        status.quota,
        status.batch,
        status.capacity_rps
    );
    assert!(status.quota.is_some(), "profiled: {status:?}");
    let pods = cluster.pods("doubler").await;
    let pod = pods
        .iter()
        .find(|p| p.metadata.deletion_timestamp.is_none())
        .unwrap();
    let c = &pod.spec.as_ref().unwrap().containers[0];
    assert_eq!(c.image.as_deref(), Some("registry.example.com/doubler:1.0"));
    assert_eq!(c.command.as_ref().unwrap()[0], python);
    let pod_ip = pod.status.as_ref().and_then(|s| s.pod_ip.clone()).unwrap();
    let log = cluster.runner.log(&pod.name_any());
    assert!(
        log.contains(&format!("doubler doubler on {pod_ip}:8080")),
        "listens on the pod's IP: {log}"
    );

    // Through the gateway.
    let client = reqwest::Client::builder().no_proxy().build().unwrap();
    let r = client
        .post(format!("{url}/v2/models/doubler/infer"))
        .header("content-type", "application/json")
        .body(common::DOUBLER_SAMPLE)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 200);
    let v: Value = r.json().await.unwrap();
    assert_eq!(output_data(&v), [2.0, 4.0, 6.0, 8.0], "{v}");

    // No image: nothing to run in a pod, refused with the field.
    let refused = wait_until(
        "no-image refused",
        Duration::from_secs(30),
        logs,
        || async {
            let f = cluster.function("no-image").await?;
            f.status?
                .conditions
                .into_iter()
                .find(|c| c.type_ == "SpecValid" && c.status == "False")
        },
    )
    .await;
    assert!(refused.message.contains("process.image"), "{refused:?}");
    assert!(cluster.pods("no-image").await.is_empty());
}

/// A function's `scheduling` on Kubernetes: its pods carry the node selector and tolerations, dilu-scheduler
/// places them only on a node that matches and whose taint they tolerate, and a changed selector rolls the
/// pods onto the newly selected node (the template changed).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_functions_node_selector_and_tolerations_place_its_pods_and_a_change_moves_them() {
    let Some(cluster) = Cluster::start(2).await else {
        return;
    };
    let serving = cluster.serving();
    let logs = || serving.logs();
    let (a, b) = (cluster.nodes[0].clone(), cluster.nodes[1].clone());
    cluster.kubectl(&["label", "node", &a, "zone=a"]);
    cluster.kubectl(&["label", "node", &b, "zone=b"]);
    cluster.kubectl(&["taint", "node", &b, "dedicated=ml:NoSchedule"]);

    let text = std::fs::read_to_string(repo("examples/mlp-train.yaml")).unwrap()
        + "  scheduling:\n    node_selector: {zone: b}\n    tolerations:\n      - {key: dedicated, operator: Exists, effect: NoSchedule}\n";
    let manifest = cluster.dir.path().join("mlp-train.yaml");
    std::fs::write(&manifest, &text).unwrap();
    cluster.kubectl(&["apply", "-f", &manifest.display().to_string()]);
    let node_of = |p: &Pod| p.spec.as_ref().and_then(|s| s.node_name.clone());
    let pod = wait_until(
        "the trainer's pod bound",
        Duration::from_secs(90),
        logs,
        || async {
            let pods = cluster.pods("mlp-train").await;
            pods.into_iter().find(|p| node_of(p).is_some())
        },
    )
    .await;
    assert_eq!(
        node_of(&pod).as_deref(),
        Some(b.as_str()),
        "zone b, tainted but tolerated"
    );
    let spec = pod.spec.as_ref().unwrap();
    assert_eq!(
        spec.node_selector
            .as_ref()
            .and_then(|s| s.get("zone"))
            .map(String::as_str),
        Some("b")
    );
    let toleration = &spec.tolerations.as_ref().unwrap()[0];
    assert_eq!(
        (
            toleration.key.as_deref(),
            toleration.operator.as_deref(),
            toleration.effect.as_deref()
        ),
        (Some("dedicated"), Some("Exists"), Some("NoSchedule"))
    );

    // A new selector: the pod is replaced by one on node a (an untolerated taint is no matter there).
    cluster.kubectl(&[
        "patch",
        "function",
        "mlp-train",
        "--type",
        "merge",
        "-p",
        r#"{"spec":{"scheduling":{"node_selector":{"zone":"a"},"tolerations":null}}}"#,
    ]);
    let moved = wait_until(
        "the trainer's pod moved to zone a",
        Duration::from_secs(90),
        logs,
        || async {
            let pods = cluster.pods("mlp-train").await;
            let live: Vec<&Pod> = pods
                .iter()
                .filter(|p| p.metadata.deletion_timestamp.is_none())
                .collect();
            (live.len() == 1 && node_of(live[0]).as_deref() == Some(a.as_str()))
                .then(|| live[0].clone())
        },
    )
    .await;
    assert_ne!(
        moved.name_any(),
        pod.name_any(),
        "a new pod, not the old one"
    );
    // (The API server's DefaultTolerationSeconds admission adds its own not-ready/unreachable tolerations.)
    let keys: Vec<Option<String>> = moved
        .spec
        .as_ref()
        .unwrap()
        .tolerations
        .iter()
        .flatten()
        .map(|t| t.key.clone())
        .collect();
    assert!(!keys.contains(&Some("dedicated".into())), "{keys:?}");
}
