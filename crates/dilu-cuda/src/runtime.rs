//! The interposer's process-wide state: the real driver, the quota channels, and which device (and so which
//! channel) the current context launches on. Built once, on the first hooked call.

use std::ffi::{CStr, CString, OsStr, c_void};
use std::io::Write;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::time::Instant;

use dilu_quota::{
    Gate, InstanceChannel, channel_from_env, channel_wait_from_env, layout::uuid_str,
    wait_for_channel,
};

use crate::cost::cost_multiplier;
use crate::dl::{INITIALIZING, real_dlsym};
use crate::ffi::{
    ATTR_MAX_THREADS_PER_MULTIPROCESSOR, ATTR_MULTIPROCESSOR_COUNT, CUDA_SUCCESS, CUcontext,
    CUdevice,
};
use crate::real::RealDriver;

/// Most quota channels one process can use (one per device it budgets).
pub const MAX_CHANNELS: usize = 8;
/// Contexts whose device is remembered; more are resolved on every launch (correct, slower).
const CONTEXT_CACHE: usize = 32;
/// Device ordinals whose channel is remembered.
const DEVICE_CACHE: usize = 64;
/// Slot code meaning "no channel budgets this device".
const NO_SLOT: u64 = 0xFF;
const MULTIPLIER_MASK: u64 = (1 << 56) - 1;

/// One quota channel and the process-local token bucket in front of it.
pub(crate) struct Slot {
    pub(crate) channel: InstanceChannel,
    /// The channel's device UUID without its `GPU-`/`MIG-` prefix, lower case; empty = every device.
    uuid_key: String,
    pub(crate) gate: Gate,
}

/// A device resolved for the current context: its channel and its cost multiplier.
pub(crate) struct Target<'a> {
    pub(crate) index: usize,
    pub(crate) slot: &'a Slot,
    pub(crate) multiplier: u64,
}

struct CacheEntry {
    /// Context handle (or device ordinal + 1); 0 = empty, 1 = being filled.
    key: AtomicUsize,
    /// `slot code << 56 | cost multiplier`.
    packed: AtomicU64,
}

impl CacheEntry {
    const fn new() -> Self {
        Self {
            key: AtomicUsize::new(0),
            packed: AtomicU64::new(0),
        }
    }
}

/// Process-wide interposer state.
pub(crate) struct Runtime {
    pub(crate) real: RealDriver,
    driver_handle: usize,
    driver_base: usize,
    pub(crate) slots: Vec<Slot>,
    contexts: [CacheEntry; CONTEXT_CACHE],
    devices: [CacheEntry; DEVICE_CACHE],
    /// When the process sees exactly one device (the agent sets `CUDA_VISIBLE_DEVICES` to one UUID), every
    /// context is on it: its packed target, so launches need no driver call to find their channel.
    /// 0 = not known (yet, or more than one device).
    sole_device: AtomicU64,
    /// Whether the device count has been asked (after `cuInit`, at the first resolution).
    counted_devices: AtomicBool,
}

static RUNTIME: OnceLock<Runtime> = OnceLock::new();

/// The runtime, initialising it on first use; `None` only when called re-entrantly during initialisation.
pub(crate) fn runtime() -> Option<&'static Runtime> {
    if let Some(rt) = RUNTIME.get() {
        return Some(rt);
    }
    if INITIALIZING.with(|flag| flag.get()) {
        return None;
    }
    Some(RUNTIME.get_or_init(|| {
        INITIALIZING.with(|flag| flag.set(true));
        let rt = Runtime::init();
        INITIALIZING.with(|flag| flag.set(false));
        rt
    }))
}

/// Prints one line to stderr unless `DILU_CUDA_QUIET` is set; never fails (the host's stderr may be closed).
pub(crate) fn warn(message: std::fmt::Arguments<'_>) {
    if std::env::var_os("DILU_CUDA_QUIET").is_some_and(|v| v != "0") {
        return;
    }
    let _ = writeln!(std::io::stderr(), "dilu-cuda: {message}");
}

impl Runtime {
    fn init() -> Self {
        let (real, driver_handle, driver_base) = load_driver();
        let slots = open_channels();
        Self {
            real,
            driver_handle,
            driver_base,
            slots,
            contexts: [const { CacheEntry::new() }; CONTEXT_CACHE],
            devices: [const { CacheEntry::new() }; DEVICE_CACHE],
            sole_device: AtomicU64::new(0),
            counted_devices: AtomicBool::new(false),
        }
    }

