//! Dilu's Kubernetes device plugin: the node agent offers its devices to the kubelet as shares.
//!
//! Each physical device (a GPU, or the CPU device) is offered as `shares` virtual device IDs of one extended
//! resource (`dilu.io/gpu-share`, `dilu.io/cpu-share`), so that several pods share it. A virtual ID names its
//! device (`GPU-…::07`, see [`ids`]), so `Allocate` knows the device from the IDs alone and needs neither the
//! pod nor a lock; the design is in `docs/kubernetes.md` ("The device plugin").
//!
//! - [`plugin`]: the `DevicePlugin` gRPC service (v1beta1): options, `ListAndWatch` with health, preferred
//!   allocation, `Allocate` (env and mounts of the device the IDs name), `PreStartContainer` (no-op).
//! - [`server`]: serves the plugin on its Unix socket in the kubelet's device plugin directory, registers with
//!   `kubelet.sock`, and registers again (re-serving its own socket if it was removed) when the kubelet restarts.
//! - [`podresources`]: a client of the kubelet's PodResources API (`List`): which shares each pod holds.
//! - `testkit` (feature `testkit`): a kubelet-side peer for tests, written from the same proto, and a stand-in
//!   for the PodResources API.
//! - [`v1beta1`]: the generated API (vendored `proto/deviceplugin/v1beta1/api.proto`).

pub mod error;
pub mod ids;
pub mod plugin;
pub mod podresources;
pub mod server;
#[cfg(feature = "testkit")]
pub mod testkit;
pub mod uds;

pub use error::Error;
pub use plugin::{
    Allocation, DevicePlugin, PhysicalDevice, PluginConfig, PluginHandle, Preference,
};
pub use server::{RegistrationState, RunningPlugin, ServeConfig};

/// The kubelet device plugin API v1beta1, generated from the vendored proto (both services, client and server).
#[allow(missing_docs, clippy::all, clippy::pedantic)]
pub mod v1beta1 {
    tonic::include_proto!("v1beta1");
}

/// The part of the kubelet's PodResources API v1 the agent reads (`proto/podresources/v1/api.proto`).
#[allow(missing_docs, clippy::all, clippy::pedantic)]
pub mod v1 {
    tonic::include_proto!("v1");
}

/// The API version a plugin registers with.
pub const API_VERSION: &str = "v1beta1";
/// The kubelet's device plugin directory (its `kubelet.sock` and the plugins' sockets).
pub const DEFAULT_PLUGIN_DIR: &str = "/var/lib/kubelet/device-plugins";
/// The kubelet's registration socket, in the device plugin directory.
pub const KUBELET_SOCKET: &str = "kubelet.sock";
/// Device health as the kubelet spells it.
pub const HEALTHY: &str = "Healthy";
/// Device health as the kubelet spells it.
pub const UNHEALTHY: &str = "Unhealthy";
