//! The platform's client commands: `dilu deploy`, `ls`, `status`, `invoke` and `delete`, talking to the API
//! of a running `dilu up` (or any Dilu control plane).

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};
use clap::Args;
use dilu_api::process::LEFT_FOR_THE_INSTANCE;
use reqwest::blocking::{Client, Response};
use serde_json::Value;

/// Where the control plane is and how to authenticate.
#[derive(Debug, Args, Clone)]
pub struct ServerArgs {
    /// URL of the control plane.
    #[arg(long, env = "DILU_SERVER", default_value = "http://127.0.0.1:8080")]
    server: String,
    /// API token (default: DATA_DIR/token of a local `dilu up`).
    #[arg(long, env = "DILU_TOKEN", hide_env_values = true)]
    token: Option<String>,
    /// Data directory of the local `dilu up`, where its token is.
    #[arg(long, env = "DILU_DATA_DIR", default_value = "dilu-data")]
    data_dir: PathBuf,
}

impl ServerArgs {
    pub(super) fn client(&self) -> Result<Client> {
        Client::builder()
            .no_proxy()
            .timeout(Duration::from_secs(120))
            .build()
            .context("building the HTTP client")
    }

    pub(super) fn url(&self, path: &str) -> String {
        format!("{}{path}", self.server.trim_end_matches('/'))
    }

    fn token(&self) -> Result<String> {
        if let Some(t) = &self.token {
            return Ok(t.clone());
        }
        let path = self.data_dir.join("token");
        std::fs::read_to_string(&path)
            .map(|t| t.trim().to_string())
            .with_context(|| {
                format!(
                    "no API token: pass --token, set DILU_TOKEN, or run next to the data directory of `dilu up` ({} not readable)",
                    path.display()
                )
            })
    }

    pub(super) fn get(&self, path: &str) -> Result<Value> {
        let url = self.url(path);
        let resp = self
            .client()?
            .get(&url)
            .send()
            .with_context(|| format!("GET {url} (is `dilu up` running?)"))?;
        json_of(resp, "GET", &url)
    }
}

/// The body of a response, or an error carrying the server's message (and the field and rule it names).
pub(super) fn json_of(resp: Response, method: &str, url: &str) -> Result<Value> {
    let status = resp.status();
    let text = resp.text().unwrap_or_default();
    if status.is_success() {
        if text.is_empty() {
            return Ok(Value::Null);
        }
        return serde_json::from_str(&text)
            .with_context(|| format!("{method} {url}: not JSON: {text}"));
    }
    let message = serde_json::from_str::<Value>(&text)
        .ok()
        .and_then(|v| v["error"].as_str().map(str::to_string))
        .unwrap_or(text);
    Err(anyhow!("{method} {url}: {status}: {message}"))
}

/// Arguments of `dilu deploy`.
#[derive(Debug, Args)]
pub struct DeployArgs {
    /// The function spec (YAML or JSON). `~`, `$VAR`, `${VAR}` and `${VAR:-default}` in `model.path` and in a
    /// process's command, args and workdir are expanded here (`DILU_MODEL_CACHE` defaults to
    /// ~/.cache/dilu/models; `$HOST` and `$PORT` are left for the instance), and relative paths are taken from
    /// the spec's folder (a process runs there unless its workdir says otherwise), so the server gets absolute
    /// paths.
    #[arg(short = 'f', long = "file")]
    file: PathBuf,
    /// Wait until the function runs (profiled, with a ready instance), or fails.
    #[arg(long)]
    wait: bool,
    /// How long --wait waits, seconds.
    #[arg(long, default_value_t = 300)]
    wait_timeout_s: u64,
    #[command(flatten)]
    server: ServerArgs,
}

