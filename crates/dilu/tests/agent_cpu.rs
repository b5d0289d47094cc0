//! The agent on the CPU device: two `dilu burn` instances with requests 0.3 and 0.7 split one core 3:7;
//! moving them to 0.6 and 0.4 through the API shifts the split to 6:4 within 20 ms (from the counters).
//!
//! Timing-sensitive: nextest runs it alone (see .config/nextest.toml).

mod common;

use std::time::{Duration, Instant};

use common::{AgentProc, channel_path, dilu_bin, wait_for};
use dilu_quota::{AgentChannel, monotonic_ns};
use serde_json::json;

fn burn(agent: &AgentProc, device: &str, share: f64) -> String {
    let (status, body) = agent.post(
        "/instances",
        json!({
            "command": [dilu_bin(), "burn", "--report-ms", "60000"],
            "device": device,
            "quota": {"request": share, "limit": share},
            "priority_class": "training",
        }),
    );
    assert_eq!(status, 201, "{body}");
    body["id"].as_str().unwrap().to_string()
}

/// CPU nanoseconds charged to each channel between two instants `gap` apart.
fn split(a: &AgentChannel, b: &AgentChannel, gap: Duration) -> (f64, f64) {
    let (a0, b0) = (a.snapshot().cost_launched, b.snapshot().cost_launched);
    std::thread::sleep(gap);
    let (a1, b1) = (a.snapshot().cost_launched, b.snapshot().cost_launched);
    ((a1 - a0) as f64, (b1 - b0) as f64)
}

#[test]
fn requests_split_the_cpu_3_to_7_and_a_live_change_to_6_to_4_binds_within_20_ms() {
    let dir = tempfile::tempdir().unwrap();
    let agent = AgentProc::start(dir.path(), &["--cpu-cores", "1"]);
    let device = agent.cpu_device();
    let a = burn(&agent, &device, 0.3);
    let b = burn(&agent, &device, 0.7);
    let (ca, cb) = (
        AgentChannel::open(&channel_path(dir.path(), &a)).unwrap(),
        AgentChannel::open(&channel_path(dir.path(), &b)).unwrap(),
    );
    wait_for(Duration::from_secs(5), || {
        (ca.snapshot().launches > 0 && cb.snapshot().launches > 0).then_some(())
    })
    .expect("both burners run");
    std::thread::sleep(Duration::from_millis(500));

    let (ua, ub) = split(&ca, &cb, Duration::from_secs(10));
    let share_a = ua / (ua + ub);
    let core = (ua + ub) / 10e9;
    eprintln!(
        "requests 0.3/0.7 over 10 s: A {:.3} s, B {:.3} s of CPU; A share {share_a:.4} (target 0.3); {core:.3} cores used",
        ua / 1e9,
        ub / 1e9
    );
    assert!(
        (share_a / 0.3 - 1.0).abs() <= 0.05,
        "A share {share_a}, want 0.3 ± 5 %"
    );

    // Lower B first so Σ requests never exceeds the device, then raise A.
    let (status, body) = agent.patch(
        &format!("/instances/{b}/quota"),
        json!({"request": 0.4, "limit": 0.4}),
    );
    assert_eq!(status, 200, "{body}");
    let (status, body) = agent.patch(
        &format!("/instances/{a}/quota"),
        json!({"request": 0.6, "limit": 0.6}),
    );
    assert_eq!(status, 200, "{body}");
    let changed = monotonic_ns();
    let changed_at = Instant::now();
    // Budgets in the channels follow at once (the API writes them; the ticker keeps them).
    let budgets = (
        ca.snapshot().budget_per_window,
        cb.snapshot().budget_per_window,
    );
    assert_eq!(
        budgets,
        (3_000_000, 2_000_000),
        "60 % and 40 % of a 5 ms core-window"
    );
    std::thread::sleep(Duration::from_millis(20).saturating_sub(changed_at.elapsed()));
    let (ua, ub) = split(&ca, &cb, Duration::from_millis(500));
    let share_a = ua / (ua + ub);
    eprintln!(
        "after the change: from {:.1} ms to {:.1} ms after it, A share {share_a:.4} (target 0.6)",
        20.0,
        (monotonic_ns() - changed) as f64 / 1e6
    );
    assert!(
        (share_a / 0.6 - 1.0).abs() <= 0.05,
        "A share {share_a}, want 0.6 ± 5 % from 20 ms on"
    );

    // A longer look confirms the new split.
    let (ua, ub) = split(&ca, &cb, Duration::from_secs(3));
    let share_a = ua / (ua + ub);
    eprintln!("requests 0.6/0.4 over 3 s: A share {share_a:.4}");
    assert!((share_a / 0.6 - 1.0).abs() <= 0.05);

    for id in [&a, &b] {
        assert_eq!(agent.delete(&format!("/instances/{id}")).0, 204);
    }
}
