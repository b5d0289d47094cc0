//! The two views of a channel file: the agent's (creates it, writes control, reads counters) and the
//! instance's (control mapped read-only, counters read-write).

use std::fs::{File, OpenOptions};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering::{AcqRel, Relaxed, Release};

use crate::error::QuotaError;
use crate::layout::{
    COUNTERS_OFFSET, ControlPage, CounterPage, DEFAULT_WINDOW_NS, DeviceKind, FILE_SIZE, MAGIC,
    MAX_WINDOW_NS, MIN_WINDOW_NS, PAGE_SIZE, UNLIMITED, UUID_CAPACITY, VERSION, mode, state,
    uuid_str,
};
use crate::mapping::{Access, Mapping};

/// What a new channel starts with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChannelSpec {
    /// UUID of the budgeted device (`GPU-…`, `MIG-…` or the CPU device's id); empty = every device.
    pub device_uuid: String,
    /// GPU or CPU, which fixes the cost unit.
    pub device_kind: DeviceKind,
    /// Cost units per window ([`UNLIMITED`] for none, 0 pauses compute).
    pub budget_per_window: u64,
    /// Window length in nanoseconds, within [`MIN_WINDOW_NS`]..=[`MAX_WINDOW_NS`].
    pub window_ns: u64,
    /// Memory cap in bytes ([`UNLIMITED`] for none).
    pub mem_cap_bytes: u64,
    /// [`mode`] flags.
    pub mode: u32,
    /// `SMs × max threads per SM`, if known (0 = ask the driver).
    pub resident_threads: u64,
}

impl Default for ChannelSpec {
    fn default() -> Self {
        Self {
            device_uuid: String::new(),
            device_kind: DeviceKind::Gpu,
            budget_per_window: UNLIMITED,
            window_ns: DEFAULT_WINDOW_NS,
            mem_cap_bytes: UNLIMITED,
            mode: mode::ALL,
            resident_threads: 0,
        }
    }
}

impl ChannelSpec {
    /// Checks every field against the layout's rules.
    pub fn validate(&self) -> Result<(), QuotaError> {
        validate_uuid(&self.device_uuid)?;
        validate_window(self.window_ns)?;
        validate_mode(self.mode)
    }
}

fn validate_uuid(uuid: &str) -> Result<(), QuotaError> {
    if uuid.len() >= UUID_CAPACITY {
        return Err(QuotaError::InvalidParameter {
            field: "device_uuid",
            value: uuid.to_string(),
            rule: "must be shorter than 64 bytes",
        });
    }
    if !uuid.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(QuotaError::InvalidParameter {
            field: "device_uuid",
            value: uuid.to_string(),
            rule: "must be printable ASCII without spaces",
        });
    }
    Ok(())
}

fn validate_window(window_ns: u64) -> Result<(), QuotaError> {
    if !(MIN_WINDOW_NS..=MAX_WINDOW_NS).contains(&window_ns) {
        return Err(QuotaError::InvalidParameter {
            field: "window_ns",
            value: window_ns.to_string(),
            rule: "must be between 100 µs and 60 s",
        });
    }
    Ok(())
}

fn validate_mode(flags: u32) -> Result<(), QuotaError> {
    if flags & !mode::ALL != 0 {
        return Err(QuotaError::InvalidParameter {
            field: "mode",
            value: format!("{flags:#x}"),
            rule: "only the ENFORCE_COMPUTE, ENFORCE_MEMORY and VIRTUALIZE_MEMINFO bits are defined",
        });
    }
    Ok(())
}

