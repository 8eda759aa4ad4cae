//! `suanli`: what ML engineers and operators type to submit and follow GPU jobs, look at
//! nodes and resolve compute identifiers.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};
use suanli::error::CliError;
use suanli::output::Format;
use suanli::{client, commands, config};

#[derive(Debug, Parser)]
#[command(
    name = "suanli",
    version,
    about = "Submit and follow GPU jobs on a Suanli scheduler",
    after_help = "The scheduler address and token come from --addr/--token, then SUANLI_ADDR/\
                  SUANLI_TOKEN, then the config file (--config, $SUANLI_CONFIG, or \
                  $XDG_CONFIG_HOME/suanli/config.toml, default ~/.config/suanli/config.toml), \
                  then http://127.0.0.1:7070.\n\nExit codes: 0 ok, 1 scheduler error or not \
                  found, 2 usage or bad input, 3 scheduler unreachable."
)]
struct Cli {
    #[command(flatten)]
    global: Global,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Args)]
struct Global {
    /// Scheduler gRPC address (`http://host:port`).
    #[arg(long, global = true)]
    addr: Option<String>,
    /// API token, sent as `authorization: Bearer <token>`.
    #[arg(long, global = true)]
    token: Option<String>,
    /// Config file (TOML with `addr` and `token`).
    #[arg(long, global = true)]
    config: Option<PathBuf>,
    /// Output format.
    #[arg(short = 'o', long = "output", global = true, value_enum, default_value_t = Format::Table)]
    output: Format,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Submit jobs from YAML files (`-f -` reads standard input).
    Submit(commands::SubmitArgs),
    /// List or show jobs and nodes.
    Get {
        #[command(subcommand)]
        what: GetWhat,
    },
    /// Show a job in detail: spec, placement, events, and why it is pending or placed there.
    Describe {
        #[command(subcommand)]
        what: DescribeWhat,
    },
    /// Change a job: priority, queue, preemptibility, time limit, an elastic job's size.
    Update(commands::UpdateArgs),
    /// Cancel a job.
    Cancel {
        id: String,
        /// Why, recorded in the job's events.
        #[arg(long, default_value = "")]
        reason: String,
    },
    /// Stream job events until Ctrl-C.
    Watch(commands::WatchArgs),
    /// Print a replica's standard output and error (`-f` follows it until it ends).
    Logs(commands::LogsArgs),
    /// Nodes and devices under a CID prefix that pass capability filters.
    Resolve(commands::ResolveArgs),
    /// Live GPU utilization and memory, NVLink and NIC counters per node.
    Top(commands::TopArgs),
    /// Stop placing new work on a node (admin).
    Cordon {
        cid: String,
        #[arg(long, default_value = "")]
        reason: String,
    },
    /// Allow new work on a node again (admin).
    Uncordon { cid: String },
    /// Cordon a node and move its work elsewhere (admin).
    Drain {
        cid: String,
        #[arg(long, default_value = "")]
        reason: String,
        /// Time each replica gets between SIGTERM and SIGKILL; 0 means the agent's default.
        #[arg(long, default_value_t = 0)]
        grace_period_ms: u32,
    },
    /// Take a node out of the cluster (admin).
    Node {
        #[command(subcommand)]
        what: NodeWhat,
    },
}

#[derive(Debug, Subcommand)]
enum NodeWhat {
    /// Forget a node and its inventory (admin). Refused while work is bound to it, unless
    /// --force sends that work back to pending.
    Remove {
        cid: String,
        /// Remove it even while work is bound to it; that work goes back to pending.
        #[arg(long)]
        force: bool,
    },
}

#[derive(Debug, Subcommand)]
enum GetWhat {
    /// Jobs, newest first.
    Jobs(commands::ListJobsArgs),
    /// One job.
    Job { id: String },
    /// Nodes, optionally under a CID prefix.
    Nodes { prefix: Option<String> },
    /// One node with its GPUs.
    Node { cid: String },
}

#[derive(Debug, Subcommand)]
enum DescribeWhat {
    /// One job.
    Job { id: String },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    suanli::run_to_exit(run(cli))
}

