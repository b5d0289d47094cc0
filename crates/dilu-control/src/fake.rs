//! In-memory stand-ins for the reconciler's collaborators, driven by a [`Clock`], so control logic is tested in
//! virtual time: a [`FakeBackend`] whose instances become ready after a set delay (or crash, or vanish), a
//! [`ScriptedProfiler`] that answers after a set delay, and a [`FakeLoad`] whose traffic the test sets.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};

use dilu_api::agent::InstancePhase;
use dilu_api::{FieldError, Profile, Quota, Runtime};
use dilu_core::ledger::{DeviceInventory, NodeInventory};
use dilu_core::scheduling::well_known_labels;
use dilu_core::sync::lock;

use crate::backend::{
    BackendError, BoxFuture, InstanceBackend, InstancePlan, NodeInfo, ObservedInstance,
};
use crate::clock::Clock;
use crate::load::{LoadSource, Window};
use crate::profile::{ProfileJob, ProfileRun, Profiler};

struct FakeInstance {
    obs: ObservedInstance,
    ready_at_ns: u64,
    /// Crashes instead of becoming ready (a model that will not load).
    broken: bool,
    /// Runs but never answers its readiness probe (a server that never opens its port).
    silent: bool,
}

/// A backend in memory. Instances become ready `ready_after_ns` after they are created; those whose model
/// path (or process command) contains `broken` exit instead, over and over, and those whose path contains
/// `silent` run without ever becoming ready; deleted ones are gone on the next `list`, and their logs
/// at once (as the agent removes a deleted instance's log files).
pub struct FakeBackend {
    clock: Arc<dyn Clock>,
    nodes: Mutex<Vec<NodeInfo>>,
    instances: Mutex<BTreeMap<String, FakeInstance>>,
    ready_after_ns: u64,
    calls: Mutex<Vec<String>>,
    deleted: Mutex<BTreeSet<String>>,
    logs: Mutex<BTreeMap<String, String>>,
}

impl FakeBackend {
    /// One node `local` with `devices` CPU devices named `CPU-0`, `CPU-1`, …
    pub fn new(clock: Arc<dyn Clock>, devices: usize, ready_after_ns: u64) -> Arc<FakeBackend> {
        let node = NodeInventory {
            name: "local".into(),
            devices: (0..devices)
                .map(|i| DeviceInventory {
                    uuid: format!("CPU-{i}"),
                    memory_mib: 0,
                    gpu: false,
                })
                .collect(),
            labels: well_known_labels("local"),
            taints: Vec::new(),
        };
        Arc::new(FakeBackend {
            clock,
            nodes: Mutex::new(vec![node]),
            instances: Mutex::new(BTreeMap::new()),
            ready_after_ns,
            calls: Mutex::new(Vec::new()),
            deleted: Mutex::new(BTreeSet::new()),
            logs: Mutex::new(BTreeMap::new()),
        })
    }

    fn call(&self, what: String) {
        lock(&self.calls).push(what);
    }

    /// Every call so far, in order (`create ocr-1`, `set_quota ocr-1 0.2/0.5`, `delete ocr-1`).
    pub fn calls(&self) -> Vec<String> {
        lock(&self.calls).clone()
    }

    /// Instances that exist now (terminating ones too), by id.
    pub fn ids(&self) -> Vec<String> {
        lock(&self.instances).keys().cloned().collect()
    }

    /// One instance as the backend would report it.
    pub fn instance(&self, id: &str) -> Option<ObservedInstance> {
        lock(&self.instances).get(id).map(|i| i.obs.clone())
    }

    /// The process of `id` exits: the node restarts it after `restart_after_ns`.
    pub fn crash(&self, id: &str, exit: &str, restart_after_ns: u64) {
        if let Some(i) = lock(&self.instances).get_mut(id) {
            i.obs.phase = InstancePhase::Restarting;
            i.obs.last_exit = Some(exit.to_string());
            i.obs.restarts += 1;
            i.ready_at_ns = self.clock.now_ns() + restart_after_ns;
        }
    }

    /// The process of `id` exits for good: the node does not restart it (its restart policy says so).
    pub fn exit(&self, id: &str, exit: &str) {
        if let Some(i) = lock(&self.instances).get_mut(id) {
            i.obs.phase = InstancePhase::Exited;
            i.obs.last_exit = Some(exit.to_string());
        }
    }

    /// The memory cap of `id` has refused `n` allocations so far.
    pub fn set_alloc_failures(&self, id: &str, n: u64) {
        if let Some(i) = lock(&self.instances).get_mut(id) {
            i.obs.alloc_failures = n;
        }
    }

    /// What the log of `id` holds from now on (by default two lines, the last one `the last line`).
    pub fn set_log(&self, id: &str, text: &str) {
        lock(&self.logs).insert(id.to_string(), text.to_string());
    }

