//! Dilu's lazy horizontal scaler (`docs/algorithms.md` §6), plus the pieces every horizontal scaler of this crate
//! shares: the configuration error, the `[min, max]` safety net and the deterministic choice of victims.
//!
//! Lazy scaling leaves short bursts to vertical scaling: an instance is added only when most of the last
//! 40 seconds were over capacity, and removed only when three quarters of them fit in one instance fewer.

use super::NANOS_PER_SEC;
use super::horizontal::{FunctionLoad, HorizontalScaler, InstanceLoad, ScaleDecision};
use crate::error::FieldError;
use serde::{Deserialize, Serialize};
use std::cmp::Reverse;
use std::collections::VecDeque;
use std::fmt::Display;

/// Returns a [`FieldError`] (field `scaler.field`) unless `ok`; the building block of every `validate()`.
pub(crate) fn require(
    ok: bool,
    scaler: &'static str,
    field: &'static str,
    value: impl Display,
    rule: &'static str,
) -> Result<(), FieldError> {
    FieldError::require(ok, format!("{scaler}.{field}"), value, rule)
}

/// Longest interval or window a scaler accepts, seconds (one day): keeps nanosecond arithmetic far from overflow.
pub(crate) const MAX_SECONDS: f64 = 86_400.0;

/// Most samples a scaler keeps in a window (one day of one-second samples): bounds its memory.
pub(crate) const MAX_SAMPLES: u32 = 86_400;

/// Checks that a duration in seconds is finite, above zero and at most [`MAX_SECONDS`].
pub(crate) fn require_seconds(
    scaler: &'static str,
    field: &'static str,
    value: f64,
) -> Result<(), FieldError> {
    require(
        value.is_finite() && value > 0.0 && value <= MAX_SECONDS,
        scaler,
        field,
        value,
        "must be a number of seconds in (0, 86400]",
    )
}

/// Converts validated seconds to nanoseconds (at least 1 ns, so intervals never collapse to zero).
pub(crate) fn seconds_to_ns(seconds: f64) -> u64 {
    if seconds.is_finite() && seconds > 0.0 {
        ((seconds * NANOS_PER_SEC as f64).round() as u64).max(1)
    } else {
        0
    }
}

/// Slack for float comparisons of rates and quotas, so that 0.1 + 0.2 style noise does not flip a decision.
pub(crate) const EPS: f64 = 1e-9;

/// `ceil(x)` as an instance count: 0 for non-positive or NaN, saturating at `u32::MAX`, and tolerant of float
/// noise (10.000000001 is 10, not 11).
pub(crate) fn ceil_count(x: f64) -> u32 {
    if x.is_nan() || x <= EPS {
        0
    } else {
        (x - EPS).ceil().min(f64::from(u32::MAX)) as u32
    }
}

/// `floor(x)` as an instance count: 0 for non-positive or NaN, saturating at `u32::MAX`, and tolerant of float
/// noise (9.999999999 is 10).
pub(crate) fn floor_count(x: f64) -> u32 {
    if x.is_nan() || x <= 0.0 {
        0
    } else {
        (x + EPS).floor().min(f64::from(u32::MAX)) as u32
    }
}

/// Whether the per-instance capacity is usable as a divisor; scalers that size by it only enforce the bounds
/// (and cold starts) when it is not.
pub(crate) fn capacity_known(load: &FunctionLoad<'_>) -> bool {
    load.per_instance_capacity.is_finite() && load.per_instance_capacity > 0.0
}

/// Whether any request arrived in the last interval or waits now: the trigger for a cold start from zero.
pub(crate) fn has_demand(load: &FunctionLoad<'_>) -> bool {
    load.arrivals > 0 || load.queued > 0
}

/// The `[min, max]` instance bounds of the load; a `max` below `min` is read as `min` (the floor wins).
pub(crate) fn bounds(load: &FunctionLoad<'_>) -> (u32, u32) {
    (
        load.min_instances,
        load.max_instances.max(load.min_instances),
    )
}

/// Instance ids in the order they should be removed: not-ready instances first (they serve nothing yet), then
/// the newest (the end of the creation-ordered slice), so a decision is deterministic.
pub(crate) fn removal_order(instances: &[InstanceLoad]) -> Vec<u64> {
    let mut order: Vec<(usize, &InstanceLoad)> = instances.iter().enumerate().collect();
    order.sort_by_key(|&(index, inst)| (inst.ready, Reverse(index)));
    order.into_iter().map(|(_, inst)| inst.id).collect()
}

