//! `lazy-slo`, the horizontal scaler of the `dilu-slo` policy (`docs/policies.md`): Dilu's lazy vote, plus an
//! escape for what the lazy vote cannot see.
//!
//! The lazy scaler counts one-second request rates against the profiled capacity, so it adds an instance only
//! after most of 40 seconds were over capacity. Two loads defeat it, and both miss the SLO while vertical
//! scaling has already given the function everything it can:
//!
//! - a *sudden jump* (a sporadic function going from nothing to hundreds of requests per second): the vote takes
//!   20 seconds, and every request in between waits;
//! - *bursts shorter than a second* under a mean rate well inside the capacity (Gamma arrivals with a CV of 3):
//!   no one-second sample is over capacity, yet the queue of every burst outlasts the SLO. More SM time does
//!   not help a model whose latency hardly depends on it (BERT-base's does not).
//!
//! So this scaler also looks at how the interval went against the function's SLO. An interval is *late* when
//! more than `late_fraction` of the requests answered in it missed the SLO (a request given up on counts as
//! missed), or when the queue is longer than the ready instances can drain within the SLO (and than one batch
//! each). After
//! `urgent_intervals` late intervals in a row with every instance ready (answers late from waiting for a
//! starting instance say nothing of capacity), it adds at once what the rate and the queue need (the queue to be
//! worked off within `drain_s`), and at least one instance. When the load alone does not explain the lateness (the
//! current instances could carry the rate and the queue), the function is burstier than its profile: the scaler
//! lowers the capacity it counts per instance to 80 % of the late intervals' mean rate per instance (to a quarter
//! at most per step), so that the lazy vote does not take the instance away again; every interval that is not late
//! moves it back towards the profiled capacity, with a time constant of `recover_s`. A late interval also
//! vetoes removal.
//!
//! Otherwise it is Dilu's lazy vote: one instance more after `out_votes` of `window` samples over the capacity
//! of the current count, and the window cleared after every action. Removal takes the same `in_votes`, counted
//! over on-time samples only, but goes straight to the fewest instances that many samples fit in, rather than one
//! instance per window: after an escape sized for a jump, one at a time would keep the surplus for many minutes.

use std::collections::VecDeque;

use serde::{Deserialize, Serialize};

use super::horizontal::{FunctionLoad, HorizontalScaler, ScaleDecision};
use super::lazy::{
    LazyConfig, bounds, capacity_known, ceil_count, finish, floor_count, has_demand, require,
    require_seconds, seconds_to_ns, towards,
};
use crate::error::FieldError;

/// The SLO escape's settings; the lazy vote's come from [`LazyConfig`].
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(default, deny_unknown_fields)]
pub struct LazySloConfig {
    /// An interval is late when more than this fraction of its answered requests missed the SLO (0.01).
    pub late_fraction: f64,
    /// Late intervals in a row after which instances are added without waiting for the vote (2).
    pub urgent_intervals: u32,
    /// Seconds within which the escape plans to work off the queue, on top of the arrivals (10).
    pub drain_s: f64,
    /// Time constant, in seconds without late intervals, with which a lowered per-instance capacity returns to
    /// the profiled one (1200).
    pub recover_s: f64,
}

impl Default for LazySloConfig {
    fn default() -> Self {
        LazySloConfig {
            late_fraction: 0.01,
            urgent_intervals: 2,
            drain_s: 10.0,
            recover_s: 1200.0,
        }
    }
}

impl LazySloConfig {
    /// Checks that the fraction lies in `[0, 1)`, the run length in `[1, 86400]`, and `drain_s` and `recover_s`
    /// are positive numbers of seconds.
    pub fn validate(&self) -> Result<(), FieldError> {
        const S: &str = "lazy_slo";
        require(
            (0.0..1.0).contains(&self.late_fraction),
            S,
            "late_fraction",
            self.late_fraction,
            "must lie in [0, 1)",
        )?;
        require(
            (1..=86_400).contains(&self.urgent_intervals),
            S,
            "urgent_intervals",
            self.urgent_intervals,
            "must lie in [1, 86400]",
        )?;
        require_seconds(S, "drain_s", self.drain_s)?;
        require_seconds(S, "recover_s", self.recover_s)
    }
}

/// What a lowered capacity keeps below the mean rate per instance that missed the SLO: the rate missed it, so
/// the capacity is below it, and a bound right at the mean would let the lazy vote remove the instance again
/// within a minute.
const LEARN_MARGIN: f64 = 0.8;

