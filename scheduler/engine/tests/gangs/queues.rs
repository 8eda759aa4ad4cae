//! Quotas per queue, nested under the tenant's: a queue's own maximum, borrowing by a queue
//! and its reclaim by a sibling, and the invariants with queue limits configured.

use std::collections::BTreeMap;

use proptest::prelude::*;
use suanli_engine::job::JobId;
use suanli_engine::preempt::VictimKind;
use suanli_engine::queue::{Decision, QueueConfig, QueuedJob, Runtime, WaitReason};
use suanli_engine::quota::{QuotaError, QuotaLimit, QuotaVerdict, Quotas, Usage};

use crate::fabric::{gang, leaf, spec};
use crate::queue::{h100, job, scheduler};

fn in_queue(id: &str, tenant: &str, queue: &str, gpus: u32, submitted: u64) -> QueuedJob {
    let mut j = job(id, tenant, gang(1, gpus), 0, submitted);
    j.queue = queue.into();
    j
}

fn placed(d: &[Decision]) -> Vec<String> {
    d.iter()
        .filter_map(|d| match d {
            Decision::Place { job, .. } => Some(job.0.clone()),
            _ => None,
        })
        .collect()
}

#[test]
fn a_queue_capped_below_its_tenant_waits_while_a_sibling_runs() {
    let mut quotas = Quotas::new();
    quotas
        .set("research", h100(), QuotaLimit::gpus(32, Some(64)))
        .expect("valid");
    quotas
        .set_queue("research", "urgent", h100(), QuotaLimit::gpus(8, Some(16)))
        .expect("valid");
    let mut s = scheduler(
        &leaf("a", "s1", "l1", "n", 8),
        quotas,
        QueueConfig::default(),
    );
    for i in 0..3 {
        s.submit(in_queue(&format!("u{i}"), "research", "urgent", 8, i))
            .expect("new");
    }
    s.submit(in_queue("b0", "research", "batch", 8, 10))
        .expect("new");
    let d = s.queue_pass(0);
    assert_eq!(placed(&d), ["u0", "u1", "b0"]);
    let waits: Vec<String> = d
        .iter()
        .filter(|d| matches!(d, Decision::Wait { .. }))
        .map(ToString::to_string)
        .collect();
    assert_eq!(
        waits,
        ["u2 waiting: queue research/urgent at quota 16/16 H100 (needs 8 more)"]
    );
    let usage = s.usage();
    assert_eq!(usage.get_in_queue("research", "urgent", &h100()), 16_000);
    assert_eq!(usage.get_in_queue("research", "batch", &h100()), 8_000);
    assert_eq!(
        usage.get("research", &h100()),
        24_000,
        "the tenant sums its queues"
    );
    let borrowed: BTreeMap<String, bool> = s
        .running()
        .map(|r| (r.job.id.0.clone(), r.borrowed))
        .collect();
    assert_eq!(
        borrowed,
        BTreeMap::from([
            ("b0".to_string(), false),
            ("u0".to_string(), false),
            ("u1".to_string(), true),
        ]),
        "u1 is above its queue's guarantee though the tenant is within its own"
    );
}

#[test]
fn a_non_preemptible_job_may_not_borrow_above_its_queue_guarantee() {
    let mut quotas = Quotas::new();
    quotas
        .set_queue("research", "urgent", h100(), QuotaLimit::gpus(8, Some(32)))
        .expect("valid");
    let mut s = scheduler(
        &leaf("a", "s1", "l1", "n", 4),
        quotas,
        QueueConfig::default(),
    );
    s.submit(in_queue("u0", "research", "urgent", 8, 0))
        .expect("new");
    let mut pinned = in_queue("u1", "research", "urgent", 8, 1);
    pinned.preemptible = false;
    s.submit(pinned).expect("new");
    let d = s.queue_pass(0);
    assert_eq!(placed(&d), ["u0"]);
    let reason = d.iter().find_map(|d| match d {
        Decision::Wait { reason, .. } => Some(reason.clone()),
        _ => None,
    });
    assert_eq!(
        reason,
        Some(WaitReason::NoBorrowing {
            tenant: "research".into(),
            queue: Some("urgent".into()),
        })
    );
    assert_eq!(
        reason.expect("waits").to_string(),
        "queue research/urgent is at its guarantee and non-preemptible jobs may not borrow"
    );
}