/// A decision that moves the instance count to `target`, clamped to the load's bounds, removing victims in
/// [`removal_order`].
pub(crate) fn towards(load: &FunctionLoad<'_>, target: u32) -> ScaleDecision {
    let (min, max) = bounds(load);
    let target = target.clamp(min, max);
    let n = load.count();
    let mut decision = ScaleDecision::hold();
    if target > n {
        decision.add = target - n;
    } else if target < n {
        decision.remove = removal_order(load.instances)
            .into_iter()
            .take((n - target) as usize)
            .collect();
    }
    decision
}

/// The safety net every scaler's decision passes through: drops unknown and repeated ids from `remove`, then
/// trims or extends the decision so the resulting count lies in `[min, max]`, and drops quota changes for
/// unknown or removed instances.
pub(crate) fn finish(load: &FunctionLoad<'_>, mut decision: ScaleDecision) -> ScaleDecision {
    let (min, max) = bounds(load);
    let (min, max) = (i64::from(min), i64::from(max));
    let known = |id: u64| load.instances.iter().any(|inst| inst.id == id);
    let mut kept: Vec<u64> = Vec::with_capacity(decision.remove.len());
    for id in decision.remove.drain(..) {
        if known(id) && !kept.contains(&id) {
            kept.push(id);
        }
    }
    decision.remove = kept;
    let mut after =
        i64::from(load.count()) + i64::from(decision.add) - decision.remove.len() as i64;
    if after > max {
        let cut = (after - max).min(i64::from(decision.add));
        decision.add -= cut as u32;
        after -= cut;
        for id in removal_order(load.instances) {
            if after <= max {
                break;
            }
            if !decision.remove.contains(&id) {
                decision.remove.push(id);
                after -= 1;
            }
        }
    }
    while after < min && decision.remove.pop().is_some() {
        after += 1;
    }
    if after < min {
        decision.add = decision
            .add
            .saturating_add(u32::try_from(min - after).unwrap_or(u32::MAX));
    }
    let removed = &decision.remove;
    decision
        .quota
        .retain(|q| known(q.instance) && !removed.contains(&q.instance));
    decision
}

/// Settings of [`LazyScaler`]; the defaults are the published Dilu values (`docs/algorithms.md` §6).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(default, deny_unknown_fields)]
pub struct LazyConfig {
    /// Samples kept, one per interval (40: the last 40 seconds).
    pub window: u32,
    /// Samples above `capacity(n)` that trigger adding one instance (20 of 40).
    pub out_votes: u32,
    /// Samples below `capacity(n − 1)` that trigger removing one instance (30 of 40).
    pub in_votes: u32,
    /// How often the scaler decides, seconds (1.0).
    pub interval_s: f64,
}

impl Default for LazyConfig {
    fn default() -> Self {
        LazyConfig {
            window: 40,
            out_votes: 20,
            in_votes: 30,
            interval_s: 1.0,
        }
    }
}

impl LazyConfig {
    /// Checks that the window holds 1..=86400 samples, both vote counts lie in `[1, window]`, and the interval
    /// is a positive number of seconds.
    pub fn validate(&self) -> Result<(), FieldError> {
        const S: &str = "lazy";
        require(
            (1..=MAX_SAMPLES).contains(&self.window),
            S,
            "window",
            self.window,
            "must lie in [1, 86400] samples",
        )?;
        require(
            (1..=self.window).contains(&self.out_votes),
            S,
            "out_votes",
            self.out_votes,
            "must lie in [1, window]",
        )?;
        require(
            (1..=self.window).contains(&self.in_votes),
            S,
            "in_votes",
            self.in_votes,
            "must lie in [1, window]",
        )?;
        require_seconds(S, "interval_s", self.interval_s)
    }
}

/// Dilu's lazy scaler: one instance at a time, after a majority vote over a 40-second window, with the window
/// cleared after every action as the cooldown. One scaler per function.
#[derive(Debug, Clone)]
pub struct LazyScaler {
    config: LazyConfig,
    /// The last `window` request rates, oldest first.
    samples: VecDeque<f64>,
}

