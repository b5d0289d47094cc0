//! Multi-factor profiling (`docs/algorithms.md` §3): choose an inference function's batch size and SM share with
//! few measurements (Hybrid Growth Search), a training function's SM share by bisection, and turn the results
//! into quotas.
//!
//! Profiling is written against the [`Measure`] trait, so the same search runs on a recorded table
//! ([`TableMeasure`]), on a performance model ([`ModelMeasure`]), and later on a real GPU.

pub mod bisect;
pub mod hgs;
pub mod knee;
pub mod quota;

pub use bisect::{
    DEFAULT_TRAINING_TARGET, TrainingProfile, bisect_training, bisect_training_paired,
};
pub use hgs::{HgsConfig, HgsResult, TeDrop, exhaustive_best, hybrid_growth_search};
pub use quota::{InferenceQuota, TrainingQuota};

use crate::perf::PerfError;
use crate::perf::catalog::{builtin_model, builtin_model_names};
use crate::perf::model::PerfModel;
use crate::perf::table::{LatencyUnit, ProfileTable};
use crate::perf::training::TrainingCurve;
use serde::Serialize;

/// One measurement of a function at a batch size and SM share.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Measurement {
    /// Latency comparable with the SLO: per batch, or per generated token for LLMs.
    pub latency_s: f64,
    /// Samples (requests, for LLMs) per second.
    pub throughput: f64,
}

/// Something that can run a function at a batch size and SM share and report how it did.
pub trait Measure {
    /// Measures `batch` at `sm_pct` percent of the SMs.
    fn measure(&mut self, batch: u32, sm_pct: u32) -> Result<Measurement, ProfileError>;
}

/// Why profiling failed. Every variant names what was wrong.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ProfileError {
    /// A parameter breaks a rule.
    #[error(transparent)]
    Config(#[from] crate::error::FieldError),
    /// The table has no measurement at a point the search needs.
    #[error(
        "model '{model}': no measurement at batch={batch} sm_pct={sm_pct}; the table must hold every point the search visits"
    )]
    NoSuchPoint {
        /// The model.
        model: String,
        /// Batch size.
        batch: u32,
        /// SM share, percent.
        sm_pct: u32,
    },
    /// A measurement returned an impossible value.
    #[error(
        "measurement at batch={batch} sm_pct={sm_pct}: field '{field}' = {value}: must be a number >= 0 (and > 0 for full-GPU throughput)"
    )]
    BadMeasurement {
        /// Batch size (0 when not applicable).
        batch: u32,
        /// SM share, percent.
        sm_pct: u32,
        /// Which value.
        field: &'static str,
        /// The value.
        value: f64,
    },
    /// A quota was asked of a search that found nothing meeting the SLO.
    #[error("model '{model}': no share meets the SLO, even 100% at batch 1 takes {latency_s} s")]
    Infeasible {
        /// The model.
        model: String,
        /// Latency at the largest share tried, batch 1.
        latency_s: f64,
    },
    /// No built-in model has this name.
    #[error("unknown built-in model '{name}'; known: {known}")]
    UnknownModel {
        /// The name asked for.
        name: String,
        /// The known names, comma-separated.
        known: String,
    },
    /// The table cannot become a performance model.
    #[error(transparent)]
    Perf(#[from] PerfError),
}

/// Measures by looking points up in a recorded table (no interpolation), recording each distinct point.
#[derive(Debug, Clone)]
pub struct TableMeasure<'a> {
    table: &'a ProfileTable,
    measured: Vec<(u32, u32)>,
}

impl<'a> TableMeasure<'a> {
    /// A measure over `table` (as parsed: not monotonised; Dilu's llama2 bs=32 rows corrected by the parser).
    pub fn new(table: &'a ProfileTable) -> Self {
        TableMeasure {
            table,
            measured: Vec::new(),
        }
    }

    /// The distinct `(batch, sm_pct)` points measured so far, in order of first measurement.
    pub fn measured(&self) -> &[(u32, u32)] {
        &self.measured
    }
}

