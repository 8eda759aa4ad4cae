//! What one agent or one job can do to everybody else, probed with only the tokens such a
//! party holds: take over a node, poison the cluster with an inventory, wedge listings with a
//! huge job, or slip control characters and oversized identifiers past the door.

use super::*;

use suanli_scheduler::store::{Durability, Store};

const N1: &str = "cid:acme/cn-east-1/dc-a/n1";

/// The next message on a session that is not a heartbeat ack.
async fn next_news(agent: &mut Agent) -> Option<Result<pb::SchedulerMessage, tonic::Status>> {
    loop {
        let m = tokio::time::timeout(Duration::from_secs(10), agent.down.next())
            .await
            .expect("news within 10 s");
        match m {
            Some(Ok(pb::SchedulerMessage {
                msg: Some(pb::scheduler_message::Msg::HeartbeatAck(_)),
            })) => continue,
            other => return other,
        }
    }
}

fn register(inv: NodeInventory, token: &str, credential: &str) -> Request<pb::RegisterRequest> {
    authed(
        token,
        pb::RegisterRequest {
            inventory: Some(inv.into()),
            agent_version: "test".into(),
            node_credential: credential.into(),
            advertise_addr: String::new(),
        },
    )
}

/// A session opened with `session_id` for `node`, as an attacker would try.
async fn open_session(
    ch: Channel,
    node: &str,
    session_id: &str,
) -> Result<tonic::Streaming<pb::SchedulerMessage>, tonic::Status> {
    let (up, rx) = mpsc::channel(4);
    up.send(msg(pb::agent_message::Msg::Hello(pb::Hello {
        node_cid: node.into(),
        session_id: session_id.into(),
        running: vec![],
        unacknowledged_exits: vec![],
    })))
    .await
    .expect("queued");
    // Keep the sender open past the call, so the stream is not closed under it.
    std::mem::forget(up);
    let mut client = AgentServiceClient::new(ch);
    Ok(client
        .session(authed(JOIN, ReceiverStream::new(rx)))
        .await?
        .into_inner())
}

