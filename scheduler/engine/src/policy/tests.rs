//! Policy names, and the column scan checked against the full scan.

use std::cmp::Reverse;

use super::scan::mix64;
use super::*;

#[test]
fn names_parse_both_ways() {
    for kind in PolicyKind::ALL {
        assert_eq!(kind.name().parse::<PolicyKind>().expect("own name"), kind);
    }
    assert_eq!(
        "DotProd".parse::<PolicyKind>().expect("paper name"),
        PolicyKind::DotProduct
    );
    assert_eq!(
        "FGD".parse::<PolicyKind>().expect("paper name"),
        PolicyKind::Fgd
    );
    assert!(matches!(
        "worst-fit".parse::<PolicyKind>(),
        Err(PolicyError::Unknown { .. })
    ));
    assert_eq!(
        Policy::new(PolicyKind::Fgd).expect_err("needs mix"),
        PolicyError::MissingMix
    );
    assert_eq!(
        Policy::from_name("fgd", None).expect_err("needs mix"),
        PolicyError::MissingMix
    );
}

#[test]
fn mixer_spreads_bits() {
    assert_ne!(mix64(1), mix64(2));
}

/// `Score`'s field order is the policy: a better value in one field wins over worse values in
/// every field after it, down to the node id that breaks ties.
#[test]
fn scores_compare_points_link_tie_then_node() {
    let base = Score {
        points: 50,
        link: Reverse(2),
        tie: 7,
        node: Reverse(NodeId(3)),
    };
    let more_points = Score {
        points: 51,
        link: Reverse(9),
        tie: 0,
        node: Reverse(NodeId(9)),
    };
    let better_linked = Score {
        link: Reverse(1),
        tie: 0,
        node: Reverse(NodeId(9)),
        ..base
    };
    let tie_won = Score {
        tie: 8,
        node: Reverse(NodeId(9)),
        ..base
    };
    let lower_id = Score {
        node: Reverse(NodeId(2)),
        ..base
    };
    for better in [more_points, better_linked, tie_won, lower_id] {
        assert!(better > base, "{better:?} should beat {base:?}");
    }
}

/// FGD's cached points are keyed by node state and mix alone: one scratch serving two clones
/// that diverge, under two mixes in turn, places exactly as empty scratch does.
#[test]
fn shared_scratch_places_as_empty_scratch() {
    use crate::cluster::NodeShape;
    use rand::SeedableRng;
    use rand_chacha::ChaCha8Rng;

    let shapes: Vec<NodeShape> = (0..12)
        .map(|i| NodeShape {
            name: format!("n{i:02}"),
            cpu_milli: 32_000,
            memory_mib: 65_536,
            gpus: [1, 2, 4, 8][i % 4],
            model: Some("V100M32".parse().expect("valid model")),
            gpu_memory_mib: 16_384,
        })
        .collect();
    let base = Cluster::from_shapes(&shapes).expect("valid shapes");
    let requests: Vec<Request> = (0..60u32)
        .map(|i| {
            let gpu = if i % 4 == 0 {
                GpuDemand::Exclusive { count: 1 + i % 3 }
            } else {
                GpuDemand::Shared {
                    milli: 200 + 150 * (i % 5),
                    memory_mib: 0,
                }
            };
            Request::new(1000 + 500 * u64::from(i % 3), 1024, gpu).expect("valid request")
        })
        .collect();
    let mixes = [&requests[..8], &requests[30..34]]
        .map(|r| Arc::new(WorkloadMix::typical(r, 100.0).expect("non-empty")));
    let mut scratch = PlacementScratch::default();
    let mut clusters = [base.clone(), base];
    for (i, r) in requests.iter().enumerate() {
        let policy = Policy::fgd(Arc::clone(&mixes[i / 7 % 2]));
        let cluster = &mut clusters[i % 2];
        let mut rng = ChaCha8Rng::seed_from_u64(i as u64);
        let mut reference_rng = rng.clone();
        let shared = place_with(cluster, r, &policy, &mut scratch, &mut rng);
        let empty = place(cluster, r, &policy, &mut reference_rng);
        assert_eq!(shared, empty, "request {i}: {r}");
        if let Ok(p) = shared {
            cluster.allocate(&p.claim).expect("a fresh placement fits");
        }
    }
}

/// The column scan must choose exactly what the full scan chooses.
mod column_scan_matches_full {
    use super::*;
    use crate::cluster::NodeShape;
    use crate::inventory::Health;
    use proptest::prelude::*;
    use rand::SeedableRng;
    use rand_chacha::ChaCha8Rng;

