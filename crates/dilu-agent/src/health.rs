//! GPU health: what makes a device unhealthy ([`Tracker`]), and the watch that reads it from NVML
//! ([`watch_nvml`]).
//!
//! Two signals, the ones NVIDIA's Kubernetes device plugin and HAMi act on:
//!
//! - **critical Xid events** (`nvmlEventTypeXidCriticalError`, the driver's error reports). A few Xids
//!   report a fault of the application that ran, not of the GPU — 13 (graphics engine exception), 31 (GPU
//!   memory page fault), 43 (GPU stopped processing), 45 (preemptive cleanup), 68 (video processor
//!   exception), 109 (context switch timeout) — and are ignored by default, as NVIDIA's device plugin does
//!   ([`DEFAULT_IGNORED_XIDS`]). Any other marks the device [`Health::Failed`] until the agent restarts:
//!   such a GPU needs a reset (and usually the node a drain) before it can be trusted again;
//! - **reachability**: every `check_every` the watch asks NVML for each device by UUID. A device that does
//!   not answer (`NVML_ERROR_GPU_IS_LOST`: it fell off the bus) is [`Health::Unreachable`] while it lasts,
//!   and healthy again when it answers.
//!
//! An unhealthy device gets no new instances from the agent, is offered to the kubelet as `Unhealthy` (the
//! kubelet then leaves its shares out of the node's allocatable) and is shown in `GET /devices`.

use std::collections::{BTreeMap, BTreeSet};
use std::ffi::CString;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use dilu_core::sync::lock;
use serde::Serialize;

use crate::nvml::{
    Api, Device, EVENT_XID_CRITICAL, EventApi, EventData, EventSet, Library,
    NVML_ERROR_NOT_SUPPORTED, NVML_ERROR_TIMEOUT, NvmlError,
};

/// Xids that report the application's fault rather than the GPU's (see the module documentation).
pub const DEFAULT_IGNORED_XIDS: [u64; 6] = [13, 31, 43, 45, 68, 109];

/// How the health of GPUs is watched.
#[derive(Debug, Clone, PartialEq)]
pub struct HealthConfig {
    /// Whether NVML-discovered GPUs are watched at all.
    pub enabled: bool,
    /// Xids that do not make a device unhealthy.
    pub ignored_xids: BTreeSet<u64>,
    /// How often each device is checked for reachability.
    pub check_every: Duration,
}

impl Default for HealthConfig {
    fn default() -> Self {
        HealthConfig {
            enabled: true,
            ignored_xids: DEFAULT_IGNORED_XIDS.into_iter().collect(),
            check_every: Duration::from_secs(5),
        }
    }
}

/// A device's health.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "state", rename_all = "snake_case")]
pub enum Health {
    /// Usable.
    Healthy,
    /// The driver reported a critical Xid; unhealthy until the agent restarts.
    Failed {
        /// The first critical Xid seen.
        xid: u64,
    },
    /// NVML cannot reach the device; healthy again once it answers.
    Unreachable {
        /// NVML's answer.
        reason: String,
    },
}

impl Health {
    /// Whether the device may be given work.
    pub fn is_healthy(&self) -> bool {
        matches!(self, Health::Healthy)
    }

    /// Why it is unhealthy, in words; `None` when healthy.
    pub fn reason(&self) -> Option<String> {
        match self {
            Health::Healthy => None,
            Health::Failed { xid } => Some(format!(
                "critical Xid {xid} reported by the driver (reset the GPU, then restart the agent)"
            )),
            Health::Unreachable { reason } => Some(format!("NVML cannot reach it: {reason}")),
        }
    }
}

/// What the watch saw of one device.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Observation {
    /// A critical-Xid event.
    Xid(u64),
    /// The device did not answer (NVML's message).
    Unreachable(String),
    /// The device answered.
    Reachable,
}

/// A device whose health changed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HealthChange {
    /// Its UUID.
    pub uuid: String,
    /// Its health now.
    pub health: Health,
}

