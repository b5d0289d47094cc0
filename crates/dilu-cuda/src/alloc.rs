//! Memory hooks: every way a process takes device memory is reserved against the cap *before* the driver is
//! asked, and every release gives back exactly what was charged for that allocation.
//!
//! Counted: `cuMemAlloc_v2`, `cuMemAllocPitch_v2` (pitch × height, known only after the call), managed memory,
//! stream-ordered allocations (`cuMemAllocAsync`, `cuMemAllocFromPoolAsync`, returned by `cuMemFreeAsync` at
//! the time of the call), and VMM physical allocations on a device (`cuMemCreate`/`cuMemRelease` — what NCCL
//! and PyTorch's expandable segments use). Not counted: host allocations, CUDA arrays, the context's own
//! memory, and memory a pool keeps cached after a free. An allocation over the cap returns
//! `CUDA_ERROR_OUT_OF_MEMORY` and the process carries on; a later allocation within the cap succeeds.
//!
//! Live allocations are remembered in fixed tables (65,536 pointers, 4,096 VMM handles). If a table is
//! full, the allocation still succeeds and stays counted, but its release cannot be matched — the gauge then
//! over-reports by that amount (never under-reports, so the cap stays safe).

use std::ffi::c_uint;
use std::sync::{Mutex, MutexGuard};

use dilu_quota::memory::{release, reserve, virtual_meminfo, virtual_total};

use crate::ffi::{
    CUDA_ERROR_NOT_FOUND, CUDA_ERROR_NOT_INITIALIZED, CUDA_ERROR_OUT_OF_MEMORY, CUDA_SUCCESS,
    CUdevice, CUdeviceptr, CUmemoryPool, CUresult, CUstream, MEM_LOCATION_TYPE_DEVICE,
    MemAllocationPropPrefix,
};
use crate::runtime::{Runtime, Target, runtime};
use crate::table::FixedMap;

const POINTER_CAPACITY: usize = 1 << 16;
const HANDLE_CAPACITY: usize = 1 << 12;
const BYTES_MASK: u64 = (1 << 56) - 1;

type Table<const N: usize> = Mutex<FixedMap<N>>;

static POINTERS: Table<POINTER_CAPACITY> = Mutex::new(FixedMap::new());
static HANDLES: Table<HANDLE_CAPACITY> = Mutex::new(FixedMap::new());

fn lock<const N: usize>(table: &'static Table<N>) -> MutexGuard<'static, FixedMap<N>> {
    table
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

fn pack(bytes: u64, slot: usize) -> u64 {
    ((slot as u64) << 56) | (bytes & BYTES_MASK)
}

impl Runtime {
    /// Reserves `bytes` on `target`'s channel, runs `allocate` (which returns the driver's result and the key
    /// of the new allocation), and records or rolls back the reservation.
    fn charged_alloc<const N: usize>(
        &self,
        target: Option<Target<'_>>,
        bytes: u64,
        table: &'static Table<N>,
        allocate: impl FnOnce() -> (CUresult, u64),
    ) -> CUresult {
        let Some(target) = target else {
            return allocate().0;
        };
        let channel = &target.slot.channel;
        if reserve(channel.control(), channel.counters(), bytes).is_err() {
            return CUDA_ERROR_OUT_OF_MEMORY;
        }
        let (result, key) = allocate();
        if result != CUDA_SUCCESS {
            release(channel.counters(), bytes);
            return result;
        }
        lock(table).insert(key, pack(bytes, target.index));
        result
    }

    /// Forgets the allocation under `key`, runs `free`, and on success returns its bytes to the ledger.
    fn charged_free<const N: usize>(
        &self,
        table: &'static Table<N>,
        key: u64,
        free: impl FnOnce() -> CUresult,
    ) -> CUresult {
        let entry = lock(table).remove(key);
        let result = free();
        if let Some(packed) = entry {
            if result == CUDA_SUCCESS {
                if let Some(slot) = self.slots.get((packed >> 56) as usize) {
                    release(slot.channel.counters(), packed & BYTES_MASK);
                }
            } else {
                lock(table).insert(key, packed);
            }
        }
        result
    }
}

/// Resolves the runtime and a real entry point or returns the matching error from the hook.
macro_rules! real_or_return {
    ($name:ident) => {{
        let Some(rt) = runtime() else {
            return CUDA_ERROR_NOT_INITIALIZED;
        };
        let Some(real) = rt.real.$name else {
            return CUDA_ERROR_NOT_FOUND;
        };
        (rt, real)
    }};
}

/// Reads the pointer an allocation call wrote (0 if it wrote none).
fn written(dptr: *mut CUdeviceptr) -> u64 {
    // SAFETY: the driver wrote the pointer on success; the caller's out-parameter is valid or null.
    unsafe { dptr.as_ref() }.copied().unwrap_or(0)
}

/// Hook of `cuMemAlloc_v2`.
///
/// # Safety
/// Same contract as the driver's `cuMemAlloc_v2`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn cuMemAlloc_v2(dptr: *mut CUdeviceptr, bytes: usize) -> CUresult {
    let (rt, real) = real_or_return!(cuMemAlloc_v2);
    rt.charged_alloc(rt.context_target(), bytes as u64, &POINTERS, || {
        // SAFETY: forwarding the caller's arguments.
        (unsafe { real(dptr, bytes) }, written(dptr))
    })
}

/// Hook of `cuMemAllocManaged`: managed memory counts against the device cap.
///
/// # Safety
/// Same contract as the driver's `cuMemAllocManaged`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn cuMemAllocManaged(
    dptr: *mut CUdeviceptr,
    bytes: usize,
    flags: c_uint,
) -> CUresult {
    let (rt, real) = real_or_return!(cuMemAllocManaged);
    rt.charged_alloc(rt.context_target(), bytes as u64, &POINTERS, || {
        // SAFETY: forwarding the caller's arguments.
        (unsafe { real(dptr, bytes, flags) }, written(dptr))
    })
}

