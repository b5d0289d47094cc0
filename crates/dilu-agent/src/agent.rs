//! The agent: devices, the instances it runs, their quota channels and the token manager, tied together and
//! persisted so that a restarted agent re-adopts running instances instead of orphaning or killing them.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use dilu_api::QuotaUpdate;
use dilu_api::agent::{
    Budgeting, Counters, CpuEnforcement, Device, DeviceBudget, Enforcement, InstancePhase,
    InstanceSpec, InstanceStatus, RestartPolicy,
};
use dilu_core::FieldError;
use dilu_core::sync::lock;
use dilu_quota::{AgentChannel, ChannelSpec, DeviceKind, Snapshot, mode, monotonic_ns};
use serde::{Deserialize, Serialize};

use crate::attached::Attached;
use crate::cgroup::{self, CpuCgroups, CpuGroup, Hierarchy};
use crate::config::{AgentConfig, CgroupMode};
use crate::device;
use crate::health::{self, HealthBoard, HealthChange};
use crate::nvml;
use crate::state;
use crate::supervisor::{self, Backoff, Exit, LaunchSpec, Process};
use crate::ticker::{self, TickStats};
use crate::tokens::{TokenError, TokenManager};

/// Σ requests may exceed the device by this much (rounding) without counting as over-commit.
pub(crate) const OVERCOMMIT_SLACK: f64 = 1e-9;
/// How often the supervisor looks at processes.
const SUPERVISE_EVERY: Duration = Duration::from_millis(50);
/// State file layout version.
const STATE_VERSION: u32 = 1;

/// Why an agent operation failed; the API maps each variant to an HTTP status.
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    /// The request is invalid (400).
    #[error(transparent)]
    Invalid(#[from] FieldError),
    /// No such instance (404).
    #[error("no instance {0}")]
    NotFound(String),
    /// Σ requests would exceed the device (409) unless the caller opts into over-commit.
    #[error(
        "quota.request = {request}: the requests on {device} would total {total:.3} of the device (over 1.0); \
         lower it, free capacity, or opt into over-commit"
    )]
    OverCommit {
        /// The device.
        device: String,
        /// The request asked for.
        request: f64,
        /// Σ requests with it.
        total: f64,
    },
    /// A name already in use (409).
    #[error("name = {0}: an instance with this name exists")]
    Conflict(String),
    /// Starting the process or writing files failed (500).
    #[error("{context}: {reason}")]
    Internal {
        /// What was being done.
        context: String,
        /// Why it failed.
        reason: String,
    },
}

fn internal(context: impl Into<String>) -> impl FnOnce(String) -> AgentError {
    let context = context.into();
    move |reason| AgentError::Internal { context, reason }
}

/// What the agent persists of an instance.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct InstanceRecord {
    /// Instance id.
    pub id: String,
    /// How it was requested (the quota is kept current).
    pub spec: InstanceSpec,
    /// Its quota channel.
    pub channel: PathBuf,
    /// Its log file.
    pub log: PathBuf,
    /// Process id of the running process.
    pub pid: Option<u32>,
    /// Start time of that process in clock ticks since boot (guards against pid reuse).
    pub start_ticks: Option<u64>,
    /// Life-cycle state.
    pub status: InstancePhase,
    /// Restarts so far.
    pub restarts: u32,
    /// How the last process ended.
    pub last_exit: Option<String>,
}

/// The counters of a channel snapshot, as reports show them.
pub(crate) fn counters(s: &Snapshot) -> Counters {
    Counters {
        cost: s.cost_launched,
        launches: s.launches,
        launches_delayed: s.launches_delayed,
        delay_seconds: s.delay_ns as f64 / 1e9,
        memory_bytes: s.bytes_allocated,
        memory_peak_bytes: s.bytes_peak,
        alloc_failures: s.alloc_failures,
    }
}

#[derive(Debug, Serialize, Deserialize)]
struct StateFile {
    version: u32,
    next_id: u64,
    instances: Vec<InstanceRecord>,
}

struct Entry {
    record: InstanceRecord,
    process: Option<Process>,
    backoff: Backoff,
    started: Instant,
    restart_at: Option<Instant>,
    /// Why the last readiness probe of this start failed (cleared when it is ready or restarts).
    not_ready: Option<String>,
    /// The CPU cgroup its processes start in, when the agent meters it with one.
    cgroup: Option<CpuGroup>,
}

struct Instances {
    map: BTreeMap<String, Entry>,
    next_id: u64,
}

/// The node agent.
pub struct Agent {
    config: AgentConfig,
    devices: Vec<Device>,
    notes: Vec<String>,
    /// The CPU cgroups that hold processes on CPU devices to their budgets; none when off or unavailable.
    cgroups: Option<CpuCgroups>,
    health: Arc<HealthBoard>,
    pub(crate) tokens: Arc<Mutex<TokenManager>>,
    instances: Mutex<Instances>,
    /// Channels of processes the agent does not start (`attached`); locked before `tokens`, never together
    /// with `instances`.
    pub(crate) attached: Mutex<BTreeMap<String, Attached>>,
    tick_stats: Arc<TickStats>,
    stop: Arc<AtomicBool>,
    threads: Mutex<Vec<JoinHandle<()>>>,
    started: Instant,
}

