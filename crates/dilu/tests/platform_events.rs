//! Events under `dilu up`: every decision is listed with its reason, in order — deployment, placement,
//! profiling, a scale-out with its votes — by `GET /v1/events`, by `dilu events`, and live by
//! `dilu events -f` (server-sent events); filters and bad queries; the history survives a restart.

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::dilu_bin;
use common::platform::UpProc;
use serde_json::Value;

/// A v2 server in Python's standard library answering `output` = input × 2 (as in platform_process).
const DOUBLER: &str = r#"
import json, os
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
NAME = os.environ["DILU_FUNCTION"]
class H(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    def log_message(self, *a): pass
    def send(self, code, body):
        data = json.dumps(body).encode()
        self.send_response(code); self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(data))); self.end_headers(); self.wfile.write(data)
    def do_GET(self):
        if self.path == "/v2/health/ready": self.send(200, {"ready": True})
        elif self.path == "/v2/models/" + NAME:
            self.send(200, {"name": NAME, "inputs": [{"name": "input", "datatype": "FP32", "shape": [-1, 4]}],
                            "outputs": [{"name": "output", "datatype": "FP32", "shape": [-1, 4]}]})
        else: self.send(404, {"error": self.path})
    def do_POST(self):
        x = json.loads(self.rfile.read(int(self.headers["content-length"])))["inputs"][0]
        self.send(200, {"model_name": NAME, "outputs": [{"name": "output", "datatype": "FP32",
                        "shape": x["shape"], "data": [2 * v for v in x["data"]]}]})
ThreadingHTTPServer(("127.0.0.1", int(os.environ["PORT"])), H).serve_forever()
"#;

const SAMPLE: &str =
    r#"{"inputs": [{"name": "input", "datatype": "FP32", "shape": [1, 4], "data": [1, 2, 3, 4]}]}"#;

fn events(up: &UpProc, query: &str) -> Vec<Value> {
    let (status, body) = up.get(&format!("/v1/events{query}"));
    assert_eq!(status, 200, "{body}");
    body["events"].as_array().unwrap().clone()
}

fn kinds(list: &[Value]) -> Vec<String> {
    list.iter()
        .map(|e| e["kind"].as_str().unwrap().to_string())
        .collect()
}

