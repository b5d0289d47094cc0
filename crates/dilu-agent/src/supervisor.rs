//! Function instances as real operating-system processes, supervised so that they outlive the agent.
//!
//! The agent may be SIGKILLed or upgraded at any time; its instances must neither die with it nor be orphaned
//! beyond recovery. So every instance is started ([`spawn`]) in its own session and process group (no signal
//! aimed at the agent's group or terminal reaches it), with stdin from `/dev/null` and stdout and stderr
//! appended to a log file — never pipes, which would hand the instance a SIGPIPE or a blocked write once the
//! agent is gone. The agent records each instance's pid together with its start time (field 22 of
//! `/proc/<pid>/stat`, in clock ticks since boot), and a restarted agent re-attaches to it with [`adopt`]: the
//! pair (pid, start time) names one process for the life of the machine, so a recycled pid is never mistaken
//! for the instance.
//!
//! Also here: [`Process::stop`] (SIGTERM to the group, a grace period, then SIGKILL), the restart [`Backoff`],
//! a dependency-free HTTP readiness probe ([`probe_http`]) and log maintenance ([`rotate_log`], [`tail`]).

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::os::fd::AsRawFd;
use std::os::unix::fs::OpenOptionsExt;
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

/// The log file's permissions (before the umask): the agent's user writes, its group may read.
pub const LOG_FILE_MODE: u32 = 0o640;

/// How often [`Process::stop`] checks whether the process has exited.
const STOP_POLL: Duration = Duration::from_millis(10);

/// How long [`Process::stop`] waits for a SIGKILLed process to disappear. A process in uninterruptible sleep
/// (e.g. inside a hung driver call) dies only when that call returns.
const KILL_WAIT: Duration = Duration::from_secs(5);

/// The variables of the agent's environment an instance inherits, by exact name: where programs and libraries
/// are found, whose home and locale, the time zone, the temporary directory, and Rust's diagnostics switches.
/// Nothing else is inherited — not the agent's API token (`DILU_TOKEN`), not cloud credentials, not
/// `LD_PRELOAD` or `CUDA_VISIBLE_DEVICES` (the agent sets those itself where they apply). What an instance
/// needs beyond this goes in its spec's `env`. Documented in the README (`dilu agent`, Instances).
pub const INHERITED_ENV: &[&str] = &[
    "PATH",
    "HOME",
    "USER",
    "LOGNAME",
    "LANG",
    "LANGUAGE",
    "TZ",
    "TMPDIR",
    "RUST_LOG",
    "RUST_BACKTRACE",
    "RUST_LIB_BACKTRACE",
    // Where the CUDA driver and libraries are, on GPU nodes; the interposer's own switches.
    "LD_LIBRARY_PATH",
    "DILU_REAL_LIBCUDA",
    "DILU_CUDA_QUIET",
    // Where ONNX Runtime's library is, for the built-in worker's onnxruntime engine.
    "ORT_DYLIB_PATH",
];

/// Prefixes of inherited variables: the locale categories (`LC_ALL`, `LC_CTYPE`, …).
pub const INHERITED_ENV_PREFIXES: &[&str] = &["LC_"];

/// Whether an instance inherits the agent's variable `name` ([`INHERITED_ENV`], [`INHERITED_ENV_PREFIXES`]).
pub fn inherits(name: &str) -> bool {
    INHERITED_ENV.contains(&name)
        || INHERITED_ENV_PREFIXES
            .iter()
            .any(|p| name.len() > p.len() && name.starts_with(p))
}

/// How to start one instance.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct LaunchSpec {
    /// The executable: a path, or a name searched in `PATH`.
    pub program: String,
    /// Arguments after the program name.
    pub args: Vec<String>,
    /// Environment variables to set, over what is inherited.
    pub env: Vec<(String, String)>,
    /// Inherit nothing from the agent's environment; otherwise the variables [`inherits`] allows are inherited
    /// (never the whole environment).
    pub clear_env: bool,
    /// Working directory; the agent's when None.
    pub cwd: Option<PathBuf>,
    /// The file stdout and stderr are appended to (created with mode [`LOG_FILE_MODE`] if absent).
    pub log_path: PathBuf,
    /// `cgroup.procs` files of the groups the process joins before it executes the program (its CPU cgroup),
    /// so that none of its own work, nor any child's, runs outside them.
    pub cgroup_procs: Vec<PathBuf>,
}

/// Why an instance could not be started.
#[derive(Debug, thiserror::Error)]
pub enum SupervisorError {
    /// The log file could not be opened.
    // OS errors are part of the message, not a `source`, so reports print them once.
    #[error("open log {path}: {reason}")]
    OpenLog {
        /// The log file.
        path: PathBuf,
        /// The operating system's error.
        reason: io::Error,
    },
    /// A cgroup to start the process in could not be opened.
    #[error("open {path}: {reason}")]
    OpenCgroup {
        /// The group's `cgroup.procs`.
        path: PathBuf,
        /// The operating system's error.
        reason: io::Error,
    },
    /// The program could not be started (not found, not executable, bad working directory, joining its
    /// cgroup, …).
    #[error("spawn {program}: {reason}")]
    Spawn {
        /// The program.
        program: String,
        /// The operating system's error.
        reason: io::Error,
    },
    /// The new process's start time could not be read from `/proc`; the process was killed.
    #[error("read /proc/{pid}/stat of new process: {reason}")]
    ProcStat {
        /// The process id.
        pid: u32,
        /// The error.
        reason: io::Error,
    },
}

/// How a process ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exit {
    /// It exited with this status code.
    Code(i32),
    /// It was killed by this signal.
    Signal(i32),
    /// It is gone but its status is unknown (a process adopted from a previous agent run, reaped by init).
    Unknown,
}

