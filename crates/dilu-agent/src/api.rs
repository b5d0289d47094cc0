//! The agent's local HTTP API (loopback TCP by default, or a Unix socket):
//! `GET /devices`, `GET /instances`, `GET /instances/{id}`, `POST /instances`, `PATCH /instances/{id}/quota`,
//! `DELETE /instances/{id}`, `GET /instances/{id}/logs`, `GET /metrics`, `GET /health`.
//!
//! Starting instances runs commands, so every endpoint but `GET /health` needs `Authorization: Bearer
//! <token>` (the token file in the agent's data directory), except for clients on the Unix socket that run
//! as the agent's user or root (the kernel reports their uid). State-changing requests must be
//! `Content-Type: application/json` (a browser cannot send that cross-site without a preflight), and on a
//! loopback listener the `Host` must be a loopback name (DNS rebinding). Connections get `dilu-http`'s
//! timeouts and cap.
//!
//! Errors are JSON: `{"error": message, "field": …, "value": …, "rule": …}` with 400 for invalid input, 404
//! for an unknown instance, 409 for over-commit or a name in use, 500 for failures of the node.
//! `?overcommit=true` on `POST /instances` and `PATCH …/quota` lets Σ requests exceed the device.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::{StatusCode, header};
use axum::middleware;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, patch};
use serde::Deserialize;
use serde::de::DeserializeOwned;
use serde_json::json;

use crate::agent::{Agent, AgentError};
use dilu_api::QuotaUpdate;
use dilu_api::agent::InstanceSpec;
use dilu_http::guard::{HostPolicy, Token, check_host, require_json, require_token};
use dilu_http::{Limits, Listener};

/// Where the API listens.
#[derive(Debug, Clone)]
pub enum Listen {
    /// A TCP address (port 0 picks a free port).
    Tcp(SocketAddr),
    /// A Unix socket path (replaced if it exists).
    Unix(PathBuf),
}

/// Largest request body accepted.
const MAX_BODY: usize = 1 << 20;

#[derive(Debug, Default, Deserialize)]
struct Overcommit {
    #[serde(default)]
    overcommit: bool,
}

#[derive(Debug, Default, Deserialize)]
struct LogQuery {
    #[serde(default)]
    bytes: Option<u64>,
}

struct ApiError(StatusCode, serde_json::Value);

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.0, axum::Json(self.1)).into_response()
    }
}

impl From<AgentError> for ApiError {
    fn from(error: AgentError) -> Self {
        let message = error.to_string();
        match error {
            AgentError::Invalid(invalid) => ApiError(
                StatusCode::BAD_REQUEST,
                json!({"error": message, "field": invalid.field, "value": invalid.value, "rule": invalid.rule}),
            ),
            AgentError::NotFound(_) => ApiError(StatusCode::NOT_FOUND, json!({ "error": message })),
            AgentError::OverCommit { request, .. } => ApiError(
                StatusCode::CONFLICT,
                json!({"error": message, "field": "quota.request", "value": request.to_string(),
                       "rule": "Σ requests on a device must not exceed 1.0 without ?overcommit=true"}),
            ),
            AgentError::Conflict(name) => ApiError(
                StatusCode::CONFLICT,
                json!({"error": message, "field": "name", "value": name, "rule": "must be unique on this node"}),
            ),
            AgentError::Internal { .. } => ApiError(
                StatusCode::INTERNAL_SERVER_ERROR,
                json!({ "error": message }),
            ),
        }
    }
}

/// Parses a JSON body, naming the offending field on error.
fn parse<T: DeserializeOwned>(body: &[u8]) -> Result<T, ApiError> {
    let mut deserializer = serde_json::Deserializer::from_slice(body);
    serde_path_to_error::deserialize(&mut deserializer).map_err(|error| {
        let field = error.path().to_string();
        let rule = error.inner().to_string();
        ApiError(
            StatusCode::BAD_REQUEST,
            json!({"error": format!("{field}: {rule}"), "field": field, "value": null, "rule": rule}),
        )
    })
}

/// Runs a blocking agent operation off the async executor.
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, AgentError> + Send + 'static,
) -> Result<T, ApiError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| {
            ApiError(
                StatusCode::INTERNAL_SERVER_ERROR,
                json!({"error": format!("agent task failed: {e}")}),
            )
        })?
        .map_err(ApiError::from)
}

