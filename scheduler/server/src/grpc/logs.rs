//! Relays replica logs from the agent that holds them to `JobService.Logs` callers.
//!
//! A log never passes through the core thread: the relay knows each node's current session
//! and the log requests open on it. The scheduler asks the agent with a `LogRequest` (a
//! request id and a window of chunks); the agent answers with `LogChunk`s and never has more
//! than `window` of them unacknowledged; the relay acknowledges a chunk only once the caller's
//! stream took it. So a slow caller holds at most a window of chunks here, and a caller that
//! goes away ends the agent's side with a `LogCancel`.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, PoisonError};

use suanli_engine::Cid;
use suanli_engine::job::JobId;
use suanli_proto::pb;
use tokio::sync::mpsc;
use tonic::Status;
use tracing::{debug, warn};

use crate::core::AgentSession;

/// Chunks (of at most 64 KiB) an agent may send for one request before the relay
/// acknowledges any: the most one caller can make the scheduler hold.
pub const LOG_WINDOW: u32 = 16;
/// Chunks waiting for one caller to read them.
const CALLER_BUFFER: usize = 4;
/// Most log streams open at once through one node.
const MAX_STREAMS_PER_NODE: usize = 64;
/// Replica attempts whose node the relay remembers, for logs of attempts the store no longer
/// places (a job that was requeued keeps only its latest placement).
const MAX_REMEMBERED_RUNS: usize = 100_000;

type ToAgent = mpsc::Sender<Result<pb::SchedulerMessage, Status>>;
pub type LogsStream = mpsc::Receiver<Result<pb::LogsChunk, Status>>;

#[derive(Debug)]
struct Link {
    session_id: String,
    to_agent: ToAgent,
}

#[derive(Debug)]
struct Pending {
    node: Cid,
    session_id: String,
    chunks: mpsc::Sender<pb::LogChunk>,
}

#[derive(Debug, Default)]
struct Inner {
    links: HashMap<Cid, Link>,
    pending: HashMap<u64, Pending>,
    next_id: u64,
    /// Which node started each replica attempt, oldest first for forgetting.
    runs: HashMap<(JobId, u32, u32), Cid>,
    run_order: VecDeque<(JobId, u32, u32)>,
}

/// What a caller asks of one replica attempt's log.
#[derive(Debug, Clone)]
pub struct LogQuery {
    pub job_id: JobId,
    pub replica: u32,
    pub attempt: u32,
    pub tail_lines: u32,
    pub follow: bool,
}

#[derive(Debug, Default)]
pub struct LogRelay {
    inner: Mutex<Inner>,
}

/// Not UNAVAILABLE: the scheduler answered; it is the node that cannot be reached.
fn not_connected(node: &Cid) -> Status {
    Status::failed_precondition(format!(
        "node {node} is not connected; its agent holds the log"
    ))
}

fn scheduler_msg(msg: pb::scheduler_message::Msg) -> Result<pb::SchedulerMessage, Status> {
    Ok(pb::SchedulerMessage { msg: Some(msg) })
}

impl LogRelay {
    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// `session` is the node's session now; log requests for the node go to it.
    pub fn attach(&self, session: &AgentSession, to_agent: ToAgent) {
        self.lock().links.insert(
            session.node.clone(),
            Link {
                session_id: session.session_id.clone(),
                to_agent,
            },
        );
    }

    /// `session` ended: its requests end with an error, and the node has no session until
    /// another attaches.
    pub fn detach(&self, session: &AgentSession) {
        let mut inner = self.lock();
        if inner
            .links
            .get(&session.node)
            .is_some_and(|l| l.session_id == session.session_id)
        {
            inner.links.remove(&session.node);
        }
        // Dropping a request's sender tells its forwarder the agent is gone.
        inner
            .pending
            .retain(|_, p| !(p.node == session.node && p.session_id == session.session_id));
    }

    /// The node `session` started a replica attempt on.
    pub fn started(&self, session: &AgentSession, job_id: JobId, replica: u32, attempt: u32) {
        let mut inner = self.lock();
        let key = (job_id, replica, attempt);
        if inner
            .runs
            .insert(key.clone(), session.node.clone())
            .is_none()
        {
            inner.run_order.push_back(key);
        }
        while inner.run_order.len() > MAX_REMEMBERED_RUNS {
            if let Some(old) = inner.run_order.pop_front() {
                inner.runs.remove(&old);
            }
        }
    }

    /// The node that started this replica attempt, if the relay saw it start.
    pub fn ran_on(&self, job_id: &JobId, replica: u32, attempt: u32) -> Option<Cid> {
        self.lock()
            .runs
            .get(&(job_id.clone(), replica, attempt))
            .cloned()
    }

