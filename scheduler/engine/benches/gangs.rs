//! Gang placement and queue passes on a synthetic 10,000-node three-tier fabric: 8 H100s per
//! node with NVLink between all of them, one RDMA NIC each, 32 nodes per leaf, 8 leaves per
//! spine (40 spines), about 40% of the GPUs taken.
//!
//! `cargo bench -p suanli-engine --bench gangs`; the `_plain_scan` cases place without the
//! capacity index, for comparison.

use std::hint::black_box;
use std::time::Duration;

use criterion::{BatchSize, Criterion, criterion_group, criterion_main};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use suanli_engine::domain::DomainCatalog;
use suanli_engine::gang::{FabricIndex, GangOptions, GangRequest, place_gang, place_gang_once};
use suanli_engine::inventory::{LinkPath, NodeInventory, PortState};
use suanli_engine::job::{JobId, JobKind};
use suanli_engine::links::LinkState;
use suanli_engine::queue::{QueueConfig, QueuedJob, Runtime, Scheduler};
use suanli_engine::quota::{QuotaLimit, Quotas};
use suanli_engine::testing::H100Node;
use suanli_engine::{Claim, Cluster, GpuDemand, GpuGrant, GpuModel, NodeId, Request};

const NODES: usize = 10_000;
const PER_LEAF: usize = 32;
const LEAVES_PER_SPINE: usize = 8;
const PENDING: usize = 10_000;

fn node(i: usize) -> NodeInventory {
    let leaf = i / PER_LEAF;
    let spine = leaf / LEAVES_PER_SPINE;
    let all_pairs: Vec<(u32, u32, LinkPath)> = (0..8)
        .flat_map(|a| (a + 1..8).map(move |b| (a, b, LinkPath::NvLink(18))))
        .collect();
    let mut inv = H100Node::new(&format!("node-{i:05}"), 8)
        .fabric(&format!("leaf-{leaf:03}"), &format!("spine-{spine:02}"))
        .pairs(&all_pairs)
        .nic("mlx5_0", PortState::Active)
        .build();
    inv.cpu_milli = 192_000;
    inv.memory_mib = 2 << 20;
    inv.numa_nodes = 2;
    inv
}

/// The fabric with random load: `idle` of the nodes idle, the rest with 1–8 GPUs taken.
fn fabric(seed: u64, idle: f64) -> (Cluster, LinkState) {
    let inventories: Vec<NodeInventory> = (0..NODES).map(node).collect();
    let mut cluster = Cluster::from_inventories(&inventories).expect("valid inventories");
    let links = LinkState::from_inventories(&inventories, Some(400.0));
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    for n in 0..NODES {
        if rng.random_bool(idle) {
            continue;
        }
        let taken = rng.random_range(1..=8u32);
        let claim = Claim {
            node: NodeId(n as u32),
            cpu_milli: u64::from(taken) * 8_000,
            memory_mib: u64::from(taken) * 65_536,
            gpus: (0..taken)
                .map(|g| GpuGrant {
                    gpu: g,
                    milli: 1000,
                    memory_mib: 81_559,
                    exclusive: true,
                    mig: None,
                })
                .collect(),
            affinity: None,
        };
        cluster.allocate(&claim).expect("load fits an empty node");
    }
    (cluster, links)
}

fn exclusive(gpus: u32) -> Request {
    Request::new(
        8_000 * u64::from(gpus),
        65_536,
        GpuDemand::Exclusive { count: gpus },
    )
    .expect("valid request")
}

fn big_gang() -> GangRequest {
    let mut g = GangRequest::new(exclusive(8), 64);
    g.topology.rdma_required = true;
    g
}

fn gangs(c: &mut Criterion) {
    let (cluster, links) = fabric(7, 0.6);
    let catalog = DomainCatalog::default();
    let index = FabricIndex::new(&cluster, &links, &catalog);
    let gang = big_gang();
    let p = place_gang(&cluster, &index, &catalog, &gang, &GangOptions::default())
        .expect("the gang fits");
    eprintln!("64 × 8 gang: {p}");
    let mut group = c.benchmark_group("gang");
    group
        .sample_size(10)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3));
    group.bench_function("64x8_on_10k_nodes_indexed", |b| {
        b.iter(|| {
            black_box(
                place_gang(&cluster, &index, &catalog, &gang, &GangOptions::default())
                    .expect("fits"),
            )
        })
    });
    group.bench_function("64x8_on_10k_nodes_with_index_build", |b| {
        b.iter(|| black_box(place_gang_once(&cluster, &links, &catalog, &gang).expect("fits")))
    });
    group.finish();
}

