//! [`PerfModel`]: how long one batch takes at any batch size and SM share, from a profile table.
//!
//! Construction. The table must be a full grid (every batch at every SM%). Each point's batch time is its
//! per-batch latency (per-batch tables) or `batch / throughput` (per-token tables, whose throughput counts
//! requests). The grid is then made monotone, because measurement noise makes raw profiles non-monotone and
//! the schedulers built on the model assume "more SMs never slower, bigger batch never faster": for each batch
//! a running minimum over increasing share, then for each share a running maximum over increasing batch (the
//! second pass keeps the first's property).
//!
//! Evaluation of [`PerfModel::batch_time_s`]`(b, share)`:
//! - grid points return the (monotonised) grid value exactly;
//! - between grid batches and between grid shares: bilinear interpolation (linear in batch, linear in share),
//!   which keeps the monotonicity of the grid;
//! - share above the largest grid share: clamped to it (no gain beyond what was measured);
//! - share below the smallest grid share `s0`: `batch_time(b, s0) · s0 / share` (work conservation: the same
//!   work on proportionally fewer SMs);
//! - share `≤ 0` or NaN: `f64::INFINITY` (nothing runs);
//! - batch 0: `0.0`;
//! - batch below the smallest grid batch: the smallest grid batch's time (never faster than measured);
//! - batch above the largest grid batch `B`: linear continuation `T(B, s) + (b − B) · c(s)`, where `c(s)` is
//!   the per-sample cost of the last grid segment `(T(B) − T(B'))/(B − B')` (or `T(B)/B` when that segment is
//!   flat or the grid has a single batch), made non-increasing in share; so time never decreases in batch
//!   and never increases in share.
//!
//! Evaluation allocates nothing and does two binary searches over at most a few dozen grid values.

use super::PerfError;
use super::table::{LatencyUnit, ProfileTable};

/// A monotone, interpolating performance model of one DL function on one GPU type.
#[derive(Debug, Clone, PartialEq)]
pub struct PerfModel {
    model: String,
    unit: LatencyUnit,
    batches: Vec<u32>,
    sm_pcts: Vec<u32>,
    /// `batches` as floats.
    batch_f: Vec<f64>,
    /// `sm_pcts` as fractions of the GPU.
    share_f: Vec<f64>,
    /// Monotonised batch times, row-major: `times[bi * shares + si]`.
    times: Vec<f64>,
    /// Per-sample cost beyond the largest grid batch, per grid share (non-increasing in share).
    tail_cost: Vec<f64>,
}

impl PerfModel {
    /// Builds the model from a full-grid table, monotonising it (see the module documentation).
    pub fn from_table(table: &ProfileTable) -> Result<PerfModel, PerfError> {
        let batches = table.batches();
        let sm_pcts = table.sm_pcts();
        let mut times = Vec::with_capacity(batches.len() * sm_pcts.len());
        for &b in &batches {
            for &s in &sm_pcts {
                let p = table.get(b, s).ok_or_else(|| PerfError::IncompleteGrid {
                    model: table.model().to_owned(),
                    batch: b,
                    sm_pct: s,
                })?;
                let t = match table.unit() {
                    LatencyUnit::PerBatch => p.latency_s,
                    LatencyUnit::PerToken { .. } => f64::from(b) / p.throughput,
                };
                times.push(t);
            }
        }
        Self::from_grid(table.model(), table.unit(), batches, sm_pcts, times)
    }