    /// The node's devices from now on (a device left out is gone from the inventory; its instances keep
    /// running, as on a GPU that NVML cannot reach for a while).
    pub fn set_devices(&self, uuids: &[&str]) {
        if let Some(node) = lock(&self.nodes).first_mut() {
            node.devices = uuids
                .iter()
                .map(|uuid| DeviceInventory {
                    uuid: (*uuid).to_string(),
                    memory_mib: 0,
                    gpu: false,
                })
                .collect();
        }
    }

    /// `id` vanishes without being asked to (its node went away with it).
    pub fn vanish(&self, id: &str) {
        lock(&self.instances).remove(id);
    }

    /// Starts an instance outside the control plane, as one adopted after a restart would look.
    pub fn insert(&self, obs: ObservedInstance) {
        lock(&self.instances).insert(
            obs.id.clone(),
            FakeInstance {
                ready_at_ns: 0,
                broken: false,
                silent: false,
                obs,
            },
        );
    }
}

fn model_path(runtime: &Runtime) -> String {
    match runtime {
        Runtime::Onnx { model } => model.path.display().to_string(),
        Runtime::Trainer { .. } => String::new(),
        Runtime::Process { process } => process.command.join(" "),
    }
}

impl InstanceBackend for FakeBackend {
    fn nodes(&self) -> BoxFuture<'_, Result<Vec<NodeInfo>, BackendError>> {
        let nodes = lock(&self.nodes).clone();
        Box::pin(async move { Ok(nodes) })
    }

    fn list(&self) -> BoxFuture<'_, Result<Vec<ObservedInstance>, BackendError>> {
        let now = self.clock.now_ns();
        let mut instances = lock(&self.instances);
        let deleted: Vec<String> = std::mem::take(&mut *lock(&self.deleted))
            .into_iter()
            .collect();
        for id in deleted {
            instances.remove(&id);
        }
        for i in instances.values_mut() {
            let due = now >= i.ready_at_ns;
            match i.obs.phase {
                InstancePhase::Starting | InstancePhase::Restarting if due && i.broken => {
                    i.obs.phase = InstancePhase::Restarting;
                    i.obs.restarts += 1;
                    i.obs.last_exit = Some(format!("exit code 1 (restart {})", i.obs.restarts));
                    i.ready_at_ns = now + self.ready_after_ns;
                }
                InstancePhase::Starting | InstancePhase::Restarting if due && i.silent => {
                    i.obs.not_ready = Some("connection refused (nothing listens on port 1)".into());
                }
                InstancePhase::Starting | InstancePhase::Restarting if due => {
                    i.obs.phase = InstancePhase::Ready;
                }
                _ => {}
            }
        }
        let all = instances.values().map(|i| i.obs.clone()).collect();
        Box::pin(async move { Ok(all) })
    }

    fn create(&self, plan: InstancePlan) -> BoxFuture<'_, Result<ObservedInstance, BackendError>> {
        self.call(format!("create {}", plan.name));
        let path = model_path(&plan.runtime);
        let result = if lock(&self.instances).contains_key(&plan.name) {
            Err(BackendError::Conflict(FieldError::new(
                "name",
                &plan.name,
                "must be unique on this node",
            )))
        } else {
            let obs = ObservedInstance {
                id: plan.name.clone(),
                name: plan.name.clone(),
                function: plan.function.clone(),
                template: plan.template.clone(),
                generation: plan.generation,
                kind: plan.kind,
                at: plan.at.clone(),
                quota: plan.quota,
                phase: InstancePhase::Starting,
                terminating: false,
                endpoint: Some(format!("http://fake/{}", plan.name)),
                last_exit: None,
                restarts: 0,
                adopted: false,
                usable_share: 1.0,
                not_ready: None,
                alloc_failures: 0,
            };
            lock(&self.instances).insert(
                plan.name.clone(),
                FakeInstance {
                    obs: obs.clone(),
                    ready_at_ns: self.clock.now_ns() + self.ready_after_ns,
                    broken: path.contains("broken"),
                    silent: path.contains("silent"),
                },
            );
            Ok(obs)
        };
        Box::pin(async move { result })
    }

    fn set_quota<'a>(
        &'a self,
        id: &'a str,
        quota: Quota,
    ) -> BoxFuture<'a, Result<(), BackendError>> {
        self.call(format!("set_quota {id} {}/{}", quota.request, quota.limit));
        let result = match lock(&self.instances).get_mut(id) {
            Some(i) => {
                i.obs.quota = quota;
                Ok(())
            }
            None => Err(BackendError::NotFound(id.to_string())),
        };
        Box::pin(async move { result })
    }

    fn delete<'a>(&'a self, id: &'a str) -> BoxFuture<'a, Result<(), BackendError>> {
        self.call(format!("delete {id}"));
        let result = match lock(&self.instances).get_mut(id) {
            Some(i) => {
                i.obs.terminating = true;
                lock(&self.deleted).insert(id.to_string());
                Ok(())
            }
            None => Err(BackendError::NotFound(id.to_string())),
        };
        Box::pin(async move { result })
    }

    fn logs<'a>(
        &'a self,
        id: &'a str,
        max_bytes: u64,
    ) -> BoxFuture<'a, Result<String, BackendError>> {
        let gone = lock(&self.deleted).contains(id) || !lock(&self.instances).contains_key(id);
        let result = if gone {
            Err(BackendError::NotFound(id.to_string()))
        } else {
            let text = lock(&self.logs)
                .get(id)
                .cloned()
                .unwrap_or_else(|| format!("log of {id}\nthe last line"));
            // The last `max_bytes`, as a node reads the end of a log file.
            let mut start = text.len().saturating_sub(max_bytes as usize);
            while !text.is_char_boundary(start) {
                start += 1;
            }
            Ok(text[start..].to_string())
        };
        Box::pin(async move { result })
    }

    fn check(&self, runtime: &Runtime) -> Result<(), FieldError> {
        let path = model_path(runtime);
        FieldError::require(
            !path.contains("missing"),
            "model.path",
            &path,
            "no such file on the node",
        )
    }
}

