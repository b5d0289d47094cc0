//! The inference gateway over real HTTP on 127.0.0.1: fake v2 workers (echo, delay, fail, close the
//! connection) behind a gateway, driven by a reqwest client.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use dilu_gateway::{Endpoint, FunctionPolicy, Gateway, GatewayConfig, WindowCounts};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

// ---------------------------------------------------------------------------------------------------------
// Fake workers
// ---------------------------------------------------------------------------------------------------------

/// A worker-like v2 server whose behaviour the test controls.
#[derive(Default)]
struct Fake {
    hits: AtomicUsize,
    current: AtomicUsize,
    max_concurrent: AtomicUsize,
    delay: Mutex<Duration>,
    paths: Mutex<Vec<String>>,
    bodies: Mutex<Vec<Bytes>>,
}

impl Fake {
    fn set_delay(&self, delay: Duration) {
        *self.delay.lock().unwrap() = delay;
    }
}

/// Decrements the concurrency count even when the handler is cancelled.
struct InFlight<'a>(&'a AtomicUsize);

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, SeqCst);
    }
}

const WORKER_400: &str = "{\"error\":\"input tensor \\\"x\\\": expected shape [1,4], got [1,5]\"}";

async fn fake_infer(
    State(fake): State<Arc<Fake>>,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    fake.hits.fetch_add(1, SeqCst);
    let now = fake.current.fetch_add(1, SeqCst) + 1;
    fake.max_concurrent.fetch_max(now, SeqCst);
    let _in_flight = InFlight(&fake.current);
    fake.paths.lock().unwrap().push(uri.to_string());
    fake.bodies.lock().unwrap().push(body.clone());
    let delay = *fake.delay.lock().unwrap();
    if !delay.is_zero() {
        tokio::time::sleep(delay).await;
    }
    if body.starts_with(b"FAIL400") {
        return (
            StatusCode::BAD_REQUEST,
            [(header::CONTENT_TYPE, "application/json")],
            WORKER_400,
        )
            .into_response();
    }
    if body.starts_with(b"FAIL500") {
        return (
            StatusCode::INTERNAL_SERVER_ERROR,
            [(header::CONTENT_TYPE, "text/plain")],
            "boom",
        )
            .into_response();
    }
    let content_type = headers
        .get(header::CONTENT_TYPE)
        .cloned()
        .unwrap_or(header::HeaderValue::from_static("application/json"));
    (StatusCode::OK, [(header::CONTENT_TYPE, content_type)], body).into_response()
}

async fn fake_metadata(Path(model): Path<String>) -> Response {
    axum::Json(serde_json::json!({"name": model, "platform": "fake", "inputs": [], "outputs": []}))
        .into_response()
}

async fn serve(router: Router) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, router).await.unwrap() });
    addr
}

async fn fake_worker() -> (Arc<Fake>, SocketAddr) {
    let fake = Arc::new(Fake::default());
    let router = Router::new()
        .route("/v2/models/{model}/infer", post(fake_infer))
        .route(
            "/v2/models/{model}/versions/{version}/infer",
            post(fake_infer),
        )
        .route("/v2/models/{model}", get(fake_metadata))
        .with_state(fake.clone());
    (fake, serve(router).await)
}

/// A "worker" that reads the request and closes the connection without answering.
async fn closing_worker() -> (Arc<AtomicUsize>, SocketAddr) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let accepted = Arc::new(AtomicUsize::new(0));
    let counter = accepted.clone();
    tokio::spawn(async move {
        loop {
            let Ok((mut stream, _)) = listener.accept().await else {
                return;
            };
            counter.fetch_add(1, SeqCst);
            tokio::spawn(async move {
                let mut buf = [0u8; 4096];
                let _ = stream.read(&mut buf).await;
            });
        }
    });
    (accepted, addr)
}

/// An address nothing listens on (a killed worker).
fn dead_address() -> SocketAddr {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.local_addr().unwrap()
}

fn endpoint(instance: &str, addr: SocketAddr) -> Endpoint {
    Endpoint {
        instance: instance.to_string(),
        url: format!("http://{addr}"),
    }
}

// ---------------------------------------------------------------------------------------------------------
// Gateway helpers
// ---------------------------------------------------------------------------------------------------------

struct Harness {
    gateway: Arc<Gateway>,
    base: String,
    client: reqwest::Client,
}

