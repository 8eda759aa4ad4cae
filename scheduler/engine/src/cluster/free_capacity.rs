//! Each node's free capacity in the compact forms the placement scans read: one small row
//! per node ([`FreeCapacity`]) and the same as one array per field ([`FreeCapacityColumns`]).
//! [`Cluster`](super::Cluster) refreshes both on every change to a node.

use crate::job::MILLI_PER_GPU;

use super::Node;

/// Most GPUs a node may have and still take the compact fast path of the placement scan.
pub(crate) const FAST_PATH_MAX_GPUS: usize = 8;

/// One node's free capacity (CPU, memory, compute and memory per GPU, which GPUs are free or
/// take shares) in the compact form the placement scan reads. Complete for a simple node (at
/// most 8 GPUs, one model, no MIG); kept next to the other nodes' so the scan stays in cache.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(crate) struct FreeCapacity {
    /// The node takes the fast path: schedulable, at most 8 GPUs, one model, no MIG, no link data.
    pub simple: bool,
    pub gpus: u8,
    /// Bit `i`: GPU `i` is free for a whole-GPU grant.
    pub free_mask: u8,
    /// Bit `i`: GPU `i` can take shares (healthy, not exclusive, no MIG).
    pub share_mask: u8,
    pub model: u16,
    pub total_left: u32,
    pub cpu_left: u64,
    pub memory_left: u64,
    /// Compute left per GPU in milli (0 when unusable).
    pub milli_left: [u16; FAST_PATH_MAX_GPUS],
    /// Memory left per GPU for shares, in MiB (saturating at 4 PiB).
    pub gpu_memory_left: [u32; FAST_PATH_MAX_GPUS],
    /// The node's fingerprint (see [`Node::fingerprint`]), for caches keyed by node state.
    pub fingerprint: u64,
}

impl FreeCapacity {
    pub(super) fn of(node: &Node) -> FreeCapacity {
        let mut h = FreeCapacity {
            simple: !node.cordoned
                && node.links.is_none()
                && node.gpus.len() <= FAST_PATH_MAX_GPUS
                && (node.gpus.is_empty() || node.uniform_model.is_some())
                && node.gpus.iter().all(|g| g.mig.is_none()),
            gpus: node.gpus.len().min(FAST_PATH_MAX_GPUS) as u8,
            model: node.uniform_model.map_or(u16::MAX, |m| m.0),
            cpu_left: node.cpu_left(),
            memory_left: node.memory_left(),
            fingerprint: node.fingerprint,
            ..FreeCapacity::default()
        };
        for (i, g) in node.gpus.iter().take(FAST_PATH_MAX_GPUS).enumerate() {
            // milli_left is at most 1000 and fits; the memory saturates rather than wraps.
            h.milli_left[i] = u16::try_from(g.milli_left()).unwrap_or(u16::MAX);
            h.total_left += g.milli_left();
            h.gpu_memory_left[i] = u32::try_from(g.memory_mib - g.memory_used).unwrap_or(u32::MAX);
            if g.fully_free() {
                h.free_mask |= 1 << i;
            }
            if g.usable() && g.mig.is_none() && !g.exclusive {
                h.share_mask |= 1 << i;
            }
        }
        h
    }
}

/// Every node's [`FreeCapacity`] as one array per field: the narrowest view of the nodes,
/// which the column scan of the best-fit, dot-product, gpu-packing and random policies reads. Each scan touches only the arrays it needs (a few bytes
/// a node), and the per-node arithmetic has no branches, so the compiler vectorizes it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct FreeCapacityColumns {
    /// The node takes the column scan: it is simple (see [`FreeCapacity`]).
    pub simple: Vec<bool>,
    /// How many nodes are not simple.
    pub not_simple: usize,
    /// CPU left (a simple node has at most 100,000 cores, which fits).
    pub cpu_left: Vec<u32>,
    /// Memory left in MiB, saturating: requests ask for at most 2^30 MiB, so a node with
    /// more than `u32::MAX` left fits any of them either way.
    pub memory_left: Vec<u32>,
    /// The GPU model; `u16::MAX` without GPUs.
    pub model: Vec<u16>,
    pub gpus: Vec<u8>,
    /// Compute left on all GPUs, in milli.
    pub total_left: Vec<u16>,
    /// The most compute left on one GPU: a share of up to this much (and no GPU memory) fits.
    pub max_left: Vec<u16>,
    /// GPUs free for a whole-GPU grant.
    pub free: Vec<u8>,
    /// GPUs with all their compute left (fresh GPUs, as gpu-packing counts them).
    pub full: Vec<u8>,
    /// `milli_left_by_gpu[g][i]`: compute left on GPU `g` of node `i` (0 when unusable, exclusive or
    /// missing).
    pub milli_left_by_gpu: [Vec<u16>; FAST_PATH_MAX_GPUS],
}

impl FreeCapacityColumns {
    pub(super) fn of(rows: &[FreeCapacity]) -> FreeCapacityColumns {
        let n = rows.len();
        let mut columns = FreeCapacityColumns {
            simple: vec![false; n],
            not_simple: n,
            cpu_left: vec![0; n],
            memory_left: vec![0; n],
            model: vec![0; n],
            gpus: vec![0; n],
            total_left: vec![0; n],
            max_left: vec![0; n],
            free: vec![0; n],
            full: vec![0; n],
            milli_left_by_gpu: std::array::from_fn(|_| vec![0; n]),
        };
        for (i, h) in rows.iter().enumerate() {
            columns.set(i, h);
        }
        columns
    }

    pub(super) fn set(&mut self, i: usize, h: &FreeCapacity) {
        let n = usize::from(h.gpus);
        let milli_left = &h.milli_left[..n];
        self.not_simple -= usize::from(!self.simple[i]);
        self.not_simple += usize::from(!h.simple);
        self.simple[i] = h.simple;
        self.cpu_left[i] = u32::try_from(h.cpu_left).unwrap_or(u32::MAX);
        self.memory_left[i] = u32::try_from(h.memory_left).unwrap_or(u32::MAX);
        self.model[i] = h.model;
        self.gpus[i] = h.gpus;
        self.total_left[i] = u16::try_from(h.total_left).unwrap_or(u16::MAX);
        self.max_left[i] = milli_left.iter().copied().max().unwrap_or(0);
        self.free[i] = h.free_mask.count_ones() as u8;
        self.full[i] = milli_left
            .iter()
            .filter(|l| u32::from(**l) == MILLI_PER_GPU)
            .count() as u8;
        for (g, column) in self.milli_left_by_gpu.iter_mut().enumerate() {
            column[i] = h.milli_left[g];
        }
    }
}
