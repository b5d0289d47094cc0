//! `GET /v1/load`: what the gateway counted since the previous report, for a controller in another process.

use std::sync::Arc;

use axum::Router;
use axum::extract::State;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use dilu_http::guard::{Token, require_token};

use super::Gateway;

/// The path of the load report.
pub(crate) const PATH: &str = "/v1/load";

/// The router serving [`PATH`], behind `token` when there is one.
pub(crate) fn router(gateway: &Arc<Gateway>, token: Option<Token>) -> Router {
    let router = Router::new()
        .route(PATH, get(report))
        .with_state(Arc::clone(gateway));
    match token {
        Some(token) => {
            router.route_layer(axum::middleware::from_fn_with_state(token, require_token))
        }
        None => router,
    }
}

async fn report(State(gateway): State<Arc<Gateway>>) -> Response {
    axum::Json(gateway.take_load()).into_response()
}
