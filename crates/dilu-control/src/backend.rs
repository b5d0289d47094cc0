//! The seam between the control plane and whatever runs instances: a runtime-neutral [`InstanceBackend`].
//! The reconciler hands it [`InstancePlan`]s (function, generation, runtime, node, device, quota) and reads
//! back [`ObservedInstance`]s; how a plan becomes a process (command lines, ports, environment) or a
//! Kubernetes Pod is the backend's business.
//!
//! Every call returns promptly: `create` once the instance is started (not ready), `delete` once stopping has
//! begun (the instance is reported `terminating` until it is gone).

use std::collections::BTreeMap;
use std::future::Future;
use std::path::PathBuf;
use std::pin::Pin;

use dilu_api::agent::InstancePhase;
use dilu_api::{FieldError, InstanceKind, ModelEngine, Quota, Runtime};
use dilu_core::InstanceRequest;
use dilu_core::ledger::{DeviceClass, DeviceRef, NodeInventory};
use dilu_core::scheduling::PlacementRules;
use serde::Serialize;

/// A boxed future, so backends can be used as trait objects.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// Labels every backend keeps on the instances it runs, so that a restarted control plane knows whose they are.
pub mod labels {
    /// The function an instance belongs to.
    pub const FUNCTION: &str = "dilu.io/function";
    /// A hash of what it runs (the function's template key when it was created).
    pub const TEMPLATE: &str = "dilu.io/template";
    /// The function's generation when it was created.
    pub const GENERATION: &str = "dilu.io/generation";
}

/// What the reconciler asks a backend to run.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct InstancePlan {
    /// A name unique among the function's instances (`ocr-7`).
    pub name: String,
    /// The function.
    pub function: String,
    /// The function's generation.
    pub generation: u64,
    /// The hash of what the instance runs.
    pub template: String,
    /// What it does.
    pub kind: InstanceKind,
    /// What runs it, with its settings.
    pub runtime: Runtime,
    /// The class of device it was placed on (the first of the runtime's classes the cluster has).
    pub device_class: DeviceClass,
    /// The batch an inference instance forms (the profiled batch, or the model's largest).
    pub batch: u32,
    /// The largest request body it accepts, bytes.
    pub max_body: u64,
    /// The function's latency SLO, milliseconds (inference): told to the instance, which publishes it on its
    /// quota channel beside its queue for the token manager (`docs/quota-channel.md`).
    pub slo_ms: Option<f64>,
    /// Where it runs.
    pub at: DeviceRef,
    /// Its quota on that device.
    pub quota: Quota,
    /// What the ledger booked for it (the policy's charge of `quota`): a cluster scheduler that places the
    /// instance itself books exactly this.
    pub booking: InstanceRequest,
    /// The nodes it may run on (the function's `scheduling`): a cluster scheduler that places the instance
    /// itself applies them again.
    pub scheduling: PlacementRules,
}

/// How a backend starts an instance of a plan.
#[derive(Debug, Clone, PartialEq)]
pub enum Launch {
    /// The `dilu` binary with these arguments: the built-in worker (`worker …`) or trainer (`train …`).
    Dilu(Vec<String>),
    /// The user's program (`runtime: process`).
    Program {
        /// The program and its arguments, the port filled in.
        command: Vec<String>,
        /// Its environment: the spec's, with `PORT`, `DILU_FUNCTION`, `DILU_MAX_BATCH` and, with an SLO,
        /// `DILU_SLO_MS`.
        env: BTreeMap<String, String>,
        /// Its working directory.
        workdir: Option<PathBuf>,
    },
}

impl InstancePlan {
    /// The path that answers 2xx once the instance serves (the runtime's readiness path).
    pub fn health_path(&self) -> String {
        self.runtime.readiness_path(self.kind.is_inference())
    }

