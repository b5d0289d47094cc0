//! `dilu gateway`: the inference gateway on its own, until SIGTERM or SIGINT, in front of fixed servers
//! ([`dilu_gateway::StaticEndpoints`]) or of a cluster's functions ([`dilu_k8s::endpoints::KubeEndpoints`]).
//!
//! Every `--route NAME=URL[,URL...]` deploys function `NAME` on the gateway with those instances (any server
//! speaking the Open Inference Protocol v2 that serves model `NAME`, e.g. `dilu worker --name NAME`). With
//! `--kubernetes` instead, the routes are the inference `Function` objects of `--namespace` with their ready
//! pods, and a request waiting for a function at zero instances annotates its Function (the activator). The
//! gateway applies its usual policy to them (queueing with 429, deadlines, one retry elsewhere on a transport
//! failure) and serves `GET /metrics` and `GET /v1/load` (the arrival counts the cluster's controller pulls;
//! behind `--token-file`'s bearer token when given) besides its `/v2` routes. It binds `--listen` (after the
//! first list of the cluster's objects, with `--kubernetes`) and prints `dilu gateway listening on
//! http://ADDR` on stdout.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use clap::Args;
use dilu_api::spec::GatewaySpec;
use dilu_api::{Endpoint, Route};
use dilu_core::units::parse_bytes;
use dilu_gateway::{EndpointSource, Gateway, GatewayConfig, GatewayService, StaticEndpoints};
use dilu_http::guard::Token;
use dilu_http::{EventLoops, Limits};
use dilu_k8s::endpoints::KubeEndpoints;

use crate::cmd::worker::{bind_and_announce, termination};

/// One `--route NAME=URL[,URL...]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RouteArg {
    function: String,
    urls: Vec<String>,
}

/// Parses `NAME=URL[,URL...]` (URLs `http://HOST:PORT`, a trailing slash allowed).
fn parse_route(text: &str) -> Result<RouteArg, String> {
    let (name, urls) = text
        .split_once('=')
        .ok_or_else(|| format!("{text:?}: expected NAME=URL[,URL...]"))?;
    let name = name.trim();
    if name.is_empty() || name.contains('/') {
        return Err(format!(
            "{text:?}: the function name must be non-empty and contain no '/'"
        ));
    }
    let urls: Vec<String> = urls
        .split(',')
        .map(str::trim)
        .filter(|u| !u.is_empty())
        .map(str::to_string)
        .collect();
    if urls.is_empty() {
        return Err(format!("{text:?}: at least one instance URL is needed"));
    }
    if let Some(bad) = urls.iter().find(|u| !u.starts_with("http://")) {
        return Err(format!(
            "{text:?}: {bad:?} is not an http:// URL (the gateway speaks plain HTTP/1.1 to instances)"
        ));
    }
    Ok(RouteArg {
        function: name.to_string(),
        urls,
    })
}

/// Parses a byte size such as `64MiB`.
fn parse_size(text: &str) -> Result<u64, String> {
    parse_bytes(text).map_err(|e| e.to_string())
}

/// Arguments of `dilu gateway`.
#[derive(Debug, Args)]
pub struct GatewayArgs {
    /// Address to serve on (port 0 picks a free port; the bound address is printed).
    #[arg(long, default_value = "127.0.0.1:8080")]
    listen: SocketAddr,
    /// A function and its instances: `NAME=URL[,URL...]`, e.g. `relu=http://127.0.0.1:8001`. Repeatable.
    /// Needed unless `--kubernetes` is given.
    #[arg(long = "route", value_parser = parse_route)]
    routes: Vec<RouteArg>,
    /// Route the cluster's functions: the inference `Function` objects of `--namespace` and their ready pods
    /// (API server from `KUBECONFIG`, `~/.kube/config` or the pod's service account).
    #[arg(long)]
    kubernetes: bool,
    /// With `--kubernetes`: the namespace of the functions (default: the configuration's, `default` outside
    /// a cluster).
    #[arg(long)]
    namespace: Option<String>,
    /// A file holding the bearer token that `GET /v1/load` requires (default: none required).
    #[arg(long)]
    token_file: Option<PathBuf>,
    /// With `--kubernetes`: how long to wait for the first list of Functions and pods before giving up.
    #[arg(long, default_value_t = 30)]
    sync_timeout_s: u64,
    /// Concurrent requests one instance is given; more wait in the queue. With `--kubernetes` each function's
    /// spec (`gateway:`) sets this and the two flags below.
    #[arg(long, default_value_t = GatewaySpec::default().max_outstanding_per_instance)]
    max_outstanding_per_instance: u32,
    /// Requests that may wait for an instance slot per function; one more is answered 429.
    #[arg(long, default_value_t = GatewaySpec::default().queue)]
    queue: u32,
    /// Whole-request deadline, milliseconds (504 past it).
    #[arg(long, default_value_t = GatewaySpec::default().timeout_ms)]
    timeout_ms: u64,
    /// Largest request body (413 above it).
    #[arg(long, default_value = "64MiB", value_parser = parse_size)]
    max_body: u64,
    /// Event loops serving clients and forwarding to instances, one thread each [default: one per CPU].
    #[arg(long, value_parser = clap::value_parser!(u16).range(1..=1024))]
    threads: Option<u16>,
}

