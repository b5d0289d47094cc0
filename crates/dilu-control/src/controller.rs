//! The reconciler. Every pass compares, per function, what should run (its spec, its profile, the size its
//! horizontal scaler wants) with what its backend reports, and acts on the difference: create, drain and
//! delete instances, push quotas, start and finish profiling runs, publish routes. It keeps no state it
//! could not rebuild from the store and the backend: killed at any point, the next start adopts what runs
//! and goes on (`docs/architecture.md`, the control loop).
//!
//! A pass observes first (one `nodes` and one `list` call), then decides under its lock without awaiting,
//! then carries out the [`Action`]s it decided, one by one, outside the lock. API calls (deploy, update,
//! delete) only change the desired state and wake the loop; only a pass talks to the backend.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use dilu_api::profile::source;
use dilu_api::{
    Endpoint, EventKind, FieldError, FunctionSpec, InstanceKind, Profile, Quota, Route,
};
use dilu_core::hash::{FNV_OFFSET, fnv1a64};
use dilu_core::ledger::{DeviceClass, DeviceRef, Ledger, LedgerError};
use dilu_core::policy::{InstanceQuota, Policy};
use dilu_core::profiler::TrainingQuota;
use dilu_core::scaling::{FunctionLoad, HorizontalScaler};
use dilu_core::sync::lock;
use tokio::sync::{Notify, watch};

use crate::backend::{InstanceBackend, InstancePlan, ObservedInstance};
use crate::clock::Clock;
use crate::diagnosis;
use crate::error::ControlError;
use crate::events::{self, EventLog};
use crate::load::LoadSource;
use crate::metrics::ControlMetrics;
use crate::profile::{ProfileGoal, ProfileJob, ProfileRun, Profiler};
use crate::state::{FunctionPhase, InstanceState};
use crate::store::FunctionStore;
use crate::views::{FunctionView, InstanceSummary};

use dilu_api::agent::InstancePhase;

/// How much of the end of an instance's log is read for the cause of its end: enough to reach above a long
/// backtrace (`diagnosis::cause` keeps one line of it).
const LOG_READ_BYTES: u64 = 64 * 1024;

/// The reconciler's settings.
#[derive(Debug, Clone)]
pub struct ControllerConfig {
    /// The policy whose placer, scalers and quota rules the control plane runs.
    pub policy: Policy,
    /// How long an instance started for profiling may take to become ready.
    pub ready_timeout: Duration,
    /// How long a draining instance may take to finish its requests before it is stopped anyway.
    pub drain_timeout: Duration,
    /// The share an instance started for profiling is booked with (the profiler then sets its shares).
    pub profiling_request: f64,
    /// Time between passes when nothing wakes the loop earlier.
    pub period: Duration,
}

impl ControllerConfig {
    /// Defaults for `policy`: 120 s to become ready, 30 s to drain, profiling booked at 0.1, a pass every 50 ms.
    pub fn new(policy: Policy) -> ControllerConfig {
        ControllerConfig {
            policy,
            ready_timeout: Duration::from_secs(120),
            drain_timeout: Duration::from_secs(30),
            profiling_request: 0.1,
            period: Duration::from_millis(50),
        }
    }
}

/// What a pass decided to do, carried out after the decision.
#[derive(Debug)]
enum Action {
    /// Start an instance booked under `key` in the ledger.
    Create {
        function: String,
        plan: Box<InstancePlan>,
        profiling: bool,
    },
    /// Stop an instance.
    Delete { id: String },
    /// Push a quota to an instance.
    SetQuota {
        function: String,
        id: String,
        quota: Quota,
    },
    /// Say why an instance exited, with the end of its log.
    ReportExit {
        function: String,
        id: String,
        exit: String,
    },
    /// Give the profiled instance its quota, store the profile and start serving.
    ApplyProfile {
        function: String,
        id: String,
        profile: Profile,
        quota: Quota,
    },
    /// Profiling failed: say why, stop its instance.
    FailProfile {
        function: String,
        id: String,
        reason: String,
        with_log: bool,
    },
}

/// What one pass's decisions share: the ledger, the instance numbering, the time and the actions decided.
struct Pass<'a> {
    ledger: &'a mut Ledger,
    next_seq: &'a mut u64,
    now: u64,
    actions: &'a mut Vec<Action>,
}

/// A profiling run and the instance it measures.
struct Profiling {
    instance: String,
    run: Option<Box<dyn ProfileRun>>,
    since_ns: u64,
}

/// One instance as the reconciler tracks it.
struct Tracked {
    seq: u64,
    state: InstanceState,
    obs: ObservedInstance,
    /// Time quota a hybrid scaler gave it (1 elsewhere).
    time_quota: f64,
    /// When it entered its state.
    since_ns: u64,
    reported_exit: Option<String>,
    /// Memory-cap refusals already reported.
    reported_alloc_failures: u64,
    /// Whether its not becoming ready in time was reported (for this start).
    reported_not_ready: bool,
    /// Why booking it again failed, once reported (its device came back to the inventory without room).
    rebook_error: Option<String>,
    /// When the control plane asked for it, until its first readiness is counted; `None` for one it adopted,
    /// whose start it did not see.
    created_ns: Option<u64>,
}

/// One function as the reconciler tracks it.
struct Function {
    spec: FunctionSpec,
    generation: u64,
    template: String,
    profile: Option<Profile>,
    phase: FunctionPhase,
    scaler: Box<dyn HorizontalScaler>,
    desired: Option<u32>,
    last_decision_ns: u64,
    last_rps: f64,
    last_error: Option<String>,
    /// `last_error` says why an instance could not be placed or started: a started instance clears it (and
    /// nothing else, so an exit report outlives the replacement of the instance that ended).
    start_error: bool,
    /// Instances created before this generation are outdated too (a re-profile without a template change).
    roll_before: Option<u64>,
    profiling: Option<Profiling>,
    instances: BTreeMap<String, Tracked>,
    /// A request waits for an instance (the gateway's activator signal).
    woken: bool,
}

struct State {
    functions: BTreeMap<String, Function>,
    ledger: Option<Ledger>,
    next_seq: u64,
    /// Instances of deleted functions already asked to stop.
    orphans: BTreeSet<String>,
}

/// The control plane's reconciler.
pub struct Controller {
    config: ControllerConfig,
    backend: Arc<dyn InstanceBackend>,
    store: Arc<dyn FunctionStore>,
    load: Arc<dyn LoadSource>,
    profiler: Arc<dyn Profiler>,
    clock: Arc<dyn Clock>,
    state: Mutex<State>,
    routes: watch::Sender<Arc<Vec<Route>>>,
    wake: Notify,
    pass: tokio::sync::Mutex<()>,
    /// Set once the control plane stops: no pass acts any more.
    stopped: std::sync::atomic::AtomicBool,
    metrics: ControlMetrics,
    events: Arc<EventLog>,
}

/// A stable 64-bit FNV-1a hash, hex: what the `dilu.io/template` label holds.
pub fn template_hash(key: &str) -> String {
    format!("{:016x}", fnv1a64(key.as_bytes(), FNV_OFFSET))
}

/// The horizontal scaler `policy` runs for `spec` (its lazy settings apply to the lazy scaler).
fn scaler_for(
    policy: &Policy,
    spec: &FunctionSpec,
) -> Result<Box<dyn HorizontalScaler>, FieldError> {
    policy
        .horizontal(Some(spec.scaling.lazy))
        .map_err(|e| e.within("scaling"))
}

