//! The built-in models: what an instance of each needs (memory, cold start, tokens per request) and its
//! embedded performance table, so that simulations and the profiler run without external data.
//!
//! The tables are derived from public profiles (see `builtin_tables.rs` for sources and derivation). The
//! resource figures are **estimates**, not measurements; they are what the simulator assumes:
//! - inference memory = weights + activations + CUDA context at the profiled batch sizes, fp32 for the CNNs and
//!   encoders, fp16 for Llama-2-7B: ResNet-152 ≈ 2 GiB, BERT-base ≈ 1.5 GiB, RoBERTa-large ≈ 3 GiB,
//!   GPT2-large ≈ 5 GiB, Llama-2-7B ≈ 15 GiB (13.5 GB of fp16 weights plus KV cache); the gpulet CNNs by
//!   size, from MobileNet (0.75 GiB) to VGG (2 GiB);
//! - training memory per GPU ≈ 3–4× inference (gradients, optimizer state, larger activations); for
//!   Llama-2-7B a pipeline-parallel fine-tuning stage filling a 40 GB A100, as in Dilu's instance traces;
//! - cold start = loading the model into a warm container and onto the GPU: ≈ 1.5 s for a small CNN up to
//!   ≈ 12 s for Llama-2-7B, roughly linear in weight size.

use super::PerfError;
use super::builtin_tables::BUILTIN_TABLES;
use super::model::PerfModel;
use super::table::{LatencyUnit, ProfilePoint, ProfileTable};
use serde::{Deserialize, Serialize};
use std::sync::OnceLock;

/// Which public data set an embedded table is derived from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum TableSource {
    /// Dilu's artifact profiles (sigserverless/Dilu).
    Dilu,
    /// A third-party gpulet re-implementation's profiles (0909wlgur/Gpulet).
    Gpulet,
}

/// One embedded table: per-batch times on a full (batch × SM%) grid.
#[derive(Debug)]
pub(crate) struct BuiltinTable {
    /// The model's canonical name.
    pub(crate) name: &'static str,
    /// Where the numbers come from.
    pub(crate) source: TableSource,
    /// `Some(tokens)` for per-token (LLM) tables.
    pub(crate) tokens_per_request: Option<u32>,
    /// The grid's SM shares in percent, ascending.
    pub(crate) sm_pcts: &'static [u32],
    /// `(batch, batch time in seconds at each of sm_pcts)`, batches ascending.
    pub(crate) rows: &'static [(u32, &'static [f64])],
}

/// What a model does; decides the instance kind it is deployed as.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ModelKind {
    /// Image models (CNNs).
    Vision,
    /// Encoder and small decoder language models, served one forward pass per request.
    Language,
    /// Large language models, served token by token with a large memory footprint.
    Llm,
}

/// The resource needs of a model's instances, used by placement and scaling.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ModelFacts {
    /// Canonical name (the embedded table's name).
    pub name: String,
    /// What the model does.
    pub kind: ModelKind,
    /// GPU memory of one inference instance, MiB (weights + activations; an estimate).
    pub memory_mib: u64,
    /// GPU memory per GPU of a training instance, MiB (an estimate).
    pub training_memory_mib: u64,
    /// Seconds to load the model when an instance starts cold (an estimate).
    pub cold_start_s: f64,
    /// Tokens generated per request: 32 for LLMs, 1 otherwise.
    pub tokens_per_request: u32,
}

/// A built-in model: its spec, profile table and performance model.
#[derive(Debug, Clone)]
pub struct BuiltinModel {
    /// The model's resource needs.
    pub spec: ModelFacts,
    table: &'static ProfileTable,
    perf: &'static PerfModel,
}

impl BuiltinModel {
    /// The performance model (a copy of the cached one; a few small vectors).
    pub fn perf(&self) -> PerfModel {
        self.perf.clone()
    }

    /// The cached performance model, without copying.
    pub fn perf_ref(&self) -> &'static PerfModel {
        self.perf
    }

    /// The embedded table as profile points (latency in the model's unit, throughput = batch / batch time).
    pub fn table(&self) -> &'static ProfileTable {
        self.table
    }
}