/// A profiler that answers every job with a fixed result `delay_ns` after it started.
pub struct ScriptedProfiler {
    clock: Arc<dyn Clock>,
    delay_ns: u64,
    result: Mutex<Result<Profile, String>>,
    jobs: Mutex<Vec<ProfileJob>>,
}

impl ScriptedProfiler {
    /// Answers `result` after `delay_ns`.
    pub fn new(clock: Arc<dyn Clock>, delay_ns: u64, result: Result<Profile, String>) -> Arc<Self> {
        Arc::new(ScriptedProfiler {
            clock,
            delay_ns,
            result: Mutex::new(result),
            jobs: Mutex::new(Vec::new()),
        })
    }

    /// The jobs started so far.
    pub fn jobs(&self) -> Vec<ProfileJob> {
        lock(&self.jobs).clone()
    }
}

struct ScriptedRun {
    clock: Arc<dyn Clock>,
    done_at_ns: u64,
    result: Option<Result<Profile, String>>,
}

impl ProfileRun for ScriptedRun {
    fn poll(&mut self) -> Option<Result<Profile, String>> {
        if self.clock.now_ns() >= self.done_at_ns {
            self.result.take()
        } else {
            None
        }
    }

    fn cancel(&mut self) {
        self.result = Some(Err("cancelled".into()));
        self.done_at_ns = 0;
    }
}

impl Profiler for ScriptedProfiler {
    fn start(&self, job: ProfileJob) -> Box<dyn ProfileRun> {
        lock(&self.jobs).push(job);
        Box::new(ScriptedRun {
            clock: Arc::clone(&self.clock),
            done_at_ns: self.clock.now_ns() + self.delay_ns,
            result: Some(lock(&self.result).clone()),
        })
    }
}

/// Traffic the test sets: a constant arrival rate per function, each arrival answered within the interval and a
/// set fraction of them late, and requests in flight per instance.
#[derive(Default)]
pub struct FakeLoad {
    rps: Mutex<BTreeMap<String, f64>>,
    late_fraction: Mutex<BTreeMap<String, f64>>,
    last_ns: Mutex<BTreeMap<String, u64>>,
    in_flight: Mutex<BTreeMap<String, usize>>,
    clock: Mutex<Option<Arc<dyn Clock>>>,
}

impl FakeLoad {
    /// Traffic measured against `clock`.
    pub fn new(clock: Arc<dyn Clock>) -> Arc<FakeLoad> {
        let load = FakeLoad::default();
        *lock(&load.clock) = Some(clock);
        Arc::new(load)
    }

    /// `function` receives `rps` requests per second from now on.
    pub fn set_rps(&self, function: &str, rps: f64) {
        lock(&self.rps).insert(function.to_string(), rps);
    }

    /// From now on, `fraction` of `function`'s answers miss its SLO.
    pub fn set_late_fraction(&self, function: &str, fraction: f64) {
        lock(&self.late_fraction).insert(function.to_string(), fraction);
    }

    /// `n` requests are in flight on `instance`.
    pub fn set_in_flight(&self, instance: &str, n: usize) {
        lock(&self.in_flight).insert(instance.to_string(), n);
    }
}

impl LoadSource for FakeLoad {
    fn take_window(&self, function: &str) -> Window {
        let now = lock(&self.clock).as_ref().map_or(0, |c| c.now_ns());
        let last = lock(&self.last_ns)
            .insert(function.to_string(), now)
            .unwrap_or(now);
        let rps = lock(&self.rps).get(function).copied().unwrap_or(0.0);
        let late = lock(&self.late_fraction)
            .get(function)
            .copied()
            .unwrap_or(0.0);
        let arrivals = (rps * now.saturating_sub(last) as f64 / 1e9).round() as u64;
        Window {
            arrivals,
            answered: arrivals,
            late: (arrivals as f64 * late).round() as u64,
            queued_now: 0,
        }
    }

    fn in_flight(&self, _function: &str, instance: &str) -> usize {
        lock(&self.in_flight).get(instance).copied().unwrap_or(0)
    }
}
