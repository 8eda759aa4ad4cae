//! Which nodes can hold replicas now and how many each, or the first reason a node holds
//! none: the request resolved against the cluster, the per-node check, and the scans.

use crate::cluster::{Cluster, ModelId, Node};
use crate::explain::{Refusal, RefusalCounts, sorted_counts};
use crate::job::Requirement;
use crate::request::{GpuDemand, Request};

use super::buckets::IRREGULAR;
use super::index::FabricIndex;
use super::node_plan::plan_node;
use super::request::{GangOptions, GangRequest};
use super::wait::GANG_REFUSALS;

/// What one replica needs, resolved against one cluster: the request, the GPU models it
/// accepts as cluster ids, whether it needs NVLink or RDMA, and its price ceiling.
pub(super) struct ReplicaNeeds<'a> {
    pub(super) request: &'a Request,
    pub(super) models: Option<Vec<ModelId>>,
    pub(super) nvlink_required: bool,
    pub(super) rdma_required: bool,
    pub(super) max_price: Option<f64>,
}

impl ReplicaNeeds<'_> {
    pub(super) fn model_ok(&self, model: ModelId) -> bool {
        self.models.as_ref().is_none_or(|m| m.contains(&model))
    }
}

pub(super) fn resolve<'a>(cluster: &Cluster, gang: &'a GangRequest) -> ReplicaNeeds<'a> {
    let models = (!gang.request.models().is_empty()).then(|| {
        gang.request
            .models()
            .iter()
            .filter_map(|m| cluster.model_id(m))
            .collect()
    });
    ReplicaNeeds {
        request: &gang.request,
        models,
        nvlink_required: gang.topology.nvlink == Some(Requirement::Required),
        rdma_required: gang.topology.rdma_required,
        max_price: gang.placement.max_price_per_gpu_hour,
    }
}

/// How many replicas a resource bound allows.
pub(super) fn bound(left: u64, each: u64) -> u64 {
    left.checked_div(each).unwrap_or(u64::MAX)
}

/// Replicas of `needs` that node `i` can hold now (capped at `cap`), or the first reason
/// it holds none.
pub(super) fn node_fit(
    cluster: &Cluster,
    index: &FabricIndex,
    needs: &ReplicaNeeds<'_>,
    i: usize,
    cap: u32,
    options: &GangOptions<'_>,
) -> Result<u32, Refusal> {
    let f = &index.facts[i];
    if f.cordoned {
        return Err(Refusal::Cordoned);
    }
    if options
        .avoid
        .is_some_and(|a| a.get(i).copied().unwrap_or(false))
    {
        return Err(Refusal::Reserved);
    }
    let node = &cluster.nodes()[i];
    if !needs.request.allowed().is_empty() && !node.within(needs.request.allowed()) {
        return Err(Refusal::OutsideAllowed);
    }
    if let Some(max) = needs.max_price {
        match index.domains[f.domain as usize].1 {
            Some(p) if p <= max => {}
            _ => return Err(Refusal::Price),
        }
    }
    if needs.rdma_required && f.network_known && !f.nic_usable {
        return Err(Refusal::RdmaDown);
    }
    let req = needs.request;
    let by_host = bound(f.cpu_left, req.cpu_milli()).min(bound(f.memory_left, req.memory_mib()));
    let gpu_fit = match req.gpu() {
        GpuDemand::Exclusive { count } if f.simple && !(needs.nvlink_required && *count >= 2) => {
            if let Some(model) = f.model
                && !needs.model_ok(model)
            {
                return Err(Refusal::ModelNotAllowed);
            }
            u64::from(f.free_mask.count_ones() / count)
        }
        GpuDemand::None => u64::MAX,
        _ => {
            let plans = plan_node(node, needs, cap as usize);
            if plans.is_empty() {
                return Err(gpu_refusal(node, needs));
            }
            plans.len() as u64
        }
    };
    if gpu_fit == 0 {
        return Err(Refusal::FewerFreeGpus);
    }
    if by_host == 0 {
        return Err(if bound(f.cpu_left, req.cpu_milli()) == 0 {
            Refusal::NotEnoughCpu
        } else {
            Refusal::NotEnoughMemory
        });
    }
    Ok(gpu_fit.min(by_host).min(u64::from(cap)) as u32)
}

/// The reason a node's GPUs hold no replica.
fn gpu_refusal(node: &Node, needs: &ReplicaNeeds<'_>) -> Refusal {
    if !node.gpus().iter().any(|g| needs.model_ok(g.model)) {
        return Refusal::ModelNotAllowed;
    }
    match needs.request.gpu() {
        GpuDemand::Exclusive { .. } if needs.nvlink_required => Refusal::NoNvlinkSet,
        GpuDemand::Exclusive { .. } | GpuDemand::None => Refusal::FewerFreeGpus,
        GpuDemand::Shared { .. } => Refusal::NoShareRoom,
        GpuDemand::Mig { .. } => Refusal::NoMigSlots,
    }
}

/// Nodes that can hold replicas, with how many, and the per-reason counts of the rest.
pub(super) struct Scan {
    pub(super) nodes: Vec<(u32, u32)>,
    pub(super) counts: Vec<(Refusal, u32)>,
}

pub(super) fn scan(
    cluster: &Cluster,
    index: &FabricIndex,
    needs: &ReplicaNeeds<'_>,
    cap: u32,
    options: &GangOptions<'_>,
) -> Scan {
    let mut nodes = Vec::new();
    let mut raw: RefusalCounts = [0; Refusal::ALL.len()];
    for i in 0..index.facts.len().min(cluster.len()) {
        match node_fit(cluster, index, needs, i, cap, options) {
            Ok(k) if k > 0 => nodes.push((i as u32, k)),
            Ok(_) => raw[Refusal::FewerFreeGpus as usize] += 1,
            Err(r) => raw[r as usize] += 1,
        }
    }
    Scan {
        nodes,
        counts: sorted_counts(&raw, &GANG_REFUSALS),
    }
}

/// Nodes that can hold replicas of a whole-GPU request, from the buckets with enough free
/// GPUs only, in node order as [`scan`] lists them. The reasons of the rest are not counted,
/// so only a success stands; a wait is explained by the full scan. `None` for other requests.
pub(super) fn scan_buckets(
    cluster: &Cluster,
    index: &FabricIndex,
    needs: &ReplicaNeeds<'_>,
    cap: u32,
    options: &GangOptions<'_>,
) -> Option<Scan> {
    let GpuDemand::Exclusive { count } = *needs.request.gpu() else {
        return None;
    };
    if count == 0 || (needs.nvlink_required && count >= 2) {
        return None;
    }
    let buckets = index.bucket_lists();
    let mut nodes = Vec::new();
    // From `count` free GPUs up, the irregular bucket last.
    for bucket in buckets.iter().skip((count as usize).min(IRREGULAR)) {
        for s in &bucket.slots {
            let i = s.node as usize;
            if i < cluster.len()
                && let Ok(k) = node_fit(cluster, index, needs, i, cap, options)
                && k > 0
            {
                nodes.push((s.node, k));
            }
        }
    }
    nodes.sort_unstable();
    Some(Scan {
        nodes,
        counts: Vec::new(),
    })
}
