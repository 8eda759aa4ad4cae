//! The fabric index: a compact per-node summary the planner scans (free GPUs, CPU and memory
//! left, link health), next to interned leaf, spine and domain ids and the capacity index.

use std::collections::HashMap;
use std::sync::{Mutex, MutexGuard};

use crate::cid::{Cid, Level};
use crate::cluster::{Cluster, ModelId, Node, NodeId};
use crate::domain::DomainCatalog;
use crate::inventory::Health;
use crate::links::LinkState;

use super::buckets::{Bucket, IRREGULAR, Slot, bucket_of};

/// Cached (worst link rank, GPUDirect GPUs) for single replicas of 1, 2, 4 and 8 GPUs.
pub(super) type QualitySlots = [Option<(u32, u32)>; 4];

/// What the scan reads about one node: a compact copy kept in node order.
#[derive(Debug, Clone, Default)]
pub(super) struct NodeFacts {
    /// The node takes the fast path for whole GPUs: one model, no MIG, at most 64 GPUs.
    pub(super) simple: bool,
    pub(super) cordoned: bool,
    pub(super) model: Option<ModelId>,
    /// Bit `i`: GPU `i` is free for a whole-GPU grant.
    pub(super) free_mask: u64,
    pub(super) cpu_left: u64,
    pub(super) memory_left: u64,
    pub(super) degraded_gpus: u16,
    pub(super) has_links: bool,
    pub(super) leaf: u32,
    pub(super) spine: u32,
    pub(super) domain: u32,
    pub(super) name_rank: u32,
    /// Link state known for the node.
    pub(super) network_known: bool,
    pub(super) nic_usable: bool,
    pub(super) impaired_nics: u16,
    pub(super) gdr_mask: u64,
    /// The lowest link rank between any two of the node's GPUs: no set of two or more can
    /// be joined better.
    pub(super) min_link_rank: u16,
}

/// Interned fabric positions and the per-node summary the gang planner scans.
///
/// Keep it in step with the cluster: call [`FabricIndex::refresh`] after every change to a
/// node (allocate, release, cordon, health), or [`FabricIndex::sync`] to check them all.
#[derive(Debug)]
pub struct FabricIndex {
    pub(super) facts: Vec<NodeFacts>,
    /// Per node, for single replicas of 1, 2, 4 and 8 whole GPUs of any model: the worst
    /// link rank and GPUDirect GPU count of the best set. It depends only on the node's free
    /// GPUs, so it holds until the node is refreshed; one queue pass reuses it across jobs.
    pub(super) quality: Mutex<Vec<QualitySlots>>,
    /// Each node's fingerprint when last indexed, to tell which nodes changed since.
    fingerprints: Vec<u64>,
    /// Per leaf: (spine, name).
    pub(super) leaves: Vec<(u32, String)>,
    /// Per spine: (domain, name).
    pub(super) spines: Vec<(u32, String)>,
    /// Per domain: CID (None for nodes without one) and price.
    pub(super) domains: Vec<(Option<Cid>, Option<f64>)>,
    /// The capacity index: nodes on the whole-GPU fast path bucketed by free whole GPUs
    /// (`buckets[k]`: exactly `k` free), the rest in `buckets[IRREGULAR]`. A whole-GPU
    /// placement visits only the buckets that can hold it. Behind a lock because a walk
    /// fills in the slots' link quality as it goes.
    pub(super) buckets: Mutex<Vec<Bucket>>,
    /// Per node: (bucket, position in it).
    pub(super) slots: Vec<(u8, u32)>,
    /// Free whole GPUs over all indexed nodes.
    free_total: u64,
    /// Place with the plain scan only (the reference the capacity index is checked against).
    pub(super) scan_only: bool,
}

impl Clone for FabricIndex {
    fn clone(&self) -> FabricIndex {
        FabricIndex {
            facts: self.facts.clone(),
            quality: Mutex::new(self.quality_cache().clone()),
            fingerprints: self.fingerprints.clone(),
            leaves: self.leaves.clone(),
            spines: self.spines.clone(),
            domains: self.domains.clone(),
            buckets: Mutex::new(self.bucket_lists().clone()),
            slots: self.slots.clone(),
            free_total: self.free_total,
            scan_only: self.scan_only,
        }
    }
}

/// Whether two nodes intern to the same domain, spine and leaf: the same domain prefix of
/// their CIDs and the same named (not unknown) spine and leaf.
fn same_fabric_place(a: &Node, b: &Node) -> bool {
    let domain_depth = Level::Domain as usize + 1;
    let same_domain = match (a.cid(), b.cid()) {
        (Some(x), Some(y)) => {
            let (x, y) = (x.segments(), y.segments());
            x.len() >= domain_depth
                && y.len() >= domain_depth
                && x[..domain_depth] == y[..domain_depth]
        }
        _ => false,
    };
    let (fa, fb) = (a.fabric(), b.fabric());
    same_domain
        && !fa.spine.is_empty()
        && !fa.leaf.is_empty()
        && fa.spine == fb.spine
        && fa.leaf == fb.leaf
}

