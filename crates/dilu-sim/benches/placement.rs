//! Placement speed: one openb experiment run (FGD's setup, seed 42, tune 1.3) per policy, and one replay of a
//! generated 3200-instance Dilu trace per policy. Prints wall time, placements per second, and each time as a
//! ratio of the `random` run measured in the same process (machines here are noisy; ratios travel better).
//!
//! Rerun: `cargo bench -p dilu-sim --bench placement`

use dilu_core::PlacerName;
use dilu_sim::generate::{GenerateConfig, generate_instance_trace};
use dilu_sim::instance_replay::{ReplayCluster, replay_instances};
use dilu_sim::openb::{read_openb_nodes, read_openb_pods};
use dilu_sim::openb_experiment::{OpenbRunConfig, run_openb};
use std::path::PathBuf;
use std::time::Instant;

const REPEATS: usize = 3;

fn best_of<T>(mut f: impl FnMut() -> T) -> (f64, T) {
    let mut best = f64::INFINITY;
    let mut last = None;
    for _ in 0..REPEATS {
        let t = Instant::now();
        let out = f();
        best = best.min(t.elapsed().as_secs_f64());
        last = Some(out);
    }
    (best, last.expect("REPEATS > 0"))
}

fn main() {
    println!(
        "command: cargo bench -p dilu-sim --bench placement   (best of {REPEATS} runs per row)"
    );
    let data = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../../shared/data/alibaba-gpu-v2023/csv");
    let nodes_path = data.join("openb_node_list_gpu_node.csv");
    let pods_path = data.join("openb_pod_list_default.csv");
    if nodes_path.exists() && pods_path.exists() {
        let nodes = read_openb_nodes(&nodes_path).expect("node list");
        let pods = read_openb_pods(&pods_path).expect("pod list");
        println!(
            "\nopenb default trace, {} nodes, {} pods, seed 42, tune 1.3",
            nodes.len(),
            pods.len()
        );
        println!(
            "{:<11} {:>9} {:>10} {:>14} {:>11}",
            "policy", "wall_s", "arrivals", "placements/s", "vs_random"
        );
        let mut baseline = None;
        let order = [PlacerName::Random].into_iter().chain(
            PlacerName::ALL
                .into_iter()
                .filter(|p| *p != PlacerName::Random),
        );
        for policy in order {
            let config = OpenbRunConfig {
                policy,
                seed: 42,
                tune: 1.3,
            };
            let (wall, run) =
                best_of(|| run_openb(&nodes, &pods, config, &mut |_, _| {}).expect("run"));
            let base = *baseline.get_or_insert(wall);
            println!(
                "{:<11} {:>9.3} {:>10} {:>14.0} {:>10.2}x",
                policy.as_str(),
                wall,
                run.arrived_pods,
                run.arrived_pods as f64 / wall,
                wall / base
            );
        }
    } else {
        println!(
            "SKIPPED openb rows: {} not found (shared/data must sit beside the project)",
            data.display()
        );
    }

    let events = generate_instance_trace(&GenerateConfig {
        instances: 3200,
        seed: 42,
        ..Default::default()
    });
    println!(
        "\ngenerated Dilu trace, 3200 instances ({} events), 1000 nodes x 4 GPUs",
        events.len()
    );
    println!(
        "{:<11} {:>9} {:>10} {:>14} {:>11}",
        "policy", "wall_s", "events", "events/s", "vs_dilu"
    );
    let mut baseline = None;
    for policy in [
        PlacerName::Dilu,
        PlacerName::Exclusive,
        PlacerName::InflessL,
        PlacerName::InflessR,
    ] {
        let (wall, _) = best_of(|| {
            replay_instances(&events, ReplayCluster::default(), policy).expect("replay")
        });
        let base = *baseline.get_or_insert(wall);
        println!(
            "{:<11} {:>9.3} {:>10} {:>14.0} {:>10.2}x",
            policy.as_str(),
            wall,
            events.len(),
            events.len() as f64 / wall,
            wall / base
        );
    }
}
