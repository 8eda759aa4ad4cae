//! The capacity index inside the fabric index: nodes on the whole-GPU fast path bucketed by
//! free whole GPUs, each bucket with lower bounds that let a walk skip it.

use crate::cluster::ModelId;

use super::index::{NodeFacts, QualitySlots};

/// The bucket of nodes off the fast path: several models, MIG, or more than 64 GPUs.
pub(super) const IRREGULAR: usize = 65;

/// One bucket of the capacity index: the nodes' slots, and beside them (in the same order)
/// their link quality, which only scoring reads: kept apart, the slots a walk checks stay
/// small enough (40 bytes) to stay in cache across the walks of one queue pass.
#[derive(Debug, Clone, Default)]
pub(super) struct Bucket {
    pub(super) slots: Vec<Slot>,
    /// The nodes' entries of the quality cache, copied here as a walk reads them so the next
    /// walk finds them in bucket order.
    pub(super) quality: Vec<QualitySlots>,
    /// Per domain: slots not cordoned, and of those the ones without a usable NIC. With
    /// `bounds`, they let a walk count a bucket whose nodes all fit and none can win.
    pub(super) open: Vec<u32>,
    pub(super) open_nic_down: Vec<u32>,
    pub(super) bounds: BucketBounds,
}

impl Bucket {
    pub(super) fn push(&mut self, slot: Slot) {
        if !slot.cordoned() {
            let d = slot.domain as usize;
            if self.open.len() <= d {
                self.open.resize(d + 1, 0);
                self.open_nic_down.resize(d + 1, 0);
            }
            self.open[d] += 1;
            if slot.nic_down() {
                self.open_nic_down[d] += 1;
            }
        }
        self.bounds.add(&slot);
        self.slots.push(slot);
        self.quality.push([None; 4]);
    }

    pub(super) fn swap_remove(&mut self, pos: usize) {
        let slot = self.slots.swap_remove(pos);
        self.quality.swap_remove(pos);
        if !slot.cordoned() {
            let d = slot.domain as usize;
            self.open[d] -= 1;
            if slot.nic_down() {
                self.open_nic_down[d] -= 1;
            }
        }
        if self.slots.is_empty() {
            self.bounds = BucketBounds::EMPTY;
        }
    }
}

/// What the capacity index keeps per node, inline so a bucket walk touches one array.
#[derive(Debug, Clone, Copy)]
pub(super) struct Slot {
    pub(super) node: u32,
    pub(super) cpu_left: u64,
    pub(super) memory_left: u64,
    /// [`Slot::CORDONED`], [`Slot::NIC_DOWN`], [`Slot::HAS_LINKS`].
    flags: u8,
    pub(super) model: Option<ModelId>,
    pub(super) domain: u32,
    /// Impaired NICs plus degraded GPUs, as [`NodeScore`](super::NodeScore) counts them.
    pub(super) health: u32,
    pub(super) name_rank: u32,
    pub(super) min_link_rank: u16,
}

impl Slot {
    const CORDONED: u8 = 1;
    /// Link state known and no NIC usable.
    const NIC_DOWN: u8 = 2;
    const HAS_LINKS: u8 = 4;

    pub(super) fn of(node: u32, f: &NodeFacts) -> Slot {
        let mut flags = 0;
        if f.cordoned {
            flags |= Slot::CORDONED;
        }
        if f.network_known && !f.nic_usable {
            flags |= Slot::NIC_DOWN;
        }
        if f.has_links {
            flags |= Slot::HAS_LINKS;
        }
        Slot {
            node,
            cpu_left: f.cpu_left,
            memory_left: f.memory_left,
            flags,
            model: f.model,
            domain: f.domain,
            health: u32::from(f.impaired_nics) + u32::from(f.degraded_gpus),
            name_rank: f.name_rank,
            min_link_rank: f.min_link_rank,
        }
    }

    pub(super) fn cordoned(&self) -> bool {
        self.flags & Slot::CORDONED != 0
    }

    pub(super) fn nic_down(&self) -> bool {
        self.flags & Slot::NIC_DOWN != 0
    }

    pub(super) fn has_links(&self) -> bool {
        self.flags & Slot::HAS_LINKS != 0
    }
}

/// Lower bounds over a bucket's slots. Exact after a walk of the bucket; a node leaving the
/// bucket does not raise them, so they may be lower than the slots' true minimum, which only
/// makes [`place_single`](super::single::place_single) walk a bucket it could have counted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct BucketBounds {
    pub(super) cpu_left: u64,
    pub(super) memory_left: u64,
    pub(super) health: u32,
    pub(super) link: u16,
    /// The one GPU model of the slots that have one; `mixed` when they differ.
    pub(super) model: Option<ModelId>,
    pub(super) mixed_models: bool,
}

impl BucketBounds {
    pub(super) const EMPTY: BucketBounds = BucketBounds {
        cpu_left: u64::MAX,
        memory_left: u64::MAX,
        health: u32::MAX,
        link: u16::MAX,
        model: None,
        mixed_models: false,
    };

    pub(super) fn add(&mut self, s: &Slot) {
        self.cpu_left = self.cpu_left.min(s.cpu_left);
        self.memory_left = self.memory_left.min(s.memory_left);
        self.health = self.health.min(s.health);
        self.link = self.link.min(s.min_link_rank);
        if let Some(m) = s.model {
            match self.model {
                None => self.model = Some(m),
                Some(seen) if seen != m => self.mixed_models = true,
                Some(_) => {}
            }
        }
    }
}

impl Default for BucketBounds {
    fn default() -> BucketBounds {
        BucketBounds::EMPTY
    }
}

pub(super) fn bucket_of(f: &NodeFacts) -> usize {
    if f.simple {
        f.free_mask.count_ones() as usize
    } else {
        IRREGULAR
    }
}
