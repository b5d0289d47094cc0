//! Dilu's built-in worker: serves one ONNX model over the Open Inference Protocol v2 REST API (KServe v2 /
//! Triton REST), with dynamic batching (`docs/algorithms.md` §7) and CPU-time tokens drawn from the instance's quota
//! channel.
//!
//! - [`config`]: what a worker serves and how it batches ([`WorkerConfig`]).
//! - [`model`]: a loaded ONNX model and how batches of requests run through it ([`Model`]).
//! - [`engine`]: the engines that run it: `tract` (the default) or ONNX Runtime ([`Engine`]).
//! - [`protocol`]: the v2 JSON request and response bodies, and how tensors are checked.
//! - [`batcher`]: the executor thread that forms batches, runs them and charges their CPU time.
//! - [`metrics`]: the Prometheus counters behind `GET /metrics`.
//! - [`server`]: the HTTP routes and [`serve`].
//! - [`training`]: training functions: an MLP trained with SGD under the same CPU-time tokens, served by
//!   [`serve_training`].

#![warn(missing_docs)]

pub mod batcher;
pub mod binary;
pub mod config;
pub mod engine;
pub mod error;
pub mod metrics;
pub mod model;
pub mod protocol;
pub mod server;
pub mod training;

pub use config::{SLO_MS_ENV, WorkerConfig};
pub use engine::Engine;
pub use error::WorkerError;
pub use model::{Datatype, Model, TensorData, TensorSpec};
pub use server::serve;
pub use training::{TrainingConfig, serve_training};