impl Exit {
    /// Whether the process exited with status 0.
    pub fn success(&self) -> bool {
        matches!(self, Exit::Code(0))
    }

    fn from_status(status: ExitStatus) -> Exit {
        if let Some(code) = status.code() {
            Exit::Code(code)
        } else if let Some(sig) = status.signal() {
            Exit::Signal(sig)
        } else {
            Exit::Unknown
        }
    }

    /// Decodes a `waitpid` status word.
    fn from_wait_status(status: libc::c_int) -> Exit {
        if libc::WIFEXITED(status) {
            Exit::Code(libc::WEXITSTATUS(status))
        } else if libc::WIFSIGNALED(status) {
            Exit::Signal(libc::WTERMSIG(status))
        } else {
            Exit::Unknown
        }
    }
}

impl std::fmt::Display for Exit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Exit::Code(c) => write!(f, "exit code {c}"),
            Exit::Signal(s) => write!(f, "killed by signal {s}"),
            // A status, not a sentence: reports read "exited (<exit>)".
            Exit::Unknown => write!(f, "status unknown"),
        }
    }
}

/// One supervised process: started by this agent ([`spawn`]) or adopted from a previous run ([`adopt`]).
///
/// Dropping a `Process` neither kills nor waits for it: instances outlive the agent's bookkeeping by design.
/// Call [`Process::poll`] or [`Process::stop`] so that an exited child of this agent is reaped.
#[derive(Debug)]
pub struct Process {
    pid: u32,
    start_ticks: u64,
    child: Option<Child>,
    exited: Option<Exit>,
}

/// What `/proc/<pid>/stat` says about a process.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct ProcStat {
    /// Field 3: `R`, `S`, `D`, `Z` (zombie), `X` (dead), …
    state: u8,
    /// Field 5: the process group.
    pgrp: i32,
    /// Field 6: the session.
    session: i32,
    /// Field 22: start time in clock ticks after boot.
    start_ticks: u64,
}

impl ProcStat {
    fn is_dead(&self) -> bool {
        matches!(self.state, b'Z' | b'X' | b'x')
    }
}

fn proc_stat(pid: u32) -> io::Result<ProcStat> {
    parse_stat(&fs::read(format!("/proc/{pid}/stat"))?).ok_or_else(|| {
        io::Error::new(
            io::ErrorKind::InvalidData,
            format!("unparsable /proc/{pid}/stat"),
        )
    })
}

/// Parses the text of `/proc/<pid>/stat`. The command name (field 2) is in parentheses and may itself contain
/// spaces and parentheses, so fields are counted from the last `)`.
fn parse_stat(text: &[u8]) -> Option<ProcStat> {
    let close = text.iter().rposition(|&b| b == b')')?;
    let rest = std::str::from_utf8(text.get(close + 1..)?).ok()?;
    let fields: Vec<&str> = rest.split_ascii_whitespace().collect();
    // fields[0] is field 3 of the man page, so field N is fields[N - 3].
    let state = *fields.first()?.as_bytes().first()?;
    Some(ProcStat {
        state,
        pgrp: fields.get(2)?.parse().ok()?,
        session: fields.get(3)?.parse().ok()?,
        start_ticks: fields.get(19)?.parse().ok()?,
    })
}

/// Starts `spec` in a new session with its output appended to `spec.log_path`.
///
/// The child calls `setsid()` before `exec`, so it leads its own session and process group (group id = pid)
/// and has no controlling terminal; its stdin is `/dev/null`; stdout and stderr are the same `O_APPEND` file.
/// No other descriptor of the agent is inherited (the standard library opens everything close-on-exec), and of
/// the agent's environment only the variables [`inherits`] allows, then `spec.env`.
pub fn spawn(spec: &LaunchSpec) -> Result<Process, SupervisorError> {
    let open_log = |reason| SupervisorError::OpenLog {
        path: spec.log_path.clone(),
        reason,
    };
    let log = OpenOptions::new()
        .append(true)
        .create(true)
        .mode(LOG_FILE_MODE)
        .open(&spec.log_path)
        .map_err(open_log)?;
    let log_err = log.try_clone().map_err(open_log)?;

    let mut cmd = Command::new(&spec.program);
    cmd.args(&spec.args);
    // Never the agent's whole environment: it holds the API token and whatever else the agent was given.
    cmd.env_clear();
    if !spec.clear_env {
        cmd.envs(std::env::vars_os().filter(|(k, _)| k.to_str().is_some_and(inherits)));
    }
    cmd.envs(spec.env.iter().map(|(k, v)| (k, v)));
    if let Some(cwd) = &spec.cwd {
        cmd.current_dir(cwd);
    }
    cmd.stdin(Stdio::null()).stdout(log).stderr(log_err);
    // Opened here, written in the child: "0" moves the writer itself into the group.
    let groups: Vec<std::fs::File> = spec
        .cgroup_procs
        .iter()
        .map(|path| {
            OpenOptions::new().write(true).open(path).map_err(|reason| {
                SupervisorError::OpenCgroup {
                    path: path.clone(),
                    reason,
                }
            })
        })
        .collect::<Result<_, _>>()?;
    let group_fds: Vec<libc::c_int> = groups.iter().map(|f| f.as_raw_fd()).collect();
    // SAFETY: the closure runs in the forked child before exec and calls only setsid(2) and write(2) on
    // descriptors opened before the fork, both async-signal-safe; it reads `group_fds` (moved into the
    // closure, not shared with the parent's threads) and allocates nothing.
    unsafe {
        cmd.pre_exec(move || {
            if libc::setsid() == -1 {
                return Err(io::Error::last_os_error());
            }
            for &fd in &group_fds {
                if libc::write(fd, b"0".as_ptr().cast(), 1) != 1 {
                    return Err(io::Error::last_os_error());
                }
            }
            Ok(())
        });
    }
    let spawned = cmd.spawn();
    drop(groups);
    let mut child = spawned.map_err(|reason| SupervisorError::Spawn {
        program: spec.program.clone(),
        reason,
    })?;
    let pid = child.id();
    // The child is not reaped until we wait for it, so its pid cannot have been recycled yet.
    match proc_stat(pid) {
        Ok(stat) => Ok(Process {
            pid,
            start_ticks: stat.start_ticks,
            child: Some(child),
            exited: None,
        }),
        Err(reason) => {
            // Without a start time the process could never be re-adopted safely: do not leave it running.
            let _ = child.kill();
            let _ = child.wait();
            Err(SupervisorError::ProcStat { pid, reason })
        }
    }
}

