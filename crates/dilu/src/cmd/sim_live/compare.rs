//! The comparison: what each side measured, the ratio sim/live per metric, the table and the JSON report.

use serde::Serialize;
use serde_json::{Value, json};

use dilu_sim::serve::PolicyName;
use dilu_sim::serve::scenario::Scenario;

/// What one side (live or simulated) measured.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Side {
    /// Measured requests (arrived after warm-up).
    pub requests: u64,
    /// Median latency of completed measured requests, ms.
    pub p50_ms: f64,
    /// 99th percentile, ms.
    pub p99_ms: f64,
    /// Fraction of measured requests late, dropped or failed.
    pub slo_violation_rate: f64,
    /// ∫ inference instances dt, seconds (from placement until gone).
    pub instance_seconds: f64,
    /// Seconds from the start at which the inference instance count rose.
    pub scale_out_s: Vec<f64>,
    /// Iterations per second of each training job over the run.
    pub training_iterations_per_s: Vec<f64>,
    /// Requests per second one instance of each function serves at its request, as the horizontal scaler
    /// counts it: the platform's from its own measurement at deploy (the `profiled` event); the simulator's the
    /// same (or the calibrated table's with `--table-capacity`, or the scenario's `capacity_rps`).
    pub capacity_rps: Vec<f64>,
    /// Per function, its batches by size over the run: the workers' `dilu_worker_batch_seconds` live, the
    /// engine's count in the simulator.
    pub batch_times: Vec<super::batches::ByBatch>,
    /// Live only: every request as `[arrival s, latency ms or null when it failed or timed out]`.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub raw: Vec<(f64, Option<f64>)>,
}

/// One row of the comparison.
#[derive(Debug, Clone, Serialize)]
pub(super) struct Row {
    metric: String,
    live: f64,
    sim: f64,
    ratio: Option<f64>,
}

fn ratio(sim: f64, live: f64) -> Option<f64> {
    if live == 0.0 && sim == 0.0 {
        Some(1.0)
    } else if live == 0.0 || !live.is_finite() || !sim.is_finite() {
        None
    } else {
        Some(sim / live)
    }
}

/// The rows of the comparison: the four acceptance metrics, then each scale-out, capacity and training job.
pub(super) fn compare(live: &Side, sim: &Side) -> Vec<Row> {
    let mut rows = vec![
        Row {
            metric: "p50_ms".into(),
            live: live.p50_ms,
            sim: sim.p50_ms,
            ratio: ratio(sim.p50_ms, live.p50_ms),
        },
        Row {
            metric: "p99_ms".into(),
            live: live.p99_ms,
            sim: sim.p99_ms,
            ratio: ratio(sim.p99_ms, live.p99_ms),
        },
        Row {
            metric: "slo_violation_pct".into(),
            live: live.slo_violation_rate * 100.0,
            sim: sim.slo_violation_rate * 100.0,
            ratio: ratio(sim.slo_violation_rate, live.slo_violation_rate),
        },
        Row {
            metric: "instance_seconds".into(),
            live: live.instance_seconds,
            sim: sim.instance_seconds,
            ratio: ratio(sim.instance_seconds, live.instance_seconds),
        },
    ];
    for (i, (l, s)) in live.scale_out_s.iter().zip(&sim.scale_out_s).enumerate() {
        rows.push(Row {
            metric: format!("scale_out_{}_s", i + 1),
            live: *l,
            sim: *s,
            ratio: ratio(*s, *l),
        });
    }
    for (i, (l, s)) in live.capacity_rps.iter().zip(&sim.capacity_rps).enumerate() {
        rows.push(Row {
            metric: format!("capacity_{i}_rps"),
            live: *l,
            sim: *s,
            ratio: ratio(*s, *l),
        });
    }
    for (i, (l, s)) in live
        .training_iterations_per_s
        .iter()
        .zip(&sim.training_iterations_per_s)
        .enumerate()
    {
        rows.push(Row {
            metric: format!("training_{i}_iter_per_s"),
            live: *l,
            sim: *s,
            ratio: ratio(*s, *l),
        });
    }
    rows
}

/// The ratio furthest from 1 (by |ln ratio|) among the four acceptance metrics; `None` if one is undefined.
pub(super) fn worst(rows: &[Row]) -> Option<f64> {
    let mut worst: Option<f64> = Some(1.0);
    for r in rows.iter().take(4) {
        match (r.ratio, worst) {
            (Some(x), Some(w)) if x.ln().abs() > w.ln().abs() => worst = Some(x),
            (None, _) => return None,
            _ => {}
        }
    }
    worst
}

/// Prints the comparison as a table on stdout.
pub(super) fn print_table(name: &str, rows: &[Row], live: &Side, sim: &Side) {
    println!("scenario {name}: live vs simulator");
    println!(
        "{:<24} {:>12} {:>12} {:>10}",
        "metric", "live", "sim", "sim/live"
    );
    for r in rows {
        let ratio = r.ratio.map_or("n/a".to_owned(), |x| format!("{x:.3}"));
        println!(
            "{:<24} {:>12.2} {:>12.2} {:>10}",
            r.metric, r.live, r.sim, ratio
        );
    }
    println!(
        "{:<24} {:>12} {:>12}",
        "measured requests", live.requests, sim.requests
    );
    println!(
        "{:<24} {:>12} {:>12}",
        "scale-outs",
        live.scale_out_s.len(),
        sim.scale_out_s.len()
    );
    match worst(rows) {
        Some(w) => println!("worst ratio (p50, p99, violations, instance-seconds): {w:.3}"),
        None => println!(
            "worst ratio (p50, p99, violations, instance-seconds): undefined (a zero on one side)"
        ),
    }
}

/// The `--json` report of one validation; `load` is the machine's load average before and after the live run.
pub(super) fn report_json(
    scenario: &Scenario,
    policy: PolicyName,
    live: &Side,
    sim: &Side,
    rows: &[Row],
    load: (Option<f64>, Option<f64>),
) -> Value {
    let (load_before, load_after) = load;
    json!({
        "scenario": scenario.name,
        "policy": policy.as_str(),
        "duration_s": scenario.duration_s,
        "live": live,
        "sim": sim,
        "rows": rows,
        "worst_ratio": worst(rows),
        "load_average": { "before": load_before, "after": load_after },
    })
}
