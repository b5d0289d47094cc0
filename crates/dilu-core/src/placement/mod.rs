//! Placement policies: where does a new instance go? One [`Placer`] trait, several implementations chosen by
//! name ([`PlacerName`]), all deterministic for a given seed.

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
    /// The policy's name, as accepted by [`PlacerName::from_str`].
    fn name(&self) -> &'static str;

    /// Chooses a node and GPUs for `req` on the cluster as it is now.
    fn place(
        &mut self,
        cluster: &Cluster,
        req: &InstanceRequest,
    ) -> Result<Placement, Unschedulable>;

    /// Why `placement` (this placer's answer for `req` on `cluster`, before it is allocated) won: the score it
    /// ranked by, for events and logs. `None` for placers that do not rank by a score.
    fn explain(
        &self,
        _cluster: &Cluster,
        _req: &InstanceRequest,
        _placement: &Placement,
    ) -> Option<PlacementScore> {
        None
    }
}

/// The score a placer chose a placement by, as [`Placer::explain`] reports it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct PlacementScore {
    /// The score of the chosen GPUs within their tier; lower won.
    pub value: f64,
    /// What the value measures (e.g. "2D best-fit: the SM and memory fragment left").
    pub measure: &'static str,
    /// The tier the GPUs were chosen from, if the placer ranks by tiers first (e.g. "active device").
    pub tier: Option<&'static str>,
}

/// Every placement policy the project implements.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum PlacerName {
    /// Dilu's resourcing-complementary 2D best-fit (`docs/algorithms.md` §4).
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
    /// TGS's serving placement: one inference and one training instance per GPU.
    Tgs,
    /// HAS-GPU's serving placement: SM·time best-fit with at most two SM partition sizes per GPU.
    Has,
}

impl PlacerName {
    /// All policies, in a stable order.
    pub const ALL: [PlacerName; 10] = [
        PlacerName::Dilu,
        PlacerName::Exclusive,
        PlacerName::InflessL,
        PlacerName::InflessR,
        PlacerName::Random,
        PlacerName::DotProd,
        PlacerName::Clustering,
        PlacerName::Packing,
        PlacerName::BestFit,
        PlacerName::Fgd,
    ];

    /// The placers only the serving policies use (`tgs`, `has`); not part of the placement experiments.
    pub const SERVING_ONLY: [PlacerName; 2] = [PlacerName::Tgs, PlacerName::Has];

    /// The six policies of FGD's published experiment.
    pub const FGD_SIX: [PlacerName; 6] = [
        PlacerName::Random,
        PlacerName::DotProd,
        PlacerName::Clustering,
        PlacerName::Packing,
        PlacerName::BestFit,
        PlacerName::Fgd,
    ];

    /// The name used on the command line and in reports.
    pub fn as_str(self) -> &'static str {
        match self {
            PlacerName::Dilu => "dilu",
            PlacerName::Exclusive => "exclusive",
            PlacerName::InflessL => "infless-l",
            PlacerName::InflessR => "infless-r",
            PlacerName::Random => "random",
            PlacerName::DotProd => "dot-prod",
            PlacerName::Clustering => "clustering",
            PlacerName::Packing => "packing",
            PlacerName::BestFit => "best-fit",
            PlacerName::Fgd => "fgd",
            PlacerName::Tgs => "tgs",
            PlacerName::Has => "has",
        }
    }

    /// The label FGD's result files use (`01-Random` … `06-FGD`), for the six FGD policies.
    pub fn fgd_label(self) -> Option<&'static str> {
        Some(match self {
            PlacerName::Random => "01-Random",
            PlacerName::DotProd => "02-DotProd",
            PlacerName::Clustering => "03-GpuClustering",
            PlacerName::Packing => "04-GpuPacking",
            PlacerName::BestFit => "05-BestFit",
            PlacerName::Fgd => "06-FGD",
            _ => return None,
        })
    }
}

impl fmt::Display for PlacerName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// An unknown policy name; lists the known ones.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "unknown placement policy '{0}': expected one of dilu, exclusive, infless-l, infless-r, random, dot-prod, clustering, packing, best-fit, fgd, tgs, has"
)]
pub struct UnknownPlacer(pub String);

impl FromStr for PlacerName {
    type Err = UnknownPlacer;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        PlacerName::ALL
            .into_iter()
            .chain(PlacerName::SERVING_ONLY)
            .find(|p| p.as_str() == s)
            .ok_or_else(|| UnknownPlacer(s.to_owned()))
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

/// The placers that need nothing but Dilu's constants (every placer a serving policy uses); `None` for FGD's
/// placers, which are built over a cluster by [`build_placer`].
pub fn serving_placer(name: PlacerName, dilu: DiluParams) -> Option<Box<dyn Placer>> {
    Some(match name {
        PlacerName::Dilu => Box::new(DiluPlacer::new(dilu)),
        PlacerName::Exclusive => Box::new(ExclusivePlacer),
        PlacerName::InflessL => Box::new(InflessPlacer::new(InflessVariant::Limit)),
        PlacerName::InflessR => Box::new(InflessPlacer::new(InflessVariant::Request)),
        PlacerName::Tgs => Box::new(TgsPlacer),
        PlacerName::Has => Box::new(HasPlacer::default()),
        _ => return None,
    })
}

/// Builds the placer for a policy.
pub fn build_placer(
    name: PlacerName,
    cluster: &Cluster,
    config: &PlacerConfig,
) -> Result<Box<dyn Placer>, PlacerConfigError> {
    if let Some(placer) = serving_placer(name, config.dilu) {
        return Ok(placer);
    }
    let kube = |policy| -> Box<dyn Placer> {
        Box::new(KubePlacer::new(policy, cluster, config.seed, None))
    };
    Ok(match name {
        PlacerName::Random => kube(KubePolicy::Random),
        PlacerName::DotProd => kube(KubePolicy::DotProd),
        PlacerName::Clustering => kube(KubePolicy::Clustering),
        PlacerName::Packing => kube(KubePolicy::Packing),
        PlacerName::BestFit => kube(KubePolicy::BestFit),
        PlacerName::Fgd => {
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
        // Built by `serving_placer` above.
        other => {
            return Err(PlacerConfigError {
                policy: other.as_str(),
                what: "a constructor of its own",
            });
        }
    })
}
