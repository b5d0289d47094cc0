//! What the gateway routes by: for every inference function, its request policy and the instances ready to
//! serve it. The control plane publishes these; the gateway follows them (through its `EndpointSource`).

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
