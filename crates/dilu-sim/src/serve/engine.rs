//! The discrete-event serving engine: requests arrive, wait in per-instance queues, run in dynamic batches
//! on GPUs whose SM time the policy's vertical controller divides among co-located instances, while
//! training jobs soak up what is left and the horizontal scaler adds and removes instances.
//!
//! Execution is a fluid model: a running batch has `remaining` work (1.0 when it starts) drained at a
//! rate set by its current SM share (`1 / batch_time(batch, share)` per second for spatial shares,
//! `time_fraction / batch_time(batch, partition)` for time tokens). Whenever anything on a GPU changes —
//! a batch starts or ends, a grant moves, a resident joins or leaves — the work done so far is booked, the
//! GPU is re-arbitrated and the completion events of its running batches are rescheduled (stale events are
//! skipped by generation number). Time is virtual (integer nanoseconds) and every tie is broken by event
//! sequence number, so a run is a pure function of the scenario and the seed.

use crate::serve::batching::BatchingConfig;
use crate::serve::jitter::ServiceJitter;
use crate::serve::metrics::{Collector, PolicyRun};
use crate::serve::policy::{Bundle, InstanceQuota};
use crate::serve::prepared::PreparedScenario;
use crate::serve::workload::{ArrivalStream, arrival_seed, service_seed};
use dilu_core::cluster::{Cluster, GpuShare, Placement};
use dilu_core::policy::Components;
use dilu_core::request::{InstanceKind, InstanceRequest, SM_MILLI};
use dilu_core::scaling::share::device_shares;
use dilu_core::scaling::{
    FunctionLoad, Grant, HorizontalScaler, QueueState, ResidentState, ShareMode,
    VerticalController, VerticalEvent,
};
use dilu_core::scheduling::exclude_for_spread;
use std::cmp::Reverse;
use std::collections::{BinaryHeap, VecDeque};

const NS_PER_S: f64 = 1e9;
const SECOND_NS: u64 = 1_000_000_000;
/// CPU and host memory each instance is charged; generous nodes make GPUs the binding resource.
const INSTANCE_CPU_MILLI: u64 = 1000;
const INSTANCE_MEM_MIB: u64 = 2048;

/// Why a run could not be carried out.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum EngineError {
    /// The cluster description was refused.
    #[error("cluster: {0}")]
    Cluster(String),
    /// A policy component refused its configuration.
    #[error("policy: {0}")]
    Policy(String),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Event {
    Arrival { func: usize },
    BatchDone { inst: usize, epoch: u64 },
    BatchTimer { inst: usize, epoch: u64 },
    Ready { inst: usize },
    VerticalTimer { gpu: usize, epoch: u64 },
    ScalerTick { func: usize },
    Second,
    Sample,
    TrainingStart { job: usize },
    TrainingEnd { job: usize },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Who {
    Inst(usize),
    Train(usize),
}

/// One GPU: who runs on it, their grants and current SM·time shares, and its vertical controller.
struct GpuRt {
    who: Vec<Who>,
    states: Vec<ResidentState>,
    grants: Vec<Grant>,
    shares: Vec<f64>,
    /// Whether each resident claims the device this moment (the grant → share rule).
    claims: Vec<bool>,
    controller: Box<dyn VerticalController>,
    timer_gen: u64,
    timer_at: Option<u64>,
}

struct Inst {
    func: usize,
    gpu: usize,
    placement: Placement,
    quota: InstanceQuota,
    ready: bool,
    draining: bool,
    gone: bool,
    queue: VecDeque<u64>,
    running: Vec<u64>,
    remaining: f64,
    rate_per_ns: f64,
    last_ns: u64,
    epoch: u64,
    busy_since: u64,
    timer_gen: u64,
    timer_armed: bool,
    batch_started: u64,
}

struct Func {
    arrivals: ArrivalStream,
    /// Each batch's work relative to the table's time (`service_cv`).
    jitter: ServiceJitter,
    pending: VecDeque<u64>,
    instances: Vec<usize>,
    scaler: Box<dyn HorizontalScaler>,
    quota: InstanceQuota,
    arrivals_interval: u64,
    /// Requests answered or given up on since the last scaler tick, and how many of them missed the SLO.
    answered_interval: u64,
    late_interval: u64,
    arrivals_second: u64,
    exec_ns_second: u64,
    batches_second: u64,
    wait_ns: u64,
    last_tick_ns: u64,
}

struct Job {
    placement: Option<Placement>,
    gpus: Vec<usize>,
    gpu_speed: Vec<f64>,
    speed: f64,
    progress: f64,
    last_ns: u64,
    running: bool,
}

/// One policy's run over one prepared scenario.
pub struct Engine<'a> {
    sc: &'a PreparedScenario,
    bundle: Bundle,
    batching: BatchingConfig,
    cluster: Cluster,
    gpus_per_node: usize,
    gpus: Vec<GpuRt>,
    insts: Vec<Inst>,
    funcs: Vec<Func>,
    jobs: Vec<Job>,
    heap: BinaryHeap<Reverse<(u64, u64, Event)>>,
    seq: u64,
    now: u64,
    metrics: Collector,
    active_since_ns: u64,
    active_now: u32,
    quota_changes: u64,
}