/// Re-attaches to a process started by a previous run of the agent.
///
/// Some only if `pid` exists, is not a zombie, and its start time is `start_ticks` — otherwise the instance
/// has exited (and the pid may belong to an unrelated process now).
pub fn adopt(pid: u32, start_ticks: u64) -> Option<Process> {
    if pid == 0 || pid > i32::MAX as u32 {
        return None;
    }
    let stat = proc_stat(pid).ok()?;
    if stat.is_dead() || stat.start_ticks != start_ticks {
        return None;
    }
    Some(Process {
        pid,
        start_ticks,
        child: None,
        exited: None,
    })
}

impl Process {
    /// The process id.
    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// The start time (clock ticks after boot, `/proc/<pid>/stat` field 22): with the pid, the process's
    /// identity to record for [`adopt`].
    pub fn start_ticks(&self) -> u64 {
        self.start_ticks
    }

    /// Whether this process was adopted from a previous agent run (not a child of this agent).
    pub fn is_adopted(&self) -> bool {
        self.child.is_none()
    }

    /// Whether it has exited, without blocking. Once it has, every later call returns the same [`Exit`].
    ///
    /// A child of this agent is reaped and its status is exact. An adopted process has exited when its pid is
    /// gone, is a zombie, or now names a process with another start time; its status is [`Exit::Unknown`]
    /// unless it is a zombie this process may reap (the agent is its parent or subreaper).
    pub fn poll(&mut self) -> Option<Exit> {
        if self.exited.is_none() {
            self.exited = self.check_exit();
        }
        self.exited
    }

    fn check_exit(&mut self) -> Option<Exit> {
        if let Some(child) = &mut self.child {
            match child.try_wait() {
                Ok(Some(status)) => return Some(Exit::from_status(status)),
                Ok(None) => return None,
                // Someone else reaped it (ECHILD): fall through to what /proc says.
                Err(_) => {}
            }
        }
        self.check_exit_proc()
    }

    fn check_exit_proc(&self) -> Option<Exit> {
        let Ok(stat) = proc_stat(self.pid) else {
            return Some(Exit::Unknown);
        };
        if stat.start_ticks != self.start_ticks {
            return Some(Exit::Unknown);
        }
        if !stat.is_dead() {
            return None;
        }
        // Our zombie (same start time). If we are its parent or subreaper, reap it and learn the status;
        // otherwise waitpid fails with ECHILD and its real parent will reap it.
        let mut status: libc::c_int = 0;
        // SAFETY: plain syscall with a valid out pointer; WNOHANG never blocks.
        let rc = unsafe { libc::waitpid(self.pid as libc::pid_t, &mut status, libc::WNOHANG) };
        if rc == self.pid as libc::pid_t {
            Some(Exit::from_wait_status(status))
        } else {
            Some(Exit::Unknown)
        }
    }

    /// Sends `signal` to the process's group when it leads one (every process [`spawn`] starts does), else
    /// to the process alone.
    fn signal_group(&self, signal: libc::c_int) {
        let pid = self.pid as libc::pid_t;
        let leads_group = proc_stat(self.pid)
            .map(|s| s.pgrp == pid && s.start_ticks == self.start_ticks)
            .unwrap_or(false);
        // SAFETY: kill(2) has no memory-safety preconditions. The pid was verified against the recorded start
        // time just before (an own child cannot be recycled before it is reaped; an adopted pid could in
        // principle be recycled in the microseconds between the check and the signal).
        unsafe {
            if !(leads_group && libc::kill(-pid, signal) == 0) {
                libc::kill(pid, signal);
            }
        }
    }

    /// Stops the process: SIGTERM to its process group, up to `grace` for it to exit (checking every 10 ms),
    /// then SIGKILL to the group; returns how it ended.
    ///
    /// When the leader exits within the grace period, the rest of its group is SIGKILLed too so that no
    /// helper process lingers. Idempotent: on a process that has already exited this only returns its
    /// [`Exit`]. Should the process survive SIGKILL for 5 s (stuck in uninterruptible sleep), returns
    /// [`Exit::Unknown`] without recording an exit, so a later [`Process::poll`] still sees it.
    pub fn stop(&mut self, grace: Duration) -> Exit {
        if let Some(exit) = self.poll() {
            return exit;
        }
        self.signal_group(libc::SIGTERM);
        let deadline = Instant::now() + grace;
        loop {
            if let Some(exit) = self.poll() {
                self.kill_group_remnants();
                return exit;
            }
            let now = Instant::now();
            if now >= deadline {
                break;
            }
            std::thread::sleep(STOP_POLL.min(deadline - now));
        }
        self.signal_group(libc::SIGKILL);
        let deadline = Instant::now() + KILL_WAIT;
        loop {
            if let Some(exit) = self.poll() {
                self.kill_group_remnants();
                return exit;
            }
            if Instant::now() >= deadline {
                return Exit::Unknown;
            }
            std::thread::sleep(STOP_POLL);
        }
    }

