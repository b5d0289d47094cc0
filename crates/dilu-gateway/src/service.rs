//! The gateway as one HTTP service ([`GatewayService`]): inference requests are recognised by their path and
//! answered without a router in between; everything else goes to [`crate::Gateway::router`] (or, for a server
//! that has more routes and middleware than the gateway's, such as `dilu up`, to its own router).

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use axum::Router;
use axum::body::Body;
use axum::http::{Method, Request};
use axum::response::Response;
use dilu_http::guard::HostPolicy;
use tower_service::Service;

use super::Gateway;
use super::handlers;

/// The gateway's whole HTTP surface as a `tower` service (see [`Gateway::service`]).
#[derive(Clone)]
pub struct GatewayService {
    gateway: Arc<Gateway>,
    router: Router,
    /// Which `Host` names an inference request may carry to be answered directly (others go to the router).
    host: HostPolicy,
}

impl GatewayService {
    pub(crate) fn new(gateway: &Arc<Gateway>) -> Self {
        GatewayService {
            gateway: Arc::clone(gateway),
            router: gateway.router(),
            host: HostPolicy::Any,
        }
    }

    /// Serves every request but inference with `router` instead of the gateway's own: a server whose router
    /// holds the gateway's routes ([`Gateway::router`] merged in) with more routes and middleware around
    /// them. Inference requests are still answered directly, when their `Host` is one `host` allows; any
    /// other goes to `router`, whose own `Host` check ([`dilu_http::guard::check_host`] with the same
    /// policy) refuses it. The router must not apply other middleware to the inference routes, which the
    /// direct path would skip.
    pub fn with_router(mut self, router: Router, host: HostPolicy) -> Self {
        self.router = router;
        self.host = host;
        self
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
            if let Some(function) = infer_function(uri.path())
                && self.host.allows_request(request.headers())
            {
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
    use axum::http::header;

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

    /// What a request to `service` answers (status).
    async fn status_of(
        service: &mut GatewayService,
        method: Method,
        path: &str,
        host: &str,
    ) -> u16 {
        let request = Request::builder()
            .method(method)
            .uri(path)
            .header(header::HOST, host)
            .header(header::CONTENT_TYPE, "application/json")
            .body(Body::from("{}"))
            .unwrap();
        service.call(request).await.unwrap().status().as_u16()
    }

    #[tokio::test]
    async fn behind_a_router_inference_is_answered_directly_only_for_an_allowed_host() {
        use dilu_http::guard::check_host;
        let gateway = crate::Gateway::new(crate::GatewayConfig::default());
        let policy = HostPolicy::Loopback;
        let router = gateway
            .router()
            .route("/extra", axum::routing::get(|| async { "extra" }))
            .layer(axum::middleware::from_fn_with_state(policy, check_host));
        let mut service = gateway.service().with_router(router, policy);
        let infer = "/v2/models/nothing/infer";
        // A loopback name: the gateway itself answers (no such function: 404).
        assert_eq!(
            status_of(&mut service, Method::POST, infer, "127.0.0.1:8080").await,
            404
        );
        // A foreign name: past the router's Host check (421), not served.
        assert_eq!(
            status_of(&mut service, Method::POST, infer, "rebind.example").await,
            421
        );
        // The router's own routes, under the same check.
        assert_eq!(
            status_of(&mut service, Method::GET, "/extra", "localhost").await,
            200
        );
        assert_eq!(
            status_of(&mut service, Method::GET, "/extra", "rebind.example").await,
            421
        );
    }
}