    /// How to start this instance listening on `host:port`. Every backend starts the built-in runtimes with
    /// the same `dilu` arguments (as a process, or as a container's arguments), and a process with the same
    /// command line and environment.
    pub fn launch(&self, host: &str, port: u16) -> Launch {
        let listen = format!("{host}:{port}");
        match &self.runtime {
            Runtime::Onnx { model } => {
                let mut args = vec![
                    "worker".into(),
                    "--name".into(),
                    self.function.clone(),
                    "--model".into(),
                    model.path.display().to_string(),
                    "--listen".into(),
                    listen,
                    "--max-batch".into(),
                    self.batch.max(1).to_string(),
                    "--max-body".into(),
                    self.max_body.to_string(),
                ];
                if model.engine != ModelEngine::Tract {
                    args.extend(["--engine".into(), model.engine.as_str().into()]);
                }
                if let Some(shape) = &model.input_shape {
                    let dims: Vec<String> = shape.iter().map(|d| d.to_string()).collect();
                    args.extend(["--input-shape".into(), dims.join(",")]);
                }
                if let Some(slo) = self.slo_ms {
                    args.extend(["--slo-ms".into(), slo.to_string()]);
                }
                Launch::Dilu(args)
            }
            Runtime::Trainer { training } => {
                let mut args = vec!["train".into(), "--listen".into(), listen];
                for (flag, value) in [
                    ("--hidden", training.hidden.map(u64::from)),
                    ("--layers", training.layers.map(u64::from)),
                    ("--batch", training.batch.map(u64::from)),
                    ("--seed", training.seed),
                ] {
                    if let Some(v) = value {
                        args.extend([flag.to_string(), v.to_string()]);
                    }
                }
                Launch::Dilu(args)
            }
            Runtime::Process { process } => {
                let mut env = process.env.clone();
                env.insert("HOST".into(), host.to_string());
                env.insert("PORT".into(), port.to_string());
                env.insert("DILU_FUNCTION".into(), self.function.clone());
                env.insert("DILU_MAX_BATCH".into(), self.batch.max(1).to_string());
                if let Some(slo) = self.slo_ms {
                    env.insert("DILU_SLO_MS".into(), slo.to_string());
                }
                Launch::Program {
                    command: process.command_line(host, port),
                    env,
                    workdir: process.workdir.clone(),
                }
            }
        }
    }
}

/// An instance as its backend reports it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ObservedInstance {
    /// The backend's id for it.
    pub id: String,
    /// Its name.
    pub name: String,
    /// The function it belongs to.
    pub function: String,
    /// The hash of what it runs.
    pub template: String,
    /// The function's generation when it was created (0 when unknown).
    pub generation: u64,
    /// What it does.
    pub kind: InstanceKind,
    /// Where it runs.
    pub at: DeviceRef,
    /// Its quota now.
    pub quota: Quota,
    /// Its life-cycle state on the node.
    pub phase: InstancePhase,
    /// Being stopped (asked to; not yet gone).
    pub terminating: bool,
    /// Where it serves (`http://host:port`), once known.
    pub endpoint: Option<String>,
    /// How its last process ended, as a status (`exit code 1`, `killed by signal 9`, `status unknown`): reports
    /// read "instance X exited (<last_exit>)".
    pub last_exit: Option<String>,
    /// Restarts so far.
    pub restarts: u32,
    /// Whether the node adopted it across a restart of its own.
    pub adopted: bool,
    /// The most of its device one instance of this runtime can use (1 on a GPU; one core's share of a CPU
    /// device for the single-threaded built-in runtimes).
    pub usable_share: f64,
    /// While starting: why its last readiness probe failed, when the backend knows.
    pub not_ready: Option<String>,
    /// Device-memory allocations its memory cap refused so far (GPU instances; 0 when unknown).
    pub alloc_failures: u64,
}

/// A node as its backend reports it.
pub type NodeInfo = NodeInventory;

/// Why a backend call failed; the API maps each to an HTTP status.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum BackendError {
    /// The request is invalid for this backend (400).
    #[error(transparent)]
    Invalid(FieldError),
    /// The node refuses it as it stands (409): a device over-committed, a name in use.
    #[error("{0}")]
    Conflict(FieldError),
    /// No such instance (404).
    #[error("no instance {0}")]
    NotFound(String),
    /// The node could not be reached (503).
    #[error("node unavailable: {0}")]
    Unavailable(String),
    /// Anything else (500).
    #[error("{context}: {reason}")]
    Failed {
        /// What was being done.
        context: String,
        /// Why it failed.
        reason: String,
    },
}

/// Runs instances for the control plane.
pub trait InstanceBackend: Send + Sync + 'static {
    /// The nodes and their devices.
    fn nodes(&self) -> BoxFuture<'_, Result<Vec<NodeInfo>, BackendError>>;

    /// Every instance the backend runs for the control plane.
    fn list(&self) -> BoxFuture<'_, Result<Vec<ObservedInstance>, BackendError>>;

    /// Starts an instance.
    fn create(&self, plan: InstancePlan) -> BoxFuture<'_, Result<ObservedInstance, BackendError>>;

    /// Changes an instance's quota (the node applies it within a window).
    fn set_quota<'a>(
        &'a self,
        id: &'a str,
        quota: Quota,
    ) -> BoxFuture<'a, Result<(), BackendError>>;

    /// Starts stopping an instance.
    fn delete<'a>(&'a self, id: &'a str) -> BoxFuture<'a, Result<(), BackendError>>;

    /// The end of an instance's log, at most `max_bytes` (for error reports).
    fn logs<'a>(
        &'a self,
        id: &'a str,
        max_bytes: u64,
    ) -> BoxFuture<'a, Result<String, BackendError>>;

    /// Whether the backend can run `runtime` at all (a model file it cannot read, …); checked at deploy.
    fn check(&self, runtime: &Runtime) -> Result<(), FieldError>;
}
