//! `PulledLoad` against two real gateways serving `GET /v1/load` behind a token: arrivals are summed over the
//! gateways and taken once, in-flight requests per instance are the sums of the latest reports, and a
//! gateway that refuses the token or is down does not stop the others from counting.

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::routing::post;
use dilu_control::LoadSource;
use dilu_gateway::{Endpoint, FunctionPolicy, Gateway, GatewayConfig};
use dilu_http::guard::Token;
use dilu_k8s::load::{PullConfig, PulledLoad};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;

async fn serve(router: Router) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, router).await });
    format!("http://{addr}")
}

/// A gateway routing `f` to `upstream` as instance `f-0`, with `GET /v1/load` behind `token`.
async fn gateway(upstream: &str, token: &str) -> (Arc<Gateway>, String) {
    let gateway = Gateway::new(GatewayConfig::default());
    gateway.upsert_function("f", FunctionPolicy::default());
    gateway.set_endpoints(
        "f",
        vec![Endpoint {
            instance: "f-0".into(),
            url: upstream.to_string(),
        }],
    );
    let router = gateway
        .router()
        .merge(gateway.load_router(Some(Token::new(token, "test"))));
    let url = serve(router).await;
    (gateway, url)
}

async fn eventually(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while !done() {
        assert!(tokio::time::Instant::now() < deadline, "timed out: {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn arrivals_are_summed_over_gateways_and_taken_once() {
    // The instance answers only when the test releases a permit.
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
    let (a, a_url) = gateway(&upstream, "tok").await;
    let (b, b_url) = gateway(&upstream, "tok").await;
    // A third gateway wants another token, a fourth is not there: both only log.
    let (_c, c_url) = gateway(&upstream, "other").await;
    let dead = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        format!("http://{}", l.local_addr().unwrap())
    };
    let config = PullConfig {
        interval: Duration::from_millis(50),
        timeout: Duration::from_millis(500),
        ..PullConfig::new(
            vec![a_url.clone(), b_url.clone(), c_url, dead],
            Some("tok".into()),
        )
    };
    let load = PulledLoad::start(config).unwrap();

    let client = reqwest::Client::new();
    let mut sent = Vec::new();
    for (url, n) in [(&a_url, 2), (&b_url, 3)] {
        for _ in 0..n {
            let request = client
                .post(format!("{url}/v2/models/f/infer"))
                .header("content-type", "application/json")
                .body("{}")
                .send();
            sent.push(tokio::spawn(request));
        }
    }
    eventually("both gateways forward their requests", || {
        a.outstanding("f") == [("f-0".to_string(), 2)]
            && b.outstanding("f") == [("f-0".to_string(), 3)]
    })
    .await;
    eventually("the in-flight sum reaches the controller", || {
        load.in_flight("f", "f-0") == 5
    })
    .await;
    // Arrivals come in over the polls; all five are taken, once.
    let mut arrivals = 0;
    eventually("five arrivals", || {
        arrivals += load.take_window("f").arrivals;
        arrivals == 5
    })
    .await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    let window = load.take_window("f");
    assert_eq!(window.arrivals, 0, "taken already");
    assert_eq!(window.queued_now, 0);
    assert_eq!(load.in_flight("f", "f-1"), 0);

    gate.add_permits(5);
    for request in sent {
        assert_eq!(request.await.unwrap().unwrap().status(), 200);
    }
    eventually("the in-flight sum drops to zero", || {
        load.in_flight("f", "f-0") == 0
    })
    .await;
    assert_eq!(load.take_window("f").arrivals, 0);
    assert_eq!(load.take_window("unknown"), Default::default());
}

#[test]
fn a_gateway_url_with_a_path_is_refused() {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let _guard = runtime.enter();
    let err = PulledLoad::start(PullConfig::new(vec!["http://gw:8080/v1/load".into()], None))
        .err()
        .unwrap()
        .to_string();
    assert!(
        err.contains("http://gw:8080/v1/load") && err.contains("path"),
        "{err}"
    );
}
