//! `dilu kube`: Dilu on Kubernetes (`docs/kubernetes.md`). `crd` prints the Function CustomResourceDefinition;
//! `controller` and `scheduler` are the cluster's control plane, each run with leader election so that 2+
//! replicas can run (one works, the others wait to take over). Both reach the API server through the usual
//! kubeconfig (`KUBECONFIG`, `~/.kube/config`) or the pod's service account.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use anyhow::{Context, Result};
use clap::{Args, Subcommand};
use dilu_control::LoadSource;
use dilu_control::load::NoLoad;
use dilu_core::policy::{Policy, PolicyName};
use dilu_k8s::controller::ControllerOptions;
use dilu_k8s::leader::{Election, lead};
use dilu_k8s::load::{PullConfig, PulledLoad};
use dilu_k8s::scheduler::SchedulerConfig;

use crate::cmd::kube_metrics::{self, MetricsListen, Render};
use crate::cmd::worker::termination;

/// `dilu kube …`.
#[derive(Debug, Subcommand)]
pub enum KubeCommand {
    /// Print the Function CustomResourceDefinition (what `deploy/crd.yaml` holds).
    Crd,
    /// The controller: reconciles each Function into instance Pods (profiling, scaling, rolling updates,
    /// scale to zero) and writes its status.
    Controller(ControllerArgs),
    /// dilu-scheduler: binds pending Dilu pods to a node and device with the policy's placer.
    Scheduler(SchedulerArgs),
}

/// Flags shared by the controller and the scheduler: leader election and the metrics endpoint.
#[derive(Debug, Args)]
pub struct ReplicaArgs {
    /// Namespace of the Lease.
    #[arg(long, default_value = "dilu-system")]
    lease_namespace: String,
    /// This replica's identity among replicas (default: `$POD_NAME`, else host name and pid).
    #[arg(long)]
    identity: Option<String>,
    /// Seconds a lease stays valid after its last renewal: how long a dead leader blocks a standby.
    #[arg(long, default_value_t = 15)]
    lease_seconds: u64,
    /// Run without leader election (one replica only).
    #[arg(long)]
    no_leader_election: bool,
    /// Where `GET /metrics` (Prometheus text) and `GET /healthz` are served, or `off`.
    #[arg(long, default_value = "0.0.0.0:9090")]
    metrics_listen: MetricsListen,
}

impl ReplicaArgs {
    fn election(&self, lease: &str) -> Election {
        let identity = self.identity.clone().unwrap_or_else(|| {
            std::env::var("POD_NAME").unwrap_or_else(|_| {
                let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
                    .map(|h| h.trim().to_string())
                    .unwrap_or_else(|_| "host".into());
                format!("{host}-{}", std::process::id())
            })
        });
        let mut e = Election::new(&self.lease_namespace, lease, &identity);
        e.duration_s = self.lease_seconds.max(2);
        e.grace_s = (e.duration_s / 3).max(1);
        e
    }
}

/// Arguments of `dilu kube controller`.
#[derive(Debug, Args)]
pub struct ControllerArgs {
    /// Namespace of the Functions and their pods.
    #[arg(long, default_value = "default")]
    namespace: String,
    /// Image of the instance pods (its entrypoint is the `dilu` binary).
    #[arg(long, default_value = "ghcr.io/dilu-platform/dilu:0.1.0")]
    image: String,
    /// Policy whose placer, scalers and quota rules run (dilu, exclusive, infless, fast-gshare, tgs, …).
    #[arg(long, default_value = "dilu")]
    policy: String,
    /// A gateway (`http://HOST:PORT`) whose arrival counts (`GET /v1/load`, once a second) feed the horizontal
    /// scaler. Repeatable: one per gateway replica.
    #[arg(long = "gateway")]
    gateways: Vec<String>,
    /// File holding the gateways' bearer token, when they require one.
    #[arg(long)]
    gateway_token_file: Option<std::path::PathBuf>,
    /// The URL clients use, shown in each function's status (default: the first `--gateway`).
    #[arg(long)]
    public_url: Option<String>,
    /// Namespace of the node agents' Leases: the pods of a node whose Lease ran out are replaced.
    #[arg(long, default_value = dilu_k8s::meta::NODE_LEASE_NAMESPACE)]
    node_lease_namespace: String,
    #[command(flatten)]
    replica: ReplicaArgs,
}

/// Arguments of `dilu kube scheduler`.
#[derive(Debug, Args)]
pub struct SchedulerArgs {
    /// Namespace whose pods it binds (default: every namespace).
    #[arg(long)]
    namespace: Option<String>,
    /// Policy whose placer places.
    #[arg(long, default_value = "dilu")]
    policy: String,
    /// Namespace of the node agents' Leases: nothing is placed on a node whose Lease ran out.
    #[arg(long, default_value = dilu_k8s::meta::NODE_LEASE_NAMESPACE)]
    node_lease_namespace: String,
    #[command(flatten)]
    replica: ReplicaArgs,
}

fn policy_name(name: &str) -> Result<PolicyName> {
    name.parse()
        .map_err(|e| anyhow::anyhow!("--policy {name:?}: {e}"))
}

