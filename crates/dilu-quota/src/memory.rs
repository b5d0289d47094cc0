//! The instance side of a memory cap: reserve bytes before an allocation, release them after a free.
//!
//! Reservation happens *before* the real allocation so two threads cannot both slip under the cap; a failed
//! real allocation is released again by the caller. With [`mode::ENFORCE_MEMORY`] off, bytes are still
//! counted (the agent's view stays right) but nothing is refused.

use std::sync::atomic::Ordering::Relaxed;

use crate::layout::{ControlPage, CounterPage, UNLIMITED, mode};

/// A reservation the cap refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OverCap {
    /// The cap in force.
    pub cap: u64,
    /// Bytes held before the refused request.
    pub held: u64,
    /// Bytes requested.
    pub requested: u64,
}

/// Reserves `bytes` against the cap. On success the bytes count as held (and may raise the peak); on
/// refusal nothing changes except `alloc_failures`.
pub fn reserve(control: &ControlPage, counters: &CounterPage, bytes: u64) -> Result<(), OverCap> {
    let held_before = counters.bytes_allocated.fetch_add(bytes, Relaxed);
    let held = held_before.saturating_add(bytes);
    let cap = control.mem_cap_bytes.load(Relaxed);
    let enforce = control.mode.load(Relaxed) & mode::ENFORCE_MEMORY != 0;
    if enforce && cap != UNLIMITED && held > cap {
        release(counters, bytes);
        counters.alloc_failures.fetch_add(1, Relaxed);
        return Err(OverCap {
            cap,
            held: held_before,
            requested: bytes,
        });
    }
    // A plain load first: the peak rarely moves, and an unconditional fetch_max is a locked loop every time.
    if held > counters.bytes_peak.load(Relaxed) {
        counters.bytes_peak.fetch_max(held, Relaxed);
    }
    Ok(())
}

/// Returns `bytes` to the ledger (saturating at zero, so an accounting slip can never wrap the gauge).
pub fn release(counters: &CounterPage, bytes: u64) {
    // The closure always returns Some, so fetch_update cannot fail; the result carries no information.
    let _ = counters
        .bytes_allocated
        .fetch_update(Relaxed, Relaxed, |held| Some(held.saturating_sub(bytes)));
}

/// What `cuMemGetInfo` should report under the cap: total is the smaller of the device's memory and the cap,
/// free the smaller of the device's free memory and what the cap still allows. Without
/// [`mode::VIRTUALIZE_MEMINFO`] or without a cap, the device's own numbers.
pub fn virtual_meminfo(
    control: &ControlPage,
    counters: &CounterPage,
    device_free: u64,
    device_total: u64,
) -> (u64, u64) {
    let cap = control.mem_cap_bytes.load(Relaxed);
    if cap == UNLIMITED || control.mode.load(Relaxed) & mode::VIRTUALIZE_MEMINFO == 0 {
        return (device_free, device_total);
    }
    let held = counters.bytes_allocated.load(Relaxed);
    let total = device_total.min(cap);
    (device_free.min(cap.saturating_sub(held)), total)
}

/// What `cuDeviceTotalMem` should report under the cap.
pub fn virtual_total(control: &ControlPage, device_total: u64) -> u64 {
    let cap = control.mem_cap_bytes.load(Relaxed);
    if control.mode.load(Relaxed) & mode::VIRTUALIZE_MEMINFO == 0 {
        return device_total;
    }
    device_total.min(cap)
}
