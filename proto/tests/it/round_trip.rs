//! Domain → wire → bytes → wire → domain gives back the same value.

use prost::Message;
use suanli_engine::inventory::{LinkPath, NodeInventory, NvmlStatus};
use suanli_engine::job::{GpuPolicy, GpuRequest, JobKind, JobSpec, JobState};
use suanli_proto::pb;

use crate::fixtures::{full_inventory, full_job_spec};

/// Sends a message through its encoded bytes, as it would travel.
fn over_the_wire<M: Message + Default>(msg: &M) -> M {
    M::decode(msg.encode_to_vec().as_slice()).expect("freshly encoded bytes decode")
}

#[test]
fn full_inventory_round_trips() {
    let inventory = full_inventory();
    inventory.validate().expect("the fixture is valid");
    let wire = over_the_wire(&pb::NodeInventory::from(inventory.clone()));
    assert_eq!(wire.gpus.len(), 8);
    assert_eq!(
        wire.gpus[7].mig.as_ref().map(|m| m.instances.len()),
        Some(3)
    );
    assert_eq!(wire.nics.len(), 4);
    assert_eq!(wire.gpu_pairs.len(), 28);
    assert_eq!(wire.gpu_nic_pairs.len(), 32);
    assert_eq!(wire.gpus[4].numa_node, None, "unknown NUMA stays absent");
    assert_eq!(wire.gpus[0].numa_node, Some(0), "NUMA node 0 stays present");
    let back = NodeInventory::try_from(wire).expect("a valid inventory converts");
    assert_eq!(back, inventory);
}

#[test]
fn inventory_without_nvml_round_trips() {
    let mut inventory = full_inventory();
    inventory.nvml = NvmlStatus::Unavailable {
        reason: "libnvidia-ml.so.1 not found".to_string(),
    };
    inventory.gpus.clear();
    inventory.gpu_pairs.clear();
    inventory.gpu_nic_pairs.clear();
    let back = NodeInventory::try_from(over_the_wire(&pb::NodeInventory::from(inventory.clone())))
        .expect("a CPU-only node is valid");
    assert_eq!(back, inventory);
}

#[test]
fn absent_optional_sub_messages_take_the_engine_defaults() {
    let wire = pb::NodeInventory {
        cid: "cid:acme/cn-east-1/dc-a/n1".to_string(),
        cpu_milli: 1000,
        memory_mib: 1024,
        ..Default::default()
    };
    let inventory = NodeInventory::try_from(wire).expect("minimal inventory is valid");
    assert_eq!(inventory.nvml, NvmlStatus::default());
    assert_eq!(inventory.fabric, Default::default());
    assert!(inventory.gpus.is_empty());
}

#[test]
fn full_job_spec_round_trips() {
    let spec = full_job_spec();
    spec.validate().expect("the fixture is valid");
    let back = JobSpec::try_from(over_the_wire(&pb::JobSpec::from(spec.clone())))
        .expect("a valid spec converts");
    assert_eq!(back, spec);
}

#[test]
fn every_gpu_policy_round_trips() {
    let policies = [
        GpuPolicy::Exclusive { count: 1 },
        GpuPolicy::Shared {
            milli: Some(250),
            memory_mib: None,
        },
        GpuPolicy::Shared {
            milli: None,
            memory_mib: Some(8192),
        },
        GpuPolicy::Shared {
            milli: Some(1000),
            memory_mib: Some(1),
        },
        GpuPolicy::Mig {
            profile: "1g.10gb+me".parse().expect("known profile"),
            count: 2,
        },
    ];
    for policy in policies {
        let mut spec = JobSpec::new("svc", JobKind::Inference);
        spec.gpu = Some(GpuRequest {
            policy,
            models: vec![],
        });
        let back = JobSpec::try_from(over_the_wire(&pb::JobSpec::from(spec.clone())))
            .expect("a valid spec converts");
        assert_eq!(back, spec);
    }
}

#[test]
fn a_minimal_wire_spec_gets_the_job_file_defaults() {
    let wire = pb::JobSpec {
        name: "cpu-only".to_string(),
        replicas: 1,
        ..Default::default()
    };
    let spec = JobSpec::try_from(wire).expect("valid");
    assert_eq!(spec, JobSpec::new("cpu-only", JobKind::Training));
    assert!(spec.preemptible, "absent preemptible means true");
    assert_eq!(spec.tenant, "default");
    assert_eq!(spec.queue, "default");
    assert_eq!(spec.topology.nvlink, None);
}

#[test]
fn link_paths_and_job_states_round_trip() {
    for path in [
        LinkPath::NvLink(1),
        LinkPath::NvLink(18),
        LinkPath::Pix,
        LinkPath::Pxb,
        LinkPath::Phb,
        LinkPath::Node,
        LinkPath::Sys,
    ] {
        let wire = over_the_wire(&pb::LinkPath::from(path));
        assert_eq!(LinkPath::try_from(wire).expect("valid"), path);
    }
    for state in JobState::ALL {
        let wire = pb::JobState::from(state);
        assert_eq!(JobState::try_from(wire).expect("valid"), state);
        assert_eq!(
            suanli_proto::convert::job::job_state_from_wire("state", wire.into()).expect("valid"),
            state
        );
    }
}

#[test]
fn the_descriptor_set_describes_every_service() {
    let set = prost_types::FileDescriptorSet::decode(suanli_proto::FILE_DESCRIPTOR_SET)
        .expect("the embedded descriptor set decodes");
    let services: Vec<String> = set
        .file
        .iter()
        .filter(|f| f.package() == "suanli.v1")
        .flat_map(|f| f.service.iter().map(|s| s.name().to_string()))
        .collect();
    for name in ["AgentService", "JobService", "ClusterService"] {
        assert!(
            services.iter().any(|s| s == name),
            "{name} not in {services:?}"
        );
    }
}
