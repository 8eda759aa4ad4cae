//! The fill and replay protocols through the real engine.

use std::path::Path;

use suanli_sim::engine::EngineFactory;
use suanli_sim::fill::{self, FillInput};
use suanli_sim::import::RowPolicy;
use suanli_sim::import::openb::{load_nodes, load_pods};
use suanli_sim::model::{Request, TimedJob};
use suanli_sim::placer::{PlacerFactory, Policy};
use suanli_sim::replay::{self, ReplayOptions};
use suanli_sim::sources::parse_cluster_shape;
use suanli_sim::synthetic::{self, SyntheticConfig};

fn small() -> SyntheticConfig {
    SyntheticConfig {
        big_nodes: 4,
        jobs: 300,
        ..SyntheticConfig::default()
    }
}

fn synthetic_input(factory: &EngineFactory) -> FillInput<<EngineFactory as PlacerFactory>::Mix> {
    let config = small();
    let pods = synthetic::pods(&config)
        .into_iter()
        .map(|p| p.request)
        .collect();
    FillInput::new(factory, synthetic::cluster(&config), pods).expect("synthetic mix")
}

#[test]
fn same_seed_gives_identical_fill_results() {
    let factory = EngineFactory;
    let input = synthetic_input(&factory);
    for policy in Policy::ALL {
        let a = fill::run_one(&factory, &input, policy, 7, 1.3).expect("run");
        let b = fill::run_one(&factory, &input, policy, 7, 1.3).expect("run");
        assert_eq!(
            a.alloc_pct_by_arrived_pct, b.alloc_pct_by_arrived_pct,
            "{policy}"
        );
        assert_eq!(a.pods_dropped, b.pods_dropped, "{policy}");
        assert!(
            a.alloc_pct_at_100.is_some(),
            "1.3x tune crosses 100% arrived"
        );
    }
    let a = fill::run_one(&factory, &input, Policy::Random, 7, 1.3).expect("run");
    let c = fill::run_one(&factory, &input, Policy::Random, 8, 1.3).expect("run");
    assert_ne!(
        a.alloc_pct_by_arrived_pct, c.alloc_pct_by_arrived_pct,
        "another seed, another run"
    );
}

#[test]
fn fill_never_allocates_more_than_arrived_or_capacity() {
    let factory = EngineFactory;
    let input = synthetic_input(&factory);
    let runs = fill::run_all(
        &factory,
        &input,
        &[Policy::BestFit, Policy::Fgd],
        &[1, 2],
        1.3,
        2,
        &|_| {},
    )
    .expect("runs");
    assert_eq!(runs.len(), 4);
    for run in &runs {
        for (arrived, alloc) in run.alloc_pct_by_arrived_pct.iter().enumerate() {
            assert!(
                *alloc <= arrived as f64 + 1e-9 && *alloc <= 100.0 + 1e-9,
                "{alloc} at {arrived}"
            );
        }
        assert!(run.pods_dropped > 0, "1.3x capacity cannot all fit");
    }
    // run_all returns (policy, seed) order whatever thread finished first.
    let order: Vec<(Policy, u64)> = runs.iter().map(|r| (r.policy, r.seed)).collect();
    assert_eq!(
        order,
        [
            (Policy::BestFit, 1),
            (Policy::BestFit, 2),
            (Policy::Fgd, 1),
            (Policy::Fgd, 2)
        ]
    );
}

#[test]
fn replay_is_deterministic_and_accounts_for_every_job() {
    let config = small();
    let nodes = synthetic::cluster(&config);
    let jobs = synthetic::jobs(&config, &nodes);
    let run = |policy| {
        replay::run(
            &nodes,
            &jobs,
            policy,
            42,
            ReplayOptions { samples: 50 },
            &|_| {},
        )
        .expect("replay")
    };
    let a = run(Policy::BestFit);
    let b = run(Policy::BestFit);
    assert_eq!(a.delays, b.delays);
    assert_eq!(a.completed + a.rejected, jobs.len());
    assert!(a.delays.iter().all(|d| *d >= 0.0));
    assert!(a.jct_s.mean >= a.queueing_delay_s.mean);
    assert!(a.mean_utilization_pct > 0.0 && a.mean_utilization_pct <= 100.0);
    assert_eq!(a.samples.len(), 50);
    let tenant_jobs: usize = a.tenants.values().map(|t| t.jobs).sum();
    assert_eq!(tenant_jobs, jobs.len());
}

