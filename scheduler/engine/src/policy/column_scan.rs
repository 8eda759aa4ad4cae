//! The column scan: the same choice as the full scan for the policies whose points depend only
//! on CPU and GPU compute left, read from per-field arrays a block of nodes at a time.

use std::cmp::Reverse;

use crate::cluster::{Cluster, NodeId};
use crate::job::MILLI_PER_GPU;
use crate::request::{GpuDemand, Request};

use super::points::{MAX_POINTS, best_fit_points, dot_product_value, score_cpu};
use super::scan::{Best, tie_of};
use super::scorer::Scorer;
use super::select::{Ctx, filter};
use super::{Policy, PolicyKind, Score, TieBreak};

/// What a request needs from a node, as the column scan checks it.
#[derive(Debug, Clone, Copy)]
pub(super) enum ColumnDemand {
    Cpu,
    Whole(u8),
    Share(u16),
}

/// The column scan applies to policies whose points depend only on CPU and GPU compute left,
/// and to requests open to every place that need no GPU memory and no MIG.
pub(super) fn column_demand(kind: PolicyKind, request: &Request) -> Option<ColumnDemand> {
    if !matches!(
        kind,
        PolicyKind::Random | PolicyKind::BestFit | PolicyKind::DotProduct | PolicyKind::GpuPacking
    ) || !request.allowed().is_empty()
    {
        return None;
    }
    match request.gpu() {
        GpuDemand::None => Some(ColumnDemand::Cpu),
        GpuDemand::Exclusive { count } => u8::try_from(*count).ok().map(ColumnDemand::Whole),
        GpuDemand::Shared {
            milli,
            memory_mib: 0,
        } => u16::try_from(*milli).ok().map(ColumnDemand::Share),
        _ => None,
    }
}

/// Nodes the column scan scores at once: the block's points fit on the stack (2 KiB).
const COLUMN_BLOCK: usize = 512;

/// The same choice as [`scan_full`](super::scan::scan_full), without reasons: simple nodes
/// through the capacity columns ([`FreeCapacityColumns`](crate::cluster::FreeCapacityColumns)),
/// the others through the full filter and scorer.
pub(super) fn scan_columns(
    scorer: &mut Scorer<'_>,
    cluster: &Cluster,
    policy: &Policy,
    nonce: u64,
    need: ColumnDemand,
) -> Best {
    let columns = cluster.free_capacity_columns();
    let ctx = &scorer.ctx;
    let wanted = i32::try_from(ctx.count).unwrap_or(i32::MAX);
    let milli = u16::try_from(ctx.milli_each).unwrap_or(u16::MAX);
    let full_points = MILLI_PER_GPU as u16;
    let simple = match policy.kind {
        PolicyKind::BestFit => best_fit_columns(cluster, policy, ctx, nonce, need),
        PolicyKind::DotProduct => {
            scan_column_blocks(cluster, policy, ctx, nonce, need, &DotProductPoints(ctx))
        }
        PolicyKind::GpuPacking if milli == 0 => {
            scan_column_blocks(cluster, policy, ctx, nonce, need, &EqualPoints)
        }
        PolicyKind::GpuPacking if milli == full_points => scan_column_blocks(
            cluster,
            policy,
            ctx,
            nonce,
            need,
            &PackingWholeGpuPoints(wanted),
        ),
        PolicyKind::GpuPacking => scan_column_blocks(
            cluster,
            policy,
            ctx,
            nonce,
            need,
            &PackingSharePoints(milli),
        ),
        _ => scan_column_blocks(cluster, policy, ctx, nonce, need, &EqualPoints),
    };
    // Nodes off the column scan, as the full scan treats them.
    let mut best = Best::default();
    if columns.not_simple > 0 {
        let (capacity, nodes, ranks) = (
            cluster.free_capacity(),
            cluster.nodes(),
            cluster.name_ranks(),
        );
        for (i, node) in nodes.iter().enumerate() {
            if columns.simple[i] || filter(&scorer.ctx, node).is_err() {
                continue;
            }
            best.feasible += 1;
            let (points, link) = scorer.points(i, node, &capacity[i], false);
            best.offer(Score {
                points,
                link: Reverse(link),
                tie: tie_of(policy, ranks, nonce, i),
                node: Reverse(NodeId(i as u32)),
            });
        }
    }
    best.feasible += simple.feasible;
    if let Some(score) = simple.best {
        match best.best {
            Some(b) if (b.points, b.link) == (score.points, score.link) => {
                best.tied += simple.tied;
                if score > b {
                    best.best = Some(score);
                }
            }
            Some(b) if (b.points, b.link) > (score.points, score.link) => {}
            _ => {
                best.best = Some(score);
                best.tied = simple.tied;
            }
        }
    }
    best
}

