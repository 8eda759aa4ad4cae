//! The queue: quotas with borrowing and reclaim, preemption, backfill behind a blocked gang.

use suanli_engine::domain::DomainCatalog;
use suanli_engine::gang::GangRequest;
use suanli_engine::job::JobId;
use suanli_engine::links::LinkState;
use suanli_engine::preempt::VictimKind;
use suanli_engine::queue::{Decision, QueueConfig, QueuedJob, Runtime, Scheduler, WaitReason};
use suanli_engine::quota::{QuotaLimit, Quotas};
use suanli_engine::{Cluster, GpuModel};

use crate::fabric::{Spec, gang, inventories, leaf};

pub fn h100() -> GpuModel {
    "H100".parse().expect("valid model")
}

pub fn scheduler(specs: &[Spec], quotas: Quotas, config: QueueConfig) -> Scheduler {
    let cluster = Cluster::from_inventories(&inventories(specs)).expect("valid inventories");
    Scheduler::new(
        cluster,
        LinkState::new(),
        DomainCatalog::default(),
        quotas,
        config,
    )
}

pub fn job(id: &str, tenant: &str, gang: GangRequest, priority: i32, submitted: u64) -> QueuedJob {
    QueuedJob {
        id: JobId(id.into()),
        gang,
        tenant: tenant.into(),
        queue: "default".into(),
        priority,
        preemptible: true,
        submitted_s: submitted,
        runtime: Runtime::default(),
    }
}

fn placed(d: &[Decision]) -> Vec<String> {
    d.iter()
        .filter_map(|d| match d {
            Decision::Place { job, .. } => Some(job.0.clone()),
            _ => None,
        })
        .collect()
}

fn preempted(d: &[Decision]) -> Vec<(String, VictimKind)> {
    d.iter()
        .filter_map(|d| match d {
            Decision::Preempt { victim, kind, .. } => Some((victim.0.clone(), *kind)),
            _ => None,
        })
        .collect()
}

fn waits(d: &[Decision]) -> Vec<String> {
    d.iter()
        .filter_map(|d| match d {
            Decision::Wait { .. } => Some(d.to_string()),
            _ => None,
        })
        .collect()
}

#[test]
fn a_tenant_at_its_maximum_waits_with_the_numbers() {
    let mut quotas = Quotas::new();
    quotas
        .set("research", h100(), QuotaLimit::gpus(8, Some(16)))
        .expect("valid");
    let mut s = scheduler(
        &leaf("a", "s1", "l1", "n", 4),
        quotas,
        QueueConfig::default(),
    );
    for (i, t) in [0, 1, 2].iter().enumerate() {
        s.submit(job(&format!("r{i}"), "research", gang(1, 8), 0, *t))
            .expect("new");
    }
    let d = s.queue_pass(10);
    assert_eq!(placed(&d), ["r0", "r1"]);
    assert_eq!(
        waits(&d),
        ["r2 waiting: tenant research at quota 16/16 H100 (needs 8 more)"]
    );
    let borrowed: Vec<bool> = s.running().map(|r| r.borrowed).collect();
    assert_eq!(
        borrowed,
        [false, true],
        "the second job is above the guarantee"
    );
    s.finish(&JobId("r0".into())).expect("running");
    assert_eq!(placed(&s.queue_pass(20)), ["r2"]);
}

