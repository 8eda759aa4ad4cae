//! What a node agent reports: facts about one machine, not policy (DESIGN.md §3).

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::cid::{Cid, Level};
use crate::gpu::{GpuModel, MigProfile};
use crate::validation::{
    Problem, ValidationError, check_count, check_name, check_range_u64, ensure,
};

// What one node may report. The wire (`suanli-proto`) refuses by the same numbers, so a report
// the scheduler accepts is one the engine can model; a value past them is refused at the door.

/// Largest node the engine accepts: 100,000 cores.
pub const MAX_NODE_CPU_MILLI: u64 = 100_000_000;
/// Largest node memory the engine accepts: 1 EiB in MiB.
pub const MAX_NODE_MEMORY_MIB: u64 = 1 << 40;
/// Most GPUs one node may have (an HGX board has 8; the biggest single hosts 16).
pub const MAX_GPUS_PER_NODE: u32 = 64;
/// Largest GPU memory: 16 TiB in MiB (an H200 has 141 GB).
pub const MAX_GPU_MEMORY_MIB: u64 = 1 << 24;
/// Most NUMA nodes one machine may report.
pub const MAX_NUMA_NODES: u64 = 1024;
/// Most RDMA NICs one node may have.
pub const MAX_NICS_PER_NODE: usize = 64;
/// Most ports one NIC may have.
pub const MAX_PORTS_PER_NIC: usize = 64;
/// Most MIG instances one GPU may report (NVIDIA's limit is 7).
pub const MAX_MIG_INSTANCES_PER_GPU: usize = 64;
/// Most NVLinks one GPU may report (NVLink 5 has 18).
pub const MAX_NVLINKS_PER_GPU: usize = 64;
/// Most labels one node may carry.
pub const MAX_LABELS: usize = 1024;
/// Longest label key: a Kubernetes key (253-character prefix, `/`, 63-character name).
pub const MAX_LABEL_KEY_LEN: usize = 317;
/// Longest label value.
pub const MAX_LABEL_VALUE_LEN: usize = 1024;
/// Longest descriptive string (product name, architecture, PCI bus id, model).
pub const MAX_TEXT_LEN: usize = 256;

/// Where a node sits in its domain's fabric tree: node → leaf → spine (→ core).
#[derive(Debug, Clone, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct FabricPosition {
    /// Leaf (ToR or rail) switch id; empty when unknown.
    #[serde(default)]
    pub leaf: String,
    /// Spine switch (or pod) id; empty when unknown.
    #[serde(default)]
    pub spine: String,
}

/// Whether NVML could be used on this node, and why not.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "state", rename_all = "snake_case")]
pub enum NvmlStatus {
    Available {
        driver_version: String,
        cuda_version: String,
        nvml_version: String,
    },
    Unavailable {
        reason: String,
    },
}

impl Default for NvmlStatus {
    fn default() -> Self {
        NvmlStatus::Unavailable {
            reason: "not probed".to_string(),
        }
    }
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Health {
    #[default]
    Healthy,
    /// Usable but degraded (XID events, throttling, a link below its rated speed).
    Degraded,
    Unhealthy,
}

/// One PCIe link's negotiated generation and width; zero when unknown.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PcieLink {
    pub generation: u32,
    pub width: u32,
}

