//! Dilu's resourcing-complementary scheduling (`docs/algorithms.md` §4): 2D best fit over (SM request, memory)
//! with request/limit admission, a training-affinity tier for inference, worst-fit with memory split for LLM
//! inference, and training gangs on one node.
//!
//! Defects of the reference fixed here: placement is deterministic (index order, no set iteration), the LLM
//! branch works, and idle GPUs are taken from nodes already in use before empty nodes, which keeps whole
//! nodes free for training gangs.

use crate::cluster::{Cluster, GpuShare, GpuState, ModelMask, Node, Placement};
use crate::placement::gang::{best_gang, node_admits};
use crate::placement::kube::describe;
use crate::placement::{PlacementScore, Placer, Unschedulable};
use crate::request::{InstanceKind, InstanceRequest, SM_MILLI};
use serde::{Deserialize, Serialize};
use std::collections::BTreeSet;

/// Dilu's admission and scoring constants.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct DiluParams {
    /// Σ requests per GPU may reach `omega` × the GPU (1: requests never over-commit).
    pub omega: f64,
    /// Σ limits per GPU may reach `gamma` × the GPU (1.5: limits over-commit by half).
    pub gamma: f64,
    /// Weight of the SM term of the best-fit score.
    pub alpha: f64,
    /// Weight of the memory term of the best-fit score.
    pub beta: f64,
}

impl Default for DiluParams {
    fn default() -> Self {
        DiluParams {
            omega: 1.0,
            gamma: 1.5,
            alpha: 0.6,
            beta: 0.4,
        }
    }
}

/// Tier offsets: a lower tier always wins over a higher one, since a score stays within [0, 1].
const TIER_ACTIVE: f64 = 10.0;
const TIER_IDLE_USED_NODE: f64 = 20.0;
const TIER_IDLE_EMPTY_NODE: f64 = 30.0;

/// Dilu's placer.
#[derive(Debug, Clone, Copy, Default)]
pub struct DiluPlacer {
    params: DiluParams,
}

impl DiluPlacer {
    /// A placer with the given constants.
    pub fn new(params: DiluParams) -> Self {
        DiluPlacer { params }
    }

    /// Whether a GPU admits (req, lim, mem) under ω and γ.
    fn admits(&self, node: &Node, g: &GpuState, req: u32, lim: u32, mem: u64) -> bool {
        let cap = f64::from(SM_MILLI);
        f64::from(g.sm_request + req) <= self.params.omega * cap + 1e-9
            && g.sm_request + req <= SM_MILLI
            && f64::from(g.sm_limit + lim) <= self.params.gamma * cap + 1e-9
            && g.mem_mib + mem <= node.spec.gpu_mem_mib
    }

    /// The 2D best-fit score: the fragment the GPU would keep; lower is better.
    fn fit_score(&self, node: &Node, g: &GpuState, req: u32, mem: u64) -> f64 {
        let sm = 1.0 - f64::from(g.sm_request + req) / f64::from(SM_MILLI);
        let mem_term = if node.spec.gpu_mem_mib == 0 {
            0.0
        } else {
            1.0 - (g.mem_mib + mem) as f64 / node.spec.gpu_mem_mib as f64
        };
        self.params.alpha * sm + self.params.beta * mem_term
    }

    /// The tier a GPU is ranked in for `req` (the tiers' offsets order them) and its name.
    fn tier(
        affinity: &BTreeSet<(usize, usize)>,
        ni: usize,
        node: &Node,
        gi: usize,
        g: &GpuState,
    ) -> (f64, &'static str) {
        if affinity.contains(&(ni, gi)) {
            (0.0, "beside a training gang of the same function")
        } else if !g.is_idle() {
            (TIER_ACTIVE, "active device")
        } else if node.is_empty() {
            (TIER_IDLE_EMPTY_NODE, "idle device on an empty node")
        } else {
            (TIER_IDLE_USED_NODE, "idle device on a node in use")
        }
    }

    fn idle_tier(node: &Node) -> f64 {
        if node.is_empty() {
            TIER_IDLE_EMPTY_NODE
        } else {
            TIER_IDLE_USED_NODE
        }
    }

    /// GPUs of training gangs that share a GPU with a replica of this service, minus the GPUs that already
    /// host a replica: spreading replicas there lets bursts squeeze elastic training.
    fn training_affinity(cluster: &Cluster, service: &str) -> BTreeSet<(usize, usize)> {
        let mut out = BTreeSet::new();
        for (ni, node) in cluster.nodes().iter().enumerate() {
            let hosts = |g: &GpuState| {
                g.residents
                    .iter()
                    .any(|r| r.service.as_deref() == Some(service))
            };
            for g in node.gpus.iter().filter(|g| hosts(g)) {
                for r in g
                    .residents
                    .iter()
                    .filter(|r| r.kind == InstanceKind::Training)
                {
                    for (gi, other) in node.gpus.iter().enumerate() {
                        if !hosts(other) && other.residents.iter().any(|o| o.instance == r.instance)
                        {
                            out.insert((ni, gi));
                        }
                    }
                }
            }
        }
        out
    }

    fn place_inference(
        &self,
        cluster: &Cluster,
        req: &InstanceRequest,
        mask: ModelMask,
    ) -> Option<Placement> {
        let affinity = match &req.service {
            Some(s) => Self::training_affinity(cluster, s),
            None => BTreeSet::new(),
        };
        best_gang(cluster, req, mask, |ni, node, gi, g| {
            if !self.admits(node, g, req.sm_request, req.sm_limit, req.gpu_mem_mib) {
                return None;
            }
            let (tier, _) = Self::tier(&affinity, ni, node, gi, g);
            Some(tier + self.fit_score(node, g, req.sm_request, req.gpu_mem_mib))
        })
        .map(|(n, gpus)| Placement::uniform(n, req, &gpus))
    }