/// Where the routes come from.
enum Routes {
    /// `--route`: fixed.
    Fixed(Vec<Route>),
    /// `--kubernetes`: the cluster's functions in this namespace (`None`: the configuration's).
    Kubernetes { namespace: Option<String> },
}

/// Where the flags say the routes come from: `--route` or `--kubernetes`, exactly one of them.
fn source_of(args: &GatewayArgs) -> Result<Routes> {
    match (args.kubernetes, args.routes.is_empty()) {
        (true, false) => bail!(
            "--route and --kubernetes exclude each other: with --kubernetes the routes are the cluster's \
             Function objects and their ready pods; without it, give every function with --route NAME=URL"
        ),
        (false, true) => bail!(
            "no routes: give --route NAME=URL[,URL...] (fixed instances) or --kubernetes (the cluster's functions)"
        ),
        (false, false) if args.namespace.is_some() => {
            bail!("--namespace applies only with --kubernetes")
        }
        (true, true) => Ok(Routes::Kubernetes {
            namespace: args.namespace.clone(),
        }),
        (false, false) => Ok(Routes::Fixed(routes(args)?)),
    }
}

/// Reads `--token-file`: its content less surrounding whitespace, which must not be empty.
fn token(args: &GatewayArgs) -> Result<Option<Token>> {
    let Some(path) = &args.token_file else {
        return Ok(None);
    };
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("--token-file {}: reading", path.display()))?;
    let secret = text.trim();
    if secret.is_empty() {
        bail!(
            "--token-file {}: the file is empty (rule: it holds the bearer token)",
            path.display()
        );
    }
    Ok(Some(Token::new(secret, path.display().to_string())))
}

/// The policy flags' own rules.
fn check_policy_flags(args: &GatewayArgs) -> Result<()> {
    if args.max_outstanding_per_instance == 0 {
        bail!("--max-outstanding-per-instance must be at least 1");
    }
    if args.timeout_ms == 0 {
        bail!("--timeout-ms must be at least 1");
    }
    Ok(())
}

/// The routing table the flags describe; a function named twice is refused.
fn routes(args: &GatewayArgs) -> Result<Vec<Route>> {
    check_policy_flags(args)?;
    let spec = GatewaySpec {
        queue: args.queue,
        max_outstanding_per_instance: args.max_outstanding_per_instance,
        timeout_ms: args.timeout_ms,
        max_body: args.max_body,
        ..GatewaySpec::default()
    };
    let mut table: Vec<Route> = Vec::new();
    for route in &args.routes {
        if table.iter().any(|r| r.function == route.function) {
            bail!("--route {}: the function is routed twice", route.function);
        }
        table.push(Route {
            function: route.function.clone(),
            gateway: spec,
            slo_ms: None,
            endpoints: route
                .urls
                .iter()
                .enumerate()
                .map(|(i, url)| Endpoint {
                    instance: format!("{}-{i}", route.function),
                    url: url.clone(),
                })
                .collect(),
        });
    }
    Ok(table)
}

/// The gateway's service plus `GET /metrics` and `GET /v1/load` (behind `token` when there is one).
fn service(gateway: &Arc<Gateway>, token: Option<Token>) -> GatewayService {
    let metrics = Arc::clone(gateway);
    let service = gateway.service().with_routes(gateway.load_router(token));
    service.with_routes(axum::Router::new().route(
        "/metrics",
        axum::routing::get(move || {
            let gateway = Arc::clone(&metrics);
            async move {
                let mut out = String::new();
                gateway.render_metrics(&mut out);
                (
                    [(
                        axum::http::header::CONTENT_TYPE,
                        "text/plain; version=0.0.4",
                    )],
                    out,
                )
            }
        }),
    ))
}

