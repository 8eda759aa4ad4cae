//! The replay protocol driven by the engine's queue scheduler with per-tenant quotas.
//!
//! Same arrivals, durations and rejection rule as [`crate::replay`], but the FIFO queue is
//! replaced by `suanli_engine::queue::Scheduler`: each tenant has a guaranteed GPU quota,
//! may borrow idle quota up to the whole cluster, and borrowed work is preempted to give
//! a tenant its guarantee back. A preempted job returns to pending with the time it still
//! has to run; its queueing delay is its completion minus arrival minus duration, so lost
//! work and every wait count.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap, HashMap};
use std::time::Instant;

use suanli_engine::cluster::Cluster;
use suanli_engine::domain::DomainCatalog;
use suanli_engine::gang::GangRequest;
use suanli_engine::job::JobId;
use suanli_engine::links::LinkState;
use suanli_engine::policy::{PolicyError, PolicyKind};
use suanli_engine::queue::{Decision, QueueConfig, QueuedJob, Runtime, Scheduler};
use suanli_engine::quota::{QuotaLimit, Quotas};
use suanli_engine::workload::SingleReplicaPolicy;

use crate::engine::{EngineFactory, engine_request};
use crate::model::{NodeShape, Request, TimedJob};
use crate::placer::{BuildError, PlacerFactory, Policy};
use crate::replay::{Probe, ReplayRun};
use crate::stats::Distribution;

/// How tenants' quotas are set for a queue-scheduler run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QuotaSetup {
    /// No quotas: the same queue (backfill included), so quotas' effect can be told apart.
    None,
    /// [`fair_quotas`].
    Fair,
}

impl QuotaSetup {
    pub fn name(self) -> &'static str {
        match self {
            QuotaSetup::None => "none",
            QuotaSetup::Fair => "fair",
        }
    }
}

