//! Gangs on the fabric: training replicas that start together, as close as the fabric allows,
//! and inference replicas spread so one failure takes out as few as possible.
//!
//! The planner works on a [`FabricIndex`]: a compact per-node summary (free GPUs, CPU and
//! memory left, position in the fabric, link health) next to interned leaf, spine and domain
//! ids. One placement is one pass over that summary:
//!
//! 1. each node gets a *fit*: how many replicas it can hold now;
//! 2. fits are summed per leaf, spine and domain;
//! 3. the tightest level whose best group holds the gang wins (same node < same leaf < same
//!    spine < across spines < across domains; see [`Hop`]), within what the job allows;
//! 4. inside the chosen group, nodes are filled in [`NodeScore`] order: link health, NVLink
//!    among a replica's GPUs, GPUDirect RDMA, then fragmentation (best fit).
//!
//! Nothing is allocated: [`allocate_gang`] applies all claims or none.
//!
//! Files, one idea each: `request` and `placement` are what goes in and out; `index` and
//! `buckets` the fabric index and its capacity buckets; `feasible` which nodes can hold
//! replicas; `node_plan` the GPUs on one node; `score` the ordered scores; `search` the level,
//! group and nodes; `single` the fast path for one replica; `cross_domain` and `spread` the
//! split and spread placements; `wait` why a gang waits; `replica_bound` the cheap bound
//! reservations use. This file holds the entry points.

mod buckets;
mod cross_domain;
mod feasible;
mod index;
mod node_plan;
mod placement;
mod replica_bound;
mod request;
mod score;
mod search;
mod single;
mod spread;
mod wait;

#[cfg(test)]
mod tests;

use crate::cluster::Cluster;
use crate::domain::DomainCatalog;
use crate::links::LinkState;

pub use index::FabricIndex;
pub use placement::{GangPlacement, Hop, ReplicaClaim, allocate_gang};
pub(crate) use replica_bound::ReplicaBound;
pub use request::{DEFAULT_REPLICA_TRAFFIC_GBPS, GangOptions, GangRequest};
pub use score::{DomainScore, GroupScore, NodeScore};
pub use wait::GangWait;

use feasible::{resolve, scan_buckets};
use search::{place_gang_scan, place_scanned};
use single::{place_single, single_replica_whole_gpus};

/// Places a training gang (all replicas or none; elastic jobs at least `min_replicas`) or
/// spreads inference replicas. Nothing is allocated: pass the result to [`allocate_gang`].
pub fn place_gang(
    cluster: &Cluster,
    index: &FabricIndex,
    catalog: &DomainCatalog,
    gang: &GangRequest,
    options: &GangOptions<'_>,
) -> Result<GangPlacement, GangWait> {
    if !index.scan_only {
        let needs = resolve(cluster, gang);
        if single_replica_whole_gpus(gang, &needs) {
            if let Some(placed) = place_single(cluster, index, catalog, gang, &needs, options) {
                return Ok(placed);
            }
        } else if let Some(scan) = scan_buckets(cluster, index, &needs, gang.replicas, options)
            && !scan.nodes.is_empty()
            && let Ok(placed) = place_scanned(cluster, index, catalog, gang, &needs, scan)
        {
            return Ok(placed);
        }
    }
    place_gang_scan(cluster, index, catalog, gang, options)
}

/// [`place_gang`] for callers that only need to know whether and where the gang fits, not
/// why it does not: a refusal skips the full scan that explains a wait.
pub(crate) fn place_gang_if_fits(
    cluster: &Cluster,
    index: &FabricIndex,
    catalog: &DomainCatalog,
    gang: &GangRequest,
    options: &GangOptions<'_>,
) -> Option<GangPlacement> {
    if index.scan_only {
        return place_gang_scan(cluster, index, catalog, gang, options).ok();
    }
    let needs = resolve(cluster, gang);
    if single_replica_whole_gpus(gang, &needs) {
        return place_single(cluster, index, catalog, gang, &needs, options);
    }
    match scan_buckets(cluster, index, &needs, gang.replicas, options) {
        Some(scan) if scan.nodes.is_empty() => None,
        Some(scan) => place_scanned(cluster, index, catalog, gang, &needs, scan).ok(),
        None => place_gang_scan(cluster, index, catalog, gang, options).ok(),
    }
}

/// One-shot planning for callers without a long-lived index: indexes the cluster, then
/// [`place_gang`].
pub fn place_gang_once(
    cluster: &Cluster,
    links: &LinkState,
    catalog: &DomainCatalog,
    gang: &GangRequest,
) -> Result<GangPlacement, GangWait> {
    let index = FabricIndex::new(cluster, links, catalog);
    place_gang(cluster, &index, catalog, gang, &GangOptions::default())
}
