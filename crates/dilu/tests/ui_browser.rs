//! The dashboard at `/ui`, in headless Chromium driven over the DevTools protocol (`--remote-debugging-pipe`:
//! NUL-separated JSON on file descriptors 3 and 4, no websocket and no driver binary). Against a live
//! `dilu up` serving SqueezeNet (built-in worker) beside a training job (built-in trainer) on the CPU device:
//! the page renders data within a second of navigation, loads nothing the policy forbids, and under a load
//! step its device panel shows the inference instance's usage rising and training's share falling, while the
//! timeline shows the scale-out with its reason. Screenshots before and during the burst go to
//! `target/ui-screenshots/`.

mod common;

use std::io::{BufRead, BufReader, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{Receiver, channel};
use std::time::{Duration, Instant};

use common::platform::{UpProc, ensure_models};
use serde_json::{Value, json};

/// Chromium: `$DILU_CHROMIUM`, else `/usr/bin/chromium`, else `chromium` on the `PATH`.
fn chromium() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("DILU_CHROMIUM") {
        return Some(PathBuf::from(p));
    }
    let debian = PathBuf::from("/usr/bin/chromium");
    if debian.is_file() {
        return Some(debian);
    }
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|d| d.join("chromium"))
        .find(|p| p.is_file())
}

/// A file descriptor duplicated above 10 (so that moving it to 3 or 4 in the child is never a no-op that
/// would keep its close-on-exec flag).
fn high_fd(fd: &impl AsRawFd) -> OwnedFd {
    // SAFETY: F_DUPFD_CLOEXEC returns a new descriptor this process owns, or -1.
    let new = unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_DUPFD_CLOEXEC, 10) };
    assert!(new >= 10, "fcntl: {}", std::io::Error::last_os_error());
    // SAFETY: `new` is a fresh, open descriptor owned by nobody else.
    unsafe { OwnedFd::from_raw_fd(new) }
}

/// Headless Chromium with one page attached (flattened session).
struct Browser {
    child: Child,
    to: std::io::PipeWriter,
    from: Receiver<Value>,
    next_id: u64,
    session: String,
    /// Events received while waiting for answers.
    events: Vec<Value>,
}

impl Browser {
    fn launch(binary: &Path, profile: &Path) -> Browser {
        let (cmd_read, cmd_write) = std::io::pipe().expect("pipe");
        let (resp_read, resp_write) = std::io::pipe().expect("pipe");
        let (child_in, child_out) = (high_fd(&cmd_read), high_fd(&resp_write));
        drop((cmd_read, resp_write));
        let (in_fd, out_fd) = (child_in.as_raw_fd(), child_out.as_raw_fd());
        let mut command = Command::new(binary);
        command
            .args([
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-dev-shm-usage",
                "--disable-background-networking",
                "--disable-extensions",
                "--disable-sync",
                "--no-first-run",
                "--no-default-browser-check",
                "--mute-audio",
                "--hide-scrollbars",
                "--remote-debugging-pipe",
                "--window-size=1400,1100",
            ])
            .arg(format!("--user-data-dir={}", profile.display()))
            .arg("about:blank")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        {
            use std::os::unix::process::CommandExt;
            // SAFETY: dup2 is async-signal-safe; the closure touches nothing else.
            unsafe {
                command.pre_exec(move || {
                    if libc::dup2(in_fd, 3) < 0 || libc::dup2(out_fd, 4) < 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                    Ok(())
                });
            }
        }
        let child = command.spawn().expect("start chromium");
        drop((child_in, child_out));
        let (tx, rx) = channel();
        std::thread::spawn(move || {
            let mut reader = BufReader::new(resp_read);
            let mut message = Vec::new();
            while reader
                .read_until(0, &mut message)
                .map(|n| n > 0)
                .unwrap_or(false)
            {
                if message.last() == Some(&0) {
                    message.pop();
                }
                if let Ok(v) = serde_json::from_slice::<Value>(&message)
                    && tx.send(v).is_err()
                {
                    break;
                }
                message.clear();
            }
        });
        let mut browser = Browser {
            child,
            to: cmd_write,
            from: rx,
            next_id: 0,
            session: String::new(),
            events: Vec::new(),
        };
        let targets = browser.call("Target.getTargets", json!({}));
        let page = targets["targetInfos"]
            .as_array()
            .and_then(|t| t.iter().find(|t| t["type"] == "page"))
            .unwrap_or_else(|| panic!("no page target: {targets}"))["targetId"]
            .clone();
        let attached = browser.call(
            "Target.attachToTarget",
            json!({"targetId": page, "flatten": true}),
        );
        browser.session = attached["sessionId"]
            .as_str()
            .expect("sessionId")
            .to_string();
        for domain in ["Page.enable", "Runtime.enable", "Log.enable"] {
            browser.call(domain, json!({}));
        }
        browser
    }