/// Each tenant's guarantee in proportion to its share of the jobs' total GPU-time (largest
/// remainder, so the guarantees sum to the cluster's whole GPUs); every tenant may grow to
/// the whole cluster by borrowing.
pub fn fair_quotas(jobs: &[TimedJob], cluster_gpus: u64) -> Quotas {
    let mut gpu_time: BTreeMap<&str, u128> = BTreeMap::new();
    for job in jobs {
        *gpu_time.entry(job.tenant.as_str()).or_default() +=
            u128::from(job.total_gpu_milli()) * u128::from(job.duration.max(1));
    }
    let total: u128 = gpu_time.values().sum::<u128>().max(1);
    let gpus = u128::from(cluster_gpus);
    let mut shares: Vec<(&str, u64, u128)> = gpu_time
        .iter()
        .map(|(t, g)| {
            let exact = g * gpus;
            (*t, (exact / total) as u64, exact % total)
        })
        .collect();
    let given: u64 = shares.iter().map(|s| s.1).sum();
    let mut by_remainder: Vec<usize> = (0..shares.len()).collect();
    by_remainder.sort_by(|a, b| shares[*b].2.cmp(&shares[*a].2).then(a.cmp(b)));
    for &i in by_remainder
        .iter()
        .take(cluster_gpus.saturating_sub(given) as usize)
    {
        shares[i].1 += 1;
    }
    let mut quotas = Quotas::new();
    for (tenant, guaranteed, _) in shares {
        quotas.set_other_models(tenant, QuotaLimit::gpus(guaranteed, Some(cluster_gpus)));
    }
    quotas
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum EventKind {
    Departure,
    Arrival,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
struct Event {
    time: u64,
    kind: EventKind,
    job: usize,
    /// Which start of the job this departure belongs to; a preemption makes it stale.
    epoch: u32,
}

/// Why a queue-scheduler replay could not run.
#[derive(Debug, thiserror::Error)]
pub enum QueueReplayError {
    #[error("cannot build the queue scheduler's cluster: {0}")]
    Cluster(String),
    /// The rejection probe (an engine placer on the empty cluster).
    #[error(transparent)]
    Probe(#[from] BuildError),
    #[error("job {job} (trace order): {reason}")]
    Job { job: usize, reason: String },
}

/// Replays `jobs` through the queue scheduler with the given quotas, preemption on. Jobs of
/// one replica go where `policy` puts them (with its workload learnt from the jobs as they
/// arrive, seeded by `seed`), as in the scheduler daemon; gangs go through the gang planner.
pub fn run(
    nodes: &[NodeShape],
    jobs: &[TimedJob],
    setup: QuotaSetup,
    policy: Policy,
    seed: u64,
    on_progress: &(dyn Fn(u64) + Sync),
) -> Result<ReplayRun, QueueReplayError> {
    let started = Instant::now();
    let cluster = Cluster::from_shapes(&crate::engine::engine_nodes(nodes))
        .map_err(|e| QueueReplayError::Cluster(e.to_string()))?;
    let capacity_milli = cluster.total_gpu_milli();
    let quotas = match setup {
        QuotaSetup::None => Quotas::new(),
        QuotaSetup::Fair => fair_quotas(jobs, capacity_milli / 1000),
    };
    let mut scheduler = Scheduler::new(
        cluster,
        LinkState::new(),
        DomainCatalog::default(),
        quotas,
        QueueConfig::default(),
    );
    let kind: PolicyKind = policy
        .name()
        .parse()
        .map_err(|e: PolicyError| QueueReplayError::Cluster(e.to_string()))?;
    scheduler.set_single_replica_policy(SingleReplicaPolicy::new(kind, seed));
    let factory = EngineFactory;
    let replicas: Vec<Request> = jobs.iter().map(|j| j.replica.clone()).collect();
    let mix = factory
        .mix(&replicas)
        .map_err(|e| QueueReplayError::Cluster(e.0))?;
    let mut probe = Probe {
        empty: factory.build(nodes, Policy::BestFit, seed, &mix)?,
        fits: HashMap::new(),
    };

    let mut events: BinaryHeap<Reverse<Event>> = jobs
        .iter()
        .enumerate()
        .map(|(i, j)| {
            Reverse(Event {
                time: j.arrival,
                kind: EventKind::Arrival,
                job: i,
                epoch: 0,
            })
        })
        .collect();
    let first = jobs.iter().map(|j| j.arrival).min().unwrap_or(0);
    let mut remaining: Vec<u64> = jobs.iter().map(|j| j.duration).collect();
    let mut epoch = vec![0u32; jobs.len()];
    let mut started_at: Vec<Option<u64>> = vec![None; jobs.len()];
    let mut completed_at: Vec<Option<u64>> = vec![None; jobs.len()];
    let mut rejected = vec![false; jobs.len()];
    let mut preemptions = 0usize;
    let (mut used_milli, mut used_area, mut last_time) = (0u64, 0.0f64, first);
    let mut done = 0u64;
    let id_of = |i: usize| JobId(i.to_string());
    let job_error = |job: usize, reason: String| QueueReplayError::Job { job, reason };
    let index_of = |id: &JobId| id.0.parse::<usize>().ok();

    while let Some(Reverse(head)) = events.pop() {
        let now = head.time;
        used_area += (now - last_time) as f64 * used_milli as f64;
        last_time = now;
        // Every event of this second, then one queue pass: departures sort first.
        let mut batch = vec![head];
        while let Some(Reverse(next)) = events.peek().copied()
            && next.time == now
        {
            events.pop();
            batch.push(next);
        }
        for event in batch {
            let i = event.job;
            match event.kind {
                EventKind::Arrival => {
                    if !probe.fits_empty(&jobs[i]) {
                        rejected[i] = true;
                        done += 1;
                        continue;
                    }
                    let request = engine_request(&jobs[i].replica).map_err(|e| job_error(i, e))?;
                    let job = QueuedJob {
                        id: id_of(i),
                        gang: GangRequest::new(request, jobs[i].replicas),
                        tenant: jobs[i].tenant.clone(),
                        queue: "default".into(),
                        priority: 0,
                        preemptible: true,
                        submitted_s: jobs[i].arrival,
                        runtime: Runtime {
                            expected_s: Some(jobs[i].duration),
                            limit_s: None,
                        },
                    };
                    scheduler
                        .submit(job)
                        .map_err(|e| job_error(i, e.to_string()))?;
                }
                EventKind::Departure => {
                    if event.epoch != epoch[i] || completed_at[i].is_some() {
                        continue;
                    }
                    scheduler
                        .finish(&id_of(i))
                        .map_err(|e| job_error(i, e.to_string()))?;
                    used_milli -= jobs[i].total_gpu_milli();
                    completed_at[i] = Some(now);
                    done += 1;
                    if done.is_multiple_of(1024) {
                        on_progress(1024);
                    }
                }
            }
        }
        for decision in scheduler.queue_pass(now) {
            match decision {
                Decision::Place { job, .. } => {
                    let Some(i) = index_of(&job) else { continue };
                    epoch[i] += 1;
                    started_at[i] = Some(now);
                    used_milli += jobs[i].total_gpu_milli();
                    events.push(Reverse(Event {
                        time: now + remaining[i],
                        kind: EventKind::Departure,
                        job: i,
                        epoch: epoch[i],
                    }));
                }
                Decision::Preempt { victim, .. } => {
                    let Some(i) = index_of(&victim) else { continue };
                    if let Some(start) = started_at[i].take() {
                        remaining[i] = remaining[i].saturating_sub(now - start);
                    }
                    epoch[i] += 1;
                    used_milli -= jobs[i].total_gpu_milli();
                    preemptions += 1;
                }
                Decision::Wait { .. } => {}
            }
        }
    }
    on_progress(done % 1024);

    let (delays, jcts, tenants) = crate::replay::outcomes(jobs, &rejected, |i, job| {
        completed_at[i].map(|end| {
            let jct = (end - job.arrival) as f64;
            (jct - job.duration as f64, jct)
        })
    });
    let makespan = last_time.saturating_sub(first);
    Ok(ReplayRun {
        policy,
        seed,
        wall_ms: started.elapsed().as_secs_f64() * 1000.0,
        jobs: jobs.len(),
        completed: delays.len(),
        rejected: rejected.iter().filter(|r| **r).count(),
        makespan_s: makespan,
        queueing_delay_s: Distribution::of(&delays),
        jct_s: Distribution::of(&jcts),
        mean_utilization_pct: if makespan > 0 {
            100.0 * used_area / (makespan as f64 * capacity_milli.max(1) as f64)
        } else {
            0.0
        },
        mean_fragmented_pct: None,
        tenants,
        quotas: Some(setup.name()),
        preemptions,
        samples: Vec::new(),
        delays,
    })
}
