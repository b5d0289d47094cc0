//! A `dilu agent` process for end-to-end tests, and a small JSON-over-HTTP client for its API.

#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use serde_json::Value;

pub mod platform;

/// A v2 server in Python's standard library for process functions (`common/doubler.py`): output = input × 2.
pub const DOUBLER: &str = include_str!("doubler.py");

/// A v2 request the doubler answers (`[1, 2, 3, 4]` → `[2, 4, 6, 8]`).
pub const DOUBLER_SAMPLE: &str =
    r#"{"inputs": [{"name": "input", "datatype": "FP32", "shape": [1, 4], "data": [1, 2, 3, 4]}]}"#;

/// The `dilu` binary under test.
pub fn dilu_bin() -> &'static str {
    env!("CARGO_BIN_EXE_dilu")
}

/// Raises this test process's open-file limit to its hard limit, which must allow 1,100+ sockets.
pub fn raise_own_open_files() {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit on a struct we own.
    unsafe {
        libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit);
        limit.rlim_cur = limit.rlim_max;
        libc::setrlimit(libc::RLIMIT_NOFILE, &limit);
    }
    assert!(
        limit.rlim_cur >= 4096,
        "the test needs 1,100+ sockets; hard limit is {}",
        limit.rlim_cur
    );
}

