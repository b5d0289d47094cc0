//! The process backend: `dilu up`'s [`InstanceBackend`] over the node agent running in the same process.
//! It turns runtime-neutral plans into agent instances: the built-in runtimes' command lines (`dilu worker`,
//! `dilu train`), a loopback port per instance, a readiness URL, and the labels that tell a restarted control
//! plane whose instances they are.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use dilu_agent::{Agent, AgentError};
use dilu_api::agent::{CpuEnforcement, InstanceSpec, InstanceStatus, RestartPolicy};
use dilu_api::{FieldError, ProcessSpec, Quota, QuotaUpdate, Runtime, RuntimeName};
use dilu_control::backend::{
    BackendError, BoxFuture, InstanceBackend, InstancePlan, Launch, NodeInfo, ObservedInstance,
    labels,
};
use dilu_control::controller::template_hash;
use dilu_core::ledger::{DeviceInventory, DeviceRef, NodeInventory};
use dilu_core::scheduling::well_known_labels;
use dilu_core::sync::lock;
use dilu_quota::DeviceKind;

use crate::store::{Store, StoreError, StoredInstance};

/// Where an instance serves, as the backend records it among the instance's labels.
const ENDPOINT: &str = "dilu.io/endpoint";
/// What runs it (`onnx`, `trainer`, `process`), among the instance's labels.
const RUNTIME: &str = "dilu.io/runtime";

/// Runs instances as local processes through the in-process agent.
pub struct ProcessBackend {
    node: String,
    agent: Arc<Agent>,
    program: PathBuf,
    /// Instances being stopped (the agent's stop blocks for the grace period; it runs on its own thread).
    terminating: Arc<Mutex<BTreeSet<String>>>,
    /// Instances recorded by a `dilu up` from before labels (the store's `instances` table): their function,
    /// template and endpoint. A row lives as long as its instance: rows of instances the agent no longer runs
    /// are deleted from the store at start and as soon as a `list` no longer sees them.
    legacy: Mutex<BTreeMap<String, StoredInstance>>,
    store: Arc<Store>,
}

fn internal(context: &str) -> impl FnOnce(tokio::task::JoinError) -> BackendError + '_ {
    move |e| BackendError::Failed {
        context: context.to_string(),
        reason: e.to_string(),
    }
}

/// The agent's errors, typed for the API.
fn from_agent(e: AgentError) -> BackendError {
    match e {
        AgentError::Invalid(f) => BackendError::Invalid(f),
        AgentError::NotFound(id) => BackendError::NotFound(id),
        AgentError::OverCommit {
            device,
            request,
            total,
        } => BackendError::Conflict(FieldError::new(
            "quota.request",
            request,
            format!("the requests on {device} would total {total:.3}, over the whole device"),
        )),
        AgentError::Conflict(name) => {
            BackendError::Conflict(FieldError::new("name", name, "must be unique on this node"))
        }
        AgentError::Internal { context, reason } => BackendError::Failed { context, reason },
    }
}

/// A free loopback port (the kernel's choice; the instance binds it right after).
fn free_port() -> Result<u16, BackendError> {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .map_err(|e| BackendError::Failed {
            context: "finding a free port".into(),
            reason: e.to_string(),
        })
}

impl ProcessBackend {
    /// A backend naming its node `node`, starting `program` (the `dilu` binary) for the built-in runtimes.
    /// The instances `store` recorded before instances carried labels are adopted through their rows; the rows
    /// of those the agent no longer runs are deleted.
    pub fn new(
        node: impl Into<String>,
        agent: Arc<Agent>,
        program: PathBuf,
        store: Arc<Store>,
    ) -> Result<ProcessBackend, StoreError> {
        let backend = ProcessBackend {
            node: node.into(),
            legacy: Mutex::new(
                store
                    .instances()?
                    .into_iter()
                    .map(|i| (i.id.clone(), i))
                    .collect(),
            ),
            agent,
            program,
            terminating: Arc::new(Mutex::new(BTreeSet::new())),
            store,
        };
        let running: BTreeSet<String> = backend
            .agent
            .instances()
            .into_iter()
            .map(|s| s.id)
            .collect();
        backend.forget_legacy_except(&running)?;
        Ok(backend)
    }

