//! Serving the plugin on its socket and registering it with the kubelet, again after every kubelet restart.
//!
//! The kubelet recreates `kubelet.sock` when it restarts (and removes the plugins' sockets from its directory),
//! and forgets every plugin: each must register again. The plugin polls the identity of `kubelet.sock` (and of
//! its own socket) every [`ServeConfig::poll`]; a new `kubelet.sock` means a new kubelet, a missing own socket
//! means it was removed and is bound again before registering.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use tokio::sync::{oneshot, watch};
use tokio::task::JoinHandle;
use tonic::transport::Server;

use crate::plugin::DevicePlugin;
use crate::uds::{self, FileIdentity};
use crate::v1beta1::{
    RegisterRequest, device_plugin_server::DevicePluginServer,
    registration_client::RegistrationClient,
};
use crate::{API_VERSION, Error, KUBELET_SOCKET};

/// Where the plugin serves and how it watches the kubelet.
#[derive(Debug, Clone)]
pub struct ServeConfig {
    /// The kubelet's device plugin directory (`/var/lib/kubelet/device-plugins`): `kubelet.sock` is there, and
    /// the plugin's own socket goes there too.
    pub dir: PathBuf,
    /// The plugin's socket file name in `dir` (what it registers as its endpoint), e.g. `dilu-gpu-share.sock`.
    pub socket_name: String,
    /// How often to check whether `kubelet.sock` was recreated (500 ms is a good default).
    pub poll: Duration,
    /// How long one `Register` call may take.
    pub register_timeout: Duration,
}

impl ServeConfig {
    /// Serving in `dir` as `socket_name`, polling every 500 ms, 5 s per `Register`.
    pub fn new(dir: impl Into<PathBuf>, socket_name: impl Into<String>) -> Self {
        Self {
            dir: dir.into(),
            socket_name: socket_name.into(),
            poll: Duration::from_millis(500),
            register_timeout: Duration::from_secs(5),
        }
    }

    /// The plugin's socket.
    pub fn socket(&self) -> PathBuf {
        self.dir.join(&self.socket_name)
    }

    /// The kubelet's registration socket.
    pub fn kubelet_socket(&self) -> PathBuf {
        self.dir.join(KUBELET_SOCKET)
    }
}

/// How registration stands.
#[derive(Debug, Clone, Default)]
pub struct RegistrationState {
    /// Successful registrations so far (the first, then one per kubelet restart).
    pub count: u64,
    /// When the last one succeeded.
    pub at: Option<Instant>,
    /// The last failed attempt's error, cleared by a success.
    pub last_error: Option<String>,
    /// Times the plugin's own socket was bound (1, plus one each time it had been removed).
    pub binds: u64,
}

/// A plugin serving and keeping itself registered; stops when dropped or by [`RunningPlugin::stop`].
pub struct RunningPlugin {
    state: watch::Receiver<RegistrationState>,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<()>>,
    socket: PathBuf,
}

struct Serving {
    identity: Option<FileIdentity>,
    closing: watch::Sender<bool>,
    shutdown: oneshot::Sender<()>,
    task: JoinHandle<()>,
}

impl Serving {
    async fn stop(self) {
        self.closing.send_replace(true);
        let _ = self.shutdown.send(());
        let _ = self.task.await;
    }
}

fn serve(plugin: &DevicePlugin, socket: &Path) -> Result<Serving, Error> {
    let listener = uds::bind(socket)?;
    let identity = uds::identity(socket);
    let (closing, closing_rx) = watch::channel(false);
    let service = DevicePluginServer::new(plugin.closing_on(closing_rx));
    let (shutdown, task) = uds::spawn_serving(listener, Server::builder().add_service(service));
    Ok(Serving {
        identity,
        closing,
        shutdown,
        task,
    })
}

