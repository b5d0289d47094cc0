//! The function specs `dilu sim validate` deploys (`--spec`), read and checked against the scenario.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail, ensure};
use dilu_sim::serve::scenario::Scenario;

/// One spec file (YAML, as `dilu deploy -f` takes): its `metadata.name` and the whole document.
pub(super) fn read_spec(p: &Path) -> Result<(String, serde_yaml::Value)> {
    let text = std::fs::read_to_string(p).with_context(|| format!("reading {}", p.display()))?;
    let v: serde_yaml::Value =
        serde_yaml::from_str(&text).with_context(|| format!("parsing {}", p.display()))?;
    let name = v["metadata"]["name"]
        .as_str()
        .with_context(|| format!("{}: no metadata.name", p.display()))?
        .to_owned();
    Ok((name, v))
}

/// The specs, checked against the scenario: one per function and job, same kind, same quota and batch.
pub(super) fn read_specs(
    paths: &[PathBuf],
    scenario: &Scenario,
) -> Result<BTreeMap<String, PathBuf>> {
    let mut out = BTreeMap::new();
    for p in paths {
        let (name, v) = read_spec(p)?;
        let kind = v["spec"]["kind"].as_str().unwrap_or("inference");
        let request = v["spec"]["quota"]["request"].as_f64();
        let limit = v["spec"]["quota"]["limit"].as_f64();
        if let Some(f) = scenario.functions.iter().find(|f| f.name == name) {
            ensure!(
                kind == "inference",
                "{}: '{name}' is an inference function in the scenario, not {kind}",
                p.display()
            );
            let batch = v["spec"]["model"]["max_batch"].as_u64().map(|b| b as u32);
            ensure!(
                batch == f.batch,
                "{}: spec.model.max_batch {batch:?} differs from the scenario's batch {:?}",
                p.display(),
                f.batch
            );
            ensure!(
                request == f.sm_request && limit == f.sm_limit.or(f.sm_request),
                "{}: quota {request:?}..{limit:?} differs from the scenario's sm_request/sm_limit {:?}..{:?}",
                p.display(),
                f.sm_request,
                f.sm_limit
            );
        } else if let Some(t) = scenario.training.iter().find(|t| t.name == name) {
            ensure!(
                kind == "training",
                "{}: '{name}' is a training job in the scenario, not {kind}",
                p.display()
            );
            ensure!(
                request == t.sm_request && limit == t.sm_limit,
                "{}: quota {request:?}..{limit:?} differs from the scenario's {:?}..{:?}",
                p.display(),
                t.sm_request,
                t.sm_limit
            );
        } else {
            bail!(
                "{}: '{name}' is neither a function nor a training job of scenario {}",
                p.display(),
                scenario.name
            );
        }
        ensure!(
            out.insert(name.clone(), p.clone()).is_none(),
            "two specs for '{name}'"
        );
    }
    for n in scenario
        .functions
        .iter()
        .map(|f| &f.name)
        .chain(scenario.training.iter().map(|t| &t.name))
    {
        ensure!(out.contains_key(n), "no --spec for '{n}'");
    }
    Ok(out)
}
