//! `dilu up`: the platform on one machine. It assembles the runtime-neutral control plane (`dilu-control`)
//! and the gateway (`dilu-gateway`) over what only this process has: the SQLite store and a node agent in the
//! same process, reached through the process backend.
//!
//! - [`store`]: the embedded SQLite store of functions and profiles.
//! - [`backend`]: [`backend::ProcessBackend`], the `InstanceBackend` over the in-process agent: command lines,
//!   ports and labels.
//! - [`wiring`]: the reconciler's routes into the gateway, the gateway's counts into the reconciler.
//! - [`platform`]: the assembly ([`platform::Platform`]).
//! - [`api`]: the REST API and the listener serving everything.

#![warn(missing_docs)]

pub mod api;
pub mod backend;
pub mod platform;
pub mod store;
pub mod wiring;
