//! What an instance is to the agent: the request that creates it, its quota, and its validation.

use std::collections::BTreeMap;

use dilu_core::scaling::vertical::ResidentClass;
use serde::{Deserialize, Serialize};

/// Priority class of an instance: latency-critical inference is never squeezed for training; training is
/// elastic and absorbs inference bursts (`dilu.md` §5).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum PriorityClass {
    /// Latency-critical inference.
    Inference,
    /// LLM inference (a lower emergency threshold in RCKM).
    LlmInference,
    /// Throughput-oriented, elastic training.
    Training,
}

impl PriorityClass {
    /// The controller's view of the class.
    pub fn resident_class(self) -> ResidentClass {
        match self {
            Self::Inference => ResidentClass::Inference,
            Self::LlmInference => ResidentClass::LlmInference,
            Self::Training => ResidentClass::Training,
        }
    }

    /// The name used in the API and metrics.
    pub fn name(self) -> &'static str {
        match self {
            Self::Inference => "inference",
            Self::LlmInference => "llm-inference",
            Self::Training => "training",
        }
    }
}

/// An instance's share of its device: the guaranteed `request`, the `limit` it may burst to (both fractions
/// of the device in (0, 1]), and an optional memory cap.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Quota {
    /// Guaranteed share of the device.
    pub request: f64,
    /// Most the instance may use.
    pub limit: f64,
    /// Memory cap in bytes (GPU devices); `None` for no cap.
    #[serde(default)]
    pub memory_bytes: Option<u64>,
}

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

/// `POST /instances`: everything needed to start an instance.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InstanceSpec {
    /// Program and arguments.
    pub command: Vec<String>,
    /// Extra environment (the agent adds the quota and device variables).
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    /// UUID of the device to run on.
    pub device: String,
    /// Its share of the device.
    pub quota: Quota,
    /// Priority class.
    #[serde(default = "default_class")]
    pub priority_class: PriorityClass,
    /// `http://127.0.0.1:PORT/path` answering 2xx when the instance is ready; none = ready once started.
    #[serde(default)]
    pub health_url: Option<String>,
    /// Restart policy.
    #[serde(default)]
    pub restart: RestartPolicy,
    /// A caller-chosen name (defaults to the id).
    #[serde(default)]
    pub name: Option<String>,
}

fn default_class() -> PriorityClass {
    PriorityClass::Inference
}

/// `PATCH /instances/{id}/quota`: new request and/or limit (and memory cap); omitted fields keep their value.
#[derive(Debug, Clone, Copy, PartialEq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct QuotaUpdate {
    /// New guaranteed share.
    #[serde(default)]
    pub request: Option<f64>,
    /// New limit.
    #[serde(default)]
    pub limit: Option<f64>,
    /// New memory cap in bytes.
    #[serde(default)]
    pub memory_bytes: Option<u64>,
}

/// A rejected request: the field, the value and the rule it breaks (rendered as the API's error body).
#[derive(Debug, Clone, PartialEq, thiserror::Error, Serialize)]
#[error("{field} = {value}: {rule}")]
pub struct Invalid {
    /// The offending field, as a path (`quota.request`).
    pub field: String,
    /// The value, printed.
    pub value: String,
    /// The rule.
    pub rule: String,
}

impl Invalid {
    /// Builds an error.
    pub fn new(field: impl Into<String>, value: impl ToString, rule: impl Into<String>) -> Self {
        Self {
            field: field.into(),
            value: value.to_string(),
            rule: rule.into(),
        }
    }
}

