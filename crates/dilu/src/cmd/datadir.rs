//! Data directories: one owner at a time (an exclusive lock), and private (no one else may write in them).

use std::fs::File;
use std::io::{Read, Seek, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};

/// A claimed data directory: the lock holds until this is dropped or the process ends (the lock file is
/// opened close-on-exec, so instances the process starts never inherit it).
#[derive(Debug)]
pub struct Claimed {
    /// The directory, canonical.
    pub path: PathBuf,
    _lock: File,
}

/// Creates `dir` (0700) if needed, refuses it when other users may write in it, and takes its lock; a
/// second process claiming the same directory is refused with the first one's pid.
pub fn claim(dir: &Path, flag: &str) -> Result<Claimed> {
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .with_context(|| format!("{flag} {}: creating it", dir.display()))?;
    let path = std::fs::canonicalize(dir)
        .with_context(|| format!("{flag} {}: resolving it", dir.display()))?;
    let meta = std::fs::metadata(&path)
        .with_context(|| format!("{flag} {}: reading it", path.display()))?;
    let mode = meta.permissions().mode() & 0o7777;
    if mode & 0o022 != 0 {
        bail!(
            "{flag} {}: mode {mode:04o} lets other users write in the data directory (rule: it must not be \
             group- or world-writable, as 0700 or 0755 are; run chmod go-w {})",
            path.display(),
            path.display()
        );
    }
    let lock_path = path.join("lock");
    let mut lock = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o600)
        .open(&lock_path)
        .with_context(|| format!("opening {}", lock_path.display()))?;
    // SAFETY: flock on a descriptor we own; it is released when the descriptor closes.
    if unsafe { libc::flock(lock.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
        let error = std::io::Error::last_os_error();
        if error.raw_os_error() == Some(libc::EWOULDBLOCK) {
            let mut holder = String::new();
            let _ = lock.read_to_string(&mut holder);
            let holder = holder.trim();
            let who = if holder.is_empty() {
                "another process".to_string()
            } else {
                format!("pid {holder}")
            };
            bail!(
                "{flag} {}: already in use by {who} (rule: one dilu process per data directory; stop it, or pass \
                 another {flag})",
                path.display()
            );
        }
        return Err(error).with_context(|| format!("locking {}", lock_path.display()));
    }
    lock.set_len(0)
        .and_then(|()| lock.rewind())
        .and_then(|()| writeln!(lock, "{}", std::process::id()))
        .with_context(|| format!("writing {}", lock_path.display()))?;
    Ok(Claimed { path, _lock: lock })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_claim_is_refused_with_the_holders_pid_until_the_first_ends() {
        let dir = tempfile::tempdir().unwrap();
        let first = claim(dir.path(), "--data-dir").unwrap();
        let error = claim(dir.path(), "--data-dir").unwrap_err().to_string();
        assert!(
            error.contains(&format!("already in use by pid {}", std::process::id())),
            "{error}"
        );
        assert!(
            error.contains("one dilu process per data directory"),
            "{error}"
        );
        drop(first);
        claim(dir.path(), "--data-dir").unwrap();
    }

    #[test]
    fn a_directory_others_can_write_is_refused_with_the_rule() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o777)).unwrap();
        let error = claim(dir.path(), "--data-dir").unwrap_err().to_string();
        assert!(error.contains("mode 0777"), "{error}");
        assert!(
            error.contains("must not be group- or world-writable"),
            "{error}"
        );
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        claim(dir.path(), "--data-dir").unwrap();
    }

    #[test]
    fn a_new_directory_is_private() {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("a/b");
        claim(&data, "--data-dir").unwrap();
        let mode = std::fs::metadata(&data).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o700);
    }
}
