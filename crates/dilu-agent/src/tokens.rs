//! The per-device token manager: every window it reads each instance's counters from its quota channel,
//! runs the policy's vertical controller (from the `dilu-core` registry: the code the simulator runs), turns
//! its grants into shares with the registry's grant → share rule (`dilu_core::scaling::share`, the rule the
//! simulator applies), and writes each instance's budget for the next window (`docs/policies.md`).
//!
//! A share of the whole device is written as "unlimited". A device's capacity in cost units per window is
//! exact for CPU devices (cores × window) and declared or learned for GPUs: learned = the highest total usage
//! seen in a window, decaying slowly, at least one full wave.

use dilu_api::Quota;
use dilu_api::agent::{Budgeting, Device, DeviceBudget};
use dilu_core::FieldError;
use dilu_core::InstanceKind;
use dilu_core::policy::Policy;
use dilu_core::scaling::share::device_shares;
use dilu_core::scaling::vertical::{
    Grant, QueueState, ResidentState, VerticalController, VerticalEvent,
};
use dilu_quota::{AgentChannel, COST_UNITS_PER_WAVE, CounterPage, DeviceKind, UNLIMITED};

use crate::cgroup::{CfsLimit, CgroupError, CpuGroup, Throttled, limit_for};
use std::sync::atomic::Ordering::Relaxed;

/// A share at least this close to the whole device is written as an unlimited budget.
const WHOLE_DEVICE: f64 = 0.999;
/// Per-window decay of a learned GPU capacity, so a capacity seen once fades over minutes.
const CAPACITY_DECAY: f64 = 0.99995;
/// Time constant of the smoothed usage shown to operators. One window's usage is a noisy snapshot: a work unit is
/// charged whole in the window it lands in, so a single window can read well above the share that bounds the
/// instance over time.
const USAGE_AVERAGE_NS: f64 = 1e9;

/// Why the manager refused a change.
#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    /// No such device.
    #[error("unknown device {0}")]
    UnknownDevice(String),
    /// The instance id is already managed.
    #[error("instance {0} is already managed")]
    Duplicate(String),
    /// The controller's configuration is invalid.
    #[error(transparent)]
    Config(#[from] FieldError),
}

/// One instance as the token manager sees it.
struct Resident {
    key: u64,
    id: String,
    kind: InstanceKind,
    quota: Quota,
    channel: AgentChannel,
    last_cost: u64,
    usage: u64,
    usage_avg: f64,
    busy: bool,
    /// Start of the current burst, backdated one window (its work began somewhere in the window before).
    busy_since_ns: u64,
    /// The tick that first counted the current burst and rewrote the budgets for it.
    busy_seen_ns: u64,
    share: f64,
    budget: u64,
    meter: Option<Meter>,
}

/// A resident the agent meters with a CPU cgroup (a process that does not charge its channel): each window
/// the group's CPU time since the last is charged to the channel, and the budget is written as the group's
/// CFS limit.
struct Meter {
    group: CpuGroup,
    last_usage_ns: u64,
    last_throttled: Throttled,
    /// The limit written last (`None`: unlimited); `Err` while the group's limit is not known to be it (a
    /// group made again, whose new directory has none).
    limit: Result<Option<CfsLimit>, ()>,
    /// Whether a failure has been reported (once per resident: a vanished group fails every window).
    reported: bool,
}

impl Meter {
    fn report(&mut self, id: &str, error: &CgroupError) {
        if !self.reported {
            self.reported = true;
            eprintln!("dilu agent: instance {id}: CPU cgroup: {error}");
        }
    }

