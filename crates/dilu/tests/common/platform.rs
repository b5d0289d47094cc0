//! A `dilu up` process for end-to-end tests, the models it serves, and a JSON client for its API.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

use super::dilu_bin;

/// The model cache the tests read: `$DILU_MODEL_CACHE`, else `~/.cache/dilu/models`.
pub fn model_cache() -> PathBuf {
    std::env::var_os("DILU_MODEL_CACHE")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(std::env::var("HOME").unwrap_or_else(|_| "/root".into()))
                .join(".cache/dilu/models")
        })
}

/// Makes sure the models (and example inputs) are in the cache, fetching them with `dilu models fetch`.
/// Returns `None` (after a loud note) when they cannot be had outside CI; in CI that is a failure.
pub fn ensure_models() -> Option<PathBuf> {
    let cache = model_cache();
    let needed = [
        "ppocr/ch_ppocr_mobile_v2.0_cls_infer.onnx",
        "onnx-light/light_squeezenet.onnx",
        "inputs/text-upright.json",
    ];
    let missing = |c: &Path| needed.iter().any(|n| !c.join(n).is_file());
    if missing(&cache) {
        let status = Command::new(dilu_bin())
            .args(["models", "fetch", "--cache"])
            .arg(&cache)
            .status();
        eprintln!("fetching models into {}: {status:?}", cache.display());
    }
    if missing(&cache) {
        let note = format!(
            "MODELS MISSING in {}: `dilu models fetch` could not provide {needed:?}",
            cache.display()
        );
        if std::env::var("CI").as_deref() == Ok("true") {
            panic!("{note}");
        }
        eprintln!("\n*** SKIPPING: {note} ***\n");
        return None;
    }
    Some(cache)
}

/// A running `dilu up`; SIGKILLed on drop together with every instance its agent recorded.
pub struct UpProc {
    child: Child,
    /// Base URL of the API and gateway.
    pub url: String,
    /// Its data directory.
    pub data_dir: PathBuf,
    /// Its API token.
    pub token: String,
    client: reqwest::blocking::Client,
}

impl UpProc {
    /// Starts `dilu up` on a free port with `data_dir` and extra flags; waits for its banner.
    pub fn start(data_dir: &Path, extra: &[&str]) -> UpProc {
        Self::start_with_open_files(data_dir, extra, None)
    }

    /// [`UpProc::start`] with the open-file limit (soft and hard) set to `open_files` when given.
    pub fn start_with_open_files(
        data_dir: &Path,
        extra: &[&str],
        open_files: Option<u64>,
    ) -> UpProc {
        let mut flags = vec!["--no-nvml"];
        flags.extend_from_slice(extra);
        Self::start_command(data_dir, &flags, open_files, &[])
    }

    /// Starts `dilu up` with these flags (NVML is looked for unless they say `--no-nvml`) and environment.
    pub fn start_with_env(
        data_dir: &Path,
        flags: &[&str],
        env: &[(&str, &std::ffi::OsStr)],
    ) -> UpProc {
        Self::start_command(data_dir, flags, None, env)
    }

    fn start_command(
        data_dir: &Path,
        flags: &[&str],
        open_files: Option<u64>,
        env: &[(&str, &std::ffi::OsStr)],
    ) -> UpProc {
        let mut command = Command::new(dilu_bin());
        if let Some(limit) = open_files {
            super::limit_open_files(&mut command, limit);
        }
        let mut child = command
            .args(["up", "--listen", "127.0.0.1:0", "--stop-grace-s", "1"])
            .arg("--data-dir")
            .arg(data_dir)
            .args(flags)
            .envs(env.iter().copied())
            .env("RUST_BACKTRACE", "0")
            .env_remove("DILU_TOKEN")
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start dilu up");
        let stdout = child.stdout.take().expect("stdout");
        let mut reader = BufReader::new(stdout);
        let mut line = String::new();
        reader.read_line(&mut line).expect("dilu up banner");
        let url = line
            .trim()
            .strip_prefix("dilu up: serving on ")
            .unwrap_or_else(|| panic!("unexpected banner {line:?}"))
            .to_string();
        // Keep draining stdout so the process never blocks on a full pipe.
        std::thread::spawn(move || {
            let mut sink = String::new();
            while reader.read_line(&mut sink).map(|n| n > 0).unwrap_or(false) {
                sink.clear();
            }
        });
        let token = std::fs::read_to_string(data_dir.join("token"))
            .expect("token file")
            .trim()
            .to_string();
        UpProc {
            child,
            url,
            data_dir: data_dir.to_path_buf(),
            token,
            client: reqwest::blocking::Client::builder()
                .no_proxy()
                .timeout(Duration::from_secs(60))
                .build()
                .expect("client"),
        }
    }

