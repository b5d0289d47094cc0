//! TGS-style adaptive rate control (NSDI'23, `docs/policies.md`): the opportunistic training job's kernel
//! rate is cut by ×1/1.5 when the production (inference) job's kernel rate suffered in the last control
//! period and raised ×1.5 otherwise. The production job's loss is estimated from how long it was busy in
//! the period and the share time slicing took from it: `busy_fraction × rate / (1 + rate)`; it "suffered"
//! when that exceeds `tolerance`. There is no spatial partition: both jobs launch on the whole GPU and the hardware time-slices them
//! in proportion to what they launch.

use crate::error::FieldError;
use crate::scaling::vertical::{
    Arbitration, Grant, ResidentState, VerticalController, VerticalEvent,
};
use serde::{Deserialize, Serialize};

/// TGS's constants.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TgsConfig {
    /// Control period of the rate monitor, milliseconds.
    pub period_ms: f64,
    /// Multiplicative increase of the opportunistic rate after a quiet period.
    pub increase: f64,
    /// Multiplicative decrease after a period in which the production job was busy.
    pub decrease: f64,
    /// Lowest opportunistic rate, as a fraction of the GPU.
    pub min_rate: f64,
    /// Production throughput loss in a period above which the opportunistic rate is cut.
    pub tolerance: f64,
}

impl Default for TgsConfig {
    fn default() -> Self {
        TgsConfig {
            period_ms: 50.0,
            increase: 1.5,
            decrease: 1.5,
            min_rate: 0.02,
            tolerance: 0.05,
        }
    }
}

impl TgsConfig {
    /// Checks that every constant is usable.
    pub fn validate(&self) -> Result<(), FieldError> {
        let err = |field: &str, value: f64, rule: &str| {
            Err(FieldError::new(format!("tgs.{field}"), value, rule))
        };
        if !(self.period_ms > 0.0 && self.period_ms.is_finite()) {
            return err("period_ms", self.period_ms, "must be a positive number");
        }
        if self.increase.partial_cmp(&1.0) != Some(std::cmp::Ordering::Greater) {
            return err("increase", self.increase, "must be > 1");
        }
        if self.decrease.partial_cmp(&1.0) != Some(std::cmp::Ordering::Greater) {
            return err("decrease", self.decrease, "must be > 1");
        }
        if !(self.min_rate > 0.0 && self.min_rate <= 1.0) {
            return err("min_rate", self.min_rate, "must be in (0, 1]");
        }
        if !(0.0..1.0).contains(&self.tolerance) {
            return err("tolerance", self.tolerance, "must be in [0, 1)");
        }
        Ok(())
    }
}

/// The rate controller of one GPU.
#[derive(Debug, Clone)]
pub struct TgsRate {
    config: TgsConfig,
    period_ns: u64,
    rate: f64,
    busy_in_period: bool,
    /// Production busy time booked in the current period, nanoseconds.
    busy_ns: u64,
    /// Start of the production busy period in progress, if any.
    busy_since: Option<u64>,
    period_start_ns: u64,
    next_tick_ns: Option<u64>,
    adjustments: u64,
}

impl TgsRate {
    /// A controller for one GPU; the configuration must have passed [`TgsConfig::validate`].
    pub fn new(config: TgsConfig) -> Self {
        TgsRate {
            config,
            period_ns: (config.period_ms * 1e6).round().max(1.0) as u64,
            rate: 1.0,
            busy_in_period: false,
            busy_ns: 0,
            busy_since: None,
            period_start_ns: 0,
            next_tick_ns: None,
            adjustments: 0,
        }
    }

    /// The opportunistic job's current rate, fraction of the GPU.
    pub fn rate(&self) -> f64 {
        self.rate
    }

    fn apply(&mut self, residents: &[ResidentState], grants: &mut [Grant]) {
        for (g, r) in grants.iter_mut().zip(residents) {
            let partition = if r.kind.is_inference() {
                1.0
            } else {
                self.rate
            };
            let new = Grant::spatial(partition, 0.0);
            if *g != new {
                *g = new;
                self.adjustments += 1;
            }
        }
    }

    fn ensure_tick(&mut self, now_ns: u64) {
        if self.next_tick_ns.is_none() {
            self.period_start_ns = now_ns;
            self.busy_ns = 0;
            self.next_tick_ns = Some((now_ns / self.period_ns + 1) * self.period_ns);
        }
    }

    /// Estimated share of the production job's throughput lost to time slicing in the period ending now.
    fn production_loss(&mut self, now_ns: u64) -> f64 {
        if let Some(since) = self.busy_since {
            self.busy_ns += now_ns.saturating_sub(since.max(self.period_start_ns));
            self.busy_since = Some(now_ns);
        }
        let period = now_ns.saturating_sub(self.period_start_ns).max(1);
        let busy_fraction = (self.busy_ns as f64 / period as f64).min(1.0);
        busy_fraction * self.rate / (1.0 + self.rate)
    }
}

