//! The inference gateway: the Open Inference Protocol v2 (KServe v2 / Triton REST) in front of a function's
//! instances.
//!
//! Every instance serves one model named like its function. The gateway forwards
//! `POST /v2/models/{function}[/versions/{v}]/infer` bodies byte for byte (content type kept) to the ready
//! instance with the fewest in-flight requests, and relays the instance's status, content type and body
//! unchanged. Around that it adds what a shared platform needs:
//!
//! - a per-function cap of in-flight requests per instance, and a bounded FIFO queue beyond it (429 with
//!   `Retry-After` when full);
//! - cold starts: with no ready instance a request waits (queued) up to the function's `cold_start_timeout`
//!   for [`Gateway::set_endpoints`], and the cold-start hook asks the control plane for an instance;
//! - a whole-request deadline (504), body limits enforced while reading (413);
//! - one retry on another instance when the first fails at the transport level (the failed instance gets no
//!   new requests for 2 s); HTTP error statuses from instances are relayed, never retried. A kept-alive
//!   connection that the instance closed while it was idle is not a failure: the request goes once more, on a
//!   new connection to the same instance;
//! - after a burst of large bodies, the memory they took is returned to the system (glibc);
//! - per-function window counts for the autoscaler ([`Gateway::take_window`]; for a controller in another
//!   process, `GET /v1/load` from [`Gateway::load_router`]) and Prometheus metrics
//!   ([`Gateway::render_metrics`]).
//!
//! Errors the gateway makes itself are JSON `{"error": "..."}` (see [`GatewayError`]).
//!
//! Forwarding takes one task per request and nothing else: the gateway's own HTTP/1.1 client writes the
//! request and reads the answer on the request's task over pooled keep-alive connections (a stack per
//! thread). [`Gateway::router`] serves the routes through `axum`; [`Gateway::service`] serves the same
//! routes but recognises inference requests by their path first, for a listener that serves only the
//! gateway (`dilu gateway`).
//!
//! What to route comes from an [`EndpointSource`] ([`Gateway::follow`]); [`Gateway::upsert_function`] and
//! [`Gateway::set_endpoints`] set it by hand.
//!
//! ```no_run
//! # async fn run() -> std::io::Result<()> {
//! use dilu_gateway::{Endpoint, FunctionPolicy, Gateway, GatewayConfig};
//! let gateway = Gateway::new(GatewayConfig::default());
//! gateway.upsert_function("resnet", FunctionPolicy::default());
//! gateway.set_endpoints("resnet", vec![Endpoint { instance: "resnet-0".into(), url: "http://127.0.0.1:9001".into() }]);
//! let listener = tokio::net::TcpListener::bind("127.0.0.1:8080").await?;
//! axum::serve(listener, gateway.router()).await
//! # }
//! ```

mod config;
mod errors;
mod handlers;
mod load;
mod memory;
mod metrics;
mod proxy;
mod route;
mod service;
mod source;

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, PoisonError, RwLock};

pub use config::{DEFAULT_MAX_BODY_BYTES, FunctionPolicy, GatewayConfig, WindowCounts};
pub use dilu_api::Endpoint;
pub use errors::GatewayError;
pub use service::GatewayService;
pub use source::{EndpointSource, RoutingTable, StaticEndpoints, policy_of};

use route::{ColdStartHook, FunctionState};

/// The gateway: functions, their instances and queues, and the shared HTTP client. Shared as `Arc<Gateway>`;
/// every method takes `&self` and is cheap (short lock sections, no I/O), so the control plane may call them
/// from any thread or task.
pub struct Gateway {
    config: GatewayConfig,
    /// The client every forward uses, or why it could not be built (then every forward answers 500).
    client: Result<proxy::Client, String>,
    functions: RwLock<HashMap<String, Arc<FunctionState>>>,
    cold_start_hook: RwLock<Option<ColdStartHook>>,
    unknown_function_requests: AtomicU64,
}

