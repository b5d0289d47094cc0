//! The explicit states of functions and instances, as the reconciler tracks them.

use serde::Serialize;

/// Where a function is in its life.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "kebab-case", tag = "phase", content = "reason")]
pub enum FunctionPhase {
    /// Waiting for an instance to profile on (or for its first instance).
    Starting,
    /// Its quota is being profiled on a live instance.
    Profiling,
    /// Sized by its horizontal scaler.
    Running,
    /// Bring-up failed (the reason says why); an update retries.
    Failed(String),
}

/// Where an instance is in its life, as the control plane sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum InstanceState {
    /// Started on its node, not yet ready (or restarting after an exit).
    Starting,
    /// Ready and measured by the profiler; serves once the profile is applied.
    Profiling,
    /// Ready and serving.
    Ready,
    /// No new requests; stops once its requests in flight are done.
    Draining,
    /// Asked to stop; gone soon.
    Stopping,
}

impl InstanceState {
    /// Whether it counts towards the function's size (not on its way out).
    pub fn is_live(self) -> bool {
        !matches!(self, InstanceState::Draining | InstanceState::Stopping)
    }
}
