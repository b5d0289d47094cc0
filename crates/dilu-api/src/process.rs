//! `runtime: process`: a function served by any server process the user names.
//!
//! ```yaml
//! runtime: process
//! process:
//!   command: ["python3", "serve.py", "--port", "$PORT"]   # program and arguments; no shell
//!   args: ["--model", "resnet18"]                         # more arguments (optional)
//!   env: { OMP_NUM_THREADS: "1" }
//!   workdir: /srv/resnet                                  # absolute; `dilu deploy` resolves it from the spec file
//!   readiness: /v2/health/ready                           # default by protocol
//!   protocol: v2                                          # v2 (inference) | training-status (training)
//!   device: auto                                          # auto | gpu | cpu
//!   max_batch: 8                                          # the largest batch the server forms
//!   ready_timeout_s: 120                                  # a start that takes longer fails
//!   sample: { inputs: [ ... ] }                           # a v2 request body for profiling (optional)
//!   image: registry.example.com/resnet:1.4                # Kubernetes: the image holding the program
//! ```
//!
//! The platform starts the process with `HOST` and `PORT` (where it must listen: 127.0.0.1 under `dilu up`, the
//! pod's IP on Kubernetes), `DILU_FUNCTION` (the model name it serves under `/v2/models/…`), `DILU_MAX_BATCH`
//! and, with an SLO, `DILU_SLO_MS` in its environment, and replaces `$HOST`, `${HOST}`, `$PORT` and `${PORT}` in
//! its arguments. On a GPU the CUDA interposer is preloaded, so its budget and memory cap hold.

use std::collections::BTreeMap;
use std::path::PathBuf;

use dilu_core::FieldError;
use dilu_core::ledger::DeviceClass;
use serde::{Deserialize, Serialize};

use crate::agent::RESERVED_ENV;

/// The variables the platform sets for a process and a spec cannot set (besides the agent's,
/// [`RESERVED_ENV`]): where to listen, the function's name, the batch and the SLO.
pub const PROCESS_ENV: [&str; 5] = [
    "HOST",
    "PORT",
    "DILU_FUNCTION",
    "DILU_MAX_BATCH",
    "DILU_SLO_MS",
];

/// The variables whose value is known only when an instance starts: `$HOST` and `$PORT` in a process's
/// arguments are left for it (`dilu deploy` does not expand them).
pub const LEFT_FOR_THE_INSTANCE: [&str; 2] = ["HOST", "PORT"];

/// What a process speaks.
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ProcessProtocol {
    /// The Open Inference Protocol v2 REST API (KServe v2, Triton): inference functions.
    V2,
    /// `GET /status` answers `{"iterations": N}` (training steps so far): training functions.
    TrainingStatus,
}

impl ProcessProtocol {
    /// The name used in specs.
    pub fn as_str(self) -> &'static str {
        match self {
            ProcessProtocol::V2 => "v2",
            ProcessProtocol::TrainingStatus => "training-status",
        }
    }

    /// The readiness path a server of this protocol answers by default.
    pub fn default_readiness(self) -> &'static str {
        match self {
            ProcessProtocol::V2 => "/v2/health/ready",
            ProcessProtocol::TrainingStatus => "/health",
        }
    }
}

/// Which class of device a process runs on.
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum DeviceChoice {
    /// A GPU when the cluster has one, else a CPU device.
    #[default]
    Auto,
    /// Always a GPU.
    Gpu,
    /// Always a CPU device.
    Cpu,
}

impl DeviceChoice {
    /// The device classes to place on, in order of preference: the first class the cluster has is used.
    pub fn classes(self) -> &'static [DeviceClass] {
        match self {
            DeviceChoice::Auto => &[DeviceClass::Gpu, DeviceClass::Cpu],
            DeviceChoice::Gpu => &[DeviceClass::Gpu],
            DeviceChoice::Cpu => &[DeviceClass::Cpu],
        }
    }

    fn is_auto(&self) -> bool {
        *self == DeviceChoice::Auto
    }
}

/// The settings of `runtime: process`.
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProcessSpec {
    /// The program and its first arguments (no shell). `$PORT`/`${PORT}` in an argument becomes the port.
    pub command: Vec<String>,
    /// More arguments, after the command's.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub args: Vec<String>,
    /// Extra environment.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub env: BTreeMap<String, String>,
    /// The working directory (absolute; the node agent's when omitted).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub workdir: Option<PathBuf>,
    /// The path that answers 2xx once the process serves (default: the protocol's).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub readiness: Option<String>,
    /// What it speaks (default: `v2` for inference, `training-status` for training).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub protocol: Option<ProcessProtocol>,
    /// The class of device it runs on.
    #[serde(default, skip_serializing_if = "DeviceChoice::is_auto")]
    pub device: DeviceChoice,
    /// The largest batch the server forms (inference; what profiling explores).
    #[serde(default = "one", skip_serializing_if = "is_one")]
    pub max_batch: u32,
    /// Seconds a start may take before it counts as failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ready_timeout_s: Option<u32>,
    /// A v2 inference request body that profiling sends (default: one built from the server's metadata).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "schema", schemars(schema_with = "any_object"))]
    pub sample: Option<serde_json::Value>,
    /// The container image that holds the program (required on Kubernetes, where the instance is a pod;
    /// `dilu up` runs the command on its own node and does not use it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<String>,
}