    /// Whether the real driver exports `name` (so hooking it changes nothing about its availability).
    pub(crate) fn driver_exports(&self, name: &[u8]) -> bool {
        self.driver_handle != 0 && self.real.exports(name)
    }

    /// Whether `handle` is the driver's `dlopen` handle.
    pub(crate) fn is_driver_handle(&self, handle: *mut c_void) -> bool {
        self.driver_handle != 0 && handle as usize == self.driver_handle
    }

    /// Whether `address` lies in the driver's image (used to pass the driver's own look-ups through).
    pub(crate) fn is_driver_address(&self, address: *const c_void) -> bool {
        self.driver_base != 0 && !address.is_null() && image_base(address) == self.driver_base
    }

    /// Which hooked entry point of the driver `address` is.
    pub(crate) fn real_name_of(&self, address: *mut c_void) -> Option<&'static str> {
        if address.is_null() {
            return None;
        }
        self.real.name_of(address)
    }

    /// The channel and cost multiplier for launches in the calling thread's current context.
    pub(crate) fn context_target(&self) -> Option<Target<'_>> {
        if self.slots.is_empty() {
            return None;
        }
        let sole = self.sole_device.load(Ordering::Relaxed);
        if sole != 0 {
            return self.unpack(sole);
        }
        let get_current = self.real.cuCtxGetCurrent?;
        let mut ctx: CUcontext = std::ptr::null_mut();
        // SAFETY: writes one handle we own.
        if unsafe { get_current(&mut ctx) } != CUDA_SUCCESS || ctx.is_null() {
            return None;
        }
        let key = ctx as usize;
        if let Some(packed) = cached(&self.contexts, key) {
            return self.unpack(packed);
        }
        let get_device = self.real.cuCtxGetDevice?;
        let mut device: CUdevice = 0;
        // SAFETY: writes one ordinal we own; the context is current on this thread.
        if unsafe { get_device(&mut device) } != CUDA_SUCCESS {
            return None;
        }
        let packed = self.device_packed(device);
        remember(&self.contexts, key, packed);
        if !self.counted_devices.swap(true, Ordering::Relaxed) && self.device_count() == Some(1) {
            self.sole_device.store(packed, Ordering::Relaxed);
        }
        self.unpack(packed)
    }

    fn device_count(&self) -> Option<i32> {
        let count_devices = self.real.cuDeviceGetCount?;
        let mut count = 0;
        // SAFETY: writes one int; a context exists, so the driver is initialised.
        (unsafe { count_devices(&mut count) } == CUDA_SUCCESS).then_some(count)
    }

    /// The channel and cost multiplier for device ordinal `device`.
    pub(crate) fn device_target(&self, device: CUdevice) -> Option<Target<'_>> {
        if self.slots.is_empty() {
            return None;
        }
        self.unpack(self.device_packed(device))
    }

    fn device_packed(&self, device: CUdevice) -> u64 {
        let key = usize::try_from(device).map_or(0, |d| d + 2);
        if let Some(packed) = cached(&self.devices, key) {
            return packed;
        }
        let slot = self.slot_for_device(device).map_or(NO_SLOT, |i| i as u64);
        let resident = self.resident_threads(device, slot);
        let packed = (slot << 56) | (cost_multiplier(resident) & MULTIPLIER_MASK);
        remember(&self.devices, key, packed);
        packed
    }

    fn unpack(&self, packed: u64) -> Option<Target<'_>> {
        let index = usize::try_from(packed >> 56).ok()?;
        let slot = self.slots.get(index)?;
        Some(Target {
            index,
            slot,
            multiplier: packed & MULTIPLIER_MASK,
        })
    }

    fn slot_for_device(&self, device: CUdevice) -> Option<usize> {
        let mut uuid = [0u8; 16];
        let query = self.real.cuDeviceGetUuid_v2.or(self.real.cuDeviceGetUuid);
        // SAFETY: writes 16 bytes we own.
        let known = query.is_some_and(|q| unsafe { q(&mut uuid, device) } == CUDA_SUCCESS);
        let text = format_uuid(&uuid);
        self.slots.iter().position(|slot| {
            slot.uuid_key.is_empty() || (known && slot.uuid_key.as_bytes() == text.as_slice())
        })
    }

    fn resident_threads(&self, device: CUdevice, slot: u64) -> u64 {
        let hint = usize::try_from(slot)
            .ok()
            .and_then(|i| self.slots.get(i))
            .map_or(0, |s| {
                s.channel.control().resident_threads.load(Ordering::Relaxed)
            });
        if hint != 0 {
            return hint;
        }
        let Some(attribute) = self.real.cuDeviceGetAttribute else {
            return 0;
        };
        let (mut sms, mut per_sm) = (0, 0);
        // SAFETY: each call writes one int we own.
        let ok = unsafe {
            attribute(&mut sms, ATTR_MULTIPROCESSOR_COUNT, device) == CUDA_SUCCESS
                && attribute(&mut per_sm, ATTR_MAX_THREADS_PER_MULTIPROCESSOR, device)
                    == CUDA_SUCCESS
        };
        if !ok || sms <= 0 || per_sm <= 0 {
            return 0;
        }
        (sms as u64) * (per_sm as u64)
    }
}

