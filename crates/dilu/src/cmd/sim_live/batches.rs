//! Batch times on both sides of `dilu sim validate`: what each live worker reports in
//! `dilu_worker_batch_seconds{batch_size}` (scraped while the scenario runs), and the factor
//! `--live-service-time` scales a function's table by so that the simulator's batches take as long as the
//! live ones did.

use std::collections::BTreeMap;

use dilu_sim::serve::metrics::BatchTimes;

/// One function's batches by size.
pub(super) type ByBatch = BTreeMap<u32, BatchTimes>;

const FAMILY: &str = "dilu_worker_batch_seconds";
const SQUARES: &str = "dilu_worker_batch_square_seconds_total{";

/// What one sample line adds to a size's [`BatchTimes`].
enum Part {
    Sum,
    Count,
    Squares,
}

/// The `dilu_worker_batch_seconds` and `dilu_worker_batch_square_seconds_total` samples of a worker's
/// `/metrics` text, by batch size. Lines it does not understand are skipped (the exposition holds every other
/// metric too).
pub(super) fn parse(text: &str) -> ByBatch {
    let mut out = ByBatch::new();
    for line in text.lines() {
        let (part, rest) = if let Some(r) = line.strip_prefix(SQUARES) {
            (Part::Squares, r)
        } else if let Some(r) = line.strip_prefix(FAMILY) {
            if let Some(r) = r.strip_prefix("_sum{") {
                (Part::Sum, r)
            } else if let Some(r) = r.strip_prefix("_count{") {
                (Part::Count, r)
            } else {
                continue;
            }
        } else {
            continue;
        };
        let Some((labels, value)) = rest.split_once("} ") else {
            continue;
        };
        let Some(size) = labels
            .strip_prefix("batch_size=\"")
            .and_then(|l| l.strip_suffix('"'))
            .and_then(|s| s.parse::<u32>().ok())
        else {
            continue;
        };
        let Ok(value) = value.trim().parse::<f64>() else {
            continue;
        };
        let t = out.entry(size).or_default();
        match part {
            Part::Sum => t.seconds = value,
            Part::Count => t.batches = value as u64,
            Part::Squares => t.squares = value,
        }
    }
    out
}

/// The executor's seconds over every batch size in a worker's `/metrics` text, once every batch it started
/// (`dilu_worker_batches_total`) has its time recorded: the worker answers a batch's requests before it
/// records the batch's time (after the batch's last CPU charge, which may wait for the share), so a scrape
/// right after the answers can miss the batch. `None` while one is missing.
pub(super) fn settled_seconds(text: &str) -> Option<f64> {
    let times = parse(text);
    let recorded: u64 = times.values().map(|t| t.batches).sum();
    let started = text
        .lines()
        .find_map(|line| line.strip_prefix("dilu_worker_batches_total "))
        .and_then(|v| v.trim().parse::<f64>().ok())
        .map_or(0, |v| v as u64);
    (recorded >= started).then(|| times.values().map(|t| t.seconds).sum())
}

/// What each live instance's worker reported: its first scrape when it was already there as the run began (the
/// batches before the run, e.g. the platform's profiling at deploy, are not the run's), and its latest one.
#[derive(Debug, Default)]
pub(super) struct Ledger {
    instances: BTreeMap<String, Seen>,
}

#[derive(Debug)]
struct Seen {
    func: usize,
    baseline: ByBatch,
    latest: ByBatch,
}

impl Ledger {
    /// Records a scrape of instance `id` (of function `func`); `before_run` marks the first round, taken as the
    /// run begins, whose counts are subtracted.
    pub(super) fn record(&mut self, id: &str, func: usize, scraped: ByBatch, before_run: bool) {
        match self.instances.get_mut(id) {
            Some(seen) => seen.latest = scraped,
            None => {
                let baseline = if before_run {
                    scraped.clone()
                } else {
                    ByBatch::new()
                };
                self.instances.insert(
                    id.to_owned(),
                    Seen {
                        func,
                        baseline,
                        latest: scraped,
                    },
                );
            }
        }
    }