impl Agent {
    /// Discovers devices, re-adopts the instances of an earlier run, and starts the token and supervision
    /// threads.
    pub fn start(config: AgentConfig) -> Result<Arc<Agent>, AgentError> {
        for dir in [config.data_dir.clone(), config.run_dir(), config.log_dir()] {
            std::fs::create_dir_all(&dir)
                .map_err(|e| internal(format!("creating {}", dir.display()))(e.to_string()))?;
        }
        restrict(&config.run_dir());
        let (devices, mut notes) = device::discover(&config);
        let cgroups = open_cgroups(&config, &devices, &mut notes)?;
        let stop = Arc::new(AtomicBool::new(false));
        let health = Arc::new(HealthBoard::default());
        let mut threads = Vec::new();
        let watched: Vec<String> = devices
            .iter()
            .filter(|d| d.source == "nvml")
            .map(|d| d.uuid.clone())
            .collect();
        if config.health.enabled && !watched.is_empty() {
            let board = health.clone();
            let on_change = move |change: HealthChange| {
                match change.health.reason() {
                    Some(reason) => {
                        eprintln!("dilu agent: device {} is unhealthy: {reason}", change.uuid)
                    }
                    None => eprintln!("dilu agent: device {} is healthy again", change.uuid),
                }
                board.set(change);
            };
            let library = nvml::library_path();
            match health::watch_nvml(&library, watched, &config.health, stop.clone(), on_change) {
                Ok((thread, more)) => {
                    notes.extend(more.into_iter().map(|n| format!("GPU health: {n}")));
                    threads.push(thread);
                }
                Err(error) => notes.push(format!("GPU health is not watched: {error}")),
            }
        }
        let tokens =
            TokenManager::new(&devices, config.window_ns, &config.policy).map_err(|e| {
                AgentError::Internal {
                    context: "token manager".into(),
                    reason: e.to_string(),
                }
            })?;
        let saved: Option<StateFile> = state::load(&config.state_path())
            .map_err(|e| internal("reading the agent state")(e.to_string()))?;
        let agent = Arc::new(Agent {
            config,
            devices,
            notes,
            cgroups,
            health,
            tokens: Arc::new(Mutex::new(tokens)),
            instances: Mutex::new(Instances {
                map: BTreeMap::new(),
                next_id: saved.as_ref().map_or(1, |s| s.next_id),
            }),
            attached: Mutex::new(BTreeMap::new()),
            tick_stats: Arc::new(TickStats::default()),
            stop,
            threads: Mutex::new(threads),
            started: Instant::now(),
        });
        if let Some(saved) = saved {
            agent.readopt(saved.instances);
        }
        agent.remove_stray_logs();
        let ticker = ticker::spawn(
            agent.tokens.clone(),
            agent.tick_stats.clone(),
            agent.config.window_ns,
            agent.stop.clone(),
        )
        .map_err(|e| internal("starting the token thread")(e.to_string()))?;
        let weak = Arc::downgrade(&agent);
        let stop = agent.stop.clone();
        let supervisor = std::thread::Builder::new()
            .name("dilu-supervisor".into())
            .spawn(move || {
                let mut round = 0u64;
                while !stop.load(Relaxed) {
                    std::thread::sleep(SUPERVISE_EVERY);
                    let Some(agent) = weak.upgrade() else { break };
                    agent.supervise(round);
                    round += 1;
                }
            })
            .map_err(|e| internal("starting the supervisor thread")(e.to_string()))?;
        lock(&agent.threads).extend([ticker, supervisor]);
        agent.persist();
        Ok(agent)
    }

    /// Re-adopts instances recorded by an earlier run: running processes keep running under their existing
    /// channels (which kept their last budgets while no agent ran); dead ones follow their restart policy.
    fn readopt(&self, records: Vec<InstanceRecord>) {
        let mut instances = lock(&self.instances);
        let mut tokens = lock(&self.tokens);
        for mut record in records {
            let channel = match AgentChannel::open(&record.channel) {
                Ok(channel) => channel,
                Err(error) => {
                    eprintln!(
                        "dilu agent: instance {}: channel unusable ({error}); recreating it",
                        record.id
                    );
                    match self.new_channel(&tokens, &record.spec, &record.channel) {
                        Ok(channel) => channel,
                        Err(error) => {
                            eprintln!("dilu agent: instance {}: {error}; dropping it", record.id);
                            continue;
                        }
                    }
                }
            };
            let process = match (record.pid, record.start_ticks) {
                (Some(pid), Some(ticks)) => supervisor::adopt(pid, ticks),
                _ => None,
            };
            let restart_at = if process.is_none() && record.status != InstancePhase::Exited {
                record.last_exit = Some(format!("{}, ended while no agent ran", Exit::Unknown));
                record.pid = None;
                record.start_ticks = None;
                if restarts(record.spec.restart, &Exit::Unknown) {
                    record.status = InstancePhase::Restarting;
                    Some(Instant::now())
                } else {
                    record.status = InstancePhase::Exited;
                    None
                }
            } else {
                None
            };
            if let Err(error) = tokens.add(
                &record.spec.device,
                &record.id,
                record.spec.kind,
                record.spec.quota,
                channel,
            ) {
                eprintln!("dilu agent: instance {}: {error}; not budgeted", record.id);
            }
            // Its process is in its group already (it joined before it ran); the group is found again.
            let cgroup = match self.cgroup_for(&record.id, &record.spec) {
                Ok(group) => group,
                Err(error) => {
                    eprintln!("dilu agent: instance {}: {error}; not metered", record.id);
                    None
                }
            };
            if let Some(group) = &cgroup
                && let Err(error) = tokens.meter(&record.id, group.clone())
            {
                eprintln!("dilu agent: instance {}: {error}; not metered", record.id);
            }
            instances.map.insert(
                record.id.clone(),
                Entry {
                    record,
                    process,
                    backoff: Backoff::default(),
                    started: Instant::now(),
                    restart_at,
                    not_ready: None,
                    cgroup,
                },
            );
        }
        if let Some(cgroups) = &self.cgroups {
            let known: Vec<&str> = instances.map.keys().map(String::as_str).collect();
            cgroups.sweep(&known);
        }
    }

    /// Removes the logs in the log directory that belong to no instance this agent knows: left by instances
    /// deleted before logs were removed with them, or dropped at re-adoption. Only `*.log` and `*.log.1`
    /// files are touched.
    fn remove_stray_logs(&self) {
        let known: Vec<PathBuf> = lock(&self.instances)
            .map
            .values()
            .map(|e| e.record.log.clone())
            .collect();
        let Ok(dir) = std::fs::read_dir(self.config.log_dir()) else {
            return;
        };
        for entry in dir.flatten() {
            let path = entry.path();
            let name = entry.file_name();
            let Some(name) = name.to_str() else { continue };
            let log = match name.strip_suffix(".1") {
                Some(current) => path.with_file_name(current),
                None => path.clone(),
            };
            let is_log = log.extension().is_some_and(|e| e == "log")
                && entry.file_type().is_ok_and(|t| t.is_file());
            if is_log && !known.contains(&log) {
                let _ = std::fs::remove_file(&path);
            }
        }
    }

