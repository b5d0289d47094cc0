//! `GET /v1/load`: arrivals since the previous report, the queue and in-flight requests per instance, behind the
//! bearer token when one is configured.

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::routing::post;
use dilu_api::route::{FunctionLoad, LoadReport};
use dilu_gateway::{Endpoint, FunctionPolicy, Gateway, GatewayConfig};
use dilu_http::guard::Token;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;

async fn serve(router: Router) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, router).await });
    format!("http://{addr}")
}

async fn report(client: &reqwest::Client, url: &str, token: &str) -> LoadReport {
    let response = client
        .get(format!("{url}/v1/load"))
        .bearer_auth(token)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    response.json().await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_load_report_counts_arrivals_once_and_needs_the_token() {
    // The instance answers a request only when the test releases a permit.
    let gate = Arc::new(Semaphore::new(0));
    let held = Arc::clone(&gate);
    let upstream = serve(Router::new().route(
        "/v2/models/{name}/infer",
        post(move || {
            let held = Arc::clone(&held);
            async move {
                held.acquire().await.unwrap().forget();
                axum::Json(serde_json::json!({"outputs": []}))
            }
        }),
    ))
    .await;
    let gateway = Gateway::new(GatewayConfig::default());
    gateway.upsert_function(
        "f",
        FunctionPolicy {
            max_outstanding_per_instance: 2,
            // Every request waits for the test's permits (60 ms and more): each answer is late.
            slo: Some(Duration::from_millis(20)),
            ..FunctionPolicy::default()
        },
    );
    gateway.set_endpoints(
        "f",
        vec![Endpoint {
            instance: "f-0".into(),
            url: upstream,
        }],
    );
    gateway.upsert_function("idle", FunctionPolicy::default());
    let token = Token::new("s3cret", "the token file");
    let service = gateway
        .service()
        .with_routes(gateway.load_router(Some(token)));
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(dilu_http::serve(
        listener,
        service,
        dilu_http::Limits::default(),
        std::future::pending(),
    ));
    let client = reqwest::Client::new();

    // Three requests: two in flight on f-0 (its cap), one queued.
    let mut sent = Vec::new();
    for _ in 0..3 {
        let request = client
            .post(format!("{url}/v2/models/f/infer"))
            .header("content-type", "application/json")
            .body("{}")
            .send();
        sent.push(tokio::spawn(request));
    }
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while gateway.outstanding("f") != [("f-0".to_string(), 2)] {
        assert!(
            tokio::time::Instant::now() < deadline,
            "requests never reached the instance"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    tokio::time::sleep(Duration::from_millis(50)).await;

    let refused = client.get(format!("{url}/v1/load")).send().await.unwrap();
    assert_eq!(refused.status(), 401);
    let wrong = client
        .get(format!("{url}/v1/load"))
        .bearer_auth("guess")
        .send()
        .await
        .unwrap();
    assert_eq!(wrong.status(), 401);

    let first = report(&client, &url, "s3cret").await;
    assert_eq!(
        first.functions["f"],
        FunctionLoad {
            arrivals: 3,
            queued_now: 1,
            answered: 0,
            late: 0,
            in_flight: [("f-0".to_string(), 2)].into(),
        }
    );
    assert_eq!(first.functions["idle"], FunctionLoad::default());
    assert_eq!(first.functions.len(), 2);

    // Arrivals are taken: the next report has none, the gauges stay.
    let second = report(&client, &url, "s3cret").await;
    assert_eq!(second.functions["f"].arrivals, 0);
    assert_eq!(second.functions["f"].queued_now, 1);
    assert_eq!(second.functions["f"].in_flight["f-0"], 2);

    gate.add_permits(3);
    for request in sent {
        assert_eq!(request.await.unwrap().unwrap().status(), 200);
    }
    let last = report(&client, &url, "s3cret").await;
    assert_eq!(last.functions["f"].arrivals, 0);
    assert_eq!(
        (last.functions["f"].answered, last.functions["f"].late),
        (3, 3)
    );
    assert_eq!(last.functions["f"].queued_now, 0);
    assert_eq!(last.functions["f"].in_flight.values().sum::<u64>(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_token_the_report_is_open_and_the_plain_router_has_none() {
    let gateway = Gateway::new(GatewayConfig::default());
    gateway.upsert_function("f", FunctionPolicy::default());
    let open = serve(gateway.router().merge(gateway.load_router(None))).await;
    let client = reqwest::Client::new();
    let response = client.get(format!("{open}/v1/load")).send().await.unwrap();
    assert_eq!(response.status(), 200);
    let body: serde_json::Value = response.json().await.unwrap();
    assert_eq!(
        body,
        serde_json::json!({"functions": {"f": {
            "arrivals": 0, "answered": 0, "late": 0, "queued_now": 0, "in_flight": {}
        }}})
    );
    let plain = serve(gateway.router()).await;
    let response = client.get(format!("{plain}/v1/load")).send().await.unwrap();
    assert_eq!(response.status(), 404);
}
