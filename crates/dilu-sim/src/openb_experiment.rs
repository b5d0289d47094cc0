//! FGD's placement experiment on the openb trace (`docs/algorithms.md` §10), reproduced step by step: sort the
//! pods by name, seed Go's `math/rand`, shuffle, sample clones until the requested GPU reaches `tune` × the
//! cluster's GPU capacity (or drop pods when above), permute node names for tie-breaking, then place pods one
//! at a time (arrival only) and record allocation and fragmentation after every arrival.

use crate::openb::PodRecord;
use crate::report::{PlacementColumns, PlacementPoint};
use dilu_core::frag::{FgdFragTracker, TypicalPods};
use dilu_core::gorand::GoRand;
use dilu_core::placement::{PlacerConfig, PlacerConfigError};
use dilu_core::{Cluster, CoreError, NodeSpec, PlacerName, build_placer};

/// FGD keeps the most popular pod shapes covering this share of pods as its typical pods.
pub const TYPICAL_POD_THRESHOLD_PCT: f64 = 95.0;

/// Draws of Go's global source between tuning and the node permutation in FGD's published runs (informer
/// start-up, `docs/algorithms.md` §10).
const INFORMER_DRAWS: usize = 10;

/// Why an experiment could not run.
#[derive(Debug, thiserror::Error)]
pub enum ExperimentError {
    /// The cluster could not be built.
    #[error("cluster: {0}")]
    Cluster(#[from] CoreError),
    /// The policy could not be built.
    #[error(transparent)]
    Placer(#[from] PlacerConfigError),
    /// A bad parameter.
    #[error("parameter '{name}' = {value}: {rule}")]
    Parameter {
        /// Parameter name.
        name: &'static str,
        /// Its value.
        value: String,
        /// The rule broken.
        rule: &'static str,
    },
}

/// One experiment run: a policy and a seed.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct OpenbRunConfig {
    /// Placement policy.
    pub policy: PlacerName,
    /// Seed of Go's `math/rand` (FGD uses 42..51).
    pub seed: i64,
    /// Target requested GPU as a multiple of cluster GPU capacity (FGD uses 1.3).
    pub tune: f64,
}

/// The state after one arrival (FGD logs one such row per pod).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ArrivalRow {
    /// Σ GPU milli of the pods arrived so far, failed ones included.
    pub arrived_milli: u64,
    /// Σ GPU milli allocated.
    pub used_milli: u64,
    /// FGD fragment amount, milli-GPU.
    pub frag_milli: f64,
    /// FGD fragmentation ratio, % of idle GPU.
    pub frag_ratio_pct: f64,
}

/// The outcome of one run.
#[derive(Debug, Clone, PartialEq)]
pub struct OpenbRun {
    /// The configuration run.
    pub config: OpenbRunConfig,
    /// Total GPUs of the cluster.
    pub total_gpus: u32,
    /// Pods that arrived (after tuning).
    pub arrived_pods: usize,
    /// Pods that could not be placed.
    pub failed_pods: usize,
    /// One row per arrival.
    pub rows: Vec<ArrivalRow>,
    /// Per-percent columns, as FGD's analysis scripts compute them.
    pub columns: PlacementColumns,
}

impl OpenbRun {
    /// The reported points at arrived = 50, 60, …, 130 % of capacity.
    pub fn points(&self) -> Vec<PlacementPoint> {
        self.columns
            .points(&[50, 60, 70, 80, 90, 100, 110, 120, 130])
    }
}

/// The arrival order FGD produces for a seed, and the node tie ranks; exposed for tests and tools.
#[derive(Debug, Clone, PartialEq)]
pub struct OpenbSchedule {
    /// Indices into the name-sorted pod list, in arrival order (clones repeat indices).
    pub arrivals: Vec<usize>,
    /// Names of the arriving pods (clones named `<name>-tuned-<i>` as FGD does).
    pub names: Vec<String>,
    /// Tie rank of each node, in the node list's name order.
    pub node_ranks: Vec<u32>,
}

