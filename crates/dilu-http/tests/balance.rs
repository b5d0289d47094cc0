//! A balanced listener: connections spread evenly over event loops on their own threads, new ones going to the
//! loop that holds the fewest, and each loop's `serve` ends when the acceptor stops.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::thread::JoinHandle;
use std::time::Duration;

use axum::Router;
use axum::routing::get;
use dilu_http::{Limits, Share};

/// Serves `GET /who` (the serving thread's name) on `share` from a single-threaded runtime on its own thread.
fn event_loop(name: String, share: Share) -> JoinHandle<std::io::Result<()>> {
    std::thread::Builder::new()
        .name(name)
        .spawn(move || {
            let router = Router::new().route(
                "/who",
                get(|| async { std::thread::current().name().unwrap_or("?").to_string() }),
            );
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap()
                .block_on(dilu_http::serve(
                    share,
                    router,
                    Limits::default(),
                    std::future::pending(),
                ))
        })
        .unwrap()
}

/// Asks `GET /who` over a kept-alive connection and returns the answer.
fn who(stream: &mut TcpStream) -> String {
    stream
        .write_all(b"GET /who HTTP/1.1\r\nHost: localhost\r\n\r\n")
        .unwrap();
    let mut reader = BufReader::new(stream);
    let mut length = 0usize;
    loop {
        let mut line = String::new();
        reader.read_line(&mut line).unwrap();
        if line == "\r\n" {
            break;
        }
        if let Some(value) = line.to_ascii_lowercase().strip_prefix("content-length:") {
            length = value.trim().parse().unwrap();
        }
    }
    let mut body = vec![0; length];
    reader.read_exact(&mut body).unwrap();
    String::from_utf8(body).unwrap()
}

fn counts(answers: &[String]) -> BTreeMap<String, usize> {
    let mut counts = BTreeMap::new();
    for answer in answers {
        *counts.entry(answer.clone()).or_insert(0) += 1;
    }
    counts
}

#[test]
fn connections_go_to_the_event_loop_that_holds_the_fewest() {
    // The acceptor runs on its own runtime, as `dilu gateway`'s does on the main thread.
    let (shares_tx, shares_rx) = std::sync::mpsc::channel();
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let acceptor = std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        runtime.block_on(async move {
            let socket = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            let addr = socket.local_addr().unwrap();
            let (shares, accepting) = dilu_http::balance(socket, 2).unwrap();
            shares_tx.send((addr, shares)).unwrap();
            tokio::select! {
                () = accepting => {}
                _ = stop_rx => {}
            }
        });
    });
    let (addr, shares): (SocketAddr, Vec<Share>) = shares_rx.recv().unwrap();
    let loops: Vec<_> = shares
        .into_iter()
        .enumerate()
        .map(|(i, share)| event_loop(format!("loop-{i}"), share))
        .collect();

    // Sixteen connections opened together (as wrk opens them) split eight and eight, whatever each loop is
    // doing when they arrive.
    let mut streams: Vec<TcpStream> = (0..16).map(|_| TcpStream::connect(addr).unwrap()).collect();
    let answers: Vec<String> = streams.iter_mut().map(who).collect();
    let split = counts(&answers);
    assert_eq!(
        split,
        BTreeMap::from([("loop-0".to_string(), 8), ("loop-1".to_string(), 8)]),
        "{answers:?}"
    );
    // Kept alive: the same connection stays on its loop.
    for (stream, first) in streams.iter_mut().zip(&answers) {
        assert_eq!(&who(stream), first);
    }

    // Loop 0's clients leave; the next four connections all go to loop 0, which now holds the fewest.
    let (leaving, staying): (Vec<_>, Vec<_>) = streams
        .into_iter()
        .zip(&answers)
        .partition(|(_, answer)| *answer == "loop-0");
    drop(leaving);
    std::thread::sleep(Duration::from_secs(1));
    let mut newcomers: Vec<TcpStream> = (0..4).map(|_| TcpStream::connect(addr).unwrap()).collect();
    let answers: Vec<String> = newcomers.iter_mut().map(who).collect();
    assert_eq!(
        counts(&answers),
        BTreeMap::from([("loop-0".to_string(), 4)]),
        "{answers:?}"
    );

    // With the acceptor gone, each loop's serve returns.
    stop_tx.send(()).unwrap();
    acceptor.join().unwrap();
    for event_loop in loops {
        event_loop.join().unwrap().unwrap();
    }
    drop((staying, newcomers));
}
