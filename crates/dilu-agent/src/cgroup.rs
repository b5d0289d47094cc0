//! CPU cgroups for instances that do not charge their quota channel themselves: a `process` function on a CPU
//! device. (Dilu's worker and trainer charge the CPU time they use; on a GPU the interposer charges kernels.)
//! The agent puts such an instance in a cgroup of its own whose CPU quota follows the budget the token manager
//! writes each window, and charges the instance's channel with the group's measured CPU time, so the vertical
//! controller sees its usage like any other resident's (`docs/process-runtime.md`).
//!
//! Both layouts are supported: cgroup v1 (the `cpu` controller's `cpu.cfs_period_us` and `cpu.cfs_quota_us`,
//! the `cpuacct` controller's `cpuacct.usage`) and cgroup v2 (`cpu.max`, and `usage_usec` in `cpu.stat`). An
//! agent's groups live in `dilu/<agent>/<instance>` at the top of the hierarchy, `<agent>` a hash of the
//! agent's data directory, so that agents sharing a machine never share a group.

use std::io;
use std::path::{Path, PathBuf};

/// The kernel's smallest CFS quota and period, µs.
const MIN_CFS_US: u64 = 1_000;
/// The longest period this module writes, µs (the kernel allows 1 s).
const MAX_PERIOD_US: u64 = 1_000_000;

/// Why a cgroup could not be used.
#[derive(Debug, thiserror::Error)]
pub enum CgroupError {
    /// No hierarchy offers the `cpu` controller.
    #[error(
        "no cgroup hierarchy with the cpu controller is mounted (/proc/self/mountinfo lists {0}); mount cgroup v2 with \
         the cpu controller enabled, or cgroup v1's cpu and cpuacct controllers"
    )]
    NotMounted(String),
    /// A cgroup v2 hierarchy that does not offer the `cpu` controller to its children.
    #[error(
        "cgroup v2 at {0} does not offer the cpu controller (its cgroup.controllers: {1:?}); the cpu controller is \
         bound to another hierarchy or not delegated to this one"
    )]
    NoCpuController(PathBuf, String),
    /// A file operation on the hierarchy failed.
    #[error("{action} {}: {source}", path.display())]
    Io {
        /// What was being done ("creating", "writing", "reading").
        action: &'static str,
        /// The file or directory.
        path: PathBuf,
        /// The system's error.
        #[source]
        source: io::Error,
    },
    /// A control file held something this module does not read.
    #[error("{}: expected {expected}, read {content:?}", path.display())]
    Parse {
        /// The file.
        path: PathBuf,
        /// What it should hold.
        expected: &'static str,
        /// What it held.
        content: String,
    },
}

fn io_error<'a>(
    action: &'static str,
    path: &'a Path,
) -> impl FnOnce(io::Error) -> CgroupError + 'a {
    move |source| CgroupError::Io {
        action,
        path: path.to_path_buf(),
        source,
    }
}

/// Where the CPU controller is mounted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Hierarchy {
    /// cgroup v1: the directories of the `cpu` and the `cpuacct` controllers (often one directory for both).
    V1 {
        /// Mount point of the `cpu` controller.
        cpu: PathBuf,
        /// Mount point of the `cpuacct` controller.
        cpuacct: PathBuf,
    },
    /// cgroup v2: the unified hierarchy's mount point.
    V2(PathBuf),
}

