//! `dilu profile …`: Dilu's multi-factor profiler (`docs/algorithms.md` §3) on a recorded profile table.
//!
//! Inference runs Hybrid Growth Search for the SLO and reports the chosen (batch, SM%), its efficiency, the
//! quota it maps to, how many points it measured, and whether an exhaustive search of the same points agrees.
//! Training runs the SM bisection on the table's largest-batch column.

use crate::cmd::output::Format;
use anyhow::{Context, Result, bail};
use clap::{Args, ValueEnum};
use dilu_core::perf::{LatencyUnit, PerfModel, ProfileTable, builtin_model, parse_dilu_csv};
use dilu_core::profiler::{
    DEFAULT_TRAINING_TARGET, HgsConfig, ProfileReport, TeDrop, TrainingReport, profile_table,
    profile_training,
};
use serde_json::json;
use std::path::{Path, PathBuf};

/// What kind of function to profile.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Kind {
    /// Latency-bound inference: Hybrid Growth Search for batch size and SM share under an SLO.
    Inference,
    /// Throughput-bound training: bisection for the smallest SM share keeping the target throughput.
    Training,
}

/// Arguments of `dilu profile`.
#[derive(Debug, Args)]
pub struct ProfileArgs {
    /// Dilu-format profile CSV (no header: batch, sm_pct, latency_s, throughput), e.g. bs_sm_resnet152.csv.
    #[arg(long, required_unless_present = "builtin", conflicts_with = "builtin")]
    table: Option<PathBuf>,
    /// Use an embedded table instead: resnet152, bert_base, roberta_large, gpt2_large, llama2,
    /// gpulet/<cnn> (aliases such as resnet-152 and llama-2-7b accepted).
    #[arg(long)]
    builtin: Option<String>,
    /// Model name of --table (default: the file name without `bs_sm_` and `.csv`). Names containing
    /// `llama` are read as LLM tables: latency per generated token, 32 tokens per request.
    #[arg(long, requires = "table")]
    model: Option<String>,
    /// Latency SLO in milliseconds (per generated token for LLMs); required for inference.
    #[arg(long)]
    slo_ms: Option<f64>,
    /// Largest batch the search may try (default: the table's largest).
    #[arg(long)]
    max_batch: Option<u32>,
    /// When a rise in SM share costs too much efficiency: rel:FRACTION of the last TE, or abs:DELTA in TE
    /// units (the reference implementation's abs:0.2).
    #[arg(long, default_value = "rel:0.1")]
    te_drop: TeDrop,
    /// Inference (HGS) or training (SM bisection on the largest-batch column).
    #[arg(long, value_enum, default_value_t = Kind::Inference)]
    kind: Kind,
    /// Training: the fraction of full-GPU throughput to keep.
    #[arg(long, default_value_t = DEFAULT_TRAINING_TARGET)]
    target: f64,
    /// Output format.
    #[arg(long, value_enum, default_value_t = Format::Table)]
    format: Format,
}

/// A loaded table and where it came from.
struct Source {
    table: ProfileTable,
    /// `builtin` or the file path.
    origin: String,
}

/// The model name of a profile file: `bs_sm_<model>.csv` → `<model>`.
fn model_name_of(path: &Path) -> String {
    let stem = path
        .file_stem()
        .map_or_else(|| "model".into(), |s| s.to_string_lossy().into_owned());
    stem.strip_prefix("bs_sm_")
        .map_or(stem.clone(), str::to_owned)
}

fn load(a: &ProfileArgs) -> Result<Source> {
    if let Some(name) = &a.builtin {
        let m = builtin_model(name).with_context(|| {
            format!(
                "--builtin '{name}': unknown model; known: {}",
                dilu_core::perf::builtin_model_names().join(", ")
            )
        })?;
        return Ok(Source {
            table: m.table().clone(),
            origin: "builtin".into(),
        });
    }
    let Some(path) = &a.table else {
        bail!("give --table FILE or --builtin NAME");
    };
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("reading profile table {}", path.display()))?;
    let model = a.model.clone().unwrap_or_else(|| model_name_of(path));
    let table = parse_dilu_csv(&model, &text)
        .with_context(|| format!("parsing profile table {}", path.display()))?;
    Ok(Source {
        table,
        origin: path.display().to_string(),
    })
}

/// Runs `dilu profile`.
pub fn run(a: ProfileArgs) -> Result<()> {
    let src = load(&a)?;
    match a.kind {
        Kind::Inference => inference(&a, &src),
        Kind::Training => training(&a, &src),
    }
}

fn unit_name(unit: LatencyUnit) -> &'static str {
    match unit {
        LatencyUnit::PerBatch => "per_batch",
        LatencyUnit::PerToken { .. } => "per_token",
    }
}

fn inference(a: &ProfileArgs, src: &Source) -> Result<()> {
    let Some(slo_ms) = a.slo_ms else {
        bail!("--slo-ms is required for --kind inference");
    };
    let cfg = HgsConfig {
        max_batch: a.max_batch.unwrap_or_else(|| src.table.max_batch()),
        te_drop: a.te_drop,
        ..HgsConfig::new(slo_ms / 1000.0)
    };
    let r = profile_table(&src.table, &cfg)
        .with_context(|| format!("profiling {} ({})", src.table.model(), src.origin))?;
    match a.format {
        Format::Json => {
            println!(
                "{}",
                serde_json::to_string_pretty(&inference_json(&r, src, slo_ms))?
            );
        }
        Format::Table => print_inference(&r, src, slo_ms),
    }
    Ok(())
}

