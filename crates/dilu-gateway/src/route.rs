//! Per-function routing state: the instances with their in-flight counts, the FIFO of requests waiting for a
//! slot, least-outstanding picking, and the guards that always give a slot back.
//!
//! A freed slot is handed directly to the oldest waiter (under the same lock that freed it), so waiters are
//! served strictly in arrival order and a new arrival never overtakes them. Hand-over goes through a oneshot
//! channel whose receiver lives in a [`WaitGuard`]; if the waiting future is dropped (client gone, deadline)
//! the guard either removes the waiter or, when a slot was already handed over, gives that slot back.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering::Relaxed};
use std::sync::{Arc, Mutex, PoisonError, RwLock};
use std::time::{Duration, Instant};

use tokio::sync::oneshot;

use dilu_api::Endpoint;

use super::config::FunctionPolicy;
use super::errors::GatewayError;
use super::metrics::FunctionMetrics;
use super::proxy::Upstream;

/// How long an instance that failed at the transport level gets no new requests.
pub(crate) const DEAD_FOR: Duration = Duration::from_secs(2);

/// The cold-start hook fires at most once per this interval per function.
const HOOK_INTERVAL: Duration = Duration::from_millis(500);

/// What the control plane registers to hear about requests waiting for a function with no ready instance.
pub(crate) type ColdStartHook = Arc<dyn Fn(&str) + Send + Sync>;

pub(crate) use dilu_core::sync::lock;

/// One function: its policy, counters and routing state.
pub(crate) struct FunctionState {
    pub(crate) name: Arc<str>,
    /// Its policy, read on every request without a lock (see [`PolicyCell`]).
    policy: PolicyCell,
    pub(crate) metrics: FunctionMetrics,
    route: Mutex<RouteState>,
}

/// A function's policy as atomics: every request reads it, and a read that takes a lock writes the lock's
/// word, which bounces that cache line between the cores serving requests. Fields are read one by one, so a
/// request racing an update may see some of each (harmless: every value is valid on its own).
struct PolicyCell {
    queue_capacity: AtomicUsize,
    max_outstanding_per_instance: AtomicUsize,
    request_timeout_ns: AtomicU64,
    cold_start_timeout_ns: AtomicU64,
    max_body_bytes: AtomicUsize,
    /// `u64::MAX`: no SLO.
    slo_ns: AtomicU64,
}

fn nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX - 1)
}

impl PolicyCell {
    fn new(policy: &FunctionPolicy) -> Self {
        let cell = PolicyCell {
            queue_capacity: AtomicUsize::new(0),
            max_outstanding_per_instance: AtomicUsize::new(0),
            request_timeout_ns: AtomicU64::new(0),
            cold_start_timeout_ns: AtomicU64::new(0),
            max_body_bytes: AtomicUsize::new(0),
            slo_ns: AtomicU64::new(u64::MAX),
        };
        cell.set(policy);
        cell
    }

    fn set(&self, p: &FunctionPolicy) {
        self.queue_capacity.store(p.queue_capacity, Relaxed);
        self.max_outstanding_per_instance
            .store(p.max_outstanding_per_instance, Relaxed);
        self.request_timeout_ns
            .store(nanos(p.request_timeout), Relaxed);
        self.cold_start_timeout_ns
            .store(nanos(p.cold_start_timeout), Relaxed);
        self.max_body_bytes.store(p.max_body_bytes, Relaxed);
        self.slo_ns.store(p.slo.map_or(u64::MAX, nanos), Relaxed);
    }

    fn get(&self) -> FunctionPolicy {
        let slo = self.slo_ns.load(Relaxed);
        FunctionPolicy {
            queue_capacity: self.queue_capacity.load(Relaxed),
            max_outstanding_per_instance: self.max_outstanding_per_instance.load(Relaxed),
            request_timeout: Duration::from_nanos(self.request_timeout_ns.load(Relaxed)),
            cold_start_timeout: Duration::from_nanos(self.cold_start_timeout_ns.load(Relaxed)),
            max_body_bytes: self.max_body_bytes.load(Relaxed),
            slo: (slo != u64::MAX).then(|| Duration::from_nanos(slo)),
        }
    }
}

/// A slot on one instance, handed to one request.
#[derive(Clone)]
pub(crate) struct Ticket {
    instance_id: u64,
    /// One shared handle (one reference count to touch per request, not three).
    info: Arc<InstanceInfo>,
}

