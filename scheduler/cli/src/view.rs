//! What `-o json|yaml` prints: our own serde structs built from the wire messages, so the
//! output keeps its shape when the protos grow. Job specs print in the job-file format.

use serde::{Deserialize, Serialize};
use suanli_engine::{JobSpec, NodeInventory};
use suanli_proto::pb;

use crate::error::CliError;

/// `JOB_STATE_RUNNING` → `running`, from a generated enum's protobuf name.
fn short_name(full: &str, prefix: &str) -> String {
    full.strip_prefix(prefix)
        .unwrap_or(full)
        .to_ascii_lowercase()
}

pub fn state_name(raw: i32) -> String {
    pb::JobState::try_from(raw).map_or_else(
        |_| format!("unknown({raw})"),
        |s| short_name(s.as_str_name(), "JOB_STATE_"),
    )
}

fn health_name(raw: i32) -> String {
    match pb::Health::try_from(raw) {
        // Unreported health reads as healthy (types.proto).
        Ok(pb::Health::Unspecified) => "healthy".to_string(),
        Ok(h) => short_name(h.as_str_name(), "HEALTH_"),
        Err(_) => format!("unknown({raw})"),
    }
}

fn port_state_name(raw: i32) -> String {
    match pb::PortState::try_from(raw) {
        Ok(pb::PortState::Unspecified) => "unknown".to_string(),
        Ok(s) => short_name(s.as_str_name(), "PORT_STATE_"),
        Err(_) => format!("unknown({raw})"),
    }
}

fn condition_name(raw: i32) -> String {
    pb::NodeCondition::try_from(raw).map_or_else(
        |_| format!("unknown({raw})"),
        |c| short_name(c.as_str_name(), "NODE_CONDITION_"),
    )
}

fn device_kind_name(raw: i32) -> String {
    pb::DeviceKind::try_from(raw).map_or_else(
        |_| format!("unknown({raw})"),
        |k| short_name(k.as_str_name(), "DEVICE_KIND_"),
    )
}

fn nonzero(ms: i64) -> Option<i64> {
    (ms != 0).then_some(ms)
}

fn nonempty(text: &str) -> Option<String> {
    (!text.is_empty()).then(|| text.to_string())
}