    /// CPU time the group used, and how CFS held it back, since the last call: the channel counts the first as
    /// cost and the second as delayed launches and delay, as for a runtime that waits for budget itself.
    fn sample(&mut self, id: &str) -> (u64, Throttled) {
        match self.group.sample() {
            Ok((usage, throttled)) if usage < self.last_usage_ns => {
                // The group was made again (removed while its instance waited to restart): its counters and its
                // limit start afresh.
                self.last_usage_ns = usage;
                self.last_throttled = throttled;
                self.limit = Err(());
                (usage, throttled)
            }
            Ok((usage, throttled)) => {
                let since = Throttled {
                    periods: throttled
                        .periods
                        .saturating_sub(self.last_throttled.periods),
                    time_ns: throttled
                        .time_ns
                        .saturating_sub(self.last_throttled.time_ns),
                };
                let used = usage - self.last_usage_ns;
                self.last_usage_ns = usage;
                self.last_throttled = throttled;
                (used, since)
            }
            Err(error) => {
                self.report(id, &error);
                (0, Throttled::default())
            }
        }
    }

    fn hold(&mut self, id: &str, budget: u64, window_ns: u64) {
        let limit = limit_for(budget, window_ns);
        if Ok(limit) == self.limit {
            return;
        }
        match self.group.set_limit(limit) {
            Ok(()) => self.limit = Ok(limit),
            Err(error) => self.report(id, &error),
        }
    }
}

/// A device's residents, controller and capacity.
struct DeviceTokens {
    uuid: String,
    window_ns: u64,
    kind: DeviceKind,
    fixed_capacity: Option<u64>,
    learned_capacity: f64,
    controller: Box<dyn VerticalController>,
    residents: Vec<Resident>,
    grants: Vec<Grant>,
    changed: bool,
}

impl DeviceTokens {
    fn capacity(&self) -> u64 {
        self.fixed_capacity
            .unwrap_or_else(|| self.learned_capacity.max(COST_UNITS_PER_WAVE as f64) as u64)
    }

    fn states(&self, now_ns: u64) -> Vec<ResidentState> {
        self.residents
            .iter()
            .map(|r| ResidentState {
                id: r.key,
                kind: r.kind,
                sm_request: r.quota.request,
                sm_limit: r.quota.limit,
                time_quota: 1.0,
                busy: r.busy,
                queue: queue_state(r.channel.counters(), now_ns),
            })
            .collect()
    }

    /// Tells the controller the residents changed; returns their states.
    fn resync(&mut self, now_ns: u64) -> Vec<ResidentState> {
        let states = self.states(now_ns);
        self.grants.resize(states.len(), Grant::spatial(0.0, 0.0));
        self.controller.on_event(
            now_ns,
            VerticalEvent::ResidentsChanged,
            &states,
            &mut self.grants,
        );
        self.changed = false;
        states
    }

    fn tick(&mut self, now_ns: u64, window_ns: u64) {
        if self.changed {
            self.resync(now_ns);
        }
        let mut total = 0u64;
        let mut events = Vec::new();
        for (index, r) in self.residents.iter_mut().enumerate() {
            if let Some(meter) = r.meter.as_mut() {
                let counters = r.channel.counters();
                let (used, held) = meter.sample(&r.id);
                counters.cost_launched.fetch_add(used, Relaxed);
                counters.launches_delayed.fetch_add(held.periods, Relaxed);
                counters.delay_ns.fetch_add(held.time_ns, Relaxed);
            }
            let cost = r
                .channel
                .counters()
                .cost_launched
                .load(std::sync::atomic::Ordering::Relaxed);
            r.usage = cost.wrapping_sub(r.last_cost);
            r.last_cost = cost;
            let alpha = (window_ns as f64 / USAGE_AVERAGE_NS).min(1.0);
            r.usage_avg += (r.usage as f64 - r.usage_avg) * alpha;
            total = total.saturating_add(r.usage);
            // Busy: it used the device in the window, or it has a batch in hand (a worker publishes its oldest
            // request from the batch's start until it is answered). A CPU worker charges a batch's time at its
            // start and its end, so usage alone would read a 50 ms batch as two one-window bursts, which RCKM
            // ignores; the simulator counts the whole batch as busy.
            let in_hand = r.channel.counters().oldest_queued_ns.load(Relaxed) != 0;
            let busy = r.usage > 0 || in_hand;
            if busy && !r.busy {
                r.busy_since_ns = now_ns.saturating_sub(window_ns);
                r.busy_seen_ns = now_ns;
                events.push(VerticalEvent::BusyStart { index });
            } else if !busy && r.busy {
                events.push(VerticalEvent::BusyEnd {
                    index,
                    busy_ns: now_ns
                        .saturating_sub(r.busy_since_ns)
                        .saturating_sub(window_ns),
                });
            }
            r.busy = busy;
        }
        if self.fixed_capacity.is_none() {
            self.learned_capacity = (self.learned_capacity * CAPACITY_DECAY).max(total as f64);
        }
        let states = self.states(now_ns);
        for event in events
            .into_iter()
            .chain(std::iter::once(VerticalEvent::Timer))
        {
            self.controller
                .on_event(now_ns, event, &states, &mut self.grants);
        }
        self.write_budgets(now_ns, &states);
    }

