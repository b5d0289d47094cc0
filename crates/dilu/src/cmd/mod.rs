//! Subcommand implementations.

pub mod output;
pub mod sim;
