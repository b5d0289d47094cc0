//! Hybrid Growth Search (`docs/algorithms.md` §3): the inference profiler. Batch grows geometrically, SM share
//! additively and only under SLO pressure, so a handful of measurements finds an efficient point under the SLO.
//!
//! ```text
//! s = step; b = 1
//! phase 1: raise s by step until latency(1, s) <= SLO; record best = (s, 1, TE); b = 2
//! phase 2: loop while b <= max_batch and s <= 100
//!    measure (b, s)
//!    if latency > SLO:
//!        s += step; stop if s > 100; measure (b, s)
//!        if latency still > SLO: stop            # more SM does not rescue this batch
//!        if TE fell more than the drop rule: stop
//!    record best = (s, b, TE); last_TE = TE; b *= 2
//! result: the last recorded (s, b)
//! ```
//! `TE(b, s) = throughput(b, s) / s` (per SM percent). The drop rule is [`TeDrop`]: the reference's absolute
//! 0.2 TE units, or **\[ours\]** a fraction of the last TE (default 10%), which works on every model's scale.

use super::{Measure, ProfileError};
use crate::perf::table::ProfileTable;
use serde::{Deserialize, Serialize};
use std::fmt;
use std::str::FromStr;

/// When a rise in SM share costs too much efficiency for the search to go on.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TeDrop {
    /// Stop when TE < last_TE · (1 − fraction) **\[ours\]**, e.g. 0.10.
    Relative(f64),
    /// Stop when TE < last_TE − delta (the reference implementation: 0.2 TE units).
    Absolute(f64),
}

impl Default for TeDrop {
    /// 10% of the last TE.
    fn default() -> Self {
        TeDrop::Relative(0.10)
    }
}

impl TeDrop {
    /// Whether TE fell too far from `last_te`.
    pub fn dropped(self, te: f64, last_te: f64) -> bool {
        match self {
            TeDrop::Relative(f) => te < last_te * (1.0 - f),
            TeDrop::Absolute(d) => te < last_te - d,
        }
    }

    /// Checks the parameter: a relative drop within [0, 1], an absolute one finite and ≥ 0.
    pub fn validate(self) -> Result<(), ProfileError> {
        let (ok, v, rule) = match self {
            TeDrop::Relative(f) => (
                (0.0..=1.0).contains(&f),
                f,
                "a relative drop must be within [0, 1]",
            ),
            TeDrop::Absolute(d) => (
                d.is_finite() && d >= 0.0,
                d,
                "an absolute drop must be finite and >= 0",
            ),
        };
        if ok {
            Ok(())
        } else {
            Err(ProfileError::Config(crate::FieldError::new(
                "te_drop",
                v.to_string(),
                rule,
            )))
        }
    }
}

impl fmt::Display for TeDrop {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TeDrop::Relative(v) => write!(f, "rel:{v}"),
            TeDrop::Absolute(v) => write!(f, "abs:{v}"),
        }
    }
}

impl FromStr for TeDrop {
    type Err = ProfileError;
    /// Parses `rel:0.1` or `abs:0.2`.
    fn from_str(s: &str) -> Result<Self, ProfileError> {
        let bad =
            |rule| ProfileError::Config(crate::FieldError::new("te_drop", format!("{s:?}"), rule));
        let (kind, v) = s
            .split_once(':')
            .ok_or_else(|| bad("must be rel:FRACTION or abs:DELTA"))?;
        let v: f64 = v
            .trim()
            .parse()
            .map_err(|_| bad("the value after ':' must be a number"))?;
        let drop = match kind.trim() {
            "rel" => TeDrop::Relative(v),
            "abs" => TeDrop::Absolute(v),
            _ => return Err(bad("must start with rel: or abs:")),
        };
        drop.validate()?;
        Ok(drop)
    }
}

