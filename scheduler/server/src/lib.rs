//! The scheduler daemon's library: durable store, gRPC services, agent sessions, metrics.

pub mod auth;
pub mod config;
pub mod core;
pub mod grpc;
pub mod http;
pub mod placement;
pub mod resolve;
pub mod server;
pub mod store;
