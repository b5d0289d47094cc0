//! HAS-GPU's hybrid autoscaler (`docs/policies.md`, `docs/baselines.md`): predicts the next interval's rate
//! with a biased Kalman filter, counts each instance's capacity with a time-quota latency predictor (RaPP's
//! role) and HAS-GPU's latency → throughput rule, then scales VERTICALLY FIRST (raise or lower instances' time
//! quotas in 10-point steps) and horizontally only for what quotas cannot cover.

use super::fast_gshare::RateWindow;
use super::horizontal::{FunctionLoad, HorizontalScaler, InstanceLoad, QuotaChange, ScaleDecision};
use super::lazy::{
    EPS, MAX_SECONDS, bounds, capacity_known, ceil_count, finish, require, require_seconds,
    seconds_to_ns, towards,
};
use crate::error::FieldError;
use crate::perf::QuotaLatencyModel;
use serde::{Deserialize, Serialize};
use std::cmp::Reverse;

/// HAS-GPU's load predictor: a scalar Kalman filter (A = H = 1) whose estimate is pushed up by `alpha·√P` and
/// floored at `measurement + min_buffer`, so the autoscaler provisions slightly above what it measured.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct KalmanRps {
    q: f64,
    r: f64,
    alpha: f64,
    min_buffer: f64,
    /// Current estimate, requests per second.
    x: f64,
    /// Current estimate variance.
    p: f64,
}

impl KalmanRps {
    /// A filter with process noise `q`, measurement noise `r`, bias factor `alpha` and floor offset
    /// `min_buffer` (HAS-GPU: 1, 10, 1, 5), starting, as HAS-GPU does, from estimate 0 with variance 1.
    /// Expects the ranges [`HasConfig::validate`] checks; a degenerate `q + r = 0` trusts the measurement.
    pub fn new(q: f64, r: f64, alpha: f64, min_buffer: f64) -> Self {
        KalmanRps {
            q,
            r,
            alpha,
            min_buffer,
            x: 0.0,
            p: 1.0,
        }
    }

    /// Feeds one measured rate (negative or non-finite reads as 0) and returns the prediction for the next
    /// interval, requests per second; never below `measurement + min_buffer`.
    pub fn update(&mut self, measurement: f64) -> f64 {
        let z = if measurement.is_finite() {
            measurement.max(0.0)
        } else {
            0.0
        };
        let x_pred = self.x;
        let p_pred = self.p + self.q;
        let s = p_pred + self.r;
        let k = if s > 0.0 { p_pred / s } else { 1.0 };
        self.x = x_pred + k * (z - x_pred);
        self.p = ((1.0 - k) * p_pred).max(0.0);
        self.x += self.alpha * self.p.sqrt();
        if self.x < z + self.min_buffer {
            self.x = z + self.min_buffer;
        }
        self.x
    }

    /// The current prediction, requests per second (0 before the first update).
    pub fn estimate(&self) -> f64 {
        self.x
    }

    /// The current estimate variance `P`.
    pub fn variance(&self) -> f64 {
        self.p
    }
}

/// Settings of [`HasScaler`]; the defaults are the constants of the published HAS-GPU controller.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct HasConfig {
    /// How often the control loop runs, seconds (2.0).
    pub interval_s: f64,
    /// Window of the measured rate fed to the filter, seconds (Prometheus `rate(...[10s])`: 10.0).
    pub rate_window_s: f64,
    /// Scale up when the prediction exceeds this fraction of capacity (`ScaleUpThredshold`: 0.9).
    pub up_threshold: f64,
    /// Scale down when the prediction is below this fraction of capacity (`ScaleDownThredshold`: 0.3).
    pub down_threshold: f64,
    /// Time-quota step of vertical scaling, fraction (`DeltaIq` = 10 points: 0.10).
    pub quota_step: f64,
    /// Lowest time quota vertical scale-down leaves an instance, fraction (`MinQuota` = 10 points: 0.10).
    pub min_quota: f64,
    /// Least time between two scale-downs, seconds (`ScaleDownCooldownPeriod`: 10.0).
    pub down_cooldown_s: f64,
    /// Instances with an SM partition at most this are removed first (HAS-GPU deletes pods with SM ≤ 50: 0.5).
    pub small_partition: f64,
    /// Kalman process noise `Q` (1.0).
    pub kalman_q: f64,
    /// Kalman measurement noise `R` (10.0).
    pub kalman_r: f64,
    /// Kalman positive bias factor: the prediction gets `alpha·√P` added (1.0).
    pub kalman_alpha: f64,
    /// The prediction is at least the measurement plus this, requests per second (`minBuffer`: 5.0).
    pub kalman_min_buffer: f64,
    /// Time outside the GPU added to a predicted batch latency before it becomes a throughput, milliseconds.
    /// HAS-GPU adds 70 ms for preprocessing and HTTP in its deployment (`getThroughput`); the simulated
    /// request path has no such cost, hence 0.
    pub request_overhead_ms: f64,
    /// The latency predictor (RaPP's role): latency at (batch, SM partition, time quota) from the instance's
    /// profile. Default: the simulator's own time-token model ([`QuotaLatencyModel::FLUID`]), which is what a
    /// predictor fitted on the simulated device's profiles gives; [`QuotaLatencyModel::RAPP_V100`] is the fit on
    /// RaPP's V100 measurements.
    pub predictor: QuotaLatencyModel,
}

