//! A kubelet-side peer for tests (feature `testkit`), written from the same proto as the plugin.
//!
//! [`FakeKubelet`] serves `Registration` on `kubelet.sock` in a directory. When a plugin registers it does what
//! the kubelet's device manager does: checks the version, connects to the plugin's endpoint, calls
//! `GetDevicePluginOptions` and `ListAndWatch` (keeping the latest list), and hands the test a [`PluginConn`].
//! [`PluginConn::admit`] then allocates for one container the way the kubelet does when it admits a pod: the
//! healthy IDs not yet allocated, `GetPreferredAllocation` when the plugin offers it, then `Allocate`.
//! Like the kubelet, starting it removes the sockets already in the directory (plugins must serve again).

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinHandle;
use tonic::transport::{Channel, Server};
use tonic::{Request, Response, Status};

use crate::v1beta1::{
    AllocateRequest, ContainerAllocateRequest, ContainerAllocateResponse,
    ContainerPreferredAllocationRequest, Device, DevicePluginOptions, Empty,
    PreferredAllocationRequest, RegisterRequest, device_plugin_client::DevicePluginClient,
    registration_server,
};
use crate::{API_VERSION, Error, HEALTHY, KUBELET_SOCKET, uds};

/// A registration the fake kubelet accepted.
#[derive(Debug, Clone)]
pub struct Registered {
    /// What the plugin sent.
    pub request: RegisterRequest,
    /// When the kubelet received it.
    pub at: Instant,
}

/// The kubelet's connection to one registered plugin.
#[derive(Clone)]
pub struct PluginConn {
    /// The registration.
    pub registered: Registered,
    /// The options `GetDevicePluginOptions` answered.
    pub options: DevicePluginOptions,
    /// The latest device list from `ListAndWatch` (the first one is there when the connection is handed out).
    pub devices: watch::Receiver<Vec<Device>>,
    /// How many lists `ListAndWatch` has sent.
    pub lists: watch::Receiver<u64>,
    client: DevicePluginClient<Channel>,
    allocated: Arc<Mutex<BTreeSet<String>>>,
}

/// One container's allocation as the kubelet made it.
#[derive(Debug, Clone)]
pub struct Admitted {
    /// The IDs given to the container.
    pub ids: Vec<String>,
    /// Whether they are what `GetPreferredAllocation` suggested.
    pub preferred: bool,
    /// What `Allocate` answered for the container.
    pub response: ContainerAllocateResponse,
}

struct Registrar {
    plugins: mpsc::UnboundedSender<Result<PluginConn, Error>>,
    dir: PathBuf,
}

#[tonic::async_trait]
impl registration_server::Registration for Registrar {
    async fn register(&self, request: Request<RegisterRequest>) -> Result<Response<Empty>, Status> {
        let at = Instant::now();
        let request = request.into_inner();
        if request.version != API_VERSION {
            return Err(Status::invalid_argument(format!(
                "unsupported device plugin API version {:?}",
                request.version
            )));
        }
        if request.endpoint.contains('/') {
            return Err(Status::invalid_argument("the endpoint must be a file name"));
        }
        // Like the kubelet: answer, then connect to the plugin in the background.
        let socket = self.dir.join(&request.endpoint);
        let plugins = self.plugins.clone();
        let registered = Registered { request, at };
        tokio::spawn(async move {
            let _ = plugins.send(PluginConn::connect(&socket, registered).await);
        });
        Ok(Response::new(Empty {}))
    }
}

impl PluginConn {
    async fn connect(socket: &Path, registered: Registered) -> Result<PluginConn, Error> {
        let mut client = DevicePluginClient::new(uds::connect(socket).await?);
        let options = client
            .get_device_plugin_options(Empty {})
            .await
            .map_err(|status| Error::Call {
                call: "GetDevicePluginOptions",
                status,
            })?
            .into_inner();
        let mut stream = client
            .list_and_watch(Empty {})
            .await
            .map_err(|status| Error::Call {
                call: "ListAndWatch",
                status,
            })?
            .into_inner();
        let first = stream
            .message()
            .await
            .map_err(|status| Error::Call {
                call: "ListAndWatch",
                status,
            })?
            .ok_or_else(|| Error::Call {
                call: "ListAndWatch",
                status: Status::unavailable("the stream ended before the first list"),
            })?;
        let (devices_tx, devices) = watch::channel(first.devices);
        let (lists_tx, lists) = watch::channel(1u64);
        tokio::spawn(async move {
            while let Ok(Some(list)) = stream.message().await {
                devices_tx.send_replace(list.devices);
                lists_tx.send_modify(|n| *n += 1);
            }
        });
        Ok(PluginConn {
            registered,
            options,
            devices,
            lists,
            client,
            allocated: Arc::new(Mutex::new(BTreeSet::new())),
        })
    }

