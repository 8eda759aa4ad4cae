//! `AgentService`: registration with node credentials, and the session an agent holds while
//! it is connected.

use std::net::IpAddr;
use std::pin::Pin;

use suanli_proto::pb;
use tokio::sync::mpsc;
use tokio_stream::Stream;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};
use tracing::{info, warn};

use super::{
    MAX_GPUS_PER_POD, MAX_PODS_PER_NODE, MAX_SESSION_ID_LEN, SESSION_BUFFER, Services, convert_err,
    parse_cid, parse_job_id,
};
use crate::core::{AgentCommand, AgentSession, ReportedExit, RunningReplica};

/// The host a node's replicas reach each other at: what the agent advertises, else the
/// address its registration came from; empty (the node's name) when neither is known.
fn advertised_host(advertised: &str, peer_ip: Option<IpAddr>) -> Result<String, Status> {
    if advertised.is_empty() {
        return Ok(peer_ip
            .map(|ip| ip.to_canonical().to_string())
            .unwrap_or_default());
    }
    suanli_proto::convert::rendezvous::parse_advertise_addr(advertised)
        .map(|a| a.host)
        .map_err(|problem| Status::invalid_argument(format!("advertise_addr: {problem}")))
}

/// What the core keeps of an exit's detail: the signal when the agent said nothing else,
/// and at most 1,024 characters.
fn exit_message(x: &pb::WorkExited) -> String {
    if x.signal != 0 && x.message.is_empty() {
        format!("killed by signal {}", x.signal)
    } else {
        x.message.chars().take(1024).collect()
    }
}

type SchedulerStream = Pin<Box<dyn Stream<Item = Result<pb::SchedulerMessage, Status>> + Send>>;

fn command_to_wire(command: AgentCommand) -> pb::SchedulerMessage {
    use pb::scheduler_message::Msg;
    let msg = match command {
        AgentCommand::Assign(a) => Msg::Assign(pb::Assignment {
            job_id: a.job_id.0,
            replica: a.replica,
            command: a.spec.command.clone(),
            env: a.spec.env.clone().into_iter().collect(),
            gpu_uuids: a.gpu_uuids,
            volumes: a.spec.volumes.iter().cloned().map(Into::into).collect(),
            attempt: a.attempt,
            resources: Some(pb::Resources {
                cpu_milli: a.cpu_milli,
                memory_mib: a.memory_mib,
            }),
            job_name: a.spec.name.clone(),
            peers: a
                .peers
                .into_iter()
                .map(|p| pb::assignment::Peer {
                    replica: p.replica,
                    address: p.address,
                    gpus: p.gpus,
                })
                .collect(),
            master_port: u32::from(a.master_port),
        }),
        AgentCommand::Cancel {
            job_id,
            replica,
            attempt,
            grace_period_ms,
        } => Msg::Cancel(pb::Cancel {
            job_id: job_id.0,
            replica,
            grace_period_ms,
            attempt,
        }),
        AgentCommand::Reregister { reason } => Msg::Reregister(pb::Reregister { reason }),
        AgentCommand::Replaced { reason } => Msg::Replaced(pb::SessionReplaced { reason }),
        AgentCommand::ExitAck {
            job_id,
            replica,
            attempt,
        } => Msg::ExitAck(pb::ExitAck {
            job_id: job_id.0,
            replica,
            attempt,
        }),
    };
    pb::SchedulerMessage { msg: Some(msg) }
}

