//! The scheduler daemon's library: durable store, gRPC services, agent sessions, metrics,
//! and the Kubernetes scheduler extender.

pub mod auth;
pub mod clock;
pub mod config;
pub mod core;
pub mod credential;
pub mod extender;
pub mod grpc;
pub mod http;
pub mod kubernetes;
pub mod placement;
pub mod resolve;
pub mod server;
pub mod store;