impl Default for HasConfig {
    fn default() -> Self {
        HasConfig {
            interval_s: 2.0,
            rate_window_s: 10.0,
            up_threshold: 0.9,
            down_threshold: 0.3,
            quota_step: 0.10,
            min_quota: 0.10,
            down_cooldown_s: 10.0,
            small_partition: 0.5,
            kalman_q: 1.0,
            kalman_r: 10.0,
            kalman_alpha: 1.0,
            kalman_min_buffer: 5.0,
            request_overhead_ms: 0.0,
            predictor: QuotaLatencyModel::FLUID,
        }
    }
}

impl HasConfig {
    /// Checks positive interval and window, `0 ≤ down < up ≤ 1`, step and minimum quota in (0, 1], a cooldown
    /// in [0, 86400] s, a partition threshold in [0, 1], `Q ≥ 0`, `R > 0`, `alpha ≥ 0`, `min_buffer ≥ 0`, an
    /// overhead in [0, 10000] ms and the predictor's ranges.
    pub fn validate(&self) -> Result<(), FieldError> {
        const S: &str = "has";
        let fraction = |v: f64| v.is_finite() && v > 0.0 && v <= 1.0;
        let non_negative = |v: f64| v.is_finite() && v >= 0.0;
        require_seconds(S, "interval_s", self.interval_s)?;
        require_seconds(S, "rate_window_s", self.rate_window_s)?;
        require(
            fraction(self.up_threshold),
            S,
            "up_threshold",
            self.up_threshold,
            "must lie in (0, 1]",
        )?;
        require(
            non_negative(self.down_threshold) && self.down_threshold < self.up_threshold,
            S,
            "down_threshold",
            self.down_threshold,
            "must lie in [0, up_threshold)",
        )?;
        require(
            fraction(self.quota_step),
            S,
            "quota_step",
            self.quota_step,
            "must lie in (0, 1]",
        )?;
        require(
            fraction(self.min_quota),
            S,
            "min_quota",
            self.min_quota,
            "must lie in (0, 1]",
        )?;
        require(
            non_negative(self.down_cooldown_s) && self.down_cooldown_s <= MAX_SECONDS,
            S,
            "down_cooldown_s",
            self.down_cooldown_s,
            "must lie in [0, 86400] seconds",
        )?;
        require(
            non_negative(self.small_partition) && self.small_partition <= 1.0,
            S,
            "small_partition",
            self.small_partition,
            "must lie in [0, 1]",
        )?;
        require(
            non_negative(self.kalman_q),
            S,
            "kalman_q",
            self.kalman_q,
            "must be finite and at least 0",
        )?;
        require(
            self.kalman_r.is_finite() && self.kalman_r > 0.0,
            S,
            "kalman_r",
            self.kalman_r,
            "must be finite and above 0",
        )?;
        require(
            non_negative(self.kalman_alpha),
            S,
            "kalman_alpha",
            self.kalman_alpha,
            "must be finite and at least 0",
        )?;
        require(
            non_negative(self.kalman_min_buffer),
            S,
            "kalman_min_buffer",
            self.kalman_min_buffer,
            "must be finite and at least 0",
        )?;
        require(
            non_negative(self.request_overhead_ms) && self.request_overhead_ms <= 10_000.0,
            S,
            "request_overhead_ms",
            self.request_overhead_ms,
            "must lie in [0, 10000] milliseconds",
        )?;
        self.predictor.validate("has.predictor")
    }
}

