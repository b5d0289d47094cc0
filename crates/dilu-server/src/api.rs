//! The control plane's REST API (`/v1`) and the one listener that also serves the gateway (`/v2`) and
//! `GET /metrics`.
//!
//! | method | path | what |
//! |---|---|---|
//! | POST | `/v1/functions` | deploy a spec (YAML, or JSON with `Content-Type: application/json`) → 201 |
//! | GET | `/v1/functions`, `/v1/functions/{name}` | list, get |
//! | PUT | `/v1/functions/{name}` | replace the spec (quota changes apply live) |
//! | DELETE | `/v1/functions/{name}` | delete (instances drain, then stop) → 204 |
//! | GET | `/v1/instances`, `/v1/nodes`, `/v1/devices` | what runs where, with quotas and usage |
//! | GET | `/v1/policy` | the policy and the components it selects |
//! | GET | `/v1/events`, `/v1/events/stream` | every decision with its reason (list; server-sent events) |
//! | GET | `/metrics`, `/health` | Prometheus metrics, liveness |
//! | GET | `/ui` | the live dashboard ([`crate::ui`]) |
//!
//! Mutating endpoints need `Authorization: Bearer <token>` (401 otherwise). On a loopback listener only
//! loopback `Host` names are answered (421 otherwise: DNS rebinding). Errors are JSON
//! `{"error", "field", "value", "rule"}` (the last three when a field is at fault), a body over the limit
//! included (413). Specs are parsed, and deployed or deleted (SQLite writes), on blocking threads, never on the
//! event loops that serve `/v2` and `/health`.

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::Router;
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{DefaultBodyLimit, Path, State};
use axum::http::{HeaderMap, Method, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, extract::Request};
use serde::Serialize;
use serde_json::{Value, json};

use dilu_api::{FieldError, FunctionSpec, SpecFormat, parse_spec};
use dilu_control::ControlError;
use dilu_gateway::GatewayService;
use dilu_http::guard::{HostPolicy, Token, check_host};

use crate::platform::Platform;

/// Largest spec document accepted.
const MAX_SPEC_BYTES: usize = 1 << 20;

pub(crate) struct ApiState {
    pub(crate) platform: Arc<Platform>,
    token: Token,
}

/// The 400 response of a field at fault.
pub(crate) fn field_error(e: FieldError) -> Response {
    ApiError::from(e).into_response()
}

/// An error response.
struct ApiError {
    status: StatusCode,
    body: Value,
    /// The request's body was not read to its end.
    body_unread: bool,
}

impl ApiError {
    fn new(status: StatusCode, message: impl Into<String>) -> Self {
        Self {
            status,
            body: json!({ "error": message.into() }),
            body_unread: false,
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut response = (self.status, Json(self.body)).into_response();
        if self.body_unread {
            // The body may be unread: the connection cannot carry another request, so say so (a client
            // that pooled it would otherwise send its next request into a closing socket).
            response.headers_mut().insert(
                header::CONNECTION,
                header::HeaderValue::from_static("close"),
            );
        }
        response
    }
}

impl From<ControlError> for ApiError {
    fn from(e: ControlError) -> Self {
        let status = StatusCode::from_u16(e.status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        let mut body = json!({ "error": e.to_string() });
        if let Some(f) = e.field() {
            body["field"] = json!(f.field);
            body["value"] = json!(f.value);
            body["rule"] = json!(f.rule);
        }
        Self {
            status,
            body,
            body_unread: false,
        }
    }
}

impl From<FieldError> for ApiError {
    fn from(e: FieldError) -> Self {
        ControlError::Invalid(e).into()
    }
}

async fn require_token(
    State(state): State<Arc<ApiState>>,
    request: Request,
    next: Next,
) -> Response {
    let mutating = matches!(
        *request.method(),
        Method::POST | Method::PUT | Method::PATCH | Method::DELETE
    );
    if mutating
        && request.uri().path().starts_with("/v1/")
        && !state.token.presented_in(request.headers())
    {
        return state.token.refusal(request.headers());
    }
    next.run(request).await
}

/// A body the control API would not read: over [`MAX_SPEC_BYTES`] (413), or cut off or too slow (400).
fn body_refusal(rejection: BytesRejection) -> ApiError {
    let status = rejection.status();
    let rule = if status == StatusCode::PAYLOAD_TOO_LARGE {
        format!("a spec is at most {MAX_SPEC_BYTES} bytes")
    } else {
        "must arrive whole within the listener's body deadline".to_string()
    };
    ApiError {
        status,
        body: json!({
            "error": rejection.body_text(),
            "field": "body",
            "value": "(as sent)",
            "rule": rule,
        }),
        body_unread: true,
    }
}

/// Parses a spec off the async threads (a hostile document costs only a blocking thread, never `/health`
/// or inference).
async fn spec_from(
    headers: &HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<FunctionSpec, ApiError> {
    let body = body.map_err(body_refusal)?;
    let content_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    tokio::task::spawn_blocking(move || parse_body(content_type.as_deref(), &body))
        .await
        .map_err(|e| {
            ApiError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                format!("parsing the spec failed: {e}"),
            )
        })?
}

fn parse_body(content_type: Option<&str>, body: &Bytes) -> Result<FunctionSpec, ApiError> {
    if body.len() > MAX_SPEC_BYTES {
        return Err(ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("a spec is at most {MAX_SPEC_BYTES} bytes"),
        ));
    }
    let text = std::str::from_utf8(body).map_err(|e| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            format!("the spec is not UTF-8: {e}"),
        )
    })?;
    parse_spec(text, SpecFormat::from_content_type(content_type)).map_err(ApiError::from)
}

