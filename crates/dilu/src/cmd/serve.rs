//! `dilu sim serve`: runs a serving scenario under several policies and compares them.

use crate::cmd::output::{Format, parse_list, progress_bar};
use anyhow::{Context, Result};
use clap::Args;
use dilu_core::perf::builtin_model_names;
use dilu_sim::serve::report::{ServeComparison, format_table, to_json, write_report};
use dilu_sim::serve::scenario::load_scenario;
use dilu_sim::serve::{PolicyName, prepare, run_policy};
use std::path::PathBuf;
use std::time::Instant;

/// Arguments of `dilu sim serve`.
#[derive(Debug, Args)]
pub struct ServeArgs {
    /// Scenario file (YAML; see scenarios/README.md).
    #[arg(long)]
    scenario: PathBuf,
    /// Policies to compare, comma-separated (dilu, exclusive, infless, fast-gshare, tgs, has, dilu-slo);
    /// default: the scenario's list.
    #[arg(long)]
    policies: Option<String>,
    /// Override the scenario's seed.
    #[arg(long)]
    seed: Option<u64>,
    /// Override the scenario's duration, seconds.
    #[arg(long)]
    duration_s: Option<f64>,
    /// Output format on stdout.
    #[arg(long, value_enum, default_value_t = Format::Table)]
    format: Format,
    /// Directory for report.json, the SVG plots and index.html (one self-contained page with the tables and
    /// the plots).
    #[arg(long)]
    report: Option<PathBuf>,
}

/// Runs `dilu sim serve`.
pub fn run(a: ServeArgs) -> Result<()> {
    let names = builtin_model_names();
    let mut scenario = load_scenario(&a.scenario, &names)?;
    if let Some(seed) = a.seed {
        scenario.seed = seed;
    }
    if let Some(d) = a.duration_s {
        anyhow::ensure!(
            d > 0.0 && d.is_finite() && d > scenario.warmup_s,
            "--duration-s {d}: must be a positive number of seconds above the scenario's warmup_s ({})",
            scenario.warmup_s
        );
        scenario.duration_s = d;
        for t in &mut scenario.training {
            anyhow::ensure!(
                t.start_s < d,
                "--duration-s {d}: training job '{}' starts at {} s, after the end",
                t.name,
                t.start_s
            );
        }
    }
    let policies: Vec<PolicyName> = match &a.policies {
        Some(list) => parse_list(list).context("--policies")?,
        None => scenario.policies.clone(),
    };
    let setup = prepare(&scenario).with_context(|| format!("scenario {}", a.scenario.display()))?;
    let bar = progress_bar(policies.len() as u64, "policies");
    let started = Instant::now();
    let mut runs = Vec::with_capacity(policies.len());
    for &p in &policies {
        bar.set_message(p.as_str().to_owned());
        let run = run_policy(&setup, p).with_context(|| format!("policy {p}"))?;
        runs.push(run);
        bar.inc(1);
    }
    bar.finish_and_clear();
    let elapsed = started.elapsed().as_secs_f64();
    let comparison = ServeComparison {
        scenario: scenario.name.clone(),
        seed: scenario.seed,
        duration_s: scenario.duration_s,
        profiles: setup.profiles.clone(),
        policies: runs.iter().map(|r| r.report.clone()).collect(),
    };
    match a.format {
        Format::Table => {
            print!("{}", format_table(&comparison));
            let events: u64 = comparison.policies.iter().map(|p| p.events).sum();
            println!(
                "simulated {} policies in {elapsed:.2} s ({:.2} M events/s)",
                runs.len(),
                events as f64 / elapsed.max(1e-9) / 1e6
            );
        }
        Format::Json => print!("{}", to_json(&comparison)?),
    }
    if let Some(dir) = &a.report {
        let files = write_report(dir, &comparison, &runs)
            .with_context(|| format!("writing the report to {}", dir.display()))?;
        for f in files {
            eprintln!("wrote {}", f.display());
        }
    }
    Ok(())
}