#[tokio::test]
async fn the_join_token_alone_cannot_take_over_a_node() {
    let server = TestServer::start().await;
    let ch = server.channel();
    let mut owner = Agent::connect(ch.clone(), inventory("n1", 8), vec![]).await;
    assert!(owner.credential.starts_with("suanli-node-"));
    let beat = owner.keep_alive();
    let mut jobs = server.jobs();
    let mut secret_job = job("secret", "prod", 8);
    secret_job
        .env
        .insert("HF_TOKEN".into(), "hf_very_secret".into());
    let id = submit(&mut jobs, PROD, secret_job, "").await.id;
    let a = owner.next_assignment().await;
    assert_eq!(
        a.env.get("HF_TOKEN").map(String::as_str),
        Some("hf_very_secret")
    );
    owner.report_started(&a).await;
    wait_state(&mut jobs, &id, pb::JobState::Running).await;

    // The attacker holds the join token and the node's CID, but not its credential.
    let mut attacker = server.agents();
    let err = attacker
        .register(register(inventory("n1", 8), JOIN, ""))
        .await
        .expect_err("a connected node is not registered twice");
    assert_eq!(err.code(), Code::AlreadyExists, "{err:?}");
    assert!(
        err.message().contains("held by a connected agent"),
        "{err:?}"
    );
    let err = attacker
        .register(register(inventory("n1", 8), JOIN, "suanli-node-guess"))
        .await
        .expect_err("a wrong credential is no credential");
    assert_eq!(err.code(), Code::AlreadyExists);
    // Nor can it open a session with a made-up id.
    let err = open_session(ch.clone(), N1, "s-1")
        .await
        .expect_err("no such session");
    assert_eq!(err.code(), Code::NotFound);

    // The owner's work runs on, and it still hears from the scheduler.
    owner.heartbeat(99).await;
    let job = get_job(&mut jobs, &id).await;
    assert_eq!(job.state, pb::JobState::Running as i32);

    // The owner's agent restarts (same credential): the new session takes over, the old one
    // is told so and closed, and nothing the old session says counts any more.
    let restarted = Agent::connect_with(
        ch.clone(),
        inventory("n1", 8),
        vec![pb::RunningWork {
            job_id: id.clone(),
            replica: 0,
            pid: 7,
            gpu_uuids: a.gpu_uuids.clone(),
            started_unix_ms: 0,
            attempt: a.attempt,
        }],
        &owner.credential,
    )
    .await;
    assert!(
        restarted.credential == owner.credential,
        "the credential is kept"
    );
    match next_news(&mut owner).await {
        Some(Ok(pb::SchedulerMessage {
            msg: Some(pb::scheduler_message::Msg::Replaced(r)),
        })) => assert!(r.reason.contains("registered again"), "{r:?}"),
        other => panic!("expected Replaced, got {other:?}"),
    }
    let end = next_news(&mut owner).await;
    assert!(
        matches!(&end, Some(Err(s)) if s.code() == Code::Aborted) || end.is_none(),
        "the replaced stream ends: {end:?}"
    );
    beat.abort();
    owner
        .send(pb::agent_message::Msg::Exited(pb::WorkExited {
            job_id: id.clone(),
            replica: 0,
            exit_code: 137,
            signal: 9,
            message: String::new(),
            ended_unix_ms: 0,
            attempt: a.attempt,
        }))
        .await;
    restarted.heartbeat(1).await;
    // Flush the core: an answered call is applied after the exit report.
    jobs.explain(authed(ADMIN, pb::ExplainJobRequest { id: id.clone() }))
        .await
        .expect("explains");
    let job = get_job(&mut jobs, &id).await;
    assert_eq!(job.state, pb::JobState::Running as i32);

    // Once the node is free of any agent, the join token still cannot claim it.
    drop(restarted);
    drop(owner);
    let mut cluster = server.cluster();
    wait_node(&mut cluster, N1, "lost its session", |n| {
        n.condition != pb::NodeCondition::Ready as i32
    })
    .await;
    let err = attacker
        .register(register(inventory("n1", 8), JOIN, ""))
        .await
        .expect_err("a known node needs its credential");
    assert_eq!(err.code(), Code::PermissionDenied);
    assert!(err.message().contains("suanli node remove"), "{err:?}");
    // An admin may re-register it, which issues a new credential.
    let fresh = attacker
        .register(register(inventory("n1", 8), ADMIN, ""))
        .await
        .expect("an admin re-registers")
        .into_inner();
    assert!(fresh.node_credential.starts_with("suanli-node-"));
    server.shutdown().await;
}

