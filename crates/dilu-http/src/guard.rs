//! Checks a request passes before any handler runs: its `Host` (DNS rebinding), its `Content-Type` (a
//! browser can post `text/plain` cross-site without asking first), and its bearer token.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use serde_json::json;

use crate::serve::Peer;

/// An error response in the shape every Dilu API uses: `{"error", "field", "value", "rule"}`.
pub fn field_error(
    status: StatusCode,
    message: impl Into<String>,
    field: &str,
    value: impl Into<String>,
    rule: &str,
) -> Response {
    (
        status,
        axum::Json(json!({
            "error": message.into(),
            "field": field,
            "value": value.into(),
            "rule": rule,
        })),
    )
        .into_response()
}

/// Which `Host` headers a listener answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HostPolicy {
    /// Any host (a listener on a routable address, reached by whatever name the network gives it).
    Any,
    /// Only loopback names (`localhost`, `127.0.0.0/8`, `[::1]`): a web page whose domain was re-pointed at
    /// 127.0.0.1 (DNS rebinding) sends its own name and is refused.
    Loopback,
}

impl HostPolicy {
    /// [`HostPolicy::Loopback`] for a listener bound to a loopback address, [`HostPolicy::Any`] otherwise.
    pub fn for_listener(addr: SocketAddr) -> Self {
        if addr.ip().is_loopback() {
            HostPolicy::Loopback
        } else {
            HostPolicy::Any
        }
    }

    /// Whether a request with these headers is answered (see [`HostPolicy::allows`]); under
    /// [`HostPolicy::Any`] without looking at them.
    pub fn allows_request(self, headers: &HeaderMap) -> bool {
        self == HostPolicy::Any || self.allows(request_host(headers))
    }

    /// Whether a request with this `Host` header (absent: HTTP/1.0 or a Unix socket client) is answered.
    pub fn allows(self, host: Option<&str>) -> bool {
        match (self, host) {
            (HostPolicy::Any, _) | (HostPolicy::Loopback, None) => true,
            (HostPolicy::Loopback, Some(host)) => is_loopback_name(strip_port(host)),
        }
    }
}

/// A request's `Host` header as the policy reads it (one that is not text reads as no loopback name).
fn request_host(headers: &HeaderMap) -> Option<&str> {
    headers
        .get(header::HOST)
        .map(|v| v.to_str().unwrap_or("(not text)"))
}

fn strip_port(host: &str) -> &str {
    if let Some(rest) = host.strip_prefix('[') {
        return rest.split(']').next().unwrap_or(rest);
    }
    match host.rsplit_once(':') {
        Some((name, port)) if port.bytes().all(|b| b.is_ascii_digit()) => name,
        _ => host,
    }
}

fn is_loopback_name(name: &str) -> bool {
    name.eq_ignore_ascii_case("localhost")
        || name.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

/// Middleware: refuses (421) a request whose `Host` the policy does not allow.
pub async fn check_host(
    State(policy): State<HostPolicy>,
    request: Request,
    next: Next,
) -> Response {
    let host = request_host(request.headers());
    if !policy.allows(host) {
        return field_error(
            StatusCode::MISDIRECTED_REQUEST,
            "this server listens on loopback and answers only loopback host names",
            "Host",
            host.unwrap_or_default(),
            "must be localhost, a 127.0.0.0/8 address or [::1] (protection against DNS rebinding)",
        );
    }
    next.run(request).await
}

/// Whether a method carries a body that changes state.
fn sends_state(method: &Method) -> bool {
    matches!(*method, Method::POST | Method::PUT | Method::PATCH)
}

/// Middleware: a `POST`, `PUT` or `PATCH` must say `Content-Type: application/json` (415 otherwise). Browsers
/// cannot send that type to another origin without a CORS preflight, which Dilu never grants.
pub async fn require_json(request: Request, next: Next) -> Response {
    if sends_state(request.method()) {
        let given = request.headers().get(header::CONTENT_TYPE);
        let json = given
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.split(';').next())
            .is_some_and(|media| media.trim().eq_ignore_ascii_case("application/json"));
        if !json {
            return field_error(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "this endpoint takes JSON",
                "Content-Type",
                given.map_or("(missing)", |v| v.to_str().unwrap_or("(not text)")),
                "must be application/json",
            );
        }
    }
    next.run(request).await
}

