//! A software CUDA driver for tests.
//!
//! The build script compiles four artifacts with the system C compiler:
//!
//! - `libnvidia-ml.so.1`, a software NVML: device discovery and health events (Xid, a GPU falling off the
//!   bus) for the agent's tests, configured through [`NVML_ENV_DEVICES`] and [`NVML_ENV_CONTROL`];
//! - `libcuda.so.1`, a driver that implements a subset of the CUDA driver API against a simulated device
//!   (kernels occupy the device for a time computed from their shape; memory is counted against a total;
//!   several processes can share one device through a state file);
//! - `cuda_app_linked` and `cuda_app_dyn`, one C test application built two ways, which reaches the driver
//!   by linking, by `dlsym` or by `cuGetProcAddress` and runs commands given on its command line.
//!
//! This crate finds those artifacts, starts the application against a fresh simulated device
//! ([`FakeCuda`]) and parses what the application prints ([`parse_app_output`]) and what the driver logs
//! ([`DriverLog`]). The interposer's tests add `LD_PRELOAD` themselves (see [`interposer_library`]).
//!
//! # Driver configuration (environment)
//!
//! | variable | meaning | default |
//! |---|---|---|
//! | `DILU_FAKE_CUDA_DEVICES` | number of devices, 0..=8 | 1 |
//! | `DILU_FAKE_CUDA_UUID` | device 0's UUID, `GPU-xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx` | `GPU-0000d11a-0000-0000-0000-00000000000k` for device k |
//! | `DILU_FAKE_CUDA_SMS` | multiprocessors per device | 132 |
//! | `DILU_FAKE_CUDA_MEM_BYTES` | memory per device | 80 GiB |
//! | `DILU_FAKE_CUDA_NS_PER_WAVE` | nanoseconds a full wave (SMs × 2048 threads) takes; 0 = instant | 1000 |
//! | `DILU_FAKE_CUDA_STATE` | file holding the devices' busy-until time and bytes used, shared by processes | process-local |
//! | `DILU_FAKE_CUDA_LOG` | file every exported call appends one line to | no log |
//!
//! A kernel of `blocks` blocks of `threads_per_block` threads takes
//! `ceil(blocks × threads_per_block × ns_per_wave / (SMs × 2048))` nanoseconds (see [`kernel_duration_ns`]).
//!
//! # Driver log
//!
//! With `DILU_FAKE_CUDA_LOG` set, every exported function appends one line (one `write(2)` on an
//! `O_APPEND` descriptor, so processes can share the file):
//!
//! ```text
//! t=<CLOCK_MONOTONIC ns> pid=<pid> tid=<tid> fn=<exported symbol> [key=value ...] rc=<CUresult>
//! ```
//!
//! | calls | keys |
//! |---|---|
//! | `cuLaunchKernel`, `cuLaunchKernelEx`, `cuLaunchCooperativeKernel` (+ `_ptsz`) | `stream kernel grid=X,Y,Z block=X,Y,Z blocks threads start end` |
//! | `cuGraphLaunch` (+ `_ptsz`) | `stream exec kernels blocks threads start end` (sums over the kernels) |
//! | `cuMemAlloc_v2`, `cuMemAllocManaged`, `cuMemAllocAsync`, `cuMemAllocFromPoolAsync` (+ `_ptsz`) | `bytes ptr` |
//! | `cuMemAllocPitch_v2` | `bytes pitch ptr` (bytes = pitch × height) |
//! | `cuMemFree_v2`, `cuMemFreeAsync` (+ `_ptsz`) | `ptr bytes` (bytes freed; 0 on failure) |
//! | `cuMemCreate`, `cuMemRelease` | `handle bytes location` |
//! | `cuMemGetInfo_v2`, `cuDeviceTotalMem_v2` | `free total` |
//! | `cuGetProcAddress`, `cuGetProcAddress_v2` | `symbol version flags resolved` (`-` if not found) |
//! | `cuStreamSynchronize` (+ `_ptsz`) / `cuCtxSynchronize` | `stream until` / `until` (the tail waited for) |
//! | `cuGraphInstantiate*` | `exec kernels` |
//! | `cuStreamCreate`, `cuStreamDestroy_v2` | `stream` |
//! | `cuModuleGetFunction` | `name` |
//! | `cuDeviceGet` / `cuCtxCreate_v2`, `cuDevicePrimaryCtx*`, `cuDeviceGetDefaultMemPool` / `cuDeviceGetAttribute` / `cuGetError*` | `ordinal` / `device` / `attr` / `error` |
//!
//! Other calls log only `fn` and `rc`. Handles and pointers are `0x`-hexadecimal, everything else decimal.
//! A failed launch logs `start=0 end=0`.

