//! The cluster as the engine sees it: nodes, their GPUs, and what is allocated where.
//!
//! Built from agents' [`NodeInventory`] reports or from simple [`NodeShape`]s as traces give
//! them. Every allocation is recorded per GPU (milli, memory, exclusive flag, MIG slices) and
//! released by id; releasing restores the state exactly.

use std::collections::hash_map::DefaultHasher;
use std::collections::{BTreeMap, HashMap};
use std::hash::{Hash, Hasher};

use crate::cid::Cid;
use crate::gpu::{GpuModel, MIG_PROFILES, MigProfile, MigProfileSpec, mig_memory_class};
use crate::inventory::{FabricPosition, Health, LinkPath, NodeInventory};
use crate::job::MILLI_PER_GPU;
use crate::request::{AffinityTag, mig_milli};
use crate::validation::ValidationError;

pub use crate::inventory::{MAX_GPUS_PER_NODE, MAX_NODE_CPU_MILLI, MAX_NODE_MEMORY_MIB};

mod free_capacity;

pub(crate) use free_capacity::{FAST_PATH_MAX_GPUS, FreeCapacity, FreeCapacityColumns};

/// A node's position in [`Cluster::nodes`]; stable for the cluster's life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct NodeId(pub u32);

impl NodeId {
    pub fn index(self) -> usize {
        self.0 as usize
    }
}

/// An interned GPU model; resolve with [`Cluster::model`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ModelId(pub(crate) u16);

/// The id [`Cluster::allocate`] hands out; [`Cluster::release`] takes it back.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct AllocationId(pub u64);

/// A node as a trace describes it: `sn,cpu_milli,memory_mib,gpu,model` in `openb`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeShape {
    pub name: String,
    pub cpu_milli: u64,
    pub memory_mib: u64,
    pub gpus: u32,
    /// Required when `gpus > 0`.
    pub model: Option<GpuModel>,
    /// Memory of each GPU; 0 when the trace does not say (then GPU-memory shares never fit).
    pub gpu_memory_mib: u64,
}

/// A node [`Cluster::from_inventories_skipping_invalid`] left out, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SkippedNode {
    /// Position of its inventory in the input.
    pub index: usize,
    pub cid: Cid,
    pub error: ClusterError,
}

/// Why a cluster cannot be built or an allocation not applied.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ClusterError {
    #[error("node {node:?}: {field}: must be between {min} and {max}, got {got}")]
    OutOfRange {
        node: String,
        field: &'static str,
        min: u64,
        max: u64,
        got: u64,
    },
    #[error("node {node:?}: has {gpus} GPUs but no model")]
    MissingModel { node: String, gpus: u32 },
    #[error("node {index}: name must not be empty")]
    EmptyName { index: usize },
    #[error("node {node:?} appears twice (first at position {first})")]
    DuplicateNode { node: String, first: usize },
    #[error("inventory {index} ({node}): {error}")]
    Inventory {
        index: usize,
        node: String,
        error: Box<ValidationError>,
    },
    #[error("too many distinct GPU models (at most 65535)")]
    TooManyModels,
    #[error("no node {0:?} in this cluster")]
    UnknownNode(u32),
    #[error("no allocation {0:?} in this cluster")]
    UnknownAllocation(AllocationId),
    #[error("node {node}: {problem}")]
    DoesNotFit { node: String, problem: String },
}

/// MIG state of a MIG-enabled GPU: which of the 8 memory slices are taken, by which instances.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct MigGpu {
    /// NVIDIA's memory class (`7g.<class>gb`); 0 when the GPU's memory matches none.
    pub class: u16,
    /// Bit `i` set: memory slice `i` is in use.
    pub used_slices: u8,
    /// Instances placed: (row in [`MIG_PROFILES`], first memory slice).
    pub instances: Vec<(u16, u8)>,
}

impl MigGpu {
    /// The first start slice where `spec` fits, respecting its max instance count.
    pub fn free_start(&self, spec: &MigProfileSpec) -> Option<u8> {
        let row = spec_row(spec)?;
        let placed = self.instances.iter().filter(|(r, _)| *r == row).count();
        if placed >= usize::from(spec.max_instances) {
            return None;
        }
        spec.starts
            .iter()
            .copied()
            .find(|start| slice_mask(spec, *start).is_some_and(|m| m & self.used_slices == 0))
    }
}

pub(crate) fn spec_row(spec: &MigProfileSpec) -> Option<u16> {
    MIG_PROFILES
        .iter()
        .position(|s| s == spec)
        .and_then(|p| u16::try_from(p).ok())
}

/// The memory-slice bit mask an instance of `spec` at `start` occupies.
fn slice_mask(spec: &MigProfileSpec, start: u8) -> Option<u8> {
    let end = u16::from(start) + u16::from(spec.memory_slices);
    if end > 8 {
        return None;
    }
    let width = (1u16 << spec.memory_slices) - 1;
    u8::try_from(width << start).ok()
}