impl<'a> Engine<'a> {
    /// Sets up the cluster, the initial instances and the first events.
    pub fn new(
        sc: &'a PreparedScenario,
        bundle: Bundle,
        batching: BatchingConfig,
    ) -> Result<Self, EngineError> {
        let cluster =
            Cluster::new(sc.nodes.clone()).map_err(|e| EngineError::Cluster(e.to_string()))?;
        let gpus_per_node = sc.nodes.first().map_or(0, |n| n.gpu_count as usize);
        let total_gpus = sc.nodes.iter().map(|n| n.gpu_count as usize).sum::<usize>();
        let gpus = (0..total_gpus)
            .map(|_| GpuRt {
                who: Vec::new(),
                states: Vec::new(),
                grants: Vec::new(),
                shares: Vec::new(),
                claims: Vec::new(),
                controller: bundle.vertical(),
                timer_gen: 0,
                timer_at: None,
            })
            .collect();
        let mut scalers = Vec::with_capacity(sc.functions.len());
        for _ in &sc.functions {
            scalers.push(bundle.horizontal().map_err(EngineError::Policy)?);
        }
        let funcs = sc
            .functions
            .iter()
            .zip(scalers)
            .enumerate()
            .map(|(i, (f, scaler))| Func {
                arrivals: ArrivalStream::new(
                    &f.workload,
                    arrival_seed(sc.seed, i),
                    sc.duration_ns as f64 / NS_PER_S,
                ),
                jitter: ServiceJitter::new(f.service_cv, service_seed(sc.seed, i)),
                pending: VecDeque::new(),
                instances: Vec::new(),
                scaler,
                quota: bundle.inference(f),
                arrivals_interval: 0,
                answered_interval: 0,
                late_interval: 0,
                arrivals_second: 0,
                exec_ns_second: 0,
                batches_second: 0,
                // As the worker's batcher: no wait until the first second has been measured.
                wait_ns: 0,
                last_tick_ns: 0,
            })
            .collect();
        let jobs = sc
            .training
            .iter()
            .map(|_| Job {
                placement: None,
                gpus: Vec::new(),
                gpu_speed: Vec::new(),
                speed: 0.0,
                progress: 0.0,
                last_ns: 0,
                running: false,
            })
            .collect();
        let metrics = Collector::new(sc);
        let mut engine = Engine {
            sc,
            bundle,
            batching,
            cluster,
            gpus_per_node,
            gpus,
            insts: Vec::new(),
            funcs,
            jobs,
            heap: BinaryHeap::new(),
            seq: 0,
            now: 0,
            metrics,
            active_since_ns: 0,
            active_now: 0,
            quota_changes: 0,
        };
        engine.start();
        Ok(engine)
    }

    fn push(&mut self, at: u64, ev: Event) {
        self.seq += 1;
        self.heap.push(Reverse((at, self.seq, ev)));
    }

    fn start(&mut self) {
        // Jobs present from the start are placed first: inference is deployed next to running training.
        for j in 0..self.sc.training.len() {
            let t = &self.sc.training[j];
            if t.start_ns == 0 {
                self.start_training(j);
            } else if t.start_ns < self.sc.duration_ns {
                self.push(t.start_ns, Event::TrainingStart { job: j });
            }
        }
        for f in 0..self.funcs.len() {
            for _ in 0..self.sc.functions[f].initial_instances {
                self.add_instance(f, true);
            }
            if let Some(t) = self.funcs[f].arrivals.next_ns() {
                self.push(t, Event::Arrival { func: f });
            }
            let interval = self.funcs[f].scaler.interval_ns().max(1);
            self.push(interval, Event::ScalerTick { func: f });
        }
        self.push(SECOND_NS, Event::Second);
        self.push(self.sc.sample_ns, Event::Sample);
    }

    /// Runs to the end and returns the measurements.
    pub fn run(mut self) -> PolicyRun {
        let end = self.sc.duration_ns;
        let mut events: u64 = 0;
        while let Some(Reverse((at, _, ev))) = self.heap.pop() {
            if at >= end {
                break;
            }
            self.now = at;
            events += 1;
            self.handle(ev);
        }
        self.now = end;
        self.finish(events)
    }