#![deny(missing_docs)]

use std::collections::BTreeMap;
use std::ffi::{OsStr, OsString};
use std::io;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus};

use tempfile::TempDir;

/// Environment variables the software driver reads.
pub const DRIVER_ENV_VARS: [&str; 7] = [
    ENV_DEVICES,
    ENV_UUID,
    ENV_SMS,
    ENV_MEM_BYTES,
    ENV_NS_PER_WAVE,
    ENV_STATE,
    ENV_LOG,
];

/// Number of simulated devices (0..=8, default 1).
pub const ENV_DEVICES: &str = "DILU_FAKE_CUDA_DEVICES";
/// Device 0's UUID in the `GPU-xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx` form.
pub const ENV_UUID: &str = "DILU_FAKE_CUDA_UUID";
/// Streaming multiprocessors per device (default 132).
pub const ENV_SMS: &str = "DILU_FAKE_CUDA_SMS";
/// Memory per device in bytes (default 80 GiB).
pub const ENV_MEM_BYTES: &str = "DILU_FAKE_CUDA_MEM_BYTES";
/// Nanoseconds one full wave of threads takes (default 1000; 0 makes kernels instant).
pub const ENV_NS_PER_WAVE: &str = "DILU_FAKE_CUDA_NS_PER_WAVE";
/// Path of the state file that lets several processes share one simulated device.
pub const ENV_STATE: &str = "DILU_FAKE_CUDA_STATE";
/// Path of the call log (one line per exported call, appended by every process).
pub const ENV_LOG: &str = "DILU_FAKE_CUDA_LOG";

/// Default multiprocessor count of a simulated device.
pub const DEFAULT_SMS: u64 = 132;
/// Threads one multiprocessor runs at once.
pub const THREADS_PER_SM: u64 = 2048;
/// Default nanoseconds per full wave.
pub const DEFAULT_NS_PER_WAVE: u64 = 1000;
/// Default memory of a simulated device (80 GiB).
pub const DEFAULT_MEM_BYTES: u64 = 80 << 30;
/// Allocation granularity the driver reports for `cuMemCreate` (2 MiB).
pub const VMM_GRANULARITY: u64 = 2 << 20;
/// Row alignment of `cuMemAllocPitch_v2`.
pub const PITCH_ALIGN: u64 = 512;

/// How long the simulated device runs a kernel, as the driver computes it:
/// `ceil(blocks × threads_per_block × ns_per_wave / (sms × 2048))`.
pub fn kernel_duration_ns(blocks: u64, threads_per_block: u64, sms: u64, ns_per_wave: u64) -> u64 {
    let work = u128::from(blocks) * u128::from(threads_per_block) * u128::from(ns_per_wave);
    let wave = u128::from(sms) * u128::from(THREADS_PER_SM);
    u64::try_from(work.div_ceil(wave)).unwrap_or(u64::MAX)
}

/// Where the build script put the driver and the test application.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Artifacts {
    /// Directory holding `libcuda.so.1` (and the `libcuda.so` link); put it on `LD_LIBRARY_PATH`.
    pub driver_dir: PathBuf,
    /// The application linked against `libcuda.so.1` (supports every [`Resolve`] mode).
    pub app_linked: PathBuf,
    /// The application that only `dlopen`s the driver (supports every mode but [`Resolve::Linked`]).
    pub app_dyn: PathBuf,
}

impl Artifacts {
    /// The software driver itself (`libcuda.so.1`).
    pub fn driver(&self) -> PathBuf {
        self.driver_dir.join("libcuda.so.1")
    }

    /// The software NVML (`libnvidia-ml.so.1`, see [`NVML_ENV_DEVICES`]): load it through the agent's
    /// `DILU_NVML_LIBRARY`.
    pub fn nvml(&self) -> PathBuf {
        self.driver_dir.join("libnvidia-ml.so.1")
    }
}

