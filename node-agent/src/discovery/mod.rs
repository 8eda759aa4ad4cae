//! Discovery: what this machine has, as the engine's [`NodeInventory`].
//!
//! GPU facts come from a [`GpuProbe`]; host, PCIe and RDMA facts from sysfs under a
//! [`SysfsRoot`]. Both are injectable, so a recorded machine (fixture probe + fixture tree)
//! goes through exactly the code real hardware does.

pub mod mig;
pub mod nvml;
pub mod probe;
pub mod sysfs;

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};
use suanli_engine::gpu::mig_memory_class;
use suanli_engine::inventory::{
    FabricPosition, GpuInfo, GpuNicPair, GpuPair, LinkPath, MigInstance, MigState, NvLink,
    NvLinkRemote, NvmlStatus, PcieLink, Versions,
};
use suanli_engine::{Cid, GpuModel, MigProfile, NodeInventory};

pub use probe::{FixtureProbe, GpuProbe, GpuSample, NullProbe, RawGpu, RawGpus};
pub use sysfs::{SysfsRoot, Warning, Warnings};

use mig::profile_name;
use sysfs::{PciLocation, classify_pci_path, sysfs_bus_id};

pub const AGENT_VERSION: &str = env!("CARGO_PKG_VERSION");

/// What one discovery run found, and what it had to skip.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DiscoveryReport {
    pub inventory: NodeInventory,
    #[serde(default)]
    pub warnings: Vec<Warning>,
}

/// Runs discovery: the probe, then sysfs, then the paths between devices.
pub fn discover(
    probe: &dyn GpuProbe,
    root: &SysfsRoot,
    cid: Cid,
    fabric: FabricPosition,
) -> DiscoveryReport {
    let mut warnings = Warnings::default();
    let raw = probe.discover();
    for problem in &raw.warnings {
        warnings.push("nvml", problem.clone());
    }
    let host = root.host(&mut warnings);
    let gpus = normalize_gpus(&raw.gpus, root, &mut warnings);

    let mut gpu_locations: BTreeMap<u32, PciLocation> = BTreeMap::new();
    for gpu in &gpus {
        if let Some(loc) = root.pci_location(&gpu.pci_bus_id, &mut warnings) {
            gpu_locations.insert(gpu.index, loc);
        }
    }
    let gpu_pairs = gpu_pairs(&raw, &gpus, &gpu_locations, &mut warnings);

    let nics = root.rdma_nics(&mut warnings);
    let mut nic_locations: BTreeMap<String, PciLocation> = BTreeMap::new();
    for nic in &nics {
        if let Some(loc) = root.pci_location(&nic.pci_bus_id, &mut warnings) {
            nic_locations.insert(nic.name.clone(), loc);
        }
    }
    if !nics.is_empty() {
        for gpu in &gpus {
            if !gpu_locations.contains_key(&gpu.index) {
                warnings.push(
                    format!("sys/bus/pci/devices/{}", gpu.pci_bus_id),
                    format!(
                        "GPU {} is not in sysfs; its paths to RDMA NICs are unknown",
                        gpu.index
                    ),
                );
            }
        }
    }
    let gpu_nic_pairs = sysfs::gpu_nic_paths(&gpu_locations, &nic_locations)
        .into_iter()
        .map(|(gpu, nic, path)| GpuNicPair {
            gpu,
            nic,
            path,
            gdr_local: path.gdr_local(),
        })
        .collect();

    let (driver, cuda) = match &raw.nvml {
        NvmlStatus::Available {
            driver_version,
            cuda_version,
            ..
        } => (driver_version.clone(), cuda_version.clone()),
        NvmlStatus::Unavailable { .. } => (String::new(), String::new()),
    };
    let inventory = NodeInventory {
        cid,
        generation: 1,
        fabric,
        cpu_milli: host.cpus.saturating_mul(1000),
        memory_mib: host.memory_mib,
        numa_nodes: host.numa_nodes,
        versions: Versions {
            agent: AGENT_VERSION.to_string(),
            driver,
            cuda,
        },
        nvml: raw.nvml,
        gpus,
        nics,
        gpu_pairs,
        gpu_nic_pairs,
        labels: BTreeMap::new(),
    };
    DiscoveryReport {
        inventory,
        warnings: warnings.0,
    }
}

