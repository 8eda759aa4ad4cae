//! Inference replicas spread over nodes, leaves and spines, so one failure takes out as few
//! as possible.

use std::cmp::Reverse;
use std::collections::HashMap;

use crate::cluster::Cluster;
use crate::domain::DomainCatalog;

use super::feasible::{ReplicaNeeds, Scan};
use super::index::FabricIndex;
use super::placement::{GangPlacement, Hop};
use super::request::GangRequest;
use super::score::{NodeScore, domain_ranks, node_score};
use super::search::{GroupRoom, finish};
use super::wait::GangWait;

/// Inference replicas: each goes where the fewest replicas of the job already share its
/// node, then leaf, then spine, so one failure takes out as few as possible; then the
/// preferred domain and [`NodeScore`].
pub(super) fn spread(
    cluster: &Cluster,
    index: &FabricIndex,
    catalog: &DomainCatalog,
    gang: &GangRequest,
    needs: &ReplicaNeeds<'_>,
    scan: &Scan,
) -> Result<GangPlacement, GangWait> {
    let room = GroupRoom::of(index, scan);
    let total = room.total();
    if total < gang.min_replicas {
        return Err(GangWait::TooFew {
            needed: gang.min_replicas,
            fit: total,
            counts: scan.counts.clone(),
        });
    }
    let ranks = domain_ranks(index, catalog, &gang.placement, &room.domain);
    let replicas = gang.replicas.min(total);
    let mut room_left: Vec<u32> = scan.nodes.iter().map(|(_, k)| *k).collect();
    let scores: Vec<NodeScore> = scan
        .nodes
        .iter()
        .map(|(i, k)| node_score(cluster, index, needs, *i as usize, *k))
        .collect();
    let mut on_node: HashMap<u32, u32> = HashMap::new();
    let mut on_leaf: HashMap<u32, u32> = HashMap::new();
    let mut on_spine: HashMap<u32, u32> = HashMap::new();
    for _ in 0..replicas {
        let pick = (0..scan.nodes.len())
            .filter(|c| room_left[*c] > 0)
            .max_by_key(|c| {
                let i = scan.nodes[*c].0;
                let f = &index.facts[i as usize];
                (
                    Reverse(on_node.get(&i).copied().unwrap_or(0)),
                    Reverse(on_leaf.get(&f.leaf).copied().unwrap_or(0)),
                    Reverse(on_spine.get(&f.spine).copied().unwrap_or(0)),
                    Reverse(ranks[f.domain as usize]),
                    scores[*c],
                )
            })
            .expect("total room_left covers every replica");
        room_left[pick] -= 1;
        let i = scan.nodes[pick].0;
        let f = &index.facts[i as usize];
        *on_node.entry(i).or_default() += 1;
        *on_leaf.entry(f.leaf).or_default() += 1;
        *on_spine.entry(f.spine).or_default() += 1;
    }
    let mut chosen: Vec<(u32, u32)> = on_node.into_iter().collect();
    chosen.sort_unstable();
    let worst = if chosen.len() == 1 {
        Hop::SameNode
    } else if on_leaf.len() == 1 {
        Hop::SameLeaf
    } else if on_spine.len() == 1 {
        Hop::SameSpine
    } else {
        let domains: std::collections::HashSet<u32> = chosen
            .iter()
            .map(|(i, _)| index.facts[*i as usize].domain)
            .collect();
        if domains.len() == 1 {
            Hop::CrossSpine
        } else {
            Hop::CrossDomain
        }
    };
    let nodes = chosen.len();
    finish(
        cluster,
        index,
        needs,
        chosen,
        worst,
        format!("spread over {nodes} nodes"),
        0.0,
        scan.nodes.len() as u32,
    )
}
