//! The gRPC boundary: `JobService`, `ClusterService` and `AgentService` over tonic.
//!
//! Handlers authenticate, convert wire messages to domain types (every invalid message
//! becomes `INVALID_ARGUMENT` naming the field), ask the core, and convert the answer back.
//! No scheduling logic lives here.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use suanli_engine::cid::quoted;
use suanli_engine::job::JobId;
use suanli_engine::{Cid, JobState};
use suanli_proto::convert::ConvertError;
use suanli_proto::pb;
use tonic::Status;
use tonic::codegen::http;
use tracing::warn;

use crate::auth::{Authenticator, Identity};
use crate::core::{CoreError, CoreHandle, Explanation, NodeView};
use crate::placement::StoredPlacement;
use crate::store::{EventRecord, JobRecord, Store, StoreError};

mod agents;
mod cluster;
mod jobs;
pub mod logs;

/// How a core refusal reads on the wire.
impl From<CoreError> for tonic::Status {
    fn from(e: CoreError) -> Self {
        let message = e.to_string();
        match e {
            CoreError::JobNotFound(_)
            | CoreError::NodeNotFound(_)
            | CoreError::NodeNotRegistered(_)
            | CoreError::UnknownSession { .. }
            | CoreError::NoPlacement(_)
            | CoreError::NotAPodJob(_) => tonic::Status::not_found(message),
            CoreError::NodeHeld(_) | CoreError::SessionAlreadyOpen { .. } => {
                tonic::Status::already_exists(message)
            }
            CoreError::CredentialRequired(_) => tonic::Status::permission_denied(message),
            CoreError::InvalidInventory(_) | CoreError::InvalidArgument(_) => {
                tonic::Status::invalid_argument(message)
            }
            CoreError::JobEnded { .. }
            | CoreError::NodeNameTaken { .. }
            | CoreError::PodRefused { .. }
            | CoreError::FailedPrecondition(_) => tonic::Status::failed_precondition(message),
            CoreError::Store(StoreError::JobNotFound(id)) => {
                tonic::Status::not_found(format!("job {id} not found"))
            }
            CoreError::Store(e) => {
                warn!(error = %e, "Store failure.");
                tonic::Status::internal(format!("store: {e}"))
            }
            CoreError::Stopped => tonic::Status::unavailable("the scheduler is shutting down"),
        }
    }
}

const DEFAULT_PAGE: usize = 100;
const MAX_PAGE: usize = 1000;

/// Shared by the three services.
#[derive(Debug, Clone)]
pub struct Services {
    pub core: CoreHandle,
    pub auth: Authenticator,
    /// A second connection for reads, so listings never queue behind writes.
    pub reader: Arc<Mutex<Store>>,
    pub heartbeat_interval_ms: u32,
    pub telemetry_interval_ms: u32,
    /// The latest telemetry per node and when it arrived, for `suanli top`.
    pub telemetry: Arc<Mutex<HashMap<Cid, (pb::Telemetry, i64)>>>,
    /// Replica logs on their way from agents to callers.
    pub logs: Arc<logs::LogRelay>,
}

impl Services {
    async fn read<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Store) -> Result<T, crate::store::StoreError> + Send + 'static,
    ) -> Result<T, Status> {
        let reader = self.reader.clone();
        tokio::task::spawn_blocking(move || {
            let store = reader
                .lock()
                .map_err(|_| Status::internal("reader lock poisoned"))?;
            f(&store).map_err(|e| match e {
                crate::store::StoreError::JobNotFound(id) => {
                    Status::not_found(format!("job {id} not found"))
                }
                other => Status::internal(format!("store: {other}")),
            })
        })
        .await
        .map_err(|e| Status::internal(format!("read task failed: {e}")))?
    }

    /// A job the caller may see, or NOT_FOUND (never revealing another tenant's job).
    async fn visible_job(&self, id: &str, who: &Identity) -> Result<JobRecord, Status> {
        let id = parse_job_id(id)?;
        let record = self.read(move |s| s.job(&id)).await?;
        if who.tenant_scope().is_some_and(|t| t != record.spec.tenant) {
            return Err(Status::not_found(format!("job {} not found", record.id)));
        }
        Ok(record)
    }
}

fn parse_job_id(id: &str) -> Result<JobId, Status> {
    if id.is_empty() {
        return Err(Status::invalid_argument("id: must not be empty"));
    }
    if id.len() > 64 || !id.chars().all(|c| c.is_ascii_alphanumeric() || c == '-') {
        return Err(Status::invalid_argument(format!(
            "id: {} is not a job id",
            quoted(id)
        )));
    }
    Ok(JobId(id.to_string()))
}

fn parse_cid(field: &str, text: &str) -> Result<Cid, Status> {
    text.parse::<Cid>()
        .map_err(|e| Status::invalid_argument(format!("{field}: {e}")))
}

