//! Waiting for a channel the agent has not created yet.
//!
//! Under `dilu up` the agent creates an instance's channel before it starts the process, so a missing channel
//! is an error. In Kubernetes the kubelet starts the pod and the agent creates its channel when it sees the pod
//! bound to the node: the container can start first. The device plugin marks that situation by setting
//! [`QUOTA_DIR_ENV`] (`DILU_QUOTA_DIR`, the mount of the device's channel directory); a runtime that finds it
//! set and its [`QUOTA_FILE_ENV`](crate::QUOTA_FILE_ENV) missing waits for the file, polling every
//! [`CHANNEL_POLL`], for at most [`QUOTA_WAIT_ENV`] (`DILU_QUOTA_WAIT_S`, seconds, default
//! [`DEFAULT_CHANNEL_WAIT`]). The agent publishes a channel by renaming a complete file into place, so once the
//! path exists it can be opened. Without `DILU_QUOTA_DIR` nothing waits.

use std::ffi::OsString;
use std::path::Path;
use std::time::{Duration, Instant};

use crate::QUOTA_FILE_ENV;

/// Set (non-empty) by the device plugin in Kubernetes: the directory of the device's channels. Its presence
/// makes a missing channel something to wait for.
pub const QUOTA_DIR_ENV: &str = "DILU_QUOTA_DIR";
/// Set by the controller on every instance container in Kubernetes: its pod UID (downward API `metadata.uid`).
/// With [`QUOTA_DIR_ENV`] it names the pod's channel, `$DILU_QUOTA_DIR/$DILU_POD_UID` ([`channel_from_env`]).
pub const POD_UID_ENV: &str = "DILU_POD_UID";
/// The most seconds to wait for a missing channel under [`QUOTA_DIR_ENV`] (a decimal number; 0 = no wait).
pub const QUOTA_WAIT_ENV: &str = "DILU_QUOTA_WAIT_S";
/// The wait when [`QUOTA_WAIT_ENV`] is unset or not a number.
pub const DEFAULT_CHANNEL_WAIT: Duration = Duration::from_secs(30);
/// How often the path is looked at while waiting.
pub const CHANNEL_POLL: Duration = Duration::from_millis(50);
/// The longest wait [`QUOTA_WAIT_ENV`] can ask for (a day), so no value overflows a deadline.
const MAX_CHANNEL_WAIT: Duration = Duration::from_secs(86_400);

/// Waits until `path` exists, looking every [`CHANNEL_POLL`] (or sooner, near the deadline), for at most
/// `timeout`. Returns whether it exists; `true` at once when it already does. Sleeps on the calling thread and
/// takes no lock.
pub fn wait_for_channel(path: &Path, timeout: Duration) -> bool {
    let deadline = Instant::now() + timeout.min(MAX_CHANNEL_WAIT);
    loop {
        if path.exists() {
            return true;
        }
        let now = Instant::now();
        if now >= deadline {
            return false;
        }
        std::thread::sleep(CHANNEL_POLL.min(deadline - now));
    }
}

/// The channel (or colon-separated channels) the environment names: [`QUOTA_FILE_ENV`] when it is set and
/// non-empty (`dilu up`'s agent sets it); else, in Kubernetes, `$DILU_QUOTA_DIR/$DILU_POD_UID` — the device
/// plugin sets the directory of the device's channels and the controller the pod UID, and neither can name the
/// other's variable. `None` when neither names a channel, or when the pod UID is not one plain path segment.
pub fn channel_from_env() -> Option<OsString> {
    if let Some(file) = std::env::var_os(QUOTA_FILE_ENV).filter(|v| !v.is_empty()) {
        return Some(file);
    }
    let dir = std::env::var_os(QUOTA_DIR_ENV).filter(|v| !v.is_empty())?;
    let uid = std::env::var(POD_UID_ENV).ok()?;
    pod_channel(Path::new(&dir), &uid).map(OsString::from)
}