    /// Divides the device with the grant → share rule and writes each resident's budget for the next window;
    /// `states` are the residents' states as the controller saw them.
    fn write_budgets(&mut self, now_ns: u64, states: &[ResidentState]) {
        let mut shares = vec![0.0; self.residents.len()];
        let mut claims = vec![false; self.residents.len()];
        device_shares(
            self.controller.as_ref(),
            states,
            &self.grants,
            &mut shares,
            &mut claims,
        );
        let capacity = self.capacity();
        for (r, share) in self.residents.iter_mut().zip(shares) {
            r.share = share;
            let budget = if r.share >= WHOLE_DEVICE {
                UNLIMITED
            } else {
                (r.share * capacity as f64).round() as u64
            };
            if budget != r.budget {
                r.budget = budget;
                r.channel.set_budget(budget);
            }
            if let Some(meter) = r.meter.as_mut() {
                meter.hold(&r.id, budget, self.window_ns);
            }
            r.channel.record_tick(now_ns);
        }
    }
}

/// What an instance's channel shows of its request queue at `now_ns` (monotonic ns): all zero when the
/// instance publishes nothing (an interposed process, a trainer, an older worker).
fn queue_state(counters: &CounterPage, now_ns: u64) -> QueueState {
    let oldest = counters.oldest_queued_ns.load(Relaxed);
    QueueState {
        queued: u32::try_from(counters.queue_depth.load(Relaxed)).unwrap_or(u32::MAX),
        oldest_wait_ns: if oldest == 0 {
            0
        } else {
            now_ns.saturating_sub(oldest)
        },
        slo_ns: counters.slo_ns.load(Relaxed),
    }
}

fn budgeting(r: &Resident) -> Budgeting {
    Budgeting {
        share: r.share,
        budget: (r.budget != UNLIMITED).then_some(r.budget),
        usage_last_window: r.usage,
        usage_avg_per_window: r.usage_avg,
        busy: r.busy,
        busy_since_ns: r.busy.then_some(r.busy_seen_ns),
    }
}

/// The token manager of every device on the node.
pub struct TokenManager {
    window_ns: u64,
    devices: Vec<DeviceTokens>,
    next_key: u64,
}

impl TokenManager {
    /// A manager for `devices`, each with its own vertical controller from `policy`, whose windows are set to
    /// `window_ns`.
    pub fn new(devices: &[Device], window_ns: u64, policy: &Policy) -> Result<Self, TokenError> {
        let mut parameters = policy.parameters().clone();
        parameters.rckm.window_ms = window_ns as f64 / 1e6;
        parameters.slack.window_ms = window_ns as f64 / 1e6;
        let policy = Policy::new(policy.name(), parameters)?;
        Ok(Self {
            window_ns,
            devices: devices
                .iter()
                .map(|d| DeviceTokens {
                    uuid: d.uuid.clone(),
                    window_ns,
                    kind: d.kind,
                    fixed_capacity: d.capacity_per_window,
                    learned_capacity: 0.0,
                    controller: policy.vertical(),
                    residents: Vec::new(),
                    grants: Vec::new(),
                    changed: false,
                })
                .collect(),
            next_key: 1,
        })
    }