impl Measure for TableMeasure<'_> {
    fn measure(&mut self, batch: u32, sm_pct: u32) -> Result<Measurement, ProfileError> {
        let p = self
            .table
            .get(batch, sm_pct)
            .ok_or_else(|| ProfileError::NoSuchPoint {
                model: self.table.model().to_owned(),
                batch,
                sm_pct,
            })?;
        if !self.measured.contains(&(batch, sm_pct)) {
            self.measured.push((batch, sm_pct));
        }
        Ok(Measurement {
            latency_s: p.latency_s,
            throughput: p.throughput,
        })
    }
}

/// Measures by evaluating a performance model (any batch and share), recording each distinct point.
#[derive(Debug, Clone)]
pub struct ModelMeasure<'a> {
    model: &'a PerfModel,
    measured: Vec<(u32, u32)>,
}

impl<'a> ModelMeasure<'a> {
    /// A measure over `model`.
    pub fn new(model: &'a PerfModel) -> Self {
        ModelMeasure {
            model,
            measured: Vec::new(),
        }
    }

    /// The distinct `(batch, sm_pct)` points measured so far, in order of first measurement.
    pub fn measured(&self) -> &[(u32, u32)] {
        &self.measured
    }
}

impl Measure for ModelMeasure<'_> {
    fn measure(&mut self, batch: u32, sm_pct: u32) -> Result<Measurement, ProfileError> {
        if !self.measured.contains(&(batch, sm_pct)) {
            self.measured.push((batch, sm_pct));
        }
        let share = f64::from(sm_pct) / 100.0;
        Ok(Measurement {
            latency_s: self.model.slo_latency_s(batch, share),
            throughput: self.model.throughput(batch, share),
        })
    }
}

/// What a profile run measured against.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum MeasureSource {
    /// The table's own points (it holds every point the search can visit).
    Table,
    /// The performance model built from the table (its grid lacks some SM steps, e.g. gpulet's 20/40/50/…).
    Model,
}

/// A grid's most efficient point under the SLO.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct GridOptimum {
    /// Batch size.
    pub batch: u32,
    /// SM share, percent.
    pub sm_pct: u32,
    /// Throughput efficiency: throughput per SM percent.
    pub te: f64,
}

/// Everything an inference profile run found, for reports.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ProfileReport {
    /// The model.
    pub model: String,
    /// What the latencies measure.
    pub unit: LatencyUnit,
    /// The search parameters.
    pub config: HgsConfig,
    /// What the search measured against.
    pub source: MeasureSource,
    /// The search result.
    pub result: HgsResult,
    /// The points measured, in order.
    pub measured_points: Vec<(u32, u32)>,
    /// The points the search could have measured: the table's (batch ≤ max_batch), or the search lattice's
    /// when measuring the model.
    pub grid_points: usize,
    /// The quota of the result; `None` when infeasible.
    pub quota: Option<InferenceQuota>,
    /// The best point of an exhaustive search over the same points; `None` when none meets the SLO.
    pub exhaustive: Option<GridOptimum>,
    /// Whether the search found the exhaustive optimum's (batch, SM%), or both found nothing.
    pub matches_exhaustive: bool,
}

/// The (batch, SM%) points a search with `cfg` can visit: batches 1, 2, 4, … ≤ max_batch, shares in steps.
fn lattice(cfg: &HgsConfig) -> Vec<(u32, u32)> {
    let mut batches = vec![1u32];
    while let Some(next) = batches.last().and_then(|b| b.checked_mul(2)) {
        if next > cfg.max_batch {
            break;
        }
        batches.push(next);
    }
    let shares: Vec<u32> = (1..=100 / cfg.sm_step.max(1))
        .map(|k| k * cfg.sm_step)
        .collect();
    batches
        .iter()
        .flat_map(|&b| shares.iter().map(move |&s| (b, s)))
        .collect()
}

