//! Forwarding to instances: reading a client's body within a limit, the gateway's own HTTP/1.1 client, and
//! relaying the instance's status, content type and body unchanged.
//!
//! The client is deliberately small. A forward runs on the request's own task from start to end: it takes an
//! idle keep-alive connection to the instance (or opens one), writes the request head and the body's frames
//! with one `writev`, reads the response into the connection's buffer, and hands the connection back once
//! the response is read whole. There is no connection task, channel or second scheduler hop per request,
//! which is what a general-purpose client costs and a proxy on a loaded machine cannot afford.

use std::collections::HashMap;
use std::io::{self, IoSlice};
use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};
use std::sync::{Arc, Mutex, PoisonError, RwLock};
use std::time::Duration;

use axum::body::Body;
use axum::http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode, header};
use axum::response::Response;
use bytes::{Buf, Bytes, BytesMut};
use dilu_core::sync::lock;
use http_body_util::BodyExt;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use super::config::GatewayConfig;
use super::errors::error_chain;
use super::memory::{LARGE_BODY, LargeBody};

/// The KServe v2 binary-tensor extension's header; it must travel with the body it describes.
static INFERENCE_HEADER_CONTENT_LENGTH: HeaderName =
    HeaderName::from_static("inference-header-content-length");

/// Request headers relayed to the instance (besides `Host` and `Content-Length`, which the client writes).
const RELAYED_REQUEST_HEADERS: [&HeaderName; 4] = [
    &header::CONTENT_TYPE,
    &header::CONTENT_ENCODING,
    &header::ACCEPT,
    &INFERENCE_HEADER_CONTENT_LENGTH,
];

/// Response headers relayed to the client (besides the length, which the gateway's server writes).
const RELAYED_RESPONSE_HEADERS: [&HeaderName; 3] = [
    &header::CONTENT_TYPE,
    &header::CONTENT_ENCODING,
    &INFERENCE_HEADER_CONTENT_LENGTH,
];

/// Builds the one client every forward goes through.
pub(crate) fn build_client(config: &GatewayConfig) -> Result<Client, String> {
    Ok(Client {
        connect_timeout: config.connect_timeout,
        upstreams: RwLock::new(HashMap::new()),
    })
}

/// A request body as it arrived: its frames, never copied into one buffer (a retry sends the very same
/// bytes).
#[derive(Debug, Default)]
pub(crate) enum Payload {
    /// No body.
    #[default]
    Empty,
    /// The common case: one frame.
    One(Bytes),
    /// A body that arrived in several frames; a large one holds a [`LargeBody`] until it is dropped.
    Many(Vec<Bytes>, Option<LargeBody>),
}

impl Payload {
    fn frames(&self) -> &[Bytes] {
        match self {
            Payload::Empty => &[],
            Payload::One(frame) => std::slice::from_ref(frame),
            Payload::Many(frames, _) => frames,
        }
    }

    fn len(&self) -> usize {
        self.frames().iter().map(Bytes::len).sum()
    }
}

impl From<Option<Bytes>> for Payload {
    fn from(body: Option<Bytes>) -> Self {
        match body {
            Some(body) if !body.is_empty() => Payload::One(body),
            _ => Payload::Empty,
        }
    }
}

/// Why a client's body was not read.
pub(crate) enum BodyError {
    TooLarge,
    Read(String),
}

/// Reads a request body, failing as soon as it is known to exceed `limit` (never holding more than the limit
/// plus the frame that crossed it). The frames are kept as they arrived, without copying.
pub(crate) async fn read_body(
    body: Body,
    headers: &HeaderMap,
    limit: usize,
) -> Result<Payload, BodyError> {
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    let mut body = body;
    if declared.is_some_and(|len| len > limit as u64) {
        Box::pin(drain(&mut body, declared)).await;
        return Err(BodyError::TooLarge);
    }
    let mut payload = Payload::Empty;
    let mut len = 0usize;
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|e| BodyError::Read(error_chain(&e)))?;
        let Ok(data) = frame.into_data() else {
            continue;
        };
        if data.is_empty() {
            continue;
        }
        len += data.len();
        if len > limit {
            Box::pin(drain(&mut body, declared)).await;
            return Err(BodyError::TooLarge);
        }
        payload = match payload {
            Payload::Empty => Payload::One(data),
            Payload::One(first) => Payload::Many(vec![first, data], None),
            Payload::Many(mut frames, mut large) => {
                frames.push(data);
                if large.is_none() && len >= LARGE_BODY {
                    large = Some(LargeBody::new());
                }
                Payload::Many(frames, large)
            }
        };
    }
    Ok(payload)
}

