//! Errors the gateway answers itself, and how each becomes a JSON `{"error": ...}` response.

use std::time::Duration;

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};

/// An answer the gateway gives itself instead of an instance's response.
#[derive(Debug, thiserror::Error)]
pub enum GatewayError {
    /// No function of that name is deployed on this gateway.
    #[error("function \"{function}\" is not deployed on this gateway")]
    UnknownFunction {
        /// The name the client asked for.
        function: String,
    },
    /// The function was removed while the request waited.
    #[error("function \"{function}\" was removed while the request waited for an instance")]
    Removed {
        /// The removed function.
        function: String,
    },
    /// The request body is larger than the function's (or the gateway's) limit.
    #[error("request body for function \"{function}\" exceeds the limit of {limit} bytes")]
    BodyTooLarge {
        /// The function addressed.
        function: String,
        /// The limit that applied, in bytes.
        limit: usize,
    },
    /// The client's request body could not be read.
    #[error("could not read the request body for function \"{function}\": {reason}")]
    BadBody {
        /// The function addressed.
        function: String,
        /// What went wrong.
        reason: String,
    },
    /// The function's wait queue is full.
    #[error(
        "queue of function \"{function}\" is full ({capacity} requests waiting, the queue_capacity); retry after {retry_after_s} s"
    )]
    QueueFull {
        /// The function addressed.
        function: String,
        /// Its queue capacity.
        capacity: usize,
        /// Suggested back-off in whole seconds (at least 1); also sent as `Retry-After`.
        retry_after_s: u64,
    },
    /// No instance became ready within the function's cold-start timeout.
    #[error(
        "no instance of function \"{function}\" became ready within the cold_start_timeout of {timeout:?}"
    )]
    NoInstance {
        /// The function addressed.
        function: String,
        /// Its cold-start timeout.
        timeout: Duration,
    },
    /// No instance of the function is ready right now (metadata requests do not wait).
    #[error("no instance of function \"{function}\" is ready")]
    NotReady {
        /// The function addressed.
        function: String,
    },
    /// The request did not finish within the function's request timeout.
    #[error(
        "request to function \"{function}\" did not finish within its request_timeout of {timeout:?}"
    )]
    Timeout {
        /// The function addressed.
        function: String,
        /// Its request timeout.
        timeout: Duration,
    },
    /// Forwarding failed at the transport level on two instances (or the upstream response broke off).
    #[error("upstream of function \"{function}\" failed: {detail}")]
    Upstream {
        /// The function addressed.
        function: String,
        /// Every failed attempt, with its instance and cause.
        detail: String,
    },
    /// The gateway cannot forward at all (its HTTP client could not be built).
    #[error("gateway internal error: {0}")]
    Internal(String),
}

impl GatewayError {
    /// The HTTP status this error is answered with.
    pub fn status(&self) -> StatusCode {
        match self {
            GatewayError::UnknownFunction { .. } | GatewayError::Removed { .. } => {
                StatusCode::NOT_FOUND
            }
            GatewayError::BodyTooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            GatewayError::BadBody { .. } => StatusCode::BAD_REQUEST,
            GatewayError::QueueFull { .. } => StatusCode::TOO_MANY_REQUESTS,
            GatewayError::NoInstance { .. } | GatewayError::NotReady { .. } => {
                StatusCode::SERVICE_UNAVAILABLE
            }
            GatewayError::Timeout { .. } => StatusCode::GATEWAY_TIMEOUT,
            GatewayError::Upstream { .. } => StatusCode::BAD_GATEWAY,
            GatewayError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }
}

/// `{"error": message}` as a JSON response with the given status.
pub(crate) fn json_error(status: StatusCode, message: &str) -> Response {
    let body = serde_json::json!({ "error": message }).to_string();
    (
        status,
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        )],
        body,
    )
        .into_response()
}

impl IntoResponse for GatewayError {
    fn into_response(self) -> Response {
        let mut response = json_error(self.status(), &self.to_string());
        if let GatewayError::QueueFull { retry_after_s, .. } = self {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(retry_after_s.max(1)));
        }
        response
    }
}

/// An error and all its sources, `: `-separated (reqwest's own message alone rarely says what happened).
pub(crate) fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        if !text.contains(&cause_text) {
            text.push_str(": ");
            text.push_str(&cause_text);
        }
        source = cause.source();
    }
    text
}
