//! One connection through both HTTP/1.1 paths of `dilu_http::serve`: the lean loop answers ordinary requests,
//! and hyper takes the connection over, bytes already read included, at the first one it does not take.

use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::routing::{get, post};
use dilu_http::{Limits, serve};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

async fn start() -> std::net::SocketAddr {
    let router = Router::new()
        .route("/hello", get(|| async { "hello" }))
        .route(
            "/echo",
            post(|body: Bytes| async move { format!("{} bytes", body.len()) }),
        );
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(serve(
        listener,
        router,
        Limits::default(),
        std::future::pending(),
    ));
    addr
}

/// Reads until the text read ends with `last` (within 5 s).
async fn read_until(stream: &mut TcpStream, last: &str) -> String {
    let mut text = Vec::new();
    let mut buf = [0u8; 8192];
    while !String::from_utf8_lossy(&text).ends_with(last) {
        let Ok(read) = tokio::time::timeout(Duration::from_secs(5), stream.read(&mut buf)).await
        else {
            panic!(
                "no {last:?} within 5 s; got {:?}",
                String::from_utf8_lossy(&text)
            );
        };
        let n = read.unwrap();
        assert!(n > 0, "closed; got {:?}", String::from_utf8_lossy(&text));
        text.extend_from_slice(&buf[..n]);
    }
    String::from_utf8(text).unwrap()
}

#[tokio::test]
async fn a_connection_moves_to_hyper_at_a_chunked_request_and_keeps_being_served() {
    let addr = start().await;
    let mut stream = TcpStream::connect(addr).await.unwrap();
    // Lean, then chunked (hyper), then lean-eligible (still hyper, same connection), all in one write.
    stream
        .write_all(
            b"GET /hello HTTP/1.1\r\nHost: a\r\n\r\n\
              POST /echo HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n4\r\ndefg\r\n0\r\n\r\n\
              POST /echo HTTP/1.1\r\nHost: a\r\nContent-Length: 2\r\n\r\nhi",
        )
        .await
        .unwrap();
    let text = read_until(&mut stream, "2 bytes").await;
    let bodies: Vec<&str> = text
        .split("HTTP/1.1 200 OK\r\n")
        .skip(1)
        .map(|r| r.split("\r\n\r\n").nth(1).unwrap())
        .collect();
    assert_eq!(bodies, ["hello", "7 bytes", "2 bytes"], "{text}");
}

#[tokio::test]
async fn expect_100_continue_and_large_bodies_are_served_by_hyper() {
    let addr = start().await;
    let mut stream = TcpStream::connect(addr).await.unwrap();
    stream
        .write_all(
            b"POST /echo HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nExpect: 100-continue\r\n\r\n",
        )
        .await
        .unwrap();
    let interim = read_until(&mut stream, "\r\n\r\n").await;
    assert!(interim.starts_with("HTTP/1.1 100 Continue"), "{interim}");
    stream.write_all(b"12345").await.unwrap();
    assert!(
        read_until(&mut stream, "5 bytes")
            .await
            .starts_with("HTTP/1.1 200 OK")
    );

    // Over the lean loop's body limit (1 MiB): streamed by hyper.
    let mut stream = TcpStream::connect(addr).await.unwrap();
    let len = (1 << 20) + 1;
    let head = format!("POST /echo HTTP/1.1\r\nHost: a\r\nContent-Length: {len}\r\n\r\n");
    stream.write_all(head.as_bytes()).await.unwrap();
    stream.write_all(&vec![b'x'; len]).await.unwrap();
    let text = read_until(&mut stream, &format!("{len} bytes")).await;
    assert!(text.starts_with("HTTP/1.1 200 OK"), "{text}");
}

#[tokio::test]
async fn hyper_refuses_an_http_1_1_request_without_host_as_the_lean_loop_does() {
    let addr = start().await;
    let mut stream = TcpStream::connect(addr).await.unwrap();
    // Chunked: hyper's path.
    stream
        .write_all(
            b"POST /echo HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n",
        )
        .await
        .unwrap();
    let mut text = String::new();
    stream.read_to_string(&mut text).await.unwrap();
    assert!(text.starts_with("HTTP/1.1 400 Bad Request\r\n"), "{text}");
    assert!(text.contains("needs a Host header"), "{text}");
    assert!(
        !text.contains("bytes"),
        "the service was not called: {text}"
    );
}
