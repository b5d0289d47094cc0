//! The Knative Pod Autoscaler on the requests-per-second metric (`docs/policies.md`): the standard serverless
//! baseline. GPU-unaware and horizontal only; it sizes for the average rate over a 60-second stable window, and
//! panics (sizes for a 6-second window and never scales down) when that window wants twice the ready pods.

use super::NANOS_PER_SEC;
use super::horizontal::{FunctionLoad, HorizontalScaler, ScaleDecision};
use super::lazy::{
    bounds, capacity_known, ceil_count, finish, floor_count, has_demand, require, require_seconds,
    seconds_to_ns, towards,
};
use crate::error::FieldError;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// Settings of [`KpaScaler`]; the defaults are Knative's (`config-autoscaler`), with the RPS target taken from
/// the function's profiled per-instance capacity.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct KpaConfig {
    /// How often the autoscaler decides, seconds (Knative's tick: 2.0).
    pub tick_interval_s: f64,
    /// Fraction of an instance's capacity used as its target (`container-concurrency-target-percentage`: 0.7).
    pub target_utilization: f64,
    /// Window the stable rate is averaged over, seconds (`stable-window`: 60.0; Knative allows 6..=3600).
    pub stable_window_s: f64,
    /// Panic window as a percentage of the stable window (`panic-window-percentage`: 10.0, i.e. 6 s).
    pub panic_window_percentage: f64,
    /// Panic when the panic window wants this percentage of the ready pods (`panic-threshold-percentage`: 200.0).
    pub panic_threshold_percentage: f64,
    /// Most the pod count may grow in one tick, as a multiple of the ready pods (`max-scale-up-rate`: 1000.0).
    pub max_scale_up_rate: f64,
    /// Most the pod count may shrink in one tick, as a divisor of the ready pods (`max-scale-down-rate`: 2.0).
    pub max_scale_down_rate: f64,
    /// Extra time after a whole stable window without traffic before the last instance goes
    /// (`scale-to-zero-grace-period`: 30.0 s). Only with `min_instances == 0`.
    pub scale_to_zero_grace_period_s: f64,
}

impl Default for KpaConfig {
    fn default() -> Self {
        KpaConfig {
            tick_interval_s: 2.0,
            target_utilization: 0.7,
            stable_window_s: 60.0,
            panic_window_percentage: 10.0,
            panic_threshold_percentage: 200.0,
            max_scale_up_rate: 1000.0,
            max_scale_down_rate: 2.0,
            scale_to_zero_grace_period_s: 30.0,
        }
    }
}

impl KpaConfig {
    /// Checks Knative's own ranges: stable window 6..=3600 s, panic window 1..=100 % of it, panic threshold
    /// 110..=1000 %, rates above 1, utilisation in (0, 1], a positive tick and a non-negative grace period.
    pub fn validate(&self) -> Result<(), FieldError> {
        const S: &str = "kpa";
        require_seconds(S, "tick_interval_s", self.tick_interval_s)?;
        let u = self.target_utilization;
        require(
            u.is_finite() && u > 0.0 && u <= 1.0,
            S,
            "target_utilization",
            u,
            "must lie in (0, 1]",
        )?;
        let w = self.stable_window_s;
        require(
            w.is_finite() && (6.0..=3600.0).contains(&w),
            S,
            "stable_window_s",
            w,
            "must lie in [6, 3600] seconds",
        )?;
        let p = self.panic_window_percentage;
        require(
            p.is_finite() && (1.0..=100.0).contains(&p),
            S,
            "panic_window_percentage",
            p,
            "must lie in [1, 100]",
        )?;
        let t = self.panic_threshold_percentage;
        require(
            t.is_finite() && (110.0..=1000.0).contains(&t),
            S,
            "panic_threshold_percentage",
            t,
            "must lie in [110, 1000]",
        )?;
        let up = self.max_scale_up_rate;
        require(
            up.is_finite() && up > 1.0,
            S,
            "max_scale_up_rate",
            up,
            "must be above 1",
        )?;
        let down = self.max_scale_down_rate;
        require(
            down.is_finite() && down > 1.0,
            S,
            "max_scale_down_rate",
            down,
            "must be above 1",
        )?;
        let g = self.scale_to_zero_grace_period_s;
        require(
            g.is_finite() && (0.0..=3600.0).contains(&g),
            S,
            "scale_to_zero_grace_period_s",
            g,
            "must lie in [0, 3600] seconds",
        )
    }
}

