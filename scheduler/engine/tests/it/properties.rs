//! Invariants over random clusters and request sequences: no GPU over-committed in milli or
//! memory, an exclusive GPU never shared, MIG slices never double-used, allocate-then-release
//! restores the identical state, and the same seed gives the same placements.

use proptest::prelude::*;
use suanli_engine::{
    Cluster, GpuDemand, NodeId, NodeShape, Policy, PolicyKind, Request, WorkloadMix, evaluate,
    place,
};

use crate::common::rng;

const MODELS: [&str; 3] = ["A100-80GB", "T4", "V100M32"];

fn node_shape() -> impl Strategy<Value = (NodeShape, Vec<bool>)> {
    (
        1u64..=64,
        1u64..=512,
        0u32..=8,
        0usize..3,
        prop::collection::vec(any::<bool>(), 8),
    )
        .prop_map(|(cores, gib, gpus, model, mig)| {
            (
                NodeShape {
                    name: String::new(),
                    cpu_milli: cores * 1000,
                    memory_mib: gib * 1024,
                    gpus,
                    model: Some(MODELS[model].parse().expect("valid model")),
                    gpu_memory_mib: 81_920,
                },
                mig,
            )
        })
}

fn cluster_strategy() -> impl Strategy<Value = Cluster> {
    prop::collection::vec(node_shape(), 1..6).prop_map(|nodes| {
        let shapes: Vec<NodeShape> = nodes
            .iter()
            .enumerate()
            .map(|(i, (s, _))| NodeShape {
                name: format!("n{i}"),
                ..s.clone()
            })
            .collect();
        let mut c = Cluster::from_shapes(&shapes).expect("valid shapes");
        for (i, (s, mig)) in nodes.iter().enumerate() {
            let a100 = s.model.as_ref().is_some_and(|m| m.as_str() == "A100-80GB");
            // MIG only on the 80 GB A100s, and only on some GPUs.
            for (g, on) in mig.iter().enumerate().take(s.gpus as usize) {
                if a100 && *on {
                    c.enable_mig(NodeId(i as u32), g).expect("idle GPU");
                }
            }
        }
        c
    })
}

fn request_strategy() -> impl Strategy<Value = Request> {
    let demand = prop_oneof![
        Just(GpuDemand::None),
        (1u32..=4).prop_map(|count| GpuDemand::Exclusive { count }),
        (0u32..=1000, 0u64..=40_000)
            .prop_filter("a share asks for something", |(m, mem)| *m > 0 || *mem > 0)
            .prop_map(|(milli, memory_mib)| GpuDemand::Shared { milli, memory_mib }),
        (
            prop::sample::select(vec!["1g.10gb", "2g.20gb", "3g.40gb", "7g.80gb"]),
            1u32..=3
        )
            .prop_map(|(p, count)| GpuDemand::Mig {
                profile: p.parse().expect("known profile"),
                count,
            }),
    ];
    (
        0u64..=20_000,
        0u64..=65_536,
        demand,
        prop::option::of(0usize..3),
    )
        .prop_map(|(cpu, mem, gpu, model)| {
            let r = Request::new(cpu, mem, gpu).expect("sizes in range");
            match model {
                Some(m) => r.with_models(vec![MODELS[m].parse().expect("valid")]),
                None => r,
            }
        })
}

fn policy_for(kind: PolicyKind, requests: &[Request]) -> Policy {
    match kind {
        PolicyKind::Fgd => Policy::fgd(WorkloadMix::typical(requests, 95.0).unwrap_or_else(|_| {
            WorkloadMix::typical(&[Request::new(1, 1, GpuDemand::None).expect("valid")], 95.0)
                .expect("one shape")
        })),
        kind => Policy::new(kind).expect("needs no mix"),
    }
}

