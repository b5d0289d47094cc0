//! Fixed shares: the vertical "controller" of the baselines whose quotas never move at run time.

use crate::scaling::vertical::{
    Grant, ResidentState, ShareMode, VerticalController, VerticalEvent,
};

/// Gives every resident a fixed grant derived from its quota and never changes it afterwards.
///
/// - `Spatial` (MPS percentage, as INFless and exclusive GPUs): partition = SM limit, guaranteed = request.
/// - `Temporal` (FaST-GShare / HAS-GPU time tokens): partition = SM limit (the MPS partition), time fraction
///   = the resident's time quota, guaranteed = its SM request (partition × quota request).
#[derive(Debug, Clone)]
pub struct StaticShares {
    mode: ShareMode,
}

impl StaticShares {
    /// A controller granting shares of the given kind.
    pub fn new(mode: ShareMode) -> Self {
        StaticShares { mode }
    }

    /// The fixed grant of one resident.
    pub fn grant(mode: ShareMode, r: &ResidentState) -> Grant {
        match mode {
            ShareMode::Spatial => Grant::spatial(r.sm_limit, r.sm_request),
            ShareMode::Temporal => Grant {
                partition: r.sm_limit,
                time_fraction: r.time_quota,
                guaranteed: r.sm_request.min(r.sm_limit * r.time_quota),
                mode: ShareMode::Temporal,
            },
        }
    }
}

impl VerticalController for StaticShares {
    fn name(&self) -> &'static str {
        match self.mode {
            ShareMode::Spatial => "static-spatial",
            ShareMode::Temporal => "static-temporal",
        }
    }

    fn on_event(
        &mut self,
        _now_ns: u64,
        event: VerticalEvent,
        residents: &[ResidentState],
        grants: &mut [Grant],
    ) -> Option<u64> {
        if event == VerticalEvent::ResidentsChanged {
            for (g, r) in grants.iter_mut().zip(residents) {
                *g = Self::grant(self.mode, r);
            }
        }
        None
    }

    fn adjustments(&self) -> u64 {
        0
    }
}