/// Most of a refused body read and thrown away so that the client, still sending, gets the error response
/// rather than a reset connection; larger bodies are cut off.
const DRAIN_MAX: u64 = 8 << 20;

/// Reads and discards the rest of a refused body when it is small enough (see [`DRAIN_MAX`]).
async fn drain(body: &mut Body, declared: Option<u64>) {
    if declared.is_some_and(|len| len > DRAIN_MAX) {
        return;
    }
    let mut seen = 0u64;
    while let Some(Ok(frame)) = body.frame().await {
        if let Ok(data) = frame.into_data() {
            seen += data.len() as u64;
            if seen > DRAIN_MAX {
                return;
            }
        }
    }
}

/// How a forward failed.
pub(crate) enum ForwardError {
    /// No response head arrived (connection refused or reset, closed early): the instance is presumed dead
    /// and the request may be retried elsewhere.
    Transport(String),
    /// The head arrived but the body broke off: the instance may have done the work; not retried.
    Body(String),
}

/// The gateway's HTTP/1.1 client: per instance address, idle keep-alive connections in a few stacks (one per
/// thread, the most recently used on top, so that a connection stays with the thread whose event loop serves
/// it). See the module's documentation.
pub(crate) struct Client {
    connect_timeout: Duration,
    /// By base URL (`http://host:port[/prefix]`, no trailing slash).
    upstreams: RwLock<HashMap<Arc<str>, Arc<Upstream>>>,
}

/// Idle connections kept per instance address and stack; more are closed when given back.
const MAX_IDLE_PER_STACK: usize = 256;

/// Stacks of idle connections per instance address (threads share them modulo this).
const STACKS: usize = 8;

/// A response head larger than this is refused.
const MAX_HEAD: usize = 64 << 10;

/// A connection's read buffer is allocated in steps of this.
const READ_CHUNK: usize = 8 << 10;

/// A response body up to this size is copied out of the connection's buffer rather than split off it.
const COPY_BELOW: usize = 16 << 10;

/// A connection whose read buffer grew past this (a large response) gets a fresh one before it is kept.
const MAX_KEPT_BUFFER: usize = 64 << 10;

/// The stack of the calling thread.
fn stack_index() -> usize {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    thread_local! {
        static INDEX: usize = NEXT.fetch_add(1, Relaxed) % STACKS;
    }
    INDEX.with(|i| *i)
}

/// One instance address and its idle connections. Each instance the router knows has its own (see
/// [`Upstream::for_instance`]); the client keeps one per base URL for requests addressed by URL.
pub(crate) struct Upstream {
    /// What to connect to: `host:port`.
    address: String,
    /// The `Host` header's value: the base URL's authority as written.
    host: String,
    /// A path the base URL carries before the request's own (empty for `http://host:port`).
    prefix: String,
    idle: [Mutex<Vec<Connection>>; STACKS],
}

/// A keep-alive connection to an instance.
struct Connection {
    stream: TcpStream,
    /// Bytes read and not consumed yet (empty between requests: nothing is pipelined).
    buf: BytesMut,
    /// The request head being written (kept to reuse its allocation).
    head: Vec<u8>,
}

impl Upstream {
    /// The upstream of an instance at `base_url`; a URL the client cannot use fails each send, naming it.
    pub(crate) fn for_instance(base_url: &str) -> Result<Arc<Upstream>, Arc<str>> {
        Upstream::parse(base_url)
            .map(Arc::new)
            .map_err(|e| Arc::from(e.as_str()))
    }

