//! Tests against a **real** Kubernetes API server, on one machine without a kubelet or container runtime.
//!
//! - [`ApiServer`]: etcd and kube-apiserver 1.20 on free loopback ports in a temporary directory (HTTPS with
//!   its self-signed certificate, token users, RBAC), a client and a kubeconfig per user, kubectl.
//! - [`KubeScheduler`]: the real kube-scheduler 1.20 against it.
//! - [`fake_node`], [`fake_nodes`]: Node objects with Dilu's inventory annotation and a Ready status.
//! - [`NodeRunner`]: **the stand-in for the kubelet**: runs the pods bound to those nodes as local processes
//!   on loopback addresses of their own, and reports their status; optionally with a device manager
//!   ([`NodeRunnerBuilder::device_plugins`]): a fake kubelet per node that device plugins register with, the
//!   Node's capacity from their lists, and `Allocate`'s env and mounts for the pods that ask for their resource.
//!
//! The binaries come from `scripts/build-kube.sh` (kube-apiserver, kube-scheduler in
//! `${DILU_KUBE_CACHE:-~/.cache/dilu/kube-1.20}/bin`), Debian's etcd-server (`etcd`) and kubectl
//! (`/usr/bin/kubectl`). Without them [`ApiServer::start`] prints `SKIPPED: …` and returns `None`, except
//! under CI (`CI=true`), where it panics:
//!
//! ```no_run
//! # async fn t() {
//! let Some(api) = dilu_k8s_testkit::ApiServer::start().await else { return };
//! let client = api.client();
//! # }
//! ```

#![warn(missing_docs)]

mod apiserver;
mod devices;
mod expand;
mod nodes;
mod probe;
mod process;
mod runner;
mod scheduler;
mod wait;

pub use apiserver::{
    ADMIN, ApiServer, BUILD_COMMAND, Binaries, KUBE_SCHEDULER_USER, KUBECTL, USERS, skip,
};
pub use devices::{PluginRegistration, translate_mounts};
pub use expand::expand;
pub use nodes::{
    FAKE_GPU_MEMORY_MIB, GPU_RESOURCE, NODE_LABEL, fake_devices, fake_node, fake_nodes,
};
pub use probe::http_status;
pub use runner::{HOST_IP, INHERITED_ENV, MAX_BACKOFF, MAX_GRACE, NodeRunner, NodeRunnerBuilder};
pub use scheduler::KubeScheduler;
pub use wait::{event_for, eventually};
