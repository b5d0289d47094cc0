//! `dilu burn`: the real binary as a CPU load under a real CPU quota channel — its rate follows the budget,
//! its health endpoint answers while it runs, and without a quota it warns and runs flat out.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::sync::atomic::Ordering::Relaxed;
use std::time::{Duration, Instant};

use dilu_quota::{AgentChannel, ChannelSpec, DEFAULT_WINDOW_NS, DeviceKind, thread_cpu_ns};

fn burn() -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_dilu"));
    command
        .arg("burn")
        .env("RUST_BACKTRACE", "0")
        .env_remove("DILU_QUOTA_FILE")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    command
}

/// A CPU-device channel with `share` of one core (budget = share × the 5 ms window).
fn cpu_channel(dir: &Path, kind: DeviceKind, share: f64) -> (PathBuf, AgentChannel) {
    let path = dir.join(format!("{}.quota", kind.name()));
    let spec = ChannelSpec {
        device_uuid: "cpu-0".into(),
        device_kind: kind,
        budget_per_window: (DEFAULT_WINDOW_NS as f64 * share) as u64,
        window_ns: DEFAULT_WINDOW_NS,
        ..ChannelSpec::default()
    };
    let channel = AgentChannel::create(&path, &spec, 0o600).unwrap();
    (path, channel)
}

/// One report line.
#[derive(Debug)]
struct Report {
    t_s: f64,
    cpu_ns: u64,
    units: u64,
    delayed: u64,
    runq_ns: u64,
}

fn parse_reports(stdout: &str) -> Vec<Report> {
    stdout
        .lines()
        .map(|line| {
            let v: serde_json::Value = serde_json::from_str(line)
                .unwrap_or_else(|e| panic!("not a JSON line: {line:?}: {e}"));
            Report {
                t_s: v["t_s"].as_f64().unwrap(),
                cpu_ns: v["cpu_ns"].as_u64().unwrap(),
                units: v["units"].as_u64().unwrap(),
                delayed: v["delayed"].as_u64().unwrap(),
                runq_ns: v["runq_ns"].as_u64().unwrap(),
            }
        })
        .collect()
}

/// What a finished run left: stdout, stderr, exit status, and the process's own CPU time (from `wait4`'s
/// resource usage, independent of what the program reports) and wall time.
struct Finished {
    stdout: String,
    stderr: String,
    status: i32,
    process_cpu_s: f64,
    wall_s: f64,
}

/// Reads the child's output to the end, then reaps it with `wait4` to get its resource usage.
fn finish(mut child: Child, started: Instant) -> Finished {
    let mut stderr_pipe = child.stderr.take().unwrap();
    let stderr_reader = std::thread::spawn(move || {
        let mut s = String::new();
        stderr_pipe.read_to_string(&mut s).unwrap();
        s
    });
    let mut stdout = String::new();
    child
        .stdout
        .take()
        .unwrap()
        .read_to_string(&mut stdout)
        .unwrap();
    let pid = child.id() as libc::pid_t;
    let mut status = 0;
    // SAFETY: zeroed rusage is a valid value of the plain C struct that wait4 fills.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: waits for our own child; `status` and `usage` are valid for writes. `child` is never waited
    // on through std afterwards (dropping a Child does not wait).
    let reaped = unsafe { libc::wait4(pid, &mut status, 0, &mut usage) };
    assert_eq!(reaped, pid, "{}", std::io::Error::last_os_error());
    let wall_s = started.elapsed().as_secs_f64();
    let secs = |tv: libc::timeval| tv.tv_sec as f64 + tv.tv_usec as f64 / 1e6;
    assert!(
        libc::WIFEXITED(status),
        "dilu burn did not exit: {status:#x}"
    );
    Finished {
        stdout,
        stderr: stderr_reader.join().unwrap(),
        status: libc::WEXITSTATUS(status),
        process_cpu_s: secs(usage.ru_utime) + secs(usage.ru_stime),
        wall_s,
    }
}

/// Time the hypervisor ran something else on this machine's CPUs, all CPUs together, in ns (`steal` in
/// `/proc/stat`); 0 where it is not reported.
fn steal_ns() -> u64 {
    // SAFETY: sysconf has no preconditions.
    let ticks_per_s = u64::try_from(unsafe { libc::sysconf(libc::_SC_CLK_TCK) }).unwrap_or(100);
    std::fs::read_to_string("/proc/stat")
        .ok()
        .and_then(|s| {
            s.lines()
                .next()?
                .split_whitespace()
                .nth(8)?
                .parse::<u64>()
                .ok()
        })
        .map_or(0, |ticks| ticks * (1_000_000_000 / ticks_per_s.max(1)))
}

