//! `inventory.proto` ↔ `suanli_engine::inventory`.

use suanli_engine::Problem;
use suanli_engine::inventory::{
    FabricPosition, GpuInfo, GpuNicPair, GpuPair, Health, LinkLayer, LinkPath, MigInstance,
    MigState, NicPort, NodeInventory, NvLink, NvLinkRemote, NvmlStatus, PcieLink, PortState,
    RdmaNic, Versions,
};

use super::{
    ConvertError, check_len, convert_each, decode_enum, parse_cid, parse_gpu_model,
    parse_mig_profile, required,
};
use crate::pb;

/// Bounds on repeated fields: the engine's own limits (`suanli_engine::inventory`), so what
/// the wire accepts the engine can model. Far above real machines (8–16 GPUs, 18 NVLinks per
/// GPU, at most 7 MIG instances per GPU), low enough that a hostile report cannot make the
/// scheduler allocate without limit.
pub const MAX_GPUS: usize = suanli_engine::inventory::MAX_GPUS_PER_NODE as usize;
pub const MAX_MIG_INSTANCES: usize = suanli_engine::inventory::MAX_MIG_INSTANCES_PER_GPU;
pub const MAX_NVLINKS: usize = suanli_engine::inventory::MAX_NVLINKS_PER_GPU;
pub const MAX_NICS: usize = suanli_engine::inventory::MAX_NICS_PER_NODE;
pub const MAX_NIC_PORTS: usize = suanli_engine::inventory::MAX_PORTS_PER_NIC;
pub const MAX_NETDEVS: usize = 64;
/// Every GPU pair of the largest node, and every GPU–NIC pair.
pub const MAX_PAIRS: usize = MAX_GPUS * MAX_NICS;
pub const MAX_LABELS: usize = suanli_engine::inventory::MAX_LABELS;

/// MIG memory slices are numbered 0–7 on every MIG-capable GPU.
const MAX_START_SLICE: u32 = 7;

impl From<FabricPosition> for pb::FabricPosition {
    fn from(fabric: FabricPosition) -> Self {
        pb::FabricPosition {
            leaf: fabric.leaf,
            spine: fabric.spine,
        }
    }
}

impl From<pb::FabricPosition> for FabricPosition {
    fn from(msg: pb::FabricPosition) -> Self {
        FabricPosition {
            leaf: msg.leaf,
            spine: msg.spine,
        }
    }
}

impl From<Versions> for pb::Versions {
    fn from(v: Versions) -> Self {
        pb::Versions {
            agent: v.agent,
            driver: v.driver,
            cuda: v.cuda,
        }
    }
}

impl From<pb::Versions> for Versions {
    fn from(msg: pb::Versions) -> Self {
        Versions {
            agent: msg.agent,
            driver: msg.driver,
            cuda: msg.cuda,
        }
    }
}

impl From<NvmlStatus> for pb::NvmlStatus {
    fn from(status: NvmlStatus) -> Self {
        use pb::nvml_status::Status;
        let status = match status {
            NvmlStatus::Available {
                driver_version,
                cuda_version,
                nvml_version,
            } => Status::Available(pb::NvmlAvailable {
                driver_version,
                cuda_version,
                nvml_version,
            }),
            NvmlStatus::Unavailable { reason } => {
                Status::Unavailable(pb::NvmlUnavailable { reason })
            }
        };
        pb::NvmlStatus {
            status: Some(status),
        }
    }
}

impl TryFrom<pb::NvmlStatus> for NvmlStatus {
    type Error = ConvertError;

    fn try_from(msg: pb::NvmlStatus) -> Result<Self, ConvertError> {
        use pb::nvml_status::Status;
        match required("", msg.status, "one of available or unavailable")? {
            Status::Available(a) => Ok(NvmlStatus::Available {
                driver_version: a.driver_version,
                cuda_version: a.cuda_version,
                nvml_version: a.nvml_version,
            }),
            Status::Unavailable(u) => Ok(NvmlStatus::Unavailable { reason: u.reason }),
        }
    }
}

impl From<PcieLink> for pb::PcieLink {
    fn from(link: PcieLink) -> Self {
        pb::PcieLink {
            generation: link.generation,
            width: link.width,
        }
    }
}

impl From<pb::PcieLink> for PcieLink {
    fn from(msg: pb::PcieLink) -> Self {
        PcieLink {
            generation: msg.generation,
            width: msg.width,
        }
    }
}