impl Quota {
    /// Checks 0 < request ≤ limit ≤ 1 and finite values; `field` prefixes the names in errors.
    pub fn validate(&self, field: &str) -> Result<(), Invalid> {
        let share = |name: &str, value: f64| {
            if !(value.is_finite() && value > 0.0 && value <= 1.0) {
                return Err(Invalid::new(
                    format!("{field}.{name}"),
                    value,
                    "must be a fraction of the device in (0, 1]",
                ));
            }
            Ok(())
        };
        share("request", self.request)?;
        share("limit", self.limit)?;
        if self.request > self.limit {
            return Err(Invalid::new(
                format!("{field}.request"),
                self.request,
                format!("must not exceed {field}.limit ({})", self.limit),
            ));
        }
        if self.memory_bytes == Some(0) {
            return Err(Invalid::new(
                format!("{field}.memory_bytes"),
                0,
                "must be positive (omit it for no cap)",
            ));
        }
        Ok(())
    }

    /// This quota with `update` applied.
    pub fn updated(&self, update: &QuotaUpdate) -> Quota {
        Quota {
            request: update.request.unwrap_or(self.request),
            limit: update.limit.unwrap_or(self.limit),
            memory_bytes: update.memory_bytes.or(self.memory_bytes),
        }
    }
}

impl InstanceSpec {
    /// Checks everything that does not depend on the agent's state (devices and capacity are checked by the
    /// agent).
    pub fn validate(&self) -> Result<(), Invalid> {
        match self.command.first() {
            None => return Err(Invalid::new("command", "[]", "must name a program")),
            Some(program) if program.is_empty() => {
                return Err(Invalid::new("command[0]", "\"\"", "must name a program"));
            }
            Some(_) => {}
        }
        self.quota.validate("quota")?;
        for key in self.env.keys() {
            if key.is_empty() || key.contains('=') || key.contains('\0') {
                return Err(Invalid::new(
                    "env",
                    format!("{key:?}"),
                    "names must be non-empty without '=' or NUL",
                ));
            }
            if RESERVED_ENV.contains(&key.as_str()) {
                return Err(Invalid::new(
                    format!("env.{key}"),
                    &self.env[key],
                    "is set by the agent and cannot be overridden",
                ));
            }
        }
        if let Some(url) = &self.health_url
            && !url.starts_with("http://")
        {
            return Err(Invalid::new("health_url", url, "must be an http:// URL"));
        }
        if let Some(name) = &self.name
            && (name.is_empty()
                || name.len() > 63
                || !name
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_'))
        {
            return Err(Invalid::new(
                "name",
                name,
                "must be 1-63 characters of [A-Za-z0-9_-]",
            ));
        }
        Ok(())
    }
}

/// Environment variables the agent sets for every instance.
pub const RESERVED_ENV: [&str; 4] = [
    "DILU_QUOTA_FILE",
    "DILU_INSTANCE_ID",
    "DILU_DEVICE",
    "CUDA_VISIBLE_DEVICES",
];

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
        assert_eq!(spec.priority_class, PriorityClass::Inference);
        assert_eq!(spec.restart, RestartPolicy::OnFailure);
        spec.validate().unwrap();
    }

    #[test]
    fn quota_rules_name_field_value_and_rule() {
        let mut bad = spec();
        bad.quota.request = 0.8;
        assert_eq!(
            bad.validate().unwrap_err().to_string(),
            "quota.request = 0.8: must not exceed quota.limit (0.5)"
        );
        bad.quota = Quota {
            request: 0.0,
            limit: 1.0,
            memory_bytes: None,
        };
        assert_eq!(bad.validate().unwrap_err().field, "quota.request");
        bad.quota = Quota {
            request: 0.5,
            limit: 1.5,
            memory_bytes: None,
        };
        assert_eq!(bad.validate().unwrap_err().field, "quota.limit");
        bad.quota = Quota {
            request: f64::NAN,
            limit: 1.0,
            memory_bytes: None,
        };
        assert!(bad.validate().is_err());
    }

    #[test]
    fn reserved_env_and_empty_commands_are_refused() {
        let mut bad = spec();
        bad.env.insert("DILU_QUOTA_FILE".into(), "/x".into());
        assert_eq!(bad.validate().unwrap_err().field, "env.DILU_QUOTA_FILE");
        let mut bad = spec();
        bad.command.clear();
        assert_eq!(bad.validate().unwrap_err().field, "command");
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