/// `$VAR`, `${VAR}`, `${VAR:-default}` and a leading `~` expanded in the value of `field`; an unset variable
/// without a default is an error naming the field and the variable. `$HOST` and `$PORT` are left as written
/// (the instance's, known when it starts: [`LEFT_FOR_THE_INSTANCE`]).
pub(crate) fn expand(text: &str, field: &str) -> Result<String> {
    let home = || {
        std::env::var("HOME").map_err(|_| anyhow!("{field}: HOME is not set (needed to expand ~)"))
    };
    let var = |name: &str, default: Option<&str>| -> Result<String> {
        match (std::env::var(name), default) {
            (Ok(v), _) => Ok(v),
            (Err(_), Some(d)) => Ok(d.to_string()),
            (Err(_), None) if name == "DILU_MODEL_CACHE" => {
                Ok(format!("{}/.cache/dilu/models", home()?))
            }
            (Err(_), None) => bail!("{field}: ${name} is not set"),
        }
    };
    let mut out = String::new();
    let mut rest = text;
    if let Some(r) = rest.strip_prefix("~/") {
        out.push_str(&home()?);
        out.push('/');
        rest = r;
    }
    while let Some(pos) = rest.find('$') {
        out.push_str(&rest[..pos]);
        let after = &rest[pos + 1..];
        let (written, expression, tail) = if let Some(braced) = after.strip_prefix('{') {
            let end = braced
                .find('}')
                .ok_or_else(|| anyhow!("{field}: unclosed ${{ in {text:?}"))?;
            (&after[..end + 2], &braced[..end], &braced[end + 1..])
        } else {
            let end = after
                .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                .unwrap_or(after.len());
            (&after[..end], &after[..end], &after[end..])
        };
        let (name, default) = match expression.split_once(":-") {
            Some((name, default)) => (name, Some(default)),
            None => (expression, None),
        };
        if name.is_empty() || LEFT_FOR_THE_INSTANCE.contains(&name) {
            out.push('$');
            out.push_str(written);
        } else {
            out.push_str(&var(name, default)?);
        }
        rest = tail;
    }
    out.push_str(rest);
    Ok(out)
}

/// `path` made absolute against `base` (and canonical when it exists).
fn absolute(path: PathBuf, base: &Path) -> PathBuf {
    let absolute = if path.is_absolute() {
        path
    } else {
        base.join(path)
    };
    std::fs::canonicalize(&absolute).unwrap_or(absolute)
}

/// Reads a spec file and resolves what the server reads on its node: the model path, and a process's command,
/// arguments and working directory (by default the spec's folder).
fn read_spec(file: &Path) -> Result<Value> {
    let text =
        std::fs::read_to_string(file).with_context(|| format!("reading {}", file.display()))?;
    let mut spec: Value = serde_yaml::from_str(&text)
        .with_context(|| format!("{}: not YAML or JSON", file.display()))?;
    let folder = file.parent().unwrap_or(Path::new("."));
    // A spec is the plain form or a Kubernetes `Function` object (its fields under `spec:`).
    let body = if spec.get("apiVersion").is_some() {
        match spec.get_mut("spec") {
            Some(body) => body,
            None => return Ok(spec),
        }
    } else {
        &mut spec
    };
    if let Some(path) = body.pointer_mut("/model/path").filter(|p| p.is_string()) {
        let raw = path.as_str().unwrap_or_default();
        let resolved = absolute(PathBuf::from(expand(raw, "model.path")?), folder);
        *path = Value::String(resolved.display().to_string());
    }
    if let Some(process) = body.get_mut("process").and_then(Value::as_object_mut) {
        for list in ["command", "args"] {
            if let Some(items) = process.get_mut(list).and_then(Value::as_array_mut) {
                for (i, item) in items.iter_mut().enumerate() {
                    if let Some(raw) = item.as_str() {
                        *item = Value::String(expand(raw, &format!("process.{list}[{i}]"))?);
                    }
                }
            }
        }
        let workdir = match process.get("workdir").and_then(Value::as_str) {
            Some(raw) => absolute(PathBuf::from(expand(raw, "process.workdir")?), folder),
            None => absolute(PathBuf::new(), folder),
        };
        process.insert(
            "workdir".into(),
            Value::String(workdir.display().to_string()),
        );
    }
    Ok(spec)
}

