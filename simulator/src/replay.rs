//! The replay protocol: real arrivals and durations, the engine's queue run as strict FIFO,
//! departures.
//!
//! Time moves by events from a binary heap. At equal times departures go first, so freed
//! capacity is visible to the arrivals of the same second. Jobs wait in
//! `suanli_engine::queue::Scheduler` configured as a FIFO queue ([`fifo_config`]): one pass
//! after every arrival and departure, and the first job that cannot start holds every job
//! behind it. Jobs of one replica go where the policy puts them, gangs through the gang
//! planner, as in the scheduler daemon. A job that would not fit even on the empty cluster is
//! rejected at arrival, so it cannot block the queue forever.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap, HashMap};
use std::time::Instant;

use serde::Serialize;
use suanli_engine::cluster::Cluster;
use suanli_engine::domain::DomainCatalog;
use suanli_engine::fgd::{DEFAULT_POPULARITY_PCT, WorkloadMix};
use suanli_engine::gang::{GangPlacement, GangRequest};
use suanli_engine::job::JobId;
use suanli_engine::links::LinkState;
use suanli_engine::policy::{PolicyError, PolicyKind};
use suanli_engine::queue::{Decision, QueueConfig, QueuedJob, Runtime, Scheduler};
use suanli_engine::quota::Quotas;
use suanli_engine::workload::SingleReplicaPolicy;

use crate::engine::{EngineFactory, engine_nodes, engine_request};
use crate::model::{NodeShape, Request, TimedJob};
use crate::placer::{BuildError, Placer, PlacerFactory, Policy};
use crate::stats::Distribution;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum EventKind {
    // Declared first so it sorts first at equal times.
    Departure,
    Arrival,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
struct Event {
    time: u64,
    kind: EventKind,
    job: usize,
}

/// One point of the utilization series.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct Sample {
    pub time: u64,
    pub used_gpu_pct: f64,
    pub fragmented_gpu_pct: Option<f64>,
    pub queued_jobs: usize,
    pub running_jobs: usize,
}

#[derive(Debug, Clone, Serialize)]
pub struct TenantStats {
    pub jobs: usize,
    pub rejected: usize,
    pub gpu_hours: f64,
    pub queueing_delay_s: Distribution,
    pub jct_s: Distribution,
}

#[derive(Debug, Clone, Serialize)]
pub struct ReplayRun {
    pub policy: Policy,
    pub seed: u64,
    pub wall_ms: f64,
    pub jobs: usize,
    pub completed: usize,
    /// Jobs that do not fit even the empty cluster.
    pub rejected: usize,
    pub makespan_s: u64,
    pub queueing_delay_s: Distribution,
    pub jct_s: Distribution,
    /// Time-weighted mean of allocated GPU %, from the first arrival to the last departure.
    pub mean_utilization_pct: f64,
    pub mean_fragmented_pct: Option<f64>,
    pub tenants: BTreeMap<String, TenantStats>,
    /// Quota mode of a queue-scheduler run (`fair`); absent for the plain FIFO replay.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub quotas: Option<&'static str>,
    /// Running jobs stopped to give quota back (queue-scheduler runs only).
    #[serde(skip)]
    pub preemptions: usize,
    #[serde(skip)]
    pub samples: Vec<Sample>,
    #[serde(skip)]
    pub delays: Vec<f64>,
}

impl ReplayRun {
    /// The run's name in tables and JSON: the policy, or the queue's quota mode.
    pub fn label(&self) -> String {
        match self.quotas {
            Some(mode) => format!("queue-quotas-{mode}"),
            None => self.policy.name().to_string(),
        }
    }
}

#[derive(Debug, Clone, Copy)]
pub struct ReplayOptions {
    /// How many evenly spaced samples of utilization and fragmentation to keep.
    pub samples: usize,
}

impl Default for ReplayOptions {
    fn default() -> Self {
        ReplayOptions { samples: 400 }
    }
}

/// Why a replay through the engine's queue could not run.
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

/// The engine's queue as a FIFO: strict order, and neither preemption nor backfill, so no
/// job ever starts ahead of or displaces one that arrived before it.
pub fn fifo_config() -> QueueConfig {
    QueueConfig {
        strict_order: true,
        preemption: false,
        backfill: false,
        ..QueueConfig::default()
    }
}

/// The engine's queue over `nodes`, with `quotas` and `config`. Jobs of one plain replica go
/// where `policy` puts them (its workload learnt from the jobs as they are submitted, its ties
/// broken by `seed`), as in the scheduler daemon; gangs go through the gang planner.
pub(crate) fn queue_scheduler(
    nodes: &[NodeShape],
    quotas: Quotas,
    config: QueueConfig,
    policy: Policy,
    seed: u64,
) -> Result<Scheduler, QueueReplayError> {
    let cluster = Cluster::from_shapes(&engine_nodes(nodes))
        .map_err(|e| QueueReplayError::Cluster(e.to_string()))?;
    let mut scheduler = Scheduler::new(
        cluster,
        LinkState::new(),
        DomainCatalog::default(),
        quotas,
        config,
    );
    let kind: PolicyKind = policy
        .name()
        .parse()
        .map_err(|e: PolicyError| QueueReplayError::Cluster(e.to_string()))?;
    scheduler.set_single_replica_policy(SingleReplicaPolicy::new(kind, seed));
    Ok(scheduler)
}

