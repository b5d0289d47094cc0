//! The control plane's view of a node: the agent operations it needs, behind a trait so that the embedded
//! default (an agent in the same process) and remote agents (their HTTP API) are interchangeable.

use std::sync::Arc;

use dilu_agent::Agent;
use dilu_agent::agent::{AgentError, InstanceView};
use dilu_agent::device::Device;
use dilu_agent::instance::{InstanceSpec, QuotaUpdate};
use dilu_agent::tokens::DeviceBudgetView;

/// A node the control plane places instances on.
pub trait NodeClient: Send + Sync {
    /// The node's name (unique in the cluster).
    fn name(&self) -> &str;
    /// Its devices.
    fn devices(&self) -> Vec<Device>;
    /// Starts an instance.
    fn create_instance(
        &self,
        spec: InstanceSpec,
        overcommit: bool,
    ) -> Result<InstanceView, AgentError>;
    /// Changes an instance's quota (applied by the token manager at once).
    fn update_quota(
        &self,
        id: &str,
        update: QuotaUpdate,
        overcommit: bool,
    ) -> Result<InstanceView, AgentError>;
    /// Stops an instance (blocks for its stop grace at most).
    fn delete_instance(&self, id: &str) -> Result<(), AgentError>;
    /// Every instance the node runs.
    fn instances(&self) -> Vec<InstanceView>;
    /// Per-device budgeting state.
    fn device_budgets(&self) -> Vec<DeviceBudgetView>;
    /// The node's Prometheus metrics.
    fn metrics(&self) -> String;
    /// The end of an instance's log (at most `max_bytes`).
    fn logs(&self, id: &str, max_bytes: u64) -> Result<String, AgentError>;
    /// Notes from device discovery (why no GPU was found, …).
    fn notes(&self) -> Vec<String>;
}

/// The embedded default: the agent runs in the control plane's process.
pub struct LocalNode {
    name: String,
    agent: Arc<Agent>,
}

impl LocalNode {
    /// Wraps an agent started in this process.
    pub fn new(name: impl Into<String>, agent: Arc<Agent>) -> Self {
        Self {
            name: name.into(),
            agent,
        }
    }

    /// The agent.
    pub fn agent(&self) -> &Arc<Agent> {
        &self.agent
    }
}

impl NodeClient for LocalNode {
    fn name(&self) -> &str {
        &self.name
    }

    fn devices(&self) -> Vec<Device> {
        self.agent.devices().to_vec()
    }

    fn create_instance(
        &self,
        spec: InstanceSpec,
        overcommit: bool,
    ) -> Result<InstanceView, AgentError> {
        self.agent.create_instance(spec, overcommit)
    }

    fn update_quota(
        &self,
        id: &str,
        update: QuotaUpdate,
        overcommit: bool,
    ) -> Result<InstanceView, AgentError> {
        self.agent.update_quota(id, update, overcommit)
    }

    fn delete_instance(&self, id: &str) -> Result<(), AgentError> {
        self.agent.delete_instance(id)
    }

    fn instances(&self) -> Vec<InstanceView> {
        self.agent.instances()
    }

    fn device_budgets(&self) -> Vec<DeviceBudgetView> {
        self.agent.device_budgets()
    }

    fn metrics(&self) -> String {
        dilu_agent::metrics::render(&self.agent)
    }

    fn logs(&self, id: &str, max_bytes: u64) -> Result<String, AgentError> {
        self.agent.logs(id, max_bytes)
    }

    fn notes(&self) -> Vec<String> {
        self.agent.notes().to_vec()
    }
}
