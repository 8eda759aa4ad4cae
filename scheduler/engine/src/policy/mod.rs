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
    /// FGD points per node state and request shape. Node versions are unique in the
    /// process, so entries never go stale: a changed node has a new version.
    fgd_cache: Arc<Mutex<Vec<FgdEntry>>>,
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
    /// FGD points of earlier placements, per node version and request shape.
    cache: Option<MutexGuard<'a, Vec<FgdEntry>>>,
    shape_key: u64,
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

/// Cached FGD points for one node state.
#[derive(Debug, Clone, Default)]
struct FgdEntry {
    version: u64,
    points: Vec<(u64, i64)>,
}

/// Request shapes remembered per node state before the entry starts over.
const FGD_CACHE_SHAPES: usize = 32;

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
        let gpu_req = (u64::from(ctx.milli_each) * u64::from(ctx.count)) as f64;
        let points = match self.kind {
            PolicyKind::Random => 0,
            PolicyKind::BestFit => {
                let mut s = 0.0;
                s += (cpu_left as f64 - score_cpu(ctx.cpu)) / MAX_SPEC_CPU * 0.5;
                s += (f64::from(total) - gpu_req) / MAX_SPEC_GPU * 0.5;
                ((1.0 - s) * MAX_POINTS as f64) as i64
            }
            PolicyKind::DotProduct => {
                let free = [
                    cpu_left as f64 / MAX_SPEC_CPU,
                    f64::from(total) / MAX_SPEC_GPU,
                ];
                let want = [score_cpu(ctx.cpu) / MAX_SPEC_CPU, gpu_req / MAX_SPEC_GPU];
                let mut dot = 0.0;
                dot += free[0] * want[0];
                dot += free[1] * want[1];
                let s = 1.0 - dot / 2.0;
                (MAX_POINTS as f64 * s) as i64
            }
            PolicyKind::GpuPacking => packing_points(ctx, &buf[..n]),
            PolicyKind::GpuClustering => clustering_points(ctx, node, total),
            PolicyKind::Fgd => {
                let version = node.version();
                let key = self.shape_key;
                if let Some(cache) = self.cache.as_mut() {
                    if cache.len() <= index {
                        cache.resize(index + 1, FgdEntry::default());
                    }
                    let entry = &mut cache[index];
                    if entry.version == version
                        && let Some((_, p)) = entry.points.iter().find(|(k, _)| *k == key)
                    {
                        return (*p, link);
                    }
                }
                let points = self.fgd(node, hot, fast, &buf[..n]).0;
                if let Some(cache) = self.cache.as_mut() {
                    let entry = &mut cache[index];
                    if entry.version != version || entry.points.len() >= FGD_CACHE_SHAPES {
                        entry.version = version;
                        entry.points.clear();
                    }
                    entry.points.push((key, points));
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
    let cpu_after = v.cpu_left.saturating_sub(ctx.cpu);
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
    let cache = (policy.kind == PolicyKind::Fgd).then(|| {
        policy
            .fgd_cache
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    });
    let mut scorer = Scorer {
        kind: policy.kind,
        ctx: Ctx::new(cluster, request),
        mix: policy.mix.as_ref().map(|m| m.resolve(cluster)),
        positions: Vec::with_capacity(MAX_GPUS),
        cache,
        shape_key: shape_key(request),
    };
    let hot = cluster.hot();
    let open = request.allowed().is_empty();
    let nonce = rng.next_u64();
    let mut reasons = [0u32; 10];
    let mut best: Option<Score> = None;
    let mut feasible = 0u32;
    let mut tied = 0u32;
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
        feasible += 1;
        let (points, link) = scorer.points(i, node, h, fast);
        let score = Score {
            points,
            link: Reverse(link),
            // The random policy is a uniform draw over feasible nodes whatever the tie-break.
            tie: match policy.tie_break {
                TieBreak::NodeName if policy.kind != PolicyKind::Random => {
                    u64::from(u32::MAX - cluster.name_rank(NodeId(i as u32)))
                }
                _ => mix64(nonce ^ (i as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15)),
            },
            node: Reverse(NodeId(i as u32)),
        };
        match &best {
            Some(b) if (b.points, b.link) == (points, score.link) => {
                tied += 1;
                if score > *b {
                    best = Some(score);
                }
            }
            Some(b) if (b.points, b.link) > (points, score.link) => {}
            _ => {
                tied = 1;
                best = Some(score);
            }
        }
    }
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
