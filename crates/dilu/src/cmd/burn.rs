//! `dilu burn`: a tiny CPU load program for testing the agent end to end.
//!
//! Each of `--threads` threads spins doing real work (an LCG-and-hash loop over a buffer) in units of about
//! `--unit-us` of thread CPU time, and after every unit charges the unit's CPU time to the instance's CPU
//! quota ([`CpuQuota`], from `--quota-file` or `DILU_QUOTA_FILE`), waiting there while the budget is spent.
//! Without a quota it runs unthrottled and says so once on stderr. Every `--report-ms` it prints one JSON line
//! of cumulative counters to stdout, and a final one when it stops: after `--seconds`, or on SIGTERM/SIGINT
//! (exit status 0 either way). A line is
//! `{"t_s":…,"cpu_ns":…,"units":…,"delayed":…,"runq_ns":…}`: wall seconds since the start, thread CPU time
//! charged, units done, units whose charge waited for budget, and the time the workers were runnable but
//! waiting for a CPU (from schedstat; it explains a load that got less than its budget on a busy machine).
//! `--health-port` serves `GET /health` → `200 ok` on 127.0.0.1, so readiness probes can be tested against it.

use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::atomic::{AtomicBool, AtomicU64};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use clap::Args;
use dilu_quota::{Admission, CpuQuota, QUOTA_FILE_ENV, ThreadMeter, thread_cpu_ns};

/// Arguments of `dilu burn`.
#[derive(Debug, Args)]
pub struct BurnArgs {
    /// CPU quota channel to charge (a channel of the CPU device); default: $DILU_QUOTA_FILE, and without
    /// either the load runs unthrottled.
    #[arg(long)]
    quota_file: Option<PathBuf>,
    /// CPU time of one unit of work, microseconds; each unit is charged to the quota when it is done.
    #[arg(long, default_value_t = 200, value_parser = clap::value_parser!(u64).range(1..=10_000_000))]
    unit_us: u64,
    /// Stop after this many seconds of wall time; default: run until SIGTERM or SIGINT.
    #[arg(long)]
    seconds: Option<f64>,
    /// Worker threads, each with its own meter, all charging the same quota.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=1024))]
    threads: u32,
    /// Serve `GET /health` (200 ok) on 127.0.0.1 at this port while running; 0 picks a free port and prints
    /// it on stderr.
    #[arg(long)]
    health_port: Option<u16>,
    /// Interval between the JSON report lines on stdout, milliseconds (at most a day).
    #[arg(long, default_value_t = 1000, value_parser = clap::value_parser!(u64).range(1..=86_400_000))]
    report_ms: u64,
}

/// Set by the signal handler (SIGTERM, SIGINT) and by the main loop when time is up; workers stop on it.
static STOP: AtomicBool = AtomicBool::new(false);

extern "C" fn on_signal(_signal: libc::c_int) {
    // Only an atomic store: async-signal-safe.
    STOP.store(true, Relaxed);
}

fn install_signal_handlers() -> Result<()> {
    let handler = on_signal as extern "C" fn(libc::c_int) as libc::sighandler_t;
    for signal in [libc::SIGTERM, libc::SIGINT] {
        // SAFETY: the handler only stores to an atomic, which is async-signal-safe.
        let previous = unsafe { libc::signal(signal, handler) };
        if previous == libc::SIG_ERR {
            return Err(std::io::Error::last_os_error())
                .with_context(|| format!("installing a handler for signal {signal}"));
        }
    }
    Ok(())
}

/// Cumulative counters of all workers.
#[derive(Debug, Default)]
struct Totals {
    /// Thread CPU time of finished units (what was charged), ns.
    cpu_ns: AtomicU64,
    /// Units of work done.
    units: AtomicU64,
    /// Units whose charge had to wait for budget.
    delayed: AtomicU64,
    /// Per worker: time it was runnable but waiting for a CPU, ns (refreshed every [`RUN_QUEUE_EVERY`]
    /// units and when it stops).
    run_queue_ns: Vec<AtomicU64>,
}

/// How often (in units) a worker refreshes its run-queue time: a file read, so not every unit.
const RUN_QUEUE_EVERY: u64 = 32;

