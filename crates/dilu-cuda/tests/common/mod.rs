//! A rig for interposer tests: the software driver, the built interposer, and quota channels in a temp dir.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::Command;

use dilu_cuda_testkit::{AppRun, DriverLog, FakeCuda, Resolve, interposer_library, run_app};
use dilu_quota::{AgentChannel, ChannelSpec};

/// One wave of the default simulated device (132 SMs × 2048 threads): 264 blocks of 1,024 threads.
pub const WAVE_GRID: u32 = 264;
/// Threads per block of a one-wave launch.
pub const WAVE_BLOCK: u32 = 1024;
/// Cost units of one wave.
pub const WAVE_UNITS: u64 = dilu_quota::COST_UNITS_PER_WAVE;
/// UUID of the simulated device 0.
pub const DEVICE_UUID: &str = "GPU-0000d11a-0000-0000-0000-000000000000";

pub struct Rig {
    pub cuda: FakeCuda,
    pub interposer: PathBuf,
}

impl Rig {
    pub fn new() -> Rig {
        Rig::with(FakeCuda::new().expect("temp dir"))
    }

    pub fn with(cuda: FakeCuda) -> Rig {
        let interposer = interposer_library().unwrap_or_else(|message| panic!("{message}"));
        Rig { cuda, interposer }
    }

    /// Creates a channel file in the rig's directory.
    pub fn channel(&self, name: &str, spec: ChannelSpec) -> (PathBuf, AgentChannel) {
        let path = self.cuda.dir().join(name);
        let channel = AgentChannel::create(&path, &spec, 0o600).expect("create channel");
        (path, channel)
    }

    /// The test application under the interposer with `quota_file` (None: unset).
    pub fn app(&self, resolve: Resolve, quota_file: Option<&Path>) -> Command {
        let mut command = self.cuda.app(resolve);
        command.env("LD_PRELOAD", &self.interposer);
        match quota_file {
            Some(path) => command.env("DILU_QUOTA_FILE", path),
            None => command.env_remove("DILU_QUOTA_FILE"),
        };
        command.env_remove("DILU_CUDA_QUIET");
        // No wait for missing channels unless a test asks for it.
        command.env_remove("DILU_QUOTA_DIR");
        command.env_remove("DILU_QUOTA_WAIT_S");
        command.env_remove("DILU_POD_UID");
        command
    }

    pub fn run(&self, resolve: Resolve, quota_file: Option<&Path>, commands: &[&str]) -> AppRun {
        run_app(self.app(resolve, quota_file).args(commands)).unwrap_or_else(|e| panic!("{e}"))
    }

    pub fn log(&self) -> DriverLog {
        self.cuda.log().expect("driver log")
    }
}

/// A channel spec for the simulated device with the given budget, window and cap.
pub fn spec(budget: u64, window_ns: u64, mem_cap: u64) -> ChannelSpec {
    ChannelSpec {
        device_uuid: DEVICE_UUID.into(),
        budget_per_window: budget,
        window_ns,
        mem_cap_bytes: mem_cap,
        ..ChannelSpec::default()
    }
}

/// Launch functions as the driver logs them.
pub const LAUNCH_FUNCTIONS: [&str; 6] = [
    "cuLaunchKernel",
    "cuLaunchKernel_ptsz",
    "cuLaunchKernelEx",
    "cuLaunchKernelEx_ptsz",
    "cuLaunchCooperativeKernel",
    "cuLaunchCooperativeKernel_ptsz",
];

/// Kernel launches (not graph launches) that reached the driver from `pid`.
pub fn launches_of(log: &DriverLog, pid: u32) -> Vec<&dilu_cuda_testkit::DriverCall> {
    log.by_pid(pid)
        .filter(|c| LAUNCH_FUNCTIONS.contains(&c.function.as_str()))
        .collect()
}
