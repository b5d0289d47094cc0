//! The node agent's wire types: what starts an instance, what changes its quota, and what the agent reports
//! of instances and devices. Reports carry no process ids or host paths: those stay on the node.

use std::collections::BTreeMap;
use std::path::PathBuf;

use dilu_core::{FieldError, InstanceKind};
use dilu_quota::DeviceKind;
use serde::{Deserialize, Serialize};

use crate::quota::Quota;

/// What to do when an instance's process exits.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum RestartPolicy {
    /// Leave it exited.
    Never,
    /// Restart after a non-zero exit or a signal, with back-off.
    #[default]
    OnFailure,
    /// Restart after any exit, with back-off.
    Always,
}

/// Who holds an instance on a CPU device to its budget (on a GPU the interposer does, whatever this says).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum CpuEnforcement {
    /// The instance charges the CPU time it uses to its quota channel and waits for budget itself (Dilu's
    /// worker and trainer).
    #[default]
    Channel,
    /// The agent holds it in a CPU cgroup whose quota follows its budget and charges its channel with the
    /// group's usage (any other program: a `process` function).
    Cgroup,
}

/// What holds a running instance to its budget, as the agent reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Enforcement {
    /// The instance itself, through its quota channel (the built-in runtimes; the interposer on a GPU).
    #[default]
    Channel,
    /// A CPU cgroup the agent keeps at its budget.
    Cgroup,
    /// Nothing: it asked for a cgroup and the agent has none (the agent's notes say why); it runs
    /// unthrottled, though its quota still books the device.
    None,
}

/// `POST /instances`: everything needed to start an instance.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InstanceSpec {
    /// Program and arguments.
    pub command: Vec<String>,
    /// Working directory (absolute; the agent's when omitted).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub workdir: Option<PathBuf>,
    /// Extra environment (the agent adds the quota and device variables).
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    /// UUID of the device to run on.
    pub device: String,
    /// Its share of the device.
    pub quota: Quota,
    /// What it does: inference is served before training on a shared device (also accepted as
    /// `priority_class`).
    #[serde(default = "default_kind", alias = "priority_class")]
    pub kind: InstanceKind,
    /// `http://127.0.0.1:PORT/path` answering 2xx when the instance is ready; none = ready once started.
    #[serde(default)]
    pub health_url: Option<String>,
    /// Restart policy.
    #[serde(default)]
    pub restart: RestartPolicy,
    /// A caller-chosen name, unique on the node (defaults to the id).
    #[serde(default)]
    pub name: Option<String>,
    /// Labels the caller reads back in every report (who owns the instance, what it runs). Kept across
    /// agent restarts.
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    /// On a CPU device: whether the instance charges its own channel or the agent meters it with a cgroup.
    #[serde(default)]
    pub cpu_enforcement: CpuEnforcement,
}

fn default_kind() -> InstanceKind {
    InstanceKind::Inference
}

/// Environment variables the agent sets for every instance.
pub const RESERVED_ENV: [&str; 4] = [
    "DILU_QUOTA_FILE",
    "DILU_INSTANCE_ID",
    "DILU_DEVICE",
    "CUDA_VISIBLE_DEVICES",
];