/// `dilu deploy -f SPEC`: creates the function, or replaces its spec when it exists.
pub fn deploy(args: DeployArgs) -> Result<()> {
    let spec = read_spec(&args.file)?;
    let name = spec
        .get("name")
        .or_else(|| spec.pointer("/metadata/name"))
        .and_then(Value::as_str)
        .ok_or_else(|| anyhow!("{}: the spec has no name", args.file.display()))?
        .to_string();
    let s = &args.server;
    let client = s.client()?;
    let token = s.token()?;
    let url = s.url("/v1/functions");
    let resp = client
        .post(&url)
        .bearer_auth(&token)
        .json(&spec)
        .send()
        .with_context(|| format!("POST {url} (is `dilu up` running?)"))?;
    let (verb, view) = if resp.status() == reqwest::StatusCode::CONFLICT {
        let url = s.url(&format!("/v1/functions/{name}"));
        let resp = client
            .put(&url)
            .bearer_auth(&token)
            .json(&spec)
            .send()
            .with_context(|| format!("PUT {url}"))?;
        ("updated", json_of(resp, "PUT", &url)?)
    } else {
        ("created", json_of(resp, "POST", &url)?)
    };
    println!("function {name} {verb} (generation {})", view["generation"]);
    if args.wait {
        wait_running(s, &name, Duration::from_secs(args.wait_timeout_s))?;
    }
    Ok(())
}

/// Polls a function until it runs with a ready instance (or, for min 0, is profiled), or fails.
fn wait_running(s: &ServerArgs, name: &str, timeout: Duration) -> Result<()> {
    let deadline = Instant::now() + timeout;
    let mut last = String::new();
    loop {
        let view = s.get(&format!("/v1/functions/{name}"))?;
        let phase = view["status"]["phase"].as_str().unwrap_or("").to_string();
        let ready = view["instances"]
            .as_array()
            .map(|a| {
                a.iter()
                    .filter(|i| i["ready"] == true && i["profiling"] == false)
                    .count()
            })
            .unwrap_or(0);
        let min = view["spec"]["scaling"]["min_instances"]
            .as_u64()
            .unwrap_or(1);
        if phase == "failed" {
            bail!(
                "function {name} failed: {}",
                view["status"]["reason"].as_str().unwrap_or("?")
            );
        }
        if let Some(error) = view["last_error"].as_str()
            && error.contains("unschedulable")
            && ready == 0
        {
            bail!("function {name} cannot start an instance: {error}");
        }
        if phase == "running" && (ready as u64 >= min.min(1)) {
            println!("function {name} is running with {ready} ready instance(s)");
            return Ok(());
        }
        if phase != last {
            println!("function {name}: {phase}");
            last = phase;
        }
        if Instant::now() >= deadline {
            bail!(
                "function {name} was not running within {timeout:?} (phase {last}, instances {}, last error {})",
                view["instances"],
                view["last_error"]
            );
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Arguments of `dilu ls` and `dilu status`.
#[derive(Debug, Args)]
pub struct ListArgs {
    /// Print the API's JSON instead of a table.
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    server: ServerArgs,
}

fn share(v: &Value) -> String {
    v.as_f64()
        .map(|x| format!("{x:.2}"))
        .unwrap_or_else(|| "-".into())
}

/// `dilu ls`: functions with their status, instances, quota and capacity.
pub fn ls(args: ListArgs) -> Result<()> {
    let v = args.server.get("/v1/functions")?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&v)?);
        return Ok(());
    }
    println!(
        "{:<20} {:<10} {:<10} {:>9} {:>8} {:>8} {:>6} {:>10} {:>8}",
        "NAME", "KIND", "STATUS", "INSTANCES", "REQUEST", "LIMIT", "BATCH", "CAPACITY", "RPS"
    );
    for f in v["functions"].as_array().into_iter().flatten() {
        let instances = f["instances"].as_array().cloned().unwrap_or_default();
        let ready = instances.iter().filter(|i| i["ready"] == true).count();
        let p = &f["profile"];
        println!(
            "{:<20} {:<10} {:<10} {:>9} {:>8} {:>8} {:>6} {:>10} {:>8.1}",
            f["name"].as_str().unwrap_or("?"),
            f["kind"].as_str().unwrap_or("?"),
            f["status"]["phase"].as_str().unwrap_or("?"),
            format!("{ready}/{}", instances.len()),
            share(&p["request"]),
            share(&p["limit"]),
            p["batch"]
                .as_u64()
                .map(|b| b.to_string())
                .unwrap_or_else(|| "-".into()),
            p["capacity_rps"]
                .as_f64()
                .map(|c| format!("{c:.1}/s"))
                .unwrap_or_else(|| "-".into()),
            f["rps"].as_f64().unwrap_or(0.0),
        );
        if let Some(reason) = f["status"]["reason"].as_str() {
            println!("  reason: {reason}");
        }
        if let Some(error) = f["last_error"].as_str() {
            println!("  last error: {error}");
        }
    }
    Ok(())
}

