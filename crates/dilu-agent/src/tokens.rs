//! The per-device token manager: every window it reads each instance's counters from its quota channel,
//! runs the vertical controller (`Rckm` from dilu-core, the code the simulator runs), arbitrates the device
//! (requests guaranteed first, the rest by demand), and writes each instance's budget for the next window.
//!
//! How shares become budgets: an instance that claims the device gets its arbitrated share; one that does
//! not (idle inference after RCKM released the device) gets its grant, capped by its limit, so it can start at
//! once (the next window's arbitration then makes room). Training always claims; inference claims while busy
//! and until RCKM releases the device after its idle period, so training recovers only then (`dilu.md` §5). A share
//! of the whole device is written as "unlimited". A device's capacity in cost units per window is exact for the
//! CPU device (cores × window) and declared or learned for GPUs: learned = the highest total usage seen in a
//! window, decaying slowly, at least one full wave.

use dilu_core::scaling::rckm::{Rckm, RckmConfig};
use dilu_core::scaling::vertical::{
    ControllerConfigError, Grant, ResidentState, VerticalController, VerticalEvent, arbitrate,
};
use dilu_quota::{AgentChannel, COST_UNITS_PER_WAVE, DeviceKind, UNLIMITED};
use serde::Serialize;

use crate::device::Device;
use crate::instance::{PriorityClass, Quota};

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
    Config(#[from] ControllerConfigError),
}

/// One instance as the token manager sees it.
struct Resident {
    key: u64,
    id: String,
    class: PriorityClass,
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
}

/// A device's residents, controller and capacity.
struct DeviceTokens {
    uuid: String,
    kind: DeviceKind,
    fixed_capacity: Option<u64>,
    learned_capacity: f64,
    controller: Rckm,
    residents: Vec<Resident>,
    grants: Vec<Grant>,
    changed: bool,
}

/// What the API and metrics show of one instance.
#[derive(Debug, Clone, Serialize)]
pub struct ResidentView {
    /// Instance id.
    pub id: String,
    /// Device UUID.
    pub device: String,
    /// Priority class.
    pub class: PriorityClass,
    /// Its quota.
    pub quota: Quota,
    /// Share of the device it may use this window.
    pub share: f64,
    /// Budget written for this window (cost units; `None` = unlimited).
    pub budget: Option<u64>,
    /// Cost used in the last window.
    pub usage_last_window: u64,
    /// Cost used per window, averaged exponentially over about a second: what the instance really draws.
    pub usage_avg_per_window: f64,
    /// Whether it used the device in the last window.
    pub busy: bool,
    /// While busy: when the token manager first counted this burst and rewrote the device's budgets for it, on
    /// the node's `CLOCK_MONOTONIC` in nanoseconds, so a client on the node can time the vertical reaction to its
    /// own requests without the delay of polling. `None` while idle.
    pub busy_since_ns: Option<u64>,
}

/// What the API shows of one device's budgeting.
#[derive(Debug, Clone, Serialize)]
pub struct DeviceBudgetView {
    /// Device UUID.
    pub device: String,
    /// Capacity in cost units per window used for budgets.
    pub capacity_per_window: u64,
    /// Whether the capacity is learned from usage.
    pub capacity_learned: bool,
    /// Σ requests of its instances.
    pub requested: f64,
    /// RCKM's training budget multiplier.
    pub training_budget: f64,
    /// RCKM adjustments so far.
    pub adjustments: u64,
}

impl DeviceTokens {
    fn capacity(&self) -> u64 {
        self.fixed_capacity
            .unwrap_or_else(|| self.learned_capacity.max(COST_UNITS_PER_WAVE as f64) as u64)
    }

    fn states(&self) -> Vec<ResidentState> {
        self.residents
            .iter()
            .map(|r| ResidentState {
                id: r.key,
                class: r.class.resident_class(),
                sm_request: r.quota.request,
                sm_limit: r.quota.limit,
                time_quota: 1.0,
                busy: r.busy,
            })
            .collect()
    }

    fn resync(&mut self, now_ns: u64) {
        let states = self.states();
        self.grants.resize(states.len(), Grant::spatial(0.0, 0.0));
        self.controller.on_event(
            now_ns,
            VerticalEvent::ResidentsChanged,
            &states,
            &mut self.grants,
        );
        self.changed = false;
    }

