//! Integration tests of `suanli-proto`: one binary, one module per concern.

mod errors;
mod fixtures;
mod grpc;
mod hostile;
mod properties;
mod round_trip;
