//! `dilu up`: the embedded default — control plane, gateway and a local node agent in one process, with
//! everything (store, agent state, quota channels, logs, API token) under one data directory.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{Context, Result, bail};
use clap::Args;
use dilu_server::platform::{Platform, PlatformConfig};

use super::agent::{NodeArgs, start_agent, termination};

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
    #[command(flatten)]
    node: NodeArgs,
}

/// The token in `data_dir/token`, created (0600, random) when absent.
pub fn load_or_create_token(data_dir: &Path) -> Result<String> {
    use std::os::unix::fs::OpenOptionsExt;
    let path = data_dir.join("token");
    if let Ok(text) = std::fs::read_to_string(&path) {
        let token = text.trim().to_string();
        if !token.is_empty() {
            return Ok(token);
        }
    }
    let mut bytes = [0u8; 24];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| std::io::Read::read_exact(&mut f, &mut bytes))
        .context("reading /dev/urandom for the API token")?;
    let token: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    let tmp = data_dir.join("token.tmp");
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)
        .with_context(|| format!("writing {}", tmp.display()))?;
    writeln!(file, "{token}")?;
    file.sync_all()?;
    std::fs::rename(&tmp, &path).with_context(|| format!("writing {}", path.display()))?;
    Ok(token)
}

/// Runs the platform until SIGTERM or SIGINT.
pub fn run(args: UpArgs) -> Result<()> {
    let policy = args.node.policy()?;
    std::fs::create_dir_all(&args.data_dir)
        .with_context(|| format!("creating {}", args.data_dir.display()))?;
    let data_dir = std::fs::canonicalize(&args.data_dir)
        .with_context(|| format!("resolving {}", args.data_dir.display()))?;
    let token = match &args.token {
        Some(t) if t.trim().is_empty() => bail!("--token: must not be empty"),
        Some(t) => t.trim().to_string(),
        None => load_or_create_token(&data_dir)?,
    };
    let agent_config = args.node.agent_config(data_dir.join("agent"))?;
    let agent = start_agent(agent_config, "dilu up")?;
    let program = std::env::current_exe().context("finding the dilu binary for instances")?;
    let mut config = PlatformConfig::new(data_dir.clone(), program, policy.clone());
    config.node_name = args.node_name.clone();

    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    let result: Result<()> = runtime.block_on(async {
        let platform =
            Platform::start(config, Arc::clone(&agent)).context("starting the control plane")?;
        let listener = tokio::net::TcpListener::bind(args.listen)
            .await
            .with_context(|| format!("binding {}", args.listen))?;
        let address = listener.local_addr()?;
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
        dilu_server::api::serve(Arc::clone(&platform), token, listener, termination())
            .await
            .context("serving the API")?;
        eprintln!("dilu up: shutting down");
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
