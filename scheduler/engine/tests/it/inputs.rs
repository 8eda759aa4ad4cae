//! Bad input gets a typed error or an explanation, never a panic.

use suanli_engine::{
    AllocationId, Cluster, ClusterError, GpuDemand, NodeShape, Policy, PolicyKind, Reason, Request,
    RequestError, place,
};

use crate::common::{cluster, rng, shapes, whole};

#[test]
fn zero_and_absurd_request_sizes_are_typed_errors() {
    assert!(matches!(
        Request::new(0, 0, GpuDemand::Exclusive { count: 65 }),
        Err(RequestError::OutOfRange {
            field: "gpu.count",
            ..
        })
    ));
    assert!(matches!(
        Request::new(0, u64::MAX, GpuDemand::None),
        Err(RequestError::OutOfRange {
            field: "memory_mib",
            ..
        })
    ));
    assert!(matches!(
        Request::from_openb(1000, 1, 3, 250, ""),
        Err(RequestError::PartialMultiGpu {
            count: 3,
            milli: 250
        })
    ));
    assert!(matches!(
        Request::from_openb(1000, 1, 1, 1, "H100||bad model"),
        Err(RequestError::BadModel { .. })
    ));
}

#[test]
fn bad_node_shapes_are_typed_errors() {
    let mut s = shapes(1, 1, "T4");
    s[0].memory_mib = 0;
    assert!(matches!(
        Cluster::from_shapes(&s),
        Err(ClusterError::OutOfRange {
            field: "memory_mib",
            ..
        })
    ));
    let mut s = shapes(1, 1, "T4");
    s[0].gpus = 10_000;
    assert!(matches!(
        Cluster::from_shapes(&s),
        Err(ClusterError::OutOfRange { field: "gpu", .. })
    ));
    let blank = NodeShape {
        name: " ".into(),
        ..shapes(1, 0, "CPU")[0].clone()
    };
    assert!(matches!(
        Cluster::from_shapes(&[blank]),
        Err(ClusterError::EmptyName { index: 0 })
    ));
}

#[test]
fn unknown_model_and_impossible_requests_are_explained() {
    let c = cluster(&shapes(3, 8, "V100M32"));
    let best_fit = Policy::new(PolicyKind::BestFit).expect("no mix");
    let h100 = Request::from_openb(1000, 1, 1, 1000, "H100").expect("valid");
    let err = place(&c, &h100, &best_fit, &mut rng(1)).expect_err("no H100 here");
    assert_eq!(err.count(Reason::ModelNotAllowed), 3);
    assert_eq!(err.to_string(), "3 nodes: model not in [H100]");
    let huge = whole(1000, 16);
    let err = place(&c, &huge, &best_fit, &mut rng(1)).expect_err("no node has 16 GPUs");
    assert_eq!(err.to_string(), "3 nodes: fewer than 16 free GPUs");
    let cpu = Request::new(1_000_000, 0, GpuDemand::None).expect("valid size");
    let err = place(&c, &cpu, &best_fit, &mut rng(1)).expect_err("1000 cores");
    assert_eq!(err.to_string(), "3 nodes: less than 1000000m CPU free");
    let empty = Cluster::from_shapes(&[]).expect("an empty cluster is valid");
    let err = place(&empty, &h100, &best_fit, &mut rng(1)).expect_err("no nodes");
    assert_eq!(err.to_string(), "no nodes in the cluster");
}

#[test]
fn stale_claims_and_unknown_ids_are_refused() {
    let mut c = cluster(&shapes(1, 1, "T4"));
    let best_fit = Policy::new(PolicyKind::BestFit).expect("no mix");
    let p = place(&c, &whole(1000, 1), &best_fit, &mut rng(1)).expect("fits");
    c.allocate(&p.claim).expect("fits");
    let err = c.allocate(&p.claim).expect_err("the GPU is taken now");
    assert!(matches!(err, ClusterError::DoesNotFit { .. }), "{err}");
    assert!(matches!(
        c.release(AllocationId(999)),
        Err(ClusterError::UnknownAllocation(_))
    ));
    let mut wrong = p.claim.clone();
    wrong.node = suanli_engine::NodeId(7);
    assert!(matches!(
        c.allocate(&wrong),
        Err(ClusterError::UnknownNode(7))
    ));
}

#[test]
fn fgd_without_a_mix_and_unknown_names_are_errors() {
    assert!(Policy::from_name("fgd", None).is_err());
    assert!(Policy::from_name("tetris", None).is_err());
    let err = "tetris"
        .parse::<PolicyKind>()
        .expect_err("unknown")
        .to_string();
    assert!(err.contains("known: random, best-fit"), "{err}");
}