    fn handle(&mut self, ev: Event) {
        match ev {
            Event::Arrival { func } => self.on_arrival(func),
            Event::BatchDone { inst, epoch } => {
                if self.insts[inst].epoch == epoch && !self.insts[inst].running.is_empty() {
                    self.on_batch_done(inst);
                }
            }
            Event::BatchTimer { inst, epoch } => {
                let i = &mut self.insts[inst];
                if i.timer_gen == epoch && i.timer_armed {
                    i.timer_armed = false;
                    if i.running.is_empty() && !i.queue.is_empty() && !i.gone {
                        self.start_batch(inst);
                    }
                }
            }
            Event::Ready { inst } => self.on_ready(inst),
            Event::VerticalTimer { gpu, epoch } => {
                if self.gpus[gpu].timer_gen == epoch {
                    self.gpus[gpu].timer_at = None;
                    self.vertical(gpu, VerticalEvent::Timer);
                }
            }
            Event::ScalerTick { func } => self.on_scaler_tick(func),
            Event::Second => self.on_second(),
            Event::Sample => self.on_sample(),
            Event::TrainingStart { job } => self.start_training(job),
            Event::TrainingEnd { job } => self.stop_training(job),
        }
    }

    // ---- requests -------------------------------------------------------------------------------

    fn on_arrival(&mut self, f: usize) {
        let now = self.now;
        self.metrics.arrived(f, now);
        let func = &mut self.funcs[f];
        func.arrivals_interval += 1;
        func.arrivals_second += 1;
        if let Some(t) = func.arrivals.next_ns() {
            self.push(t, Event::Arrival { func: f });
        }
        self.route(f, now);
    }

    /// Join-the-shortest-queue over ready, non-draining instances; ties to the oldest instance. With no
    /// ready instance the request waits at the function (the activator) until one is ready.
    fn route(&mut self, f: usize, arrived: u64) {
        let mut best: Option<(usize, usize)> = None;
        for &i in &self.funcs[f].instances {
            let inst = &self.insts[i];
            if !inst.ready || inst.draining {
                continue;
            }
            let load = inst.queue.len() + inst.running.len();
            if best.is_none_or(|(l, _)| load < l) {
                best = Some((load, i));
            }
        }
        let Some((_, i)) = best else {
            self.funcs[f].pending.push_back(arrived);
            return;
        };
        self.insts[i].queue.push_back(arrived);
        self.maybe_start(i);
    }

    /// Starts a batch if the instance is idle and the batch is full or the batching wait is over;
    /// otherwise arms the batching timer.
    fn maybe_start(&mut self, i: usize) {
        let inst = &self.insts[i];
        if !inst.running.is_empty() || inst.queue.is_empty() || !inst.ready {
            return;
        }
        let f = inst.func;
        let batch = self.sc.functions[f].quota.batch as usize;
        let wait = self.funcs[f].wait_ns;
        let first = inst.queue.front().copied().unwrap_or(self.now);
        if inst.queue.len() >= batch || wait == 0 || self.now >= first + wait {
            self.start_batch(i);
        } else if !inst.timer_armed {
            let at = (first + wait).max(self.now);
            let inst = &mut self.insts[i];
            inst.timer_armed = true;
            inst.timer_gen += 1;
            let epoch = inst.timer_gen;
            self.push(at, Event::BatchTimer { inst: i, epoch });
        }
    }

    fn start_batch(&mut self, i: usize) {
        let now = self.now;
        let f = self.insts[i].func;
        let timeout = self.sc.functions[f].timeout_ns;
        let batch = self.sc.functions[f].quota.batch as usize;
        while let Some(&a) = self.insts[i].queue.front() {
            if now.saturating_sub(a) <= timeout {
                break;
            }
            self.insts[i].queue.pop_front();
            self.metrics.dropped(f, a);
            self.funcs[f].answered_interval += 1;
            self.funcs[f].late_interval += 1;
        }
        let inst = &mut self.insts[i];
        inst.timer_armed = false;
        if inst.queue.is_empty() {
            self.became_idle(i);
            return;
        }
        let k = inst.queue.len().min(batch);
        let was_busy = inst.busy_since != u64::MAX;
        inst.running.extend(inst.queue.drain(..k));
        inst.remaining = self.funcs[f].jitter.draw();
        inst.rate_per_ns = 0.0;
        inst.last_ns = now;
        inst.batch_started = now;
        if !was_busy {
            inst.busy_since = now;
            let gpu = inst.gpu;
            let slot = self.slot(gpu, Who::Inst(i));
            self.gpus[gpu].states[slot].busy = true;
            self.vertical(gpu, VerticalEvent::BusyStart { index: slot });
        } else {
            let gpu = inst.gpu;
            self.refresh(gpu);
        }
    }

