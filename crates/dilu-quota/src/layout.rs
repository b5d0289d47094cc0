//! The byte layout of a quota channel file: two 4 KiB pages, `#[repr(C)]`, every shared field an atomic.
//!
//! Page 0 holds the header and the *control* fields, written only by the node agent; an instance maps it
//! read-only. Page 1 holds the *counters*, written only by the instance (its interposer or worker) and read by
//! the agent. Keeping the two on separate pages is what lets the instance's mapping of the control part be
//! read-only, and keeps the agent's writes and the instance's counter updates off each other's cache lines.
//!
//! The layout is an ABI shared by processes built at different times: fields are only ever appended inside
//! the reserved space, and any incompatible change bumps [`VERSION`].

use std::sync::atomic::{AtomicU32, AtomicU64};

/// The first eight bytes of every channel file: `DILUQOTA` in ASCII, read as a little-endian `u64`.
pub const MAGIC: u64 = u64::from_le_bytes(*b"DILUQOTA");

/// The layout version this crate reads and writes.
pub const VERSION: u32 = 1;

/// Size of one page of the layout; the control page and the counter page each take one.
pub const PAGE_SIZE: usize = 4096;

/// Byte offset of the counter page in the file.
pub const COUNTERS_OFFSET: usize = PAGE_SIZE;

/// Total size of a channel file.
pub const FILE_SIZE: usize = 2 * PAGE_SIZE;

/// Bytes reserved for the device UUID string (NUL-padded ASCII, e.g. `GPU-5e1b…`).
pub const UUID_CAPACITY: usize = 64;

/// Sentinel for "no limit" in [`ControlPage::budget_per_window`] and [`ControlPage::mem_cap_bytes`].
pub const UNLIMITED: u64 = u64::MAX;

/// Default accounting window: 5 ms, the token manager's tick in `docs/algorithms.md` §5.
pub const DEFAULT_WINDOW_NS: u64 = 5_000_000;

/// The shortest window an instance honours; shorter (or zero) values in a channel fall back to the default.
pub const MIN_WINDOW_NS: u64 = 100_000;

/// The longest window an instance honours; longer values are clamped to it.
pub const MAX_WINDOW_NS: u64 = 60_000_000_000;

/// Cost units of one launch that occupies every resident thread slot of a GPU exactly once (one "wave").
///
/// A GPU launch costs `blocks × threads_per_block × COST_UNITS_PER_WAVE / max_resident_threads` (rounded down,
/// at least 1),
/// where `max_resident_threads = SMs × max threads per SM`. So a budget of `COST_UNITS_PER_WAVE` per window
/// admits one full-device wave per window, whatever the GPU model. On a CPU device the cost unit is one
/// nanosecond of thread CPU time.
pub const COST_UNITS_PER_WAVE: u64 = 1_000_000;

/// Bit flags in [`ControlPage::mode`].
pub mod mode {
    /// Delay launches that exceed the budget. Without it launches are only counted.
    pub const ENFORCE_COMPUTE: u32 = 1;
    /// Fail allocations that would exceed the memory cap. Without it allocations are only counted.
    pub const ENFORCE_MEMORY: u32 = 1 << 1;
    /// Report the memory cap, not the device's memory, from `cuMemGetInfo` and `cuDeviceTotalMem`.
    pub const VIRTUALIZE_MEMINFO: u32 = 1 << 2;
    /// Every flag above: what an agent sets by default.
    pub const ALL: u32 = ENFORCE_COMPUTE | ENFORCE_MEMORY | VIRTUALIZE_MEMINFO;
}

/// What kind of device a channel budgets, which fixes the meaning of a cost unit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u32)]
pub enum DeviceKind {
    /// An NVIDIA GPU: cost units are [`COST_UNITS_PER_WAVE`]-normalised thread slots.
    Gpu = 0,
    /// The CPU device: cost units are nanoseconds of thread CPU time.
    Cpu = 1,
}

impl DeviceKind {
    /// Decodes the value stored in [`ControlPage::device_kind`]; unknown values are `None`.
    pub fn from_raw(raw: u32) -> Option<Self> {
        match raw {
            0 => Some(Self::Gpu),
            1 => Some(Self::Cpu),
            _ => None,
        }
    }

    /// The name used in listings and command-line flags.
    pub fn name(self) -> &'static str {
        match self {
            Self::Gpu => "gpu",
            Self::Cpu => "cpu",
        }
    }
}

/// Page 0: header and the fields the agent controls.
#[repr(C)]
pub struct ControlPage {
    /// [`MAGIC`]; written once when the file is created.
    pub magic: AtomicU64,
    /// [`VERSION`] of the layout; written once.
    pub version: AtomicU32,
    /// Size of the file the writer laid out ([`FILE_SIZE`]); written once.
    pub layout_size: AtomicU32,
    /// UUID of the device this channel budgets, NUL-padded ASCII; written once, before the file is published.
    /// Empty means "every device the instance uses".
    pub device_uuid: [u8; UUID_CAPACITY],
    /// [`DeviceKind`] as a `u32`; written once.
    pub device_kind: AtomicU32,
    /// [`mode`] flags.
    pub mode: AtomicU32,
    /// Cost units the instance may launch per window; [`UNLIMITED`] for no limit, 0 to pause compute.
    pub budget_per_window: AtomicU64,
    /// Window length in nanoseconds (see [`MIN_WINDOW_NS`], [`MAX_WINDOW_NS`]).
    pub window_ns: AtomicU64,
    /// Incremented by the agent after every change of the control fields (and optionally every tick), so an
    /// instance notices a change with one load and the agent sees, through
    /// [`CounterPage::last_seen_epoch`], that it was noticed.
    pub epoch: AtomicU64,
    /// Memory the instance may hold on the device, in bytes; [`UNLIMITED`] for no cap.
    pub mem_cap_bytes: AtomicU64,
    /// `SMs × max threads per SM` of the device, if the agent knows it (0 = the instance asks the driver).
    pub resident_threads: AtomicU64,
    /// Monotonic-clock time (ns) of the agent's last tick, for liveness displays; 0 before the first.
    pub agent_tick_ns: AtomicU64,
}