/// One GPU of a node and what is allocated on it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Gpu {
    /// The GPU's index on its node (NVML index).
    pub index: u32,
    /// Empty for nodes built from shapes.
    pub uuid: String,
    pub model: ModelId,
    pub memory_mib: u64,
    pub health: Health,
    /// `Some` when MIG is enabled: then only MIG requests use it.
    pub mig: Option<MigGpu>,
    milli_used: u32,
    memory_used: u64,
    exclusive: bool,
    sharers: u32,
}

impl Gpu {
    fn new(index: u32, uuid: String, model: ModelId, memory_mib: u64) -> Gpu {
        Gpu {
            index,
            uuid,
            model,
            memory_mib,
            health: Health::Healthy,
            mig: None,
            milli_used: 0,
            memory_used: 0,
            exclusive: false,
            sharers: 0,
        }
    }

    pub fn milli_used(&self) -> u32 {
        self.milli_used
    }

    pub fn memory_used(&self) -> u64 {
        self.memory_used
    }

    pub fn is_exclusive(&self) -> bool {
        self.exclusive
    }

    /// Allocations sharing this GPU (shares or MIG instances).
    pub fn sharers(&self) -> u32 {
        self.sharers
    }

    pub fn usable(&self) -> bool {
        self.health != Health::Unhealthy
    }

    /// Compute still free for work, in milli: 0 when unhealthy or held exclusively.
    pub fn milli_left(&self) -> u32 {
        if !self.usable() {
            0
        } else {
            MILLI_PER_GPU.saturating_sub(self.milli_used)
        }
    }

    /// Free for a whole-GPU request: healthy, no MIG, nothing on it.
    pub fn fully_free(&self) -> bool {
        self.usable() && self.mig.is_none() && self.sharers == 0 && !self.exclusive
    }

    /// Room for a share of `milli` compute and `memory_mib` memory.
    pub fn fits_share(&self, milli: u32, memory_mib: u64) -> bool {
        self.usable()
            && self.mig.is_none()
            && !self.exclusive
            && self.milli_used + milli <= MILLI_PER_GPU
            && self.memory_used + memory_mib <= self.memory_mib
    }
}

/// One node: capacity, GPUs, place in the fabric, and usage.
#[derive(Debug, Clone)]
pub struct Node {
    name: String,
    cid: Option<Cid>,
    fabric: FabricPosition,
    cordoned: bool,
    cpu_milli: u64,
    memory_mib: u64,
    cpu_used: u64,
    memory_used: u64,
    gpus: Vec<Gpu>,
    /// `gpus.len()²` link ranks ([`LinkPath::rank`]) between GPU positions, when the agent
    /// reported paths.
    links: Option<Vec<u32>>,
    uniform_model: Option<ModelId>,
    affinity: Vec<(AffinityTag, u32)>,
    /// Hash of what never changes after the node is added (see [`Node::fingerprint`]), so a
    /// change rehashes only the usage.
    fixed_hash: u64,
    fingerprint: u64,
}

/// Nodes compare by state; the hashes of that state are not part of it.
impl PartialEq for Node {
    fn eq(&self, other: &Node) -> bool {
        self.name == other.name
            && self.cid == other.cid
            && self.fabric == other.fabric
            && self.cordoned == other.cordoned
            && self.cpu_milli == other.cpu_milli
            && self.memory_mib == other.memory_mib
            && self.cpu_used == other.cpu_used
            && self.memory_used == other.memory_used
            && self.gpus == other.gpus
            && self.links == other.links
            && self.uniform_model == other.uniform_model
            && self.affinity == other.affinity
    }
}

impl Eq for Node {}

impl Node {
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The node's CID, for nodes built from inventories.
    pub fn cid(&self) -> Option<&Cid> {
        self.cid.as_ref()
    }

    pub fn fabric(&self) -> &FabricPosition {
        &self.fabric
    }

    pub fn is_cordoned(&self) -> bool {
        self.cordoned
    }

    pub fn cpu_milli(&self) -> u64 {
        self.cpu_milli
    }

    pub fn memory_mib(&self) -> u64 {
        self.memory_mib
    }

    pub fn cpu_left(&self) -> u64 {
        self.cpu_milli - self.cpu_used
    }

    pub fn memory_left(&self) -> u64 {
        self.memory_mib - self.memory_used
    }

    pub fn gpus(&self) -> &[Gpu] {
        &self.gpus
    }

    /// The model every GPU of the node has, if they all agree.
    pub fn uniform_model(&self) -> Option<ModelId> {
        self.uniform_model
    }

    /// Allocations on this node per GPU-affinity class.
    pub fn affinity(&self) -> &[(AffinityTag, u32)] {
        &self.affinity
    }

    /// A hash of the node's whole state: identity, capacity, GPUs (by model, not by this
    /// cluster's [`ModelId`]), links and usage. Equal states give equal fingerprints, in any
    /// cluster or clone and after a change is undone; different states differ but for a 64-bit
    /// hash collision. Caches of anything computed from a node key on it. Never 0, so 0 can
    /// mark an empty cache slot.
    pub fn fingerprint(&self) -> u64 {
        self.fingerprint
    }

