//! The agent API runs commands, so it must refuse anyone without the token, cross-site form posts and DNS
//! rebinding (issue: `POST /instances` once ran `/bin/sh -c 'id > /tmp/x'` for anyone, as root).

mod common;

use std::time::Duration;

use common::AgentProc;
use serde_json::json;

fn raw(request: reqwest::blocking::RequestBuilder) -> (u16, serde_json::Value) {
    let response = request.send().expect("agent request");
    let status = response.status().as_u16();
    let text = response.text().expect("body");
    (
        status,
        serde_json::from_str(&text).unwrap_or(serde_json::Value::String(text)),
    )
}

#[test]
fn commands_run_only_for_the_token_holder_with_json_and_a_loopback_host() {
    let dir = tempfile::tempdir().unwrap();
    let agent = AgentProc::start(&dir.path().join("agent"), &["--cpu-cores", "1"]);
    let device = agent.cpu_device();
    let marker = dir.path().join("ran");
    let spec = json!({
        "command": ["/bin/sh", "-c", format!("id > {}", marker.display())],
        "device": device,
        "quota": {"request": 0.1, "limit": 0.1},
    });
    let client = reqwest::blocking::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap();
    let url = format!("{}/instances", agent.url);

    // No token: refused, with the rule, and nothing ran.
    let (status, body) = raw(client.post(&url).json(&spec));
    assert_eq!(status, 401, "{body}");
    assert_eq!(body["field"], "Authorization");
    assert!(body["rule"].as_str().unwrap().contains("token"), "{body}");
    // A wrong token, and reads without one, are refused too; /health stays open.
    let (status, _) = raw(client.post(&url).bearer_auth("guess").json(&spec));
    assert_eq!(status, 401);
    let (status, _) = raw(client.get(&url));
    assert_eq!(status, 401);
    let (status, _) = raw(client.get(format!("{}/health", agent.url)));
    assert_eq!(status, 200);

    // text/plain (what a cross-site form can send without a preflight): refused even with the token.
    let (status, body) = raw(client
        .post(&url)
        .bearer_auth(&agent.token)
        .header("content-type", "text/plain")
        .body(spec.to_string()));
    assert_eq!(status, 415, "{body}");
    assert_eq!(body["field"], "Content-Type");
    assert_eq!(body["value"], "text/plain");

    // A Host that is not a loopback name (DNS rebinding): refused even with the token.
    let (status, body) = raw(client
        .post(&url)
        .bearer_auth(&agent.token)
        .header("host", "rebind.example:7071")
        .json(&spec));
    assert_eq!(status, 421, "{body}");
    assert_eq!(body["field"], "Host");

    std::thread::sleep(Duration::from_millis(300));
    assert!(!marker.exists(), "a refused request ran its command");
    let (status, body) = agent.get("/instances");
    assert_eq!(status, 200);
    assert_eq!(body["instances"].as_array().unwrap().len(), 0, "{body}");

    // The token holder is served.
    let (status, body) = agent.post("/instances", spec.clone());
    assert_eq!(status, 201, "{body}");
    assert!(
        common::wait_for(Duration::from_secs(10), || marker.exists().then_some(())).is_some(),
        "the token holder's command did not run"
    );
}

#[test]
fn the_token_file_is_private_and_a_readable_one_is_refused() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("agent");
    let agent = AgentProc::start(&data, &["--cpu-cores", "1"]);
    let mode = std::fs::metadata(data.join("token"))
        .unwrap()
        .permissions()
        .mode()
        & 0o777;
    assert_eq!(mode, 0o600);
    drop(agent);
    std::fs::set_permissions(data.join("token"), std::fs::Permissions::from_mode(0o644)).unwrap();
    let out = common::refused_start(
        &[
            "agent".as_ref(),
            "--no-nvml".as_ref(),
            "--listen".as_ref(),
            "127.0.0.1:0".as_ref(),
            "--data-dir".as_ref(),
            data.as_os_str(),
        ],
        "dilu agent with a token file others can read",
    );
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("mode 0644"), "{stderr}");
    assert!(stderr.contains("0600 or stricter"), "{stderr}");
}