/// The queue's id of the job at `index` in trace order. Zero-padded: the queue breaks ties
/// of equal submission time by id, and padded ids sort as the indices do.
pub(crate) fn job_id(index: usize) -> JobId {
    JobId(format!("{index:020}"))
}

/// The trace index a queue id stands for.
pub(crate) fn job_index(id: &JobId) -> Option<usize> {
    id.0.parse().ok()
}

/// Job `index` of the trace as the queue takes it: one tenant's gang in the default queue, at
/// equal priority, submitted at its arrival, with its real duration as the expected runtime.
/// Preemptible, so it may borrow quota; a queue without preemption never stops it.
pub(crate) fn queued_job(index: usize, job: &TimedJob) -> Result<QueuedJob, QueueReplayError> {
    let request = engine_request(&job.replica)
        .map_err(|reason| QueueReplayError::Job { job: index, reason })?;
    Ok(QueuedJob {
        id: job_id(index),
        gang: GangRequest::new(request, job.replicas),
        tenant: job.tenant.clone(),
        queue: "default".into(),
        priority: 0,
        preemptible: true,
        submitted_s: job.arrival,
        runtime: Runtime {
            expected_s: Some(job.duration),
            limit_s: None,
        },
    })
}

/// GPU-milli a placement holds (a whole GPU counts 1000).
pub(crate) fn placed_gpu_milli(placement: &GangPlacement) -> u64 {
    placement
        .replicas
        .iter()
        .flat_map(|r| r.claim.gpus.iter())
        .map(|g| u64::from(g.milli))
        .sum()
}

/// Tells jobs that cannot fit even the empty cluster, which are rejected at arrival.
pub(crate) struct Probe {
    empty: Box<dyn Placer>,
    fits: HashMap<(Request, u32), bool>,
}

impl Probe {
    /// A best-fit placer on the empty `nodes`.
    pub(crate) fn new(
        nodes: &[NodeShape],
        jobs: &[TimedJob],
        seed: u64,
    ) -> Result<Probe, QueueReplayError> {
        let factory = EngineFactory;
        let replicas: Vec<Request> = jobs.iter().map(|j| j.replica.clone()).collect();
        let mix = factory
            .mix(&replicas)
            .map_err(|e| QueueReplayError::Cluster(e.0))?;
        Ok(Probe {
            empty: factory.build(nodes, Policy::BestFit, seed, &mix)?,
            fits: HashMap::new(),
        })
    }

    pub(crate) fn fits_empty(&mut self, job: &TimedJob) -> bool {
        let key = (job.replica.clone(), job.replicas);
        if let Some(&fits) = self.fits.get(&key) {
            return fits;
        }
        let fits = match self.empty.place_gang(&job.replica, job.replicas) {
            Some(ids) => {
                for id in ids {
                    self.empty.release(id);
                }
                true
            }
            None => false,
        };
        self.fits.insert(key, fits);
        fits
    }
}

/// The workload the fragmentation measure expects: every job's replica, as the fill protocol
/// builds it, so the measure is the same whatever mix the placing policy learnt.
fn fragmentation_mix(jobs: &[TimedJob]) -> Result<WorkloadMix, QueueReplayError> {
    let requests = jobs
        .iter()
        .enumerate()
        .map(|(i, j)| {
            engine_request(&j.replica).map_err(|reason| QueueReplayError::Job { job: i, reason })
        })
        .collect::<Result<Vec<_>, _>>()?;
    WorkloadMix::typical(&requests, DEFAULT_POPULARITY_PCT)
        .map_err(|e| QueueReplayError::Cluster(e.to_string()))
}

/// Queueing delays and JCTs of the jobs that completed, overall and per tenant.
/// `timing(i, job)` gives a completed job's (queueing delay, JCT) in seconds.
pub(crate) fn outcomes(
    jobs: &[TimedJob],
    rejected: &[bool],
    timing: impl Fn(usize, &TimedJob) -> Option<(f64, f64)>,
) -> (Vec<f64>, Vec<f64>, BTreeMap<String, TenantStats>) {
    let mut delays = Vec::new();
    let mut jcts = Vec::new();
    #[derive(Default)]
    struct TenantAcc {
        delays: Vec<f64>,
        jcts: Vec<f64>,
        jobs: usize,
        gpu_hours: f64,
        rejected: usize,
    }
    let mut per_tenant: BTreeMap<String, TenantAcc> = BTreeMap::new();
    for (i, job) in jobs.iter().enumerate() {
        let entry = per_tenant.entry(job.tenant.clone()).or_default();
        entry.jobs += 1;
        if rejected[i] {
            entry.rejected += 1;
            continue;
        }
        if let Some((delay, jct)) = timing(i, job) {
            delays.push(delay);
            jcts.push(jct);
            entry.delays.push(delay);
            entry.jcts.push(jct);
            entry.gpu_hours += job.total_gpu_milli() as f64 / 1000.0 * job.duration as f64 / 3600.0;
        }
    }
    let tenants = per_tenant
        .into_iter()
        .map(|(name, acc)| {
            (
                name,
                TenantStats {
                    jobs: acc.jobs,
                    rejected: acc.rejected,
                    gpu_hours: acc.gpu_hours,
                    queueing_delay_s: Distribution::of(&acc.delays),
                    jct_s: Distribution::of(&acc.jcts),
                },
            )
        })
        .collect();
    (delays, jcts, tenants)
}

