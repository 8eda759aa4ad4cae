//! `suanli-demo`: a whole cluster in this process. A scheduler on 127.0.0.1 and three node
//! agents with recorded machines (two HGX H100 nodes with NVLink and RDMA, one single-H100
//! host) run real gRPC sessions; jobs are submitted and shown with the `suanli` client; the
//! agents run each replica as a real process with `CUDA_VISIBLE_DEVICES` set to its grant.
//! Everything it needs is compiled in, and nothing is left behind afterwards.
//!
//! It is a crate of its own because it links the scheduler (SQLite) and the agent (NVML,
//! kube), which the `suanli` client must not.

mod cluster;
mod fixtures;
mod scenario;

use std::process::ExitCode;

use clap::Parser;
use suanli::output::Format;

#[derive(Debug, Parser)]
#[command(
    name = "suanli-demo",
    version,
    about = "Run a Suanli scheduler and three node agents in this process, place a few jobs, \
             and show it all",
    after_help = "Exit codes: 0 ok, 1 a demo job failed or the demo could not run, 2 usage."
)]
struct Cli {
    #[command(flatten)]
    demo: scenario::DemoArgs,
    /// Output format: the narrated run, or the jobs and replicas as data at the end.
    #[arg(short = 'o', long = "output", value_enum, default_value_t = Format::Table)]
    output: Format,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    suanli::run_to_exit(scenario::run(&cli.demo, cli.output))
}
