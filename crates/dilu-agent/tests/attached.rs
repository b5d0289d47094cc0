//! Attached channels: quota channels for processes the agent does not start (Kubernetes pods), created,
//! budgeted by the token manager, updated, re-opened by a restarted agent and removed.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::time::{Duration, Instant};

use dilu_agent::{Agent, AgentConfig, AgentError, AttachedStatus};
use dilu_api::{InstanceKind, Quota};
use dilu_quota::InstanceChannel;

/// One CPU core: a capacity of exactly one window of nanoseconds (5,000,000 cost units).
const CAPACITY: u64 = 5_000_000;

fn config(dir: &Path) -> AgentConfig {
    let mut config = AgentConfig::new(dir.to_path_buf());
    config.discover_gpus = false;
    config.cpu_cores = Some(1.0);
    config
}

fn quota(request: f64, limit: f64) -> Quota {
    Quota {
        request,
        limit,
        memory: None,
    }
}

/// `<channel root>/<device UUID>/<pod UID>`, the layout the device plugin mounts.
fn channel_path(root: &Path, agent: &Agent, pod: &str) -> PathBuf {
    root.join("channels")
        .join(&agent.devices()[0].uuid)
        .join(pod)
}

fn find(agent: &Agent, id: &str) -> AttachedStatus {
    agent
        .attached()
        .into_iter()
        .find(|a| a.id == id)
        .unwrap_or_else(|| panic!("{id} is not attached"))
}

fn budget(status: &AttachedStatus) -> Option<u64> {
    status.budgeting.as_ref().and_then(|b| b.budget)
}

fn wait_for(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(10));
    }
}

#[test]
fn attach_creates_the_channel_and_the_token_manager_divides_the_device() {
    let dir = tempfile::tempdir().unwrap();
    let agent = Agent::start(config(dir.path())).unwrap();
    let device = agent.devices()[0].uuid.clone();
    let a_path = channel_path(dir.path(), &agent, "pod-a");
    let b_path = channel_path(dir.path(), &agent, "pod-b");
    let a = agent
        .attach(
            "pod-a",
            &device,
            InstanceKind::Training,
            quota(0.3, 0.9),
            &a_path,
        )
        .unwrap();
    // The initial budget is the limit's share of the device, as for the agent's own instances.
    assert_eq!(budget(&a), Some(CAPACITY * 9 / 10));
    assert!(!a.reopened);
    assert_eq!(a.channel, a_path);
    let b = agent
        .attach(
            "pod-b",
            &device,
            InstanceKind::Training,
            quota(0.7, 0.9),
            &b_path,
        )
        .unwrap();
    assert!(!b.overcommitted);
    let instance_a = InstanceChannel::open(&a_path).unwrap();
    let instance_b = InstanceChannel::open(&b_path).unwrap();
    assert_eq!(instance_a.snapshot().device_uuid, device);
    // Any uid may open the channel: the file is 0666 in a 0755 directory.
    let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&a_path), 0o666);
    assert_eq!(mode(a_path.parent().unwrap()), 0o755);
    assert_eq!(agent.device_budgets()[0].requested, 1.0);

    // Both pods busy: the device is divided by their requests, 0.3 : 0.7.
    let stop = Arc::new(AtomicBool::new(false));
    let worker = {
        let stop = stop.clone();
        std::thread::spawn(move || {
            while !stop.load(Relaxed) {
                instance_a
                    .counters()
                    .cost_launched
                    .fetch_add(500_000, Relaxed);
                instance_b
                    .counters()
                    .cost_launched
                    .fetch_add(500_000, Relaxed);
                std::thread::sleep(Duration::from_millis(1));
            }
        })
    };
    // Both busy in the same window (a loaded machine may miss one): budgets and shares follow the requests.
    let mut seen = None;
    wait_for("budgets that follow the requests", || {
        let (a, b) = (find(&agent, "pod-a"), find(&agent, "pod-b"));
        let busy = |s: &AttachedStatus| s.budgeting.as_ref().is_some_and(|b| b.busy);
        let share = |s: &AttachedStatus| s.budgeting.as_ref().map_or(0.0, |b| b.share);
        let divided = match (budget(&a), budget(&b)) {
            (Some(x), Some(y)) => x < y && x + y <= CAPACITY,
            _ => false,
        };
        let ok = busy(&a)
            && busy(&b)
            && divided
            && (share(&a) - 0.3).abs() < 0.05
            && (share(&b) - 0.7).abs() < 0.05;
        if ok {
            seen = Some(a);
        }
        ok
    });
    let a = seen.unwrap();
    // The file holds what the token manager wrote; the counters are what the pods wrote.
    let snapshot = InstanceChannel::open(&a_path).unwrap().snapshot();
    assert!(snapshot.budget_per_window < CAPACITY * 9 / 10);
    assert!(snapshot.agent_tick_ns > 0);
    assert!(a.counters.as_ref().unwrap().cost > 0);

    // Attached channels show in the metrics like instances.
    let metrics = dilu_agent::metrics::render(&agent);
    for pod in ["pod-a", "pod-b"] {
        let row =
            format!("dilu_agent_instance_budget_units{{instance=\"{pod}\",device=\"{device}\"");
        assert!(metrics.contains(&row), "{row} not in:\n{metrics}");
    }
    assert!(!metrics.contains("dilu_agent_instance_up{instance=\"pod-a\""));

    stop.store(true, Relaxed);
    worker.join().unwrap();
    agent.shutdown();
}

