//! Dilu's fragmentation (`docs/algorithms.md` §8): over *active* GPUs, SM fragmentation = mean(1 − Σrequest) and
//! memory fragmentation = mean(1 − Σmemory / capacity).

use crate::cluster::Cluster;
use crate::request::SM_MILLI;

/// Per-node sums of unrequested SM and unused memory over active GPUs, updated when a node changes.
#[derive(Debug, Clone, Default)]
pub struct DiluFragTracker {
    per_node: Vec<(u32, f64, f64)>,
    active: u32,
    sm_free: f64,
    mem_free: f64,
}

impl DiluFragTracker {
    /// Measures every node once.
    pub fn new(cluster: &Cluster) -> Self {
        let mut t = DiluFragTracker {
            per_node: vec![(0, 0.0, 0.0); cluster.nodes().len()],
            ..Default::default()
        };
        for i in 0..cluster.nodes().len() {
            t.node_changed(cluster, i);
        }
        t
    }

    /// Re-measures one node after it changed.
    pub fn node_changed(&mut self, cluster: &Cluster, node: usize) {
        let n = &cluster.nodes()[node];
        let mut entry = (0u32, 0.0f64, 0.0f64);
        for g in n.gpus.iter().filter(|g| !g.is_idle()) {
            entry.0 += 1;
            entry.1 += f64::from(g.free_milli()) / f64::from(SM_MILLI);
            if n.spec.gpu_mem_mib > 0 {
                entry.2 += 1.0 - g.mem_mib as f64 / n.spec.gpu_mem_mib as f64;
            }
        }
        let old = std::mem::replace(&mut self.per_node[node], entry);
        self.active = self.active - old.0 + entry.0;
        self.sm_free += entry.1 - old.1;
        self.mem_free += entry.2 - old.2;
    }

    /// Active GPUs.
    pub fn active_gpus(&self) -> u32 {
        self.active
    }

    /// Mean unrequested SM share over active GPUs, in [0, 1]; 0 with no active GPU.
    pub fn sm_frag(&self) -> f64 {
        if self.active == 0 {
            0.0
        } else {
            (self.sm_free / f64::from(self.active)).clamp(0.0, 1.0)
        }
    }

    /// Mean unused memory share over active GPUs, in [0, 1]; 0 with no active GPU.
    pub fn mem_frag(&self) -> f64 {
        if self.active == 0 {
            0.0
        } else {
            (self.mem_free / f64::from(self.active)).clamp(0.0, 1.0)
        }
    }
}
