//! `JobService.Update`: what a change does to the queue, quotas, preemption, time limits and
//! an elastic job's size, and how bad requests are refused.

use std::collections::BTreeMap;

use suanli_engine::JobSpec;
use suanli_proto::pb;
use suanli_scheduler::config::QuotaGpus;
use tonic::Code;
use tonic::transport::Channel;

use super::{
    ADMIN, Agent, PROD, RESEARCH, TestServer, authed, get_job, inventory, job, recorded_wait,
    submit, wait_state,
};
use suanli_proto::pb::job_service_client::JobServiceClient;

async fn update(
    jobs: &mut JobServiceClient<Channel>,
    token: &str,
    request: pb::UpdateJobRequest,
) -> Result<pb::Job, tonic::Status> {
    jobs.update(authed(token, request))
        .await
        .map(tonic::Response::into_inner)
}

/// The message of a job's last `updated` event: what the update changed.
async fn last_update(jobs: &mut JobServiceClient<Channel>, id: &str) -> String {
    super::history(jobs, id)
        .await
        .into_iter()
        .rev()
        .find(|e| e.reason == "updated")
        .map(|e| e.message)
        .unwrap_or_default()
}

fn spec_of(job: &pb::Job) -> JobSpec {
    job.spec
        .clone()
        .expect("a job carries its spec")
        .try_into()
        .expect("a stored spec is valid")
}

/// Submits `spec` as research and waits for its assignment on `agent`.
async fn run_on(
    jobs: &mut JobServiceClient<Channel>,
    agent: &mut Agent,
    spec: JobSpec,
    key: &str,
) -> (pb::Job, pb::Assignment) {
    let submitted = submit(jobs, RESEARCH, spec.into(), key).await;
    let assigned = agent.next_assignment().await;
    assert_eq!(assigned.job_id, submitted.id);
    (submitted, assigned)
}

fn research(name: &str, gpus: u32) -> JobSpec {
    job(name, "research", gpus).try_into().expect("valid")
}

/// Two jobs wait for one GPU: raising the later one's priority puts it first.
#[tokio::test]
async fn a_priority_change_reorders_the_queue() {
    let server = TestServer::start().await;
    let mut agent = Agent::connect(server.channel(), inventory("n1", 1), vec![]).await;
    let mut jobs = server.jobs();
    let mut blocker = research("blocker", 1);
    blocker.preemptible = false;
    let (_, running) = run_on(&mut jobs, &mut agent, blocker, "blocker").await;
    let first = submit(&mut jobs, RESEARCH, job("first", "research", 1), "f").await;
    let second = submit(&mut jobs, RESEARCH, job("second", "research", 1), "s").await;
    recorded_wait(&mut jobs, &second.id).await;

    let raised = update(
        &mut jobs,
        RESEARCH,
        pb::UpdateJobRequest {
            id: second.id.clone(),
            priority: Some(5),
            ..Default::default()
        },
    )
    .await
    .expect("own job");
    assert_eq!(spec_of(&raised).priority, 5);
    assert_eq!(last_update(&mut jobs, &second.id).await, "priority 0 → 5");

    agent.run_to_exit(&running, 0).await;
    let next = agent.next_assignment().await;
    assert_eq!(next.job_id, second.id, "the raised job goes first");
    let first = get_job(&mut jobs, &first.id).await;
    assert_eq!(first.state, pb::JobState::Pending as i32);
    drop(agent);
    server.shutdown().await;
}

/// A running job moved to another queue takes its quota use along: the queue it left has
/// room again.
#[tokio::test]
async fn a_queue_change_moves_quota_use() {
    let limit = |guaranteed, max| {
        BTreeMap::from([(
            "H100".to_string(),
            QuotaGpus {
                guaranteed,
                max: Some(max),
            },
        )])
    };
    let server = TestServer::start_with(|cfg| {
        cfg.quotas = BTreeMap::from([
            ("research".to_string(), limit(4, 4)),
            ("research/a".to_string(), limit(1, 1)),
            ("research/b".to_string(), limit(1, 2)),
        ]);
    })
    .await;
    let mut agent = Agent::connect(server.channel(), inventory("n1", 4), vec![]).await;
    let mut jobs = server.jobs();
    let in_a = |name: &str| {
        let mut spec = research(name, 1);
        spec.queue = "a".into();
        spec
    };
    let (moving, _) = run_on(&mut jobs, &mut agent, in_a("moving"), "m").await;
    let waiting = submit(&mut jobs, RESEARCH, in_a("waiting").into(), "w").await;
    let why = recorded_wait(&mut jobs, &waiting.id).await;
    assert!(why.starts_with("queue research/a at quota"), "{why}");

    let moved = update(
        &mut jobs,
        RESEARCH,
        pb::UpdateJobRequest {
            id: moving.id.clone(),
            queue: Some("b".into()),
            ..Default::default()
        },
    )
    .await
    .expect("own job");
    assert_eq!(spec_of(&moved).queue, "b");
    assert_eq!(moved.state, pb::JobState::Placed as i32, "it keeps running");
    let assigned = agent.next_assignment().await;
    assert_eq!(assigned.job_id, waiting.id, "queue a has room again");
    drop(agent);
    server.shutdown().await;
}

