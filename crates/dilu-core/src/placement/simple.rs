//! The baselines of Dilu's large-scale simulation (`docs/algorithms.md` §4): Exclusive and INFless-l/-r.

use crate::cluster::{Cluster, Placement};
use crate::placement::gang::best_gang;
use crate::placement::kube::describe;
use crate::placement::{Placer, Unschedulable};
use crate::request::{InstanceRequest, SM_MILLI};

/// Every instance (and every training worker) takes whole, otherwise idle GPUs; first fit in node order.
#[derive(Debug, Clone, Copy, Default)]
pub struct ExclusivePlacer;

impl Placer for ExclusivePlacer {
    fn name(&self) -> &'static str {
        "exclusive"
    }

    fn place(
        &mut self,
        cluster: &Cluster,
        req: &InstanceRequest,
    ) -> Result<Placement, Unschedulable> {
        let mask = cluster.model_mask(&req.gpu_types);
        let found = best_gang(cluster, req, mask, |_, node, _, g| {
            (g.is_idle() && req.gpu_mem_mib <= node.spec.gpu_mem_mib).then_some(0.0)
        });
        let (node, gpus) = found.ok_or_else(|| Unschedulable::NoRoom(describe(req)))?;
        // The GPU is held whole (nothing else may join it), but it is charged what the instance really uses,
        // so that fragmentation shows the share an exclusive GPU leaves unused.
        Ok(Placement::uniform(node, req, &gpus))
    }
}

/// Which SM quantity INFless reserves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InflessVariant {
    /// Reserve the limit as if it were the request (safe, wasteful).
    Limit,
    /// Reserve only the request, ignoring limits (tight, would break QoS at run time).
    Request,
}

/// INFless-style placement: fixed SM reservation per instance, best fit on SM alone (memory only checked).
#[derive(Debug, Clone, Copy)]
pub struct InflessPlacer {
    variant: InflessVariant,
}

impl InflessPlacer {
    /// A placer for one variant.
    pub fn new(variant: InflessVariant) -> Self {
        InflessPlacer { variant }
    }
}

impl Placer for InflessPlacer {
    fn name(&self) -> &'static str {
        match self.variant {
            InflessVariant::Limit => "infless-l",
            InflessVariant::Request => "infless-r",
        }
    }

    fn place(
        &mut self,
        cluster: &Cluster,
        req: &InstanceRequest,
    ) -> Result<Placement, Unschedulable> {
        let reserved = match self.variant {
            InflessVariant::Limit => req.sm_limit,
            InflessVariant::Request => req.sm_request,
        };
        let mask = cluster.model_mask(&req.gpu_types);
        let found = best_gang(cluster, req, mask, |_, node, _, g| {
            let fits =
                reserved <= g.free_milli() && g.mem_mib + req.gpu_mem_mib <= node.spec.gpu_mem_mib;
            fits.then(|| 1.0 - f64::from(g.sm_request + reserved) / f64::from(SM_MILLI))
        });
        let (node, gpus) = found.ok_or_else(|| Unschedulable::NoRoom(describe(req)))?;
        let charged = InstanceRequest {
            sm_request: reserved,
            sm_limit: reserved.max(req.sm_limit),
            ..req.clone()
        };
        Ok(Placement::uniform(node, &charged, &gpus))
    }
}