/// Arrivals in one-second buckets, as Knative's `TimedFloat64Buckets`: a window's average is the sum of its
/// buckets over the window length, or over the time since the first record when that is shorter.
#[derive(Debug, Clone, Default)]
struct SecondBuckets {
    /// Second index → requests that arrived in that second.
    counts: BTreeMap<u64, f64>,
    /// Second of the first recorded interval's start.
    first_sec: Option<u64>,
}

impl SecondBuckets {
    /// Spreads `arrivals` evenly over the interval `[now − interval, now)`; keeps `keep_secs` seconds.
    fn record(&mut self, now_ns: u64, interval_ns: u64, arrivals: u64, keep_secs: u64) {
        let start = now_ns.saturating_sub(interval_ns);
        self.first_sec.get_or_insert(start / NANOS_PER_SEC);
        let last_sec = now_ns.saturating_sub(1) / NANOS_PER_SEC;
        if arrivals > 0 {
            if interval_ns == 0 {
                *self.counts.entry(last_sec).or_insert(0.0) += arrivals as f64;
            } else {
                // Only the kept seconds matter; the share of older ones is dropped, not moved.
                let keep_from = (last_sec + 1).saturating_sub(keep_secs) * NANOS_PER_SEC;
                let mut t = start.max(keep_from);
                while t < now_ns {
                    let sec = t / NANOS_PER_SEC;
                    let end = ((sec + 1) * NANOS_PER_SEC).min(now_ns);
                    let share = arrivals as f64 * (end - t) as f64 / interval_ns as f64;
                    *self.counts.entry(sec).or_insert(0.0) += share;
                    t = end;
                }
            }
        }
        let oldest = (last_sec + 1).saturating_sub(keep_secs);
        self.counts = self.counts.split_off(&oldest);
    }

    /// Average requests per second over the `window_secs` seconds ending with the one that holds `now − 1 ns`.
    fn average(&self, now_ns: u64, window_secs: u64) -> f64 {
        let Some(first) = self.first_sec else {
            return 0.0;
        };
        let last_sec = now_ns.saturating_sub(1) / NANOS_PER_SEC;
        let lo = (last_sec + 1).saturating_sub(window_secs);
        let sum: f64 = self.counts.range(lo..=last_sec).map(|(_, c)| c).sum();
        let seen = (last_sec + 1)
            .saturating_sub(first)
            .clamp(1, window_secs.max(1));
        sum / seen as f64
    }
}

/// The Knative Pod Autoscaler (RPS mode) for one function: stable/panic windows, panic threshold, scale rate
/// limits and scale-to-zero after a quiet stable window plus grace.
#[derive(Debug, Clone)]
pub struct KpaScaler {
    config: KpaConfig,
    buckets: SecondBuckets,
    /// When the panic window last wanted at least the threshold times the ready pods; `None` when not panicking.
    panic_since_ns: Option<u64>,
    /// Most pods desired since the panic began (Knative's `maxPanicPods`): panic never scales down.
    max_panic_pods: u32,
    /// When the function last saw traffic (arrivals or a queue); starts at the scaler's first interval.
    last_active_ns: Option<u64>,
}

impl KpaScaler {
    /// A scaler with `config`, or the rule it breaks.
    pub fn new(config: KpaConfig) -> Result<Self, FieldError> {
        config.validate()?;
        Ok(KpaScaler {
            config,
            buckets: SecondBuckets::default(),
            panic_since_ns: None,
            max_panic_pods: 0,
            last_active_ns: None,
        })
    }

    /// The configuration it runs with.
    pub fn config(&self) -> &KpaConfig {
        &self.config
    }

    /// Whether the scaler is in panic mode now: lets callers and tests see why it does not scale down.
    pub fn in_panic(&self) -> bool {
        self.panic_since_ns.is_some()
    }

    fn stable_secs(&self) -> u64 {
        self.config.stable_window_s.ceil() as u64
    }

    fn panic_secs(&self) -> u64 {
        ((self.config.stable_window_s * self.config.panic_window_percentage / 100.0).ceil() as u64)
            .max(1)
    }