impl Gateway {
    /// A gateway with no functions.
    pub fn new(config: GatewayConfig) -> Arc<Gateway> {
        memory::tune_allocator();
        Arc::new(Gateway {
            client: proxy::build_client(&config),
            config,
            functions: RwLock::new(HashMap::new()),
            cold_start_hook: RwLock::new(None),
            unknown_function_requests: AtomicU64::new(0),
        })
    }

    fn function(&self, function: &str) -> Option<Arc<FunctionState>> {
        self.functions
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .get(function)
            .cloned()
    }

    /// Creates `function` with `policy`, or updates its policy; its endpoints, queue and counters are kept.
    /// Requests already admitted keep the timeouts and limits they started with.
    pub fn upsert_function(&self, function: &str, policy: FunctionPolicy) {
        let existing = {
            let mut functions = self
                .functions
                .write()
                .unwrap_or_else(PoisonError::into_inner);
            match functions.get(function) {
                Some(state) => Arc::clone(state),
                None => {
                    functions.insert(
                        function.to_string(),
                        Arc::new(FunctionState::new(function, policy)),
                    );
                    return;
                }
            }
        };
        existing.set_policy(policy);
    }

    /// Removes `function`: requests waiting for a slot are answered 404 at once, requests in flight finish,
    /// later requests get 404. Its metrics disappear from [`Gateway::render_metrics`].
    pub fn remove_function(&self, function: &str) {
        let removed = self
            .functions
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(function);
        if let Some(state) = removed {
            state.remove();
        }
    }

    /// Sets the instances of `function` that are ready now (a no-op for an unknown function). Instances no
    /// longer listed get no new requests; their in-flight requests finish (watch [`Gateway::outstanding`]
    /// before stopping them). Waiting requests are served at once where the new set has room.
    pub fn set_endpoints(&self, function: &str, endpoints: Vec<Endpoint>) {
        if let Some(state) = self.function(function) {
            state.set_endpoints(&endpoints);
        }
    }

    /// The counts of `function` since the previous call (arrivals, completed and failed are reset), plus its
    /// current queue length and in-flight requests; `None` for an unknown function.
    pub fn take_window(&self, function: &str) -> Option<WindowCounts> {
        let state = self.function(function)?;
        let (queued, outstanding, _ready) = state.gauges();
        Some(WindowCounts {
            arrivals: state.metrics.arrivals.swap(0, Relaxed),
            completed: state.metrics.completed.swap(0, Relaxed),
            failed: state.metrics.failed.swap(0, Relaxed),
            late: state.metrics.late.swap(0, Relaxed),
            queued_now: queued as u64,
            outstanding_now: outstanding as u64,
        })
    }

    /// Every function's [`Gateway::take_window`] (so arrivals since the previous call) and in-flight requests
    /// per instance, as `GET /v1/load` reports them ([`Gateway::load_router`]).
    pub fn take_load(&self) -> dilu_api::route::LoadReport {
        let mut names: Vec<String> = self
            .functions
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .keys()
            .cloned()
            .collect();
        names.sort();
        let mut report = dilu_api::route::LoadReport::default();
        for name in names {
            // A function removed meanwhile has no window: left out.
            let Some(window) = self.take_window(&name) else {
                continue;
            };
            let in_flight = self
                .outstanding(&name)
                .into_iter()
                .map(|(instance, n)| (instance, n as u64))
                .collect();
            report.functions.insert(
                name,
                dilu_api::route::FunctionLoad {
                    arrivals: window.arrivals,
                    answered: window.completed + window.failed,
                    late: window.late,
                    queued_now: window.queued_now,
                    in_flight,
                },
            );
        }
        report
    }