/// 10,000 pending jobs from four tenants: single GPUs, 2–8 GPU jobs, a few gangs.
fn pending_jobs(seed: u64) -> Vec<QueuedJob> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let tenants = ["research", "prod", "vision", "speech"];
    (0..PENDING)
        .map(|i| {
            let roll = rng.random_range(0..100);
            let (replicas, gpus) = match roll {
                0..45 => (1, 1),
                45..70 => (1, 2),
                70..85 => (1, 4),
                85..95 => (1, 8),
                _ => (rng.random_range(2..=16), 8),
            };
            let mut gang = GangRequest::new(exclusive(gpus), replicas);
            gang.kind = JobKind::Training;
            QueuedJob {
                id: JobId(format!("job-{i:05}")),
                gang,
                tenant: tenants[i % 4].into(),
                queue: "default".into(),
                priority: rng.random_range(0..3),
                preemptible: true,
                submitted_s: i as u64,
                runtime: Runtime {
                    expected_s: Some(rng.random_range(600..36_000)),
                    limit_s: None,
                },
            }
        })
        .collect()
}

/// A scheduler over the fabric with `PENDING` jobs queued and per-tenant quotas.
fn loaded_scheduler(idle: f64, max_per_tenant: u64) -> Scheduler {
    let (cluster, links) = fabric(11, idle);
    let h100: GpuModel = "H100".parse().expect("valid model");
    let mut quotas = Quotas::new();
    for tenant in ["research", "prod", "vision", "speech"] {
        quotas
            .set(
                tenant,
                h100.clone(),
                QuotaLimit::gpus(max_per_tenant / 2, Some(max_per_tenant)),
            )
            .expect("valid quota");
    }
    let mut s = Scheduler::new(
        cluster,
        links,
        DomainCatalog::default(),
        quotas,
        QueueConfig::default(),
    );
    for job in pending_jobs(3) {
        s.submit(job).expect("unique ids");
    }
    s
}

fn queue(c: &mut Criterion) {
    let mut group = c.benchmark_group("queue");
    group
        .sample_size(10)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(5));
    // A busy cluster (10% of nodes idle, about half the GPUs free) with quotas that bind:
    // some jobs start, most wait for capacity, quota or the blocked gang's reservation.
    // The second case is the worst one: an idle-ish cluster where all 10,000 jobs start.
    for (name, idle, max) in [
        ("pass_10k_pending_busy_cluster", 0.1, 8_000),
        ("pass_10k_pending_all_placed", 0.6, 24_000),
    ] {
        let base = loaded_scheduler(idle, max);
        let decisions = base.clone().queue_pass(0);
        let placed = decisions
            .iter()
            .filter(|d| matches!(d, suanli_engine::queue::Decision::Place { .. }))
            .count();
        eprintln!(
            "{name}: {} decisions, {placed} placed, {} waiting",
            decisions.len(),
            decisions.len() - placed
        );
        group.bench_function(name, |b| {
            b.iter_batched(
                || base.clone(),
                |mut s| black_box(s.queue_pass(0)),
                BatchSize::LargeInput,
            )
        });
        // The same pass with the plain scan over every node (the reference the capacity
        // index is checked against): the before of the index, measured under the same load.
        let mut plain = base.clone();
        plain.set_plain_scan(true);
        assert!(
            plain.clone().queue_pass(0) == decisions,
            "{name}: the capacity index and the plain scan decided differently"
        );
        eprintln!(
            "{name}: the plain scan makes the same {} decisions",
            decisions.len()
        );
        group.bench_function(format!("{name}_plain_scan"), |b| {
            b.iter_batched(
                || plain.clone(),
                |mut s| black_box(s.queue_pass(0)),
                BatchSize::LargeInput,
            )
        });
    }
    group.finish();
}

criterion_group!(benches, gangs, queue);
criterion_main!(benches);
