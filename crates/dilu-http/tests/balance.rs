//! A balanced listener served by event loops on their own threads (`EventLoops`): connections kept even
//! across the loops, new ones going to the loop that holds the fewest when the others hold more.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use axum::Router;
use axum::routing::get;
use dilu_http::{EventLoops, Limits};

/// `GET /who`: the serving thread's name.
fn router() -> Router {
    Router::new().route(
        "/who",
        get(|| async { std::thread::current().name().unwrap_or("?").to_string() }),
    )
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
    let socket = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr: SocketAddr = socket.local_addr().unwrap();
    let loops = EventLoops::start(socket, 2, "loop", router(), Limits::default()).unwrap();

    // Sixteen connections opened together (as wrk opens them) split within one of eight and eight, whichever
    // loop wakes first to accept them (without the balance one loop often took all sixteen).
    let mut streams: Vec<TcpStream> = (0..16).map(|_| TcpStream::connect(addr).unwrap()).collect();
    let answers: Vec<String> = streams.iter_mut().map(who).collect();
    let split = counts(&answers);
    assert_eq!(split.len(), 2, "{answers:?}");
    assert!(split.values().all(|&n| (7..=9).contains(&n)), "{split:?}");
    // Kept alive: the same connection stays on its loop.
    for (stream, first) in streams.iter_mut().zip(&answers) {
        assert_eq!(&who(stream), first);
    }

    // Loop 0's clients leave; the next four connections all go to loop 0, which now holds the fewest, whichever
    // loop accepts them.
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

    // Stopped with connections still open: every loop closes its idle connections and returns.
    loops.stop().unwrap();
    drop((staying, newcomers));
    assert!(TcpStream::connect(addr).is_err(), "the listener is closed");
}