    fn device_mut(&mut self, uuid: &str) -> Result<&mut DeviceTokens, TokenError> {
        self.devices
            .iter_mut()
            .find(|d| d.uuid == uuid)
            .ok_or_else(|| TokenError::UnknownDevice(uuid.to_string()))
    }

    /// The budget a new instance starts with: its limit's share of the device (or unlimited); the next tick
    /// replaces it with its share.
    pub fn initial_budget(&self, device: &str, quota: &Quota) -> u64 {
        let Some(d) = self.devices.iter().find(|d| d.uuid == device) else {
            return UNLIMITED;
        };
        if quota.limit >= WHOLE_DEVICE {
            return UNLIMITED;
        }
        (quota.limit * d.capacity() as f64).round() as u64
    }

    /// Starts budgeting an instance; its budgets are written from the next tick on.
    pub fn add(
        &mut self,
        device: &str,
        id: &str,
        kind: InstanceKind,
        quota: Quota,
        channel: AgentChannel,
    ) -> Result<(), TokenError> {
        if self
            .devices
            .iter()
            .any(|d| d.residents.iter().any(|r| r.id == id))
        {
            return Err(TokenError::Duplicate(id.to_string()));
        }
        let key = self.next_key;
        self.next_key += 1;
        let d = self.device_mut(device)?;
        let last_cost = channel
            .counters()
            .cost_launched
            .load(std::sync::atomic::Ordering::Relaxed);
        let budget = channel
            .control()
            .budget_per_window
            .load(std::sync::atomic::Ordering::Relaxed);
        channel.set_mem_cap(quota.memory.unwrap_or(UNLIMITED));
        d.residents.push(Resident {
            key,
            id: id.to_string(),
            kind,
            quota,
            channel,
            last_cost,
            usage: 0,
            usage_avg: 0.0,
            busy: false,
            busy_since_ns: 0,
            busy_seen_ns: 0,
            share: 0.0,
            budget,
            meter: None,
        });
        d.changed = true;
        Ok(())
    }

    /// Meters instance `id` with its CPU cgroup from now on (it does not charge its channel itself): its
    /// current budget becomes the group's limit at once, and each window charges the channel with the CPU
    /// time the group used. Returns whether the instance is managed.
    pub fn meter(&mut self, id: &str, group: CpuGroup) -> Result<bool, CgroupError> {
        let window_ns = self.window_ns;
        let Some(r) = self
            .devices
            .iter_mut()
            .flat_map(|d| d.residents.iter_mut())
            .find(|r| r.id == id)
        else {
            return Ok(false);
        };
        let limit = limit_for(r.budget, window_ns);
        group.set_limit(limit)?;
        r.meter = Some(Meter {
            last_usage_ns: group.usage_ns()?,
            last_throttled: group.throttled()?,
            group,
            limit: Ok(limit),
            reported: false,
        });
        Ok(true)
    }

    /// Stops budgeting an instance and hands back its channel.
    pub fn remove(&mut self, id: &str) -> Option<AgentChannel> {
        for d in &mut self.devices {
            if let Some(index) = d.residents.iter().position(|r| r.id == id) {
                d.changed = true;
                d.grants.truncate(0);
                return Some(d.residents.remove(index).channel);
            }
        }
        None
    }

    /// Changes an instance's quota and rewrites the device's budgets at once (an explicit vertical action).
    pub fn set_quota(&mut self, id: &str, quota: Quota, now_ns: u64) -> bool {
        for d in &mut self.devices {
            if let Some(r) = d.residents.iter_mut().find(|r| r.id == id) {
                r.quota = quota;
                r.channel.set_mem_cap(quota.memory.unwrap_or(UNLIMITED));
                let states = d.resync(now_ns);
                d.write_budgets(now_ns, &states);
                return true;
            }
        }
        false
    }