fn one() -> u32 {
    1
}

fn is_one(n: &u32) -> bool {
    *n == 1
}

#[cfg(feature = "schema")]
fn any_object(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
    schemars::json_schema!({"type": "object", "x-kubernetes-preserve-unknown-fields": true})
}

/// The most characters an environment value, argument or readiness path may have.
const MAX_TEXT: usize = 4096;

impl ProcessSpec {
    /// The protocol, or the default for a function that is (`true`) or is not inference.
    pub fn protocol_for(&self, inference: bool) -> ProcessProtocol {
        self.protocol.unwrap_or(if inference {
            ProcessProtocol::V2
        } else {
            ProcessProtocol::TrainingStatus
        })
    }

    /// The readiness path (the spec's, or the protocol's default).
    pub fn readiness_for(&self, inference: bool) -> String {
        self.readiness
            .clone()
            .unwrap_or_else(|| self.protocol_for(inference).default_readiness().to_string())
    }

    /// The program and every argument, `$HOST`/`${HOST}` replaced by `host` and `$PORT`/`${PORT}` by `port`.
    pub fn command_line(&self, host: &str, port: u16) -> Vec<String> {
        let port = port.to_string();
        self.command
            .iter()
            .chain(&self.args)
            .map(|a| {
                a.replace("${PORT}", &port)
                    .replace("$PORT", &port)
                    .replace("${HOST}", host)
                    .replace("$HOST", host)
            })
            .collect()
    }

