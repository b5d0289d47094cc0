//! `dilu sim validate --live-service-time`: the simulation repeated with each inference function's table
//! scaled to the batch times its live workers measured during the run.

use std::collections::BTreeMap;

use anyhow::{Context, Result};
use dilu_core::perf::{ProfilePoint, ProfileTable};
use dilu_sim::serve::scenario::Scenario;
use dilu_sim::serve::{PolicyName, PolicyRun, prepare, run_policy};
use serde_json::{Value, json};

use super::batches::{ByBatch, factors_by_size, pooled_cv};
use super::compare::{self, Row, Side};
use super::simulated::sim_side;

/// Rounds of scale-and-simulate at most: new factors move the simulated batch mix a little, so they are
/// re-measured against the new run until none moves by 1 % or more.
const ROUNDS: usize = 4;

/// The comparison at the live service time.
pub(super) struct Rescaled {
    /// Per function: the factor each batch size of its table was scaled by (empty: left as calibrated, no
    /// batch size run on both sides, or no calibrated table).
    pub factors: Vec<(String, BTreeMap<u32, f64>)>,
    /// Per function: the `service_cv` simulated (the live batches' variation when measured).
    pub service_cv: Vec<f64>,
    pub sim: Side,
    pub rows: Vec<Row>,
}

impl Rescaled {
    /// `name ×factor (batch b)` per function and size, for the table's title.
    pub fn factors_text(&self) -> String {
        self.factors
            .iter()
            .map(|(n, f)| {
                if f.is_empty() {
                    format!("{n} unscaled")
                } else {
                    let sizes: Vec<String> = f
                        .iter()
                        .map(|(b, x)| format!("{x:.3} at batch {b}"))
                        .collect();
                    format!("{n} {}", sizes.join(", "))
                }
            })
            .collect::<Vec<_>>()
            .join("; ")
    }

    pub fn json(&self) -> Value {
        json!({
            "factors": self
                .factors
                .iter()
                .zip(&self.service_cv)
                .map(|((n, f), cv)| json!({"function": n, "by_batch": f, "service_cv": cv}))
                .collect::<Vec<_>>(),
            "sim": self.sim,
            "rows": self.rows,
            "worst_ratio": compare::worst(&self.rows),
        })
    }
}

/// Scales each batch size of each function's table by how much longer its live batches took than `first`'s
/// simulated ones ([`factors_by_size`]), and simulates again, re-measuring the factors against each new run
/// ([`ROUNDS`] at most).
pub(super) fn at_live_service_time(
    scenario: &Scenario,
    policy: PolicyName,
    live: &Side,
    first: &PolicyRun,
) -> Result<Rescaled> {
    let mut scaled = scenario.clone();
    let mut total: Vec<BTreeMap<u32, f64>> = vec![BTreeMap::new(); scenario.functions.len()];
    // The live batches' variation too, not only their mean: a violation is a request in the tail.
    let mut varied = false;
    for (f, l) in scaled.functions.iter_mut().zip(&live.batch_times) {
        if let Some(cv) = pooled_cv(l) {
            eprintln!(
                "validate: '{}' live batch times varied by {cv:.3} (coefficient of variation; simulated: {:.3})",
                f.name, f.service_cv
            );
            f.service_cv = cv.min(dilu_sim::serve::scenario::MAX_SERVICE_CV);
            varied = true;
        }
    }
    let mut run = first.clone();
    let mut setup = None;
    if varied {
        let s = prepare(&scaled).context("preparing the scenario with the live variation")?;
        run = run_policy(&s, policy).context("simulating with the live variation")?;
        setup = Some(s);
    }
    for round in 0..ROUNDS {
        let mut moved = false;
        for (i, f) in scaled.functions.iter_mut().enumerate() {
            let (Some(l), Some(s), Some(table)) =
                (live.batch_times.get(i), run.batch_times.get(i), &f.profile)
            else {
                continue;
            };
            let Some(factors) = factors_by_size(l, s, &table.batches()) else {
                continue;
            };
            eprintln!(
                "validate: round {}: '{}' live batches against the simulated ones: {}",
                round + 1,
                f.name,
                describe(l, s)
            );
            if factors.values().all(|x| (x - 1.0).abs() < 0.01) {
                if total[i].is_empty() {
                    // Calibrated at the live speed already: every size stays at 1.
                    total[i] = factors.keys().map(|&b| (b, 1.0)).collect();
                }
                continue;
            }
            for (&b, &x) in &factors {
                *total[i].entry(b).or_insert(1.0) *= x;
            }
            f.profile = Some(scale_table(table, &factors)?);
            moved = true;
        }
        if !moved {
            break;
        }
        let s = prepare(&scaled).context("preparing the rescaled scenario")?;
        run = run_policy(&s, policy).context("simulating at the live service time")?;
        setup = Some(s);
    }
    let setup = match setup {
        Some(s) => s,
        None => prepare(&scaled).context("preparing the scenario")?,
    };
    let sim = sim_side(&scaled, &setup, &run);
    let rows = compare::compare(live, &sim);
    Ok(Rescaled {
        factors: scaled
            .functions
            .iter()
            .map(|f| f.name.clone())
            .zip(total)
            .collect(),
        service_cv: scaled.functions.iter().map(|f| f.service_cv).collect(),
        sim,
        rows,
    })
}

/// `batch 1: 62.1 vs 71.3 ms, 240 live` per size both ran.
fn describe(live: &ByBatch, sim: &ByBatch) -> String {
    live.iter()
        .filter_map(|(size, l)| {
            let s = sim.get(size)?;
            Some(format!(
                "batch {size}: {:.1} vs {:.1} ms, {} live",
                l.mean_s() * 1e3,
                s.mean_s() * 1e3,
                l.batches
            ))
        })
        .collect::<Vec<_>>()
        .join("; ")
}

/// The table with each batch size's latencies × its factor (throughput ÷ it); a size without a factor keeps
/// its points.
fn scale_table(table: &ProfileTable, factors: &BTreeMap<u32, f64>) -> Result<ProfileTable> {
    let points: Vec<ProfilePoint> = table
        .points()
        .iter()
        .map(|p| {
            let x = factors.get(&p.batch).copied().unwrap_or(1.0);
            ProfilePoint {
                latency_s: p.latency_s * x,
                throughput: p.throughput / x,
                ..*p
            }
        })
        .collect();
    ProfileTable::new(table.model(), table.unit(), points)
        .with_context(|| format!("scaling the table of '{}' by {factors:?}", table.model()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use dilu_core::perf::LatencyUnit;

    #[test]
    fn a_scaled_table_keeps_its_grid_and_scales_each_size() {
        let point = |batch, latency_s| ProfilePoint {
            batch,
            sm_pct: 50,
            latency_s,
            throughput: f64::from(batch) / latency_s,
        };
        let t = ProfileTable::new(
            "m",
            LatencyUnit::PerBatch,
            vec![point(1, 0.05), point(2, 0.08), point(4, 0.2)],
        )
        .expect("table");
        let s = scale_table(&t, &[(1, 1.25), (4, 0.5)].into()).expect("scaled");
        assert_eq!(s.points().len(), 3);
        assert_eq!(s.model(), "m");
        let p1 = s.get(1, 50).expect("point");
        assert!((p1.latency_s - 0.0625).abs() < 1e-12);
        assert!((p1.throughput - 16.0).abs() < 1e-9);
        assert_eq!(s.get(2, 50).expect("point").latency_s, 0.08);
        assert!((s.get(4, 50).expect("point").latency_s - 0.1).abs() < 1e-12);
    }
}
