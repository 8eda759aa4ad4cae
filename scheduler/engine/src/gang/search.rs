//! The planner's search after the scan: the tightest level that holds the gang, the best
//! group at that level, the nodes inside it, and the claims.

use std::cmp::Reverse;
use std::collections::HashMap;

use crate::cluster::{Claim, Cluster, NodeId};
use crate::domain::DomainCatalog;
use crate::job::JobKind;

use super::cross_domain::cross_domain;
use super::feasible::{ReplicaNeeds, Scan, resolve, scan};
use super::index::FabricIndex;
use super::node_plan::{plan_node, set_rank};
use super::placement::{GangPlacement, Hop, ReplicaClaim};
use super::request::{GangOptions, GangRequest};
use super::score::{GroupScore, NodeScore, domain_ranks, node_score};
use super::spread::spread;
use super::wait::{GangWait, wait_reason};

/// The plain scan over every node: the general planner, and the reference the capacity
/// index is checked against.
pub(super) fn place_gang_scan(
    cluster: &Cluster,
    index: &FabricIndex,
    catalog: &DomainCatalog,
    gang: &GangRequest,
    options: &GangOptions<'_>,
) -> Result<GangPlacement, GangWait> {
    let needs = resolve(cluster, gang);
    let scan = scan(cluster, index, &needs, gang.replicas, options);
    place_scanned(cluster, index, catalog, gang, &needs, scan)
}

/// The planner after the scan: the level, the group and the nodes.
pub(super) fn place_scanned(
    cluster: &Cluster,
    index: &FabricIndex,
    catalog: &DomainCatalog,
    gang: &GangRequest,
    needs: &ReplicaNeeds<'_>,
    scan: Scan,
) -> Result<GangPlacement, GangWait> {
    if scan.nodes.is_empty() {
        return Err(GangWait::NoNode {
            nodes: index.len() as u32,
            counts: scan.counts,
        });
    }
    if gang.kind == JobKind::Inference {
        return spread(cluster, index, catalog, gang, needs, &scan);
    }
    let room = GroupRoom::of(index, &scan);
    let scope_hop = if gang.network_required() {
        Hop::of_scope(gang.topology.network.scope)
    } else {
        Hop::CrossSpine
    };
    let loosest = if gang.placement.allow_cross_domain && scope_hop == Hop::CrossSpine {
        Hop::CrossDomain
    } else {
        scope_hop
    };
    let replicas = gang.replicas.min(room.largest(loosest).0);
    if replicas < gang.min_replicas {
        return Err(wait_reason(
            cluster, index, gang, scan, &room, scope_hop, loosest,
        ));
    }
    let ranks = domain_ranks(index, catalog, &gang.placement, &room.domain);
    let hop = [
        Hop::SameNode,
        Hop::SameLeaf,
        Hop::SameSpine,
        Hop::CrossSpine,
        Hop::CrossDomain,
    ]
    .into_iter()
    .find(|h| *h <= loosest && room.largest(*h).0 >= replicas)
    .expect("the loosest level holds `replicas` by construction");
    if hop == Hop::CrossDomain {
        return cross_domain(
            cluster, index, catalog, gang, needs, &scan, &room, &ranks, replicas,
        );
    }
    if hop == Hop::SameNode {
        // One node holds the whole gang: the preferred domain, then the best NodeScore.
        let (_, node) = scan
            .nodes
            .iter()
            .filter(|(_, k)| *k >= replicas)
            .map(|(i, _)| {
                let f = &index.facts[*i as usize];
                (
                    (
                        Reverse(ranks[f.domain as usize]),
                        node_score(cluster, index, needs, *i as usize, replicas),
                    ),
                    *i,
                )
            })
            .max_by_key(|(score, _)| *score)
            .expect("some node holds the gang at this level");
        return finish(
            cluster,
            index,
            needs,
            vec![(node, replicas)],
            hop,
            format!("node {}", cluster.nodes()[node as usize].name()),
            0.0,
            scan.nodes.len() as u32,
        );
    }
    let node_fit: HashMap<u32, u32> = if hop == Hop::SameNode {
        scan.nodes.iter().copied().collect()
    } else {
        HashMap::new()
    };
    // The group at `hop` that holds the gang with the best GroupScore.
    let group_of = |i: u32| -> u32 {
        let f = &index.facts[i as usize];
        match hop {
            Hop::SameNode => i,
            Hop::SameLeaf => f.leaf,
            Hop::SameSpine => f.spine,
            _ => f.domain,
        }
    };
    let group_fit = |g: u32| -> u32 {
        match hop {
            Hop::SameNode => node_fit.get(&g).copied().unwrap_or(0),
            Hop::SameLeaf => room.leaf[g as usize],
            Hop::SameSpine => room.spine[g as usize],
            _ => room.domain[g as usize],
        }
    };
    let mut best: Option<(GroupScore, u32)> = None;
    for (i, _) in &scan.nodes {
        let g = group_of(*i);
        let fit = group_fit(g);
        if fit < replicas {
            continue;
        }
        let domain = index.facts[*i as usize].domain;
        let score = GroupScore {
            domain: Reverse(ranks[domain as usize]),
            leftover: Reverse(fit - replicas),
            id: Reverse(g),
        };
        if best.is_none_or(|(b, _)| score > b) {
            best = Some((score, g));
        }
    }
    let (_, group) = best.expect("some group holds the gang at this level");
    let members: Vec<(u32, u32)> = scan
        .nodes
        .iter()
        .copied()
        .filter(|(i, _)| group_of(*i) == group)
        .collect();
    let chosen = fill(cluster, index, needs, &members, replicas, &room);
    let group_name = match hop {
        Hop::SameNode => format!("node {}", cluster.nodes()[group as usize].name()),
        Hop::SameLeaf => format!("leaf {}", index.leaf_name(group)),
        Hop::SameSpine => format!("spine {}", index.spine_name(group)),
        _ => format!("domain {}", index.domain_name(group)),
    };
    finish(
        cluster,
        index,
        needs,
        chosen,
        hop,
        group_name,
        0.0,
        scan.nodes.len() as u32,
    )
}