impl Harness {
    async fn new(config: GatewayConfig) -> Harness {
        let gateway = Gateway::new(config);
        let addr = serve(gateway.router()).await;
        let client = reqwest::Client::builder().no_proxy().build().unwrap();
        Harness {
            gateway,
            base: format!("http://{addr}"),
            client,
        }
    }

    async fn with_function(policy: FunctionPolicy, endpoints: Vec<Endpoint>) -> Harness {
        let harness = Harness::new(GatewayConfig::default()).await;
        harness.gateway.upsert_function("f", policy);
        harness.gateway.set_endpoints("f", endpoints);
        harness
    }

    fn infer(&self, function: &str, body: impl Into<reqwest::Body>) -> reqwest::RequestBuilder {
        self.client
            .post(format!("{}/v2/models/{function}/infer", self.base))
            .header(header::CONTENT_TYPE, "application/json")
            .body(body)
    }

    fn metrics(&self) -> String {
        let mut out = String::new();
        self.gateway.render_metrics(&mut out);
        out
    }

    /// The value of one sample line, 0 when absent.
    fn metric(&self, series: &str) -> f64 {
        dilu_core::prometheus::value(&self.metrics(), series).unwrap_or(0.0)
    }

    fn window(&self) -> WindowCounts {
        self.gateway.take_window("f").unwrap()
    }

    fn queued(&self) -> u64 {
        let (queued, _) = self.gauges();
        queued
    }

    fn gauges(&self) -> (u64, u64) {
        let q = self.metric("dilu_gateway_queue_depth{function=\"f\"}") as u64;
        let o = self.metric("dilu_gateway_outstanding{function=\"f\"}") as u64;
        (q, o)
    }
}