    fn parse(base_url: &str) -> Result<Upstream, String> {
        let rest = base_url
            .strip_prefix("http://")
            .ok_or_else(|| format!("{base_url:?}: only http:// instance URLs are supported"))?;
        let (authority, prefix) = match rest.find('/') {
            Some(i) => (&rest[..i], rest[i..].trim_end_matches('/')),
            None => (rest, ""),
        };
        if authority.is_empty() {
            return Err(format!("{base_url:?}: no host"));
        }
        if !authority
            .bytes()
            .chain(prefix.bytes())
            .all(|b| b.is_ascii_graphic())
        {
            return Err(format!("{base_url:?}: not a valid URL"));
        }
        // A port is present when the authority ends in `:digits` (an IPv6 literal ends in `]`).
        let has_port = !authority.ends_with(']')
            && authority.rsplit_once(':').is_some_and(|(_, port)| {
                !port.is_empty() && port.bytes().all(|b| b.is_ascii_digit())
            });
        let address = if has_port {
            authority.to_string()
        } else {
            format!("{authority}:80")
        };
        Ok(Upstream {
            address,
            host: authority.to_string(),
            prefix: prefix.to_string(),
            idle: std::array::from_fn(|_| Mutex::new(Vec::new())),
        })
    }

    /// An idle connection that is still open, if any. A connection the instance closed (or wrote to unasked)
    /// while idle is readable: it is dropped. Checking costs no system call while the connection is quiet.
    fn take_idle(&self) -> Option<Connection> {
        let mut idle = lock(&self.idle[stack_index()]);
        while let Some(connection) = idle.pop() {
            let mut probe = [0u8; 1];
            match connection.stream.try_read(&mut probe) {
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Some(connection),
                _ => continue,
            }
        }
        None
    }

    fn give_back(&self, mut connection: Connection) {
        if connection.buf.capacity() > MAX_KEPT_BUFFER {
            connection.buf = BytesMut::new();
        }
        let mut idle = lock(&self.idle[stack_index()]);
        if idle.len() < MAX_IDLE_PER_STACK {
            idle.push(connection);
        }
    }

    /// Opens a new connection (no Nagle: every request is written whole).
    async fn connect(&self, timeout: Duration) -> Result<Connection, String> {
        let stream = match tokio::time::timeout(timeout, TcpStream::connect(&self.address)).await {
            Ok(Ok(stream)) => stream,
            Ok(Err(e)) => return Err(format!("connecting to {}: {e}", self.address)),
            Err(_elapsed) => {
                return Err(format!(
                    "connecting to {}: no connection within {timeout:?}",
                    self.address
                ));
            }
        };
        let _ = stream.set_nodelay(true);
        Ok(Connection {
            stream,
            buf: BytesMut::new(),
            head: Vec::new(),
        })
    }
}

impl Client {
    /// The upstream of `base_url`, created on first use.
    fn upstream(&self, base_url: &str) -> Result<Arc<Upstream>, String> {
        if let Some(upstream) = self
            .upstreams
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .get(base_url)
        {
            return Ok(Arc::clone(upstream));
        }
        let upstream = Arc::new(Upstream::parse(base_url)?);
        let mut upstreams = self
            .upstreams
            .write()
            .unwrap_or_else(PoisonError::into_inner);
        // Forget instances that are gone: nobody uses them and none of their connections is kept.
        upstreams.retain(|_, u| {
            Arc::strong_count(u) > 1 || u.idle.iter().any(|stack| !lock(stack).is_empty())
        });
        Ok(Arc::clone(
            upstreams.entry(Arc::from(base_url)).or_insert(upstream),
        ))
    }
}

/// Sends `method path_and_query` with `body` to the instance at `base_url`, relaying the headers that describe
/// the body, and returns the instance's status, content type and body unchanged (see [`send`]).
pub(crate) async fn forward(
    client: &Client,
    method: Method,
    base_url: &str,
    path_and_query: &str,
    headers: &HeaderMap,
    body: Option<Bytes>,
) -> Result<Response, ForwardError> {
    send(
        client,
        &method,
        base_url,
        path_and_query,
        headers,
        &Payload::from(body),
    )
    .await
}

/// Sends `method path_and_query` with `body` to the instance at `base_url`, relaying the headers that describe
/// the body, and returns the instance's status, content type and body unchanged.
///
/// A request that fails before any byte of an answer on a connection that had served requests before (the
/// instance may have closed it while it was idle) is sent once more on a new connection; only a failure on a
/// new connection is a transport failure.
pub(crate) async fn send(
    client: &Client,
    method: &Method,
    base_url: &str,
    path_and_query: &str,
    headers: &HeaderMap,
    body: &Payload,
) -> Result<Response, ForwardError> {
    let upstream = client.upstream(base_url).map_err(ForwardError::Transport)?;
    send_to(client, method, &upstream, path_and_query, headers, body).await
}

