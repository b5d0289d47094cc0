//! What the interposer adds to a driver call: `cuLaunchKernel`, `cuMemAlloc_v2` and `cuMemFree_v2` called
//! directly on the software driver and through `libdilu_cuda.so`, alternating batches in one process.
//!
//! Run: `cargo bench -p dilu-cuda --bench overhead` (add `-- --batches N` for more samples).
//!
//! Each sample is the mean time per call over a batch of 100 calls (a single call is shorter than the
//! clock's resolution); the table gives the median and 99th percentile of those samples, and the added
//! nanoseconds are interposed minus direct. Budgets are set so they never bind: "unlimited" is the sentinel
//! that skips the token bucket, "finite" a budget far above the launch rate, which runs the bucket's fast path.

use std::ffi::{CStr, c_int, c_uint, c_void};
use std::time::Instant;

use dilu_cuda_testkit::{artifacts, interposer_library};
use dilu_quota::{AgentChannel, ChannelSpec, UNLIMITED};

type LaunchFn = unsafe extern "C" fn(
    *mut c_void,
    c_uint,
    c_uint,
    c_uint,
    c_uint,
    c_uint,
    c_uint,
    c_uint,
    *mut c_void,
    *mut *mut c_void,
    *mut *mut c_void,
) -> c_int;
type AllocFn = unsafe extern "C" fn(*mut u64, usize) -> c_int;
type FreeFn = unsafe extern "C" fn(u64) -> c_int;

const BATCH: usize = 100;

struct Entry {
    launch: LaunchFn,
    alloc: AllocFn,
    free: FreeFn,
}

fn open(path: &std::path::Path) -> *mut c_void {
    let c_path = std::ffi::CString::new(path.as_os_str().as_encoded_bytes()).expect("path");
    // SAFETY: a NUL-terminated path.
    let handle = unsafe { libc::dlopen(c_path.as_ptr(), libc::RTLD_NOW | libc::RTLD_LOCAL) };
    assert!(!handle.is_null(), "dlopen {} failed", path.display());
    handle
}

fn symbol<T: Copy>(handle: *mut c_void, name: &CStr) -> T {
    // SAFETY: a live handle and a NUL-terminated name.
    let address = unsafe { libc::dlsym(handle, name.as_ptr()) };
    assert!(!address.is_null(), "{name:?} missing");
    assert_eq!(size_of::<T>(), size_of::<*mut c_void>());
    // SAFETY: the caller names the symbol's C signature as T.
    unsafe { std::mem::transmute_copy(&address) }
}

fn entries(handle: *mut c_void) -> Entry {
    Entry {
        launch: symbol(handle, c"cuLaunchKernel"),
        alloc: symbol(handle, c"cuMemAlloc_v2"),
        free: symbol(handle, c"cuMemFree_v2"),
    }
}

/// Per-call nanoseconds of `BATCH` calls of `body`.
fn sample(mut body: impl FnMut()) -> f64 {
    let start = Instant::now();
    for _ in 0..BATCH {
        body();
    }
    start.elapsed().as_nanos() as f64 / BATCH as f64
}

fn percentile(values: &mut [f64], p: f64) -> f64 {
    values.sort_by(f64::total_cmp);
    values[((values.len() - 1) as f64 * p).round() as usize]
}

struct Row {
    what: String,
    direct: Vec<f64>,
    hooked: Vec<f64>,
}

impl Row {
    fn print(&mut self) {
        let (dm, d99) = (
            percentile(&mut self.direct, 0.5),
            percentile(&mut self.direct, 0.99),
        );
        let (hm, h99) = (
            percentile(&mut self.hooked, 0.5),
            percentile(&mut self.hooked, 0.99),
        );
        println!(
            "| {:<40} | {:>8.1} | {:>8.1} | {:>8.1} | {:>8.1} | {:>+9.1} | {:>+9.1} |",
            self.what,
            dm,
            d99,
            hm,
            h99,
            hm - dm,
            h99 - d99
        );
    }
}