/// Computes FGD's arrival order and node permutation for `seed` and `tune`. `pods` must be sorted by name
/// and `node_count` is the number of nodes (the ranks are for nodes sorted by name).
pub fn openb_schedule(
    pods: &[PodRecord],
    node_capacity_milli: u64,
    node_count: usize,
    seed: i64,
    tune: f64,
) -> OpenbSchedule {
    let mut rng = GoRand::new(seed);
    rng.int();
    let mut arrivals: Vec<usize> = (0..pods.len()).collect();
    rng.shuffle(arrivals.len(), |i, j| arrivals.swap(i, j));
    let mut names: Vec<String> = arrivals.iter().map(|&i| pods[i].name.clone()).collect();
    let total = |i: usize| pods[i].request.total_sm_request();
    let mut requested: u64 = (0..pods.len()).map(total).sum();
    let target = tune * node_capacity_milli as f64;
    if (requested as f64) < target {
        let mut clone = 0usize;
        loop {
            let idx = rng.intn(pods.len() as i64) as usize;
            if (requested + u64::from(pods[idx].request.sm_request)) as f64 > target {
                break;
            }
            requested += total(idx);
            arrivals.push(idx);
            names.push(format!("{}-tuned-{clone}", pods[idx].name));
            clone += 1;
        }
    } else {
        while requested as f64 > target && !arrivals.is_empty() {
            let k = rng.intn(arrivals.len() as i64) as usize;
            requested -= total(arrivals.remove(k));
            names.remove(k);
        }
    }
    for _ in 0..INFORMER_DRAWS {
        rng.int63();
    }
    let node_ranks = rng.perm(node_count).into_iter().map(|r| r as u32).collect();
    OpenbSchedule {
        arrivals,
        names,
        node_ranks,
    }
}

/// Runs one FGD experiment. `progress` is called with (pods done, pods total) every 256 pods.
pub fn run_openb(
    nodes: &[NodeSpec],
    pods: &[PodRecord],
    config: OpenbRunConfig,
    progress: &mut dyn FnMut(usize, usize),
) -> Result<OpenbRun, ExperimentError> {
    if !(config.tune.is_finite() && config.tune > 0.0) {
        return Err(ExperimentError::Parameter {
            name: "tune",
            value: config.tune.to_string(),
            rule: "must be a positive number",
        });
    }
    let mut sorted_nodes = nodes.to_vec();
    sorted_nodes.sort_by(|a, b| a.name.cmp(&b.name));
    let mut sorted_pods = pods.to_vec();
    sorted_pods.sort_by(|a, b| a.name.cmp(&b.name));

    let mut cluster = Cluster::new(sorted_nodes)?;
    let typical = TypicalPods::from_requests(
        sorted_pods.iter().map(|p| &p.request),
        TYPICAL_POD_THRESHOLD_PCT,
    );
    let schedule = openb_schedule(
        &sorted_pods,
        cluster.total_sm_milli(),
        cluster.nodes().len(),
        config.seed,
        config.tune,
    );
    cluster.set_tie_ranks(&schedule.node_ranks);

    let placer_config = PlacerConfig {
        seed: config.seed,
        typical_pods: Some(typical.clone()),
        ..Default::default()
    };
    let mut placer = build_placer(config.policy, &cluster, &placer_config)?;
    let mut frag = FgdFragTracker::new(&cluster, &typical);

    let total = schedule.arrivals.len();
    let mut rows = Vec::with_capacity(total);
    let mut arrived = 0u64;
    let mut failed = 0usize;
    for (n, &idx) in schedule.arrivals.iter().enumerate() {
        let req = &sorted_pods[idx].request;
        arrived += req.total_sm_request();
        match placer.place(&cluster, req) {
            Ok(mut placement) => {
                placement.instance = n as u64;
                cluster.allocate(&placement)?;
                frag.node_changed(&cluster, placement.node);
            }
            Err(_) => failed += 1,
        }
        rows.push(ArrivalRow {
            arrived_milli: arrived,
            used_milli: cluster.sm_requested(),
            frag_milli: frag.frag_amount(),
            frag_ratio_pct: frag.frag_ratio_pct(),
        });
        if n % 256 == 255 || n + 1 == total {
            progress(n + 1, total);
        }
    }
    let columns = PlacementColumns::from_rows(&rows, cluster.total_gpus());
    Ok(OpenbRun {
        config,
        total_gpus: cluster.total_gpus(),
        arrived_pods: total,
        failed_pods: failed,
        rows,
        columns,
    })
}