/// [`send`] to an instance's own [`Upstream`] (no lookup by URL).
pub(crate) async fn send_to(
    client: &Client,
    method: &Method,
    upstream: &Upstream,
    path_and_query: &str,
    headers: &HeaderMap,
    body: &Payload,
) -> Result<Response, ForwardError> {
    if !path_and_query.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(ForwardError::Transport(format!(
            "{path_and_query:?} is not a request target"
        )));
    }
    let request = RequestHead {
        method,
        upstream,
        path_and_query,
        headers,
        body,
    };
    let (mut connection, mut reused) = match upstream.take_idle() {
        Some(connection) => (connection, true),
        None => (
            Box::pin(upstream.connect(client.connect_timeout))
                .await
                .map_err(ForwardError::Transport)?,
            false,
        ),
    };
    let answer = loop {
        match exchange(&mut connection, &request).await {
            Err(Failure::BeforeAnswer(_stale)) if reused => {
                connection = Box::pin(upstream.connect(client.connect_timeout))
                    .await
                    .map_err(ForwardError::Transport)?;
                reused = false;
            }
            answer => break answer,
        }
    };
    let answer = match answer {
        Ok(answer) => answer,
        Err(Failure::BeforeAnswer(e) | Failure::BadHead(e)) => {
            return Err(ForwardError::Transport(e));
        }
        Err(Failure::Body(e)) => return Err(ForwardError::Body(e)),
    };
    if answer.reusable {
        upstream.give_back(connection);
    }
    let mut response = Response::new(Body::from(answer.body));
    *response.status_mut() = answer.status;
    *response.headers_mut() = answer.headers;
    Ok(response)
}

/// What a forward sends.
struct RequestHead<'a> {
    method: &'a Method,
    upstream: &'a Upstream,
    path_and_query: &'a str,
    headers: &'a HeaderMap,
    body: &'a Payload,
}

/// An instance's answer, read whole.
struct Answer {
    status: StatusCode,
    /// The relayed headers only.
    headers: HeaderMap,
    body: Bytes,
    /// The connection may carry another request.
    reusable: bool,
}

/// Where an exchange failed.
enum Failure {
    /// Writing failed, or the connection ended before the first byte of an answer.
    BeforeAnswer(String),
    /// The answer's head was cut off or is not HTTP.
    BadHead(String),
    /// The head arrived; the body broke off or is malformed.
    Body(String),
}

/// The most iovecs one `writev` is given (Linux allows 1,024).
const MAX_IOVECS: usize = 8;

/// Writes the request and reads the answer on `connection`.
async fn exchange(
    connection: &mut Connection,
    request: &RequestHead<'_>,
) -> Result<Answer, Failure> {
    let address = &request.upstream.address;
    write_head(&mut connection.head, request);
    write_all(
        &mut connection.stream,
        &connection.head,
        request.body.frames(),
    )
    .await
    .map_err(|e| Failure::BeforeAnswer(format!("sending to {address}: {e}")))?;
    read_answer(connection, request.method, address).await
}

/// The request head: request line, `Host`, `Content-Length` and the relayed headers.
fn write_head(out: &mut Vec<u8>, request: &RequestHead<'_>) {
    use std::io::Write as _;
    out.clear();
    out.extend_from_slice(request.method.as_str().as_bytes());
    out.push(b' ');
    out.extend_from_slice(request.upstream.prefix.as_bytes());
    out.extend_from_slice(request.path_and_query.as_bytes());
    out.extend_from_slice(b" HTTP/1.1\r\nhost: ");
    out.extend_from_slice(request.upstream.host.as_bytes());
    out.extend_from_slice(b"\r\ncontent-length: ");
    let _ = write!(out, "{}", request.body.len());
    out.extend_from_slice(b"\r\n");
    for name in RELAYED_REQUEST_HEADERS {
        for value in request.headers.get_all(name) {
            out.extend_from_slice(name.as_str().as_bytes());
            out.extend_from_slice(b": ");
            out.extend_from_slice(value.as_bytes());
            out.extend_from_slice(b"\r\n");
        }
    }
    out.extend_from_slice(b"\r\n");
}