/// What a request needs to know about the instance it was given.
struct InstanceInfo {
    name: Arc<str>,
    base_url: Arc<str>,
    /// Its keep-alive connections, or why its URL cannot be used.
    upstream: Result<Arc<Upstream>, Arc<str>>,
}

/// The waiter was answered without a slot: the function was removed.
struct Removed;

struct Waiter {
    id: u64,
    tx: oneshot::Sender<Result<Ticket, Removed>>,
}

struct Instance {
    id: u64,
    info: Arc<InstanceInfo>,
    outstanding: usize,
    /// In the control plane's latest endpoint list; unlisted instances only finish what they have.
    listed: bool,
    dead_until: Option<Instant>,
}

impl Instance {
    fn is_dead(&self) -> bool {
        self.dead_until.is_some_and(|until| until > Instant::now())
    }

    fn is_ready(&self) -> bool {
        self.listed && !self.is_dead()
    }

    fn grant(&self) -> Ticket {
        Ticket {
            instance_id: self.id,
            info: Arc::clone(&self.info),
        }
    }
}

struct RouteState {
    instances: Vec<Instance>,
    waiters: VecDeque<Waiter>,
    cap: usize,
    queue_capacity: usize,
    removed: bool,
    next_id: u64,
    cursor: usize,
    last_hook: Option<Instant>,
}

impl RouteState {
    /// Takes a slot on the ready instance with the fewest in-flight requests below the cap; ties go
    /// round-robin.
    fn pick(&mut self) -> Option<Ticket> {
        let n = self.instances.len();
        let mut best: Option<usize> = None;
        for k in 0..n {
            let i = (self.cursor + k) % n;
            let inst = &self.instances[i];
            if inst.outstanding >= self.cap || !inst.is_ready() {
                continue;
            }
            if best.is_none_or(|b| inst.outstanding < self.instances[b].outstanding) {
                best = Some(i);
                if inst.outstanding == 0 {
                    break;
                }
            }
        }
        let i = best?;
        self.cursor = (i + 1) % n;
        let inst = &mut self.instances[i];
        inst.outstanding += 1;
        Some(inst.grant())
    }

    fn has_ready(&self) -> bool {
        self.instances.iter().any(Instance::is_ready)
    }

    /// Hands free slots to waiters, oldest first.
    fn dispatch(&mut self) {
        while !self.waiters.is_empty() {
            let Some(grant) = self.pick() else { return };
            let Some(waiter) = self.waiters.pop_front() else {
                return;
            };
            if let Err(Ok(grant)) = waiter.tx.send(Ok(grant)) {
                // Unreachable while receivers only drop through `WaitGuard` (which dequeues first under this
                // lock); kept so that a slot can never leak.
                self.give_back(grant.instance_id);
            }
        }
    }

    fn give_back(&mut self, instance_id: u64) {
        if let Some(i) = self
            .instances
            .iter()
            .position(|inst| inst.id == instance_id)
        {
            let inst = &mut self.instances[i];
            inst.outstanding = inst.outstanding.saturating_sub(1);
            if !inst.listed && inst.outstanding == 0 {
                self.instances.remove(i);
            }
        }
    }
}

/// How a request's attempt to get a slot ended without waiting.
enum Enqueue {
    Got(Ticket),
    Queued {
        waiter_id: u64,
        rx: oneshot::Receiver<Result<Ticket, Removed>>,
        cold: bool,
        fire_hook: bool,
    },
    Full {
        capacity: usize,
        queued: usize,
        slots: usize,
    },
    Removed,
}

/// What a cold-start waiter finds when its cold-start timeout has passed.
enum ColdCheck {
    GaveUp,
    KeepWaiting,
}

impl FunctionState {
    pub(crate) fn new(name: &str, policy: FunctionPolicy) -> Self {
        let route = RouteState {
            instances: Vec::new(),
            waiters: VecDeque::new(),
            cap: policy.max_outstanding_per_instance.max(1),
            queue_capacity: policy.queue_capacity,
            removed: false,
            next_id: 0,
            cursor: 0,
            last_hook: None,
        };
        FunctionState {
            name: Arc::from(name),
            metrics: FunctionMetrics::new(name),
            policy: PolicyCell::new(&policy),
            route: Mutex::new(route),
        }
    }

