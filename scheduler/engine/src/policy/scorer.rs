//! The scorer: one request's points on one node under the chosen policy, dispatching to
//! each policy's formula and reading FGD's cached points.

use crate::cluster::{FreeCapacity, Node};
use crate::fgd::ResolvedMix;
use crate::request::GpuDemand;

use super::PolicyKind;
use super::fgd_points::{FgdView, fgd_eval};
use super::points::{best_fit_points, clustering_points, dot_product_points, packing_points};
use super::select::{Ctx, MAX_GPUS, choose_whole, plan_mig, share_candidates};

/// One request's scoring under one policy for the length of a placement: the resolved
/// request, FGD's mix and this request shape's cached FGD points.
pub(super) struct Scorer<'a> {
    pub(super) kind: PolicyKind,
    pub(super) ctx: Ctx<'a>,
    pub(super) mix: Option<ResolvedMix>,
    pub(super) positions: Vec<u32>,
    /// This request shape's FGD points from earlier placements, taken out of the caller's
    /// scratch for the scan: (node fingerprint, points) per node; empty when not caching.
    pub(super) fgd_slots: Vec<(u64, i64)>,
}

impl Scorer<'_> {
    /// The policy's points and the link rank of the GPUs it would use on node `index`. With
    /// `fast`, the node's GPUs are read from its compact `capacity` (a simple node).
    pub(super) fn points(
        &mut self,
        index: usize,
        node: &Node,
        capacity: &FreeCapacity,
        fast: bool,
    ) -> (i64, u32) {
        let mut buf = [0u32; MAX_GPUS];
        let (n, total, cpu_left) = if fast {
            let n = usize::from(capacity.gpus);
            for (b, l) in buf.iter_mut().zip(&capacity.milli_left[..n]) {
                *b = u32::from(*l);
            }
            (n, capacity.total_left, capacity.cpu_left)
        } else {
            let (n, total) = gpu_milli_left(node, &mut buf);
            (n, total, node.cpu_left())
        };
        let ctx = &self.ctx;
        let link = match ctx.req.gpu() {
            GpuDemand::Exclusive { count } if *count >= 2 && !fast && node.has_links() => {
                choose_whole(ctx, node, *count as usize, &mut self.positions).unwrap_or(0)
            }
            _ => 0,
        };
        let points = match self.kind {
            PolicyKind::Random => 0,
            PolicyKind::BestFit => best_fit_points(ctx, cpu_left, total),
            PolicyKind::DotProduct => dot_product_points(ctx, cpu_left, total),
            PolicyKind::GpuPacking => packing_points(ctx, &buf[..n]),
            PolicyKind::GpuClustering => clustering_points(ctx, node, total),
            PolicyKind::Fgd => {
                // Fingerprints are never 0, so an empty slot never matches.
                if let Some(&(fingerprint, points)) = self.fgd_slots.get(index)
                    && fingerprint == capacity.fingerprint
                {
                    return (points, link);
                }
                let points = self.fgd(node, capacity, fast, &buf[..n]).0;
                if let Some(slot) = self.fgd_slots.get_mut(index) {
                    *slot = (capacity.fingerprint, points);
                }
                points
            }
        };
        (points, link)
    }

    /// FGD's evaluation of `node`: points, the share GPU, fragmentation before and after.
    pub(super) fn fgd(
        &mut self,
        node: &Node,
        capacity: &FreeCapacity,
        fast: bool,
        milli_left: &[u32],
    ) -> (i64, Option<usize>, f64, f64) {
        let ctx = &self.ctx;
        let mix = self.mix.as_ref().expect("fgd scorers carry a mix");
        let mut share_ok = 0u64;
        let mut mig = Vec::new();
        self.positions.clear();
        if fast {
            if let GpuDemand::Shared { milli, memory_mib } = ctx.req.gpu() {
                for (i, left) in milli_left.iter().enumerate() {
                    if capacity.share_mask & (1 << i) != 0
                        && *left >= *milli
                        && u64::from(capacity.gpu_memory_left[i]) >= *memory_mib
                    {
                        share_ok |= 1 << i;
                    }
                }
            }
            if let GpuDemand::Exclusive { count } = ctx.req.gpu() {
                let mut mask = capacity.free_mask;
                while self.positions.len() < *count as usize && mask != 0 {
                    self.positions.push(mask.trailing_zeros());
                    mask &= mask - 1;
                }
            }
        } else {
            match ctx.req.gpu() {
                GpuDemand::Shared { milli, memory_mib } => {
                    for i in share_candidates(ctx, node, *milli, *memory_mib) {
                        share_ok |= 1 << i;
                    }
                }
                GpuDemand::Exclusive { count } => {
                    choose_whole(ctx, node, *count as usize, &mut self.positions);
                }
                GpuDemand::Mig { profile, count } => {
                    mig = plan_mig(ctx, node, profile, *count).unwrap_or_default();
                }
                GpuDemand::None => {}
            }
        }
        let view = FgdView {
            cpu_left: if fast {
                capacity.cpu_left
            } else {
                node.cpu_left()
            },
            milli_left,
            model: node.gpus().first().map(|g| g.model),
            share_ok,
            whole: &self.positions,
            mig: &mig,
        };
        fgd_eval(ctx, mix, &view)
    }
}

/// Free compute per GPU (milli) into `buf`; returns how many GPUs and their sum.
pub(super) fn gpu_milli_left(node: &Node, buf: &mut [u32; MAX_GPUS]) -> (usize, u32) {
    let mut total = 0;
    for (i, g) in node.gpus().iter().enumerate() {
        buf[i] = g.milli_left();
        total += buf[i];
    }
    (node.gpus().len(), total)
}