/// File-name prefix of the openb pod lists (`openb_pod_list_<variant>.csv`).
pub const POD_LIST_PREFIX: &str = "openb_pod_list_";

/// The openb pod lists in `dir`, as (variant, path) sorted by variant: every `openb_pod_list_<variant>.csv`.
pub fn pod_list_variants(
    dir: &std::path::Path,
) -> Result<Vec<(String, std::path::PathBuf)>, crate::openb::OpenbError> {
    let io = |e: std::io::Error| crate::openb::OpenbError::Io {
        file: dir.display().to_string(),
        reason: e.to_string(),
    };
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(io)? {
        let path = entry.map_err(io)?.path();
        let Some(name) = path.file_name().and_then(|n| n.to_str()) else {
            continue;
        };
        if let Some(variant) = name
            .strip_prefix(POD_LIST_PREFIX)
            .and_then(|rest| rest.strip_suffix(".csv"))
        {
            out.push((variant.to_string(), path.clone()));
        }
    }
    out.sort();
    Ok(out)
}

/// One policy on one pod list, summarised over seeds: the median of each metric at each arrived level of
/// [`OpenbRun::points`].
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct VariantSummary {
    /// The pod list's variant (`default`, `multigpu20`, …).
    pub variant: String,
    /// The policy.
    pub policy: PlacerName,
    /// Pods in the list.
    pub pods: usize,
    /// Seeds run.
    pub seeds: Vec<i64>,
    /// Median over seeds of the pods that could not be placed.
    pub failed_pods_median: f64,
    /// Per arrived level, the median over seeds of each metric.
    pub points: Vec<PlacementPoint>,
}

fn median_of(values: &mut [f64]) -> f64 {
    values.sort_by(f64::total_cmp);
    match values.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => values[n / 2],
        n => (values[n / 2 - 1] + values[n / 2]) / 2.0,
    }
}

/// Runs `policy` on `pods` once per seed and summarises the runs (medians per arrived level). `progress` gets
/// (seeds done, seeds) after each run.
pub fn summarize_variant(
    variant: &str,
    nodes: &[NodeSpec],
    pods: &[PodRecord],
    policy: PlacerName,
    seeds: &[i64],
    tune: f64,
    progress: &mut dyn FnMut(usize, usize),
) -> Result<VariantSummary, ExperimentError> {
    if seeds.is_empty() {
        return Err(ExperimentError::Parameter {
            name: "seeds",
            value: "[]".into(),
            rule: "at least one seed is needed",
        });
    }
    let mut runs = Vec::with_capacity(seeds.len());
    let mut failed = Vec::with_capacity(seeds.len());
    for (k, &seed) in seeds.iter().enumerate() {
        let run = run_openb(
            nodes,
            pods,
            OpenbRunConfig { policy, seed, tune },
            &mut |_, _| {},
        )?;
        failed.push(run.failed_pods as f64);
        runs.push(run.points());
        progress(k + 1, seeds.len());
    }
    let levels = runs.first().map_or(0, Vec::len);
    let points = (0..levels)
        .map(|i| {
            let col = |f: fn(&PlacementPoint) -> f64| -> f64 {
                let mut v: Vec<f64> = runs.iter().filter_map(|r| r.get(i).map(f)).collect();
                median_of(&mut v)
            };
            PlacementPoint {
                arrived_pct: runs[0][i].arrived_pct,
                unallocated_gpu_pct: col(|p| p.unallocated_gpu_pct),
                frag_ratio_pct: col(|p| p.frag_ratio_pct),
                frag_total_pct: col(|p| p.frag_total_pct),
            }
        })
        .collect();
    Ok(VariantSummary {
        variant: variant.to_string(),
        policy,
        pods: pods.len(),
        seeds: seeds.to_vec(),
        failed_pods_median: median_of(&mut failed),
        points,
    })
}
