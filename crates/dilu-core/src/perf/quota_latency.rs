//! Latency of one batch under an SM partition *and* a time quota: a compact predictor in the spirit of
//! HAS-GPU's RaPP (`docs/baselines.md`). RaPP is a graph neural network over operator features; this is a
//! three-parameter model over what a profile table already holds, fitted deterministically by grid search.
//!
//! For a batch that takes `l_p` at its partition with the full time quota, and `l_1` on the whole GPU, the
//! predicted latency at time quota `q` is a smooth maximum of two bounds:
//!
//! ```text
//! latency(q) = smoothmax_s( l_p ,  l_p^w · l_1^(1−w) / q^k )
//! ```
//!
//! - `l_p`: a quota cannot make a batch faster than its partition allows.
//! - `l_p^w · l_1^(1−w) / q^k`: the time-slicing bound. With `w = 1, k = 1` it is the fluid model
//!   (`l_p / q`: the batch runs at its partition's speed for a fraction `q` of the time); with `w = 0` the
//!   slicing cost is set by the batch's whole-GPU time, which is what RaPP's V100 measurements of FaST-GShare's
//!   time tokens show (a small partition at quota 0.5 is as fast as at quota 1 when its kernels are long).
//! - `smoothmax_s(a, b) = (a^s + b^s)^(1/s)`; `s` ≥ [`HARD_MAX_SHARPNESS`] is the plain maximum.
//!
//! The model is homogeneous of degree one in `(l_p, l_1)`, so it can be applied to a table's batch times as
//! well as to latencies measured in another unit.

use serde::{Deserialize, Serialize};

use super::PerfError;

/// Sharpness at or above which the smooth maximum is the plain maximum.
pub const HARD_MAX_SHARPNESS: f64 = 256.0;

/// The predictor's three parameters (see the module documentation).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct QuotaLatencyModel {
    /// Weight `w` of the partition's own time in the slicing bound, in [0, 1].
    pub weight: f64,
    /// Exponent `k` of the quota in the slicing bound, in [0.25, 4].
    pub exponent: f64,
    /// Sharpness `s` of the smooth maximum, in [1, 256]; 256 is the plain maximum.
    pub sharpness: f64,
}

impl QuotaLatencyModel {
    /// The simulator's own time-token model: a batch runs at its partition's speed for a fraction `q` of the
    /// time, so its latency is `l_p / q` (`dilu-sim`'s serving engine, `docs/baselines.md`).
    pub const FLUID: QuotaLatencyModel = QuotaLatencyModel {
        weight: 1.0,
        exponent: 1.0,
        sharpness: HARD_MAX_SHARPNESS,
    };

    /// The fit on RaPP's 800 ResNet-152 measurements of FaST-GShare time tokens on a V100 (batch 1–8, SM 5–100%,
    /// quota 10–100%); `crates/dilu-core/tests/rapp_predictor.rs` refits it and reports its error.
    pub const RAPP_V100: QuotaLatencyModel = QuotaLatencyModel {
        weight: 0.05,
        exponent: 1.094,
        sharpness: HARD_MAX_SHARPNESS,
    };

    /// Checks the ranges documented on the fields; errors name the field as `prefix.field`.
    pub fn validate(&self, prefix: &str) -> Result<(), crate::error::FieldError> {
        let check = |ok: bool, field: &str, value: f64, rule: &str| {
            if ok {
                Ok(())
            } else {
                Err(crate::error::FieldError::new(
                    format!("{prefix}.{field}"),
                    value.to_string(),
                    rule,
                ))
            }
        };
        let w = self.weight;
        check(
            w.is_finite() && (0.0..=1.0).contains(&w),
            "weight",
            w,
            "must lie in [0, 1]",
        )?;
        let k = self.exponent;
        check(
            k.is_finite() && (0.25..=4.0).contains(&k),
            "exponent",
            k,
            "must lie in [0.25, 4]",
        )?;
        let s = self.sharpness;
        check(
            s.is_finite() && (1.0..=HARD_MAX_SHARPNESS).contains(&s),
            "sharpness",
            s,
            "must lie in [1, 256]",
        )
    }

    /// Predicted latency at time quota `quota` (clamped to (0, 1]) of a batch taking `partition_latency` at its
    /// partition with the full quota and `full_gpu_latency` on the whole GPU. Non-positive or non-finite
    /// inputs give `f64::INFINITY` (no prediction).
    pub fn latency(&self, partition_latency: f64, full_gpu_latency: f64, quota: f64) -> f64 {
        let (lp, l1) = (partition_latency, full_gpu_latency);
        if !(lp.is_finite() && l1.is_finite() && lp > 0.0 && l1 > 0.0 && quota.is_finite())
            || quota <= 0.0
        {
            return f64::INFINITY;
        }
        let q = quota.min(1.0);
        let slicing = lp.powf(self.weight) * l1.powf(1.0 - self.weight) / q.powf(self.exponent);
        smooth_max(lp, slicing, self.sharpness)
    }
}

