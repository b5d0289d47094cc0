//! A function's profile: the quota, batch and capacity it runs with, and how they were found.

use dilu_core::profiler::InferenceQuota;
use serde::{Deserialize, Serialize};

/// How a profile was obtained.
pub mod source {
    /// Given in the spec (quota and capacity).
    pub const SPEC: &str = "spec";
    /// Profiled: Hybrid Growth Search and the limit knee on a live instance.
    pub const HGS: &str = "hgs";
    /// Quota given, capacity measured at it.
    pub const CALIBRATED: &str = "calibrated";
    /// Training: bisection for the share keeping 98 % of the whole-device rate.
    pub const BISECTION: &str = "bisection";
}

/// What profiling (or calibration, or the spec) found for a function.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Profile {
    /// Guaranteed share.
    pub request: f64,
    /// Burst limit.
    pub limit: f64,
    /// Batch size the worker forms (0 for training).
    pub batch: u32,
    /// Requests per second one instance serves at `request` (training: iterations per second).
    pub capacity_rps: f64,
    /// Requests per second one instance serves with the whole device, when measured.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub capacity_full_rps: Option<f64>,
    /// Latency measured at the chosen point, seconds (inference).
    pub latency_s: Option<f64>,
    /// How it was obtained: `spec`, `hgs`, `calibrated` or `bisection` ([`source`]).
    pub source: String,
    /// Points measured on a live instance.
    pub measurements: u32,
    /// Wall time the profiling took, seconds.
    pub seconds: f64,
}

impl Profile {
    /// The profile as the policy registry reads it.
    pub fn inference_quota(&self) -> InferenceQuota {
        InferenceQuota {
            batch: self.batch.max(1),
            sm_request: self.request,
            sm_limit: self.limit.max(self.request),
            capacity_rps: self.capacity_rps,
            capacity_full_rps: self.capacity_full_rps.unwrap_or(self.capacity_rps),
        }
    }
}