fn cached(cache: &[CacheEntry], key: usize) -> Option<u64> {
    cache
        .iter()
        .find(|entry| entry.key.load(Ordering::Acquire) == key)
        .map(|entry| entry.packed.load(Ordering::Relaxed))
}

fn remember(cache: &[CacheEntry], key: usize, packed: u64) {
    for entry in cache {
        if entry
            .key
            .compare_exchange(0, 1, Ordering::AcqRel, Ordering::Relaxed)
            .is_ok()
        {
            entry.packed.store(packed, Ordering::Relaxed);
            entry.key.store(key, Ordering::Release);
            return;
        }
    }
}

/// The 36-character lower-case `xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx` form of a CUDA UUID.
fn format_uuid(bytes: &[u8; 16]) -> [u8; 36] {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut out = [b'-'; 36];
    let mut at = 0;
    for (i, byte) in bytes.iter().enumerate() {
        if matches!(i, 4 | 6 | 8 | 10) {
            at += 1;
        }
        let high = HEX.get(usize::from(byte >> 4)).copied().unwrap_or(b'0');
        let low = HEX.get(usize::from(byte & 0xF)).copied().unwrap_or(b'0');
        if let Some([h, l]) = out.get_mut(at..at + 2) {
            *h = high;
            *l = low;
        }
        at += 2;
    }
    out
}

/// A channel's UUID as the comparison key: prefix (`GPU-`, `MIG-`) dropped, lower case.
fn uuid_key(uuid: &str) -> String {
    let bare = uuid
        .strip_prefix("GPU-")
        .or_else(|| uuid.strip_prefix("MIG-"))
        .unwrap_or(uuid);
    bare.to_ascii_lowercase()
}

fn image_base(address: *const c_void) -> usize {
    // SAFETY: dladdr only reads loader tables and fills the struct we own.
    let mut info: libc::Dl_info = unsafe { std::mem::zeroed() };
    if unsafe { libc::dladdr(address, &mut info) } == 0 {
        return 0;
    }
    info.dli_fbase as usize
}

/// Opens the real driver (`DILU_REAL_LIBCUDA`, default `libcuda.so.1`) and resolves its entry points.
fn load_driver() -> (RealDriver, usize, usize) {
    let name = std::env::var_os("DILU_REAL_LIBCUDA").unwrap_or_else(|| "libcuda.so.1".into());
    let Some(dlsym) = real_dlsym() else {
        warn(format_args!(
            "the C library exports no dlsym; CUDA calls will fail"
        ));
        // SAFETY: a null handle resolves nothing; every entry stays None.
        return (
            unsafe { RealDriver::resolve(std::ptr::null_mut(), null_dlsym) },
            0,
            0,
        );
    };
    let c_name = CString::new(name.as_bytes()).unwrap_or_default();
    // SAFETY: a NUL-terminated path; dlopen is not interposed.
    let handle = unsafe { libc::dlopen(c_name.as_ptr(), libc::RTLD_NOW | libc::RTLD_LOCAL) };
    if handle.is_null() {
        // SAFETY: dlerror returns a thread-local message or null.
        let reason = unsafe { libc::dlerror() };
        let reason = if reason.is_null() {
            "unknown error".into()
        } else {
            // SAFETY: non-null C string from dlerror.
            unsafe { CStr::from_ptr(reason) }.to_string_lossy()
        };
        warn(format_args!(
            "cannot load the CUDA driver {}: {reason}",
            Path::new(&name).display()
        ));
        // SAFETY: as above.
        return (
            unsafe { RealDriver::resolve(std::ptr::null_mut(), null_dlsym) },
            0,
            0,
        );
    }
    // SAFETY: a live handle and the C library's dlsym.
    let real = unsafe { RealDriver::resolve(handle, dlsym) };
    let any_entry = real
        .cuGetProcAddress
        .map(|f| f as usize)
        .or(real.cuCtxGetCurrent.map(|f| f as usize))
        .unwrap_or(0);
    let base = if any_entry == 0 {
        0
    } else {
        image_base(any_entry as *const c_void)
    };
    (real, handle as usize, base)
}