/// `(a^s + b^s)^(1/s)` computed without overflow; the plain maximum from [`HARD_MAX_SHARPNESS`] on.
fn smooth_max(a: f64, b: f64, s: f64) -> f64 {
    let (hi, lo) = if a >= b { (a, b) } else { (b, a) };
    if s >= HARD_MAX_SHARPNESS || hi <= 0.0 {
        return hi;
    }
    hi * (1.0 + (lo / hi).powf(s)).powf(1.0 / s)
}

/// One measured point: a batch's latency at its partition with the full quota, on the whole GPU, and the
/// latency measured at `quota`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct QuotaSample {
    /// Latency at the partition with the full time quota.
    pub partition_latency: f64,
    /// Latency on the whole GPU with the full time quota.
    pub full_gpu_latency: f64,
    /// Time quota, fraction (0, 1].
    pub quota: f64,
    /// Measured latency at that quota.
    pub latency: f64,
}

/// How well a model predicts a set of samples: relative errors `|predicted − measured| / measured`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PredictionError {
    /// Samples compared.
    pub samples: usize,
    /// Median relative error.
    pub median: f64,
    /// 90th percentile of the relative error.
    pub p90: f64,
    /// Mean relative error (the MAPE, as a fraction).
    pub mean: f64,
}

impl QuotaLatencyModel {
    /// The relative errors of this model on `samples` (none: all zero).
    pub fn error(&self, samples: &[QuotaSample]) -> PredictionError {
        let mut errs: Vec<f64> = samples
            .iter()
            .map(|s| {
                let p = self.latency(s.partition_latency, s.full_gpu_latency, s.quota);
                (p - s.latency).abs() / s.latency
            })
            .collect();
        errs.sort_by(f64::total_cmp);
        let n = errs.len();
        if n == 0 {
            return PredictionError {
                samples: 0,
                median: 0.0,
                p90: 0.0,
                mean: 0.0,
            };
        }
        let at = |f: f64| errs[((f * n as f64).ceil() as usize).clamp(1, n) - 1];
        PredictionError {
            samples: n,
            median: at(0.5),
            p90: at(0.9),
            mean: errs.iter().sum::<f64>() / n as f64,
        }
    }

