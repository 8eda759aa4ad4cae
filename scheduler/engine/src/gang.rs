//! Gangs on the fabric: training replicas that start together, as close as the fabric allows,
//! and inference replicas spread so one failure takes out as few as possible.
//!
//! The planner works on a [`FabricIndex`]: a compact per-node summary (free GPUs, CPU and
//! memory left, position in the fabric, link health) next to interned leaf, spine and domain
//! ids. One placement is one pass over that summary:
//!
//! 1. each node gets a *fit*: how many replicas it can hold now;
//! 2. fits are summed per leaf, spine and domain;
//! 3. the tightest level whose best group holds the gang wins (same node < same leaf < same
//!    spine < across spines < across domains; see [`Hop`]), within what the job allows;
//! 4. inside the chosen group, nodes are filled in [`NodeScore`] order: link health, NVLink
//!    among a replica's GPUs, GPUDirect RDMA, then fragmentation (best fit).
//!
//! Nothing is allocated: [`allocate_gang`] applies all claims or none.

use std::cmp::Reverse;
use std::collections::HashMap;
use std::fmt;
use std::sync::{Mutex, MutexGuard};

use crate::cid::{Cid, Level};
use crate::cluster::{AllocationId, Claim, Cluster, ClusterError, GpuGrant, ModelId, Node, NodeId};
use crate::domain::DomainCatalog;
use crate::gpu::MIG_PROFILES;
use crate::inventory::{Health, LinkPath};
use crate::job::{JobKind, JobSpec, NetworkScope, PlacementConstraints, Requirement, Topology};
use crate::links::LinkState;
use crate::request::{GpuDemand, Request, RequestError};

/// Per-replica inter-domain traffic assumed when a job does not say (one 100 Gb/s stream).
pub const DEFAULT_REPLICA_TRAFFIC_GBPS: f64 = 100.0;

/// The worst network hop between two replicas of a placement, tightest first.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Hop {
    SameNode,
    SameLeaf,
    SameSpine,
    CrossSpine,
    CrossDomain,
}

impl Hop {
    pub fn name(self) -> &'static str {
        match self {
            Hop::SameNode => "same node",
            Hop::SameLeaf => "same leaf",
            Hop::SameSpine => "same spine",
            Hop::CrossSpine => "across spines",
            Hop::CrossDomain => "across domains",
        }
    }

    /// The loosest hop a network scope permits.
    pub fn of_scope(scope: NetworkScope) -> Hop {
        match scope {
            NetworkScope::SameNode => Hop::SameNode,
            NetworkScope::SameLeaf => Hop::SameLeaf,
            NetworkScope::SameSpine => Hop::SameSpine,
            NetworkScope::Any => Hop::CrossSpine,
        }
    }
}

impl fmt::Display for Hop {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A gang (training) or a set of independent replicas (inference): what the planner places.
#[derive(Debug, Clone, PartialEq)]
pub struct GangRequest {
    /// One replica.
    pub request: Request,
    pub replicas: u32,
    /// Elastic jobs start with at least this many; equal to `replicas` otherwise.
    pub min_replicas: u32,
    pub kind: JobKind,
    pub topology: Topology,
    pub placement: PlacementConstraints,
    /// Bandwidth one replica exchanges with the rest of the gang, for judging splits across
    /// domains.
    pub replica_traffic_gbps: f64,
}

impl GangRequest {
    /// A training gang of `replicas` copies of `request`, no topology constraints.
    pub fn new(request: Request, replicas: u32) -> GangRequest {
        GangRequest {
            request,
            replicas: replicas.max(1),
            min_replicas: replicas.max(1),
            kind: JobKind::Training,
            topology: Topology::default(),
            placement: PlacementConstraints::default(),
            replica_traffic_gbps: DEFAULT_REPLICA_TRAFFIC_GBPS,
        }
    }

    /// A job as submitted: its replica, counts, topology and placement constraints.
    pub fn from_job(spec: &JobSpec) -> Result<GangRequest, RequestError> {
        let request = Request::from_job(spec)?;
        let replicas = spec.replicas.max(1);
        Ok(GangRequest {
            request,
            replicas,
            min_replicas: spec.required_replicas().clamp(1, replicas),
            kind: spec.kind,
            topology: spec.topology,
            placement: spec.placement.clone(),
            replica_traffic_gbps: DEFAULT_REPLICA_TRAFFIC_GBPS,
        })
    }

    pub fn with_min_replicas(mut self, min: u32) -> GangRequest {
        self.min_replicas = min.clamp(1, self.replicas);
        self
    }

    pub fn with_kind(mut self, kind: JobKind) -> GangRequest {
        self.kind = kind;
        self
    }

    pub fn with_topology(mut self, topology: Topology) -> GangRequest {
        self.topology = topology;
        self
    }

    pub fn with_placement(mut self, placement: PlacementConstraints) -> GangRequest {
        self.placement = placement;
        self
    }

    pub fn with_replica_traffic(mut self, gbps: f64) -> GangRequest {
        self.replica_traffic_gbps = gbps;
        self
    }

    /// GPUs (whole-GPU equivalents in milli) the gang uses at `replicas` replicas.
    pub fn gpu_milli(&self, replicas: u32) -> u64 {
        self.request.gpu_milli_total() * u64::from(replicas)
    }

    fn network_required(&self) -> bool {
        self.topology.network.mode == Requirement::Required
    }
}

/// Why one node cannot hold even one replica; each node counts under its first reason.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Reject {
    Cordoned,
    /// Held for a blocked gang's reservation.
    Reserved,
    OutsideAllowed,
    ModelNotAllowed,
    /// The domain's price is unknown or above the job's maximum.
    Price,
    /// `rdma: required` and no NIC of the node is usable.
    RdmaDown,
    FewerFreeGpus,
    NoNvlinkSet,
    NoShareRoom,
    NoMigSlots,
    NotEnoughCpu,
    NotEnoughMemory,
}

/// Every [`Reject`], in declaration order (`REJECTS[r as usize] == r`).
const REJECTS: [Reject; 12] = [
    Reject::Cordoned,
    Reject::Reserved,
    Reject::OutsideAllowed,
    Reject::ModelNotAllowed,
    Reject::Price,
    Reject::RdmaDown,
    Reject::FewerFreeGpus,
    Reject::NoNvlinkSet,
    Reject::NoShareRoom,
    Reject::NoMigSlots,
    Reject::NotEnoughCpu,
    Reject::NotEnoughMemory,
];

impl Reject {
    pub fn describe(self) -> &'static str {
        match self {
            Reject::Cordoned => "cordoned or agent not connected",
            Reject::Reserved => "reserved for a blocked gang",
            Reject::OutsideAllowed => "outside the allowed places",
            Reject::ModelNotAllowed => "GPU model not allowed",
            Reject::Price => "domain price unknown or above the job's maximum",
            Reject::RdmaDown => "no usable RDMA NIC",
            Reject::FewerFreeGpus => "too few free GPUs",
            Reject::NoNvlinkSet => "no free NVLink-joined GPU set",
            Reject::NoShareRoom => "no GPU with room for the share",
            Reject::NoMigSlots => "no free MIG slots for the profile",
            Reject::NotEnoughCpu => "not enough CPU",
            Reject::NotEnoughMemory => "not enough memory",
        }
    }
}

/// Why a gang cannot be placed now. Reads as a sentence (`Display`).
#[derive(Debug, Clone, PartialEq)]
pub enum GangWait {
    /// No node can hold a single replica.
    NoNode {
        nodes: u32,
        counts: Vec<(Reject, u32)>,
    },
    /// The whole allowed scope holds fewer replicas than needed.
    TooFew {
        needed: u32,
        fit: u32,
        counts: Vec<(Reject, u32)>,
    },
    /// A required network scope cannot be met: the best group holds `best` of `needed`.
    Network {
        scope: NetworkScope,
        needed: u32,
        best: u32,
        group: String,
        /// Every candidate node holds at most one replica, so replicas read as nodes.
        whole_nodes: bool,
    },
    /// The gang fits only across domains and the job does not allow that.
    CrossDomainNotAllowed {
        needed: u32,
        best: u32,
        domain: String,
    },
    /// A split across domains would need more inter-domain bandwidth than the job declared.
    OverBudget {
        needed_gbps: f64,
        budget_gbps: Option<f64>,
    },
    /// A split across domains would overload (or lacks) the link between two domains.
    DomainLink {
        a: String,
        b: String,
        needed_gbps: f64,
        link_gbps: Option<f64>,
    },
}

