//! Serving scenarios: the YAML file format that describes one simulated experiment, its parser and its checks.
//!
//! A scenario names a cluster, the policies to compare, the inference functions with their workloads and
//! the training jobs sharing the GPUs (`scenarios/README.md` documents every key). Parsing is strict:
//! unknown keys are rejected everywhere, every value is range-checked, and every error names the key path
//! (`functions[0].slo_ms`), the value and the rule it broke. Data files referenced by workloads are read at
//! parse time and builtin rate series are generated then, so the returned [`Scenario`] is self-contained and
//! the engine never does I/O.

use std::collections::BTreeMap;
use std::collections::HashMap;
use std::fmt::Display;
use std::path::{Path, PathBuf};

use serde::Deserialize;
use serde_yaml::Value;

/// Re-exported so a scenario's types can be named from this module alone.
pub use super::workload::Workload;
use super::workload::{
    BuiltinSeries, DataLineError, MAX_BUILTIN_STEPS, builtin_series_seed, parse_azure_llm_trace,
    parse_rate_series, trace_offsets,
};
use dilu_core::perf::table::{DiluCsvOptions, parse_dilu_csv_with};
use dilu_core::perf::{PerfModel, ProfileTable};
use dilu_core::policy::PolicyName;
use dilu_core::scheduling::{PlacementRules, Spread, SpreadDomain};

/// Longest scenario the simulator accepts: 7 days of virtual time, in seconds.
pub const MAX_DURATION_S: f64 = 7.0 * 86_400.0;
/// Seed used when a scenario gives none.
pub const DEFAULT_SEED: u64 = 1;
/// Most metric samples a scenario may ask for (`duration_s / sample_interval_s`).
pub const MAX_SAMPLES: f64 = 10_000_000.0;
/// Smallest `step_s` of a rate series (1 ms), so a stream never walks through billions of empty steps.
pub const MIN_SERIES_STEP_S: f64 = 0.001;
/// Largest `service_cv` accepted (a batch's time varying twice as much as its mean).
pub const MAX_SERVICE_CV: f64 = 2.0;
/// Largest `interference` accepted (one neighbour making a batch eleven times slower).
pub const MAX_INTERFERENCE: f64 = 10.0;
/// Largest Gamma coefficient of variation accepted.
pub const MAX_GAMMA_CV: f64 = 100.0;
/// Longest function, training-job or scenario name, in bytes.
pub const MAX_NAME_LEN: usize = 64;
/// Default `max_instances` of a function.
pub const DEFAULT_MAX_INSTANCES: u32 = 64;
/// The workload kinds, as written in the `kind` key.
pub const WORKLOAD_KINDS: [&str; 4] = ["poisson", "gamma", "series", "trace"];
/// Components that may receive free-form configuration under `parameters`.
pub const PARAMETER_COMPONENTS: [&str; 11] = [
    "rckm",
    "slack",
    "tgs",
    "lazy",
    "lazy_slo",
    "kpa",
    "infless",
    "fast-gshare",
    "has",
    "batching",
    "profiler",
];

/// The simulated cluster: identical nodes, each with identical GPUs.
#[derive(Debug, Clone, PartialEq)]
pub struct ClusterSpec {
    /// Number of nodes (≥ 1).
    pub nodes: u32,
    /// GPUs per node (≥ 1).
    pub gpus_per_node: u32,
    /// Memory of one GPU in GB (default 40).
    pub gpu_mem_gb: f64,
    /// GPU model name, informational (default `A100`).
    pub gpu_model: String,
    /// CPU cores per node (default 64).
    pub cpu_cores: u32,
    /// Host memory per node in GB (default 256).
    pub mem_gb: f64,
}

/// One inference function: its model, SLO, scaling bounds and request workload.
#[derive(Debug, Clone, PartialEq)]
pub struct FunctionSpec {
    /// Unique name (across functions and training jobs).
    pub name: String,
    /// Model name, one of the models the caller knows (profiles); with `profile` any valid name.
    pub model: String,
    /// A calibrated profile table (from `profile:`) replacing the built-in model's, if given.
    pub profile: Option<ProfileTable>,
    /// Latency SLO in milliseconds; for LLM models it is per generated token.
    pub slo_ms: f64,
    /// Batch size overriding the profiled one, if given.
    pub batch: Option<u32>,
    /// SM request as a fraction of a GPU in (0, 1], overriding the profiled one (needs `batch`).
    pub sm_request: Option<f64>,
    /// SM limit as a fraction of a GPU in (0, 1], ≥ `sm_request` (needs `sm_request`).
    pub sm_limit: Option<f64>,
    /// Fewest instances kept alive (may be 0: scale to zero).
    pub min_instances: u32,
    /// Most instances (≥ 1, ≥ `min_instances`).
    pub max_instances: u32,
    /// Instances running at time 0 (within `[min_instances, max_instances]`).
    pub initial_instances: u32,
    /// GPU memory per instance in GB overriding the model's, if given.
    pub memory_gb: Option<f64>,
    /// Cold-start time in seconds overriding the model's, if given.
    pub cold_start_s: Option<f64>,
    /// Time after which a queued request is dropped (counted as an SLO violation); `None`: the engine decides.
    pub request_timeout_s: Option<f64>,
    /// Slowdown of one instance's batch per other inference instance running a batch on the same device at the
    /// same time (0: none; on a CPU device, where residents share the host's cores and caches, it was measured
    /// by hand: `docs/sim-vs-live.md`).
    pub interference: f64,
    /// Milliseconds each request spends outside its instance's executor, added to its latency: the gateway's
    /// hop, decoding the request and encoding the answer (0: none; `dilu sim calibrate` measures it).
    pub request_overhead_ms: f64,
    /// Coefficient of variation of a batch's time: each batch's work is drawn from a lognormal of mean 1 and
    /// this variation (0: every batch takes exactly the table's time; `dilu sim calibrate` measures it).
    pub service_cv: f64,
    /// Requests per second per instance the horizontal scaler counts, overriding the profile's at the batch and
    /// request (what a platform spec's `scaling.capacity_rps` pins).
    pub capacity_rps: Option<f64>,
    /// How its replicas spread over nodes or devices (`dilu_core::scheduling::Spread`, as a platform spec's
    /// `scheduling.spread`; the simulator's nodes have no labels, so across `node` or `device`).
    pub spread: Option<Spread>,
    /// The request arrivals, with data files already loaded.
    pub workload: Workload,
}

