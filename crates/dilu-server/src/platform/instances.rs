//! Starting, profiling and stopping instances: the worker command line, placement, the agent calls, and a
//! function's bring-up (profile or calibrate, then serve).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use dilu_agent::Status;
use dilu_agent::instance::{InstanceSpec, PriorityClass, Quota, QuotaUpdate, RestartPolicy};
use dilu_core::request::InstanceKind;

use super::{InstanceRuntime, Phase, Platform, PlatformError, lock};
use crate::profiler::{self, LiveInference, SetShare};
use crate::scheduler::Ask;
use crate::spec::{FunctionKind, FunctionSpec};
use crate::store::{Profile, StoredInstance};

/// The share a profiling instance is placed with before the search sets its own shares.
const PROFILING_REQUEST: f64 = 0.1;

/// What an instance of a function asks of its device.
pub(crate) fn ask_of(spec: &FunctionSpec, profile: Option<&Profile>, profiling: bool) -> Ask {
    let kind = match spec.kind {
        FunctionKind::Inference => InstanceKind::Inference,
        FunctionKind::Training => InstanceKind::Training,
    };
    let memory_bytes = spec.quota.and_then(|q| q.memory);
    // A profiling instance reserves a small share; the search sets its real shares with over-commit allowed,
    // since profiling is short and its result replaces the reservation. A function whose spec gives the
    // quota is calibrated at that quota.
    let (request, limit) = match (profile, spec.quota) {
        (Some(p), _) if !profiling => (p.request, p.limit),
        (_, Some(q)) => (q.request, q.limit),
        (_, None) => (PROFILING_REQUEST, PROFILING_REQUEST),
    };
    Ask {
        kind,
        request,
        limit,
        memory_bytes,
    }
}

/// A free loopback port (the kernel's choice; the instance binds it right after).
fn free_port() -> Result<u16, PlatformError> {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .map_err(|e| PlatformError::Internal(format!("finding a free port: {e}")))
}

impl Platform {
    /// The command line of an instance of `spec` on `port`.
    fn command_of(&self, spec: &FunctionSpec, profile: Option<&Profile>, port: u16) -> Vec<String> {
        let program = self.config.worker_program.display().to_string();
        let listen = format!("127.0.0.1:{port}");
        match (&spec.kind, &spec.model) {
            (FunctionKind::Inference, Some(model)) => {
                let batch = profile
                    .filter(|p| p.batch > 0)
                    .map(|p| p.batch)
                    .unwrap_or(model.max_batch);
                let mut cmd = vec![
                    program,
                    "worker".into(),
                    "--name".into(),
                    spec.name.clone(),
                    "--model".into(),
                    model.path.display().to_string(),
                    "--listen".into(),
                    listen,
                    "--max-batch".into(),
                    batch.to_string(),
                    "--max-body".into(),
                    spec.gateway.max_body.to_string(),
                ];
                if let Some(shape) = &model.input_shape {
                    let dims: Vec<String> = shape.iter().map(|d| d.to_string()).collect();
                    cmd.extend(["--input-shape".into(), dims.join(",")]);
                }
                cmd
            }
            _ => {
                let mut cmd = vec![program, "train".into(), "--listen".into(), listen];
                if let Some(t) = &spec.training {
                    for (flag, value) in [
                        ("--hidden", t.hidden.map(u64::from)),
                        ("--layers", t.layers.map(u64::from)),
                        ("--batch", t.batch.map(u64::from)),
                        ("--seed", t.seed),
                    ] {
                        if let Some(v) = value {
                            cmd.extend([flag.to_string(), v.to_string()]);
                        }
                    }
                }
                cmd
            }
        }
    }