/// Every GPU within its capacity, exclusive GPUs unshared, MIG slices used once, node CPU and
/// memory within capacity, and usage equal to the sum of the live allocations.
fn check_invariants(c: &Cluster) -> Result<(), TestCaseError> {
    for (ni, node) in c.nodes().iter().enumerate() {
        prop_assert!(node.cpu_left() <= node.cpu_milli());
        prop_assert!(node.memory_left() <= node.memory_mib());
        let mut cpu = 0;
        let mut mem = 0;
        let mut milli = vec![0u32; node.gpus().len()];
        let mut gmem = vec![0u64; node.gpus().len()];
        let mut holders = vec![(0u32, 0u32); node.gpus().len()];
        let mut slices = vec![0u8; node.gpus().len()];
        for a in c.allocations().filter(|a| a.node == NodeId(ni as u32)) {
            cpu += a.cpu_milli;
            mem += a.memory_mib;
            for g in &a.gpus {
                let i = g.gpu as usize;
                milli[i] += g.milli;
                gmem[i] += g.memory_mib;
                if g.exclusive {
                    holders[i].0 += 1;
                } else {
                    holders[i].1 += 1;
                }
                if let Some((profile, start)) = &g.mig {
                    let class = node.gpus()[i].mig.as_ref().map(|m| m.class).unwrap_or(0);
                    let spec = profile.spec_for(class).expect("granted profile exists");
                    let mask = (((1u16 << spec.memory_slices) - 1) << start) as u8;
                    prop_assert_eq!(slices[i] & mask, 0, "MIG slices double-used");
                    slices[i] |= mask;
                }
            }
        }
        prop_assert_eq!(node.cpu_milli() - node.cpu_left(), cpu);
        prop_assert_eq!(node.memory_mib() - node.memory_left(), mem);
        for (i, gpu) in node.gpus().iter().enumerate() {
            prop_assert!(gpu.milli_used() <= 1000, "milli over-committed");
            prop_assert!(gpu.memory_used() <= gpu.memory_mib, "memory over-committed");
            prop_assert_eq!(gpu.milli_used(), milli[i]);
            prop_assert_eq!(gpu.memory_used(), gmem[i]);
            prop_assert!(holders[i].0 <= 1, "two exclusive holders");
            prop_assert!(
                holders[i].0 == 0 || holders[i].1 == 0,
                "an exclusive GPU is shared"
            );
            if let Some(m) = &gpu.mig {
                prop_assert_eq!(m.used_slices, slices[i]);
            }
        }
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    #[test]
    fn placements_never_over_commit(
        cluster in cluster_strategy(),
        requests in prop::collection::vec(request_strategy(), 1..40),
        kind in prop::sample::select(PolicyKind::ALL.to_vec()),
        seed in any::<u64>(),
    ) {
        let mut c = cluster;
        let policy = policy_for(kind, &requests);
        let mut r = rng(seed);
        for request in &requests {
            if let Ok(p) = place(&c, request, &policy, &mut r) {
                c.allocate(&p.claim).expect("a fresh placement fits");
            }
            check_invariants(&c)?;
        }
    }

    /// Scoring chosen nodes (the Kubernetes extender's filter and prioritize) agrees with the
    /// policy's own choice: the same nodes fit, and the chosen node has the best points.
    #[test]
    fn evaluating_nodes_agrees_with_placing(
        cluster in cluster_strategy(),
        requests in prop::collection::vec(request_strategy(), 1..30),
        kind in prop::sample::select(PolicyKind::ALL.to_vec()),
        seed in any::<u64>(),
    ) {
        let mut c = cluster;
        let policy = policy_for(kind, &requests);
        let mut r = rng(seed);
        let all: Vec<NodeId> = (0..c.len() as u32).map(NodeId).collect();
        for request in &requests {
            let verdicts = evaluate(&c, request, &policy, &all);
            let best = verdicts.iter().filter_map(|v| v.as_ref().ok()).max().copied();
            match place(&c, request, &policy, &mut r) {
                Ok(p) => {
                    let chosen = verdicts[p.claim.node.index()];
                    prop_assert_eq!(chosen, Ok(p.score.points));
                    prop_assert_eq!(best, Some(p.score.points));
                    c.allocate(&p.claim).expect("a fresh placement fits");
                }
                Err(_) => prop_assert_eq!(best, None),
            }
        }
    }

    #[test]
    fn release_restores_the_identical_state(
        cluster in cluster_strategy(),
        requests in prop::collection::vec(request_strategy(), 1..30),
        kind in prop::sample::select(PolicyKind::ALL.to_vec()),
        seed in any::<u64>(),
        order_seed in any::<u64>(),
    ) {
        let empty = cluster.clone();
        let mut c = cluster;
        let policy = policy_for(kind, &requests);
        let mut r = rng(seed);
        let mut ids = Vec::new();
        for request in &requests {
            if let Ok(p) = place(&c, request, &policy, &mut r) {
                let before = c.clone();
                let id = c.allocate(&p.claim).expect("fits");
                // One allocate-release round trip is invisible...
                let mut round = c.clone();
                round.release(id).expect("known id");
                prop_assert_eq!(&round, &before);
                ids.push(id);
            }
        }
        // ...and releasing everything, in any order, gives back the empty cluster.
        let mut shuffled = ids.clone();
        let mut o = rng(order_seed);
        rand::seq::SliceRandom::shuffle(shuffled.as_mut_slice(), &mut o);
        for id in shuffled {
            c.release(id).expect("known id");
        }
        prop_assert_eq!(&c, &empty);
        prop_assert!(c.release(ids.first().copied().unwrap_or(suanli_engine::AllocationId(0))).is_err());
    }

    #[test]
    fn same_seed_same_placements(
        cluster in cluster_strategy(),
        requests in prop::collection::vec(request_strategy(), 1..30),
        kind in prop::sample::select(PolicyKind::ALL.to_vec()),
        seed in any::<u64>(),
    ) {
        let policy = policy_for(kind, &requests).with_tie_break(suanli_engine::TieBreak::Random);
        let run = |mut c: Cluster| {
            let mut r = rng(seed);
            let mut out = Vec::new();
            for request in &requests {
                match place(&c, request, &policy, &mut r) {
                    Ok(p) => {
                        c.allocate(&p.claim).expect("fits");
                        out.push(Some(p.claim));
                    }
                    Err(_) => out.push(None),
                }
            }
            out
        };
        prop_assert_eq!(run(cluster.clone()), run(cluster));
    }
}