/// A MIG GPU instance that exists on a GPU.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MigInstance {
    pub uuid: String,
    pub profile: MigProfile,
    pub memory_mib: u64,
    pub sm_count: u32,
    /// First memory slice the instance occupies (its placement start).
    pub start_slice: u8,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct MigState {
    pub capable: bool,
    pub enabled: bool,
    #[serde(default)]
    pub instances: Vec<MigInstance>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum NvLinkRemote {
    Gpu,
    Switch,
    Unknown,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NvLink {
    pub link: u32,
    pub active: bool,
    /// The remote end's PCI bus id in sysfs form (`0000:18:00.0`), when known.
    #[serde(default)]
    pub remote_pci_bus_id: String,
    pub remote: NvLinkRemote,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GpuInfo {
    pub uuid: String,
    pub index: u32,
    /// The product name NVML reports (`NVIDIA H100 80GB HBM3`).
    pub product: String,
    /// The short model jobs ask for (`H100`).
    pub model: GpuModel,
    pub architecture: String,
    /// `major.minor`, e.g. `9.0`.
    pub compute_capability: String,
    pub memory_mib: u64,
    /// Sysfs form: `0000:00:06.0` (NVML's 8-digit domain shortened to 4).
    pub pci_bus_id: String,
    /// `None` when the platform does not say (sysfs `-1`, NVML "Not Supported").
    pub numa_node: Option<i32>,
    #[serde(default)]
    pub pcie: PcieLink,
    #[serde(default)]
    pub mig: MigState,
    #[serde(default)]
    pub nvlinks: Vec<NvLink>,
    #[serde(default)]
    pub health: Health,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PortState {
    Active,
    Down,
    Init,
    Armed,
    Unknown,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LinkLayer {
    Infiniband,
    Ethernet,
    Unknown,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NicPort {
    pub port: u32,
    pub state: PortState,
    pub link_layer: LinkLayer,
    /// Current rate in Gb/s (0 when down or unknown).
    pub rate_gbps: f64,
    /// `IB/RoCE v1`, `RoCE v2`, or empty.
    #[serde(default)]
    pub gid_type: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RdmaNic {
    /// Device name under `/sys/class/infiniband` (`mlx5_0`).
    pub name: String,
    pub pci_bus_id: String,
    pub numa_node: Option<i32>,
    #[serde(default)]
    pub node_guid: String,
    #[serde(default)]
    pub firmware: String,
    #[serde(default)]
    pub netdevs: Vec<String>,
    #[serde(default)]
    pub ports: Vec<NicPort>,
    #[serde(default)]
    pub health: Health,
}

/// How two devices reach each other, best first, as `nvidia-smi topo -m` names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum LinkPath {
    /// A bonded set of N NVLinks (directly or through NVSwitch).
    NvLink(u32),
    /// At most one PCIe bridge.
    Pix,
    /// Several PCIe bridges, no host bridge.
    Pxb,
    /// Through a PCIe host bridge (the CPU).
    Phb,
    /// Between host bridges inside one NUMA node.
    Node,
    /// Across the SMP interconnect between NUMA nodes.
    Sys,
}

impl LinkPath {
    /// GPUDirect RDMA is usable over PIX and PXB paths.
    pub fn gdr_local(self) -> bool {
        matches!(self, LinkPath::Pix | LinkPath::Pxb)
    }

    /// Rank for scoring: lower is closer. NVLink beats PCIe; more links beat fewer.
    pub fn rank(self) -> u32 {
        match self {
            LinkPath::NvLink(n) => 100u32.saturating_sub(n.min(99)),
            LinkPath::Pix => 200,
            LinkPath::Pxb => 300,
            LinkPath::Phb => 400,
            LinkPath::Node => 500,
            LinkPath::Sys => 600,
        }
    }
}

impl fmt::Display for LinkPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            LinkPath::NvLink(n) => write!(f, "NV{n}"),
            LinkPath::Pix => f.write_str("PIX"),
            LinkPath::Pxb => f.write_str("PXB"),
            LinkPath::Phb => f.write_str("PHB"),
            LinkPath::Node => f.write_str("NODE"),
            LinkPath::Sys => f.write_str("SYS"),
        }
    }
}

impl FromStr for LinkPath {
    type Err = Problem;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let upper = s.trim().to_ascii_uppercase();
        match upper.as_str() {
            "PIX" => Ok(LinkPath::Pix),
            "PXB" => Ok(LinkPath::Pxb),
            "PHB" => Ok(LinkPath::Phb),
            "NODE" => Ok(LinkPath::Node),
            "SYS" => Ok(LinkPath::Sys),
            _ => upper
                .strip_prefix("NV")
                .and_then(|n| n.parse::<u32>().ok())
                .filter(|n| *n > 0)
                .map(LinkPath::NvLink)
                .ok_or_else(|| Problem::Unknown {
                    what: "link path",
                    value: s.to_string(),
                    known: "NV<n>, PIX, PXB, PHB, NODE, SYS".to_string(),
                }),
        }
    }
}

impl Serialize for LinkPath {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for LinkPath {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

/// The path between two GPUs of one node, by GPU index (`a < b`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GpuPair {
    pub a: u32,
    pub b: u32,
    pub path: LinkPath,
}

/// The path between a GPU (by index) and an RDMA NIC (by name).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GpuNicPair {
    pub gpu: u32,
    pub nic: String,
    pub path: LinkPath,
    pub gdr_local: bool,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Versions {
    #[serde(default)]
    pub agent: String,
    #[serde(default)]
    pub driver: String,
    #[serde(default)]
    pub cuda: String,
}

/// Everything an agent knows about its machine. The key is the node CID.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NodeInventory {
    /// `cid:provider/region/domain/node`.
    pub cid: Cid,
    /// Bumped by the agent whenever the inventory changes.
    pub generation: u64,
    #[serde(default)]
    pub fabric: FabricPosition,
    pub cpu_milli: u64,
    pub memory_mib: u64,
    #[serde(default)]
    pub numa_nodes: u32,
    #[serde(default)]
    pub versions: Versions,
    #[serde(default)]
    pub nvml: NvmlStatus,
    #[serde(default)]
    pub gpus: Vec<GpuInfo>,
    #[serde(default)]
    pub nics: Vec<RdmaNic>,
    #[serde(default)]
    pub gpu_pairs: Vec<GpuPair>,
    #[serde(default)]
    pub gpu_nic_pairs: Vec<GpuNicPair>,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
}

impl NodeInventory {
    pub fn node_name(&self) -> &str {
        self.cid
            .node_name()
            .expect("a validated inventory has a node CID")
    }

    /// The domain-level CID (`cid:provider/region/domain`).
    pub fn domain(&self) -> Cid {
        self.cid
            .domain_cid()
            .expect("a validated inventory has a node CID")
    }

    /// The CID of GPU `index` on this node (`.../gpu-<index>`).
    pub fn gpu_cid(&self, index: u32) -> Cid {
        self.cid
            .child(&format!("gpu-{index}"))
            .expect("gpu-<n> is a valid segment under a valid node CID")
    }

    /// The path between two GPUs, if the agent reported it.
    pub fn gpu_path(&self, a: u32, b: u32) -> Option<LinkPath> {
        let (a, b) = if a <= b { (a, b) } else { (b, a) };
        self.gpu_pairs
            .iter()
            .find(|p| p.a == a && p.b == b)
            .map(|p| p.path)
    }

    /// Verification: a node CID, sane numbers, unique GPU UUIDs and indices, pairs that refer
    /// to GPUs and NICs that exist.
    pub fn validate(&self) -> Result<(), ValidationError> {
        ensure(self.cid.level() == Level::Node, "cid", || {
            Problem::Invalid(format!(
                "{} is not a node identifier (provider/region/domain/node)",
                self.cid
            ))
        })?;
        check_range_u64("cpu_milli", self.cpu_milli, 1, MAX_NODE_CPU_MILLI)?;
        check_range_u64("memory_mib", self.memory_mib, 1, MAX_NODE_MEMORY_MIB)?;
        check_range_u64("numa_nodes", u64::from(self.numa_nodes), 0, MAX_NUMA_NODES)?;
        check_count("gpus", self.gpus.len(), MAX_GPUS_PER_NODE as usize)?;
        check_count("nics", self.nics.len(), MAX_NICS_PER_NODE)?;
        let gpus = self.gpus.len();
        check_count("gpu_pairs", self.gpu_pairs.len(), gpus * gpus)?;
        check_count(
            "gpu_nic_pairs",
            self.gpu_nic_pairs.len(),
            gpus * self.nics.len(),
        )?;
        check_count("labels", self.labels.len(), MAX_LABELS)?;
        for (key, value) in &self.labels {
            check_name("labels key", key, MAX_LABEL_KEY_LEN)?;
            let len = value.chars().count();
            ensure(
                len <= MAX_LABEL_VALUE_LEN,
                &format!("labels[{key}]"),
                || Problem::TooLong {
                    len,
                    max: MAX_LABEL_VALUE_LEN,
                },
            )?;
        }
        let mut uuids: HashMap<&str, usize> = HashMap::new();
        let mut indices: HashMap<u32, usize> = HashMap::new();
        for (i, gpu) in self.gpus.iter().enumerate() {
            let at = format!("gpus[{i}]");
            check_name("uuid", &gpu.uuid, 128).map_err(|e| e.within(&at))?;
            if let Some(first) = uuids.insert(&gpu.uuid, i) {
                return Err(ValidationError::new(
                    format!("{at}.uuid"),
                    Problem::Duplicate {
                        what: "GPU UUID",
                        value: gpu.uuid.clone(),
                        first: format!("gpus[{first}]"),
                    },
                ));
            }
            if let Some(first) = indices.insert(gpu.index, i) {
                return Err(ValidationError::new(
                    format!("{at}.index"),
                    Problem::Duplicate {
                        what: "GPU index",
                        value: gpu.index.to_string(),
                        first: format!("gpus[{first}]"),
                    },
                ));
            }
            check_range_u64(
                &format!("{at}.memory_mib"),
                gpu.memory_mib,
                1,
                MAX_GPU_MEMORY_MIB,
            )?;
            for (field, value) in [
                ("product", &gpu.product),
                ("architecture", &gpu.architecture),
                ("compute_capability", &gpu.compute_capability),
                ("pci_bus_id", &gpu.pci_bus_id),
            ] {
                let len = value.chars().count();
                ensure(len <= MAX_TEXT_LEN, &format!("{at}.{field}"), || {
                    Problem::TooLong {
                        len,
                        max: MAX_TEXT_LEN,
                    }
                })?;
            }
            check_name("model", gpu.model.as_str(), MAX_TEXT_LEN).map_err(|e| e.within(&at))?;
            check_count(
                &format!("{at}.mig.instances"),
                gpu.mig.instances.len(),
                MAX_MIG_INSTANCES_PER_GPU,
            )?;
            check_count(
                &format!("{at}.nvlinks"),
                gpu.nvlinks.len(),
                MAX_NVLINKS_PER_GPU,
            )?;
            for (j, mig) in gpu.mig.instances.iter().enumerate() {
                let mat = format!("{at}.mig.instances[{j}]");
                check_name("uuid", &mig.uuid, 128).map_err(|e| e.within(&mat))?;
                if let Some(first) = uuids.insert(&mig.uuid, i) {
                    return Err(ValidationError::new(
                        format!("{mat}.uuid"),
                        Problem::Duplicate {
                            what: "MIG UUID",
                            value: mig.uuid.clone(),
                            first: format!("gpus[{first}]"),
                        },
                    ));
                }
            }
        }
        let mut nic_names: HashMap<&str, usize> = HashMap::new();
        for (i, nic) in self.nics.iter().enumerate() {
            let at = format!("nics[{i}]");
            check_name("name", &nic.name, 64).map_err(|e| e.within(&at))?;
            if let Some(first) = nic_names.insert(&nic.name, i) {
                return Err(ValidationError::new(
                    format!("{at}.name"),
                    Problem::Duplicate {
                        what: "NIC name",
                        value: nic.name.clone(),
                        first: format!("nics[{first}]"),
                    },
                ));
            }
            check_count(&format!("{at}.ports"), nic.ports.len(), MAX_PORTS_PER_NIC)?;
            for (j, port) in nic.ports.iter().enumerate() {
                ensure(
                    port.rate_gbps.is_finite() && (0.0..=100_000.0).contains(&port.rate_gbps),
                    &format!("{at}.ports[{j}].rate_gbps"),
                    || Problem::Invalid(format!("{} is not a link rate in Gb/s", port.rate_gbps)),
                )?;
            }
        }
        for (i, pair) in self.gpu_pairs.iter().enumerate() {
            for (side, idx) in [("a", pair.a), ("b", pair.b)] {
                ensure(
                    indices.contains_key(&idx),
                    &format!("gpu_pairs[{i}].{side}"),
                    || Problem::Invalid(format!("no GPU with index {idx} on this node")),
                )?;
            }
        }
        for (i, pair) in self.gpu_nic_pairs.iter().enumerate() {
            ensure(
                indices.contains_key(&pair.gpu),
                &format!("gpu_nic_pairs[{i}].gpu"),
                || Problem::Invalid(format!("no GPU with index {} on this node", pair.gpu)),
            )?;
            ensure(
                nic_names.contains_key(pair.nic.as_str()),
                &format!("gpu_nic_pairs[{i}].nic"),
                || Problem::Invalid(format!("no NIC named {:?} on this node", pair.nic)),
            )?;
        }
        Ok(())
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    pub(crate) fn gpu(index: u32, uuid: &str) -> GpuInfo {
        GpuInfo {
            uuid: uuid.to_string(),
            index,
            product: "NVIDIA H100 80GB HBM3".to_string(),
            model: GpuModel::from_product_name("NVIDIA H100 80GB HBM3"),
            architecture: "Hopper".to_string(),
            compute_capability: "9.0".to_string(),
            memory_mib: 81_559,
            pci_bus_id: format!("0000:{:02x}:00.0", 0x18 + index),
            numa_node: None,
            pcie: PcieLink {
                generation: 5,
                width: 16,
            },
            mig: MigState {
                capable: true,
                enabled: false,
                instances: vec![],
            },
            nvlinks: vec![],
            health: Health::Healthy,
        }
    }

    pub(crate) fn node(gpus: Vec<GpuInfo>) -> NodeInventory {
        NodeInventory {
            cid: "cid:acme/cn-east-1/dc-a/n1".parse().expect("valid"),
            generation: 1,
            fabric: FabricPosition::default(),
            cpu_milli: 64_000,
            memory_mib: 512 * 1024,
            numa_nodes: 1,
            versions: Versions::default(),
            nvml: NvmlStatus::default(),
            gpus,
            nics: vec![],
            gpu_pairs: vec![],
            gpu_nic_pairs: vec![],
            labels: BTreeMap::new(),
        }
    }

    #[test]
    fn duplicate_gpu_uuids_are_rejected() {
        let inv = node(vec![gpu(0, "GPU-a"), gpu(1, "GPU-b"), gpu(2, "GPU-a")]);
        assert_eq!(
            inv.validate().unwrap_err().to_string(),
            "gpus[2].uuid: duplicate GPU UUID \"GPU-a\" (first at gpus[0])"
        );
    }

    #[test]
    fn pairs_must_name_existing_devices() {
        let mut inv = node(vec![gpu(0, "GPU-a")]);
        inv.gpu_pairs.push(GpuPair {
            a: 0,
            b: 5,
            path: LinkPath::Sys,
        });
        assert_eq!(
            inv.validate().unwrap_err().to_string(),
            "gpu_pairs[0].b: no GPU with index 5 on this node"
        );
    }

    #[test]
    fn a_domain_cid_is_not_a_node() {
        let mut inv = node(vec![]);
        inv.cid = "cid:acme/cn-east-1/dc-a".parse().expect("valid");
        assert_eq!(
            inv.validate().unwrap_err().to_string(),
            "cid: cid:acme/cn-east-1/dc-a is not a node identifier (provider/region/domain/node)"
        );
    }

    #[test]
    fn link_paths_parse_and_order() {
        assert_eq!(
            "NV18".parse::<LinkPath>().expect("valid"),
            LinkPath::NvLink(18)
        );
        assert_eq!("pix".parse::<LinkPath>().expect("valid"), LinkPath::Pix);
        assert!("NV0".parse::<LinkPath>().is_err());
        assert!(LinkPath::NvLink(18).rank() < LinkPath::NvLink(2).rank());
        assert!(LinkPath::NvLink(1).rank() < LinkPath::Pix.rank());
        assert!(LinkPath::Pxb.gdr_local() && !LinkPath::Phb.gdr_local());
    }

    #[test]
    fn empty_machine_is_valid() {
        node(vec![]).validate().expect("no GPUs is a normal state");
    }
}