/// Parameters of a search.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct HgsConfig {
    /// The latency SLO in seconds, compared with the measured latency (per batch, or per token).
    pub slo_s: f64,
    /// The largest batch the search may try.
    pub max_batch: u32,
    /// SM share step in percent; the search starts at one step (Dilu: 10).
    pub sm_step: u32,
    /// When a rise in SM share costs too much efficiency.
    pub te_drop: TeDrop,
}

impl HgsConfig {
    /// Dilu's defaults for an SLO: batches up to 32, SM in steps of 10%, a relative 10% TE drop.
    pub fn new(slo_s: f64) -> Self {
        HgsConfig {
            slo_s,
            max_batch: 32,
            sm_step: 10,
            te_drop: TeDrop::default(),
        }
    }

    /// Checks every parameter.
    pub fn validate(&self) -> Result<(), ProfileError> {
        if !(self.slo_s.is_finite() && self.slo_s > 0.0) {
            return Err(ProfileError::Config(crate::FieldError::new(
                "slo_s",
                self.slo_s.to_string(),
                "must be finite and > 0",
            )));
        }
        if self.max_batch == 0 {
            return Err(ProfileError::Config(crate::FieldError::new(
                "max_batch",
                "0",
                "must be at least 1",
            )));
        }
        if !(1..=100).contains(&self.sm_step) {
            return Err(ProfileError::Config(crate::FieldError::new(
                "sm_step",
                self.sm_step.to_string(),
                "must be in 1..=100",
            )));
        }
        self.te_drop.validate()
    }
}

/// What a search found.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct HgsResult {
    /// Chosen batch size (1 when infeasible).
    pub batch: u32,
    /// Chosen SM share in percent (the last share tried when infeasible).
    pub sm_pct: u32,
    /// Throughput efficiency at the chosen point: throughput per SM percent.
    pub te: f64,
    /// Latency at the chosen point (in the SLO's unit).
    pub latency_s: f64,
    /// Throughput at the chosen point.
    pub throughput: f64,
    /// Whether any point met the SLO; false when even the largest share misses it at batch 1.
    pub feasible: bool,
    /// Distinct points measured.
    pub measured: usize,
}

/// Measures a point, counting distinct points and checking the measurement.
fn probe(
    measure: &mut impl Measure,
    seen: &mut Vec<(u32, u32)>,
    batch: u32,
    sm_pct: u32,
) -> Result<(f64, f64), ProfileError> {
    let m = measure.measure(batch, sm_pct)?;
    for (field, value) in [("latency_s", m.latency_s), ("throughput", m.throughput)] {
        if value.is_nan() || value < 0.0 {
            return Err(ProfileError::BadMeasurement {
                batch,
                sm_pct,
                field,
                value,
            });
        }
    }
    if !seen.contains(&(batch, sm_pct)) {
        seen.push((batch, sm_pct));
    }
    Ok((m.latency_s, m.throughput))
}