/// A function's phase once its profile is known, or not yet.
fn phase_for(profile: Option<&Profile>) -> FunctionPhase {
    match profile {
        Some(_) => FunctionPhase::Running,
        None => FunctionPhase::Starting,
    }
}

/// Whether device `at` is in the ledger's inventory now.
fn in_inventory(ledger: &Ledger, at: &DeviceRef) -> bool {
    ledger
        .nodes()
        .iter()
        .any(|n| n.name == at.node && n.devices.iter().any(|d| d.uuid == at.device))
}

/// A node inventory the ledger cannot use.
fn inventory_error(e: LedgerError) -> ControlError {
    ControlError::Invalid(FieldError::new(
        "nodes",
        "(from the backend)",
        e.to_string(),
    ))
}

/// The next number of the instance numbering.
fn take(next: &mut u64) -> u64 {
    let n = *next;
    *next += 1;
    n
}

fn memory_mib(spec: &FunctionSpec) -> u64 {
    spec.quota
        .and_then(|q| q.memory)
        .map_or(0, |b| (b >> 20).max(1))
}

/// The profile a spec gives outright: a quota with a capacity (inference), or a quota (training).
/// Why instance `id` is not serving after `timeout`: what its last readiness probe met, when known.
fn not_ready_message(id: &str, obs: &ObservedInstance, timeout: Duration) -> String {
    match &obs.not_ready {
        Some(reason) => format!(
            "instance {id} was not ready within {}s: its readiness probe failed: {reason}",
            timeout.as_secs()
        ),
        None => format!("instance {id} was not ready within {}s", timeout.as_secs()),
    }
}

fn profile_from_spec(spec: &FunctionSpec) -> Option<Profile> {
    let q = spec.quota?;
    let capacity = match spec.kind {
        InstanceKind::Training => 0.0,
        _ => spec.scaling.capacity_rps?,
    };
    Some(Profile {
        request: q.request,
        limit: q.limit,
        batch: spec.runtime().max_batch(),
        capacity_rps: capacity,
        capacity_full_rps: None,
        latency_s: None,
        source: source::SPEC.into(),
        measurements: 0,
        seconds: 0.0,
    })
}

/// The quota an instance of `spec` with `terms` is given on its device.
fn device_quota(spec: &FunctionSpec, terms: &InstanceQuota) -> Quota {
    Quota {
        request: terms.grant_request,
        limit: terms.grant_limit,
        memory: spec.quota.and_then(|q| q.memory),
    }
}

/// The terms an instance of `spec` with `profile` runs with under `policy`, at `time_quota`.
fn terms_of(spec: &FunctionSpec, p: &Profile, policy: &Policy, time_quota: f64) -> InstanceQuota {
    let base = if spec.kind == InstanceKind::Training {
        policy.training_quota(&TrainingQuota {
            sm_request: p.request,
            sm_limit: p.limit,
        })
    } else {
        policy.inference_quota(&p.inference_quota())
    };
    base.with_time_quota(time_quota).unwrap_or(base)
}

impl Function {
    fn new(
        spec: FunctionSpec,
        generation: u64,
        profile: Option<Profile>,
        policy: &Policy,
    ) -> Result<Function, FieldError> {
        Ok(Function {
            scaler: scaler_for(policy, &spec)?,
            template: template_hash(&spec.template_key()),
            phase: phase_for(profile.as_ref()),
            spec,
            generation,
            profile,
            desired: None,
            last_decision_ns: 0,
            last_rps: 0.0,
            last_error: None,
            start_error: false,
            roll_before: None,
            profiling: None,
            instances: BTreeMap::new(),
            woken: false,
        })
    }

    fn outdated(&self, t: &Tracked) -> bool {
        t.obs.template != self.template || self.roll_before.is_some_and(|g| t.obs.generation < g)
    }

    /// The terms a current serving instance runs with under `policy` (its time quota applied).
    fn terms(&self, policy: &Policy, time_quota: f64) -> Option<InstanceQuota> {
        let p = self.profile.as_ref()?;
        Some(terms_of(&self.spec, p, policy, time_quota))
    }

    /// The ledger request of an instance with `terms`.
    fn booking(&self, terms: &InstanceQuota) -> dilu_core::InstanceRequest {
        terms.request(self.spec.kind, &self.spec.name, memory_mib(&self.spec))
    }

    /// What an instance found running books: the function's terms when it runs the current template, else
    /// the quota it runs with.
    fn booking_of_observed(
        &self,
        policy: &Policy,
        o: &ObservedInstance,
    ) -> dilu_core::InstanceRequest {
        let terms = if self.outdated_template(o) {
            None
        } else {
            self.terms(policy, 1.0)
        }
        .unwrap_or_else(|| InstanceQuota::spatial(o.quota.request, o.quota.limit, 0.0));
        self.booking(&terms)
    }

    /// The live instances (not on their way out) that run the current template (`outdated == false`) or an
    /// earlier one (`true`).
    fn live_ids(&self, outdated: bool) -> Vec<String> {
        self.instances
            .iter()
            .filter(|(_, t)| t.state.is_live() && self.outdated(t) == outdated)
            .map(|(id, _)| id.clone())
            .collect()
    }

    /// Takes `id` out of the routes: it stops once its requests in flight are done. An instance being profiled
    /// stops being profiled.
    fn drain(&mut self, id: &str, now: u64) {
        if let Some(t) = self.instances.get_mut(id)
            && t.state.is_live()
        {
            t.state = InstanceState::Draining;
            t.since_ns = now;
        }
        if self.profiling.as_ref().is_some_and(|p| p.instance == id)
            && let Some(mut p) = self.profiling.take()
            && let Some(run) = p.run.as_mut()
        {
            run.cancel();
        }
    }

    /// Starts tracking `obs`, numbered `seq`, as starting from `now`; `created_ns` is when the control plane
    /// asked for it (`None`: adopted, its start not seen).
    fn track(&mut self, obs: ObservedInstance, seq: u64, now: u64, created_ns: Option<u64>) {
        self.instances.insert(
            obs.id.clone(),
            Tracked {
                seq,
                state: InstanceState::Starting,
                obs,
                time_quota: 1.0,
                since_ns: now,
                reported_exit: None,
                reported_alloc_failures: 0,
                reported_not_ready: false,
                rebook_error: None,
                created_ns,
            },
        );
    }

    fn record_error(&mut self, message: String) {
        if self.last_error.as_deref() != Some(message.as_str()) {
            eprintln!("dilu: {}: {message}", self.spec.name);
        }
        self.last_error = Some(message);
        self.start_error = false;
    }

    /// Records why an instance could not be placed or started; the next instance that starts clears it.
    fn record_start_error(&mut self, message: String) {
        self.record_error(message);
        self.start_error = true;
    }
}

impl Controller {
    /// How long an instance of `spec` may take to become ready: the process's own bound, or the
    /// configuration's.
    fn ready_timeout(&self, spec: &FunctionSpec) -> Duration {
        spec.process
            .as_ref()
            .and_then(|p| p.ready_timeout_s)
            .map_or(self.config.ready_timeout, |s| {
                Duration::from_secs(u64::from(s))
            })
    }