impl From<MigInstance> for pb::MigInstance {
    fn from(mig: MigInstance) -> Self {
        pb::MigInstance {
            uuid: mig.uuid,
            profile: mig.profile.to_string(),
            memory_mib: mig.memory_mib,
            sm_count: mig.sm_count,
            start_slice: u32::from(mig.start_slice),
        }
    }
}

impl TryFrom<pb::MigInstance> for MigInstance {
    type Error = ConvertError;

    fn try_from(msg: pb::MigInstance) -> Result<Self, ConvertError> {
        let start_slice = u8::try_from(msg.start_slice)
            .ok()
            .filter(|s| u32::from(*s) <= MAX_START_SLICE)
            .ok_or_else(|| {
                ConvertError::invalid(
                    "start_slice",
                    Problem::OutOfRange {
                        min: 0,
                        max: i64::from(MAX_START_SLICE),
                        got: i64::from(msg.start_slice),
                    },
                )
            })?;
        Ok(MigInstance {
            uuid: msg.uuid,
            profile: parse_mig_profile("profile", &msg.profile)?,
            memory_mib: msg.memory_mib,
            sm_count: msg.sm_count,
            start_slice,
        })
    }
}

impl From<MigState> for pb::MigState {
    fn from(mig: MigState) -> Self {
        pb::MigState {
            capable: mig.capable,
            enabled: mig.enabled,
            instances: mig.instances.into_iter().map(Into::into).collect(),
        }
    }
}

impl TryFrom<pb::MigState> for MigState {
    type Error = ConvertError;

    fn try_from(msg: pb::MigState) -> Result<Self, ConvertError> {
        Ok(MigState {
            capable: msg.capable,
            enabled: msg.enabled,
            instances: convert_each(
                "instances",
                msg.instances,
                MAX_MIG_INSTANCES,
                MigInstance::try_from,
            )?,
        })
    }
}

impl From<NvLinkRemote> for pb::NvLinkRemote {
    fn from(remote: NvLinkRemote) -> Self {
        match remote {
            NvLinkRemote::Gpu => pb::NvLinkRemote::Gpu,
            NvLinkRemote::Switch => pb::NvLinkRemote::Switch,
            NvLinkRemote::Unknown => pb::NvLinkRemote::Unknown,
        }
    }
}

impl From<pb::NvLinkRemote> for NvLinkRemote {
    fn from(remote: pb::NvLinkRemote) -> Self {
        match remote {
            pb::NvLinkRemote::Unspecified | pb::NvLinkRemote::Unknown => NvLinkRemote::Unknown,
            pb::NvLinkRemote::Gpu => NvLinkRemote::Gpu,
            pb::NvLinkRemote::Switch => NvLinkRemote::Switch,
        }
    }
}

impl From<NvLink> for pb::NvLink {
    fn from(link: NvLink) -> Self {
        pb::NvLink {
            link: link.link,
            active: link.active,
            remote_pci_bus_id: link.remote_pci_bus_id,
            remote: pb::NvLinkRemote::from(link.remote).into(),
        }
    }
}

impl TryFrom<pb::NvLink> for NvLink {
    type Error = ConvertError;

    fn try_from(msg: pb::NvLink) -> Result<Self, ConvertError> {
        Ok(NvLink {
            link: msg.link,
            active: msg.active,
            remote_pci_bus_id: msg.remote_pci_bus_id,
            remote: decode_enum::<pb::NvLinkRemote>("remote", msg.remote)?.into(),
        })
    }
}

/// A NUMA node is a non-negative number or absent; `-1` (sysfs for "unknown") must be sent as
/// absent, so the two spellings of "unknown" never both reach the scheduler.
fn numa_node(field: &str, raw: Option<i32>) -> Result<Option<i32>, ConvertError> {
    match raw {
        Some(n) if n < 0 => Err(ConvertError::invalid(
            field,
            Problem::Invalid(format!(
                "{n} is not a NUMA node; leave the field unset when it is unknown"
            )),
        )),
        other => Ok(other),
    }
}

fn health(field: &str, raw: i32) -> Result<Health, ConvertError> {
    Ok(decode_enum::<pb::Health>(field, raw)?.into())
}

