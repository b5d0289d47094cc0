//! What a worker serves and how it batches.

use std::path::PathBuf;
use std::time::Duration;

use dilu_core::batching::BatchingConfig;
use serde::{Deserialize, Serialize};

use crate::engine::{Engine, ORT_DYLIB_PATH_ENV};
use crate::error::WorkerError;

/// The default request body limit: 64 MiB.
pub const DEFAULT_MAX_BODY_BYTES: usize = 64 << 20;

/// The environment variable that gives a worker its requests' latency SLO in milliseconds when `slo_ms` is unset.
pub const SLO_MS_ENV: &str = "DILU_SLO_MS";

/// The most elements `input_shape` may describe: 2^28, 1 GiB of FP32. Every datatype the worker serves takes at
/// least 4 bytes an element, so a larger tensor cannot arrive in one request under the largest body a function
/// may accept (the spec's `gateway.max_body`, at most 1 GiB); the worker would only fail allocating it at load.
/// The spec (`dilu_api::spec`) applies the same bound.
pub const MAX_INPUT_ELEMENTS: usize = 1 << 28;

/// A worker's settings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct WorkerConfig {
    /// The name clients use in `/v2/models/{name}`.
    pub model_name: String,
    /// The model version reported in metadata and responses (`/v2/models/{name}/versions/{version}` too).
    pub model_version: String,
    /// The ONNX model file.
    pub model_path: PathBuf,
    /// The first input's shape, batch dimension first, when the model leaves dimensions open (or to override
    /// the shape it declares).
    pub input_shape: Option<Vec<usize>>,
    /// Try to serve the model with a symbolic batch dimension so that requests can be concatenated into one
    /// run; when the model does not support it (or this is false) requests of a batch run one by one.
    pub dynamic_batch: bool,
    /// Whether a batch of a batchable model runs as one concatenated run (`true`) or its requests one by one
    /// (`false`); `None` (the default) measures at load which is faster. On the CPU one by one often is.
    pub concat_batches: Option<bool>,
    /// A batch closes once it holds this many requests.
    pub max_batch: usize,
    /// When set, every batch waits this long for its first request instead of the adaptive rule
    /// (microseconds). Meant for tests and benchmarks.
    pub fixed_wait_us: Option<u64>,
    /// The adaptive wait's constants (`wait = ē / wait_divisor` when requests come faster than batches finish).
    pub batching: BatchingConfig,
    /// Requests with a larger body are refused with 413.
    pub max_body_bytes: usize,
    /// The CPU quota channel; `None` reads `DILU_QUOTA_FILE` (and runs unthrottled when that is unset).
    pub quota_file: Option<PathBuf>,
    /// The latency SLO of the function's requests, milliseconds, published on the quota channel for the token
    /// manager's queue-aware controller; `None` reads `DILU_SLO_MS` (and publishes none when that is unset).
    pub slo_ms: Option<f64>,
    /// The engine that runs the model (`tract`, the default, or `onnxruntime`).
    pub engine: Engine,
    /// The ONNX Runtime library (`libonnxruntime.so.*`) for [`Engine::OnnxRuntime`]; `None` reads
    /// `ORT_DYLIB_PATH` ([`WorkerConfig::onnxruntime_library`]).
    pub onnxruntime_lib: Option<PathBuf>,
}

impl Default for WorkerConfig {
    fn default() -> Self {
        Self {
            model_name: String::new(),
            model_version: "1".into(),
            model_path: PathBuf::new(),
            input_shape: None,
            dynamic_batch: true,
            concat_batches: None,
            max_batch: 8,
            fixed_wait_us: None,
            batching: BatchingConfig::default(),
            max_body_bytes: DEFAULT_MAX_BODY_BYTES,
            quota_file: None,
            slo_ms: None,
            engine: Engine::Tract,
            onnxruntime_lib: None,
        }
    }
}

impl WorkerConfig {
    /// A configuration with the defaults for the model at `model_path`, served as `model_name`.
    pub fn new(model_name: impl Into<String>, model_path: impl Into<PathBuf>) -> Self {
        Self {
            model_name: model_name.into(),
            model_path: model_path.into(),
            ..Self::default()
        }
    }

    /// The SLO to publish on the quota channel: `slo_ms`, else `DILU_SLO_MS` when it holds a positive number
    /// of milliseconds (anything else there is ignored: the SLO is advice to the token manager, not a setting a
    /// worker may refuse to start over).
    pub fn slo(&self) -> Option<Duration> {
        let ms = self.slo_ms.or_else(|| {
            std::env::var(SLO_MS_ENV)
                .ok()
                .and_then(|v| v.trim().parse::<f64>().ok())
        })?;
        (ms > 0.0 && ms.is_finite()).then(|| Duration::from_secs_f64(ms / 1e3))
    }

    /// The fixed batching wait, if one is set.
    pub fn fixed_wait(&self) -> Option<Duration> {
        self.fixed_wait_us.map(Duration::from_micros)
    }