async fn run(cli: Cli) -> Result<(), CliError> {
    let flags = config::Flags {
        addr: cli.global.addr,
        token: cli.global.token,
        config: cli.global.config,
    };
    let format = cli.global.output;
    let settings = || config::resolve(&flags, &config::EnvSource);
    let connect = || async { client::Client::connect(&settings()?).await };
    match cli.command {
        Command::Submit(args) => {
            // Files are read and checked before connecting: bad input never waits on a network.
            let jobs = commands::read_job_files(&args.files)?;
            if args.dry_run {
                return commands::print_dry_run(&jobs, format);
            }
            commands::submit(&mut connect().await?, jobs, &args, format).await
        }
        Command::Get { what } => {
            let mut c = connect().await?;
            match what {
                GetWhat::Jobs(args) => commands::list_jobs(&mut c, &args, format).await,
                GetWhat::Job { id } => commands::get_job(&mut c, &id, format).await,
                GetWhat::Nodes { prefix } => {
                    commands::list_nodes(&mut c, prefix.as_deref().unwrap_or(""), format).await
                }
                GetWhat::Node { cid } => commands::get_node(&mut c, &cid, format).await,
            }
        }
        Command::Describe {
            what: DescribeWhat::Job { id },
        } => commands::describe_job(&mut connect().await?, &id, format).await,
        Command::Update(args) => {
            // Flags are checked before connecting: bad input never waits on a network.
            let request = commands::update_request(&args)?;
            commands::update(&mut connect().await?, request, format).await
        }
        Command::Cancel { id, reason } => {
            commands::cancel(&mut connect().await?, &id, &reason, format).await
        }
        Command::Watch(args) => commands::watch(&mut connect().await?, &args, format).await,
        Command::Logs(args) => {
            // Flags are checked before connecting: bad input never waits on a network.
            let request = commands::logs_request(&args)?;
            commands::logs(&mut connect().await?, request).await
        }
        Command::Resolve(args) => commands::resolve(&mut connect().await?, &args, format).await,
        Command::Top(args) => commands::top(&mut connect().await?, &args, format).await,
        Command::Cordon { cid, reason } => {
            commands::cordon(&mut connect().await?, &cid, true, &reason, format).await
        }
        Command::Uncordon { cid } => {
            commands::cordon(&mut connect().await?, &cid, false, "", format).await
        }
        Command::Drain {
            cid,
            reason,
            grace_period_ms,
        } => {
            commands::drain(
                &mut connect().await?,
                &cid,
                &reason,
                grace_period_ms,
                format,
            )
            .await
        }
        Command::Node {
            what: NodeWhat::Remove { cid, force },
        } => commands::remove_node(&mut connect().await?, &cid, force, format).await,
    }
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::{Cli, Command, NodeWhat};

    #[test]
    fn node_remove_takes_a_cid_and_force() {
        let parse = |args: &[&str]| Cli::try_parse_from(args).map(|cli| cli.command);
        let cid = "cid:acme/cn-east-1/dc-a/node-1";
        match parse(&["suanli", "node", "remove", cid, "--force", "-o", "json"]) {
            Ok(Command::Node {
                what: NodeWhat::Remove { cid: got, force },
            }) => {
                assert_eq!(got, cid);
                assert!(force);
            }
            other => panic!("{other:?}"),
        }
        match parse(&["suanli", "node", "remove", cid]) {
            Ok(Command::Node {
                what: NodeWhat::Remove { force, .. },
            }) => assert!(!force),
            other => panic!("{other:?}"),
        }
        let missing = parse(&["suanli", "node", "remove"]).expect_err("a CID is required");
        assert_eq!(missing.exit_code(), 2);
    }

    #[test]
    fn the_demo_is_not_a_subcommand() {
        // It lives in `suanli-demo`, which links the scheduler and the agent.
        let err = Cli::try_parse_from(["suanli", "demo"]).expect_err("no demo subcommand");
        assert_eq!(err.exit_code(), 2);
    }
}