/// Runs Hybrid Growth Search on a table and compares it with the exhaustive optimum. It measures the table's
/// own points when the table holds every point the search can visit, else the performance model built from
/// it; the quota always comes from the performance model (the table must be a full grid).
pub fn profile_table(table: &ProfileTable, cfg: &HgsConfig) -> Result<ProfileReport, ProfileError> {
    cfg.validate()?;
    let model = PerfModel::from_table(table)?;
    let points = lattice(cfg);
    let covered = points.iter().all(|&(b, s)| table.get(b, s).is_some());
    let (source, result, measured_points, grid_points, best) = if covered {
        let mut m = TableMeasure::new(table);
        let r = hybrid_growth_search(&mut m, cfg)?;
        let n = table
            .points()
            .iter()
            .filter(|p| p.batch <= cfg.max_batch)
            .count();
        let best = hgs::exhaustive_best_within(table, cfg.slo_s, cfg.max_batch);
        (MeasureSource::Table, r, m.measured().to_vec(), n, best)
    } else {
        let mut m = ModelMeasure::new(&model);
        let r = hybrid_growth_search(&mut m, cfg)?;
        let best = hgs::best_of(points.iter().filter_map(|&(b, s)| {
            let share = f64::from(s) / 100.0;
            (model.slo_latency_s(b, share) <= cfg.slo_s)
                .then(|| (b, s, model.throughput(b, share) / f64::from(s)))
        }));
        (
            MeasureSource::Model,
            r,
            m.measured().to_vec(),
            points.len(),
            best,
        )
    };
    let quota = if result.feasible {
        Some(InferenceQuota::from_hgs(&result, &model)?)
    } else {
        None
    };
    let exhaustive = best.map(|(batch, sm_pct, te)| GridOptimum { batch, sm_pct, te });
    let matches_exhaustive = match exhaustive {
        Some(e) => result.feasible && (e.batch, e.sm_pct) == (result.batch, result.sm_pct),
        None => !result.feasible,
    };
    Ok(ProfileReport {
        model: table.model().to_owned(),
        unit: table.unit(),
        config: *cfg,
        source,
        result,
        measured_points,
        grid_points,
        quota,
        exhaustive,
        matches_exhaustive,
    })
}

/// The embedded table of a built-in model, or a typed error listing the known names.
fn builtin_table(model_name: &str) -> Result<&'static ProfileTable, ProfileError> {
    builtin_model(model_name)
        .map(|m| m.table())
        .ok_or_else(|| ProfileError::UnknownModel {
            name: model_name.to_owned(),
            known: builtin_model_names().join(", "),
        })
}

/// Profiles a built-in model for an SLO in milliseconds (per token for LLMs) with Dilu's defaults: batches
/// up to the table's largest, SM steps of 10%, a relative 10% TE drop.
pub fn profile_builtin(model_name: &str, slo_ms: f64) -> Result<ProfileReport, ProfileError> {
    let table = builtin_table(model_name)?;
    let cfg = HgsConfig {
        max_batch: table.max_batch(),
        ..HgsConfig::new(slo_ms / 1000.0)
    };
    profile_table(table, &cfg)
}

/// Everything a training profile run found.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct TrainingReport {
    /// The model.
    pub model: String,
    /// The batch whose throughput stands for training (the model's largest grid batch).
    pub batch: u32,
    /// Fraction of the full-GPU throughput to keep.
    pub target: f64,
    /// The bisection's result.
    pub profile: TrainingProfile,
    /// The resulting quota.
    pub quota: TrainingQuota,
    /// The continuous knee of the model's [`TrainingCurve`] at `target`, percent (what bisection
    /// approximates from above to within 5 points).
    pub curve_knee_pct: f64,
}

