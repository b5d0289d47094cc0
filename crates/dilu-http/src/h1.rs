//! The lean HTTP/1.1 loop every connection starts in: it answers the ordinary requests itself and hands the
//! connection to hyper at the first request it does not take.
//!
//! An ordinary request is HTTP/1.0 or 1.1 with a head under [`MAX_HEAD`] bytes and at most [`MAX_HEADERS`]
//! headers, and a body, if any, of a declared `Content-Length` of at most [`MAX_BODY`] bytes; no
//! `Transfer-Encoding`, `Expect` or `Upgrade`, no `CONNECT`. For those the loop reads the head and the whole
//! body into the connection's buffer, builds the request around them without copying (header values and the
//! body are slices of that buffer), calls the service and writes the response's head and first frame with
//! one `writev`. Everything else — chunked or large uploads, `100-continue`, upgrades, malformed heads and
//! hyper's own refusals of them — goes to hyper with the bytes already read (which the connection's stream yields first), and the
//! connection stays with hyper from then on.
//!
//! Why: hyper's general machinery (a dispatcher over a streaming body and an encoder, per connection) cost
//! 2–3 µs of CPU and 3–4 µs of serial latency per request more than this loop on the development machine
//! (same runtime, a 700-byte JSON request and answer); on the gateway that is the whole difference from nginx.
//!
//! Responses: a body whose size is known is sent with `Content-Length`, any other with chunked encoding
//! (HTTP/1.1) or until the connection closes (HTTP/1.0); `HEAD` and 1xx/204/304 responses carry no body;
//! `Date` is added when the service did not set it. Keep-alive follows the request's version and `Connection`
//! header and the response's `Connection: close`.

use std::cell::RefCell;
use std::future::poll_fn;
use std::io::{self, IoSlice};
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::time::{Duration, Instant, SystemTime};

use axum::body::Body;
use axum::http::header::{self, HeaderName, HeaderValue};
use axum::http::{HeaderMap, Method, Request, Response, StatusCode, Uri, Version};
use bytes::{Bytes, BytesMut};
use http_body::Body as _;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tower_service::Service;

use crate::body::{BodyError, Refused};
use crate::conns::Connection;
use crate::serve::Peer;

/// A request head larger than this goes to hyper (which refuses it beyond its own limit).
pub(crate) const MAX_HEAD: usize = 64 << 10;

/// A request with more headers than this goes to hyper.
pub(crate) const MAX_HEADERS: usize = 64;

/// A request body larger than this goes to hyper, which streams it to the service.
pub(crate) const MAX_BODY: usize = 1 << 20;

/// The connection's read buffer grows by this much at a time.
const READ_CHUNK: usize = 8 << 10;

/// How the loop ended.
pub(crate) enum Ended {
    /// The connection is done: the client closed it, asked to, or broke the protocol mid-request, or the
    /// server is closing it.
    Closed,
    /// A request the loop does not take: hyper serves the connection from here, starting with these bytes.
    Handoff(BytesMut),
}

/// What the loop is doing, shared with whoever may have to close the connection meanwhile (an eviction or a
/// stop): while it waits for a request head the connection can be dropped at once; while it answers one it is
/// asked to close after the response instead.
#[derive(Default)]
pub(crate) struct Phase {
    answering: AtomicBool,
    closing: AtomicBool,
}

impl Phase {
    /// Whether a request is being read, answered or written now.
    pub(crate) fn answering(&self) -> bool {
        self.answering.load(Relaxed)
    }

    /// Asks the loop to close the connection once the request in hand is answered.
    pub(crate) fn close_after_response(&self) {
        self.closing.store(true, Relaxed);
    }
}

/// What one connection's loop needs besides its stream and service.
pub(crate) struct Session<'a> {
    pub(crate) peer: Peer,
    pub(crate) body_read: Duration,
    pub(crate) connection: &'a Arc<Connection>,
    pub(crate) phase: &'a Phase,
}