/// Hook of `cuMemAllocPitch_v2`: charges `pitch × height`, which the driver picks.
///
/// # Safety
/// Same contract as the driver's `cuMemAllocPitch_v2`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn cuMemAllocPitch_v2(
    dptr: *mut CUdeviceptr,
    pitch: *mut usize,
    width_bytes: usize,
    height: usize,
    element_size_bytes: c_uint,
) -> CUresult {
    let (rt, real) = real_or_return!(cuMemAllocPitch_v2);
    let Some(target) = rt.context_target() else {
        // SAFETY: forwarding the caller's arguments.
        return unsafe { real(dptr, pitch, width_bytes, height, element_size_bytes) };
    };
    let channel = &target.slot.channel;
    // Reserve the least the allocation can take, then top up to what the driver actually used.
    let minimum = (width_bytes as u64).saturating_mul(height as u64);
    if reserve(channel.control(), channel.counters(), minimum).is_err() {
        return CUDA_ERROR_OUT_OF_MEMORY;
    }
    // SAFETY: forwarding the caller's arguments.
    let result = unsafe { real(dptr, pitch, width_bytes, height, element_size_bytes) };
    if result != CUDA_SUCCESS {
        release(channel.counters(), minimum);
        return result;
    }
    // SAFETY: on success the driver wrote the pitch.
    let actual =
        unsafe { pitch.as_ref() }.map_or(minimum, |&p| (p as u64).saturating_mul(height as u64));
    if actual > minimum && reserve(channel.control(), channel.counters(), actual - minimum).is_err()
    {
        if let Some(free) = rt.real.cuMemFree_v2 {
            // SAFETY: frees the allocation the driver just made for us.
            unsafe { free(written(dptr)) };
        }
        release(channel.counters(), minimum);
        return CUDA_ERROR_OUT_OF_MEMORY;
    }
    lock(&POINTERS).insert(written(dptr), pack(actual.max(minimum), target.index));
    result
}

/// Hook of `cuMemFree_v2`.
///
/// # Safety
/// Same contract as the driver's `cuMemFree_v2`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn cuMemFree_v2(dptr: CUdeviceptr) -> CUresult {
    let (rt, real) = real_or_return!(cuMemFree_v2);
    // SAFETY: forwarding the caller's argument.
    rt.charged_free(&POINTERS, dptr, || unsafe { real(dptr) })
}

macro_rules! async_alloc_hooks {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        ///
        /// # Safety
        /// Same contract as the driver's entry point of the same name.
        #[unsafe(no_mangle)]
        pub unsafe extern "C" fn $name(dptr: *mut CUdeviceptr, bytes: usize, stream: CUstream) -> CUresult {
            let (rt, real) = real_or_return!($name);
            rt.charged_alloc(rt.context_target(), bytes as u64, &POINTERS, || {
                // SAFETY: forwarding the caller's arguments.
                (unsafe { real(dptr, bytes, stream) }, written(dptr))
            })
        }
    };
}

async_alloc_hooks!(
    /// Hook of `cuMemAllocAsync` (stream-ordered allocation from the device's current pool).
    cuMemAllocAsync
);
async_alloc_hooks!(
    /// Hook of `cuMemAllocAsync_ptsz`.
    cuMemAllocAsync_ptsz
);