/// Replays `jobs` on `nodes` through the engine's queue as a FIFO ([`fifo_config`]), single
/// replicas placed by `policy` with ties broken by `seed`.
pub fn run(
    nodes: &[NodeShape],
    jobs: &[TimedJob],
    policy: Policy,
    seed: u64,
    options: ReplayOptions,
    on_progress: &(dyn Fn(u64) + Sync),
) -> Result<ReplayRun, QueueReplayError> {
    let started = Instant::now();
    let mut scheduler = queue_scheduler(nodes, Quotas::new(), fifo_config(), policy, seed)?;
    let mut probe = Probe::new(nodes, jobs, seed)?;
    let mix = fragmentation_mix(jobs)?;
    let capacity = scheduler.cluster().total_gpu_milli().max(1) as f64;
    let mut events: BinaryHeap<Reverse<Event>> = jobs
        .iter()
        .enumerate()
        .map(|(i, j)| {
            Reverse(Event {
                time: j.arrival,
                kind: EventKind::Arrival,
                job: i,
            })
        })
        .collect();
    let first = jobs.iter().map(|j| j.arrival).min().unwrap_or(0);
    let horizon = jobs
        .iter()
        .map(|j| j.arrival + j.duration)
        .max()
        .unwrap_or(0)
        .max(first + 1);
    let step = ((horizon - first) as f64 / options.samples.max(1) as f64).max(1.0);
    let mut next_sample = first as f64;

    let mut start_time: Vec<Option<u64>> = vec![None; jobs.len()];
    let mut rejected = vec![false; jobs.len()];
    let mut samples = Vec::new();
    let (mut last_time, mut used_milli, mut used_area) = (first, 0u64, 0.0f64);
    let mut done = 0u64;
    let job_error = |job: usize, e: &dyn std::fmt::Display| QueueReplayError::Job {
        job,
        reason: e.to_string(),
    };

    while let Some(Reverse(event)) = events.pop() {
        // Sample the state as it was just before this event.
        while next_sample <= event.time as f64 && samples.len() < options.samples {
            samples.push(Sample {
                time: next_sample as u64 - first,
                used_gpu_pct: 100.0 * used_milli as f64 / capacity,
                fragmented_gpu_pct: Some(100.0 * mix.fragmentation(scheduler.cluster()) / capacity),
                queued_jobs: scheduler.pending().count(),
                running_jobs: scheduler.running().count(),
            });
            next_sample += step;
        }
        let now = event.time;
        used_area += (now - last_time) as f64 * used_milli as f64;
        last_time = now;

        let i = event.job;
        match event.kind {
            EventKind::Arrival => {
                if probe.fits_empty(&jobs[i]) {
                    scheduler
                        .submit(queued_job(i, &jobs[i])?)
                        .map_err(|e| job_error(i, &e))?;
                } else {
                    rejected[i] = true;
                    done += 1;
                }
            }
            EventKind::Departure => {
                let ended = scheduler.finish(&job_id(i)).map_err(|e| job_error(i, &e))?;
                used_milli -= placed_gpu_milli(&ended.placement);
                done += 1;
                if done.is_multiple_of(1024) {
                    on_progress(1024);
                }
            }
        }
        // A pass after every event, not once per second: a departure's capacity goes to the
        // head before the next event of the same second frees more.
        for decision in scheduler.queue_pass(now) {
            let Decision::Place { job, placement, .. } = decision else {
                continue;
            };
            let Some(placed) = job_index(&job) else {
                continue;
            };
            used_milli += placed_gpu_milli(&placement);
            start_time[placed] = Some(now);
            events.push(Reverse(Event {
                time: now + jobs[placed].duration,
                kind: EventKind::Departure,
                job: placed,
            }));
        }
    }
    on_progress(done % 1024);

    let (delays, jcts, tenants) = outcomes(jobs, &rejected, |i, job| {
        start_time[i].map(|start| {
            let delay = (start - job.arrival) as f64;
            (delay, delay + job.duration as f64)
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
            100.0 * used_area / (makespan as f64 * capacity)
        } else {
            0.0
        },
        // Samples are evenly spaced in time, so their mean is the time-weighted mean.
        mean_fragmented_pct: {
            let frags: Vec<f64> = samples
                .iter()
                .filter_map(|s| s.fragmented_gpu_pct)
                .collect();
            (!frags.is_empty()).then(|| frags.iter().sum::<f64>() / frags.len() as f64)
        },
        tenants,
        quotas: None,
        preemptions: 0,
        samples,
        delays,
    })
}
