//! The `DevicePlugin` service (v1beta1): each physical device offered as `shares` virtual IDs.

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::Arc;

use tokio::sync::watch;
use tokio_stream::{Stream, StreamExt, wrappers::WatchStream};
use tonic::{Request, Response, Status};

use crate::v1beta1::{
    self, AllocateRequest, AllocateResponse, ContainerAllocateResponse,
    ContainerPreferredAllocationResponse, DevicePluginOptions, Empty, ListAndWatchResponse, Mount,
    PreStartContainerRequest, PreStartContainerResponse, PreferredAllocationRequest,
    PreferredAllocationResponse, device_plugin_server,
};
use crate::{Error, HEALTHY, UNHEALTHY, ids};

/// Where the interposer appears inside a container.
pub const CONTAINER_INTERPOSER: &str = "/usr/local/lib/dilu/libdilu_cuda.so";
/// Where the device's channel directory appears inside a container.
pub const CONTAINER_QUOTA_DIR: &str = "/run/dilu/quota";
/// Env: the directory of the device's quota channels inside the container; the instance's own channel is
/// `$DILU_QUOTA_DIR/<pod UID>` (docs/kubernetes.md, "The device plugin").
pub const QUOTA_DIR_ENV: &str = "DILU_QUOTA_DIR";
/// Env: the device UUID (the same name the agent sets for its local instances).
pub const DEVICE_ENV: &str = "DILU_DEVICE";

/// What one plugin offers: one extended resource, each device of it as `shares` virtual IDs.
#[derive(Debug, Clone)]
pub struct PluginConfig {
    /// The extended resource (`dilu.io/gpu-share`, `dilu.io/cpu-share`).
    pub resource_name: String,
    /// Virtual IDs per physical device: the most pods that can share one device.
    pub shares: u32,
    /// Whether the devices are GPUs (then `Allocate` sets the NVIDIA/CUDA variables and preloads the interposer).
    pub gpu: bool,
    /// The interposer on the host (`libdilu_cuda.so`), mounted read-only and preloaded; GPU plugins only.
    pub interposer: Option<PathBuf>,
    /// The host directory under which each device has its channel directory (`<root>/<device UUID>/`),
    /// mounted into the container at [`CONTAINER_QUOTA_DIR`].
    pub channel_root: PathBuf,
}

impl PluginConfig {
    /// Checks the configuration.
    pub fn validate(&self) -> Result<(), Error> {
        let bad = |field, value: String, rule| Err(Error::Config { field, value, rule });
        if self.shares == 0 {
            return bad("shares", "0".into(), "must be at least 1");
        }
        if !self.resource_name.contains('/') {
            return bad(
                "resource_name",
                self.resource_name.clone(),
                "must be <domain>/<name> (extended resource)",
            );
        }
        if self.gpu && self.interposer.is_none() {
            return bad(
                "interposer",
                "none".into(),
                "GPU shares need the interposer",
            );
        }
        if !self.channel_root.is_absolute() {
            return bad(
                "channel_root",
                self.channel_root.display().to_string(),
                "must be an absolute host path",
            );
        }
        Ok(())
    }
}

/// A physical device and its health.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PhysicalDevice {
    /// The device UUID (`GPU-…`, `CPU-…`).
    pub uuid: String,
    /// Whether the kubelet may give its shares to new pods.
    pub healthy: bool,
}

/// What `Allocate` gives one container: the device the IDs name, its env and mounts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Allocation {
    /// The device UUID.
    pub device: String,
    /// The container's extra environment.
    pub envs: BTreeMap<String, String>,
    /// The container's extra mounts.
    pub mounts: Vec<Mount>,
}

/// Which device the next container should get, given the healthy devices that have free shares (the agent's
/// answer: the device dilu-scheduler assigned to the pod bound to this node that the kubelet admits next).
/// `None`, or a device not in the list, leaves the choice to the plugin's default.
pub type Preference = Arc<dyn Fn(&[&str]) -> Option<String> + Send + Sync>;

struct Shared {
    config: PluginConfig,
    devices: watch::Sender<Vec<PhysicalDevice>>,
    preference: watch::Sender<Option<Preference>>,
}

/// The device plugin service; cheap to clone (one shared state).
#[derive(Clone)]
pub struct DevicePlugin {
    shared: Arc<Shared>,
    /// Set by the server that serves this copy when it stops: ends the `ListAndWatch` streams, which otherwise
    /// last as long as the kubelet's connection and would hold a graceful shutdown forever.
    closing: Option<watch::Receiver<bool>>,
}

