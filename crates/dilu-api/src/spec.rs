//! Function specs: what a user deploys (`dilu deploy -f spec.yaml`), parsed from YAML or JSON and checked
//! field by field, so a bad spec is refused with the field, the value and the rule before anything runs.
//!
//! ```yaml
//! name: ocr-cls
//! kind: inference                          # inference | llm-inference | training
//! runtime: onnx                            # what runs the function; defaults from the kind (onnx | trainer)
//! model: { path: /models/ch_ppocr_mobile_v2.0_cls_infer.onnx, input_shape: [1, 3, 48, 192] }
//! slo_ms: 200
//! quota: { request: 0.2, limit: 0.5 }      # omit to have the platform profile the function
//! scaling: { min_instances: 1, max_instances: 3 }
//! ```
//!
//! A function may also be any server process (`runtime: process`, [`crate::process`]).

use std::path::PathBuf;

use dilu_core::scaling::lazy::LazyConfig;
use dilu_core::scheduling::PlacementRules;
use dilu_core::{FieldError, InstanceKind};
use serde::{Deserialize, Serialize};

use crate::process::ProcessSpec;
use crate::quota::{Quota, de_size_required};

/// The model an inference function serves.
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelSpec {
    /// ONNX file on the node.
    pub path: PathBuf,
    /// First input's shape, batch first, when the model leaves dimensions open.
    #[serde(default)]
    pub input_shape: Option<Vec<usize>>,
    /// Largest batch the worker forms (the profiler may choose a smaller one).
    #[serde(default = "default_max_batch")]
    pub max_batch: u32,
    /// What computes the model: `tract` (built in) or `onnxruntime` (ONNX Runtime, loaded from the node).
    #[serde(default, skip_serializing_if = "ModelEngine::is_tract")]
    pub engine: ModelEngine,
}

/// The inference engine of the built-in worker.
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ModelEngine {
    /// tract, compiled into the worker (CPU).
    #[default]
    Tract,
    /// ONNX Runtime (`libonnxruntime`), with its CUDA execution provider when the library has it.
    Onnxruntime,
}

impl ModelEngine {
    /// The name used in specs and on the worker's command line (`--engine`).
    pub fn as_str(self) -> &'static str {
        match self {
            ModelEngine::Tract => "tract",
            ModelEngine::Onnxruntime => "onnxruntime",
        }
    }

    fn is_tract(&self) -> bool {
        *self == ModelEngine::Tract
    }
}

fn default_max_batch() -> u32 {
    8
}

/// The most elements `model.input_shape` may describe: 2^28, 1 GiB of FP32. Every datatype the worker serves
/// takes at least 4 bytes an element, so a larger tensor cannot arrive in one request under the largest
/// `gateway.max_body` (1 GiB); the worker would only fail allocating it at load. The worker's configuration
/// applies the same bound.
pub const MAX_INPUT_ELEMENTS: usize = 1 << 28;

/// The training loop a training function runs (the built-in MLP trainer).
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrainingSpec {
    /// Hidden width.
    #[serde(default)]
    pub hidden: Option<u32>,
    /// Hidden layers.
    #[serde(default)]
    pub layers: Option<u32>,
    /// Mini-batch size.
    #[serde(default)]
    pub batch: Option<u32>,
    /// Seed of the synthetic data and the initial weights.
    #[serde(default)]
    pub seed: Option<u64>,
}

/// Horizontal scaling bounds and the lazy scaler's settings.
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ScalingSpec {
    /// Fewest instances (0 lets the function scale to zero and cold-start on demand).
    pub min_instances: u32,
    /// Most instances.
    pub max_instances: u32,
    /// The lazy scaler's window and votes (`docs/algorithms.md` §6).
    pub lazy: LazyConfig,
    /// Requests per second one instance serves; measured at deploy when omitted.
    pub capacity_rps: Option<f64>,
}

impl Default for ScalingSpec {
    fn default() -> Self {
        Self {
            min_instances: 1,
            max_instances: 4,
            lazy: LazyConfig::default(),
            capacity_rps: None,
        }
    }
}

/// How the gateway treats the function's requests.
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct GatewaySpec {
    /// Requests that may wait for an instance; more get 429.
    pub queue: u32,
    /// Requests one instance gets at a time.
    pub max_outstanding_per_instance: u32,
    /// Whole-request deadline, milliseconds.
    pub timeout_ms: u64,
    /// How long a request waits for an instance to become ready, milliseconds.
    pub cold_start_timeout_ms: u64,
    /// Largest request body (`"64MiB"` or a number of bytes).
    #[serde(deserialize_with = "de_size_required")]
    #[cfg_attr(
        feature = "schema",
        schemars(schema_with = "crate::quota::size_schema")
    )]
    pub max_body: u64,
}