/// Everything in a channel at one moment (each field read atomically, the set not as one transaction).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Snapshot {
    /// Budgeted device's UUID (empty = every device).
    pub device_uuid: String,
    /// The device kind, `None` if the file holds an unknown value.
    pub device_kind: Option<DeviceKind>,
    /// [`mode`] flags.
    pub mode: u32,
    /// Cost units per window.
    pub budget_per_window: u64,
    /// Window length as stored (instances apply [`crate::effective_window_ns`]).
    pub window_ns: u64,
    /// Control generation.
    pub epoch: u64,
    /// Memory cap in bytes.
    pub mem_cap_bytes: u64,
    /// Resident threads hint.
    pub resident_threads: u64,
    /// Agent's last tick (monotonic ns).
    pub agent_tick_ns: u64,
    /// Process id of the attached instance.
    pub attached_pid: u32,
    /// [`state`] of the attached runtime.
    pub state: u32,
    /// Cumulative cost launched.
    pub cost_launched: u64,
    /// Cumulative launches.
    pub launches: u64,
    /// Launches that waited for budget.
    pub launches_delayed: u64,
    /// Total waiting time in ns.
    pub delay_ns: u64,
    /// Bytes held now.
    pub bytes_allocated: u64,
    /// Most bytes held at once.
    pub bytes_peak: u64,
    /// Refused allocations.
    pub alloc_failures: u64,
    /// Last epoch the instance acted on.
    pub last_seen_epoch: u64,
}

impl Snapshot {
    /// Reads both pages field by field.
    pub fn read(control: &ControlPage, counters: &CounterPage) -> Self {
        Self {
            device_uuid: uuid_str(&control.device_uuid).to_string(),
            device_kind: DeviceKind::from_raw(control.device_kind.load(Relaxed)),
            mode: control.mode.load(Relaxed),
            budget_per_window: control.budget_per_window.load(Relaxed),
            window_ns: control.window_ns.load(Relaxed),
            epoch: control.epoch.load(Relaxed),
            mem_cap_bytes: control.mem_cap_bytes.load(Relaxed),
            resident_threads: control.resident_threads.load(Relaxed),
            agent_tick_ns: control.agent_tick_ns.load(Relaxed),
            attached_pid: counters.attached_pid.load(Relaxed),
            state: counters.state.load(Relaxed),
            cost_launched: counters.cost_launched.load(Relaxed),
            launches: counters.launches.load(Relaxed),
            launches_delayed: counters.launches_delayed.load(Relaxed),
            delay_ns: counters.delay_ns.load(Relaxed),
            bytes_allocated: counters.bytes_allocated.load(Relaxed),
            bytes_peak: counters.bytes_peak.load(Relaxed),
            alloc_failures: counters.alloc_failures.load(Relaxed),
            last_seen_epoch: counters.last_seen_epoch.load(Relaxed),
        }
    }
}

/// Opens `path` and checks its size; shared by both views.
fn open_checked(path: &Path, write: bool) -> Result<File, QuotaError> {
    let file = OpenOptions::new()
        .read(true)
        .write(write)
        .open(path)
        .map_err(|reason| QuotaError::Io {
            op: "open",
            path: path.to_path_buf(),
            reason,
        })?;
    let len = file
        .metadata()
        .map_err(|reason| QuotaError::Io {
            op: "stat",
            path: path.to_path_buf(),
            reason,
        })?
        .len();
    if len < FILE_SIZE as u64 {
        return Err(QuotaError::TooSmall {
            path: path.to_path_buf(),
            len,
            need: FILE_SIZE as u64,
        });
    }
    Ok(file)
}

/// Checks magic, version and layout size of a mapped control page.
fn validate_header(path: &Path, control: &ControlPage) -> Result<(), QuotaError> {
    let magic = control.magic.load(Relaxed);
    if magic != MAGIC {
        return Err(QuotaError::BadMagic {
            path: path.to_path_buf(),
            found: magic,
        });
    }
    let version = control.version.load(Relaxed);
    if version != VERSION {
        return Err(QuotaError::UnsupportedVersion {
            path: path.to_path_buf(),
            found: version,
            supported: VERSION,
        });
    }
    let layout_size = control.layout_size.load(Relaxed);
    if layout_size != FILE_SIZE as u32 {
        return Err(QuotaError::LayoutSize {
            path: path.to_path_buf(),
            found: layout_size,
            expected: FILE_SIZE as u32,
        });
    }
    Ok(())
}

/// The agent's view: maps the whole file read-write.
#[derive(Debug)]
pub struct AgentChannel {
    path: PathBuf,
    map: Mapping,
}

