//! Errors of the device plugin.

use std::path::PathBuf;

/// What can go wrong serving, registering or allocating.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A file system or socket operation failed.
    #[error("{what} {path}: {source}")]
    Io {
        /// What was being done.
        what: &'static str,
        /// The path it was done on.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// Connecting to a gRPC peer failed.
    #[error("connecting to {path}: {source}")]
    Connect {
        /// The peer's socket.
        path: PathBuf,
        /// The underlying error.
        source: tonic::transport::Error,
    },
    /// A gRPC call failed.
    #[error("{call}: {status}")]
    Call {
        /// The call (`Register`, `Allocate`, …).
        call: &'static str,
        /// What the peer answered.
        status: tonic::Status,
    },
    /// A call did not answer in time.
    #[error("{call}: no answer within {millis} ms")]
    Timeout {
        /// The call.
        call: &'static str,
        /// The time waited.
        millis: u128,
    },
    /// A virtual device ID is not one this plugin offers.
    #[error("device ID {id:?}: {rule}")]
    BadDeviceId {
        /// The ID as received.
        id: String,
        /// The rule it breaks.
        rule: &'static str,
    },
    /// The configuration is unusable.
    #[error("device plugin configuration, {field} = {value:?}: {rule}")]
    Config {
        /// The field.
        field: &'static str,
        /// Its value.
        value: String,
        /// The rule it breaks.
        rule: &'static str,
    },
}

impl Error {
    /// Wraps an I/O error on `path` while doing `what`.
    pub fn io(what: &'static str, path: impl Into<PathBuf>) -> impl FnOnce(std::io::Error) -> Self {
        let path = path.into();
        move |source| Error::Io { what, path, source }
    }
}