/// Changes what the plugin offers while it serves (health, devices); `ListAndWatch` streams every change.
#[derive(Clone)]
pub struct PluginHandle {
    shared: Arc<Shared>,
}

impl DevicePlugin {
    /// A plugin offering `devices` as configured.
    pub fn new(config: PluginConfig, devices: Vec<PhysicalDevice>) -> Result<Self, Error> {
        config.validate()?;
        let (devices, _) = watch::channel(devices);
        let (preference, _) = watch::channel(None);
        Ok(Self {
            shared: Arc::new(Shared {
                config,
                devices,
                preference,
            }),
            closing: None,
        })
    }

    /// A copy whose `ListAndWatch` streams end when `closing` turns true (for the server that serves it).
    pub fn closing_on(&self, closing: watch::Receiver<bool>) -> Self {
        Self {
            shared: self.shared.clone(),
            closing: Some(closing),
        }
    }

    /// The configuration.
    pub fn config(&self) -> &PluginConfig {
        &self.shared.config
    }

    /// A handle to change health and devices.
    pub fn handle(&self) -> PluginHandle {
        PluginHandle {
            shared: self.shared.clone(),
        }
    }

    /// The options the plugin registers with and answers `GetDevicePluginOptions` with.
    pub fn options() -> DevicePluginOptions {
        DevicePluginOptions {
            pre_start_required: false,
            get_preferred_allocation_available: true,
        }
    }

    /// The device list as `ListAndWatch` sends it: every share of every device, with the device's health.
    pub fn device_list(&self, devices: &[PhysicalDevice]) -> Vec<v1beta1::Device> {
        devices
            .iter()
            .flat_map(|device| {
                let health = if device.healthy { HEALTHY } else { UNHEALTHY };
                (0..self.shared.config.shares).map(move |index| v1beta1::Device {
                    id: ids::virtual_id(&device.uuid, index),
                    health: health.to_string(),
                    topology: None,
                })
            })
            .collect()
    }

    /// What one container gets for `device_ids`: they must all name one device this plugin offers.
    /// A pure function of the IDs: concurrent calls need no lock. Creates the device's channel directory on
    /// the host if it is missing (idempotent), so that the runtime finds the mount source.
    pub fn allocate_container(&self, device_ids: &[String]) -> Result<Allocation, Error> {
        let config = &self.shared.config;
        let mut device: Option<&str> = None;
        let mut first_id = String::new();
        for id in device_ids {
            let (uuid, index) = ids::parse(id)?;
            if index >= config.shares {
                return Err(Error::BadDeviceId {
                    id: id.clone(),
                    rule: "share index beyond the plugin's shares per device",
                });
            }
            match device {
                None => {
                    device = Some(uuid);
                    first_id.clone_from(id);
                }
                Some(first) if first == uuid => {}
                Some(_) => {
                    return Err(Error::BadDeviceId {
                        id: id.clone(),
                        rule: "a container's shares must all be on one device",
                    });
                }
            }
        }
        let Some(uuid) = device else {
            return Err(Error::BadDeviceId {
                id: String::new(),
                rule: "a container needs at least one device ID",
            });
        };
        if !self.shared.devices.borrow().iter().any(|d| d.uuid == uuid) {
            return Err(Error::BadDeviceId {
                id: first_id,
                rule: "no such device in this plugin",
            });
        }
        let channel_dir = config.channel_root.join(uuid);
        std::fs::create_dir_all(&channel_dir).map_err(Error::io("creating", &channel_dir))?;
        let mut envs = BTreeMap::new();
        envs.insert(DEVICE_ENV.to_string(), uuid.to_string());
        envs.insert(QUOTA_DIR_ENV.to_string(), CONTAINER_QUOTA_DIR.to_string());
        let mut mounts = vec![Mount {
            container_path: CONTAINER_QUOTA_DIR.to_string(),
            host_path: channel_dir.display().to_string(),
            read_only: false,
        }];
        if config.gpu {
            envs.insert("NVIDIA_VISIBLE_DEVICES".into(), uuid.to_string());
            envs.insert("CUDA_VISIBLE_DEVICES".into(), uuid.to_string());
            if let Some(interposer) = &config.interposer {
                envs.insert("LD_PRELOAD".into(), CONTAINER_INTERPOSER.to_string());
                mounts.push(Mount {
                    container_path: CONTAINER_INTERPOSER.to_string(),
                    host_path: interposer.display().to_string(),
                    read_only: true,
                });
            }
        }
        Ok(Allocation {
            device: uuid.to_string(),
            envs,
            mounts,
        })
    }

