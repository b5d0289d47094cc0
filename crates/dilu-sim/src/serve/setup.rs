//! Turns a validated [`Scenario`] into a [`PreparedScenario`]: resolves each model to its built-in
//! performance model and spec, and runs the profiler once per function and training job, so that every
//! policy starts from the same quotas (`docs/algorithms.md` §3).

use crate::serve::policy::{ParameterError, PolicyParameters, parameters_from_map};
use crate::serve::prepared::{PreparedFunction, PreparedScenario, PreparedTraining};
use crate::serve::scenario::Scenario;
use dilu_core::cluster::NodeSpec;
use dilu_core::perf::{
    LatencyUnit, ModelFacts, ModelKind, PerfModel, ProfileTable, TrainingCurve, builtin_model,
};
use dilu_core::profiler::knee::{candidates, default_knee};
use dilu_core::profiler::{
    HgsConfig, InferenceQuota, ModelMeasure, profile_table, profile_training,
};
use dilu_core::request::InstanceKind;
use serde::Serialize;
use std::sync::Arc;

const NS_PER_S: f64 = 1e9;
/// Default for `request_timeout_s`: a request that waited this long before running is dropped.
pub const DEFAULT_REQUEST_TIMEOUT_S: f64 = 10.0;
/// Fraction of full-GPU training throughput the training bisection keeps.
pub const TRAINING_TARGET: f64 = 0.98;
/// Pods per node: high enough that GPUs, not pod slots, bind.
const MAX_PODS: u32 = 1000;

/// How the simulator profiles functions (`parameters.profiler`).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ProfilerParameters {
    /// Share of a function's end-to-end SLO that one batch's execution may take; the rest is left for
    /// batching and queueing (a batch may wait for the one before it). The profiler searches against
    /// `slo × slo_fraction`. **[ours]**, in the spirit of INFless's batch-wait + execution budget.
    pub slo_fraction: f64,
}

impl Default for ProfilerParameters {
    fn default() -> Self {
        ProfilerParameters { slo_fraction: 0.5 }
    }
}

/// Why a scenario cannot be simulated although it parsed.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum SetupError {
    /// A key whose value the simulator cannot use.
    #[error("{key} = {value}: {rule}")]
    Invalid {
        /// Key path, e.g. `functions[0].slo_ms`.
        key: String,
        /// The value.
        value: String,
        /// The rule.
        rule: String,
    },
    /// A bad `parameters:` entry.
    #[error(transparent)]
    Parameters(#[from] ParameterError),
}

/// What the profiler chose for one function or job, for the report.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ProfileSummary {
    /// Function or job name.
    pub name: String,
    /// Model.
    pub model: String,
    /// Batch size (inference).
    pub batch: u32,
    /// SM request, fraction.
    pub sm_request: f64,
    /// SM limit, fraction.
    pub sm_limit: f64,
    /// Requests per second per instance at the request (inference).
    pub capacity_rps: f64,
    /// Profile points measured.
    pub measured: usize,
    /// Whether the quota was given in the scenario rather than profiled.
    pub configured: bool,
}

/// A prepared scenario, its component parameters and the profiler's choices.
#[derive(Debug, Clone)]
pub struct Setup {
    /// Ready to simulate.
    pub prepared: PreparedScenario,
    /// Component parameters.
    pub parameters: PolicyParameters,
    /// One per function, then one per training job.
    pub profiles: Vec<ProfileSummary>,
}

fn invalid(key: String, value: impl ToString, rule: impl Into<String>) -> SetupError {
    SetupError::Invalid {
        key,
        value: value.to_string(),
        rule: rule.into(),
    }
}

fn secs_to_ns(s: f64) -> u64 {
    (s * NS_PER_S).round().max(0.0) as u64
}

/// A model as the simulator uses it: its facts, table and performance model.
struct Resolved {
    spec: ModelFacts,
    table: ProfileTable,
    perf: PerfModel,
}

