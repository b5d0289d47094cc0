//! `dilu quota …`: create, inspect and change a quota channel by hand — for operators debugging a node and
//! for tests that drive the interposer without an agent.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use clap::{Args, Subcommand, ValueEnum};
use dilu_core::units::{format_bytes, parse_bytes};
use dilu_quota::layout::{DEFAULT_WINDOW_NS, mode, state};
use dilu_quota::{AgentChannel, ChannelSpec, DeviceKind, Snapshot, UNLIMITED};
use serde_json::json;

use crate::cmd::output::Format;

/// `dilu quota` subcommands.
#[derive(Debug, Subcommand)]
pub enum QuotaCommand {
    /// Create a channel file (replacing any file at PATH).
    Create(CreateArgs),
    /// Print a channel's control fields and counters.
    Show(ShowArgs),
    /// Change a channel's budget, memory cap, window or mode; the running instance picks it up at once.
    Set(SetArgs),
}

/// Device kind on the command line.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum KindArg {
    /// A GPU: cost units are normalised thread slots (1,000,000 = one full-device wave).
    Gpu,
    /// The CPU device: cost units are nanoseconds of CPU time.
    Cpu,
}

/// Control fields shared by `create` and `set`.
#[derive(Debug, Args)]
pub struct ControlArgs {
    /// Budget per window in cost units, or `unlimited`; 0 pauses compute.
    #[arg(long, value_parser = parse_limit)]
    budget: Option<u64>,
    /// Memory cap (e.g. 4GiB, 512MiB, 1.5GB) or `unlimited`; 0 refuses every allocation.
    #[arg(long, value_parser = parse_mem)]
    mem_cap: Option<u64>,
    /// Window length in milliseconds (0.1 to 60000).
    #[arg(long)]
    window_ms: Option<f64>,
    /// Enforcement flags, comma-separated: compute, memory, meminfo, or `all` / `none`.
    #[arg(long, value_parser = parse_mode)]
    mode: Option<u32>,
    /// Device's resident threads (SMs × max threads per SM), if the driver should not be asked.
    #[arg(long)]
    resident_threads: Option<u64>,
}

/// Arguments of `dilu quota create`.
#[derive(Debug, Args)]
pub struct CreateArgs {
    /// The channel file.
    path: PathBuf,
    /// UUID of the budgeted device (GPU-…); empty budgets every device the instance uses.
    #[arg(long, default_value = "")]
    device: String,
    /// Device kind.
    #[arg(long, value_enum, default_value_t = KindArg::Gpu)]
    kind: KindArg,
    /// File permissions, octal.
    #[arg(long, default_value = "600", value_parser = parse_octal)]
    permissions: u32,
    #[command(flatten)]
    control: ControlArgs,
}

/// Arguments of `dilu quota show`.
#[derive(Debug, Args)]
pub struct ShowArgs {
    /// The channel file.
    path: PathBuf,
    /// Keep printing one line of rates per interval until interrupted.
    #[arg(long)]
    watch: bool,
    /// Interval of --watch in milliseconds.
    #[arg(long, default_value_t = 1000)]
    interval_ms: u64,
    /// With --watch: stop after this many lines.
    #[arg(long)]
    count: Option<u64>,
    /// Output format (json prints one object per snapshot).
    #[arg(long, value_enum, default_value_t = Format::Table)]
    format: Format,
}

/// Arguments of `dilu quota set`.
#[derive(Debug, Args)]
pub struct SetArgs {
    /// The channel file.
    path: PathBuf,
    #[command(flatten)]
    control: ControlArgs,
}

fn parse_limit(text: &str) -> Result<u64, String> {
    if text.eq_ignore_ascii_case("unlimited") {
        return Ok(UNLIMITED);
    }
    text.replace('_', "")
        .parse::<u64>()
        .map_err(|_| format!("{text:?}: expected a whole number of cost units or `unlimited`"))
}

fn parse_mem(text: &str) -> Result<u64, String> {
    if text.eq_ignore_ascii_case("unlimited") {
        return Ok(UNLIMITED);
    }
    parse_bytes(text).map_err(|e| e.to_string())
}

fn parse_mode(text: &str) -> Result<u32, String> {
    let mut flags = 0;
    for word in text.split(',').map(str::trim).filter(|w| !w.is_empty()) {
        flags |= match word {
            "all" => mode::ALL,
            "none" => 0,
            "compute" => mode::ENFORCE_COMPUTE,
            "memory" => mode::ENFORCE_MEMORY,
            "meminfo" => mode::VIRTUALIZE_MEMINFO,
            other => {
                return Err(format!(
                    "{other:?}: mode flags are compute, memory, meminfo, all or none"
                ));
            }
        };
    }
    Ok(flags)
}

