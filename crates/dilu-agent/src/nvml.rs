//! NVIDIA GPU discovery through NVML, loaded at run time with `dlopen`.
//!
//! The agent does not link against `libnvidia-ml`: machines without an NVIDIA driver are a normal case (they
//! offer the CPU device), so a missing library, a driver that is not loaded, or no permission to use it all
//! give an empty list, with the reason in [`Discovery::unavailable`]. Only a library that is present and
//! working but fails in an unexpected way is an error ([`NvmlError`]).
//!
//! The library loaded is `libnvidia-ml.so.1` (found by the dynamic loader's usual search), or the path in the
//! environment variable [`LIBRARY_ENV`] (`DILU_NVML_LIBRARY`) when it is set.
//!
//! The unit tests here exercise the "no library" paths; the real NVML path (symbol resolution, init,
//! per-device queries) runs against a software NVML (`dilu-cuda-testkit`'s `libnvidia-ml.so.1`) in
//! `crates/dilu/tests/agent_gpu_health.rs`, and against the driver's on GPU nodes.

use std::ffi::{CStr, CString, c_char, c_int, c_uint, c_void};
use std::fmt;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

/// The environment variable naming an NVML library to load instead of `libnvidia-ml.so.1`.
pub const LIBRARY_ENV: &str = "DILU_NVML_LIBRARY";

/// The library loaded when [`LIBRARY_ENV`] is not set (resolved by the dynamic loader's search path).
pub const DEFAULT_LIBRARY: &str = "libnvidia-ml.so.1";

/// `NVML_ERROR_NO_PERMISSION`.
pub const NVML_ERROR_NO_PERMISSION: u32 = 4;
/// `NVML_ERROR_DRIVER_NOT_LOADED`.
pub const NVML_ERROR_DRIVER_NOT_LOADED: u32 = 9;
/// `NVML_ERROR_LIBRARY_NOT_FOUND`.
pub const NVML_ERROR_LIBRARY_NOT_FOUND: u32 = 12;

const NVML_SUCCESS: c_int = 0;
/// `NVML_DEVICE_UUID_V2_BUFFER_SIZE` and `NVML_DEVICE_NAME_V2_BUFFER_SIZE` are both 96.
const STRING_BUFFER: usize = 96;

/// One NVIDIA GPU as NVML reports it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct GpuInfo {
    /// NVML's device index (the order `nvidia-smi` lists devices in).
    pub index: u32,
    /// The device's UUID, e.g. `GPU-5a7c…`: stable across reboots and index changes.
    pub uuid: String,
    /// The product name, e.g. `NVIDIA H100 80GB HBM3`.
    pub name: String,
    /// Total device memory in bytes.
    pub memory_bytes: u64,
    /// The number of streaming multiprocessors, when the driver reports device attributes.
    pub sm_count: Option<u32>,
}

/// Why discovery found no GPUs without that being an error.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Unavailable {
    /// The NVML library could not be loaded (no NVIDIA driver installed on this machine).
    LibraryMissing {
        /// The library that was looked for.
        library: PathBuf,
        /// The dynamic loader's message.
        reason: String,
    },
    /// NVML loaded but `nvmlInit_v2` reported that the driver is not loaded, its library is missing, or this
    /// process may not use it.
    InitFailed {
        /// The NVML return code (9, 12 or 4).
        code: u32,
        /// `nvmlErrorString` for the code.
        message: String,
    },
}

impl fmt::Display for Unavailable {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Unavailable::LibraryMissing { library, reason } => {
                write!(
                    f,
                    "NVML library {} not loadable: {reason}",
                    library.display()
                )
            }
            Unavailable::InitFailed { code, message } => {
                write!(f, "nvmlInit_v2 failed with NVML error {code}: {message}")
            }
        }
    }
}

/// What [`discover_report`] found: the GPUs, and when there are none for a benign reason, that reason.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Discovery {
    /// The GPUs, in NVML index order.
    pub gpus: Vec<GpuInfo>,
    /// Why NVML could not be used, when it could not (then `gpus` is empty).
    pub unavailable: Option<Unavailable>,
}

