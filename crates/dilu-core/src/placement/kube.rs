//! The FGD simulator's scheduling framework and its six score policies (`docs/algorithms.md` §10): filter every
//! node, score the feasible ones with one integer score in [0, 100], take the best with ties broken by the
//! node's tie rank (FGD's seeded node-name prefix), then pick GPUs on that node.
//!
//! Scores depend only on the node's state and the pod's shape, so they are cached per (shape, node) and
//! recomputed only for nodes whose version changed. That is what makes one run take a second, not minutes.

use crate::cluster::{Cluster, GpuState, ModelMask, Node, Placement};
use crate::frag::fgd::NodeFree;
use crate::frag::{FragMemo, TypicalPods};
use crate::gorand::GoRand;
use crate::placement::{Placer, PlacerName, Unschedulable};
use crate::request::{InstanceRequest, SM_MILLI};
use std::collections::HashMap;

/// FGD's normalisation constants: the largest node has 128 cores and 8 GPUs.
const MAX_SPEC_CPU: f64 = 128_000.0;
const MAX_SPEC_GPU: f64 = 8_000.0;

/// The score plugin in use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KubePolicy {
    /// A random feasible node; random GPU among those that fit.
    Random,
    /// Tetris dot product ("merge" GPU dimension, "max" normalisation); best-fit GPU.
    DotProd,
    /// GPU-affinity clustering; best-fit GPU.
    Clustering,
    /// GPU packing; best-fit GPU.
    Packing,
    /// (CPU, GPU) best fit; best-fit GPU.
    BestFit,
    /// Fragmentation gradient descent; GPU chosen by the same score.
    Fgd,
}

/// A placer reproducing one policy of the FGD simulator.
#[derive(Debug, Clone)]
pub struct KubePlacer {
    policy: KubePolicy,
    rng: GoRand,
    frag: Option<FragMemo>,
    shapes: HashMap<(u64, u32, u32), usize>,
    /// `cache[shape][node] = (node version + 1, score)`; version 0 marks an empty slot.
    cache: Vec<Vec<(u64, i64)>>,
    feasible: Vec<usize>,
}

impl KubePlacer {
    /// A placer for `policy` on `cluster`. `typical` is required for [`KubePolicy::Fgd`] (without it FGD
    /// scores every node 50, i.e. degenerates to first-fit in tie order).
    pub fn new(
        policy: KubePolicy,
        cluster: &Cluster,
        seed: i64,
        typical: Option<&TypicalPods>,
    ) -> Self {
        KubePlacer {
            policy,
            rng: GoRand::new(seed),
            frag: typical.map(|t| FragMemo::new(cluster, t)),
            shapes: HashMap::new(),
            cache: Vec::new(),
            feasible: Vec::new(),
        }
    }

    fn shape_id(&mut self, req: &InstanceRequest, nodes: usize) -> usize {
        let next = self.shapes.len();
        let id = *self
            .shapes
            .entry((req.cpu_milli, req.sm_request, req.gpu_count))
            .or_insert(next);
        if id == self.cache.len() {
            self.cache.push(vec![(0, 0); nodes]);
        }
        id
    }

    fn score(&mut self, node: &Node, req: &InstanceRequest) -> i64 {
        match self.policy {
            KubePolicy::Random => 0,
            KubePolicy::DotProd => dot_prod_score(node, req),
            KubePolicy::Clustering => clustering_score(node, req),
            KubePolicy::Packing => packing_score(node, req),
            KubePolicy::BestFit => best_fit_score(node, req),
            KubePolicy::Fgd => match self.frag.as_mut() {
                Some(memo) => fgd_score(memo, node, req).0,
                None => 50,
            },
        }
    }

    fn choose_gpus(&mut self, node: &Node, req: &InstanceRequest) -> Vec<u32> {
        if req.gpu_count == 0 {
            return Vec::new();
        }
        if !req.is_share() {
            return lowest_index_fitting(node, req);
        }
        match self.policy {
            KubePolicy::Random => {
                let mut chosen = None;
                let mut count = 0;
                for (i, g) in node.gpus.iter().enumerate() {
                    if gpu_fits(node, i, g, req) {
                        count += 1;
                        if self.rng.intn(count) == 0 {
                            chosen = Some(i as u32);
                        }
                    }
                }
                chosen.into_iter().collect()
            }
            KubePolicy::Fgd if self.frag.is_some() => match self.frag.as_mut() {
                Some(memo) => fgd_score(memo, node, req).1.into_iter().collect(),
                None => Vec::new(),
            },
            _ => best_fit_gpu(node, req).into_iter().collect(),
        }
    }
}

