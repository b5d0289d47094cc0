//! One listening socket's connections kept even across several event loops.
//!
//! A server with one single-threaded event loop per core (the standalone gateway) lets every loop accept from
//! the same socket. Left alone, whichever loop wakes first takes a whole burst: 16 keep-alive connections
//! opened together all landed on one loop in about half of the trials, which then ran one core flat out
//! while the other idled. So each loop counts the connections it holds, and a loop that accepts a connection
//! while it holds more than one above the least-loaded loop hands it to that loop instead (Envoy's "exact
//! balance" keeps its workers even in the same spirit, with one lock). A hand-off costs one wake-up of the
//! other loop; when the loops are even, as they mostly are under a steady churn of short connections, a
//! connection stays where it was accepted and costs nothing more than before.
//!
//! ```no_run
//! # fn run() -> std::io::Result<()> {
//! let socket = std::net::TcpListener::bind("127.0.0.1:0")?;
//! for share in dilu_http::balance(socket, 2)? {
//!     // each share goes to dilu_http::serve on its own event loop (thread + single-threaded runtime)
//! #   drop(share);
//! }
//! # Ok(())
//! # }
//! ```

use std::io;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;

use crate::serve::Peer;

/// How many handed-over connections may wait for one event loop to take them; past that the accepting loop
/// keeps the connection itself.
const QUEUE: usize = 64;

/// How many more connections than the least-loaded loop a loop may hold and still keep one it accepts.
const SLACK: usize = 1;

/// One event loop's share of a balanced listener: pass it to [`crate::serve`] as the listener, on the runtime
/// of the loop it belongs to.
pub struct Share {
    index: usize,
    listener: std::net::TcpListener,
    lanes: Arc<Lanes>,
    queue: mpsc::Receiver<Handed>,
}

/// Splits `listener` into `loops` shares (at least one), one per event loop.
///
/// Errors if the socket cannot be made non-blocking or duplicated.
pub fn balance(listener: std::net::TcpListener, loops: usize) -> io::Result<Vec<Share>> {
    listener.set_nonblocking(true)?;
    let loops = loops.max(1);
    let (queues, receivers): (Vec<_>, Vec<_>) = (0..loops).map(|_| mpsc::channel(QUEUE)).unzip();
    let lanes = Arc::new(Lanes {
        loads: (0..loops).map(|_| Arc::new(AtomicUsize::new(0))).collect(),
        queues,
    });
    receivers
        .into_iter()
        .enumerate()
        .map(|(index, queue)| {
            Ok(Share {
                index,
                listener: listener.try_clone()?,
                lanes: Arc::clone(&lanes),
                queue,
            })
        })
        .collect()
}

/// Every loop's count and hand-off queue, shared by all shares.
struct Lanes {
    /// Connections each loop holds (those handed to it and not taken yet included).
    loads: Vec<Arc<AtomicUsize>>,
    queues: Vec<mpsc::Sender<Handed>>,
}

impl Lanes {
    /// Counts a connection against loop `index` until the guard is dropped.
    fn count(&self, index: usize) -> LoadGuard {
        let load = &self.loads[index];
        load.fetch_add(1, Ordering::AcqRel);
        LoadGuard(Arc::clone(load))
    }

    /// The loop holding the fewest connections, scanning from `turn` so that ties take turns.
    fn least_loaded(&self, turn: usize) -> usize {
        let n = self.loads.len();
        (0..n)
            .map(|i| (turn + i) % n)
            .min_by_key(|&i| self.loads[i].load(Ordering::Acquire))
            .unwrap_or(0)
    }

    /// Where a connection loop `me` just accepted should go: `me`, unless `me` holds more than [`SLACK`]
    /// above the least-loaded loop.
    fn place(&self, me: usize, turn: usize) -> usize {
        let target = self.least_loaded(turn);
        let mine = self.loads[me].load(Ordering::Acquire);
        let least = self.loads[target].load(Ordering::Acquire);
        if mine <= least + SLACK { me } else { target }
    }
}

