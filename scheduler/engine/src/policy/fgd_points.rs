//! FGD's points: the fragmentation a placement adds to a node for the expected workload,
//! and the cache that remembers them per request shape and node state.

use std::collections::HashMap;
use std::hash::{Hash, Hasher};

use crate::cluster::{GpuGrant, ModelId};
use crate::fgd::{ResolvedMix, fgd_points};
use crate::request::{GpuDemand, Request};

use super::points::score_cpu;
use super::select::{Ctx, MAX_GPUS};

/// The inputs FGD needs about one node, from either the compact or the full node view.
pub(super) struct FgdView<'v> {
    pub(super) cpu_left: u64,
    pub(super) milli_left: &'v [u32],
    pub(super) model: Option<ModelId>,
    /// Bit `i`: a share of this request fits GPU `i`.
    pub(super) share_ok: u64,
    /// GPUs a whole-GPU request would take.
    pub(super) whole: &'v [u32],
    /// MIG instances a MIG request would take.
    pub(super) mig: &'v [GpuGrant],
}

/// FGD points by request shape: for each shape, a (node fingerprint, points) slot per node,
/// so that a scan reads one dense array and a shape never evicts another's points.
#[derive(Debug, Clone, Default)]
pub(super) struct FgdCache {
    pub(super) by_shape: HashMap<u64, Vec<(u64, i64)>>,
}

/// Request shapes remembered before the cache starts over.
pub(super) const FGD_CACHE_SHAPES: usize = 256;

/// A key for the request's shape: what FGD's points depend on.
pub(super) fn shape_key(request: &Request) -> u64 {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    (request.cpu_milli(), request.gpu(), request.models()).hash(&mut h);
    h.finish()
}

/// FGD: the points of the best move, with the share GPU it uses (if a share) and the
/// fragmentation before and after.
pub(super) fn fgd_eval(
    ctx: &Ctx<'_>,
    mix: &ResolvedMix,
    v: &FgdView<'_>,
) -> (i64, Option<usize>, f64, f64) {
    let before = mix.frag(v.cpu_left, v.milli_left, v.model);
    // The reference subtracts the pod's CPU as Kubernetes scores it (a zero request counts
    // 100m), for the share case and in `NodeResource.Sub` alike.
    let pod_cpu = score_cpu(ctx.cpu) as u64;
    let cpu_after = v.cpu_left.saturating_sub(pod_cpu);
    let mut milli_left_after = [0u32; MAX_GPUS];
    let milli_left_after = &mut milli_left_after[..v.milli_left.len()];
    milli_left_after.copy_from_slice(v.milli_left);
    if let GpuDemand::Shared { milli, .. } = ctx.req.gpu() {
        let mut best: Option<(i64, usize, f64)> = None;
        let mut tried = [u32::MAX; MAX_GPUS];
        let mut n_tried = 0;
        let mut mask = v.share_ok;
        while mask != 0 {
            let i = mask.trailing_zeros() as usize;
            mask &= mask - 1;
            // Equal free compute gives an equal result; the lower index already won.
            if tried[..n_tried].contains(&v.milli_left[i]) {
                continue;
            }
            tried[n_tried] = v.milli_left[i];
            n_tried += 1;
            milli_left_after[i] = v.milli_left[i] - milli;
            let after = mix.frag(cpu_after, milli_left_after, v.model);
            milli_left_after[i] = v.milli_left[i];
            let points = fgd_points(before, after);
            if best.is_none_or(|(p, _, _)| points > p) {
                best = Some((points, i, after));
            }
        }
        return match best {
            Some((points, i, after)) => (points, Some(i), before, after),
            None => (0, None, before, before),
        };
    }
    if v.cpu_left < pod_cpu {
        // `NodeResource.Sub` refuses such a pod and FGD scores the node unchanged (this only
        // happens to a zero-CPU pod on a node with less than 100m left).
        return (fgd_points(before, before), None, before, before);
    }
    for &p in v.whole {
        milli_left_after[p as usize] = 0;
    }
    for g in v.mig {
        let l = &mut milli_left_after[g.gpu as usize];
        *l = l.saturating_sub(g.milli);
    }
    let after = mix.frag(cpu_after, milli_left_after, v.model);
    (fgd_points(before, after), None, before, after)
}
