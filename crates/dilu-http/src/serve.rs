//! The accept loop and the per-connection task: HTTP/1.1 with a header-read (and idle) timeout, a body
//! deadline, and at most [`Limits::max_connections`] connections, evicting the longest-idle one to make room.
//!
//! The header-read timeout is enforced by a sweep over the listener's connections (every quarter of the
//! timeout, at most every second) rather than by a timer armed for every request head: a connection with no
//! request in progress that has written nothing for the timeout is closed, so one that says nothing, sends a
//! head too slowly or sits idle goes within a quarter of the timeout after it (writes are stamped with the
//! sweep's clock, so after a write the margin is a quarter either way). Arming, and mostly cancelling, a timer
//! for every request head (plus the wake-ups it caused) cost the gateway about 7 % of its throughput.
//!
//! Each connection starts in the lean HTTP/1.1 loop of [`crate::h1`], which answers ordinary requests itself;
//! hyper serves the connection from the first request that loop does not take. A connection is told to close
//! (chosen by the cap or the sweep, or the listener stopping) through its registry entry
//! ([`Connection::closing`]), which costs a waker check per wake-up rather than a lock.

use std::convert::Infallible;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::{Buf, Bytes};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, UnixListener};
use tokio::sync::Semaphore;
use tower_service::Service;

use crate::balance::{Balanced, LoadGuard, Share};
use crate::body::DeadlineBody;
use crate::conns::{Connection, Registry};
use crate::h1;
use crate::limits::{Limits, open_file_limit};

/// A bound listener: TCP, a Unix socket (whose clients are known by their user id), or one event loop's
/// share of a TCP listener spread over several ([`crate::balance`]).
pub enum Listener {
    /// A TCP listener.
    Tcp(TcpListener),
    /// A Unix stream socket listener.
    Unix(UnixListener),
    /// This event loop's share of a TCP listener balanced over several loops.
    Balanced(Share),
}

impl From<TcpListener> for Listener {
    fn from(listener: TcpListener) -> Self {
        Listener::Tcp(listener)
    }
}

impl From<Share> for Listener {
    fn from(share: Share) -> Self {
        Listener::Balanced(share)
    }
}

impl From<UnixListener> for Listener {
    fn from(listener: UnixListener) -> Self {
        Listener::Unix(listener)
    }
}

/// Who is on the other end of a request's connection; every request carries one as an extension.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Peer {
    /// The client's address (TCP).
    pub addr: Option<SocketAddr>,
    /// The client process's user id, from the kernel (Unix sockets).
    pub uid: Option<u32>,
}

impl Peer {
    /// Whether the client runs as this process's user or as root (only known on a Unix socket).
    pub fn is_local_owner(&self) -> bool {
        // SAFETY: geteuid has no preconditions and cannot fail.
        let me = unsafe { libc::geteuid() };
        self.uid.is_some_and(|uid| uid == me || uid == 0)
    }
}

