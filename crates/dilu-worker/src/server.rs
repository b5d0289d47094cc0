//! The HTTP side: the Open Inference Protocol v2 routes, `GET /metrics`, and [`serve`].
//!
//! Routes (KServe v2 / Triton REST): `GET /v2`, `GET /v2/health/live` (`{"live": true}`), `GET /v2/health/ready`
//! (`{"ready": true}`, 503 with `"ready": false` while the model loads), `GET /v2/models/{name}[/versions/{version}]`,
//! `GET /v2/models/{name}[/versions/{version}]/ready` (`{"name": …, "ready": true}`),
//! `POST /v2/models/{name}[/versions/{version}]/infer` (JSON tensors or the binary tensor data extension), and
//! `GET /metrics`. Every error is a JSON body `{"error": "..."}`: 400 for a malformed request (a batch over
//! `max_batch` included), 404 for an unknown model or route, 413 for a body over the limit, 415 for a
//! compressed body, 503 while the model is loading, 500 when a batch fails.

use std::future::Future;
use std::sync::atomic::Ordering;
use std::sync::mpsc::Sender;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Instant;

use axum::Router;
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{DefaultBodyLimit, Path, State};
use axum::http::{HeaderMap, HeaderName, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use dilu_quota::CpuQuota;
use tokio::net::TcpListener;
use tokio::sync::oneshot;

use crate::batcher::{self, BatchSettings, Job};
use crate::binary;
use crate::config::WorkerConfig;
use crate::error::WorkerError;
use crate::metrics::Metrics;
use crate::model::Model;
use crate::protocol::{self, InferRequest, ModelMetadata, ServerMetadata};

/// The loaded model and the queue to its executor.
struct Ready {
    model: Arc<Model>,
    jobs: Sender<Job>,
}

/// What every handler shares.
struct AppState {
    name: String,
    version: String,
    ready: OnceLock<Ready>,
    /// The largest batch (first dimension) one request may carry: the worker's `max_batch`.
    max_batch: usize,
    metrics: Arc<Metrics>,
}

/// An error response: a status and `{"error": message}`.
#[derive(Debug)]
struct ApiError {
    status: StatusCode,
    message: String,
}

impl ApiError {
    fn new(status: StatusCode, message: impl Into<String>) -> Self {
        Self {
            status,
            message: message.into(),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (
            self.status,
            axum::Json(serde_json::json!({ "error": self.message })),
        )
            .into_response()
    }
}

impl AppState {
    /// The model, when `name` (and `version`, if given) are this worker's and it is loaded.
    fn model(&self, name: &str, version: Option<&str>) -> Result<&Ready, ApiError> {
        if name != self.name {
            return Err(ApiError::new(
                StatusCode::NOT_FOUND,
                format!("model '{name}' is not found"),
            ));
        }
        if let Some(v) = version
            && v != self.version
        {
            return Err(ApiError::new(
                StatusCode::NOT_FOUND,
                format!("model '{name}' has no version '{v}'"),
            ));
        }
        self.ready.get().ok_or_else(|| {
            ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                format!("model '{name}' is not ready"),
            )
        })
    }
}

type Shared = State<Arc<AppState>>;

async fn server_metadata() -> axum::Json<ServerMetadata> {
    axum::Json(ServerMetadata {
        name: "dilu-worker",
        version: env!("CARGO_PKG_VERSION"),
        extensions: vec!["binary_tensor_data"],
    })
}

/// `GET /v2/health/live`: the Open Inference Protocol's body (KServe's client reads `live`, not the status).
async fn live() -> Response {
    axum::Json(serde_json::json!({ "live": true })).into_response()
}

/// `GET /v2/health/ready`: `{"ready": true}` once the model is loaded; 503 with `"ready": false` before.
async fn server_ready(State(st): Shared) -> Response {
    if st.ready.get().is_some() {
        axum::Json(serde_json::json!({ "ready": true })).into_response()
    } else {
        let body = serde_json::json!({
            "ready": false,
            "error": format!("model '{}' is loading", st.name),
        });
        (StatusCode::SERVICE_UNAVAILABLE, axum::Json(body)).into_response()
    }
}

/// A model readiness body: `{"name": …, "ready": true}` (not ready is an [`ApiError`]).
fn model_ready_body(st: &AppState) -> Response {
    axum::Json(serde_json::json!({ "name": st.name, "ready": true })).into_response()
}

fn metadata_for(st: &AppState, name: &str, version: Option<&str>) -> Result<Response, ApiError> {
    let ready = st.model(name, version)?;
    Ok(axum::Json(ModelMetadata {
        name: st.name.clone(),
        versions: vec![st.version.clone()],
        platform: "onnx",
        inputs: ready.model.inputs().to_vec(),
        outputs: ready.model.outputs().to_vec(),
    })
    .into_response())
}

async fn metadata(State(st): Shared, Path(name): Path<String>) -> Result<Response, ApiError> {
    metadata_for(&st, &name, None)
}

async fn metadata_version(
    State(st): Shared,
    Path((name, version)): Path<(String, String)>,
) -> Result<Response, ApiError> {
    metadata_for(&st, &name, Some(&version))
}

async fn model_ready(State(st): Shared, Path(name): Path<String>) -> Result<Response, ApiError> {
    st.model(&name, None).map(|_| model_ready_body(&st))
}

async fn model_ready_version(
    State(st): Shared,
    Path((name, version)): Path<(String, String)>,
) -> Result<Response, ApiError> {
    st.model(&name, Some(&version))
        .map(|_| model_ready_body(&st))
}

async fn infer(
    State(st): Shared,
    Path(name): Path<String>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    infer_counted(&st, &name, None, &headers, body).await
}

async fn infer_version(
    State(st): Shared,
    Path((name, version)): Path<(String, String)>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    infer_counted(&st, &name, Some(&version), &headers, body).await
}

async fn infer_counted(
    st: &AppState,
    name: &str,
    version: Option<&str>,
    headers: &HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let start = Instant::now();
    st.metrics.requests.fetch_add(1, Ordering::Relaxed);
    match infer_inner(st, name, version, headers, body).await {
        Ok(response) => {
            st.metrics
                .request_latency
                .observe(start.elapsed().as_nanos() as u64);
            response
        }
        Err(e) => {
            let counter = if e.status.is_client_error() {
                &st.metrics.client_errors
            } else {
                &st.metrics.server_errors
            };
            counter.fetch_add(1, Ordering::Relaxed);
            e.into_response()
        }
    }
}

/// The body's JSON header and binary part (see [`binary`]), refusing a compressed body.
fn split_body<'a>(headers: &HeaderMap, body: &'a [u8]) -> Result<(&'a [u8], &'a [u8]), ApiError> {
    if let Some(coding) = headers.get(header::CONTENT_ENCODING) {
        let coding = coding.to_str().unwrap_or("(not text)");
        if !coding.eq_ignore_ascii_case("identity") {
            return Err(ApiError::new(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                format!(
                    "header Content-Encoding is '{coding}': the worker accepts only uncompressed bodies"
                ),
            ));
        }
    }
    let header_len = match headers.get(binary::HEADER) {
        None => None,
        Some(v) => Some(v.to_str().map_err(|_| {
            ApiError::new(
                StatusCode::BAD_REQUEST,
                "header Inference-Header-Content-Length is not text: it must be a non-negative integer",
            )
        })?),
    };
    binary::split(body, header_len).map_err(|m| ApiError::new(StatusCode::BAD_REQUEST, m))
}