    /// Sends a command (to the page's session once attached) and waits for its answer.
    fn call(&mut self, method: &str, params: Value) -> Value {
        self.next_id += 1;
        let id = self.next_id;
        let mut message = json!({"id": id, "method": method, "params": params});
        if !self.session.is_empty() {
            message["sessionId"] = json!(self.session);
        }
        let mut bytes = serde_json::to_vec(&message).unwrap();
        bytes.push(0);
        self.to.write_all(&bytes).expect("write to chromium");
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let reply = self
                .from
                .recv_timeout(left)
                .unwrap_or_else(|e| panic!("{method}: no answer from chromium ({e})"));
            if reply["id"] == id {
                assert!(reply["error"].is_null(), "{method}: {reply}");
                return reply["result"].clone();
            }
            if reply["method"].is_string() {
                self.events.push(reply);
            }
        }
    }

    /// Evaluates `expression` in the page (awaiting a promise), its value as JSON.
    fn eval(&mut self, expression: &str) -> Value {
        self.try_eval(expression)
            .unwrap_or_else(|e| panic!("{expression}: {e}"))
    }

    /// [`Browser::eval`], its exception as the error (e.g. while a navigation replaces the document).
    fn try_eval(&mut self, expression: &str) -> Result<Value, Value> {
        let r = self.call(
            "Runtime.evaluate",
            json!({"expression": expression, "returnByValue": true, "awaitPromise": true}),
        );
        match r["exceptionDetails"].is_null() {
            true => Ok(r["result"]["value"].clone()),
            false => Err(r),
        }
    }

    fn screenshot(&mut self, path: &Path) {
        let shot = self.call("Page.captureScreenshot", json!({"format": "png"}));
        let png = base64_decode(shot["data"].as_str().expect("screenshot data"));
        assert!(png.starts_with(b"\x89PNG"), "not a PNG");
        std::fs::write(path, png).expect("write screenshot");
        eprintln!("screenshot: {}", path.display());
    }

    /// Errors the page logged: exceptions, console errors, and the browser's own log (CSP violations).
    fn errors(&mut self) -> Vec<String> {
        // Drain what arrived since the last call.
        while let Ok(v) = self.from.try_recv() {
            if v["method"].is_string() {
                self.events.push(v);
            }
        }
        self.events
            .iter()
            .filter(|e| {
                e["method"] == "Runtime.exceptionThrown"
                    || (e["method"] == "Runtime.consoleAPICalled" && e["params"]["type"] == "error")
                    || (e["method"] == "Log.entryAdded" && e["params"]["entry"]["level"] == "error")
            })
            .map(|e| e["params"].to_string())
            .collect()
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn base64_decode(text: &str) -> Vec<u8> {
    let value = |c: u8| -> Option<u32> {
        Some(match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'+' => 62,
            b'/' => 63,
            _ => return None,
        } as u32)
    };
    let mut out = Vec::with_capacity(text.len() * 3 / 4);
    let (mut acc, mut bits) = (0u32, 0u32);
    for v in text.bytes().filter_map(value) {
        acc = (acc << 6) | v;
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
            acc &= (1 << bits) - 1;
        }
    }
    out
}

/// The device panel's legend rows and the newest timeline entries, as the page shows them now.
const READ_DOM: &str = r#"JSON.stringify({
  rows: [...document.querySelectorAll('#devices tr[data-instance]')].map(r => ({
    id: r.dataset.instance, function: r.dataset.function, kind: r.dataset.kind,
    usage: Number(r.dataset.usage), share: Number(r.dataset.share),
    request: Number(r.dataset.request), limit: Number(r.dataset.limit)})),
  areas: document.querySelectorAll('#devices svg path').length,
  functions: [...document.querySelectorAll('#functions tr[data-function]')].map(r => ({
    name: r.dataset.function, status: r.dataset.status, text: r.textContent})),
  events: [...document.querySelectorAll('#timeline li')].slice(0, 200).map(li => ({
    kind: li.dataset.kind, text: li.textContent}))
})"#;