/// Rounds a quota to a millionth, so repeated 0.1 steps land on 0.3, not 0.30000000000000004.
fn round_quota(q: f64) -> f64 {
    (q * 1e6).round() / 1e6
}

/// A finite, non-negative number, or 0.
fn sane(v: f64) -> f64 {
    if v.is_finite() { v.max(0.0) } else { 0.0 }
}

/// HAS-GPU's hybrid scaler for one function (`has_autoscaling.go`): with `C` the predicted capacity of its
/// instances, scale up when the prediction exceeds `0.9·C` by raising quotas (largest SM partitions first, in
/// 10-point steps until the predicted gain covers the deficit `pred − 0.9·C`, bounded by the GPU's headroom),
/// then adding instances for the rest; scale down when it is under `0.3·C` by lowering quotas (smallest
/// partitions first, down to 10%) until the surplus `0.9·C − pred` is covered, then removing small-partition
/// instances whose capacity fits in what is left; a 10 s cooldown between scale-downs, never fewer than one
/// instance.
#[derive(Debug, Clone)]
pub struct HasScaler {
    config: HasConfig,
    window: RateWindow,
    kalman: KalmanRps,
    /// When the last scale-down (quota or instance) was decided.
    last_down_ns: Option<u64>,
}

impl HasScaler {
    /// A scaler with `config`, or the rule it breaks.
    pub fn new(config: HasConfig) -> Result<Self, FieldError> {
        config.validate()?;
        Ok(HasScaler {
            config,
            window: RateWindow::default(),
            kalman: KalmanRps::new(
                config.kalman_q,
                config.kalman_r,
                config.kalman_alpha,
                config.kalman_min_buffer,
            ),
            last_down_ns: None,
        })
    }

    /// The configuration it runs with.
    pub fn config(&self) -> &HasConfig {
        &self.config
    }

    /// The last predicted rate, requests per second: what the last decision provisioned for.
    pub fn prediction(&self) -> f64 {
        self.kalman.estimate()
    }

    /// Predicted requests per second of `inst` at time quota `quota`: the predictor's batch latency at its
    /// partition and quota, turned into a throughput with HAS-GPU's rule `((batch + 1) / 2) / (latency +
    /// overhead)` (a batch is assumed half full on average). Without a profile (batch or whole-GPU capacity
    /// unknown) it is the partition's capacity times the quota.
    pub fn predicted_capacity(&self, inst: &InstanceLoad, quota: f64) -> f64 {
        let c_partition = sane(inst.capacity_at_full_quota);
        let c_whole = sane(inst.capacity_whole_gpu);
        let quota = sane(quota).min(1.0);
        if c_partition <= 0.0 || quota <= 0.0 {
            return 0.0;
        }
        if inst.batch == 0 || c_whole <= 0.0 {
            return c_partition * quota;
        }
        let b = f64::from(inst.batch);
        let latency = self
            .config
            .predictor
            .latency(b / c_partition, b / c_whole, quota);
        let denominator = latency + self.config.request_overhead_ms / 1000.0;
        if denominator.is_finite() && denominator > 0.0 {
            (b + 1.0) / 2.0 / denominator
        } else {
            0.0
        }
    }

    /// Raises quotas, largest SM partitions first, in `quota_step`s until each one's predicted gain covers
    /// what is left of `deficit`; adds instances (each predicted at the policy's starting configuration) for
    /// the rest.
    fn scale_up(&self, load: &FunctionLoad<'_>, mut deficit: f64) -> ScaleDecision {
        let step = self.config.quota_step;
        let mut order: Vec<&InstanceLoad> = load.instances.iter().collect();
        order.sort_by(|a, b| {
            b.sm_partition
                .total_cmp(&a.sm_partition)
                .then(a.id.cmp(&b.id))
        });
        let mut decision = ScaleDecision::hold();
        for inst in order.iter().copied() {
            if deficit <= EPS {
                break;
            }
            let q = inst.time_quota;
            if !q.is_finite() || q <= 0.0 {
                continue;
            }
            let available = sane(inst.quota_headroom).min(1.0 - q).max(0.0);
            let now = self.predicted_capacity(inst, q);
            let (mut new_q, mut gain, mut k) = (q, 0.0, 1.0);
            while k * step <= available + EPS && gain < deficit {
                new_q = round_quota(q + k * step).min(1.0);
                gain = self.predicted_capacity(inst, new_q) - now;
                k += 1.0;
            }
            if new_q > q + EPS {
                deficit -= gain;
                decision.quota.push(QuotaChange {
                    instance: inst.id,
                    time_quota: new_q,
                });
            }
        }
        if deficit > EPS && capacity_known(load) {
            // A new instance starts from the policy's configuration: its partition at the full quota.
            let unit = order.first().map_or(load.per_instance_capacity, |first| {
                let fresh = InstanceLoad {
                    time_quota: 1.0,
                    capacity_at_full_quota: load.per_instance_capacity,
                    ..**first
                };
                self.predicted_capacity(&fresh, 1.0)
            });
            if unit > 0.0 {
                decision.add = ceil_count(deficit / unit);
            }
        }
        decision
    }

