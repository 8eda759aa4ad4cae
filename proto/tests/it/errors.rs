//! Each invalid message names the field path and the problem, word for word.

use suanli_engine::inventory::NodeInventory;
use suanli_engine::job::JobSpec;
use suanli_engine::{MigProfile, Problem};
use suanli_proto::{ConvertError, pb};

use crate::fixtures::{full_inventory, full_job_spec};

fn wire_spec() -> pb::JobSpec {
    pb::JobSpec::from(full_job_spec())
}

fn wire_inventory() -> pb::NodeInventory {
    pb::NodeInventory::from(full_inventory())
}

fn spec_error(msg: pb::JobSpec) -> ConvertError {
    JobSpec::try_from(msg).expect_err("the spec is invalid")
}

fn inventory_error(msg: pb::NodeInventory) -> ConvertError {
    NodeInventory::try_from(msg).expect_err("the inventory is invalid")
}

fn shared(milli: Option<u32>, memory_mib: Option<u64>) -> Option<pb::GpuRequest> {
    Some(pb::GpuRequest {
        policy: Some(pb::gpu_request::Policy::Shared(pb::SharedGpu {
            milli,
            memory_mib,
        })),
        models: vec![],
    })
}

#[test]
fn zero_replicas() {
    let mut msg = wire_spec();
    msg.replicas = 0;
    msg.min_replicas = None;
    assert_eq!(
        spec_error(msg).to_string(),
        "spec.replicas: must be between 1 and 100000, got 0"
    );
}

#[test]
fn duplicate_gpu_uuid() {
    let mut msg = wire_inventory();
    msg.gpus[0].uuid = "GPU-a".to_string();
    msg.gpus[2].uuid = "GPU-a".to_string();
    let err = inventory_error(msg);
    assert_eq!(
        err.to_string(),
        "inventory.gpus[2].uuid: duplicate GPU UUID \"GPU-a\" (first at gpus[0])"
    );
    assert_eq!(err.field(), "inventory.gpus[2].uuid");
}

#[test]
fn unknown_mig_profile_lists_the_known_ones() {
    let mut msg = wire_spec();
    msg.gpu = Some(pb::GpuRequest {
        policy: Some(pb::gpu_request::Policy::Mig(pb::MigGpus {
            profile: "2g.7gb".to_string(),
            count: 1,
        })),
        models: vec![],
    });
    assert_eq!(
        spec_error(msg).to_string(),
        format!(
            "spec.gpu.mig.profile: unknown MIG profile \"2g.7gb\"; known: {}",
            MigProfile::known_names().join(", ")
        )
    );
}

#[test]
fn upper_case_node_segment() {
    let mut msg = wire_inventory();
    msg.cid = "cid:acme/cn-east-1/dc-a/Gpu-1".to_string();
    let err = inventory_error(msg);
    assert_eq!(
        err.to_string(),
        "inventory.cid: node segment \"Gpu-1\" has upper-case 'G' at position 0; \
         segments are lowercase"
    );
    assert!(
        matches!(&err, ConvertError::Invalid(v) if matches!(v.problem, Problem::Cid(_))),
        "{err:?}"
    );
}

#[test]
fn milli_above_one_gpu() {
    let mut msg = wire_spec();
    msg.gpu = shared(Some(1500), None);
    assert_eq!(
        spec_error(msg).to_string(),
        "spec.gpu.milli: must be between 1 and 1000, got 1500"
    );
}

#[test]
fn empty_name() {
    let mut msg = wire_spec();
    msg.name = String::new();
    assert_eq!(spec_error(msg).to_string(), "spec.name: must not be empty");
}

#[test]
fn gpu_request_without_a_policy() {
    let mut msg = wire_spec();
    msg.gpu = Some(pb::GpuRequest {
        policy: None,
        models: vec!["H100".to_string()],
    });
    let err = spec_error(msg);
    assert_eq!(
        err.to_string(),
        "spec.gpu: a GPU policy (exclusive, shared or mig) is required"
    );
    assert!(matches!(err, ConvertError::Missing { .. }), "{err:?}");
}

