//! How the planner ranks nodes, groups and domains: [`NodeScore`], [`GroupScore`] and
//! [`DomainScore`], each an ordered struct whose field order is the policy.

use std::cmp::Reverse;

use crate::cluster::Cluster;
use crate::domain::DomainCatalog;
use crate::job::PlacementConstraints;
use crate::request::GpuDemand;

use super::feasible::ReplicaNeeds;
use super::index::{FabricIndex, QualitySlots};
use super::node_plan::{plan_node, set_rank};

/// A feasible node's rank inside the chosen group. The field order is the policy: fewer
/// impaired NICs and degraded GPUs, then the best-joined GPUs (NVLink before PCIe), then
/// more GPUs with GPUDirect RDMA, then the least free capacity left behind (best fit), then
/// the node name (its rank in name order, so every run breaks ties the same way).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct NodeScore {
    pub health: Reverse<u32>,
    pub link: Reverse<u32>,
    pub gdr: u32,
    pub leftover: Reverse<u32>,
    pub name_rank: Reverse<u32>,
}

/// A group's rank among those at the chosen level that hold the gang: the preferred domain
/// (data gravity, price, capacity), then the least capacity left behind, then the group's
/// interned id (lowest first), so every run breaks ties the same way.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct GroupScore {
    pub domain: Reverse<u32>,
    pub leftover: Reverse<u32>,
    pub id: Reverse<u32>,
}

/// A domain's preference. The field order is the policy: the least time pulling the job's
/// data in, then the lowest price per GPU hour, then the most free capacity, then the name
/// (first in name order). Only `PartialOrd`: the first two are seconds and prices.
#[derive(Debug, Clone, Copy, PartialEq, PartialOrd)]
pub struct DomainScore<'a> {
    pub data_pull_s: Reverse<f64>,
    pub price: Reverse<f64>,
    pub fit: u32,
    pub name: Reverse<&'a str>,
}

/// The score of node `i` if it holds `take` replicas.
pub(super) fn node_score(
    cluster: &Cluster,
    index: &FabricIndex,
    needs: &ReplicaNeeds<'_>,
    i: usize,
    fit: u32,
) -> NodeScore {
    node_score_in(&mut index.quality_cache(), cluster, index, needs, i, fit)
}

/// [`node_score`] with the quality cache already locked.
pub(super) fn node_score_in(
    cache: &mut [QualitySlots],
    cluster: &Cluster,
    index: &FabricIndex,
    needs: &ReplicaNeeds<'_>,
    i: usize,
    fit: u32,
) -> NodeScore {
    let f = &index.facts[i];
    let (link, gdr) = node_quality(cache, cluster, index, needs, i, fit as usize);
    let used = fit * needs.request.gpu_count();
    NodeScore {
        health: Reverse(u32::from(f.impaired_nics) + u32::from(f.degraded_gpus)),
        link: Reverse(link),
        gdr,
        leftover: Reverse(f.free_mask.count_ones().saturating_sub(used)),
        name_rank: Reverse(f.name_rank),
    }
}

/// Worst link rank and GPUDirect-capable GPUs of the plan for `take` replicas on node `i`.
pub(super) fn node_quality(
    cache: &mut [QualitySlots],
    cluster: &Cluster,
    index: &FabricIndex,
    needs: &ReplicaNeeds<'_>,
    i: usize,
    take: usize,
) -> (u32, u32) {
    let f = &index.facts[i];
    let multi = needs.request.gpu_count() >= 2;
    if !(needs.rdma_required || multi && f.has_links) {
        return (0, 0);
    }
    let slot = match needs.request.gpu() {
        GpuDemand::Exclusive { count }
            if take == 1
                && needs.models.is_none()
                && !needs.nvlink_required
                && matches!(count, 1 | 2 | 4 | 8) =>
        {
            Some(count.trailing_zeros() as usize)
        }
        _ => None,
    };
    if let Some(slot) = slot
        && let Some((rank, gdr)) = cache.get(i).and_then(|q| q[slot])
    {
        return (rank, if needs.rdma_required { gdr } else { 0 });
    }
    let node = &cluster.nodes()[i];
    let plans = plan_node(node, needs, take);
    let mut worst = 0;
    let mut gdr = 0;
    for plan in &plans {
        let set: Vec<usize> = plan.iter().map(|g| g.gpu as usize).collect();
        worst = worst.max(set_rank(node, &set));
        gdr += set
            .iter()
            .filter(|g| **g < 64 && f.gdr_mask & (1 << **g) != 0)
            .count() as u32;
    }
    if let Some(slot) = slot
        && let Some(q) = cache.get_mut(i)
    {
        q[slot] = Some((worst, gdr));
    }
    (worst, if needs.rdma_required { gdr } else { 0 })
}

/// Domains ranked best first by [`DomainScore`]; returns each domain id's rank position.
pub(super) fn domain_ranks(
    index: &FabricIndex,
    catalog: &DomainCatalog,
    placement: &PlacementConstraints,
    domain_fit: &[u32],
) -> Vec<u32> {
    let mut order: Vec<usize> = (0..index.domains.len()).collect();
    let names: Vec<String> = (0..index.domains.len())
        .map(|d| index.domain_name(d as u32))
        .collect();
    let score = |d: usize| {
        let (cid, price) = &index.domains[d];
        DomainScore {
            data_pull_s: Reverse(
                cid.as_ref()
                    .map_or(0.0, |c| catalog.data_pull_seconds(c, placement)),
            ),
            price: Reverse(price.unwrap_or(0.0)),
            fit: domain_fit[d],
            name: Reverse(names[d].as_str()),
        }
    };
    // A time or price that does not compare (NaN) leaves the name to decide.
    order.sort_by(|a, b| {
        score(*b)
            .partial_cmp(&score(*a))
            .unwrap_or_else(|| names[*a].cmp(&names[*b]))
    });
    let mut rank = vec![0u32; index.domains.len()];
    for (r, d) in order.into_iter().enumerate() {
        rank[d] = r as u32;
    }
    rank
}
