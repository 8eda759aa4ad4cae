//! The production [`PlacerFactory`]: every placement is `suanli_engine::place` on a
//! `suanli_engine` cluster, applied with `Cluster::allocate` and undone with
//! `Cluster::release`.

use std::collections::HashMap;
use std::sync::Arc;

use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use suanli_engine::cluster::{AllocationId, Cluster, NodeShape as EngineNode};
use suanli_engine::fgd::{DEFAULT_POPULARITY_PCT, WorkloadMix};
use suanli_engine::policy::{self as engine_policy, PolicyKind};
use suanli_engine::request::Request as EngineRequest;

use crate::model::{NodeShape, Request};
use crate::placer::{BuildError, MixError, PlacementId, Placer, PlacerFactory, Policy};

/// Builds engine-backed clusters.
#[derive(Debug, Clone, Copy, Default)]
pub struct EngineFactory;

/// The expected workload mix, as the engine builds it from the original requests.
#[derive(Debug, Clone)]
pub struct EngineMix(Arc<WorkloadMix>);

impl EngineFactory {
    /// How many request shapes the mix kept.
    pub fn mix_len(&self, mix: &EngineMix) -> usize {
        mix.0.shapes().len()
    }
}

fn kind(policy: Policy) -> PolicyKind {
    match policy {
        Policy::Random => PolicyKind::Random,
        Policy::DotProduct => PolicyKind::DotProduct,
        Policy::GpuClustering => PolicyKind::GpuClustering,
        Policy::GpuPacking => PolicyKind::GpuPacking,
        Policy::BestFit => PolicyKind::BestFit,
        Policy::Fgd => PolicyKind::Fgd,
    }
}

/// The engine's form of a request. Importers have already checked every field, so a
/// refusal here means the request is beyond the engine's limits; the message says which.
pub fn engine_request(request: &Request) -> Result<EngineRequest, String> {
    let spec: Vec<&str> = request.models.iter().map(|m| m.as_str()).collect();
    EngineRequest::from_openb(
        request.cpu_milli,
        request.memory_mib,
        request.num_gpu,
        request.gpu_milli,
        &spec.join("|"),
    )
    .map_err(|e| format!("request {request}: {e}"))
}

impl PlacerFactory for EngineFactory {
    type Mix = EngineMix;

    fn mix(&self, requests: &[Request]) -> Result<EngineMix, MixError> {
        let converted = requests
            .iter()
            .map(engine_request)
            .collect::<Result<Vec<_>, _>>()
            .map_err(MixError)?;
        WorkloadMix::typical(&converted, DEFAULT_POPULARITY_PCT)
            .map(|m| EngineMix(Arc::new(m)))
            .map_err(|e| MixError(e.to_string()))
    }

    fn build(
        &self,
        nodes: &[NodeShape],
        policy: Policy,
        seed: u64,
        mix: &EngineMix,
    ) -> Result<Box<dyn Placer>, BuildError> {
        let fail = |reason: String| BuildError { policy, reason };
        let cluster =
            Cluster::from_shapes(&engine_nodes(nodes)).map_err(|e| fail(e.to_string()))?;
        let engine_policy = match policy {
            Policy::Fgd => engine_policy::Policy::fgd(Arc::clone(&mix.0)),
            other => engine_policy::Policy::new(kind(other)).map_err(|e| fail(e.to_string()))?,
        };
        let total = cluster.total_gpu_milli();
        Ok(Box::new(EnginePlacer {
            mix: Arc::clone(&mix.0),
            cluster,
            policy: engine_policy,
            scratch: engine_policy::PlacementScratch::default(),
            rng: ChaCha8Rng::seed_from_u64(seed),
            requests: HashMap::new(),
            used_gpu_milli: 0,
            total_gpu_milli: total,
        }))
    }
}

/// One engine cluster under one engine policy.
#[derive(Debug)]
struct EnginePlacer {
    cluster: Cluster,
    /// The expected workload, for the fragmentation measure (every policy reports it).
    mix: Arc<WorkloadMix>,
    policy: engine_policy::Policy,
    scratch: engine_policy::PlacementScratch,
    rng: ChaCha8Rng,
    /// Converted requests, so repeated shapes convert once.
    requests: HashMap<Request, Option<EngineRequest>>,
    used_gpu_milli: u64,
    total_gpu_milli: u64,
}

impl Placer for EnginePlacer {
    fn place(&mut self, request: &Request) -> Option<PlacementId> {
        let converted = self
            .requests
            .entry(request.clone())
            .or_insert_with(|| engine_request(request).ok())
            .as_ref()?;
        let placement = engine_policy::place_with(
            &self.cluster,
            converted,
            &self.policy,
            &mut self.scratch,
            &mut self.rng,
        )
        .ok()?;
        let milli: u64 = placement
            .claim
            .gpus
            .iter()
            .map(|g| u64::from(g.milli))
            .sum();
        // The engine just chose this claim on this very state, so it fits.
        let id = self
            .cluster
            .allocate(&placement.claim)
            .expect("a placement the engine just made on this cluster state fits it");
        self.used_gpu_milli += milli;
        Some(PlacementId(id.0))
    }

    fn release(&mut self, placement: PlacementId) {
        if let Ok(alloc) = self.cluster.release(AllocationId(placement.0)) {
            let milli: u64 = alloc.gpus.iter().map(|g| u64::from(g.milli)).sum();
            self.used_gpu_milli -= milli;
        }
    }

    fn used_gpu_milli(&self) -> u64 {
        self.used_gpu_milli
    }

    fn total_gpu_milli(&self) -> u64 {
        self.total_gpu_milli
    }

    fn fragmented_gpu_milli(&self) -> Option<f64> {
        Some(self.mix.fragmentation(&self.cluster))
    }
}

/// Trace node shapes as the engine's node shapes (traces give no GPU memory size).
pub(crate) fn engine_nodes(nodes: &[NodeShape]) -> Vec<EngineNode> {
    nodes
        .iter()
        .map(|n| EngineNode {
            name: n.name.clone(),
            cpu_milli: n.cpu_milli,
            memory_mib: n.memory_mib,
            gpus: n.gpus,
            model: n.model.clone(),
            gpu_memory_mib: 0,
        })
        .collect()
}