    /// SIGKILLs what is left of the process group after its leader exited.
    fn kill_group_remnants(&self) {
        // SAFETY: kill(2) has no memory-safety preconditions. A process group id stays allocated while any
        // member lives, so this reaches only the instance's own descendants, or nobody (ESRCH).
        unsafe {
            libc::kill(-(self.pid as libc::pid_t), libc::SIGKILL);
        }
    }
}

/// Restart delays for a crashing instance: exponential from `initial`, multiplied by `factor` on each
/// restart up to `max`, and back to `initial` once the process has stayed up for `reset_after`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Backoff {
    /// The first delay (default 100 ms).
    pub initial: Duration,
    /// The longest delay (default 30 s).
    pub max: Duration,
    /// The growth factor per restart (default 2).
    pub factor: u32,
    /// An uptime at least this long resets the sequence (default 60 s).
    pub reset_after: Duration,
    next: Duration,
}

impl Default for Backoff {
    fn default() -> Self {
        Backoff::new(
            Duration::from_millis(100),
            Duration::from_secs(30),
            2,
            Duration::from_secs(60),
        )
    }
}

impl Backoff {
    /// A backoff with the given parameters, starting at `initial`.
    pub fn new(initial: Duration, max: Duration, factor: u32, reset_after: Duration) -> Backoff {
        Backoff {
            initial,
            max,
            factor,
            reset_after,
            next: initial,
        }
    }

    /// The delay before the next restart of a process that ran for `uptime` before exiting.
    pub fn next_delay(&mut self, uptime: Duration) -> Duration {
        if uptime >= self.reset_after {
            self.next = self.initial;
        }
        let delay = self.next.min(self.max);
        self.next = delay.saturating_mul(self.factor.max(1)).min(self.max);
        delay
    }

    /// Starts the sequence over at `initial`.
    pub fn reset(&mut self) {
        self.next = self.initial;
    }
}

/// Splits `http://host[:port][/path]` into (authority for the Host header, host, port, path).
fn parse_http_url(url: &str) -> Option<(&str, &str, u16, &str)> {
    let scheme_end = url.find("://")?;
    if !url[..scheme_end].eq_ignore_ascii_case("http") {
        return None;
    }
    let rest = &url[scheme_end + 3..];
    let (authority, path) = match rest.find(['/', '?']) {
        Some(i) if rest.as_bytes()[i] == b'/' => (&rest[..i], &rest[i..]),
        Some(_) => return None,
        None => (rest, "/"),
    };
    if authority.is_empty() || authority.contains('@') || path.contains([' ', '\r', '\n']) {
        return None;
    }
    let (host, port) = if let Some(v6) = authority.strip_prefix('[') {
        let close = v6.find(']')?;
        let host = &v6[..close];
        match &v6[close + 1..] {
            "" => (host, 80),
            p => (host, p.strip_prefix(':')?.parse().ok()?),
        }
    } else {
        match authority.rsplit_once(':') {
            Some((h, p)) => (h, p.parse().ok()?),
            None => (authority, 80),
        }
    };
    if host.is_empty() || port == 0 {
        return None;
    }
    Some((authority, host, port, path))
}

/// An HTTP readiness probe with no HTTP library: true iff `GET url` answers with a 2xx status within
/// `timeout` (connect, send and the status line together). [`probe_http_reason`] says why not.
pub fn probe_http(url: &str, timeout: Duration) -> bool {
    probe_http_reason(url, timeout).is_ok()
}

/// [`probe_http`], with the reason of a failure in words: `connection refused (nothing listens on port
/// 8123)`, `answered 404 Not Found`, `no answer within 200ms`.
///
/// Only `http://host[:port][/path]` is accepted (port 80 when absent); `https` and anything unparsable fail.
/// Name resolution uses the system resolver and is not bounded by `timeout` (probes normally target
/// `127.0.0.1`). Only the status line is read; the connection is then closed.
pub fn probe_http_reason(url: &str, timeout: Duration) -> Result<(), String> {
    let Some((authority, host, port, path)) = parse_http_url(url) else {
        return Err(format!("{url:?} is not an http:// URL"));
    };
    let deadline = Instant::now() + timeout;
    let addrs = (host, port)
        .to_socket_addrs()
        .map_err(|e| format!("resolving {host}: {e}"))?;
    let late = || format!("no answer within {timeout:?}");
    let remaining = || {
        deadline
            .checked_duration_since(Instant::now())
            .filter(|d| !d.is_zero())
    };
    let mut stream = None;
    let mut refused = format!("nothing to connect to at {authority}");
    for addr in addrs {
        let left = remaining().ok_or_else(late)?;
        match TcpStream::connect_timeout(&addr, left) {
            Ok(s) => {
                stream = Some(s);
                break;
            }
            Err(e) if e.kind() == io::ErrorKind::ConnectionRefused => {
                refused = format!("connection refused (nothing listens on port {port})");
            }
            Err(e) => refused = format!("connecting to {addr}: {e}"),
        }
    }
    let mut stream = stream.ok_or(refused)?;
    let request = format!("GET {path} HTTP/1.1\r\nHost: {authority}\r\nConnection: close\r\n\r\n");
    let left = remaining().ok_or_else(late)?;
    stream
        .set_write_timeout(Some(left))
        .and_then(|()| stream.write_all(request.as_bytes()))
        .map_err(|e| format!("sending GET {path}: {e}"))?;
    // Read until the end of the status line (or 1 KiB, or the deadline).
    let mut buf = Vec::with_capacity(256);
    let mut chunk = [0u8; 256];
    while !buf.contains(&b'\n') && buf.len() < 1024 {
        let left = remaining().ok_or_else(late)?;
        stream
            .set_read_timeout(Some(left))
            .map_err(|e| e.to_string())?;
        match stream.read(&mut chunk) {
            Ok(0) => break,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) =>
            {
                return Err(late());
            }
            Err(e) => return Err(format!("reading the answer to GET {path}: {e}")),
        }
    }
    let line = buf.split(|&b| b == b'\n').next().unwrap_or_default();
    let line = String::from_utf8_lossy(line);
    let mut parts = line.split_ascii_whitespace();
    let version_ok = parts.next().is_some_and(|v| v.starts_with("HTTP/1."));
    let status = parts.next().and_then(|s| s.parse::<u16>().ok());
    match status {
        Some(200..=299) if version_ok => Ok(()),
        Some(code) if version_ok => {
            let reason: Vec<&str> = parts.collect();
            Err(format!("GET {path} answered {code} {}", reason.join(" "))
                .trim_end()
                .to_string())
        }
        _ if buf.is_empty() => Err(format!(
            "GET {path}: the connection closed without an answer"
        )),
        _ => Err(format!(
            "GET {path}: not an HTTP answer ({:?})",
            line.trim().chars().take(40).collect::<String>()
        )),
    }
}

