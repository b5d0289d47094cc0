//! One listening socket's connections spread evenly over several event loops.
//!
//! A server with one single-threaded event loop per core (the standalone gateway) used to let every loop
//! accept from the same socket. Whichever loop woke first took the whole burst: 16 keep-alive connections
//! opened together all landed on one loop in about half of the trials, which then ran one core flat out
//! while the other idled. Here one acceptor takes every connection and hands it to the loop that holds the
//! fewest (Envoy's "exact balance" does the same for its worker threads). The hand-off costs one wake-up of
//! the chosen loop per connection, not per request.
//!
//! ```no_run
//! # async fn run() -> std::io::Result<()> {
//! let socket = std::net::TcpListener::bind("127.0.0.1:0")?;
//! let (shares, acceptor) = dilu_http::balance(socket, 2)?;
//! tokio::spawn(acceptor); // on any runtime; each share goes to dilu_http::serve on its own event loop
//! # drop(shares);
//! # Ok(())
//! # }
//! ```

use std::future::Future;
use std::io;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use tokio::sync::mpsc;

use crate::serve::Peer;

/// How many accepted connections may wait for one event loop to take them; past that the acceptor waits
/// (and the kernel's backlog holds the rest).
const QUEUE: usize = 64;

/// A connection the acceptor took, on its way to an event loop.
pub(crate) struct Handed {
    pub(crate) stream: std::net::TcpStream,
    pub(crate) peer: Peer,
    pub(crate) load: LoadGuard,
}

/// One event loop's share of a balanced listener: pass it to [`crate::serve`] as the listener.
pub struct Share {
    pub(crate) queue: mpsc::Receiver<Handed>,
}

/// Counts a connection against its event loop from the hand-off until the connection is closed.
pub(crate) struct LoadGuard(Arc<AtomicUsize>);

impl Drop for LoadGuard {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

/// One event loop as the acceptor sees it.
struct Lane {
    queue: mpsc::Sender<Handed>,
    /// Connections handed to the loop and not closed yet (those waiting in its queue included).
    load: Arc<AtomicUsize>,
}

/// Splits `listener` into `loops` shares (at least one) and the acceptor that feeds them: each connection
/// goes to the share holding the fewest open connections, ties going round in turn. Run the acceptor on
/// any runtime; it ends when every share is dropped.
///
/// Errors if the socket cannot be made non-blocking or registered with the current runtime's reactor (so
/// call it within a runtime).
pub fn balance(
    listener: std::net::TcpListener,
    loops: usize,
) -> io::Result<(Vec<Share>, impl Future<Output = ()> + Send + 'static)> {
    listener.set_nonblocking(true)?;
    let listener = tokio::net::TcpListener::from_std(listener)?;
    let (lanes, shares): (Vec<Lane>, Vec<Share>) = (0..loops.max(1))
        .map(|_| {
            let (queue, receiver) = mpsc::channel(QUEUE);
            (
                Lane {
                    queue,
                    load: Arc::new(AtomicUsize::new(0)),
                },
                Share { queue: receiver },
            )
        })
        .collect();
    Ok((shares, accept_loop(listener, lanes)))
}

async fn accept_loop(listener: tokio::net::TcpListener, lanes: Vec<Lane>) {
    let mut turn = 0usize;
    loop {
        let (stream, addr) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(_) => {
                // A client that went away, or no descriptor left (the loops' caps make room): retry soon.
                tokio::time::sleep(Duration::from_millis(5)).await;
                continue;
            }
        };
        // Responses are written whole; Nagle would only add latency to small ones.
        let _ = stream.set_nodelay(true);
        // Out of this runtime's reactor, so that the chosen loop registers it with its own.
        let Ok(stream) = stream.into_std() else {
            continue;
        };
        let peer = Peer {
            addr: Some(addr),
            uid: None,
        };
        let mut handed = Some((stream, peer));
        while let Some((stream, peer)) = handed.take() {
            let Some(lane) = least_loaded(&lanes, turn) else {
                return; // every loop has stopped
            };
            turn = turn.wrapping_add(1);
            let lane = &lanes[lane];
            lane.load.fetch_add(1, Ordering::AcqRel);
            let load = LoadGuard(Arc::clone(&lane.load));
            let connection = Handed { stream, peer, load };
            match lane.queue.try_send(connection) {
                Ok(()) => {}
                // That loop is behind: wait for it (the next connections stay in the kernel's backlog).
                Err(mpsc::error::TrySendError::Full(connection)) => {
                    if let Err(mpsc::error::SendError(back)) = lane.queue.send(connection).await {
                        handed = Some((back.stream, back.peer));
                    }
                }
                // That loop has stopped: try another.
                Err(mpsc::error::TrySendError::Closed(back)) => {
                    handed = Some((back.stream, back.peer));
                }
            }
        }
    }
}

/// The open lane with the fewest connections, scanning from `turn` so that ties take turns.
fn least_loaded(lanes: &[Lane], turn: usize) -> Option<usize> {
    let n = lanes.len();
    (0..n)
        .map(|i| (turn + i) % n)
        .filter(|&i| !lanes[i].queue.is_closed())
        .min_by_key(|&i| lanes[i].load.load(Ordering::Acquire))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lanes(loads: &[usize]) -> (Vec<Lane>, Vec<mpsc::Receiver<Handed>>) {
        loads
            .iter()
            .map(|&load| {
                let (queue, receiver) = mpsc::channel(1);
                (
                    Lane {
                        queue,
                        load: Arc::new(AtomicUsize::new(load)),
                    },
                    receiver,
                )
            })
            .unzip()
    }

    #[test]
    fn the_least_loaded_open_lane_wins_and_ties_take_turns() {
        let (lanes, mut receivers) = lanes(&[3, 1, 1, 2]);
        assert_eq!(least_loaded(&lanes, 0), Some(1));
        assert_eq!(least_loaded(&lanes, 1), Some(1));
        assert_eq!(least_loaded(&lanes, 2), Some(2));
        assert_eq!(least_loaded(&lanes, 3), Some(1));
        receivers[1].close();
        assert_eq!(least_loaded(&lanes, 0), Some(2));
        for receiver in &mut receivers {
            receiver.close();
        }
        assert_eq!(least_loaded(&lanes, 0), None);
    }
}