/// The health of a set of devices, changed by observations; pure, so the rules are tested without NVML.
#[derive(Debug, Clone)]
pub struct Tracker {
    ignored_xids: BTreeSet<u64>,
    devices: BTreeMap<String, Health>,
}

impl Tracker {
    /// Every device healthy.
    pub fn new<'a>(uuids: impl IntoIterator<Item = &'a str>, ignored_xids: BTreeSet<u64>) -> Self {
        Tracker {
            ignored_xids,
            devices: uuids
                .into_iter()
                .map(|u| (u.to_string(), Health::Healthy))
                .collect(),
        }
    }

    /// A device's health; `None` for a device it does not watch.
    pub fn health(&self, uuid: &str) -> Option<&Health> {
        self.devices.get(uuid)
    }

    /// Applies an observation; returns the change, if the device's health changed.
    pub fn observe(&mut self, uuid: &str, observation: Observation) -> Option<HealthChange> {
        let current = self.devices.get_mut(uuid)?;
        let next = match (&*current, observation) {
            (_, Observation::Xid(xid)) if self.ignored_xids.contains(&xid) => return None,
            (Health::Failed { .. }, _) => return None,
            (_, Observation::Xid(xid)) => Health::Failed { xid },
            (Health::Healthy, Observation::Unreachable(reason)) => Health::Unreachable { reason },
            (Health::Unreachable { .. }, Observation::Reachable) => Health::Healthy,
            _ => return None,
        };
        *current = next.clone();
        Some(HealthChange {
            uuid: uuid.to_string(),
            health: next,
        })
    }
}

/// Something told of every health change.
type Listener = Box<dyn Fn(&HealthChange) + Send + Sync>;

/// The health of a node's devices, written by the watch and read by the agent, its API and the device
/// plugin. A device it has not heard of is healthy (CPU devices, declared GPUs, an unwatched node).
#[derive(Default)]
pub struct HealthBoard {
    state: Mutex<BTreeMap<String, Health>>,
    listeners: Mutex<Vec<Listener>>,
}

impl HealthBoard {
    /// A device's health.
    pub fn health(&self, uuid: &str) -> Health {
        lock(&self.state)
            .get(uuid)
            .cloned()
            .unwrap_or(Health::Healthy)
    }

    /// Records a change and tells every listener.
    pub fn set(&self, change: HealthChange) {
        lock(&self.state).insert(change.uuid.clone(), change.health.clone());
        for listener in lock(&self.listeners).iter() {
            listener(&change);
        }
    }

    /// Calls `listener` now for every device that is unhealthy, then for every later change (a listener
    /// that comes late still learns the current state).
    pub fn subscribe(&self, listener: impl Fn(&HealthChange) + Send + Sync + 'static) {
        let mut listeners = lock(&self.listeners);
        let unhealthy: Vec<HealthChange> = lock(&self.state)
            .iter()
            .filter(|(_, health)| !health.is_healthy())
            .map(|(uuid, health)| HealthChange {
                uuid: uuid.clone(),
                health: health.clone(),
            })
            .collect();
        for change in &unhealthy {
            listener(change);
        }
        listeners.push(Box::new(listener));
    }
}

impl std::fmt::Debug for HealthBoard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HealthBoard")
            .field("state", &*lock(&self.state))
            .field("listeners", &lock(&self.listeners).len())
            .finish()
    }
}

/// How long one wait for an event lasts: the longest the watch takes to notice `stop`.
const WAIT_SLICE: Duration = Duration::from_millis(250);