    /// The devices of this node.
    pub fn devices(&self) -> &[Device] {
        &self.devices
    }

    /// The devices' health (GPUs found through NVML are watched; every other device is healthy).
    pub fn health(&self) -> &Arc<HealthBoard> {
        &self.health
    }

    /// Notes from device discovery (e.g. why NVML was not used).
    pub fn notes(&self) -> &[String] {
        &self.notes
    }

    /// The configuration.
    pub fn config(&self) -> &AgentConfig {
        &self.config
    }

    /// Ticker statistics.
    pub fn tick_stats(&self) -> &TickStats {
        &self.tick_stats
    }

    /// Time since the agent started.
    pub fn uptime(&self) -> Duration {
        self.started.elapsed()
    }

    /// Budgeting state of every device.
    pub fn device_budgets(&self) -> Vec<DeviceBudget> {
        lock(&self.tokens).devices()
    }

    pub(crate) fn device(&self, uuid: &str) -> Option<&Device> {
        self.devices.iter().find(|d| d.uuid == uuid)
    }

    fn new_channel(
        &self,
        tokens: &TokenManager,
        spec: &InstanceSpec,
        path: &std::path::Path,
    ) -> Result<AgentChannel, AgentError> {
        let device = self.device(&spec.device).ok_or_else(|| {
            FieldError::new(
                "device",
                &spec.device,
                "no such device on this node; see GET /devices",
            )
        })?;
        let channel_spec = self.channel_spec(tokens, device, &spec.quota);
        AgentChannel::create(path, &channel_spec, 0o600).map_err(|e| {
            internal(format!("creating quota channel {}", path.display()))(e.to_string())
        })
    }

    /// What a new channel for `quota` on `device` starts with: the quota's initial budget, the agent's window,
    /// the memory cap, every mode flag and the resident-threads hint.
    pub(crate) fn channel_spec(
        &self,
        tokens: &TokenManager,
        device: &Device,
        quota: &dilu_api::Quota,
    ) -> ChannelSpec {
        ChannelSpec {
            device_uuid: device.uuid.clone(),
            device_kind: device.kind,
            budget_per_window: tokens.initial_budget(&device.uuid, quota),
            window_ns: self.config.window_ns,
            mem_cap_bytes: quota.memory.unwrap_or(dilu_quota::UNLIMITED),
            mode: mode::ALL,
            resident_threads: device.sm_count.map_or(0, |sms| u64::from(sms) * 2048),
        }
    }

    pub(crate) fn check_capacity(
        &self,
        tokens: &TokenManager,
        device: &str,
        request: f64,
        except: Option<&str>,
        overcommit: bool,
    ) -> Result<(), AgentError> {
        let total = tokens.requested(device, except) + request;
        if !overcommit && total > 1.0 + OVERCOMMIT_SLACK {
            return Err(AgentError::OverCommit {
                device: device.to_string(),
                request,
                total,
            });
        }
        Ok(())
    }

    /// The CPU cgroup instance `id` is metered with, created if missing: when its spec asks for one, it runs
    /// on a CPU device and this agent has cgroups.
    fn cgroup_for(
        &self,
        id: &str,
        spec: &InstanceSpec,
    ) -> Result<Option<CpuGroup>, cgroup::CgroupError> {
        let on_cpu = self
            .device(&spec.device)
            .is_some_and(|d| d.kind == DeviceKind::Cpu);
        match &self.cgroups {
            Some(cgroups) if on_cpu && spec.cpu_enforcement == CpuEnforcement::Cgroup => {
                cgroups.group(id).map(Some)
            }
            _ => Ok(None),
        }
    }

    fn launch_spec(
        &self,
        record: &InstanceRecord,
        cgroup: Option<&CpuGroup>,
    ) -> Result<LaunchSpec, AgentError> {
        let spec = &record.spec;
        let device = self.device(&spec.device).ok_or_else(|| {
            FieldError::new("device", &spec.device, "no such device on this node")
        })?;
        // The operator's pass-through variables first, so the spec's own env wins over them.
        let mut env: Vec<(String, String)> = self
            .config
            .pass_env
            .iter()
            .filter(|name| !spec.env.contains_key(name.as_str()))
            .filter_map(|name| std::env::var(name).ok().map(|v| (name.clone(), v)))
            .collect();
        env.extend(spec.env.iter().map(|(k, v)| (k.clone(), v.clone())));
        env.push((
            "DILU_QUOTA_FILE".into(),
            record.channel.display().to_string(),
        ));
        env.push(("DILU_INSTANCE_ID".into(), record.id.clone()));
        env.push(("DILU_DEVICE".into(), device.uuid.clone()));
        if device.kind == DeviceKind::Gpu {
            let interposer = self.config.interposer.as_ref().ok_or_else(|| {
                FieldError::new(
                    "device",
                    &device.uuid,
                    "GPU instances need the interposer; start the agent with --interposer PATH",
                )
            })?;
            env.push(("CUDA_VISIBLE_DEVICES".into(), device.uuid.clone()));
            let preload = match spec.env.get("LD_PRELOAD") {
                Some(theirs) if !theirs.is_empty() => format!("{}:{theirs}", interposer.display()),
                _ => interposer.display().to_string(),
            };
            env.retain(|(k, _)| k != "LD_PRELOAD");
            env.push(("LD_PRELOAD".into(), preload));
        }
        let (program, args) = spec
            .command
            .split_first()
            .ok_or_else(|| FieldError::new("command", "[]", "must name a program"))?;
        Ok(LaunchSpec {
            program: program.clone(),
            args: args.to_vec(),
            env,
            clear_env: false,
            cwd: spec.workdir.clone(),
            log_path: record.log.clone(),
            cgroup_procs: cgroup.map(CpuGroup::procs_files).unwrap_or_default(),
        })
    }

