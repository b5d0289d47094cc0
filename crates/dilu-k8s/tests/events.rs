//! The event writer against a real kube-apiserver (dilu-k8s-testkit): an event lands on its object as
//! `kubectl describe` finds it, a repeat is counted on the first event instead of written again, another message
//! is a new event, and a write the API server refuses is counted (and the writer goes on).

use std::time::Duration;

use dilu_k8s::events::{EventCountsSnapshot, EventSink, EventType, Reporter, node_ref, pod_ref};
use dilu_k8s_testkit::{ApiServer, event_for, eventually};
use k8s_openapi::api::core::v1::{Event, Namespace};
use kube::Api;
use kube::api::{ListParams, PostParams};

const NS: &str = "events";

fn reporter() -> Reporter {
    Reporter {
        controller: "dilu.io/test".into(),
        instance: "t1".into(),
    }
}

/// Node n1's GPU-1 became unhealthy (the same event every time).
fn gpu_unhealthy(sink: &EventSink) {
    sink.emit(
        node_ref("n1"),
        EventType::Warning,
        "GPUUnhealthy",
        "Watch",
        "GPU-1: Xid 79",
    );
}

async fn settled(sink: &EventSink, want: EventCountsSnapshot) {
    eventually(
        &format!("event counts {want:?}"),
        Duration::from_secs(10),
        || async { (sink.counts() == want).then_some(()) },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn repeats_are_counted_on_the_first_event_and_refusals_do_not_stop_the_writer() {
    let Some(api) = ApiServer::start().await else {
        return;
    };
    let client = api.client();
    let namespaces: Api<Namespace> = Api::all(client.clone());
    let mut ns = Namespace::default();
    ns.metadata.name = Some(NS.into());
    namespaces
        .create(&PostParams::default(), &ns)
        .await
        .unwrap();

    let sink = EventSink::start(client.clone(), reporter());
    let pod = pod_ref(NS, "p1", "uid-p1");
    for _ in 0..3 {
        sink.emit(
            pod.clone(),
            EventType::Warning,
            "FailedScheduling",
            "Scheduling",
            "no device has room",
        );
    }
    sink.emit(
        pod.clone(),
        EventType::Warning,
        "FailedScheduling",
        "Scheduling",
        "no node is live",
    );
    settled(
        &sink,
        EventCountsSnapshot {
            created: 2,
            repeated: 2,
            ..EventCountsSnapshot::default()
        },
    )
    .await;
    let events: Api<Event> = Api::namespaced(client.clone(), NS);
    let mut list = events.list(&ListParams::default()).await.unwrap().items;
    list.sort_by_key(|e| e.count);
    let seen: Vec<(Option<&str>, Option<i32>)> = list
        .iter()
        .map(|e| (e.message.as_deref(), e.count))
        .collect();
    assert_eq!(
        seen,
        vec![
            (Some("no node is live"), Some(1)),
            (Some("no device has room"), Some(3))
        ]
    );
    let first = &list[1];
    assert_eq!(first.involved_object.uid.as_deref(), Some("uid-p1"));
    assert_eq!(
        first.source.as_ref().and_then(|s| s.host.as_deref()),
        Some("t1")
    );
    assert!(first.last_timestamp >= first.first_timestamp);

    // A namespace that does not exist: refused, counted, and the next event is still written.
    sink.emit(
        pod_ref("no-such-namespace", "p2", "uid-p2"),
        EventType::Normal,
        "Scheduled",
        "Binding",
        "x",
    );
    gpu_unhealthy(&sink);
    settled(
        &sink,
        EventCountsSnapshot {
            created: 3,
            repeated: 2,
            failed: 1,
            dropped: 0,
        },
    )
    .await;
    let node_event = event_for(
        &client,
        "default",
        "n1",
        "GPUUnhealthy",
        Duration::from_secs(5),
    )
    .await;
    assert_eq!(node_event.involved_object.namespace, None);
    assert_eq!(node_event.involved_object.uid.as_deref(), Some("n1"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_queue_drops_and_counts_instead_of_waiting() {
    let Some(api) = ApiServer::start().await else {
        return;
    };
    // Every write waits on the API server, so a burst beyond the queue cannot all fit.
    let sink = EventSink::start(api.client(), reporter());
    let burst = dilu_k8s::events::QUEUE + 5000;
    let started = std::time::Instant::now();
    for i in 0..burst {
        sink.emit(
            pod_ref("default", &format!("p{i}"), ""),
            EventType::Normal,
            "Scheduled",
            "Binding",
            format!("pod {i}"),
        );
    }
    let emitting = started.elapsed();
    let dropped = sink.counts().dropped;
    assert!(dropped >= 1, "{:?}", sink.counts());
    // Nothing is lost silently: every event is written, dropped or refused.
    eventually("the queue to drain", Duration::from_secs(60), || async {
        let c = sink.counts();
        (c.created + c.dropped + c.failed == burst as u64).then_some(())
    })
    .await;
    println!(
        "{burst} events emitted in {:.1} ms: {dropped} dropped at once, {:?} in the end",
        emitting.as_secs_f64() * 1e3,
        sink.counts()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn in_a_burst_of_events_every_repeat_lands_on_one_event_with_its_count() {
    let Some(api) = ApiServer::start().await else {
        return;
    };
    let client = api.client();
    let sink = EventSink::start(client.clone(), reporter());
    // 200 distinct events with one event repeated 60 times among them: several writes are in flight at once,
    // and the repeats arrive while the first of them is still being created.
    let mut repeats = 0;
    for i in 0..200 {
        sink.emit(
            pod_ref("default", &format!("p{i}"), ""),
            EventType::Normal,
            "Scheduled",
            "Binding",
            format!("pod {i} bound"),
        );
        if i % 10 < 3 {
            gpu_unhealthy(&sink);
            repeats += 1;
        }
    }
    settled(
        &sink,
        EventCountsSnapshot {
            created: 201,
            repeated: repeats - 1,
            ..EventCountsSnapshot::default()
        },
    )
    .await;
    let events: Api<Event> = Api::namespaced(client.clone(), "default");
    let list = events.list(&ListParams::default()).await.unwrap().items;
    let unhealthy: Vec<&Event> = list
        .iter()
        .filter(|e| e.reason.as_deref() == Some("GPUUnhealthy"))
        .collect();
    assert_eq!(unhealthy.len(), 1, "one object for every repeat");
    assert_eq!(unhealthy[0].count, Some(repeats as i32));
    assert_eq!(
        list.iter()
            .filter(|e| e.reason.as_deref() == Some("Scheduled"))
            .count(),
        200
    );
}
