//! The engine's integration tests: one binary, one module per concern.

mod common;
mod fill;
mod inputs;
mod policies;
mod properties;
