//! The public FaST-GShare-Autoscaler's policy (`docs/policies.md`, `docs/baselines.md`): every 10 s, compare
//! the 10-second request rate with the function's total capacity (the throughput profiled at each pod's
//! configuration); add `ceil(deficit / c)` instances when the rate exceeds it, remove `floor(surplus / c)` when
//! it falls short. The optional `threshold` band is off by default: the published controller's 20% band is
//! commented out.

use super::horizontal::{FunctionLoad, HorizontalScaler, ScaleDecision};
use super::lazy::{
    EPS, capacity_known, ceil_count, finish, floor_count, has_demand, require, require_seconds,
    seconds_to_ns, towards,
};
use crate::error::FieldError;
use serde::{Deserialize, Serialize};
use std::collections::VecDeque;

/// Settings of [`FastGShareScaler`]; the defaults are the values of the published controller's last version
/// with a scaling rule (`FaST-GShare-Autoscaler`, commit ff718f9, `internal/controller/fastfunc_controller.go`).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct FastGShareConfig {
    /// How often the controller decides, seconds (its ticker: 10.0).
    pub interval_s: f64,
    /// Window the request rate is averaged over, seconds (Prometheus `rate(...[10s])`: 10.0).
    pub rate_window_s: f64,
    /// Relative gap between rate and capacity that triggers a change, both ways (0.0: any deficit scales up,
    /// a surplus of a whole instance scales down; the commented-out `deltaReqs > 0.2 × totalRPSCap` is 0.2).
    pub threshold: f64,
}

impl Default for FastGShareConfig {
    fn default() -> Self {
        FastGShareConfig {
            interval_s: 10.0,
            rate_window_s: 10.0,
            threshold: 0.0,
        }
    }
}

impl FastGShareConfig {
    /// Checks positive interval and window lengths and a threshold in `[0, 10]`.
    pub fn validate(&self) -> Result<(), FieldError> {
        const S: &str = "fast-gshare";
        require_seconds(S, "interval_s", self.interval_s)?;
        require_seconds(S, "rate_window_s", self.rate_window_s)?;
        let t = self.threshold;
        require(
            t.is_finite() && (0.0..=10.0).contains(&t),
            S,
            "threshold",
            t,
            "must lie in [0, 10]",
        )
    }
}

/// The request rate over a sliding window, from per-interval arrival counts: like Prometheus' `rate()` over the
/// intervals that lie wholly inside the window (or the latest one, when none does). Shared with HAS-GPU,
/// whose controller reads the same 10-second rate.
#[derive(Debug, Clone, Default)]
pub(crate) struct RateWindow {
    /// (end, length, arrivals) of recent intervals, oldest first; times in nanoseconds.
    samples: VecDeque<(u64, u64, u64)>,
}

impl RateWindow {
    /// Records the interval that ends at `now_ns`, keeping only those that end within `window_ns`.
    pub(crate) fn push(&mut self, now_ns: u64, interval_ns: u64, arrivals: u64, window_ns: u64) {
        self.samples.push_back((now_ns, interval_ns, arrivals));
        let horizon = now_ns.saturating_sub(window_ns);
        while self.samples.len() > 1
            && self
                .samples
                .front()
                .is_some_and(|&(end, _, _)| end <= horizon)
        {
            self.samples.pop_front();
        }
    }

    /// Requests per second over the intervals that started within `window_ns` of `now_ns`.
    pub(crate) fn rate(&self, now_ns: u64, window_ns: u64) -> f64 {
        let horizon = now_ns.saturating_sub(window_ns);
        let inside = self
            .samples
            .iter()
            .filter(|&&(end, len, _)| end.saturating_sub(len) >= horizon && end <= now_ns);
        let (mut arrivals, mut ns) = (0u64, 0u64);
        for &(_, len, count) in inside {
            arrivals = arrivals.saturating_add(count);
            ns = ns.saturating_add(len);
        }
        if ns == 0 {
            // No interval fits in the window: fall back to the latest one.
            match self.samples.back() {
                Some(&(_, len, count)) if len > 0 => count as f64 * 1e9 / len as f64,
                _ => 0.0,
            }
        } else {
            arrivals as f64 * 1e9 / ns as f64
        }
    }
}

/// FaST-GShare's basic autoscaler for one function: `delta = rate − Σ capacity`; add `ceil(delta / c)` when
/// `delta` exceeds 20% of capacity, remove `floor(−delta / c)` when the surplus does.
#[derive(Debug, Clone)]
pub struct FastGShareScaler {
    config: FastGShareConfig,
    window: RateWindow,
}

impl FastGShareScaler {
    /// A scaler with `config`, or the rule it breaks.
    pub fn new(config: FastGShareConfig) -> Result<Self, FieldError> {
        config.validate()?;
        Ok(FastGShareScaler {
            config,
            window: RateWindow::default(),
        })
    }