    fn on_batch_done(&mut self, i: usize) {
        let now = self.now;
        let f = self.insts[i].func;
        let started = self.insts[i].batch_started;
        let running = std::mem::take(&mut self.insts[i].running);
        for &a in &running {
            self.metrics.completed(f, a, now);
        }
        let late = running
            .iter()
            .filter(|&&a| {
                self.metrics
                    .missed_slo(f, self.metrics.latency_ns(f, a, now))
            })
            .count() as u64;
        self.funcs[f].answered_interval += running.len() as u64;
        self.funcs[f].late_interval += late;
        self.metrics
            .batch_ran(f, running.len() as u32, now - started);
        self.insts[i].running = running;
        self.insts[i].running.clear();
        let func = &mut self.funcs[f];
        func.exec_ns_second += now - started;
        func.batches_second += 1;
        let inst = &self.insts[i];
        let batch = self.sc.functions[f].quota.batch as usize;
        let first = inst.queue.front().copied();
        let continue_now = first.is_some_and(|a| {
            inst.queue.len() >= batch
                || self.funcs[f].wait_ns == 0
                || now >= a + self.funcs[f].wait_ns
        });
        if continue_now {
            self.start_batch(i);
        } else {
            self.became_idle(i);
            self.maybe_start(i);
        }
    }

    /// The instance has no batch running: report the end of its burst and retire it if it drains.
    fn became_idle(&mut self, i: usize) {
        let now = self.now;
        let inst = &mut self.insts[i];
        inst.rate_per_ns = 0.0;
        if inst.busy_since != u64::MAX {
            let busy_ns = now - inst.busy_since;
            inst.busy_since = u64::MAX;
            let gpu = inst.gpu;
            let slot = self.slot(gpu, Who::Inst(i));
            self.gpus[gpu].states[slot].busy = false;
            self.vertical(
                gpu,
                VerticalEvent::BusyEnd {
                    index: slot,
                    busy_ns,
                },
            );
        }
        let inst = &self.insts[i];
        if inst.draining && inst.queue.is_empty() && !inst.gone {
            self.retire(i);
        }
    }

    fn on_ready(&mut self, i: usize) {
        if self.insts[i].gone {
            return;
        }
        self.insts[i].ready = true;
        let f = self.insts[i].func;
        let pending = std::mem::take(&mut self.funcs[f].pending);
        for a in pending {
            self.route(f, a);
        }
    }

    // ---- GPUs -----------------------------------------------------------------------------------

    fn slot(&self, gpu: usize, who: Who) -> usize {
        self.gpus[gpu]
            .who
            .iter()
            .position(|w| *w == who)
            .unwrap_or(usize::MAX)
    }

    /// Lets the GPU's vertical controller react to `event`, then re-arbitrates the GPU.
    fn vertical(&mut self, gpu: usize, event: VerticalEvent) {
        let now = self.now;
        self.observe_queues(gpu);
        let g = &mut self.gpus[gpu];
        let timer = g.controller.on_event(now, event, &g.states, &mut g.grants);
        if timer != g.timer_at {
            g.timer_gen += 1;
            g.timer_at = timer;
            if let Some(t) = timer {
                let epoch = g.timer_gen;
                self.push(t.max(now), Event::VerticalTimer { gpu, epoch });
            }
        }
        self.refresh(gpu);
    }

    /// Fills each inference resident's queue state (what the token manager sees in a window): requests not
    /// yet answered and the wait of the oldest. The SLO was set when it joined.
    fn observe_queues(&mut self, gpu: usize) {
        let now = self.now;
        let g = &mut self.gpus[gpu];
        for (who, state) in g.who.iter().zip(g.states.iter_mut()) {
            if let Who::Inst(i) = *who {
                let inst = &self.insts[i];
                // FIFO: the running batch holds the oldest requests, then the queue.
                let oldest = inst.running.first().or(inst.queue.front());
                state.queue.queued = (inst.running.len() + inst.queue.len()) as u32;
                state.queue.oldest_wait_ns = oldest.map_or(0, |&a| now.saturating_sub(a));
            }
        }
    }

