//! `dilu sim validate --calibrate`: the profile tables a scenario names re-measured, right before its live run.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};

use super::calibrate::{Calibrated, calibrate};
use super::specs::read_spec;
use super::{CalibrateArgs, ValidateArgs};

/// Re-measures the tables `scenario_path` names under `profile:` (see `ValidateArgs::calibrate`); returns what
/// each inference function's calibration measured besides its table.
pub(super) fn recalibrate(a: &ValidateArgs) -> Result<BTreeMap<String, Calibrated>> {
    let mut overheads = BTreeMap::new();
    let text = std::fs::read_to_string(&a.scenario)
        .with_context(|| format!("reading {}", a.scenario.display()))?;
    let raw: serde_yaml::Value =
        serde_yaml::from_str(&text).with_context(|| format!("parsing {}", a.scenario.display()))?;
    let base = a.scenario.parent().unwrap_or(Path::new("."));
    let specs: BTreeMap<String, serde_yaml::Value> = a
        .specs
        .iter()
        .map(|p| read_spec(p))
        .collect::<Result<_>>()?;
    let entries = |key: &str| raw[key].as_sequence().cloned().unwrap_or_default();
    // A co-location scenario's inference runs next to its training jobs, busy at their limits: the first one
    // with a spec runs beside the inference calibration.
    let beside = entries("training").into_iter().find_map(|t| {
        let spec = specs.get(t["name"].as_str()?)?;
        let limit = t["sm_limit"].as_f64().or(t["sm_request"].as_f64())?;
        let (hidden, layers, batch) = trainer_settings(spec);
        Some((
            (limit * 100.0).round().clamp(1.0, 100.0) as u32,
            hidden,
            layers,
            batch,
        ))
    });
    for f in entries("functions") {
        let Some((name, profile, spec)) = profiled(&f, &specs)? else {
            continue;
        };
        let model = spec["spec"]["model"]["path"]
            .as_str()
            .with_context(|| format!("--calibrate: spec of '{name}' has no spec.model.path"))?;
        let onnx = crate::cmd::client::expand(model, "spec.model.path")?;
        let input = a
            .inputs
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, f)| f.clone())
            .with_context(|| format!("--calibrate: no --input {name}=FILE"))?;
        let top = f["batch"].as_u64().unwrap_or(1).max(1) as u32;
        let batches: Vec<u32> = std::iter::successors(Some(1u32), |b| b.checked_mul(2))
            .take_while(|&b| b < top)
            .chain(std::iter::once(top))
            .collect();
        eprintln!("validate: calibrating '{name}' into {profile} ...");
        let measured = calibrate(CalibrateArgs {
            onnx: Some(PathBuf::from(onnx)),
            input: Some(input),
            hidden: beside.map_or(128, |b| b.1),
            layers: beside.map_or(2, |b| b.2),
            beside_trainer: beside.map(|b| b.0),
            trainer_batch: beside.map_or(128, |b| b.3),
            through_gateway: a.through_gateway,
            binary_input: a.binary_input,
            batches,
            ..on_grid(a, base.join(profile))
        })?;
        overheads.insert(name.to_owned(), measured);
    }
    for t in entries("training") {
        let Some((name, profile, spec)) = profiled(&t, &specs)? else {
            continue;
        };
        let (hidden, layers, batch) = trainer_settings(spec);
        eprintln!("validate: calibrating '{name}' into {profile} ...");
        calibrate(CalibrateArgs {
            trainer: true,
            hidden,
            layers,
            trainer_batch: batch,
            batches: vec![batch],
            ..on_grid(a, base.join(profile))
        })?;
    }
    Ok(overheads)
}

/// The share grid `--calibrate` measures, percent.
const DEFAULT_SHARES: [u32; 8] = [10, 20, 30, 40, 50, 60, 80, 100];

/// A scenario entry's name, the profile table it names and its spec; `None` when it names no table.
fn profiled<'a>(
    entry: &'a serde_yaml::Value,
    specs: &'a BTreeMap<String, serde_yaml::Value>,
) -> Result<Option<(&'a str, &'a str, &'a serde_yaml::Value)>> {
    let (Some(name), Some(profile)) = (entry["name"].as_str(), entry["profile"].as_str()) else {
        return Ok(None);
    };
    let spec = specs
        .get(name)
        .with_context(|| format!("--calibrate: no --spec for '{name}'"))?;
    Ok(Some((name, profile, spec)))
}

/// A training spec's trainer settings: hidden width, layers and batch (128, 2 and 128 when unset).
fn trainer_settings(spec: &serde_yaml::Value) -> (u32, u32, u32) {
    let tr = &spec["spec"]["training"];
    let field = |k: &str, default: u64| tr[k].as_u64().unwrap_or(default) as u32;
    (
        field("hidden", 128),
        field("layers", 2),
        field("batch", 128),
    )
}

/// The measurement every table gets: an inference function alone, the share grid, `a`'s rounds and token
/// window, written to `out`; callers name the function or trainer.
fn on_grid(a: &ValidateArgs, out: PathBuf) -> CalibrateArgs {
    CalibrateArgs {
        onnx: None,
        input: None,
        binary_input: false,
        trainer: false,
        hidden: 128,
        layers: 2,
        beside_trainer: None,
        trainer_batch: 128,
        through_gateway: false,
        batches: Vec::new(),
        shares: DEFAULT_SHARES.to_vec(),
        rounds: a.rounds,
        round_gap_ms: a.round_gap_ms,
        train_window_s: 2.0,
        cores: None,
        window_ms: a.window_ms,
        out,
    }
}