/// Serves ordinary requests on `io` until the connection ends or a request needs hyper.
pub(crate) async fn serve<I, S>(io: &mut I, service: &mut S, session: Session<'_>) -> Ended
where
    I: AsyncRead + AsyncWrite + Unpin,
    S: Service<Request<Body>, Response = Response<Body>, Error = std::convert::Infallible>,
{
    let mut buf = BytesMut::new();
    let mut out = Vec::new();
    loop {
        let head = loop {
            if session.phase.closing.load(Relaxed) {
                return Ended::Closed;
            }
            if !buf.is_empty() {
                match parse(&buf) {
                    Parsed::Partial if buf.len() < MAX_HEAD => {}
                    Parsed::Partial | Parsed::Pass => return Ended::Handoff(buf),
                    Parsed::Take(head) => break head,
                }
            }
            buf.reserve(READ_CHUNK);
            match io.read_buf(&mut buf).await {
                Ok(0) | Err(_) => return Ended::Closed,
                Ok(_) => {}
            }
        };
        session.phase.answering.store(true, Relaxed);
        let active = session.connection.begin();
        let Some((request, complete)) = read_request(io, &mut buf, head, &session).await else {
            return Ended::Closed;
        };
        let (response, head_only, version, keep_alive) = match request {
            Ok(request)
                if let Some(refusal) = host_refusal(request.version(), request.headers()) =>
            {
                (refusal, false, request.version(), false)
            }
            Ok(request) => {
                let head_only = request.method() == Method::HEAD;
                let version = request.version();
                let keep_alive = complete && wants_keep_alive(version, request.headers());
                let Ok(response) = service.call(request).await;
                (response, head_only, version, keep_alive)
            }
            Err(part) => (bad_request(part), false, Version::HTTP_11, false),
        };
        // A slow reader of the response is then left to the idle sweep, which counts writes as activity.
        drop(active);
        let written = write_response(io, &mut out, response, head_only, version, keep_alive).await;
        session.phase.answering.store(false, Relaxed);
        match written {
            Ok(true) => {}
            Ok(false) => {
                let _ = io.shutdown().await;
                return Ended::Closed;
            }
            Err(_) => return Ended::Closed,
        }
    }
}

/// Reads the rest of the request whose head is at the start of `buf` and builds it; whether its body arrived
/// whole (a body late past the deadline is given to the service as that error, and the connection closes
/// after the answer). `None` when the client went away; the request is an error naming what `http` refused
/// in a head `httparse` accepted.
async fn read_request<I: AsyncRead + Unpin>(
    io: &mut I,
    buf: &mut BytesMut,
    head: Head,
    session: &Session<'_>,
) -> Option<(Result<Request<Body>, &'static str>, bool)> {
    let wanted = head.len + head.body_len;
    let mut complete = true;
    if buf.len() < wanted {
        buf.reserve(wanted - buf.len());
        let deadline = Instant::now() + session.body_read;
        let filled = async {
            while buf.len() < wanted {
                if io.read_buf(buf).await? == 0 {
                    return Err(io::ErrorKind::UnexpectedEof.into());
                }
            }
            Ok::<(), io::Error>(())
        };
        match tokio::time::timeout_at(deadline.into(), filled).await {
            Ok(Ok(())) => {}
            Ok(Err(_)) => return None,
            Err(_) => complete = false,
        }
    }
    let raw = buf.split_to(head.len).freeze();
    let body = if !complete {
        Body::new(Refused::new(BodyError::Deadline {
            seconds: session.body_read.as_secs(),
        }))
    } else if head.body_len == 0 {
        Body::empty()
    } else {
        Body::from(buf.split_to(head.body_len).freeze())
    };
    if wanted > MAX_KEPT {
        shed(buf);
    }
    Some((head.build(&raw, body, session.peer), complete))
}

/// A request larger than this makes the connection give up the buffer it grew for it (see [`shed`]).
const MAX_KEPT: usize = 64 << 10;

/// Gives up the allocation `buf` grew for a large request, keeping the bytes after it (a pipelined request)
/// in a fresh buffer. Otherwise the buffer, once the request's body is dropped, would take that allocation
/// back and an idle connection would hold up to [`MAX_BODY`] bytes for as long as it stays open.
fn shed(buf: &mut BytesMut) {
    *buf = BytesMut::from(&buf[..]);
}

/// The answer to a head whose `part` is not valid HTTP.
fn bad_request(part: &str) -> Response<Body> {
    let mut response = Response::new(Body::from(format!(
        "bad request: the {part} is not valid HTTP (RFC 9110/9112)\n"
    )));
    *response.status_mut() = StatusCode::BAD_REQUEST;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    response
}

/// The 400 an HTTP/1.1 request without exactly one `Host` header gets (RFC 9112 §3.2 makes the server refuse
/// it; HTTP/1.0 may omit it). Both paths of a connection check it, the lean loop and hyper (which does not).
pub(crate) fn host_refusal(version: Version, headers: &HeaderMap) -> Option<Response<Body>> {
    if version != Version::HTTP_11 {
        return None;
    }
    let mut hosts = headers.get_all(header::HOST).iter();
    let reason = match (hosts.next(), hosts.next()) {
        (Some(_), None) => return None,
        (None, _) => {
            "bad request: an HTTP/1.1 request needs a Host header (RFC 9112 section 3.2)\n"
        }
        (Some(_), Some(_)) => {
            "bad request: an HTTP/1.1 request takes exactly one Host header, this one has several (RFC 9112 \
             section 3.2)\n"
        }
    };
    let mut response = Response::new(Body::from(reason));
    *response.status_mut() = StatusCode::BAD_REQUEST;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    response
        .headers_mut()
        .insert(header::CONNECTION, HeaderValue::from_static("close"));
    Some(response)
}

/// Whether the client keeps the connection after this request: HTTP/1.1 unless it says `close`, HTTP/1.0
/// only when it says `keep-alive`.
fn wants_keep_alive(version: Version, headers: &HeaderMap) -> bool {
    if version == Version::HTTP_11 {
        !connection_says(headers, "close")
    } else {
        connection_says(headers, "keep-alive")
    }
}

/// Whether a `Connection` header among `headers` lists `token`.
fn connection_says(headers: &HeaderMap, token: &str) -> bool {
    headers.get_all(header::CONNECTION).iter().any(|value| {
        value
            .to_str()
            .is_ok_and(|v| v.split(',').any(|t| t.trim().eq_ignore_ascii_case(token)))
    })
}

/// The outcome of parsing the buffered bytes.
#[expect(
    clippy::large_enum_variant,
    reason = "returned once per request on the stack; boxing the head would cost an allocation per request"
)]
enum Parsed {
    /// The head is not complete yet.
    Partial,
    /// An ordinary request (see the module's documentation).
    Take(Head),
    /// One for hyper.
    Pass,
}