/// The built-in model `name`, or the calibrated `profile` under that name. A calibrated model's memory and
/// cold start come from the scenario (the parser requires them), so its facts carry zeros there.
fn resolve(
    name: &str,
    profile: Option<&ProfileTable>,
    key: &dyn Fn(&str) -> String,
) -> Result<Resolved, SetupError> {
    match profile {
        None => {
            let model = builtin_model(name)
                .ok_or_else(|| invalid(key("model"), format!("{name:?}"), "unknown model"))?;
            Ok(Resolved {
                perf: model.perf(),
                table: model.table().clone(),
                spec: model.spec,
            })
        }
        Some(table) => {
            let perf = PerfModel::from_table(table)
                .map_err(|e| invalid(key("profile"), name, e.to_string()))?;
            let (kind, tokens) = match table.unit() {
                LatencyUnit::PerBatch => (ModelKind::Vision, 1),
                LatencyUnit::PerToken { tokens } => (ModelKind::Llm, tokens),
            };
            Ok(Resolved {
                spec: ModelFacts {
                    name: name.to_owned(),
                    kind,
                    memory_mib: 0,
                    training_memory_mib: 0,
                    cold_start_s: 0.0,
                    tokens_per_request: tokens,
                },
                table: table.clone(),
                perf,
            })
        }
    }
}