    /// Builds the model from a grid of batch times (row-major by batch), monotonising it. `batches` and
    /// `sm_pcts` must be strictly increasing; times finite and positive.
    pub(crate) fn from_grid(
        model: &str,
        unit: LatencyUnit,
        batches: Vec<u32>,
        sm_pcts: Vec<u32>,
        mut times: Vec<f64>,
    ) -> Result<PerfModel, PerfError> {
        let invalid = |field: &'static str, value: String, rule: &str| PerfError::Invalid {
            field,
            value,
            rule: format!("model '{model}': {rule}"),
        };
        if batches.is_empty() || sm_pcts.is_empty() {
            return Err(PerfError::Empty {
                model: model.to_owned(),
            });
        }
        if batches[0] == 0 || batches.windows(2).any(|w| w[0] >= w[1]) {
            return Err(invalid(
                "batches",
                format!("{batches:?}"),
                "must be strictly increasing and at least 1",
            ));
        }
        if sm_pcts[0] == 0
            || sm_pcts.windows(2).any(|w| w[0] >= w[1])
            || sm_pcts[sm_pcts.len() - 1] > 100
        {
            return Err(invalid(
                "sm_pcts",
                format!("{sm_pcts:?}"),
                "must be strictly increasing within 1..=100",
            ));
        }
        let ns = sm_pcts.len();
        if times.len() != batches.len() * ns {
            return Err(invalid(
                "times",
                format!("{} values", times.len()),
                "must hold one value per batch and SM share",
            ));
        }
        if let Some(t) = times.iter().find(|t| !(t.is_finite() && **t > 0.0)) {
            return Err(invalid(
                "batch_time_s",
                t.to_string(),
                "must be finite and > 0",
            ));
        }
        // More SMs never slower: running minimum over increasing share.
        for row in times.chunks_mut(ns) {
            for j in 1..ns {
                row[j] = row[j].min(row[j - 1]);
            }
        }
        // Bigger batch never faster: running maximum over increasing batch.
        for i in 1..batches.len() {
            for j in 0..ns {
                times[i * ns + j] = times[i * ns + j].max(times[(i - 1) * ns + j]);
            }
        }
        let nb = batches.len();
        let last = (nb - 1) * ns;
        let mut tail_cost: Vec<f64> = (0..ns)
            .map(|j| {
                let t_last = times[last + j];
                let avg = t_last / f64::from(batches[nb - 1]);
                if nb < 2 {
                    return avg;
                }
                let seg =
                    (t_last - times[last - ns + j]) / f64::from(batches[nb - 1] - batches[nb - 2]);
                if seg > 0.0 { seg } else { avg }
            })
            .collect();
        for j in 1..ns {
            tail_cost[j] = tail_cost[j].min(tail_cost[j - 1]);
        }
        Ok(PerfModel {
            model: model.to_owned(),
            unit,
            batch_f: batches.iter().map(|&b| f64::from(b)).collect(),
            share_f: sm_pcts.iter().map(|&s| f64::from(s) / 100.0).collect(),
            batches,
            sm_pcts,
            times,
            tail_cost,
        })
    }

    /// Seconds to execute one batch of `batch` samples (requests, for per-token models: the whole generation)
    /// at SM share `share` ∈ (0, 1]. See the module documentation for interpolation and extrapolation.
    pub fn batch_time_s(&self, batch: u32, share: f64) -> f64 {
        if batch == 0 {
            return 0.0;
        }
        if share.is_nan() || share <= 0.0 {
            return f64::INFINITY;
        }
        let s0 = self.share_f[0];
        let (share, scale) = if share < s0 {
            (s0, s0 / share)
        } else {
            (share, 1.0)
        };
        let ns = self.share_f.len();
        let (j, ws) = locate(&self.share_f, share);
        let at = |i: usize| -> f64 {
            let row = &self.times[i * ns..(i + 1) * ns];
            if ws == 0.0 {
                row[j]
            } else {
                lerp(row[j], row[j + 1], ws)
            }
        };
        let b = f64::from(batch);
        let nb = self.batch_f.len();
        let t = if b >= self.batch_f[nb - 1] {
            let cost = if ws == 0.0 {
                self.tail_cost[j]
            } else {
                lerp(self.tail_cost[j], self.tail_cost[j + 1], ws)
            };
            at(nb - 1) + (b - self.batch_f[nb - 1]) * cost
        } else if b <= self.batch_f[0] {
            at(0)
        } else {
            let (i, wb) = locate(&self.batch_f, b);
            if wb == 0.0 {
                at(i)
            } else {
                lerp(at(i), at(i + 1), wb)
            }
        };
        t * scale
    }

    /// The latency an SLO is compared with: the batch time for per-batch models, the time per generated token
    /// (batch time / tokens) for per-token models.
    pub fn slo_latency_s(&self, batch: u32, share: f64) -> f64 {
        self.batch_time_s(batch, share) / f64::from(self.unit.units_per_batch())
    }

    /// Samples (requests, for per-token models) per second when batches of `batch` run back to back at
    /// `share`: `batch / batch_time`; 0 when nothing runs.
    pub fn throughput(&self, batch: u32, share: f64) -> f64 {
        let t = self.batch_time_s(batch, share);
        if batch == 0 || !t.is_finite() {
            return 0.0;
        }
        f64::from(batch) / t
    }

    /// The model's name.
    pub fn model(&self) -> &str {
        &self.model
    }

    /// What the model's SLO latency measures.
    pub fn unit(&self) -> LatencyUnit {
        self.unit
    }

    /// The largest batch of the grid.
    pub fn max_grid_batch(&self) -> u32 {
        self.batches.last().copied().unwrap_or(0)
    }

    /// The grid's batch sizes, ascending.
    pub fn grid_batches(&self) -> &[u32] {
        &self.batches
    }

    /// The grid's SM shares in percent, ascending.
    pub fn grid_sm_pcts(&self) -> &[u32] {
        &self.sm_pcts
    }
}