impl InstanceSpec {
    /// Checks everything that does not depend on the agent's state (devices and capacity are the agent's).
    pub fn validate(&self) -> Result<(), FieldError> {
        match self.command.first() {
            None => return Err(FieldError::new("command", "[]", "must name a program")),
            Some(program) if program.is_empty() => {
                return Err(FieldError::new("command[0]", "\"\"", "must name a program"));
            }
            Some(_) => {}
        }
        self.quota.validate("quota")?;
        if let Some(dir) = &self.workdir {
            FieldError::require(
                dir.is_absolute(),
                "workdir",
                dir.display(),
                "must be an absolute path",
            )?;
        }
        FieldError::require(
            self.kind != InstanceKind::Pod,
            "kind",
            "pod",
            "must be inference, llm-inference or training",
        )?;
        for key in self.env.keys() {
            if key.is_empty() || key.contains('=') || key.contains('\0') {
                return Err(FieldError::new(
                    "env",
                    format!("{key:?}"),
                    "names must be non-empty without '=' or NUL",
                ));
            }
            if RESERVED_ENV.contains(&key.as_str()) {
                return Err(FieldError::new(
                    format!("env.{key}"),
                    &self.env[key],
                    "is set by the agent and cannot be overridden",
                ));
            }
        }
        if let Some(url) = &self.health_url
            && !url.starts_with("http://")
        {
            return Err(FieldError::new("health_url", url, "must be an http:// URL"));
        }
        if let Some(name) = &self.name
            && (name.is_empty()
                || name.len() > 63
                || !name
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_'))
        {
            return Err(FieldError::new(
                "name",
                name,
                "must be 1-63 characters of [A-Za-z0-9_-]",
            ));
        }
        for (key, value) in &self.labels {
            FieldError::require(
                !key.is_empty() && key.len() <= 253 && value.len() <= 4096,
                format!("labels.{key}"),
                value,
                "keys are 1-253 characters, values at most 4096",
            )?;
        }
        Ok(())
    }
}

/// Life-cycle state of an instance on its node.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum InstancePhase {
    /// Started, not yet ready.
    Starting,
    /// Ready (health URL answered, or started without one).
    Ready,
    /// Exited and waiting for a restart.
    Restarting,
    /// Exited, not to be restarted.
    Exited,
}

/// How the token manager budgets an instance this window.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Budgeting {
    /// Share of the device it may use this window.
    pub share: f64,
    /// Budget written for this window (cost units; `None` = unlimited).
    pub budget: Option<u64>,
    /// Cost used in the last window.
    pub usage_last_window: u64,
    /// Cost used per window, averaged exponentially over about a second: what the instance really draws.
    pub usage_avg_per_window: f64,
    /// Whether it used the device in the last window.
    pub busy: bool,
    /// While busy: when the token manager first counted this burst and rewrote the device's budgets for it,
    /// on the node's `CLOCK_MONOTONIC` in nanoseconds, so a client on the node can time the vertical
    /// reaction to its own requests without the delay of polling. `None` while idle.
    pub busy_since_ns: Option<u64>,
}

/// An instance's counters from its quota channel.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Counters {
    /// Cost used so far.
    pub cost: u64,
    /// Launches (GPU) or work units (CPU) charged.
    pub launches: u64,
    /// Launches that waited for budget.
    pub launches_delayed: u64,
    /// Time spent waiting, seconds.
    pub delay_seconds: f64,
    /// Bytes of device memory held.
    pub memory_bytes: u64,
    /// Peak bytes held.
    pub memory_peak_bytes: u64,
    /// Refused allocations.
    pub alloc_failures: u64,
}

/// An instance as the agent reports it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct InstanceStatus {
    /// Instance id.
    pub id: String,
    /// Its name on the node.
    pub name: Option<String>,
    /// Device UUID.
    pub device: String,
    /// What it does.
    pub kind: InstanceKind,
    /// Its quota.
    pub quota: Quota,
    /// The labels it was started with.
    pub labels: BTreeMap<String, String>,
    /// Life-cycle state.
    pub status: InstancePhase,
    /// Restarts so far.
    pub restarts: u32,
    /// How the last process ended.
    pub last_exit: Option<String>,
    /// Whether the process was started by an earlier agent run.
    pub adopted: bool,
    /// Budgeting state.
    pub budgeting: Option<Budgeting>,
    /// The channel's counters.
    pub counters: Option<Counters>,
    /// What holds it to its budget.
    #[serde(default)]
    pub enforcement: Enforcement,
    /// While starting: why its last readiness probe failed (`connection refused (nothing listens on port
    /// 8123)`, `GET /ready answered 404 Not Found`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub not_ready: Option<String>,
}