/// One training job, gang-scheduled on GPUs of a single node.
#[derive(Debug, Clone, PartialEq)]
pub struct TrainingSpec {
    /// Unique name (across functions and training jobs).
    pub name: String,
    /// Model name, one of the models the caller knows; with `profile` any valid name.
    pub model: String,
    /// A calibrated profile table (from `profile:`) replacing the built-in model's, if given.
    pub profile: Option<ProfileTable>,
    /// GPUs of the gang (1 ..= `cluster.gpus_per_node`).
    pub gpus: u32,
    /// GPU memory per GPU in GB overriding the model's, if given.
    pub memory_gb: Option<f64>,
    /// SM request as a fraction of a GPU in (0, 1]; `None`: the engine profiles it.
    pub sm_request: Option<f64>,
    /// SM limit as a fraction of a GPU in (0, 1], ≥ `sm_request`; `None`: the engine decides.
    pub sm_limit: Option<f64>,
    /// Submission time in seconds (< the scenario's duration).
    pub start_s: f64,
    /// Run time in seconds; `None`: until the end of the scenario.
    pub duration_s: Option<f64>,
}

/// A validated serving scenario (see `scenarios/README.md` for the file format).
#[derive(Debug, Clone, PartialEq)]
pub struct Scenario {
    /// Scenario name (1–64 characters of `A–Z a–z 0–9 . _ -`), used in reports and output paths.
    pub name: String,
    /// Free-text description, if given.
    pub description: Option<String>,
    /// Simulated time in seconds (0 < duration ≤ 7 days).
    pub duration_s: f64,
    /// Seed of every random choice of the run.
    pub seed: u64,
    /// Requests arriving before this time (s) are served but left out of the metrics.
    pub warmup_s: f64,
    /// Metrics sampling period in seconds.
    pub sample_interval_s: f64,
    /// The cluster.
    pub cluster: ClusterSpec,
    /// Policies to run the scenario under, in order, without duplicates.
    pub policies: Vec<PolicyName>,
    /// Inference functions.
    pub functions: Vec<FunctionSpec>,
    /// Training jobs.
    pub training: Vec<TrainingSpec>,
    /// Free-form configuration per component (keys from [`PARAMETER_COMPONENTS`]; each value a mapping).
    pub parameters: BTreeMap<String, Value>,
}