/// Makes `command`'s process start with its open-file limit (soft and hard) at `limit`.
pub fn limit_open_files(command: &mut Command, limit: u64) {
    use std::os::unix::process::CommandExt;
    // SAFETY: setrlimit is async-signal-safe; the closure touches nothing else.
    unsafe {
        command.pre_exec(move || {
            let rlimit = libc::rlimit {
                rlim_cur: limit,
                rlim_max: limit,
            };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &rlimit) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
}

/// Runs `dilu ARGS…` that must refuse to start: its output once it exits; a panic naming `what` if it is
/// still running after 20 s (it started when it should not have), after killing it.
pub fn refused_start(args: &[&std::ffi::OsStr], what: &str) -> std::process::Output {
    let mut child = Command::new(dilu_bin())
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start dilu");
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while std::time::Instant::now() < deadline {
        if child.try_wait().expect("wait").is_some() {
            return child.wait_with_output().expect("output");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = child.kill();
    let _ = child.wait();
    panic!("{what}: it started and kept running");
}

/// A running agent; killed (SIGKILL) on drop, and every instance it recorded is killed too.
pub struct AgentProc {
    child: Child,
    pub url: String,
    pub data_dir: PathBuf,
    /// The agent API's token (from `DATA_DIR/token`).
    pub token: String,
    client: reqwest::blocking::Client,
}

impl AgentProc {
    /// Starts `dilu agent` on a free port with `data_dir` and extra flags, without NVML.
    pub fn start(data_dir: &Path, extra: &[&str]) -> AgentProc {
        let mut flags = vec!["--no-nvml"];
        flags.extend_from_slice(extra);
        Self::start_with_env(data_dir, &flags, &[])
    }

    /// Starts `dilu agent` on a free port with `data_dir`, these flags and these environment variables (NVML
    /// is looked for unless the flags say `--no-nvml`).
    pub fn start_with_env(
        data_dir: &Path,
        flags: &[&str],
        env: &[(&str, &std::ffi::OsStr)],
    ) -> AgentProc {
        let mut child = Command::new(dilu_bin())
            .args(["agent", "--listen", "127.0.0.1:0", "--data-dir"])
            .arg(data_dir)
            .args(flags)
            .envs(env.iter().copied())
            .env("RUST_BACKTRACE", "0")
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start dilu agent");
        let stdout = child.stdout.take().expect("stdout");
        let mut line = String::new();
        BufReader::new(stdout)
            .read_line(&mut line)
            .expect("agent banner");
        let url = line
            .trim()
            .strip_prefix("dilu agent listening on ")
            .unwrap_or_else(|| panic!("unexpected agent banner {line:?}"))
            .to_string();
        let token = std::fs::read_to_string(data_dir.join("token"))
            .expect("the agent writes its API token before it listens")
            .trim()
            .to_string();
        AgentProc {
            child,
            url,
            data_dir: data_dir.to_path_buf(),
            token,
            client: reqwest::blocking::Client::builder()
                .timeout(Duration::from_secs(30))
                .build()
                .expect("client"),
        }
    }

    fn call(&self, method: reqwest::Method, path: &str, body: Option<Value>) -> (u16, Value) {
        let mut request = self
            .client
            .request(method, format!("{}{path}", self.url))
            .bearer_auth(&self.token);
        if let Some(body) = body {
            request = request.json(&body);
        }
        let response = request.send().expect("agent request");
        let status = response.status().as_u16();
        let text = response.text().expect("body");
        let value = serde_json::from_str(&text).unwrap_or(Value::String(text));
        (status, value)
    }

    /// `GET path`.
    pub fn get(&self, path: &str) -> (u16, Value) {
        self.call(reqwest::Method::GET, path, None)
    }

    /// `POST path` with a JSON body.
    pub fn post(&self, path: &str, body: Value) -> (u16, Value) {
        self.call(reqwest::Method::POST, path, Some(body))
    }

    /// `PATCH path` with a JSON body.
    pub fn patch(&self, path: &str, body: Value) -> (u16, Value) {
        self.call(reqwest::Method::PATCH, path, Some(body))
    }

    /// `DELETE path`.
    pub fn delete(&self, path: &str) -> (u16, Value) {
        self.call(reqwest::Method::DELETE, path, None)
    }

    /// The CPU device's UUID.
    pub fn cpu_device(&self) -> String {
        let (_, devices) = self.get("/devices");
        devices["devices"]
            .as_array()
            .expect("devices")
            .iter()
            .find(|d| d["device"]["kind"] == "cpu")
            .expect("a CPU device")["device"]["uuid"]
            .as_str()
            .expect("uuid")
            .to_string()
    }

    /// SIGKILL, as a crash would.
    pub fn kill9(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// (instance id, pid) of every instance in the agent's state file, by id. The agent's reports carry no
    /// pids (they stay on the node); a test on the node reads them where the agent keeps them.
    pub fn recorded(data_dir: &Path) -> Vec<(String, u32)> {
        let Ok(text) = std::fs::read_to_string(data_dir.join("agent-state.json")) else {
            return Vec::new();
        };
        let state: Value = serde_json::from_str(&text).unwrap_or(Value::Null);
        let mut out: Vec<(String, u32)> = state["instances"]
            .as_array()
            .map(|list| {
                list.iter()
                    .filter_map(|i| {
                        Some((i["id"].as_str()?.to_string(), i["pid"].as_u64()? as u32))
                    })
                    .collect()
            })
            .unwrap_or_default();
        out.sort();
        out
    }

    /// The pid the agent's state file records for instance `id`.
    pub fn recorded_pid(data_dir: &Path, id: &str) -> Option<u32> {
        Self::recorded(data_dir)
            .into_iter()
            .find(|(i, _)| i == id)
            .map(|(_, pid)| pid)
    }

    /// Pids of the instances in the agent's state file.
    pub fn recorded_pids(data_dir: &Path) -> Vec<u32> {
        let Ok(text) = std::fs::read_to_string(data_dir.join("agent-state.json")) else {
            return Vec::new();
        };
        let state: Value = serde_json::from_str(&text).unwrap_or(Value::Null);
        state["instances"]
            .as_array()
            .map(|list| {
                list.iter()
                    .filter_map(|i| i["pid"].as_u64())
                    .map(|p| p as u32)
                    .collect()
            })
            .unwrap_or_default()
    }
}

impl Drop for AgentProc {
    fn drop(&mut self) {
        self.kill9();
        kill_instances(&self.data_dir);
    }
}

/// Kills the instances the agent keeping its files in `data_dir` recorded, and removes the CPU cgroups it
/// held them in (an agent killed with SIGKILL leaves those for its next start, which a test never makes).
pub fn kill_instances(data_dir: &Path) {
    for pid in AgentProc::recorded_pids(data_dir) {
        // SAFETY: signalling a process group and a pid we started; failures (already gone) are fine.
        unsafe {
            libc::kill(-(pid as i32), libc::SIGKILL);
            libc::kill(pid as i32, libc::SIGKILL);
        }
    }
    use dilu_agent::cgroup::{CpuCgroups, Hierarchy, agent_name};
    let Some(cgroups) = Hierarchy::discover()
        .ok()
        .and_then(|h| CpuCgroups::find(h, &agent_name(data_dir)))
    else {
        return;
    };
    // A killed process leaves its group once it is reaped: it was the killed agent's child, so by init.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while !cgroups.close() && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Whether process `pid` exists and is not a zombie.
pub fn alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map(|stat| {
            !stat
                .rsplit(')')
                .next()
                .unwrap_or("")
                .trim_start()
                .starts_with('Z')
        })
        .unwrap_or(false)
}

/// The quota channel file of instance `id`.
pub fn channel_path(data_dir: &Path, id: &str) -> PathBuf {
    data_dir.join("run").join(format!("{id}.quota"))
}

/// Polls `f` every 20 ms until it returns Some or `timeout` passes.
pub fn wait_for<T>(timeout: Duration, mut f: impl FnMut() -> Option<T>) -> Option<T> {
    let deadline = std::time::Instant::now() + timeout;
    loop {
        if let Some(v) = f() {
            return Some(v);
        }
        if std::time::Instant::now() > deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}
