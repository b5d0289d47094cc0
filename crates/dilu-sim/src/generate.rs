//! Synthetic instance traces with the distribution of Dilu's reference generator.
//!
//! The traces used in the Dilu paper may not be redistributed, so experiments
//! and tests generate their own with the published distribution:
//!
//! * `N` start events, one per second; types in fixed proportions
//!   60 % inference, 20 % llm-inference, 20 % training (shuffled);
//! * inference: 1 GPU, memory an integer in 3..=10 GB, `sm_request` ~ U(0.2, 0.4),
//!   `sm_limit = max(req + 0.2, U(0.3, 0.6))`;
//! * llm-inference: 1 GPU, memory an integer in 20..=30 GB, `sm_request` ~ U(0.4, 0.6),
//!   `sm_limit` ~ U(req + 0.2, min(req + 0.99, 0.8));
//! * training: 2 or 4 GPUs, the same memory on each, one of 25/30/35/40 GB,
//!   `sm_request` ~ U(0.4, 0.8), `sm_limit = max(req + 0.2, U(0.6, 1.0))`;
//! * 60 % of `N` (llm-)inference instances are deleted 60..=180 s after their
//!   start and 10 % of `N` training jobs 600..=900 s after (all of a class if it
//!   has fewer), chosen at random.
//!
//! Like the reference files, each sampled share is rounded to 2 decimals while
//! `req + 0.2` is kept unrounded (hence values like `0.42000000000000004`).
//! Everything is drawn from [`Prng`], so a seed fully determines the trace.

use std::collections::HashSet;

use crate::instance_trace::{InstanceType, TraceAction, TraceEvent, TraceInstance};
use crate::prng::Prng;

/// 2024-06-19 15:46:09 UTC, the start time of the example line in Dilu's traces.
pub const DEFAULT_START_TIME_S: i64 = 1_718_811_969;

/// Percentage of `N` instances that are inference (the rest of 100 % after the two below).
pub const INFERENCE_PERCENT: usize = 60;
/// Percentage of `N` instances that are llm-inference.
pub const LLM_INFERENCE_PERCENT: usize = 20;
/// Percentage of `N` instances that are training jobs.
pub const TRAINING_PERCENT: usize = 20;
/// Percentage of `N` that are deleted from the (llm-)inference instances.
pub const INFERENCE_DELETE_PERCENT: usize = 60;
/// Percentage of `N` that are deleted from the training jobs.
pub const TRAINING_DELETE_PERCENT: usize = 10;

/// Parameters of [`generate_instance_trace`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GenerateConfig {
    /// Number of instances `N` (start events); arrivals are 1 s apart.
    pub instances: usize,
    /// Seed of the PRNG: the same seed gives the identical trace.
    pub seed: u64,
    /// Time of the first arrival, seconds since the Unix epoch (UTC).
    pub start_time_s: i64,
}

impl Default for GenerateConfig {
    /// 3200 instances (the largest reference trace), seed 0, starting at
    /// 2024-06-19 15:46:09 UTC.
    fn default() -> Self {
        Self {
            instances: 3200,
            seed: 0,
            start_time_s: DEFAULT_START_TIME_S,
        }
    }
}

/// `percent` % of `n`, rounded half up (exact for multiples of 10 and 100).
fn percent_of(n: usize, percent: usize) -> usize {
    (n * percent + 50) / 100
}

/// Rounds to 2 decimals like Python's `round(x, 2)`: the nearest double to k/100.
fn round2(x: f64) -> f64 {
    (x * 100.0).round() / 100.0
}

const NAME_ALPHABET: &[u8] = b"abcdefghijklmnopqrstuvwxyz0123456789";

/// A fresh `<type>-<6 lowercase alnum>` name not yet in `used`.
fn unique_name(rng: &mut Prng, kind: InstanceType, used: &mut HashSet<String>) -> String {
    loop {
        let suffix: String = (0..6)
            .map(|_| char::from(NAME_ALPHABET[rng.below(NAME_ALPHABET.len() as u64) as usize]))
            .collect();
        let name = format!("{}-{suffix}", kind.as_str());
        if used.insert(name.clone()) {
            return name;
        }
    }
}

/// Samples one instance of `kind` (resources only; the caller names it).
fn sample_instance(rng: &mut Prng, kind: InstanceType, service_name: String) -> TraceInstance {
    let (gpu_num, memory_gb, sm_request, sm_limit) = match kind {
        InstanceType::Inference => {
            let mem = rng.range_inclusive(3, 10) as f64;
            let req = round2(rng.uniform(0.2, 0.4));
            let limit = (req + 0.2).max(round2(rng.uniform(0.3, 0.6)));
            (1, vec![mem], req, limit)
        }
        InstanceType::LlmInference => {
            let mem = rng.range_inclusive(20, 30) as f64;
            let req = round2(rng.uniform(0.4, 0.6));
            let limit = round2(rng.uniform(req + 0.2, (req + 0.99).min(0.8)));
            (1, vec![mem], req, limit)
        }
        InstanceType::Training => {
            let gpus = rng.choose(&[2u32, 4]).copied().unwrap_or(2);
            let mem = rng
                .choose(&[25.0, 30.0, 35.0, 40.0])
                .copied()
                .unwrap_or(25.0);
            let req = round2(rng.uniform(0.4, 0.8));
            let limit = (req + 0.2).max(round2(rng.uniform(0.6, 1.0)));
            (gpus, vec![mem; gpus as usize], req, limit)
        }
    };
    TraceInstance {
        service_name,
        kind,
        gpu_num,
        sm_request,
        // `req + 0.2` can never exceed 1 here, but keep the trace valid regardless.
        sm_limit: sm_limit.min(1.0),
        memory_gb,
    }
}

