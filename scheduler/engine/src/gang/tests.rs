//! Unit tests of the planner's internals: the capacity index's slot size and the replica bound.

use std::cmp::Reverse;

use proptest::prelude::*;

use super::buckets::Slot;
use super::*;
use crate::cluster::{AllocationId, Claim, GpuGrant, NodeId, NodeShape};
use crate::request::{GpuDemand, Request};

/// Nodes of 2, 4 or 8 GPUs with `busy` GPUs each taken by its own allocation.
fn loaded(nodes: &[(u32, u32)]) -> (Cluster, Vec<AllocationId>) {
    let shapes: Vec<NodeShape> = nodes
        .iter()
        .enumerate()
        .map(|(i, (gpus, _))| NodeShape {
            name: format!("n{i:02}"),
            cpu_milli: 64_000,
            memory_mib: 1 << 20,
            gpus: *gpus,
            model: Some("H100".parse().expect("valid model")),
            gpu_memory_mib: 81_559,
        })
        .collect();
    let mut cluster = Cluster::from_shapes(&shapes).expect("valid shapes");
    let mut held = Vec::new();
    for (i, (gpus, busy)) in nodes.iter().enumerate() {
        for g in 0..(*busy).min(*gpus) {
            let claim = Claim {
                node: NodeId(i as u32),
                cpu_milli: 1_000,
                memory_mib: 1_024,
                gpus: vec![GpuGrant {
                    gpu: g,
                    milli: 1000,
                    memory_mib: 81_559,
                    exclusive: true,
                    mig: None,
                }],
                affinity: None,
            };
            held.push(cluster.allocate(&claim).expect("a free GPU"));
        }
    }
    (cluster, held)
}

#[test]
fn a_slot_stays_small_enough_for_bucket_walks() {
    assert!(std::mem::size_of::<Slot>() <= 40);
}

/// Each score's field order is the planner's policy: a better value in one field wins over
/// worse values in every field after it, down to the stable id that breaks ties.
#[test]
fn node_scores_compare_health_links_gdr_leftover_then_name() {
    let base = NodeScore {
        health: Reverse(1),
        link: Reverse(5),
        gdr: 2,
        leftover: Reverse(3),
        name_rank: Reverse(4),
    };
    let healthier = NodeScore {
        health: Reverse(0),
        link: Reverse(9),
        gdr: 0,
        leftover: Reverse(9),
        name_rank: Reverse(9),
    };
    let better_linked = NodeScore {
        link: Reverse(4),
        gdr: 0,
        leftover: Reverse(9),
        name_rank: Reverse(9),
        ..base
    };
    let more_gdr = NodeScore {
        gdr: 3,
        leftover: Reverse(9),
        name_rank: Reverse(9),
        ..base
    };
    let tighter = NodeScore {
        leftover: Reverse(2),
        name_rank: Reverse(9),
        ..base
    };
    let first_by_name = NodeScore {
        name_rank: Reverse(3),
        ..base
    };
    for better in [healthier, better_linked, more_gdr, tighter, first_by_name] {
        assert!(better > base, "{better:?} should beat {base:?}");
    }
}

#[test]
fn group_scores_compare_domain_leftover_then_id() {
    let base = GroupScore {
        domain: Reverse(1),
        leftover: Reverse(1),
        id: Reverse(1),
    };
    let preferred_domain = GroupScore {
        domain: Reverse(0),
        leftover: Reverse(9),
        id: Reverse(9),
    };
    let tighter = GroupScore {
        leftover: Reverse(0),
        id: Reverse(9),
        ..base
    };
    let lower_id = GroupScore {
        id: Reverse(0),
        ..base
    };
    for better in [preferred_domain, tighter, lower_id] {
        assert!(better > base, "{better:?} should beat {base:?}");
    }
}

#[test]
fn domain_scores_compare_data_price_room_then_name() {
    let base = DomainScore {
        data_pull_s: Reverse(10.0),
        price: Reverse(2.0),
        fit: 4,
        name: Reverse("cid:acme/r/dc-b"),
    };
    let closer_data = DomainScore {
        data_pull_s: Reverse(5.0),
        price: Reverse(9.0),
        fit: 0,
        name: Reverse("cid:acme/r/dc-z"),
    };
    let cheaper = DomainScore {
        price: Reverse(1.0),
        fit: 0,
        name: Reverse("cid:acme/r/dc-z"),
        ..base
    };
    let roomier = DomainScore {
        fit: 5,
        name: Reverse("cid:acme/r/dc-z"),
        ..base
    };
    let first_by_name = DomainScore {
        name: Reverse("cid:acme/r/dc-a"),
        ..base
    };
    for better in [closer_data, cheaper, roomier, first_by_name] {
        assert!(better > base, "{better:?} should beat {base:?}");
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(128))]

    /// The reservation skips futures whose bound is below the gang's minimum, so the
    /// bound must never be below what a placement actually finds, now or after releases.
    #[test]
    fn the_replica_bound_never_undercounts(
        nodes in proptest::collection::vec(
            (prop::sample::select(vec![2u32, 4, 8]), 0u32..=8),
            1..16,
        ),
        replicas in 1u32..6,
        gpus in prop::sample::select(vec![1u32, 2, 4, 8]),
        released in proptest::collection::vec(any::<bool>(), 64),
    ) {
        let (mut cluster, held) = loaded(&nodes);
        let links = LinkState::new();
        let catalog = DomainCatalog::default();
        let mut index = FabricIndex::new(&cluster, &links, &catalog);
        let request = Request::new(1_000, 1_024, GpuDemand::Exclusive { count: gpus })
            .expect("valid request");
        let gang = GangRequest::new(request, replicas);
        let mut bound = ReplicaBound::new(&cluster, &index, &gang).expect("whole GPUs");
        let options = GangOptions::default();
        if let Some(p) = place_gang_if_fits(&cluster, &index, &catalog, &gang, &options) {
            prop_assert!(p.replicas.len() as u64 <= bound.replicas());
        }
        for (id, release) in held.iter().zip(&released) {
            if !release {
                continue;
            }
            let before = cluster.clone();
            let alloc = cluster.release(*id).expect("held");
            bound.free(&before, alloc.node, alloc.gpus.len() as u32);
            index.refresh(&cluster, &links, alloc.node);
        }
        if let Some(p) = place_gang_if_fits(&cluster, &index, &catalog, &gang, &options) {
            prop_assert!(p.replicas.len() as u64 <= bound.replicas());
        }
    }
}
