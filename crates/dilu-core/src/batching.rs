//! In-instance dynamic batching (`docs/algorithms.md` §7), shared by the serving simulator and the worker: a batch
//! closes when it is full or when its first request has waited `wait`; once a second `wait` is re-derived from
//! the arrival rate and the mean batch execution time ē: no wait when a batch finishes before the next request
//! is due (ē < 1/RPS), otherwise ē/6 (ē/8 for LLMs). Every policy gets the same batcher, so that differences
//! come from resourcing.

use crate::error::FieldError;
use crate::request::InstanceKind;
use serde::{Deserialize, Serialize};

/// The batcher's constants.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct BatchingConfig {
    /// Wait = ē / this, for regular inference.
    pub wait_divisor: f64,
    /// Wait = ē / this, for LLM inference.
    pub llm_wait_divisor: f64,
}

impl Default for BatchingConfig {
    fn default() -> Self {
        BatchingConfig {
            wait_divisor: 6.0,
            llm_wait_divisor: 8.0,
        }
    }
}

impl BatchingConfig {
    /// Checks the divisors.
    pub fn validate(&self) -> Result<(), FieldError> {
        for (field, value) in [
            ("wait_divisor", self.wait_divisor),
            ("llm_wait_divisor", self.llm_wait_divisor),
        ] {
            if !(value >= 1.0 && value.is_finite()) {
                return Err(FieldError::new(
                    format!("batching.{field}"),
                    value,
                    "must be a number ≥ 1",
                ));
            }
        }
        Ok(())
    }

    /// The batching wait in nanoseconds for a mean execution time `exec_s` and a per-instance arrival rate.
    pub fn wait_ns(&self, kind: InstanceKind, exec_s: f64, rps: f64) -> u64 {
        if !(exec_s.is_finite() && exec_s > 0.0) || rps <= 0.0 || exec_s < 1.0 / rps {
            return 0;
        }
        let divisor = if kind == InstanceKind::LlmInference {
            self.llm_wait_divisor
        } else {
            self.wait_divisor
        };
        (exec_s / divisor * 1e9).round() as u64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn waits_only_when_requests_come_faster_than_batches_finish() {
        let c = BatchingConfig::default();
        // ē = 30 ms, 20 rps → a request every 50 ms: no wait.
        assert_eq!(c.wait_ns(InstanceKind::Inference, 0.030, 20.0), 0);
        // 100 rps → every 10 ms: wait ē/6 = 5 ms (ē/8 for LLMs).
        assert_eq!(c.wait_ns(InstanceKind::Inference, 0.030, 100.0), 5_000_000);
        assert_eq!(
            c.wait_ns(InstanceKind::LlmInference, 0.032, 100.0),
            4_000_000
        );
        assert_eq!(c.wait_ns(InstanceKind::Inference, 0.030, 0.0), 0);
    }
}
