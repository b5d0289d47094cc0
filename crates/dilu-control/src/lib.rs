//! Dilu's control plane logic, runtime-neutral: a level-triggered [`Controller`] that reconciles every
//! function's desired state (spec, profile, the size its horizontal scaler wants) with what an
//! [`InstanceBackend`] reports, with an injected [`Clock`] (`docs/architecture.md`).
//!
//! - [`backend`]: the [`InstanceBackend`] seam: runtime-neutral plans in, observed instances out.
//! - [`controller`]: the reconciler.
//! - [`state`]: the explicit function and instance states.
//! - [`profile`]: profiling runs ([`Profiler`]) and the live profiler.
//! - [`store`], [`load`], [`clock`]: where functions are kept, where traffic counts come from, what time it is.
//! - [`views`], [`metrics`], [`error`]: what the API shows and returns; [`diagnosis`]: the readable cause of an
//!   instance's end, from its log.
//! - [`events`]: the bounded log of every decision ([`events::EventLog`]).
//! - [`fake`]: a backend, a profiler and a load source in memory, for tests in virtual time.
//!
//! This crate never depends on the node agent, the worker or the simulator: it sees nodes and instances only
//! through [`InstanceBackend`] and `dilu-api` types.

#![warn(missing_docs)]

pub mod backend;
pub mod clock;
pub mod controller;
pub mod diagnosis;
pub mod error;
pub mod events;
pub mod fake;
pub mod load;
pub mod metrics;
pub mod profile;
pub mod state;
pub mod store;
pub mod views;

pub use backend::{BackendError, InstanceBackend, InstancePlan, ObservedInstance};
pub use clock::{Clock, ManualClock, SystemClock};
pub use controller::{Controller, ControllerConfig};
pub use error::ControlError;
pub use load::{LoadSource, Window};
pub use profile::{LiveProfiler, Profiler};
pub use store::{FunctionStore, MemoryStore, StoreError, StoredFunction};
pub use views::{FunctionView, InstanceSummary};