/// Resource estimates per model: (name, kind, inference MiB, training MiB per GPU, cold start s).
const SPECS: &[(&str, ModelKind, u64, u64, f64)] = &[
    ("resnet152", ModelKind::Vision, 2048, 7168, 3.0),
    ("bert_base", ModelKind::Language, 1536, 5120, 3.0),
    ("roberta_large", ModelKind::Language, 3072, 10240, 5.0),
    ("gpt2_large", ModelKind::Language, 5120, 18432, 7.0),
    ("llama2", ModelKind::Llm, 15360, 40960, 12.0),
    ("gpulet/densenet121", ModelKind::Vision, 1280, 4608, 2.0),
    ("gpulet/densenet169", ModelKind::Vision, 1536, 5632, 2.5),
    ("gpulet/densenet201", ModelKind::Vision, 1792, 6144, 2.5),
    ("gpulet/inception", ModelKind::Vision, 1280, 4608, 2.0),
    ("gpulet/mobilenet", ModelKind::Vision, 768, 2560, 1.5),
    ("gpulet/resnet101", ModelKind::Vision, 1536, 5632, 2.5),
    ("gpulet/resnet152", ModelKind::Vision, 2048, 7168, 3.0),
    ("gpulet/resnet50", ModelKind::Vision, 1280, 4608, 2.0),
    ("gpulet/vgg16", ModelKind::Vision, 2048, 8192, 3.0),
    ("gpulet/vgg19", ModelKind::Vision, 2048, 8192, 3.0),
];

/// Other names accepted for the Dilu models (the paper's spelling).
const ALIASES: &[(&str, &str)] = &[
    ("resnet-152", "resnet152"),
    ("bert-base", "bert_base"),
    ("roberta-large", "roberta_large"),
    ("gpt2-large", "gpt2_large"),
    ("llama-2-7b", "llama2"),
    ("llama2-7b", "llama2"),
];

/// One catalog entry, built once.
struct Entry {
    spec: ModelFacts,
    table: ProfileTable,
    perf: PerfModel,
}

/// Builds a table's profile points and performance model.
fn build(t: &BuiltinTable) -> Result<(ProfileTable, PerfModel), PerfError> {
    let unit = match t.tokens_per_request {
        Some(tokens) => LatencyUnit::PerToken { tokens },
        None => LatencyUnit::PerBatch,
    };
    let units = f64::from(unit.units_per_batch());
    let mut points = Vec::with_capacity(t.rows.len() * t.sm_pcts.len());
    let mut times = Vec::with_capacity(points.capacity());
    for &(batch, row) in t.rows {
        if row.len() != t.sm_pcts.len() {
            return Err(PerfError::Invalid {
                field: "rows",
                value: format!("{} values at batch {batch}", row.len()),
                rule: format!("table '{}': one value per SM share", t.name),
            });
        }
        for (&sm_pct, &time) in t.sm_pcts.iter().zip(row) {
            points.push(ProfilePoint {
                batch,
                sm_pct,
                latency_s: time / units,
                throughput: f64::from(batch) / time,
            });
            times.push(time);
        }
    }
    let table = ProfileTable::new(t.name, unit, points)?;
    let batches = t.rows.iter().map(|r| r.0).collect();
    let perf = PerfModel::from_grid(t.name, unit, batches, t.sm_pcts.to_vec(), times)?;
    Ok((table, perf))
}

/// The catalog, built on first use. Entries whose table fails to build are left out (a test proves that none
/// does).
fn catalog() -> &'static [Entry] {
    static CATALOG: OnceLock<Vec<Entry>> = OnceLock::new();
    CATALOG.get_or_init(|| {
        SPECS
            .iter()
            .filter_map(
                |&(name, kind, memory_mib, training_memory_mib, cold_start_s)| {
                    let t = BUILTIN_TABLES.iter().find(|t| t.name == name)?;
                    let (table, perf) = build(t).ok()?;
                    Some(Entry {
                        spec: ModelFacts {
                            name: name.to_owned(),
                            kind,
                            memory_mib,
                            training_memory_mib,
                            cold_start_s,
                            tokens_per_request: t.tokens_per_request.unwrap_or(1),
                        },
                        table,
                        perf,
                    })
                },
            )
            .collect()
    })
}

