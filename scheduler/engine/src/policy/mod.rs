//! Placement policies: filter every node, score the feasible ones, take the best.
//!
//! Each policy follows the FGD paper's simulator (`hkust-adsl/kubernetes-scheduler-simulator`)
//! so the simulator can hold it to the paper's numbers: integer points 0–100 with fractions
//! truncated, ties among the top points broken at random (from the caller's seeded RNG), and
//! the policy's own rule for which GPU(s) of the chosen node to use.
//!
//! | name | points (higher wins) | GPU on the node |
//! |---|---|---|
//! | `random` | equal for all feasible nodes | a random GPU that fits a share |
//! | `best-fit` | `100 × (1 − ½·cpu_left'/128 cores − ½·gpu_left'/8 GPUs)` after placing | tightest share |
//! | `dot-product` | `100 × (1 − ½·(free · request))`, both normalized by 128 cores and 8 GPUs | tightest share |
//! | `gpu-packing` | shared GPUs > free GPUs of a used node > an idle node | tightest share |
//! | `gpu-clustering` | nodes already running the same kind of GPU work, then fuller nodes | tightest share |
//! | `fgd` | `100 × sigmoid((frag_before − frag_after) / 1000)` | the GPU whose fragmentation grows least |
//!
//! Whole GPUs go to the first free GPUs by index, or, where the node reported its GPU links,
//! to the free set joined best (NVLink before one PCIe switch before the host bridge).

mod select;

use std::cmp::Reverse;
use std::collections::HashMap;
use std::fmt;
use std::hash::{Hash, Hasher};
use std::str::FromStr;
use std::sync::{Arc, Mutex, MutexGuard};

use rand::{Rng, RngCore};

use crate::cluster::{Claim, Cluster, GpuGrant, Hot, ModelId, Node, NodeId};
use crate::explain::{Reason, ScoreBreakdown, Unplaceable};
use crate::fgd::{ResolvedMix, WorkloadMix, fgd_points};
use crate::job::MILLI_PER_GPU;
use crate::request::{GpuDemand, Request};

use select::{
    Ctx, MAX_GPUS, choose_whole, filter, plan_mig, share_candidates, tightest_share, whole_grants,
};

/// The largest node the paper's simulator normalizes against: 128 cores.
const MAX_SPEC_CPU: f64 = 128_000.0;
/// ... and 8 GPUs.
const MAX_SPEC_GPU: f64 = 8_000.0;
const MAX_POINTS: i64 = 100;

/// A placement policy, selectable by name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum PolicyKind {
    Random,
    BestFit,
    DotProduct,
    GpuPacking,
    GpuClustering,
    Fgd,
}

impl PolicyKind {
    pub const ALL: [PolicyKind; 6] = [
        PolicyKind::Random,
        PolicyKind::BestFit,
        PolicyKind::DotProduct,
        PolicyKind::GpuPacking,
        PolicyKind::GpuClustering,
        PolicyKind::Fgd,
    ];

    pub fn name(self) -> &'static str {
        match self {
            PolicyKind::Random => "random",
            PolicyKind::BestFit => "best-fit",
            PolicyKind::DotProduct => "dot-product",
            PolicyKind::GpuPacking => "gpu-packing",
            PolicyKind::GpuClustering => "gpu-clustering",
            PolicyKind::Fgd => "fgd",
        }
    }
}

impl fmt::Display for PolicyKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Why a policy cannot be built.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PolicyError {
    #[error(
        "unknown policy {name:?}; known: random, best-fit, dot-product, gpu-packing, gpu-clustering, fgd"
    )]
    Unknown { name: String },
    #[error("policy fgd needs the expected workload mix")]
    MissingMix,
}

impl FromStr for PolicyKind {
    type Err = PolicyError;

    /// Our names, and the paper simulator's (`BestFit`, `DotProd`, `GpuPacking`, `FGD`, ...).
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let folded: String = s
            .chars()
            .filter(|c| !matches!(c, '-' | '_' | ' '))
            .collect::<String>()
            .to_ascii_lowercase();
        Ok(match folded.as_str() {
            "random" => PolicyKind::Random,
            "bestfit" => PolicyKind::BestFit,
            "dotproduct" | "dotprod" => PolicyKind::DotProduct,
            "gpupacking" | "packing" => PolicyKind::GpuPacking,
            "gpuclustering" | "clustering" => PolicyKind::GpuClustering,
            "fgd" | "frag" => PolicyKind::Fgd,
            _ => {
                return Err(PolicyError::Unknown {
                    name: s.to_string(),
                });
            }
        })
    }
}

/// How a policy chooses among feasible nodes with equal top points.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub enum TieBreak {
    /// The node whose name sorts first, as the FGD paper's simulator does (its kube-scheduler
    /// fork replaces the random draw "for reproducibility"); this is what reproduces the
    /// paper's numbers.
    #[default]
    NodeName,
    /// A uniform draw from the caller's RNG, as upstream kube-scheduler does.
    Random,
}