    /// Lowers quotas, smallest SM partitions first (newest first among equals), in `quota_step`s down to
    /// `min_quota` until each one's predicted loss covers what is left of `surplus`; then removes instances
    /// with a partition of at most `small_partition` whose predicted capacity fits in what is still left,
    /// keeping at least `max(1, min_instances)`.
    fn scale_down(&self, load: &FunctionLoad<'_>, mut surplus: f64) -> ScaleDecision {
        let step = self.config.quota_step;
        let floor_q = self.config.min_quota;
        let mut caps: Vec<f64> = load
            .instances
            .iter()
            .map(|i| self.predicted_capacity(i, i.time_quota))
            .collect();
        let mut order: Vec<usize> = (0..load.instances.len()).collect();
        order.sort_by(|&a, &b| {
            let (x, y) = (&load.instances[a], &load.instances[b]);
            x.sm_partition
                .total_cmp(&y.sm_partition)
                .then(Reverse(a).cmp(&Reverse(b)))
        });
        let mut decision = ScaleDecision::hold();
        for &i in &order {
            if surplus <= EPS {
                break;
            }
            let inst = &load.instances[i];
            let q = inst.time_quota;
            if !q.is_finite() {
                continue;
            }
            let (mut new_q, mut loss, mut k) = (q, 0.0, 1.0);
            loop {
                let next = round_quota(q - k * step);
                if next < floor_q - EPS || loss >= surplus {
                    break;
                }
                new_q = next;
                loss = caps[i] - self.predicted_capacity(inst, next);
                k += 1.0;
            }
            if new_q < q - EPS {
                surplus -= loss;
                caps[i] -= loss;
                decision.quota.push(QuotaChange {
                    instance: inst.id,
                    time_quota: new_q,
                });
            }
        }
        let (min, _) = bounds(load);
        let keep = min.max(1);
        let mut count = load.count();
        let small = self.config.small_partition;
        for &i in &order {
            if surplus <= EPS || count <= keep {
                break;
            }
            let inst = &load.instances[i];
            if inst.sm_partition > small + EPS || caps[i] > surplus + EPS {
                continue;
            }
            surplus -= caps[i];
            count -= 1;
            decision.remove.push(inst.id);
        }
        decision
    }
}

impl HorizontalScaler for HasScaler {
    fn name(&self) -> &'static str {
        "has"
    }

    fn interval_ns(&self) -> u64 {
        seconds_to_ns(self.config.interval_s)
    }

    fn decide(&mut self, load: &FunctionLoad<'_>) -> ScaleDecision {
        let now = load.now_ns;
        let window_ns = seconds_to_ns(self.config.rate_window_s);
        self.window.push(
            now,
            seconds_to_ns(load.interval_s),
            load.arrivals,
            window_ns,
        );
        let pred = self.kalman.update(self.window.rate(now, window_ns));

        let n = load.count();
        let (min, _) = bounds(load);
        if n < min.max(1) {
            // HAS-GPU's scale-to-1 policy: a function always has an instance.
            return finish(load, towards(load, min.max(1)));
        }
        let capacity: f64 = load
            .instances
            .iter()
            .map(|i| self.predicted_capacity(i, i.time_quota))
            .sum();
        let up = self.config.up_threshold;
        if pred > up * capacity + EPS {
            return finish(load, self.scale_up(load, pred - up * capacity));
        }
        if pred < self.config.down_threshold * capacity - EPS {
            let cooldown_ns = seconds_to_ns(self.config.down_cooldown_s);
            if self
                .last_down_ns
                .is_some_and(|t| now.saturating_sub(t) < cooldown_ns)
            {
                return finish(load, ScaleDecision::hold());
            }
            let decision = finish(load, self.scale_down(load, up * capacity - pred));
            if !decision.is_hold() {
                self.last_down_ns = Some(now);
            }
            return decision;
        }
        finish(load, ScaleDecision::hold())
    }
}