/// Picks the nodes (and replicas per node) inside a group: sub-groups with the most room
/// first, so the gang touches as few spines and leaves as possible, then nodes by
/// [`NodeScore`]. Node scores are computed only for the leaves actually used.
pub(super) fn fill(
    cluster: &Cluster,
    index: &FabricIndex,
    needs: &ReplicaNeeds<'_>,
    members: &[(u32, u32)],
    replicas: u32,
    room: &GroupRoom,
) -> Vec<(u32, u32)> {
    let mut leaves: Vec<u32> = members
        .iter()
        .map(|(i, _)| index.facts[*i as usize].leaf)
        .collect();
    leaves.sort_unstable();
    leaves.dedup();
    leaves.sort_by_key(|l| {
        let spine = index.leaves[*l as usize].0;
        (
            Reverse(room.spine[spine as usize]),
            spine,
            Reverse(room.leaf[*l as usize]),
            *l,
        )
    });
    let mut chosen = Vec::new();
    let mut left = replicas;
    for leaf in leaves {
        if left == 0 {
            break;
        }
        let mut nodes: Vec<(NodeScore, u32, u32)> = members
            .iter()
            .filter(|(i, _)| index.facts[*i as usize].leaf == leaf)
            .map(|(i, k)| (node_score(cluster, index, needs, *i as usize, *k), *i, *k))
            .collect();
        nodes.sort_by_key(|n| Reverse(n.0));
        for (_, i, k) in nodes {
            if left == 0 {
                break;
            }
            let take = k.min(left);
            chosen.push((i, take));
            left -= take;
        }
    }
    chosen
}

/// Builds the claims for `chosen` (node, replicas) and the placement around them.
#[allow(clippy::too_many_arguments)]
pub(super) fn finish(
    cluster: &Cluster,
    index: &FabricIndex,
    needs: &ReplicaNeeds<'_>,
    chosen: Vec<(u32, u32)>,
    hop: Hop,
    group: String,
    inter_domain_gbps: f64,
    feasible: u32,
) -> Result<GangPlacement, GangWait> {
    let req = needs.request;
    let mut replicas = Vec::new();
    let mut worst = 0;
    let mut gdr = 0;
    let mut domains: Vec<u32> = Vec::new();
    for (i, take) in chosen {
        let node = &cluster.nodes()[i as usize];
        let f = &index.facts[i as usize];
        if !domains.contains(&f.domain) {
            domains.push(f.domain);
        }
        let plans = plan_node(node, needs, take as usize);
        for plan in plans {
            let set: Vec<usize> = plan.iter().map(|g| g.gpu as usize).collect();
            worst = worst.max(set_rank(node, &set));
            gdr += set
                .iter()
                .filter(|g| **g < 64 && f.gdr_mask & (1 << **g) != 0)
                .count() as u32;
            replicas.push(ReplicaClaim {
                claim: Claim {
                    node: NodeId(i),
                    cpu_milli: req.cpu_milli(),
                    memory_mib: req.memory_mib(),
                    gpus: plan,
                    affinity: req.affinity(),
                },
                node_name: node.name().to_string(),
            });
        }
    }
    Ok(GangPlacement {
        replicas,
        hop,
        group,
        domains: domains
            .into_iter()
            .filter_map(|d| index.domains[d as usize].0.clone())
            .collect(),
        inter_domain_gbps,
        worst_link_rank: worst,
        gdr_gpus: gdr,
        feasible_nodes: feasible,
    })
}

/// How many replicas each leaf, spine and domain has room for (the sum over its feasible
/// nodes), and the most one node has room for.
pub(super) struct GroupRoom {
    pub(super) leaf: Vec<u32>,
    pub(super) spine: Vec<u32>,
    pub(super) domain: Vec<u32>,
    pub(super) node_best: u32,
    node_best_id: u32,
}

impl GroupRoom {
    pub(super) fn of(index: &FabricIndex, scan: &Scan) -> GroupRoom {
        let mut room = GroupRoom {
            leaf: vec![0; index.leaves.len()],
            spine: vec![0; index.spines.len()],
            domain: vec![0; index.domains.len()],
            node_best: 0,
            node_best_id: 0,
        };
        for (i, k) in &scan.nodes {
            let f = &index.facts[*i as usize];
            room.leaf[f.leaf as usize] += k;
            room.spine[f.spine as usize] += k;
            room.domain[f.domain as usize] += k;
            if *k > room.node_best {
                room.node_best = *k;
                room.node_best_id = *i;
            }
        }
        room
    }

    pub(super) fn total(&self) -> u32 {
        self.domain.iter().sum()
    }

    /// The most replicas one group at `hop` holds, and that group's id.
    pub(super) fn largest(&self, hop: Hop) -> (u32, u32) {
        let max_of = |v: &[u32]| {
            v.iter()
                .enumerate()
                .max_by_key(|(i, k)| (**k, Reverse(*i)))
                .map_or((0, 0), |(i, k)| (*k, i as u32))
        };
        match hop {
            Hop::SameNode => (self.node_best, self.node_best_id),
            Hop::SameLeaf => max_of(&self.leaf),
            Hop::SameSpine => max_of(&self.spine),
            Hop::CrossSpine => max_of(&self.domain),
            Hop::CrossDomain => (self.total(), 0),
        }
    }
}