impl Default for GatewaySpec {
    fn default() -> Self {
        Self {
            queue: 256,
            max_outstanding_per_instance: 16,
            timeout_ms: 30_000,
            cold_start_timeout_ms: 60_000,
            max_body: 64 << 20,
        }
    }
}

/// What runs a function's instances. Every runtime serves the Open Inference Protocol v2 (inference) or
/// reports its progress on `/status` (training), so the gateway and the profiler treat them alike.
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum RuntimeName {
    /// The built-in worker: an ONNX model (`model:`) served with dynamic batching.
    Onnx,
    /// The built-in trainer (`training:`).
    Trainer,
    /// A server process the user names (`process:`).
    Process,
}

impl RuntimeName {
    /// The name used in specs.
    pub fn as_str(self) -> &'static str {
        match self {
            RuntimeName::Onnx => "onnx",
            RuntimeName::Trainer => "trainer",
            RuntimeName::Process => "process",
        }
    }
}

/// A function's runtime with its settings, resolved from the spec: what an instance runs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", tag = "runtime")]
pub enum Runtime {
    /// The built-in ONNX worker.
    Onnx {
        /// The model.
        model: ModelSpec,
    },
    /// The built-in trainer.
    Trainer {
        /// Its settings.
        training: TrainingSpec,
    },
    /// A server process.
    Process {
        /// Its settings.
        process: ProcessSpec,
    },
}

impl Runtime {
    /// Its name (`onnx`, `trainer`, `process`).
    pub fn name(&self) -> RuntimeName {
        match self {
            Runtime::Onnx { .. } => RuntimeName::Onnx,
            Runtime::Trainer { .. } => RuntimeName::Trainer,
            Runtime::Process { .. } => RuntimeName::Process,
        }
    }

    /// The classes of device its instances may run on, in order of preference: the control plane places an
    /// instance in the first class the cluster has. The built-in worker (either engine) and trainer charge
    /// CPU time to their channel, so they are placed on CPU devices even on a node with GPUs; a process
    /// prefers a GPU (`process.device` may insist on one class).
    pub fn device_classes(&self) -> &'static [dilu_core::ledger::DeviceClass] {
        use dilu_core::ledger::DeviceClass;
        match self {
            Runtime::Onnx { .. } | Runtime::Trainer { .. } => &[DeviceClass::Cpu],
            Runtime::Process { process } => process.device.classes(),
        }
    }

    /// The path that answers 2xx once an instance serves: the v2 readiness probe, the trainer's health, or a
    /// process's readiness path.
    pub fn readiness_path(&self, inference: bool) -> String {
        match self {
            Runtime::Onnx { .. } => "/v2/health/ready".into(),
            Runtime::Trainer { .. } => "/health".into(),
            Runtime::Process { process } => process.readiness_for(inference),
        }
    }

    /// The largest batch an instance forms (0 for training).
    pub fn max_batch(&self) -> u32 {
        match self {
            Runtime::Onnx { model } => model.max_batch,
            Runtime::Process { process } => process.max_batch,
            Runtime::Trainer { .. } => 0,
        }
    }
}

/// A function as deployed.
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FunctionSpec {
    /// Unique name: 1–48 characters of `[a-z0-9-]`, starting with a letter.
    pub name: String,
    /// Inference, LLM inference or training.
    #[serde(default = "default_kind")]
    pub kind: InstanceKind,
    /// What runs its instances (default: `onnx` for inference, `trainer` for training).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub runtime: Option<RuntimeName>,
    /// The model (inference only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model: Option<ModelSpec>,
    /// The training loop (training only; defaults when omitted).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub training: Option<TrainingSpec>,
    /// The server process (`runtime: process` only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub process: Option<ProcessSpec>,
    /// Latency objective per request, milliseconds (inference only; required).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub slo_ms: Option<f64>,
    /// The quota; profiled when omitted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub quota: Option<Quota>,
    /// Horizontal scaling.
    #[serde(default)]
    pub scaling: ScalingSpec,
    /// Gateway behaviour.
    #[serde(default)]
    pub gateway: GatewaySpec,
    /// Which nodes its instances may run on: a node selector, required node affinity and tolerations of node
    /// taints, as Kubernetes defines them (`docs/kubernetes.md`, "Node selectors, affinity and taints").
    #[serde(default, skip_serializing_if = "PlacementRules::is_empty")]
    pub scheduling: PlacementRules,
}

fn default_kind() -> InstanceKind {
    InstanceKind::Inference
}