    /// The IDs to suggest for one container: `must_include` first, then shares of the device they name (or of
    /// the device the [`Preference`] names, or of the healthy device with the most free shares), then any other
    /// available share. Never fewer than `size` when enough are available.
    pub fn prefer(
        &self,
        available: &[String],
        must_include: &[String],
        size: usize,
    ) -> Vec<String> {
        let mut chosen: Vec<String> = must_include.iter().take(size).cloned().collect();
        let mut free: BTreeMap<&str, Vec<&String>> = BTreeMap::new();
        for id in available {
            if chosen.contains(id) {
                continue;
            }
            if let Ok((uuid, _)) = ids::parse(id) {
                free.entry(uuid).or_default().push(id);
            }
        }
        let healthy: Vec<String> = self
            .shared
            .devices
            .borrow()
            .iter()
            .filter(|d| d.healthy)
            .map(|d| d.uuid.clone())
            .collect();
        let device = chosen
            .first()
            .and_then(|id| ids::parse(id).ok().map(|(uuid, _)| uuid.to_string()))
            .or_else(|| {
                let candidates: Vec<&str> = free
                    .keys()
                    .copied()
                    .filter(|uuid| healthy.iter().any(|h| h == uuid))
                    .collect();
                let preference = self.shared.preference.borrow().clone();
                preference
                    .and_then(|prefer| prefer(&candidates))
                    .filter(|uuid| candidates.contains(&uuid.as_str()))
            })
            .or_else(|| {
                free.iter()
                    .filter(|(uuid, _)| healthy.iter().any(|h| h == *uuid))
                    .max_by_key(|(uuid, ids)| (ids.len(), std::cmp::Reverse(**uuid)))
                    .map(|(uuid, _)| uuid.to_string())
            });
        let mut order: Vec<&String> = Vec::new();
        if let Some(device) = &device {
            order.extend(free.get(device.as_str()).into_iter().flatten());
        }
        order.extend(
            free.iter()
                .filter(|(uuid, _)| Some(**uuid) != device.as_deref())
                .flat_map(|(_, ids)| ids.iter()),
        );
        for id in order {
            if chosen.len() >= size {
                break;
            }
            chosen.push(id.clone());
        }
        chosen
    }
}

impl PluginHandle {
    /// Sets the health of device `uuid`; returns whether it changed (then `ListAndWatch` sends the list again).
    pub fn set_health(&self, uuid: &str, healthy: bool) -> bool {
        self.shared.devices.send_if_modified(|devices| {
            match devices.iter_mut().find(|d| d.uuid == uuid) {
                Some(device) if device.healthy != healthy => {
                    device.healthy = healthy;
                    true
                }
                _ => false,
            }
        })
    }

    /// Replaces the device set (devices found or lost); `ListAndWatch` sends the new list when it differs.
    pub fn set_devices(&self, devices: Vec<PhysicalDevice>) {
        self.shared.devices.send_if_modified(|current| {
            let changed = *current != devices;
            *current = devices;
            changed
        });
    }

    /// Sets (or clears) the hook that picks the device for the next container (see [`Preference`]).
    pub fn set_preference(&self, preference: Option<Preference>) {
        self.shared.preference.send_replace(preference);
    }

    /// The devices as offered now.
    pub fn devices(&self) -> Vec<PhysicalDevice> {
        self.shared.devices.borrow().clone()
    }
}

fn status(error: Error) -> Status {
    match error {
        Error::BadDeviceId { .. } => Status::invalid_argument(error.to_string()),
        _ => Status::internal(error.to_string()),
    }
}

type DeviceStream = Pin<Box<dyn Stream<Item = Result<ListAndWatchResponse, Status>> + Send>>;

#[tonic::async_trait]
impl device_plugin_server::DevicePlugin for DevicePlugin {
    async fn get_device_plugin_options(
        &self,
        _: Request<Empty>,
    ) -> Result<Response<DevicePluginOptions>, Status> {
        Ok(Response::new(Self::options()))
    }

    type ListAndWatchStream = DeviceStream;

    async fn list_and_watch(
        &self,
        _: Request<Empty>,
    ) -> Result<Response<Self::ListAndWatchStream>, Status> {
        let plugin = self.clone();
        // The current list first, then one list per change; the stream ends when the client goes away or the
        // server closes.
        let lists = WatchStream::new(self.shared.devices.subscribe()).map(move |devices| {
            Some(ListAndWatchResponse {
                devices: plugin.device_list(&devices),
            })
        });
        let Some(closing) = self.closing.clone() else {
            return Ok(Response::new(Box::pin(
                lists.filter_map(|list| list.map(Ok)),
            )));
        };
        let closed = WatchStream::new(closing)
            .filter(|closing| *closing)
            .map(|_| None);
        let stream = lists
            .merge(closed)
            .take_while(Option::is_some)
            .filter_map(|list| list.map(Ok));
        Ok(Response::new(Box::pin(stream)))
    }

