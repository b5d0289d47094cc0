//! Helpers shared by the dilu-core integration tests.

#![allow(dead_code)]

use dilu_core::{Cluster, GpuState, Node};

/// Affinity counts with trailing zeros removed (a count of 0 and a missing tag mean the same).
pub fn affinity_counts(n: &Node) -> Vec<u32> {
    let mut a = n.affinity.clone();
    while a.last() == Some(&0) {
        a.pop();
    }
    a
}

/// Everything about a node that allocation changes, except `version`.
#[derive(Debug, Clone, PartialEq)]
pub struct NodeSnap {
    pub name: String,
    pub cpu_used: u64,
    pub mem_used: u64,
    pub pods: u32,
    pub gpus: Vec<GpuState>,
    pub affinity: Vec<u32>,
    pub tie_rank: u32,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Snap {
    pub nodes: Vec<NodeSnap>,
    pub sm_requested: u64,
    pub active_gpus: u32,
}

pub fn snap(c: &Cluster) -> Snap {
    Snap {
        nodes: c
            .nodes()
            .iter()
            .map(|n| NodeSnap {
                name: n.spec.name.clone(),
                cpu_used: n.cpu_used,
                mem_used: n.mem_used,
                pods: n.pods,
                gpus: n.gpus.clone(),
                affinity: affinity_counts(n),
                tie_rank: n.tie_rank,
            })
            .collect(),
        sm_requested: c.sm_requested(),
        active_gpus: c.active_gpus(),
    }
}
