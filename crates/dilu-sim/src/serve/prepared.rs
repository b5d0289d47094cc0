//! A scenario made ready to simulate: every function and training job resolved to its performance model,
//! memory, cold start and profiled quota. The engine reads only this; no I/O and no profiling happens
//! while it runs.

use crate::serve::workload::Workload;
use dilu_core::cluster::NodeSpec;
use dilu_core::perf::{PerfModel, TrainingCurve};
use dilu_core::profiler::InferenceQuota;
use dilu_core::request::InstanceKind;
use std::sync::Arc;

/// One inference function, ready to simulate.
#[derive(Debug, Clone)]
pub struct PreparedFunction {
    /// Function name.
    pub name: String,
    /// Model name.
    pub model: String,
    /// Inference or LLM inference.
    pub kind: InstanceKind,
    /// How long a batch takes at an SM share.
    pub perf: Arc<PerfModel>,
    /// SLO on the whole request, seconds (per-token SLO × tokens for LLMs).
    pub slo_s: f64,
    /// Tokens generated per request (1 for non-LLM models).
    pub tokens: u32,
    /// The profiled quota every policy starts from (`docs/algorithms.md`, profiling).
    pub quota: InferenceQuota,
    /// Grid points the profiler measured for it (0 when its batch was configured).
    pub measured: usize,
    /// GPU memory of one instance, MiB.
    pub mem_mib: u64,
    /// Time from creating an instance until it serves (model load), nanoseconds.
    pub cold_start_ns: u64,
    /// A request that waited this long before its batch started is dropped (a violation), nanoseconds.
    pub timeout_ns: u64,
    /// Slowdown of a batch per other inference instance running a batch on the same device (0: none).
    pub interference: f64,
    /// Time each request spends outside the instance's executor (gateway, decoding, encoding), added to its
    /// latency, nanoseconds.
    pub overhead_ns: u64,
    /// Coefficient of variation of a batch's time around the table's (0: every batch takes exactly that).
    pub service_cv: f64,
    /// Fewest instances.
    pub min_instances: u32,
    /// Most instances.
    pub max_instances: u32,
    /// Instances placed (warm) at time zero.
    pub initial_instances: u32,
    /// How its replicas spread over nodes or devices (none: wherever the placer packs them).
    pub spread: Option<dilu_core::scheduling::Spread>,
    /// Its request arrivals.
    pub workload: Workload,
}

/// One training job, ready to simulate.
#[derive(Debug, Clone)]
pub struct PreparedTraining {
    /// Job name.
    pub name: String,
    /// Model name.
    pub model: String,
    /// Relative throughput against SM share.
    pub curve: Arc<TrainingCurve>,
    /// GPUs, gang-placed on one node.
    pub gpus: u32,
    /// GPU memory per GPU, MiB.
    pub mem_mib: u64,
    /// Guaranteed SM share per GPU (from the bisection profiler unless configured), fraction.
    pub sm_request: f64,
    /// Most SM share per GPU, fraction.
    pub sm_limit: f64,
    /// When it is submitted, nanoseconds.
    pub start_ns: u64,
    /// When it stops, nanoseconds.
    pub end_ns: u64,
}

/// Everything the engine needs to run one policy over a scenario.
#[derive(Debug, Clone)]
pub struct PreparedScenario {
    /// Scenario name.
    pub name: String,
    /// Simulated time, nanoseconds.
    pub duration_ns: u64,
    /// Requests arriving before this are served but not measured, nanoseconds.
    pub warmup_ns: u64,
    /// Metrics sampling period, nanoseconds.
    pub sample_ns: u64,
    /// Seed of every random stream.
    pub seed: u64,
    /// The cluster's nodes.
    pub nodes: Vec<NodeSpec>,
    /// Inference functions.
    pub functions: Vec<PreparedFunction>,
    /// Training jobs.
    pub training: Vec<PreparedTraining>,
}