#[tokio::test]
async fn inventories_past_the_limits_are_refused_and_the_cluster_keeps_placing() {
    let server = TestServer::start().await;
    let ch = server.channel();
    let mut good = Agent::connect(ch.clone(), inventory("n1", 2), vec![]).await;
    let beat = good.keep_alive();
    let mut agents = server.agents();

    let err = agents
        .register(register(inventory("big", 65), JOIN, ""))
        .await
        .expect_err("65 GPUs");
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(
        err.message().starts_with("inventory.gpus: "),
        "{}",
        err.message()
    );
    let mut huge = inventory("huge", 1);
    huge.cpu_milli = u64::MAX;
    let err = agents
        .register(register(huge, JOIN, ""))
        .await
        .expect_err("2^64-1 CPU");
    assert_eq!(
        err.message(),
        "inventory.cpu_milli: must be between 1 and 100000000, got 18446744073709551615"
    );
    let mut huge = inventory("huge", 1);
    huge.memory_mib = u64::MAX;
    let err = agents
        .register(register(huge, JOIN, ""))
        .await
        .expect_err("2^64-1 memory");
    assert!(
        err.message()
            .starts_with("inventory.memory_mib: must be between 1 and")
    );

    // An update with 100 GPUs from a connected agent ends its session with the reason, and
    // changes nothing.
    let mut poisoned = Agent::connect(ch.clone(), inventory("n2", 1), vec![]).await;
    poisoned
        .send(pb::agent_message::Msg::Inventory(pb::InventoryUpdate {
            inventory: Some(inventory("n2", 100).into()),
        }))
        .await;
    match next_news(&mut poisoned).await {
        Some(Err(status)) => {
            assert_eq!(status.code(), Code::InvalidArgument);
            assert!(status.message().starts_with("inventory.gpus"), "{status:?}");
        }
        other => panic!("expected the session to end with the reason, got {other:?}"),
    }
    let mut cluster = server.cluster();
    let n2 = node_status(&mut cluster, "cid:acme/cn-east-1/dc-a/n2").await;
    assert_eq!(n2.inventory.expect("inventory").gpus.len(), 1);

    // The cluster still places.
    let mut jobs = server.jobs();
    let id = submit(&mut jobs, RESEARCH, job("still", "research", 2), "")
        .await
        .id;
    let a = good.next_assignment().await;
    assert_eq!(a.job_id, id);
    good.report_started(&a).await;
    wait_state(&mut jobs, &id, pb::JobState::Running).await;
    beat.abort();
    let credential = good.credential.clone();
    drop((good, poisoned));

    // A store that already holds an inventory this version refuses (written by an older,
    // looser version) quarantines that node only: the rest loads and places, and the running
    // job keeps its GPUs.
    let server = server
        .restart_after(|dir| {
            let mut store = Store::open(dir, Durability::Normal).expect("store opens");
            store
                .upsert_node(&inventory("big", 65))
                .expect("old versions stored it");
            let mut greedy = inventory("greedy", 1);
            greedy.cpu_milli = u64::MAX;
            store.upsert_node(&greedy).expect("stored");
        })
        .await;
    let ch = server.channel();
    let mut cluster = server.cluster();
    let big = node_status(&mut cluster, "cid:acme/cn-east-1/dc-a/big").await;
    assert_eq!(big.condition, pb::NodeCondition::Invalid as i32);
    assert!(
        big.invalid_reason.contains("gpus"),
        "{}",
        big.invalid_reason
    );
    let greedy = node_status(&mut cluster, "cid:acme/cn-east-1/dc-a/greedy").await;
    assert_eq!(greedy.condition, pb::NodeCondition::Invalid as i32);
    assert!(
        greedy.invalid_reason.contains("cpu_milli"),
        "{}",
        greedy.invalid_reason
    );
    let good = Agent::connect_with(
        ch.clone(),
        inventory("n1", 2),
        vec![pb::RunningWork {
            job_id: id.clone(),
            replica: 0,
            pid: 7,
            gpu_uuids: a.gpu_uuids.clone(),
            started_unix_ms: 0,
            attempt: a.attempt,
        }],
        &credential,
    )
    .await;
    let beat = good.keep_alive();
    let _n3 = Agent::connect(ch.clone(), inventory("n3", 1), vec![]).await;
    let mut jobs = server.jobs();
    let job = get_job(&mut jobs, &id).await;
    assert_eq!(
        job.state,
        pb::JobState::Running as i32,
        "kept across the restart"
    );
    let next = submit(&mut jobs, RESEARCH, job_named("after", 1), "")
        .await
        .id;
    let placed = wait_state(&mut jobs, &next, pb::JobState::Placed).await;
    assert_eq!(placed_nodes(&placed), vec!["n3".to_string()]);
    beat.abort();
    drop(good);
    server.shutdown().await;
}

fn job_named(name: &str, gpus: u32) -> pb::JobSpec {
    job(name, "research", gpus)
}