impl Hierarchy {
    /// The hierarchy `/proc/self/mountinfo` describes: cgroup v1's `cpu` and `cpuacct` when both are mounted
    /// (then the `cpu` controller is theirs, not v2's), cgroup v2 otherwise.
    pub fn from_mountinfo(text: &str) -> Result<Hierarchy, CgroupError> {
        let (mut cpu, mut cpuacct, mut unified) = (None, None, None);
        let mut seen = Vec::new();
        for line in text.lines() {
            let Some((mount, filesystem)) = line.split_once(" - ") else {
                continue;
            };
            let Some(point) = mount.split(' ').nth(4) else {
                continue;
            };
            let mut fields = filesystem.split(' ');
            let (kind, options) = match (fields.next(), fields.nth(1)) {
                (Some(kind), Some(options)) => (kind, options),
                _ => continue,
            };
            let point = PathBuf::from(unescape(point));
            match kind {
                "cgroup" => {
                    let controllers: Vec<&str> = options.split(',').collect();
                    if controllers.contains(&"cpu") {
                        cpu.get_or_insert_with(|| point.clone());
                    }
                    if controllers.contains(&"cpuacct") {
                        cpuacct.get_or_insert_with(|| point.clone());
                    }
                    seen.push(format!("cgroup ({options}) at {}", point.display()));
                }
                "cgroup2" => {
                    seen.push(format!("cgroup2 at {}", point.display()));
                    unified.get_or_insert(point);
                }
                _ => {}
            }
        }
        match (cpu, cpuacct, unified) {
            (Some(cpu), Some(cpuacct), _) => Ok(Hierarchy::V1 { cpu, cpuacct }),
            (None, _, Some(dir)) => Ok(Hierarchy::V2(dir)),
            _ if seen.is_empty() => Err(CgroupError::NotMounted("no cgroup".into())),
            _ => Err(CgroupError::NotMounted(seen.join(", "))),
        }
    }

    /// This process's view of the machine's hierarchy.
    pub fn discover() -> Result<Hierarchy, CgroupError> {
        let path = Path::new("/proc/self/mountinfo");
        let text = std::fs::read_to_string(path).map_err(io_error("reading", path))?;
        Hierarchy::from_mountinfo(&text)
    }

    /// The hierarchy's root group.
    fn root(&self) -> Dirs {
        match self {
            Hierarchy::V1 { cpu, cpuacct } => Dirs::V1 {
                cpu: cpu.clone(),
                cpuacct: cpuacct.clone(),
            },
            Hierarchy::V2(dir) => Dirs::V2(dir.clone()),
        }
    }
}

/// Decodes mountinfo's octal escapes (`\040` for a space).
fn unescape(field: &str) -> String {
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let octal = bytes.get(i + 1..i + 4).and_then(|digits| {
            std::str::from_utf8(digits)
                .ok()
                .and_then(|d| u8::from_str_radix(d, 8).ok())
        });
        match (bytes[i], octal) {
            (b'\\', Some(byte)) => {
                out.push(byte);
                i += 4;
            }
            (byte, _) => {
                out.push(byte);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// One cgroup's directories.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Dirs {
    V1 { cpu: PathBuf, cpuacct: PathBuf },
    V2(PathBuf),
}

impl Dirs {
    fn all(&self) -> Vec<&Path> {
        match self {
            Dirs::V1 { cpu, cpuacct } if cpu == cpuacct => vec![cpu],
            Dirs::V1 { cpu, cpuacct } => vec![cpu, cpuacct],
            Dirs::V2(dir) => vec![dir],
        }
    }

    fn main(&self) -> &Path {
        match self {
            Dirs::V1 { cpu, .. } => cpu,
            Dirs::V2(dir) => dir,
        }
    }

    fn child(&self, name: impl AsRef<Path>) -> Dirs {
        let name = name.as_ref();
        match self {
            Dirs::V1 { cpu, cpuacct } => Dirs::V1 {
                cpu: cpu.join(name),
                cpuacct: cpuacct.join(name),
            },
            Dirs::V2(dir) => Dirs::V2(dir.join(name)),
        }
    }

    fn create(&self) -> Result<(), CgroupError> {
        for dir in self.all() {
            match std::fs::create_dir(dir) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
                Err(e) => return Err(io_error("creating", dir)(e)),
            }
        }
        Ok(())
    }

    /// Removes the group's directories (the kernel refuses while a process is in it), each that it can;
    /// returns the first refusal.
    fn remove(&self) -> Result<(), CgroupError> {
        let mut first = Ok(());
        for dir in self.all() {
            match std::fs::remove_dir(dir) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) if first.is_ok() => first = Err(io_error("removing", dir)(e)),
                Err(_) => {}
            }
        }
        first
    }
}