    /// A copy of the current policy (cheap: plain numbers, no lock).
    pub(crate) fn policy(&self) -> FunctionPolicy {
        self.policy.get()
    }

    pub(crate) fn set_policy(&self, policy: FunctionPolicy) {
        let (cap, queue_capacity) = (
            policy.max_outstanding_per_instance.max(1),
            policy.queue_capacity,
        );
        self.policy.set(&policy);
        let mut route = lock(&self.route);
        route.cap = cap;
        route.queue_capacity = queue_capacity;
        route.dispatch();
    }

    /// Replaces the set of ready instances. Instances still listed keep their in-flight counts (and a dead
    /// mark, which expires on its own); unlisted ones get no new requests and disappear once idle.
    pub(crate) fn set_endpoints(&self, endpoints: &[Endpoint]) {
        let mut route = lock(&self.route);
        for inst in &mut route.instances {
            inst.listed = false;
        }
        for endpoint in endpoints {
            let base_url = endpoint.url.trim_end_matches('/');
            let known = route.instances.iter_mut().find(|inst| {
                *inst.info.name == *endpoint.instance && *inst.info.base_url == *base_url
            });
            match known {
                Some(inst) => inst.listed = true,
                None => {
                    let id = route.next_id;
                    route.next_id += 1;
                    route.instances.push(Instance {
                        id,
                        info: Arc::new(InstanceInfo {
                            name: Arc::from(endpoint.instance.as_str()),
                            base_url: Arc::from(base_url),
                            upstream: Upstream::for_instance(base_url),
                        }),
                        outstanding: 0,
                        listed: true,
                        dead_until: None,
                    });
                }
            }
        }
        route
            .instances
            .retain(|inst| inst.listed || inst.outstanding > 0);
        route.dispatch();
    }

    /// Marks the instance dead for [`DEAD_FOR`] and arranges for waiters to be served when the mark expires.
    pub(crate) fn mark_dead(self: &Arc<Self>, instance_id: u64) {
        {
            let mut route = lock(&self.route);
            if let Some(inst) = route
                .instances
                .iter_mut()
                .find(|inst| inst.id == instance_id)
            {
                inst.dead_until = Some(Instant::now() + DEAD_FOR);
            }
        }
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            let function = Arc::clone(self);
            runtime.spawn(async move {
                tokio::time::sleep(DEAD_FOR + Duration::from_millis(10)).await;
                lock(&function.route).dispatch();
            });
        }
    }

    /// Answers every waiter 404 and refuses new requests.
    pub(crate) fn remove(&self) {
        let mut route = lock(&self.route);
        route.removed = true;
        for waiter in route.waiters.drain(..) {
            // A dropped receiver means that waiter is gone already; nothing to answer.
            let _ = waiter.tx.send(Err(Removed));
        }
    }

    pub(crate) fn release(&self, instance_id: u64) {
        let mut route = lock(&self.route);
        route.give_back(instance_id);
        route.dispatch();
    }

    /// A ready instance for a request that takes no slot (metadata): the least loaded one, ties round-robin.
    pub(crate) fn any_ready(&self, except: Option<u64>) -> Option<Ticket> {
        let mut route = lock(&self.route);
        let n = route.instances.len();
        let start = route.cursor;
        let best = (0..n)
            .map(|k| (start + k) % n)
            .filter(|&i| route.instances[i].is_ready() && Some(route.instances[i].id) != except)
            .min_by_key(|&i| route.instances[i].outstanding)?;
        route.cursor = (best + 1) % n;
        Some(route.instances[best].grant())
    }

    pub(crate) fn has_ready(&self) -> bool {
        lock(&self.route).has_ready()
    }

    /// Queue depth, total in-flight requests and ready instances, read together.
    pub(crate) fn gauges(&self) -> (usize, usize, usize) {
        let route = lock(&self.route);
        let outstanding = route.instances.iter().map(|inst| inst.outstanding).sum();
        let ready = route
            .instances
            .iter()
            .filter(|inst| inst.is_ready())
            .count();
        (route.waiters.len(), outstanding, ready)
    }

    pub(crate) fn outstanding_by_instance(&self) -> Vec<(String, usize)> {
        let route = lock(&self.route);
        route
            .instances
            .iter()
            .map(|inst| (inst.info.name.to_string(), inst.outstanding))
            .collect()
    }

    fn enqueue(&self) -> Enqueue {
        let mut route = lock(&self.route);
        if route.removed {
            return Enqueue::Removed;
        }
        // Strict FIFO: a new arrival only takes a slot directly when nobody is waiting.
        if route.waiters.is_empty()
            && let Some(grant) = route.pick()
        {
            return Enqueue::Got(grant);
        }
        if route.waiters.len() >= route.queue_capacity {
            let slots = route.cap
                * route
                    .instances
                    .iter()
                    .filter(|inst| inst.is_ready())
                    .count();
            return Enqueue::Full {
                capacity: route.queue_capacity,
                queued: route.waiters.len(),
                slots,
            };
        }
        let (tx, rx) = oneshot::channel();
        let waiter_id = route.next_id;
        route.next_id += 1;
        route.waiters.push_back(Waiter { id: waiter_id, tx });
        let cold = !route.has_ready();
        let mut fire_hook = false;
        if cold {
            let now = Instant::now();
            if route
                .last_hook
                .is_none_or(|last| now.duration_since(last) >= HOOK_INTERVAL)
            {
                route.last_hook = Some(now);
                fire_hook = true;
            }
        }
        Enqueue::Queued {
            waiter_id,
            rx,
            cold,
            fire_hook,
        }
    }

    /// Called by a cold-start waiter at its cold-start deadline.
    fn check_cold(&self, waiter_id: u64) -> ColdCheck {
        let mut route = lock(&self.route);
        if route.has_ready() {
            return ColdCheck::KeepWaiting;
        }
        match route.waiters.iter().position(|w| w.id == waiter_id) {
            Some(i) => {
                route.waiters.remove(i);
                ColdCheck::GaveUp
            }
            // Already answered: the receiver holds the answer.
            None => ColdCheck::KeepWaiting,
        }
    }

    /// A waiter is going away: dequeue it, or give back the slot it was handed meanwhile.
    fn cancel_wait(&self, waiter_id: u64, rx: &mut oneshot::Receiver<Result<Ticket, Removed>>) {
        let mut route = lock(&self.route);
        if let Some(i) = route.waiters.iter().position(|w| w.id == waiter_id) {
            route.waiters.remove(i);
        } else if let Ok(Ok(grant)) = rx.try_recv() {
            route.give_back(grant.instance_id);
            route.dispatch();
        }
    }
}

