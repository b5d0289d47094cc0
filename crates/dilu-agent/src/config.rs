//! The agent's configuration (from `dilu agent` flags).

use std::path::PathBuf;
use std::time::Duration;

use dilu_core::policy::{Policy, PolicyName};

use crate::health::HealthConfig;

/// A GPU declared on the command line rather than found through NVML: for nodes where NVML is not
/// available to the agent, and for tests against the software CUDA driver.
#[derive(Debug, Clone, PartialEq)]
pub struct DeclaredGpu {
    /// Device UUID (`GPU-…`).
    pub uuid: String,
    /// Cost units the device executes per window (its capacity for budgets); `None` = learn it.
    pub capacity_per_window: Option<u64>,
    /// Device memory in bytes, if known.
    pub memory_bytes: u64,
}

/// Whether the agent meters processes on CPU devices with CPU cgroups (`crate::cgroup`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum CgroupMode {
    /// When this machine lets the agent create them; otherwise such processes run unthrottled, and the agent's
    /// notes say why.
    #[default]
    Auto,
    /// Never: such processes run unthrottled.
    Off,
    /// Always: the agent does not start without them.
    Require,
}

impl std::str::FromStr for CgroupMode {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        match text {
            "auto" => Ok(CgroupMode::Auto),
            "off" => Ok(CgroupMode::Off),
            "require" => Ok(CgroupMode::Require),
            other => Err(format!("{other:?}: must be auto, off or require")),
        }
    }
}

/// Everything the agent needs to run.
#[derive(Debug, Clone)]
pub struct AgentConfig {
    /// Where the state file, quota channels (`run/`) and instance logs (`logs/`) live.
    pub data_dir: PathBuf,
    /// Token manager window (default 5 ms).
    pub window_ns: u64,
    /// Cores offered as CPU devices; `None` = every core of the machine; `Some(0.0)` = no CPU device.
    pub cpu_cores: Option<f64>,
    /// How many CPU devices those cores are split into (each gets `cpu_cores / cpu_devices`): a machine without
    /// a GPU then looks like a node with that many devices, which policies that give instances whole devices
    /// (`exclusive`, `tgs`) need.
    pub cpu_devices: u32,
    /// Whether to look for NVIDIA GPUs through NVML.
    pub discover_gpus: bool,
    /// GPUs declared by hand.
    pub declared_gpus: Vec<DeclaredGpu>,
    /// Capacity per window assumed for discovered GPUs; `None` = learn it from observed usage.
    pub gpu_capacity_per_window: Option<u64>,
    /// `libdilu_cuda.so`, preloaded into instances on GPU devices.
    pub interposer: Option<PathBuf>,
    /// Most bytes kept per instance log (the previous part is kept as `.1`).
    pub log_max_bytes: u64,
    /// How long a stopped instance gets between SIGTERM and SIGKILL.
    pub stop_grace: Duration,
    /// The policy whose vertical controller divides each device (and its constants).
    pub policy: Policy,
    /// Variables of the agent's environment instances inherit beyond the built-in allow-list
    /// (`supervisor::INHERITED_ENV`), e.g. `SSL_CERT_FILE` or `HTTPS_PROXY`; never the rest.
    pub pass_env: Vec<String>,
    /// How the health of NVML-discovered GPUs is watched.
    pub health: HealthConfig,
    /// Whether processes on CPU devices are held to their budgets by CPU cgroups.
    pub cpu_cgroup: CgroupMode,
}

impl AgentConfig {
    /// Defaults for a data directory.
    pub fn new(data_dir: PathBuf) -> Self {
        Self {
            data_dir,
            window_ns: 5_000_000,
            cpu_cores: None,
            cpu_devices: 1,
            discover_gpus: true,
            declared_gpus: Vec::new(),
            gpu_capacity_per_window: None,
            interposer: None,
            log_max_bytes: 8 << 20,
            stop_grace: Duration::from_secs(5),
            policy: Policy::named(PolicyName::Dilu),
            pass_env: Vec::new(),
            health: HealthConfig::default(),
            cpu_cgroup: CgroupMode::Auto,
        }
    }

    /// The agent's state file.
    pub fn state_path(&self) -> PathBuf {
        self.data_dir.join("agent-state.json")
    }

    /// Directory of quota channels.
    pub fn run_dir(&self) -> PathBuf {
        self.data_dir.join("run")
    }

    /// Directory of instance logs.
    pub fn log_dir(&self) -> PathBuf {
        self.data_dir.join("logs")
    }
}