#[tokio::test]
async fn a_huge_job_is_refused_and_listing_works() {
    let server = TestServer::start().await;
    let mut jobs = server.jobs();
    let mut spec = job("huge", "research", 1);
    spec.command = vec!["python".into(), "x".repeat(15 * 1024 * 1024)];
    let err = jobs
        .submit(authed(
            RESEARCH,
            pb::SubmitJobRequest {
                spec: Some(spec),
                request_id: String::new(),
            },
        ))
        .await
        .expect_err("15 MB of command");
    assert_eq!(err.code(), Code::InvalidArgument);
    assert_eq!(
        err.message(),
        format!(
            "spec.command: is {} bytes; at most 131072",
            15 * 1024 * 1024 + "python".len()
        )
    );
    let mut spec = job("env", "research", 1);
    for i in 0..200 {
        spec.env.insert(format!("VAR_{i}"), "v".repeat(1024));
    }
    let err = jobs
        .submit(authed(
            RESEARCH,
            pb::SubmitJobRequest {
                spec: Some(spec),
                request_id: String::new(),
            },
        ))
        .await
        .expect_err("200 KiB of environment");
    assert!(
        err.message().starts_with("spec.env: is "),
        "{}",
        err.message()
    );

    // Jobs at the cap list in pages that any client can read (4 MiB by default).
    for i in 0..40 {
        let mut spec = job(&format!("big-{i}"), "research", 1);
        spec.command = vec!["x".repeat(120 * 1024)];
        submit(&mut jobs, RESEARCH, spec, "").await;
    }
    let mut listed = 0;
    let mut token = String::new();
    loop {
        let page = jobs
            .list(authed(
                ADMIN,
                pb::ListJobsRequest {
                    page: Some(pb::PageRequest {
                        page_size: 1000,
                        page_token: token.clone(),
                    }),
                    ..Default::default()
                },
            ))
            .await
            .expect("a page fits the client's default limit")
            .into_inner();
        assert!(prost::Message::encoded_len(&page) < 4 * 1024 * 1024);
        listed += page.jobs.len();
        token = page.page.expect("page").next_page_token;
        if token.is_empty() {
            break;
        }
    }
    assert_eq!(listed, 40);
    server.shutdown().await;
}

#[tokio::test]
async fn a_node_without_a_session_gets_no_work_and_can_be_removed() {
    let server = TestServer::start().await;
    let ch = server.channel();
    // A ghost registers with the join token but never opens a session.
    let mut agents = server.agents();
    agents
        .register(register(inventory("ghost", 8), JOIN, ""))
        .await
        .expect("registers");
    let mut jobs = server.jobs();
    let id = submit(&mut jobs, RESEARCH, job("first", "research", 8), "")
        .await
        .id;
    let why = explain_until(&mut jobs, &id, |w| pending_of(w).is_some()).await;
    assert_eq!(why.state, pb::JobState::Pending as i32, "{why:?}");
    // A real agent arrives: the job goes there, not to the ghost.
    let mut real = Agent::connect(ch.clone(), inventory("real", 8), vec![]).await;
    let beat = real.keep_alive();
    let a = real.next_assignment().await;
    assert_eq!(a.job_id, id);
    real.report_started(&a).await;
    wait_state(&mut jobs, &id, pb::JobState::Running).await;

    let mut cluster = server.cluster();
    let remove = |cid: &str, force: bool| {
        authed(
            ADMIN,
            pb::RemoveNodeRequest {
                cid: cid.into(),
                force,
            },
        )
    };
    // Only admins remove nodes.
    let err = cluster
        .remove_node(authed(
            RESEARCH,
            pb::RemoveNodeRequest {
                cid: "cid:acme/cn-east-1/dc-a/ghost".into(),
                force: false,
            },
        ))
        .await
        .expect_err("tenants may not");
    assert_eq!(err.code(), Code::PermissionDenied);
    let gone = cluster
        .remove_node(remove("cid:acme/cn-east-1/dc-a/ghost", false))
        .await
        .expect("the ghost holds nothing")
        .into_inner();
    assert!(gone.requeued_job_ids.is_empty());
    let err = cluster
        .get_node(authed(
            ADMIN,
            pb::GetNodeRequest {
                cid: "cid:acme/cn-east-1/dc-a/ghost".into(),
            },
        ))
        .await
        .expect_err("forgotten");
    assert_eq!(err.code(), Code::NotFound);
    // Its credential went with it: the join token may register the name anew.
    agents
        .register(register(inventory("ghost", 8), JOIN, ""))
        .await
        .expect("a removed node is new again");

    // A node with work bound to it is kept unless forced; forcing sends the work back.
    let err = cluster
        .remove_node(remove("cid:acme/cn-east-1/dc-a/real", false))
        .await
        .expect_err("work is bound to it");
    assert_eq!(err.code(), Code::FailedPrecondition);
    assert!(err.message().contains(&id), "{}", err.message());
    let forced = cluster
        .remove_node(remove("cid:acme/cn-east-1/dc-a/real", true))
        .await
        .expect("forced")
        .into_inner();
    assert_eq!(forced.requeued_job_ids, vec![id.clone()]);
    let job = get_job(&mut jobs, &id).await;
    assert_eq!(job.state, pb::JobState::Pending as i32);
    let history: Vec<pb::JobEvent> = jobs
        .watch(authed(
            ADMIN,
            pb::WatchJobsRequest {
                job_id: id.clone(),
                replay_only: true,
                ..Default::default()
            },
        ))
        .await
        .expect("history")
        .into_inner()
        .filter_map(Result::ok)
        .collect()
        .await;
    let last = history.last().expect("events");
    assert_eq!(last.to_state, pb::JobState::Pending as i32);
    assert_eq!(last.reason, "node_removed");
    assert!(last.message.contains("removed by an admin"), "{last:?}");
    beat.abort();
    server.shutdown().await;
}