fn main() {
    let batches: usize = std::env::args()
        .skip_while(|a| a != "--batches")
        .nth(1)
        .and_then(|n| n.parse().ok())
        .unwrap_or(3000);
    let artifacts = artifacts();
    let interposer = interposer_library().unwrap_or_else(|m| panic!("{m}"));
    let dir = tempfile::tempdir().expect("temp dir");
    let quota = dir.path().join("bench.quota");
    let channel = AgentChannel::create(&quota, &ChannelSpec::default(), 0o600).expect("channel");
    // The interposer reads these on its first call; the driver must not log or simulate durations.
    // SAFETY: single-threaded at this point; nothing else reads the environment concurrently.
    unsafe {
        std::env::set_var("DILU_REAL_LIBCUDA", artifacts.driver());
        std::env::set_var("DILU_QUOTA_FILE", &quota);
        std::env::set_var("DILU_FAKE_CUDA_NS_PER_WAVE", "0");
        std::env::remove_var("DILU_FAKE_CUDA_LOG");
        std::env::remove_var("DILU_FAKE_CUDA_STATE");
    }
    let driver = open(&artifacts.driver());
    let direct = entries(driver);
    let hooked = entries(open(&interposer));

    // A context and a kernel handle, made directly on the driver (the interposer shares its state).
    let init: unsafe extern "C" fn(c_uint) -> c_int = symbol(driver, c"cuInit");
    let device_get: unsafe extern "C" fn(*mut c_int, c_int) -> c_int =
        symbol(driver, c"cuDeviceGet");
    let ctx_create: unsafe extern "C" fn(*mut *mut c_void, c_uint, c_int) -> c_int =
        symbol(driver, c"cuCtxCreate_v2");
    let module_load: unsafe extern "C" fn(*mut *mut c_void, *const c_void) -> c_int =
        symbol(driver, c"cuModuleLoadData");
    let get_function: unsafe extern "C" fn(*mut *mut c_void, *mut c_void, *const i8) -> c_int =
        symbol(driver, c"cuModuleGetFunction");
    let (mut device, mut ctx, mut module, mut function) = (
        0,
        std::ptr::null_mut(),
        std::ptr::null_mut(),
        std::ptr::null_mut(),
    );
    // SAFETY: the software driver's documented setup sequence, each out-parameter owned here.
    unsafe {
        assert_eq!(init(0), 0);
        assert_eq!(device_get(&mut device, 0), 0);
        assert_eq!(ctx_create(&mut ctx, 0, device), 0);
        assert_eq!(module_load(&mut module, c"image".as_ptr().cast()), 0);
        assert_eq!(
            get_function(&mut function, module, c"bench_kernel".as_ptr()),
            0
        );
    }
    let launch = |entry: &Entry| {
        // SAFETY: a valid function handle in the current context; one small launch.
        let rc = unsafe {
            (entry.launch)(
                function,
                8,
                1,
                1,
                128,
                1,
                1,
                0,
                std::ptr::null_mut(),
                std::ptr::null_mut(),
                std::ptr::null_mut(),
            )
        };
        debug_assert_eq!(rc, 0);
    };
    let mut rows = Vec::new();
    for (label, budget) in [
        ("unlimited", UNLIMITED),
        ("finite, not binding", 1_000_000_000_000_000),
    ] {
        channel.set_budget(budget);
        let mut row = Row {
            what: format!("cuLaunchKernel, budget {label}"),
            direct: Vec::with_capacity(batches),
            hooked: Vec::with_capacity(batches),
        };
        for _ in 0..batches / 10 {
            launch(&hooked); // warm-up, includes the interposer's one-time initialisation
        }
        for _ in 0..batches {
            row.direct.push(sample(|| launch(&direct)));
            row.hooked.push(sample(|| launch(&hooked)));
        }
        rows.push(row);
    }
    for (label, cap) in [("unlimited", UNLIMITED), ("finite, not binding", 1 << 50)] {
        channel.set_mem_cap(cap);
        let mut alloc_row = Row {
            what: format!("cuMemAlloc_v2, cap {label}"),
            direct: Vec::new(),
            hooked: Vec::new(),
        };
        let mut free_row = Row {
            what: format!("cuMemFree_v2, cap {label}"),
            direct: Vec::new(),
            hooked: Vec::new(),
        };
        let mut pointers = vec![0u64; BATCH];
        for _ in 0..batches / 4 {
            for (entry, allocs, frees) in [
                (&direct, &mut alloc_row.direct, &mut free_row.direct),
                (&hooked, &mut alloc_row.hooked, &mut free_row.hooked),
            ] {
                let mut next = pointers.iter_mut();
                // SAFETY: each call writes one pointer we own; each is freed exactly once below.
                allocs.push(sample(|| unsafe {
                    let slot = next.next().expect("one slot per call");
                    let rc = (entry.alloc)(slot, 1 << 20);
                    debug_assert_eq!(rc, 0);
                }));
                let mut next = pointers.iter();
                // SAFETY: frees the pointers allocated just above.
                frees.push(sample(|| unsafe {
                    let pointer = next.next().expect("one pointer per call");
                    let rc = (entry.free)(*pointer);
                    debug_assert_eq!(rc, 0);
                }));
            }
        }
        rows.push(alloc_row);
        rows.push(free_row);
    }
    let snapshot = channel.snapshot();
    assert_eq!(
        snapshot.bytes_allocated, 0,
        "every allocation was freed through the ledger"
    );
    assert!(
        snapshot.launches > 0,
        "the interposed launches were charged"
    );
    println!(
        "interposer overhead, ns per call; each sample = mean of {BATCH} calls, {batches} samples per row"
    );
    println!("rerun: cargo bench -p dilu-cuda --bench overhead -- --batches {batches}");
    println!();
    println!(
        "| {:<40} | {:>8} | {:>8} | {:>8} | {:>8} | {:>9} | {:>9} |",
        "call", "direct", "p99", "hooked", "p99", "added", "added p99"
    );
    println!(
        "|{}|{}|{}|{}|{}|{}|{}|",
        "-".repeat(42),
        "-".repeat(10),
        "-".repeat(10),
        "-".repeat(10),
        "-".repeat(10),
        "-".repeat(11),
        "-".repeat(11)
    );
    for row in &mut rows {
        row.print();
    }
}