impl FunctionSpec {
    /// The runtime's name: the spec's, or the default for its kind (`process` when a `process:` section is
    /// given).
    pub fn runtime_name(&self) -> RuntimeName {
        if self.runtime.is_none() && self.process.is_some() {
            return RuntimeName::Process;
        }
        self.runtime.unwrap_or(if self.kind.is_inference() {
            RuntimeName::Onnx
        } else {
            RuntimeName::Trainer
        })
    }

    /// The runtime with its settings. A validated spec always has the section its runtime needs; an
    /// unvalidated one without a model gets an empty model path (refused by the node).
    pub fn runtime(&self) -> Runtime {
        match self.runtime_name() {
            RuntimeName::Onnx => Runtime::Onnx {
                model: self.model.clone().unwrap_or(ModelSpec {
                    path: PathBuf::new(),
                    input_shape: None,
                    max_batch: default_max_batch(),
                    engine: ModelEngine::Tract,
                }),
            },
            RuntimeName::Trainer => Runtime::Trainer {
                training: self.training.clone().unwrap_or_default(),
            },
            RuntimeName::Process => Runtime::Process {
                process: self.process.clone().unwrap_or(ProcessSpec {
                    command: Vec::new(),
                    args: Vec::new(),
                    env: Default::default(),
                    workdir: None,
                    readiness: None,
                    protocol: None,
                    device: Default::default(),
                    max_batch: 1,
                    ready_timeout_s: None,
                    sample: None,
                    image: None,
                }),
            },
        }
    }

    /// What its instances run and where they may run, as a comparable string: instances whose key differs
    /// from their function's current one are left from an earlier generation and are replaced by a rolling
    /// update (so a changed node selector or toleration moves them, as a changed pod template does).
    pub fn template_key(&self) -> String {
        let mut key = vec![
            serde_json::json!(self.kind.as_str()),
            serde_json::json!(self.model),
            serde_json::json!(self.training),
        ];
        // Each written only when present, so the keys of functions from before them stay the same.
        if let Some(process) = &self.process {
            key.push(serde_json::json!(process));
        }
        if !self.scheduling.is_empty() {
            key.push(serde_json::json!({ "scheduling": self.scheduling }));
        }
        serde_json::Value::Array(key).to_string()
    }
}

/// The format of a spec document.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SpecFormat {
    /// JSON.
    Json,
    /// YAML (a superset of JSON, so also the fallback).
    Yaml,
}

impl SpecFormat {
    /// The format a `Content-Type` names: JSON for `application/json`, YAML otherwise.
    pub fn from_content_type(content_type: Option<&str>) -> Self {
        match content_type {
            Some(ct) if ct.trim_start().starts_with("application/json") => Self::Json,
            _ => Self::Yaml,
        }
    }
}

/// The `apiVersion` of a spec written as a Kubernetes object.
pub const MANIFEST_API_VERSION: &str = "dilu.io/v1alpha1";
/// The `kind` of a spec written as a Kubernetes object.
pub const MANIFEST_KIND: &str = "Function";

/// Parses a spec document and checks every rule that does not depend on the node ([`FunctionSpec::validate`]).
///
/// A spec is either the plain form (`name:` and the fields at the top) or the Kubernetes object that
/// `kubectl apply -f` takes (`apiVersion: dilu.io/v1alpha1`, `kind: Function`, `metadata.name`, the fields under
/// `spec:`), so one file serves `dilu deploy` and `kubectl apply`.
pub fn parse_spec(text: &str, format: SpecFormat) -> Result<FunctionSpec, FieldError> {
    if text.contains("apiVersion") {
        let document: serde_json::Value = match format {
            SpecFormat::Json => serde_json::from_str(text)
                .map_err(|e| FieldError::new("spec", "(as written)", e.to_string()))?,
            SpecFormat::Yaml => {
                check_yaml_nesting(text)?;
                serde_yaml::from_str(text)
                    .map_err(|e| FieldError::new("spec", "(as written)", e.to_string()))?
            }
        };
        if document.get("apiVersion").is_some() {
            return spec_of_manifest(document);
        }
    }
    let spec: FunctionSpec = match format {
        SpecFormat::Json => {
            let mut de = serde_json::Deserializer::from_str(text);
            serde_path_to_error::deserialize(&mut de)
                .map_err(|e| path_error(e.path(), e.inner()))?
        }
        SpecFormat::Yaml => {
            check_yaml_nesting(text)?;
            let de = serde_yaml::Deserializer::from_str(text);
            serde_path_to_error::deserialize(de).map_err(|e| path_error(e.path(), e.inner()))?
        }
    };
    spec.validate()?;
    Ok(spec)
}

/// How deep a spec may nest: a real one needs under 10 levels. YAML parsers spend time quadratic in the
/// depth (each token re-examines the open levels), so depth is bounded before the parser sees the text.
pub const MAX_SPEC_NESTING: usize = 32;