/// Time the calling thread has spent runnable but waiting for a CPU, in ns: the second field of
/// `/proc/thread-self/schedstat`; 0 where the kernel does not keep it.
fn run_queue_wait_ns() -> u64 {
    std::fs::read_to_string("/proc/thread-self/schedstat")
        .ok()
        .and_then(|s| s.split_whitespace().nth(1)?.parse().ok())
        .unwrap_or(0)
}

/// Runs `dilu burn`.
pub fn run(args: BurnArgs) -> Result<()> {
    let duration = match args.seconds {
        Some(s) => match Duration::try_from_secs_f64(s) {
            Ok(d) => Some(d),
            Err(_) => bail!("--seconds = {s}: must be a number of seconds from 0 to 1.8e19"),
        },
        None => None,
    };
    let quota = open_quota(args.quota_file.as_ref())?.map(Arc::new);
    if quota.is_none() {
        eprintln!(
            "dilu burn: no CPU quota (neither --quota-file nor {QUOTA_FILE_ENV}): running unthrottled"
        );
    }
    install_signal_handlers()?;
    if let Some(port) = args.health_port {
        let listener = TcpListener::bind(("127.0.0.1", port))
            .with_context(|| format!("binding the health endpoint to 127.0.0.1:{port}"))?;
        let addr = listener
            .local_addr()
            .context("reading the health endpoint's address")?;
        eprintln!("dilu burn: health endpoint on http://{addr}/health");
        std::thread::Builder::new()
            .name("health".into())
            .spawn(move || serve_health(&listener))
            .context("starting the health thread")?;
    }

    let started = Instant::now();
    // A duration too long to represent as an instant is as good as forever.
    let deadline = duration.and_then(|d| started.checked_add(d));
    let totals = Arc::new(Totals {
        run_queue_ns: (0..args.threads).map(|_| AtomicU64::new(0)).collect(),
        ..Totals::default()
    });
    let unit_ns = args.unit_us.saturating_mul(1000);
    let mut workers: Vec<JoinHandle<()>> = Vec::new();
    for index in 0..args.threads {
        let quota = quota.clone();
        let totals = Arc::clone(&totals);
        let worker = std::thread::Builder::new()
            .name(format!("burn-{index}"))
            .spawn(move || burn(index as usize, unit_ns, quota.as_deref(), &totals))
            .with_context(|| format!("starting worker thread {index}"))?;
        workers.push(worker);
    }

    let interval = Duration::from_millis(args.report_ms);
    let mut next_report = started + interval;
    loop {
        if STOP.load(Relaxed) {
            break;
        }
        let now = Instant::now();
        if deadline.is_some_and(|d| now >= d) {
            STOP.store(true, Relaxed);
            break;
        }
        if now >= next_report {
            report(started, &totals)?;
            while next_report <= now {
                next_report += interval;
            }
        }
        let mut wake = next_report;
        if let Some(d) = deadline {
            wake = wake.min(d);
        }
        // Short naps so a signal is noticed within 20 ms.
        std::thread::sleep(
            wake.saturating_duration_since(Instant::now())
                .min(Duration::from_millis(20)),
        );
    }

    // Let the workers finish their unit and its charge; a worker held by a paused budget (0) is left
    // behind after a grace period, and ends with the process.
    let grace = Instant::now() + Duration::from_millis(500);
    while !workers.iter().all(JoinHandle::is_finished) && Instant::now() < grace {
        std::thread::sleep(Duration::from_millis(2));
    }
    for worker in workers {
        if worker.is_finished() && worker.join().is_err() {
            bail!("a worker thread panicked");
        }
    }
    report(started, &totals)
}

/// The quota named by `--quota-file`, else by the environment; `None` for none.
fn open_quota(flag: Option<&PathBuf>) -> Result<Option<CpuQuota>> {
    match flag {
        Some(path) => CpuQuota::open(path)
            .map(Some)
            .with_context(|| format!("opening CPU quota channel {}", path.display())),
        None => CpuQuota::from_env().with_context(|| {
            format!(
                "opening the CPU quota channel named by {QUOTA_FILE_ENV}={}",
                std::env::var(QUOTA_FILE_ENV).unwrap_or_default()
            )
        }),
    }
}

