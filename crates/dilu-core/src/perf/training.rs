//! [`TrainingCurve`]: a training job's throughput at an SM share, relative to its full-GPU throughput.
//!
//! Where the parameters come from: none of the public data profiles training against SM share, so the curve
//! is taken from the model's inference profile at its largest grid batch (bs = 32 for the Dilu models),
//! normalised by its value at the largest grid share (100%). Training is a forward plus a backward pass over a
//! large batch, so it saturates the SMs the way large-batch inference does, and its throughput scales with
//! SM share like that column does (the reason Dilu's training bisection finds knees well below 100%).
//!
//! The curve is piecewise linear through `(0, 0)` and its points, monotone non-decreasing, `0` at share 0 and
//! `1` from its last point (share ≤ 1) up to share 1.

use super::PerfError;
use super::model::PerfModel;

/// Relative training throughput against SM share: piecewise linear, monotone, 0 at 0 and 1 at full share.
#[derive(Debug, Clone, PartialEq)]
pub struct TrainingCurve {
    /// `(share, relative throughput)`, starting at `(0, 0)`, shares strictly increasing, values
    /// non-decreasing, the last value 1.
    points: Vec<(f64, f64)>,
}

impl TrainingCurve {
    /// The curve of a model's largest-batch inference column (see the module documentation).
    pub fn from_model(model: &PerfModel) -> Result<TrainingCurve, PerfError> {
        let b = model.max_grid_batch();
        let full = model.throughput(b, 1.0);
        if !(full.is_finite() && full > 0.0) {
            return Err(PerfError::Invalid {
                field: "throughput",
                value: full.to_string(),
                rule: format!(
                    "model '{}': full-GPU throughput at batch {b} must be finite and > 0",
                    model.model()
                ),
            });
        }
        let mut points: Vec<(f64, f64)> = model
            .grid_sm_pcts()
            .iter()
            .map(|&s| {
                let share = f64::from(s) / 100.0;
                (share, (model.throughput(b, share) / full).min(1.0))
            })
            .collect();
        if let Some(last) = points.last_mut() {
            // The model clamps shares above its grid, so the last grid share already runs at full speed.
            last.1 = 1.0;
        }
        Self::from_points(points)
    }

