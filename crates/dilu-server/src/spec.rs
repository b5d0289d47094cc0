//! Function specs: what a user deploys (`dilu deploy -f spec.yaml`), parsed from YAML or JSON and checked
//! field by field, so a bad spec is refused with the field, the value and the rule before anything runs.
//!
//! ```yaml
//! name: ocr-cls
//! kind: inference
//! model: { path: /models/ch_ppocr_mobile_v2.0_cls_infer.onnx, input_shape: [1, 3, 48, 192] }
//! slo_ms: 200
//! quota: { request: 0.2, limit: 0.5 }      # omit to have the platform profile the function
//! scaling: { min_instances: 1, max_instances: 3 }
//! ```

use std::path::PathBuf;

use dilu_core::scaling::lazy::LazyConfig;
use dilu_core::units::parse_bytes;
use serde::{Deserialize, Deserializer, Serialize};

/// A spec that breaks a rule: the field (as a path), its value and the rule. Rendered as the API's 400 body.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error, Serialize)]
#[error("{field} = {value}: {rule}")]
pub struct SpecError {
    /// The offending field, as a path (`quota.request`).
    pub field: String,
    /// Its value, as written.
    pub value: String,
    /// The rule it breaks.
    pub rule: String,
}

impl SpecError {
    /// Builds an error.
    pub fn new(field: impl Into<String>, value: impl ToString, rule: impl Into<String>) -> Self {
        Self {
            field: field.into(),
            value: value.to_string(),
            rule: rule.into(),
        }
    }
}

/// What a function does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum FunctionKind {
    /// Latency-critical inference over the v2 protocol.
    Inference,
    /// An elastic training job.
    Training,
}

impl FunctionKind {
    /// The name used in specs and listings.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Inference => "inference",
            Self::Training => "training",
        }
    }
}

/// The model an inference function serves.
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
}

fn default_max_batch() -> u32 {
    8
}

/// The training loop a training function runs (the built-in MLP trainer).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
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

/// A quota given by the user: guaranteed share, burst limit (fractions of a device) and a memory cap.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct QuotaSpec {
    /// Guaranteed share of the device, (0, 1].
    pub request: f64,
    /// Most the instance may use, [request, 1].
    pub limit: f64,
    /// Memory cap in bytes (`"1GiB"` or a number); none = no cap.
    #[serde(
        default,
        deserialize_with = "de_size",
        skip_serializing_if = "Option::is_none"
    )]
    pub memory: Option<u64>,
}

/// Horizontal scaling bounds and the lazy scaler's settings.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ScalingSpec {
    /// Fewest instances (0 lets the function scale to zero and cold-start on demand).
    pub min_instances: u32,
    /// Most instances.
    pub max_instances: u32,
    /// The lazy scaler's window and votes (`docs/dilu.md` §6).
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

/// A function as deployed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FunctionSpec {
    /// Unique name: 1–48 characters of `[a-z0-9-]`, starting with a letter.
    pub name: String,
    /// Inference or training.
    #[serde(default = "default_kind")]
    pub kind: FunctionKind,
    /// The model (inference only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model: Option<ModelSpec>,
    /// The training loop (training only; defaults when omitted).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub training: Option<TrainingSpec>,
    /// Latency objective per request, milliseconds (inference only; required).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub slo_ms: Option<f64>,
    /// The quota; profiled when omitted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub quota: Option<QuotaSpec>,
    /// Horizontal scaling.
    #[serde(default)]
    pub scaling: ScalingSpec,
    /// Gateway behaviour.
    #[serde(default)]
    pub gateway: GatewaySpec,
}

fn default_kind() -> FunctionKind {
    FunctionKind::Inference
}

/// A size written as `"1GiB"`, `"512MB"` or a plain number of bytes; negative numbers are refused.
#[derive(Deserialize)]
#[serde(untagged)]
enum SizeText {
    Number(i64),
    Float(f64),
    Text(String),
}