/// A job made non-preemptible is not stopped for a higher-priority one; made preemptible
/// again, it is.
#[tokio::test]
async fn preemptible_false_protects_from_preemption() {
    let server = TestServer::start_with(|cfg| cfg.preemption.min_runtime_s = 0).await;
    let mut agent = Agent::connect(server.channel(), inventory("n1", 1), vec![]).await;
    let mut jobs = server.jobs();
    let (low, _) = run_on(&mut jobs, &mut agent, research("low", 1), "low").await;
    let kept = update(
        &mut jobs,
        RESEARCH,
        pb::UpdateJobRequest {
            id: low.id.clone(),
            preemptible: Some(false),
            ..Default::default()
        },
    )
    .await
    .expect("own job");
    assert!(!spec_of(&kept).preemptible);

    let mut high: JobSpec = job("high", "prod", 1).try_into().expect("valid");
    high.priority = 10;
    let high = submit(&mut jobs, PROD, high.into(), "high").await;
    recorded_wait(&mut jobs, &high.id).await;
    let low_now = get_job(&mut jobs, &low.id).await;
    assert_eq!(low_now.state, pb::JobState::Placed as i32, "not preempted");

    update(
        &mut jobs,
        ADMIN,
        pb::UpdateJobRequest {
            id: low.id.clone(),
            preemptible: Some(true),
            ..Default::default()
        },
    )
    .await
    .expect("admins update any job");
    let cancel = agent.next_cancel().await;
    assert_eq!(cancel.job_id, low.id);
    let assigned = agent.next_assignment().await;
    assert_eq!(assigned.job_id, high.id);
    drop(agent);
    server.shutdown().await;
}

/// A time limit given to a running job counts from its placement: passed already, the job
/// is stopped and fails with that reason.
#[tokio::test]
async fn a_time_limit_set_on_a_running_job_stops_it_when_passed() {
    let server = TestServer::start().await;
    let mut agent = Agent::connect(server.channel(), inventory("n1", 1), vec![]).await;
    let mut jobs = server.jobs();
    let (open, assigned) = run_on(&mut jobs, &mut agent, research("open", 1), "o").await;
    agent.report_started(&assigned).await;
    wait_state(&mut jobs, &open.id, pb::JobState::Running).await;

    let limited = update(
        &mut jobs,
        RESEARCH,
        pb::UpdateJobRequest {
            id: open.id.clone(),
            time_limit_s: Some(1),
            ..Default::default()
        },
    )
    .await
    .expect("own job");
    assert_eq!(spec_of(&limited).time_limit_s, Some(1));
    assert_eq!(
        last_update(&mut jobs, &open.id).await,
        "time limit none → 1 s"
    );
    let cancel = agent.next_cancel().await;
    assert_eq!(cancel.job_id, open.id);
    let failed = wait_state(&mut jobs, &open.id, pb::JobState::Failed).await;
    assert_eq!(failed.last_reason, "ran past its time limit of 1 s");
    drop(agent);
    server.shutdown().await;
}

