//! The reconciler against the in-memory backend, in virtual time: nothing sleeps, every pass is driven by the
//! test after moving the clock. Deploy, profile, scale out and in, roll (good and bad model), instance crash,
//! adoption after a restart, a full device, scale to zero and back, live quota changes, typed errors.

use std::sync::Arc;

use dilu_api::{FunctionSpec, Profile, SpecFormat, parse_spec};
use dilu_control::backend::labels;
use dilu_control::fake::{FakeBackend, FakeLoad, ScriptedProfiler};
use dilu_control::state::{FunctionPhase, InstanceState};
use dilu_control::{
    ControlError, Controller, ControllerConfig, FunctionStore, FunctionView, ManualClock,
    MemoryStore,
};
use dilu_core::policy::{Policy, PolicyName};

const READY_MS: u64 = 300;

struct Rig {
    clock: Arc<ManualClock>,
    backend: Arc<FakeBackend>,
    profiler: Arc<ScriptedProfiler>,
    load: Arc<FakeLoad>,
    store: Arc<MemoryStore>,
    c: Arc<Controller>,
    policy: PolicyName,
}

fn profile(request: f64, limit: f64, capacity: f64) -> Profile {
    Profile {
        request,
        limit,
        batch: 4,
        capacity_rps: capacity,
        capacity_full_rps: Some(capacity * 3.0),
        latency_s: Some(0.02),
        source: "hgs".into(),
        measurements: 7,
        seconds: 2.0,
    }
}

impl Rig {
    fn new(devices: usize, policy: PolicyName) -> Rig {
        Rig::with_profiler(devices, policy, 2_000, Ok(profile(0.3, 0.6, 10.0)))
    }

    fn with_profiler(
        devices: usize,
        policy: PolicyName,
        profile_ms: u64,
        result: Result<Profile, String>,
    ) -> Rig {
        let clock = Arc::new(ManualClock::new());
        clock.advance_ms(1);
        let backend = FakeBackend::new(clock.clone(), devices, READY_MS * 1_000_000);
        let profiler = ScriptedProfiler::new(clock.clone(), profile_ms * 1_000_000, result);
        let load = FakeLoad::new(clock.clone());
        let store = Arc::new(MemoryStore::new());
        let c = Rig::controller(&clock, &backend, &profiler, &load, &store, policy);
        Rig {
            clock,
            backend,
            profiler,
            load,
            store,
            c,
            policy,
        }
    }

    fn controller(
        clock: &Arc<ManualClock>,
        backend: &Arc<FakeBackend>,
        profiler: &Arc<ScriptedProfiler>,
        load: &Arc<FakeLoad>,
        store: &Arc<MemoryStore>,
        policy: PolicyName,
    ) -> Arc<Controller> {
        Controller::new(
            ControllerConfig::new(Policy::named(policy)),
            backend.clone(),
            store.clone(),
            load.clone(),
            profiler.clone(),
            clock.clone(),
        )
        .unwrap()
    }

    /// A controller started anew over the same store and backend, as after a restart of `dilu up`.
    fn restarted(&self) -> Arc<Controller> {
        Rig::controller(
            &self.clock,
            &self.backend,
            &self.profiler,
            &self.load,
            &self.store,
            self.policy,
        )
    }

    /// Moves the clock by `ms` and runs one pass.
    async fn step(&self, ms: u64) {
        self.clock.advance_ms(ms);
        self.c.reconcile().await.unwrap();
    }

    /// Runs passes every `every_ms` for `ms`.
    async fn run_for(&self, ms: u64, every_ms: u64) {
        for _ in 0..ms / every_ms {
            self.step(every_ms).await;
        }
    }

    fn view(&self, name: &str) -> FunctionView {
        self.c.function(name).unwrap()
    }

    fn ready(&self, name: &str) -> Vec<String> {
        self.view(name)
            .instances
            .iter()
            .filter(|i| i.state == InstanceState::Ready && !i.outdated)
            .map(|i| i.id.clone())
            .collect()
    }

    fn routed(&self, name: &str) -> Vec<String> {
        self.c
            .routes()
            .borrow()
            .iter()
            .find(|r| r.function == name)
            .map(|r| r.endpoints.iter().map(|e| e.instance.clone()).collect())
            .unwrap_or_default()
    }

    fn calls(&self, prefix: &str) -> Vec<String> {
        self.backend
            .calls()
            .into_iter()
            .filter(|c| c.starts_with(prefix))
            .collect()
    }
}

/// Function `r` with one ready instance (returned), then updated to a model that cannot load.
async fn serving_then_broken() -> (Rig, String) {
    let rig = Rig::new(1, PolicyName::Dilu);
    rig.c.deploy(inference("r", V1)).unwrap();
    rig.run_for(500, 100).await;
    let old = rig.ready("r")[0].clone();
    let mut bad = inference("r", V1);
    bad.model.as_mut().unwrap().path = "/m/broken.onnx".into();
    rig.c.update(bad).await.unwrap();
    (rig, old)
}

/// A quota and a capacity, one instance at most.
const V1: &str =
    "quota: {request: 0.2, limit: 0.5}\nscaling: {max_instances: 1, capacity_rps: 10}\n";

/// The control plane's `/metrics` families.
fn metrics_text(c: &Controller) -> String {
    let mut out = String::new();
    c.metrics().render(&mut out, 1, &c.instance_counts());
    out
}