    /// A reconciler over `backend`, restoring the functions of `store`. Instances are adopted by the first
    /// pass.
    pub fn new(
        config: ControllerConfig,
        backend: Arc<dyn InstanceBackend>,
        store: Arc<dyn FunctionStore>,
        load: Arc<dyn LoadSource>,
        profiler: Arc<dyn Profiler>,
        clock: Arc<dyn Clock>,
    ) -> Result<Arc<Controller>, ControlError> {
        let mut functions = BTreeMap::new();
        for stored in store.functions()? {
            let name = stored.spec.name.clone();
            let f = Function::new(
                stored.spec,
                stored.generation,
                stored.profile,
                &config.policy,
            )?;
            functions.insert(name, f);
        }
        Ok(Arc::new(Controller {
            config,
            backend,
            store,
            load,
            profiler,
            clock,
            state: Mutex::new(State {
                functions,
                ledger: None,
                next_seq: 1,
                orphans: BTreeSet::new(),
            }),
            routes: watch::Sender::new(Arc::new(Vec::new())),
            wake: Notify::new(),
            pass: tokio::sync::Mutex::new(()),
            stopped: std::sync::atomic::AtomicBool::new(false),
            metrics: ControlMetrics::default(),
            events: Arc::new(EventLog::new(
                events::DEFAULT_CAPACITY,
                events::system_wall_clock(),
            )),
        }))
    }

    /// The log of every decision.
    pub fn events(&self) -> &Arc<EventLog> {
        &self.events
    }

    /// Records a decision about `function` (and `instance`).
    fn event(
        &self,
        kind: EventKind,
        function: &str,
        instance: Option<&str>,
        message: impl Into<String>,
        data: serde_json::Value,
    ) {
        self.events
            .record(kind, Some(function), instance, message, data);
    }

    /// The policy.
    pub fn policy(&self) -> &Policy {
        &self.config.policy
    }

    /// The control plane's counters.
    pub fn metrics(&self) -> &ControlMetrics {
        &self.metrics
    }

    /// The routing table the gateway follows.
    pub fn routes(&self) -> watch::Receiver<Arc<Vec<Route>>> {
        self.routes.subscribe()
    }