/// Writes `head` and then every frame, gathered (at most [`MAX_IOVECS`] slices per `writev`).
async fn write_all(stream: &mut TcpStream, head: &[u8], frames: &[Bytes]) -> io::Result<()> {
    let piece = |i: usize| -> &[u8] { if i == 0 { head } else { &frames[i - 1] } };
    let pieces = 1 + frames.len();
    // The next byte to write: piece `index`, at `offset`.
    let (mut index, mut offset) = (0, 0);
    loop {
        while index < pieces && offset == piece(index).len() {
            index += 1;
            offset = 0;
        }
        if index == pieces {
            return Ok(());
        }
        let mut slices = [IoSlice::new(&[]); MAX_IOVECS];
        let mut used = 0;
        for i in index..pieces {
            if used == MAX_IOVECS {
                break;
            }
            let bytes = if i == index {
                &piece(i)[offset..]
            } else {
                piece(i)
            };
            if !bytes.is_empty() {
                slices[used] = IoSlice::new(bytes);
                used += 1;
            }
        }
        let mut written = stream.write_vectored(&slices[..used]).await?;
        if written == 0 {
            return Err(io::ErrorKind::WriteZero.into());
        }
        while written > 0 {
            let left = piece(index).len() - offset;
            if written >= left {
                written -= left;
                index += 1;
                offset = 0;
            } else {
                offset += written;
                written = 0;
            }
        }
    }
}

/// Reads more into the connection's buffer; `Ok(0)` at the end of the stream.
async fn fill(connection: &mut Connection) -> io::Result<usize> {
    if connection.buf.capacity() - connection.buf.len() < READ_CHUNK / 8 {
        connection.buf.reserve(READ_CHUNK);
    }
    connection.stream.read_buf(&mut connection.buf).await
}

/// A parsed response head.
struct Head {
    status: StatusCode,
    headers: HeaderMap,
    content_length: Option<u64>,
    chunked: bool,
    keep_alive: bool,
}

/// Reads one response (skipping interim 1xx heads) and leaves the connection's buffer empty when the
/// connection can be reused.
async fn read_answer(
    connection: &mut Connection,
    method: &Method,
    address: &str,
) -> Result<Answer, Failure> {
    let mut answered = false;
    let head = loop {
        let parsed = parse_head(&connection.buf)
            .map_err(|e| Failure::BadHead(format!("invalid response from {address}: {e}")))?;
        match parsed {
            Some((used, head)) if head.status.is_informational() => {
                if head.status == StatusCode::SWITCHING_PROTOCOLS {
                    return Err(Failure::BadHead(format!(
                        "{address} switched protocols, which the gateway does not ask for"
                    )));
                }
                connection.buf.advance(used);
                continue;
            }
            Some((used, head)) => {
                connection.buf.advance(used);
                break head;
            }
            None if connection.buf.len() > MAX_HEAD => {
                return Err(Failure::BadHead(format!(
                    "the response head from {address} exceeds {MAX_HEAD} bytes"
                )));
            }
            None => {}
        }
        match fill(connection).await {
            Ok(0) if !answered && connection.buf.is_empty() => {
                return Err(Failure::BeforeAnswer(format!(
                    "{address} closed the connection without answering"
                )));
            }
            Ok(0) => {
                return Err(Failure::BadHead(format!(
                    "{address} closed the connection in the middle of the response head"
                )));
            }
            Ok(_) => answered = true,
            Err(e) if !answered => {
                return Err(Failure::BeforeAnswer(format!(
                    "reading from {address}: {e}"
                )));
            }
            Err(e) => return Err(Failure::BadHead(format!("reading from {address}: {e}"))),
        }
    };
    let no_body = *method == Method::HEAD
        || head.status == StatusCode::NO_CONTENT
        || head.status == StatusCode::NOT_MODIFIED;
    let broke = |e: String| Failure::Body(format!("the response body from {address} {e}"));
    let (body, delimited) = if no_body {
        (Bytes::new(), true)
    } else if head.chunked {
        // Rare (the built-in worker always sends a length): kept out of the common future's size.
        let body = Box::pin(read_chunked(connection)).await;
        (body.map_err(broke)?, true)
    } else if let Some(length) = head.content_length {
        let length =
            usize::try_from(length).map_err(|_| broke(format!("is too large ({length} bytes)")))?;
        (read_exact(connection, length).await.map_err(broke)?, true)
    } else {
        let body = Box::pin(read_to_end(connection)).await;
        (body.map_err(broke)?, false)
    };
    Ok(Answer {
        status: head.status,
        headers: head.headers,
        body,
        reusable: delimited && head.keep_alive && connection.buf.is_empty(),
    })
}