/// Why a scenario could not be loaded: each message names the key path, the value and the broken rule.
#[derive(Debug, thiserror::Error)]
pub enum ScenarioError {
    /// The scenario file could not be read.
    #[error("{}: cannot read the scenario: {source}", path.display())]
    Read {
        /// The scenario file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// An error inside the scenario file `path` ([`load_scenario`] wraps every other error in this).
    #[error("{}: {error}", path.display())]
    InFile {
        /// The scenario file.
        path: PathBuf,
        /// The error.
        error: Box<ScenarioError>,
    },
    /// YAML syntax, a wrong type, a missing or unknown key (serde's message, with line and column when known).
    #[error("{}", if key.is_empty() { message.clone() } else { format!("{key}: {message}") })]
    Syntax {
        /// Key path such as `functions[0].slo_ms` (empty for the document itself).
        key: String,
        /// What went wrong.
        message: String,
    },
    /// A value that parsed but breaks a rule.
    #[error("{key}{}: {rule}", value.as_ref().map(|v| format!(" = {v}")).unwrap_or_default())]
    Invalid {
        /// Key path such as `functions[0].slo_ms`.
        key: String,
        /// The offending value as written (strings quoted), when there is one.
        value: Option<String>,
        /// The rule it breaks.
        rule: String,
    },
    /// A workload data file could not be read.
    #[error("{key} = {written:?}: cannot read {}: {source}", path.display())]
    DataRead {
        /// Key path of the `file` key.
        key: String,
        /// The path as written in the scenario.
        written: String,
        /// The resolved path.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// A malformed line in a workload data file.
    #[error("{key} = {written:?}: {}: {source}", path.display())]
    DataLine {
        /// Key path of the `file` key.
        key: String,
        /// The path as written in the scenario.
        written: String,
        /// The resolved path.
        path: PathBuf,
        /// The line, field, value and rule (boxed to keep the error small).
        source: Box<DataLineError>,
    },
}

/// Reads and validates the scenario file `path`; relative data paths resolve against its directory.
///
/// `known_models` lists the model names functions and training jobs may use (the profiled models).
pub fn load_scenario(path: &Path, known_models: &[&str]) -> Result<Scenario, ScenarioError> {
    let text = std::fs::read_to_string(path).map_err(|source| ScenarioError::Read {
        path: path.to_owned(),
        source,
    })?;
    let base_dir = match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir,
        _ => Path::new("."),
    };
    parse_scenario(&text, base_dir, known_models).map_err(|e| ScenarioError::InFile {
        path: path.to_owned(),
        error: Box::new(e),
    })
}

/// Parses and validates a scenario from YAML text; relative data paths resolve against `base_dir`.
///
/// `known_models` lists the model names functions and training jobs may use (the profiled models).
pub fn parse_scenario(
    yaml: &str,
    base_dir: &Path,
    known_models: &[&str],
) -> Result<Scenario, ScenarioError> {
    let raw: RawScenario =
        serde_path_to_error::deserialize(serde_yaml::Deserializer::from_str(yaml))
            .map_err(|e| syntax_error("", e))?;
    Checker {
        base_dir,
        known_models,
    }
    .scenario(raw)
}

// ---------------------------------------------------------------------------------------------------------
// The file as written (serde), before the checks.

/// Default `sample_interval_s`.
fn default_sample_interval() -> f64 {
    1.0
}

/// Default `seed`.
fn default_seed() -> u64 {
    DEFAULT_SEED
}

/// Top level of a scenario file.
#[derive(Debug, Deserialize)]
#[serde(
    deny_unknown_fields,
    expecting = "a scenario mapping (name, duration_s, cluster, ...)"
)]
struct RawScenario {
    name: String,
    #[serde(default)]
    description: Option<String>,
    duration_s: f64,
    #[serde(default = "default_seed")]
    seed: u64,
    #[serde(default)]
    warmup_s: f64,
    #[serde(default = "default_sample_interval")]
    sample_interval_s: f64,
    cluster: RawCluster,
    #[serde(default)]
    policies: Option<Vec<String>>,
    #[serde(default)]
    functions: Vec<RawFunction>,
    #[serde(default)]
    training: Vec<RawTraining>,
    #[serde(default)]
    parameters: BTreeMap<String, Value>,
}

/// `cluster:` as written.
#[derive(Debug, Deserialize)]
#[serde(
    deny_unknown_fields,
    expecting = "a cluster mapping (nodes, gpus_per_node, ...)"
)]
struct RawCluster {
    nodes: i64,
    gpus_per_node: i64,
    #[serde(default)]
    gpu_mem_gb: Option<f64>,
    #[serde(default)]
    gpu_model: Option<String>,
    #[serde(default)]
    cpu_cores: Option<i64>,
    #[serde(default)]
    mem_gb: Option<f64>,
}

/// One entry of `functions:` as written; the workload is checked separately for precise key paths.
#[derive(Debug, Deserialize)]
#[serde(
    deny_unknown_fields,
    expecting = "a function mapping (name, model, slo_ms, workload, ...)"
)]
struct RawFunction {
    name: String,
    model: String,
    slo_ms: f64,
    #[serde(default)]
    batch: Option<i64>,
    #[serde(default)]
    min_instances: Option<i64>,
    #[serde(default)]
    max_instances: Option<i64>,
    #[serde(default)]
    initial_instances: Option<i64>,
    #[serde(default)]
    memory_gb: Option<f64>,
    #[serde(default)]
    cold_start_s: Option<f64>,
    #[serde(default)]
    request_timeout_s: Option<f64>,
    #[serde(default)]
    interference: Option<f64>,
    #[serde(default)]
    request_overhead_ms: Option<f64>,
    #[serde(default)]
    service_cv: Option<f64>,
    #[serde(default)]
    capacity_rps: Option<f64>,
    #[serde(default)]
    profile: Option<String>,
    #[serde(default)]
    sm_request: Option<f64>,
    #[serde(default)]
    sm_limit: Option<f64>,
    #[serde(default)]
    spread: Option<Spread>,
    workload: Value,
}

/// One entry of `training:` as written.
#[derive(Debug, Deserialize)]
#[serde(
    deny_unknown_fields,
    expecting = "a training-job mapping (name, model, gpus, ...)"
)]
struct RawTraining {
    name: String,
    model: String,
    #[serde(default)]
    profile: Option<String>,
    gpus: i64,
    #[serde(default)]
    memory_gb: Option<f64>,
    #[serde(default)]
    sm_request: Option<f64>,
    #[serde(default)]
    sm_limit: Option<f64>,
    #[serde(default)]
    start_s: f64,
    #[serde(default)]
    duration_s: Option<f64>,
}

/// `{kind: poisson, ...}` without its `kind`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPoisson {
    rps: f64,
}

/// `{kind: gamma, ...}` without its `kind`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawGamma {
    rps: f64,
    cv: f64,
}

/// `{kind: series, ...}` without its `kind`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSeries {
    #[serde(default)]
    file: Option<String>,
    #[serde(default)]
    builtin: Option<BuiltinSeries>,
    #[serde(default)]
    step_s: Option<f64>,
    #[serde(default)]
    scale: Option<f64>,
    #[serde(default)]
    offset_s: Option<f64>,
    #[serde(default)]
    repeat: Option<bool>,
}

