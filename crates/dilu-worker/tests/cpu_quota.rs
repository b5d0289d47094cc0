//! CPU-time tokens: the executor charges its thread CPU time to the instance's quota channel and waits for
//! budget between batches.

mod common;

use std::time::{Duration, Instant};

use common::Worker;
use dilu_quota::{AgentChannel, ChannelSpec, DEFAULT_WINDOW_NS, DeviceKind, InstanceChannel};
use dilu_worker::WorkerConfig;
use reqwest::blocking::Client;
use serde_json::{Value, json};

/// Sequential requests for `wall`; returns how many completed.
fn hammer(client: &Client, url: &str, body: &Value, wall: Duration) -> u32 {
    let start = Instant::now();
    let mut done = 0;
    while start.elapsed() < wall {
        let r = client.post(url).json(body).send().unwrap();
        assert_eq!(r.status(), 200);
        done += 1;
    }
    done
}

#[test]
fn executor_cpu_time_is_charged_and_throttled() {
    let Some(model) = common::ppocr_cls() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("cpu.quota");
    // 10% of one core.
    let spec = ChannelSpec {
        device_uuid: "cpu-0".into(),
        device_kind: DeviceKind::Cpu,
        budget_per_window: DEFAULT_WINDOW_NS / 10,
        window_ns: DEFAULT_WINDOW_NS,
        ..ChannelSpec::default()
    };
    AgentChannel::create(&path, &spec, 0o600).unwrap();
    let mut config = WorkerConfig::new("cls", model);
    config.input_shape = Some(vec![1, 3, 48, 192]);
    config.quota_file = Some(path.clone());
    let w = Worker::start(config);
    let client = Client::new();
    let body = json!({"inputs": [{"name": "x", "shape": [1, 3, 48, 192], "datatype": "FP32",
                                   "data": vec![0.5f32; 3 * 48 * 192]}]});
    let url = w.url("/v2/models/cls/infer");
    let wall = Duration::from_secs(2);
    let start = Instant::now();
    let done = hammer(&client, &url, &body, wall);

    let snap = InstanceChannel::open(&path).unwrap().snapshot();
    let text = client
        .get(w.url("/metrics"))
        .send()
        .unwrap()
        .text()
        .unwrap();
    let elapsed = start.elapsed();
    let metric = |name: &str| -> f64 {
        dilu_core::prometheus::value(&text, name)
            .unwrap_or_else(|| panic!("{name} missing from\n{text}"))
    };
    let cpu_s = metric("dilu_worker_cpu_seconds_total");
    let throttled_s = metric("dilu_worker_cpu_throttled_seconds_total");
    eprintln!(
        "10% CPU quota: {done} requests in {wall:?}, executor CPU {cpu_s:.3} s, throttled {throttled_s:.3} s, \
         channel: {} ns charged in {} charges, {} delayed",
        snap.cost_launched, snap.launches, snap.launches_delayed
    );
    assert_eq!(snap.attached_pid, std::process::id());
    // Every batch is charged, the last one perhaps just after its reply.
    assert!(
        snap.launches + 1 >= u64::from(done),
        "every batch is charged"
    );
    assert!(snap.cost_launched > 0);
    assert!(
        snap.launches_delayed > 0,
        "a 10% budget must delay a busy executor"
    );
    assert!(throttled_s > 0.0);
    // The executor's CPU rate stays near its budget: 10% of a core over the run, plus the overshoot of at
    // most one batch (a batch is never interrupted; its debt is paid back by the waits after it).
    let per_batch = cpu_s / snap.launches.max(1) as f64;
    let bound = 0.1 * elapsed.as_secs_f64() + 1.5 * per_batch + 0.02;
    assert!(
        cpu_s <= bound,
        "{cpu_s} s of CPU in {elapsed:?} (bound {bound})"
    );
}

#[test]
fn the_batcher_publishes_its_queue_and_slo_on_the_channel() {
    let Some(model) = common::ppocr_cls() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("cpu.quota");
    // 2% of one core: batches wait for budget, so requests pile up behind them.
    let spec = ChannelSpec {
        device_uuid: "cpu-0".into(),
        device_kind: DeviceKind::Cpu,
        budget_per_window: DEFAULT_WINDOW_NS / 50,
        window_ns: DEFAULT_WINDOW_NS,
        ..ChannelSpec::default()
    };
    let agent = AgentChannel::create(&path, &spec, 0o600).unwrap();
    let mut config = WorkerConfig::new("cls", model);
    config.input_shape = Some(vec![1, 3, 48, 192]);
    config.quota_file = Some(path.clone());
    config.max_batch = 2;
    config.slo_ms = Some(80.0);
    let w = Worker::start(config);
    let body = json!({"inputs": [{"name": "x", "shape": [1, 3, 48, 192], "datatype": "FP32",
                                   "data": vec![0.5f32; 3 * 48 * 192]}]});
    let url = w.url("/v2/models/cls/infer");
    let sent = dilu_quota::monotonic_ns();
    let clients: Vec<_> = (0..8)
        .map(|_| {
            let (url, body) = (url.clone(), body.clone());
            std::thread::spawn(move || {
                let r = Client::new().post(&url).json(&body).send().unwrap();
                assert_eq!(r.status(), 200);
            })
        })
        .collect();
    let counters = agent.counters();
    let read = |f: &std::sync::atomic::AtomicU64| f.load(std::sync::atomic::Ordering::Relaxed);
    let mut deepest = 0;
    let mut oldest_seen = 0;
    let start = Instant::now();
    while clients.iter().any(|c| !c.is_finished()) && start.elapsed() < Duration::from_secs(30) {
        let depth = read(&counters.queue_depth);
        let oldest = read(&counters.oldest_queued_ns);
        if depth > deepest && oldest > 0 {
            deepest = depth;
            oldest_seen = oldest;
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    for c in clients {
        c.join().unwrap();
    }
    eprintln!(
        "deepest queue published {deepest}, its oldest arrival {oldest_seen} (sent at {sent})"
    );
    assert_eq!(read(&counters.slo_ns), 80_000_000);
    assert!(
        deepest >= 3,
        "8 requests behind a 2% budget: published depth {deepest}"
    );
    // The oldest arrival is on the agent's clock: after the first request was sent, before now.
    assert!(oldest_seen >= sent && oldest_seen <= dilu_quota::monotonic_ns());
    // Every request answered: nothing queued, no oldest.
    assert_eq!(read(&counters.queue_depth), 0);
    assert_eq!(read(&counters.oldest_queued_ns), 0);
}