/// Where a header's name and value lie in the buffer.
#[derive(Clone, Copy, Default)]
struct Span {
    name: (u32, u32),
    value: (u32, u32),
}

/// A parsed head: the positions of its parts in the buffer it was parsed from.
struct Head {
    method: Method,
    target: (u32, u32),
    version: Version,
    headers: [Span; MAX_HEADERS],
    count: usize,
    /// Bytes of the head.
    len: usize,
    /// Bytes of the body that follows.
    body_len: usize,
}

impl Head {
    /// The request, with header values, target and body as slices of `raw` (the head's bytes).
    /// Errs naming the part that is not valid.
    fn build(&self, raw: &Bytes, body: Body, peer: Peer) -> Result<Request<Body>, &'static str> {
        let slice = |(at, len): (u32, u32)| raw.slice(at as usize..(at + len) as usize);
        let mut headers = HeaderMap::with_capacity(self.count);
        for span in &self.headers[..self.count] {
            let (at, len) = span.name;
            let name = HeaderName::from_bytes(&raw[at as usize..(at + len) as usize])
                .map_err(|_| "header name")?;
            let value =
                HeaderValue::from_maybe_shared(slice(span.value)).map_err(|_| "header value")?;
            headers.append(name, value);
        }
        let mut request = Request::new(body);
        *request.method_mut() = self.method.clone();
        *request.uri_mut() =
            Uri::from_maybe_shared(slice(self.target)).map_err(|_| "request target")?;
        *request.version_mut() = self.version;
        *request.headers_mut() = headers;
        request.extensions_mut().insert(peer);
        Ok(request)
    }
}

/// Position of `part` within `buf` (both from the same buffer) and its length.
fn span(buf: &[u8], part: &[u8]) -> (u32, u32) {
    let at = part.as_ptr() as usize - buf.as_ptr() as usize;
    (at as u32, part.len() as u32)
}