/// Calls the kubelet's `Register` on `kubelet_socket` for `plugin`, serving at `endpoint` (a file name in the
/// same directory).
pub async fn register(
    kubelet_socket: &Path,
    endpoint: &str,
    plugin: &DevicePlugin,
    timeout: Duration,
) -> Result<(), Error> {
    let call = async {
        let channel = uds::connect(kubelet_socket).await?;
        RegistrationClient::new(channel)
            .register(RegisterRequest {
                version: API_VERSION.to_string(),
                endpoint: endpoint.to_string(),
                resource_name: plugin.config().resource_name.clone(),
                options: Some(DevicePlugin::options()),
            })
            .await
            .map_err(|status| Error::Call {
                call: "Register",
                status,
            })?;
        Ok(())
    };
    tokio::time::timeout(timeout, call)
        .await
        .map_err(|_| Error::Timeout {
            call: "Register",
            millis: timeout.as_millis(),
        })?
}

impl RunningPlugin {
    /// Binds the plugin's socket (so that a bad directory is an error now), then keeps it served and registered
    /// in the background: registers as soon as `kubelet.sock` exists, and again whenever it is recreated.
    pub async fn start(plugin: DevicePlugin, config: ServeConfig) -> Result<Self, Error> {
        let socket = config.socket();
        let first = serve(&plugin, &socket)?;
        let (state_tx, state) = watch::channel(RegistrationState {
            binds: 1,
            ..RegistrationState::default()
        });
        let (stop, mut stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            let mut serving = Some(first);
            let mut registered_with: Option<FileIdentity> = None;
            loop {
                // Our socket removed (a restarting kubelet clears the directory) or our server gone: serve again,
                // and register again even with the same kubelet.
                let ours = uds::identity(&config.socket());
                let lost = match &serving {
                    Some(s) => s.identity != ours || ours.is_none() || s.task.is_finished(),
                    None => true,
                };
                if lost {
                    if let Some(old) = serving.take() {
                        old.stop().await;
                    }
                    match serve(&plugin, &config.socket()) {
                        Ok(s) => {
                            serving = Some(s);
                            registered_with = None;
                            state_tx.send_modify(|st| st.binds += 1);
                        }
                        Err(e) => state_tx.send_modify(|st| st.last_error = Some(e.to_string())),
                    }
                }
                let kubelet = uds::identity(&config.kubelet_socket());
                // A starting kubelet removes our socket before it creates its own: look again, so that we do
                // not register an endpoint that was just removed (the next round would bind and register).
                let still_ours = serving
                    .as_ref()
                    .is_some_and(|s| s.identity == uds::identity(&config.socket()));
                if still_ours && kubelet.is_some() && kubelet != registered_with {
                    match register(
                        &config.kubelet_socket(),
                        &config.socket_name,
                        &plugin,
                        config.register_timeout,
                    )
                    .await
                    {
                        Ok(()) => {
                            registered_with = kubelet;
                            state_tx.send_modify(|st| {
                                st.count += 1;
                                st.at = Some(Instant::now());
                                st.last_error = None;
                            });
                        }
                        Err(e) => state_tx.send_modify(|st| st.last_error = Some(e.to_string())),
                    }
                }
                tokio::select! {
                    _ = tokio::time::sleep(config.poll) => {}
                    _ = &mut stopped => break,
                }
            }
            if let Some(s) = serving.take() {
                s.stop().await;
            }
        });
        Ok(Self {
            state,
            stop: Some(stop),
            task: Some(task),
            socket,
        })
    }

    /// The registration state, updated as it changes.
    pub fn state(&self) -> watch::Receiver<RegistrationState> {
        self.state.clone()
    }

    /// The plugin's socket.
    pub fn socket(&self) -> &Path {
        &self.socket
    }

    /// Waits until at least `count` registrations succeeded, up to `timeout`; returns the state then.
    pub async fn wait_registered(
        &self,
        count: u64,
        timeout: Duration,
    ) -> Result<RegistrationState, Error> {
        let mut state = self.state.clone();
        let waited = tokio::time::timeout(timeout, state.wait_for(|s| s.count >= count)).await;
        match waited {
            Ok(Ok(s)) => Ok(s.clone()),
            _ => Err(Error::Timeout {
                call: "Register",
                millis: timeout.as_millis(),
            }),
        }
    }

    /// Stops serving and registering, and removes the plugin's socket.
    pub async fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(task) = self.task.take() {
            let _ = task.await;
        }
        let _ = std::fs::remove_file(&self.socket);
    }
}

impl Drop for RunningPlugin {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}
