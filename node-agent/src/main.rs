//! `suanli-agent`: report this machine's inventory, or run the agent against a scheduler.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context as _;
use clap::{Parser, Subcommand};
use suanli_agent::config::{
    AgentConfig, EnvConfig, Layered, MapConfig, default_node_name, node_cid,
};
use suanli_agent::discovery::nvml::probe_for_this_machine;
use suanli_agent::discovery::{FixtureProbe, GpuProbe, SysfsRoot, discover};
use suanli_agent::output::{Format, render};
use suanli_agent::session::{Agent, AgentExit};
use suanli_engine::Cid;
use suanli_engine::inventory::FabricPosition;
use tracing_subscriber::EnvFilter;

#[derive(Debug, Parser)]
#[command(name = "suanli-agent", version, about = "Suanli node agent")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

// Parsed once at start: the size of the larger variant costs nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Subcommand)]
enum Command {
    /// Print what this machine has (GPUs, MIG, NVLink, PCIe paths, RDMA) and exit.
    Inventory {
        #[arg(short = 'o', long = "output", value_enum, default_value = "table")]
        output: Format,
        /// Read GPU facts from a recorded inventory instead of NVML.
        #[arg(long)]
        fixture: Option<PathBuf>,
        /// Read `sys/...` under this directory instead of `/`.
        #[arg(long, default_value = "/")]
        sysfs_root: PathBuf,
        /// `cid:provider/region/domain` the node sits under.
        #[arg(long, default_value = "cid:local/local/local")]
        cid_prefix: String,
        /// Node name (default: the host name).
        #[arg(long)]
        node: Option<String>,
    },
    /// Register with the scheduler and serve: heartbeats, telemetry, assigned work.
    /// Every flag can also come from `SUANLI_AGENT_<NAME>` (e.g. SUANLI_AGENT_TOKEN).
    Run {
        #[arg(long)]
        scheduler: Option<String>,
        #[arg(long)]
        token: Option<String>,
        #[arg(long)]
        provider: Option<String>,
        #[arg(long)]
        region: Option<String>,
        #[arg(long)]
        domain: Option<String>,
        #[arg(long)]
        node: Option<String>,
        #[arg(long)]
        data_dir: Option<PathBuf>,
        #[arg(long)]
        fixture: Option<PathBuf>,
        #[arg(long)]
        sysfs_root: Option<PathBuf>,
        /// Label this machine's Kubernetes Node with what the agent found: `in-cluster`
        /// (the pod's service account) or the API's URL. Off when absent.
        #[arg(long)]
        kube_api: Option<String>,
        /// kubelet's pod-resources socket (usually
        /// /var/lib/kubelet/pod-resources/kubelet.sock): report which GPUs kubelet gave to
        /// pods, so the scheduler holds exactly those. Off when absent.
        #[arg(long)]
        kubelet_socket: Option<PathBuf>,
        /// The extended resource whose devices are GPUs, for --kubelet-socket.
        #[arg(long)]
        gpu_resource: Option<String>,
        /// Where other nodes' replicas reach this node's: a host name or IP, optionally with
        /// :port. Default: the address the scheduler sees this agent connect from.
        #[arg(long)]
        advertise_addr: Option<String>,
    },
}

/// Exit code for bad input (flags, config, fixture files).
const EXIT_USAGE: u8 = 2;

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_env("SUANLI_LOG").unwrap_or_else(|_| EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    match cli.command {
        Command::Inventory {
            output,
            fixture,
            sysfs_root,
            cid_prefix,
            node,
        } => match inventory(output, fixture, sysfs_root, &cid_prefix, node) {
            Ok(text) => {
                print!("{text}");
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("error: {e:#}");
                ExitCode::from(EXIT_USAGE)
            }
        },
        Command::Run {
            scheduler,
            token,
            provider,
            region,
            domain,
            node,
            data_dir,
            fixture,
            sysfs_root,
            kube_api,
            kubelet_socket,
            gpu_resource,
            advertise_addr,
        } => {
            let mut flags = MapConfig::default();
            let path = |p: Option<PathBuf>| p.map(|p| p.display().to_string());
            for (key, value) in [
                ("scheduler", scheduler),
                ("token", token),
                ("provider", provider),
                ("region", region),
                ("domain", domain),
                ("node", node),
                ("data_dir", path(data_dir)),
                ("fixture", path(fixture)),
                ("sysfs_root", path(sysfs_root)),
                ("kube_api", kube_api),
                ("kubelet_socket", path(kubelet_socket)),
                ("gpu_resource", gpu_resource),
                ("advertise_addr", advertise_addr),
            ] {
                if let Some(v) = value {
                    flags = flags.with(key, v);
                }
            }
            let source = Layered(flags, EnvConfig);
            let config = AgentConfig::from_source(&source)
                .and_then(|cfg| Ok((cfg, suanli_agent::config::advertise_addr(&source)?)));
            let (cfg, advertise) = match config {
                Ok(c) => c,
                Err(e) => {
                    eprintln!("error: {e}");
                    return ExitCode::from(EXIT_USAGE);
                }
            };
            match run(cfg, advertise) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("error: {e:#}");
                    ExitCode::FAILURE
                }
            }
        }
    }
}

fn probe(fixture: Option<&PathBuf>) -> anyhow::Result<Arc<dyn GpuProbe>> {
    Ok(match fixture {
        Some(path) => Arc::new(FixtureProbe::load(path)?),
        None => Arc::from(probe_for_this_machine()),
    })
}

fn inventory(
    output: Format,
    fixture: Option<PathBuf>,
    sysfs_root: PathBuf,
    cid_prefix: &str,
    node: Option<String>,
) -> anyhow::Result<String> {
    let prefix: Cid = cid_prefix.parse().context("--cid-prefix")?;
    let [provider, region, domain] = prefix.segments() else {
        anyhow::bail!("--cid-prefix {cid_prefix}: must be cid:provider/region/domain");
    };
    let node = node.unwrap_or_else(default_node_name);
    let cid = node_cid(provider, region, domain, &node)?;
    let probe = probe(fixture.as_ref())?;
    let report = discover(
        probe.as_ref(),
        &SysfsRoot(sysfs_root),
        cid,
        FabricPosition::default(),
    );
    Ok(render(&report, output))
}

fn run(cfg: AgentConfig, advertise: Option<String>) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    runtime.block_on(async {
        let probe = probe(cfg.fixture.as_ref())?;
        let agent = Agent::new(cfg, probe)?.advertising(advertise);
        match agent.run_until(shutdown_signal()).await {
            AgentExit::Shutdown => Ok(()),
            AgentExit::Replaced { reason } => {
                anyhow::bail!("stopped: another agent holds this node now ({reason})")
            }
        }
    })
}

/// SIGINT or SIGTERM.
async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    match signal(SignalKind::terminate()) {
        Ok(mut term) => {
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = term.recv() => {}
            }
        }
        Err(_) => {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}
