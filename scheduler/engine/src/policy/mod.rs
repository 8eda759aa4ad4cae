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
//!
//! Files, one idea each: `kind` the policies by name; `placement` what a placement returns;
//! `select` the filters and the GPUs inside one node; `points` and `fgd_points` each policy's
//! points; `scorer` the dispatch to them; `scan` the full scan every policy shares;
//! `column_scan` the same choice read from per-field arrays, for the policies that allow it.
//! This file holds [`Policy`], the caller's [`PlacementScratch`] and the entry points,
//! [`place`], [`place_with`] and [`evaluate`].

mod column_scan;
mod fgd_points;
mod kind;
mod placement;
mod points;
mod scan;
mod scorer;
mod select;

#[cfg(test)]
mod tests;

use std::sync::Arc;

use rand::{Rng, RngCore};

use crate::cluster::{Claim, Cluster, FreeCapacity, GpuGrant, Node, NodeId};
use crate::explain::{Refusal, RefusalCounts, Unplaceable};
use crate::fgd::WorkloadMix;
use crate::request::{GpuDemand, Request};

pub use kind::{PolicyError, PolicyKind};
pub use placement::{Placement, Score, ScoreBreakdown};

use column_scan::{column_demand, scan_columns};
use fgd_points::{FGD_CACHE_SHAPES, FgdCache, shape_key};
use scan::{Best, scan_full};
use scorer::{Scorer, gpu_milli_left};
use select::{
    Ctx, MAX_GPUS, choose_whole, filter, plan_mig, share_candidates, tightest_share, whole_grants,
};

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
/// Immutable: what placements learn between calls lives in the caller's [`PlacementScratch`].
#[derive(Debug, Clone)]
pub struct Policy {
    kind: PolicyKind,
    mix: Option<Arc<WorkloadMix>>,
    tie_break: TieBreak,
}

/// What one caller's placements carry from one call to the next: FGD's points per request
/// shape and node state, so that a scan rescores only the nodes that changed since the last
/// placement of that shape. The caller owns it and passes it to [`place_with`]; a clone is an
/// independent copy.
///
/// Entries are keyed by [`Node::fingerprint`], so they hold for any cluster or clone. They
/// are only valid for the mix they were computed with: the scratch starts over when a
/// placement brings a different one.
#[derive(Debug, Clone, Default)]
pub struct PlacementScratch {
    /// The mix `fgd` was filled with.
    mix: Option<Arc<WorkloadMix>>,
    fgd: FgdCache,
}