#[tonic::async_trait]
impl pb::agent_service_server::AgentService for Services {
    async fn register(
        &self,
        request: Request<pb::RegisterRequest>,
    ) -> Result<Response<pb::RegisterResponse>, Status> {
        let who = self.auth.agent(request.metadata())?;
        let peer_ip = request.remote_addr().map(|a| a.ip());
        let msg = request.into_inner();
        if msg.node_credential.len() > crate::credential::MAX_CREDENTIAL_LEN {
            return Err(Status::invalid_argument(format!(
                "node_credential: is {} bytes; a node credential has at most {}",
                msg.node_credential.len(),
                crate::credential::MAX_CREDENTIAL_LEN
            )));
        }
        let advertise_addr = advertised_host(&msg.advertise_addr, peer_ip)?;
        let inventory =
            suanli_proto::convert::required_inventory(msg.inventory).map_err(convert_err)?;
        let cid = inventory.cid.clone();
        let registration = self
            .core
            .register_at(inventory, msg.node_credential, advertise_addr, who)
            .await?;
        Ok(Response::new(pb::RegisterResponse {
            node_cid: cid.to_string(),
            session_id: registration.session_id,
            heartbeat_interval_ms: self.heartbeat_interval_ms,
            telemetry_interval_ms: self.telemetry_interval_ms,
            node_credential: registration.credential.unwrap_or_default(),
        }))
    }

    type SessionStream = SchedulerStream;