    /// The placer's name (`None` before the first pass has seen the nodes).
    pub fn placer_name(&self) -> Option<&'static str> {
        lock(&self.state).ledger.as_ref().map(|l| l.placer_name())
    }

    /// Σ requests per device as the ledger books them.
    pub fn booked(&self) -> Vec<(DeviceRef, f64)> {
        lock(&self.state)
            .ledger
            .as_ref()
            .map(Ledger::devices)
            .unwrap_or_default()
    }

    /// A request waits for `function`, which has no ready instance: start one if it may scale from zero.
    pub fn wake(&self, function: &str) {
        if let Some(f) = lock(&self.state).functions.get_mut(function) {
            f.woken = true;
        }
        self.wake.notify_one();
    }

    /// Runs passes until the controller is dropped: every `period`, or at once when woken.
    pub async fn run(self: Arc<Self>) {
        let weak = Arc::downgrade(&self);
        let period = self.config.period;
        drop(self);
        loop {
            let Some(c) = weak.upgrade() else { return };
            if c.is_stopped() {
                return;
            }
            if let Err(e) = c.reconcile().await {
                eprintln!("dilu: reconcile: {e}");
            }
            let woken = c.wake.notified();
            tokio::pin!(woken);
            tokio::select! {
                _ = tokio::time::sleep(period) => {}
                _ = &mut woken => {}
            }
        }
    }

    // ---- the API's operations: change desired state, then wake the loop ------------------------------

    /// Deploys a function: checks it against the backend, stores it and lets the loop bring it up.
    pub fn deploy(&self, spec: FunctionSpec) -> Result<FunctionView, ControlError> {
        self.admit(&spec)?;
        let name = spec.name.clone();
        let f = Function::new(spec.clone(), 1, None, &self.config.policy)?;
        if !self.store.insert(&spec)? {
            return Err(ControlError::Exists(name));
        }
        lock(&self.state).functions.insert(name.clone(), f);
        self.metrics.deployed();
        self.event(
            EventKind::Deployed,
            &name,
            None,
            format!(
                "deployed: {} on runtime {}, {}",
                spec.kind,
                spec.runtime_name().as_str(),
                match spec.quota {
                    Some(q) => format!("quota request {} limit {}", q.request, q.limit),
                    None => "no quota: to be profiled".to_string(),
                }
            ),
            serde_json::json!({"generation": 1}),
        );
        self.wake.notify_one();
        self.function(&name)
    }

    /// Replaces a function's spec. A new quota, scaling or gateway setting applies to the running instances
    /// before this returns (one pass runs); a new model, kind or training loop (or a quota removed, which needs
    /// profiling) rolls them: the old ones serve until a new one is ready.
    pub async fn update(&self, spec: FunctionSpec) -> Result<FunctionView, ControlError> {
        let name = spec.name.clone();
        self.set_spec(spec)?;
        self.apply_now(&name).await
    }

    /// The rest of [`Controller::update`] after [`Controller::set_spec`]: one pass, so that the new spec applies
    /// before the caller answers, then the function's view.
    pub async fn apply_now(&self, name: &str) -> Result<FunctionView, ControlError> {
        if let Err(e) = self.reconcile().await {
            eprintln!("dilu: reconcile: {e}");
        }
        self.function(name)
    }

    /// The synchronous part of [`Controller::update`]: checks and stores the new spec and changes the desired
    /// state. It writes the store, so a caller on an event loop that serves other requests runs it on a
    /// blocking thread and then calls [`Controller::apply_now`].
    pub fn set_spec(&self, spec: FunctionSpec) -> Result<(), ControlError> {
        self.admit(&spec)?;
        let name = spec.name.clone();
        let scaler = scaler_for(&self.config.policy, &spec)?;
        let template = template_hash(&spec.template_key());
        let mut st = lock(&self.state);
        let State {
            functions, ledger, ..
        } = &mut *st;
        let f = functions
            .get_mut(&name)
            .ok_or_else(|| ControlError::NotFound(name.clone()))?;
        let template_changed = f.template != template;
        let reprofile = template_changed || (f.spec.quota.is_some() && spec.quota.is_none());
        let profile = if reprofile {
            profile_from_spec(&spec)
        } else {
            match (f.profile.clone(), spec.quota) {
                (Some(mut p), Some(q)) => {
                    p.request = q.request;
                    p.limit = q.limit;
                    if let Some(c) = spec.scaling.capacity_rps {
                        p.capacity_rps = c;
                    }
                    Some(p)
                }
                (p, _) => p,
            }
        };
        if !reprofile && let (Some(p), Some(ledger)) = (&profile, ledger.as_mut()) {
            // A new quota must fit beside what runs: the ledger admits it now, or the update is refused.
            let terms = terms_of(&spec, p, &self.config.policy, 1.0);
            let request = terms.request(spec.kind, &spec.name, memory_mib(&spec));
            for t in f
                .instances
                .values()
                .filter(|t| t.state.is_live() && !f.outdated(t))
            {
                if let Err(e) = ledger.check_resize(&t.obs.name, &request) {
                    if matches!(e, LedgerError::UnknownKey(_)) {
                        continue;
                    }
                    return Err(ControlError::Conflict(FieldError::new(
                        "quota.request",
                        terms.grant_request,
                        format!(
                            "does not fit beside the other instances on {}: {e}",
                            t.obs.at.device
                        ),
                    )));
                }
            }
        }
        let generation = self
            .store
            .update(&spec, profile.as_ref())?
            .ok_or_else(|| ControlError::NotFound(name.clone()))?;
        if reprofile {
            if let Some(mut p) = f.profiling.take()
                && let Some(run) = p.run.as_mut()
            {
                run.cancel();
            }
            f.desired = None;
            if !template_changed {
                f.roll_before = Some(generation);
            }
        }
        let what = if template_changed {
            "what its instances run changed: rolling them (the old ones serve until a new one is ready)"
        } else if reprofile {
            "its quota was removed: profiling again, then rolling"
        } else {
            "settings changed: applied to the running instances"
        };
        self.event(
            if reprofile {
                EventKind::Roll
            } else {
                EventKind::Deployed
            },
            &name,
            None,
            format!("updated to generation {generation}: {what}"),
            serde_json::json!({"generation": generation, "rolling": reprofile}),
        );
        f.template = template;
        f.spec = spec;
        f.generation = generation;
        f.scaler = scaler;
        f.phase = phase_for(profile.as_ref());
        f.profile = profile;
        drop(st);
        self.wake.notify_one();
        Ok(())
    }

    /// Whether `spec` is valid and its backend can run it.
    fn admit(&self, spec: &FunctionSpec) -> Result<(), ControlError> {
        spec.validate()?;
        self.backend.check(&spec.runtime())?;
        Ok(())
    }

    /// Deletes a function: the gateway stops routing to it at once; its instances stop on the next pass.
    pub fn delete(&self, name: &str) -> Result<(), ControlError> {
        let removed = lock(&self.state).functions.remove(name);
        let Some(mut f) = removed else {
            return Err(ControlError::NotFound(name.to_string()));
        };
        if let Some(run) = f.profiling.as_mut().and_then(|p| p.run.as_mut()) {
            run.cancel();
        }
        self.store.delete(name)?;
        self.metrics.deleted();
        self.event(
            EventKind::Deleted,
            name,
            None,
            "deleted: its instances drain and stop",
            serde_json::Value::Null,
        );
        self.publish_routes();
        self.wake.notify_one();
        Ok(())
    }

    /// Stops reconciling: the loop ends and later passes do nothing, so what runs stays as it is (for the next
    /// start to adopt, or for [`Controller::stop_all_instances`] to stop).
    pub async fn stop(&self) {
        let _pass = self.pass.lock().await;
        self.stopped
            .store(true, std::sync::atomic::Ordering::SeqCst);
    }

    fn is_stopped(&self) -> bool {
        self.stopped.load(std::sync::atomic::Ordering::SeqCst)
    }

    /// Stops reconciling, then stops every instance the control plane runs and waits (at most `timeout`) until
    /// they are gone; the functions stay in the store and come back on the next start.
    pub async fn stop_all_instances(&self, timeout: Duration) {
        self.stop().await;
        let _pass = self.pass.lock().await;
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let Ok(all) = self.backend.list().await else {
                return;
            };
            if all.is_empty() || tokio::time::Instant::now() >= deadline {
                return;
            }
            for i in all.iter().filter(|i| !i.terminating) {
                if let Err(e) = self.backend.delete(&i.id).await {
                    eprintln!("dilu: stopping instance {}: {e}", i.id);
                }
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    // ---- views ------------------------------------------------------------------------------------------

    fn view(&self, f: &Function) -> FunctionView {
        let profiling_id = f.profiling.as_ref().map(|p| p.instance.as_str());
        let instances: Vec<InstanceSummary> = f
            .instances
            .iter()
            .map(|(id, t)| InstanceSummary {
                id: id.clone(),
                node: t.obs.at.node.clone(),
                device: t.obs.at.device.clone(),
                url: t.obs.endpoint.clone().unwrap_or_default(),
                state: t.state,
                ready: t.state == InstanceState::Ready,
                draining: !t.state.is_live(),
                profiling: t.state == InstanceState::Profiling || Some(id.as_str()) == profiling_id,
                outdated: f.outdated(t),
            })
            .collect();
        FunctionView {
            name: f.spec.name.clone(),
            kind: f.spec.kind.as_str(),
            status: f.phase.clone(),
            generation: f.generation,
            spec: f.spec.clone(),
            profile: f.profile.clone(),
            scaler: f.scaler.name(),
            desired: f.desired.unwrap_or(0),
            starting: instances
                .iter()
                .filter(|i| i.state == InstanceState::Starting)
                .count() as u32,
            instances,
            rps: f.last_rps,
            last_error: f.last_error.clone(),
        }
    }

    /// One function's view.
    pub fn function(&self, name: &str) -> Result<FunctionView, ControlError> {
        let st = lock(&self.state);
        st.functions
            .get(name)
            .map(|f| self.view(f))
            .ok_or_else(|| ControlError::NotFound(name.to_string()))
    }

    /// Appends the control plane's families (`dilu_control_*`) to `out`, as every `/metrics` that serves this
    /// reconciler renders them.
    pub fn render_metrics(&self, out: &mut String) {
        let functions = lock(&self.state).functions.len();
        self.metrics.render(out, functions, &self.instance_counts());
    }

    /// Every function's view, by name.
    pub fn functions(&self) -> Vec<FunctionView> {
        lock(&self.state)
            .functions
            .values()
            .map(|f| self.view(f))
            .collect()
    }

    /// Instance id → function, for views of the nodes.
    pub fn owners(&self) -> BTreeMap<String, String> {
        lock(&self.state)
            .functions
            .iter()
            .flat_map(|(name, f)| f.instances.keys().map(move |id| (id.clone(), name.clone())))
            .collect()
    }

    // ---- the pass ---------------------------------------------------------------------------------------

    /// One pass over every function.
    pub async fn reconcile(&self) -> Result<(), ControlError> {
        let _pass = self.pass.lock().await;
        if self.is_stopped() {
            return Ok(());
        }
        let nodes = self.backend.nodes().await?;
        let observed = self.backend.list().await?;
        let now = self.clock.now_ns();
        let actions = {
            let mut st = lock(&self.state);
            self.decide(&mut st, &nodes, observed, now)?
        };
        for action in actions {
            self.carry_out(action).await;
        }
        self.publish_routes();
        Ok(())
    }

    fn decide(
        &self,
        st: &mut State,
        nodes: &[crate::backend::NodeInfo],
        observed: Vec<ObservedInstance>,
        now: u64,
    ) -> Result<Vec<Action>, ControlError> {
        let policy = &self.config.policy;
        match st.ledger.as_mut() {
            Some(ledger) => {
                let lost = ledger.set_nodes(nodes).map_err(inventory_error)?;
                for key in lost {
                    eprintln!("dilu: instance {key} was on a device that is gone");
                }
            }
            None => {
                // First pass: continue numbering after the instances that already run.
                st.next_seq = observed
                    .iter()
                    .filter_map(|o| o.name.rsplit('-').next()?.parse::<u64>().ok())
                    .max()
                    .unwrap_or(0)
                    + 1;
                st.ledger = Some(Ledger::new(nodes, policy.placer()).map_err(inventory_error)?);
            }
        }
        let mut by_function: BTreeMap<String, Vec<ObservedInstance>> = BTreeMap::new();
        let mut actions = Vec::new();
        let State {
            functions,
            ledger,
            next_seq,
            orphans,
        } = st;
        let Some(ledger) = ledger.as_mut() else {
            return Ok(actions);
        };
        let observed_ids: BTreeSet<String> = observed.iter().map(|o| o.id.clone()).collect();
        orphans.retain(|id| observed_ids.contains(id));
        for o in observed {
            if functions.contains_key(&o.function) {
                by_function.entry(o.function.clone()).or_default().push(o);
            } else if !o.terminating && orphans.insert(o.id.clone()) {
                ledger.release(&o.name);
                actions.push(Action::Delete { id: o.id });
            }
        }
        let mut pass = Pass {
            ledger,
            next_seq,
            now,
            actions: &mut actions,
        };
        for (name, f) in functions.iter_mut() {
            let mine = by_function.remove(name).unwrap_or_default();
            self.decide_function(f, &mut pass, mine);
        }
        Ok(actions)
    }

    fn decide_function(
        &self,
        f: &mut Function,
        pass: &mut Pass<'_>,
        observed: Vec<ObservedInstance>,
    ) {
        let policy = &self.config.policy;
        let name = f.spec.name.clone();
        // 1. Follow the backend: adopt what is new, forget what is gone.
        let seen: BTreeSet<String> = observed.iter().map(|o| o.id.clone()).collect();
        let gone: Vec<String> = f
            .instances
            .keys()
            .filter(|id| !seen.contains(*id))
            .cloned()
            .collect();
        for id in gone {
            if let Some(t) = f.instances.remove(&id) {
                pass.ledger.release(&t.obs.name);
                if t.state != InstanceState::Stopping {
                    self.metrics.instance_lost(&name);
                }
            }
            if f.profiling.as_ref().is_some_and(|p| p.instance == id) {
                f.profiling = None;
            }
        }
        for o in observed {
            // A tracked instance the ledger does not hold: its device left the inventory (the ledger dropped
            // its booking) and is back. Booked again where it runs, so that nothing is placed over it.
            let rebook = (f.instances.contains_key(&o.id)
                && !o.terminating
                && !pass.ledger.contains(&o.name)
                && in_inventory(pass.ledger, &o.at))
            .then(|| f.booking_of_observed(policy, &o));
            match f.instances.get_mut(&o.id) {
                Some(t) => {
                    if let Some(request) = rebook {
                        match pass.ledger.adopt(&o.name, &o.at, &request) {
                            Ok(()) => {
                                t.rebook_error = None;
                                eprintln!(
                                    "dilu: {name}: instance {} booked again on {}/{} (its device is back in \
                                     the inventory)",
                                    o.id, o.at.node, o.at.device
                                );
                            }
                            Err(e) => {
                                let e = e.to_string();
                                if t.rebook_error.as_ref() != Some(&e) {
                                    eprintln!("dilu: {name}: booking instance {} again: {e}", o.id);
                                    t.rebook_error = Some(e);
                                }
                            }
                        }
                    }
                    // A cluster scheduler may bind the instance elsewhere than planned: follow where it runs.
                    if t.obs.at != o.at
                        && !o.at.node.is_empty()
                        && let Some(request) = pass.ledger.request_of(&o.name).cloned()
                    {
                        pass.ledger.release(&o.name);
                        if let Err(e) = pass.ledger.adopt(&o.name, &o.at, &request) {
                            eprintln!(
                                "dilu: {name}: instance {} runs on {}/{}: {e}",
                                o.id, o.at.node, o.at.device
                            );
                        }
                    }
                    t.obs = o;
                }
                None => {
                    if !pass.ledger.contains(&o.name)
                        && let Err(e) =
                            pass.ledger
                                .adopt(&o.name, &o.at, &f.booking_of_observed(policy, &o))
                    {
                        eprintln!("dilu: {name}: adopting instance {}: {e}", o.id);
                    }
                    f.track(o, take(pass.next_seq), pass.now, None);
                }
            }
        }
        // 2. Each instance's state from what the node reports.
        let profiling_id = f.profiling.as_ref().map(|p| p.instance.clone());
        let mut exits = Vec::new();
        let mut ended = Vec::new();
        for (id, t) in f.instances.iter_mut() {
            if t.obs.terminating {
                t.state = InstanceState::Stopping;
            } else if t.state.is_live() {
                let state = match t.obs.phase {
                    InstancePhase::Ready if profiling_id.as_deref() == Some(id.as_str()) => {
                        InstanceState::Profiling
                    }
                    InstancePhase::Ready => InstanceState::Ready,
                    _ => InstanceState::Starting,
                };
                if state != t.state {
                    t.state = state;
                    t.since_ns = pass.now;
                }
                if state != InstanceState::Starting
                    && let Some(created) = t.created_ns.take()
                {
                    self.metrics.instance_ready(
                        &name,
                        Duration::from_nanos(pass.now.saturating_sub(created)),
                    );
                }
            }
            if let Some(exit) = &t.obs.last_exit
                && t.reported_exit.as_deref() != Some(exit.as_str())
            {
                t.reported_exit = Some(exit.clone());
                exits.push((id.clone(), exit.clone()));
            }
            if t.obs.phase == InstancePhase::Exited && t.state != InstanceState::Stopping {
                // It will not come back: stop tracking it through the node.
                t.state = InstanceState::Stopping;
                t.since_ns = pass.now;
                ended.push(id.clone());
            }
        }
        let ready_timeout = self.ready_timeout(&f.spec);
        let mut notes = Vec::new();
        for (id, t) in f.instances.iter_mut() {
            if t.obs.alloc_failures > t.reported_alloc_failures {
                t.reported_alloc_failures = t.obs.alloc_failures;
                let cap = t
                    .obs
                    .quota
                    .memory
                    .map(|b| format!(" ({} MiB)", b >> 20))
                    .unwrap_or_default();
                notes.push((EventKind::OutOfMemory, id.clone(), format!(
                    "instance {id} ran out of device memory: its memory cap{cap} refused {} allocation{} \
                     (the instance got the driver's out-of-memory error); raise quota.memory if it needs more",
                    t.obs.alloc_failures,
                    if t.obs.alloc_failures == 1 { "" } else { "s" }
                )));
            }
            if t.state != InstanceState::Starting {
                t.reported_not_ready = false;
            } else if !t.reported_not_ready
                && profiling_id.as_deref() != Some(id.as_str())
                && t.obs.phase == InstancePhase::Starting
                && pass.now.saturating_sub(t.since_ns) >= ready_timeout.as_nanos() as u64
            {
                t.reported_not_ready = true;
                notes.push((
                    EventKind::NotReady,
                    id.clone(),
                    not_ready_message(id, &t.obs, ready_timeout),
                ));
            }
        }
        for (kind, id, note) in notes {
            self.event(
                kind,
                &name,
                Some(&id),
                note.clone(),
                serde_json::Value::Null,
            );
            f.record_error(note);
        }
        for (id, exit) in exits {
            if profiling_id.as_deref() != Some(id.as_str()) {
                pass.actions.push(Action::ReportExit {
                    function: name.clone(),
                    id,
                    exit,
                });
            }
        }
        // After the reports: deleting an instance removes its log, which the report reads.
        for id in ended {
            pass.actions.push(Action::Delete { id });
        }
        // 3. Instances of another kind cannot share the function's route; instances left from an earlier
        // generation that do not serve are of no use.
        let kind = f.spec.kind;
        let stale: Vec<String> = f
            .instances
            .iter()
            .filter(|(_, t)| t.state.is_live())
            .filter(|(_, t)| {
                t.obs.kind != kind || (f.outdated(t) && t.state != InstanceState::Ready)
            })
            .map(|(id, _)| id.clone())
            .collect();
        for id in stale {
            f.drain(&id, pass.now);
        }
        // 4. Profile, or size the function.
        if matches!(f.phase, FunctionPhase::Failed(_)) {
            // Nothing to bring up until an update.
        } else if f.profile.is_none() {
            if let Some(p) = profile_from_spec(&f.spec) {
                f.profile = Some(p.clone());
                f.phase = FunctionPhase::Running;
                if let Err(e) = self.store.set_profile(&name, Some(&p)) {
                    f.record_error(e.to_string());
                }
                self.metrics.profiled(&name, source::SPEC, true);
            } else {
                self.decide_profiling(f, pass);
            }
        }
        if f.phase == FunctionPhase::Running {
            self.decide_size(f, pass);
            self.decide_quotas(f, pass.ledger, pass.actions);
        }
        // 5. Finish rolls: once a current instance serves, the old ones drain.
        let current_serves = f
            .instances
            .values()
            .any(|t| t.state == InstanceState::Ready && !f.outdated(t));
        let may_be_empty = f.phase == FunctionPhase::Running && f.spec.scaling.min_instances == 0;
        if current_serves || may_be_empty {
            for id in f.live_ids(true) {
                f.drain(&id, pass.now);
            }
        }
        // 6. Stop drained instances.
        let drain_ns = self.config.drain_timeout.as_nanos() as u64;
        for (id, t) in f.instances.iter_mut() {
            if t.state == InstanceState::Draining
                && (self.load.in_flight(&name, id) == 0
                    || pass.now.saturating_sub(t.since_ns) >= drain_ns)
            {
                t.state = InstanceState::Stopping;
                t.since_ns = pass.now;
                pass.actions.push(Action::Delete { id: id.clone() });
            }
        }
    }

    /// Books a device for a new instance of `f` and plans its creation; when nothing fits, the instances left
    /// from an earlier generation are retired first (the next pass tries again), or the function's view
    /// says why.
    fn plan_create(
        &self,
        f: &mut Function,
        pass: &mut Pass<'_>,
        terms: &InstanceQuota,
        quota: Quota,
        profiling: bool,
    ) -> bool {
        let key = format!("{}-{}", f.spec.name, *pass.next_seq);
        let booking = f.booking(terms);
        let runtime = f.spec.runtime();
        let classes = runtime.device_classes();
        let class = pass
            .ledger
            .first_class(classes)
            .or_else(|| classes.first().copied())
            .unwrap_or(DeviceClass::Cpu);
        match pass
            .ledger
            .place_where(&key, &booking, class, &f.spec.scheduling)
        {
            Ok(at) => {
                take(pass.next_seq);
                let requested = pass.ledger.requested(&at);
                let score = pass.ledger.score(&key);
                let why = score.map_or(String::new(), |s| {
                    format!(
                        " ({}score {:.3}, lower wins)",
                        s.tier.map_or(String::new(), |t| format!("{t}, ")),
                        s.value
                    )
                });
                self.event(
                    EventKind::Placement,
                    &f.spec.name,
                    Some(&key),
                    format!(
                        "placed {key} on {}/{} ({}) by placer {}{why}: request {:.2}, limit {:.2}{}; the \
                         device's requests now total {requested:.2}",
                        at.node,
                        at.device,
                        class.as_str(),
                        pass.ledger.placer_name(),
                        quota.request,
                        quota.limit,
                        if profiling { ", to profile" } else { "" }
                    ),
                    serde_json::json!({"node": at.node, "device": at.device, "class": class.as_str(),
                        "request": quota.request, "limit": quota.limit, "device_requested": requested,
                        "profiling": profiling, "score": score}),
                );
                let batch = match &f.profile {
                    Some(p) if p.batch > 0 && !profiling => p.batch,
                    _ => runtime.max_batch(),
                };
                pass.actions.push(Action::Create {
                    function: f.spec.name.clone(),
                    plan: Box::new(InstancePlan {
                        name: key,
                        function: f.spec.name.clone(),
                        generation: f.generation,
                        template: f.template.clone(),
                        kind: f.spec.kind,
                        runtime,
                        device_class: class,
                        batch,
                        max_body: f.spec.gateway.max_body,
                        slo_ms: f.spec.slo_ms,
                        at,
                        quota,
                        booking,
                        scheduling: f.spec.scheduling.clone(),
                    }),
                    profiling,
                });
                true
            }
            Err(e) => {
                // Retiring outdated instances makes room, never an allowed node: with none allowed they stay.
                let old = match e {
                    LedgerError::NoNodeAllowed(_) => Vec::new(),
                    _ => f.live_ids(true),
                };
                if old.is_empty() {
                    let message = match e {
                        LedgerError::Unschedulable(_) | LedgerError::NoNodeAllowed(_) => {
                            format!("placing an instance of {}: {e}", f.spec.name)
                        }
                        other => format!("booking an instance of {}: {other}", f.spec.name),
                    };
                    if f.last_error.as_deref() != Some(message.as_str()) {
                        self.event(
                            EventKind::Refused,
                            &f.spec.name,
                            None,
                            message.clone(),
                            serde_json::json!({"class": class.as_str()}),
                        );
                    }
                    f.record_start_error(message);
                } else {
                    // No room beside the instances an update replaces: retire them first (recreate
                    // instead of roll).
                    for id in old {
                        f.drain(&id, pass.now);
                    }
                }
                false
            }
        }
    }

    fn decide_profiling(&self, f: &mut Function, pass: &mut Pass<'_>) {
        let name = f.spec.name.clone();
        f.phase = FunctionPhase::Profiling;
        if f.profiling.is_none() {
            // Any current instance that is coming up will do (one adopted after a restart, too).
            match f.live_ids(false).into_iter().next() {
                Some(id) => {
                    f.profiling = Some(Profiling {
                        instance: id,
                        run: None,
                        since_ns: pass.now,
                    });
                }
                None => {
                    let (terms, quota) = match f.spec.quota {
                        // Calibrated at the quota the spec gives.
                        Some(q) => (InstanceQuota::spatial(q.request, q.limit, 0.0), q),
                        None => {
                            let r = self.config.profiling_request;
                            (
                                InstanceQuota::spatial(r, r, 0.0),
                                Quota {
                                    memory: None,
                                    ..Quota::new(r, r)
                                },
                            )
                        }
                    };
                    self.plan_create(f, pass, &terms, quota, true);
                    return;
                }
            }
        }
        let ready_timeout = self.ready_timeout(&f.spec);
        let Some(p) = f.profiling.as_mut() else {
            return;
        };
        let Some(t) = f.instances.get(&p.instance) else {
            f.profiling = None;
            return;
        };
        // Why the run failed, and whether the instance's log tells more.
        let failure: Option<(String, bool)> = match p.run.as_mut() {
            None if t.obs.phase == InstancePhase::Ready => {
                let goal = match f.spec.quota {
                    Some(q) => ProfileGoal::Calibrate(q),
                    None => ProfileGoal::Search,
                };
                p.run = Some(self.profiler.start(ProfileJob {
                    spec: f.spec.clone(),
                    goal,
                    instance: p.instance.clone(),
                    endpoint: t.obs.endpoint.clone().unwrap_or_default(),
                    usable_share: t.obs.usable_share,
                }));
                None
            }
            None => match &t.obs.last_exit {
                Some(exit) => Some((
                    format!(
                        "instance {} exited before it was ready ({exit})",
                        p.instance
                    ),
                    true,
                )),
                None if pass.now.saturating_sub(p.since_ns) >= ready_timeout.as_nanos() as u64 => {
                    Some((not_ready_message(&p.instance, &t.obs, ready_timeout), true))
                }
                None => None,
            },
            Some(run) => match run.poll() {
                None => None,
                Some(Ok(profile)) => {
                    let terms = terms_of(&f.spec, &profile, &self.config.policy, 1.0);
                    pass.actions.push(Action::ApplyProfile {
                        function: name.clone(),
                        id: p.instance.clone(),
                        quota: device_quota(&f.spec, &terms),
                        profile,
                    });
                    None
                }
                Some(Err(reason)) => Some((reason, false)),
            },
        };
        if let Some((reason, with_log)) = failure {
            pass.actions.push(Action::FailProfile {
                function: name,
                id: p.instance.clone(),
                reason,
                with_log,
            });
            f.profiling = None;
        }
    }

    fn decide_size(&self, f: &mut Function, pass: &mut Pass<'_>) {
        let name = f.spec.name.clone();
        let (min, max) = (f.spec.scaling.min_instances, f.spec.scaling.max_instances);
        let current = f.live_ids(false);
        let mut live = current.len() as u32;
        let mut desired = f.desired.unwrap_or(live.max(min)).clamp(min, max);
        if f.spec.kind == InstanceKind::Training {
            // A training job runs `min_instances`; its elasticity is vertical.
            desired = min;
        } else {
            let interval = f.scaler.interval_ns();
            if f.last_decision_ns == 0 {
                f.last_decision_ns = pass.now;
            }
            let elapsed = pass.now.saturating_sub(f.last_decision_ns);
            if elapsed >= interval {
                f.last_decision_ns = pass.now;
                let window = self.load.take_window(&name);
                let interval_s = elapsed as f64 / 1e9;
                f.last_rps = window.arrivals as f64 / interval_s.max(1e-9);
                let Some(base) = f.terms(&self.config.policy, 1.0) else {
                    return;
                };
                let loads: Vec<_> = current
                    .iter()
                    .filter_map(|id| f.instances.get(id))
                    .map(|t| {
                        let terms = base.with_time_quota(t.time_quota).unwrap_or(base);
                        terms.load(
                            t.seq,
                            t.state == InstanceState::Ready,
                            pass.ledger.free_share(&t.obs.at),
                        )
                    })
                    .collect();
                let decision = f.scaler.decide(&FunctionLoad {
                    now_ns: pass.now,
                    interval_s,
                    arrivals: window.arrivals,
                    queued: window.queued_now,
                    answered: window.answered,
                    late: window.late,
                    slo_s: f.spec.slo_ms.map_or(0.0, |ms| ms / 1000.0),
                    per_instance_capacity: base.capacity_rps,
                    min_instances: min,
                    max_instances: max,
                    instances: &loads,
                });
                for change in &decision.quota {
                    if let Some(t) = f.instances.values_mut().find(|t| t.seq == change.instance) {
                        t.time_quota = change.time_quota;
                    }
                }
                let reason = if decision.reason.is_empty() {
                    format!(
                        "{:.1} req/s against {:.1} req/s per instance (scaler {})",
                        f.last_rps,
                        base.capacity_rps,
                        f.scaler.name()
                    )
                } else {
                    decision.reason.clone()
                };
                let numbers = serde_json::json!({"rps": f.last_rps, "capacity_rps": base.capacity_rps,
                    "instances": live, "scaler": f.scaler.name(), "answered": window.answered,
                    "late": window.late});
                let mut removed = 0;
                for victim in &decision.remove {
                    let id = f
                        .instances
                        .iter()
                        .find(|(_, t)| t.seq == *victim && t.state.is_live())
                        .map(|(id, _)| id.clone());
                    if let Some(id) = id {
                        f.drain(&id, pass.now);
                        self.metrics.scaling_action(&name, "in");
                        self.event(
                            EventKind::ScaleIn,
                            &name,
                            Some(&id),
                            format!("scale in from {live}: draining {id}; {reason}"),
                            numbers.clone(),
                        );
                        removed += 1;
                    }
                }
                for _ in 0..decision.add {
                    self.metrics.scaling_action(&name, "out");
                }
                if decision.add > 0 {
                    self.event(
                        EventKind::ScaleOut,
                        &name,
                        None,
                        format!(
                            "scale out from {live} to {}: {reason}",
                            (live + decision.add).min(max)
                        ),
                        numbers,
                    );
                }
                desired = (live + decision.add)
                    .saturating_sub(removed)
                    .clamp(min, max);
                live -= removed;
            }
            if std::mem::take(&mut f.woken) && live == 0 && max >= 1 && desired == 0 {
                desired = 1;
                self.metrics.scaling_action(&name, "cold-start");
                self.event(
                    EventKind::ColdStart,
                    &name,
                    None,
                    "cold start: a request waits and no instance runs",
                    serde_json::Value::Null,
                );
            }
        }
        if f.desired.is_none() && desired > live {
            // The first sizing of a function: its bounds, not a scaler's vote.
            let why = if f.spec.kind == InstanceKind::Training {
                format!("a training job runs scaling.min_instances ({min})")
            } else {
                format!("scaling.min_instances is {min}")
            };
            self.event(
                EventKind::ScaleOut,
                &name,
                None,
                format!("scale out from {live} to {desired}: {why}"),
                serde_json::json!({"instances": live, "desired": desired, "min_instances": min}),
            );
        }
        f.desired = Some(desired);
        if live < desired {
            let Some(terms) = f.terms(&self.config.policy, 1.0) else {
                return;
            };
            let quota = device_quota(&f.spec, &terms);
            for _ in live..desired {
                if !self.plan_create(f, pass, &terms, quota, false) {
                    break;
                }
            }
        } else if live > desired {
            // Fewer wanted than run (the bounds changed): the newest go first.
            let mut newest = f.live_ids(false);
            newest.sort_unstable_by_key(|id| std::cmp::Reverse(f.instances.get(id).map(|t| t.seq)));
            for id in newest.into_iter().take((live - desired) as usize) {
                f.drain(&id, pass.now);
            }
        }
    }

    /// Pushes each current instance's quota when it differs from what the policy gives it.
    fn decide_quotas(&self, f: &mut Function, ledger: &mut Ledger, actions: &mut Vec<Action>) {
        let mut errors = Vec::new();
        for (id, t) in &f.instances {
            if !t.state.is_live() || t.state == InstanceState::Profiling || f.outdated(t) {
                continue;
            }
            let Some(terms) = f.terms(&self.config.policy, t.time_quota) else {
                continue;
            };
            let quota = device_quota(&f.spec, &terms);
            if t.obs.quota.same_as(&quota) {
                continue;
            }
            // An instance whose adoption did not fit has no booking yet: book it now.
            let booked = match ledger.resize(&t.obs.name, &f.booking(&terms)) {
                Err(LedgerError::UnknownKey(_)) => {
                    ledger.adopt(&t.obs.name, &t.obs.at, &f.booking(&terms))
                }
                other => other,
            };
            match booked {
                Ok(()) => actions.push(Action::SetQuota {
                    function: f.spec.name.clone(),
                    id: id.clone(),
                    quota,
                }),
                Err(e) => errors.push(format!("booking the quota of instance {id}: {e}")),
            }
        }
        for e in errors {
            f.record_error(e);
        }
    }

    // ---- carrying actions out ---------------------------------------------------------------------------

    async fn carry_out(&self, action: Action) {
        match action {
            Action::Create {
                function,
                plan,
                profiling,
            } => {
                let key = plan.name.clone();
                let asked = self.clock.now_ns();
                let result = self.backend.create(*plan).await;
                let now = self.clock.now_ns();
                let mut st = lock(&self.state);
                let State {
                    functions,
                    ledger,
                    next_seq,
                    ..
                } = &mut *st;
                match (result, functions.get_mut(&function)) {
                    (Ok(obs), Some(f)) => {
                        self.metrics.instance_started(&function);
                        if profiling {
                            f.profiling = Some(Profiling {
                                instance: obs.id.clone(),
                                run: None,
                                since_ns: now,
                            });
                        }
                        if std::mem::take(&mut f.start_error) {
                            f.last_error = None;
                        }
                        f.track(obs, take(next_seq), now, Some(asked));
                    }
                    // Deleted while it started: the next pass stops it as an orphan.
                    (Ok(_), None) => {}
                    (Err(e), f) => {
                        if let Some(ledger) = ledger.as_mut() {
                            ledger.release(&key);
                        }
                        if let Some(f) = f {
                            f.record_start_error(format!(
                                "starting an instance of {function}: {e}"
                            ));
                        }
                    }
                }
            }
            Action::Delete { id } => {
                if let Err(e) = self.backend.delete(&id).await
                    && !matches!(e, crate::backend::BackendError::NotFound(_))
                {
                    eprintln!("dilu: stopping instance {id}: {e}");
                }
            }
            Action::SetQuota {
                function,
                id,
                quota,
            } => match self.backend.set_quota(&id, quota).await {
                Ok(()) => {
                    self.metrics.vertical_action(&function);
                    self.event(
                        EventKind::Quota,
                        &function,
                        Some(&id),
                        format!(
                            "quota of {id} set to request {:.2}, limit {:.2}",
                            quota.request, quota.limit
                        ),
                        serde_json::to_value(quota).unwrap_or_default(),
                    );
                }
                Err(e) => {
                    if let Some(f) = lock(&self.state).functions.get_mut(&function) {
                        f.record_error(format!("setting the quota of instance {id}: {e}"));
                    }
                }
            },
            Action::ReportExit { function, id, exit } => {
                let message = format!("instance {id} exited ({exit}){}", self.log_cause(&id).await);
                self.event(
                    EventKind::Exit,
                    &function,
                    Some(&id),
                    message.clone(),
                    serde_json::json!({"exit": exit}),
                );
                if let Some(f) = lock(&self.state).functions.get_mut(&function) {
                    f.record_error(message);
                }
            }
            Action::ApplyProfile {
                function,
                id,
                profile,
                quota,
            } => self.apply_profile(&function, &id, profile, quota).await,
            Action::FailProfile {
                function,
                id,
                reason,
                with_log,
            } => {
                let reason = if with_log {
                    format!("{reason}{}", self.log_cause(&id).await)
                } else {
                    reason
                };
                self.metrics.profiled(&function, "live", false);
                self.event(
                    EventKind::ProfilingFailed,
                    &function,
                    Some(&id),
                    reason.clone(),
                    serde_json::Value::Null,
                );
                if let Err(e) = self.backend.delete(&id).await {
                    eprintln!("dilu: stopping instance {id}: {e}");
                }
                if let Some(f) = lock(&self.state).functions.get_mut(&function) {
                    f.record_error(reason.clone());
                    f.phase = FunctionPhase::Failed(reason);
                    if let Some(t) = f.instances.get_mut(&id) {
                        t.state = InstanceState::Stopping;
                    }
                }
            }
        }
    }

    /// `; its log says: <cause>` with the readable cause of `id`'s end from the end of its log
    /// ([`diagnosis::cause`]: the panic or error message, not the backtrace frames after it), or `; its log
    /// ends: <line>` when the log holds no failure report; empty when the log tells nothing.
    async fn log_cause(&self, id: &str) -> String {
        let log = self
            .backend
            .logs(id, LOG_READ_BYTES)
            .await
            .unwrap_or_default();
        match diagnosis::cause(&log) {
            Some(diagnosis::Cause::Report(cause)) => format!("; its log says: {cause}"),
            Some(diagnosis::Cause::LastLine(line)) => format!("; its log ends: {line}"),
            None => String::new(),
        }
    }

    async fn apply_profile(&self, function: &str, id: &str, profile: Profile, quota: Quota) {
        let outcome = match self.backend.set_quota(id, quota).await {
            Ok(()) => self
                .store
                .set_profile(function, Some(&profile))
                .map_err(|e| e.to_string()),
            Err(e) => Err(format!("the profiled quota does not fit the device: {e}")),
        };
        let mut st = lock(&self.state);
        let State {
            functions, ledger, ..
        } = &mut *st;
        let Some(f) = functions.get_mut(function) else {
            return;
        };
        if f.profiling.as_ref().is_none_or(|p| p.instance != id) {
            // The function changed while the result was applied; its next pass decides again.
            return;
        }
        f.profiling = None;
        match outcome {
            Ok(()) => {
                self.metrics.profiled(function, &profile.source, true);
                self.event(
                    EventKind::Profiled,
                    function,
                    Some(id),
                    format!(
                        "profiled ({}) on {id}: {} point{} in {:.1} s; batch {}, request {:.2}, limit {:.2}, \
                         capacity {:.1} req/s{}",
                        profile.source,
                        profile.measurements,
                        if profile.measurements == 1 { "" } else { "s" },
                        profile.seconds,
                        profile.batch,
                        profile.request,
                        profile.limit,
                        profile.capacity_rps,
                        profile
                            .latency_s
                            .map(|l| format!(", latency {:.1} ms", l * 1e3))
                            .unwrap_or_default()
                    ),
                    serde_json::to_value(&profile).unwrap_or_default(),
                );
                f.profile = Some(profile);
                f.phase = FunctionPhase::Running;
                if let (Some(terms), Some(ledger), Some(t)) = (
                    f.terms(&self.config.policy, 1.0),
                    ledger.as_mut(),
                    f.instances.get(id),
                ) && let Err(e) = ledger.resize(&t.obs.name, &f.booking(&terms))
                {
                    eprintln!("dilu: {function}: booking the profiled quota: {e}");
                }
                if let Some(t) = f.instances.get_mut(id) {
                    t.obs.quota = quota;
                }
            }
            Err(reason) => {
                self.metrics.profiled(function, "live", false);
                self.event(
                    EventKind::ProfilingFailed,
                    function,
                    Some(id),
                    reason.clone(),
                    serde_json::Value::Null,
                );
                f.record_error(reason.clone());
                f.phase = FunctionPhase::Failed(reason);
            }
        }
    }

    /// Publishes the routing table when it changed.
    fn publish_routes(&self) {
        let table: Vec<Route> = lock(&self.state)
            .functions
            .values()
            .filter(|f| f.spec.kind.is_inference())
            .map(|f| Route {
                function: f.spec.name.clone(),
                gateway: f.spec.gateway,
                slo_ms: f.spec.slo_ms,
                endpoints: f
                    .instances
                    .iter()
                    .filter(|(_, t)| t.state == InstanceState::Ready)
                    .filter_map(|(id, t)| {
                        Some(Endpoint {
                            instance: id.clone(),
                            url: t.obs.endpoint.clone()?,
                        })
                    })
                    .collect(),
            })
            .collect();
        self.routes.send_if_modified(|current| {
            if **current == table {
                false
            } else {
                *current = Arc::new(table);
                true
            }
        });
    }

    /// Instances per function and state, for the metrics.
    pub fn instance_counts(&self) -> Vec<(String, &'static str, usize)> {
        let st = lock(&self.state);
        let mut out = Vec::new();
        for (name, f) in &st.functions {
            let mut counts = [
                ("ready", 0usize),
                ("starting", 0),
                ("draining", 0),
                ("profiling", 0),
            ];
            for t in f.instances.values() {
                let k = match t.state {
                    InstanceState::Ready => 0,
                    InstanceState::Starting => 1,
                    InstanceState::Draining | InstanceState::Stopping => 2,
                    InstanceState::Profiling => 3,
                };
                counts[k].1 += 1;
            }
            out.extend(counts.iter().map(|(s, n)| (name.clone(), *s, *n)));
        }
        out
    }
}

impl Function {
    fn outdated_template(&self, o: &ObservedInstance) -> bool {
        o.template != self.template
    }
}
