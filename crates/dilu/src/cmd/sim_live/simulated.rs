//! The simulated side of `dilu sim validate`: the simulator's report and timeline as a [`Side`].

use dilu_core::perf::PerfModel;
use dilu_sim::serve::PolicyRun;
use dilu_sim::serve::scenario::Scenario;

use super::compare::Side;

/// What the simulator measured in `run`, summarised as the live side is.
pub(super) fn sim_side(
    scenario: &Scenario,
    setup: &dilu_sim::serve::Setup,
    run: &PolicyRun,
) -> Side {
    let r = &run.report;
    let dt = scenario.sample_interval_s;
    let mut instance_seconds = 0.0;
    let mut scale_out_s = Vec::new();
    let mut last = setup
        .prepared
        .functions
        .iter()
        .map(|f| f.initial_instances)
        .sum::<u32>();
    for p in &run.timeline {
        instance_seconds += f64::from(p.instances) * dt;
        for _ in last..p.instances {
            // The sample at t covers (t − dt, t]: the instance appeared during it.
            scale_out_s.push(p.t_s - dt);
        }
        last = p.instances;
    }
    let training_iterations_per_s = setup
        .prepared
        .training
        .iter()
        .zip(&r.training_jobs)
        .zip(&scenario.training)
        .map(|((_, rel), spec)| {
            // Relative progress × iterations per second alone on the whole device: the (monotonised) model's
            // throughput at 100%, the point the simulator's training curve calls 1.
            let full = spec
                .profile
                .as_ref()
                .and_then(|t| PerfModel::from_table(t).ok())
                .map_or(f64::NAN, |m| {
                    let b = m.max_grid_batch();
                    m.throughput(b, 1.0) / f64::from(b)
                });
            rel * full
        })
        .collect();
    Side {
        requests: r.requests,
        p50_ms: r.p50_ms,
        p99_ms: r.p99_ms,
        slo_violation_rate: r.slo_violation_rate,
        instance_seconds,
        scale_out_s,
        training_iterations_per_s,
        capacity_rps: setup
            .profiles
            .iter()
            .take(setup.prepared.functions.len())
            .map(|p| p.capacity_rps)
            .collect(),
        batch_times: run.batch_times.clone(),
        raw: Vec::new(),
    }
}