/// Generates a trace with Dilu's reference distribution (see the module docs).
///
/// Events are sorted by time; events in the same second keep generation order,
/// so starts precede deletes. `line` is set to the 1-based position, so
/// `parse_instance_trace(&write_instance_trace(&t), ..) == Ok(t)`.
pub fn generate_instance_trace(cfg: &GenerateConfig) -> Vec<TraceEvent> {
    let n = cfg.instances;
    let mut rng = Prng::new(cfg.seed);

    let n_llm = percent_of(n, LLM_INFERENCE_PERCENT);
    let n_train = percent_of(n, TRAINING_PERCENT).min(n - n_llm);
    let n_inf = n - n_llm - n_train;
    let mut kinds = Vec::with_capacity(n);
    kinds.extend(std::iter::repeat_n(InstanceType::Inference, n_inf));
    kinds.extend(std::iter::repeat_n(InstanceType::LlmInference, n_llm));
    kinds.extend(std::iter::repeat_n(InstanceType::Training, n_train));
    rng.shuffle(&mut kinds);

    let mut used = HashSet::with_capacity(n);
    // (time, instance) of each start, in arrival order.
    let mut starts: Vec<(i64, TraceInstance)> = Vec::with_capacity(n);
    for (i, &kind) in kinds.iter().enumerate() {
        let name = unique_name(&mut rng, kind, &mut used);
        let time = cfg.start_time_s + i as i64;
        starts.push((time, sample_instance(&mut rng, kind, name)));
    }

    let mut events: Vec<TraceEvent> = starts
        .iter()
        .map(|(time, inst)| TraceEvent {
            line: 0,
            time_s: *time,
            action: TraceAction::Start,
            instance: inst.clone(),
        })
        .collect();

    let delete_classes = [
        (
            percent_of(n, INFERENCE_DELETE_PERCENT),
            (60, 180),
            &[InstanceType::Inference, InstanceType::LlmInference][..],
        ),
        (
            percent_of(n, TRAINING_DELETE_PERCENT),
            (600, 900),
            &[InstanceType::Training][..],
        ),
    ];
    for (count, (min_life, max_life), classes) in delete_classes {
        let mut pool: Vec<usize> = starts
            .iter()
            .enumerate()
            .filter(|(_, (_, inst))| classes.contains(&inst.kind))
            .map(|(i, _)| i)
            .collect();
        rng.shuffle(&mut pool);
        pool.truncate(count);
        for idx in pool {
            let (start, inst) = &starts[idx];
            events.push(TraceEvent {
                line: 0,
                time_s: start + rng.range_inclusive(min_life, max_life),
                action: TraceAction::Delete,
                instance: inst.clone(),
            });
        }
    }

    // Stable: equal keys keep generation order (all starts were generated first).
    events.sort_by_key(|e| (e.time_s, e.action == TraceAction::Delete));
    for (i, ev) in events.iter_mut().enumerate() {
        ev.line = i + 1;
    }
    events
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::instance_trace::{parse_instance_trace, parse_trace_time, write_instance_trace};

    #[test]
    fn default_start_time_is_the_reference_time() {
        assert_eq!(
            parse_trace_time("2024-06-19 15:46:09"),
            Ok(DEFAULT_START_TIME_S)
        );
        assert_eq!(GenerateConfig::default().start_time_s, DEFAULT_START_TIME_S);
    }

    #[test]
    fn round2_gives_python_values() {
        assert_eq!(round2(0.41999), 0.42);
        assert_eq!(round2(0.2), 0.2);
        assert_eq!(round2(0.999), 1.0);
        assert_eq!(0.22 + 0.2, 0.42000000000000004);
    }

    #[test]
    fn small_and_degenerate_sizes() {
        assert!(
            generate_instance_trace(&GenerateConfig {
                instances: 0,
                ..Default::default()
            })
            .is_empty()
        );
        for n in [1, 2, 3, 7, 10, 33] {
            let cfg = GenerateConfig {
                instances: n,
                seed: n as u64,
                ..Default::default()
            };
            let t = generate_instance_trace(&cfg);
            let starts = t.iter().filter(|e| e.action == TraceAction::Start).count();
            assert_eq!(starts, n);
            let text = write_instance_trace(&t);
            assert_eq!(parse_instance_trace(&text, "gen").unwrap(), t);
        }
    }

    #[test]
    fn same_second_start_precedes_delete() {
        let t = generate_instance_trace(&GenerateConfig {
            instances: 400,
            seed: 5,
            ..Default::default()
        });
        for w in t.windows(2) {
            assert!(w[0].time_s <= w[1].time_s);
            if w[0].time_s == w[1].time_s {
                assert!(!(w[0].action == TraceAction::Delete && w[1].action == TraceAction::Start));
            }
        }
    }
}
