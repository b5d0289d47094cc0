//! What the API shows of functions and their instances.

use dilu_api::{FunctionSpec, Profile};
use serde::Serialize;

use crate::state::{FunctionPhase, InstanceState};

/// One instance of a function.
#[derive(Debug, Clone, Serialize)]
pub struct InstanceSummary {
    /// The backend's instance id.
    pub id: String,
    /// Node name.
    pub node: String,
    /// Device UUID.
    pub device: String,
    /// Where it serves.
    pub url: String,
    /// Where it is in its life.
    pub state: InstanceState,
    /// Ready and serving (state `ready`).
    pub ready: bool,
    /// Being removed: no new requests (states `draining`, `stopping`).
    pub draining: bool,
    /// Being profiled (state `profiling`).
    pub profiling: bool,
    /// Left from an earlier generation: serves until a current instance is ready, then drains.
    pub outdated: bool,
}

/// A function as the API shows it.
#[derive(Debug, Clone, Serialize)]
pub struct FunctionView {
    /// Its name.
    pub name: String,
    /// `inference`, `llm-inference` or `training`.
    pub kind: &'static str,
    /// Where it is in its life (and why it failed, when it did).
    pub status: FunctionPhase,
    /// Bumped on every update.
    pub generation: u64,
    /// The spec as deployed.
    pub spec: FunctionSpec,
    /// The quota and capacity it runs with, once known.
    pub profile: Option<Profile>,
    /// The horizontal scaler that sizes it.
    pub scaler: &'static str,
    /// Instances the scaler wants.
    pub desired: u32,
    /// Its instances.
    pub instances: Vec<InstanceSummary>,
    /// Instances being created (always 0 between reconciler passes).
    pub starting: u32,
    /// Arrival rate over the last scaling interval, requests per second.
    pub rps: f64,
    /// Why the last instance failed to start or exited, if one did.
    pub last_error: Option<String>,
}
