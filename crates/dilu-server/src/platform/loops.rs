//! The control loops: following the node's instances into gateway endpoints (every 50 ms), and the
//! horizontal scaler (each function's lazy scaler, once per its interval, fed with the gateway's counts).

use std::collections::HashMap;
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use dilu_agent::Status;
use dilu_core::scaling::{FunctionLoad, HorizontalScaler, InstanceLoad};

use super::{Phase, Platform, lock};
use crate::gateway::Endpoint;
use crate::spec::FunctionKind;

/// How often instance readiness is followed.
const SYNC_EVERY: Duration = Duration::from_millis(50);
/// How often the scale loop looks for functions whose interval has passed.
const SCALE_TICK: Duration = Duration::from_millis(100);

/// Starts both loops; they stop when the platform is dropped.
pub(super) fn spawn(platform: &Arc<Platform>) {
    let weak = Arc::downgrade(platform);
    tokio::spawn(sync_loop(weak.clone()));
    tokio::spawn(scale_loop(weak));
}

async fn sync_loop(weak: Weak<Platform>) {
    let mut tick = tokio::time::interval(SYNC_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let Some(p) = weak.upgrade() else { return };
        p.sync_once().await;
    }
}

async fn scale_loop(weak: Weak<Platform>) {
    let mut tick = tokio::time::interval(SCALE_TICK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let Some(p) = weak.upgrade() else { return };
        p.scale_once();
    }
}

impl Platform {
    /// Reads the node's instance states into the functions: readiness, and instances that are gone.
    pub(crate) async fn sync_once(self: &Arc<Self>) {
        let node = Arc::clone(&self.node);
        let Ok(views) = tokio::task::spawn_blocking(move || node.instances()).await else {
            return;
        };
        let status: HashMap<&str, Status> = views
            .iter()
            .map(|v| (v.record.id.as_str(), v.record.status))
            .collect();
        let exits: HashMap<&str, &str> = views
            .iter()
            .filter_map(|v| Some((v.record.id.as_str(), v.record.last_exit.as_deref()?)))
            .collect();
        let mut crashed = Vec::new();
        let mut gone = Vec::new();
        let mut rolled = Vec::new();
        let names: Vec<String> = {
            let mut functions = lock(&self.functions);
            for (name, f) in functions.iter_mut() {
                for inst in f.instances.iter_mut() {
                    match status.get(inst.id.as_str()) {
                        Some(Status::Ready) => inst.ready = true,
                        Some(Status::Exited) | None if !inst.draining => {
                            inst.ready = false;
                            inst.draining = true;
                            gone.push((name.clone(), inst.clone()));
                        }
                        _ => inst.ready = false,
                    }
                    let exit = exits.get(inst.id.as_str()).copied();
                    if let Some(exit) = exit
                        && inst.reported_exit.as_deref() != Some(exit)
                    {
                        inst.reported_exit = Some(exit.to_string());
                        crashed.push((name.clone(), inst.id.clone(), exit.to_string()));
                    }
                }
                // A rolling update finishes once a current instance serves (or at once for a function that
                // may scale to zero: its requests cold-start a current one).
                let current_serves = f
                    .instances
                    .iter()
                    .any(|i| i.ready && !i.draining && !i.profiling && !i.outdated);
                let may_be_empty = f.phase == Phase::Running && f.spec.scaling.min_instances == 0;
                if (current_serves || may_be_empty)
                    && f.instances.iter().any(|i| i.outdated && !i.draining)
                {
                    rolled.push(name.clone());
                }
            }
            functions.keys().cloned().collect()
        };
        for name in &names {
            self.sync_endpoints(name);
        }
        // An instance that exits (a model that will not load, a crash) is restarted by the agent; say why in
        // the function's view, once per exit report.
        for (name, id, exit) in crashed {
            let message = format!(
                "instance {id} exited ({exit}); its log ends: {}",
                self.node_log(&id)
            );
            eprintln!("dilu: {name}: {message}");
            if let Some(f) = lock(&self.functions).get_mut(&name) {
                f.last_error = Some(message);
            }
        }
        for name in rolled {
            let p = Arc::clone(self);
            tokio::spawn(async move { p.retire_outdated(&name).await });
        }
        for (name, inst) in gone {
            self.metrics.instance_lost(&name);
            let p = Arc::clone(self);
            tokio::spawn(async move {
                p.remove_instance(&inst).await;
                if let Some(f) = lock(&p.functions).get_mut(&name) {
                    f.instances.retain(|i| i.id != inst.id);
                }
            });
        }
    }