    /// Books the work done on `gpu` so far, re-divides its SM time and reschedules its completions.
    fn refresh(&mut self, gpu: usize) {
        let now = self.now;
        for k in 0..self.gpus[gpu].who.len() {
            match self.gpus[gpu].who[k] {
                Who::Inst(i) => {
                    let inst = &mut self.insts[i];
                    if !inst.running.is_empty() {
                        inst.remaining -= inst.rate_per_ns * (now - inst.last_ns) as f64;
                        inst.remaining = inst.remaining.max(0.0);
                    }
                    inst.last_ns = now;
                }
                Who::Train(j) => self.accrue_job(j),
            }
        }
        let g = &mut self.gpus[gpu];
        g.shares.resize(g.who.len(), 0.0);
        g.claims.resize(g.who.len(), false);
        device_shares(
            g.controller.as_ref(),
            &g.states,
            &g.grants,
            &mut g.shares,
            &mut g.claims,
        );
        // Inference instances running a batch on this device: each slows the others' batches by their function's
        // `interference` (0 unless the scenario measured it).
        let running = self.gpus[gpu]
            .who
            .iter()
            .filter(|w| matches!(w, Who::Inst(i) if !self.insts[*i].running.is_empty()))
            .count();
        for k in 0..self.gpus[gpu].who.len() {
            let share = self.gpus[gpu].shares[k];
            let grant = self.gpus[gpu].grants[k];
            match self.gpus[gpu].who[k] {
                Who::Inst(i) => {
                    if self.insts[i].running.is_empty() {
                        continue;
                    }
                    let f = self.insts[i].func;
                    let size = self.insts[i].running.len() as u32;
                    let slowdown =
                        1.0 + self.sc.functions[f].interference * running.saturating_sub(1) as f64;
                    let perf = &self.sc.functions[f].perf;
                    let rate_per_s = match grant.mode {
                        ShareMode::Spatial => 1.0 / perf.batch_time_s(size, share),
                        ShareMode::Temporal => {
                            let p = grant.partition;
                            if p > 0.0 {
                                (share / p) / perf.batch_time_s(size, p)
                            } else {
                                0.0
                            }
                        }
                    };
                    let rate = if rate_per_s.is_finite() {
                        rate_per_s / slowdown / NS_PER_S
                    } else {
                        0.0
                    };
                    let inst = &mut self.insts[i];
                    if rate == inst.rate_per_ns {
                        continue;
                    }
                    inst.rate_per_ns = rate;
                    inst.epoch += 1;
                    if rate > 0.0 {
                        let dt = (inst.remaining / rate).ceil() as u64;
                        let epoch = inst.epoch;
                        self.push(now + dt, Event::BatchDone { inst: i, epoch });
                    }
                }
                Who::Train(j) => {
                    let curve = &self.sc.training[j].curve;
                    let speed = match grant.mode {
                        ShareMode::Spatial => curve.relative_throughput(share),
                        ShareMode::Temporal => {
                            let p = grant.partition;
                            if p > 0.0 {
                                (share / p) * curve.relative_throughput(p)
                            } else {
                                0.0
                            }
                        }
                    };
                    let job = &mut self.jobs[j];
                    if let Some(pos) = job.gpus.iter().position(|&x| x == gpu) {
                        job.gpu_speed[pos] = speed;
                    }
                    job.speed = job.gpu_speed.iter().copied().fold(f64::INFINITY, f64::min);
                    if !job.speed.is_finite() {
                        job.speed = 0.0;
                    }
                }
            }
        }
    }

    fn accrue_job(&mut self, j: usize) {
        let now = self.now;
        let job = &mut self.jobs[j];
        if job.running {
            job.progress += job.speed * (now - job.last_ns) as f64 / NS_PER_S;
        }
        job.last_ns = now;
    }

    fn join_gpu(&mut self, gpu: usize, who: Who, state: ResidentState) {
        let g = &mut self.gpus[gpu];
        g.who.push(who);
        g.states.push(state);
        g.grants
            .push(Grant::spatial(state.sm_limit, state.sm_request));
        g.shares.push(0.0);
        g.claims.push(false);
        self.vertical(gpu, VerticalEvent::ResidentsChanged);
    }

    fn leave_gpu(&mut self, gpu: usize, who: Who) {
        // Book work at the old shares before the resident disappears.
        self.refresh(gpu);
        let slot = self.slot(gpu, who);
        if slot == usize::MAX {
            return;
        }
        let g = &mut self.gpus[gpu];
        g.who.remove(slot);
        g.states.remove(slot);
        g.grants.remove(slot);
        g.shares.remove(slot);
        g.claims.remove(slot);
        self.vertical(gpu, VerticalEvent::ResidentsChanged);
    }

    fn gpu_index(&self, node: usize, gpu: u32) -> usize {
        node * self.gpus_per_node + gpu as usize
    }

    fn book_active(&mut self) {
        let now = self.now;
        self.metrics
            .add_gpu_ns(u128::from(self.active_now) * u128::from(now - self.active_since_ns));
        self.active_since_ns = now;
        self.active_now = self.cluster.active_gpus();
        self.metrics.peak_active(self.active_now);
    }

    // ---- instances ------------------------------------------------------------------------------

    fn request_for(&self, f: usize, q: &InstanceQuota) -> InstanceRequest {
        let spec = &self.sc.functions[f];
        InstanceRequest {
            kind: spec.kind,
            service: Some(spec.name.clone()),
            gpu_count: 1,
            sm_request: q.charge_request,
            sm_limit: q.charge_limit,
            gpu_mem_mib: spec.mem_mib,
            cpu_milli: INSTANCE_CPU_MILLI,
            mem_mib: INSTANCE_MEM_MIB,
            gpu_types: Vec::new(),
        }
    }

