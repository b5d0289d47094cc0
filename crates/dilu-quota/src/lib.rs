//! The quota channel between Dilu's node agent and one function instance.
//!
//! A channel is a small file (two 4 KiB pages) under a run directory the agent owns, mapped with `mmap` by the
//! agent and by the instance's runtime — the CUDA interposer on GPU nodes, the worker's CPU-token runtime on
//! the CPU device. Its layout ([`layout`]) is one `#[repr(C)]` ABI with a magic and a version:
//! the agent writes the control page (budget per window, window length, epoch, memory cap, mode flags) and
//! the instance writes the counter page (cost launched, launches, delays, bytes held and peak, refused
//! allocations, last epoch seen). The instance maps the control page read-only.
//!
//! On top of the layout: [`AgentChannel`] and [`InstanceChannel`] (creating, validating and mapping the file),
//! [`Gate`] (the token bucket that admits launches against the live budget), [`memory`] (the cap ledger) and
//! [`cpu`] (the CPU device's client: [`CpuQuota`] and [`ThreadMeter`] charge thread CPU time to the budget)
//! and [`wait`] (waiting, under `DILU_QUOTA_DIR`, for a channel the agent has not created yet).
//! Nothing here allocates or takes a lock on the launch hot path; see [`gate`] for the exact costs.

pub mod channel;
pub mod cpu;
pub mod error;
pub mod gate;
pub mod layout;
mod mapping;
pub mod memory;
pub mod wait;

pub use channel::{AgentChannel, ChannelSpec, InstanceChannel, Snapshot};
pub use cpu::{CpuQuota, QUOTA_FILE_ENV, ThreadMeter, thread_cpu_ns};
pub use error::QuotaError;
pub use gate::{Admission, Clock, Gate, SystemClock, monotonic_ns};
pub use layout::{
    COST_UNITS_PER_WAVE, ControlPage, CounterPage, DEFAULT_WINDOW_NS, DeviceKind, FILE_SIZE,
    UNLIMITED, effective_window_ns, mode,
};
pub use wait::{
    CHANNEL_POLL, DEFAULT_CHANNEL_WAIT, POD_UID_ENV, QUOTA_DIR_ENV, QUOTA_WAIT_ENV,
    channel_from_env, channel_wait_from_env, wait_for_channel,
};