/// A policy ready to place: its kind, how it breaks ties and, for FGD, the expected mix.
#[derive(Debug, Clone)]
pub struct Policy {
    kind: PolicyKind,
    mix: Option<Arc<WorkloadMix>>,
    tie_break: TieBreak,
    /// FGD points per request shape and node state. Node versions are unique in the
    /// process, so entries never go stale: a changed node has a new version.
    fgd_cache: Arc<Mutex<FgdCache>>,
}

impl Policy {
    /// A policy that needs no workload mix; FGD is refused here (use [`Policy::fgd`]).
    pub fn new(kind: PolicyKind) -> Result<Policy, PolicyError> {
        if kind == PolicyKind::Fgd {
            return Err(PolicyError::MissingMix);
        }
        Ok(Policy {
            kind,
            mix: None,
            tie_break: TieBreak::default(),
            fgd_cache: Arc::default(),
        })
    }

    /// FGD with the workload mix it expects.
    pub fn fgd(mix: impl Into<Arc<WorkloadMix>>) -> Policy {
        Policy {
            kind: PolicyKind::Fgd,
            mix: Some(mix.into()),
            tie_break: TieBreak::default(),
            fgd_cache: Arc::default(),
        }
    }

    /// A policy by name; `mix` is required for `fgd` and ignored by the others.
    pub fn from_name(name: &str, mix: Option<Arc<WorkloadMix>>) -> Result<Policy, PolicyError> {
        let kind: PolicyKind = name.parse()?;
        match (kind, mix) {
            (PolicyKind::Fgd, None) => Err(PolicyError::MissingMix),
            (kind, mix) => Ok(Policy {
                kind,
                mix,
                tie_break: TieBreak::default(),
                fgd_cache: Arc::default(),
            }),
        }
    }

    /// The same policy breaking ties `tie_break`'s way.
    pub fn with_tie_break(mut self, tie_break: TieBreak) -> Policy {
        self.tie_break = tie_break;
        self
    }

    pub fn tie_break(&self) -> TieBreak {
        self.tie_break
    }

    pub fn kind(&self) -> PolicyKind {
        self.kind
    }

    pub fn mix(&self) -> Option<&WorkloadMix> {
        self.mix.as_deref()
    }
}

/// A feasible node's score. The field order is the policy: the policy's points, then the
/// better-linked GPU set, then the tie-break (the inverted name rank, or a seeded random
/// draw; see [`TieBreak`]), then the node id so every run breaks ties the same way.
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
    /// Pass to [`Cluster::allocate`].
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

/// A stateless 64-bit mixer (SplitMix64's finalizer): a uniform tie-break draw per node from
/// one RNG draw per placement.
fn mix64(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// Free compute per GPU (milli) into `buf`; returns how many GPUs and their sum.
fn lefts(node: &Node, buf: &mut [u32; MAX_GPUS]) -> (usize, u32) {
    let mut total = 0;
    for (i, g) in node.gpus().iter().enumerate() {
        buf[i] = g.milli_left();
        total += buf[i];
    }
    (node.gpus().len(), total)
}

/// A key for the request's shape: what FGD's points depend on.
fn shape_key(request: &Request) -> u64 {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    (request.cpu_milli(), request.gpu(), request.models()).hash(&mut h);
    h.finish()
}

/// The CPU the paper's simulator scores with: Kubernetes counts a zero request as 100m.
fn score_cpu(cpu: u64) -> f64 {
    if cpu == 0 { 100.0 } else { cpu as f64 }
}

struct Scorer<'a> {
    kind: PolicyKind,
    ctx: Ctx<'a>,
    mix: Option<ResolvedMix>,
    positions: Vec<u32>,
    /// FGD points of earlier placements.
    cache: Option<MutexGuard<'a, FgdCache>>,
    shape_key: u64,
    /// This request shape's slots, taken out of `cache` for the scan: (node version, points)
    /// per node; empty when not caching.
    slots: Vec<(u64, i64)>,
}

/// The inputs FGD needs about one node, from either the compact or the full node view.
struct FgdView<'v> {
    cpu_left: u64,
    lefts: &'v [u32],
    model: Option<ModelId>,
    /// Bit `i`: a share of this request fits GPU `i`.
    share_ok: u64,
    /// GPUs a whole-GPU request would take.
    whole: &'v [u32],
    /// MIG instances a MIG request would take.
    mig: &'v [GpuGrant],
}

/// FGD points by request shape: for each shape, a (node version, points) slot per node, so
/// that a scan reads one dense array and a shape never evicts another's points.
#[derive(Debug, Default)]
struct FgdCache {
    by_shape: HashMap<u64, Vec<(u64, i64)>>,
}

/// Request shapes remembered before the cache starts over.
const FGD_CACHE_SHAPES: usize = 256;

