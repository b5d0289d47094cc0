//! `dilu up` against a hostile or careless user: idle connections, deeply nested specs, a second `dilu up`
//! on the same data directory, oversized bodies, foreign `Host` names, and what an unauthenticated reader
//! may see.

mod common;

use std::net::TcpStream;
use std::time::{Duration, Instant};

use common::platform::{UpProc, ensure_models};
use serde_json::Value;

fn ocr_spec(cache: &std::path::Path, name: &str) -> String {
    format!(
        "name: {name}\nmodel:\n  path: {}\n  input_shape: [1, 3, 48, 192]\n  max_batch: 4\nslo_ms: 500\n\
         quota: {{request: 0.3, limit: 1.0}}\nscaling: {{min_instances: 1, max_instances: 1, capacity_rps: 20}}\n",
        cache
            .join("ppocr/ch_ppocr_mobile_v2.0_cls_infer.onnx")
            .display()
    )
}

#[test]
fn idle_connections_past_the_open_file_limit_do_not_starve_health_or_inference() {
    let Some(cache) = ensure_models() else { return };
    let dir = tempfile::tempdir().unwrap();
    let up =
        UpProc::start_with_open_files(&dir.path().join("data"), &["--cpu-cores", "1"], Some(1024));
    let (s, b) = up.deploy_yaml(&ocr_spec(&cache, "ocr"));
    assert_eq!(s, 201, "{b}");
    up.wait_running("ocr", 1, Duration::from_secs(60));
    let input = std::fs::read(cache.join("inputs/text-upright.json")).unwrap();
    let (s, b) = up.infer("ocr", &input);
    assert_eq!(s, 200, "{b}");

    common::raise_own_open_files();
    let addr = up.url.trim_start_matches("http://").parse().unwrap();
    let mut idle = Vec::new();
    let started = Instant::now();
    for _ in 0..1100 {
        if let Ok(stream) = TcpStream::connect_timeout(&addr, Duration::from_secs(5)) {
            idle.push(stream);
        }
    }
    eprintln!(
        "{} idle connections opened in {:?}",
        idle.len(),
        started.elapsed()
    );
    assert!(idle.len() >= 1024, "only {} connections opened", idle.len());

    let started = Instant::now();
    let (s, b) = up.get("/health");
    let health = started.elapsed();
    assert_eq!(s, 200, "{b}");
    let started = Instant::now();
    let (s, b) = up.infer("ocr", &input);
    let infer = started.elapsed();
    assert_eq!(s, 200, "{b}");
    let (s, _) = up.get("/v2/health/ready");
    assert_eq!(s, 200);
    eprintln!(
        "with 1,100 idle connections and 1,024 files: /health in {health:?}, /v2 infer in {infer:?}"
    );
    drop(idle);
}

/// Runs a `dilu up` on `data` that must refuse to start; its stderr.
fn refused_up(data: &std::path::Path, what: &str) -> String {
    let args = [
        "up".as_ref(),
        "--no-nvml".as_ref(),
        "--listen".as_ref(),
        "127.0.0.1:0".as_ref(),
        "--data-dir".as_ref(),
        data.as_os_str(),
    ];
    let out = common::refused_start(&args, what);
    assert!(!out.status.success(), "{what}: exited successfully");
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn a_second_dilu_up_on_the_same_data_directory_is_refused_and_the_first_keeps_serving() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let up = UpProc::start(&data, &["--cpu-cores", "1"]);
    let stderr = refused_up(&data, "a second dilu up on the same data directory");
    assert!(stderr.contains("already in use by pid"), "{stderr}");
    assert!(
        stderr.contains("one dilu process per data directory"),
        "{stderr}"
    );
    let (s, _) = up.get("/health");
    assert_eq!(s, 200);
    // The first one's files are its own: the database is private.
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(data.join("dilu.db"))
        .unwrap()
        .permissions()
        .mode()
        & 0o777;
    assert_eq!(mode & 0o077, 0, "dilu.db is {mode:o}");
    drop(up);

    // A data directory others may write in is refused with the rule.
    let open = dir.path().join("open");
    std::fs::create_dir(&open).unwrap();
    std::fs::set_permissions(&open, std::fs::Permissions::from_mode(0o777)).unwrap();
    let stderr = refused_up(&open, "dilu up on a world-writable data directory");
    assert!(stderr.contains("mode 0777"), "{stderr}");
}