/// Page 1: what the instance reports. All counters are cumulative since the channel was created, except
/// the two byte gauges.
#[repr(C)]
pub struct CounterPage {
    /// Process id of the instance that attached last (0 before any).
    pub attached_pid: AtomicU32,
    /// What the attached runtime is doing: see [`state`].
    pub state: AtomicU32,
    /// Cost units of all launches so far (GPU) or CPU nanoseconds charged (CPU device).
    pub cost_launched: AtomicU64,
    /// Number of launches (or units of work) charged.
    pub launches: AtomicU64,
    /// Launches that had to wait for budget at least once.
    pub launches_delayed: AtomicU64,
    /// Total time launches spent waiting for budget, in nanoseconds.
    pub delay_ns: AtomicU64,
    /// Bytes of device memory the instance holds now.
    pub bytes_allocated: AtomicU64,
    /// The most bytes it has held at once.
    pub bytes_peak: AtomicU64,
    /// Allocations refused because they would exceed the cap.
    pub alloc_failures: AtomicU64,
    /// The last [`ControlPage::epoch`] the instance acted on.
    pub last_seen_epoch: AtomicU64,
    /// Requests the instance has accepted and not yet answered (queued plus in the running batch); a gauge
    /// written by a serving runtime that publishes its queue, 0 otherwise.
    pub queue_depth: AtomicU64,
    /// Monotonic-clock time (ns, the clock of [`ControlPage::agent_tick_ns`]) at which the oldest unanswered
    /// request arrived; 0 when none or unknown.
    pub oldest_queued_ns: AtomicU64,
    /// The latency SLO of the instance's requests, ns; 0 when unknown. Written once by a serving runtime.
    pub slo_ns: AtomicU64,
}

/// Values of [`CounterPage::state`].
pub mod state {
    /// Nothing has attached yet.
    pub const DETACHED: u32 = 0;
    /// A runtime attached and enforces the control fields.
    pub const ENFORCING: u32 = 1;
}

// The layout is an ABI: fail the build if a field change makes a page outgrow its 4 KiB.
const _: () = assert!(size_of::<ControlPage>() <= PAGE_SIZE);
const _: () = assert!(size_of::<CounterPage>() <= PAGE_SIZE);

/// Clamps a window length read from a channel to what an instance honours: values below
/// [`MIN_WINDOW_NS`] (including 0, the value of a zeroed file) mean [`DEFAULT_WINDOW_NS`]; values above
/// [`MAX_WINDOW_NS`] are clamped to it.
pub fn effective_window_ns(raw: u64) -> u64 {
    if raw < MIN_WINDOW_NS {
        DEFAULT_WINDOW_NS
    } else {
        raw.min(MAX_WINDOW_NS)
    }
}

/// Reads the NUL-padded UUID field as a string slice; invalid UTF-8 reads as empty (a wildcard).
pub fn uuid_str(raw: &[u8; UUID_CAPACITY]) -> &str {
    let len = raw.iter().position(|&b| b == 0).unwrap_or(UUID_CAPACITY);
    std::str::from_utf8(raw.get(..len).unwrap_or_default()).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pages_fit_and_counters_start_on_the_second_page() {
        assert!(size_of::<ControlPage>() <= PAGE_SIZE);
        assert!(size_of::<CounterPage>() <= PAGE_SIZE);
        assert_eq!(COUNTERS_OFFSET, 4096);
        assert_eq!(&MAGIC.to_le_bytes(), b"DILUQOTA");
    }

    #[test]
    fn queue_fields_are_appended_after_the_version_1_counters() {
        // Appended in the page's reserved bytes: a file written before them reads 0 there (no signal).
        assert_eq!(std::mem::offset_of!(CounterPage, last_seen_epoch), 64);
        assert_eq!(std::mem::offset_of!(CounterPage, queue_depth), 72);
        assert_eq!(std::mem::offset_of!(CounterPage, oldest_queued_ns), 80);
        assert_eq!(std::mem::offset_of!(CounterPage, slo_ns), 88);
        assert_eq!(size_of::<CounterPage>(), 96);
    }

    #[test]
    fn window_clamping_is_defined_for_every_value() {
        assert_eq!(effective_window_ns(0), DEFAULT_WINDOW_NS);
        assert_eq!(effective_window_ns(MIN_WINDOW_NS - 1), DEFAULT_WINDOW_NS);
        assert_eq!(effective_window_ns(MIN_WINDOW_NS), MIN_WINDOW_NS);
        assert_eq!(effective_window_ns(u64::MAX), MAX_WINDOW_NS);
    }

    #[test]
    fn uuid_field_reads_up_to_the_first_nul() {
        let mut raw = [0u8; UUID_CAPACITY];
        raw[..8].copy_from_slice(b"GPU-abcd");
        assert_eq!(uuid_str(&raw), "GPU-abcd");
        raw[0] = 0xff;
        assert_eq!(uuid_str(&raw), "");
        assert_eq!(uuid_str(&[b'x'; UUID_CAPACITY]).len(), UUID_CAPACITY);
    }
}