/// `<path>.1`: where [`rotate_log`] keeps the previous generation.
pub fn rotated_path(path: &Path) -> PathBuf {
    let mut s = path.as_os_str().to_owned();
    s.push(".1");
    PathBuf::from(s)
}

/// Keeps a log bounded while the instance keeps writing to it through its `O_APPEND` descriptor.
///
/// When the file is larger than `max_bytes`, copies it to `<path>.1` (replacing the previous copy) and
/// truncates it to zero; the instance's next write lands at the new end (offset 0) because its descriptor is
/// `O_APPEND`, so the file neither keeps growing nor gains a hole. Returns whether it rotated; a missing file
/// is not an error (false). Lines written between the copy and the truncation are lost — a window of
/// microseconds, acceptable for diagnostics logs.
pub fn rotate_log(path: &Path, max_bytes: u64) -> io::Result<bool> {
    let len = match fs::metadata(path) {
        Ok(m) => m.len(),
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(false),
        Err(e) => return Err(e),
    };
    if len <= max_bytes {
        return Ok(false);
    }
    fs::copy(path, rotated_path(path))?;
    OpenOptions::new().write(true).open(path)?.set_len(0)?;
    Ok(true)
}

/// The last `max_bytes` of the file at `path`, as UTF-8 with invalid sequences replaced (a multi-byte
/// character cut at the start shows as U+FFFD).
pub fn tail(path: &Path, max_bytes: u64) -> io::Result<String> {
    let mut file = File::open(path)?;
    let len = file.metadata()?.len();
    file.seek(SeekFrom::Start(len.saturating_sub(max_bytes)))?;
    let mut buf = Vec::new();
    // `take` bounds the read even if the file grows meanwhile.
    file.take(max_bytes).read_to_end(&mut buf)?;
    Ok(String::from_utf8_lossy(&buf).into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::TcpListener;
    use std::sync::mpsc;

    fn sh(script: &str, log: &Path) -> LaunchSpec {
        LaunchSpec {
            program: "sh".into(),
            args: vec!["-c".into(), script.into()],
            log_path: log.to_path_buf(),
            ..LaunchSpec::default()
        }
    }

    /// Waits (up to 10 s) until the log contains `needle`.
    fn wait_for_log(log: &Path, needle: &str) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if fs::read_to_string(log).unwrap_or_default().contains(needle) {
                return;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        panic!("log {} never contained {needle:?}", log.display());
    }

    /// Polls (up to 10 s) until the process has exited.
    fn wait_exit(p: &mut Process) -> Exit {
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Some(e) = p.poll() {
                return e;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        panic!("process {} did not exit", p.pid());
    }

    #[test]
    fn spawn_logs_runs_detached_and_stops_with_sigterm() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("inst.log");
        let mut p = spawn(&sh("echo hi; echo oops >&2; sleep 30", &log)).unwrap();
        assert!(!p.is_adopted());
        wait_for_log(&log, "oops");
        assert!(fs::read_to_string(&log).unwrap().contains("hi\n"));
        assert_eq!(p.poll(), None);

        // Own session and group; stdout is the log file, not a pipe; stdin is /dev/null.
        let stat = proc_stat(p.pid()).unwrap();
        assert_eq!(stat.session, p.pid() as i32);
        assert_eq!(stat.pgrp, p.pid() as i32);
        assert_eq!(stat.start_ticks, p.start_ticks());
        let fd = |n: u32| fs::read_link(format!("/proc/{}/fd/{n}", p.pid())).unwrap();
        assert_eq!(fd(0), Path::new("/dev/null"));
        assert_eq!(fd(1), log.canonicalize().unwrap());
        assert_eq!(fd(2), log.canonicalize().unwrap());
        use std::os::unix::fs::PermissionsExt;
        let mode = fs::metadata(&log).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode & !LOG_FILE_MODE, 0, "mode {mode:o}");

        let grace = Duration::from_secs(5);
        let t0 = Instant::now();
        assert_eq!(p.stop(grace), Exit::Signal(libc::SIGTERM));
        assert!(t0.elapsed() < grace);
        // Idempotent.
        assert_eq!(p.stop(grace), Exit::Signal(libc::SIGTERM));
        assert_eq!(p.poll(), Some(Exit::Signal(libc::SIGTERM)));
        assert!(!p.poll().unwrap().success());
    }

    #[test]
    fn stop_kills_the_whole_group() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("inst.log");
        // A background helper in the same group, which would outlive its parent on its own.
        let mut p = spawn(&sh("sleep 30 & echo helper=$!; wait", &log)).unwrap();
        wait_for_log(&log, "\n");
        let text = fs::read_to_string(&log).unwrap();
        let helper: u32 = text
            .trim()
            .strip_prefix("helper=")
            .unwrap()
            .parse()
            .unwrap();
        let helper_ticks = proc_stat(helper).unwrap().start_ticks;
        p.stop(Duration::from_secs(5));
        // The helper is gone (reaped by init) or a zombie waiting for it.
        let deadline = Instant::now() + Duration::from_secs(5);
        while adopt(helper, helper_ticks).is_some() {
            assert!(Instant::now() < deadline, "helper {helper} survived stop");
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    #[test]
    fn sigterm_ignorer_is_sigkilled_after_grace() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("stubborn.log");
        let mut p = spawn(&sh("trap '' TERM; echo ready; sleep 30", &log)).unwrap();
        wait_for_log(&log, "ready");
        let grace = Duration::from_millis(300);
        let t0 = Instant::now();
        assert_eq!(p.stop(grace), Exit::Signal(libc::SIGKILL));
        assert!(t0.elapsed() >= grace);
    }

    #[test]
    fn exit_codes_propagate() {
        let dir = tempfile::tempdir().unwrap();
        let mut p = spawn(&sh("exit 3", &dir.path().join("a.log"))).unwrap();
        let e = wait_exit(&mut p);
        assert_eq!(e, Exit::Code(3));
        assert!(!e.success());
        let mut q = spawn(&sh("true", &dir.path().join("b.log"))).unwrap();
        assert!(wait_exit(&mut q).success());
        assert_eq!(q.stop(Duration::from_secs(1)), Exit::Code(0));
    }

    #[test]
    fn env_cwd_and_clear_env_apply() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("env.log");
        let spec = LaunchSpec {
            program: "/bin/sh".into(),
            args: vec![
                "-c".into(),
                "echo \"foo=$FOO home=${HOME-unset} pwd=$(pwd)\"".into(),
            ],
            env: vec![("FOO".into(), "bar baz".into())],
            clear_env: true,
            cwd: Some(dir.path().to_path_buf()),
            log_path: log.clone(),
            cgroup_procs: Vec::new(),
        };
        let mut p = spawn(&spec).unwrap();
        assert_eq!(wait_exit(&mut p), Exit::Code(0));
        let want = format!(
            "foo=bar baz home=unset pwd={}\n",
            dir.path().canonicalize().unwrap().display()
        );
        assert_eq!(fs::read_to_string(&log).unwrap(), want);
        // The log is appended to, never truncated, across restarts.
        let mut p = spawn(&spec).unwrap();
        wait_exit(&mut p);
        assert_eq!(fs::read_to_string(&log).unwrap(), want.repeat(2));
    }

    /// The variables in `env -0` output.
    fn env_names(log: &Path) -> Vec<String> {
        let text = fs::read(log).unwrap();
        text.split(|&b| b == 0)
            .filter(|kv| !kv.is_empty())
            .map(|kv| {
                let kv = String::from_utf8_lossy(kv);
                kv.split_once('=').map_or(&*kv, |(k, _)| k).to_string()
            })
            .collect()
    }

    #[test]
    fn instances_inherit_only_the_allow_listed_environment() {
        // Cargo and nextest give every test process CARGO_* variables: a stand-in for a secret such as
        // DILU_TOKEN in the agent's environment, which no instance may read from /proc/<pid>/environ.
        assert!(std::env::var_os("CARGO_MANIFEST_DIR").is_some());
        assert!(std::env::var_os("PATH").is_some());
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("env.log");
        let mut p = spawn(&LaunchSpec {
            program: "env".into(),
            args: vec!["-0".into()],
            env: vec![("DILU_QUOTA_FILE".into(), "/run/q".into())],
            log_path: log.clone(),
            ..LaunchSpec::default()
        })
        .unwrap();
        assert_eq!(wait_exit(&mut p), Exit::Code(0));
        let names = env_names(&log);
        assert!(names.iter().any(|n| n == "PATH"), "{names:?}");
        assert!(names.iter().any(|n| n == "DILU_QUOTA_FILE"), "{names:?}");
        let leaked: Vec<&String> = names
            .iter()
            .filter(|n| !inherits(n) && *n != "DILU_QUOTA_FILE")
            .collect();
        assert!(
            leaked.is_empty(),
            "inherited beyond the allow-list: {leaked:?}"
        );
        assert!(!names.iter().any(|n| n.starts_with("CARGO")), "{names:?}");
    }

    #[test]
    fn the_allow_list_names_locale_paths_and_diagnostics_only() {
        for name in [
            "PATH",
            "HOME",
            "LANG",
            "LC_ALL",
            "LC_CTYPE",
            "TZ",
            "TMPDIR",
            "RUST_LOG",
            "RUST_BACKTRACE",
            "LD_LIBRARY_PATH",
        ] {
            assert!(inherits(name), "{name}");
        }
        for name in [
            "DILU_TOKEN",
            "DILU_SERVER",
            "AWS_SECRET_ACCESS_KEY",
            "GITHUB_TOKEN",
            "LD_PRELOAD",
            "CUDA_VISIBLE_DEVICES",
            "DILU_QUOTA_FILE",
            "SSH_AUTH_SOCK",
            "LC",
            "path",
            "",
        ] {
            assert!(!inherits(name), "{name}");
        }
    }

    #[test]
    fn an_exit_reads_as_a_status_that_composes_with_exited() {
        // Reports say "instance X exited (<exit>)": an adopted process's unknown status read "exited (exited
        // (status unknown))".
        for exit in [Exit::Code(3), Exit::Signal(libc::SIGKILL), Exit::Unknown] {
            let report = format!("instance i-1 exited ({exit})");
            assert_eq!(report.matches("exited").count(), 1, "{report}");
        }
        assert_eq!(Exit::Unknown.to_string(), "status unknown");
    }

    #[test]
    fn spawn_errors_name_program_and_log() {
        let dir = tempfile::tempdir().unwrap();
        let err = spawn(&LaunchSpec {
            program: "/nonexistent/dilu-worker".into(),
            log_path: dir.path().join("x.log"),
            ..LaunchSpec::default()
        })
        .unwrap_err();
        assert!(matches!(err, SupervisorError::Spawn { .. }), "{err:?}");
        assert!(
            err.to_string()
                .starts_with("spawn /nonexistent/dilu-worker: "),
            "{err}"
        );

        let err = spawn(&sh("true", &dir.path().join("no/such/dir/x.log"))).unwrap_err();
        assert!(matches!(err, SupervisorError::OpenLog { .. }), "{err:?}");
        assert!(err.to_string().contains("no/such/dir/x.log"), "{err}");
    }

    #[test]
    fn adopt_checks_start_time_and_notices_exit() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("adopt.log");
        let mut own = spawn(&sh("echo up; sleep 30", &log)).unwrap();
        wait_for_log(&log, "up");
        let (pid, ticks) = (own.pid(), own.start_ticks());

        assert!(
            adopt(pid, ticks + 1).is_none(),
            "wrong start time must be refused"
        );
        assert!(adopt(pid, ticks.wrapping_sub(1)).is_none());
        assert!(adopt(0, ticks).is_none());
        assert!(adopt(i32::MAX as u32, ticks).is_none());

        let mut adopted = adopt(pid, ticks).unwrap();
        assert!(adopted.is_adopted());
        assert_eq!((adopted.pid(), adopted.start_ticks()), (pid, ticks));
        assert_eq!(adopted.poll(), None);

        // SAFETY: signalling our own test child's group.
        assert_eq!(
            unsafe { libc::kill(-(pid as libc::pid_t), libc::SIGKILL) },
            0
        );
        // This test process is the real parent, so the adopted handle may reap the zombie and learn why.
        assert_eq!(wait_exit(&mut adopted), Exit::Signal(libc::SIGKILL));
        // The original handle finds its child reaped by someone else: exited, status unknown.
        assert_eq!(own.poll(), Some(Exit::Unknown));
        assert!(adopt(pid, ticks).is_none());
    }

    #[test]
    fn adopt_refuses_a_zombie_and_adopted_poll_sees_it() {
        let dir = tempfile::tempdir().unwrap();
        let p = spawn(&sh("exit 0", &dir.path().join("z.log"))).unwrap();
        let (pid, ticks) = (p.pid(), p.start_ticks());
        // Not reaped (no poll): it stays a zombie.
        let deadline = Instant::now() + Duration::from_secs(10);
        while !proc_stat(pid).unwrap().is_dead() {
            assert!(Instant::now() < deadline);
            std::thread::sleep(Duration::from_millis(5));
        }
        assert!(adopt(pid, ticks).is_none());
        // A handle built while it was alive (as after an agent restart) sees the exit and reaps it.
        let mut stale = Process {
            pid,
            start_ticks: ticks,
            child: None,
            exited: None,
        };
        assert_eq!(stale.poll(), Some(Exit::Code(0)));
        assert!(proc_stat(pid).is_err() || proc_stat(pid).unwrap().start_ticks != ticks);
        drop(p);
    }

    #[test]
    fn adopted_process_is_stopped_through_its_group() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("a.log");
        let own = spawn(&sh("echo up; sleep 30", &log)).unwrap();
        wait_for_log(&log, "up");
        let mut adopted = adopt(own.pid(), own.start_ticks()).unwrap();
        assert_eq!(
            adopted.stop(Duration::from_secs(5)),
            Exit::Signal(libc::SIGTERM)
        );
    }

    #[test]
    fn rotate_log_bounds_a_live_writer_without_holes() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("chatty.log");
        // ~64 bytes every 2 ms.
        let line = "x".repeat(63);
        let mut p = spawn(&sh(
            &format!("while :; do echo {line}; sleep 0.002; done"),
            &log,
        ))
        .unwrap();
        let max = 2048;
        let mut rotations = 0;
        // Until three rotations (or 20 s on a very loaded machine): the writer's pace depends on the load.
        let deadline = Instant::now() + Duration::from_secs(20);
        while rotations < 3 && Instant::now() < deadline {
            if rotate_log(&log, max).unwrap() {
                rotations += 1;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        // One last rotation right before measuring bounds the size by what 20 ms can add.
        rotate_log(&log, max).unwrap();
        let len = fs::metadata(&log).unwrap().len();
        p.stop(Duration::from_secs(5));
        assert!(rotations >= 3, "only {rotations} rotations");
        assert!(len <= max + 16 * 1024, "log grew to {len}");
        // O_APPEND: after truncation the writer continued at offset 0, so no NUL-filled hole.
        let text = fs::read(&log).unwrap();
        assert!(!text.contains(&0), "hole in the rotated log");
        let old = fs::read_to_string(rotated_path(&log)).unwrap();
        assert!(old.len() as u64 > max);
        assert!(
            old.lines().all(|l| l == line),
            "rotated copy has torn lines"
        );
        assert!(!rotate_log(&dir.path().join("absent.log"), max).unwrap());
    }

    #[test]
    fn rotate_log_below_limit_does_nothing_and_tail_reads_the_end() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("t.log");
        fs::write(&log, "first\nsecond\nthird\n").unwrap();
        assert!(!rotate_log(&log, 100).unwrap());
        assert!(!rotated_path(&log).exists());
        assert_eq!(tail(&log, 6).unwrap(), "third\n");
        assert_eq!(tail(&log, 1000).unwrap(), "first\nsecond\nthird\n");
        assert_eq!(tail(&log, 0).unwrap(), "");
        fs::write(&log, "é!").unwrap(); // 0xC3 0xA9 0x21
        assert_eq!(tail(&log, 2).unwrap(), "\u{FFFD}!");
        assert!(tail(&dir.path().join("absent"), 10).is_err());
    }

    #[test]
    fn backoff_doubles_caps_and_resets() {
        let mut b = Backoff::default();
        let short = Duration::from_secs(1);
        let got: Vec<u64> = (0..11)
            .map(|_| b.next_delay(short).as_millis() as u64)
            .collect();
        assert_eq!(
            got,
            [
                100, 200, 400, 800, 1600, 3200, 6400, 12800, 25600, 30000, 30000
            ]
        );
        // Up long enough: start over.
        assert_eq!(
            b.next_delay(Duration::from_secs(60)),
            Duration::from_millis(100)
        );
        assert_eq!(
            b.next_delay(Duration::from_secs(59)),
            Duration::from_millis(200)
        );
        b.reset();
        assert_eq!(b.next_delay(Duration::ZERO), Duration::from_millis(100));

        let mut c = Backoff::new(
            Duration::from_secs(1),
            Duration::from_secs(5),
            3,
            Duration::from_secs(10),
        );
        let got: Vec<u64> = (0..4)
            .map(|_| c.next_delay(Duration::ZERO).as_secs())
            .collect();
        assert_eq!(got, [1, 3, 5, 5]);
    }

    /// Serves one connection with `status_line`, sending back the request head it received.
    fn one_shot_server(status_line: &'static str) -> (u16, mpsc::Receiver<String>) {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            let (mut s, _) = listener.accept().unwrap();
            let mut head = Vec::new();
            let mut b = [0u8; 512];
            while !head.ends_with(b"\r\n\r\n") {
                let n = s.read(&mut b).unwrap();
                if n == 0 {
                    break;
                }
                head.extend_from_slice(&b[..n]);
            }
            let _ = write!(s, "{status_line}\r\nContent-Length: 2\r\n\r\nok");
            tx.send(String::from_utf8_lossy(&head).into_owned())
                .unwrap();
        });
        (port, rx)
    }

    #[test]
    fn probe_http_accepts_2xx_only() {
        let t = Duration::from_secs(5);
        let (port, rx) = one_shot_server("HTTP/1.1 200 OK");
        assert!(probe_http(
            &format!("http://127.0.0.1:{port}/v2/health/ready"),
            t
        ));
        let head = rx.recv().unwrap();
        assert_eq!(
            head,
            format!(
                "GET /v2/health/ready HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\n\r\n"
            )
        );

        let (port, rx) = one_shot_server("HTTP/1.1 204 No Content");
        assert!(probe_http(&format!("http://localhost:{port}"), t));
        assert!(rx.recv().unwrap().starts_with("GET / HTTP/1.1\r\n"));

        let (port, _rx) = one_shot_server("HTTP/1.1 503 Service Unavailable");
        assert!(!probe_http(&format!("http://127.0.0.1:{port}/ready"), t));
        let (port, _rx) = one_shot_server("garbage");
        assert!(!probe_http(&format!("http://127.0.0.1:{port}/ready"), t));
    }

    #[test]
    fn probe_http_closed_port_silent_server_and_bad_urls_are_false() {
        let t = Duration::from_secs(2);
        let port = {
            let l = TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap().port()
        };
        assert!(!probe_http(&format!("http://127.0.0.1:{port}/"), t));

        // Accepts but never answers: the probe gives up at its timeout.
        let silent = TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://127.0.0.1:{}/", silent.local_addr().unwrap().port());
        let t0 = Instant::now();
        assert!(!probe_http(&url, Duration::from_millis(200)));
        assert!(t0.elapsed() < Duration::from_secs(2));

        for bad in [
            "https://127.0.0.1:1/",
            "ftp://x/",
            "127.0.0.1:80/",
            "http://",
            "http://:80/",
            "http://h:notaport/",
            "http://u@h:80/",
            "http://h:0/",
            "http://h?x",
        ] {
            assert!(!probe_http(bad, t), "{bad}");
        }
    }

    #[test]
    fn url_parsing() {
        assert_eq!(
            parse_http_url("http://h:8080/a/b?c=1"),
            Some(("h:8080", "h", 8080, "/a/b?c=1"))
        );
        assert_eq!(parse_http_url("HTTP://h"), Some(("h", "h", 80, "/")));
        assert_eq!(
            parse_http_url("http://[::1]:9000/x"),
            Some(("[::1]:9000", "::1", 9000, "/x"))
        );
        assert_eq!(
            parse_http_url("http://[::1]/"),
            Some(("[::1]", "::1", 80, "/"))
        );
        assert_eq!(parse_http_url("https://h/"), None);
    }

    #[test]
    fn stat_parsing_handles_odd_command_names() {
        let mut fields = vec!["S", "1", "42", "42"];
        fields.extend(std::iter::repeat_n("0", 15));
        fields.push("987654");
        fields.push("0");
        let text = format!("42 (we ird) (name) {}\n", fields.join(" "));
        let s = parse_stat(text.as_bytes()).unwrap();
        assert_eq!(
            s,
            ProcStat {
                state: b'S',
                pgrp: 42,
                session: 42,
                start_ticks: 987_654
            }
        );
        assert!(parse_stat(b"42 (x").is_none());
        assert!(parse_stat(b"42 (x) S 1").is_none());
    }
}