impl LazyScaler {
    /// A scaler with `config`, or the rule it breaks.
    pub fn new(config: LazyConfig) -> Result<Self, FieldError> {
        config.validate()?;
        Ok(LazyScaler {
            config,
            samples: VecDeque::with_capacity(config.window as usize),
        })
    }

    /// The configuration it runs with.
    pub fn config(&self) -> &LazyConfig {
        &self.config
    }

    /// Samples currently in the window (0 right after an action): lets callers and tests see the cooldown.
    pub fn window_len(&self) -> usize {
        self.samples.len()
    }

    fn push(&mut self, rps: f64) {
        if self.samples.len() >= self.config.window as usize {
            self.samples.pop_front();
        }
        self.samples
            .push_back(if rps.is_finite() { rps.max(0.0) } else { 0.0 });
    }

    fn vote(&self, load: &FunctionLoad<'_>) -> ScaleDecision {
        let n = load.count();
        let (min, max) = bounds(load);
        if n == 0 && has_demand(load) {
            // Cold start: a request waits for an instance that does not exist.
            return towards(load, 1);
        }
        if n < min || n > max || !capacity_known(load) {
            return towards(load, n);
        }
        let capacity = |k: u32| f64::from(k) * load.per_instance_capacity;
        let over = self.samples.iter().filter(|&&s| s > capacity(n)).count();
        if n < max && over >= self.config.out_votes as usize {
            let mut decision = towards(load, n + 1);
            decision.reason = format!(
                "{over} of the last {} samples above the capacity of {n} instance{} ({:.1} req/s; {} votes \
                 needed)",
                self.samples.len(),
                if n == 1 { "" } else { "s" },
                capacity(n),
                self.config.out_votes
            );
            return decision;
        }
        if n > min {
            let fewer = n - 1;
            // capacity(0) = 0 and no rate is below 0, so scaling to zero (min 0) counts idle seconds instead.
            let fits = |s: f64| {
                if fewer == 0 {
                    s <= 0.0
                } else {
                    s < capacity(fewer)
                }
            };
            let under = self.samples.iter().filter(|&&s| fits(s)).count();
            if under >= self.config.in_votes as usize {
                let mut decision = towards(load, fewer);
                decision.reason = if fewer == 0 {
                    format!(
                        "{under} of the last {} samples idle ({} votes needed)",
                        self.samples.len(),
                        self.config.in_votes
                    )
                } else {
                    format!(
                        "{under} of the last {} samples within the capacity of {fewer} instance{} ({:.1} \
                         req/s; {} votes needed)",
                        self.samples.len(),
                        if fewer == 1 { "" } else { "s" },
                        capacity(fewer),
                        self.config.in_votes
                    )
                };
                return decision;
            }
        }
        ScaleDecision::hold()
    }
}