/// `dilu status`: devices, and on each the instances with their quota, share this window and usage (averaged over
/// about a second).
pub fn status(args: ListArgs) -> Result<()> {
    let v = args.server.get("/v1/devices")?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&v)?);
        return Ok(());
    }
    for d in v["devices"].as_array().into_iter().flatten() {
        println!(
            "{} {} ({}) on {}: requested {} of the device (booked {}), controller {}, training budget {}",
            d["kind"].as_str().unwrap_or("?"),
            d["uuid"].as_str().unwrap_or("?"),
            d["name"].as_str().unwrap_or("?"),
            d["node"].as_str().unwrap_or("?"),
            share(&d["requested"]),
            share(&d["booked"]),
            d["controller"].as_str().unwrap_or("?"),
            share(&d["training_budget"]),
        );
        if d["healthy"] == false {
            println!(
                "  UNHEALTHY: {} (no new instances)",
                d["health_reason"].as_str().unwrap_or("no reason given")
            );
        }
        println!(
            "  {:<16} {:<20} {:<10} {:<10} {:>8} {:>8} {:>8} {:>8}",
            "INSTANCE", "FUNCTION", "KIND", "STATUS", "REQUEST", "LIMIT", "SHARE", "USAGE"
        );
        for i in d["instances"].as_array().into_iter().flatten() {
            println!(
                "  {:<16} {:<20} {:<10} {:<10} {:>8} {:>8} {:>8} {:>8}",
                i["id"].as_str().unwrap_or("?"),
                i["function"].as_str().unwrap_or("-"),
                i["kind"].as_str().unwrap_or("?"),
                i["status"].as_str().unwrap_or("?"),
                share(&i["quota"]["request"]),
                share(&i["quota"]["limit"]),
                share(&i["share"]),
                share(&i["usage"]),
            );
        }
    }
    Ok(())
}

/// Arguments of `dilu invoke`.
#[derive(Debug, Args)]
pub struct InvokeArgs {
    /// The function.
    function: String,
    /// A v2 inference request (JSON), e.g. one written by `dilu models fetch` under CACHE/inputs.
    #[arg(long)]
    input: PathBuf,
    #[command(flatten)]
    server: ServerArgs,
}

