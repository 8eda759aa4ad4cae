//! What the gang planner is asked to place: a gang or a set of replicas, and the options
//! that narrow where it may go.

use crate::job::{JobKind, JobSpec, PlacementConstraints, Requirement, Topology};
use crate::request::{Request, RequestError};

/// Per-replica inter-domain traffic assumed when a job does not say (one 100 Gb/s stream).
pub const DEFAULT_REPLICA_TRAFFIC_GBPS: f64 = 100.0;

/// A gang (training) or a set of independent replicas (inference): what the planner places.
#[derive(Debug, Clone, PartialEq)]
pub struct GangRequest {
    /// One replica.
    pub request: Request,
    pub replicas: u32,
    /// Elastic jobs start with at least this many; equal to `replicas` otherwise.
    pub min_replicas: u32,
    pub kind: JobKind,
    pub topology: Topology,
    pub placement: PlacementConstraints,
    /// Bandwidth one replica exchanges with the rest of the gang, for judging splits across
    /// domains.
    pub replica_traffic_gbps: f64,
}

impl GangRequest {
    /// A training gang of `replicas` copies of `request`, no topology constraints.
    pub fn new(request: Request, replicas: u32) -> GangRequest {
        GangRequest {
            request,
            replicas: replicas.max(1),
            min_replicas: replicas.max(1),
            kind: JobKind::Training,
            topology: Topology::default(),
            placement: PlacementConstraints::default(),
            replica_traffic_gbps: DEFAULT_REPLICA_TRAFFIC_GBPS,
        }
    }

    /// A job as submitted: its replica, counts, topology and placement constraints.
    pub fn from_job(spec: &JobSpec) -> Result<GangRequest, RequestError> {
        let request = Request::from_job(spec)?;
        let replicas = spec.replicas.max(1);
        Ok(GangRequest {
            request,
            replicas,
            min_replicas: spec.required_replicas().clamp(1, replicas),
            kind: spec.kind,
            topology: spec.topology,
            placement: spec.placement.clone(),
            replica_traffic_gbps: DEFAULT_REPLICA_TRAFFIC_GBPS,
        })
    }

    pub fn with_min_replicas(mut self, min: u32) -> GangRequest {
        self.min_replicas = min.clamp(1, self.replicas);
        self
    }

    pub fn with_kind(mut self, kind: JobKind) -> GangRequest {
        self.kind = kind;
        self
    }

    pub fn with_topology(mut self, topology: Topology) -> GangRequest {
        self.topology = topology;
        self
    }

    pub fn with_placement(mut self, placement: PlacementConstraints) -> GangRequest {
        self.placement = placement;
        self
    }

    pub fn with_replica_traffic(mut self, gbps: f64) -> GangRequest {
        self.replica_traffic_gbps = gbps;
        self
    }

    /// GPUs (whole-GPU equivalents in milli) the gang uses at `replicas` replicas.
    pub fn gpu_milli(&self, replicas: u32) -> u64 {
        self.request.gpu_milli_total() * u64::from(replicas)
    }

    pub(super) fn network_required(&self) -> bool {
        self.topology.network.mode == Requirement::Required
    }
}

/// Options that change where a gang may go.
#[derive(Debug, Clone, Copy, Default)]
pub struct GangOptions<'a> {
    /// Nodes that must not be used (`true` at a node's position): another gang's reservation.
    pub avoid: Option<&'a [bool]>,
}
