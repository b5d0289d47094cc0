//! Dilu's large-scale placement replay (`docs/algorithms.md` §8, `docs/benchmarks.md` §2): instance start and
//! delete events on a homogeneous GPU cluster; reports the active GPUs over time, their peak, and Dilu's
//! fragmentation of active GPUs.

use crate::instance_trace::{InstanceType, TraceAction, TraceEvent};
use dilu_core::frag::DiluFragTracker;
use dilu_core::placement::{PlacerConfig, PlacerConfigError};
use dilu_core::{
    Cluster, CoreError, InstanceKind, InstanceRequest, NodeSpec, Placement, PlacerName,
    build_placer,
};
use serde::Serialize;
use std::collections::HashMap;

/// The cluster the replay runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReplayCluster {
    /// Number of nodes.
    pub nodes: u32,
    /// GPUs per node.
    pub gpus_per_node: u32,
    /// Memory per GPU, GiB.
    pub gpu_mem_gib: u64,
}

impl Default for ReplayCluster {
    /// Dilu's simulation setting: 1000 nodes × 4 GPUs of 40 GB.
    fn default() -> Self {
        ReplayCluster {
            nodes: 1000,
            gpus_per_node: 4,
            gpu_mem_gib: 40,
        }
    }
}

impl ReplayCluster {
    /// Node specs for the cluster. CPU and host memory are not part of Dilu's model, so they are unbounded.
    pub fn node_specs(&self) -> Vec<NodeSpec> {
        (0..self.nodes)
            .map(|i| NodeSpec {
                name: format!("node-{i:05}"),
                cpu_milli: u64::MAX / 4,
                mem_mib: u64::MAX / 4,
                gpu_model: "A100-40GB".into(),
                gpu_count: self.gpus_per_node,
                gpu_mem_mib: self.gpu_mem_gib * 1024,
                max_pods: u32::MAX,
            })
            .collect()
    }
}

/// Why a replay could not run.
#[derive(Debug, thiserror::Error)]
pub enum ReplayError {
    /// The cluster or an allocation broke an invariant.
    #[error(transparent)]
    Core(#[from] CoreError),
    /// The policy could not be built.
    #[error(transparent)]
    Placer(#[from] PlacerConfigError),
    /// An event is inconsistent with the replay state.
    #[error("trace line {line}: {rule}")]
    Event {
        /// 1-based line.
        line: usize,
        /// What is wrong.
        rule: String,
    },
}

/// Active GPUs at one instant.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct ActiveSample {
    /// Seconds since the first event.
    pub t_s: i64,
    /// Active GPUs after that second's events.
    pub active_gpus: u32,
}

/// The outcome of one replay.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ReplayOutcome {
    /// The policy.
    pub policy: PlacerName,
    /// Most GPUs active at once (the cost).
    pub peak_active_gpus: u32,
    /// When the peak was first reached, seconds since the first event.
    pub peak_t_s: i64,
    /// Mean unrequested SM share of active GPUs at the peak.
    pub sm_frag_at_peak: f64,
    /// Mean unused memory share of active GPUs at the peak.
    pub mem_frag_at_peak: f64,
    /// Time-weighted mean of the SM fragmentation while any GPU is active.
    pub mean_sm_frag: f64,
    /// Time-weighted mean of the memory fragmentation while any GPU is active.
    pub mean_mem_frag: f64,
    /// GPU-hours of active GPUs over the replay.
    pub gpu_hours: f64,
    /// Start events applied.
    pub starts: usize,
    /// Delete events applied (including deletes of instances that could not be placed).
    pub deletes: usize,
    /// Start events that found no room.
    pub unschedulable: usize,
    /// Active GPUs after each second that had events.
    pub series: Vec<ActiveSample>,
}

