//! What the gang planner returns: the claims, the worst network hop between replicas and
//! the facts behind the choice; and applying them all or none.

use std::fmt;

use crate::cid::Cid;
use crate::cluster::{AllocationId, Claim, Cluster, ClusterError, NodeId};
use crate::job::NetworkScope;

/// The worst network hop between two replicas of a placement, tightest first.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Hop {
    SameNode,
    SameLeaf,
    SameSpine,
    CrossSpine,
    CrossDomain,
}

impl Hop {
    pub fn name(self) -> &'static str {
        match self {
            Hop::SameNode => "same node",
            Hop::SameLeaf => "same leaf",
            Hop::SameSpine => "same spine",
            Hop::CrossSpine => "across spines",
            Hop::CrossDomain => "across domains",
        }
    }

    /// The loosest hop a network scope permits.
    pub fn of_scope(scope: NetworkScope) -> Hop {
        match scope {
            NetworkScope::SameNode => Hop::SameNode,
            NetworkScope::SameLeaf => Hop::SameLeaf,
            NetworkScope::SameSpine => Hop::SameSpine,
            NetworkScope::Any => Hop::CrossSpine,
        }
    }
}

impl fmt::Display for Hop {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// One replica's claim.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReplicaClaim {
    pub claim: Claim,
    pub node_name: String,
}

/// Where a gang goes and why.
#[derive(Debug, Clone, PartialEq)]
pub struct GangPlacement {
    /// One claim per placed replica (fewer than asked only for elastic jobs).
    pub replicas: Vec<ReplicaClaim>,
    /// The worst hop between two replicas.
    pub hop: Hop,
    /// The group the gang was fitted into, e.g. `leaf cid:acme/r/dc-a spine-1/leaf-3`.
    pub group: String,
    /// Domains used, best first (empty when nodes carry no CIDs).
    pub domains: Vec<Cid>,
    /// Inter-domain traffic the split implies (0 within one domain).
    pub inter_domain_gbps: f64,
    /// Worst link rank inside any replica (0: single GPUs or no link data).
    pub worst_link_rank: u32,
    /// GPUs granted with a GPUDirect-capable path to a healthy NIC.
    pub gdr_gpus: u32,
    /// Nodes that could hold at least one replica.
    pub feasible_nodes: u32,
}

impl GangPlacement {
    /// A placement of exactly these claims, chosen elsewhere (by a single-replica policy, or
    /// booked again after a restart). Its hop and fabric facts are not measured.
    pub fn of_claims(replicas: Vec<ReplicaClaim>, group: String) -> GangPlacement {
        GangPlacement {
            replicas,
            hop: Hop::SameNode,
            group,
            domains: Vec::new(),
            inter_domain_gbps: 0.0,
            worst_link_rank: 0,
            gdr_gpus: 0,
            feasible_nodes: 0,
        }
    }

    pub fn nodes(&self) -> impl Iterator<Item = NodeId> + '_ {
        self.replicas.iter().map(|r| r.claim.node)
    }
}

impl fmt::Display for GangPlacement {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut nodes: Vec<NodeId> = self.nodes().collect();
        nodes.sort();
        nodes.dedup();
        write!(
            f,
            "{} replicas on {} nodes, worst hop {}, in {} ({} feasible nodes)",
            self.replicas.len(),
            nodes.len(),
            self.hop,
            self.group,
            self.feasible_nodes
        )?;
        if self.worst_link_rank > 0 {
            write!(f, ", worst GPU link rank {}", self.worst_link_rank)?;
        }
        if self.gdr_gpus > 0 {
            write!(f, ", {} GPUs with GPUDirect RDMA", self.gdr_gpus)?;
        }
        if self.inter_domain_gbps > 0.0 {
            write!(f, ", {} Gb/s between domains", self.inter_domain_gbps)?;
        }
        Ok(())
    }
}

/// Allocates every replica of a placement, or none: on the first refusal the ones already
/// made are released and the error returned.
pub fn allocate_gang(
    cluster: &mut Cluster,
    placement: &GangPlacement,
) -> Result<Vec<AllocationId>, ClusterError> {
    let mut ids = Vec::with_capacity(placement.replicas.len());
    for replica in &placement.replicas {
        match cluster.allocate(&replica.claim) {
            Ok(id) => ids.push(id),
            Err(e) => {
                for id in ids.into_iter().rev() {
                    cluster
                        .release(id)
                        .expect("an allocation made just now is known");
                }
                return Err(e);
            }
        }
    }
    Ok(ids)
}
