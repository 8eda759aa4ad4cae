//! Builders shared by the tests.

use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use suanli_engine::{Cluster, NodeShape, Request};

pub fn rng(seed: u64) -> ChaCha8Rng {
    ChaCha8Rng::seed_from_u64(seed)
}

/// `n` nodes named `n0..`, each with `gpus` GPUs of `model`, 64 cores and 256 GiB.
pub fn shapes(n: usize, gpus: u32, model: &str) -> Vec<NodeShape> {
    (0..n)
        .map(|i| NodeShape {
            name: format!("{model}-n{i}").to_ascii_lowercase(),
            cpu_milli: 64_000,
            memory_mib: 262_144,
            gpus,
            model: (gpus > 0).then(|| model.parse().expect("valid model")),
            gpu_memory_mib: 32_768,
        })
        .collect()
}

pub fn cluster(shapes: &[NodeShape]) -> Cluster {
    Cluster::from_shapes(shapes).expect("valid shapes")
}

pub fn share(cpu: u64, milli: u32) -> Request {
    Request::from_openb(cpu, 1024, 1, milli, "").expect("valid share")
}

pub fn whole(cpu: u64, count: u32) -> Request {
    Request::from_openb(cpu, 1024, count, 1000, "").expect("valid whole-GPU request")
}

use std::collections::BTreeMap;
use suanli_engine::GpuModel;
use suanli_engine::inventory::{
    FabricPosition, GpuInfo, GpuPair, Health, LinkPath, MigState, NodeInventory, NvmlStatus,
    PcieLink, Versions,
};

/// An inventory for node `name` in domain `domain` with `gpus` H100s and the given GPU pairs.
pub fn inventory(
    domain: &str,
    name: &str,
    gpus: u32,
    pairs: &[(u32, u32, LinkPath)],
) -> NodeInventory {
    NodeInventory {
        cid: format!("cid:acme/cn-east-1/{domain}/{name}")
            .parse()
            .expect("valid cid"),
        generation: 1,
        fabric: FabricPosition::default(),
        cpu_milli: 128_000,
        memory_mib: 1 << 20,
        numa_nodes: 2,
        versions: Versions::default(),
        nvml: NvmlStatus::default(),
        gpus: (0..gpus)
            .map(|i| GpuInfo {
                uuid: format!("GPU-{name}-{i}"),
                index: i,
                product: "NVIDIA H100 80GB HBM3".into(),
                model: GpuModel::from_product_name("NVIDIA H100 80GB HBM3"),
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
        nics: vec![],
        gpu_pairs: pairs
            .iter()
            .map(|(a, b, path)| GpuPair {
                a: *a,
                b: *b,
                path: *path,
            })
            .collect(),
        gpu_nic_pairs: vec![],
        labels: BTreeMap::new(),
    }
}
