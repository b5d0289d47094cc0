//! The CPU device's client side: how a worker charges the CPU time it used to its quota channel and waits for
//! budget before its next unit of work.
//!
//! On the CPU device a cost unit is one nanosecond of *thread CPU time* (see [`DeviceKind::Cpu`]), read with
//! [`thread_cpu_ns`]. A worker thread keeps a [`ThreadMeter`] and, after every unit of work, charges what the
//! unit cost to the instance's [`CpuQuota`]:
//!
//! ```no_run
//! # fn do_one_unit_of_work() {}
//! # fn main() -> Result<(), dilu_quota::QuotaError> {
//! use dilu_quota::{CpuQuota, ThreadMeter};
//!
//! let quota = CpuQuota::from_env()?; // DILU_QUOTA_FILE, or None: run unthrottled
//! let mut meter = ThreadMeter::start();
//! loop {
//!     do_one_unit_of_work();
//!     if let Some(quota) = &quota {
//!         meter.charge(quota); // counts the unit, then waits if the budget is spent
//!     }
//! }
//! # }
//! ```
//!
//! The order is *work first, then charge what it cost, then wait*: a unit of work is never interrupted (there
//! is nothing to preempt it with, and nothing to gain), and the wait that follows pays the bucket back. The
//! [`Gate`] behind a quota is a token bucket filled at `budget_per_window / window_ns`, so over time the CPU
//! rate of all threads charging one `CpuQuota` together converges to `budget / window` of one core, whatever
//! the size of the units. A unit larger than a whole window's budget still runs to completion; its overshoot
//! is paid back by the waits after it. An idle instance can save up at most one window of budget, so a burst
//! after idling is bounded by one window's budget. A budget of 0 makes every charge wait until the agent
//! raises it; [`UNLIMITED`](crate::UNLIMITED) or a mode without
//! [`ENFORCE_COMPUTE`](crate::mode::ENFORCE_COMPUTE) only counts.
//!
//! The CPU time a thread spends charging and waiting (the clock reads, the sleep's system calls) is part of
//! the next [`ThreadMeter::take`], so nothing the thread does escapes the budget.

use std::marker::PhantomData;
use std::path::Path;

use crate::channel::InstanceChannel;
use crate::error::QuotaError;
use crate::gate::{Admission, Gate};
use crate::layout::DeviceKind;
use crate::wait::{channel_from_env, channel_wait_from_env, wait_for_channel};

/// The environment variable naming an instance's quota channel file (the same one the CUDA interposer reads).
pub const QUOTA_FILE_ENV: &str = "DILU_QUOTA_FILE";

/// CPU time consumed by the calling thread so far, in nanoseconds (`clock_gettime(CLOCK_THREAD_CPUTIME_ID)`).
///
/// This is a system call (not served by the vDSO), a few hundred nanoseconds: read it per unit of work, not
/// per loop iteration.
pub fn thread_cpu_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes one timespec we own; CLOCK_THREAD_CPUTIME_ID exists on every Linux since
    // 2.6.12. On failure `ts` stays zeroed, which reads as "no CPU time" and charges nothing.
    unsafe {
        libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts);
    }
    (ts.tv_sec as u64)
        .saturating_mul(1_000_000_000)
        .saturating_add(ts.tv_nsec as u64)
}

/// An instance's CPU budget: its quota channel (of the CPU device) and the token bucket that enforces it.
///
/// One per process, shared between worker threads (it is `Send + Sync`; wrap it in an `Arc`). Each worker
/// thread measures its own CPU time with a [`ThreadMeter`] and charges it here.
#[derive(Debug)]
pub struct CpuQuota {
    channel: InstanceChannel,
    gate: Gate,
}

