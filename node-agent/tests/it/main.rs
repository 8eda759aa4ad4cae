//! One integration-test binary: discovery goldens, the CLI, and sessions against a real
//! tonic server on 127.0.0.1.

mod gpu;
mod inventory;
mod kubelet;
mod node_labels;
mod session;
mod support;