fn convert_err(e: ConvertError) -> Status {
    Status::invalid_argument(bounded_message(e.to_string()))
}

/// Longest error message a status carries. Messages quote what the caller sent; a status
/// travels in HTTP/2 headers, where a long one would turn the answer into a protocol error.
pub const MAX_STATUS_MESSAGE: usize = 1024;

/// `message` cut to [`MAX_STATUS_MESSAGE`] bytes (at a character boundary), saying so.
pub fn bounded_message(message: String) -> String {
    if message.len() <= MAX_STATUS_MESSAGE {
        return message;
    }
    let mut end = MAX_STATUS_MESSAGE;
    while !message.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}… ({} bytes in all)", &message[..end], message.len())
}

/// Checks free text a user sends with a command (a reason): bounded, printable.
fn check_reason(field: &str, text: &str) -> Result<String, Status> {
    suanli_engine::validation::check_text(field, text, MAX_REASON_CHARS)
        .map_err(|e| Status::invalid_argument(bounded_message(e.to_string())))?;
    Ok(text.to_string())
}

/// Longest reason a user may give for a cancel, cordon or drain.
const MAX_REASON_CHARS: usize = 512;

/// Most bytes one page of a listing may encode to: under the 4 MiB a default gRPC client
/// accepts, whatever the jobs or nodes on it hold.
const MAX_PAGE_BYTES: usize = 2 * 1024 * 1024;

/// The first `limit` of `items` that together fit [`MAX_PAGE_BYTES`] (always at least one, so
/// a listing moves on), and whether any are left over.
fn fit_page<T: prost::Message>(items: Vec<T>, limit: usize) -> (Vec<T>, bool) {
    let available = items.len();
    let mut bytes = 0;
    let mut page = Vec::new();
    for item in items.into_iter().take(limit) {
        // Each entry also costs its tag and length prefix.
        let size = item.encoded_len() + 8;
        if !page.is_empty() && bytes + size > MAX_PAGE_BYTES {
            break;
        }
        bytes += size;
        page.push(item);
    }
    let more = page.len() < available;
    (page, more)
}

fn page_size(page: Option<&pb::PageRequest>) -> usize {
    match page.map_or(0, |p| p.page_size as usize) {
        0 => DEFAULT_PAGE,
        n => n.min(MAX_PAGE),
    }
}

// ---- wire forms of server records ----------------------------------------------------------

pub fn job_to_wire(record: &JobRecord) -> pb::Job {
    let placement = record
        .placement
        .as_ref()
        .and_then(|json| serde_json::from_value::<StoredPlacement>(json.clone()).ok())
        .map(|p| placement_to_wire(&p));
    pb::Job {
        id: record.id.0.clone(),
        spec: Some(record.spec.clone().into()),
        state: pb::JobState::from(record.state) as i32,
        created_unix_ms: record.created_ms,
        updated_unix_ms: record.updated_ms,
        started_unix_ms: record.started_ms,
        finished_unix_ms: record.finished_ms,
        attempts: record.attempts,
        placement,
        last_reason: record.reason.clone(),
    }
}

/// Most pods one agent may report GPUs for (kubelet's own default is 110 pods per node).
const MAX_PODS_PER_NODE: usize = 1024;
/// Most GPUs one pod may be reported holding.
const MAX_GPUS_PER_POD: usize = 64;
/// Messages waiting for one agent to read them (heartbeat acks, assignments, cancels). An
/// agent reads them as they come; one that falls this far behind has stopped reading.
const SESSION_BUFFER: usize = 1024;
/// Longest session id a hello may present; ours are 66 characters.
const MAX_SESSION_ID_LEN: usize = 128;

pub fn placement_to_wire(p: &StoredPlacement) -> pb::Placement {
    pb::Placement {
        replicas: p
            .replicas
            .iter()
            .map(|r| pb::ReplicaPlacement {
                replica: r.replica,
                node_cid: r.node.to_string(),
                gpus: r
                    .gpus
                    .iter()
                    .map(|g| pb::GpuGrant {
                        uuid: g.uuid.clone(),
                        device_cid: g.device_cid.to_string(),
                        milli: g.milli,
                        memory_mib: g.memory_mib,
                        mig_profile: g.mig.as_ref().map(|m| m.0.clone()).unwrap_or_default(),
                    })
                    .collect(),
                score: r.score.iter().map(score_to_wire).collect(),
            })
            .collect(),
        score: p.score.iter().map(score_to_wire).collect(),
        policy: p.policy.clone(),
        placed_unix_ms: p.placed_ms,
        kubernetes_pod: p.pod.as_ref().map(|pod| pb::KubernetesPod {
            namespace: pod.namespace.clone(),
            name: pod.name.clone(),
            uid: pod.uid.clone(),
        }),
    }
}