async fn devices(State(agent): State<Arc<Agent>>) -> Response {
    let budgets = agent.device_budgets();
    let instances = agent.instances();
    let body: Vec<serde_json::Value> = agent
        .devices()
        .iter()
        .map(|d| {
            let budget = budgets.iter().find(|b| b.device == d.uuid);
            let on_device: Vec<&dilu_api::agent::InstanceStatus> =
                instances.iter().filter(|i| i.device == d.uuid).collect();
            let health = agent.health().health(&d.uuid);
            json!({
                "device": d,
                "healthy": health.is_healthy(),
                "health": health,
                "health_reason": health.reason(),
                "budgeting": budget,
                "instances": on_device.iter().map(|i| json!({
                    "id": i.id,
                    "kind": i.kind,
                    "status": i.status,
                    "quota": i.quota,
                    "budgeting": i.budgeting,
                    "counters": i.counters,
                })).collect::<Vec<_>>(),
            })
        })
        .collect();
    axum::Json(json!({ "devices": body, "notes": agent.notes() })).into_response()
}

async fn list(State(agent): State<Arc<Agent>>) -> Response {
    axum::Json(json!({ "instances": agent.instances() })).into_response()
}

async fn show(
    State(agent): State<Arc<Agent>>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    Ok(axum::Json(agent.instance(&id)?).into_response())
}

async fn create(
    State(agent): State<Arc<Agent>>,
    Query(query): Query<Overcommit>,
    body: Bytes,
) -> Result<Response, ApiError> {
    let spec: InstanceSpec = parse(&body)?;
    let view = blocking(move || agent.create_instance(spec, query.overcommit)).await?;
    Ok((StatusCode::CREATED, axum::Json(view)).into_response())
}

async fn set_quota(
    State(agent): State<Arc<Agent>>,
    Path(id): Path<String>,
    Query(query): Query<Overcommit>,
    body: Bytes,
) -> Result<Response, ApiError> {
    let update: QuotaUpdate = parse(&body)?;
    let view = blocking(move || agent.update_quota(&id, update, query.overcommit)).await?;
    Ok(axum::Json(view).into_response())
}

async fn delete(
    State(agent): State<Arc<Agent>>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    blocking(move || agent.delete_instance(&id)).await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

async fn logs(
    State(agent): State<Arc<Agent>>,
    Path(id): Path<String>,
    Query(query): Query<LogQuery>,
) -> Result<Response, ApiError> {
    let text = agent.logs(&id, query.bytes.unwrap_or(64 << 10))?;
    Ok(([(header::CONTENT_TYPE, "text/plain; charset=utf-8")], text).into_response())
}

async fn metrics(State(agent): State<Arc<Agent>>) -> Response {
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        crate::metrics::render(&agent),
    )
        .into_response()
}

/// The API's routes behind its checks: `Host` (per `host`), the bearer `token`, JSON bodies.
pub fn router(agent: Arc<Agent>, token: Token, host: HostPolicy) -> Router {
    Router::new()
        .route("/health", get(|| async { "ok" }))
        .route("/devices", get(devices))
        .route("/instances", get(list).post(create))
        .route("/instances/{id}", get(show).delete(delete))
        .route("/instances/{id}/quota", patch(set_quota))
        .route("/instances/{id}/logs", get(logs))
        .route("/metrics", get(metrics))
        .layer(axum::extract::DefaultBodyLimit::max(MAX_BODY))
        .layer(middleware::from_fn(require_json))
        .layer(middleware::from_fn_with_state(token, require_token))
        .layer(middleware::from_fn_with_state(host, check_host))
        .with_state(agent)
}

/// Serves the API until `shutdown` resolves; `on_ready` receives the bound address (e.g. the port picked for
/// port 0) once the listener is open. A Unix socket is created 0600.
pub async fn serve(
    agent: Arc<Agent>,
    listen: Listen,
    token: Token,
    on_ready: impl FnOnce(String),
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let (listener, host): (Listener, HostPolicy) = match listen {
        Listen::Tcp(addr) => {
            let listener = tokio::net::TcpListener::bind(addr).await?;
            let bound = listener.local_addr()?;
            on_ready(format!("http://{bound}"));
            (listener.into(), HostPolicy::for_listener(bound))
        }
        Listen::Unix(path) => {
            use std::os::unix::fs::PermissionsExt;
            let _ = std::fs::remove_file(&path);
            let listener = tokio::net::UnixListener::bind(&path)?;
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))?;
            on_ready(format!("unix:{}", path.display()));
            // Browsers cannot reach a Unix socket: no Host to check; the peer's uid is checked instead.
            (listener.into(), HostPolicy::Any)
        }
    };
    dilu_http::serve(
        listener,
        router(agent, token, host),
        Limits::default(),
        shutdown,
    )
    .await
}
