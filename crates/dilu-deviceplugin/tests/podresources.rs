//! The PodResources client against a stand-in kubelet on a Unix socket: the shares of Dilu's resources each pod
//! holds, as device UUIDs; other resources ignored; an ID that is not a share refused; no socket an error.

use std::collections::BTreeSet;
use std::time::Duration;

use dilu_deviceplugin::podresources::{PodDevices, list};
use dilu_deviceplugin::testkit::FakePodResources;

const GPU: &str = "dilu.io/gpu-share";
const CPU: &str = "dilu.io/cpu-share";
const WAIT: Duration = Duration::from_secs(5);

#[tokio::test]
async fn pods_and_the_devices_their_shares_name() {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("kubelet.sock");
    let kubelet = FakePodResources::start(&socket).unwrap();
    kubelet.hold("work", "a", GPU, &["GPU-1::00", "GPU-1::03"]);
    kubelet.hold("work", "b", GPU, &["GPU-2::07"]);
    kubelet.hold("work", "c", CPU, &["CPU-x::01"]);
    kubelet.hold("other", "d", "nvidia.com/gpu", &["GPU-9"]);
    let pods = list(&socket, &[GPU, CPU], WAIT).await.unwrap();
    let set = |d: &[&str]| d.iter().map(|s| s.to_string()).collect::<BTreeSet<_>>();
    assert_eq!(
        pods,
        vec![
            PodDevices {
                key: "work/a".into(),
                devices: set(&["GPU-1"])
            },
            PodDevices {
                key: "work/b".into(),
                devices: set(&["GPU-2"])
            },
            PodDevices {
                key: "work/c".into(),
                devices: set(&["CPU-x"])
            },
        ]
    );
    // Only the resources asked for.
    let gpu_only = list(&socket, &[GPU], WAIT).await.unwrap();
    assert_eq!(gpu_only.len(), 2);

    // An ID of ours that is not a share: refused with the rule.
    kubelet.hold("work", "e", GPU, &["GPU-3"]);
    let error = list(&socket, &[GPU], WAIT).await.unwrap_err().to_string();
    assert!(
        error.contains("\"GPU-3\"") && error.contains("must be"),
        "{error}"
    );
    kubelet.stop().await;

    // No kubelet: an error naming the socket.
    std::fs::remove_file(&socket).ok();
    let error = list(&socket, &[GPU], WAIT).await.unwrap_err().to_string();
    assert!(error.contains(&socket.display().to_string()), "{error}");
}