impl HorizontalScaler for LazyScaler {
    fn name(&self) -> &'static str {
        "lazy"
    }

    fn interval_ns(&self) -> u64 {
        seconds_to_ns(self.config.interval_s)
    }

    fn decide(&mut self, load: &FunctionLoad<'_>) -> ScaleDecision {
        self.push(load.rps());
        let decision = finish(load, self.vote(load));
        if !decision.is_hold() {
            self.samples.clear();
        }
        decision
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// An instance for tests: ready, half a GPU, full quota, 10 rps.
    pub(crate) fn inst(id: u64, ready: bool) -> InstanceLoad {
        InstanceLoad {
            id,
            ready,
            sm_partition: 0.5,
            time_quota: 1.0,
            capacity_at_full_quota: 10.0,
            quota_headroom: 0.0,
            batch: 0,
            capacity_whole_gpu: 0.0,
        }
    }

    /// `n` ready test instances with ids 1..=n.
    pub(crate) fn ready(n: u64) -> Vec<InstanceLoad> {
        (1..=n).map(|id| inst(id, true)).collect()
    }

    /// A one-second load of `arrivals` at second `sec`, 10 rps per instance, bounds `[min, max]`.
    pub(crate) fn load_at(
        sec: u64,
        interval_s: f64,
        arrivals: u64,
        min: u32,
        max: u32,
        instances: &[InstanceLoad],
    ) -> FunctionLoad<'_> {
        FunctionLoad {
            now_ns: sec * NANOS_PER_SEC,
            interval_s,
            arrivals,
            queued: 0,
            answered: 0,
            late: 0,
            slo_s: 0.0,
            per_instance_capacity: 10.0,
            min_instances: min,
            max_instances: max,
            instances,
        }
    }

    #[test]
    fn defaults_are_the_published_values_and_valid() {
        let c = LazyConfig::default();
        assert_eq!(
            (c.window, c.out_votes, c.in_votes, c.interval_s),
            (40, 20, 30, 1.0)
        );
        assert!(c.validate().is_ok());
        let s = LazyScaler::new(c).unwrap();
        assert_eq!(s.interval_ns(), NANOS_PER_SEC);
        assert_eq!(s.name(), "lazy");
    }

    #[test]
    fn validate_names_field_value_and_rule() {
        let err = LazyConfig {
            out_votes: 41,
            ..LazyConfig::default()
        }
        .validate()
        .unwrap_err();
        assert_eq!(err.field, "lazy.out_votes");
        assert_eq!(err.value, "41");
        assert!(err.to_string().contains("lazy.out_votes = 41"));
        assert_eq!(
            LazyConfig {
                window: 0,
                ..LazyConfig::default()
            }
            .validate()
            .unwrap_err()
            .field,
            "lazy.window"
        );
        assert_eq!(
            LazyConfig {
                interval_s: 0.0,
                ..LazyConfig::default()
            }
            .validate()
            .unwrap_err()
            .field,
            "lazy.interval_s"
        );
        assert!(
            LazyScaler::new(LazyConfig {
                in_votes: 0,
                ..LazyConfig::default()
            })
            .is_err()
        );
    }

    #[test]
    fn scales_out_exactly_at_the_20th_over_capacity_sample_and_clears_the_window() {
        let mut s = LazyScaler::new(LazyConfig::default()).unwrap();
        let insts = ready(2); // capacity(2) = 20 rps
        // 30 samples exactly at capacity are not over it.
        for t in 1..=30 {
            assert!(s.decide(&load_at(t, 1.0, 20, 1, 10, &insts)).is_hold());
        }
        for k in 1..=19 {
            let d = s.decide(&load_at(30 + k, 1.0, 21, 1, 10, &insts));
            assert!(d.is_hold(), "over-capacity sample {k} must not scale");
        }
        assert_eq!(s.window_len(), 40);
        let d = s.decide(&load_at(50, 1.0, 21, 1, 10, &insts));
        assert_eq!(
            d,
            ScaleDecision {
                add: 1,
                reason: "20 of the last 40 samples above the capacity of 2 instances (20.0 req/s; 20 votes \
                         needed)"
                    .into(),
                ..ScaleDecision::hold()
            }
        );
        assert_eq!(s.window_len(), 0, "the window is the cooldown");
        // The next over-capacity second starts a new vote from one.
        let three = ready(3);
        assert!(s.decide(&load_at(51, 1.0, 40, 1, 10, &three)).is_hold());
        assert_eq!(s.window_len(), 1);
    }

    #[test]
    fn old_votes_fall_out_of_the_window() {
        let mut s = LazyScaler::new(LazyConfig::default()).unwrap();
        let insts = ready(1);
        // 19 over, then 40 under: the 19 votes age out, so 19 more over samples do not scale.
        for t in 0..19 {
            assert!(s.decide(&load_at(t, 1.0, 15, 1, 10, &insts)).is_hold());
        }
        for t in 19..59 {
            assert!(s.decide(&load_at(t, 1.0, 5, 1, 10, &insts)).is_hold());
        }
        for t in 59..78 {
            assert!(s.decide(&load_at(t, 1.0, 15, 1, 10, &insts)).is_hold());
        }
        assert_eq!(s.decide(&load_at(78, 1.0, 15, 1, 10, &insts)).add, 1);
    }

    #[test]
    fn scales_in_after_30_samples_below_one_fewer_and_removes_the_newest() {
        let mut s = LazyScaler::new(LazyConfig::default()).unwrap();
        let insts = ready(3); // capacity(2) = 20
        for t in 1..=29 {
            assert!(s.decide(&load_at(t, 1.0, 19, 1, 10, &insts)).is_hold());
        }
        let d = s.decide(&load_at(30, 1.0, 19, 1, 10, &insts));
        assert_eq!(d.remove, vec![3]);
        assert_eq!(d.add, 0);
        assert_eq!(s.window_len(), 0);
    }

    #[test]
    fn scale_in_prefers_not_ready_instances() {
        let mut s = LazyScaler::new(LazyConfig {
            in_votes: 1,
            ..LazyConfig::default()
        })
        .unwrap();
        let insts = [inst(1, true), inst(2, false), inst(3, true)];
        assert_eq!(s.decide(&load_at(1, 1.0, 0, 1, 10, &insts)).remove, vec![2]);
    }

    #[test]
    fn samples_at_capacity_of_one_fewer_are_not_in_votes() {
        let mut s = LazyScaler::new(LazyConfig::default()).unwrap();
        let insts = ready(3);
        for t in 1..=40 {
            assert!(s.decide(&load_at(t, 1.0, 20, 1, 10, &insts)).is_hold());
        }
    }

    #[test]
    fn respects_min_and_max() {
        let mut s = LazyScaler::new(LazyConfig::default()).unwrap();
        let two = ready(2);
        for t in 1..=40 {
            assert!(
                s.decide(&load_at(t, 1.0, 100, 1, 2, &two)).is_hold(),
                "at max: never add"
            );
        }
        let mut s = LazyScaler::new(LazyConfig::default()).unwrap();
        for t in 1..=40 {
            assert!(
                s.decide(&load_at(t, 1.0, 0, 2, 5, &two)).is_hold(),
                "at min: never remove"
            );
        }
        // Below min or above max (e.g. the bounds changed): move into them at once.
        assert_eq!(s.decide(&load_at(41, 1.0, 0, 3, 5, &two)).add, 1);
        let four = ready(4);
        assert_eq!(
            s.decide(&load_at(42, 1.0, 0, 1, 2, &four)).remove,
            vec![4, 3]
        );
    }

    #[test]
    fn cold_start_from_zero_is_immediate() {
        let mut s = LazyScaler::new(LazyConfig::default()).unwrap();
        assert!(s.decide(&load_at(1, 1.0, 0, 0, 4, &[])).is_hold());
        assert_eq!(s.decide(&load_at(2, 1.0, 1, 0, 4, &[])).add, 1);
        let mut queued = load_at(3, 1.0, 0, 0, 4, &[]);
        queued.queued = 2;
        assert_eq!(s.decide(&queued).add, 1);
        assert!(
            s.decide(&load_at(4, 1.0, 5, 0, 0, &[])).is_hold(),
            "max 0 forbids the cold start"
        );
    }

    #[test]
    fn scales_to_zero_after_30_idle_samples_when_min_is_zero() {
        let mut s = LazyScaler::new(LazyConfig::default()).unwrap();
        let one = ready(1);
        for t in 1..=29 {
            assert!(s.decide(&load_at(t, 1.0, 0, 0, 4, &one)).is_hold());
        }
        assert_eq!(s.decide(&load_at(30, 1.0, 0, 0, 4, &one)).remove, vec![1]);
        // With min 1 it never does.
        let mut s = LazyScaler::new(LazyConfig::default()).unwrap();
        for t in 1..=60 {
            assert!(s.decide(&load_at(t, 1.0, 0, 1, 4, &one)).is_hold());
        }
    }

    #[test]
    fn finish_pulls_any_decision_into_bounds() {
        let insts = ready(3);
        let load = load_at(0, 1.0, 0, 2, 4, &insts);
        let d = finish(
            &load,
            ScaleDecision {
                add: 5,
                ..ScaleDecision::hold()
            },
        );
        assert_eq!(d.add, 1);
        let d = finish(
            &load,
            ScaleDecision {
                remove: vec![1, 2, 3, 9, 1],
                ..ScaleDecision::hold()
            },
        );
        assert_eq!(d.remove, vec![1]);
        assert_eq!(ceil_count(10.000_000_000_1), 10);
        assert_eq!(ceil_count(10.1), 11);
        assert_eq!(floor_count(9.999_999_999_9), 10);
        assert_eq!(ceil_count(f64::NAN), 0);
        assert_eq!(ceil_count(f64::INFINITY), u32::MAX);
    }
}