#[test]
fn missing_link_path_and_missing_inventory() {
    let mut msg = wire_inventory();
    msg.gpu_pairs[3].path = None;
    assert_eq!(
        inventory_error(msg).to_string(),
        "inventory.gpu_pairs[3].path: a link path is required"
    );
    let err =
        suanli_proto::convert::inventory::required_inventory(None).expect_err("no inventory sent");
    assert_eq!(err.to_string(), "inventory: the node inventory is required");
}

#[test]
fn link_path_counts_must_match_the_kind() {
    let mut msg = wire_inventory();
    msg.gpu_pairs[0].path = Some(pb::LinkPath {
        kind: pb::LinkPathKind::Nvlink.into(),
        nvlink_count: 0,
    });
    assert_eq!(
        inventory_error(msg).to_string(),
        "inventory.gpu_pairs[0].path.nvlink_count: must be at least 1, got 0"
    );
    let mut msg = wire_inventory();
    msg.gpu_nic_pairs[1].path = Some(pb::LinkPath {
        kind: pb::LinkPathKind::Pix.into(),
        nvlink_count: 4,
    });
    assert_eq!(
        inventory_error(msg).to_string(),
        "inventory.gpu_nic_pairs[1].path.nvlink_count: applies only to LINK_PATH_KIND_NVLINK; \
         got 4 for LINK_PATH_KIND_PIX"
    );
    let mut msg = wire_inventory();
    msg.gpu_pairs[2].path = Some(pb::LinkPath::default());
    assert_eq!(
        inventory_error(msg).to_string(),
        "inventory.gpu_pairs[2].path.kind: a link path kind is required"
    );
}

#[test]
fn nested_mig_and_nic_fields_are_named() {
    let mut msg = wire_inventory();
    if let Some(mig) = msg.gpus[7].mig.as_mut() {
        mig.instances[1].start_slice = 9;
    }
    assert_eq!(
        inventory_error(msg).to_string(),
        "inventory.gpus[7].mig.instances[1].start_slice: must be between 0 and 7, got 9"
    );
    let mut msg = wire_inventory();
    msg.nics[2].numa_node = Some(-1);
    assert_eq!(
        inventory_error(msg).to_string(),
        "inventory.nics[2].numa_node: -1 is not a NUMA node; leave the field unset when it is \
         unknown"
    );
    let mut msg = wire_inventory();
    msg.nics[0].ports[0].rate_gbps = f64::NAN;
    assert_eq!(
        inventory_error(msg).to_string(),
        "inventory.nics[0].ports[0].rate_gbps: NaN is not a link rate in Gb/s"
    );
}

#[test]
fn bad_cids_inside_a_spec_are_named() {
    let mut msg = wire_spec();
    msg.placement
        .as_mut()
        .expect("the fixture sets placement")
        .allowed[1] = "acme/eu".to_string();
    assert_eq!(
        spec_error(msg).to_string(),
        "spec.placement.allowed[1]: compute identifier \"acme/eu\" must start with \"cid:\""
    );
    let mut msg = wire_spec();
    msg.gpu.as_mut().expect("the fixture sets gpu").models[1] = "A100 80GB".to_string();
    assert_eq!(
        spec_error(msg).to_string(),
        "spec.gpu.models[1]: \"A100 80GB\" has ' '; allowed are letters, digits, '-', '_' and '.'"
    );
}

#[test]
fn errors_become_invalid_argument_statuses() {
    let mut msg = wire_spec();
    msg.name = String::new();
    let status = tonic::Status::from(spec_error(msg));
    assert_eq!(status.code(), tonic::Code::InvalidArgument);
    assert_eq!(status.message(), "spec.name: must not be empty");
}