    /// Places and starts one instance of `name`; `profiling` instances do not serve until their profile is
    /// applied. Returns the agent's instance id.
    pub(crate) async fn start_instance(
        self: &Arc<Self>,
        name: &str,
        profiling: bool,
    ) -> Result<String, PlatformError> {
        let (spec, profile) = {
            let functions = lock(&self.functions);
            let f = functions
                .get(name)
                .ok_or_else(|| PlatformError::NotFound(name.to_string()))?;
            (f.spec.clone(), f.profile.clone())
        };
        let seq = self.next_seq();
        let key = format!("{name}-{seq}");
        let ask = ask_of(&spec, profile.as_ref(), profiling);
        let placed = lock(&self.scheduler).place(&key, name, &ask);
        let placed = match placed {
            // No room beside the instances an update is replacing: retire them first (recreate instead of
            // roll), then place again.
            Err(_) if self.retire_outdated(name).await > 0 => {
                lock(&self.scheduler).place(&key, name, &ask)
            }
            other => other,
        };
        let device = placed
            .map_err(|e| PlatformError::Internal(format!("placing an instance of {name}: {e}")))?;
        let port = match free_port() {
            Ok(p) => p,
            Err(e) => {
                lock(&self.scheduler).release(&key);
                return Err(e);
            }
        };
        let health = match spec.kind {
            FunctionKind::Inference => format!("http://127.0.0.1:{port}/v2/health/ready"),
            FunctionKind::Training => format!("http://127.0.0.1:{port}/health"),
        };
        let instance = InstanceSpec {
            command: self.command_of(&spec, profile.as_ref(), port),
            env: BTreeMap::new(),
            device: device.clone(),
            quota: Quota {
                request: ask.request,
                limit: ask.limit,
                memory_bytes: ask.memory_bytes,
            },
            priority_class: match spec.kind {
                FunctionKind::Inference => PriorityClass::Inference,
                FunctionKind::Training => PriorityClass::Training,
            },
            health_url: Some(health),
            restart: RestartPolicy::OnFailure,
            name: Some(key.clone()),
        };
        let node = Arc::clone(&self.node);
        let created = tokio::task::spawn_blocking(move || node.create_instance(instance, false))
            .await
            .map_err(|e| PlatformError::Internal(e.to_string()))
            .and_then(|r| r.map_err(|e| PlatformError::Internal(e.to_string())));
        let view = match created {
            Ok(v) => v,
            Err(e) => {
                lock(&self.scheduler).release(&key);
                return Err(e);
            }
        };
        let id = view.record.id.clone();
        self.store.insert_instance(&StoredInstance {
            id: id.clone(),
            function: name.to_string(),
            node: self.node.name().to_string(),
            device: device.clone(),
            port,
            profiling,
            model_key: Some(super::model_key(&spec)),
        })?;
        let mut functions = lock(&self.functions);
        match functions.get_mut(name) {
            Some(f) => f.instances.push(InstanceRuntime {
                id: id.clone(),
                seq,
                ledger_key: key,
                device,
                port,
                ready: false,
                draining: false,
                profiling,
                outdated: false,
                reported_exit: None,
            }),
            None => {
                // Deleted while starting: stop what was started.
                drop(functions);
                let p = Arc::clone(self);
                let gone = id.clone();
                tokio::spawn(async move {
                    let node = Arc::clone(&p.node);
                    let _ = tokio::task::spawn_blocking(move || node.delete_instance(&gone)).await;
                    lock(&p.scheduler).release(&key);
                });
                return Err(PlatformError::NotFound(name.to_string()));
            }
        }
        self.metrics.instance_started(name);
        Ok(id)
    }

