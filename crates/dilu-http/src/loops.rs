//! A server as several event loops, nginx's worker processes as threads: each loop is a single-threaded
//! runtime on its own thread that serves its share of one listener ([`crate::balance`]) with
//! [`crate::serve`], so a request is read, handled and answered on one thread and never pays for waking
//! another. `dilu gateway` and `dilu up` serve this way.
//!
//! ```no_run
//! # fn run() -> std::io::Result<()> {
//! let router = axum::Router::new().route("/health", axum::routing::get(|| async { "ok" }));
//! let socket = std::net::TcpListener::bind("127.0.0.1:0")?;
//! let loops = dilu_http::EventLoops::start(socket, 2, "server", router, Default::default())?;
//! // ... until it is time to stop:
//! loops.stop()
//! # }
//! ```

use std::convert::Infallible;
use std::io;
use std::thread::JoinHandle;

use tokio::sync::watch;
use tower_service::Service;

use crate::limits::{Limits, open_file_limit};

/// Running event loops (see the module's documentation). Dropped without [`EventLoops::stop`], the loops stop
/// the same way, unwaited.
pub struct EventLoops {
    threads: Vec<JoinHandle<io::Result<()>>>,
    stop: watch::Sender<bool>,
}

impl EventLoops {
    /// How many loops a server runs when not told: one per CPU this process may use (nginx's
    /// `worker_processes auto`), or 2 when that cannot be read.
    pub fn per_cpu() -> usize {
        std::thread::available_parallelism().map_or(2, |n| n.get())
    }

    /// Starts `loops` event loops (at least one), threads named `{name}-{i}`, serving `service` on `listener`
    /// under `limits` until [`EventLoops::stop`]; then each stops accepting and lets its requests in flight
    /// finish, as [`crate::serve`] does. A connection cap left to the default ([`Limits::max_connections`]
    /// `None`) is divided between the loops, so that together they stay under the open-file limit.
    ///
    /// Errors if the listener cannot be shared or a thread cannot start; loops started before that stop.
    pub fn start<S>(
        listener: std::net::TcpListener,
        loops: usize,
        name: &str,
        service: S,
        limits: Limits,
    ) -> io::Result<EventLoops>
    where
        S: Service<axum::extract::Request, Response = axum::response::Response, Error = Infallible>
            + Clone
            + Send
            + Sync
            + 'static,
        S::Future: Send + 'static,
    {
        let loops = loops.max(1);
        let limits =
            Limits {
                max_connections: Some(limits.max_connections.unwrap_or_else(|| {
                    (Limits::connection_cap(open_file_limit()) / loops).max(16)
                })),
                ..limits
            };
        let shares = crate::balance(listener, loops)?;
        let (stop, stopped) = watch::channel(false);
        let mut threads = Vec::with_capacity(loops);
        for (i, share) in shares.into_iter().enumerate() {
            let (service, limits, mut stop) = (service.clone(), limits.clone(), stopped.clone());
            let event_loop = move || -> io::Result<()> {
                let runtime = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()?;
                runtime.block_on(async move {
                    let stopped = async move {
                        let _ = stop.wait_for(|stop| *stop).await;
                    };
                    crate::serve(share, service, limits, stopped).await
                })
            };
            threads.push(
                std::thread::Builder::new()
                    .name(format!("{name}-{i}"))
                    .spawn(event_loop)?,
            );
        }
        Ok(EventLoops { threads, stop })
    }

    /// Tells every loop to stop, waits for them to return (requests in flight answered, up to
    /// [`Limits::shutdown_grace`]) and gives the first error: a loop that could not serve its listener, or one
    /// that panicked. Blocks the calling thread.
    pub fn stop(self) -> io::Result<()> {
        let _ = self.stop.send(true);
        let mut first = Ok(());
        for thread in self.threads {
            let served = thread
                .join()
                .unwrap_or_else(|_| Err(io::Error::other("an event loop panicked")));
            if first.is_ok() {
                first = served;
            }
        }
        first
    }
}