/// A failure of a present NVML library.
#[derive(Debug, thiserror::Error)]
pub enum NvmlError {
    /// A library was explicitly named (a path) and exists, but the dynamic loader refused it.
    #[error("cannot load NVML library {library}: {reason}")]
    Load {
        /// The library path.
        library: PathBuf,
        /// The dynamic loader's message.
        reason: String,
    },
    /// The library lacks a function every supported driver exports: it is not NVML, or far too old.
    #[error("NVML library {library} has no symbol {symbol}")]
    MissingSymbol {
        /// The library.
        library: PathBuf,
        /// The missing function.
        symbol: &'static str,
    },
    /// An NVML call returned an error.
    #[error("{call}{}: NVML error {code}: {message}", device_suffix(*.device))]
    Call {
        /// The NVML function.
        call: &'static str,
        /// The device index, for per-device calls.
        device: Option<u32>,
        /// The `nvmlReturn_t` code.
        code: u32,
        /// `nvmlErrorString` for the code.
        message: String,
    },
    /// The GPU health watch's thread could not start, or ended before it had set up.
    #[error("the GPU health watch thread: {reason}")]
    HealthThread {
        /// What happened.
        reason: String,
    },
}

fn device_suffix(device: Option<u32>) -> String {
    device.map(|d| format!(" (device {d})")).unwrap_or_default()
}

/// The library named by [`LIBRARY_ENV`], when the variable is set and not empty.
pub fn library_path_override() -> Option<PathBuf> {
    std::env::var_os(LIBRARY_ENV)
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
}

/// The NVIDIA GPUs of this machine; empty when there is no usable NVML (see [`discover_report`] for why).
pub fn discover() -> Result<Vec<GpuInfo>, NvmlError> {
    discover_report().map(|d| d.gpus)
}

/// Like [`discover`], also saying why the list is empty when NVML is unusable for a benign reason.
///
/// Loads [`library_path`].
pub fn discover_report() -> Result<Discovery, NvmlError> {
    discover_from(&library_path())
}

/// The library to load: [`library_path_override`] if set, else [`DEFAULT_LIBRARY`].
pub fn library_path() -> PathBuf {
    library_path_override().unwrap_or_else(|| PathBuf::from(DEFAULT_LIBRARY))
}

/// Discovery with an explicit library: a bare file name is searched by the dynamic loader, a path with a `/`
/// is loaded as is.
///
/// A library that cannot be loaded is [`Unavailable::LibraryMissing`], except when it is a path to an existing
/// file, which the operator named on purpose: then it is [`NvmlError::Load`].
pub fn discover_from(library: &Path) -> Result<Discovery, NvmlError> {
    let lib = match Library::open(library) {
        Ok(lib) => lib,
        Err(reason) => {
            let explicit = library.as_os_str().as_bytes().contains(&b'/');
            if explicit && library.exists() {
                return Err(NvmlError::Load {
                    library: library.to_path_buf(),
                    reason,
                });
            }
            return Ok(Discovery {
                gpus: Vec::new(),
                unavailable: Some(Unavailable::LibraryMissing {
                    library: library.to_path_buf(),
                    reason,
                }),
            });
        }
    };
    let api = Api::resolve(&lib, library)?;

    // SAFETY: `nvmlInit_v2` takes no arguments and has this signature in every NVML since driver 325.
    let rc = unsafe { (api.init)() };
    if rc != NVML_SUCCESS {
        let code = rc as u32;
        let message = api.error_string(rc);
        return match code {
            NVML_ERROR_DRIVER_NOT_LOADED
            | NVML_ERROR_LIBRARY_NOT_FOUND
            | NVML_ERROR_NO_PERMISSION => Ok(Discovery {
                gpus: Vec::new(),
                unavailable: Some(Unavailable::InitFailed { code, message }),
            }),
            _ => Err(NvmlError::Call {
                call: "nvmlInit_v2",
                device: None,
                code,
                message,
            }),
        };
    }
    let result = api.devices();
    // SAFETY: init succeeded above, so exactly one matching shutdown is owed.
    unsafe { (api.shutdown)() };
    result.map(|gpus| Discovery {
        gpus,
        unavailable: None,
    })
}

/// A `dlopen`ed library, closed on drop.
pub(crate) struct Library {
    handle: *mut c_void,
}

impl Library {
    pub(crate) fn open(path: &Path) -> Result<Library, String> {
        let name = CString::new(path.as_os_str().as_bytes())
            .map_err(|_| "library path contains a NUL byte".to_string())?;
        // SAFETY: `name` is a valid C string; dlopen has no other preconditions.
        let handle = unsafe { libc::dlopen(name.as_ptr(), libc::RTLD_NOW | libc::RTLD_LOCAL) };
        if handle.is_null() {
            return Err(dl_error());
        }
        Ok(Library { handle })
    }

    /// The address of `symbol`, or None.
    fn symbol(&self, symbol: &CStr) -> Option<*mut c_void> {
        // SAFETY: the handle is open for the life of `self`; `symbol` is a valid C string.
        let ptr = unsafe { libc::dlsym(self.handle, symbol.as_ptr()) };
        (!ptr.is_null()).then_some(ptr)
    }
}

