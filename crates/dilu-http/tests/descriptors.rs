//! The defect this crate fixes, reproduced: with the open-file limit reached by idle connections, a plain
//! `axum::serve` listener never answers `/health` again, and `dilu_http::serve` does. Its own binary because
//! it lowers the process's open-file limit.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use axum::Router;
use axum::routing::get;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const IDLE: usize = 200;

/// Another process (its descriptors are its own) that opens `IDLE` connections and holds them.
fn hold_idle_connections(port: u16) -> Child {
    let script = format!(
        "import socket, sys, time\n\
         held = [socket.create_connection(('127.0.0.1', {port}), timeout=10) for _ in range({IDLE})]\n\
         print(len(held), flush=True)\n\
         time.sleep(120)\n"
    );
    let mut command = Command::new("python3");
    // The client gets back the descriptors this process gave up.
    // SAFETY: getrlimit/setrlimit are async-signal-safe; nothing else runs in the closure.
    unsafe {
        use std::os::unix::process::CommandExt;
        command.pre_exec(|| {
            let mut limit = libc::rlimit {
                rlim_cur: 0,
                rlim_max: 0,
            };
            libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit);
            limit.rlim_cur = limit.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &limit);
            Ok(())
        });
    }
    let mut child = command
        .args(["-c", &script])
        .stdout(Stdio::piped())
        .spawn()
        .expect("python3 (for a client process)");
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    assert_eq!(
        line.trim(),
        IDLE.to_string(),
        "the client could not open its connections"
    );
    child
}

async fn health(addr: std::net::SocketAddr) -> Option<String> {
    let attempt = async {
        let mut stream = tokio::net::TcpStream::connect(addr).await.ok()?;
        stream
            .write_all(b"GET /health HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
            .await
            .ok()?;
        let mut text = String::new();
        stream.read_to_string(&mut text).await.ok()?;
        Some(text)
    };
    tokio::time::timeout(Duration::from_secs(5), attempt)
        .await
        .ok()
        .flatten()
}

fn router() -> Router {
    Router::new().route("/health", get(|| async { "ok" }))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_connections_at_the_open_file_limit_starve_axum_serve_but_not_dilu_http() {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit on a struct we own; this test is alone in its process.
    unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) };
    assert!(
        limit.rlim_max >= 1024,
        "the client process needs {IDLE}+ descriptors"
    );
    limit.rlim_cur = 128;
    assert_eq!(unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &limit) }, 0);

    // Before: axum::serve accepts until the process is out of descriptors and never closes an idle one.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let plain = listener.local_addr().unwrap();
    let server = tokio::spawn(async move { axum::serve(listener, router()).await });
    let mut client = hold_idle_connections(plain.port());
    tokio::time::sleep(Duration::from_millis(300)).await;
    let before = health(plain).await;
    let _ = client.kill();
    let _ = client.wait();
    server.abort();
    let _ = server.await;
    assert!(
        before.is_none(),
        "axum::serve answered at the limit: {before:?}"
    );

    // Now: the cap stays below the limit and the longest-idle connection makes room.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let capped = listener.local_addr().unwrap();
    tokio::spawn(dilu_http::serve(
        listener,
        router(),
        dilu_http::Limits::default(),
        std::future::pending(),
    ));
    let mut client = hold_idle_connections(capped.port());
    tokio::time::sleep(Duration::from_millis(300)).await;
    let after = health(capped).await;
    let _ = client.kill();
    let _ = client.wait();
    let after = after
        .expect("dilu_http::serve did not answer /health with 200 idle connections at 128 files");
    assert!(
        after.starts_with("HTTP/1.1 200") && after.ends_with("ok"),
        "{after}"
    );
}