/// Counts a connection against its event loop until the connection is closed.
pub(crate) struct LoadGuard(Arc<AtomicUsize>);

impl Drop for LoadGuard {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

/// A connection one loop accepted for another.
struct Handed {
    stream: std::net::TcpStream,
    peer: Peer,
    load: LoadGuard,
}

/// A share registered with its event loop's reactor (see [`Share::register`]).
pub(crate) struct Balanced {
    index: usize,
    listener: TcpListener,
    lanes: Arc<Lanes>,
    queue: mpsc::Receiver<Handed>,
    turn: usize,
}

impl Share {
    /// Registers the share's socket with the current runtime (its event loop's).
    pub(crate) fn register(self) -> io::Result<Balanced> {
        Ok(Balanced {
            index: self.index,
            listener: TcpListener::from_std(self.listener)?,
            lanes: self.lanes,
            queue: self.queue,
            turn: self.index,
        })
    }
}

impl Balanced {
    /// The next connection this loop serves: one another loop handed over, or one it accepted and keeps.
    /// Cancel-safe: nothing is held across an await.
    pub(crate) async fn accept(&mut self) -> io::Result<(TcpStream, Peer, LoadGuard)> {
        loop {
            tokio::select! {
                Some(handed) = self.queue.recv() => {
                    return Ok((TcpStream::from_std(handed.stream)?, handed.peer, handed.load));
                }
                accepted = self.listener.accept() => {
                    let (stream, addr) = accepted?;
                    // Responses are written whole; Nagle would only add latency to small ones.
                    let _ = stream.set_nodelay(true);
                    let peer = Peer { addr: Some(addr), uid: None };
                    self.turn = self.turn.wrapping_add(1);
                    let target = self.lanes.place(self.index, self.turn);
                    if target == self.index {
                        return Ok((stream, peer, self.lanes.count(self.index)));
                    }
                    // Out of this loop's reactor, so that the other loop registers it with its own.
                    let Ok(stream) = stream.into_std() else { continue };
                    let handed = Handed { stream, peer, load: self.lanes.count(target) };
                    match self.lanes.queues[target].try_send(handed) {
                        Ok(()) => {}
                        // That loop is far behind or has stopped: serve it here after all.
                        Err(mpsc::error::TrySendError::Full(back) | mpsc::error::TrySendError::Closed(back)) => {
                            let Handed { stream, peer, load } = back;
                            drop(load);
                            return Ok((TcpStream::from_std(stream)?, peer, self.lanes.count(self.index)));
                        }
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lanes(loads: &[usize]) -> Lanes {
        Lanes {
            loads: loads
                .iter()
                .map(|&load| Arc::new(AtomicUsize::new(load)))
                .collect(),
            queues: loads.iter().map(|_| mpsc::channel(1).0).collect(),
        }
    }

    #[test]
    fn the_least_loaded_lane_wins_and_ties_take_turns() {
        let lanes = lanes(&[3, 1, 1, 2]);
        assert_eq!(lanes.least_loaded(0), 1);
        assert_eq!(lanes.least_loaded(1), 1);
        assert_eq!(lanes.least_loaded(2), 2);
        assert_eq!(lanes.least_loaded(3), 1);
    }

    #[test]
    fn a_loop_keeps_what_it_accepts_unless_it_holds_more_than_one_above_the_least() {
        let lanes = lanes(&[3, 2, 4]);
        assert_eq!(lanes.place(0, 0), 0, "3 ≤ 2 + 1: kept");
        assert_eq!(
            lanes.place(2, 0),
            1,
            "4 > 2 + 1: handed to the least loaded"
        );
        assert_eq!(lanes.place(1, 0), 1);
        let guard = lanes.count(1);
        let guard2 = lanes.count(1);
        assert_eq!(lanes.loads[1].load(Ordering::Acquire), 4);
        assert_eq!(
            lanes.place(2, 0),
            2,
            "now 0 holds the fewest (3) and 4 ≤ 3 + 1"
        );
        drop((guard, guard2));
        assert_eq!(lanes.loads[1].load(Ordering::Acquire), 2);
    }
}