#[test]
fn borrowed_quota_is_reclaimed_for_the_owner() {
    let mut quotas = Quotas::new();
    quotas
        .set("alpha", h100(), QuotaLimit::gpus(16, Some(32)))
        .expect("valid");
    quotas
        .set("beta", h100(), QuotaLimit::gpus(16, Some(32)))
        .expect("valid");
    let config = QueueConfig {
        min_runtime_s: 60,
        ..QueueConfig::default()
    };
    let mut s = scheduler(&leaf("a", "s1", "l1", "n", 4), quotas, config);
    for i in 0..4 {
        s.submit(job(&format!("a{i}"), "alpha", gang(1, 8), 0, i))
            .expect("new");
    }
    assert_eq!(
        placed(&s.queue_pass(0)).len(),
        4,
        "alpha borrows beta's idle half"
    );
    assert_eq!(s.usage().get("alpha", &h100()), 32_000);

    s.submit(job("b0", "beta", gang(1, 8), 0, 100))
        .expect("new");
    let early = s.queue_pass(30);
    assert!(
        preempted(&early).is_empty(),
        "nothing ran the minimum runtime yet"
    );
    assert_eq!(waits(&early).len(), 1);

    let d = s.queue_pass(100);
    assert_eq!(
        preempted(&d),
        [("a3".to_string(), VictimKind::Reclaim)],
        "the newest borrowed job goes first"
    );
    assert_eq!(placed(&d), ["b0"]);
    assert!(
        s.pending().any(|j| j.id.0 == "a3"),
        "the victim is pending again"
    );
    assert_eq!(s.usage().get("alpha", &h100()), 24_000);

    // Beta at its guarantee again would need to borrow: no more reclaim beyond the 16 GPUs.
    s.submit(job("b1", "beta", gang(1, 8), 0, 101))
        .expect("new");
    s.submit(job("b2", "beta", gang(1, 8), 0, 102))
        .expect("new");
    let d = s.queue_pass(200);
    assert_eq!(preempted(&d), [("a2".to_string(), VictimKind::Reclaim)]);
    assert_eq!(placed(&d), ["b1"]);
    assert_eq!(s.usage().get("alpha", &h100()), 16_000);
    assert_eq!(s.usage().get("beta", &h100()), 16_000);
}

#[test]
fn higher_priority_preempts_but_never_a_non_preemptible_job() {
    let config = QueueConfig {
        min_runtime_s: 0,
        ..QueueConfig::default()
    };
    let mut s = scheduler(&leaf("a", "s1", "l1", "n", 2), Quotas::new(), config);
    let mut keep = job("keep", "t", gang(1, 8), 0, 0);
    keep.preemptible = false;
    s.submit(keep).expect("new");
    s.submit(job("low", "t", gang(1, 8), 0, 1)).expect("new");
    assert_eq!(placed(&s.queue_pass(0)).len(), 2);

    s.submit(job("urgent", "t", gang(1, 8), 10, 5))
        .expect("new");
    let d = s.queue_pass(10);
    assert_eq!(preempted(&d), [("low".to_string(), VictimKind::Priority)]);
    assert_eq!(placed(&d), ["urgent"]);

    s.submit(job("urgent2", "t", gang(1, 8), 10, 6))
        .expect("new");
    let d = s.queue_pass(20);
    assert!(
        preempted(&d).is_empty(),
        "equal priority and non-preemptible are safe"
    );
    assert!(s.running_job(&JobId("keep".into())).is_some());
}

#[test]
fn a_victim_search_that_cannot_succeed_changes_nothing() {
    let config = QueueConfig {
        min_runtime_s: 0,
        max_victims: 1,
        ..QueueConfig::default()
    };
    let mut s = scheduler(&leaf("a", "s1", "l1", "n", 2), Quotas::new(), config);
    s.submit(job("l0", "t", gang(1, 8), 0, 0)).expect("new");
    s.submit(job("l1", "t", gang(1, 8), 0, 1)).expect("new");
    s.queue_pass(0);
    let before = s.cluster().nodes().to_vec();
    // Needs both nodes, but may preempt only one job.
    s.submit(job("big", "t", gang(2, 8), 5, 2)).expect("new");
    let d = s.queue_pass(10);
    assert!(preempted(&d).is_empty());
    assert_eq!(s.running().count(), 2);
    assert_eq!(s.cluster().nodes(), before, "victims back on the same GPUs");
}

