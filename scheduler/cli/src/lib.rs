//! The `suanli` client: connection, commands, views of wire messages and their rendering.
//! The `suanli` binary is clap definitions over this; `suanli-demo` reuses it to drive and
//! show an in-process cluster, so the client itself links no scheduler or agent code.

pub mod client;
pub mod commands;
pub mod config;
pub mod error;
pub mod jobfile;
pub mod output;
pub mod view;
