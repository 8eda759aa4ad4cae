//! Shrinking a running elastic job: the highest replicas give their GPUs and quota back,
//! the rest keep theirs.

use suanli_engine::job::JobId;
use suanli_engine::queue::{Decision, QueueConfig, QueueError};
use suanli_engine::quota::{QuotaLimit, Quotas};

use crate::fabric::{gang, leaf};
use crate::queue::{h100, job, scheduler};

fn id(name: &str) -> JobId {
    JobId(name.into())
}

/// Four nodes of 8 H100 and a 4 × 8 gang on them, charged to `research`.
fn four_replicas_running(quotas: Quotas) -> suanli_engine::queue::Scheduler {
    let mut s = scheduler(
        &leaf("a", "s1", "l1", "n", 4),
        quotas,
        QueueConfig::default(),
    );
    s.submit(job(
        "elastic",
        "research",
        gang(4, 8).with_min_replicas(2),
        0,
        0,
    ))
    .expect("new");
    let placed = s.queue_pass(0);
    assert!(
        matches!(&placed[..], [Decision::Place { job, .. }] if job.0 == "elastic"),
        "{placed:?}"
    );
    s
}

#[test]
fn shrinking_releases_the_highest_replicas_and_their_quota() {
    let mut s = four_replicas_running(Quotas::new());
    let before = s.running_job(&id("elastic")).expect("running").clone();
    assert_eq!(s.usage().get("research", &h100()), 32_000);

    let released = s.shrink(&id("elastic"), 2).expect("shrinks");
    assert_eq!(released, before.placement.replicas[2..].to_vec());
    let after = s.running_job(&id("elastic")).expect("still running");
    assert_eq!(
        after.placement.replicas,
        before.placement.replicas[..2].to_vec()
    );
    assert_eq!(after.allocations, before.allocations[..2].to_vec());
    assert_eq!(after.charges, vec![(h100(), 16_000)]);
    assert_eq!(after.job.gang.replicas, 2);
    assert_eq!(s.usage().get("research", &h100()), 16_000);
    assert_eq!(
        s.usage().get_in_queue("research", "default", &h100()),
        16_000
    );
    assert_eq!(s.cluster().allocations().count(), 2);

    // The released nodes take new work at once.
    s.submit(job("next", "research", gang(2, 8), 0, 10))
        .expect("new");
    let d = s.queue_pass(10);
    let Some(Decision::Place { placement, .. }) = d.first() else {
        panic!("the freed nodes hold the next gang: {d:?}");
    };
    let freed: Vec<_> = released.iter().map(|r| r.claim.node).collect();
    let mut used: Vec<_> = placement.nodes().collect();
    used.sort();
    assert_eq!(used, freed);

    // Finishing the shrunk job gives back exactly what it still held.
    s.finish(&id("elastic")).expect("running");
    assert_eq!(s.usage().get("research", &h100()), 16_000, "next's share");
    assert_eq!(s.cluster().allocations().count(), 2);
}

#[test]
fn a_shrunk_job_queued_again_asks_for_its_new_size() {
    let mut s = four_replicas_running(Quotas::new());
    s.shrink(&id("elastic"), 3).expect("shrinks");
    s.requeue(&id("elastic")).expect("running");
    let queued = s
        .pending()
        .find(|j| j.id.0 == "elastic")
        .expect("pending again");
    assert_eq!(queued.gang.replicas, 3);
    assert_eq!(queued.gang.min_replicas, 2);
}

#[test]
fn shrinking_to_nothing_or_growing_is_refused_and_changes_nothing() {
    let mut quotas = Quotas::new();
    quotas
        .set("research", h100(), QuotaLimit::gpus(32, Some(32)))
        .expect("valid");
    let mut s = four_replicas_running(quotas);
    let before = s.running_job(&id("elastic")).expect("running").clone();
    for keep in [0, 5] {
        assert_eq!(
            s.shrink(&id("elastic"), keep),
            Err(QueueError::CannotShrink {
                id: id("elastic"),
                placed: 4,
                keep,
            })
        );
    }
    assert_eq!(
        s.shrink(&id("elastic"), 5)
            .expect_err("refused")
            .to_string(),
        "job elastic runs 4 replica(s); it cannot shrink to 5"
    );
    assert_eq!(s.running_job(&id("elastic")), Some(&before));
    assert_eq!(s.usage().get("research", &h100()), 32_000);
    assert_eq!(
        s.shrink(&id("nobody"), 1),
        Err(QueueError::NotRunning(id("nobody")))
    );
    // Keeping every replica is allowed and releases nothing.
    assert_eq!(s.shrink(&id("elastic"), 4), Ok(Vec::new()));
    assert_eq!(
        s.running_job(&id("elastic")).map(|r| r.job.gang.replicas),
        Some(4)
    );
}

#[test]
fn amend_changes_a_running_jobs_runtime_but_not_its_request() {
    let mut s = four_replicas_running(Quotas::new());
    assert!(s.amend(&id("elastic"), |q| {
        q.runtime.limit_s = Some(600);
        q.gang = gang(1, 1);
    }));
    let running = s.running_job(&id("elastic")).expect("running");
    assert_eq!(running.job.runtime.limit_s, Some(600));
    assert_eq!(
        running.job.gang.replicas, 4,
        "its allocations hold the request"
    );
}
