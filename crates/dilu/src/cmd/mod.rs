//! Subcommand implementations.

pub mod agent;
pub mod agent_kube;
pub mod burn;
pub mod client;
pub mod datadir;
pub mod gateway;
pub mod kube;
pub mod models;
pub mod output;
pub mod profile;
pub mod quota;
pub mod serve;
pub mod sim;
pub mod train;
pub mod up;
pub mod worker;
