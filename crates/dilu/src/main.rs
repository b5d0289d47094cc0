//! `dilu`: the one binary of the Dilu platform: the platform (`up`, `deploy`, `ls`, `status`, `invoke`,
//! `events`, `delete`), its processes (`agent`, `worker`, `train`), the simulators and profiler, and quota channels.

mod cmd;

use anyhow::Result;
use clap::{Parser, Subcommand};

/// Dilu: GPU resourcing-on-demand for serverless deep learning.
///
/// Start the platform with `dilu up`, deploy a function with `dilu deploy -f SPEC`, and watch it with `dilu ls`,
/// `dilu status` and `dilu events -f`.
#[derive(Debug, Parser)]
#[command(
    name = "dilu",
    version,
    about,
    after_help = "Commands are listed in this order: the platform (up … delete), the model cache, Kubernetes, the \
                  processes the platform runs (agent, worker, train, gateway), then the simulators and the \
                  profiler. Test tools (quota, burn) are left out of this list; `dilu quota --help` and `dilu \
                  burn --help` describe them."
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Start the platform on this machine: control plane, gateway and a local node agent in one process.
    Up(cmd::up::UpArgs),
    /// Deploy a function from a spec file (create, or replace the spec of an existing function).
    Deploy(cmd::client::DeployArgs),
    /// List functions with their status, instances, quota and capacity.
    Ls(cmd::client::ListArgs),
    /// Show devices and, on each, the instances with their quotas, shares and usage.
    Status(cmd::client::ListArgs),
    /// Send one inference request (a v2 JSON body) to a function through the gateway.
    Invoke(cmd::client::InvokeArgs),
    /// Every decision the platform took, with its reason (placement, profiling, scaling, vertical shares,
    /// quotas, exits); -f follows them live.
    Events(cmd::events::EventsArgs),
    /// Delete a function (its instances drain, then stop).
    Delete(cmd::client::DeleteArgs),
    /// The local model cache: fetch the example models and requests, list them, print a model's path.
    Models {
        #[command(subcommand)]
        command: cmd::models::ModelsCommand,
    },
    /// Dilu on Kubernetes: the Function CRD, the controller and dilu-scheduler.
    Kube {
        #[command(subcommand)]
        command: cmd::kube::KubeCommand,
    },
    /// The node agent: devices, the per-device token manager, instance supervision and its local API.
    Agent(cmd::agent::AgentArgs),
    /// Serve one ONNX model over the Open Inference Protocol v2 (the built-in worker) until SIGTERM/SIGINT.
    Worker(cmd::worker::WorkerArgs),
    /// A training function: trains an MLP on synthetic data under a CPU quota, serving /health, /status and
    /// /metrics.
    Train(cmd::train::TrainArgs),
    /// The inference gateway on its own, in front of fixed instances (`--route NAME=URL[,URL...]`), until
    /// SIGTERM/SIGINT.
    Gateway(cmd::gateway::GatewayArgs),
    /// Simulators: replay cluster traces against placement policies.
    Sim {
        #[command(subcommand)]
        command: cmd::sim::SimCommand,
    },
    /// Profile a function on a recorded table: batch size and SM share for an inference SLO (Hybrid Growth
    /// Search), or the SM share of a training job (bisection).
    Profile(cmd::profile::ProfileArgs),
    /// Quota channels (the shared-memory files through which the agent budgets an instance): create, show,
    /// set. A test tool.
    #[command(hide = true)]
    Quota {
        #[command(subcommand)]
        command: cmd::quota::QuotaCommand,
    },
    /// A CPU load for testing the agent: spins in units of work charged to a CPU quota channel, prints JSON
    /// progress lines, optionally serves GET /health. A test tool.
    #[command(hide = true)]
    Burn(cmd::burn::BurnArgs),
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    // Servers need descriptors for their connections; take what the hard limit allows (each listener
    // still caps its connections below it).
    dilu_http::raise_open_file_limit();
    match cli.command {
        Command::Sim { command } => cmd::sim::run(command),
        Command::Profile(args) => cmd::profile::run(args),
        Command::Quota { command } => cmd::quota::run(command),
        Command::Agent(args) => cmd::agent::run(args),
        Command::Burn(args) => cmd::burn::run(args),
        Command::Worker(args) => cmd::worker::run(args),
        Command::Gateway(args) => cmd::gateway::run(args),
        Command::Train(args) => cmd::train::run(args),
        Command::Models { command } => cmd::models::run(command),
        Command::Up(args) => cmd::up::run(args),
        Command::Deploy(args) => cmd::client::deploy(args),
        Command::Ls(args) => cmd::client::ls(args),
        Command::Status(args) => cmd::client::status(args),
        Command::Invoke(args) => cmd::client::invoke(args),
        Command::Events(args) => cmd::events::run(args),
        Command::Delete(args) => cmd::client::delete(args),
        Command::Kube { command } => cmd::kube::run(command),
    }
}
