//! Dilu's wire and spec types, shared by every crate that talks to another: function specs (with their
//! runtime), the one quota type, the one field-error type, the node agent's wire types and the gateway's
//! routing table. Serde types only; no I/O.
//!
//! - [`spec`]: [`FunctionSpec`] and its parsing (YAML or JSON) and validation.
//! - [`quota`]: [`Quota`] and [`QuotaUpdate`].
//! - [`profile`]: [`Profile`], what profiling found.
//! - [`agent`]: what starts an instance on a node and what a node reports.
//! - [`event`]: [`Event`], a decision the platform took, with its reason.
//! - [`process`]: [`ProcessSpec`], the settings of `runtime: process`.
//! - [`route`]: what the gateway routes by.
//!
//! The glossary of names is `docs/glossary.md`.

#![warn(missing_docs)]

pub mod agent;
pub mod event;
pub mod process;
pub mod profile;
pub mod quota;
pub mod route;
pub mod spec;

pub use dilu_core::{FieldError, InstanceKind};
pub use event::{Event, EventKind};
pub use process::{DeviceChoice, ProcessProtocol, ProcessSpec};
pub use profile::Profile;
pub use quota::{Quota, QuotaUpdate};
pub use route::{Endpoint, Route};
pub use spec::{
    FunctionSpec, MANIFEST_API_VERSION, MANIFEST_KIND, ModelEngine, Runtime, RuntimeName,
    SpecFormat, parse_spec, spec_of_manifest,
};
