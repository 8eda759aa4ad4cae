//! Random valid job specs and inventories survive domain → wire → bytes → wire → domain.

use std::collections::BTreeMap;

use proptest::prelude::*;
use prost::Message;
use suanli_engine::inventory::{GpuPair, LinkPath, NodeInventory};
use suanli_engine::job::{
    DataVolume, GpuPolicy, GpuRequest, JobKind, JobSpec, NetworkConstraint, NetworkScope,
    PlacementConstraints, Requirement, Resources, Topology, VolumeMount,
};
use suanli_engine::{Cid, GpuModel, MigProfile};
use suanli_proto::pb;

use crate::fixtures::{full_inventory, gpu};

fn segment() -> impl Strategy<Value = String> {
    "[a-z0-9][a-z0-9._-]{0,12}"
}

fn cid_with_depth(depth: std::ops::RangeInclusive<usize>) -> impl Strategy<Value = Cid> {
    proptest::collection::vec(segment(), depth)
        .prop_map(|segments| Cid::from_segments(segments).expect("generated segments are valid"))
}

fn model() -> impl Strategy<Value = GpuModel> {
    "[A-Z][A-Z0-9._-]{0,15}".prop_map(|m| m.parse().expect("generated models are valid"))
}

fn mig_profile() -> impl Strategy<Value = MigProfile> {
    proptest::sample::select(MigProfile::known_names())
        .prop_map(|name| name.parse().expect("a known profile"))
}

fn gpu_policy() -> impl Strategy<Value = GpuPolicy> {
    prop_oneof![
        (1u32..=64).prop_map(|count| GpuPolicy::Exclusive { count }),
        (
            proptest::option::of(1u32..=1000),
            proptest::option::of(1u64..=(1 << 22))
        )
            .prop_filter("a share needs milli or memory", |(m, g)| m.is_some()
                || g.is_some())
            .prop_map(|(milli, memory_mib)| GpuPolicy::Shared { milli, memory_mib }),
        (mig_profile(), 1u32..=56).prop_map(|(profile, count)| GpuPolicy::Mig { profile, count }),
    ]
}

fn requirement() -> impl Strategy<Value = Requirement> {
    prop_oneof![Just(Requirement::Required), Just(Requirement::Preferred)]
}

fn scope() -> impl Strategy<Value = NetworkScope> {
    prop_oneof![
        Just(NetworkScope::SameNode),
        Just(NetworkScope::SameLeaf),
        Just(NetworkScope::SameSpine),
        Just(NetworkScope::Any),
    ]
}

fn finite_non_negative() -> impl Strategy<Value = f64> {
    0.0f64..1.0e6
}

fn placement() -> impl Strategy<Value = PlacementConstraints> {
    (
        proptest::collection::vec(cid_with_depth(1..=4), 0..4),
        proptest::collection::vec(
            ("[a-z][a-z0-9-]{0,20}", cid_with_depth(3..=4), any::<u64>()).prop_map(
                |(name, domain, size_gib)| DataVolume {
                    name,
                    domain,
                    size_gib,
                },
            ),
            0..3,
        ),
        proptest::option::of(finite_non_negative()),
        any::<bool>(),
        proptest::option::of(finite_non_negative()),
    )
        .prop_map(
            |(allowed, data, max_price_per_gpu_hour, allow_cross_domain, bandwidth)| {
                PlacementConstraints {
                    allowed,
                    data,
                    max_price_per_gpu_hour,
                    allow_cross_domain,
                    inter_domain_bandwidth_gbps: bandwidth,
                }
            },
        )
}