impl From<GpuInfo> for pb::GpuInfo {
    fn from(gpu: GpuInfo) -> Self {
        pb::GpuInfo {
            uuid: gpu.uuid,
            index: gpu.index,
            product: gpu.product,
            model: gpu.model.to_string(),
            architecture: gpu.architecture,
            compute_capability: gpu.compute_capability,
            memory_mib: gpu.memory_mib,
            pci_bus_id: gpu.pci_bus_id,
            numa_node: gpu.numa_node,
            pcie: Some(gpu.pcie.into()),
            mig: Some(gpu.mig.into()),
            nvlinks: gpu.nvlinks.into_iter().map(Into::into).collect(),
            health: pb::Health::from(gpu.health).into(),
        }
    }
}

impl TryFrom<pb::GpuInfo> for GpuInfo {
    type Error = ConvertError;

    fn try_from(msg: pb::GpuInfo) -> Result<Self, ConvertError> {
        Ok(GpuInfo {
            model: parse_gpu_model("model", &msg.model)?,
            numa_node: numa_node("numa_node", msg.numa_node)?,
            pcie: msg.pcie.map(PcieLink::from).unwrap_or_default(),
            mig: match msg.mig {
                Some(mig) => MigState::try_from(mig).map_err(|e| e.within("mig"))?,
                None => MigState::default(),
            },
            nvlinks: convert_each("nvlinks", msg.nvlinks, MAX_NVLINKS, NvLink::try_from)?,
            health: health("health", msg.health)?,
            uuid: msg.uuid,
            index: msg.index,
            product: msg.product,
            architecture: msg.architecture,
            compute_capability: msg.compute_capability,
            memory_mib: msg.memory_mib,
            pci_bus_id: msg.pci_bus_id,
        })
    }
}

impl From<NicPort> for pb::NicPort {
    fn from(port: NicPort) -> Self {
        pb::NicPort {
            port: port.port,
            state: pb::PortState::from(port.state).into(),
            link_layer: pb::LinkLayer::from(port.link_layer).into(),
            rate_gbps: port.rate_gbps,
            gid_type: port.gid_type,
        }
    }
}

impl TryFrom<pb::NicPort> for NicPort {
    type Error = ConvertError;

    fn try_from(msg: pb::NicPort) -> Result<Self, ConvertError> {
        Ok(NicPort {
            port: msg.port,
            state: PortState::from(decode_enum::<pb::PortState>("state", msg.state)?),
            link_layer: LinkLayer::from(decode_enum::<pb::LinkLayer>(
                "link_layer",
                msg.link_layer,
            )?),
            rate_gbps: msg.rate_gbps,
            gid_type: msg.gid_type,
        })
    }
}

impl From<RdmaNic> for pb::RdmaNic {
    fn from(nic: RdmaNic) -> Self {
        pb::RdmaNic {
            name: nic.name,
            pci_bus_id: nic.pci_bus_id,
            numa_node: nic.numa_node,
            node_guid: nic.node_guid,
            firmware: nic.firmware,
            netdevs: nic.netdevs,
            ports: nic.ports.into_iter().map(Into::into).collect(),
            health: pb::Health::from(nic.health).into(),
        }
    }
}

impl TryFrom<pb::RdmaNic> for RdmaNic {
    type Error = ConvertError;

    fn try_from(msg: pb::RdmaNic) -> Result<Self, ConvertError> {
        check_len("netdevs", msg.netdevs.len(), MAX_NETDEVS)?;
        Ok(RdmaNic {
            numa_node: numa_node("numa_node", msg.numa_node)?,
            ports: convert_each("ports", msg.ports, MAX_NIC_PORTS, NicPort::try_from)?,
            health: health("health", msg.health)?,
            name: msg.name,
            pci_bus_id: msg.pci_bus_id,
            node_guid: msg.node_guid,
            firmware: msg.firmware,
            netdevs: msg.netdevs,
        })
    }
}

fn link_path(msg: Option<pb::LinkPath>) -> Result<LinkPath, ConvertError> {
    let path = required("path", msg, "a link path")?;
    LinkPath::try_from(path).map_err(|e| e.within("path"))
}

impl From<GpuPair> for pb::GpuPair {
    fn from(pair: GpuPair) -> Self {
        pb::GpuPair {
            a: pair.a,
            b: pair.b,
            path: Some(pair.path.into()),
        }
    }
}

impl TryFrom<pb::GpuPair> for GpuPair {
    type Error = ConvertError;