    /// `GET /v1/load`: the JSON [`Gateway::take_load`] report, for a controller in another process (the
    /// leader of a cluster's controllers pulls it from every gateway replica). Arrivals are counted since the
    /// previous report, so the endpoint has exactly one consumer. With `token`, a request without
    /// `Authorization: Bearer <token>` is answered 401. Merge it with [`GatewayService::with_routes`]; neither
    /// [`Gateway::router`] nor [`Gateway::service`] serves it on its own.
    pub fn load_router(self: &Arc<Self>, token: Option<dilu_http::guard::Token>) -> axum::Router {
        load::router(self, token)
    }

    /// Registers the hook called with a function's name when a request has to wait because the function has
    /// no ready instance (at most once per 500 ms per function). It runs on the request's task, so it must
    /// not block: send a message or spawn.
    pub fn set_cold_start_hook(&self, hook: Arc<dyn Fn(&str) + Send + Sync>) {
        *self
            .cold_start_hook
            .write()
            .unwrap_or_else(PoisonError::into_inner) = Some(hook);
    }

    /// In-flight requests per instance of `function` (including unlisted instances still draining); empty
    /// for an unknown function.
    pub fn outstanding(&self, function: &str) -> Vec<(String, usize)> {
        self.function(function)
            .map(|state| state.outstanding_by_instance())
            .unwrap_or_default()
    }

    /// Routes exactly the functions of `table`: new ones are added, changed policies and endpoints applied,
    /// functions no longer listed removed.
    pub fn apply(&self, table: &[dilu_api::Route]) {
        for route in table {
            self.upsert_function(&route.function, policy_of(route));
            self.set_endpoints(&route.function, route.endpoints.clone());
        }
        let gone: Vec<String> = self
            .functions
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .keys()
            .filter(|name| !table.iter().any(|r| &r.function == *name))
            .cloned()
            .collect();
        for name in gone {
            self.remove_function(&name);
        }
    }

    /// Follows `source`: applies its table now and after every change, and passes requests waiting for a
    /// function without ready instances to [`EndpointSource::wake`]. Runs until the source is dropped.
    pub fn follow(
        self: &Arc<Self>,
        source: Arc<dyn EndpointSource>,
    ) -> tokio::task::JoinHandle<()> {
        let mut routes = source.routes();
        self.apply(&routes.borrow_and_update());
        let waker = Arc::clone(&source);
        self.set_cold_start_hook(Arc::new(move |function: &str| waker.wake(function)));
        let weak = Arc::downgrade(self);
        tokio::spawn(async move {
            while routes.changed().await.is_ok() {
                let Some(gateway) = weak.upgrade() else {
                    return;
                };
                let table = routes.borrow_and_update().clone();
                gateway.apply(&table);
            }
        })
    }

    /// The gateway's routes with its state applied: the v2 inference, model metadata/readiness, health and
    /// server metadata endpoints. Request bodies are not limited by axum; the gateway enforces the limits.
    pub fn router(self: &Arc<Self>) -> axum::Router {
        handlers::router(self)
    }

    /// The same routes as [`Gateway::router`] as one `tower` service that recognises inference requests by
    /// their path and serves them without going through a router (no path extraction, no per-request
    /// router machinery); every other request goes to the router. For a listener that serves only the
    /// gateway.
    pub fn service(self: &Arc<Self>) -> GatewayService {
        GatewayService::new(self)
    }

    /// Appends the Prometheus text exposition of the gateway's metrics (families `dilu_gateway_*`, functions
    /// in name order) to `out`.
    pub fn render_metrics(&self, out: &mut String) {
        let mut functions: Vec<Arc<FunctionState>> = self
            .functions
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .values()
            .cloned()
            .collect();
        functions.sort_by(|a, b| a.name.cmp(&b.name));
        let snapshots: Vec<metrics::Snapshot<'_>> = functions
            .iter()
            .map(|state| {
                let (queue_depth, outstanding, instances_ready) = state.gauges();
                metrics::Snapshot {
                    metrics: &state.metrics,
                    queue_depth,
                    outstanding,
                    instances_ready,
                }
            })
            .collect();
        metrics::render(
            out,
            &snapshots,
            self.unknown_function_requests.load(Relaxed),
        );
    }
}