/// A device a node offers.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Device {
    /// Stable identifier (`GPU-…`, or `CPU-…` for a CPU device).
    pub uuid: String,
    /// Human-readable name.
    pub name: String,
    /// GPU or CPU.
    #[serde(with = "device_kind")]
    pub kind: DeviceKind,
    /// Memory in bytes (0 if unknown).
    pub memory_bytes: u64,
    /// Streaming multiprocessors (GPUs), if known.
    pub sm_count: Option<u32>,
    /// Cores (CPU devices).
    pub cores: Option<f64>,
    /// Cost units per window the device executes at full load; `None` = learned from usage (GPUs).
    pub capacity_per_window: Option<u64>,
    /// Where the device came from: `nvml`, `declared` or `cpu`.
    pub source: String,
}

/// A device's budgeting state.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DeviceBudget {
    /// Device UUID.
    pub device: String,
    /// The vertical controller dividing it.
    pub controller: String,
    /// Capacity in cost units per window used for budgets.
    pub capacity_per_window: u64,
    /// Whether the capacity is learned from usage.
    pub capacity_learned: bool,
    /// Σ requests of its instances.
    pub requested: f64,
    /// The controller's training budget multiplier (RCKM; 1 elsewhere).
    pub training_budget: f64,
    /// Grant changes so far.
    pub adjustments: u64,
}

/// (De)serializes [`DeviceKind`] by its name (`gpu`, `cpu`).
pub mod device_kind {
    use dilu_quota::DeviceKind;
    use serde::{Deserialize, Deserializer, Serializer};

    /// Writes the name.
    pub fn serialize<S: Serializer>(kind: &DeviceKind, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(kind.name())
    }

    /// Reads the name.
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<DeviceKind, D::Error> {
        match String::deserialize(d)?.as_str() {
            "gpu" => Ok(DeviceKind::Gpu),
            "cpu" => Ok(DeviceKind::Cpu),
            other => Err(serde::de::Error::custom(format!(
                "unknown device kind {other:?}; expected gpu or cpu"
            ))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec() -> InstanceSpec {
        serde_json::from_str(
            r#"{"command":["sleep","10"],"device":"CPU-x","quota":{"request":0.3,"limit":0.5}}"#,
        )
        .unwrap()
    }

    #[test]
    fn a_minimal_spec_gets_defaults_and_validates() {
        let spec = spec();
        assert_eq!(spec.kind, InstanceKind::Inference);
        assert_eq!(spec.restart, RestartPolicy::OnFailure);
        spec.validate().unwrap();
        let old: InstanceSpec = serde_json::from_str(
            r#"{"command":["x"],"device":"d","quota":{"request":0.3,"limit":0.5},"priority_class":"training"}"#,
        )
        .unwrap();
        assert_eq!(old.kind, InstanceKind::Training);
    }

    #[test]
    fn reserved_env_and_empty_commands_are_refused() {
        let mut bad = spec();
        bad.env.insert("DILU_QUOTA_FILE".into(), "/x".into());
        assert_eq!(bad.validate().unwrap_err().field, "env.DILU_QUOTA_FILE");
        let mut bad = spec();
        bad.command.clear();
        assert_eq!(bad.validate().unwrap_err().field, "command");
        let mut bad = spec();
        bad.quota.request = 0.8;
        assert_eq!(
            bad.validate().unwrap_err().to_string(),
            "quota.request = 0.8: must not exceed quota.limit (0.5)"
        );
        let unknown = serde_json::from_str::<InstanceSpec>(
            r#"{"command":["x"],"device":"d","quota":{"request":0.3,"limit":0.5},"gpu":1}"#,
        );
        assert!(
            unknown
                .unwrap_err()
                .to_string()
                .contains("unknown field `gpu`")
        );
    }
}