fn size_of(text: SizeText) -> Result<u64, String> {
    match text {
        SizeText::Number(n) if n < 0 => Err(format!("{n}: a size must not be negative")),
        SizeText::Number(n) => Ok(n as u64),
        SizeText::Float(f) if f < 0.0 => Err(format!("{f}: a size must not be negative")),
        SizeText::Float(f) => Err(format!(
            "{f}: a size is a whole number of bytes or e.g. \"1GiB\""
        )),
        SizeText::Text(t) if t.trim_start().starts_with('-') => {
            Err(format!("{t:?}: a size must not be negative"))
        }
        SizeText::Text(t) => parse_bytes(&t).map_err(|e| e.to_string()),
    }
}

fn de_size<'de, D: Deserializer<'de>>(d: D) -> Result<Option<u64>, D::Error> {
    let text = Option::<SizeText>::deserialize(d)?;
    text.map(size_of)
        .transpose()
        .map_err(serde::de::Error::custom)
}

fn de_size_required<'de, D: Deserializer<'de>>(d: D) -> Result<u64, D::Error> {
    size_of(SizeText::deserialize(d)?).map_err(serde::de::Error::custom)
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

/// Parses a spec document and checks every rule that does not depend on the node ([`FunctionSpec::validate`]).
pub fn parse_spec(text: &str, format: SpecFormat) -> Result<FunctionSpec, SpecError> {
    let spec: FunctionSpec = match format {
        SpecFormat::Json => {
            let mut de = serde_json::Deserializer::from_str(text);
            serde_path_to_error::deserialize(&mut de)
                .map_err(|e| path_error(e.path(), e.inner()))?
        }
        SpecFormat::Yaml => {
            let de = serde_yaml::Deserializer::from_str(text);
            serde_path_to_error::deserialize(de).map_err(|e| path_error(e.path(), e.inner()))?
        }
    };
    spec.validate()?;
    Ok(spec)
}

fn path_error(path: &serde_path_to_error::Path, inner: &dyn std::fmt::Display) -> SpecError {
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
        return SpecError::new(
            field,
            name,
            format!("unknown field{}", expected.trim_start_matches(',')),
        );
    }
    let field = if field == "." { "spec".into() } else { field };
    SpecError::new(field, "(as written)", message)
}

fn share(field: &str, value: f64) -> Result<(), SpecError> {
    if value.is_finite() && value > 0.0 && value <= 1.0 {
        Ok(())
    } else {
        Err(SpecError::new(
            field,
            value,
            "must be a fraction of a device in (0, 1]",
        ))
    }
}

impl FunctionSpec {
    /// Checks every rule that does not depend on the node: name, kind-specific sections, SLO, quota,
    /// scaling bounds and gateway limits. (Whether the model file exists is checked by the control plane.)
    pub fn validate(&self) -> Result<(), SpecError> {
        let name_ok = !self.name.is_empty()
            && self.name.len() <= 48
            && self.name.starts_with(|c: char| c.is_ascii_lowercase())
            && self
                .name
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-');
        if !name_ok {
            return Err(SpecError::new(
                "name",
                format!("{:?}", self.name),
                "must be 1-48 characters of [a-z0-9-] starting with a letter",
            ));
        }
        match self.kind {
            FunctionKind::Inference => self.validate_inference()?,
            FunctionKind::Training => self.validate_training()?,
        }
        if let Some(q) = &self.quota {
            share("quota.request", q.request)?;
            share("quota.limit", q.limit)?;
            if q.request > q.limit {
                return Err(SpecError::new(
                    "quota.request",
                    q.request,
                    format!("must not exceed quota.limit ({})", q.limit),
                ));
            }
            if q.memory == Some(0) {
                return Err(SpecError::new(
                    "quota.memory",
                    0,
                    "must be positive (omit it for no cap)",
                ));
            }
        }
        self.validate_scaling()?;
        self.validate_gateway()
    }