/// Profiles every function and job of `scenario` and builds the cluster.
pub fn prepare(scenario: &Scenario) -> Result<Setup, SetupError> {
    let parameters = parameters_from_map(&scenario.parameters)?;
    let profiler: ProfilerParameters = match scenario.parameters.get("profiler") {
        Some(v) => serde_path_to_error::deserialize(v.clone()).map_err(|e| {
            SetupError::Parameters(ParameterError(format!(
                "profiler.{}: {}",
                e.path(),
                e.inner()
            )))
        })?,
        None => ProfilerParameters::default(),
    };
    if !(profiler.slo_fraction > 0.0 && profiler.slo_fraction <= 1.0) {
        return Err(invalid(
            "parameters.profiler.slo_fraction".into(),
            profiler.slo_fraction,
            "must be in (0, 1]",
        ));
    }
    let c = &scenario.cluster;
    let nodes = (0..c.nodes)
        .map(|i| NodeSpec {
            name: format!("node-{i:03}"),
            cpu_milli: u64::from(c.cpu_cores) * 1000,
            mem_mib: (c.mem_gb * 1024.0) as u64,
            gpu_model: c.gpu_model.clone(),
            gpu_count: c.gpus_per_node,
            gpu_mem_mib: (c.gpu_mem_gb * 1024.0) as u64,
            max_pods: MAX_PODS,
        })
        .collect();
    let mut profiles = Vec::new();
    let mut functions = Vec::with_capacity(scenario.functions.len());
    for (i, f) in scenario.functions.iter().enumerate() {
        let key = |k: &str| format!("functions[{i}].{k}");
        let model = resolve(&f.model, f.profile.as_ref(), &key)?;
        let perf = model.perf;
        let slo_s = f.slo_ms / 1000.0;
        let (mut quota, measured, configured) = match (f.batch, f.sm_request) {
            (None, _) => {
                let cfg = HgsConfig {
                    max_batch: model.table.max_batch(),
                    ..HgsConfig::new(f.slo_ms * profiler.slo_fraction / 1000.0)
                };
                let report = profile_table(&model.table, &cfg)
                    .map_err(|e| invalid(key("slo_ms"), f.slo_ms, e.to_string()))?;
                let q = report.quota.ok_or_else(|| {
                    invalid(
                        key("slo_ms"),
                        f.slo_ms,
                        format!("{} misses it even alone on a whole GPU at batch 1", f.model),
                    )
                })?;
                (q, report.measured_points.len(), false)
            }
            (Some(batch), Some(share)) => {
                // A configured quota (a calibrated live function): exactly what the platform runs; the limit
                // defaults to the request (a fixed share).
                (
                    InferenceQuota {
                        batch,
                        sm_request: share,
                        sm_limit: f.sm_limit.unwrap_or(share).max(share),
                        capacity_rps: perf.throughput(batch, share),
                        capacity_full_rps: perf.throughput(batch, 1.0),
                    },
                    0,
                    true,
                )
            }
            (Some(batch), None) => {
                // A configured batch: the smallest 10% step meeting the SLO, the knee as the limit.
                let pct = (1..=10)
                    .map(|k| k * 10)
                    .find(|&p| {
                        perf.slo_latency_s(batch, f64::from(p) / 100.0)
                            <= slo_s * profiler.slo_fraction
                    })
                    .ok_or_else(|| {
                        invalid(
                            key("batch"),
                            batch,
                            "no SM share meets the SLO at this batch",
                        )
                    })?;
                let share = f64::from(pct) / 100.0;
                let knee = default_knee(
                    &mut ModelMeasure::new(&perf),
                    batch,
                    &candidates(pct, 100, 10),
                    perf.throughput(batch, 1.0),
                )
                .map_err(|e| invalid(key("batch"), batch, e.to_string()))?;
                (
                    InferenceQuota {
                        batch,
                        sm_request: share,
                        sm_limit: (f64::from(knee) / 100.0).max(share),
                        capacity_rps: perf.throughput(batch, share),
                        capacity_full_rps: perf.throughput(batch, 1.0),
                    },
                    0,
                    true,
                )
            }
        };
        if let Some(c) = f.capacity_rps {
            quota.capacity_rps = c;
        }
        let tokens = model.spec.tokens_per_request.max(1);
        let perf = Arc::new(perf);
        profiles.push(ProfileSummary {
            name: f.name.clone(),
            model: model.spec.name.clone(),
            batch: quota.batch,
            sm_request: quota.sm_request,
            sm_limit: quota.sm_limit,
            capacity_rps: quota.capacity_rps,
            measured,
            configured,
        });
        let kind = if model.spec.kind == ModelKind::Llm {
            InstanceKind::LlmInference
        } else {
            InstanceKind::Inference
        };
        functions.push(PreparedFunction {
            name: f.name.clone(),
            model: model.spec.name.clone(),
            kind,
            perf,
            slo_s: slo_s * f64::from(tokens),
            tokens,
            quota,
            measured,
            mem_mib: f
                .memory_gb
                .map_or(model.spec.memory_mib, |g| (g * 1024.0) as u64),
            cold_start_ns: secs_to_ns(f.cold_start_s.unwrap_or(model.spec.cold_start_s)),
            timeout_ns: secs_to_ns(f.request_timeout_s.unwrap_or(DEFAULT_REQUEST_TIMEOUT_S)),
            interference: f.interference,
            overhead_ns: secs_to_ns(f.request_overhead_ms / 1000.0),
            service_cv: f.service_cv,
            min_instances: f.min_instances,
            max_instances: f.max_instances,
            initial_instances: f.initial_instances,
            spread: f.spread.clone(),
            workload: f.workload.clone(),
        });
    }
    let duration_ns = secs_to_ns(scenario.duration_s);
    let mut training = Vec::with_capacity(scenario.training.len());
    for (j, t) in scenario.training.iter().enumerate() {
        let key = |k: &str| format!("training[{j}].{k}");
        let model = resolve(&t.model, t.profile.as_ref(), &key)?;
        let perf = model.perf;
        let curve = TrainingCurve::from_model(&perf)
            .map_err(|e| invalid(key("model"), &t.model, e.to_string()))?;
        let (sm_request, measured, configured) = match t.sm_request {
            Some(r) => (r, 0, true),
            None => {
                let r = profile_training(&perf, TRAINING_TARGET)
                    .map_err(|e| invalid(key("model"), &t.model, e.to_string()))?;
                (r.quota.sm_request, r.profile.measured, false)
            }
        };
        let sm_limit = t.sm_limit.unwrap_or(1.0).max(sm_request);
        profiles.push(ProfileSummary {
            name: t.name.clone(),
            model: model.spec.name.clone(),
            batch: perf.max_grid_batch(),
            sm_request,
            sm_limit,
            capacity_rps: 0.0,
            measured,
            configured,
        });
        let start_ns = secs_to_ns(t.start_s);
        let end_ns = t
            .duration_s
            .map_or(duration_ns, |d| start_ns + secs_to_ns(d))
            .min(duration_ns);
        training.push(PreparedTraining {
            name: t.name.clone(),
            model: model.spec.name.clone(),
            curve: Arc::new(curve),
            gpus: t.gpus,
            mem_mib: t
                .memory_gb
                .map_or(model.spec.training_memory_mib, |g| (g * 1024.0) as u64),
            sm_request,
            sm_limit,
            start_ns,
            end_ns,
        });
    }
    Ok(Setup {
        prepared: PreparedScenario {
            name: scenario.name.clone(),
            duration_ns,
            warmup_ns: secs_to_ns(scenario.warmup_s),
            sample_ns: secs_to_ns(scenario.sample_interval_s).max(1),
            seed: scenario.seed,
            nodes,
            functions,
            training,
        },
        parameters,
        profiles,
    })
}