    fn hash_fixed(&self, models: &[GpuModel]) -> u64 {
        let mut h = DefaultHasher::new();
        (&self.name, &self.cid, &self.fabric).hash(&mut h);
        (self.cpu_milli, self.memory_mib, &self.links).hash(&mut h);
        self.gpus.len().hash(&mut h);
        for g in &self.gpus {
            (
                g.index,
                &g.uuid,
                &models[usize::from(g.model.0)],
                g.memory_mib,
            )
                .hash(&mut h);
        }
        h.finish()
    }

    fn hash_state(&self) -> u64 {
        let mut h = DefaultHasher::new();
        h.write_u64(self.fixed_hash);
        h.write_u64(self.cpu_used);
        h.write_u64(self.memory_used);
        h.write_u8(u8::from(self.cordoned));
        // Each GPU's usage in few, whole words: this runs on every allocation and release,
        // and the hash costs per write.
        for g in &self.gpus {
            h.write_u64(u64::from(g.milli_used) | u64::from(g.sharers) << 32);
            h.write_u64(g.memory_used);
            h.write_u8(
                g.health as u8 | u8::from(g.exclusive) << 2 | u8::from(g.mig.is_some()) << 3,
            );
            if let Some(mig) = &g.mig {
                mig.hash(&mut h);
            }
        }
        self.affinity.hash(&mut h);
        h.finish().max(1)
    }

    /// The link rank between GPU positions `a` and `b` (lower is closer), when known.
    pub fn link_rank(&self, a: usize, b: usize) -> Option<u32> {
        let g = self.gpus.len();
        self.links.as_ref().and_then(|l| l.get(a * g + b)).copied()
    }

    pub fn has_links(&self) -> bool {
        self.links.is_some()
    }

    /// Total compute left on healthy GPUs, in milli.
    pub fn gpu_milli_left(&self) -> u64 {
        self.gpus.iter().map(|g| u64::from(g.milli_left())).sum()
    }

    /// Whether `cid` allows this node (prefix either way, like `PlacementConstraints`).
    pub fn within(&self, prefixes: &[Cid]) -> bool {
        prefixes.is_empty()
            || self.cid.as_ref().is_some_and(|c| {
                prefixes
                    .iter()
                    .any(|p| p.is_prefix_of(c) || c.is_prefix_of(p))
            })
    }
}

/// Part of an allocation on one GPU.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct GpuGrant {
    /// Position of the GPU in [`Node::gpus`].
    pub gpu: u32,
    pub milli: u32,
    pub memory_mib: u64,
    pub exclusive: bool,
    /// The MIG instance, for MIG grants: profile and first memory slice.
    pub mig: Option<(MigProfile, u8)>,
}

/// What was allocated where.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Allocation {
    pub id: AllocationId,
    pub node: NodeId,
    pub cpu_milli: u64,
    pub memory_mib: u64,
    pub gpus: Vec<GpuGrant>,
    pub affinity: Option<AffinityTag>,
}

/// What to allocate: a node, CPU, memory, GPU grants. [`crate::place`] produces these.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Claim {
    pub node: NodeId,
    pub cpu_milli: u64,
    pub memory_mib: u64,
    pub gpus: Vec<GpuGrant>,
    pub affinity: Option<AffinityTag>,
}

/// The whole cluster.
#[derive(Debug, Clone)]
pub struct Cluster {
    nodes: Vec<Node>,
    by_name: HashMap<String, NodeId>,
    models: Vec<GpuModel>,
    allocations: BTreeMap<AllocationId, Allocation>,
    next_allocation: u64,
    /// Each node's position in name order, for name-ordered tie-breaking.
    name_rank: Vec<u32>,
    /// Each node's free capacity as the placement scan reads it, refreshed on every change.
    free_capacity: Vec<FreeCapacity>,
    /// The same, one array per field, for the column scan; refreshed with `free_capacity`.
    free_capacity_columns: FreeCapacityColumns,
}

/// Clusters compare by state: nodes, models and live allocations.
impl PartialEq for Cluster {
    fn eq(&self, other: &Cluster) -> bool {
        self.nodes == other.nodes
            && self.models == other.models
            && self.allocations == other.allocations
    }
}

impl Eq for Cluster {}

fn range(
    node: &str,
    field: &'static str,
    got: u64,
    min: u64,
    max: u64,
) -> Result<(), ClusterError> {
    if (min..=max).contains(&got) {
        Ok(())
    } else {
        Err(ClusterError::OutOfRange {
            node: node.to_string(),
            field,
            min,
            max,
            got,
        })
    }
}

impl Cluster {
    fn empty() -> Cluster {
        Cluster {
            nodes: Vec::new(),
            by_name: HashMap::new(),
            models: Vec::new(),
            allocations: BTreeMap::new(),
            next_allocation: 1,
            name_rank: Vec::new(),
            free_capacity: Vec::new(),
            free_capacity_columns: FreeCapacityColumns::default(),
        }
    }

