//! The live connections of one listener: which are idle, and since when, so that the longest-idle one can be
//! closed when the listener is at its connection cap, and a connection idle for longer than the header-read
//! timeout is closed by the listener's sweep ([`Registry::expire_idle`]).

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Instant;

use atomic_waker::AtomicWaker;

/// One connection's activity, shared by its task and the registry.
pub(crate) struct Connection {
    id: u64,
    epoch: Instant,
    /// Requests whose response has not been produced yet.
    in_flight: AtomicUsize,
    /// Microseconds since `epoch` when the connection last became idle, was accepted, or wrote to its client.
    idle_since_us: AtomicU64,
    /// The registry's coarse clock (microseconds since `epoch`), read when the connection writes.
    clock_us: Arc<AtomicU64>,
    evicting: AtomicBool,
    /// Chosen by the sweep: close at once (nothing is in flight), not gracefully.
    expired: AtomicBool,
    /// The listener is stopping.
    stopping: AtomicBool,
    /// The connection's task, woken when it is chosen to close or the listener stops.
    task: AtomicWaker,
}

impl Connection {
    /// Marks a request as started; the returned guard marks it finished when dropped.
    pub(crate) fn begin(self: &Arc<Self>) -> Active {
        self.in_flight.fetch_add(1, Ordering::AcqRel);
        Active(Arc::clone(self))
    }

    /// Resolves once the connection is to close: the registry chose it (the cap or the sweep) or the listener
    /// is stopping. Cheap to poll again (two atomic loads and a waker check), as a `select!` beside every
    /// request's own future does on each wake-up.
    pub(crate) fn closing(&self) -> impl std::future::Future<Output = ()> + '_ {
        std::future::poll_fn(|cx| {
            self.task.register(cx.waker());
            if self.evicting.load(Ordering::Acquire) || self.stopping.load(Ordering::Acquire) {
                std::task::Poll::Ready(())
            } else {
                std::task::Poll::Pending
            }
        })
    }

    /// Marks the connection chosen to close and wakes its task.
    fn close(&self) {
        self.evicting.store(true, Ordering::Release);
        self.task.wake();
    }

    /// Whether the sweep closed it (idle past the header-read timeout), rather than the cap.
    pub(crate) fn expired(&self) -> bool {
        self.expired.load(Ordering::Acquire)
    }

    /// The connection wrote to its client: it is not idle then (a slow reader of a long response is not cut
    /// off), as of the registry's coarse clock, so that a write costs no clock read.
    pub(crate) fn wrote(&self) {
        self.idle_since_us
            .store(self.clock_us.load(Ordering::Relaxed), Ordering::Release);
    }

    /// When the connection became idle (microseconds since the registry's epoch); `None` while a request is
    /// in progress.
    pub(crate) fn idle_since(&self) -> Option<u64> {
        (self.in_flight.load(Ordering::Acquire) == 0)
            .then(|| self.idle_since_us.load(Ordering::Acquire))
    }
}

/// A request in progress on a connection.
pub(crate) struct Active(Arc<Connection>);

impl Drop for Active {
    fn drop(&mut self) {
        let now = self.0.epoch.elapsed().as_micros() as u64;
        self.0.idle_since_us.store(now, Ordering::Release);
        self.0.in_flight.fetch_sub(1, Ordering::AcqRel);
    }
}

/// The live connections of one listener.
pub(crate) struct Registry {
    epoch: Instant,
    next_id: AtomicU64,
    /// Microseconds since `epoch`, advanced by every sweep.
    clock_us: Arc<AtomicU64>,
    live: Mutex<HashMap<u64, Arc<Connection>>>,
}

impl Default for Registry {
    fn default() -> Self {
        Registry {
            epoch: Instant::now(),
            next_id: AtomicU64::new(0),
            clock_us: Arc::new(AtomicU64::new(0)),
            live: Mutex::new(HashMap::new()),
        }
    }
}

impl Registry {
    /// Records a newly accepted connection (idle until its first request).
    pub(crate) fn register(&self) -> Arc<Connection> {
        let connection = Arc::new(Connection {
            id: self.next_id.fetch_add(1, Ordering::Relaxed),
            epoch: self.epoch,
            in_flight: AtomicUsize::new(0),
            idle_since_us: AtomicU64::new(self.epoch.elapsed().as_micros() as u64),
            clock_us: Arc::clone(&self.clock_us),
            evicting: AtomicBool::new(false),
            expired: AtomicBool::new(false),
            stopping: AtomicBool::new(false),
            task: AtomicWaker::new(),
        });
        self.lock().insert(connection.id, Arc::clone(&connection));
        connection
    }

