//! A `mmap`ed region of a channel file, unmapped on drop.

use std::fs::File;
use std::os::fd::AsRawFd;
use std::path::Path;
use std::ptr::NonNull;

use crate::error::QuotaError;

/// Whether a mapping may be written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Access {
    ReadOnly,
    ReadWrite,
}

/// One shared mapping of `len` bytes of a file, starting at a page-aligned offset.
#[derive(Debug)]
pub(crate) struct Mapping {
    ptr: NonNull<u8>,
    len: usize,
}

// SAFETY: the mapping is plain shared memory; every field placed in it is an atomic or written once before
// publication, so references to it may move and be shared between threads.
unsafe impl Send for Mapping {}
// SAFETY: see `Send`.
unsafe impl Sync for Mapping {}

impl Mapping {
    /// Maps `len` bytes of `file` at `offset` (a multiple of the page size) with `MAP_SHARED`.
    pub(crate) fn new(
        file: &File,
        path: &Path,
        offset: usize,
        len: usize,
        access: Access,
    ) -> Result<Self, QuotaError> {
        let prot = match access {
            Access::ReadOnly => libc::PROT_READ,
            Access::ReadWrite => libc::PROT_READ | libc::PROT_WRITE,
        };
        let offset = libc::off_t::try_from(offset).map_err(|_| QuotaError::InvalidParameter {
            field: "offset",
            value: offset.to_string(),
            rule: "must fit in off_t",
        })?;
        // SAFETY: a fresh mapping of a file we hold open; the kernel validates every argument.
        let raw = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                prot,
                libc::MAP_SHARED,
                file.as_raw_fd(),
                offset,
            )
        };
        if raw == libc::MAP_FAILED {
            return Err(QuotaError::Io {
                op: "mmap",
                path: path.to_path_buf(),
                reason: std::io::Error::last_os_error(),
            });
        }
        let ptr = NonNull::new(raw.cast::<u8>()).ok_or_else(|| QuotaError::Io {
            op: "mmap",
            path: path.to_path_buf(),
            reason: std::io::Error::other("mmap returned a null mapping"),
        })?;
        Ok(Self { ptr, len })
    }

    /// The start of the mapping, for casting to a page type that fits in it.
    pub(crate) fn as_ptr(&self) -> *const u8 {
        self.ptr.as_ptr()
    }

    /// Length of the mapping in bytes.
    pub(crate) fn len(&self) -> usize {
        self.len
    }
}

impl Drop for Mapping {
    fn drop(&mut self) {
        // SAFETY: unmaps exactly the region `new` mapped; no reference into it outlives `self` because
        // the channel types only hand out references borrowed from themselves.
        unsafe {
            libc::munmap(self.ptr.as_ptr().cast(), self.len);
        }
    }
}