#[tokio::test]
async fn tenants_see_only_their_own_jobs_on_a_node() {
    let server = TestServer::start().await;
    let ch = server.channel();
    let mut agent = Agent::connect(ch.clone(), inventory("n1", 2), vec![]).await;
    let beat = agent.keep_alive();
    let mut jobs = server.jobs();
    let mine = submit(&mut jobs, RESEARCH, job("mine", "research", 1), "")
        .await
        .id;
    let theirs = submit(&mut jobs, PROD, job("theirs", "prod", 1), "")
        .await
        .id;
    for _ in 0..2 {
        let a = agent.next_assignment().await;
        agent.report_started(&a).await;
    }
    wait_state(&mut jobs, &theirs, pb::JobState::Running).await;
    let mut cluster = server.cluster();
    let as_research = cluster
        .get_node(authed(RESEARCH, pb::GetNodeRequest { cid: N1.into() }))
        .await
        .expect("get node")
        .into_inner();
    assert_eq!(as_research.job_ids, vec![mine.clone()]);
    let per_gpu: Vec<String> = as_research
        .gpus
        .iter()
        .flat_map(|g| g.job_ids.clone())
        .collect();
    assert_eq!(per_gpu, vec![mine.clone()]);
    let listed = cluster
        .list_nodes(authed(PROD, pb::ListNodesRequest::default()))
        .await
        .expect("list")
        .into_inner();
    assert_eq!(listed.nodes[0].job_ids, vec![theirs.clone()]);
    let as_admin = node_status(&mut cluster, N1).await;
    let mut both = vec![mine, theirs];
    both.sort();
    assert_eq!(as_admin.job_ids, both);
    beat.abort();
    server.shutdown().await;
}

