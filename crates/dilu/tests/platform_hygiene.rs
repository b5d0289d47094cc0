//! What `dilu up` leaves to its instances and behind them, over real processes: a worker inherits none of the
//! secrets `dilu up` was started with (`DILU_TOKEN` among them), churn (deleting functions while their instances
//! start or are profiled) leaves no log file, agent record or store row, the store is private, and an adopted
//! worker that dies is reported once as "exited (status unknown)".
//!
//! The functions are training jobs (the built-in trainer), so no model needs fetching.

mod common;

use std::io::{BufRead, BufReader};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::platform::ready_instances;
use common::{AgentProc, dilu_bin};
use reqwest::Method;
use serde_json::Value;

/// The token `dilu up` gets from its environment: no instance may see it.
const SECRET: &str = "hygiene-secret-7f3a9c";

/// A `dilu up` started with `DILU_TOKEN` in its environment; SIGKILLed on drop with every recorded instance.
struct Up {
    child: Child,
    url: String,
    data_dir: PathBuf,
    client: reqwest::blocking::Client,
}

impl Up {
    fn start(data_dir: &Path) -> Up {
        let mut child = Command::new(dilu_bin())
            .args([
                "up",
                "--listen",
                "127.0.0.1:0",
                "--no-nvml",
                "--stop-grace-s",
                "1",
                "--cpu-cores",
                "2",
            ])
            .arg("--data-dir")
            .arg(data_dir)
            .env("DILU_TOKEN", SECRET)
            .env("RUST_BACKTRACE", "1")
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start dilu up");
        let mut reader = BufReader::new(child.stdout.take().expect("stdout"));
        let mut line = String::new();
        reader.read_line(&mut line).expect("dilu up banner");
        let url = line
            .trim()
            .strip_prefix("dilu up: serving on ")
            .unwrap_or_else(|| panic!("unexpected banner {line:?}"))
            .to_string();
        std::thread::spawn(move || {
            let mut sink = String::new();
            while reader.read_line(&mut sink).map(|n| n > 0).unwrap_or(false) {
                sink.clear();
            }
        });
        Up {
            child,
            url,
            data_dir: data_dir.to_path_buf(),
            client: reqwest::blocking::Client::builder()
                .no_proxy()
                .timeout(Duration::from_secs(60))
                .build()
                .expect("client"),
        }
    }

    fn call(&self, method: Method, path: &str, yaml: Option<&str>) -> (u16, Value) {
        let mut request = self
            .client
            .request(method, format!("{}{path}", self.url))
            .bearer_auth(SECRET);
        if let Some(yaml) = yaml {
            request = request
                .header("content-type", "application/yaml")
                .body(yaml.to_string());
        }
        let response = request.send().expect("request");
        let status = response.status().as_u16();
        let text = response.text().expect("body");
        (
            status,
            serde_json::from_str(&text).unwrap_or(Value::String(text)),
        )
    }

    fn deploy(&self, yaml: &str) {
        let (status, body) = self.call(Method::POST, "/v1/functions", Some(yaml));
        assert_eq!(status, 201, "{body}");
    }

    fn delete(&self, name: &str) {
        let (status, body) = self.call(Method::DELETE, &format!("/v1/functions/{name}"), None);
        assert!(status < 300, "{status} {body}");
    }

    fn view(&self, name: &str) -> Value {
        self.call(Method::GET, &format!("/v1/functions/{name}"), None)
            .1
    }

