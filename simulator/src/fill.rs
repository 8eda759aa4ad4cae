//! The fill protocol, as the FGD paper ran it on `openb`.
//!
//! Cluster: the GPU nodes. Workload: the pod list shuffled by the seed, then pods sampled with
//! replacement from the original list and appended until the GPU request would pass
//! `tune` × capacity. Pods arrive one by one and never leave; one that does not fit (GPU,
//! CPU or memory) is dropped. After every arrival the run records arrived GPU milli and
//! allocated GPU milli; the headline is the allocation at arrived = 100% of capacity.

use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Instant;

use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::Serialize;

use crate::model::{NodeShape, Request};
use crate::placer::{BuildError, MixError, PlacerFactory, Policy};

/// Everything a fill run needs besides the policy and the seed.
#[derive(Debug, Clone)]
pub struct FillInput<M> {
    /// GPU nodes only.
    pub nodes: Vec<NodeShape>,
    /// The original pod list's requests, in file order.
    pub pods: Vec<Request>,
    /// The expected workload mix, from the original pod list.
    pub mix: M,
}

impl<M> FillInput<M> {
    /// Keeps the GPU nodes and builds the workload mix from the original pods.
    pub fn new<F: PlacerFactory<Mix = M>>(
        factory: &F,
        nodes: Vec<NodeShape>,
        pods: Vec<Request>,
    ) -> Result<FillInput<M>, MixError> {
        let nodes: Vec<NodeShape> = nodes.into_iter().filter(|n| n.gpus > 0).collect();
        let mix = factory.mix(&pods)?;
        Ok(FillInput { nodes, pods, mix })
    }

    pub fn capacity_gpu_milli(&self) -> u64 {
        self.nodes.iter().map(NodeShape::gpu_milli).sum()
    }
}

/// The arrival order for one seed: indices into the original pod list.
pub fn arrival_order(
    pods: &[Request],
    capacity_gpu_milli: u64,
    tune: f64,
    seed: u64,
) -> Vec<usize> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut order: Vec<usize> = (0..pods.len()).collect();
    order.shuffle(&mut rng);
    if tune <= 0.0 || pods.is_empty() {
        return order;
    }
    let target = tune * capacity_gpu_milli as f64;
    let mut total: u64 = pods.iter().map(Request::total_gpu_milli).sum();
    if (total as f64) > target {
        // Too much work for the target: drop random pods until it fits.
        while (total as f64) > target && !order.is_empty() {
            let at = rng.random_range(0..order.len());
            total -= pods[order.remove(at)].total_gpu_milli();
        }
        return order;
    }
    loop {
        let pick = rng.random_range(0..pods.len());
        let next = total + pods[pick].total_gpu_milli();
        if next as f64 > target {
            break;
        }
        total = next;
        order.push(pick);
        if pods.iter().all(|p| p.total_gpu_milli() == 0) {
            break;
        }
    }
    order
}

/// The nodes renamed as the paper's simulator names them before a run
/// (`syncClusterResourceList`): sorted by name, then each prefixed with its place in a seeded
/// random permutation (`0042-openb-node-0007`). Its scheduler breaks equal scores by the
/// smallest node name, so this prefix decides every tie: the tie order is a fresh random
/// order per seed, fixed for the whole run, not the trace's name order.
pub fn tie_break_names(nodes: &[NodeShape], seed: u64) -> Vec<NodeShape> {
    let mut sorted: Vec<NodeShape> = nodes.to_vec();
    sorted.sort_by(|a, b| a.name.cmp(&b.name));
    // A stream of its own, so the arrival order does not shift with the cluster size.
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    rng.set_stream(1);
    let mut rank: Vec<usize> = (0..sorted.len()).collect();
    rank.shuffle(&mut rng);
    let width = sorted.len().saturating_sub(1).to_string().len().max(4);
    for (node, r) in sorted.iter_mut().zip(rank) {
        node.name = format!("{r:0width$}-{}", node.name);
    }
    sorted
}

#[derive(Debug, Clone, Serialize)]
pub struct FillRun {
    pub policy: Policy,
    pub seed: u64,
    pub wall_ms: f64,
    pub pods_arrived: usize,
    pub pods_placed: usize,
    pub pods_dropped: usize,
    pub capacity_gpu_milli: u64,
    /// Allocated GPU % of capacity when arrived GPU requests reach 100% of capacity,
    /// linearly interpolated between the two arrivals around it.
    pub alloc_pct_at_100: Option<f64>,
    /// Allocated GPU % at arrived = 0, 1, 2, ... % of capacity.
    pub alloc_pct_by_arrived_pct: Vec<f64>,
    /// Fragmented GPU milli (engine's measure against the mix) at arrived = 100%.
    pub fragmented_pct_at_100: Option<f64>,
}

impl FillRun {
    pub fn unallocated_pct_at_100(&self) -> Option<f64> {
        self.alloc_pct_at_100.map(|a| 100.0 - a)
    }
}