/// A request's slot on one instance; dropping it frees the slot (and hands it to the oldest waiter).
pub(crate) struct Slot {
    function: Arc<FunctionState>,
    grant: Ticket,
}

impl Slot {
    pub(crate) fn instance_id(&self) -> u64 {
        self.grant.instance_id
    }

    pub(crate) fn instance(&self) -> &str {
        &self.grant.info.name
    }

    /// The instance's upstream, or why its URL cannot be used.
    pub(crate) fn upstream(&self) -> Result<&Upstream, &str> {
        match &self.grant.info.upstream {
            Ok(upstream) => Ok(upstream),
            Err(e) => Err(e),
        }
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.function.release(self.grant.instance_id);
    }
}

impl Ticket {
    pub(crate) fn instance_id(&self) -> u64 {
        self.instance_id
    }

    pub(crate) fn instance(&self) -> &str {
        &self.info.name
    }

    pub(crate) fn base_url(&self) -> &str {
        &self.info.base_url
    }
}

/// Owns a waiter's receiver; dropping it unanswered dequeues the waiter or returns its slot.
struct WaitGuard {
    function: Arc<FunctionState>,
    waiter_id: u64,
    rx: oneshot::Receiver<Result<Ticket, Removed>>,
    done: bool,
}

impl WaitGuard {
    async fn answer(&mut self) -> Result<Ticket, Removed> {
        let answer = (&mut self.rx).await;
        self.done = true;
        // The sender is only dropped unanswered when the waiter was dequeued, which happens on removal.
        answer.unwrap_or(Err(Removed))
    }
}

impl Drop for WaitGuard {
    fn drop(&mut self) {
        if !self.done {
            self.function.cancel_wait(self.waiter_id, &mut self.rx);
        }
    }
}