/// Most columns a YAML spec line may be indented (block nesting grows with indentation).
pub const MAX_SPEC_INDENT: usize = 256;

/// Refuses YAML nested deeper than [`MAX_SPEC_NESTING`] (flow brackets `[`/`{`, or compact block entries
/// `- - -` on one line) or indented past [`MAX_SPEC_INDENT`], in one linear pass over the text.
fn check_yaml_nesting(text: &str) -> Result<(), FieldError> {
    let refuse = |line: usize, what: String| {
        FieldError::new(
            "spec",
            format!("line {line}: {what}"),
            format!(
                "a spec nests at most {MAX_SPEC_NESTING} levels and indents at most {MAX_SPEC_INDENT} columns"
            ),
        )
    };
    let mut flow = 0usize;
    for (index, line) in text.lines().enumerate() {
        let number = index + 1;
        let body = line.trim_start_matches(' ');
        let indent = line.len() - body.len();
        if indent > MAX_SPEC_INDENT {
            return Err(refuse(number, format!("indented {indent} columns")));
        }
        // Compact nested block entries on one line: "- - - x", "? - x".
        let mut rest = body;
        let mut compact = 0usize;
        while let Some(next) = rest
            .strip_prefix("- ")
            .or_else(|| rest.strip_prefix("? "))
            .or_else(|| rest.strip_prefix("-\t"))
        {
            compact += 1;
            rest = next.trim_start_matches([' ', '\t']);
        }
        if compact > MAX_SPEC_NESTING {
            return Err(refuse(
                number,
                format!("{compact} nested entries on one line"),
            ));
        }
        let mut quote: Option<char> = None;
        let mut previous = ' ';
        for c in rest.chars() {
            match (quote, c) {
                (Some('\''), '\'') => quote = None,
                (Some('"'), '"') if previous != '\\' => quote = None,
                (Some(_), _) => {}
                (None, '\'' | '"') => quote = Some(c),
                (None, '#') if previous == ' ' || previous == '\t' => break,
                (None, '[' | '{') => {
                    flow += 1;
                    if flow > MAX_SPEC_NESTING {
                        return Err(refuse(
                            number,
                            format!("more than {MAX_SPEC_NESTING} open brackets"),
                        ));
                    }
                }
                (None, ']' | '}') => flow = flow.saturating_sub(1),
                (None, _) => {}
            }
            previous = c;
        }
    }
    Ok(())
}

/// The spec of a `Function` object: `metadata.name` and the fields under `spec`, checked like the plain form;
/// errors name the fields as written (`spec.slo_ms`).
pub fn spec_of_manifest(document: serde_json::Value) -> Result<FunctionSpec, FieldError> {
    let serde_json::Value::Object(mut top) = document else {
        return Err(FieldError::new("spec", "(as written)", "must be a mapping"));
    };
    let text = |v: Option<&serde_json::Value>| v.and_then(|v| v.as_str()).map(str::to_string);
    let api_version = text(top.get("apiVersion")).unwrap_or_default();
    if api_version != MANIFEST_API_VERSION {
        return Err(FieldError::new(
            "apiVersion",
            format!("{api_version:?}"),
            format!("must be {MANIFEST_API_VERSION}"),
        ));
    }
    let kind = text(top.get("kind")).unwrap_or_default();
    if kind != MANIFEST_KIND {
        return Err(FieldError::new(
            "kind",
            format!("{kind:?}"),
            format!("must be {MANIFEST_KIND}"),
        ));
    }
    let name = text(top.get("metadata").and_then(|m| m.get("name")))
        .ok_or_else(|| FieldError::new("metadata.name", "(missing)", "a Function needs a name"))?;
    let mut body = match top.remove("spec") {
        Some(serde_json::Value::Object(body)) => body,
        None => serde_json::Map::new(),
        Some(other) => {
            return Err(FieldError::new(
                "spec",
                other.to_string(),
                "must be a mapping",
            ));
        }
    };
    if body.contains_key("name") {
        return Err(FieldError::new(
            "spec.name",
            "(present)",
            "a Function's name is its metadata.name",
        ));
    }
    body.insert("name".into(), serde_json::Value::String(name));
    let spec: FunctionSpec = serde_path_to_error::deserialize(serde_json::Value::Object(body))
        .map_err(|e| {
            let e = path_error(e.path(), e.inner());
            if e.field == "spec" {
                e
            } else {
                e.within("spec")
            }
        })?;
    spec.validate().map_err(|e| {
        if e.field == "name" {
            FieldError::new("metadata.name", e.value, e.rule)
        } else {
            e.within("spec")
        }
    })?;
    Ok(spec)
}