    async fn get_preferred_allocation(
        &self,
        request: Request<PreferredAllocationRequest>,
    ) -> Result<Response<PreferredAllocationResponse>, Status> {
        let container_responses = request
            .into_inner()
            .container_requests
            .iter()
            .map(|c| ContainerPreferredAllocationResponse {
                device_i_ds: self.prefer(
                    &c.available_device_i_ds,
                    &c.must_include_device_i_ds,
                    usize::try_from(c.allocation_size).unwrap_or(0),
                ),
            })
            .collect();
        Ok(Response::new(PreferredAllocationResponse {
            container_responses,
        }))
    }

    async fn allocate(
        &self,
        request: Request<AllocateRequest>,
    ) -> Result<Response<AllocateResponse>, Status> {
        let mut container_responses = Vec::new();
        for container in request.into_inner().container_requests {
            let allocation = self
                .allocate_container(&container.devices_i_ds)
                .map_err(status)?;
            container_responses.push(ContainerAllocateResponse {
                envs: allocation.envs.into_iter().collect::<HashMap<_, _>>(),
                mounts: allocation.mounts,
                devices: Vec::new(),
                annotations: HashMap::new(),
            });
        }
        Ok(Response::new(AllocateResponse {
            container_responses,
        }))
    }

    async fn pre_start_container(
        &self,
        _: Request<PreStartContainerRequest>,
    ) -> Result<Response<PreStartContainerResponse>, Status> {
        Ok(Response::new(PreStartContainerResponse {}))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plugin(devices: &[(&str, bool)]) -> DevicePlugin {
        DevicePlugin::new(
            PluginConfig {
                resource_name: "dilu.io/gpu-share".into(),
                shares: 4,
                gpu: true,
                interposer: Some("/opt/libdilu_cuda.so".into()),
                channel_root: std::env::temp_dir().join("dilu-deviceplugin-unit"),
            },
            devices
                .iter()
                .map(|(uuid, healthy)| PhysicalDevice {
                    uuid: uuid.to_string(),
                    healthy: *healthy,
                })
                .collect(),
        )
        .unwrap()
    }

    fn all(uuids: &[&str]) -> Vec<String> {
        uuids
            .iter()
            .flat_map(|u| (0..4).map(move |i| ids::virtual_id(u, i)))
            .collect()
    }

    #[test]
    fn the_preference_keeps_must_include_and_fills_from_its_device() {
        let p = plugin(&[("GPU-a", true), ("GPU-b", true)]);
        let available = all(&["GPU-a", "GPU-b"]);
        let must = vec!["GPU-b::02".to_string()];
        assert_eq!(
            p.prefer(&available, &must, 3),
            ["GPU-b::02", "GPU-b::00", "GPU-b::01"]
        );
    }

    #[test]
    fn without_a_hook_the_healthy_device_with_most_free_shares_wins_and_others_fill_up() {
        let p = plugin(&[("GPU-a", true), ("GPU-b", true), ("GPU-c", false)]);
        let available: Vec<String> = all(&["GPU-a", "GPU-b", "GPU-c"])
            .into_iter()
            .filter(|id| id != "GPU-a::00")
            .collect();
        // GPU-c has the most free shares but is unhealthy; GPU-b has 4, GPU-a 3.
        assert_eq!(p.prefer(&available, &[], 2), ["GPU-b::00", "GPU-b::01"]);
        // More than one device holds: the rest comes from the others.
        assert_eq!(p.prefer(&available, &[], 5).len(), 5);
        assert!(
            p.prefer(&available, &[], 5)[..4]
                .iter()
                .all(|id| id.starts_with("GPU-b"))
        );
    }

    #[test]
    fn a_hook_naming_a_device_without_free_shares_is_ignored() {
        let p = plugin(&[("GPU-a", true), ("GPU-b", true)]);
        p.handle()
            .set_preference(Some(Arc::new(|_: &[&str]| Some("GPU-z".to_string()))));
        assert_eq!(p.prefer(&all(&["GPU-a"]), &[], 1), ["GPU-a::00"]);
        p.handle()
            .set_preference(Some(Arc::new(|c: &[&str]| c.last().map(|d| d.to_string()))));
        assert_eq!(p.prefer(&all(&["GPU-a", "GPU-b"]), &[], 1), ["GPU-b::00"]);
    }
}
