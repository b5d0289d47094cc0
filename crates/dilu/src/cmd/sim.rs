//! `dilu sim …`: placement replays of the openb trace (FGD's experiment) and of Dilu's instance traces, and
//! the instance-trace generator.

use crate::cmd::output::{Format, SeedRange, ensure_parent_dir, median, parse_list, progress_bar};
use anyhow::{Context, Result, bail};
use clap::{Args, Subcommand};
use dilu_core::PlacerName;
use dilu_sim::generate::{GenerateConfig, generate_instance_trace};
use dilu_sim::instance_replay::{ReplayCluster, ReplayOutcome, replay_instances};
use dilu_sim::instance_trace::{TraceEvent, read_instance_trace, write_instance_trace};
use dilu_sim::openb::{read_openb_nodes, read_openb_pods};
use dilu_sim::openb_experiment::{
    OpenbRun, OpenbRunConfig, POD_LIST_PREFIX, pod_list_variants, run_openb, summarize_variant,
};
use dilu_sim::plot::plot_lines;
use serde_json::json;
use std::path::PathBuf;
use std::time::Instant;

/// Instances in the default generated trace (the size of Dilu's largest published trace).
const DEFAULT_INSTANCES: usize = 3200;
/// Seed of the default generated trace.
const DEFAULT_TRACE_SEED: u64 = 42;

/// Simulator subcommands.
#[derive(Debug, Subcommand)]
pub enum SimCommand {
    /// FGD's experiment: place the openb pods (sampled to `tune` × GPU capacity) and report unallocated GPU and
    /// fragmentation at arrived = 50..130 % of capacity.
    Placement(PlacementArgs),
    /// Dilu's large-scale replay: instance start/delete events on a GPU cluster; reports active GPUs and
    /// fragmentation. Without --trace it replays a generated trace of 3200 instances.
    Instances(InstancesArgs),
    /// Generate an instance trace with Dilu's published distribution.
    Generate(GenerateArgs),
    /// Serving simulation: requests, SM sharing, vertical and horizontal scaling; compares policies on a
    /// YAML scenario (see scenarios/README.md).
    Serve(crate::cmd::serve::ServeArgs),
    /// Measure a function on this machine's CPU device at a grid of batch × share and write a profile table
    /// for a scenario's `profile:` key (docs/sim-vs-live.md).
    Calibrate(crate::cmd::sim_live::CalibrateArgs),
    /// Run a scenario on the live platform (`dilu up`) and in the simulator, and compare them side by side
    /// (docs/sim-vs-live.md).
    Validate(crate::cmd::sim_live::ValidateArgs),
}

/// Arguments of `dilu sim placement`.
#[derive(Debug, Args)]
pub struct PlacementArgs {
    /// openb node list (e.g. openb_node_list_gpu_node.csv).
    #[arg(long)]
    nodes: PathBuf,
    /// openb pod list (e.g. openb_pod_list_default.csv), or a directory: then every
    /// `openb_pod_list_<variant>.csv` in it is run and one row per variant and policy is printed (the median
    /// over the seeds of unallocated GPU % and fragmentation % at each arrived level).
    #[arg(long)]
    pods: PathBuf,
    /// Policy, or a comma-separated list: dilu, exclusive, infless-l, infless-r, random, dot-prod, clustering,
    /// packing, best-fit, fgd.
    #[arg(long, default_value = "fgd")]
    policy: String,
    /// Seed of the pod sampling and node order.
    #[arg(long, default_value_t = 42, conflicts_with = "seeds")]
    seed: i64,
    /// Several seeds, e.g. 42..51: reports the median and spread over seeds.
    #[arg(long)]
    seeds: Option<SeedRange>,
    /// Sample pods until the requested GPU reaches this multiple of cluster GPU capacity.
    #[arg(long, default_value_t = 1.3)]
    tune: f64,
    /// Output format.
    #[arg(long, value_enum, default_value_t = Format::Table)]
    format: Format,
}