fn write(path: &Path, value: &str) -> Result<(), CgroupError> {
    std::fs::write(path, value).map_err(io_error("writing", path))
}

fn read(path: &Path) -> Result<String, CgroupError> {
    std::fs::read_to_string(path).map_err(io_error("reading", path))
}

fn parse_error(path: &Path, expected: &'static str, content: &str) -> CgroupError {
    CgroupError::Parse {
        path: path.to_path_buf(),
        expected,
        content: content.chars().take(200).collect(),
    }
}

/// The limit for a budget the token manager writes (`None`: unlimited).
pub fn limit_for(budget_ns: u64, window_ns: u64) -> Option<CfsLimit> {
    (budget_ns != dilu_quota::UNLIMITED).then(|| CfsLimit::per_window(budget_ns, window_ns))
}

/// A CPU limit as CFS takes it: at most `quota_us` of CPU time (summed over CPUs) in every `period_us`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CfsLimit {
    /// CPU time per period, µs.
    pub quota_us: u64,
    /// The period, µs.
    pub period_us: u64,
}

impl CfsLimit {
    /// The limit holding a group to `budget_ns` of CPU time per `window_ns`: the window is the period, unless
    /// the quota or the period would fall under the kernel's 1 ms minimum; then the period is that many whole
    /// windows (up to 1 s) that bring both to 1 ms, keeping the ratio.
    pub fn per_window(budget_ns: u64, window_ns: u64) -> CfsLimit {
        let budget_us = (budget_ns / 1_000).max(1);
        let window_us = (window_ns / 1_000).max(1);
        let windows = MIN_CFS_US
            .div_ceil(budget_us)
            .max(MIN_CFS_US.div_ceil(window_us))
            .max(1);
        let period_us = (window_us * windows).min(MAX_PERIOD_US);
        let windows = period_us / window_us;
        CfsLimit {
            quota_us: (budget_us * windows).max(MIN_CFS_US),
            period_us: period_us.max(MIN_CFS_US),
        }
    }
}

/// The value of `key` in a `cpu.stat` text (`key value` lines).
fn stat_field(text: &str, key: &str) -> Option<u64> {
    text.lines()
        .filter_map(|line| line.split_once(' '))
        .find(|(k, _)| *k == key)
        .and_then(|(_, v)| v.trim().parse().ok())
}

/// `usage_usec` of a cgroup v2 `cpu.stat`, in ns.
fn usage_usec(path: &Path, text: &str) -> Result<u64, CgroupError> {
    stat_field(text, "usage_usec")
        .map(|us| us.saturating_mul(1_000))
        .ok_or_else(|| parse_error(path, "a usage_usec line", text))
}

/// What CFS reports of a group's throttling, cumulative.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Throttled {
    /// Periods in which the group used its quota up and was held back.
    pub periods: u64,
    /// How long it was held back, ns.
    pub time_ns: u64,
}

/// One instance's cgroup.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CpuGroup {
    dirs: Dirs,
}

impl CpuGroup {
    /// The group's directory (the `cpu` controller's, on cgroup v1).
    pub fn path(&self) -> &Path {
        self.dirs.main()
    }

    /// Moves process `pid` into the group; the processes it starts afterwards are born there.
    pub fn add(&self, pid: u32) -> Result<(), CgroupError> {
        for path in self.procs_files() {
            write(&path, &pid.to_string())?;
        }
        Ok(())
    }

    /// The group's `cgroup.procs` files (one per hierarchy directory): a process that writes "0" to each joins
    /// the group, as the supervisor's child does before it executes the instance's program.
    pub fn procs_files(&self) -> Vec<PathBuf> {
        self.dirs
            .all()
            .into_iter()
            .map(|dir| dir.join("cgroup.procs"))
            .collect()
    }

