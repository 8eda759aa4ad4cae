//! A job stream replayed through the engine's queue the way the daemon runs it: the cluster
//! built from agents' inventories in CID order, each job queued from its spec (time limit as
//! its runtime bound, ids `j-00000001`… in submission order), and one pass after every
//! event. Jobs end `duration_s` after they start; a preempted job starts over.
//!
//! What it returns, step by step, is what the daemon must decide for the same stream: the
//! differential test in the scheduler's suite checks exactly that.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap};

use suanli_engine::NodeInventory;
use suanli_engine::cluster::Cluster;
use suanli_engine::domain::DomainCatalog;
use suanli_engine::job::{JobId, JobSpec};
use suanli_engine::links::LinkState;
use suanli_engine::policy::PolicyKind;
use suanli_engine::queue::{Decision, QueueConfig, QueuedJob, Runtime, Scheduler};
use suanli_engine::quota::Quotas;
use suanli_engine::workload::SingleReplicaPolicy;

/// One job of the stream.
#[derive(Debug, Clone)]
pub struct StreamJob {
    pub arrival_s: u64,
    /// How long it runs once started.
    pub duration_s: u64,
    pub spec: JobSpec,
}

/// What happened at a step.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StreamEvent {
    /// A job was submitted.
    Arrive(JobId),
    /// A running job ended by itself.
    Finish(JobId),
}

/// One event and the decisions of the pass that followed it.
#[derive(Debug, Clone, PartialEq)]
pub struct StreamStep {
    pub time_s: u64,
    pub event: StreamEvent,
    pub decisions: Vec<Decision>,
}

/// How the queue is set up, as the daemon's configuration sets it.
#[derive(Debug, Clone)]
pub struct StreamSetup {
    pub policy: PolicyKind,
    pub seed: u64,
    pub quotas: Quotas,
    pub queue: QueueConfig,
}

/// Why a stream cannot be replayed.
#[derive(Debug, thiserror::Error)]
pub enum StreamError {
    #[error("cluster: {0}")]
    Cluster(String),
    #[error("job {index} (arriving at {arrival_s} s): {message}")]
    Job {
        index: usize,
        arrival_s: u64,
        message: String,
    },
}

/// The id the daemon gives the `n`-th submitted job (from 1).
pub fn job_id(n: usize) -> JobId {
    JobId(format!("j-{n:08}"))
}

/// Replays `jobs` (in submission order; arrivals must not go back in time) on the nodes of
/// `inventories`.
pub fn replay_stream(
    inventories: &[NodeInventory],
    jobs: &[StreamJob],
    setup: &StreamSetup,
) -> Result<Vec<StreamStep>, StreamError> {
    let mut sorted = inventories.to_vec();
    sorted.sort_by(|a, b| a.cid.cmp(&b.cid));
    let cluster =
        Cluster::from_inventories(&sorted).map_err(|e| StreamError::Cluster(e.to_string()))?;
    let links = LinkState::from_inventories(&sorted, None);
    let mut queue = Scheduler::new(
        cluster,
        links,
        DomainCatalog::default(),
        setup.quotas.clone(),
        setup.queue,
    );
    queue.set_single_replica_policy(SingleReplicaPolicy::new(setup.policy, setup.seed));

    // (time, finishes before arrivals, sequence): ends free room for what arrives then.
    let mut events: BinaryHeap<Reverse<(u64, u8, u64, usize)>> = BinaryHeap::new();
    for (i, job) in jobs.iter().enumerate() {
        if i > 0 && job.arrival_s < jobs[i - 1].arrival_s {
            return Err(StreamError::Job {
                index: i,
                arrival_s: job.arrival_s,
                message: "arrives before the job ahead of it".into(),
            });
        }
        events.push(Reverse((job.arrival_s, 1, i as u64, i)));
    }
    // The start each running job's pending finish belongs to; a preempted job's is stale.
    let mut started: BTreeMap<usize, u64> = BTreeMap::new();
    let mut sequence = jobs.len() as u64;
    let mut steps = Vec::new();
    while let Some(Reverse((time_s, kind, _, index))) = events.pop() {
        let id = job_id(index + 1);
        let event = if kind == 0 {
            let Some(&start) = started.get(&index) else {
                continue;
            };
            if start.saturating_add(jobs[index].duration_s) != time_s {
                continue;
            }
            started.remove(&index);
            if queue.finish(&id).is_err() {
                continue;
            }
            StreamEvent::Finish(id)
        } else {
            let job = &jobs[index];
            let queued =
                QueuedJob::from_spec(id.clone(), &job.spec, time_s, Runtime::of_spec(&job.spec))
                    .map_err(|e| StreamError::Job {
                        index,
                        arrival_s: time_s,
                        message: e.to_string(),
                    })?;
            queue.submit(queued).map_err(|e| StreamError::Job {
                index,
                arrival_s: time_s,
                message: e.to_string(),
            })?;
            StreamEvent::Arrive(id)
        };
        // As the daemon: a pass only when something may have changed, run to its end (its
        // clock does not move during a pass).
        let decisions = if queue.has_work() {
            queue.queue_pass_until(time_s, || true).0
        } else {
            Vec::new()
        };
        for decision in &decisions {
            match decision {
                Decision::Place { job, .. } => {
                    let Some(n) = job_index(job) else { continue };
                    started.insert(n, time_s);
                    sequence += 1;
                    events.push(Reverse((
                        time_s.saturating_add(jobs[n].duration_s),
                        0,
                        sequence,
                        n,
                    )));
                }
                Decision::Preempt { victim, .. } => {
                    if let Some(n) = job_index(victim) {
                        started.remove(&n);
                    }
                }
                Decision::Wait { .. } => {}
            }
        }
        steps.push(StreamStep {
            time_s,
            event,
            decisions,
        });
    }
    Ok(steps)
}

/// The stream position of a job id made by [`job_id`].
fn job_index(id: &JobId) -> Option<usize> {
    id.0.strip_prefix("j-")?
        .parse::<usize>()
        .ok()?
        .checked_sub(1)
}
