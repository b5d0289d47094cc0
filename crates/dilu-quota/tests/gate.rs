//! The token bucket against a simulated clock: long-run rate, bursts, big launches, pauses and live changes.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

use dilu_quota::gate::{Admission, Clock, Gate};
use dilu_quota::{AgentChannel, ChannelSpec, InstanceChannel, UNLIMITED};
use proptest::prelude::*;

/// A clock that only moves when someone sleeps (or the test advances it), running a hook after each sleep.
struct SimClock<'a> {
    now: AtomicU64,
    on_sleep: Box<dyn Fn(u64) + 'a>,
}

impl<'a> SimClock<'a> {
    fn new(on_sleep: impl Fn(u64) + 'a) -> Self {
        Self {
            now: AtomicU64::new(1_000_000_000),
            on_sleep: Box::new(on_sleep),
        }
    }
    fn advance(&self, ns: u64) {
        self.now.fetch_add(ns, Relaxed);
    }
}

impl Clock for SimClock<'_> {
    fn now_ns(&self) -> u64 {
        self.now.load(Relaxed)
    }
    fn sleep_ns(&self, ns: u64) {
        let now = self.now.fetch_add(ns, Relaxed) + ns;
        (self.on_sleep)(now);
    }
}

const WINDOW: u64 = 5_000_000;

fn channel(budget: u64) -> (tempfile::TempDir, AgentChannel, InstanceChannel) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("gate.quota");
    let spec = ChannelSpec {
        budget_per_window: budget,
        window_ns: WINDOW,
        ..ChannelSpec::default()
    };
    let agent = AgentChannel::create(&path, &spec, 0o600).unwrap();
    let instance = InstanceChannel::open(&path).unwrap();
    (dir, agent, instance)
}

/// Charges `cost` repeatedly until the simulated clock passes `until_ns`; returns the cost admitted.
fn run(gate: &Gate, instance: &InstanceChannel, clock: &SimClock, cost: u64, until_ns: u64) -> u64 {
    let mut admitted = 0;
    while clock.now_ns() < until_ns {
        gate.admit_with(instance.control(), instance.counters(), cost, clock);
        admitted += cost;
    }
    admitted
}

#[test]
fn unlimited_budget_never_waits_but_counts() {
    let (_dir, agent, instance) = channel(UNLIMITED);
    let gate = Gate::new();
    let clock = SimClock::new(|_| panic!("an unlimited gate must not sleep"));
    for _ in 0..1000 {
        assert_eq!(
            gate.admit_with(instance.control(), instance.counters(), 7, &clock),
            Admission::Immediate
        );
    }
    let snap = agent.snapshot();
    assert_eq!(
        (snap.launches, snap.cost_launched, snap.launches_delayed),
        (1000, 7000, 0)
    );
}

#[test]
fn long_run_rate_is_the_budget_per_window() {
    let budget = 300_000;
    let (_dir, agent, instance) = channel(budget);
    let gate = Gate::new();
    let clock = SimClock::new(|_| {});
    let start = clock.now_ns();
    let seconds = 2;
    let admitted = run(
        &gate,
        &instance,
        &clock,
        1_000,
        start + seconds * 1_000_000_000,
    );
    // One window of burst, then exactly budget per window.
    let expected = budget * (seconds * 1_000_000_000 / WINDOW) + budget;
    let error = admitted.abs_diff(expected) as f64 / expected as f64;
    assert!(error < 0.005, "admitted {admitted}, expected {expected}");
    let snap = agent.snapshot();
    assert!(snap.launches_delayed > 0);
    assert!(snap.delay_ns > 0);
}

#[test]
fn a_launch_bigger_than_a_window_runs_and_is_paid_back() {
    let budget = 1_000;
    let (_dir, _agent, instance) = channel(budget);
    let gate = Gate::new();
    let clock = SimClock::new(|_| {});
    let start = clock.now_ns();
    // Each launch costs five windows of budget; ten of them need about 49 windows.
    for _ in 0..10 {
        gate.admit_with(instance.control(), instance.counters(), 5_000, &clock);
    }
    let windows = (clock.now_ns() - start) as f64 / WINDOW as f64;
    assert!((44.0..=46.0).contains(&windows), "took {windows} windows");
}

#[test]
fn budget_zero_pauses_until_the_agent_grants_budget() {
    let (_dir, agent, instance) = channel(0);
    let gate = Gate::new();
    let granted_at = AtomicU64::new(0);
    let clock = SimClock::new(|now| {
        // The agent grants budget 30 ms (simulated) after the start.
        if now >= 1_030_000_000 && granted_at.load(Relaxed) == 0 {
            agent.set_budget(10_000);
            granted_at.store(now, Relaxed);
        }
    });
    let admission = gate.admit_with(instance.control(), instance.counters(), 100, &clock);
    assert!(matches!(admission, Admission::Delayed(_)));
    let reaction = clock.now_ns() - granted_at.load(Relaxed);
    assert!(
        reaction <= 2 * WINDOW,
        "admitted {reaction} ns after the grant"
    );
    assert_eq!(agent.snapshot().launches_delayed, 1);
    assert_eq!(agent.snapshot().last_seen_epoch, 2);
}

#[test]
fn a_lowered_budget_binds_within_a_window() {
    let (_dir, agent, instance) = channel(1_000_000);
    let gate = Gate::new();
    let clock = SimClock::new(|_| {});
    let start = clock.now_ns();
    run(&gate, &instance, &clock, 1_000, start + 100 * WINDOW);
    agent.set_budget(10_000);
    let changed = clock.now_ns();
    // Everything admitted after the change: at most one window's new budget of burst plus the new rate.
    let admitted = run(&gate, &instance, &clock, 1_000, changed + 100 * WINDOW);
    assert!(admitted <= 10_000 * 101 + 1_000, "admitted {admitted}");
    assert!(admitted >= 10_000 * 99, "admitted {admitted}");
}

#[test]
fn switching_enforcement_off_admits_without_waiting() {
    let (_dir, agent, instance) = channel(0);
    agent.set_mode(dilu_quota::mode::ENFORCE_MEMORY).unwrap();
    let gate = Gate::new();
    let clock = SimClock::new(|_| panic!("compute enforcement is off"));
    assert_eq!(
        gate.admit_with(instance.control(), instance.counters(), 10, &clock),
        Admission::Immediate
    );
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]
    /// Whatever the launch sizes and idle gaps, the cost admitted by time t never exceeds one window of burst
    /// plus budget × t / window plus the last launch.
    #[test]
    fn admitted_cost_never_outruns_the_budget(
        budget in 1_000u64..1_000_000,
        launches in proptest::collection::vec((1u64..2_000_000, 0u64..20_000_000), 1..200),
    ) {
        let (_dir, _agent, instance) = channel(budget);
        let gate = Gate::new();
        let clock = SimClock::new(|_| {});
        let start = clock.now_ns();
        let mut admitted_before = 0u64;
        for (cost, gap) in launches {
            clock.advance(gap);
            gate.admit_with(instance.control(), instance.counters(), cost, &clock);
            let elapsed = clock.now_ns() - start;
            let allowed = budget as u128 + budget as u128 * elapsed as u128 / WINDOW as u128;
            // Admission needs the bucket out of debt before the launch.
            prop_assert!(admitted_before as u128 <= allowed, "admitted {} > allowed {}", admitted_before, allowed);
            admitted_before += cost;
        }
    }
}
