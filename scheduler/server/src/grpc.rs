//! The gRPC boundary: `JobService`, `ClusterService` and `AgentService` over tonic.
//!
//! Handlers authenticate, convert wire messages to domain types (every invalid message
//! becomes `INVALID_ARGUMENT` naming the field), ask the core, and convert the answer back.
//! No scheduling logic lives here.

use std::collections::HashMap;
use std::pin::Pin;
use std::sync::{Arc, Mutex};

use suanli_engine::cid::quoted;
use suanli_engine::job::JobId;
use suanli_engine::{Cid, JobState};
use suanli_proto::convert::ConvertError;
use suanli_proto::pb;
use tokio::sync::mpsc;
use tokio_stream::Stream;
use tokio_stream::wrappers::ReceiverStream;
use tonic::codegen::http;
use tonic::{Request, Response, Status, Streaming};
use tracing::{info, warn};

use crate::auth::{Authenticator, Identity};
use crate::core::{AgentCommand, Command, CoreHandle, Explanation, NodeView, RunningReplica};
use crate::placement::StoredPlacement;
use crate::store::{EventRecord, JobFilter, JobRecord, NewJob, Store};

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
                    .map(|(reason, count, message)| pb::ReasonCount {
                        reason: reason.clone(),
                        node_count: *count,
                        message: message.clone(),
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

// ---- JobService --------------------------------------------------------------------------

type EventStream = Pin<Box<dyn Stream<Item = Result<pb::JobEvent, Status>> + Send>>;

/// Events one Watch stream holds for a reader that has not taken them yet. A reader further
/// behind than this is cut off with [`fell_behind`] and resumes from the sequence it names, so
/// a watcher that never reads costs at most this many events of memory.
const WATCH_BUFFER: usize = 1024;
/// Stored events read per query while a Watch replays history.
const REPLAY_PAGE: usize = 1000;
/// Longest a replay waits for its reader to make room before ending the stream: a client that
/// stops reading holds its replay task no longer than this.
const REPLAY_SEND_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);
/// Jobs whose tenant a tenant-scoped watch remembers before it starts over.
const TENANT_CACHE: usize = 10_000;

/// The status that ends a watch whose reader fell behind; `resume` is the first event it did
/// not get, so a new watch from there continues without a gap.
fn fell_behind(resume: i64) -> Status {
    Status::resource_exhausted(format!(
        "watcher fell behind by more than {WATCH_BUFFER} events; resume with from_seq = {resume}"
    ))
}

/// The task behind one Watch stream: replays stored events page by page, then forwards live
/// ones, always keeping one slot of its bounded channel free for the status that ends it.
struct Watcher {
    tx: mpsc::Sender<Result<pb::JobEvent, Status>>,
    job: Option<JobId>,
    tenant_scope: Option<String>,
    /// Whether each job seen belongs to `tenant_scope`.
    tenants: HashMap<JobId, bool>,
    services: Services,
    /// The last event this watch has passed (sent or filtered out); `None` for a live-only
    /// watch that has seen nothing yet.
    last_seq: Option<i64>,
}

/// How long a send may wait for the reader to make room.
#[derive(Debug, Clone, Copy)]
enum Pace {
    /// Replay: back-pressure, up to [`REPLAY_SEND_TIMEOUT`].
    Wait,
    /// Live: the broadcast does not wait for anyone, so neither does the watch.
    NoWait,
}

impl Watcher {
    async fn run(
        mut self,
        replay: bool,
        replay_only: bool,
        mut live: tokio::sync::broadcast::Receiver<EventRecord>,
    ) {
        use tokio::sync::broadcast::error::RecvError;
        if replay && (self.replay().await.is_break() || replay_only) {
            return;
        }
        loop {
            match live.recv().await {
                Ok(e) => {
                    if self.last_seq.is_some_and(|last| e.seq <= last) {
                        continue;
                    }
                    if self.offer(&e, Pace::NoWait).await.is_break() {
                        return;
                    }
                }
                Err(RecvError::Lagged(mut missed)) => {
                    let resume = match self.last_seq {
                        Some(last) => last + 1,
                        // Nothing seen yet: the missed events are the ones just before the
                        // oldest the broadcast still holds.
                        None => loop {
                            match live.recv().await {
                                Ok(oldest) => {
                                    break oldest
                                        .seq
                                        .saturating_sub(i64::try_from(missed).unwrap_or(i64::MAX))
                                        .max(1);
                                }
                                Err(RecvError::Lagged(more)) => missed += more,
                                Err(RecvError::Closed) => return,
                            }
                        },
                    };
                    self.finish(fell_behind(resume));
                    return;
                }
                Err(RecvError::Closed) => return,
            }
        }
    }

    /// Stored events after `last_seq`, a page at a time, until a page comes back short.
    async fn replay(&mut self) -> std::ops::ControlFlow<()> {
        loop {
            let job = self.job.clone();
            let after = self.last_seq.unwrap_or(0);
            let page = match self
                .services
                .read(move |s| s.events(job.as_ref(), after, REPLAY_PAGE))
                .await
            {
                Ok(page) => page,
                Err(status) => {
                    self.finish(status);
                    return std::ops::ControlFlow::Break(());
                }
            };
            for e in &page {
                self.offer(e, Pace::Wait).await?;
            }
            if page.len() < REPLAY_PAGE {
                return std::ops::ControlFlow::Continue(());
            }
        }
    }

    /// Sends `e` if this watch may see it. `Break` when the stream is over: the reader left,
    /// or fell behind and was sent the status saying where to resume.
    async fn offer(&mut self, e: &EventRecord, pace: Pace) -> std::ops::ControlFlow<()> {
        use tokio::sync::mpsc::error::TrySendError;
        if self.visible(e).await {
            // Two permits: one for the event and one left free for a final status.
            let permits = match pace {
                Pace::NoWait => self.tx.try_reserve_many(2),
                Pace::Wait => {
                    match tokio::time::timeout(REPLAY_SEND_TIMEOUT, self.tx.reserve_many(2)).await {
                        Ok(Ok(permits)) => Ok(permits),
                        Ok(Err(_closed)) => Err(TrySendError::Closed(())),
                        Err(_elapsed) => Err(TrySendError::Full(())),
                    }
                }
            };
            match permits {
                Ok(mut permits) => {
                    if let Some(permit) = permits.next() {
                        permit.send(Ok(event_to_wire(e)));
                    }
                }
                Err(TrySendError::Full(())) => {
                    self.finish(fell_behind(e.seq));
                    return std::ops::ControlFlow::Break(());
                }
                Err(TrySendError::Closed(())) => return std::ops::ControlFlow::Break(()),
            }
        }
        self.last_seq = Some(e.seq);
        std::ops::ControlFlow::Continue(())
    }

    /// Ends the stream with `status`. Every event send leaves a slot free, so this one fits;
    /// only a reader that is gone misses it.
    fn finish(&self, status: Status) {
        let _ = self.tx.try_send(Err(status));
    }

    async fn visible(&mut self, e: &EventRecord) -> bool {
        if self.job.as_ref().is_some_and(|j| *j != e.job_id) {
            return false;
        }
        let Some(tenant) = self.tenant_scope.clone() else {
            return true;
        };
        if let Some(&known) = self.tenants.get(&e.job_id) {
            return known;
        }
        let id = e.job_id.clone();
        let theirs = self
            .services
            .read(move |s| s.job(&id))
            .await
            .is_ok_and(|j| j.spec.tenant == tenant);
        if self.tenants.len() >= TENANT_CACHE {
            self.tenants.clear();
        }
        self.tenants.insert(e.job_id.clone(), theirs);
        theirs
    }
}

#[tonic::async_trait]
impl pb::job_service_server::JobService for Services {
    async fn submit(
        &self,
        request: Request<pb::SubmitJobRequest>,
    ) -> Result<Response<pb::SubmitJobResponse>, Status> {
        let who = self.auth.user(request.metadata())?;
        let msg = request.into_inner();
        let wire = msg
            .spec
            .ok_or_else(|| Status::invalid_argument("spec: is required"))?;
        let mut spec = suanli_engine::JobSpec::try_from(wire).map_err(convert_err)?;
        if let Identity::Tenant(tenant) = &who {
            if spec.tenant != *tenant && spec.tenant != "default" {
                return Err(Status::permission_denied(format!(
                    "tenant {tenant} may not submit jobs for tenant {}",
                    spec.tenant
                )));
            }
            spec.tenant = tenant.clone();
        }
        if msg.request_id.len() > 128 {
            return Err(Status::invalid_argument(
                "request_id: is longer than 128 characters",
            ));
        }
        let request_id = (!msg.request_id.is_empty()).then_some(msg.request_id);
        let record = self
            .core
            .ask(|reply| Command::Submit {
                job: NewJob { spec, request_id },
                reply,
            })
            .await?;
        Ok(Response::new(pb::SubmitJobResponse {
            job: Some(job_to_wire(&record)),
        }))
    }

    async fn get(&self, request: Request<pb::GetJobRequest>) -> Result<Response<pb::Job>, Status> {
        let who = self.auth.user(request.metadata())?;
        let record = self.visible_job(&request.get_ref().id, &who).await?;
        Ok(Response::new(job_to_wire(&record)))
    }

    async fn list(
        &self,
        request: Request<pb::ListJobsRequest>,
    ) -> Result<Response<pb::ListJobsResponse>, Status> {
        let who = self.auth.user(request.metadata())?;
        let msg = request.into_inner();
        let mut states = Vec::new();
        for (i, raw) in msg.states.iter().enumerate() {
            states.push(
                suanli_proto::convert::job_state_from_wire(&format!("states[{i}]"), *raw)
                    .map_err(convert_err)?,
            );
        }
        let kind = pb::JobKind::try_from(msg.kind)
            .map_err(|_| Status::invalid_argument(format!("kind: unknown value {}", msg.kind)))?;
        let tenant = match who.tenant_scope() {
            Some(own) => {
                if !msg.tenant.is_empty() && msg.tenant != own {
                    return Err(Status::permission_denied(format!(
                        "tenant {own} may not list tenant {}'s jobs",
                        quoted(&msg.tenant)
                    )));
                }
                Some(own.to_string())
            }
            None => (!msg.tenant.is_empty()).then_some(msg.tenant.clone()),
        };
        let limit = page_size(msg.page.as_ref());
        let after = match msg.page.as_ref().map(|p| p.page_token.as_str()) {
            None | Some("") => None,
            Some(token) => Some(parse_job_id(token).map_err(|_| {
                Status::invalid_argument(format!(
                    "page.page_token: {} is not a token this server issued",
                    quoted(token)
                ))
            })?),
        };
        let filter = JobFilter {
            tenant,
            queue: (!msg.queue.is_empty()).then_some(msg.queue.clone()),
            states,
            after,
            limit: 0,
            newest_first: true,
        };
        let (jobs, total) = self
            .read(move |s| {
                // Kind is not a column worth indexing; filter it here.
                let all = s.jobs(&JobFilter {
                    limit: 0,
                    ..filter.clone()
                })?;
                let matching: Vec<JobRecord> = all
                    .into_iter()
                    .filter(|j| {
                        kind == pb::JobKind::Unspecified || pb::JobKind::from(j.spec.kind) == kind
                    })
                    .collect();
                let total = if filter.after.is_none() {
                    matching.len() as u64
                } else {
                    s.count_jobs(&filter)?
                };
                Ok((
                    matching.into_iter().take(limit + 1).collect::<Vec<_>>(),
                    total,
                ))
            })
            .await?;
        let (page, more) = fit_page(jobs.iter().map(job_to_wire).collect(), limit);
        let next = if more {
            page.last().map(|j| j.id.clone()).unwrap_or_default()
        } else {
            String::new()
        };
        Ok(Response::new(pb::ListJobsResponse {
            jobs: page,
            page: Some(pb::PageInfo {
                next_page_token: next,
                total_size: total,
            }),
        }))
    }

    async fn update(
        &self,
        request: Request<pb::UpdateJobRequest>,
    ) -> Result<Response<pb::Job>, Status> {
        let who = self.auth.user(request.metadata())?;
        let msg = request.into_inner();
        let id = parse_job_id(&msg.id)?;
        let record = self
            .core
            .ask(|reply| Command::Update {
                id,
                by: who,
                priority: msg.priority,
                preemptible: msg.preemptible,
                queue: msg.queue,
                reply,
            })
            .await?;
        Ok(Response::new(job_to_wire(&record)))
    }

    async fn cancel(
        &self,
        request: Request<pb::CancelJobRequest>,
    ) -> Result<Response<pb::Job>, Status> {
        let who = self.auth.user(request.metadata())?;
        let msg = request.into_inner();
        let id = parse_job_id(&msg.id)?;
        let reason = check_reason("reason", &msg.reason)?;
        let record = self
            .core
            .ask(|reply| Command::Cancel {
                id,
                by: who,
                reason,
                reply,
            })
            .await?;
        Ok(Response::new(job_to_wire(&record)))
    }

    type WatchStream = EventStream;

    async fn watch(
        &self,
        request: Request<pb::WatchJobsRequest>,
    ) -> Result<Response<Self::WatchStream>, Status> {
        let who = self.auth.user(request.metadata())?;
        let msg = request.into_inner();
        let job = if msg.job_id.is_empty() {
            None
        } else {
            Some(self.visible_job(&msg.job_id, &who).await?.id)
        };
        let tenant_scope = who
            .tenant_scope()
            .map(str::to_string)
            .or_else(|| (!msg.tenant.is_empty()).then_some(msg.tenant.clone()));
        // Subscribe before replaying so nothing falls between the two.
        let live = self.core.subscribe();
        let from_seq = if msg.replay_only {
            Some(msg.from_seq.unwrap_or(1))
        } else {
            msg.from_seq
        };
        // One slot more than the buffer: the status that ends the stream always fits.
        let (tx, rx) = mpsc::channel(WATCH_BUFFER + 1);
        let watcher = Watcher {
            tx,
            job,
            tenant_scope,
            tenants: HashMap::new(),
            services: self.clone(),
            last_seq: from_seq
                .map(|from| i64::try_from(from).unwrap_or(i64::MAX).saturating_sub(1)),
        };
        tokio::spawn(watcher.run(from_seq.is_some(), msg.replay_only, live));
        Ok(Response::new(Box::pin(
            tokio_stream::wrappers::ReceiverStream::new(rx),
        )))
    }

    async fn explain(
        &self,
        request: Request<pb::ExplainJobRequest>,
    ) -> Result<Response<pb::ExplainJobResponse>, Status> {
        let who = self.auth.user(request.metadata())?;
        let id = parse_job_id(&request.get_ref().id)?;
        let explanation = self
            .core
            .ask(|reply| Command::Explain {
                id: id.clone(),
                by: who,
                reply,
            })
            .await?;
        Ok(Response::new(explanation_to_wire(&id, explanation)))
    }
}

// ---- ClusterService ----------------------------------------------------------------------

impl Services {
    async fn node_views(&self) -> Result<Vec<NodeView>, Status> {
        Ok(self.core.ask(|reply| Command::Nodes { reply }).await?)
    }

    async fn set_cordon(
        &self,
        cid: &str,
        cordoned: bool,
        reason: String,
    ) -> Result<Response<pb::NodeStatus>, Status> {
        let node = parse_cid("cid", cid)?;
        let view = self
            .core
            .ask(|reply| Command::Cordon {
                node,
                cordoned,
                reason,
                reply,
            })
            .await?;
        Ok(Response::new(node_to_wire(&view, &Identity::Admin)))
    }

    async fn node_view(&self, cid: &Cid) -> Result<NodeView, Status> {
        self.node_views()
            .await?
            .into_iter()
            .find(|v| &v.inventory.cid == cid)
            .ok_or_else(|| Status::not_found(format!("node {cid} not found")))
    }
}

#[tonic::async_trait]
impl pb::cluster_service_server::ClusterService for Services {
    async fn list_nodes(
        &self,
        request: Request<pb::ListNodesRequest>,
    ) -> Result<Response<pb::ListNodesResponse>, Status> {
        let who = self.auth.user(request.metadata())?;
        let msg = request.into_inner();
        let prefix = if msg.prefix.is_empty() {
            None
        } else {
            Some(parse_cid("prefix", &msg.prefix)?)
        };
        let limit = page_size(msg.page.as_ref());
        let token = msg.page.map(|p| p.page_token).unwrap_or_default();
        let after = if token.is_empty() {
            None
        } else {
            Some(parse_cid("page.page_token", &token)?)
        };
        let views: Vec<NodeView> = self
            .node_views()
            .await?
            .into_iter()
            .filter(|v| {
                prefix
                    .as_ref()
                    .is_none_or(|p| p.is_prefix_of(&v.inventory.cid))
            })
            .collect();
        let total = views.len() as u64;
        let rest: Vec<&NodeView> = views
            .iter()
            .filter(|v| after.as_ref().is_none_or(|a| &v.inventory.cid > a))
            .collect();
        let candidates = rest
            .into_iter()
            .take(limit + 1)
            .map(|v| node_to_wire(v, &who))
            .collect();
        let (page, more) = fit_page(candidates, limit);
        let next = if more {
            page.last()
                .and_then(|n| n.inventory.as_ref())
                .map(|inv| inv.cid.clone())
                .unwrap_or_default()
        } else {
            String::new()
        };
        Ok(Response::new(pb::ListNodesResponse {
            nodes: page,
            page: Some(pb::PageInfo {
                next_page_token: next,
                total_size: total,
            }),
        }))
    }

    async fn get_node(
        &self,
        request: Request<pb::GetNodeRequest>,
    ) -> Result<Response<pb::NodeStatus>, Status> {
        let who = self.auth.user(request.metadata())?;
        let cid = parse_cid("cid", &request.get_ref().cid)?;
        Ok(Response::new(node_to_wire(
            &self.node_view(&cid).await?,
            &who,
        )))
    }

    async fn resolve(
        &self,
        request: Request<pb::ResolveRequest>,
    ) -> Result<Response<pb::ResolveResponse>, Status> {
        self.auth.user(request.metadata())?;
        let msg = request.into_inner();
        let query = crate::resolve::Query::from_wire(&msg)?;
        let limit = page_size(msg.page.as_ref());
        // The token is the last CID returned: nodes come in CID order.
        let after = match msg.page.as_ref().map(|p| p.page_token.as_str()) {
            None | Some("") => None,
            Some(token) => Some(parse_cid("page.page_token", token)?),
        };
        let views = self.node_views().await?;
        let nodes = crate::resolve::resolve(&views, &query);
        let total = nodes.len() as u64;
        let mut rest: Vec<pb::ResolvedNode> = nodes
            .into_iter()
            .filter(|n| {
                after
                    .as_ref()
                    .is_none_or(|a| n.cid.parse::<Cid>().is_ok_and(|c| &c > a))
            })
            .collect();
        rest.truncate(limit + 1);
        let (rest, more) = fit_page(rest, limit);
        let next = if more {
            rest.last().map(|n| n.cid.clone()).unwrap_or_default()
        } else {
            String::new()
        };
        Ok(Response::new(pb::ResolveResponse {
            nodes: rest,
            page: Some(pb::PageInfo {
                next_page_token: next,
                total_size: total,
            }),
        }))
    }

    async fn topology(
        &self,
        request: Request<pb::TopologyRequest>,
    ) -> Result<Response<pb::TopologyResponse>, Status> {
        self.auth.user(request.metadata())?;
        let domain = parse_cid("domain", &request.get_ref().domain)?;
        let views = self.node_views().await?;
        Ok(Response::new(crate::resolve::topology(&views, &domain)))
    }

    async fn cordon(
        &self,
        request: Request<pb::CordonRequest>,
    ) -> Result<Response<pb::NodeStatus>, Status> {
        self.auth.admin(request.metadata())?;
        let msg = request.into_inner();
        self.set_cordon(&msg.cid, true, check_reason("reason", &msg.reason)?)
            .await
    }

    async fn uncordon(
        &self,
        request: Request<pb::UncordonRequest>,
    ) -> Result<Response<pb::NodeStatus>, Status> {
        self.auth.admin(request.metadata())?;
        self.set_cordon(&request.get_ref().cid, false, String::new())
            .await
    }

    async fn drain(
        &self,
        request: Request<pb::DrainRequest>,
    ) -> Result<Response<pb::DrainResponse>, Status> {
        self.auth.admin(request.metadata())?;
        let msg = request.into_inner();
        let cid = parse_cid("cid", &msg.cid)?;
        let reason = check_reason("reason", &msg.reason)?;
        let evicted = self
            .core
            .ask(|reply| Command::Drain {
                node: cid.clone(),
                reason,
                grace_ms: msg.grace_period_ms,
                reply,
            })
            .await?;
        let view = self.node_view(&cid).await?;
        Ok(Response::new(pb::DrainResponse {
            node: Some(node_to_wire(&view, &Identity::Admin)),
            evicted_job_ids: evicted.into_iter().map(|j| j.0).collect(),
        }))
    }

    async fn remove_node(
        &self,
        request: Request<pb::RemoveNodeRequest>,
    ) -> Result<Response<pb::RemoveNodeResponse>, Status> {
        self.auth.admin(request.metadata())?;
        let msg = request.into_inner();
        let node = parse_cid("cid", &msg.cid)?;
        if node.level() != suanli_engine::Level::Node {
            return Err(Status::invalid_argument(format!(
                "cid: {node} is not a node identifier (provider/region/domain/node)"
            )));
        }
        let requeued = self
            .core
            .ask(|reply| Command::RemoveNode {
                node: node.clone(),
                force: msg.force,
                reply,
            })
            .await?;
        info!(node = %node, force = msg.force, requeued = requeued.len(), "Node removed by an admin.");
        Ok(Response::new(pb::RemoveNodeResponse {
            cid: node.to_string(),
            requeued_job_ids: requeued.into_iter().map(|j| j.0).collect(),
        }))
    }

    async fn telemetry(
        &self,
        request: Request<pb::TelemetryRequest>,
    ) -> Result<Response<pb::TelemetryResponse>, Status> {
        self.auth.user(request.metadata())?;
        let prefix = match request.get_ref().prefix.as_str() {
            "" => None,
            text => Some(parse_cid("prefix", text)?),
        };
        let map = self
            .telemetry
            .lock()
            .map_err(|_| Status::internal("telemetry lock poisoned"))?;
        let mut nodes: Vec<pb::NodeTelemetry> = map
            .iter()
            .filter(|(cid, _)| prefix.as_ref().is_none_or(|p| p.is_prefix_of(cid)))
            .map(|(cid, (t, at))| pb::NodeTelemetry {
                node_cid: cid.to_string(),
                telemetry: Some(t.clone()),
                received_unix_ms: *at,
            })
            .collect();
        nodes.sort_by(|a, b| a.node_cid.cmp(&b.node_cid));
        Ok(Response::new(pb::TelemetryResponse { nodes }))
    }
}

// ---- AgentService ------------------------------------------------------------------------

type SchedulerStream = Pin<Box<dyn Stream<Item = Result<pb::SchedulerMessage, Status>> + Send>>;

fn command_to_wire(command: AgentCommand) -> pb::SchedulerMessage {
    use pb::scheduler_message::Msg;
    let msg = match command {
        AgentCommand::Assign(a) => Msg::Assign(pb::Assignment {
            job_id: a.job_id.0,
            replica: a.replica,
            command: a.spec.command.clone(),
            env: a.spec.env.clone().into_iter().collect(),
            gpu_uuids: a.gpu_uuids,
            volumes: a.spec.volumes.iter().cloned().map(Into::into).collect(),
            attempt: a.attempt,
            resources: Some(pb::Resources {
                cpu_milli: a.cpu_milli,
                memory_mib: a.memory_mib,
            }),
        }),
        AgentCommand::Cancel {
            job_id,
            replica,
            attempt,
            grace_period_ms,
        } => Msg::Cancel(pb::Cancel {
            job_id: job_id.0,
            replica,
            grace_period_ms,
            attempt,
        }),
        AgentCommand::Reregister { reason } => Msg::Reregister(pb::Reregister { reason }),
        AgentCommand::Replaced { reason } => Msg::Replaced(pb::SessionReplaced { reason }),
    };
    pb::SchedulerMessage { msg: Some(msg) }
}

#[tonic::async_trait]
impl pb::agent_service_server::AgentService for Services {
    async fn register(
        &self,
        request: Request<pb::RegisterRequest>,
    ) -> Result<Response<pb::RegisterResponse>, Status> {
        let who = self.auth.agent(request.metadata())?;
        let msg = request.into_inner();
        if msg.node_credential.len() > crate::credential::MAX_CREDENTIAL_LEN {
            return Err(Status::invalid_argument(format!(
                "node_credential: is {} bytes; a node credential has at most {}",
                msg.node_credential.len(),
                crate::credential::MAX_CREDENTIAL_LEN
            )));
        }
        let inventory =
            suanli_proto::convert::required_inventory(msg.inventory).map_err(convert_err)?;
        let cid = inventory.cid.clone();
        let registration = self
            .core
            .ask(|reply| Command::Register {
                inventory: Box::new(inventory),
                credential: msg.node_credential,
                by: who,
                reply,
            })
            .await?;
        Ok(Response::new(pb::RegisterResponse {
            node_cid: cid.to_string(),
            session_id: registration.session_id,
            heartbeat_interval_ms: self.heartbeat_interval_ms,
            telemetry_interval_ms: self.telemetry_interval_ms,
            node_credential: registration.credential.unwrap_or_default(),
        }))
    }

    type SessionStream = SchedulerStream;

    async fn session(
        &self,
        request: Request<Streaming<pb::AgentMessage>>,
    ) -> Result<Response<Self::SessionStream>, Status> {
        self.auth.agent(request.metadata())?;
        let mut inbound = request.into_inner();
        use pb::agent_message::Msg;
        let hello = match inbound.message().await? {
            Some(pb::AgentMessage {
                msg: Some(Msg::Hello(hello)),
            }) => hello,
            Some(_) => {
                return Err(Status::invalid_argument(
                    "the first message of a session must be hello",
                ));
            }
            None => return Err(Status::cancelled("session closed before hello")),
        };
        let node = parse_cid("hello.node_cid", &hello.node_cid)?;
        if hello.session_id.len() > MAX_SESSION_ID_LEN {
            return Err(Status::invalid_argument(format!(
                "hello.session_id: is {} bytes; a session id has at most {MAX_SESSION_ID_LEN}",
                hello.session_id.len()
            )));
        }
        let mut running = Vec::new();
        for (i, r) in hello.running.iter().enumerate() {
            let job_id = parse_job_id(&r.job_id).map_err(|s| {
                Status::invalid_argument(format!("hello.running[{i}].job_{}", s.message()))
            })?;
            running.push(RunningReplica {
                job_id,
                replica: r.replica,
            });
        }
        let (to_agent, from_core) = mpsc::unbounded_channel::<AgentCommand>();
        let session_id = hello.session_id.clone();
        self.core
            .ask(|reply| Command::SessionOpen {
                node: node.clone(),
                session_id: session_id.clone(),
                running,
                tx: to_agent,
                reply,
            })
            .await?;
        // Bounded: an agent that stops reading cannot make the scheduler buffer without end.
        let (out_tx, out_rx) =
            mpsc::channel::<Result<pb::SchedulerMessage, Status>>(SESSION_BUFFER);
        // Core → agent.
        let forward_tx = out_tx.clone();
        tokio::spawn(async move {
            let mut from_core = from_core;
            while let Some(command) = from_core.recv().await {
                let replaced = matches!(command, AgentCommand::Replaced { .. });
                if forward_tx.send(Ok(command_to_wire(command))).await.is_err() {
                    break;
                }
                if replaced {
                    // The agent has been told why; end the stream so it stops here.
                    let _ = forward_tx
                        .send(Err(Status::aborted("another session holds this node now")))
                        .await;
                    break;
                }
            }
        });
        // Agent → core. Every report carries the session, so the core can ignore a session
        // that no longer holds the node.
        let core = self.core.clone();
        let telemetry = self.telemetry.clone();
        tokio::spawn(async move {
            loop {
                let message = match inbound.message().await {
                    Ok(Some(m)) => m,
                    Ok(None) => break,
                    Err(status) => {
                        info!(node = %node, error = %status.message(), "Agent stream ended.");
                        break;
                    }
                };
                let Some(msg) = message.msg else { continue };
                match msg {
                    Msg::Hello(_) => {
                        warn!(node = %node, "Ignoring a second hello on one session.");
                    }
                    Msg::Heartbeat(hb) => {
                        core.send(Command::Heartbeat {
                            node: node.clone(),
                            session_id: session_id.clone(),
                        });
                        let ack = pb::SchedulerMessage {
                            msg: Some(pb::scheduler_message::Msg::HeartbeatAck(pb::HeartbeatAck {
                                seq: hb.seq,
                            })),
                        };
                        match out_tx.try_send(Ok(ack)) {
                            Ok(()) => {}
                            Err(mpsc::error::TrySendError::Full(_)) => {
                                warn!(node = %node, "Agent does not read its session; closing it.");
                                break;
                            }
                            // The stream to the agent ended (replaced, or the agent left).
                            Err(mpsc::error::TrySendError::Closed(_)) => break,
                        }
                    }
                    Msg::Telemetry(t) => {
                        core.send(Command::Heartbeat {
                            node: node.clone(),
                            session_id: session_id.clone(),
                        });
                        if let Ok(mut map) = telemetry.lock() {
                            map.insert(node.clone(), (t, crate::store::now_ms()));
                        }
                    }
                    Msg::Inventory(update) => {
                        match suanli_proto::convert::required_inventory(update.inventory) {
                            Ok(inventory) => core.send(Command::InventoryUpdate {
                                node: node.clone(),
                                session_id: session_id.clone(),
                                inventory: Box::new(inventory),
                            }),
                            Err(e) => {
                                // The node no longer matches what the scheduler places on:
                                // end the session, so the agent hears why and the node is not
                                // used on stale facts.
                                warn!(node = %node, error = %e, "Rejected an inventory update.");
                                let _ = out_tx.try_send(Err(convert_err(e)));
                                break;
                            }
                        }
                    }
                    Msg::PodDevices(d) => {
                        // Bounded, so a hostile agent cannot make the core hold much.
                        let pods = d
                            .pods
                            .into_iter()
                            .take(MAX_PODS_PER_NODE)
                            .map(|p| {
                                let ids = p.gpu_uuids.into_iter().take(MAX_GPUS_PER_POD).collect();
                                (p.namespace, p.name, ids)
                            })
                            .collect();
                        core.send(Command::PodDevices {
                            node: node.clone(),
                            session_id: session_id.clone(),
                            pods,
                        });
                    }
                    Msg::Started(s) => match parse_job_id(&s.job_id) {
                        Ok(job_id) => core.send(Command::WorkStarted {
                            node: node.clone(),
                            session_id: session_id.clone(),
                            job_id,
                            replica: s.replica,
                            attempt: s.attempt,
                        }),
                        Err(e) => {
                            warn!(node = %node, error = %e.message(), "Bad work-started report.")
                        }
                    },
                    Msg::Exited(x) => match parse_job_id(&x.job_id) {
                        Ok(job_id) => {
                            let message = if x.signal != 0 && x.message.is_empty() {
                                format!("killed by signal {}", x.signal)
                            } else {
                                x.message.chars().take(1024).collect()
                            };
                            core.send(Command::WorkExited {
                                node: node.clone(),
                                session_id: session_id.clone(),
                                job_id,
                                replica: x.replica,
                                attempt: x.attempt,
                                exit_code: x.exit_code,
                                message,
                            });
                        }
                        Err(e) => {
                            warn!(node = %node, error = %e.message(), "Bad work-exited report.")
                        }
                    },
                }
            }
            core.send(Command::SessionClosed { node, session_id });
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(out_rx))))
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
