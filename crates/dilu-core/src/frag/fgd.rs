//! FGD's fragmentation measure (`docs/algorithms.md` §10): for each node, the expected amount of idle GPU that a pod
//! drawn from the "typical pod" distribution could not use, in milli-GPU.

use crate::cluster::{Cluster, ModelMask, Node};
use crate::request::InstanceRequest;
use std::collections::HashMap;

/// One pod shape of the typical-pod distribution and its probability.
#[derive(Debug, Clone, PartialEq)]
pub struct TypicalPod {
    /// CPU request, milli.
    pub cpu_milli: u64,
    /// Per-GPU SM request, milli (0 for CPU-only).
    pub milli: u32,
    /// GPU count.
    pub gpu_count: u32,
    /// Accepted GPU models, joined with `|` as in the trace (part of the shape key).
    pub gpu_types: String,
    /// How many pods of the trace had this shape.
    pub count: u64,
    /// Probability after renormalising over the kept shapes.
    pub prob: f64,
}

/// The typical-pod distribution: the most popular shapes covering a threshold of the trace's pods.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct TypicalPods {
    /// Kept shapes, most popular first.
    pub pods: Vec<TypicalPod>,
    /// Fraction of all pods the kept shapes cover.
    pub coverage: f64,
}

impl TypicalPods {
    /// Builds the distribution as FGD does (`GetTypicalPods` with isInvolvedCpuPods = true, step 1,
    /// GPU weight 0): count shapes (CPU, per-GPU milli, GPU count, type string), sort by count descending with
    /// ties to the larger key, keep shapes until the cumulative count reaches `threshold_pct` of all pods, and
    /// renormalise. Float operations follow the Go code's order so that scores match bit for bit.
    pub fn from_requests<'a>(
        requests: impl IntoIterator<Item = &'a InstanceRequest>,
        threshold_pct: f64,
    ) -> Self {
        let mut counts: HashMap<(u64, u32, u32, String), u64> = HashMap::new();
        let mut total = 0u64;
        for r in requests {
            *counts
                .entry((r.cpu_milli, r.sm_request, r.gpu_count, r.gpu_types_joined()))
                .or_default() += 1;
            total += 1;
        }
        let mut shapes: Vec<_> = counts.into_iter().collect();
        shapes.sort_by(|(ka, ca), (kb, cb)| cb.cmp(ca).then_with(|| kb.cmp(ka)));
        let total_f = total as f64;
        let expected = threshold_pct * total_f / 100.0;
        let mut cum = 0.0f64;
        let mut kept = 0usize;
        while cum < expected && kept < shapes.len() {
            cum += shapes[kept].1 as f64;
            kept += 1;
        }
        let renorm = kept < shapes.len();
        let pods = shapes
            .into_iter()
            .take(kept)
            .map(|((cpu_milli, milli, gpu_count, gpu_types), count)| {
                let share = count as f64 / total_f;
                TypicalPod {
                    cpu_milli,
                    milli,
                    gpu_count,
                    gpu_types,
                    count,
                    prob: if renorm {
                        share / (cum / total_f)
                    } else {
                        share
                    },
                }
            })
            .collect();
        TypicalPods {
            pods,
            coverage: if total == 0 { 0.0 } else { cum / total_f },
        }
    }
}

/// Fragment classes of a (node, typical pod) pair, in FGD's bucket order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum FragClass {
    Q1LackBoth = 0,
    Q2LackGpu = 1,
    Q3Satisfied = 2,
    Q4LackCpu = 3,
    XlSatisfied = 4,
    XrLackCpu = 5,
    NoAccess = 6,
}

/// A typical pod resolved against one cluster's GPU models.
#[derive(Debug, Clone)]
struct ResolvedTypical {
    cpu_milli: u64,
    milli: u32,
    gpu_count: u32,
    mask: ModelMask,
    prob: f64,
}

/// Computes and memoises node fragmentation for one cluster and one typical-pod distribution. The value
/// depends only on (GPU model, free CPU, multiset of free GPU milli), which repeats a lot across nodes.
#[derive(Debug, Clone)]
pub struct FragMemo {
    typical: Vec<ResolvedTypical>,
    memo: HashMap<(u16, u64, [u16; 16]), f64>,
}

/// Free-GPU state of a (possibly hypothetical) node, enough to compute its fragmentation.
#[derive(Debug, Clone, Copy)]
pub struct NodeFree<'a> {
    /// GPU model index.
    pub model: u16,
    /// Free CPU, milli.
    pub cpu_free: u64,
    /// Free milli of each GPU.
    pub gpu_free: &'a [u32],
}

impl FragMemo {
    /// Resolves the distribution's GPU-type constraints against the cluster's models.
    pub fn new(cluster: &Cluster, typical: &TypicalPods) -> Self {
        let typical = typical
            .pods
            .iter()
            .map(|t| {
                let types: Vec<String> = t
                    .gpu_types
                    .split('|')
                    .filter(|s| !s.is_empty())
                    .map(str::to_owned)
                    .collect();
                ResolvedTypical {
                    cpu_milli: t.cpu_milli,
                    milli: t.milli,
                    gpu_count: t.gpu_count,
                    mask: cluster.model_mask(&types),
                    prob: t.prob,
                }
            })
            .collect();
        FragMemo {
            typical,
            memo: HashMap::new(),
        }
    }