fn write_counts(f: &mut fmt::Formatter<'_>, counts: &[(Reject, u32)]) -> fmt::Result {
    for (i, (reason, n)) in counts.iter().enumerate() {
        f.write_str(if i == 0 { " (" } else { "; " })?;
        let noun = if *n == 1 { "node" } else { "nodes" };
        write!(f, "{n} {noun}: {}", reason.describe())?;
    }
    if !counts.is_empty() {
        f.write_str(")")?;
    }
    Ok(())
}

impl fmt::Display for GangWait {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            GangWait::NoNode { nodes, counts } => {
                write!(
                    f,
                    "no node can hold a replica now ({nodes} nodes looked at)"
                )?;
                write_counts(f, counts)
            }
            GangWait::TooFew {
                needed,
                fit,
                counts,
            } => {
                write!(f, "room for {fit} of {needed} replicas")?;
                write_counts(f, counts)
            }
            GangWait::Network {
                scope,
                needed,
                best,
                group,
                whole_nodes,
            } => {
                let (level, scope_name) = match scope {
                    NetworkScope::SameNode => ("node", "same-node"),
                    NetworkScope::SameLeaf => ("leaf", "same-leaf"),
                    NetworkScope::SameSpine => ("spine", "same-spine"),
                    NetworkScope::Any => ("domain", "any"),
                };
                if *whole_nodes {
                    write!(
                        f,
                        "{scope_name} required: largest {level} ({group}) has {best} of {needed} needed nodes free"
                    )
                } else {
                    write!(
                        f,
                        "{scope_name} required: largest {level} ({group}) has room for {best} of {needed} replicas"
                    )
                }
            }
            GangWait::CrossDomainNotAllowed {
                needed,
                best,
                domain,
            } => write!(
                f,
                "largest domain ({domain}) has room for {best} of {needed} replicas and the job does not allow crossing domains"
            ),
            GangWait::OverBudget {
                needed_gbps,
                budget_gbps: Some(budget),
            } => write!(
                f,
                "a split across domains needs {needed_gbps} Gb/s between domains, over the job's budget of {budget} Gb/s"
            ),
            GangWait::OverBudget {
                needed_gbps,
                budget_gbps: None,
            } => write!(
                f,
                "a split across domains needs {needed_gbps} Gb/s between domains and the job declares no inter-domain bandwidth budget"
            ),
            GangWait::DomainLink {
                a,
                b,
                needed_gbps,
                link_gbps: Some(link),
            } => write!(
                f,
                "a split across domains needs {needed_gbps} Gb/s between {a} and {b}, whose link carries {link} Gb/s"
            ),
            GangWait::DomainLink {
                a,
                b,
                needed_gbps,
                link_gbps: None,
            } => write!(
                f,
                "a split across domains needs {needed_gbps} Gb/s between {a} and {b}, which have no configured link"
            ),
        }
    }
}

impl std::error::Error for GangWait {}

/// One replica's claim.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReplicaClaim {
    pub claim: Claim,
    pub node_name: String,
}

/// Where a gang goes and why.
#[derive(Debug, Clone, PartialEq)]
pub struct GangPlacement {
    /// One claim per placed replica (fewer than asked only for elastic jobs).
    pub replicas: Vec<ReplicaClaim>,
    /// The worst hop between two replicas.
    pub hop: Hop,
    /// The group the gang was fitted into, e.g. `leaf cid:acme/r/dc-a spine-1/leaf-3`.
    pub group: String,
    /// Domains used, best first (empty when nodes carry no CIDs).
    pub domains: Vec<Cid>,
    /// Inter-domain traffic the split implies (0 within one domain).
    pub inter_domain_gbps: f64,
    /// Worst link rank inside any replica (0: single GPUs or no link data).
    pub worst_link_rank: u32,
    /// GPUs granted with a GPUDirect-capable path to a healthy NIC.
    pub gdr_gpus: u32,
    /// Nodes that could hold at least one replica.
    pub feasible_nodes: u32,
}

impl GangPlacement {
    pub fn nodes(&self) -> impl Iterator<Item = NodeId> + '_ {
        self.replicas.iter().map(|r| r.claim.node)
    }
}

impl fmt::Display for GangPlacement {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut nodes: Vec<NodeId> = self.nodes().collect();
        nodes.sort();
        nodes.dedup();
        write!(
            f,
            "{} replicas on {} nodes, worst hop {}, in {} ({} feasible nodes)",
            self.replicas.len(),
            nodes.len(),
            self.hop,
            self.group,
            self.feasible_nodes
        )?;
        if self.worst_link_rank > 0 {
            write!(f, ", worst GPU link rank {}", self.worst_link_rank)?;
        }
        if self.gdr_gpus > 0 {
            write!(f, ", {} GPUs with GPUDirect RDMA", self.gdr_gpus)?;
        }
        if self.inter_domain_gbps > 0.0 {
            write!(f, ", {} Gb/s between domains", self.inter_domain_gbps)?;
        }
        Ok(())
    }
}

/// Cached (worst link rank, GPUDirect GPUs) for single replicas of 1, 2, 4 and 8 GPUs.
type QualitySlots = [Option<(u32, u32)>; 4];

/// What the scan reads about one node: a compact copy kept in node order.
#[derive(Debug, Clone, Default)]
struct NodeFacts {
    /// The node takes the fast path for whole GPUs: one model, no MIG, at most 64 GPUs.
    simple: bool,
    cordoned: bool,
    model: Option<ModelId>,
    /// Bit `i`: GPU `i` is free for a whole-GPU grant.
    free_mask: u64,
    cpu_left: u64,
    memory_left: u64,
    degraded_gpus: u16,
    has_links: bool,
    leaf: u32,
    spine: u32,
    domain: u32,
    name_rank: u32,
    /// Link state known for the node.
    network_known: bool,
    nic_usable: bool,
    impaired_nics: u16,
    gdr_mask: u64,
    /// The lowest link rank between any two of the node's GPUs: no set of two or more can
    /// be joined better.
    link_floor: u16,
}

/// Interned fabric positions and the per-node summary the gang planner scans.
///
/// Keep it in step with the cluster: call [`FabricIndex::refresh`] after every change to a
/// node (allocate, release, cordon, health), or [`FabricIndex::sync`] to check them all.
#[derive(Debug)]
pub struct FabricIndex {
    facts: Vec<NodeFacts>,
    /// Per node, for single replicas of 1, 2, 4 and 8 whole GPUs of any model: the worst
    /// link rank and GPUDirect GPU count of the best set. It depends only on the node's free
    /// GPUs, so it holds until the node is refreshed; one queue pass reuses it across jobs.
    quality: Mutex<Vec<QualitySlots>>,
    versions: Vec<u64>,
    /// Per leaf: (spine, name).
    leaves: Vec<(u32, String)>,
    /// Per spine: (domain, name).
    spines: Vec<(u32, String)>,
    /// Per domain: CID (None for nodes without one) and price.
    domains: Vec<(Option<Cid>, Option<f64>)>,
    /// The capacity index: nodes on the whole-GPU fast path bucketed by free whole GPUs
    /// (`buckets[k]`: exactly `k` free), the rest in `buckets[IRREGULAR]`. A whole-GPU
    /// placement visits only the buckets that can hold it. Behind a lock because a walk
    /// fills in the slots' link quality as it goes.
    buckets: Mutex<Vec<Bucket>>,
    /// Per node: (bucket, position in it).
    slots: Vec<(u8, u32)>,
    /// Free whole GPUs over all indexed nodes.
    free_total: u64,
    /// Place with the plain scan only (the reference the capacity index is checked against).
    scan_only: bool,
}

/// The bucket of nodes off the fast path: several models, MIG, or more than 64 GPUs.
const IRREGULAR: usize = 65;

/// One bucket of the capacity index: the nodes' slots, and beside them (in the same order)
/// their link quality, which only scoring reads: kept apart, the slots a walk checks stay
/// small enough (40 bytes) to stay in cache across the walks of one queue pass.
#[derive(Debug, Clone, Default)]
struct Bucket {
    slots: Vec<Slot>,
    /// The nodes' entries of the quality cache, copied here as a walk reads them so the next
    /// walk finds them in bucket order.
    quality: Vec<QualitySlots>,
    /// Per domain: slots not cordoned, and of those the ones without a usable NIC. With
    /// `floors`, they let a walk count a bucket whose nodes all fit and none can win.
    open: Vec<u32>,
    open_nic_down: Vec<u32>,
    floors: Floors,
}

impl Bucket {
    fn push(&mut self, slot: Slot) {
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
        self.floors.add(&slot);
        self.slots.push(slot);
        self.quality.push([None; 4]);
    }