/// Serializes a built response: plain JSON, or JSON followed by the binary part with its length header.
fn encode_response(built: protocol::BuiltResponse) -> Result<Response, ApiError> {
    let Some(binary_part) = built.binary else {
        return Ok(axum::Json(built.json).into_response());
    };
    let mut body = serde_json::to_vec(&built.json).map_err(|e| {
        ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("could not encode the response: {e}"),
        )
    })?;
    let json_len = body.len();
    body.extend_from_slice(&binary_part);
    Ok((
        [
            (header::CONTENT_TYPE, "application/octet-stream".to_string()),
            (
                HeaderName::from_static(binary::HEADER),
                json_len.to_string(),
            ),
        ],
        body,
    )
        .into_response())
}

async fn infer_inner(
    st: &AppState,
    name: &str,
    version: Option<&str>,
    headers: &HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let ready = st.model(name, version)?;
    let body = body.map_err(|r| {
        let status = r.status();
        let message = if status == StatusCode::PAYLOAD_TOO_LARGE {
            "request body is larger than the limit".to_string()
        } else {
            format!("could not read the request body: {}", r.body_text())
        };
        ApiError::new(status, message)
    })?;
    let (json, binary_part) = split_body(headers, &body)?;
    let request: InferRequest = serde_json::from_slice(json).map_err(|e| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            format!("malformed inference request: {e}"),
        )
    })?;
    let id = request.id.clone();
    let checked = protocol::check_request(&ready.model, request, binary_part, st.max_batch)
        .map_err(|m| ApiError::new(StatusCode::BAD_REQUEST, m))?;
    let (reply, outputs) = oneshot::channel();
    st.metrics.queue_depth.fetch_add(1, Ordering::Relaxed);
    let job = Job {
        sample: checked.sample,
        enqueued: Instant::now(),
        reply,
    };
    if ready.jobs.send(job).is_err() {
        st.metrics.queue_depth.fetch_sub(1, Ordering::Relaxed);
        return Err(ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "the model's executor has stopped",
        ));
    }
    let outputs = outputs
        .await
        .map_err(|_| {
            ApiError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "the model's executor dropped the request",
            )
        })?
        .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?;
    encode_response(protocol::response(
        &ready.model,
        &st.name,
        &st.version,
        id,
        &checked.outputs,
        outputs,
    ))
}