/// The lowest rank [`set_rank`](super::node_plan::set_rank) can give a set of two or more of the node's GPUs.
pub(super) fn min_link_rank(node: &Node) -> u16 {
    let gpus = node.gpus().len();
    if !node.has_links() || gpus < 2 {
        return 0;
    }
    let mut lowest = u32::MAX;
    for a in 0..gpus {
        for b in 0..gpus {
            if a != b {
                lowest = lowest.min(node.link_rank(a, b).unwrap_or(0));
            }
        }
    }
    u16::try_from(lowest).unwrap_or(u16::MAX)
}

fn facts_of(node: &Node, network: Option<&crate::links::NodeNetwork>) -> NodeFacts {
    let mut free_mask = 0u64;
    let mut degraded = 0u16;
    for (i, g) in node.gpus().iter().enumerate().take(64) {
        if g.fully_free() {
            free_mask |= 1 << i;
        }
        if g.health == Health::Degraded {
            degraded += 1;
        }
    }
    let gpus_ok = node.gpus().len() <= 64
        && (node.gpus().is_empty() || node.uniform_model().is_some())
        && node.gpus().iter().all(|g| g.mig.is_none());
    NodeFacts {
        simple: gpus_ok,
        cordoned: node.is_cordoned(),
        model: node.uniform_model(),
        free_mask,
        cpu_left: node.cpu_left(),
        memory_left: node.memory_left(),
        degraded_gpus: degraded,
        has_links: node.has_links(),
        network_known: network.is_some(),
        nic_usable: network.is_some_and(|n| n.any_nic_usable()),
        impaired_nics: network.map_or(0, |n| n.impaired_nics().min(u32::from(u16::MAX)) as u16),
        gdr_mask: network.map_or(0, |n| n.gdr_mask()),
        min_link_rank: min_link_rank(node),
        ..NodeFacts::default()
    }
}

impl FabricIndex {
    /// Indexes every node: fabric position (an unknown leaf or spine counts as the node's
    /// own, so it never looks closer than it is), domain price, link health, free capacity.
    pub fn new(cluster: &Cluster, links: &LinkState, catalog: &DomainCatalog) -> FabricIndex {
        let mut index = FabricIndex {
            facts: Vec::with_capacity(cluster.len()),
            quality: Mutex::new(vec![[None; 4]; cluster.len()]),
            fingerprints: Vec::with_capacity(cluster.len()),
            leaves: Vec::new(),
            spines: Vec::new(),
            domains: Vec::new(),
            buckets: Mutex::new(vec![Bucket::default(); IRREGULAR + 1]),
            slots: Vec::with_capacity(cluster.len()),
            free_total: 0,
            scan_only: false,
        };
        let mut domain_ids: HashMap<Option<Cid>, u32> = HashMap::new();
        let mut spine_ids: HashMap<(u32, String), u32> = HashMap::new();
        let mut leaf_ids: HashMap<(u32, String), u32> = HashMap::new();
        // The previous node and its ids: neighbours usually share a leaf, so most nodes skip
        // building and hashing their names.
        let mut previous: Option<(&Node, u32, u32, u32)> = None;
        for (i, node) in cluster.nodes().iter().enumerate() {
            if let Some((prev, domain, spine, leaf)) = previous
                && same_fabric_place(prev, node)
            {
                index.place(cluster, links, i, node, (domain, spine, leaf));
                previous = Some((node, domain, spine, leaf));
                continue;
            }
            let domain_cid = node.cid().and_then(Cid::domain_cid);
            let domain = *domain_ids.entry(domain_cid.clone()).or_insert_with(|| {
                let price = domain_cid.as_ref().and_then(|c| catalog.price(c));
                index.domains.push((domain_cid.clone(), price));
                (index.domains.len() - 1) as u32
            });
            let fabric = node.fabric();
            let spine_name = if fabric.spine.is_empty() {
                format!("?{}", node.name())
            } else {
                fabric.spine.clone()
            };
            let spine = *spine_ids
                .entry((domain, spine_name.clone()))
                .or_insert_with(|| {
                    index.spines.push((domain, spine_name));
                    (index.spines.len() - 1) as u32
                });
            let leaf_name = if fabric.leaf.is_empty() {
                format!("?{}", node.name())
            } else {
                fabric.leaf.clone()
            };
            let leaf = *leaf_ids
                .entry((spine, leaf_name.clone()))
                .or_insert_with(|| {
                    index.leaves.push((spine, leaf_name));
                    (index.leaves.len() - 1) as u32
                });
            index.place(cluster, links, i, node, (domain, spine, leaf));
            previous = Some((node, domain, spine, leaf));
        }
        index
    }

