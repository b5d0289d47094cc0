//! What an instance asks for: its kind, GPU count, per-GPU SM request/limit and memory, CPU and host memory,
//! and the GPU models it accepts.

use crate::error::FieldError;
use serde::{Deserialize, Serialize};
use std::fmt;

/// SM capacity of one GPU in milli-units: 1000 = all streaming multiprocessors of the device.
pub const SM_MILLI: u32 = 1000;

/// What an instance does; placement policies treat the kinds differently (`docs/algorithms.md` §2, §4).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "kebab-case")]
pub enum InstanceKind {
    /// Latency-critical inference with a modest memory footprint.
    Inference,
    /// Large-language-model inference: latency-critical with a large memory footprint.
    LlmInference,
    /// Elastic training: throughput-oriented, gang-placed on one node, squeezable.
    Training,
    /// A generic pod of a cluster trace (e.g. Alibaba openb), with no Dilu semantics attached.
    Pod,
}

impl InstanceKind {
    /// Latency-critical inference of either kind (served before training on a shared device).
    pub fn is_inference(self) -> bool {
        matches!(self, InstanceKind::Inference | InstanceKind::LlmInference)
    }

    /// The name used in traces and on the command line.
    pub fn as_str(self) -> &'static str {
        match self {
            InstanceKind::Inference => "inference",
            InstanceKind::LlmInference => "llm-inference",
            InstanceKind::Training => "training",
            InstanceKind::Pod => "pod",
        }
    }
}

impl fmt::Display for InstanceKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The resources one instance asks for. Per-GPU quantities apply to each of its `gpu_count` GPUs.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct InstanceRequest {
    /// What the instance does.
    pub kind: InstanceKind,
    /// Function (service) the instance belongs to; replicas of one function share it. Used for affinity.
    pub service: Option<String>,
    /// Number of GPUs (0 for a CPU-only instance).
    pub gpu_count: u32,
    /// Guaranteed SM share per GPU, in milli (1000 = whole GPU).
    pub sm_request: u32,
    /// Most SM share per GPU the instance may burst to, in milli; never below `sm_request`.
    pub sm_limit: u32,
    /// GPU memory per GPU, MiB.
    pub gpu_mem_mib: u64,
    /// CPU, milli-cores.
    pub cpu_milli: u64,
    /// Host memory, MiB.
    pub mem_mib: u64,
    /// GPU models the instance accepts; empty means any.
    pub gpu_types: Vec<String>,
}

impl InstanceRequest {
    /// A CPU-only request (no GPU fields), e.g. a CPU pod of a cluster trace.
    pub fn cpu_only(kind: InstanceKind, cpu_milli: u64, mem_mib: u64) -> Self {
        InstanceRequest {
            kind,
            service: None,
            gpu_count: 0,
            sm_request: 0,
            sm_limit: 0,
            gpu_mem_mib: 0,
            cpu_milli,
            mem_mib,
            gpu_types: Vec::new(),
        }
    }

    /// Checks the invariants every accepted request holds: a GPU instance asks for a share in
    /// (0, 1000] milli per GPU with request ≤ limit ≤ 1000; a CPU-only instance asks for no GPU resources.
    pub fn validate(&self) -> Result<(), FieldError> {
        let err = |field: &str, value: String, rule: &str| Err(FieldError::new(field, value, rule));
        if self.gpu_count == 0 {
            if self.sm_request != 0 {
                return err(
                    "sm_request",
                    self.sm_request.to_string(),
                    "must be 0 when gpu_count is 0",
                );
            }
            if self.sm_limit != 0 {
                return err(
                    "sm_limit",
                    self.sm_limit.to_string(),
                    "must be 0 when gpu_count is 0",
                );
            }
            if self.gpu_mem_mib != 0 {
                return err(
                    "gpu_mem_mib",
                    self.gpu_mem_mib.to_string(),
                    "must be 0 when gpu_count is 0",
                );
            }
            return Ok(());
        }
        if self.sm_request == 0 {
            return err(
                "sm_request",
                "0".into(),
                "a GPU instance must request a share above 0",
            );
        }
        if self.sm_request > SM_MILLI {
            return err(
                "sm_request",
                self.sm_request.to_string(),
                "must be at most 1000 milli (one GPU)",
            );
        }
        if self.sm_limit > SM_MILLI {
            return err(
                "sm_limit",
                self.sm_limit.to_string(),
                "must be at most 1000 milli (one GPU)",
            );
        }
        if self.sm_limit < self.sm_request {
            return err(
                "sm_limit",
                format!("{} (sm_request {})", self.sm_limit, self.sm_request),
                "must be at least sm_request",
            );
        }
        if self.gpu_count > 1 && self.sm_request < SM_MILLI && self.kind == InstanceKind::Pod {
            return err(
                "sm_request",
                format!("{} with gpu_count {}", self.sm_request, self.gpu_count),
                "a multi-GPU pod must take whole GPUs (1000 milli each)",
            );
        }
        Ok(())
    }

    /// Total SM request over all GPUs, milli.
    pub fn total_sm_request(&self) -> u64 {
        u64::from(self.sm_request) * u64::from(self.gpu_count)
    }

    /// True for a single-GPU request of less than a whole GPU (a "share" pod in FGD's terms).
    pub fn is_share(&self) -> bool {
        self.gpu_count == 1 && self.sm_request < SM_MILLI
    }

    /// The GPU-affinity tag FGD's clustering policy groups pods by: 0 for a share pod, k for k whole GPUs,
    /// `None` for a CPU-only pod.
    pub fn affinity_tag(&self) -> Option<u32> {
        match self.gpu_count {
            0 => None,
            _ if self.is_share() => Some(0),
            k => Some(k),
        }
    }

    /// The accepted GPU models joined with `|`, as the openb trace writes them.
    pub fn gpu_types_joined(&self) -> String {
        self.gpu_types.join("|")
    }
}