fn read_dom(browser: &mut Browser) -> Value {
    let text = browser.eval(READ_DOM);
    serde_json::from_str(text.as_str().expect("a string")).expect("DOM JSON")
}

/// A column (`usage`, `share`) the device panel shows for `function`'s instances, summed.
fn column(dom: &Value, function: &str, name: &str) -> f64 {
    dom["rows"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| r["function"] == function)
        .map(|r| r[name].as_f64().unwrap_or(0.0))
        .sum()
}

/// The inference instance's usage and the training instance's share, as the device panel shows them.
fn reading(dom: &Value) -> (f64, f64) {
    (column(dom, "sq", "usage"), column(dom, "t", "share"))
}

/// The mean of [`reading`] over `n` readings 300 ms apart.
fn mean_reading(browser: &mut Browser, n: usize) -> (f64, f64) {
    let (mut inference, mut training) = (0.0, 0.0);
    for _ in 0..n {
        let (i, t) = reading(&read_dom(browser));
        inference += i;
        training += t;
        std::thread::sleep(Duration::from_millis(300));
    }
    (inference / n as f64, training / n as f64)
}

fn screenshots_dir() -> PathBuf {
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../../target"));
    let dir = target.join("ui-screenshots");
    std::fs::create_dir_all(&dir).expect("screenshot dir");
    dir
}

