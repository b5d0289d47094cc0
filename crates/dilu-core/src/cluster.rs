//! The cluster model: nodes with CPU, memory and GPUs, what is allocated on each GPU, and the two operations
//! that change it — [`Cluster::allocate`] and [`Cluster::release`] — which check every capacity invariant.

use crate::error::CoreError;
use crate::request::{InstanceKind, InstanceRequest, SM_MILLI};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;

/// Static description of a node.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeSpec {
    /// Unique node name.
    pub name: String,
    /// CPU capacity, milli-cores.
    pub cpu_milli: u64,
    /// Host memory capacity, MiB.
    pub mem_mib: u64,
    /// GPU model of all GPUs on the node (e.g. "V100M32", "A100-40GB"); empty when the node has no GPU.
    pub gpu_model: String,
    /// Number of GPUs.
    pub gpu_count: u32,
    /// Memory of each GPU, MiB.
    pub gpu_mem_mib: u64,
    /// Most instances (pods) the node accepts; Kubernetes' default in the FGD simulator is 1001.
    pub max_pods: u32,
}

/// Something running on a GPU, kept so that policies can see who shares a device.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Resident {
    /// Caller-chosen instance id (unique among live instances).
    pub instance: u64,
    /// What the instance does.
    pub kind: InstanceKind,
    /// The function it belongs to, if any.
    pub service: Option<String>,
    /// SM limit charged to this GPU, milli (for policies that group residents by their partition size).
    pub sm_limit: u32,
}

/// What is allocated on one GPU.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct GpuState {
    /// Σ SM requests of its residents, milli (never above 1000).
    pub sm_request: u32,
    /// Σ SM limits of its residents, milli (may exceed 1000: limits over-commit).
    pub sm_limit: u32,
    /// Σ GPU memory of its residents, MiB.
    pub mem_mib: u64,
    /// Who runs on it.
    pub residents: Vec<Resident>,
}

impl GpuState {
    /// Unrequested SM share, milli.
    pub fn free_milli(&self) -> u32 {
        SM_MILLI - self.sm_request
    }

    /// A GPU with nothing on it: it can be handed back (the cost metric counts active GPUs).
    pub fn is_idle(&self) -> bool {
        self.residents.is_empty()
    }
}

/// One GPU's part of a placement: which GPU and what is charged to it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct GpuShare {
    /// GPU index on the node.
    pub gpu: u32,
    /// SM request charged, milli.
    pub sm_request: u32,
    /// SM limit charged, milli.
    pub sm_limit: u32,
    /// GPU memory charged, MiB.
    pub mem_mib: u64,
}

/// Where an instance goes and what it is charged; self-contained so that [`Cluster::release`] can undo it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Placement {
    /// Caller-chosen instance id.
    pub instance: u64,
    /// Node index in the cluster.
    pub node: usize,
    /// CPU charged, milli.
    pub cpu_milli: u64,
    /// Host memory charged, MiB.
    pub mem_mib: u64,
    /// Per-GPU charges (distinct GPUs).
    pub shares: Vec<GpuShare>,
    /// What the instance does.
    pub kind: InstanceKind,
    /// Its function, if any.
    pub service: Option<String>,
    /// FGD's GPU-affinity tag (see [`InstanceRequest::affinity_tag`]).
    pub affinity: Option<u32>,
}

impl Placement {
    /// A placement charging each listed GPU the request's per-GPU SM request, limit and memory.
    pub fn uniform(node: usize, req: &InstanceRequest, gpus: &[u32]) -> Self {
        let shares = gpus
            .iter()
            .map(|&gpu| GpuShare {
                gpu,
                sm_request: req.sm_request,
                sm_limit: req.sm_limit,
                mem_mib: req.gpu_mem_mib,
            })
            .collect();
        Self::with_shares(node, req, shares)
    }

    /// A placement with explicit per-GPU charges (e.g. an LLM whose memory is split over GPUs).
    pub fn with_shares(node: usize, req: &InstanceRequest, shares: Vec<GpuShare>) -> Self {
        Placement {
            instance: 0,
            node,
            cpu_milli: req.cpu_milli,
            mem_mib: req.mem_mib,
            shares,
            kind: req.kind,
            service: req.service.clone(),
            affinity: req.affinity_tag(),
        }
    }
}