fn spec(yaml: &str) -> FunctionSpec {
    parse_spec(yaml, SpecFormat::Yaml).unwrap()
}

fn inference(name: &str, extra: &str) -> FunctionSpec {
    spec(&format!(
        "name: {name}\nmodel: {{path: /m/{name}.onnx}}\nslo_ms: 100\n{extra}"
    ))
}

#[tokio::test]
async fn a_function_with_quota_and_capacity_runs_its_minimum_and_is_routed_once_ready() {
    let rig = Rig::new(1, PolicyName::Dilu);
    rig.c
        .deploy(inference(
            "a",
            "quota: {request: 0.2, limit: 0.5}\nscaling: {min_instances: 2, capacity_rps: 10}\n",
        ))
        .unwrap();
    rig.step(10).await;
    let v = rig.view("a");
    assert_eq!(v.status, FunctionPhase::Running);
    assert_eq!(v.instances.len(), 2);
    assert!(
        v.instances
            .iter()
            .all(|i| i.state == InstanceState::Starting)
    );
    assert!(rig.routed("a").is_empty(), "nothing routed before ready");
    rig.step(READY_MS).await;
    assert_eq!(rig.ready("a").len(), 2);
    assert_eq!(rig.routed("a").len(), 2);
    // The quota the instances got, and the ledger's booking.
    let id = &rig.ready("a")[0];
    let q = rig.backend.instance(id).unwrap().quota;
    assert_eq!((q.request, q.limit), (0.2, 0.5));
    assert!((rig.c.booked()[0].1 - 0.4).abs() < 1e-9);
    // Each took READY_MS from the create to its first readiness.
    let text = metrics_text(&rig.c);
    for line in [
        "dilu_control_instance_startup_seconds_bucket{function=\"a\",le=\"0.25\"} 0",
        "dilu_control_instance_startup_seconds_bucket{function=\"a\",le=\"0.5\"} 2",
        "dilu_control_instance_startup_seconds_sum{function=\"a\"} 0.6",
        "dilu_control_instance_startup_seconds_count{function=\"a\"} 2",
    ] {
        assert!(text.contains(line), "{line} in\n{text}");
    }
    // Passes without change do nothing more.
    let before = rig.backend.calls().len();
    rig.run_for(1_000, 100).await;
    assert_eq!(rig.backend.calls().len(), before);
}

#[tokio::test]
async fn a_function_without_quota_is_profiled_on_a_live_instance_that_then_serves() {
    let rig = Rig::new(1, PolicyName::Dilu);
    rig.c.deploy(inference("p", "")).unwrap();
    rig.step(10).await;
    assert_eq!(rig.view("p").status, FunctionPhase::Profiling);
    let id = rig.view("p").instances[0].id.clone();
    let q = rig.backend.instance(&id).unwrap().quota;
    assert_eq!(
        (q.request, q.limit),
        (0.1, 0.1),
        "booked at the profiling share"
    );
    rig.step(READY_MS).await;
    assert_eq!(
        rig.profiler.jobs().len(),
        1,
        "a run starts once the instance is ready"
    );
    assert_eq!(rig.view("p").instances[0].state, InstanceState::Profiling);
    assert!(
        rig.routed("p").is_empty(),
        "a profiled instance does not serve"
    );
    rig.run_for(1_900, 100).await;
    assert_eq!(rig.view("p").status, FunctionPhase::Profiling);
    rig.step(100).await;
    let v = rig.view("p");
    assert_eq!(v.status, FunctionPhase::Running, "{v:?}");
    assert_eq!(v.profile.as_ref().unwrap().batch, 4);
    assert_eq!(
        rig.calls("set_quota"),
        vec![format!("set_quota {id} 0.3/0.6")]
    );
    rig.step(10).await;
    assert_eq!(
        rig.routed("p"),
        vec![id.clone()],
        "the profiled instance serves"
    );
    assert_eq!(rig.calls("create").len(), 1, "no second instance");
    let stored = rig.store.functions().unwrap();
    assert_eq!(stored[0].profile.as_ref().unwrap().request, 0.3);
}

#[tokio::test]
async fn a_failed_profile_fails_the_function_and_stops_its_instance() {
    let rig = Rig::with_profiler(
        1,
        PolicyName::Dilu,
        500,
        Err("profiling: infeasible: batch 1 on the whole device takes 210.0 ms, above the SLO of 100 ms".into()),
    );
    rig.c.deploy(inference("f", "")).unwrap();
    rig.run_for(1_000, 100).await;
    let v = rig.view("f");
    match &v.status {
        FunctionPhase::Failed(reason) => assert!(reason.contains("infeasible"), "{reason}"),
        other => panic!("{other:?}"),
    }
    rig.step(10).await;
    assert!(rig.backend.ids().is_empty(), "its instance was stopped");
    rig.run_for(1_000, 100).await;
    assert_eq!(
        rig.calls("create").len(),
        1,
        "a failed function is not retried until updated"
    );
}