fn policy(name: &str) -> Result<Policy> {
    Ok(Policy::named(policy_name(name)?))
}

/// Runs `dilu kube …`.
pub fn run(command: KubeCommand) -> Result<()> {
    match command {
        KubeCommand::Crd => {
            print!("{}", dilu_k8s::crd::definition_yaml()?);
            Ok(())
        }
        KubeCommand::Controller(args) => crate::cmd::worker::runtime()?.block_on(controller(args)),
        KubeCommand::Scheduler(args) => crate::cmd::worker::runtime()?.block_on(scheduler(args)),
    }
}

/// A client for the API server: from `kubeconfig` when given, else KUBECONFIG, ~/.kube/config or the pod's
/// service account.
pub(crate) async fn client(kubeconfig: Option<&std::path::Path>) -> Result<kube::Client> {
    match kubeconfig {
        Some(path) => {
            let file = kube::config::Kubeconfig::read_from(path)
                .with_context(|| format!("--kubeconfig {}", path.display()))?;
            let config = kube::Config::from_custom_kubeconfig(
                file,
                &kube::config::KubeConfigOptions::default(),
            )
            .await
            .with_context(|| format!("--kubeconfig {}", path.display()))?;
            kube::Client::try_from(config).context("a Kubernetes client from --kubeconfig")
        }
        None => kube::Client::try_default().await.context(
            "connecting to the Kubernetes API server (KUBECONFIG, ~/.kube/config or the pod's service account)",
        ),
    }
}

async fn controller(args: ControllerArgs) -> Result<()> {
    let client = client(None).await?;
    let mut options = ControllerOptions::new(&args.namespace, &args.image);
    options.policy = policy(&args.policy)?;
    options.node_lease_namespace = Some(args.node_lease_namespace.clone());
    options.gateway_url = args
        .public_url
        .clone()
        .or_else(|| args.gateways.first().cloned());
    let load: Arc<dyn LoadSource> = if args.gateways.is_empty() {
        Arc::new(NoLoad)
    } else {
        let token = match &args.gateway_token_file {
            Some(path) => Some(
                std::fs::read_to_string(path)
                    .with_context(|| format!("--gateway-token-file {}", path.display()))?
                    .trim()
                    .to_string(),
            ),
            None => None,
        };
        Arc::new(
            PulledLoad::start(PullConfig::new(args.gateways.clone(), token))
                .context("--gateway")?,
        )
    };
    let render: Render = {
        let (running, events) = (options.running.clone(), options.event_counts.clone());
        Arc::new(move |out: &mut String| {
            running.render_metrics(out);
            events.render(out);
        })
    };
    replica(
        client,
        &args.replica,
        "dilu-controller",
        ("controller", render),
        |client, stop| dilu_k8s::controller::run(client, options, load, stop),
    )
    .await
}

async fn scheduler(args: SchedulerArgs) -> Result<()> {
    let client = client(None).await?;
    let config = SchedulerConfig {
        namespace: args.namespace.clone(),
        policy: policy_name(&args.policy)?,
        node_lease_namespace: Some(args.node_lease_namespace.clone()),
        ..SchedulerConfig::default()
    };
    let render: Render = {
        let (counters, events) = (config.counters.clone(), config.event_counts.clone());
        Arc::new(move |out: &mut String| {
            counters.render(out);
            events.render(out);
        })
    };
    replica(
        client,
        &args.replica,
        "dilu-scheduler",
        ("scheduler", render),
        |client, stop| dilu_k8s::scheduler::run(client, config, stop),
    )
    .await
}

/// Runs `work` until SIGTERM or SIGINT: at once with `--no-leader-election`, else while this replica holds
/// `lease` (its `stop` future then also completes when the lease is lost). Meanwhile serves the metrics
/// endpoint of `component` with `render` (`--metrics-listen`). An error of `work` is the command's.
async fn replica<F, Fut, E>(
    client: kube::Client,
    flags: &ReplicaArgs,
    lease: &'static str,
    (component, render): (&'static str, Render),
    work: F,
) -> Result<()>
where
    F: FnOnce(kube::Client, Pin<Box<dyn Future<Output = ()> + Send>>) -> Fut,
    Fut: Future<Output = Result<(), E>>,
    E: std::error::Error + Send + Sync + 'static,
{
    let shutdown = termination()?;
    let leading = Arc::new(AtomicBool::new(false));
    kube_metrics::serve(
        flags.metrics_listen,
        component,
        Arc::clone(&leading),
        render,
    )
    .await?;
    let working = |client, stop| {
        leading.store(true, Ordering::Relaxed);
        let done = work(client, stop);
        async {
            let result = done.await;
            leading.store(false, Ordering::Relaxed);
            result
        }
    };
    if flags.no_leader_election {
        return working(client, Box::pin(shutdown)).await.context(lease);
    }
    let work_client = client.clone();
    let mut failure = None;
    lead(client, &flags.election(lease), shutdown, |stop| async {
        failure = working(work_client, stop).await.err();
    })
    .await
    .context(lease)?;
    match failure {
        Some(e) => Err(e).context(lease),
        None => Ok(()),
    }
}