impl CpuQuota {
    /// Opens the channel at `path`, checks that it budgets the CPU device, and attaches this process to it
    /// (records the pid and marks the channel as enforcing).
    ///
    /// Errors: everything [`InstanceChannel::open`] refuses, and [`QuotaError::InvalidParameter`] on
    /// `device_kind` when the channel budgets a GPU (its cost units are thread slots, not nanoseconds).
    pub fn open(path: &Path) -> Result<Self, QuotaError> {
        let channel = InstanceChannel::open(path)?;
        let raw = channel
            .control()
            .device_kind
            .load(std::sync::atomic::Ordering::Relaxed);
        let kind = DeviceKind::from_raw(raw);
        if kind != Some(DeviceKind::Cpu) {
            let found = kind.map_or_else(|| format!("unknown ({raw})"), |k| k.name().to_string());
            return Err(QuotaError::InvalidParameter {
                field: "device_kind",
                value: format!("{found} in {}", path.display()),
                rule: "a CPU quota needs a channel of the CPU device (kind cpu)",
            });
        }
        channel.attach(std::process::id());
        Ok(Self {
            channel,
            gate: Gate::new(),
        })
    }

    /// Opens the channel the environment names ([`channel_from_env`]: [`QUOTA_FILE_ENV`] (`DILU_QUOTA_FILE`),
    /// else `$DILU_QUOTA_DIR/$DILU_POD_UID` in Kubernetes) as [`CpuQuota::open`] does; `Ok(None)` when none is
    /// named (no quota: run unthrottled). The value is one path.
    ///
    /// When [`QUOTA_DIR_ENV`](crate::QUOTA_DIR_ENV) (`DILU_QUOTA_DIR`) is set and the file does not exist yet
    /// (in Kubernetes the container can start before the agent creates its channel), it first waits for the
    /// file ([`crate::wait`]: polled every 50 ms, for at most `DILU_QUOTA_WAIT_S` seconds, default 30), and
    /// returns [`QuotaError::NotCreated`] if it never appears: the CPU side fails closed, as for any missing
    /// channel.
    pub fn from_env() -> Result<Option<Self>, QuotaError> {
        let Some(path) = channel_from_env() else {
            return Ok(None);
        };
        let path = Path::new(&path);
        if let Some(bound) = channel_wait_from_env()
            && !wait_for_channel(path, bound)
        {
            return Err(QuotaError::NotCreated {
                path: path.to_path_buf(),
                waited: bound,
            });
        }
        Self::open(path).map(Some)
    }

    /// Charges `cpu_ns` nanoseconds of CPU time already spent, and returns once the budget admits more work:
    /// at once while the bucket is not in debt, otherwise after sleeping until the debt is paid back. Updates
    /// the channel's counters (`cost_launched`, `launches`, and for waits `launches_delayed`, `delay_ns`).
    pub fn charge(&self, cpu_ns: u64) -> Admission {
        self.gate
            .admit(self.channel.control(), self.channel.counters(), cpu_ns)
    }

    /// The underlying channel, e.g. for [`InstanceChannel::snapshot`].
    pub fn channel(&self) -> &InstanceChannel {
        &self.channel
    }
}

/// Measures one thread's CPU time between charges.
///
/// Create it on the thread it measures ([`ThreadMeter::start`]) and keep it there: thread CPU clocks of
/// different threads are unrelated, so the type is neither `Send` nor `Sync`.
#[derive(Debug)]
pub struct ThreadMeter {
    /// [`thread_cpu_ns`] at the last start or take.
    last: u64,
    /// Pins the meter to its thread.
    _thread: PhantomData<*const ()>,
}

impl ThreadMeter {
    /// Starts measuring the calling thread's CPU time from now.
    pub fn start() -> Self {
        Self {
            last: thread_cpu_ns(),
            _thread: PhantomData,
        }
    }

    /// CPU nanoseconds this thread used since the last `take` (or `start`), and restarts from now.
    pub fn take(&mut self) -> u64 {
        let now = thread_cpu_ns();
        let used = now.saturating_sub(self.last);
        self.last = now;
        used
    }