/// Linear interpolation of `used` at `arrived = x` over points sorted by arrived.
fn interpolate(points: &[(u64, u64)], x: f64) -> Option<f64> {
    let mut prev = (0u64, 0u64);
    for &(a, u) in points {
        if a as f64 >= x {
            if a == prev.0 {
                return Some(u as f64);
            }
            let t = (x - prev.0 as f64) / (a - prev.0) as f64;
            return Some(prev.1 as f64 + t * (u as f64 - prev.1 as f64));
        }
        prev = (a, u);
    }
    None
}

pub fn run_one<F: PlacerFactory>(
    factory: &F,
    input: &FillInput<F::Mix>,
    policy: Policy,
    seed: u64,
    tune: f64,
) -> Result<FillRun, BuildError> {
    let started = Instant::now();
    let capacity = input.capacity_gpu_milli();
    let order = arrival_order(&input.pods, capacity, tune, seed);
    let nodes = tie_break_names(&input.nodes, seed);
    let mut cluster = factory.build(&nodes, policy, seed, &input.mix)?;
    let mut points = Vec::with_capacity(order.len());
    let (mut arrived, mut placed) = (0u64, 0usize);
    let mut fragmented_at_100 = None;
    for &index in &order {
        let request = &input.pods[index];
        if fragmented_at_100.is_none()
            && arrived + request.total_gpu_milli() >= capacity
            && capacity > 0
        {
            fragmented_at_100 = Some(cluster.fragmented_gpu_milli());
        }
        arrived += request.total_gpu_milli();
        if cluster.place(request).is_some() {
            placed += 1;
        }
        points.push((arrived, cluster.used_gpu_milli()));
    }
    let pct = |milli: f64| 100.0 * milli / capacity.max(1) as f64;
    let alloc_at_100 = interpolate(&points, capacity as f64).map(pct);
    let max_arrived_pct = points.last().map_or(0.0, |p| pct(p.0 as f64));
    let grid = (0..=max_arrived_pct.floor() as usize)
        .filter_map(|p| interpolate(&points, p as f64 * capacity as f64 / 100.0).map(pct))
        .collect();
    Ok(FillRun {
        policy,
        seed,
        wall_ms: started.elapsed().as_secs_f64() * 1000.0,
        pods_arrived: order.len(),
        pods_placed: placed,
        pods_dropped: order.len() - placed,
        capacity_gpu_milli: capacity,
        alloc_pct_at_100: alloc_at_100,
        alloc_pct_by_arrived_pct: grid,
        fragmented_pct_at_100: fragmented_at_100.flatten().map(pct),
    })
}

/// Runs every (policy, seed) pair on `threads` threads; results in (policy, seed) order.
pub fn run_all<F: PlacerFactory>(
    factory: &F,
    input: &FillInput<F::Mix>,
    policies: &[Policy],
    seeds: &[u64],
    tune: f64,
    threads: usize,
    on_done: &(dyn Fn(&FillRun) + Sync),
) -> Result<Vec<FillRun>, BuildError> {
    let jobs: Vec<(Policy, u64)> = policies
        .iter()
        .flat_map(|&p| seeds.iter().map(move |&s| (p, s)))
        .collect();
    let results: Mutex<Vec<Option<Result<FillRun, BuildError>>>> =
        Mutex::new((0..jobs.len()).map(|_| None).collect());
    let next = AtomicUsize::new(0);
    std::thread::scope(|scope| {
        for _ in 0..threads.clamp(1, jobs.len().max(1)) {
            scope.spawn(|| {
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    let Some(&(policy, seed)) = jobs.get(i) else {
                        break;
                    };
                    let run = run_one(factory, input, policy, seed, tune);
                    if let Ok(run) = &run {
                        on_done(run);
                    }
                    results
                        .lock()
                        .expect("a worker panicked while holding results")[i] = Some(run);
                }
            });
        }
    });
    results
        .into_inner()
        .expect("a worker panicked while holding results")
        .into_iter()
        .map(|r| r.expect("every job index was taken by a worker"))
        .collect()
}

/// Means over seeds for one policy.
#[derive(Debug, Clone, Serialize)]
pub struct FillSummary {
    pub policy: Policy,
    pub seeds: Vec<u64>,
    pub unallocated_gpu_pct_at_100: Option<f64>,
    pub alloc_pct_at_100: Option<f64>,
    /// Sample standard deviation over seeds of the unallocated %.
    pub unallocated_gpu_pct_std: Option<f64>,
    pub fragmented_gpu_pct_at_100: Option<f64>,
    pub published_unallocated_gpu_pct: f64,
    pub wall_ms: f64,
    pub pods_arrived: f64,
    pub pods_dropped: f64,
    /// Mean allocated % at arrived = 0, 1, 2, ... %.
    pub alloc_pct_by_arrived_pct: Vec<f64>,
}

fn mean(values: &[f64]) -> Option<f64> {
    (!values.is_empty()).then(|| values.iter().sum::<f64>() / values.len() as f64)
}

