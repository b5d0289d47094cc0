//! An INFless-style reactive scaler (`docs/policies.md`): sizes the function for the highest one-second rate
//! it saw lately, scales out at once, and keeps surplus instances warm for a keep-alive before removing them.

use super::horizontal::{FunctionLoad, HorizontalScaler, ScaleDecision};
use super::lazy::{
    MAX_SAMPLES, bounds, capacity_known, ceil_count, finish, has_demand, require, require_seconds,
    seconds_to_ns, towards,
};
use crate::error::FieldError;
use serde::{Deserialize, Serialize};
use std::collections::VecDeque;

/// Settings of [`InflessScaler`].
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct InflessConfig {
    /// How often the scaler decides, seconds (1.0).
    pub interval_s: f64,
    /// Recent one-interval rates whose maximum is the rate to provision for (3): INFless sizes for the RPS
    /// range it must sustain, not the mean.
    pub rate_samples: u32,
    /// How long the rate must need fewer instances, continuously, before one is removed, seconds (60.0):
    /// INFless keeps instances warm instead of paying another cold start.
    pub keep_alive_s: f64,
}

impl Default for InflessConfig {
    fn default() -> Self {
        InflessConfig {
            interval_s: 1.0,
            rate_samples: 3,
            keep_alive_s: 60.0,
        }
    }
}

impl InflessConfig {
    /// Checks a positive interval, 1..=86400 rate samples and a keep-alive in `[0, 86400]` seconds.
    pub fn validate(&self) -> Result<(), FieldError> {
        const S: &str = "infless";
        require_seconds(S, "interval_s", self.interval_s)?;
        require(
            (1..=MAX_SAMPLES).contains(&self.rate_samples),
            S,
            "rate_samples",
            self.rate_samples,
            "must lie in [1, 86400]",
        )?;
        let k = self.keep_alive_s;
        require(
            k.is_finite() && (0.0..=86_400.0).contains(&k),
            S,
            "keep_alive_s",
            k,
            "must lie in [0, 86400] seconds",
        )
    }
}

/// INFless-style scaler for one function: provisions `ceil(max recent rate / capacity)` instances, adds at
/// once, removes one per interval once the surplus has lasted a keep-alive.
#[derive(Debug, Clone)]
pub struct InflessScaler {
    config: InflessConfig,
    /// The last `rate_samples` rates, oldest first.
    rates: VecDeque<f64>,
    /// Start of the interval since which the rate has needed fewer instances than exist; `None` otherwise.
    surplus_since_ns: Option<u64>,
}

impl InflessScaler {
    /// A scaler with `config`, or the rule it breaks.
    pub fn new(config: InflessConfig) -> Result<Self, FieldError> {
        config.validate()?;
        Ok(InflessScaler {
            config,
            rates: VecDeque::with_capacity(config.rate_samples as usize),
            surplus_since_ns: None,
        })
    }

    /// The configuration it runs with.
    pub fn config(&self) -> &InflessConfig {
        &self.config
    }

    /// The rate it provisions for now: the maximum of the recent samples, requests per second.
    pub fn provisioned_rate(&self) -> f64 {
        self.rates.iter().copied().fold(0.0, f64::max)
    }
}

impl HorizontalScaler for InflessScaler {
    fn name(&self) -> &'static str {
        "infless"
    }

    fn interval_ns(&self) -> u64 {
        seconds_to_ns(self.config.interval_s)
    }

    fn decide(&mut self, load: &FunctionLoad<'_>) -> ScaleDecision {
        if self.rates.len() >= self.config.rate_samples as usize {
            self.rates.pop_front();
        }
        let rps = load.rps();
        self.rates
            .push_back(if rps.is_finite() { rps.max(0.0) } else { 0.0 });

        let n = load.count();
        let (min, max) = bounds(load);
        let mut desired = if capacity_known(load) {
            ceil_count(self.provisioned_rate() / load.per_instance_capacity)
        } else {
            n
        };
        if n == 0 && has_demand(load) {
            desired = desired.max(1);
        }
        let desired = desired.clamp(min, max);

        let decision = if desired < n {
            let since = *self
                .surplus_since_ns
                .get_or_insert(load.now_ns.saturating_sub(seconds_to_ns(load.interval_s)));
            let keep_alive_ns = seconds_to_ns(self.config.keep_alive_s);
            if load.now_ns.saturating_sub(since) >= keep_alive_ns {
                // Every surplus instance has idled a keep-alive; one goes per interval, the clock keeps running.
                towards(load, n - 1)
            } else {
                ScaleDecision::hold()
            }
        } else {
            self.surplus_since_ns = None;
            towards(load, desired)
        };
        finish(load, decision)
    }
}

#[cfg(test)]
mod tests {
    use super::super::NANOS_PER_SEC;
    use super::super::lazy::tests::{inst, load_at, ready};
    use super::*;

