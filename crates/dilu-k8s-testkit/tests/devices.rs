//! The node runner's device manager against a real API server and the real device plugin served in-process:
//! registration on the node's `kubelet.sock`, the Node's capacity, pods started with `Allocate`'s env and
//! mounts (path translation), distinct and freed IDs, rejections as the kubelet's, a kubelet restart.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use dilu_deviceplugin::{
    DevicePlugin, PhysicalDevice, PluginConfig, RunningPlugin, ServeConfig, ids,
};
use dilu_k8s_testkit::{ApiServer, NodeRunner, eventually, fake_devices, fake_node};
use k8s_openapi::api::core::v1::{Node, Pod};
use kube::api::{Api, DeleteParams, PostParams};

const GPU_A: &str = "GPU-aaaaaaaa-0000-0000-0000-000000000001";
const GPU_B: &str = "GPU-bbbbbbbb-0000-0000-0000-000000000002";
const RESOURCE: &str = "dilu.io/gpu-share";
const INTERPOSER: &str = "/opt/dilu-test/lib/libdilu_cuda.so";
const WAIT: Duration = Duration::from_secs(20);

/// A pod on node-a whose process writes its environment to `<out>/<name>.env` and its two arguments (a
/// `$(DILU_QUOTA_DIR)` reference and a path under the quota mount) to `<out>/<name>.args`, then sleeps.
fn env_pod(name: &str, out: &Path, limits: serde_json::Value) -> Pod {
    let out = out.display();
    let script = format!(
        "env > {out}/{name}.tmp && mv {out}/{name}.tmp {out}/{name}.env && \
         printf '%s\\n' \"$1\" \"$2\" > {out}/{name}.args.tmp && mv {out}/{name}.args.tmp {out}/{name}.args && \
         exec sleep 600"
    );
    serde_json::from_value(serde_json::json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name},
        "spec": {
            "nodeName": "node-a",
            "terminationGracePeriodSeconds": 1,
            "containers": [{
                "name": "instance", "image": "dilu",
                "command": ["/bin/sh", "-c", script, "sh",
                    "$(DILU_QUOTA_DIR)/x", "/run/dilu/quota/$(DILU_POD_UID)/y"],
                "env": [
                    {"name": "DILU_POD_UID", "valueFrom": {"fieldRef": {"fieldPath": "metadata.uid"}}},
                    {"name": "DILU_QUOTA_FILE", "value": "/run/dilu/quota/$(DILU_POD_UID)"},
                    // Env values see only the container's own variables: this stays as written.
                    {"name": "SEES_DEVICE_ENV", "value": "$(DILU_DEVICE)"},
                    // The container's variables come after the device plugin's and win.
                    {"name": "CUDA_VISIBLE_DEVICES", "value": "from-the-spec"},
                ],
                "resources": {"limits": limits},
            }],
        },
    }))
    .expect("a valid pod")
}

/// The variables in `<out>/<name>.env`, once it exists.
async fn env_of(out: &Path, name: &str) -> Vec<(String, String)> {
    let path = out.join(format!("{name}.env"));
    let text = eventually(&format!("{}", path.display()), WAIT, || async {
        std::fs::read_to_string(&path).ok()
    })
    .await;
    text.lines()
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

fn var<'a>(env: &'a [(String, String)], name: &str) -> Option<&'a str> {
    env.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str())
}

async fn resources_of(
    nodes: &Api<Node>,
    node: &str,
    resource: &str,
) -> (Option<String>, Option<String>) {
    let status = nodes
        .get(node)
        .await
        .ok()
        .and_then(|n| n.status)
        .unwrap_or_default();
    let get = |list: Option<
        std::collections::BTreeMap<String, k8s_openapi::apimachinery::pkg::api::resource::Quantity>,
    >| { list.and_then(|l| l.get(resource).map(|q| q.0.clone())) };
    (get(status.capacity), get(status.allocatable))
}

