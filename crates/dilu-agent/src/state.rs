//! The agent's state file: what it must remember across its own restarts (the instances it runs, their
//! pids and start times, so that a restarted agent re-adopts them instead of starting duplicates).
//!
//! [`save`] writes JSON to a temporary file in the same directory, fsyncs it, renames it over the target and
//! fsyncs the directory, so a crash at any moment leaves either the old state or the new one — never a
//! half-written file. [`load`] refuses a corrupt file with an error naming the path and the line and column
//! where parsing failed: state is never silently discarded.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use serde::Serialize;
use serde::de::DeserializeOwned;

/// The state file's permissions: it names processes the agent controls, so only the agent's user reads it.
pub const STATE_FILE_MODE: u32 = 0o600;

/// Why the state file could not be written or read.
#[derive(Debug, thiserror::Error)]
pub enum StateError {
    /// A file-system operation failed.
    // The OS error is part of the message, not a `source`, so reports print it once.
    #[error("{op} {path}: {reason}")]
    Io {
        /// What was being done (`create`, `write`, `fsync`, `rename`, `read`, …).
        op: &'static str,
        /// The file or directory concerned.
        path: PathBuf,
        /// The operating system's error.
        reason: io::Error,
    },
    /// The file exists but is not valid JSON for the expected type; it is left untouched.
    #[error("{path}: corrupt state file (left in place, not discarded): {reason}")]
    Corrupt {
        /// The state file.
        path: PathBuf,
        /// serde's message, with the line and column of the problem.
        reason: serde_json::Error,
    },
    /// The value could not be serialised (e.g. a map with non-string keys).
    #[error("{path}: cannot serialise state: {reason}")]
    Serialize {
        /// The state file that was to be written.
        path: PathBuf,
        /// serde's message.
        reason: serde_json::Error,
    },
}

fn io_err<'a>(op: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> StateError + 'a {
    move |reason| StateError::Io {
        op,
        path: path.to_path_buf(),
        reason,
    }
}

/// Distinguishes temporary files of concurrent saves within one process.
static TEMP_COUNTER: AtomicU64 = AtomicU64::new(0);

/// Writes `value` as pretty JSON to `path`, atomically, with mode `0o600`.
///
/// The JSON goes to a hidden temporary file next to `path` (same directory, hence same file system), which is
/// fsync'd and then renamed over `path`; the directory is fsync'd afterwards so the rename itself is durable.
/// On any failure the temporary file is removed and `path` keeps its previous content.
pub fn save<T: Serialize>(path: &Path, value: &T) -> Result<(), StateError> {
    let mut json = serde_json::to_vec_pretty(value).map_err(|reason| StateError::Serialize {
        path: path.to_path_buf(),
        reason,
    })?;
    json.push(b'\n');

    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    let file_name = path.file_name().ok_or_else(|| StateError::Io {
        op: "save",
        path: path.to_path_buf(),
        reason: io::Error::new(io::ErrorKind::InvalidInput, "state path has no file name"),
    })?;
    let mut temp_name = std::ffi::OsString::from(".");
    temp_name.push(file_name);
    temp_name.push(format!(
        ".tmp.{}.{}",
        std::process::id(),
        TEMP_COUNTER.fetch_add(1, Ordering::Relaxed)
    ));
    let temp = dir.join(temp_name);

    let result = write_synced(&temp, &json)
        .and_then(|()| fs::rename(&temp, path).map_err(io_err("rename", path)));
    if result.is_err() {
        // Best effort: the temporary file may not even exist if creating it was what failed.
        let _ = fs::remove_file(&temp);
        return result;
    }
    // Make the rename durable. Some file systems refuse fsync on a directory; the data is already safe.
    if let Ok(d) = File::open(dir) {
        let _ = d.sync_all();
    }
    Ok(())
}

fn write_synced(temp: &Path, bytes: &[u8]) -> Result<(), StateError> {
    let mut file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(STATE_FILE_MODE)
        .open(temp)
        .map_err(io_err("create", temp))?;
    // The umask can only remove bits from 0o600, but set the mode explicitly so it is exactly 0o600.
    file.set_permissions(fs::Permissions::from_mode(STATE_FILE_MODE))
        .map_err(io_err("chmod", temp))?;
    file.write_all(bytes).map_err(io_err("write", temp))?;
    file.sync_all().map_err(io_err("fsync", temp))
}