#[tokio::test]
async fn a_profiling_instance_that_cannot_start_fails_with_its_log() {
    let rig = Rig::new(1, PolicyName::Dilu);
    rig.c
        .deploy(spec(
            "name: b\nmodel: {path: /m/broken.onnx}\nslo_ms: 100\n",
        ))
        .unwrap();
    rig.run_for(1_000, 100).await;
    match rig.view("b").status {
        FunctionPhase::Failed(reason) => {
            assert!(reason.contains("exited before it was ready"), "{reason}");
            assert!(reason.contains("the last line"), "{reason}");
        }
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn dilu_slo_adds_an_instance_when_answers_miss_the_slo_within_capacity() {
    let rig = Rig::new(1, PolicyName::DiluSlo);
    rig.c
        .deploy(inference(
            "s",
            "quota: {request: 0.2, limit: 0.5}\nscaling: {max_instances: 3, capacity_rps: 10}\n",
        ))
        .unwrap();
    rig.run_for(1_000, 100).await;
    assert_eq!(rig.ready("s").len(), 1);
    // 5 requests/s against a capacity of 10: Dilu's lazy vote would never add an instance. Half the answers
    // miss the SLO: after two late intervals in a row, one more.
    rig.load.set_rps("s", 5.0);
    rig.load.set_late_fraction("s", 0.5);
    rig.run_for(1_500, 100).await;
    assert_eq!(
        rig.view("s").instances.len(),
        1,
        "one late interval is not enough"
    );
    rig.run_for(1_000, 100).await;
    assert_eq!(rig.view("s").instances.len(), 2);
    rig.run_for(1_000, 100).await;
    assert_eq!(rig.ready("s").len(), 2);
    // On time with two: the scaler now counts 5 req/s per instance, so 5 req/s does not fit one and the
    // instance stays (the lazy vote alone would remove it after 30 of 40 samples).
    rig.load.set_late_fraction("s", 0.0);
    rig.run_for(45_000, 1_000).await;
    assert_eq!(rig.ready("s").len(), 2);
    let events = rig
        .c
        .events()
        .list(&dilu_control::events::EventFilter::default(), 64);
    assert!(
        events
            .iter()
            .any(|e| e.message.contains("late intervals in a row")),
        "{events:?}"
    );
}

#[tokio::test]
async fn the_lazy_scaler_adds_an_instance_under_sustained_load_and_removes_it_after() {
    let rig = Rig::new(1, PolicyName::Dilu);
    rig.c
        .deploy(inference(
            "s",
            "quota: {request: 0.2, limit: 0.5}\nscaling: {max_instances: 3, capacity_rps: 10, lazy: {window: 8, out_votes: 4, in_votes: 6}}\n",
        ))
        .unwrap();
    rig.run_for(1_000, 100).await;
    assert_eq!(rig.ready("s").len(), 1);
    // 25 requests/s on one instance of capacity 10: out after 4 over-capacity seconds.
    rig.load.set_rps("s", 25.0);
    rig.run_for(3_500, 100).await;
    assert_eq!(rig.view("s").instances.len(), 1, "not before the 4th vote");
    rig.run_for(1_000, 100).await;
    assert_eq!(rig.view("s").instances.len(), 2);
    assert!((rig.view("s").rps - 25.0).abs() < 1e-6);
    rig.run_for(1_000, 100).await;
    assert_eq!(rig.ready("s").len(), 2);
    // The window was cleared: 25 is over capacity(2) = 20, so it scales out once more after 4 votes.
    rig.load.set_rps("s", 15.0);
    rig.run_for(8_000, 100).await;
    assert_eq!(rig.ready("s").len(), 2, "15 requests/s fit two, not one");
    // Quiet: 6 of 8 samples below capacity(1) → one instance drains and stops.
    rig.load.set_rps("s", 1.0);
    rig.run_for(6_500, 100).await;
    assert_eq!(rig.ready("s").len(), 1);
    rig.step(10).await;
    assert_eq!(rig.backend.ids().len(), 1, "the removed instance is gone");
    let text = {
        let mut out = String::new();
        rig.c
            .metrics()
            .render(&mut out, 1, &rig.c.instance_counts());
        out
    };
    assert!(
        text.contains("dilu_control_scaling_actions_total{function=\"s\",direction=\"out\"} 1"),
        "{text}"
    );
    assert!(
        text.contains("dilu_control_scaling_actions_total{function=\"s\",direction=\"in\"} 1"),
        "{text}"
    );
}

#[tokio::test]
async fn a_model_update_rolls_the_old_instance_drains_after_its_requests() {
    let rig = Rig::new(1, PolicyName::Dilu);
    let v1 = "quota: {request: 0.2, limit: 0.5}\nscaling: {max_instances: 1, capacity_rps: 10}\n";
    rig.c.deploy(inference("r", v1)).unwrap();
    rig.run_for(500, 100).await;
    let old = rig.ready("r")[0].clone();
    let mut v2 = inference("r", v1);
    v2.model.as_mut().unwrap().path = "/m/r-v2.onnx".into();
    let view = rig.c.update(v2).await.unwrap();
    assert_eq!(view.generation, 2);
    rig.step(10).await;
    let v = rig.view("r");
    assert_eq!(v.instances.len(), 2, "a new instance starts beside the old");
    assert!(
        v.instances
            .iter()
            .any(|i| i.id == old && i.outdated && i.ready)
    );
    assert_eq!(
        rig.routed("r"),
        vec![old.clone()],
        "the old one serves meanwhile"
    );
    // The old instance has requests in flight when the new one is ready: it drains, then stops.
    rig.load.set_in_flight(&old, 2);
    rig.step(READY_MS).await;
    let new = rig.ready("r")[0].clone();
    assert_ne!(new, old);
    assert_eq!(rig.routed("r"), vec![new.clone()]);
    let o = rig
        .view("r")
        .instances
        .into_iter()
        .find(|i| i.id == old)
        .unwrap();
    assert_eq!(o.state, InstanceState::Draining);
    rig.run_for(500, 100).await;
    assert!(
        rig.calls("delete").is_empty(),
        "not stopped while requests are in flight"
    );
    rig.load.set_in_flight(&old, 0);
    rig.step(10).await;
    assert_eq!(rig.calls("delete"), vec![format!("delete {old}")]);
    rig.step(10).await;
    assert_eq!(rig.backend.ids(), vec![new]);
}

#[tokio::test]
async fn an_update_to_a_model_that_cannot_load_keeps_the_old_instance_serving() {
    let (rig, old) = serving_then_broken().await;
    rig.run_for(3_000, 100).await;
    let v = rig.view("r");
    let kept = v.instances.iter().find(|i| i.id == old).unwrap();
    assert!(kept.ready && kept.outdated && !kept.draining, "{v:?}");
    assert_eq!(rig.routed("r"), vec![old.clone()]);
    let error = v.last_error.clone().unwrap();
    assert!(
        error.contains("exited") && error.contains("the last line"),
        "{error}"
    );
    // A later good update replaces both.
    let mut v3 = inference("r", V1);
    v3.model.as_mut().unwrap().path = "/m/r-v3.onnx".into();
    rig.c.update(v3).await.unwrap();
    rig.run_for(1_000, 100).await;
    let ready = rig.ready("r");
    assert_eq!(ready.len(), 1);
    assert_ne!(ready[0], old);
    assert_eq!(
        rig.backend.ids(),
        ready,
        "the old and the broken instance are gone"
    );
}

#[tokio::test]
async fn a_crash_is_reported_and_a_vanished_instance_is_replaced() {
    let rig = Rig::new(1, PolicyName::Dilu);
    rig.c
        .deploy(inference(
            "c",
            "quota: {request: 0.2, limit: 0.5}\nscaling: {capacity_rps: 10}\n",
        ))
        .unwrap();
    rig.run_for(500, 100).await;
    let id = rig.ready("c")[0].clone();
    rig.backend.crash(&id, "killed by signal 9", 500_000_000);
    rig.step(10).await;
    assert!(
        rig.routed("c").is_empty(),
        "a restarting instance gets no requests"
    );
    let error = rig.view("c").last_error.unwrap();
    assert!(
        error.contains(&id) && error.contains("killed by signal 9"),
        "{error}"
    );
    rig.run_for(600, 100).await;
    assert_eq!(
        rig.routed("c"),
        vec![id.clone()],
        "back once the node restarted it"
    );
    rig.backend.vanish(&id);
    rig.step(10).await;
    let v = rig.view("c");
    assert_eq!(v.instances.len(), 1);
    assert_ne!(v.instances[0].id, id, "a replacement was started");
    let mut text = String::new();
    rig.c
        .metrics()
        .render(&mut text, 1, &rig.c.instance_counts());
    assert!(
        text.contains("dilu_control_instances_lost_total{function=\"c\"} 1"),
        "{text}"
    );
}

#[tokio::test]
async fn a_restarted_controller_adopts_running_instances_without_creating_any() {
    let rig = Rig::new(1, PolicyName::Dilu);
    rig.c
        .deploy(inference(
            "k",
            "quota: {request: 0.2, limit: 0.5}\nscaling: {min_instances: 2, capacity_rps: 10}\n",
        ))
        .unwrap();
    rig.run_for(500, 100).await;
    let before = rig.ready("k");
    let creates = rig.calls("create").len();
    let c2 = rig.restarted();
    c2.reconcile().await.unwrap();
    let v = c2.function("k").unwrap();
    assert_eq!(v.status, FunctionPhase::Running);
    let mut ids: Vec<String> = v
        .instances
        .iter()
        .filter(|i| i.ready)
        .map(|i| i.id.clone())
        .collect();
    ids.sort();
    assert_eq!(ids, before, "the same instances, ready on the first pass");
    assert_eq!(c2.routes().borrow()[0].endpoints.len(), 2);
    assert_eq!(rig.calls("create").len(), creates, "nothing new started");
    // It did not see them start: no start-up time is counted for them.
    assert!(
        !metrics_text(&c2).contains("dilu_control_instance_startup_seconds_count"),
        "{}",
        metrics_text(&c2)
    );
    assert!(
        (c2.booked()[0].1 - 0.4).abs() < 1e-9,
        "the ledger books what runs"
    );
    // New instances continue the numbering.
    let labels_ok = rig
        .backend
        .instance(&before[0])
        .is_some_and(|o| o.function == "k");
    assert!(labels_ok, "{}", labels::FUNCTION);
}

#[tokio::test]
async fn a_node_selector_no_node_matches_says_why_and_the_node_it_names_runs_it() {
    let rig = Rig::new(1, PolicyName::Dilu);
    // The fake node is `local`, labelled as a kubelet labels its node.
    let elsewhere =
        format!("{V1}scheduling: {{node_selector: {{kubernetes.io/hostname: gpu-7}}}}\n");
    rig.c.deploy(inference("s", &elsewhere)).unwrap();
    rig.run_for(500, 100).await;
    let v = rig.view("s");
    assert!(v.instances.is_empty());
    assert_eq!(
        v.last_error.as_deref(),
        Some(
            "placing an instance of s: unschedulable: 0/1 nodes with a cpu device are available to it: 1 \
             didn't match the node selector"
        )
    );
    let here = format!(
        "{V1}scheduling: {{node_selector: {{kubernetes.io/hostname: local, kubernetes.io/os: {}}}}}\n",
        std::env::consts::OS
    );
    rig.c.update(inference("s", &here)).await.unwrap();
    rig.run_for(500, 100).await;
    assert_eq!(rig.ready("s").len(), 1);
    assert!(rig.view("s").last_error.is_none());
    // An update whose selector no node matches keeps the running instance serving (retiring it would make
    // room, not a matching node) and says why its replacement waits.
    let running = rig.ready("s");
    rig.c.update(inference("s", &elsewhere)).await.unwrap();
    rig.run_for(1_000, 100).await;
    assert_eq!(
        rig.routed("s"),
        running,
        "the old (now outdated) instance still serves"
    );
    assert!(
        rig.view("s")
            .last_error
            .is_some_and(|e| e.contains("didn't match the node selector")),
        "{:?}",
        rig.view("s").last_error
    );
}

#[tokio::test]
async fn replicas_with_a_spread_take_one_device_each_where_they_would_pack() {
    let devices_of = |rig: &Rig, f: &str| -> std::collections::BTreeSet<String> {
        rig.ready(f)
            .iter()
            .map(|id| rig.backend.instance(id).unwrap().at.device)
            .collect()
    };
    let three =
        "quota: {request: 0.2, limit: 0.5}\nscaling: {min_instances: 3, capacity_rps: 10}\n";
    let rig = Rig::new(3, PolicyName::Dilu);
    // The packed function leaves room on its device (Σ limits 0.9 of the 1.5 Dilu admits).
    rig.c
        .deploy(inference(
            "packed",
            &three.replace("limit: 0.5", "limit: 0.3"),
        ))
        .unwrap();
    rig.c
        .deploy(inference(
            "spread",
            &format!("{three}scheduling: {{spread: {{across: device, required: true}}}}\n"),
        ))
        .unwrap();
    rig.run_for(500, 100).await;
    assert_eq!(rig.ready("packed").len(), 3);
    assert_eq!(devices_of(&rig, "packed").len(), 1, "best fit packs them");
    assert_eq!(rig.ready("spread").len(), 3);
    assert_eq!(devices_of(&rig, "spread").len(), 3, "one per device");
}

#[tokio::test]
async fn a_full_device_leaves_a_clear_reason_until_room_is_made() {
    let rig = Rig::new(1, PolicyName::Dilu);
    let big = "quota: {request: 0.7, limit: 0.9}\nscaling: {capacity_rps: 10}\n";
    rig.c.deploy(inference("x", big)).unwrap();
    rig.c.deploy(inference("y", big)).unwrap();
    rig.run_for(500, 100).await;
    assert_eq!(rig.ready("x").len(), 1);
    assert!(rig.view("y").instances.is_empty());
    let error = rig.view("y").last_error.unwrap();
    assert!(error.contains("unschedulable"), "{error}");
    rig.c.delete("x").unwrap();
    rig.run_for(500, 100).await;
    assert_eq!(rig.ready("y").len(), 1);
    assert!(rig.view("y").last_error.is_none());
}

#[tokio::test]
async fn an_instance_whose_device_leaves_and_comes_back_is_booked_there_again() {
    let rig = Rig::new(2, PolicyName::Dilu);
    let big = "quota: {request: 0.7, limit: 0.9}\nscaling: {capacity_rps: 10}\n";
    rig.c.deploy(inference("x", big)).unwrap();
    rig.run_for(500, 100).await;
    assert_eq!(rig.ready("x").len(), 1);
    let booked = |device: &str| -> f64 {
        rig.c
            .booked()
            .iter()
            .find(|(at, _)| at.device == device)
            .map_or(0.0, |(_, share)| *share)
    };
    let device = ["CPU-0", "CPU-1"]
        .into_iter()
        .find(|d| booked(d) > 0.0)
        .expect("x is booked somewhere");
    let other = if device == "CPU-0" { "CPU-1" } else { "CPU-0" };
    assert!((booked(device) - 0.7).abs() < 1e-9, "{}", booked(device));
    // Its device leaves the inventory (unreachable) while it keeps running, then comes back.
    rig.backend.set_devices(&[other]);
    rig.run_for(300, 100).await;
    assert_eq!(booked(device), 0.0);
    assert_eq!(rig.ready("x").len(), 1, "it keeps running and serving");
    rig.backend.set_devices(&["CPU-0", "CPU-1"]);
    rig.run_for(300, 100).await;
    assert!(
        (booked(device) - 0.7).abs() < 1e-9,
        "booked again: {}",
        booked(device)
    );
    // So a new instance of 0.7 goes to the other device, never over it.
    rig.c.deploy(inference("y", big)).unwrap();
    rig.run_for(500, 100).await;
    assert_eq!(rig.ready("y").len(), 1);
    assert!((booked(other) - 0.7).abs() < 1e-9, "{:?}", rig.c.booked());
    assert!(booked(device) <= 1.0, "{:?}", rig.c.booked());
}

#[tokio::test]
async fn a_function_scales_to_zero_and_a_waiting_request_starts_it_again() {
    let rig = Rig::new(1, PolicyName::Dilu);
    rig.c
        .deploy(inference(
            "z",
            "quota: {request: 0.2, limit: 0.5}\nscaling: {min_instances: 0, capacity_rps: 10, lazy: {window: 4, out_votes: 2, in_votes: 3}}\n",
        ))
        .unwrap();
    rig.run_for(500, 100).await;
    assert!(
        rig.view("z").instances.is_empty(),
        "min 0: nothing until asked"
    );
    rig.c.wake("z");
    rig.step(10).await;
    assert_eq!(rig.view("z").instances.len(), 1, "cold start");
    rig.step(READY_MS).await;
    assert_eq!(rig.routed("z").len(), 1);
    rig.run_for(4_000, 100).await;
    assert!(rig.backend.ids().is_empty(), "back to zero when idle");
    rig.c.wake("z");
    rig.step(10).await;
    rig.step(READY_MS).await;
    assert_eq!(rig.routed("z").len(), 1, "and up again");
    let mut text = String::new();
    rig.c
        .metrics()
        .render(&mut text, 1, &rig.c.instance_counts());
    assert!(text.contains("direction=\"cold-start\"} 2"), "{text}");
}

#[tokio::test]
async fn a_quota_update_is_pushed_to_running_instances_without_a_restart() {
    let rig = Rig::new(1, PolicyName::Dilu);
    let spec1 = inference(
        "q",
        "quota: {request: 0.2, limit: 0.5}\nscaling: {capacity_rps: 10}\n",
    );
    rig.c.deploy(spec1.clone()).unwrap();
    rig.run_for(500, 100).await;
    let id = rig.ready("q")[0].clone();
    let mut spec2 = spec1.clone();
    spec2.quota.as_mut().unwrap().request = 0.3;
    spec2.quota.as_mut().unwrap().limit = 0.6;
    rig.c.update(spec2).await.unwrap();
    rig.step(10).await;
    assert_eq!(
        rig.calls("set_quota"),
        vec![format!("set_quota {id} 0.3/0.6")]
    );
    assert_eq!(rig.ready("q"), vec![id]);
    assert_eq!(rig.calls("create").len(), 1);
    assert!((rig.c.booked()[0].1 - 0.3).abs() < 1e-9);
}

#[tokio::test]
async fn exclusive_gives_every_instance_a_whole_device() {
    let rig = Rig::new(2, PolicyName::Exclusive);
    let q = "quota: {request: 0.2, limit: 0.5}\nscaling: {capacity_rps: 10}\n";
    for name in ["e1", "e2", "e3"] {
        rig.c.deploy(inference(name, q)).unwrap();
    }
    rig.run_for(500, 100).await;
    assert_eq!(rig.c.placer_name(), Some("exclusive"));
    assert_eq!(
        rig.ready("e1").len() + rig.ready("e2").len() + rig.ready("e3").len(),
        2
    );
    for id in rig.backend.ids() {
        let q = rig.backend.instance(&id).unwrap().quota;
        assert_eq!((q.request, q.limit), (1.0, 1.0));
    }
    assert_eq!(rig.view("e1").scaler, "kpa");
    assert!(rig.view("e3").last_error.unwrap().contains("unschedulable"));
}

#[tokio::test]
async fn errors_are_typed_with_their_status_and_field() {
    let rig = Rig::new(1, PolicyName::Dilu);
    let s = inference("t", "quota: {request: 0.2, limit: 0.5}\n");
    rig.c.deploy(s.clone()).unwrap();
    let e = rig.c.deploy(s).unwrap_err();
    assert!(matches!(e, ControlError::Exists(_)));
    assert_eq!(e.status(), 409);
    let e = rig.c.update(inference("nope", "")).await.unwrap_err();
    assert_eq!(e.status(), 404);
    let e = rig
        .c
        .deploy(spec("name: m\nmodel: {path: /missing.onnx}\nslo_ms: 10\n"))
        .unwrap_err();
    assert_eq!(e.status(), 400);
    assert_eq!(e.field().unwrap().field, "model.path");
    assert_eq!(rig.c.delete("nope").unwrap_err().status(), 404);
}

#[tokio::test]
async fn an_update_back_to_a_running_template_reuses_its_instance() {
    let (rig, old) = serving_then_broken().await;
    rig.run_for(1_000, 100).await;
    assert!(
        rig.view("r")
            .instances
            .iter()
            .any(|i| i.id == old && i.outdated)
    );
    // Back to the first model (with a new quota): the instance that runs it is current again.
    let back = inference(
        "r",
        "quota: {request: 0.3, limit: 0.5}\nscaling: {max_instances: 1, capacity_rps: 10}\n",
    );
    rig.c.update(back).await.unwrap();
    rig.run_for(500, 100).await;
    assert_eq!(rig.ready("r"), vec![old.clone()]);
    assert_eq!(
        rig.backend.ids(),
        vec![old.clone()],
        "the broken one is gone"
    );
    assert!(
        rig.calls("set_quota")
            .contains(&format!("set_quota {old} 0.3/0.5"))
    );
}

#[tokio::test]
async fn a_quota_that_does_not_fit_is_refused_with_409_and_changes_nothing() {
    let rig = Rig::new(1, PolicyName::Dilu);
    let q =
        |r: f64| format!("quota: {{request: {r}, limit: 0.7}}\nscaling: {{capacity_rps: 10}}\n");
    rig.c.deploy(inference("a", &q(0.5))).unwrap();
    rig.c.deploy(inference("b", &q(0.4))).unwrap();
    rig.run_for(500, 100).await;
    let e = rig.c.update(inference("b", &q(0.6))).await.unwrap_err();
    assert_eq!(e.status(), 409, "{e}");
    let f = e.field().unwrap();
    assert_eq!(
        (f.field.as_str(), f.value.as_str()),
        ("quota.request", "0.6")
    );
    assert_eq!(rig.view("b").generation, 1, "nothing stored");
    assert!(rig.calls("set_quota").is_empty());
}

#[tokio::test]
async fn a_stopped_controller_leaves_instances_alone_or_stops_them_all() {
    let rig = Rig::new(1, PolicyName::Dilu);
    rig.c
        .deploy(inference(
            "s",
            "quota: {request: 0.2, limit: 0.5}\nscaling: {min_instances: 2, capacity_rps: 10}\n",
        ))
        .unwrap();
    rig.run_for(500, 100).await;
    rig.c.stop().await;
    rig.backend.vanish(&rig.ready("s")[0]);
    rig.run_for(500, 100).await;
    assert_eq!(rig.backend.ids().len(), 1, "no replacement after stop");
    rig.c
        .stop_all_instances(std::time::Duration::from_secs(1))
        .await;
    assert!(rig.backend.ids().is_empty());
    rig.run_for(500, 100).await;
    assert!(rig.backend.ids().is_empty(), "nothing comes back");
}

#[tokio::test]
async fn has_scales_vertically_first_with_real_partition_and_headroom_inputs() {
    let rig = Rig::new(1, PolicyName::Has);
    rig.c
        .deploy(inference(
            "h",
            "quota: {request: 0.4, limit: 0.5}\nscaling: {max_instances: 3, capacity_rps: 100}\n",
        ))
        .unwrap();
    rig.run_for(500, 100).await;
    let id = rig.ready("h")[0].clone();
    let q = rig.backend.instance(&id).unwrap().quota;
    assert_eq!(
        (q.request, q.limit),
        (0.4, 0.4),
        "HAS: a partition of the request"
    );
    // Idle: HAS gives back time quota before it would remove the instance.
    rig.run_for(30_000, 100).await;
    let q = rig.backend.instance(&id).unwrap().quota;
    assert!(
        q.request < 0.4 && q.limit == 0.4,
        "time quota lowered: {q:?}"
    );
    assert_eq!(rig.backend.ids(), vec![id.clone()]);
    let lowered = q.request;
    assert!(
        (rig.c.booked()[0].1 - lowered).abs() < 1e-3,
        "the ledger books partition × time quota"
    );
    // Busy beyond what the instance serves: the quota grows back first (there is headroom on the device).
    rig.load.set_rps("h", 90.0);
    rig.run_for(10_000, 100).await;
    let q = rig.backend.instance(&id).unwrap().quota;
    assert!(
        q.request > lowered,
        "time quota raised again: {q:?} (was {lowered})"
    );
}

/// A Rust worker that aborted on a huge allocation with RUST_BACKTRACE=1: the cause is on the first line, the
/// frames after it fill any short tail.
const ALLOC_FAILURE_LOG: &str = "dilu worker: serving r on 127.0.0.1:40001
memory allocation of 400000000000 bytes failed
stack backtrace:
   0: std::alloc::rust_oom
             at /rustc/59807616e1fa2540724bfbac14d7976d7e4a3860/library/std/src/alloc.rs:424:5
   1: __rustc::__rust_alloc_error_handler
             at /rustc/59807616e1fa2540724bfbac14d7976d7e4a3860/library/std/src/alloc.rs:423:1
   2: alloc::alloc::handle_alloc_error::rt_error
             at /rustc/59807616e1fa2540724bfbac14d7976d7e4a3860/library/alloc/src/alloc.rs:531:13
   3: alloc::alloc::handle_alloc_error
             at /rustc/59807616e1fa2540724bfbac14d7976d7e4a3860/library/alloc/src/alloc.rs:537:9
   4: alloc::raw_vec::handle_error
             at /rustc/59807616e1fa2540724bfbac14d7976d7e4a3860/library/alloc/src/raw_vec/mod.rs:888:38
   5: alloc::raw_vec::RawVecInner<A>::with_capacity_in
             at /rustc/59807616e1fa2540724bfbac14d7976d7e4a3860/library/alloc/src/raw_vec/mod.rs:441:25
   6: alloc::vec::Vec<T>::with_capacity
             at /rustc/59807616e1fa2540724bfbac14d7976d7e4a3860/library/alloc/src/vec/mod.rs:524:9
   7: dilu_worker::batcher::run
             at ./crates/dilu-worker/src/batcher.rs:96:20
note: Some details are omitted, run with `RUST_BACKTRACE=full` for a verbose backtrace.
";

#[tokio::test]
async fn a_crash_is_reported_with_its_readable_cause_not_the_backtrace_frames() {
    let rig = Rig::new(1, PolicyName::Dilu);
    rig.c.deploy(inference("r", V1)).unwrap();
    rig.run_for(500, 100).await;
    let id = rig.ready("r")[0].clone();
    rig.backend.set_log(&id, ALLOC_FAILURE_LOG);
    rig.backend.crash(&id, "killed by signal 6", 500_000_000);
    rig.step(10).await;
    let error = rig.view("r").last_error.unwrap();
    assert!(
        error.contains("memory allocation of 400000000000 bytes failed"),
        "{error}"
    );
    assert!(
        error.contains(&id) && error.contains("killed by signal 6"),
        "{error}"
    );
    assert!(
        !error.contains("rust_oom") && !error.contains("stack backtrace"),
        "{error}"
    );
}

#[tokio::test]
async fn an_instance_that_ends_for_good_is_reported_before_it_is_removed() {
    let rig = Rig::new(1, PolicyName::Dilu);
    rig.c.deploy(inference("e", V1)).unwrap();
    rig.run_for(500, 100).await;
    let id = rig.ready("e")[0].clone();
    rig.backend.set_log(
        &id,
        "thread 'main' (4242) panicked at crates/dilu-worker/src/server.rs:88:14:\n\
         the listener closed: Too many open files (os error 24)\n\
         note: run with `RUST_BACKTRACE=1` environment variable to display a backtrace\n",
    );
    rig.backend.exit(&id, "exit code 101");
    rig.step(10).await;
    let error = rig.view("e").last_error.unwrap();
    assert!(
        error.contains("the listener closed: Too many open files (os error 24)"),
        "{error}"
    );
    assert!(error.contains("exit code 101"), "{error}");
    rig.run_for(500, 100).await;
    assert!(
        !rig.backend.ids().contains(&id),
        "the ended instance is removed"
    );
}

#[tokio::test]
async fn an_exit_of_unknown_status_reads_once() {
    let rig = Rig::new(1, PolicyName::Dilu);
    rig.c.deploy(inference("u", V1)).unwrap();
    rig.run_for(500, 100).await;
    let id = rig.ready("u")[0].clone();
    // What the agent reports for an adopted process that ended (its status is its old parent's to learn).
    rig.backend.crash(&id, "status unknown", 500_000_000);
    rig.step(10).await;
    let error = rig.view("u").last_error.unwrap();
    assert!(
        error.starts_with(&format!("instance {id} exited (status unknown)")),
        "{error}"
    );
}

#[tokio::test]
async fn deleting_a_function_while_its_instance_starts_or_is_profiled_leaves_nothing() {
    // Deleted while its profiling instance starts.
    let rig = Rig::new(1, PolicyName::Dilu);
    rig.c
        .deploy(spec("name: p\nmodel: {path: /m/p.onnx}\nslo_ms: 100\n"))
        .unwrap();
    rig.step(10).await;
    assert_eq!(rig.backend.ids().len(), 1, "a profiling instance starts");
    rig.c.delete("p").unwrap();
    rig.run_for(300, 50).await;
    assert!(rig.backend.ids().is_empty(), "{:?}", rig.backend.ids());
    assert!(rig.c.booked().iter().all(|(_, share)| *share == 0.0));

    // Deleted while it is being profiled.
    rig.c
        .deploy(spec("name: q\nmodel: {path: /m/q.onnx}\nslo_ms: 100\n"))
        .unwrap();
    rig.run_for(600, 100).await;
    assert_eq!(rig.view("q").status, FunctionPhase::Profiling);
    assert_eq!(rig.profiler.jobs().len(), 1);
    rig.c.delete("q").unwrap();
    rig.run_for(300, 50).await;
    assert!(rig.backend.ids().is_empty(), "{:?}", rig.backend.ids());
    assert!(rig.c.booked().iter().all(|(_, share)| *share == 0.0));
    assert!(rig.c.owners().is_empty());
}

#[tokio::test]
async fn memory_cap_refusals_reach_the_function_status_in_words_once_per_new_refusal() {
    let rig = Rig::new(1, PolicyName::Dilu);
    rig.c
        .deploy(inference(
            "m",
            "quota: {request: 0.2, limit: 0.5, memory: 512MiB}\nscaling: {max_instances: 1, capacity_rps: 10}\n",
        ))
        .unwrap();
    rig.run_for(500, 100).await;
    let id = rig.ready("m")[0].clone();
    assert_eq!(rig.view("m").last_error, None);
    rig.backend.set_alloc_failures(&id, 2);
    rig.step(10).await;
    let error = rig.view("m").last_error.unwrap();
    assert_eq!(
        error,
        format!(
            "instance {id} ran out of device memory: its memory cap (512 MiB) refused 2 allocations (the \
             instance got the driver's out-of-memory error); raise quota.memory if it needs more"
        )
    );
    // The instance keeps serving: it stays routed.
    assert_eq!(rig.routed("m"), [id]);
}

#[tokio::test]
async fn a_process_that_never_answers_readiness_fails_with_what_its_probe_met() {
    let rig = Rig::new(1, PolicyName::Dilu);
    // Without a quota the first instance is profiled, and the function fails when it is not ready in time.
    rig.c
        .deploy(spec(
            "name: p\nruntime: process\nprocess: {command: [silent-server], ready_timeout_s: 2}\nslo_ms: 100\n",
        ))
        .unwrap();
    rig.run_for(2_500, 100).await;
    match rig.view("p").status {
        FunctionPhase::Failed(reason) => assert!(
            reason.contains(
                "was not ready within 2s: its readiness probe failed: connection refused"
            ),
            "{reason}"
        ),
        other => panic!("{other:?}"),
    }
    // With a quota and capacity no profiling runs: the instance is reported, once, and keeps being waited for.
    rig.c
        .deploy(spec(&format!(
            "name: q\nruntime: process\nprocess: {{command: [silent-server], ready_timeout_s: 2}}\nslo_ms: 100\n{V1}"
        )))
        .unwrap();
    rig.run_for(1_500, 100).await;
    assert_eq!(rig.view("q").last_error, None);
    rig.run_for(1_000, 100).await;
    let error = rig.view("q").last_error.unwrap();
    assert!(error.contains("was not ready within 2s"), "{error}");
    assert_eq!(rig.view("q").status, FunctionPhase::Running);
}