#[test]
fn a_queue_borrowing_is_reclaimed_for_a_sibling_guarantee() {
    let mut quotas = Quotas::new();
    quotas
        .set("research", h100(), QuotaLimit::gpus(32, Some(32)))
        .expect("valid");
    quotas
        .set_queue("research", "batch", h100(), QuotaLimit::gpus(16, Some(32)))
        .expect("valid");
    quotas
        .set_queue("research", "urgent", h100(), QuotaLimit::gpus(16, Some(32)))
        .expect("valid");
    let config = QueueConfig {
        min_runtime_s: 60,
        ..QueueConfig::default()
    };
    let mut s = scheduler(&leaf("a", "s1", "l1", "n", 4), quotas, config);
    for i in 0..4 {
        s.submit(in_queue(&format!("b{i}"), "research", "batch", 8, i))
            .expect("new");
    }
    assert_eq!(
        placed(&s.queue_pass(0)).len(),
        4,
        "batch borrows urgent's idle share"
    );
    s.submit(in_queue("u0", "research", "urgent", 8, 100))
        .expect("new");
    let d = s.queue_pass(30);
    assert!(
        placed(&d).is_empty(),
        "no reclaim before the minimum runtime"
    );
    let d = s.queue_pass(100);
    let preempted: Vec<(String, VictimKind)> = d
        .iter()
        .filter_map(|d| match d {
            Decision::Preempt { victim, kind, .. } => Some((victim.0.clone(), *kind)),
            _ => None,
        })
        .collect();
    assert_eq!(
        preempted,
        [("b3".to_string(), VictimKind::Reclaim)],
        "the newest borrowed batch job goes back, one is enough"
    );
    assert_eq!(placed(&d), ["u0"]);
    assert_eq!(s.usage().get_in_queue("research", "batch", &h100()), 24_000);
    // Urgent is owed one more 8-GPU job: batch, still 8 above its guarantee, gives it back
    // (b3, pending again, may not borrow past the tenant's maximum). The job after that would take urgent above its own guarantee: it waits at the tenant's
    // maximum and reclaims nothing.
    s.submit(in_queue("u1", "research", "urgent", 8, 101))
        .expect("new");
    s.submit(in_queue("u2", "research", "urgent", 8, 102))
        .expect("new");
    let d = s.queue_pass(200);
    let shown: Vec<String> = d.iter().map(ToString::to_string).collect();
    assert_eq!(
        shown,
        [
            "b3 waiting: tenant research at quota 32/32 H100 (needs 8 more)".to_string(),
            "preempt b2 for u1 (reclaiming borrowed quota)".to_string(),
            format!(
                "place u1: {}",
                s.running_job(&JobId("u1".into())).expect("runs").placement
            ),
            "u2 waiting: tenant research at quota 32/32 H100 (needs 8 more)".to_string(),
        ]
    );
    assert_eq!(
        s.usage().get_in_queue("research", "urgent", &h100()),
        16_000
    );
    assert_eq!(s.usage().get_in_queue("research", "batch", &h100()), 16_000);
}

#[test]
fn another_tenant_cannot_reclaim_what_only_a_queue_borrows() {
    let mut quotas = Quotas::new();
    quotas
        .set("alpha", h100(), QuotaLimit::gpus(32, Some(32)))
        .expect("valid");
    quotas
        .set_queue("alpha", "batch", h100(), QuotaLimit::gpus(8, Some(32)))
        .expect("valid");
    quotas
        .set("beta", h100(), QuotaLimit::gpus(16, Some(16)))
        .expect("valid");
    let config = QueueConfig {
        min_runtime_s: 0,
        ..QueueConfig::default()
    };
    let mut s = scheduler(&leaf("a", "s1", "l1", "n", 4), quotas, config);
    for i in 0..4 {
        s.submit(in_queue(&format!("a{i}"), "alpha", "batch", 8, i))
            .expect("new");
    }
    assert_eq!(placed(&s.queue_pass(0)).len(), 4);
    s.submit(in_queue("b0", "beta", "default", 8, 10))
        .expect("new");
    let d = s.queue_pass(50);
    assert!(
        d.iter().all(|d| !matches!(d, Decision::Preempt { .. })),
        "alpha is within its tenant guarantee; its queue's borrowing is alpha's own affair"
    );
    assert!(placed(&d).is_empty());
}