/// Parses the request head at the start of `buf`.
fn parse(buf: &[u8]) -> Parsed {
    let mut raw = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut request = httparse::Request::new(&mut raw);
    let len = match request.parse(buf) {
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) => return Parsed::Partial,
        // Malformed, or too many headers: hyper answers (or serves) it its own way.
        Err(_) => return Parsed::Pass,
    };
    let (Some(method), Some(path), Some(minor)) = (request.method, request.path, request.version)
    else {
        return Parsed::Pass;
    };
    let Ok(method) = Method::from_bytes(method.as_bytes()) else {
        return Parsed::Pass;
    };
    if method == Method::CONNECT {
        return Parsed::Pass;
    }
    let mut head = Head {
        method,
        target: span(buf, path.as_bytes()),
        version: if minor == 1 {
            Version::HTTP_11
        } else {
            Version::HTTP_10
        },
        headers: [Span::default(); MAX_HEADERS],
        count: request.headers.len(),
        len,
        body_len: 0,
    };
    let mut declared: Option<usize> = None;
    for (span_of, h) in head.headers.iter_mut().zip(request.headers.iter()) {
        *span_of = Span {
            name: span(buf, h.name.as_bytes()),
            value: span(buf, h.value),
        };
        let name = h.name;
        if name.eq_ignore_ascii_case("content-length") {
            let Some(length) = content_length(h.value) else {
                return Parsed::Pass;
            };
            if declared.is_some_and(|d| d != length) {
                return Parsed::Pass;
            }
            declared = Some(length);
        } else if name.eq_ignore_ascii_case("transfer-encoding")
            || name.eq_ignore_ascii_case("expect")
            || name.eq_ignore_ascii_case("upgrade")
        {
            return Parsed::Pass;
        }
    }
    head.body_len = declared.unwrap_or(0);
    if head.body_len > MAX_BODY {
        return Parsed::Pass;
    }
    Parsed::Take(head)
}

/// A `Content-Length` value: digits only.
fn content_length(value: &[u8]) -> Option<usize> {
    if value.is_empty() || value.len() > 12 || !value.iter().all(u8::is_ascii_digit) {
        return None;
    }
    Some(
        value
            .iter()
            .fold(0usize, |n, d| n * 10 + usize::from(d - b'0')),
    )
}

/// How a response's body is delimited on the wire.
enum Framing {
    /// No body (HEAD, 1xx, 204, 304).
    None,
    Length(u64),
    Chunked,
    /// Until the connection closes (an HTTP/1.0 client, a body of unknown size).
    Close,
}