    /// Σ requests of the instances on `device`, optionally leaving one instance out.
    pub fn requested(&self, device: &str, except: Option<&str>) -> f64 {
        self.devices
            .iter()
            .filter(|d| d.uuid == device)
            .flat_map(|d| &d.residents)
            .filter(|r| Some(r.id.as_str()) != except)
            .map(|r| r.quota.request)
            .sum()
    }

    /// One window's work for every device.
    pub fn tick(&mut self, now_ns: u64) {
        let window_ns = self.window_ns;
        for d in &mut self.devices {
            d.tick(now_ns, window_ns);
        }
    }

    /// Number of instances managed.
    pub fn len(&self) -> usize {
        self.devices.iter().map(|d| d.residents.len()).sum()
    }

    /// Whether no instance is managed.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// One instance's budgeting state.
    pub fn resident(&self, id: &str) -> Option<Budgeting> {
        self.devices
            .iter()
            .flat_map(|d| &d.residents)
            .find(|r| r.id == id)
            .map(budgeting)
    }

    /// Every device's budgeting state.
    pub fn devices(&self) -> Vec<DeviceBudget> {
        self.devices
            .iter()
            .map(|d| DeviceBudget {
                device: d.uuid.clone(),
                controller: d.controller.name().to_string(),
                capacity_per_window: d.capacity(),
                capacity_learned: d.fixed_capacity.is_none(),
                requested: d.residents.iter().map(|r| r.quota.request).sum(),
                training_budget: d.controller.training_budget().unwrap_or(1.0),
                adjustments: d.controller.adjustments(),
            })
            .collect()
    }

    /// The kind of `device`, if known.
    pub fn kind(&self, device: &str) -> Option<DeviceKind> {
        self.devices
            .iter()
            .find(|d| d.uuid == device)
            .map(|d| d.kind)
    }