/// The software NVML's devices: `uuid,name,memory MiB,SMs[,noevents]` per device, separated by `;`
/// (`noevents`: the device refuses registration for events, as GPUs without event support do).
pub const NVML_ENV_DEVICES: &str = "DILU_FAKE_NVML_DEVICES";
/// The `nvmlReturn_t` the software NVML's `nvmlInit_v2` returns (default 0, success).
pub const NVML_ENV_INIT: &str = "DILU_FAKE_NVML_INIT";
/// A file the test appends lines to while the software NVML runs: `xid <uuid> <n>` (a critical-Xid event),
/// `lost <uuid>` (the device fell off the bus: `NVML_ERROR_GPU_IS_LOST`), `back <uuid>`.
pub const NVML_ENV_CONTROL: &str = "DILU_FAKE_NVML_CONTROL";

/// Paths of the artifacts the build script produced.
pub fn artifacts() -> Artifacts {
    let dir = PathBuf::from(env!("DILU_TESTKIT_DIR"));
    Artifacts {
        app_linked: dir.join("cuda_app_linked"),
        app_dyn: dir.join("cuda_app_dyn"),
        driver_dir: dir,
    }
}

/// Finds the interposer `libdilu_cuda.so` next to the running test executable: in its directory (e.g.
/// `target/debug/deps`) or the parent (`target/debug`).
pub fn interposer_library() -> Result<PathBuf, String> {
    let exe =
        std::env::current_exe().map_err(|e| format!("cannot find the running executable: {e}"))?;
    let mut searched = Vec::new();
    let mut dir = exe.parent();
    for _ in 0..2 {
        let Some(d) = dir else { break };
        let candidate = d.join("libdilu_cuda.so");
        if candidate.is_file() {
            return Ok(candidate);
        }
        searched.push(d.display().to_string());
        dir = d.parent();
    }
    Err(format!(
        "libdilu_cuda.so not found in {}; build it with `cargo build -p dilu-cuda`",
        searched.join(" or ")
    ))
}

/// How the test application reaches the driver's functions.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Resolve {
    /// Calls the functions `cuda_app_linked` was linked against (`--resolve linked`).
    Linked,
    /// `dlopen("libcuda.so.1")` and `dlsym` of every exported name (`--resolve dlsym`).
    Dlsym,
    /// `dlsym("cuGetProcAddress_v2")` only, then base names through it (`--resolve procaddr`).
    ProcAddr,
    /// As [`Resolve::ProcAddr`] with the per-thread default stream flag (`--resolve procaddr --ptds`).
    ProcAddrPtds,
}

impl Resolve {
    /// Every mode, in a fixed order.
    pub const ALL: [Resolve; 4] = [
        Resolve::Linked,
        Resolve::Dlsym,
        Resolve::ProcAddr,
        Resolve::ProcAddrPtds,
    ];

    /// The application's global options for this mode.
    pub fn args(self) -> &'static [&'static str] {
        match self {
            Resolve::Linked => &["--resolve", "linked"],
            Resolve::Dlsym => &["--resolve", "dlsym"],
            Resolve::ProcAddr => &["--resolve", "procaddr"],
            Resolve::ProcAddrPtds => &["--resolve", "procaddr", "--ptds"],
        }
    }

    /// The application binary this mode runs.
    pub fn binary(self, artifacts: &Artifacts) -> &Path {
        match self {
            Resolve::Linked => &artifacts.app_linked,
            _ => &artifacts.app_dyn,
        }
    }

    /// A short name (`linked`, `dlsym`, `procaddr`, `procaddr-ptds`) for messages.
    pub fn name(self) -> &'static str {
        match self {
            Resolve::Linked => "linked",
            Resolve::Dlsym => "dlsym",
            Resolve::ProcAddr => "procaddr",
            Resolve::ProcAddrPtds => "procaddr-ptds",
        }
    }
}

/// One simulated device shared by every process started from it: a temporary directory holding the
/// driver's state file and call log, plus extra driver environment.
#[derive(Debug)]
pub struct FakeCuda {
    dir: TempDir,
    env: Vec<(OsString, OsString)>,
}

impl FakeCuda {
    /// A fresh device (no state file or log yet; the driver creates them).
    pub fn new() -> io::Result<Self> {
        Ok(FakeCuda {
            dir: tempfile::Builder::new()
                .prefix("dilu-fake-cuda-")
                .tempdir()?,
            env: Vec::new(),
        })
    }