    fn swap_remove(&mut self, pos: usize) {
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
            self.floors = Floors::EMPTY;
        }
    }
}

/// What the capacity index keeps per node, inline so a bucket walk touches one array.
#[derive(Debug, Clone, Copy)]
struct Slot {
    node: u32,
    cpu_left: u64,
    memory_left: u64,
    /// [`Slot::CORDONED`], [`Slot::NIC_DOWN`], [`Slot::HAS_LINKS`].
    flags: u8,
    model: Option<ModelId>,
    domain: u32,
    /// Impaired NICs plus degraded GPUs, as [`NodeScore`] counts them.
    health: u32,
    name_rank: u32,
    link_floor: u16,
}

impl Slot {
    const CORDONED: u8 = 1;
    /// Link state known and no NIC usable.
    const NIC_DOWN: u8 = 2;
    const HAS_LINKS: u8 = 4;

    fn of(node: u32, f: &NodeFacts) -> Slot {
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
            link_floor: f.link_floor,
        }
    }

    fn cordoned(&self) -> bool {
        self.flags & Slot::CORDONED != 0
    }

    fn nic_down(&self) -> bool {
        self.flags & Slot::NIC_DOWN != 0
    }

    fn has_links(&self) -> bool {
        self.flags & Slot::HAS_LINKS != 0
    }
}

/// Lower bounds over a bucket's slots. Exact after a walk of the bucket; a node leaving the
/// bucket does not raise them, so they may be lower than the slots' true minimum, which only
/// makes [`place_single`] walk a bucket it could have counted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Floors {
    cpu_left: u64,
    memory_left: u64,
    health: u32,
    link: u16,
    /// The one GPU model of the slots that have one; `mixed` when they differ.
    model: Option<ModelId>,
    mixed_models: bool,
}

impl Floors {
    const EMPTY: Floors = Floors {
        cpu_left: u64::MAX,
        memory_left: u64::MAX,
        health: u32::MAX,
        link: u16::MAX,
        model: None,
        mixed_models: false,
    };

    fn add(&mut self, s: &Slot) {
        self.cpu_left = self.cpu_left.min(s.cpu_left);
        self.memory_left = self.memory_left.min(s.memory_left);
        self.health = self.health.min(s.health);
        self.link = self.link.min(s.link_floor);
        if let Some(m) = s.model {
            match self.model {
                None => self.model = Some(m),
                Some(seen) if seen != m => self.mixed_models = true,
                Some(_) => {}
            }
        }
    }
}

impl Default for Floors {
    fn default() -> Floors {
        Floors::EMPTY
    }
}

fn bucket_of(f: &NodeFacts) -> usize {
    if f.simple {
        f.free_mask.count_ones() as usize
    } else {
        IRREGULAR
    }
}

impl Clone for FabricIndex {
    fn clone(&self) -> FabricIndex {
        FabricIndex {
            facts: self.facts.clone(),
            quality: Mutex::new(self.quality_cache().clone()),
            versions: self.versions.clone(),
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

/// The lowest rank [`set_rank`] can give a set of two or more of the node's GPUs.
fn link_floor(node: &Node) -> u16 {
    let gpus = node.gpus().len();
    if !node.has_links() || gpus < 2 {
        return 0;
    }
    let mut floor = u32::MAX;
    for a in 0..gpus {
        for b in 0..gpus {
            if a != b {
                floor = floor.min(node.link_rank(a, b).unwrap_or(0));
            }
        }
    }
    u16::try_from(floor).unwrap_or(u16::MAX)
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
        link_floor: link_floor(node),
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
            versions: Vec::with_capacity(cluster.len()),
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
    fn place(
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
        self.versions.push(node.version());
        self.slots.push((0, 0));
        self.bucket(i);
    }

    /// Files node `i` under its current facts.
    fn bucket(&mut self, i: usize) {
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
        self.versions[node.index()] = n.version();
        if let Some(q) = self.quality_cache().get_mut(node.index()) {
            *q = [None; 4];
        }
    }

    fn bucket_lists(&self) -> MutexGuard<'_, Vec<Bucket>> {
        self.buckets
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn quality_cache(&self) -> MutexGuard<'_, Vec<QualitySlots>> {
        self.quality
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Refreshes every node whose state changed since it was indexed; returns how many.
    pub fn sync(&mut self, cluster: &Cluster, links: &LinkState) -> usize {
        let mut changed = 0;
        for i in 0..self.facts.len().min(cluster.len()) {
            let id = NodeId(i as u32);
            if cluster.node(id).map(Node::version) != Some(self.versions[i]) {
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

    fn leaf_name(&self, leaf: u32) -> String {
        let (spine, name) = &self.leaves[leaf as usize];
        format!("{}/{}", self.spine_name(*spine), name)
    }

    fn spine_name(&self, spine: u32) -> String {
        let (domain, name) = &self.spines[spine as usize];
        format!("{} {}", self.domain_name(*domain), name)
    }

    fn domain_name(&self, domain: u32) -> String {
        self.domains[domain as usize]
            .0
            .as_ref()
            .map_or_else(|| "(no domain)".to_string(), ToString::to_string)
    }
}

/// A feasible node's rank inside the chosen group. The field order is the policy: fewer
/// impaired NICs and degraded GPUs, then the best-joined GPUs (NVLink before PCIe), then
/// more GPUs with GPUDirect RDMA, then the least free capacity left behind (best fit), then
/// the node name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct NodeScore {
    pub health: Reverse<u32>,
    pub link: Reverse<u32>,
    pub gdr: u32,
    pub leftover: Reverse<u32>,
    pub name: Reverse<u32>,
}

/// A group's rank among those at the chosen level that hold the gang: the preferred domain
/// (data gravity, price, capacity), then the least capacity left behind, then a stable id.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct GroupScore {
    pub domain: Reverse<u32>,
    pub leftover: Reverse<u32>,
    pub id: Reverse<u32>,
}

/// A domain's preference. The field order is the policy: the least time pulling the job's
/// data in, then the lowest price per GPU hour, then the most free capacity, then the name.
#[derive(Debug, Clone, Copy, PartialEq, PartialOrd)]
pub struct DomainScore {
    pub data_pull_s: Reverse<f64>,
    pub price: Reverse<f64>,
    pub fit: u32,
}

/// Options that change where a gang may go.
#[derive(Debug, Clone, Copy, Default)]
pub struct GangOptions<'a> {
    /// Nodes that must not be used (`true` at a node's position): another gang's reservation.
    pub avoid: Option<&'a [bool]>,
}

/// The request resolved against one cluster.
struct Want<'a> {
    request: &'a Request,
    models: Option<Vec<ModelId>>,
    nvlink_required: bool,
    rdma_required: bool,
    max_price: Option<f64>,
}

impl Want<'_> {
    fn model_ok(&self, model: ModelId) -> bool {
        self.models.as_ref().is_none_or(|m| m.contains(&model))
    }
}

fn resolve<'a>(cluster: &Cluster, gang: &'a GangRequest) -> Want<'a> {
    let models = (!gang.request.models().is_empty()).then(|| {
        gang.request
            .models()
            .iter()
            .filter_map(|m| cluster.model_id(m))
            .collect()
    });
    Want {
        request: &gang.request,
        models,
        nvlink_required: gang.topology.nvlink == Some(Requirement::Required),
        rdma_required: gang.topology.rdma_required,
        max_price: gang.placement.max_price_per_gpu_hour,
    }
}

/// How many replicas a resource bound allows.
fn bound(left: u64, each: u64) -> u64 {
    left.checked_div(each).unwrap_or(u64::MAX)
}