    /// Rehashes node `index` and rereads its free capacity: call after every change to it.
    fn refresh(&mut self, index: usize) {
        let node = &mut self.nodes[index];
        node.fingerprint = node.hash_state();
        self.free_capacity[index] = FreeCapacity::of(&self.nodes[index]);
        self.free_capacity_columns
            .set(index, &self.free_capacity[index]);
    }

    /// Each node's free capacity, in node order.
    pub(crate) fn free_capacity(&self) -> &[FreeCapacity] {
        &self.free_capacity
    }

    /// Each node's free capacity, one array per field.
    pub(crate) fn free_capacity_columns(&self) -> &FreeCapacityColumns {
        &self.free_capacity_columns
    }

    /// Every node's position in name order (see [`Cluster::name_rank`]).
    pub(crate) fn name_ranks(&self) -> &[u32] {
        &self.name_rank
    }

    fn finish(mut self) -> Cluster {
        let mut order: Vec<usize> = (0..self.nodes.len()).collect();
        order.sort_by(|a, b| self.nodes[*a].name.cmp(&self.nodes[*b].name));
        self.name_rank = vec![0; self.nodes.len()];
        for (rank, i) in order.into_iter().enumerate() {
            self.name_rank[i] = rank as u32;
        }
        for node in &mut self.nodes {
            node.fixed_hash = node.hash_fixed(&self.models);
            node.fingerprint = node.hash_state();
        }
        self.free_capacity = self.nodes.iter().map(FreeCapacity::of).collect();
        self.free_capacity_columns = FreeCapacityColumns::of(&self.free_capacity);
        self
    }

    /// The node's position when all nodes are sorted by name.
    pub fn name_rank(&self, node: NodeId) -> u32 {
        self.name_rank
            .get(node.index())
            .copied()
            .unwrap_or(u32::MAX)
    }

    fn intern(&mut self, model: &GpuModel) -> Result<ModelId, ClusterError> {
        if let Some(p) = self.models.iter().position(|m| m == model) {
            return Ok(ModelId(
                u16::try_from(p).map_err(|_| ClusterError::TooManyModels)?,
            ));
        }
        let id = u16::try_from(self.models.len()).map_err(|_| ClusterError::TooManyModels)?;
        self.models.push(model.clone());
        Ok(ModelId(id))
    }

    fn push(&mut self, mut node: Node) -> Result<NodeId, ClusterError> {
        if node.name.trim().is_empty() {
            return Err(ClusterError::EmptyName {
                index: self.nodes.len(),
            });
        }
        if let Some(first) = self.by_name.get(&node.name) {
            return Err(ClusterError::DuplicateNode {
                node: node.name.clone(),
                first: first.index(),
            });
        }
        node.uniform_model = node.gpus.first().map(|g| g.model);
        if node
            .gpus
            .iter()
            .any(|g| Some(g.model) != node.uniform_model)
        {
            node.uniform_model = None;
        }
        let id = NodeId(u32::try_from(self.nodes.len()).map_err(|_| ClusterError::TooManyModels)?);
        self.by_name.insert(node.name.clone(), id);
        self.nodes.push(node);
        Ok(id)
    }

    /// A cluster of trace-style node shapes, all schedulable, without fabric or link data.
    pub fn from_shapes(shapes: &[NodeShape]) -> Result<Cluster, ClusterError> {
        let mut cluster = Cluster::empty();
        for shape in shapes {
            let name = shape.name.as_str();
            range(name, "cpu_milli", shape.cpu_milli, 1, MAX_NODE_CPU_MILLI)?;
            range(name, "memory_mib", shape.memory_mib, 1, MAX_NODE_MEMORY_MIB)?;
            range(
                name,
                "gpu",
                u64::from(shape.gpus),
                0,
                u64::from(MAX_GPUS_PER_NODE),
            )?;
            range(
                name,
                "gpu_memory_mib",
                shape.gpu_memory_mib,
                0,
                MAX_NODE_MEMORY_MIB,
            )?;
            let mut gpus = Vec::new();
            if shape.gpus > 0 {
                let model = shape
                    .model
                    .as_ref()
                    .ok_or_else(|| ClusterError::MissingModel {
                        node: name.to_string(),
                        gpus: shape.gpus,
                    })?;
                let model = cluster.intern(model)?;
                gpus = (0..shape.gpus)
                    .map(|i| Gpu::new(i, String::new(), model, shape.gpu_memory_mib))
                    .collect();
            }
            cluster.push(Node {
                name: shape.name.clone(),
                cid: None,
                fabric: FabricPosition::default(),
                cordoned: false,
                cpu_milli: shape.cpu_milli,
                memory_mib: shape.memory_mib,
                cpu_used: 0,
                memory_used: 0,
                gpus,
                links: None,
                uniform_model: None,
                affinity: Vec::new(),
                fixed_hash: 0,
                fingerprint: 0,
            })?;
        }
        Ok(cluster.finish())
    }