    fn tick(&mut self, now_ns: u64, window_ns: u64) {
        if self.changed {
            self.resync(now_ns);
        }
        let mut total = 0u64;
        let mut events = Vec::new();
        for (index, r) in self.residents.iter_mut().enumerate() {
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
            let busy = r.usage > 0;
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
        let states = self.states();
        for event in events
            .into_iter()
            .chain(std::iter::once(VerticalEvent::Timer))
        {
            self.controller
                .on_event(now_ns, event, &states, &mut self.grants);
        }
        self.write_budgets(now_ns);
    }

    /// Arbitrates and writes each resident's budget for the next window.
    fn write_budgets(&mut self, now_ns: u64) {
        let clamped: Vec<Grant> = self
            .grants
            .iter()
            .zip(&self.residents)
            .map(|(g, r)| Grant {
                partition: g.partition.min(r.quota.limit),
                guaranteed: g.guaranteed.min(r.quota.limit),
                ..*g
            })
            .collect();
        // Who claims the device this window: training always (it is elastic and takes what it is given, so its
        // budget must not jump to its limit in a window it happened to be idle); inference while busy, and until
        // RCKM releases the device (inference idle for `idle_release_ms`), so training stays at
        // `request × budget` through short gaps and recovers only on release (`dilu.md` §5).
        let reserved = !self.controller.released();
        let busy: Vec<bool> = self
            .residents
            .iter()
            .map(|r| r.busy || r.class == PriorityClass::Training || reserved)
            .collect();
        let mut shares = vec![0.0; clamped.len()];
        arbitrate(self.controller.arbitration(), &clamped, &busy, &mut shares);
        let capacity = self.capacity();
        for (((r, grant), share), counted) in self
            .residents
            .iter_mut()
            .zip(&clamped)
            .zip(shares)
            .zip(busy)
        {
            r.share = if counted { share } else { grant.demand() };
            let budget = if r.share >= WHOLE_DEVICE {
                UNLIMITED
            } else {
                (r.share * capacity as f64).round() as u64
            };
            if budget != r.budget {
                r.budget = budget;
                r.channel.set_budget(budget);
            }
            r.channel.record_tick(now_ns);
        }
    }
}

fn resident_view(d: &DeviceTokens, r: &Resident) -> ResidentView {
    ResidentView {
        id: r.id.clone(),
        device: d.uuid.clone(),
        class: r.class,
        quota: r.quota,
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
    /// A manager for `devices`, each with its own RCKM controller.
    pub fn new(devices: &[Device], window_ns: u64, rckm: RckmConfig) -> Result<Self, TokenError> {
        let mut rckm = rckm;
        rckm.window_ms = window_ns as f64 / 1e6;
        rckm.validate()?;
        Ok(Self {
            window_ns,
            devices: devices
                .iter()
                .map(|d| DeviceTokens {
                    uuid: d.uuid.clone(),
                    kind: d.kind,
                    fixed_capacity: d.capacity_per_window,
                    learned_capacity: 0.0,
                    controller: Rckm::new(rckm),
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

    /// The budget a new instance starts with: its request's share of the device (or unlimited).
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
        class: PriorityClass,
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
        channel.set_mem_cap(quota.memory_bytes.unwrap_or(UNLIMITED));
        d.residents.push(Resident {
            key,
            id: id.to_string(),
            class,
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
        });
        d.changed = true;
        Ok(())
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
                r.channel
                    .set_mem_cap(quota.memory_bytes.unwrap_or(UNLIMITED));
                d.resync(now_ns);
                d.write_budgets(now_ns);
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

    /// Every instance's budgeting state.
    pub fn residents(&self) -> Vec<ResidentView> {
        self.devices
            .iter()
            .flat_map(|d| d.residents.iter().map(move |r| resident_view(d, r)))
            .collect()
    }

    /// One instance's budgeting state.
    pub fn resident(&self, id: &str) -> Option<ResidentView> {
        self.devices.iter().find_map(|d| {
            d.residents
                .iter()
                .find(|r| r.id == id)
                .map(|r| resident_view(d, r))
        })
    }

    /// Every device's budgeting state.
    pub fn devices(&self) -> Vec<DeviceBudgetView> {
        self.devices
            .iter()
            .map(|d| DeviceBudgetView {
                device: d.uuid.clone(),
                capacity_per_window: d.capacity(),
                capacity_learned: d.fixed_capacity.is_none(),
                requested: d.residents.iter().map(|r| r.quota.request).sum(),
                training_budget: d.controller.budget(),
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
        class: PriorityClass,
    ) -> (TokenManager, InstanceChannel, tempfile::TempDir) {
        let dir = tempfile::tempdir().unwrap();
        let mut config = AgentConfig::new(dir.path().to_path_buf());
        config.discover_gpus = false;
        config.cpu_cores = Some(1.0);
        let (devices, _) = discover(&config);
        let device = devices[0].uuid.clone();
        let mut manager = TokenManager::new(&devices, WINDOW_NS, config.rckm).unwrap();
        let path = dir.path().join(format!("{id}.quota"));
        let channel = AgentChannel::create(&path, &ChannelSpec::default(), 0o600).unwrap();
        let quota = Quota {
            request: 0.2,
            limit: 0.4,
            memory_bytes: None,
        };
        manager.add(&device, id, class, quota, channel).unwrap();
        let instance = InstanceChannel::open(&path).unwrap();
        (manager, instance, dir)
    }

    #[test]
    fn busy_since_is_the_tick_that_counted_the_burst() {
        let (mut manager, instance, _dir) = one_resident("i", PriorityClass::Inference);
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
    fn smoothed_usage_follows_the_mean_while_one_window_jumps() {
        let (mut manager, instance, _dir) = one_resident("t", PriorityClass::Training);
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
}