fn parse_octal(text: &str) -> Result<u32, String> {
    u32::from_str_radix(text.trim_start_matches("0o"), 8)
        .ok()
        .filter(|p| *p <= 0o777)
        .ok_or_else(|| format!("{text:?}: expected octal permissions such as 600"))
}

fn window_ns(ms: f64) -> Result<u64> {
    if !ms.is_finite() || ms <= 0.0 {
        bail!("--window-ms = {ms}: must be a positive number of milliseconds");
    }
    Ok((ms * 1e6).round() as u64)
}

/// Runs a `dilu quota` subcommand.
pub fn run(command: QuotaCommand) -> Result<()> {
    match command {
        QuotaCommand::Create(args) => create(args),
        QuotaCommand::Show(args) => show(args),
        QuotaCommand::Set(args) => set(args),
    }
}

fn create(args: CreateArgs) -> Result<()> {
    let c = &args.control;
    let spec = ChannelSpec {
        device_uuid: args.device.clone(),
        device_kind: match args.kind {
            KindArg::Gpu => DeviceKind::Gpu,
            KindArg::Cpu => DeviceKind::Cpu,
        },
        budget_per_window: c.budget.unwrap_or(UNLIMITED),
        window_ns: c
            .window_ms
            .map(window_ns)
            .transpose()?
            .unwrap_or(DEFAULT_WINDOW_NS),
        mem_cap_bytes: c.mem_cap.unwrap_or(UNLIMITED),
        mode: c.mode.unwrap_or(mode::ALL),
        resident_threads: c.resident_threads.unwrap_or(0),
    };
    let channel = AgentChannel::create(&args.path, &spec, args.permissions)
        .with_context(|| format!("creating quota channel {}", args.path.display()))?;
    print!("{}", render(&args.path, &channel.snapshot()));
    Ok(())
}

fn set(args: SetArgs) -> Result<()> {
    let channel = AgentChannel::open(&args.path)
        .with_context(|| format!("opening quota channel {}", args.path.display()))?;
    let c = &args.control;
    if c.budget.is_none()
        && c.mem_cap.is_none()
        && c.window_ms.is_none()
        && c.mode.is_none()
        && c.resident_threads.is_none()
    {
        bail!(
            "nothing to set: give at least one of --budget, --mem-cap, --window-ms, --mode, --resident-threads"
        );
    }
    // Validate everything before writing anything, so a bad flag leaves the channel as it was.
    let window = c.window_ms.map(window_ns).transpose()?;
    if let Some(window) = window
        && !(dilu_quota::layout::MIN_WINDOW_NS..=dilu_quota::layout::MAX_WINDOW_NS)
            .contains(&window)
    {
        bail!(
            "--window-ms = {}: must be between 0.1 and 60000",
            window as f64 / 1e6
        );
    }
    if let Some(window) = window {
        channel.set_window_ns(window)?;
    }
    if let Some(flags) = c.mode {
        channel.set_mode(flags)?;
    }
    if let Some(threads) = c.resident_threads {
        channel.set_resident_threads(threads);
    }
    if let Some(cap) = c.mem_cap {
        channel.set_mem_cap(cap);
    }
    if let Some(budget) = c.budget {
        channel.set_budget(budget);
    }
    print!("{}", render(&args.path, &channel.snapshot()));
    Ok(())
}