/// The canonical name of a built-in model given its name or an alias (case-insensitive), if known.
pub fn canonical_name(name: &str) -> Option<&'static str> {
    let lower = name.trim().to_ascii_lowercase();
    let target = ALIASES
        .iter()
        .find(|(alias, _)| *alias == lower)
        .map_or(lower.as_str(), |(_, canonical)| *canonical);
    SPECS.iter().map(|s| s.0).find(|&n| n == target)
}

/// A built-in model by name or alias (`resnet-152`, `bert-base`, `roberta-large`, `gpt2-large`,
/// `llama-2-7b`, or the table names such as `resnet152` and `gpulet/resnet50`).
pub fn builtin_model(name: &str) -> Option<BuiltinModel> {
    let canonical = canonical_name(name)?;
    catalog()
        .iter()
        .find(|e| e.spec.name == canonical)
        .map(|e| BuiltinModel {
            spec: e.spec.clone(),
            table: &e.table,
            perf: &e.perf,
        })
}

/// The canonical names of all built-in models: the Dilu models, then the gpulet CNNs.
pub fn builtin_model_names() -> Vec<&'static str> {
    SPECS.iter().map(|s| s.0).collect()
}

/// Whether a built-in model's table comes from Dilu's own profiles (as opposed to the gpulet data).
pub fn is_dilu_profile(name: &str) -> bool {
    canonical_name(name)
        .and_then(|n| BUILTIN_TABLES.iter().find(|t| t.name == n))
        .is_some_and(|t| t.source == TableSource::Dilu)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_table_builds_and_has_a_spec() {
        assert_eq!(BUILTIN_TABLES.len(), SPECS.len());
        for t in BUILTIN_TABLES {
            build(t).unwrap_or_else(|e| panic!("{}: {e}", t.name));
            assert!(
                SPECS.iter().any(|s| s.0 == t.name),
                "{} has no spec",
                t.name
            );
        }
        assert_eq!(catalog().len(), SPECS.len());
        assert_eq!(builtin_model_names().len(), 15);
    }

    #[test]
    fn embedded_tables_are_monotone_grids() {
        for t in BUILTIN_TABLES {
            let (table, perf) = build(t).unwrap();
            assert_eq!(table.points().len(), t.rows.len() * t.sm_pcts.len());
            // Already monotone, so the model reproduces them exactly.
            for (i, &(b, row)) in t.rows.iter().enumerate() {
                for (j, &s) in t.sm_pcts.iter().enumerate() {
                    assert_eq!(perf.batch_time_s(b, f64::from(s) / 100.0), row[j]);
                    if j > 0 {
                        assert!(row[j] <= row[j - 1], "{} b={b}", t.name);
                    }
                    if i > 0 {
                        assert!(row[j] >= t.rows[i - 1].1[j], "{} b={b}", t.name);
                    }
                }
            }
        }
    }

    #[test]
    fn names_and_aliases() {
        for (alias, name) in ALIASES {
            assert_eq!(builtin_model(alias).unwrap().spec.name, *name);
        }
        assert_eq!(builtin_model("BERT-base").unwrap().spec.name, "bert_base");
        assert!(builtin_model("gpulet/resnet50").is_some());
        assert!(builtin_model("resnet50").is_none());
        let llama = builtin_model("llama-2-7b").unwrap();
        assert_eq!(llama.spec.tokens_per_request, 32);
        assert_eq!(llama.spec.kind, ModelKind::Llm);
        assert_eq!(llama.perf().unit(), LatencyUnit::PerToken { tokens: 32 });
        assert_eq!(
            builtin_model("resnet152").unwrap().spec.tokens_per_request,
            1
        );
        assert!(is_dilu_profile("gpt2-large"));
        assert!(!is_dilu_profile("gpulet/vgg16"));
    }

    #[test]
    fn shapes_match_the_calibration_notes() {
        // Published profiles (`docs/benchmarks.md` §4): ResNet-152 bs=8 saturates by 40% SM; bs=32 keeps gaining to 100%.
        let m = builtin_model("resnet152").unwrap().perf();
        assert!(m.throughput(8, 0.4) >= 0.9 * m.throughput(8, 1.0));
        assert!(m.throughput(32, 0.9) < m.throughput(32, 1.0));
        // BERT-base is flat from 20% (host-bound).
        let m = builtin_model("bert_base").unwrap().perf();
        assert!(m.throughput(1, 0.2) >= 0.9 * m.throughput(1, 1.0));
    }
}