#[tokio::test]
async fn hostile_strings_get_bounded_invalid_argument_errors() {
    let server = TestServer::start().await;
    let ch = server.channel();
    let mut jobs = server.jobs();
    let err = jobs
        .submit(authed(
            RESEARCH,
            pb::SubmitJobRequest {
                spec: Some(job("evil\x1b[2J\rname", "research", 1)),
                request_id: String::new(),
            },
        ))
        .await
        .expect_err("control characters");
    assert_eq!(err.code(), Code::InvalidArgument);
    assert_eq!(
        err.message(),
        "spec.name: has control character '\\u{1b}' at position 4; only printable text is allowed"
    );
    let err = jobs
        .cancel(authed(
            ADMIN,
            pb::CancelJobRequest {
                id: "abc".into(),
                reason: "line\nbreak".into(),
            },
        ))
        .await
        .expect_err("control characters in a reason");
    assert_eq!(err.code(), Code::InvalidArgument);

    let mut cluster = server.cluster();
    let err = cluster
        .get_node(authed(
            ADMIN,
            pb::GetNodeRequest {
                cid: "cid:acme/cn-east-1/dc-a/..".into(),
            },
        ))
        .await
        .expect_err("a dot segment");
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(err.message().contains("\"..\" is not allowed"), "{err:?}");
    // A 16 KB identifier gets a short error, not a broken status.
    let long = format!("cid:acme/{}", "x".repeat(16 * 1024));
    let err = cluster
        .get_node(authed(ADMIN, pb::GetNodeRequest { cid: long }))
        .await
        .expect_err("too long");
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(err.message().len() < 300, "{}", err.message());
    let err = jobs
        .get(authed(
            ADMIN,
            pb::GetJobRequest {
                id: "y".repeat(20_000),
            },
        ))
        .await
        .expect_err("not a job id");
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(err.message().len() < 300);

    // Bytes that are no protobuf message are the caller's fault.
    let mut raw = tonic::client::Grpc::new(ch.clone());
    raw.ready().await.expect("ready");
    let err = raw
        .unary::<_, pb::Job, _>(
            authed(
                ADMIN,
                pb::Heartbeat {
                    seq: 5,
                    sent_unix_ms: 1,
                },
            ),
            "/suanli.v1.JobService/Get".parse().expect("path"),
            tonic_prost::ProstCodec::<pb::Heartbeat, pb::Job>::default(),
        )
        .await
        .expect_err("a heartbeat is no GetJobRequest");
    assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");
    assert!(
        err.message()
            .starts_with("request: failed to decode Protobuf message"),
        "{err:?}"
    );
    server.shutdown().await;
}

/// A session that never says hello, or a call whose body never comes, holds nothing for long.
#[tokio::test]
async fn a_silent_session_is_ended_at_the_request_timeout() {
    let server = TestServer::start_with(|c| c.grpc.request_timeout_ms = 300).await;
    let ch = server.channel();
    let (_up, rx) = mpsc::channel::<pb::AgentMessage>(1);
    let mut client = server.agents();
    let call = client.session(authed(JOIN, ReceiverStream::new(rx)));
    let err = tokio::time::timeout(Duration::from_secs(20), call)
        .await
        .expect("answered long before the test gives up")
        .expect_err("no hello, no session");
    assert_eq!(err.code(), Code::Cancelled, "{err:?}");
    // The server is fine for everybody else.
    let agent = Agent::connect(ch, inventory("n1", 1), vec![]).await;
    agent.heartbeat(1).await;
    server.shutdown().await;
}

/// An agent that floods heartbeats but never reads its session cannot make the scheduler
/// queue answers without end: the session is closed.
#[tokio::test]
async fn an_agent_that_stops_reading_is_closed() {
    let server = TestServer::start().await;
    let ch = server.channel();
    let agent = Agent::connect(ch.clone(), inventory("n1", 1), vec![]).await;
    let mut cluster = server.cluster();
    assert_eq!(
        node_status(&mut cluster, N1).await.condition,
        pb::NodeCondition::Ready as i32
    );
    // Acks are a few bytes each: far more than HTTP/2's window and the session's buffer.
    let mut seq = 0;
    let mut closed = false;
    while seq < 200_000 && !closed {
        for _ in 0..1000 {
            seq += 1;
            if agent
                .up
                .send(msg(pb::agent_message::Msg::Heartbeat(pb::Heartbeat {
                    seq,
                    sent_unix_ms: 0,
                })))
                .await
                .is_err()
            {
                break;
            }
        }
        closed = node_status(&mut cluster, N1).await.condition != pb::NodeCondition::Ready as i32;
    }
    assert!(
        closed,
        "the session was closed after {seq} unread heartbeats"
    );
    server.shutdown().await;
}