    /// A chunk from `session`'s agent. Never waits: a chunk beyond the window ends its
    /// request instead of growing a buffer.
    pub fn deliver(&self, session: &AgentSession, chunk: pb::LogChunk) {
        let mut inner = self.lock();
        let id = chunk.request_id;
        let Some(pending) = inner.pending.get(&id) else {
            // Cancelled, or its caller already left.
            return;
        };
        if pending.node != session.node || pending.session_id != session.session_id {
            warn!(node = %session.node, request = id, "Log chunk for another node's request.");
            return;
        }
        let last = chunk.last;
        match pending.chunks.try_send(chunk) {
            Ok(()) if !last => {}
            Ok(()) => {
                inner.pending.remove(&id);
            }
            Err(mpsc::error::TrySendError::Full(_)) => {
                warn!(node = %session.node, request = id,
                      "Agent sent more log chunks than its window; ending the request.");
                inner.pending.remove(&id);
            }
            Err(mpsc::error::TrySendError::Closed(_)) => {
                inner.pending.remove(&id);
            }
        }
    }

    /// Asks `node`'s agent for a log and returns the caller's stream of it.
    pub async fn open(self: &Arc<Self>, node: &Cid, query: LogQuery) -> Result<LogsStream, Status> {
        let (id, to_agent, chunks) = {
            let mut inner = self.lock();
            let Some(link) = inner.links.get(node) else {
                return Err(not_connected(node));
            };
            let to_agent = link.to_agent.clone();
            let session_id = link.session_id.clone();
            let open_here = inner.pending.values().filter(|p| p.node == *node).count();
            if open_here >= MAX_STREAMS_PER_NODE {
                return Err(Status::resource_exhausted(format!(
                    "node {node} already streams {MAX_STREAMS_PER_NODE} logs; try again later"
                )));
            }
            inner.next_id += 1;
            let id = inner.next_id;
            let (tx, rx) = mpsc::channel(LOG_WINDOW as usize);
            inner.pending.insert(
                id,
                Pending {
                    node: node.clone(),
                    session_id,
                    chunks: tx,
                },
            );
            (id, to_agent, rx)
        };
        let request = pb::LogRequest {
            request_id: id,
            job_id: query.job_id.0.clone(),
            replica: query.replica,
            attempt: query.attempt,
            tail_lines: query.tail_lines,
            follow: query.follow,
            window: LOG_WINDOW,
        };
        if to_agent
            .send(scheduler_msg(pb::scheduler_message::Msg::LogRequest(
                request,
            )))
            .await
            .is_err()
        {
            self.lock().pending.remove(&id);
            return Err(not_connected(node));
        }
        let (caller, stream) = mpsc::channel(CALLER_BUFFER);
        let forwarder = Forwarder {
            relay: Arc::clone(self),
            id,
            node: node.clone(),
            query,
            to_agent,
            caller,
        };
        tokio::spawn(forwarder.run(chunks));
        Ok(stream)
    }
}

/// Moves one request's chunks from the agent to its caller, acknowledging each as the
/// caller takes it.
struct Forwarder {
    relay: Arc<LogRelay>,
    id: u64,
    node: Cid,
    query: LogQuery,
    to_agent: ToAgent,
    caller: mpsc::Sender<Result<pb::LogsChunk, Status>>,
}

impl Forwarder {
    async fn run(self, mut chunks: mpsc::Receiver<pb::LogChunk>) {
        let mut unacked = 0u32;
        loop {
            let chunk = tokio::select! {
                () = self.caller.closed() => return self.cancel().await,
                chunk = chunks.recv() => chunk,
            };
            let Some(mut chunk) = chunk else {
                let _ = self
                    .caller
                    .send(Err(Status::failed_precondition(format!(
                        "the agent of node {} went away while sending the log",
                        self.node
                    ))))
                    .await;
                return;
            };
            if !chunk.data.is_empty()
                && self
                    .caller
                    .send(Ok(pb::LogsChunk {
                        data: std::mem::take(&mut chunk.data),
                    }))
                    .await
                    .is_err()
            {
                return self.cancel().await;
            }
            if chunk.last {
                if !chunk.error.is_empty() {
                    let _ = self.caller.send(Err(self.failure(&chunk))).await;
                }
                return;
            }
            unacked += 1;
            if unacked >= LOG_WINDOW / 2 {
                let ack = pb::LogAck {
                    request_id: self.id,
                    chunks: unacked,
                };
                if self
                    .to_agent
                    .send(scheduler_msg(pb::scheduler_message::Msg::LogAck(ack)))
                    .await
                    .is_err()
                {
                    // The session ended; `detach` ends this request next.
                    continue;
                }
                unacked = 0;
            }
        }
    }

    fn failure(&self, chunk: &pb::LogChunk) -> Status {
        let q = &self.query;
        if chunk.missing {
            Status::not_found(format!(
                "log of job {} replica {} attempt {} not found on node {} (never written, or \
                 removed)",
                q.job_id, q.replica, q.attempt, self.node
            ))
        } else {
            Status::failed_precondition(format!("node {}: {}", self.node, chunk.error))
        }
    }

    async fn cancel(&self) {
        debug!(request = self.id, "Log caller went away; cancelling.");
        self.relay.lock().pending.remove(&self.id);
        let cancel = pb::LogCancel {
            request_id: self.id,
        };
        let _ = self
            .to_agent
            .send(scheduler_msg(pb::scheduler_message::Msg::LogCancel(cancel)))
            .await;
    }
}
