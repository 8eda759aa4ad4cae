//! Suanli's gRPC contract: the `suanli.v1` protos, the code tonic and prost generate from them,
//! and the conversions between wire messages and `suanli_engine` domain types.

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
    include!(concat!(env!("OUT_DIR"), "/suanli.v1.rs"));
}

/// Generated messages, enums, clients (`*_client`) and servers (`*_server`) of `suanli.v1`.
pub mod pb {
    pub use crate::generated::*;
}

/// The encoded `FileDescriptorSet` of every `suanli.v1` file, for gRPC reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] =
    include_bytes!(concat!(env!("OUT_DIR"), "/suanli_descriptor.bin"));