    #[test]
    fn defaults_and_validation() {
        let c = InflessConfig::default();
        assert_eq!(
            (c.interval_s, c.rate_samples, c.keep_alive_s),
            (1.0, 3, 60.0)
        );
        assert_eq!(InflessScaler::new(c).unwrap().interval_ns(), NANOS_PER_SEC);
        let err = InflessConfig {
            rate_samples: 0,
            ..c
        }
        .validate()
        .unwrap_err();
        assert_eq!(
            (err.field.as_str(), err.value.as_str()),
            ("infless.rate_samples", "0")
        );
        assert_eq!(
            InflessConfig {
                keep_alive_s: -1.0,
                ..c
            }
            .validate()
            .unwrap_err()
            .field,
            "infless.keep_alive_s"
        );
        assert_eq!(
            InflessConfig {
                interval_s: f64::NAN,
                ..c
            }
            .validate()
            .unwrap_err()
            .field,
            "infless.interval_s"
        );
    }

    #[test]
    fn scales_out_at_once_to_the_max_of_the_last_three_rates() {
        let mut s = InflessScaler::new(InflessConfig::default()).unwrap();
        let one = ready(1);
        assert_eq!(
            s.decide(&load_at(1, 1.0, 35, 1, 10, &one)).add,
            3,
            "35 rps / 10 = 4 instances"
        );
        let four = ready(4);
        // Two quiet seconds: the 35 rps second is still among the last three.
        assert!(s.decide(&load_at(2, 1.0, 5, 1, 10, &four)).is_hold());
        assert!(s.decide(&load_at(3, 1.0, 5, 1, 10, &four)).is_hold());
        assert_eq!(s.provisioned_rate(), 35.0);
        s.decide(&load_at(4, 1.0, 5, 1, 10, &four));
        assert_eq!(s.provisioned_rate(), 5.0);
    }

    #[test]
    fn scales_in_by_one_after_a_continuous_keep_alive() {
        let mut s = InflessScaler::new(InflessConfig::default()).unwrap();
        let four = ready(4);
        // 15 rps needs 2 of the 4: surplus from the interval starting at 0 s.
        for sec in 1..60 {
            assert!(
                s.decide(&load_at(sec, 1.0, 15, 1, 10, &four)).is_hold(),
                "at {sec}s"
            );
        }
        assert_eq!(
            s.decide(&load_at(60, 1.0, 15, 1, 10, &four)).remove,
            vec![4]
        );
        // The surplus clock keeps running: the next surplus instance goes on the next interval.
        let three = ready(3);
        assert_eq!(
            s.decide(&load_at(61, 1.0, 15, 1, 10, &three)).remove,
            vec![3]
        );
        let two = ready(2);
        assert!(s.decide(&load_at(62, 1.0, 15, 1, 10, &two)).is_hold());
    }

    #[test]
    fn a_busy_second_restarts_the_keep_alive() {
        let mut s = InflessScaler::new(InflessConfig::default()).unwrap();
        let three = ready(3);
        for sec in 1..50 {
            assert!(s.decide(&load_at(sec, 1.0, 5, 1, 10, &three)).is_hold());
        }
        // One second at 30 rps needs all three (and stays in the max for three seconds).
        assert!(s.decide(&load_at(50, 1.0, 30, 1, 10, &three)).is_hold());
        // Surplus again from the interval starting at 52 s: first removal at 112 s.
        for sec in 51..112 {
            assert!(
                s.decide(&load_at(sec, 1.0, 5, 1, 10, &three)).is_hold(),
                "at {sec}s"
            );
        }
        assert_eq!(
            s.decide(&load_at(112, 1.0, 5, 1, 10, &three)).remove,
            vec![3]
        );
    }

    #[test]
    fn removes_not_ready_instances_first() {
        let mut s = InflessScaler::new(InflessConfig {
            keep_alive_s: 0.0,
            ..InflessConfig::default()
        })
        .unwrap();
        let insts = [inst(1, true), inst(2, false), inst(3, true)];
        assert_eq!(s.decide(&load_at(1, 1.0, 0, 1, 10, &insts)).remove, vec![2]);
    }

    #[test]
    fn respects_min_max_and_cold_starts_from_zero() {
        let mut s = InflessScaler::new(InflessConfig::default()).unwrap();
        let one = ready(1);
        assert_eq!(s.decide(&load_at(1, 1.0, 500, 1, 3, &one)).add, 2);
        let mut s = InflessScaler::new(InflessConfig {
            keep_alive_s: 0.0,
            ..InflessConfig::default()
        })
        .unwrap();
        let two = ready(2);
        assert!(s.decide(&load_at(1, 1.0, 0, 2, 3, &two)).is_hold());
        let mut s = InflessScaler::new(InflessConfig::default()).unwrap();
        assert_eq!(s.decide(&load_at(1, 1.0, 1, 0, 3, &[])).add, 1);
        let mut queued = load_at(2, 1.0, 0, 0, 3, &[]);
        queued.queued = 1;
        let mut s = InflessScaler::new(InflessConfig::default()).unwrap();
        assert_eq!(s.decide(&queued).add, 1);
        // Scale to zero with min 0 after the keep-alive.
        let mut s = InflessScaler::new(InflessConfig::default()).unwrap();
        for sec in 1..60 {
            assert!(s.decide(&load_at(sec, 1.0, 0, 0, 3, &one)).is_hold());
        }
        assert_eq!(s.decide(&load_at(60, 1.0, 0, 0, 3, &one)).remove, vec![1]);
    }
}
