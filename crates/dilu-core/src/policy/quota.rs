//! What a policy makes of a profiled quota for one instance: what the ledger charges, what the device
//! grants, and what the horizontal scaler counts on.

use crate::request::{InstanceKind, InstanceRequest, SM_MILLI};
use crate::scaling::InstanceLoad;

/// Lowest time quota a hybrid scaler may set (a quota of nothing would starve the instance).
pub const MIN_TIME_QUOTA: f64 = 0.05;

/// One instance's (or one device of a training job's) terms under a policy.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct InstanceQuota {
    /// SM request charged to the ledger, milli.
    pub charge_request: u32,
    /// SM limit charged to the ledger, milli.
    pub charge_limit: u32,
    /// Guaranteed SM·time on its device, fraction: the quota's `request` on the device.
    pub grant_request: f64,
    /// SM partition, the most it may use, fraction: the quota's `limit` on the device.
    pub grant_limit: f64,
    /// Time quota within the partition (time-token policies), fraction; 1 elsewhere.
    pub time_quota: f64,
    /// Requests per second the horizontal scaler counts on per instance.
    pub capacity_rps: f64,
    /// Requests per second at the full time quota.
    pub capacity_full_rps: f64,
    /// Batch size (0: not an inference instance, or unknown).
    pub batch: u32,
    /// Requests per second on the whole GPU at the full time quota (0: unknown).
    pub capacity_whole_rps: f64,
}

/// A share as milli-units of a device, at least 1.
pub fn milli(share: f64) -> u32 {
    ((share * f64::from(SM_MILLI)).round() as u32).clamp(1, SM_MILLI)
}

impl InstanceQuota {
    /// Charged and granted `request..limit` on an SM partition, at the full time quota.
    pub fn spatial(request: f64, limit: f64, capacity_rps: f64) -> InstanceQuota {
        let limit = limit.max(request);
        InstanceQuota {
            charge_request: milli(request),
            charge_limit: milli(limit),
            grant_request: request,
            grant_limit: limit,
            time_quota: 1.0,
            capacity_rps,
            capacity_full_rps: capacity_rps,
            batch: 0,
            capacity_whole_rps: 0.0,
        }
    }

    /// These terms with the profile a latency predictor needs: the batch size and the whole-GPU throughput.
    pub fn with_profile(self, batch: u32, capacity_whole_rps: f64) -> InstanceQuota {
        InstanceQuota {
            batch,
            capacity_whole_rps,
            ..self
        }
    }

    /// These terms with a new time quota (a hybrid scaler's vertical action): the partition stays, the
    /// guaranteed SM·time and the charge become partition × quota. `None` when the quota would not change.
    pub fn with_time_quota(&self, time_quota: f64) -> Option<InstanceQuota> {
        let time_quota = time_quota.clamp(MIN_TIME_QUOTA, 1.0);
        if (time_quota - self.time_quota).abs() < 1e-9 {
            return None;
        }
        let partition = self.grant_limit;
        let charge = ((partition * time_quota * f64::from(SM_MILLI)).round() as u32).max(1);
        Some(InstanceQuota {
            charge_request: charge,
            charge_limit: self.charge_limit.max(charge),
            grant_request: partition * time_quota,
            time_quota,
            ..*self
        })
    }

    /// What the ledger books for one instance of `service` with these terms and `memory_mib` of device
    /// memory (0: none asked).
    pub fn request(&self, kind: InstanceKind, service: &str, memory_mib: u64) -> InstanceRequest {
        InstanceRequest {
            kind,
            service: Some(service.to_string()),
            gpu_count: 1,
            sm_request: self.charge_request,
            sm_limit: self.charge_limit.max(self.charge_request),
            gpu_mem_mib: memory_mib,
            cpu_milli: 0,
            mem_mib: 0,
            gpu_types: Vec::new(),
        }
    }

    /// What a horizontal scaler sees of an instance with these terms: `free_share` is the part of its device
    /// no instance has requested.
    pub fn load(&self, id: u64, ready: bool, free_share: f64) -> InstanceLoad {
        let partition = self.grant_limit;
        InstanceLoad {
            id,
            ready,
            sm_partition: partition,
            time_quota: self.time_quota,
            capacity_at_full_quota: self.capacity_full_rps,
            quota_headroom: if partition > 0.0 {
                (free_share / partition).max(0.0)
            } else {
                0.0
            },
            batch: self.batch,
            capacity_whole_gpu: self.capacity_whole_rps,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_time_quota_change_recharges_partition_times_quota() {
        let q = InstanceQuota::spatial(0.4, 0.4, 10.0);
        let half = q.with_time_quota(0.5).unwrap();
        assert_eq!(
            (half.charge_request, half.charge_limit, half.time_quota),
            (200, 400, 0.5)
        );
        assert!((half.grant_request - 0.2).abs() < 1e-12);
        assert_eq!(half.grant_limit, 0.4);
        assert!(half.with_time_quota(0.5).is_none());
        assert_eq!(q.with_time_quota(0.0).unwrap().time_quota, MIN_TIME_QUOTA);
    }

    #[test]
    fn the_scaler_sees_partition_quota_and_headroom() {
        let mut q = InstanceQuota::spatial(0.2, 0.5, 30.0);
        q.capacity_full_rps = 60.0;
        let l = q.load(7, true, 0.25);
        assert_eq!((l.id, l.sm_partition, l.time_quota), (7, 0.5, 1.0));
        assert_eq!((l.capacity_at_full_quota, l.quota_headroom), (60.0, 0.5));
        assert_eq!(q.load(7, false, -0.1).quota_headroom, 0.0);
    }
}