/// `dilu invoke FUNCTION --input FILE`: one inference through the gateway; prints the v2 response and, for
/// a classifier-like output, its top class.
pub fn invoke(args: InvokeArgs) -> Result<()> {
    let body =
        std::fs::read(&args.input).with_context(|| format!("reading {}", args.input.display()))?;
    let url = args
        .server
        .url(&format!("/v2/models/{}/infer", args.function));
    let started = Instant::now();
    let resp = args
        .server
        .client()?
        .post(&url)
        .header("content-type", "application/json")
        .body(body)
        .send()
        .with_context(|| format!("POST {url} (is `dilu up` running?)"))?;
    let v = json_of(resp, "POST", &url)?;
    let elapsed = started.elapsed();
    println!("{}", serde_json::to_string(&v)?);
    if let Some(data) = v["outputs"][0]["data"].as_array() {
        let values: Vec<f64> = data.iter().filter_map(Value::as_f64).collect();
        if let Some((index, score)) = values.iter().enumerate().max_by(|a, b| a.1.total_cmp(b.1)) {
            eprintln!(
                "top class {index} (score {score:.4}) of {} outputs, {:.1} ms",
                values.len(),
                elapsed.as_secs_f64() * 1000.0
            );
        }
    }
    Ok(())
}

/// Arguments of `dilu delete`.
#[derive(Debug, Args)]
pub struct DeleteArgs {
    /// The function.
    function: String,
    #[command(flatten)]
    server: ServerArgs,
}

/// `dilu delete FUNCTION`.
pub fn delete(args: DeleteArgs) -> Result<()> {
    let s = &args.server;
    let url = s.url(&format!("/v1/functions/{}", args.function));
    let resp = s
        .client()?
        .delete(&url)
        .bearer_auth(s.token()?)
        .send()
        .with_context(|| format!("DELETE {url}"))?;
    json_of(resp, "DELETE", &url)?;
    println!("function {} deleted", args.function);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn expansion_of_model_paths() {
        let expand = |text: &str| expand(text, "model.path");
        // SAFETY (test only): single-threaded access to this variable in this test binary.
        unsafe { std::env::set_var("DILU_TEST_X", "/m") };
        assert_eq!(expand("${DILU_TEST_X}/a.onnx").unwrap(), "/m/a.onnx");
        assert_eq!(expand("$DILU_TEST_X/a.onnx").unwrap(), "/m/a.onnx");
        assert_eq!(expand("/plain/$").unwrap(), "/plain/$");
        let e = expand("${DILU_TEST_UNSET_VAR}/x").unwrap_err().to_string();
        assert!(
            e.contains("model.path") && e.contains("DILU_TEST_UNSET_VAR"),
            "{e}"
        );
        assert!(expand("~/x").unwrap().ends_with("/x"));
        // Defaults, and the instance's port left for the agent.
        assert_eq!(
            expand("${DILU_TEST_UNSET_VAR:-python3}").unwrap(),
            "python3"
        );
        assert_eq!(expand("${DILU_TEST_X:-python3}").unwrap(), "/m");
        assert_eq!(expand("--port=$PORT").unwrap(), "--port=$PORT");
        assert_eq!(expand("${PORT}").unwrap(), "${PORT}");
        assert_eq!(expand("--host=$HOST").unwrap(), "--host=$HOST");
    }

    #[test]
    fn a_process_spec_is_resolved_against_its_folder() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("f.yaml");
        std::fs::write(
            &file,
            "apiVersion: dilu.io/v1alpha1\nkind: Function\nmetadata: {name: f}\nspec:\n  kind: inference\n  \
             process: {command: [\"${DILU_TEST_UNSET_VAR:-python3}\", serve.py, --port, $PORT]}\n",
        )
        .unwrap();
        let spec = read_spec(&file).unwrap();
        let process = &spec["spec"]["process"];
        assert_eq!(
            process["command"],
            serde_json::json!(["python3", "serve.py", "--port", "$PORT"])
        );
        let folder = std::fs::canonicalize(dir.path()).unwrap();
        assert_eq!(process["workdir"], folder.display().to_string());
        std::fs::write(&file, "name: f\nprocess: {command: [x], workdir: sub}\n").unwrap();
        let spec = read_spec(&file).unwrap();
        assert_eq!(
            spec["process"]["workdir"],
            folder.join("sub").display().to_string()
        );
    }
}
