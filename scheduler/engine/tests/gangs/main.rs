//! Gangs on the fabric, domains, link health, quotas, preemption and backfill: one test
//! binary, one module per concern.

mod fabric;
mod placement;
mod properties;
mod queue;
mod queues;
mod resize;
