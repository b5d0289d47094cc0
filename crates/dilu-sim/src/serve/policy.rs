//! Policy bundles for the engine: each [`PolicyName`] selects its components from the registry in
//! `dilu_core::policy`, the same one `dilu up` and the node agent build from, so a name means the same code
//! in the simulator and on the live platform (`docs/policies.md`).

use std::collections::BTreeMap;

use dilu_core::placement::Placer;
use dilu_core::policy::{Policy, PolicyName};
use dilu_core::scaling::{HorizontalScaler, VerticalController};

use crate::serve::prepared::{PreparedFunction, PreparedTraining};

pub use dilu_core::policy::{InstanceQuota, PolicyParameters};

/// A policy made ready for one engine run: its placer, and the registry entry that builds the rest.
pub struct Bundle {
    /// Where instances go.
    pub placer: Box<dyn Placer>,
    policy: Policy,
}

impl Bundle {
    /// A new vertical controller for one GPU.
    pub fn vertical(&self) -> Box<dyn VerticalController> {
        self.policy.vertical()
    }

    /// A new horizontal scaler for one function.
    pub fn horizontal(&self) -> Result<Box<dyn HorizontalScaler>, String> {
        self.policy.horizontal(None).map_err(|e| e.to_string())
    }

    /// What one instance of `f` is charged and granted.
    pub fn inference(&self, f: &PreparedFunction) -> InstanceQuota {
        self.policy.inference_quota(&f.quota)
    }

    /// What one GPU of training job `t` is charged and granted.
    pub fn training(&self, t: &PreparedTraining) -> InstanceQuota {
        self.policy
            .training_quota(&dilu_core::profiler::TrainingQuota {
                sm_request: t.sm_request,
                sm_limit: t.sm_limit,
            })
    }

    /// The registry entry.
    pub fn policy(&self) -> &Policy {
        &self.policy
    }
}

/// A bad `parameters:` entry.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("parameters.{0}")]
pub struct ParameterError(pub String);

/// Reads a scenario's `parameters:` mapping (component name → settings) and checks every value. Keys the
/// simulator does not know are an error naming them; `profiler` belongs to the setup and is skipped here.
pub fn parameters_from_map(
    map: &BTreeMap<String, serde_yaml::Value>,
) -> Result<PolicyParameters, ParameterError> {
    let mut root = serde_yaml::Mapping::new();
    for (k, v) in map {
        if k == "profiler" {
            continue;
        }
        root.insert(serde_yaml::Value::String(k.clone()), v.clone());
    }
    let value = serde_yaml::Value::Mapping(root);
    let params: PolicyParameters = serde_path_to_error::deserialize(value).map_err(|e| {
        let path = e.path().to_string();
        ParameterError(format!("{path}: {}", e.inner()))
    })?;
    params
        .validate()
        .map_err(|e| ParameterError(e.to_string()))?;
    Ok(params)
}

/// Builds the bundle for `policy` with `params`.
pub fn bundle(policy: PolicyName, params: &PolicyParameters) -> Result<Bundle, ParameterError> {
    let policy = Policy::new(policy, params.clone()).map_err(|e| ParameterError(e.to_string()))?;
    Ok(Bundle {
        placer: policy.placer(),
        policy,
    })
}