    /// The pod count Knative's decider wants, before the scale-to-zero gate.
    fn desired(&mut self, load: &FunctionLoad<'_>) -> u32 {
        let now = load.now_ns;
        let n = load.count();
        let target = load.per_instance_capacity * self.config.target_utilization;
        let stable = self.buckets.average(now, self.stable_secs());
        let panic = self.buckets.average(now, self.panic_secs());
        let ready = load.instances.iter().filter(|i| i.ready).count().max(1) as f64;
        let max_up = ceil_count(self.config.max_scale_up_rate * ready);
        let max_down = floor_count(ready / self.config.max_scale_down_rate);
        let dspc = ceil_count(stable / target);
        let dppc = ceil_count(panic / target);
        let desired_stable = dspc.max(max_down).min(max_up);
        let desired_panic = dppc.max(max_down).min(max_up);

        let over = f64::from(dppc) / ready >= self.config.panic_threshold_percentage / 100.0;
        let stable_ns = seconds_to_ns(self.config.stable_window_s);
        if over {
            self.panic_since_ns = Some(now);
        } else if let Some(since) = self.panic_since_ns
            && now > since.saturating_add(stable_ns)
        {
            self.panic_since_ns = None;
            self.max_panic_pods = 0;
        }

        let mut desired = desired_stable;
        if self.panic_since_ns.is_some() {
            desired = desired.max(desired_panic);
            if desired > self.max_panic_pods {
                self.max_panic_pods = desired;
            } else {
                desired = self.max_panic_pods;
            }
            // No scale-down in panic, not even of pods started before it.
            desired = desired.max(n);
        }
        desired
    }
}

impl HorizontalScaler for KpaScaler {
    fn name(&self) -> &'static str {
        "kpa"
    }

    fn interval_ns(&self) -> u64 {
        seconds_to_ns(self.config.tick_interval_s)
    }

    fn decide(&mut self, load: &FunctionLoad<'_>) -> ScaleDecision {
        let now = load.now_ns;
        let interval_ns = seconds_to_ns(load.interval_s);
        self.buckets
            .record(now, interval_ns, load.arrivals, self.stable_secs());
        if has_demand(load) {
            self.last_active_ns = Some(now);
        } else {
            self.last_active_ns
                .get_or_insert(now.saturating_sub(interval_ns));
        }
        let n = load.count();
        if !capacity_known(load) {
            let target = if n == 0 && has_demand(load) { 1 } else { n };
            return finish(load, towards(load, target));
        }
        let mut desired = self.desired(load);
        if desired == 0 && n > 0 {
            let quiet_ns = now.saturating_sub(self.last_active_ns.unwrap_or(now));
            let needed_ns = seconds_to_ns(self.config.stable_window_s)
                .saturating_add(seconds_to_ns(self.config.scale_to_zero_grace_period_s));
            let (min, _) = bounds(load);
            if min > 0 || quiet_ns < needed_ns {
                desired = 1;
            }
        }
        if n == 0 && has_demand(load) {
            desired = desired.max(1);
        }
        finish(load, towards(load, desired))
    }
}

#[cfg(test)]
mod tests {
    use super::super::horizontal::InstanceLoad;
    use super::super::lazy::tests::{inst, ready};
    use super::*;

    const CAP: f64 = 10.0; // per instance; target 7 rps at 0.7