/// Arguments of `dilu sim instances`.
#[derive(Debug, Args)]
pub struct InstancesArgs {
    /// Instance trace (instances-N.txt format). Default: a generated trace of 3200 instances, seed 42.
    #[arg(long)]
    trace: Option<PathBuf>,
    /// Policy, or a comma-separated list.
    #[arg(long, default_value = "dilu,exclusive,infless-l,infless-r")]
    policy: String,
    /// Number of nodes.
    #[arg(long, default_value_t = 1000)]
    nodes: u32,
    /// GPUs per node.
    #[arg(long, default_value_t = 4)]
    gpus_per_node: u32,
    /// Memory per GPU, GB.
    #[arg(long, default_value_t = 40)]
    gpu_mem_gb: u64,
    /// Output format.
    #[arg(long, value_enum, default_value_t = Format::Table)]
    format: Format,
    /// Draw active GPUs over time for every policy into this SVG file.
    #[arg(long)]
    plot: Option<PathBuf>,
}

/// Arguments of `dilu sim generate`.
#[derive(Debug, Args)]
pub struct GenerateArgs {
    /// Number of instance start events.
    #[arg(long, default_value_t = DEFAULT_INSTANCES)]
    instances: usize,
    /// Seed.
    #[arg(long, default_value_t = DEFAULT_TRACE_SEED)]
    seed: u64,
    /// Output file (default: stdout).
    #[arg(long)]
    out: Option<PathBuf>,
}

/// Runs a simulator subcommand.
pub fn run(command: SimCommand) -> Result<()> {
    match command {
        SimCommand::Placement(a) => placement(a),
        SimCommand::Instances(a) => instances(a),
        SimCommand::Generate(a) => generate(a),
        SimCommand::Serve(a) => crate::cmd::serve::run(a),
        SimCommand::Calibrate(a) => crate::cmd::sim_live::calibrate(a),
        SimCommand::Validate(a) => crate::cmd::sim_live::validate(a),
    }
}

fn placement(a: PlacementArgs) -> Result<()> {
    if a.pods.is_dir() {
        return placement_variants(a);
    }
    let policies: Vec<PlacerName> = parse_list(&a.policy).context("--policy")?;
    let nodes = read_openb_nodes(&a.nodes)?;
    let pods = read_openb_pods(&a.pods)?;
    let seeds: Vec<i64> = match a.seeds {
        Some(r) => r.seeds().collect(),
        None => vec![a.seed],
    };
    let mut runs: Vec<(OpenbRun, f64)> = Vec::new();
    for &policy in &policies {
        for &seed in &seeds {
            let bar = progress_bar(0, &format!("{policy} seed {seed}"));
            let started = Instant::now();
            let run = run_openb(
                &nodes,
                &pods,
                OpenbRunConfig {
                    policy,
                    seed,
                    tune: a.tune,
                },
                &mut |done, total| {
                    bar.set_length(total as u64);
                    bar.set_position(done as u64);
                },
            )
            .with_context(|| format!("policy {policy}, seed {seed}"))?;
            bar.finish_and_clear();
            runs.push((run, started.elapsed().as_secs_f64()));
        }
    }
    match a.format {
        Format::Json => {
            let objects: Vec<_> = runs
                .iter()
                .map(|(r, _)| json!({"policy": r.config.policy, "seed": r.config.seed, "points": r.points()}))
                .collect();
            let value = if objects.len() == 1 && a.seeds.is_none() {
                objects.into_iter().next().unwrap_or_default()
            } else {
                serde_json::Value::Array(objects)
            };
            println!("{}", serde_json::to_string_pretty(&value)?);
        }
        Format::Table => print_placement_table(&runs, &policies, seeds.len()),
    }
    Ok(())
}