#[test]
fn dashboard_shows_functions_devices_and_events_live() {
    let started = Instant::now();
    let Some(browser_bin) = chromium() else {
        let note = "CHROMIUM MISSING: install it (apt-get install chromium) or set DILU_CHROMIUM";
        if std::env::var("CI").as_deref() == Ok("true") {
            panic!("{note}");
        }
        eprintln!("\n*** SKIPPING: {note} ***\n");
        return;
    };
    let Some(cache) = ensure_models() else { return };
    let dir = tempfile::tempdir().unwrap();
    let up = UpProc::start(&dir.path().join("data"), &[]);

    // The assets: content types and the policy.
    for (path, kind) in [
        ("/ui", "text/html"),
        ("/ui/app.js", "text/javascript"),
        ("/ui/app.css", "text/css"),
    ] {
        let r = up.client().get(format!("{}{path}", up.url)).send().unwrap();
        assert_eq!(r.status(), 200, "{path}");
        let header = |h: &str| {
            r.headers()
                .get(h)
                .and_then(|v| v.to_str().ok())
                .unwrap_or("")
                .to_string()
        };
        assert!(header("content-type").starts_with(kind), "{path}");
        let csp = header("content-security-policy");
        assert!(
            csp.contains("default-src 'none'")
                && csp.contains("script-src 'self'")
                && csp.contains("connect-src 'self'")
                && !csp.contains("unsafe"),
            "{path}: {csp}"
        );
        assert_eq!(header("x-content-type-options"), "nosniff");
    }

    // SqueezeNet with a small capacity and a fast lazy window (a load step scales it out), beside training.
    let model = cache.join("onnx-light/light_squeezenet.onnx");
    let (status, body) = up.deploy_yaml(&format!(
        "name: sq\nkind: inference\nmodel: {{path: {}, max_batch: 4}}\nslo_ms: 1000\n\
         quota: {{request: 0.25, limit: 0.5}}\nscaling: {{min_instances: 1, max_instances: 2, capacity_rps: 3, \
         lazy: {{window: 4, out_votes: 2, in_votes: 4, interval_s: 0.5}}}}\n",
        model.display()
    ));
    assert_eq!(status, 201, "{body}");
    let (status, body) = up.deploy_yaml(
        "name: t\nkind: training\ntraining: {hidden: 64}\nquota: {request: 0.2, limit: 0.6}\n",
    );
    assert_eq!(status, 201, "{body}");
    up.wait_running("sq", 1, Duration::from_secs(120));
    up.wait_running("t", 1, Duration::from_secs(120));
    let input = std::fs::read(cache.join("inputs/squeezenet.json")).unwrap();
    let (status, body) = up.infer("sq", &input);
    assert_eq!(status, 200, "{body}");

    let profile = dir.path().join("chromium");
    let mut browser = Browser::launch(&browser_bin, &profile);
    let shots = screenshots_dir();

    // Load time: navigation start to the first render with data (the page records it).
    browser.call("Page.navigate", json!({"url": format!("{}/ui", up.url)}));
    let deadline = Instant::now() + Duration::from_secs(20);
    let load_ms = loop {
        let v = browser
            .try_eval("document.documentElement.dataset.firstRenderMs || null")
            .unwrap_or(Value::Null);
        if let Some(ms) = v.as_str().and_then(|s| s.parse::<f64>().ok()) {
            break ms;
        }
        assert!(Instant::now() < deadline, "the page never rendered data");
        std::thread::sleep(Duration::from_millis(50));
    };
    eprintln!("ui: first render with data {load_ms:.0} ms after navigation start");
    assert!(load_ms < 1000.0, "first render took {load_ms} ms");

    let dom = read_dom(&mut browser);
    let names: Vec<&str> = dom["functions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["name"].as_str().unwrap())
        .collect();
    assert!(names.contains(&"sq") && names.contains(&"t"), "{dom}");
    let sq_row = dom["rows"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["function"] == "sq")
        .unwrap_or_else(|| panic!("no sq instance on the device panel: {dom}"));
    assert_eq!(
        (sq_row["request"].as_f64(), sq_row["limit"].as_f64()),
        (Some(0.25), Some(0.5)),
        "{sq_row}"
    );

    // A few seconds of the quiet device, then the baseline.
    std::thread::sleep(Duration::from_secs(3));
    // Training is one thread on a 2-core device: it uses half the device at most, so what a burst visibly
    // takes from it is its share (the token manager's grant), not necessarily its usage.
    let (sq_before, t_before) = mean_reading(&mut browser, 6);
    eprintln!("quiet: inference usage {sq_before:.2}, training share {t_before:.2}");
    browser.screenshot(&shots.join("before.png"));

    // The load step: four clients back to back.
    let stop = AtomicBool::new(false);
    let (rose_after, sq_during, t_during, dom) = std::thread::scope(|s| {
        for _ in 0..4 {
            s.spawn(|| {
                while !stop.load(Ordering::Relaxed) {
                    let _ = up.infer("sq", &input);
                }
            });
        }
        let burst = Instant::now();
        let deadline = burst + Duration::from_secs(20);
        let mut readings: Vec<(f64, f64)> = Vec::new();
        let result = loop {
            let dom = read_dom(&mut browser);
            readings.push(reading(&dom));
            let recent = &readings[readings.len().saturating_sub(4)..];
            let (sq, t) = recent
                .iter()
                .fold((0.0, 0.0), |(a, b), (x, y)| (a + x, b + y));
            let (sq, t) = (sq / recent.len() as f64, t / recent.len() as f64);
            let scaled = dom["events"].as_array().unwrap().iter().any(|e| {
                e["kind"] == "scale-out"
                    && e["text"]
                        .as_str()
                        .is_some_and(|t| t.contains("scale out from 1 to 2"))
            });
            if recent.len() == 4 && sq > sq_before + 0.1 && t < t_before - 0.04 && scaled {
                break Some((burst.elapsed(), sq, t, dom));
            }
            if Instant::now() > deadline {
                break None;
            }
            std::thread::sleep(Duration::from_millis(250));
        };
        if result.is_some() {
            // A little more of the burst on the chart.
            std::thread::sleep(Duration::from_secs(2));
        }
        browser.screenshot(&shots.join("during.png"));
        stop.store(true, Ordering::Relaxed);
        result.unwrap_or_else(|| {
            panic!(
                "within 20 s of the load step the device panel did not show inference's usage rising and \
                 training's share falling, or the timeline no scale-out (quiet: {sq_before:.2} / {t_before:.2}; readings: \
                 {readings:?}): {}",
                read_dom(&mut browser)
            )
        })
    });
    eprintln!(
        "burst: after {:.1} s the page shows inference usage {sq_during:.2} (was {sq_before:.2}) and training \
         share {t_during:.2} (was {t_before:.2})",
        rose_after.as_secs_f64()
    );
    // The scale-out with its reason, from the live stream.
    let scale_out = dom["events"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["kind"] == "scale-out")
        .unwrap();
    let text = scale_out["text"].as_str().unwrap();
    assert!(
        text.contains("samples above the capacity of 1 instance (3.0 req/s"),
        "{text}"
    );
    assert!(dom["areas"].as_u64().unwrap() >= 2, "{dom}");
    let errors = browser.errors();
    assert!(errors.is_empty(), "the page logged errors: {errors:#?}");
    drop(browser);
    eprintln!("ui_browser: {:.1} s", started.elapsed().as_secs_f64());
}
