//! Subcommand implementations.

pub mod output;
pub mod profile;
pub mod quota;
pub mod serve;
pub mod sim;