/// Prints one JSON line of cumulative counters.
fn report(started: Instant, totals: &Totals) -> Result<()> {
    // Written by hand to keep the fields in this order (all are plain numbers).
    let line = format!(
        r#"{{"t_s":{:.6},"cpu_ns":{},"units":{},"delayed":{},"runq_ns":{}}}"#,
        started.elapsed().as_secs_f64(),
        totals.cpu_ns.load(Relaxed),
        totals.units.load(Relaxed),
        totals.delayed.load(Relaxed),
        totals
            .run_queue_ns
            .iter()
            .map(|w| w.load(Relaxed))
            .sum::<u64>(),
    );
    let mut out = std::io::stdout().lock();
    writeln!(out, "{line}")
        .and_then(|()| out.flush())
        .context("writing a report line to stdout")
}

/// Worker `index`: units of work, each charged when done, until [`STOP`].
fn burn(index: usize, unit_ns: u64, quota: Option<&CpuQuota>, totals: &Totals) {
    let run_queue = totals.run_queue_ns.get(index);
    let run_queue_start = run_queue_wait_ns();
    let mut meter = ThreadMeter::start();
    let mut until_refresh = RUN_QUEUE_EVERY;
    let mut buffer = vec![0u64; 4096];
    let mut state = u64::from(std::process::id()) | 1;
    while !STOP.load(Relaxed) {
        let unit_start = thread_cpu_ns();
        while thread_cpu_ns().saturating_sub(unit_start) < unit_ns {
            state = churn(&mut buffer, state);
        }
        std::hint::black_box(&buffer);
        let cpu_ns = meter.take();
        let admission = quota.map_or(Admission::Immediate, |quota| quota.charge(cpu_ns));
        totals.cpu_ns.fetch_add(cpu_ns, Relaxed);
        totals.units.fetch_add(1, Relaxed);
        if let Admission::Delayed(_) = admission {
            totals.delayed.fetch_add(1, Relaxed);
        }
        until_refresh -= 1;
        if until_refresh == 0 {
            until_refresh = RUN_QUEUE_EVERY;
            if let Some(slot) = run_queue {
                slot.store(run_queue_wait_ns().saturating_sub(run_queue_start), Relaxed);
            }
        }
    }
    if let Some(slot) = run_queue {
        slot.store(run_queue_wait_ns().saturating_sub(run_queue_start), Relaxed);
    }
}

/// A few microseconds of real work: an LCG walk over the buffer, mixing each word (splitmix64 finaliser).
fn churn(buffer: &mut [u64], mut state: u64) -> u64 {
    let mask = buffer.len() - 1;
    for _ in 0..256 {
        state = state
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        let slot = (state >> 33) as usize & mask;
        let mut z = buffer[slot] ^ state;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        buffer[slot] = z ^ (z >> 31);
    }
    state
}

/// Answers `GET /health` with `200 ok` and anything else with 404, one connection at a time.
fn serve_health(listener: &TcpListener) {
    for stream in listener.incoming() {
        match stream {
            // A misbehaving client only costs its own connection.
            Ok(stream) => {
                let _ = answer(stream);
            }
            // E.g. out of file descriptors: back off instead of spinning on the error.
            Err(_) => std::thread::sleep(Duration::from_millis(10)),
        }
    }
}

fn answer(stream: TcpStream) -> std::io::Result<()> {
    stream.set_read_timeout(Some(Duration::from_secs(2)))?;
    stream.set_write_timeout(Some(Duration::from_secs(2)))?;
    let mut reader = BufReader::new(&stream);
    let mut request_line = String::new();
    reader.read_line(&mut request_line)?;
    // Drain the headers up to the blank line so the client sees an orderly close.
    let mut header = String::new();
    while reader.read_line(&mut header)? > 0 && !header.trim_end().is_empty() {
        header.clear();
    }
    let mut parts = request_line.split_whitespace();
    let (status, body) = match (parts.next(), parts.next()) {
        (Some("GET"), Some("/health")) => ("200 OK", "ok"),
        _ => ("404 Not Found", "not found"),
    };
    let mut stream = &stream;
    write!(
        stream,
        "HTTP/1.1 {status}\r\nContent-Type: text/plain\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )?;
    stream.flush()
}
