//! Placement policies: where does a new instance go? One [`Placer`] trait, several implementations chosen by
//! name ([`PolicyName`]), all deterministic for a given seed.

mod dilu;
mod gang;
mod kube;
mod serving;
mod simple;

pub use dilu::{DiluParams, DiluPlacer};
pub use kube::{KubePlacer, KubePolicy};
pub use serving::{HasPlacer, TgsPlacer};
pub use simple::{ExclusivePlacer, InflessPlacer, InflessVariant};

use crate::cluster::{Cluster, Placement};
use crate::frag::TypicalPods;
use crate::request::InstanceRequest;
use serde::{Deserialize, Serialize};
use std::fmt;
use std::str::FromStr;

/// Why an instance could not be placed. Not a crash: the caller records it and goes on.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Unschedulable {
    /// No node has an allowed GPU model.
    #[error("no node has an allowed GPU model ({0})")]
    NoAllowedGpuModel(String),
    /// Nodes exist but none has room for the request.
    #[error("no node has room: {0}")]
    NoRoom(String),
}

/// Decides where instances go. Implementations may keep state (caches, an RNG) between calls, but the
/// cluster itself is only changed by the caller, with [`Cluster::allocate`].
pub trait Placer: Send {
    /// The policy's name, as accepted by [`PolicyName::from_str`].
    fn name(&self) -> &'static str;

    /// Chooses a node and GPUs for `req` on the cluster as it is now.
    fn place(
        &mut self,
        cluster: &Cluster,
        req: &InstanceRequest,
    ) -> Result<Placement, Unschedulable>;
}

/// Every placement policy the project implements.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum PolicyName {
    /// Dilu's resourcing-complementary 2D best-fit (`docs/dilu.md` §4).
    Dilu,
    /// One whole GPU per instance (Kubernetes' default device plugin).
    Exclusive,
    /// INFless reserving the SM limit as if it were the request; SM-only best-fit.
    InflessL,
    /// INFless reserving only the SM request; SM-only best-fit.
    InflessR,
    /// FGD baseline: a uniformly random feasible node.
    Random,
    /// FGD baseline: Tetris-style dot product of free and requested (CPU, GPU).
    DotProd,
    /// FGD baseline: prefer nodes running pods of the same GPU-affinity class.
    Clustering,
    /// FGD baseline: prefer shared GPUs, then free GPUs of used nodes, then empty nodes.
    Packing,
    /// FGD baseline: tightest fit of (CPU, GPU).
    BestFit,
    /// Fragmentation Gradient Descent (ATC'23).
    Fgd,
}

impl PolicyName {
    /// All policies, in a stable order.
    pub const ALL: [PolicyName; 10] = [
        PolicyName::Dilu,
        PolicyName::Exclusive,
        PolicyName::InflessL,
        PolicyName::InflessR,
        PolicyName::Random,
        PolicyName::DotProd,
        PolicyName::Clustering,
        PolicyName::Packing,
        PolicyName::BestFit,
        PolicyName::Fgd,
    ];

    /// The six policies of FGD's published experiment.
    pub const FGD_SIX: [PolicyName; 6] = [
        PolicyName::Random,
        PolicyName::DotProd,
        PolicyName::Clustering,
        PolicyName::Packing,
        PolicyName::BestFit,
        PolicyName::Fgd,
    ];

    /// The name used on the command line and in reports.
    pub fn as_str(self) -> &'static str {
        match self {
            PolicyName::Dilu => "dilu",
            PolicyName::Exclusive => "exclusive",
            PolicyName::InflessL => "infless-l",
            PolicyName::InflessR => "infless-r",
            PolicyName::Random => "random",
            PolicyName::DotProd => "dot-prod",
            PolicyName::Clustering => "clustering",
            PolicyName::Packing => "packing",
            PolicyName::BestFit => "best-fit",
            PolicyName::Fgd => "fgd",
        }
    }

    /// The label FGD's result files use (`01-Random` … `06-FGD`), for the six FGD policies.
    pub fn fgd_label(self) -> Option<&'static str> {
        Some(match self {
            PolicyName::Random => "01-Random",
            PolicyName::DotProd => "02-DotProd",
            PolicyName::Clustering => "03-GpuClustering",
            PolicyName::Packing => "04-GpuPacking",
            PolicyName::BestFit => "05-BestFit",
            PolicyName::Fgd => "06-FGD",
            _ => return None,
        })
    }
}

impl fmt::Display for PolicyName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// An unknown policy name; lists the known ones.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "unknown placement policy '{0}': expected one of dilu, exclusive, infless-l, infless-r, random, dot-prod, clustering, packing, best-fit, fgd"
)]
pub struct UnknownPolicy(pub String);

impl FromStr for PolicyName {
    type Err = UnknownPolicy;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        PolicyName::ALL
            .into_iter()
            .find(|p| p.as_str() == s)
            .ok_or_else(|| UnknownPolicy(s.to_owned()))
    }
}

/// What a placer may need besides the cluster: a seed (random choices), the typical-pod distribution (FGD),
/// and Dilu's constants.
#[derive(Debug, Clone, Default)]
pub struct PlacerConfig {
    /// Seed for policies that draw random numbers.
    pub seed: i64,
    /// Typical pods for FGD; required by `fgd`.
    pub typical_pods: Option<TypicalPods>,
    /// Dilu's constants.
    pub dilu: DiluParams,
}

/// A configuration that cannot build the requested placer.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("policy '{policy}' needs {what}")]
pub struct PlacerConfigError {
    /// The policy.
    pub policy: &'static str,
    /// What is missing.
    pub what: &'static str,
}

/// Builds the placer for a policy.
pub fn build_placer(
    name: PolicyName,
    cluster: &Cluster,
    config: &PlacerConfig,
) -> Result<Box<dyn Placer>, PlacerConfigError> {
    let kube = |policy| -> Box<dyn Placer> {
        Box::new(KubePlacer::new(policy, cluster, config.seed, None))
    };
    Ok(match name {
        PolicyName::Dilu => Box::new(DiluPlacer::new(config.dilu)),
        PolicyName::Exclusive => Box::new(ExclusivePlacer),
        PolicyName::InflessL => Box::new(InflessPlacer::new(InflessVariant::Limit)),
        PolicyName::InflessR => Box::new(InflessPlacer::new(InflessVariant::Request)),
        PolicyName::Random => kube(KubePolicy::Random),
        PolicyName::DotProd => kube(KubePolicy::DotProd),
        PolicyName::Clustering => kube(KubePolicy::Clustering),
        PolicyName::Packing => kube(KubePolicy::Packing),
        PolicyName::BestFit => kube(KubePolicy::BestFit),
        PolicyName::Fgd => {
            let typical = config.typical_pods.as_ref().ok_or(PlacerConfigError {
                policy: "fgd",
                what: "a typical-pod distribution",
            })?;
            Box::new(KubePlacer::new(
                KubePolicy::Fgd,
                cluster,
                config.seed,
                Some(typical),
            ))
        }
    })
}