    fn try_from(msg: pb::GpuPair) -> Result<Self, ConvertError> {
        Ok(GpuPair {
            a: msg.a,
            b: msg.b,
            path: link_path(msg.path)?,
        })
    }
}

impl From<GpuNicPair> for pb::GpuNicPair {
    fn from(pair: GpuNicPair) -> Self {
        pb::GpuNicPair {
            gpu: pair.gpu,
            nic: pair.nic,
            path: Some(pair.path.into()),
            gdr_local: pair.gdr_local,
        }
    }
}

impl TryFrom<pb::GpuNicPair> for GpuNicPair {
    type Error = ConvertError;

    fn try_from(msg: pb::GpuNicPair) -> Result<Self, ConvertError> {
        Ok(GpuNicPair {
            gpu: msg.gpu,
            nic: msg.nic,
            path: link_path(msg.path)?,
            gdr_local: msg.gdr_local,
        })
    }
}

impl From<NodeInventory> for pb::NodeInventory {
    fn from(inv: NodeInventory) -> Self {
        pb::NodeInventory {
            cid: inv.cid.to_string(),
            generation: inv.generation,
            fabric: Some(inv.fabric.into()),
            cpu_milli: inv.cpu_milli,
            memory_mib: inv.memory_mib,
            numa_nodes: inv.numa_nodes,
            versions: Some(inv.versions.into()),
            nvml: Some(inv.nvml.into()),
            gpus: inv.gpus.into_iter().map(Into::into).collect(),
            nics: inv.nics.into_iter().map(Into::into).collect(),
            gpu_pairs: inv.gpu_pairs.into_iter().map(Into::into).collect(),
            gpu_nic_pairs: inv.gpu_nic_pairs.into_iter().map(Into::into).collect(),
            labels: inv.labels,
        }
    }
}

impl TryFrom<pb::NodeInventory> for NodeInventory {
    type Error = ConvertError;

    /// Maps every field, then runs [`NodeInventory::validate`]; errors start with `inventory.`.
    fn try_from(msg: pb::NodeInventory) -> Result<Self, ConvertError> {
        inventory_from_wire(msg).map_err(|e| e.within("inventory"))
    }
}

fn inventory_from_wire(msg: pb::NodeInventory) -> Result<NodeInventory, ConvertError> {
    // Sizes first: rejecting a flood must not cost converting it.
    check_len("gpus", msg.gpus.len(), MAX_GPUS)?;
    check_len("nics", msg.nics.len(), MAX_NICS)?;
    check_len("gpu_pairs", msg.gpu_pairs.len(), MAX_PAIRS)?;
    check_len("gpu_nic_pairs", msg.gpu_nic_pairs.len(), MAX_PAIRS)?;
    check_len("labels", msg.labels.len(), MAX_LABELS)?;
    let inventory = NodeInventory {
        cid: parse_cid("cid", &msg.cid)?,
        generation: msg.generation,
        fabric: msg.fabric.map(FabricPosition::from).unwrap_or_default(),
        cpu_milli: msg.cpu_milli,
        memory_mib: msg.memory_mib,
        numa_nodes: msg.numa_nodes,
        versions: msg.versions.map(Versions::from).unwrap_or_default(),
        nvml: match msg.nvml {
            Some(nvml) => NvmlStatus::try_from(nvml).map_err(|e| e.within("nvml"))?,
            None => NvmlStatus::default(),
        },
        gpus: convert_each("gpus", msg.gpus, MAX_GPUS, GpuInfo::try_from)?,
        nics: convert_each("nics", msg.nics, MAX_NICS, RdmaNic::try_from)?,
        gpu_pairs: convert_each("gpu_pairs", msg.gpu_pairs, MAX_PAIRS, GpuPair::try_from)?,
        gpu_nic_pairs: convert_each(
            "gpu_nic_pairs",
            msg.gpu_nic_pairs,
            MAX_PAIRS,
            GpuNicPair::try_from,
        )?,
        labels: msg.labels,
    };
    inventory.validate().map_err(ConvertError::from)?;
    Ok(inventory)
}

/// Reads the required inventory of a `RegisterRequest` or `InventoryUpdate`.
pub fn required_inventory(msg: Option<pb::NodeInventory>) -> Result<NodeInventory, ConvertError> {
    let msg = required("inventory", msg, "the node inventory")?;
    NodeInventory::try_from(msg)
}