    fn validate_inference(&self) -> Result<(), SpecError> {
        let model = self.model.as_ref().ok_or_else(|| {
            SpecError::new("model", "(missing)", "an inference function needs a model")
        })?;
        if model.path.as_os_str().is_empty() {
            return Err(SpecError::new(
                "model.path",
                "\"\"",
                "must name an ONNX file",
            ));
        }
        if !(1..=256).contains(&model.max_batch) {
            return Err(SpecError::new(
                "model.max_batch",
                model.max_batch,
                "must be in 1..=256",
            ));
        }
        if let Some(shape) = &model.input_shape
            && (shape.is_empty() || shape.contains(&0))
        {
            return Err(SpecError::new(
                "model.input_shape",
                format!("{shape:?}"),
                "must have at least one dimension (the batch), none of them 0",
            ));
        }
        if self.training.is_some() {
            return Err(SpecError::new(
                "training",
                "(present)",
                "only a training function has a training section",
            ));
        }
        match self.slo_ms {
            None => Err(SpecError::new(
                "slo_ms",
                "(missing)",
                "an inference function needs a latency objective in milliseconds",
            )),
            Some(slo) if !(slo.is_finite() && slo > 0.0 && slo <= 3_600_000.0) => {
                Err(SpecError::new(
                    "slo_ms",
                    slo,
                    "must be a number of milliseconds in (0, 3600000]",
                ))
            }
            Some(_) => Ok(()),
        }
    }

    fn validate_training(&self) -> Result<(), SpecError> {
        if self.model.is_some() {
            return Err(SpecError::new(
                "model",
                "(present)",
                "a training function runs the built-in trainer; it takes a training section, not a model",
            ));
        }
        if let Some(slo) = self.slo_ms {
            return Err(SpecError::new(
                "slo_ms",
                slo,
                "a training function has no latency objective",
            ));
        }
        if let Some(t) = &self.training {
            for (field, value, max) in [
                ("training.hidden", t.hidden, 8192),
                ("training.layers", t.layers, 16),
                ("training.batch", t.batch, 65_536),
            ] {
                if let Some(v) = value
                    && !(1..=max).contains(&v)
                {
                    return Err(SpecError::new(field, v, format!("must be in 1..={max}")));
                }
            }
        }
        Ok(())
    }

    fn validate_scaling(&self) -> Result<(), SpecError> {
        let s = &self.scaling;
        if s.max_instances == 0 || s.max_instances > 64 {
            return Err(SpecError::new(
                "scaling.max_instances",
                s.max_instances,
                "must be in 1..=64",
            ));
        }
        if s.min_instances > s.max_instances {
            return Err(SpecError::new(
                "scaling.min_instances",
                s.min_instances,
                format!(
                    "must not exceed scaling.max_instances ({})",
                    s.max_instances
                ),
            ));
        }
        if self.kind == FunctionKind::Training && s.min_instances == 0 {
            return Err(SpecError::new(
                "scaling.min_instances",
                0,
                "a training job runs at least one instance",
            ));
        }
        if let Err(e) = s.lazy.validate() {
            return Err(SpecError::new(
                format!("scaling.lazy.{}", e.field),
                e.value,
                e.rule,
            ));
        }
        if let Some(c) = s.capacity_rps
            && !(c.is_finite() && c > 0.0)
        {
            return Err(SpecError::new(
                "scaling.capacity_rps",
                c,
                "must be a positive number of requests per second",
            ));
        }
        Ok(())
    }

    fn validate_gateway(&self) -> Result<(), SpecError> {
        let g = &self.gateway;
        if !(1..=1_000_000).contains(&g.queue) {
            return Err(SpecError::new(
                "gateway.queue",
                g.queue,
                "must be in 1..=1000000",
            ));
        }
        if !(1..=4096).contains(&g.max_outstanding_per_instance) {
            return Err(SpecError::new(
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
                return Err(SpecError::new(
                    field,
                    ms,
                    "must be in 1..=3600000 milliseconds",
                ));
            }
        }
        if !(1024..=(1 << 30)).contains(&g.max_body) {
            return Err(SpecError::new(
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

    fn err(text: &str) -> SpecError {
        parse_spec(text, SpecFormat::Yaml).unwrap_err()
    }

    #[test]
    fn a_minimal_spec_gets_defaults() {
        let spec = parse_spec(OK, SpecFormat::Yaml).unwrap();
        assert_eq!(spec.kind, FunctionKind::Inference);
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
}
