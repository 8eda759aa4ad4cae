//! What a hostile or broken client can send: every case is an error, never a panic.

use proptest::prelude::*;
use prost::Message;
use suanli_engine::inventory::NodeInventory;
use suanli_engine::job::JobSpec;
use suanli_proto::convert::inventory::MAX_GPUS;
use suanli_proto::convert::job::MAX_COMMAND_ARGS;
use suanli_proto::{ConvertError, pb};

use crate::fixtures::{full_inventory, full_job_spec};

#[test]
fn unknown_enum_numbers_are_errors() {
    let mut msg = pb::NodeInventory::from(full_inventory());
    msg.gpus[3].health = 99;
    let err = NodeInventory::try_from(msg).expect_err("99 is no health");
    assert_eq!(
        err.to_string(),
        "inventory.gpus[3].health: 99 is not a known Health value; known: \
         HEALTH_UNSPECIFIED=0, HEALTH_HEALTHY=1, HEALTH_DEGRADED=2, HEALTH_UNHEALTHY=3"
    );
    assert!(matches!(err, ConvertError::UnknownEnum { value: 99, .. }));

    let mut msg = pb::NodeInventory::from(full_inventory());
    msg.nics[1].ports[0].state = -7;
    assert_eq!(
        NodeInventory::try_from(msg)
            .expect_err("-7 is no port state")
            .field(),
        "inventory.nics[1].ports[0].state"
    );

    let mut msg = pb::NodeInventory::from(full_inventory());
    msg.gpu_pairs[0].path = Some(pb::LinkPath {
        kind: i32::MAX,
        nvlink_count: 0,
    });
    assert_eq!(
        NodeInventory::try_from(msg)
            .expect_err("i32::MAX is no link path kind")
            .field(),
        "inventory.gpu_pairs[0].path.kind"
    );

    let mut msg = pb::JobSpec::from(full_job_spec());
    msg.kind = i32::MIN;
    assert_eq!(
        JobSpec::try_from(msg)
            .expect_err("i32::MIN is no job kind")
            .field(),
        "spec.kind"
    );

    let mut msg = pb::JobSpec::from(full_job_spec());
    if let Some(t) = msg.topology.as_mut() {
        t.network = Some(pb::NetworkConstraint { scope: 42, mode: 1 });
    }
    assert_eq!(
        JobSpec::try_from(msg)
            .expect_err("42 is no network scope")
            .to_string(),
        "spec.topology.network.scope: 42 is not a known NetworkScope value; known: \
         NETWORK_SCOPE_UNSPECIFIED=0, NETWORK_SCOPE_SAME_NODE=1, NETWORK_SCOPE_SAME_LEAF=2, \
         NETWORK_SCOPE_SAME_SPINE=3, NETWORK_SCOPE_ANY=4"
    );

    let err = suanli_proto::convert::job::job_state_from_wire("states[0]", 8)
        .expect_err("8 is no job state");
    assert_eq!(err.field(), "states[0]");
    let err = suanli_proto::convert::job::job_state_from_wire("state", 0)
        .expect_err("unset is no job state");
    assert_eq!(err.to_string(), "state: a job state is required");
}

