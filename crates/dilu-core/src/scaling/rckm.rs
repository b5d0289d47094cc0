//! RCKM, Dilu's per-GPU token manager (`docs/algorithms.md` §5), as an event-driven state machine.
//!
//! The reference polls every 5 ms; here the same rules run on the events that change their outcome (an
//! inference burst starting or ending, a resident joining or leaving) and on timers, and every budget
//! change takes effect at the next 5 ms window boundary, as it would when the interposer picks up its next
//! window's budget. A *burst* is one busy period of an inference instance measured in whole windows.
//!
//! Inference is never throttled (the reference gives it the `UPPER` budget): its grant is the whole GPU
//! with its request guaranteed; its SM limit only bounds over-commitment at placement. Vertical scale-up
//! of inference is done by squeezing the training residents of the same GPU: while inference is active,
//! training as a whole gets `budget × Σ training requests` (each in proportion to its request, within
//! [request, limit]); an emergency divides `budget` by the burst's overflow, a recovery multiplies it by
//! 1.3; after all inference has been idle for 600 ms training gets its limits back.

use crate::error::FieldError;
use crate::request::InstanceKind;
use crate::scaling::vertical::{Grant, ResidentState, VerticalController, VerticalEvent};
use serde::{Deserialize, Serialize};

/// RCKM's constants (the reference values are the defaults).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RckmConfig {
    /// Length of one token window, milliseconds.
    pub window_ms: f64,
    /// Bursts of at most this many windows are ignored (too short to judge contention).
    pub min_burst_windows: u32,
    /// Overflow at or above which a burst of a regular inference instance is an emergency.
    pub emergency_overflow: f64,
    /// Overflow at or above which a burst of an LLM inference instance is an emergency.
    pub llm_emergency_overflow: f64,
    /// Overflow at or above which a burst is not treated as contention (a queue, not a slowdown).
    pub max_overflow: f64,
    /// Overflow below which a burst counts towards recovery.
    pub recovery_overflow: f64,
    /// Recovery is checked on every n-th burst of an instance.
    pub recovery_every: u32,
    /// Factor by which recovery raises the training budget.
    pub recovery_factor: f64,
    /// After all inference has been idle this long, training gets its limits, milliseconds.
    pub idle_release_ms: f64,
}

impl Default for RckmConfig {
    fn default() -> Self {
        RckmConfig {
            window_ms: 5.0,
            min_burst_windows: 6,
            emergency_overflow: 1.6,
            llm_emergency_overflow: 1.3,
            max_overflow: 4.0,
            recovery_overflow: 1.2,
            recovery_every: 5,
            recovery_factor: 1.3,
            idle_release_ms: 600.0,
        }
    }
}

impl RckmConfig {
    /// Checks that every constant is usable.
    pub fn validate(&self) -> Result<(), FieldError> {
        let err = |field: &str, value: f64, rule: &str| {
            Err(FieldError::new(format!("rckm.{field}"), value, rule))
        };
        if !(self.window_ms > 0.0 && self.window_ms.is_finite()) {
            return err("window_ms", self.window_ms, "must be a positive number");
        }
        if self.emergency_overflow.partial_cmp(&1.0) != Some(std::cmp::Ordering::Greater) {
            return err("emergency_overflow", self.emergency_overflow, "must be > 1");
        }
        if self.llm_emergency_overflow.partial_cmp(&1.0) != Some(std::cmp::Ordering::Greater) {
            return err(
                "llm_emergency_overflow",
                self.llm_emergency_overflow,
                "must be > 1",
            );
        }
        let thresholds = self.emergency_overflow.max(self.llm_emergency_overflow);
        if self.max_overflow.partial_cmp(&thresholds) != Some(std::cmp::Ordering::Greater) {
            return err(
                "max_overflow",
                self.max_overflow,
                "must exceed both emergency thresholds",
            );
        }
        if !(self.recovery_overflow > 0.0 && self.recovery_overflow <= self.emergency_overflow) {
            return err(
                "recovery_overflow",
                self.recovery_overflow,
                "must be in (0, emergency_overflow]",
            );
        }
        if self.recovery_every == 0 {
            return err("recovery_every", 0.0, "must be ≥ 1");
        }
        if self.recovery_factor.partial_cmp(&1.0) != Some(std::cmp::Ordering::Greater) {
            return err("recovery_factor", self.recovery_factor, "must be > 1");
        }
        if !(self.idle_release_ms.is_finite() && self.idle_release_ms >= 0.0) {
            return err("idle_release_ms", self.idle_release_ms, "must be ≥ 0");
        }
        Ok(())
    }
}

