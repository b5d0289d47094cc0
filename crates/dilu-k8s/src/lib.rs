//! Dilu on Kubernetes (`docs/kubernetes.md`): the cluster's API server holds the state, and Dilu's
//! processes act on it.
//!
//! - [`crd`]: the `Function` custom resource, generated from the `dilu-api` spec types.
//! - [`meta`]: the labels and annotations Dilu writes (node inventory, a pod's booking and assignment).
//! - [`backend`]: the controller's instance backend: instances as Pods.
//! - [`store`]: the controller's function store: `Function` objects, profiles in an annotation.
//! - [`endpoints`]: the gateway's routes from `Function` objects and their ready pods; the activator's wake.
//! - [`load`]: the controller's traffic counts, pulled from the gateways' `GET /v1/load`.
//! - [`controller`]: the reconciler of `dilu-control` run against the API server.
//! - [`nodes`]: node liveness from the node agents' Leases (a node whose Lease ran out is lost).
//! - [`leader`]: leader election over a Lease, for the controller's and the scheduler's replicas.
//! - [`node`]: the node agent's side (`dilu agent --kubernetes`): inventory, heartbeat Lease, pod channels.
//! - [`error`]: why Kubernetes-side work failed.
//! - [`events`]: Kubernetes Events for Dilu's decisions (`kubectl describe` shows them).
//! - [`scheduler`]: dilu-scheduler, which binds Dilu pods to a node and a device.
//! - [`scheduling`]: node selectors, affinity and tolerations between a function's spec, its pods and Nodes.

#![warn(missing_docs)]

pub mod backend;
pub mod controller;
pub mod crd;
pub mod endpoints;
pub mod error;
pub mod events;
pub mod leader;
pub mod load;
pub mod meta;
pub mod node;
pub mod nodes;
pub mod scheduler;
pub mod scheduling;
pub mod store;

pub use crd::{Function, FunctionStatus};
pub use error::MetaError;