    /// Deletes the legacy rows of instances not in `running`.
    fn forget_legacy_except(&self, running: &BTreeSet<String>) -> Result<(), StoreError> {
        let mut legacy = lock(&self.legacy);
        let gone: Vec<String> = legacy
            .keys()
            .filter(|id| !running.contains(*id))
            .cloned()
            .collect();
        for id in gone {
            self.store.delete_instance(&id)?;
            legacy.remove(&id);
        }
        Ok(())
    }

    /// The agent.
    pub fn agent(&self) -> &Arc<Agent> {
        &self.agent
    }

    /// The node's name.
    pub fn node(&self) -> &str {
        &self.node
    }

    /// The command line, environment and working directory of an instance of `plan` listening on
    /// 127.0.0.1:`port`.
    fn command(
        &self,
        plan: &InstancePlan,
        port: u16,
    ) -> (Vec<String>, BTreeMap<String, String>, Option<PathBuf>) {
        match plan.launch("127.0.0.1", port) {
            Launch::Dilu(args) => {
                let mut cmd = vec![self.program.display().to_string()];
                cmd.extend(args);
                (cmd, BTreeMap::new(), None)
            }
            Launch::Program {
                command,
                env,
                workdir,
            } => (command, env, workdir),
        }
    }

    /// The most of its device one instance can use: the built-in runtimes compute on one thread, so one
    /// core's share of a CPU device; a whole GPU; a process (any number of threads) the whole device.
    fn usable_share(&self, device: &str, runtime: Option<&str>) -> f64 {
        if runtime == Some(RuntimeName::Process.as_str()) {
            return 1.0;
        }
        self.agent
            .devices()
            .iter()
            .find(|d| d.uuid == device && d.kind == DeviceKind::Cpu)
            .and_then(|d| d.cores)
            .filter(|c| *c > 1.0)
            .map_or(1.0, |c| 1.0 / c)
    }

    /// The control plane's view of an agent instance; `None` for instances that are not the control
    /// plane's.
    fn observe(
        &self,
        s: InstanceStatus,
        terminating: &BTreeSet<String>,
    ) -> Option<ObservedInstance> {
        let legacy_rows = lock(&self.legacy);
        let legacy = legacy_rows.get(&s.id);
        let function = s
            .labels
            .get(labels::FUNCTION)
            .cloned()
            .or_else(|| legacy.map(|l| l.function.clone()))?;
        let template = s
            .labels
            .get(labels::TEMPLATE)
            .cloned()
            .or_else(|| legacy.and_then(|l| l.model_key.as_deref().map(template_hash)))
            .unwrap_or_default();
        let endpoint = s
            .labels
            .get(ENDPOINT)
            .cloned()
            .or_else(|| legacy.map(|l| format!("http://127.0.0.1:{}", l.port)));
        Some(ObservedInstance {
            name: s.name.clone().unwrap_or_else(|| s.id.clone()),
            function,
            template,
            generation: s
                .labels
                .get(labels::GENERATION)
                .and_then(|g| g.parse().ok())
                .unwrap_or(0),
            kind: s.kind,
            at: DeviceRef {
                node: self.node.clone(),
                device: s.device.clone(),
            },
            quota: s.quota,
            phase: s.status,
            terminating: terminating.contains(&s.id),
            endpoint,
            last_exit: s.last_exit,
            restarts: s.restarts,
            adopted: s.adopted,
            usable_share: self.usable_share(&s.device, s.labels.get(RUNTIME).map(String::as_str)),
            not_ready: s.not_ready,
            alloc_failures: s.counters.as_ref().map_or(0, |c| c.alloc_failures),
            id: s.id,
        })
    }

    fn list_now(&self) -> Vec<ObservedInstance> {
        let terminating = lock(&self.terminating).clone();
        let all = self.agent.instances();
        if !lock(&self.legacy).is_empty() {
            let running: BTreeSet<String> = all.iter().map(|s| s.id.clone()).collect();
            if let Err(e) = self.forget_legacy_except(&running) {
                eprintln!("dilu: forgetting instances that are gone: {e}");
            }
        }
        all.into_iter()
            .filter_map(|s| self.observe(s, &terminating))
            .collect()
    }
}

