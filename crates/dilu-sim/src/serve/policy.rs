//! Policy bundles: each serving policy is a placer, a per-GPU vertical controller, a per-function horizontal
//! scaler and the rule that turns the profiled quota into what an instance is charged and granted.
//!
//! | policy | placement | vertical | horizontal | inference share |
//! |---|---|---|---|---|
//! | `dilu` | 2D complementary best-fit | RCKM token manager | lazy (40 s window) | request..limit, spatial |
//! | `exclusive` | whole GPU | none | Knative KPA | the whole GPU |
//! | `infless` | SM best-fit on a fixed share | none (fixed MPS %) | INFless reactive | request, fixed |
//! | `fast-gshare` | SM·time best-fit | FaST time tokens | FaST-GShare autoscaler | partition = limit, tokens request..1 |
//! | `tgs` | one inference + one training per GPU | TGS adaptive rate | Knative KPA | the whole GPU, training rate-limited |
//! | `has` | HGO best-fit, ≤ 2 SM rows | time quota set by the scaler | HAS-GPU vertical-first | partition = limit, quota = request/limit |
//!
//! Every policy starts from the same profiled quota (`docs/dilu.md` §3) and the same batcher.

use crate::serve::batching::BatchingConfig;
use crate::serve::policy_name::ServePolicy;
use crate::serve::prepared::{PreparedFunction, PreparedTraining};
use dilu_core::placement::{
    DiluParams, DiluPlacer, ExclusivePlacer, HasPlacer, InflessPlacer, InflessVariant, Placer,
    TgsPlacer,
};
use dilu_core::request::SM_MILLI;
use dilu_core::scaling::fast_gshare::{FastGShareConfig, FastGShareScaler};
use dilu_core::scaling::has::{HasConfig, HasScaler};
use dilu_core::scaling::kpa::{KpaConfig, KpaScaler};
use dilu_core::scaling::lazy::{LazyConfig, LazyScaler};
use dilu_core::scaling::reactive::{InflessConfig, InflessScaler};
use dilu_core::scaling::{
    HorizontalScaler, Rckm, RckmConfig, ShareMode, StaticShares, TgsConfig, TgsRate,
    VerticalController,
};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// What one instance (or one GPU of a training job) is charged in the cluster and granted on its GPU.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct InstanceQuota {
    /// SM request charged to the cluster, milli.
    pub charge_request: u32,
    /// SM limit charged to the cluster, milli.
    pub charge_limit: u32,
    /// Guaranteed SM·time on its GPU, fraction.
    pub grant_request: f64,
    /// SM partition (spatial: the most it may use), fraction.
    pub grant_limit: f64,
    /// Time quota within the partition (time-token policies), fraction.
    pub time_quota: f64,
    /// Requests per second the horizontal scaler counts on per instance.
    pub capacity_rps: f64,
    /// Requests per second at the full time quota.
    pub capacity_full_rps: f64,
}

/// Builds a per-GPU vertical controller.
pub type VerticalFactory = Box<dyn Fn() -> Box<dyn VerticalController>>;
/// Builds a per-function horizontal scaler.
pub type HorizontalFactory =
    Box<dyn Fn(&PreparedFunction) -> Result<Box<dyn HorizontalScaler>, String>>;
/// Maps an inference function's profile to an instance quota.
pub type InferenceQuotaRule = Box<dyn Fn(&PreparedFunction) -> InstanceQuota>;
/// Maps a training job to its per-GPU quota.
pub type TrainingQuotaRule = Box<dyn Fn(&PreparedTraining) -> InstanceQuota>;

/// A policy: placer, vertical and horizontal scaling, and quota rules.
pub struct Bundle {
    /// Where instances go.
    pub placer: Box<dyn Placer>,
    /// One controller per GPU.
    pub vertical: VerticalFactory,
    /// One scaler per function.
    pub horizontal: HorizontalFactory,
    /// Inference quota rule.
    pub inference: InferenceQuotaRule,
    /// Training quota rule.
    pub training: TrainingQuotaRule,
}

/// Every component's parameters; defaults are the published values. A scenario overrides them under
/// `parameters:` by component name.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PolicyParameters {
    /// Dilu's token manager.
    pub rckm: RckmConfig,
    /// TGS's rate controller.
    pub tgs: TgsConfig,
    /// Dilu's lazy horizontal scaler.
    pub lazy: LazyConfig,
    /// Knative's KPA.
    pub kpa: KpaConfig,
    /// INFless's scaler.
    pub infless: InflessConfig,
    /// FaST-GShare's autoscaler.
    #[serde(rename = "fast-gshare")]
    pub fast_gshare: FastGShareConfig,
    /// HAS-GPU's hybrid autoscaler.
    pub has: HasConfig,
    /// The batcher every policy shares.
    pub batching: BatchingConfig,
}

/// A bad `parameters:` entry.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("parameters.{0}")]
pub struct ParameterError(pub String);

impl PolicyParameters {
    /// Reads the scenario's `parameters:` mapping (component name → settings) and checks every value.
    /// Keys the simulator does not know are an error naming them.
    pub fn from_map(map: &BTreeMap<String, serde_yaml::Value>) -> Result<Self, ParameterError> {
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
        params.validate()?;
        Ok(params)
    }