/// Shrinking a running elastic job stops its highest replica, whose exit does not fail the
/// job, and frees its GPU; asking again for the size it has changes nothing.
#[tokio::test]
async fn shrinking_a_running_job_stops_its_highest_replica() {
    let server = TestServer::start().await;
    let mut agent = Agent::connect(server.channel(), inventory("n1", 4), vec![]).await;
    let mut jobs = server.jobs();
    let mut elastic = research("elastic", 1);
    elastic.replicas = 3;
    elastic.min_replicas = Some(1);
    let elastic = submit(&mut jobs, RESEARCH, elastic.into(), "e").await;
    let mut assigned = Vec::new();
    for _ in 0..3 {
        let a = agent.next_assignment().await;
        agent.report_started(&a).await;
        assigned.push(a);
    }
    wait_state(&mut jobs, &elastic.id, pb::JobState::Running).await;

    let shrunk = update(
        &mut jobs,
        RESEARCH,
        pb::UpdateJobRequest {
            id: elastic.id.clone(),
            replicas: Some(2),
            ..Default::default()
        },
    )
    .await
    .expect("own job");
    assert_eq!(spec_of(&shrunk).replicas, 2);
    assert_eq!(
        last_update(&mut jobs, &elastic.id).await,
        "replicas 3 → 2 (stopping replica 2)"
    );
    let kept: Vec<u32> = shrunk
        .placement
        .as_ref()
        .expect("placement")
        .replicas
        .iter()
        .map(|r| r.replica)
        .collect();
    assert_eq!(kept, [0, 1]);
    let cancel = agent.next_cancel().await;
    assert_eq!(
        (cancel.job_id.as_str(), cancel.replica),
        (elastic.id.as_str(), 2)
    );

    // The stopped replica ends by SIGTERM: not a failure of the job.
    let third = assigned
        .iter()
        .find(|a| a.replica == 2)
        .expect("replica 2 was assigned");
    agent
        .send(pb::agent_message::Msg::Exited(pb::WorkExited {
            job_id: elastic.id.clone(),
            replica: 2,
            exit_code: 143,
            signal: 15,
            message: "terminated".into(),
            ended_unix_ms: 0,
            attempt: third.attempt,
        }))
        .await;
    // Its GPU is free: a 2-GPU job fits beside the two kept replicas.
    let (pair, _) = run_on(&mut jobs, &mut agent, research("pair", 2), "p").await;
    let elastic_now = get_job(&mut jobs, &elastic.id).await;
    assert_eq!(elastic_now.state, pb::JobState::Running as i32);
    assert_eq!(
        get_job(&mut jobs, &pair.id).await.state,
        pb::JobState::Placed as i32
    );

    let same = update(
        &mut jobs,
        RESEARCH,
        pb::UpdateJobRequest {
            id: elastic.id.clone(),
            replicas: Some(2),
            ..Default::default()
        },
    )
    .await
    .expect("the size it has: nothing to do");
    assert_eq!(same.spec, shrunk.spec);
    let updates = super::history(&mut jobs, &elastic.id)
        .await
        .into_iter()
        .filter(|e| e.reason == "updated")
        .count();
    assert_eq!(updates, 1, "nothing to do: no new event");
    drop(agent);
    server.shutdown().await;
}

/// A pending elastic job is queued at its new size.
#[tokio::test]
async fn a_pending_elastic_job_is_queued_at_its_new_size() {
    let server = TestServer::start().await;
    let mut jobs = server.jobs();
    let mut elastic = research("elastic", 1);
    elastic.replicas = 4;
    elastic.min_replicas = Some(2);
    let elastic = submit(&mut jobs, RESEARCH, elastic.into(), "e").await;
    let resized = update(
        &mut jobs,
        RESEARCH,
        pb::UpdateJobRequest {
            id: elastic.id.clone(),
            replicas: Some(3),
            ..Default::default()
        },
    )
    .await
    .expect("own job");
    assert_eq!(spec_of(&resized).replicas, 3);
    assert_eq!(spec_of(&resized).min_replicas, Some(2));
    // Room for all four: it takes the three it asks for now.
    let mut agent = Agent::connect(server.channel(), inventory("n1", 4), vec![]).await;
    let placed = wait_state(&mut jobs, &elastic.id, pb::JobState::Placed).await;
    assert_eq!(placed.placement.expect("placement").replicas.len(), 3);
    for _ in 0..3 {
        agent.next_assignment().await;
    }
    drop(agent);
    server.shutdown().await;
}

/// Another tenant's job does not exist for the caller, as with cancel; a finished job
/// cannot change.
#[tokio::test]
async fn updates_follow_the_tenant_rules_of_cancel() {
    let server = TestServer::start().await;
    let mut jobs = server.jobs();
    let mine = submit(&mut jobs, RESEARCH, job("mine", "research", 1), "m").await;
    let err = update(
        &mut jobs,
        PROD,
        pb::UpdateJobRequest {
            id: mine.id.clone(),
            priority: Some(9),
            ..Default::default()
        },
    )
    .await
    .expect_err("hidden");
    assert_eq!(err.code(), Code::NotFound);
    assert_eq!(err.message(), format!("job {} not found", mine.id));
    assert_eq!(spec_of(&get_job(&mut jobs, &mine.id).await).priority, 0);

    jobs.cancel(authed(
        RESEARCH,
        pb::CancelJobRequest {
            id: mine.id.clone(),
            reason: String::new(),
        },
    ))
    .await
    .expect("cancels");
    let err = update(
        &mut jobs,
        RESEARCH,
        pb::UpdateJobRequest {
            id: mine.id.clone(),
            priority: Some(9),
            ..Default::default()
        },
    )
    .await
    .expect_err("finished");
    assert_eq!(err.code(), Code::FailedPrecondition);
    assert_eq!(err.message(), format!("job {} already cancelled", mine.id));
    server.shutdown().await;
}