    /// The configuration it runs with.
    pub fn config(&self) -> &FastGShareConfig {
        &self.config
    }
}

impl HorizontalScaler for FastGShareScaler {
    fn name(&self) -> &'static str {
        "fast-gshare"
    }

    fn interval_ns(&self) -> u64 {
        seconds_to_ns(self.config.interval_s)
    }

    fn decide(&mut self, load: &FunctionLoad<'_>) -> ScaleDecision {
        let window_ns = seconds_to_ns(self.config.rate_window_s);
        self.window.push(
            load.now_ns,
            seconds_to_ns(load.interval_s),
            load.arrivals,
            window_ns,
        );
        let rate = self.window.rate(load.now_ns, window_ns);
        let n = load.count();
        if !capacity_known(load) {
            let target = if n == 0 && has_demand(load) { 1 } else { n };
            return finish(load, towards(load, target));
        }
        let c = load.per_instance_capacity;
        let total: f64 = load
            .instances
            .iter()
            .map(|i| i.capacity())
            .filter(|x| x.is_finite())
            .sum::<f64>()
            .max(0.0);
        let delta = rate - total;
        let threshold = self.config.threshold * total;
        let target = if total <= 0.0 {
            if rate > 0.0 || (n == 0 && load.queued > 0) {
                n.saturating_add(ceil_count(rate / c).max(1))
            } else {
                n
            }
        } else if delta > threshold + EPS {
            n.saturating_add(ceil_count(delta / c))
        } else if -delta > threshold + EPS {
            n.saturating_sub(floor_count(-delta / c))
        } else {
            n
        };
        finish(load, towards(load, target))
    }
}

#[cfg(test)]
mod tests {
    use super::super::NANOS_PER_SEC;
    use super::super::horizontal::InstanceLoad;
    use super::super::lazy::tests::{inst, load_at, ready};
    use super::*;

