//! The worker's errors.

use std::path::PathBuf;

/// Why a worker could not start or serve.
#[derive(Debug, thiserror::Error)]
pub enum WorkerError {
    /// A configuration setting breaks a rule.
    #[error("worker.{field} = {value}: {rule}")]
    InvalidConfig {
        /// The setting.
        field: &'static str,
        /// Its value.
        value: String,
        /// The rule it breaks.
        rule: &'static str,
    },
    /// The model file could not be loaded or prepared for serving.
    #[error("model {path}: {message}")]
    Model {
        /// The model file.
        path: PathBuf,
        /// What went wrong.
        message: String,
    },
    /// ONNX Runtime could not be had: no library named, a library that does not load, or an environment or
    /// session it refused.
    #[error("onnxruntime: {0}")]
    OnnxRuntime(String),
    /// The instance's quota channel could not be opened.
    #[error("quota channel: {0}")]
    Quota(#[from] dilu_quota::QuotaError),
    /// The HTTP server failed.
    #[error("http server: {0}")]
    Io(#[from] std::io::Error),
    /// A batch could not be run (an internal failure of the model, not a bad request).
    #[error("inference failed: {0}")]
    Inference(String),
}