    /// Adds an environment variable to every command from [`FakeCuda::app`] (e.g. [`ENV_SMS`]); later
    /// values win, and they override the state and log paths too (an empty log path disables the log).
    pub fn env(mut self, key: impl AsRef<OsStr>, value: impl AsRef<OsStr>) -> Self {
        self.env
            .push((key.as_ref().to_owned(), value.as_ref().to_owned()));
        self
    }

    /// The temporary directory (removed when this value is dropped).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// The shared state file (`DILU_FAKE_CUDA_STATE`).
    pub fn state_path(&self) -> PathBuf {
        self.dir.path().join("device.state")
    }

    /// The driver's call log (`DILU_FAKE_CUDA_LOG`).
    pub fn log_path(&self) -> PathBuf {
        self.dir.path().join("driver.log")
    }

    /// A command running the test application in `resolve` mode against this device: `LD_LIBRARY_PATH`
    /// starts with the driver directory, inherited `DILU_FAKE_CUDA_*` variables are removed, the state and
    /// log paths and the extra environment are set. Append further options (`--stream created`,
    /// `--device 1`) and then the commands with `arg`/`args`.
    pub fn app(&self, resolve: Resolve) -> Command {
        let artifacts = artifacts();
        let mut command = Command::new(resolve.binary(&artifacts));
        for var in DRIVER_ENV_VARS {
            command.env_remove(var);
        }
        let mut library_path = OsString::from(&artifacts.driver_dir);
        if let Some(existing) = std::env::var_os("LD_LIBRARY_PATH").filter(|v| !v.is_empty()) {
            library_path.push(":");
            library_path.push(existing);
        }
        command
            .env("LD_LIBRARY_PATH", library_path)
            .env(ENV_STATE, self.state_path())
            .env(ENV_LOG, self.log_path());
        for (key, value) in &self.env {
            command.env(key, value);
        }
        command.args(resolve.args());
        command
    }

    /// The driver's call log so far (empty if nothing was logged yet).
    pub fn log(&self) -> Result<DriverLog, LogError> {
        let path = self.log_path();
        match std::fs::read_to_string(&path) {
            Ok(text) => DriverLog::parse(&text),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(DriverLog::default()),
            Err(source) => Err(LogError::Read { path, source }),
        }
    }
}

/// Why the driver log could not be read.
#[derive(Debug, thiserror::Error)]
pub enum LogError {
    /// The log file could not be read.
    #[error("cannot read driver log {path}: {source}")]
    Read {
        /// The log file.
        path: PathBuf,
        /// The I/O error.
        source: io::Error,
    },
    /// A line is not `t=.. pid=.. tid=.. fn=.. [key=value ...] rc=..`.
    #[error("driver log line {line}: {reason}: {text:?}")]
    Parse {
        /// 1-based line number.
        line: usize,
        /// The line.
        text: String,
        /// What is wrong with it.
        reason: String,
    },
}

/// One logged driver call.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DriverCall {
    /// `CLOCK_MONOTONIC` nanoseconds when the call logged (after it finished its work).
    pub t_ns: u64,
    /// Process id of the caller.
    pub pid: u32,
    /// Thread id of the caller.
    pub tid: u32,
    /// The exported symbol that was called (e.g. `cuLaunchKernel_ptsz`).
    pub function: String,
    /// The call's other `key=value` fields.
    pub fields: BTreeMap<String, String>,
    /// The `CUresult` it returned.
    pub rc: i32,
}

impl DriverCall {
    /// A field's text.
    pub fn field(&self, key: &str) -> Option<&str> {
        self.fields.get(key).map(String::as_str)
    }

    /// A field as an unsigned integer (decimal, or hexadecimal with `0x`).
    pub fn field_u64(&self, key: &str) -> Option<u64> {
        self.field(key).and_then(parse_u64)
    }
}

fn parse_u64(text: &str) -> Option<u64> {
    match text.strip_prefix("0x") {
        Some(hex) => u64::from_str_radix(hex, 16).ok(),
        None => text.parse().ok(),
    }
}

/// The driver's call log, in file order.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DriverLog {
    /// Every call.
    pub calls: Vec<DriverCall>,
}

impl DriverLog {
    /// Parses log text; blank lines are skipped, any other malformed line is an error.
    pub fn parse(text: &str) -> Result<DriverLog, LogError> {
        let mut calls = Vec::new();
        for (index, line) in text.lines().enumerate() {
            if line.trim().is_empty() {
                continue;
            }
            calls.push(parse_call(line).map_err(|reason| LogError::Parse {
                line: index + 1,
                text: line.to_owned(),
                reason,
            })?);
        }
        Ok(DriverLog { calls })
    }