    /// A 2-second load at second `sec`.
    fn tick(
        sec: u64,
        arrivals: u64,
        min: u32,
        max: u32,
        instances: &[InstanceLoad],
    ) -> FunctionLoad<'_> {
        load_at(sec, 2.0, arrivals, min, max, instances)
    }

    /// The commented-out 20% band, which most tests below exercise.
    fn banded() -> FastGShareConfig {
        FastGShareConfig {
            threshold: 0.2,
            ..FastGShareConfig::default()
        }
    }

    #[test]
    fn defaults_and_validation() {
        let c = FastGShareConfig::default();
        assert_eq!(
            (c.interval_s, c.rate_window_s, c.threshold),
            (10.0, 10.0, 0.0)
        );
        assert_eq!(
            FastGShareScaler::new(c).unwrap().interval_ns(),
            10 * NANOS_PER_SEC
        );
        let err = FastGShareConfig {
            threshold: -0.1,
            ..c
        }
        .validate()
        .unwrap_err();
        assert_eq!(
            (err.field.as_str(), err.value.as_str()),
            ("fast-gshare.threshold", "-0.1")
        );
        assert_eq!(
            FastGShareConfig {
                rate_window_s: 0.0,
                ..c
            }
            .validate()
            .unwrap_err()
            .field,
            "fast-gshare.rate_window_s"
        );
    }

    #[test]
    fn rate_window_averages_the_last_ten_seconds() {
        let mut w = RateWindow::default();
        let s = NANOS_PER_SEC;
        for k in 1..=5 {
            w.push(2 * k * s, 2 * s, 20, 10 * s); // 10 rps
        }
        assert!((w.rate(10 * s, 10 * s) - 10.0).abs() < 1e-9);
        w.push(12 * s, 2 * s, 120, 10 * s); // 60 rps for 2 s: (4 * 20 + 120) / 10 = 20 rps
        assert!((w.rate(12 * s, 10 * s) - 20.0).abs() < 1e-9);
        // Fewer than 10 s seen: average over what was seen.
        let mut w = RateWindow::default();
        w.push(2 * s, 2 * s, 30, 10 * s);
        assert!((w.rate(2 * s, 10 * s) - 15.0).abs() < 1e-9);
        // An interval longer than the window: use it alone.
        let mut w = RateWindow::default();
        w.push(30 * s, 30 * s, 300, 10 * s);
        assert!((w.rate(30 * s, 10 * s) - 10.0).abs() < 1e-9);
    }

    #[test]
    fn adds_ceil_of_the_deficit_only_beyond_20_percent() {
        // 2 instances x 10 rps = 20; 24 rps is exactly 20% over: hold; 25 rps: add ceil(5 / 10) = 1.
        let two = ready(2);
        let mut s = FastGShareScaler::new(banded()).unwrap();
        assert!(s.decide(&tick(2, 48, 1, 10, &two)).is_hold());
        let mut s = FastGShareScaler::new(banded()).unwrap();
        assert_eq!(s.decide(&tick(2, 50, 1, 10, &two)).add, 1);
        // 47 rps: delta 27 -> 3 more.
        let mut s = FastGShareScaler::new(banded()).unwrap();
        assert_eq!(s.decide(&tick(2, 94, 1, 10, &two)).add, 3);
    }

    #[test]
    fn without_the_band_any_deficit_adds_and_only_a_whole_spare_instance_goes() {
        let two = ready(2);
        // 2 x 10 rps; 21 rps: add ceil(1 / 10) = 1.
        let mut s = FastGShareScaler::new(FastGShareConfig::default()).unwrap();
        assert_eq!(s.decide(&tick(2, 42, 1, 10, &two)).add, 1);
        // 11 rps: surplus 9 < one instance: hold; 9 rps: remove floor(11 / 10) = 1.
        let mut s = FastGShareScaler::new(FastGShareConfig::default()).unwrap();
        assert!(s.decide(&tick(2, 22, 1, 10, &two)).is_hold());
        let mut s = FastGShareScaler::new(FastGShareConfig::default()).unwrap();
        assert_eq!(s.decide(&tick(2, 18, 1, 10, &two)).remove, vec![2]);
    }

    #[test]
    fn removes_floor_of_the_surplus_newest_first() {
        // 5 x 10 = 50 rps of capacity at 12 rps: surplus 38 > 10 -> remove floor(3.8) = 3.
        let five = ready(5);
        let mut s = FastGShareScaler::new(banded()).unwrap();
        assert_eq!(s.decide(&tick(2, 24, 1, 10, &five)).remove, vec![5, 4, 3]);
        // 41 rps: surplus 9 <= 10: hold.
        let mut s = FastGShareScaler::new(banded()).unwrap();
        assert!(s.decide(&tick(2, 82, 1, 10, &five)).is_hold());
        // Not-ready instances go first.
        let insts = [inst(1, true), inst(2, false), inst(3, true)];
        let mut s = FastGShareScaler::new(banded()).unwrap();
        assert_eq!(
            s.decide(&tick(2, 40, 1, 10, &insts)).remove,
            vec![2],
            "20 rps: surplus 10 -> one"
        );
    }

    #[test]
    fn capacity_counts_time_quotas() {
        // Two instances at quota 0.5 of 10 rps = 10 rps in all; 13 rps is 30% over: add ceil(3 / 10) = 1.
        let half: Vec<InstanceLoad> = ready(2)
            .into_iter()
            .map(|i| InstanceLoad {
                time_quota: 0.5,
                ..i
            })
            .collect();
        let mut s = FastGShareScaler::new(banded()).unwrap();
        assert_eq!(s.decide(&tick(2, 26, 1, 10, &half)).add, 1);
    }

    #[test]
    fn reacts_to_the_ten_second_average_not_the_last_tick() {
        let two = ready(2);
        let mut s = FastGShareScaler::new(banded()).unwrap();
        for sec in (2..=8).step_by(2) {
            assert!(s.decide(&tick(sec, 40, 1, 10, &two)).is_hold());
        }
        // One 2-second burst at 40 rps: (4 x 40 + 80) / 10 = 24 rps, not over 20%.
        assert!(s.decide(&tick(10, 80, 1, 10, &two)).is_hold());
        // A second one: (3 x 40 + 2 x 80) / 10 = 28 rps, 40% over: add 1.
        assert_eq!(s.decide(&tick(12, 80, 1, 10, &two)).add, 1);
    }

    #[test]
    fn respects_min_max_and_cold_starts_from_zero() {
        let one = ready(1);
        let mut s = FastGShareScaler::new(banded()).unwrap();
        assert_eq!(s.decide(&tick(2, 1_000, 1, 4, &one)).add, 3);
        let three = ready(3);
        let mut s = FastGShareScaler::new(banded()).unwrap();
        assert_eq!(s.decide(&tick(2, 0, 2, 4, &three)).remove, vec![3]);
        let mut s = FastGShareScaler::new(banded()).unwrap();
        assert_eq!(s.decide(&tick(2, 2, 0, 4, &[])).add, 1);
        let mut s = FastGShareScaler::new(banded()).unwrap();
        assert_eq!(
            s.decide(&tick(2, 60, 0, 4, &[])).add,
            3,
            "30 rps from zero: ceil(30 / 10)"
        );
        let mut s = FastGShareScaler::new(banded()).unwrap();
        assert!(s.decide(&tick(2, 0, 0, 4, &[])).is_hold());
        // Scale to zero with min 0: surplus 10 > 2 -> floor(10 / 10) = 1 removed.
        let mut s = FastGShareScaler::new(banded()).unwrap();
        assert_eq!(s.decide(&tick(2, 0, 0, 4, &one)).remove, vec![1]);
    }
}
