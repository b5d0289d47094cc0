//! The real kube-scheduler 1.20 against a test [`ApiServer`].

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use tempfile::TempDir;

use crate::apiserver::{ApiServer, Binaries, KUBE_SCHEDULER_USER};
use crate::process::{Proc, free_port, tail};

const READY_TIMEOUT: Duration = Duration::from_secs(60);

/// kube-scheduler 1.20 (`default-scheduler`) running as [`KUBE_SCHEDULER_USER`], configured by a
/// `kubescheduler.config.k8s.io/v1beta1` KubeSchedulerConfiguration: leader election off, HTTPS serving off
/// (`--secure-port=0`, `--port=0`), its healthz and metrics on a free 127.0.0.1 port, and the client's QPS and
/// burst as given. Dropping it kills it.
pub struct KubeScheduler {
    proc: Proc,
    dir: TempDir,
    healthz: SocketAddr,
}

impl std::fmt::Debug for KubeScheduler {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KubeScheduler")
            .field("pid", &self.proc.pid())
            .field("healthz", &self.healthz)
            .finish()
    }
}

impl KubeScheduler {
    /// Starts it and waits until its `/healthz` answers `ok`. Panics (with its log's tail) when it does not
    /// within 60 s, and when the binary is missing (build it: `bash scripts/build-kube.sh`).
    pub async fn start(api: &ApiServer, qps: f32, burst: i32) -> KubeScheduler {
        let binaries =
            Binaries::find().unwrap_or_else(|missing| panic!("dilu-k8s-testkit: {missing}"));
        for _ in 0..3 {
            if let Some(s) = KubeScheduler::try_start(&binaries, api, qps, burst).await {
                return s;
            }
        }
        panic!("dilu-k8s-testkit: kube-scheduler: its healthz port kept being taken (3 attempts)");
    }

    async fn try_start(
        binaries: &Binaries,
        api: &ApiServer,
        qps: f32,
        burst: i32,
    ) -> Option<KubeScheduler> {
        let dir = tempfile::Builder::new()
            .prefix("dilu-kube-scheduler-")
            .tempdir()
            .expect("dilu-k8s-testkit: creating a temporary directory");
        let port = free_port().expect("dilu-k8s-testkit: choosing a port");
        let healthz = SocketAddr::from(([127, 0, 0, 1], port));
        let kubeconfig = api.kubeconfig(KUBE_SCHEDULER_USER);
        // JSON is YAML: the configuration file needs no YAML writer.
        let config = serde_json::json!({
            "apiVersion": "kubescheduler.config.k8s.io/v1beta1",
            "kind": "KubeSchedulerConfiguration",
            "clientConnection": {
                "kubeconfig": kubeconfig,
                "qps": qps,
                "burst": burst,
            },
            "leaderElection": {"leaderElect": false},
            "healthzBindAddress": healthz.to_string(),
            "metricsBindAddress": healthz.to_string(),
        });
        let config_file = dir.path().join("config.yaml");
        std::fs::write(&config_file, config.to_string())
            .expect("dilu-k8s-testkit: writing the scheduler configuration");
        let log = dir.path().join("kube-scheduler.log");
        let file = std::fs::File::create(&log).expect("dilu-k8s-testkit: creating a log file");
        let err = file
            .try_clone()
            .expect("dilu-k8s-testkit: duplicating a log file handle");
        let mut command = Command::new(&binaries.kube_scheduler);
        command
            .arg(format!("--config={}", config_file.display()))
            .args(["--port=0", "--secure-port=0"])
            .stdin(Stdio::null())
            .stdout(file)
            .stderr(err);
        let proc = Proc::spawn(command)
            .unwrap_or_else(|e| panic!("dilu-k8s-testkit: starting kube-scheduler: {e}"));
        let scheduler = KubeScheduler { proc, dir, healthz };
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            if let Some(status) = scheduler.proc.exit_status() {
                let text = std::fs::read_to_string(&log).unwrap_or_default();
                if text.contains("address already in use") {
                    return None;
                }
                panic!(
                    "dilu-k8s-testkit: kube-scheduler exited ({status}) while starting:\n{}",
                    tail(&log, 40)
                );
            }
            let probe = tokio::task::spawn_blocking(move || http_get_ok(healthz, "/healthz"))
                .await
                .unwrap_or(false);
            if probe {
                return Some(scheduler);
            }
            if Instant::now() >= deadline {
                panic!(
                    "dilu-k8s-testkit: kube-scheduler's healthz ({healthz}) not ok within {READY_TIMEOUT:?}:\n{}",
                    tail(&log, 40)
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Its process id.
    pub fn pid(&self) -> u32 {
        self.proc.pid()
    }

    /// Its log file.
    pub fn log_path(&self) -> std::path::PathBuf {
        self.dir.path().join("kube-scheduler.log")
    }

    /// The last `lines` lines of its log.
    pub fn log_tail(&self, lines: usize) -> String {
        tail(&self.log_path(), lines)
    }

    /// Where its healthz and metrics are served (plain HTTP).
    pub fn healthz_addr(&self) -> SocketAddr {
        self.healthz
    }

    /// Its directory (configuration, log).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }
}

impl Drop for KubeScheduler {
    fn drop(&mut self) {
        self.proc.kill();
    }
}

fn http_get_ok(addr: SocketAddr, path: &str) -> bool {
    let Ok(mut stream) = TcpStream::connect_timeout(&addr, Duration::from_millis(500)) else {
        return false;
    };
    let _ = stream.set_read_timeout(Some(Duration::from_secs(2)));
    let request = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    if stream.write_all(request.as_bytes()).is_err() {
        return false;
    }
    let mut answer = String::new();
    let _ = stream.read_to_string(&mut answer);
    answer.starts_with("HTTP/1.1 200") && answer.ends_with("ok")
}