fn score_to_wire(s: &crate::placement::ScoreItem) -> pb::ScoreComponent {
    pb::ScoreComponent {
        name: s.name.clone(),
        value: s.value,
        detail: s.detail.clone(),
    }
}

pub fn event_to_wire(e: &EventRecord) -> pb::JobEvent {
    pb::JobEvent {
        job_id: e.job_id.0.clone(),
        seq: u64::try_from(e.seq).unwrap_or(0),
        unix_ms: e.at_ms,
        from_state: e.from.map_or(pb::JobState::Unspecified, pb::JobState::from) as i32,
        to_state: pb::JobState::from(e.to) as i32,
        reason: e.reason.clone(),
        message: e.message.clone(),
    }
}

/// A node as `who` may see it: a tenant sees only its own jobs' ids on it.
pub fn node_to_wire(v: &NodeView, who: &Identity) -> pb::NodeStatus {
    let visible_jobs = |jobs: &[(JobId, String)]| -> Vec<String> {
        jobs.iter()
            .filter(|(_, tenant)| who.tenant_scope().is_none_or(|own| own == tenant))
            .map(|(id, _)| id.0.clone())
            .collect()
    };
    let mut job_ids: Vec<String> = v.gpus.iter().flat_map(|g| visible_jobs(&g.jobs)).collect();
    job_ids.sort();
    job_ids.dedup();
    let condition = if v.invalid.is_some() {
        pb::NodeCondition::Invalid
    } else if v.lost {
        pb::NodeCondition::NotReady
    } else if v.connected {
        pb::NodeCondition::Ready
    } else {
        pb::NodeCondition::Unknown
    };
    pb::NodeStatus {
        inventory: Some(v.inventory.clone().into()),
        condition: condition as i32,
        cordoned: v.cordoned,
        draining: v.draining,
        cordon_reason: v.cordon_reason.clone(),
        last_heartbeat_unix_ms: v.last_seen_ms,
        allocated: Some(pb::Resources {
            cpu_milli: v.cpu_used,
            memory_mib: v.memory_used,
        }),
        free_gpus: v
            .gpus
            .iter()
            .filter(|g| g.milli_used == 0 && g.memory_used == 0 && !g.exclusive)
            .count() as u32,
        gpus: v
            .gpus
            .iter()
            .map(|g| pb::GpuUsage {
                uuid: g.uuid.clone(),
                cid: v.inventory.gpu_cid(g.index).to_string(),
                allocated_milli: g.milli_used,
                allocated_memory_mib: g.memory_used,
                job_ids: visible_jobs(&g.jobs),
                free_mig_profiles: Vec::new(),
            })
            .collect(),
        job_ids,
        invalid_reason: v.invalid.clone().unwrap_or_default(),
    }
}

fn explanation_to_wire(id: &JobId, e: Explanation) -> pb::ExplainJobResponse {
    use pb::explain_job_response::Explanation as Which;
    let explanation = match (&e.placement, e.state) {
        (Some(p), _) => Some(Which::Placed(pb::PlacedExplanation {
            placement: Some(placement_to_wire(p)),
        })),
        (None, JobState::Pending | JobState::Preempted) => {
            Some(Which::Pending(pb::PendingExplanation {
                nodes_considered: e.nodes_considered,
                reasons: e
                    .reasons
                    .iter()
                    .map(|r| pb::ReasonCount {
                        reason: r.key.to_string(),
                        node_count: r.nodes,
                        message: r.message.clone(),
                    })
                    .collect(),
                queue_reason: e.queue_reason,
            }))
        }
        _ => None,
    };
    pb::ExplainJobResponse {
        id: id.0.clone(),
        state: pb::JobState::from(e.state) as i32,
        summary: e.summary,
        explanation,
    }
}

// ---- undecodable requests ----------------------------------------------------------------

/// Start of prost's message for bytes that are no protobuf message.
const DECODE_FAILURE: &str = "failed to decode Protobuf message";

/// Answers a request body that does not decode with `INVALID_ARGUMENT` instead of tonic's
/// `INTERNAL`: the fault is the caller's bytes, not the scheduler, and callers (the CLI's exit
/// codes, retry policies) must be able to tell the two apart. Applied to every service.
pub fn undecodable_is_invalid<B>(mut response: http::Response<B>) -> http::Response<B> {
    let headers = response.headers_mut();
    if let Some(status) = Status::from_header_map(headers)
        && status.code() == tonic::Code::Internal
        && status.message().starts_with(DECODE_FAILURE)
    {
        let message = format!("request: {}", status.message());
        let _ = Status::invalid_argument(bounded_message(message)).add_header(headers);
    }
    response
}
