//! `dilu gateway`: the inference gateway on its own, in front of fixed servers ([`dilu_gateway::StaticEndpoints`]),
//! until SIGTERM or SIGINT.
//!
//! Every `--route NAME=URL[,URL...]` deploys function `NAME` on the gateway with those instances (any server
//! speaking the Open Inference Protocol v2 that serves model `NAME`, e.g. `dilu worker --name NAME`). The
//! gateway applies its usual policy to them (queueing with 429, deadlines, one retry elsewhere on a transport
//! failure) and serves `GET /metrics` besides its `/v2` routes. It binds `--listen` first and prints
//! `dilu gateway listening on http://ADDR` on stdout.

use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::{Context, Result, bail};
use clap::Args;
use dilu_api::spec::GatewaySpec;
use dilu_api::{Endpoint, Route};
use dilu_core::units::parse_bytes;
use dilu_gateway::{Gateway, GatewayConfig, GatewayService, StaticEndpoints};
use dilu_http::Limits;
use tokio::sync::watch;

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
    #[arg(long = "route", value_parser = parse_route, required = true)]
    routes: Vec<RouteArg>,
    /// Concurrent requests one instance is given; more wait in the queue.
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
    /// Event loops serving clients and forwarding to instances, one thread each.
    #[arg(long, default_value_t = 2)]
    threads: usize,
}

/// The routing table the flags describe; a function named twice is refused.
fn routes(args: &GatewayArgs) -> Result<Vec<Route>> {
    if args.max_outstanding_per_instance == 0 {
        bail!("--max-outstanding-per-instance must be at least 1");
    }
    if args.timeout_ms == 0 {
        bail!("--timeout-ms must be at least 1");
    }
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

/// The gateway's service plus `GET /metrics`.
fn service(gateway: &Arc<Gateway>) -> GatewayService {
    let metrics = Arc::clone(gateway);
    gateway.service().with_routes(axum::Router::new().route(
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
/// accepts from the one listening socket and serves its connections start to end, forwarding over its own
/// keep-alive connections to the instances (nginx's worker processes, as threads). A request never changes
/// threads, so no request pays for waking another thread. The routing state (queues, slots, counters) is
/// shared by all of them.
pub fn run(args: GatewayArgs) -> Result<()> {
    let table = routes(&args)?;
    if args.threads == 0 {
        bail!("--threads must be at least 1");
    }
    let config = GatewayConfig {
        max_body_bytes: usize::try_from(args.max_body).unwrap_or(usize::MAX),
        ..GatewayConfig::default()
    };
    let open_files = dilu_http::raise_open_file_limit();
    let limits = Limits {
        max_connections: Some((Limits::connection_cap(open_files) / args.threads).max(16)),
        ..Limits::default()
    };
    let control = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    let (stop_tx, stop_rx) = watch::channel(false);
    let mut loops = Vec::with_capacity(args.threads);
    let result: Result<()> = control.block_on(async {
        let stop = termination()?;
        let gateway = Gateway::new(config);
        let source = StaticEndpoints::new(table);
        let _following = gateway.follow(source.clone());
        let service = service(&gateway);
        let listener = bind_and_announce("gateway", args.listen)
            .await?
            .into_std()
            .context("preparing the listener")?;
        for i in 0..args.threads {
            let listener = listener
                .try_clone()
                .context("sharing the listener between threads")?;
            let (service, limits, mut stop) = (service.clone(), limits.clone(), stop_rx.clone());
            let event_loop = move || -> Result<()> {
                let runtime = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .context("starting an event loop")?;
                runtime.block_on(async move {
                    let listener = tokio::net::TcpListener::from_std(listener)
                        .context("registering the listener")?;
                    let stopped = async move {
                        let _ = stop.wait_for(|stop| *stop).await;
                    };
                    dilu_http::serve(listener, service, limits, stopped)
                        .await
                        .context("serving the gateway")
                })
            };
            loops.push(
                std::thread::Builder::new()
                    .name(format!("dilu-gateway-{i}"))
                    .spawn(event_loop)
                    .context("starting an event-loop thread")?,
            );
        }
        stop.await;
        drop(source);
        Ok(())
    });
    let _ = stop_tx.send(true);
    for event_loop in loops {
        match event_loop.join() {
            Ok(served) => served?,
            Err(_) => bail!("an event-loop thread panicked"),
        }
    }
    result
}

#[cfg(test)]
mod tests {
    use super::*;

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
