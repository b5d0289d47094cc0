//! The control plane: functions (from the store), their instances (on the node), the scheduler, the live
//! profiler and the horizontal scaler, tied to the gateway.
//!
//! - [`Platform::deploy`] stores a spec, then brings the function up in the background: profile (no quota),
//!   calibrate (quota but no capacity) or take the spec's numbers, then the scaler keeps `min_instances`.
//! - A sync loop (every 50 ms) follows the node's instances: ready ones become gateway endpoints, exited
//!   ones are forgotten (and replaced by the scaler).
//! - A scale loop feeds each function's lazy [`LazyScaler`] with the gateway's per-interval request counts.
//! - Vertical scaling is the node agent's token manager (every 5 ms); quota changes made here (a spec
//!   update) are sent to the agent and apply at once.

mod instances;
mod loops;
mod views;

pub use views::{FunctionView, InstanceSummary};

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use dilu_core::placement::PolicyName;
use dilu_core::scaling::LazyScaler;
use serde::Serialize;

use crate::gateway::{FunctionPolicy, Gateway, GatewayConfig};
use crate::metrics::ControlMetrics;
use crate::node::NodeClient;
use crate::scheduler::Scheduler;
use crate::spec::{FunctionKind, FunctionSpec, SpecError};
use crate::store::{Profile, Store, StoreError, StoredFunction};

/// Settings of the control plane.
#[derive(Debug, Clone)]
pub struct PlatformConfig {
    /// Where the store (`dilu.db`) lives.
    pub data_dir: PathBuf,
    /// The program instances run (`dilu`, with its `worker` and `train` subcommands).
    pub worker_program: PathBuf,
    /// Placement policy.
    pub placer: PolicyName,
    /// How long a new instance may take to become ready.
    pub ready_timeout: Duration,
    /// Live profiling settings.
    pub profiling: crate::profiler::LiveSettings,
}

impl PlatformConfig {
    /// Defaults for a data directory and worker program.
    pub fn new(data_dir: PathBuf, worker_program: PathBuf) -> Self {
        Self {
            data_dir,
            worker_program,
            placer: PolicyName::Dilu,
            ready_timeout: Duration::from_secs(120),
            profiling: crate::profiler::LiveSettings::default(),
        }
    }
}

