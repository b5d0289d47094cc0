//! Dilu's node agent. It owns the node's devices, starts and supervises function instances, and every window
//! re-divides each device's compute among the instances on it (vertical scaling) by writing their quota
//! channels — the vertical controller the policy registry selects (RCKM for `dilu`), the code the simulator
//! runs, fed with the instances' real counters.

pub mod agent;
pub mod attached;
pub mod cgroup;
pub mod config;
pub mod device;
pub mod health;
pub mod nvml;
pub mod state;
pub mod supervisor;
pub mod ticker;
pub mod tokens;

pub use agent::{Agent, AgentError};
pub use attached::AttachedStatus;
pub use config::AgentConfig;
pub mod api;
pub mod metrics;
