//! `cuGetProcAddress` hooks: the CUDA 11.3+ runtime (and everything built on it, PyTorch included) finds
//! driver entry points through `cuGetProcAddress`, not through the symbol table, so without these hooks every
//! launch and allocation would bypass the interposer.
//!
//! The real driver answers first (so version and stream variants, symbol status and errors are the
//! driver's own); if the answer is an entry point we hook — recognised by address, or failing that by the
//! versioned name the request maps to — the caller receives our hook instead.

use std::ffi::{CStr, c_char, c_int, c_void};

use crate::exports::{hook_address, versioned_export};
use crate::ffi::{CUDA_ERROR_NOT_FOUND, CUDA_ERROR_NOT_INITIALIZED, CUDA_SUCCESS, CUresult};
use crate::runtime::{Runtime, runtime};

impl Runtime {
    /// Replaces `*pfn` with our hook when the driver returned one of the entry points we hook.
    fn substitute_hook(
        &self,
        symbol: *const c_char,
        pfn: *mut *mut c_void,
        cuda_version: c_int,
        flags: u64,
    ) {
        // SAFETY: the caller passed a valid out-parameter, which the driver has just written.
        let Some(found) = (unsafe { pfn.as_mut() }) else {
            return;
        };
        if found.is_null() {
            return;
        }
        let by_address = self
            .real_name_of(*found)
            .and_then(|name| hook_address(name.as_bytes()));
        let by_name = || {
            if symbol.is_null() {
                return None;
            }
            // SAFETY: non-null, NUL-terminated per cuGetProcAddress's contract.
            let base = unsafe { CStr::from_ptr(symbol) }.to_bytes();
            versioned_export(base, cuda_version, flags).and_then(hook_address)
        };
        if let Some(hook) = by_address.or_else(by_name) {
            *found = hook;
        }
    }
}

/// Hook of `cuGetProcAddress` (CUDA 11.3–11.8 signature).
///
/// # Safety
/// Same contract as the driver's `cuGetProcAddress`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn cuGetProcAddress(
    symbol: *const c_char,
    pfn: *mut *mut c_void,
    cuda_version: c_int,
    flags: u64,
) -> CUresult {
    let Some(rt) = runtime() else {
        return CUDA_ERROR_NOT_INITIALIZED;
    };
    let Some(real) = rt.real.cuGetProcAddress else {
        return CUDA_ERROR_NOT_FOUND;
    };
    // SAFETY: forwarding the caller's arguments.
    let result = unsafe { real(symbol, pfn, cuda_version, flags) };
    if result == CUDA_SUCCESS {
        rt.substitute_hook(symbol, pfn, cuda_version, flags);
    }
    result
}

/// Hook of `cuGetProcAddress_v2` (CUDA 12, which adds the symbol status out-parameter).
///
/// # Safety
/// Same contract as the driver's `cuGetProcAddress_v2`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn cuGetProcAddress_v2(
    symbol: *const c_char,
    pfn: *mut *mut c_void,
    cuda_version: c_int,
    flags: u64,
    symbol_status: *mut c_int,
) -> CUresult {
    let Some(rt) = runtime() else {
        return CUDA_ERROR_NOT_INITIALIZED;
    };
    let Some(real) = rt.real.cuGetProcAddress_v2 else {
        return CUDA_ERROR_NOT_FOUND;
    };
    // SAFETY: forwarding the caller's arguments.
    let result = unsafe { real(symbol, pfn, cuda_version, flags, symbol_status) };
    if result == CUDA_SUCCESS {
        rt.substitute_hook(symbol, pfn, cuda_version, flags);
    }
    result
}