/// An API-level failure: the HTTP status it maps to and a body naming the field and rule when there is one.
#[derive(Debug, thiserror::Error)]
pub enum PlatformError {
    /// Bad input (400).
    #[error(transparent)]
    Invalid(#[from] SpecError),
    /// No such function (404).
    #[error("no function named '{0}'")]
    NotFound(String),
    /// Name taken (409).
    #[error("name = {0}: a function with this name exists; update it with PUT /v1/functions/{0}")]
    Exists(String),
    /// The store failed (500).
    #[error(transparent)]
    Store(#[from] StoreError),
    /// Anything else that failed on the node (500).
    #[error("{0}")]
    Internal(String),
}

/// Where a function is in its life.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "kebab-case", tag = "phase", content = "reason")]
pub enum Phase {
    /// Its quota is being profiled on a live instance.
    Profiling,
    /// Waiting for its first instance.
    Starting,
    /// Scaled by the autoscaler.
    Running,
    /// Bring-up failed (the reason says why); redeploy or update to retry.
    Failed(String),
}

/// One instance of a function, as the control plane tracks it.
#[derive(Debug, Clone)]
pub(crate) struct InstanceRuntime {
    /// The agent's id.
    pub id: String,
    /// Creation sequence number (the scaler's id).
    pub seq: u64,
    /// Key of its reservation in the scheduler.
    pub ledger_key: String,
    /// Device UUID.
    pub device: String,
    /// Loopback port.
    pub port: u16,
    /// Ready according to the node.
    pub ready: bool,
    /// Being removed: no new requests.
    pub draining: bool,
    /// Started to profile; serves once the profile is applied.
    pub profiling: bool,
    /// Runs the model of an earlier generation: it keeps serving through an update until an instance of the
    /// current generation is ready, then drains (a rolling replacement), and the scaler does not count it.
    pub outdated: bool,
    /// The node's last exit report for it that the function's `last_error` already carries.
    pub reported_exit: Option<String>,
}

impl InstanceRuntime {
    pub(crate) fn base_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }
}

/// A function at run time.
pub(crate) struct FunctionRuntime {
    pub spec: FunctionSpec,
    pub profile: Option<Profile>,
    pub phase: Phase,
    pub generation: u64,
    pub scaler: LazyScaler,
    pub instances: Vec<InstanceRuntime>,
    /// Instance creations in flight.
    pub starting: u32,
    pub last_decision: Instant,
    pub last_endpoints: Vec<String>,
    pub last_rps: f64,
    /// Why the last instance start failed (cleared by the next success).
    pub last_error: Option<String>,
}

impl FunctionRuntime {
    /// A function with no instances yet, as deployed or as restored from the store.
    fn new(
        spec: FunctionSpec,
        profile: Option<Profile>,
        phase: Phase,
        generation: u64,
    ) -> Result<Self, PlatformError> {
        Ok(FunctionRuntime {
            scaler: scaler_of(&spec)?,
            spec,
            profile,
            phase,
            generation,
            instances: Vec::new(),
            starting: 0,
            last_decision: Instant::now(),
            last_endpoints: Vec::new(),
            last_rps: 0.0,
            last_error: None,
        })
    }
}

/// The control plane.
pub struct Platform {
    config: PlatformConfig,
    store: Store,
    node: Arc<dyn NodeClient>,
    gateway: Arc<Gateway>,
    scheduler: Mutex<Scheduler>,
    functions: Mutex<BTreeMap<String, FunctionRuntime>>,
    metrics: ControlMetrics,
    seq: AtomicU64,
    started: Instant,
}

pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

fn scaler_of(spec: &FunctionSpec) -> Result<LazyScaler, PlatformError> {
    LazyScaler::new(spec.scaling.lazy).map_err(|e| {
        PlatformError::Invalid(SpecError::new(
            format!("scaling.lazy.{}", e.field),
            e.value,
            e.rule,
        ))
    })
}

/// What an instance of `spec` runs (kind, model, training settings) as a comparable string: instances whose
/// key differs from their function's current one are left from an earlier generation.
pub(crate) fn model_key(spec: &FunctionSpec) -> String {
    serde_json::json!([spec.kind.as_str(), spec.model, spec.training]).to_string()
}

/// The gateway policy a spec asks for.
pub(crate) fn policy_of(spec: &FunctionSpec) -> FunctionPolicy {
    let g = &spec.gateway;
    FunctionPolicy {
        queue_capacity: g.queue as usize,
        max_outstanding_per_instance: g.max_outstanding_per_instance as usize,
        request_timeout: Duration::from_millis(g.timeout_ms),
        cold_start_timeout: Duration::from_millis(g.cold_start_timeout_ms),
        max_body_bytes: g.max_body as usize,
        slo: spec.slo_ms.map(|ms| Duration::from_secs_f64(ms / 1000.0)),
    }
}

impl Platform {
    /// Opens the store, restores the functions and the instances the node still runs, and starts the
    /// control loops on the current tokio runtime.
    pub fn start(
        config: PlatformConfig,
        node: Arc<dyn NodeClient>,
    ) -> Result<Arc<Platform>, PlatformError> {
        std::fs::create_dir_all(&config.data_dir).map_err(|e| {
            PlatformError::Internal(format!("creating {}: {e}", config.data_dir.display()))
        })?;
        let store = Store::open(&config.data_dir.join("dilu.db"))?;
        let scheduler = Scheduler::new(node.name(), &node.devices(), config.placer)
            .map_err(|e| PlatformError::Internal(e.to_string()))?;
        let gateway = Gateway::new(GatewayConfig::default());
        let platform = Arc::new(Platform {
            config,
            store,
            node,
            gateway,
            scheduler: Mutex::new(scheduler),
            functions: Mutex::new(BTreeMap::new()),
            metrics: ControlMetrics::default(),
            seq: AtomicU64::new(1),
            started: Instant::now(),
        });
        platform.restore()?;
        let weak = Arc::downgrade(&platform);
        let handle = tokio::runtime::Handle::current();
        platform
            .gateway
            .set_cold_start_hook(Arc::new(move |function: &str| {
                if let Some(p) = weak.upgrade() {
                    let name = function.to_string();
                    handle.spawn(async move { p.cold_start(&name).await });
                }
            }));
        loops::spawn(&platform);
        Ok(platform)
    }

    /// The gateway (its router serves `/v2`).
    pub fn gateway(&self) -> &Arc<Gateway> {
        &self.gateway
    }

    /// The node.
    pub fn node(&self) -> &Arc<dyn NodeClient> {
        &self.node
    }

    /// The placement policy's name.
    pub fn placer(&self) -> &'static str {
        lock(&self.scheduler).policy()
    }

    /// Seconds since start.
    pub fn uptime(&self) -> Duration {
        self.started.elapsed()
    }