/// `--pods DIR`: every openb pod list in DIR, every policy, every seed; one summary row per (variant, policy).
fn placement_variants(a: PlacementArgs) -> Result<()> {
    let policies: Vec<PlacerName> = parse_list(&a.policy).context("--policy")?;
    let nodes = read_openb_nodes(&a.nodes)?;
    let variants = pod_list_variants(&a.pods)?;
    if variants.is_empty() {
        bail!(
            "--pods {}: no {POD_LIST_PREFIX}<variant>.csv in this directory",
            a.pods.display()
        );
    }
    let seeds: Vec<i64> = match a.seeds {
        Some(r) => r.seeds().collect(),
        None => vec![a.seed],
    };
    let started = Instant::now();
    let mut summaries = Vec::with_capacity(variants.len() * policies.len());
    for (variant, path) in &variants {
        let pods = read_openb_pods(path)?;
        for &policy in &policies {
            let bar = progress_bar(seeds.len() as u64, &format!("{variant} {policy}"));
            let s = summarize_variant(
                variant,
                &nodes,
                &pods,
                policy,
                &seeds,
                a.tune,
                &mut |done, _| bar.set_position(done as u64),
            )
            .with_context(|| format!("variant {variant}, policy {policy}"))?;
            bar.finish_and_clear();
            summaries.push(s);
        }
    }
    match a.format {
        Format::Json => println!("{}", serde_json::to_string_pretty(&summaries)?),
        Format::Table => {
            let levels: Vec<u32> = summaries
                .first()
                .map(|s| s.points.iter().map(|p| p.arrived_pct).collect())
                .unwrap_or_default();
            println!(
                "{} pod lists × {} polic{} × {} seed(s) ({}) in {:.1} s; medians over seeds; tune {}",
                variants.len(),
                policies.len(),
                if policies.len() == 1 { "y" } else { "ies" },
                seeds.len(),
                match (seeds.first(), seeds.last()) {
                    (Some(f), Some(l)) if f != l => format!("{f}..{l}"),
                    (Some(f), _) => f.to_string(),
                    _ => String::new(),
                },
                started.elapsed().as_secs_f64(),
                a.tune
            );
            for (title, metric) in [
                (
                    "unallocated GPU, % of cluster GPU",
                    (|p: &dilu_sim::report::PlacementPoint| p.unallocated_gpu_pct)
                        as fn(&dilu_sim::report::PlacementPoint) -> f64,
                ),
                (
                    "fragmentation, % of cluster GPU (FGD's frag)",
                    |p: &dilu_sim::report::PlacementPoint| p.frag_total_pct,
                ),
            ] {
                println!("\n{title}, at arrived % of cluster GPU:");
                print!(
                    "{:<14} {:<10} {:>6} {:>7}",
                    "variant", "policy", "pods", "failed"
                );
                for l in &levels {
                    print!(" {:>6}", format!("{l}%"));
                }
                println!();
                for s in &summaries {
                    print!(
                        "{:<14} {:<10} {:>6} {:>7}",
                        s.variant,
                        s.policy.to_string(),
                        s.pods,
                        s.failed_pods_median
                    );
                    for p in &s.points {
                        print!(" {:>6.2}", metric(p));
                    }
                    println!();
                }
            }
        }
    }
    Ok(())
}

fn print_placement_table(runs: &[(OpenbRun, f64)], policies: &[PlacerName], seeds: usize) {
    for &policy in policies {
        let mine: Vec<&(OpenbRun, f64)> = runs
            .iter()
            .filter(|(r, _)| r.config.policy == policy)
            .collect();
        let Some((first, _)) = mine.first() else {
            continue;
        };
        let failed: Vec<f64> = mine.iter().map(|(r, _)| r.failed_pods as f64).collect();
        let wall: f64 = mine.iter().map(|(_, w)| w).sum();
        println!(
            "policy {policy}: {} seed(s), {} pods arrived per run, median {} failed, {:.2} s",
            seeds,
            first.arrived_pods,
            median(&failed),
            wall
        );
        if seeds == 1 {
            println!(
                "{:>8} {:>14} {:>12} {:>12}",
                "arrived%", "unallocated%", "frag_ratio%", "frag_total%"
            );
            for p in first.points() {
                println!(
                    "{:>8} {:>14.2} {:>12.2} {:>12.2}",
                    p.arrived_pct, p.unallocated_gpu_pct, p.frag_ratio_pct, p.frag_total_pct
                );
            }
        } else {
            println!(
                "{:>8} {:>14} {:>17} {:>12} {:>12}",
                "arrived%", "unalloc% med", "unalloc% min-max", "frag_ratio%", "frag_total%"
            );
            let per_run: Vec<_> = mine.iter().map(|(r, _)| r.points()).collect();
            for (i, p) in first.points().iter().enumerate() {
                let col = |f: fn(&dilu_sim::report::PlacementPoint) -> f64| -> Vec<f64> {
                    per_run.iter().filter_map(|pts| pts.get(i).map(f)).collect()
                };
                let unalloc = col(|q| q.unallocated_gpu_pct);
                let lo = unalloc.iter().copied().fold(f64::INFINITY, f64::min);
                let hi = unalloc.iter().copied().fold(f64::NEG_INFINITY, f64::max);
                println!(
                    "{:>8} {:>14.2} {:>8.2}-{:<8.2} {:>12.2} {:>12.2}",
                    p.arrived_pct,
                    median(&unalloc),
                    lo,
                    hi,
                    median(&col(|q| q.frag_ratio_pct)),
                    median(&col(|q| q.frag_total_pct))
                );
            }
        }
        println!();
    }
}

