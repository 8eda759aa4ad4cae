//! `suanli-sim`: replays GPU cluster traces through `suanli-engine` and reports what each
//! placement policy achieves.
//!
//! Two protocols (DESIGN.md §8): [`fill`], the FGD paper's arrive-only fill of the `openb`
//! cluster, and [`replay`], an event-driven run with a FIFO queue and departures. Every
//! placement is the engine's, through [`engine::EngineFactory`].

pub mod engine;
pub mod fill;
pub mod import;
pub mod model;
pub mod output;
pub mod placer;
pub mod quota_replay;
pub mod replay;
pub mod sources;
pub mod stats;
pub mod stream;
pub mod svg;
pub mod synthetic;