/// Replicas of `want` that node `i` can hold now (capped at `cap`), or the first reason
/// it holds none.
fn node_fit(
    cluster: &Cluster,
    index: &FabricIndex,
    want: &Want<'_>,
    i: usize,
    cap: u32,
    options: &GangOptions<'_>,
) -> Result<u32, Reject> {
    let f = &index.facts[i];
    if f.cordoned {
        return Err(Reject::Cordoned);
    }
    if options
        .avoid
        .is_some_and(|a| a.get(i).copied().unwrap_or(false))
    {
        return Err(Reject::Reserved);
    }
    let node = &cluster.nodes()[i];
    if !want.request.allowed().is_empty() && !node.within(want.request.allowed()) {
        return Err(Reject::OutsideAllowed);
    }
    if let Some(max) = want.max_price {
        match index.domains[f.domain as usize].1 {
            Some(p) if p <= max => {}
            _ => return Err(Reject::Price),
        }
    }
    if want.rdma_required && f.network_known && !f.nic_usable {
        return Err(Reject::RdmaDown);
    }
    let req = want.request;
    let by_host = bound(f.cpu_left, req.cpu_milli()).min(bound(f.memory_left, req.memory_mib()));
    let gpu_fit = match req.gpu() {
        GpuDemand::Exclusive { count } if f.simple && !(want.nvlink_required && *count >= 2) => {
            if let Some(model) = f.model
                && !want.model_ok(model)
            {
                return Err(Reject::ModelNotAllowed);
            }
            u64::from(f.free_mask.count_ones() / count)
        }
        GpuDemand::None => u64::MAX,
        _ => {
            let plans = plan_node(node, want, cap as usize);
            if plans.is_empty() {
                return Err(gpu_reject(node, want));
            }
            plans.len() as u64
        }
    };
    if gpu_fit == 0 {
        return Err(Reject::FewerFreeGpus);
    }
    if by_host == 0 {
        return Err(if bound(f.cpu_left, req.cpu_milli()) == 0 {
            Reject::NotEnoughCpu
        } else {
            Reject::NotEnoughMemory
        });
    }
    Ok(gpu_fit.min(by_host).min(u64::from(cap)) as u32)
}

/// The reason a node's GPUs hold no replica.
fn gpu_reject(node: &Node, want: &Want<'_>) -> Reject {
    if !node.gpus().iter().any(|g| want.model_ok(g.model)) {
        return Reject::ModelNotAllowed;
    }
    match want.request.gpu() {
        GpuDemand::Exclusive { .. } if want.nvlink_required => Reject::NoNvlinkSet,
        GpuDemand::Exclusive { .. } | GpuDemand::None => Reject::FewerFreeGpus,
        GpuDemand::Shared { .. } => Reject::NoShareRoom,
        GpuDemand::Mig { .. } => Reject::NoMigSlots,
    }
}

/// Free whole GPUs of `node` usable by `want`, by position.
fn free_positions(node: &Node, want: &Want<'_>) -> Vec<usize> {
    node.gpus()
        .iter()
        .enumerate()
        .filter(|(_, g)| g.fully_free() && want.model_ok(g.model))
        .map(|(i, _)| i)
        .collect()
}