    /// CPU time the group's processes have used since it was created, ns.
    pub fn usage_ns(&self) -> Result<u64, CgroupError> {
        match &self.dirs {
            Dirs::V1 { cpuacct, .. } => {
                let path = cpuacct.join("cpuacct.usage");
                let text = read(&path)?;
                text.trim()
                    .parse()
                    .map_err(|_| parse_error(&path, "nanoseconds", &text))
            }
            Dirs::V2(dir) => {
                let path = dir.join("cpu.stat");
                usage_usec(&path, &read(&path)?)
            }
        }
    }

    /// How often and how long CFS has held the group back since it was created: throttled periods, and the
    /// time its runnable threads waited for the next period (`cpu.stat`'s `nr_throttled` and `throttled_time`,
    /// ns, on cgroup v1; `throttled_usec` on v2).
    pub fn throttled(&self) -> Result<Throttled, CgroupError> {
        let path = self.stat_path();
        self.throttled_in(&path, &read(&path)?)
    }

    /// [`CpuGroup::usage_ns`] and [`CpuGroup::throttled`] together, reading `cpu.stat` once (on cgroup v2 it
    /// holds both): what the token manager reads every window.
    pub fn sample(&self) -> Result<(u64, Throttled), CgroupError> {
        let path = self.stat_path();
        let stat = read(&path)?;
        let usage = match &self.dirs {
            Dirs::V1 { .. } => self.usage_ns()?,
            Dirs::V2(_) => usage_usec(&path, &stat)?,
        };
        Ok((usage, self.throttled_in(&path, &stat)?))
    }

    fn stat_path(&self) -> PathBuf {
        self.dirs.main().join("cpu.stat")
    }

    fn throttled_in(&self, path: &Path, text: &str) -> Result<Throttled, CgroupError> {
        let (time_key, time_scale) = match &self.dirs {
            Dirs::V1 { .. } => ("throttled_time", 1),
            Dirs::V2(_) => ("throttled_usec", 1_000),
        };
        match (stat_field(text, "nr_throttled"), stat_field(text, time_key)) {
            (Some(periods), Some(time)) => Ok(Throttled {
                periods,
                time_ns: time.saturating_mul(time_scale),
            }),
            _ => Err(parse_error(
                path,
                "nr_throttled and the throttled time",
                text,
            )),
        }
    }

    /// Holds the group to `limit`, or lets it use every CPU (`None`).
    pub fn set_limit(&self, limit: Option<CfsLimit>) -> Result<(), CgroupError> {
        match (&self.dirs, limit) {
            (Dirs::V1 { cpu, .. }, Some(limit)) => {
                // No parent group has a limit, so the kernel checks neither write against one.
                write(&cpu.join("cpu.cfs_period_us"), &limit.period_us.to_string())?;
                write(&cpu.join("cpu.cfs_quota_us"), &limit.quota_us.to_string())
            }
            (Dirs::V1 { cpu, .. }, None) => write(&cpu.join("cpu.cfs_quota_us"), "-1"),
            (Dirs::V2(dir), Some(limit)) => write(
                &dir.join("cpu.max"),
                &format!("{} {}", limit.quota_us, limit.period_us),
            ),
            (Dirs::V2(dir), None) => write(&dir.join("cpu.max"), "max"),
        }
    }

    /// The limit the group is held to now (`None`: none).
    pub fn limit(&self) -> Result<Option<CfsLimit>, CgroupError> {
        let number = |path: &Path, text: &str| -> Result<u64, CgroupError> {
            text.trim()
                .parse()
                .map_err(|_| parse_error(path, "a number of microseconds", text))
        };
        match &self.dirs {
            Dirs::V1 { cpu, .. } => {
                let quota_path = cpu.join("cpu.cfs_quota_us");
                let quota = read(&quota_path)?;
                if quota.trim() == "-1" {
                    return Ok(None);
                }
                let period_path = cpu.join("cpu.cfs_period_us");
                Ok(Some(CfsLimit {
                    quota_us: number(&quota_path, &quota)?,
                    period_us: number(&period_path, &read(&period_path)?)?,
                }))
            }
            Dirs::V2(dir) => {
                let path = dir.join("cpu.max");
                let text = read(&path)?;
                match text.split_whitespace().collect::<Vec<_>>()[..] {
                    ["max", _] | ["max"] => Ok(None),
                    [quota, period] => Ok(Some(CfsLimit {
                        quota_us: number(&path, quota)?,
                        period_us: number(&path, period)?,
                    })),
                    _ => Err(parse_error(
                        &path,
                        "\"QUOTA PERIOD\" or \"max PERIOD\"",
                        &text,
                    )),
                }
            }
        }
    }

