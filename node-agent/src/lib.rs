//! The Suanli node agent: discovery (NVML, sysfs), registration and session with the
//! scheduler, telemetry, and running assigned work.

pub mod config;
pub mod discovery;
pub mod kubelet;
pub mod ledger;
pub mod logs;
pub mod node_labels;
pub mod output;
pub mod rendezvous;
pub mod session;
pub mod work;
