//! Placements per second on a synthetic 10,000-node / 80,000-GPU cluster, half full with a
//! mixed workload. Each iteration places and allocates a batch of requests on a fresh copy.
//!
//! The `evaluate` group judges one request on all 10,000 nodes, as the Kubernetes extender
//! does for kube-scheduler's candidates.
//!
//! `cargo bench -p suanli-engine --bench placement`

use std::hint::black_box;
use std::sync::Arc;
use std::time::Duration;

use criterion::{BatchSize, Criterion, Throughput, criterion_group, criterion_main};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use suanli_engine::policy::{PlacementScratch, place_with};
use suanli_engine::{
    AffinityTag, Claim, Cluster, GpuGrant, NodeId, NodeShape, Policy, PolicyKind, Request,
    WorkloadMix, evaluate,
};

const NODES: usize = 10_000;
const GPUS: u32 = 8;
const BATCH: usize = 64;

/// A mix shaped like the openb trace: many shares, mostly 1-GPU jobs, a few big ones.
fn workload() -> Vec<Request> {
    let mut out = Vec::new();
    let mut add = |n: usize, cpu: u64, gpus: u32, milli: u32| {
        let r = Request::from_openb(cpu, 16_384, gpus, milli, "").expect("valid request");
        out.extend(std::iter::repeat_n(r, n));
    };
    add(13, 3152, 1, 810);
    add(10, 11_908, 1, 470);
    add(4, 4000, 1, 320);
    add(2, 4000, 1, 230);
    add(40, 11_300, 1, 1000);
    add(4, 24_000, 2, 1000);
    add(2, 48_000, 4, 1000);
    add(1, 88_000, 8, 1000);
    add(12, 12_500, 0, 0);
    out
}

fn half_full(seed: u64) -> Cluster {
    let models = ["A100-80GB", "V100M32", "T4"];
    let shapes: Vec<NodeShape> = (0..NODES)
        .map(|i| NodeShape {
            name: format!("node-{i:05}"),
            cpu_milli: 128_000,
            memory_mib: 1 << 20,
            gpus: GPUS,
            model: Some(models[i % 3].parse().expect("valid model")),
            gpu_memory_mib: 32_768,
        })
        .collect();
    let mut c = Cluster::from_shapes(&shapes).expect("valid shapes");
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    // Each node gets a random half-ish load: some whole GPUs, some shares.
    for n in 0..NODES {
        let mut gpus = Vec::new();
        let whole = rng.random_range(0..=GPUS);
        for g in 0..GPUS {
            if g < whole {
                gpus.push(GpuGrant {
                    gpu: g,
                    milli: 1000,
                    memory_mib: 32_768,
                    exclusive: true,
                    mig: None,
                });
            } else if rng.random_bool(0.3) {
                let milli = [230, 320, 470, 810][rng.random_range(0..4)];
                gpus.push(GpuGrant {
                    gpu: g,
                    milli,
                    memory_mib: 0,
                    exclusive: false,
                    mig: None,
                });
            }
        }
        let claim = Claim {
            node: NodeId(n as u32),
            cpu_milli: u64::from(whole) * 11_000 + rng.random_range(0..8_000),
            memory_mib: 4096,
            gpus,
            affinity: Some(AffinityTag::Whole(whole.max(1))),
        };
        c.allocate(&claim).expect("synthetic load fits");
    }
    c
}

fn placement(c: &mut Criterion) {
    let base = half_full(7);
    let requests = workload();
    let mix = Arc::new(WorkloadMix::typical(&requests, 95.0).expect("non-empty mix"));
    eprintln!(
        "cluster: {} nodes, {:.1}% of GPU compute allocated",
        base.len(),
        100.0 * base.used_gpu_milli() as f64 / base.total_gpu_milli() as f64
    );
    let mut group = c.benchmark_group("placement");
    group
        .sample_size(10)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(4))
        .throughput(Throughput::Elements(BATCH as u64));
    for kind in PolicyKind::ALL {
        let policy = Policy::from_name(kind.name(), Some(mix.clone())).expect("known policy");
        let mut rng = ChaCha8Rng::seed_from_u64(1);
        let mut scratch = PlacementScratch::default();
        let mut next = 0usize;
        group.bench_function(kind.name(), |b| {
            b.iter_batched(
                || base.clone(),
                |mut cluster| {
                    for _ in 0..BATCH {
                        let r = &requests[next % requests.len()];
                        next = next.wrapping_add(7);
                        if let Ok(p) = place_with(&cluster, r, &policy, &mut scratch, &mut rng) {
                            cluster.allocate(&p.claim).expect("fresh placement fits");
                        }
                    }
                    black_box(cluster)
                },
                BatchSize::LargeInput,
            )
        });
    }
    group.finish();
}

/// The Kubernetes extender's filter and prioritize: one pod judged on every node of the
/// cluster, as kube-scheduler sends its candidates (no column scan, no FGD cache).
fn evaluate_all(c: &mut Criterion) {
    let base = half_full(7);
    let requests = workload();
    let mix = Arc::new(WorkloadMix::typical(&requests, 95.0).expect("non-empty mix"));
    let all: Vec<NodeId> = (0..base.len() as u32).map(NodeId).collect();
    let mut group = c.benchmark_group("evaluate");
    group
        .sample_size(10)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(4))
        .throughput(Throughput::Elements(all.len() as u64));
    for kind in [PolicyKind::BestFit, PolicyKind::Fgd] {
        let policy = Policy::from_name(kind.name(), Some(mix.clone())).expect("known policy");
        for (shape, request) in [("1-gpu", &requests[40]), ("share", &requests[0])] {
            group.bench_function(format!("{}/{shape}", kind.name()), |b| {
                b.iter(|| black_box(evaluate(&base, request, &policy, &all)))
            });
        }
    }
    group.finish();
}

criterion_group!(benches, placement, evaluate_all);
criterion_main!(benches);
