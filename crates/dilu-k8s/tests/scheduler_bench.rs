//! Benchmark (ignored; never asserts a timing): how fast dilu-scheduler binds 1,000 pods onto fake nodes with
//! 8 GPUs each, against the real kube-scheduler 1.20 binding the same number of pods that ask for
//! `nvidia.com/gpu: 1`, on the same kind of API server. Every pod asks for a whole GPU, so 1,000 pods need
//! 125 nodes of 8 GPUs (on 100 nodes only 800 fit, and "until all are bound" would never come).
//!
//! Method, per scheduler: a fresh etcd + kube-apiserver 1.20 (dilu-k8s-testkit), 125 fake nodes, all 1,000
//! pending pods created first; a watch on the pods is open (its initial list done) before the scheduler
//! starts. The clock starts when the scheduler is started (process spawn for kube-scheduler, task spawn for
//! dilu-scheduler) and stops when the watch has seen all 1,000 pods with a `spec.nodeName`. Reported: the time
//! to the first bind seen, the time to all bound, pods bound per second over that whole time, and over the
//! stretch from the first bind seen to the last (steady rate, start-up excluded). Both schedulers act as the
//! same user (`system:kube-scheduler`, RBAC's own role for schedulers; API priority and fairness is off in the
//! test API server). dilu-scheduler books `sm_request = sm_limit = 1000` (a whole GPU); kube-scheduler runs
//! with a high client rate (qps 5000, burst 5000: no client-side throttling) and with its default (qps 50,
//! burst 100).
//!
//!   cargo nextest run --workspace -E 'test(scheduling_throughput)' --run-ignored only --no-capture
//!
//! (`scripts/bench-scheduler.sh` runs exactly that.) Environment: `DILU_BENCH_ROUNDS` (rounds of all three,
//! default 1), `DILU_BENCH_PODS` (1000), `DILU_BENCH_NODES` (enough for the pods: 125), `DILU_BENCH_IN_FLIGHT` (dilu-scheduler's
//! binds in flight, 64), `DILU_BENCH_SKIP_DEFAULT_QPS=1` (leave out the qps-50 run, which takes ~20 s), `DILU_BENCH_ONLY` (`dilu` or
//! `kube`: one side only). dilu-scheduler runs twice: writing its `Scheduled` event per bind, as kube-scheduler
//! does (the ratios are of this run), and without events, which tells what they cost.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use dilu_core::InstanceKind;
use dilu_core::ledger::DeviceClass;
use dilu_k8s::meta::{self, PodBooking};
use dilu_k8s::scheduler::{self, Counters, SchedulerConfig};
use dilu_k8s_testkit::{ApiServer, GPU_RESOURCE, KUBE_SCHEDULER_USER, KubeScheduler, fake_nodes};
use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::core::v1::{Namespace, Pod};
use kube::api::{Api, PostParams};
use kube::runtime::WatchStreamExt;
use kube::runtime::watcher::{self, Event, watcher};
use kube::{Client, ResourceExt};
use tokio::sync::{mpsc, oneshot};

const NS: &str = "bench";
const GPUS_PER_NODE: u32 = 8;

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Contender {
    /// `events`: whether it writes its `Scheduled` events (kube-scheduler always does).
    Dilu {
        in_flight: usize,
        events: bool,
    },
    Kube {
        qps: f32,
        burst: i32,
    },
}

impl Contender {
    fn label(&self) -> String {
        match self {
            Contender::Dilu { in_flight, events } => format!(
                "dilu-scheduler ({in_flight} in flight{})",
                if *events { "" } else { ", no events" }
            ),
            Contender::Kube { qps, burst } => {
                format!("kube-scheduler 1.20 (qps {qps}, burst {burst})")
            }
        }
    }
}

#[derive(Debug, Clone)]
struct Measured {
    contender: Contender,
    first: Duration,
    all: Duration,
    pods: usize,
    /// CPU seconds kube-apiserver and etcd spent from the scheduler's start to the last bind.
    server_cpu: f64,
    /// CPU seconds of this test process over the same time (dilu-scheduler runs in it; so does the watch
    /// that times both).
    test_cpu: f64,
    /// CPU seconds of the kube-scheduler process over its life (start-up included).
    kube_cpu: Option<f64>,
    /// dilu-scheduler writing events: when the last of its `Scheduled` events was written, from its start.
    events_written: Option<Duration>,
}

