//! `dilu up`: the platform on one machine. It assembles the runtime-neutral control plane (`dilu-control`)
//! and the gateway (`dilu-gateway`) over what only this process has: the SQLite store and a node agent in the
//! same process, reached through the process backend.
//!
//! - [`store`]: the embedded SQLite store of functions and profiles.
//! - [`backend`]: [`backend::ProcessBackend`], the `InstanceBackend` over the in-process agent: command lines,
//!   ports and labels.
//! - [`vertical`]: the token manager's re-divisions of each device, sampled into `vertical` events.
//! - [`wiring`]: the reconciler's routes into the gateway, the gateway's counts into the reconciler.
//! - [`platform`]: the assembly ([`platform::Platform`]).
//! - [`events`]: `GET /v1/events` and its server-sent-events stream.
//! - [`api`]: the REST API and the listener serving everything.
//! - [`ui`]: the live dashboard at `/ui` (embedded static page over the read-only API).

#![warn(missing_docs)]

pub mod api;
pub mod backend;
pub mod events;
pub mod platform;
pub mod store;
pub mod ui;
pub mod vertical;
pub mod wiring;
