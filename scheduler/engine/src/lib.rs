//! Suanli's placement engine and domain model.
//!
//! Pure by design: no async runtime, no I/O, no generated code. The server, the Kubernetes
//! extender and the simulator all call this crate, so what the simulator measures is what
//! production does.
//!
//! Placing work: build a [`Cluster`] (from agents' [`NodeInventory`] reports or from trace
//! [`NodeShape`]s), describe a replica as a [`Request`], pick a [`Policy`] by name, then
//! [`place`] it and [`Cluster::allocate`] the returned [`Placement::claim`]:
//!
//! ```
//! use rand::SeedableRng;
//! use suanli_engine::{Cluster, NodeShape, Policy, PolicyKind, Request, place};
//!
//! let cluster_shapes = [NodeShape {
//!     name: "n0".into(),
//!     cpu_milli: 64_000,
//!     memory_mib: 262_144,
//!     gpus: 8,
//!     model: Some("V100M32".parse().expect("valid model")),
//!     gpu_memory_mib: 32_768,
//! }];
//! let mut cluster = Cluster::from_shapes(&cluster_shapes).expect("valid shapes");
//! let request = Request::from_openb(8_000, 16_384, 1, 500, "").expect("valid pod");
//! let policy = Policy::new(PolicyKind::BestFit).expect("needs no mix");
//! let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(42);
//! let placement = place(&cluster, &request, &policy, &mut rng).expect("fits");
//! cluster.allocate(&placement.claim).expect("still fits");
//! assert_eq!(cluster.used_gpu_milli(), 500);
//! ```

pub mod cid;
pub mod cluster;
pub mod domain;
pub mod explain;
pub mod fgd;
pub mod gang;
pub mod gpu;
pub mod inventory;
pub mod job;
pub mod links;
pub mod model;
pub mod policy;
pub mod preempt;
pub mod queue;
pub mod quota;
pub mod request;
#[cfg(feature = "testing")]
pub mod testing;
pub mod validation;
pub mod workload;

pub use cid::{Cid, CidError, Level};
pub use cluster::{
    Allocation, AllocationId, Claim, Cluster, ClusterError, Gpu, GpuGrant, ModelId, Node, NodeId,
    NodeShape,
};
pub use explain::{Refusal, Unplaceable};
pub use fgd::{MixError, MixShape, WorkloadMix};
pub use gpu::{GpuModel, MigProfile};
pub use inventory::NodeInventory;
pub use job::{JobSpec, JobState};
pub use policy::{
    Placement, Policy, PolicyError, PolicyKind, Score, ScoreBreakdown, TieBreak, evaluate, place,
};
pub use request::{AffinityTag, GpuDemand, Request, RequestError};
pub use validation::{Problem, ValidationError};
