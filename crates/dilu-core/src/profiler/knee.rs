//! The limit knee (`docs/algorithms.md`, profiling): the smallest SM share at which a function, at its
//! chosen batch, reaches [`LIMIT_KNEE_FRACTION`] of the best throughput it can get. The profiler of
//! `dilu profile`, the simulator's setup and the platform's live profiler all find the knee with
//! [`limit_knee`], over whatever [`Measure`] they have (a table, a performance model, a live instance).

use super::quota::LIMIT_KNEE_FRACTION;
use super::{Measure, ProfileError};

/// The smallest share in `candidates` (SM percentages in ascending order; the first is the request) whose
/// throughput at `batch` reaches `fraction × best`, found by bisection, so a live profiler measures
/// `log2(candidates)` points instead of all of them. Throughput is assumed to grow with the share (a
/// non-monotone measure gets a knee where the bisection crosses the target). The last candidate is taken
/// when none reaches the target. `best` is the best throughput known at this batch; the caller passes the
/// larger of what it has measured and what the last candidate gives.
pub fn limit_knee(
    measure: &mut dyn Measure,
    batch: u32,
    candidates: &[u32],
    best: f64,
    fraction: f64,
) -> Result<u32, ProfileError> {
    let (Some(&first), Some(&last)) = (candidates.first(), candidates.last()) else {
        return Err(ProfileError::Config(crate::FieldError::new(
            "candidates",
            "[]",
            "the knee search needs at least the request's share",
        )));
    };
    let target = fraction * best;
    if measure.measure(batch, first)?.throughput >= target {
        return Ok(first);
    }
    let (mut low, mut high) = (0usize, candidates.len() - 1);
    while high - low > 1 {
        let mid = low + (high - low) / 2;
        if measure.measure(batch, candidates[mid])?.throughput >= target {
            high = mid;
        } else {
            low = mid;
        }
    }
    Ok(if high == 0 { last } else { candidates[high] })
}

/// Shares from `request_pct` to `top_pct` in steps of `step_pct` (the request first, `top_pct` last).
pub fn candidates(request_pct: u32, top_pct: u32, step_pct: u32) -> Vec<u32> {
    let step = step_pct.max(1);
    let top = top_pct.max(request_pct);
    let mut out = vec![request_pct];
    let mut next = (request_pct / step + 1) * step;
    while next < top {
        out.push(next);
        next += step;
    }
    if top > request_pct {
        out.push(top);
    }
    out
}

/// [`limit_knee`] at the published fraction.
pub fn default_knee(
    measure: &mut dyn Measure,
    batch: u32,
    candidates: &[u32],
    best: f64,
) -> Result<u32, ProfileError> {
    limit_knee(measure, batch, candidates, best, LIMIT_KNEE_FRACTION)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::profiler::Measurement;

    /// Throughput rising linearly to a plateau at `flat_pct`, counting measurements.
    struct Plateau {
        flat_pct: u32,
        measured: Vec<u32>,
    }

    impl Measure for Plateau {
        fn measure(&mut self, _batch: u32, sm_pct: u32) -> Result<Measurement, ProfileError> {
            self.measured.push(sm_pct);
            Ok(Measurement {
                latency_s: 0.01,
                throughput: f64::from(sm_pct.min(self.flat_pct)),
            })
        }
    }

    #[test]
    fn the_knee_is_found_by_bisection_on_the_candidates() {
        let c = candidates(10, 100, 10);
        assert_eq!(c, vec![10, 20, 30, 40, 50, 60, 70, 80, 90, 100]);
        let mut m = Plateau {
            flat_pct: 50,
            measured: Vec::new(),
        };
        // Best 50 → target 47.5: 50 is the first share that reaches it.
        assert_eq!(limit_knee(&mut m, 1, &c, 50.0, 0.95).unwrap(), 50);
        assert!(m.measured.len() <= 5, "{:?}", m.measured);
        // The request itself already reaches the target.
        let mut m = Plateau {
            flat_pct: 10,
            measured: Vec::new(),
        };
        assert_eq!(limit_knee(&mut m, 1, &c, 10.0, 0.95).unwrap(), 10);
        assert_eq!(m.measured, vec![10]);
    }

    #[test]
    fn candidates_start_at_the_request_and_end_at_the_top() {
        assert_eq!(candidates(25, 60, 10), vec![25, 30, 40, 50, 60]);
        assert_eq!(candidates(50, 50, 10), vec![50]);
        assert_eq!(candidates(50, 20, 10), vec![50]);
        let mut m = Plateau {
            flat_pct: 100,
            measured: Vec::new(),
        };
        assert!(limit_knee(&mut m, 1, &[], 1.0, 0.95).is_err());
    }
}