/// Serves `router` on `listener` under `limits` until `shutdown` resolves; then stops accepting, lets
/// requests in flight finish (up to [`Limits::shutdown_grace`]) and returns.
///
/// `router` is an `axum::Router` or any other `tower` service of the same shape that is always ready (such
/// as the gateway's `GatewayService`, which answers inference requests without a router).
///
/// Errors only if the listener cannot be used at all; a failed `accept` (a client that went away, or no file
/// descriptor left) is handled in the loop.
pub async fn serve<S>(
    listener: impl Into<Listener>,
    router: S,
    limits: Limits,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> io::Result<()>
where
    S: Service<axum::extract::Request, Response = axum::response::Response, Error = Infallible>
        + Clone
        + Send
        + Sync
        + 'static,
    S::Future: Send + 'static,
{
    let mut listener = Bound::new(listener.into())?;
    let cap = limits
        .max_connections
        .unwrap_or_else(|| Limits::connection_cap(open_file_limit()))
        .max(1);
    let slots = Arc::new(Semaphore::new(cap));
    let registry = Arc::new(Registry::default());
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder.keep_alive(true);
    let builder = Arc::new(builder);
    let _sweep = Sweep::start(Arc::clone(&registry), limits.header_read);
    let mut shutdown = std::pin::pin!(shutdown);

    loop {
        // A slot first: at the cap, close the longest-idle connection and wait for its slot.
        let permit = match Arc::clone(&slots).try_acquire_owned() {
            Ok(permit) => permit,
            Err(_) => {
                registry.evict_idle();
                tokio::select! {
                    permit = Arc::clone(&slots).acquire_owned() => match permit {
                        Ok(permit) => permit,
                        Err(_) => break,
                    },
                    () = &mut shutdown => break,
                }
            }
        };
        let accepted = tokio::select! {
            accepted = accept(&mut listener) => accepted,
            () = &mut shutdown => break,
        };
        let Accepted { io, peer, load } = match accepted {
            Ok(accepted) => accepted,
            Err(error) => {
                drop(permit);
                if out_of_descriptors(&error) {
                    // The process, not the client, is out of files: make room and retry soon.
                    registry.evict_idle();
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
                continue;
            }
        };
        let connection = registry.register();
        let task = ConnectionTask {
            router: router.clone(),
            builder: Arc::clone(&builder),
            body_read: limits.body_read,
            peer,
            connection,
            registry: Arc::clone(&registry),
            _load: load,
        };
        tokio::spawn(async move {
            task.run(io).await;
            drop(permit);
        });
    }

    // Graceful stop: every connection finishes the request it is on and closes.
    registry.stop_all();
    let deadline = Instant::now() + limits.shutdown_grace;
    while registry.live() > 0 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    Ok(())
}

/// The task that closes connections idle past the header-read timeout; stopped when dropped.
struct Sweep(tokio::task::JoinHandle<()>);

impl Sweep {
    fn start(registry: Arc<Registry>, timeout: Duration) -> Sweep {
        let every = (timeout / 4).clamp(Duration::from_millis(10), Duration::from_secs(1));
        Sweep(tokio::spawn(async move {
            let mut ticks = tokio::time::interval(every);
            ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                ticks.tick().await;
                registry.expire_idle(timeout);
            }
        }))
    }
}

impl Drop for Sweep {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// A stream of either kind, for one connection task type.
enum Stream {
    Tcp(tokio::net::TcpStream),
    Unix(tokio::net::UnixStream),
}

/// A connection taken from a listener, and, from a balanced one, its count against this event loop.
struct Accepted {
    io: Stream,
    peer: Peer,
    load: Option<LoadGuard>,
}

/// A listener registered with the serving runtime.
enum Bound {
    Tcp(TcpListener),
    Unix(UnixListener),
    Balanced(Balanced),
}

impl Bound {
    fn new(listener: Listener) -> io::Result<Bound> {
        Ok(match listener {
            Listener::Tcp(listener) => Bound::Tcp(listener),
            Listener::Unix(listener) => Bound::Unix(listener),
            Listener::Balanced(share) => Bound::Balanced(share.register()?),
        })
    }
}

/// The next connection (cancel-safe).
async fn accept(listener: &mut Bound) -> io::Result<Accepted> {
    Ok(match listener {
        Bound::Tcp(listener) => {
            let (stream, addr) = listener.accept().await?;
            // Responses are written whole; Nagle would only add latency to small ones.
            let _ = stream.set_nodelay(true);
            Accepted {
                io: Stream::Tcp(stream),
                peer: Peer {
                    addr: Some(addr),
                    uid: None,
                },
                load: None,
            }
        }
        Bound::Unix(listener) => {
            let (stream, _) = listener.accept().await?;
            let uid = stream.peer_cred().ok().map(|cred| cred.uid());
            Accepted {
                io: Stream::Unix(stream),
                peer: Peer { addr: None, uid },
                load: None,
            }
        }
        Bound::Balanced(share) => {
            let (stream, peer, load) = share.accept().await?;
            Accepted {
                io: Stream::Tcp(stream),
                peer,
                load: Some(load),
            }
        }
    })
}

/// EMFILE / ENFILE / ENOBUFS / ENOMEM: the process or the system ran out of something an `accept` needs.
fn out_of_descriptors(error: &io::Error) -> bool {
    matches!(
        error.raw_os_error(),
        Some(libc::EMFILE | libc::ENFILE | libc::ENOBUFS | libc::ENOMEM)
    )
}

/// A connection's stream: it yields first the bytes the lean loop read but handed over unparsed
/// (`unread`), and notes every write as activity (see [`Connection::wrote`]).
struct Tracked<I> {
    io: I,
    unread: Bytes,
    connection: Arc<Connection>,
}

impl<I: AsyncRead + Unpin> AsyncRead for Tracked<I> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if !self.unread.is_empty() {
            let n = self.unread.len().min(buf.remaining());
            buf.put_slice(&self.unread[..n]);
            self.unread.advance(n);
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

impl<I> Tracked<I> {
    /// A write that moved bytes counts as activity for the idle sweep.
    fn stamp(&self, written: &Poll<io::Result<usize>>) {
        if matches!(written, Poll::Ready(Ok(n)) if *n > 0) {
            self.connection.wrote();
        }
    }
}

impl<I: AsyncWrite + Unpin> AsyncWrite for Tracked<I> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let written = Pin::new(&mut self.io).poll_write(cx, buf);
        self.stamp(&written);
        written
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let written = Pin::new(&mut self.io).poll_write_vectored(cx, bufs);
        self.stamp(&written);
        written
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

struct ConnectionTask<S> {
    router: S,
    builder: Arc<hyper::server::conn::http1::Builder>,
    body_read: Duration,
    peer: Peer,
    connection: Arc<Connection>,
    registry: Arc<Registry>,
    /// Held until the connection closes (a balanced listener's count against this event loop).
    _load: Option<LoadGuard>,
}

impl<S> ConnectionTask<S>
where
    S: Service<axum::extract::Request, Response = axum::response::Response, Error = Infallible>
        + Clone
        + Send
        + Sync
        + 'static,
    S::Future: Send + 'static,
{
    async fn run(self, stream: Stream) {
        match stream {
            Stream::Tcp(stream) => self.serve_io(stream).await,
            Stream::Unix(stream) => self.serve_io(stream).await,
        }
    }

    async fn serve_io<I>(self, io: I)
    where
        I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let mut io = Tracked {
            io,
            unread: Bytes::new(),
            connection: Arc::clone(&self.connection),
        };
        // The lean loop first; hyper takes over at the first request it does not take (see `crate::h1`).
        let mut router = self.router.clone();
        let phase = h1::Phase::default();
        let session = h1::Session {
            peer: self.peer,
            body_read: self.body_read,
            connection: &self.connection,
            phase: &phase,
        };
        let ended = {
            let lean = h1::serve(&mut io, &mut router, session);
            let mut lean = std::pin::pin!(lean);
            tokio::select! {
                biased;
                ended = lean.as_mut() => ended,
                () = self.connection.closing() => {
                    // Close at once when waiting for a request head, or when past the header-read timeout
                    // with nothing in flight (a slow reader of a response); else after the response.
                    let idle = self.connection.expired() && self.connection.idle_since().is_some();
                    if idle || !phase.answering() {
                        h1::Ended::Closed
                    } else {
                        phase.close_after_response();
                        lean.as_mut().await
                    }
                }
            }
        };
        let h1::Ended::Handoff(read) = ended else {
            self.registry.remove(&self.connection);
            return;
        };
        io.unread = read.freeze();

        let router = self.router.clone();
        let peer = self.peer;
        let body_read = self.body_read;
        let tracker = Arc::clone(&self.connection);
        let service = hyper::service::service_fn(move |request: hyper::Request<Incoming>| {
            let active = tracker.begin();
            let started = Instant::now();
            let (mut parts, body) = request.into_parts();
            let call = match h1::host_refusal(parts.version, &parts.headers) {
                Some(refusal) => Err(refusal),
                None => {
                    parts.extensions.insert(peer);
                    let body = axum::body::Body::new(DeadlineBody::new(body, started + body_read));
                    let mut router = router.clone();
                    Ok(router.call(hyper::Request::from_parts(parts, body)))
                }
            };
            async move {
                let response = match call {
                    Ok(response) => response.await,
                    Err(refusal) => Ok(refusal),
                };
                drop(active);
                response
            }
        });
        let connection = self.builder.serve_connection(TokioIo::new(io), service);
        let mut connection = std::pin::pin!(connection);
        tokio::select! {
            _ = connection.as_mut() => {}
            () = self.connection.closing() => {
                // Past the header-read timeout with nothing in flight: close at once (a request head that
                // trickles in must not keep it open). At the cap, when stopping, or when a request began
                // meanwhile, let the connection finish what it does.
                if !(self.connection.expired() && self.connection.idle_since().is_some()) {
                    connection.as_mut().graceful_shutdown();
                    let _ = connection.as_mut().await;
                }
            }
        }
        self.registry.remove(&self.connection);
    }
}
