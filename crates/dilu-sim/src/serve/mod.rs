//! Discrete-event serving simulator: requests, GPUs shared by quota, vertical and horizontal scaling, and
//! the policies Dilu is compared with.
//!
//! - [`scenario`] and [`workload`]: the YAML scenario format and request arrival processes.
//! - [`setup`]: profiles every function once and prepares the scenario ([`prepared`]).
//! - [`policy`]: each policy as a bundle of placer, vertical controller and horizontal scaler.
//! - [`engine`]: the event loop; [`batching`]: the shared dynamic batcher; [`metrics`]: what is measured.
//! - [`report`]: comparison tables, JSON and SVG plots; [`html`]: the report's `index.html`.

pub mod batching;
pub mod engine;
pub mod html;
pub mod jitter;
pub mod metrics;
pub mod policy;
pub mod prepared;
pub mod report;
pub mod scenario;
pub mod setup;
pub mod workload;

pub use dilu_core::policy::PolicyName;
pub use engine::{Engine, EngineError};
pub use metrics::{PolicyReport, PolicyRun};
pub use setup::{Setup, prepare};

/// Runs one policy over a prepared scenario.
pub fn run_policy(setup: &Setup, policy: PolicyName) -> Result<PolicyRun, EngineError> {
    let bundle = policy::bundle(policy, &setup.parameters)
        .map_err(|e| EngineError::Policy(e.to_string()))?;
    let engine = Engine::new(&setup.prepared, bundle, setup.parameters.batching)?;
    let mut run = engine.run();
    run.report.policy = policy.as_str().to_owned();
    Ok(run)
}
