//! The replay protocol driven by the engine's queue scheduler with per-tenant quotas.
//!
//! Same arrivals, durations, rejection rule and placement as [`crate::replay`], but the queue
//! is configured as the daemon's rather than as a FIFO: backfill and preemption are on, each
//! tenant has a guaranteed GPU quota, may borrow idle quota up to the whole cluster, and
//! borrowed work is preempted to give a tenant its guarantee back. A preempted job returns to
//! pending with the time it still has to run; its queueing delay is its completion minus
//! arrival minus duration, so lost work and every wait count.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap};
use std::time::Instant;

use suanli_engine::queue::{Decision, QueueConfig};
use suanli_engine::quota::{QuotaLimit, Quotas};

use crate::model::{NodeShape, TimedJob};
use crate::placer::Policy;
use crate::replay::{
    Probe, QueueReplayError, ReplayRun, job_id, job_index, queue_scheduler, queued_job,
};
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

/// Replays `jobs` through the queue scheduler with the given quotas, preemption on, placing as
/// the FIFO replay does.
pub fn run(
    nodes: &[NodeShape],
    jobs: &[TimedJob],
    setup: QuotaSetup,
    policy: Policy,
    seed: u64,
    on_progress: &(dyn Fn(u64) + Sync),
) -> Result<ReplayRun, QueueReplayError> {
    let started = Instant::now();
    let capacity_milli: u64 = nodes.iter().map(NodeShape::gpu_milli).sum();
    let quotas = match setup {
        QuotaSetup::None => Quotas::new(),
        QuotaSetup::Fair => fair_quotas(jobs, capacity_milli / 1000),
    };
    let mut scheduler = queue_scheduler(nodes, quotas, QueueConfig::default(), policy, seed)?;
    let mut probe = Probe::new(nodes, jobs, seed)?;

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
    let job_error = |job: usize, reason: String| QueueReplayError::Job { job, reason };

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
                    scheduler
                        .submit(queued_job(i, &jobs[i])?)
                        .map_err(|e| job_error(i, e.to_string()))?;
                }
                EventKind::Departure => {
                    if event.epoch != epoch[i] || completed_at[i].is_some() {
                        continue;
                    }
                    scheduler
                        .finish(&job_id(i))
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
                    let Some(i) = job_index(&job) else { continue };
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
                    let Some(i) = job_index(&victim) else {
                        continue;
                    };
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
