//! `dilu agent`: the node agent — devices, the token manager, instance supervision and the local API.

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use clap::Args;
use dilu_agent::api::{self, Listen};
use dilu_agent::config::{CgroupMode, DeclaredGpu};
use dilu_agent::health::HealthConfig;
use dilu_agent::{Agent, AgentConfig};
use dilu_core::policy::{Policy, PolicyName};
use dilu_core::units::parse_bytes;

use super::worker::termination;

/// Arguments of `dilu agent`.
#[derive(Debug, Args)]
pub struct AgentArgs {
    /// Directory for the state file, quota channels and instance logs.
    #[arg(long, default_value = "dilu-data/agent")]
    pub(super) data_dir: PathBuf,
    /// Address of the local API (loopback by default; port 0 picks a free port, printed at start).
    #[arg(long, default_value = "127.0.0.1:7071", conflicts_with = "unix_socket")]
    pub(super) listen: std::net::SocketAddr,
    /// Serve the API on this Unix socket instead of TCP.
    #[arg(long)]
    pub(super) unix_socket: Option<PathBuf>,
    #[command(flatten)]
    pub(super) node: NodeArgs,
    /// Run as the Kubernetes node agent (a DaemonSet): publish the node's devices and Lease, budget the quota
    /// channel of every Dilu pod bound to the node, and offer the devices to the kubelet as shares (device
    /// plugin). Needs --node-name (or NODE_NAME), and --interposer when the node has GPUs.
    #[arg(long)]
    pub(super) kubernetes: bool,
    #[command(flatten)]
    pub(super) kube: super::agent_kube::KubeNodeArgs,
}

/// The node's devices and budgeting: shared by `dilu agent` and `dilu up` (which runs an agent inside).
#[derive(Debug, Args)]
pub struct NodeArgs {
    /// Token manager window in milliseconds.
    #[arg(long, default_value_t = 5.0)]
    window_ms: f64,
    /// Cores offered as CPU devices (default: all of them; 0 = no CPU device).
    #[arg(long)]
    cpu_cores: Option<f64>,
    /// Split those cores into this many CPU devices, each with an equal share: a machine without a GPU then
    /// looks like a node with that many devices (what `--policy exclusive` or `tgs` need to run several
    /// functions).
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=64))]
    cpu_devices: u32,
    /// The policy: which vertical controller divides each device (and, in `dilu up`, which placer and
    /// horizontal scaler the control plane runs): dilu, exclusive, infless, fast-gshare, tgs, has, dilu-slo.
    #[arg(long, default_value = "dilu")]
    policy: String,
    /// Do not look for GPUs through NVML.
    #[arg(long)]
    no_nvml: bool,
    /// Do not watch the health of NVML-discovered GPUs (critical Xid events, falling off the bus).
    #[arg(long)]
    no_gpu_health: bool,
    /// Xids that do not make a GPU unhealthy: they report the application's fault, not the GPU's
    /// (comma-separated; the default is NVIDIA's device plugin's list).
    #[arg(long, value_name = "XIDS", default_value = "13,31,43,45,68,109", value_parser = parse_xids)]
    gpu_health_ignore_xids: BTreeSet<u64>,
    /// Seconds between checks that each GPU still answers NVML.
    #[arg(long, default_value_t = 5.0, value_parser = parse_check_s)]
    gpu_health_check_s: f64,
    /// Declare a GPU by hand: UUID[,capacity=UNITS][,memory=SIZE] (capacity in cost units per window;
    /// without it the capacity is learned). Repeatable.
    #[arg(long = "gpu", value_parser = parse_gpu)]
    gpus: Vec<DeclaredGpu>,
    /// Capacity per window assumed for NVML-discovered GPUs (default: learned from usage).
    #[arg(long)]
    gpu_capacity: Option<u64>,
    /// libdilu_cuda.so to preload into GPU instances.
    #[arg(long)]
    interposer: Option<PathBuf>,
    /// Most bytes kept per instance log.
    #[arg(long, default_value = "8MiB", value_parser = |s: &str| parse_bytes(s).map_err(|e| e.to_string()))]
    log_max: u64,
    /// Seconds a stopped instance gets between SIGTERM and SIGKILL.
    #[arg(long, default_value_t = 5.0)]
    stop_grace_s: f64,
    /// A variable of this process's environment that instances inherit too (repeatable). By default they get
    /// only PATH, HOME, the locale, TZ, TMPDIR and diagnostics switches (docs/security.md), never the rest.
    #[arg(long = "pass-env", value_name = "NAME", value_parser = parse_env_name)]
    pass_env: Vec<String>,
    /// Hold processes on CPU devices (`process` functions, which do not charge their own CPU time) to their
    /// budgets with CPU cgroups: `auto` when this machine allows it (root, cgroup v1's cpu and cpuacct or v2's
    /// cpu controller), `off`, or `require` (refuse to start without them).
    #[arg(long, value_name = "MODE", default_value = "auto")]
    cpu_cgroup: CgroupMode,
}

fn parse_xids(text: &str) -> Result<BTreeSet<u64>, String> {
    text.split(',')
        .map(str::trim)
        .filter(|x| !x.is_empty())
        .map(|x| {
            x.parse::<u64>()
                .map_err(|_| format!("{x:?}: an Xid is a whole number (e.g. 13,31,43)"))
        })
        .collect()
}

