//! Resizing a running elastic job: shrinking gives the highest replicas' GPUs and quota
//! back, the rest keep theirs; growing places the missing replicas on free resources within
//! quota, or changes nothing.

use suanli_engine::job::JobId;
use suanli_engine::queue::{Decision, QueueConfig, QueueError, Scheduler};
use suanli_engine::quota::{QuotaLimit, Quotas};

use crate::fabric::{gang, leaf};
use crate::queue::{h100, job, scheduler};

fn id(name: &str) -> JobId {
    JobId(name.into())
}

/// Four nodes of 8 H100 and a 4 × 8 gang on them, charged to `research`.
fn four_replicas_running(quotas: Quotas) -> Scheduler {
    four_replicas_running_on(4, quotas)
}

/// `nodes` nodes of 8 H100 and a 4 × 8 gang on the first four, charged to `research`.
fn four_replicas_running_on(nodes: usize, quotas: Quotas) -> Scheduler {
    let mut s = scheduler(
        &leaf("a", "s1", "l1", "n", nodes),
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

#[test]
fn growing_places_the_missing_replicas_on_free_nodes() {
    let mut s = scheduler(
        &leaf("a", "s1", "l1", "n", 4),
        Quotas::new(),
        QueueConfig::default(),
    );
    s.submit(job("blocker", "research", gang(1, 8), 1, 0))
        .expect("new");
    s.submit(job(
        "elastic",
        "research",
        gang(4, 8).with_min_replicas(2),
        0,
        0,
    ))
    .expect("new");
    s.queue_pass(0);
    let before = s.running_job(&id("elastic")).expect("running").clone();
    assert_eq!(before.placement.replicas.len(), 3, "one node is taken");
    let freed = s.finish(&id("blocker")).expect("running").placement;

    let added = s.grow(&id("elastic"), 4).expect("room for one more");
    assert_eq!(added.len(), 1);
    assert_eq!(
        added[0].claim.node, freed.replicas[0].claim.node,
        "the only free node"
    );
    let after = s.running_job(&id("elastic")).expect("still running");
    assert_eq!(
        after.placement.replicas[..3],
        before.placement.replicas[..],
        "the running replicas stay where they are"
    );
    assert_eq!(after.placement.replicas[3], added[0]);
    assert_eq!(after.allocations[..3], before.allocations[..]);
    assert_eq!(after.allocations.len(), 4);
    assert_eq!(after.charges, vec![(h100(), 32_000)]);
    assert_eq!(after.job.gang.replicas, 4);
    assert_eq!(after.job.gang.min_replicas, 2);
    assert_eq!(s.usage().get("research", &h100()), 32_000);
    assert_eq!(s.cluster().allocations().count(), 4);

    // Finishing the grown job gives back every replica, the new one too.
    s.finish(&id("elastic")).expect("running");
    assert_eq!(s.usage().get("research", &h100()), 0);
    assert_eq!(s.cluster().allocations().count(), 0);
}

#[test]
fn growing_without_room_is_refused_and_changes_nothing() {
    let mut s = four_replicas_running(Quotas::new());
    let before = s.running_job(&id("elastic")).expect("running").clone();
    let err = s.grow(&id("elastic"), 5).expect_err("every node is taken");
    let QueueError::CannotGrow {
        id: who,
        to,
        reason,
    } = &err
    else {
        panic!("{err:?}");
    };
    assert_eq!((who, *to), (&id("elastic"), 5));
    assert!(
        reason.starts_with("no node can hold a replica now"),
        "{reason}"
    );
    assert!(
        err.to_string()
            .starts_with("job elastic cannot grow to 5 replica(s): no node"),
        "{err}"
    );
    assert!(!err.to_string().contains('\n'), "{err}");
    assert_eq!(s.running_job(&id("elastic")), Some(&before));
    assert_eq!(s.usage().get("research", &h100()), 32_000);
    assert_eq!(s.cluster().allocations().count(), 4);

    assert_eq!(
        s.grow(&id("elastic"), 3),
        Err(QueueError::CannotGrow {
            id: id("elastic"),
            to: 3,
            reason: "it runs 4; shrink it instead".into(),
        })
    );
    assert_eq!(
        s.grow(&id("nobody"), 2),
        Err(QueueError::NotRunning(id("nobody")))
    );
    // Its own size is no growth: nothing to place.
    assert_eq!(s.grow(&id("elastic"), 4), Ok(Vec::new()));
    assert_eq!(s.running_job(&id("elastic")), Some(&before));
}

#[test]
fn growing_past_the_quota_is_refused_and_changes_nothing() {
    let mut quotas = Quotas::new();
    quotas
        .set("research", h100(), QuotaLimit::gpus(32, Some(32)))
        .expect("valid");
    let mut s = four_replicas_running_on(5, quotas);
    let before = s.running_job(&id("elastic")).expect("running").clone();
    let err = s.grow(&id("elastic"), 5).expect_err("at its maximum");
    assert_eq!(
        err.to_string(),
        "job elastic cannot grow to 5 replica(s): tenant research at quota 32/32 H100 (needs 8 \
         more)"
    );
    assert_eq!(s.running_job(&id("elastic")), Some(&before));
    assert_eq!(s.usage().get("research", &h100()), 32_000);
    assert_eq!(
        s.cluster().allocations().count(),
        4,
        "the fifth node stays free"
    );
}

#[test]
fn growing_above_the_guarantee_borrows() {
    let mut quotas = Quotas::new();
    quotas
        .set("research", h100(), QuotaLimit::gpus(32, Some(40)))
        .expect("valid");
    let mut s = four_replicas_running_on(5, quotas);
    assert!(!s.running_job(&id("elastic")).expect("running").borrowed);
    s.grow(&id("elastic"), 5).expect("within the maximum");
    let grown = s.running_job(&id("elastic")).expect("running");
    assert!(
        grown.borrowed,
        "reclaimable like any job above its guarantee"
    );
    assert_eq!(s.usage().get("research", &h100()), 40_000);
}

#[test]
fn a_shrunk_job_grows_back_onto_the_freed_nodes() {
    let mut s = four_replicas_running(Quotas::new());
    let released = s.shrink(&id("elastic"), 2).expect("shrinks");
    let added = s.grow(&id("elastic"), 4).expect("its old nodes are free");
    let mut freed: Vec<_> = released.iter().map(|r| r.claim.node).collect();
    let mut used: Vec<_> = added.iter().map(|r| r.claim.node).collect();
    freed.sort();
    used.sort();
    assert_eq!(used, freed);
    let grown = s.running_job(&id("elastic")).expect("running");
    assert_eq!(grown.placement.replicas.len(), 4);
    assert_eq!(grown.allocations.len(), 4);
    assert_eq!(grown.job.gang.replicas, 4);
    assert_eq!(s.usage().get("research", &h100()), 32_000);
    assert_eq!(
        s.usage().get_in_queue("research", "default", &h100()),
        32_000
    );

    // Queued again, it asks for its grown size.
    s.requeue(&id("elastic")).expect("running");
    assert_eq!(s.cluster().allocations().count(), 0);
    let queued = s
        .pending()
        .find(|j| j.id.0 == "elastic")
        .expect("pending again");
    assert_eq!(queued.gang.replicas, 4);
}