/// Parses a response head at the start of `buf`: `None` while incomplete, else the bytes it took and the head.
fn parse_head(buf: &[u8]) -> Result<Option<(usize, Head)>, String> {
    if buf.is_empty() {
        return Ok(None);
    }
    let mut slots = [httparse::EMPTY_HEADER; 64];
    let mut response = httparse::Response::new(&mut slots);
    let used = match response.parse(buf) {
        Ok(httparse::Status::Complete(used)) => used,
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(e) => return Err(e.to_string()),
    };
    let code = response.code.unwrap_or(0);
    let status = StatusCode::from_u16(code).map_err(|_| format!("status {code}"))?;
    let mut head = Head {
        status,
        headers: HeaderMap::new(),
        content_length: None,
        chunked: false,
        keep_alive: response.version == Some(1),
    };
    for h in response.headers.iter() {
        let name = h.name;
        if name.eq_ignore_ascii_case("content-length") {
            let length = std::str::from_utf8(h.value)
                .ok()
                .and_then(|v| v.trim().parse::<u64>().ok())
                .ok_or("invalid content-length")?;
            if head.content_length.is_some_and(|l| l != length) {
                return Err("conflicting content-length headers".into());
            }
            head.content_length = Some(length);
        } else if name.eq_ignore_ascii_case("transfer-encoding") {
            // Only `chunked` is understood; it must come last.
            let last = h.value.rsplit(|&b| b == b',').next().unwrap_or_default();
            if last.trim_ascii().eq_ignore_ascii_case(b"chunked") {
                head.chunked = true;
            } else {
                return Err("unsupported transfer-encoding".into());
            }
        } else if name.eq_ignore_ascii_case("connection") {
            for token in h.value.split(|&b| b == b',') {
                let token = token.trim_ascii();
                if token.eq_ignore_ascii_case(b"close") {
                    head.keep_alive = false;
                } else if token.eq_ignore_ascii_case(b"keep-alive") && response.version == Some(0) {
                    head.keep_alive = true;
                }
            }
        } else if let Some(relayed) = RELAYED_RESPONSE_HEADERS
            .iter()
            .find(|relayed| name.eq_ignore_ascii_case(relayed.as_str()))
            && let Some(value) = header_value(h.value)
        {
            head.headers.append((*relayed).clone(), value);
        }
    }
    if head.chunked {
        // A length beside chunked framing is ignored (RFC 9112 §6.3), and the connection is not trusted
        // afterwards.
        head.content_length = None;
        head.keep_alive = false;
    }
    Ok(Some((used, head)))
}

/// A relayed header's value; the usual content types without an allocation.
fn header_value(value: &[u8]) -> Option<HeaderValue> {
    const COMMON: [&str; 2] = ["application/json", "application/octet-stream"];
    match COMMON.iter().find(|common| common.as_bytes() == value) {
        Some(common) => Some(HeaderValue::from_static(common)),
        None => HeaderValue::from_bytes(value).ok(),
    }
}

/// Reads a body of exactly `length` bytes.
async fn read_exact(connection: &mut Connection, length: usize) -> Result<Bytes, String> {
    if connection.buf.len() < length {
        connection.buf.reserve(length - connection.buf.len());
    }
    while connection.buf.len() < length {
        match connection.stream.read_buf(&mut connection.buf).await {
            Ok(0) => {
                return Err(format!(
                    "broke off after {} of {length} bytes",
                    connection.buf.len()
                ));
            }
            Ok(_) => {}
            Err(e) => return Err(format!("broke off: {e}")),
        }
    }
    if length <= COPY_BELOW {
        // A small body is copied out: the buffer stays unshared and is reused as it is for the next answer.
        let body = Bytes::copy_from_slice(&connection.buf[..length]);
        connection.buf.advance(length);
        return Ok(body);
    }
    Ok(connection.buf.split_to(length).freeze())
}

/// Reads a body delimited by the end of the connection.
async fn read_to_end(connection: &mut Connection) -> Result<Bytes, String> {
    loop {
        match fill(connection).await {
            Ok(0) => return Ok(connection.buf.split().freeze()),
            Ok(_) => {}
            Err(e) => return Err(format!("broke off: {e}")),
        }
    }
}

