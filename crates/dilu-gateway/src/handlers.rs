//! The HTTP face: the Open Inference Protocol v2 routes and what each one does.

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::sync::atomic::Ordering::Relaxed;
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Body;
use axum::extract::{DefaultBodyLimit, Path, Request, State};
use axum::http::request::Parts;
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};

use super::Gateway;
use super::errors::GatewayError;
use super::metrics::{CLIENT_CLOSED, FunctionMetrics};
use super::proxy::{self, BodyError, ForwardError};
use super::route::{self, FunctionState};

/// Builds the gateway's router (state applied).
pub(crate) fn router(gateway: &Arc<Gateway>) -> Router {
    Router::new()
        .route("/v2", get(server_metadata))
        .route("/v2/health/live", get(live))
        .route("/v2/health/ready", get(ready))
        .route("/v2/models/{function}", get(model_metadata))
        .route("/v2/models/{function}/ready", get(model_ready))
        .route("/v2/models/{function}/infer", post(infer))
        .route(
            "/v2/models/{function}/versions/{version}",
            get(versioned_metadata),
        )
        .route(
            "/v2/models/{function}/versions/{version}/ready",
            get(versioned_ready),
        )
        .route(
            "/v2/models/{function}/versions/{version}/infer",
            post(versioned_infer),
        )
        .layer(DefaultBodyLimit::disable())
        .with_state(Arc::clone(gateway))
}

async fn server_metadata() -> Response {
    let body = serde_json::json!({
        "name": "dilu-gateway",
        "version": env!("CARGO_PKG_VERSION"),
        "extensions": ["binary_tensor_data"],
    });
    axum::Json(body).into_response()
}

/// `GET /v2/health/live`: the Open Inference Protocol's body, `{"live": true}` (KServe's client reads it).
async fn live() -> Response {
    axum::Json(serde_json::json!({ "live": true })).into_response()
}

/// `GET /v2/health/ready`: `{"ready": true}`. The gateway is ready once it serves: a function without a ready
/// instance cold-starts on demand, and `/v2/models/{function}/ready` tells whether one is ready now.
async fn ready() -> Response {
    axum::Json(serde_json::json!({ "ready": true })).into_response()
}

async fn infer(
    State(gateway): State<Arc<Gateway>>,
    Path(function): Path<String>,
    request: Request,
) -> Response {
    serve_infer(&gateway, &function, request).await
}

async fn versioned_infer(
    State(gateway): State<Arc<Gateway>>,
    Path((function, _version)): Path<(String, String)>,
    request: Request,
) -> Response {
    serve_infer(&gateway, &function, request).await
}

async fn model_metadata(
    State(gateway): State<Arc<Gateway>>,
    Path(function): Path<String>,
    uri: Uri,
) -> Response {
    serve_metadata(&gateway, &function, &uri).await
}

async fn versioned_metadata(
    State(gateway): State<Arc<Gateway>>,
    Path((function, _version)): Path<(String, String)>,
    uri: Uri,
) -> Response {
    serve_metadata(&gateway, &function, &uri).await
}

async fn model_ready(
    State(gateway): State<Arc<Gateway>>,
    Path(function): Path<String>,
) -> Response {
    serve_ready(&gateway, &function)
}

async fn versioned_ready(
    State(gateway): State<Arc<Gateway>>,
    Path((function, _version)): Path<(String, String)>,
) -> Response {
    serve_ready(&gateway, &function)
}

/// Looks a function up, counting misses.
fn known(gateway: &Gateway, function: &str) -> Result<Arc<FunctionState>, GatewayError> {
    gateway.function(function).ok_or_else(|| {
        gateway.unknown_function_requests.fetch_add(1, Relaxed);
        GatewayError::UnknownFunction {
            function: function.to_string(),
        }
    })
}

/// Records exactly one outcome per inference request; dropped unfinished, it records the client's departure.
struct Outcome<'a> {
    metrics: &'a FunctionMetrics,
    start: Instant,
    slo: Option<Duration>,
    done: bool,
}

impl<'a> Outcome<'a> {
    fn start(metrics: &'a FunctionMetrics, slo: Option<Duration>) -> Self {
        metrics.arrivals.fetch_add(1, Relaxed);
        Outcome {
            metrics,
            start: Instant::now(),
            slo,
            done: false,
        }
    }

    /// Records the response's status and latency, and the gateway's own part of it: the latency less
    /// `elsewhere` (time spent waiting for an instance slot and for the instances' answers).
    fn finish(mut self, status: StatusCode, elsewhere: Duration) {
        self.done = true;
        let latency = self.start.elapsed();
        self.metrics.record(status.as_u16(), latency, self.slo);
        self.metrics
            .record_own_time(latency.saturating_sub(elsewhere));
    }
}