/// Starts a thread that watches the health of the GPUs `uuids` through the NVML library `library` and calls
/// `on_change` with every change, until `stop` is set (noticed within a quarter of a second). Returns the
/// thread and notes from setting it up (devices that do not report Xid events are watched only for
/// reachability). A library that cannot be loaded, lacks a function the watch needs or fails to initialise
/// is an error, and no thread keeps running.
pub fn watch_nvml(
    library: &Path,
    uuids: Vec<String>,
    config: &HealthConfig,
    stop: Arc<AtomicBool>,
    on_change: impl FnMut(HealthChange) + Send + 'static,
) -> Result<(JoinHandle<()>, Vec<String>), NvmlError> {
    let (ready, setup) = std::sync::mpsc::channel();
    let library = library.to_path_buf();
    let config = config.clone();
    let thread = std::thread::Builder::new()
        .name("dilu-gpu-health".into())
        .spawn(move || {
            watch_thread(&library, uuids, &config, &stop, on_change, |notes| {
                let _ = ready.send(notes);
            })
        })
        .map_err(|e| NvmlError::HealthThread {
            reason: format!("starting it: {e}"),
        })?;
    match setup.recv() {
        Ok(Ok(notes)) => Ok((thread, notes)),
        Ok(Err(error)) => {
            let _ = thread.join();
            Err(error)
        }
        Err(_) => {
            let _ = thread.join();
            Err(NvmlError::HealthThread {
                reason: "it ended during setup".into(),
            })
        }
    }
}

/// The watch's body: opens NVML, sets up, reports the setup's outcome through `ready`, then loops.
fn watch_thread(
    library: &Path,
    uuids: Vec<String>,
    config: &HealthConfig,
    stop: &AtomicBool,
    on_change: impl FnMut(HealthChange),
    ready: impl FnOnce(Result<Vec<String>, NvmlError>),
) {
    let lib = match Library::open(library) {
        Ok(lib) => lib,
        Err(reason) => {
            return ready(Err(NvmlError::Load {
                library: library.to_path_buf(),
                reason,
            }));
        }
    };
    let (api, events) = match Api::resolve(&lib, library)
        .and_then(|api| Api::events(&lib, library).map(|events| (api, events)))
    {
        Ok(both) => both,
        Err(error) => return ready(Err(error)),
    };
    // SAFETY: `nvmlInit_v2` takes no arguments (nvml.h).
    let rc = unsafe { (api.init)() };
    if rc != 0 {
        return ready(Err(call_error(&api, "nvmlInit_v2", rc)));
    }
    let mut set: EventSet = std::ptr::null_mut();
    // SAFETY: `set` is a valid out pointer; NVML is initialised.
    let rc = unsafe { (events.set_create)(&mut set) };
    if rc != 0 {
        let error = call_error(&api, "nvmlEventSetCreate", rc);
        // SAFETY: init succeeded above; one shutdown is owed.
        unsafe { (api.shutdown)() };
        return ready(Err(error));
    }
    let mut watch = Watch {
        api: &api,
        events: &events,
        set,
        tracker: Tracker::new(
            uuids.iter().map(String::as_str),
            config.ignored_xids.clone(),
        ),
        uuids,
        registered: BTreeMap::new(),
        without_events: BTreeSet::new(),
        on_change,
    };
    let notes = watch.check();
    ready(Ok(notes));
    watch.run(config.check_every, stop);
    // SAFETY: the set came from nvmlEventSetCreate and is freed once; then the owed shutdown.
    unsafe {
        (events.set_free)(set);
        (api.shutdown)();
    }
}

fn call_error(api: &Api<'_>, call: &'static str, rc: i32) -> NvmlError {
    NvmlError::Call {
        call,
        device: None,
        code: rc as u32,
        message: api.error_string(rc),
    }
}

/// The watch's state on its thread.
struct Watch<'a, F> {
    api: &'a Api<'a>,
    events: &'a EventApi,
    set: EventSet,
    tracker: Tracker,
    uuids: Vec<String>,
    /// Devices registered for Xid events, with the handle events name them by.
    registered: BTreeMap<String, Device>,
    /// Devices that do not support Xid events (watched for reachability only).
    without_events: BTreeSet<String>,
    on_change: F,
}

