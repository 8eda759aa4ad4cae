//! `JobService.Logs` relayed from an in-test agent: the request the agent gets, flow control
//! through acknowledgements, cancel when the caller leaves, and the errors callers see.

use std::time::Duration;

use suanli_proto::pb;
use tokio_stream::StreamExt;
use tonic::Code;

use crate::{Agent, PROD, RESEARCH, TestServer, authed, inventory, job, submit};

fn logs_request(id: &str, follow: bool) -> pb::LogsRequest {
    pb::LogsRequest {
        id: id.into(),
        follow,
        ..Default::default()
    }
}

impl Agent {
    /// The next log message the scheduler sends, skipping everything else.
    async fn next_log_message(&mut self) -> pb::scheduler_message::Msg {
        use pb::scheduler_message::Msg;
        loop {
            let m = tokio::time::timeout(Duration::from_secs(10), self.down.next())
                .await
                .expect("a message within 10 s")
                .expect("stream open")
                .expect("ok message");
            if let Some(m @ (Msg::LogRequest(_) | Msg::LogAck(_) | Msg::LogCancel(_))) = m.msg {
                return m;
            }
        }
    }

    async fn chunk(&self, request_id: u64, data: &str, last: bool) {
        self.send(pb::agent_message::Msg::LogChunk(pb::LogChunk {
            request_id,
            data: data.as_bytes().to_vec(),
            last,
            ..Default::default()
        }))
        .await;
    }
}

#[tokio::test]
async fn logs_are_relayed_under_flow_control_and_cancelled_with_their_caller() {
    use pb::scheduler_message::Msg;
    let server = TestServer::start().await;
    let mut agent = Agent::connect(server.channel(), inventory("n1", 2), vec![]).await;
    let alive = agent.keep_alive();
    let mut jobs = server.jobs();
    let id = submit(&mut jobs, RESEARCH, job("talk", "research", 1), "")
        .await
        .id;
    let assigned = agent.next_assignment().await;

    let mut stream = jobs
        .logs(authed(RESEARCH, logs_request(&id, true)))
        .await
        .expect("opens")
        .into_inner();
    let Msg::LogRequest(request) = agent.next_log_message().await else {
        panic!("expected a log request");
    };
    assert_eq!(
        (request.job_id.as_str(), request.replica, request.attempt),
        (id.as_str(), 0, assigned.attempt)
    );
    assert!(request.follow && request.window >= 2, "{request:?}");
    // A whole window: the scheduler acknowledges only what the caller takes.
    for i in 0..request.window {
        agent
            .chunk(request.request_id, &format!("line {i}\n"), false)
            .await;
    }
    let first = tokio::time::timeout(Duration::from_secs(10), stream.next())
        .await
        .expect("a chunk")
        .expect("open")
        .expect("ok");
    assert_eq!(first.data, b"line 0\n");
    let mut acked = 0;
    for i in 1..request.window {
        let chunk = stream.next().await.expect("open").expect("ok");
        assert_eq!(chunk.data, format!("line {i}\n").as_bytes());
    }
    while acked < request.window / 2 {
        let Msg::LogAck(ack) = agent.next_log_message().await else {
            panic!("expected an ack");
        };
        assert_eq!(ack.request_id, request.request_id);
        acked += ack.chunks;
    }
    // The caller goes away: the agent is told to stop.
    drop(stream);
    loop {
        match agent.next_log_message().await {
            Msg::LogCancel(c) => {
                assert_eq!(c.request_id, request.request_id);
                break;
            }
            Msg::LogAck(_) => {}
            other => panic!("expected a cancel, got {other:?}"),
        }
    }

    // A finished read ends the stream; an agent-side "missing" is NOT_FOUND.
    let mut stream = jobs
        .logs(authed(RESEARCH, logs_request(&id, false)))
        .await
        .expect("opens")
        .into_inner();
    let Msg::LogRequest(request) = agent.next_log_message().await else {
        panic!("expected a log request");
    };
    agent.chunk(request.request_id, "all\n", true).await;
    assert_eq!(
        stream.next().await.expect("chunk").expect("ok").data,
        b"all\n"
    );
    assert!(stream.next().await.is_none(), "ends after the last chunk");
    let mut stream = jobs
        .logs(authed(RESEARCH, logs_request(&id, false)))
        .await
        .expect("opens")
        .into_inner();
    let Msg::LogRequest(request) = agent.next_log_message().await else {
        panic!("expected a log request");
    };
    agent
        .send(pb::agent_message::Msg::LogChunk(pb::LogChunk {
            request_id: request.request_id,
            last: true,
            error: "no log".into(),
            missing: true,
            ..Default::default()
        }))
        .await;
    let err = stream
        .next()
        .await
        .expect("an answer")
        .expect_err("missing");
    assert_eq!(err.code(), Code::NotFound, "{err:?}");

    // Another tenant's job is not found; a bad replica or attempt is named.
    let err = jobs
        .logs(authed(PROD, logs_request(&id, false)))
        .await
        .expect_err("another tenant's job");
    assert_eq!(err.code(), Code::NotFound);
    assert_eq!(err.message(), format!("job {id} not found"));
    let err = jobs
        .logs(authed(
            RESEARCH,
            pb::LogsRequest {
                replica: 2,
                ..logs_request(&id, false)
            },
        ))
        .await
        .expect_err("bad replica");
    assert_eq!(err.code(), Code::InvalidArgument);
    assert_eq!(
        err.message(),
        format!("replica: job {id} has 1 replica (0..0), got 2")
    );
    let err = jobs
        .logs(authed(
            RESEARCH,
            pb::LogsRequest {
                attempt: 4,
                ..logs_request(&id, false)
            },
        ))
        .await
        .expect_err("bad attempt");
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(err.message().starts_with("attempt: job "), "{err:?}");

    // The agent goes away: its node's logs cannot be read.
    alive.abort();
    drop(agent);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let err = jobs
        .logs(authed(RESEARCH, logs_request(&id, false)))
        .await
        .expect_err("node not connected");
    assert_eq!(err.code(), Code::FailedPrecondition, "{err:?}");
    assert!(err.message().contains("is not connected"), "{err:?}");
    server.shutdown().await;
}