    async fn session(
        &self,
        request: Request<Streaming<pb::AgentMessage>>,
    ) -> Result<Response<Self::SessionStream>, Status> {
        self.auth.agent(request.metadata())?;
        let mut inbound = request.into_inner();
        use pb::agent_message::Msg;
        let hello = match inbound.message().await? {
            Some(pb::AgentMessage {
                msg: Some(Msg::Hello(hello)),
            }) => hello,
            Some(_) => {
                return Err(Status::invalid_argument(
                    "the first message of a session must be hello",
                ));
            }
            None => return Err(Status::cancelled("session closed before hello")),
        };
        let node = parse_cid("hello.node_cid", &hello.node_cid)?;
        if hello.session_id.len() > MAX_SESSION_ID_LEN {
            return Err(Status::invalid_argument(format!(
                "hello.session_id: is {} bytes; a session id has at most {MAX_SESSION_ID_LEN}",
                hello.session_id.len()
            )));
        }
        let mut running = Vec::new();
        for (i, r) in hello.running.iter().enumerate() {
            let job_id = parse_job_id(&r.job_id).map_err(|s| {
                Status::invalid_argument(format!("hello.running[{i}].job_{}", s.message()))
            })?;
            running.push(RunningReplica {
                job_id,
                replica: r.replica,
            });
        }
        let mut exits = Vec::new();
        for (i, x) in hello.unacknowledged_exits.iter().enumerate() {
            let job_id = parse_job_id(&x.job_id).map_err(|s| {
                Status::invalid_argument(format!(
                    "hello.unacknowledged_exits[{i}].job_{}",
                    s.message()
                ))
            })?;
            exits.push(ReportedExit {
                job_id,
                replica: x.replica,
                attempt: x.attempt,
                exit_code: x.exit_code,
                message: exit_message(x),
            });
        }
        let (to_agent, from_core) = mpsc::unbounded_channel::<AgentCommand>();
        let session = AgentSession {
            node: node.clone(),
            session_id: hello.session_id.clone(),
        };
        self.core
            .open_session(&session, running, exits, to_agent)
            .await?;
        // Bounded: an agent that stops reading cannot make the scheduler buffer without end.
        let (out_tx, out_rx) =
            mpsc::channel::<Result<pb::SchedulerMessage, Status>>(SESSION_BUFFER);
        self.logs.attach(&session, out_tx.clone());
        // Core → agent.
        let forward_tx = out_tx.clone();
        tokio::spawn(async move {
            let mut from_core = from_core;
            while let Some(command) = from_core.recv().await {
                let replaced = matches!(command, AgentCommand::Replaced { .. });
                if forward_tx.send(Ok(command_to_wire(command))).await.is_err() {
                    break;
                }
                if replaced {
                    // The agent has been told why; end the stream so it stops here.
                    let _ = forward_tx
                        .send(Err(Status::aborted("another session holds this node now")))
                        .await;
                    break;
                }
            }
        });
        // Agent → core. Every report carries the session, so the core can ignore a session
        // that no longer holds the node.
        let core = self.core.clone();
        let telemetry = self.telemetry.clone();
        let logs = self.logs.clone();
        tokio::spawn(async move {
            loop {
                let message = match inbound.message().await {
                    Ok(Some(m)) => m,
                    Ok(None) => break,
                    Err(status) => {
                        info!(node = %node, error = %status.message(), "Agent stream ended.");
                        break;
                    }
                };
                let Some(msg) = message.msg else { continue };
                match msg {
                    Msg::Hello(_) => {
                        warn!(node = %node, "Ignoring a second hello on one session.");
                    }
                    Msg::Heartbeat(hb) => {
                        core.heartbeat(&session);
                        let ack = pb::SchedulerMessage {
                            msg: Some(pb::scheduler_message::Msg::HeartbeatAck(pb::HeartbeatAck {
                                seq: hb.seq,
                            })),
                        };
                        match out_tx.try_send(Ok(ack)) {
                            Ok(()) => {}
                            Err(mpsc::error::TrySendError::Full(_)) => {
                                warn!(node = %node, "Agent does not read its session; closing it.");
                                break;
                            }
                            // The stream to the agent ended (replaced, or the agent left).
                            Err(mpsc::error::TrySendError::Closed(_)) => break,
                        }
                    }
                    Msg::Telemetry(t) => {
                        core.heartbeat(&session);
                        if let Ok(mut map) = telemetry.lock() {
                            map.insert(node.clone(), (t, crate::store::now_ms()));
                        }
                    }
                    Msg::Inventory(update) => {
                        match suanli_proto::convert::required_inventory(update.inventory) {
                            Ok(inventory) => core.inventory_update(&session, inventory),
                            Err(e) => {
                                // The node no longer matches what the scheduler places on:
                                // end the session, so the agent hears why and the node is not
                                // used on stale facts.
                                warn!(node = %node, error = %e, "Rejected an inventory update.");
                                let _ = out_tx.try_send(Err(convert_err(e)));
                                break;
                            }
                        }
                    }
                    Msg::PodDevices(d) => {
                        // Bounded, so a hostile agent cannot make the core hold much.
                        let pods = d
                            .pods
                            .into_iter()
                            .take(MAX_PODS_PER_NODE)
                            .map(|p| {
                                let ids = p.gpu_uuids.into_iter().take(MAX_GPUS_PER_POD).collect();
                                (p.namespace, p.name, ids)
                            })
                            .collect();
                        core.pod_devices(&session, pods);
                    }
                    Msg::LogChunk(chunk) => logs.deliver(&session, chunk),
                    Msg::Started(s) => match parse_job_id(&s.job_id) {
                        Ok(job_id) => {
                            logs.started(&session, job_id.clone(), s.replica, s.attempt);
                            core.work_started(&session, job_id, s.replica, s.attempt)
                        }
                        Err(e) => {
                            warn!(node = %node, error = %e.message(), "Bad work-started report.")
                        }
                    },
                    Msg::Exited(x) => match parse_job_id(&x.job_id) {
                        Ok(job_id) => {
                            let message = exit_message(&x);
                            core.work_exited(
                                &session,
                                job_id,
                                x.replica,
                                x.attempt,
                                x.exit_code,
                                message,
                            );
                        }
                        Err(e) => {
                            warn!(node = %node, error = %e.message(), "Bad work-exited report.")
                        }
                    },
                }
            }
            logs.detach(&session);
            core.session_closed(session);
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(out_rx))))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_advertised_host_defaults_to_the_peer_and_is_bounded() {
        let peer: Option<IpAddr> = "::ffff:10.0.0.7".parse().ok();
        assert_eq!(advertised_host("", peer).expect("peer"), "10.0.0.7");
        assert_eq!(advertised_host("", None).expect("none"), "");
        assert_eq!(
            advertised_host("gpu-7.dc-a:2222", peer).expect("valid"),
            "gpu-7.dc-a"
        );
        let bad = advertised_host("gpu 7", peer).expect_err("invalid");
        assert_eq!(bad.code(), tonic::Code::InvalidArgument);
        assert!(bad.message().starts_with("advertise_addr: "), "{bad:?}");
        let long = "a".repeat(100_000);
        let err = advertised_host(&long, peer).expect_err("too long");
        assert!(err.message().contains("at most 259"), "{err:?}");
    }
}