    /// A cluster of what agents reported. Each inventory is verified first; GPU↔GPU paths
    /// become link ranks (missing pairs count as `SYS`). MIG-enabled GPUs start with all
    /// slices free: the scheduler decides the layout.
    pub fn from_inventories(inventories: &[NodeInventory]) -> Result<Cluster, ClusterError> {
        let mut cluster = Cluster::empty();
        for (index, inv) in inventories.iter().enumerate() {
            cluster.add_inventory(index, inv)?;
        }
        Ok(cluster.finish())
    }

    /// Like [`Cluster::from_inventories`], but a node that cannot be modelled is left out
    /// and named with its reason instead of failing the whole cluster: one bad report must
    /// not take every other node's work down with it.
    pub fn from_inventories_skipping_invalid(
        inventories: &[NodeInventory],
    ) -> (Cluster, Vec<SkippedNode>) {
        let mut cluster = Cluster::empty();
        let mut skipped = Vec::new();
        for (index, inv) in inventories.iter().enumerate() {
            if let Err(error) = cluster.add_inventory(index, inv) {
                skipped.push(SkippedNode {
                    index,
                    cid: inv.cid.clone(),
                    error,
                });
            }
        }
        (cluster.finish(), skipped)
    }

    /// Verifies one inventory and adds its node; on error no node is added.
    fn add_inventory(&mut self, index: usize, inv: &NodeInventory) -> Result<NodeId, ClusterError> {
        let cluster = self;
        inv.validate().map_err(|error| ClusterError::Inventory {
            index,
            node: inv.cid.to_string(),
            error: Box::new(error),
        })?;
        let name = inv.node_name().to_string();
        range(&name, "cpu_milli", inv.cpu_milli, 1, MAX_NODE_CPU_MILLI)?;
        range(&name, "memory_mib", inv.memory_mib, 1, MAX_NODE_MEMORY_MIB)?;
        range(
            &name,
            "gpus",
            inv.gpus.len() as u64,
            0,
            u64::from(MAX_GPUS_PER_NODE),
        )?;
        let mut reported: Vec<&crate::inventory::GpuInfo> = inv.gpus.iter().collect();
        reported.sort_by_key(|g| g.index);
        let mut gpus = Vec::with_capacity(reported.len());
        for info in &reported {
            let model = cluster.intern(&info.model)?;
            let mut gpu = Gpu::new(info.index, info.uuid.clone(), model, info.memory_mib);
            gpu.health = info.health;
            if info.mig.enabled {
                gpu.mig = Some(MigGpu {
                    class: mig_memory_class(info.memory_mib).unwrap_or(0),
                    used_slices: 0,
                    instances: Vec::new(),
                });
            }
            gpus.push(gpu);
        }
        let links = (!inv.gpu_pairs.is_empty()).then(|| {
            let g = gpus.len();
            let mut m = vec![LinkPath::Sys.rank(); g * g];
            for i in 0..g {
                m[i * g + i] = 0;
            }
            let pos = |idx: u32| gpus.iter().position(|gpu| gpu.index == idx);
            for pair in &inv.gpu_pairs {
                if let (Some(a), Some(b)) = (pos(pair.a), pos(pair.b)) {
                    m[a * g + b] = pair.path.rank();
                    m[b * g + a] = pair.path.rank();
                }
            }
            m
        });
        let cordoned = inv
            .labels
            .get("suanli.io/cordoned")
            .is_some_and(|v| v == "true");
        cluster.push(Node {
            name,
            cid: Some(inv.cid.clone()),
            fabric: inv.fabric.clone(),
            cordoned,
            cpu_milli: inv.cpu_milli,
            memory_mib: inv.memory_mib,
            cpu_used: 0,
            memory_used: 0,
            gpus,
            links,
            uniform_model: None,
            affinity: Vec::new(),
            fixed_hash: 0,
            fingerprint: 0,
        })
    }

    pub fn nodes(&self) -> &[Node] {
        &self.nodes
    }

    pub fn len(&self) -> usize {
        self.nodes.len()
    }

    pub fn is_empty(&self) -> bool {
        self.nodes.is_empty()
    }

    pub fn node(&self, id: NodeId) -> Option<&Node> {
        self.nodes.get(id.index())
    }

    pub fn node_by_name(&self, name: &str) -> Option<NodeId> {
        self.by_name.get(name).copied()
    }

    pub fn model(&self, id: ModelId) -> &GpuModel {
        &self.models[usize::from(id.0)]
    }