    pub(crate) fn metrics(&self) -> &ControlMetrics {
        &self.metrics
    }

    /// Records the outcome of an instance start: an error is kept in the function's view (and logged once
    /// per distinct message), a success clears it.
    pub(crate) fn record_start(&self, name: &str, result: &Result<String, PlatformError>) {
        let mut functions = lock(&self.functions);
        let Some(f) = functions.get_mut(name) else {
            return;
        };
        f.starting = f.starting.saturating_sub(1);
        match result {
            Ok(_) => f.last_error = None,
            Err(e) => {
                let message = e.to_string();
                if f.last_error.as_deref() != Some(message.as_str()) {
                    eprintln!("dilu: starting an instance of {name}: {message}");
                }
                f.last_error = Some(message);
            }
        }
    }

    fn next_seq(&self) -> u64 {
        self.seq.fetch_add(1, Ordering::Relaxed)
    }

    /// Rebuilds the run-time state from the store and the node after a (re)start.
    fn restore(self: &Arc<Self>) -> Result<(), PlatformError> {
        let stored = self.store.functions()?;
        let running = self.node.instances();
        let mut functions = lock(&self.functions);
        for StoredFunction {
            spec,
            profile,
            generation,
            ..
        } in stored
        {
            if spec.kind == FunctionKind::Inference {
                self.gateway.upsert_function(&spec.name, policy_of(&spec));
            }
            let phase = if profile.is_some() {
                Phase::Running
            } else {
                Phase::Starting
            };
            functions.insert(
                spec.name.clone(),
                FunctionRuntime::new(spec, profile, phase, generation)?,
            );
        }
        let mut max_seq = 0;
        for inst in self.store.instances()? {
            let alive = running
                .iter()
                .any(|v| v.record.id == inst.id && v.record.status != dilu_agent::Status::Exited);
            let Some(f) = functions.get_mut(&inst.function) else {
                self.store.delete_instance(&inst.id)?;
                continue;
            };
            if !alive || inst.profiling {
                // Gone with the old process, or a profiling run cut short: forget it (the scaler replaces
                // it; an unprofiled function is profiled again).
                if alive {
                    let _ = self.node.delete_instance(&inst.id);
                }
                self.store.delete_instance(&inst.id)?;
                continue;
            }
            let seq = self.next_seq();
            max_seq = max_seq.max(seq);
            let ask = instances::ask_of(&f.spec, f.profile.as_ref(), false);
            if let Err(e) = lock(&self.scheduler).adopt(&inst.id, &f.spec.name, &inst.device, &ask)
            {
                eprintln!("dilu: restoring instance {}: {e}", inst.id);
            }
            f.instances.push(InstanceRuntime {
                id: inst.id.clone(),
                seq,
                ledger_key: inst.id.clone(),
                device: inst.device.clone(),
                port: inst.port,
                ready: false,
                draining: false,
                profiling: false,
                // Killed mid-roll: the instances of the earlier generation go on serving until a current
                // one is ready, as they would have without the restart.
                outdated: inst
                    .model_key
                    .as_deref()
                    .is_some_and(|k| k != model_key(&f.spec)),
                reported_exit: None,
            });
        }
        let pending: Vec<String> = functions
            .iter()
            .filter(|(_, f)| f.profile.is_none())
            .map(|(n, _)| n.clone())
            .collect();
        drop(functions);
        for name in pending {
            let p = Arc::clone(self);
            tokio::spawn(async move { p.bring_up(name).await });
        }
        Ok(())
    }

    /// Deploys a function: checks the spec against the node, stores it and brings it up in the background.
    pub async fn deploy(
        self: &Arc<Self>,
        spec: FunctionSpec,
    ) -> Result<FunctionView, PlatformError> {
        self.check_on_node(&spec)?;
        if !self.store.insert_function(&spec)? {
            return Err(PlatformError::Exists(spec.name));
        }
        let name = spec.name.clone();
        if spec.kind == FunctionKind::Inference {
            self.gateway.upsert_function(&name, policy_of(&spec));
        }
        lock(&self.functions).insert(
            name.clone(),
            FunctionRuntime::new(spec, None, Phase::Starting, 1)?,
        );
        self.metrics.deployed();
        let p = Arc::clone(self);
        let bring = name.clone();
        tokio::spawn(async move { p.bring_up(bring).await });
        self.function(&name)
    }

