//! Bad input gets a typed error or an explanation, never a panic.

use suanli_engine::{
    AllocationId, Cluster, ClusterError, GpuDemand, NodeShape, Policy, PolicyKind, Refusal,
    Request, RequestError, place,
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
    assert_eq!(err.count(Refusal::ModelNotAllowed), 3);
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

/// Every limit the cluster needs is checked by `validate`, so what the wire accepts is what
/// the engine can model; one bad node is skipped, never the cluster.
#[test]
fn inventories_past_the_limits_are_refused_by_field_and_skipped_alone() {
    use crate::common::inventory;
    use suanli_engine::cluster::MAX_GPUS_PER_NODE;

    let too_many = inventory("dc-a", "wide", MAX_GPUS_PER_NODE + 1, &[]);
    assert_eq!(
        too_many.validate().expect_err("65 GPUs").to_string(),
        "gpus: has 65 entries; at most 64"
    );
    let mut cpu = inventory("dc-a", "cpu", 1, &[]);
    cpu.cpu_milli = u64::MAX;
    assert_eq!(
        cpu.validate().expect_err("2^64-1").to_string(),
        "cpu_milli: must be between 1 and 100000000, got 18446744073709551615"
    );
    let mut memory = inventory("dc-a", "mem", 1, &[]);
    memory.gpus[0].memory_mib = u64::MAX;
    assert!(
        memory
            .validate()
            .expect_err("2^64-1 GPU memory")
            .to_string()
            .starts_with("gpus[0].memory_mib: must be between 1 and")
    );
    let mut label = inventory("dc-a", "label", 1, &[]);
    label.labels.insert("evil".into(), "\u{1b}[2J".into());
    label
        .validate()
        .expect("label values may hold any text up to the limit");
    label.labels.insert("k\ney".into(), "v".into());
    assert!(label.validate().is_err(), "control characters in a key");

    let good = inventory("dc-a", "good", 8, &[]);
    let (cluster, skipped) =
        Cluster::from_inventories_skipping_invalid(&[too_many.clone(), good.clone(), cpu.clone()]);
    assert_eq!(cluster.len(), 1);
    assert_eq!(cluster.nodes()[0].name(), "good");
    let names: Vec<(usize, String)> = skipped
        .iter()
        .map(|s| (s.index, s.cid.node_name().unwrap_or_default().to_string()))
        .collect();
    assert_eq!(names, vec![(0, "wide".to_string()), (2, "cpu".to_string())]);
    assert!(Cluster::from_inventories(&[too_many, good]).is_err());
}

/// A job spec's text is bounded as a whole and by part, and names refuse control characters.
#[test]
fn job_specs_are_bounded_and_printable() {
    use suanli_engine::job::{JobKind, JobSpec, MAX_COMMAND_BYTES, MAX_ENV_BYTES, MAX_SPEC_BYTES};

    let mut spec = JobSpec::new("train", JobKind::Training);
    spec.command = vec!["x".repeat(MAX_COMMAND_BYTES)];
    spec.validate().expect("at the cap");
    spec.command.push("y".into());
    assert_eq!(
        spec.validate().expect_err("past the cap").to_string(),
        format!(
            "command: is {} bytes; at most {MAX_COMMAND_BYTES}",
            MAX_COMMAND_BYTES + 1
        )
    );
    let mut spec = JobSpec::new("train", JobKind::Training);
    spec.env.insert("BIG".into(), "v".repeat(MAX_ENV_BYTES));
    assert!(
        spec.validate()
            .expect_err("env")
            .to_string()
            .starts_with("env: is ")
    );
    let mut spec = JobSpec::new("train", JobKind::Training);
    spec.command = vec!["x".repeat(MAX_COMMAND_BYTES)];
    spec.env.insert("E".into(), "v".repeat(MAX_ENV_BYTES - 1));
    spec.volumes.push(suanli_engine::job::VolumeMount {
        name: "data".into(),
        path: format!("/{}", "p".repeat(4000)),
        read_only: true,
    });
    assert!(spec.text_bytes() > MAX_SPEC_BYTES);
    assert_eq!(
        spec.validate().expect_err("whole spec").to_string(),
        format!(
            "the job's text is {} bytes; at most {MAX_SPEC_BYTES}",
            spec.text_bytes()
        )
    );

    let mut spec = JobSpec::new("evil\u{1b}[2Jname", JobKind::Training);
    assert_eq!(
        spec.validate().expect_err("ESC").to_string(),
        "name: has control character '\\u{1b}' at position 4; only printable text is allowed"
    );
    spec.name = "ok".into();
    spec.queue = "q\r".into();
    assert!(
        spec.validate()
            .expect_err("CR")
            .to_string()
            .starts_with("queue: ")
    );
    spec.queue = "default".into();
    spec.command = vec!["sh".into(), "-c".into(), "echo a\necho b".into()];
    spec.validate()
        .expect("newlines in a command are a script, not a name");
    spec.command = vec!["a\0b".into()];
    assert_eq!(
        spec.validate().expect_err("NUL").to_string(),
        "command[0]: an argument cannot contain NUL"
    );
}
