//! The promise to operators: what `suanli-sim` replays is what the daemon does. The same job
//! stream (a slice of the Philly trace made into gangs of several priorities, some with
//! time limits, some preemptible) goes through the simulator's stream replay and through
//! the daemon's core in-process (real store, the clock set by the test, agents answering
//! over the core's own channels); every step's placements, GPUs and preemptions must match.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap, HashMap};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use suanli_engine::domain::DomainCatalog;
use suanli_engine::inventory::NodeInventory;
use suanli_engine::job::{GpuPolicy, GpuRequest, JobKind};
use suanli_engine::policy::PolicyKind;
use suanli_engine::queue::{Decision, QueueConfig};
use suanli_engine::quota::Quotas;
use suanli_engine::testing::H100Node;
use suanli_engine::{JobSpec, JobState};
use suanli_scheduler::auth::Identity;
use suanli_scheduler::clock::ManualClock;
use suanli_scheduler::core::{
    AgentCommand, AgentSession, Assignment, CoreConfig, CoreHandle, PreemptionConfig,
};
use suanli_scheduler::store::{Durability, EventRecord, NewJob, Store};
use suanli_sim::import::RowPolicy;
use suanli_sim::import::philly::load_jobs;
use suanli_sim::stream::{StreamEvent, StreamJob, StreamSetup, replay_stream};
use tokio::sync::{broadcast, mpsc};

const SEED: u64 = 7;
const JOBS: usize = 300;

/// One decision in a form both sides can state: a placement as the (node, GPU positions)
/// of each replica, or a preemption.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Seen {
    Placed {
        job: String,
        replicas: Vec<(String, Vec<u32>)>,
    },
    Preempted {
        victim: String,
        for_job: String,
    },
}

/// Twelve 8-GPU nodes on two leaves.
fn nodes() -> Vec<NodeInventory> {
    (0..12)
        .map(|i| {
            let leaf = if i < 6 { "leaf-1" } else { "leaf-2" };
            H100Node::new(&format!("n{i:02}"), 8)
                .fabric(leaf, "spine-1")
                .build()
        })
        .collect()
}