    /// Starts `record`'s process, in its CPU cgroup when it has one: the group holds it from its first
    /// instruction, at `first_budget` (what its channel starts with). A group made for a start that failed is
    /// removed again.
    fn start_process(
        &self,
        record: &InstanceRecord,
        first_budget: u64,
    ) -> Result<(Process, Option<CpuGroup>), AgentError> {
        let group_error = |e: cgroup::CgroupError| {
            internal(format!("instance {}: CPU cgroup", record.id))(e.to_string())
        };
        let group = self
            .cgroup_for(&record.id, &record.spec)
            .map_err(group_error)?;
        let started = match &group {
            Some(g) => g
                .set_limit(cgroup::limit_for(first_budget, self.config.window_ns))
                .map_err(group_error),
            None => Ok(()),
        }
        .and_then(|()| self.launch_spec(record, group.as_ref()))
        .and_then(|launch| {
            supervisor::spawn(&launch).map_err(|error| AgentError::Internal {
                context: format!("starting {:?}", record.spec.command),
                reason: error.to_string(),
            })
        });
        match started {
            Ok(process) => Ok((process, group)),
            Err(error) => {
                if let Some(g) = &group {
                    let _ = g.remove();
                }
                Err(error)
            }
        }
    }

    /// Starts an instance: validates it, creates its channel (0600), starts its process with the quota,
    /// device and (on GPUs) interposer environment, and begins budgeting it.
    pub fn create_instance(
        &self,
        spec: InstanceSpec,
        overcommit: bool,
    ) -> Result<InstanceStatus, AgentError> {
        spec.validate()?;
        let device = self
            .device(&spec.device)
            .ok_or_else(|| {
                FieldError::new(
                    "device",
                    &spec.device,
                    "no such device on this node; see GET /devices",
                )
            })?
            .clone();
        if let Some(reason) = self.health.health(&device.uuid).reason() {
            return Err(FieldError::new(
                "device",
                &device.uuid,
                format!("the device is unhealthy ({reason}); choose another device"),
            )
            .into());
        }
        if device.kind == DeviceKind::Gpu && self.config.interposer.is_none() {
            return Err(FieldError::new(
                "device",
                &device.uuid,
                "GPU instances need the interposer; start the agent with --interposer PATH",
            )
            .into());
        }
        let mut instances = lock(&self.instances);
        let id = match &spec.name {
            Some(name) if instances.map.contains_key(name) => {
                return Err(AgentError::Conflict(name.clone()));
            }
            Some(name) => name.clone(),
            None => {
                let id = format!("i-{:06}", instances.next_id);
                instances.next_id += 1;
                id
            }
        };
        let channel_path = self.config.run_dir().join(format!("{id}.quota"));
        let channel = {
            let tokens = lock(&self.tokens);
            self.check_capacity(&tokens, &device.uuid, spec.quota.request, None, overcommit)?;
            self.new_channel(&tokens, &spec, &channel_path)?
        };
        let mut record = InstanceRecord {
            id: id.clone(),
            log: self.config.log_dir().join(format!("{id}.log")),
            channel: channel_path.clone(),
            spec,
            pid: None,
            start_ticks: None,
            status: InstancePhase::Starting,
            restarts: 0,
            last_exit: None,
        };
        let first_budget = channel.control().budget_per_window.load(Relaxed);
        let (process, cgroup) = match self.start_process(&record, first_budget) {
            Ok(started) => started,
            Err(error) => {
                let _ = std::fs::remove_file(&channel_path);
                return Err(error);
            }
        };
        record.pid = Some(process.pid());
        record.start_ticks = Some(process.start_ticks());
        if record.spec.health_url.is_none() {
            record.status = InstancePhase::Ready;
        }
        {
            let mut tokens = lock(&self.tokens);
            tokens
                .add(
                    &record.spec.device,
                    &id,
                    record.spec.kind,
                    record.spec.quota,
                    channel,
                )
                .map_err(|e: TokenError| internal("budgeting the instance")(e.to_string()))?;
            // The process runs in its group at its first budget either way; failing here would orphan it.
            if let Some(group) = &cgroup
                && let Err(error) = tokens.meter(&id, group.clone())
            {
                eprintln!("dilu agent: instance {id}: {error}; not metered");
            }
        }
        instances.map.insert(
            id.clone(),
            Entry {
                record,
                process: Some(process),
                backoff: Backoff::default(),
                started: Instant::now(),
                restart_at: None,
                not_ready: None,
                cgroup,
            },
        );
        drop(instances);
        self.persist();
        self.instance(&id)
    }

    /// Changes an instance's request, limit or memory cap; the new budgets are written at once.
    pub fn update_quota(
        &self,
        id: &str,
        update: QuotaUpdate,
        overcommit: bool,
    ) -> Result<InstanceStatus, AgentError> {
        {
            let mut instances = lock(&self.instances);
            let entry = instances
                .map
                .get_mut(id)
                .ok_or_else(|| AgentError::NotFound(id.to_string()))?;
            let quota = entry.record.spec.quota.updated(&update);
            quota.validate("quota")?;
            let mut tokens = lock(&self.tokens);
            self.check_capacity(
                &tokens,
                &entry.record.spec.device,
                quota.request,
                Some(id),
                overcommit,
            )?;
            tokens.set_quota(id, quota, monotonic_ns());
            entry.record.spec.quota = quota;
        }
        self.persist();
        self.instance(id)
    }

    /// Stops an instance (SIGTERM, grace, SIGKILL), stops budgeting it and removes its channel.
    pub fn delete_instance(&self, id: &str) -> Result<(), AgentError> {
        let entry = lock(&self.instances)
            .map
            .remove(id)
            .ok_or_else(|| AgentError::NotFound(id.to_string()))?;
        if let Some(mut process) = entry.process {
            process.stop(self.config.stop_grace);
        }
        lock(&self.tokens).remove(id);
        if let Some(group) = &entry.cgroup
            && let Err(error) = group.remove()
        {
            eprintln!("dilu agent: instance {id}: {error}");
        }
        let _ = std::fs::remove_file(&entry.record.channel);
        remove_logs(&entry.record.log);
        self.persist();
        Ok(())
    }

    /// One instance's view.
    pub fn instance(&self, id: &str) -> Result<InstanceStatus, AgentError> {
        let instances = lock(&self.instances);
        let entry = instances
            .map
            .get(id)
            .ok_or_else(|| AgentError::NotFound(id.to_string()))?;
        Ok(self.view(entry))
    }