/// A policy's points for one node of a column block (garbage where the request does not fit:
/// the caller masks those).
trait ColumnPoints {
    fn points(&self, b: &ColumnBlock<'_>, j: usize) -> i32;
}

/// Points in `i32` equal the full scan's `i64` points: every policy's points stay within
/// ±40 million for the node and request sizes the engine accepts.
struct DotProductPoints<'c, 'r>(&'c Ctx<'r>);

impl ColumnPoints for DotProductPoints<'_, '_> {
    #[inline(always)]
    fn points(&self, b: &ColumnBlock<'_>, j: usize) -> i32 {
        dot_product_value(self.0, u64::from(b.cpu_left[j]), u32::from(b.total_left[j])) as i32
    }
}

/// Equal points everywhere: random, and gpu-packing for CPU-only work.
struct EqualPoints;

impl ColumnPoints for EqualPoints {
    #[inline(always)]
    fn points(&self, _: &ColumnBlock<'_>, _: usize) -> i32 {
        0
    }
}

/// [`packing_points`](super::points::packing_points) for whole GPUs (this many).
struct PackingWholeGpuPoints(i32);

impl ColumnPoints for PackingWholeGpuPoints {
    #[inline(always)]
    fn points(&self, b: &ColumnBlock<'_>, j: usize) -> i32 {
        let max = MAX_POINTS as i32;
        let full = i32::from(b.full[j]);
        let all_fresh = (max / 3 - full).max(full);
        let used = if full >= self.0 {
            (max / 2 - self.0).max(max / 3)
        } else {
            0
        };
        if b.full[j] == b.gpus[j] {
            all_fresh
        } else {
            used
        }
    }
}

/// [`packing_points`](super::points::packing_points) for one share of this much compute.
struct PackingSharePoints(u16);

impl ColumnPoints for PackingSharePoints {
    #[inline(always)]
    fn points(&self, b: &ColumnBlock<'_>, j: usize) -> i32 {
        let max = MAX_POINTS as i32;
        let full = i32::from(b.full[j]);
        let all_fresh = (max / 3 - full).max(full);
        // The tightest GPU the share fits.
        let mut tightest = u16::MAX;
        for column in &b.milli_left_by_gpu {
            let left = column[j];
            tightest = tightest.min(if left >= self.0 { left } else { u16::MAX });
        }
        let ratio = i32::from(tightest) * 100 / MILLI_PER_GPU as i32;
        let partial = (max - ratio / 10).max(max / 2);
        let fresh = (max / 2 - 1).max(max / 3);
        let used = if tightest == u16::MAX {
            0
        } else if u32::from(tightest) == MILLI_PER_GPU {
            fresh
        } else {
            partial
        };
        if b.full[j] == b.gpus[j] {
            all_fresh
        } else {
            used
        }
    }
}

/// Best fit over the simple nodes in two passes. Points fall with
/// `key = cpu_left + 16 · gpu_left`: they are at most `101 - (key - base) / 2560`. The first
/// pass finds the feasible nodes and their keys with integer arithmetic only; the node with
/// the smallest key gives a lower bound on the best points; the second pass computes the
/// exact points only for nodes whose key can still reach that bound.
fn best_fit_columns(
    cluster: &Cluster,
    policy: &Policy,
    ctx: &Ctx<'_>,
    nonce: u64,
    need: ColumnDemand,
) -> Best {
    let columns = cluster.free_capacity_columns();
    let ranks = cluster.name_ranks();
    let n = columns.simple.len();
    let filter = column_filter(ctx, need);
    let models: Option<Vec<u16>> = ctx
        .models
        .as_ref()
        .map(|m| m.iter().map(|id| id.0).collect());
    let mut keys = vec![i32::MAX; n];
    let mut feasible = 0u32;
    let mut min_key = i32::MAX;
    for (start, keys) in (0..n)
        .step_by(COLUMN_BLOCK)
        .zip(keys.chunks_mut(COLUMN_BLOCK))
    {
        let b = ColumnBlock::new(columns, start, keys.len());
        let (block_feasible, block_min) = match &models {
            None => best_fit_block_keys(&b, keys, |_| true, &filter),
            Some(m) => best_fit_block_keys(&b, keys, |model| m.contains(&model), &filter),
        };
        feasible += block_feasible;
        min_key = min_key.min(block_min);
    }
    let mut best = Best::default();
    let Some(first) = keys
        .iter()
        .position(|k| *k == min_key)
        .filter(|_| feasible > 0)
    else {
        return best;
    };
    let points_at = |i: usize| {
        best_fit_points(
            ctx,
            u64::from(columns.cpu_left[i]),
            u32::from(columns.total_left[i]),
        )
    };
    let base = score_cpu(ctx.cpu) as i64 + 16 * i64::from(ctx.milli_each) * i64::from(ctx.count);
    let limit = base.saturating_add((101 - points_at(first)).saturating_mul(2560));
    for (i, key) in keys.iter().enumerate() {
        if i64::from(*key) > limit || *key == i32::MAX {
            continue;
        }
        best.offer(Score {
            points: points_at(i),
            link: Reverse(0),
            tie: tie_of(policy, ranks, nonce, i),
            node: Reverse(NodeId(i as u32)),
        });
    }
    best.feasible = feasible;
    best
}

/// Best fit's key (`cpu_left + 16 · gpu_left`) of each node of a block, `i32::MAX` where the
/// request does not fit, with how many fit and the smallest key. A simple node's key fits in
/// `i32` (at most 10^8 + 16 · 8000); 32-bit lanes keep the loop vectorized.
#[inline(always)]
fn best_fit_block_keys(
    b: &ColumnBlock<'_>,
    keys: &mut [i32],
    model_ok: impl Fn(u16) -> bool,
    f: &ColumnFilter,
) -> (u32, i32) {
    let mut feasible = 0u32;
    let mut min = i32::MAX;
    for (j, slot) in keys.iter_mut().enumerate() {
        let gpu_ok = !f.wants_gpu | ((b.gpus[j] > 0) & model_ok(b.model[j]));
        let fits = b.simple[j]
            & (b.cpu_left[j] >= f.cpu)
            & (b.memory_left[j] >= f.mem)
            & gpu_ok
            & (b.free[j] >= f.whole)
            & (b.max_left[j] >= f.share);
        // Non-simple nodes may saturate; they never fit here.
        let key = (b.cpu_left[j] as i32).wrapping_add(16 * i32::from(b.total_left[j]));
        *slot = if fits { key } else { i32::MAX };
        feasible += u32::from(fits);
        min = min.min(*slot);
    }
    (feasible, min)
}

/// The column scan's filter for `need`.
fn column_filter(ctx: &Ctx<'_>, need: ColumnDemand) -> ColumnFilter {
    // Requests are at most 10,000 cores and 2^30 MiB, so both fit; nodes saturate.
    let cpu = u32::try_from(ctx.cpu).unwrap_or(u32::MAX);
    let mem = u32::try_from(ctx.mem).unwrap_or(u32::MAX);
    match need {
        ColumnDemand::Cpu => ColumnFilter::new(false, cpu, mem, 0, 0),
        ColumnDemand::Whole(count) => ColumnFilter::new(true, cpu, mem, count, 0),
        ColumnDemand::Share(milli) => ColumnFilter::new(true, cpu, mem, 0, milli),
    }
}

/// What a simple node must have for the request.
#[derive(Debug, Clone, Copy)]
struct ColumnFilter {
    wants_gpu: bool,
    pub(super) cpu: u32,
    pub(super) mem: u32,
    pub(super) whole: u8,
    pub(super) share: u16,
}

impl ColumnFilter {
    fn new(wants_gpu: bool, cpu: u32, mem: u32, whole: u8, share: u16) -> ColumnFilter {
        ColumnFilter {
            wants_gpu,
            cpu,
            mem,
            whole,
            share,
        }
    }
}

/// Points of each node of a block (`i32::MIN` where the request does not fit), with how many
/// fit and the block's best.
#[inline(always)]
fn block_points(
    b: &ColumnBlock<'_>,
    points: &mut [i32],
    points_of: &impl ColumnPoints,
    model_ok: impl Fn(u16) -> bool,
    f: &ColumnFilter,
) -> (u32, i32) {
    let mut feasible = 0u32;
    let mut max = i32::MIN;
    for (j, slot) in points.iter_mut().enumerate() {
        let gpu_ok = !f.wants_gpu | ((b.gpus[j] > 0) & model_ok(b.model[j]));
        let fits = b.simple[j]
            & (b.cpu_left[j] >= f.cpu)
            & (b.memory_left[j] >= f.mem)
            & gpu_ok
            & (b.free[j] >= f.whole)
            & (b.max_left[j] >= f.share);
        let p = points_of.points(b, j);
        *slot = if fits { p } else { i32::MIN };
        feasible += u32::from(fits);
        max = max.max(*slot);
    }
    (feasible, max)
}

/// One block of the capacity columns, each cut to the block's length so that indexing within the
/// block needs no bounds checks.
struct ColumnBlock<'a> {
    pub(super) simple: &'a [bool],
    pub(super) cpu_left: &'a [u32],
    pub(super) memory_left: &'a [u32],
    pub(super) model: &'a [u16],
    pub(super) gpus: &'a [u8],
    pub(super) total_left: &'a [u16],
    max_left: &'a [u16],
    free: &'a [u8],
    pub(super) full: &'a [u8],
    milli_left_by_gpu: [&'a [u16]; crate::cluster::FAST_PATH_MAX_GPUS],
}

impl<'a> ColumnBlock<'a> {
    fn new(
        columns: &'a crate::cluster::FreeCapacityColumns,
        start: usize,
        len: usize,
    ) -> ColumnBlock<'a> {
        let r = start..start + len;
        ColumnBlock {
            simple: &columns.simple[r.clone()],
            cpu_left: &columns.cpu_left[r.clone()],
            memory_left: &columns.memory_left[r.clone()],
            model: &columns.model[r.clone()],
            gpus: &columns.gpus[r.clone()],
            total_left: &columns.total_left[r.clone()],
            max_left: &columns.max_left[r.clone()],
            free: &columns.free[r.clone()],
            full: &columns.full[r.clone()],
            milli_left_by_gpu: std::array::from_fn(|g| &columns.milli_left_by_gpu[g][r.clone()]),
        }
    }
}