fn show(args: ShowArgs) -> Result<()> {
    let channel = AgentChannel::open(&args.path)
        .with_context(|| format!("opening quota channel {}", args.path.display()))?;
    if !args.watch {
        let snapshot = channel.snapshot();
        match args.format {
            Format::Json => println!("{}", snapshot_json(&snapshot)),
            Format::Table => print!("{}", render(&args.path, &snapshot)),
        }
        return Ok(());
    }
    let interval = Duration::from_millis(args.interval_ms.max(1));
    let mut previous = channel.snapshot();
    let mut taken = Instant::now();
    if args.format == Format::Table {
        println!(
            "{:>8} {:>14} {:>12} {:>10} {:>12} {:>12} {:>7}",
            "t_s", "cost/s", "launches/s", "delayed/s", "held", "budget", "epoch"
        );
    }
    let started = Instant::now();
    let mut lines = 0;
    while args.count.is_none_or(|count| lines < count) {
        std::thread::sleep(interval);
        let now = channel.snapshot();
        let seconds = taken.elapsed().as_secs_f64().max(1e-9);
        taken = Instant::now();
        let rate = |a: u64, b: u64| a.wrapping_sub(b) as f64 / seconds;
        match args.format {
            Format::Json => {
                let mut value = snapshot_json(&now);
                value["t_s"] = json!(started.elapsed().as_secs_f64());
                value["cost_per_s"] = json!(rate(now.cost_launched, previous.cost_launched));
                value["launches_per_s"] = json!(rate(now.launches, previous.launches));
                println!("{value}");
            }
            Format::Table => println!(
                "{:>8.2} {:>14.0} {:>12.0} {:>10.0} {:>12} {:>12} {:>7}",
                started.elapsed().as_secs_f64(),
                rate(now.cost_launched, previous.cost_launched),
                rate(now.launches, previous.launches),
                rate(now.launches_delayed, previous.launches_delayed),
                format_bytes(now.bytes_allocated),
                limit(now.budget_per_window),
                now.epoch,
            ),
        }
        previous = now;
        lines += 1;
    }
    Ok(())
}

fn limit(value: u64) -> String {
    if value == UNLIMITED {
        "unlimited".into()
    } else {
        value.to_string()
    }
}

fn mem_limit(value: u64) -> String {
    if value == UNLIMITED {
        "unlimited".into()
    } else {
        format_bytes(value)
    }
}

fn mode_names(flags: u32) -> String {
    let names: Vec<&str> = [
        (mode::ENFORCE_COMPUTE, "compute"),
        (mode::ENFORCE_MEMORY, "memory"),
        (mode::VIRTUALIZE_MEMINFO, "meminfo"),
    ]
    .into_iter()
    .filter(|(bit, _)| flags & bit != 0)
    .map(|(_, name)| name)
    .collect();
    if names.is_empty() {
        "none".into()
    } else {
        names.join(",")
    }
}

fn render(path: &std::path::Path, s: &Snapshot) -> String {
    let kind = s.device_kind.map_or("unknown", |k| k.name());
    let device = if s.device_uuid.is_empty() {
        "(every device)"
    } else {
        s.device_uuid.as_str()
    };
    let attached = match (s.attached_pid, s.state) {
        (0, _) => "none yet".to_string(),
        (pid, state::ENFORCING) => format!("pid {pid}, enforcing"),
        (pid, other) => format!("pid {pid}, state {other}"),
    };
    format!(
        "channel   {}\n\
         device    {device} ({kind})\n\
         mode      {}\n\
         budget    {} units per {:.3} ms window\n\
         mem cap   {}\n\
         epoch     {} (instance saw {})\n\
         instance  {attached}\n\
         compute   {} units in {} launches; {} delayed, {:.3} ms waiting in all\n\
         memory    {} held, peak {}; {} allocations refused\n",
        path.display(),
        mode_names(s.mode),
        limit(s.budget_per_window),
        s.window_ns as f64 / 1e6,
        mem_limit(s.mem_cap_bytes),
        s.epoch,
        s.last_seen_epoch,
        s.cost_launched,
        s.launches,
        s.launches_delayed,
        s.delay_ns as f64 / 1e6,
        format_bytes(s.bytes_allocated),
        format_bytes(s.bytes_peak),
        s.alloc_failures,
    )
}

fn snapshot_json(s: &Snapshot) -> serde_json::Value {
    json!({
        "device_uuid": s.device_uuid,
        "device_kind": s.device_kind.map(|k| k.name()),
        "mode": mode_names(s.mode),
        "budget_per_window": (s.budget_per_window != UNLIMITED).then_some(s.budget_per_window),
        "window_ns": s.window_ns,
        "epoch": s.epoch,
        "mem_cap_bytes": (s.mem_cap_bytes != UNLIMITED).then_some(s.mem_cap_bytes),
        "resident_threads": s.resident_threads,
        "attached_pid": s.attached_pid,
        "state": s.state,
        "cost_launched": s.cost_launched,
        "launches": s.launches,
        "launches_delayed": s.launches_delayed,
        "delay_ns": s.delay_ns,
        "bytes_allocated": s.bytes_allocated,
        "bytes_peak": s.bytes_peak,
        "alloc_failures": s.alloc_failures,
        "last_seen_epoch": s.last_seen_epoch,
    })
}