impl Drop for Library {
    fn drop(&mut self) {
        // SAFETY: the handle came from a successful dlopen and is closed exactly once; no function pointer
        // resolved from it outlives `self` (the `Api` borrowing it is dropped first).
        unsafe { libc::dlclose(self.handle) };
    }
}

fn dl_error() -> String {
    // SAFETY: dlerror returns NULL or a NUL-terminated string valid until the next dl* call on this thread;
    // it is copied at once.
    let msg = unsafe { libc::dlerror() };
    if msg.is_null() {
        "unknown dynamic loader error".to_string()
    } else {
        // SAFETY: non-NULL, NUL-terminated (see above).
        unsafe { CStr::from_ptr(msg) }
            .to_string_lossy()
            .into_owned()
    }
}

/// `nvmlDevice_t`: an opaque pointer.
pub(crate) type Device = *mut c_void;

/// `nvmlMemory_t` (v1).
#[repr(C)]
#[derive(Default)]
struct Memory {
    total: u64,
    free: u64,
    used: u64,
}

type InitFn = unsafe extern "C" fn() -> c_int;
type ErrorStringFn = unsafe extern "C" fn(c_int) -> *const c_char;
type CountFn = unsafe extern "C" fn(*mut c_uint) -> c_int;
type HandleFn = unsafe extern "C" fn(c_uint, *mut Device) -> c_int;
type StringFn = unsafe extern "C" fn(Device, *mut c_char, c_uint) -> c_int;
type MemoryFn = unsafe extern "C" fn(Device, *mut Memory) -> c_int;
/// `nvmlDeviceGetAttributes_v2(device, nvmlDeviceAttributes_t*)`; only the first field is read.
type AttributesFn = unsafe extern "C" fn(Device, *mut c_void) -> c_int;
type HandleByUuidFn = unsafe extern "C" fn(*const c_char, *mut Device) -> c_int;

/// `nvmlEventSet_t`: an opaque pointer.
pub(crate) type EventSet = *mut c_void;

/// `nvmlEventData_t`.
#[repr(C)]
pub(crate) struct EventData {
    pub(crate) device: Device,
    pub(crate) event_type: u64,
    /// For an Xid event, the Xid.
    pub(crate) event_data: u64,
    pub(crate) gpu_instance_id: c_uint,
    pub(crate) compute_instance_id: c_uint,
}

impl Default for EventData {
    fn default() -> Self {
        EventData {
            device: std::ptr::null_mut(),
            event_type: 0,
            event_data: 0,
            gpu_instance_id: 0,
            compute_instance_id: 0,
        }
    }
}

type EventSetCreateFn = unsafe extern "C" fn(*mut EventSet) -> c_int;
type EventSetFreeFn = unsafe extern "C" fn(EventSet) -> c_int;
type RegisterEventsFn = unsafe extern "C" fn(Device, u64, EventSet) -> c_int;
type EventSetWaitFn = unsafe extern "C" fn(EventSet, *mut EventData, c_uint) -> c_int;

/// `nvmlEventTypeXidCriticalError`.
pub(crate) const EVENT_XID_CRITICAL: u64 = 0x8;
/// `NVML_ERROR_NOT_SUPPORTED`.
pub(crate) const NVML_ERROR_NOT_SUPPORTED: c_int = 3;
/// `NVML_ERROR_TIMEOUT`.
pub(crate) const NVML_ERROR_TIMEOUT: c_int = 10;

/// The NVML functions the health watch needs besides discovery's, resolved together: a library without one
/// of them cannot be watched.
pub(crate) struct EventApi {
    pub(crate) handle_by_uuid: HandleByUuidFn,
    pub(crate) set_create: EventSetCreateFn,
    pub(crate) set_free: EventSetFreeFn,
    pub(crate) register: RegisterEventsFn,
    pub(crate) wait: EventSetWaitFn,
}

/// The NVML functions discovery uses, resolved from a loaded library.
pub(crate) struct Api<'lib> {
    pub(crate) init: InitFn,
    pub(crate) shutdown: InitFn,
    error_string: Option<ErrorStringFn>,
    count: CountFn,
    handle_by_index: HandleFn,
    uuid: StringFn,
    name: StringFn,
    memory: MemoryFn,
    attributes: Option<AttributesFn>,
    _lib: std::marker::PhantomData<&'lib Library>,
}

macro_rules! resolve {
    ($lib:expr, $sym:literal, $ty:ty) => {
        $lib.symbol($sym).map(|p| {
            // SAFETY: NVML exports this symbol with the C signature `$ty` (nvml.h); a function pointer and a
            // data pointer have the same size and representation on the platforms NVML supports.
            unsafe { std::mem::transmute::<*mut c_void, $ty>(p) }
        })
    };
}

