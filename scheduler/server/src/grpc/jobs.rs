//! `JobService`: submit, list, get, cancel, explain, and Watch streams, which are bounded:
//! a reader that falls too far behind is cut off with the sequence to resume from.

use std::collections::HashMap;
use std::pin::Pin;

use suanli_engine::cid::quoted;
use suanli_engine::job::JobId;
use suanli_proto::pb;
use tokio::sync::mpsc;
use tokio_stream::Stream;
use tonic::{Request, Response, Status};

use super::logs::LogQuery;
use super::{
    Services, check_reason, convert_err, event_to_wire, explanation_to_wire, fit_page, job_to_wire,
    page_size, parse_job_id,
};
use crate::auth::Identity;
use crate::core::JobUpdate;
use crate::placement::StoredPlacement;
use crate::store::{EventRecord, JobFilter, JobRecord, NewJob};

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
        let record = self.core.submit(NewJob { spec, request_id }).await?;
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
        let update = JobUpdate {
            priority: msg.priority,
            preemptible: msg.preemptible,
            queue: msg.queue,
            time_limit_s: msg.time_limit_s,
            replicas: msg.replicas,
        };
        let record = self.core.update(id, who, update).await?;
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
        let record = self.core.cancel(id, who, reason).await?;
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
        let explanation = self.core.explain(id.clone(), who).await?;
        Ok(Response::new(explanation_to_wire(&id, explanation)))
    }

    type LogsStream = LogsStream;

    async fn logs(
        &self,
        request: Request<pb::LogsRequest>,
    ) -> Result<Response<Self::LogsStream>, Status> {
        let who = self.auth.user(request.metadata())?;
        let msg = request.into_inner();
        let record = self.visible_job(&msg.id, &who).await?;
        let attempt = log_attempt(&record, msg.replica, msg.attempt)?;
        let node = self.log_node(&record, msg.replica, attempt)?;
        let query = LogQuery {
            job_id: record.id.clone(),
            replica: msg.replica,
            attempt,
            tail_lines: msg.tail_lines,
            follow: msg.follow,
        };
        let stream = self.logs.open(&node, query).await?;
        Ok(Response::new(Box::pin(
            tokio_stream::wrappers::ReceiverStream::new(stream),
        )))
    }
}

type LogsStream = Pin<Box<dyn Stream<Item = Result<pb::LogsChunk, Status>> + Send>>;

/// The attempt a log request is about (0: the latest), after checking the replica and the
/// attempt exist.
fn log_attempt(record: &JobRecord, replica: u32, attempt: u32) -> Result<u32, Status> {
    let replicas = record.spec.replicas;
    if replica >= replicas {
        return Err(Status::invalid_argument(format!(
            "replica: job {} has {replicas} replica{} (0..{}), got {replica}",
            record.id,
            if replicas == 1 { "" } else { "s" },
            replicas.saturating_sub(1)
        )));
    }
    let attempts = record.attempts;
    if attempts == 0 {
        return Err(Status::failed_precondition(format!(
            "job {} has not been placed yet; it has no logs",
            record.id
        )));
    }
    if attempt > attempts {
        return Err(Status::invalid_argument(format!(
            "attempt: job {} has {attempts} attempt{} (1..{attempts}), got {attempt}",
            record.id,
            if attempts == 1 { "" } else { "s" },
        )));
    }
    Ok(if attempt == 0 { attempts } else { attempt })
}

impl Services {
    /// The node that ran (or runs) this replica attempt, whose agent holds its log.
    fn log_node(
        &self,
        record: &JobRecord,
        replica: u32,
        attempt: u32,
    ) -> Result<suanli_engine::Cid, Status> {
        let placement = record
            .placement
            .clone()
            .and_then(|p| serde_json::from_value::<StoredPlacement>(p).ok())
            .filter(|p| p.attempt == attempt);
        if let Some(placement) = placement {
            if let Some(pod) = &placement.pod {
                return Err(Status::failed_precondition(format!(
                    "job {} runs as Kubernetes pod {pod}; kubelet keeps its logs (kubectl logs)",
                    record.id
                )));
            }
            return placement
                .replicas
                .iter()
                .find(|slot| slot.replica == replica)
                .map(|slot| slot.node.clone())
                .ok_or_else(|| {
                    Status::not_found(format!(
                        "replica {replica} of job {} was not placed in attempt {attempt}",
                        record.id
                    ))
                });
        }
        self.logs
            .ran_on(&record.id, replica, attempt)
            .ok_or_else(|| {
                Status::not_found(format!(
                    "the scheduler no longer knows which node ran replica {replica} of job {} in \
                     attempt {attempt}",
                    record.id
                ))
            })
    }
}
