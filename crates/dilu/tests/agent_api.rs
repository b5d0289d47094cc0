//! The agent's API: precise validation errors, life cycle (readiness, restart, delete), logs, and metrics
//! that pass `promtool check metrics`.

mod common;

use std::process::Command;
use std::time::Duration;

use common::{AgentProc, dilu_bin, wait_for};
use serde_json::json;

#[test]
fn bad_requests_get_precise_errors() {
    let dir = tempfile::tempdir().unwrap();
    let agent = AgentProc::start(dir.path(), &["--cpu-cores", "1"]);
    let device = agent.cpu_device();
    let spec = |device: &str, request: f64, limit: f64| json!({"command": ["sleep", "30"], "device": device, "quota": {"request": request, "limit": limit}});

    let (status, body) = agent.post("/instances", spec("GPU-nope", 0.1, 0.1));
    assert_eq!(status, 400);
    assert_eq!(body["field"], "device", "{body}");
    assert!(
        body["rule"].as_str().unwrap().contains("no such device"),
        "{body}"
    );

    let (status, body) = agent.post("/instances", spec(&device, 0.6, 0.5));
    assert_eq!(status, 400);
    assert_eq!(
        body["error"],
        "quota.request = 0.6: must not exceed quota.limit (0.5)"
    );

    let (status, body) = agent.post("/instances", spec(&device, 0.0, 0.5));
    assert_eq!(
        (status, body["field"].as_str()),
        (400, Some("quota.request"))
    );

    let (status, body) = agent.post(
        "/instances",
        json!({"command": ["sleep"], "device": device, "quota": {"request": 0.1, "limit": 0.1}, "gpus": 2}),
    );
    assert_eq!(status, 400);
    assert!(
        body["error"]
            .as_str()
            .unwrap()
            .contains("unknown field `gpus`"),
        "{body}"
    );

    let (status, body) = agent.post(
        "/instances",
        json!({"command": ["sleep"], "device": device, "quota": {"request": "lots", "limit": 0.1}}),
    );
    assert_eq!(
        (status, body["field"].as_str()),
        (400, Some("quota.request")),
        "{body}"
    );

    // Σ requests over the device: refused unless the caller opts in.
    let (status, first) = agent.post("/instances", spec(&device, 0.7, 0.7));
    assert_eq!(status, 201, "{first}");
    let (status, body) = agent.post("/instances", spec(&device, 0.5, 0.5));
    assert_eq!(status, 409);
    assert!(
        body["error"]
            .as_str()
            .unwrap()
            .contains("would total 1.200"),
        "{body}"
    );
    let (status, over) = agent.post("/instances?overcommit=true", spec(&device, 0.5, 0.5));
    assert_eq!(status, 201, "{over}");
    let (status, _) = agent.patch(
        &format!("/instances/{}/quota", first["id"].as_str().unwrap()),
        json!({"request": 0.9}),
    );
    assert_eq!(status, 400, "request above the unchanged limit 0.7");

    let (status, _) = agent.get("/instances/i-999999");
    assert_eq!(status, 404);
    let (status, _) = agent.delete("/instances/i-999999");
    assert_eq!(status, 404);
    let (status, _) = agent.patch("/instances/i-999999/quota", json!({"request": 0.1}));
    assert_eq!(status, 404);
    for id in [&first["id"], &over["id"]] {
        assert_eq!(
            agent
                .delete(&format!("/instances/{}", id.as_str().unwrap()))
                .0,
            204
        );
    }
}