macro_rules! pool_alloc_hooks {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        ///
        /// # Safety
        /// Same contract as the driver's entry point of the same name.
        #[unsafe(no_mangle)]
        pub unsafe extern "C" fn $name(
            dptr: *mut CUdeviceptr,
            bytes: usize,
            pool: CUmemoryPool,
            stream: CUstream,
        ) -> CUresult {
            let (rt, real) = real_or_return!($name);
            rt.charged_alloc(rt.context_target(), bytes as u64, &POINTERS, || {
                // SAFETY: forwarding the caller's arguments.
                (unsafe { real(dptr, bytes, pool, stream) }, written(dptr))
            })
        }
    };
}

pool_alloc_hooks!(
    /// Hook of `cuMemAllocFromPoolAsync`.
    cuMemAllocFromPoolAsync
);
pool_alloc_hooks!(
    /// Hook of `cuMemAllocFromPoolAsync_ptsz`.
    cuMemAllocFromPoolAsync_ptsz
);

macro_rules! async_free_hooks {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        ///
        /// # Safety
        /// Same contract as the driver's entry point of the same name.
        #[unsafe(no_mangle)]
        pub unsafe extern "C" fn $name(dptr: CUdeviceptr, stream: CUstream) -> CUresult {
            let (rt, real) = real_or_return!($name);
            // SAFETY: forwarding the caller's arguments.
            rt.charged_free(&POINTERS, dptr, || unsafe { real(dptr, stream) })
        }
    };
}

async_free_hooks!(
    /// Hook of `cuMemFreeAsync`: the bytes are returned when the free is issued.
    cuMemFreeAsync
);
async_free_hooks!(
    /// Hook of `cuMemFreeAsync_ptsz`.
    cuMemFreeAsync_ptsz
);

/// Hook of `cuMemCreate`: physical VMM memory on a device counts against that device's cap.
///
/// # Safety
/// Same contract as the driver's `cuMemCreate`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn cuMemCreate(
    handle: *mut u64,
    bytes: usize,
    prop: *const MemAllocationPropPrefix,
    flags: u64,
) -> CUresult {
    let (rt, real) = real_or_return!(cuMemCreate);
    // SAFETY: the caller passes a valid property struct or null (which the driver rejects).
    let target = unsafe { prop.as_ref() }
        .filter(|p| p.location_type == MEM_LOCATION_TYPE_DEVICE)
        .and_then(|p| rt.device_target(p.location_id));
    rt.charged_alloc(target, bytes as u64, &HANDLES, || {
        // SAFETY: forwarding the caller's arguments; on success the driver wrote the handle.
        let result = unsafe { real(handle, bytes, prop, flags) };
        (result, unsafe { handle.as_ref() }.copied().unwrap_or(0))
    })
}

/// Hook of `cuMemRelease`.
///
/// # Safety
/// Same contract as the driver's `cuMemRelease`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn cuMemRelease(handle: u64) -> CUresult {
    let (rt, real) = real_or_return!(cuMemRelease);
    // SAFETY: forwarding the caller's argument.
    rt.charged_free(&HANDLES, handle, || unsafe { real(handle) })
}

/// Hook of `cuMemGetInfo_v2`: reports the cap as the total and what the cap leaves as free memory.
///
/// # Safety
/// Same contract as the driver's `cuMemGetInfo_v2`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn cuMemGetInfo_v2(free: *mut usize, total: *mut usize) -> CUresult {
    let (rt, real) = real_or_return!(cuMemGetInfo_v2);
    // SAFETY: forwarding the caller's arguments.
    let result = unsafe { real(free, total) };
    if result != CUDA_SUCCESS || free.is_null() || total.is_null() {
        return result;
    }
    if let Some(target) = rt.context_target() {
        let channel = &target.slot.channel;
        // SAFETY: both out-parameters are non-null and were just written by the driver.
        unsafe {
            let (f, t) = virtual_meminfo(
                channel.control(),
                channel.counters(),
                *free as u64,
                *total as u64,
            );
            *free = f as usize;
            *total = t as usize;
        }
    }
    result
}

/// Hook of `cuDeviceTotalMem_v2`: reports the cap when it is below the device's memory.
///
/// # Safety
/// Same contract as the driver's `cuDeviceTotalMem_v2`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn cuDeviceTotalMem_v2(bytes: *mut usize, device: CUdevice) -> CUresult {
    let (rt, real) = real_or_return!(cuDeviceTotalMem_v2);
    // SAFETY: forwarding the caller's arguments.
    let result = unsafe { real(bytes, device) };
    if result != CUDA_SUCCESS || bytes.is_null() {
        return result;
    }
    if let Some(target) = rt.device_target(device) {
        // SAFETY: non-null and just written by the driver.
        unsafe { *bytes = virtual_total(target.slot.channel.control(), *bytes as u64) as usize };
    }
    result
}