impl Placer for KubePlacer {
    fn name(&self) -> &'static str {
        let name = match self.policy {
            KubePolicy::Random => PlacerName::Random,
            KubePolicy::DotProd => PlacerName::DotProd,
            KubePolicy::Clustering => PlacerName::Clustering,
            KubePolicy::Packing => PlacerName::Packing,
            KubePolicy::BestFit => PlacerName::BestFit,
            KubePolicy::Fgd => PlacerName::Fgd,
        };
        name.as_str()
    }

    fn place(
        &mut self,
        cluster: &Cluster,
        req: &InstanceRequest,
    ) -> Result<Placement, Unschedulable> {
        let mask = cluster.model_mask(&req.gpu_types);
        if req.gpu_count > 0 && mask == Some(0) {
            return Err(Unschedulable::NoAllowedGpuModel(req.gpu_types_joined()));
        }
        let nodes = cluster.nodes();
        self.feasible.clear();
        self.feasible
            .extend((0..nodes.len()).filter(|&i| feasible(&nodes[i], req, mask)));
        let chosen = match self.feasible.len() {
            0 => return Err(Unschedulable::NoRoom(describe(req))),
            1 => self.feasible[0],
            n if self.policy == KubePolicy::Random => {
                self.feasible[self.rng.intn(n as i64) as usize]
            }
            _ => {
                let shape = self.shape_id(req, nodes.len());
                let mut best: Option<(i64, u32, usize)> = None;
                for k in 0..self.feasible.len() {
                    let i = self.feasible[k];
                    let node = &nodes[i];
                    let (stamp, cached) = self.cache[shape][i];
                    let score = if stamp == node.version + 1 {
                        cached
                    } else {
                        let s = self.score(node, req);
                        self.cache[shape][i] = (node.version + 1, s);
                        s
                    };
                    let better = match best {
                        None => true,
                        Some((bs, br, _)) => score > bs || (score == bs && node.tie_rank < br),
                    };
                    if better {
                        best = Some((score, node.tie_rank, i));
                    }
                }
                match best {
                    Some((_, _, i)) => i,
                    None => return Err(Unschedulable::NoRoom(describe(req))),
                }
            }
        };
        let gpus = self.choose_gpus(&nodes[chosen], req);
        if gpus.len() != req.gpu_count as usize {
            return Err(Unschedulable::NoRoom(describe(req)));
        }
        Ok(Placement::uniform(chosen, req, &gpus))
    }
}

/// A short description of a request for error messages.
pub(crate) fn describe(req: &InstanceRequest) -> String {
    format!(
        "{} × {} milli SM, {} MiB GPU memory, {} milli CPU, {} MiB memory{}",
        req.gpu_count,
        req.sm_request,
        req.gpu_mem_mib,
        req.cpu_milli,
        req.mem_mib,
        if req.gpu_types.is_empty() {
            String::new()
        } else {
            format!(", GPU model {}", req.gpu_types_joined())
        }
    )
}

/// FGD's filter: the node is not excluded, CPU, memory and pod count fit (NodeResourcesFit), and for a GPU pod the node has an allowed
/// model with `gpu_count` distinct GPUs that each have `sm_request` free and the memory (Open-Gpu-Share).
pub(crate) fn feasible(node: &Node, req: &InstanceRequest, mask: ModelMask) -> bool {
    if req.cpu_milli > node.cpu_free()
        || req.mem_mib > node.mem_free()
        || node.pods >= node.spec.max_pods
        || node.excluded
    {
        return false;
    }
    if req.gpu_count == 0 {
        return true;
    }
    if node.gpus.is_empty() || !Cluster::model_allowed(mask, node) {
        return false;
    }
    let fitting = node
        .gpus
        .iter()
        .enumerate()
        .filter(|&(i, g)| gpu_fits(node, i, g, req))
        .count();
    fitting >= req.gpu_count as usize
}

/// Whether GPU `i` (`g`) of the node can take one GPU's worth of the request: not excluded, SM share and GPU
/// memory.
fn gpu_fits(node: &Node, i: usize, g: &GpuState, req: &InstanceRequest) -> bool {
    g.free_milli() >= req.sm_request
        && node.spec.gpu_mem_mib - g.mem_mib >= req.gpu_mem_mib
        && !node.gpu_excluded(i)
}

/// The `gpu_count` lowest-index GPUs that fit (for whole GPUs: the lowest-index idle ones).
fn lowest_index_fitting(node: &Node, req: &InstanceRequest) -> Vec<u32> {
    node.gpus
        .iter()
        .enumerate()
        .filter(|&(i, g)| gpu_fits(node, i, g, req))
        .take(req.gpu_count as usize)
        .map(|(i, _)| i as u32)
        .collect()
}

/// FGD's `best` GPU choice for a share pod: the fitting GPU with the least free share, lowest index on ties.
fn best_fit_gpu(node: &Node, req: &InstanceRequest) -> Option<u32> {
    let mut best: Option<(u32, u32)> = None;
    for (i, g) in node.gpus.iter().enumerate() {
        let free = g.free_milli();
        if gpu_fits(node, i, g, req) && best.is_none_or(|(bf, _)| free < bf) {
            best = Some((free, i as u32));
        }
    }
    best.map(|(_, i)| i)
}