/// Reads a chunked body (chunk extensions and trailers are read and dropped).
async fn read_chunked(connection: &mut Connection) -> Result<Bytes, String> {
    let mut body = BytesMut::new();
    loop {
        let line = read_line(connection).await?;
        let size = line
            .split(|&b| b == b';')
            .next()
            .unwrap_or_default()
            .trim_ascii();
        let size = std::str::from_utf8(size)
            .ok()
            .filter(|s| !s.is_empty() && s.len() <= 16)
            .and_then(|s| usize::from_str_radix(s, 16).ok())
            .ok_or("has an invalid chunk size")?;
        if size == 0 {
            // Trailers, up to the empty line.
            while !read_line(connection).await?.is_empty() {}
            return Ok(body.freeze());
        }
        let needed = size.checked_add(2).ok_or("has an invalid chunk size")?;
        while connection.buf.len() < needed {
            connection.buf.reserve(needed - connection.buf.len());
            match connection.stream.read_buf(&mut connection.buf).await {
                Ok(0) => return Err("broke off inside a chunk".into()),
                Ok(_) => {}
                Err(e) => return Err(format!("broke off: {e}")),
            }
        }
        if &connection.buf[size..needed] != b"\r\n" {
            return Err("has a chunk without its CRLF".into());
        }
        body.extend_from_slice(&connection.buf[..size]);
        connection.buf.advance(needed);
    }
}

