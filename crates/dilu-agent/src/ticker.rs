//! The token manager's clock: a dedicated thread that wakes on absolute window boundaries
//! (`clock_nanosleep(TIMER_ABSTIME)`), so lateness does not accumulate, and records how late each tick was and
//! how long it took.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use dilu_quota::monotonic_ns;

use crate::tokens::TokenManager;

/// Upper bounds (seconds) of the tick-lateness histogram buckets.
pub const LATENESS_BUCKETS_S: [f64; 8] =
    [0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01];

/// Counters of the ticker, exported as metrics.
#[derive(Debug, Default)]
pub struct TickStats {
    /// Ticks run.
    pub ticks: AtomicU64,
    /// Ticks that started more than a fifth of a window after their deadline.
    pub late_ticks: AtomicU64,
    /// Windows skipped because a tick was more than a whole window late.
    pub skipped_windows: AtomicU64,
    /// Σ lateness in ns.
    pub lateness_ns_sum: AtomicU64,
    /// Cumulative histogram counts per [`LATENESS_BUCKETS_S`] bound.
    pub lateness_buckets: [AtomicU64; LATENESS_BUCKETS_S.len()],
    /// Σ time spent inside ticks, in ns.
    pub busy_ns_sum: AtomicU64,
    /// Longest tick, in ns.
    pub busy_ns_max: AtomicU64,
}

impl TickStats {
    /// Records one tick.
    pub fn record(&self, lateness_ns: u64, busy_ns: u64, window_ns: u64) {
        self.ticks.fetch_add(1, Relaxed);
        if lateness_ns > window_ns / 5 {
            self.late_ticks.fetch_add(1, Relaxed);
        }
        self.lateness_ns_sum.fetch_add(lateness_ns, Relaxed);
        let lateness_s = lateness_ns as f64 / 1e9;
        for (bound, count) in LATENESS_BUCKETS_S.iter().zip(&self.lateness_buckets) {
            if lateness_s <= *bound {
                count.fetch_add(1, Relaxed);
            }
        }
        self.busy_ns_sum.fetch_add(busy_ns, Relaxed);
        self.busy_ns_max.fetch_max(busy_ns, Relaxed);
    }
}

/// Sleeps until `deadline_ns` on CLOCK_MONOTONIC.
pub fn sleep_until(deadline_ns: u64) {
    let ts = libc::timespec {
        tv_sec: (deadline_ns / 1_000_000_000) as libc::time_t,
        tv_nsec: (deadline_ns % 1_000_000_000) as libc::c_long,
    };
    // SAFETY: an absolute sleep on a valid timespec; EINTR just ends the sleep early and the loop re-checks.
    unsafe {
        libc::clock_nanosleep(
            libc::CLOCK_MONOTONIC,
            libc::TIMER_ABSTIME,
            &ts,
            std::ptr::null_mut(),
        );
    }
}

/// Asks for a 1 µs timer slack and real-time scheduling (SCHED_FIFO, low priority) for the calling thread, or
/// failing that a nice value of -10: a tick is a few microseconds of work every window, and being late is what
/// costs. Without the privilege (CAP_SYS_NICE) the thread keeps normal priority; lateness is then visible in
/// the metrics.
pub fn raise_priority() {
    // Timer slack (default 50 µs) delays every wake-up by up to that much; a 1 µs slack keeps ticks on time.
    // SAFETY: PR_SET_TIMERSLACK only affects the calling thread.
    unsafe {
        libc::prctl(libc::PR_SET_TIMERSLACK, 1_000 as libc::c_ulong);
    }
    let param = libc::sched_param { sched_priority: 10 };
    // SAFETY: changes the scheduling policy of the calling thread only; failure leaves it unchanged.
    let realtime = unsafe { libc::sched_setscheduler(0, libc::SCHED_FIFO, &param) } == 0;
    if !realtime {
        // SAFETY: as above, for the nice value of this thread (its tid).
        unsafe {
            libc::setpriority(libc::PRIO_PROCESS, libc::gettid() as libc::id_t, -10);
        }
    }
}

/// Starts the ticker thread; it runs until `stop` is set.
pub fn spawn(
    tokens: Arc<Mutex<TokenManager>>,
    stats: Arc<TickStats>,
    window_ns: u64,
    stop: Arc<AtomicBool>,
) -> std::io::Result<JoinHandle<()>> {
    std::thread::Builder::new()
        .name("dilu-tokens".into())
        .spawn(move || {
            raise_priority();
            let mut deadline = (monotonic_ns() / window_ns + 1) * window_ns;
            while !stop.load(Relaxed) {
                sleep_until(deadline);
                let now = monotonic_ns();
                if now < deadline {
                    continue;
                }
                let lateness = now - deadline;
                {
                    let mut manager = dilu_core::sync::lock(&tokens);
                    manager.tick(now);
                }
                let busy = monotonic_ns().saturating_sub(now);
                stats.record(lateness, busy, window_ns);
                deadline += window_ns;
                if lateness >= window_ns {
                    // More than a window behind: skip to the next boundary rather than running a burst of ticks.
                    let next = (monotonic_ns() / window_ns + 1) * window_ns;
                    stats
                        .skipped_windows
                        .fetch_add((next - deadline) / window_ns, Relaxed);
                    deadline = next;
                }
            }
        })
}