    /// Every instance's view.
    pub fn instances(&self) -> Vec<InstanceStatus> {
        let instances = lock(&self.instances);
        instances.map.values().map(|e| self.view(e)).collect()
    }

    fn view(&self, entry: &Entry) -> InstanceStatus {
        let tokens = lock(&self.tokens);
        let r = &entry.record;
        InstanceStatus {
            id: r.id.clone(),
            name: r.spec.name.clone(),
            device: r.spec.device.clone(),
            kind: r.spec.kind,
            quota: r.spec.quota,
            labels: r.spec.labels.clone(),
            status: r.status,
            restarts: r.restarts,
            last_exit: r.last_exit.clone(),
            adopted: entry.process.as_ref().is_some_and(Process::is_adopted),
            budgeting: tokens.resident(&r.id),
            counters: tokens.snapshot(&r.id).as_ref().map(counters),
            not_ready: entry.not_ready.clone(),
            enforcement: match (&entry.cgroup, r.spec.cpu_enforcement) {
                (Some(_), _) => Enforcement::Cgroup,
                (None, CpuEnforcement::Cgroup)
                    if self
                        .device(&r.spec.device)
                        .is_some_and(|d| d.kind == DeviceKind::Cpu) =>
                {
                    Enforcement::None
                }
                (None, _) => Enforcement::Channel,
            },
        }
    }

    /// The tail of an instance's log.
    pub fn logs(&self, id: &str, max_bytes: u64) -> Result<String, AgentError> {
        let path = lock(&self.instances)
            .map
            .get(id)
            .map(|e| e.record.log.clone())
            .ok_or_else(|| AgentError::NotFound(id.to_string()))?;
        supervisor::tail(&path, max_bytes)
            .map_err(|e| internal(format!("reading {}", path.display()))(e.to_string()))
    }

    /// Every instance's channel snapshot and budgeting state, for metrics.
    pub fn metric_rows(&self) -> Vec<(InstanceRecord, Option<Budgeting>, Option<Snapshot>)> {
        let instances = lock(&self.instances);
        let tokens = lock(&self.tokens);
        instances
            .map
            .values()
            .map(|e| {
                let id = &e.record.id;
                (e.record.clone(), tokens.resident(id), tokens.snapshot(id))
            })
            .collect()
    }

    /// One supervision round: reap exits, restart with back-off, probe readiness, bound logs.
    fn supervise(&self, round: u64) {
        let mut changed = false;
        let mut probes = Vec::new();
        {
            let mut instances = lock(&self.instances);
            let now = Instant::now();
            for entry in instances.map.values_mut() {
                if let Some(process) = entry.process.as_mut()
                    && let Some(exit) = process.poll()
                {
                    entry.process = None;
                    entry.record.pid = None;
                    entry.record.start_ticks = None;
                    entry.record.last_exit = Some(exit.to_string());
                    if restarts(entry.record.spec.restart, &exit) {
                        let delay = entry.backoff.next_delay(entry.started.elapsed());
                        entry.restart_at = Some(now + delay);
                        entry.record.status = InstancePhase::Restarting;
                    } else {
                        entry.record.status = InstancePhase::Exited;
                    }
                    changed = true;
                }
                if entry.process.is_none() && entry.restart_at.is_some_and(|at| at <= now) {
                    entry.restart_at = None;
                    // Its CPU cgroup is made again if it went meanwhile (something removed the empty group):
                    // the token manager notices the fresh counters and writes its limit again.
                    if entry.cgroup.is_some() {
                        match self.cgroup_for(&entry.record.id, &entry.record.spec) {
                            Ok(group) => entry.cgroup = group,
                            Err(error) => eprintln!(
                                "dilu agent: instance {}: CPU cgroup: {error}",
                                entry.record.id
                            ),
                        }
                    }
                    match self
                        .launch_spec(&entry.record, entry.cgroup.as_ref())
                        .map(|spec| supervisor::spawn(&spec))
                    {
                        Ok(Ok(process)) => {
                            entry.record.pid = Some(process.pid());
                            entry.record.start_ticks = Some(process.start_ticks());
                            entry.record.restarts += 1;
                            entry.record.status = if entry.record.spec.health_url.is_some() {
                                InstancePhase::Starting
                            } else {
                                InstancePhase::Ready
                            };
                            entry.process = Some(process);
                            entry.started = now;
                            entry.not_ready = None;
                        }
                        Ok(Err(error)) => {
                            entry.record.last_exit = Some(format!("restart failed: {error}"));
                            entry.restart_at = Some(now + entry.backoff.next_delay(Duration::ZERO));
                        }
                        Err(error) => {
                            entry.record.last_exit = Some(format!("restart failed: {error}"));
                            entry.record.status = InstancePhase::Exited;
                        }
                    }
                    changed = true;
                }
                if entry.record.status == InstancePhase::Starting
                    && entry.process.is_some()
                    && let Some(url) = &entry.record.spec.health_url
                {
                    probes.push((entry.record.id.clone(), url.clone()));
                }
                if round.is_multiple_of(20) {
                    let _ = supervisor::rotate_log(&entry.record.log, self.config.log_max_bytes);
                }
            }
        }
        // Probe outside the lock: a slow instance must not stall the API.
        let probed: Vec<(String, Result<(), String>)> = probes
            .into_iter()
            .map(|(id, url)| {
                let outcome = supervisor::probe_http_reason(&url, Duration::from_millis(200));
                (id, outcome)
            })
            .collect();
        if !probed.is_empty() {
            let mut instances = lock(&self.instances);
            for (id, outcome) in probed {
                let Some(entry) = instances.map.get_mut(&id) else {
                    continue;
                };
                if entry.record.status != InstancePhase::Starting {
                    continue;
                }
                match outcome {
                    Ok(()) => {
                        entry.record.status = InstancePhase::Ready;
                        entry.not_ready = None;
                        changed = true;
                    }
                    Err(reason) => entry.not_ready = Some(reason),
                }
            }
        }
        if changed {
            self.persist();
        }
    }

