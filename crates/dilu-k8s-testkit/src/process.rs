//! Child processes the kit starts: each in its own process group, reaped by a waiter thread, and killed with
//! the test process even when that one dies by SIGKILL (`PR_SET_PDEATHSIG` from a spawner thread that lives as
//! long as the process).

use std::io::{self, Read};
use std::net::{Ipv4Addr, SocketAddrV4, TcpListener};
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::Path;
use std::process::{Child, Command, ExitStatus};
use std::sync::OnceLock;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use tokio::sync::watch;

struct SpawnRequest {
    command: Command,
    reply: mpsc::SyncSender<io::Result<Child>>,
}

/// The spawner thread's queue. The thread never ends (its sender lives in this static), so a child's
/// parent-death signal fires only when the whole test process goes.
fn spawner() -> &'static mpsc::Sender<SpawnRequest> {
    static SPAWNER: OnceLock<mpsc::Sender<SpawnRequest>> = OnceLock::new();
    SPAWNER.get_or_init(|| {
        let (tx, rx) = mpsc::channel::<SpawnRequest>();
        std::thread::Builder::new()
            .name("dilu-k8s-testkit-spawner".into())
            .spawn(move || {
                for mut request in rx {
                    let _ = request.reply.send(request.command.spawn());
                }
            })
            .expect("dilu-k8s-testkit: starting the spawner thread");
        tx
    })
}

/// A process the kit started, in its own process group (its pid is the group id).
#[derive(Debug)]
pub struct Proc {
    pid: u32,
    exit: watch::Receiver<Option<ExitStatus>>,
}

impl Proc {
    /// Starts `command` as the leader of a new process group, killed (SIGKILL) when the test process dies.
    pub fn spawn(mut command: Command) -> io::Result<Proc> {
        command.process_group(0);
        let parent = std::process::id() as libc::pid_t;
        // SAFETY: prctl, getppid and kill are async-signal-safe; the closure allocates nothing.
        unsafe {
            command.pre_exec(move || {
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                    return Err(io::Error::last_os_error());
                }
                // The parent may have died between fork and prctl.
                if libc::getppid() != parent {
                    libc::kill(libc::getpid(), libc::SIGKILL);
                }
                Ok(())
            });
        }
        let (reply, answer) = mpsc::sync_channel(1);
        spawner()
            .send(SpawnRequest { command, reply })
            .map_err(|_| io::Error::other("the spawner thread is gone"))?;
        let mut child = answer
            .recv()
            .map_err(|_| io::Error::other("the spawner thread did not answer"))??;
        let pid = child.id();
        let (tx, exit) = watch::channel(None);
        std::thread::Builder::new()
            .name(format!("dilu-k8s-testkit-wait-{pid}"))
            .spawn(move || {
                let status = child
                    .wait()
                    .unwrap_or_else(|_| ExitStatus::from_raw(255 << 8));
                tx.send_replace(Some(status));
            })?;
        Ok(Proc { pid, exit })
    }

    /// The process id (and process group id).
    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// How it ended, once it has.
    pub fn exit_status(&self) -> Option<ExitStatus> {
        *self.exit.borrow()
    }

    /// Waits until it ends.
    pub async fn wait(&self) -> ExitStatus {
        let mut rx = self.exit.clone();
        match rx.wait_for(Option::is_some).await {
            Ok(status) => status.unwrap_or_else(|| ExitStatus::from_raw(255 << 8)),
            // The waiter thread always sends before it drops the sender.
            Err(_) => self
                .exit_status()
                .unwrap_or_else(|| ExitStatus::from_raw(255 << 8)),
        }
    }

    /// Waits until it ends, blocking the thread, at most `timeout`.
    pub fn wait_blocking(&self, timeout: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.exit_status() {
                return Some(status);
            }
            if Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// Sends `signal` to its whole process group (what is left of it, when the leader has ended).
    pub fn signal_group(&self, signal: libc::c_int) {
        signal_group(self.pid, signal);
    }

    /// SIGKILLs its process group and waits (at most 5 s) until the leader is reaped.
    pub fn kill(&self) {
        self.signal_group(libc::SIGKILL);
        self.wait_blocking(Duration::from_secs(5));
    }
}

/// Sends `signal` to process group `pgid`.
pub fn signal_group(pgid: u32, signal: libc::c_int) {
    if pgid > 1 {
        // SAFETY: kill has no memory-safety preconditions.
        unsafe {
            libc::kill(-(pgid as libc::pid_t), signal);
        }
    }
}

/// Kubernetes' exit code of a process status: the code, or 128 + the signal that ended it.
pub fn exit_code(status: ExitStatus) -> i32 {
    status
        .code()
        .or_else(|| status.signal().map(|s| 128 + s))
        .unwrap_or(255)
}

/// A free TCP port on 127.0.0.1 (free now: the caller retries when someone takes it first).
pub fn free_port() -> io::Result<u16> {
    let listener = TcpListener::bind(SocketAddrV4::new(Ipv4Addr::LOCALHOST, 0))?;
    Ok(listener.local_addr()?.port())
}

/// The last `lines` lines of a log file (or why it could not be read).
pub fn tail(path: &Path, lines: usize) -> String {
    let mut text = String::new();
    match std::fs::File::open(path).and_then(|mut f| f.read_to_string(&mut text)) {
        Ok(_) => {
            let all: Vec<&str> = text.lines().collect();
            all[all.len().saturating_sub(lines)..].join("\n")
        }
        Err(e) => format!("({}: {e})", path.display()),
    }
}

/// 16 random bytes as hex (tokens).
pub fn random_hex() -> String {
    let mut bytes = [0u8; 16];
    let read = std::fs::File::open("/dev/urandom").and_then(|mut f| f.read_exact(&mut bytes));
    if read.is_err() {
        // Tokens only need to differ between users of one test API server.
        let seed = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or_default()
            ^ u128::from(std::process::id());
        bytes = seed.to_le_bytes();
    }
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
