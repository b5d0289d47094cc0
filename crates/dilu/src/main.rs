//! `dilu`: the one binary of the Dilu platform. Today it runs the placement simulators, the trace generator and
//! the profiler, and manages quota channels; the platform's subcommands (`up`, `deploy`, `agent`, …) arrive with later work.

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
    /// Profile a function on a recorded table: batch size and SM share for an inference SLO (Hybrid Growth
    /// Search), or the SM share of a training job (bisection).
    Profile(cmd::profile::ProfileArgs),
    /// The node agent: devices, the per-device token manager, instance supervision and its local API.
    Agent(cmd::agent::AgentArgs),
    /// Quota channels (the shared-memory files through which the agent budgets an instance): create, show,
    /// set.
    Quota {
        #[command(subcommand)]
        command: cmd::quota::QuotaCommand,
    },
    /// A CPU load for testing the agent: spins in units of work charged to a CPU quota channel, prints JSON
    /// progress lines, optionally serves GET /health.
    Burn(cmd::burn::BurnArgs),
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Command::Sim { command } => cmd::sim::run(command),
        Command::Profile(args) => cmd::profile::run(args),
        Command::Quota { command } => cmd::quota::run(command),
        Command::Agent(args) => cmd::agent::run(args),
        Command::Burn(args) => cmd::burn::run(args),
    }
}
