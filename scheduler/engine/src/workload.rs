//! The policy that places a job of one plain replica, and the workload it expects.
//!
//! FGD scores a node by how much of a typical request mix it would lose to fragmentation, so
//! it needs to know what "typical" is: the most recent requests, a sliding window. Rebuilding
//! the mix drops FGD's per-node cache, so it happens only when a request shape the mix has not
//! seen arrives or the window has turned over, not on every submit. Other policies need no
//! workload. Ties between equal nodes are broken by a seeded generator, so the same requests
//! in the same order on the same cluster give the same placements.

use std::collections::{HashSet, VecDeque};
use std::sync::Arc;

use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

use crate::cluster::Cluster;
use crate::explain::Unplaceable;
use crate::fgd::{DEFAULT_POPULARITY_PCT, MixShape, WorkloadMix};
use crate::gang::GangRequest;
use crate::gpu::GpuModel;
use crate::job::Requirement;
use crate::policy::{Placement, PlacementScratch, Policy, PolicyKind, place_with};
use crate::request::Request;

/// How many recent requests make up FGD's expected workload.
pub const RECENT_WINDOW: usize = 2000;

/// The part of a request that decides its place in the mix.
type ShapeKey = (u64, u32, u32, Vec<GpuModel>);

fn shape_key(request: &Request) -> ShapeKey {
    let s = MixShape::of(request);
    (s.cpu_milli, s.gpu_milli, s.gpu_count, s.models)
}

/// The configured policy for jobs of one plain replica, with the workload window it learns
/// from and the seeded generator that breaks its ties.
#[derive(Debug, Clone)]
pub struct SingleReplicaPolicy {
    kind: PolicyKind,
    /// Built lazily: FGD has nothing to build from before the first request.
    policy: Option<Policy>,
    scratch: PlacementScratch,
    recent: VecDeque<Request>,
    window: usize,
    /// Requests remembered since the mix was last built.
    since_mix: usize,
    /// Shapes the current mix was built from; a new one makes it stale.
    mix_shapes: HashSet<ShapeKey>,
    mix_stale: bool,
    rng: ChaCha8Rng,
}

impl SingleReplicaPolicy {
    /// `kind` with a window of [`RECENT_WINDOW`] requests; `seed` breaks ties.
    pub fn new(kind: PolicyKind, seed: u64) -> SingleReplicaPolicy {
        SingleReplicaPolicy::with_window(kind, seed, RECENT_WINDOW)
    }

    /// As [`SingleReplicaPolicy::new`], remembering the last `window` requests.
    pub fn with_window(kind: PolicyKind, seed: u64, window: usize) -> SingleReplicaPolicy {
        SingleReplicaPolicy {
            kind,
            policy: None,
            scratch: PlacementScratch::default(),
            recent: VecDeque::new(),
            window: window.max(1),
            since_mix: 0,
            mix_shapes: HashSet::new(),
            mix_stale: true,
            rng: ChaCha8Rng::seed_from_u64(seed),
        }
    }

    pub fn kind(&self) -> PolicyKind {
        self.kind
    }

    /// The policy as last built; `None` before FGD has seen a request.
    pub fn policy(&self) -> Option<&Policy> {
        self.policy.as_ref()
    }

    /// Counts `request` into the expected workload.
    pub fn remember(&mut self, request: Request) {
        if !self.mix_shapes.contains(&shape_key(&request)) {
            self.mix_stale = true;
        }
        self.recent.push_back(request);
        self.since_mix += 1;
        if self.recent.len() > self.window {
            self.recent.pop_front();
        }
    }

    /// Builds the policy, or rebuilds FGD's mix if a new shape arrived or the window turned
    /// over since it was built. Returns whether a policy is ready.
    pub fn refresh(&mut self) -> bool {
        if self.kind != PolicyKind::Fgd {
            if self.policy.is_none() {
                self.policy = Policy::new(self.kind).ok();
            }
            return self.policy.is_some();
        }
        let stale = self.mix_stale || self.since_mix >= self.window;
        if self.policy.is_some() && !stale {
            return true;
        }
        // With no requests yet there is no mix; the policy stays unbuilt until one arrives.
        if let Ok(mix) = WorkloadMix::typical(self.recent.iter(), DEFAULT_POPULARITY_PCT) {
            self.mix_shapes = self.recent.iter().map(shape_key).collect();
            self.policy = Some(Policy::fgd(Arc::new(mix)));
            self.since_mix = 0;
            self.mix_stale = false;
        }
        self.policy.is_some()
    }

    /// The best node for `request` by the policy as last built (see [`Self::refresh`]);
    /// `None` while there is no policy yet.
    pub fn place(
        &mut self,
        cluster: &Cluster,
        request: &Request,
    ) -> Option<Result<Placement, Unplaceable>> {
        let policy = self.policy.as_ref()?;
        Some(place_with(
            cluster,
            request,
            policy,
            &mut self.scratch,
            &mut self.rng,
        ))
    }

    /// Whether a job goes to this policy rather than the gang planner: one replica, and
    /// nothing only the planner weighs (RDMA, required NVLink, a price ceiling, data
    /// locality).
    pub fn applies_to(gang: &GangRequest) -> bool {
        gang.replicas == 1
            && !gang.topology.rdma_required
            && gang.topology.nvlink != Some(Requirement::Required)
            && gang.placement.max_price_per_gpu_hour.is_none()
            && gang.placement.data.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::job::{GpuPolicy, GpuRequest, JobKind, JobSpec};

    fn request(milli: u32) -> Request {
        let mut spec = JobSpec::new("r", JobKind::Inference);
        spec.gpu = Some(GpuRequest {
            policy: GpuPolicy::Shared {
                milli: Some(milli),
                memory_mib: None,
            },
            models: vec![],
        });
        Request::from_job(&spec).expect("a valid request")
    }

    #[test]
    fn fgd_waits_for_a_workload_and_rebuilds_only_on_a_new_shape() {
        let mut single = SingleReplicaPolicy::with_window(PolicyKind::Fgd, 7, 4);
        assert!(!single.refresh(), "no mix before any request");
        single.remember(request(250));
        assert!(single.refresh());
        let built = single.policy().cloned();
        single.remember(request(250));
        assert!(single.refresh());
        assert_eq!(
            format!("{:?}", single.policy()),
            format!("{built:?}"),
            "a known shape keeps the mix"
        );
        single.remember(request(500));
        assert!(single.mix_stale, "a new shape makes the mix stale");
        assert!(single.refresh());
        assert!(!single.mix_stale);
    }

    #[test]
    fn other_policies_need_no_workload() {
        let mut single = SingleReplicaPolicy::new(PolicyKind::BestFit, 1);
        assert!(single.refresh());
        assert_eq!(single.kind(), PolicyKind::BestFit);
    }

    #[test]
    fn the_gang_planner_takes_what_only_it_weighs() {
        let mut spec = JobSpec::new("g", JobKind::Training);
        assert!(SingleReplicaPolicy::applies_to(
            &GangRequest::from_job(&spec).expect("gang")
        ));
        spec.topology.rdma_required = true;
        assert!(!SingleReplicaPolicy::applies_to(
            &GangRequest::from_job(&spec).expect("gang")
        ));
        spec.topology.rdma_required = false;
        spec.replicas = 2;
        assert!(!SingleReplicaPolicy::applies_to(
            &GangRequest::from_job(&spec).expect("gang")
        ));
    }
}
