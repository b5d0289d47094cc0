//! A request body that must arrive in full before a deadline (a slow sender cannot hold a connection and
//! its handler forever). The timer is armed only when the body is not already buffered.

use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Instant;

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;
use tokio::time::Sleep;

/// Why a request body could not be read.
#[derive(Debug, thiserror::Error)]
pub enum BodyError {
    /// The body did not arrive in full within the listener's body deadline.
    #[error("the request body did not arrive within {seconds} s (the body deadline)")]
    Deadline {
        /// The deadline, in seconds from the request head.
        seconds: u64,
    },
    /// The connection failed while the body was read.
    #[error("reading the request body: {0}")]
    Read(#[from] hyper::Error),
}

/// [`Incoming`] with a deadline.
pub(crate) struct DeadlineBody {
    inner: Incoming,
    deadline: Instant,
    seconds: u64,
    sleep: Option<Pin<Box<Sleep>>>,
}

impl DeadlineBody {
    pub(crate) fn new(inner: Incoming, deadline: Instant) -> Self {
        let seconds = deadline.saturating_duration_since(Instant::now()).as_secs();
        DeadlineBody {
            inner,
            deadline,
            seconds,
            sleep: None,
        }
    }
}

impl Body for DeadlineBody {
    type Data = Bytes;
    type Error = BodyError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        let this = &mut *self;
        match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Ready(frame) => Poll::Ready(frame.map(|f| f.map_err(BodyError::Read))),
            Poll::Pending => {
                let deadline = tokio::time::Instant::from_std(this.deadline);
                let sleep = this
                    .sleep
                    .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(deadline)));
                match sleep.as_mut().poll(cx) {
                    Poll::Ready(()) => Poll::Ready(Some(Err(BodyError::Deadline {
                        seconds: this.seconds,
                    }))),
                    Poll::Pending => Poll::Pending,
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// A body that fails at once with an error known before the service was called (the lean loop's late body).
pub(crate) struct Refused(Option<BodyError>);

impl Refused {
    pub(crate) fn new(error: BodyError) -> Self {
        Refused(Some(error))
    }
}

impl Body for Refused {
    type Data = Bytes;
    type Error = BodyError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        Poll::Ready(self.0.take().map(Err))
    }
}
