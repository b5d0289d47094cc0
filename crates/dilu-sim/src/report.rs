//! Per-percent columns of a placement run, computed exactly as FGD's analysis scripts do
//! (`merge_*_discrete.py`, `docs/algorithms.md` §10), and the points the CLI reports.

use crate::openb_experiment::ArrivalRow;
use serde::Serialize;

/// The last arrived-% column (FGD reports 0..=130).
pub const LAST_COLUMN: usize = 130;

/// Columns 0..=130 of allocation %, fragment % of capacity and fragmentation ratio %; `None` where no event
/// falls near the column.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct PlacementColumns {
    /// GPU allocation ratio, % of cluster GPU (rounded to 2 decimals, like FGD's CSV).
    pub alloc_pct: Vec<Option<f64>>,
    /// Fragment amount, % of cluster GPU (rounded to 2 decimals).
    pub frag_total_pct: Vec<Option<f64>>,
    /// Fragmentation ratio, % of idle GPU (unrounded mean, like FGD's CSV).
    pub frag_ratio_pct: Vec<Option<f64>>,
}

/// One reported point of a placement run.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct PlacementPoint {
    /// Arrived GPU request, % of cluster GPU capacity.
    pub arrived_pct: u32,
    /// Unallocated GPU, % of cluster GPU (100 − allocation).
    pub unallocated_gpu_pct: f64,
    /// Fragment, % of idle GPU.
    pub frag_ratio_pct: f64,
    /// Fragment, % of cluster GPU.
    pub frag_total_pct: f64,
}

/// Python's `round(x, 2)` on a float: correctly rounded from the exact binary value, as Rust's formatter does.
pub fn round2(x: f64) -> f64 {
    format!("{x:.2}").parse().unwrap_or(x)
}

fn mean(values: impl Iterator<Item = f64>) -> Option<f64> {
    let (sum, n) = values.fold((0.0, 0usize), |(s, n), v| (s + v, n + 1));
    (n > 0).then(|| sum / n as f64)
}

impl PlacementColumns {
    /// Groups the arrival rows by arrived % (rounded half to even) and averages each group; a column with no
    /// event averages the events within ±1 instead.
    pub fn from_rows(rows: &[ArrivalRow], total_gpus: u32) -> Self {
        let g = f64::from(total_gpus);
        let arrive: Vec<i64> = rows
            .iter()
            .map(|r| (r.arrived_milli as f64 / g / 10.0).round_ties_even() as i64)
            .collect();
        let alloc: Vec<f64> = rows
            .iter()
            .map(|r| round2(r.used_milli as f64 / g / 10.0))
            .collect();
        // FGD's log prints both fragmentation figures with %.2f before the scripts read them.
        let frag: Vec<f64> = rows.iter().map(|r| round2(r.frag_milli)).collect();
        let ratio: Vec<f64> = rows.iter().map(|r| round2(r.frag_ratio_pct)).collect();
        let mut out = PlacementColumns::default();
        for k in 0..=LAST_COLUMN as i64 {
            let mut members: Vec<usize> = (0..rows.len()).filter(|&i| arrive[i] == k).collect();
            if members.is_empty() {
                members = (0..rows.len())
                    .filter(|&i| (k - 1..=k + 1).contains(&arrive[i]))
                    .collect();
            }
            out.alloc_pct
                .push(mean(members.iter().map(|&i| alloc[i])).map(round2));
            out.frag_total_pct.push(
                mean(members.iter().map(|&i| frag[i])).map(|m| round2(100.0 * m / 1000.0 / g)),
            );
            out.frag_ratio_pct
                .push(mean(members.iter().map(|&i| ratio[i])));
        }
        out
    }

    /// Points at the given arrived-% columns; columns with no data are skipped.
    pub fn points(&self, at: &[u32]) -> Vec<PlacementPoint> {
        at.iter()
            .filter_map(|&k| {
                let i = k as usize;
                Some(PlacementPoint {
                    arrived_pct: k,
                    unallocated_gpu_pct: round2(100.0 - (*self.alloc_pct.get(i)?)?),
                    frag_ratio_pct: round2((*self.frag_ratio_pct.get(i)?)?),
                    frag_total_pct: (*self.frag_total_pct.get(i)?)?,
                })
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(arrived: u64, used: u64) -> ArrivalRow {
        ArrivalRow {
            arrived_milli: arrived,
            used_milli: used,
            frag_milli: 0.0,
            frag_ratio_pct: 0.0,
        }
    }

    #[test]
    fn python_rounding() {
        assert_eq!(round2(2.675), 2.67); // 2.675 is 2.67499999… in binary
        assert_eq!(round2(0.125), 0.12); // exact tie, half to even
        assert_eq!(round2(95.14499), 95.14);
    }

    #[test]
    fn columns_average_every_event_of_a_percent_and_fall_back_to_neighbours() {
        // 10 GPUs: 1% of capacity = 100 milli.
        let rows = [row(100, 100), row(140, 140), row(160, 100), row(400, 300)];
        let c = PlacementColumns::from_rows(&rows, 10);
        assert_eq!(c.alloc_pct[1], Some(1.2)); // events at 1.0% and 1.4% -> mean(1.0, 1.4)
        assert_eq!(c.alloc_pct[2], Some(1.0)); // 1.6% rounds to 2
        assert_eq!(c.alloc_pct[3], Some(2.0)); // no event at 3: neighbours 2 and 4 -> mean(1.0, 3.0)
        assert_eq!(c.alloc_pct[4], Some(3.0));
        assert_eq!(c.alloc_pct[6], None);
        let p = c.points(&[4, 6]);
        assert_eq!(p.len(), 1);
        assert_eq!(p[0].unallocated_gpu_pct, 97.0);
    }
}