fn inference_json(r: &ProfileReport, src: &Source, slo_ms: f64) -> serde_json::Value {
    let c = &r.result;
    json!({
        "model": r.model,
        "source": src.origin,
        "kind": "inference",
        "slo_ms": slo_ms,
        "latency_unit": unit_name(r.unit),
        "tokens_per_request": r.unit.units_per_batch(),
        "max_batch": r.config.max_batch,
        "te_drop": r.config.te_drop.to_string(),
        "measured_against": r.source,
        "feasible": c.feasible,
        "chosen": {
            "batch": c.batch,
            "sm_pct": c.sm_pct,
            "te": c.te,
            "latency_ms": c.latency_s * 1000.0,
            "throughput": c.throughput,
        },
        "quota": r.quota,
        "measured": c.measured,
        "grid_points": r.grid_points,
        "measured_points": r.measured_points,
        "exhaustive": r.exhaustive,
        "matches_exhaustive": r.matches_exhaustive,
    })
}

fn print_inference(r: &ProfileReport, src: &Source, slo_ms: f64) {
    let c = &r.result;
    let per = match r.unit {
        LatencyUnit::PerBatch => "per batch".to_owned(),
        LatencyUnit::PerToken { tokens } => format!("per token, {tokens} tokens/request"),
    };
    println!(
        "model {} ({}), inference, SLO {slo_ms} ms {per}, te-drop {}, max batch {}",
        r.model, src.origin, r.config.te_drop, r.config.max_batch
    );
    if !c.feasible {
        println!(
            "infeasible:  even {}% SM at batch 1 takes {:.3} ms > {slo_ms} ms",
            c.sm_pct,
            c.latency_s * 1000.0
        );
    } else {
        println!(
            "chosen:      batch {} at {}% SM, TE {:.4}, latency {:.3} ms, throughput {:.3}/s",
            c.batch,
            c.sm_pct,
            c.te,
            c.latency_s * 1000.0,
            c.throughput
        );
    }
    if let Some(q) = r.quota {
        println!(
            "quota:       sm_request {:.2}, sm_limit {:.2}, capacity {:.3} req/s",
            q.sm_request, q.sm_limit, q.capacity_rps
        );
    }
    let against = match r.source {
        dilu_core::profiler::MeasureSource::Table => "table points",
        dilu_core::profiler::MeasureSource::Model => "interpolated model",
    };
    println!(
        "measured:    {} of {} points ({against})",
        c.measured, r.grid_points
    );
    match r.exhaustive {
        Some(e) => println!(
            "exhaustive:  batch {} at {}% SM, TE {:.4}: HGS {}",
            e.batch,
            e.sm_pct,
            e.te,
            if r.matches_exhaustive {
                "matches"
            } else {
                "differs"
            }
        ),
        None => println!("exhaustive:  no point meets the SLO"),
    }
}

fn training(a: &ProfileArgs, src: &Source) -> Result<()> {
    let model = PerfModel::from_table(&src.table)
        .with_context(|| format!("building the performance model of {}", src.table.model()))?;
    let r = profile_training(&model, a.target).with_context(|| {
        format!(
            "profiling training of {} ({})",
            src.table.model(),
            src.origin
        )
    })?;
    match a.format {
        Format::Json => println!("{}", serde_json::to_string_pretty(&training_json(&r, src))?),
        Format::Table => {
            println!(
                "model {} ({}), training (throughput of batch {}), target {} of full-GPU throughput",
                r.model, src.origin, r.batch, r.target
            );
            println!(
                "sm_request:  {}% ({:.1}% of full throughput), {} shares measured",
                r.profile.sm_request_pct,
                100.0 * r.profile.throughput / r.profile.full_throughput,
                r.profile.measured
            );
            println!(
                "quota:       sm_request {:.2}, sm_limit {:.2}",
                r.quota.sm_request, r.quota.sm_limit
            );
            println!(
                "curve knee:  {:.2}% (continuous; bisection lands within 5 points above)",
                r.curve_knee_pct
            );
        }
    }
    Ok(())
}

fn training_json(r: &TrainingReport, src: &Source) -> serde_json::Value {
    json!({
        "model": r.model,
        "source": src.origin,
        "kind": "training",
        "batch": r.batch,
        "target": r.target,
        "sm_request_pct": r.profile.sm_request_pct,
        "measured": r.profile.measured,
        "full_throughput": r.profile.full_throughput,
        "throughput": r.profile.throughput,
        "quota": r.quota,
        "curve_knee_pct": r.curve_knee_pct,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn model_names_come_from_file_names() {
        assert_eq!(model_name_of(Path::new("/x/bs_sm_llama2.csv")), "llama2");
        assert_eq!(model_name_of(Path::new("mine.csv")), "mine");
    }
}