    /// Asks the placer for a device for `req` (an instance of `f`) while the devices that would break `f`'s
    /// spread are excluded, as the platform's ledger does; a preferred spread gives way when nothing else fits.
    fn place_spread(&mut self, f: usize, req: &InstanceRequest) -> Option<Placement> {
        let Some(spread) = self.sc.functions[f].spread.clone() else {
            return self.bundle.placer.place(&self.cluster, req).ok();
        };
        let service = self.sc.functions[f].name.clone();
        let skewed = exclude_for_spread(&mut self.cluster, &service, &spread, &|_, _| None);
        let mut placed = self.bundle.placer.place(&self.cluster, req).ok();
        self.cluster.clear_excluded();
        if placed.is_none() && skewed > 0 && !spread.required {
            placed = self.bundle.placer.place(&self.cluster, req).ok();
        }
        placed
    }

    /// Places a new instance of `f`; `warm` instances (the initial ones) are ready at once.
    fn add_instance(&mut self, f: usize, warm: bool) -> bool {
        let q = self.funcs[f].quota;
        let req = self.request_for(f, &q);
        let mut placement = match self.place_spread(f, &req) {
            Some(p) => p,
            None => {
                self.metrics.unschedulable();
                return false;
            }
        };
        let id = self.insts.len();
        placement.instance = id as u64;
        if self.cluster.allocate(&placement).is_err() {
            self.metrics.unschedulable();
            return false;
        }
        self.book_active();
        let Some(share) = placement.shares.first().copied() else {
            return false;
        };
        let gpu = self.gpu_index(placement.node, share.gpu);
        let ready_at = if warm {
            self.now
        } else {
            self.now + self.sc.functions[f].cold_start_ns
        };
        self.insts.push(Inst {
            func: f,
            gpu,
            placement,
            quota: q,
            ready: false,
            draining: false,
            gone: false,
            queue: VecDeque::new(),
            running: Vec::new(),
            remaining: 0.0,
            rate_per_ns: 0.0,
            last_ns: self.now,
            epoch: 0,
            busy_since: u64::MAX,
            timer_gen: 0,
            timer_armed: false,
            batch_started: 0,
        });
        self.funcs[f].instances.push(id);
        let state = ResidentState {
            id: id as u64,
            kind: self.sc.functions[f].kind,
            sm_request: q.grant_request,
            sm_limit: q.grant_limit,
            time_quota: q.time_quota,
            busy: false,
            queue: QueueState {
                slo_ns: (self.sc.functions[f].slo_s * NS_PER_S).round() as u64,
                ..QueueState::default()
            },
        };
        self.join_gpu(gpu, Who::Inst(id), state);
        if warm {
            self.insts[id].ready = true;
        } else {
            self.metrics.cold_start();
            self.push(ready_at, Event::Ready { inst: id });
        }
        true
    }

    fn retire(&mut self, i: usize) {
        let inst = &mut self.insts[i];
        inst.gone = true;
        inst.ready = false;
        let f = inst.func;
        let gpu = inst.gpu;
        let placement = inst.placement.clone();
        // Requests still queued here go back to the function.
        let queued: Vec<u64> = inst.queue.drain(..).collect();
        self.funcs[f].instances.retain(|&x| x != i);
        let _ = self.cluster.release(&placement);
        self.book_active();
        self.leave_gpu(gpu, Who::Inst(i));
        for a in queued {
            self.route(f, a);
        }
    }

    fn remove_instance(&mut self, i: usize) {
        if self.insts[i].gone || self.insts[i].draining {
            return;
        }
        self.insts[i].draining = true;
        if self.insts[i].running.is_empty() {
            self.retire(i);
        }
    }

    /// A hybrid scaler's vertical action: a new time quota, re-charged to the cluster.
    fn change_quota(&mut self, i: usize, time_quota: f64) {
        if self.insts[i].gone {
            return;
        }
        let Some(q) = self.insts[i].quota.with_time_quota(time_quota) else {
            return;
        };
        let old = self.insts[i].placement.clone();
        let mut new = old.clone();
        new.shares = old
            .shares
            .iter()
            .map(|s| GpuShare {
                sm_request: q.charge_request,
                sm_limit: s.sm_limit.max(q.charge_request),
                ..*s
            })
            .collect();
        if self.cluster.release(&old).is_err() {
            return;
        }
        if self.cluster.allocate(&new).is_err() {
            // No room for the larger quota: keep the old one.
            let _ = self.cluster.allocate(&old);
            return;
        }
        let inst = &mut self.insts[i];
        inst.placement = new;
        inst.quota = q;
        let gpu = inst.gpu;
        let slot = self.slot(gpu, Who::Inst(i));
        if slot != usize::MAX {
            let s = &mut self.gpus[gpu].states[slot];
            s.time_quota = q.time_quota;
            s.sm_request = q.grant_request;
        }
        self.quota_changes += 1;
        self.vertical(gpu, VerticalEvent::ResidentsChanged);
    }