    /// Removes the group; the kernel refuses while a process is still in it.
    pub fn remove(&self) -> Result<(), CgroupError> {
        self.dirs.remove()
    }
}

/// An agent's cgroups: one parent group, one child per metered instance.
#[derive(Debug, Clone)]
pub struct CpuCgroups {
    hierarchy: Hierarchy,
    parent: Dirs,
}

impl CpuCgroups {
    /// The agent's parent group `dilu/<agent>` in `hierarchy`, checked by creating it (on cgroup v2 with the
    /// `cpu` controller enabled for the children of every level). It is removed again while it holds no
    /// group, and made when the first instance needs one: an agent that never meters a process leaves nothing
    /// behind, even when it is killed.
    pub fn open(hierarchy: Hierarchy, agent: &str) -> Result<CpuCgroups, CgroupError> {
        if let Hierarchy::V2(root) = &hierarchy {
            let path = root.join("cgroup.controllers");
            let controllers = read(&path)?;
            if !controllers.split_whitespace().any(|c| c == "cpu") {
                return Err(CgroupError::NoCpuController(root.clone(), controllers));
            }
            enable_cpu(root)?;
            let dilu = root.join("dilu");
            Dirs::V2(dilu.clone()).create()?;
            enable_cpu(&dilu)?;
        } else {
            hierarchy.root().child("dilu").create()?;
        }
        let parent = hierarchy.root().child(Path::new("dilu").join(agent));
        let cgroups = CpuCgroups { hierarchy, parent };
        cgroups.make_parent()?;
        let _ = cgroups.parent.remove();
        Ok(cgroups)
    }

    fn make_parent(&self) -> Result<(), CgroupError> {
        self.parent.create()?;
        match &self.parent {
            Dirs::V2(dir) => enable_cpu(dir),
            Dirs::V1 { .. } => Ok(()),
        }
    }

    /// The parent group of agent `agent` in `hierarchy` if that agent made one, without creating anything (for
    /// cleaning up after an agent that was killed).
    pub fn find(hierarchy: Hierarchy, agent: &str) -> Option<CpuCgroups> {
        let parent = hierarchy.root().child(Path::new("dilu").join(agent));
        parent
            .main()
            .is_dir()
            .then_some(CpuCgroups { hierarchy, parent })
    }

    /// The hierarchy the groups are in.
    pub fn hierarchy(&self) -> &Hierarchy {
        &self.hierarchy
    }

    /// The agent's parent group (the `cpu` controller's directory on cgroup v1).
    pub fn path(&self) -> &Path {
        self.parent.main()
    }

    /// Instance `id`'s group, created if missing (an instance re-adopted after a restart finds its own).
    pub fn group(&self, id: &str) -> Result<CpuGroup, CgroupError> {
        self.make_parent()?;
        let dirs = self.parent.child(id);
        dirs.create()?;
        Ok(CpuGroup { dirs })
    }

    /// Removes every empty group of this agent whose instance is not in `keep`; returns how many went.
    pub fn sweep(&self, keep: &[&str]) -> usize {
        let Ok(entries) = std::fs::read_dir(self.parent.main()) else {
            return 0;
        };
        entries
            .flatten()
            .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
            .filter_map(|e| e.file_name().to_str().map(str::to_string))
            .filter(|name| !keep.contains(&name.as_str()))
            .filter(|name| self.parent.child(name).remove().is_ok())
            .count()
    }