    /// The ONNX Runtime library to load: `onnxruntime_lib`, else the file `ORT_DYLIB_PATH` names. Errors
    /// ([`WorkerError::OnnxRuntime`]) name both places when neither gives one, and the place and the path when
    /// it is not a file.
    pub fn onnxruntime_library(&self) -> Result<PathBuf, WorkerError> {
        let env = std::env::var_os(ORT_DYLIB_PATH_ENV).filter(|v| !v.is_empty());
        let (path, from) = match (&self.onnxruntime_lib, env) {
            (Some(path), _) => (
                path.clone(),
                "onnxruntime_lib (--onnxruntime-lib)".to_string(),
            ),
            (None, Some(env)) => (PathBuf::from(env), ORT_DYLIB_PATH_ENV.to_string()),
            (None, None) => {
                return Err(WorkerError::OnnxRuntime(format!(
                    "engine onnxruntime needs the ONNX Runtime library (libonnxruntime.so.*): give \
                     --onnxruntime-lib PATH (worker.onnxruntime_lib) or set {ORT_DYLIB_PATH_ENV}; \
                     scripts/fetch-models.sh puts one in CACHE_DIR/onnxruntime/"
                )));
            }
        };
        if !path.is_file() {
            return Err(WorkerError::OnnxRuntime(format!(
                "{from} = {}: no such file (the ONNX Runtime library, libonnxruntime.so.*)",
                path.display()
            )));
        }
        Ok(path)
    }

    /// Checks every setting.
    pub fn validate(&self) -> Result<(), WorkerError> {
        let invalid =
            |field, value: String, rule| Err(WorkerError::InvalidConfig { field, value, rule });
        if self.model_name.is_empty()
            || !self
                .model_name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
        {
            return invalid(
                "model_name",
                format!("{:?}", self.model_name),
                "must be non-empty ASCII letters, digits, '-', '_' or '.'",
            );
        }
        if self.model_version.is_empty() || self.model_version.contains('/') {
            return invalid(
                "model_version",
                format!("{:?}", self.model_version),
                "must be non-empty and contain no '/'",
            );
        }
        if self.model_path.as_os_str().is_empty() {
            return invalid("model_path", "\"\"".into(), "must name an ONNX file");
        }
        if let Some(shape) = &self.input_shape {
            if shape.is_empty() || shape.contains(&0) {
                return invalid(
                    "input_shape",
                    format!("{shape:?}"),
                    "must have at least one dimension (the batch), none of them 0",
                );
            }
            let elements = shape.iter().try_fold(1usize, |n, &d| n.checked_mul(d));
            if elements.is_none_or(|n| n > MAX_INPUT_ELEMENTS) {
                return invalid(
                    "input_shape",
                    format!("{shape:?}"),
                    "must hold at most 268435456 (2^28) elements, 1 GiB of FP32: the largest request body a \
                     function may accept",
                );
            }
        }
        if self.max_batch == 0 || self.max_batch > 4096 {
            return invalid(
                "max_batch",
                self.max_batch.to_string(),
                "must be in 1..=4096",
            );
        }
        if self.max_body_bytes < 1024 {
            return invalid(
                "max_body_bytes",
                self.max_body_bytes.to_string(),
                "must be at least 1024",
            );
        }
        if let Some(slo) = self.slo_ms
            && !(slo > 0.0 && slo.is_finite())
        {
            return invalid(
                "slo_ms",
                slo.to_string(),
                "must be a positive number of milliseconds",
            );
        }
        self.batching.validate().or_else(|e| {
            invalid(
                "batching",
                e.to_string(),
                "must be a valid batching setting",
            )
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn validate_names_the_field() {
        let ok = WorkerConfig::new("squeezenet", "/m.onnx");
        assert!(ok.validate().is_ok());
        let bad = WorkerConfig {
            max_batch: 0,
            ..ok.clone()
        };
        assert!(
            bad.validate()
                .unwrap_err()
                .to_string()
                .contains("max_batch")
        );
        let bad = WorkerConfig {
            model_name: "a/b".into(),
            ..ok.clone()
        };
        assert!(
            bad.validate()
                .unwrap_err()
                .to_string()
                .contains("model_name")
        );
        let bad = WorkerConfig {
            input_shape: Some(vec![1, 0]),
            ..ok.clone()
        };
        assert!(
            bad.validate()
                .unwrap_err()
                .to_string()
                .contains("input_shape")
        );
        // Issue 14, defect 8: no upper bound let a worker try to allocate 400 GB at load.
        let bad = WorkerConfig {
            input_shape: Some(vec![1, 100_000, 100_000, 10]),
            ..ok.clone()
        };
        let e = bad.validate().unwrap_err().to_string();
        for needle in ["input_shape", "[1, 100000, 100000, 10]", "268435456"] {
            assert!(e.contains(needle), "{e:?} lacks {needle:?}");
        }
        let bad = WorkerConfig {
            input_shape: Some(vec![usize::MAX, 2]),
            ..ok.clone()
        };
        assert!(bad.validate().is_err());
        let at_bound = WorkerConfig {
            input_shape: Some(vec![1, 1 << 14, 1 << 14]),
            ..ok
        };
        assert!(at_bound.validate().is_ok());
    }
}
