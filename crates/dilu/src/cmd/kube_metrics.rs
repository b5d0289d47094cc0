//! The metrics and health endpoint of `dilu kube controller` and `dilu kube scheduler`: `GET /metrics`
//! (Prometheus text: whether this replica leads, and the component's own families) and `GET /healthz` (the
//! process serves; for a liveness probe). Read-only, so it needs no token, as `dilu up`'s `/metrics`.

use std::net::SocketAddr;
use std::str::FromStr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use anyhow::{Context, Result};
use axum::Router;
use axum::http::header;
use axum::response::IntoResponse;
use axum::routing::get;
use dilu_core::prometheus::Family;

/// Where the endpoint listens: an address, or `off`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MetricsListen(pub Option<SocketAddr>);

impl FromStr for MetricsListen {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s == "off" {
            return Ok(MetricsListen(None));
        }
        s.parse().map(|a| MetricsListen(Some(a))).map_err(|_| {
            format!("{s:?} is not an address to listen on (such as 0.0.0.0:9090), nor off")
        })
    }
}

/// What `/metrics` renders besides the leader gauge.
pub type Render = Arc<dyn Fn(&mut String) + Send + Sync>;

/// Serves the endpoint on `listen` for `component` (`controller`, `scheduler`) until the process ends; prints
/// the address it listens on. `leading` says whether this replica does the work now.
pub async fn serve(
    listen: MetricsListen,
    component: &'static str,
    leading: Arc<AtomicBool>,
    render: Render,
) -> Result<()> {
    let Some(addr) = listen.0 else {
        return Ok(());
    };
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .with_context(|| format!("--metrics-listen {addr}"))?;
    let bound = listener.local_addr().context("--metrics-listen")?;
    println!("dilu kube {component}: metrics on http://{bound}/metrics");
    let metrics = move || {
        let mut out = String::new();
        Family::new(
            &mut out,
            "dilu_kube_leader",
            "gauge",
            "1 while this replica leads (does the work), 0 while it waits to take over.",
        )
        .sample(
            &[("component", component)],
            if leading.load(Ordering::Relaxed) {
                1.0
            } else {
                0.0
            },
        );
        render(&mut out);
        (
            [(
                header::CONTENT_TYPE,
                "text/plain; version=0.0.4; charset=utf-8",
            )],
            out,
        )
            .into_response()
    };
    let router = Router::new()
        .route("/metrics", get(move || std::future::ready(metrics())))
        .route("/healthz", get(|| std::future::ready("ok\n")));
    tokio::spawn(async move {
        if let Err(e) = dilu_http::serve(
            listener,
            router,
            dilu_http::Limits::default(),
            std::future::pending(),
        )
        .await
        {
            eprintln!("dilu kube {component}: serving metrics: {e}");
        }
    });
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_address_or_off() {
        assert_eq!(
            "127.0.0.1:0".parse::<MetricsListen>().unwrap(),
            MetricsListen(Some("127.0.0.1:0".parse().unwrap()))
        );
        assert_eq!("off".parse::<MetricsListen>().unwrap(), MetricsListen(None));
        let e = "9090".parse::<MetricsListen>().unwrap_err();
        assert!(e.contains("\"9090\"") && e.contains("0.0.0.0:9090"), "{e}");
    }
}