fn normalize_gpus(raw: &[RawGpu], root: &SysfsRoot, warnings: &mut Warnings) -> Vec<GpuInfo> {
    let local_buses: BTreeSet<String> = raw.iter().map(|g| sysfs_bus_id(&g.pci_bus_id)).collect();
    let mut gpus: Vec<GpuInfo> = raw
        .iter()
        .map(|g| {
            let pci_bus_id = sysfs_bus_id(&g.pci_bus_id);
            let numa_node = if g.numa_node >= 0 {
                Some(g.numa_node)
            } else {
                // NVML often answers "Not Supported"; the kernel may still know.
                root.pci_numa_node(&pci_bus_id, warnings)
            };
            let memory_mib = g.memory_total_bytes / (1024 * 1024);
            let nvlinks = g
                .nvlinks
                .iter()
                .map(|l| {
                    let remote_pci_bus_id = if l.remote_pci_bus_id.is_empty() {
                        String::new()
                    } else {
                        sysfs_bus_id(&l.remote_pci_bus_id)
                    };
                    let remote = l.remote.unwrap_or(if remote_pci_bus_id.is_empty() {
                        NvLinkRemote::Unknown
                    } else if local_buses.contains(&remote_pci_bus_id) {
                        NvLinkRemote::Gpu
                    } else {
                        NvLinkRemote::Switch
                    });
                    NvLink {
                        link: l.link,
                        active: l.active,
                        remote_pci_bus_id,
                        remote,
                    }
                })
                .collect();
            GpuInfo {
                uuid: g.uuid.clone(),
                index: g.index,
                product: g.name.clone(),
                model: GpuModel::from_product_name(&g.name),
                architecture: g.architecture.clone(),
                compute_capability: g.cuda_cc.clone(),
                memory_mib,
                pci_bus_id,
                numa_node,
                pcie: PcieLink {
                    generation: g.pcie_gen,
                    width: g.pcie_width,
                },
                mig: MigState {
                    capable: g.mig.capable,
                    enabled: g.mig.enabled,
                    instances: mig_instances(g, memory_mib, warnings),
                },
                nvlinks,
                health: g.health,
            }
        })
        .collect();
    gpus.sort_by_key(|g| g.index);
    gpus
}

/// Existing MIG devices with NVIDIA's profile names. NVML (as wrapped) does not tell where
/// a GPU instance sits, so `start_slice` is the first free placement the profile allows, in
/// the order NVML lists the devices.
fn mig_instances(gpu: &RawGpu, gpu_memory_mib: u64, warnings: &mut Warnings) -> Vec<MigInstance> {
    let class = mig_memory_class(gpu_memory_mib);
    let mut used = [false; 8];
    let mut out = Vec::new();
    for dev in &gpu.mig.devices {
        let name = profile_name(dev.profile_id, dev.slices, dev.memory_mb);
        let profile: MigProfile = match name.parse() {
            Ok(p) => p,
            Err(e) => {
                warnings.push(
                    format!("gpu {} mig {}", gpu.index, dev.uuid),
                    format!("profile {name} is not reported: {e}"),
                );
                continue;
            }
        };
        let spec = class.and_then(|c| profile.spec_for(c));
        let start_slice = spec
            .and_then(|spec| {
                let width = usize::from(spec.memory_slices);
                spec.starts
                    .iter()
                    .copied()
                    .find(|start| {
                        let s = usize::from(*start);
                        s + width <= used.len() && used[s..s + width].iter().all(|u| !u)
                    })
                    .inspect(|start| {
                        let s = usize::from(*start);
                        used[s..s + width].iter_mut().for_each(|u| *u = true);
                    })
            })
            .unwrap_or(0);
        out.push(MigInstance {
            uuid: dev.uuid.clone(),
            profile,
            memory_mib: dev.memory_mb,
            sm_count: dev.sm_count,
            start_slice,
        });
    }
    out
}

/// GPU↔GPU paths: NVLink first (direct links counted per peer; through NVSwitch the smaller
/// of the two GPUs' switch links), then PCIe from NVML's topology, then from sysfs.
fn gpu_pairs(
    raw: &RawGpus,
    gpus: &[GpuInfo],
    locations: &BTreeMap<u32, PciLocation>,
    warnings: &mut Warnings,
) -> Vec<GpuPair> {
    let pcie: BTreeMap<(u32, u32), &str> = raw
        .pcie_levels
        .iter()
        .map(|l| ((l.a.min(l.b), l.a.max(l.b)), l.level.as_str()))
        .collect();
    let switch_links = |g: &GpuInfo| {
        g.nvlinks
            .iter()
            .filter(|l| l.active && l.remote == NvLinkRemote::Switch)
            .count() as u32
    };
    let mut out = Vec::new();
    for (i, a) in gpus.iter().enumerate() {
        for b in &gpus[i + 1..] {
            let direct = a
                .nvlinks
                .iter()
                .filter(|l| {
                    l.active && l.remote == NvLinkRemote::Gpu && l.remote_pci_bus_id == b.pci_bus_id
                })
                .count() as u32;
            let via_switch = switch_links(a).min(switch_links(b));
            let key = (a.index.min(b.index), a.index.max(b.index));
            let path = if direct > 0 {
                Some(LinkPath::NvLink(direct))
            } else if via_switch > 0 {
                Some(LinkPath::NvLink(via_switch))
            } else if let Some(level) = pcie.get(&key) {
                match level.parse::<LinkPath>() {
                    Ok(p) => Some(p),
                    Err(e) => {
                        warnings.push(format!("gpu {} <-> gpu {}", key.0, key.1), e.to_string());
                        None
                    }
                }
            } else {
                match (locations.get(&a.index), locations.get(&b.index)) {
                    (Some(la), Some(lb)) => Some(classify_pci_path(la, lb)),
                    _ => {
                        warnings.push(
                            format!("gpu {} <-> gpu {}", key.0, key.1),
                            "no NVLink, and neither NVML nor sysfs knows the PCIe path",
                        );
                        None
                    }
                }
            };
            if let Some(path) = path {
                out.push(GpuPair {
                    a: key.0,
                    b: key.1,
                    path,
                });
            }
        }
    }
    out
}
