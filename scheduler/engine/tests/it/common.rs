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

use suanli_engine::inventory::{LinkPath, NodeInventory};
use suanli_engine::testing::H100Node;

/// An inventory for node `name` in domain `domain` with `gpus` H100s and the given GPU pairs,
/// on a larger host than the shared builder's (128 cores, 1 TiB, two NUMA nodes), as these
/// tests' CPU and memory requests were sized for it.
pub fn inventory(
    domain: &str,
    name: &str,
    gpus: u32,
    pairs: &[(u32, u32, LinkPath)],
) -> NodeInventory {
    let mut inv = H100Node::new(name, gpus)
        .domain(domain)
        .pairs(pairs)
        .build();
    inv.cpu_milli = 128_000;
    inv.memory_mib = 1 << 20;
    inv.numa_nodes = 2;
    inv
}