    /// Replaces a function's spec. A change of quota, scaling or gateway settings applies to the running
    /// instances at once (quotas through the agent); a change of model or kind replaces the instances.
    pub async fn update(
        self: &Arc<Self>,
        spec: FunctionSpec,
    ) -> Result<FunctionView, PlatformError> {
        self.check_on_node(&spec)?;
        let name = spec.name.clone();
        let (old, replace, victims) = {
            let mut functions = lock(&self.functions);
            let f = functions
                .get_mut(&name)
                .ok_or_else(|| PlatformError::NotFound(name.clone()))?;
            let old = f.spec.clone();
            let replace = old.kind != spec.kind
                || old.model != spec.model
                || old.training != spec.training
                || (old.quota.is_some() && spec.quota.is_none());
            // Same kind: roll (old instances serve until a new one is ready). A new kind cannot share the
            // function's route with the old instances, so they stop at once.
            let roll = replace && old.kind == spec.kind;
            if !self.store.update_function(&spec)? {
                return Err(PlatformError::NotFound(name));
            }
            f.generation += 1;
            f.scaler = scaler_of(&spec)?;
            f.spec = spec.clone();
            let victims: Vec<String> = if replace {
                f.profile = None;
                f.phase = Phase::Starting;
                if roll {
                    f.instances.iter_mut().for_each(|i| i.outdated = true);
                    Vec::new()
                } else {
                    f.instances.iter_mut().for_each(|i| i.draining = true);
                    f.instances.iter().map(|i| i.id.clone()).collect()
                }
            } else {
                Vec::new()
            };
            (old, replace, victims)
        };
        if spec.kind == FunctionKind::Inference {
            self.gateway.upsert_function(&name, policy_of(&spec));
        } else if old.kind == FunctionKind::Inference {
            self.gateway.remove_function(&name);
        }
        if replace {
            for id in victims {
                let p = Arc::clone(self);
                let n = name.clone();
                tokio::spawn(async move { p.stop_instance(&n, &id).await });
            }
            let p = Arc::clone(self);
            let n = name.clone();
            tokio::spawn(async move { p.bring_up(n).await });
        } else if let Some(q) = spec.quota {
            self.apply_quota(&name, q.request, q.limit, q.memory)
                .await?;
        }
        self.function(&name)
    }

    /// Deletes a function: the gateway stops taking its requests, its instances drain and stop.
    pub async fn delete(self: &Arc<Self>, name: &str) -> Result<(), PlatformError> {
        let victims = {
            let mut functions = lock(&self.functions);
            let f = functions
                .remove(name)
                .ok_or_else(|| PlatformError::NotFound(name.to_string()))?;
            f.instances
        };
        self.store.delete_function(name)?;
        self.gateway.remove_function(name);
        for inst in victims {
            let p = Arc::clone(self);
            tokio::spawn(async move { p.remove_instance(&inst).await });
        }
        self.metrics.deleted();
        Ok(())
    }

    /// Stops every instance (a clean shutdown); the functions stay in the store and are brought back by
    /// the next start.
    pub async fn stop_all_instances(self: &Arc<Self>) {
        let all: Vec<InstanceRuntime> = {
            let mut functions = lock(&self.functions);
            functions
                .values_mut()
                .flat_map(|f| {
                    f.phase = Phase::Starting;
                    std::mem::take(&mut f.instances)
                })
                .collect()
        };
        let mut tasks = Vec::new();
        for inst in all {
            let p = Arc::clone(self);
            tasks.push(tokio::spawn(async move { p.remove_instance(&inst).await }));
        }
        for t in tasks {
            let _ = t.await;
        }
    }

    /// Whether the node can run the spec: the model file exists.
    fn check_on_node(&self, spec: &FunctionSpec) -> Result<(), PlatformError> {
        if let Some(model) = &spec.model {
            let meta = std::fs::metadata(&model.path);
            if !meta.map(|m| m.is_file()).unwrap_or(false) {
                return Err(SpecError::new(
                    "model.path",
                    model.path.display(),
                    "no such file on the node (paths are read by the server; use an absolute path)",
                )
                .into());
            }
        }
        Ok(())
    }

    /// One function's view.
    pub fn function(&self, name: &str) -> Result<FunctionView, PlatformError> {
        let functions = lock(&self.functions);
        let f = functions
            .get(name)
            .ok_or_else(|| PlatformError::NotFound(name.to_string()))?;
        Ok(views::function_view(name, f))
    }

    /// Every function's view, by name.
    pub fn functions(&self) -> Vec<FunctionView> {
        lock(&self.functions)
            .iter()
            .map(|(n, f)| views::function_view(n, f))
            .collect()
    }
}
