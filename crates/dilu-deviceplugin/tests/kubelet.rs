//! The device plugin against a kubelet-side peer (`testkit::FakeKubelet`) over real Unix sockets in a temp
//! directory: registration, the device list and its health, allocation as the kubelet admits pods, concurrent
//! allocations, and re-registration after a kubelet restart.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use dilu_deviceplugin::plugin::{CONTAINER_INTERPOSER, CONTAINER_QUOTA_DIR};
use dilu_deviceplugin::testkit::FakeKubelet;
use dilu_deviceplugin::{
    DevicePlugin, HEALTHY, PhysicalDevice, PluginConfig, RunningPlugin, ServeConfig, UNHEALTHY, ids,
};

const GPU_A: &str = "GPU-aaaaaaaa-0000-0000-0000-000000000001";
const GPU_B: &str = "GPU-bbbbbbbb-0000-0000-0000-000000000002";
const WAIT: Duration = Duration::from_secs(10);
const INTERPOSER: &str = "/opt/dilu/lib/libdilu_cuda.so";

fn gpu_plugin(root: &Path, shares: u32) -> DevicePlugin {
    DevicePlugin::new(
        PluginConfig {
            resource_name: "dilu.io/gpu-share".into(),
            shares,
            gpu: true,
            interposer: Some(INTERPOSER.into()),
            channel_root: root.join("channels"),
        },
        [GPU_A, GPU_B]
            .iter()
            .map(|uuid| PhysicalDevice {
                uuid: uuid.to_string(),
                healthy: true,
            })
            .collect(),
    )
    .unwrap()
}

struct Node {
    _tmp: tempfile::TempDir,
    root: PathBuf,
    dir: PathBuf,
}

fn node() -> Node {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().to_path_buf();
    let dir = root.join("device-plugins");
    std::fs::create_dir(&dir).unwrap();
    Node {
        _tmp: tmp,
        root,
        dir,
    }
}

fn serve_config(dir: &Path) -> ServeConfig {
    ServeConfig::new(dir, "dilu-gpu-share.sock")
}