#[test]
fn replay_of_each_policy_repeats_itself_sample_for_sample() {
    let config = small();
    let nodes = synthetic::cluster(&config);
    let jobs = synthetic::jobs(&config, &nodes);
    // Random draws from the seeded generator and FGD learns its workload as jobs arrive: both
    // must still repeat exactly.
    for policy in [Policy::Random, Policy::Fgd, Policy::BestFit] {
        let run = || {
            replay::run(
                &nodes,
                &jobs,
                policy,
                7,
                ReplayOptions { samples: 50 },
                &|_| {},
            )
            .expect("replay")
        };
        let (a, b) = (run(), run());
        assert_eq!(a.delays, b.delays, "{policy}");
        let series = |r: &replay::ReplayRun| {
            r.samples
                .iter()
                .map(|s| {
                    (
                        s.used_gpu_pct,
                        s.fragmented_gpu_pct,
                        s.queued_jobs,
                        s.running_jobs,
                    )
                })
                .collect::<Vec<_>>()
        };
        assert_eq!(series(&a), series(&b), "{policy}");
        assert!(a.samples.iter().all(|s| s.fragmented_gpu_pct.is_some()));
    }
}

fn gpu_job(id: usize, arrival: u64, duration: u64, gpus: u32) -> TimedJob {
    TimedJob {
        id,
        arrival,
        duration,
        replica: Request {
            cpu_milli: 0,
            memory_mib: 0,
            num_gpu: gpus,
            gpu_milli: 1000,
            models: Vec::new(),
        },
        replicas: 1,
        tenant: "t".into(),
    }
}

/// Strict FIFO: a one-GPU job that would fit at once still waits behind the whole-node job
/// that arrived before it, and starts only after that one has run.
#[test]
fn replay_holds_every_job_behind_a_blocked_head() {
    let nodes = parse_cluster_shape("1x8xV100").expect("shape");
    let jobs = [
        gpu_job(0, 0, 100, 4),
        gpu_job(1, 1, 100, 8),
        gpu_job(2, 2, 10, 1),
    ];
    let run = replay::run(
        &nodes,
        &jobs,
        Policy::BestFit,
        1,
        ReplayOptions::default(),
        &|_| {},
    )
    .expect("replay");
    assert_eq!(run.completed, 3);
    // Delays in trace order: 0, then 100 - 1, then 200 - 2 (not 0, as a backfilling queue
    // would start it).
    assert_eq!(run.delays, [0.0, 99.0, 198.0]);
    assert_eq!(run.makespan_s, 210);
}

#[test]
fn replay_rejects_jobs_that_never_fit_instead_of_blocking() {
    let config = small();
    let nodes = synthetic::cluster(&config);
    let mut jobs = synthetic::jobs(&config, &nodes);
    // A 64-GPU gang of 8-GPU replicas on a cluster with 32 8-GPU-capable GPUs.
    jobs[0].replica.num_gpu = 8;
    jobs[0].replica.gpu_milli = 1000;
    jobs[0].replica.models.clear();
    jobs[0].replicas = 8;
    let run = replay::run(
        &nodes,
        &jobs,
        Policy::Fgd,
        1,
        ReplayOptions::default(),
        &|_| {},
    )
    .expect("replay");
    assert!(run.rejected >= 1);
    assert_eq!(run.completed + run.rejected, jobs.len());
}

#[test]
fn fgd_beats_best_fit_beats_random_on_openb() {
    let root = Path::new(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../shared/traces/openb"
    ));
    if !root.exists() {
        eprintln!("skipping: {} is absent", root.display());
        return;
    }
    let nodes =
        load_nodes(&root.join("openb_node_list_gpu_node.csv"), RowPolicy::Fail).expect("nodes");
    let pods = load_pods(&root.join("openb_pod_list_default.csv"), RowPolicy::Fail).expect("pods");
    let factory = EngineFactory;
    let requests = pods.items.into_iter().map(|p| p.request).collect();
    let input = FillInput::new(&factory, nodes.items, requests).expect("mix");
    let unallocated = |policy| {
        fill::run_one(&factory, &input, policy, 42, 1.3)
            .expect("run")
            .unallocated_pct_at_100()
            .expect("crosses 100%")
    };
    let (fgd, best_fit, random) = (
        unallocated(Policy::Fgd),
        unallocated(Policy::BestFit),
        unallocated(Policy::Random),
    );
    assert!(
        fgd < best_fit && best_fit < random,
        "fgd {fgd:.2}, best-fit {best_fit:.2}, random {random:.2}"
    );
}
