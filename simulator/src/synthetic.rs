//! A seeded synthetic cluster and workload, shaped like the `openb` trace: many GPU-sharing
//! pods, mostly one-GPU jobs, a few multi-GPU gangs, some CPU-only pods and a few pods pinned
//! to a GPU model.

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use suanli_engine::GpuModel;

use crate::model::{NodeShape, PodRecord, Request, TimedJob};

#[derive(Debug, Clone, Copy)]
pub struct SyntheticConfig {
    /// Number of 8-GPU nodes; the cluster also gets half as many 2-GPU and a quarter as
    /// many 4-GPU nodes.
    pub big_nodes: u32,
    pub jobs: usize,
    /// Offered GPU load as a fraction of capacity, which sets the arrival rate.
    pub load: f64,
    /// Mean job duration in seconds.
    pub mean_duration: f64,
    pub seed: u64,
}

impl Default for SyntheticConfig {
    fn default() -> Self {
        SyntheticConfig {
            big_nodes: 32,
            jobs: 3000,
            load: 0.9,
            mean_duration: 3600.0,
            seed: 42,
        }
    }
}

fn model(name: &str) -> GpuModel {
    name.parse().expect("built-in GPU model names are valid")
}

pub fn cluster(config: &SyntheticConfig) -> Vec<NodeShape> {
    let mut nodes = Vec::new();
    let mut add = |count: u32, gpus: u32, cpu_cores: u64, mem_gib: u64, name: &str| {
        for _ in 0..count {
            nodes.push(NodeShape {
                name: format!("syn-node-{:04}", nodes.len()),
                cpu_milli: cpu_cores * 1000,
                memory_mib: mem_gib * 1024,
                gpus,
                model: Some(model(name)),
            });
        }
    };
    let big = config.big_nodes.max(1);
    add(big, 8, 96, 384, "V100M32");
    add(big.div_ceil(2), 2, 64, 256, "T4");
    add(big.div_ceil(4), 4, 48, 192, "A10");
    nodes
}

/// Fractions of one GPU that shared pods ask for, as in `openb`.
const SHARE_MILLI: &[u32] = &[
    50, 110, 160, 220, 230, 320, 370, 460, 470, 550, 590, 650, 810,
];

fn draw_request(rng: &mut ChaCha8Rng) -> Request {
    let kind: f64 = rng.random();
    let (num_gpu, gpu_milli) = if kind < 0.13 {
        (0, 0)
    } else if kind < 0.50 {
        (1, SHARE_MILLI[rng.random_range(0..SHARE_MILLI.len())])
    } else if kind < 0.95 {
        (1, 1000)
    } else if kind < 0.97 {
        (2, 1000)
    } else if kind < 0.99 {
        (4, 1000)
    } else {
        (8, 1000)
    };
    let cores_per_gpu = [2u64, 4, 6, 8, 12][rng.random_range(0..5)];
    let cpu_milli = if num_gpu == 0 {
        rng.random_range(1..=16) * 1000
    } else {
        cores_per_gpu * 1000 * u64::from(num_gpu)
    };
    let memory_mib = cpu_milli / 1000 * 4096;
    let models = if num_gpu > 0 && rng.random::<f64>() < 0.08 {
        vec![model(if rng.random::<bool>() {
            "V100M32"
        } else {
            "T4"
        })]
    } else {
        Vec::new()
    };
    Request {
        cpu_milli,
        memory_mib,
        num_gpu,
        gpu_milli,
        models,
    }
}

/// A pod list for the fill protocol.
pub fn pods(config: &SyntheticConfig) -> Vec<PodRecord> {
    let mut rng = ChaCha8Rng::seed_from_u64(config.seed);
    (0..config.jobs)
        .map(|i| PodRecord {
            name: format!("syn-pod-{i:05}"),
            request: draw_request(&mut rng),
            qos: None,
            phase: None,
            creation_time: None,
            deletion_time: None,
            scheduled_time: None,
        })
        .collect()
}

/// Timed jobs for the replay protocol: Poisson arrivals at the rate that offers
/// `config.load` of the cluster's GPUs, exponential durations, four tenants.
pub fn jobs(config: &SyntheticConfig, nodes: &[NodeShape]) -> Vec<TimedJob> {
    let mut rng = ChaCha8Rng::seed_from_u64(config.seed ^ 0x5eed_5eed);
    let capacity_gpus: f64 = nodes.iter().map(|n| f64::from(n.gpus)).sum();
    let requests: Vec<Request> = (0..config.jobs).map(|_| draw_request(&mut rng)).collect();
    let mean_gpus = requests
        .iter()
        .map(|r| r.total_gpu_milli() as f64 / 1000.0)
        .sum::<f64>()
        / requests.len().max(1) as f64;
    // Little's law: busy GPUs = rate * mean duration * mean GPUs per job.
    let rate = config.load * capacity_gpus / (config.mean_duration * mean_gpus.max(1e-9));
    let tenants = ["team-a", "team-b", "team-c", "team-d"];
    let mut now = 0.0f64;
    requests
        .into_iter()
        .enumerate()
        .map(|(id, replica)| {
            let gap = -rng.random::<f64>().max(1e-12).ln() / rate;
            now += gap;
            let duration = (-rng.random::<f64>().max(1e-12).ln() * config.mean_duration).max(1.0);
            TimedJob {
                id,
                arrival: now as u64,
                duration: duration as u64,
                replica,
                replicas: 1,
                tenant: tenants[rng.random_range(0..tenants.len())].to_string(),
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_seed_same_workload() {
        let config = SyntheticConfig::default();
        let nodes = cluster(&config);
        assert_eq!(jobs(&config, &nodes), jobs(&config, &nodes));
        assert_eq!(pods(&config), pods(&config));
        let other = SyntheticConfig { seed: 7, ..config };
        assert_ne!(pods(&config), pods(&other));
    }

    #[test]
    fn arrivals_are_ordered_and_mix_is_openb_like() {
        let config = SyntheticConfig::default();
        let nodes = cluster(&config);
        let jobs = jobs(&config, &nodes);
        assert!(jobs.windows(2).all(|w| w[0].arrival <= w[1].arrival));
        let shared = jobs.iter().filter(|j| j.replica.is_gpu_share()).count();
        let cpu_only = jobs.iter().filter(|j| j.replica.num_gpu == 0).count();
        assert!(shared > jobs.len() / 4 && cpu_only > jobs.len() / 20);
    }
}