/// Profiles training on a performance model: bisection on its largest-batch column (see
/// [`crate::perf::training`] for why that column stands for training).
pub fn profile_training(model: &PerfModel, target: f64) -> Result<TrainingReport, ProfileError> {
    let batch = model.max_grid_batch();
    let profile = bisect_training(
        |sm_pct| model.throughput(batch, f64::from(sm_pct) / 100.0),
        target,
    )?;
    let curve = TrainingCurve::from_model(model)?;
    Ok(TrainingReport {
        model: model.model().to_owned(),
        batch,
        target,
        profile,
        quota: TrainingQuota::from_profile(&profile),
        curve_knee_pct: curve.knee(target) * 100.0,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::perf::table::parse_dilu_csv;
    use std::path::PathBuf;

    /// The five Dilu models with the SLOs of the calibration check (per token for llama2).
    const SLOS: &[(&str, f64)] = &[
        ("resnet152", 0.040),
        ("roberta_large", 0.060),
        ("gpt2_large", 0.060),
        ("llama2", 0.042),
        ("bert_base", 0.050),
    ];

    /// Reads a shared Dilu profile, or says loudly that it is missing (and fails under CI=true).
    fn shared_profile(model: &str) -> Option<ProfileTable> {
        let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .join("../../../shared/data/dilu/profiles")
            .join(format!("bs_sm_{model}.csv"));
        match std::fs::read_to_string(&path) {
            Ok(text) => Some(parse_dilu_csv(model, &text).unwrap()),
            Err(e) => {
                if std::env::var("CI").is_ok_and(|v| v == "true") {
                    panic!(
                        "required test data {} is missing (CI=true): {e}",
                        path.display()
                    );
                }
                eprintln!(
                    "SKIPPED: test data {} not found ({e}); this test did not run",
                    path.display()
                );
                None
            }
        }
    }

    /// On Dilu's raw profiles HGS measures 5–10 points and finds the exhaustive optimum in 4 of 5 models
    /// (`docs/algorithms.md` §3), with either drop rule.
    #[test]
    fn hgs_on_the_raw_dilu_profiles() {
        // (model, chosen batch, chosen SM%, points measured, matches the exhaustive optimum)
        let expected = [
            ("resnet152", 16, 30, 9, true),
            ("roberta_large", 4, 20, 6, false), // the optimum is 30% / b4
            ("gpt2_large", 4, 30, 7, true),
            ("llama2", 8, 50, 10, true),
            ("bert_base", 4, 10, 5, true),
        ];
        for te_drop in [TeDrop::Relative(0.10), TeDrop::Absolute(0.2)] {
            let mut optimal = 0;
            for (&(model, slo), &(name, batch, sm, n, matches)) in SLOS.iter().zip(&expected) {
                assert_eq!(model, name);
                let Some(table) = shared_profile(model) else {
                    return;
                };
                let mut m = TableMeasure::new(&table);
                let cfg = HgsConfig {
                    te_drop,
                    ..HgsConfig::new(slo)
                };
                let r = hybrid_growth_search(&mut m, &cfg).unwrap();
                let best = exhaustive_best(&table, slo).unwrap();
                eprintln!("{model}: hgs {r:?}, exhaustive {best:?}");
                assert!(r.feasible);
                assert!(r.measured <= 12, "{model}: {} points", r.measured);
                assert_eq!(r.measured, m.measured().len());
                assert_eq!((r.batch, r.sm_pct, r.measured), (batch, sm, n), "{model}");
                let hit = (r.batch, r.sm_pct) == (best.0, best.1);
                assert_eq!(hit, matches, "{model}");
                optimal += usize::from(hit);
            }
            assert!(optimal >= 4, "only {optimal} of 5 optimal");
        }
    }

    /// The same search on the embedded (monotonised, rounded) tables. Two models miss the optimum: RoBERTa as
    /// on the raw table, and llama2, whose batch time comes from throughput, which at (4, 40%) and (8, 50%)
    /// is 2.4% slower than the latency column says and pushes those points over the 42 ms SLO.
    #[test]
    fn hgs_on_the_builtin_tables() {
        let expected = [
            ("resnet152", 16, 30, 9, true),
            ("roberta_large", 4, 20, 6, false),
            ("gpt2_large", 4, 30, 7, true),
            ("llama2", 2, 30, 6, false),
            ("bert_base", 4, 10, 5, true),
        ];
        let mut optimal = 0;
        for (&(model, slo), &(name, batch, sm, n, matches)) in SLOS.iter().zip(&expected) {
            assert_eq!(model, name);
            let r = profile_builtin(model, slo * 1000.0).unwrap();
            eprintln!("{model}: {:?} exhaustive {:?}", r.result, r.exhaustive);
            assert_eq!(r.source, MeasureSource::Table);
            assert_eq!(r.grid_points, 60);
            assert!(r.result.measured <= 12);
            assert_eq!(
                (r.result.batch, r.result.sm_pct, r.result.measured),
                (batch, sm, n),
                "{model}"
            );
            assert_eq!(r.matches_exhaustive, matches, "{model}");
            optimal += usize::from(r.matches_exhaustive);
            let q = r.quota.unwrap();
            assert_eq!(q.batch, batch);
            assert_eq!(q.sm_request, f64::from(sm) / 100.0);
            assert!(q.sm_limit >= q.sm_request && q.sm_limit <= 1.0);
            assert!(q.capacity_rps > 0.0);
        }
        assert_eq!(optimal, 3);
    }

    #[test]
    fn resnet152_report_numbers() {
        let r = profile_builtin("resnet-152", 40.0).unwrap();
        assert_eq!(r.model, "resnet152");
        let q = r.quota.unwrap();
        // Batch 16 at 30% takes 0.03997 s; the knee of batch 16 (95% of 16/0.02585) is at 50%.
        assert!((q.capacity_rps - 16.0 / 0.03997).abs() < 1e-9);
        assert_eq!(q.sm_limit, 0.5);
        let e = r.exhaustive.unwrap();
        assert_eq!((e.batch, e.sm_pct), (16, 30));
        assert_eq!(
            r.measured_points,
            vec![
                (1, 10),
                (2, 10),
                (4, 10),
                (4, 20),
                (8, 20),
                (16, 20),
                (16, 30),
                (32, 30),
                (32, 40),
            ]
        );
    }

    #[test]
    fn gpulet_models_are_profiled_on_the_model() {
        let r = profile_builtin("gpulet/resnet50", 20.0).unwrap();
        assert_eq!(r.source, MeasureSource::Model);
        assert_eq!(r.config.max_batch, 64);
        assert_eq!(r.grid_points, 70);
        assert!(r.result.feasible && r.result.measured <= 14);
        for name in builtin_model_names() {
            let r = profile_builtin(name, 100.0).unwrap();
            assert!(r.result.feasible, "{name}");
        }
    }

    #[test]
    fn infeasible_and_unknown() {
        let r = profile_builtin("gpt2_large", 1.0).unwrap();
        assert!(!r.result.feasible && r.quota.is_none() && r.exhaustive.is_none());
        assert!(r.matches_exhaustive);
        let e = profile_builtin("resnet9000", 40.0).unwrap_err();
        assert!(
            e.to_string()
                .contains("unknown built-in model 'resnet9000'"),
            "{e}"
        );
    }

    #[test]
    fn training_bisection_tracks_the_curve_knee() {
        for name in builtin_model_names() {
            let m = builtin_model(name).unwrap().perf();
            let r = profile_training(&m, DEFAULT_TRAINING_TARGET).unwrap();
            let found = f64::from(r.profile.sm_request_pct);
            assert!(
                found >= r.curve_knee_pct - 1e-9 && found <= r.curve_knee_pct + 5.0,
                "{name}: {found} vs knee {}",
                r.curve_knee_pct
            );
            assert_eq!(r.quota.sm_limit, 1.0);
            assert!(r.profile.measured <= 6);
        }
    }

    #[test]
    fn model_measure_agrees_with_the_table_on_monotone_grids() {
        let b = builtin_model("gpt2_large").unwrap();
        let mut via_table = TableMeasure::new(b.table());
        let mut via_model = ModelMeasure::new(b.perf_ref());
        let cfg = HgsConfig::new(0.06);
        let r1 = hybrid_growth_search(&mut via_table, &cfg).unwrap();
        let r2 = hybrid_growth_search(&mut via_model, &cfg).unwrap();
        assert_eq!(
            (r1.batch, r1.sm_pct, r1.measured),
            (r2.batch, r2.sm_pct, r2.measured)
        );
        assert!((r1.te - r2.te).abs() < 1e-9 * r1.te);
        assert_eq!(via_table.measured(), via_model.measured());
    }
}