/// `a + (b − a)·w`, kept within `[min(a,b), max(a,b)]` despite rounding.
#[inline]
fn lerp(a: f64, b: f64, w: f64) -> f64 {
    let v = a + (b - a) * w;
    if a <= b { v.clamp(a, b) } else { v.clamp(b, a) }
}

/// For `v` within `grid[0]..=grid[last]`: the segment index `i` and weight `w ∈ [0, 1)` with
/// `v = grid[i] + w·(grid[i+1] − grid[i])`; `w = 0` exactly at grid values and at or above the last one.
#[inline]
fn locate(grid: &[f64], v: f64) -> (usize, f64) {
    let p = grid.partition_point(|&g| g <= v);
    if p == 0 {
        return (0, 0.0);
    }
    let i = p - 1;
    if i + 1 >= grid.len() || grid[i] == v {
        return (i, 0.0);
    }
    let w = (v - grid[i]) / (grid[i + 1] - grid[i]);
    (i, w.clamp(0.0, 1.0))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::perf::table::ProfilePoint;
    use proptest::prelude::*;

    /// A 3 × 3 grid with a non-monotone raw value at (2, 30%).
    fn small() -> PerfModel {
        let mut points = Vec::new();
        let raw = [
            (1, [0.04, 0.02, 0.015]),
            (2, [0.06, 0.03, 0.035]),
            (4, [0.10, 0.05, 0.04]),
        ];
        for (b, row) in raw {
            for (k, t) in row.into_iter().enumerate() {
                points.push(ProfilePoint {
                    batch: b,
                    sm_pct: 10 * (k as u32 + 1),
                    latency_s: t,
                    throughput: f64::from(b) / t,
                });
            }
        }
        let table = ProfileTable::new("toy", LatencyUnit::PerBatch, points).unwrap();
        PerfModel::from_table(&table).unwrap()
    }

    #[test]
    fn grid_interpolation_and_extrapolation() {
        let m = small();
        assert_eq!(m.batch_time_s(1, 0.1), 0.04);
        assert_eq!(m.batch_time_s(2, 0.3), 0.03); // monotonised from 0.035
        assert!((m.batch_time_s(1, 0.15) - 0.03).abs() < 1e-12);
        assert!((m.batch_time_s(3, 0.1) - 0.08).abs() < 1e-12);
        assert_eq!(m.batch_time_s(1, 0.9), 0.015); // clamped share
        assert!((m.batch_time_s(1, 0.05) - 0.08).abs() < 1e-12); // work conservation
        assert_eq!(m.batch_time_s(1, 0.0), f64::INFINITY);
        assert_eq!(m.batch_time_s(1, f64::NAN), f64::INFINITY);
        assert_eq!(m.batch_time_s(1, -0.5), f64::INFINITY);
        assert_eq!(m.batch_time_s(0, 0.5), 0.0);
        // Beyond batch 4 at 10%: last segment costs (0.10 − 0.06)/2 = 0.02 per sample.
        assert!((m.batch_time_s(6, 0.1) - 0.14).abs() < 1e-12);
        assert_eq!(m.throughput(0, 0.5), 0.0);
        assert_eq!(m.throughput(1, 0.0), 0.0);
        assert!((m.throughput(4, 0.3) - 100.0).abs() < 1e-9);
        assert_eq!(m.max_grid_batch(), 4);
        assert_eq!(m.grid_batches(), &[1, 2, 4]);
        assert_eq!(m.grid_sm_pcts(), &[10, 20, 30]);
        assert_eq!(m.model(), "toy");
    }

    #[test]
    fn per_token_models_divide_by_tokens() {
        let points = vec![ProfilePoint {
            batch: 4,
            sm_pct: 100,
            latency_s: 0.05,
            throughput: 2.5,
        }];
        let t = ProfileTable::new("llm", LatencyUnit::PerToken { tokens: 32 }, points).unwrap();
        let m = PerfModel::from_table(&t).unwrap();
        assert!((m.batch_time_s(4, 1.0) - 1.6).abs() < 1e-12);
        assert!((m.slo_latency_s(4, 1.0) - 0.05).abs() < 1e-12);
        assert!((m.throughput(4, 1.0) - 2.5).abs() < 1e-12);
        // Single grid batch: continuation at the average per-sample cost.
        assert!((m.batch_time_s(8, 1.0) - 3.2).abs() < 1e-12);
        assert_eq!(m.batch_time_s(2, 1.0), 1.6);
    }

    #[test]
    fn incomplete_grid_is_refused() {
        let p = |batch, sm_pct| ProfilePoint {
            batch,
            sm_pct,
            latency_s: 0.1,
            throughput: 10.0,
        };
        let t = ProfileTable::new(
            "holey",
            LatencyUnit::PerBatch,
            vec![p(1, 10), p(1, 20), p(2, 10)],
        )
        .unwrap();
        let e = PerfModel::from_table(&t).unwrap_err();
        assert!(
            matches!(
                e,
                PerfError::IncompleteGrid {
                    batch: 2,
                    sm_pct: 20,
                    ..
                }
            ),
            "{e:?}"
        );
    }

    /// A random grid: batches, shares, and positive (not necessarily monotone) times.
    fn arb_model() -> impl Strategy<Value = PerfModel> {
        (1usize..6, 1usize..8).prop_flat_map(|(nb, ns)| {
            (
                proptest::collection::btree_set(1u32..200, nb),
                proptest::collection::btree_set(1u32..=100, ns),
                proptest::collection::vec(0.0001f64..10.0, nb * ns),
            )
                .prop_map(|(b, s, t)| {
                    PerfModel::from_grid(
                        "arb",
                        LatencyUnit::PerBatch,
                        b.into_iter().collect(),
                        s.into_iter().collect(),
                        t,
                    )
                    .unwrap()
                })
        })
    }

    /// `a ≤ b` up to floating-point rounding.
    fn le(a: f64, b: f64) -> bool {
        a <= b + 1e-12 * b.abs().max(1e-300)
    }

    proptest! {
        #[test]
        fn monotone_in_share(m in arb_model(), b in 1u32..400, s1 in 0.001f64..1.2, s2 in 0.001f64..1.2) {
            let (lo, hi) = if s1 <= s2 { (s1, s2) } else { (s2, s1) };
            prop_assert!(le(m.batch_time_s(b, hi), m.batch_time_s(b, lo)));
        }

        #[test]
        fn monotone_in_batch(m in arb_model(), b1 in 0u32..400, b2 in 0u32..400, s in 0.001f64..1.2) {
            let (lo, hi) = if b1 <= b2 { (b1, b2) } else { (b2, b1) };
            prop_assert!(le(m.batch_time_s(lo, s), m.batch_time_s(hi, s)));
        }

        #[test]
        fn finite_and_positive(m in arb_model(), b in 1u32..100_000, s in 1e-6f64..=1.0) {
            let t = m.batch_time_s(b, s);
            prop_assert!(t.is_finite() && t > 0.0, "t = {t}");
            let x = m.throughput(b, s);
            prop_assert!(x.is_finite() && x > 0.0);
        }

        #[test]
        fn exact_at_grid_points(m in arb_model()) {
            let ns = m.sm_pcts.len();
            for (i, &b) in m.grid_batches().iter().enumerate() {
                for (j, &s) in m.grid_sm_pcts().iter().enumerate() {
                    prop_assert_eq!(m.batch_time_s(b, f64::from(s) / 100.0), m.times[i * ns + j]);
                }
            }
        }

        #[test]
        fn monotonised_grid_keeps_the_envelope(b in proptest::collection::vec(0.001f64..1.0, 12)) {
            // Monotonising never lowers a time below the raw minimum nor raises it above the raw maximum.
            let m = PerfModel::from_grid(
                "g",
                LatencyUnit::PerBatch,
                vec![1, 2, 4],
                vec![10, 50, 90, 100],
                b.clone(),
            )
            .unwrap();
            let lo = b.iter().copied().fold(f64::INFINITY, f64::min);
            let hi = b.iter().copied().fold(0.0, f64::max);
            prop_assert!(m.times.iter().all(|&t| t >= lo && t <= hi));
        }
    }
}
