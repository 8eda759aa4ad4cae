//! Every table and text the CLI prints, from fixed wire messages, as insta snapshots.

use suanli_engine::inventory::{NvmlStatus, PortState};
use suanli_engine::job::{GpuPolicy, GpuRequest, JobKind};
use suanli_engine::testing::H100Node;
use suanli_engine::{GpuModel, JobSpec, NodeInventory};
use suanli_proto::pb;

use super::*;
use crate::view::{
    DescribeView, EventView, ExplainView, JobView, NodeView, ResolveView, TelemetryView,
};

/// 2024-11-27T04:55:01Z.
const T0: i64 = 1_732_683_301_000;

fn spec(name: &str, kind: JobKind, replicas: u32, policy: GpuPolicy) -> JobSpec {
    let mut s = JobSpec::new(name, kind);
    s.replicas = replicas;
    s.gpu = Some(GpuRequest {
        policy,
        models: vec!["H100".parse::<GpuModel>().expect("valid model")],
    });
    s.resources.cpu_milli = 8000;
    s.resources.memory_mib = 65_536;
    s.command = vec!["python".into(), "train.py".into()];
    s
}

fn grant(node: &str, gpu: u32, milli: u32, memory_mib: u64) -> pb::GpuGrant {
    pb::GpuGrant {
        uuid: format!("GPU-{node}-{gpu}"),
        device_cid: format!("cid:acme/cn-east-1/dc-a/{node}/gpu-{gpu}"),
        milli,
        memory_mib,
        mig_profile: String::new(),
    }
}

fn score() -> Vec<pb::ScoreComponent> {
    vec![
        pb::ScoreComponent {
            name: "points".into(),
            value: 87.0,
            detail: "fgd points, higher is better".into(),
        },
        pb::ScoreComponent {
            name: "link_rank".into(),
            value: 1.0,
            detail: "worst GPU-to-GPU link among the chosen GPUs; lower is closer".into(),
        },
    ]
}

fn running_training_job() -> pb::Job {
    pb::Job {
        id: "j-00000001".into(),
        spec: Some(
            spec(
                "train-llama",
                JobKind::Training,
                2,
                GpuPolicy::Exclusive { count: 2 },
            )
            .into(),
        ),
        state: pb::JobState::Running as i32,
        created_unix_ms: T0 - 300_000,
        updated_unix_ms: T0 - 200_000,
        started_unix_ms: T0 - 200_000,
        finished_unix_ms: 0,
        attempts: 1,
        placement: Some(pb::Placement {
            replicas: vec![
                pb::ReplicaPlacement {
                    replica: 0,
                    node_cid: "cid:acme/cn-east-1/dc-a/node-1".into(),
                    gpus: vec![
                        grant("node-1", 0, 1000, 81_559),
                        grant("node-1", 1, 1000, 81_559),
                    ],
                    score: score(),
                },
                pb::ReplicaPlacement {
                    replica: 1,
                    node_cid: "cid:acme/cn-east-1/dc-a/node-2".into(),
                    gpus: vec![
                        grant("node-2", 0, 1000, 81_559),
                        grant("node-2", 1, 1000, 81_559),
                    ],
                    score: score(),
                },
            ],
            score: vec![],
            policy: "fgd".into(),
            placed_unix_ms: T0 - 250_000,
            kubernetes_pod: None,
        }),
        last_reason: "every replica is running".into(),
    }
}

fn pending_notebook_job() -> pb::Job {
    pb::Job {
        id: "j-00000002".into(),
        spec: Some(
            spec(
                "notebook",
                JobKind::Inference,
                1,
                GpuPolicy::Shared {
                    milli: Some(250),
                    memory_mib: Some(10_240),
                },
            )
            .into(),
        ),
        state: pb::JobState::Pending as i32,
        created_unix_ms: T0 - 42_000,
        updated_unix_ms: T0 - 42_000,
        started_unix_ms: 0,
        finished_unix_ms: 0,
        attempts: 0,
        placement: None,
        last_reason: "3 nodes: no GPU with 250m and 10Gi free".into(),
    }
}

fn jobs() -> Vec<JobView> {
    vec![
        JobView::from_wire(running_training_job()).expect("valid"),
        JobView::from_wire(pending_notebook_job()).expect("valid"),
    ]
}

