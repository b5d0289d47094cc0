//! `Gateway::service`: inference requests recognised by path and served without the router, everything else
//! through it, with the same answers as `Gateway::router` (fake v2 workers on 127.0.0.1, a reqwest client).

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};
use std::sync::{Arc, Mutex};

use axum::Router;
use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{HeaderMap, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use dilu_gateway::{Endpoint, FunctionPolicy, Gateway, GatewayConfig};
use tokio::net::TcpListener;

/// What the echoing worker saw: requests and their paths.
#[derive(Default)]
struct Seen {
    hits: AtomicUsize,
    paths: Mutex<Vec<String>>,
}

/// Echoes the body with the request's content type and binary-extension header, noting the path.
async fn echo(
    State(seen): State<Arc<Seen>>,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    seen.hits.fetch_add(1, SeqCst);
    seen.paths.lock().unwrap().push(uri.to_string());
    let mut response = (StatusCode::OK, body).into_response();
    for name in [
        header::CONTENT_TYPE.as_str(),
        "inference-header-content-length",
    ] {
        if let Some(value) = headers.get(name) {
            response.headers_mut().insert(name, value.clone());
        }
    }
    response
}

async fn serve(router: Router) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, router).await.unwrap() });
    addr
}

/// A gateway served through `service()` in front of one echoing worker, and what the worker saw.
async fn gateway() -> (String, Arc<Seen>) {
    let hits = Arc::new(Seen::default());
    let worker = Router::new()
        .route("/v2/models/{model}/infer", post(echo))
        .route("/v2/models/{model}/versions/{version}/infer", post(echo))
        .route(
            "/v2/models/{model}",
            get(|| async { axum::Json(serde_json::json!({"name": "f", "platform": "fake"})) }),
        )
        .layer(DefaultBodyLimit::disable())
        .with_state(Arc::clone(&hits));
    let worker = serve(worker).await;
    let gateway = Gateway::new(GatewayConfig::default());
    gateway.upsert_function("f", FunctionPolicy::default());
    gateway.set_endpoints(
        "f",
        vec![Endpoint {
            instance: "f-0".into(),
            url: format!("http://{worker}"),
        }],
    );
    let addr = serve(Router::new().fallback_service(gateway.service())).await;
    (format!("http://{addr}"), hits)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn inference_is_forwarded_byte_exact_on_both_paths() {
    let (base, hits) = gateway().await;
    let client = reqwest::Client::new();
    // A body of several MiB arrives in many frames and is forwarded without being joined.
    let body: Vec<u8> = (0..=255u8).cycle().take(3 << 20).collect();
    for path in [
        "/v2/models/f/infer?trace=1",
        "/v2/models/f/versions/7/infer",
    ] {
        let response = client
            .post(format!("{base}{path}"))
            .header(header::CONTENT_TYPE, "application/octet-stream")
            .header("inference-header-content-length", "12")
            .body(body.clone())
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200, "{path}");
        assert_eq!(
            response.headers()[header::CONTENT_TYPE],
            "application/octet-stream"
        );
        assert_eq!(response.headers()["inference-header-content-length"], "12");
        assert_eq!(response.bytes().await.unwrap(), body, "{path}");
    }
    assert_eq!(
        *hits.paths.lock().unwrap(),
        [
            "/v2/models/f/infer?trace=1",
            "/v2/models/f/versions/7/infer"
        ]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn other_requests_get_the_routers_answers() {
    let (base, hits) = gateway().await;
    let client = reqwest::Client::new();
    // Unknown function: the gateway's own 404, naming it.
    let response = client
        .post(format!("{base}/v2/models/nope/infer"))
        .body("{}")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 404);
    let error: serde_json::Value = response.json().await.unwrap();
    assert!(error["error"].as_str().unwrap().contains("\"nope\""));
    // A percent-encoded name goes through the router, which decodes it.
    let response = client
        .post(format!("{base}/v2/models/%66/infer"))
        .body("{}")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    // Wrong method on the inference path, metadata and health: the router's.
    let response = client
        .get(format!("{base}/v2/models/f/infer"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 405);
    let metadata: serde_json::Value = client
        .get(format!("{base}/v2/models/f"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(metadata["platform"], "fake");
    let response = client
        .get(format!("{base}/v2/health/live"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let response = client
        .post(format!("{base}/v2/models/f/infer/extra"))
        .body("{}")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 404);
    assert_eq!(hits.hits.load(SeqCst), 1);
}