    /// Calls to `function` (an exported name such as `cuMemAlloc_v2`), in order.
    pub fn calls_to<'a>(&'a self, function: &'a str) -> impl Iterator<Item = &'a DriverCall> + 'a {
        self.calls.iter().filter(move |c| c.function == function)
    }

    /// How many calls to `function` were logged.
    pub fn count(&self, function: &str) -> usize {
        self.calls_to(function).count()
    }

    /// Calls made by process `pid`, in order.
    pub fn by_pid(&self, pid: u32) -> impl Iterator<Item = &DriverCall> + '_ {
        self.calls.iter().filter(move |c| c.pid == pid)
    }

    /// The distinct process ids in first-seen order.
    pub fn pids(&self) -> Vec<u32> {
        let mut pids = Vec::new();
        for call in &self.calls {
            if !pids.contains(&call.pid) {
                pids.push(call.pid);
            }
        }
        pids
    }
}

fn parse_call(line: &str) -> Result<DriverCall, String> {
    let mut tokens: Vec<(&str, &str)> = Vec::new();
    for token in line.split_whitespace() {
        let pair = token
            .split_once('=')
            .ok_or_else(|| format!("token {token:?} is not key=value"))?;
        tokens.push(pair);
    }
    let number = |key: &str, index: usize| -> Result<u64, String> {
        match tokens.get(index) {
            Some((k, v)) if *k == key => v
                .parse()
                .map_err(|_| format!("{key}={v} is not an unsigned integer")),
            _ => Err(format!("field {} must be {key}=", index + 1)),
        }
    };
    let t_ns = number("t", 0)?;
    let pid = u32::try_from(number("pid", 1)?).map_err(|_| "pid out of range".to_owned())?;
    let tid = u32::try_from(number("tid", 2)?).map_err(|_| "tid out of range".to_owned())?;
    let function = match tokens.get(3) {
        Some(("fn", name)) if !name.is_empty() => (*name).to_owned(),
        _ => return Err("field 4 must be fn=<name>".to_owned()),
    };
    let rc = match tokens.last() {
        Some(("rc", v)) if tokens.len() > 4 => v
            .parse::<i32>()
            .map_err(|_| format!("rc={v} is not an integer"))?,
        _ => return Err("the last field must be rc=<CUresult>".to_owned()),
    };
    let fields = tokens[4..tokens.len() - 1]
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect();
    Ok(DriverCall {
        t_ns,
        pid,
        tid,
        function,
        fields,
        rc,
    })
}

/// Parses the application's output: one map per non-blank line, from its whitespace-separated
/// `key=value` tokens (tokens without `=` are skipped).
pub fn parse_app_output(text: &str) -> Vec<BTreeMap<String, String>> {
    text.lines()
        .filter(|line| !line.trim().is_empty())
        .map(|line| {
            line.split_whitespace()
                .filter_map(|token| token.split_once('='))
                .map(|(k, v)| (k.to_owned(), v.to_owned()))
                .collect()
        })
        .collect()
}

/// A finished run of the test application.
#[derive(Clone, Debug)]
pub struct AppRun {
    /// The process id it ran as (matches `pid=` in the driver log).
    pub pid: u32,
    /// Its exit status.
    pub status: ExitStatus,
    /// Standard output.
    pub stdout: String,
    /// Standard error.
    pub stderr: String,
    /// Standard output parsed with [`parse_app_output`].
    pub lines: Vec<BTreeMap<String, String>>,
}

impl AppRun {
    /// The output lines of commands `op` (e.g. `"alloc"`), in order.
    pub fn ops<'a>(
        &'a self,
        op: &'a str,
    ) -> impl Iterator<Item = &'a BTreeMap<String, String>> + 'a {
        self.lines
            .iter()
            .filter(move |l| l.get("op").map(String::as_str) == Some(op))
    }
}

/// Why running the application failed.
#[derive(Debug, thiserror::Error)]
pub enum AppError {
    /// The process could not be started.
    #[error("cannot start {program}: {source}")]
    Spawn {
        /// The program.
        program: String,
        /// The I/O error.
        source: io::Error,
    },
    /// The process exited unsuccessfully (setup failure, bad command, crash).
    #[error("{program} exited with {status}\nstdout:\n{stdout}\nstderr:\n{stderr}")]
    Failed {
        /// The program.
        program: String,
        /// Its exit status.
        status: ExitStatus,
        /// Its standard output.
        stdout: String,
        /// Its standard error.
        stderr: String,
    },
}

