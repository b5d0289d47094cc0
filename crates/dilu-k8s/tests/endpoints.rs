//! `KubeEndpoints` against a real API server (dilu-k8s-testkit: etcd and kube-apiserver 1.20 on loopback,
//! no kubelet): the routes follow a Function's spec and its pods' readiness (set by hand through the status
//! subresource) and deletion; a gateway following the source forwards to a pod's IP and port, and a request
//! for a function at zero annotates the Function (the activator).

use std::future::Future;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::Router;
use axum::routing::post;
use dilu_api::{Endpoint, Route};
use dilu_gateway::{EndpointSource, Gateway, GatewayConfig, RoutingTable};
use dilu_k8s::endpoints::KubeEndpoints;
use dilu_k8s::{Function, meta};
use dilu_k8s_testkit::ApiServer;
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams};
use tokio::sync::watch;

const NS: &str = "default";

/// Polls `check` every 50 ms until it gives `Some`, at most 20 s.
async fn eventually<T, F, Fut>(what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Some(v) = check().await {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Waits until the published table satisfies `ok`, and returns it.
async fn table_where(
    routes: &mut watch::Receiver<RoutingTable>,
    what: &str,
    ok: impl Fn(&[Route]) -> bool,
) -> RoutingTable {
    let found =
        match tokio::time::timeout(Duration::from_secs(20), routes.wait_for(|t| ok(t))).await {
            Ok(Ok(table)) => Some(table.clone()),
            _ => None,
        };
    found.unwrap_or_else(|| {
        panic!(
            "timed out waiting for the routes: {what}; last table: {:?}",
            routes.borrow()
        )
    })
}

fn endpoints_of<'a>(table: &'a [Route], function: &str) -> Option<&'a [Endpoint]> {
    table
        .iter()
        .find(|r| r.function == function)
        .map(|r| r.endpoints.as_slice())
}

fn function(yaml: &str) -> Function {
    let spec = dilu_api::parse_spec(yaml, dilu_api::SpecFormat::Yaml).expect("a valid spec");
    Function::new(NS, &spec).expect("an object")
}

/// A pod of `function` the controller routes (label `dilu.io/serving=true`), bound to a node that does not
/// exist (so that deleting it leaves it terminating: no kubelet confirms), with the port annotation when given.
fn pod(name: &str, function: &str, port: Option<u16>) -> Pod {
    let mut annotations = serde_json::Map::new();
    if let Some(port) = port {
        annotations.insert(meta::PORT.into(), port.to_string().into());
    }
    serde_json::from_value(serde_json::json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": name,
            "namespace": NS,
            "labels": { meta::FUNCTION: function, meta::SERVING: "true" },
            "annotations": annotations,
        },
        "spec": {
            "nodeName": "nowhere",
            "containers": [{ "name": "worker", "image": "dilu:test" }],
        },
    }))
    .expect("a valid pod")
}

/// Sets a pod's IP and Ready condition through the status subresource (what the kubelet would do).
async fn set_ready(pods: &Api<Pod>, name: &str, ip: &str, ready: bool) {
    let status = serde_json::json!({
        "status": {
            "phase": "Running",
            "podIP": ip,
            "podIPs": [{ "ip": ip }],
            "conditions": [{ "type": "Ready", "status": if ready { "True" } else { "False" } }],
        }
    });
    pods.patch_status(name, &PatchParams::default(), &Patch::Merge(&status))
        .await
        .unwrap_or_else(|e| panic!("setting the status of pod {name}: {e}"));
}

