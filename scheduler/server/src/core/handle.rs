//! The typed handle callers hold: one method per request to the core, each sending its
//! command and, where there is an answer, awaiting it.

use std::sync::mpsc as std_mpsc;

use suanli_engine::job::JobId;
use suanli_engine::{Cid, JobSpec, JobState, NodeInventory};
use tokio::sync::{broadcast, mpsc, oneshot};

use super::{
    AgentCommand, AgentSession, BoundPod, Command, CoreError, Explanation, JobUpdate, MetricsView,
    NodeVerdict, NodeView, PodGpus, PodJobView, Registration, Reply, ReportedExit, RunningReplica,
};
use crate::auth::Identity;
use crate::placement::PodRef;
use crate::store::{EventRecord, JobRecord, NewJob};

/// A cheap, clonable handle for sending commands to the core.
#[derive(Debug, Clone)]
pub struct CoreHandle {
    pub(super) tx: std_mpsc::Sender<Command>,
    pub(super) events: broadcast::Sender<EventRecord>,
}

impl CoreHandle {
    /// Queues a command that has no answer; a closed channel means the core is gone.
    fn send(&self, command: Command) {
        let _ = self.tx.send(command);
    }

    /// Sends a command built around a reply channel and waits for the answer.
    async fn ask<T>(&self, build: impl FnOnce(Reply<T>) -> Command) -> Result<T, CoreError> {
        let (reply, rx) = oneshot::channel();
        self.tx.send(build(reply)).map_err(|_| CoreError::Stopped)?;
        rx.await.map_err(|_| CoreError::Stopped)?
    }

    /// Events of every job, from now on.
    pub fn subscribe(&self) -> broadcast::Receiver<EventRecord> {
        self.events.subscribe()
    }

    // ---- jobs ---------------------------------------------------------------------------

    /// Stores a new job (or finds the one with its request id), once committed.
    pub async fn submit(&self, job: NewJob) -> Result<JobRecord, CoreError> {
        self.ask(|reply| Command::Submit { job, reply }).await
    }

    /// Cancels a job on behalf of `by`.
    pub async fn cancel(
        &self,
        id: JobId,
        by: Identity,
        reason: String,
    ) -> Result<JobRecord, CoreError> {
        self.ask(|reply| Command::Cancel {
            id,
            by,
            reason,
            reply,
        })
        .await
    }

    /// Changes what `update` sets of a job: priority, preemptibility, queue, time limit or
    /// an elastic job's size.
    pub async fn update(
        &self,
        id: JobId,
        by: Identity,
        update: JobUpdate,
    ) -> Result<JobRecord, CoreError> {
        self.ask(|reply| Command::Update {
            id,
            by,
            update,
            reply,
        })
        .await
    }

    /// Why a job is where it is, as `by` may see it.
    pub async fn explain(&self, id: JobId, by: Identity) -> Result<Explanation, CoreError> {
        self.ask(|reply| Command::Explain { id, by, reply }).await
    }

    // ---- nodes and agent sessions -------------------------------------------------------

    /// Registers a node (or registers it again) with the credential its agent presented; its
    /// replicas reach each other at the node's name.
    pub async fn register(
        &self,
        inventory: NodeInventory,
        credential: String,
        by: Identity,
    ) -> Result<Registration, CoreError> {
        self.register_at(inventory, credential, String::new(), by)
            .await
    }

    /// [`register`](Self::register), with the checked host the node's replicas reach each
    /// other at (empty: the node's name).
    pub async fn register_at(
        &self,
        inventory: NodeInventory,
        credential: String,
        advertise_addr: String,
        by: Identity,
    ) -> Result<Registration, CoreError> {
        self.ask(|reply| Command::Register {
            inventory: Box::new(inventory),
            credential,
            advertise_addr,
            by,
            reply,
        })
        .await
    }

    /// Opens a session; the core sends the agent its work through `tx`. `exits` are applied
    /// as exits before anything the agent does not run is judged lost.
    pub async fn open_session(
        &self,
        session: &AgentSession,
        running: Vec<RunningReplica>,
        exits: Vec<ReportedExit>,
        tx: mpsc::UnboundedSender<AgentCommand>,
    ) -> Result<(), CoreError> {
        self.ask(|reply| Command::SessionOpen {
            node: session.node.clone(),
            session_id: session.session_id.clone(),
            running,
            exits,
            tx,
            reply,
        })
        .await
    }

    /// The session's stream ended.
    pub fn session_closed(&self, session: AgentSession) {
        self.send(Command::SessionClosed {
            node: session.node,
            session_id: session.session_id,
        });
    }

    /// The agent is alive.
    pub fn heartbeat(&self, session: &AgentSession) {
        self.send(Command::Heartbeat {
            node: session.node.clone(),
            session_id: session.session_id.clone(),
        });
    }

