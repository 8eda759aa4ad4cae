//! Builders for hand-made fabrics: nodes with a domain, spine and leaf.

use std::collections::BTreeMap;

use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use suanli_engine::domain::{DomainCatalog, DomainInfo, DomainLink};
use suanli_engine::gang::GangRequest;
use suanli_engine::inventory::{
    FabricPosition, GpuInfo, GpuNicPair, GpuPair, Health, LinkLayer, LinkPath, MigState, NicPort,
    NodeInventory, NvmlStatus, PcieLink, PortState, RdmaNic, Versions,
};
use suanli_engine::{Cid, GpuModel, Request};

#[allow(dead_code)]
pub fn rng(seed: u64) -> ChaCha8Rng {
    ChaCha8Rng::seed_from_u64(seed)
}

pub fn cid(s: &str) -> Cid {
    s.parse().expect("valid cid")
}

/// The domain CID `cid:acme/r1/<domain>`.
pub fn domain(name: &str) -> Cid {
    cid(&format!("cid:acme/r1/{name}"))
}

/// How a test node looks.
#[derive(Debug, Clone)]
pub struct Spec {
    pub domain: &'static str,
    pub spine: &'static str,
    pub leaf: &'static str,
    pub name: String,
    pub gpus: u32,
    pub model: &'static str,
    /// GPUs `0..gpus/2` and `gpus/2..` form two NVLink islands joined over SYS.
    pub nvlink_islands: bool,
    /// One NIC: its port rate and whether GPUs reach it over PIX (GPUDirect) or PHB.
    pub nic: Option<(PortState, f64, bool)>,
}

pub fn spec(domain: &'static str, spine: &'static str, leaf: &'static str, name: &str) -> Spec {
    Spec {
        domain,
        spine,
        leaf,
        name: name.to_string(),
        gpus: 8,
        model: "NVIDIA H100 80GB HBM3",
        nvlink_islands: false,
        nic: None,
    }
}

pub fn inventory(s: &Spec) -> NodeInventory {
    let half = s.gpus / 2;
    let mut pairs = Vec::new();
    if s.nvlink_islands {
        for a in 0..s.gpus {
            for b in a + 1..s.gpus {
                let same = (a < half) == (b < half);
                pairs.push(GpuPair {
                    a,
                    b,
                    path: if same {
                        LinkPath::NvLink(18)
                    } else {
                        LinkPath::Sys
                    },
                });
            }
        }
    }
    let (nics, gpu_nic_pairs) = match s.nic {
        None => (vec![], vec![]),
        Some((state, rate, gdr)) => (
            vec![RdmaNic {
                name: "mlx5_0".into(),
                pci_bus_id: "0000:1a:00.0".into(),
                numa_node: None,
                node_guid: String::new(),
                firmware: String::new(),
                netdevs: vec![],
                ports: vec![NicPort {
                    port: 1,
                    state,
                    link_layer: LinkLayer::Infiniband,
                    rate_gbps: rate,
                    gid_type: String::new(),
                }],
                health: Health::Healthy,
            }],
            (0..s.gpus)
                .map(|g| GpuNicPair {
                    gpu: g,
                    nic: "mlx5_0".into(),
                    path: if gdr { LinkPath::Pix } else { LinkPath::Phb },
                    gdr_local: gdr,
                })
                .collect(),
        ),
    };
    NodeInventory {
        cid: cid(&format!("cid:acme/r1/{}/{}", s.domain, s.name)),
        generation: 1,
        fabric: FabricPosition {
            leaf: s.leaf.into(),
            spine: s.spine.into(),
        },
        cpu_milli: 128_000,
        memory_mib: 1 << 20,
        numa_nodes: 2,
        versions: Versions::default(),
        nvml: NvmlStatus::default(),
        gpus: (0..s.gpus)
            .map(|i| GpuInfo {
                uuid: format!("GPU-{}-{i}", s.name),
                index: i,
                product: s.model.into(),
                model: GpuModel::from_product_name(s.model),
                architecture: "Hopper".into(),
                compute_capability: "9.0".into(),
                memory_mib: 81_559,
                pci_bus_id: format!("0000:{:02x}:00.0", 0x18 + i),
                numa_node: None,
                pcie: PcieLink::default(),
                mig: MigState::default(),
                nvlinks: vec![],
                health: Health::Healthy,
            })
            .collect(),
        nics,
        gpu_pairs: pairs,
        gpu_nic_pairs,
        labels: BTreeMap::new(),
    }
}

/// `n` nodes named `<prefix>-<i>` on one leaf.
pub fn leaf(
    domain: &'static str,
    spine: &'static str,
    leaf: &'static str,
    prefix: &str,
    n: usize,
) -> Vec<Spec> {
    (0..n)
        .map(|i| spec(domain, spine, leaf, &format!("{prefix}-{i}")))
        .collect()
}

pub fn inventories(specs: &[Spec]) -> Vec<NodeInventory> {
    specs.iter().map(inventory).collect()
}

/// A catalog with the given (domain, price) pairs and (a, b, Gb/s) links.
pub fn catalog(prices: &[(&str, f64)], links: &[(&str, &str, f64)]) -> DomainCatalog {
    DomainCatalog::new(
        prices
            .iter()
            .map(|(d, p)| DomainInfo {
                cid: domain(d),
                price_per_gpu_hour: *p,
            })
            .collect(),
        links
            .iter()
            .map(|(a, b, bw)| DomainLink {
                a: domain(a),
                b: domain(b),
                bandwidth_gbps: *bw,
                latency_ms: 1.0,
            })
            .collect(),
    )
    .expect("valid catalog")
}

/// A training gang of `replicas` × `gpus` whole GPUs.
pub fn gang(replicas: u32, gpus: u32) -> GangRequest {
    let request = Request::new(
        8_000,
        65_536,
        suanli_engine::GpuDemand::Exclusive { count: gpus },
    )
    .expect("valid request");
    GangRequest::new(request, replicas)
}
