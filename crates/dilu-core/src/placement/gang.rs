//! The search shared by the GPU-level policies (Dilu, Exclusive, INFless): on one node, pick the `k` GPUs
//! that fit with the lowest per-GPU score; over the cluster, take the node whose pick has the lowest total,
//! ties to the lower node index. For `k = 1` this is plain best-fit over all GPUs.

use crate::cluster::{Cluster, GpuState, ModelMask, Node};
use crate::request::InstanceRequest;

/// Whether the node itself (not excluded, CPU, memory, pod count, GPU model, GPU count) can take the request.
pub(crate) fn node_admits(node: &Node, req: &InstanceRequest, mask: ModelMask) -> bool {
    req.cpu_milli <= node.cpu_free()
        && req.mem_mib <= node.mem_free()
        && node.pods < node.spec.max_pods
        && (req.gpu_count == 0
            || (node.gpus.len() >= req.gpu_count as usize && Cluster::model_allowed(mask, node)))
        && !node.excluded
}

/// The best gang: node index and GPU indices. `score(node_index, node, gpu_index, gpu)` returns `None` when
/// the GPU cannot take the request and a lower-is-better score otherwise.
pub(crate) fn best_gang(
    cluster: &Cluster,
    req: &InstanceRequest,
    mask: ModelMask,
    mut score: impl FnMut(usize, &Node, usize, &GpuState) -> Option<f64>,
) -> Option<(usize, Vec<u32>)> {
    let k = req.gpu_count as usize;
    let mut best: Option<(f64, usize, Vec<u32>)> = None;
    let mut scored: Vec<(f64, u32)> = Vec::new();
    for (ni, node) in cluster.nodes().iter().enumerate() {
        if !node_admits(node, req, mask) {
            continue;
        }
        if k == 0 {
            return Some((ni, Vec::new()));
        }
        scored.clear();
        let gpus = node.gpus.iter().enumerate();
        if node.excluded_gpus == 0 {
            scored
                .extend(gpus.filter_map(|(gi, g)| score(ni, node, gi, g).map(|s| (s, gi as u32))));
        } else {
            scored.extend(
                gpus.filter(|(gi, _)| !node.gpu_excluded(*gi))
                    .filter_map(|(gi, g)| score(ni, node, gi, g).map(|s| (s, gi as u32))),
            );
        }
        if scored.len() < k {
            continue;
        }
        scored.sort_by(|a, b| a.0.total_cmp(&b.0).then(a.1.cmp(&b.1)));
        let total: f64 = scored[..k].iter().map(|s| s.0).sum();
        if best.as_ref().is_none_or(|(bt, _, _)| total < *bt) {
            let mut gpus: Vec<u32> = scored[..k].iter().map(|s| s.1).collect();
            gpus.sort_unstable();
            best = Some((total, ni, gpus));
        }
    }
    best.map(|(_, n, g)| (n, g))
}
