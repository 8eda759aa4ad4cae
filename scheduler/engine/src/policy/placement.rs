//! What placing one request returns: the claim, its [`Score`], and why it went there.

use std::cmp::Reverse;
use std::fmt;

use crate::cluster::{Claim, NodeId};

use super::PolicyKind;

/// A feasible node's score. The field order is the policy: the policy's points, then the
/// better-linked GPU set, then the tie-break (the inverted name rank, or a seeded random
/// draw; see [`TieBreak`](super::TieBreak)), then the node id so every run breaks ties the same way.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Score {
    pub points: i64,
    pub link: Reverse<u32>,
    pub tie: u64,
    pub node: Reverse<NodeId>,
}

/// Where a request goes: the claim to allocate, and why there.
#[derive(Debug, Clone, PartialEq)]
pub struct Placement {
    /// Pass to [`Cluster::allocate`](crate::cluster::Cluster::allocate).
    pub claim: Claim,
    pub node_name: String,
    pub score: Score,
    pub breakdown: ScoreBreakdown,
}

impl Placement {
    pub fn node(&self) -> NodeId {
        self.claim.node
    }

    /// GPU positions on the node, in grant order.
    pub fn gpus(&self) -> impl Iterator<Item = u32> + '_ {
        self.claim.gpus.iter().map(|g| g.gpu)
    }
}

/// Why a placement went where it did.
#[derive(Debug, Clone, PartialEq)]
pub struct ScoreBreakdown {
    pub policy: PolicyKind,
    /// The policy's 0–100 points for the chosen node.
    pub points: i64,
    /// Worst link rank among the chosen GPUs (0: one GPU or no link data).
    pub link_rank: u32,
    /// Nodes that passed every filter.
    pub feasible_nodes: u32,
    /// Feasible nodes with the same top points and link rank; one was drawn at random.
    pub tied_nodes: u32,
    /// The inputs of the policy's formula, by name (e.g. `frag_before`, `frag_after`).
    pub terms: Vec<(&'static str, f64)>,
}

impl fmt::Display for ScoreBreakdown {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}: {} points (best of {} feasible nodes, {} tied)",
            self.policy.name(),
            self.points,
            self.feasible_nodes,
            self.tied_nodes
        )?;
        if self.link_rank > 0 {
            write!(f, ", link rank {}", self.link_rank)?;
        }
        for (name, value) in &self.terms {
            write!(f, ", {name} {value}")?;
        }
        Ok(())
    }
}
