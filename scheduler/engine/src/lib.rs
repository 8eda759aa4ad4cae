//! Suanli's placement engine and domain model.
//!
//! Pure by design: no async runtime, no I/O, no generated code. The server, the Kubernetes
//! extender and the simulator all call this crate, so what the simulator measures is what
//! production does.

pub mod cid;
pub mod gpu;
pub mod inventory;
pub mod job;
pub mod validation;

pub use cid::{Cid, CidError, Level};
pub use gpu::{GpuModel, MigProfile};
pub use inventory::NodeInventory;
pub use job::{JobSpec, JobState};
pub use validation::{Problem, ValidationError};