#[test]
fn huge_repeated_fields_are_refused_by_count() {
    let mut msg = pb::NodeInventory::from(full_inventory());
    let template = msg.gpus[0].clone();
    msg.gpus = vec![template; 100_000];
    let err = NodeInventory::try_from(msg).expect_err("no node has 100000 GPUs");
    assert_eq!(
        err.to_string(),
        format!("inventory.gpus: has 100000 entries; at most {MAX_GPUS}")
    );

    let mut msg = pb::JobSpec::from(full_job_spec());
    msg.command = vec![String::new(); 1_000_000];
    let err = JobSpec::try_from(msg).expect_err("a million arguments");
    assert_eq!(
        err,
        ConvertError::TooMany {
            field: "spec.command".to_string(),
            len: 1_000_000,
            max: MAX_COMMAND_ARGS,
        }
    );

    let mut msg = pb::JobSpec::from(full_job_spec());
    if let Some(gpu) = msg.gpu.as_mut() {
        gpu.models = vec!["H100".to_string(); 10_000];
    }
    assert_eq!(
        JobSpec::try_from(msg)
            .expect_err("ten thousand models")
            .field(),
        "spec.gpu.models"
    );

    let mut msg = pb::NodeInventory::from(full_inventory());
    if let Some(mig) = msg.gpus[7].mig.as_mut() {
        let one = mig.instances[0].clone();
        mig.instances = vec![one; 500];
    }
    assert_eq!(
        NodeInventory::try_from(msg)
            .expect_err("500 MIG instances")
            .to_string(),
        "inventory.gpus[7].mig.instances: has 500 entries; at most 64"
    );
}

#[test]
fn empty_oneofs_are_errors() {
    let mut msg = pb::NodeInventory::from(full_inventory());
    msg.nvml = Some(pb::NvmlStatus { status: None });
    assert_eq!(
        NodeInventory::try_from(msg)
            .expect_err("empty NVML status")
            .to_string(),
        "inventory.nvml: one of available or unavailable is required"
    );
    let mut msg = pb::JobSpec::from(full_job_spec());
    msg.gpu = Some(pb::GpuRequest::default());
    assert!(matches!(
        JobSpec::try_from(msg),
        Err(ConvertError::Missing { .. })
    ));
}

#[test]
fn an_empty_message_is_an_error() {
    assert_eq!(
        NodeInventory::try_from(pb::NodeInventory::default())
            .expect_err("no CID")
            .to_string(),
        "inventory.cid: must not be empty"
    );
    assert_eq!(
        JobSpec::try_from(pb::JobSpec::default())
            .expect_err("no name")
            .to_string(),
        "spec.name: must not be empty"
    );
}

#[test]
fn non_finite_numbers_are_errors() {
    let mut msg = pb::JobSpec::from(full_job_spec());
    if let Some(p) = msg.placement.as_mut() {
        p.max_price_per_gpu_hour = Some(f64::INFINITY);
    }
    assert_eq!(
        JobSpec::try_from(msg)
            .expect_err("infinite price")
            .to_string(),
        "spec.placement.max_price_per_gpu_hour: inf is not a price"
    );
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    /// Whatever bytes arrive, decoding fails cleanly or conversion returns a result.
    #[test]
    fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
        if let Ok(msg) = pb::JobSpec::decode(bytes.as_slice()) {
            let _ = JobSpec::try_from(msg);
        }
        if let Ok(msg) = pb::NodeInventory::decode(bytes.as_slice()) {
            let _ = NodeInventory::try_from(msg);
        }
        if let Ok(pb::AgentMessage { msg: Some(pb::agent_message::Msg::Inventory(update)) }) =
            pb::AgentMessage::decode(bytes.as_slice())
        {
            let _ = suanli_proto::convert::inventory::required_inventory(update.inventory);
        }
    }

    /// Any number in any enum field of a valid spec converts or errors; never panics.
    #[test]
    fn any_enum_number_in_a_spec_is_handled(
        kind in any::<i32>(),
        scope in any::<i32>(),
        mode in any::<i32>(),
        nvlink in any::<i32>(),
    ) {
        let mut msg = pb::JobSpec::from(full_job_spec());
        msg.kind = kind;
        msg.topology = Some(pb::Topology {
            nvlink,
            network: Some(pb::NetworkConstraint { scope, mode }),
            rdma_required: false,
        });
        match JobSpec::try_from(msg) {
            Ok(_) => prop_assert!((0..=2).contains(&kind) && (0..=4).contains(&scope)),
            Err(e) => prop_assert!(e.field().starts_with("spec."), "{e}"),
        }
    }
}
