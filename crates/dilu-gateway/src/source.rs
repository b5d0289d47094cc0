//! Where the gateway learns what to route: an [`EndpointSource`] publishes the routing table (every inference
//! function with its request policy and ready instances) and hears about requests that wait for a function
//! with no ready instance (the activator's signal, which makes the control plane cold-start one). `dilu up`
//! feeds it from its reconciler; a cluster deployment can feed it from the API server's watch.

use std::sync::Arc;
use std::time::Duration;

use dilu_api::Route;
use tokio::sync::watch;

use crate::config::FunctionPolicy;

/// The routing table: one entry per inference function.
pub type RoutingTable = Arc<Vec<Route>>;

/// A source of routes for the gateway.
pub trait EndpointSource: Send + Sync + 'static {
    /// The routing table now; the receiver sees every later change.
    fn routes(&self) -> watch::Receiver<RoutingTable>;

    /// A request waits for `function`, which has no ready instance. Called on the request's task at most every
    /// 500 ms per function: it must not block.
    fn wake(&self, function: &str);
}

/// A routing table set by hand (tests, benchmarks, a gateway in front of fixed servers).
pub struct StaticEndpoints {
    tx: watch::Sender<RoutingTable>,
}

impl StaticEndpoints {
    /// A source publishing `routes`.
    pub fn new(routes: Vec<Route>) -> Arc<StaticEndpoints> {
        Arc::new(StaticEndpoints {
            tx: watch::Sender::new(Arc::new(routes)),
        })
    }

    /// Replaces the table.
    pub fn set(&self, routes: Vec<Route>) {
        self.tx.send_replace(Arc::new(routes));
    }
}

impl EndpointSource for StaticEndpoints {
    fn routes(&self) -> watch::Receiver<RoutingTable> {
        self.tx.subscribe()
    }

    fn wake(&self, _function: &str) {}
}

/// The gateway policy of a route.
pub fn policy_of(route: &Route) -> FunctionPolicy {
    let g = &route.gateway;
    FunctionPolicy {
        queue_capacity: g.queue as usize,
        max_outstanding_per_instance: g.max_outstanding_per_instance as usize,
        request_timeout: Duration::from_millis(g.timeout_ms),
        cold_start_timeout: Duration::from_millis(g.cold_start_timeout_ms),
        max_body_bytes: g.max_body as usize,
        slo: route.slo_ms.map(|ms| Duration::from_secs_f64(ms / 1000.0)),
    }
}
