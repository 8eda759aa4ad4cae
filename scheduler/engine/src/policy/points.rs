//! Each policy's points for one node, as the FGD paper's simulator computes them (FGD's own
//! are in `fgd_points`).

use crate::cluster::Node;
use crate::job::MILLI_PER_GPU;

use super::select::{Ctx, MAX_GPUS};

/// The largest node the paper's simulator normalizes against: 128 cores.
const MAX_SPEC_CPU: f64 = 128_000.0;
/// ... and 8 GPUs.
const MAX_SPEC_GPU: f64 = 8_000.0;
pub(super) const MAX_POINTS: i64 = 100;

/// The CPU the paper's simulator scores with: Kubernetes counts a zero request as 100m.
pub(super) fn score_cpu(cpu: u64) -> f64 {
    if cpu == 0 { 100.0 } else { cpu as f64 }
}

/// Best fit: the fuller the node after placing, the more points.
pub(super) fn best_fit_points(ctx: &Ctx<'_>, cpu_left: u64, total: u32) -> i64 {
    best_fit_value(ctx, cpu_left, total) as i64
}

/// [`best_fit_points`] before truncation.
#[inline(always)]
fn best_fit_value(ctx: &Ctx<'_>, cpu_left: u64, total: u32) -> f64 {
    let gpu_req = (u64::from(ctx.milli_each) * u64::from(ctx.count)) as f64;
    let mut s = 0.0;
    s += (cpu_left as f64 - score_cpu(ctx.cpu)) / MAX_SPEC_CPU * 0.5;
    s += (f64::from(total) - gpu_req) / MAX_SPEC_GPU * 0.5;
    (1.0 - s) * MAX_POINTS as f64
}

/// Dot product: the smaller the free vector's projection on the request, the more points.
pub(super) fn dot_product_points(ctx: &Ctx<'_>, cpu_left: u64, total: u32) -> i64 {
    dot_product_value(ctx, cpu_left, total) as i64
}

/// [`dot_product_points`] before truncation.
#[inline(always)]
pub(super) fn dot_product_value(ctx: &Ctx<'_>, cpu_left: u64, total: u32) -> f64 {
    let gpu_req = (u64::from(ctx.milli_each) * u64::from(ctx.count)) as f64;
    let free = [
        cpu_left as f64 / MAX_SPEC_CPU,
        f64::from(total) / MAX_SPEC_GPU,
    ];
    let want = [score_cpu(ctx.cpu) / MAX_SPEC_CPU, gpu_req / MAX_SPEC_GPU];
    let mut dot = 0.0;
    dot += free[0] * want[0];
    dot += free[1] * want[1];
    let s = 1.0 - dot / 2.0;
    MAX_POINTS as f64 * s
}

/// GPU packing: use partly used GPUs first, then free GPUs of used nodes, then idle nodes.
pub(super) fn packing_points(ctx: &Ctx<'_>, milli_left: &[u32]) -> i64 {
    if ctx.milli_each == 0 {
        return 0;
    }
    let gpus = milli_left.len();
    let fully_free = milli_left.iter().filter(|l| **l == MILLI_PER_GPU).count();
    if fully_free == gpus {
        return (MAX_POINTS / 3 - fully_free as i64).max(fully_free as i64);
    }
    if ctx.milli_each == MILLI_PER_GPU {
        // Whole GPUs: only fully free GPUs qualify, so all of them are fresh.
        let wanted = ctx.count as usize;
        return if fully_free >= wanted {
            (MAX_POINTS / 2 - wanted as i64).max(MAX_POINTS / 3)
        } else {
            0
        };
    }
    if ctx.count == 1 {
        // One share: the least-free GPU that fits is the one packing would use.
        let Some(left) = milli_left
            .iter()
            .copied()
            .filter(|l| *l >= ctx.milli_each)
            .min()
        else {
            return 0;
        };
        if left == MILLI_PER_GPU {
            return (MAX_POINTS / 2 - 1).max(MAX_POINTS / 3);
        }
        let ratio = i64::from(left) * 100 / i64::from(MILLI_PER_GPU);
        return (MAX_POINTS - ratio / 10).max(MAX_POINTS / 2);
    }
    let mut order = [0usize; MAX_GPUS];
    for (i, o) in order.iter_mut().enumerate().take(gpus) {
        *o = i;
    }
    // Least compute left first; equal amounts keep index order.
    order[..gpus].sort_by_key(|&i| milli_left[i]);
    let mut wanted = ctx.count;
    let mut fresh = 0i64;
    let mut ratio_on_used = 0i64;
    for &i in &order[..gpus] {
        if wanted == 0 {
            break;
        }
        if milli_left[i] >= ctx.milli_each {
            wanted -= 1;
            if milli_left[i] == MILLI_PER_GPU {
                fresh += 1;
            }
            ratio_on_used += i64::from(milli_left[i]) * 100 / i64::from(MILLI_PER_GPU);
        }
    }
    if wanted != 0 {
        return 0;
    }
    if fresh > 0 {
        return (MAX_POINTS / 2 - fresh).max(MAX_POINTS / 3);
    }
    (MAX_POINTS - ratio_on_used / 10).max(MAX_POINTS / 2)
}

/// GPU clustering: nodes running only this kind of GPU work, then mixed nodes with it, then
/// idle nodes, then the rest; fuller nodes first within each band.
pub(super) fn clustering_points(ctx: &Ctx<'_>, node: &Node, total_left: u32) -> i64 {
    let Some(tag) = ctx.req.affinity() else {
        return 0;
    };
    let quarter = MAX_POINTS / 4;
    let fill = quarter * (MAX_SPEC_GPU as i64 - i64::from(total_left)) / MAX_SPEC_GPU as i64;
    let kinds = node.affinity();
    let has_tag = kinds.iter().any(|(t, c)| *t == tag && *c > 0);
    let band = match (has_tag, kinds.len()) {
        (true, 1) => 3,
        (true, _) => 2,
        (false, 0) => 1,
        (false, _) => 0,
    };
    fill + quarter * band
}