impl AgentChannel {
    /// Creates a channel at `path` with file permissions `permissions` (e.g. `0o600`; set exactly, whatever the
    /// process's umask, so `0o666` gives a channel any uid can open), atomically: the file is laid out under a
    /// temporary name and renamed into place, so a reader never sees a half-written header, nor a file whose
    /// permissions are not yet final. An existing file at `path` is replaced.
    pub fn create(path: &Path, spec: &ChannelSpec, permissions: u32) -> Result<Self, QuotaError> {
        spec.validate()?;
        let tmp = temporary_sibling(path);
        let io = |op: &'static str| {
            let tmp = tmp.clone();
            move |reason| QuotaError::Io {
                op,
                path: tmp,
                reason,
            }
        };
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .mode(permissions)
            .open(&tmp)
            .map_err(io("create"))?;
        let laid_out = (|| {
            file.set_permissions(std::fs::Permissions::from_mode(permissions))
                .map_err(io("chmod"))?;
            file.set_len(FILE_SIZE as u64).map_err(io("truncate"))?;
            let map = Mapping::new(&file, &tmp, 0, FILE_SIZE, Access::ReadWrite)?;
            let channel = Self {
                path: path.to_path_buf(),
                map,
            };
            channel.lay_out(spec);
            std::fs::rename(&tmp, path).map_err(|reason| QuotaError::Io {
                op: "rename",
                path: path.to_path_buf(),
                reason,
            })?;
            Ok(channel)
        })();
        if laid_out.is_err() {
            // Best effort: do not leave the half-made file behind; the original error is what matters.
            let _ = std::fs::remove_file(&tmp);
        }
        laid_out
    }

    /// Opens an existing channel (e.g. after an agent restart) and validates its header.
    pub fn open(path: &Path) -> Result<Self, QuotaError> {
        let file = open_checked(path, true)?;
        let map = Mapping::new(&file, path, 0, FILE_SIZE, Access::ReadWrite)?;
        let channel = Self {
            path: path.to_path_buf(),
            map,
        };
        validate_header(path, channel.control())?;
        Ok(channel)
    }

    fn lay_out(&self, spec: &ChannelSpec) {
        // SAFETY: the mapping is FILE_SIZE bytes, writable, and not yet visible to any other process; the
        // UUID is the only non-atomic field and is written here, before publication by rename.
        unsafe {
            let uuid = self
                .map
                .as_ptr()
                .cast_mut()
                .add(std::mem::offset_of!(ControlPage, device_uuid));
            std::ptr::copy_nonoverlapping(spec.device_uuid.as_ptr(), uuid, spec.device_uuid.len());
        }
        let control = self.control();
        control.version.store(VERSION, Relaxed);
        control.layout_size.store(FILE_SIZE as u32, Relaxed);
        control.device_kind.store(spec.device_kind as u32, Relaxed);
        control.mode.store(spec.mode, Relaxed);
        control
            .budget_per_window
            .store(spec.budget_per_window, Relaxed);
        control.window_ns.store(spec.window_ns, Relaxed);
        control.mem_cap_bytes.store(spec.mem_cap_bytes, Relaxed);
        control
            .resident_threads
            .store(spec.resident_threads, Relaxed);
        control.epoch.store(1, Relaxed);
        // The magic goes last, with release ordering, so a reader that sees it sees the rest.
        control.magic.store(MAGIC, Release);
    }

    /// The channel file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The control page.
    pub fn control(&self) -> &ControlPage {
        debug_assert!(self.map.len() >= PAGE_SIZE);
        // SAFETY: the mapping is at least one page, page-aligned, and ControlPage fits in a page; all its
        // mutable fields are atomics.
        unsafe { &*self.map.as_ptr().cast::<ControlPage>() }
    }

    /// The counter page.
    pub fn counters(&self) -> &CounterPage {
        debug_assert!(self.map.len() >= FILE_SIZE);
        // SAFETY: the mapping is FILE_SIZE bytes; the counter page starts at a page boundary inside it.
        unsafe { &*self.map.as_ptr().add(COUNTERS_OFFSET).cast::<CounterPage>() }
    }

    /// Sets the budget per window and publishes it (bumps the epoch).
    pub fn set_budget(&self, cost_units: u64) -> u64 {
        self.control().budget_per_window.store(cost_units, Relaxed);
        self.publish()
    }

    /// Sets the memory cap and publishes it.
    pub fn set_mem_cap(&self, bytes: u64) -> u64 {
        self.control().mem_cap_bytes.store(bytes, Relaxed);
        self.publish()
    }

    /// Sets the window length and publishes it.
    pub fn set_window_ns(&self, window_ns: u64) -> Result<u64, QuotaError> {
        validate_window(window_ns)?;
        self.control().window_ns.store(window_ns, Relaxed);
        Ok(self.publish())
    }

    /// Sets the [`mode`] flags and publishes them.
    pub fn set_mode(&self, flags: u32) -> Result<u64, QuotaError> {
        validate_mode(flags)?;
        self.control().mode.store(flags, Relaxed);
        Ok(self.publish())
    }

    /// Sets the resident-threads hint and publishes it.
    pub fn set_resident_threads(&self, threads: u64) -> u64 {
        self.control().resident_threads.store(threads, Relaxed);
        self.publish()
    }

    /// Records the agent's tick time (monotonic ns) without changing the epoch.
    pub fn record_tick(&self, now_ns: u64) {
        self.control().agent_tick_ns.store(now_ns, Relaxed);
    }

    /// Bumps the epoch so instances re-read the control fields; returns the new epoch. The epoch wraps (as the
    /// atomic does) after `u64::MAX`: instances only compare it for a change.
    pub fn publish(&self) -> u64 {
        self.control().epoch.fetch_add(1, AcqRel).wrapping_add(1)
    }

    /// Reads every field.
    pub fn snapshot(&self) -> Snapshot {
        Snapshot::read(self.control(), self.counters())
    }
}