/// The best simple node by `points_of(block, position)`: feasibility and points for a block of nodes
/// at a time without branches, then the block's best and its ties.
#[inline(always)]
fn scan_column_blocks(
    cluster: &Cluster,
    policy: &Policy,
    ctx: &Ctx<'_>,
    nonce: u64,
    need: ColumnDemand,
    points_of: &impl ColumnPoints,
) -> Best {
    let columns = cluster.free_capacity_columns();
    let ranks = cluster.name_ranks();
    let n = columns.simple.len();
    // Requests are at most 10,000 cores and 2^30 MiB, so both fit; nodes saturate.
    let cpu = u32::try_from(ctx.cpu).unwrap_or(u32::MAX);
    let mem = u32::try_from(ctx.mem).unwrap_or(u32::MAX);
    let (wants_gpu, whole, share) = match need {
        ColumnDemand::Cpu => (false, 0u8, 0u16),
        ColumnDemand::Whole(count) => (true, count, 0),
        ColumnDemand::Share(milli) => (true, 0, milli),
    };
    let models: Option<Vec<u16>> = ctx
        .models
        .as_ref()
        .map(|m| m.iter().map(|id| id.0).collect());
    let name_ties = policy.tie_break == TieBreak::NodeName && policy.kind != PolicyKind::Random;
    let mut best_points = i32::MIN;
    let mut best: Option<(u64, usize)> = None;
    let mut tied = 0u32;
    let mut feasible = 0u32;
    let mut points = [i32::MIN; COLUMN_BLOCK];
    for start in (0..n).step_by(COLUMN_BLOCK) {
        let len = COLUMN_BLOCK.min(n - start);
        let b = ColumnBlock::new(columns, start, len);
        let (block_feasible, block_max) = match &models {
            None => block_points(
                &b,
                &mut points[..len],
                points_of,
                |_| true,
                &ColumnFilter::new(wants_gpu, cpu, mem, whole, share),
            ),
            Some(m) => block_points(
                &b,
                &mut points[..len],
                points_of,
                |model| m.contains(&model),
                &ColumnFilter::new(wants_gpu, cpu, mem, whole, share),
            ),
        };
        feasible += block_feasible;
        if block_feasible == 0 || block_max < best_points {
            continue;
        }
        if block_max > best_points {
            best_points = block_max;
            best = None;
            tied = 0;
        }
        if name_ties {
            // The smallest name rank among the block's best, without branches.
            let block_ranks = &ranks[start..start + len];
            let mut count = 0u32;
            let mut rank = u32::MAX;
            for (p, r) in points[..len].iter().zip(block_ranks) {
                let at_best = *p == best_points;
                count += u32::from(at_best);
                rank = rank.min(if at_best { *r } else { u32::MAX });
            }
            tied += count;
            let tie = u64::from(u32::MAX - rank);
            if let Some(j) = block_ranks.iter().position(|r| *r == rank)
                && best.is_none_or(|(t, _)| tie > t)
            {
                best = Some((tie, start + j));
            }
            continue;
        }
        for (j, p) in points[..len].iter().enumerate() {
            if *p != best_points {
                continue;
            }
            tied += 1;
            let i = start + j;
            let tie = tie_of(policy, ranks, nonce, i);
            // Equal ties go to the lower node id, which comes first.
            if best.is_none_or(|(t, _)| tie > t) {
                best = Some((tie, i));
            }
        }
    }
    Best {
        best: best.map(|(tie, i)| Score {
            points: i64::from(best_points),
            link: Reverse(0),
            tie,
            node: Reverse(NodeId(i as u32)),
        }),
        feasible,
        tied,
    }
}