#[test]
fn cpu_rate_follows_the_channel_budget() {
    let dir = tempfile::tempdir().unwrap();
    let (path, channel) = cpu_channel(dir.path(), DeviceKind::Cpu, 0.2);
    let steal_before = steal_ns();
    let started = Instant::now();
    let child = burn()
        .arg("--quota-file")
        .arg(&path)
        .args(["--seconds", "1.5", "--report-ms", "250"])
        .spawn()
        .unwrap();
    let pid = child.id();
    let run = finish(child, started);
    let steal = steal_ns().saturating_sub(steal_before);
    assert_eq!(run.status, 0, "{}", run.stderr);
    assert!(
        !run.stderr.contains("unthrottled"),
        "a quota was given: {}",
        run.stderr
    );

    let reports = parse_reports(&run.stdout);
    assert!(
        reports.len() >= 6,
        "one line per 250 ms and a final one: {reports:?}"
    );
    assert!(
        reports
            .windows(2)
            .all(|w| w[0].cpu_ns <= w[1].cpu_ns && w[0].units <= w[1].units),
        "counters are cumulative: {reports:?}"
    );
    let last = reports.last().unwrap();
    let share = last.cpu_ns as f64 / (last.t_s * 1e9);
    let process_share = run.process_cpu_s / run.wall_s;
    let snap = channel.snapshot();
    eprintln!(
        "throttled at 0.2: reported {share:.4} of a core ({} ns in {:.3} s, {} units, {} delayed, \
         {:.1} ms waiting for a CPU, {:.0} ms stolen); process rusage {process_share:.4} ({:.4} s CPU in \
         {:.3} s wall); channel cost {} in {} launches",
        last.cpu_ns,
        last.t_s,
        last.units,
        last.delayed,
        last.runq_ns as f64 / 1e6,
        steal as f64 / 1e6,
        run.process_cpu_s,
        run.wall_s,
        snap.cost_launched,
        snap.launches
    );
    assert!((1.45..1.7).contains(&last.t_s), "ran {} s", last.t_s);
    // Never more than the budget (+15%). Never less (-15%) either, except for time the worker could not run
    // at all: waiting behind other threads for a CPU, or a CPU taken away by the hypervisor; on an idle
    // machine that is zero and the bound is the plain ±15%.
    let could_run = (1.0 - (last.runq_ns + steal) as f64 / (last.t_s * 1e9)).max(0.0);
    let floor = 0.85 * 0.2 * could_run;
    assert!(
        (floor..=1.15 * 0.2).contains(&share),
        "CPU share {share:.4} is not within [{floor:.4}, 0.23] (0.2 ± 15%, floor scaled by {could_run:.3})"
    );
    // What the OS measured for the whole process agrees (it adds start-up and the reporting thread).
    assert!(
        (floor..=1.15 * 0.2).contains(&process_share),
        "process CPU share {process_share:.4} is not within [{floor:.4}, 0.23]"
    );
    assert!(last.delayed > 0 && last.delayed <= last.units);
    // Every unit was charged to the channel, and nothing else was.
    assert_eq!(snap.attached_pid, pid);
    assert_eq!(snap.launches, last.units);
    assert_eq!(snap.launches_delayed, last.delayed);
    let drift = snap.cost_launched.abs_diff(last.cpu_ns) as f64 / last.cpu_ns as f64;
    assert!(
        drift < 0.01,
        "channel charged {} ns, burn reported {} ns",
        snap.cost_launched,
        last.cpu_ns
    );
}

fn http_get(port: u16, path: &str) -> String {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    write!(stream, "GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n").unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).unwrap();
    response
}