/// Reads the state saved at `path`.
///
/// `Ok(None)` when the file does not exist (first start). A file that exists but does not parse as `T` is an
/// error ([`StateError::Corrupt`]) naming the path and the line and column; the file is left as it is.
pub fn load<T: DeserializeOwned>(path: &Path) -> Result<Option<T>, StateError> {
    let bytes = match fs::read(path) {
        Ok(b) => b,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(reason) => {
            return Err(StateError::Io {
                op: "read",
                path: path.to_path_buf(),
                reason,
            });
        }
    };
    serde_json::from_slice(&bytes)
        .map(Some)
        .map_err(|reason| StateError::Corrupt {
            path: path.to_path_buf(),
            reason,
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Deserialize;

    #[derive(Debug, PartialEq, Serialize, Deserialize)]
    struct Instance {
        id: String,
        pid: u32,
        start_ticks: u64,
    }

    #[derive(Debug, PartialEq, Serialize, Deserialize)]
    struct AgentState {
        generation: u64,
        instances: Vec<Instance>,
    }

    fn sample() -> AgentState {
        AgentState {
            generation: 7,
            instances: vec![
                Instance {
                    id: "resnet-0".into(),
                    pid: 4242,
                    start_ticks: 123_456,
                },
                Instance {
                    id: "bert-1".into(),
                    pid: 77,
                    start_ticks: 9,
                },
            ],
        }
    }

    fn dir_entries(dir: &Path) -> Vec<String> {
        let mut names: Vec<String> = fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        names
    }

    #[test]
    fn round_trip_with_mode_0600_and_no_temp_files() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("agent-state.json");
        save(&path, &sample()).unwrap();
        let back: AgentState = load(&path).unwrap().unwrap();
        assert_eq!(back, sample());
        assert_eq!(
            fs::metadata(&path).unwrap().permissions().mode() & 0o777,
            0o600
        );
        let text = fs::read_to_string(&path).unwrap();
        assert!(
            text.contains("\n  \"generation\": 7"),
            "pretty JSON expected, got {text}"
        );
        assert_eq!(
            dir_entries(dir.path()),
            vec!["agent-state.json".to_string()]
        );
    }

    #[test]
    fn overwrite_replaces_and_leaves_no_temp_files() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.json");
        save(&path, &sample()).unwrap();
        // A pre-existing file with looser permissions is replaced by a 0o600 one.
        fs::set_permissions(&path, fs::Permissions::from_mode(0o644)).unwrap();
        let mut next = sample();
        next.generation = 8;
        next.instances.pop();
        save(&path, &next).unwrap();
        assert_eq!(load::<AgentState>(&path).unwrap(), Some(next));
        assert_eq!(
            fs::metadata(&path).unwrap().permissions().mode() & 0o777,
            0o600
        );
        assert_eq!(dir_entries(dir.path()), vec!["state.json".to_string()]);
    }

    #[test]
    fn missing_file_is_none() {
        let dir = tempfile::tempdir().unwrap();
        let got: Option<AgentState> = load(&dir.path().join("nope.json")).unwrap();
        assert!(got.is_none());
    }

    #[test]
    fn corrupt_file_is_an_error_naming_path_and_position_and_is_kept() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.json");
        fs::write(
            &path,
            "{\n  \"generation\": 7,\n  \"instances\": [ {\"id\": \n",
        )
        .unwrap();
        let err = load::<AgentState>(&path).unwrap_err();
        assert!(matches!(err, StateError::Corrupt { .. }), "{err:?}");
        let msg = err.to_string();
        assert!(msg.contains(&path.display().to_string()), "{msg}");
        assert!(msg.contains("line 4"), "{msg}");
        assert!(msg.contains("column"), "{msg}");
        // Not discarded: the bytes are still there for an operator to inspect.
        assert!(
            fs::read_to_string(&path)
                .unwrap()
                .contains("\"generation\": 7")
        );

        // Valid JSON of the wrong shape is corrupt too, and the message names the field.
        fs::write(&path, "{\"generation\": \"seven\", \"instances\": []}").unwrap();
        let msg = load::<AgentState>(&path).unwrap_err().to_string();
        assert!(
            msg.contains("invalid type") && msg.contains("line 1"),
            "{msg}"
        );
    }

    #[test]
    fn failed_save_leaves_old_state_and_no_temp_files() {
        use std::collections::HashMap;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.json");
        save(&path, &sample()).unwrap();
        // JSON object keys must be strings: serialising this map fails before anything is written.
        let bad: HashMap<(u32, u32), u32> = [((1, 2), 3)].into_iter().collect();
        let err = save(&path, &bad).unwrap_err();
        assert!(matches!(err, StateError::Serialize { .. }), "{err:?}");
        // Saving into a directory that does not exist fails at create, naming the temporary file.
        let err = save(&dir.path().join("missing/state.json"), &sample()).unwrap_err();
        assert!(
            matches!(err, StateError::Io { op: "create", .. }),
            "{err:?}"
        );
        assert_eq!(load::<AgentState>(&path).unwrap(), Some(sample()));
        assert_eq!(dir_entries(dir.path()), vec!["state.json".to_string()]);
    }
}