fn temporary_sibling(path: &Path) -> PathBuf {
    let mut name = path
        .file_name()
        .map(|n| n.to_os_string())
        .unwrap_or_default();
    name.push(format!(".tmp.{}", std::process::id()));
    path.with_file_name(name)
}

/// The instance's view: the control page mapped read-only, the counter page read-write.
#[derive(Debug)]
pub struct InstanceChannel {
    path: PathBuf,
    control: Mapping,
    counters: Mapping,
}

impl InstanceChannel {
    /// Opens and validates a channel: the file must be at least [`FILE_SIZE`] bytes with the right magic,
    /// version and layout size; anything else is a typed error and nothing is mapped.
    pub fn open(path: &Path) -> Result<Self, QuotaError> {
        let file = open_checked(path, true)?;
        let control = Mapping::new(&file, path, 0, PAGE_SIZE, Access::ReadOnly)?;
        // SAFETY: one page, page-aligned, holding a ControlPage.
        let page = unsafe { &*control.as_ptr().cast::<ControlPage>() };
        validate_header(path, page)?;
        let counters = Mapping::new(&file, path, COUNTERS_OFFSET, PAGE_SIZE, Access::ReadWrite)?;
        Ok(Self {
            path: path.to_path_buf(),
            control,
            counters,
        })
    }

    /// The channel file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The control page (read-only mapping: writing through it would fault, so only loads are offered by use).
    pub fn control(&self) -> &ControlPage {
        // SAFETY: one page, page-aligned; ControlPage fits.
        unsafe { &*self.control.as_ptr().cast::<ControlPage>() }
    }

    /// The counter page.
    pub fn counters(&self) -> &CounterPage {
        // SAFETY: one writable page, page-aligned; CounterPage fits.
        unsafe { &*self.counters.as_ptr().cast::<CounterPage>() }
    }

    /// Marks the channel as attached by process `pid` and enforcing.
    pub fn attach(&self, pid: u32) {
        let counters = self.counters();
        counters.attached_pid.store(pid, Relaxed);
        counters.state.store(state::ENFORCING, Release);
        counters
            .last_seen_epoch
            .store(self.control().epoch.load(Relaxed), Relaxed);
    }

    /// Reads every field.
    pub fn snapshot(&self) -> Snapshot {
        Snapshot::read(self.control(), self.counters())
    }
}