async fn create(
    State(st): State<Arc<ApiState>>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    let spec = spec_from(&headers, body).await?;
    let controller = Arc::clone(st.platform.controller());
    let view = off_the_loop("deploying", move || controller.deploy(spec)).await?;
    Ok((StatusCode::CREATED, Json(to_value(&view))))
}

/// Runs a control-plane operation that writes the store (SQLite) on a blocking thread: the event loop the
/// request came in on serves other connections, inference among them, meanwhile.
async fn off_the_loop<T: Send + 'static>(
    what: &str,
    operation: impl FnOnce() -> Result<T, ControlError> + Send + 'static,
) -> Result<T, ApiError> {
    match tokio::task::spawn_blocking(operation).await {
        Ok(done) => done.map_err(ApiError::from),
        Err(e) => Err(ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("{what} failed: {e}"),
        )),
    }
}

async fn replace(
    State(st): State<Arc<ApiState>>,
    Path(name): Path<String>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Json<Value>, ApiError> {
    let spec = spec_from(&headers, body).await?;
    if spec.name != name {
        return Err(FieldError::new(
            "name",
            &spec.name,
            format!(
                "must match the function in the path ('{name}'); a rename is a delete and a deploy"
            ),
        )
        .into());
    }
    let controller = Arc::clone(st.platform.controller());
    let storing = Arc::clone(&controller);
    off_the_loop("updating", move || storing.set_spec(spec)).await?;
    Ok(Json(to_value(&controller.apply_now(&name).await?)))
}

async fn list(State(st): State<Arc<ApiState>>) -> Json<Value> {
    Json(json!({ "functions": to_value(&st.platform.controller().functions()) }))
}

async fn get_one(
    State(st): State<Arc<ApiState>>,
    Path(name): Path<String>,
) -> Result<Json<Value>, ApiError> {
    Ok(Json(to_value(&st.platform.controller().function(&name)?)))
}

async fn remove(
    State(st): State<Arc<ApiState>>,
    Path(name): Path<String>,
) -> Result<StatusCode, ApiError> {
    let controller = Arc::clone(st.platform.controller());
    off_the_loop("deleting", move || controller.delete(&name)).await?;
    Ok(StatusCode::NO_CONTENT)
}

async fn instances(State(st): State<Arc<ApiState>>) -> Json<Value> {
    let owners = st.platform.controller().owners();
    let node = st.platform.backend().node().to_string();
    let list: Vec<Value> = st
        .platform
        .agent()
        .instances()
        .iter()
        .map(|i| {
            let mut value = to_value(i);
            value["function"] = json!(owners.get(&i.id));
            value["node"] = json!(node);
            value
        })
        .collect();
    Json(json!({ "instances": list }))
}

async fn nodes(State(st): State<Arc<ApiState>>) -> Json<Value> {
    let agent = st.platform.agent();
    let controller = st.platform.controller();
    Json(json!({ "nodes": [{
        "name": st.platform.backend().node(),
        "devices": to_value(&agent.devices()),
        "instances": agent.instances().len(),
        "notes": agent.notes(),
        "placer": controller.policy().placer_name().as_str(),
        "policy": controller.policy().name().as_str(),
    }]}))
}

async fn policy(State(st): State<Arc<ApiState>>) -> Json<Value> {
    Json(policy_view(&st.platform))
}

/// The policy and the components that run, each named by the object that runs it: the ledger's placer, each
/// device's vertical controller, each function's horizontal scaler.
pub fn policy_view(platform: &Platform) -> Value {
    let controller = platform.controller();
    let components = controller.policy().components();
    let vertical: BTreeMap<String, String> = platform
        .agent()
        .device_budgets()
        .into_iter()
        .map(|b| (b.device, b.controller))
        .collect();
    let horizontal: BTreeMap<String, &'static str> = controller
        .functions()
        .into_iter()
        .map(|f| (f.name, f.scaler))
        .collect();
    json!({
        "policy": components.policy,
        "components": to_value(&components),
        "running": {
            "placer": controller.placer_name(),
            "vertical": vertical,
            "horizontal": horizontal,
        },
    })
}

/// Devices with their budgeting and, per instance, its function, quota, share this window and usage.
pub fn devices_view(platform: &Platform) -> Value {
    let agent = platform.agent();
    let node = platform.backend().node();
    let owners = platform.controller().owners();
    let booked: BTreeMap<String, f64> = platform
        .controller()
        .booked()
        .into_iter()
        .map(|(at, r)| (at.device, r))
        .collect();
    let budgets = agent.device_budgets();
    let instances = agent.instances();
    let devices: Vec<Value> = agent
        .devices()
        .iter()
        .map(|d| {
            let budget = budgets.iter().find(|b| b.device == d.uuid);
            let capacity = budget.map(|b| b.capacity_per_window).unwrap_or(0).max(1) as f64;
            let residents: Vec<Value> = instances
                .iter()
                .filter(|i| i.device == d.uuid)
                .map(|i| {
                    let b = i.budgeting.as_ref();
                    json!({
                        "id": i.id,
                        "name": i.name,
                        "function": owners.get(&i.id),
                        "status": i.status,
                        "kind": i.kind,
                        "quota": i.quota,
                        "share": b.map(|b| b.share),
                        "budget": b.and_then(|b| b.budget),
                        "usage": b.map(|b| b.usage_avg_per_window / capacity),
                        "usage_last_window": b.map(|b| b.usage_last_window as f64 / capacity),
                        "busy": b.map(|b| b.busy),
                        "busy_since_ns": b.and_then(|b| b.busy_since_ns),
                    })
                })
                .collect();
            let health = agent.health().health(&d.uuid);
            json!({
                "uuid": d.uuid,
                "name": d.name,
                "kind": d.kind.name(),
                "node": node,
                "healthy": health.is_healthy(),
                "health_reason": health.reason(),
                "controller": budget.map(|b| b.controller.clone()),
                "capacity_per_window": budget.map(|b| b.capacity_per_window),
                "requested": budget.map(|b| b.requested),
                "booked": booked.get(&d.uuid),
                "training_budget": budget.map(|b| b.training_budget),
                "adjustments": budget.map(|b| b.adjustments),
                "instances": residents,
            })
        })
        .collect();
    json!({ "devices": devices })
}

async fn devices(State(st): State<Arc<ApiState>>) -> Json<Value> {
    let platform = Arc::clone(&st.platform);
    let view = tokio::task::spawn_blocking(move || devices_view(&platform))
        .await
        .unwrap_or_else(|e| json!({ "error": e.to_string() }));
    Json(view)
}

async fn metrics(State(st): State<Arc<ApiState>>) -> Response {
    let platform = Arc::clone(&st.platform);
    let text = tokio::task::spawn_blocking(move || render_metrics(&platform))
        .await
        .unwrap_or_default();
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        text,
    )
        .into_response()
}