/// Polls `cond` every 5 ms for up to 10 s.
async fn eventually(what: &str, mut cond: impl FnMut() -> bool) {
    let start = Instant::now();
    while !cond() {
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "timed out waiting for: {what}"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

async fn error_of(response: reqwest::Response) -> String {
    assert_eq!(response.headers()[header::CONTENT_TYPE], "application/json");
    let body: serde_json::Value = response.json().await.unwrap();
    body["error"]
        .as_str()
        .unwrap_or_else(|| panic!("no error string in {body}"))
        .to_string()
}

fn policy() -> FunctionPolicy {
    FunctionPolicy {
        request_timeout: Duration::from_secs(20),
        cold_start_timeout: Duration::from_secs(10),
        ..Default::default()
    }
}

// ---------------------------------------------------------------------------------------------------------
// Tests
// ---------------------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forwarding_is_byte_exact_both_ways() {
    let (fake, addr) = fake_worker().await;
    let h = Harness::with_function(policy(), vec![endpoint("f-0", addr)]).await;

    // Arbitrary binary body, unusual content type.
    let body: Vec<u8> = (0..=255u8).cycle().take(70_000).collect();
    let response = h
        .client
        .post(format!("{}/v2/models/f/infer?trace=1", h.base))
        .header(header::CONTENT_TYPE, "application/octet-stream")
        .body(body.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(
        response.headers()[header::CONTENT_TYPE],
        "application/octet-stream"
    );
    assert_eq!(response.bytes().await.unwrap().as_ref(), body.as_slice());
    assert_eq!(
        fake.bodies.lock().unwrap()[0].as_ref(),
        body.as_slice(),
        "the worker got the bytes unchanged"
    );

    // A v2 JSON request, through the versioned route: same path on the worker.
    let json =
        r#"{"inputs":[{"name":"x","shape":[1,4],"datatype":"FP32","data":[1.0,2.5,-3e-7,4]}]}"#;
    let response = h
        .client
        .post(format!("{}/v2/models/f/versions/3/infer", h.base))
        .header(header::CONTENT_TYPE, "application/json")
        .body(json)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(response.text().await.unwrap(), json);
    assert_eq!(
        *fake.paths.lock().unwrap(),
        vec![
            "/v2/models/f/infer?trace=1",
            "/v2/models/f/versions/3/infer"
        ]
    );

    // A worker's error status and body are relayed as they are.
    let response = h.infer("f", "FAIL400").send().await.unwrap();
    assert_eq!(response.status(), 400);
    assert_eq!(response.headers()[header::CONTENT_TYPE], "application/json");
    assert_eq!(response.text().await.unwrap(), WORKER_400);

    // A worker's 500 is relayed, not retried.
    let response = h.infer("f", "FAIL500").send().await.unwrap();
    assert_eq!(response.status(), 500);
    assert_eq!(response.text().await.unwrap(), "boom");
    assert_eq!(fake.hits.load(SeqCst), 4);
    assert_eq!(h.metric("dilu_gateway_retries_total{function=\"f\"}"), 0.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_function_is_404_naming_it() {
    let h = Harness::new(GatewayConfig::default()).await;
    let response = h.infer("nope", "{}").send().await.unwrap();
    assert_eq!(response.status(), 404);
    let message = error_of(response).await;
    assert!(message.contains("\"nope\""), "{message}");
    for path in ["/v2/models/nope", "/v2/models/nope/ready"] {
        let response = h
            .client
            .get(format!("{}{path}", h.base))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 404, "{path}");
        assert!(error_of(response).await.contains("nope"));
    }
    assert_eq!(
        h.metric("dilu_gateway_unknown_function_requests_total"),
        3.0
    );
    assert!(h.gateway.take_window("nope").is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn body_limits_are_enforced_exactly() {
    let (fake, addr) = fake_worker().await;
    let h = Harness::new(GatewayConfig {
        max_body_bytes: 5_000,
        ..Default::default()
    })
    .await;
    h.gateway.upsert_function(
        "f",
        FunctionPolicy {
            max_body_bytes: 1_000,
            ..policy()
        },
    );
    h.gateway.upsert_function(
        "g",
        FunctionPolicy {
            max_body_bytes: 1_000_000,
            ..policy()
        },
    );
    h.gateway.set_endpoints("f", vec![endpoint("f-0", addr)]);
    h.gateway.set_endpoints("g", vec![endpoint("g-0", addr)]);

    let response = h.infer("f", vec![b'a'; 1_000]).send().await.unwrap();
    assert_eq!(response.status(), 200, "a body at the limit passes");
    let response = h.infer("f", vec![b'a'; 1_001]).send().await.unwrap();
    assert_eq!(response.status(), 413);
    let message = error_of(response).await;
    assert!(
        message.contains("1000 bytes") && message.contains("\"f\""),
        "{message}"
    );

    // The gateway-wide limit applies when it is the smaller one.
    let response = h.infer("g", vec![b'a'; 5_000]).send().await.unwrap();
    assert_eq!(response.status(), 200);
    let response = h.infer("g", vec![b'a'; 5_001]).send().await.unwrap();
    assert_eq!(response.status(), 413);
    assert!(error_of(response).await.contains("5000 bytes"));

    // Without a Content-Length (chunked), the limit is enforced while reading.
    let addr: SocketAddr = h.base.trim_start_matches("http://").parse().unwrap();
    for (chunks, expected) in [
        (vec![600usize, 400], "200 OK"),
        (vec![600, 401], "413 Payload Too Large"),
    ] {
        let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
        let mut request = String::from(
            "POST /v2/models/f/infer HTTP/1.1\r\nHost: gw\r\nContent-Type: text/plain\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n",
        );
        for n in chunks {
            request.push_str(&format!("{n:x}\r\n{}\r\n", "b".repeat(n)));
        }
        request.push_str("0\r\n\r\n");
        stream.write_all(request.as_bytes()).await.unwrap();
        let mut reply = String::new();
        stream.read_to_string(&mut reply).await.unwrap();
        assert!(
            reply.starts_with(&format!("HTTP/1.1 {expected}")),
            "{reply}"
        );
    }
    assert_eq!(
        fake.hits.load(SeqCst),
        3,
        "oversized bodies never reach the worker"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn full_queue_answers_429_with_retry_after() {
    let (fake, addr) = fake_worker().await;
    fake.set_delay(Duration::from_millis(600));
    let p = FunctionPolicy {
        max_outstanding_per_instance: 1,
        queue_capacity: 2,
        ..policy()
    };
    let h = Harness::with_function(p, vec![endpoint("f-0", addr)]).await;

    let mut admitted = Vec::new();
    for i in 0..3 {
        let request = h.infer("f", format!("{{\"n\":{i}}}")).send();
        admitted.push(tokio::spawn(request));
        // One in flight, then two queued.
        eventually("request admitted", || {
            let (q, o) = h.gauges();
            q + o == i + 1
        })
        .await;
    }
    assert_eq!(h.gauges(), (2, 1));
    let response = h.infer("f", "{}").send().await.unwrap();
    assert_eq!(response.status(), 429);
    let retry_after: u64 = response.headers()[header::RETRY_AFTER]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!(retry_after >= 1);
    let message = error_of(response).await;
    assert!(
        message.contains("queue") && message.contains("\"f\""),
        "{message}"
    );
    for request in admitted {
        assert_eq!(request.await.unwrap().unwrap().status(), 200);
    }
    assert_eq!(fake.hits.load(SeqCst), 3);
    assert_eq!(fake.max_concurrent.load(SeqCst), 1);
    assert_eq!(
        h.metric("dilu_gateway_requests_total{function=\"f\",code=\"429\"}"),
        1.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn own_time_leaves_out_the_waits_for_a_slot_and_for_the_instance() {
    let (fake, addr) = fake_worker().await;
    fake.set_delay(Duration::from_millis(300));
    let p = FunctionPolicy {
        max_outstanding_per_instance: 1,
        ..policy()
    };
    let h = Harness::with_function(p, vec![endpoint("f-0", addr)]).await;
    // The second request waits about 300 ms for the slot, then both wait 300 ms for the instance.
    let (a, b) = tokio::join!(h.infer("f", "{}").send(), h.infer("f", "{}").send());
    assert_eq!(a.unwrap().status(), 200);
    assert_eq!(b.unwrap().status(), 200);
    let latency = h.metric("dilu_gateway_request_duration_seconds_sum{function=\"f\"}");
    let own = h.metric("dilu_gateway_own_time_seconds_sum{function=\"f\"}");
    assert_eq!(
        h.metric("dilu_gateway_own_time_seconds_count{function=\"f\"}"),
        2.0
    );
    assert!(latency >= 0.9, "latencies add up to {latency} s");
    // What is left is reading, routing and relaying: a small part of what the requests waited for.
    assert!(own < 0.1 * latency, "own time {own} s of {latency} s");
    assert_eq!(
        h.metric("dilu_gateway_own_time_seconds_bucket{function=\"f\",le=\"0.1\"}"),
        2.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn waiters_are_served_in_arrival_order() {
    let (fake, addr) = fake_worker().await;
    fake.set_delay(Duration::from_millis(50));
    let p = FunctionPolicy {
        max_outstanding_per_instance: 1,
        ..policy()
    };
    let h = Harness::with_function(p, vec![endpoint("f-0", addr)]).await;
    let mut tasks = Vec::new();
    for i in 0..6u64 {
        tasks.push(tokio::spawn(h.infer("f", i.to_string()).send()));
        // Admitted = queued + in flight + answered. A slot is released before the answer is counted, so the
        // sum can only lag, never run ahead: once it passes i, request i holds its place in line. (On a
        // slow machine early requests may already be answered, so queued + in flight alone may never reach it.)
        eventually("request admitted", || {
            let (q, o) = h.gauges();
            let answered =
                h.metric("dilu_gateway_requests_total{function=\"f\",code=\"200\"}") as u64;
            q + o + answered > i
        })
        .await;
    }
    for task in tasks {
        assert_eq!(task.await.unwrap().unwrap().status(), 200);
    }
    let order: Vec<String> = fake
        .bodies
        .lock()
        .unwrap()
        .iter()
        .map(|b| String::from_utf8_lossy(b).into_owned())
        .collect();
    assert_eq!(order, ["0", "1", "2", "3", "4", "5"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn least_outstanding_prefers_the_fast_instance() {
    let (slow, slow_addr) = fake_worker().await;
    let (fast, fast_addr) = fake_worker().await;
    slow.set_delay(Duration::from_millis(300));
    fast.set_delay(Duration::from_millis(2));
    let h = Harness::with_function(
        policy(),
        vec![endpoint("slow", slow_addr), endpoint("fast", fast_addr)],
    )
    .await;

    // Four closed-loop clients: the slow instance holds a request for 300 ms, during which the fast one
    // (fewer in flight) takes everything else.
    let h = Arc::new(h);
    let mut clients = Vec::new();
    for _ in 0..4 {
        let h = h.clone();
        clients.push(tokio::spawn(async move {
            for _ in 0..20 {
                assert_eq!(h.infer("f", "{}").send().await.unwrap().status(), 200);
            }
        }));
    }
    for client in clients {
        client.await.unwrap();
    }
    let (slow_hits, fast_hits) = (slow.hits.load(SeqCst), fast.hits.load(SeqCst));
    assert_eq!(slow_hits + fast_hits, 80);
    assert!(
        fast_hits >= 3 * slow_hits,
        "fast {fast_hits} vs slow {slow_hits}"
    );
    assert!(slow_hits >= 1, "the slow instance is still used");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn in_flight_never_exceeds_the_per_instance_cap() {
    let (a, a_addr) = fake_worker().await;
    let (b, b_addr) = fake_worker().await;
    a.set_delay(Duration::from_millis(40));
    b.set_delay(Duration::from_millis(40));
    let p = FunctionPolicy {
        max_outstanding_per_instance: 3,
        queue_capacity: 1_000,
        ..policy()
    };
    let h = Harness::with_function(p, vec![endpoint("a", a_addr), endpoint("b", b_addr)]).await;
    let requests: Vec<_> = (0..60)
        .map(|i| tokio::spawn(h.infer("f", format!("{i}")).send()))
        .collect();
    let mut peak = 0;
    while h.gauges().0 + h.gauges().1 > 0 || peak == 0 {
        for (instance, n) in h.gateway.outstanding("f") {
            assert!(n <= 3, "{instance} has {n} in flight");
            peak = peak.max(n);
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    for request in requests {
        assert_eq!(request.await.unwrap().unwrap().status(), 200);
    }
    assert_eq!(a.hits.load(SeqCst) + b.hits.load(SeqCst), 60);
    assert!(a.max_concurrent.load(SeqCst) <= 3 && b.max_concurrent.load(SeqCst) <= 3);
    assert_eq!(
        a.max_concurrent
            .load(SeqCst)
            .max(b.max_concurrent.load(SeqCst)),
        3,
        "the cap was reached"
    );
    assert_eq!(
        h.gateway.outstanding("f"),
        vec![("a".to_string(), 0), ("b".to_string(), 0)]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dead_instances_are_retried_elsewhere() {
    for kind in ["closes connections", "was killed"] {
        let (closing_hits, closing_addr) = closing_worker().await;
        let bad = if kind == "was killed" {
            dead_address()
        } else {
            closing_addr
        };
        let (good, good_addr) = fake_worker().await;
        let h = Harness::with_function(
            policy(),
            vec![endpoint("bad", bad), endpoint("good", good_addr)],
        )
        .await;
        // The first request goes to "bad" (first listed, tie) and is retried on "good".
        let response = h.infer("f", "{\"n\":0}").send().await.unwrap();
        assert_eq!(response.status(), 200, "{kind}");
        assert_eq!(response.text().await.unwrap(), "{\"n\":0}");
        assert_eq!(
            h.metric("dilu_gateway_retries_total{function=\"f\"}"),
            1.0,
            "{kind}"
        );
        if kind == "closes connections" {
            assert_eq!(closing_hits.load(SeqCst), 1);
        }
        assert_eq!(
            h.metric("dilu_gateway_instances_ready{function=\"f\"}"),
            1.0,
            "{kind}: marked dead"
        );
        // Concurrent requests all succeed too, on "good".
        let requests: Vec<_> = (0..30)
            .map(|i| tokio::spawn(h.infer("f", format!("{i}")).send()))
            .collect();
        for request in requests {
            assert_eq!(request.await.unwrap().unwrap().status(), 200, "{kind}");
        }
        assert_eq!(good.hits.load(SeqCst), 31, "{kind}");
        let w = h.window();
        assert_eq!((w.arrivals, w.completed, w.failed), (31, 31, 0), "{kind}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transport_failures_on_every_instance_answer_502_after_the_cold_start_timeout() {
    let (_, closing_addr) = closing_worker().await;
    let cold_start_timeout = Duration::from_millis(800);
    let h = Harness::with_function(
        FunctionPolicy {
            cold_start_timeout,
            ..policy()
        },
        vec![
            endpoint("closing", closing_addr),
            endpoint("killed", dead_address()),
        ],
    )
    .await;
    let sent = Instant::now();
    let response = h.infer("f", "{}").send().await.unwrap();
    // Both failed at once; the request then waited for one to be back (each is skipped for 2 s) and gave up at
    // the cold-start timeout.
    let waited = sent.elapsed();
    assert!(
        waited >= cold_start_timeout && waited < Duration::from_secs(5),
        "{waited:?}"
    );
    assert_eq!(response.status(), 502);
    let message = error_of(response).await;
    assert!(
        message.contains("\"closing\"") && message.contains("\"killed\""),
        "{message}"
    );
    assert_eq!(h.metric("dilu_gateway_retries_total{function=\"f\"}"), 1.0);
    assert_eq!(
        h.metric("dilu_gateway_instances_ready{function=\"f\"}"),
        0.0,
        "both are marked dead"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_that_found_every_instance_dead_is_served_by_the_next_ready_one() {
    // As when a node is lost with every instance of a function on it: the gateway holds the request until a
    // replacement is published instead of failing it.
    let h = Harness::with_function(policy(), vec![endpoint("lost", dead_address())]).await;
    let request = tokio::spawn(h.infer("f", "{\"n\":1}").send());
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(!request.is_finished(), "the request waits");
    let (good, good_addr) = fake_worker().await;
    h.gateway
        .set_endpoints("f", vec![endpoint("replacement", good_addr)]);
    let response = request.await.unwrap().unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(response.text().await.unwrap(), "{\"n\":1}");
    assert_eq!(good.hits.load(SeqCst), 1);
    assert_eq!(h.metric("dilu_gateway_retries_total{function=\"f\"}"), 1.0);
    let w = h.window();
    assert_eq!((w.completed, w.failed), (1, 0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cold_start_times_out_with_503_and_calls_the_hook() {
    let h = Harness::with_function(
        FunctionPolicy {
            cold_start_timeout: Duration::from_millis(300),
            ..policy()
        },
        vec![],
    )
    .await;
    let calls = Arc::new(Mutex::new(Vec::<String>::new()));
    let seen = calls.clone();
    h.gateway
        .set_cold_start_hook(Arc::new(move |function: &str| {
            seen.lock().unwrap().push(function.to_string())
        }));
    let start = Instant::now();
    let response = h.infer("f", "{}").send().await.unwrap();
    assert_eq!(response.status(), 503);
    assert!(start.elapsed() >= Duration::from_millis(300));
    let message = error_of(response).await;
    assert!(
        message.contains("\"f\"") && message.contains("300ms"),
        "{message}"
    );
    assert_eq!(*calls.lock().unwrap(), vec!["f".to_string()]);
    assert_eq!(
        h.metric("dilu_gateway_cold_start_waits_total{function=\"f\"}"),
        1.0
    );
    // A request that gave up is not a cold start that happened.
    assert_eq!(
        h.metric("dilu_gateway_cold_start_wait_seconds_count{function=\"f\"}"),
        0.0
    );
    assert_eq!(h.queued(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cold_start_succeeds_when_an_instance_arrives() {
    let (fake, addr) = fake_worker().await;
    let h = Harness::with_function(policy(), vec![]).await;
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<String>();
    h.gateway
        .set_cold_start_hook(Arc::new(move |function: &str| {
            let _ = tx.send(function.to_string());
        }));
    // The "control plane": starts an instance when asked.
    let gateway = h.gateway.clone();
    let control = tokio::spawn(async move {
        let function = rx.recv().await.unwrap();
        tokio::time::sleep(Duration::from_millis(100)).await;
        gateway.set_endpoints(&function, vec![endpoint("f-0", addr)]);
        function
    });
    let requests: Vec<_> = (0..3)
        .map(|i| tokio::spawn(h.infer("f", format!("{i}")).send()))
        .collect();
    for request in requests {
        assert_eq!(request.await.unwrap().unwrap().status(), 200);
    }
    assert_eq!(control.await.unwrap(), "f");
    assert_eq!(fake.hits.load(SeqCst), 3);
    let waits = h.metric("dilu_gateway_cold_start_waits_total{function=\"f\"}");
    assert!(waits >= 1.0);
    // Each is in the wait histogram; the one that fired the hook waited at least the 100 ms the "control
    // plane" took to publish an instance.
    assert_eq!(
        h.metric("dilu_gateway_cold_start_wait_seconds_count{function=\"f\"}"),
        waits
    );
    let waited = h.metric("dilu_gateway_cold_start_wait_seconds_sum{function=\"f\"}");
    assert!((0.1..30.0).contains(&waited), "{waited}");
    let ready = h
        .client
        .get(format!("{}/v2/models/f/ready", h.base))
        .send()
        .await
        .unwrap();
    assert_eq!(ready.status(), 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_timeout_answers_504_and_frees_the_slot() {
    let (fake, addr) = fake_worker().await;
    fake.set_delay(Duration::from_secs(3));
    let p = FunctionPolicy {
        request_timeout: Duration::from_millis(200),
        ..policy()
    };
    let h = Harness::with_function(p, vec![endpoint("f-0", addr)]).await;
    let response = h.infer("f", "{}").send().await.unwrap();
    assert_eq!(response.status(), 504);
    let message = error_of(response).await;
    assert!(
        message.contains("\"f\"") && message.contains("200ms"),
        "{message}"
    );
    assert_eq!(h.gateway.outstanding("f"), vec![("f-0".to_string(), 0)]);
    let w = h.window();
    assert_eq!((w.arrivals, w.completed, w.failed), (1, 0, 1));
    // The 200 ms went to waiting for the instance, not to the gateway, though the deadline cut the wait short.
    assert_eq!(
        h.metric("dilu_gateway_own_time_seconds_bucket{function=\"f\",le=\"0.1\"}"),
        1.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn departed_clients_free_their_slot_and_queue_place() {
    let (fake, addr) = fake_worker().await;
    fake.set_delay(Duration::from_secs(5));
    let p = FunctionPolicy {
        max_outstanding_per_instance: 1,
        ..policy()
    };
    let h = Harness::with_function(p, vec![endpoint("f-0", addr)]).await;
    let impatient = reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_millis(300))
        .build()
        .unwrap();
    let url = format!("{}/v2/models/f/infer", h.base);
    let first = tokio::spawn(impatient.post(&url).body("1").send());
    eventually("first in flight", || h.gauges() == (0, 1)).await;
    let second = tokio::spawn(impatient.post(&url).body("2").send());
    eventually("second queued", || h.gauges() == (1, 1)).await;
    assert!(
        first.await.unwrap().is_err() && second.await.unwrap().is_err(),
        "clients gave up"
    );
    eventually("slot and queue place freed", || h.gauges() == (0, 0)).await;
    assert_eq!(
        h.metric("dilu_gateway_requests_total{function=\"f\",code=\"499\"}"),
        2.0
    );
    let w = h.window();
    assert_eq!((w.arrivals, w.completed, w.failed), (2, 0, 2));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn removing_a_function_answers_its_waiters_404() {
    let (fake, addr) = fake_worker().await;
    fake.set_delay(Duration::from_millis(800));
    let p = FunctionPolicy {
        max_outstanding_per_instance: 1,
        ..policy()
    };
    let h = Harness::with_function(p, vec![endpoint("f-0", addr)]).await;
    let in_flight = tokio::spawn(h.infer("f", "1").send());
    eventually("first in flight", || h.gauges() == (0, 1)).await;
    let waiters: Vec<_> = (0..2)
        .map(|_| tokio::spawn(h.infer("f", "2").send()))
        .collect();
    eventually("two queued", || h.gauges() == (2, 1)).await;
    h.gateway.remove_function("f");
    for waiter in waiters {
        let response = waiter.await.unwrap().unwrap();
        assert_eq!(response.status(), 404);
        assert!(error_of(response).await.contains("removed"));
    }
    assert!(
        !in_flight.is_finished(),
        "waiters were answered before the in-flight request finished"
    );
    assert_eq!(
        in_flight.await.unwrap().unwrap().status(),
        200,
        "in-flight requests finish"
    );
    assert_eq!(h.infer("f", "3").send().await.unwrap().status(), 404);
    assert_eq!(fake.hits.load(SeqCst), 1);
    assert!(h.gateway.take_window("f").is_none());
    assert!(!h.metrics().contains("function=\"f\""));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn take_window_counts_and_resets() {
    let (_, addr) = fake_worker().await;
    let p = FunctionPolicy {
        max_body_bytes: 100,
        ..policy()
    };
    let h = Harness::with_function(p, vec![endpoint("f-0", addr)]).await;
    assert_eq!(h.window(), WindowCounts::default());
    for _ in 0..3 {
        assert_eq!(h.infer("f", "{}").send().await.unwrap().status(), 200);
    }
    assert_eq!(h.infer("f", "FAIL400").send().await.unwrap().status(), 400);
    assert_eq!(
        h.infer("f", vec![b'x'; 101]).send().await.unwrap().status(),
        413
    );
    // The platform failing a request counts as late for the scaler (no SLO is set: nothing else is).
    assert_eq!(h.infer("f", "FAIL500").send().await.unwrap().status(), 500);
    assert_eq!(
        h.window(),
        WindowCounts {
            arrivals: 6,
            completed: 3,
            failed: 3,
            late: 1,
            queued_now: 0,
            outstanding_now: 0
        }
    );
    assert_eq!(h.window(), WindowCounts::default(), "counts reset");
    // Policy updates keep counters and endpoints.
    h.gateway.upsert_function(
        "f",
        FunctionPolicy {
            max_body_bytes: 1_000,
            ..policy()
        },
    );
    assert_eq!(
        h.infer("f", vec![b'x'; 101]).send().await.unwrap().status(),
        200
    );
    assert_eq!(h.window().completed, 1);
    assert_eq!(
        h.metric("dilu_gateway_requests_total{function=\"f\",code=\"200\"}"),
        4.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_readiness_and_metadata() {
    let (_, addr) = fake_worker().await;
    let h = Harness::with_function(policy(), vec![]).await;
    let get = |path: &str| h.client.get(format!("{}{path}", h.base)).send();
    // The Open Inference Protocol's health bodies (KServe's client reads them, not only the status).
    let body = |path: &'static str| {
        let response = get(path);
        async move {
            let response = response.await.unwrap();
            let status = response.status().as_u16();
            let body: serde_json::Value = response.json().await.unwrap_or_default();
            (status, body)
        }
    };
    let live = body("/v2/health/live").await;
    assert_eq!(live, (200, serde_json::json!({"live": true})));
    let ready = body("/v2/health/ready").await;
    assert_eq!(ready, (200, serde_json::json!({"ready": true})));
    let server: serde_json::Value = get("/v2").await.unwrap().json().await.unwrap();
    assert_eq!(server["name"], "dilu-gateway");
    assert_eq!(server["version"], env!("CARGO_PKG_VERSION"));
    assert_eq!(
        server["extensions"],
        serde_json::json!(["binary_tensor_data"])
    );

    let response = get("/v2/models/f/ready").await.unwrap();
    assert_eq!(response.status(), 503);
    assert!(error_of(response).await.contains("\"f\""));
    let response = get("/v2/models/f").await.unwrap();
    assert_eq!(response.status(), 503);
    assert!(error_of(response).await.contains("no instance"));

    h.gateway.set_endpoints("f", vec![endpoint("f-0", addr)]);
    let ready = body("/v2/models/f/ready").await;
    assert_eq!(
        ready,
        (200, serde_json::json!({"name": "f", "ready": true}))
    );
    let ready = body("/v2/models/f/versions/3/ready").await;
    assert_eq!(
        ready,
        (200, serde_json::json!({"name": "f", "ready": true}))
    );
    let metadata: serde_json::Value = get("/v2/models/f").await.unwrap().json().await.unwrap();
    assert_eq!(metadata["name"], "f");
    assert_eq!(metadata["platform"], "fake");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_expose_every_family_in_valid_text_format() {
    let (_, addr) = fake_worker().await;
    let h = Harness::new(GatewayConfig::default()).await;
    h.gateway.upsert_function(
        "f",
        FunctionPolicy {
            slo: Some(Duration::from_nanos(1)),
            ..policy()
        },
    );
    h.gateway.upsert_function("we\"ird\\name", policy());
    h.gateway.set_endpoints("f", vec![endpoint("f-0", addr)]);
    assert_eq!(h.infer("f", "{}").send().await.unwrap().status(), 200);
    assert_eq!(h.infer("f", "FAIL400").send().await.unwrap().status(), 400);
    let text = h.metrics();
    for family in [
        "requests_total",
        "request_duration_seconds",
        "own_time_seconds",
        "queue_depth",
        "outstanding",
        "slo_violations_total",
        "retries_total",
        "cold_start_waits_total",
        "cold_start_wait_seconds",
        "instances_ready",
    ] {
        assert_eq!(
            text.matches(&format!("# TYPE dilu_gateway_{family} "))
                .count(),
            1,
            "{family} in\n{text}"
        );
    }
    assert!(text.contains("dilu_gateway_requests_total{function=\"f\",code=\"400\"} 1\n"));
    assert!(text.contains("dilu_gateway_request_duration_seconds_count{function=\"f\"} 2\n"));
    assert!(text.contains("dilu_gateway_slo_violations_total{function=\"f\"} 2\n"));
    assert!(text.contains("dilu_gateway_instances_ready{function=\"f\"} 1\n"));
    assert!(
        text.contains("dilu_gateway_queue_depth{function=\"we\\\"ird\\\\name\"} 0\n"),
        "{text}"
    );

    match std::process::Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
    {
        Err(e) => println!("NOTE: promtool not runnable ({e}); skipped `promtool check metrics`"),
        Ok(mut child) => {
            use std::io::Write;
            child
                .stdin
                .take()
                .unwrap()
                .write_all(text.as_bytes())
                .unwrap();
            let output = child.wait_with_output().unwrap();
            assert!(
                output.status.success(),
                "promtool check metrics failed:\n{}{}\n{text}",
                String::from_utf8_lossy(&output.stdout),
                String::from_utf8_lossy(&output.stderr)
            );
        }
    }
}
