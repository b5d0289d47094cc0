//! Horizontal scaling: per function, per interval, decide whether to add or remove instances.

/// What one instance of a function looks like to a horizontal scaler.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct InstanceLoad {
    /// Instance id (stable while the instance lives).
    pub id: u64,
    /// Whether it has finished its cold start and takes traffic.
    pub ready: bool,
    /// SM partition it runs with, as a fraction of the GPU (0, 1].
    pub sm_partition: f64,
    /// Time quota it holds within its partition, fraction (0, 1]. 1.0 for policies without time quotas.
    pub time_quota: f64,
    /// Requests per second it serves at its partition with the full time quota (from the performance model).
    pub capacity_at_full_quota: f64,
    /// How much more time quota its GPU could give it right now (free SM·time / partition), fraction ≥ 0.
    pub quota_headroom: f64,
    /// Batch size it runs (0: unknown). Scalers that predict latency need it (HAS-GPU's capacity rule).
    pub batch: u32,
    /// Requests per second it would serve on the whole GPU at the full quota (0: unknown); with
    /// `capacity_at_full_quota` it is the profile a time-quota latency predictor works from.
    pub capacity_whole_gpu: f64,
}

impl InstanceLoad {
    /// Requests per second this instance serves at its current quota.
    pub fn capacity(&self) -> f64 {
        self.capacity_at_full_quota * self.time_quota
    }
}

/// The load of one function over the last scaling interval, as the scaler sees it.
#[derive(Debug, Clone, Copy)]
pub struct FunctionLoad<'a> {
    /// Current virtual or wall time, nanoseconds.
    pub now_ns: u64,
    /// Length of the interval the counts below cover, seconds.
    pub interval_s: f64,
    /// Requests that arrived for the function during the interval.
    pub arrivals: u64,
    /// Requests waiting (queued anywhere) at the end of the interval.
    pub queued: u64,
    /// Requests answered or given up on during the interval.
    pub answered: u64,
    /// Of those, the ones answered after the function's SLO or given up on.
    pub late: u64,
    /// The function's latency SLO, seconds (0: none).
    pub slo_s: f64,
    /// Requests per second one instance serves at the profiled quota (`docs/algorithms.md` §3).
    pub per_instance_capacity: f64,
    /// Fewest instances the function may have.
    pub min_instances: u32,
    /// Most instances the function may have.
    pub max_instances: u32,
    /// Its instances, ready or starting, in creation order.
    pub instances: &'a [InstanceLoad],
}

impl FunctionLoad<'_> {
    /// Arrival rate over the interval, requests per second.
    pub fn rps(&self) -> f64 {
        if self.interval_s > 0.0 {
            self.arrivals as f64 / self.interval_s
        } else {
            0.0
        }
    }

    /// Number of instances, ready or starting.
    pub fn count(&self) -> u32 {
        self.instances.len() as u32
    }
}

/// A vertical action a hybrid scaler may take on one instance: give it a new time quota.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct QuotaChange {
    /// Instance id.
    pub instance: u64,
    /// New time quota, fraction (0, 1].
    pub time_quota: f64,
}

/// What a horizontal scaler wants done after one interval.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ScaleDecision {
    /// Instances to add (with the profiled quota).
    pub add: u32,
    /// Instances to remove, by id. The caller removes them after their in-flight work drains.
    pub remove: Vec<u64>,
    /// Quota changes to apply first (hybrid scalers only).
    pub quota: Vec<QuotaChange>,
    /// Why, in words with the numbers ("22 of 40 samples above 18.6 req/s"); empty when the scaler gives none.
    pub reason: String,
}

impl ScaleDecision {
    /// Nothing to do.
    pub fn hold() -> Self {
        Self::default()
    }

    /// Whether the decision changes nothing.
    pub fn is_hold(&self) -> bool {
        self.add == 0 && self.remove.is_empty() && self.quota.is_empty()
    }
}

/// Decides, once per interval and per function, how many instances it should have.
pub trait HorizontalScaler: Send {
    /// The policy's name.
    fn name(&self) -> &'static str;

    /// How often the caller must call [`HorizontalScaler::decide`], nanoseconds.
    fn interval_ns(&self) -> u64;

    /// Looks at the last interval's load and decides. Called exactly once per interval.
    fn decide(&mut self, load: &FunctionLoad<'_>) -> ScaleDecision;
}
