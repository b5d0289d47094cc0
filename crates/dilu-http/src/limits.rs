//! How long a connection may take, and how many may be open.

use std::time::Duration;

/// The limits every listener applies.
#[derive(Debug, Clone)]
pub struct Limits {
    /// Time a connection has to deliver a whole request head, both after it is accepted and between requests
    /// on a kept-alive connection: an idle connection is closed after it.
    pub header_read: Duration,
    /// Time a request's body has to arrive in full, counted from its head.
    pub body_read: Duration,
    /// Most connections open at once (`None`: derived from the open-file limit by
    /// [`Limits::connection_cap`]). At the cap the longest-idle connection is closed to admit a new one; when
    /// every connection is busy, new ones wait in the kernel's backlog.
    pub max_connections: Option<usize>,
    /// How long a graceful stop waits for requests in flight.
    pub shutdown_grace: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            header_read: Duration::from_secs(15),
            body_read: Duration::from_secs(60),
            max_connections: None,
            shutdown_grace: Duration::from_secs(30),
        }
    }
}

impl Limits {
    /// The connection cap for a process allowed `open_files` descriptors: a quarter (at least 64) is kept
    /// for everything else the process opens (its store, logs, connections to instances, pipes).
    pub fn connection_cap(open_files: u64) -> usize {
        let reserve = (open_files / 4).max(64);
        usize::try_from(open_files.saturating_sub(reserve))
            .unwrap_or(usize::MAX)
            .max(16)
    }
}

/// The process's soft limit on open files (`RLIMIT_NOFILE`), or 1,024 when it cannot be read.
pub fn open_file_limit() -> u64 {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes into the struct we own.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } != 0 {
        return 1024;
    }
    if limit.rlim_cur == libc::RLIM_INFINITY {
        u64::MAX
    } else {
        limit.rlim_cur
    }
}

/// Raises the soft open-file limit to the hard one (what servers need, and what the hard limit allows) and
/// returns the soft limit now in force.
pub fn raise_open_file_limit() -> u64 {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit read and write a struct we own.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) == 0 && limit.rlim_cur < limit.rlim_max
        {
            let raised = libc::rlimit {
                rlim_cur: limit.rlim_max,
                rlim_max: limit.rlim_max,
            };
            libc::setrlimit(libc::RLIMIT_NOFILE, &raised);
        }
    }
    open_file_limit()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cap_keeps_a_quarter_of_the_descriptors_and_at_least_64() {
        assert_eq!(Limits::connection_cap(1024), 768);
        assert_eq!(Limits::connection_cap(200), 136);
        assert_eq!(Limits::connection_cap(1 << 20), 786_432);
        assert_eq!(Limits::connection_cap(10), 16);
    }
}