prop_compose! {
    fn job_spec()(
        name in "[a-z][a-z0-9-]{0,40}",
        inference in any::<bool>(),
        replicas in 1u32..=100_000,
        min_fraction in proptest::option::of(0.0f64..=1.0),
        gpu in proptest::option::of((gpu_policy(), proptest::collection::vec(model(), 0..4))),
        cpu_milli in 0u64..=10_000_000,
        memory_mib in 0u64..=(1 << 30),
        nvlink in proptest::option::of(requirement()),
        scope in scope(),
        mode in requirement(),
        rdma_required in any::<bool>(),
        placement in placement(),
        tenant in "[a-z][a-z0-9-]{0,20}",
        queue in "[a-z][a-z0-9-]{0,20}",
        priority in any::<i32>(),
        preemptible in any::<bool>(),
        time_limit_s in proptest::option::of(1u64..=315_360_000),
        command in proptest::collection::vec("[^\\x00]{0,20}", 0..5),
        env in proptest::collection::btree_map("[A-Z_][A-Z0-9_]{0,10}", "[^\\x00]{0,20}", 0..5),
        mounts in proptest::collection::btree_map("/[a-z]{1,10}", ("[a-z]{1,10}", any::<bool>()), 0..4),
    ) -> JobSpec {
        let kind = if inference { JobKind::Inference } else { JobKind::Training };
        // same-node applies to gangs only; the engine rejects it for inference.
        let scope = if inference && scope == NetworkScope::SameNode { NetworkScope::Any } else { scope };
        let min_replicas = min_fraction
            .map(|f| ((f64::from(replicas) * f).ceil() as u32).clamp(1, replicas));
        JobSpec {
            name,
            kind,
            replicas,
            min_replicas,
            gpu: gpu.map(|(policy, models)| GpuRequest { policy, models }),
            resources: Resources { cpu_milli, memory_mib },
            topology: Topology {
                nvlink,
                network: NetworkConstraint { scope, mode },
                rdma_required,
            },
            placement,
            tenant,
            queue,
            priority,
            preemptible,
            time_limit_s,
            command,
            env,
            volumes: mounts
                .into_iter()
                .map(|(path, (name, read_only))| VolumeMount { name, path, read_only })
                .collect(),
        }
    }
}

fn link_path() -> impl Strategy<Value = LinkPath> {
    prop_oneof![
        (1u32..=18).prop_map(LinkPath::NvLink),
        Just(LinkPath::Pix),
        Just(LinkPath::Pxb),
        Just(LinkPath::Phb),
        Just(LinkPath::Node),
        Just(LinkPath::Sys),
    ]
}

prop_compose! {
    fn inventory()(
        gpus in 0u32..=16,
        paths in proptest::collection::vec(link_path(), 120),
        generation in any::<u64>(),
        labels in proptest::collection::btree_map("[a-z./-]{1,20}", ".{0,20}", 0..5),
    ) -> NodeInventory {
        let mut inventory = full_inventory();
        inventory.generation = generation;
        inventory.gpus = (0..gpus).map(gpu).collect();
        inventory.gpu_nic_pairs.retain(|p| p.gpu < gpus);
        let mut pairs = Vec::new();
        let mut next = paths.into_iter().cycle();
        for a in 0..gpus {
            for b in (a + 1)..gpus {
                let path = next.next().unwrap_or(LinkPath::Sys);
                pairs.push(GpuPair { a, b, path });
            }
        }
        inventory.gpu_pairs = pairs;
        inventory.labels = labels.into_iter().collect::<BTreeMap<_, _>>();
        inventory
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn valid_job_specs_round_trip(spec in job_spec()) {
        spec.validate().expect("the strategy makes valid specs");
        let bytes = pb::JobSpec::from(spec.clone()).encode_to_vec();
        let wire = pb::JobSpec::decode(bytes.as_slice()).expect("freshly encoded");
        prop_assert_eq!(JobSpec::try_from(wire).expect("valid spec converts"), spec);
    }

    #[test]
    fn valid_inventories_round_trip(inventory in inventory()) {
        inventory.validate().expect("the strategy makes valid inventories");
        let bytes = pb::NodeInventory::from(inventory.clone()).encode_to_vec();
        let wire = pb::NodeInventory::decode(bytes.as_slice()).expect("freshly encoded");
        prop_assert_eq!(NodeInventory::try_from(wire).expect("valid inventory converts"), inventory);
    }
}
