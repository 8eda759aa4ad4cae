//! The replay protocol: real arrivals and durations, one FIFO queue per policy, departures.
//!
//! Time moves by events from a binary heap. At equal times departures go first, so freed
//! capacity is visible to the arrivals of the same second. On every arrival and departure
//! the queue head is retried until it no longer fits (strict FIFO: a blocked head blocks
//! the jobs behind it). A job that would not fit even on the empty cluster is rejected at
//! arrival, so it cannot block the queue forever.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap, HashMap, VecDeque};
use std::time::Instant;

use serde::Serialize;

use crate::model::{NodeShape, Request, TimedJob};
use crate::placer::{BuildError, PlacementId, Placer, PlacerFactory, Policy};
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

pub(crate) struct Probe {
    pub(crate) empty: Box<dyn Placer>,
    pub(crate) fits: HashMap<(Request, u32), bool>,
}

impl Probe {
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

#[allow(clippy::too_many_arguments)]
pub fn run<F: PlacerFactory>(
    factory: &F,
    nodes: &[NodeShape],
    jobs: &[TimedJob],
    mix: &F::Mix,
    policy: Policy,
    seed: u64,
    options: ReplayOptions,
    on_progress: &(dyn Fn(u64) + Sync),
) -> Result<ReplayRun, BuildError> {
    let started = Instant::now();
    let mut cluster = factory.build(nodes, policy, seed, mix)?;
    let mut probe = Probe {
        empty: factory.build(nodes, policy, seed, mix)?,
        fits: HashMap::new(),
    };
    let capacity = cluster.total_gpu_milli().max(1) as f64;
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

    let mut queue: VecDeque<usize> = VecDeque::new();
    let mut running: HashMap<usize, Vec<PlacementId>> = HashMap::new();
    let mut start_time: Vec<Option<u64>> = vec![None; jobs.len()];
    let mut rejected = vec![false; jobs.len()];
    let mut samples = Vec::new();
    let (mut last_time, mut used_area) = (first, 0.0f64);
    let mut done = 0u64;

    while let Some(Reverse(event)) = events.pop() {
        // Sample the state as it was just before this event.
        while next_sample <= event.time as f64 && samples.len() < options.samples {
            samples.push(Sample {
                time: next_sample as u64 - first,
                used_gpu_pct: 100.0 * cluster.used_gpu_milli() as f64 / capacity,
                fragmented_gpu_pct: cluster.fragmented_gpu_milli().map(|f| 100.0 * f / capacity),
                queued_jobs: queue.len(),
                running_jobs: running.len(),
            });
            next_sample += step;
        }
        let span = (event.time - last_time) as f64;
        used_area += span * cluster.used_gpu_milli() as f64;
        last_time = event.time;

        match event.kind {
            EventKind::Arrival => {
                if probe.fits_empty(&jobs[event.job]) {
                    queue.push_back(event.job);
                } else {
                    rejected[event.job] = true;
                    done += 1;
                }
            }
            EventKind::Departure => {
                if let Some(ids) = running.remove(&event.job) {
                    for id in ids {
                        cluster.release(id);
                    }
                }
                done += 1;
                if done.is_multiple_of(1024) {
                    on_progress(1024);
                }
            }
        }
        while let Some(&head) = queue.front() {
            let job = &jobs[head];
            let Some(ids) = cluster.place_gang(&job.replica, job.replicas) else {
                break;
            };
            queue.pop_front();
            running.insert(head, ids);
            start_time[head] = Some(event.time);
            events.push(Reverse(Event {
                time: event.time + job.duration,
                kind: EventKind::Departure,
                job: head,
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
