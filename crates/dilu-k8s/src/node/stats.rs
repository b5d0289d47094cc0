//! What the node agent did, for metrics, logs and tests: counts, and how long each quota change took from the
//! watch event that carried it to the channel holding it.

use std::collections::VecDeque;
use std::sync::Mutex;
use std::time::Duration;

use dilu_core::sync::lock;

/// Latencies kept (the most recent).
pub const KEPT_LATENCIES: usize = 4096;

#[derive(Debug, Default)]
struct Inner {
    snapshot: NodeStatsSnapshot,
    quota_latencies: VecDeque<u64>,
    attach_latencies: VecDeque<u64>,
}

/// The node agent's counters; shared (`Arc`) between the agent and whoever reads them.
#[derive(Debug, Default)]
pub struct NodeStats {
    inner: Mutex<Inner>,
}

/// A copy of [`NodeStats`].
#[derive(Debug, Clone, Default, PartialEq)]
pub struct NodeStatsSnapshot {
    /// Channels created or updated.
    pub attaches: u64,
    /// Channels removed.
    pub detaches: u64,
    /// Attach or detach calls that failed (retried).
    pub failures: u64,
    /// Reconcile passes.
    pub reconciles: u64,
    /// Lease renewals that succeeded.
    pub lease_renewals: u64,
    /// Lease renewals that failed.
    pub lease_failures: u64,
    /// Times the inventory annotation was written.
    pub inventory_writes: u64,
    /// Pods deleted because the kubelet gave them another device than their assignment.
    pub misplaced_deleted: u64,
    /// Quota changes applied: microseconds from the pod event's arrival to `attach` returning, oldest first
    /// (the last [`KEPT_LATENCIES`]).
    pub quota_latencies_us: Vec<u64>,
    /// New channels: microseconds from the pod event's arrival to `attach` returning (the last
    /// [`KEPT_LATENCIES`]).
    pub attach_latencies_us: Vec<u64>,
}

fn push(list: &mut VecDeque<u64>, latency: Duration) {
    if list.len() == KEPT_LATENCIES {
        list.pop_front();
    }
    list.push_back(u64::try_from(latency.as_micros()).unwrap_or(u64::MAX));
}

impl NodeStats {
    /// A copy of the counters now.
    pub fn snapshot(&self) -> NodeStatsSnapshot {
        let inner = lock(&self.inner);
        let mut s = inner.snapshot.clone();
        s.quota_latencies_us = inner.quota_latencies.iter().copied().collect();
        s.attach_latencies_us = inner.attach_latencies.iter().copied().collect();
        s
    }

    pub(crate) fn update(&self, f: impl FnOnce(&mut NodeStatsSnapshot)) {
        f(&mut lock(&self.inner).snapshot);
    }

    pub(crate) fn quota_applied(&self, latency: Duration) {
        let mut inner = lock(&self.inner);
        inner.snapshot.attaches += 1;
        push(&mut inner.quota_latencies, latency);
    }

    pub(crate) fn attached(&self, latency: Option<Duration>) {
        let mut inner = lock(&self.inner);
        inner.snapshot.attaches += 1;
        if let Some(latency) = latency {
            push(&mut inner.attach_latencies, latency);
        }
    }
}

/// The `q`-quantile (0..=1) of `values` by the nearest-rank method; `None` when empty.
pub fn quantile(values: &[u64], q: f64) -> Option<u64> {
    if values.is_empty() {
        return None;
    }
    let mut sorted = values.to_vec();
    sorted.sort_unstable();
    let rank = (q.clamp(0.0, 1.0) * sorted.len() as f64).ceil() as usize;
    sorted.get(rank.saturating_sub(1)).copied()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantiles_by_nearest_rank_and_latencies_bounded() {
        let values: Vec<u64> = (1..=100).collect();
        assert_eq!(quantile(&values, 0.5), Some(50));
        assert_eq!(quantile(&values, 0.99), Some(99));
        assert_eq!(quantile(&values, 1.0), Some(100));
        assert_eq!(quantile(&[], 0.5), None);
        let stats = NodeStats::default();
        for i in 0..(KEPT_LATENCIES as u64 + 10) {
            stats.quota_applied(Duration::from_micros(i));
        }
        let s = stats.snapshot();
        assert_eq!(s.attaches, KEPT_LATENCIES as u64 + 10);
        assert_eq!(s.quota_latencies_us.len(), KEPT_LATENCIES);
        assert_eq!(s.quota_latencies_us[0], 10);
    }
}