/// Each bad request is refused in one line naming the field, and changes nothing.
#[tokio::test]
async fn bad_updates_name_the_field() {
    let server = TestServer::start().await;
    let mut agent = Agent::connect(server.channel(), inventory("n1", 4), vec![]).await;
    let mut jobs = server.jobs();
    let plain = submit(&mut jobs, RESEARCH, job("plain", "research", 1), "p").await;
    agent.next_assignment().await;
    // Four replicas asked, three fit: it runs at three.
    let mut elastic = research("elastic", 1);
    elastic.replicas = 4;
    elastic.min_replicas = Some(2);
    let elastic = submit(&mut jobs, RESEARCH, elastic.into(), "e").await;
    let placed = wait_state(&mut jobs, &elastic.id, pb::JobState::Placed).await;
    assert_eq!(placed.placement.as_ref().expect("placed").replicas.len(), 3);

    let cases: Vec<(pb::UpdateJobRequest, Code, String)> = vec![
        (
            pb::UpdateJobRequest {
                id: "j-99999999".into(),
                priority: Some(1),
                ..Default::default()
            },
            Code::NotFound,
            "job j-99999999 not found".into(),
        ),
        (
            pb::UpdateJobRequest {
                id: plain.id.clone(),
                replicas: Some(2),
                ..Default::default()
            },
            Code::InvalidArgument,
            format!(
                "replicas: job {} is not elastic (its spec sets no min_replicas); only an \
                 elastic job changes size",
                plain.id
            ),
        ),
        (
            pb::UpdateJobRequest {
                id: elastic.id.clone(),
                replicas: Some(5),
                ..Default::default()
            },
            Code::InvalidArgument,
            "replicas: must be between 2 and 4 (the job's min_replicas and replicas), got 5".into(),
        ),
        (
            pb::UpdateJobRequest {
                id: elastic.id.clone(),
                replicas: Some(1),
                ..Default::default()
            },
            Code::InvalidArgument,
            "replicas: must be between 2 and 4 (the job's min_replicas and replicas), got 1".into(),
        ),
        (
            pb::UpdateJobRequest {
                id: elastic.id.clone(),
                replicas: Some(4),
                ..Default::default()
            },
            Code::FailedPrecondition,
            format!(
                "replicas: job {} cannot grow to 4 replica(s): no node can hold a replica now \
                 (1 nodes looked at) (1 node: too few free GPUs)",
                elastic.id
            ),
        ),
        (
            pb::UpdateJobRequest {
                id: plain.id.clone(),
                time_limit_s: Some(0),
                ..Default::default()
            },
            Code::InvalidArgument,
            "time_limit_s: must be between 1 and 315360000, got 0".into(),
        ),
        (
            pb::UpdateJobRequest {
                id: plain.id.clone(),
                time_limit_s: Some(u64::MAX),
                ..Default::default()
            },
            Code::InvalidArgument,
            "time_limit_s: must be between 1 and 315360000, got 18446744073709551615".into(),
        ),
    ];
    for (request, code, message) in cases {
        let err = update(&mut jobs, RESEARCH, request.clone())
            .await
            .expect_err("refused");
        assert_eq!(
            (err.code(), err.message()),
            (code, message.as_str()),
            "{request:?}"
        );
        assert!(!err.message().contains('\n'));
    }
    let plain_now = spec_of(&get_job(&mut jobs, &plain.id).await);
    assert_eq!((plain_now.time_limit_s, plain_now.replicas), (None, 1));
    // Refused for lack of room, the elastic job keeps its size and its three replicas.
    let elastic_now = get_job(&mut jobs, &elastic.id).await;
    assert_eq!(spec_of(&elastic_now).replicas, 4);
    assert_eq!(elastic_now.placement, placed.placement);
    assert_eq!(last_update(&mut jobs, &elastic.id).await, "");
    drop(agent);
    server.shutdown().await;
}