#[test]
fn readiness_restarts_logs_and_metrics() {
    let dir = tempfile::tempdir().unwrap();
    let agent = AgentProc::start(dir.path(), &["--cpu-cores", "1"]);
    let device = agent.cpu_device();
    let port = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.local_addr().unwrap().port()
    };
    let (status, ready) = agent.post(
        "/instances",
        json!({"command": [dilu_bin(), "burn", "--health-port", port.to_string(), "--report-ms", "100"],
               "device": device, "quota": {"request": 0.2, "limit": 0.4},
               "health_url": format!("http://127.0.0.1:{port}/health")}),
    );
    assert_eq!(status, 201, "{ready}");
    let ready_id = ready["id"].as_str().unwrap().to_string();
    wait_for(Duration::from_secs(10), || {
        (agent.get(&format!("/instances/{ready_id}")).1["status"] == "ready").then_some(())
    })
    .expect("the health URL makes it ready");

    let (status, failing) = agent.post(
        "/instances",
        json!({"command": ["sh", "-c", "echo crashing; exit 3"], "device": device,
               "quota": {"request": 0.1, "limit": 0.1}, "restart": "on-failure", "priority_class": "training"}),
    );
    assert_eq!(status, 201, "{failing}");
    let failing_id = failing["id"].as_str().unwrap().to_string();
    let restarted = wait_for(Duration::from_secs(10), || {
        let (_, view) = agent.get(&format!("/instances/{failing_id}"));
        (view["restarts"].as_u64().unwrap_or(0) >= 2).then_some(view)
    })
    .expect("restarted with back-off");
    assert!(
        restarted["last_exit"].as_str().unwrap().contains('3'),
        "{restarted}"
    );
    let (status, logs) = agent.get(&format!("/instances/{failing_id}/logs"));
    assert_eq!(status, 200);
    assert!(
        logs.as_str().unwrap().matches("crashing").count() >= 2,
        "{logs}"
    );

    std::thread::sleep(Duration::from_millis(300));
    let (status, metrics) = agent.get("/metrics");
    assert_eq!(status, 200);
    let metrics = metrics.as_str().unwrap().to_string();
    for needle in [
        "dilu_agent_instance_budget_units{",
        "dilu_agent_instance_delayed_launches_total{",
        "dilu_agent_tick_lateness_seconds_bucket{le=\"+Inf\"}",
        "dilu_agent_late_ticks_total",
        &format!("instance=\"{ready_id}\""),
    ] {
        assert!(metrics.contains(needle), "missing {needle} in\n{metrics}");
    }
    promtool_check(&metrics);

    for id in [&ready_id, &failing_id] {
        assert_eq!(agent.delete(&format!("/instances/{id}")).0, 204);
    }
}

/// `promtool check metrics` must accept the exposition (it is installed in CI; locally, say so if missing).
fn promtool_check(metrics: &str) {
    use std::io::Write;
    let child = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn();
    let mut child = match child {
        Ok(child) => child,
        Err(error) => {
            assert!(
                std::env::var("CI").is_err(),
                "promtool is required in CI: {error}"
            );
            eprintln!(
                "SKIPPED promtool check: promtool not installed ({error}); apt-get install prometheus"
            );
            return;
        }
    };
    child
        .stdin
        .take()
        .unwrap()
        .write_all(metrics.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "promtool check metrics failed:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn the_api_can_listen_on_a_unix_socket() {
    use std::io::{BufRead, BufReader, Read, Write};
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("agent.sock");
    let mut child = Command::new(dilu_bin())
        .args(["agent", "--no-nvml", "--cpu-cores", "1", "--data-dir"])
        .arg(dir.path().join("data"))
        .arg("--unix-socket")
        .arg(&socket)
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut banner = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut banner)
        .unwrap();
    assert_eq!(
        banner.trim(),
        format!("dilu agent listening on unix:{}", socket.display())
    );
    let mut stream = std::os::unix::net::UnixStream::connect(&socket).unwrap();
    stream
        .write_all(b"GET /devices HTTP/1.1\r\nHost: agent\r\nConnection: close\r\n\r\n")
        .unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).unwrap();
    let _ = child.kill();
    let _ = child.wait();
    assert!(response.starts_with("HTTP/1.1 200"), "{response}");
    assert!(response.contains("\"kind\":\"cpu\""), "{response}");
}
