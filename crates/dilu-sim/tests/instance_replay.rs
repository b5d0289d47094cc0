//! Dilu's large-scale replay: Dilu needs fewer GPUs than Exclusive and INFless-l and keeps the least memory
//! fragmentation, and no event is dropped.

mod common;

use dilu_core::PlacerName;
use dilu_sim::generate::{GenerateConfig, generate_instance_trace};
use dilu_sim::instance_replay::{ReplayCluster, ReplayOutcome, replay_instances};
use dilu_sim::instance_trace::{TraceAction, TraceEvent, read_instance_trace};

const FOUR: [PlacerName; 4] = [
    PlacerName::Dilu,
    PlacerName::Exclusive,
    PlacerName::InflessL,
    PlacerName::InflessR,
];

fn replay_all(events: &[TraceEvent]) -> Vec<ReplayOutcome> {
    FOUR.iter()
        .map(|&p| replay_instances(events, ReplayCluster::default(), p).unwrap())
        .collect()
}

fn check_dilu_wins(events: &[TraceEvent], what: &str) {
    let starts = events
        .iter()
        .filter(|e| e.action == TraceAction::Start)
        .count();
    let deletes = events.len() - starts;
    let out = replay_all(events);
    for o in &out {
        eprintln!(
            "{what}: {:<10} peak {:>5} mem_frag(mean) {:.3} mem_frag(peak) {:.3} sm_frag(mean) {:.3}",
            o.policy.as_str(),
            o.peak_active_gpus,
            o.mean_mem_frag,
            o.mem_frag_at_peak,
            o.mean_sm_frag
        );
        assert_eq!(
            (o.starts, o.deletes),
            (starts, deletes),
            "{}: every event is applied",
            o.policy
        );
        assert_eq!(
            o.unschedulable, 0,
            "{}: 4000 GPUs are enough for every instance",
            o.policy
        );
        let last = o.series.last().unwrap();
        assert!(last.active_gpus <= o.peak_active_gpus);
    }
    let (dilu, exclusive, infless_l) = (&out[0], &out[1], &out[2]);
    assert!(
        dilu.peak_active_gpus < exclusive.peak_active_gpus,
        "{what}: dilu vs exclusive"
    );
    assert!(
        dilu.peak_active_gpus < infless_l.peak_active_gpus,
        "{what}: dilu vs infless-l"
    );
    for other in &out[1..] {
        assert!(
            dilu.mean_mem_frag < other.mean_mem_frag,
            "{what}: dilu mean mem frag vs {}",
            other.policy
        );
        assert!(
            dilu.mem_frag_at_peak < other.mem_frag_at_peak,
            "{what}: dilu peak mem frag vs {}",
            other.policy
        );
    }
}

/// On Dilu's published 3200-instance trace.
#[test]
fn dilu_beats_baselines_on_published_trace() {
    let Some(path) = common::shared_data("dilu/sim-instances/instances-3200.txt") else {
        return;
    };
    check_dilu_wins(&read_instance_trace(&path).unwrap(), "instances-3200");
}

/// On traces generated with the published distribution, for several seeds.
#[test]
fn dilu_beats_baselines_on_generated_traces() {
    for seed in [1, 2, 3] {
        let events = generate_instance_trace(&GenerateConfig {
            instances: 3200,
            seed,
            ..Default::default()
        });
        check_dilu_wins(&events, &format!("generated seed {seed}"));
    }
}

/// Same trace and policy give identical outcomes, series included.
#[test]
fn replay_is_deterministic() {
    let events = generate_instance_trace(&GenerateConfig {
        instances: 800,
        seed: 9,
        ..Default::default()
    });
    for p in FOUR {
        let a = replay_instances(&events, ReplayCluster::default(), p).unwrap();
        let b = replay_instances(&events, ReplayCluster::default(), p).unwrap();
        assert_eq!(
            serde_json::to_string(&a).unwrap(),
            serde_json::to_string(&b).unwrap()
        );
    }
}

/// A cluster too small for the trace: unplaced starts are counted, their deletes still applied.
#[test]
fn unschedulable_starts_are_counted_and_their_deletes_applied() {
    let events = generate_instance_trace(&GenerateConfig {
        instances: 400,
        seed: 5,
        ..Default::default()
    });
    let small = ReplayCluster {
        nodes: 4,
        gpus_per_node: 4,
        gpu_mem_gib: 40,
    };
    let starts = events
        .iter()
        .filter(|e| e.action == TraceAction::Start)
        .count();
    for p in FOUR {
        let o = replay_instances(&events, small, p).unwrap();
        assert!(
            o.unschedulable > 0,
            "{p}: 16 GPUs cannot hold 400 instances"
        );
        assert_eq!(o.starts, starts);
        assert_eq!(o.deletes, events.len() - starts);
        assert!(o.peak_active_gpus <= 16);
    }
}