    fn load(
        sec: u64,
        arrivals: u64,
        min: u32,
        max: u32,
        instances: &[InstanceLoad],
    ) -> FunctionLoad<'_> {
        FunctionLoad {
            now_ns: sec * NANOS_PER_SEC,
            interval_s: 2.0,
            arrivals,
            queued: 0,
            answered: 0,
            late: 0,
            slo_s: 0.0,
            per_instance_capacity: CAP,
            min_instances: min,
            max_instances: max,
            instances,
        }
    }

    /// Runs 2-second ticks from `from` to `to` (exclusive) at `rps` with `instances`, asserting each holds.
    fn steady(s: &mut KpaScaler, from: u64, to: u64, rps: u64, instances: &[InstanceLoad]) {
        for sec in (from..to).step_by(2) {
            let d = s.decide(&load(sec + 2, 2 * rps, 1, 100, instances));
            assert!(d.is_hold(), "steady {rps} rps at {sec}s: {d:?}");
        }
    }

    #[test]
    fn defaults_are_knatives_and_validate_rejects_out_of_range() {
        let c = KpaConfig::default();
        assert!(c.validate().is_ok());
        let s = KpaScaler::new(c).unwrap();
        assert_eq!(s.interval_ns(), 2 * NANOS_PER_SEC);
        assert_eq!((s.stable_secs(), s.panic_secs()), (60, 6));
        let err = KpaConfig {
            stable_window_s: 5.0,
            ..c
        }
        .validate()
        .unwrap_err();
        assert_eq!(
            (err.field.as_str(), err.value.as_str()),
            ("kpa.stable_window_s", "5")
        );
        assert_eq!(
            KpaConfig {
                max_scale_down_rate: 1.0,
                ..c
            }
            .validate()
            .unwrap_err()
            .field,
            "kpa.max_scale_down_rate"
        );
        assert_eq!(
            KpaConfig {
                target_utilization: 1.5,
                ..c
            }
            .validate()
            .unwrap_err()
            .field,
            "kpa.target_utilization"
        );
        assert_eq!(
            KpaConfig {
                panic_threshold_percentage: 100.0,
                ..c
            }
            .validate()
            .unwrap_err()
            .field,
            "kpa.panic_threshold_percentage"
        );
    }

    #[test]
    fn config_fields_default_and_unknown_ones_are_refused() {
        use serde::de::value::{Error, MapDeserializer};
        let partial = MapDeserializer::<_, Error>::new(vec![("stable_window_s", 30.0)].into_iter());
        let c = KpaConfig::deserialize(partial).unwrap();
        assert_eq!(
            c,
            KpaConfig {
                stable_window_s: 30.0,
                ..KpaConfig::default()
            }
        );
        let typo = MapDeserializer::<_, Error>::new(vec![("stable_window", 30.0)].into_iter());
        assert!(KpaConfig::deserialize(typo).is_err());
    }

    #[test]
    fn buckets_average_over_the_window_or_the_time_seen() {
        let mut b = SecondBuckets::default();
        b.record(2 * NANOS_PER_SEC, 2 * NANOS_PER_SEC, 20, 60); // 10 rps in seconds 0 and 1
        assert!(
            (b.average(2 * NANOS_PER_SEC, 60) - 10.0).abs() < 1e-9,
            "only 2 s seen"
        );
        b.record(4 * NANOS_PER_SEC, 2 * NANOS_PER_SEC, 0, 60);
        assert!((b.average(4 * NANOS_PER_SEC, 60) - 5.0).abs() < 1e-9);
        assert!((b.average(4 * NANOS_PER_SEC, 2) - 0.0).abs() < 1e-9);
        // Old seconds leave the window.
        b.record(70 * NANOS_PER_SEC, 2 * NANOS_PER_SEC, 0, 60);
        assert!(b.counts.is_empty());
        assert_eq!(b.average(70 * NANOS_PER_SEC, 60), 0.0);
    }

    #[test]
    fn sizes_for_the_stable_rate_over_the_target() {
        let mut s = KpaScaler::new(KpaConfig::default()).unwrap();
        // 35 rps over 7 rps per pod = 5 pods from 1 ready pod (5/1 >= 2, so this first tick also panics).
        let one = ready(1);
        let d = s.decide(&load(2, 70, 1, 100, &one));
        assert_eq!(d.add, 4);
        let five = ready(5);
        steady(&mut s, 2, 40, 35, &five);
        // Two seconds at 36 rps lift the stable average to 35.05 rps, over 5 x 7.
        let d = s.decide(&load(42, 72, 1, 100, &five));
        assert_eq!(d.add, 1);
    }

    #[test]
    fn panics_on_a_3x_spike_and_does_not_scale_down_in_panic() {
        let mut s = KpaScaler::new(KpaConfig::default()).unwrap();
        let two = ready(2);
        steady(&mut s, 0, 120, 14, &two); // 14 rps / 7 = 2 pods
        assert!(!s.in_panic());
        // 3x spike to 42 rps: panic window (6 s) = (4*14 + 2*42)/6 = 23.3 rps -> 4 pods = 2x ready.
        let d = s.decide(&load(122, 84, 1, 100, &two));
        assert!(s.in_panic());
        assert_eq!(
            d.add, 2,
            "stable alone wants 3: (58*14 + 2*42)/60 = 14.9 rps"
        );
        let four = [ready(2), vec![inst(3, false), inst(4, false)]].concat();
        // (2*14 + 4*42)/6 = 32.7 rps -> 5 pods; ratio 5/2 ready.
        assert_eq!(s.decide(&load(124, 84, 1, 100, &four)).add, 1);
        let five = [
            ready(2),
            vec![inst(3, false), inst(4, false), inst(5, false)],
        ]
        .concat();
        assert_eq!(
            s.decide(&load(126, 84, 1, 100, &five)).add,
            1,
            "42/7 = 6 pods"
        );
        let six = ready(6);
        // Back to 14 rps: the panic window no longer triggers, but panic lasts a stable window past the last
        // trigger (126 s), so no scale-down until after 186 s.
        for sec in (128..=186).step_by(2) {
            let d = s.decide(&load(sec, 28, 1, 100, &six));
            assert!(d.is_hold(), "in panic at {sec}s: {d:?}");
            assert!(s.in_panic());
        }
        let d = s.decide(&load(188, 28, 1, 100, &six));
        assert!(!s.in_panic());
        // The stable window is back to 14 rps: 2 pods, but at most 2x down per tick: 6 -> 3.
        assert_eq!(d.remove, vec![6, 5, 4]);
    }

    #[test]
    fn scales_down_at_most_2x_per_tick_and_keeps_one_until_the_grace() {
        let mut s = KpaScaler::new(KpaConfig::default()).unwrap();
        let ten = ready(10);
        assert_eq!(s.decide(&load(2, 0, 0, 100, &ten)).remove.len(), 5);
        let five = ready(5);
        assert_eq!(s.decide(&load(4, 0, 0, 100, &five)).remove, vec![5, 4, 3]);
        let two = ready(2);
        assert_eq!(s.decide(&load(6, 0, 0, 100, &two)).remove, vec![2]);
        // One left: no traffic since the start (0 s), so it goes only at 60 + 30 = 90 s.
        let one = ready(1);
        for sec in (8..90).step_by(2) {
            assert!(s.decide(&load(sec, 0, 0, 100, &one)).is_hold(), "at {sec}s");
        }
        assert_eq!(s.decide(&load(90, 0, 0, 100, &one)).remove, vec![1]);
    }

    #[test]
    fn never_scales_to_zero_with_min_one_and_cold_starts_from_zero() {
        let mut s = KpaScaler::new(KpaConfig::default()).unwrap();
        let one = ready(1);
        for sec in (2..300).step_by(2) {
            assert!(s.decide(&load(sec, 0, 1, 100, &one)).is_hold());
        }
        let mut s = KpaScaler::new(KpaConfig::default()).unwrap();
        assert!(s.decide(&load(2, 0, 0, 100, &[])).is_hold());
        assert_eq!(s.decide(&load(4, 1, 0, 100, &[])).add, 1);
        // A burst from zero is sized at once (ready count 0 reads as 1, and the up-rate is 1000x).
        let mut s = KpaScaler::new(KpaConfig::default()).unwrap();
        assert_eq!(s.decide(&load(2, 140, 0, 100, &[])).add, 10);
    }

    #[test]
    fn respects_max_and_min() {
        let mut s = KpaScaler::new(KpaConfig::default()).unwrap();
        let one = ready(1);
        assert_eq!(s.decide(&load(2, 1_000, 1, 3, &one)).add, 2);
        let three = ready(3);
        let mut s = KpaScaler::new(KpaConfig::default()).unwrap();
        assert!(s.decide(&load(2, 0, 3, 10, &three)).is_hold());
    }

    #[test]
    fn traffic_resets_the_scale_to_zero_clock() {
        let mut s = KpaScaler::new(KpaConfig::default()).unwrap();
        let one = ready(1);
        assert!(s.decide(&load(2, 2, 0, 10, &one)).is_hold());
        // Last traffic at 2 s: the last instance may go at 2 + 90 = 92 s.
        for sec in (4..92).step_by(2) {
            assert!(s.decide(&load(sec, 0, 0, 10, &one)).is_hold(), "at {sec}s");
        }
        assert_eq!(s.decide(&load(92, 0, 0, 10, &one)).remove, vec![1]);
    }
}