impl<'lib> Api<'lib> {
    pub(crate) fn resolve(lib: &'lib Library, path: &Path) -> Result<Api<'lib>, NvmlError> {
        let missing = |symbol: &'static str| NvmlError::MissingSymbol {
            library: path.to_path_buf(),
            symbol,
        };
        Ok(Api {
            init: resolve!(lib, c"nvmlInit_v2", InitFn).ok_or_else(|| missing("nvmlInit_v2"))?,
            shutdown: resolve!(lib, c"nvmlShutdown", InitFn)
                .ok_or_else(|| missing("nvmlShutdown"))?,
            error_string: resolve!(lib, c"nvmlErrorString", ErrorStringFn),
            count: resolve!(lib, c"nvmlDeviceGetCount_v2", CountFn)
                .ok_or_else(|| missing("nvmlDeviceGetCount_v2"))?,
            handle_by_index: resolve!(lib, c"nvmlDeviceGetHandleByIndex_v2", HandleFn)
                .ok_or_else(|| missing("nvmlDeviceGetHandleByIndex_v2"))?,
            uuid: resolve!(lib, c"nvmlDeviceGetUUID", StringFn)
                .ok_or_else(|| missing("nvmlDeviceGetUUID"))?,
            name: resolve!(lib, c"nvmlDeviceGetName", StringFn)
                .ok_or_else(|| missing("nvmlDeviceGetName"))?,
            memory: resolve!(lib, c"nvmlDeviceGetMemoryInfo", MemoryFn)
                .ok_or_else(|| missing("nvmlDeviceGetMemoryInfo"))?,
            attributes: resolve!(lib, c"nvmlDeviceGetAttributes_v2", AttributesFn),
            _lib: std::marker::PhantomData,
        })
    }