/// A node and what is allocated on it.
#[derive(Debug, Clone)]
pub struct Node {
    /// Static description.
    pub spec: NodeSpec,
    /// Index of the node's GPU model in [`Cluster::gpu_models`].
    pub model: u16,
    /// CPU allocated, milli.
    pub cpu_used: u64,
    /// Host memory allocated, MiB.
    pub mem_used: u64,
    /// Instances on the node.
    pub pods: u32,
    /// Per-GPU allocation.
    pub gpus: Vec<GpuState>,
    /// Count of GPU instances per affinity tag (FGD clustering); index = tag (0 = share).
    pub affinity: Vec<u32>,
    /// Bumped on every change, so that policies can cache per-node results.
    pub version: u64,
    /// Rank for breaking score ties: lower wins. Defaults to the node index.
    pub tie_rank: u32,
    /// Set while the instance being placed may not run here (its placement rules,
    /// [`crate::ledger::Ledger::place_where`]): every placer skips the node as if it were full.
    pub excluded: bool,
    /// Bit `i` set while the instance being placed may not use GPU `i` (its function's spread): every placer
    /// skips that GPU as if it were full ([`Node::gpu_excluded`]). A mask on the node rather than a flag per
    /// GPU keeps [`GpuState`] small for the placers' scans; GPUs from index 64 on are never excluded.
    pub excluded_gpus: u64,
}

impl Node {
    /// Free CPU, milli.
    pub fn cpu_free(&self) -> u64 {
        self.spec.cpu_milli - self.cpu_used
    }

    /// Free host memory, MiB.
    pub fn mem_free(&self) -> u64 {
        self.spec.mem_mib - self.mem_used
    }

    /// Σ unrequested SM share over the node's GPUs, milli.
    pub fn gpu_free_total(&self) -> u64 {
        self.gpus.iter().map(|g| u64::from(g.free_milli())).sum()
    }

    /// Number of GPUs with at least `milli` unrequested.
    pub fn gpus_with_free(&self, milli: u32) -> u32 {
        self.gpus.iter().filter(|g| g.free_milli() >= milli).count() as u32
    }

    /// Whether GPU `gpu` is excluded for the instance being placed ([`Node::excluded_gpus`]).
    pub fn gpu_excluded(&self, gpu: usize) -> bool {
        gpu < 64 && self.excluded_gpus >> gpu & 1 == 1
    }

    /// True when nothing runs on any GPU of the node and no CPU instance either.
    pub fn is_empty(&self) -> bool {
        self.pods == 0
    }
}

/// The whole cluster. Node indices are stable; GPU models are interned for fast type checks.
#[derive(Debug, Clone)]
pub struct Cluster {
    nodes: Vec<Node>,
    /// Live placements by instance id: the ledger that makes `release` exact.
    live: HashMap<u64, Placement>,
    gpu_models: Vec<String>,
    sm_requested: u64,
    active_gpus: u32,
    total_gpus: u32,
}

/// Allowed GPU models of a request resolved against a cluster: `None` accepts any model.
pub type ModelMask = Option<u128>;

impl Cluster {
    /// Builds a cluster from node specs; names must be unique and a node with GPUs needs a model name.
    pub fn new(specs: Vec<NodeSpec>) -> Result<Self, CoreError> {
        let mut seen = std::collections::HashSet::new();
        let mut gpu_models: Vec<String> = Vec::new();
        let mut nodes = Vec::with_capacity(specs.len());
        let mut total_gpus = 0u32;
        for (i, spec) in specs.into_iter().enumerate() {
            let node_err = |field, value: String, rule| CoreError::Node {
                node: spec.name.clone(),
                field,
                value,
                rule,
            };
            if !seen.insert(spec.name.clone()) {
                return Err(node_err(
                    "name",
                    spec.name.clone(),
                    "node names must be unique",
                ));
            }
            if spec.gpu_count > 0 && spec.gpu_model.is_empty() {
                return Err(node_err(
                    "gpu_model",
                    "\"\"".into(),
                    "a node with GPUs needs a GPU model",
                ));
            }
            let model = match gpu_models.iter().position(|m| *m == spec.gpu_model) {
                Some(p) => p,
                None => {
                    if gpu_models.len() >= 128 {
                        return Err(node_err(
                            "gpu_model",
                            spec.gpu_model.clone(),
                            "at most 128 distinct GPU models per cluster",
                        ));
                    }
                    gpu_models.push(spec.gpu_model.clone());
                    gpu_models.len() - 1
                }
            };
            total_gpus += spec.gpu_count;
            nodes.push(Node {
                gpus: vec![GpuState::default(); spec.gpu_count as usize],
                spec,
                model: model as u16,
                cpu_used: 0,
                mem_used: 0,
                pods: 0,
                affinity: Vec::new(),
                version: 0,
                tie_rank: i as u32,
                excluded: false,
                excluded_gpus: 0,
            });
        }
        Ok(Cluster {
            nodes,
            live: HashMap::new(),
            gpu_models,
            sm_requested: 0,
            active_gpus: 0,
            total_gpus,
        })
    }

