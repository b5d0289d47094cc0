//! Forwarding to instances: the shared HTTP client, reading a client's body within a limit, and relaying the
//! instance's status, content type and body unchanged.

use std::time::Duration;

use axum::body::Body;
use axum::http::{HeaderMap, HeaderName, Method, header};
use axum::response::Response;
use bytes::{Bytes, BytesMut};
use http_body_util::BodyExt;

use super::config::GatewayConfig;
use super::errors::error_chain;

/// The KServe v2 binary-tensor extension's header; it must travel with the body it describes.
static INFERENCE_HEADER_CONTENT_LENGTH: HeaderName =
    HeaderName::from_static("inference-header-content-length");

/// Builds the one client every forward goes through: pooled keep-alive connections, no proxy, no Nagle.
pub(crate) fn build_client(config: &GatewayConfig) -> Result<reqwest::Client, String> {
    reqwest::Client::builder()
        .no_proxy()
        .tcp_nodelay(true)
        .connect_timeout(config.connect_timeout)
        .pool_max_idle_per_host(1024)
        .pool_idle_timeout(Duration::from_secs(90))
        .build()
        .map_err(|e| format!("could not build the HTTP client: {}", error_chain(&e)))
}

/// Why a client's body was not read.
pub(crate) enum BodyError {
    TooLarge,
    Read(String),
}

/// Reads a request body, failing as soon as it is known to exceed `limit` (never holding more than the limit
/// plus the frame that crossed it).
pub(crate) async fn read_body(
    body: Body,
    headers: &HeaderMap,
    limit: usize,
) -> Result<Bytes, BodyError> {
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    let mut body = body;
    if declared.is_some_and(|len| len > limit as u64) {
        drain(&mut body, declared).await;
        return Err(BodyError::TooLarge);
    }
    // The common case is one frame: keep it without copying; only a second frame starts a buffer.
    let mut first: Option<Bytes> = None;
    let mut buffer: Option<BytesMut> = None;
    let mut len = 0usize;
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|e| BodyError::Read(error_chain(&e)))?;
        let Ok(data) = frame.into_data() else {
            continue;
        };
        len += data.len();
        if len > limit {
            drain(&mut body, declared).await;
            return Err(BodyError::TooLarge);
        }
        match (&mut buffer, first.take()) {
            (Some(buf), _) => buf.extend_from_slice(&data),
            (None, None) => first = Some(data),
            (None, Some(head)) => {
                let capacity = declared
                    .map_or(len, |d| usize::try_from(d).unwrap_or(len))
                    .max(len);
                let mut buf = BytesMut::with_capacity(capacity);
                buf.extend_from_slice(&head);
                buf.extend_from_slice(&data);
                buffer = Some(buf);
            }
        }
    }
    Ok(match buffer {
        Some(buf) => buf.freeze(),
        None => first.unwrap_or_default(),
    })
}

/// Most of a refused body read and thrown away so that the client, still sending, gets the error response
/// rather than a reset connection; larger bodies are cut off.
const DRAIN_MAX: u64 = 8 << 20;

/// Reads and discards the rest of a refused body when it is small enough (see [`DRAIN_MAX`]).
async fn drain(body: &mut Body, declared: Option<u64>) {
    if declared.is_some_and(|len| len > DRAIN_MAX) {
        return;
    }
    let mut seen = 0u64;
    while let Some(Ok(frame)) = body.frame().await {
        if let Ok(data) = frame.into_data() {
            seen += data.len() as u64;
            if seen > DRAIN_MAX {
                return;
            }
        }
    }
}

/// How a forward failed.
pub(crate) enum ForwardError {
    /// No response head arrived (connection refused or reset, closed early): the instance is presumed dead
    /// and the request may be retried elsewhere.
    Transport(String),
    /// The head arrived but the body broke off: the instance may have done the work; not retried.
    Body(String),
}

/// Sends `method path_and_query` with `body` to the instance at `base_url`, relaying the headers that describe
/// the body, and returns the instance's status, content type and body unchanged.
pub(crate) async fn forward(
    client: &reqwest::Client,
    method: Method,
    base_url: &str,
    path_and_query: &str,
    headers: &HeaderMap,
    body: Option<Bytes>,
) -> Result<Response, ForwardError> {
    let mut url = String::with_capacity(base_url.len() + path_and_query.len());
    url.push_str(base_url);
    url.push_str(path_and_query);
    let mut request = client.request(method, url);
    for name in [
        &header::CONTENT_TYPE,
        &header::CONTENT_ENCODING,
        &header::ACCEPT,
        &INFERENCE_HEADER_CONTENT_LENGTH,
    ] {
        if let Some(value) = headers.get(name) {
            request = request.header(name, value);
        }
    }
    if let Some(body) = body {
        request = request.body(body);
    }
    let upstream = request
        .send()
        .await
        .map_err(|e| ForwardError::Transport(error_chain(&e)))?;
    let status = upstream.status();
    let mut relayed = HeaderMap::new();
    for name in [
        &header::CONTENT_TYPE,
        &header::CONTENT_ENCODING,
        &INFERENCE_HEADER_CONTENT_LENGTH,
    ] {
        if let Some(value) = upstream.headers().get(name) {
            relayed.insert(name, value.clone());
        }
    }
    let bytes = upstream
        .bytes()
        .await
        .map_err(|e| ForwardError::Body(error_chain(&e)))?;
    let mut response = Response::new(Body::from(bytes));
    *response.status_mut() = status;
    *response.headers_mut() = relayed;
    Ok(response)
}