    /// Node fragmentation F_n (Σ of all buckets but Q3), milli-GPU, for the node's current state.
    pub fn node_frag(&mut self, node: &Node) -> f64 {
        let mut free = [0u32; 16];
        let n = node.gpus.len().min(16);
        for (f, g) in free.iter_mut().zip(&node.gpus) {
            *f = g.free_milli();
        }
        if node.gpus.len() > 16 {
            let all: Vec<u32> = node.gpus.iter().map(|g| g.free_milli()).collect();
            return self.compute(NodeFree {
                model: node.model,
                cpu_free: node.cpu_free(),
                gpu_free: &all,
            });
        }
        self.frag(NodeFree {
            model: node.model,
            cpu_free: node.cpu_free(),
            gpu_free: &free[..n],
        })
    }

    /// Node fragmentation of an arbitrary free state, memoised when the node has at most 16 GPUs.
    pub fn frag(&mut self, state: NodeFree<'_>) -> f64 {
        if state.gpu_free.len() > 16 {
            return self.compute(state);
        }
        let mut key = [u16::MAX; 16];
        for (k, &f) in key.iter_mut().zip(state.gpu_free) {
            *k = f as u16;
        }
        key[..state.gpu_free.len()].sort_unstable();
        let memo_key = (state.model, state.cpu_free, key);
        if let Some(&v) = self.memo.get(&memo_key) {
            return v;
        }
        let v = self.compute(state);
        self.memo.insert(memo_key, v);
        v
    }

    fn compute(&self, s: NodeFree<'_>) -> f64 {
        let mut buckets = [0.0f64; 7];
        let total: u64 = s.gpu_free.iter().map(|&f| u64::from(f)).sum();
        for t in &self.typical {
            let cpu_fits = s.cpu_free >= t.cpu_milli;
            let class = if t.milli == 0 {
                if cpu_fits {
                    FragClass::XlSatisfied
                } else {
                    FragClass::XrLackCpu
                }
            } else if !Cluster::model_in_mask(t.mask, s.model) {
                FragClass::NoAccess
            } else {
                let fitting = s.gpu_free.iter().filter(|&&f| f >= t.milli).count() as u32;
                match (fitting >= t.gpu_count, cpu_fits) {
                    (true, true) => FragClass::Q3Satisfied,
                    (true, false) => FragClass::Q4LackCpu,
                    (false, true) => FragClass::Q2LackGpu,
                    (false, false) => FragClass::Q1LackBoth,
                }
            };
            if class == FragClass::Q3Satisfied {
                let short: u64 = s
                    .gpu_free
                    .iter()
                    .filter(|&&f| f < t.milli)
                    .map(|&f| u64::from(f))
                    .sum();
                buckets[FragClass::Q2LackGpu as usize] += t.prob * short as f64;
                buckets[FragClass::Q3Satisfied as usize] += t.prob * (total - short) as f64;
            } else {
                buckets[class as usize] += t.prob * total as f64;
            }
        }
        let mut out = 0.0;
        for (i, b) in buckets.iter().enumerate() {
            if i != FragClass::Q3Satisfied as usize {
                out += b;
            }
        }
        out
    }
}

/// Cluster-wide FGD fragmentation, kept per node and updated when a node changes.
#[derive(Debug, Clone)]
pub struct FgdFragTracker {
    memo: FragMemo,
    node_frag: Vec<f64>,
    node_idle: Vec<u64>,
    frag_total: f64,
    idle_total: u64,
}

impl FgdFragTracker {
    /// Measures every node of the cluster once.
    pub fn new(cluster: &Cluster, typical: &TypicalPods) -> Self {
        let mut memo = FragMemo::new(cluster, typical);
        let node_frag: Vec<f64> = cluster.nodes().iter().map(|n| memo.node_frag(n)).collect();
        let node_idle: Vec<u64> = cluster.nodes().iter().map(Node::gpu_free_total).collect();
        let frag_total = node_frag.iter().sum();
        let idle_total = node_idle.iter().sum();
        FgdFragTracker {
            memo,
            node_frag,
            node_idle,
            frag_total,
            idle_total,
        }
    }

    /// Re-measures one node after it changed.
    pub fn node_changed(&mut self, cluster: &Cluster, node: usize) {
        let n = &cluster.nodes()[node];
        let f = self.memo.node_frag(n);
        let idle = n.gpu_free_total();
        self.frag_total += f - self.node_frag[node];
        self.idle_total = self.idle_total + idle - self.node_idle[node];
        self.node_frag[node] = f;
        self.node_idle[node] = idle;
    }

    /// Σ_n F_n, milli-GPU.
    pub fn frag_amount(&self) -> f64 {
        self.frag_total
    }

    /// Idle (unrequested) GPU milli over the cluster.
    pub fn idle_milli(&self) -> u64 {
        self.idle_total
    }

    /// Fragment as a percentage of idle GPU (FGD's "frag ratio"); 0 when nothing is idle.
    pub fn frag_ratio_pct(&self) -> f64 {
        if self.idle_total == 0 {
            0.0
        } else {
            100.0 * self.frag_total / self.idle_total as f64
        }
    }
}
