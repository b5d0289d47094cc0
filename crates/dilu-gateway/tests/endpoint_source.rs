//! The gateway follows an `EndpointSource`: routes that appear are served, routes that go away answer 404, and a
//! request for a function without ready endpoints wakes the source (the activator signal) and is served as soon
//! as an endpoint is published.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::routing::post;
use dilu_api::spec::GatewaySpec;
use dilu_api::{Endpoint, Route};
use dilu_gateway::{EndpointSource, Gateway, GatewayConfig, RoutingTable};
use tokio::net::TcpListener;
use tokio::sync::watch;

/// A source whose table the test sets and which records every wake.
struct Recorded {
    tx: watch::Sender<RoutingTable>,
    wakes: Mutex<Vec<String>>,
}

impl EndpointSource for Recorded {
    fn routes(&self) -> watch::Receiver<RoutingTable> {
        self.tx.subscribe()
    }

    fn wake(&self, function: &str) {
        self.wakes.lock().unwrap().push(function.to_string());
    }
}

async fn serve(router: Router) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, router).await });
    format!("http://{addr}")
}

fn route(function: &str, endpoints: &[&str]) -> Route {
    Route {
        function: function.into(),
        gateway: GatewaySpec {
            cold_start_timeout_ms: 5_000,
            ..GatewaySpec::default()
        },
        slo_ms: Some(100.0),
        endpoints: endpoints
            .iter()
            .enumerate()
            .map(|(i, url)| Endpoint {
                instance: format!("{function}-{i}"),
                url: url.to_string(),
            })
            .collect(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn routes_follow_the_source_and_a_waiting_request_wakes_it() {
    let upstream = serve(Router::new().route(
        "/v2/models/{name}/infer",
        post(|| async { axum::Json(serde_json::json!({"outputs": []})) }),
    ))
    .await;
    let source = Arc::new(Recorded {
        tx: watch::Sender::new(Arc::new(vec![route("f", &[&upstream])])),
        wakes: Mutex::new(Vec::new()),
    });
    let gateway = Gateway::new(GatewayConfig::default());
    gateway.follow(source.clone());
    let url = serve(gateway.router()).await;
    let client = reqwest::Client::new();
    let infer = |f: &str| {
        client
            .post(format!("{url}/v2/models/{f}/infer"))
            .header("content-type", "application/json")
            .body("{\"inputs\": []}")
            .send()
    };
    assert_eq!(infer("f").await.unwrap().status(), 200);
    assert_eq!(infer("g").await.unwrap().status(), 404);

    // g appears without endpoints: its request waits and wakes the source; an endpoint serves it.
    source
        .tx
        .send_replace(Arc::new(vec![route("f", &[&upstream]), route("g", &[])]));
    tokio::time::sleep(Duration::from_millis(50)).await;
    let waiting = tokio::spawn(infer("g"));
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(source.wakes.lock().unwrap().as_slice(), ["g".to_string()]);
    source.tx.send_replace(Arc::new(vec![
        route("f", &[&upstream]),
        route("g", &[&upstream]),
    ]));
    let answered = waiting.await.unwrap().unwrap();
    assert_eq!(answered.status(), 200);

    // f goes away: 404.
    source
        .tx
        .send_replace(Arc::new(vec![route("g", &[&upstream])]));
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert_eq!(infer("f").await.unwrap().status(), 404);
    assert_eq!(infer("g").await.unwrap().status(), 200);
}
