//! Subcommand implementations.

pub mod agent;
pub mod burn;
pub mod output;
pub mod profile;
pub mod quota;
pub mod serve;
pub mod sim;
