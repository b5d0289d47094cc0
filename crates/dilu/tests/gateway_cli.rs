//! `dilu gateway` as a real process: static routes to a fake v2 instance, its metrics, a prompt graceful stop,
//! idle connections past its open-file limit, and flags refused with the flag named.

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

fn dilu() -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_dilu"));
    command.env("RUST_BACKTRACE", "0").stdin(Stdio::null());
    command
}

/// A v2 instance stand-in on 127.0.0.1: answers every request on a kept-alive connection with the same JSON.
fn fake_instance() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(stream) = stream else { return };
            std::thread::spawn(move || answer_all(stream));
        }
    });
    addr
}

fn answer_all(mut stream: TcpStream) {
    let mut seen = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        // One request: its head, then Content-Length bytes.
        let (end, length) = loop {
            if let Some(end) = seen.windows(4).position(|w| w == b"\r\n\r\n") {
                let head = String::from_utf8_lossy(&seen[..end]).to_ascii_lowercase();
                let length: usize = head
                    .lines()
                    .find_map(|l| l.strip_prefix("content-length:"))
                    .map_or(0, |v| v.trim().parse().unwrap());
                break (end + 4, length);
            }
            match stream.read(&mut buf) {
                Ok(0) | Err(_) => return,
                Ok(n) => seen.extend_from_slice(&buf[..n]),
            }
        };
        while seen.len() < end + length {
            match stream.read(&mut buf) {
                Ok(0) | Err(_) => return,
                Ok(n) => seen.extend_from_slice(&buf[..n]),
            }
        }
        seen.drain(..end + length);
        let body = "{\"model_name\":\"f\",\"outputs\":[]}";
        let response = format!(
            "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
            body.len()
        );
        if stream.write_all(response.as_bytes()).is_err() {
            return;
        }
    }
}

/// A running `dilu gateway`; killed on drop.
struct Served {
    child: Child,
    base: String,
}

impl Served {
    /// `dilu gateway` on a free loopback port with `route` and two event loops, started by `command`.
    fn routed(command: Command, route: &str) -> Served {
        Served::start_with(
            command,
            &[
                "--listen",
                "127.0.0.1:0",
                "--route",
                route,
                "--threads",
                "2",
            ],
        )
    }

    fn start_with(mut command: Command, args: &[&str]) -> Served {
        let mut child = command
            .arg("gateway")
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start dilu gateway");
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        let base = line
            .trim()
            .strip_prefix("dilu gateway listening on ")
            .unwrap_or_else(|| panic!("unexpected first line {line:?}"))
            .to_string();
        assert!(!base.ends_with(":0"), "the bound port is printed: {base}");
        Served { child, base }
    }

    /// SIGTERM, then the exit status (within 10 s).
    fn terminate(mut self) -> std::process::ExitStatus {
        // SAFETY: kill(2) on our own child's pid.
        unsafe { libc::kill(self.child.id() as libc::pid_t, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            assert!(Instant::now() < deadline, "no exit within 10 s of SIGTERM");
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

impl Drop for Served {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn gateway_routes_to_static_instances_and_stops_on_sigterm() {
    let instance = fake_instance();
    let route = format!("f=http://{instance}");
    let gateway = Served::routed(dilu(), &route);
    let client = reqwest::blocking::Client::builder()
        .no_proxy()
        .build()
        .unwrap();
    for _ in 0..5 {
        let response = client
            .post(format!("{}/v2/models/f/infer", gateway.base))
            .header("content-type", "application/json")
            .body("{\"inputs\":[]}")
            .send()
            .unwrap();
        assert_eq!(response.status(), 200);
        assert_eq!(
            response.text().unwrap(),
            "{\"model_name\":\"f\",\"outputs\":[]}"
        );
    }
    let response = client
        .post(format!("{}/v2/models/other/infer", gateway.base))
        .body("{}")
        .send()
        .unwrap();
    assert_eq!(response.status(), 404);
    let metrics = client
        .get(format!("{}/metrics", gateway.base))
        .send()
        .unwrap()
        .text()
        .unwrap();
    assert!(
        metrics.contains("dilu_gateway_requests_total{function=\"f\",code=\"200\"} 5\n"),
        "{metrics}"
    );
    assert!(metrics.contains("dilu_gateway_instances_ready{function=\"f\"} 1\n"));
    let status = gateway.terminate();
    assert!(status.success(), "{status:?}");
}

/// One inference POST on a new connection: its status line.
fn infer_status(base: &str) -> String {
    let addr = base.trim_start_matches("http://");
    let mut stream = TcpStream::connect(addr).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    let body = "{\"inputs\":[]}";
    write!(
        stream,
        "POST /v2/models/f/infer HTTP/1.1\r\nHost: {addr}\r\ncontent-type: application/json\r\n\
         content-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut line = String::new();
    BufReader::new(stream).read_line(&mut line).unwrap();
    line.trim_end().to_string()
}

#[test]
fn idle_connections_past_the_open_file_limit_do_not_starve_inference() {
    let instance = fake_instance();
    let route = format!("f=http://{instance}");
    let mut command = dilu();
    common::limit_open_files(&mut command, 1024);
    // Two event loops sharing the socket, kept even: each loop evicts its own longest-idle connection at its cap.
    let gateway = Served::routed(command, &route);
    assert_eq!(infer_status(&gateway.base), "HTTP/1.1 200 OK");

    common::raise_own_open_files();
    let addr: SocketAddr = gateway.base.trim_start_matches("http://").parse().unwrap();
    let idle: Vec<TcpStream> = (0..1100)
        .filter_map(|_| TcpStream::connect_timeout(&addr, Duration::from_secs(5)).ok())
        .collect();
    assert!(idle.len() >= 1024, "only {} connections opened", idle.len());
    let started = Instant::now();
    assert_eq!(infer_status(&gateway.base), "HTTP/1.1 200 OK");
    eprintln!(
        "with {} idle connections and 1,024 files: an inference answered in {:?}",
        idle.len(),
        started.elapsed()
    );
    drop(idle);
    let status = gateway.terminate();
    assert!(status.success(), "{status:?}");
}

#[test]
fn bad_routes_and_settings_are_refused_naming_the_flag() {
    for (args, expected) in [
        (vec!["--route", "f"], "--route"),
        (vec!["--route", "f=https://127.0.0.1:1"], "http://"),
        (
            vec![
                "--route",
                "f=http://127.0.0.1:1",
                "--route",
                "f=http://127.0.0.1:2",
            ],
            "routed twice",
        ),
        (
            vec!["--route", "f=http://127.0.0.1:1", "--threads", "0"],
            "--threads",
        ),
        (vec![], "--route"),
    ] {
        let out = dilu()
            .arg("gateway")
            .args(["--listen", "127.0.0.1:0"])
            .args(&args)
            .output()
            .unwrap();
        assert!(!out.status.success(), "{args:?} was accepted");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains(expected), "{args:?}: {stderr}");
    }
}