    /// Forgets a closed connection.
    pub(crate) fn remove(&self, connection: &Connection) {
        self.lock().remove(&connection.id);
    }

    /// Connections open now.
    pub(crate) fn live(&self) -> usize {
        self.lock().len()
    }

    /// Asks the connection that has been idle longest (no request in progress) to close; false when every
    /// connection is busy. Busy connections are never cut.
    pub(crate) fn evict_idle(&self) -> bool {
        let chosen = {
            let live = self.lock();
            live.values()
                .filter(|c| !c.evicting.load(Ordering::Acquire))
                .filter_map(|c| c.idle_since().map(|since| (since, c)))
                .min_by_key(|(since, c)| (*since, c.id))
                .map(|(_, c)| Arc::clone(c))
        };
        match chosen {
            Some(connection) => {
                connection.close();
                true
            }
            None => false,
        }
    }

    /// The sweep: advances the coarse clock and closes every connection that has had no request in
    /// progress and written nothing for `timeout` (a client that says nothing, sends a request head too slowly,
    /// or keeps an idle connection). Returns how many it closed.
    pub(crate) fn expire_idle(&self, timeout: std::time::Duration) -> usize {
        let now = self.epoch.elapsed().as_micros() as u64;
        self.clock_us.store(now, Ordering::Relaxed);
        let timeout = timeout.as_micros() as u64;
        let live = self.lock();
        let mut closed = 0;
        for connection in live.values() {
            let idle_for = connection
                .idle_since()
                .map(|since| now.saturating_sub(since));
            if idle_for.is_some_and(|idle| idle >= timeout)
                && !connection.expired.swap(true, Ordering::AcqRel)
            {
                connection.close();
                closed += 1;
            }
        }
        closed
    }

    /// Tells every connection that the listener stops: each finishes the request it is on and closes.
    pub(crate) fn stop_all(&self) {
        for connection in self.lock().values() {
            connection.stopping.store(true, Ordering::Release);
            connection.task.wake();
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<u64, Arc<Connection>>> {
        self.live.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_longest_idle_connection_goes_first_and_busy_ones_never() {
        let registry = Registry::default();
        let first = registry.register();
        std::thread::sleep(std::time::Duration::from_millis(2));
        let second = registry.register();
        std::thread::sleep(std::time::Duration::from_millis(2));
        let third = registry.register();
        let _busy = first.begin();
        assert!(registry.evict_idle());
        assert!(second.evicting.load(Ordering::Acquire));
        assert!(!first.evicting.load(Ordering::Acquire));
        assert!(registry.evict_idle());
        assert!(third.evicting.load(Ordering::Acquire));
        // Only the busy one is left: nothing to evict.
        assert!(!registry.evict_idle());
        registry.remove(&second);
        registry.remove(&third);
        assert_eq!(registry.live(), 1);
    }

    #[test]
    fn the_sweep_closes_connections_idle_past_the_timeout_only() {
        let registry = Registry::default();
        let idle = registry.register();
        let busy = registry.register();
        let _request = busy.begin();
        std::thread::sleep(std::time::Duration::from_millis(20));
        let writing = registry.register();
        assert_eq!(
            registry.expire_idle(std::time::Duration::from_millis(10)),
            1
        );
        assert!(idle.expired() && !busy.expired() && !writing.expired());
        // A write counts as activity, as of the sweep's clock (which the last sweep set).
        std::thread::sleep(std::time::Duration::from_millis(20));
        assert_eq!(
            registry.expire_idle(std::time::Duration::from_millis(100)),
            0
        );
        writing.wrote();
        assert_eq!(
            registry.expire_idle(std::time::Duration::from_millis(10)),
            0
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
        assert_eq!(
            registry.expire_idle(std::time::Duration::from_millis(10)),
            1
        );
        assert!(writing.expired() && !busy.expired());
    }

    #[test]
    fn a_finished_request_makes_the_connection_the_most_recently_idle() {
        let registry = Registry::default();
        let old = registry.register();
        std::thread::sleep(std::time::Duration::from_millis(2));
        let young = registry.register();
        std::thread::sleep(std::time::Duration::from_millis(2));
        drop(old.begin());
        assert!(registry.evict_idle());
        assert!(young.evicting.load(Ordering::Acquire));
        assert!(!old.evicting.load(Ordering::Acquire));
    }
}