    fn place_llm(
        &self,
        cluster: &Cluster,
        req: &InstanceRequest,
        mask: ModelMask,
    ) -> Option<Placement> {
        // 1. Worst fit on memory among active GPUs: the least used memory first.
        let active = best_gang(cluster, req, mask, |_, node, _, g| {
            (!g.is_idle() && self.admits(node, g, req.sm_request, req.sm_limit, req.gpu_mem_mib))
                .then_some(g.mem_mib as f64)
        });
        if let Some((n, gpus)) = active {
            return Some(Placement::uniform(n, req, &gpus));
        }
        // 2. Split the model's memory over active GPUs of one node, most used first; each shard is charged the
        //    request as both request and limit.
        if req.gpu_count == 1 {
            for (ni, node) in cluster.nodes().iter().enumerate() {
                if !node_admits(node, req, mask) {
                    continue;
                }
                let mut order: Vec<(u64, usize)> = node
                    .gpus
                    .iter()
                    .enumerate()
                    .filter(|(i, g)| {
                        !node.gpu_excluded(*i) && !g.is_idle() && g.mem_mib < node.spec.gpu_mem_mib
                    })
                    .filter(|(_, g)| self.admits(node, g, req.sm_request, req.sm_request, 0))
                    .map(|(i, g)| (g.mem_mib, i))
                    .collect();
                order.sort_by(|a, b| b.0.cmp(&a.0).then(a.1.cmp(&b.1)));
                let mut left = req.gpu_mem_mib;
                let mut shares = Vec::new();
                for (used, gi) in order {
                    if left == 0 {
                        break;
                    }
                    let take = (node.spec.gpu_mem_mib - used).min(left);
                    left -= take;
                    shares.push(GpuShare {
                        gpu: gi as u32,
                        sm_request: req.sm_request,
                        sm_limit: req.sm_request,
                        mem_mib: take,
                    });
                }
                if left == 0 && shares.len() > 1 {
                    return Some(Placement::with_shares(ni, req, shares));
                }
            }
        }
        // 3. An idle GPU, on a node already in use if possible.
        best_gang(cluster, req, mask, |_, node, _, g| {
            (g.is_idle() && self.admits(node, g, req.sm_request, req.sm_limit, req.gpu_mem_mib))
                .then(|| {
                    Self::idle_tier(node) + self.fit_score(node, g, req.sm_request, req.gpu_mem_mib)
                })
        })
        .map(|(n, gpus)| Placement::uniform(n, req, &gpus))
    }

    fn place_gang(
        &self,
        cluster: &Cluster,
        req: &InstanceRequest,
        mask: ModelMask,
    ) -> Option<Placement> {
        // Active GPUs that fit first, then idle GPUs of the same node: all on one node.
        best_gang(cluster, req, mask, |_, node, _, g| {
            if !self.admits(node, g, req.sm_request, req.sm_limit, req.gpu_mem_mib) {
                return None;
            }
            let tier = if g.is_idle() {
                Self::idle_tier(node)
            } else {
                TIER_ACTIVE
            };
            Some(tier + self.fit_score(node, g, req.sm_request, req.gpu_mem_mib))
        })
        .map(|(n, gpus)| Placement::uniform(n, req, &gpus))
    }
}

impl Placer for DiluPlacer {
    fn name(&self) -> &'static str {
        "dilu"
    }

    /// The 2D best-fit score of the chosen GPUs (summed over a gang) and the tier they were taken from. An LLM
    /// placed by memory (worst fit, or split over GPUs) and a GPU-less instance have none.
    fn explain(
        &self,
        cluster: &Cluster,
        req: &InstanceRequest,
        placement: &Placement,
    ) -> Option<PlacementScore> {
        let node = cluster.nodes().get(placement.node)?;
        if placement.shares.is_empty() || req.kind == InstanceKind::LlmInference {
            return None;
        }
        let affinity = match (&req.service, req.kind, req.gpu_count) {
            (Some(s), InstanceKind::Inference | InstanceKind::Pod, 1) => {
                Self::training_affinity(cluster, s)
            }
            _ => BTreeSet::new(),
        };
        let mut value = 0.0;
        let mut tier = None;
        for share in &placement.shares {
            let gi = share.gpu as usize;
            let g = node.gpus.get(gi)?;
            value += self.fit_score(node, g, req.sm_request, req.gpu_mem_mib);
            tier.get_or_insert(Self::tier(&affinity, placement.node, node, gi, g).1);
        }
        Some(PlacementScore {
            value,
            measure: "2D best-fit: alpha × SM request left free + beta × memory left free (lower is tighter)",
            tier,
        })
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
        let placed = match req.kind {
            _ if req.gpu_count == 0 => best_gang(cluster, req, mask, |_, _, _, _| Some(0.0))
                .map(|(n, _)| Placement::uniform(n, req, &[])),
            InstanceKind::LlmInference => self.place_llm(cluster, req, mask),
            InstanceKind::Training => self.place_gang(cluster, req, mask),
            InstanceKind::Inference | InstanceKind::Pod if req.gpu_count == 1 => {
                self.place_inference(cluster, req, mask)
            }
            InstanceKind::Inference | InstanceKind::Pod => self.place_gang(cluster, req, mask),
        };
        placed.ok_or_else(|| {
            Unschedulable::NoRoom(format!(
                "{} with an SM limit of {} milli; Dilu admits on a GPU Σ requests up to {} and Σ limits up to {} × \
                 the GPU",
                describe(req),
                req.sm_limit,
                self.params.omega,
                self.params.gamma
            ))
        })
    }
}