/// Reads one CRLF-terminated line (without the CRLF) of a chunked body.
async fn read_line(connection: &mut Connection) -> Result<Bytes, String> {
    loop {
        if let Some(end) = connection.buf.windows(2).position(|w| w == b"\r\n") {
            let line = connection.buf.split_to(end).freeze();
            connection.buf.advance(2);
            return Ok(line);
        }
        if connection.buf.len() > MAX_HEAD {
            return Err("has a chunk line that never ends".into());
        }
        match fill(connection).await {
            Ok(0) => return Err("broke off between chunks".into()),
            Ok(_) => {}
            Err(e) => return Err(format!("broke off: {e}")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn heads_parse_with_their_framing() {
        let (used, head) = parse_head(
            b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 2\r\n\r\n{}",
        )
        .unwrap()
        .unwrap();
        assert_eq!(used, 70);
        assert_eq!(head.status, StatusCode::OK);
        assert_eq!(head.content_length, Some(2));
        assert!(head.keep_alive && !head.chunked);
        assert_eq!(head.headers[header::CONTENT_TYPE], "application/json");
        let (_, head) = parse_head(
            b"HTTP/1.1 400 Bad\r\nTransfer-Encoding: chunked\r\nContent-Length: 9\r\nX-Other: 1\r\n\r\n",
        )
        .unwrap()
        .unwrap();
        assert!(head.chunked && head.content_length.is_none() && !head.keep_alive);
        assert!(head.headers.is_empty(), "only the relayed headers are kept");
        let (_, head) = parse_head(b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\n")
            .unwrap()
            .unwrap();
        assert!(!head.keep_alive);
        let (_, head) = parse_head(b"HTTP/1.0 200 OK\r\n\r\n").unwrap().unwrap();
        assert!(!head.keep_alive);
        assert!(
            parse_head(b"HTTP/1.1 200 OK\r\ncontent-le")
                .unwrap()
                .is_none()
        );
        assert!(parse_head(b"garbage\r\n\r\n").is_err());
        assert!(
            parse_head(b"HTTP/1.1 200 OK\r\ncontent-length: 1\r\ncontent-length: 2\r\n\r\n")
                .is_err()
        );
        assert!(parse_head(b"HTTP/1.1 200 OK\r\ntransfer-encoding: gzip\r\n\r\n").is_err());
    }

    #[test]
    fn base_urls_parse() {
        let u = Upstream::parse("http://127.0.0.1:9001").unwrap();
        assert_eq!(
            (u.address.as_str(), u.host.as_str(), u.prefix.as_str()),
            ("127.0.0.1:9001", "127.0.0.1:9001", "")
        );
        let u = Upstream::parse("http://worker/base/").unwrap();
        assert_eq!(
            (u.address.as_str(), u.host.as_str(), u.prefix.as_str()),
            ("worker:80", "worker", "/base")
        );
        let u = Upstream::parse("http://[::1]").unwrap();
        assert_eq!(u.address, "[::1]:80");
        assert!(Upstream::parse("https://x:1").is_err());
        assert!(Upstream::parse("http://").is_err());
        assert!(Upstream::parse("http://a b:1").is_err());
    }

    /// An instance that answers each request on one connection with the given raw responses, in order.
    async fn scripted(responses: Vec<&'static [u8]>) -> String {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            let (mut stream, _) = listener.accept().await.unwrap();
            let mut buf = vec![0u8; 65536];
            for response in responses {
                let mut seen = Vec::new();
                // Read one request: head, then its content-length.
                loop {
                    let n = stream.read(&mut buf).await.unwrap();
                    if n == 0 {
                        return;
                    }
                    seen.extend_from_slice(&buf[..n]);
                    if let Some(end) = seen.windows(4).position(|w| w == b"\r\n\r\n") {
                        let head = String::from_utf8_lossy(&seen[..end]).to_lowercase();
                        let length: usize = head
                            .lines()
                            .find_map(|l| l.strip_prefix("content-length: "))
                            .map_or(0, |v| v.trim().parse().unwrap());
                        if seen.len() >= end + 4 + length {
                            break;
                        }
                    }
                }
                for piece in response.chunks(7) {
                    stream.write_all(piece).await.unwrap();
                    tokio::task::yield_now().await;
                }
            }
        });
        format!("http://{addr}")
    }

    async fn text(response: Response) -> String {
        let bytes = response.into_body().collect().await.unwrap().to_bytes();
        String::from_utf8(bytes.to_vec()).unwrap()
    }

    #[tokio::test]
    async fn chunked_interim_and_length_delimited_answers_on_one_connection() {
        let base = scripted(vec![
            b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\ncontent-type: text/plain\r\ncontent-length: 5\r\n\r\nhello",
            b"HTTP/1.1 201 Created\r\ntransfer-encoding: chunked\r\n\r\n3;x=y\r\nabc\r\n2\r\nde\r\n0\r\ntrailer: 1\r\n\r\n",
        ])
        .await;
        let client = build_client(&GatewayConfig::default()).unwrap();
        let headers = HeaderMap::new();
        let first = forward(
            &client,
            Method::POST,
            &base,
            "/a",
            &headers,
            Some(Bytes::from_static(b"x")),
        )
        .await
        .unwrap_or_else(|_| panic!("first"));
        assert_eq!(first.status(), 200);
        assert_eq!(first.headers()[header::CONTENT_TYPE], "text/plain");
        assert_eq!(text(first).await, "hello");
        // The second request reuses the connection (the scripted instance accepts only one).
        let second = forward(&client, Method::GET, &base, "/b", &headers, None)
            .await
            .unwrap_or_else(|_| panic!("second"));
        assert_eq!(second.status(), 201);
        assert_eq!(text(second).await, "abcde");
    }

    #[tokio::test]
    async fn a_connection_the_instance_closed_while_idle_is_replaced_without_a_failure() {
        // Every connection serves one request and closes.
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        let accepted = Arc::new(AtomicUsize::new(0));
        let counter = Arc::clone(&accepted);
        tokio::spawn(async move {
            while let Ok((mut stream, _)) = listener.accept().await {
                counter.fetch_add(1, Relaxed);
                tokio::spawn(async move {
                    let mut buf = vec![0u8; 4096];
                    let _ = stream.read(&mut buf).await;
                    let _ = stream
                        .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
                        .await;
                });
            }
        });
        let client = build_client(&GatewayConfig::default()).unwrap();
        let headers = HeaderMap::new();
        for _ in 0..3 {
            let response = forward(&client, Method::POST, &base, "/", &headers, None)
                .await
                .unwrap_or_else(|_| panic!("a stale connection is not a failure"));
            assert_eq!(text(response).await, "ok");
        }
        assert_eq!(accepted.load(Relaxed), 3);
    }

    #[tokio::test]
    async fn a_body_cut_short_is_a_body_error_and_a_silent_close_a_transport_error() {
        let base = scripted(vec![b"HTTP/1.1 200 OK\r\ncontent-length: 10\r\n\r\nabc"]).await;
        let client = build_client(&GatewayConfig::default()).unwrap();
        let headers = HeaderMap::new();
        let cut = forward(&client, Method::POST, &base, "/", &headers, None).await;
        assert!(matches!(cut, Err(ForwardError::Body(e)) if e.contains("3 of 10")));
        let base = scripted(vec![]).await;
        let silent = forward(&client, Method::POST, &base, "/", &headers, None).await;
        assert!(matches!(silent, Err(ForwardError::Transport(_))));
    }
}