/// `dir/uid` when `uid` is one plain path segment (what a Kubernetes UID always is).
fn pod_channel(dir: &Path, uid: &str) -> Option<std::path::PathBuf> {
    let plain = !uid.is_empty() && uid != "." && uid != ".." && !uid.contains(['/', ':', '\0']);
    plain.then(|| dir.join(uid))
}

/// How long to wait for a missing channel, from the environment: `None` when [`QUOTA_DIR_ENV`] is unset or
/// empty (do not wait: a missing channel is handled as it always was), else [`QUOTA_WAIT_ENV`] parsed as
/// seconds, or [`DEFAULT_CHANNEL_WAIT`] when that is unset, negative or not a number.
pub fn channel_wait_from_env() -> Option<Duration> {
    std::env::var_os(QUOTA_DIR_ENV).filter(|v| !v.is_empty())?;
    Some(parse_wait(std::env::var(QUOTA_WAIT_ENV).ok().as_deref()))
}

/// [`QUOTA_WAIT_ENV`]'s value as a duration (see [`channel_wait_from_env`]).
fn parse_wait(value: Option<&str>) -> Duration {
    value
        .and_then(|v| v.trim().parse::<f64>().ok())
        .filter(|s| s.is_finite() && *s >= 0.0)
        .map_or(DEFAULT_CHANNEL_WAIT, |s| {
            Duration::from_secs_f64(s.min(MAX_CHANNEL_WAIT.as_secs_f64()))
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_pod_channel_is_the_uid_under_the_quota_dir_and_only_a_plain_uid_names_one() {
        let dir = Path::new("/run/dilu/quota");
        assert_eq!(
            pod_channel(dir, "0b6f3c1e-7d2a-4c1b-9a51-3f0c2d9e8a11"),
            Some(dir.join("0b6f3c1e-7d2a-4c1b-9a51-3f0c2d9e8a11"))
        );
        for bad in ["", ".", "..", "../x", "a/b", "a:b"] {
            assert_eq!(pod_channel(dir, bad), None, "{bad:?}");
        }
    }

    #[test]
    fn a_channel_created_meanwhile_ends_the_wait_when_it_appears() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("pod-uid");
        let creator = {
            let path = path.clone();
            std::thread::spawn(move || {
                std::thread::sleep(Duration::from_millis(200));
                std::fs::write(&path, b"channel").unwrap();
            })
        };
        let start = Instant::now();
        assert!(wait_for_channel(&path, Duration::from_secs(10)));
        let waited = start.elapsed();
        assert!(
            waited >= Duration::from_millis(200) && waited < Duration::from_secs(2),
            "waited {waited:?}"
        );
        creator.join().unwrap();
        // Already there: no wait at all.
        let start = Instant::now();
        assert!(wait_for_channel(&path, Duration::from_secs(10)));
        assert!(start.elapsed() < CHANNEL_POLL);
    }

    #[test]
    fn a_channel_that_never_appears_ends_the_wait_at_the_bound() {
        let dir = tempfile::tempdir().unwrap();
        let start = Instant::now();
        assert!(!wait_for_channel(
            &dir.path().join("never"),
            Duration::from_millis(120)
        ));
        let waited = start.elapsed();
        assert!(
            waited >= Duration::from_millis(120) && waited < Duration::from_secs(2),
            "waited {waited:?}"
        );
        assert!(!wait_for_channel(&dir.path().join("never"), Duration::ZERO));
    }

    #[test]
    fn the_bound_is_read_as_seconds_with_a_default() {
        assert_eq!(parse_wait(None), DEFAULT_CHANNEL_WAIT);
        assert_eq!(parse_wait(Some("1")), Duration::from_secs(1));
        assert_eq!(parse_wait(Some(" 0.25 ")), Duration::from_millis(250));
        assert_eq!(parse_wait(Some("0")), Duration::ZERO);
        for bad in ["", "soon", "-1", "NaN", "inf"] {
            assert_eq!(parse_wait(Some(bad)), DEFAULT_CHANNEL_WAIT, "{bad}");
        }
        assert_eq!(parse_wait(Some("1e12")), MAX_CHANNEL_WAIT);
    }
}