fn device_of(id: &str) -> String {
    ids::parse(id).unwrap().0.to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_plugin_registers_and_lists_every_share_with_its_health() {
    let node = node();
    let mut kubelet = FakeKubelet::start(&node.dir).unwrap();
    let plugin = gpu_plugin(&node.root, 3);
    let running = RunningPlugin::start(plugin, serve_config(&node.dir))
        .await
        .unwrap();
    let conn = kubelet.next_plugin(WAIT).await.unwrap();

    let request = &conn.registered.request;
    assert_eq!(request.version, "v1beta1");
    assert_eq!(request.endpoint, "dilu-gpu-share.sock");
    assert_eq!(request.resource_name, "dilu.io/gpu-share");
    assert!(
        request
            .options
            .as_ref()
            .unwrap()
            .get_preferred_allocation_available
    );
    assert!(conn.options.get_preferred_allocation_available);
    assert!(!conn.options.pre_start_required);

    let devices = conn.devices.borrow().clone();
    let listed: Vec<(String, String)> = devices
        .iter()
        .map(|d| (d.id.clone(), d.health.clone()))
        .collect();
    let expected: Vec<(String, String)> = [GPU_A, GPU_B]
        .iter()
        .flat_map(|uuid| (0..3).map(move |i| (format!("{uuid}::0{i}"), HEALTHY.to_string())))
        .collect();
    assert_eq!(listed, expected);
    let state = running.wait_registered(1, WAIT).await.unwrap();
    assert_eq!((state.count, state.binds), (1, 1), "{state:?}");
    running.stop().await;
    assert!(!node.dir.join("dilu-gpu-share.sock").exists());
    kubelet.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_plugin_started_before_the_kubelet_serves_again_and_registers_when_it_appears() {
    let node = node();
    let running = RunningPlugin::start(gpu_plugin(&node.root, 2), serve_config(&node.dir))
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(700)).await;
    assert_eq!(running.state().borrow().count, 0);
    // The kubelet removes the sockets in its directory when it starts, the plugin's included.
    let mut kubelet = FakeKubelet::start(&node.dir).unwrap();
    let conn = kubelet.next_plugin(WAIT).await.unwrap();
    assert_eq!(conn.devices.borrow().len(), 4);
    let state = running.wait_registered(1, WAIT).await.unwrap();
    assert_eq!((state.count, state.binds), (1, 2), "{state:?}");
    running.stop().await;
    kubelet.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_health_change_is_streamed_and_unhealthy_shares_are_not_given() {
    let node = node();
    let mut kubelet = FakeKubelet::start(&node.dir).unwrap();
    let plugin = gpu_plugin(&node.root, 4);
    let handle = plugin.handle();
    let running = RunningPlugin::start(plugin, serve_config(&node.dir))
        .await
        .unwrap();
    let conn = kubelet.next_plugin(WAIT).await.unwrap();

    assert!(handle.set_health(GPU_B, false));
    assert!(
        !handle.set_health(GPU_B, false),
        "no change, nothing to send"
    );
    let devices = conn.wait_lists(2, WAIT).await.unwrap();
    for device in &devices {
        let expected = if device.id.starts_with(GPU_B) {
            UNHEALTHY
        } else {
            HEALTHY
        };
        assert_eq!(device.health, expected, "{}", device.id);
    }
    assert_eq!(devices.len(), 8);
    // Four pods fit on the healthy GPU, a fifth does not.
    for _ in 0..4 {
        let admitted = conn.admit(1).await.unwrap();
        assert_eq!(device_of(&admitted.ids[0]), GPU_A);
        assert_eq!(admitted.response.envs["CUDA_VISIBLE_DEVICES"], GPU_A);
    }
    assert!(conn.admit(1).await.is_err());
    // Healthy again: streamed, and its shares are given.
    assert!(handle.set_health(GPU_B, true));
    let devices = conn.wait_lists(3, WAIT).await.unwrap();
    assert!(devices.iter().all(|d| d.health == HEALTHY));
    let admitted = conn.admit(1).await.unwrap();
    assert_eq!(device_of(&admitted.ids[0]), GPU_B);
    running.stop().await;
    kubelet.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn allocate_returns_the_env_and_mounts_of_the_device_its_ids_name() {
    let node = node();
    let mut kubelet = FakeKubelet::start(&node.dir).unwrap();
    let running = RunningPlugin::start(gpu_plugin(&node.root, 4), serve_config(&node.dir))
        .await
        .unwrap();
    let conn = kubelet.next_plugin(WAIT).await.unwrap();

    // Two shares for one container: the preference keeps them on one device.
    let admitted = conn.admit(2).await.unwrap();
    assert!(admitted.preferred);
    let device = device_of(&admitted.ids[0]);
    assert_eq!(device_of(&admitted.ids[1]), device, "{:?}", admitted.ids);
    let envs = &admitted.response.envs;
    assert_eq!(envs["NVIDIA_VISIBLE_DEVICES"], device);
    assert_eq!(envs["CUDA_VISIBLE_DEVICES"], device);
    assert_eq!(envs["DILU_DEVICE"], device);
    assert_eq!(envs["LD_PRELOAD"], CONTAINER_INTERPOSER);
    assert_eq!(envs["DILU_QUOTA_DIR"], CONTAINER_QUOTA_DIR);
    assert_eq!(envs.len(), 5, "{envs:?}");
    let channel_dir = node.root.join("channels").join(&device);
    let mounts: Vec<(String, String, bool)> = admitted
        .response
        .mounts
        .iter()
        .map(|m| (m.container_path.clone(), m.host_path.clone(), m.read_only))
        .collect();
    assert_eq!(
        mounts,
        vec![
            (
                CONTAINER_QUOTA_DIR.to_string(),
                channel_dir.display().to_string(),
                false
            ),
            (
                CONTAINER_INTERPOSER.to_string(),
                INTERPOSER.to_string(),
                true
            ),
        ]
    );
    assert!(channel_dir.is_dir(), "the mount source exists");

    // Without a preference the next pod goes to the device with the most free shares, again on one device.
    let next = conn.admit(2).await.unwrap();
    let other = if device == GPU_A { GPU_B } else { GPU_A };
    assert!(
        next.ids.iter().all(|id| device_of(id) == other),
        "{:?}",
        next.ids
    );

    // IDs that are not the plugin's, or that span two devices, are refused with the rule.
    for (bad, rule) in [
        (vec!["GPU-zzz::00".to_string()], "no such device"),
        (vec![format!("{GPU_A}::09")], "beyond"),
        (
            vec![format!("{GPU_A}::00"), format!("{GPU_B}::00")],
            "one device",
        ),
        (vec!["nonsense".to_string()], "must be"),
    ] {
        let error = conn.allocate(&bad).await.unwrap_err().to_string();
        assert!(
            error.contains(rule) && error.contains("invalid argument"),
            "{bad:?}: {error}"
        );
    }
    running.stop().await;
    kubelet.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_allocates_for_different_devices_need_no_lock_and_get_their_devices() {
    let node = node();
    let mut kubelet = FakeKubelet::start(&node.dir).unwrap();
    let running = RunningPlugin::start(gpu_plugin(&node.root, 32), serve_config(&node.dir))
        .await
        .unwrap();
    let conn = kubelet.next_plugin(WAIT).await.unwrap();

    let started = Instant::now();
    let calls: Vec<_> = (0..64u32)
        .map(|i| {
            let conn = conn.clone();
            let id = ids::virtual_id(if i % 2 == 0 { GPU_A } else { GPU_B }, i / 2);
            tokio::spawn(async move {
                let response = conn.allocate(std::slice::from_ref(&id)).await;
                (id, response)
            })
        })
        .collect();
    for call in calls {
        let (id, response) = call.await.unwrap();
        let response = response.unwrap();
        let device = device_of(&id);
        assert_eq!(response.envs["NVIDIA_VISIBLE_DEVICES"], device, "{id}");
        assert_eq!(response.envs["DILU_DEVICE"], device, "{id}");
        assert!(response.mounts[0].host_path.ends_with(&device), "{id}");
    }
    println!(
        "64 concurrent Allocate calls over two devices answered in {:.1} ms",
        started.elapsed().as_secs_f64() * 1e3
    );
    running.stop().await;
    kubelet.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_plugin_registers_again_after_each_kubelet_restart() {
    let node = node();
    let mut kubelet = FakeKubelet::start(&node.dir).unwrap();
    let running = RunningPlugin::start(gpu_plugin(&node.root, 2), serve_config(&node.dir))
        .await
        .unwrap();
    let first = kubelet.next_plugin(WAIT).await.unwrap();
    first.admit(1).await.unwrap();

    let mut times = Vec::new();
    for restart in 1..=3u64 {
        // The kubelet goes down (kubelet.sock removed); a new one clears the directory and serves a new socket.
        kubelet.stop().await;
        tokio::time::sleep(Duration::from_millis(100)).await;
        kubelet = FakeKubelet::start(&node.dir).unwrap();
        let conn = kubelet.next_plugin(WAIT).await.unwrap();
        let took = conn.registered.at.duration_since(kubelet.started());
        times.push(took.as_secs_f64() * 1e3);
        assert_eq!(conn.registered.request.resource_name, "dilu.io/gpu-share");
        assert_eq!(conn.devices.borrow().len(), 4);
        // The new kubelet allocates from scratch.
        let admitted = conn.admit(1).await.unwrap();
        assert_eq!(
            admitted.response.envs["DILU_QUOTA_DIR"],
            CONTAINER_QUOTA_DIR
        );
        // One registration and one bind per restart: the new kubelet removed our socket before creating its
        // own, and the plugin never registers an endpoint that is gone.
        let state = running.wait_registered(1 + restart, WAIT).await.unwrap();
        assert_eq!(
            (state.count, state.binds),
            (1 + restart, 1 + restart),
            "{state:?}"
        );
        assert!(
            kubelet.unreachable().is_empty(),
            "{:?}",
            kubelet.unreachable()
        );
    }
    println!(
        "re-registration after a kubelet restart (new kubelet.sock to Register received, poll 500 ms): {}",
        times
            .iter()
            .map(|t| format!("{t:.0} ms"))
            .collect::<Vec<_>>()
            .join(", ")
    );
    running.stop().await;
    kubelet.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cpu_device_gets_its_channel_directory_without_gpu_variables() {
    let node = node();
    let plugin = DevicePlugin::new(
        PluginConfig {
            resource_name: "dilu.io/cpu-share".into(),
            shares: 8,
            gpu: false,
            interposer: None,
            channel_root: node.root.join("channels"),
        },
        vec![PhysicalDevice {
            uuid: "CPU-0123".into(),
            healthy: true,
        }],
    )
    .unwrap();
    let mut kubelet = FakeKubelet::start(&node.dir).unwrap();
    let running = RunningPlugin::start(plugin, ServeConfig::new(&node.dir, "dilu-cpu-share.sock"))
        .await
        .unwrap();
    let conn = kubelet.next_plugin(WAIT).await.unwrap();
    assert_eq!(conn.registered.request.resource_name, "dilu.io/cpu-share");
    let admitted = conn.admit(1).await.unwrap();
    let envs = &admitted.response.envs;
    assert_eq!(envs["DILU_DEVICE"], "CPU-0123");
    assert_eq!(envs["DILU_QUOTA_DIR"], CONTAINER_QUOTA_DIR);
    assert!(!envs.contains_key("LD_PRELOAD") && !envs.contains_key("NVIDIA_VISIBLE_DEVICES"));
    assert_eq!(admitted.response.mounts.len(), 1);
    running.stop().await;
    kubelet.stop().await;
}

#[test]
fn a_bad_configuration_is_refused_naming_the_field() {
    let config = |shares, gpu, interposer: Option<&str>, root: &str| PluginConfig {
        resource_name: "dilu.io/gpu-share".into(),
        shares,
        gpu,
        interposer: interposer.map(PathBuf::from),
        channel_root: root.into(),
    };
    for (config, field) in [
        (config(0, false, None, "/run/dilu"), "shares"),
        (config(4, true, None, "/run/dilu"), "interposer"),
        (config(4, false, None, "relative"), "channel_root"),
    ] {
        let error = DevicePlugin::new(config, Vec::new())
            .err()
            .unwrap()
            .to_string();
        assert!(error.contains(field), "{error}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_agents_preference_steers_the_kubelets_pick_to_the_assigned_device() {
    let node = node();
    let mut kubelet = FakeKubelet::start(&node.dir).unwrap();
    let plugin = gpu_plugin(&node.root, 4);
    let handle = plugin.handle();
    let running = RunningPlugin::start(plugin, serve_config(&node.dir))
        .await
        .unwrap();
    let conn = kubelet.next_plugin(WAIT).await.unwrap();
    // By default the device with the most free shares (GPU-A on a tie); the agent names the assigned one.
    assert_eq!(device_of(&conn.admit(1).await.unwrap().ids[0]), GPU_A);
    let assigned = std::sync::Arc::new(std::sync::Mutex::new(GPU_A.to_string()));
    let hook = assigned.clone();
    handle.set_preference(Some(std::sync::Arc::new(move |_: &[&str]| {
        hook.lock().ok().map(|d| d.clone())
    })));
    for device in [GPU_A, GPU_B, GPU_B, GPU_A] {
        *assigned.lock().unwrap() = device.to_string();
        let admitted = conn.admit(1).await.unwrap();
        assert!(admitted.preferred);
        assert_eq!(device_of(&admitted.ids[0]), device);
        assert_eq!(admitted.response.envs["CUDA_VISIBLE_DEVICES"], device);
    }
    running.stop().await;
    kubelet.stop().await;
}