    /// Checks every component's constants.
    pub fn validate(&self) -> Result<(), ParameterError> {
        let wrap = |e: &dyn std::fmt::Display| ParameterError(e.to_string());
        self.rckm.validate().map_err(|e| wrap(&e))?;
        self.tgs.validate().map_err(|e| wrap(&e))?;
        self.batching.validate().map_err(|e| wrap(&e))?;
        LazyScaler::new(self.lazy).map_err(|e| wrap(&e))?;
        KpaScaler::new(self.kpa).map_err(|e| wrap(&e))?;
        InflessScaler::new(self.infless).map_err(|e| wrap(&e))?;
        FastGShareScaler::new(self.fast_gshare).map_err(|e| wrap(&e))?;
        HasScaler::new(self.has).map_err(|e| wrap(&e))?;
        Ok(())
    }
}

fn milli(x: f64) -> u32 {
    ((x * f64::from(SM_MILLI)).round() as u32).clamp(1, SM_MILLI)
}

/// A factory that builds a scaler per function from `config`.
fn scaler<S: HorizontalScaler + 'static, C: Copy + 'static, E: std::fmt::Display + 'static>(
    config: C,
    new: fn(C) -> Result<S, E>,
) -> HorizontalFactory {
    Box::new(move |_| {
        new(config)
            .map(|s| Box::new(s) as Box<dyn HorizontalScaler>)
            .map_err(|e| e.to_string())
    })
}

fn spatial(req: f64, lim: f64, capacity: f64) -> InstanceQuota {
    InstanceQuota {
        charge_request: milli(req),
        charge_limit: milli(lim.max(req)),
        grant_request: req,
        grant_limit: lim.max(req),
        time_quota: 1.0,
        capacity_rps: capacity,
        capacity_full_rps: capacity,
    }
}

/// Builds the bundle for `policy` with `params` (already validated).
pub fn bundle(policy: ServePolicy, params: &PolicyParameters) -> Bundle {
    let full_gpu = |f: &PreparedFunction| {
        let cap = f.perf.throughput(f.quota.batch, 1.0);
        InstanceQuota {
            grant_request: 1.0,
            grant_limit: 1.0,
            ..spatial(f.quota.sm_request, f.quota.sm_limit, cap)
        }
    };
    match policy {
        ServePolicy::Dilu => {
            let rckm = params.rckm;
            Bundle {
                placer: Box::new(DiluPlacer::new(DiluParams::default())),
                vertical: Box::new(move || Box::new(Rckm::new(rckm))),
                horizontal: scaler(params.lazy, LazyScaler::new),
                inference: Box::new(|f| {
                    spatial(f.quota.sm_request, f.quota.sm_limit, f.quota.capacity_rps)
                }),
                training: Box::new(|t| spatial(t.sm_request, t.sm_limit, 0.0)),
            }
        }
        ServePolicy::Exclusive => Bundle {
            placer: Box::new(ExclusivePlacer),
            vertical: Box::new(|| Box::new(StaticShares::new(ShareMode::Spatial))),
            horizontal: scaler(params.kpa, KpaScaler::new),
            inference: Box::new(full_gpu),
            training: Box::new(|t| InstanceQuota {
                grant_request: 1.0,
                grant_limit: 1.0,
                ..spatial(t.sm_request, t.sm_limit, 0.0)
            }),
        },
        ServePolicy::Infless => Bundle {
            placer: Box::new(InflessPlacer::new(InflessVariant::Limit)),
            vertical: Box::new(|| Box::new(StaticShares::new(ShareMode::Spatial))),
            horizontal: scaler(params.infless, InflessScaler::new),
            inference: Box::new(|f| {
                spatial(f.quota.sm_request, f.quota.sm_request, f.quota.capacity_rps)
            }),
            training: Box::new(|t| spatial(t.sm_request, t.sm_request, 0.0)),
        },
        ServePolicy::FastGShare => Bundle {
            placer: Box::new(InflessPlacer::new(InflessVariant::Request)),
            vertical: Box::new(|| Box::new(StaticShares::new(ShareMode::Temporal))),
            horizontal: scaler(params.fast_gshare, FastGShareScaler::new),
            inference: Box::new(|f| {
                spatial(f.quota.sm_request, f.quota.sm_limit, f.quota.capacity_rps)
            }),
            training: Box::new(|t| spatial(t.sm_request, t.sm_limit, 0.0)),
        },
        ServePolicy::Tgs => {
            let tgs = params.tgs;
            Bundle {
                placer: Box::new(TgsPlacer),
                vertical: Box::new(move || Box::new(TgsRate::new(tgs))),
                horizontal: scaler(params.kpa, KpaScaler::new),
                inference: Box::new(full_gpu),
                training: Box::new(|t| spatial(t.sm_request, t.sm_limit, 0.0)),
            }
        }
        ServePolicy::Has => Bundle {
            placer: Box::new(HasPlacer::default()),
            vertical: Box::new(|| Box::new(StaticShares::new(ShareMode::Temporal))),
            horizontal: scaler(params.has, HasScaler::new),
            // The most efficient SM partition that meets the SLO, at the full time quota; HAS-GPU's
            // vertical scaling then trades time quota against load.
            inference: Box::new(|f| InstanceQuota {
                grant_limit: f.quota.sm_request,
                ..spatial(f.quota.sm_request, f.quota.sm_request, f.quota.capacity_rps)
            }),
            training: Box::new(|t| spatial(t.sm_request, t.sm_limit, 0.0)),
        },
    }
}