impl Scorer<'_> {
    /// The policy's points and the link rank of the GPUs it would use on node `index`.
    fn points(&mut self, index: usize, node: &Node, hot: &Hot, fast: bool) -> (i64, u32) {
        let mut buf = [0u32; MAX_GPUS];
        let (n, total, cpu_left) = if fast {
            let n = usize::from(hot.gpus);
            for (b, l) in buf.iter_mut().zip(&hot.lefts[..n]) {
                *b = u32::from(*l);
            }
            (n, hot.total_left, hot.cpu_left)
        } else {
            let (n, total) = lefts(node, &mut buf);
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
                // Version 0 is never handed out, so an empty slot never matches.
                if let Some(&(version, points)) = self.slots.get(index)
                    && version == hot.version
                {
                    return (points, link);
                }
                let points = self.fgd(node, hot, fast, &buf[..n]).0;
                if let Some(slot) = self.slots.get_mut(index) {
                    *slot = (hot.version, points);
                }
                points
            }
        };
        (points, link)
    }

    /// FGD's evaluation of `node`: points, the share GPU, fragmentation before and after.
    fn fgd(
        &mut self,
        node: &Node,
        hot: &Hot,
        fast: bool,
        lefts: &[u32],
    ) -> (i64, Option<usize>, f64, f64) {
        let ctx = &self.ctx;
        let mix = self.mix.as_ref().expect("fgd scorers carry a mix");
        let mut share_ok = 0u64;
        let mut mig = Vec::new();
        self.positions.clear();
        if fast {
            if let GpuDemand::Shared { milli, memory_mib } = ctx.req.gpu() {
                for (i, left) in lefts.iter().enumerate() {
                    if hot.share_mask & (1 << i) != 0
                        && *left >= *milli
                        && u64::from(hot.gpu_memory_left[i]) >= *memory_mib
                    {
                        share_ok |= 1 << i;
                    }
                }
            }
            if let GpuDemand::Exclusive { count } = ctx.req.gpu() {
                let mut mask = hot.free_mask;
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
            cpu_left: if fast { hot.cpu_left } else { node.cpu_left() },
            lefts,
            model: node.gpus().first().map(|g| g.model),
            share_ok,
            whole: &self.positions,
            mig: &mig,
        };
        fgd_eval(ctx, mix, &view)
    }
}

