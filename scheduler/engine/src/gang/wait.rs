//! Why a gang waits: the gang-level reason ([`GangWait`]), with per-node [`Refusal`]
//! counts, reading as a sentence.

use std::fmt;

use crate::cluster::Cluster;
use crate::explain::Refusal;
use crate::job::NetworkScope;

use super::feasible::Scan;
use super::index::FabricIndex;
use super::placement::Hop;
use super::request::GangRequest;
use super::search::GroupRoom;

/// The refusals the gang planner gives, in the order equal counts are listed.
pub(super) const GANG_REFUSALS: [Refusal; 12] = [
    Refusal::Cordoned,
    Refusal::Reserved,
    Refusal::OutsideAllowed,
    Refusal::ModelNotAllowed,
    Refusal::Price,
    Refusal::RdmaDown,
    Refusal::FewerFreeGpus,
    Refusal::NoNvlinkSet,
    Refusal::NoShareRoom,
    Refusal::NoMigSlots,
    Refusal::NotEnoughCpu,
    Refusal::NotEnoughMemory,
];

/// Why a gang cannot be placed now. Reads as a sentence (`Display`).
#[derive(Debug, Clone, PartialEq)]
pub enum GangWait {
    /// No node can hold a single replica.
    NoNode {
        nodes: u32,
        counts: Vec<(Refusal, u32)>,
    },
    /// The whole allowed scope holds fewer replicas than needed.
    TooFew {
        needed: u32,
        fit: u32,
        counts: Vec<(Refusal, u32)>,
    },
    /// A required network scope cannot be met: the best group holds `best` of `needed`.
    Network {
        scope: NetworkScope,
        needed: u32,
        best: u32,
        group: String,
        /// Every candidate node holds at most one replica, so replicas read as nodes.
        whole_nodes: bool,
    },
    /// The gang fits only across domains and the job does not allow that.
    CrossDomainNotAllowed {
        needed: u32,
        best: u32,
        domain: String,
    },
    /// A split across domains would need more inter-domain bandwidth than the job declared.
    OverBudget {
        needed_gbps: f64,
        budget_gbps: Option<f64>,
    },
    /// A split across domains would overload (or lacks) the link between two domains.
    DomainLink {
        a: String,
        b: String,
        needed_gbps: f64,
        link_gbps: Option<f64>,
    },
}

fn write_counts(f: &mut fmt::Formatter<'_>, counts: &[(Refusal, u32)]) -> fmt::Result {
    for (i, (reason, n)) in counts.iter().enumerate() {
        f.write_str(if i == 0 { " (" } else { "; " })?;
        let noun = if *n == 1 { "node" } else { "nodes" };
        write!(f, "{n} {noun}: {}", reason.describe())?;
    }
    if !counts.is_empty() {
        f.write_str(")")?;
    }
    Ok(())
}

impl fmt::Display for GangWait {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            GangWait::NoNode { nodes, counts } => {
                write!(
                    f,
                    "no node can hold a replica now ({nodes} nodes looked at)"
                )?;
                write_counts(f, counts)
            }
            GangWait::TooFew {
                needed,
                fit,
                counts,
            } => {
                write!(f, "room for {fit} of {needed} replicas")?;
                write_counts(f, counts)
            }
            GangWait::Network {
                scope,
                needed,
                best,
                group,
                whole_nodes,
            } => {
                let (level, scope_name) = match scope {
                    NetworkScope::SameNode => ("node", "same-node"),
                    NetworkScope::SameLeaf => ("leaf", "same-leaf"),
                    NetworkScope::SameSpine => ("spine", "same-spine"),
                    NetworkScope::Any => ("domain", "any"),
                };
                if *whole_nodes {
                    write!(
                        f,
                        "{scope_name} required: largest {level} ({group}) has {best} of {needed} needed nodes free"
                    )
                } else {
                    write!(
                        f,
                        "{scope_name} required: largest {level} ({group}) has room for {best} of {needed} replicas"
                    )
                }
            }
            GangWait::CrossDomainNotAllowed {
                needed,
                best,
                domain,
            } => write!(
                f,
                "largest domain ({domain}) has room for {best} of {needed} replicas and the job does not allow crossing domains"
            ),
            GangWait::OverBudget {
                needed_gbps,
                budget_gbps: Some(budget),
            } => write!(
                f,
                "a split across domains needs {needed_gbps} Gb/s between domains, over the job's budget of {budget} Gb/s"
            ),
            GangWait::OverBudget {
                needed_gbps,
                budget_gbps: None,
            } => write!(
                f,
                "a split across domains needs {needed_gbps} Gb/s between domains and the job declares no inter-domain bandwidth budget"
            ),
            GangWait::DomainLink {
                a,
                b,
                needed_gbps,
                link_gbps: Some(link),
            } => write!(
                f,
                "a split across domains needs {needed_gbps} Gb/s between {a} and {b}, whose link carries {link} Gb/s"
            ),
            GangWait::DomainLink {
                a,
                b,
                needed_gbps,
                link_gbps: None,
            } => write!(
                f,
                "a split across domains needs {needed_gbps} Gb/s between {a} and {b}, which have no configured link"
            ),
        }
    }
}

impl std::error::Error for GangWait {}

/// Why a gang holding fewer than `min_replicas` anywhere it may go waits.
pub(super) fn wait_reason(
    cluster: &Cluster,
    index: &FabricIndex,
    gang: &GangRequest,
    scan: Scan,
    room: &GroupRoom,
    scope_hop: Hop,
    loosest: Hop,
) -> GangWait {
    let needed = gang.min_replicas;
    let (best, group) = room.largest(scope_hop);
    if scope_hop < Hop::CrossSpine && gang.network_required() {
        let name = match scope_hop {
            Hop::SameNode => cluster.nodes()[group as usize].name().to_string(),
            Hop::SameLeaf => index.leaf_name(group),
            _ => index.spine_name(group),
        };
        return GangWait::Network {
            scope: gang.topology.network.scope,
            needed,
            best,
            group: name,
            whole_nodes: room.node_best <= 1,
        };
    }
    if loosest == Hop::CrossSpine && room.total() >= needed {
        return GangWait::CrossDomainNotAllowed {
            needed,
            best,
            domain: index.domain_name(group),
        };
    }
    GangWait::TooFew {
        needed,
        fit: room.total(),
        counts: scan.counts,
    }
}