/// Whether the queue is longer than the ready instances can drain within the SLO (never without an SLO). Each
/// ready instance drains `capacity × SLO` requests in time, and at least one batch: requests waiting for their
/// batch to fill are not a backlog.
fn backlog(load: &FunctionLoad<'_>, capacity: f64) -> bool {
    let drainable: f64 = load
        .instances
        .iter()
        .filter(|i| i.ready)
        .map(|i| (capacity * load.slo_s).max(f64::from(i.batch.max(1))))
        .sum();
    load.slo_s > 0.0 && load.queued > 0 && load.queued as f64 > drainable
}

/// One interval as the scaler remembers it.
#[derive(Debug, Clone, Copy)]
struct Sample {
    rps: f64,
    late: bool,
}

/// The `lazy-slo` scaler of one function.
#[derive(Debug, Clone)]
pub struct LazySloScaler {
    lazy: LazyConfig,
    slo: LazySloConfig,
    samples: VecDeque<Sample>,
    /// Late intervals in a row, up to now.
    late_run: u32,
    /// Requests per second per instance the scaler counts with, once lowered below the profiled capacity.
    learned: Option<f64>,
}

impl LazySloScaler {
    /// A scaler with both settings, or the first rule one of them breaks.
    pub fn new(lazy: LazyConfig, slo: LazySloConfig) -> Result<Self, FieldError> {
        lazy.validate()?;
        slo.validate()?;
        Ok(LazySloScaler {
            lazy,
            slo,
            samples: VecDeque::with_capacity(lazy.window as usize),
            late_run: 0,
            learned: None,
        })
    }

    /// The per-instance capacity it counts with now, requests per second (`None`: the profiled one).
    pub fn learned_capacity(&self) -> Option<f64> {
        self.learned
    }

    /// Whether the interval just ended was late (see the module documentation).
    fn is_late(&self, load: &FunctionLoad<'_>, capacity: f64) -> bool {
        let missed =
            load.answered > 0 && load.late as f64 > self.slo.late_fraction * load.answered as f64;
        missed || backlog(load, capacity)
    }

    /// Moves a lowered capacity back towards the profiled one after an interval that was not late.
    fn recover(&mut self, load: &FunctionLoad<'_>) {
        if let Some(learned) = self.learned {
            let profiled = load.per_instance_capacity;
            let step = (load.interval_s / self.slo.recover_s).clamp(0.0, 1.0);
            let next = learned + (profiled - learned) * step;
            self.learned = (next < profiled * (1.0 - 1e-6)).then_some(next);
        }
    }

    fn push(&mut self, sample: Sample) {
        if self.samples.len() >= self.lazy.window as usize {
            self.samples.pop_front();
        }
        self.samples.push_back(sample);
    }

    /// After a run of late intervals: adds at once what the rate and the queue need; or, when the instances
    /// could carry both and no backlog remains, one instance and a lower capacity per instance; or nothing
    /// (`None`) while the instances work off a backlog they can carry.
    fn escape(&mut self, load: &FunctionLoad<'_>, capacity: f64, n: u32) -> Option<ScaleDecision> {
        let rps = load.rps();
        let drain = load.queued as f64 / self.slo.drain_s;
        let needed = ceil_count((rps + drain) / capacity);
        let target = if needed > n {
            needed
        } else if backlog(load, capacity) {
            return None;
        } else {
            // The load alone does not explain the misses: the arrivals are burstier than the profile.
            let late: Vec<f64> = self
                .samples
                .iter()
                .filter(|s| s.late)
                .map(|s| s.rps)
                .collect();
            let mean = late.iter().sum::<f64>() / late.len().max(1) as f64;
            let lowered = (LEARN_MARGIN * mean / f64::from(n)).clamp(capacity / 4.0, capacity);
            self.learned = Some(lowered);
            n + 1
        };
        let mut decision = towards(load, target);
        decision.reason = format!(
            "{} late intervals in a row (over {:.0} % of answers past the {:.0} ms SLO, or a queue of {} the \
             ready instances cannot drain in time) at {rps:.1} req/s; counting {:.1} req/s per instance",
            self.late_run,
            100.0 * self.slo.late_fraction,
            1000.0 * load.slo_s,
            load.queued,
            self.learned.unwrap_or(capacity),
        );
        Some(decision)
    }

