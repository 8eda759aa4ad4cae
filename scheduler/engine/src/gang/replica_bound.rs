//! A cheap upper bound on how many replicas of a whole-GPU gang could fit once some GPUs are
//! freed, so a reservation can skip futures in which the gang cannot fit.

use std::collections::HashMap;

use crate::cluster::{Cluster, Node, NodeId};
use crate::request::GpuDemand;

use super::buckets::IRREGULAR;
use super::index::FabricIndex;
use super::request::GangRequest;

/// An upper bound on the replicas of a whole-GPU gang the cluster could hold if some GPUs were
/// freed: per node, its fully free GPUs plus those freed there, divided by the GPUs a replica
/// takes. CPU, memory, links, models and cordons are ignored, so it never undercounts: while
/// it stays below the gang's minimum, no placement attempt can succeed. Lets a reservation
/// skip projecting futures in which the gang cannot fit.
#[derive(Debug, Clone)]
pub(crate) struct ReplicaBound {
    per_replica: u32,
    total: u64,
    /// Nodes whose count was raised: their fully free GPUs, freed ones included.
    raised: HashMap<u32, u32>,
}

impl ReplicaBound {
    /// `None` for gangs not made of whole GPUs (shares, MIG, no GPU): no cheap bound.
    pub(crate) fn new(cluster: &Cluster, index: &FabricIndex, gang: &GangRequest) -> Option<Self> {
        let GpuDemand::Exclusive { count } = *gang.request.gpu() else {
            return None;
        };
        if count == 0 {
            return None;
        }
        let per = u64::from(count);
        let buckets = index.bucket_lists();
        let mut total: u64 = buckets
            .iter()
            .take(IRREGULAR)
            .enumerate()
            .map(|(free, b)| b.slots.len() as u64 * (free as u64 / per))
            .sum();
        total += buckets[IRREGULAR]
            .slots
            .iter()
            .filter_map(|s| cluster.node(NodeId(s.node)))
            .map(|n| fully_free_gpus(n) as u64 / per)
            .sum::<u64>();
        Some(ReplicaBound {
            per_replica: count,
            total,
            raised: HashMap::new(),
        })
    }

    /// Counts `gpus` more GPUs of `node` as free.
    pub(crate) fn free(&mut self, cluster: &Cluster, node: NodeId, gpus: u32) {
        let Some(n) = cluster.node(node) else {
            return;
        };
        let free = self
            .raised
            .entry(node.0)
            .or_insert_with(|| fully_free_gpus(n));
        self.total -= u64::from(*free / self.per_replica);
        *free = free.saturating_add(gpus);
        self.total += u64::from(*free / self.per_replica);
    }

    /// The most replicas that could fit.
    pub(crate) fn replicas(&self) -> u64 {
        self.total
    }
}

fn fully_free_gpus(node: &Node) -> u32 {
    node.gpus().iter().filter(|g| g.fully_free()).count() as u32
}