impl InstanceBackend for ProcessBackend {
    fn nodes(&self) -> BoxFuture<'_, Result<Vec<NodeInfo>, BackendError>> {
        // An unhealthy device (a critical Xid, or NVML cannot reach it) is left out, so that nothing is placed
        // on it; the ledger drops the bookings of the instances there, and books those still running there
        // again when the device is back (one NVML could not reach for a while).
        let health = self.agent.health();
        let node = NodeInventory {
            name: self.node.clone(),
            devices: self
                .agent
                .devices()
                .iter()
                .filter(|d| health.health(&d.uuid).is_healthy())
                .map(|d| DeviceInventory {
                    uuid: d.uuid.clone(),
                    memory_mib: d.memory_bytes >> 20,
                    gpu: d.kind == DeviceKind::Gpu,
                })
                .collect(),
            labels: well_known_labels(&self.node),
            taints: Vec::new(),
        };
        Box::pin(async move { Ok(vec![node]) })
    }

    fn list(&self) -> BoxFuture<'_, Result<Vec<ObservedInstance>, BackendError>> {
        Box::pin(async move { Ok(self.list_now()) })
    }

    fn create(&self, plan: InstancePlan) -> BoxFuture<'_, Result<ObservedInstance, BackendError>> {
        Box::pin(async move {
            let port = free_port()?;
            let endpoint = format!("http://127.0.0.1:{port}");
            let health = format!("{endpoint}{}", plan.health_path());
            let (command, env, workdir) = self.command(&plan, port);
            // Dilu's own runtimes charge their CPU time to their channel; any other program is metered by the
            // agent with a CPU cgroup.
            let cpu_enforcement = if plan.runtime.name() == RuntimeName::Process {
                CpuEnforcement::Cgroup
            } else {
                CpuEnforcement::Channel
            };
            let spec = InstanceSpec {
                cpu_enforcement,
                command,
                workdir,
                env,
                device: plan.at.device.clone(),
                quota: plan.quota,
                kind: plan.kind,
                health_url: Some(health),
                restart: RestartPolicy::OnFailure,
                name: Some(plan.name.clone()),
                labels: BTreeMap::from([
                    (labels::FUNCTION.to_string(), plan.function.clone()),
                    (labels::TEMPLATE.to_string(), plan.template.clone()),
                    (labels::GENERATION.to_string(), plan.generation.to_string()),
                    (ENDPOINT.to_string(), endpoint),
                    (
                        RUNTIME.to_string(),
                        plan.runtime.name().as_str().to_string(),
                    ),
                ]),
            };
            // The ledger admitted the plan: the control plane is the one admission check.
            let agent = Arc::clone(&self.agent);
            let status = tokio::task::spawn_blocking(move || agent.create_instance(spec, true))
                .await
                .map_err(internal("starting an instance"))?
                .map_err(from_agent)?;
            let terminating = lock(&self.terminating).clone();
            self.observe(status, &terminating)
                .ok_or_else(|| BackendError::Failed {
                    context: format!("starting {}", plan.name),
                    reason: "the agent lost the instance's labels".into(),
                })
        })
    }

    fn set_quota<'a>(
        &'a self,
        id: &'a str,
        quota: Quota,
    ) -> BoxFuture<'a, Result<(), BackendError>> {
        Box::pin(async move {
            let agent = Arc::clone(&self.agent);
            let id = id.to_string();
            let update = QuotaUpdate {
                request: Some(quota.request),
                limit: Some(quota.limit),
                memory: quota.memory,
            };
            tokio::task::spawn_blocking(move || agent.update_quota(&id, update, true))
                .await
                .map_err(internal("setting a quota"))?
                .map(|_| ())
                .map_err(from_agent)
        })
    }

    fn delete<'a>(&'a self, id: &'a str) -> BoxFuture<'a, Result<(), BackendError>> {
        Box::pin(async move {
            if self.agent.instance(id).is_err() {
                return Err(BackendError::NotFound(id.to_string()));
            }
            if !lock(&self.terminating).insert(id.to_string()) {
                return Ok(());
            }
            // The agent stops it with SIGTERM, its grace period, then SIGKILL: off the reconciler's way.
            let agent = Arc::clone(&self.agent);
            let terminating = Arc::clone(&self.terminating);
            let owned = id.to_string();
            tokio::task::spawn_blocking(move || {
                if let Err(e) = agent.delete_instance(&owned)
                    && !matches!(e, AgentError::NotFound(_))
                {
                    eprintln!("dilu: stopping instance {owned}: {e}");
                }
                lock(&terminating).remove(&owned);
            });
            Ok(())
        })
    }

    fn logs<'a>(
        &'a self,
        id: &'a str,
        max_bytes: u64,
    ) -> BoxFuture<'a, Result<String, BackendError>> {
        Box::pin(async move { self.agent.logs(id, max_bytes).map_err(from_agent) })
    }

    fn check(&self, runtime: &Runtime) -> Result<(), FieldError> {
        match runtime {
            Runtime::Onnx { model } => FieldError::require(
                std::fs::metadata(&model.path).is_ok_and(|m| m.is_file()),
                "model.path",
                model.path.display(),
                "no such file on the node (paths are read by the server; use an absolute path)",
            ),
            Runtime::Trainer { .. } => Ok(()),
            Runtime::Process { process } => check_process(process),
        }
    }
}