#[cfg(test)]
mod tests {
    use super::super::NANOS_PER_SEC;
    use super::*;

    fn inst(id: u64, sm: f64, quota: f64, full: f64, headroom: f64) -> InstanceLoad {
        InstanceLoad {
            id,
            ready: true,
            sm_partition: sm,
            time_quota: quota,
            capacity_at_full_quota: full,
            quota_headroom: headroom,
            batch: 0,
            capacity_whole_gpu: 0.0,
        }
    }

    /// A 2-second tick at second `sec` with `rps` arrivals per second.
    fn tick(
        sec: u64,
        rps: u64,
        cap: f64,
        min: u32,
        max: u32,
        instances: &[InstanceLoad],
    ) -> FunctionLoad<'_> {
        FunctionLoad {
            now_ns: sec * NANOS_PER_SEC,
            interval_s: 2.0,
            arrivals: 2 * rps,
            queued: 0,
            answered: 0,
            late: 0,
            slo_s: 0.0,
            per_instance_capacity: cap,
            min_instances: min,
            max_instances: max,
            instances,
        }
    }

    fn quota_of(d: &ScaleDecision, id: u64) -> Option<f64> {
        d.quota
            .iter()
            .find(|q| q.instance == id)
            .map(|q| q.time_quota)
    }

    #[test]
    fn kalman_matches_hand_computation() {
        let mut k = KalmanRps::new(1.0, 10.0, 1.0, 5.0);
        assert_eq!(k.estimate(), 0.0);
        // P' = 2, K = 1/6, x = 0, P = 5/3, x += sqrt(5/3) = 1.29 < 0 + 5: floored to 5.
        assert!((k.update(0.0) - 5.0).abs() < 1e-12);
        assert!((k.variance() - 5.0 / 3.0).abs() < 1e-12);
        // From 5 towards 100: P' = 8/3, K = 8/38, x = 5 + 95 K + sqrt(P) = 26.45, floored to 105.
        assert!((k.update(100.0) - 105.0).abs() < 1e-12);
        let p = (1.0 - 8.0 / 38.0) * (8.0 / 3.0);
        assert!((k.variance() - p).abs() < 1e-12);
    }

    #[test]
    fn kalman_settles_just_above_a_steady_rate_and_decays_after_a_drop() {
        let mut k = KalmanRps::new(1.0, 10.0, 1.0, 5.0);
        for _ in 0..200 {
            k.update(50.0);
        }
        // Steady state: P^2 + P - 10 = 0, K = (P + 1) / (P + 11), and x = x + K (m - x) + sqrt(P), so
        // x = m + sqrt(P) / K = 56.08: above the m + 5 floor.
        let p = (-1.0 + 41f64.sqrt()) / 2.0;
        let gain = (p + 1.0) / (p + 11.0);
        let expected = 50.0 + p.sqrt() / gain;
        assert!(
            (k.estimate() - expected).abs() < 1e-6,
            "{} vs {expected}",
            k.estimate()
        );
        assert!(k.estimate() > 55.0);
        // After the load vanishes the prediction falls gradually, never below the 5 rps buffer.
        let first = k.update(0.0);
        assert!(first > 30.0 && first < 50.0, "{first}");
        let mut last = first;
        for _ in 0..50 {
            let x = k.update(0.0);
            assert!(x <= last + 1e-9 && x >= 5.0);
            last = x;
        }
        // The no-traffic fixed point: x K = sqrt(P).
        assert!((last - p.sqrt() / gain).abs() < 1e-3, "{last}");
    }

    #[test]
    fn kalman_without_bias_or_buffer_is_a_plain_filter_floored_at_the_measurement() {
        let mut k = KalmanRps::new(1.0, 10.0, 0.0, 0.0);
        // K = 1/6 would give 2, but the estimate is never below the measurement.
        assert!((k.update(12.0) - 12.0).abs() < 1e-12);
        // Falling: P' = 5/3 + 1 = 8/3, K = 8/38, x = 12 (1 - K) = 9.47, above the measurement 0.
        assert!((k.update(0.0) - 12.0 * 30.0 / 38.0).abs() < 1e-12);
        assert_eq!(KalmanRps::new(0.0, 0.0, 0.0, 0.0).update(f64::NAN), 0.0);
    }

    #[test]
    fn defaults_and_validation() {
        let c = HasConfig::default();
        assert!(c.validate().is_ok());
        assert_eq!(HasScaler::new(c).unwrap().interval_ns(), 2 * NANOS_PER_SEC);
        let err = HasConfig {
            down_threshold: 0.95,
            ..c
        }
        .validate()
        .unwrap_err();
        assert_eq!(
            (err.field.as_str(), err.value.as_str()),
            ("has.down_threshold", "0.95")
        );
        assert_eq!(
            HasConfig { kalman_r: 0.0, ..c }
                .validate()
                .unwrap_err()
                .field,
            "has.kalman_r"
        );
        assert_eq!(
            HasConfig {
                quota_step: 0.0,
                ..c
            }
            .validate()
            .unwrap_err()
            .field,
            "has.quota_step"
        );
        assert_eq!(
            HasConfig {
                down_cooldown_s: -1.0,
                ..c
            }
            .validate()
            .unwrap_err()
            .field,
            "has.down_cooldown_s"
        );
    }

    #[test]
    fn raises_quotas_before_adding_instances() {
        // One instance: quota 0.4 of 100 rps = 40 rps. Measured 49 rps -> predicted 54 > 0.9 x 40.
        // Target 54 / 0.9 = 60: two steps (0.4 -> 0.6) cover it, no new instance.
        let insts = [inst(1, 0.5, 0.4, 100.0, 0.6)];
        let mut s = HasScaler::new(HasConfig::default()).unwrap();
        let d = s.decide(&tick(2, 49, 40.0, 1, 10, &insts));
        assert!((s.prediction() - 54.0).abs() < 1e-9);
        assert_eq!(d.add, 0);
        assert_eq!(
            d.quota,
            vec![QuotaChange {
                instance: 1,
                time_quota: 0.6
            }]
        );
    }

    #[test]
    fn quota_raises_respect_headroom_and_one_then_go_horizontal() {
        // Headroom 0.15 allows one step (0.5 = 50 rps); 10 rps left -> one instance of 40 rps.
        let insts = [inst(1, 0.5, 0.4, 100.0, 0.15)];
        let mut s = HasScaler::new(HasConfig::default()).unwrap();
        let d = s.decide(&tick(2, 49, 40.0, 1, 10, &insts));
        assert_eq!(
            d.quota,
            vec![QuotaChange {
                instance: 1,
                time_quota: 0.5
            }]
        );
        assert_eq!(d.add, 1);
        // At quota 0.95 no 0.1 step fits under 1.0, whatever the headroom: all of the deficit goes horizontal.
        let insts = [inst(1, 0.5, 0.95, 50.0, 1.0)];
        let mut s = HasScaler::new(HasConfig::default()).unwrap();
        let d = s.decide(&tick(2, 95, 20.0, 1, 10, &insts)); // pred 100, capacity 47.5
        assert!(d.quota.is_empty());
        assert_eq!(
            d.add, 3,
            "deficit 100 - 0.9 x 47.5 = 57.25: ceil(57.25 / 20)"
        );
    }

    #[test]
    fn largest_sm_partitions_are_raised_first() {
        // Capacity 20 + 20 = 40; pred 54, deficit 54 - 36 = 18: the 0.6-SM instance (id 2) takes two steps.
        let insts = [inst(1, 0.3, 0.2, 100.0, 0.8), inst(2, 0.6, 0.2, 100.0, 0.8)];
        let mut s = HasScaler::new(HasConfig::default()).unwrap();
        let d = s.decide(&tick(2, 49, 40.0, 1, 10, &insts));
        assert_eq!(
            d.quota,
            vec![QuotaChange {
                instance: 2,
                time_quota: 0.4
            }]
        );
        assert_eq!(d.add, 0);
        // Deficit 114 - 36 = 78: id 2 rises until its gain covers it (0.2 -> 1.0, +80); id 1 is left alone.
        let mut s = HasScaler::new(HasConfig::default()).unwrap();
        let d = s.decide(&tick(2, 109, 40.0, 1, 10, &insts));
        assert_eq!(quota_of(&d, 2), Some(1.0));
        assert_eq!(quota_of(&d, 1), None);
        assert_eq!(d.add, 0);
        // Deficit 134 - 36 = 98: id 2 reaches 1.0 (+80) and id 1 covers the remaining 18 in two steps.
        let mut s = HasScaler::new(HasConfig::default()).unwrap();
        let d = s.decide(&tick(2, 129, 40.0, 1, 10, &insts));
        assert_eq!(
            (quota_of(&d, 2), quota_of(&d, 1), d.add),
            (Some(1.0), Some(0.4), 0)
        );
    }

    #[test]
    fn scale_down_lowers_small_partitions_first_then_removes_and_keeps_one() {
        // Capacity 200; no traffic -> pred 5 < 0.3 x 200; surplus 0.9 x 200 - 5 = 175.
        let insts = [inst(1, 0.3, 1.0, 100.0, 0.0), inst(2, 0.6, 1.0, 100.0, 0.0)];
        let mut s = HasScaler::new(HasConfig::default()).unwrap();
        let d = s.decide(&tick(2, 0, 40.0, 1, 10, &insts));
        // Both go down to the 0.1 floor (-90 each covers 175), so no instance has to go yet.
        assert_eq!((quota_of(&d, 1), quota_of(&d, 2)), (Some(0.1), Some(0.1)));
        assert!(d.remove.is_empty() && d.add == 0);
        // After the cooldown, at the floor (capacity 20, pred 5 < 6): surplus 18 - 5 = 13 removes the small-SM
        // instance (10 rps), and the last one stays.
        let floor = [inst(1, 0.3, 0.1, 100.0, 0.0), inst(2, 0.6, 0.1, 100.0, 0.0)];
        let d = s.decide(&tick(12, 0, 40.0, 1, 10, &floor));
        assert_eq!(d.remove, vec![1]);
        assert!(d.quota.is_empty());
    }

    #[test]
    fn scale_down_lowers_quotas_until_the_surplus_is_covered() {
        // 30 rps measured -> pred 35; capacity 200 (35 < 60); surplus 180 - 35 = 145.
        // Smallest SM first: id 1 goes 1.0 -> 0.1 (-90), id 2 steps until its loss covers 55: 1.0 -> 0.4 (-60).
        let insts = [inst(1, 0.3, 1.0, 100.0, 0.0), inst(2, 0.6, 1.0, 100.0, 0.0)];
        let mut s = HasScaler::new(HasConfig::default()).unwrap();
        let d = s.decide(&tick(2, 30, 40.0, 1, 10, &insts));
        assert_eq!(quota_of(&d, 1), Some(0.1));
        assert_eq!(quota_of(&d, 2), Some(0.4));
        assert!(d.remove.is_empty());
    }

    #[test]
    fn scale_down_honours_the_cooldown() {
        // Five instances at the quota floor (10 rps each, capacity 50); pred 5; surplus 45 - 5 = 40: the newest
        // four go.
        let insts: Vec<InstanceLoad> = (1..=5).map(|id| inst(id, 0.3, 0.1, 100.0, 0.0)).collect();
        let mut s = HasScaler::new(HasConfig::default()).unwrap();
        let d = s.decide(&tick(2, 0, 10.0, 1, 10, &insts));
        assert_eq!(d.remove, vec![5, 4, 3, 2]);
        // The caller has not removed them yet: the same view is still far below 0.3x, but cooling down.
        for sec in [4, 6, 8, 10] {
            assert!(
                s.decide(&tick(sec, 0, 10.0, 1, 10, &insts)).is_hold(),
                "cooldown at {sec}s"
            );
        }
        assert!(
            !s.decide(&tick(12, 0, 10.0, 1, 10, &insts)).is_hold(),
            "10 s after the last scale-down"
        );
    }

    #[test]
    fn only_small_partitions_are_removed() {
        let big = inst(1, 0.8, 0.1, 100.0, 0.0);
        let mut starting = inst(2, 0.8, 0.1, 100.0, 0.0);
        starting.ready = false;
        let small = inst(3, 0.4, 0.1, 100.0, 0.0);
        let insts = [big, starting, small, inst(4, 0.8, 0.1, 100.0, 0.0)];
        let mut s = HasScaler::new(HasConfig::default()).unwrap();
        // Capacity 40, pred 5, surplus 36 - 5 = 31: HAS-GPU deletes only pods with SM <= 50.
        let d = s.decide(&tick(2, 0, 10.0, 1, 10, &insts));
        assert_eq!(d.remove, vec![3]);
    }

    #[test]
    fn capacity_comes_from_the_predicted_latency_and_half_full_batches() {
        // ResNet-152 at batch 16: 40 ms on its 0.3 partition (400 rps), 25.85 ms on the whole GPU.
        let resnet = InstanceLoad {
            batch: 16,
            capacity_whole_gpu: 16.0 / 0.02585,
            ..inst(1, 0.3, 1.0, 400.0, 0.0)
        };
        let fluid = HasScaler::new(HasConfig::default()).unwrap();
        // ((16 + 1) / 2) / 40 ms = 212.5 rps at the full quota; the fluid predictor doubles the latency at 0.5.
        assert!((fluid.predicted_capacity(&resnet, 1.0) - 212.5).abs() < 1e-9);
        assert!((fluid.predicted_capacity(&resnet, 0.5) - 106.25).abs() < 1e-9);
        // HAS-GPU's deployment overhead of 70 ms: 8.5 / 0.110 s.
        let overhead = HasScaler::new(HasConfig {
            request_overhead_ms: 70.0,
            ..HasConfig::default()
        })
        .unwrap();
        assert!((overhead.predicted_capacity(&resnet, 1.0) - 8.5 / 0.11).abs() < 1e-9);
        // RaPP's V100 fit: the slicing bound 40^0.05 x 25.85^0.95 ms / 0.5^1.094 = 56.4 ms at quota 0.5.
        let rapp = HasScaler::new(HasConfig {
            predictor: QuotaLatencyModel::RAPP_V100,
            ..HasConfig::default()
        })
        .unwrap();
        let c = rapp.predicted_capacity(&resnet, 0.5);
        assert!((c - 8.5 / 0.056_38).abs() < 0.1, "{c}");
        // Without a profile: the partition's capacity times the quota.
        assert_eq!(
            fluid.predicted_capacity(&inst(2, 0.3, 0.5, 400.0, 0.0), 0.5),
            200.0
        );
    }

    #[test]
    fn quota_steps_use_the_predicted_gain() {
        // At quota 0.5 the resnet instance is predicted at 106.25 rps; 100 rps -> pred 105 > 95.6; deficit 9.4:
        // one step to 0.6 (127.5 rps, +21.25) covers it.
        let resnet = [InstanceLoad {
            batch: 16,
            capacity_whole_gpu: 16.0 / 0.02585,
            ..inst(1, 0.3, 0.5, 400.0, 0.5)
        }];
        let mut s = HasScaler::new(HasConfig::default()).unwrap();
        let d = s.decide(&tick(2, 100, 400.0, 1, 10, &resnet));
        assert_eq!((quota_of(&d, 1), d.add), (Some(0.6), 0));
        // At 300 rps no quota is enough: 1.0 gives 212.5; deficit 305 - 95.6 - 106.25 = 103.1 is left for new
        // instances predicted at 212.5 each: one.
        let mut s = HasScaler::new(HasConfig::default()).unwrap();
        let d = s.decide(&tick(2, 300, 400.0, 1, 10, &resnet));
        assert_eq!((quota_of(&d, 1), d.add), (Some(1.0), 1));
    }

    #[test]
    fn respects_min_max_and_scale_to_one() {
        // No instances: one is created at once, even with no traffic and min 0 (HAS-GPU's scale-to-1).
        let mut s = HasScaler::new(HasConfig::default()).unwrap();
        assert_eq!(s.decide(&tick(2, 0, 10.0, 0, 10, &[])).add, 1);
        let mut s = HasScaler::new(HasConfig::default()).unwrap();
        assert_eq!(s.decide(&tick(2, 0, 10.0, 3, 10, &[])).add, 3);
        // Never below max(1, min).
        let insts: Vec<InstanceLoad> = (1..=3).map(|id| inst(id, 0.3, 0.1, 100.0, 0.0)).collect();
        let mut s = HasScaler::new(HasConfig::default()).unwrap();
        let d = s.decide(&tick(2, 0, 10.0, 0, 10, &insts));
        assert_eq!(d.remove, vec![3, 2]);
        let mut s = HasScaler::new(HasConfig::default()).unwrap();
        assert_eq!(
            s.decide(&tick(2, 0, 10.0, 3, 10, &insts)).remove,
            Vec::<u64>::new()
        );
        // Never above max.
        let one = [inst(1, 0.5, 1.0, 10.0, 0.0)];
        let mut s = HasScaler::new(HasConfig::default()).unwrap();
        assert_eq!(s.decide(&tick(2, 1_000, 10.0, 1, 4, &one)).add, 3);
    }
}