/// Properties every horizontal scaler of this crate must hold, whatever the load.
#[cfg(test)]
mod properties {
    use super::super::fast_gshare::{FastGShareConfig, FastGShareScaler};
    use super::super::has::{HasConfig, HasScaler};
    use super::super::kpa::{KpaConfig, KpaScaler};
    use super::super::reactive::{InflessConfig, InflessScaler};
    use super::*;
    use proptest::prelude::*;

    fn all_scalers() -> Vec<Box<dyn HorizontalScaler>> {
        vec![
            Box::new(
                LazyScaler::new(LazyConfig {
                    out_votes: 2,
                    in_votes: 3,
                    ..LazyConfig::default()
                })
                .unwrap(),
            ),
            Box::new(KpaScaler::new(KpaConfig::default()).unwrap()),
            Box::new(
                InflessScaler::new(InflessConfig {
                    keep_alive_s: 3.0,
                    ..InflessConfig::default()
                })
                .unwrap(),
            ),
            Box::new(FastGShareScaler::new(FastGShareConfig::default()).unwrap()),
            Box::new(
                HasScaler::new(HasConfig {
                    down_cooldown_s: 0.0,
                    ..HasConfig::default()
                })
                .unwrap(),
            ),
        ]
    }

    /// One tick of random load: instance shapes, arrivals, queue, capacity and bounds.
    #[derive(Debug, Clone)]
    struct Tick {
        instances: Vec<(bool, f64, f64, f64, f64)>,
        arrivals: u64,
        queued: u64,
        capacity: f64,
        min: u32,
        max: u32,
    }