fn inventory(node: &str, gpus: u32, nics: bool) -> NodeInventory {
    let mut builder = H100Node::new(node, gpus).fabric("leaf-1", "spine-1");
    if nics {
        builder = builder.nic("mlx5_0", PortState::Active);
    }
    let mut inv = builder.build();
    // What a real HGX host reports beyond the builder's plain node.
    inv.cpu_milli = 224_000;
    inv.memory_mib = 2_097_152;
    inv.numa_nodes = 2;
    inv.nvml = NvmlStatus::Available {
        driver_version: "580.159.04".into(),
        cuda_version: "13.0".into(),
        nvml_version: "13.580.159.04".into(),
    };
    for nic in &mut inv.nics {
        nic.numa_node = Some(0);
        nic.node_guid = "b8ce:f603:00a1:0000".into();
        nic.firmware = "28.39.1002".into();
        nic.netdevs = vec!["ibp26s0".into()];
    }
    inv.gpu_nic_pairs.clear();
    inv
}

fn node(name: &str, gpus: u32, used: &[(u32, u32, &str)], cordoned: bool) -> NodeView {
    let inv = inventory(name, gpus, gpus > 1);
    let usage: Vec<pb::GpuUsage> = (0..gpus)
        .map(|i| {
            let held: Vec<&(u32, u32, &str)> = used.iter().filter(|u| u.0 == i).collect();
            pb::GpuUsage {
                uuid: format!("GPU-{name}-{i}"),
                cid: format!("cid:acme/cn-east-1/dc-a/{name}/gpu-{i}"),
                allocated_milli: held.iter().map(|u| u.1).sum(),
                allocated_memory_mib: held.iter().map(|u| u64::from(u.1) * 80).sum(),
                job_ids: held.iter().map(|u| u.2.to_string()).collect(),
                free_mig_profiles: vec![],
            }
        })
        .collect();
    let mut job_ids: Vec<String> = used.iter().map(|u| u.2.to_string()).collect();
    job_ids.sort();
    job_ids.dedup();
    NodeView::from_wire(pb::NodeStatus {
        inventory: Some(inv.into()),
        condition: pb::NodeCondition::Ready as i32,
        cordoned,
        draining: false,
        cordon_reason: String::new(),
        last_heartbeat_unix_ms: T0 - 1_000,
        allocated: Some(pb::Resources {
            cpu_milli: 8_000 * used.len() as u64,
            memory_mib: 65_536 * used.len() as u64,
        }),
        free_gpus: usage.iter().filter(|u| u.allocated_milli == 0).count() as u32,
        gpus: usage,
        job_ids,
        invalid_reason: String::new(),
    })
    .expect("valid node")
}

fn nodes() -> Vec<NodeView> {
    vec![
        node(
            "node-1",
            8,
            &[
                (0, 1000, "j-00000001"),
                (1, 1000, "j-00000001"),
                (2, 250, "j-00000003"),
            ],
            false,
        ),
        node(
            "node-2",
            8,
            &[(0, 1000, "j-00000001"), (1, 1000, "j-00000001")],
            true,
        ),
        node("host-1", 1, &[], false),
    ]
}

fn events() -> Vec<EventView> {
    let event =
        |seq: u64, at: i64, from: pb::JobState, to: pb::JobState, reason: &str, message: &str| {
            EventView::from(pb::JobEvent {
                job_id: "j-00000001".into(),
                seq,
                unix_ms: at,
                from_state: from as i32,
                to_state: to as i32,
                reason: reason.into(),
                message: message.into(),
            })
        };
    vec![
        event(
            1,
            T0 - 300_000,
            pb::JobState::Unspecified,
            pb::JobState::Pending,
            "submitted",
            "submitted by tenant default",
        ),
        event(
            4,
            T0 - 250_000,
            pb::JobState::Pending,
            pb::JobState::Placed,
            "placed",
            "2 replica(s) on node-1, node-2",
        ),
        event(
            9,
            T0 - 200_000,
            pb::JobState::Placed,
            pb::JobState::Running,
            "started",
            "every replica is running",
        ),
    ]
}

#[test]
fn jobs_table_snapshot() {
    insta::assert_snapshot!(jobs_table(&jobs(), false, T0));
}

#[test]
fn jobs_wide_table_snapshot() {
    insta::assert_snapshot!(jobs_table(&jobs(), true, T0));
}

#[test]
fn describe_placed_job_snapshot() {
    let job = JobView::from_wire(running_training_job()).expect("valid");
    let explanation = ExplainView::from(pb::ExplainJobResponse {
        id: job.id.clone(),
        state: pb::JobState::Running as i32,
        summary:
            "placed by policy fgd on cid:acme/cn-east-1/dc-a/node-1, cid:acme/cn-east-1/dc-a/node-2"
                .into(),
        explanation: Some(pb::explain_job_response::Explanation::Placed(
            pb::PlacedExplanation {
                placement: running_training_job().placement,
            },
        )),
    });
    let view = DescribeView {
        job,
        events: events(),
        explanation,
    };
    insta::assert_snapshot!(describe_text(&view, T0));
}