/// Gets a slot for one request of `function`: at once when an instance has room and nobody waits, else in
/// FIFO order. While the function has no ready instance the wait is bounded by `cold_start_timeout` (→ 503)
/// and `hook` hears about it; the caller bounds the whole wait by the request deadline.
pub(crate) async fn acquire(
    function: &Arc<FunctionState>,
    cold_start_timeout: Duration,
    hook: &RwLock<Option<ColdStartHook>>,
) -> Result<Slot, GatewayError> {
    let (waiter_id, rx, cold, fire_hook) = match function.enqueue() {
        Enqueue::Got(grant) => {
            return Ok(Slot {
                function: Arc::clone(function),
                grant,
            });
        }
        Enqueue::Removed => {
            return Err(GatewayError::Removed {
                function: function.name.to_string(),
            });
        }
        Enqueue::Full {
            capacity,
            queued,
            slots,
        } => {
            return Err(GatewayError::QueueFull {
                function: function.name.to_string(),
                capacity,
                retry_after_s: retry_after(function.metrics.mean_latency(), queued, slots),
            });
        }
        Enqueue::Queued {
            waiter_id,
            rx,
            cold,
            fire_hook,
        } => (waiter_id, rx, cold, fire_hook),
    };
    // Waiting is the uncommon case: its future is boxed, so that the common one (a free slot) stays small.
    Box::pin(wait_for_slot(
        function,
        cold_start_timeout,
        hook,
        (waiter_id, rx, cold, fire_hook),
    ))
    .await
}

/// The rest of [`acquire`] for a request that had to queue: `queued` is its waiter id, receiver, whether the
/// function had no ready instance, and whether to fire the cold-start hook.
async fn wait_for_slot(
    function: &Arc<FunctionState>,
    cold_start_timeout: Duration,
    hook: &RwLock<Option<ColdStartHook>>,
    queued: (u64, oneshot::Receiver<Result<Ticket, Removed>>, bool, bool),
) -> Result<Slot, GatewayError> {
    let (waiter_id, rx, cold, fire_hook) = queued;
    let mut wait = WaitGuard {
        function: Arc::clone(function),
        waiter_id,
        rx,
        done: false,
    };
    let cold_since = cold.then(tokio::time::Instant::now);
    let granted = |answer: Result<Ticket, Removed>| {
        if let (Ok(_), Some(since)) = (&answer, cold_since) {
            function.metrics.record_cold_start_wait(since.elapsed());
        }
        granted(function, answer)
    };
    if cold {
        function.metrics.count_cold_start_wait();
        if fire_hook {
            let hook = hook.read().unwrap_or_else(PoisonError::into_inner).clone();
            if let Some(hook) = hook {
                hook(&function.name);
            }
        }
        let cold_deadline = tokio::time::Instant::now() + cold_start_timeout;
        tokio::select! {
            answer = wait.answer() => return granted(answer),
            () = tokio::time::sleep_until(cold_deadline) => {}
        }
        if let ColdCheck::GaveUp = function.check_cold(waiter_id) {
            wait.done = true;
            return Err(GatewayError::NoInstance {
                function: function.name.to_string(),
                timeout: cold_start_timeout,
            });
        }
    }
    let answer = wait.answer().await;
    granted(answer)
}

fn granted(
    function: &Arc<FunctionState>,
    answer: Result<Ticket, Removed>,
) -> Result<Slot, GatewayError> {
    match answer {
        Ok(grant) => Ok(Slot {
            function: Arc::clone(function),
            grant,
        }),
        Err(Removed) => Err(GatewayError::Removed {
            function: function.name.to_string(),
        }),
    }
}