impl Drop for Outcome<'_> {
    fn drop(&mut self) {
        if !self.done {
            self.metrics
                .record(CLIENT_CLOSED, self.start.elapsed(), self.slo);
        }
    }
}

/// Serves one inference request for `function`. The function is looked up and the request taken apart before
/// the returned future is built, so that the future (boxed once per request by whoever serves it) holds only
/// what the request needs.
pub(crate) fn serve_infer(
    gateway: &Arc<Gateway>,
    function: &str,
    request: Request,
) -> impl Future<Output = Response> + Send + 'static {
    let gateway = Arc::clone(gateway);
    // Boxed: the error is rare and this value lives as long as the future.
    let found = known(&gateway, function).map_err(Box::new);
    let (parts, body) = request.into_parts();
    async move {
        let state = match found {
            Ok(state) => state,
            Err(e) => {
                // Read the body (within the global limit) before answering, so a client still sending it
                // gets the 404 instead of a connection reset.
                let _ = proxy::read_body(body, &parts.headers, gateway.config.max_body_bytes).await;
                return e.into_response();
            }
        };
        let policy = state.policy();
        let outcome = Outcome::start(&state.metrics, policy.slo);
        let request_timeout = policy.request_timeout;
        let deadline = tokio::time::Instant::from_std(outcome.start) + request_timeout;
        let elsewhere_ns = AtomicU64::new(0);
        let (max_body, cold_start_timeout) = (policy.max_body_bytes, policy.cold_start_timeout);
        let attempt = infer_within_deadline(
            &gateway,
            &state,
            (max_body, cold_start_timeout),
            &parts,
            body,
            &elsewhere_ns,
        );
        let response = match tokio::time::timeout_at(deadline, attempt).await {
            Ok(Ok(response)) => response,
            Ok(Err(e)) => e.into_response(),
            Err(_elapsed) => GatewayError::Timeout {
                function: state.name.to_string(),
                timeout: request_timeout,
            }
            .into_response(),
        };
        let elsewhere = Duration::from_nanos(elsewhere_ns.load(Relaxed));
        outcome.finish(response.status(), elsewhere);
        response
    }
}

/// Adds the time since it started to `sink` when dropped: what the gateway waits on rather than does. The time
/// is added even when the request's deadline cancels the work midway, so a timed-out request is not counted
/// as the gateway's own time.
struct Stopwatch<'a> {
    start: Instant,
    sink: &'a AtomicU64,
}

impl<'a> Stopwatch<'a> {
    fn start(sink: &'a AtomicU64) -> Self {
        Stopwatch {
            start: Instant::now(),
            sink,
        }
    }
}

impl Drop for Stopwatch<'_> {
    fn drop(&mut self) {
        let ns = u64::try_from(self.start.elapsed().as_nanos()).unwrap_or(u64::MAX);
        self.sink.fetch_add(ns, Relaxed);
    }
}

/// Reads the body and forwards it (retrying elsewhere, or once an instance is back, on a transport failure).
/// `policy` is the function's body limit and cold-start timeout.
async fn infer_within_deadline(
    gateway: &Gateway,
    state: &Arc<FunctionState>,
    policy: (usize, Duration),
    parts: &Parts,
    body: Body,
    elsewhere_ns: &AtomicU64,
) -> Result<Response, GatewayError> {
    let (max_body_bytes, cold_start_timeout) = policy;
    let limit = max_body_bytes.min(gateway.config.max_body_bytes);
    let body = proxy::read_body(body, &parts.headers, limit)
        .await
        .map_err(|e| match e {
            BodyError::TooLarge => GatewayError::BodyTooLarge {
                function: state.name.to_string(),
                limit,
            },
            BodyError::Read(reason) => GatewayError::BadBody {
                function: state.name.to_string(),
                reason,
            },
        })?;
    let client = gateway
        .client
        .as_ref()
        .map_err(|e| GatewayError::Internal(e.clone()))?;
    let path = parts
        .uri
        .path_and_query()
        .map_or(parts.uri.path(), |pq| pq.as_str());
    // From here on the request waits: for a slot, then for the instance (again for each retry).
    let _away = Stopwatch::start(elsewhere_ns);
    // (instance, error) of each failed attempt.
    let mut failures: Vec<(String, String)> = Vec::new();
    // A transport failure (refused, reset, closed before the answer's head) marks the instance dead and the
    // request tries again: at once on another ready instance, else on the first one to become ready (a dead
    // one whose pause ended, or a new one, such as the replacement of an instance on a lost node), until the
    // cold-start timeout has passed since the first failure. Then it fails naming every attempt.
    let mut retry_until: Option<tokio::time::Instant> = None;
    loop {
        let wait = retry_until.map_or(cold_start_timeout, |until| {
            until.saturating_duration_since(tokio::time::Instant::now())
        });
        let slot = match route::acquire(state, wait, &gateway.cold_start_hook).await {
            Ok(slot) => slot,
            Err(GatewayError::NoInstance { .. }) if !failures.is_empty() => break,
            Err(e) => return Err(e),
        };
        if !failures.is_empty() {
            state.metrics.count_retry();
        }
        // The retry sends the very same frames. The forward's future is boxed on its own: this one and it
        // each stay below 1 KiB, sizes the allocator serves from its per-thread cache, where one 1.6 KiB
        // block per request took its slow path.
        let sent = match slot.upstream() {
            Ok(upstream) => {
                Box::pin(proxy::send_to(
                    client,
                    &Method::POST,
                    upstream,
                    path,
                    &parts.headers,
                    &body,
                ))
                .await
            }
            Err(e) => Err(ForwardError::Transport(e.to_string())),
        };
        match sent {
            Ok(response) => return Ok(response),
            Err(ForwardError::Body(e)) => {
                failures.push((slot.instance().to_string(), e));
                break;
            }
            Err(ForwardError::Transport(e)) => {
                // The instance looks dead: keep new requests off it and free its slot.
                state.mark_dead(slot.instance_id());
                failures.push((slot.instance().to_string(), e));
                drop(slot);
                let until = *retry_until
                    .get_or_insert_with(|| tokio::time::Instant::now() + cold_start_timeout);
                if tokio::time::Instant::now() >= until {
                    break;
                }
            }
        }
    }
    let attempts: Vec<(&str, &str)> = failures
        .iter()
        .map(|(i, e)| (i.as_str(), e.as_str()))
        .collect();
    Err(upstream_error(state, &attempts))
}