/// The worst link rank inside a set of GPU positions (0 when unknown or a single GPU).
fn set_rank(node: &Node, set: &[usize]) -> u32 {
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
fn plan_node(node: &Node, want: &Want<'_>, max: usize) -> Vec<Vec<GpuGrant>> {
    let req = want.request;
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
            let mut free = free_positions(node, want);
            while plans.len() < by_host {
                let Some((set, rank)) = best_set(node, &free, count) else {
                    break;
                };
                let nvlinked = count <= 1 || (rank > 0 && rank < LinkPath::Pix.rank());
                if want.nvlink_required && !nvlinked {
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
                        want.model_ok(g.model)
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
                        .filter(|_| g.usable() && want.model_ok(g.model))
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

/// Nodes that can hold replicas, with how many, and the per-reason counts of the rest.
struct Scan {
    fits: Vec<(u32, u32)>,
    counts: Vec<(Reject, u32)>,
}

fn scan(
    cluster: &Cluster,
    index: &FabricIndex,
    want: &Want<'_>,
    cap: u32,
    options: &GangOptions<'_>,
) -> Scan {
    let mut fits = Vec::new();
    let mut raw = [0u32; REJECTS.len()];
    for i in 0..index.facts.len().min(cluster.len()) {
        match node_fit(cluster, index, want, i, cap, options) {
            Ok(k) if k > 0 => fits.push((i as u32, k)),
            Ok(_) => raw[Reject::FewerFreeGpus as usize] += 1,
            Err(r) => raw[r as usize] += 1,
        }
    }
    let mut counts: Vec<(Reject, u32)> = REJECTS
        .iter()
        .zip(raw)
        .filter(|(_, n)| *n > 0)
        .map(|(r, n)| (*r, n))
        .collect();
    counts.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
    Scan { fits, counts }
}

/// The score of node `i` if it holds `take` replicas.
fn node_score(
    cluster: &Cluster,
    index: &FabricIndex,
    want: &Want<'_>,
    i: usize,
    fit: u32,
) -> NodeScore {
    node_score_in(&mut index.quality_cache(), cluster, index, want, i, fit)
}

/// [`node_score`] with the quality cache already locked.
fn node_score_in(
    cache: &mut [QualitySlots],
    cluster: &Cluster,
    index: &FabricIndex,
    want: &Want<'_>,
    i: usize,
    fit: u32,
) -> NodeScore {
    let f = &index.facts[i];
    let (link, gdr) = node_quality(cache, cluster, index, want, i, fit as usize);
    let used = fit * want.request.gpu_count();
    NodeScore {
        health: Reverse(u32::from(f.impaired_nics) + u32::from(f.degraded_gpus)),
        link: Reverse(link),
        gdr,
        leftover: Reverse(f.free_mask.count_ones().saturating_sub(used)),
        name: Reverse(f.name_rank),
    }
}

/// Worst link rank and GPUDirect-capable GPUs of the plan for `take` replicas on node `i`.
fn node_quality(
    cache: &mut [QualitySlots],
    cluster: &Cluster,
    index: &FabricIndex,
    want: &Want<'_>,
    i: usize,
    take: usize,
) -> (u32, u32) {
    let f = &index.facts[i];
    let multi = want.request.gpu_count() >= 2;
    if !(want.rdma_required || multi && f.has_links) {
        return (0, 0);
    }
    let slot = match want.request.gpu() {
        GpuDemand::Exclusive { count }
            if take == 1
                && want.models.is_none()
                && !want.nvlink_required
                && matches!(count, 1 | 2 | 4 | 8) =>
        {
            Some(count.trailing_zeros() as usize)
        }
        _ => None,
    };
    if let Some(slot) = slot
        && let Some((rank, gdr)) = cache.get(i).and_then(|q| q[slot])
    {
        return (rank, if want.rdma_required { gdr } else { 0 });
    }
    let node = &cluster.nodes()[i];
    let plans = plan_node(node, want, take);
    let mut worst = 0;
    let mut gdr = 0;
    for plan in &plans {
        let set: Vec<usize> = plan.iter().map(|g| g.gpu as usize).collect();
        worst = worst.max(set_rank(node, &set));
        gdr += set
            .iter()
            .filter(|g| **g < 64 && f.gdr_mask & (1 << **g) != 0)
            .count() as u32;
    }
    if let Some(slot) = slot
        && let Some(q) = cache.get_mut(i)
    {
        q[slot] = Some((worst, gdr));
    }
    (worst, if want.rdma_required { gdr } else { 0 })
}

/// Domains ranked best first by [`DomainScore`]; returns each domain id's rank position.
fn domain_ranks(
    index: &FabricIndex,
    catalog: &DomainCatalog,
    placement: &PlacementConstraints,
    domain_fit: &[u32],
) -> Vec<u32> {
    let mut order: Vec<usize> = (0..index.domains.len()).collect();
    let score = |d: usize| {
        let (cid, price) = &index.domains[d];
        DomainScore {
            data_pull_s: Reverse(
                cid.as_ref()
                    .map_or(0.0, |c| catalog.data_pull_seconds(c, placement)),
            ),
            price: Reverse(price.unwrap_or(0.0)),
            fit: domain_fit[d],
        }
    };
    order.sort_by(|a, b| {
        score(*b)
            .partial_cmp(&score(*a))
            .unwrap_or(std::cmp::Ordering::Equal)
            .then_with(|| {
                index
                    .domain_name(*a as u32)
                    .cmp(&index.domain_name(*b as u32))
            })
    });
    let mut rank = vec![0u32; index.domains.len()];
    for (r, d) in order.into_iter().enumerate() {
        rank[d] = r as u32;
    }
    rank
}

/// Places a training gang (all replicas or none; elastic jobs at least `min_replicas`) or
/// spreads inference replicas. Nothing is allocated: pass the result to [`allocate_gang`].
pub fn place_gang(
    cluster: &Cluster,
    index: &FabricIndex,
    catalog: &DomainCatalog,
    gang: &GangRequest,
    options: &GangOptions<'_>,
) -> Result<GangPlacement, GangWait> {
    if !index.scan_only {
        let want = resolve(cluster, gang);
        if single_replica_whole_gpus(gang, &want) {
            if let Some(placed) = place_single(cluster, index, catalog, gang, &want, options) {
                return Ok(placed);
            }
        } else if let Some(scan) = scan_buckets(cluster, index, &want, gang.replicas, options)
            && !scan.fits.is_empty()
            && let Ok(placed) = place_scanned(cluster, index, catalog, gang, &want, scan)
        {
            return Ok(placed);
        }
    }
    place_gang_scan(cluster, index, catalog, gang, options)
}

/// [`place_gang`] for callers that only need to know whether and where the gang fits, not
/// why it does not: a refusal skips the full scan that explains a wait.
pub(crate) fn place_gang_if_fits(
    cluster: &Cluster,
    index: &FabricIndex,
    catalog: &DomainCatalog,
    gang: &GangRequest,
    options: &GangOptions<'_>,
) -> Option<GangPlacement> {
    if index.scan_only {
        return place_gang_scan(cluster, index, catalog, gang, options).ok();
    }
    let want = resolve(cluster, gang);
    if single_replica_whole_gpus(gang, &want) {
        return place_single(cluster, index, catalog, gang, &want, options);
    }
    match scan_buckets(cluster, index, &want, gang.replicas, options) {
        Some(scan) if scan.fits.is_empty() => None,
        Some(scan) => place_scanned(cluster, index, catalog, gang, &want, scan).ok(),
        None => place_gang_scan(cluster, index, catalog, gang, options).ok(),
    }
}

/// An upper bound on the replicas of a whole-GPU gang the cluster could hold if some GPUs were
/// freed: per node, its fully free GPUs plus those freed there, divided by the GPUs a replica
/// takes. CPU, memory, links, models and cordons are ignored, so it never undercounts: while
/// it stays below the gang's minimum, no placement attempt can succeed. Lets a reservation
/// skip projecting futures in which the gang cannot fit.
#[derive(Debug, Clone)]
pub(crate) struct ReplicaBound {
    per_replica: u32,
    total: u64,
    /// Nodes whose count was raised: their fully free GPUs, freed ones included.
    raised: HashMap<u32, u32>,
}

impl ReplicaBound {
    /// `None` for gangs not made of whole GPUs (shares, MIG, no GPU): no cheap bound.
    pub(crate) fn new(cluster: &Cluster, index: &FabricIndex, gang: &GangRequest) -> Option<Self> {
        let GpuDemand::Exclusive { count } = *gang.request.gpu() else {
            return None;
        };
        if count == 0 {
            return None;
        }
        let per = u64::from(count);
        let buckets = index.bucket_lists();
        let mut total: u64 = buckets
            .iter()
            .take(IRREGULAR)
            .enumerate()
            .map(|(free, b)| b.slots.len() as u64 * (free as u64 / per))
            .sum();
        total += buckets[IRREGULAR]
            .slots
            .iter()
            .filter_map(|s| cluster.node(NodeId(s.node)))
            .map(|n| fully_free_gpus(n) as u64 / per)
            .sum::<u64>();
        Some(ReplicaBound {
            per_replica: count,
            total,
            raised: HashMap::new(),
        })
    }

    /// Counts `gpus` more GPUs of `node` as free.
    pub(crate) fn free(&mut self, cluster: &Cluster, node: NodeId, gpus: u32) {
        let Some(n) = cluster.node(node) else {
            return;
        };
        let free = self
            .raised
            .entry(node.0)
            .or_insert_with(|| fully_free_gpus(n));
        self.total -= u64::from(*free / self.per_replica);
        *free = free.saturating_add(gpus);
        self.total += u64::from(*free / self.per_replica);
    }

    /// The most replicas that could fit.
    pub(crate) fn replicas(&self) -> u64 {
        self.total
    }
}

fn fully_free_gpus(node: &Node) -> u32 {
    node.gpus().iter().filter(|g| g.fully_free()).count() as u32
}

/// One training replica of whole GPUs, no place or price limits: [`place_single`]'s jobs.
fn single_replica_whole_gpus(gang: &GangRequest, want: &Want<'_>) -> bool {
    let GpuDemand::Exclusive { count } = *gang.request.gpu() else {
        return false;
    };
    gang.kind != JobKind::Inference
        && gang.replicas == 1
        && gang.min_replicas <= 1
        && count > 0
        && !(want.nvlink_required && count >= 2)
        && gang.request.allowed().is_empty()
        && want.max_price.is_none()
}

/// The fast path through the capacity index for the commonest job: one training replica of
/// whole GPUs. It decides exactly as the scan would: the feasible nodes are those the scan
/// accepts (nodes in buckets with fewer free GPUs than asked never are), the winner is the
/// same maximum of (domain rank, [`NodeScore`]), and `feasible_nodes` the same count. `None`
/// when the job is not of that kind or nothing fits; the scan then explains the wait.
fn place_single(
    cluster: &Cluster,
    index: &FabricIndex,
    catalog: &DomainCatalog,
    gang: &GangRequest,
    want: &Want<'_>,
    options: &GangOptions<'_>,
) -> Option<GangPlacement> {
    let GpuDemand::Exclusive { count } = *gang.request.gpu() else {
        return None;
    };
    let cpu = gang.request.cpu_milli();
    let memory = gang.request.memory_mib();
    let avoided = |i: u32| {
        options
            .avoid
            .is_some_and(|a| a.get(i as usize).copied().unwrap_or(false))
    };
    let multi = count >= 2;
    // No node scores better on health, links and GPUDirect than this.
    let ideal = (
        Reverse(0),
        Reverse(0),
        if want.rdma_required { count } else { 0 },
    );
    let mut cache = index.quality_cache();
    let mut domain_fit = vec![0u32; index.domains.len()];
    // Per domain: the best node's score, id and bucket.
    let mut best: Vec<Option<(NodeScore, u32, usize)>> = vec![None; index.domains.len()];
    let mut feasible = 0u32;
    let whole = (count as usize).min(IRREGULAR);
    // The quality-cache slot this request reads, when it reads one (as in `node_quality`).
    let quality_slot =
        (want.models.is_none() && !want.nvlink_required && count.is_power_of_two() && count <= 8)
            .then(|| count.trailing_zeros() as usize);
    let mut buckets = index.bucket_lists();
    // Avoided nodes that would otherwise count, as (bucket, domain): a counted bucket
    // subtracts them.
    let mut avoided_open: Vec<(usize, usize)> = Vec::new();
    if let Some(avoid) = options.avoid {
        for (i, _) in avoid.iter().enumerate().filter(|(_, a)| **a) {
            if let Some(&(b, pos)) = index.slots.get(i)
                && let Some(s) = buckets[b as usize].slots.get(pos as usize)
                && !s.cordoned()
                && !(want.rdma_required && s.nic_down())
            {
                avoided_open.push((b as usize, s.domain as usize));
            }
        }
    }
    let all_in_cluster = index.len() <= cluster.len();
    let mut counts = vec![0u32; index.domains.len()];
    for (free, bucket) in buckets.iter_mut().enumerate().take(IRREGULAR).skip(whole) {
        if bucket.slots.is_empty() {
            continue;
        }
        // Count the bucket without walking it when every node in it passes the checks that
        // depend on the request, and none can beat its domain's best from a bucket with
        // less left over: the floors bound what any of its nodes can score.
        let floors = bucket.floors;
        let all_fit = all_in_cluster
            && cpu <= floors.cpu_left
            && memory <= floors.memory_left
            && (want.models.is_none()
                || (!floors.mixed_models && floors.model.is_none_or(|m| want.model_ok(m))));
        if all_fit {
            let ceiling = (
                Reverse(floors.health),
                Reverse(if multi { u32::from(floors.link) } else { 0 }),
                if want.rdma_required { count } else { 0 },
            );
            counts.iter_mut().for_each(|c| *c = 0);
            for (d, open) in bucket.open.iter().enumerate() {
                counts[d] = open
                    - if want.rdma_required {
                        bucket.open_nic_down[d]
                    } else {
                        0
                    };
            }
            for (b, d) in &avoided_open {
                if *b == free {
                    counts[*d] -= 1;
                }
            }
            let beaten = counts.iter().enumerate().all(|(d, n)| {
                *n == 0
                    || best[d].is_some_and(|(b, _, b_free)| {
                        b_free < free && (b.health, b.link, b.gdr) >= ceiling
                    })
            });
            if beaten {
                for (d, n) in counts.iter().enumerate() {
                    feasible += n;
                    domain_fit[d] += n;
                }
                continue;
            }
        }
        let mut floors = Floors::EMPTY;
        let Bucket { slots, quality, .. } = bucket;
        for (s, quality) in slots.iter().zip(quality.iter_mut()) {
            floors.add(s);
            // The checks of `node_fit`, in its order, for a node with enough free GPUs.
            if s.cordoned()
                || avoided(s.node)
                || (want.rdma_required && s.nic_down())
                || s.model.is_some_and(|m| !want.model_ok(m))
                || (cpu > 0 && s.cpu_left < cpu)
                || (memory > 0 && s.memory_left < memory)
                || s.node as usize >= cluster.len()
            {
                continue;
            }
            let d = s.domain as usize;
            feasible += 1;
            domain_fit[d] += 1;
            // Skip scoring a node that cannot win: worse health, or a fuller bucket (more
            // left over) behind a node nothing beats on health, links and GPUDirect.
            if let Some((b, _, b_free)) = best[d]
                && (Reverse(s.health) < b.health
                    || (b_free < free && (b.health, b.link, b.gdr) == ideal))
            {
                continue;
            }
            let (link, gdr) = if !(want.rdma_required || multi && s.has_links()) {
                (0, 0)
            } else if let Some(q) = quality_slot {
                let (rank, gdr) = match quality[q] {
                    Some(known) => known,
                    None => {
                        node_quality(&mut cache, cluster, index, want, s.node as usize, 1);
                        let known = cache[s.node as usize][q].unwrap_or_default();
                        quality[q] = Some(known);
                        known
                    }
                };
                (rank, if want.rdma_required { gdr } else { 0 })
            } else {
                node_quality(&mut cache, cluster, index, want, s.node as usize, 1)
            };
            let score = NodeScore {
                health: Reverse(s.health),
                link: Reverse(link),
                gdr,
                leftover: Reverse(free as u32 - count),
                name: Reverse(s.name_rank),
            };
            if best[d].is_none_or(|(b, _, _)| score > b) {
                best[d] = Some((score, s.node, free));
            }
        }
        bucket.floors = floors;
    }
    for s in &buckets[IRREGULAR].slots {
        if (s.node as usize) < cluster.len()
            && node_fit(cluster, index, want, s.node as usize, 1, options).is_ok_and(|k| k > 0)
        {
            let d = s.domain as usize;
            feasible += 1;
            domain_fit[d] += 1;
            let score = node_score_in(&mut cache, cluster, index, want, s.node as usize, 1);
            if best[d].is_none_or(|(b, _, _)| score > b) {
                best[d] = Some((score, s.node, IRREGULAR));
            }
        }
    }
    drop(buckets);
    drop(cache);
    if feasible == 0 {
        return None;
    }
    let ranks = domain_ranks(index, catalog, &gang.placement, &domain_fit);
    let (_, node) = best
        .iter()
        .enumerate()
        .filter_map(|(d, b)| b.map(|(score, i, _)| ((Reverse(ranks[d]), score), i)))
        .max_by_key(|(key, _)| *key)?;
    finish(
        cluster,
        index,
        want,
        vec![(node, 1)],
        Hop::SameNode,
        format!("node {}", cluster.nodes()[node as usize].name()),
        0.0,
        feasible,
    )
    .ok()
}

/// The plain scan over every node: the general planner, and the reference the capacity
/// index is checked against.
fn place_gang_scan(
    cluster: &Cluster,
    index: &FabricIndex,
    catalog: &DomainCatalog,
    gang: &GangRequest,
    options: &GangOptions<'_>,
) -> Result<GangPlacement, GangWait> {
    let want = resolve(cluster, gang);
    let scan = scan(cluster, index, &want, gang.replicas, options);
    place_scanned(cluster, index, catalog, gang, &want, scan)
}

/// Nodes that can hold replicas of a whole-GPU request, from the buckets with enough free
/// GPUs only, in node order as [`scan`] lists them. The reasons of the rest are not counted,
/// so only a success stands; a wait is explained by the full scan. `None` for other requests.
fn scan_buckets(
    cluster: &Cluster,
    index: &FabricIndex,
    want: &Want<'_>,
    cap: u32,
    options: &GangOptions<'_>,
) -> Option<Scan> {
    let GpuDemand::Exclusive { count } = *want.request.gpu() else {
        return None;
    };
    if count == 0 || (want.nvlink_required && count >= 2) {
        return None;
    }
    let buckets = index.bucket_lists();
    let mut fits = Vec::new();
    // From `count` free GPUs up, the irregular bucket last.
    for bucket in buckets.iter().skip((count as usize).min(IRREGULAR)) {
        for s in &bucket.slots {
            let i = s.node as usize;
            if i < cluster.len()
                && let Ok(k) = node_fit(cluster, index, want, i, cap, options)
                && k > 0
            {
                fits.push((s.node, k));
            }
        }
    }
    fits.sort_unstable();
    Some(Scan {
        fits,
        counts: Vec::new(),
    })
}

/// The planner after the scan: the level, the group and the nodes.
fn place_scanned(
    cluster: &Cluster,
    index: &FabricIndex,
    catalog: &DomainCatalog,
    gang: &GangRequest,
    want: &Want<'_>,
    scan: Scan,
) -> Result<GangPlacement, GangWait> {
    if scan.fits.is_empty() {
        return Err(GangWait::NoNode {
            nodes: index.len() as u32,
            counts: scan.counts,
        });
    }
    if gang.kind == JobKind::Inference {
        return spread(cluster, index, catalog, gang, want, &scan);
    }
    let fits = Fits::of(index, &scan);
    let scope_hop = if gang.network_required() {
        Hop::of_scope(gang.topology.network.scope)
    } else {
        Hop::CrossSpine
    };
    let loosest = if gang.placement.allow_cross_domain && scope_hop == Hop::CrossSpine {
        Hop::CrossDomain
    } else {
        scope_hop
    };
    let replicas = gang.replicas.min(fits.cap(loosest).0);
    if replicas < gang.min_replicas {
        return Err(wait_reason(
            cluster, index, gang, scan, &fits, scope_hop, loosest,
        ));
    }
    let ranks = domain_ranks(index, catalog, &gang.placement, &fits.domain);
    let hop = [
        Hop::SameNode,
        Hop::SameLeaf,
        Hop::SameSpine,
        Hop::CrossSpine,
        Hop::CrossDomain,
    ]
    .into_iter()
    .find(|h| *h <= loosest && fits.cap(*h).0 >= replicas)
    .expect("the loosest level holds `replicas` by construction");
    if hop == Hop::CrossDomain {
        return cross_domain(
            cluster, index, catalog, gang, want, &scan, &fits, &ranks, replicas,
        );
    }
    if hop == Hop::SameNode {
        // One node holds the whole gang: the preferred domain, then the best NodeScore.
        let (_, node) = scan
            .fits
            .iter()
            .filter(|(_, k)| *k >= replicas)
            .map(|(i, _)| {
                let f = &index.facts[*i as usize];
                (
                    (
                        Reverse(ranks[f.domain as usize]),
                        node_score(cluster, index, want, *i as usize, replicas),
                    ),
                    *i,
                )
            })
            .max_by_key(|(score, _)| *score)
            .expect("some node holds the gang at this level");
        return finish(
            cluster,
            index,
            want,
            vec![(node, replicas)],
            hop,
            format!("node {}", cluster.nodes()[node as usize].name()),
            0.0,
            scan.fits.len() as u32,
        );
    }
    let node_fit: HashMap<u32, u32> = if hop == Hop::SameNode {
        scan.fits.iter().copied().collect()
    } else {
        HashMap::new()
    };
    // The group at `hop` that holds the gang with the best GroupScore.
    let group_of = |i: u32| -> u32 {
        let f = &index.facts[i as usize];
        match hop {
            Hop::SameNode => i,
            Hop::SameLeaf => f.leaf,
            Hop::SameSpine => f.spine,
            _ => f.domain,
        }
    };
    let group_fit = |g: u32| -> u32 {
        match hop {
            Hop::SameNode => node_fit.get(&g).copied().unwrap_or(0),
            Hop::SameLeaf => fits.leaf[g as usize],
            Hop::SameSpine => fits.spine[g as usize],
            _ => fits.domain[g as usize],
        }
    };
    let mut best: Option<(GroupScore, u32)> = None;
    for (i, _) in &scan.fits {
        let g = group_of(*i);
        let fit = group_fit(g);
        if fit < replicas {
            continue;
        }
        let domain = index.facts[*i as usize].domain;
        let score = GroupScore {
            domain: Reverse(ranks[domain as usize]),
            leftover: Reverse(fit - replicas),
            id: Reverse(g),
        };
        if best.is_none_or(|(b, _)| score > b) {
            best = Some((score, g));
        }
    }
    let (_, group) = best.expect("some group holds the gang at this level");
    let members: Vec<(u32, u32)> = scan
        .fits
        .iter()
        .copied()
        .filter(|(i, _)| group_of(*i) == group)
        .collect();
    let chosen = fill(cluster, index, want, &members, replicas, &fits);
    let group_name = match hop {
        Hop::SameNode => format!("node {}", cluster.nodes()[group as usize].name()),
        Hop::SameLeaf => format!("leaf {}", index.leaf_name(group)),
        Hop::SameSpine => format!("spine {}", index.spine_name(group)),
        _ => format!("domain {}", index.domain_name(group)),
    };
    finish(
        cluster,
        index,
        want,
        chosen,
        hop,
        group_name,
        0.0,
        scan.fits.len() as u32,
    )
}

/// Picks the nodes (and replicas per node) inside a group: sub-groups with the most room
/// first, so the gang touches as few spines and leaves as possible, then nodes by
/// [`NodeScore`]. Node scores are computed only for the leaves actually used.
fn fill(
    cluster: &Cluster,
    index: &FabricIndex,
    want: &Want<'_>,
    members: &[(u32, u32)],
    replicas: u32,
    fits: &Fits,
) -> Vec<(u32, u32)> {
    let mut leaves: Vec<u32> = members
        .iter()
        .map(|(i, _)| index.facts[*i as usize].leaf)
        .collect();
    leaves.sort_unstable();
    leaves.dedup();
    leaves.sort_by_key(|l| {
        let spine = index.leaves[*l as usize].0;
        (
            Reverse(fits.spine[spine as usize]),
            spine,
            Reverse(fits.leaf[*l as usize]),
            *l,
        )
    });
    let mut chosen = Vec::new();
    let mut left = replicas;
    for leaf in leaves {
        if left == 0 {
            break;
        }
        let mut nodes: Vec<(NodeScore, u32, u32)> = members
            .iter()
            .filter(|(i, _)| index.facts[*i as usize].leaf == leaf)
            .map(|(i, k)| (node_score(cluster, index, want, *i as usize, *k), *i, *k))
            .collect();
        nodes.sort_by_key(|n| Reverse(n.0));
        for (_, i, k) in nodes {
            if left == 0 {
                break;
            }
            let take = k.min(left);
            chosen.push((i, take));
            left -= take;
        }
    }
    chosen
}

/// Builds the claims for `chosen` (node, replicas) and the placement around them.
#[allow(clippy::too_many_arguments)]
fn finish(
    cluster: &Cluster,
    index: &FabricIndex,
    want: &Want<'_>,
    chosen: Vec<(u32, u32)>,
    hop: Hop,
    group: String,
    inter_domain_gbps: f64,
    feasible: u32,
) -> Result<GangPlacement, GangWait> {
    let req = want.request;
    let mut replicas = Vec::new();
    let mut worst = 0;
    let mut gdr = 0;
    let mut domains: Vec<u32> = Vec::new();
    for (i, take) in chosen {
        let node = &cluster.nodes()[i as usize];
        let f = &index.facts[i as usize];
        if !domains.contains(&f.domain) {
            domains.push(f.domain);
        }
        let plans = plan_node(node, want, take as usize);
        for plan in plans {
            let set: Vec<usize> = plan.iter().map(|g| g.gpu as usize).collect();
            worst = worst.max(set_rank(node, &set));
            gdr += set
                .iter()
                .filter(|g| **g < 64 && f.gdr_mask & (1 << **g) != 0)
                .count() as u32;
            replicas.push(ReplicaClaim {
                claim: Claim {
                    node: NodeId(i),
                    cpu_milli: req.cpu_milli(),
                    memory_mib: req.memory_mib(),
                    gpus: plan,
                    affinity: req.affinity(),
                },
                node_name: node.name().to_string(),
            });
        }
    }
    Ok(GangPlacement {
        replicas,
        hop,
        group,
        domains: domains
            .into_iter()
            .filter_map(|d| index.domains[d as usize].0.clone())
            .collect(),
        inter_domain_gbps,
        worst_link_rank: worst,
        gdr_gpus: gdr,
        feasible_nodes: feasible,
    })
}

/// A gang split across domains: the domains with the most room first (so as few as
/// possible), each filled like a group. The split is judged by the traffic it implies:
/// every replica outside the largest part exchanges `replica_traffic_gbps` with it, so the
/// sum must fit the job's declared budget and each part's share must fit its link.
#[allow(clippy::too_many_arguments)]
fn cross_domain(
    cluster: &Cluster,
    index: &FabricIndex,
    catalog: &DomainCatalog,
    gang: &GangRequest,
    want: &Want<'_>,
    scan: &Scan,
    fits: &Fits,
    ranks: &[u32],
    replicas: u32,
) -> Result<GangPlacement, GangWait> {
    let mut order: Vec<u32> = (0..index.domains.len() as u32)
        .filter(|d| fits.domain[*d as usize] > 0)
        .collect();
    order.sort_by_key(|d| (Reverse(fits.domain[*d as usize]), ranks[*d as usize], *d));
    let mut parts: Vec<(u32, u32)> = Vec::new();
    let mut left = replicas;
    for d in order {
        if left == 0 {
            break;
        }
        let take = fits.domain[d as usize].min(left);
        parts.push((d, take));
        left -= take;
    }
    let outside: u32 = parts[1..].iter().map(|(_, k)| k).sum();
    let needed = f64::from(outside) * gang.replica_traffic_gbps;
    let budget = gang.placement.inter_domain_bandwidth_gbps;
    let mut refusal = None;
    if budget.is_none_or(|b| needed > b) {
        refusal = Some(GangWait::OverBudget {
            needed_gbps: needed,
            budget_gbps: budget,
        });
    } else {
        let main = &index.domains[parts[0].0 as usize].0;
        for (d, k) in &parts[1..] {
            let other = &index.domains[*d as usize].0;
            let traffic = f64::from(*k) * gang.replica_traffic_gbps;
            let link = match (main, other) {
                (Some(a), Some(b)) => catalog.link(a, b).map(|l| l.bandwidth_gbps),
                _ => None,
            };
            if link.is_none_or(|bw| traffic > bw) {
                refusal = Some(GangWait::DomainLink {
                    a: index.domain_name(parts[0].0),
                    b: index.domain_name(*d),
                    needed_gbps: traffic,
                    link_gbps: link,
                });
                break;
            }
        }
    }
    if let Some(refusal) = refusal {
        // An elastic gang may still start inside the best single domain.
        let best_domain = fits.domain.iter().copied().max().unwrap_or(0);
        if gang.min_replicas <= best_domain {
            let mut inside = gang.clone();
            inside.placement.allow_cross_domain = false;
            return place_gang(cluster, index, catalog, &inside, &GangOptions::default());
        }
        return Err(refusal);
    }
    let mut chosen = Vec::new();
    for (d, k) in &parts {
        let members: Vec<(u32, u32)> = scan
            .fits
            .iter()
            .copied()
            .filter(|(i, _)| index.facts[*i as usize].domain == *d)
            .collect();
        chosen.extend(fill(cluster, index, want, &members, *k, fits));
    }
    let names: Vec<String> = parts.iter().map(|(d, _)| index.domain_name(*d)).collect();
    finish(
        cluster,
        index,
        want,
        chosen,
        Hop::CrossDomain,
        format!("domains {}", names.join(" + ")),
        needed,
        scan.fits.len() as u32,
    )
}

/// Replica room per leaf, spine and domain, and the most on one node.
struct Fits {
    leaf: Vec<u32>,
    spine: Vec<u32>,
    domain: Vec<u32>,
    node_best: u32,
    node_best_id: u32,
}

impl Fits {
    fn of(index: &FabricIndex, scan: &Scan) -> Fits {
        let mut fits = Fits {
            leaf: vec![0; index.leaves.len()],
            spine: vec![0; index.spines.len()],
            domain: vec![0; index.domains.len()],
            node_best: 0,
            node_best_id: 0,
        };
        for (i, k) in &scan.fits {
            let f = &index.facts[*i as usize];
            fits.leaf[f.leaf as usize] += k;
            fits.spine[f.spine as usize] += k;
            fits.domain[f.domain as usize] += k;
            if *k > fits.node_best {
                fits.node_best = *k;
                fits.node_best_id = *i;
            }
        }
        fits
    }

    fn total(&self) -> u32 {
        self.domain.iter().sum()
    }

    /// The most replicas one group at `hop` holds, and that group's id.
    fn cap(&self, hop: Hop) -> (u32, u32) {
        let max_of = |v: &[u32]| {
            v.iter()
                .enumerate()
                .max_by_key(|(i, k)| (**k, Reverse(*i)))
                .map_or((0, 0), |(i, k)| (*k, i as u32))
        };
        match hop {
            Hop::SameNode => (self.node_best, self.node_best_id),
            Hop::SameLeaf => max_of(&self.leaf),
            Hop::SameSpine => max_of(&self.spine),
            Hop::CrossSpine => max_of(&self.domain),
            Hop::CrossDomain => (self.total(), 0),
        }
    }
}

/// Why a gang holding fewer than `min_replicas` anywhere it may go waits.
fn wait_reason(
    cluster: &Cluster,
    index: &FabricIndex,
    gang: &GangRequest,
    scan: Scan,
    fits: &Fits,
    scope_hop: Hop,
    loosest: Hop,
) -> GangWait {
    let needed = gang.min_replicas;
    let (best, group) = fits.cap(scope_hop);
    if scope_hop < Hop::CrossSpine && gang.network_required() {
        let name = match scope_hop {
            Hop::SameNode => cluster.nodes()[group as usize].name().to_string(),
            Hop::SameLeaf => index.leaf_name(group),
            _ => index.spine_name(group),
        };
        return GangWait::Network {
            scope: gang.topology.network.scope,
            needed,
            best,
            group: name,
            whole_nodes: fits.node_best <= 1,
        };
    }
    if loosest == Hop::CrossSpine && fits.total() >= needed {
        return GangWait::CrossDomainNotAllowed {
            needed,
            best,
            domain: index.domain_name(group),
        };
    }
    GangWait::TooFew {
        needed,
        fit: fits.total(),
        counts: scan.counts,
    }
}

/// Inference replicas: each goes where the fewest replicas of the job already share its
/// node, then leaf, then spine, so one failure takes out as few as possible; then the
/// preferred domain and [`NodeScore`].
fn spread(
    cluster: &Cluster,
    index: &FabricIndex,
    catalog: &DomainCatalog,
    gang: &GangRequest,
    want: &Want<'_>,
    scan: &Scan,
) -> Result<GangPlacement, GangWait> {
    let fits = Fits::of(index, scan);
    let total = fits.total();
    if total < gang.min_replicas {
        return Err(GangWait::TooFew {
            needed: gang.min_replicas,
            fit: total,
            counts: scan.counts.clone(),
        });
    }
    let ranks = domain_ranks(index, catalog, &gang.placement, &fits.domain);
    let replicas = gang.replicas.min(total);
    let mut room: Vec<u32> = scan.fits.iter().map(|(_, k)| *k).collect();
    let scores: Vec<NodeScore> = scan
        .fits
        .iter()
        .map(|(i, k)| node_score(cluster, index, want, *i as usize, *k))
        .collect();
    let mut on_node: HashMap<u32, u32> = HashMap::new();
    let mut on_leaf: HashMap<u32, u32> = HashMap::new();
    let mut on_spine: HashMap<u32, u32> = HashMap::new();
    for _ in 0..replicas {
        let pick = (0..scan.fits.len())
            .filter(|c| room[*c] > 0)
            .max_by_key(|c| {
                let i = scan.fits[*c].0;
                let f = &index.facts[i as usize];
                (
                    Reverse(on_node.get(&i).copied().unwrap_or(0)),
                    Reverse(on_leaf.get(&f.leaf).copied().unwrap_or(0)),
                    Reverse(on_spine.get(&f.spine).copied().unwrap_or(0)),
                    Reverse(ranks[f.domain as usize]),
                    scores[*c],
                )
            })
            .expect("total room covers every replica");
        room[pick] -= 1;
        let i = scan.fits[pick].0;
        let f = &index.facts[i as usize];
        *on_node.entry(i).or_default() += 1;
        *on_leaf.entry(f.leaf).or_default() += 1;
        *on_spine.entry(f.spine).or_default() += 1;
    }
    let mut chosen: Vec<(u32, u32)> = on_node.into_iter().collect();
    chosen.sort_unstable();
    let worst = if chosen.len() == 1 {
        Hop::SameNode
    } else if on_leaf.len() == 1 {
        Hop::SameLeaf
    } else if on_spine.len() == 1 {
        Hop::SameSpine
    } else {
        let domains: std::collections::HashSet<u32> = chosen
            .iter()
            .map(|(i, _)| index.facts[*i as usize].domain)
            .collect();
        if domains.len() == 1 {
            Hop::CrossSpine
        } else {
            Hop::CrossDomain
        }
    };
    let nodes = chosen.len();
    finish(
        cluster,
        index,
        want,
        chosen,
        worst,
        format!("spread over {nodes} nodes"),
        0.0,
        scan.fits.len() as u32,
    )
}

/// Allocates every replica of a placement, or none: on the first refusal the ones already
/// made are released and the error returned.
pub fn allocate_gang(
    cluster: &mut Cluster,
    placement: &GangPlacement,
) -> Result<Vec<AllocationId>, ClusterError> {
    let mut ids = Vec::with_capacity(placement.replicas.len());
    for replica in &placement.replicas {
        match cluster.allocate(&replica.claim) {
            Ok(id) => ids.push(id),
            Err(e) => {
                for id in ids.into_iter().rev() {
                    cluster
                        .release(id)
                        .expect("an allocation made just now is known");
                }
                return Err(e);
            }
        }
    }
    Ok(ids)
}

/// One-shot planning for callers without a long-lived index: indexes the cluster, then
/// [`place_gang`].
pub fn place_gang_once(
    cluster: &Cluster,
    links: &LinkState,
    catalog: &DomainCatalog,
    gang: &GangRequest,
) -> Result<GangPlacement, GangWait> {
    let index = FabricIndex::new(cluster, links, catalog);
    place_gang(cluster, &index, catalog, gang, &GangOptions::default())
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;
    use crate::cluster::NodeShape;

    /// Nodes of 2, 4 or 8 GPUs with `busy` GPUs each taken by its own allocation.
    fn loaded(nodes: &[(u32, u32)]) -> (Cluster, Vec<AllocationId>) {
        let shapes: Vec<NodeShape> = nodes
            .iter()
            .enumerate()
            .map(|(i, (gpus, _))| NodeShape {
                name: format!("n{i:02}"),
                cpu_milli: 64_000,
                memory_mib: 1 << 20,
                gpus: *gpus,
                model: Some("H100".parse().expect("valid model")),
                gpu_memory_mib: 81_559,
            })
            .collect();
        let mut cluster = Cluster::from_shapes(&shapes).expect("valid shapes");
        let mut held = Vec::new();
        for (i, (gpus, busy)) in nodes.iter().enumerate() {
            for g in 0..(*busy).min(*gpus) {
                let claim = Claim {
                    node: NodeId(i as u32),
                    cpu_milli: 1_000,
                    memory_mib: 1_024,
                    gpus: vec![GpuGrant {
                        gpu: g,
                        milli: 1000,
                        memory_mib: 81_559,
                        exclusive: true,
                        mig: None,
                    }],
                    affinity: None,
                };
                held.push(cluster.allocate(&claim).expect("a free GPU"));
            }
        }
        (cluster, held)
    }

    #[test]
    fn a_slot_stays_small_enough_for_bucket_walks() {
        assert!(std::mem::size_of::<Slot>() <= 40);
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(128))]

        /// The reservation skips futures whose bound is below the gang's minimum, so the
        /// bound must never be below what a placement actually finds, now or after releases.
        #[test]
        fn the_replica_bound_never_undercounts(
            nodes in proptest::collection::vec(
                (prop::sample::select(vec![2u32, 4, 8]), 0u32..=8),
                1..16,
            ),
            replicas in 1u32..6,
            gpus in prop::sample::select(vec![1u32, 2, 4, 8]),
            released in proptest::collection::vec(any::<bool>(), 64),
        ) {
            let (mut cluster, held) = loaded(&nodes);
            let links = LinkState::new();
            let catalog = DomainCatalog::default();
            let mut index = FabricIndex::new(&cluster, &links, &catalog);
            let request = Request::new(1_000, 1_024, GpuDemand::Exclusive { count: gpus })
                .expect("valid request");
            let gang = GangRequest::new(request, replicas);
            let mut bound = ReplicaBound::new(&cluster, &index, &gang).expect("whole GPUs");
            let options = GangOptions::default();
            if let Some(p) = place_gang_if_fits(&cluster, &index, &catalog, &gang, &options) {
                prop_assert!(p.replicas.len() as u64 <= bound.replicas());
            }
            for (id, release) in held.iter().zip(&released) {
                if !release {
                    continue;
                }
                let before = cluster.clone();
                let alloc = cluster.release(*id).expect("held");
                bound.free(&before, alloc.node, alloc.gpus.len() as u32);
                index.refresh(&cluster, &links, alloc.node);
            }
            if let Some(p) = place_gang_if_fits(&cluster, &index, &catalog, &gang, &options) {
                prop_assert!(p.replicas.len() as u64 <= bound.replicas());
            }
        }
    }
}