    /// Indexes node `i` at its interned (domain, spine, leaf).
    pub(super) fn place(
        &mut self,
        cluster: &Cluster,
        links: &LinkState,
        i: usize,
        node: &Node,
        (domain, spine, leaf): (u32, u32, u32),
    ) {
        let mut facts = facts_of(node, links.get(node.name()));
        facts.leaf = leaf;
        facts.spine = spine;
        facts.domain = domain;
        facts.name_rank = cluster.name_rank(NodeId(i as u32));
        self.facts.push(facts);
        self.fingerprints.push(node.fingerprint());
        self.slots.push((0, 0));
        self.bucket(i);
    }

    /// Files node `i` under its current facts.
    pub(super) fn bucket(&mut self, i: usize) {
        let f = &self.facts[i];
        let b = bucket_of(f);
        self.free_total += u64::from(f.free_mask.count_ones());
        let slot = Slot::of(i as u32, f);
        let buckets = self
            .buckets
            .get_mut()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        self.slots[i] = (b as u8, buckets[b].slots.len() as u32);
        buckets[b].push(slot);
    }

    /// Takes node `i` out of its bucket, before its facts change.
    fn unbucket(&mut self, i: usize) {
        let (b, pos) = self.slots[i];
        let buckets = self
            .buckets
            .get_mut()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let bucket = &mut buckets[b as usize];
        bucket.swap_remove(pos as usize);
        if let Some(moved) = bucket.slots.get(pos as usize) {
            self.slots[moved.node as usize].1 = pos;
        }
        self.free_total -= u64::from(self.facts[i].free_mask.count_ones());
    }

    /// Free whole GPUs over the whole cluster, as last indexed.
    pub fn free_gpus_total(&self) -> u64 {
        self.free_total
    }

    /// Places with the plain scan over every node instead of the capacity index: slower,
    /// same decisions. The reference the index is checked against.
    pub fn set_plain_scan(&mut self, on: bool) {
        self.scan_only = on;
    }

    /// Whether placements use the plain scan (see [`FabricIndex::set_plain_scan`]).
    pub fn plain_scan(&self) -> bool {
        self.scan_only
    }

    /// Re-reads one node's state (after an allocation, release, cordon or health change).
    pub fn refresh(&mut self, cluster: &Cluster, links: &LinkState, node: NodeId) {
        let (Some(n), Some(old)) = (cluster.node(node), self.facts.get(node.index())) else {
            return;
        };
        let mut facts = facts_of(n, links.get(n.name()));
        facts.leaf = old.leaf;
        facts.spine = old.spine;
        facts.domain = old.domain;
        facts.name_rank = old.name_rank;
        self.unbucket(node.index());
        self.facts[node.index()] = facts;
        self.bucket(node.index());
        self.fingerprints[node.index()] = n.fingerprint();
        if let Some(q) = self.quality_cache().get_mut(node.index()) {
            *q = [None; 4];
        }
    }

    pub(super) fn bucket_lists(&self) -> MutexGuard<'_, Vec<Bucket>> {
        self.buckets
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    pub(super) fn quality_cache(&self) -> MutexGuard<'_, Vec<QualitySlots>> {
        self.quality
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Refreshes every node whose state changed since it was indexed; returns how many.
    pub fn sync(&mut self, cluster: &Cluster, links: &LinkState) -> usize {
        let mut changed = 0;
        for i in 0..self.facts.len().min(cluster.len()) {
            let id = NodeId(i as u32);
            if cluster.node(id).map(Node::fingerprint) != Some(self.fingerprints[i]) {
                self.refresh(cluster, links, id);
                changed += 1;
            }
        }
        changed
    }

    pub fn len(&self) -> usize {
        self.facts.len()
    }

    pub fn is_empty(&self) -> bool {
        self.facts.is_empty()
    }

    /// Free whole GPUs on a node, as last indexed.
    pub fn free_gpus(&self, node: NodeId) -> u32 {
        self.facts
            .get(node.index())
            .map_or(0, |f| f.free_mask.count_ones())
    }

    pub(super) fn leaf_name(&self, leaf: u32) -> String {
        let (spine, name) = &self.leaves[leaf as usize];
        format!("{}/{}", self.spine_name(*spine), name)
    }

    pub(super) fn spine_name(&self, spine: u32) -> String {
        let (domain, name) = &self.spines[spine as usize];
        format!("{} {}", self.domain_name(*domain), name)
    }

    pub(super) fn domain_name(&self, domain: u32) -> String {
        self.domains[domain as usize]
            .0
            .as_ref()
            .map_or_else(|| "(no domain)".to_string(), ToString::to_string)
    }
}
