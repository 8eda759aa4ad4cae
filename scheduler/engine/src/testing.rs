//! Builders for tests of this crate and the crates above it (feature `testing`).
//!
//! One place builds the plain H100 node that most tests need, so that a new inventory field
//! is filled in once rather than in every crate's copy. Tests that need something unusual
//! build the default and change the fields that matter to them, where the reader sees it.

use std::collections::BTreeMap;

use crate::GpuModel;
use crate::cid::Cid;
use crate::inventory::{
    FabricPosition, GpuInfo, GpuNicPair, GpuPair, Health, LinkLayer, LinkPath, MigState, NicPort,
    NodeInventory, NvmlStatus, PcieLink, PortState, RdmaNic, Versions,
};

/// The product name NVML reports for the H100 SXM the builder puts in.
pub const H100_PRODUCT: &str = "NVIDIA H100 80GB HBM3";

/// A node of whole H100s, GPU `i` with UUID `GPU-{name}-{i}`, in
/// `cid:acme/cn-east-1/dc-a/{name}` unless [`H100Node::domain`] says otherwise: 64 cores,
/// 512 GiB, one NUMA node, PCIe Gen5 x16, no NVLink pairs, no NICs, fabric position unknown.
#[derive(Debug, Clone)]
pub struct H100Node {
    name: String,
    domain: String,
    gpus: u32,
    fabric: FabricPosition,
    pairs: Vec<GpuPair>,
    nics: Vec<(String, PortState)>,
}

impl H100Node {
    pub fn new(name: &str, gpus: u32) -> H100Node {
        H100Node {
            name: name.to_string(),
            domain: "dc-a".to_string(),
            gpus,
            fabric: FabricPosition::default(),
            pairs: Vec::new(),
            nics: Vec::new(),
        }
    }

    /// The domain (third CID segment) the node is in.
    pub fn domain(mut self, domain: &str) -> H100Node {
        self.domain = domain.to_string();
        self
    }

    /// The leaf and spine switches above the node.
    pub fn fabric(mut self, leaf: &str, spine: &str) -> H100Node {
        self.fabric = FabricPosition {
            leaf: leaf.to_string(),
            spine: spine.to_string(),
        };
        self
    }

    /// GPU pairs `(a, b, path)`, as `nvidia-smi topo -m` would report them.
    pub fn pairs(mut self, pairs: &[(u32, u32, LinkPath)]) -> H100Node {
        self.pairs = pairs
            .iter()
            .map(|&(a, b, path)| GpuPair { a, b, path })
            .collect();
        self
    }

    /// One more 400 Gb/s InfiniBand NIC `name`, GPUDirect-local (PIX) to every GPU, with
    /// its one port in `state` (0 Gb/s unless active).
    pub fn nic(mut self, name: &str, state: PortState) -> H100Node {
        self.nics.push((name.to_string(), state));
        self
    }

    pub fn build(self) -> NodeInventory {
        let cid = Cid::node("acme", "cn-east-1", &self.domain, &self.name)
            .expect("test node names are valid CID segments");
        let gpus = (0..self.gpus)
            .map(|i| GpuInfo {
                uuid: format!("GPU-{}-{i}", self.name),
                index: i,
                product: H100_PRODUCT.into(),
                model: GpuModel::from_product_name(H100_PRODUCT),
                architecture: "Hopper".into(),
                compute_capability: "9.0".into(),
                memory_mib: 81_559,
                pci_bus_id: format!("0000:{:02x}:00.0", 0x18 + i),
                numa_node: None,
                pcie: PcieLink {
                    generation: 5,
                    width: 16,
                },
                mig: MigState::default(),
                nvlinks: vec![],
                health: Health::Healthy,
            })
            .collect();
        let nics = self
            .nics
            .iter()
            .zip(0u32..)
            .map(|((name, state), n)| RdmaNic {
                name: name.clone(),
                pci_bus_id: format!("0000:{:02x}:00.0", 0x1a + n * 0x20),
                numa_node: None,
                node_guid: String::new(),
                firmware: String::new(),
                netdevs: vec![],
                ports: vec![NicPort {
                    port: 1,
                    state: *state,
                    link_layer: LinkLayer::Infiniband,
                    rate_gbps: if *state == PortState::Active {
                        400.0
                    } else {
                        0.0
                    },
                    gid_type: String::new(),
                }],
                health: Health::Healthy,
            })
            .collect();
        let gpu_nic_pairs = self
            .nics
            .iter()
            .flat_map(|(nic, _)| {
                (0..self.gpus).map(move |gpu| GpuNicPair {
                    gpu,
                    nic: nic.clone(),
                    path: LinkPath::Pix,
                    gdr_local: true,
                })
            })
            .collect();
        NodeInventory {
            cid,
            generation: 1,
            fabric: self.fabric,
            cpu_milli: 64_000,
            memory_mib: 512 * 1024,
            numa_nodes: 1,
            versions: Versions::default(),
            nvml: NvmlStatus::default(),
            gpus,
            nics,
            gpu_pairs: self.pairs,
            gpu_nic_pairs,
            labels: BTreeMap::new(),
        }
    }
}