/// Runs Hybrid Growth Search against `measure`. Infeasibility (batch 1 misses the SLO even at 100%) is a
/// result with `feasible: false`, not an error; errors are bad configurations and failed measurements.
pub fn hybrid_growth_search(
    measure: &mut impl Measure,
    cfg: &HgsConfig,
) -> Result<HgsResult, ProfileError> {
    cfg.validate()?;
    let mut seen = Vec::new();
    let step = cfg.sm_step;
    let te = |thr: f64, s: u32| thr / f64::from(s);
    // Phase 1: the smallest share at which one sample meets the SLO.
    let mut s = step;
    let (mut lat, mut thr) = probe(measure, &mut seen, 1, s)?;
    while lat > cfg.slo_s {
        if s + step > 100 {
            return Ok(HgsResult {
                batch: 1,
                sm_pct: s,
                te: te(thr, s),
                latency_s: lat,
                throughput: thr,
                feasible: false,
                measured: seen.len(),
            });
        }
        s += step;
        (lat, thr) = probe(measure, &mut seen, 1, s)?;
    }
    let mut best = HgsResult {
        batch: 1,
        sm_pct: s,
        te: te(thr, s),
        latency_s: lat,
        throughput: thr,
        feasible: true,
        measured: 0,
    };
    let mut last_te = best.te;
    // Phase 2: double the batch, adding SM only under SLO pressure.
    let mut b: u32 = 2;
    while b <= cfg.max_batch && s <= 100 {
        (lat, thr) = probe(measure, &mut seen, b, s)?;
        if lat > cfg.slo_s {
            if s + step > 100 {
                break;
            }
            s += step;
            (lat, thr) = probe(measure, &mut seen, b, s)?;
            if lat > cfg.slo_s || cfg.te_drop.dropped(te(thr, s), last_te) {
                break;
            }
        }
        best = HgsResult {
            batch: b,
            sm_pct: s,
            te: te(thr, s),
            latency_s: lat,
            throughput: thr,
            feasible: true,
            measured: 0,
        };
        last_te = best.te;
        let Some(next) = b.checked_mul(2) else { break };
        b = next;
    }
    best.measured = seen.len();
    Ok(best)
}

/// The grid's most efficient point under the SLO: the highest TE among points whose latency meets `slo_s`
/// (ties: the smaller share, then the smaller batch), as `(batch, sm_pct, te)`; `None` when no point does.
pub fn exhaustive_best(table: &ProfileTable, slo_s: f64) -> Option<(u32, u32, f64)> {
    exhaustive_best_within(table, slo_s, u32::MAX)
}

/// [`exhaustive_best`] over the points with batch ≤ `max_batch`.
pub fn exhaustive_best_within(
    table: &ProfileTable,
    slo_s: f64,
    max_batch: u32,
) -> Option<(u32, u32, f64)> {
    best_of(
        table
            .points()
            .iter()
            .filter(|p| p.batch <= max_batch && p.latency_s <= slo_s)
            .map(|p| (p.batch, p.sm_pct, p.throughput / f64::from(p.sm_pct))),
    )
}