    /// GPUs (9 or more leave the column scan), model, cores, cordoned, a sick GPU, MIG on GPU 0.
    type NodeSpec = (u32, usize, u64, bool, bool, bool);
    /// Kind (CPU / share / share with GPU memory / whole), CPU, GPUs, milli, one model only,
    /// allocate it.
    type RequestSpec = (u8, u64, u32, u32, bool, bool);

    fn request(spec: &RequestSpec, models: &[GpuModel]) -> Request {
        let (kind, cpu, count, milli, pinned, _) = *spec;
        let gpu = match kind {
            0 => GpuDemand::None,
            1 => GpuDemand::Shared {
                milli,
                memory_mib: 0,
            },
            2 => GpuDemand::Shared {
                milli,
                memory_mib: 4096,
            },
            _ => GpuDemand::Exclusive { count },
        };
        let r = Request::new(cpu, 1024, gpu).expect("valid sizes");
        if pinned {
            r.with_models(vec![models[count as usize % models.len()].clone()])
        } else {
            r
        }
    }

    use crate::gpu::GpuModel;

    fn run(nodes: &[NodeSpec], requests: &[RequestSpec], kind: usize, random_ties: bool) {
        let models: Vec<GpuModel> = ["V100M32", "T4"]
            .iter()
            .map(|m| m.parse().expect("valid model"))
            .collect();
        let shapes: Vec<NodeShape> = nodes
            .iter()
            .enumerate()
            .map(|(i, (gpus, model, cores, ..))| NodeShape {
                name: format!("n{i}"),
                cpu_milli: cores * 1000,
                memory_mib: 65_536,
                gpus: *gpus,
                model: (*gpus > 0).then(|| models[*model].clone()),
                gpu_memory_mib: 16_384,
            })
            .collect();
        let mut cluster = Cluster::from_shapes(&shapes).expect("valid shapes");
        for (i, (gpus, _, _, cordoned, sick, mig)) in nodes.iter().enumerate() {
            let id = NodeId(i as u32);
            cluster.set_cordoned(id, *cordoned).expect("known node");
            if *sick && *gpus > 1 {
                cluster
                    .set_gpu_health(id, 1, Health::Unhealthy)
                    .expect("known GPU");
            }
            if *mig && *gpus > 0 {
                cluster.enable_mig(id, 0).expect("idle GPU");
            }
        }
        let reqs: Vec<Request> = requests.iter().map(|r| request(r, &models)).collect();
        let kind = PolicyKind::ALL[kind];
        let mix = Arc::new(WorkloadMix::typical(&reqs, 100.0).expect("non-empty"));
        let tie = if random_ties {
            TieBreak::Random
        } else {
            TieBreak::NodeName
        };
        let policy = Policy::from_name(kind.name(), Some(mix))
            .expect("known policy")
            .with_tie_break(tie);
        let mut rng = ChaCha8Rng::seed_from_u64(7);
        let mut scratch = PlacementScratch::default();
        for (spec, r) in requests.iter().zip(&reqs) {
            let mut reference_rng = rng.clone();
            // The reference starts from empty scratch, so it also checks FGD's cached points.
            let by_columns = place_by(&cluster, r, &policy, &mut scratch, &mut rng, true);
            let fresh = &mut PlacementScratch::default();
            let full = place_by(&cluster, r, &policy, fresh, &mut reference_rng, false);
            assert_eq!(by_columns, full, "{kind} placing {r}");
            if let (Ok(p), true) = (by_columns, spec.5) {
                cluster.allocate(&p.claim).expect("a fresh placement fits");
            }
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(200))]
        #[test]
        fn same_node_and_gpus(
            nodes in prop::collection::vec(
                (
                    prop_oneof![Just(0u32), 1u32..=8, Just(10u32)],
                    0usize..2,
                    1u64..=32,
                    prop::bool::weighted(0.1),
                    prop::bool::weighted(0.1),
                    prop::bool::weighted(0.05),
                ),
                1..24,
            ),
            requests in prop::collection::vec(
                (0u8..4, 0u64..=12_000, 1u32..=4, 1u32..=1000, prop::bool::weighted(0.2), prop::bool::weighted(0.8)),
                1..60,
            ),
            kind in 0usize..6,
            random_ties in any::<bool>(),
        ) {
            run(&nodes, &requests, kind, random_ties);
        }
    }
}