    /// Writes the state file; failures are reported and retried at the next change.
    fn persist(&self) {
        let instances = lock(&self.instances);
        let file = StateFile {
            version: STATE_VERSION,
            next_id: instances.next_id,
            instances: instances.map.values().map(|e| e.record.clone()).collect(),
        };
        if let Err(error) = state::save(&self.config.state_path(), &file) {
            eprintln!("dilu agent: cannot write the state file: {error}");
        }
    }

    /// Stops the agent's threads; instances keep running (with their last budgets) for the next agent to
    /// adopt.
    pub fn shutdown(&self) {
        self.stop.store(true, Relaxed);
        let threads: Vec<JoinHandle<()>> = lock(&self.threads).drain(..).collect();
        for thread in threads {
            let _ = thread.join();
        }
        self.persist();
        if let Some(cgroups) = &self.cgroups {
            cgroups.close();
        }
    }
}

/// The agent's CPU cgroups as `config.cpu_cgroup` asks, with a note saying where they are or why there are
/// none; none at all without a CPU device.
fn open_cgroups(
    config: &AgentConfig,
    devices: &[Device],
    notes: &mut Vec<String>,
) -> Result<Option<CpuCgroups>, AgentError> {
    if !devices.iter().any(|d| d.kind == DeviceKind::Cpu) {
        return Ok(None);
    }
    if config.cpu_cgroup == CgroupMode::Off {
        notes.push("processes on CPU devices run unthrottled (CPU cgroups are off)".into());
        return Ok(None);
    }
    let opened = Hierarchy::discover()
        .and_then(|h| CpuCgroups::open(h, &cgroup::agent_name(&config.data_dir)));
    match opened {
        Ok(cgroups) => {
            notes.push(format!(
                "processes on CPU devices are held to their budgets by CPU cgroups in {}",
                cgroups.path().display()
            ));
            Ok(Some(cgroups))
        }
        Err(error) if config.cpu_cgroup == CgroupMode::Require => Err(AgentError::Internal {
            context: "CPU cgroups (required)".into(),
            reason: error.to_string(),
        }),
        Err(error) => {
            notes.push(format!(
                "processes on CPU devices run unthrottled: {error} (the agent holds them with CPU cgroups when \
                 it may create them: as root, or in a delegated cgroup v2 subtree; --cpu-cgroup off says they \
                 are not wanted)"
            ));
            Ok(None)
        }
    }
}

/// Whether a process that ended with `exit` is restarted under `policy`.
fn restarts(policy: RestartPolicy, exit: &Exit) -> bool {
    match policy {
        RestartPolicy::Never => false,
        RestartPolicy::Always => true,
        RestartPolicy::OnFailure => !exit.success(),
    }
}

/// Removes an instance's log and its rotated generation: a deleted instance leaves nothing behind. (Its cause
/// of death is read before it is deleted: the control plane puts it in the function's `last_error`, and a
/// caller of the agent's API reads `GET /instances/{id}/logs` first.)
fn remove_logs(log: &std::path::Path) {
    for path in [log.to_path_buf(), supervisor::rotated_path(log)] {
        if let Err(error) = std::fs::remove_file(&path)
            && error.kind() != std::io::ErrorKind::NotFound
        {
            eprintln!("dilu agent: removing {}: {error}", path.display());
        }
    }
}

/// Makes a directory private to the agent's user (quota channels are writable only by their owner).
fn restrict(dir: &std::path::Path) {
    use std::os::unix::fs::PermissionsExt;
    let _ = std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700));
}

#[cfg(test)]
mod tests {
    use super::*;
    use dilu_api::{InstanceKind, Quota};

    fn config(dir: &std::path::Path) -> AgentConfig {
        let mut config = AgentConfig::new(dir.to_path_buf());
        config.discover_gpus = false;
        config.cpu_cores = Some(1.0);
        config.stop_grace = Duration::from_millis(500);
        config
    }

    fn sh(agent: &Agent, name: &str, script: &str) -> InstanceSpec {
        InstanceSpec {
            command: vec!["sh".into(), "-c".into(), script.into()],
            workdir: None,
            env: BTreeMap::new(),
            device: agent.devices()[0].uuid.clone(),
            quota: Quota {
                request: 0.1,
                limit: 0.2,
                memory: None,
            },
            kind: InstanceKind::Training,
            health_url: None,
            restart: RestartPolicy::Never,
            name: Some(name.into()),
            labels: BTreeMap::new(),
            cpu_enforcement: CpuEnforcement::Channel,
        }
    }