#[test]
fn describe_names_the_pod_a_placement_holds_gpus_for() {
    let mut wire = running_training_job();
    if let Some(p) = wire.placement.as_mut() {
        p.policy = "kubernetes".into();
        p.kubernetes_pod = Some(pb::KubernetesPod {
            namespace: "ml".into(),
            name: "train-a".into(),
            uid: "uid-a".into(),
        });
    }
    let job = JobView::from_wire(wire).expect("valid");
    let view = DescribeView {
        job,
        events: events(),
        explanation: ExplainView::from(pb::ExplainJobResponse::default()),
    };
    let text = describe_text(&view, T0);
    assert!(
        text.lines()
            .any(|l| l == "Pod:          ml/train-a (uid uid-a), run by kubelet"),
        "{text}"
    );
}

#[test]
fn describe_pending_job_snapshot() {
    let job = JobView::from_wire(pending_notebook_job()).expect("valid");
    let explanation = ExplainView::from(pb::ExplainJobResponse {
        id: job.id.clone(),
        state: pb::JobState::Pending as i32,
        summary: "2 nodes: no GPU with 250m and 10Gi free; 1 node: cordoned".into(),
        explanation: Some(pb::explain_job_response::Explanation::Pending(
            pb::PendingExplanation {
                nodes_considered: 3,
                reasons: vec![
                    pb::ReasonCount {
                        reason: "no_shareable_gpu".into(),
                        node_count: 2,
                        message: "no GPU with 250m and 10Gi free".into(),
                    },
                    pb::ReasonCount {
                        reason: "cordoned".into(),
                        node_count: 1,
                        message: "node is cordoned".into(),
                    },
                ],
                queue_reason: String::new(),
            },
        )),
    });
    let view = DescribeView {
        job,
        events: vec![],
        explanation,
    };
    insta::assert_snapshot!(describe_text(&view, T0));
}

#[test]
fn nodes_table_snapshot() {
    insta::assert_snapshot!(nodes_table(&nodes(), false));
}

#[test]
fn nodes_wide_table_snapshot() {
    insta::assert_snapshot!(nodes_table(&nodes(), true));
}

#[test]
fn node_detail_snapshot() {
    insta::assert_snapshot!(node_detail(&nodes()[0], T0));
}

#[test]
fn utilization_bars_snapshot() {
    insta::assert_snapshot!(utilization_bars(&nodes()));
}

#[test]
fn event_lines_snapshot() {
    let text: String = events()
        .iter()
        .map(|e| event_line(e, Some("train-llama")))
        .collect();
    insta::assert_snapshot!(text);
}

fn resolved() -> ResolveView {
    ResolveView::from(pb::ResolveResponse {
        nodes: vec![pb::ResolvedNode {
            cid: "cid:acme/cn-east-1/dc-a/node-1".into(),
            fabric: Some(pb::FabricPosition {
                leaf: "leaf-1".into(),
                spine: "spine-1".into(),
            }),
            free_gpus: 5,
            devices: vec![
                pb::ResolvedDevice {
                    cid: "cid:acme/cn-east-1/dc-a/node-1/gpu-3".into(),
                    kind: pb::DeviceKind::Gpu as i32,
                    id: "GPU-node-1-3".into(),
                    model: "H100".into(),
                    memory_mib: 81_559,
                    free_memory_mib: 81_559,
                    free_milli: 1000,
                    mig_profile: String::new(),
                    rate_gbps: 0.0,
                    health: pb::Health::Healthy as i32,
                },
                pb::ResolvedDevice {
                    cid: "cid:acme/cn-east-1/dc-a/node-1/gpu-4/mig-1g.10gb-0".into(),
                    kind: pb::DeviceKind::Mig as i32,
                    id: "MIG-1".into(),
                    model: "H100".into(),
                    memory_mib: 9_984,
                    free_memory_mib: 9_984,
                    free_milli: 142,
                    mig_profile: "1g.10gb".into(),
                    rate_gbps: 0.0,
                    health: pb::Health::Unspecified as i32,
                },
                pb::ResolvedDevice {
                    cid: "cid:acme/cn-east-1/dc-a/node-1/nic-mlx5_0".into(),
                    kind: pb::DeviceKind::Nic as i32,
                    id: "mlx5_0".into(),
                    model: String::new(),
                    memory_mib: 0,
                    free_memory_mib: 0,
                    free_milli: 0,
                    mig_profile: String::new(),
                    rate_gbps: 400.0,
                    health: pb::Health::Healthy as i32,
                },
            ],
        }],
        page: Some(pb::PageInfo {
            next_page_token: String::new(),
            total_size: 1,
        }),
    })
}