    fn on_scaler_tick(&mut self, f: usize) {
        let now = self.now;
        let spec = &self.sc.functions[f];
        let interval_ns = now - self.funcs[f].last_tick_ns;
        self.funcs[f].last_tick_ns = now;
        let mut loads = Vec::with_capacity(self.funcs[f].instances.len());
        for &i in &self.funcs[f].instances {
            let inst = &self.insts[i];
            if inst.draining {
                continue;
            }
            let free = 1.0 - f64::from(self.cluster_gpu_request(inst.gpu)) / f64::from(SM_MILLI);
            loads.push(inst.quota.load(i as u64, inst.ready, free));
        }
        let queued = self.funcs[f].pending.len() as u64
            + self.funcs[f]
                .instances
                .iter()
                .map(|&i| self.insts[i].queue.len() as u64)
                .sum::<u64>();
        let load = FunctionLoad {
            now_ns: now,
            interval_s: interval_ns as f64 / NS_PER_S,
            arrivals: self.funcs[f].arrivals_interval,
            queued,
            answered: self.funcs[f].answered_interval,
            late: self.funcs[f].late_interval,
            slo_s: spec.slo_s,
            per_instance_capacity: self.funcs[f].quota.capacity_rps,
            min_instances: spec.min_instances,
            max_instances: spec.max_instances,
            instances: &loads,
        };
        let decision = self.funcs[f].scaler.decide(&load);
        self.funcs[f].arrivals_interval = 0;
        self.funcs[f].answered_interval = 0;
        self.funcs[f].late_interval = 0;
        for q in &decision.quota {
            self.change_quota(q.instance as usize, q.time_quota);
        }
        for &id in &decision.remove {
            let i = id as usize;
            if i < self.insts.len() && self.insts[i].func == f {
                self.remove_instance(i);
            }
        }
        for _ in 0..decision.add {
            let live = self.funcs[f]
                .instances
                .iter()
                .filter(|&&i| !self.insts[i].draining)
                .count();
            if live as u32 >= self.sc.functions[f].max_instances || !self.add_instance(f, false) {
                break;
            }
        }
        let interval = self.funcs[f].scaler.interval_ns().max(1);
        self.push(now + interval, Event::ScalerTick { func: f });
    }

    fn cluster_gpu_request(&self, gpu: usize) -> u32 {
        let node = gpu / self.gpus_per_node.max(1);
        let idx = gpu % self.gpus_per_node.max(1);
        self.cluster.nodes()[node].gpus[idx].sm_request
    }

    // ---- training -------------------------------------------------------------------------------

    fn start_training(&mut self, j: usize) {
        let t = &self.sc.training[j];
        let q = self.bundle.training(t);
        let req = InstanceRequest {
            kind: InstanceKind::Training,
            service: Some(t.name.clone()),
            gpu_count: t.gpus,
            sm_request: q.charge_request,
            sm_limit: q.charge_limit,
            gpu_mem_mib: t.mem_mib,
            cpu_milli: INSTANCE_CPU_MILLI * u64::from(t.gpus),
            mem_mib: INSTANCE_MEM_MIB * u64::from(t.gpus),
            gpu_types: Vec::new(),
        };
        let id = (1u64 << 40) + j as u64;
        let placement = self
            .bundle
            .placer
            .place(&self.cluster, &req)
            .ok()
            .map(|mut p| {
                p.instance = id;
                p
            });
        let Some(placement) = placement.filter(|p| self.cluster.allocate(p).is_ok()) else {
            // No room yet: try again in a second (the job queues, its time still counts).
            self.metrics.unschedulable();
            let retry = self.now + SECOND_NS;
            if retry < self.sc.training[j].end_ns {
                self.push(retry, Event::TrainingStart { job: j });
            }
            return;
        };
        self.book_active();
        let gpus: Vec<usize> = placement
            .shares
            .iter()
            .map(|s| self.gpu_index(placement.node, s.gpu))
            .collect();
        let job = &mut self.jobs[j];
        job.gpus = gpus.clone();
        job.gpu_speed = vec![0.0; gpus.len()];
        job.placement = Some(placement);
        job.running = true;
        job.last_ns = self.now;
        for gpu in gpus {
            let state = ResidentState {
                id: id + ((gpu as u64) << 20),
                kind: InstanceKind::Training,
                sm_request: q.grant_request,
                sm_limit: q.grant_limit,
                time_quota: q.time_quota,
                busy: true,
                queue: QueueState::default(),
            };
            self.join_gpu(gpu, Who::Train(j), state);
        }
        let end = self.sc.training[j].end_ns;
        if end < self.sc.duration_ns {
            self.push(end, Event::TrainingEnd { job: j });
        }
    }

