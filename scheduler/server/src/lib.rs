//! The scheduler daemon's library: durable store, gRPC services, agent sessions, extender.

pub mod store;