#[test]
fn attaching_again_with_another_quota_rewrites_the_budget_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let agent = Agent::start(config(dir.path())).unwrap();
    let device = agent.devices()[0].uuid.clone();
    let path = channel_path(dir.path(), &agent, "pod");
    agent
        .attach(
            "pod",
            &device,
            InstanceKind::Inference,
            quota(0.5, 0.8),
            &path,
        )
        .unwrap();
    let instance = InstanceChannel::open(&path).unwrap();
    let epoch = instance.snapshot().epoch;
    let smaller = Quota {
        request: 0.1,
        limit: 0.1,
        memory: Some(1 << 20),
    };
    let status = agent
        .attach("pod", &device, InstanceKind::Inference, smaller, &path)
        .unwrap();
    assert_eq!(status.quota, smaller);
    // Written before attach returns, not at the next tick.
    let seen = instance.snapshot();
    assert!(seen.epoch > epoch);
    assert_eq!(seen.mem_cap_bytes, 1 << 20);
    assert!(
        seen.budget_per_window <= CAPACITY / 10,
        "{}",
        seen.budget_per_window
    );
    assert!(budget(&status).is_some_and(|b| b <= CAPACITY / 10));
    assert_eq!(agent.attached().len(), 1);
    // The same quota again is a no-op that still succeeds.
    agent
        .attach("pod", &device, InstanceKind::Inference, smaller, &path)
        .unwrap();
    assert_eq!(agent.attached().len(), 1);
    agent.shutdown();
}

#[test]
fn a_restarted_agent_reopens_the_channel_with_its_counters() {
    let dir = tempfile::tempdir().unwrap();
    let agent = Agent::start(config(dir.path())).unwrap();
    let device = agent.devices()[0].uuid.clone();
    let path = channel_path(dir.path(), &agent, "pod");
    agent
        .attach(
            "pod",
            &device,
            InstanceKind::Training,
            quota(0.2, 0.4),
            &path,
        )
        .unwrap();
    let instance = InstanceChannel::open(&path).unwrap();
    instance.attach(4242);
    instance
        .counters()
        .cost_launched
        .fetch_add(1_234_567, Relaxed);
    instance.counters().launches.fetch_add(7, Relaxed);
    agent.shutdown();
    drop(agent);
    // The pod keeps its channel while no agent runs.
    let budget_while_down = instance.snapshot().budget_per_window;
    assert!(path.exists());

    let agent = Agent::start(config(dir.path())).unwrap();
    // Not persisted: the caller (the API server's view) attaches again.
    assert!(agent.attached().is_empty());
    assert!(
        path.exists(),
        "a starting agent leaves attached channels alone"
    );
    let status = agent
        .attach(
            "pod",
            &device,
            InstanceKind::Training,
            quota(0.2, 0.4),
            &path,
        )
        .unwrap();
    assert!(status.reopened);
    assert_eq!(budget(&status), Some(budget_while_down));
    let counters = status.counters.unwrap();
    assert_eq!(counters.cost, 1_234_567);
    assert_eq!(counters.launches, 7);
    // The pod's mapping is the same file: it sees the new agent's ticks.
    let tick = instance.snapshot().agent_tick_ns;
    wait_for("a tick of the new agent", || {
        instance.snapshot().agent_tick_ns > tick
    });
    assert_eq!(instance.snapshot().attached_pid, 4242);
    agent.shutdown();
}

#[test]
fn detach_removes_the_channel_and_unknown_ids_are_not_found() {
    let dir = tempfile::tempdir().unwrap();
    let agent = Agent::start(config(dir.path())).unwrap();
    let device = agent.devices()[0].uuid.clone();
    let path = channel_path(dir.path(), &agent, "pod");
    agent
        .attach(
            "pod",
            &device,
            InstanceKind::Inference,
            quota(0.5, 0.5),
            &path,
        )
        .unwrap();
    agent.detach("pod").unwrap();
    assert!(!path.exists());
    assert!(agent.attached().is_empty());
    assert_eq!(agent.device_budgets()[0].requested, 0.0);
    assert!(matches!(agent.detach("pod"), Err(AgentError::NotFound(id)) if id == "pod"));
    agent.shutdown();
}