fn path_error(path: &serde_path_to_error::Path, inner: &dyn std::fmt::Display) -> FieldError {
    let message = inner.to_string();
    let field = path.to_string();
    // serde reports unknown fields at the parent's path; name the field itself.
    if let Some(rest) = message.strip_prefix("unknown field `")
        && let Some((name, expected)) = rest.split_once('`')
    {
        let field = if field == "." || field.is_empty() {
            name.to_string()
        } else if field == name || field.ends_with(&format!(".{name}")) {
            field
        } else {
            format!("{field}.{name}")
        };
        return FieldError::new(
            field,
            name,
            format!("unknown field{}", expected.trim_start_matches(',')),
        );
    }
    let field = if field == "." { "spec".into() } else { field };
    FieldError::new(field, "(as written)", message)
}

impl FunctionSpec {
    /// Checks every rule that does not depend on the node: name, kind-specific sections, SLO, quota,
    /// scaling bounds and gateway limits. (Whether the model file exists is checked by the control plane.)
    pub fn validate(&self) -> Result<(), FieldError> {
        let name_ok = !self.name.is_empty()
            && self.name.len() <= 48
            && self.name.starts_with(|c: char| c.is_ascii_lowercase())
            && self
                .name
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-');
        if !name_ok {
            return Err(FieldError::new(
                "name",
                format!("{:?}", self.name),
                "must be 1-48 characters of [a-z0-9-] starting with a letter",
            ));
        }
        if self.kind == InstanceKind::Pod {
            return Err(FieldError::new(
                "kind",
                "pod",
                "must be inference, llm-inference or training",
            ));
        }
        let runtime = self.runtime_name();
        let runtime_fits = match runtime {
            RuntimeName::Onnx => self.kind.is_inference(),
            RuntimeName::Trainer => self.kind == InstanceKind::Training,
            RuntimeName::Process => true,
        };
        if !runtime_fits {
            return Err(FieldError::new(
                "runtime",
                runtime.as_str(),
                format!(
                    "a {} function runs on {} or process",
                    self.kind,
                    if self.kind.is_inference() {
                        "onnx"
                    } else {
                        "trainer"
                    }
                ),
            ));
        }
        self.validate_sections(runtime)?;
        if self.kind.is_inference() {
            self.validate_slo()?;
        } else if let Some(slo) = self.slo_ms {
            return Err(FieldError::new(
                "slo_ms",
                slo,
                "a training function has no latency objective",
            ));
        }
        if let Some(q) = &self.quota {
            q.validate("quota")?;
        }
        self.validate_scaling()?;
        self.validate_gateway()?;
        self.scheduling
            .validate()
            .map_err(|e| e.within("scheduling"))
    }

    fn validate_model(&self) -> Result<(), FieldError> {
        let model = self.model.as_ref().ok_or_else(|| {
            FieldError::new("model", "(missing)", "an inference function needs a model")
        })?;
        if model.path.as_os_str().is_empty() {
            return Err(FieldError::new(
                "model.path",
                "\"\"",
                "must name an ONNX file",
            ));
        }
        if !(1..=256).contains(&model.max_batch) {
            return Err(FieldError::new(
                "model.max_batch",
                model.max_batch,
                "must be in 1..=256",
            ));
        }
        if let Some(shape) = &model.input_shape
            && (shape.is_empty() || shape.contains(&0))
        {
            return Err(FieldError::new(
                "model.input_shape",
                format!("{shape:?}"),
                "must have at least one dimension (the batch), none of them 0",
            ));
        }
        if let Some(shape) = &model.input_shape
            && shape
                .iter()
                .try_fold(1usize, |n, &d| n.checked_mul(d))
                .is_none_or(|n| n > MAX_INPUT_ELEMENTS)
        {
            return Err(FieldError::new(
                "model.input_shape",
                format!("{shape:?}"),
                format!(
                    "must hold at most {MAX_INPUT_ELEMENTS} (2^28) elements, 1 GiB of FP32: the largest request \
                     body gateway.max_body allows"
                ),
            ));
        }
        Ok(())
    }

    fn validate_slo(&self) -> Result<(), FieldError> {
        match self.slo_ms {
            None => Err(FieldError::new(
                "slo_ms",
                "(missing)",
                "an inference function needs a latency objective in milliseconds",
            )),
            Some(slo) if !(slo.is_finite() && slo > 0.0 && slo <= 3_600_000.0) => {
                Err(FieldError::new(
                    "slo_ms",
                    slo,
                    "must be a number of milliseconds in (0, 3600000]",
                ))
            }
            Some(_) => Ok(()),
        }
    }

