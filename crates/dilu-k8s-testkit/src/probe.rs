//! Readiness probes as the kubelet runs them, reduced to what tests need: `httpGet` (HTTP only; success is a
//! status in 200..400) and `tcpSocket` (the connection opens).

use std::net::SocketAddr;
use std::time::Duration;

use k8s_openapi::api::core::v1::{Container, Probe};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// A probe the runner can run.
#[derive(Debug, Clone)]
pub enum Check {
    /// `GET http://<host>:<port><path>`.
    Http {
        /// Where to connect.
        addr: SocketAddr,
        /// The Host header.
        host: String,
        /// Request path.
        path: String,
    },
    /// A TCP connection to `addr`.
    Tcp {
        /// Where to connect.
        addr: SocketAddr,
    },
}

/// A container's readiness probe, resolved against the pod's IP.
#[derive(Debug, Clone)]
pub struct Readiness {
    /// What to check.
    pub check: Check,
    /// Seconds before the first check.
    pub initial_delay: Duration,
    /// Per check.
    pub timeout: Duration,
    /// Consecutive failures that make a ready container unready.
    pub failure_threshold: u32,
}

impl Readiness {
    /// The container's readiness probe; `Ok(None)` without one, `Err` for one the runner cannot run.
    pub fn of(container: &Container, pod_ip: &str) -> Result<Option<Readiness>, String> {
        let Some(probe) = &container.readiness_probe else {
            return Ok(None);
        };
        let check = check_of(container, probe, pod_ip)?;
        let secs =
            |v: Option<i32>, default: i32| Duration::from_secs(v.unwrap_or(default).max(0) as u64);
        Ok(Some(Readiness {
            check,
            initial_delay: secs(probe.initial_delay_seconds, 0),
            timeout: secs(probe.timeout_seconds, 1).max(Duration::from_secs(1)),
            failure_threshold: probe.failure_threshold.unwrap_or(3).max(1) as u32,
        }))
    }

    /// Runs the check once.
    pub async fn run(&self) -> bool {
        tokio::time::timeout(self.timeout, run_check(&self.check))
            .await
            .unwrap_or(false)
    }
}

fn check_of(container: &Container, probe: &Probe, pod_ip: &str) -> Result<Check, String> {
    let port_of = |port: &IntOrString| -> Result<u16, String> {
        match port {
            IntOrString::Int(p) => u16::try_from(*p).map_err(|_| format!("port {p} out of range")),
            IntOrString::String(name) => container
                .ports
                .iter()
                .flatten()
                .find(|p| p.name.as_deref() == Some(name.as_str()))
                .and_then(|p| u16::try_from(p.container_port).ok())
                .ok_or_else(|| format!("no container port named {name:?}")),
        }
    };
    let addr_of = |host: Option<&String>, port: u16| -> Result<SocketAddr, String> {
        let host = host.map_or(pod_ip, String::as_str);
        format!("{host}:{port}")
            .parse()
            .map_err(|_| format!("probe host {host:?} is not an IPv4 address"))
    };
    if let Some(get) = &probe.http_get {
        if get
            .scheme
            .as_deref()
            .is_some_and(|s| !s.eq_ignore_ascii_case("HTTP"))
        {
            return Err("httpGet with scheme HTTPS is not supported by the node runner".into());
        }
        let port = port_of(&get.port)?;
        let addr = addr_of(get.host.as_ref(), port)?;
        let path = get.path.clone().unwrap_or_else(|| "/".into());
        let path = if path.starts_with('/') {
            path
        } else {
            format!("/{path}")
        };
        return Ok(Check::Http {
            addr,
            host: addr.to_string(),
            path,
        });
    }
    if let Some(tcp) = &probe.tcp_socket {
        let port = port_of(&tcp.port)?;
        return Ok(Check::Tcp {
            addr: addr_of(tcp.host.as_ref(), port)?,
        });
    }
    Err("only httpGet and tcpSocket readiness probes are supported by the node runner".into())
}

async fn run_check(check: &Check) -> bool {
    match check {
        Check::Tcp { addr } => TcpStream::connect(addr).await.is_ok(),
        Check::Http { addr, host, path } => http_status(*addr, host, path)
            .await
            .is_some_and(|code| (200..400).contains(&code)),
    }
}

/// `GET path` on `addr`: the response's status code.
pub async fn http_status(addr: SocketAddr, host: &str, path: &str) -> Option<u16> {
    let mut stream = TcpStream::connect(addr).await.ok()?;
    let request = format!(
        "GET {path} HTTP/1.1\r\nHost: {host}\r\nUser-Agent: kube-probe/1.20\r\nAccept: */*\r\nConnection: close\r\n\r\n"
    );
    stream.write_all(request.as_bytes()).await.ok()?;
    // The status line is all we need: `HTTP/1.x NNN …`.
    let mut head = Vec::with_capacity(64);
    let mut buf = [0u8; 256];
    while !head.contains(&b'\n') && head.len() < 4096 {
        let n = stream.read(&mut buf).await.ok()?;
        if n == 0 {
            break;
        }
        head.extend_from_slice(&buf[..n]);
    }
    let line = String::from_utf8_lossy(&head);
    let mut parts = line.split_whitespace();
    let version = parts.next()?;
    if !version.starts_with("HTTP/") {
        return None;
    }
    parts.next()?.parse().ok()
}
