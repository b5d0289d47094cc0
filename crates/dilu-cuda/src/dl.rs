//! The dynamic-linker side: finding the real `dlsym`, and our own `dlsym`, which hands out the interposer's
//! hooks to programs that look the driver up at run time (the CUDA 12 runtime and PyTorch do).
//!
//! On x86-64 our `dlsym` is a naked trampoline: it asks [`dlsym_decide`] whether to return a hook, passing
//! along the caller's return address, and otherwise *jumps* into the real `dlsym` with the caller's stack
//! untouched. The real `dlsym` therefore sees the original caller, so `RTLD_NEXT` keeps its meaning for every
//! other library (other preloaded interposers rely on it), and look-ups made by the driver itself are
//! recognised by their return address and passed through. Elsewhere a plain function forwards the call; it
//! is correct for explicit handles and `RTLD_DEFAULT`, but `RTLD_NEXT` then resolves relative to this library.

use std::cell::Cell;
use std::ffi::{CStr, c_char, c_void};
use std::sync::atomic::{AtomicPtr, Ordering};

use crate::exports::hook_address;
use crate::real::DlsymFn;
use crate::runtime::runtime;

/// The C library's `dlsym`, resolved on first use with `dlvsym(RTLD_NEXT, …)`.
pub(crate) static REAL_DLSYM: AtomicPtr<c_void> = AtomicPtr::new(std::ptr::null_mut());

thread_local! {
    /// Set while this thread initialises the runtime, so look-ups made meanwhile pass straight through.
    pub(crate) static INITIALIZING: Cell<bool> = const { Cell::new(false) };
}

/// glibc versions under which `dlsym` has been exported (2.34 moved it into libc proper).
const DLSYM_VERSIONS: [&CStr; 3] = [c"GLIBC_2.34", c"GLIBC_2.2.5", c"GLIBC_2.17"];

/// The real `dlsym`, or `None` if the C library does not provide one under a known version.
pub(crate) fn real_dlsym() -> Option<DlsymFn> {
    let mut address = REAL_DLSYM.load(Ordering::Acquire);
    if address.is_null() {
        for version in DLSYM_VERSIONS {
            // SAFETY: dlvsym is not interposed by us; both strings are NUL-terminated literals.
            address = unsafe { libc::dlvsym(libc::RTLD_NEXT, c"dlsym".as_ptr(), version.as_ptr()) };
            if !address.is_null() {
                break;
            }
        }
        if address.is_null() {
            return None;
        }
        REAL_DLSYM.store(address, Ordering::Release);
    }
    // SAFETY: the address is the C library's dlsym, whose signature DlsymFn spells out.
    Some(unsafe { std::mem::transmute::<*mut c_void, DlsymFn>(address) })
}

/// Decides what our `dlsym` returns: a hook's address, or null to let the real `dlsym` answer.
///
/// A hook is returned only for names the interposer hooks, when the interposer has a real driver that exports
/// the same name, when the caller is not the driver itself, and when the handle is the driver's handle,
/// `RTLD_DEFAULT`, `RTLD_NEXT`, or another handle under which the name resolves to the driver's function.
///
/// # Safety
/// `symbol` is null or a NUL-terminated string, as `dlsym` requires.
unsafe extern "C" fn dilu_dlsym_decide(
    handle: *mut c_void,
    symbol: *const c_char,
    caller: *const c_void,
) -> *mut c_void {
    let null = std::ptr::null_mut();
    let Some(real) = real_dlsym() else {
        return null;
    };
    if symbol.is_null() {
        return null;
    }
    // SAFETY: non-null and NUL-terminated per dlsym's contract.
    let name = unsafe { CStr::from_ptr(symbol) }.to_bytes();
    if !name.starts_with(b"cu") || INITIALIZING.with(Cell::get) {
        return null;
    }
    let Some(hook) = hook_address(name) else {
        return null;
    };
    let Some(rt) = runtime() else {
        return null;
    };
    if !rt.driver_exports(name) || rt.is_driver_address(caller) {
        return null;
    }
    if handle == libc::RTLD_DEFAULT || handle == libc::RTLD_NEXT || rt.is_driver_handle(handle) {
        return hook;
    }
    // SAFETY: forwarding the caller's own arguments.
    let resolved = unsafe { real(handle, symbol) };
    if rt
        .real_name_of(resolved)
        .is_some_and(|n| n.as_bytes() == name)
    {
        hook
    } else {
        null
    }
}

/// Our `dlsym` (x86-64): a trampoline that keeps the caller's return address for the real `dlsym`.
///
/// # Safety
/// Same contract as the C library's `dlsym`.
#[cfg(target_arch = "x86_64")]
#[unsafe(naked)]
#[unsafe(no_mangle)]
pub unsafe extern "C" fn dlsym(handle: *mut c_void, symbol: *const c_char) -> *mut c_void {
    core::arch::naked_asm!(
        // Save the two arguments, pass the return address as the third, keep the stack 16-byte aligned.
        "push rdi",
        "push rsi",
        "mov rdx, [rsp + 16]",
        "sub rsp, 8",
        "call {decide}",
        "add rsp, 8",
        "pop rsi",
        "pop rdi",
        "test rax, rax",
        "jnz 2f",
        // No hook: tail-jump into the real dlsym (resolved by `decide`); if there is none, return null.
        "mov rax, qword ptr [rip + {real}]",
        "test rax, rax",
        "jz 2f",
        "jmp rax",
        "2:",
        "ret",
        decide = sym dilu_dlsym_decide,
        real = sym REAL_DLSYM,
    )
}

/// Our `dlsym` (other architectures): forwards through [`dilu_dlsym_decide`] without the caller's address.
///
/// # Safety
/// Same contract as the C library's `dlsym`.
#[cfg(not(target_arch = "x86_64"))]
#[unsafe(no_mangle)]
pub unsafe extern "C" fn dlsym(handle: *mut c_void, symbol: *const c_char) -> *mut c_void {
    // SAFETY: forwarding the caller's arguments.
    let hook = unsafe { dilu_dlsym_decide(handle, symbol, std::ptr::null()) };
    if !hook.is_null() {
        return hook;
    }
    match real_dlsym() {
        // SAFETY: forwarding the caller's arguments to the real dlsym.
        Some(real) => unsafe { real(handle, symbol) },
        None => std::ptr::null_mut(),
    }
}
