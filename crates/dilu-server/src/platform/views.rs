//! What the API shows of functions and their instances.

use serde::Serialize;

use super::{FunctionRuntime, Phase};
use crate::spec::FunctionSpec;
use crate::store::Profile;

/// One instance of a function.
#[derive(Debug, Clone, Serialize)]
pub struct InstanceSummary {
    /// The agent's instance id.
    pub id: String,
    /// Device UUID.
    pub device: String,
    /// Loopback URL of its server.
    pub url: String,
    /// Ready and serving.
    pub ready: bool,
    /// Being removed.
    pub draining: bool,
    /// Being profiled.
    pub profiling: bool,
    /// Left from an earlier generation: serves until a current instance is ready, then drains.
    pub outdated: bool,
}

/// A function as the API shows it.
#[derive(Debug, Clone, Serialize)]
pub struct FunctionView {
    /// Its name.
    pub name: String,
    /// `inference` or `training`.
    pub kind: &'static str,
    /// Where it is in its life (and why it failed, when it did).
    pub status: Phase,
    /// Bumped on every update.
    pub generation: u64,
    /// The spec as deployed.
    pub spec: FunctionSpec,
    /// The quota and capacity it runs with, once known.
    pub profile: Option<Profile>,
    /// Its instances.
    pub instances: Vec<InstanceSummary>,
    /// Instance creations in flight.
    pub starting: u32,
    /// Arrival rate over the last scaling interval, requests per second.
    pub rps: f64,
    /// Why the last instance start failed (unschedulable, a process that would not start, …), if it did.
    pub last_error: Option<String>,
}

pub(super) fn function_view(name: &str, f: &FunctionRuntime) -> FunctionView {
    FunctionView {
        name: name.to_string(),
        kind: f.spec.kind.as_str(),
        status: f.phase.clone(),
        generation: f.generation,
        spec: f.spec.clone(),
        profile: f.profile.clone(),
        instances: f
            .instances
            .iter()
            .map(|i| InstanceSummary {
                id: i.id.clone(),
                device: i.device.clone(),
                url: i.base_url(),
                ready: i.ready,
                draining: i.draining,
                profiling: i.profiling,
                outdated: i.outdated,
            })
            .collect(),
        starting: f.starting,
        rps: f.last_rps,
        last_error: f.last_error.clone(),
    }
}
