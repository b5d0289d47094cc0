//! `dilu up`: the embedded default — control plane, gateway and a local node agent in one process, with
//! everything (store, agent state, quota channels, logs, API token) under one data directory.

use std::io::Write;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{Context, Result, bail};
use clap::Args;
use dilu_http::guard::HostPolicy;
use dilu_http::{EventLoops, Limits};
use dilu_server::platform::{Platform, PlatformConfig};

use super::agent::{NodeArgs, start_agent};
use super::worker::termination;

/// Arguments of `dilu up`.
#[derive(Debug, Args)]
pub struct UpArgs {
    /// Directory for the store, the agent's state, quota channels, logs and the API token.
    #[arg(long, default_value = "dilu-data", env = "DILU_DATA_DIR")]
    data_dir: PathBuf,
    /// Address of the API and gateway (port 0 picks a free port; the URL is printed at start).
    #[arg(long, default_value = "127.0.0.1:8080")]
    listen: std::net::SocketAddr,
    /// API token for mutating endpoints (default: the one in DATA_DIR/token, created at first start).
    #[arg(long, env = "DILU_TOKEN", hide_env_values = true)]
    token: Option<String>,
    /// Name of the local node.
    #[arg(long, default_value = "local")]
    node_name: String,
    /// On SIGTERM/SIGINT leave instances running for the next `dilu up` to adopt (default: stop them; the
    /// functions stay in the store and come back on the next start either way).
    #[arg(long)]
    keep_instances: bool,
    /// Event loops serving the API and the gateway, one thread each (as `dilu gateway --threads`): a request
    /// is read, forwarded and answered on one of them [default: one per CPU].
    #[arg(long, value_parser = clap::value_parser!(u16).range(1..=1024))]
    threads: Option<u16>,
    #[command(flatten)]
    node: NodeArgs,
}

/// Runs the platform until SIGTERM or SIGINT.
pub fn run(args: UpArgs) -> Result<()> {
    let policy = args.node.policy()?;
    let claimed = super::datadir::claim(&args.data_dir, "--data-dir")?;
    let data_dir = claimed.path.clone();
    let agent_dir = super::datadir::claim(&data_dir.join("agent"), "--data-dir")?;
    let token = match &args.token {
        Some(t) if t.trim().is_empty() => bail!("--token: must not be empty"),
        Some(t) => t.trim().to_string(),
        None => dilu_http::token::load_or_create(&data_dir.join("token"))
            .context("the API token (mutating endpoints need it)")?,
    };
    let agent_config = args.node.agent_config(agent_dir.path.clone())?;
    let agent = start_agent(agent_config, "dilu up")?;
    let program = std::env::current_exe().context("finding the dilu binary for instances")?;
    let mut config = PlatformConfig::new(data_dir.clone(), program, policy.clone());
    config.node_name = args.node_name.clone();

    // The control plane runs on this runtime; clients are served by the event loops.
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    let result: Result<()> = runtime.block_on(async {
        // Installed first: a SIGTERM while the control plane starts (adopting instances, say) is kept and
        // acted on once it has, instead of killing the process mid-way.
        let stop = termination()?;
        let platform =
            Platform::start(config, Arc::clone(&agent)).context("starting the control plane")?;
        let listener = tokio::net::TcpListener::bind(args.listen)
            .await
            .with_context(|| format!("binding {}", args.listen))?
            .into_std()
            .context("preparing the listener")?;
        let address = listener.local_addr()?;
        let host = HostPolicy::for_listener(address);
        let service = dilu_server::api::service(Arc::clone(&platform), token, host);
        let loops = EventLoops::start(
            listener,
            args.threads.map_or_else(EventLoops::per_cpu, usize::from),
            "dilu-up-http",
            service,
            Limits::default(),
        )
        .context("starting the event loops")?;
        println!("dilu up: serving on http://{address}");
        let c = policy.components();
        eprintln!(
            "dilu up: policy {} (placer {}, vertical {}, horizontal {})",
            c.policy, c.placer, c.vertical, c.horizontal
        );
        println!(
            "dilu up: data in {}; API token in {}",
            data_dir.display(),
            data_dir.join("token").display()
        );
        std::io::stdout().flush()?;
        stop.await;
        eprintln!("dilu up: shutting down");
        // Requests in flight finish (up to the listeners' grace) before the instances stop.
        tokio::task::spawn_blocking(move || loops.stop())
            .await
            .context("waiting for the event loops")?
            .context("serving the API")?;
        if args.keep_instances {
            platform.stop().await;
        } else {
            platform.stop_all_instances().await;
        }
        Ok(())
    });
    agent.shutdown();
    result
}