fn load_or_generate_trace(trace: Option<&PathBuf>) -> Result<(String, Vec<TraceEvent>)> {
    match trace {
        Some(path) => {
            let name = path.file_name().map_or_else(
                || path.display().to_string(),
                |n| n.to_string_lossy().into(),
            );
            Ok((name, read_instance_trace(path)?))
        }
        None => {
            let cfg = GenerateConfig {
                instances: DEFAULT_INSTANCES,
                seed: DEFAULT_TRACE_SEED,
                ..Default::default()
            };
            Ok((
                format!("generated ({DEFAULT_INSTANCES} instances, seed {DEFAULT_TRACE_SEED})"),
                generate_instance_trace(&cfg),
            ))
        }
    }
}

fn instances(a: InstancesArgs) -> Result<()> {
    let policies: Vec<PlacerName> = parse_list(&a.policy).context("--policy")?;
    if a.nodes == 0 || a.gpus_per_node == 0 || a.gpu_mem_gb == 0 {
        bail!("--nodes, --gpus-per-node and --gpu-mem-gb must be positive");
    }
    let (source, events) = load_or_generate_trace(a.trace.as_ref())?;
    let shape = ReplayCluster {
        nodes: a.nodes,
        gpus_per_node: a.gpus_per_node,
        gpu_mem_gib: a.gpu_mem_gb,
    };
    let bar = progress_bar(policies.len() as u64, "replaying");
    let mut outcomes: Vec<ReplayOutcome> = Vec::new();
    for &policy in &policies {
        bar.set_message(format!("replaying {policy}"));
        outcomes.push(
            replay_instances(&events, shape, policy).with_context(|| format!("policy {policy}"))?,
        );
        bar.inc(1);
    }
    bar.finish_and_clear();
    if let Some(path) = &a.plot {
        let series: Vec<(String, Vec<(f64, f64)>)> = outcomes
            .iter()
            .map(|o| {
                let pts = o
                    .series
                    .iter()
                    .map(|s| (s.t_s as f64 / 60.0, f64::from(s.active_gpus)))
                    .collect();
                (o.policy.to_string(), pts)
            })
            .collect();
        ensure_parent_dir(path)?;
        plot_lines(
            path,
            &format!("Active GPUs — {source}"),
            "time (min)",
            "active GPUs",
            &series,
        )
        .with_context(|| format!("writing plot {}", path.display()))?;
    }
    match a.format {
        Format::Json => println!("{}", serde_json::to_string_pretty(&outcomes)?),
        Format::Table => {
            println!(
                "trace: {source}; cluster: {} nodes × {} GPUs × {} GB",
                a.nodes, a.gpus_per_node, a.gpu_mem_gb
            );
            println!(
                "{:<10} {:>9} {:>11} {:>11} {:>9} {:>9} {:>10} {:>7} {:>7} {:>8}",
                "policy",
                "peak_gpus",
                "sm_frag@pk",
                "mem_frag@pk",
                "sm_frag",
                "mem_frag",
                "gpu_hours",
                "starts",
                "deletes",
                "unsched"
            );
            for o in &outcomes {
                println!(
                    "{:<10} {:>9} {:>11.3} {:>11.3} {:>9.3} {:>9.3} {:>10.1} {:>7} {:>7} {:>8}",
                    o.policy.as_str(),
                    o.peak_active_gpus,
                    o.sm_frag_at_peak,
                    o.mem_frag_at_peak,
                    o.mean_sm_frag,
                    o.mean_mem_frag,
                    o.gpu_hours,
                    o.starts,
                    o.deletes,
                    o.unschedulable
                );
            }
            if let Some(path) = &a.plot {
                println!("plot: {}", path.display());
            }
        }
    }
    Ok(())
}

fn generate(a: GenerateArgs) -> Result<()> {
    if a.instances == 0 {
        bail!("--instances must be at least 1");
    }
    let events = generate_instance_trace(&GenerateConfig {
        instances: a.instances,
        seed: a.seed,
        ..Default::default()
    });
    let text = write_instance_trace(&events);
    match &a.out {
        Some(path) => {
            ensure_parent_dir(path)?;
            std::fs::write(path, text).with_context(|| format!("writing {}", path.display()))?;
            eprintln!("wrote {} events to {}", events.len(), path.display());
        }
        None => print!("{text}"),
    }
    Ok(())
}