/// What RCKM remembers about one inference resident.
#[derive(Debug, Clone, Copy)]
struct BurstHistory {
    id: u64,
    baseline_windows: Option<u64>,
    bursts: u64,
}

/// The token manager of one GPU.
#[derive(Debug, Clone)]
pub struct Rckm {
    config: RckmConfig,
    window_ns: u64,
    idle_release_ns: u64,
    /// Training's share as a multiple of its requests while inference is active; in [1, cap].
    budget: f64,
    /// Largest useful budget: max over training residents of limit / request.
    budget_cap: f64,
    /// Whether any training resident was present at the last membership change.
    training_present: bool,
    /// Training runs at its limits (all inference idle long enough, or no inference at all).
    released: bool,
    history: Vec<BurstHistory>,
    last_busy_end_ns: u64,
    /// A budget or mode change waits for this window boundary.
    apply_at_ns: Option<u64>,
    adjustments: u64,
    emergencies: u64,
    recoveries: u64,
}

impl Rckm {
    /// A manager for one GPU. The configuration must have passed [`RckmConfig::validate`].
    pub fn new(config: RckmConfig) -> Self {
        Rckm {
            config,
            window_ns: (config.window_ms * 1e6).round().max(1.0) as u64,
            idle_release_ns: (config.idle_release_ms * 1e6).round() as u64,
            budget: 1.0,
            budget_cap: 1.0,
            training_present: false,
            released: true,
            history: Vec::new(),
            last_busy_end_ns: 0,
            apply_at_ns: None,
            adjustments: 0,
            emergencies: 0,
            recoveries: 0,
        }
    }

    /// Training's current budget multiplier (1 = requests only).
    pub fn budget(&self) -> f64 {
        self.budget
    }

    /// Whether training currently runs at its limits.
    pub fn released(&self) -> bool {
        self.released
    }

    /// Emergencies (training squeezed) so far.
    pub fn emergencies(&self) -> u64 {
        self.emergencies
    }

    /// Recoveries (training budget raised) so far.
    pub fn recoveries(&self) -> u64 {
        self.recoveries
    }

    fn next_boundary(&self, now_ns: u64) -> u64 {
        (now_ns / self.window_ns + 1) * self.window_ns
    }

    fn schedule_apply(&mut self, now_ns: u64) {
        let at = self.next_boundary(now_ns);
        self.apply_at_ns = Some(self.apply_at_ns.map_or(at, |a| a.min(at)));
    }

    fn grant_for(&self, r: &ResidentState) -> Grant {
        match r.kind {
            InstanceKind::Training if !self.released => {
                let share = (r.sm_request * self.budget).clamp(r.sm_request, r.sm_limit);
                Grant::spatial(share, r.sm_request)
            }
            InstanceKind::Training => Grant::spatial(r.sm_limit, r.sm_request),
            _ => Grant::spatial(1.0, r.sm_request),
        }
    }

    fn apply(&mut self, residents: &[ResidentState], grants: &mut [Grant]) {
        for (g, r) in grants.iter_mut().zip(residents) {
            let new = self.grant_for(r);
            if *g != new {
                *g = new;
                self.adjustments += 1;
            }
        }
    }

    fn history_mut(&mut self, id: u64) -> &mut BurstHistory {
        let pos = match self.history.iter().position(|h| h.id == id) {
            Some(p) => p,
            None => {
                self.history.push(BurstHistory {
                    id,
                    baseline_windows: None,
                    bursts: 0,
                });
                self.history.len() - 1
            }
        };
        &mut self.history[pos]
    }

    /// Judges one finished burst: emergency, recovery or hold.
    fn on_burst(&mut self, r: &ResidentState, busy_ns: u64) {
        let windows = busy_ns.div_ceil(self.window_ns);
        if windows <= u64::from(self.config.min_burst_windows) {
            return;
        }
        let config = self.config;
        let h = self.history_mut(r.id);
        let baseline = h.baseline_windows.map_or(windows, |b| b.min(windows));
        h.baseline_windows = Some(baseline);
        h.bursts += 1;
        let bursts = h.bursts;
        let overflow = windows as f64 / baseline as f64;
        let threshold = if r.kind == InstanceKind::LlmInference {
            config.llm_emergency_overflow
        } else {
            config.emergency_overflow
        };
        if overflow >= threshold && overflow < config.max_overflow {
            let squeezed = (self.budget / overflow).max(1.0);
            if squeezed < self.budget {
                self.budget = squeezed;
                self.emergencies += 1;
            }
        } else if overflow < config.recovery_overflow
            && bursts.is_multiple_of(u64::from(config.recovery_every))
        {
            let raised = (self.budget * config.recovery_factor).min(self.budget_cap);
            if raised > self.budget {
                self.budget = raised;
                self.recoveries += 1;
            }
        }
    }

