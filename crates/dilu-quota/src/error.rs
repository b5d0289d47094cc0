//! Errors of opening, creating and writing a quota channel.

use std::path::PathBuf;

/// Why a channel could not be created, opened or changed.
#[derive(Debug, thiserror::Error)]
pub enum QuotaError {
    /// A system call on the channel file failed.
    // The OS error is part of the message, not a `source`, so reports print it once.
    #[error("{op} {path}: {reason}")]
    Io {
        /// What was being done (`open`, `mmap`, …).
        op: &'static str,
        /// The channel file.
        path: PathBuf,
        /// The operating system's error.
        reason: std::io::Error,
    },
    /// The file is shorter than the layout, e.g. truncated or not a channel at all.
    #[error("{path}: file is {len} bytes, a quota channel needs {need}")]
    TooSmall {
        /// The channel file.
        path: PathBuf,
        /// Its size.
        len: u64,
        /// The layout's size.
        need: u64,
    },
    /// The first eight bytes are not `DILUQOTA`.
    #[error("{path}: bad magic {found:#018x} (expected \"DILUQOTA\"): not a quota channel")]
    BadMagic {
        /// The channel file.
        path: PathBuf,
        /// What was there.
        found: u64,
    },
    /// The file was written by an incompatible layout version.
    #[error("{path}: layout version {found}, this build reads version {supported}")]
    UnsupportedVersion {
        /// The channel file.
        path: PathBuf,
        /// The file's version.
        found: u32,
        /// The version this build reads.
        supported: u32,
    },
    /// The header's recorded layout size disagrees with this version's layout.
    #[error("{path}: header records a {found}-byte layout, version 1 is {expected} bytes")]
    LayoutSize {
        /// The channel file.
        path: PathBuf,
        /// The recorded size.
        found: u32,
        /// This version's size.
        expected: u32,
    },
    /// Under `DILU_QUOTA_DIR` the channel did not appear within the wait (`DILU_QUOTA_WAIT_S`): the agent has
    /// not created it (yet).
    #[error(
        "{path}: no quota channel appeared within {:.1} s (DILU_QUOTA_DIR is set, so the node agent creates it; \
         is the agent running on this node? DILU_QUOTA_WAIT_S sets the wait)",
        waited.as_secs_f64()
    )]
    NotCreated {
        /// The channel file waited for.
        path: PathBuf,
        /// How long it was waited for.
        waited: std::time::Duration,
    },
    /// A control value is outside its allowed range.
    #[error("{field} = {value}: {rule}")]
    InvalidParameter {
        /// The field, as named in the layout.
        field: &'static str,
        /// The rejected value, printed.
        value: String,
        /// The rule it breaks.
        rule: &'static str,
    },
}
