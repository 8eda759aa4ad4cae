//! `ClusterService`: nodes, cordons, drains, removal, and resolving compute identifiers.

use suanli_engine::Cid;
use suanli_proto::pb;
use tonic::{Request, Response, Status};
use tracing::info;

use super::{Services, check_reason, fit_page, node_to_wire, page_size, parse_cid};
use crate::auth::Identity;
use crate::core::NodeView;

impl Services {
    async fn node_views(&self) -> Result<Vec<NodeView>, Status> {
        Ok(self.core.nodes().await?)
    }

    async fn set_cordon(
        &self,
        cid: &str,
        cordoned: bool,
        reason: String,
    ) -> Result<Response<pb::NodeStatus>, Status> {
        let node = parse_cid("cid", cid)?;
        let view = self.core.cordon(node, cordoned, reason).await?;
        Ok(Response::new(node_to_wire(&view, &Identity::Admin)))
    }

    async fn node_view(&self, cid: &Cid) -> Result<NodeView, Status> {
        self.node_views()
            .await?
            .into_iter()
            .find(|v| &v.inventory.cid == cid)
            .ok_or_else(|| Status::not_found(format!("node {cid} not found")))
    }
}

#[tonic::async_trait]
impl pb::cluster_service_server::ClusterService for Services {
    async fn list_nodes(
        &self,
        request: Request<pb::ListNodesRequest>,
    ) -> Result<Response<pb::ListNodesResponse>, Status> {
        let who = self.auth.user(request.metadata())?;
        let msg = request.into_inner();
        let prefix = if msg.prefix.is_empty() {
            None
        } else {
            Some(parse_cid("prefix", &msg.prefix)?)
        };
        let limit = page_size(msg.page.as_ref());
        let token = msg.page.map(|p| p.page_token).unwrap_or_default();
        let after = if token.is_empty() {
            None
        } else {
            Some(parse_cid("page.page_token", &token)?)
        };
        let views: Vec<NodeView> = self
            .node_views()
            .await?
            .into_iter()
            .filter(|v| {
                prefix
                    .as_ref()
                    .is_none_or(|p| p.is_prefix_of(&v.inventory.cid))
            })
            .collect();
        let total = views.len() as u64;
        let rest: Vec<&NodeView> = views
            .iter()
            .filter(|v| after.as_ref().is_none_or(|a| &v.inventory.cid > a))
            .collect();
        let candidates = rest
            .into_iter()
            .take(limit + 1)
            .map(|v| node_to_wire(v, &who))
            .collect();
        let (page, more) = fit_page(candidates, limit);
        let next = if more {
            page.last()
                .and_then(|n| n.inventory.as_ref())
                .map(|inv| inv.cid.clone())
                .unwrap_or_default()
        } else {
            String::new()
        };
        Ok(Response::new(pb::ListNodesResponse {
            nodes: page,
            page: Some(pb::PageInfo {
                next_page_token: next,
                total_size: total,
            }),
        }))
    }

    async fn get_node(
        &self,
        request: Request<pb::GetNodeRequest>,
    ) -> Result<Response<pb::NodeStatus>, Status> {
        let who = self.auth.user(request.metadata())?;
        let cid = parse_cid("cid", &request.get_ref().cid)?;
        Ok(Response::new(node_to_wire(
            &self.node_view(&cid).await?,
            &who,
        )))
    }

    async fn resolve(
        &self,
        request: Request<pb::ResolveRequest>,
    ) -> Result<Response<pb::ResolveResponse>, Status> {
        self.auth.user(request.metadata())?;
        let msg = request.into_inner();
        let query = crate::resolve::Query::from_wire(&msg)?;
        let limit = page_size(msg.page.as_ref());
        // The token is the last CID returned: nodes come in CID order.
        let after = match msg.page.as_ref().map(|p| p.page_token.as_str()) {
            None | Some("") => None,
            Some(token) => Some(parse_cid("page.page_token", token)?),
        };
        let views = self.node_views().await?;
        let nodes = crate::resolve::resolve(&views, &query);
        let total = nodes.len() as u64;
        let mut rest: Vec<pb::ResolvedNode> = nodes
            .into_iter()
            .filter(|n| {
                after
                    .as_ref()
                    .is_none_or(|a| n.cid.parse::<Cid>().is_ok_and(|c| &c > a))
            })
            .collect();
        rest.truncate(limit + 1);
        let (rest, more) = fit_page(rest, limit);
        let next = if more {
            rest.last().map(|n| n.cid.clone()).unwrap_or_default()
        } else {
            String::new()
        };
        Ok(Response::new(pb::ResolveResponse {
            nodes: rest,
            page: Some(pb::PageInfo {
                next_page_token: next,
                total_size: total,
            }),
        }))
    }