    /// Fits the model to `samples` by minimising the mean absolute log error over a fixed grid (weight in
    /// steps of 0.05, exponent in steps of 0.02 from 0.5 to 2.5, sharpness in {1, 2, 3, 4, 6, 8, 12, 16, 24, 32,
    /// 64, 256}), then refining the exponent in steps of 0.002 around the best. Deterministic: ties keep the
    /// first grid point. Every sample must have positive, finite latencies and a quota in (0, 1].
    pub fn fit(samples: &[QuotaSample]) -> Result<QuotaLatencyModel, PerfError> {
        if samples.is_empty() {
            return Err(PerfError::Invalid {
                field: "samples",
                value: "0".into(),
                rule: "fitting needs at least one sample".into(),
            });
        }
        for (i, s) in samples.iter().enumerate() {
            let positive = |v: f64| v.is_finite() && v > 0.0;
            let bad = if !positive(s.partition_latency) {
                Some(("partition_latency", s.partition_latency))
            } else if !positive(s.full_gpu_latency) {
                Some(("full_gpu_latency", s.full_gpu_latency))
            } else if !positive(s.latency) {
                Some(("latency", s.latency))
            } else if !(positive(s.quota) && s.quota <= 1.0) {
                Some(("quota", s.quota))
            } else {
                None
            };
            if let Some((field, v)) = bad {
                return Err(PerfError::Field {
                    line: i + 1,
                    field,
                    value: v.to_string(),
                    rule: "must be positive and finite (quota at most 1)".into(),
                });
            }
        }
        let loss = |m: &QuotaLatencyModel| -> f64 {
            samples
                .iter()
                .map(|s| {
                    (m.latency(s.partition_latency, s.full_gpu_latency, s.quota) / s.latency)
                        .ln()
                        .abs()
                })
                .sum::<f64>()
                / samples.len() as f64
        };
        const SHARPNESS: [f64; 12] = [
            1.0, 2.0, 3.0, 4.0, 6.0, 8.0, 12.0, 16.0, 24.0, 32.0, 64.0, 256.0,
        ];
        let mut best = (f64::INFINITY, QuotaLatencyModel::FLUID);
        for wi in 0..=20 {
            for ki in 0..=100 {
                for &sharpness in &SHARPNESS {
                    let m = QuotaLatencyModel {
                        weight: f64::from(wi) * 0.05,
                        exponent: 0.5 + f64::from(ki) * 0.02,
                        sharpness,
                    };
                    let l = loss(&m);
                    if l < best.0 {
                        best = (l, m);
                    }
                }
            }
        }
        let coarse = best.1;
        for di in -10..=10 {
            let m = QuotaLatencyModel {
                exponent: (coarse.exponent + f64::from(di) * 0.002).clamp(0.25, 4.0),
                ..coarse
            };
            let l = loss(&m);
            if l < best.0 {
                best = (l, m);
            }
        }
        let m = best.1;
        // Round away the grid's floating-point noise so the fitted values print as written.
        Ok(QuotaLatencyModel {
            weight: (m.weight * 1e6).round() / 1e6,
            exponent: (m.exponent * 1e6).round() / 1e6,
            sharpness: m.sharpness,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fluid_model_is_partition_time_over_quota() {
        let m = QuotaLatencyModel::FLUID;
        assert_eq!(m.latency(0.04, 0.02, 1.0), 0.04);
        assert!((m.latency(0.04, 0.02, 0.4) - 0.1).abs() < 1e-12);
        assert_eq!(m.latency(0.04, 0.02, 0.0), f64::INFINITY);
        assert_eq!(m.latency(-1.0, 0.02, 0.5), f64::INFINITY);
        // Quotas above 1 are clamped.
        assert_eq!(m.latency(0.04, 0.02, 2.0), 0.04);
        assert!(m.validate("has.predictor").is_ok());
    }

    #[test]
    fn slicing_bound_of_the_whole_gpu_lets_long_partition_batches_keep_their_speed() {
        let m = QuotaLatencyModel {
            weight: 0.0,
            exponent: 1.0,
            sharpness: HARD_MAX_SHARPNESS,
        };
        // A small partition: 0.3 s per batch; whole GPU 0.05 s. Quota 0.5: the slicing bound 0.1 s is below
        // the partition's own time, which wins.
        assert_eq!(m.latency(0.3, 0.05, 0.5), 0.3);
        // Quota 0.1: the slicing bound 0.5 s wins.
        assert!((m.latency(0.3, 0.05, 0.1) - 0.5).abs() < 1e-12);
        // A smooth maximum is above both bounds and at most 2^(1/s) above the larger one.
        let soft = QuotaLatencyModel {
            sharpness: 2.0,
            ..m
        };
        let l = soft.latency(0.3, 0.05, 0.5);
        assert!(l > 0.3 && l <= 0.3 * 2f64.sqrt(), "{l}");
    }

    #[test]
    fn fit_recovers_the_parameters_that_generated_the_samples() {
        let truth = QuotaLatencyModel {
            weight: 0.25,
            exponent: 1.3,
            sharpness: 8.0,
        };
        let mut samples = Vec::new();
        for lp in [0.02, 0.05, 0.1, 0.3] {
            for q in 1..=10 {
                let q = f64::from(q) / 10.0;
                samples.push(QuotaSample {
                    partition_latency: lp,
                    full_gpu_latency: 0.02,
                    quota: q,
                    latency: truth.latency(lp, 0.02, q),
                });
            }
        }
        let fit = QuotaLatencyModel::fit(&samples).unwrap();
        assert_eq!(fit, truth);
        let e = fit.error(&samples);
        assert_eq!(e.samples, 40);
        assert!(e.p90 < 1e-9, "{e:?}");
    }

    #[test]
    fn fit_and_validation_refuse_bad_input() {
        assert!(matches!(
            QuotaLatencyModel::fit(&[]),
            Err(PerfError::Invalid {
                field: "samples",
                ..
            })
        ));
        let bad = QuotaSample {
            partition_latency: 0.1,
            full_gpu_latency: 0.05,
            quota: 1.5,
            latency: 0.1,
        };
        match QuotaLatencyModel::fit(&[bad]) {
            Err(PerfError::Field { line, field, .. }) => assert_eq!((line, field), (1, "quota")),
            other => panic!("{other:?}"),
        }
        let e = QuotaLatencyModel {
            exponent: 9.0,
            ..QuotaLatencyModel::FLUID
        }
        .validate("has.predictor")
        .unwrap_err();
        assert_eq!(
            (e.field.as_str(), e.value.as_str()),
            ("has.predictor.exponent", "9")
        );
    }
}