/// Converts a trace instance to a request: shares to milli (rounded), memory GB to MiB (the largest entry
/// if the per-GPU list differs).
pub fn trace_request(inst: &crate::instance_trace::TraceInstance) -> InstanceRequest {
    let milli = |x: f64| (x * 1000.0).round().clamp(0.0, 1000.0) as u32;
    let mem_gb = inst.memory_gb.iter().copied().fold(0.0f64, f64::max);
    InstanceRequest {
        kind: match inst.kind {
            InstanceType::Inference => InstanceKind::Inference,
            InstanceType::LlmInference => InstanceKind::LlmInference,
            InstanceType::Training => InstanceKind::Training,
        },
        service: Some(inst.service_name.clone()),
        gpu_count: inst.gpu_num,
        sm_request: milli(inst.sm_request).max(1),
        sm_limit: milli(inst.sm_limit).max(milli(inst.sm_request).max(1)),
        gpu_mem_mib: (mem_gb * 1024.0).round() as u64,
        cpu_milli: 0,
        mem_mib: 0,
        gpu_types: Vec::new(),
    }
}

/// Replays a trace with one policy.
pub fn replay_instances(
    events: &[TraceEvent],
    cluster_shape: ReplayCluster,
    policy: PlacerName,
) -> Result<ReplayOutcome, ReplayError> {
    let mut cluster = Cluster::new(cluster_shape.node_specs())?;
    let mut placer = build_placer(policy, &cluster, &PlacerConfig::default())?;
    let mut frag = DiluFragTracker::new(&cluster);
    let mut live: HashMap<&str, Option<Placement>> = HashMap::new();
    let t0 = events.first().map_or(0, |e| e.time_s);
    let mut out = ReplayOutcome {
        policy,
        peak_active_gpus: 0,
        peak_t_s: 0,
        sm_frag_at_peak: 0.0,
        mem_frag_at_peak: 0.0,
        mean_sm_frag: 0.0,
        mean_mem_frag: 0.0,
        gpu_hours: 0.0,
        starts: 0,
        deletes: 0,
        unschedulable: 0,
        series: Vec::new(),
    };
    let (mut weighted_sm, mut weighted_mem, mut active_time) = (0.0, 0.0, 0.0);
    let mut last_t = t0;
    let mut instance_id = 0u64;
    for (i, e) in events.iter().enumerate() {
        // Account the interval since the previous event at the state it had.
        let dt = (e.time_s - last_t) as f64;
        if dt > 0.0 && frag.active_gpus() > 0 {
            weighted_sm += frag.sm_frag() * dt;
            weighted_mem += frag.mem_frag() * dt;
            active_time += dt;
            out.gpu_hours += f64::from(frag.active_gpus()) * dt / 3600.0;
        }
        last_t = e.time_s;
        let name = e.instance.service_name.as_str();
        match e.action {
            TraceAction::Start => {
                if live.contains_key(name) {
                    return Err(ReplayError::Event {
                        line: e.line,
                        rule: format!("'{name}' started twice"),
                    });
                }
                let req = trace_request(&e.instance);
                req.validate().map_err(|err| ReplayError::Event {
                    line: e.line,
                    rule: err.to_string(),
                })?;
                out.starts += 1;
                match placer.place(&cluster, &req) {
                    Ok(mut p) => {
                        instance_id += 1;
                        p.instance = instance_id;
                        cluster.allocate(&p)?;
                        frag.node_changed(&cluster, p.node);
                        live.insert(name, Some(p));
                    }
                    Err(_) => {
                        out.unschedulable += 1;
                        live.insert(name, None);
                    }
                }
            }
            TraceAction::Delete => {
                let placed = live.remove(name).ok_or_else(|| ReplayError::Event {
                    line: e.line,
                    rule: format!("delete of '{name}', which is not running"),
                })?;
                out.deletes += 1;
                if let Some(p) = placed {
                    cluster.release(&p)?;
                    frag.node_changed(&cluster, p.node);
                }
            }
        }
        let last_of_second = events.get(i + 1).is_none_or(|n| n.time_s != e.time_s);
        if last_of_second {
            let active = frag.active_gpus();
            out.series.push(ActiveSample {
                t_s: e.time_s - t0,
                active_gpus: active,
            });
            if active > out.peak_active_gpus {
                out.peak_active_gpus = active;
                out.peak_t_s = e.time_s - t0;
                out.sm_frag_at_peak = frag.sm_frag();
                out.mem_frag_at_peak = frag.mem_frag();
            }
        }
    }
    if active_time > 0.0 {
        out.mean_sm_frag = weighted_sm / active_time;
        out.mean_mem_frag = weighted_mem / active_time;
    }
    Ok(out)
}