pub fn summarize(runs: &[FillRun], policies: &[Policy]) -> Vec<FillSummary> {
    policies
        .iter()
        .map(|&policy| {
            let mine: Vec<&FillRun> = runs.iter().filter(|r| r.policy == policy).collect();
            let allocs: Vec<f64> = mine.iter().filter_map(|r| r.alloc_pct_at_100).collect();
            let frags: Vec<f64> = mine
                .iter()
                .filter_map(|r| r.fragmented_pct_at_100)
                .collect();
            let alloc = (allocs.len() == mine.len())
                .then(|| mean(&allocs))
                .flatten();
            let std = (allocs.len() > 1).then(|| {
                let m = alloc.unwrap_or(0.0);
                (allocs.iter().map(|a| (a - m).powi(2)).sum::<f64>() / (allocs.len() - 1) as f64)
                    .sqrt()
            });
            let grid_len = mine
                .iter()
                .map(|r| r.alloc_pct_by_arrived_pct.len())
                .min()
                .unwrap_or(0);
            let grid = (0..grid_len)
                .map(|i| {
                    mine.iter()
                        .map(|r| r.alloc_pct_by_arrived_pct[i])
                        .sum::<f64>()
                        / mine.len() as f64
                })
                .collect();
            let field = |f: fn(&FillRun) -> f64| {
                mean(&mine.iter().map(|r| f(r)).collect::<Vec<_>>()).unwrap_or(0.0)
            };
            FillSummary {
                policy,
                seeds: mine.iter().map(|r| r.seed).collect(),
                unallocated_gpu_pct_at_100: alloc.map(|a| 100.0 - a),
                alloc_pct_at_100: alloc,
                unallocated_gpu_pct_std: std,
                fragmented_gpu_pct_at_100: (frags.len() == mine.len())
                    .then(|| mean(&frags))
                    .flatten(),
                published_unallocated_gpu_pct: policy.published_unallocated_pct(),
                wall_ms: field(|r| r.wall_ms),
                pods_arrived: field(|r| r.pods_arrived as f64),
                pods_dropped: field(|r| r.pods_dropped as f64),
                alloc_pct_by_arrived_pct: grid,
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(n: u32, milli: u32) -> Request {
        Request {
            cpu_milli: 1000,
            memory_mib: 1024,
            num_gpu: n,
            gpu_milli: milli,
            models: Vec::new(),
        }
    }

    #[test]
    fn arrival_order_tunes_up_to_the_target_and_is_seeded() {
        let pods = vec![req(1, 1000), req(1, 500), req(0, 0), req(2, 1000)];
        let capacity = 10_000;
        let order = arrival_order(&pods, capacity, 1.3, 42);
        let total: u64 = order.iter().map(|&i| pods[i].total_gpu_milli()).sum();
        assert!(total as f64 <= 13_000.0);
        assert!(
            total as f64 > 13_000.0 - 2000.0,
            "stops only when the next pod would pass"
        );
        let mut first: Vec<usize> = order[..4].to_vec();
        first.sort_unstable();
        assert_eq!(
            first,
            vec![0, 1, 2, 3],
            "the original list comes first, shuffled"
        );
        assert_eq!(order, arrival_order(&pods, capacity, 1.3, 42));
        assert_ne!(order, arrival_order(&pods, capacity, 1.3, 43));
    }

    #[test]
    fn arrival_order_tunes_down_when_the_list_is_too_big() {
        let pods: Vec<Request> = (0..100).map(|_| req(1, 1000)).collect();
        let order = arrival_order(&pods, 10_000, 1.3, 1);
        assert_eq!(order.len(), 13);
    }

    #[test]
    fn tie_break_names_are_a_seeded_permutation_prefix() {
        let nodes: Vec<NodeShape> = ["b", "a", "c"]
            .iter()
            .map(|n| NodeShape {
                name: (*n).to_string(),
                cpu_milli: 1000,
                memory_mib: 1024,
                gpus: 1,
                model: None,
            })
            .collect();
        let named = tie_break_names(&nodes, 42);
        let mut prefixes: Vec<&str> = named.iter().map(|n| &n.name[..4]).collect();
        let suffixes: Vec<&str> = named.iter().map(|n| &n.name[5..]).collect();
        assert_eq!(
            suffixes,
            ["a", "b", "c"],
            "sorted by the trace's names first"
        );
        prefixes.sort_unstable();
        assert_eq!(prefixes, ["0000", "0001", "0002"]);
        assert_eq!(named, tie_break_names(&nodes, 42));
        let orders: std::collections::BTreeSet<Vec<String>> = (0..20)
            .map(|seed| {
                tie_break_names(&nodes, seed)
                    .into_iter()
                    .map(|n| n.name)
                    .collect()
            })
            .collect();
        assert!(orders.len() > 1, "the permutation changes with the seed");
    }

    #[test]
    fn interpolation_at_the_crossing() {
        let points = [(500, 500), (900, 800), (1100, 900)];
        let at = interpolate(&points, 1000.0).expect("crosses");
        assert!((at - 850.0).abs() < 1e-9);
        assert_eq!(interpolate(&points, 2000.0), None);
        assert_eq!(interpolate(&points, 0.0), Some(0.0));
    }
}