/// Best fit: the fuller the node after placing, the more points.
fn best_fit_points(ctx: &Ctx<'_>, cpu_left: u64, total: u32) -> i64 {
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
fn dot_product_points(ctx: &Ctx<'_>, cpu_left: u64, total: u32) -> i64 {
    dot_product_value(ctx, cpu_left, total) as i64
}

/// [`dot_product_points`] before truncation.
#[inline(always)]
fn dot_product_value(ctx: &Ctx<'_>, cpu_left: u64, total: u32) -> f64 {
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
fn packing_points(ctx: &Ctx<'_>, lefts: &[u32]) -> i64 {
    if ctx.milli_each == 0 {
        return 0;
    }
    let gpus = lefts.len();
    let fully_free = lefts.iter().filter(|l| **l == MILLI_PER_GPU).count();
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
        let Some(left) = lefts.iter().copied().filter(|l| *l >= ctx.milli_each).min() else {
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
    order[..gpus].sort_by_key(|&i| lefts[i]);
    let mut wanted = ctx.count;
    let mut fresh = 0i64;
    let mut ratio_on_used = 0i64;
    for &i in &order[..gpus] {
        if wanted == 0 {
            break;
        }
        if lefts[i] >= ctx.milli_each {
            wanted -= 1;
            if lefts[i] == MILLI_PER_GPU {
                fresh += 1;
            }
            ratio_on_used += i64::from(lefts[i]) * 100 / i64::from(MILLI_PER_GPU);
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
fn clustering_points(ctx: &Ctx<'_>, node: &Node, total_left: u32) -> i64 {
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

/// FGD: the points of the best move, with the share GPU it uses (if a share) and the
/// fragmentation before and after.
fn fgd_eval(ctx: &Ctx<'_>, mix: &ResolvedMix, v: &FgdView<'_>) -> (i64, Option<usize>, f64, f64) {
    let before = mix.frag(v.cpu_left, v.lefts, v.model);
    // The reference subtracts the pod's CPU as Kubernetes scores it (a zero request counts
    // 100m), for the share case and in `NodeResource.Sub` alike.
    let pod_cpu = score_cpu(ctx.cpu) as u64;
    let cpu_after = v.cpu_left.saturating_sub(pod_cpu);
    let mut after_lefts = [0u32; MAX_GPUS];
    let after_lefts = &mut after_lefts[..v.lefts.len()];
    after_lefts.copy_from_slice(v.lefts);
    if let GpuDemand::Shared { milli, .. } = ctx.req.gpu() {
        let mut best: Option<(i64, usize, f64)> = None;
        let mut tried = [u32::MAX; MAX_GPUS];
        let mut n_tried = 0;
        let mut mask = v.share_ok;
        while mask != 0 {
            let i = mask.trailing_zeros() as usize;
            mask &= mask - 1;
            // Equal free compute gives an equal result; the lower index already won.
            if tried[..n_tried].contains(&v.lefts[i]) {
                continue;
            }
            tried[n_tried] = v.lefts[i];
            n_tried += 1;
            after_lefts[i] = v.lefts[i] - milli;
            let after = mix.frag(cpu_after, after_lefts, v.model);
            after_lefts[i] = v.lefts[i];
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
        after_lefts[p as usize] = 0;
    }
    for g in v.mig {
        let l = &mut after_lefts[g.gpu as usize];
        *l = l.saturating_sub(g.milli);
    }
    let after = mix.frag(cpu_after, after_lefts, v.model);
    (fgd_points(before, after), None, before, after)
}

/// The running winner of a scan, with the feasible nodes seen and how many share its points.
#[derive(Debug, Default)]
struct Best {
    best: Option<Score>,
    feasible: u32,
    tied: u32,
}

impl Best {
    /// Considers one feasible node's score.
    fn offer(&mut self, score: Score) {
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
fn tie_of(policy: &Policy, ranks: &[u32], nonce: u64, i: usize) -> u64 {
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
fn scan_full(
    scorer: &mut Scorer<'_>,
    cluster: &Cluster,
    policy: &Policy,
    nonce: u64,
    reasons: &mut [u32; 10],
) -> Best {
    let hot = cluster.hot();
    let ranks = cluster.name_ranks();
    let open = scorer.ctx.req.allowed().is_empty();
    let mut best = Best::default();
    for (i, node) in cluster.nodes().iter().enumerate() {
        let h = &hot[i];
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

/// What a request needs from a node, as the lean scan checks it.
#[derive(Debug, Clone, Copy)]
enum LeanNeed {
    Cpu,
    Whole(u8),
    Share(u16),
}

/// The lean scan applies to policies whose points depend only on CPU and GPU compute left,
/// and to requests open to every place that need no GPU memory and no MIG.
fn lean_need(kind: PolicyKind, request: &Request) -> Option<LeanNeed> {
    if !matches!(
        kind,
        PolicyKind::Random | PolicyKind::BestFit | PolicyKind::DotProduct | PolicyKind::GpuPacking
    ) || !request.allowed().is_empty()
    {
        return None;
    }
    match request.gpu() {
        GpuDemand::None => Some(LeanNeed::Cpu),
        GpuDemand::Exclusive { count } => u8::try_from(*count).ok().map(LeanNeed::Whole),
        GpuDemand::Shared {
            milli,
            memory_mib: 0,
        } => u16::try_from(*milli).ok().map(LeanNeed::Share),
        _ => None,
    }
}

/// Nodes the lean scan scores at once: the block's points fit on the stack (2 KiB).
const LEAN_BLOCK: usize = 512;

/// The same choice as [`scan_full`], without reasons: simple nodes through the lean
/// arrays (`cluster::Lean`), the others through the full filter and scorer.
fn scan_lean(
    scorer: &mut Scorer<'_>,
    cluster: &Cluster,
    policy: &Policy,
    nonce: u64,
    need: LeanNeed,
) -> Best {
    let lean = cluster.lean();
    let ctx = &scorer.ctx;
    let wanted = i32::try_from(ctx.count).unwrap_or(i32::MAX);
    let milli = u16::try_from(ctx.milli_each).unwrap_or(u16::MAX);
    let full_points = MILLI_PER_GPU as u16;
    let simple = match policy.kind {
        PolicyKind::BestFit => lean_best_fit(cluster, policy, ctx, nonce, need),
        PolicyKind::DotProduct => {
            lean_blocks(cluster, policy, ctx, nonce, need, &DotProductLean(ctx))
        }
        PolicyKind::GpuPacking if milli == 0 => {
            lean_blocks(cluster, policy, ctx, nonce, need, &ZeroLean)
        }
        PolicyKind::GpuPacking if milli == full_points => {
            lean_blocks(cluster, policy, ctx, nonce, need, &PackWholeLean(wanted))
        }
        PolicyKind::GpuPacking => {
            lean_blocks(cluster, policy, ctx, nonce, need, &PackShareLean(milli))
        }
        _ => lean_blocks(cluster, policy, ctx, nonce, need, &ZeroLean),
    };
    // Nodes off the lean path, as the full scan treats them.
    let mut best = Best::default();
    if lean.not_simple > 0 {
        let (hot, nodes, ranks) = (cluster.hot(), cluster.nodes(), cluster.name_ranks());
        for (i, node) in nodes.iter().enumerate() {
            if lean.simple[i] || filter(&scorer.ctx, node).is_err() {
                continue;
            }
            best.feasible += 1;
            let (points, link) = scorer.points(i, node, &hot[i], false);
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

/// A policy's points for one node of a lean block (garbage where the request does not fit:
/// the caller masks those).
trait LeanPoints {
    fn points(&self, b: &LeanBlock<'_>, j: usize) -> i32;
}

/// Points in `i32` equal the full scan's `i64` points: every policy's points stay within
/// ±40 million for the node and request sizes the engine accepts.
struct DotProductLean<'c, 'r>(&'c Ctx<'r>);

impl LeanPoints for DotProductLean<'_, '_> {
    #[inline(always)]
    fn points(&self, b: &LeanBlock<'_>, j: usize) -> i32 {
        dot_product_value(self.0, u64::from(b.cpu_left[j]), u32::from(b.total_left[j])) as i32
    }
}

/// Equal points everywhere: random, and gpu-packing for CPU-only work.
struct ZeroLean;

impl LeanPoints for ZeroLean {
    #[inline(always)]
    fn points(&self, _: &LeanBlock<'_>, _: usize) -> i32 {
        0
    }
}

/// [`packing_points`] for whole GPUs (this many).
struct PackWholeLean(i32);

impl LeanPoints for PackWholeLean {
    #[inline(always)]
    fn points(&self, b: &LeanBlock<'_>, j: usize) -> i32 {
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

/// [`packing_points`] for one share of this much compute.
struct PackShareLean(u16);

impl LeanPoints for PackShareLean {
    #[inline(always)]
    fn points(&self, b: &LeanBlock<'_>, j: usize) -> i32 {
        let max = MAX_POINTS as i32;
        let full = i32::from(b.full[j]);
        let all_fresh = (max / 3 - full).max(full);
        // The tightest GPU the share fits.
        let mut tightest = u16::MAX;
        for column in &b.lefts {
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
fn lean_best_fit(
    cluster: &Cluster,
    policy: &Policy,
    ctx: &Ctx<'_>,
    nonce: u64,
    need: LeanNeed,
) -> Best {
    let lean = cluster.lean();
    let ranks = cluster.name_ranks();
    let n = lean.simple.len();
    let filter = lean_filter(ctx, need);
    let models: Option<Vec<u16>> = ctx
        .models
        .as_ref()
        .map(|m| m.iter().map(|id| id.0).collect());
    let mut keys = vec![i32::MAX; n];
    let mut feasible = 0u32;
    let mut min_key = i32::MAX;
    for (start, keys) in (0..n).step_by(LEAN_BLOCK).zip(keys.chunks_mut(LEAN_BLOCK)) {
        let b = LeanBlock::new(lean, start, keys.len());
        let (block_feasible, block_min) = match &models {
            None => lean_block_keys(&b, keys, |_| true, &filter),
            Some(m) => lean_block_keys(&b, keys, |model| m.contains(&model), &filter),
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
            u64::from(lean.cpu_left[i]),
            u32::from(lean.total_left[i]),
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
fn lean_block_keys(
    b: &LeanBlock<'_>,
    keys: &mut [i32],
    model_ok: impl Fn(u16) -> bool,
    f: &LeanFilter,
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

/// The lean filter for `need`.
fn lean_filter(ctx: &Ctx<'_>, need: LeanNeed) -> LeanFilter {
    // Requests are at most 10,000 cores and 2^30 MiB, so both fit; nodes saturate.
    let cpu = u32::try_from(ctx.cpu).unwrap_or(u32::MAX);
    let mem = u32::try_from(ctx.mem).unwrap_or(u32::MAX);
    match need {
        LeanNeed::Cpu => need_of(false, cpu, mem, 0, 0),
        LeanNeed::Whole(count) => need_of(true, cpu, mem, count, 0),
        LeanNeed::Share(milli) => need_of(true, cpu, mem, 0, milli),
    }
}

/// What a simple node must have for the request.
#[derive(Debug, Clone, Copy)]
struct LeanFilter {
    wants_gpu: bool,
    cpu: u32,
    mem: u32,
    whole: u8,
    share: u16,
}

fn need_of(wants_gpu: bool, cpu: u32, mem: u32, whole: u8, share: u16) -> LeanFilter {
    LeanFilter {
        wants_gpu,
        cpu,
        mem,
        whole,
        share,
    }
}

/// Points of each node of a block (`i32::MIN` where the request does not fit), with how many
/// fit and the block's best.
#[inline(always)]
fn lean_block_points(
    b: &LeanBlock<'_>,
    points: &mut [i32],
    points_of: &impl LeanPoints,
    model_ok: impl Fn(u16) -> bool,
    f: &LeanFilter,
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

/// One block of the lean arrays, each cut to the block's length so that indexing within the
/// block needs no bounds checks.
struct LeanBlock<'a> {
    simple: &'a [bool],
    cpu_left: &'a [u32],
    memory_left: &'a [u32],
    model: &'a [u16],
    gpus: &'a [u8],
    total_left: &'a [u16],
    max_left: &'a [u16],
    free: &'a [u8],
    full: &'a [u8],
    lefts: [&'a [u16]; crate::cluster::HOT_GPUS],
}

impl<'a> LeanBlock<'a> {
    fn new(lean: &'a crate::cluster::Lean, start: usize, len: usize) -> LeanBlock<'a> {
        let r = start..start + len;
        LeanBlock {
            simple: &lean.simple[r.clone()],
            cpu_left: &lean.cpu_left[r.clone()],
            memory_left: &lean.memory_left[r.clone()],
            model: &lean.model[r.clone()],
            gpus: &lean.gpus[r.clone()],
            total_left: &lean.total_left[r.clone()],
            max_left: &lean.max_left[r.clone()],
            free: &lean.free[r.clone()],
            full: &lean.full[r.clone()],
            lefts: std::array::from_fn(|g| &lean.lefts[g][r.clone()]),
        }
    }
}

/// The best simple node by `points_of(block, position)`: feasibility and points for a block of nodes
/// at a time without branches, then the block's best and its ties.
#[inline(always)]
fn lean_blocks(
    cluster: &Cluster,
    policy: &Policy,
    ctx: &Ctx<'_>,
    nonce: u64,
    need: LeanNeed,
    points_of: &impl LeanPoints,
) -> Best {
    let lean = cluster.lean();
    let ranks = cluster.name_ranks();
    let n = lean.simple.len();
    // Requests are at most 10,000 cores and 2^30 MiB, so both fit; nodes saturate.
    let cpu = u32::try_from(ctx.cpu).unwrap_or(u32::MAX);
    let mem = u32::try_from(ctx.mem).unwrap_or(u32::MAX);
    let (wants_gpu, whole, share) = match need {
        LeanNeed::Cpu => (false, 0u8, 0u16),
        LeanNeed::Whole(count) => (true, count, 0),
        LeanNeed::Share(milli) => (true, 0, milli),
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
    let mut points = [i32::MIN; LEAN_BLOCK];
    for start in (0..n).step_by(LEAN_BLOCK) {
        let len = LEAN_BLOCK.min(n - start);
        let b = LeanBlock::new(lean, start, len);
        let (block_feasible, block_max) = match &models {
            None => lean_block_points(
                &b,
                &mut points[..len],
                points_of,
                |_| true,
                &need_of(wants_gpu, cpu, mem, whole, share),
            ),
            Some(m) => lean_block_points(
                &b,
                &mut points[..len],
                points_of,
                |model| m.contains(&model),
                &need_of(wants_gpu, cpu, mem, whole, share),
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

/// The first reason a simple node (see [`Hot`]) cannot take the request.
fn fast_filter(ctx: &Ctx<'_>, h: &Hot) -> Result<(), Reason> {
    let demand = ctx.req.gpu();
    if !matches!(demand, GpuDemand::None) {
        if h.gpus == 0 {
            return Err(Reason::NoGpus);
        }
        if let Some(models) = &ctx.models
            && !models.contains(&ModelId(h.model))
        {
            return Err(Reason::ModelNotAllowed);
        }
    }
    if h.cpu_left < ctx.cpu {
        return Err(Reason::NotEnoughCpu);
    }
    if h.memory_left < ctx.mem {
        return Err(Reason::NotEnoughMemory);
    }
    match demand {
        GpuDemand::None => Ok(()),
        GpuDemand::Exclusive { count } => {
            if h.free_mask.count_ones() < *count {
                Err(Reason::FewerFreeGpus)
            } else {
                Ok(())
            }
        }
        GpuDemand::Shared { milli, memory_mib } => {
            let fits = (0..usize::from(h.gpus)).any(|i| {
                h.share_mask & (1 << i) != 0
                    && u32::from(h.lefts[i]) >= *milli
                    && u64::from(h.gpu_memory_left[i]) >= *memory_mib
            });
            if fits {
                Ok(())
            } else {
                Err(Reason::NoShareRoom)
            }
        }
        GpuDemand::Mig { .. } => Err(Reason::NoMigProfile),
    }
}

/// Places one request: filters every node, scores the feasible ones with `policy`, breaks
/// ties with one draw from `rng`, and picks the GPUs on the winner. Returns per-reason node
/// counts when no node can take the request. Nothing is allocated: pass
/// [`Placement::claim`] to [`Cluster::allocate`].
pub fn place<R: RngCore + ?Sized>(
    cluster: &Cluster,
    request: &Request,
    policy: &Policy,
    rng: &mut R,
) -> Result<Placement, Unplaceable> {
    place_by(cluster, request, policy, rng, true)
}

/// How each of `nodes` could take `request` under `policy`: its policy points (higher is
/// better), or the first reason it cannot. For callers that pick among nodes chosen
/// elsewhere, such as the Kubernetes extender, whose nodes kube-scheduler has already
/// filtered. Ids outside the cluster are reported as `OutsideAllowed`.
pub fn evaluate(
    cluster: &Cluster,
    request: &Request,
    policy: &Policy,
    nodes: &[NodeId],
) -> Vec<Result<i64, Reason>> {
    let mut scorer = Scorer {
        kind: policy.kind,
        ctx: Ctx::new(cluster, request),
        mix: policy.mix.as_ref().map(|m| m.resolve(cluster)),
        positions: Vec::with_capacity(MAX_GPUS),
        cache: None,
        shape_key: 0,
        slots: Vec::new(),
    };
    let hot = cluster.hot();
    nodes
        .iter()
        .map(|id| {
            let i = id.index();
            let (Some(node), Some(h)) = (cluster.nodes().get(i), hot.get(i)) else {
                return Err(Reason::OutsideAllowed);
            };
            filter(&scorer.ctx, node)?;
            Ok(scorer.points(i, node, h, false).0)
        })
        .collect()
}

/// [`place`], with the lean scan allowed or not: both scans must pick the same placement.
fn place_by<R: RngCore + ?Sized>(
    cluster: &Cluster,
    request: &Request,
    policy: &Policy,
    rng: &mut R,
    lean_allowed: bool,
) -> Result<Placement, Unplaceable> {
    let cache = (policy.kind == PolicyKind::Fgd).then(|| {
        policy
            .fgd_cache
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    });
    let key = shape_key(request);
    let mut cache = cache;
    let mut slots = cache
        .as_mut()
        .and_then(|c| c.by_shape.remove(&key))
        .unwrap_or_default();
    if cache.is_some() {
        slots.resize(cluster.len(), (0, 0));
    }
    let mut scorer = Scorer {
        kind: policy.kind,
        ctx: Ctx::new(cluster, request),
        mix: policy.mix.as_ref().map(|m| m.resolve(cluster)),
        positions: Vec::with_capacity(MAX_GPUS),
        cache,
        shape_key: key,
        slots,
    };
    let hot = cluster.hot();
    let nonce = rng.next_u64();
    let mut best = match lean_need(policy.kind, request) {
        Some(need) if lean_allowed => scan_lean(&mut scorer, cluster, policy, nonce, need),
        _ => Best::default(),
    };
    let mut reasons = [0u32; 10];
    if best.best.is_none() {
        // Nothing fits (the lean scan keeps no reasons), or the lean scan does not apply.
        best = scan_full(&mut scorer, cluster, policy, nonce, &mut reasons);
    }
    if let Some(cache) = scorer.cache.as_mut() {
        if cache.by_shape.len() >= FGD_CACHE_SHAPES {
            cache.by_shape.clear();
        }
        cache
            .by_shape
            .insert(scorer.shape_key, std::mem::take(&mut scorer.slots));
    }
    let Best {
        best,
        feasible,
        tied,
    } = best;
    let Some(score) = best else {
        return Err(Unplaceable::new(cluster.len() as u32, &reasons, request));
    };
    let node = &cluster.nodes()[score.node.0.index()];
    let (gpus, terms) = choose_gpus(&mut scorer, node, &hot[score.node.0.index()], rng);
    Ok(Placement {
        claim: Claim {
            node: score.node.0,
            cpu_milli: request.cpu_milli(),
            memory_mib: request.memory_mib(),
            gpus,
            affinity: request.affinity(),
        },
        node_name: node.name().to_string(),
        score,
        breakdown: ScoreBreakdown {
            policy: policy.kind,
            points: score.points,
            link_rank: score.link.0,
            feasible_nodes: feasible,
            tied_nodes: tied,
            terms,
        },
    })
}

/// The GPUs on the chosen node, by the policy's rule, and the terms of its score.
fn choose_gpus<R: RngCore + ?Sized>(
    scorer: &mut Scorer<'_>,
    node: &Node,
    hot: &Hot,
    rng: &mut R,
) -> (Vec<GpuGrant>, Vec<(&'static str, f64)>) {
    let mut buf = [0u32; MAX_GPUS];
    let (n, total) = lefts(node, &mut buf);
    let mut terms = vec![
        ("cpu_left", node.cpu_left() as f64),
        ("gpu_milli_left", f64::from(total)),
    ];
    let mut fgd_share = None;
    if scorer.mix.is_some() {
        let (_, share, before, after) = scorer.fgd(node, hot, false, &buf[..n]);
        fgd_share = share;
        terms.push(("frag_before", before));
        terms.push(("frag_after", after));
    }
    let ctx = &scorer.ctx;
    let grants = match ctx.req.gpu() {
        GpuDemand::None => Vec::new(),
        GpuDemand::Exclusive { count } => {
            choose_whole(ctx, node, *count as usize, &mut scorer.positions);
            whole_grants(node, &scorer.positions)
        }
        GpuDemand::Shared { milli, memory_mib } => {
            let gpu = match scorer.kind {
                PolicyKind::Random => {
                    let fits = share_candidates(ctx, node, *milli, *memory_mib).count();
                    let pick = rng.random_range(0..fits.max(1));
                    share_candidates(ctx, node, *milli, *memory_mib).nth(pick)
                }
                PolicyKind::Fgd => fgd_share,
                _ => tightest_share(ctx, node, *milli, *memory_mib),
            };
            gpu.map(|g| GpuGrant {
                gpu: g as u32,
                milli: *milli,
                memory_mib: *memory_mib,
                exclusive: false,
                mig: None,
            })
            .into_iter()
            .collect()
        }
        GpuDemand::Mig { profile, count } => {
            plan_mig(ctx, node, profile, *count).unwrap_or_default()
        }
    };
    if !grants.is_empty() {
        terms.push(("gpus_granted", grants.len() as f64));
    }
    (grants, terms)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_parse_both_ways() {
        for kind in PolicyKind::ALL {
            assert_eq!(kind.name().parse::<PolicyKind>().expect("own name"), kind);
        }
        assert_eq!(
            "DotProd".parse::<PolicyKind>().expect("paper name"),
            PolicyKind::DotProduct
        );
        assert_eq!(
            "FGD".parse::<PolicyKind>().expect("paper name"),
            PolicyKind::Fgd
        );
        assert!(matches!(
            "worst-fit".parse::<PolicyKind>(),
            Err(PolicyError::Unknown { .. })
        ));
        assert_eq!(
            Policy::new(PolicyKind::Fgd).expect_err("needs mix"),
            PolicyError::MissingMix
        );
        assert_eq!(
            Policy::from_name("fgd", None).expect_err("needs mix"),
            PolicyError::MissingMix
        );
    }

    #[test]
    fn mixer_spreads_bits() {
        assert_ne!(mix64(1), mix64(2));
    }
}

/// The lean scan must choose exactly what the full scan chooses.
#[cfg(test)]
mod lean_matches_full {
    use super::*;
    use crate::cluster::NodeShape;
    use crate::inventory::Health;
    use proptest::prelude::*;
    use rand::SeedableRng;
    use rand_chacha::ChaCha8Rng;

    /// GPUs (9 or more leave the lean path), model, cores, cordoned, a sick GPU, MIG on GPU 0.
    type NodeSpec = (u32, usize, u64, bool, bool, bool);
    /// Kind (CPU / share / share with GPU memory / whole), CPU, GPUs, milli, one model only,
    /// allocate it.
    type RequestSpec = (u8, u64, u32, u32, bool, bool);

    fn request(spec: &RequestSpec, models: &[GpuModel]) -> Request {
        let (kind, cpu, count, milli, pinned, _) = *spec;
        let gpu = match kind {
            0 => GpuDemand::None,
            1 => GpuDemand::Shared {
                milli,
                memory_mib: 0,
            },
            2 => GpuDemand::Shared {
                milli,
                memory_mib: 4096,
            },
            _ => GpuDemand::Exclusive { count },
        };
        let r = Request::new(cpu, 1024, gpu).expect("valid sizes");
        if pinned {
            r.with_models(vec![models[count as usize % models.len()].clone()])
        } else {
            r
        }
    }

    use crate::gpu::GpuModel;

    fn run(nodes: &[NodeSpec], requests: &[RequestSpec], kind: usize, random_ties: bool) {
        let models: Vec<GpuModel> = ["V100M32", "T4"]
            .iter()
            .map(|m| m.parse().expect("valid model"))
            .collect();
        let shapes: Vec<NodeShape> = nodes
            .iter()
            .enumerate()
            .map(|(i, (gpus, model, cores, ..))| NodeShape {
                name: format!("n{i}"),
                cpu_milli: cores * 1000,
                memory_mib: 65_536,
                gpus: *gpus,
                model: (*gpus > 0).then(|| models[*model].clone()),
                gpu_memory_mib: 16_384,
            })
            .collect();
        let mut cluster = Cluster::from_shapes(&shapes).expect("valid shapes");
        for (i, (gpus, _, _, cordoned, sick, mig)) in nodes.iter().enumerate() {
            let id = NodeId(i as u32);
            cluster.set_cordoned(id, *cordoned).expect("known node");
            if *sick && *gpus > 1 {
                cluster
                    .set_gpu_health(id, 1, Health::Unhealthy)
                    .expect("known GPU");
            }
            if *mig && *gpus > 0 {
                cluster.enable_mig(id, 0).expect("idle GPU");
            }
        }
        let reqs: Vec<Request> = requests.iter().map(|r| request(r, &models)).collect();
        let kind = PolicyKind::ALL[kind];
        let mix = Arc::new(WorkloadMix::typical(&reqs, 100.0).expect("non-empty"));
        let tie = if random_ties {
            TieBreak::Random
        } else {
            TieBreak::NodeName
        };
        let policy = Policy::from_name(kind.name(), Some(mix))
            .expect("known policy")
            .with_tie_break(tie);
        let mut rng = ChaCha8Rng::seed_from_u64(7);
        for (spec, r) in requests.iter().zip(&reqs) {
            let mut reference_rng = rng.clone();
            let lean = place_by(&cluster, r, &policy, &mut rng, true);
            let full = place_by(&cluster, r, &policy, &mut reference_rng, false);
            assert_eq!(lean, full, "{kind} placing {r}");
            if let (Ok(p), true) = (lean, spec.5) {
                cluster.allocate(&p.claim).expect("a fresh placement fits");
            }
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(200))]
        #[test]
        fn same_node_and_gpus(
            nodes in prop::collection::vec(
                (
                    prop_oneof![Just(0u32), 1u32..=8, Just(10u32)],
                    0usize..2,
                    1u64..=32,
                    prop::bool::weighted(0.1),
                    prop::bool::weighted(0.1),
                    prop::bool::weighted(0.05),
                ),
                1..24,
            ),
            requests in prop::collection::vec(
                (0u8..4, 0u64..=12_000, 1u32..=4, 1u32..=1000, prop::bool::weighted(0.2), prop::bool::weighted(0.8)),
                1..60,
            ),
            kind in 0usize..6,
            random_ties in any::<bool>(),
        ) {
            run(&nodes, &requests, kind, random_ties);
        }
    }
}