#[test]
fn attach_refuses_bad_input_but_never_overcommit() {
    let dir = tempfile::tempdir().unwrap();
    let agent = Agent::start(config(dir.path())).unwrap();
    let device = agent.devices()[0].uuid.clone();
    let path = channel_path(dir.path(), &agent, "pod");
    let field = |result: Result<AttachedStatus, AgentError>| match result {
        Err(AgentError::Invalid(error)) => error.field,
        other => panic!("expected a field error, got {other:?}"),
    };
    assert_eq!(
        field(agent.attach(
            "pod",
            "GPU-nope",
            InstanceKind::Inference,
            quota(0.1, 0.1),
            &path
        )),
        "device"
    );
    assert_eq!(
        field(agent.attach(
            "pod",
            &device,
            InstanceKind::Inference,
            quota(0.5, 0.2),
            &path
        )),
        "quota.request"
    );
    assert_eq!(
        field(agent.attach(
            "pod",
            &device,
            InstanceKind::Inference,
            quota(0.1, 0.1),
            Path::new("pod")
        )),
        "channel"
    );
    assert!(!path.exists(), "nothing is created for a refused attach");

    // The cluster admitted both pods: over-commit is reported, not refused.
    agent
        .attach(
            "pod",
            &device,
            InstanceKind::Inference,
            quota(0.7, 0.7),
            &path,
        )
        .unwrap();
    let other = channel_path(dir.path(), &agent, "other");
    let status = agent
        .attach(
            "other",
            &device,
            InstanceKind::Training,
            quota(0.7, 0.7),
            &other,
        )
        .unwrap();
    assert!(status.overcommitted);
    assert!(agent.attached().iter().all(|a| a.overcommitted));
    agent.shutdown();
}

#[test]
fn under_dilu_slo_a_queue_eating_into_its_slo_takes_sm_time_from_training() {
    use dilu_core::policy::{Policy, PolicyName};
    let dir = tempfile::tempdir().unwrap();
    let mut config = config(dir.path());
    config.policy = Policy::named(PolicyName::DiluSlo);
    let agent = Agent::start(config).unwrap();
    let device = agent.devices()[0].uuid.clone();
    assert_eq!(agent.device_budgets()[0].controller, "slack");
    let (inf_path, train_path) = (
        channel_path(dir.path(), &agent, "pod-inf"),
        channel_path(dir.path(), &agent, "pod-train"),
    );
    agent
        .attach(
            "pod-inf",
            &device,
            InstanceKind::Inference,
            quota(0.2, 0.4),
            &inf_path,
        )
        .unwrap();
    agent
        .attach(
            "pod-train",
            &device,
            InstanceKind::Training,
            quota(0.5, 1.0),
            &train_path,
        )
        .unwrap();
    let (inf, train) = (
        InstanceChannel::open(&inf_path).unwrap(),
        InstanceChannel::open(&train_path).unwrap(),
    );
    inf.counters().slo_ns.store(100_000_000, Relaxed);
    // The oldest queued request's age, published by the "worker" below; 0 = the queue is fresh.
    let age_ms = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let worker = {
        let (stop, age_ms) = (stop.clone(), age_ms.clone());
        std::thread::spawn(move || {
            while !stop.load(Relaxed) {
                inf.counters().cost_launched.fetch_add(100_000, Relaxed);
                train.counters().cost_launched.fetch_add(100_000, Relaxed);
                let now = dilu_quota::monotonic_ns();
                inf.counters().queue_depth.store(3, Relaxed);
                inf.counters().oldest_queued_ns.store(
                    now.saturating_sub(age_ms.load(Relaxed) * 1_000_000),
                    Relaxed,
                );
                std::thread::sleep(Duration::from_millis(1));
            }
        })
    };
    let shares = || {
        let share = |id| find(&agent, id).budgeting.map_or(0.0, |b| b.share);
        (share("pod-inf"), share("pod-train"))
    };
    let near = |x: f64, y: f64| (x - y).abs() < 0.02;
    // Fresh queue: guarantees 0.2 and 0.5, the remaining 0.3 split by excess demand 0.2 : 0.5.
    let calm = (0.2 + 0.3 * 2.0 / 7.0, 0.5 + 0.3 * 5.0 / 7.0);
    wait_for("calm shares", || {
        let (i, t) = shares();
        near(i, calm.0) && near(t, calm.1)
    });
    // The oldest request has waited half its SLO: inference gets its 0.4 limit, training 0.6.
    age_ms.store(50, Relaxed);
    wait_for("inference at its limit", || {
        let (i, t) = shares();
        near(i, 0.4) && near(t, 0.6)
    });
    // The queue drains: back to the calm division.
    age_ms.store(0, Relaxed);
    wait_for("calm shares again", || {
        let (i, t) = shares();
        near(i, calm.0) && near(t, calm.1)
    });
    stop.store(true, Relaxed);
    worker.join().unwrap();
    agent.shutdown();
}