/// Trace file formats understood by `{kind: trace}`.
#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(rename_all = "kebab-case")]
enum TraceFormat {
    /// Azure LLM inference trace 2023: `TIMESTAMP,ContextTokens,GeneratedTokens`.
    AzureLlm,
}

/// `{kind: trace, ...}` without its `kind`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTrace {
    file: String,
    #[serde(default)]
    format: Option<TraceFormat>,
    #[serde(default)]
    time_scale: Option<f64>,
    #[serde(default)]
    start_s: Option<f64>,
}

// ---------------------------------------------------------------------------------------------------------
// Error helpers.

/// Joins a key-path prefix and a relative path (`functions[0].workload` + `rps`).
fn join_key(prefix: &str, rel: &str) -> String {
    match (prefix.is_empty(), rel.is_empty()) {
        (_, true) => prefix.to_owned(),
        (true, false) => rel.to_owned(),
        (false, false) if rel.starts_with('[') => format!("{prefix}{rel}"),
        (false, false) => format!("{prefix}.{rel}"),
    }
}

/// `path` and each of its ancestors, longest first (`a[1].b`, `a[1]`, `a`).
fn ancestors(path: &str) -> Vec<&str> {
    let mut out = vec![path];
    for (i, c) in path.char_indices().rev() {
        if (c == '.' || c == '[') && i > 0 {
            out.push(&path[..i]);
        }
    }
    out
}

/// Turns a serde error into [`ScenarioError::Syntax`] with the key path under `prefix`.
///
/// serde_yaml already starts some messages with its own view of the path; that copy is removed so the path
/// appears once. An unknown key is reported at the mapping that holds it (`functions[1]: unknown field ...`).
fn syntax_error(prefix: &str, err: serde_path_to_error::Error<serde_yaml::Error>) -> ScenarioError {
    let path = err.path().to_string();
    let rel = if path == "." { String::new() } else { path };
    let full = err.inner().to_string();
    let (mut key, message) = ancestors(&rel)
        .into_iter()
        .filter(|a| !a.is_empty())
        .find_map(|a| {
            full.strip_prefix(a)
                .and_then(|rest| rest.strip_prefix(": "))
                .map(|rest| (a.to_owned(), rest.to_owned()))
        })
        .unwrap_or_else(|| (rel.clone(), full.clone()));
    if let Some(field) = message
        .strip_prefix("unknown field `")
        .and_then(|rest| rest.split('`').next())
        && let Some(parent) = key.strip_suffix(field)
    {
        key = parent.trim_end_matches('.').to_owned();
    }
    ScenarioError::Syntax {
        key: join_key(prefix, &key),
        message,
    }
}

/// A [`ScenarioError::Invalid`] for `key` with a value.
fn invalid(key: impl Into<String>, value: impl Display, rule: impl Into<String>) -> ScenarioError {
    ScenarioError::Invalid {
        key: key.into(),
        value: Some(value.to_string()),
        rule: rule.into(),
    }
}

/// A [`ScenarioError::Invalid`] for `key` without a value (a missing or conflicting key).
fn invalid_key(key: impl Into<String>, rule: impl Into<String>) -> ScenarioError {
    ScenarioError::Invalid {
        key: key.into(),
        value: None,
        rule: rule.into(),
    }
}

/// `x` if it is finite and > 0.
fn positive(key: &str, x: f64) -> Result<f64, ScenarioError> {
    if x.is_finite() && x > 0.0 {
        Ok(x)
    } else {
        Err(invalid(key, x, "must be > 0"))
    }
}

/// `x` if it is finite and ≥ 0.
fn non_negative(key: &str, x: f64) -> Result<f64, ScenarioError> {
    if x.is_finite() && x >= 0.0 {
        Ok(x)
    } else {
        Err(invalid(key, x, "must be ≥ 0"))
    }
}

/// `x` if it is finite and in `[0, max]`.
fn up_to(key: &str, x: f64, max: f64) -> Result<f64, ScenarioError> {
    if x.is_finite() && (0.0..=max).contains(&x) {
        Ok(x)
    } else {
        Err(invalid(key, x, format!("must be in [0, {max}]")))
    }
}

/// `x` if it is a fraction of a GPU in (0, 1].
fn fraction(key: String, x: f64) -> Result<f64, ScenarioError> {
    if x.is_finite() && x > 0.0 && x <= 1.0 {
        Ok(x)
    } else {
        Err(invalid(key, x, "must be in (0, 1]"))
    }
}

/// An SM request and limit as written under `key(…)`: each a fraction in (0, 1], the limit at least the request
/// when both are given.
fn share_pair(
    key: impl Fn(&str) -> String,
    sm_request: Option<f64>,
    sm_limit: Option<f64>,
) -> Result<(Option<f64>, Option<f64>), ScenarioError> {
    let sm_request = sm_request
        .map(|x| fraction(key("sm_request"), x))
        .transpose()?;
    let sm_limit = sm_limit.map(|x| fraction(key("sm_limit"), x)).transpose()?;
    if let (Some(req), Some(lim)) = (sm_request, sm_limit)
        && lim < req
    {
        return Err(invalid(
            key("sm_limit"),
            lim,
            format!("must be ≥ sm_request ({req})"),
        ));
    }
    Ok((sm_request, sm_limit))
}

