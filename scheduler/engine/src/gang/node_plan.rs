//! GPUs for replicas on one node: the best-joined set of whole GPUs, the tightest GPU for a
//! share, free MIG slots.

use crate::cluster::{GpuGrant, Node};
use crate::gpu::MIG_PROFILES;
use crate::inventory::LinkPath;
use crate::request::GpuDemand;

use super::feasible::{ReplicaNeeds, bound};

/// Free whole GPUs of `node` usable by `needs`, by position.
fn free_positions(node: &Node, needs: &ReplicaNeeds<'_>) -> Vec<usize> {
    node.gpus()
        .iter()
        .enumerate()
        .filter(|(_, g)| g.fully_free() && needs.model_ok(g.model))
        .map(|(i, _)| i)
        .collect()
}

/// The worst link rank inside a set of GPU positions (0 when unknown or a single GPU).
pub(super) fn set_rank(node: &Node, set: &[usize]) -> u32 {
    let mut worst = 0;
    for (k, a) in set.iter().enumerate() {
        for b in &set[k + 1..] {
            worst = worst.max(node.link_rank(*a, *b).unwrap_or(0));
        }
    }
    worst
}

/// The best-joined set of `count` GPUs among `free`: grown greedily from each seed by the
/// closest GPU, keeping the set whose worst link is best (ties: lowest seed).
fn best_set(node: &Node, free: &[usize], count: usize) -> Option<(Vec<usize>, u32)> {
    if free.len() < count {
        return None;
    }
    if !node.has_links() || count <= 1 || free.len() == count {
        let set: Vec<usize> = free[..count].to_vec();
        let rank = set_rank(node, &set);
        return Some((set, rank));
    }
    let mut best: Option<(Vec<usize>, u32)> = None;
    for seed in free {
        let mut set = vec![*seed];
        while set.len() < count {
            let next = free
                .iter()
                .filter(|g| !set.contains(g))
                .min_by_key(|g| {
                    let worst = set
                        .iter()
                        .map(|s| node.link_rank(*s, **g).unwrap_or(u32::MAX))
                        .max()
                        .unwrap_or(0);
                    (worst, **g)
                })
                .copied();
            match next {
                Some(g) => set.push(g),
                None => break,
            }
        }
        let rank = set_rank(node, &set);
        if best.as_ref().is_none_or(|(_, r)| rank < *r) {
            set.sort_unstable();
            best = Some((set, rank));
        }
    }
    best
}

/// Up to `max` replicas' GPU grants on `node`, each chosen after the ones before it.
pub(super) fn plan_node(node: &Node, needs: &ReplicaNeeds<'_>, max: usize) -> Vec<Vec<GpuGrant>> {
    let req = needs.request;
    let by_host = bound(node.cpu_left(), req.cpu_milli())
        .min(bound(node.memory_left(), req.memory_mib()))
        .min(max as u64) as usize;
    let mut plans = Vec::new();
    match req.gpu() {
        GpuDemand::None => {
            plans.resize(by_host.min(max), Vec::new());
        }
        GpuDemand::Exclusive { count } => {
            let count = *count as usize;
            let mut free = free_positions(node, needs);
            while plans.len() < by_host {
                let Some((set, rank)) = best_set(node, &free, count) else {
                    break;
                };
                let nvlinked = count <= 1 || (rank > 0 && rank < LinkPath::Pix.rank());
                if needs.nvlink_required && !nvlinked {
                    break;
                }
                free.retain(|g| !set.contains(g));
                plans.push(
                    set.iter()
                        .map(|g| GpuGrant {
                            gpu: *g as u32,
                            milli: 1000,
                            memory_mib: node.gpus()[*g].memory_mib,
                            exclusive: true,
                            mig: None,
                        })
                        .collect(),
                );
            }
        }
        GpuDemand::Shared { milli, memory_mib } => {
            // Local overlay of what this plan has taken so far.
            let mut taken: Vec<(u32, u64)> = vec![(0, 0); node.gpus().len()];
            while plans.len() < by_host {
                let pick = node
                    .gpus()
                    .iter()
                    .enumerate()
                    .filter(|(i, g)| {
                        needs.model_ok(g.model)
                            && g.fits_share(milli + taken[*i].0, memory_mib + taken[*i].1)
                    })
                    .min_by_key(|(i, g)| (g.milli_left() - taken[*i].0, *i));
                let Some((i, _)) = pick else { break };
                taken[i].0 += milli;
                taken[i].1 += memory_mib;
                plans.push(vec![GpuGrant {
                    gpu: i as u32,
                    milli: *milli,
                    memory_mib: *memory_mib,
                    exclusive: false,
                    mig: None,
                }]);
            }
        }
        GpuDemand::Mig { profile, count } => {
            let mut migs: Vec<Option<crate::cluster::MigGpu>> = node
                .gpus()
                .iter()
                .map(|g| {
                    g.mig
                        .clone()
                        .filter(|_| g.usable() && needs.model_ok(g.model))
                })
                .collect();
            'replicas: while plans.len() < by_host {
                let mut grants = Vec::new();
                let mut trial = migs.clone();
                for _ in 0..*count {
                    let mut placed = false;
                    for (i, slot) in trial.iter_mut().enumerate() {
                        let Some(mig) = slot.as_mut() else { continue };
                        let Some(spec) = profile.spec_for(mig.class) else {
                            continue;
                        };
                        let Some(start) = mig.free_start(spec) else {
                            continue;
                        };
                        let Some(row) = MIG_PROFILES.iter().position(|s| s == spec) else {
                            continue;
                        };
                        let width = (1u16 << spec.memory_slices) - 1;
                        mig.used_slices |= u8::try_from(width << start).unwrap_or(u8::MAX);
                        mig.instances.push((row as u16, start));
                        grants.push(GpuGrant {
                            gpu: i as u32,
                            milli: req.gpu_milli_each(),
                            memory_mib: 0,
                            exclusive: false,
                            mig: Some((profile.clone(), start)),
                        });
                        placed = true;
                        break;
                    }
                    if !placed {
                        break 'replicas;
                    }
                }
                migs = trial;
                plans.push(grants);
            }
        }
    }
    plans
}
