//! Vertical scaling through the whole stack on a simulated GPU: the agent's token loop (RCKM), quota
//! channels, `libdilu_cuda.so` preloaded into two instances, and the software CUDA driver.
//!
//! An inference instance starts a burst; the co-located training instance's budget must drop within two
//! windows, and come back to unlimited once inference has been idle for RCKM's release period (600 ms).

mod common;

use std::time::{Duration, Instant};

use common::{AgentProc, channel_path, wait_for};
use dilu_cuda_testkit::{ENV_NS_PER_WAVE, ENV_STATE, FakeCuda, artifacts, interposer_library};
use dilu_quota::{AgentChannel, UNLIMITED, monotonic_ns};
use serde_json::json;

const UUID: &str = "GPU-0000d11a-0000-0000-0000-000000000000";
const WINDOW_NS: u64 = 5_000_000;
/// 100 µs per wave on the simulated device: 50 waves per window.
const NS_PER_WAVE: u64 = 100_000;
const CAPACITY: u64 = 50 * 1_000_000;

#[test]
fn an_inference_burst_squeezes_training_within_two_windows_and_training_recovers_after_release() {
    let interposer = interposer_library().unwrap_or_else(|m| panic!("{m}"));
    let cuda = FakeCuda::new().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let agent = AgentProc::start(
        dir.path(),
        &[
            "--cpu-cores",
            "0",
            "--gpu",
            &format!("{UUID},capacity={CAPACITY}"),
            "--interposer",
            interposer.to_str().unwrap(),
        ],
    );
    let app = artifacts();
    let env = json!({
        "LD_LIBRARY_PATH": app.driver_dir.to_str().unwrap(),
        ENV_STATE: cuda.state_path().to_str().unwrap(),
        ENV_NS_PER_WAVE: NS_PER_WAVE.to_string(),
    });
    let app_dyn = app.app_dyn.to_str().unwrap();
    let (status, training) = agent.post(
        "/instances",
        json!({"command": [app_dyn, "--resolve", "procaddr", "burn,9,264,1024,8"], "env": env,
               "device": UUID, "quota": {"request": 0.3, "limit": 1.0}, "priority_class": "training"}),
    );
    assert_eq!(status, 201, "{training}");
    let (status, inference) = agent.post(
        "/instances",
        json!({"command": [app_dyn, "--resolve", "procaddr", "sleep,2500", "burn,0.6,264,1024,4", "sleep,4000"],
               "env": env, "device": UUID, "quota": {"request": 0.5, "limit": 1.0}, "priority_class": "inference"}),
    );
    assert_eq!(status, 201, "{inference}");
    let train =
        AgentChannel::open(&channel_path(dir.path(), training["id"].as_str().unwrap())).unwrap();
    let infer =
        AgentChannel::open(&channel_path(dir.path(), inference["id"].as_str().unwrap())).unwrap();
    wait_for(Duration::from_secs(5), || {
        (train.snapshot().launches > 0).then_some(())
    })
    .expect("training runs");

    // Sample both channels every 0.5 ms for 6 s.
    let mut samples = Vec::new();
    let started = Instant::now();
    while started.elapsed() < Duration::from_secs(6) {
        let (t, i) = (train.snapshot(), infer.snapshot());
        samples.push((
            monotonic_ns(),
            t.budget_per_window,
            t.cost_launched,
            i.cost_launched,
        ));
        std::thread::sleep(Duration::from_micros(500));
    }
    let first_inference = samples[0].3;
    let burst_start = samples
        .iter()
        .find(|s| s.3 > first_inference)
        .expect("inference burst")
        .0;
    let last_inference = samples.last().unwrap().3;
    let burst_end = samples.iter().find(|s| s.3 == last_inference).unwrap().0;
    let squeezed = samples
        .iter()
        .find(|s| s.0 >= burst_start && s.1 != UNLIMITED)
        .expect("training squeezed");
    let drop_ns = squeezed.0 - burst_start;
    let recovered = samples
        .iter()
        .find(|s| s.0 > burst_end && s.1 == UNLIMITED)
        .expect("training recovered");
    let recover_ns = recovered.0 - burst_end;
    let t0 = samples[0].0;
    eprintln!(
        "burst {:.1}..{:.1} ms, squeezed at {:.1} ms, recovered at {:.1} ms (from the first sample)",
        (burst_start - t0) as f64 / 1e6,
        (burst_end - t0) as f64 / 1e6,
        (squeezed.0 - t0) as f64 / 1e6,
        (recovered.0 - t0) as f64 / 1e6
    );
    let rate = |from: u64, to: u64| {
        let pick = |t: u64| {
            samples
                .iter()
                .find(|s| s.0 >= t)
                .unwrap_or(samples.last().unwrap())
                .2
        };
        (pick(to) - pick(from)) as f64 / ((to - from) as f64 / WINDOW_NS as f64) / CAPACITY as f64
    };
    let before = rate(burst_start - 1_000_000_000, burst_start - 100_000_000);
    let during = rate(
        burst_start + 50_000_000,
        burst_end.saturating_sub(50_000_000),
    );
    let after = rate(recovered.0 + 50_000_000, recovered.0 + 800_000_000);
    eprintln!(
        "training budget dropped {:.2} ms ({:.2} windows) after the burst started, to {} units ({:.3} of the device); \
         recovered {:.0} ms after the burst ended; training used {before:.3} / {during:.3} / {after:.3} of the \
         device before / during / after",
        drop_ns as f64 / 1e6,
        drop_ns as f64 / WINDOW_NS as f64,
        squeezed.1,
        squeezed.1 as f64 / CAPACITY as f64,
        recover_ns as f64 / 1e6,
    );
    assert!(
        drop_ns <= 2 * WINDOW_NS,
        "budget dropped {drop_ns} ns after the burst began"
    );
    assert!(squeezed.1 < CAPACITY / 2, "squeezed to {}", squeezed.1);
    assert!(
        (550_000_000..=700_000_000).contains(&recover_ns),
        "recovered {recover_ns} ns after the burst (RCKM releases after 600 ms idle)"
    );
    // Enforcement: during the burst training never uses more than its squeezed budget. (How much it uses before
    // and after depends on how much CPU the simulated workload gets on this machine, so those rates are reported,
    // not asserted.)
    let squeezed_share = squeezed.1 as f64 / CAPACITY as f64;
    assert!(
        during <= squeezed_share * 1.1,
        "training used {during} of the device with a budget of {squeezed_share}"
    );
}
