//! The gateway as one HTTP service ([`GatewayService`]): inference requests are recognised by their path and
//! answered without a router in between; everything else goes to [`crate::Gateway::router`].

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use axum::Router;
use axum::body::Body;
use axum::http::{Method, Request};
use axum::response::Response;
use tower_service::Service;

use super::Gateway;
use super::handlers;

/// The gateway's whole HTTP surface as a `tower` service (see [`Gateway::service`]).
#[derive(Clone)]
pub struct GatewayService {
    gateway: Arc<Gateway>,
    router: Router,
}

impl GatewayService {
    pub(crate) fn new(gateway: &Arc<Gateway>) -> Self {
        GatewayService {
            gateway: Arc::clone(gateway),
            router: gateway.router(),
        }
    }

    /// Adds `routes` (say `GET /metrics`) to those served through the router; they must not overlap the
    /// gateway's.
    pub fn with_routes(mut self, routes: Router) -> Self {
        self.router = self.router.merge(routes);
        self
    }
}

/// The function of an inference path, `/v2/models/{function}[/versions/{version}]/infer`, when the path is
/// exactly that and needs no percent-decoding (other paths, and those, are left to the router).
fn infer_function(path: &str) -> Option<&str> {
    if path.contains('%') {
        return None;
    }
    let (function, tail) = path.strip_prefix("/v2/models/")?.split_once('/')?;
    if function.is_empty() {
        return None;
    }
    if tail == "infer" {
        return Some(function);
    }
    let (version, end) = tail.strip_prefix("versions/")?.split_once('/')?;
    (!version.is_empty() && end == "infer").then_some(function)
}

impl Service<Request<Body>> for GatewayService {
    type Response = Response;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Response, Infallible>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: Request<Body>) -> Self::Future {
        if request.method() == Method::POST {
            let uri = request.uri().clone();
            if let Some(function) = infer_function(uri.path()) {
                let served = handlers::serve_infer(&self.gateway, function, request);
                return Box::pin(async move { Ok(served.await) });
            }
        }
        Box::pin(self.router.call(request))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn inference_paths_are_recognised_exactly() {
        assert_eq!(infer_function("/v2/models/resnet/infer"), Some("resnet"));
        assert_eq!(
            infer_function("/v2/models/resnet/versions/3/infer"),
            Some("resnet")
        );
        for other in [
            "/v2/models/resnet",
            "/v2/models/resnet/ready",
            "/v2/models//infer",
            "/v2/models/resnet/infer/",
            "/v2/models/resnet/versions//infer",
            "/v2/models/resnet/versions/3/infer/x",
            "/v2/models/res%6Eet/infer",
            "/v2/health/live",
        ] {
            assert_eq!(infer_function(other), None, "{other}");
        }
    }
}