/// A bearer token that requests must present.
#[derive(Clone)]
pub struct Token {
    secret: Arc<str>,
    /// Where a client finds it, for the 401's rule (e.g. "DATA_DIR/token").
    hint: Arc<str>,
}

impl std::fmt::Debug for Token {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Token").field("hint", &self.hint).finish()
    }
}

impl Token {
    /// A token with `secret`, described to clients by `hint`.
    pub fn new(secret: impl Into<Arc<str>>, hint: impl Into<Arc<str>>) -> Self {
        Token {
            secret: secret.into(),
            hint: hint.into(),
        }
    }

    /// Whether `headers` carry `Authorization: Bearer <this token>` (compared in constant time).
    pub fn presented_in(&self, headers: &HeaderMap) -> bool {
        bearer(headers)
            .is_some_and(|given| constant_time_eq(given.as_bytes(), self.secret.as_bytes()))
    }

    /// The 401 for a request without this token.
    pub fn refusal(&self, headers: &HeaderMap) -> Response {
        let given = if bearer(headers).is_some() {
            "Bearer (wrong token)"
        } else {
            "(missing)"
        };
        let rule = format!("must be 'Bearer <token>' with the token in {}", self.hint);
        let mut response = field_error(
            StatusCode::UNAUTHORIZED,
            "this endpoint needs the API token",
            "Authorization",
            given,
            &rule,
        );
        response
            .headers_mut()
            .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        response
    }
}

fn bearer(headers: &HeaderMap) -> Option<&str> {
    headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
}

/// Compares secrets without an early exit on the first difference.
pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Middleware: every request but `GET /health` needs the token, unless it came over a Unix socket from this
/// process's user or root (the kernel vouches for those).
pub async fn require_token(State(token): State<Token>, request: Request, next: Next) -> Response {
    let open = request.method() == Method::GET && request.uri().path() == "/health";
    let local_owner = request
        .extensions()
        .get::<Peer>()
        .is_some_and(Peer::is_local_owner);
    if !open && !local_owner && !token.presented_in(request.headers()) {
        return token.refusal(request.headers());
    }
    next.run(request).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_listeners_answer_only_loopback_names() {
        let policy = HostPolicy::for_listener("127.0.0.1:7071".parse().unwrap());
        assert_eq!(policy, HostPolicy::Loopback);
        for host in [
            "localhost",
            "LOCALHOST:7071",
            "127.0.0.1",
            "127.0.0.1:7071",
            "127.1.2.3:9",
            "[::1]:7071",
            "[::1]",
        ] {
            assert!(policy.allows(Some(host)), "{host}");
        }
        for host in [
            "evil.example",
            "evil.example:7071",
            "localhost.evil.example",
            "10.0.0.1:7071",
            "[fe80::1]:7071",
        ] {
            assert!(!policy.allows(Some(host)), "{host}");
        }
        assert!(policy.allows(None));
        let open = HostPolicy::for_listener("0.0.0.0:8080".parse().unwrap());
        assert!(open.allows(Some("evil.example")));
    }

    #[test]
    fn tokens_compare_whole() {
        let token = Token::new("abc123", "DIR/token");
        let mut headers = HeaderMap::new();
        assert!(!token.presented_in(&headers));
        headers.insert(
            header::AUTHORIZATION,
            HeaderValue::from_static("Bearer abc12"),
        );
        assert!(!token.presented_in(&headers));
        headers.insert(
            header::AUTHORIZATION,
            HeaderValue::from_static("Bearer abc123"),
        );
        assert!(token.presented_in(&headers));
        headers.insert(
            header::AUTHORIZATION,
            HeaderValue::from_static("bearer abc123"),
        );
        assert!(!token.presented_in(&headers));
    }
}