    fn stop_training(&mut self, j: usize) {
        self.accrue_job(j);
        let Some(placement) = self.jobs[j].placement.take() else {
            return;
        };
        self.jobs[j].running = false;
        let _ = self.cluster.release(&placement);
        self.book_active();
        for gpu in self.jobs[j].gpus.clone() {
            self.leave_gpu(gpu, Who::Train(j));
        }
    }

    // ---- periodic -------------------------------------------------------------------------------

    /// Once a second: re-derive every function's batching wait from the last second (`docs/algorithms.md` §7).
    fn on_second(&mut self) {
        for f in 0..self.funcs.len() {
            let spec = &self.sc.functions[f];
            let func = &self.funcs[f];
            let ready = func
                .instances
                .iter()
                .filter(|&&i| self.insts[i].ready && !self.insts[i].draining)
                .count()
                .max(1);
            let rps = func.arrivals_second as f64 / ready as f64;
            let exec_s = if func.batches_second > 0 {
                func.exec_ns_second as f64 / func.batches_second as f64 / NS_PER_S
            } else {
                spec.perf
                    .batch_time_s(spec.quota.batch, spec.quota.sm_request)
            };
            let wait = self.batching.wait_ns(spec.kind, exec_s, rps);
            let func = &mut self.funcs[f];
            func.wait_ns = wait;
            func.arrivals_second = 0;
            func.exec_ns_second = 0;
            func.batches_second = 0;
        }
        // Training that could not be placed keeps its queue position: nothing else to do here.
        self.push(self.now + SECOND_NS, Event::Second);
    }

    fn on_sample(&mut self) {
        let mut sm_req = 0.0;
        let mut sm_used = 0.0;
        let mut mem = 0.0;
        let mut active = 0u32;
        for (ni, node) in self.cluster.nodes().iter().enumerate() {
            for (gi, g) in node.gpus.iter().enumerate() {
                if g.is_idle() {
                    continue;
                }
                active += 1;
                sm_req += f64::from(g.sm_request) / f64::from(SM_MILLI);
                mem += g.mem_mib as f64 / node.spec.gpu_mem_mib as f64;
                let rt = &self.gpus[ni * self.gpus_per_node + gi];
                // What runs: idle residents hold a share they may start with, but use none of it.
                sm_used += rt
                    .shares
                    .iter()
                    .zip(&rt.states)
                    .filter(|(_, r)| r.busy)
                    .map(|(s, _)| s)
                    .sum::<f64>();
            }
        }
        let instances = self.insts.iter().filter(|i| !i.gone && !i.draining).count() as u32;
        self.metrics
            .sample(self.now, active, sm_req, sm_used, mem, instances);
        self.push(self.now + self.sc.sample_ns, Event::Sample);
    }

    fn finish(mut self, events: u64) -> PolicyRun {
        for j in 0..self.jobs.len() {
            self.accrue_job(j);
        }
        self.book_active();
        let now = self.now;
        for f in 0..self.funcs.len() {
            let mut open: Vec<u64> = self.funcs[f].pending.iter().copied().collect();
            for &i in &self.funcs[f].instances {
                open.extend(self.insts[i].queue.iter().copied());
                open.extend(self.insts[i].running.iter().copied());
            }
            for a in open {
                self.metrics.unfinished(f, a, now);
            }
        }
        let training: Vec<(f64, f64)> = self
            .sc
            .training
            .iter()
            .zip(&self.jobs)
            .map(|(t, job)| {
                let span = t.end_ns.min(self.sc.duration_ns).saturating_sub(t.start_ns);
                (job.progress, span as f64 / NS_PER_S)
            })
            .collect();
        let vertical = self
            .gpus
            .iter()
            .map(|g| g.controller.adjustments())
            .sum::<u64>()
            + self.quota_changes;
        let components = self.components();
        let mut run = self.metrics.finish(events, vertical, &training);
        run.components = Some(components);
        run
    }

    /// The components this run used, named by the objects that ran (the registry's description otherwise,
    /// for a scenario without GPUs or functions).
    fn components(&self) -> Components {
        let mut c = self.bundle.policy().components();
        c.placer = self.bundle.placer.name();
        if let Some(g) = self.gpus.first() {
            c.vertical = g.controller.name();
        }
        if let Some(f) = self.funcs.first() {
            c.horizontal = f.scaler.name();
        }
        c
    }
}