    fn next_timer(&self, residents: &[ResidentState]) -> Option<u64> {
        let any_busy = residents.iter().any(|r| r.kind.is_inference() && r.busy);
        let release =
            (!self.released && !any_busy).then_some(self.last_busy_end_ns + self.idle_release_ns);
        match (self.apply_at_ns, release) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }
}

impl VerticalController for Rckm {
    fn name(&self) -> &'static str {
        "rckm"
    }

    fn reserves_device(&self) -> bool {
        !self.released
    }

    fn training_budget(&self) -> Option<f64> {
        Some(self.budget)
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
                self.history
                    .retain(|h| residents.iter().any(|r| r.id == h.id));
                self.budget_cap = residents
                    .iter()
                    .filter(|r| r.kind == InstanceKind::Training && r.sm_request > 0.0)
                    .map(|r| r.sm_limit / r.sm_request)
                    .fold(1.0, f64::max);
                let training_now = residents.iter().any(|r| r.kind == InstanceKind::Training);
                if training_now && !self.training_present {
                    // Training that joins starts unthrottled (the reference's UPPER budget).
                    self.budget = self.budget_cap;
                }
                self.training_present = training_now;
                if !residents.iter().any(|r| r.kind.is_inference()) {
                    self.released = true;
                }
                self.budget = self.budget.min(self.budget_cap);
                self.apply(residents, grants);
            }
            VerticalEvent::BusyStart { index } => {
                if residents.get(index).is_some_and(|r| r.kind.is_inference()) && self.released {
                    self.released = false;
                    self.schedule_apply(now_ns);
                }
            }
            VerticalEvent::BusyEnd { index, busy_ns } => {
                if let Some(r) = residents.get(index).filter(|r| r.kind.is_inference()) {
                    let before = self.budget;
                    self.on_burst(r, busy_ns);
                    self.last_busy_end_ns = now_ns;
                    if self.budget != before {
                        self.schedule_apply(now_ns);
                    }
                }
            }
            VerticalEvent::Timer => {
                let any_busy = residents.iter().any(|r| r.kind.is_inference() && r.busy);
                if !self.released
                    && !any_busy
                    && now_ns >= self.last_busy_end_ns + self.idle_release_ns
                {
                    self.released = true;
                    self.apply_at_ns = None;
                    self.apply(residents, grants);
                } else if self.apply_at_ns.is_some_and(|a| now_ns >= a) {
                    self.apply_at_ns = None;
                    self.apply(residents, grants);
                }
            }
        }
        self.next_timer(residents)
    }

    fn adjustments(&self) -> u64 {
        self.adjustments
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: u64 = 1_000_000;

    fn residents(inf_busy: bool) -> Vec<ResidentState> {
        vec![
            ResidentState {
                id: 1,
                kind: InstanceKind::Inference,
                sm_request: 0.3,
                sm_limit: 0.6,
                time_quota: 1.0,
                busy: inf_busy,
                queue: Default::default(),
            },
            ResidentState {
                id: 2,
                kind: InstanceKind::Training,
                sm_request: 0.4,
                sm_limit: 1.0,
                time_quota: 1.0,
                busy: true,
                queue: Default::default(),
            },
        ]
    }

    fn start() -> (Rckm, Vec<Grant>) {
        let mut m = Rckm::new(RckmConfig::default());
        let rs = residents(false);
        let mut g = vec![Grant::spatial(0.0, 0.0); 2];
        m.on_event(0, VerticalEvent::ResidentsChanged, &rs, &mut g);
        (m, g)
    }

    /// Runs one burst of `ms` milliseconds starting at `at_ms`, firing the timers the manager asks for.
    fn burst(m: &mut Rckm, g: &mut [Grant], at_ms: u64, ms: u64) {
        let busy = residents(true);
        let t = m.on_event(at_ms * MS, VerticalEvent::BusyStart { index: 0 }, &busy, g);
        if let Some(t) = t.filter(|&t| t <= (at_ms + ms) * MS) {
            m.on_event(t, VerticalEvent::Timer, &busy, g);
        }
        let end = (at_ms + ms) * MS;
        let idle = residents(false);
        let ended = VerticalEvent::BusyEnd {
            index: 0,
            busy_ns: ms * MS,
        };
        if let Some(t) = m
            .on_event(end, ended, &idle, g)
            .filter(|&t| t < end + 100 * MS)
        {
            m.on_event(t, VerticalEvent::Timer, &idle, g);
        }
    }

    #[test]
    fn training_runs_at_its_limit_until_inference_shows_up() {
        let (m, g) = start();
        assert!(m.released());
        assert_eq!(g[1], Grant::spatial(1.0, 0.4));
        assert_eq!(g[0], Grant::spatial(1.0, 0.3));
    }

    #[test]
    fn a_long_burst_squeezes_training_and_short_ones_recover_it() {
        let (mut m, mut g) = start();
        // Baseline burst of 40 ms = 8 windows: contended mode, budget still at its cap (1.0 / 0.4).
        burst(&mut m, &mut g, 0, 40);
        assert!(!m.released());
        assert!((m.budget() - 2.5).abs() < 1e-12);
        assert!((g[1].partition - 1.0).abs() < 1e-12);
        // 80 ms = 16 windows: overflow 2.0 ≥ 1.6 → budget 2.5 / 2 = 1.25 → training 0.5.
        burst(&mut m, &mut g, 100, 80);
        assert!((m.budget() - 1.25).abs() < 1e-12);
        assert!((g[1].partition - 0.5).abs() < 1e-12);
        assert_eq!(m.emergencies(), 1);
        // A burst 5x the baseline is a queue, not contention: hold.
        burst(&mut m, &mut g, 300, 200);
        assert!((m.budget() - 1.25).abs() < 1e-12);
        // Overflow 1.0 on bursts 4 and 5: the 5th burst recovers ×1.3.
        burst(&mut m, &mut g, 600, 40);
        assert!((m.budget() - 1.25).abs() < 1e-12);
        burst(&mut m, &mut g, 700, 40);
        assert!((m.budget() - 1.625).abs() < 1e-12);
        assert_eq!(m.recoveries(), 1);
    }

    #[test]
    fn emergencies_never_push_training_below_its_request() {
        let (mut m, mut g) = start();
        burst(&mut m, &mut g, 0, 40);
        for i in 0..10 {
            burst(&mut m, &mut g, 100 + i * 200, 110);
        }
        assert!((m.budget() - 1.0).abs() < 1e-12);
        assert!((g[1].partition - 0.4).abs() < 1e-12);
    }

    #[test]
    fn changes_wait_for_the_next_window_and_idle_inference_releases_training() {
        let (mut m, mut g) = start();
        burst(&mut m, &mut g, 0, 40);
        burst(&mut m, &mut g, 100, 80);
        assert!((g[1].partition - 0.5).abs() < 1e-12);
        // The burst ended at 180 ms; the release is due 600 ms later.
        let idle = residents(false);
        let t = m.on_event(200 * MS, VerticalEvent::Timer, &idle, &mut g);
        assert_eq!(t, Some(780 * MS));
        m.on_event(780 * MS, VerticalEvent::Timer, &idle, &mut g);
        assert!(m.released());
        assert_eq!(g[1], Grant::spatial(1.0, 0.4));
        // A new burst re-enters contended mode at the next 5 ms boundary, with the squeezed budget.
        let busy = residents(true);
        let t = m.on_event(
            1001 * MS,
            VerticalEvent::BusyStart { index: 0 },
            &busy,
            &mut g,
        );
        assert_eq!(t, Some(1005 * MS));
        assert_eq!(g[1].partition, 1.0);
        m.on_event(1005 * MS, VerticalEvent::Timer, &busy, &mut g);
        assert!((g[1].partition - 0.5).abs() < 1e-12);
        assert!(m.adjustments() >= 3);
    }

    #[test]
    fn bad_constants_are_named() {
        let c = RckmConfig {
            recovery_factor: 0.9,
            ..RckmConfig::default()
        };
        assert_eq!(
            c.validate().unwrap_err().to_string(),
            "rckm.recovery_factor = 0.9: must be > 1"
        );
    }
}