#[test]
fn backfill_runs_small_jobs_only_if_the_gang_start_holds() {
    let mut s = scheduler(
        &leaf("a", "s1", "l1", "n", 4),
        Quotas::new(),
        QueueConfig::default(),
    );
    let with = |mut j: QueuedJob, seconds: Option<u64>| {
        j.runtime = Runtime {
            expected_s: seconds,
            limit_s: None,
        };
        j
    };
    s.submit(with(job("r0", "t", gang(2, 8), 0, 0), Some(100)))
        .expect("new");
    assert_eq!(placed(&s.queue_pass(0)), ["r0"]);

    // The gang needs all four nodes: blocked until r0 ends at t=100.
    s.submit(with(job("gang", "t", gang(4, 8), 0, 1), Some(1000)))
        .expect("new");
    s.submit(with(job("short", "t", gang(1, 8), 0, 2), Some(50)))
        .expect("new");
    s.submit(with(job("long", "t", gang(1, 8), 0, 3), Some(500)))
        .expect("new");
    s.submit(with(job("unknown", "t", gang(1, 8), 0, 4), None))
        .expect("new");
    let d = s.queue_pass(10);
    assert_eq!(placed(&d), ["short"], "ends at 60, before the gang's start");
    assert!(matches!(
        d.iter().find(|d| matches!(d, Decision::Place { .. })),
        Some(Decision::Place {
            backfilled: true,
            ..
        })
    ));
    let w = waits(&d);
    assert_eq!(w.len(), 3, "{w:?}");
    assert!(
        w[0].starts_with("gang waiting: room for 2 of 4 replicas"),
        "{w:?}"
    );
    assert_eq!(
        w[1],
        "long waiting: would delay gang, which holds a reservation from t=100s"
    );
    assert_eq!(
        w[2],
        "unknown waiting: would delay gang, which holds a reservation from t=100s"
    );

    s.finish(&JobId("r0".into())).expect("running");
    s.finish(&JobId("short".into())).expect("running");
    let d = s.queue_pass(100);
    assert_eq!(placed(&d), ["gang"]);
}

/// Running work with no runtime bound still ends some day: the blocked gang holds the nodes
/// it will get then, with no known start, so nothing may backfill onto them.
#[test]
fn a_gang_blocked_by_unbounded_work_still_holds_its_nodes() {
    let mut s = scheduler(
        &leaf("a", "s1", "l1", "n", 4),
        Quotas::new(),
        QueueConfig::default(),
    );
    s.submit(job("r0", "t", gang(2, 8), 0, 0)).expect("new");
    assert_eq!(placed(&s.queue_pass(0)), ["r0"]);
    s.submit(job("gang", "t", gang(4, 8), 0, 1)).expect("new");
    let mut short = job("short", "t", gang(1, 8), 0, 2);
    short.runtime.limit_s = Some(10);
    s.submit(short).expect("new");
    let d = s.queue_pass(10);
    assert!(placed(&d).is_empty(), "{d:?}");
    assert!(
        d.iter().any(|d| matches!(
            d,
            Decision::Wait {
                job,
                reason: WaitReason::Reserved { holder, start_s: None },
            } if job.0 == "short" && holder.0 == "gang"
        )),
        "{d:?}"
    );
    assert_eq!(
        waits(&d)[1],
        "short waiting: would delay gang, which holds a reservation until running jobs end"
    );
}

#[test]
fn without_backfill_small_jobs_jump_the_gang() {
    let config = QueueConfig {
        backfill: false,
        ..QueueConfig::default()
    };
    let mut s = scheduler(&leaf("a", "s1", "l1", "n", 4), Quotas::new(), config);
    s.submit(job("r0", "t", gang(2, 8), 0, 0)).expect("new");
    s.queue_pass(0);
    s.submit(job("gang", "t", gang(4, 8), 0, 1)).expect("new");
    s.submit(job("small", "t", gang(1, 8), 0, 2)).expect("new");
    let d = s.queue_pass(1);
    assert_eq!(placed(&d), ["small"]);
    assert!(matches!(
        &d[0],
        Decision::Wait {
            reason: WaitReason::Placement(_),
            ..
        }
    ));
}

