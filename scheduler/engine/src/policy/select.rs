//! Filters (can this node take the request at all?) and GPU choice inside one node.

use crate::cluster::{GpuGrant, MigGpu, ModelId, Node};
use crate::explain::Refusal;
use crate::gpu::MigProfile;
use crate::job::MILLI_PER_GPU;
use crate::request::{GpuDemand, Request, mig_milli};

/// Most GPUs a node may have; sizes the stack buffers of the hot loop.
pub(crate) const MAX_GPUS: usize = crate::cluster::MAX_GPUS_PER_NODE as usize;

/// Combinations tried when looking for the best-linked GPU set; beyond, first-fit is used.
const MAX_LINK_COMBINATIONS: u64 = 4096;

/// The request, resolved against one cluster for the hot loop.
#[derive(Debug)]
pub(crate) struct Ctx<'a> {
    pub req: &'a Request,
    pub cpu: u64,
    pub mem: u64,
    /// `None`: any model. `Some(ids)`: only these (possibly none of the cluster's).
    pub models: Option<Vec<ModelId>>,
    pub milli_each: u32,
    pub count: u32,
}

impl<'a> Ctx<'a> {
    pub fn new(cluster: &crate::cluster::Cluster, req: &'a Request) -> Ctx<'a> {
        let models = (!req.models().is_empty()).then(|| {
            req.models()
                .iter()
                .filter_map(|m| cluster.model_id(m))
                .collect()
        });
        Ctx {
            req,
            cpu: req.cpu_milli(),
            mem: req.memory_mib(),
            models,
            milli_each: req.gpu_milli_each(),
            count: req.gpu_count(),
        }
    }

    pub fn model_ok(&self, model: ModelId) -> bool {
        self.models.as_ref().is_none_or(|m| m.contains(&model))
    }
}

/// The first reason `node` cannot take the request, if any.
pub(crate) fn filter(ctx: &Ctx<'_>, node: &Node) -> Result<(), Refusal> {
    if node.is_cordoned() {
        return Err(Refusal::Cordoned);
    }
    if !ctx.req.allowed().is_empty() && !node.within(ctx.req.allowed()) {
        return Err(Refusal::OutsideAllowed);
    }
    let demand = ctx.req.gpu();
    if !matches!(demand, GpuDemand::None) {
        if node.gpus().is_empty() {
            return Err(Refusal::NoGpus);
        }
        if let Some(models) = &ctx.models {
            let ok = match node.uniform_model() {
                Some(m) => models.contains(&m),
                None => node.gpus().iter().any(|g| models.contains(&g.model)),
            };
            if !ok {
                return Err(Refusal::ModelNotAllowed);
            }
        }
    }
    if node.cpu_left() < ctx.cpu {
        return Err(Refusal::NotEnoughCpu);
    }
    if node.memory_left() < ctx.mem {
        return Err(Refusal::NotEnoughMemory);
    }
    match demand {
        GpuDemand::None => Ok(()),
        GpuDemand::Exclusive { count } => {
            let free = node
                .gpus()
                .iter()
                .filter(|g| g.fully_free() && ctx.model_ok(g.model))
                .count();
            if free < *count as usize {
                Err(Refusal::FewerFreeGpus)
            } else {
                Ok(())
            }
        }
        GpuDemand::Shared { milli, memory_mib } => {
            if node
                .gpus()
                .iter()
                .any(|g| g.fits_share(*milli, *memory_mib) && ctx.model_ok(g.model))
            {
                Ok(())
            } else {
                Err(Refusal::NoShareRoom)
            }
        }
        GpuDemand::Mig { profile, count } => {
            let offering = node.gpus().iter().any(|g| {
                g.usable()
                    && ctx.model_ok(g.model)
                    && g.mig
                        .as_ref()
                        .is_some_and(|m| profile.spec_for(m.class).is_some())
            });
            if !offering {
                Err(Refusal::NoMigProfile)
            } else if plan_mig(ctx, node, profile, *count).is_none() {
                Err(Refusal::MigSlotsTaken)
            } else {
                Ok(())
            }
        }
    }
}

/// Positions of the GPUs for `count` whole GPUs: the best-linked set where the node reported
/// links (lowest worst-pair rank, then lowest total, then lowest positions), else the first
/// free ones by index. Returns the set's worst link rank too (0 without link data).
pub(crate) fn choose_whole(
    ctx: &Ctx<'_>,
    node: &Node,
    count: usize,
    out: &mut Vec<u32>,
) -> Option<u32> {
    out.clear();
    let mut free = [0u32; MAX_GPUS];
    let mut n = 0;
    for (i, g) in node.gpus().iter().enumerate() {
        if g.fully_free() && ctx.model_ok(g.model) {
            free[n] = i as u32;
            n += 1;
        }
    }
    if n < count {
        return None;
    }
    if count < 2
        || !node.has_links()
        || combinations(n as u64, count as u64) > MAX_LINK_COMBINATIONS
    {
        out.extend_from_slice(&free[..count]);
        return Some(worst_rank(node, out));
    }
    // Exhaustive search over index combinations in lexicographic order: the first best wins.
    let mut pick: Vec<usize> = (0..count).collect();
    let mut best: Option<(u32, u32, Vec<u32>)> = None;
    loop {
        let set: Vec<u32> = pick.iter().map(|&p| free[p]).collect();
        let (worst, total) = rank_of(node, &set);
        if best
            .as_ref()
            .is_none_or(|(w, t, _)| (worst, total) < (*w, *t))
        {
            best = Some((worst, total, set));
        }
        // Next combination.
        let mut k = count;
        loop {
            if k == 0 {
                let (worst, _, set) = best.expect("at least one combination was tried");
                out.extend_from_slice(&set);
                return Some(worst);
            }
            k -= 1;
            if pick[k] < n - count + k {
                pick[k] += 1;
                for j in k + 1..count {
                    pick[j] = pick[j - 1] + 1;
                }
                break;
            }
        }
    }
}

fn combinations(n: u64, k: u64) -> u64 {
    let mut c: u64 = 1;
    for i in 0..k.min(n - k.min(n)) {
        c = c.saturating_mul(n - i) / (i + 1);
    }
    c
}

fn rank_of(node: &Node, set: &[u32]) -> (u32, u32) {
    let mut worst = 0;
    let mut total = 0u32;
    for (i, &a) in set.iter().enumerate() {
        for &b in &set[i + 1..] {
            let r = node.link_rank(a as usize, b as usize).unwrap_or(0);
            worst = worst.max(r);
            total = total.saturating_add(r);
        }
    }
    (worst, total)
}

fn worst_rank(node: &Node, set: &[u32]) -> u32 {
    rank_of(node, set).0
}

/// MIG instances for `count` × `profile`: each on the fullest GPU that still has a free slot
/// for it (packing), at the lowest free start. `None` when they do not all fit.
pub(crate) fn plan_mig(
    ctx: &Ctx<'_>,
    node: &Node,
    profile: &MigProfile,
    count: u32,
) -> Option<Vec<GpuGrant>> {
    let mut state: Vec<(usize, MigGpu)> = node
        .gpus()
        .iter()
        .enumerate()
        .filter(|(_, g)| g.usable() && ctx.model_ok(g.model))
        .filter_map(|(i, g)| g.mig.clone().map(|m| (i, m)))
        .collect();
    let mut grants = Vec::with_capacity(count as usize);
    for _ in 0..count {
        let mut best: Option<(usize, u32, u8)> = None;
        for (slot, (_, mig)) in state.iter().enumerate() {
            let Some(spec) = profile.spec_for(mig.class) else {
                continue;
            };
            if let Some(start) = mig.free_start(spec) {
                let used = mig.used_slices.count_ones();
                if best.is_none_or(|(_, u, _)| used > u) {
                    best = Some((slot, used, start));
                }
            }
        }
        let (slot, _, start) = best?;
        let (gpu, mig) = &mut state[slot];
        let spec = profile.spec_for(mig.class)?;
        let width = (1u16 << spec.memory_slices) - 1;
        mig.used_slices |= u8::try_from(width << start).ok()?;
        mig.instances.push((crate::cluster::spec_row(spec)?, start));
        grants.push(GpuGrant {
            gpu: *gpu as u32,
            milli: mig_milli(spec.compute_slices),
            memory_mib: 0,
            exclusive: false,
            mig: Some((profile.clone(), start)),
        });
    }
    Some(grants)
}

/// Grants for whole GPUs at `positions`.
pub(crate) fn whole_grants(node: &Node, positions: &[u32]) -> Vec<GpuGrant> {
    positions
        .iter()
        .map(|&p| GpuGrant {
            gpu: p,
            milli: MILLI_PER_GPU,
            memory_mib: node.gpus()[p as usize].memory_mib,
            exclusive: true,
            mig: None,
        })
        .collect()
}

/// The GPUs where a share fits, in index order.
pub(crate) fn share_candidates(
    ctx: &Ctx<'_>,
    node: &Node,
    milli: u32,
    memory_mib: u64,
) -> impl Iterator<Item = usize> {
    node.gpus()
        .iter()
        .enumerate()
        .filter(move |(_, g)| g.fits_share(milli, memory_mib) && ctx.model_ok(g.model))
        .map(|(i, _)| i)
}

/// The tightest GPU for a share: least compute left, then lowest index.
pub(crate) fn tightest_share(
    ctx: &Ctx<'_>,
    node: &Node,
    milli: u32,
    memory_mib: u64,
) -> Option<usize> {
    let gpus = node.gpus();
    share_candidates(ctx, node, milli, memory_mib).min_by_key(|&i| (gpus[i].milli_left(), i))
}