/// Runs `dilu gateway` until SIGTERM or SIGINT.
///
/// Clients are served by `--threads` event loops, each a single-threaded runtime on its own thread that
/// serves its connections start to end, forwarding over its own keep-alive connections to the instances
/// (nginx's worker processes, as threads). The loops accept from one socket and keep their connection counts
/// even ([`dilu_http::balance`]); a request never changes threads, so no request pays for waking another
/// thread. The routing state (queues, slots, counters) is shared by all of them.
pub fn run(args: GatewayArgs) -> Result<()> {
    let routes = source_of(&args)?;
    let token = token(&args)?;
    let config = GatewayConfig {
        max_body_bytes: usize::try_from(args.max_body).unwrap_or(usize::MAX),
        ..GatewayConfig::default()
    };
    let control = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    let loops = control.block_on(async {
        let stop = termination()?;
        let gateway = Gateway::new(config);
        let source: Arc<dyn EndpointSource> = match routes {
            Routes::Fixed(table) => StaticEndpoints::new(table),
            Routes::Kubernetes { namespace } => {
                let source = KubeEndpoints::connect(namespace.as_deref())
                    .await
                    .context("--kubernetes")?;
                source
                    .synced(Duration::from_secs(args.sync_timeout_s.max(1)))
                    .await
                    .context("--kubernetes")?;
                source
            }
        };
        let _following = gateway.follow(Arc::clone(&source));
        let listener = bind_and_announce("gateway", args.listen)
            .await?
            .into_std()
            .context("preparing the listener")?;
        let loops = EventLoops::start(
            listener,
            args.threads.map_or_else(EventLoops::per_cpu, usize::from),
            "dilu-gateway",
            service(&gateway, token),
            Limits::default(),
        )
        .context("starting the event loops")?;
        stop.await;
        drop(source);
        anyhow::Ok(loops)
    })?;
    loops.stop().context("serving the gateway")
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        args: GatewayArgs,
    }

    fn args(flags: &[&str]) -> GatewayArgs {
        Cli::try_parse_from(std::iter::once("gateway").chain(flags.iter().copied()))
            .unwrap()
            .args
    }

    fn refusal(flags: &[&str]) -> String {
        match source_of(&args(flags)) {
            Ok(_) => panic!("{flags:?} accepted"),
            Err(e) => e.to_string(),
        }
    }

    #[test]
    fn routes_come_from_route_flags_or_the_cluster_never_both() {
        let err = refusal(&["--kubernetes", "--route", "f=http://127.0.0.1:1"]);
        assert!(
            err.contains("--route and --kubernetes exclude each other"),
            "{err}"
        );
        let err = refusal(&[]);
        assert!(
            err.contains("--route") && err.contains("--kubernetes"),
            "{err}"
        );
        let err = refusal(&["--route", "f=http://127.0.0.1:1", "--namespace", "ml"]);
        assert!(
            err.contains("--namespace applies only with --kubernetes"),
            "{err}"
        );
        match source_of(&args(&["--kubernetes", "--namespace", "ml"])) {
            Ok(Routes::Kubernetes { namespace }) => assert_eq!(namespace.as_deref(), Some("ml")),
            _ => panic!("--kubernetes --namespace ml refused"),
        }
        match source_of(&args(&["--route", "f=http://127.0.0.1:1"])) {
            Ok(Routes::Fixed(table)) => assert_eq!(table[0].function, "f"),
            _ => panic!("--route refused"),
        }
    }

    #[test]
    fn the_token_file_is_read_and_must_not_be_empty() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("token");
        std::fs::write(&path, "s3cret\n").unwrap();
        let given = args(&["--kubernetes", "--token-file", path.to_str().unwrap()]);
        let read = token(&given).unwrap().unwrap();
        let mut headers = axum::http::HeaderMap::new();
        headers.insert(
            axum::http::header::AUTHORIZATION,
            "Bearer s3cret".parse().unwrap(),
        );
        assert!(read.presented_in(&headers));
        std::fs::write(&path, " \n").unwrap();
        let err = token(&given).unwrap_err().to_string();
        assert!(
            err.contains("--token-file") && err.contains("empty"),
            "{err}"
        );
        assert!(token(&args(&["--kubernetes"])).unwrap().is_none());
    }

    #[test]
    fn routes_parse_and_refuse_junk() {
        assert_eq!(
            parse_route("relu=http://127.0.0.1:8001,http://127.0.0.1:8002/"),
            Ok(RouteArg {
                function: "relu".into(),
                urls: vec![
                    "http://127.0.0.1:8001".into(),
                    "http://127.0.0.1:8002/".into()
                ],
            })
        );
        assert!(parse_route("relu").is_err());
        assert!(parse_route("=http://x:1").is_err());
        assert!(parse_route("a/b=http://x:1").is_err());
        assert!(parse_route("relu=").is_err());
        assert!(parse_route("relu=https://x:1").is_err());
    }
}