#[test]
fn nested_specs_oversized_bodies_and_foreign_hosts_get_precise_json_refusals() {
    let dir = tempfile::tempdir().unwrap();
    let up = UpProc::start(&dir.path().join("data"), &["--cpu-cores", "1"]);

    // Two 200 KB specs nested 100,000 deep at once (each once took 18 s and stalled /health).
    let nested = format!(
        "name: x\nmodel: {}{}\n",
        "[".repeat(100_000),
        "]".repeat(100_000)
    );
    let posts: Vec<_> = (0..2)
        .map(|_| {
            let (url, token, body) = (up.url.clone(), up.token.clone(), nested.clone());
            std::thread::spawn(move || {
                let response = reqwest::blocking::Client::new()
                    .post(format!("{url}/v1/functions"))
                    .bearer_auth(token)
                    .header("content-type", "application/yaml")
                    .body(body)
                    .timeout(Duration::from_secs(30))
                    .send()
                    .unwrap();
                (
                    response.status().as_u16(),
                    response.json::<Value>().unwrap(),
                )
            })
        })
        .collect();
    let (s, _) = up.get("/health");
    assert_eq!(s, 200);
    for post in posts {
        let (s, b) = post.join().unwrap();
        assert_eq!(s, 400, "{b}");
        assert_eq!(b["field"], "spec", "{b}");
        assert!(
            b["rule"].as_str().unwrap().contains("at most 32 levels"),
            "{b}"
        );
    }

    // A body over the control API's limit: JSON 413 naming the rule (it was plain text).
    let big = vec![b'#'; 3 << 20];
    let (s, b) = up.call(
        reqwest::Method::POST,
        "/v1/functions",
        Some(("application/yaml", big)),
        true,
    );
    assert_eq!(s, 413, "{b}");
    assert_eq!(b["field"], "body", "{b}");
    assert!(b["rule"].as_str().unwrap().contains("at most"), "{b}");

    // A foreign Host on the loopback listener (DNS rebinding): refused.
    let response = up
        .client()
        .get(format!("{}/v1/functions", up.url))
        .header("host", "rebind.example")
        .send()
        .unwrap();
    assert_eq!(response.status().as_u16(), 421);
    // Inference too, although the gateway answers it without the router (dilu_server::api::service).
    let response = up
        .client()
        .post(format!("{}/v2/models/any/infer", up.url))
        .header("host", "rebind.example")
        .header("content-type", "application/json")
        .body("{}")
        .send()
        .unwrap();
    assert_eq!(response.status().as_u16(), 421);
    let response = up
        .client()
        .get(format!("{}/v1/functions", up.url))
        .header("host", "localhost")
        .send()
        .unwrap();
    assert_eq!(response.status().as_u16(), 200);

    // What an unauthenticated reader sees of instances: no command lines, pids or host paths.
    let trainer = std::fs::read_to_string(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/mlp-train.yaml"),
    )
    .unwrap();
    let (s, b) = up.deploy_yaml(&trainer);
    assert_eq!(s, 201, "{b}");
    up.wait_running("mlp-train", 1, Duration::from_secs(60));
    let (s, b) = up.get("/v1/instances");
    assert_eq!(s, 200);
    assert_eq!(b["instances"].as_array().map(Vec::len), Some(1), "{b}");
    let text = b.to_string();
    // Keys, not values: `"enforcement": "channel"` names how the instance is held, not where its channel is.
    for secret in ["\"command\":", "\"pid\":", "\"log_path\":", "\"channel\":"] {
        assert!(!text.contains(secret), "{secret} in {text}");
    }
    assert!(
        !text.contains(dir.path().to_str().unwrap()),
        "a host path in {text}"
    );
}
