//! The fast path for the commonest job, one training replica of whole GPUs: a walk of the
//! capacity index that decides exactly as the full scan would.

use std::cmp::Reverse;

use crate::cluster::Cluster;
use crate::domain::DomainCatalog;
use crate::job::JobKind;
use crate::request::GpuDemand;

use super::buckets::{Bucket, BucketBounds, IRREGULAR};
use super::feasible::{ReplicaNeeds, node_fit};
use super::index::FabricIndex;
use super::placement::{GangPlacement, Hop};
use super::request::{GangOptions, GangRequest};
use super::score::{NodeScore, domain_ranks, node_quality, node_score_in};
use super::search::finish;

/// One training replica of whole GPUs, no place or price limits: [`place_single`]'s jobs.
pub(super) fn single_replica_whole_gpus(gang: &GangRequest, needs: &ReplicaNeeds<'_>) -> bool {
    let GpuDemand::Exclusive { count } = *gang.request.gpu() else {
        return false;
    };
    gang.kind != JobKind::Inference
        && gang.replicas == 1
        && gang.min_replicas <= 1
        && count > 0
        && !(needs.nvlink_required && count >= 2)
        && gang.request.allowed().is_empty()
        && needs.max_price.is_none()
}

/// The fast path through the capacity index for the commonest job: one training replica of
/// whole GPUs. It decides exactly as the scan would: the feasible nodes are those the scan
/// accepts (nodes in buckets with fewer free GPUs than asked never are), the winner is the
/// same maximum of (domain rank, [`NodeScore`]), and `feasible_nodes` the same count. `None`
/// when the job is not of that kind or nothing fits; the scan then explains the wait.
pub(super) fn place_single(
    cluster: &Cluster,
    index: &FabricIndex,
    catalog: &DomainCatalog,
    gang: &GangRequest,
    needs: &ReplicaNeeds<'_>,
    options: &GangOptions<'_>,
) -> Option<GangPlacement> {
    let GpuDemand::Exclusive { count } = *gang.request.gpu() else {
        return None;
    };
    let cpu = gang.request.cpu_milli();
    let memory = gang.request.memory_mib();
    let avoided = |i: u32| {
        options
            .avoid
            .is_some_and(|a| a.get(i as usize).copied().unwrap_or(false))
    };
    let multi = count >= 2;
    // No node scores better on health, links and GPUDirect than this.
    let ideal = (
        Reverse(0),
        Reverse(0),
        if needs.rdma_required { count } else { 0 },
    );
    let mut cache = index.quality_cache();
    let mut domain_fit = vec![0u32; index.domains.len()];
    // Per domain: the best node's score, id and bucket.
    let mut best: Vec<Option<(NodeScore, u32, usize)>> = vec![None; index.domains.len()];
    let mut feasible = 0u32;
    let whole = (count as usize).min(IRREGULAR);
    // The quality-cache slot this request reads, when it reads one (as in `node_quality`).
    let quality_slot =
        (needs.models.is_none() && !needs.nvlink_required && count.is_power_of_two() && count <= 8)
            .then(|| count.trailing_zeros() as usize);
    let mut buckets = index.bucket_lists();
    // Avoided nodes that would otherwise count, as (bucket, domain): a counted bucket
    // subtracts them.
    let mut avoided_open: Vec<(usize, usize)> = Vec::new();
    if let Some(avoid) = options.avoid {
        for (i, _) in avoid.iter().enumerate().filter(|(_, a)| **a) {
            if let Some(&(b, pos)) = index.slots.get(i)
                && let Some(s) = buckets[b as usize].slots.get(pos as usize)
                && !s.cordoned()
                && !(needs.rdma_required && s.nic_down())
            {
                avoided_open.push((b as usize, s.domain as usize));
            }
        }
    }
    let all_in_cluster = index.len() <= cluster.len();
    let mut counts = vec![0u32; index.domains.len()];
    for (free, bucket) in buckets.iter_mut().enumerate().take(IRREGULAR).skip(whole) {
        if bucket.slots.is_empty() {
            continue;
        }
        // Count the bucket without walking it when every node in it passes the checks that
        // depend on the request, and none can beat its domain's best from a bucket with
        // less left over: the bounds cap what any of its nodes can score.
        let bounds = bucket.bounds;
        let all_fit = all_in_cluster
            && cpu <= bounds.cpu_left
            && memory <= bounds.memory_left
            && (needs.models.is_none()
                || (!bounds.mixed_models && bounds.model.is_none_or(|m| needs.model_ok(m))));
        if all_fit {
            let ceiling = (
                Reverse(bounds.health),
                Reverse(if multi { u32::from(bounds.link) } else { 0 }),
                if needs.rdma_required { count } else { 0 },
            );
            counts.iter_mut().for_each(|c| *c = 0);
            for (d, open) in bucket.open.iter().enumerate() {
                counts[d] = open
                    - if needs.rdma_required {
                        bucket.open_nic_down[d]
                    } else {
                        0
                    };
            }
            for (b, d) in &avoided_open {
                if *b == free {
                    counts[*d] -= 1;
                }
            }
            let beaten = counts.iter().enumerate().all(|(d, n)| {
                *n == 0
                    || best[d].is_some_and(|(b, _, b_free)| {
                        b_free < free && (b.health, b.link, b.gdr) >= ceiling
                    })
            });
            if beaten {
                for (d, n) in counts.iter().enumerate() {
                    feasible += n;
                    domain_fit[d] += n;
                }
                continue;
            }
        }
        let mut bounds = BucketBounds::EMPTY;
        let Bucket { slots, quality, .. } = bucket;
        for (s, quality) in slots.iter().zip(quality.iter_mut()) {
            bounds.add(s);
            // The checks of `node_fit`, in its order, for a node with enough free GPUs.
            if s.cordoned()
                || avoided(s.node)
                || (needs.rdma_required && s.nic_down())
                || s.model.is_some_and(|m| !needs.model_ok(m))
                || (cpu > 0 && s.cpu_left < cpu)
                || (memory > 0 && s.memory_left < memory)
                || s.node as usize >= cluster.len()
            {
                continue;
            }
            let d = s.domain as usize;
            feasible += 1;
            domain_fit[d] += 1;
            // Skip scoring a node that cannot win: worse health, or a fuller bucket (more
            // left over) behind a node nothing beats on health, links and GPUDirect.
            if let Some((b, _, b_free)) = best[d]
                && (Reverse(s.health) < b.health
                    || (b_free < free && (b.health, b.link, b.gdr) == ideal))
            {
                continue;
            }
            let (link, gdr) = if !(needs.rdma_required || multi && s.has_links()) {
                (0, 0)
            } else if let Some(q) = quality_slot {
                let (rank, gdr) = match quality[q] {
                    Some(known) => known,
                    None => {
                        node_quality(&mut cache, cluster, index, needs, s.node as usize, 1);
                        let known = cache[s.node as usize][q].unwrap_or_default();
                        quality[q] = Some(known);
                        known
                    }
                };
                (rank, if needs.rdma_required { gdr } else { 0 })
            } else {
                node_quality(&mut cache, cluster, index, needs, s.node as usize, 1)
            };
            let score = NodeScore {
                health: Reverse(s.health),
                link: Reverse(link),
                gdr,
                leftover: Reverse(free as u32 - count),
                name_rank: Reverse(s.name_rank),
            };
            if best[d].is_none_or(|(b, _, _)| score > b) {
                best[d] = Some((score, s.node, free));
            }
        }
        bucket.bounds = bounds;
    }
    for s in &buckets[IRREGULAR].slots {
        if (s.node as usize) < cluster.len()
            && node_fit(cluster, index, needs, s.node as usize, 1, options).is_ok_and(|k| k > 0)
        {
            let d = s.domain as usize;
            feasible += 1;
            domain_fit[d] += 1;
            let score = node_score_in(&mut cache, cluster, index, needs, s.node as usize, 1);
            if best[d].is_none_or(|(b, _, _)| score > b) {
                best[d] = Some((score, s.node, IRREGULAR));
            }
        }
    }
    drop(buckets);
    drop(cache);
    if feasible == 0 {
        return None;
    }
    let ranks = domain_ranks(index, catalog, &gang.placement, &domain_fit);
    let (_, node) = best
        .iter()
        .enumerate()
        .filter_map(|(d, b)| b.map(|(score, i, _)| ((Reverse(ranks[d]), score), i)))
        .max_by_key(|(key, _)| *key)?;
    finish(
        cluster,
        index,
        needs,
        vec![(node, 1)],
        Hop::SameNode,
        format!("node {}", cluster.nodes()[node as usize].name()),
        0.0,
        feasible,
    )
    .ok()
}