/// CPU time (user + system) of process `pid`, seconds; 0 when unreadable. Clock ticks are USER_HZ = 100.
fn cpu_seconds(pid: u32) -> f64 {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return 0.0;
    };
    // Fields after the command (which is in parentheses and may contain spaces): utime is the 14th field
    // of the line, stime the 15th.
    let Some(rest) = stat.rfind(')').map(|i| &stat[i + 2..]) else {
        return 0.0;
    };
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|f| f.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    (ticks(11) + ticks(12)) / 100.0
}

impl Measured {
    fn rate(&self) -> f64 {
        self.pods as f64 / self.all.as_secs_f64()
    }

    fn steady(&self) -> f64 {
        let span = self.all.saturating_sub(self.first).as_secs_f64();
        if span > 0.0 {
            (self.pods.saturating_sub(1)) as f64 / span
        } else {
            f64::NAN
        }
    }
}

fn pod(name: &str, contender: Contender) -> Pod {
    let value = match contender {
        Contender::Dilu { .. } => {
            let booking = PodBooking {
                kind: InstanceKind::Inference,
                sm_request: 1000,
                sm_limit: 1000,
                gpu_mem_mib: 0,
                device: DeviceClass::Gpu,
            };
            serde_json::json!({
                "apiVersion": "v1",
                "kind": "Pod",
                "metadata": {
                    "name": name,
                    "labels": {meta::FUNCTION: "f"},
                    "annotations": {meta::BOOKING: serde_json::to_string(&booking).unwrap()},
                },
                "spec": {
                    "schedulerName": meta::SCHEDULER_NAME,
                    "containers": [{"name": "c", "image": "example.invalid/none"}],
                },
            })
        }
        Contender::Kube { .. } => serde_json::json!({
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {"name": name},
            "spec": {
                "schedulerName": "default-scheduler",
                "containers": [{
                    "name": "c",
                    "image": "example.invalid/none",
                    "resources": {"limits": {GPU_RESOURCE: "1"}},
                }],
            },
        }),
    };
    serde_json::from_value(value).unwrap()
}

/// Opens a watch on the namespace's pods and reports, once its initial list is done, then for every pod seen
/// bound for the first time.
async fn watch_binds(client: Client) -> (oneshot::Receiver<()>, mpsc::UnboundedReceiver<Instant>) {
    let (ready_tx, ready_rx) = oneshot::channel();
    let (tx, rx) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        let api: Api<Pod> = Api::namespaced(client, NS);
        let mut events = watcher(api, watcher::Config::default())
            .default_backoff()
            .boxed();
        let mut ready = Some(ready_tx);
        let mut bound = HashSet::new();
        while let Some(event) = events.next().await {
            if tx.is_closed() {
                // The measurement is over (and its API server may be gone).
                return;
            }
            match event {
                Ok(Event::InitDone) => {
                    if let Some(r) = ready.take() {
                        let _ = r.send(());
                    }
                }
                Ok(Event::Apply(p) | Event::InitApply(p))
                    if p.spec.as_ref().and_then(|s| s.node_name.as_ref()).is_some()
                        && bound.insert(p.name_any())
                        && tx.send(Instant::now()).is_err() =>
                {
                    return;
                }
                _ => {}
            }
        }
    });
    (ready_rx, rx)
}

