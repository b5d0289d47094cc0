//! Dilu's control plane and inference gateway.
//!
//! - [`spec`]: function specs (YAML/JSON) and their validation.
//! - [`store`]: the embedded SQLite store of functions, profiles and instances.
//! - [`node`]: the node operations the control plane needs ([`node::NodeClient`]), with the in-process agent.
//! - [`scheduler`]: placement with a `dilu-core` placer over a cluster ledger.
//! - [`profiler`]: Hybrid Growth Search and training bisection over live instances.
//! - [`platform`]: the control plane itself: deploy, update, delete, bring-up and the control loops.
//! - [`gateway`]: `POST /v2/models/{function}/infer` routed to the least-loaded ready instance, with a bounded
//!   per-function queue, cold-start waits, timeouts and one retry when an instance dies mid-request.
//! - [`api`]: the REST API and the listener serving everything.
//! - [`metrics`]: the control plane's Prometheus counters.

#![warn(missing_docs)]

pub mod api;
pub mod gateway;
pub mod metrics;
pub mod node;
pub mod platform;
pub mod profiler;
pub mod scheduler;
pub mod spec;
pub mod store;
