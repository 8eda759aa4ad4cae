//! Invariants over random fabrics and random queues: gangs are never partly placed, quota
//! is never passed except by borrowing reclaim can undo, non-preemptible jobs are never
//! victims.

use std::collections::BTreeMap;

use proptest::prelude::*;
use suanli_engine::domain::DomainCatalog;
use suanli_engine::gang::{FabricIndex, GangOptions, allocate_gang, place_gang};
use suanli_engine::inventory::PortState;
use suanli_engine::job::{JobId, JobKind, Requirement};
use suanli_engine::links::LinkState;
use suanli_engine::queue::{Decision, QueueConfig, Runtime, Scheduler};
use suanli_engine::quota::{QuotaLimit, Quotas};
use suanli_engine::{Claim, Cluster, GpuGrant, GpuModel, NodeId};

use crate::fabric::{gang, inventories, spec};
use crate::queue::{h100, job, scheduler};

const LEAVES: [&str; 3] = ["l1", "l2", "l3"];
const SPINES: [&str; 2] = ["s1", "s2"];

/// A fabric of `n` 8-GPU nodes over 2 spines × 3 leaves, each with `busy[i]` GPUs taken.
fn fabric(n: usize, busy: &[u32]) -> Cluster {
    let specs: Vec<_> = (0..n)
        .map(|i| spec("a", SPINES[i % 2], LEAVES[i % 3], &format!("n{i}")))
        .collect();
    let mut c = Cluster::from_inventories(&inventories(&specs)).expect("valid");
    for (i, b) in busy.iter().enumerate().take(n) {
        if *b == 0 {
            continue;
        }
        let claim = Claim {
            node: NodeId(i as u32),
            cpu_milli: 0,
            memory_mib: 0,
            gpus: (0..*b)
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
        c.allocate(&claim).expect("fits an empty node");
    }
    c
}

fn used_gpus(c: &Cluster) -> usize {
    c.nodes()
        .iter()
        .flat_map(|n| n.gpus())
        .filter(|g| g.is_exclusive())
        .count()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    #[test]
    fn a_gang_is_never_partly_placed(
        n in 1usize..12,
        busy in proptest::collection::vec(0u32..=8, 12),
        replicas in 1u32..10,
        gpus in prop::sample::select(vec![1u32, 2, 4, 8]),
        elastic in any::<bool>(),
    ) {
        let mut cluster = fabric(n, &busy);
        let none = DomainCatalog::default();
        let index = FabricIndex::new(&cluster, &LinkState::new(), &none);
        let mut g = gang(replicas, gpus);
        if elastic {
            g = g.with_min_replicas(replicas.div_ceil(2));
        }
        let before = cluster.clone();
        let used = used_gpus(&cluster);
        match place_gang(&cluster, &index, &none, &g, &GangOptions::default()) {
            Ok(p) => {
                let k = p.replicas.len() as u32;
                prop_assert!(k >= g.min_replicas && k <= g.replicas, "{k} replicas");
                if !elastic {
                    prop_assert_eq!(k, replicas);
                }
                for r in &p.replicas {
                    prop_assert_eq!(r.claim.gpus.len() as u32, gpus);
                }
                allocate_gang(&mut cluster, &p).expect("a fresh placement applies whole");
                prop_assert_eq!(used_gpus(&cluster), used + (k * gpus) as usize);
            }
            Err(_) => {
                // Nothing fits: the free GPUs in whole-replica units fall short of the minimum.
                let room: u32 = cluster
                    .nodes()
                    .iter()
                    .map(|n| n.gpus().iter().filter(|g| g.fully_free()).count() as u32 / gpus)
                    .sum();
                prop_assert!(room < g.min_replicas, "room {room} but refused");
                prop_assert_eq!(&cluster, &before);
            }
        }
    }

    #[test]
    fn quota_is_passed_only_by_reclaimable_borrowing_and_pinned_jobs_stay(
        jobs in proptest::collection::vec(
            (0usize..3, 1u32..3, prop::sample::select(vec![1u32, 4, 8]), 0i32..3, any::<bool>()),
            1..24,
        ),
        finish_every in 2usize..6,
    ) {
        let tenants = ["alpha", "beta", "gamma"];
        let mut quotas = Quotas::new();
        quotas.set("alpha", h100(), QuotaLimit::gpus(16, Some(32))).expect("valid");
        quotas.set("beta", h100(), QuotaLimit::gpus(8, Some(24))).expect("valid");
        quotas.set("gamma", h100(), QuotaLimit::gpus(8, Some(8))).expect("valid");
        let specs: Vec<_> = (0..6)
            .map(|i| spec("a", SPINES[i % 2], LEAVES[i % 3], &format!("n{i}")))
            .collect();
        let config = QueueConfig { min_runtime_s: 10, max_victims: 4, ..QueueConfig::default() };
        let mut s = scheduler(&specs, quotas.clone(), config);
        let mut pinned: BTreeMap<JobId, bool> = BTreeMap::new();
        for (t, (tenant, replicas, gpus, priority, preemptible)) in jobs.iter().enumerate() {
            let now = t as u64 * 7;
            let mut j = job(&format!("j{t}"), tenants[*tenant], gang(*replicas, *gpus), *priority, now);
            j.preemptible = *preemptible;
            j.runtime = Runtime { expected_s: Some(50), limit_s: None };
            pinned.insert(j.id.clone(), !preemptible);
            s.submit(j).expect("new id");
            let running_before: BTreeMap<JobId, u64> =
                s.running().map(|r| (r.job.id.clone(), r.started_s)).collect();
            for d in s.queue_pass(now) {
                if let Decision::Preempt { victim, .. } = &d {
                    prop_assert!(!pinned[victim], "non-preemptible {victim} preempted");
                    let started = running_before[victim];
                    prop_assert!(now - started >= 10, "{victim} ran only {}s", now - started);
                }
            }
            let first = s.running().map(|r| r.job.id.clone()).next();
            if t % finish_every == 0
                && let Some(id) = first
            {
                s.finish(&id).expect("running");
            }
            for tenant in tenants {
                let limit = quotas.limit(tenant, &h100()).expect("configured");
                let used = s.usage().get(tenant, &h100());
                prop_assert!(used <= limit.max_milli.expect("capped"), "{tenant} over max");
                // Whatever is above the guarantee is held by preemptible jobs.
                let reclaimable: u64 = s
                    .running()
                    .filter(|r| r.job.tenant == tenant && r.job.preemptible)
                    .flat_map(|r| r.charges.iter().map(|(_, m)| *m))
                    .sum();
                prop_assert!(
                    used.saturating_sub(limit.guaranteed_milli) <= reclaimable,
                    "{tenant}: {used} used, {reclaimable} reclaimable"
                );
                let charged: u64 = s
                    .running()
                    .filter(|r| r.job.tenant == tenant)
                    .flat_map(|r| r.charges.iter().map(|(_, m)| *m))
                    .sum();
                prop_assert_eq!(charged, used, "usage matches running jobs");
            }
            let held: usize = s.running().flat_map(|r| r.allocations.iter()).count();
            prop_assert_eq!(held, s.cluster().allocations().count());
        }
    }
}

/// A mixed fabric for the index-versus-scan check: two domains, NICs up or down with and
/// without GPUDirect, NVLink islands, a second GPU model, 4- and 8-GPU nodes.
fn mixed_fabric(kinds: &[(u8, u32, bool)]) -> (Cluster, LinkState) {
    let specs: Vec<_> = kinds
        .iter()
        .enumerate()
        .map(|(i, (kind, _, _))| {
            let mut s = spec(
                if i % 4 == 3 { "b" } else { "a" },
                SPINES[i % 2],
                LEAVES[i % 3],
                &format!("n{i:02}"),
            );
            match kind % 6 {
                0 => s.nic = Some((PortState::Active, 400.0, true)),
                1 => s.nic = Some((PortState::Down, 400.0, true)),
                2 => s.nic = Some((PortState::Active, 200.0, false)),
                3 => s.nvlink_islands = true,
                4 => s.model = "NVIDIA A100-SXM4-80GB",
                _ => s.gpus = 4,
            }
            s
        })
        .collect();
    let inv = inventories(&specs);
    let mut c = Cluster::from_inventories(&inv).expect("valid");
    for (i, (_, busy, cordoned)) in kinds.iter().enumerate() {
        let gpus = c.nodes()[i].gpus().len() as u32;
        let taken = (*busy).min(gpus);
        if taken > 0 {
            let claim = Claim {
                node: NodeId(i as u32),
                cpu_milli: u64::from(taken) * 8_000,
                memory_mib: 0,
                gpus: (0..taken)
                    .map(|g| GpuGrant {
                        gpu: g,
                        milli: 1000,
                        memory_mib: c.nodes()[i].gpus()[g as usize].memory_mib,
                        exclusive: true,
                        mig: None,
                    })
                    .collect(),
                affinity: None,
            };
            c.allocate(&claim).expect("fits an empty node");
        }
        if *cordoned {
            c.set_cordoned(NodeId(i as u32), true).expect("known node");
        }
    }
    (c, LinkState::from_inventories(&inv, Some(400.0)))
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(96))]

    /// The capacity index is an optimisation only: on random fabrics and queues, over passes
    /// with jobs finishing in between, it decides exactly what the plain scan decides.
    #[test]
    fn the_capacity_index_decides_as_the_plain_scan(
        kinds in proptest::collection::vec((0u8..6, 0u32..=8, prop::bool::weighted(0.1)), 3..28),
        jobs in proptest::collection::vec(
            (
                0usize..3,
                prop::sample::select(vec![1u32, 1, 1, 1, 2, 3]),
                prop::sample::select(vec![1u32, 2, 4, 8]),
                0i32..3,
                0u8..8,
                (100u64..2_000, any::<bool>()),
            ),
            1..40,
        ),
        finish_every in 2usize..5,
    ) {
        let tenants = ["alpha", "beta", "gamma"];
        let mut quotas = Quotas::new();
        for tenant in tenants {
            quotas.set(tenant, h100(), QuotaLimit::gpus(24, Some(64))).expect("valid");
        }
        let (cluster, links) = mixed_fabric(&kinds);
        let config = QueueConfig { min_runtime_s: 10, max_victims: 4, ..QueueConfig::default() };
        let mut indexed = Scheduler::new(
            cluster.clone(),
            links.clone(),
            DomainCatalog::default(),
            quotas.clone(),
            config,
        );
        let mut plain = Scheduler::new(cluster, links, DomainCatalog::default(), quotas, config);
        plain.set_plain_scan(true);
        let a100: GpuModel = "A100".parse().expect("valid model");
        for (t, (tenant, replicas, gpus, priority, flavour, (expected, preemptible))) in
            jobs.iter().enumerate()
        {
            let mut g = gang(*replicas, *gpus);
            match flavour {
                1 => g.topology.rdma_required = true,
                2 => g.topology.nvlink = Some(Requirement::Required),
                3 => g.request = g.request.clone().with_models(vec![a100.clone()]),
                4 => g.kind = JobKind::Inference,
                5 => g.request = g.request.clone().with_models(vec![h100()]),
                _ => {}
            }
            let mut j = job(&format!("j{t:02}"), tenants[*tenant], g, *priority, t as u64);
            j.preemptible = *preemptible;
            j.runtime = Runtime { expected_s: Some(*expected), limit_s: None };
            indexed.submit(j.clone()).expect("new id");
            plain.submit(j).expect("new id");
            if t % 3 != 2 {
                continue;
            }
            let now = t as u64 * 20;
            prop_assert_eq!(indexed.queue_pass(now), plain.queue_pass(now));
            let first = indexed.running().map(|r| r.job.id.clone()).next();
            if t % finish_every == 0
                && let Some(id) = first
            {
                indexed.finish(&id).expect("running");
                plain.finish(&id).expect("running in both");
            }
        }
        prop_assert_eq!(indexed.queue_pass(10_000), plain.queue_pass(10_000));
        prop_assert_eq!(indexed.cluster(), plain.cluster());
    }
}
