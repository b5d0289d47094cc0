//! Every component's constants, with the published values as defaults. A simulator scenario overrides them
//! under `parameters:`, by component name; `dilu up` runs with the defaults (and each function's own lazy
//! scaler settings).

use serde::{Deserialize, Serialize};

use crate::batching::BatchingConfig;
use crate::error::FieldError;
use crate::scaling::{
    FastGShareConfig, FastGShareScaler, HasConfig, HasScaler, InflessConfig, InflessScaler,
    KpaConfig, KpaScaler, LazyConfig, LazySloConfig, RckmConfig, SlackConfig, TgsConfig,
};

/// The constants of every component a policy may select.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PolicyParameters {
    /// Dilu's token manager.
    pub rckm: RckmConfig,
    /// The queue-aware token manager of `dilu-slo`.
    pub slack: SlackConfig,
    /// TGS's rate controller.
    pub tgs: TgsConfig,
    /// Dilu's lazy horizontal scaler.
    pub lazy: LazyConfig,
    /// The SLO escape of `dilu-slo`'s horizontal scaler (its vote is `lazy`'s).
    pub lazy_slo: LazySloConfig,
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

impl PolicyParameters {
    /// Checks every component's constants; a failure names the field under its component
    /// (`rckm.window_ms`, `lazy.out_votes`).
    pub fn validate(&self) -> Result<(), FieldError> {
        self.rckm.validate()?;
        self.slack.validate()?;
        self.tgs.validate()?;
        self.batching.validate()?;
        self.lazy.validate()?;
        self.lazy_slo.validate()?;
        KpaScaler::new(self.kpa)?;
        InflessScaler::new(self.infless)?;
        FastGShareScaler::new(self.fast_gshare)?;
        HasScaler::new(self.has)?;
        Ok(())
    }
}
