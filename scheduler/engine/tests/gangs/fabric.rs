//! Builders for hand-made fabrics: nodes with a domain, spine and leaf.

use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use suanli_engine::domain::{DomainCatalog, DomainInfo, DomainLink};
use suanli_engine::gang::GangRequest;
use suanli_engine::inventory::{LinkPath, NodeInventory, PortState};
use suanli_engine::testing::H100Node;
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

/// `s` as its agent would report it: the shared H100 node, in region `r1`, on a larger host
/// (128 cores, 1 TiB, two NUMA nodes) as these tests' requests were sized for it, with the
/// spec's GPU model, NVLink islands and NIC.
pub fn inventory(s: &Spec) -> NodeInventory {
    let half = s.gpus / 2;
    let mut islands = Vec::new();
    if s.nvlink_islands {
        for a in 0..s.gpus {
            for b in a + 1..s.gpus {
                let path = if (a < half) == (b < half) {
                    LinkPath::NvLink(18)
                } else {
                    LinkPath::Sys
                };
                islands.push((a, b, path));
            }
        }
    }
    let mut node = H100Node::new(&s.name, s.gpus)
        .domain(s.domain)
        .fabric(s.leaf, s.spine)
        .pairs(&islands);
    if let Some((state, _, _)) = s.nic {
        node = node.nic("mlx5_0", state);
    }
    let mut inv = node.build();
    inv.cid = cid(&format!("cid:acme/r1/{}/{}", s.domain, s.name));
    inv.cpu_milli = 128_000;
    inv.memory_mib = 1 << 20;
    inv.numa_nodes = 2;
    for gpu in &mut inv.gpus {
        gpu.product = s.model.into();
        gpu.model = GpuModel::from_product_name(s.model);
    }
    // The builder's NIC runs at 400 Gb/s when active and is GPUDirect-local; a spec may
    // ask for another rate or a host-bridge path.
    if let Some((_, rate, gdr)) = s.nic {
        inv.nics[0].ports[0].rate_gbps = rate;
        for pair in &mut inv.gpu_nic_pairs {
            pair.path = if gdr { LinkPath::Pix } else { LinkPath::Phb };
            pair.gdr_local = gdr;
        }
    }
    inv
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