    /// Batches in every instance's latest scrape (baselines included): what a later scrape can only add to.
    pub(super) fn batches_seen(&self) -> u64 {
        self.instances
            .values()
            .flat_map(|seen| seen.latest.values())
            .map(|t| t.batches)
            .sum()
    }

    /// Scrapes with `scrape` until the batches seen stop moving, at most `tries` times, `pause` apart: a
    /// worker records a batch's time after the batch's last CPU charge, which follows its answers, so the
    /// scrape right after the last answer can miss the last batch.
    pub(super) fn settle(
        &mut self,
        tries: usize,
        pause: std::time::Duration,
        mut scrape: impl FnMut(&mut Ledger),
    ) {
        let mut seen = None;
        for _ in 0..tries {
            scrape(self);
            let now = self.batches_seen();
            if seen == Some(now) {
                return;
            }
            seen = Some(now);
            std::thread::sleep(pause);
        }
    }

    /// The run's batches per function (`functions` of them): each instance's latest scrape less its baseline.
    pub(super) fn totals(&self, functions: usize) -> Vec<ByBatch> {
        let mut out = vec![ByBatch::new(); functions];
        for seen in self.instances.values() {
            let Some(f) = out.get_mut(seen.func) else {
                continue;
            };
            for (&size, t) in &seen.latest {
                let b = seen.baseline.get(&size).copied().unwrap_or_default();
                let batches = t.batches.saturating_sub(b.batches);
                if batches == 0 {
                    continue;
                }
                let e = f.entry(size).or_default();
                e.batches += batches;
                e.seconds += (t.seconds - b.seconds).max(0.0);
                e.squares += (t.squares - b.squares).max(0.0);
            }
        }
        out
    }
}

/// How much longer the live batches took than the simulator's: Σ live time / Σ (live batches × the simulator's
/// mean time at that size), over the sizes both ran — the live run's mix weighs the sizes. `None` when no size
/// was run on both sides.
pub(super) fn live_over_sim(live: &ByBatch, sim: &ByBatch) -> Option<f64> {
    let (mut num, mut den) = (0.0, 0.0);
    for (size, l) in live {
        let Some(s) = sim.get(size) else { continue };
        let mean = s.mean_s();
        if l.batches == 0 || !mean.is_finite() || mean <= 0.0 {
            continue;
        }
        num += l.seconds;
        den += l.batches as f64 * mean;
    }
    (den > 0.0 && num > 0.0).then(|| num / den)
}

/// The variation of one batch's time around its size's mean, pooled over the sizes run at least
/// [`MIN_BATCHES_PER_SIZE`] times (each size's squared coefficient of variation weighed by its batches): the
/// `service_cv` that makes the simulator's batches vary as these did. `None` without such a size.
pub(super) fn pooled_cv(times: &ByBatch) -> Option<f64> {
    let (mut num, mut den) = (0.0, 0.0);
    for t in times.values().filter(|t| t.batches >= MIN_BATCHES_PER_SIZE) {
        let cv = t.cv();
        if cv.is_finite() {
            num += t.batches as f64 * cv * cv;
            den += t.batches as f64;
        }
    }
    (den > 0.0).then(|| (num / den).sqrt())
}

/// Fewest live batches of one size whose mean time gives that size its own factor.
pub(super) const MIN_BATCHES_PER_SIZE: u64 = 5;

