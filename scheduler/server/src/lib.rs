//! The scheduler daemon's library: durable store, gRPC services, agent sessions, extender.

pub mod auth;
pub mod config;
pub mod store;