    fn wait_for(what: &str, mut done: impl FnMut() -> bool) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while !done() {
            assert!(Instant::now() < deadline, "timed out waiting for {what}");
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    fn log_files(agent: &Agent) -> Vec<String> {
        let mut names: Vec<String> = std::fs::read_dir(agent.config().log_dir())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        names
    }

    #[test]
    fn a_deleted_instance_leaves_no_log_files_and_a_live_one_keeps_its_own() {
        let dir = tempfile::tempdir().unwrap();
        let agent = Agent::start(config(dir.path())).unwrap();
        for i in 0..3 {
            agent
                .create_instance(
                    sh(&agent, &format!("churn-{i}"), "echo hi; sleep 30"),
                    false,
                )
                .unwrap();
        }
        agent
            .create_instance(sh(&agent, "keep", "echo kept; sleep 30"), false)
            .unwrap();
        wait_for("the logs", || {
            ["churn-0", "churn-1", "churn-2", "keep"]
                .iter()
                .all(|id| agent.logs(id, 100).unwrap_or_default().contains('\n'))
        });
        // A rotated generation goes too.
        let rotated = supervisor::rotated_path(&agent.config().log_dir().join("churn-0.log"));
        std::fs::write(&rotated, "older\n").unwrap();
        for i in 0..3 {
            agent.delete_instance(&format!("churn-{i}")).unwrap();
        }
        assert_eq!(log_files(&agent), ["keep.log"]);
        assert_eq!(agent.logs("keep", 100).unwrap(), "kept\n");
        agent.delete_instance("keep").unwrap();
        assert!(log_files(&agent).is_empty());
        agent.shutdown();
    }

    #[test]
    fn pass_env_adds_named_variables_and_the_spec_still_wins() {
        // CARGO_PKG_NAME is not on the allow-list: passed through by name here; the spec's own value wins.
        let dir = tempfile::tempdir().unwrap();
        let mut config = config(dir.path());
        config.pass_env = vec!["CARGO_PKG_NAME".into(), "DILU_NOT_SET_ANYWHERE".into()];
        let agent = Agent::start(config).unwrap();
        // SAFETY: the tests in this module do not read or write this variable concurrently.
        unsafe { std::env::set_var("CARGO_PKG_NAME", "from-agent") };
        agent
            .create_instance(
                sh(
                    &agent,
                    "passed",
                    "echo \"pkg=$CARGO_PKG_NAME unset=${DILU_NOT_SET_ANYWHERE-none}\"; sleep 30",
                ),
                false,
            )
            .unwrap();
        let mut spec = sh(&agent, "mine", "echo \"pkg=$CARGO_PKG_NAME\"; sleep 30");
        spec.env.insert("CARGO_PKG_NAME".into(), "from-spec".into());
        agent.create_instance(spec, false).unwrap();
        wait_for("the logs", || {
            agent.logs("passed", 200).unwrap_or_default().contains('\n')
                && agent.logs("mine", 200).unwrap_or_default().contains('\n')
        });
        assert_eq!(
            agent.logs("passed", 200).unwrap(),
            "pkg=from-agent unset=none\n"
        );
        assert_eq!(agent.logs("mine", 200).unwrap(), "pkg=from-spec\n");
        agent.delete_instance("passed").unwrap();
        agent.delete_instance("mine").unwrap();
        agent.shutdown();
    }

    #[test]
    fn an_instance_that_ended_while_no_agent_ran_reads_status_unknown() {
        let dir = tempfile::tempdir().unwrap();
        let agent = Agent::start(config(dir.path())).unwrap();
        agent
            .create_instance(sh(&agent, "brief", "echo up; sleep 30"), false)
            .unwrap();
        wait_for("the log", || {
            agent.logs("brief", 100).unwrap_or_default().contains("up")
        });
        let record = agent.metric_rows().remove(0).0;
        agent.shutdown();
        drop(agent);
        // SAFETY: signalling the process group this test started.
        let pid = record.pid.unwrap();
        unsafe { libc::kill(-(pid as libc::pid_t), libc::SIGKILL) };
        // Dead (a zombie of this test process, which no agent reaps) before the next agent looks.
        wait_for("the kill", || {
            std::fs::read_to_string(format!("/proc/{pid}/stat")).map_or(true, |s| {
                s.rsplit(')')
                    .next()
                    .unwrap_or("")
                    .trim_start()
                    .starts_with('Z')
            })
        });
        let agent = Agent::start(config(dir.path())).unwrap();
        let status = agent.instance("brief").unwrap();
        assert_eq!(status.status, InstancePhase::Exited);
        let exit = status.last_exit.unwrap();
        let report = format!("instance brief exited ({exit})");
        assert_eq!(report.matches("exited").count(), 1, "{report}");
        assert!(exit.starts_with("status unknown"), "{exit}");
        agent.delete_instance("brief").unwrap();
        agent.shutdown();
    }

    #[test]
    fn a_restarted_agent_removes_logs_of_instances_it_does_not_know() {
        let dir = tempfile::tempdir().unwrap();
        let agent = Agent::start(config(dir.path())).unwrap();
        agent
            .create_instance(sh(&agent, "alive", "echo up; sleep 30"), false)
            .unwrap();
        wait_for("the log", || {
            agent.logs("alive", 100).unwrap_or_default().contains("up")
        });
        agent.shutdown();
        drop(agent);
        // Left by an earlier version, which never removed them.
        let logs = dir.path().join("logs");
        for stray in ["i-000007.log", "i-000007.log.1", "gone-3.log"] {
            std::fs::write(logs.join(stray), "old\n").unwrap();
        }
        std::fs::write(logs.join("notes.txt"), "not ours\n").unwrap();
        let agent = Agent::start(config(dir.path())).unwrap();
        assert_eq!(log_files(&agent), ["alive.log", "notes.txt"]);
        assert_eq!(agent.logs("alive", 100).unwrap(), "up\n");
        agent.delete_instance("alive").unwrap();
        agent.shutdown();
    }

    /// Whether this machine lets `agent` hold processes in CPU cgroups. Says so loudly when it cannot; under
    /// `CI=true` that fails the test where the kernel mounts a hierarchy with the cpu controller.
    fn has_cgroups(agent: &Agent, test: &str) -> bool {
        if agent.cgroups.is_some() {
            return true;
        }
        let notes = agent.notes().join("; ");
        let offered = Hierarchy::discover().is_ok();
        assert!(
            !(offered && std::env::var("CI").is_ok_and(|v| v == "true")),
            "{test}: the kernel offers CPU cgroups but the agent could not use them (run as root): {notes}"
        );
        eprintln!("SKIPPED {test}: no usable CPU cgroups on this machine: {notes}");
        false
    }

    /// CPU time the process `pid` has used, ns (from `/proc`, in clock ticks).
    fn proc_cpu_ns(pid: u32) -> u64 {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
        let fields: Vec<&str> = stat
            .rsplit(')')
            .next()
            .unwrap()
            .split_whitespace()
            .collect();
        // After the command: state is field 3, utime 14 and stime 15 (1-based, as proc(5) counts).
        let ticks: u64 = fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap();
        // SAFETY: sysconf has no preconditions.
        let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as u64;
        ticks * 1_000_000_000 / hz
    }

    /// Kills the instances an agent keeping its files in the directory recorded, when dropped: a test that fails
    /// half-way leaves no busy loop running after it.
    struct KillRecorded(PathBuf);

    impl Drop for KillRecorded {
        fn drop(&mut self) {
            let saved: Option<StateFile> =
                state::load(&self.0.join("agent-state.json")).unwrap_or(None);
            for pid in saved
                .iter()
                .flat_map(|s| &s.instances)
                .filter_map(|i| i.pid)
            {
                // SAFETY: signalling process groups this test's agent started; failures (gone) are fine.
                unsafe { libc::kill(-(pid as libc::pid_t), libc::SIGKILL) };
            }
        }
    }

    #[test]
    fn a_process_on_a_cpu_device_is_held_to_its_budget_by_a_cpu_cgroup_and_metered_through_it() {
        let test = "a_process_on_a_cpu_device_is_held_to_its_budget_by_a_cpu_cgroup";
        let dir = tempfile::tempdir().unwrap();
        let _kill = KillRecorded(dir.path().to_path_buf());
        let agent = Agent::start(config(dir.path())).unwrap();
        if !has_cgroups(&agent, test) {
            return;
        }
        // A busy loop would take a whole core; its quota allows a quarter of the one-core device.
        let mut spec = sh(&agent, "burn", "while :; do :; done");
        spec.quota = Quota {
            request: 0.25,
            limit: 0.25,
            memory: None,
        };
        spec.cpu_enforcement = CpuEnforcement::Cgroup;
        spec.restart = RestartPolicy::Always;
        let status = agent.create_instance(spec, false).unwrap();
        assert_eq!(status.enforcement, Enforcement::Cgroup);
        let pid = lock(&agent.instances).map["burn"].record.pid.unwrap();
        let group = agent.cgroups.as_ref().unwrap().group("burn").unwrap();
        // It ran in its group from the start: the shell is in it.
        let procs = std::fs::read_to_string(&group.procs_files()[0]).unwrap();
        assert!(procs.lines().any(|p| p == pid.to_string()), "{procs}");
        wait_for("the agent to see it busy", || {
            agent
                .instance("burn")
                .unwrap()
                .budgeting
                .is_some_and(|b| b.busy)
        });
        let measure = |agent: &Agent, pid: u32| {
            let cost = |agent: &Agent| agent.instance("burn").unwrap().counters.unwrap().cost;
            let (cost0, proc0, t0) = (cost(agent), proc_cpu_ns(pid), Instant::now());
            std::thread::sleep(Duration::from_secs(2));
            let (cost1, proc1) = (cost(agent), proc_cpu_ns(pid));
            let seconds = t0.elapsed().as_secs_f64();
            (
                (cost1 - cost0) as f64 / 1e9 / seconds,
                (proc1 - proc0) as f64 / 1e9 / seconds,
            )
        };
        let (charged, used) = measure(&agent, pid);
        eprintln!("{test}: used {used:.3} cores by /proc, {charged:.3} charged to its channel");
        // Held to a quarter core (CFS enforces it per 5 ms period), where unthrottled it would take one.
        assert!(used <= 0.25 * 1.1 + 0.02, "used {used:.3} cores");
        assert!(used > 0.05, "used {used:.3} cores: it should run");
        // The channel is charged with what the group used, which is what /proc counts.
        assert!(
            (charged - used).abs() <= 0.03 + 0.1 * used,
            "charged {charged:.3}, used {used:.3}"
        );
        // CFS held it back, which its channel counts as a runtime's waits for budget.
        let counters = agent.instance("burn").unwrap().counters.unwrap();
        assert!(counters.launches_delayed > 0, "{counters:?}");
        assert!(counters.delay_seconds > 0.0, "{counters:?}");
        // Its limit is the budget the token manager writes.
        let budget = agent
            .instance("burn")
            .unwrap()
            .budgeting
            .unwrap()
            .budget
            .unwrap();
        assert_eq!(
            group.limit().unwrap(),
            cgroup::limit_for(budget, agent.config().window_ns)
        );
        // A larger limit is followed at once.
        agent
            .update_quota(
                "burn",
                QuotaUpdate {
                    request: None,
                    limit: Some(0.75),
                    memory: None,
                },
                false,
            )
            .unwrap();
        wait_for("the larger limit", || {
            group
                .limit()
                .unwrap()
                .is_some_and(|l| l.quota_us > 2_500 && l.period_us == 5_000)
        });
        // A restart starts the new process in the same group.
        // SAFETY: killing the process group this test's agent started.
        unsafe { libc::kill(-(pid as libc::pid_t), libc::SIGKILL) };
        let pid = {
            let mut restarted = None;
            wait_for("the restart", || {
                restarted = lock(&agent.instances).map["burn"]
                    .record
                    .pid
                    .filter(|p| *p != pid);
                restarted.is_some()
            });
            restarted.unwrap()
        };
        let procs = std::fs::read_to_string(&group.procs_files()[0]).unwrap();
        assert!(procs.lines().any(|p| p == pid.to_string()), "{procs}");
        // A restarted agent meters the process it adopts through the same group.
        agent.shutdown();
        drop(agent);
        let agent = Agent::start(config(dir.path())).unwrap();
        let status = agent.instance("burn").unwrap();
        assert!(status.adopted);
        assert_eq!(status.enforcement, Enforcement::Cgroup);
        let (charged, _) = measure(&agent, pid);
        assert!(
            charged > 0.05,
            "charged {charged:.3} cores after re-adoption"
        );
        agent.delete_instance("burn").unwrap();
        assert!(!group.path().exists(), "the group outlived its instance");
        agent.shutdown();
    }

    #[test]
    fn a_process_on_a_cpu_device_runs_unthrottled_when_cgroups_are_off_and_says_so() {
        let dir = tempfile::tempdir().unwrap();
        let mut config = config(dir.path());
        config.cpu_cgroup = CgroupMode::Off;
        let agent = Agent::start(config).unwrap();
        assert!(
            agent
                .notes()
                .iter()
                .any(|n| n.contains("processes on CPU devices run unthrottled")),
            "{:?}",
            agent.notes()
        );
        let mut spec = sh(&agent, "free", "sleep 30");
        spec.cpu_enforcement = CpuEnforcement::Cgroup;
        assert_eq!(
            agent.create_instance(spec, false).unwrap().enforcement,
            Enforcement::None
        );
        let builtin = sh(&agent, "worker", "sleep 30");
        assert_eq!(
            agent.create_instance(builtin, false).unwrap().enforcement,
            Enforcement::Channel
        );
        agent.delete_instance("free").unwrap();
        agent.delete_instance("worker").unwrap();
        agent.shutdown();
    }
}