    /// Removes the groups that hold no process, and the parent when none is left (at the agent's shutdown:
    /// running instances keep theirs for the next agent). Returns whether everything went.
    pub fn close(&self) -> bool {
        self.sweep(&[]);
        self.parent.remove().is_ok()
    }
}

/// Enables the `cpu` controller for the children of the v2 group `dir`.
fn enable_cpu(dir: &Path) -> Result<(), CgroupError> {
    let path = dir.join("cgroup.subtree_control");
    if read(&path)?.split_whitespace().any(|c| c == "cpu") {
        return Ok(());
    }
    write(&path, "+cpu")
}

/// A short, stable name for the agent keeping its files in `data_dir`.
pub fn agent_name(data_dir: &Path) -> String {
    let canonical = std::fs::canonicalize(data_dir).unwrap_or_else(|_| data_dir.to_path_buf());
    let hash = dilu_core::hash::fnv1a64(canonical.as_os_str().as_encoded_bytes(), 0);
    format!("{hash:016x}")
}

#[cfg(test)]
mod tests {
    use super::*;

    const HYBRID: &str = "\
25 30 0:23 / /sys rw,nosuid shared:7 - sysfs sysfs rw
35 25 0:30 / /sys/fs/cgroup ro,nosuid shared:9 - tmpfs tmpfs ro,mode=755
36 35 0:31 / /sys/fs/cgroup/unified rw,nosuid shared:10 - cgroup2 cgroup2 rw,nsdelegate
39 35 0:34 / /sys/fs/cgroup/cpu,cpuacct rw,nosuid shared:14 - cgroup cgroup rw,cpu,cpuacct
40 35 0:35 / /sys/fs/cgroup/memory rw,nosuid shared:15 - cgroup cgroup rw,memory
";

    #[test]
    fn mountinfo_prefers_v1_cpu_when_it_is_mounted_and_falls_back_to_v2() {
        let both = PathBuf::from("/sys/fs/cgroup/cpu,cpuacct");
        assert_eq!(
            Hierarchy::from_mountinfo(HYBRID).unwrap(),
            Hierarchy::V1 {
                cpu: both.clone(),
                cpuacct: both
            }
        );
        let split = "\
1 0 0:1 / /sys/fs/cgroup/cpu rw - cgroup cgroup rw,cpu
2 0 0:2 / /sys/fs/cgroup/cpuacct rw - cgroup cgroup rw,cpuacct
3 0 0:3 / /sys/fs/cgroup/unified rw - cgroup2 cgroup2 rw
";
        assert_eq!(
            Hierarchy::from_mountinfo(split).unwrap(),
            Hierarchy::V1 {
                cpu: "/sys/fs/cgroup/cpu".into(),
                cpuacct: "/sys/fs/cgroup/cpuacct".into()
            }
        );
        let unified = "29 23 0:26 / /sys/fs/cgroup rw,nosuid - cgroup2 cgroup2 rw,nsdelegate\n";
        assert_eq!(
            Hierarchy::from_mountinfo(unified).unwrap(),
            Hierarchy::V2("/sys/fs/cgroup".into())
        );
        let spaced = "29 23 0:26 / /mnt/my\\040cgroups rw - cgroup2 none rw\n";
        assert_eq!(
            Hierarchy::from_mountinfo(spaced).unwrap(),
            Hierarchy::V2("/mnt/my cgroups".into())
        );
        let error = Hierarchy::from_mountinfo(
            "40 35 0:35 / /sys/fs/cgroup/memory rw - cgroup cgroup rw,memory\n",
        )
        .unwrap_err()
        .to_string();
        assert!(
            error.contains("cgroup (rw,memory) at /sys/fs/cgroup/memory"),
            "{error}"
        );
        assert!(
            Hierarchy::from_mountinfo("")
                .unwrap_err()
                .to_string()
                .contains("lists no cgroup")
        );
    }