#[test]
fn queue_limits_are_checked_beside_the_tenant_limits() {
    let mut quotas = Quotas::new();
    quotas
        .set("research", h100(), QuotaLimit::gpus(8, Some(24)))
        .expect("valid");
    quotas.set_queue_other_models("research", "urgent", QuotaLimit::gpus(4, Some(32)));
    assert_eq!(
        quotas.queue_limit("research", "urgent", &h100()),
        Some(QuotaLimit::gpus(4, Some(32)))
    );
    assert_eq!(quotas.queue_limit("research", "batch", &h100()), None);
    assert!(quotas.has_queue_limits());
    assert!(!Quotas::new().has_queue_limits());
    let mut usage = Usage::default();
    usage.add_in_queue("research", "urgent", &[(h100(), 20_000)]);
    // The queue could take 8 more, the tenant only 4: the tenant's maximum decides.
    let QuotaVerdict::Over(over) =
        quotas.check_in_queue(&usage, "research", "urgent", &[(h100(), 8_000)])
    else {
        panic!("24 is the tenant's maximum");
    };
    assert_eq!(over.queue, None);
    assert_eq!(
        over.to_string(),
        "tenant research at quota 20/24 H100 (needs 8 more)"
    );
    // The plain calls mean the default queue, which has no limit of its own here.
    usage.add("research", &[(h100(), 2_000)]);
    assert_eq!(usage.get_in_queue("research", "default", &h100()), 2_000);
    assert_eq!(usage.get("research", &h100()), 22_000);
    assert_eq!(
        quotas.check(&usage, "research", &[(h100(), 2_000)]),
        QuotaVerdict::Borrowing
    );
    assert_eq!(quotas.borrowed(&usage, "research", &h100()), 14_000);
    assert_eq!(
        quotas.borrowed_in_queue(&usage, "research", "urgent", &h100()),
        16_000
    );
    usage.remove("research", &[(h100(), 2_000)]);
    usage.remove_in_queue("research", "urgent", &[(h100(), 20_000)]);
    assert_eq!(usage, Usage::default(), "removal undoes both levels");
    assert_eq!(
        quotas.set_queue("research", "urgent", h100(), QuotaLimit::gpus(8, Some(4))),
        Err(QuotaError::QueueGuaranteeAboveMax {
            tenant: "research".into(),
            queue: "urgent".into(),
            model: "H100".into(),
            guaranteed: 8_000,
            max: 4_000,
        })
    );
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    /// With queue limits under tenant limits: no queue and no tenant ever passes its
    /// maximum, what is above a guarantee is held by preemptible jobs, usage matches the
    /// running jobs at both levels, and non-preemptible jobs are never victims.
    #[test]
    fn queue_and_tenant_maxima_hold_and_pinned_jobs_stay(
        jobs in proptest::collection::vec(
            (0usize..4, 1u32..3, prop::sample::select(vec![1u32, 4, 8]), 0i32..3, any::<bool>()),
            1..28,
        ),
        finish_every in 2usize..6,
    ) {
        // (tenant, queue): alpha has two limited queues and one without limits of its own.
        let places = [("alpha", "urgent"), ("alpha", "batch"), ("alpha", "default"), ("beta", "default")];
        let mut quotas = Quotas::new();
        quotas.set("alpha", h100(), QuotaLimit::gpus(24, Some(32))).expect("valid");
        quotas.set_queue("alpha", "urgent", h100(), QuotaLimit::gpus(8, Some(16))).expect("valid");
        quotas.set_queue("alpha", "batch", h100(), QuotaLimit::gpus(8, Some(24))).expect("valid");
        quotas.set("beta", h100(), QuotaLimit::gpus(8, Some(24))).expect("valid");
        let specs: Vec<_> = (0..6)
            .map(|i| spec("a", ["s1", "s2"][i % 2], ["l1", "l2", "l3"][i % 3], &format!("n{i}")))
            .collect();
        let config = QueueConfig { min_runtime_s: 10, max_victims: 4, ..QueueConfig::default() };
        let mut s = scheduler(&specs, quotas.clone(), config);
        let mut pinned: BTreeMap<JobId, bool> = BTreeMap::new();
        for (t, (place, replicas, gpus, priority, preemptible)) in jobs.iter().enumerate() {
            let now = t as u64 * 7;
            let (tenant, queue) = places[*place];
            let mut j = job(&format!("j{t}"), tenant, gang(*replicas, *gpus), *priority, now);
            j.queue = queue.into();
            j.preemptible = *preemptible;
            j.runtime = Runtime { expected_s: Some(50), limit_s: None };
            pinned.insert(j.id.clone(), !preemptible);
            s.submit(j).expect("new id");
            for d in s.queue_pass(now) {
                if let Decision::Preempt { victim, .. } = &d {
                    prop_assert!(!pinned[victim], "non-preemptible {victim} preempted");
                }
            }
            let first = s.running().map(|r| r.job.id.clone()).next();
            if t % finish_every == 0
                && let Some(id) = first
            {
                s.finish(&id).expect("running");
            }
            let held = |tenant: &str, queue: Option<&str>, preemptible_only: bool| -> u64 {
                s.running()
                    .filter(|r| r.job.tenant == tenant && queue.is_none_or(|q| r.job.queue == q))
                    .filter(|r| !preemptible_only || r.job.preemptible)
                    .flat_map(|r| r.charges.iter().map(|(_, m)| *m))
                    .sum()
            };
            for tenant in ["alpha", "beta"] {
                let limit = quotas.limit(tenant, &h100()).expect("configured");
                let used = s.usage().get(tenant, &h100());
                prop_assert!(used <= limit.max_milli.expect("capped"), "{tenant} over max");
                prop_assert!(
                    used.saturating_sub(limit.guaranteed_milli) <= held(tenant, None, true),
                    "{tenant}: borrowing held by non-preemptible jobs"
                );
                prop_assert_eq!(held(tenant, None, false), used);
            }
            for (tenant, queue) in places {
                let used = s.usage().get_in_queue(tenant, queue, &h100());
                prop_assert_eq!(held(tenant, Some(queue), false), used);
                if let Some(limit) = quotas.queue_limit(tenant, queue, &h100()) {
                    prop_assert!(
                        used <= limit.max_milli.expect("capped"),
                        "{tenant}/{queue} over max: {used}"
                    );
                    prop_assert!(
                        used.saturating_sub(limit.guaranteed_milli)
                            <= held(tenant, Some(queue), true),
                        "{tenant}/{queue}: borrowing held by non-preemptible jobs"
                    );
                }
            }
        }
    }
}

/// The extreme priorities order like any others (no overflow at `i32::MIN`).
#[test]
fn extreme_priorities_keep_their_order() {
    let mut s = scheduler(
        &leaf("a", "s1", "l1", "n", 1),
        Quotas::new(),
        QueueConfig::default(),
    );
    for (i, (id, priority)) in [("lowest", i32::MIN), ("highest", i32::MAX), ("zero", 0)]
        .into_iter()
        .enumerate()
    {
        s.submit(job(id, "t", gang(1, 8), priority, i as u64))
            .expect("new");
    }
    assert_eq!(placed(&s.queue_pass(0)), ["highest"]);
    let mut order = Vec::new();
    for _ in 0..2 {
        let running = placed_ids(&s);
        for id in &running {
            s.finish(&JobId(id.clone())).expect("running");
        }
        order.extend(placed(&s.queue_pass(0)));
    }
    assert_eq!(order, ["zero", "lowest"]);
}

fn placed_ids(s: &suanli_engine::queue::Scheduler) -> Vec<String> {
    s.running().map(|r| r.job.id.0.clone()).collect()
}
