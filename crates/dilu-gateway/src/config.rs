//! The gateway's configuration and the plain data the control plane exchanges with it.

use std::time::Duration;

/// Default body limit, both gateway-wide and per function: 64 MiB.
pub const DEFAULT_MAX_BODY_BYTES: usize = 64 * 1024 * 1024;

/// Gateway-wide settings, fixed when the gateway is built.
#[derive(Clone, Debug)]
pub struct GatewayConfig {
    /// Largest request body the gateway accepts for any function (a function's own limit applies too; the
    /// smaller one wins). Default 64 MiB.
    pub max_body_bytes: usize,
    /// How long opening a TCP connection to an instance may take before the attempt counts as a transport
    /// failure (the instance is then skipped for 2 s and the request tried elsewhere). Default 1 s.
    pub connect_timeout: Duration,
}

impl Default for GatewayConfig {
    fn default() -> Self {
        GatewayConfig {
            max_body_bytes: DEFAULT_MAX_BODY_BYTES,
            connect_timeout: Duration::from_secs(1),
        }
    }
}

/// How the gateway treats one function's requests.
#[derive(Clone, Debug)]
pub struct FunctionPolicy {
    /// Requests allowed to wait for an instance slot; one more is answered 429 at once. Default 256.
    pub queue_capacity: usize,
    /// Concurrent requests one instance is given. Default 8.
    pub max_outstanding_per_instance: usize,
    /// Deadline of the whole request (body upload, queueing and the upstream call); past it: 504. Default 30 s.
    pub request_timeout: Duration,
    /// The most a request waits while the function has no ready instance; past it: 503. Default 60 s.
    pub cold_start_timeout: Duration,
    /// Largest request body for this function (the gateway-wide limit applies too); above it: 413. Default 64 MiB.
    pub max_body_bytes: usize,
    /// Latency objective: a request whose gateway latency exceeds it counts as an SLO violation. Default none.
    pub slo: Option<Duration>,
}

impl Default for FunctionPolicy {
    fn default() -> Self {
        FunctionPolicy {
            queue_capacity: 256,
            max_outstanding_per_instance: 8,
            request_timeout: Duration::from_secs(30),
            cold_start_timeout: Duration::from_secs(60),
            max_body_bytes: DEFAULT_MAX_BODY_BYTES,
            slo: None,
        }
    }
}

/// What happened to a function's requests since the previous [`crate::Gateway::take_window`] call.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct WindowCounts {
    /// Inference requests received (for a known function).
    pub arrivals: u64,
    /// Inference requests answered with a 2xx response from an instance.
    pub completed: u64,
    /// Inference requests answered otherwise (a gateway error, an instance's error status) or abandoned by
    /// their client.
    pub failed: u64,
    /// Of the completed and failed ones, those answered after the function's SLO or refused or failed by the
    /// platform (429, 5xx).
    pub late: u64,
    /// Requests waiting for an instance slot right now (not reset).
    pub queued_now: u64,
    /// Requests being served by instances right now (not reset).
    pub outstanding_now: u64,
}