    /// Checks every rule that does not depend on the node, for a function that is (`true`) or is not
    /// inference; errors name fields under `process.`.
    pub fn validate(&self, inference: bool) -> Result<(), FieldError> {
        match self.command.first() {
            None => {
                return Err(FieldError::new(
                    "process.command",
                    "[]",
                    "must name a program (and its arguments)",
                ));
            }
            Some(p) if p.trim().is_empty() => {
                return Err(FieldError::new(
                    "process.command[0]",
                    format!("{p:?}"),
                    "must name a program",
                ));
            }
            Some(_) => {}
        }
        for (field, list) in [
            ("process.command", &self.command),
            ("process.args", &self.args),
        ] {
            for (i, a) in list.iter().enumerate() {
                FieldError::require(
                    !a.contains('\0') && a.len() <= MAX_TEXT,
                    format!("{field}[{i}]"),
                    format!("{:?}", a.chars().take(40).collect::<String>()),
                    format!("must be at most {MAX_TEXT} bytes without NUL"),
                )?;
            }
        }
        for (key, value) in &self.env {
            let name_ok = !key.is_empty()
                && !key.starts_with(|c: char| c.is_ascii_digit())
                && key.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
            FieldError::require(
                name_ok,
                format!("process.env.{key}"),
                format!("{key:?}"),
                "a variable name is letters, digits and _, not starting with a digit",
            )?;
            FieldError::require(
                !RESERVED_ENV.contains(&key.as_str()) && !PROCESS_ENV.contains(&key.as_str()),
                format!("process.env.{key}"),
                value,
                "is set by the platform and cannot be overridden",
            )?;
            FieldError::require(
                !value.contains('\0') && value.len() <= MAX_TEXT,
                format!("process.env.{key}"),
                format!("{:?}", value.chars().take(40).collect::<String>()),
                format!("must be at most {MAX_TEXT} bytes without NUL"),
            )?;
        }
        if let Some(dir) = &self.workdir {
            FieldError::require(
                dir.is_absolute(),
                "process.workdir",
                dir.display(),
                "must be an absolute path (`dilu deploy` resolves a relative one from the spec's folder)",
            )?;
        }
        if let Some(path) = &self.readiness {
            FieldError::require(
                path.starts_with('/')
                    && path.len() <= MAX_TEXT
                    && path.bytes().all(|b| b.is_ascii_graphic()),
                "process.readiness",
                path,
                "must be an HTTP path starting with / (printable ASCII, no spaces)",
            )?;
        }
        let protocol = self.protocol_for(inference);
        let fits = match protocol {
            ProcessProtocol::V2 => inference,
            ProcessProtocol::TrainingStatus => !inference,
        };
        FieldError::require(
            fits,
            "process.protocol",
            protocol.as_str(),
            if inference {
                "an inference function speaks v2"
            } else {
                "a training function speaks training-status"
            },
        )?;
        FieldError::require(
            (1..=256).contains(&self.max_batch),
            "process.max_batch",
            self.max_batch,
            "must be in 1..=256",
        )?;
        if let Some(t) = self.ready_timeout_s {
            FieldError::require(
                (1..=3600).contains(&t),
                "process.ready_timeout_s",
                t,
                "must be in 1..=3600 seconds",
            )?;
        }
        if let Some(image) = &self.image {
            FieldError::require(
                !image.is_empty()
                    && image.len() <= MAX_TEXT
                    && image.bytes().all(|b| b.is_ascii_graphic()),
                "process.image",
                format!("{:?}", image.chars().take(40).collect::<String>()),
                "must be an image reference (printable ASCII, no spaces), such as registry.example.com/app:1.0",
            )?;
        }
        if let Some(sample) = &self.sample {
            FieldError::require(
                inference,
                "process.sample",
                "(present)",
                "only an inference function takes a sample request",
            )?;
            let inputs_ok = sample
                .get("inputs")
                .and_then(|i| i.as_array())
                .is_some_and(|i| !i.is_empty());
            FieldError::require(
                inputs_ok,
                "process.sample",
                "(as written)",
                "must be a v2 inference request body with a non-empty \"inputs\" list",
            )?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(yaml: &str) -> ProcessSpec {
        serde_yaml::from_str(yaml).unwrap()
    }

    #[test]
    fn defaults_follow_the_function_kind() {
        let p = spec("command: [python3, serve.py]");
        assert_eq!(p.max_batch, 1);
        assert_eq!(p.device, DeviceChoice::Auto);
        assert_eq!(p.protocol_for(true), ProcessProtocol::V2);
        assert_eq!(p.readiness_for(true), "/v2/health/ready");
        assert_eq!(p.readiness_for(false), "/health");
        p.validate(true).unwrap();
        p.validate(false).unwrap();
        // Defaults are not written back, so a spec's key is what the user wrote.
        assert_eq!(
            serde_json::to_string(&p).unwrap(),
            r#"{"command":["python3","serve.py"]}"#
        );
    }

    #[test]
    fn the_host_and_port_are_substituted_in_every_argument() {
        let p = spec(
            "command: [srv, --host, $HOST, --port, $PORT]\nargs: [\"--url=http://${HOST}:${PORT}/x\"]",
        );
        assert_eq!(
            p.command_line("127.0.0.1", 8123),
            [
                "srv",
                "--host",
                "127.0.0.1",
                "--port",
                "8123",
                "--url=http://127.0.0.1:8123/x"
            ]
        );
        // In a pod the kubelet expands the pod's IP.
        assert_eq!(p.command_line("$(POD_IP)", 8080)[2], "$(POD_IP)");
    }

    #[test]
    fn bad_specs_name_the_field() {
        let cases = [
            ("command: []", "process.command"),
            ("command: ['  ']", "process.command[0]"),
            ("command: [x]\nenv: {PORT: '1'}", "process.env.PORT"),
            (
                "command: [x]\nenv: {DILU_QUOTA_FILE: /x}",
                "process.env.DILU_QUOTA_FILE",
            ),
            ("command: [x]\nenv: {'A-B': x}", "process.env.A-B"),
            ("command: [x]\nworkdir: rel/dir", "process.workdir"),
            ("command: [x]\nreadiness: health", "process.readiness"),
            (
                "command: [x]\nprotocol: training-status",
                "process.protocol",
            ),
            ("command: [x]\nmax_batch: 0", "process.max_batch"),
            (
                "command: [x]\nready_timeout_s: 0",
                "process.ready_timeout_s",
            ),
            ("command: [x]\nsample: {data: 1}", "process.sample"),
            ("command: [x]\nenv: {HOST: 0.0.0.0}", "process.env.HOST"),
            (
                "command: [x]\nenv: {DILU_SLO_MS: '5'}",
                "process.env.DILU_SLO_MS",
            ),
            ("command: [x]\nimage: ''", "process.image"),
            ("command: [x]\nimage: 'my image'", "process.image"),
        ];
        for (yaml, field) in cases {
            let e = spec(yaml).validate(true).unwrap_err();
            assert_eq!(e.field, field, "{yaml}: {e}");
        }
        let e = spec("command: [x]\nsample: {inputs: [{}]}")
            .validate(false)
            .unwrap_err();
        assert_eq!(e.field, "process.sample");
    }

    #[test]
    fn device_preferences() {
        assert_eq!(
            DeviceChoice::Auto.classes(),
            [DeviceClass::Gpu, DeviceClass::Cpu]
        );
        assert_eq!(DeviceChoice::Cpu.classes(), [DeviceClass::Cpu]);
        let p = spec("command: [x]\ndevice: gpu");
        assert_eq!(p.device, DeviceChoice::Gpu);
    }
}