impl VerticalController for TgsRate {
    fn name(&self) -> &'static str {
        "tgs"
    }

    fn on_event(
        &mut self,
        now_ns: u64,
        event: VerticalEvent,
        residents: &[ResidentState],
        grants: &mut [Grant],
    ) -> Option<u64> {
        let has_training = residents.iter().any(|r| !r.kind.is_inference());
        match event {
            VerticalEvent::ResidentsChanged => {
                self.apply(residents, grants);
            }
            VerticalEvent::BusyStart { index } => {
                if residents.get(index).is_some_and(|r| r.kind.is_inference()) {
                    self.busy_in_period = true;
                    self.busy_since.get_or_insert(now_ns);
                }
            }
            VerticalEvent::BusyEnd { index, .. } => {
                let production_idle = !residents.iter().any(|r| r.kind.is_inference() && r.busy);
                if residents.get(index).is_some_and(|r| r.kind.is_inference())
                    && production_idle
                    && let Some(since) = self.busy_since.take()
                {
                    self.busy_ns += now_ns.saturating_sub(since.max(self.period_start_ns));
                }
            }
            VerticalEvent::Timer => {
                if self.next_tick_ns.is_some_and(|t| now_ns >= t) {
                    self.next_tick_ns = None;
                    let loss = self.production_loss(now_ns);
                    self.rate = if loss > self.config.tolerance {
                        (self.rate / self.config.decrease).max(self.config.min_rate)
                    } else {
                        (self.rate * self.config.increase).min(1.0)
                    };
                    self.apply(residents, grants);
                    self.busy_in_period = residents.iter().any(|r| r.kind.is_inference() && r.busy);
                }
            }
        }
        if has_training && (self.busy_in_period || self.rate < 1.0) {
            self.ensure_tick(now_ns);
        }
        self.next_tick_ns
    }

    fn adjustments(&self) -> u64 {
        self.adjustments
    }

    fn arbitration(&self) -> Arbitration {
        Arbitration::Proportional
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::request::InstanceKind;

    const MS: u64 = 1_000_000;

    fn residents(busy: bool) -> Vec<ResidentState> {
        let r = |id, kind, busy| ResidentState {
            id,
            kind,
            sm_request: 0.3,
            sm_limit: 1.0,
            time_quota: 1.0,
            busy,
            queue: Default::default(),
        };
        vec![
            r(1, InstanceKind::Inference, busy),
            r(2, InstanceKind::Training, true),
        ]
    }

    #[test]
    fn rate_falls_while_production_is_busy_and_recovers_after() {
        let mut c = TgsRate::new(TgsConfig::default());
        let mut g = vec![Grant::spatial(0.0, 0.0); 2];
        assert_eq!(
            c.on_event(
                0,
                VerticalEvent::ResidentsChanged,
                &residents(false),
                &mut g
            ),
            None
        );
        assert_eq!(g[1].partition, 1.0);
        let busy = residents(true);
        let mut t = c.on_event(MS, VerticalEvent::BusyStart { index: 0 }, &busy, &mut g);
        assert_eq!(t, Some(50 * MS));
        for _ in 0..3 {
            t = c.on_event(t.unwrap(), VerticalEvent::Timer, &busy, &mut g);
        }
        assert!((c.rate() - 1.0 / 3.375).abs() < 1e-12);
        assert!((g[1].partition - c.rate()).abs() < 1e-12);
        let idle = residents(false);
        t = c.on_event(
            t.unwrap() - MS,
            VerticalEvent::BusyEnd {
                index: 0,
                busy_ns: 1,
            },
            &idle,
            &mut g,
        );
        // The period in which it was still busy counts as busy; then three quiet periods restore 1.0.
        t = c.on_event(t.unwrap(), VerticalEvent::Timer, &idle, &mut g);
        for _ in 0..4 {
            t = c.on_event(t.unwrap(), VerticalEvent::Timer, &idle, &mut g);
        }
        assert_eq!(c.rate(), 1.0);
        assert_eq!(t, None);
        assert_eq!(c.arbitration(), Arbitration::Proportional);
    }

    #[test]
    fn rate_settles_where_production_loss_meets_the_tolerance() {
        let mut c = TgsRate::new(TgsConfig::default());
        let mut g = vec![Grant::spatial(0.0, 0.0); 2];
        let busy = residents(true);
        c.on_event(0, VerticalEvent::ResidentsChanged, &busy, &mut g);
        let mut t = c.on_event(0, VerticalEvent::BusyStart { index: 0 }, &busy, &mut g);
        for _ in 0..50 {
            t = c.on_event(t.unwrap(), VerticalEvent::Timer, &busy, &mut g);
        }
        // Always busy: loss = r / (1 + r) oscillates around 0.05, i.e. r around 0.053.
        let r = c.rate();
        assert!(r > 0.02 && r < 0.06 * 1.5, "rate {r}");
    }

    #[test]
    fn rate_never_falls_below_the_floor() {
        let mut c = TgsRate::new(TgsConfig {
            tolerance: 0.0,
            ..TgsConfig::default()
        });
        let mut g = vec![Grant::spatial(0.0, 0.0); 2];
        let busy = residents(true);
        c.on_event(0, VerticalEvent::ResidentsChanged, &busy, &mut g);
        let mut t = c.on_event(0, VerticalEvent::BusyStart { index: 0 }, &busy, &mut g);
        for _ in 0..50 {
            t = c.on_event(t.unwrap(), VerticalEvent::Timer, &busy, &mut g);
        }
        assert_eq!(c.rate(), 0.02);
    }
}
