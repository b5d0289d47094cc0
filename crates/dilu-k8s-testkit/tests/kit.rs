//! The test kit against the real binaries: the API server with the Function CRD, RBAC users, the node
//! runner (readiness, restarts, deletion) and the real kube-scheduler.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use dilu_k8s_testkit::{
    ApiServer, KubeScheduler, NodeRunner, eventually, fake_devices, fake_node, http_status,
};
use k8s_openapi::api::core::v1::{Node, Pod};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Api, DeleteParams, ListParams, PostParams};

fn manifest(path: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .join(path)
}

fn pod(value: serde_json::Value) -> Pod {
    serde_json::from_value(value).expect("a valid pod")
}

fn condition(pod: &Pod, kind: &str) -> Option<String> {
    pod.status
        .as_ref()?
        .conditions
        .as_ref()?
        .iter()
        .find(|c| c.type_ == kind)
        .map(|c| c.status.clone())
}

fn process_exists(pid: u32) -> bool {
    std::path::Path::new(&format!("/proc/{pid}")).exists()
}

fn out(o: &std::process::Output) -> String {
    format!(
        "status {}\nstdout: {}\nstderr: {}",
        o.status,
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

#[tokio::test]
async fn the_function_crd_applies_and_is_established() {
    let Some(api) = ApiServer::start().await else {
        return;
    };
    eprintln!("API server ready in {:?}", api.started_in());
    let crd = manifest("deploy/crd.yaml");
    let crd = crd.to_str().expect("a UTF-8 path");
    let applied = api.kubectl(&["apply", "-f", crd]);
    assert!(applied.status.success(), "kubectl apply: {}", out(&applied));
    let crds: Api<CustomResourceDefinition> = Api::all(api.client());
    eventually(
        "the Function CRD to be Established",
        Duration::from_secs(30),
        || async {
            let crd = crds.get("functions.dilu.io").await.ok()?;
            let established = crd
                .status?
                .conditions?
                .iter()
                .any(|c| c.type_ == "Established" && c.status == "True");
            established.then_some(())
        },
    )
    .await;
    let dry = api.kubectl(&["apply", "--dry-run=server", "-f", crd]);
    assert!(
        dry.status.success(),
        "kubectl apply --dry-run=server: {}",
        out(&dry)
    );
    let listed = api.kubectl(&["get", "functions", "-A"]);
    assert!(
        listed.status.success(),
        "kubectl get functions: {}",
        out(&listed)
    );
}

#[tokio::test]
async fn users_have_tokens_and_rbac_decides() {
    let Some(api) = ApiServer::start().await else {
        return;
    };
    let admin: Api<Pod> = Api::namespaced(api.client(), "default");
    admin
        .list(&ListParams::default())
        .await
        .expect("admin lists pods");
    let nobody: Api<Pod> = Api::namespaced(api.client_as("nobody"), "default");
    match nobody.list(&ListParams::default()).await {
        Err(kube::Error::Api(e)) => assert_eq!(e.code, 403, "{e:?}"),
        other => panic!("nobody should be forbidden, got {other:?}"),
    }
    let whoami = api.kubectl_as("dilu-controller", &["auth", "can-i", "list", "pods"]);
    assert_eq!(
        String::from_utf8_lossy(&whoami.stdout).trim(),
        "no",
        "{}",
        out(&whoami)
    );
    let admin_can = api.kubectl(&["auth", "can-i", "*", "*"]);
    assert_eq!(
        String::from_utf8_lossy(&admin_can.stdout).trim(),
        "yes",
        "{}",
        out(&admin_can)
    );
    // A second server is independent of the first.
    let Some(other) = ApiServer::start_with_users(&["carol"]).await else {
        return;
    };
    assert_ne!(other.url(), api.url());
    assert_ne!(other.token("carol"), "");
    let carol: Api<Node> = Api::all(other.client_as("carol"));
    assert!(carol.list(&ListParams::default()).await.is_err());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_runner_makes_a_pod_ready_serves_it_and_stops_it_on_delete() {
    let Some(api) = ApiServer::start().await else {
        return;
    };
    let client = api.client();
    fake_node(&client, "node-a", &fake_devices("node-a", 2), 2)
        .await
        .expect("fake node");
    let nodes: Api<Node> = Api::all(client.clone());
    let node = nodes.get("node-a").await.expect("node");
    let annotations = node.metadata.annotations.clone().unwrap_or_default();
    let inventory =
        dilu_k8s::meta::node_inventory("node-a", &annotations[dilu_k8s::meta::INVENTORY])
            .expect("the inventory annotation parses");
    assert_eq!(inventory.devices.len(), 2);
    let status = node.status.expect("node status");
    assert_eq!(status.capacity.expect("capacity")["nvidia.com/gpu"].0, "2");
    assert!(
        node.spec
            .and_then(|s| s.taints)
            .unwrap_or_default()
            .is_empty()
    );

    let runner = NodeRunner::start(
        client.clone(),
        "default",
        vec!["node-a".into()],
        PathBuf::from("/bin/false"),
    )
    .await;
    let pods: Api<Pod> = Api::namespaced(client.clone(), "default");
    let web = pod(serde_json::json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": "web", "labels": {"app": "web"}},
        "spec": {
            "nodeName": "node-a",
            "terminationGracePeriodSeconds": 5,
            "containers": [{
                "name": "web", "image": "python:3",
                "command": ["/bin/sh", "-c", "echo 'pod $(POD_NAME) at $(POD_IP) $(NOPE) $$(POD_IP)'; exec python3 -m http.server --bind $(POD_IP) 8080"],
                "env": [
                    {"name": "POD_IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}},
                    {"name": "POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
                    {"name": "APP", "valueFrom": {"fieldRef": {"fieldPath": "metadata.labels['app']"}}},
                ],
                "readinessProbe": {"httpGet": {"path": "/", "port": 8080}},
            }],
        },
    }));
    let t0 = Instant::now();
    pods.create(&PostParams::default(), &web)
        .await
        .expect("create pod");
    // kubectl's own idea of Ready (the Ready condition), waited for off the runtime's threads.
    let waited = api
        .kubectl_async(&["wait", "--for=condition=Ready", "pod/web", "--timeout=30s"])
        .await;
    assert!(waited.status.success(), "kubectl wait: {}", out(&waited));
    let ready = pods.get("web").await.expect("get pod");
    eprintln!("pod Ready {:?} after creation", t0.elapsed());
    for kind in ["PodScheduled", "Initialized", "ContainersReady"] {
        assert_eq!(condition(&ready, kind).as_deref(), Some("True"), "{kind}");
    }
    let status = ready.status.expect("status");
    assert_eq!(status.phase.as_deref(), Some("Running"));
    assert_eq!(status.host_ip.as_deref(), Some("127.0.0.1"));
    let ip = status.pod_ip.expect("podIP");
    assert!(ip.starts_with("127.0."), "{ip}");
    assert_eq!(runner.ip("web").map(|a| a.to_string()), Some(ip.clone()));
    let cs = &status.container_statuses.expect("container statuses")[0];
    assert!(cs.ready);
    assert_eq!(cs.restart_count, 0);
    assert!(cs.state.as_ref().and_then(|s| s.running.as_ref()).is_some());

    let shown = api.kubectl(&["get", "pod", "web", "--no-headers", "-o", "wide"]);
    let shown = String::from_utf8_lossy(&shown.stdout).to_string();
    assert!(
        shown.contains("1/1")
            && shown.contains("Running")
            && shown.contains(&ip)
            && shown.contains("node-a"),
        "kubectl get pod: {shown}"
    );

    let addr: SocketAddr = format!("{ip}:8080").parse().expect("address");
    assert_eq!(http_status(addr, &addr.to_string(), "/").await, Some(200));
    let log = runner.log("web");
    assert!(
        log.contains(&format!("pod web at {ip} $(NOPE) $(POD_IP)")),
        "the command's $(VAR) references are expanded as the kubelet does; log:\n{log}"
    );
    let running = runner.running();
    assert_eq!(running.len(), 1, "{running:?}");
    let pid = running[0].1;
    assert!(process_exists(pid));

    let t0 = Instant::now();
    pods.delete("web", &DeleteParams::default())
        .await
        .expect("delete pod");
    eventually(
        "pod web to leave the API",
        Duration::from_secs(20),
        || async {
            match pods.get_opt("web").await {
                Ok(None) => Some(()),
                _ => None,
            }
        },
    )
    .await;
    eprintln!("pod gone from the API {:?} after delete", t0.elapsed());
    eventually(
        "the pod's process to end",
        Duration::from_secs(5),
        || async { (!process_exists(pid)).then_some(()) },
    )
    .await;
    assert!(runner.running().is_empty());
    assert_eq!(http_status(addr, &addr.to_string(), "/").await, None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_runner_restarts_per_policy_and_kills_on_force_delete() {
    let Some(api) = ApiServer::start().await else {
        return;
    };
    let client = api.client();
    fake_node(&client, "node-b", &fake_devices("node-b", 0), 0)
        .await
        .expect("fake node");
    let runner = NodeRunner::start(
        client.clone(),
        "default",
        vec!["node-b".into(), "node-other".into()],
        PathBuf::from("/bin/echo"),
    )
    .await;
    let pods: Api<Pod> = Api::namespaced(client.clone(), "default");
    let make = |name: &str, policy: &str, command: &[&str], args: &[&str]| {
        pod(serde_json::json!({
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": name},
            "spec": {
                "nodeName": "node-b",
                "restartPolicy": policy,
                "terminationGracePeriodSeconds": 2,
                "containers": [{"name": "c", "image": "x", "command": command, "args": args}],
            },
        }))
    };
    for p in [
        make(
            "crash",
            "Always",
            &["/bin/sh", "-c", "echo started; exit 3"],
            &[],
        ),
        make("fails", "Never", &["/bin/sh", "-c", "exit 4"], &[]),
        make("done", "OnFailure", &["/bin/sh", "-c", "exit 0"], &[]),
        // `dilu` is the image's entrypoint: here /bin/echo.
        make("entry", "Never", &[], &["hello", "$(NOPE)"]),
        make(
            "stubborn",
            "Always",
            &[
                "/bin/sh",
                "-c",
                "trap '' TERM; while true; do sleep 0.1; done",
            ],
            &[],
        ),
        make("sleeper", "Always", &["/bin/sleep", "1000"], &[]),
    ] {
        pods.create(&PostParams::default(), &p)
            .await
            .expect("create pod");
    }
    // A pod bound elsewhere is not this runner's.
    let mut elsewhere = make("elsewhere", "Always", &["/bin/sleep", "1000"], &[]);
    elsewhere.spec.as_mut().expect("spec").node_name = Some("node-z".into());
    pods.create(&PostParams::default(), &elsewhere)
        .await
        .expect("create pod");

    let crash = eventually("pod crash to restart", Duration::from_secs(20), || async {
        let p = pods.get("crash").await.ok()?;
        let cs = p
            .status
            .as_ref()?
            .container_statuses
            .as_ref()?
            .first()?
            .clone();
        (cs.restart_count >= 1 && cs.last_state.as_ref()?.terminated.is_some()).then_some(cs)
    })
    .await;
    let last = crash
        .last_state
        .and_then(|s| s.terminated)
        .expect("lastState.terminated");
    assert_eq!(last.exit_code, 3);
    assert_eq!(last.reason.as_deref(), Some("Error"));
    assert!(
        runner.log("crash").matches("started").count() >= 2,
        "{}",
        runner.log("crash")
    );

    for (name, phase) in [
        ("fails", "Failed"),
        ("done", "Succeeded"),
        ("entry", "Succeeded"),
    ] {
        eventually(
            &format!("pod {name} to be {phase}"),
            Duration::from_secs(20),
            || async {
                let p = pods.get(name).await.ok()?;
                (p.status?.phase.as_deref() == Some(phase)).then_some(())
            },
        )
        .await;
    }
    assert_eq!(runner.log("entry").trim(), "hello $(NOPE)");
    let fails = pods.get("fails").await.expect("pod");
    let term = fails
        .status
        .and_then(|s| s.container_statuses)
        .expect("statuses")[0]
        .state
        .clone()
        .and_then(|s| s.terminated)
        .expect("terminated");
    assert_eq!(term.exit_code, 4);

    let pid_of = |name: &str| {
        runner
            .running()
            .into_iter()
            .find(|(n, _)| n == name)
            .map(|(_, p)| p)
    };
    let sleeper = eventually("sleeper's process", Duration::from_secs(20), || async {
        pid_of("sleeper")
    })
    .await;
    let stubborn = eventually("stubborn's process", Duration::from_secs(20), || async {
        pid_of("stubborn")
    })
    .await;
    assert!(pid_of("elsewhere").is_none());

    // Force deletion (grace 0): the pod leaves the API at once; the runner kills its process.
    pods.delete(
        "sleeper",
        &DeleteParams {
            grace_period_seconds: Some(0),
            ..DeleteParams::default()
        },
    )
    .await
    .expect("force delete");
    eventually(
        "sleeper's process to end",
        Duration::from_secs(10),
        || async { (!process_exists(sleeper)).then_some(()) },
    )
    .await;

    // A process that ignores SIGTERM is killed after the grace period (2 s).
    let t0 = Instant::now();
    pods.delete("stubborn", &DeleteParams::default())
        .await
        .expect("delete");
    eventually(
        "stubborn to leave the API",
        Duration::from_secs(15),
        || async { matches!(pods.get_opt("stubborn").await, Ok(None)).then_some(()) },
    )
    .await;
    let took = t0.elapsed();
    assert!(
        took >= Duration::from_millis(1900),
        "SIGKILL came before the grace period: {took:?}"
    );
    assert!(!process_exists(stubborn));

    // Finished pods are removed on delete too; dropping the runner kills what is left.
    pods.delete("fails", &DeleteParams::default())
        .await
        .expect("delete");
    eventually(
        "fails to leave the API",
        Duration::from_secs(15),
        || async { matches!(pods.get_opt("fails").await, Ok(None)).then_some(()) },
    )
    .await;
    let crash_pid = pid_of("crash");
    drop(runner);
    if let Some(pid) = crash_pid {
        eventually("crash's process to end", Duration::from_secs(5), || async {
            (!process_exists(pid)).then_some(())
        })
        .await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kube_scheduler_binds_a_gpu_pod_to_the_gpu_node() {
    let Some(api) = ApiServer::start().await else {
        return;
    };
    let client = api.client();
    fake_node(&client, "cpu-only", &fake_devices("cpu-only", 0), 0)
        .await
        .expect("fake node");
    fake_node(&client, "gpu-8", &fake_devices("gpu-8", 8), 8)
        .await
        .expect("fake node");
    let t0 = Instant::now();
    let _scheduler = KubeScheduler::start(&api, 50.0, 100).await;
    eprintln!("kube-scheduler healthy in {:?}", t0.elapsed());
    let pods: Api<Pod> = Api::namespaced(client.clone(), "default");
    let gpu_pod = pod(serde_json::json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": "wants-a-gpu"},
        "spec": {"containers": [{
            "name": "c", "image": "x", "command": ["/bin/sleep", "1000"],
            "resources": {"limits": {"nvidia.com/gpu": "1"}},
        }]},
    }));
    pods.create(&PostParams::default(), &gpu_pod)
        .await
        .expect("create pod");
    let node = eventually("the pod to be bound", Duration::from_secs(30), || async {
        pods.get("wants-a-gpu").await.ok()?.spec?.node_name
    })
    .await;
    assert_eq!(node, "gpu-8");
    // The runner of that node picks the pod up once it is bound.
    let runner = NodeRunner::start(
        client.clone(),
        "default",
        vec!["gpu-8".into()],
        PathBuf::from("/bin/false"),
    )
    .await;
    eventually("the bound pod to run", Duration::from_secs(20), || async {
        let p = pods.get("wants-a-gpu").await.ok()?;
        (condition(&p, "Ready").as_deref() == Some("True")).then_some(())
    })
    .await;
    assert_eq!(runner.running().len(), 1);
}

#[tokio::test]
async fn many_fake_nodes_at_once() {
    let Some(api) = ApiServer::start().await else {
        return;
    };
    let client = api.client();
    let t0 = Instant::now();
    let names = dilu_k8s_testkit::fake_nodes(&client, "n", 50, 4)
        .await
        .expect("fake nodes");
    eprintln!("50 fake nodes in {:?}", t0.elapsed());
    assert_eq!(names.len(), 50);
    let nodes: Api<Node> = Api::all(client);
    let listed = nodes
        .list(&ListParams::default().labels("dilu.io/node=true"))
        .await
        .expect("list");
    assert_eq!(listed.items.len(), 50);
    assert!(listed.items.iter().all(|n| {
        n.status
            .as_ref()
            .and_then(|s| s.conditions.as_ref())
            .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
    }));
}