/// Seconds a rejected client should wait: roughly the time to drain the queue ahead of it, 1 to 60.
fn retry_after(mean_latency: Option<Duration>, queued: usize, slots: usize) -> u64 {
    let Some(mean) = mean_latency else { return 1 };
    let drain = mean.as_secs_f64() * (queued as f64 + 1.0) / slots.max(1) as f64;
    (drain.ceil() as u64).clamp(1, 60)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn endpoints(names: &[&str]) -> Vec<Endpoint> {
        names
            .iter()
            .map(|n| Endpoint {
                instance: n.to_string(),
                url: format!("http://{n}/"),
            })
            .collect()
    }

    fn state(cap: usize, queue: usize) -> Arc<FunctionState> {
        let policy = FunctionPolicy {
            max_outstanding_per_instance: cap,
            queue_capacity: queue,
            ..Default::default()
        };
        Arc::new(FunctionState::new("f", policy))
    }

    #[test]
    fn picks_least_outstanding_and_respects_cap() {
        let f = state(2, 4);
        f.set_endpoints(&endpoints(&["a", "b"]));
        let mut route = lock(&f.route);
        let picks: Vec<String> = (0..4)
            .filter_map(|_| route.pick())
            .map(|g| g.info.name.to_string())
            .collect();
        assert_eq!(picks.len(), 4);
        assert_eq!(picks.iter().filter(|n| *n == "a").count(), 2);
        assert!(route.pick().is_none(), "both instances are at their cap");
        let b = route.instances[1].id;
        route.give_back(b);
        assert_eq!(
            route.pick().map(|g| g.info.name.to_string()).as_deref(),
            Some("b")
        );
        assert_eq!(
            &*route.instances[0].info.base_url, "http://a",
            "trailing slash trimmed"
        );
    }

    #[test]
    fn unlisted_instance_drains_then_disappears() {
        let f = state(4, 4);
        f.set_endpoints(&endpoints(&["a"]));
        let grant = lock(&f.route).pick().map(|g| g.instance_id);
        f.set_endpoints(&endpoints(&["b"]));
        assert_eq!(
            f.outstanding_by_instance(),
            vec![("a".to_string(), 1), ("b".to_string(), 0)]
        );
        assert_eq!(f.gauges(), (0, 1, 1));
        if let Some(id) = grant {
            f.release(id);
        }
        assert_eq!(f.outstanding_by_instance(), vec![("b".to_string(), 0)]);
    }

    #[test]
    fn a_waiter_dropped_after_its_grant_gives_the_slot_back() {
        let f = state(1, 4);
        f.set_endpoints(&endpoints(&["a"]));
        let Enqueue::Got(first) = f.enqueue() else {
            panic!("a free slot is taken at once")
        };
        let Enqueue::Queued {
            waiter_id,
            rx,
            cold,
            fire_hook,
        } = f.enqueue()
        else {
            panic!("second one waits")
        };
        assert!(!cold && !fire_hook);
        let Enqueue::Queued {
            waiter_id: third_id,
            rx: third_rx,
            ..
        } = f.enqueue()
        else {
            panic!("third waits")
        };
        // The slot is handed to the second waiter, whose request is then dropped before it looks.
        f.release(first.instance_id);
        assert_eq!(f.gauges(), (1, 1, 1));
        drop(WaitGuard {
            function: f.clone(),
            waiter_id,
            rx,
            done: false,
        });
        // ... so the slot went on to the third waiter, in order.
        assert_eq!(f.gauges(), (0, 1, 1));
        let mut third = WaitGuard {
            function: f.clone(),
            waiter_id: third_id,
            rx: third_rx,
            done: false,
        };
        assert!(matches!(third.rx.try_recv(), Ok(Ok(_))));
        third.done = true;
        f.release(first.instance_id);
        assert_eq!(f.gauges(), (0, 0, 1));
        // A waiter dropped while still queued just leaves the queue.
        let Enqueue::Got(_held) = f.enqueue() else {
            panic!("free again")
        };
        let Enqueue::Queued { waiter_id, rx, .. } = f.enqueue() else {
            panic!("waits")
        };
        drop(WaitGuard {
            function: f.clone(),
            waiter_id,
            rx,
            done: false,
        });
        assert_eq!(f.gauges(), (0, 1, 1));
    }

    #[test]
    fn queue_capacity_and_removal() {
        let f = state(1, 1);
        let Enqueue::Queued {
            rx,
            cold: true,
            fire_hook: true,
            ..
        } = f.enqueue()
        else {
            panic!("cold wait")
        };
        let Enqueue::Full {
            capacity: 1,
            queued: 1,
            slots: 0,
        } = f.enqueue()
        else {
            panic!("queue is full")
        };
        f.remove();
        let mut rx = rx;
        assert!(matches!(rx.try_recv(), Ok(Err(Removed))));
        assert!(matches!(f.enqueue(), Enqueue::Removed));
    }

    #[test]
    fn retry_after_is_bounded() {
        assert_eq!(retry_after(None, 10, 1), 1);
        assert_eq!(retry_after(Some(Duration::from_millis(10)), 2, 1), 1);
        assert_eq!(retry_after(Some(Duration::from_secs(2)), 3, 2), 4);
        assert_eq!(retry_after(Some(Duration::from_secs(30)), 100, 1), 60);
    }
}