/// The highest-TE candidate (ties: smaller share, then smaller batch).
pub(crate) fn best_of(
    candidates: impl Iterator<Item = (u32, u32, f64)>,
) -> Option<(u32, u32, f64)> {
    candidates.fold(None, |best, c| match best {
        None => Some(c),
        Some(b) => {
            let better = c.2 > b.2 || (c.2 == b.2 && (c.1, c.0) < (b.1, b.0));
            Some(if better { c } else { b })
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::perf::table::{LatencyUnit, ProfilePoint};
    use crate::profiler::TableMeasure;

    /// Latency = b · 0.01 / s-fraction-ish, saturating at 50%: a synthetic, monotone table.
    fn synthetic() -> ProfileTable {
        let mut points = Vec::new();
        for b in [1u32, 2, 4, 8, 16, 32] {
            for s in (10..=100).step_by(10) {
                let eff = f64::from(s.min(50)) / 100.0;
                let lat = 0.002 + 0.001 * f64::from(b) / eff;
                points.push(ProfilePoint {
                    batch: b,
                    sm_pct: s,
                    latency_s: lat,
                    throughput: f64::from(b) / lat,
                });
            }
        }
        ProfileTable::new("syn", LatencyUnit::PerBatch, points).unwrap()
    }

    #[test]
    fn te_drop_parses_and_prints() {
        assert_eq!("rel:0.1".parse::<TeDrop>().unwrap(), TeDrop::Relative(0.1));
        assert_eq!("abs:0.2".parse::<TeDrop>().unwrap(), TeDrop::Absolute(0.2));
        assert_eq!(TeDrop::Absolute(0.2).to_string(), "abs:0.2");
        let e = "rel:1.5".parse::<TeDrop>().unwrap_err();
        assert!(e.to_string().contains("te_drop = 1.5"), "{e}");
        assert!("pct:3".parse::<TeDrop>().is_err());
        assert!("rel".parse::<TeDrop>().is_err());
    }

    #[test]
    fn infeasible_is_a_result() {
        let t = synthetic();
        let mut m = TableMeasure::new(&t);
        let r = hybrid_growth_search(&mut m, &HgsConfig::new(0.001)).unwrap();
        assert!(!r.feasible);
        assert_eq!((r.batch, r.sm_pct, r.measured), (1, 100, 10));
        assert_eq!(exhaustive_best(&t, 0.001), None);
    }

    #[test]
    fn follows_the_documented_steps() {
        let t = synthetic();
        let slo = 0.02;
        let mut m = TableMeasure::new(&t);
        let r = hybrid_growth_search(&mut m, &HgsConfig::new(slo)).unwrap();
        // b1@10 ok; b2@10 misses → b2@20 ok; b4@20 misses → b4@30 ok; b8@30 misses → b8@40 misses: stop.
        assert_eq!(
            m.measured(),
            &[
                (1, 10),
                (2, 10),
                (2, 20),
                (4, 20),
                (4, 30),
                (8, 30),
                (8, 40)
            ]
        );
        assert!(r.feasible);
        assert_eq!((r.batch, r.sm_pct, r.measured), (4, 30, 7));
        assert!(r.latency_s <= slo);
        // One SM step per batch cannot reach the optimum (b8 needs 50%): HGS is a heuristic.
        let (b, s, te) = exhaustive_best(&t, slo).unwrap();
        assert_eq!((b, s), (8, 50));
        assert!(r.te < te);
    }

    #[test]
    fn te_drop_stops_the_search() {
        // With an absurdly strict absolute drop (0), any TE loss after a rise in SM stops the search.
        let t = synthetic();
        let mut m = TableMeasure::new(&t);
        let cfg = HgsConfig {
            te_drop: TeDrop::Absolute(0.0),
            ..HgsConfig::new(0.02)
        };
        let r = hybrid_growth_search(&mut m, &cfg).unwrap();
        // b2@20 has the same TE as b1@10 (not lower), b4@30 a higher one; the stop comes from the SLO.
        assert_eq!((r.batch, r.sm_pct), (4, 30));
        // Relative 100% never stops on TE.
        assert!(!TeDrop::Relative(1.0).dropped(0.0, 5.0));
        assert!(TeDrop::Relative(0.1).dropped(4.4, 5.0));
        assert!(!TeDrop::Relative(0.1).dropped(4.6, 5.0));
        assert!(TeDrop::Absolute(0.2).dropped(4.7, 5.0));
    }

    #[test]
    fn bad_config_is_refused() {
        let t = synthetic();
        let mut m = TableMeasure::new(&t);
        for cfg in [
            HgsConfig::new(0.0),
            HgsConfig::new(f64::NAN),
            HgsConfig {
                max_batch: 0,
                ..HgsConfig::new(0.1)
            },
            HgsConfig {
                sm_step: 0,
                ..HgsConfig::new(0.1)
            },
            HgsConfig {
                te_drop: TeDrop::Absolute(-1.0),
                ..HgsConfig::new(0.1)
            },
        ] {
            assert!(matches!(
                hybrid_growth_search(&mut m, &cfg),
                Err(ProfileError::Config(_))
            ));
        }
    }

    #[test]
    fn missing_points_are_errors_naming_the_point() {
        let t = ProfileTable::new(
            "tiny",
            LatencyUnit::PerBatch,
            vec![ProfilePoint {
                batch: 1,
                sm_pct: 10,
                latency_s: 1.0,
                throughput: 1.0,
            }],
        )
        .unwrap();
        let mut m = TableMeasure::new(&t);
        let e = hybrid_growth_search(&mut m, &HgsConfig::new(0.5)).unwrap_err();
        assert!(e.to_string().contains("batch=1 sm_pct=20"), "{e}");
    }
}