    /// Charges the CPU time used since the last take to `quota` and waits for budget:
    /// `quota.charge(self.take())`.
    pub fn charge(&mut self, quota: &CpuQuota) -> Admission {
        quota.charge(self.take())
    }
}

#[cfg(test)]
mod tests {
    use std::hint::black_box;
    use std::time::{Duration, Instant};

    use super::*;
    use crate::channel::{AgentChannel, ChannelSpec};
    use crate::layout::DEFAULT_WINDOW_NS;

    /// Busy work for about `wall` of wall-clock time.
    fn spin_for(wall: Duration) -> u64 {
        let start = Instant::now();
        let mut x = 0x9e37_79b9_7f4a_7c15_u64;
        while start.elapsed() < wall {
            for _ in 0..1000 {
                x = black_box(x.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1));
            }
        }
        x
    }

    /// Busy work until this thread has used `cpu` of CPU time.
    fn spin_cpu(cpu_ns: u64) -> u64 {
        let start = thread_cpu_ns();
        let mut x = 1u64;
        while thread_cpu_ns().saturating_sub(start) < cpu_ns {
            for _ in 0..1000 {
                x = black_box(x.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1));
            }
        }
        x
    }

    /// Time this thread has spent runnable but waiting for a CPU, in ns (`/proc/thread-self/schedstat`, second
    /// field); 0 where the kernel does not keep it.
    fn run_queue_wait_ns() -> u64 {
        std::fs::read_to_string("/proc/thread-self/schedstat")
            .ok()
            .and_then(|s| s.split_whitespace().nth(1)?.parse().ok())
            .unwrap_or(0)
    }

    /// Time the hypervisor ran something else on this machine's CPUs, all CPUs together, in ns (`steal` in
    /// `/proc/stat`); 0 where it is not reported.
    fn steal_ns() -> u64 {
        // SAFETY: sysconf has no preconditions.
        let ticks_per_s = u64::try_from(unsafe { libc::sysconf(libc::_SC_CLK_TCK) }).unwrap_or(100);
        std::fs::read_to_string("/proc/stat")
            .ok()
            .and_then(|s| {
                s.lines()
                    .next()?
                    .split_whitespace()
                    .nth(8)?
                    .parse::<u64>()
                    .ok()
            })
            .map_or(0, |ticks| ticks * (1_000_000_000 / ticks_per_s.max(1)))
    }

    fn cpu_channel(dir: &Path, budget: u64) -> std::path::PathBuf {
        let path = dir.join("cpu.quota");
        let spec = ChannelSpec {
            device_uuid: "cpu-0".into(),
            device_kind: DeviceKind::Cpu,
            budget_per_window: budget,
            window_ns: DEFAULT_WINDOW_NS,
            ..ChannelSpec::default()
        };
        AgentChannel::create(&path, &spec, 0o600).unwrap();
        path
    }

    #[test]
    fn thread_cpu_time_grows_while_spinning_and_not_while_sleeping() {
        let before = thread_cpu_ns();
        spin_for(Duration::from_millis(50));
        let spun = thread_cpu_ns() - before;
        assert!(spun > 1_000_000, "50 ms of spinning used only {spun} ns");

        let before = thread_cpu_ns();
        std::thread::sleep(Duration::from_millis(50));
        let slept = thread_cpu_ns() - before;
        assert!(slept < 2_000_000, "50 ms of sleep used {slept} ns of CPU");
    }

    #[test]
    fn meter_takes_the_time_since_the_last_take() {
        let mut meter = ThreadMeter::start();
        spin_cpu(3_000_000);
        let first = meter.take();
        assert!(first >= 3_000_000, "{first}");
        assert!(first < 50_000_000, "{first}");
        let second = meter.take();
        assert!(second < first, "a fresh take starts from the previous one");
    }

    #[test]
    fn cpu_quota_is_send_and_sync() {
        fn assert_send_sync<T: Send + Sync>() {}
        assert_send_sync::<CpuQuota>();
    }

    #[test]
    fn open_attaches_and_refuses_a_gpu_channel() {
        let dir = tempfile::tempdir().unwrap();
        let path = cpu_channel(dir.path(), 1_000_000);
        let quota = CpuQuota::open(&path).unwrap();
        let snap = quota.channel().snapshot();
        assert_eq!(snap.attached_pid, std::process::id());
        assert_eq!(snap.state, crate::layout::state::ENFORCING);

        let gpu = dir.path().join("gpu.quota");
        AgentChannel::create(&gpu, &ChannelSpec::default(), 0o600).unwrap();
        let err = CpuQuota::open(&gpu).unwrap_err();
        assert!(
            matches!(
                err,
                QuotaError::InvalidParameter {
                    field: "device_kind",
                    ..
                }
            ),
            "{err}"
        );
        assert!(err.to_string().contains("gpu in "), "{err}");
    }

    #[test]
    fn charges_are_counted_in_the_channel() {
        let dir = tempfile::tempdir().unwrap();
        let path = cpu_channel(dir.path(), crate::UNLIMITED);
        let quota = CpuQuota::open(&path).unwrap();
        assert_eq!(quota.charge(1234), Admission::Immediate);
        assert_eq!(quota.charge(766), Admission::Immediate);
        let snap = quota.channel().snapshot();
        assert_eq!((snap.cost_launched, snap.launches), (2000, 2));
        assert_eq!(snap.launches_delayed, 0);
    }

    #[test]
    fn spinning_loop_converges_to_the_budgeted_cpu_rate() {
        // A throughput check over a second of wall time, not a micro-timing: 30% of a 5 ms window.
        let dir = tempfile::tempdir().unwrap();
        let budget = DEFAULT_WINDOW_NS * 3 / 10;
        let path = cpu_channel(dir.path(), budget);
        let quota = CpuQuota::open(&path).unwrap();
        let mut meter = ThreadMeter::start();
        let run_queue_before = run_queue_wait_ns();
        let steal_before = steal_ns();
        let start = Instant::now();
        let mut delayed = 0u64;
        while start.elapsed() < Duration::from_secs(1) {
            spin_cpu(100_000);
            if let Admission::Delayed(_) = meter.charge(&quota) {
                delayed += 1;
            }
        }
        let wall_ns = start.elapsed().as_nanos() as f64;
        // Time the thread could not run: other threads on its CPU, or the hypervisor taking the CPU away.
        let run_queue_ns = run_queue_wait_ns().saturating_sub(run_queue_before) as f64;
        let steal_ns = steal_ns().saturating_sub(steal_before) as f64;
        let snap = quota.channel().snapshot();
        let rate = snap.cost_launched as f64 / wall_ns;
        let target = budget as f64 / DEFAULT_WINDOW_NS as f64;
        eprintln!(
            "cpu rate {rate:.4} (target {target:.2}) over {:.3} s, {} units, {delayed} delayed, \
             {:.1} ms waiting for a CPU, {:.0} ms stolen by the hypervisor",
            wall_ns / 1e9,
            snap.launches,
            run_queue_ns / 1e6,
            steal_ns / 1e6
        );
        assert!(
            rate <= 1.1 * target,
            "CPU rate {rate:.4} is more than 10% above {target:.2}"
        );
        // Budget is only lost while the thread could not run (other load kept it off a CPU for longer than
        // the bucket holds); on an idle machine this is the plain 10% bound.
        let floor = 0.9 * target * (wall_ns - run_queue_ns - steal_ns).max(0.0) / wall_ns;
        assert!(
            rate >= floor,
            "CPU rate {rate:.4} is below {floor:.4} (10% under {target:.2}, less the time the thread \
             could not run)"
        );
        assert!(delayed > 0, "a 30% budget must delay a spinning loop");
        assert_eq!(snap.launches_delayed, delayed);
    }
}
