//! The full scan every policy shares: every node through the filter and the scorer, the
//! running best, and how ties break.

use std::cmp::Reverse;

use crate::cluster::{Cluster, FreeCapacity, ModelId, NodeId};
use crate::explain::{Refusal, RefusalCounts};
use crate::request::GpuDemand;

use super::scorer::Scorer;
use super::select::{Ctx, filter};
use super::{Policy, PolicyKind, Score, TieBreak};

/// A stateless 64-bit mixer (SplitMix64's finalizer): a uniform tie-break draw per node from
/// one RNG draw per placement.
pub(super) fn mix64(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// The running winner of a scan, with the feasible nodes seen and how many share its points.
#[derive(Debug, Default)]
pub(super) struct Best {
    pub(super) best: Option<Score>,
    pub(super) feasible: u32,
    pub(super) tied: u32,
}

impl Best {
    /// Considers one feasible node's score.
    pub(super) fn offer(&mut self, score: Score) {
        match &self.best {
            Some(b) if (b.points, b.link) == (score.points, score.link) => {
                self.tied += 1;
                if score > *b {
                    self.best = Some(score);
                }
            }
            Some(b) if (b.points, b.link) > (score.points, score.link) => {}
            _ => {
                self.tied = 1;
                self.best = Some(score);
            }
        }
    }
}

/// Node `i`'s tie-break value (see [`Score`]).
pub(super) fn tie_of(policy: &Policy, ranks: &[u32], nonce: u64, i: usize) -> u64 {
    match policy.tie_break {
        // The random policy is a uniform draw over feasible nodes whatever the tie-break.
        TieBreak::NodeName if policy.kind != PolicyKind::Random => {
            u64::from(u32::MAX - ranks.get(i).copied().unwrap_or(u32::MAX))
        }
        _ => mix64(nonce ^ (i as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15)),
    }
}

/// Every node through the full filter and scorer: the reference scan, and the one that
/// counts why nodes were rejected.
pub(super) fn scan_full(
    scorer: &mut Scorer<'_>,
    cluster: &Cluster,
    policy: &Policy,
    nonce: u64,
    reasons: &mut RefusalCounts,
) -> Best {
    let capacity = cluster.free_capacity();
    let ranks = cluster.name_ranks();
    let open = scorer.ctx.req.allowed().is_empty();
    let mut best = Best::default();
    for (i, node) in cluster.nodes().iter().enumerate() {
        let h = &capacity[i];
        let fast = open && h.simple;
        let verdict = if fast {
            fast_filter(&scorer.ctx, h)
        } else {
            filter(&scorer.ctx, node)
        };
        if let Err(reason) = verdict {
            reasons[reason as usize] += 1;
            continue;
        }
        best.feasible += 1;
        let (points, link) = scorer.points(i, node, h, fast);
        best.offer(Score {
            points,
            link: Reverse(link),
            tie: tie_of(policy, ranks, nonce, i),
            node: Reverse(NodeId(i as u32)),
        });
    }
    best
}

/// The first reason a simple node (see [`FreeCapacity`]) cannot take the request.
fn fast_filter(ctx: &Ctx<'_>, h: &FreeCapacity) -> Result<(), Refusal> {
    let demand = ctx.req.gpu();
    if !matches!(demand, GpuDemand::None) {
        if h.gpus == 0 {
            return Err(Refusal::NoGpus);
        }
        if let Some(models) = &ctx.models
            && !models.contains(&ModelId(h.model))
        {
            return Err(Refusal::ModelNotAllowed);
        }
    }
    if h.cpu_left < ctx.cpu {
        return Err(Refusal::NotEnoughCpu);
    }
    if h.memory_left < ctx.mem {
        return Err(Refusal::NotEnoughMemory);
    }
    match demand {
        GpuDemand::None => Ok(()),
        GpuDemand::Exclusive { count } => {
            if h.free_mask.count_ones() < *count {
                Err(Refusal::FewerFreeGpus)
            } else {
                Ok(())
            }
        }
        GpuDemand::Shared { milli, memory_mib } => {
            let fits = (0..usize::from(h.gpus)).any(|i| {
                h.share_mask & (1 << i) != 0
                    && u32::from(h.milli_left[i]) >= *milli
                    && u64::from(h.gpu_memory_left[i]) >= *memory_mib
            });
            if fits {
                Ok(())
            } else {
                Err(Refusal::NoShareRoom)
            }
        }
        GpuDemand::Mig { .. } => Err(Refusal::NoMigProfile),
    }
}
