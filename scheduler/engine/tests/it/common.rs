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