    fn vote(&mut self, load: &FunctionLoad<'_>, capacity: f64) -> ScaleDecision {
        let n = load.count();
        let (min, max) = bounds(load);
        if n == 0 && has_demand(load) {
            return towards(load, 1);
        }
        if n < min || n > max || !capacity_known(load) {
            return towards(load, n);
        }
        let starting = load.instances.iter().any(|i| !i.ready);
        if n < max
            && !starting
            && self.late_run >= self.slo.urgent_intervals
            && let Some(decision) = self.escape(load, capacity, n)
        {
            return decision;
        }
        let cap = |k: u32| f64::from(k) * capacity;
        let over = self.samples.iter().filter(|s| s.rps > cap(n)).count();
        if n < max && over >= self.lazy.out_votes as usize {
            let mut decision = towards(load, n + 1);
            decision.reason = format!(
                "{over} of the last {} samples above the capacity of {n} instance(s) ({:.1} req/s; {} votes \
                 needed)",
                self.samples.len(),
                cap(n),
                self.lazy.out_votes
            );
            return decision;
        }
        if n > min && self.late_run == 0 {
            // The `in_votes`-th lowest rate among the on-time samples: that many samples fit in the fewest
            // instances whose capacity is above it (none when it is zero).
            let mut on_time: Vec<f64> = self
                .samples
                .iter()
                .filter(|s| !s.late)
                .map(|s| s.rps)
                .collect();
            let votes = self.lazy.in_votes as usize;
            if on_time.len() >= votes {
                on_time.sort_by(f64::total_cmp);
                let rate = on_time[votes - 1];
                let fits_in = if rate <= 0.0 {
                    0
                } else {
                    floor_count(rate / capacity).saturating_add(1)
                };
                let target = fits_in.max(min);
                if target < n {
                    let mut decision = towards(load, target);
                    decision.reason = format!(
                        "{votes} of the last {} samples on time and within the capacity of {target} \
                         instance(s) ({:.1} req/s)",
                        self.samples.len(),
                        cap(target),
                    );
                    return decision;
                }
            }
        }
        ScaleDecision::hold()
    }
}

