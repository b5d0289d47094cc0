//! `slack`, a queue-aware token manager (the vertical controller of the `dilu-slo` policy; `docs/policies.md`).
//!
//! RCKM judges contention after the fact, from how long a finished burst took, and ignores bursts of up to six
//! windows. This controller looks at what the token manager can see in every window instead: for each
//! inference resident, how many requests it has not answered and how long the oldest of them has waited,
//! against the instance's SLO. The rule, evaluated at every window boundary while inference has work:
//!
//! - An inference resident is *urgent* when its oldest unanswered request has waited at least `boost_at` of its
//!   SLO; it stays urgent until that wait falls below `release_at` of the SLO or it has nothing left to do.
//!   Without a queue signal (no SLO known, or a busy process that publishes no queue) a burst longer than
//!   `fallback_busy_windows` windows counts as urgent instead, like RCKM's busy-based view.
//! - Inference is granted the whole device (its limit caps it) with its request guaranteed; an urgent resident
//!   is guaranteed its whole grant, so it takes SM time ahead of training.
//! - Training is granted its limit with its request guaranteed, so it takes whatever inference leaves; while an
//!   inference resident on the device is urgent, training's guarantee drops to `urgent_training_share` of its
//!   request (it still uses what is left over).
//!
//! Every change takes effect at a window boundary, as the interposer picks up its next window's budget.

use crate::error::FieldError;
use crate::scaling::vertical::{Grant, ResidentState, VerticalController, VerticalEvent};
use serde::{Deserialize, Serialize};

/// The controller's constants.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SlackConfig {
    /// Length of one token window, milliseconds.
    pub window_ms: f64,
    /// Fraction of the SLO the oldest unanswered request may wait before its instance is urgent.
    pub boost_at: f64,
    /// Fraction of the SLO below which the oldest wait must fall for an urgent instance to calm down.
    pub release_at: f64,
    /// Without a queue signal, a burst longer than this many windows makes its instance urgent.
    pub fallback_busy_windows: u32,
    /// Training's guarantee while inference on its device is urgent, as a fraction of its request.
    pub urgent_training_share: f64,
}

impl Default for SlackConfig {
    fn default() -> Self {
        SlackConfig {
            window_ms: 5.0,
            boost_at: 0.25,
            release_at: 0.1,
            fallback_busy_windows: 2,
            urgent_training_share: 0.25,
        }
    }
}

impl SlackConfig {
    /// Checks that every constant is usable.
    pub fn validate(&self) -> Result<(), FieldError> {
        let err = |field: &str, value: f64, rule: &str| {
            Err(FieldError::new(format!("slack.{field}"), value, rule))
        };
        if !(self.window_ms > 0.0 && self.window_ms.is_finite()) {
            return err("window_ms", self.window_ms, "must be a positive number");
        }
        if !(self.boost_at > 0.0 && self.boost_at <= 1.0) {
            return err("boost_at", self.boost_at, "must be in (0, 1]");
        }
        if !(self.release_at >= 0.0 && self.release_at <= self.boost_at) {
            return err("release_at", self.release_at, "must be in [0, boost_at]");
        }
        if !(0.0..=1.0).contains(&self.urgent_training_share) {
            return err(
                "urgent_training_share",
                self.urgent_training_share,
                "must be in [0, 1]",
            );
        }
        Ok(())
    }
}

/// What the controller remembers about one inference resident.
#[derive(Debug, Clone, Copy)]
struct Watch {
    id: u64,
    busy_since: Option<u64>,
    urgent: bool,
}

/// The token manager of one device.
#[derive(Debug, Clone)]
pub struct SlackGuard {
    config: SlackConfig,
    window_ns: u64,
    watches: Vec<Watch>,
    /// The window boundary at which the rule is evaluated next, while inference has work.
    next_tick_ns: Option<u64>,
    adjustments: u64,
    boosts: u64,
}

impl SlackGuard {
    /// A manager for one device. The configuration must have passed [`SlackConfig::validate`].
    pub fn new(config: SlackConfig) -> Self {
        SlackGuard {
            config,
            window_ns: (config.window_ms * 1e6).round().max(1.0) as u64,
            watches: Vec::new(),
            next_tick_ns: None,
            adjustments: 0,
            boosts: 0,
        }
    }