/// A mixing function, so priorities and limits vary from job to job but never from run
/// to run.
fn mix(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

/// `JOBS` Philly jobs from the shared trace (a synthetic stream of the same shape when the
/// trace is not there): more than 8 GPUs becomes a gang of 8-GPU replicas (at most four),
/// priority 0–2, the top one not preemptible, half with a time limit above their runtime.
fn stream() -> Vec<StreamJob> {
    let trace =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../../../shared/traces/philly/philly_jobs.csv");
    let raw: Vec<(u64, u64, u32)> = match load_jobs(&trace, RowPolicy::Skip) {
        Ok(imported) => {
            let mut jobs = imported.items;
            jobs.sort_by_key(|j| (j.submitted, j.line));
            let first = jobs.first().map_or(0, |j| j.submitted);
            jobs.iter()
                .take(JOBS)
                .map(|j| {
                    let arrival = u64::try_from(j.submitted - first).unwrap_or(0);
                    (arrival, j.duration.clamp(60, 86_400), j.num_gpus)
                })
                .collect()
        }
        Err(e) => {
            eprintln!("no Philly trace ({e}); a synthetic stream of the same shape");
            (0..JOBS as u64)
                .map(|i| {
                    let r = mix(i);
                    (
                        i * 90,
                        300 + r % 20_000,
                        [1, 1, 1, 2, 4, 8, 16, 32][(r % 8) as usize],
                    )
                })
                .collect()
        }
    };
    raw.into_iter()
        .enumerate()
        .map(|(i, (arrival_s, duration_s, gpus))| {
            let r = mix(SEED ^ i as u64);
            let mut spec = JobSpec::new(format!("philly-{i}"), JobKind::Training);
            spec.tenant = "research".into();
            let (replicas, per_replica) = if gpus > 8 {
                (gpus.div_ceil(8).min(4), 8)
            } else {
                (1, gpus)
            };
            spec.replicas = replicas;
            spec.gpu = Some(GpuRequest {
                policy: GpuPolicy::Exclusive { count: per_replica },
                models: vec![],
            });
            spec.resources.cpu_milli = 1000;
            spec.resources.memory_mib = 1024;
            spec.command = vec!["python".into(), "train.py".into()];
            spec.priority = (r % 3) as i32;
            spec.preemptible = spec.priority < 2;
            spec.time_limit_s = r
                .is_multiple_of(2)
                .then(|| duration_s + 60 + (r >> 8) % 600);
            StreamJob {
                arrival_s,
                duration_s,
                spec,
            }
        })
        .collect()
}

/// The simulator's side: each step's placements and preemptions.
fn simulated(inventories: &[NodeInventory], jobs: &[StreamJob]) -> Vec<(u64, String, Vec<Seen>)> {
    let setup = StreamSetup {
        policy: PolicyKind::Fgd,
        seed: SEED,
        quotas: Quotas::new(),
        queue: QueueConfig::default(),
    };
    let steps = replay_stream(inventories, jobs, &setup).expect("the stream replays");
    steps
        .into_iter()
        .map(|step| {
            let event = match step.event {
                StreamEvent::Arrive(id) => format!("arrive {id}"),
                StreamEvent::Finish(id) => format!("finish {id}"),
            };
            let seen = step
                .decisions
                .into_iter()
                .filter_map(|d| match d {
                    Decision::Place { job, placement, .. } => Some(Seen::Placed {
                        job: job.0,
                        replicas: placement
                            .replicas
                            .iter()
                            .map(|r| {
                                let mut gpus: Vec<u32> =
                                    r.claim.gpus.iter().map(|g| g.gpu).collect();
                                gpus.sort_unstable();
                                (r.node_name.clone(), gpus)
                            })
                            .collect(),
                    }),
                    Decision::Preempt {
                        victim, for_job, ..
                    } => Some(Seen::Preempted {
                        victim: victim.0,
                        for_job: for_job.0,
                    }),
                    Decision::Wait { .. } => None,
                })
                .collect();
            (step.time_s, event, seen)
        })
        .collect()
}

/// One node's agent as the core sees it: its session and the channel its work arrives on.
struct FakeAgent {
    session: AgentSession,
    name: String,
    gpu_positions: HashMap<String, u32>,
    rx: mpsc::UnboundedReceiver<AgentCommand>,
}

/// The daemon's side, driven the way the simulator drives its queue: the clock set to each
/// event's time, arrivals submitted, ends reported by the agents of the job's nodes, and
/// the pass after each event awaited before the next.
struct Daemon {
    core: CoreHandle,
    clock: Arc<ManualClock>,
    now_s: u64,
    events: broadcast::Receiver<EventRecord>,
    agents: Vec<FakeAgent>,
    /// Each running job's replicas, from the assignments agents received.
    running: BTreeMap<String, Vec<(usize, Assignment)>>,
}

impl Daemon {
    async fn start(dir: &Path, inventories: &[NodeInventory]) -> Daemon {
        let store = Store::open(dir, Durability::Normal).expect("store");
        let clock = Arc::new(ManualClock::new(0));
        let config = CoreConfig {
            policy: "fgd".into(),
            seed: SEED,
            // The clock jumps hours at a time; agents answer every command, so never lost.
            heartbeat_timeout: Duration::from_secs(100 * 365 * 86_400),
            max_attempts: 1_000,
            quotas: Quotas::new(),
            catalog: DomainCatalog::default(),
            preemption: PreemptionConfig::default(),
            clock: clock.clone(),
        };
        let (core, _thread) = suanli_scheduler::core::start(store, config).expect("core");
        let events = core.subscribe();
        let mut agents = Vec::new();
        for inventory in inventories {
            let registration = core
                .register(inventory.clone(), String::new(), Identity::Agent)
                .await
                .expect("registered");
            let session = AgentSession {
                node: inventory.cid.clone(),
                session_id: registration.session_id,
            };
            let (tx, rx) = mpsc::unbounded_channel();
            core.open_session(&session, Vec::new(), Vec::new(), tx)
                .await
                .expect("session");
            agents.push(FakeAgent {
                name: inventory.cid.node_name().expect("node").to_string(),
                gpu_positions: inventory
                    .gpus
                    .iter()
                    .enumerate()
                    .map(|(i, g)| (g.uuid.clone(), i as u32))
                    .collect(),
                session,
                rx,
            });
        }
        Daemon {
            core,
            clock,
            now_s: 0,
            events,
            agents,
            running: BTreeMap::new(),
        }
    }

    fn set_time(&mut self, time_s: u64) {
        assert!(time_s >= self.now_s, "time goes forward");
        self.clock.advance(Duration::from_secs(time_s - self.now_s));
        self.now_s = time_s;
    }

    /// Returns once the core has run the pass that follows everything sent so far. A query
    /// may share a batch with what was sent before it and be answered before that batch's
    /// pass; a second one, sent after that answer, is in a later batch, so it is answered
    /// after the pass (which runs to its end: the clock does not move during it).
    async fn settle(&self) {
        for _ in 0..2 {
            self.core.metrics().await.expect("metrics");
        }
    }

    async fn submit(&mut self, spec: JobSpec) -> String {
        let record = self
            .core
            .submit(NewJob {
                spec,
                request_id: None,
            })
            .await
            .expect("submitted");
        self.settle().await;
        record.id.0
    }

    /// Every replica of `job` exits 0 on its node.
    async fn finish(&mut self, job: &str) {
        let replicas = self.running.remove(job).expect("the job runs");
        for (agent, a) in &replicas {
            let session = &self.agents[*agent].session;
            self.core
                .work_started(session, a.job_id.clone(), a.replica, a.attempt);
            self.core.work_exited(
                session,
                a.job_id.clone(),
                a.replica,
                a.attempt,
                0,
                String::new(),
            );
        }
        self.settle().await;
    }

    /// What the last pass decided, from the events it published and the work agents got.
    fn decided(&mut self) -> Vec<Seen> {
        let mut assigned: BTreeMap<String, Vec<(usize, Assignment)>> = BTreeMap::new();
        for (i, agent) in self.agents.iter_mut().enumerate() {
            while let Ok(command) = agent.rx.try_recv() {
                if let AgentCommand::Assign(a) = command {
                    assigned
                        .entry(a.job_id.0.clone())
                        .or_default()
                        .push((i, *a));
                }
            }
        }
        let mut seen = Vec::new();
        while let Ok(event) = self.events.try_recv() {
            match event.to {
                JobState::Placed => {
                    let mut replicas = assigned.remove(&event.job_id.0).expect("assigned");
                    replicas.sort_by_key(|(_, a)| a.replica);
                    seen.push(Seen::Placed {
                        job: event.job_id.0.clone(),
                        replicas: replicas
                            .iter()
                            .map(|(agent, a)| {
                                let agent = &self.agents[*agent];
                                let mut gpus: Vec<u32> =
                                    a.gpu_uuids.iter().map(|u| agent.gpu_positions[u]).collect();
                                gpus.sort_unstable();
                                (agent.name.clone(), gpus)
                            })
                            .collect(),
                    });
                    self.running.insert(event.job_id.0.clone(), replicas);
                }
                JobState::Preempted => {
                    let for_job = event
                        .message
                        .strip_prefix("preempted for ")
                        .and_then(|m| m.split(':').next())
                        .expect("who it was preempted for")
                        .to_string();
                    self.running.remove(&event.job_id.0);
                    seen.push(Seen::Preempted {
                        victim: event.job_id.0.clone(),
                        for_job,
                    });
                }
                _ => {}
            }
        }
        seen
    }
}

#[tokio::test]
async fn the_daemon_decides_what_the_simulator_replays() {
    let inventories = nodes();
    let jobs = stream();
    let expected = simulated(&inventories, &jobs);
    assert!(
        expected
            .iter()
            .any(|(_, _, seen)| seen.iter().any(|s| matches!(s, Seen::Preempted { .. }))),
        "the stream exercises preemption"
    );
    assert!(
        expected.iter().any(|(_, _, seen)| seen
            .iter()
            .any(|s| matches!(s, Seen::Placed { replicas, .. } if replicas.len() > 1))),
        "the stream places gangs"
    );

    let dir = tempfile::tempdir().expect("tempdir");
    let mut daemon = Daemon::start(dir.path(), &inventories).await;
    // The same event order as the simulator: by time, ends before arrivals, then in order.
    let mut events: BinaryHeap<Reverse<(u64, u8, u64, usize)>> = jobs
        .iter()
        .enumerate()
        .map(|(i, j)| Reverse((j.arrival_s, 1, i as u64, i)))
        .collect();
    let mut started: HashMap<String, u64> = HashMap::new();
    let mut sequence = jobs.len() as u64;
    let mut step = 0;
    while let Some(Reverse((time_s, kind, _, index))) = events.pop() {
        let id = format!("j-{:08}", index + 1);
        let event = if kind == 0 {
            if started.get(&id).map(|s| s + jobs[index].duration_s) != Some(time_s) {
                continue;
            }
            started.remove(&id);
            daemon.set_time(time_s);
            daemon.finish(&id).await;
            format!("finish {id}")
        } else {
            daemon.set_time(time_s);
            let given = daemon.submit(jobs[index].spec.clone()).await;
            assert_eq!(given, id, "the daemon numbers jobs in submission order");
            format!("arrive {id}")
        };
        let seen = daemon.decided();
        for s in &seen {
            match s {
                Seen::Placed { job, .. } => {
                    let n: usize = job["j-".len()..].parse().expect("id");
                    started.insert(job.clone(), time_s);
                    sequence += 1;
                    events.push(Reverse((
                        time_s + jobs[n - 1].duration_s,
                        0,
                        sequence,
                        n - 1,
                    )));
                }
                Seen::Preempted { victim, .. } => {
                    started.remove(victim);
                }
            }
        }
        let (want_time, want_event, want_seen) = &expected[step];
        assert_eq!(
            (time_s, &event, &seen),
            (*want_time, want_event, want_seen),
            "step {step} differs"
        );
        step += 1;
    }
    assert_eq!(step, expected.len(), "as many steps on both sides");
    daemon.core.shutdown();
}