/// A process's working directory exists and its program is found: a path (relative ones from the working
/// directory) that is an executable file, or a name on the node's `PATH`.
fn check_process(process: &ProcessSpec) -> Result<(), FieldError> {
    if let Some(dir) = &process.workdir {
        FieldError::require(
            dir.is_dir(),
            "process.workdir",
            dir.display(),
            "no such directory on the node",
        )?;
    }
    let program = process
        .command
        .first()
        .map(String::as_str)
        .unwrap_or_default();
    let executable = |path: &std::path::Path| {
        use std::os::unix::fs::PermissionsExt;
        std::fs::metadata(path).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
    };
    if program.contains('/') {
        let path = match &process.workdir {
            Some(dir) => dir.join(program),
            None => PathBuf::from(program),
        };
        return FieldError::require(
            executable(&path),
            "process.command[0]",
            program,
            format!("{} is not an executable file on the node", path.display()),
        );
    }
    let found = std::env::var_os("PATH").is_some_and(|paths| {
        std::env::split_paths(&paths).any(|dir| executable(&dir.join(program)))
    });
    FieldError::require(
        found,
        "process.command[0]",
        program,
        "no such program on the node's PATH (name it by its absolute path, or install it)",
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use dilu_agent::AgentConfig;
    use dilu_agent::config::DeclaredGpu;
    use dilu_agent::health::{Health, HealthChange};

    #[tokio::test]
    async fn an_unhealthy_gpu_leaves_the_inventory_until_it_is_healthy_again() {
        let dir = tempfile::tempdir().unwrap();
        let mut config = AgentConfig::new(dir.path().join("agent"));
        config.discover_gpus = false;
        config.cpu_cores = Some(1.0);
        config.declared_gpus = ["GPU-a", "GPU-b", "GPU-c"]
            .map(|uuid| DeclaredGpu {
                uuid: uuid.into(),
                capacity_per_window: None,
                memory_bytes: 1 << 30,
            })
            .to_vec();
        let agent = Agent::start(config).unwrap();
        let store = Arc::new(Store::open(&dir.path().join("dilu.db")).unwrap());
        let backend =
            ProcessBackend::new("local", agent.clone(), PathBuf::from("dilu"), store).unwrap();
        let listed = |nodes: Vec<NodeInfo>| -> Vec<String> {
            nodes[0].devices.iter().map(|d| d.uuid.clone()).collect()
        };
        assert_eq!(backend.nodes().await.unwrap()[0].devices.len(), 4);
        agent.health().set(HealthChange {
            uuid: "GPU-a".into(),
            health: Health::Failed { xid: 79 },
        });
        agent.health().set(HealthChange {
            uuid: "GPU-b".into(),
            health: Health::Unreachable {
                reason: "GPU is lost".into(),
            },
        });
        let devices = listed(backend.nodes().await.unwrap());
        assert!(!devices.contains(&"GPU-a".to_string()), "{devices:?}");
        assert!(!devices.contains(&"GPU-b".to_string()), "{devices:?}");
        assert!(devices.contains(&"GPU-c".to_string()), "{devices:?}");
        assert_eq!(devices.len(), 2, "{devices:?}");
        agent.health().set(HealthChange {
            uuid: "GPU-b".into(),
            health: Health::Healthy,
        });
        let devices = listed(backend.nodes().await.unwrap());
        assert!(devices.contains(&"GPU-b".to_string()), "{devices:?}");
        assert_eq!(devices.len(), 3, "{devices:?}");
        agent.shutdown();
    }
}