    /// How many times an inference resident turned urgent.
    pub fn boosts(&self) -> u64 {
        self.boosts
    }

    /// Whether resident `id` is urgent now.
    pub fn urgent(&self, id: u64) -> bool {
        self.watches.iter().any(|w| w.id == id && w.urgent)
    }

    fn next_boundary(&self, now_ns: u64) -> u64 {
        (now_ns / self.window_ns + 1) * self.window_ns
    }

    fn watch_mut(&mut self, id: u64) -> &mut Watch {
        let pos = match self.watches.iter().position(|w| w.id == id) {
            Some(p) => p,
            None => {
                self.watches.push(Watch {
                    id,
                    busy_since: None,
                    urgent: false,
                });
                self.watches.len() - 1
            }
        };
        &mut self.watches[pos]
    }

    /// Whether inference resident `r` is urgent at `now_ns`, given whether it was.
    fn judge(&self, now_ns: u64, r: &ResidentState, w: &Watch) -> bool {
        let q = r.queue;
        if q.signals(r.busy) {
            if q.queued == 0 {
                return false;
            }
            let at = if w.urgent {
                self.config.release_at
            } else {
                self.config.boost_at
            };
            q.oldest_wait_ns as f64 >= at * q.slo_ns as f64
        } else {
            // No queue signal: judge by how long the burst has lasted.
            let limit = u64::from(self.config.fallback_busy_windows) * self.window_ns;
            r.busy
                && w.busy_since
                    .is_some_and(|since| now_ns.saturating_sub(since) > limit)
        }
    }

    fn grant_for(&self, r: &ResidentState, any_urgent: bool) -> Grant {
        if r.kind.is_inference() {
            if self.urgent(r.id) {
                Grant::spatial(1.0, 1.0)
            } else {
                Grant::spatial(1.0, r.sm_request)
            }
        } else if any_urgent {
            Grant::spatial(r.sm_limit, r.sm_request * self.config.urgent_training_share)
        } else {
            Grant::spatial(r.sm_limit, r.sm_request)
        }
    }

    fn apply(&mut self, residents: &[ResidentState], grants: &mut [Grant]) {
        let any_urgent = residents
            .iter()
            .any(|r| r.kind.is_inference() && self.urgent(r.id));
        for (g, r) in grants.iter_mut().zip(residents) {
            let new = self.grant_for(r, any_urgent);
            if *g != new {
                *g = new;
                self.adjustments += 1;
            }
        }
    }

    /// Whether inference on the device has work or is still marked urgent (the rule must keep running).
    fn active(&self, residents: &[ResidentState]) -> bool {
        residents
            .iter()
            .any(|r| r.kind.is_inference() && (r.busy || r.queue.queued > 0))
            || self.watches.iter().any(|w| w.urgent)
    }

    fn evaluate(&mut self, now_ns: u64, residents: &[ResidentState], grants: &mut [Grant]) {
        for r in residents.iter().filter(|r| r.kind.is_inference()) {
            let w = *self.watch_mut(r.id);
            let urgent = self.judge(now_ns, r, &w);
            if urgent && !w.urgent {
                self.boosts += 1;
            }
            self.watch_mut(r.id).urgent = urgent;
        }
        self.apply(residents, grants);
    }
}