    /// The runtime's own section is present and valid; no other runtime's section is.
    fn validate_sections(&self, runtime: RuntimeName) -> Result<(), FieldError> {
        let sections = [
            ("model", self.model.is_some(), RuntimeName::Onnx),
            ("training", self.training.is_some(), RuntimeName::Trainer),
            ("process", self.process.is_some(), RuntimeName::Process),
        ];
        for (field, present, owner) in sections {
            if present && owner != runtime {
                return Err(FieldError::new(
                    field,
                    "(present)",
                    format!(
                        "runtime {} takes no {field} section (it belongs to runtime {})",
                        runtime.as_str(),
                        owner.as_str()
                    ),
                ));
            }
        }
        match runtime {
            RuntimeName::Onnx => self.validate_model(),
            RuntimeName::Trainer => self.validate_training(),
            RuntimeName::Process => self
                .process
                .as_ref()
                .ok_or_else(|| {
                    FieldError::new(
                        "process",
                        "(missing)",
                        "runtime process needs a process section (command, …)",
                    )
                })?
                .validate(self.kind.is_inference()),
        }
    }

    fn validate_training(&self) -> Result<(), FieldError> {
        if let Some(t) = &self.training {
            for (field, value, max) in [
                ("training.hidden", t.hidden, 8192),
                ("training.layers", t.layers, 16),
                ("training.batch", t.batch, 65_536),
            ] {
                if let Some(v) = value
                    && !(1..=max).contains(&v)
                {
                    return Err(FieldError::new(field, v, format!("must be in 1..={max}")));
                }
            }
        }
        Ok(())
    }

    fn validate_scaling(&self) -> Result<(), FieldError> {
        let s = &self.scaling;
        if s.max_instances == 0 || s.max_instances > 64 {
            return Err(FieldError::new(
                "scaling.max_instances",
                s.max_instances,
                "must be in 1..=64",
            ));
        }
        if s.min_instances > s.max_instances {
            return Err(FieldError::new(
                "scaling.min_instances",
                s.min_instances,
                format!(
                    "must not exceed scaling.max_instances ({})",
                    s.max_instances
                ),
            ));
        }
        if self.kind == InstanceKind::Training && s.min_instances == 0 {
            return Err(FieldError::new(
                "scaling.min_instances",
                0,
                "a training job runs at least one instance",
            ));
        }
        s.lazy.validate().map_err(|e| e.within("scaling"))?;
        if let Some(c) = s.capacity_rps
            && !(c.is_finite() && c > 0.0)
        {
            return Err(FieldError::new(
                "scaling.capacity_rps",
                c,
                "must be a positive number of requests per second",
            ));
        }
        Ok(())
    }

