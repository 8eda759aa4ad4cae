//! The generated server and client over a real socket on 127.0.0.1: a conversion error reaches
//! the caller as INVALID_ARGUMENT with the field path in its message.

use std::net::SocketAddr;
use std::pin::Pin;

use suanli_engine::inventory::NodeInventory;
use suanli_proto::convert::inventory::required_inventory;
use suanli_proto::pb::agent_service_client::AgentServiceClient;
use suanli_proto::pb::agent_service_server::{AgentService, AgentServiceServer};
use suanli_proto::pb::{self, agent_message, scheduler_message};
use tokio_stream::wrappers::TcpListenerStream;
use tokio_stream::{Stream, StreamExt};
use tonic::{Request, Response, Status, Streaming};

use crate::fixtures::full_inventory;

/// Registers nodes by converting their inventory; echoes heartbeats on the session.
struct Registrar;

#[tonic::async_trait]
impl AgentService for Registrar {
    async fn register(
        &self,
        request: Request<pb::RegisterRequest>,
    ) -> Result<Response<pb::RegisterResponse>, Status> {
        let inventory: NodeInventory = required_inventory(request.into_inner().inventory)?;
        Ok(Response::new(pb::RegisterResponse {
            node_cid: inventory.cid.to_string(),
            session_id: format!("s-{}", inventory.generation),
            heartbeat_interval_ms: 1000,
            telemetry_interval_ms: 5000,
            node_credential: String::new(),
        }))
    }

    type SessionStream = Pin<Box<dyn Stream<Item = Result<pb::SchedulerMessage, Status>> + Send>>;

    async fn session(
        &self,
        request: Request<Streaming<pb::AgentMessage>>,
    ) -> Result<Response<Self::SessionStream>, Status> {
        let incoming = request.into_inner();
        let acks = incoming.filter_map(|msg| match msg {
            Ok(pb::AgentMessage {
                msg: Some(agent_message::Msg::Heartbeat(beat)),
            }) => Some(Ok(pb::SchedulerMessage {
                msg: Some(scheduler_message::Msg::HeartbeatAck(pb::HeartbeatAck {
                    seq: beat.seq,
                })),
            })),
            Ok(_) => None,
            Err(status) => Some(Err(status)),
        });
        Ok(Response::new(Box::pin(acks)))
    }
}

async fn serve() -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("a free loopback port");
    let addr = listener.local_addr().expect("bound socket has an address");
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(AgentServiceServer::new(Registrar))
            .serve_with_incoming(TcpListenerStream::new(listener)),
    );
    addr
}

#[tokio::test]
async fn register_and_session_over_loopback() {
    let addr = serve().await;
    let mut client = AgentServiceClient::connect(format!("http://{addr}"))
        .await
        .expect("server is listening");

    let ok = client
        .register(pb::RegisterRequest {
            inventory: Some(full_inventory().into()),
            agent_version: "0.1.0".to_string(),
            node_credential: String::new(),
            advertise_addr: String::new(),
        })
        .await
        .expect("a valid inventory registers")
        .into_inner();
    assert_eq!(ok.node_cid, "cid:acme/cn-east-1/dc-a/hgx-017");
    assert_eq!(ok.session_id, "s-42");

    let mut bad = pb::NodeInventory::from(full_inventory());
    bad.gpus[2].uuid = bad.gpus[0].uuid.clone();
    let status = client
        .register(pb::RegisterRequest {
            inventory: Some(bad),
            agent_version: "0.1.0".to_string(),
            node_credential: String::new(),
            advertise_addr: String::new(),
        })
        .await
        .expect_err("a duplicate UUID is refused");
    assert_eq!(status.code(), tonic::Code::InvalidArgument);
    assert!(
        status
            .message()
            .starts_with("inventory.gpus[2].uuid: duplicate GPU UUID"),
        "{}",
        status.message()
    );

    let status = client
        .register(pb::RegisterRequest::default())
        .await
        .expect_err("no inventory is refused");
    assert_eq!(status.code(), tonic::Code::InvalidArgument);
    assert_eq!(
        status.message(),
        "inventory: the node inventory is required"
    );

    let beats = tokio_stream::iter((1..=3).map(|seq| pb::AgentMessage {
        msg: Some(agent_message::Msg::Heartbeat(pb::Heartbeat {
            seq,
            sent_unix_ms: 0,
        })),
    }));
    let mut replies = client
        .session(beats)
        .await
        .expect("session opens")
        .into_inner();
    let mut acked = Vec::new();
    while let Some(reply) = replies.next().await {
        match reply.expect("stream stays healthy").msg {
            Some(scheduler_message::Msg::HeartbeatAck(ack)) => acked.push(ack.seq),
            other => panic!("unexpected reply {other:?}"),
        }
    }
    assert_eq!(acked, vec![1, 2, 3]);
}
