//! A training gang split across domains, judged by the inter-domain traffic it implies.

use std::cmp::Reverse;

use crate::cluster::Cluster;
use crate::domain::DomainCatalog;

use super::feasible::{ReplicaNeeds, Scan};
use super::index::FabricIndex;
use super::place_gang;
use super::placement::{GangPlacement, Hop};
use super::request::{GangOptions, GangRequest};
use super::search::{GroupRoom, fill, finish};
use super::wait::GangWait;

/// A gang split across domains: the domains with the most room first (so as few as
/// possible), each filled like a group. The split is judged by the traffic it implies:
/// every replica outside the largest part exchanges `replica_traffic_gbps` with it, so the
/// sum must fit the job's declared budget and each part's share must fit its link.
#[allow(clippy::too_many_arguments)]
pub(super) fn cross_domain(
    cluster: &Cluster,
    index: &FabricIndex,
    catalog: &DomainCatalog,
    gang: &GangRequest,
    needs: &ReplicaNeeds<'_>,
    scan: &Scan,
    room: &GroupRoom,
    ranks: &[u32],
    replicas: u32,
) -> Result<GangPlacement, GangWait> {
    let mut order: Vec<u32> = (0..index.domains.len() as u32)
        .filter(|d| room.domain[*d as usize] > 0)
        .collect();
    order.sort_by_key(|d| (Reverse(room.domain[*d as usize]), ranks[*d as usize], *d));
    let mut parts: Vec<(u32, u32)> = Vec::new();
    let mut left = replicas;
    for d in order {
        if left == 0 {
            break;
        }
        let take = room.domain[d as usize].min(left);
        parts.push((d, take));
        left -= take;
    }
    let outside: u32 = parts[1..].iter().map(|(_, k)| k).sum();
    let needed = f64::from(outside) * gang.replica_traffic_gbps;
    let budget = gang.placement.inter_domain_bandwidth_gbps;
    let mut refusal = None;
    if budget.is_none_or(|b| needed > b) {
        refusal = Some(GangWait::OverBudget {
            needed_gbps: needed,
            budget_gbps: budget,
        });
    } else {
        let main = &index.domains[parts[0].0 as usize].0;
        for (d, k) in &parts[1..] {
            let other = &index.domains[*d as usize].0;
            let traffic = f64::from(*k) * gang.replica_traffic_gbps;
            let link = match (main, other) {
                (Some(a), Some(b)) => catalog.link(a, b).map(|l| l.bandwidth_gbps),
                _ => None,
            };
            if link.is_none_or(|bw| traffic > bw) {
                refusal = Some(GangWait::DomainLink {
                    a: index.domain_name(parts[0].0),
                    b: index.domain_name(*d),
                    needed_gbps: traffic,
                    link_gbps: link,
                });
                break;
            }
        }
    }
    if let Some(refusal) = refusal {
        // An elastic gang may still start inside the best single domain.
        let best_domain = room.domain.iter().copied().max().unwrap_or(0);
        if gang.min_replicas <= best_domain {
            let mut inside = gang.clone();
            inside.placement.allow_cross_domain = false;
            return place_gang(cluster, index, catalog, &inside, &GangOptions::default());
        }
        return Err(refusal);
    }
    let mut chosen = Vec::new();
    for (d, k) in &parts {
        let members: Vec<(u32, u32)> = scan
            .nodes
            .iter()
            .copied()
            .filter(|(i, _)| index.facts[*i as usize].domain == *d)
            .collect();
        chosen.extend(fill(cluster, index, needs, &members, *k, room));
    }
    let names: Vec<String> = parts.iter().map(|(d, _)| index.domain_name(*d)).collect();
    finish(
        cluster,
        index,
        needs,
        chosen,
        Hop::CrossDomain,
        format!("domains {}", names.join(" + ")),
        needed,
        scan.nodes.len() as u32,
    )
}