    fn validate_gateway(&self) -> Result<(), FieldError> {
        let g = &self.gateway;
        if !(1..=1_000_000).contains(&g.queue) {
            return Err(FieldError::new(
                "gateway.queue",
                g.queue,
                "must be in 1..=1000000",
            ));
        }
        if !(1..=4096).contains(&g.max_outstanding_per_instance) {
            return Err(FieldError::new(
                "gateway.max_outstanding_per_instance",
                g.max_outstanding_per_instance,
                "must be in 1..=4096",
            ));
        }
        for (field, ms) in [
            ("gateway.timeout_ms", g.timeout_ms),
            ("gateway.cold_start_timeout_ms", g.cold_start_timeout_ms),
        ] {
            if !(1..=3_600_000).contains(&ms) {
                return Err(FieldError::new(
                    field,
                    ms,
                    "must be in 1..=3600000 milliseconds",
                ));
            }
        }
        if !(1024..=(1 << 30)).contains(&g.max_body) {
            return Err(FieldError::new(
                "gateway.max_body",
                g.max_body,
                "must be between 1KiB and 1GiB",
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const OK: &str = "name: ocr\nmodel: {path: /m.onnx}\nslo_ms: 100\n";

    fn err(text: &str) -> FieldError {
        parse_spec(text, SpecFormat::Yaml).unwrap_err()
    }

    #[test]
    fn a_minimal_spec_gets_defaults() {
        let spec = parse_spec(OK, SpecFormat::Yaml).unwrap();
        assert_eq!(spec.kind, InstanceKind::Inference);
        assert_eq!(spec.scaling.min_instances, 1);
        assert_eq!(spec.scaling.lazy.window, 40);
        assert_eq!(spec.gateway.max_body, 64 << 20);
        assert_eq!(spec.model.unwrap().max_batch, 8);
        let json =
            r#"{"name":"t","kind":"training","quota":{"request":0.2,"limit":1.0,"memory":"1GiB"}}"#;
        let spec = parse_spec(json, SpecFormat::Json).unwrap();
        assert_eq!(spec.quota.unwrap().memory, Some(1 << 30));
    }

    #[test]
    fn deep_nesting_is_refused_before_the_yaml_parser_sees_it() {
        // 100,000 levels in 200 KB once took 18 s to refuse (the parser is quadratic in depth).
        let flow = format!(
            "name: x\nmodel: {}{}\n",
            "[".repeat(100_000),
            "]".repeat(100_000)
        );
        let e = err(&flow);
        assert_eq!(e.field, "spec");
        assert!(
            e.value.starts_with("line 2: more than 32 open brackets"),
            "{e}"
        );
        assert!(e.rule.contains("at most 32 levels"), "{e}");
        let compact = format!("name: x\nmodel:\n{}x\n", "- ".repeat(100_000));
        let e = err(&compact);
        assert!(e.value.contains("nested entries on one line"), "{e}");
        let indented = format!("name: x\nmodel:\n{}path: /m\n", " ".repeat(300));
        assert!(err(&indented).value.contains("indented 300 columns"));
        // Brackets inside quotes and comments do not count; a spec at the limit parses.
        let quoted = format!(
            "name: ocr\nmodel: {{path: \"/m{}.onnx\"}} # {}\nslo_ms: 100\n",
            "[".repeat(100),
            "{".repeat(100)
        );
        let spec = parse_spec(&quoted, SpecFormat::Yaml).unwrap();
        assert!(
            spec.model
                .unwrap()
                .path
                .to_string_lossy()
                .ends_with("[[.onnx")
        );
    }

    #[test]
    fn unknown_fields_are_named_with_their_path() {
        let e = err(&format!("{OK}gpus: 2\n"));
        assert_eq!(e.field, "gpus");
        assert!(e.rule.starts_with("unknown field"), "{e}");
        let e = err("name: ocr\nmodel: {path: /m.onnx, batch: 4}\nslo_ms: 100\n");
        assert_eq!(e.field, "model.batch");
    }

    #[test]
    fn quota_rules() {
        let e = err(&format!("{OK}quota: {{request: 0.6, limit: 0.3}}\n"));
        assert_eq!(
            (e.field.as_str(), e.value.as_str()),
            ("quota.request", "0.6")
        );
        assert!(e.rule.contains("must not exceed quota.limit"));
        let e = err(&format!(
            "{OK}quota: {{request: 0.2, limit: 0.3, memory: -1}}\n"
        ));
        assert_eq!(e.field, "quota.memory");
        assert!(e.rule.contains("negative"), "{e}");
        let e = err(&format!(
            "{OK}quota: {{request: 0.2, limit: 0.3, memory: \"-1GiB\"}}\n"
        ));
        assert!(e.rule.contains("negative"), "{e}");
        let e = err(&format!("{OK}quota: {{request: 0, limit: 0.3}}\n"));
        assert_eq!(e.field, "quota.request");
    }

    #[test]
    fn slo_and_kind_rules() {
        let e = err("name: ocr\nmodel: {path: /m.onnx}\nslo_ms: 0\n");
        assert_eq!((e.field.as_str(), e.value.as_str()), ("slo_ms", "0"));
        let e = err("name: ocr\nmodel: {path: /m.onnx}\n");
        assert_eq!(e.field, "slo_ms");
        let e = err("name: t\nkind: training\nslo_ms: 5\n");
        assert_eq!(e.field, "slo_ms");
        let e = err("name: Bad_Name\nmodel: {path: /m.onnx}\nslo_ms: 1\n");
        assert_eq!(e.field, "name");
        let e = err("name: t\nkind: training\nscaling: {min_instances: 0}\n");
        assert_eq!(e.field, "scaling.min_instances");
        let e = err(&format!(
            "{OK}scaling: {{min_instances: 3, max_instances: 2}}\n"
        ));
        assert_eq!(e.field, "scaling.min_instances");
        let e = err(&format!(
            "{OK}scaling: {{lazy: {{window: 4, out_votes: 5}}}}\n"
        ));
        assert_eq!(e.field, "scaling.lazy.out_votes");
        let e = err(&format!("{OK}gateway: {{max_body: 12}}\n"));
        assert_eq!(e.field, "gateway.max_body");
    }

    #[test]
    fn scheduling_takes_kubernetes_node_rules_and_names_a_bad_field() {
        let spec = parse_spec(
            &format!(
                "{OK}scheduling:\n  node_selector: {{nvidia.com/gpu.product: NVIDIA-H100-80GB-HBM3}}\n  \
                 tolerations: [{{key: nvidia.com/gpu, operator: Exists, effect: NoSchedule}}]\n  \
                 node_affinity:\n    - match_expressions: [{{key: zone, operator: In, values: [a, b]}}]\n"
            ),
            SpecFormat::Yaml,
        )
        .unwrap();
        assert_eq!(spec.scheduling.node_selector.len(), 1);
        assert_eq!(spec.scheduling.tolerations[0].key, "nvidia.com/gpu");
        assert_eq!(
            spec.scheduling.node_affinity[0].match_expressions[0].values,
            ["a", "b"]
        );
        // Written back, it reads the same; an empty section is left out.
        let text = serde_json::to_string(&spec).unwrap();
        assert_eq!(parse_spec(&text, SpecFormat::Json).unwrap(), spec);
        let plain = parse_spec(OK, SpecFormat::Yaml).unwrap();
        assert!(
            !serde_json::to_string(&plain)
                .unwrap()
                .contains("scheduling")
        );
        let e = err(&format!(
            "{OK}scheduling: {{node_affinity: [{{match_expressions: [{{key: gpus, operator: Gt, values: [a]}}]}}]}}\n"
        ));
        assert_eq!(
            e.field,
            "scheduling.node_affinity[0].match_expressions[0].values"
        );
        assert!(e.rule.contains("one integer"), "{e}");
        let e = err(&format!(
            "{OK}scheduling: {{tolerations: [{{value: x}}]}}\n"
        ));
        assert_eq!(e.field, "scheduling.tolerations[0].operator");
        let e = err(&format!(
            "{OK}scheduling: {{tolerations: [{{key: a, effect: Sometimes}}]}}\n"
        ));
        assert!(e.field.starts_with("scheduling.tolerations"), "{e}");
    }

    /// Issue 14, defect 8: `input_shape` had no upper bound, so a worker died allocating 400 GB at load.
    #[test]
    fn input_shape_is_bounded() {
        let e = err(
            "name: ocr\nmodel: {path: /m.onnx, input_shape: [1, 100000, 100000, 10]}\nslo_ms: 1\n",
        );
        assert_eq!(
            (e.field.as_str(), e.value.as_str()),
            ("model.input_shape", "[1, 100000, 100000, 10]")
        );
        assert!(e.rule.contains("268435456"), "{e}");
        // Overflowing usize is the same refusal, not a wrap-around.
        let e = err(&format!(
            "name: ocr\nmodel: {{path: /m.onnx, input_shape: [{0}, {0}, {0}]}}\nslo_ms: 1\n",
            u64::MAX / 2
        ));
        assert_eq!(e.field, "model.input_shape");
        // The bound itself is accepted: 1 GiB of FP32.
        let spec = "name: ocr\nmodel: {path: /m.onnx, input_shape: [1, 16384, 16384]}\nslo_ms: 1\n";
        assert!(parse_spec(spec, SpecFormat::Yaml).is_ok());
    }
}

#[cfg(test)]
mod manifest_tests {
    use super::*;

    const PLAIN: &str =
        "name: ocr\nkind: inference\nmodel: {path: /m.onnx, max_batch: 4}\nslo_ms: 100\n";
    const OBJECT: &str = "apiVersion: dilu.io/v1alpha1\nkind: Function\nmetadata: {name: ocr}\nspec:\n  kind: inference\n  model: {path: /m.onnx, max_batch: 4}\n  slo_ms: 100\n";

    #[test]
    fn a_function_object_reads_as_the_plain_spec() {
        let plain = parse_spec(PLAIN, SpecFormat::Yaml).unwrap();
        assert_eq!(parse_spec(OBJECT, SpecFormat::Yaml).unwrap(), plain);
        let json =
            serde_json::to_string(&serde_yaml::from_str::<serde_json::Value>(OBJECT).unwrap())
                .unwrap();
        assert_eq!(parse_spec(&json, SpecFormat::Json).unwrap(), plain);
    }

    #[test]
    fn a_bad_function_object_names_its_field() {
        let cases = [
            (
                OBJECT.replace("dilu.io/v1alpha1", "dilu.io/v2"),
                "apiVersion",
            ),
            (OBJECT.replace("kind: Function", "kind: Pod"), "kind"),
            (
                OBJECT.replace("metadata: {name: ocr}", "metadata: {}"),
                "metadata.name",
            ),
            (
                OBJECT.replace("metadata: {name: ocr}", "metadata: {name: Ocr}"),
                "metadata.name",
            ),
            (OBJECT.replace("slo_ms: 100", "slo_ms: -1"), "spec.slo_ms"),
            (
                OBJECT.replace("slo_ms: 100", "slo_ms: 100\n  colour: red"),
                "spec.colour",
            ),
            (
                OBJECT.replace("slo_ms: 100", "slo_ms: 100\n  name: ocr"),
                "spec.name",
            ),
            (
                OBJECT.replace("max_batch: 4", "max_batch: many"),
                "spec.model.max_batch",
            ),
        ];
        for (text, field) in cases {
            let err = parse_spec(&text, SpecFormat::Yaml).unwrap_err();
            assert_eq!(err.field, field, "{text}: {err}");
        }
    }
}