async fn wait_counts(nodes: &Api<Node>, capacity: &str, allocatable: &str) -> Duration {
    let t0 = Instant::now();
    let want = (Some(capacity.to_string()), Some(allocatable.to_string()));
    eventually(
        &format!("node-a's {RESOURCE} capacity/allocatable {capacity}/{allocatable}"),
        WAIT,
        || async { (resources_of(nodes, "node-a", RESOURCE).await == want).then_some(()) },
    )
    .await;
    t0.elapsed()
}

async fn phase_and_reason(pods: &Api<Pod>, name: &str) -> Option<(String, String)> {
    let status = pods.get_opt(name).await.ok()??.status?;
    Some((status.phase?, status.reason.unwrap_or_default()))
}

async fn wait_running(pods: &Api<Pod>, name: &str) {
    eventually(&format!("pod {name} Running"), WAIT, || async {
        let (phase, _) = phase_and_reason(pods, name).await?;
        (phase == "Running").then_some(())
    })
    .await;
}

async fn wait_gone(pods: &Api<Pod>, name: &str) {
    eventually(&format!("pod {name} to leave the API"), WAIT, || async {
        matches!(pods.get_opt(name).await, Ok(None)).then_some(())
    })
    .await;
}

fn device_of(id: &str) -> String {
    ids::parse(id).expect("a Dilu share ID").0.to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_runner_plays_the_kubelet_device_manager_for_a_real_plugin() {
    let Some(api) = ApiServer::start().await else {
        return;
    };
    let client = api.client();
    fake_node(&client, "node-a", &fake_devices("node-a", 2), 2)
        .await
        .expect("fake node");
    let runner = NodeRunner::builder(
        client.clone(),
        "default",
        vec!["node-a".into()],
        PathBuf::from("/bin/false"),
    )
    .device_plugins()
    .start()
    .await;
    let dir = runner
        .device_plugin_dir("node-a")
        .expect("node-a has a device plugin directory")
        .to_path_buf();
    assert!(dir.join("kubelet.sock").exists());
    let tmp = tempfile::tempdir().expect("temp dir");
    let out = tmp.path().join("out");
    std::fs::create_dir(&out).expect("out dir");
    let channels = tmp.path().join("channels");

    // One share per GPU: two IDs in all.
    let plugin = DevicePlugin::new(
        PluginConfig {
            resource_name: RESOURCE.into(),
            shares: 1,
            gpu: true,
            interposer: Some(INTERPOSER.into()),
            channel_root: channels.clone(),
        },
        [GPU_A, GPU_B]
            .iter()
            .map(|uuid| PhysicalDevice {
                uuid: uuid.to_string(),
                healthy: true,
            })
            .collect(),
    )
    .expect("plugin");
    let health = plugin.handle();
    let t0 = Instant::now();
    let running = RunningPlugin::start(plugin, ServeConfig::new(&dir, "dilu-gpu-share.sock"))
        .await
        .expect("the plugin serves");
    let registrations = runner
        .wait_plugin_registrations("node-a", 1, WAIT)
        .await
        .expect("the plugin registers");
    assert_eq!(registrations[0].resource, RESOURCE);
    assert_eq!(registrations[0].endpoint, "dilu-gpu-share.sock");
    let published = wait_counts(&Api::all(client.clone()), "2", "2").await;
    eprintln!(
        "plugin start → Register {:?}; → Node capacity/allocatable 2/2 {:?} later",
        registrations[0].at.duration_since(t0),
        published
    );
    let nodes: Api<Node> = Api::all(client.clone());
    // The fake node's other resources are untouched.
    assert_eq!(
        resources_of(&nodes, "node-a", "nvidia.com/gpu").await,
        (Some("2".into()), Some("2".into()))
    );

    let pods: Api<Pod> = Api::namespaced(client.clone(), "default");
    let one = serde_json::json!({RESOURCE: "1"});
    let t0 = Instant::now();
    pods.create(&PostParams::default(), &env_pod("a", &out, one.clone()))
        .await
        .expect("create pod a");
    wait_running(&pods, "a").await;
    let env = env_of(&out, "a").await;
    eprintln!("pod a created → its env written {:?}", t0.elapsed());
    let held_a = runner.devices("a");
    let id_a = held_a[RESOURCE].clone();
    assert_eq!(id_a.len(), 1, "{held_a:?}");
    let device_a = device_of(&id_a[0]);
    let uid_a = pods
        .get("a")
        .await
        .expect("pod a")
        .metadata
        .uid
        .expect("uid");
    let host_dir = channels.join(&device_a).display().to_string();
    assert_eq!(var(&env, "DILU_DEVICE"), Some(device_a.as_str()));
    assert_eq!(var(&env, "NVIDIA_VISIBLE_DEVICES"), Some(device_a.as_str()));
    assert_eq!(
        var(&env, "DILU_QUOTA_DIR"),
        Some(host_dir.as_str()),
        "translated to the host's channel directory"
    );
    assert_eq!(
        var(&env, "DILU_QUOTA_FILE"),
        Some(format!("{host_dir}/{uid_a}").as_str()),
        "expanded from DILU_POD_UID, then translated"
    );
    assert_eq!(
        var(&env, "LD_PRELOAD"),
        Some(INTERPOSER),
        "the interposer's host path"
    );
    assert_eq!(var(&env, "CUDA_VISIBLE_DEVICES"), Some("from-the-spec"));
    assert_eq!(var(&env, "SEES_DEVICE_ENV"), Some("$(DILU_DEVICE)"));
    assert_eq!(var(&env, "DILU_POD_UID"), Some(uid_a.as_str()));
    assert!(
        channels.join(&device_a).is_dir(),
        "Allocate creates the channel directory"
    );
    let args = std::fs::read_to_string(out.join("a.args")).expect("a.args");
    assert_eq!(
        args,
        format!("{host_dir}/x\n{host_dir}/{uid_a}/y\n"),
        "args expand device variables too, then are translated"
    );
    assert!(
        runner.log("a").contains("devices allocated"),
        "{}",
        runner.log("a")
    );

    pods.create(&PostParams::default(), &env_pod("b", &out, one.clone()))
        .await
        .expect("create pod b");
    wait_running(&pods, "b").await;
    let env_b = env_of(&out, "b").await;
    let id_b = runner.devices("b")[RESOURCE].clone();
    assert_ne!(id_a, id_b, "a second pod gets another ID");
    let device_b = device_of(&id_b[0]);
    assert_ne!(device_a, device_b);
    assert_eq!(var(&env_b, "DILU_DEVICE"), Some(device_b.as_str()));

    // No free ID left: rejected as the kubelet's allocate admit handler does.
    pods.create(&PostParams::default(), &env_pod("c", &out, one.clone()))
        .await
        .expect("create pod c");
    let (phase, reason) = eventually("pod c rejected", WAIT, || async {
        phase_and_reason(&pods, "c")
            .await
            .filter(|(p, _)| p == "Failed")
    })
    .await;
    assert_eq!(
        (phase.as_str(), reason.as_str()),
        ("Failed", "UnexpectedAdmissionError")
    );
    let message = pods
        .get("c")
        .await
        .expect("pod c")
        .status
        .and_then(|s| s.message)
        .unwrap_or_default();
    assert!(
        message.contains("requested number of devices unavailable for dilu.io/gpu-share. Requested: 1, Available: 0"),
        "{message}"
    );
    assert!(runner.devices("c").is_empty());
    assert!(!out.join("c.env").exists());

    // Deleting a pod frees its ID for the next one.
    let t0 = Instant::now();
    pods.delete("a", &DeleteParams::default())
        .await
        .expect("delete a");
    wait_gone(&pods, "a").await;
    eventually("pod a's ID to be freed", WAIT, || async {
        runner.devices("a").is_empty().then_some(())
    })
    .await;
    eprintln!("pod a deleted → its ID free {:?}", t0.elapsed());
    pods.create(&PostParams::default(), &env_pod("d", &out, one.clone()))
        .await
        .expect("create pod d");
    wait_running(&pods, "d").await;
    assert_eq!(
        runner.devices("d")[RESOURCE],
        id_a,
        "pod d gets the ID pod a held"
    );

    // A kubelet restart: the plugin registers again on the new kubelet.sock.
    let restarted = runner.restart_kubelet("node-a").await.expect("restart");
    assert_eq!(runner.kubelet_started("node-a"), Some(restarted));
    let registrations = runner
        .wait_plugin_registrations("node-a", 2, WAIT)
        .await
        .expect("the plugin registers again");
    assert_eq!(registrations.len(), 2, "{registrations:?}");
    eprintln!(
        "new kubelet.sock → Register {:?}",
        registrations[1].at.duration_since(restarted)
    );
    // What pods hold survived the restart (the kubelet's checkpoint).
    assert_eq!(runner.devices("b")[RESOURCE], id_b);

    // A device turning unhealthy: allocatable drops, capacity stays.
    assert!(health.set_health(GPU_B, false));
    let published = wait_counts(&nodes, "2", "1").await;
    eprintln!("health change → Node allocatable {published:?}");

    for name in ["b", "c", "d"] {
        pods.delete(name, &DeleteParams::default())
            .await
            .expect("delete");
    }
    for name in ["b", "c", "d"] {
        wait_gone(&pods, name).await;
    }
    running.stop().await;
    // ListAndWatch ended: the kubelet marks the devices unhealthy.
    wait_counts(&nodes, "2", "0").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resources_no_plugin_serves_follow_the_kubelet_predicates() {
    let Some(api) = ApiServer::start().await else {
        return;
    };
    let client = api.client();
    fake_node(&client, "node-a", &fake_devices("node-a", 2), 2)
        .await
        .expect("fake node");
    let runner = NodeRunner::builder(
        client.clone(),
        "default",
        vec!["node-a".into()],
        PathBuf::from("/bin/false"),
    )
    .device_plugins()
    .start()
    .await;
    assert!(runner.device_plugin_dir("node-b").is_none());
    let tmp = tempfile::tempdir().expect("temp dir");
    let out = tmp.path();
    let pods: Api<Pod> = Api::namespaced(client.clone(), "default");

    // Not on the Node at all: admitted without it (the kubelet's removeMissingExtendedResources caveat).
    pods.create(
        &PostParams::default(),
        &env_pod("unlisted", out, serde_json::json!({RESOURCE: "1"})),
    )
    .await
    .expect("create");
    wait_running(&pods, "unlisted").await;
    let env = env_of(out, "unlisted").await;
    assert_eq!(var(&env, "DILU_DEVICE"), None);
    assert_eq!(
        var(&env, "DILU_QUOTA_FILE"),
        Some(
            format!(
                "/run/dilu/quota/{}",
                var(&env, "DILU_POD_UID").unwrap_or_default()
            )
            .as_str()
        )
    );
    assert!(runner.devices("unlisted").is_empty());

    // On the Node (nvidia.com/gpu: 2, no plugin): within it admitted, beyond it OutOf<resource>.
    pods.create(
        &PostParams::default(),
        &env_pod("fits", out, serde_json::json!({"nvidia.com/gpu": "2"})),
    )
    .await
    .expect("create");
    wait_running(&pods, "fits").await;
    pods.create(
        &PostParams::default(),
        &env_pod("big", out, serde_json::json!({"nvidia.com/gpu": "3"})),
    )
    .await
    .expect("create");
    let (phase, reason) = eventually("pod big rejected", WAIT, || async {
        phase_and_reason(&pods, "big")
            .await
            .filter(|(p, _)| p == "Failed")
    })
    .await;
    assert_eq!(
        (phase.as_str(), reason.as_str()),
        ("Failed", "OutOfnvidia.com/gpu")
    );

    // A runner without the device manager has no directory and ignores limits, as before.
    let plain = NodeRunner::start(
        client.clone(),
        "other",
        vec!["node-z".into()],
        PathBuf::from("/bin/false"),
    )
    .await;
    assert!(plain.device_plugin_dir("node-z").is_none());
    assert!(plain.restart_kubelet("node-z").await.is_err());
    drop(plain);
    for name in ["unlisted", "fits", "big"] {
        pods.delete(name, &DeleteParams::default())
            .await
            .expect("delete");
    }
    for name in ["unlisted", "fits", "big"] {
        wait_gone(&pods, name).await;
    }
}
