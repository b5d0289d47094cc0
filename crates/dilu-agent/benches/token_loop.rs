//! Cost of the token manager's tick and lateness of the real ticker, for 1, 10 and 100 instances on a device.
//!
//! Run: `cargo bench -p dilu-agent --bench token_loop`
//!
//! Each instance has a real quota channel (mmap'ed file); between ticks every instance "uses" some cost, half
//! of them bursting on and off, so the controller sees busy transitions. The tick cost is the mean of 2,000
//! ticks; "core %" is that cost over a 5 ms window. Lateness is measured on absolute 5 ms deadlines with the
//! manager ticking, over 2 s per size, at the priority the agent's ticker asks for (SCHED_FIFO where permitted).

use std::sync::atomic::Ordering::Relaxed;
use std::time::Instant;

use dilu_agent::config::AgentConfig;
use dilu_agent::device::discover;
use dilu_agent::ticker::{raise_priority, sleep_until};
use dilu_agent::tokens::TokenManager;
use dilu_api::Quota;
use dilu_core::InstanceKind;
use dilu_quota::{AgentChannel, ChannelSpec, InstanceChannel, monotonic_ns};

const WINDOW_NS: u64 = 5_000_000;

fn main() {
    let dir = tempfile::tempdir().expect("temp dir");
    let mut config = AgentConfig::new(dir.path().to_path_buf());
    config.discover_gpus = false;
    config.cpu_cores = Some(2.0);
    let (devices, _) = discover(&config);
    let device = devices[0].uuid.clone();
    println!("token manager tick cost and ticker lateness (window 5 ms)");
    println!("rerun: cargo bench -p dilu-agent --bench token_loop");
    println!();
    println!(
        "| {:>9} | {:>12} | {:>10} | {:>12} | {:>14} | {:>14} |",
        "instances", "ns per tick", "vs 1", "core % @5ms", "lateness p50", "lateness p99"
    );
    println!(
        "|{}|{}|{}|{}|{}|{}|",
        "-".repeat(11),
        "-".repeat(14),
        "-".repeat(12),
        "-".repeat(14),
        "-".repeat(16),
        "-".repeat(16)
    );
    let mut baseline = None;
    for n in [1usize, 10, 100] {
        let mut manager = TokenManager::new(&devices, WINDOW_NS, &config.policy).expect("manager");
        let mut instances = Vec::new();
        for i in 0..n {
            let path = dir.path().join(format!("{n}-{i}.quota"));
            let channel =
                AgentChannel::create(&path, &ChannelSpec::default(), 0o600).expect("channel");
            let class = if i % 2 == 0 {
                InstanceKind::Inference
            } else {
                InstanceKind::Training
            };
            let share = 1.0 / n as f64;
            let quota = Quota {
                request: share * 0.5,
                limit: share,
                memory: None,
            };
            manager
                .add(&device, &format!("i{i}"), class, quota, channel)
                .expect("add");
            instances.push(InstanceChannel::open(&path).expect("open"));
        }
        let mut round = 0u64;
        let use_some = |round: u64| {
            for (i, instance) in instances.iter().enumerate() {
                // Inference instances burst for 8 windows out of 20; training always runs.
                let busy = i % 2 == 1 || (round % 20) < 8;
                if busy {
                    instance
                        .counters()
                        .cost_launched
                        .fetch_add(1_000 + i as u64, Relaxed);
                }
            }
        };
        let mut now = monotonic_ns();
        for _ in 0..200 {
            use_some(round);
            round += 1;
            now += WINDOW_NS;
            manager.tick(now);
        }
        let ticks = 2_000;
        let mut spent = 0u128;
        for _ in 0..ticks {
            use_some(round);
            round += 1;
            now += WINDOW_NS;
            let start = Instant::now();
            manager.tick(now);
            spent += start.elapsed().as_nanos();
        }
        let per_tick = spent as f64 / ticks as f64;
        let base = *baseline.get_or_insert(per_tick);

        // The real clock: absolute deadlines, ticking this manager, at the ticker thread's priority.
        raise_priority();
        let mut lateness = Vec::new();
        let mut deadline = (monotonic_ns() / WINDOW_NS + 1) * WINDOW_NS;
        for _ in 0..400 {
            sleep_until(deadline);
            let woke = monotonic_ns();
            lateness.push(woke.saturating_sub(deadline));
            use_some(round);
            round += 1;
            manager.tick(woke);
            deadline += WINDOW_NS;
        }
        lateness.sort_unstable();
        let p = |q: f64| lateness[((lateness.len() - 1) as f64 * q).round() as usize] as f64 / 1e3;
        println!(
            "| {n:>9} | {per_tick:>12.0} | {:>9.1}x | {:>11.3} % | {:>11.1} µs | {:>11.1} µs |",
            per_tick / base,
            per_tick / WINDOW_NS as f64 * 100.0,
            p(0.5),
            p(0.99)
        );
    }
}
