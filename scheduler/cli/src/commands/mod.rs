//! One function per subcommand: build the request, call, turn the answer into views, print.

use std::collections::HashMap;
use std::io::{IsTerminal, Read, Write};
use std::time::Duration;

use clap::Args;
use serde::Serialize;
use suanli_engine::JobSpec;
use suanli_proto::pb;
use tokio::time::timeout;

use crate::client::{Client, unary};
use crate::error::CliError;
use crate::jobfile::parse_jobs;
use crate::output::{self, Format};
use crate::view::{
    DescribeView, EventView, ExplainView, JobList, JobView, NodeList, NodeView, ResolveView,
    TelemetryView,
};

mod change;
mod cluster;
mod jobs;
mod logs;
mod watch;

pub use change::*;
pub use cluster::*;
pub use jobs::*;
pub use logs::*;
pub use watch::*;

/// Writes to standard output; a closed pipe ends the command quietly.
pub fn emit(text: &str) -> Result<(), CliError> {
    let mut out = std::io::stdout().lock();
    match out.write_all(text.as_bytes()).and_then(|()| out.flush()) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Err(CliError::StdoutClosed),
        Err(e) => Err(CliError::Failed(format!("cannot write output: {e}"))),
    }
}

/// Prints `value` as data, or the table `table` builds.
fn show<T: Serialize>(
    format: Format,
    value: &T,
    table: impl FnOnce() -> String,
) -> Result<(), CliError> {
    if format.is_data() {
        emit(&output::data(format, value)?)
    } else {
        emit(&table())
    }
}

pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}
