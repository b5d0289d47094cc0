//! Errors of the core model, and [`FieldError`]: the one shape of "this value breaks that rule" used by
//! specs, configuration, wire requests and the API (`docs/glossary.md`).

use serde::{Deserialize, Serialize};

/// A value that breaks a rule: the field as a dotted path (`quota.request`, `lazy.window`), the value as
/// written and the rule it breaks. Printed as `field = value: rule`; the REST APIs render it as the body
/// `{"error", "field", "value", "rule"}`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error, Serialize, Deserialize)]
#[error("{field} = {value}: {rule}")]
pub struct FieldError {
    /// The offending field, as a dotted path.
    pub field: String,
    /// Its value, as written.
    pub value: String,
    /// The rule it breaks.
    pub rule: String,
}

impl FieldError {
    /// Builds an error.
    pub fn new(field: impl Into<String>, value: impl ToString, rule: impl Into<String>) -> Self {
        FieldError {
            field: field.into(),
            value: value.to_string(),
            rule: rule.into(),
        }
    }

    /// The same error with its field placed under `prefix` (`"scaling"` turns `lazy.window` into
    /// `scaling.lazy.window`).
    pub fn within(mut self, prefix: &str) -> Self {
        if !prefix.is_empty() {
            self.field = format!("{prefix}.{}", self.field);
        }
        self
    }

    /// `Ok(())` when `ok`, else this error: the building block of `validate()` methods.
    pub fn require(
        ok: bool,
        field: impl Into<String>,
        value: impl ToString,
        rule: impl Into<String>,
    ) -> Result<(), FieldError> {
        if ok {
            Ok(())
        } else {
            Err(FieldError::new(field, value, rule))
        }
    }
}

/// Why the cluster model refused an operation. Every variant names what was wrong.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CoreError {
    /// The request itself breaks a rule.
    #[error("invalid request: {0}")]
    Request(#[from] FieldError),
    /// A node spec breaks a rule.
    #[error("node '{node}': field '{field}' = {value}: {rule}")]
    Node {
        /// Node name.
        node: String,
        /// Offending field.
        field: &'static str,
        /// Its value.
        value: String,
        /// The rule broken.
        rule: &'static str,
    },
    /// A placement refers to a node that does not exist.
    #[error("placement refers to node index {0}, but the cluster has fewer nodes")]
    NoSuchNode(usize),
    /// A placement refers to a GPU the node does not have, or names one GPU twice.
    #[error("node '{node}': bad GPU index {gpu} ({rule})")]
    BadGpu {
        /// Node name.
        node: String,
        /// GPU index.
        gpu: u32,
        /// What is wrong.
        rule: &'static str,
    },
    /// Allocating would exceed a capacity.
    #[error("node '{node}': {resource} over capacity: {requested} requested, {free} free")]
    OverCapacity {
        /// Node name.
        node: String,
        /// Which resource (e.g. "cpu_milli", "gpu 3 sm_request").
        resource: String,
        /// Amount requested.
        requested: u64,
        /// Amount free.
        free: u64,
    },
    /// An instance id that already has a live placement.
    #[error(
        "instance {0} already has a live placement; instance ids must be unique among live instances"
    )]
    DuplicateInstance(u64),
    /// A release that does not match a live placement.
    #[error("cannot release instance {instance}: {rule}")]
    NotAllocated {
        /// The instance id.
        instance: u64,
        /// What is wrong.
        rule: &'static str,
    },
}