/// Serves a v2 model on `ip` (a loopback address of the pod's own), answering with its instance name.
async fn fake_instance(ip: &str, name: &'static str) -> u16 {
    let listener = tokio::net::TcpListener::bind((ip, 0))
        .await
        .unwrap_or_else(|e| panic!("binding {ip}: {e}"));
    let port = listener.local_addr().unwrap().port();
    let router = Router::new().route(
        "/v2/models/{model}/infer",
        post(move || async move { axum::Json(serde_json::json!({ "served_by": name })) }),
    );
    tokio::spawn(async move { axum::serve(listener, router).await });
    port
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn routes_follow_functions_and_pod_readiness_and_a_wait_annotates_the_function() {
    let Some(api) = ApiServer::start().await else {
        return;
    };
    let crd = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../deploy/crd.yaml");
    let applied = api
        .kubectl_async(&["apply", "-f", crd.to_str().expect("a UTF-8 path")])
        .await;
    assert!(
        applied.status.success(),
        "kubectl apply: {}",
        String::from_utf8_lossy(&applied.stderr)
    );
    let established = api
        .kubectl_async(&[
            "wait",
            "--for=condition=Established",
            "--timeout=30s",
            "crd/functions.dilu.io",
        ])
        .await;
    assert!(
        established.status.success(),
        "kubectl wait: {}",
        String::from_utf8_lossy(&established.stderr)
    );
    let client = api.client();
    let functions: Api<Function> = Api::namespaced(client.clone(), NS);
    let pods: Api<Pod> = Api::namespaced(client.clone(), NS);

    let ocr = function(
        "name: ocr\nkind: inference\nmodel: {path: /m.onnx}\nslo_ms: 100\ngateway: {queue: 7, cold_start_timeout_ms: 20000}\n",
    );
    // The CRD may take a moment to be served after it is Established.
    eventually("the Function to be created", || {
        let (functions, ocr) = (functions.clone(), ocr.clone());
        async move { functions.create(&PostParams::default(), &ocr).await.ok() }
    })
    .await;
    functions
        .create(
            &PostParams::default(),
            &function("name: train\nkind: training\n"),
        )
        .await
        .expect("creating the training function");

    let source = KubeEndpoints::start(client.clone(), NS);
    source
        .synced(Duration::from_secs(20))
        .await
        .expect("the first list");
    let mut routes = source.routes();
    let table = table_where(&mut routes, "ocr at zero", |t| {
        endpoints_of(t, "ocr") == Some(&[])
    })
    .await;
    assert_eq!(table.len(), 1, "training gets no route: {table:?}");
    assert_eq!(table[0].slo_ms, Some(100.0));
    assert_eq!(table[0].gateway.queue, 7);

    // A gateway follows the source; a request for ocr waits (no pod ready) and annotates the Function.
    let gateway = Gateway::new(GatewayConfig::default());
    gateway.follow(source.clone() as Arc<dyn EndpointSource>);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let gateway_url = format!("http://{}", listener.local_addr().unwrap());
    let router = gateway.router();
    tokio::spawn(async move { axum::serve(listener, router).await });
    let http = reqwest::Client::new();
    let waiting = tokio::spawn(
        http.post(format!("{gateway_url}/v2/models/ocr/infer"))
            .header("content-type", "application/json")
            .body("{}")
            .send(),
    );
    let woken = eventually("the wake annotation", || {
        let functions = functions.clone();
        async move {
            let f = functions.get("ocr").await.ok()?;
            f.metadata.annotations?.get(meta::WAKE).cloned()
        }
    })
    .await;
    let at: k8s_openapi::jiff::Timestamp = woken
        .parse()
        .unwrap_or_else(|e| panic!("{}: {woken:?} is not RFC 3339: {e}", meta::WAKE));
    let age = k8s_openapi::jiff::Timestamp::now().duration_since(at);
    assert!(
        age.as_secs_f64().abs() < 30.0,
        "the wake time {woken} is not now"
    );

    // Two pods on loopback addresses of their own; a serves on the default port's stand-in (annotated), b
    // with an explicit one. Neither is ready yet.
    let a_port = fake_instance("127.0.7.1", "ocr-a").await;
    let b_port = fake_instance("127.0.7.2", "ocr-b").await;
    for p in [
        pod("ocr-a", "ocr", Some(a_port)),
        pod("ocr-b", "ocr", Some(b_port)),
        pod("stray", "not-a-function", None),
    ] {
        pods.create(&PostParams::default(), &p)
            .await
            .expect("creating a pod");
    }
    set_ready(&pods, "ocr-b", "127.0.7.2", false).await;
    set_ready(&pods, "stray", "127.0.7.9", true).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        endpoints_of(&routes.borrow(), "ocr"),
        Some(&[][..]),
        "no pod is ready"
    );

    // a becomes ready: the waiting request is served by it.
    set_ready(&pods, "ocr-a", "127.0.7.1", true).await;
    table_where(&mut routes, "ocr-a ready", |t| {
        endpoints_of(t, "ocr")
            == Some(&[Endpoint {
                instance: "ocr-a".into(),
                url: format!("http://127.0.7.1:{a_port}"),
            }])
    })
    .await;
    let answered = waiting.await.unwrap().expect("the waiting request");
    assert_eq!(answered.status(), 200);
    let body: serde_json::Value = answered.json().await.unwrap();
    assert_eq!(body["served_by"], "ocr-a");

    // b becomes ready too; a goes unready.
    set_ready(&pods, "ocr-b", "127.0.7.2", true).await;
    table_where(&mut routes, "both ready", |t| {
        endpoints_of(t, "ocr").is_some_and(|e| e.len() == 2)
    })
    .await;
    set_ready(&pods, "ocr-a", "127.0.7.1", false).await;
    table_where(&mut routes, "only ocr-b", |t| {
        endpoints_of(t, "ocr")
            == Some(&[Endpoint {
                instance: "ocr-b".into(),
                url: format!("http://127.0.7.2:{b_port}"),
            }])
    })
    .await;

    // Deleting b leaves it terminating (bound, no kubelet): it is no longer routed.
    set_ready(&pods, "ocr-a", "127.0.7.1", true).await;
    pods.delete("ocr-b", &DeleteParams::default())
        .await
        .expect("deleting ocr-b");
    let terminating = pods.get("ocr-b").await.expect("ocr-b is still there");
    assert!(terminating.metadata.deletion_timestamp.is_some());
    table_where(&mut routes, "ocr-b terminating", |t| {
        endpoints_of(t, "ocr").is_some_and(|e| e.len() == 1 && e[0].instance == "ocr-a")
    })
    .await;

    // A spec change reaches the route; its endpoints stay.
    let change = serde_json::json!({ "spec": { "slo_ms": 250, "gateway": { "queue": 9 } } });
    functions
        .patch("ocr", &PatchParams::default(), &Patch::Merge(&change))
        .await
        .expect("patching the spec");
    let table = table_where(&mut routes, "the new SLO", |t| {
        t.first().is_some_and(|r| r.slo_ms == Some(250.0))
    })
    .await;
    assert_eq!(table[0].gateway.queue, 9);
    assert_eq!(table[0].endpoints.len(), 1);

    // The function goes away: no route, and the gateway answers 404.
    functions
        .delete("ocr", &DeleteParams::default())
        .await
        .expect("deleting ocr");
    table_where(&mut routes, "no route", |t| t.is_empty()).await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    let gone = http
        .post(format!("{gateway_url}/v2/models/ocr/infer"))
        .header("content-type", "application/json")
        .body("{}")
        .send()
        .await
        .unwrap();
    assert_eq!(gone.status(), 404);
}