    /// All nodes, by index.
    pub fn nodes(&self) -> &[Node] {
        &self.nodes
    }

    /// The GPU models present, indexed by [`Node::model`].
    pub fn gpu_models(&self) -> &[String] {
        &self.gpu_models
    }

    /// Total number of GPUs.
    pub fn total_gpus(&self) -> u32 {
        self.total_gpus
    }

    /// Total SM capacity, milli (1000 per GPU).
    pub fn total_sm_milli(&self) -> u64 {
        u64::from(self.total_gpus) * u64::from(SM_MILLI)
    }

    /// Σ SM requests allocated over the cluster, milli.
    pub fn sm_requested(&self) -> u64 {
        self.sm_requested
    }

    /// GPUs with at least one resident.
    pub fn active_gpus(&self) -> u32 {
        self.active_gpus
    }

    /// Sets the tie-breaking rank of every node (lower wins), e.g. FGD's seeded node-name prefixes.
    pub fn set_tie_ranks(&mut self, ranks: &[u32]) {
        for (node, &rank) in self.nodes.iter_mut().zip(ranks) {
            node.tie_rank = rank;
        }
    }

    /// Marks node `index` as one the instance being placed may not run on (or not); see [`Node::excluded`].
    pub fn set_excluded(&mut self, index: usize, excluded: bool) {
        if let Some(node) = self.nodes.get_mut(index) {
            node.excluded = excluded;
        }
    }

    /// Marks GPU `gpu` of node `node` as one the instance being placed may not use (or not); see
    /// [`Node::excluded_gpus`]. The node's version moves, so that scores cached per node are not reused.
    pub fn set_gpu_excluded(&mut self, node: usize, gpu: usize, excluded: bool) {
        if let Some(n) = self.nodes.get_mut(node)
            && gpu < n.gpus.len().min(64)
        {
            let mask = if excluded {
                n.excluded_gpus | 1 << gpu
            } else {
                n.excluded_gpus & !(1 << gpu)
            };
            if mask != n.excluded_gpus {
                n.excluded_gpus = mask;
                n.version += 1;
            }
        }
    }

    /// Clears every node's [`Node::excluded`] and [`Node::excluded_gpus`] marks.
    pub fn clear_excluded(&mut self) {
        for node in &mut self.nodes {
            node.excluded = false;
            if node.excluded_gpus != 0 {
                node.excluded_gpus = 0;
                node.version += 1;
            }
        }
    }

    /// Resolves a request's allowed GPU models to a mask over [`Cluster::gpu_models`].
    pub fn model_mask(&self, types: &[String]) -> ModelMask {
        if types.is_empty() {
            return None;
        }
        let mut mask = 0u128;
        for (i, m) in self.gpu_models.iter().enumerate() {
            if types.iter().any(|t| t == m) {
                mask |= 1 << i;
            }
        }
        Some(mask)
    }

    /// Whether a node's GPU model is allowed by a mask.
    pub fn model_allowed(mask: ModelMask, node: &Node) -> bool {
        Self::model_in_mask(mask, node.model)
    }

    /// Whether a GPU model index is allowed by a mask.
    pub fn model_in_mask(mask: ModelMask, model: u16) -> bool {
        mask.is_none_or(|m| m & (1u128 << model) != 0)
    }