impl<F: FnMut(HealthChange)> Watch<'_, F> {
    fn run(&mut self, check_every: Duration, stop: &AtomicBool) {
        let mut last_check = Instant::now();
        while !stop.load(Relaxed) {
            let check_now = if self.registered.is_empty() {
                std::thread::sleep(WAIT_SLICE);
                false
            } else {
                self.wait()
            };
            if check_now || last_check.elapsed() >= check_every {
                for note in self.check() {
                    eprintln!("dilu agent: GPU health: {note}");
                }
                last_check = Instant::now();
            }
        }
    }

    /// Waits one slice for an event and applies it; true when NVML answered with an error (a device lost),
    /// which calls for a reachability check now.
    fn wait(&mut self) -> bool {
        let mut data = EventData::default();
        // SAFETY: the set is live; `data` is an `nvmlEventData_t`.
        let rc = unsafe { (self.events.wait)(self.set, &mut data, WAIT_SLICE.as_millis() as u32) };
        match rc {
            0 => {
                if data.event_type & EVENT_XID_CRITICAL != 0 {
                    let uuid = self
                        .registered
                        .iter()
                        .find(|(_, handle)| **handle == data.device)
                        .map(|(uuid, _)| uuid.clone());
                    if let Some(uuid) = uuid {
                        self.apply(&uuid, Observation::Xid(data.event_data));
                    }
                }
                false
            }
            NVML_ERROR_TIMEOUT => false,
            _ => {
                // Not a busy loop if the error persists.
                std::thread::sleep(WAIT_SLICE / 5);
                true
            }
        }
    }

    /// Asks NVML for every device by UUID, registers the ones not registered yet for Xid events, and
    /// applies what it saw. Returns notes about devices that cannot report events.
    fn check(&mut self) -> Vec<String> {
        let mut notes = Vec::new();
        for uuid in self.uuids.clone() {
            let Ok(name) = CString::new(uuid.as_str()) else {
                continue;
            };
            let mut handle: Device = std::ptr::null_mut();
            // SAFETY: `name` is a NUL-terminated string, `handle` a valid out pointer.
            let rc = unsafe { (self.events.handle_by_uuid)(name.as_ptr(), &mut handle) };
            if rc != 0 {
                let reason = format!("NVML error {rc}: {}", self.api.error_string(rc));
                self.registered.remove(&uuid);
                self.apply(&uuid, Observation::Unreachable(reason));
                continue;
            }
            if !self.registered.contains_key(&uuid) && !self.without_events.contains(&uuid) {
                // SAFETY: `handle` was just returned by NVML; the set is live.
                let rc = unsafe { (self.events.register)(handle, EVENT_XID_CRITICAL, self.set) };
                match rc {
                    0 => {
                        self.registered.insert(uuid.clone(), handle);
                    }
                    NVML_ERROR_NOT_SUPPORTED => {
                        notes.push(format!(
                            "{uuid} does not report Xid events; only watched for falling off the bus"
                        ));
                        self.without_events.insert(uuid.clone());
                    }
                    _ => notes.push(format!(
                        "{uuid}: registering for Xid events failed (NVML error {rc}: {}); retried at the next check",
                        self.api.error_string(rc)
                    )),
                }
            }
            self.apply(&uuid, Observation::Reachable);
        }
        notes
    }

    fn apply(&mut self, uuid: &str, observation: Observation) {
        if let Some(change) = self.tracker.observe(uuid, observation) {
            (self.on_change)(change);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: &str = "GPU-aaaa";
    const B: &str = "GPU-bbbb";

    fn tracker() -> Tracker {
        Tracker::new([A, B], DEFAULT_IGNORED_XIDS.into_iter().collect())
    }

    #[test]
    fn application_xids_change_nothing_and_a_critical_one_fails_the_device_for_good() {
        let mut t = tracker();
        for xid in DEFAULT_IGNORED_XIDS {
            assert_eq!(t.observe(A, Observation::Xid(xid)), None, "Xid {xid}");
        }
        assert_eq!(t.health(A), Some(&Health::Healthy));
        let change = t.observe(A, Observation::Xid(79)).unwrap();
        assert_eq!(change.uuid, A);
        assert_eq!(change.health, Health::Failed { xid: 79 });
        // Sticky: neither answering again nor a later Xid changes it, and the other device is untouched.
        assert_eq!(t.observe(A, Observation::Reachable), None);
        assert_eq!(t.observe(A, Observation::Xid(48)), None);
        assert_eq!(t.health(A), Some(&Health::Failed { xid: 79 }));
        assert_eq!(t.health(B), Some(&Health::Healthy));
        assert!(change.health.reason().unwrap().contains("Xid 79"));
    }

    #[test]
    fn an_unreachable_device_is_healthy_again_when_it_answers() {
        let mut t = tracker();
        assert_eq!(t.observe(B, Observation::Reachable), None);
        let lost = t
            .observe(B, Observation::Unreachable("GPU is lost".into()))
            .unwrap();
        assert!(!lost.health.is_healthy());
        // Still unreachable: no second change.
        assert_eq!(
            t.observe(B, Observation::Unreachable("GPU is lost".into())),
            None
        );
        let back = t.observe(B, Observation::Reachable).unwrap();
        assert_eq!(back.health, Health::Healthy);
        // A critical Xid while unreachable still fails it.
        t.observe(B, Observation::Unreachable("x".into())).unwrap();
        assert_eq!(
            t.observe(B, Observation::Xid(62)).unwrap().health,
            Health::Failed { xid: 62 }
        );
    }

    #[test]
    fn devices_it_does_not_watch_are_ignored_and_ignored_xids_are_configurable() {
        let mut t = Tracker::new([A], BTreeSet::from([79]));
        assert_eq!(t.observe("GPU-other", Observation::Xid(48)), None);
        assert_eq!(t.health("GPU-other"), None);
        assert_eq!(t.observe(A, Observation::Xid(79)), None);
        assert_eq!(
            t.observe(A, Observation::Xid(13)).unwrap().health,
            Health::Failed { xid: 13 }
        );
    }

    #[test]
    fn the_board_tells_late_listeners_the_current_state_and_every_change() {
        let board = HealthBoard::default();
        assert_eq!(board.health(A), Health::Healthy);
        board.set(HealthChange {
            uuid: A.into(),
            health: Health::Failed { xid: 79 },
        });
        let seen = Arc::new(Mutex::new(Vec::new()));
        let sink = seen.clone();
        board.subscribe(move |c| sink.lock().unwrap().push(c.clone()));
        assert_eq!(seen.lock().unwrap().len(), 1, "told of A at once");
        board.set(HealthChange {
            uuid: B.into(),
            health: Health::Unreachable {
                reason: "lost".into(),
            },
        });
        board.set(HealthChange {
            uuid: B.into(),
            health: Health::Healthy,
        });
        let seen = seen.lock().unwrap();
        assert_eq!(seen.len(), 3);
        assert_eq!(seen[2].health, Health::Healthy);
        assert_eq!(board.health(A), Health::Failed { xid: 79 });
        assert_eq!(board.health(B), Health::Healthy);
    }

    #[test]
    fn a_library_that_cannot_be_loaded_or_lacks_the_event_functions_starts_no_watch() {
        let stop = Arc::new(AtomicBool::new(false));
        let missing = Path::new("/nonexistent/libnvidia-ml.so.1");
        let err = watch_nvml(
            missing,
            vec![A.into()],
            &HealthConfig::default(),
            stop.clone(),
            |_| {},
        )
        .unwrap_err();
        assert!(matches!(err, NvmlError::Load { .. }), "{err}");
        let err = watch_nvml(
            Path::new("libc.so.6"),
            vec![A.into()],
            &HealthConfig::default(),
            stop,
            |_| {},
        )
        .unwrap_err();
        assert!(
            matches!(
                err,
                NvmlError::MissingSymbol {
                    symbol: "nvmlInit_v2",
                    ..
                }
            ),
            "{err}"
        );
    }
}