    /// GPU-milli per model that `claims` take on this cluster: what they charge to a quota.
    /// Grants on nodes or GPUs the cluster does not have charge nothing.
    pub fn gpu_milli_by_model<'a>(
        &self,
        claims: impl IntoIterator<Item = &'a Claim>,
    ) -> Vec<(GpuModel, u64)> {
        let mut by_model: BTreeMap<GpuModel, u64> = BTreeMap::new();
        for claim in claims {
            let Some(node) = self.node(claim.node) else {
                continue;
            };
            for grant in &claim.gpus {
                if let Some(gpu) = node.gpus().get(grant.gpu as usize) {
                    *by_model.entry(self.model(gpu.model).clone()).or_default() +=
                        u64::from(grant.milli);
                }
            }
        }
        by_model.into_iter().collect()
    }

    pub fn model_id(&self, model: &GpuModel) -> Option<ModelId> {
        self.models
            .iter()
            .position(|m| m == model)
            .and_then(|p| u16::try_from(p).ok())
            .map(ModelId)
    }

    pub fn allocations(&self) -> impl Iterator<Item = &Allocation> {
        self.allocations.values()
    }

    pub fn allocation(&self, id: AllocationId) -> Option<&Allocation> {
        self.allocations.get(&id)
    }

    /// GPU compute capacity of all GPUs, in milli.
    pub fn total_gpu_milli(&self) -> u64 {
        self.nodes
            .iter()
            .map(|n| n.gpus.len() as u64 * u64::from(MILLI_PER_GPU))
            .sum()
    }

    /// GPU compute allocated, in milli (a whole GPU counts 1000).
    pub fn used_gpu_milli(&self) -> u64 {
        self.nodes
            .iter()
            .flat_map(|n| n.gpus.iter())
            .map(|g| u64::from(g.milli_used))
            .sum()
    }

    /// Cordons (or uncordons) a node: cordoned nodes take no new work.
    pub fn set_cordoned(&mut self, node: NodeId, cordoned: bool) -> Result<(), ClusterError> {
        let n = self
            .nodes
            .get_mut(node.index())
            .ok_or(ClusterError::UnknownNode(node.0))?;
        n.cordoned = cordoned;
        self.refresh(node.index());
        Ok(())
    }

    /// Turns MIG mode on for an idle GPU (by position): afterwards only MIG requests use it.
    pub fn enable_mig(&mut self, node: NodeId, gpu: usize) -> Result<(), ClusterError> {
        let n = self
            .nodes
            .get_mut(node.index())
            .ok_or(ClusterError::UnknownNode(node.0))?;
        let name = n.name.clone();
        let g = n
            .gpus
            .get_mut(gpu)
            .ok_or_else(|| ClusterError::DoesNotFit {
                node: name.clone(),
                problem: format!("no GPU at position {gpu}"),
            })?;
        if g.sharers > 0 || g.exclusive {
            return Err(ClusterError::DoesNotFit {
                node: name,
                problem: format!(
                    "GPU {} is in use; MIG mode changes only on idle GPUs",
                    g.index
                ),
            });
        }
        if g.mig.is_none() {
            g.mig = Some(MigGpu {
                class: mig_memory_class(g.memory_mib).unwrap_or(0),
                used_slices: 0,
                instances: Vec::new(),
            });
        }
        self.refresh(node.index());
        Ok(())
    }

    /// Marks one GPU (by position) healthy, degraded or unhealthy.
    pub fn set_gpu_health(
        &mut self,
        node: NodeId,
        gpu: usize,
        health: Health,
    ) -> Result<(), ClusterError> {
        let n = self
            .nodes
            .get_mut(node.index())
            .ok_or(ClusterError::UnknownNode(node.0))?;
        let name = n.name.clone();
        let g = n
            .gpus
            .get_mut(gpu)
            .ok_or_else(|| ClusterError::DoesNotFit {
                node: name,
                problem: format!("no GPU at position {gpu}"),
            })?;
        g.health = health;
        self.refresh(node.index());
        Ok(())
    }

    /// Applies a claim (usually a [`crate::Placement`]'s) after checking that it still fits.
    pub fn allocate(&mut self, claim: &Claim) -> Result<AllocationId, ClusterError> {
        let node = self
            .nodes
            .get(claim.node.index())
            .ok_or(ClusterError::UnknownNode(claim.node.0))?;
        check_claim(node, claim).map_err(|problem| ClusterError::DoesNotFit {
            node: node.name.clone(),
            problem,
        })?;
        let node = &mut self.nodes[claim.node.index()];
        node.cpu_used += claim.cpu_milli;
        node.memory_used += claim.memory_mib;
        for grant in &claim.gpus {
            let gpu = &mut node.gpus[grant.gpu as usize];
            gpu.milli_used += grant.milli;
            gpu.memory_used += grant.memory_mib;
            if grant.exclusive {
                gpu.exclusive = true;
            } else {
                gpu.sharers += 1;
            }
            if let (Some((profile, start)), Some(mig)) = (&grant.mig, gpu.mig.as_mut()) {
                let spec = profile
                    .spec_for(mig.class)
                    .expect("check_claim verified the profile exists for this class");
                let row = spec_row(spec).expect("a table row has a position");
                mig.used_slices |=
                    slice_mask(spec, *start).expect("check_claim verified the slices");
                mig.instances.push((row, *start));
            }
        }
        if let Some(tag) = claim.affinity {
            match node.affinity.binary_search_by_key(&tag, |(t, _)| *t) {
                Ok(i) => node.affinity[i].1 += 1,
                Err(i) => node.affinity.insert(i, (tag, 1)),
            }
        }
        self.refresh(claim.node.index());
        let id = AllocationId(self.next_allocation);
        self.next_allocation += 1;
        self.allocations.insert(
            id,
            Allocation {
                id,
                node: claim.node,
                cpu_milli: claim.cpu_milli,
                memory_mib: claim.memory_mib,
                gpus: claim.gpus.clone(),
                affinity: claim.affinity,
            },
        );
        Ok(id)
    }

    /// Releases an allocation, restoring exactly the state before it was made.
    pub fn release(&mut self, id: AllocationId) -> Result<Allocation, ClusterError> {
        let alloc = self
            .allocations
            .remove(&id)
            .ok_or(ClusterError::UnknownAllocation(id))?;
        let node = &mut self.nodes[alloc.node.index()];
        node.cpu_used -= alloc.cpu_milli;
        node.memory_used -= alloc.memory_mib;
        for grant in &alloc.gpus {
            let gpu = &mut node.gpus[grant.gpu as usize];
            gpu.milli_used -= grant.milli;
            gpu.memory_used -= grant.memory_mib;
            if grant.exclusive {
                gpu.exclusive = false;
            } else {
                gpu.sharers -= 1;
            }
            if let (Some((profile, start)), Some(mig)) = (&grant.mig, gpu.mig.as_mut())
                && let Some(spec) = profile.spec_for(mig.class)
            {
                let row = spec_row(spec).expect("a table row has a position");
                if let Some(p) = mig.instances.iter().position(|i| *i == (row, *start)) {
                    mig.instances.remove(p);
                }
                mig.used_slices &= !slice_mask(spec, *start).unwrap_or(0);
            }
        }
        if let Some(tag) = alloc.affinity
            && let Ok(i) = node.affinity.binary_search_by_key(&tag, |(t, _)| *t)
        {
            node.affinity[i].1 -= 1;
            if node.affinity[i].1 == 0 {
                node.affinity.remove(i);
            }
        }
        self.refresh(alloc.node.index());
        Ok(alloc)
    }
}

