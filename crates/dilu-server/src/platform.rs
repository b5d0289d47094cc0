//! `dilu up`'s control plane, assembled: the SQLite store, the process backend over the in-process agent,
//! the reconciler with the live profiler, and the gateway following the reconciler's routes.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use dilu_agent::Agent;
use dilu_control::profile::live::LiveSettings;
use dilu_control::{ControlError, Controller, ControllerConfig, LiveProfiler, SystemClock};
use dilu_core::policy::Policy;
use dilu_gateway::{Gateway, GatewayConfig};

use crate::backend::ProcessBackend;
use crate::store::{Store, StoreError};
use crate::wiring::{ControllerRoutes, GatewayLoad};

/// Settings of the platform.
#[derive(Debug, Clone)]
pub struct PlatformConfig {
    /// Where the store (`dilu.db`) lives.
    pub data_dir: PathBuf,
    /// The program instances of the built-in runtimes run (`dilu`, with its `worker` and `train`).
    pub worker_program: PathBuf,
    /// The local node's name.
    pub node_name: String,
    /// The policy the control plane runs (the agent runs the same one's vertical controller).
    pub policy: Policy,
    /// How long an instance started for profiling may take to become ready.
    pub ready_timeout: Duration,
    /// Live profiling settings.
    pub profiling: LiveSettings,
}

impl PlatformConfig {
    /// Defaults for a data directory, worker program and policy.
    pub fn new(data_dir: PathBuf, worker_program: PathBuf, policy: Policy) -> Self {
        Self {
            data_dir,
            worker_program,
            node_name: "local".into(),
            policy,
            ready_timeout: Duration::from_secs(120),
            profiling: LiveSettings::default(),
        }
    }
}

/// Why the platform did not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The data directory could not be created.
    #[error("creating {path}: {reason}")]
    DataDir {
        /// The directory.
        path: String,
        /// Why.
        reason: String,
    },
    /// The store could not be opened.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The stored functions could not be restored.
    #[error(transparent)]
    Control(#[from] ControlError),
    /// The event history could not be read.
    #[error("reading the event history: {reason}")]
    Events {
        /// Why.
        reason: String,
    },
}

/// The running platform.
pub struct Platform {
    controller: Arc<Controller>,
    gateway: Arc<Gateway>,
    backend: Arc<ProcessBackend>,
    started: Instant,
}

impl Platform {
    /// Opens the store, restores the functions and starts the reconciler and the gateway on the current tokio
    /// runtime; the first pass adopts the instances the agent still runs.
    pub fn start(config: PlatformConfig, agent: Arc<Agent>) -> Result<Arc<Platform>, StartError> {
        std::fs::create_dir_all(&config.data_dir).map_err(|e| StartError::DataDir {
            path: config.data_dir.display().to_string(),
            reason: e.to_string(),
        })?;
        let store = Arc::new(Store::open(&config.data_dir.join("dilu.db"))?);
        let backend = Arc::new(ProcessBackend::new(
            config.node_name.clone(),
            agent,
            config.worker_program.clone(),
            Arc::clone(&store),
        )?);
        let gateway = Gateway::new(GatewayConfig::default());
        let profiler = Arc::new(LiveProfiler::new(
            backend.clone(),
            tokio::runtime::Handle::current(),
            config.profiling,
        ));
        let mut control = ControllerConfig::new(config.policy.clone());
        control.ready_timeout = config.ready_timeout;
        let controller = Controller::new(
            control,
            backend.clone(),
            Arc::clone(&store) as Arc<dyn dilu_control::FunctionStore>,
            Arc::new(GatewayLoad(Arc::clone(&gateway))),
            profiler,
            Arc::new(SystemClock::new()),
        )?;
        controller
            .events()
            .attach(store)
            .map_err(|reason| StartError::Events { reason })?;
        gateway.follow(ControllerRoutes::new(&controller));
        tokio::spawn(Arc::clone(&controller).run());
        tokio::spawn(crate::vertical::watch(
            Arc::clone(backend.agent()),
            Arc::clone(&controller),
        ));
        Ok(Arc::new(Platform {
            controller,
            gateway,
            backend,
            started: Instant::now(),
        }))
    }