unsafe extern "C" fn null_dlsym(_: *mut c_void, _: *const std::ffi::c_char) -> *mut c_void {
    std::ptr::null_mut()
}

/// Opens every channel named in `DILU_QUOTA_FILE` (colon-separated), or else the pod's channel
/// `$DILU_QUOTA_DIR/$DILU_POD_UID` (Kubernetes); unusable ones are reported and skipped.
///
/// Under `DILU_QUOTA_DIR` (Kubernetes: the container can start before the agent creates its channel) a channel
/// that does not exist yet is waited for, polled every 50 ms, all of them within one bound (`DILU_QUOTA_WAIT_S`
/// seconds, default 30); one that never appears is reported once and not enforced (pass-through). The wait runs
/// once, on the first hooked call, inside the runtime's initialisation and after the real driver is loaded: it
/// holds no lock but the initialisation's own (other threads' hooked calls wait for it, as they wait for any
/// initialisation, and then run budgeted), calls neither the driver nor the dynamic loader, and only ends
/// early when the files appear, so it cannot deadlock; it delays the process's first CUDA call by at most
/// the bound.
fn open_channels() -> Vec<Slot> {
    let Some(list) = channel_from_env() else {
        warn(format_args!(
            "no quota channel named (neither DILU_QUOTA_FILE nor DILU_QUOTA_DIR with DILU_POD_UID); passing \
             CUDA calls through without quotas"
        ));
        return Vec::new();
    };
    let wait = channel_wait_from_env();
    let deadline = wait.map(|bound| (Instant::now() + bound, bound));
    let mut slots = Vec::new();
    for part in list
        .as_bytes()
        .split(|&b| b == b':')
        .filter(|p| !p.is_empty())
    {
        let path = Path::new(OsStr::from_bytes(part));
        if slots.len() == MAX_CHANNELS {
            warn(format_args!(
                "more than {MAX_CHANNELS} quota channels; ignoring {}",
                path.display()
            ));
            continue;
        }
        if let Some((deadline, bound)) = deadline
            && !wait_for_channel(path, deadline.saturating_duration_since(Instant::now()))
        {
            warn(format_args!(
                "quota channel {} did not appear within {:.1} s (DILU_QUOTA_DIR is set: the node agent \
                 creates it; DILU_QUOTA_WAIT_S sets the wait); not enforced",
                path.display(),
                bound.as_secs_f64()
            ));
            continue;
        }
        match InstanceChannel::open(path) {
            Ok(channel) => {
                channel.attach(std::process::id());
                let uuid_key = uuid_key(uuid_str(&channel.control().device_uuid));
                slots.push(Slot {
                    channel,
                    uuid_key,
                    gate: Gate::new(),
                });
            }
            Err(error) => warn(format_args!(
                "quota channel unusable, not enforced: {error}"
            )),
        }
    }
    if slots.is_empty() {
        warn(format_args!(
            "no usable quota channel; passing CUDA calls through without quotas"
        ));
    }
    slots
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uuids_format_like_nvidia_smi_and_match_channel_keys() {
        let bytes = [0, 0, 0xd1, 0x1a, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 3];
        assert_eq!(
            &format_uuid(&bytes),
            b"0000d11a-0000-0000-0000-000000000003"
        );
        assert_eq!(
            uuid_key("GPU-0000D11A-0000-0000-0000-000000000003"),
            "0000d11a-0000-0000-0000-000000000003"
        );
        assert_eq!(uuid_key("MIG-abc"), "abc");
        assert_eq!(uuid_key(""), "");
    }
}