fn bad_reply(what: &str, e: impl std::fmt::Display) -> CliError {
    CliError::Failed(format!(
        "the scheduler sent {what} this client cannot read: {e}"
    ))
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JobView {
    pub id: String,
    pub name: String,
    pub state: String,
    pub spec: JobSpec,
    pub created_unix_ms: i64,
    pub updated_unix_ms: i64,
    pub started_unix_ms: Option<i64>,
    pub finished_unix_ms: Option<i64>,
    pub attempts: u32,
    pub placement: Option<PlacementView>,
    pub last_reason: String,
}

impl JobView {
    pub fn from_wire(job: pb::Job) -> Result<JobView, CliError> {
        let wire = job
            .spec
            .ok_or_else(|| bad_reply(&format!("job {}", job.id), "no spec"))?;
        let spec = JobSpec::try_from(wire).map_err(|e| bad_reply(&format!("job {}", job.id), e))?;
        Ok(JobView {
            name: spec.name.clone(),
            state: state_name(job.state),
            spec,
            created_unix_ms: job.created_unix_ms,
            updated_unix_ms: job.updated_unix_ms,
            started_unix_ms: nonzero(job.started_unix_ms),
            finished_unix_ms: nonzero(job.finished_unix_ms),
            attempts: job.attempts,
            placement: job.placement.map(PlacementView::from),
            last_reason: job.last_reason,
            id: job.id,
        })
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ScoreView {
    pub name: String,
    pub value: f64,
    pub detail: String,
}

impl From<pb::ScoreComponent> for ScoreView {
    fn from(s: pb::ScoreComponent) -> Self {
        ScoreView {
            name: s.name,
            value: s.value,
            detail: s.detail,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GrantView {
    pub uuid: String,
    pub device_cid: String,
    pub milli: u32,
    pub memory_mib: u64,
    pub mig_profile: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ReplicaView {
    pub replica: u32,
    pub node_cid: String,
    pub gpus: Vec<GrantView>,
    pub score: Vec<ScoreView>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PlacementView {
    pub policy: String,
    pub placed_unix_ms: i64,
    pub replicas: Vec<ReplicaView>,
    pub score: Vec<ScoreView>,
    /// `namespace/name (uid)` of the Kubernetes pod the GPUs are held for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kubernetes_pod: Option<String>,
}

impl From<pb::Placement> for PlacementView {
    fn from(p: pb::Placement) -> Self {
        PlacementView {
            policy: p.policy,
            placed_unix_ms: p.placed_unix_ms,
            replicas: p
                .replicas
                .into_iter()
                .map(|r| ReplicaView {
                    replica: r.replica,
                    node_cid: r.node_cid,
                    gpus: r
                        .gpus
                        .into_iter()
                        .map(|g| GrantView {
                            mig_profile: nonempty(&g.mig_profile),
                            uuid: g.uuid,
                            device_cid: g.device_cid,
                            milli: g.milli,
                            memory_mib: g.memory_mib,
                        })
                        .collect(),
                    score: r.score.into_iter().map(ScoreView::from).collect(),
                })
                .collect(),
            score: p.score.into_iter().map(ScoreView::from).collect(),
            kubernetes_pod: p
                .kubernetes_pod
                .map(|k| format!("{}/{} (uid {})", k.namespace, k.name, k.uid)),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EventView {
    pub seq: u64,
    pub job_id: String,
    pub unix_ms: i64,
    /// `None` for the submission.
    pub from_state: Option<String>,
    pub to_state: String,
    pub reason: String,
    pub message: String,
}

impl From<pb::JobEvent> for EventView {
    fn from(e: pb::JobEvent) -> Self {
        EventView {
            seq: e.seq,
            from_state: (e.from_state != pb::JobState::Unspecified as i32)
                .then(|| state_name(e.from_state)),
            to_state: state_name(e.to_state),
            job_id: e.job_id,
            unix_ms: e.unix_ms,
            reason: e.reason,
            message: e.message,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JobList {
    pub items: Vec<JobView>,
    /// Jobs matching the filters across all pages.
    pub total: u64,
    /// Empty when there is nothing more.
    pub next_page_token: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReasonView {
    pub reason: String,
    pub node_count: u32,
    pub message: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PendingView {
    pub nodes_considered: u32,
    pub reasons: Vec<ReasonView>,
    pub queue_reason: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ExplainView {
    pub id: String,
    pub state: String,
    pub summary: String,
    /// Why a pending job waits.
    pub pending: Option<PendingView>,
    /// Why a placed job sits where it does.
    pub placed: Option<PlacementView>,
}

impl From<pb::ExplainJobResponse> for ExplainView {
    fn from(e: pb::ExplainJobResponse) -> Self {
        use pb::explain_job_response::Explanation;
        let (pending, placed) = match e.explanation {
            Some(Explanation::Pending(p)) => (
                Some(PendingView {
                    nodes_considered: p.nodes_considered,
                    reasons: p
                        .reasons
                        .into_iter()
                        .map(|r| ReasonView {
                            reason: r.reason,
                            node_count: r.node_count,
                            message: r.message,
                        })
                        .collect(),
                    queue_reason: nonempty(&p.queue_reason),
                }),
                None,
            ),
            Some(Explanation::Placed(p)) => (None, p.placement.map(PlacementView::from)),
            None => (None, None),
        };
        ExplainView {
            id: e.id,
            state: state_name(e.state),
            summary: e.summary,
            pending,
            placed,
        }
    }
}

/// `suanli describe job -o json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DescribeView {
    pub job: JobView,
    pub events: Vec<EventView>,
    pub explanation: ExplainView,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FabricView {
    pub leaf: String,
    pub spine: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ResourcesView {
    pub cpu_milli: u64,
    pub memory_mib: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GpuUsageView {
    pub index: u32,
    pub uuid: String,
    pub cid: String,
    pub model: String,
    pub memory_mib: u64,
    pub allocated_milli: u32,
    pub allocated_memory_mib: u64,
    pub job_ids: Vec<String>,
    pub free_mig_profiles: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NodeView {
    pub cid: String,
    /// `ready`, `not_ready`, `unknown` or `invalid`.
    pub condition: String,
    /// Why the node is `invalid` (quarantined, never placed on).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub invalid_reason: Option<String>,
    pub cordoned: bool,
    pub draining: bool,
    pub cordon_reason: Option<String>,
    pub last_heartbeat_unix_ms: Option<i64>,
    pub fabric: FabricView,
    pub capacity: ResourcesView,
    pub allocated: ResourcesView,
    pub gpu_count: u32,
    pub free_gpus: u32,
    pub gpus: Vec<GpuUsageView>,
    pub job_ids: Vec<String>,
    /// Everything the agent reported, in the engine's inventory format.
    pub inventory: NodeInventory,
}

impl NodeView {
    pub fn from_wire(status: pb::NodeStatus) -> Result<NodeView, CliError> {
        let inventory = suanli_proto::convert::required_inventory(status.inventory)
            .map_err(|e| bad_reply("a node", e))?;
        let gpus = inventory
            .gpus
            .iter()
            .map(|info| {
                let usage = status.gpus.iter().find(|u| u.uuid == info.uuid);
                GpuUsageView {
                    index: info.index,
                    uuid: info.uuid.clone(),
                    cid: usage.map_or_else(
                        || inventory.gpu_cid(info.index).to_string(),
                        |u| u.cid.clone(),
                    ),
                    model: info.model.to_string(),
                    memory_mib: info.memory_mib,
                    allocated_milli: usage.map_or(0, |u| u.allocated_milli),
                    allocated_memory_mib: usage.map_or(0, |u| u.allocated_memory_mib),
                    job_ids: usage.map(|u| u.job_ids.clone()).unwrap_or_default(),
                    free_mig_profiles: usage
                        .map(|u| u.free_mig_profiles.clone())
                        .unwrap_or_default(),
                }
            })
            .collect();
        let allocated = status.allocated.unwrap_or_default();
        Ok(NodeView {
            cid: inventory.cid.to_string(),
            condition: condition_name(status.condition),
            invalid_reason: nonempty(&status.invalid_reason),
            cordoned: status.cordoned,
            draining: status.draining,
            cordon_reason: nonempty(&status.cordon_reason),
            last_heartbeat_unix_ms: nonzero(status.last_heartbeat_unix_ms),
            fabric: FabricView {
                leaf: inventory.fabric.leaf.clone(),
                spine: inventory.fabric.spine.clone(),
            },
            capacity: ResourcesView {
                cpu_milli: inventory.cpu_milli,
                memory_mib: inventory.memory_mib,
            },
            allocated: ResourcesView {
                cpu_milli: allocated.cpu_milli,
                memory_mib: allocated.memory_mib,
            },
            gpu_count: u32::try_from(inventory.gpus.len()).unwrap_or(u32::MAX),
            free_gpus: status.free_gpus,
            gpus,
            job_ids: status.job_ids,
            inventory,
        })
    }

    /// Distinct GPU models, in index order.
    pub fn models(&self) -> Vec<String> {
        let mut models: Vec<String> = Vec::new();
        for g in &self.gpus {
            if !models.contains(&g.model) {
                models.push(g.model.clone());
            }
        }
        models
    }

    /// Thousandths of GPU compute granted, over all GPUs.
    pub fn allocated_milli(&self) -> u64 {
        self.gpus.iter().map(|g| u64::from(g.allocated_milli)).sum()
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NodeList {
    pub items: Vec<NodeView>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DeviceView {
    pub cid: String,
    /// `gpu`, `mig` or `nic`.
    pub kind: String,
    /// GPU or MIG UUID, or NIC name.
    pub id: String,
    pub model: Option<String>,
    pub memory_mib: u64,
    pub free_memory_mib: u64,
    pub free_milli: u32,
    pub mig_profile: Option<String>,
    pub rate_gbps: Option<f64>,
    pub health: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ResolvedNodeView {
    pub cid: String,
    pub fabric: FabricView,
    pub free_gpus: u32,
    pub devices: Vec<DeviceView>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ResolveView {
    pub nodes: Vec<ResolvedNodeView>,
    /// Matching nodes across all pages.
    pub total: u64,
}

impl From<pb::ResolveResponse> for ResolveView {
    fn from(r: pb::ResolveResponse) -> Self {
        ResolveView {
            total: r.page.map_or(r.nodes.len() as u64, |p| p.total_size),
            nodes: r
                .nodes
                .into_iter()
                .map(|n| {
                    let fabric = n.fabric.unwrap_or_default();
                    ResolvedNodeView {
                        cid: n.cid,
                        fabric: FabricView {
                            leaf: fabric.leaf,
                            spine: fabric.spine,
                        },
                        free_gpus: n.free_gpus,
                        devices: n
                            .devices
                            .into_iter()
                            .map(|d| DeviceView {
                                kind: device_kind_name(d.kind),
                                health: health_name(d.health),
                                model: nonempty(&d.model),
                                mig_profile: nonempty(&d.mig_profile),
                                rate_gbps: (d.kind == pb::DeviceKind::Nic as i32)
                                    .then_some(d.rate_gbps),
                                cid: d.cid,
                                id: d.id,
                                memory_mib: d.memory_mib,
                                free_memory_mib: d.free_memory_mib,
                                free_milli: d.free_milli,
                            })
                            .collect(),
                    }
                })
                .collect(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NvLinkView {
    pub link: u32,
    pub active: bool,
    pub tx_bytes: u64,
    pub rx_bytes: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProcessView {
    pub pid: u32,
    pub used_memory_mib: u64,
    pub job_id: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GpuTelemetryView {
    pub index: u32,
    pub uuid: String,
    pub utilization_percent: u32,
    pub memory_utilization_percent: u32,
    pub memory_used_mib: u64,
    pub power_mw: u32,
    pub temperature_c: i32,
    pub health: String,
    pub nvlinks: Vec<NvLinkView>,
    pub processes: Vec<ProcessView>,
}

impl GpuTelemetryView {
    /// Bytes sent and received over all NVLinks: cumulative counters.
    pub fn nvlink_bytes(&self) -> (u64, u64) {
        self.nvlinks.iter().fold((0, 0), |(tx, rx), l| {
            (tx.saturating_add(l.tx_bytes), rx.saturating_add(l.rx_bytes))
        })
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NicPortView {
    pub nic: String,
    pub port: u32,
    pub state: String,
    pub rate_gbps: f64,
    pub tx_bytes: u64,
    pub rx_bytes: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NodeTelemetryView {
    pub node_cid: String,
    pub received_unix_ms: i64,
    pub sampled_unix_ms: i64,
    pub gpus: Vec<GpuTelemetryView>,
    pub nic_ports: Vec<NicPortView>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TelemetryView {
    pub nodes: Vec<NodeTelemetryView>,
}

impl From<pb::TelemetryResponse> for TelemetryView {
    fn from(r: pb::TelemetryResponse) -> Self {
        TelemetryView {
            nodes: r
                .nodes
                .into_iter()
                .map(|n| {
                    let t = n.telemetry.unwrap_or_default();
                    NodeTelemetryView {
                        node_cid: n.node_cid,
                        received_unix_ms: n.received_unix_ms,
                        sampled_unix_ms: t.sampled_unix_ms,
                        gpus: t
                            .gpus
                            .into_iter()
                            .map(|g| GpuTelemetryView {
                                index: g.index,
                                health: health_name(g.health),
                                uuid: g.uuid,
                                utilization_percent: g.utilization_percent,
                                memory_utilization_percent: g.memory_utilization_percent,
                                memory_used_mib: g.memory_used_mib,
                                power_mw: g.power_mw,
                                temperature_c: g.temperature_c,
                                nvlinks: g
                                    .nvlinks
                                    .into_iter()
                                    .map(|l| NvLinkView {
                                        link: l.link,
                                        active: l.active,
                                        tx_bytes: l.tx_bytes,
                                        rx_bytes: l.rx_bytes,
                                    })
                                    .collect(),
                                processes: g
                                    .processes
                                    .into_iter()
                                    .map(|p| ProcessView {
                                        pid: p.pid,
                                        used_memory_mib: p.used_memory_mib,
                                        job_id: nonempty(&p.job_id),
                                    })
                                    .collect(),
                            })
                            .collect(),
                        nic_ports: t
                            .nic_ports
                            .into_iter()
                            .map(|p| NicPortView {
                                state: port_state_name(p.state),
                                nic: p.nic,
                                port: p.port,
                                rate_gbps: p.rate_gbps,
                                tx_bytes: p.tx_bytes,
                                rx_bytes: p.rx_bytes,
                            })
                            .collect(),
                    }
                })
                .collect(),
        }
    }
}