fn dot_prod_score(node: &Node, req: &InstanceRequest) -> i64 {
    let node_vec = [
        node.cpu_free() as f64 / MAX_SPEC_CPU,
        node.gpu_free_total() as f64 / MAX_SPEC_GPU,
    ];
    let pod_vec = [
        req.cpu_milli as f64 / MAX_SPEC_CPU,
        req.total_sm_request() as f64 / MAX_SPEC_GPU,
    ];
    let mut dot = 0.0;
    for (a, b) in node_vec.iter().zip(&pod_vec) {
        dot += a * b;
    }
    let score = 1.0 - dot / 2.0;
    (100.0 * score) as i64
}

fn clustering_score(node: &Node, req: &InstanceRequest) -> i64 {
    let Some(tag) = req.affinity_tag() else {
        return 0;
    };
    let base = 25 * (8000 - node.gpu_free_total() as i64) / 8000;
    let has_this = node.affinity.get(tag as usize).is_some_and(|&c| c > 0);
    let has_other = node
        .affinity
        .iter()
        .enumerate()
        .any(|(t, &c)| c > 0 && t != tag as usize);
    base + match (has_this, has_other) {
        (true, false) => 75,
        (true, true) => 50,
        (false, false) => 25,
        (false, true) => 0,
    }
}

fn packing_score(node: &Node, req: &InstanceRequest) -> i64 {
    if req.gpu_count == 0 {
        return 0;
    }
    let n = node.gpus.len() as i64;
    if node.gpus.iter().all(|g| g.free_milli() == SM_MILLI) {
        return (33 - n).max(n);
    }
    let mut order: Vec<(u32, usize)> = node
        .gpus
        .iter()
        .enumerate()
        .map(|(i, g)| (g.free_milli(), i))
        .collect();
    order.sort();
    let chosen: Vec<u32> = order
        .iter()
        .map(|&(f, _)| f)
        .filter(|&f| f >= req.sm_request)
        .take(req.gpu_count as usize)
        .collect();
    let fully_free = chosen.iter().filter(|&&f| f == SM_MILLI).count() as i64;
    if fully_free > 0 {
        (50 - fully_free).max(33)
    } else {
        let s: i64 = chosen.iter().map(|&f| i64::from(f) * 100 / 1000).sum();
        (100 - s / 10).max(50)
    }
}

fn best_fit_score(node: &Node, req: &InstanceRequest) -> i64 {
    let free = [node.cpu_free() as f64, node.gpu_free_total() as f64];
    let want = [req.cpu_milli as f64, req.total_sm_request() as f64];
    let max_spec = [MAX_SPEC_CPU, MAX_SPEC_GPU];
    let mut score = 0.0;
    for i in 0..2 {
        score += (free[i] - want[i]) / max_spec[i] * 0.5;
    }
    ((1.0 - score) * 100.0) as i64
}

fn sigmoid(x: f64) -> f64 {
    1.0 / (1.0 + (-x).exp())
}

/// FGD's score of a node and, for a share pod, the GPU it would take (the first index reaching the best
/// score); for other pods the GPU list is chosen elsewhere and `None` is returned.
fn fgd_score(memo: &mut FragMemo, node: &Node, req: &InstanceRequest) -> (i64, Option<u32>) {
    let before = memo.node_frag(node);
    let mut free: Vec<u32> = node.gpus.iter().map(|g| g.free_milli()).collect();
    let cpu_after = node.cpu_free().saturating_sub(req.cpu_milli);
    if req.is_share() {
        let mut best: Option<(i64, u32)> = None;
        for i in 0..free.len() {
            if !gpu_fits(node, i, &node.gpus[i], req) {
                continue;
            }
            free[i] -= req.sm_request;
            let after = memo.frag(NodeFree {
                model: node.model,
                cpu_free: cpu_after,
                gpu_free: &free,
            });
            free[i] += req.sm_request;
            let s = (sigmoid((before - after) / 1000.0) * 100.0) as i64;
            if best.is_none_or(|(bs, _)| s > bs) {
                best = Some((s, i as u32));
            }
        }
        return match best {
            Some((s, g)) => (s, Some(g)),
            None => (0, None),
        };
    }
    // Whole GPUs: the k GPUs with the least free share that still fits lose the request.
    let mut order: Vec<(u32, usize)> = free.iter().enumerate().map(|(i, &f)| (f, i)).collect();
    order.sort();
    for &(f, i) in order
        .iter()
        .filter(|&&(_, i)| gpu_fits(node, i, &node.gpus[i], req))
        .take(req.gpu_count as usize)
    {
        free[i] = f - req.sm_request;
    }
    let after = memo.frag(NodeFree {
        model: node.model,
        cpu_free: cpu_after,
        gpu_free: &free,
    });
    ((sigmoid((before - after) / 1000.0) * 100.0) as i64, None)
}
