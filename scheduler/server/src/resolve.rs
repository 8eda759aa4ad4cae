//! Resolution: which nodes and devices lie under a CID prefix and meet capability filters,
//! and the fabric tree of a domain.

use std::collections::BTreeMap;

use suanli_engine::inventory::PortState;
use suanli_engine::{Cid, GpuModel, MigProfile};
use suanli_proto::pb;
use tonic::Status;

use crate::core::NodeView;

/// A resolution query in domain terms.
#[derive(Debug, Clone, Default)]
pub struct Query {
    pub prefix: Option<Cid>,
    pub model: Option<GpuModel>,
    pub min_free_gpus: u32,
    pub min_free_memory_mib: u64,
    pub mig_profile: Option<MigProfile>,
    pub min_rdma_rate_gbps: f64,
}

impl Query {
    pub fn from_wire(msg: &pb::ResolveRequest) -> Result<Query, Status> {
        let bad = |field: &str, e: &dyn std::fmt::Display| {
            Status::invalid_argument(format!("{field}: {e}"))
        };
        Ok(Query {
            prefix: if msg.prefix.is_empty() {
                None
            } else {
                Some(msg.prefix.parse().map_err(|e| bad("prefix", &e))?)
            },
            model: if msg.model.is_empty() {
                None
            } else {
                Some(msg.model.parse().map_err(|e| bad("model", &e))?)
            },
            min_free_gpus: msg.min_free_gpus,
            min_free_memory_mib: msg.min_free_memory_mib,
            mig_profile: if msg.mig_profile.is_empty() {
                None
            } else {
                Some(
                    msg.mig_profile
                        .parse()
                        .map_err(|e| bad("mig_profile", &e))?,
                )
            },
            min_rdma_rate_gbps: if msg.min_rdma_rate_gbps.is_finite() {
                msg.min_rdma_rate_gbps.max(0.0)
            } else {
                return Err(bad("min_rdma_rate_gbps", &"is not a number"));
            },
        })
    }
}

/// Nodes under the prefix that meet every filter, with the matching devices, in CID order.
pub fn resolve(views: &[NodeView], q: &Query) -> Vec<pb::ResolvedNode> {
    let mut out = Vec::new();
    for v in views {
        let inv = &v.inventory;
        if v.lost || q.prefix.as_ref().is_some_and(|p| !p.is_prefix_of(&inv.cid)) {
            continue;
        }
        let mut devices = Vec::new();
        let mut free_gpus = 0u32;
        for (info, usage) in inv.gpus.iter().zip(&v.gpus) {
            if q.model.as_ref().is_some_and(|m| &info.model != m) {
                continue;
            }
            let free_memory = info.memory_mib.saturating_sub(usage.memory_used);
            let whole_free = usage.milli_used == 0 && usage.memory_used == 0 && !usage.exclusive;
            if whole_free {
                free_gpus += 1;
            }
            if free_memory < q.min_free_memory_mib {
                continue;
            }
            let cid = inv.gpu_cid(info.index);
            if let Some(profile) = &q.mig_profile {
                let offered = suanli_engine::gpu::mig_memory_class(info.memory_mib)
                    .and_then(|class| profile.spec_for(class));
                if !info.mig.enabled || offered.is_none() {
                    continue;
                }
                devices.push(pb::ResolvedDevice {
                    cid: cid.to_string(),
                    kind: pb::DeviceKind::Mig as i32,
                    id: info.uuid.clone(),
                    model: info.model.to_string(),
                    memory_mib: info.memory_mib,
                    free_memory_mib: free_memory,
                    free_milli: 1000u32.saturating_sub(usage.milli_used),
                    mig_profile: profile.to_string(),
                    rate_gbps: 0.0,
                    health: pb::Health::from(info.health) as i32,
                });
                continue;
            }
            devices.push(pb::ResolvedDevice {
                cid: cid.to_string(),
                kind: pb::DeviceKind::Gpu as i32,
                id: info.uuid.clone(),
                model: info.model.to_string(),
                memory_mib: info.memory_mib,
                free_memory_mib: free_memory,
                free_milli: if usage.exclusive {
                    0
                } else {
                    1000u32.saturating_sub(usage.milli_used)
                },
                mig_profile: String::new(),
                rate_gbps: 0.0,
                health: pb::Health::from(info.health) as i32,
            });
        }
        if free_gpus < q.min_free_gpus {
            continue;
        }
        if (q.model.is_some() || q.mig_profile.is_some() || q.min_free_memory_mib > 0)
            && devices.is_empty()
        {
            continue;
        }
        let mut nics = Vec::new();
        for nic in &inv.nics {
            let rate = nic
                .ports
                .iter()
                .filter(|p| p.state == PortState::Active)
                .map(|p| p.rate_gbps)
                .fold(0.0, f64::max);
            if rate < q.min_rdma_rate_gbps {
                continue;
            }
            let Ok(cid) = inv
                .cid
                .child(&suanli_engine::cid::sanitize_segment(&format!(
                    "nic-{}",
                    nic.name
                )))
            else {
                continue;
            };
            nics.push(pb::ResolvedDevice {
                cid: cid.to_string(),
                kind: pb::DeviceKind::Nic as i32,
                id: nic.node_guid.clone(),
                model: String::new(),
                memory_mib: 0,
                free_memory_mib: 0,
                free_milli: 0,
                mig_profile: String::new(),
                rate_gbps: rate,
                health: pb::Health::from(nic.health) as i32,
            });
        }
        if q.min_rdma_rate_gbps > 0.0 && nics.is_empty() {
            continue;
        }
        devices.extend(nics);
        out.push(pb::ResolvedNode {
            cid: inv.cid.to_string(),
            fabric: Some(inv.fabric.clone().into()),
            free_gpus,
            devices,
        });
    }
    out
}

/// A domain's nodes grouped by spine and leaf.
pub fn topology(views: &[NodeView], domain: &Cid) -> pb::TopologyResponse {
    let mut spines: BTreeMap<String, BTreeMap<String, Vec<pb::TopologyNode>>> = BTreeMap::new();
    for v in views {
        let inv = &v.inventory;
        if !domain.is_prefix_of(&inv.cid) {
            continue;
        }
        let mut models: Vec<String> = inv.gpus.iter().map(|g| g.model.to_string()).collect();
        models.sort();
        models.dedup();
        spines
            .entry(inv.fabric.spine.clone())
            .or_default()
            .entry(inv.fabric.leaf.clone())
            .or_default()
            .push(pb::TopologyNode {
                cid: inv.cid.to_string(),
                gpu_count: inv.gpus.len() as u32,
                models,
                gpu_pairs: inv.gpu_pairs.iter().cloned().map(Into::into).collect(),
                gpu_nic_pairs: inv.gpu_nic_pairs.iter().cloned().map(Into::into).collect(),
            });
    }
    pb::TopologyResponse {
        domain: domain.to_string(),
        spines: spines
            .into_iter()
            .map(|(spine, leaves)| pb::TopologySpine {
                id: spine,
                leaves: leaves
                    .into_iter()
                    .map(|(leaf, nodes)| pb::TopologyLeaf { id: leaf, nodes })
                    .collect(),
            })
            .collect(),
    }
}