/// With a single-replica policy set, a job of one plain replica goes where that policy
/// (with the same seed) puts it on the same cluster, as in the daemon; gangs still go
/// through the planner; a single replica that fits nowhere waits with the policy's reasons.
#[test]
fn single_replicas_go_by_the_configured_policy() {
    use suanli_engine::policy::PolicyKind;
    use suanli_engine::workload::SingleReplicaPolicy;

    let no_preemption = QueueConfig {
        preemption: false,
        ..QueueConfig::default()
    };
    let specs = leaf("a", "s1", "l1", "n", 4);
    let mut s = scheduler(&specs, Quotas::new(), no_preemption);
    s.set_single_replica_policy(SingleReplicaPolicy::new(PolicyKind::BestFit, 42));
    // Something on n-2 first, so best-fit has a favourite that is not the first node.
    s.submit(job("warm", "t", gang(1, 6), 0, 0))
        .expect("queued");
    let first = s.queue_pass(0);
    let expected = {
        let mut reference = SingleReplicaPolicy::new(PolicyKind::BestFit, 42);
        reference.remember(gang(1, 6).request);
        assert!(reference.refresh());
        let mut before = scheduler(&specs, Quotas::new(), no_preemption);
        let _ = before.queue_pass(0);
        reference
            .place(before.cluster(), &gang(1, 6).request)
            .expect("a policy")
            .expect("fits")
            .node_name
    };
    match &first[..] {
        [Decision::Place { placement, .. }] => {
            assert_eq!(placement.replicas.len(), 1);
            assert_eq!(placement.replicas[0].node_name, expected);
            assert!(
                placement.group.ends_with("by best-fit"),
                "{}",
                placement.group
            );
        }
        other => panic!("{other:?}"),
    }
    // Best-fit packs: the next 2-GPU replica lands beside the first, on the fullest node.
    s.submit(job("next", "t", gang(1, 2), 0, 1))
        .expect("queued");
    match &s.queue_pass(1)[..] {
        [Decision::Place { placement, .. }] => {
            assert_eq!(placement.replicas[0].node_name, expected, "packed");
        }
        other => panic!("{other:?}"),
    }
    // Two replicas: the gang planner.
    s.submit(job("pair", "t", gang(2, 8), 0, 2))
        .expect("queued");
    match &s.queue_pass(2)[..] {
        [Decision::Place { placement, .. }] => {
            assert_eq!(placement.replicas.len(), 2);
            assert!(
                !placement.group.contains("by best-fit"),
                "{}",
                placement.group
            );
        }
        other => panic!("{other:?}"),
    }
    // Nine GPUs on one node fit nowhere, though the cluster has them: the policy says why,
    // node by node.
    let mut s = scheduler(&specs, Quotas::new(), no_preemption);
    s.set_single_replica_policy(SingleReplicaPolicy::new(PolicyKind::BestFit, 42));
    s.submit(job("huge", "t", gang(1, 9), 0, 0))
        .expect("queued");
    let d = s.queue_pass(0);
    assert!(
        matches!(
            &d[..],
            [Decision::Wait {
                reason: WaitReason::NoNode(_),
                ..
            }]
        ),
        "{d:?}"
    );
}

/// A busy queue: running work of mixed priority and runtime, then gangs and single replicas
/// of several priorities, some of which preempt, block or backfill.
fn busy_queue() -> Scheduler {
    let mut specs = leaf("a", "s1", "l1", "n", 4);
    specs.extend(leaf("a", "s1", "l2", "m", 4));
    let mut s = scheduler(&specs, Quotas::new(), QueueConfig::default());
    for i in 0..6 {
        let mut j = job(
            &format!("old-{i}"),
            "t",
            gang(1, 4 + i % 3),
            i as i32 % 2,
            0,
        );
        j.runtime.limit_s = Some(600 + 300 * i as u64);
        s.submit(j).expect("queued");
    }
    let _ = s.queue_pass(0);
    for i in 0..24u32 {
        let replicas = if i % 5 == 0 { 4 } else { 1 };
        let mut j = job(
            &format!("j-{i:02}"),
            if i % 3 == 0 { "u" } else { "t" },
            gang(replicas, 1 + i % 8),
            (i % 4) as i32,
            1_000 + u64::from(i),
        );
        if i % 2 == 0 {
            j.runtime.limit_s = Some(120 + 60 * u64::from(i));
        }
        s.submit(j).expect("queued");
    }
    s
}