/// Every metric of the process: control plane, gateway and node agent.
pub fn render_metrics(platform: &Platform) -> String {
    let mut out = String::new();
    platform.controller().render_metrics(&mut out);
    platform.gateway().render_metrics(&mut out);
    out.push_str(&dilu_agent::metrics::render(platform.agent()));
    out
}

async fn health(State(st): State<Arc<ApiState>>) -> Json<Value> {
    Json(json!({
        "status": "ok",
        "uptime_seconds": st.platform.uptime().as_secs_f64(),
        "functions": st.platform.controller().functions().len(),
    }))
}

async fn not_found(method: Method, uri: axum::http::Uri) -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        format!("no endpoint {method} {}", uri.path()),
    )
}

fn to_value<T: Serialize>(v: &T) -> Value {
    serde_json::to_value(v).unwrap_or_else(|e| json!({ "error": e.to_string() }))
}

/// The whole HTTP surface: `/v1` (control), `/v2` (gateway), `/metrics`, `/health`; on a loopback
/// listener (`host`), only loopback `Host` names are answered.
pub fn router(platform: Arc<Platform>, token: String, host: HostPolicy) -> Router {
    let gateway = platform.gateway().router();
    let token = Token::new(token, "DATA_DIR/token (printed by dilu up), or DILU_TOKEN");
    let state = Arc::new(ApiState { platform, token });
    let control = Router::new()
        .route("/v1/functions", get(list).post(create))
        .route(
            "/v1/functions/{name}",
            get(get_one).put(replace).delete(remove),
        )
        .route("/v1/instances", get(instances))
        .route("/v1/nodes", get(nodes))
        .route("/v1/devices", get(devices))
        .route("/v1/policy", get(policy))
        .route("/v1/events", get(crate::events::list))
        .route("/v1/events/stream", get(crate::events::stream))
        .route("/metrics", get(metrics))
        .route("/health", get(health))
        .merge(crate::ui::routes())
        .fallback(not_found)
        .layer(DefaultBodyLimit::max(MAX_SPEC_BYTES))
        .layer(middleware::from_fn_with_state(
            Arc::clone(&state),
            require_token,
        ))
        .with_state(state);
    gateway
        .merge(control)
        .layer(middleware::from_fn_with_state(host, check_host))
}

/// The whole HTTP surface as one service: [`router`], with inference requests answered by the gateway
/// directly (no router, no middleware in between) when their `Host` is one `host` allows, which is all the
/// router would check for them. Serve it with `dilu_http::serve` or `dilu_http::EventLoops`.
pub fn service(platform: Arc<Platform>, token: String, host: HostPolicy) -> GatewayService {
    let gateway = Arc::clone(platform.gateway());
    gateway
        .service()
        .with_router(router(platform, token, host), host)
}
