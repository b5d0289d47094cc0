//! Dilu on Kubernetes (`docs/kubernetes.md`): the cluster's API server holds the state, and Dilu's
//! processes act on it.
//!
//! - [`crd`]: the `Function` custom resource, generated from the `dilu-api` spec types.
//! - [`meta`]: the labels and annotations Dilu writes (node inventory, a pod's booking and assignment).
//! - [`error`]: why Kubernetes-side work failed.

#![warn(missing_docs)]

pub mod crd;
pub mod error;
pub mod meta;

pub use crd::{Function, FunctionStatus};
pub use error::MetaError;
