//! Placement used by the serving baselines that the foundation's placement experiment did not need:
//! TGS (one production inference per GPU, an opportunistic training job beside it) and HAS-GPU (pack
//! FaST pods by SM·time occupancy, at most two SM partition sizes per GPU).

use crate::cluster::{Cluster, GpuState, Node, Placement};
use crate::placement::gang::best_gang;
use crate::placement::kube::describe;
use crate::placement::{Placer, Unschedulable};
use crate::request::{InstanceKind, InstanceRequest, SM_MILLI};

/// Whether `g` on `node` has SM request and memory room for `req`.
fn has_room(node: &Node, g: &GpuState, req: &InstanceRequest) -> bool {
    g.sm_request + req.sm_request <= SM_MILLI
        && g.mem_mib + req.gpu_mem_mib <= node.spec.gpu_mem_mib
}

fn hosts(g: &GpuState, training: bool) -> bool {
    g.residents
        .iter()
        .any(|r| (r.kind == InstanceKind::Training) == training)
}

/// TGS (NSDI'23) co-locates one latency-critical job with one opportunistic training job per GPU and
/// leaves the rest to its rate controller. Inference goes to a GPU without inference, preferring one that
/// already runs training; training goes to GPUs without training, preferring ones that run inference.
/// Both are still charged their requests, so the cluster never promises more SM than it has.
#[derive(Debug, Clone, Copy, Default)]
pub struct TgsPlacer;

impl Placer for TgsPlacer {
    fn name(&self) -> &'static str {
        "tgs"
    }

    fn place(
        &mut self,
        cluster: &Cluster,
        req: &InstanceRequest,
    ) -> Result<Placement, Unschedulable> {
        let training = req.kind == InstanceKind::Training;
        let mask = cluster.model_mask(&req.gpu_types);
        let found = best_gang(cluster, req, mask, |_, node, _, g| {
            if !has_room(node, g, req) || hosts(g, training) {
                return None;
            }
            // Lowest score wins: a GPU running the other class, then an idle GPU.
            Some(if hosts(g, !training) { 0.0 } else { 1.0 })
        });
        let (node, gpus) = found.ok_or_else(|| Unschedulable::NoRoom(describe(req)))?;
        Ok(Placement::uniform(node, req, &gpus))
    }
}

/// HAS-GPU (Euro-Par'25) places a FaST pod on a used GPU whose occupancy Σ partition·quota (charged here as
/// the SM request) stays below `max_occupancy` (0.95) and that would hold at most `max_rows` (2) distinct
/// SM partition sizes (charged as the SM limit), least occupied first so that the pod has room to grow its
/// quota; otherwise on an idle GPU.
#[derive(Debug, Clone, Copy)]
pub struct HasPlacer {
    /// Occupancy below which a used GPU is a candidate, milli.
    pub max_occupancy: u32,
    /// Most distinct SM partition sizes on one GPU.
    pub max_rows: usize,
}

impl Default for HasPlacer {
    fn default() -> Self {
        HasPlacer {
            max_occupancy: 950,
            max_rows: 2,
        }
    }
}

impl HasPlacer {
    fn rows_admit(&self, g: &GpuState, partition: u32) -> bool {
        let mut rows: Vec<u32> = g.residents.iter().map(|r| r.sm_limit).collect();
        rows.push(partition);
        rows.sort_unstable();
        rows.dedup();
        rows.len() <= self.max_rows
    }
}

impl Placer for HasPlacer {
    fn name(&self) -> &'static str {
        "has"
    }

    fn place(
        &mut self,
        cluster: &Cluster,
        req: &InstanceRequest,
    ) -> Result<Placement, Unschedulable> {
        let mask = cluster.model_mask(&req.gpu_types);
        let found = best_gang(cluster, req, mask, |_, node, _, g| {
            if !has_room(node, g, req) {
                return None;
            }
            if g.is_idle() {
                return Some(2.0);
            }
            let ok = g.sm_request < self.max_occupancy && self.rows_admit(g, req.sm_limit);
            ok.then(|| f64::from(g.sm_request) / f64::from(SM_MILLI))
        });
        let (node, gpus) = found.ok_or_else(|| Unschedulable::NoRoom(describe(req)))?;
        Ok(Placement::uniform(node, req, &gpus))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cluster::NodeSpec;

    fn cluster(gpus: u32) -> Cluster {
        Cluster::new(vec![NodeSpec {
            name: "n0".into(),
            cpu_milli: 64_000,
            mem_mib: 256 * 1024,
            gpu_count: gpus,
            gpu_mem_mib: 40 * 1024,
            gpu_model: "A100".into(),
            max_pods: 110,
        }])
        .unwrap()
    }

    fn req(kind: InstanceKind, service: &str, sm: u32, lim: u32, gpus: u32) -> InstanceRequest {
        InstanceRequest {
            kind,
            service: Some(service.into()),
            gpu_count: gpus,
            sm_request: sm,
            sm_limit: lim,
            gpu_mem_mib: 4096,
            cpu_milli: 1000,
            mem_mib: 1024,
            gpu_types: vec![],
        }
    }

    fn place(c: &mut Cluster, p: &mut dyn Placer, id: u64, r: &InstanceRequest) -> Vec<u32> {
        let mut pl = p.place(c, r).unwrap();
        pl.instance = id;
        c.allocate(&pl).unwrap();
        pl.shares.iter().map(|s| s.gpu).collect()
    }

    #[test]
    fn tgs_pairs_one_inference_with_one_training_per_gpu() {
        let mut c = cluster(4);
        let mut p = TgsPlacer;
        let train = req(InstanceKind::Training, "t", 300, 1000, 2);
        assert_eq!(place(&mut c, &mut p, 1, &train), vec![0, 1]);
        let inf = req(InstanceKind::Inference, "a", 300, 600, 1);
        // Inference joins a training GPU, one per GPU; the third goes to an idle GPU.
        assert_eq!(place(&mut c, &mut p, 2, &inf), vec![0]);
        assert_eq!(place(&mut c, &mut p, 3, &inf), vec![1]);
        assert_eq!(place(&mut c, &mut p, 4, &inf), vec![2]);
        // A second training job may not share a GPU with the first.
        let t2 = req(InstanceKind::Training, "t2", 300, 1000, 2);
        assert_eq!(place(&mut c, &mut p, 5, &t2), vec![2, 3]);
        assert!(p.place(&c, &t2).is_err());
    }

    #[test]
    fn has_packs_by_occupancy_with_at_most_two_partition_sizes() {
        let mut c = cluster(2);
        let mut p = HasPlacer::default();
        assert_eq!(
            place(
                &mut c,
                &mut p,
                1,
                &req(InstanceKind::Inference, "a", 200, 300, 1)
            ),
            vec![0]
        );
        assert_eq!(
            place(
                &mut c,
                &mut p,
                2,
                &req(InstanceKind::Inference, "b", 200, 500, 1)
            ),
            vec![0]
        );
        // A third partition size does not fit GPU 0's two rows.
        assert_eq!(
            place(
                &mut c,
                &mut p,
                3,
                &req(InstanceKind::Inference, "c", 200, 700, 1)
            ),
            vec![1]
        );
        // An existing size still joins GPU 0.
        assert_eq!(
            place(
                &mut c,
                &mut p,
                4,
                &req(InstanceKind::Inference, "d", 200, 300, 1)
            ),
            vec![1]
        );
    }
}