    async fn topology(
        &self,
        request: Request<pb::TopologyRequest>,
    ) -> Result<Response<pb::TopologyResponse>, Status> {
        self.auth.user(request.metadata())?;
        let domain = parse_cid("domain", &request.get_ref().domain)?;
        let views = self.node_views().await?;
        Ok(Response::new(crate::resolve::topology(&views, &domain)))
    }

    async fn cordon(
        &self,
        request: Request<pb::CordonRequest>,
    ) -> Result<Response<pb::NodeStatus>, Status> {
        self.auth.admin(request.metadata())?;
        let msg = request.into_inner();
        self.set_cordon(&msg.cid, true, check_reason("reason", &msg.reason)?)
            .await
    }

    async fn uncordon(
        &self,
        request: Request<pb::UncordonRequest>,
    ) -> Result<Response<pb::NodeStatus>, Status> {
        self.auth.admin(request.metadata())?;
        self.set_cordon(&request.get_ref().cid, false, String::new())
            .await
    }

    async fn drain(
        &self,
        request: Request<pb::DrainRequest>,
    ) -> Result<Response<pb::DrainResponse>, Status> {
        self.auth.admin(request.metadata())?;
        let msg = request.into_inner();
        let cid = parse_cid("cid", &msg.cid)?;
        let reason = check_reason("reason", &msg.reason)?;
        let evicted = self
            .core
            .drain(cid.clone(), reason, msg.grace_period_ms)
            .await?;
        let view = self.node_view(&cid).await?;
        Ok(Response::new(pb::DrainResponse {
            node: Some(node_to_wire(&view, &Identity::Admin)),
            evicted_job_ids: evicted.into_iter().map(|j| j.0).collect(),
        }))
    }

    async fn remove_node(
        &self,
        request: Request<pb::RemoveNodeRequest>,
    ) -> Result<Response<pb::RemoveNodeResponse>, Status> {
        self.auth.admin(request.metadata())?;
        let msg = request.into_inner();
        let node = parse_cid("cid", &msg.cid)?;
        if node.level() != suanli_engine::Level::Node {
            return Err(Status::invalid_argument(format!(
                "cid: {node} is not a node identifier (provider/region/domain/node)"
            )));
        }
        let requeued = self.core.remove_node(node.clone(), msg.force).await?;
        info!(node = %node, force = msg.force, requeued = requeued.len(), "Node removed by an admin.");
        Ok(Response::new(pb::RemoveNodeResponse {
            cid: node.to_string(),
            requeued_job_ids: requeued.into_iter().map(|j| j.0).collect(),
        }))
    }

    async fn telemetry(
        &self,
        request: Request<pb::TelemetryRequest>,
    ) -> Result<Response<pb::TelemetryResponse>, Status> {
        self.auth.user(request.metadata())?;
        let prefix = match request.get_ref().prefix.as_str() {
            "" => None,
            text => Some(parse_cid("prefix", text)?),
        };
        let map = self
            .telemetry
            .lock()
            .map_err(|_| Status::internal("telemetry lock poisoned"))?;
        let mut nodes: Vec<pb::NodeTelemetry> = map
            .iter()
            .filter(|(cid, _)| prefix.as_ref().is_none_or(|p| p.is_prefix_of(cid)))
            .map(|(cid, (t, at))| pb::NodeTelemetry {
                node_cid: cid.to_string(),
                telemetry: Some(t.clone()),
                received_unix_ms: *at,
            })
            .collect();
        nodes.sort_by(|a, b| a.node_cid.cmp(&b.node_cid));
        Ok(Response::new(pb::TelemetryResponse { nodes }))
    }
}
