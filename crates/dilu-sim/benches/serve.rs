//! Serving-engine benchmark: runs the shipped serving scenarios under every policy and prints wall time and
//! events per second, next to a baseline in the same process (a bare binary-heap push/pop of as many events,
//! the floor any discrete-event engine pays), so the figures read as ratios on a noisy machine.
//!
//! Rerun: `cargo bench -p dilu-sim --bench serve` (add `-- --quick` for the small scenarios only).

use dilu_core::perf::builtin_model_names;
use dilu_sim::serve::scenario::load_scenario;
use dilu_sim::serve::{PolicyName, prepare, run_policy};
use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::hint::black_box;
use std::path::PathBuf;
use std::time::Instant;

fn heap_baseline(events: u64) -> f64 {
    let started = Instant::now();
    let mut heap = BinaryHeap::new();
    let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
    for i in 0..1024u64 {
        heap.push(Reverse((i, i)));
    }
    for i in 0..events {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        if let Some(Reverse((t, _))) = heap.pop() {
            heap.push(Reverse((t + (x & 0xFFFF), i)));
        }
    }
    black_box(heap.len());
    events as f64 / started.elapsed().as_secs_f64()
}

fn main() {
    let quick = std::env::args().any(|a| a == "--quick");
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../scenarios");
    let mut files = vec![
        "colocation-inference-training.yaml",
        "colocation-inference-inference.yaml",
    ];
    if !quick {
        files.push("cluster-20-node.yaml");
    }
    let names = builtin_model_names();
    println!("serving engine benchmark (rerun: cargo bench -p dilu-sim --bench serve)");
    println!(
        "{:<34} {:<12} {:>10} {:>12} {:>10} {:>14}",
        "scenario", "policy", "wall s", "events", "M ev/s", "vs heap floor"
    );
    for file in files {
        let path = dir.join(file);
        let scenario = match load_scenario(&path, &names) {
            Ok(s) => s,
            Err(e) => {
                println!("SKIPPED {file}: {e}");
                continue;
            }
        };
        let setup = match prepare(&scenario) {
            Ok(s) => s,
            Err(e) => {
                println!("SKIPPED {file}: {e}");
                continue;
            }
        };
        let mut total_wall = 0.0;
        let mut total_events = 0u64;
        for policy in PolicyName::ALL {
            let started = Instant::now();
            let run = match run_policy(&setup, policy) {
                Ok(r) => r,
                Err(e) => {
                    println!("{file} {policy}: {e}");
                    continue;
                }
            };
            let wall = started.elapsed().as_secs_f64();
            let events = run.report.events;
            total_wall += wall;
            total_events += events;
            let rate = events as f64 / wall;
            let floor = heap_baseline(events.min(20_000_000));
            println!(
                "{:<34} {:<12} {:>10.3} {:>12} {:>10.2} {:>13.2}x",
                scenario.name,
                policy.as_str(),
                wall,
                events,
                rate / 1e6,
                rate / floor
            );
        }
        println!(
            "{:<34} {:<12} {:>10.3} {:>12} {:>10.2}",
            scenario.name,
            "ALL",
            total_wall,
            total_events,
            total_events as f64 / total_wall / 1e6
        );
    }
}
