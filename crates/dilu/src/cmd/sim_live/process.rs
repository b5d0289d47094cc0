//! The child processes `calibrate` and `validate` start (`dilu worker`, `dilu train`, `dilu up`), and their
//! scratch folders.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};

/// A child process killed (SIGTERM, then SIGKILL) when dropped.
pub(super) struct Guard(Child);

impl Drop for Guard {
    fn drop(&mut self) {
        // SAFETY: kill(2) with our own child's pid and a valid signal.
        unsafe {
            libc::kill(self.0.id() as libc::pid_t, libc::SIGTERM);
        }
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.0.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Spawns `exe args` and waits for a stdout line starting with `prefix`; returns the rest of the line.
pub(super) fn spawn_until(mut cmd: Command, prefix: &str, what: &str) -> Result<(Guard, String)> {
    cmd.stdout(Stdio::piped()).stderr(Stdio::inherit());
    let mut child = cmd.spawn().with_context(|| format!("starting {what}"))?;
    let stdout = child
        .stdout
        .take()
        .with_context(|| format!("{what}: no stdout"))?;
    let guard = Guard(child);
    let (tx, rx) = std::sync::mpsc::channel();
    let wanted = prefix.to_owned();
    std::thread::spawn(move || {
        let mut sent = false;
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if !sent && let Some(rest) = line.strip_prefix(&wanted) {
                let _ = tx.send(rest.trim().to_owned());
                sent = true;
            }
        }
    });
    let rest = rx
        .recv_timeout(Duration::from_secs(60))
        .with_context(|| format!("{what} did not print {prefix:?} within 60 s"))?;
    Ok((guard, rest))
}

/// A fresh folder under the system's temporary directory, named for `prefix`, this process and the time.
pub(super) fn tempdir(prefix: &str) -> Result<PathBuf> {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    let dir = std::env::temp_dir().join(format!("{prefix}-{}-{nanos}", std::process::id()));
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    Ok(dir)
}

/// `dilu train` (the built-in trainer) listening on a free local port, held by the quota channel at `quota`.
pub(super) fn train_command(
    exe: &Path,
    hidden: u32,
    layers: u32,
    batch: u32,
    quota: &Path,
) -> Command {
    let mut cmd = Command::new(exe);
    cmd.args(["train", "--listen", "127.0.0.1:0"])
        .args(["--hidden", &hidden.to_string()])
        .args(["--layers", &layers.to_string()])
        .args(["--batch", &batch.to_string()])
        .arg("--quota-file")
        .arg(quota);
    cmd
}
