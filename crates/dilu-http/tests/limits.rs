//! The listener limits against real sockets: idle and slow clients cannot hold the server.

use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Bytes;
use axum::routing::{get, post};
use dilu_http::{Limits, serve};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

async fn start(limits: Limits) -> std::net::SocketAddr {
    let router = Router::new()
        .route("/health", get(|| async { "ok" }))
        .route(
            "/echo",
            post(
                |body: Result<Bytes, axum::extract::rejection::BytesRejection>| async move {
                    match body {
                        Ok(body) => format!("{} bytes", body.len()),
                        Err(e) => format!("refused: {}", e.body_text()),
                    }
                },
            ),
        );
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(serve(listener, router, limits, std::future::pending()));
    addr
}

async fn get_health(addr: std::net::SocketAddr) -> String {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    stream
        .write_all(b"GET /health HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut text = String::new();
    stream.read_to_string(&mut text).await.unwrap();
    text
}

/// Reads until the peer closes; how long that took.
async fn time_to_close(stream: &mut TcpStream, limit: Duration) -> Option<Duration> {
    let start = Instant::now();
    let mut buf = [0u8; 1024];
    loop {
        match tokio::time::timeout(limit.saturating_sub(start.elapsed()), stream.read(&mut buf))
            .await
        {
            Err(_) => return None,
            Ok(Ok(0)) | Ok(Err(_)) => return Some(start.elapsed()),
            Ok(Ok(_)) => {}
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_connections_at_the_cap_give_way_to_new_requests() {
    let addr = start(Limits {
        max_connections: Some(16),
        header_read: Duration::from_secs(60),
        ..Limits::default()
    })
    .await;
    let mut idle = Vec::new();
    for _ in 0..40 {
        idle.push(TcpStream::connect(addr).await.unwrap());
    }
    let started = Instant::now();
    let answer = tokio::time::timeout(Duration::from_secs(10), get_health(addr))
        .await
        .expect("/health answered while 40 idle connections are open against a cap of 16");
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert!(answer.ends_with("ok"), "{answer}");
    eprintln!("answered in {:?}", started.elapsed());
    // The oldest idle connections were the ones closed.
    let mut closed = 0;
    for stream in idle.iter_mut().take(24) {
        if time_to_close(stream, Duration::from_millis(500))
            .await
            .is_some()
        {
            closed += 1;
        }
    }
    assert!(
        closed >= 20,
        "only {closed} of the 24 oldest idle connections were closed"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_and_idle_connections_are_closed_after_the_header_timeout() {
    let addr = start(Limits {
        header_read: Duration::from_millis(300),
        ..Limits::default()
    })
    .await;
    // Says nothing at all.
    let mut silent = TcpStream::connect(addr).await.unwrap();
    let waited = time_to_close(&mut silent, Duration::from_secs(5)).await;
    assert!(
        waited.is_some_and(|w| w >= Duration::from_millis(250)),
        "{waited:?}"
    );
    // Sends half a request head.
    let mut slow = TcpStream::connect(addr).await.unwrap();
    slow.write_all(b"GET /health HTTP/1.1\r\nHost: loc")
        .await
        .unwrap();
    assert!(
        time_to_close(&mut slow, Duration::from_secs(5))
            .await
            .is_some()
    );
    // Served once, then idle on a kept-alive connection.
    let mut kept = TcpStream::connect(addr).await.unwrap();
    kept.write_all(b"GET /health HTTP/1.1\r\nHost: localhost\r\n\r\n")
        .await
        .unwrap();
    let mut buf = [0u8; 512];
    let n = kept.read(&mut buf).await.unwrap();
    assert!(String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 200"));
    let waited = time_to_close(&mut kept, Duration::from_secs(5)).await;
    assert!(
        waited.is_some(),
        "an idle kept-alive connection stays open forever"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_body_that_does_not_arrive_in_time_is_refused() {
    let addr = start(Limits {
        body_read: Duration::from_millis(400),
        ..Limits::default()
    })
    .await;
    let mut stream = TcpStream::connect(addr).await.unwrap();
    stream
        .write_all(b"POST /echo HTTP/1.1\r\nHost: localhost\r\nContent-Length: 100\r\n\r\nhello")
        .await
        .unwrap();
    let started = Instant::now();
    let mut buf = vec![0u8; 4096];
    let n = tokio::time::timeout(Duration::from_secs(5), stream.read(&mut buf))
        .await
        .expect("the server answered a stalled body")
        .unwrap();
    let text = String::from_utf8_lossy(&buf[..n]).to_string();
    assert!(started.elapsed() >= Duration::from_millis(300));
    assert!(text.contains("refused"), "{text}");
    assert!(text.contains("body deadline"), "{text}");
    // A body that arrives in time is served.
    let mut stream = TcpStream::connect(addr).await.unwrap();
    stream
        .write_all(b"POST /echo HTTP/1.1\r\nHost: localhost\r\nContent-Length: 5\r\nConnection: close\r\n\r\nhello")
        .await
        .unwrap();
    let mut text = String::new();
    stream.read_to_string(&mut text).await.unwrap();
    assert!(text.ends_with("5 bytes"), "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_graceful_stop_lets_the_request_in_flight_finish() {
    let router = Router::new().route(
        "/slow",
        get(|| async {
            tokio::time::sleep(Duration::from_millis(300)).await;
            "done"
        }),
    );
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(serve(listener, router, Limits::default(), async move {
        let _ = rx.await;
    }));
    let mut stream = TcpStream::connect(addr).await.unwrap();
    stream
        .write_all(b"GET /slow HTTP/1.1\r\nHost: localhost\r\n\r\n")
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(50)).await;
    tx.send(()).unwrap();
    let mut text = String::new();
    stream.read_to_string(&mut text).await.unwrap();
    assert!(text.ends_with("done"), "{text}");
    tokio::time::timeout(Duration::from_secs(5), server)
        .await
        .expect("serve returned after the stop")
        .unwrap()
        .unwrap();
}