    /// The IDs the kubelet could give now: healthy and not allocated by this connection.
    pub fn available(&self) -> Vec<String> {
        let allocated = self.allocated.lock().map(|a| a.clone()).unwrap_or_default();
        self.devices
            .borrow()
            .iter()
            .filter(|d| d.health == HEALTHY && !allocated.contains(&d.id))
            .map(|d| d.id.clone())
            .collect()
    }

    /// Admits one container asking for `size` IDs, as the kubelet does: picks from the available IDs (the
    /// plugin's preference when it offers one and it is valid, else the first ones), reserves them, and calls
    /// `Allocate`; on failure the IDs are released.
    pub async fn admit(&self, size: usize) -> Result<Admitted, Error> {
        let available = self.available();
        let (ids, preferred) = self.pick(&available, size).await?;
        if let Ok(mut allocated) = self.allocated.lock() {
            allocated.extend(ids.iter().cloned());
        }
        match self.allocate(&ids).await {
            Ok(response) => Ok(Admitted {
                ids,
                preferred,
                response,
            }),
            Err(error) => {
                if let Ok(mut allocated) = self.allocated.lock() {
                    for id in &ids {
                        allocated.remove(id);
                    }
                }
                Err(error)
            }
        }
    }

    /// Picks `size` IDs out of `available` as the kubelet does, without reserving or allocating them: the
    /// plugin's `GetPreferredAllocation` answer when its options offer it and the answer is valid (`size` IDs,
    /// all available), else the first `size` available IDs. The flag tells whether the preference was taken.
    /// For a kubelet-side peer that keeps its own record of allocated IDs (the node runner's device manager).
    pub async fn pick(
        &self,
        available: &[String],
        size: usize,
    ) -> Result<(Vec<String>, bool), Error> {
        if available.len() < size {
            return Err(Error::Call {
                call: "admit",
                status: Status::resource_exhausted(format!(
                    "{} IDs requested, {} available",
                    size,
                    available.len()
                )),
            });
        }
        let first: Vec<String> = available.iter().take(size).cloned().collect();
        if !self.options.get_preferred_allocation_available {
            return Ok((first, false));
        }
        let answer = self
            .client
            .clone()
            .get_preferred_allocation(PreferredAllocationRequest {
                container_requests: vec![ContainerPreferredAllocationRequest {
                    available_device_i_ds: available.to_vec(),
                    must_include_device_i_ds: Vec::new(),
                    allocation_size: i32::try_from(size).unwrap_or(i32::MAX),
                }],
            })
            .await
            .map_err(|status| Error::Call {
                call: "GetPreferredAllocation",
                status,
            })?
            .into_inner();
        if let Some(suggested) = answer.container_responses.into_iter().next() {
            let valid = suggested.device_i_ds.len() == size
                && suggested
                    .device_i_ds
                    .iter()
                    .all(|id| available.contains(id));
            if valid {
                return Ok((suggested.device_i_ds, true));
            }
        }
        Ok((first, false))
    }

    /// Calls `Allocate` for one container with exactly `ids`.
    pub async fn allocate(&self, ids: &[String]) -> Result<ContainerAllocateResponse, Error> {
        let response = self
            .client
            .clone()
            .allocate(AllocateRequest {
                container_requests: vec![ContainerAllocateRequest {
                    devices_i_ds: ids.to_vec(),
                }],
            })
            .await
            .map_err(|status| Error::Call {
                call: "Allocate",
                status,
            })?
            .into_inner();
        response
            .container_responses
            .into_iter()
            .next()
            .ok_or_else(|| Error::Call {
                call: "Allocate",
                status: Status::internal("no container response"),
            })
    }

    /// Waits until `ListAndWatch` has sent at least `count` lists; returns the latest.
    pub async fn wait_lists(&self, count: u64, timeout: Duration) -> Result<Vec<Device>, Error> {
        let mut lists = self.lists.clone();
        match tokio::time::timeout(timeout, lists.wait_for(|n| *n >= count)).await {
            Ok(Ok(_)) => Ok(self.devices.borrow().clone()),
            _ => Err(Error::Timeout {
                call: "ListAndWatch",
                millis: timeout.as_millis(),
            }),
        }
    }
}

/// A stand-in for the kubelet's device manager: `Registration` on `<dir>/kubelet.sock`.
pub struct FakeKubelet {
    socket: PathBuf,
    started: Instant,
    plugins: mpsc::UnboundedReceiver<Result<PluginConn, Error>>,
    unreachable: Vec<String>,
    shutdown: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<()>>,
}

