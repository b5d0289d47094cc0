//! From profiling results to quotas (`docs/algorithms.md` §2–3, the mapping is **\[ours\]**):
//!
//! - inference: `batch = b`, `sm_request = s/100` (the most efficient share meeting the SLO), `sm_limit` =
//!   the smallest grid share whose throughput at batch `b` reaches 95% of the best throughput at that batch
//!   (the knee), never below `sm_request`; capacity = `throughput(b, sm_request)` requests/s, what the
//!   horizontal scaler counts on per instance;
//! - training: `sm_request` from the bisection, `sm_limit = 1.0` (training soaks up idle SMs).

use super::bisect::TrainingProfile;
use super::hgs::HgsResult;
use super::knee::limit_knee;
use super::{ModelMeasure, ProfileError};
use crate::perf::model::PerfModel;
use serde::{Deserialize, Serialize};

/// Fraction of the best throughput at a batch that defines the inference `sm_limit` knee.
pub const LIMIT_KNEE_FRACTION: f64 = 0.95;

/// An inference instance's quota.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct InferenceQuota {
    /// Batch size the instance runs.
    pub batch: u32,
    /// Guaranteed SM share, fraction of the GPU.
    pub sm_request: f64,
    /// Most SM share the instance may use when the GPU has room, fraction of the GPU (≥ `sm_request`).
    pub sm_limit: f64,
    /// Requests per second one instance serves at `sm_request` (requests, also for per-token models).
    pub capacity_rps: f64,
    /// Requests per second one instance serves with the whole device at the same batch (what a policy that
    /// grants whole devices counts on).
    pub capacity_full_rps: f64,
}

impl InferenceQuota {
    /// The quota of a feasible search result on `model`'s grid; an infeasible result is an error.
    pub fn from_hgs(result: &HgsResult, model: &PerfModel) -> Result<InferenceQuota, ProfileError> {
        if !result.feasible {
            return Err(ProfileError::Infeasible {
                model: model.model().to_owned(),
                latency_s: result.latency_s,
            });
        }
        let batch = result.batch;
        let sm_request = f64::from(result.sm_pct) / 100.0;
        let grid = model.grid_sm_pcts();
        let best = grid
            .iter()
            .map(|&s| model.throughput(batch, f64::from(s) / 100.0))
            .fold(0.0, f64::max);
        // The knee among the request and the grid's larger shares.
        let mut candidates = vec![result.sm_pct];
        candidates.extend(grid.iter().copied().filter(|&s| s > result.sm_pct));
        let knee = limit_knee(
            &mut ModelMeasure::new(model),
            batch,
            &candidates,
            best,
            LIMIT_KNEE_FRACTION,
        )?;
        Ok(InferenceQuota {
            batch,
            sm_request,
            sm_limit: (f64::from(knee) / 100.0).max(sm_request),
            capacity_rps: model.throughput(batch, sm_request),
            capacity_full_rps: model.throughput(batch, 1.0),
        })
    }
}

/// A training instance's per-GPU quota.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct TrainingQuota {
    /// Guaranteed SM share, fraction of the GPU.
    pub sm_request: f64,
    /// Most SM share it may use: the whole GPU unless configured.
    pub sm_limit: f64,
}

impl TrainingQuota {
    /// The quota of a bisection result, with `sm_limit = 1.0`.
    pub fn from_profile(profile: &TrainingProfile) -> TrainingQuota {
        TrainingQuota {
            sm_request: f64::from(profile.sm_request_pct) / 100.0,
            sm_limit: 1.0,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::perf::table::LatencyUnit;

    fn model() -> PerfModel {
        // Batch 4: throughput 40, 80, 96, 100 at 25/50/75/100%.
        PerfModel::from_grid(
            "q",
            LatencyUnit::PerBatch,
            vec![1, 4],
            vec![25, 50, 75, 100],
            vec![0.05, 0.04, 0.04, 0.04, 0.1, 0.05, 4.0 / 96.0, 0.04],
        )
        .unwrap()
    }

    fn result(batch: u32, sm_pct: u32, feasible: bool) -> HgsResult {
        HgsResult {
            batch,
            sm_pct,
            te: 0.0,
            latency_s: 0.05,
            throughput: 0.0,
            feasible,
            measured: 3,
        }
    }

    #[test]
    fn limit_is_the_knee_never_below_the_request() {
        let m = model();
        let q = InferenceQuota::from_hgs(&result(4, 25, true), &m).unwrap();
        assert_eq!(q.sm_request, 0.25);
        assert_eq!(q.sm_limit, 0.75);
        assert!((q.capacity_rps - 40.0).abs() < 1e-9);
        let q = InferenceQuota::from_hgs(&result(4, 100, true), &m).unwrap();
        assert_eq!(q.sm_limit, 1.0);
        assert!(matches!(
            InferenceQuota::from_hgs(&result(1, 100, false), &m),
            Err(ProfileError::Infeasible { .. })
        ));
    }

    #[test]
    fn training_limit_is_the_whole_gpu() {
        let q = TrainingQuota::from_profile(&TrainingProfile {
            sm_request_pct: 55,
            measured: 6,
            full_throughput: 1.0,
            throughput: 0.99,
            references: 0,
        });
        assert_eq!((q.sm_request, q.sm_limit), (0.55, 1.0));
    }
}