    /// The reconciler.
    pub fn controller(&self) -> &Arc<Controller> {
        &self.controller
    }

    /// The gateway (its router serves `/v2`).
    pub fn gateway(&self) -> &Arc<Gateway> {
        &self.gateway
    }

    /// The process backend and, through it, the agent.
    pub fn backend(&self) -> &Arc<ProcessBackend> {
        &self.backend
    }

    /// The agent.
    pub fn agent(&self) -> &Arc<Agent> {
        self.backend.agent()
    }

    /// Time since start.
    pub fn uptime(&self) -> Duration {
        self.started.elapsed()
    }

    /// Stops reconciling; what runs keeps running for the next start to adopt.
    pub async fn stop(&self) {
        self.controller.stop().await;
    }

    /// Stops reconciling and every instance (a clean shutdown); the functions stay in the store.
    pub async fn stop_all_instances(&self) {
        self.controller
            .stop_all_instances(Duration::from_secs(60))
            .await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    use dilu_agent::AgentConfig;
    use dilu_api::agent::{InstanceSpec, RestartPolicy};
    use dilu_api::{InstanceKind, Quota};
    use dilu_core::policy::PolicyName;

    use crate::store::StoredInstance;

    fn legacy_row(id: &str, device: &str) -> StoredInstance {
        StoredInstance {
            id: id.into(),
            function: "legacy-fn".into(),
            node: "local".into(),
            device: device.into(),
            port: 9,
            profiling: false,
            model_key: None,
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn legacy_instance_rows_go_with_their_instances() {
        let dir = tempfile::tempdir().unwrap();
        let mut agent_config = AgentConfig::new(dir.path().join("agent"));
        agent_config.discover_gpus = false;
        agent_config.cpu_cores = Some(1.0);
        agent_config.stop_grace = Duration::from_millis(200);
        let agent = Agent::start(agent_config).unwrap();
        let device = agent.devices()[0].uuid.clone();
        // An instance a `dilu up` from before labels started and recorded in its `instances` table.
        agent
            .create_instance(
                InstanceSpec {
                    command: vec!["sleep".into(), "30".into()],
                    workdir: None,
                    env: BTreeMap::new(),
                    device: device.clone(),
                    quota: Quota {
                        request: 0.1,
                        limit: 0.2,
                        memory: None,
                    },
                    kind: InstanceKind::Inference,
                    health_url: None,
                    restart: RestartPolicy::OnFailure,
                    name: Some("i-000001".into()),
                    labels: BTreeMap::new(),
                    cpu_enforcement: Default::default(),
                },
                true,
            )
            .unwrap();
        let db = dir.path().join("dilu.db");
        {
            let store = Store::open(&db).unwrap();
            store
                .insert_instance(&legacy_row("i-000001", &device))
                .unwrap();
            // One whose instance is long gone.
            store
                .insert_instance(&legacy_row("i-000002", &device))
                .unwrap();
        }
        let mut config = PlatformConfig::new(
            dir.path().to_path_buf(),
            "/nonexistent/dilu".into(),
            Policy::named(PolicyName::Dilu),
        );
        config.node_name = "local".into();
        let platform = Platform::start(config, Arc::clone(&agent)).unwrap();
        let rows = || -> Vec<String> {
            Store::open(&db)
                .unwrap()
                .instances()
                .unwrap()
                .into_iter()
                .map(|i| i.id)
                .collect()
        };
        // Its function is gone, so the reconciler stops the instance; neither row may outlive its instance.
        let deadline = Instant::now() + Duration::from_secs(10);
        while !(agent.instances().is_empty() && rows().is_empty()) {
            assert!(
                Instant::now() < deadline,
                "rows {:?} with instances {:?}",
                rows(),
                agent.instances().iter().map(|i| &i.id).collect::<Vec<_>>()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        platform.stop().await;
        agent.shutdown();
    }
}