fn parse_check_s(text: &str) -> Result<f64, String> {
    match text.parse::<f64>() {
        Ok(s) if (0.1..=3600.0).contains(&s) => Ok(s),
        _ => Err(format!("{text:?}: seconds between 0.1 and 3600")),
    }
}

fn parse_env_name(name: &str) -> Result<String, String> {
    let valid = !name.is_empty()
        && !name.starts_with(|c: char| c.is_ascii_digit())
        && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
    if valid {
        Ok(name.to_string())
    } else {
        Err(format!(
            "{name:?}: a variable name is letters, digits and _, not starting with a digit"
        ))
    }
}

impl NodeArgs {
    /// The agent configuration these flags describe, for an agent keeping its files in `data_dir`.
    pub fn agent_config(&self, data_dir: PathBuf) -> Result<AgentConfig> {
        if !(self.window_ms >= 0.1 && self.window_ms <= 1000.0) {
            bail!(
                "--window-ms = {}: must be between 0.1 and 1000",
                self.window_ms
            );
        }
        let mut config = AgentConfig::new(data_dir);
        config.window_ns = (self.window_ms * 1e6).round() as u64;
        config.cpu_cores = self.cpu_cores;
        config.cpu_devices = self.cpu_devices;
        config.policy = self.policy()?;
        config.discover_gpus = !self.no_nvml;
        config.declared_gpus = self.gpus.clone();
        config.gpu_capacity_per_window = self.gpu_capacity;
        config.interposer = self
            .interposer
            .clone()
            .map(|p| std::fs::canonicalize(&p).unwrap_or(p));
        config.log_max_bytes = self.log_max;
        config.stop_grace = Duration::from_secs_f64(self.stop_grace_s.max(0.0));
        config.pass_env = self.pass_env.clone();
        config.cpu_cgroup = self.cpu_cgroup;
        config.health = HealthConfig {
            enabled: !self.no_gpu_health,
            ignored_xids: self.gpu_health_ignore_xids.clone(),
            check_every: Duration::from_secs_f64(self.gpu_health_check_s),
        };
        Ok(config)
    }
}

impl NodeArgs {
    /// The policy `--policy` names.
    pub fn policy(&self) -> Result<Policy> {
        let name: PolicyName = self
            .policy
            .parse()
            .map_err(|e| anyhow::anyhow!("--policy = {:?}: {e}", self.policy))?;
        Ok(Policy::named(name))
    }
}

/// Starts an agent and reports its devices and discovery notes on stderr, prefixed with `who`.
pub fn start_agent(config: AgentConfig, who: &str) -> Result<std::sync::Arc<Agent>> {
    let data_dir = config.data_dir.clone();
    let agent = Agent::start(config)
        .with_context(|| format!("starting the agent in {}", data_dir.display()))?;
    for note in agent.notes() {
        eprintln!("{who}: {note}");
    }
    for device in agent.devices() {
        eprintln!(
            "{who}: device {} ({}, {})",
            device.uuid,
            device.name,
            device.kind.name()
        );
    }
    Ok(agent)
}

fn parse_gpu(text: &str) -> Result<DeclaredGpu, String> {
    let mut parts = text.split(',');
    let uuid = parts.next().unwrap_or_default().trim().to_string();
    if uuid.is_empty() {
        return Err(format!(
            "{text:?}: expected UUID[,capacity=UNITS][,memory=SIZE]"
        ));
    }
    let mut gpu = DeclaredGpu {
        uuid,
        capacity_per_window: None,
        memory_bytes: 0,
    };
    for part in parts {
        match part.split_once('=') {
            Some(("capacity", v)) => {
                gpu.capacity_per_window = Some(v.parse().map_err(|_| {
                    format!("capacity = {v:?}: expected a whole number of cost units")
                })?);
            }
            Some(("memory", v)) => {
                gpu.memory_bytes = parse_bytes(v).map_err(|e| format!("memory: {e}"))?
            }
            _ => return Err(format!("{part:?}: expected capacity=UNITS or memory=SIZE")),
        }
    }
    Ok(gpu)
}

/// Runs the agent until SIGTERM or SIGINT; instances keep running for the next agent to adopt.
pub fn run(args: AgentArgs) -> Result<()> {
    if args.kubernetes {
        return super::agent_kube::run(args);
    }
    let data_dir = super::datadir::claim(&args.data_dir, "--data-dir")?;
    let token_path = data_dir.path.join("token");
    let token = dilu_http::token::load_or_create(&token_path)
        .context("the agent API token (every endpoint but /health needs it)")?;
    let config = args.node.agent_config(data_dir.path.clone())?;
    let agent = start_agent(config, "dilu agent")?;
    let listen = match args.unix_socket {
        Some(path) => Listen::Unix(path),
        None => Listen::Tcp(args.listen),
    };
    eprintln!("dilu agent: API token in {}", token_path.display());
    let token = dilu_http::guard::Token::new(token, token_path.display().to_string());
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    let served = runtime.block_on(async {
        let stop = termination()?;
        api::serve(
            agent.clone(),
            listen,
            token,
            |address| {
                println!("dilu agent listening on {address}");
            },
            stop,
        )
        .await
        .context("serving the agent API")
    });
    agent.shutdown();
    drop(data_dir);
    served
}