#[test]
fn health_endpoint_answers_while_running_and_sigterm_ends_cleanly() {
    let dir = tempfile::tempdir().unwrap();
    let (path, _channel) = cpu_channel(dir.path(), DeviceKind::Cpu, 0.2);
    let started = Instant::now();
    let mut child = burn()
        .arg("--quota-file")
        .arg(&path)
        .args(["--health-port", "0", "--report-ms", "100"])
        .spawn()
        .unwrap();
    // Port 0 lets the OS pick; burn names the port on stderr.
    let mut stderr = BufReader::new(child.stderr.take().unwrap());
    let mut line = String::new();
    let port = loop {
        line.clear();
        assert!(
            stderr.read_line(&mut line).unwrap() > 0,
            "stderr closed before the health endpoint was announced"
        );
        if let Some(rest) = line
            .trim()
            .strip_prefix("dilu burn: health endpoint on http://127.0.0.1:")
        {
            break rest.trim_end_matches("/health").parse::<u16>().unwrap();
        }
    };
    std::thread::sleep(Duration::from_millis(200));
    let ok = http_get(port, "/health");
    assert!(ok.starts_with("HTTP/1.1 200 OK\r\n"), "{ok:?}");
    assert!(ok.ends_with("\r\n\r\nok"), "{ok:?}");
    let missing = http_get(port, "/nope");
    assert!(missing.starts_with("HTTP/1.1 404 "), "{missing:?}");
    assert_eq!(
        child.try_wait().unwrap(),
        None,
        "still running after the probes"
    );

    // SAFETY: signals our own child, which has not been reaped yet.
    assert_eq!(
        unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGTERM) },
        0
    );
    child.stderr = Some(stderr.into_inner());
    let run = finish(child, started);
    assert_eq!(run.status, 0, "SIGTERM ends with status 0: {}", run.stderr);
    let reports = parse_reports(&run.stdout);
    let last = reports.last().expect("a final report line");
    assert!(last.units > 0 && last.t_s >= 0.15, "{reports:?}");
    assert!(
        TcpStream::connect(("127.0.0.1", port)).is_err(),
        "the endpoint is gone with the process"
    );
}

/// Spins on a thread of the test process until `stop`, and returns the share of one core it got: what an
/// unthrottled spinning thread gets on this machine right now.
fn reference_spinner(stop: Arc<AtomicBool>) -> std::thread::JoinHandle<f64> {
    std::thread::spawn(move || {
        let wall = Instant::now();
        let cpu = thread_cpu_ns();
        let mut x = 1u64;
        while !stop.load(Relaxed) {
            for _ in 0..10_000 {
                x = std::hint::black_box(x.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1));
            }
        }
        (thread_cpu_ns() - cpu) as f64 / wall.elapsed().as_nanos() as f64
    })
}

#[test]
fn without_a_quota_it_warns_and_runs_unthrottled() {
    // The bar is 0.8 of one core, scaled down by what a spinning thread beside it gets when other work
    // shares the machine (on an idle machine the reference gets a whole core and the bar is 0.8).
    let stop = Arc::new(AtomicBool::new(false));
    let reference = reference_spinner(Arc::clone(&stop));
    let run = finish(
        burn()
            .args(["--seconds", "0.5", "--report-ms", "100"])
            .spawn()
            .unwrap(),
        Instant::now(),
    );
    stop.store(true, Relaxed);
    let available = reference.join().unwrap().min(1.0);
    assert_eq!(run.status, 0, "{}", run.stderr);
    assert_eq!(
        run.stderr.matches("running unthrottled").count(),
        1,
        "one warning: {}",
        run.stderr
    );
    let last = parse_reports(&run.stdout).pop().unwrap();
    let share = last.cpu_ns as f64 / (last.t_s * 1e9);
    eprintln!(
        "unthrottled: {share:.3} of a core over {:.3} s ({} units); a spinning thread beside it got {available:.3}",
        last.t_s, last.units
    );
    assert!(
        share > 0.8 * available,
        "CPU share {share:.3} of one core, a spinning thread beside it got {available:.3}"
    );
    assert_eq!(last.delayed, 0);
}

#[test]
fn a_gpu_channel_or_a_missing_file_is_refused_with_its_path() {
    let dir = tempfile::tempdir().unwrap();
    let (gpu, _channel) = cpu_channel(dir.path(), DeviceKind::Gpu, 0.2);
    let run = finish(
        burn()
            .arg("--quota-file")
            .arg(&gpu)
            .args(["--seconds", "0.1"])
            .spawn()
            .unwrap(),
        Instant::now(),
    );
    assert_ne!(run.status, 0);
    assert!(run.stderr.contains(gpu.to_str().unwrap()), "{}", run.stderr);
    assert!(run.stderr.contains("CPU device"), "{}", run.stderr);

    let missing = dir.path().join("missing.quota");
    let run = finish(
        burn()
            .env("DILU_QUOTA_FILE", &missing)
            .args(["--seconds", "0.1"])
            .spawn()
            .unwrap(),
        Instant::now(),
    );
    assert_ne!(run.status, 0);
    assert!(run.stderr.contains("DILU_QUOTA_FILE"), "{}", run.stderr);
    assert!(
        run.stderr.contains(missing.to_str().unwrap()),
        "{}",
        run.stderr
    );
    assert!(run.stdout.is_empty(), "{}", run.stdout);
}