    /// The shared client.
    pub fn client(&self) -> &reqwest::blocking::Client {
        &self.client
    }

    /// A request with the token.
    pub fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<(&str, Vec<u8>)>,
        auth: bool,
    ) -> (u16, Value) {
        let mut request = self.client.request(method, format!("{}{path}", self.url));
        if auth {
            request = request.bearer_auth(&self.token);
        }
        if let Some((content_type, bytes)) = body {
            request = request.header("content-type", content_type).body(bytes);
        }
        let response = request.send().expect("request");
        let status = response.status().as_u16();
        let text = response.text().expect("body");
        (
            status,
            serde_json::from_str(&text).unwrap_or(Value::String(text)),
        )
    }

    /// `GET path`.
    pub fn get(&self, path: &str) -> (u16, Value) {
        self.call(reqwest::Method::GET, path, None, false)
    }

    /// Deploys a YAML spec (with the token).
    pub fn deploy_yaml(&self, yaml: &str) -> (u16, Value) {
        self.call(
            reqwest::Method::POST,
            "/v1/functions",
            Some(("application/yaml", yaml.as_bytes().to_vec())),
            true,
        )
    }

    /// `POST /v2/models/{function}/infer` with a JSON body.
    pub fn infer(&self, function: &str, body: &[u8]) -> (u16, Value) {
        self.call(
            reqwest::Method::POST,
            &format!("/v2/models/{function}/infer"),
            Some(("application/json", body.to_vec())),
            false,
        )
    }

    /// Waits until `function` runs with at least `ready` ready serving instances; panics with its view on
    /// failure or timeout.
    pub fn wait_running(&self, function: &str, ready: usize, timeout: Duration) -> Value {
        let deadline = Instant::now() + timeout;
        loop {
            let (_, view) = self.get(&format!("/v1/functions/{function}"));
            if view["status"]["phase"] == "failed" {
                panic!("{function} failed: {view:#}");
            }
            let n = ready_instances(&view);
            if view["status"]["phase"] == "running" && n >= ready {
                return view;
            }
            if Instant::now() > deadline {
                panic!(
                    "{function} not running with {ready} ready instances in {timeout:?}: {view:#}"
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// SIGKILL, as a crash would (instances survive for the next start to adopt).
    pub fn kill9(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// SIGTERM and wait for a clean exit; returns the exit status.
    pub fn terminate(&mut self) -> std::process::ExitStatus {
        // SAFETY: signalling our own child.
        unsafe {
            libc::kill(self.child.id() as i32, libc::SIGTERM);
        }
        self.child.wait().expect("wait")
    }
}

/// Ready, serving instances of the current generation in a function view.
pub fn ready_instances(view: &Value) -> usize {
    view["instances"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter(|i| {
                    i["ready"] == true
                        && i["profiling"] == false
                        && i["draining"] == false
                        && i["outdated"] != true
                })
                .count()
        })
        .unwrap_or(0)
}

impl Drop for UpProc {
    fn drop(&mut self) {
        self.kill9();
        super::kill_instances(&self.data_dir.join("agent"));
    }
}

/// Index of the largest value.
pub fn argmax(values: &[f64]) -> usize {
    values
        .iter()
        .enumerate()
        .max_by(|a, b| a.1.total_cmp(b.1))
        .map(|(i, _)| i)
        .unwrap_or(0)
}

/// The first output's data of a v2 response.
pub fn output_data(response: &Value) -> Vec<f64> {
    response["outputs"][0]["data"]
        .as_array()
        .map(|a| a.iter().filter_map(Value::as_f64).collect())
        .unwrap_or_default()
}

/// A trainer's iteration count, from its `GET /status`.
pub fn trainer_iterations(client: &reqwest::blocking::Client, trainer_url: &str) -> u64 {
    let status: Value = client
        .get(format!("{trainer_url}/status"))
        .send()
        .unwrap()
        .json()
        .unwrap();
    status["iterations"].as_u64().expect("iterations")
}

/// `function`'s first instance in a `/v1/devices` view, on whichever device it runs.
pub fn device_instance(devices: &Value, function: &str) -> Option<Value> {
    devices["devices"]
        .as_array()?
        .iter()
        .flat_map(|d| d["instances"].as_array().cloned().unwrap_or_default())
        .find(|i| i["function"] == function)
}