#[test]
fn resolve_table_snapshot() {
    insta::assert_snapshot!(resolve_table(&resolved(), false));
}

#[test]
fn resolve_wide_table_snapshot() {
    insta::assert_snapshot!(resolve_table(&resolved(), true));
}

fn telemetry(sampled: i64, nvlink_bytes: u64, nic_bytes: u64) -> TelemetryView {
    TelemetryView::from(pb::TelemetryResponse {
        nodes: vec![pb::NodeTelemetry {
            node_cid: "cid:acme/cn-east-1/dc-a/node-1".into(),
            telemetry: Some(pb::Telemetry {
                node_cid: "cid:acme/cn-east-1/dc-a/node-1".into(),
                sampled_unix_ms: sampled,
                gpus: (0..2)
                    .map(|i| pb::GpuTelemetry {
                        uuid: format!("GPU-node-1-{i}"),
                        index: i,
                        utilization_percent: 40 + 50 * i,
                        memory_utilization_percent: 30,
                        memory_used_mib: 24_576,
                        power_mw: 450_000,
                        temperature_c: 61,
                        health: pb::Health::Healthy as i32,
                        events: vec![],
                        nvlinks: (0..2)
                            .map(|l| pb::NvLinkCounters {
                                link: l,
                                active: true,
                                tx_bytes: nvlink_bytes,
                                rx_bytes: nvlink_bytes / 2,
                            })
                            .collect(),
                        processes: vec![pb::GpuProcess {
                            pid: 4242,
                            used_memory_mib: 24_000,
                            job_id: "j-00000001".into(),
                        }],
                    })
                    .collect(),
                nic_ports: vec![pb::NicPortTelemetry {
                    nic: "mlx5_0".into(),
                    port: 1,
                    state: pb::PortState::Active as i32,
                    rate_gbps: 400.0,
                    tx_bytes: nic_bytes,
                    rx_bytes: nic_bytes * 2,
                }],
            }),
            received_unix_ms: sampled + 5,
        }],
    })
}

#[test]
fn top_once_shows_counters() {
    insta::assert_snapshot!(telemetry_table(
        &telemetry(T0, 50_000_000_000, 7_000_000_000),
        None,
        T0 + 3_000
    ));
}

#[test]
fn top_watch_shows_rates_between_samples() {
    let before = telemetry(T0, 50_000_000_000, 7_000_000_000);
    let after = telemetry(T0 + 2_000, 90_000_000_000, 9_000_000_000);
    insta::assert_snapshot!(telemetry_table(&after, Some(&before), T0 + 2_500));
}

#[test]
fn json_output_has_a_stable_shape() {
    let job = JobView::from_wire(running_training_job()).expect("valid");
    insta::assert_snapshot!(data(Format::Json, &job).expect("serializes"));
}

#[test]
fn yaml_output_is_the_same_data() {
    let job = JobView::from_wire(pending_notebook_job()).expect("valid");
    let yaml = data(Format::Yaml, &job).expect("serializes");
    let back: JobView = serde_yaml_ng::from_str(&yaml).expect("parses back");
    assert_eq!(back, job);
    insta::assert_snapshot!(yaml);
}

/// Text from users and the scheduler never reaches the terminal raw: ESC, CSI, CR and LF in
/// a name, a reason, a message or a command are printed escaped, in tables and in lines.
#[test]
fn control_characters_are_printed_escaped() {
    let mut job = JobView::from_wire(running_training_job()).expect("valid");
    job.name = "evil\u{1b}[2J\rname\nforged".into();
    job.last_reason = "red\u{9b}31m reason".into();
    job.spec.command = vec![
        "sh".into(),
        "-c".into(),
        "printf '\u{1b}]0;title\u{7}'".into(),
    ];
    let mut event = events()[0].clone();
    event.message = "line one\r\nline two".into();
    let mut text = jobs_table(std::slice::from_ref(&job), true, T0);
    text.push_str(&event_line(&event, Some(&job.name)));
    text.push_str(&describe_text(
        &DescribeView {
            job,
            events: vec![event],
            explanation: ExplainView::from(pb::ExplainJobResponse::default()),
        },
        T0,
    ));
    assert!(
        !text.chars().any(|c| c.is_control() && c != '\n'),
        "{text:?}"
    );
    insta::assert_snapshot!(text);
}

#[test]
fn printable_text_is_left_alone() {
    assert!(matches!(
        printable("train-llama 训练 ✓"),
        std::borrow::Cow::Borrowed("train-llama 训练 ✓")
    ));
    assert_eq!(
        printable("a\u{1b}b\r\n\t\u{7f}"),
        "a\\u{1b}b\\r\\n\\t\\u{7f}"
    );
}