impl VerticalController for SlackGuard {
    fn name(&self) -> &'static str {
        "slack"
    }

    fn on_event(
        &mut self,
        now_ns: u64,
        event: VerticalEvent,
        residents: &[ResidentState],
        grants: &mut [Grant],
    ) -> Option<u64> {
        match event {
            VerticalEvent::ResidentsChanged => {
                self.watches
                    .retain(|w| residents.iter().any(|r| r.id == w.id));
                self.apply(residents, grants);
            }
            VerticalEvent::BusyStart { index } => {
                if let Some(r) = residents.get(index).filter(|r| r.kind.is_inference()) {
                    self.watch_mut(r.id).busy_since = Some(now_ns);
                }
            }
            VerticalEvent::BusyEnd { index, .. } => {
                if let Some(r) = residents.get(index).filter(|r| r.kind.is_inference()) {
                    self.watch_mut(r.id).busy_since = None;
                }
            }
            VerticalEvent::Timer => {
                if self.next_tick_ns.is_some_and(|t| now_ns >= t) {
                    self.next_tick_ns = None;
                    self.evaluate(now_ns, residents, grants);
                }
            }
        }
        if self.active(residents) {
            if self.next_tick_ns.is_none() {
                self.next_tick_ns = Some(self.next_boundary(now_ns));
            }
        } else {
            self.next_tick_ns = None;
        }
        self.next_tick_ns
    }

    fn adjustments(&self) -> u64 {
        self.adjustments
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::request::InstanceKind;
    use crate::scaling::vertical::QueueState;

    const MS: u64 = 1_000_000;
    const SLO: u64 = 100 * MS;

    /// An inference resident (request 0.3, limit 0.6) with `queued` requests, the oldest `wait_ms` old, next
    /// to a training resident (request 0.4, limit 0.7).
    fn residents(busy: bool, queued: u32, wait_ms: u64, slo_ns: u64) -> Vec<ResidentState> {
        vec![
            ResidentState {
                id: 1,
                kind: InstanceKind::Inference,
                sm_request: 0.3,
                sm_limit: 0.6,
                time_quota: 1.0,
                busy,
                queue: QueueState {
                    queued,
                    oldest_wait_ns: wait_ms * MS,
                    slo_ns,
                },
            },
            ResidentState {
                id: 2,
                kind: InstanceKind::Training,
                sm_request: 0.4,
                sm_limit: 0.7,
                time_quota: 1.0,
                busy: true,
                queue: QueueState::default(),
            },
        ]
    }

    fn start() -> (SlackGuard, Vec<Grant>) {
        let mut c = SlackGuard::new(SlackConfig::default());
        let mut g = vec![Grant::spatial(0.0, 0.0); 2];
        let t = c.on_event(
            0,
            VerticalEvent::ResidentsChanged,
            &residents(false, 0, 0, SLO),
            &mut g,
        );
        assert_eq!(t, None, "nothing to watch while inference is idle");
        (c, g)
    }

    #[test]
    fn calm_inference_keeps_its_request_and_training_its_limit() {
        let (mut c, mut g) = start();
        assert_eq!(g[0], Grant::spatial(1.0, 0.3));
        assert_eq!(g[1], Grant::spatial(0.7, 0.4));
        // A burst starts at 3 ms: the rule runs at every window boundary from 5 ms on.
        let busy = residents(true, 2, 0, SLO);
        let t = c.on_event(3 * MS, VerticalEvent::BusyStart { index: 0 }, &busy, &mut g);
        assert_eq!(t, Some(5 * MS));
        // 24 ms of waiting is below a quarter of the 100 ms SLO: nothing changes.
        let t = c.on_event(
            5 * MS,
            VerticalEvent::Timer,
            &residents(true, 2, 24, SLO),
            &mut g,
        );
        assert_eq!(t, Some(10 * MS));
        assert!(!c.urgent(1));
        assert_eq!(g[1], Grant::spatial(0.7, 0.4));
        assert_eq!(c.adjustments(), 2);
    }

    #[test]
    fn a_queue_eating_into_the_slo_takes_sm_time_from_training_until_it_drains() {
        let (mut c, mut g) = start();
        let t = c.on_event(
            0,
            VerticalEvent::BusyStart { index: 0 },
            &residents(true, 1, 0, SLO),
            &mut g,
        );
        assert_eq!(t, Some(5 * MS));
        // The oldest request has waited 25 ms = boost_at × SLO: urgent at this boundary.
        let t = c.on_event(
            5 * MS,
            VerticalEvent::Timer,
            &residents(true, 6, 25, SLO),
            &mut g,
        );
        assert_eq!(t, Some(10 * MS));
        assert!(c.urgent(1));
        assert_eq!(c.boosts(), 1);
        assert_eq!(g[0], Grant::spatial(1.0, 1.0));
        assert_eq!(g[1], Grant::spatial(0.7, 0.1));
        // Hysteresis: at 12 ms of waiting (above release_at × SLO = 10 ms) it stays urgent.
        c.on_event(
            10 * MS,
            VerticalEvent::Timer,
            &residents(true, 3, 12, SLO),
            &mut g,
        );
        assert!(c.urgent(1));
        // 9 ms: calm again, training gets its guarantee back.
        let t = c.on_event(
            15 * MS,
            VerticalEvent::Timer,
            &residents(true, 1, 9, SLO),
            &mut g,
        );
        assert!(!c.urgent(1));
        assert_eq!(g[1], Grant::spatial(0.7, 0.4));
        assert_eq!(t, Some(20 * MS));
        // The burst ends: one more boundary, then no more timers.
        let idle = residents(false, 0, 0, SLO);
        let ended = VerticalEvent::BusyEnd {
            index: 0,
            busy_ns: 17 * MS,
        };
        assert_eq!(c.on_event(17 * MS, ended, &idle, &mut g), None);
        assert_eq!(c.boosts(), 1);
    }

    #[test]
    fn under_contention_an_urgent_resident_gets_its_limit_before_training() {
        let (mut c, mut g) = start();
        c.on_event(
            0,
            VerticalEvent::BusyStart { index: 0 },
            &residents(true, 1, 0, SLO),
            &mut g,
        );
        let (mut shares, mut claims) = ([0.0; 2], [false; 2]);
        let calm = residents(true, 4, 20, SLO);
        c.on_event(5 * MS, VerticalEvent::Timer, &calm, &mut g);
        crate::scaling::share::device_shares(&c, &calm, &g, &mut shares, &mut claims);
        // Guarantees 0.3 + 0.4, the remaining 0.3 split by excess demand (0.3 and 0.3).
        assert!(
            (shares[0] - 0.45).abs() < 1e-12 && (shares[1] - 0.55).abs() < 1e-12,
            "{shares:?}"
        );
        let late = residents(true, 4, 30, SLO);
        c.on_event(10 * MS, VerticalEvent::Timer, &late, &mut g);
        crate::scaling::share::device_shares(&c, &late, &g, &mut shares, &mut claims);
        // Urgent: inference guaranteed its limit 0.6, training its 0.1 floor plus the 0.3 left.
        assert!(
            (shares[0] - 0.6).abs() < 1e-12 && (shares[1] - 0.4).abs() < 1e-12,
            "{shares:?}"
        );
    }

    #[test]
    fn without_a_queue_signal_a_long_burst_counts_as_urgent() {
        let (mut c, mut g) = start();
        // A busy process that publishes no queue (queued 0) and no SLO: judged by the burst's length.
        let silent = residents(true, 0, 0, 0);
        c.on_event(MS, VerticalEvent::BusyStart { index: 0 }, &silent, &mut g);
        c.on_event(5 * MS, VerticalEvent::Timer, &silent, &mut g);
        c.on_event(10 * MS, VerticalEvent::Timer, &silent, &mut g);
        assert!(!c.urgent(1), "a burst of 9 ms is two windows or less");
        c.on_event(15 * MS, VerticalEvent::Timer, &silent, &mut g);
        assert!(c.urgent(1), "14 ms > 2 windows");
        assert_eq!(g[1].guaranteed, 0.1);
        // An SLO alone does not help a busy process that reports no queue: still busy-based.
        let no_queue = residents(true, 0, 0, SLO);
        c.on_event(20 * MS, VerticalEvent::Timer, &no_queue, &mut g);
        assert!(c.urgent(1));
        let ended = VerticalEvent::BusyEnd {
            index: 0,
            busy_ns: 21 * MS,
        };
        let t = c.on_event(22 * MS, ended, &residents(false, 0, 0, 0), &mut g);
        assert_eq!(t, Some(25 * MS));
        let t = c.on_event(
            25 * MS,
            VerticalEvent::Timer,
            &residents(false, 0, 0, 0),
            &mut g,
        );
        assert!(!c.urgent(1));
        assert_eq!(t, None);
        assert_eq!(g[1], Grant::spatial(0.7, 0.4));
    }

    #[test]
    fn bad_constants_are_named() {
        let c = SlackConfig {
            release_at: 0.5,
            ..SlackConfig::default()
        };
        assert_eq!(
            c.validate().unwrap_err().to_string(),
            "slack.release_at = 0.5: must be in [0, boost_at]"
        );
        let c = SlackConfig {
            boost_at: 0.0,
            ..SlackConfig::default()
        };
        assert_eq!(
            c.validate().unwrap_err().to_string(),
            "slack.boost_at = 0: must be in (0, 1]"
        );
        assert!(SlackConfig::default().validate().is_ok());
    }
}