    fn tick() -> impl Strategy<Value = Tick> {
        (
            prop::collection::vec(
                (
                    any::<bool>(),
                    0.05f64..=1.0,
                    0.05f64..=1.0,
                    0.0f64..50.0,
                    0.0f64..1.0,
                ),
                0..8,
            ),
            prop_oneof![Just(0u64), 0u64..20, 0u64..2_000],
            prop_oneof![Just(0u64), 0u64..50],
            prop_oneof![Just(0.0f64), 0.5f64..100.0],
            0u32..4,
            0u32..10,
        )
            .prop_map(|(instances, arrivals, queued, capacity, min, extra)| Tick {
                instances,
                arrivals,
                queued,
                capacity,
                min,
                max: min + extra,
            })
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 200, ..ProptestConfig::default() })]

        #[test]
        fn decisions_stay_within_bounds_and_remove_only_known_ids(ticks in prop::collection::vec(tick(), 1..40)) {
            for mut scaler in all_scalers() {
                let interval_ns = scaler.interval_ns();
                let mut next_id = 100u64;
                for (k, t) in ticks.iter().enumerate() {
                    let instances: Vec<InstanceLoad> = t
                        .instances
                        .iter()
                        .map(|&(ready, sm, quota, cap, headroom)| {
                            next_id += 1;
                            InstanceLoad {
                                id: next_id,
                                ready,
                                sm_partition: sm,
                                time_quota: quota,
                                capacity_at_full_quota: cap,
                                quota_headroom: headroom,
                                batch: 0,
                                capacity_whole_gpu: 0.0,
                            }
                        })
                        .collect();
                    let load = FunctionLoad {
                        now_ns: (k as u64 + 1) * interval_ns,
                        interval_s: interval_ns as f64 / NANOS_PER_SEC as f64,
                        arrivals: t.arrivals,
                        queued: t.queued,
                        answered: 0,
                        late: 0,
                        slo_s: 0.0,
                        per_instance_capacity: t.capacity,
                        min_instances: t.min,
                        max_instances: t.max,
                        instances: &instances,
                    };
                    let d = scaler.decide(&load);
                    let n = instances.len() as i64;
                    let after = n + i64::from(d.add) - d.remove.len() as i64;
                    prop_assert!(
                        after >= i64::from(t.min) && after <= i64::from(t.max),
                        "{}: {} instances -> {} outside [{}, {}]: {:?}", scaler.name(), n, after, t.min, t.max, d
                    );
                    for (i, id) in d.remove.iter().enumerate() {
                        prop_assert!(instances.iter().any(|x| x.id == *id), "{} removed unknown id {}", scaler.name(), id);
                        prop_assert!(!d.remove[..i].contains(id), "{} removed id {} twice", scaler.name(), id);
                    }
                    for q in &d.quota {
                        prop_assert!(instances.iter().any(|x| x.id == q.instance && !d.remove.contains(&q.instance)));
                        prop_assert!(q.time_quota > 0.0 && q.time_quota <= 1.0 + EPS, "{:?}", q);
                    }
                }
            }
        }
    }
}