    /// Gives the gateway the function's ready, serving instances (only when they changed).
    pub(crate) fn sync_endpoints(&self, name: &str) {
        let endpoints = {
            let mut functions = lock(&self.functions);
            let Some(f) = functions.get_mut(name) else {
                return;
            };
            if f.spec.kind != FunctionKind::Inference {
                return;
            }
            let ready: Vec<Endpoint> = f
                .instances
                .iter()
                .filter(|i| i.ready && !i.draining && !i.profiling)
                .map(|i| Endpoint {
                    instance: i.id.clone(),
                    base_url: i.base_url(),
                })
                .collect();
            let ids: Vec<String> = ready.iter().map(|e| e.instance.clone()).collect();
            if ids == f.last_endpoints {
                return;
            }
            f.last_endpoints = ids;
            ready
        };
        self.gateway.set_endpoints(name, endpoints);
    }

    /// One pass of the horizontal scaler over every function whose interval has passed.
    pub(crate) fn scale_once(self: &Arc<Self>) {
        let now = Instant::now();
        let now_ns = self.started.elapsed().as_nanos() as u64;
        let mut starts = Vec::new();
        let mut stops = Vec::new();
        {
            let mut functions = lock(&self.functions);
            for (name, f) in functions.iter_mut() {
                if f.phase != Phase::Running {
                    continue;
                }
                let interval = Duration::from_nanos(f.scaler.interval_ns());
                let elapsed = now.duration_since(f.last_decision);
                if elapsed < interval {
                    continue;
                }
                f.last_decision = now;
                let live: Vec<&super::InstanceRuntime> = f
                    .instances
                    .iter()
                    .filter(|i| !i.draining && !i.outdated)
                    .collect();
                let capacity = f.profile.as_ref().map(|p| p.capacity_rps).unwrap_or(0.0);
                let mut loads: Vec<InstanceLoad> = live
                    .iter()
                    .map(|i| InstanceLoad {
                        id: i.seq,
                        ready: i.ready && !i.profiling,
                        sm_partition: 1.0,
                        time_quota: 1.0,
                        capacity_at_full_quota: capacity,
                        quota_headroom: 0.0,
                    })
                    .collect();
                for k in 0..f.starting {
                    loads.push(InstanceLoad {
                        id: u64::MAX - u64::from(k),
                        ready: false,
                        sm_partition: 1.0,
                        time_quota: 1.0,
                        capacity_at_full_quota: capacity,
                        quota_headroom: 0.0,
                    });
                }
                let (min, max) = (f.spec.scaling.min_instances, f.spec.scaling.max_instances);
                if f.spec.kind == FunctionKind::Training {
                    // A training job runs `min_instances`; its elasticity is vertical.
                    let n = loads.len() as u32;
                    for _ in n..min {
                        f.starting += 1;
                        starts.push(name.clone());
                    }
                    continue;
                }
                let window = self.gateway.take_window(name).unwrap_or_default();
                f.last_rps = window.arrivals as f64 / elapsed.as_secs_f64().max(1e-9);
                let load = FunctionLoad {
                    now_ns,
                    interval_s: elapsed.as_secs_f64(),
                    arrivals: window.arrivals,
                    queued: window.queued_now,
                    per_instance_capacity: capacity,
                    min_instances: min,
                    max_instances: max,
                    instances: &loads,
                };
                let decision = f.scaler.decide(&load);
                for _ in 0..decision.add {
                    f.starting += 1;
                    starts.push(name.clone());
                }
                for victim in decision.remove {
                    if let Some(inst) = f.instances.iter_mut().find(|i| i.seq == victim) {
                        inst.draining = true;
                        stops.push((name.clone(), inst.id.clone()));
                    }
                }
            }
        }
        for name in starts {
            self.metrics.scaling_action(&name, "out");
            let p = Arc::clone(self);
            tokio::spawn(async move {
                let result = p.start_instance(&name, false).await;
                p.record_start(&name, &result);
            });
        }
        for (name, id) in stops {
            self.metrics.scaling_action(&name, "in");
            let p = Arc::clone(self);
            tokio::spawn(async move { p.stop_instance(&name, &id).await });
        }
    }
}
