//! Suanli's gRPC contract: the `suanli.v1` protos, the code tonic and prost generate from them,
//! and the conversions between wire messages and `suanli_engine` domain types.
//!
//! - [`pb`]: messages, enums, and per service a server trait and a client, e.g.
//!   [`pb::agent_service_server::AgentService`] / [`pb::agent_service_server::AgentServiceServer`]
//!   and [`pb::agent_service_client::AgentServiceClient`]; likewise `job_service_*` and
//!   `cluster_service_*`.
//! - [`convert`]: `From<domain> for pb::X` and `TryFrom<pb::X> for domain`; every failure is a
//!   [`ConvertError`] naming the field path, and converts into `Status::invalid_argument`.
//! - [`FILE_DESCRIPTOR_SET`]: the encoded descriptors, for gRPC reflection.
//!
//! ```
//! use suanli_engine::job::{JobKind, JobSpec};
//! use suanli_proto::pb;
//!
//! let wire = pb::JobSpec::from(JobSpec::new("train", JobKind::Training));
//! assert_eq!(JobSpec::try_from(wire).expect("valid"), JobSpec::new("train", JobKind::Training));
//!
//! let err = JobSpec::try_from(pb::JobSpec { name: "x".into(), ..Default::default() })
//!     .expect_err("zero replicas");
//! assert_eq!(err.to_string(), "spec.replicas: must be between 1 and 100000, got 0");
//! let status = tonic::Status::from(err);
//! assert_eq!(status.code(), tonic::Code::InvalidArgument);
//! ```

pub mod convert;

pub use convert::ConvertError;

mod generated {
    #![allow(
        missing_docs,
        missing_debug_implementations,
        unreachable_pub,
        clippy::all,
        clippy::pedantic,
        clippy::unwrap_used
    )]
    pub mod suanli {
        include!(concat!(env!("OUT_DIR"), "/suanli.v1.rs"));
    }
    pub mod podresources {
        include!(concat!(env!("OUT_DIR"), "/v1.rs"));
    }
}

/// kubelet's pod-resources API (`v1.PodResourcesLister`): which devices kubelet gave to
/// which pods. The agent is its client; tests serve it.
pub mod podresources {
    pub use crate::generated::podresources::*;
}

/// Generated messages, enums, clients (`*_client`) and servers (`*_server`) of `suanli.v1`.
pub mod pb {
    pub use crate::generated::suanli::*;
}

/// The encoded `FileDescriptorSet` of every `suanli.v1` file, for gRPC reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] =
    include_bytes!(concat!(env!("OUT_DIR"), "/suanli_descriptor.bin"));