#[test]
fn a_pass_in_slices_decides_what_one_pass_would() {
    let mut whole = busy_queue();
    let mut sliced = whole.clone();
    let expected = whole.queue_pass(2_000);
    assert!(
        expected.iter().any(|d| matches!(d, Decision::Place { .. }))
            && expected.iter().any(|d| matches!(d, Decision::Wait { .. })),
        "it places some jobs and blocks others: {expected:?}"
    );
    assert!(
        expected
            .iter()
            .any(|d| matches!(d, Decision::Preempt { .. }))
            && expected.iter().any(|d| matches!(
                d,
                Decision::Wait {
                    reason: WaitReason::Reserved { .. },
                    ..
                } | Decision::Place {
                    backfilled: true,
                    ..
                }
            )),
        "it preempts and holds a reservation that others wait or backfill around: {expected:?}"
    );
    let mut got = Vec::new();
    let mut slices = 0;
    loop {
        // Stop after every job: the most slices a pass can be cut into.
        let (mut made, done) = sliced.queue_pass_until(2_000, || false);
        got.append(&mut made);
        slices += 1;
        if done {
            break;
        }
    }
    assert!(slices > 10, "cut into {slices} slices");
    assert_eq!(got, expected);
    let running = |s: &Scheduler| {
        let mut ids: Vec<String> = s.running().map(|r| r.job.id.0.clone()).collect();
        ids.sort();
        ids
    };
    assert_eq!(running(&sliced), running(&whole));
}

#[test]
fn a_running_job_is_restored_on_exactly_its_resources() {
    let specs = leaf("a", "s1", "l1", "n", 2);
    let mut first = scheduler(&specs, Quotas::new(), QueueConfig::default());
    first
        .submit(job("kept", "t", gang(2, 8), 0, 0))
        .expect("queued");
    let _ = first.queue_pass(0);
    let kept = first
        .running_job(&JobId("kept".into()))
        .expect("running")
        .clone();

    // A new scheduler on the same nodes books it again, as a restart does.
    let mut again = scheduler(&specs, Quotas::new(), QueueConfig::default());
    again
        .restore_running(kept.job.clone(), kept.placement.clone(), 0)
        .expect("restored");
    assert_eq!(
        again.restore_running(kept.job.clone(), kept.placement.clone(), 0),
        Err(suanli_engine::queue::QueueError::Duplicate(JobId(
            "kept".into()
        )))
    );
    let mut twin = kept.job.clone();
    twin.id = JobId("twin".into());
    assert_eq!(
        again.restore_running(twin, kept.placement.clone(), 0),
        Err(suanli_engine::queue::QueueError::Unclaimable(JobId(
            "twin".into()
        ))),
        "its GPUs are taken"
    );
    // Nothing else fits while it runs; once it is requeued it runs again, first in line.
    again
        .submit(job("later", "t", gang(1, 8), 0, 5))
        .expect("queued");
    assert!(placed(&again.queue_pass(10)).is_empty());
    again.requeue(&JobId("kept".into())).expect("requeued");
    assert_eq!(placed(&again.queue_pass(20)), ["kept"]);
}

/// A strict-order queue is a FIFO: the first job that cannot start holds the ones behind it,
/// where the default queue lets them pass.
#[test]
fn strict_order_holds_everything_behind_the_first_blocked_job() {
    let run = |strict_order: bool| {
        let config = QueueConfig {
            preemption: false,
            backfill: false,
            strict_order,
            ..QueueConfig::default()
        };
        let mut s = scheduler(&leaf("a", "s1", "l1", "n", 2), Quotas::new(), config);
        s.submit(job("first", "t", gang(1, 6), 0, 0))
            .expect("queued");
        s.submit(job("pair", "t", gang(2, 8), 0, 1))
            .expect("queued");
        s.submit(job("small", "t", gang(1, 2), 0, 2))
            .expect("queued");
        s.queue_pass(10)
    };
    assert_eq!(placed(&run(false)), ["first", "small"], "small passes pair");
    let strict = run(true);
    assert_eq!(placed(&strict), ["first"]);
    // The pass ends at the blocked job: the one behind it is not even tried.
    let last = strict.last().expect("decisions");
    assert!(
        matches!(last, Decision::Wait { job, .. } if job.0 == "pair"),
        "{strict:?}"
    );
    assert!(
        !strict
            .iter()
            .any(|d| matches!(d, Decision::Wait { job, .. } if job.0 == "small")),
        "{strict:?}"
    );
}