/// `x` as a `u32` if it lies in `lo ..= hi`.
fn int_in(key: &str, x: i64, lo: u32, hi: u32) -> Result<u32, ScenarioError> {
    if x < i64::from(lo) {
        Err(invalid(key, x, format!("must be ≥ {lo}")))
    } else if x > i64::from(hi) {
        Err(invalid(key, x, format!("must be ≤ {hi}")))
    } else {
        Ok(x as u32)
    }
}

/// Checks a scenario, function or job name: 1–64 characters of `A–Z a–z 0–9 . _ -`.
fn check_name(key: &str, name: &str) -> Result<(), ScenarioError> {
    let ok = !name.is_empty()
        && name.len() <= MAX_NAME_LEN
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
    if ok {
        Ok(())
    } else {
        Err(invalid(
            key,
            format!("{name:?}"),
            "must be 1-64 characters of A-Z, a-z, 0-9, '.', '_', '-'",
        ))
    }
}

// ---------------------------------------------------------------------------------------------------------
// The checks.

/// Everything the checks need besides the raw scenario.
struct Checker<'a> {
    base_dir: &'a Path,
    known_models: &'a [&'a str],
}

impl Checker<'_> {
    /// Checks the whole scenario and loads its workloads.
    fn scenario(&self, raw: RawScenario) -> Result<Scenario, ScenarioError> {
        check_name("name", &raw.name)?;
        let duration_s = positive("duration_s", raw.duration_s)?;
        if duration_s > MAX_DURATION_S {
            return Err(invalid(
                "duration_s",
                duration_s,
                "must be ≤ 604800 (7 days)",
            ));
        }
        let warmup_s = non_negative("warmup_s", raw.warmup_s)?;
        if warmup_s >= duration_s {
            return Err(invalid(
                "warmup_s",
                warmup_s,
                format!("must be < duration_s ({duration_s})"),
            ));
        }
        let sample_interval_s = positive("sample_interval_s", raw.sample_interval_s)?;
        if sample_interval_s > duration_s {
            return Err(invalid(
                "sample_interval_s",
                sample_interval_s,
                format!("must be ≤ duration_s ({duration_s})"),
            ));
        }
        if duration_s / sample_interval_s > MAX_SAMPLES {
            return Err(invalid(
                "sample_interval_s",
                sample_interval_s,
                format!(
                    "must be ≥ duration_s / 10000000 ({}): at most 10,000,000 samples",
                    duration_s / MAX_SAMPLES
                ),
            ));
        }
        let cluster = self.cluster(raw.cluster)?;
        let policies = self.policies(raw.policies)?;
        if raw.functions.is_empty() && raw.training.is_empty() {
            return Err(invalid_key(
                "functions",
                "at least one function is required (unless training lists a job)",
            ));
        }

        let mut names: HashMap<String, String> = HashMap::new();
        let mut claim = |key: String, name: &str| -> Result<(), ScenarioError> {
            check_name(&key, name)?;
            if let Some(first) = names.get(name) {
                return Err(invalid(
                    key,
                    format!("{name:?}"),
                    format!("duplicate name (also {first})"),
                ));
            }
            names.insert(name.to_owned(), key);
            Ok(())
        };
        let mut functions = Vec::with_capacity(raw.functions.len());
        for (i, f) in raw.functions.into_iter().enumerate() {
            claim(format!("functions[{i}].name"), &f.name)?;
            functions.push(self.function(i, f, &cluster, raw.seed, duration_s)?);
        }
        let mut training = Vec::with_capacity(raw.training.len());
        for (i, t) in raw.training.into_iter().enumerate() {
            claim(format!("training[{i}].name"), &t.name)?;
            training.push(self.training(i, t, &cluster, duration_s)?);
        }

        for (component, value) in &raw.parameters {
            let key = format!("parameters.{component}");
            if !PARAMETER_COMPONENTS.contains(&component.as_str()) {
                return Err(invalid_key(
                    key,
                    format!(
                        "unknown component; valid: {}",
                        PARAMETER_COMPONENTS.join(", ")
                    ),
                ));
            }
            if !value.is_mapping() {
                return Err(invalid_key(
                    key,
                    "must be a mapping of that component's settings (use {} for none)",
                ));
            }
        }

        Ok(Scenario {
            name: raw.name,
            description: raw.description,
            duration_s,
            seed: raw.seed,
            warmup_s,
            sample_interval_s,
            cluster,
            policies,
            functions,
            training,
            parameters: raw.parameters,
        })
    }

    /// Checks `cluster:` and fills its defaults.
    fn cluster(&self, raw: RawCluster) -> Result<ClusterSpec, ScenarioError> {
        let gpu_model = raw.gpu_model.unwrap_or_else(|| "A100".to_owned());
        if gpu_model.trim().is_empty() {
            return Err(invalid(
                "cluster.gpu_model",
                format!("{gpu_model:?}"),
                "must not be empty",
            ));
        }
        Ok(ClusterSpec {
            nodes: int_in("cluster.nodes", raw.nodes, 1, 100_000)?,
            gpus_per_node: int_in("cluster.gpus_per_node", raw.gpus_per_node, 1, 64)?,
            gpu_mem_gb: positive("cluster.gpu_mem_gb", raw.gpu_mem_gb.unwrap_or(40.0))?,
            gpu_model,
            cpu_cores: int_in(
                "cluster.cpu_cores",
                raw.cpu_cores.unwrap_or(64),
                1,
                1_000_000,
            )?,
            mem_gb: positive("cluster.mem_gb", raw.mem_gb.unwrap_or(256.0))?,
        })
    }

    /// Checks `policies:` (default: all of them, in [`PolicyName::ALL`] order).
    fn policies(&self, raw: Option<Vec<String>>) -> Result<Vec<PolicyName>, ScenarioError> {
        let Some(raw) = raw else {
            return Ok(PolicyName::ALL.to_vec());
        };
        if raw.is_empty() {
            return Err(invalid_key(
                "policies",
                "must list at least one policy (leave the key out to run all of them)",
            ));
        }
        let mut out: Vec<PolicyName> = Vec::with_capacity(raw.len());
        for (i, name) in raw.iter().enumerate() {
            let key = format!("policies[{i}]");
            let policy: PolicyName = name.parse().map_err(|_| {
                invalid(
                    &key,
                    format!("{name:?}"),
                    format!("unknown policy; valid: {}", PolicyName::valid_names()),
                )
            })?;
            if let Some(j) = out.iter().position(|p| *p == policy) {
                return Err(invalid(
                    key,
                    format!("{name:?}"),
                    format!("duplicate policy (also policies[{j}])"),
                ));
            }
            out.push(policy);
        }
        Ok(out)
    }

    /// Checks a model name against the known models.
    fn model(&self, key: &str, model: &str) -> Result<(), ScenarioError> {
        if self.known_models.contains(&model) {
            Ok(())
        } else {
            let known = if self.known_models.is_empty() {
                "(none)".to_owned()
            } else {
                self.known_models.join(", ")
            };
            Err(invalid(
                key,
                format!("{model:?}"),
                format!("unknown model; known: {known}"),
            ))
        }
    }

    /// Checks an optional per-GPU memory size against the GPU's memory.
    fn memory(
        &self,
        key: &str,
        memory_gb: Option<f64>,
        cluster: &ClusterSpec,
    ) -> Result<Option<f64>, ScenarioError> {
        let Some(m) = memory_gb else {
            return Ok(None);
        };
        if m.is_finite() && m > 0.0 && m <= cluster.gpu_mem_gb {
            Ok(Some(m))
        } else {
            Err(invalid(
                key,
                m,
                format!(
                    "must be > 0 and ≤ cluster.gpu_mem_gb ({})",
                    cluster.gpu_mem_gb
                ),
            ))
        }
    }

    /// Checks one function and loads its workload.
    fn function(
        &self,
        i: usize,
        raw: RawFunction,
        cluster: &ClusterSpec,
        seed: u64,
        duration_s: f64,
    ) -> Result<FunctionSpec, ScenarioError> {
        let k = |field: &str| format!("functions[{i}].{field}");
        let profile = self.profile(
            &k,
            &raw.model,
            raw.profile.as_deref(),
            &[
                ("memory_gb", raw.memory_gb.is_some()),
                ("cold_start_s", raw.cold_start_s.is_some()),
            ],
        )?;
        let slo_ms = positive(&k("slo_ms"), raw.slo_ms)?;
        let batch = raw
            .batch
            .map(|b| int_in(&k("batch"), b, 1, 4096))
            .transpose()?;
        let (sm_request, sm_limit) = share_pair(k, raw.sm_request, raw.sm_limit)?;
        if let Some(req) = sm_request
            && batch.is_none()
        {
            return Err(invalid(
                k("sm_request"),
                req,
                "needs batch: a configured quota is measured at a configured batch",
            ));
        }
        if let (None, Some(lim)) = (sm_request, sm_limit) {
            return Err(invalid(k("sm_limit"), lim, "needs sm_request"));
        }
        let min_instances = int_in(
            &k("min_instances"),
            raw.min_instances.unwrap_or(1),
            0,
            100_000,
        )?;
        let max_instances = int_in(
            &k("max_instances"),
            raw.max_instances
                .unwrap_or(i64::from(DEFAULT_MAX_INSTANCES)),
            1,
            100_000,
        )?;
        if min_instances > max_instances {
            return Err(invalid(
                k("min_instances"),
                min_instances,
                format!("must be ≤ max_instances ({max_instances})"),
            ));
        }
        let initial_instances = match raw.initial_instances {
            None => min_instances.max(1),
            Some(n) if n < i64::from(min_instances) || n > i64::from(max_instances) => {
                return Err(invalid(
                    k("initial_instances"),
                    n,
                    format!(
                        "must be within [min_instances, max_instances] ([{min_instances}, {max_instances}])"
                    ),
                ));
            }
            Some(n) => n as u32,
        };
        let memory_gb = self.memory(&k("memory_gb"), raw.memory_gb, cluster)?;
        let cold_start_s = raw
            .cold_start_s
            .map(|c| non_negative(&k("cold_start_s"), c))
            .transpose()?;
        let request_timeout_s = raw
            .request_timeout_s
            .map(|t| positive(&k("request_timeout_s"), t))
            .transpose()?;
        let interference = raw
            .interference
            .map(|x| up_to(&k("interference"), x, MAX_INTERFERENCE))
            .transpose()?
            .unwrap_or(0.0);
        let request_overhead_ms = match raw.request_overhead_ms {
            None => 0.0,
            Some(x) if x.is_finite() && x >= 0.0 && x < slo_ms => x,
            Some(x) => {
                return Err(invalid(
                    k("request_overhead_ms"),
                    x,
                    format!("must be ≥ 0 and below the function's slo_ms ({slo_ms})"),
                ));
            }
        };
        let service_cv = raw
            .service_cv
            .map(|x| up_to(&k("service_cv"), x, MAX_SERVICE_CV))
            .transpose()?
            .unwrap_or(0.0);
        let capacity_rps = raw
            .capacity_rps
            .map(|c| positive(&k("capacity_rps"), c))
            .transpose()?;
        if let Some(spread) = &raw.spread {
            if let SpreadDomain::Label(key) = &spread.across {
                return Err(invalid(
                    k("spread.across"),
                    format!("{key:?}"),
                    "the simulator's nodes have no labels: spread across node or device",
                ));
            }
            let rules = PlacementRules {
                spread: Some(spread.clone()),
                ..PlacementRules::default()
            };
            rules
                .validate()
                .map_err(|e| invalid(k(&e.field), e.value, e.rule))?;
        }
        let workload = self.workload(i, &raw.workload, seed, duration_s)?;
        Ok(FunctionSpec {
            name: raw.name,
            model: raw.model,
            profile,
            slo_ms,
            batch,
            sm_request,
            sm_limit,
            min_instances,
            max_instances,
            initial_instances,
            memory_gb,
            cold_start_s,
            request_timeout_s,
            interference,
            request_overhead_ms,
            service_cv,
            capacity_rps,
            spread: raw.spread,
            workload,
        })
    }

    /// Checks one training job.
    fn training(
        &self,
        i: usize,
        raw: RawTraining,
        cluster: &ClusterSpec,
        duration_s: f64,
    ) -> Result<TrainingSpec, ScenarioError> {
        let k = |field: &str| format!("training[{i}].{field}");
        let profile = self.profile(
            &k,
            &raw.model,
            raw.profile.as_deref(),
            &[("memory_gb", raw.memory_gb.is_some())],
        )?;
        if raw.gpus < 1 {
            return Err(invalid(k("gpus"), raw.gpus, "must be ≥ 1"));
        }
        if raw.gpus > i64::from(cluster.gpus_per_node) {
            return Err(invalid(
                k("gpus"),
                raw.gpus,
                format!(
                    "must be ≤ cluster.gpus_per_node ({})",
                    cluster.gpus_per_node
                ),
            ));
        }
        let memory_gb = self.memory(&k("memory_gb"), raw.memory_gb, cluster)?;
        let (sm_request, sm_limit) = share_pair(k, raw.sm_request, raw.sm_limit)?;
        let start_s = non_negative(&k("start_s"), raw.start_s)?;
        if start_s >= duration_s {
            return Err(invalid(
                k("start_s"),
                start_s,
                format!("must be < duration_s ({duration_s})"),
            ));
        }
        let run_s = raw
            .duration_s
            .map(|d| positive(&k("duration_s"), d))
            .transpose()?;
        Ok(TrainingSpec {
            name: raw.name,
            model: raw.model,
            profile,
            gpus: raw.gpus as u32,
            memory_gb,
            sm_request,
            sm_limit,
            start_s,
            duration_s: run_s,
        })
    }

    /// Checks function `i`'s `workload:` mapping, dispatching on `kind`, and loads or generates its data.
    fn workload(
        &self,
        i: usize,
        value: &Value,
        seed: u64,
        duration_s: f64,
    ) -> Result<Workload, ScenarioError> {
        let key = format!("functions[{i}].workload");
        let k = |field: &str| format!("{key}.{field}");
        let kinds = WORKLOAD_KINDS.join(", ");
        let Some(map) = value.as_mapping() else {
            return Err(invalid_key(
                &key,
                format!("must be a mapping with a `kind` ({kinds})"),
            ));
        };
        let mut rest = map.clone();
        let kind = match rest.remove("kind") {
            None => {
                return Err(invalid_key(
                    &key,
                    format!("missing field `kind` (one of {kinds})"),
                ));
            }
            Some(Value::String(kind)) if WORKLOAD_KINDS.contains(&kind.as_str()) => kind,
            Some(other) => {
                let shown = match &other {
                    Value::String(s) => format!("{s:?}"),
                    v => serde_yaml::to_string(v)
                        .map(|s| s.trim_end().to_owned())
                        .unwrap_or_default(),
                };
                return Err(invalid(
                    k("kind"),
                    shown,
                    format!("unknown workload kind; valid: {kinds}"),
                ));
            }
        };
        let rest = Value::Mapping(rest);
        match kind.as_str() {
            "poisson" => {
                let raw: RawPoisson = typed(&key, rest)?;
                Ok(Workload::Poisson {
                    rps: non_negative(&k("rps"), raw.rps)?,
                })
            }
            "gamma" => {
                let raw: RawGamma = typed(&key, rest)?;
                let rps = non_negative(&k("rps"), raw.rps)?;
                let cv = positive(&k("cv"), raw.cv)?;
                if cv > MAX_GAMMA_CV {
                    return Err(invalid(k("cv"), cv, "must be ≤ 100"));
                }
                Ok(Workload::Gamma { rps, cv })
            }
            "series" => {
                let raw: RawSeries = typed(&key, rest)?;
                let step_s = raw.step_s.unwrap_or(1.0);
                if !(step_s.is_finite() && step_s >= MIN_SERIES_STEP_S) {
                    return Err(invalid(k("step_s"), step_s, "must be ≥ 0.001 (1 ms)"));
                }
                let scale = non_negative(&k("scale"), raw.scale.unwrap_or(1.0))?;
                let offset_s = non_negative(&k("offset_s"), raw.offset_s.unwrap_or(0.0))?;
                let repeat = raw.repeat.unwrap_or(true);
                let (rates, source) = match (raw.file, raw.builtin) {
                    (Some(file), None) => {
                        let (path, text) = self.read_data(&k("file"), &file)?;
                        let rates =
                            parse_rate_series(&text).map_err(|source| ScenarioError::DataLine {
                                key: k("file"),
                                written: file.clone(),
                                path,
                                source: Box::new(source),
                            })?;
                        (rates, file)
                    }
                    (None, Some(builtin)) => {
                        let steps = ((offset_s + duration_s) / step_s).ceil();
                        let steps = (steps.max(1.0) as usize).min(MAX_BUILTIN_STEPS);
                        let rates = builtin.generate(builtin_series_seed(seed, i), steps);
                        (rates, format!("builtin:{}", builtin.as_str()))
                    }
                    _ => {
                        return Err(invalid_key(
                            &key,
                            "a series needs exactly one of `file` or `builtin`",
                        ));
                    }
                };
                Ok(Workload::Series {
                    rates,
                    step_s,
                    scale,
                    offset_s,
                    repeat,
                    source,
                })
            }
            _ => {
                let raw: RawTrace = typed(&key, rest)?;
                let TraceFormat::AzureLlm = raw.format.unwrap_or(TraceFormat::AzureLlm);
                let time_scale = positive(&k("time_scale"), raw.time_scale.unwrap_or(1.0))?;
                let start_s = non_negative(&k("start_s"), raw.start_s.unwrap_or(0.0))?;
                let (path, text) = self.read_data(&k("file"), &raw.file)?;
                let requests =
                    parse_azure_llm_trace(&text).map_err(|source| ScenarioError::DataLine {
                        key: k("file"),
                        written: raw.file.clone(),
                        path: path.clone(),
                        source: Box::new(source),
                    })?;
                let offsets_s = trace_offsets(&requests, time_scale, start_s, duration_s);
                if offsets_s.is_empty() {
                    let span = requests.last().map_or(0.0, |r| r.offset_s) / time_scale;
                    return Err(invalid(
                        k("file"),
                        format!("{:?}", raw.file),
                        format!(
                            "no arrivals in [0, duration_s) after time_scale and start_s \
                             (the scaled trace spans {span:.1} s; start_s is {start_s})"
                        ),
                    ));
                }
                Ok(Workload::Trace {
                    offsets_s,
                    source: raw.file,
                })
            }
        }
    }

    /// Checks `model` and loads the optional calibrated `profile:` table. Without a profile the model must be a
    /// known one; with one, `model` only names it (1–64 characters of `A–Z a–z 0–9 . _ -`), the table must be
    /// a complete (batch × SM%) grid in Dilu's CSV format, and every key in `needs` (the facts a built-in
    /// model would have supplied) must be given.
    fn profile(
        &self,
        k: &dyn Fn(&str) -> String,
        model: &str,
        written: Option<&str>,
        needs: &[(&str, bool)],
    ) -> Result<Option<ProfileTable>, ScenarioError> {
        let Some(written) = written else {
            self.model(&k("model"), model)?;
            return Ok(None);
        };
        check_name(&k("model"), model)?;
        for (field, given) in needs {
            if !given {
                return Err(invalid_key(
                    k(field),
                    format!(
                        "required with profile ({written:?}): a calibrated model has no built-in value"
                    ),
                ));
            }
        }
        let (path, text) = self.read_data(&k("profile"), written)?;
        let table = parse_dilu_csv_with(model, &text, DiluCsvOptions::for_model(model))
            .and_then(|t| PerfModel::from_table(&t).map(|_| t))
            .map_err(|e| {
                invalid(
                    k("profile"),
                    format!("{written:?}"),
                    format!("{}: {e}", path.display()),
                )
            })?;
        Ok(Some(table))
    }

    /// Reads a workload data file given as `written` (relative to the scenario's directory).
    fn read_data(&self, key: &str, written: &str) -> Result<(PathBuf, String), ScenarioError> {
        if written.trim().is_empty() {
            return Err(invalid(key, format!("{written:?}"), "must not be empty"));
        }
        let path = self.base_dir.join(written);
        match std::fs::read_to_string(&path) {
            Ok(text) => Ok((path, text)),
            Err(source) => Err(ScenarioError::DataRead {
                key: key.to_owned(),
                written: written.to_owned(),
                path,
                source,
            }),
        }
    }
}

/// Deserializes a workload mapping (without `kind`) into its typed form, errors keyed under `key`.
fn typed<T: for<'de> Deserialize<'de>>(key: &str, value: Value) -> Result<T, ScenarioError> {
    serde_path_to_error::deserialize(value).map_err(|e| syntax_error(key, e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ancestors_walk_up_the_path() {
        assert_eq!(
            ancestors("functions[1].sloms"),
            vec!["functions[1].sloms", "functions[1]", "functions"]
        );
        assert_eq!(ancestors(""), vec![""]);
    }

    #[test]
    fn join_key_handles_indices_and_empty_parts() {
        assert_eq!(join_key("a", "b"), "a.b");
        assert_eq!(join_key("a", "[0]"), "a[0]");
        assert_eq!(join_key("", "b"), "b");
        assert_eq!(join_key("a", ""), "a");
    }
}