    #[test]
    fn a_budget_becomes_a_cfs_limit_of_the_same_ratio_within_the_kernels_bounds() {
        let ms = 1_000_000;
        // A quarter of two cores per 5 ms window: 2.5 ms per 5 ms.
        assert_eq!(
            CfsLimit::per_window(2_500_000, 5 * ms),
            CfsLimit {
                quota_us: 2_500,
                period_us: 5_000
            }
        );
        // Two cores' worth: the quota may exceed the period.
        assert_eq!(CfsLimit::per_window(10 * ms, 5 * ms).quota_us, 10_000);
        // Under 1 ms per window: whole windows until the quota reaches 1 ms.
        assert_eq!(
            CfsLimit::per_window(400_000, 5 * ms),
            CfsLimit {
                quota_us: 1_200,
                period_us: 15_000
            }
        );
        // A window under 1 ms: the period grows to 1 ms.
        assert_eq!(
            CfsLimit::per_window(50_000, 500_000),
            CfsLimit {
                quota_us: 1_000,
                period_us: 10_000
            }
        );
        // Nothing at all: the smallest CFS allows, 1 ms per second.
        assert_eq!(
            CfsLimit::per_window(0, 5 * ms),
            CfsLimit {
                quota_us: 1_000,
                period_us: 1_000_000
            }
        );
    }

    /// A fake hierarchy in a temporary directory: directories and files only, as the kernel would show them.
    fn fake_v1(root: &Path) -> Hierarchy {
        Hierarchy::V1 {
            cpu: root.join("cpu"),
            cpuacct: root.join("cpuacct"),
        }
    }

    /// A limit written reads back as written, and so does none.
    fn round_trips(group: &CpuGroup, limit: CfsLimit) {
        group.set_limit(Some(limit)).unwrap();
        assert_eq!(group.limit().unwrap(), Some(limit));
        group.set_limit(None).unwrap();
        assert_eq!(group.limit().unwrap(), None);
    }

    #[test]
    fn v1_groups_write_cfs_files_and_read_cpuacct_usage() {
        let root = tempfile::tempdir().unwrap();
        for controller in ["cpu", "cpuacct"] {
            std::fs::create_dir(root.path().join(controller)).unwrap();
        }
        let cgroups = CpuCgroups::open(fake_v1(root.path()), "agent1").unwrap();
        let group = cgroups.group("f-1").unwrap();
        assert_eq!(group.path(), root.path().join("cpu/dilu/agent1/f-1"));
        group.add(4242).unwrap();
        for controller in ["cpu", "cpuacct"] {
            let procs = root
                .path()
                .join(controller)
                .join("dilu/agent1/f-1/cgroup.procs");
            assert_eq!(std::fs::read_to_string(procs).unwrap(), "4242");
        }
        let limit = CfsLimit {
            quota_us: 2_500,
            period_us: 5_000,
        };
        round_trips(&group, limit);
        std::fs::write(
            root.path().join("cpuacct/dilu/agent1/f-1/cpuacct.usage"),
            "123456789\n",
        )
        .unwrap();
        assert_eq!(group.usage_ns().unwrap(), 123_456_789);
        std::fs::write(
            root.path().join("cpu/dilu/agent1/f-1/cpu.stat"),
            "nr_periods 400\nnr_throttled 363\nthrottled_time 991948886\nnr_bursts 0\nburst_time 0\n",
        )
        .unwrap();
        assert_eq!(
            group.throttled().unwrap(),
            Throttled {
                periods: 363,
                time_ns: 991_948_886
            }
        );
        std::fs::write(
            root.path().join("cpuacct/dilu/agent1/f-1/cpuacct.usage"),
            "lots\n",
        )
        .unwrap();
        let error = group.usage_ns().unwrap_err().to_string();
        assert!(
            error.contains("cpuacct.usage: expected nanoseconds, read \"lots\\n\""),
            "{error}"
        );
    }