    /// The channel snapshot of instance `id`, for metrics.
    pub fn snapshot(&self, id: &str) -> Option<dilu_quota::Snapshot> {
        self.devices
            .iter()
            .flat_map(|d| &d.residents)
            .find(|r| r.id == id)
            .map(|r| r.channel.snapshot())
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::Ordering::Relaxed;

    use dilu_quota::{ChannelSpec, InstanceChannel};

    use super::*;
    use crate::config::AgentConfig;
    use crate::device::discover;

    const WINDOW_NS: u64 = 5_000_000;

    /// A manager for one CPU core with one resident `id` of `class`; returns the manager, the instance's end of
    /// its channel, and the directory that holds the channel.
    fn one_resident(
        id: &str,
        kind: InstanceKind,
    ) -> (TokenManager, InstanceChannel, tempfile::TempDir) {
        let dir = tempfile::tempdir().unwrap();
        let mut config = AgentConfig::new(dir.path().to_path_buf());
        config.discover_gpus = false;
        config.cpu_cores = Some(1.0);
        let (devices, _) = discover(&config);
        let device = devices[0].uuid.clone();
        let mut manager = TokenManager::new(&devices, WINDOW_NS, &config.policy).unwrap();
        let path = dir.path().join(format!("{id}.quota"));
        let channel = AgentChannel::create(&path, &ChannelSpec::default(), 0o600).unwrap();
        let quota = Quota {
            request: 0.2,
            limit: 0.4,
            memory: None,
        };
        manager.add(&device, id, kind, quota, channel).unwrap();
        let instance = InstanceChannel::open(&path).unwrap();
        (manager, instance, dir)
    }

    #[test]
    fn a_metered_resident_is_charged_its_groups_cpu_time_and_its_budget_becomes_the_groups_limit() {
        let (mut manager, instance, dir) = one_resident("proc", InstanceKind::Training);
        // A fake cgroup v1 tree: the kernel's files, written by hand.
        let root = dir.path().join("cgroup");
        std::fs::create_dir(&root).unwrap();
        let hierarchy = crate::cgroup::Hierarchy::V1 {
            cpu: root.clone(),
            cpuacct: root.clone(),
        };
        let group = crate::cgroup::CpuCgroups::open(hierarchy, "a")
            .unwrap()
            .group("proc")
            .unwrap();
        let usage = group.path().join("cpuacct.usage");
        std::fs::write(&usage, "7000000").unwrap();
        let stat = group.path().join("cpu.stat");
        std::fs::write(
            &stat,
            "nr_periods 10\nnr_throttled 2\nthrottled_time 900000\n",
        )
        .unwrap();
        assert!(manager.meter("proc", group.clone()).unwrap());
        assert!(!manager.meter("nobody", group.clone()).unwrap());
        let counters = instance.counters();
        manager.tick(WINDOW_NS);
        // Nothing used since it was metered: idle, nothing charged.
        assert_eq!(counters.cost_launched.load(Relaxed), 0);
        assert!(!manager.resident("proc").unwrap().busy);
        std::fs::write(&usage, "8500000").unwrap();
        std::fs::write(
            &stat,
            "nr_periods 12\nnr_throttled 3\nthrottled_time 2900000\n",
        )
        .unwrap();
        manager.tick(2 * WINDOW_NS);
        assert_eq!(counters.cost_launched.load(Relaxed), 1_500_000);
        // CFS holding it back counts as waiting for budget does for a runtime that charges itself.
        assert_eq!(counters.launches_delayed.load(Relaxed), 1);
        assert_eq!(counters.delay_ns.load(Relaxed), 2_000_000);
        let view = manager.resident("proc").unwrap();
        assert!(view.busy);
        assert_eq!(view.usage_last_window, 1_500_000);
        let budget = view.budget.unwrap();
        assert_eq!(
            group.limit().unwrap(),
            Some(CfsLimit::per_window(budget, WINDOW_NS))
        );
        // The whole device: no limit at all.
        manager.set_quota(
            "proc",
            Quota {
                request: 1.0,
                limit: 1.0,
                memory: None,
            },
            3 * WINDOW_NS,
        );
        assert_eq!(manager.resident("proc").unwrap().budget, None);
        assert_eq!(group.limit().unwrap(), None);
        manager.set_quota(
            "proc",
            Quota {
                request: 0.3,
                limit: 0.3,
                memory: None,
            },
            3 * WINDOW_NS,
        );
        let limit = group.limit().unwrap();
        assert!(limit.is_some());
        // Made again (an empty group removed while its instance waited to restart): fresh counters, no
        // limit. The next window notices and writes the limit again.
        std::fs::write(&usage, "1000").unwrap();
        std::fs::write(&stat, "nr_periods 0\nnr_throttled 0\nthrottled_time 0\n").unwrap();
        std::fs::write(group.path().join("cpu.cfs_quota_us"), "-1").unwrap();
        let charged = counters.cost_launched.load(Relaxed);
        manager.tick(4 * WINDOW_NS);
        assert_eq!(counters.cost_launched.load(Relaxed), charged + 1000);
        assert_eq!(group.limit().unwrap(), limit);
        // A group that went away costs a note, not the tick.
        std::fs::remove_file(&usage).unwrap();
        manager.tick(5 * WINDOW_NS);
        assert_eq!(counters.cost_launched.load(Relaxed), charged + 1000);
    }

    #[test]
    fn busy_since_is_the_tick_that_counted_the_burst() {
        let (mut manager, instance, _dir) = one_resident("i", InstanceKind::Inference);
        let work = |units| instance.counters().cost_launched.fetch_add(units, Relaxed);
        manager.tick(WINDOW_NS);
        assert_eq!(manager.resident("i").unwrap().busy_since_ns, None);
        work(1_000);
        manager.tick(2 * WINDOW_NS);
        for tick in 3..6 {
            work(1_000);
            manager.tick(tick * WINDOW_NS);
            let view = manager.resident("i").unwrap();
            assert!(view.busy);
            assert_eq!(view.busy_since_ns, Some(2 * WINDOW_NS), "tick {tick}");
        }
        manager.tick(6 * WINDOW_NS);
        assert_eq!(manager.resident("i").unwrap().busy_since_ns, None);
        work(1_000);
        manager.tick(7 * WINDOW_NS);
        assert_eq!(
            manager.resident("i").unwrap().busy_since_ns,
            Some(7 * WINDOW_NS),
            "a new burst is counted anew"
        );
    }

    #[test]
    fn a_batch_in_hand_counts_as_busy_between_its_two_charges() {
        // A CPU worker charges half a batch's expected time when it starts and the rest when it ends, and
        // publishes its oldest request in between: the whole batch reads as one burst.
        let (mut manager, instance, _dir) = one_resident("i", InstanceKind::Inference);
        let c = instance.counters();
        c.cost_launched.fetch_add(1_000, Relaxed);
        c.oldest_queued_ns.store(1, Relaxed);
        manager.tick(WINDOW_NS);
        for tick in 2..10 {
            manager.tick(tick * WINDOW_NS);
            let view = manager.resident("i").unwrap();
            assert!(view.busy, "tick {tick}: no usage, but a batch in hand");
            assert_eq!(view.busy_since_ns, Some(WINDOW_NS));
        }
        c.cost_launched.fetch_add(1_000, Relaxed);
        c.oldest_queued_ns.store(0, Relaxed);
        manager.tick(10 * WINDOW_NS);
        assert!(manager.resident("i").unwrap().busy, "the closing charge");
        manager.tick(11 * WINDOW_NS);
        assert!(!manager.resident("i").unwrap().busy, "answered and idle");
    }

    #[test]
    fn smoothed_usage_follows_the_mean_while_one_window_jumps() {
        let (mut manager, instance, _dir) = one_resident("t", InstanceKind::Training);
        // A work unit of 3 ms charged whole every other window: 0.3 of a 5 ms core on average, but 0.6 in the
        // windows it lands in.
        let mut now = 0;
        for round in 0..2_000u64 {
            if round % 2 == 0 {
                instance
                    .counters()
                    .cost_launched
                    .fetch_add(3_000_000, Relaxed);
            }
            now += WINDOW_NS;
            manager.tick(now);
        }
        let view = manager.resident("t").unwrap();
        let capacity = manager.devices()[0].capacity_per_window as f64;
        assert_eq!(
            capacity, WINDOW_NS as f64,
            "one core, in nanoseconds per window"
        );
        let mean = view.usage_avg_per_window / capacity;
        assert!((mean - 0.3).abs() < 0.01, "smoothed usage {mean}");
        // The last window (an odd round) saw nothing; the one before saw 0.6.
        assert_eq!(view.usage_last_window, 0);
    }

    /// A `dilu-slo` manager for one CPU core with an inference instance (request 0.2, limit 0.4) and a training
    /// instance (request 0.5, limit 1.0); returns the manager, the inference instance's end of its channel, and
    /// the directory holding the channels.
    fn slo_pair() -> (TokenManager, InstanceChannel, tempfile::TempDir) {
        let dir = tempfile::tempdir().unwrap();
        let mut config = AgentConfig::new(dir.path().to_path_buf());
        config.discover_gpus = false;
        config.cpu_cores = Some(1.0);
        let (devices, _) = discover(&config);
        let device = devices[0].uuid.clone();
        let policy = Policy::named(dilu_core::policy::PolicyName::DiluSlo);
        let mut manager = TokenManager::new(&devices, WINDOW_NS, &policy).unwrap();
        let open = |id: &str| {
            let path = dir.path().join(format!("{id}.quota"));
            (
                AgentChannel::create(&path, &ChannelSpec::default(), 0o600).unwrap(),
                path,
            )
        };
        let (inference, path) = open("inf");
        let quota = |request, limit| Quota {
            request,
            limit,
            memory: None,
        };
        manager
            .add(
                &device,
                "inf",
                InstanceKind::Inference,
                quota(0.2, 0.4),
                inference,
            )
            .unwrap();
        let (training, _) = open("train");
        manager
            .add(
                &device,
                "train",
                InstanceKind::Training,
                quota(0.5, 1.0),
                training,
            )
            .unwrap();
        let instance = InstanceChannel::open(&path).unwrap();
        (manager, instance, dir)
    }

    const MS: u64 = 1_000_000;

    #[test]
    fn the_queue_signal_moves_sm_time_from_training_to_inference_before_the_slo() {
        let (mut manager, inf, _dir) = slo_pair();
        assert_eq!(manager.devices()[0].controller, "slack");
        let c = inf.counters();
        c.slo_ns.store(100 * MS, Relaxed);
        // Every window both run (training launches too); the inference queue is what changes.
        let window = |manager: &mut TokenManager, now_ms: u64, depth: u64, oldest_ms: u64| {
            c.cost_launched.fetch_add(1_000, Relaxed);
            c.queue_depth.store(depth, Relaxed);
            c.oldest_queued_ns.store(oldest_ms * MS, Relaxed);
            manager.tick(now_ms * MS);
            let share = |id| manager.resident(id).unwrap().share;
            (share("inf"), share("train"))
        };
        // Calm (oldest wait 0..20 ms of a 100 ms SLO): guarantees 0.2 + 0.5, the rest split by excess demand.
        for now in [5, 10, 15, 20, 25] {
            let (i, t) = window(&mut manager, now, 3, 5);
            assert!(
                (i - 0.2 - 0.3 * 2.0 / 7.0).abs() < 1e-9,
                "{now} ms: inf {i}"
            );
            assert!(
                (t - 0.5 - 0.3 * 5.0 / 7.0).abs() < 1e-9,
                "{now} ms: train {t}"
            );
        }
        // The oldest request has waited 25 ms: inference gets its limit, training its 0.125 floor plus the rest.
        let (i, t) = window(&mut manager, 30, 3, 5);
        assert!(
            (i - 0.4).abs() < 1e-9 && (t - 0.6).abs() < 1e-9,
            "inf {i}, train {t}"
        );
        // 10 ms is still at release_at × SLO: stays urgent; 5 ms releases it.
        let (i, _) = window(&mut manager, 35, 1, 25);
        assert!((i - 0.4).abs() < 1e-9);
        let (i, t) = window(&mut manager, 40, 1, 35);
        assert!(
            (i - 0.2 - 0.3 * 2.0 / 7.0).abs() < 1e-9 && (t - 0.5 - 0.3 * 5.0 / 7.0).abs() < 1e-9
        );
    }

    #[test]
    fn without_a_queue_signal_slack_falls_back_to_how_long_inference_stays_busy() {
        let (mut manager, inf, _dir) = slo_pair();
        let c = inf.counters();
        // An interposed process or an older worker: the queue fields stay 0.
        let mut shares = Vec::new();
        for now in 1..=6 {
            c.cost_launched.fetch_add(1_000, Relaxed);
            manager.tick(now * WINDOW_NS);
            shares.push(manager.resident("inf").unwrap().share);
        }
        let calm = 0.2 + 0.3 * 2.0 / 7.0;
        // Busy from the window before the 5 ms tick: over two windows by the 20 ms tick.
        assert!(
            shares[..3].iter().all(|s| (s - calm).abs() < 1e-9),
            "{shares:?}"
        );
        assert!(
            shares[3..].iter().all(|s| (s - 0.4).abs() < 1e-9),
            "{shares:?}"
        );
    }
}