/// Whether `claim` fits `node` now; the problem in words when not.
fn check_claim(node: &Node, claim: &Claim) -> Result<(), String> {
    if claim.cpu_milli > node.cpu_left() {
        return Err(format!(
            "needs {}m CPU, {}m left",
            claim.cpu_milli,
            node.cpu_left()
        ));
    }
    if claim.memory_mib > node.memory_left() {
        return Err(format!(
            "needs {} MiB memory, {} MiB left",
            claim.memory_mib,
            node.memory_left()
        ));
    }
    // Grants on one GPU are checked together so a claim cannot over-commit it with two grants.
    let mut extra: Vec<(u32, u64, u8, bool)> = vec![(0, 0, 0, false); node.gpus.len()];
    for grant in &claim.gpus {
        let gpu = node
            .gpus
            .get(grant.gpu as usize)
            .ok_or_else(|| format!("no GPU at position {}", grant.gpu))?;
        if !gpu.usable() {
            return Err(format!("GPU {} is unhealthy", gpu.index));
        }
        let slot = &mut extra[grant.gpu as usize];
        if grant.exclusive {
            if !gpu.fully_free() || slot.3 || slot.0 > 0 || slot.1 > 0 {
                return Err(format!("GPU {} is not free for exclusive use", gpu.index));
            }
            if grant.milli != MILLI_PER_GPU || grant.memory_mib != gpu.memory_mib {
                return Err(format!(
                    "an exclusive grant on GPU {} must take all of it",
                    gpu.index
                ));
            }
            slot.3 = true;
            continue;
        }
        if slot.3 {
            return Err(format!("GPU {} is claimed exclusively", gpu.index));
        }
        match (&grant.mig, &gpu.mig) {
            (Some((profile, start)), Some(mig)) => {
                let spec = profile
                    .spec_for(mig.class)
                    .ok_or_else(|| format!("GPU {} offers no MIG profile {profile}", gpu.index))?;
                if grant.milli != mig_milli(spec.compute_slices) || grant.memory_mib != 0 {
                    return Err(format!("MIG grant on GPU {} has wrong sizes", gpu.index));
                }
                if !spec.starts.contains(start) {
                    return Err(format!("{profile} cannot start at slice {start}"));
                }
                let mask = slice_mask(spec, *start)
                    .ok_or_else(|| format!("{profile} at slice {start} runs past slice 7"))?;
                if mask & (mig.used_slices | slot.2) != 0 {
                    return Err(format!(
                        "MIG slices of GPU {} at {start} are in use",
                        gpu.index
                    ));
                }
                let row = spec_row(spec).unwrap_or(u16::MAX);
                let placed = mig.instances.iter().filter(|(r, _)| *r == row).count();
                if placed >= usize::from(spec.max_instances) {
                    return Err(format!("GPU {} already has the most {profile}", gpu.index));
                }
                slot.2 |= mask;
            }
            (Some(_), None) => return Err(format!("GPU {} has MIG disabled", gpu.index)),
            (None, Some(_)) => return Err(format!("GPU {} is in MIG mode", gpu.index)),
            (None, None) => {}
        }
        slot.0 += grant.milli;
        slot.1 += grant.memory_mib;
        if gpu.exclusive
            || gpu.milli_used + slot.0 > MILLI_PER_GPU
            || gpu.memory_used + slot.1 > gpu.memory_mib
        {
            return Err(format!(
                "GPU {} has {}m and {} MiB left",
                gpu.index,
                gpu.milli_left(),
                gpu.memory_mib - gpu.memory_used
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shape(name: &str, gpus: u32) -> NodeShape {
        NodeShape {
            name: name.into(),
            cpu_milli: 32_000,
            memory_mib: 65_536,
            gpus,
            model: Some("V100M32".parse().expect("valid")),
            gpu_memory_mib: 32_768,
        }
    }

    #[test]
    fn shapes_build_and_reject_bad_sizes() {
        let c = Cluster::from_shapes(&[shape("a", 8), shape("b", 0)]).expect("valid");
        assert_eq!(c.total_gpu_milli(), 8000);
        assert_eq!(c.node_by_name("b"), Some(NodeId(1)));
        let mut zero = shape("z", 1);
        zero.cpu_milli = 0;
        assert!(matches!(
            Cluster::from_shapes(&[zero]),
            Err(ClusterError::OutOfRange {
                field: "cpu_milli",
                ..
            })
        ));
        let mut no_model = shape("m", 2);
        no_model.model = None;
        assert_eq!(
            Cluster::from_shapes(&[no_model])
                .expect_err("missing model")
                .to_string(),
            "node \"m\": has 2 GPUs but no model"
        );
        assert!(matches!(
            Cluster::from_shapes(&[shape("a", 1), shape("a", 1)]),
            Err(ClusterError::DuplicateNode { .. })
        ));
    }

    #[test]
    fn claims_that_over_commit_are_refused() {
        let mut c = Cluster::from_shapes(&[shape("a", 1)]).expect("valid");
        let share = |milli| GpuGrant {
            gpu: 0,
            milli,
            memory_mib: 0,
            exclusive: false,
            mig: None,
        };
        let claim = Claim {
            node: NodeId(0),
            cpu_milli: 1000,
            memory_mib: 1,
            gpus: vec![share(600), share(600)],
            affinity: Some(AffinityTag::Share),
        };
        assert!(
            c.allocate(&claim).is_err(),
            "two grants over-commit one GPU"
        );
        let one = Claim {
            gpus: vec![share(600)],
            ..claim
        };
        let id = c.allocate(&one).expect("fits");
        assert!(c.allocate(&one).is_err(), "second 600m share over-commits");
        let whole = Claim {
            gpus: vec![GpuGrant {
                gpu: 0,
                milli: 1000,
                memory_mib: 32_768,
                exclusive: true,
                mig: None,
            }],
            affinity: Some(AffinityTag::Whole(1)),
            ..one.clone()
        };
        assert!(c.allocate(&whole).is_err(), "a shared GPU is not exclusive");
        c.release(id).expect("known");
        c.allocate(&whole).expect("now free");
        assert!(
            c.allocate(&one).is_err(),
            "an exclusive GPU is never shared"
        );
    }

    #[test]
    fn fingerprints_follow_node_state() {
        let mut c = Cluster::from_shapes(&[shape("a", 2), shape("b", 2)]).expect("valid");
        let fingerprint = |c: &Cluster, i: u32| c.node(NodeId(i)).expect("known").fingerprint();
        let idle = fingerprint(&c, 0);
        assert_ne!(idle, fingerprint(&c, 1), "nodes differ by name");
        let claim = Claim {
            node: NodeId(0),
            cpu_milli: 1000,
            memory_mib: 1,
            gpus: vec![GpuGrant {
                gpu: 1,
                milli: 500,
                memory_mib: 0,
                exclusive: false,
                mig: None,
            }],
            affinity: None,
        };
        let mut clone = c.clone();
        let id = c.allocate(&claim).expect("fits");
        let busy = fingerprint(&c, 0);
        assert_ne!(busy, idle);
        // Another cluster reaching the same state, with its GPU model interned elsewhere.
        let mut other = Cluster::from_shapes(&[shape("b", 0), shape("a", 2)]).expect("valid");
        let moved = Claim {
            node: NodeId(1),
            ..claim.clone()
        };
        other.allocate(&moved).expect("fits");
        assert_eq!(fingerprint(&other, 1), busy);
        clone.set_cordoned(NodeId(0), true).expect("known");
        assert_ne!(fingerprint(&clone, 0), busy, "diverged clones differ");
        c.release(id).expect("known");
        assert_eq!(fingerprint(&c, 0), idle, "a release restores the state");
        c.set_gpu_health(NodeId(0), 0, Health::Degraded)
            .expect("known GPU");
        assert_ne!(fingerprint(&c, 0), idle);
    }
}