    #[test]
    fn v2_groups_enable_the_cpu_controller_and_use_cpu_max_and_cpu_stat() {
        let root = tempfile::tempdir().unwrap();
        let dir = root.path();
        std::fs::write(dir.join("cgroup.controllers"), "memory pids\n").unwrap();
        let error = CpuCgroups::open(Hierarchy::V2(dir.into()), "a").unwrap_err();
        assert!(matches!(error, CgroupError::NoCpuController(..)), "{error}");
        std::fs::write(
            dir.join("cgroup.controllers"),
            "cpuset cpu io memory pids\n",
        )
        .unwrap();
        std::fs::write(dir.join("cgroup.subtree_control"), "memory\n").unwrap();
        // The kernel creates these in every new group; the fake needs them before the agent's levels exist.
        std::fs::create_dir_all(dir.join("dilu/a")).unwrap();
        std::fs::write(dir.join("dilu/cgroup.subtree_control"), "").unwrap();
        std::fs::write(dir.join("dilu/a/cgroup.subtree_control"), "cpu\n").unwrap();
        let cgroups = CpuCgroups::open(Hierarchy::V2(dir.into()), "a").unwrap();
        assert_eq!(
            std::fs::read_to_string(dir.join("cgroup.subtree_control")).unwrap(),
            "+cpu"
        );
        assert_eq!(
            std::fs::read_to_string(dir.join("dilu/cgroup.subtree_control")).unwrap(),
            "+cpu"
        );
        // Already enabled: left alone.
        assert_eq!(
            std::fs::read_to_string(dir.join("dilu/a/cgroup.subtree_control")).unwrap(),
            "cpu\n"
        );
        let group = cgroups.group("f-2").unwrap();
        let limit = CfsLimit {
            quota_us: 1_200,
            period_us: 15_000,
        };
        group.set_limit(Some(limit)).unwrap();
        assert_eq!(
            std::fs::read_to_string(group.path().join("cpu.max")).unwrap(),
            "1200 15000"
        );
        round_trips(&group, limit);
        std::fs::write(
            group.path().join("cpu.stat"),
            "usage_usec 2500\nuser_usec 2000\nsystem_usec 500\nnr_periods 9\nnr_throttled 4\nthrottled_usec 1500\n",
        )
        .unwrap();
        assert_eq!(group.usage_ns().unwrap(), 2_500_000);
        assert_eq!(
            group.throttled().unwrap(),
            Throttled {
                periods: 4,
                time_ns: 1_500_000
            }
        );
    }

    #[test]
    fn sweep_and_close_remove_empty_groups_only_and_keep_the_named_ones() {
        let root = tempfile::tempdir().unwrap();
        let dir = root.path().join("cpu");
        std::fs::create_dir(&dir).unwrap();
        let hierarchy = Hierarchy::V1 {
            cpu: dir.clone(),
            cpuacct: dir.clone(),
        };
        let cgroups = CpuCgroups::open(hierarchy, "b").unwrap();
        for id in ["kept", "stray", "busy"] {
            cgroups.group(id).unwrap();
        }
        // A directory that cannot be removed stands for a group a process is still in.
        std::fs::write(dir.join("dilu/b/busy/cgroup.procs"), "77").unwrap();
        assert_eq!(cgroups.sweep(&["kept"]), 1);
        assert!(dir.join("dilu/b/kept").is_dir());
        assert!(!dir.join("dilu/b/stray").exists());
        assert!(dir.join("dilu/b/busy").is_dir());
        assert!(!cgroups.close(), "a busy group keeps its parent");
        assert!(!dir.join("dilu/b/kept").exists());
        assert!(dir.join("dilu/b/busy").is_dir());
    }

    #[test]
    fn agent_names_differ_per_data_directory_and_are_stable() {
        let a = tempfile::tempdir().unwrap();
        let b = tempfile::tempdir().unwrap();
        assert_eq!(agent_name(a.path()), agent_name(a.path()));
        assert_ne!(agent_name(a.path()), agent_name(b.path()));
        assert_eq!(agent_name(a.path()).len(), 16);
    }
}