/// A factor per batch size of `grid` (a table's batch sizes): the live mean time over the simulated mean time
/// at that size when the live run ran at least [`MIN_BATCHES_PER_SIZE`] batches of it (and the simulator some),
/// the overall [`live_over_sim`] otherwise — on a CPU device a pause between requests slows a batch of one more
/// than a batch of four, so one factor for all sizes misplaces the large ones. `None` when no size was run on
/// both sides.
pub(super) fn factors_by_size(
    live: &ByBatch,
    sim: &ByBatch,
    grid: &[u32],
) -> Option<BTreeMap<u32, f64>> {
    let overall = live_over_sim(live, sim)?;
    Some(
        grid.iter()
            .map(|&g| {
                let own = match (live.get(&g), sim.get(&g)) {
                    (Some(l), Some(s)) if l.batches >= MIN_BATCHES_PER_SIZE => {
                        let f = l.mean_s() / s.mean_s();
                        (f.is_finite() && f > 0.0).then_some(f)
                    }
                    _ => None,
                };
                (g, own.unwrap_or(overall))
            })
            .collect(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn times(batches: u64, seconds: f64) -> BatchTimes {
        BatchTimes {
            batches,
            seconds,
            squares: 0.0,
        }
    }

    #[test]
    fn parses_the_workers_summary_and_nothing_else() {
        let text = "\
# HELP dilu_worker_batch_seconds Model execution time per batch, by batch size.
# TYPE dilu_worker_batch_seconds summary
dilu_worker_batch_seconds_sum{batch_size=\"1\"} 0.25
dilu_worker_batch_seconds_count{batch_size=\"1\"} 5
dilu_worker_batch_seconds_sum{batch_size=\"4\"} 2
dilu_worker_batch_seconds_count{batch_size=\"4\"} 10
# TYPE dilu_worker_batch_square_seconds_total counter
dilu_worker_batch_square_seconds_total{batch_size=\"1\"} 0.0125
dilu_worker_batch_square_seconds_total{batch_size=\"4\"} 0.5
dilu_worker_batch_size_sum 45
dilu_worker_batch_seconds_sum{batch_size=\"x\"} 9
dilu_worker_batches_total 15
";
        let m = parse(text);
        assert_eq!(m.len(), 2, "{m:?}");
        assert_eq!(
            (m[&1].batches, m[&1].seconds, m[&1].squares),
            (5, 0.25, 0.0125)
        );
        assert_eq!(
            (m[&4].batches, m[&4].seconds, m[&4].squares),
            (10, 2.0, 0.5)
        );
    }

    #[test]
    fn executor_seconds_wait_for_every_started_batch() {
        let text = |started: u64| {
            format!(
                "dilu_worker_batch_seconds_sum{{batch_size=\"1\"}} 0.25\n\
                 dilu_worker_batch_seconds_count{{batch_size=\"1\"}} 5\n\
                 dilu_worker_batch_seconds_sum{{batch_size=\"4\"}} 2\n\
                 dilu_worker_batch_seconds_count{{batch_size=\"4\"}} 10\n\
                 dilu_worker_batches_total {started}\n"
            )
        };
        assert_eq!(settled_seconds(&text(15)), Some(2.25));
        assert_eq!(settled_seconds(&text(16)), None);
        // No batch yet: nothing to wait for.
        assert_eq!(settled_seconds("dilu_worker_batches_total 0\n"), Some(0.0));
    }

    #[test]
    fn an_instance_there_before_the_run_counts_from_its_first_scrape() {
        let mut l = Ledger::default();
        // Instance a served 3 profiling batches before the run; b appears during it.
        l.record("a", 0, [(1, times(3, 0.3))].into(), true);
        l.record(
            "a",
            0,
            [(1, times(13, 1.3)), (2, times(4, 0.8))].into(),
            false,
        );
        l.record("b", 0, [(1, times(2, 0.2))].into(), false);
        l.record("b", 0, [(1, times(6, 0.6))].into(), false);
        let t = l.totals(1);
        assert_eq!(t[0][&1].batches, 16);
        assert!((t[0][&1].seconds - 1.6).abs() < 1e-9);
        assert_eq!(t[0][&2], times(4, 0.8));
    }

    #[test]
    fn the_last_scrape_waits_for_a_batch_recorded_after_its_answers() {
        // The worker records the last batch on the second scrape; the third sees no change and ends it.
        let counts = [5u64, 6, 6, 6, 9];
        let mut calls = 0;
        let mut l = Ledger::default();
        l.settle(10, std::time::Duration::ZERO, |l| {
            l.record("a", 0, [(1, times(counts[calls], 0.1))].into(), false);
            calls += 1;
        });
        assert_eq!(calls, 3);
        assert_eq!(l.totals(1)[0][&1].batches, 6);
        // A count that keeps moving stops at the bound.
        let mut calls = 0;
        l.settle(4, std::time::Duration::ZERO, |l| {
            calls += 1;
            l.record("a", 0, [(1, times(10 + calls, 0.1))].into(), false);
        });
        assert_eq!(calls, 4);
    }

    #[test]
    fn the_factor_weighs_sizes_by_the_live_mix() {
        // Live: batch 1 at 60 ms (10 of them), batch 4 at 240 ms (5); simulated: 50 and 200 ms.
        let live: ByBatch = [(1, times(10, 0.6)), (4, times(5, 1.2))].into();
        let sim: ByBatch = [(1, times(100, 5.0)), (4, times(2, 0.4)), (2, times(1, 0.1))].into();
        let r = live_over_sim(&live, &sim).expect("sizes in common");
        assert!((r - 1.2).abs() < 1e-9, "{r}");
        // A size the simulator never ran does not count; nothing in common gives no factor.
        let only_live: ByBatch = [(8, times(3, 3.0))].into();
        assert_eq!(live_over_sim(&only_live, &sim), None);
    }

    #[test]
    fn a_size_run_often_enough_gets_its_own_factor() {
        // Batch 1: 10 live at 60 ms against 50 simulated (1.2); batch 2: 4 live only (the overall factor);
        // batch 4: 5 live at 240 ms against 300 (0.8).
        let live: ByBatch = [(1, times(10, 0.6)), (2, times(4, 0.4)), (4, times(5, 1.2))].into();
        let sim: ByBatch = [(1, times(10, 0.5)), (2, times(4, 0.4)), (4, times(2, 0.6))].into();
        let overall = live_over_sim(&live, &sim).unwrap();
        let f = factors_by_size(&live, &sim, &[1, 2, 4, 8]).unwrap();
        assert!((f[&1] - 1.2).abs() < 1e-9, "{f:?}");
        assert!((f[&2] - overall).abs() < 1e-9, "{f:?}");
        assert!((f[&4] - 0.8).abs() < 1e-9, "{f:?}");
        // A grid size the live run never ran takes the overall factor too.
        assert!((f[&8] - overall).abs() < 1e-9, "{f:?}");
        assert_eq!(factors_by_size(&ByBatch::new(), &sim, &[1]), None);
    }

    #[test]
    fn the_pooled_variation_weighs_sizes_by_their_batches() {
        // Size 1: 10 batches, 5 of 40 ms and 5 of 60 ms (mean 50, cv 0.2); size 2: 10 of 100 ms (cv 0);
        // size 4: 2 batches only (left out).
        let ones = BatchTimes {
            batches: 10,
            seconds: 0.5,
            squares: 5.0 * 0.04 * 0.04 + 5.0 * 0.06 * 0.06,
        };
        assert!((ones.cv() - 0.2).abs() < 1e-9, "{}", ones.cv());
        let twos = BatchTimes {
            batches: 10,
            seconds: 1.0,
            squares: 10.0 * 0.01,
        };
        let fours = BatchTimes {
            batches: 2,
            seconds: 0.2,
            squares: 0.5,
        };
        let cv = pooled_cv(&[(1, ones), (2, twos), (4, fours)].into()).expect("sizes");
        assert!((cv - (0.04_f64 / 2.0).sqrt()).abs() < 1e-6, "{cv}");
        assert_eq!(pooled_cv(&[(4, fours)].into()), None);
    }
}