    /// The node's hardware changed.
    pub fn inventory_update(&self, session: &AgentSession, inventory: NodeInventory) {
        self.send(Command::InventoryUpdate {
            node: session.node.clone(),
            session_id: session.session_id.clone(),
            inventory: Box::new(inventory),
        });
    }

    /// A replica the agent was assigned has started.
    pub fn work_started(&self, session: &AgentSession, job_id: JobId, replica: u32, attempt: u32) {
        self.send(Command::WorkStarted {
            node: session.node.clone(),
            session_id: session.session_id.clone(),
            job_id,
            replica,
            attempt,
        });
    }

    /// A replica on the agent's node has exited.
    pub fn work_exited(
        &self,
        session: &AgentSession,
        job_id: JobId,
        replica: u32,
        attempt: u32,
        exit_code: i32,
        message: String,
    ) {
        self.send(Command::WorkExited {
            node: session.node.clone(),
            session_id: session.session_id.clone(),
            job_id,
            replica,
            attempt,
            exit_code,
            message,
        });
    }

    /// What kubelet gave the pods on the agent's node.
    pub fn pod_devices(&self, session: &AgentSession, pods: Vec<PodGpus>) {
        self.send(Command::PodDevices {
            node: session.node.clone(),
            session_id: session.session_id.clone(),
            pods,
        });
    }

    /// Cordons or uncordons a node.
    pub async fn cordon(
        &self,
        node: Cid,
        cordoned: bool,
        reason: String,
    ) -> Result<NodeView, CoreError> {
        self.ask(|reply| Command::Cordon {
            node,
            cordoned,
            reason,
            reply,
        })
        .await
    }

    /// Cordons a node and evicts its work; `grace_ms` 0 for the default grace period.
    pub async fn drain(
        &self,
        node: Cid,
        reason: String,
        grace_ms: u32,
    ) -> Result<Vec<JobId>, CoreError> {
        self.ask(|reply| Command::Drain {
            node,
            reason,
            grace_ms,
            reply,
        })
        .await
    }

    /// Forgets a node; with `force`, even while work is bound to it. Answers the requeued jobs.
    pub async fn remove_node(&self, node: Cid, force: bool) -> Result<Vec<JobId>, CoreError> {
        self.ask(|reply| Command::RemoveNode { node, force, reply })
            .await
    }

    /// Every node with its usage.
    pub async fn nodes(&self) -> Result<Vec<NodeView>, CoreError> {
        self.ask(|reply| Command::Nodes { reply }).await
    }

    /// Counters for `/metrics`; takes the placement latencies gathered since the last call.
    pub async fn metrics(&self) -> Result<MetricsView, CoreError> {
        self.ask(|reply| Command::Metrics { reply }).await
    }

    // ---- Kubernetes pods ----------------------------------------------------------------

    /// The extender's filter and prioritize: how each named node could take a pod.
    pub async fn score_pod(
        &self,
        spec: JobSpec,
        nodes: Vec<String>,
    ) -> Result<Vec<NodeVerdict>, CoreError> {
        self.ask(|reply| Command::ScorePod {
            spec: Box::new(spec),
            nodes,
            reply,
        })
        .await
    }

    /// The extender's bind: holds GPUs on `node` for the pod.
    pub async fn bind_pod(
        &self,
        pod: PodRef,
        spec: JobSpec,
        node: String,
    ) -> Result<BoundPod, CoreError> {
        self.ask(|reply| Command::BindPod {
            pod,
            spec: Box::new(spec),
            node,
            reply,
        })
        .await
    }

    /// Ends a pod's job: the pod finished or is gone, or its binding failed.
    pub async fn end_pod(
        &self,
        job_id: JobId,
        state: JobState,
        reason: String,
        message: String,
    ) -> Result<(), CoreError> {
        self.ask(|reply| Command::EndPod {
            job_id,
            state,
            reason,
            message,
            reply,
        })
        .await
    }

    /// The extender's preempt: nodes where the pod fits once the named pods are evicted.
    pub async fn preempt_pod(
        &self,
        spec: JobSpec,
        candidates: Vec<(String, Vec<String>)>,
    ) -> Result<Vec<NodeVerdict>, CoreError> {
        self.ask(|reply| Command::PreemptPod {
            spec: Box::new(spec),
            candidates,
            reply,
        })
        .await
    }

    /// The jobs that stand for Kubernetes pods.
    pub async fn pod_jobs(&self) -> Result<Vec<PodJobView>, CoreError> {
        self.ask(|reply| Command::PodJobs { reply }).await
    }

    /// Stops the core; commands it has not applied yet are dropped.
    pub fn shutdown(&self) {
        self.send(Command::Shutdown);
    }
}