    /// Waits (up to `timeout`) until `done` holds for `name`'s view; panics with the view otherwise.
    fn wait_view(&self, name: &str, timeout: Duration, done: impl Fn(&Value) -> bool) -> Value {
        let deadline = Instant::now() + timeout;
        loop {
            let view = self.view(name);
            if done(&view) {
                return view;
            }
            assert!(Instant::now() < deadline, "{name}: {view:#}");
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn pids(&self) -> Vec<u32> {
        AgentProc::recorded_pids(&self.data_dir.join("agent"))
    }

    fn kill9(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Up {
    fn drop(&mut self) {
        self.kill9();
        for pid in self.pids() {
            // SAFETY: signalling process groups and pids this test started; failures are fine.
            unsafe {
                libc::kill(-(pid as i32), libc::SIGKILL);
                libc::kill(pid as i32, libc::SIGKILL);
            }
        }
    }
}

fn training(name: &str, quota: bool) -> String {
    let quota = if quota {
        "quota: {request: 0.2, limit: 0.5}\n"
    } else {
        ""
    };
    format!(
        "name: {name}\nkind: training\ntraining: {{hidden: 64, layers: 1, batch: 8}}\n{quota}\
         scaling: {{min_instances: 1, max_instances: 1}}\n"
    )
}

/// The names of the variables in `/proc/<pid>/environ`.
fn environ(pid: u32) -> Vec<String> {
    let bytes = std::fs::read(format!("/proc/{pid}/environ")).unwrap_or_default();
    bytes
        .split(|&b| b == 0)
        .filter(|kv| !kv.is_empty())
        .map(|kv| String::from_utf8_lossy(kv).into_owned())
        .collect()
}

fn mode(path: &Path) -> u32 {
    std::fs::metadata(path).unwrap().permissions().mode() & 0o777
}

#[test]
fn workers_inherit_no_secret_and_deleted_instances_leave_nothing_behind() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let up = Up::start(&data);
    // The test's own environment (CARGO_*, NEXTEST_*) reaches `dilu up`, as an operator's shell would.
    let own = environ(up.child.id());
    assert!(own.iter().any(|kv| kv == &format!("DILU_TOKEN={SECRET}")));
    assert!(own.iter().any(|kv| kv.starts_with("CARGO")));

    up.deploy(&training("t", true));
    up.wait_view("t", Duration::from_secs(60), |v| ready_instances(v) == 1);
    let pids = up.pids();
    assert_eq!(pids.len(), 1);
    let env = environ(pids[0]);
    assert!(
        env.iter().any(|kv| kv.starts_with("DILU_QUOTA_FILE=")),
        "{env:?}"
    );
    assert!(env.iter().any(|kv| kv.starts_with("PATH=")), "{env:?}");
    for kv in &env {
        assert!(
            !kv.contains(SECRET) && !kv.starts_with("DILU_TOKEN="),
            "the worker sees the token: {kv}"
        );
        assert!(
            !kv.starts_with("CARGO") && !kv.starts_with("NEXTEST"),
            "the worker inherited {kv}"
        );
    }

    // Churn: delete while an instance starts, while one is profiled, and once serving.
    for round in 0..3 {
        up.deploy(&training(&format!("s{round}"), true));
        up.delete(&format!("s{round}"));
    }
    up.deploy(&training("p", false));
    up.wait_view("p", Duration::from_secs(60), |v| {
        v["status"]["phase"] == "profiling"
            && v["instances"]
                .as_array()
                .is_some_and(|a| a.iter().any(|i| i["profiling"] == true))
    });
    up.delete("p");
    up.delete("t");
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (_, all) = up.call(Method::GET, "/v1/instances", None);
        let instances = all["instances"].as_array().cloned().unwrap_or_default();
        let logs: Vec<String> = std::fs::read_dir(data.join("agent/logs"))
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        if instances.is_empty() && up.pids().is_empty() && logs.is_empty() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "left after churn: instances {instances:?}, logs {logs:?}, pids {:?}",
            up.pids()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let store = dilu_server::store::Store::open(&data.join("dilu.db")).unwrap();
    assert!(store.instances().unwrap().is_empty());
    assert!(store.functions().unwrap().is_empty());
    // The store and its WAL are the owner's only.
    for file in ["dilu.db", "dilu.db-wal", "dilu.db-shm"] {
        let path = data.join(file);
        if path.exists() {
            assert_eq!(mode(&path), 0o600, "{file}: {:o}", mode(&path));
        }
    }
    assert_eq!(mode(&data.join("dilu.db")), 0o600);
}

#[test]
fn an_adopted_worker_that_dies_is_reported_exited_once() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let mut up = Up::start(&data);
    up.deploy(&training("t", true));
    up.wait_view("t", Duration::from_secs(60), |v| ready_instances(v) == 1);
    // A crash of `dilu up`: the worker runs on, and the next `dilu up` adopts it.
    up.kill9();
    let pid = up.pids()[0];
    let up = Up::start(&data);
    up.wait_view("t", Duration::from_secs(60), |v| ready_instances(v) == 1);
    let (_, all) = up.call(Method::GET, "/v1/instances", None);
    assert_eq!(all["instances"][0]["adopted"], true, "{all}");
    // SAFETY: killing the worker group this test's `dilu up` started.
    unsafe {
        libc::kill(-(pid as i32), libc::SIGKILL);
    }
    let view = up.wait_view("t", Duration::from_secs(30), |v| {
        v["last_error"].as_str().is_some()
    });
    let error = view["last_error"].as_str().unwrap();
    assert!(error.contains("exited (status unknown)"), "{error}");
    assert_eq!(error.matches("exited").count(), 1, "{error}");
}