    /// Applies a placement after checking every capacity: CPU, host memory, pod count, and per GPU the SM
    /// request (Σ ≤ 1000) and memory. Limits may over-commit; bounding them is the placer's policy. On error
    /// nothing changes.
    pub fn allocate(&mut self, p: &Placement) -> Result<(), CoreError> {
        if self.live.contains_key(&p.instance) {
            return Err(CoreError::DuplicateInstance(p.instance));
        }
        let node = self
            .nodes
            .get(p.node)
            .ok_or(CoreError::NoSuchNode(p.node))?;
        let over = |resource: String, requested: u64, free: u64| CoreError::OverCapacity {
            node: node.spec.name.clone(),
            resource,
            requested,
            free,
        };
        if p.cpu_milli > node.cpu_free() {
            return Err(over("cpu_milli".into(), p.cpu_milli, node.cpu_free()));
        }
        if p.mem_mib > node.mem_free() {
            return Err(over("mem_mib".into(), p.mem_mib, node.mem_free()));
        }
        if node.pods >= node.spec.max_pods {
            return Err(over("pods".into(), 1, 0));
        }
        for (i, s) in p.shares.iter().enumerate() {
            let bad = |rule| CoreError::BadGpu {
                node: node.spec.name.clone(),
                gpu: s.gpu,
                rule,
            };
            let gpu = node
                .gpus
                .get(s.gpu as usize)
                .ok_or_else(|| bad("no such GPU"))?;
            if p.shares[..i].iter().any(|o| o.gpu == s.gpu) {
                return Err(bad("named twice in one placement"));
            }
            if s.sm_request > gpu.free_milli() {
                let r = format!("gpu {} sm_request", s.gpu);
                return Err(over(r, s.sm_request.into(), gpu.free_milli().into()));
            }
            let mem_free = node.spec.gpu_mem_mib - gpu.mem_mib;
            if s.mem_mib > mem_free {
                return Err(over(format!("gpu {} mem_mib", s.gpu), s.mem_mib, mem_free));
            }
        }
        let node = &mut self.nodes[p.node];
        node.cpu_used += p.cpu_milli;
        node.mem_used += p.mem_mib;
        node.pods += 1;
        node.version += 1;
        if let Some(tag) = p.affinity {
            let tag = tag as usize;
            if node.affinity.len() <= tag {
                node.affinity.resize(tag + 1, 0);
            }
            node.affinity[tag] += 1;
        }
        for s in &p.shares {
            let gpu = &mut node.gpus[s.gpu as usize];
            if gpu.is_idle() {
                self.active_gpus += 1;
            }
            gpu.sm_request += s.sm_request;
            gpu.sm_limit += s.sm_limit;
            gpu.mem_mib += s.mem_mib;
            gpu.residents.push(Resident {
                instance: p.instance,
                kind: p.kind,
                service: p.service.clone(),
                sm_limit: s.sm_limit,
            });
            self.sm_requested += u64::from(s.sm_request);
        }
        self.live.insert(p.instance, p.clone());
        Ok(())
    }

    /// Undoes a placement made by [`Cluster::allocate`], restoring the exact prior amounts. Only a placement
    /// that is live, identical to what was allocated, can be released; anything else is an error and changes
    /// nothing.
    pub fn release(&mut self, p: &Placement) -> Result<(), CoreError> {
        match self.live.get(&p.instance) {
            Some(live) if live == p => {}
            Some(_) => {
                return Err(CoreError::NotAllocated {
                    instance: p.instance,
                    rule: "differs from the placement allocated under this id",
                });
            }
            None => {
                return Err(CoreError::NotAllocated {
                    instance: p.instance,
                    rule: "no live placement has this id",
                });
            }
        }
        self.live.remove(&p.instance);
        let node = &mut self.nodes[p.node];
        node.cpu_used -= p.cpu_milli;
        node.mem_used -= p.mem_mib;
        node.pods -= 1;
        node.version += 1;
        if let Some(tag) = p.affinity {
            node.affinity[tag as usize] -= 1;
        }
        for s in &p.shares {
            let gpu = &mut node.gpus[s.gpu as usize];
            gpu.sm_request -= s.sm_request;
            gpu.sm_limit -= s.sm_limit;
            gpu.mem_mib -= s.mem_mib;
            if let Some(pos) = gpu.residents.iter().position(|r| r.instance == p.instance) {
                gpu.residents.remove(pos);
            }
            if gpu.is_idle() {
                self.active_gpus -= 1;
            }
            self.sm_requested -= u64::from(s.sm_request);
        }
        Ok(())
    }
}