/// Writes `response`; whether the connection may serve another request.
async fn write_response<I: AsyncWrite + Unpin>(
    io: &mut I,
    out: &mut Vec<u8>,
    response: Response<Body>,
    head_only: bool,
    version: Version,
    keep_alive: bool,
) -> io::Result<bool> {
    let (parts, mut body) = response.into_parts();
    let status = parts.status;
    let bodiless = status.is_informational()
        || status == StatusCode::NO_CONTENT
        || status == StatusCode::NOT_MODIFIED;
    let closes = connection_says(&parts.headers, "close");
    let mut keep_alive = keep_alive && !closes;
    let size = body.size_hint().exact();
    let framing = match size {
        _ if bodiless => Framing::None,
        Some(len) => Framing::Length(len),
        None if head_only => Framing::None,
        None if version == Version::HTTP_11 => Framing::Chunked,
        None => {
            keep_alive = false;
            Framing::Close
        }
    };

    out.clear();
    out.extend_from_slice(b"HTTP/1.1 ");
    out.extend_from_slice(status.as_str().as_bytes());
    out.push(b' ');
    out.extend_from_slice(status.canonical_reason().unwrap_or("").as_bytes());
    out.extend_from_slice(b"\r\n");
    // The body's framing is this writer's, except that a `HEAD` answer keeps the length the service gave it
    // (that of the body a `GET` would get).
    let given_length = head_only && parts.headers.contains_key(header::CONTENT_LENGTH);
    for (name, value) in &parts.headers {
        if (name == header::CONTENT_LENGTH && !given_length) || name == header::TRANSFER_ENCODING {
            continue;
        }
        out.extend_from_slice(name.as_str().as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(value.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    if !parts.headers.contains_key(header::DATE) {
        out.extend_from_slice(b"date: ");
        with_date(|date| out.extend_from_slice(date));
        out.extend_from_slice(b"\r\n");
    }
    match framing {
        Framing::Length(len) if status != StatusCode::NOT_MODIFIED && !given_length => {
            out.extend_from_slice(b"content-length: ");
            push_decimal(out, len);
            out.extend_from_slice(b"\r\n");
        }
        Framing::Chunked => out.extend_from_slice(b"transfer-encoding: chunked\r\n"),
        _ => {}
    }
    if !closes {
        if !keep_alive {
            out.extend_from_slice(b"connection: close\r\n");
        } else if version == Version::HTTP_10 {
            out.extend_from_slice(b"connection: keep-alive\r\n");
        }
    }
    out.extend_from_slice(b"\r\n");

    if head_only || matches!(framing, Framing::None) {
        write_all(io, &mut [IoSlice::new(out)]).await?;
        return Ok(keep_alive);
    }
    // The head goes out with the first frame (or alone, before the end of an empty body).
    let mut head_sent = false;
    while let Some(data) = next_data(&mut body).await? {
        let head: &[u8] = if head_sent { &[] } else { out };
        match framing {
            Framing::Chunked => {
                let mut line = Vec::with_capacity(20);
                push_hex(&mut line, data.len());
                line.extend_from_slice(b"\r\n");
                write_all(
                    io,
                    &mut [
                        IoSlice::new(head),
                        IoSlice::new(&line),
                        IoSlice::new(&data),
                        IoSlice::new(b"\r\n"),
                    ],
                )
                .await?;
            }
            _ => write_all(io, &mut [IoSlice::new(head), IoSlice::new(&data)]).await?,
        }
        head_sent = true;
    }
    let head: &[u8] = if head_sent { &[] } else { out };
    let end: &[u8] = if matches!(framing, Framing::Chunked) {
        b"0\r\n\r\n"
    } else {
        b""
    };
    write_all(io, &mut [IoSlice::new(head), IoSlice::new(end)]).await?;
    Ok(keep_alive)
}

/// The body's next non-empty data frame (trailers are dropped); an error ends the connection.
async fn next_data(body: &mut Body) -> io::Result<Option<Bytes>> {
    loop {
        if body.is_end_stream() {
            return Ok(None);
        }
        match poll_fn(|cx| Pin::new(&mut *body).poll_frame(cx)).await {
            None => return Ok(None),
            Some(Err(e)) => return Err(io::Error::other(e)),
            Some(Ok(frame)) => {
                if let Ok(data) = frame.into_data()
                    && !data.is_empty()
                {
                    return Ok(Some(data));
                }
            }
        }
    }
}

/// Writes every slice, however many writes it takes.
async fn write_all<I: AsyncWrite + Unpin>(
    io: &mut I,
    slices: &mut [IoSlice<'_>],
) -> io::Result<()> {
    let mut slices = slices;
    IoSlice::advance_slices(&mut slices, 0);
    while !slices.is_empty() {
        let n = io.write_vectored(slices).await?;
        if n == 0 {
            return Err(io::ErrorKind::WriteZero.into());
        }
        IoSlice::advance_slices(&mut slices, n);
    }
    Ok(())
}

fn push_decimal(out: &mut Vec<u8>, mut n: u64) {
    let mut digits = [0u8; 20];
    let mut at = digits.len();
    loop {
        at -= 1;
        digits[at] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    out.extend_from_slice(&digits[at..]);
}

fn push_hex(out: &mut Vec<u8>, mut n: usize) {
    let mut digits = [0u8; 16];
    let mut at = digits.len();
    loop {
        at -= 1;
        digits[at] = b"0123456789abcdef"[n % 16];
        n /= 16;
        if n == 0 {
            break;
        }
    }
    out.extend_from_slice(&digits[at..]);
}

thread_local! {
    /// The `Date` value of the current second, formatted once per second per thread.
    static DATE: RefCell<(u64, [u8; 29])> = const { RefCell::new((u64::MAX, [0; 29])) };
}

/// Calls `f` with the current `Date` header value (IMF-fixdate).
fn with_date(f: impl FnOnce(&[u8])) {
    let now = SystemTime::now();
    let second = now
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    DATE.with(|date| {
        let mut date = date.borrow_mut();
        if date.0 != second {
            let text = httpdate::fmt_http_date(now);
            if text.len() == 29 {
                date.1.copy_from_slice(text.as_bytes());
                date.0 = second;
            }
        }
        f(&date.1);
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::conns::Registry;
    use axum::Router;
    use axum::routing::{get, post};
    use std::task::{Context, Poll};
    use tokio::io::DuplexStream;

    fn take(head: &str) -> Head {
        match parse(head.as_bytes()) {
            Parsed::Take(head) => head,
            Parsed::Partial => panic!("partial: {head:?}"),
            Parsed::Pass => panic!("passed to hyper: {head:?}"),
        }
    }

    fn passes(head: &str) -> bool {
        matches!(parse(head.as_bytes()), Parsed::Pass)
    }

    #[test]
    fn ordinary_heads_are_taken_with_their_body_length() {
        let get = "GET /v2/health/live HTTP/1.1\r\nHost: a\r\n\r\n";
        let head = take(get);
        assert_eq!((head.len, head.body_len, head.count), (get.len(), 0, 1));
        assert_eq!(head.version, Version::HTTP_11);
        let post = take("POST /x HTTP/1.0\r\nContent-Length: 12\r\ncontent-length: 12\r\n\r\n{}");
        assert_eq!((post.body_len, post.version), (12, Version::HTTP_10));
        assert!(matches!(
            parse(b"POST /x HTTP/1.1\r\nContent-Le"),
            Parsed::Partial
        ));
        let at_limit = format!("POST /x HTTP/1.1\r\nContent-Length: {MAX_BODY}\r\n\r\n");
        assert_eq!(take(&at_limit).body_len, MAX_BODY);
    }

    #[test]
    fn what_the_loop_does_not_do_goes_to_hyper() {
        for head in [
            "POST /x HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n",
            "POST /x HTTP/1.1\r\nContent-Length: 5\r\nExpect: 100-continue\r\n\r\n",
            "GET /x HTTP/1.1\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n",
            "CONNECT a:443 HTTP/1.1\r\nHost: a:443\r\n\r\n",
            "POST /x HTTP/1.1\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\n",
            "POST /x HTTP/1.1\r\nContent-Length: -5\r\n\r\n",
            "POST /x HTTP/1.1\r\nContent-Length: 5x\r\n\r\n",
            "GET /x HTTP/1.1\r\nBad Header: x\r\n\r\n",
            "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n",
        ] {
            assert!(passes(head), "{head:?}");
        }
        let large = format!(
            "POST /x HTTP/1.1\r\nContent-Length: {}\r\n\r\n",
            MAX_BODY + 1
        );
        assert!(passes(&large));
        let many: String = (0..=MAX_HEADERS).map(|i| format!("x-{i}: v\r\n")).collect();
        assert!(passes(&format!("GET /x HTTP/1.1\r\n{many}\r\n")));
    }

    /// Runs the loop on one end of a pipe over a small router; returns the other end and the loop's task.
    fn start() -> (DuplexStream, tokio::task::JoinHandle<Ended>) {
        let router = Router::new()
            .route("/hello", get(|| async { "hello" }))
            .route("/echo", post(|body: Bytes| async move { body }))
            .route(
                "/stream",
                get(|| async {
                    let chunks = [
                        Ok::<_, io::Error>(Bytes::from("ab")),
                        Ok(Bytes::from("cde")),
                    ];
                    Body::from_stream(stream_of(chunks))
                }),
            )
            .route(
                "/who",
                get(|request: Request<Body>| async move {
                    format!(
                        "{:?}",
                        request.extensions().get::<Peer>().and_then(|p| p.uid)
                    )
                }),
            );
        let (client, mut server) = tokio::io::duplex(1 << 16);
        let task = tokio::spawn(async move {
            let registry = Registry::default();
            let connection = registry.register();
            let phase = Phase::default();
            let session = Session {
                peer: Peer {
                    addr: None,
                    uid: Some(7),
                },
                body_read: Duration::from_millis(200),
                connection: &connection,
                phase: &phase,
            };
            let mut router = router;
            serve(&mut server, &mut router, session).await
        });
        (client, task)
    }

    /// A stream of the given items (axum's `Body::from_stream` wants a `Stream`).
    fn stream_of<T: Unpin + Send + 'static>(
        items: impl IntoIterator<Item = T, IntoIter: Unpin + Send + 'static>,
    ) -> impl futures_core::Stream<Item = T> + Send + 'static {
        struct Iter<I>(I);
        impl<I: Iterator + Unpin> futures_core::Stream for Iter<I> {
            type Item = I::Item;
            fn poll_next(mut self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<Option<I::Item>> {
                Poll::Ready(self.0.next())
            }
        }
        Iter(items.into_iter())
    }

    /// Reads until `count` responses' worth of text ends with `last`, or the pipe closes.
    async fn read_until(client: &mut DuplexStream, last: &str) -> String {
        let mut text = Vec::new();
        let mut buf = [0u8; 4096];
        while !String::from_utf8_lossy(&text).ends_with(last) {
            let Ok(read) =
                tokio::time::timeout(Duration::from_secs(5), client.read(&mut buf)).await
            else {
                panic!(
                    "no {last:?} within 5 s; got {:?}",
                    String::from_utf8_lossy(&text)
                );
            };
            let n = read.unwrap();
            if n == 0 {
                break;
            }
            text.extend_from_slice(&buf[..n]);
        }
        String::from_utf8(text).unwrap()
    }

    /// Everything until the pipe closes (within 5 s).
    async fn read_to_end(client: &mut DuplexStream) -> String {
        let mut text = String::new();
        tokio::time::timeout(Duration::from_secs(5), client.read_to_string(&mut text))
            .await
            .expect("closed in time")
            .unwrap();
        text
    }

    /// The response without its `date` line (which changes every second).
    fn dateless(text: &str) -> String {
        text.split("\r\n")
            .filter(|line| !line.starts_with("date: "))
            .collect::<Vec<_>>()
            .join("\r\n")
    }

    #[tokio::test]
    async fn pipelined_requests_are_answered_in_order_on_one_connection() {
        let (mut client, task) = start();
        client
            .write_all(
                b"POST /echo HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n\r\nfirstGET /hello HTTP/1.1\r\nHost: a\r\n\r\nGET /who HTTP/1.1\r\nHost: a\r\n\r\n",
            )
            .await
            .unwrap();
        let text = read_until(&mut client, "Some(7)").await;
        assert_eq!(
            dateless(&text),
            "HTTP/1.1 200 OK\r\ncontent-type: application/octet-stream\r\ncontent-length: 5\r\n\r\nfirst\
             HTTP/1.1 200 OK\r\ncontent-type: text/plain; charset=utf-8\r\ncontent-length: 5\r\n\r\nhello\
             HTTP/1.1 200 OK\r\ncontent-type: text/plain; charset=utf-8\r\ncontent-length: 7\r\n\r\nSome(7)"
        );
        assert_eq!(text.matches("\r\ndate: ").count(), 3, "{text}");
        // Still open: a fourth request is answered.
        client
            .write_all(b"GET /hello HTTP/1.1\r\nHost: a\r\n\r\n")
            .await
            .unwrap();
        assert!(read_until(&mut client, "hello").await.ends_with("hello"));
        drop(client);
        assert!(matches!(task.await.unwrap(), Ended::Closed));
    }

    #[tokio::test]
    async fn a_body_that_arrives_in_pieces_is_read_whole() {
        let (mut client, _task) = start();
        client
            .write_all(b"POST /echo HTTP/1.1\r\nHost: a\r\nContent-Length: 11\r\n\r\nhel")
            .await
            .unwrap();
        tokio::time::sleep(Duration::from_millis(20)).await;
        client.write_all(b"lo world").await.unwrap();
        assert!(
            read_until(&mut client, "hello world")
                .await
                .ends_with("\r\n\r\nhello world")
        );
    }

    #[tokio::test]
    async fn close_and_http_1_0_end_the_connection_after_the_answer() {
        for (request, keeps) in [
            (
                "GET /hello HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n",
                false,
            ),
            ("GET /hello HTTP/1.0\r\n\r\n", false),
            (
                "GET /hello HTTP/1.0\r\nConnection: keep-alive\r\n\r\n",
                true,
            ),
        ] {
            let (mut client, task) = start();
            client.write_all(request.as_bytes()).await.unwrap();
            let text = read_until(&mut client, "hello").await;
            assert!(text.ends_with("hello"), "{text}");
            if keeps {
                assert!(text.contains("\r\nconnection: keep-alive\r\n"), "{text}");
                assert!(!task.is_finished());
            } else {
                assert!(text.contains("\r\nconnection: close\r\n"), "{text}");
                assert!(matches!(task.await.unwrap(), Ended::Closed));
                assert!(read_to_end(&mut client).await.is_empty());
            }
        }
    }

    #[tokio::test]
    async fn head_has_the_length_and_no_body() {
        let (mut client, _task) = start();
        client
            .write_all(
                b"HEAD /hello HTTP/1.1\r\nHost: a\r\n\r\nGET /hello HTTP/1.1\r\nHost: a\r\n\r\n",
            )
            .await
            .unwrap();
        let text = read_until(&mut client, "hello").await;
        let responses: Vec<&str> = text.split("HTTP/1.1 ").skip(1).collect();
        assert_eq!(responses.len(), 2, "{text}");
        assert!(responses[0].contains("content-length: 5\r\n"), "{text}");
        assert!(responses[0].ends_with("\r\n\r\n"), "{text}");
        assert!(responses[1].ends_with("\r\n\r\nhello"), "{text}");
    }

    #[tokio::test]
    async fn a_body_of_unknown_size_is_chunked_or_closes_on_http_1_0() {
        let (mut client, _task) = start();
        client
            .write_all(b"GET /stream HTTP/1.1\r\nHost: a\r\n\r\n")
            .await
            .unwrap();
        let text = read_until(&mut client, "0\r\n\r\n").await;
        assert!(text.contains("transfer-encoding: chunked\r\n"), "{text}");
        assert!(
            text.ends_with("\r\n\r\n2\r\nab\r\n3\r\ncde\r\n0\r\n\r\n"),
            "{text}"
        );

        let (mut client, task) = start();
        client
            .write_all(b"GET /stream HTTP/1.0\r\nConnection: keep-alive\r\n\r\n")
            .await
            .unwrap();
        let text = read_to_end(&mut client).await;
        assert!(
            !text.contains("content-length") && !text.contains("chunked"),
            "{text}"
        );
        assert!(
            text.contains("\r\nconnection: close\r\n") && text.ends_with("\r\n\r\nabcde"),
            "{text}"
        );
        assert!(matches!(task.await.unwrap(), Ended::Closed));
    }

    #[tokio::test]
    async fn the_first_request_it_does_not_take_hands_over_every_byte_read() {
        let (mut client, task) = start();
        let chunked = "POST /echo HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n";
        client
            .write_all(format!("GET /hello HTTP/1.1\r\nHost: a\r\n\r\n{chunked}").as_bytes())
            .await
            .unwrap();
        assert!(read_until(&mut client, "hello").await.ends_with("hello"));
        let Ended::Handoff(rest) = task.await.unwrap() else {
            panic!("not handed over");
        };
        assert_eq!(&rest[..], chunked.as_bytes());
    }

    #[tokio::test]
    async fn a_target_http_refuses_gets_400_naming_it() {
        let (mut client, task) = start();
        // `<` passes httparse but not `http`'s URI parser.
        client
            .write_all(b"GET /a<b HTTP/1.1\r\nHost: a\r\n\r\n")
            .await
            .unwrap();
        let text = read_to_end(&mut client).await;
        assert!(text.starts_with("HTTP/1.1 400 Bad Request\r\n"), "{text}");
        assert!(
            text.contains("the request target is not valid HTTP"),
            "{text}"
        );
        assert!(matches!(task.await.unwrap(), Ended::Closed));
    }

    #[tokio::test]
    async fn an_http_1_1_request_without_exactly_one_host_gets_400_and_the_connection_closes() {
        for (request, why) in [
            ("GET /hello HTTP/1.1\r\n\r\n", "needs a Host header"),
            (
                "GET /hello HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n",
                "exactly one Host header",
            ),
        ] {
            let (mut client, task) = start();
            client.write_all(request.as_bytes()).await.unwrap();
            let text = read_to_end(&mut client).await;
            assert!(text.starts_with("HTTP/1.1 400 Bad Request\r\n"), "{text}");
            assert!(text.contains(why) && text.contains("RFC 9112"), "{text}");
            assert!(
                !text.contains("hello"),
                "the service was not called: {text}"
            );
            assert!(matches!(task.await.unwrap(), Ended::Closed));
        }
        // HTTP/1.0 may leave it out.
        let (mut client, task) = start();
        client
            .write_all(b"GET /hello HTTP/1.0\r\n\r\n")
            .await
            .unwrap();
        let text = read_to_end(&mut client).await;
        assert!(
            text.starts_with("HTTP/1.0 200 OK\r\n") || text.starts_with("HTTP/1.1 200 OK\r\n"),
            "{text}"
        );
        assert!(text.ends_with("hello"), "{text}");
        assert!(matches!(task.await.unwrap(), Ended::Closed));
    }

    #[test]
    fn a_large_request_leaves_no_large_buffer_behind() {
        let mut buf = BytesMut::with_capacity(MAX_BODY);
        buf.extend_from_slice(&vec![b'x'; MAX_BODY - 3]);
        buf.extend_from_slice(b"GET");
        let body = buf.split_to(MAX_BODY - 3).freeze();
        shed(&mut buf);
        drop(body);
        buf.reserve(READ_CHUNK);
        assert_eq!(&buf[..], b"GET");
        assert!(buf.capacity() < MAX_KEPT, "{}", buf.capacity());
        // Without shedding, the buffer takes the whole allocation back once the body is gone.
        let mut kept = BytesMut::with_capacity(MAX_BODY);
        kept.extend_from_slice(&vec![b'x'; MAX_BODY]);
        drop(kept.split_to(MAX_BODY - 3).freeze());
        kept.reserve(READ_CHUNK);
        assert!(kept.capacity() >= MAX_BODY - 3, "{}", kept.capacity());
    }

    #[test]
    fn numbers_are_written_in_decimal_and_hex() {
        let mut out = Vec::new();
        for n in [0, 7, 10, 1_048_576, u64::MAX] {
            out.clear();
            push_decimal(&mut out, n);
            assert_eq!(out, n.to_string().as_bytes());
        }
        for n in [0usize, 9, 10, 255, 65_536] {
            out.clear();
            push_hex(&mut out, n);
            assert_eq!(out, format!("{n:x}").as_bytes());
        }
    }
}