async fn metrics(State(st): Shared) -> Response {
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        st.metrics.render(),
    )
        .into_response()
}

async fn not_found() -> ApiError {
    ApiError::new(StatusCode::NOT_FOUND, "no such endpoint")
}

fn router(state: Arc<AppState>, max_body_bytes: usize) -> Router {
    Router::new()
        .route("/v2", get(server_metadata))
        .route("/v2/health/live", get(live))
        .route("/v2/health/ready", get(server_ready))
        .route("/v2/models/{name}", get(metadata))
        .route("/v2/models/{name}/ready", get(model_ready))
        .route("/v2/models/{name}/infer", post(infer))
        .route(
            "/v2/models/{name}/versions/{version}",
            get(metadata_version),
        )
        .route(
            "/v2/models/{name}/versions/{version}/ready",
            get(model_ready_version),
        )
        .route(
            "/v2/models/{name}/versions/{version}/infer",
            post(infer_version),
        )
        .route("/metrics", get(metrics))
        .fallback(not_found)
        .layer(DefaultBodyLimit::max(max_body_bytes))
        .with_state(state)
}

/// Opens the CPU quota: `path`, or else the channel `DILU_QUOTA_FILE` names ([`CpuQuota::from_env`], which
/// under `DILU_QUOTA_DIR` waits up to `DILU_QUOTA_WAIT_S` seconds for a channel the agent has not created yet;
/// Kubernetes can start the container first). Runs on a blocking thread so that wait never stalls the async
/// executor. `Ok(None)`: no quota, run unthrottled.
pub(crate) async fn open_quota(
    path: Option<&std::path::Path>,
) -> Result<Option<CpuQuota>, WorkerError> {
    let path = path.map(std::path::Path::to_path_buf);
    let opened = tokio::task::spawn_blocking(move || match path {
        Some(path) => CpuQuota::open(&path).map(Some),
        None => CpuQuota::from_env(),
    })
    .await
    .map_err(|e| WorkerError::Io(std::io::Error::other(e)))?;
    Ok(opened?)
}

/// Serves `config`'s model on `listener` until `shutdown` resolves.
///
/// The server answers at once (live, not ready) while the model loads on a blocking thread; once loaded it
/// starts the executor thread and becomes ready. The CPU quota comes from `config.quota_file`, or from
/// `DILU_QUOTA_FILE` when that is `None` (unthrottled when neither names one; see [`open_quota`] for the wait
/// under `DILU_QUOTA_DIR`).
///
/// Errors: an invalid config or quota channel (before serving), a model that fails to load (serving stops),
/// or an I/O failure of the server.
pub async fn serve<F>(
    config: WorkerConfig,
    listener: TcpListener,
    shutdown: F,
) -> Result<(), WorkerError>
where
    F: Future<Output = ()> + Send + 'static,
{
    config.validate()?;
    let quota = open_quota(config.quota_file.as_deref()).await?;
    let metrics = Arc::new(Metrics::default());
    let state = Arc::new(AppState {
        name: config.model_name.clone(),
        version: config.model_version.clone(),
        ready: OnceLock::new(),
        max_batch: config.max_batch,
        metrics: Arc::clone(&metrics),
    });
    let settings = BatchSettings {
        max_batch: config.max_batch,
        fixed_wait: config.fixed_wait(),
        batching: config.batching,
        slo: config.slo(),
    };
    let max_body_bytes = config.max_body_bytes;

    let (fail_tx, fail_rx) = oneshot::channel::<WorkerError>();
    let loader_state = Arc::clone(&state);
    tokio::task::spawn_blocking(move || {
        let started = Model::load(&config).and_then(|model| {
            let model = Arc::new(model);
            let (jobs, queue) = batcher::channel();
            batcher::spawn(Arc::clone(&model), queue, settings, quota, metrics)?;
            Ok(Ready { model, jobs })
        });
        match started {
            Ok(ready) => {
                let _ = loader_state.ready.set(ready);
            }
            Err(e) => {
                let _ = fail_tx.send(e);
            }
        }
    });

    let failure: Arc<Mutex<Option<WorkerError>>> = Arc::new(Mutex::new(None));
    let slot = Arc::clone(&failure);
    let stop = async move {
        let failed = async {
            match fail_rx.await {
                Ok(e) => e,
                Err(_) => std::future::pending().await,
            }
        };
        tokio::select! {
            () = shutdown => {}
            e = failed => {
                if let Ok(mut slot) = slot.lock() {
                    *slot = Some(e);
                }
            }
        }
    };
    dilu_http::serve(
        listener,
        router(state, max_body_bytes),
        dilu_http::Limits::default(),
        stop,
    )
    .await?;
    let failed = failure.lock().ok().and_then(|mut f| f.take());
    match failed {
        Some(e) => Err(e),
        None => Ok(()),
    }
}