    /// The health watch's functions; the first one missing is named in the error.
    pub(crate) fn events(lib: &'lib Library, path: &Path) -> Result<EventApi, NvmlError> {
        let missing = |symbol: &'static str| NvmlError::MissingSymbol {
            library: path.to_path_buf(),
            symbol,
        };
        Ok(EventApi {
            handle_by_uuid: resolve!(lib, c"nvmlDeviceGetHandleByUUID", HandleByUuidFn)
                .ok_or_else(|| missing("nvmlDeviceGetHandleByUUID"))?,
            set_create: resolve!(lib, c"nvmlEventSetCreate", EventSetCreateFn)
                .ok_or_else(|| missing("nvmlEventSetCreate"))?,
            set_free: resolve!(lib, c"nvmlEventSetFree", EventSetFreeFn)
                .ok_or_else(|| missing("nvmlEventSetFree"))?,
            register: resolve!(lib, c"nvmlDeviceRegisterEvents", RegisterEventsFn)
                .ok_or_else(|| missing("nvmlDeviceRegisterEvents"))?,
            wait: resolve!(lib, c"nvmlEventSetWait_v2", EventSetWaitFn)
                .ok_or_else(|| missing("nvmlEventSetWait_v2"))?,
        })
    }

    pub(crate) fn error_string(&self, rc: c_int) -> String {
        let Some(f) = self.error_string else {
            return "unknown error (nvmlErrorString not exported)".to_string();
        };
        // SAFETY: nvmlErrorString accepts any code and returns a static NUL-terminated string (or NULL).
        let ptr = unsafe { f(rc) };
        if ptr.is_null() {
            return "unknown error".to_string();
        }
        // SAFETY: non-NULL static C string (see above).
        unsafe { CStr::from_ptr(ptr) }
            .to_string_lossy()
            .into_owned()
    }

    fn check(&self, call: &'static str, device: Option<u32>, rc: c_int) -> Result<(), NvmlError> {
        if rc == NVML_SUCCESS {
            return Ok(());
        }
        Err(NvmlError::Call {
            call,
            device,
            code: rc as u32,
            message: self.error_string(rc),
        })
    }

    /// Queries every device. NVML must be initialised.
    fn devices(&self) -> Result<Vec<GpuInfo>, NvmlError> {
        let mut count: c_uint = 0;
        // SAFETY: `count` is a valid out pointer.
        self.check("nvmlDeviceGetCount_v2", None, unsafe {
            (self.count)(&mut count)
        })?;
        (0..count).map(|index| self.device(index)).collect()
    }

    fn device(&self, index: u32) -> Result<GpuInfo, NvmlError> {
        let at = Some(index);
        let mut dev: Device = std::ptr::null_mut();
        // SAFETY: `dev` is a valid out pointer; the index is below the reported count.
        let rc = unsafe { (self.handle_by_index)(index, &mut dev) };
        self.check("nvmlDeviceGetHandleByIndex_v2", at, rc)?;
        let uuid = self.string("nvmlDeviceGetUUID", index, self.uuid, dev)?;
        let name = self.string("nvmlDeviceGetName", index, self.name, dev)?;
        let mut mem = Memory::default();
        // SAFETY: `dev` is a handle NVML returned; `mem` is an `nvmlMemory_t` (v1 layout).
        self.check("nvmlDeviceGetMemoryInfo", at, unsafe {
            (self.memory)(dev, &mut mem)
        })?;
        Ok(GpuInfo {
            index,
            uuid,
            name,
            memory_bytes: mem.total,
            sm_count: self.sm_count(dev),
        })
    }

    fn string(
        &self,
        call: &'static str,
        index: u32,
        f: StringFn,
        dev: Device,
    ) -> Result<String, NvmlError> {
        let mut buf = [0 as c_char; STRING_BUFFER];
        // SAFETY: `buf` has the stated length; NVML NUL-terminates within it on success.
        let rc = unsafe { f(dev, buf.as_mut_ptr(), STRING_BUFFER as c_uint) };
        self.check(call, Some(index), rc)?;
        // Guarantee termination whatever the driver did.
        buf[STRING_BUFFER - 1] = 0;
        // SAFETY: `buf` is NUL-terminated (just ensured).
        Ok(unsafe { CStr::from_ptr(buf.as_ptr()) }
            .to_string_lossy()
            .into_owned())
    }

    /// `multiprocessorCount`, the first `unsigned int` of `nvmlDeviceAttributes_t`; None when unavailable.
    fn sm_count(&self, dev: Device) -> Option<u32> {
        let f = self.attributes?;
        // nvmlDeviceAttributes_t is 40 bytes today (eight u32 then a u64); a larger zeroed, 8-aligned buffer
        // tolerates a future version growing the struct.
        let mut buf = [0u64; 32];
        // SAFETY: `dev` is a handle NVML returned; `buf` is larger than and as aligned as the struct.
        let rc = unsafe { f(dev, buf.as_mut_ptr().cast()) };
        if rc != NVML_SUCCESS {
            return None;
        }
        // The first four bytes, in native byte order, are `multiprocessorCount`.
        let bytes = buf[0].to_ne_bytes();
        let count = u32::from_ne_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]);
        (count > 0).then_some(count)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_library_path_is_empty_with_reason() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("libnvidia-ml.so.1");
        let report = discover_from(&missing).unwrap();
        assert!(report.gpus.is_empty());
        match report.unavailable {
            Some(Unavailable::LibraryMissing { library, reason }) => {
                assert_eq!(library, missing);
                assert!(!reason.is_empty());
            }
            other => panic!("expected LibraryMissing, got {other:?}"),
        }
    }

    #[test]
    fn missing_bare_library_name_is_empty() {
        let report = discover_from(Path::new("libdilu-no-such-nvml.so.1")).unwrap();
        assert!(report.gpus.is_empty());
        assert!(matches!(
            report.unavailable,
            Some(Unavailable::LibraryMissing { .. })
        ));
    }

    #[test]
    fn existing_file_that_is_not_a_library_is_a_load_error() {
        let dir = tempfile::tempdir().unwrap();
        let bogus = dir.path().join("libnvidia-ml.so.1");
        std::fs::write(&bogus, b"not an ELF file").unwrap();
        let err = discover_from(&bogus).unwrap_err();
        assert!(matches!(err, NvmlError::Load { .. }), "{err:?}");
        assert!(
            err.to_string().contains(&bogus.display().to_string()),
            "{err}"
        );
    }

    #[test]
    fn a_real_library_without_nvml_symbols_is_missing_symbol() {
        // libc is loadable everywhere and exports none of NVML's functions.
        let err = discover_from(Path::new("libc.so.6")).unwrap_err();
        match err {
            NvmlError::MissingSymbol { symbol, .. } => assert_eq!(symbol, "nvmlInit_v2"),
            other => panic!("expected MissingSymbol, got {other:?}"),
        }
    }

    #[test]
    fn call_error_message_names_call_device_and_code() {
        let err = NvmlError::Call {
            call: "nvmlDeviceGetMemoryInfo",
            device: Some(3),
            code: 15,
            message: "GPU is lost".into(),
        };
        assert_eq!(
            err.to_string(),
            "nvmlDeviceGetMemoryInfo (device 3): NVML error 15: GPU is lost"
        );
    }
}
