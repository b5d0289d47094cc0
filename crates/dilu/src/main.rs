//! `dilu`: the one binary of the Dilu platform. Today it runs the placement simulators and the trace generator;
//! the platform's subcommands (`up`, `deploy`, `agent`, …) arrive with later work.

mod cmd;

use anyhow::Result;
use clap::{Parser, Subcommand};

/// Dilu: GPU resourcing-on-demand for serverless deep learning.
#[derive(Debug, Parser)]
#[command(name = "dilu", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Simulators: replay cluster traces against placement policies.
    Sim {
        #[command(subcommand)]
        command: cmd::sim::SimCommand,
    },
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Command::Sim { command } => cmd::sim::run(command),
    }
}