impl PlacementScratch {
    /// Forgets FGD points computed with another mix than `mix`.
    fn use_mix(&mut self, mix: Option<&Arc<WorkloadMix>>) {
        let same = match (&self.mix, mix) {
            (Some(held), Some(mix)) => Arc::ptr_eq(held, mix) || held == mix,
            (None, None) => true,
            _ => false,
        };
        if !same {
            self.fgd.by_shape.clear();
            self.mix = mix.cloned();
        }
    }
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
        })
    }

    /// FGD with the workload mix it expects.
    pub fn fgd(mix: impl Into<Arc<WorkloadMix>>) -> Policy {
        Policy {
            kind: PolicyKind::Fgd,
            mix: Some(mix.into()),
            tie_break: TieBreak::default(),
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

/// Places one request: filters every node, scores the feasible ones with `policy`, breaks
/// ties with one draw from `rng`, and picks the GPUs on the winner. Returns per-reason node
/// counts when no node can take the request. Nothing is allocated: pass
/// [`Placement::claim`] to [`Cluster::allocate`].
///
/// Every call starts from empty scratch space; a caller that places again and again should
/// keep a [`PlacementScratch`] and call [`place_with`], which FGD needs to be fast.
pub fn place<R: RngCore + ?Sized>(
    cluster: &Cluster,
    request: &Request,
    policy: &Policy,
    rng: &mut R,
) -> Result<Placement, Unplaceable> {
    place_with(
        cluster,
        request,
        policy,
        &mut PlacementScratch::default(),
        rng,
    )
}

/// [`place`], reusing and updating `scratch`: the same placement, faster when `scratch` has
/// seen earlier placements.
pub fn place_with<R: RngCore + ?Sized>(
    cluster: &Cluster,
    request: &Request,
    policy: &Policy,
    scratch: &mut PlacementScratch,
    rng: &mut R,
) -> Result<Placement, Unplaceable> {
    place_by(cluster, request, policy, scratch, rng, true)
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
) -> Vec<Result<i64, Refusal>> {
    let mut scorer = Scorer {
        kind: policy.kind,
        ctx: Ctx::new(cluster, request),
        mix: policy.mix.as_ref().map(|m| m.resolve(cluster)),
        positions: Vec::with_capacity(MAX_GPUS),
        fgd_slots: Vec::new(),
    };
    let capacity = cluster.free_capacity();
    nodes
        .iter()
        .map(|id| {
            let i = id.index();
            let (Some(node), Some(h)) = (cluster.nodes().get(i), capacity.get(i)) else {
                return Err(Refusal::OutsideAllowed);
            };
            filter(&scorer.ctx, node)?;
            Ok(scorer.points(i, node, h, false).0)
        })
        .collect()
}

/// [`place`], with the column scan allowed or not: both scans must pick the same placement.
fn place_by<R: RngCore + ?Sized>(
    cluster: &Cluster,
    request: &Request,
    policy: &Policy,
    scratch: &mut PlacementScratch,
    rng: &mut R,
    columns_allowed: bool,
) -> Result<Placement, Unplaceable> {
    let caching = policy.kind == PolicyKind::Fgd;
    let key = shape_key(request);
    let mut fgd_slots = Vec::new();
    if caching {
        scratch.use_mix(policy.mix.as_ref());
        fgd_slots = scratch.fgd.by_shape.remove(&key).unwrap_or_default();
        fgd_slots.resize(cluster.len(), (0, 0));
    }
    let mut scorer = Scorer {
        kind: policy.kind,
        ctx: Ctx::new(cluster, request),
        mix: policy.mix.as_ref().map(|m| m.resolve(cluster)),
        positions: Vec::with_capacity(MAX_GPUS),
        fgd_slots,
    };
    let capacity = cluster.free_capacity();
    let nonce = rng.next_u64();
    let mut best = match column_demand(policy.kind, request) {
        Some(need) if columns_allowed => scan_columns(&mut scorer, cluster, policy, nonce, need),
        _ => Best::default(),
    };
    let mut reasons: RefusalCounts = [0; Refusal::ALL.len()];
    if best.best.is_none() {
        // Nothing fits (the column scan keeps no reasons), or the column scan does not apply.
        best = scan_full(&mut scorer, cluster, policy, nonce, &mut reasons);
    }
    if caching {
        let by_shape = &mut scratch.fgd.by_shape;
        if by_shape.len() >= FGD_CACHE_SHAPES {
            by_shape.clear();
        }
        by_shape.insert(key, std::mem::take(&mut scorer.fgd_slots));
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
    let (gpus, terms) = choose_gpus(&mut scorer, node, &capacity[score.node.0.index()], rng);
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
    capacity: &FreeCapacity,
    rng: &mut R,
) -> (Vec<GpuGrant>, Vec<(&'static str, f64)>) {
    let mut buf = [0u32; MAX_GPUS];
    let (n, total) = gpu_milli_left(node, &mut buf);
    let mut terms = vec![
        ("cpu_left", node.cpu_left() as f64),
        ("gpu_milli_left", f64::from(total)),
    ];
    let mut fgd_share = None;
    if scorer.mix.is_some() {
        let (_, share, before, after) = scorer.fgd(node, capacity, false, &buf[..n]);
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