/// Shrinking decides what the stopped replicas were waited for: a job whose unstarted
/// replicas go runs, and one whose kept replicas all succeeded has succeeded.
#[tokio::test]
async fn shrinking_away_what_a_job_waited_for_moves_it_on() {
    let server = TestServer::start().await;
    let mut agent = Agent::connect(server.channel(), inventory("n1", 8), vec![]).await;
    let mut jobs = server.jobs();
    let elastic = |name: &str| {
        let mut spec = research(name, 1);
        spec.replicas = 3;
        spec.min_replicas = Some(1);
        spec
    };
    let mut assigned = Vec::new();
    for name in ["starting", "ending"] {
        submit(&mut jobs, RESEARCH, elastic(name).into(), name).await;
        for _ in 0..3 {
            assigned.push(agent.next_assignment().await);
        }
    }
    let starting = assigned[0].job_id.clone();
    let ending = assigned[3].job_id.clone();
    for a in &assigned {
        match (a.job_id == starting, a.replica) {
            // Replica 2 of `starting` never starts.
            (true, 2) => {}
            (true, _) => agent.report_started(a).await,
            // Replicas 0 and 1 of `ending` succeed; replica 2 keeps running.
            (false, 2) => agent.report_started(a).await,
            (false, _) => agent.run_to_exit(a, 0).await,
        }
    }
    wait_state(&mut jobs, &ending, pb::JobState::Running).await;
    let shrink = |id: &str| pb::UpdateJobRequest {
        id: id.into(),
        replicas: Some(2),
        ..Default::default()
    };
    let started = update(&mut jobs, RESEARCH, shrink(&starting))
        .await
        .expect("own job");
    assert_eq!(started.state, pb::JobState::Running as i32);
    let ended = update(&mut jobs, RESEARCH, shrink(&ending))
        .await
        .expect("own job");
    assert_eq!(ended.state, pb::JobState::Succeeded as i32);
    assert_eq!(ended.last_reason, "every kept replica exited with code 0");
    drop(agent);
    server.shutdown().await;
}

/// A running elastic job that got fewer replicas than it asked grows once room frees up:
/// the new replica is numbered after the others, placed on the free GPU and sent to its
/// agent under the job's current attempt, with the whole grown gang as its peers.
#[tokio::test]
async fn growing_a_running_job_starts_the_new_replica() {
    let server = TestServer::start().await;
    let mut agent = Agent::connect(server.channel(), inventory("n1", 4), vec![]).await;
    let mut jobs = server.jobs();
    let (_, blocker) = run_on(&mut jobs, &mut agent, research("blocker", 1), "b").await;
    // Four replicas asked, three fit: it runs at three.
    let mut elastic = research("elastic", 1);
    elastic.replicas = 4;
    elastic.min_replicas = Some(2);
    let elastic = submit(&mut jobs, RESEARCH, elastic.into(), "e").await;
    let mut attempt = 0;
    for _ in 0..3 {
        let a = agent.next_assignment().await;
        agent.report_started(&a).await;
        attempt = a.attempt;
    }
    wait_state(&mut jobs, &elastic.id, pb::JobState::Running).await;
    agent.run_to_exit(&blocker, 0).await;
    wait_state(&mut jobs, &blocker.job_id, pb::JobState::Succeeded).await;

    let grown = update(
        &mut jobs,
        RESEARCH,
        pb::UpdateJobRequest {
            id: elastic.id.clone(),
            replicas: Some(4),
            ..Default::default()
        },
    )
    .await
    .expect("room for one more");
    assert_eq!(spec_of(&grown).replicas, 4);
    assert_eq!(
        last_update(&mut jobs, &elastic.id).await,
        "replicas 3 → 4 (starting replica 3)"
    );
    let placed: Vec<u32> = grown
        .placement
        .as_ref()
        .expect("placement")
        .replicas
        .iter()
        .map(|r| r.replica)
        .collect();
    assert_eq!(placed, [0, 1, 2, 3]);
    assert_eq!(
        grown.state,
        pb::JobState::Running as i32,
        "it keeps running"
    );

    let fourth = agent.next_assignment().await;
    assert_eq!(
        (fourth.job_id.as_str(), fourth.replica, fourth.attempt),
        (elastic.id.as_str(), 3, attempt)
    );
    assert_eq!(fourth.gpu_uuids.len(), 1);
    let peers: Vec<u32> = fourth.peers.iter().map(|p| p.replica).collect();
    assert_eq!(peers, [0, 1, 2, 3]);

    // Every GPU is taken now: the next job waits.
    let next = submit(&mut jobs, RESEARCH, job("next", "research", 1), "n").await;
    recorded_wait(&mut jobs, &next.id).await;
    agent.report_started(&fourth).await;
    let stored = get_job(&mut jobs, &elastic.id).await;
    assert_eq!(stored.state, pb::JobState::Running as i32);
    drop(agent);
    server.shutdown().await;
}