    /// A curve through `(share, relative throughput)` points (any order; `(0, 0)` is implied). Shares must be
    /// distinct and within (0, 1], values within [0, 1] and non-decreasing in share, and the value at the
    /// largest share must be 1.
    pub fn from_points(mut points: Vec<(f64, f64)>) -> Result<TrainingCurve, PerfError> {
        let invalid = |field: &'static str, value: f64, rule: &str| PerfError::Invalid {
            field,
            value: value.to_string(),
            rule: rule.to_owned(),
        };
        if points.is_empty() {
            return Err(PerfError::Invalid {
                field: "points",
                value: "[]".into(),
                rule: "a training curve needs at least one point".into(),
            });
        }
        for &(s, r) in &points {
            if !(s > 0.0 && s <= 1.0) {
                return Err(invalid("share", s, "must be within (0, 1]"));
            }
            if !(0.0..=1.0).contains(&r) {
                return Err(invalid("relative_throughput", r, "must be within [0, 1]"));
            }
        }
        points.sort_by(|a, b| a.0.total_cmp(&b.0));
        let mut curve = vec![(0.0, 0.0)];
        for (s, r) in points {
            let &(ps, pr) = curve.last().unwrap_or(&(0.0, 0.0));
            if s == ps {
                return Err(invalid(
                    "share",
                    s,
                    "appears twice; shares must be distinct",
                ));
            }
            if r < pr {
                return Err(invalid(
                    "relative_throughput",
                    r,
                    "must not decrease as the share grows",
                ));
            }
            curve.push((s, r));
        }
        let last = curve.last().map_or(0.0, |p| p.1);
        if last != 1.0 {
            return Err(invalid(
                "relative_throughput",
                last,
                "must be 1 at the largest share",
            ));
        }
        Ok(TrainingCurve { points: curve })
    }

    /// Throughput at `share` relative to the full GPU, in [0, 1]; 0 for shares ≤ 0 or NaN, 1 from the last
    /// point on.
    pub fn relative_throughput(&self, share: f64) -> f64 {
        if share.is_nan() || share <= 0.0 {
            return 0.0;
        }
        let p = self.points.partition_point(|&(s, _)| s <= share);
        if p >= self.points.len() {
            return 1.0;
        }
        // p ≥ 1 because points[0].0 = 0 < share.
        let (s0, r0) = self.points[p - 1];
        let (s1, r1) = self.points[p];
        (r0 + (r1 - r0) * (share - s0) / (s1 - s0)).clamp(r0, r1)
    }

    /// The smallest share whose relative throughput reaches `fraction`: 0 for `fraction ≤ 0`, 1 when the
    /// fraction exceeds 1 or is NaN (nothing less than the whole GPU is known to suffice).
    pub fn knee(&self, fraction: f64) -> f64 {
        if fraction <= 0.0 {
            return 0.0;
        }
        for w in self.points.windows(2) {
            let ((s0, r0), (s1, r1)) = (w[0], w[1]);
            if r1 >= fraction {
                if r0 >= fraction {
                    return s0;
                }
                return (s0 + (fraction - r0) / (r1 - r0) * (s1 - s0)).clamp(s0, s1);
            }
        }
        1.0
    }

    /// The curve's points, starting with `(0, 0)`.
    pub fn points(&self) -> &[(f64, f64)] {
        &self.points
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::perf::table::LatencyUnit;
    use proptest::prelude::*;

    #[test]
    fn interpolates_and_inverts() {
        let c = TrainingCurve::from_points(vec![(0.5, 0.8), (0.25, 0.5), (1.0, 1.0)]).unwrap();
        assert_eq!(c.relative_throughput(0.0), 0.0);
        assert_eq!(c.relative_throughput(f64::NAN), 0.0);
        assert_eq!(c.relative_throughput(1.0), 1.0);
        assert_eq!(c.relative_throughput(1.5), 1.0);
        assert!((c.relative_throughput(0.125) - 0.25).abs() < 1e-12);
        assert!((c.relative_throughput(0.75) - 0.9).abs() < 1e-12);
        assert!((c.knee(0.9) - 0.75).abs() < 1e-12);
        assert_eq!(c.knee(0.5), 0.25);
        assert_eq!(c.knee(0.0), 0.0);
        assert_eq!(c.knee(1.0), 1.0);
        assert_eq!(c.knee(1.1), 1.0);
        assert_eq!(c.knee(f64::NAN), 1.0);
    }

    #[test]
    fn rejects_bad_points() {
        assert!(TrainingCurve::from_points(vec![]).is_err());
        let e = TrainingCurve::from_points(vec![(0.5, 0.9), (1.0, 0.8)]).unwrap_err();
        assert!(e.to_string().contains("must not decrease"), "{e}");
        let e = TrainingCurve::from_points(vec![(0.5, 0.9)]).unwrap_err();
        assert!(e.to_string().contains("must be 1"), "{e}");
        let e = TrainingCurve::from_points(vec![(1.5, 1.0)]).unwrap_err();
        assert!(e.to_string().contains("field 'share' = 1.5"), "{e}");
        assert!(TrainingCurve::from_points(vec![(1.0, 1.0), (1.0, 1.0)]).is_err());
    }

    #[test]
    fn from_model_uses_the_largest_batch_column() {
        let m = PerfModel::from_grid(
            "t",
            LatencyUnit::PerBatch,
            vec![1, 32],
            vec![50, 100],
            vec![0.01, 0.01, 0.4, 0.2],
        )
        .unwrap();
        let c = TrainingCurve::from_model(&m).unwrap();
        assert!((c.relative_throughput(0.5) - 0.5).abs() < 1e-12);
        assert_eq!(c.relative_throughput(1.0), 1.0);
        assert!((c.knee(0.5) - 0.5).abs() < 1e-12);
    }

    proptest! {
        #[test]
        fn monotone_and_bounded(
            raw in proptest::collection::btree_map(1u32..=99, 0.0f64..1.0, 0..8),
            a in 0.0f64..1.2,
            b in 0.0f64..1.2,
        ) {
            let mut vals: Vec<f64> = raw.values().copied().collect();
            vals.sort_by(f64::total_cmp);
            let mut pts: Vec<(f64, f64)> =
                raw.keys().zip(vals).map(|(&s, r)| (f64::from(s) / 100.0, r)).collect();
            pts.push((1.0, 1.0));
            let c = TrainingCurve::from_points(pts).unwrap();
            let (lo, hi) = if a <= b { (a, b) } else { (b, a) };
            let (x, y) = (c.relative_throughput(lo), c.relative_throughput(hi));
            prop_assert!((0.0..=1.0).contains(&x) && x <= y);
            let f = c.relative_throughput(a);
            if f > 0.0 {
                prop_assert!(c.knee(f) <= a + 1e-9);
                prop_assert!(c.relative_throughput(c.knee(f)) >= f - 1e-9);
            }
        }
    }
}
