//! The instance side of a compute budget: a token bucket that admits launches (or units of CPU work) at
//! `budget_per_window / window_ns`, read live from the channel.
//!
//! The bucket is clocked by the instance itself, not by the agent's ticks: if the agent stops (crash,
//! restart), the instance keeps running at its last budget (fail-static) instead of stalling. The agent changes
//! the budget by writing the control page and bumping the epoch; the next admission notices the new epoch and
//! clamps any tokens saved under the old budget, so a lowered budget binds at once and a raised one is used
//! from the next refill.
//!
//! Hot path (budget not binding): three relaxed loads of the control page, one `fetch_add` on a
//! process-local atomic and two on the counter page; no clock read, no lock, no allocation, no system call.
//! Only when the bucket looks empty does a caller take the slow path: it locks the gate, reads the clock,
//! refills, and if still short sleeps for the time the deficit takes to refill (between [`MIN_SLEEP_NS`] and
//! half a window), re-reading the budget after every sleep. Callers wait in the gate's lock, so launches of one
//! process leave it in the order they entered and none is dropped.
//!
//! A launch is admitted when the bucket is not in debt *before* it, so a single launch larger than a whole
//! window's budget still runs; its overshoot is paid back by delaying the following ones. The bucket holds at
//! most one window of budget, so an idle instance can burst one window's worth and no more.

use std::sync::Mutex;
use std::sync::atomic::AtomicU64;
use std::sync::atomic::Ordering::Relaxed;
use std::time::Duration;

use crate::layout::{ControlPage, CounterPage, UNLIMITED, effective_window_ns, mode};

/// Shortest sleep of a waiting caller.
pub const MIN_SLEEP_NS: u64 = 20_000;

/// Longest sleep of a waiting caller regardless of window length, so budget changes are noticed quickly.
pub const MAX_SLEEP_NS: u64 = 2_000_000;

/// How a charge was admitted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admission {
    /// At once, within budget or with no budget in force.
    Immediate,
    /// After waiting this many nanoseconds for budget.
    Delayed(u64),
}

/// Per-process state of one budget (one channel). `const`-constructible so an interposer can keep it in a
/// static.
#[derive(Debug)]
pub struct Gate {
    /// Cost charged through this gate since it was created (wrapping).
    consumed: AtomicU64,
    /// Cost the bucket has granted so far (wrapping); a charge is admitted while `consumed` before it is
    /// below this.
    allowance: AtomicU64,
    /// Monotonic time up to which refills have been credited.
    refilled_to_ns: AtomicU64,
    /// Control epoch last acted on.
    seen_epoch: AtomicU64,
    /// Serialises slow-path callers.
    slow: Mutex<()>,
}

impl Default for Gate {
    fn default() -> Self {
        Self::new()
    }
}

/// `a < b` on a wrapping counter (valid while the two are less than 2^63 apart).
fn wrapping_lt(a: u64, b: u64) -> bool {
    (b.wrapping_sub(a) as i64) > 0
}

/// Time source and sleeper of a [`Gate`]: the system's monotonic clock in production, a simulated one in tests.
pub trait Clock {
    /// Current time in nanoseconds on a monotonic scale.
    fn now_ns(&self) -> u64;
    /// Blocks the caller for about `ns` nanoseconds.
    fn sleep_ns(&self, ns: u64);
}

/// `CLOCK_MONOTONIC` and `nanosleep`.
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now_ns(&self) -> u64 {
        monotonic_ns()
    }

    fn sleep_ns(&self, ns: u64) {
        std::thread::sleep(Duration::from_nanos(ns));
    }
}

/// Reads `CLOCK_MONOTONIC` in nanoseconds.
pub fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes one timespec we own; CLOCK_MONOTONIC always exists on Linux.
    unsafe {
        libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts);
    }
    (ts.tv_sec as u64)
        .saturating_mul(1_000_000_000)
        .saturating_add(ts.tv_nsec as u64)
}

impl Gate {
    /// A gate with an empty bucket; the first charge refills it with one window of budget.
    pub const fn new() -> Self {
        Self {
            consumed: AtomicU64::new(0),
            allowance: AtomicU64::new(0),
            refilled_to_ns: AtomicU64::new(0),
            seen_epoch: AtomicU64::new(0),
            slow: Mutex::new(()),
        }
    }

    /// Charges `cost` units and returns once the budget admits them, updating the channel's counters
    /// (`cost_launched`, `launches`, and for waits `launches_delayed` and `delay_ns`).
    pub fn admit(&self, control: &ControlPage, counters: &CounterPage, cost: u64) -> Admission {
        self.admit_with(control, counters, cost, &SystemClock)
    }