impl HorizontalScaler for LazySloScaler {
    fn name(&self) -> &'static str {
        "lazy-slo"
    }

    fn interval_ns(&self) -> u64 {
        seconds_to_ns(self.lazy.interval_s)
    }

    fn decide(&mut self, load: &FunctionLoad<'_>) -> ScaleDecision {
        let capacity = self.learned.unwrap_or(load.per_instance_capacity);
        let late = capacity_known(load) && self.is_late(load, capacity);
        if load.instances.iter().any(|i| !i.ready) {
            // Answers late from waiting for an instance that is still starting say nothing of the instances'
            // capacity: the run counts again once every instance is ready.
            self.late_run = 0;
        } else if late {
            self.late_run = self.late_run.saturating_add(1);
        } else {
            self.late_run = 0;
            self.recover(load);
        }
        let rps = load.rps();
        self.push(Sample {
            rps: if rps.is_finite() { rps.max(0.0) } else { 0.0 },
            late,
        });
        let capacity = self.learned.unwrap_or(load.per_instance_capacity);
        let decision = finish(load, self.vote(load, capacity));
        if !decision.is_hold() {
            self.samples.clear();
            self.late_run = 0;
        }
        decision
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scaling::NANOS_PER_SEC;
    use crate::scaling::horizontal::InstanceLoad;
    use crate::scaling::lazy::tests::{inst, ready};

    fn scaler() -> LazySloScaler {
        LazySloScaler::new(LazyConfig::default(), LazySloConfig::default()).unwrap()
    }

    /// One second at `sec`: `arrivals` requests, `answered` of them answered and `late` of those late, `queued`
    /// waiting, an SLO of 100 ms and 10 req/s per instance, bounds [1, 8].
    fn second(
        sec: u64,
        arrivals: u64,
        answered: u64,
        late: u64,
        queued: u64,
        instances: &[InstanceLoad],
    ) -> FunctionLoad<'_> {
        FunctionLoad {
            now_ns: sec * NANOS_PER_SEC,
            interval_s: 1.0,
            arrivals,
            queued,
            answered,
            late,
            slo_s: 0.1,
            per_instance_capacity: 10.0,
            min_instances: 1,
            max_instances: 8,
            instances,
        }
    }

    #[test]
    fn defaults_are_valid_and_each_rule_names_its_field() {
        assert!(LazySloConfig::default().validate().is_ok());
        let bad = |c: LazySloConfig| c.validate().unwrap_err().field;
        let d = LazySloConfig::default();
        assert_eq!(
            bad(LazySloConfig {
                late_fraction: 1.0,
                ..d
            }),
            "lazy_slo.late_fraction"
        );
        assert_eq!(
            bad(LazySloConfig {
                urgent_intervals: 0,
                ..d
            }),
            "lazy_slo.urgent_intervals"
        );
        assert_eq!(
            bad(LazySloConfig {
                recover_s: f64::NAN,
                ..d
            }),
            "lazy_slo.recover_s"
        );
        let e = LazySloScaler::new(
            LazyConfig {
                in_votes: 0,
                ..LazyConfig::default()
            },
            d,
        )
        .unwrap_err();
        assert_eq!(e.field, "lazy.in_votes");
    }

    #[test]
    fn bursts_within_capacity_that_miss_the_slo_add_an_instance_that_stays() {
        let mut s = scaler();
        let one = ready(1);
        // 6 req/s against 10 per instance: the lazy vote never fires. Two seconds with 3 of 6 answers late do.
        assert!(s.decide(&second(1, 6, 6, 0, 0, &one)).is_hold());
        assert!(s.decide(&second(2, 6, 6, 3, 0, &one)).is_hold());
        let d = s.decide(&second(3, 6, 6, 3, 0, &one));
        assert_eq!(d.add, 1, "{d:?}");
        assert!(
            d.reason.contains("2 late intervals in a row"),
            "{}",
            d.reason
        );
        // The late intervals' mean was 6 req/s on one instance: the scaler counts 80 % of it.
        assert!((s.learned_capacity().unwrap() - 4.8).abs() < 1e-9);
        // With two instances on time at 6 req/s, the lazy vote would have removed one after 30 seconds (6 < 10);
        // against the lowered capacity (6 > 4.8) it keeps both for 40 seconds and more.
        let two = ready(2);
        for sec in 4..44 {
            let d = s.decide(&second(sec, 6, 6, 0, 0, &two));
            assert!(d.is_hold(), "second {sec}: {d:?}");
        }
        // The lowered capacity comes back with a time constant of recover_s: 40 of 1200 seconds so far.
        let learned = s.learned_capacity().unwrap();
        assert!(learned > 4.8 && learned < 5.0, "{learned}");
    }

    #[test]
    fn a_jump_adds_what_the_rate_and_the_queue_need_at_once() {
        let mut s = scaler();
        let one = ready(1);
        // 40 req/s arrive; 10 answered, all late; 30 queued (one instance drains 1 in 100 ms).
        assert!(s.decide(&second(1, 40, 10, 10, 30, &one)).is_hold());
        let d = s.decide(&second(2, 40, 10, 10, 60, &one));
        // (40 + 60 / 10 s) / 10 = 4.6: five instances.
        assert_eq!(d.add, 4, "{d:?}");
        // The load explained the misses: the capacity per instance is not lowered.
        assert_eq!(s.learned_capacity(), None);
    }

    #[test]
    fn nothing_is_added_while_an_instance_is_still_starting() {
        let mut s = scaler();
        let starting = [inst(1, true), inst(2, false)];
        for sec in 1..6 {
            let d = s.decide(&second(sec, 6, 6, 6, 0, &starting));
            assert!(d.is_hold(), "second {sec}: {d:?}");
        }
        // Once it is ready, the run of late intervals starts over: two more add one instance.
        let two = ready(2);
        assert!(s.decide(&second(6, 6, 6, 6, 0, &two)).is_hold());
        let d = s.decide(&second(7, 6, 6, 6, 0, &two));
        assert_eq!(d.add, 1, "{d:?}");
    }

    #[test]
    fn late_intervals_veto_removal_and_on_time_ones_allow_it() {
        let mut s = scaler();
        let three = ready(3);
        // 1 req/s on three instances, and one second in every ten late (a single one: no escape). The lazy vote
        // would remove an instance at second 30; late samples do not count as within capacity.
        let mut removed_at = None;
        for sec in 1..=60 {
            let late = if sec % 10 == 0 { 1 } else { 0 };
            let d = s.decide(&second(sec, 1, 1, late, 0, &three));
            if !d.remove.is_empty() {
                removed_at = Some((sec, d.remove.len()));
                break;
            }
        }
        // 30 on-time samples are needed in the 40-sample window; the late ones do not count. They all fit in one
        // instance, so two go at once.
        assert_eq!(removed_at, Some((33, 2)));
    }

    #[test]
    fn without_an_slo_it_is_the_lazy_vote() {
        let mut s = scaler();
        let one = ready(1);
        let mut added_at = None;
        for sec in 1..=30 {
            let mut load = second(sec, 15, 15, 0, 0, &one);
            load.slo_s = 0.0;
            if s.decide(&load).add > 0 {
                added_at = Some(sec);
                break;
            }
        }
        assert_eq!(added_at, Some(20));
    }
}