fn dilu_events(up: &UpProc, args: &[&str]) -> String {
    let out = Command::new(dilu_bin())
        .arg("events")
        .args(args)
        .args(["--server", &up.url])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

#[test]
fn decisions_are_listed_in_order_with_their_reasons_and_streamed_live() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("doubler.py"), DOUBLER).unwrap();
    let data = dir.path().join("data");
    let mut up = UpProc::start(&data, &[]);
    let process = format!(
        "runtime: process\nprocess: {{command: [python3, doubler.py], workdir: {}, max_batch: 2, sample: {SAMPLE}}}\n\
         slo_ms: 500\n",
        dir.path().display()
    );
    // Profiled (no quota).
    let (status, body) = up.deploy_yaml(&format!(
        "name: profiled\n{process}scaling: {{min_instances: 1, max_instances: 1}}\n"
    ));
    assert_eq!(status, 201, "{body}");
    up.wait_running("profiled", 1, Duration::from_secs(120));
    // Quota and a small capacity, with a fast lazy window: a load over it scales out.
    let (status, body) = up.deploy_yaml(&format!(
        "name: busy\n{process}quota: {{request: 0.1, limit: 0.2}}\nscaling: {{min_instances: 1, max_instances: 2, \
         capacity_rps: 4, lazy: {{window: 4, out_votes: 2, in_votes: 4, interval_s: 0.5}}}}\n"
    ));
    assert_eq!(status, 201, "{body}");
    up.wait_running("busy", 1, Duration::from_secs(60));

    // Sized by its bounds first (a scaling decision too).
    let sized = events(&up, "?function=busy&kind=scale-out");
    assert_eq!(
        sized[0]["message"], "scale out from 0 to 1: scaling.min_instances is 1",
        "{sized:?}"
    );
    // A follower started now sees the next events as they happen.
    let last = events(&up, "").last().unwrap()["seq"].as_u64().unwrap();
    let mut follower = Command::new(dilu_bin())
        .args(["events", "-f", "--function", "busy", "--kind", "scale-out"])
        .args(["--since", &last.to_string()])
        .args(["--server", &up.url])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    let stdout = follower.stdout.take().unwrap();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = tx.send((Instant::now(), line));
        }
    });

    // About 12 req/s against a capacity of 4 for 3 s.
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut scaled_at = None;
    while Instant::now() < deadline && scaled_at.is_none() {
        let (status, body) = up.infer("busy", SAMPLE.as_bytes());
        assert_eq!(status, 200, "{body}");
        std::thread::sleep(Duration::from_millis(80));
        let out = events(&up, &format!("?function=busy&kind=scale-out&since={last}"));
        if let Some(e) = out.first() {
            scaled_at = Some((Instant::now(), e.clone()));
        }
    }
    let (seen_at, scale_out) = scaled_at.expect("a scale-out event");
    let message = scale_out["message"].as_str().unwrap();
    assert!(
        message.starts_with("scale out from 1 to 2: ")
            && message
                .contains("samples above the capacity of 1 instance (4.0 req/s; 2 votes needed)"),
        "{message}"
    );
    let (line_at, line) = rx
        .recv_timeout(Duration::from_secs(10))
        .expect("the follower prints the scale-out");
    assert!(
        line.contains("scale-out") && line.contains(message),
        "{line}"
    );
    eprintln!(
        "scale-out: {message}; the follower printed it {:.0} ms after the API listed it",
        line_at.saturating_duration_since(seen_at).as_secs_f64() * 1e3
    );
    let _ = follower.kill();
    let _ = follower.wait();

    // The history in order, per function.
    let profiled = events(&up, "?function=profiled");
    let order = kinds(&profiled);
    let position = |k: &str| order.iter().position(|o| o == k);
    let (deployed, placed, done) = (
        position("deployed").unwrap(),
        position("placement").unwrap(),
        position("profiled").unwrap(),
    );
    assert!(deployed < placed && placed < done, "{order:?}");
    let placement = &profiled[placed]["message"];
    assert!(
        placement.as_str().unwrap().contains(", to profile;"),
        "{placement}"
    );
    // The placer's score says why this device: the first instance on an empty node's idle device.
    let score = &profiled[placed]["data"]["score"];
    assert_eq!(
        score["tier"].as_str(),
        Some("idle device on an empty node"),
        "{}",
        profiled[placed]
    );
    let value = score["value"].as_f64().unwrap();
    assert!(
        (0.0..=1.0).contains(&value)
            && placement
                .as_str()
                .unwrap()
                .contains(&format!("score {value:.3}, lower wins")),
        "{}",
        profiled[placed]
    );
    assert!(
        profiled[done]["message"]
            .as_str()
            .unwrap()
            .contains("profiled (hgs) on profiled-"),
        "{}",
        profiled[done]
    );
    let seqs: Vec<u64> = events(&up, "")
        .iter()
        .map(|e| e["seq"].as_u64().unwrap())
        .collect();
    assert!(seqs.windows(2).all(|w| w[0] < w[1]), "{seqs:?}");
    // `dilu events` prints the same history as text.
    let text = dilu_events(&up, &["--function", "profiled"]);
    let printed: Vec<&str> = text
        .lines()
        .map(|l| l.split_whitespace().nth(3).unwrap_or(""))
        .collect();
    assert_eq!(printed, order, "{text}");

    // Bad queries name the field.
    let (status, body) = up.get("/v1/events?kind=scale-sideways");
    assert_eq!(
        (status, body["field"].as_str()),
        (400, Some("kind")),
        "{body}"
    );
    let (status, body) = up.get("/v1/events?colour=red");
    assert_eq!(
        (status, body["field"].as_str()),
        (400, Some("query")),
        "{body}"
    );

    // The history outlives the process.
    let before = events(&up, "");
    up.terminate();
    let up = UpProc::start(&data, &[]);
    let after = events(&up, "");
    assert!(after.len() >= before.len());
    assert_eq!(after[..before.len()], before[..]);
}
