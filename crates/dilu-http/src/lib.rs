//! The HTTP server under every Dilu listener (the control API and gateway of `dilu up`, the agent API, the
//! workers and trainers, the standalone gateway), so that each gets the same protection:
//!
//! - a **header-read timeout** that also closes idle kept-alive connections ([`Limits::header_read`]);
//! - a **body deadline**: a request's body must arrive in full within [`Limits::body_read`] of its head;
//! - a **connection cap** below the open-file limit; at the cap the longest-idle connection is closed to
//!   admit a new one, so idle sockets cannot starve `/health` or inference ([`Limits::max_connections`]);
//! - a lean HTTP/1.1 loop for ordinary requests (a `Content-Length` body of at most 1 MiB, no upgrade or
//!   `100-continue`), with hyper taking the connection over at the first request it does not take;
//! - the client's identity on every request ([`Peer`]: its address, or its user id on a Unix socket);
//! - middleware for `Host` checks (DNS rebinding), `Content-Type: application/json` on state-changing
//!   requests (cross-site form posts), and bearer tokens ([`guard`]), and private token files ([`token`]);
//! - for a server with one event loop per core ([`EventLoops`]), one listener's connections kept even across
//!   the loops ([`balance`]).
//!
//! ```no_run
//! # async fn run() -> std::io::Result<()> {
//! let router = axum::Router::new().route("/health", axum::routing::get(|| async { "ok" }));
//! let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
//! dilu_http::serve(listener, router, dilu_http::Limits::default(), std::future::pending()).await
//! # }
//! ```

mod balance;
mod body;
mod conns;
pub mod guard;
mod h1;
mod limits;
mod loops;
mod serve;
pub mod token;

pub use balance::{Share, balance};
pub use body::BodyError;
pub use limits::{Limits, open_file_limit, raise_open_file_limit};
pub use loops::EventLoops;
pub use serve::{Listener, Peer, serve};