/// Runs `command` to completion, capturing its output; a non-zero exit is an error that carries the output.
pub fn run_app(command: &mut Command) -> Result<AppRun, AppError> {
    let child = command
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn();
    let program = command.get_program().to_string_lossy().into_owned();
    let child = child.map_err(|source| AppError::Spawn {
        program: program.clone(),
        source,
    })?;
    let pid = child.id();
    let output = child.wait_with_output().map_err(|source| AppError::Spawn {
        program: program.clone(),
        source,
    })?;
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    if !output.status.success() {
        return Err(AppError::Failed {
            program,
            status: output.status,
            stdout,
            stderr,
        });
    }
    Ok(AppRun {
        pid,
        status: output.status,
        lines: parse_app_output(&stdout),
        stdout,
        stderr,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_a_launch_line() {
        let log = DriverLog::parse(
            "t=10 pid=7 tid=8 fn=cuLaunchKernel stream=0x0 kernel=k grid=1,1,1 block=32,1,1 blocks=1 \
             threads=32 start=10 end=11 rc=0\n\nt=12 pid=7 tid=8 fn=cuInit rc=3\n",
        )
        .expect("valid log");
        assert_eq!(log.calls.len(), 2);
        let launch = &log.calls[0];
        assert_eq!(launch.t_ns, 10);
        assert_eq!((launch.pid, launch.tid), (7, 8));
        assert_eq!(launch.function, "cuLaunchKernel");
        assert_eq!(launch.field("grid"), Some("1,1,1"));
        assert_eq!(launch.field_u64("threads"), Some(32));
        assert_eq!(launch.field_u64("stream"), Some(0));
        assert_eq!(launch.rc, 0);
        assert!(log.calls[1].fields.is_empty());
        assert_eq!(log.calls[1].rc, 3);
        assert_eq!(log.count("cuInit"), 1);
        assert_eq!(log.pids(), vec![7]);
    }

    #[test]
    fn hex_fields_parse() {
        let log = DriverLog::parse("t=1 pid=1 tid=1 fn=cuMemFree_v2 ptr=0x7f00 bytes=512 rc=0")
            .expect("valid log");
        assert_eq!(log.calls[0].field_u64("ptr"), Some(0x7f00));
        assert_eq!(log.calls[0].field_u64("missing"), None);
    }

    #[test]
    fn malformed_lines_name_the_line_and_rule() {
        for (text, needle) in [
            ("t=1 pid=1 tid=1 fn=cuInit", "rc="),
            ("t=x pid=1 tid=1 fn=cuInit rc=0", "t=x"),
            ("t=1 pid=1 fn=cuInit rc=0", "tid="),
            ("t=1 pid=1 tid=1 fn=cuInit junk rc=0", "junk"),
            ("t=1 pid=1 tid=1 fn=cuInit rc=?", "rc=?"),
        ] {
            let err = DriverLog::parse(&format!("\n{text}\n")).expect_err(text);
            let message = err.to_string();
            assert!(message.contains("line 2"), "{message}");
            assert!(message.contains(needle), "{message}");
        }
    }

    #[test]
    fn app_output_is_key_value_lines() {
        let lines =
            parse_app_output("op=alloc kind=v2 bytes=10 id=0 rc=0\nnoise\n\nop=sync rc=0\n");
        assert_eq!(lines.len(), 3);
        assert_eq!(lines[0]["kind"], "v2");
        assert!(lines[1].is_empty());
        assert_eq!(lines[2]["op"], "sync");
    }

    #[test]
    fn duration_formula() {
        // One full wave: 132 SMs × 2048 threads.
        assert_eq!(kernel_duration_ns(264, 1024, 132, 1000), 1000);
        assert_eq!(kernel_duration_ns(1000, 256, 132, 1000), 947);
        assert_eq!(kernel_duration_ns(1, 1, 132, 1000), 1);
        assert_eq!(kernel_duration_ns(1, 1, 132, 0), 0);
    }

    #[test]
    fn artifacts_exist() {
        let a = artifacts();
        assert!(a.driver().is_file(), "{}", a.driver().display());
        assert!(a.app_linked.is_file());
        assert!(a.app_dyn.is_file());
    }
}