async fn measure(contender: Contender, nodes: usize, pods: usize) -> Measured {
    let Some(api) = ApiServer::start().await else {
        panic!("no API server (build the binaries: bash scripts/build-kube.sh)");
    };
    let client = api.client();
    let ns: Namespace = serde_json::from_value(serde_json::json!({
        "apiVersion": "v1", "kind": "Namespace", "metadata": {"name": NS}
    }))
    .unwrap();
    Api::<Namespace>::all(client.clone())
        .create(&PostParams::default(), &ns)
        .await
        .unwrap();
    fake_nodes(&client, "gpu", nodes, GPUS_PER_NODE)
        .await
        .unwrap();
    let api_pods: Api<Pod> = Api::namespaced(client.clone(), NS);
    futures::stream::iter((0..pods).map(|i| pod(&format!("p-{i:04}"), contender)))
        .map(|p| {
            let api_pods = api_pods.clone();
            async move {
                api_pods
                    .create(&PostParams::default(), &p)
                    .await
                    .map(|_| ())
            }
        })
        .buffer_unordered(32)
        .try_collect::<Vec<()>>()
        .await
        .unwrap();
    let (ready, mut binds) = watch_binds(client.clone()).await;
    ready.await.unwrap();

    let counters = Arc::new(Counters::default());
    let event_counts = Arc::new(dilu_k8s::events::EventCounts::default());
    let (stop_tx, stop_rx) = oneshot::channel::<()>();
    let server_cpu0 = cpu_seconds(api.pid()) + cpu_seconds(api.etcd_pid());
    let test_cpu0 = cpu_seconds(std::process::id());
    let start = Instant::now();
    let (task, kube) = match contender {
        Contender::Dilu { in_flight, events } => {
            let config = SchedulerConfig {
                namespace: Some(NS.into()),
                max_in_flight: in_flight,
                events,
                counters: counters.clone(),
                event_counts: event_counts.clone(),
                ..SchedulerConfig::default()
            };
            let sched_client = api.client_as(KUBE_SCHEDULER_USER);
            let task = tokio::spawn(async move {
                scheduler::run(sched_client, config, async {
                    let _ = stop_rx.await;
                })
                .await
                .unwrap();
            });
            (Some(task), None)
        }
        Contender::Kube { qps, burst } => {
            (None, Some(KubeScheduler::start(&api, qps, burst).await))
        }
    };
    let mut first = None;
    let mut last = start;
    for n in 0..pods {
        match tokio::time::timeout(Duration::from_secs(600), binds.recv()).await {
            Ok(Some(at)) => {
                first.get_or_insert(at);
                last = at;
            }
            _ => panic!(
                "{}: only {n} of {pods} pods bound within 600 s{}",
                contender.label(),
                kube.as_ref()
                    .map(|k| format!("\n{}", k.log_tail(30)))
                    .unwrap_or_default()
            ),
        }
    }
    let server_cpu = cpu_seconds(api.pid()) + cpu_seconds(api.etcd_pid()) - server_cpu0;
    let test_cpu = cpu_seconds(std::process::id()) - test_cpu0;
    let kube_cpu = kube.as_ref().map(|k| cpu_seconds(k.pid()));
    if task.is_some() {
        // The watch can see a bind before the scheduler has taken in its answer; stopping then would abandon
        // binds the API server did.
        dilu_k8s_testkit::eventually("every bind answered", Duration::from_secs(30), || {
            let done = counters.snapshot().binds as usize >= pods;
            async move { done.then_some(()) }
        })
        .await;
    }
    // The events lag the binds (they are written after, never in the way): when the last one landed.
    let mut events_written = None;
    if matches!(contender, Contender::Dilu { events: true, .. }) {
        dilu_k8s_testkit::eventually(
            "every Scheduled event written",
            Duration::from_secs(120),
            || {
                let done = event_counts.snapshot().created as usize >= pods;
                async move { done.then_some(()) }
            },
        )
        .await;
        events_written = Some(start.elapsed());
    }
    let _ = stop_tx.send(());
    if let Some(task) = task {
        task.await.unwrap();
        let c = counters.snapshot();
        assert_eq!(c.binds as usize, pods, "{c:?}");
    }
    drop(kube);
    Measured {
        contender,
        first: first.unwrap_or(start) - start,
        all: last - start,
        pods,
        server_cpu,
        test_cpu,
        kube_cpu,
        events_written,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "benchmark: scripts/bench-scheduler.sh"]
async fn scheduling_throughput() {
    if dilu_k8s_testkit::Binaries::find().is_err() {
        dilu_k8s_testkit::skip(
            "kube-apiserver/kube-scheduler not built (bash scripts/build-kube.sh)",
        );
        return;
    }
    let rounds = env_usize("DILU_BENCH_ROUNDS", 1);
    let pods = env_usize("DILU_BENCH_PODS", 1000);
    // Whole-GPU pods need a GPU each: 1,000 pods need 125 nodes of 8 (100 nodes hold only 800).
    let nodes = env_usize("DILU_BENCH_NODES", pods.div_ceil(GPUS_PER_NODE as usize));
    let in_flight = env_usize("DILU_BENCH_IN_FLIGHT", 64);
    assert!(
        pods <= nodes * GPUS_PER_NODE as usize,
        "{pods} whole-GPU pods do not fit {nodes} nodes × {GPUS_PER_NODE} GPUs"
    );
    let mut contenders = vec![
        Contender::Dilu {
            in_flight,
            events: true,
        },
        Contender::Dilu {
            in_flight,
            events: false,
        },
        Contender::Kube {
            qps: 5000.0,
            burst: 5000,
        },
    ];
    if std::env::var("DILU_BENCH_SKIP_DEFAULT_QPS").as_deref() != Ok("1") {
        contenders.push(Contender::Kube {
            qps: 50.0,
            burst: 100,
        });
    }
    // DILU_BENCH_ONLY=dilu or =kube: one side only (no ratio).
    match std::env::var("DILU_BENCH_ONLY").as_deref() {
        Ok("dilu") => contenders.retain(|c| matches!(c, Contender::Dilu { .. })),
        Ok("kube") => contenders.retain(|c| matches!(c, Contender::Kube { .. })),
        _ => {}
    }
    let mut results: Vec<Measured> = Vec::new();
    for round in 0..rounds {
        // Rotate the order from round to round.
        let mut order = contenders.clone();
        order.rotate_left(round % contenders.len());
        for c in order {
            let m = measure(c, nodes, pods).await;
            eprintln!(
                "round {}: {}: all {pods} bound in {:.3} s (first after {:.3} s)",
                round + 1,
                c.label(),
                m.all.as_secs_f64(),
                m.first.as_secs_f64()
            );
            results.push(m);
        }
    }

    println!();
    println!(
        "scheduling throughput: {pods} pending pods, {nodes} fake nodes × {GPUS_PER_NODE} GPUs, whole-GPU requests, kube-apiserver 1.20 on loopback"
    );
    println!(
        "{:<44} {:>5} {:>9} {:>9} {:>8} {:>13} {:>14} {:>12} {:>16} {:>10}",
        "scheduler",
        "round",
        "first (s)",
        "all (s)",
        "pods/s",
        "steady pods/s",
        "server CPU (s)",
        "test CPU (s)",
        "kube-sched CPU (s)",
        "events (s)"
    );
    for (i, m) in results.iter().enumerate() {
        println!(
            "{:<44} {:>5} {:>9.3} {:>9.3} {:>8.1} {:>13.1} {:>14.2} {:>12.2} {:>16} {:>10}",
            m.contender.label(),
            i / contenders.len() + 1,
            m.first.as_secs_f64(),
            m.all.as_secs_f64(),
            m.rate(),
            m.steady(),
            m.server_cpu,
            m.test_cpu,
            m.kube_cpu.map_or("-".to_string(), |c| format!("{c:.2}")),
            m.events_written
                .map_or("-".to_string(), |e| format!("{:.3}", e.as_secs_f64()))
        );
    }
    println!(
        "(first: first bind seen by the watch; all: last of the {pods}; both from the scheduler's start. steady: \
         binds per second from the first to the last. events: when dilu-scheduler's last Scheduled event was \
         written, polled every 20 ms. server CPU: kube-apiserver + etcd over that time; test \
         CPU: this process (dilu-scheduler runs in it, and the watch that times every run).)"
    );
    let median = |c: Contender, f: fn(&Measured) -> f64| {
        let mut v: Vec<f64> = results.iter().filter(|m| m.contender == c).map(f).collect();
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    let dilu = contenders[0];
    println!();
    for kube in contenders
        .iter()
        .filter(|c| matches!(c, Contender::Kube { .. }) && matches!(dilu, Contender::Dilu { .. }))
    {
        println!(
            "ratio dilu-scheduler / {}: {:.2}x pods/s, {:.2}x steady pods/s (medians over the rounds; the upper one of two)",
            kube.label(),
            median(dilu, Measured::rate) / median(*kube, Measured::rate),
            median(dilu, Measured::steady) / median(*kube, Measured::steady),
        );
    }
}