    /// [`Gate::admit`] with an explicit clock.
    pub fn admit_with<C: Clock>(
        &self,
        control: &ControlPage,
        counters: &CounterPage,
        cost: u64,
        clock: &C,
    ) -> Admission {
        counters.cost_launched.fetch_add(cost, Relaxed);
        counters.launches.fetch_add(1, Relaxed);
        let epoch = control.epoch.load(Relaxed);
        if epoch != self.seen_epoch.load(Relaxed) {
            self.on_new_epoch(control, counters, epoch);
        }
        let budget = control.budget_per_window.load(Relaxed);
        if budget == UNLIMITED || control.mode.load(Relaxed) & mode::ENFORCE_COMPUTE == 0 {
            return Admission::Immediate;
        }
        let before = self.consumed.fetch_add(cost, Relaxed);
        if wrapping_lt(before, self.allowance.load(Relaxed)) {
            return Admission::Immediate;
        }
        self.wait_for_budget(control, counters, before, clock)
    }

    /// Clamps saved tokens to the new budget so a lowered budget binds immediately.
    fn on_new_epoch(&self, control: &ControlPage, counters: &CounterPage, epoch: u64) {
        let _guard = self
            .slow
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if self.seen_epoch.load(Relaxed) == epoch {
            return;
        }
        let budget = control.budget_per_window.load(Relaxed);
        if budget != UNLIMITED {
            let consumed = self.consumed.load(Relaxed);
            let ceiling = consumed.wrapping_add(budget);
            if wrapping_lt(ceiling, self.allowance.load(Relaxed)) {
                self.allowance.store(ceiling, Relaxed);
            }
        }
        self.seen_epoch.store(epoch, Relaxed);
        counters.last_seen_epoch.store(epoch, Relaxed);
    }

    /// Credits the tokens earned since the last refill, capped so the bucket never holds more than one
    /// window of budget beyond `before` (the cost consumed before the waiting charge).
    fn refill(&self, now_ns: u64, budget: u64, window_ns: u64, before: u64) {
        let from = self.refilled_to_ns.load(Relaxed);
        let elapsed = now_ns.saturating_sub(from);
        let earned = (u128::from(elapsed) * u128::from(budget) / u128::from(window_ns))
            .min(u128::from(u64::MAX)) as u64;
        let ceiling = before.wrapping_add(budget);
        let allowance = self.allowance.load(Relaxed).wrapping_add(earned);
        if wrapping_lt(ceiling, allowance) {
            self.allowance.store(ceiling, Relaxed);
            self.refilled_to_ns.store(now_ns, Relaxed);
        } else {
            self.allowance.store(allowance, Relaxed);
            // Credit only the time the earned tokens stand for, so fractions are not lost between refills.
            let credited = if budget == 0 {
                elapsed
            } else {
                (u128::from(earned) * u128::from(window_ns) / u128::from(budget)) as u64
            };
            self.refilled_to_ns
                .store(from.saturating_add(credited).min(now_ns), Relaxed);
        }
    }

    fn wait_for_budget<C: Clock>(
        &self,
        control: &ControlPage,
        counters: &CounterPage,
        before: u64,
        clock: &C,
    ) -> Admission {
        let _guard = self
            .slow
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let started = clock.now_ns();
        let mut now = started;
        let mut waited = false;
        loop {
            let budget = control.budget_per_window.load(Relaxed);
            if budget == UNLIMITED || control.mode.load(Relaxed) & mode::ENFORCE_COMPUTE == 0 {
                break;
            }
            let window_ns = effective_window_ns(control.window_ns.load(Relaxed));
            self.refill(now, budget, window_ns, before);
            let allowance = self.allowance.load(Relaxed);
            if wrapping_lt(before, allowance) {
                break;
            }
            waited = true;
            let deficit = before.wrapping_sub(allowance).saturating_add(1);
            let refill_ns = if budget == 0 {
                u64::MAX
            } else {
                (u128::from(deficit) * u128::from(window_ns) / u128::from(budget))
                    .min(u128::from(u64::MAX)) as u64
            };
            let sleep_ns = refill_ns.clamp(
                MIN_SLEEP_NS,
                (window_ns / 2).clamp(MIN_SLEEP_NS, MAX_SLEEP_NS),
            );
            clock.sleep_ns(sleep_ns);
            now = clock.now_ns();
            let epoch = control.epoch.load(Relaxed);
            if epoch != self.seen_epoch.load(Relaxed) {
                self.seen_epoch.store(epoch, Relaxed);
                counters.last_seen_epoch.store(epoch, Relaxed);
            }
        }
        if !waited {
            return Admission::Immediate;
        }
        let waited_ns = now.saturating_sub(started);
        counters.launches_delayed.fetch_add(1, Relaxed);
        counters.delay_ns.fetch_add(waited_ns, Relaxed);
        Admission::Delayed(waited_ns)
    }
}