fn upstream_error(state: &FunctionState, attempts: &[(&str, &str)]) -> GatewayError {
    let detail = attempts
        .iter()
        .enumerate()
        .map(|(i, (instance, error))| {
            format!("attempt {} on instance \"{instance}\": {error}", i + 1)
        })
        .collect::<Vec<_>>()
        .join("; ");
    GatewayError::Upstream {
        function: state.name.to_string(),
        detail,
    }
}

async fn serve_metadata(gateway: &Gateway, function: &str, uri: &Uri) -> Response {
    let state = match known(gateway, function) {
        Ok(state) => state,
        Err(e) => return e.into_response(),
    };
    let timeout = state.policy().request_timeout;
    match tokio::time::timeout(timeout, metadata(gateway, &state, uri)).await {
        Ok(Ok(response)) => response,
        Ok(Err(e)) => e.into_response(),
        Err(_elapsed) => GatewayError::Timeout {
            function: function.to_string(),
            timeout,
        }
        .into_response(),
    }
}

/// Proxies a metadata request to one ready instance (no slot taken, no waiting), trying a second on a
/// transport failure.
async fn metadata(
    gateway: &Gateway,
    state: &Arc<FunctionState>,
    uri: &Uri,
) -> Result<Response, GatewayError> {
    let client = gateway
        .client
        .as_ref()
        .map_err(|e| GatewayError::Internal(e.clone()))?;
    let path = uri.path_and_query().map_or(uri.path(), |pq| pq.as_str());
    let no_headers = HeaderMap::new();
    let mut failures: Vec<(String, String)> = Vec::new();
    let mut except = None;
    for _attempt in 0..2 {
        let Some(grant) = state.any_ready(except) else {
            break;
        };
        match proxy::forward(
            client,
            Method::GET,
            grant.base_url(),
            path,
            &no_headers,
            None,
        )
        .await
        {
            Ok(response) => return Ok(response),
            Err(ForwardError::Body(e)) => {
                failures.push((grant.instance().to_string(), e));
                break;
            }
            Err(ForwardError::Transport(e)) => {
                state.mark_dead(grant.instance_id());
                failures.push((grant.instance().to_string(), e));
                except = Some(grant.instance_id());
            }
        }
    }
    if failures.is_empty() {
        return Err(GatewayError::NotReady {
            function: state.name.to_string(),
        });
    }
    let attempts: Vec<(&str, &str)> = failures
        .iter()
        .map(|(i, e)| (i.as_str(), e.as_str()))
        .collect();
    Err(upstream_error(state, &attempts))
}

fn serve_ready(gateway: &Gateway, function: &str) -> Response {
    match known(gateway, function) {
        Ok(state) if state.has_ready() => {
            axum::Json(serde_json::json!({ "name": &*state.name, "ready": true })).into_response()
        }
        Ok(state) => GatewayError::NotReady {
            function: state.name.to_string(),
        }
        .into_response(),
        Err(e) => e.into_response(),
    }
}
