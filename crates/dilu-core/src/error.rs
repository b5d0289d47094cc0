//! Errors of the core model.

use crate::request::RequestError;

/// Why the cluster model refused an operation. Every variant names what was wrong.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CoreError {
    /// The request itself breaks a rule.
    #[error("invalid request: {0}")]
    Request(#[from] RequestError),
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
