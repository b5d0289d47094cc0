//! What the gateway routes by: for every inference function, its request policy and the instances ready to
//! serve it. The control plane publishes these; the gateway follows them (through its `EndpointSource`). In a
//! cluster the controller pulls each gateway's [`LoadReport`].

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::spec::GatewaySpec;

/// A ready instance of a function.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Endpoint {
    /// The instance's id (unique within the function).
    pub instance: String,
    /// Where its Open Inference Protocol v2 server listens, e.g. `http://127.0.0.1:9001`.
    pub url: String,
}

/// One function's routing.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Route {
    /// The function.
    pub function: String,
    /// How the gateway treats its requests.
    pub gateway: GatewaySpec,
    /// Its latency objective, milliseconds.
    pub slo_ms: Option<f64>,
    /// Its ready instances.
    pub endpoints: Vec<Endpoint>,
}

/// What a gateway reports at `GET /v1/load` (JSON
/// `{"functions": {"NAME": {"arrivals": N, "answered": N, "late": N, "queued_now": N, "in_flight": {"INSTANCE":
/// N}}}}`): one entry per function it routes. Arrivals, answers and late answers are counted since the previous
/// report, so the endpoint has one consumer (the leader controller, which sums the reports of every gateway
/// replica).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LoadReport {
    /// Per function, by name.
    #[serde(default)]
    pub functions: BTreeMap<String, FunctionLoad>,
}

/// One function's traffic at one gateway.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct FunctionLoad {
    /// Requests that arrived since the previous report.
    #[serde(default)]
    pub arrivals: u64,
    /// Requests answered (or failed) since the previous report.
    #[serde(default)]
    pub answered: u64,
    /// Of those, the ones answered after the function's SLO or refused or failed by the platform.
    #[serde(default)]
    pub late: u64,
    /// Requests waiting for an instance slot now.
    #[serde(default)]
    pub queued_now: u64,
    /// Requests in flight now, per instance (instances with none may be left out).
    #[serde(default)]
    pub in_flight: BTreeMap<String, u64>,
}
