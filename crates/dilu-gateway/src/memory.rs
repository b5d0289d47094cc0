//! Giving memory back after large bodies.
//!
//! A burst of large request bodies (say 48 concurrent 8 MiB uploads) makes the gateway hold hundreds of MiB
//! for a moment: the frames of every body in flight. glibc's allocator then keeps most of it: after the
//! first large block is freed it raises its mmap threshold to that size, so later blocks of the server's
//! read buffers (up to ~400 KiB each) come from the heap arenas, where freed memory stays resident (400 MiB
//! was seen after such bursts, 270 MiB with this module's two measures off). Two measures, glibc only:
//!
//! - [`tune_allocator`] fixes the mmap threshold at [`MMAP_THRESHOLD`], so every block at least that large is
//!   its own mapping, returned to the system when freed;
//! - a body of at least [`LARGE_BODY`] bytes holds a [`LargeBody`] guard; when the last such body in flight
//!   is gone, `malloc_trim` returns what the arenas still hold, once per burst (off the event loop).

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering::SeqCst};
use std::time::Duration;

/// Blocks at least this large are mapped on their own (and unmapped when freed).
pub(crate) const MMAP_THRESHOLD: usize = 256 << 10;

/// A request body at least this large counts as large.
pub(crate) const LARGE_BODY: usize = 1 << 20;

/// How long after the last large body the arenas are trimmed (a burst's stragglers come first).
const TRIM_DELAY: Duration = Duration::from_millis(100);

static LARGE_IN_FLIGHT: AtomicUsize = AtomicUsize::new(0);
static TRIM_PENDING: AtomicBool = AtomicBool::new(false);
/// Trims done (for tests).
static TRIMS: AtomicUsize = AtomicUsize::new(0);

/// Sets the allocator up for the gateway (once per process; a no-op off glibc).
pub(crate) fn tune_allocator() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        static ONCE: std::sync::Once = std::sync::Once::new();
        ONCE.call_once(|| {
            // SAFETY: mallopt only changes the allocator's parameters; any value is accepted or refused.
            unsafe {
                libc::mallopt(libc::M_MMAP_THRESHOLD, MMAP_THRESHOLD as libc::c_int);
            }
        });
    }
}

/// Held while a large body is in memory; see the module's documentation.
#[derive(Debug)]
pub(crate) struct LargeBody(());

impl LargeBody {
    pub(crate) fn new() -> Self {
        LARGE_IN_FLIGHT.fetch_add(1, SeqCst);
        LargeBody(())
    }
}

impl Drop for LargeBody {
    fn drop(&mut self) {
        if LARGE_IN_FLIGHT.fetch_sub(1, SeqCst) != 1 || TRIM_PENDING.swap(true, SeqCst) {
            return;
        }
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            TRIM_PENDING.store(false, SeqCst);
            trim();
            return;
        };
        runtime.spawn(async {
            tokio::time::sleep(TRIM_DELAY).await;
            TRIM_PENDING.store(false, SeqCst);
            if LARGE_IN_FLIGHT.load(SeqCst) == 0 {
                let _ = tokio::task::spawn_blocking(trim).await;
            }
        });
    }
}

/// Returns the arenas' free memory to the system.
fn trim() {
    TRIMS.fetch_add(1, SeqCst);
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only releases free memory; it is thread-safe.
    unsafe {
        libc::malloc_trim(0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn the_end_of_a_burst_trims_once() {
        let before = TRIMS.load(SeqCst);
        let burst: Vec<LargeBody> = (0..3).map(|_| LargeBody::new()).collect();
        drop(burst);
        tokio::time::sleep(TRIM_DELAY * 3).await;
        assert_eq!(TRIMS.load(SeqCst), before + 1, "one trim for the burst");
        assert_eq!(LARGE_IN_FLIGHT.load(SeqCst), 0);
    }
}