    /// Waits until the node reports instance `id` ready; fails if it exits or the timeout passes.
    pub(crate) async fn wait_ready(&self, id: &str) -> Result<(), PlatformError> {
        let deadline = Instant::now() + self.config.ready_timeout;
        loop {
            let view = self
                .node
                .instances()
                .into_iter()
                .find(|v| v.record.id == id);
            match view.map(|v| (v.record.status, v.record.last_exit.clone())) {
                Some((Status::Ready, _)) => return Ok(()),
                Some((Status::Exited, exit)) | Some((Status::Restarting, exit))
                    if exit.is_some() =>
                {
                    let log = self.node_log(id);
                    return Err(PlatformError::Internal(format!(
                        "instance {id} exited before it was ready ({}); its log ends: {log}",
                        exit.unwrap_or_default()
                    )));
                }
                None => {
                    return Err(PlatformError::Internal(format!("instance {id} is gone")));
                }
                _ => {}
            }
            if Instant::now() >= deadline {
                return Err(PlatformError::Internal(format!(
                    "instance {id} was not ready within {:?}",
                    self.config.ready_timeout
                )));
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }

    pub(crate) fn node_log(&self, id: &str) -> String {
        let log = self.node.logs(id, 600).unwrap_or_default();
        log.trim().replace('\n', " | ")
    }

    /// Stops one instance: no new requests, in-flight ones drain (30 s at most), then the node stops it.
    pub(crate) async fn stop_instance(self: &Arc<Self>, name: &str, id: &str) {
        let inst = {
            let mut functions = lock(&self.functions);
            let Some(f) = functions.get_mut(name) else {
                return;
            };
            let Some(pos) = f.instances.iter().position(|i| i.id == id) else {
                return;
            };
            f.instances[pos].draining = true;
            f.instances[pos].clone()
        };
        self.sync_endpoints(name);
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline
            && self
                .gateway
                .outstanding(name)
                .iter()
                .any(|(i, n)| *i == inst.id && *n > 0)
        {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        self.remove_instance(&inst).await;
        if let Some(f) = lock(&self.functions).get_mut(name) {
            f.instances.retain(|i| i.id != inst.id);
        }
    }

    /// Drains and stops every instance of `name` left from an earlier generation; returns how many it stopped.
    pub(crate) async fn retire_outdated(self: &Arc<Self>, name: &str) -> usize {
        let ids: Vec<String> = {
            let mut functions = lock(&self.functions);
            let Some(f) = functions.get_mut(name) else {
                return 0;
            };
            f.instances
                .iter_mut()
                .filter(|i| i.outdated && !i.draining)
                .map(|i| {
                    i.draining = true;
                    i.id.clone()
                })
                .collect()
        };
        for id in &ids {
            self.stop_instance(name, id).await;
        }
        ids.len()
    }

    /// Stops an instance on the node and forgets it everywhere.
    pub(crate) async fn remove_instance(&self, inst: &InstanceRuntime) {
        let node = Arc::clone(&self.node);
        let id = inst.id.clone();
        let _ = tokio::task::spawn_blocking(move || node.delete_instance(&id)).await;
        lock(&self.scheduler).release(&inst.ledger_key);
        if let Err(e) = self.store.delete_instance(&inst.id) {
            eprintln!("dilu: forgetting instance {}: {e}", inst.id);
        }
    }

    /// Sets every instance of `name` to a new quota (a vertical action: the agent applies it at once).
    pub(crate) async fn apply_quota(
        self: &Arc<Self>,
        name: &str,
        request: f64,
        limit: f64,
        memory: Option<u64>,
    ) -> Result<(), PlatformError> {
        let (targets, spec) = {
            let mut functions = lock(&self.functions);
            let Some(f) = functions.get_mut(name) else {
                return Err(PlatformError::NotFound(name.to_string()));
            };
            if let Some(p) = f.profile.as_mut() {
                p.request = request;
                p.limit = limit;
            }
            if let Some(p) = &f.profile {
                self.store.set_profile(name, p)?;
            }
            (
                f.instances
                    .iter()
                    .filter(|i| !i.draining)
                    .map(|i| (i.id.clone(), i.ledger_key.clone()))
                    .collect::<Vec<_>>(),
                f.spec.clone(),
            )
        };
        let ask = Ask {
            request,
            limit,
            memory_bytes: memory,
            ..ask_of(&spec, None, false)
        };
        for (id, key) in targets {
            let node = Arc::clone(&self.node);
            let update = QuotaUpdate {
                request: Some(request),
                limit: Some(limit),
                memory_bytes: memory,
            };
            tokio::task::spawn_blocking(move || node.update_quota(&id, update, false))
                .await
                .map_err(|e| PlatformError::Internal(e.to_string()))?
                .map_err(|e| PlatformError::Internal(e.to_string()))?;
            if let Err(e) = lock(&self.scheduler).resize(&key, name, &ask) {
                eprintln!("dilu: resizing the reservation of {key}: {e}");
            }
            self.metrics.vertical_action(name);
        }
        Ok(())
    }

    /// A request waits for a function with no instance: start one (a cold start) unless one is starting.
    pub(crate) async fn cold_start(self: &Arc<Self>, name: &str) {
        {
            let mut functions = lock(&self.functions);
            let Some(f) = functions.get_mut(name) else {
                return;
            };
            let live = f.instances.iter().filter(|i| !i.draining).count() as u32;
            if f.phase != Phase::Running
                || live + f.starting > 0
                || f.spec.scaling.max_instances == 0
            {
                return;
            }
            f.starting += 1;
        }
        self.metrics.scaling_action(name, "cold-start");
        let result = self.start_instance(name, false).await;
        self.record_start(name, &result);
    }

    /// The most of its device one instance can use, in percent (rounded up to 10): the whole of a GPU; one
    /// core's share of the CPU device, since a worker runs its model on one thread.
    fn usable_pct(&self, id: &str) -> u32 {
        let device = self
            .node
            .instances()
            .into_iter()
            .find(|v| v.record.id == id)
            .map(|v| v.record.spec.device);
        let cores = device.and_then(|uuid| {
            self.node
                .devices()
                .into_iter()
                .find(|d| d.uuid == uuid && d.kind == dilu_quota::DeviceKind::Cpu)
                .and_then(|d| d.cores)
        });
        match cores {
            Some(c) if c > 1.0 => (((100.0 / c) / 10.0).ceil() as u32 * 10).clamp(10, 100),
            _ => 100,
        }
    }

    fn set_phase(&self, name: &str, phase: Phase) {
        if let Some(f) = lock(&self.functions).get_mut(name) {
            f.phase = phase;
        }
    }

    /// Brings a function up: profile it (no quota), calibrate it (quota but no capacity), or take the spec's
    /// numbers; then hands it to the scaler. Failures are kept in its phase.
    pub(crate) async fn bring_up(self: Arc<Self>, name: String) {
        let Some((spec, generation)) = lock(&self.functions)
            .get(&name)
            .map(|f| (f.spec.clone(), f.generation))
        else {
            return;
        };
        let result = match (&spec.quota, spec.kind, spec.scaling.capacity_rps) {
            (Some(q), FunctionKind::Inference, Some(capacity)) => Ok(Profile {
                request: q.request,
                limit: q.limit,
                batch: spec.model.as_ref().map(|m| m.max_batch).unwrap_or(1),
                capacity_rps: capacity,
                latency_s: None,
                source: "spec".into(),
                measurements: 0,
                seconds: 0.0,
            }),
            (Some(q), FunctionKind::Training, _) => Ok(Profile {
                request: q.request,
                limit: q.limit,
                batch: 0,
                capacity_rps: 0.0,
                latency_s: None,
                source: "spec".into(),
                measurements: 0,
                seconds: 0.0,
            }),
            _ => {
                self.set_phase(&name, Phase::Profiling);
                self.profile_live(&name, &spec).await
            }
        };
        let still_current = lock(&self.functions)
            .get(&name)
            .is_some_and(|f| f.generation == generation);
        if !still_current {
            return;
        }
        match result {
            Ok(profile) => {
                if let Err(e) = self.store.set_profile(&name, &profile) {
                    self.set_phase(&name, Phase::Failed(e.to_string()));
                    return;
                }
                self.metrics.profiled(&name, &profile.source, true);
                if let Some(f) = lock(&self.functions).get_mut(&name) {
                    f.profile = Some(profile);
                    f.phase = Phase::Running;
                }
            }
            Err(e) => {
                self.metrics.profiled(&name, "live", false);
                self.set_phase(&name, Phase::Failed(e.to_string()));
            }
        }
    }

    /// Profiles (or calibrates) on a live instance, which then becomes the function's first serving instance
    /// with the profiled quota.
    async fn profile_live(
        self: &Arc<Self>,
        name: &str,
        spec: &FunctionSpec,
    ) -> Result<Profile, PlatformError> {
        let id = self.start_instance(name, true).await?;
        let outcome = self.profile_instance(name, spec, &id).await;
        match outcome {
            Ok(profile) => {
                let node = Arc::clone(&self.node);
                let update = QuotaUpdate {
                    request: Some(profile.request),
                    limit: Some(profile.limit),
                    memory_bytes: None,
                };
                let target = id.clone();
                let applied =
                    tokio::task::spawn_blocking(move || node.update_quota(&target, update, false))
                        .await
                        .map_err(|e| PlatformError::Internal(e.to_string()))?;
                if let Err(e) = applied {
                    self.stop_instance(name, &id).await;
                    return Err(PlatformError::Internal(format!(
                        "the profiled quota does not fit the device: {e}"
                    )));
                }
                let key = {
                    let mut functions = lock(&self.functions);
                    let inst = functions
                        .get_mut(name)
                        .and_then(|f| f.instances.iter_mut().find(|i| i.id == id));
                    inst.map(|i| {
                        i.profiling = false;
                        i.ledger_key.clone()
                    })
                };
                if let Some(key) = key {
                    let ask = ask_of(spec, Some(&profile), false);
                    if let Err(e) = lock(&self.scheduler).resize(&key, name, &ask) {
                        eprintln!("dilu: resizing the reservation of {key}: {e}");
                    }
                }
                self.store.set_serving(&id)?;
                Ok(profile)
            }
            Err(e) => {
                self.stop_instance(name, &id).await;
                Err(e)
            }
        }
    }

    async fn profile_instance(
        self: &Arc<Self>,
        name: &str,
        spec: &FunctionSpec,
        id: &str,
    ) -> Result<Profile, PlatformError> {
        self.wait_ready(id).await?;
        let port = lock(&self.functions)
            .get(name)
            .and_then(|f| f.instances.iter().find(|i| i.id == id).map(|i| i.port))
            .ok_or_else(|| PlatformError::Internal(format!("instance {id} vanished")))?;
        let base_url = format!("http://127.0.0.1:{port}");
        let max_pct = self.usable_pct(id);
        let node = Arc::clone(&self.node);
        let target = id.to_string();
        let settings = self.config.profiling;
        let spec = spec.clone();
        let function = name.to_string();
        let (tx, rx) = tokio::sync::oneshot::channel();
        std::thread::Builder::new()
            .name(format!("profile-{name}"))
            .spawn(move || {
                let set_share: SetShare<'_> = Box::new(move |share: f64| {
                    let update = QuotaUpdate {
                        request: Some(share),
                        limit: Some(share),
                        memory_bytes: None,
                    };
                    node.update_quota(&target, update, true)
                        .map(|_| ())
                        .map_err(|e| e.to_string())
                });
                let result = match (&spec.model, spec.kind) {
                    (Some(model), FunctionKind::Inference) => {
                        let shape = model.input_shape.as_deref();
                        LiveInference::new(&base_url, &function, shape, set_share, settings)
                            .and_then(|mut measure| match spec.quota {
                                Some(q) => profiler::calibrate_inference(
                                    &mut measure,
                                    q.request,
                                    q.limit,
                                    model.max_batch,
                                ),
                                None => profiler::profile_inference(
                                    &mut measure,
                                    spec.slo_ms.unwrap_or(1000.0),
                                    model.max_batch,
                                    max_pct,
                                ),
                            })
                    }
                    _ => profiler::profile_training(&base_url, set_share, settings),
                };
                let _ = tx.send(result.map_err(|e| e.to_string()));
            })
            .map_err(|e| PlatformError::Internal(format!("starting the profiler: {e}")))?;
        rx.await
            .map_err(|_| PlatformError::Internal("the profiler thread died".into()))?
            .map_err(PlatformError::Internal)
    }
}