impl FakeKubelet {
    /// Starts serving in `dir`; first removes every socket already there, as the kubelet does when it starts.
    pub fn start(dir: &Path) -> Result<Self, Error> {
        let entries = std::fs::read_dir(dir).map_err(Error::io("reading", dir))?;
        for entry in entries.flatten() {
            let is_socket = entry
                .file_type()
                .map(|t| std::os::unix::fs::FileTypeExt::is_socket(&t))
                .unwrap_or(false);
            if is_socket {
                let path = entry.path();
                std::fs::remove_file(&path).map_err(Error::io("removing", path))?;
            }
        }
        let socket = dir.join(KUBELET_SOCKET);
        let listener = uds::bind(&socket)?;
        let started = Instant::now();
        let (plugins_tx, plugins) = mpsc::unbounded_channel();
        let service = registration_server::RegistrationServer::new(Registrar {
            plugins: plugins_tx,
            dir: dir.to_path_buf(),
        });
        let (shutdown, task) = uds::spawn_serving(listener, Server::builder().add_service(service));
        Ok(Self {
            socket,
            started,
            plugins,
            unreachable: Vec::new(),
            shutdown: Some(shutdown),
            task: Some(task),
        })
    }

    /// When `kubelet.sock` was created.
    pub fn started(&self) -> Instant {
        self.started
    }

    /// The next plugin that registered (and answered options and its first list), waiting up to `timeout`.
    /// A registration whose endpoint could not be reached is skipped and counted in
    /// [`FakeKubelet::unreachable`], as the kubelet logs it and waits for the plugin to register again.
    pub async fn next_plugin(&mut self, timeout: Duration) -> Result<PluginConn, Error> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            match tokio::time::timeout_at(deadline, self.plugins.recv()).await {
                Ok(Some(Ok(conn))) => return Ok(conn),
                Ok(Some(Err(error))) => self.unreachable.push(error.to_string()),
                _ => {
                    return Err(Error::Timeout {
                        call: "Register",
                        millis: timeout.as_millis(),
                    });
                }
            }
        }
    }

    /// Registrations whose endpoint the kubelet could not reach (skipped by [`FakeKubelet::next_plugin`]).
    pub fn unreachable(&self) -> &[String] {
        &self.unreachable
    }

    /// Stops serving and removes `kubelet.sock` (a kubelet going down).
    pub async fn stop(mut self) {
        if let Some(shutdown) = self.shutdown.take() {
            let _ = shutdown.send(());
        }
        if let Some(task) = self.task.take() {
            let _ = task.await;
        }
        let _ = std::fs::remove_file(&self.socket);
    }
}

/// A stand-in for the kubelet's PodResources API (`v1.PodResourcesLister/List`) on a socket: answers with the
/// pods the test sets, as the kubelet answers with the IDs it gave each container.
pub struct FakePodResources {
    pods: Arc<Mutex<Vec<crate::v1::PodResources>>>,
    shutdown: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<()>>,
}

impl FakePodResources {
    /// Serves on `socket` (a stale socket file there is replaced).
    pub fn start(socket: &Path) -> Result<Self, Error> {
        let listener = uds::bind(socket)?;
        let pods = Arc::new(Mutex::new(Vec::new()));
        let service =
            crate::v1::pod_resources_lister_server::PodResourcesListerServer::new(Lister {
                pods: pods.clone(),
            });
        let (shutdown, task) = uds::spawn_serving(listener, Server::builder().add_service(service));
        Ok(Self {
            pods,
            shutdown: Some(shutdown),
            task: Some(task),
        })
    }

    /// From now on `List` answers that pod `namespace/name` (one container, `c`) holds `ids` of `resource`,
    /// besides the pods set before.
    pub fn hold(&self, namespace: &str, name: &str, resource: &str, ids: &[&str]) {
        let pod = crate::v1::PodResources {
            name: name.to_string(),
            namespace: namespace.to_string(),
            containers: vec![crate::v1::ContainerResources {
                name: "c".into(),
                devices: vec![crate::v1::ContainerDevices {
                    resource_name: resource.to_string(),
                    device_ids: ids.iter().map(|id| (*id).to_string()).collect(),
                }],
            }],
        };
        let mut pods = self.pods.lock().unwrap_or_else(|e| e.into_inner());
        pods.retain(|p| !(p.namespace == namespace && p.name == name));
        pods.push(pod);
    }

    /// Stops serving.
    pub async fn stop(mut self) {
        if let Some(shutdown) = self.shutdown.take() {
            let _ = shutdown.send(());
        }
        if let Some(task) = self.task.take() {
            let _ = task.await;
        }
    }
}

struct Lister {
    pods: Arc<Mutex<Vec<crate::v1::PodResources>>>,
}

#[tonic::async_trait]
impl crate::v1::pod_resources_lister_server::PodResourcesLister for Lister {
    async fn list(
        &self,
        _: Request<crate::v1::ListPodResourcesRequest>,
    ) -> Result<Response<crate::v1::ListPodResourcesResponse>, Status> {
        let pods = self.pods.lock().unwrap_or_else(|e| e.into_inner()).clone();
        Ok(Response::new(crate::v1::ListPodResourcesResponse {
            pod_resources: pods,
        }))
    }
}
